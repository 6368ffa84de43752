//! One secure connection: [`SecureHandler`] is the raw connection's handler (it
//! owns the inner handler and the undelivered plaintext, and runs only on the raw
//! connection's loop), [`SecureConn`] is the plaintext [`Connection`] the inner
//! handler (and any thread) acts through. The session lives in `SecureConn`'s
//! mutex, because sends seal from any thread; the handler takes that lock to open
//! records and never holds it while it calls the inner handler.
//!
//! Poll order of one raw callback: open records (in place) and replace the
//! sending keys if they are due by age → react to session events (handshake done:
//! make and open the inner handler) → hand the plaintext to the inner handler with
//! sealing held → seal and send what it sent (one record for the whole callback) →
//! keep a partial frame the inner handler sized at the front of the raw buffer
//! (`hold_partial`: the next records open behind it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use zs_crypto::{Event, SecureSession, SuiteId};
use zs_io::{CloseReason, Conn, ConnId, Connection, Error, Handler, HandlerFactory, SecurityInfo};

use crate::{Counters, HandshakeError, Layer};

// Raw timer tokens of the layer; the inner handler's tokens are mapped to
// numbers from `FIRST_USER_TIMER` up (any u64 of theirs stays theirs).
const T_HANDSHAKE: u64 = 0;
const T_DRAIN: u64 = 1;
const T_RESUME: u64 = 2;
// 3 was the rekey timer (removed in session 12: see `rekey_if_due`).
const T_LINGER: u64 = 4;
const T_IDLE: u64 = 5;
const FIRST_USER_TIMER: u64 = 16;

/// The room the inner handler's buffer must have beyond the start of the
/// next record for the plaintext to be held at the front of the raw buffer:
/// the next reads land there, and regrowing it would copy the plaintext.
const HOLD_ROOM: usize = 64 * 1024;

/// The wire size of the Data records the layer sends: the backends' read
/// chunk (64 KiB), so a full read of a bulk transfer holds whole records and
/// no record's start is left over to move in front of the next read (records
/// of 64 KiB plaintext are 21 bytes longer than a read: nearly a whole
/// record was left over from every read).
const RECORD_WIRE: usize = 64 * 1024;

