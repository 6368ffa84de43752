//! The driver: the physical connection's handler, the tunnel state behind its
//! mutex, and the dispatch loop that calls virtual connections' handlers without
//! holding the lock.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering as AtOrd};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_io::{
    catch_handler_panic, drop_guarded, CloseReason, Conn, ConnId, Handler, HandlerFactory, Listener,
};

use super::vconn::VConn;
use super::{CloseInfo, Inner};
use crate::addr::{anonymous, AddrTable};
use crate::{MuxEvent, StreamId};

/// The one token the driver uses for timers on the physical connection.
const TOKEN_TICK: u64 = 0x7032_7076_6d00_0001;
/// How many handler calls between two pushes of output to the link during a drive.
const FLUSH_EVERY: u32 = 64;
/// Data bytes taken from the Mux per turn of link output (its pieces go to the
/// backend in one `send_vectored`, which writes them with one `writev`).
const OUT_DATA: usize = 64 * 1024;
/// Room reserved in the head buffer (frame headers, control frames, short
/// payloads) before each turn, so the Mux rarely grows it while filling it.
const HEAD_RESERVE: usize = 8 * 1024;
/// First virtual port tried when a listener asks for port 0.
const EPHEMERAL_FIRST: u16 = 49152;

// Slot flags.
pub(crate) const PAUSED: u16 = 1;
pub(crate) const WANT_WRITABLE: u16 = 1 << 1;
pub(crate) const WR_SHUT_REQ: u16 = 1 << 2;
pub(crate) const WR_SHUT_DONE: u16 = 1 << 3;
pub(crate) const CLOSING: u16 = 1 << 4;
pub(crate) const MUX_CLOSED: u16 = 1 << 5;
pub(crate) const PEER_FIN: u16 = 1 << 6;
pub(crate) const EOF_DELIVERED: u16 = 1 << 7;
pub(crate) const DONE: u16 = 1 << 8;
pub(crate) const GONE: u16 = 1 << 9;
pub(crate) const QUEUED: u16 = 1 << 10;
/// Accepted through a listener (else: an outgoing connection).
pub(crate) const ACCEPTED: u16 = 1 << 11;

/// Buffers and settings of a virtual connection, allocated only once data flows
/// through it (or an idle timeout is set): an idle connection is its table entry.
#[derive(Default)]
pub(crate) struct Bufs {
    /// The idle timeout, if any.
    pub(crate) idle: Option<Idle>,
    /// Received bytes handed to the handler (it may leave a partial message).
    pub(crate) rbuf: BytesMut,
    /// Bytes accepted by `send` that the Mux's send buffer could not take yet.
    pub(crate) backlog: VecDeque<Bytes>,
    pub(crate) backlog_len: usize,
}

/// Less-used per-connection settings, allocated only when used.
pub(crate) struct Idle {
    pub(crate) after: Duration,
    pub(crate) last: Instant,
}

/// One virtual connection at this end (24 bytes; its buffers live in a side table
/// only while it has any, and its `Conn` handle is made when a callback needs
/// one, so an idle connection costs only this table entry).
pub(crate) struct Slot {
    /// `None` only while its callback runs (outside the lock) or after `on_close`.
    handler: Option<Box<dyn Handler>>,
    /// The virtual address it is bound to (interned): the listen address it was
    /// accepted on, or the address it connected to.
    addr: u32,
    pub(crate) flags: u16,
    /// Set by a local action that decides the `on_close` reason (abort, timeouts).
    pub(crate) reason: Option<CloseReason>,
}

impl Slot {
    pub(crate) fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

struct Pending {
    handler: Box<dyn Handler>,
    /// The interned address connected to (the slot takes this reference).
    addr: u32,
}

struct ListenEntry {
    id: u32,
    factory: HandlerFactory,
}

#[derive(Clone, Copy)]
enum TimerKind {
    User { sid: StreamId, token: u64 },
    Idle(StreamId),
    Linger(StreamId),
    ConnectTimeout(StreamId),
}

struct TimerEntry {
    at: Instant,
    seq: u64,
    kind: TimerKind,
}

impl PartialEq for TimerEntry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

pub(crate) enum Deferred {
    ConnectFailed(Box<dyn Handler>, zs_io::Error),
    Finish(StreamId, CloseReason),
}

enum Call {
    Open,
    Data(BytesMut),
    Eof,
    Writable,
    Timer(u64),
}

enum Action {
    Call {
        sid: StreamId,
        handler: Box<dyn Handler>,
        conn: Conn,
        call: Call,
    },
    Incoming {
        sid: StreamId,
        factory: HandlerFactory,
        conn: Conn,
    },
    Close {
        handler: Box<dyn Handler>,
        conn: Conn,
        reason: CloseReason,
    },
    ConnectFailed(Box<dyn Handler>, zs_io::Error),
}

/// What became of a handler after [`exec`] ran its callback (outside the lock).
enum Outcome {
    /// The callback returned: put the handler back (with the unread rest of the
    /// data, for `on_data`).
    Restore {
        sid: StreamId,
        id: ConnId,
        handler: Box<dyn Handler>,
        buf: Option<BytesMut>,
    },
    /// The callback (or the listener's factory: then there is no handler)
    /// panicked: reset the stream and deliver `on_close(HandlerPanicked)`.
    Panicked {
        sid: StreamId,
        id: ConnId,
        handler: Option<Box<dyn Handler>>,
    },
    /// Nothing to put back (`on_close`, `on_connect_failed`).
    Done,
}

/// Everything behind the tunnel's mutex.
pub(crate) struct State {
    pub(crate) mux: crate::Mux,
    pub(crate) phys: Option<Conn>,
    /// The physical connection must report a secure session
    /// (`Connection::security_info`): the tunnel runs inside the secure layer.
    secure_link: bool,
    /// Reading the link is paused: the Mux's control output is at its cap.
    pub(crate) read_paused: bool,
    /// Link output the physical connection refused (`Full`), in order.
    blocked: VecDeque<Bytes>,
    /// Frame headers, control frames and short payloads of the next output
    /// (cut into pieces by `Mux::write_output_parts`; long payloads go as they
    /// are, uncopied).
    head: BytesMut,
    /// The pieces of one turn of output (kept for its capacity).
    parts: VecDeque<Bytes>,
    pub(crate) slots: HashMap<StreamId, Slot>,
    /// Buffers of the virtual connections that have any (see [`Bufs`]).
    pub(crate) bufs: HashMap<StreamId, Box<Bufs>>,
    pending: HashMap<StreamId, Pending>,
    listeners: HashMap<SocketAddr, ListenEntry>,
    next_listener: u32,
    addrs: AddrTable,
    next_port: u16,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    timer_seq: u64,
    armed: Option<Instant>,
    deferred: VecDeque<Deferred>,
    events: VecDeque<MuxEvent>,
    service: VecDeque<StreamId>,
    pub(crate) ready: bool,
    pub(crate) closed: Option<CloseInfo>,
    pub(crate) auth_failed: bool,
    shutting_down: bool,
    pub(crate) driving: bool,
    pub(crate) pongs: u64,
    pub(crate) opened: u64,
    /// Timer entries known to be dead (connect timers of answered connects).
    stale_timers: usize,
    phys_closed: bool,
}

impl State {
    pub(crate) fn new(mux: crate::Mux, secure_link: bool) -> State {
        State {
            mux,
            phys: None,
            secure_link,
            read_paused: false,
            blocked: VecDeque::new(),
            head: BytesMut::new(),
            parts: VecDeque::new(),
            slots: HashMap::new(),
            bufs: HashMap::new(),
            pending: HashMap::new(),
            listeners: HashMap::new(),
            next_listener: 1,
            addrs: AddrTable::default(),
            next_port: EPHEMERAL_FIRST,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            armed: None,
            deferred: VecDeque::new(),
            events: VecDeque::new(),
            service: VecDeque::new(),
            ready: false,
            closed: None,
            auth_failed: false,
            shutting_down: false,
            driving: false,
            pongs: 0,
            opened: 0,
            stale_timers: 0,
            phys_closed: false,
        }
    }

