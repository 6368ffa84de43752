//! One event loop: a thread with its own completion port.
//!
//! The backend runs [`Config::effective_loops`] of these (the completion-port
//! thread pool). Every socket is associated with exactly one loop's port, so all
//! completions — and therefore all handler callbacks — of a connection happen on
//! that loop's thread (contract item 1). Other threads talk to a loop through
//! [`LoopHandle::send`]: a command list plus one posted wake-up packet.
//!
//! Per connection the loop keeps at most one `WSARecv`, one `WSASend` and (while
//! connecting) one `ConnectEx` in flight; per listener a fixed number of `AcceptEx`.
//! A closed connection's entry stays until every operation it started has
//! completed (the kernel owns their buffers until then).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use zs_io::{
    catch_handler_panic, drop_guarded, AcceptBackoff, Bytes, BytesMut, CloseReason, Config, Conn,
    ConnId, Error, Handler, HandlerFactory, TimerWheel,
};

use crate::conn::IocpConn;
use crate::sys::{AcceptOp, ConnectOp, Event, Events, Port, RecvOp, SendOp};

/// The completion key of wake-up packets (ids start at 1).
const WAKE: usize = 0;
/// `AcceptEx` operations kept in flight per listener.
const ACCEPTS_PER_LISTENER: usize = 32;
/// First receive size of a connection; doubled (up to `Config::read_chunk`) while
/// reads fill the buffer, so idle connections hold little memory.
const FIRST_READ: usize = 4096;
/// Front chunks smaller than this are coalesced (copied) into one send buffer.
const COALESCE_BELOW: usize = 16 * 1024;
/// The most bytes copied into one coalesced send buffer.
const COALESCE_MAX: usize = 64 * 1024;
/// How long a stopping loop waits for the kernel to finish cancelled operations.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Backend-wide state shared by all loops and handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) loops: Vec<Arc<LoopHandle>>,
    next_id: AtomicU64,
    next_loop: AtomicUsize,
    pub(crate) shut: AtomicBool,
}

impl Shared {
    pub(crate) fn new(config: Config, loops: Vec<Arc<LoopHandle>>) -> Shared {
        Shared {
            config,
            loops,
            next_id: AtomicU64::new(1),
            next_loop: AtomicUsize::new(0),
            shut: AtomicBool::new(false),
        }
    }

    /// A fresh id for a connection or listener (also its completion key).
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The loop for the next connection or listener (round robin).
    pub(crate) fn pick_loop(&self) -> usize {
        self.next_loop.fetch_add(1, Ordering::Relaxed) % self.loops.len()
    }
}

/// Work handed to a loop from other threads (or from itself).
pub(crate) enum Cmd {
    /// A connection's shared state changed (send, close, timer, …).
    Dirty(u64),
    /// Start accepting on a bound, listening socket.
    Listen {
        id: u64,
        sock: Socket,
        factory: HandlerFactory,
        closed: Arc<AtomicBool>,
    },
    /// Take over an accepted socket.
    Adopt {
        sock: Socket,
        factory: HandlerFactory,
        listener: u64,
        closed: Arc<AtomicBool>,
    },
    /// Connect a bound socket.
    Connect {
        id: u64,
        sock: Socket,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    },
    /// A listener was shut down: close it and its connections.
    CloseListener(u64),
    /// The backend is shutting down.
    Shutdown,
}

/// The thread-safe side of a loop: its port and command list.
pub(crate) struct LoopHandle {
    port: Port,
    cmds: Mutex<Vec<Cmd>>,
    wake_pending: AtomicBool,
    thread: OnceLock<ThreadId>,
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("port", &self.port)
            .field("thread", &self.thread.get())
            .finish()
    }
}

impl LoopHandle {
    pub(crate) fn new() -> io::Result<LoopHandle> {
        Ok(LoopHandle {
            port: Port::new()?,
            cmds: Mutex::new(Vec::new()),
            wake_pending: AtomicBool::new(false),
            thread: OnceLock::new(),
        })
    }