/// How often a connection whose inner handler waits for `on_writable` checks the
/// raw queue when the raw backend will not signal it (its queue was never full).
const DRAIN_POLL: Duration = Duration::from_millis(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sealing half, shared by every thread that sends.
struct St {
    session: Box<dyn SecureSession>,
    /// A callback of the inner handler runs: seal at its end, not per send.
    holding: bool,
    /// Plaintext accepted since the last seal.
    held: usize,
    /// Sealed bytes the raw queue refused (it signals `on_writable` for them).
    stalled: Option<Bytes>,
    /// A send of the inner handler was refused: it waits for `on_writable`.
    want_writable: bool,
    drain_armed: bool,
    write_closed: bool,
    /// The inner handler closed (or half-closed) while sealed bytes were
    /// stalled: the raw connection is closed once they went out, not before
    /// (they would be lost), or reset after `close_linger`.
    close_after_stall: Option<CloseAfter>,
    /// The inner handler's armed timers and wakes: (raw id, its token). A
    /// short list (a handler arms a few at a time), searched linearly.
    timers: Vec<(u64, u64)>,
    next_timer: u64,
    /// The last record sealed or opened (see [`SecureConfig::key_idle`](crate::SecureConfig::key_idle)).
    last_used: Instant,
    /// The key-idle timer is armed.
    idle_armed: bool,
}

/// Replaces the sending keys when their age reached the provider's limit
/// (`RekeyPolicy::max_age`). There is no timer per connection for it (a raw
/// timer per idle connection cost a timer-wheel entry each, session 12): the
/// sealing side checks the age before each new record (zs-crypto's
/// `append_data`), and a connection that only receives checks it here, when
/// it opens records. A connection silent in both directions keeps its traffic
/// secrets until its next record; its expanded keys are erased after
/// `SecureConfig::key_idle` anyway.
fn rekey_if_due(session: &mut dyn SecureSession, now: Instant) -> zs_crypto::Result<()> {
    if session.poll_timeout().is_some_and(|t| t <= now) {
        session.handle_timeout(now)?;
    }
    Ok(())
}

/// What to do with the raw connection once the stalled bytes went out.
#[derive(Clone, Copy, Debug)]
enum CloseAfter {
    ShutdownWrite,
    Close,
}

/// Who the peer is, kept compact: [`Connection::security_info`] builds the
/// `SecurityInfo` from it and the session on each call (the provider and
/// suite names are not copied into every connection, and the server key and
/// channel binding, 66 bytes, are the session's: session 14, issue 13).
struct Peer {
    suite: SuiteId,
    psk_identity: Option<Box<[u8]>>,
}

/// The plaintext connection handed to the inner handler.
pub(crate) struct SecureConn {
    raw: Conn,
    layer: Arc<Layer>,
    st: Mutex<St>,
    closed: AtomicBool,
    paused: AtomicBool,
    info: OnceLock<Peer>,
}

impl SecureConn {
    /// Seals what was sent since the last seal (and any handshake or alert bytes)
    /// and hands it to the raw connection.
    fn flush(&self, st: &mut St) {
        // Split off the session's reusable output buffer: once the raw
        // backend wrote and dropped `ct`, the session's next record reclaims
        // the same memory (no allocation per record in steady state).
        let ct = st.session.take_output_bytes();
        st.held = 0;
        if !ct.is_empty() {
            if let Some(prev) = st.stalled.take() {
                // Keep the order: join behind the bytes already waiting.
                let mut joined = BytesMut::with_capacity(prev.len() + ct.len());
                joined.extend_from_slice(&prev);
                joined.extend_from_slice(&ct);
                st.stalled = Some(joined.freeze());
            } else {
                self.raw_send(st, ct);
            }
        }
        if st.want_writable && st.stalled.is_none() && !st.drain_armed {
            // The raw backend will not call `on_writable`: look again shortly.
            st.drain_armed = self.raw.set_timer(DRAIN_POLL, T_DRAIN).is_ok();
        }
    }

    fn raw_send(&self, st: &mut St, ct: Bytes) {
        let fill = st.want_writable;
        self.raw_send_filling(st, ct, fill);
    }

    /// Hands `ct` to the raw queue; with `fill`, only up to the bound, so that
    /// the rest is refused (kept in `stalled`) and the raw backend owes an
    /// `on_writable`: a queue filled to the bound without a refusal would leave
    /// only the drain timer (a reactor tick) to resume the sender.
    fn raw_send_filling(&self, st: &mut St, ct: Bytes, fill: bool) {
        let mut ct = ct;
        if fill {
            // Fill the raw queue up to the bound so that the rest is refused: the
            // raw backend then calls `on_writable` exactly when it drained.
            let room = self.limit().saturating_sub(self.raw.queued_bytes());
            if room > 0 && ct.len() > room {
                let head = ct.split_to(room);
                if let Err(Error::Full(b)) = self.raw.send(head) {
                    let mut joined = BytesMut::with_capacity(b.len() + ct.len());
                    joined.extend_from_slice(&b);
                    joined.extend_from_slice(&ct);
                    st.stalled = Some(joined.freeze());
                    return;
                }
            }
        }
        if let Err(Error::Full(b)) = self.raw.send(ct) {
            st.stalled = Some(b);
        }
        // `Closed`: the connection is ending; its `on_close` follows.
    }

    /// `send` of the concatenation of `parts`: they go into the open record
    /// (sealed now off a callback, at its end inside one). `Full` carries no
    /// bytes (the caller hands its own back).
    fn seal(&self, parts: &[Bytes]) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut st = lock(&self.st);
        if st.write_closed || self.raw.is_closed() {
            return Err(Error::Closed);
        }
        let len: usize = parts.iter().map(Bytes::len).sum();
        if len == 0 {
            return Ok(());
        }
        if st.stalled.is_some() || self.raw.queued_bytes() + st.held >= self.limit() {
            st.want_writable = true;
            if !st.holding && st.stalled.is_none() && !st.drain_armed {
                st.drain_armed = self.raw.set_timer(DRAIN_POLL, T_DRAIN).is_ok();
            }
            return Err(Error::Full(Bytes::new()));
        }
        // The loop turn's time (see `zs_io::clock`): the key's age and the
        // key-idle bookkeeping are far coarser than one turn.
        let now = zs_io::clock::now();
        for p in parts.iter().filter(|p| !p.is_empty()) {
            if let Err(e) = st.session.send(p, now) {
                tracing::warn!(
                    conn = self.raw.id().0,
                    "zs-secure: {}: cannot seal: {e}; resetting",
                    self.raw.id()
                );
                drop(st);
                self.abort();
                return Err(Error::Closed);
            }
        }
        st.held += len;
        self.used(&mut st, now);
        if !st.holding {
            self.flush(&mut st);
        }
        Ok(())
    }

    /// When sealed bytes are stalled, defers the raw `what` until they went out
    /// (`SecureHandler::writable` performs it) and bounds the wait by the
    /// linger; `true` when deferred. A close overrides a pending half-close.
    fn close_after_stall(&self, st: &mut St, what: CloseAfter) -> bool {
        if st.stalled.is_none() {
            return false;
        }
        let first = st.close_after_stall.is_none();
        match (st.close_after_stall, what) {
            (Some(CloseAfter::Close), _) => {}
            _ => st.close_after_stall = Some(what),
        }
        if first {
            let _ = self.raw.set_timer(self.layer.cfg.close_linger, T_LINGER);
        }
        true
    }

    /// Whether a send would be accepted now (nothing stalled, room below the
    /// bound). Not "at half the bound": the raw backend calls `on_writable` at
    /// half, and the stalled bytes sent then put the queue above half again,
    /// which left only the drain timer (a reactor tick per refusal) to resume
    /// a bulk sender: zs-core's BigStream over the layer ran at 0.31x its
    /// built-in session, one 5 ms tick per 1.5 MiB.
    fn writable_now(&self, st: &St) -> bool {
        st.stalled.is_none() && self.raw.queued_bytes() + st.held < self.limit()
    }

    fn limit(&self) -> usize {
        self.layer.cfg.send_queue_limit
    }

    /// A record was sealed or opened at `now`: arms the key-idle timer if it
    /// is not armed (once keys exist).
    fn used(&self, st: &mut St, now: Instant) {
        st.last_used = now;
        if !st.idle_armed && self.info.get().is_some() {
            if let Some(d) = self.layer.cfg.key_idle {
                st.idle_armed = self.raw.set_timer(d, T_IDLE).is_ok();
            }
        }
    }

    /// The key-idle timer fired: after `key_idle` without a record, drop what
    /// the session can make again (its expanded keys) and every empty buffer;
    /// else look again when that time has passed since the last record.
    fn idle_check(&self, now: Instant) {
        let Some(d) = self.layer.cfg.key_idle else {
            return;
        };
        let mut st = lock(&self.st);
        st.idle_armed = false;
        let quiet = now.saturating_duration_since(st.last_used);
        if quiet >= d {
            st.session.release_keys();
            st.session.shrink();
            if st.timers.is_empty() {
                st.timers = Vec::new();
            }
        } else {
            st.idle_armed = self.raw.set_timer(d - quiet, T_IDLE).is_ok();
        }
    }

    /// Maps a fresh raw timer id to the inner handler's `token` and arms it with
    /// `start` (a timer or a wake on the raw connection).
    fn arm(
        &self,
        token: u64,
        start: impl FnOnce(&Conn, u64) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut st = lock(&self.st);
        let id = st.next_timer;
        st.next_timer += 1;
        st.timers.push((id, token));
        let r = start(&self.raw, id);
        if r.is_err() {
            st.timers.pop();
        }
        r
    }
}