    /// Bytes of a connection's backlog (accepted by `send`, not yet in the Mux).
    pub(crate) fn backlog_len(&self, sid: StreamId) -> usize {
        self.bufs.get(&sid).map_or(0, |b| b.backlog_len)
    }

    /// A connection's buffers, allocated on first use.
    pub(crate) fn bufs_mut(&mut self, sid: StreamId) -> &mut Bufs {
        self.bufs.entry(sid).or_default()
    }

    /// Notes traffic for the idle timeout, if the connection has one.
    pub(crate) fn touch(&mut self, sid: StreamId) {
        if let Some(i) = self.bufs.get_mut(&sid).and_then(|b| b.idle.as_mut()) {
            i.last = Instant::now();
        }
    }

    fn push_timer(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse(TimerEntry {
            at,
            seq: self.timer_seq,
            kind,
        }));
    }

    pub(crate) fn add_user_timer(&mut self, sid: StreamId, after: Duration, token: u64) {
        self.push_timer(Instant::now() + after, TimerKind::User { sid, token });
    }

    pub(crate) fn add_idle_timer(&mut self, sid: StreamId, at: Instant) {
        self.push_timer(at, TimerKind::Idle(sid));
    }

    pub(crate) fn add_linger_timer(&mut self, sid: StreamId, after: Duration) {
        self.push_timer(Instant::now() + after, TimerKind::Linger(sid));
    }

    /// Queues a slot for reading / EOF / end-of-stream processing.
    pub(crate) fn schedule(&mut self, sid: StreamId) {
        if let Some(s) = self.slots.get_mut(&sid) {
            if !s.has(QUEUED) {
                s.flags |= QUEUED;
                self.service.push_back(sid);
            }
        }
    }

    pub(crate) fn defer(&mut self, d: Deferred) {
        self.deferred.push_back(d);
    }

    fn has_work(&self) -> bool {
        !self.deferred.is_empty() || !self.service.is_empty() || !self.events.is_empty()
    }

    /// Gives back memory that bursts left behind: dead timer entries (connect
    /// timers of connects answered long before their deadline) and the spare
    /// capacity of queues and tables. Amortized: each step at least halves what it
    /// keeps.
    fn compact(&mut self) {
        if self.timers.len() > 1024 && self.stale_timers * 2 > self.timers.len() {
            let (pending, slots) = (&self.pending, &self.slots);
            self.timers.retain(|Reverse(t)| match t.kind {
                TimerKind::ConnectTimeout(sid) => pending.contains_key(&sid),
                TimerKind::User { sid, .. } | TimerKind::Idle(sid) | TimerKind::Linger(sid) => {
                    slots.contains_key(&sid)
                }
            });
            self.stale_timers = 0;
            if self.timers.capacity() > 2 * self.timers.len() + 1024 {
                self.timers.shrink_to_fit();
            }
        }
        fn shrink_map<V>(m: &mut HashMap<StreamId, V>) {
            if m.capacity() > 1024 && m.len() * 4 < m.capacity() {
                m.shrink_to_fit();
            }
        }
        shrink_map(&mut self.pending);
        shrink_map(&mut self.slots);
        shrink_map(&mut self.bufs);
        fn shrink_queue<T>(q: &mut VecDeque<T>) {
            if q.capacity() > 1024 && q.len() * 4 < q.capacity() {
                q.shrink_to(q.len() * 2);
            }
        }
        shrink_queue(&mut self.events);
        shrink_queue(&mut self.service);
        shrink_queue(&mut self.deferred);
    }

    fn pump_events(&mut self) {
        while let Some(ev) = self.mux.poll_event() {
            self.events.push_back(ev);
        }
    }

    /// A Mux input error ends the tunnel (the Mux reports `TunnelClosed` with its
    /// reason; keep that one if it did).
    fn mux_failed(&mut self, e: crate::Error) {
        self.pump_events();
        if !self
            .events
            .iter()
            .any(|e| matches!(e, MuxEvent::TunnelClosed { .. }))
        {
            self.tunnel_dead(e.to_string());
        }
    }