    /// Whether the caller runs on this loop's thread.
    pub(crate) fn on_loop_thread(&self) -> bool {
        self.thread.get() == Some(&std::thread::current().id())
    }

    /// Queues `cmd` and wakes the loop (unless called from the loop itself, which
    /// drains its commands before it waits again).
    pub(crate) fn send(&self, cmd: Cmd) {
        self.cmds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cmd);
        if self.on_loop_thread() {
            return;
        }
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.port.post(WAKE) {
                tracing::error!("iocp: cannot wake a loop: {e}");
            }
        }
    }

    fn take_cmds(&self) -> Vec<Cmd> {
        std::mem::take(&mut *self.cmds.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy)]
enum TimerKind {
    User(u64),
    Idle(u64),
    Linger,
    ConnectTimeout,
    AcceptRetry,
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    id: u64,
    kind: TimerKind,
}

/// The loop's side of one connection.
struct Entry {
    sock: Option<Socket>,
    conn: Option<Arc<IocpConn>>,
    dynconn: Option<Conn>,
    handler: Option<Box<dyn Handler>>,
    phase: Phase,
    listener: Option<u64>,
    recv: RecvOp,
    send: SendOp,
    connect: Option<ConnectOp>,
    rbuf: BytesMut,
    /// Bytes arrived that `on_data` has not seen yet (held while paused).
    undelivered: bool,
    /// `on_data` is running (the read buffer is lent to it).
    delivering: bool,
    next_read: usize,
    eof: bool,
    fin_sent: bool,
    want_fin: bool,
    /// A graceful close is in progress (flushing).
    closing: bool,
    /// Overrides the reason a graceful close reports.
    close_reason: Option<CloseReason>,
    paused: bool,
    idle_gen: u64,
    last_activity: Instant,
}

impl Entry {
    fn new(sock: Socket, phase: Phase, listener: Option<u64>) -> Entry {
        Entry {
            sock: Some(sock),
            conn: None,
            dynconn: None,
            handler: None,
            phase,
            listener,
            recv: RecvOp::new(),
            send: SendOp::new(),
            connect: None,
            rbuf: BytesMut::new(),
            undelivered: false,
            delivering: false,
            next_read: FIRST_READ,
            eof: false,
            fin_sent: false,
            want_fin: false,
            closing: false,
            close_reason: None,
            paused: false,
            idle_gen: 0,
            last_activity: Instant::now(),
        }
    }

    fn busy(&self) -> bool {
        self.recv.in_flight()
            || self.send.in_flight()
            || self.connect.as_ref().is_some_and(ConnectOp::in_flight)
    }
}

struct ListenEntry {
    sock: Option<Socket>,
    domain: Domain,
    factory: HandlerFactory,
    closed: Arc<AtomicBool>,
    accepts: Vec<AcceptOp>,
    /// Pacing of retries while `AcceptEx` cannot start (no sockets left…).
    backoff: AcceptBackoff,
    /// An `AcceptRetry` timer is pending.
    retry_armed: bool,
}

/// The loop itself; lives on its thread only.
pub(crate) struct Loop {
    index: usize,
    handle: Arc<LoopHandle>,
    shared: Arc<Shared>,
    conns: HashMap<u64, Entry>,
    listeners: HashMap<u64, ListenEntry>,
    timers: TimerWheel<Timer>,
    due: Vec<Timer>,
    events: Events,
    stopping: Option<Instant>,
}

/// Maps a socket error of an open connection to the reason `on_close` reports.
fn reason_of(e: &io::Error) -> CloseReason {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => CloseReason::Reset,
        k => CloseReason::Error(k),
    }
}

/// Gives an outgoing connection's handler its only callback, `on_connect_failed`,
/// then drops it (a panic in either is caught and logged).
fn connect_failed(mut handler: Box<dyn Handler>, id: u64, err: Error) {
    let id = Some(ConnId(id));
    catch_handler_panic(id, "on_connect_failed", || handler.on_connect_failed(err));
    drop_guarded(id, handler);
}

fn new_stream(domain: Domain) -> io::Result<Socket> {
    Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
}