impl Connection for SecureConn {
    fn id(&self) -> ConnId {
        self.raw.id()
    }
    fn peer_addr(&self) -> std::net::SocketAddr {
        self.raw.peer_addr()
    }
    fn local_addr(&self) -> std::net::SocketAddr {
        self.raw.local_addr()
    }
    fn send(&self, data: Bytes) -> Result<(), Error> {
        match self.seal(std::slice::from_ref(&data)) {
            Err(Error::Full(_)) => Err(Error::Full(data)),
            r => r,
        }
    }
    /// All parts of one call go into one record (one raw send off the loop),
    /// where the default's `send` per part would seal each part on its own: a
    /// frame header and its payload would leave as two records. Taken whole or
    /// not at all, by the bound a `send` of their concatenation meets.
    fn send_vectored(&self, parts: &mut std::collections::VecDeque<Bytes>) -> Result<(), Error> {
        self.seal(parts.make_contiguous())?;
        parts.clear();
        Ok(())
    }
    fn queued_bytes(&self) -> usize {
        let st = lock(&self.st);
        self.raw.queued_bytes() + st.held + st.stalled.as_ref().map_or(0, |b| b.len())
    }
    fn shutdown_write(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut st = lock(&self.st);
        if st.write_closed {
            return Err(Error::Closed);
        }
        st.write_closed = true;
        let _ = st.session.close(); // the close record: the peer sees a clean end
        self.flush(&mut st);
        if self.close_after_stall(&mut st, CloseAfter::ShutdownWrite) {
            return Ok(());
        }
        drop(st);
        self.raw.shutdown_write()
    }
    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut st = lock(&self.st);
        if !st.write_closed {
            st.write_closed = true;
            let _ = st.session.close();
        }
        self.flush(&mut st);
        if self.close_after_stall(&mut st, CloseAfter::Close) {
            return;
        }
        drop(st);
        self.raw.close();
    }
    fn abort(&self) {
        self.closed.store(true, Ordering::Release);
        self.raw.abort();
    }
    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error> {
        self.arm(token, |raw, id| raw.set_timer(after, id))
    }
    /// The raw connection's doorbell under a fresh id (mapped back to `token` in
    /// `on_timer`, as timers are): the default would arm a zero timer, which waits
    /// for the reactor's 5 ms tick.
    fn wake(&self, token: u64) -> Result<(), Error> {
        self.arm(token, |raw, id| raw.wake(id))
    }
    fn set_idle_timeout(&self, idle: Option<Duration>) {
        self.raw.set_idle_timeout(idle)
    }
    fn set_read_paused(&self, paused: bool) {
        let was = self.paused.swap(paused, Ordering::AcqRel);
        self.raw.set_read_paused(paused);
        if was && !paused {
            // Plaintext may wait undelivered: deliver it on the loop.
            let _ = self.raw.set_timer(Duration::ZERO, T_RESUME);
        }
    }
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.raw.is_closed()
    }
    /// Built on each call from the compact record kept per connection and
    /// the session (callers ask once, at open).
    fn security_info(&self) -> Option<Arc<SecurityInfo>> {
        let p = self.info.get()?;
        let (server_key, binding) = {
            let st = lock(&self.st);
            let key = if p.psk_identity.is_some() {
                None
            } else {
                st.session.server_key()
            };
            (key, st.session.channel_binding())
        };
        let info = SecurityInfo::new(
            self.layer.provider.name(),
            p.suite.name(),
            p.psk_identity.as_deref().map(<[u8]>::to_vec),
            server_key,
        )
        .with_channel_binding(binding);
        Some(Arc::new(info))
    }
}