    /// Pauses reading the link while the Mux holds input because its control output
    /// is at its cap (the peer sends requests and does not read the answers).
    fn pause_if_blocked(&mut self) {
        if !self.read_paused && self.closed.is_none() && self.mux.input_blocked() {
            if let Some(p) = &self.phys {
                self.read_paused = true;
                p.set_read_paused(true);
                tracing::debug!(
                    control = self.mux.control_len(),
                    held = self.mux.pending_input(),
                    "p2pvm tunnel: control output at its cap, reading paused"
                );
            }
        }
    }

    /// Once the control output drained: handles the input the Mux held and resumes
    /// reading the link. True if held input was handled (more work may follow).
    fn resume_input(&mut self) -> bool {
        if !self.read_paused || self.closed.is_some() || self.mux.input_blocked() {
            return false;
        }
        let before = self.mux.pending_input();
        if let Err(e) = self.mux.handle_input(&[], Instant::now()) {
            self.mux_failed(e);
            return true;
        }
        if self.mux.input_blocked() {
            // Still (again) at the cap: stay paused until the output drains.
            return self.mux.pending_input() != before;
        }
        self.read_paused = false;
        if let Some(p) = &self.phys {
            p.set_read_paused(false);
        }
        true
    }

    /// The physical connection opened: when a secure layer runs it (its
    /// `security_info` reports the session), token PROOFs are bound to the
    /// session's channel binding before any tunnel byte is handled. A tunnel
    /// that requires a secure link ends if the link reports none; token auth
    /// fails closed on a session without a channel binding (an unbound PROOF
    /// could be relayed into another secure session).
    fn bind_link(&mut self, conn: &Conn) {
        let token = matches!(self.mux.config().auth, Some(crate::Auth::Token(_)));
        let failure = match conn.security_info() {
            None if self.secure_link => {
                Some("the physical link reports no secure session".to_string())
            }
            None => None,
            Some(info) => match info.channel_binding {
                Some(b) => self
                    .mux
                    .bind_channel(b)
                    .err()
                    .map(|e| format!("channel binding: {e}")),
                None if token => {
                    Some("the secure session offers no channel binding for token auth".to_string())
                }
                None => None,
            },
        };
        if let Some(f) = failure {
            self.tunnel_dead(f);
        }
    }

    /// Moves the Mux's pending bytes to the physical connection (plaintext: a
    /// secure layer underneath seals them), as far as its send queue takes them.
    pub(crate) fn flush(&mut self) {
        let Some(phys) = self.phys.clone() else {
            return;
        };
        if self.phys_closed {
            return;
        }
        if !self.blocked.is_empty() {
            match phys.send_vectored(&mut self.blocked) {
                Ok(()) => {}
                Err(zs_io::Error::Full(_)) => return,
                Err(_) => {
                    self.blocked.clear();
                    return;
                }
            }
        }
        loop {
            // Headers apart from payloads: a DATA payload handed to `send` as
            // `Bytes` reaches the backend as a slice of those very bytes.
            self.head.reserve(HEAD_RESERVE);
            let mut parts = std::mem::take(&mut self.parts);
            if self
                .mux
                .write_output_parts(&mut self.head, &mut parts, OUT_DATA)
                == 0
            {
                self.parts = parts;
                break;
            }
            let r = phys.send_vectored(&mut parts);
            match r {
                Ok(()) => self.parts = parts,
                Err(zs_io::Error::Full(_)) => {
                    self.blocked = parts;
                    break;
                }
                Err(_) => {
                    parts.clear();
                    self.parts = parts;
                    break;
                }
            }
        }
    }

    /// Arms the physical timer for the earliest deadline (now, if work waits).
    fn arm(&mut self, work: bool) {
        let Some(phys) = self.phys.clone() else {
            return;
        };
        if self.phys_closed {
            return;
        }
        let now = Instant::now();
        let mut next = self.mux.poll_timeout();
        if let Some(Reverse(t)) = self.timers.peek() {
            next = min_opt(next, Some(t.at));
        }
        if work {
            next = Some(now);
        }
        if let Some(n) = next {
            if self.armed.is_none_or(|a| n < a) {
                self.armed = Some(n);
                if n <= now {
                    // Due now (a virtual connection's `wake`, work caused off the
                    // loop): ring the physical loop's doorbell rather than arm a
                    // zero timer, which waits for the backend's tick (5 ms on
                    // epoll: a zs-core call inside a tunnel waited that long).
                    let _ = phys.wake(TOKEN_TICK);
                } else {
                    let _ = phys.set_timer(n.saturating_duration_since(now), TOKEN_TICK);
                }
            }
        }
    }

    /// After an operation from outside a drive: push output, and wake the loop if a
    /// callback is now due or a deadline moved.
    pub(crate) fn after_op(&mut self) {
        self.pump_events();
        if !self.driving {
            self.flush();
            self.pump_events();
            let work = self.has_work();
            self.arm(work);
        }
    }

    /// Pushes a slot's backlog into the Mux; runs the deferred FIN/close once it
    /// is empty.
    pub(crate) fn push_backlog(&mut self, sid: StreamId) {
        let Some(slot) = self.slots.get_mut(&sid) else {
            return;
        };
        if let Some(b) = self.bufs.get_mut(&sid) {
            while let Some(front) = b.backlog.pop_front() {
                let len = front.len();
                match self.mux.send_bytes(sid, front.clone()) {
                    Ok(n) if n >= len => b.backlog_len -= len,
                    Ok(n) => {
                        b.backlog_len -= n;
                        b.backlog.push_front(front.slice(n..));
                        break;
                    }
                    Err(_) => {
                        b.backlog.clear();
                        b.backlog_len = 0;
                        break;
                    }
                }
            }
        }
        if self.bufs.get(&sid).is_none_or(|b| b.backlog_len == 0) {
            if slot.has(CLOSING) && !slot.has(MUX_CLOSED) {
                slot.flags |= MUX_CLOSED;
                self.mux.close(sid);
            } else if slot.has(WR_SHUT_REQ) && !slot.has(WR_SHUT_DONE) {
                slot.flags |= WR_SHUT_DONE;
                let _ = self.mux.shutdown_write(sid);
            }
        }
    }