fn addrs(sock: &Socket) -> io::Result<(SocketAddr, SocketAddr)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not an IP socket address");
    let peer = sock.peer_addr()?.as_socket().ok_or_else(bad)?;
    let local = sock.local_addr()?.as_socket().ok_or_else(bad)?;
    Ok((peer, local))
}

impl Loop {
    pub(crate) fn new(index: usize, shared: Arc<Shared>) -> Loop {
        let handle = shared.loops[index].clone();
        Loop {
            index,
            handle,
            shared,
            conns: HashMap::new(),
            listeners: HashMap::new(),
            timers: TimerWheel::new(Instant::now(), Duration::from_millis(1), 1024),
            due: Vec::new(),
            events: Events::with_capacity(256),
            stopping: None,
        }
    }

    /// Runs until the backend shuts down and every operation has finished.
    pub(crate) fn run(mut self) {
        let _ = self.handle.thread.set(std::thread::current().id());
        loop {
            self.drain_cmds();
            if let Some(since) = self.stopping {
                let busy = self.conns.values().any(Entry::busy)
                    || self
                        .listeners
                        .values()
                        .any(|l| l.accepts.iter().any(AcceptOp::in_flight));
                if !busy || since.elapsed() > STOP_GRACE {
                    if busy {
                        tracing::warn!(
                            "iocp loop {}: leaving with operations still in flight",
                            self.index
                        );
                    }
                    break;
                }
            }
            let now = Instant::now();
            let mut timeout = self
                .timers
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            if self.stopping.is_some() {
                timeout = Some(timeout.map_or(Duration::from_millis(50), |t| {
                    t.min(Duration::from_millis(50))
                }));
            }
            if let Err(e) = self.handle.port.wait(&mut self.events, timeout) {
                tracing::error!("iocp loop {}: wait failed: {e}", self.index);
                std::thread::sleep(Duration::from_millis(10));
            }
            for i in 0..self.events.len() {
                let ev = self.events.get(i);
                if ev.key == WAKE {
                    self.handle.wake_pending.store(false, Ordering::Release);
                } else {
                    self.completion(ev);
                }
                self.drain_cmds();
            }
            self.fire_timers();
        }
        // Commands that raced with the stop: fail pending connects.
        for cmd in self.handle.take_cmds() {
            if let Cmd::Connect { id, handler, .. } = cmd {
                connect_failed(handler, id, Error::ShutDown);
            }
        }
    }

    fn drain_cmds(&mut self) {
        loop {
            let cmds = self.handle.take_cmds();
            if cmds.is_empty() {
                return;
            }
            for cmd in cmds {
                self.command(cmd);
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Dirty(id) => self.process(id),
            Cmd::Listen {
                id,
                sock,
                factory,
                closed,
            } => self.listen(id, sock, factory, closed),
            Cmd::Adopt {
                sock,
                factory,
                listener,
                closed,
            } => self.adopt(sock, factory, listener, &closed),
            Cmd::Connect {
                id,
                sock,
                addr,
                timeout,
                handler,
            } => self.connect(id, sock, addr, timeout, handler),
            Cmd::CloseListener(id) => self.close_listener(id),
            Cmd::Shutdown => self.shutdown(),
        }
    }

    // ------------------------------------------------------------ listeners

    fn listen(&mut self, id: u64, sock: Socket, factory: HandlerFactory, closed: Arc<AtomicBool>) {
        if self.stopping.is_some() || closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.handle.port.associate(&sock, id as usize) {
            tracing::error!("iocp: cannot register listener: {e}");
            return;
        }
        let domain = match sock.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(SocketAddr::V6(_)) => Domain::IPV6,
            _ => Domain::IPV4,
        };
        let accepts = (0..ACCEPTS_PER_LISTENER).map(|_| AcceptOp::new()).collect();
        self.listeners.insert(
            id,
            ListenEntry {
                sock: Some(sock),
                domain,
                factory,
                closed,
                accepts,
                backoff: AcceptBackoff::new(),
                retry_armed: false,
            },
        );
        self.refill_accepts(id);
    }