/// Where one opened record's plaintext lies.
#[derive(Clone, Copy)]
enum Seg {
    /// In the raw read buffer (opened in place).
    Raw(usize, usize),
    /// In `side` (a record completed from the session's own buffer).
    Side(usize, usize),
}

enum Side {
    Server(HandlerFactory),
    /// Outgoing: the connect's deadline covers TCP and the handshake.
    Client(Instant),
}

/// What only a connection in its handshake uses: one box, dropped when the
/// handshake completed, so an established connection's handler keeps 8
/// bytes of it instead of about 64 (issue 13, session 14).
struct Handshaking {
    side: Side,
    /// The handshake's time limit on this connection.
    timeout: Duration,
    /// Counted in the layer's handshakes in progress.
    counted: bool,
    /// Counted in the layer's handshakes in progress from this address.
    counted_ip: Option<std::net::IpAddr>,
}

/// The raw connection's handler.
pub(crate) struct SecureHandler {
    layer: Arc<Layer>,
    /// Until the handshake completed (see [`Handshaking`]).
    hs: Option<Box<Handshaking>>,
    inner: Option<Box<dyn Handler>>,
    sc: Option<Arc<SecureConn>>,
    /// The inner handler got `on_open` (so it gets `on_close`).
    opened: bool,
    /// The connection is being dropped by the layer: ignore further input.
    dead: bool,
    /// Outgoing: `on_connect_failed` was delivered.
    failed: bool,
    /// The peer's FIN came while plaintext still waited (reading paused).
    eof_waiting: bool,
    pending: BytesMut,
    /// Plaintext kept at the front of the raw read buffer, ahead of the
    /// start of the next record: the start of a frame the inner handler left
    /// (see the end of `on_data`). The next records are opened right behind
    /// it, so the frame is completed where it lies.
    held: usize,
    /// Where the plaintext of the records of one read lies (emptied per read;
    /// its capacity is released with the keys when the connection idles).
    segs: Vec<Seg>,
}

impl SecureHandler {
    pub(crate) fn server(layer: Arc<Layer>, factory: HandlerFactory) -> SecureHandler {
        SecureHandler::new(layer, Side::Server(factory), None)
    }

    pub(crate) fn client(
        layer: Arc<Layer>,
        inner: Box<dyn Handler>,
        deadline: Instant,
    ) -> SecureHandler {
        SecureHandler::new(layer, Side::Client(deadline), Some(inner))
    }

    fn new(layer: Arc<Layer>, side: Side, inner: Option<Box<dyn Handler>>) -> SecureHandler {
        SecureHandler {
            layer,
            hs: Some(Box::new(Handshaking {
                side,
                timeout: Duration::ZERO,
                counted: false,
                counted_ip: None,
            })),
            inner,
            sc: None,
            opened: false,
            dead: false,
            failed: false,
            eof_waiting: false,
            pending: BytesMut::new(),
            held: 0,
            segs: Vec::new(),
        }
    }

    fn counters(&self) -> &Counters {
        &self.layer.counters
    }

    /// Counts an accepted connection in the handshakes in progress, overall
    /// and per source address; why not when either is at its bound.
    fn admit(&mut self, raw: &Conn) -> Result<(), String> {
        let max = self.layer.cfg.max_handshakes;
        let Some(hs) = self.hs.as_deref_mut() else {
            return Ok(());
        };
        hs.counted = true;
        if self.layer.handshaking.fetch_add(1, Ordering::AcqRel) >= max {
            return Err(format!("{max} handshakes already in progress"));
        }
        let ip = raw.peer_addr().ip();
        match self.layer.per_ip.enter(ip) {
            Ok(true) => hs.counted_ip = Some(ip),
            Ok(false) => {}
            Err(max) => return Err(format!("{max} handshakes already in progress from {ip}")),
        }
        Ok(())
    }

