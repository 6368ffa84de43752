//! `SecureBackend` driven by a scripted peer over an in-memory backend: a real
//! client session (NullCipher suite, so the fuzzer reaches established states)
//! whose bytes the script delivers whole, split, corrupted or mixed with raw
//! garbage; timers fire, reading pauses and resumes, the peer half-closes, the
//! raw queue stops draining (sends are refused, sealed bytes are held back), and
//! the inner handler answers through `send` or `send_vectored` and may half-close
//! or close right after. The layer must never panic and its output must stay
//! bounded.
#![no_main]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use zs_crypto::{SecurityProvider, ZsSecurity};
use zs_io::{
    Backend, CloseReason, Conn, ConnId, Connection, Error, Handler, HandlerFactory, Listener,
};
use zs_secure::{SecureBackend, SecureConfig};

const OUT_BOUND: usize = 8 << 20;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Deliver the peer session's pending output whole.
    Flush,
    /// The peer sends application data.
    Send(Vec<u8>),
    /// Deliver raw bytes (garbage, forged headers).
    Raw(Vec<u8>),
    /// Deliver the peer's output with one byte changed.
    Flip(u16, u8),
    /// Deliver the peer's output in two reads.
    Split(u16),
    /// Fire one armed timer.
    Timer(u8),
    /// The peer half-closes (after a close record or not).
    Eof(bool),
    /// The inner handler pauses or resumes reading.
    Pause(bool),
    /// How the inner handler answers: 0 `send`, 1 `send_vectored` in pieces,
    /// 2 answer then `shutdown_write`, 3 answer then `close` (modulo 4).
    Answer(u8),
    /// The raw queue stops (true) or goes on (false) draining to the peer.
    Hold(bool),
}

struct MemConn {
    out: Mutex<Vec<u8>>,
    timers: Mutex<Vec<u64>>,
    closed: AtomicBool,
    paused: AtomicBool,
}

impl Connection for MemConn {
    fn id(&self) -> ConnId {
        ConnId(1)
    }
    fn peer_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 2))
    }
    fn local_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }
    fn send(&self, data: Bytes) -> Result<(), Error> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        let mut out = self.out.lock().unwrap();
        if out.len() >= 64 * 1024 {
            return Err(Error::Full(data));
        }
        out.extend_from_slice(&data);
        assert!(out.len() < OUT_BOUND, "output unbounded");
        Ok(())
    }
    fn queued_bytes(&self) -> usize {
        self.out.lock().unwrap().len()
    }
    fn shutdown_write(&self) -> Result<(), Error> {
        Ok(())
    }
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
    fn abort(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
    fn set_timer(&self, _after: Duration, token: u64) -> Result<(), Error> {
        let mut t = self.timers.lock().unwrap();
        if t.len() < 1024 {
            t.push(token);
        }
        Ok(())
    }
    fn set_idle_timeout(&self, _idle: Option<Duration>) {}
    fn set_read_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

struct NoListener;
impl Listener for NoListener {
    fn local_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }
    fn shutdown(&self) {}
}

/// Hands the factory the layer gives it to the script.
struct MemBackend(Mutex<Option<HandlerFactory>>);

impl Backend for MemBackend {
    fn name(&self) -> &str {
        "mem"
    }
    fn listen(&self, _addr: SocketAddr, f: HandlerFactory) -> Result<Box<dyn Listener>, Error> {
        *self.0.lock().unwrap() = Some(f);
        Ok(Box::new(NoListener))
    }
    fn connect(&self, _: SocketAddr, _: Duration, _: Box<dyn Handler>) -> Result<(), Error> {
        Err(Error::ShutDown)
    }
    fn shutdown(&self) {}
}

/// The plaintext handler: echoes, pauses on command, bounded.
struct Inner {
    pause: Arc<AtomicBool>,
    answer: Arc<AtomicU8>,
}