    /// Starts `AcceptEx` on every idle slot of listener `id`.
    fn refill_accepts(&mut self, id: u64) {
        let Some(l) = self.listeners.get_mut(&id) else {
            return;
        };
        let Some(lsock) = l.sock.as_ref() else { return };
        let mut failed = None;
        for op in l.accepts.iter_mut().filter(|op| !op.in_flight()) {
            let started = new_stream(l.domain).and_then(|s| op.start(lsock, s));
            if let Err(e) = started {
                failed = Some(e);
                break;
            }
        }
        let Some(e) = failed else {
            if let Some(n) = l.backoff.recovered() {
                tracing::warn!("iocp: AcceptEx running again after {n} failed attempts");
            }
            return;
        };
        // Out of sockets or buffers: retry on a timer (backing off from 10 to
        // 100 ms) while it persists, logging once per burst.
        let f = l.backoff.failed();
        if f.log {
            tracing::warn!(
                "iocp: AcceptEx could not start: {e}; retrying every {}-{} ms while it persists",
                AcceptBackoff::MIN.as_millis(),
                AcceptBackoff::MAX.as_millis()
            );
        }
        if !l.retry_armed {
            l.retry_armed = true;
            self.timers.insert(
                Instant::now() + f.retry_after,
                Timer {
                    id,
                    kind: TimerKind::AcceptRetry,
                },
            );
        }
    }

    fn accept_done(&mut self, id: u64, ev: Event) {
        let Some(l) = self.listeners.get_mut(&id) else {
            return;
        };
        let Some(op) = l.accepts.iter_mut().find(|op| op.id() == ev.op) else {
            return;
        };
        let res = op.finish(l.sock.as_ref(), ev.bytes);
        if l.sock.is_none() {
            if !l.accepts.iter().any(AcceptOp::in_flight) {
                self.listeners.remove(&id);
            }
            return;
        }
        match res {
            Ok(sock) => {
                let factory = l.factory.clone();
                let closed = l.closed.clone();
                let target = self.shared.pick_loop();
                if target == self.index {
                    self.adopt(sock, factory, id, &closed);
                } else {
                    self.shared.loops[target].send(Cmd::Adopt {
                        sock,
                        factory,
                        listener: id,
                        closed,
                    });
                }
            }
            // E.g. the client reset before we took it: just accept the next one.
            Err(e) => tracing::debug!("iocp: accept failed: {e}"),
        }
        self.refill_accepts(id);
    }