    /// This connection's handshake is over (done, failed or the connection ended).
    fn uncount(&mut self) {
        let Some(hs) = self.hs.as_deref_mut() else {
            return;
        };
        if std::mem::take(&mut hs.counted) {
            self.layer.handshaking.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(ip) = hs.counted_ip.take() {
            self.layer.per_ip.leave(ip);
        }
    }

    /// Runs `f` on the inner handler with sealing held: every send it makes goes
    /// into one open record, sealed and sent when it returns.
    fn call_inner(&mut self, f: impl FnOnce(&mut dyn Handler, &Conn)) {
        let (Some(sc), Some(inner)) = (&self.sc, &mut self.inner) else {
            return;
        };
        let conn: Conn = sc.clone();
        lock(&sc.st).holding = true;
        f(&mut **inner, &conn);
        let mut st = lock(&sc.st);
        st.holding = false;
        sc.flush(&mut st);
    }

    /// Drops the connection for `why` (logged and counted by the caller's choice
    /// of `counter`). Before the handshake completed an outgoing connection's
    /// handler gets `on_connect_failed(hs)`.
    fn fail(&mut self, raw: &Conn, why: &str, hs: HandshakeError, graceful: bool) {
        if self.dead {
            return;
        }
        self.dead = true;
        self.uncount();
        tracing::warn!(
            conn = raw.id().0,
            peer = %raw.peer_addr(),
            "zs-secure: {}: {why}; disconnecting",
            raw.id()
        );
        if let Some(sc) = &self.sc {
            sc.closed.store(true, Ordering::Release);
            if graceful {
                // A handshake alert may be queued: let it go out first.
                let mut st = lock(&sc.st);
                sc.flush(&mut st);
            }
        }
        if !self.opened {
            self.connect_failed(hs.into_io());
        }
        if graceful {
            raw.close();
        } else {
            raw.abort();
        }
    }

    fn connect_failed(&mut self, e: Error) {
        if self.is_client() && !self.failed && !self.opened {
            self.failed = true;
            if let Some(inner) = &mut self.inner {
                inner.on_connect_failed(e);
            }
        }
    }

    /// An outgoing connection whose handshake has not completed.
    fn is_client(&self) -> bool {
        matches!(self.hs.as_deref(), Some(h) if matches!(h.side, Side::Client(_)))
    }

    /// The handshake completed: record who the peer is, then make (listen side)
    /// and open the inner handler.
    fn established(&mut self, suite: zs_crypto::SuiteId, psk_identity: Option<Vec<u8>>) {
        let Some(sc) = self.sc.clone() else {
            return;
        };
        Counters::bump(&self.counters().handshakes);
        self.uncount();
        let _ = sc.info.set(Peer {
            suite,
            psk_identity: psk_identity.map(Vec::into_boxed_slice),
        });
        {
            // Keys exist from now: the key-idle timer runs.
            let mut st = lock(&sc.st);
            sc.used(&mut st, Instant::now());
        }
        // What only the handshake used goes (see `Handshaking`).
        if let Some(Side::Server(factory)) = self.hs.take().map(|h| h.side) {
            // A panicking factory unwinds to the raw backend, which drops this
            // connection (contract item 8); no inner handler exists then.
            self.inner = Some(factory());
        }
        self.opened = true;
        self.call_inner(|h, c| h.on_open(c));
    }

    /// Gives the waiting plaintext to the inner handler (unless reading is
    /// paused), then enforces the plaintext bound and delivers a waiting EOF.
    /// Returns the buffer the inner handler emptied, if it did (the raw read
    /// buffer, when it was handed on whole: `on_data` reads on into it).
    fn deliver(&mut self, raw: &Conn) -> Option<BytesMut> {
        let sc = self.sc.clone()?;
        if !self.opened || self.dead || sc.paused.load(Ordering::Acquire) {
            return None;
        }
        if !self.pending.is_empty() {
            let mut pending = std::mem::take(&mut self.pending);
            self.call_inner(|h, c| h.on_data(c, &mut pending));
            self.pending = pending;
        }
        let mut spent = None;
        if self.pending.is_empty() {
            // Release the read buffer the plaintext was a slice of.
            spent = Some(std::mem::take(&mut self.pending));
        } else if self.pending.len() > self.layer.cfg.max_pending_plaintext {
            Counters::bump(&self.counters().plaintext_overflows);
            let why = format!(
                "{} bytes of plaintext left unconsumed (max_pending_plaintext {})",
                self.pending.len(),
                self.layer.cfg.max_pending_plaintext
            );
            self.fail(raw, &why, HandshakeError::PeerClosed, false);
            return None;
        }
        if self.eof_waiting && (self.pending.is_empty() || !sc.paused.load(Ordering::Acquire)) {
            self.eof_waiting = false;
            self.call_inner(|h, c| h.on_eof(c));
        }
        spent
    }

    /// After delivery: when the inner handler left the start of a frame (of
    /// any size: not holding it copies the next read's plaintext behind it)
    /// and its buffer has room for the start of the next record behind it,
    /// that buffer becomes the raw read buffer (the record's start, at most
    /// one record, is copied behind the plaintext: what is left in `buf`,
    /// then `tail`, the partial record moved out when the raw buffer itself
    /// was handed on). The backend appends the next reads there, and the
    /// records are opened right behind the plaintext (`held`), so the frame
    /// is completed where it lies instead of each read's plaintext being
    /// copied behind it in `pending`. Not while reading is paused or an EOF
    /// waits (`deliver` hands `pending` on then). Whether it held.
    fn hold_partial(&mut self, buf: &mut BytesMut, tail: &[u8]) -> bool {
        let Some(sc) = &self.sc else {
            return false;
        };
        if self.pending.is_empty()
            || self.dead
            || self.eof_waiting
            || sc.paused.load(Ordering::Acquire)
            || self.pending.capacity() - self.pending.len() < buf.len() + tail.len() + HOLD_ROOM
        {
            return false;
        }
        let mut front = std::mem::take(&mut self.pending);
        self.held = front.len();
        front.extend_from_slice(buf);
        front.extend_from_slice(tail);
        *buf = front;
        true
    }

    fn writable(&mut self) {
        let Some(sc) = self.sc.clone() else {
            return;
        };
        let mut st = lock(&sc.st);
        if let Some(b) = st.stalled.take() {
            let fill = st.want_writable;
            sc.raw_send_filling(&mut st, b, fill);
            if st.stalled.is_some() {
                return; // the raw backend calls `on_writable` again
            }
        }
        if let Some(after) = st.close_after_stall.take() {
            // Everything sealed is in the raw queue now: close behind it.
            drop(st);
            match after {
                CloseAfter::ShutdownWrite => {
                    let _ = sc.raw.shutdown_write();
                }
                CloseAfter::Close => sc.raw.close(),
            }
            return;
        }
        if !st.want_writable {
            return;
        }
        if sc.writable_now(&st) {
            st.want_writable = false;
            drop(st);
            if self.opened && !self.dead {
                self.call_inner(|h, c| h.on_writable(c));
            }
        } else if st.stalled.is_none() && !st.drain_armed {
            st.drain_armed = sc.raw.set_timer(DRAIN_POLL, T_DRAIN).is_ok();
        }
    }
}

impl Handler for SecureHandler {
    fn on_open(&mut self, raw: &Conn) {
        if matches!(self.hs.as_deref(), Some(h) if matches!(h.side, Side::Server(_))) {
            if let Err(why) = self.admit(raw) {
                self.uncount();
                Counters::bump(&self.counters().handshakes_refused);
                self.dead = true;
                tracing::warn!(
                    conn = raw.id().0,
                    peer = %raw.peer_addr(),
                    "zs-secure: {}: {why}; resetting",
                    raw.id()
                );
                raw.abort();
                return;
            }
        }
        let now = Instant::now();
        let (made, hs_timeout) = match self.hs.as_deref().map(|h| &h.side) {
            None => return,
            Some(Side::Server(_)) => (
                self.layer.provider.new_server(now),
                self.layer.cfg.handshake_timeout,
            ),
            Some(Side::Client(deadline)) => (
                self.layer.provider.new_client(now),
                deadline.saturating_duration_since(now),
            ),
        };
        let session = match made {
            Ok(mut s) => {
                s.set_record_wire_size(RECORD_WIRE);
                s
            }
            Err(e) => {
                Counters::bump(&self.counters().handshake_failures);
                let why = format!(
                    "no session from provider {}: {e}",
                    self.layer.provider.name()
                );
                self.fail(raw, &why, HandshakeError::Provider(e), false);
                return;
            }
        };
        let sc = Arc::new(SecureConn {
            raw: raw.clone(),
            layer: self.layer.clone(),
            st: Mutex::new(St {
                session,
                holding: false,
                held: 0,
                stalled: None,
                want_writable: false,
                drain_armed: false,
                write_closed: false,
                close_after_stall: None,
                timers: Vec::new(),
                next_timer: FIRST_USER_TIMER,
                last_used: now,
                idle_armed: false,
            }),
            closed: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            info: OnceLock::new(),
        });
        if let Some(hs) = self.hs.as_deref_mut() {
            hs.timeout = hs_timeout;
        }
        let _ = raw.set_timer(hs_timeout, T_HANDSHAKE);
        {
            let mut st = lock(&sc.st);
            sc.flush(&mut st); // the client's hello
        }
        self.sc = Some(sc);
    }

