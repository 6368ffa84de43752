//! A deterministic in-memory pair of [`Mux`]es over a simulated link with virtual time
//! (feature `testkit`), modelled on quinn-proto's test `Pair`.
//!
//! The link has a one-way `latency`, an optional `bandwidth` (bytes per second, per
//! direction; while a direction is busy the sender's mux is not asked for more bytes,
//! like a socket with a small buffer), and optional random re-chunking of what is
//! delivered (every delivery is split at random points before `handle_input`). A
//! side whose mux holds input ([`Mux::input_blocked`]) is not delivered to (like a
//! paused socket) until its output drained. Time
//! only moves when nothing can happen at the current instant, so runs are exactly
//! reproducible.
//!
//! ```
//! use zs_p2pvm::testkit::Pair;
//! use zs_p2pvm::{Auth, MuxConfig};
//!
//! let cfg = MuxConfig::new(Auth::None);
//! let mut pair = Pair::new(cfg.clone(), cfg);
//! pair.drive();
//! assert!(pair.client.mux.is_ready() && pair.server.mux.is_ready());
//! ```

pub mod ops;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{Error, Mux, MuxConfig, MuxEvent, Role};

/// One end of the [`Pair`]: the mux and what happened to it.
#[derive(Debug)]
pub struct Side {
    /// The multiplexer.
    pub mux: Mux,
    /// Events polled from the mux, oldest first (tests drain or inspect them).
    pub events: VecDeque<MuxEvent>,
    /// Errors returned by `handle_input`.
    pub errors: Vec<Error>,
    /// Every byte this side put on the link, if [`Pair::record`] is set.
    pub transcript: Vec<u8>,
    /// Total bytes this side put on the link.
    pub bytes_sent: u64,
    /// Largest [`Mux::session_committed`] seen after any input.
    pub max_committed: usize,
    /// Largest [`Mux::buffered_bytes`] seen after any input.
    pub max_buffered: usize,
    /// Bytes in flight toward the other side: (delivery time, bytes).
    inflight: VecDeque<(Instant, Vec<u8>)>,
    /// When this side's outgoing direction is free again (bandwidth model).
    link_free_at: Instant,
}

impl Side {
    fn new(mux: Mux, now: Instant) -> Side {
        Side {
            mux,
            events: VecDeque::new(),
            errors: Vec::new(),
            transcript: Vec::new(),
            bytes_sent: 0,
            max_committed: 0,
            max_buffered: 0,
            inflight: VecDeque::new(),
            link_free_at: now,
        }
    }

    fn collect(&mut self) {
        while let Some(e) = self.mux.poll_event() {
            self.events.push_back(e);
        }
        self.max_committed = self.max_committed.max(self.mux.session_committed());
        self.max_buffered = self.max_buffered.max(self.mux.buffered_bytes());
    }

    /// Removes and returns the collected events.
    pub fn take_events(&mut self) -> Vec<MuxEvent> {
        self.collect();
        std::mem::take(&mut self.events).into()
    }

    /// Removes and returns the first collected event matching `f`.
    pub fn take_event(&mut self, f: impl Fn(&MuxEvent) -> bool) -> Option<MuxEvent> {
        self.collect();
        let i = self.events.iter().position(f)?;
        self.events.remove(i)
    }
}

/// Two muxes (client = [`Role::Initiator`], server = [`Role::Acceptor`]) joined by a
/// simulated link.
#[derive(Debug)]
pub struct Pair {
    /// Virtual now.
    pub now: Instant,
    /// The initiator.
    pub client: Side,
    /// The acceptor.
    pub server: Side,
    /// One-way latency of the link.
    pub latency: Duration,
    /// Bytes per second per direction (`None`: unlimited).
    pub bandwidth: Option<u64>,
    /// Largest piece a delivery is cut into (`None`: delivered as written).
    pub max_chunk: Option<usize>,
    /// Record every byte into [`Side::transcript`].
    pub record: bool,
    /// Bytes a sender is asked for at once while the bandwidth model is on.
    pub burst: usize,
    rng: u64,
}

impl Pair {
    /// A pair with no latency, unlimited bandwidth and no re-chunking.
    ///
    /// # Panics
    ///
    /// If [`Mux::new`] refuses a configuration (see [`Pair::try_new`]).
    pub fn new(client: MuxConfig, server: MuxConfig) -> Pair {
        match Pair::try_new(client, server) {
            Ok(p) => p,
            Err(e) => panic!("Pair::new: {e}"),
        }
    }

    /// Like [`Pair::new`]; the error of [`Mux::new`] if it refuses a configuration.
    pub fn try_new(client: MuxConfig, server: MuxConfig) -> Result<Pair, Error> {
        let now = Instant::now();
        Ok(Pair {
            now,
            client: Side::new(Mux::new(Role::Initiator, client, now)?, now),
            server: Side::new(Mux::new(Role::Acceptor, server, now)?, now),
            latency: Duration::ZERO,
            bandwidth: None,
            max_chunk: None,
            record: false,
            burst: 64 * 1024,
            rng: 0x9E37_79B9_7F4A_7C15,
        })
    }

    /// Seeds the chunking generator (the default seed is fixed).
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn sides(&mut self, from_client: bool) -> (&mut Side, &mut Side) {
        if from_client {
            (&mut self.client, &mut self.server)
        } else {
            (&mut self.server, &mut self.client)
        }
    }