    /// The tunnel ended: every virtual connection and pending connect is told (on
    /// the loop), the peer gets a GoAway if the Mux still can send one, and the
    /// physical connection closes.
    pub(crate) fn tunnel_dead(&mut self, reason: String) {
        if self.closed.is_some() {
            return;
        }
        let mut unsent = 0;
        let mut unread = 0;
        let mut open = self.pending.len();
        let vreason = if self.shutting_down {
            CloseReason::Shutdown
        } else {
            CloseReason::Error(ErrorKind::ConnectionAborted)
        };
        let mut sids: Vec<StreamId> = Vec::with_capacity(self.slots.len());
        for (sid, s) in self.slots.iter_mut() {
            let b = self.bufs.get(sid);
            unsent += b.map_or(0, |b| b.backlog_len) + self.mux.send_queued(*sid);
            unread += b.map_or(0, |b| b.rbuf.len()) + self.mux.readable_len(*sid);
            if !s.has(DONE) {
                open += 1;
                s.flags |= GONE;
                sids.push(*sid);
            }
        }
        for sid in sids {
            self.deferred.push_back(Deferred::Finish(sid, vreason));
        }
        let ferr = if self.shutting_down {
            || zs_io::Error::ShutDown
        } else {
            || {
                zs_io::Error::Io(std::io::Error::new(
                    ErrorKind::ConnectionAborted,
                    "tunnel closed",
                ))
            }
        };
        let pending: Vec<_> = self.pending.drain().collect();
        for (_, p) in pending {
            self.deferred
                .push_back(Deferred::ConnectFailed(p.handler, ferr()));
        }
        self.listeners.clear();
        tracing::debug!(%reason, open, unsent, unread, "p2pvm tunnel closed");
        self.closed = Some(CloseInfo {
            reason: reason.clone(),
            open_streams: open,
            unsent_bytes: unsent,
            unread_bytes: unread,
        });
        self.mux.close_tunnel(&reason);
        self.flush();
        if let Some(p) = &self.phys {
            p.close();
        }
        // Work for the loop; if the link is already gone the caller drives.
        let work = self.has_work();
        self.arm(work);
    }

    fn new_slot(&mut self, sid: StreamId, addr: u32, inner: &Arc<Inner>, accepted: bool) -> Conn {
        self.opened += 1;
        if let Some(after) = inner.default_idle {
            let now = Instant::now();
            self.add_idle_timer(sid, now + after);
            self.bufs_mut(sid).idle = Some(Idle { after, last: now });
        }
        self.slots.insert(
            sid,
            Slot {
                handler: None,
                addr,
                flags: if accepted { ACCEPTED } else { 0 },
                reason: None,
            },
        );
        self.conn(inner, sid)
    }

    /// A `Conn` handle for a slot (made on demand; every handle of one virtual
    /// connection has the same id and addresses).
    pub(crate) fn conn(&self, inner: &Arc<Inner>, sid: StreamId) -> Conn {
        let (local, peer) = match self.slots.get(&sid) {
            Some(s) => {
                let a = self.addrs.get(s.addr);
                if s.has(ACCEPTED) {
                    (a, anonymous(a))
                } else {
                    (anonymous(a), a)
                }
            }
            None => (
                anonymous(SocketAddr::from(([0u8; 4], 0))),
                anonymous(SocketAddr::from(([0u8; 4], 0))),
            ),
        };
        Arc::new(VConn::new(
            inner.serial,
            sid,
            local,
            peer,
            Arc::downgrade(inner),
        ))
    }

    fn remove_slot(&mut self, sid: StreamId) {
        if let Some(s) = self.slots.remove(&sid) {
            self.addrs.release(s.addr);
        }
        self.bufs.remove(&sid);
    }

    /// Delivers `on_close(reason)` (once); the slot is removed when the Mux's stream
    /// is gone too, else it stays as a silent zombie until then (or the linger).
    fn finish(&mut self, inner: &Arc<Inner>, sid: StreamId, reason: CloseReason) -> Option<Action> {
        let linger = inner.close_linger;
        let slot = self.slots.get_mut(&sid)?;
        if slot.has(DONE) {
            return None;
        }
        slot.flags |= DONE;
        let handler = slot.handler.take();
        let gone = slot.has(GONE);
        self.bufs.remove(&sid);
        let conn = self.conn(inner, sid);
        if gone {
            self.remove_slot(sid);
        } else {
            let slot = self.slots.get_mut(&sid)?;
            if !slot.has(MUX_CLOSED) {
                slot.flags |= MUX_CLOSED;
                self.mux.close(sid);
            }
            self.add_linger_timer(sid, linger);
            self.schedule(sid);
        }
        handler.map(|handler| Action::Close {
            handler,
            conn,
            reason,
        })
    }

    /// The reason a stream whose Mux side ended closes with.
    fn end_reason(slot: &Slot, reset: bool) -> CloseReason {
        if let Some(r) = slot.reason {
            r
        } else if reset {
            CloseReason::Reset
        } else if slot.has(CLOSING) && !slot.has(PEER_FIN) {
            CloseReason::Local
        } else {
            CloseReason::PeerClosed
        }
    }