    fn on_data(&mut self, raw: &Conn, buf: &mut BytesMut) {
        let Some(sc) = self.sc.clone() else {
            buf.clear();
            return;
        };
        if self.dead {
            buf.clear();
            return;
        }
        let now = zs_io::clock::now();
        let held = std::mem::take(&mut self.held).min(buf.len());
        let base = buf.as_ptr() as usize;
        let blen = buf.len();
        let mut established = None;
        // Plaintext of records completed from the session's own buffer.
        let mut side_buf = BytesMut::new();
        // The trailing partial record, when the raw buffer is handed on.
        let mut tail = BytesMut::new();
        let result = {
            let mut st = lock(&sc.st);
            let (segs, side_buf) = (&mut self.segs, &mut side_buf);
            let r = st.session.handle_input_leaving_partial(
                &mut buf[held..],
                now,
                &mut |pt: &[u8]| {
                    if pt.is_empty() {
                        return;
                    }
                    let p = pt.as_ptr() as usize;
                    if p >= base && p + pt.len() <= base + blen {
                        segs.push(Seg::Raw(p - base, p - base + pt.len()));
                    } else {
                        segs.push(Seg::Side(side_buf.len(), side_buf.len() + pt.len()));
                        side_buf.extend_from_slice(pt);
                    }
                },
            );
            while let Some(ev) = st.session.poll_event() {
                match ev {
                    Event::HandshakeComplete {
                        suite,
                        psk_identity,
                    } => established = Some((suite, psk_identity)),
                    Event::Data(d) => {
                        self.segs
                            .push(Seg::Side(side_buf.len(), side_buf.len() + d.len()));
                        side_buf.extend_from_slice(&d);
                    }
                    Event::KeyUpdated {
                        direction: zs_crypto::session::Direction::Receive,
                        ..
                    } => Counters::bump(&self.layer.counters.key_updates_received),
                    Event::KeyUpdated { .. } | Event::Closed => {}
                }
            }
            sc.used(&mut st, now);
            // A receive-only connection replaces its sending keys by age here
            // (a sender does before its next record).
            let r = r.and_then(|n| rekey_if_due(&mut *st.session, now).map(|()| n));
            // Key updates or alerts the input produced.
            sc.flush(&mut st);
            // Release the session's emptied input buffers (the handshake's,
            // its events) here, under this lock, not under one more at the
            // end of the callback: nothing after this point fills them.
            st.session.shrink();
            r
        };
        // Bytes of `buf` the session took (the plaintext held at its front,
        // then whole records); the rest is the start of a record.
        let mut consumed = held + *result.as_ref().unwrap_or(&(blen - held));
        let result = result.map(|_| ());
        if held > 0 && consumed == held && self.segs.is_empty() && result.is_ok() {
            // No record completed: the held plaintext stays where it is.
            self.held = held;
            consumed = 0;
        } else if held > 0 || !self.segs.is_empty() {
            // Gather the plaintext: in place when nothing waits before it.
            // The session packed the payloads behind each other (and behind
            // the held plaintext), so nothing moves then.
            let all_raw = self.segs.iter().all(|s| matches!(s, Seg::Raw(..)));
            if self.pending.is_empty() && all_raw {
                let (start, mut w) = match self.segs.first() {
                    Some(&Seg::Raw(a, _)) if held == 0 => (a, a),
                    _ => (0, held),
                };
                for s in &self.segs {
                    if let Seg::Raw(a, b) = *s {
                        if a != w {
                            buf.copy_within(a..b, w);
                        }
                        w += b - a;
                    }
                }
                // The raw buffer itself is handed on: the trailing partial
                // record (at most one) moves out first, then the buffer is
                // cut at the end of the plaintext and advanced to its start,
                // so what the inner handler reserves for a partial frame
                // lands in the room the backend reserved behind the read.
                if consumed < blen {
                    tail = BytesMut::from(&buf[consumed..]);
                }
                buf.truncate(w);
                buf.advance(start);
                self.pending = std::mem::take(buf);
                consumed = 0;
            } else {
                self.pending.extend_from_slice(&buf[..held]);
                for s in &self.segs {
                    match *s {
                        Seg::Raw(a, b) => self.pending.extend_from_slice(&buf[a..b]),
                        Seg::Side(a, b) => self.pending.extend_from_slice(&side_buf[a..b]),
                    }
                }
            }
            self.segs.clear();
        }
        // A trailing partial record stays in the raw buffer (or, when the raw
        // buffer was handed on, in `tail`, placed back in front of the next
        // read below): the backend appends the next bytes behind it, and the
        // record is opened where it lies once complete (no copy through the
        // session's own buffer).
        buf.advance(consumed.min(buf.len()));
        if let Err(e) = result {
            buf.clear();
            let opened = self.opened || established.is_some();
            let counter = if opened {
                &self.counters().record_errors
            } else {
                &self.counters().handshake_failures
            };
            Counters::bump(counter);
            let why = if opened {
                format!("bad record: {e}")
            } else {
                format!("handshake refused: {e}")
            };
            // Deliver what opened before the bad record? No: a stream with a forged
            // record in it is not trusted past the handshake's own data.
            self.pending = BytesMut::new();
            self.fail(raw, &why, HandshakeError::Failed(e), !opened);
            return;
        }
        if let Some((suite, psk)) = established {
            self.established(suite, psk);
            if self.dead {
                return;
            }
        }
        let spent = self.deliver(raw);
        if buf.is_empty() && buf.capacity() == 0 {
            // The plaintext was split off the front of the raw buffer and the
            // rest advanced to its end: once the inner handler dropped the
            // plaintext, take the whole allocation back (no allocation, only
            // when this is the last handle), so the backend keeps reading into
            // it instead of dropping an empty buffer without room and making a
            // new one (plus `bytes`' shared header at the next split) per read.
            let _ = buf.try_reclaim(1);
        }
        if !self.hold_partial(buf, &tail) && buf.capacity() == 0 {
            // The raw buffer was handed on whole: the backend reads on into
            // it (the inner handler consumed it, and this is its last handle)
            // behind the partial record, or into the partial record's copy.
            *buf = match spent {
                Some(mut b) if b.capacity() > 0 => {
                    if b.try_reclaim(tail.len().max(1)) {
                        b.extend_from_slice(&tail);
                        b
                    } else {
                        tail
                    }
                }
                _ => tail,
            };
        }
    }