    fn close_listener(&mut self, id: u64) {
        if let Some(l) = self.listeners.get_mut(&id) {
            l.sock = None; // closesocket: pending AcceptEx complete with an error
            if !l.accepts.iter().any(AcceptOp::in_flight) {
                self.listeners.remove(&id);
            }
        }
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, e)| e.listener == Some(id) && e.phase == Phase::Open)
            .map(|(k, _)| *k)
            .collect();
        for cid in ids {
            self.close_now(cid, CloseReason::Shutdown, false);
        }
    }

    // ---------------------------------------------------------- connections

    fn adopt(&mut self, sock: Socket, factory: HandlerFactory, listener: u64, closed: &AtomicBool) {
        if self.stopping.is_some() || closed.load(Ordering::Acquire) {
            return; // dropping the socket closes it
        }
        let id = self.shared.next_id();
        let (peer, local) = match self.prepare(&sock, id) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!("iocp: dropping an accepted socket: {e}");
                return;
            }
        };
        // A panicking factory drops (closes) the socket; accepting goes on.
        let Some(handler) = catch_handler_panic(None, "HandlerFactory", || factory()) else {
            return;
        };
        let mut e = Entry::new(sock, Phase::Open, Some(listener));
        e.handler = Some(handler);
        self.conns.insert(id, e);
        self.open(id, peer, local);
    }

    /// Registers an established socket with this loop and returns its addresses.
    fn prepare(&self, sock: &Socket, id: u64) -> io::Result<(SocketAddr, SocketAddr)> {
        self.handle.port.associate(sock, id as usize)?;
        if self.shared.config.nodelay {
            sock.set_tcp_nodelay(true)?;
        }
        addrs(sock)
    }

    /// The connection `id` is established: make its handle, call `on_open`, start
    /// reading and arm the idle check.
    fn open(&mut self, id: u64, peer: SocketAddr, local: SocketAddr) {
        let cfg = &self.shared.config;
        let conn = Arc::new(IocpConn::new(
            ConnId(id),
            peer,
            local,
            self.handle.clone(),
            cfg.send_queue_limit,
            cfg.idle_timeout,
        ));
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        e.phase = Phase::Open;
        e.dynconn = Some(conn.clone() as Conn);
        e.conn = Some(conn);
        e.last_activity = Instant::now();
        if let Some(idle) = cfg.idle_timeout {
            self.timers.insert(
                e.last_activity + idle,
                Timer {
                    id,
                    kind: TimerKind::Idle(0),
                },
            );
        }
        self.call(id, "on_open", |h, c| h.on_open(c));
        self.pump_recv(id);
    }

    fn connect(
        &mut self,
        id: u64,
        sock: Socket,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) {
        if self.stopping.is_some() {
            connect_failed(handler, id, Error::ShutDown);
            return;
        }
        if let Err(e) = self.handle.port.associate(&sock, id as usize) {
            connect_failed(handler, id, Error::Io(e));
            return;
        }
        let mut op = ConnectOp::new();
        if let Err(e) = op.start(&sock, addr) {
            connect_failed(handler, id, Error::from_connect(e));
            return;
        }
        let mut e = Entry::new(sock, Phase::Connecting, None);
        e.connect = Some(op);
        e.handler = Some(handler);
        self.conns.insert(id, e);
        self.timers.insert(
            Instant::now() + timeout,
            Timer {
                id,
                kind: TimerKind::ConnectTimeout,
            },
        );
    }

    fn connect_done(&mut self, id: u64, bytes: u32) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(op) = e.connect.as_mut() else { return };
        let res = op.finish(e.sock.as_ref(), bytes);
        e.connect = None;
        if e.phase != Phase::Connecting {
            self.maybe_remove(id);
            return;
        }
        let res = res.and_then(|()| match e.sock.as_ref() {
            Some(s) => {
                if self.shared.config.nodelay {
                    s.set_tcp_nodelay(true)?;
                }
                addrs(s)
            }
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        });
        match res {
            Ok((peer, local)) => self.open(id, peer, local),
            Err(err) => self.fail_connect(id, Error::from_connect(err)),
        }
    }

    fn fail_connect(&mut self, id: u64, err: Error) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        e.phase = Phase::Closed;
        e.sock = None; // cancels a ConnectEx still in flight
        if let Some(h) = e.handler.take() {
            connect_failed(h, id, err);
        }
        self.maybe_remove(id);
    }

    fn maybe_remove(&mut self, id: u64) {
        if self
            .conns
            .get(&id)
            .is_some_and(|e| e.phase == Phase::Closed && !e.busy())
        {
            self.conns.remove(&id);
        }
    }

    /// Calls a handler method (named `what` for the log) with the connection's
    /// handle, then applies whatever the handler asked for through it. A panic in
    /// the method resets only this connection, whose handler then gets
    /// `on_close(HandlerPanicked)` (contract item 8).
    fn call(&mut self, id: u64, what: &'static str, f: impl FnOnce(&mut dyn Handler, &Conn)) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.phase != Phase::Open {
            return;
        }
        let (Some(mut h), Some(c)) = (e.handler.take(), e.dynconn.clone()) else {
            return;
        };
        let ok = catch_handler_panic(Some(ConnId(id)), what, || f(&mut *h, &c)).is_some();
        match self.conns.get_mut(&id) {
            Some(e) if e.phase == Phase::Open && e.handler.is_none() => e.handler = Some(h),
            _ => drop_guarded(Some(ConnId(id)), h),
        }
        if !ok {
            self.close_now(id, CloseReason::HandlerPanicked, true);
            return;
        }
        self.process(id);
    }

    /// Delivers buffered bytes to `on_data` (unless paused or closing).
    fn deliver(&mut self, id: u64) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.phase != Phase::Open || e.paused || e.closing || !e.undelivered {
            return;
        }
        e.undelivered = false;
        e.delivering = true;
        let mut buf = std::mem::take(&mut e.rbuf);
        self.call(id, "on_data", |h, c| h.on_data(c, &mut buf));
        if let Some(e) = self.conns.get_mut(&id) {
            // Whatever the handler left is kept; newer bytes append behind it.
            e.delivering = false;
            e.rbuf = buf;
        }
    }

    /// Applies what the connection's handle asked for (see `ConnState`).
    fn process(&mut self, id: u64) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.phase != Phase::Open {
            return;
        }
        let Some(conn) = e.conn.clone() else { return };
        let (abort, close, fin, paused, timers, idle) = {
            let mut st = conn.lock();
            st.dirty = false;
            let idle = (st.idle_gen != e.idle_gen).then_some((st.idle_gen, st.idle));
            (
                std::mem::take(&mut st.want_abort),
                std::mem::take(&mut st.want_close),
                std::mem::take(&mut st.want_fin),
                st.read_paused,
                std::mem::take(&mut st.new_timers),
                idle,
            )
        };
        if abort {
            self.close_now(id, CloseReason::Local, true);
            return;
        }
        for (at, token) in timers {
            self.timers.insert(
                at,
                Timer {
                    id,
                    kind: TimerKind::User(token),
                },
            );
        }
        if let Some((gen, idle)) = idle {
            e.idle_gen = gen;
            if let Some(d) = idle {
                self.timers.insert(
                    e.last_activity + d,
                    Timer {
                        id,
                        kind: TimerKind::Idle(gen),
                    },
                );
            }
        }
        if fin {
            e.want_fin = true;
        }
        if close && !e.closing {
            e.closing = true;
            let linger = self.shared.config.close_linger;
            self.timers.insert(
                Instant::now() + linger,
                Timer {
                    id,
                    kind: TimerKind::Linger,
                },
            );
        }
        let resumed = e.paused && !paused;
        e.paused = paused;
        self.pump_send(id);
        if resumed {
            self.deliver(id);
        }
        self.pump_recv(id);
    }

    /// Starts a `WSASend` of the queue's front if none is in flight; once the queue
    /// is empty, sends a requested FIN or finishes a graceful close.
    fn pump_send(&mut self, id: u64) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.phase != Phase::Open || e.send.in_flight() {
            return;
        }
        let (Some(conn), Some(sock)) = (e.conn.as_ref(), e.sock.as_ref()) else {
            return;
        };
        let mut st = conn.lock();
        if st.want_abort {
            return; // `process` resets it next
        }
        if let Some(front) = st.queue.front().cloned() {
            let bufs = if front.len() >= COALESCE_BELOW {
                vec![front]
            } else {
                let mut slices = [io::IoSlice::new(&[]); 64];
                let n = st.queue.io_slices(&mut slices);
                let mut out = BytesMut::with_capacity(COALESCE_MAX);
                for s in &slices[..n] {
                    if !out.is_empty() && out.len() + s.len() > COALESCE_MAX {
                        break;
                    }
                    out.extend_from_slice(s);
                }
                vec![out.freeze()]
            };
            let n: usize = bufs.iter().map(Bytes::len).sum();
            st.in_flight = n;
            st.sending = true;
            drop(st);
            if let Err((err, _bufs)) = e.send.start(sock, bufs) {
                let mut st = conn.lock();
                st.in_flight = 0;
                st.sending = false;
                drop(st);
                self.close_now(id, reason_of(&err), false);
            }
            return;
        }
        drop(st);
        if e.want_fin && !e.fin_sent {
            e.fin_sent = true;
            if let Err(err) = sock.shutdown(std::net::Shutdown::Write) {
                self.close_now(id, reason_of(&err), false);
                return;
            }
        }
        if e.closing {
            let reason = e.close_reason.unwrap_or(if e.eof {
                CloseReason::PeerClosed
            } else {
                CloseReason::Local
            });
            self.close_now(id, reason, false);
        }
    }

    fn send_done(&mut self, id: u64, bytes: u32) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let (_bufs, res) = e.send.finish(e.sock.as_ref(), bytes);
        if e.phase != Phase::Open {
            self.maybe_remove(id);
            return;
        }
        let Some(conn) = e.conn.clone() else { return };
        match res {
            Ok(n) => {
                let writable = {
                    let mut st = conn.lock();
                    let n = n.min(st.in_flight);
                    st.queue.advance(n);
                    st.in_flight = 0;
                    st.sending = false;
                    st.queue.take_writable()
                };
                if n > 0 {
                    e.last_activity = Instant::now();
                }
                if writable && !e.closing {
                    self.call(id, "on_writable", |h, c| h.on_writable(c));
                }
                self.pump_send(id);
            }
            Err(err) => {
                {
                    let mut st = conn.lock();
                    st.in_flight = 0;
                    st.sending = false;
                }
                self.close_now(id, reason_of(&err), false);
            }
        }
    }

    /// Starts a `WSARecv` unless one is in flight, reading is paused or over.
    fn pump_recv(&mut self, id: u64) {
        let read_chunk = self.shared.config.read_chunk.max(1);
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.phase != Phase::Open
            || e.recv.in_flight()
            || e.delivering
            || e.eof
            || e.closing
            || e.paused
        {
            return;
        }
        // Don't read more while the handler has not consumed what it got.
        if e.undelivered || e.rbuf.len() >= read_chunk.max(e.next_read) * 16 {
            return;
        }
        let Some(sock) = e.sock.as_ref() else { return };
        let want = e.next_read.min(read_chunk);
        e.rbuf.reserve(want);
        let buf = std::mem::take(&mut e.rbuf);
        if let Err((err, buf)) = e.recv.start(sock, buf) {
            e.rbuf = buf;
            self.close_now(id, reason_of(&err), false);
        }
    }

    fn recv_done(&mut self, id: u64, bytes: u32) {
        let read_chunk = self.shared.config.read_chunk.max(1);
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let before = e.rbuf.len();
        let (buf, res) = e.recv.finish(e.sock.as_ref(), bytes);
        // `rbuf` was moved into the operation; nothing was added to it meanwhile.
        debug_assert_eq!(before, 0);
        e.rbuf = buf;
        if e.phase != Phase::Open {
            self.maybe_remove(id);
            return;
        }
        match res {
            Ok(0) => {
                // Wine reports a peer's reset to a pending receive as end of file
                // (Windows reports WSAECONNRESET). A zero-length send tells them
                // apart: it fails after a reset and succeeds after a FIN.
                if !e.fin_sent {
                    if let Some(Err(err)) = e.sock.as_ref().map(|s| s.send(&[])) {
                        if reason_of(&err) == CloseReason::Reset {
                            self.close_now(id, CloseReason::Reset, false);
                            return;
                        }
                    }
                }
                e.eof = true;
                if e.closing {
                    self.pump_send(id);
                } else {
                    self.call(id, "on_eof", |h, c| h.on_eof(c));
                }
            }
            Ok(n) => {
                e.last_activity = Instant::now();
                e.next_read = if n >= e.next_read {
                    (e.next_read * 2).min(read_chunk)
                } else {
                    e.next_read
                };
                e.undelivered = true;
                self.deliver(id);
                self.pump_recv(id);
            }
            Err(err) => self.close_now(id, reason_of(&err), false),
        }
    }

    /// Ends connection `id` now: closes the socket (with a reset if `reset`), marks
    /// the handle closed, and calls `on_close` (the handler is then dropped).
    fn close_now(&mut self, id: u64, reason: CloseReason, reset: bool) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.phase != Phase::Open {
            return;
        }
        e.phase = Phase::Closed;
        if let Some(conn) = e.conn.as_ref() {
            let mut st = conn.lock();
            st.ended = true;
            st.closing = true;
            st.write_closed = true;
            st.queue.clear();
            st.in_flight = 0;
            st.new_timers.clear();
        }
        if let Some(sock) = e.sock.take() {
            if reset {
                let _ = sock.set_linger(Some(Duration::ZERO));
            }
            drop(sock); // closesocket; operations in flight complete with an error
        }
        let handler = e.handler.take();
        let conn = e.dynconn.clone();
        if let (Some(mut h), Some(c)) = (handler, conn) {
            catch_handler_panic(Some(ConnId(id)), "on_close", || h.on_close(&c, reason));
            drop_guarded(Some(ConnId(id)), h);
        }
        if let Some(e) = self.conns.get_mut(&id) {
            e.dynconn = None;
            e.conn = None;
        }
        self.maybe_remove(id);
    }

    // --------------------------------------------------------------- events

    fn completion(&mut self, ev: Event) {
        let id = ev.key as u64;
        if self.listeners.contains_key(&id) {
            self.accept_done(id, ev);
            return;
        }
        let Some(e) = self.conns.get(&id) else {
            tracing::debug!("iocp: completion for unknown key {id}");
            return;
        };
        if ev.op == e.recv.id() {
            self.recv_done(id, ev.bytes);
        } else if ev.op == e.send.id() {
            self.send_done(id, ev.bytes);
        } else if e.connect.as_ref().is_some_and(|c| c.id() == ev.op) {
            self.connect_done(id, ev.bytes);
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        self.timers.poll(now, &mut self.due);
        let due = std::mem::take(&mut self.due);
        for t in &due {
            self.timer(*t, now);
            self.drain_cmds();
        }
        self.due = due;
        self.due.clear();
    }

    fn timer(&mut self, t: Timer, now: Instant) {
        if let TimerKind::AcceptRetry = t.kind {
            if let Some(l) = self.listeners.get_mut(&t.id) {
                l.retry_armed = false;
            }
            self.refill_accepts(t.id);
            return;
        }
        let Some(e) = self.conns.get_mut(&t.id) else {
            return;
        };
        match t.kind {
            TimerKind::ConnectTimeout => {
                if e.phase == Phase::Connecting {
                    self.fail_connect(t.id, Error::TimedOut);
                }
            }
            TimerKind::User(token) => {
                if !e.closing {
                    self.call(t.id, "on_timer", |h, c| h.on_timer(c, token));
                }
            }
            TimerKind::Linger => {
                if e.phase == Phase::Open && e.closing {
                    let reason = e.close_reason.unwrap_or(if e.eof {
                        CloseReason::PeerClosed
                    } else {
                        CloseReason::Local
                    });
                    self.close_now(t.id, reason, false);
                }
            }
            TimerKind::Idle(gen) => {
                if e.phase != Phase::Open || e.closing || gen != e.idle_gen {
                    return;
                }
                let Some(conn) = e.conn.clone() else { return };
                let Some(idle) = conn.lock().idle else { return };
                let deadline = e.last_activity + idle;
                if now < deadline {
                    self.timers.insert(
                        deadline,
                        Timer {
                            id: t.id,
                            kind: TimerKind::Idle(gen),
                        },
                    );
                    return;
                }
                e.close_reason = Some(CloseReason::IdleTimeout);
                e.closing = true;
                {
                    let mut st = conn.lock();
                    st.closing = true;
                    st.write_closed = true;
                }
                let linger = self.shared.config.close_linger;
                self.timers.insert(
                    now + linger,
                    Timer {
                        id: t.id,
                        kind: TimerKind::Linger,
                    },
                );
                self.pump_send(t.id);
            }
            TimerKind::AcceptRetry => {}
        }
    }

    fn shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        let lids: Vec<u64> = self.listeners.keys().copied().collect();
        for lid in lids {
            self.close_listener(lid);
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            match self.conns.get(&id).map(|e| e.phase) {
                Some(Phase::Connecting) => self.fail_connect(id, Error::ShutDown),
                Some(Phase::Open) => self.close_now(id, CloseReason::Shutdown, false),
                _ => {}
            }
        }
    }
}