impl Handler for Inner {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        if self.pause.load(Ordering::Relaxed) {
            conn.set_read_paused(true);
        }
        let d = data.split().freeze();
        let mode = self.answer.load(Ordering::Relaxed) % 4;
        if mode == 1 {
            // Pieces of 1, 2, 3, .. bytes: one record however many there are.
            let mut parts = VecDeque::new();
            let (mut at, mut n) = (0, 1);
            while at < d.len() {
                let end = (at + n).min(d.len());
                parts.push_back(d.slice(at..end));
                at = end;
                n += 1;
            }
            let _ = conn.send_vectored(&mut parts);
        } else {
            let _ = conn.send(d);
        }
        match mode {
            2 => {
                let _ = conn.shutdown_write();
            }
            3 => conn.close(),
            _ => {}
        }
    }
    fn on_timer(&mut self, conn: &Conn, _token: u64) {
        conn.set_read_paused(false);
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let provider = Arc::new(ZsSecurity::null_cipher(b"fuzz"));
    let mem = Arc::new(MemBackend(Mutex::new(None)));
    let cfg = SecureConfig {
        max_pending_plaintext: 64 * 1024,
        ..SecureConfig::default()
    };
    let secure = SecureBackend::with_config(mem.clone(), provider.clone(), cfg);
    let pause = Arc::new(AtomicBool::new(false));
    let p2 = pause.clone();
    let answer = Arc::new(AtomicU8::new(0));
    let a2 = answer.clone();
    let mut hold = false;
    let _l = secure
        .listen(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            Arc::new(move || {
                Box::new(Inner {
                    pause: p2.clone(),
                    answer: a2.clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let factory = mem.0.lock().unwrap().clone().unwrap();
    let mut h = factory();
    let mc = Arc::new(MemConn {
        out: Mutex::new(Vec::new()),
        timers: Mutex::new(Vec::new()),
        closed: AtomicBool::new(false),
        paused: AtomicBool::new(false),
    });
    let conn: Conn = mc.clone();
    h.on_open(&conn);
    let mut peer = provider.new_client(Instant::now()).unwrap();
    let mut peer_ok = true;
    // What the handler left unconsumed (a partial record) stays, and the next
    // bytes are appended behind it, as the zs-io contract's backends do.
    let mut rbuf = BytesMut::new();
    let mut deliver = |h: &mut Box<dyn Handler>, b: &[u8]| {
        if !b.is_empty() && !mc.closed.load(Ordering::Relaxed) {
            rbuf.extend_from_slice(b);
            h.on_data(&conn, &mut rbuf);
        }
    };
    for op in ops.into_iter().take(256) {
        let mut pout = Vec::new();
        match op {
            Op::Flush => {
                peer.write_output(&mut pout);
                deliver(&mut h, &pout);
            }
            Op::Send(d) => {
                if peer_ok {
                    let _ = peer.send(&d[..d.len().min(4096)], Instant::now());
                }
            }
            Op::Raw(b) => deliver(&mut h, &b),
            Op::Flip(i, x) => {
                peer.write_output(&mut pout);
                if !pout.is_empty() {
                    let i = i as usize % pout.len();
                    pout[i] ^= x | 1;
                }
                deliver(&mut h, &pout);
            }
            Op::Split(k) => {
                peer.write_output(&mut pout);
                let k = (k as usize).min(pout.len());
                deliver(&mut h, &pout[..k]);
                deliver(&mut h, &pout[k..]);
            }
            Op::Timer(t) => {
                let tok = {
                    let mut ts = mc.timers.lock().unwrap();
                    if ts.is_empty() {
                        None
                    } else {
                        let i = t as usize % ts.len();
                        Some(ts.swap_remove(i))
                    }
                };
                if let Some(tok) = tok {
                    if !mc.closed.load(Ordering::Relaxed) {
                        h.on_timer(&conn, tok);
                    }
                }
            }
            Op::Eof(clean) => {
                if clean && peer_ok {
                    let _ = peer.close();
                    peer.write_output(&mut pout);
                    deliver(&mut h, &pout);
                }
                if !mc.closed.load(Ordering::Relaxed) {
                    h.on_eof(&conn);
                }
            }
            Op::Pause(p) => pause.store(p, Ordering::Relaxed),
            Op::Answer(m) => answer.store(m, Ordering::Relaxed),
            Op::Hold(on) => hold = on,
        }
        if hold {
            // The raw queue keeps what it has: sends past 64 KiB are refused.
            continue;
        }
        // The layer's output goes back to the peer (the raw queue drains).
        let out = std::mem::take(&mut *mc.out.lock().unwrap());
        if peer_ok && !out.is_empty() && peer.handle_input(&out, Instant::now()).is_err() {
            peer_ok = false;
        }
        while peer.poll_event().is_some() {}
        if !mc.closed.load(Ordering::Relaxed) {
            h.on_writable(&conn);
        }
    }
    h.on_close(&conn, CloseReason::Local);
});