    fn on_eof(&mut self, raw: &Conn) {
        if self.dead {
            raw.close();
            return;
        }
        let clean = match &self.sc {
            Some(sc) => lock(&sc.st).session.handle_eof().is_ok(),
            None => false,
        };
        if !self.opened {
            Counters::bump(&self.counters().handshake_failures);
            self.fail(
                raw,
                "peer closed during the handshake",
                HandshakeError::PeerClosed,
                true,
            );
            return;
        }
        if !clean {
            Counters::bump(&self.counters().truncated_eofs);
            tracing::debug!(
                conn = raw.id().0,
                "zs-secure: {}: FIN without a close record (stream may be truncated)",
                raw.id()
            );
        }
        self.eof_waiting = true;
        let _ = self.deliver(raw);
    }

    fn on_writable(&mut self, _raw: &Conn) {
        self.writable();
    }

    fn on_timer(&mut self, raw: &Conn, token: u64) {
        match token {
            T_HANDSHAKE => {
                if !self.opened && !self.dead {
                    Counters::bump(&self.counters().handshake_timeouts);
                    let d = self.hs.as_ref().map_or(Duration::ZERO, |h| h.timeout);
                    let why = format!("no handshake within {d:?}");
                    self.fail(raw, &why, HandshakeError::TimedOut(d), false);
                }
            }
            T_DRAIN => {
                if let Some(sc) = &self.sc {
                    lock(&sc.st).drain_armed = false;
                }
                self.writable();
            }
            T_RESUME => {
                let _ = self.deliver(raw);
            }
            T_IDLE => {
                if let Some(sc) = &self.sc {
                    sc.idle_check(Instant::now());
                }
                if self.segs.is_empty() {
                    self.segs = Vec::new();
                }
            }
            T_LINGER => {
                let Some(sc) = &self.sc else {
                    return;
                };
                let mut st = lock(&sc.st);
                if st.stalled.is_some() && st.close_after_stall.is_some() {
                    let n = st.stalled.take().map_or(0, |b| b.len());
                    st.close_after_stall = None;
                    drop(st);
                    tracing::warn!(
                        conn = raw.id().0,
                        peer = %raw.peer_addr(),
                        "zs-secure: {}: {n} sealed bytes not drained within the close linger ({:?}); resetting",
                        raw.id(),
                        sc.layer.cfg.close_linger
                    );
                    raw.abort();
                }
            }
            id => {
                let user = self.sc.as_ref().and_then(|sc| {
                    let mut st = lock(&sc.st);
                    let i = st.timers.iter().position(|&(raw_id, _)| raw_id == id)?;
                    Some(st.timers.swap_remove(i).1)
                });
                if let Some(t) = user {
                    if self.opened && !self.dead {
                        self.call_inner(|h, c| h.on_timer(c, t));
                    }
                }
            }
        }
    }