    /// Pulls output from a side if it wants to write and its link is free.
    fn pull(&mut self, from_client: bool) -> bool {
        let (now, latency, bw, burst, record) = (
            self.now,
            self.latency,
            self.bandwidth,
            self.burst,
            self.record,
        );
        let (tx, _) = self.sides(from_client);
        if !tx.mux.wants_write() || tx.link_free_at > now {
            return false;
        }
        let mut buf = Vec::new();
        let limit = match bw {
            None => crate::OUTPUT_LIMIT,
            Some(_) => burst,
        };
        // Both output paths, alternating: the contiguous copy and the pieces
        // for a vectored send (headers apart from uncopied payload slices).
        if tx.bytes_sent % 2 == 0 {
            tx.mux.write_output_limit(&mut buf, limit);
        } else {
            let mut head = bytes::BytesMut::new();
            let mut parts = std::collections::VecDeque::new();
            let n = tx.mux.write_output_parts(&mut head, &mut parts, limit);
            for p in &parts {
                assert!(!p.is_empty(), "write_output_parts: an empty piece");
                buf.extend_from_slice(p);
            }
            assert_eq!(n, buf.len(), "write_output_parts: its count is its bytes");
            assert!(head.is_empty(), "write_output_parts: head left behind");
        }
        if tx.mux.pending_input() > 0 && !tx.mux.input_blocked() {
            // The output drained: handle the input held meanwhile.
            if let Err(e) = tx.mux.handle_input(&[], now) {
                tx.errors.push(e);
            }
        }
        tx.collect();
        if buf.is_empty() {
            return false;
        }
        tx.bytes_sent += buf.len() as u64;
        if record {
            tx.transcript.extend_from_slice(&buf);
        }
        let mut at = now;
        if let Some(bw) = bw {
            let nanos = (buf.len() as u128 * 1_000_000_000 / bw.max(1) as u128) as u64;
            tx.link_free_at = now + Duration::from_nanos(nanos);
            at = tx.link_free_at;
        }
        tx.inflight.push_back((at + latency, buf));
        true
    }

    /// Delivers what arrived by now in the direction from one side.
    fn deliver(&mut self, from_client: bool) -> bool {
        let now = self.now;
        let mut any = false;
        loop {
            let (tx, rx) = self.sides(from_client);
            let Some(&(at, _)) = tx.inflight.front() else {
                break;
            };
            if at > now || rx.mux.input_blocked() {
                break;
            }
            let Some((_, bytes)) = tx.inflight.pop_front() else {
                break;
            };
            any = true;
            let mut pieces = Vec::new();
            let mut rest = &bytes[..];
            while let Some(max) = self.max_chunk.filter(|_| !rest.is_empty()) {
                let n = 1 + (self.next_rand() as usize % max.max(1));
                let n = n.min(rest.len());
                pieces.push(&rest[..n]);
                rest = &rest[n..];
            }
            if !rest.is_empty() {
                pieces.push(rest);
            }
            let (_, rx) = self.sides(from_client);
            for p in pieces {
                if let Err(e) = rx.mux.handle_input(p, now) {
                    rx.errors.push(e);
                }
                rx.collect();
            }
        }
        any
    }

    /// One instant: pull and deliver until nothing more happens now. True if
    /// anything happened.
    fn settle(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut progress = false;
            progress |= self.pull(true);
            progress |= self.pull(false);
            progress |= self.deliver(true);
            progress |= self.deliver(false);
            if !progress {
                return any;
            }
            any = true;
        }
    }

    fn next_link_event(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for (s, rx) in [(&self.client, &self.server), (&self.server, &self.client)] {
            if let Some(&(at, _)) = s.inflight.front() {
                if !rx.mux.input_blocked() {
                    consider(at);
                }
            }
            if s.mux.wants_write() && s.link_free_at > self.now {
                consider(s.link_free_at);
            }
        }
        next
    }

    fn run_timers(&mut self) {
        let now = self.now;
        for s in [&mut self.client, &mut self.server] {
            if s.mux.poll_timeout().is_some_and(|t| t <= now) {
                s.mux.handle_timeout(now);
                s.collect();
            }
        }
    }

    /// Runs until the link is idle (nothing in flight, nothing to write), moving
    /// virtual time forward over latency and bandwidth delays (running timers that
    /// fall due on the way, but not waiting for future timers).
    pub fn drive(&mut self) {
        for _ in 0..50_000_000u64 {
            self.settle();
            match self.next_link_event() {
                None => return,
                Some(t) => {
                    self.now = self.now.max(t);
                    self.run_timers();
                }
            }
        }
        panic!("Pair::drive did not become idle");
    }

    /// Runs for `d` of virtual time: link events and timers (keepalive, idle
    /// timeout) in order; ends at exactly `now + d`.
    pub fn drive_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..50_000_000u64 {
            self.settle();
            let mut next = self.next_link_event();
            for s in [&self.client, &self.server] {
                if let Some(t) = s.mux.poll_timeout() {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.run_timers();
                }
                _ => {
                    self.now = end;
                    self.run_timers();
                    self.settle();
                    return;
                }
            }
        }
        panic!("Pair::drive_for did not finish");
    }
}