    /// Next piece of work for the loop, prepared under the lock.
    fn next_action(&mut self, inner: &Arc<Inner>, now: Instant) -> Option<Action> {
        loop {
            if let Some(d) = self.deferred.pop_front() {
                match d {
                    Deferred::ConnectFailed(h, e) => return Some(Action::ConnectFailed(h, e)),
                    Deferred::Finish(sid, reason) => {
                        if let Some(a) = self.finish(inner, sid, reason) {
                            return Some(a);
                        }
                        continue;
                    }
                }
            }
            if self.closed.is_none() && self.mux.poll_timeout().is_some_and(|t| t <= now) {
                self.mux.handle_timeout(now);
            }
            if self.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
                if let Some(Reverse(t)) = self.timers.pop() {
                    if let Some(a) = self.on_timer(inner, t.kind, now) {
                        return Some(a);
                    }
                }
                continue;
            }
            // One event at a time: a burst (a million opens) never piles up here.
            if let Some(ev) = self.events.pop_front().or_else(|| self.mux.poll_event()) {
                if let Some(a) = self.on_event(inner, ev) {
                    return Some(a);
                }
                continue;
            }
            if let Some(sid) = self.service.pop_front() {
                if let Some(a) = self.service_slot(inner, sid) {
                    return Some(a);
                }
                continue;
            }
            return None;
        }
    }

    fn call(&mut self, inner: &Arc<Inner>, sid: StreamId, call: Call) -> Option<Action> {
        let slot = self.slots.get_mut(&sid)?;
        let handler = slot.handler.take()?;
        Some(Action::Call {
            sid,
            handler,
            conn: self.conn(inner, sid),
            call,
        })
    }

    fn on_timer(&mut self, inner: &Arc<Inner>, kind: TimerKind, now: Instant) -> Option<Action> {
        match kind {
            TimerKind::User { sid, token } => {
                let slot = self.slots.get(&sid)?;
                if slot.has(DONE) {
                    return None;
                }
                self.call(inner, sid, Call::Timer(token))
            }
            TimerKind::Idle(sid) => {
                let slot = self.slots.get_mut(&sid)?;
                if slot.has(DONE) {
                    return None;
                }
                let idle = self.bufs.get(&sid).and_then(|b| b.idle.as_ref())?;
                let due = idle.last + idle.after;
                if due > now {
                    self.add_idle_timer(sid, due);
                    return None;
                }
                let slot = self.slots.get_mut(&sid)?;
                slot.reason = Some(CloseReason::IdleTimeout);
                slot.flags |= CLOSING;
                self.push_backlog(sid);
                self.finish(inner, sid, CloseReason::IdleTimeout)
            }
            TimerKind::Linger(sid) => {
                let slot = self.slots.get_mut(&sid)?;
                if slot.has(GONE) {
                    return None;
                }
                slot.flags |= GONE;
                self.mux.reset(sid);
                if slot.has(DONE) {
                    self.remove_slot(sid);
                    return None;
                }
                let reason = slot.reason.unwrap_or(CloseReason::Local);
                self.finish(inner, sid, reason)
            }
            TimerKind::ConnectTimeout(sid) => {
                let p = self.pending.remove(&sid)?;
                self.addrs.release(p.addr);
                self.mux.reset(sid);
                Some(Action::ConnectFailed(p.handler, zs_io::Error::TimedOut))
            }
        }
    }

    fn on_event(&mut self, inner: &Arc<Inner>, ev: MuxEvent) -> Option<Action> {
        match ev {
            MuxEvent::Ready => {
                self.ready = true;
                inner.cond.notify_all();
                None
            }
            MuxEvent::PeerListen { .. } => {
                inner.cond.notify_all();
                None
            }
            MuxEvent::Incoming { id, local, peer } => {
                let entry = self.listeners.get_key_value(&local).or_else(|| {
                    self.listeners
                        .iter()
                        .find(|(a, _)| a.port() == local.port() && a.ip().is_unspecified())
                });
                let Some((&key, entry)) = entry else {
                    self.mux.reset(id);
                    return None;
                };
                let factory = entry.factory.clone();
                let _ = peer;
                let key = self.addrs.intern(key);
                let conn = self.new_slot(id, key, inner, true);
                Some(Action::Incoming {
                    sid: id,
                    factory,
                    conn,
                })
            }
            MuxEvent::Connected { id } => {
                self.stale_timers += 1;
                let Some(p) = self.pending.remove(&id) else {
                    self.mux.reset(id);
                    return None;
                };
                let conn = self.new_slot(id, p.addr, inner, false);
                Some(Action::Call {
                    sid: id,
                    handler: p.handler,
                    conn,
                    call: Call::Open,
                })
            }
            MuxEvent::ConnectFailed { id, error } => {
                self.stale_timers += 1;
                let p = self.pending.remove(&id)?;
                self.addrs.release(p.addr);
                let e = match error {
                    crate::Error::UnknownAddress(_) => zs_io::Error::Refused,
                    crate::Error::TunnelClosed => zs_io::Error::ShutDown,
                    other => zs_io::Error::Io(std::io::Error::from(other)),
                };
                Some(Action::ConnectFailed(p.handler, e))
            }
            MuxEvent::Readable { id } => {
                self.schedule(id);
                None
            }
            MuxEvent::Writable { id } => {
                self.push_backlog(id);
                let limit = inner.send_queue_limit;
                let queued = self.backlog_len(id);
                let slot = self.slots.get_mut(&id)?;
                if slot.has(WANT_WRITABLE) && !slot.has(DONE) && queued <= limit / 2 {
                    slot.flags &= !WANT_WRITABLE;
                    return self.call(inner, id, Call::Writable);
                }
                None
            }
            MuxEvent::Finished { id } => {
                if let Some(s) = self.slots.get_mut(&id) {
                    s.flags |= PEER_FIN;
                }
                self.schedule(id);
                None
            }
            MuxEvent::Closed { id, reset } => {
                if let Some(p) = self.pending.remove(&id) {
                    self.addrs.release(p.addr);
                    return Some(Action::ConnectFailed(p.handler, zs_io::Error::Refused));
                }
                let slot = self.slots.get_mut(&id)?;
                slot.flags |= GONE;
                if slot.has(DONE) {
                    self.remove_slot(id);
                    return None;
                }
                if reset {
                    let reason = State::end_reason(slot, true);
                    return self.finish(inner, id, reason);
                }
                // Deliver what is left (data, EOF) first; service ends it.
                slot.flags |= PEER_FIN;
                self.schedule(id);
                None
            }
            MuxEvent::Pong { .. } => {
                self.pongs += 1;
                None
            }
            MuxEvent::TunnelClosed { reason } => {
                if self.closed.is_none()
                    && matches!(self.mux.close_error(), Some(crate::Error::AuthFailed))
                {
                    self.auth_failed = true;
                }
                self.tunnel_dead(reason);
                inner.cond.notify_all();
                None
            }
        }
    }

    /// Reads a slot's data from the Mux and decides its next callback.
    fn service_slot(&mut self, inner: &Arc<Inner>, sid: StreamId) -> Option<Action> {
        let slot = self.slots.get_mut(&sid)?;
        slot.flags &= !QUEUED;
        if slot.handler.is_none() && !slot.has(DONE) {
            return None;
        }
        if slot.has(DONE) || slot.has(CLOSING) {
            // Nobody reads any more: discard, so the peer's credit comes back.
            while let Ok(Some(_)) = self.mux.read(sid, usize::MAX) {}
            let slot = self.slots.get_mut(&sid)?;
            if slot.has(GONE) {
                if slot.has(DONE) {
                    self.remove_slot(sid);
                    return None;
                }
                let reason = State::end_reason(slot, false);
                return self.finish(inner, sid, reason);
            }
            return None;
        }
        if slot.has(PAUSED) {
            return None;
        }
        let chunk = inner.read_chunk;
        let mut added = 0;
        while added < chunk {
            match self.mux.read_buf(sid, chunk - added) {
                Ok(Some(b)) => {
                    added += b.len();
                    self.touch(sid);
                    let bufs = self.bufs_mut(sid);
                    if bufs.rbuf.is_empty() {
                        // Zero-copy: the Mux's buffer (a slice of the link's read
                        // buffer for large payloads) is delivered as it is rather
                        // than copied behind more.
                        bufs.rbuf = b;
                        break;
                    }
                    bufs.rbuf.extend_from_slice(&b);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if added > 0 {
            let buf = std::mem::take(&mut self.bufs_mut(sid).rbuf);
            return self.call(inner, sid, Call::Data(buf));
        }
        let slot = self.slots.get_mut(&sid)?;
        if slot.has(PEER_FIN) && !slot.has(EOF_DELIVERED) {
            slot.flags |= EOF_DELIVERED;
            return self.call(inner, sid, Call::Eof);
        }
        if slot.has(GONE) {
            let reason = State::end_reason(slot, false);
            return self.finish(inner, sid, reason);
        }
        None
    }

    /// Puts a handler back after its callback ran outside the lock. Returns it
    /// if the connection is gone meanwhile: the caller drops it without the lock
    /// (its `Drop` is user code).
    #[must_use]
    fn restore(
        &mut self,
        sid: StreamId,
        handler: Box<dyn Handler>,
        buf: Option<BytesMut>,
    ) -> Option<Box<dyn Handler>> {
        let mut again = false;
        let Some(slot) = self.slots.get_mut(&sid) else {
            return Some(handler);
        };
        if slot.has(DONE) {
            return Some(handler);
        }
        slot.handler = Some(handler);
        let more = slot.has(PEER_FIN) || slot.has(GONE);
        if let Some(buf) = buf {
            again = true;
            if !buf.is_empty() {
                self.bufs_mut(sid).rbuf = buf;
            } else if let Some(b) = self.bufs.get(&sid) {
                if b.backlog.is_empty() && b.idle.is_none() && b.rbuf.is_empty() {
                    // Nothing buffered any more: an idle connection holds no buffers.
                    self.bufs.remove(&sid);
                }
            }
        }
        if again || more {
            self.schedule(sid);
        }
        None
    }

    /// A handler callback of `sid` panicked (the seam's contract item 8): only this
    /// virtual connection ends. Its stream is reset (the peer sees `Reset`), the
    /// bytes queued either way are dropped, and the next action delivers its one
    /// `on_close(HandlerPanicked)` (`handler` is `None` when the listener's
    /// factory panicked: then there is nobody to tell). Returns the handler if the
    /// connection is gone meanwhile (to be dropped without the lock).
    #[must_use]
    fn handler_panicked(
        &mut self,
        sid: StreamId,
        handler: Option<Box<dyn Handler>>,
    ) -> Option<Box<dyn Handler>> {
        let Some(slot) = self.slots.get_mut(&sid) else {
            return handler;
        };
        if slot.has(DONE) {
            return handler;
        }
        slot.handler = handler;
        slot.reason = Some(CloseReason::HandlerPanicked);
        slot.flags |= CLOSING;
        slot.flags &= !WANT_WRITABLE;
        if !slot.has(GONE) {
            slot.flags |= GONE | MUX_CLOSED;
            // Drops what the Mux still holds for the stream, both ways.
            self.mux.reset(sid);
        }
        self.bufs.remove(&sid);
        // Before anything else: no other callback reaches this handler.
        self.deferred
            .push_front(Deferred::Finish(sid, CloseReason::HandlerPanicked));
        None
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Runs handler callbacks until no work is left, pushing output to the link.
pub(crate) fn drive(inner: &Arc<Inner>) {
    let mut st = inner.lock();
    if st.driving {
        return;
    }
    st.driving = true;
    let mut calls = 0u32;
    loop {
        let now = Instant::now();
        match st.next_action(inner, now) {
            Some(action) => {
                drop(st);
                let outcome = exec(action);
                st = inner.lock();
                let leftover = match outcome {
                    Outcome::Restore {
                        sid,
                        id,
                        handler,
                        buf,
                    } => st.restore(sid, handler, buf).map(|h| (id, h)),
                    Outcome::Panicked { sid, id, handler } => {
                        st.handler_panicked(sid, handler).map(|h| (id, h))
                    }
                    Outcome::Done => None,
                };
                if let Some((id, h)) = leftover {
                    drop(st);
                    drop_guarded(Some(id), h);
                    st = inner.lock();
                }
                calls += 1;
                if calls % FLUSH_EVERY == 0 {
                    st.flush();
                }
            }
            None => {
                st.flush();
                if st.resume_input() {
                    continue;
                }
                st.pump_events();
                if st.has_work() {
                    continue;
                }
                break;
            }
        }
    }
    st.compact();
    st.arm(false);
    st.driving = false;
}

/// Calls one handler (no lock held) and says what to do with it. Every user
/// callback (and the listener's factory) runs under [`catch_handler_panic`], so a
/// panic never unwinds through the driver (and so through the physical
/// connection's callback, which would end the whole tunnel): it is logged,
/// counted, and reported as [`Outcome::Panicked`].
fn exec(action: Action) -> Outcome {
    match action {
        Action::Call {
            sid,
            mut handler,
            conn,
            call,
        } => {
            let id = conn.id();
            let h = &mut handler;
            let mut back = None;
            let done = match call {
                Call::Open => catch_handler_panic(Some(id), "on_open", || h.on_open(&conn)),
                Call::Data(mut buf) => {
                    let r = catch_handler_panic(Some(id), "on_data", || h.on_data(&conn, &mut buf));
                    back = Some(buf);
                    r
                }
                Call::Eof => catch_handler_panic(Some(id), "on_eof", || h.on_eof(&conn)),
                Call::Writable => {
                    catch_handler_panic(Some(id), "on_writable", || h.on_writable(&conn))
                }
                Call::Timer(t) => {
                    catch_handler_panic(Some(id), "on_timer", || h.on_timer(&conn, t))
                }
            };
            match done {
                Some(()) => Outcome::Restore {
                    sid,
                    id,
                    handler,
                    buf: back,
                },
                // The unread data goes with the stream.
                None => Outcome::Panicked {
                    sid,
                    id,
                    handler: Some(handler),
                },
            }
        }
        Action::Incoming { sid, factory, conn } => {
            let id = conn.id();
            let Some(mut handler) = catch_handler_panic(Some(id), "HandlerFactory", || factory())
            else {
                return Outcome::Panicked {
                    sid,
                    id,
                    handler: None,
                };
            };
            if catch_handler_panic(Some(id), "on_open", || handler.on_open(&conn)).is_none() {
                return Outcome::Panicked {
                    sid,
                    id,
                    handler: Some(handler),
                };
            }
            // Data that came with the open is delivered by the next service.
            Outcome::Restore {
                sid,
                id,
                handler,
                buf: Some(BytesMut::new()),
            }
        }
        Action::Close {
            mut handler,
            conn,
            reason,
        } => {
            let id = conn.id();
            catch_handler_panic(Some(id), "on_close", || handler.on_close(&conn, reason));
            drop_guarded(Some(id), handler);
            Outcome::Done
        }
        Action::ConnectFailed(mut handler, e) => {
            catch_handler_panic(None, "on_connect_failed", || handler.on_connect_failed(e));
            drop_guarded(None, handler);
            Outcome::Done
        }
    }
}

/// The physical connection's handler on plaintext: feeds the link's bytes to the
/// Mux, pushes the Mux's output back, drives the Mux's and the virtual
/// connections' timers with the connection's timer, and runs the virtual
/// connections' callbacks on this connection's event loop. A secure link is the
/// zs-secure layer underneath (see [`super::TunnelDriver`]).
pub(crate) struct LinkDriver {
    pub(crate) inner: Arc<Inner>,
    /// Restart the Mux's ready and idle timers when this plaintext connection
    /// opens (off when a secure layer around it restarted them at the raw open,
    /// so the ready deadline covers the handshake).
    pub(crate) restart_timers: bool,
}

impl LinkDriver {
    pub(crate) fn new(inner: Arc<Inner>) -> LinkDriver {
        LinkDriver {
            inner,
            restart_timers: true,
        }
    }

    pub(crate) fn role(&self) -> crate::Role {
        self.inner.role
    }
}

impl Handler for LinkDriver {
    fn on_open(&mut self, conn: &Conn) {
        {
            let mut st = self.inner.lock();
            st.phys = Some(conn.clone());
            let now = Instant::now();
            // The ready deadline (which covers the secure handshake) and the idle
            // timer count from now, not from when the tunnel end was made.
            if self.restart_timers {
                st.mux.restart_timers(now);
            }
            if st.closed.is_some() {
                // Closed (shut down) before the link opened.
                conn.close();
            } else {
                st.bind_link(conn);
            }
            st.flush();
        }
        drive(&self.inner);
    }

    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        {
            let mut st = self.inner.lock();
            if st.closed.is_none() {
                let now = Instant::now();
                let st = &mut *st;
                // Frames as slices of the read buffer: large DATA payloads go to
                // their streams uncopied; a partial frame stays in `data` (the
                // backend appends the next bytes behind it).
                if let Err(e) = st.mux.handle_input_buf(data, now) {
                    st.mux_failed(e);
                }
                st.pause_if_blocked();
            }
            if st.closed.is_some() {
                data.clear();
            }
        }
        drive(&self.inner);
    }

    fn on_eof(&mut self, conn: &Conn) {
        self.inner
            .lock()
            .tunnel_dead("the link was closed by the peer".into());
        self.inner.cond.notify_all();
        conn.close();
        drive(&self.inner);
    }

    fn on_writable(&mut self, _conn: &Conn) {
        self.inner.lock().flush();
        drive(&self.inner);
    }

    fn on_timer(&mut self, _conn: &Conn, token: u64) {
        if token == TOKEN_TICK {
            self.inner.lock().armed = None;
        }
        drive(&self.inner);
    }

    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        {
            let mut st = self.inner.lock();
            st.tunnel_dead(format!("the link closed ({reason:?})"));
            st.phys_closed = true;
        }
        self.inner.cond.notify_all();
        drive(&self.inner);
        // Nothing runs after on_close: deliver what is left and drop it.
        let mut st = self.inner.lock();
        st.phys = None;
        st.timers.clear();
    }

    fn on_connect_failed(&mut self, error: zs_io::Error) {
        self.inner
            .lock()
            .tunnel_dead(format!("physical connect failed: {error}"));
        self.inner.cond.notify_all();
        drive(&self.inner);
    }
}

/// The handler of an accepted physical connection whose tunnel end could not be
/// made: logs why and closes the connection.
pub(crate) struct Refuse(pub(crate) String);

impl Handler for Refuse {
    fn on_open(&mut self, conn: &Conn) {
        tracing::warn!(reason = %self.0, "p2pvm tunnel refused");
        conn.close();
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
}

/// A virtual listener ([`zs_io::Backend::listen`] on a [`super::TunnelHandle`]).
pub(crate) struct VListener {
    inner: Weak<Inner>,
    addr: SocketAddr,
    id: u32,
    done: AtomicBool,
}

impl Listener for VListener {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn shutdown(&self) {
        if self.done.swap(true, AtOrd::AcqRel) {
            return;
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut st = inner.lock();
        if st
            .listeners
            .get(&self.addr)
            .is_some_and(|e| e.id == self.id)
        {
            st.listeners.remove(&self.addr);
            st.mux.unlisten(self.addr);
        }
        let Some(ai) = st.addrs.find(&self.addr) else {
            st.after_op();
            return;
        };
        let mine: Vec<StreamId> = st
            .slots
            .iter()
            .filter(|(_, s)| s.has(ACCEPTED) && s.addr == ai && !s.has(DONE) && !s.has(GONE))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in mine {
            st.mux.reset(sid);
            if let Some(s) = st.slots.get_mut(&sid) {
                s.flags |= GONE;
                s.reason = Some(CloseReason::Shutdown);
            }
            st.defer(Deferred::Finish(sid, CloseReason::Shutdown));
        }
        st.after_op();
    }
}

impl Drop for VListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub(crate) fn listen(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    factory: HandlerFactory,
) -> Result<Box<dyn Listener>, zs_io::Error> {
    // Virtual addresses carry no flow info or scope id.
    let addr = SocketAddr::new(addr.ip(), addr.port());
    let mut st = inner.lock();
    if st.closed.is_some() || st.shutting_down {
        return Err(zs_io::Error::ShutDown);
    }
    let bound = if addr.port() == 0 {
        let mut found = None;
        for _ in 0..=(u16::MAX - EPHEMERAL_FIRST) {
            let port = st.next_port;
            st.next_port = if port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                port + 1
            };
            let cand = SocketAddr::new(addr.ip(), port);
            if st.listeners.contains_key(&cand) {
                continue;
            }
            match st.mux.listen(cand) {
                Ok(()) => {
                    found = Some(cand);
                    break;
                }
                Err(crate::Error::AddressInUse(_)) => continue,
                Err(e) => return Err(zs_io::Error::Io(e.into())),
            }
        }
        found.ok_or_else(|| {
            zs_io::Error::Io(std::io::Error::new(
                ErrorKind::AddrInUse,
                "no free virtual port",
            ))
        })?
    } else {
        st.mux
            .listen(addr)
            .map_err(|e| zs_io::Error::Io(e.into()))?;
        addr
    };
    let id = st.next_listener;
    st.next_listener += 1;
    st.listeners.insert(bound, ListenEntry { id, factory });
    st.after_op();
    Ok(Box::new(VListener {
        inner: Arc::downgrade(inner),
        addr: bound,
        id,
        done: AtomicBool::new(false),
    }))
}

pub(crate) fn connect(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    timeout: Duration,
    handler: Box<dyn Handler>,
) -> Result<(), zs_io::Error> {
    let mut st = inner.lock();
    if st.closed.is_some() || st.shutting_down {
        return Err(zs_io::Error::ShutDown);
    }
    match st.mux.connect(addr) {
        Ok(sid) => {
            let addr = st.addrs.intern(addr);
            st.pending.insert(sid, Pending { handler, addr });
            st.push_timer(Instant::now() + timeout, TimerKind::ConnectTimeout(sid));
        }
        Err(crate::Error::UnknownAddress(_)) => {
            st.defer(Deferred::ConnectFailed(handler, zs_io::Error::Refused));
        }
        Err(crate::Error::TunnelClosed) => return Err(zs_io::Error::ShutDown),
        Err(e) => {
            st.defer(Deferred::ConnectFailed(
                handler,
                zs_io::Error::Io(std::io::Error::from(e)),
            ));
        }
    }
    st.after_op();
    Ok(())
}

pub(crate) fn shutdown(inner: &Arc<Inner>, reason: &str) {
    let no_loop = {
        let mut st = inner.lock();
        st.shutting_down = true;
        st.tunnel_dead(reason.to_string());
        st.phys.is_none() || st.phys_closed
    };
    inner.cond.notify_all();
    if no_loop {
        // No event loop will run again for this tunnel: deliver here.
        drive(inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_table_interns_and_frees() {
        let mut t = AddrTable::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "[fd00::1]:443".parse().unwrap();
        let ia = t.intern(a);
        assert_eq!(t.intern(a), ia);
        let ib = t.intern(b);
        assert_ne!(ia, ib);
        assert_eq!((t.get(ia), t.get(ib)), (a, b));
        t.release(ia);
        assert_eq!(t.get(ia), a, "still referenced once");
        t.release(ia);
        assert!(t.find(&a).is_none());
        // The freed index is reused.
        let c: SocketAddr = "10.0.0.2:1".parse().unwrap();
        assert_eq!(t.intern(c), ia);
        assert_eq!(t.get(ia), c);
    }

    #[test]
    fn anonymous_keeps_the_family() {
        let v4 = anonymous("10.0.0.1:80".parse().unwrap());
        let v6 = anonymous("[fd00::1]:80".parse().unwrap());
        assert!(v4.is_ipv4() && v4.ip().is_unspecified() && v4.port() == 0);
        assert!(v6.is_ipv6() && v6.ip().is_unspecified() && v6.port() == 0);
    }

    #[test]
    fn timers_pop_in_deadline_order() {
        let mut h = BinaryHeap::new();
        let now = Instant::now();
        for (i, ms) in [30u64, 10, 20, 10].into_iter().enumerate() {
            h.push(Reverse(TimerEntry {
                at: now + Duration::from_millis(ms),
                seq: i as u64,
                kind: TimerKind::Idle(StreamId(i as u32)),
            }));
        }
        let order: Vec<u64> = std::iter::from_fn(|| h.pop().map(|Reverse(t)| t.seq)).collect();
        assert_eq!(order, vec![1, 3, 2, 0]);
    }

    #[test]
    fn slot_is_compact() {
        // An idle virtual connection costs its table entry only.
        assert!(
            std::mem::size_of::<Slot>() <= 32,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }
}