    fn on_close(&mut self, _raw: &Conn, reason: CloseReason) {
        self.uncount();
        if let Some(sc) = &self.sc {
            sc.closed.store(true, Ordering::Release);
            let mut st = lock(&sc.st);
            st.holding = false;
            st.timers.clear();
        }
        if self.opened {
            if let (Some(inner), Some(sc)) = (&mut self.inner, &self.sc) {
                let conn: Conn = sc.clone();
                inner.on_close(&conn, reason);
            }
        } else {
            let e = match reason {
                CloseReason::Shutdown => Error::ShutDown,
                _ => HandshakeError::PeerClosed.into_io(),
            };
            self.connect_failed(e);
        }
    }

    fn on_connect_failed(&mut self, error: Error) {
        self.connect_failed(error);
    }
}

#[cfg(test)]
mod size_tests {
    /// Every connection of the layer has one raw handler (issue 13): what
    /// only its handshake used is one box dropped at the handshake's end
    /// (`Handshaking`). 112 bytes (160 with that inline, session 13), so
    /// glibc's chunk for it is 128 bytes instead of 176.
    #[test]
    fn the_raw_handler_stays_small() {
        let n = std::mem::size_of::<super::SecureHandler>();
        assert!(n <= 112, "SecureHandler is {n} bytes");
    }

    /// The plaintext connection, one per connection too: the peer record
    /// keeps the suite and a PSK identity, and reads the server key and the
    /// channel binding from the session (they were copies of its values).
    /// 184 bytes (248 in session 13): glibc's chunk for its `Arc` is 208
    /// bytes instead of 272.
    #[test]
    fn the_plaintext_connection_stays_small() {
        let n = std::mem::size_of::<super::SecureConn>();
        assert!(n <= 184, "SecureConn is {n} bytes");
    }
}
