//! The generic readiness reactor (feature `reactor`, Unix only).
//!
//! Everything a readiness-based backend needs except the poller lives here, in safe
//! code: the event loops and their threads, the connections table, read buffers,
//! bounded send queues with vectored writes, the timer wheel (user timers, idle
//! timeouts, connect timeouts, close linger), accepting (per-loop `SO_REUSEPORT`
//! sockets or an acceptor hand-off), outgoing connects, listener and backend
//! shutdown. A backend supplies a [`Poller`] (register / deregister / wait / wake,
//! **edge-triggered**) and gets a full [`Backend`] in [`ReactorBackend`]:
//! `zs-io-epoll` plugs in `epoll` + `eventfd`, `zs-io-kqueue` plugs in `kqueue` +
//! `EVFILT_USER`. Because of that, all of this module is exercised by the epoll
//! conformance run on Linux; only the kqueue poller itself runs solely on BSD/macOS.
//!
//! ## How a loop runs
//!
//! Each loop is one thread owning one poller, a slab of slots (connection, pending
//! connect, listener) whose index is the poller token, a 64 KiB scratch read buffer,
//! a [`TimerWheel`] (5 ms ticks) and a mailbox (`Mutex<Vec<Cmd>>` + the poller's
//! waker) through which other threads reach it. An iteration: wait for events (timeout = next timer, 0 if work is
//! pending) → for each readable connection read until a short read / `WouldBlock` /
//! the read budget (4 × `read_chunk`, then the connection is re-queued so others get
//! a turn), call `on_data`, flush; for each writable connection flush → drain the
//! mailbox → fire due timers.
//!
//! ## Connection state and threads
//!
//! A connection's socket, send queue and flags sit behind one `Mutex` inside the
//! shared [`Connection`] object, locked briefly by the loop (reads, flushes) and by
//! callers of `send` etc. on any thread. While a callback of that connection runs,
//! `send` only queues (the loop flushes once the callback returns, so many small
//! sends become one `writev`); outside callbacks a `send` into an empty queue writes
//! at once from the calling thread, and anything the kernel does not take waits for
//! the edge-triggered writable event. Other requests (close, timers, pause…) set a
//! flag and, outside callbacks, post one "kick" to the loop. The socket is closed
//! only by the loop, under the lock, after which every method sees `closed` — so a
//! stale handle never touches a reused file descriptor.
//!
//! ## Failures that must not stop a loop
//!
//! Every handler callback, handler factory call and handler drop runs inside
//! [`catch_handler_panic`]: a panic resets only that
//! connection and calls its `on_close(HandlerPanicked)` (contract item 8). An accept
//! that fails with an error that leaves the connection queued (`EMFILE`, `ENFILE`,
//! `ENOBUFS`…) would stall an edge-triggered listener until some new connection
//! raised a new edge; instead the loop retries on its timer wheel, backing off from
//! 10 to 100 ms while the error persists ([`AcceptBackoff`]),
//! and logs once per burst.
#![allow(clippy::type_complexity)]

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use socket2::{Domain, SockRef, Socket, Type};

use crate::{
    catch_handler_panic, clock, drop_guarded, AcceptBackoff, Backend, CloseReason, Config, Conn,
    ConnId, Connection, Error, Handler, HandlerFactory, Listener, SendQueue, TimerWheel,
};

/// What a registration asks the poller to report (always edge-triggered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Readability only (listeners).
    Read,
    /// Readability and writability (connections, pending connects).
    ReadWrite,
}

/// One readiness event reported by a [`Poller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Event {
    /// The token given at registration.
    pub token: usize,
    /// Readable (or peer hung up: reading will tell).
    pub readable: bool,
    /// Writable.
    pub writable: bool,
    /// An error or hang-up condition is pending on the socket.
    pub error: bool,
    /// The peer closed its sending side (epoll `EPOLLRDHUP`/`EPOLLHUP`, kqueue
    /// `EV_EOF`): the reactor then reads until end of stream instead of stopping at
    /// a short read, because no further edge will come.
    pub hup: bool,
}

/// Wakes a loop blocked in [`Poller::wait`] from another thread.
pub trait Waker: Send + Sync {
    /// Makes the current or next `wait` return promptly.
    fn wake(&self) -> io::Result<()>;
}

/// The only OS-specific part of a readiness backend. Registrations are
/// **edge-triggered** (epoll `EPOLLET`, kqueue `EV_CLEAR`): an event is reported when
/// readiness appears (new data, buffer space), and the reactor reads/writes until a
/// short read or `WouldBlock`.
pub trait Poller: Send + 'static {
    /// Starts watching `fd` under `token`.
    fn register(&mut self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()>;
    /// Stops watching `fd` (called before the reactor closes it).
    fn deregister(&mut self, fd: RawFd) -> io::Result<()>;
    /// Waits up to `timeout` (`None` = forever) and appends events to `events`
    /// (cleared by the caller). Wake-ups are consumed internally and not reported.
    /// An interrupted wait returns `Ok` with no events.
    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()>;
    /// The waker of this poller.
    fn waker(&self) -> Arc<dyn Waker>;
}

/// Makes one poller per loop.
pub type PollerFactory = Arc<dyn Fn() -> io::Result<Box<dyn Poller>> + Send + Sync>;

/// How accepted connections are spread over the loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptMode {
    /// Every loop has its own listening socket on the same port (`SO_REUSEPORT`);
    /// the kernel spreads connections (Linux balances; use on Linux).
    ReusePort,
    /// One loop owns the listening socket and hands accepted sockets round-robin to
    /// the loops through their mailboxes (portable).
    HandOff,
}

impl AcceptMode {
    /// `ReusePort` on Linux, `HandOff` elsewhere (BSD/macOS `SO_REUSEPORT` does not
    /// balance the same way).
    pub fn platform_default() -> AcceptMode {
        if cfg!(target_os = "linux") {
            AcceptMode::ReusePort
        } else {
            AcceptMode::HandOff
        }
    }
}

const TICK: Duration = Duration::from_millis(5);
const WHEEL_SLOTS: usize = 1024;
const MAX_IOV: usize = 64;
const ACCEPT_BUDGET: usize = 512;

thread_local! {
    /// Address of the `LoopHandle` whose thread this is (0 = not a loop thread).
    static CURRENT_LOOP: Cell<usize> = const { Cell::new(0) };
    /// Inside [`defer_wakes`]: the loops this thread posted to without waking
    /// them yet (woken once each when the outermost scope ends).
    static DEFERRED: RefCell<Option<Vec<Arc<LoopHandle>>>> = const { RefCell::new(None) };
}

/// Runs `f` with the loop wake-ups its posts would cause deferred to its end:
/// each loop this thread posted to (a kick for a timer, a close, a pause…) is
/// woken once when `f` returns (or unwinds), instead of once per post. The
/// commands themselves are queued at once; only the loop's wake-up waits.
///
/// For a thread that touches many connections in a row off the loops, such as
/// a push to the 1,000 members of a group: each connection's first record
/// after an idle spell arms the security layer's key-idle timer, one kick,
/// one `eventfd` write and one loop wake-up each (session 13, push: the
/// server's loop spent 5-12 ms of CPU per 1,000-push fan-out on them).
///
/// `f` must not wait for a loop to act on what it posted (it would wait until
/// `f` returns). Nested scopes wake at the end of the outermost one. Costs
/// nothing on a loop thread (whose posts wake nothing).
pub fn defer_wakes<R>(f: impl FnOnce() -> R) -> R {
    let outermost = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_some() {
            false
        } else {
            *d = Some(Vec::new());
            true
        }
    });
    if !outermost {
        return f();
    }
    /// Wakes the deferred loops when the scope ends, also on unwinding.
    struct WakeAtEnd;
    impl Drop for WakeAtEnd {
        fn drop(&mut self) {
            let loops = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
            for handle in loops {
                if let Err(e) = handle.waker.wake() {
                    tracing::error!("zs-io reactor: wake failed: {e}");
                }
            }
        }
    }
    let _wake = WakeAtEnd;
    f()
}

enum Cmd {
    Listen {
        id: u64,
        socket: TcpListener,
        factory: HandlerFactory,
        shut: Arc<AtomicBool>,
    },
    Adopt {
        stream: TcpStream,
        factory: HandlerFactory,
        listener: u64,
        shut: Arc<AtomicBool>,
    },
    Connect {
        socket: io::Result<Socket>,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    },
    CloseListener {
        id: u64,
    },
    Kick {
        slot: usize,
        id: ConnId,
    },
    Stop,
}

struct Mailbox {
    cmds: Vec<Cmd>,
    stopped: bool,
}

struct LoopHandle {
    mailbox: Mutex<Mailbox>,
    waker: Arc<dyn Waker>,
}

impl LoopHandle {
    fn on_this_thread(self: &Arc<Self>) -> bool {
        CURRENT_LOOP.with(|c| c.get() == Arc::as_ptr(self) as usize)
    }

    /// Inside [`defer_wakes`]: notes this loop for the wake-up at the scope's
    /// end and returns true (the caller does not wake it now).
    fn defer_wake(self: &Arc<Self>) -> bool {
        DEFERRED.with(|d| match d.borrow_mut().as_mut() {
            Some(loops) => {
                if !loops.iter().any(|h| Arc::ptr_eq(h, self)) {
                    loops.push(self.clone());
                }
                true
            }
            None => false,
        })
    }

    /// Posts a command; gives it back if the loop has stopped.
    fn post(self: &Arc<Self>, cmd: Cmd) -> Result<(), Cmd> {
        {
            let mut mb = lock(&self.mailbox);
            if mb.stopped {
                return Err(cmd);
            }
            mb.cmds.push(cmd);
        }
        if !self.on_this_thread() && !self.defer_wake() {
            if let Err(e) = self.waker.wake() {
                tracing::error!("zs-io reactor: wake failed: {e}");
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct ConnState {
    stream: Option<TcpStream>,
    queue: SendQueue,
    in_callback: bool,
    kicked: bool,
    closing: bool,
    abort: bool,
    write_shut: bool,
    fin_sent: bool,
    closed: bool,
    paused: bool,
    idle: Option<Duration>,
    idle_changed: bool,
    new_timers: Vec<(Instant, u64)>,
    /// Tokens of [`Connection::wake`] calls not yet delivered.
    wakes: Vec<u64>,
    last_activity: Instant,
    write_error: Option<io::Error>,
}

enum FlushResult {
    Done,
    Blocked,
    Failed(io::Error),
}

impl ConnState {
    /// Writes as much of the queue as the kernel takes; then FIN if requested.
    fn flush(&mut self) -> FlushResult {
        let Some(stream) = self.stream.as_ref() else {
            return FlushResult::Done;
        };
        let mut wrote = false;
        while !self.queue.is_empty() {
            let r = match self.queue.front() {
                // One chunk queued (a sealed record or a reply per write, the
                // usual case): write it without gathering slices.
                Some(one) if one.len() == self.queue.len() => (&*stream).write(one),
                _ => {
                    let mut slices = [IoSlice::new(&[]); MAX_IOV];
                    let n = self.queue.io_slices(&mut slices);
                    (&*stream).write_vectored(&slices[..n])
                }
            };
            match r {
                Ok(0) => return FlushResult::Failed(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    self.queue.advance(k);
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if wrote {
                        self.last_activity = clock::now();
                    }
                    return FlushResult::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return FlushResult::Failed(e),
            }
        }
        if wrote {
            // The loop turn's time on the loop, the system clock elsewhere.
            self.last_activity = clock::now();
        }
        if self.write_shut && !self.fin_sent {
            self.fin_sent = true;
            if let Err(e) = stream.shutdown(Shutdown::Write) {
                return FlushResult::Failed(e);
            }
        }
        FlushResult::Done
    }
}

struct ConnShared {
    id: ConnId,
    slot: usize,
    peer: SocketAddr,
    local: SocketAddr,
    lp: Arc<LoopHandle>,
    state: Mutex<ConnState>,
}

impl ConnShared {
    /// Asks the loop to look at this connection (unless a callback of it is running,
    /// after which the loop looks anyway). Called with the state locked.
    fn kick(&self, st: &mut ConnState) {
        if st.in_callback || st.kicked || st.closed {
            return;
        }
        st.kicked = true;
        // Lock order: connection state, then mailbox (the loop never nests them the
        // other way). A stopped loop has closed every connection already.
        let _ = self.lp.post(Cmd::Kick {
            slot: self.slot,
            id: self.id,
        });
    }
}

impl ConnShared {
    /// After bytes were queued: outside callbacks, bytes queued into an empty
    /// queue are written now from the calling thread (what the kernel does not
    /// take waits for the writable edge); in a callback the loop flushes after
    /// it. Called with the state locked.
    fn write_now(&self, st: &mut ConnState, was_empty: bool) {
        if st.in_callback || !was_empty || st.queue.is_empty() {
            return;
        }
        match st.flush() {
            FlushResult::Done | FlushResult::Blocked => {
                if st.queue.writable_due() {
                    self.kick(st);
                }
            }
            FlushResult::Failed(e) => {
                st.write_error = Some(e);
                self.kick(st);
            }
        }
    }
}

impl Connection for ConnShared {
    fn id(&self) -> ConnId {
        self.id
    }
    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    fn local_addr(&self) -> SocketAddr {
        self.local
    }
    fn send(&self, data: Bytes) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.closed || st.closing || st.write_shut {
            return Err(Error::Closed);
        }
        let was_empty = st.queue.is_empty();
        st.queue.push(data)?;
        self.write_now(&mut st, was_empty);
        Ok(())
    }
    fn send_vectored(&self, parts: &mut std::collections::VecDeque<Bytes>) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.closed || st.closing || st.write_shut {
            return Err(Error::Closed);
        }
        let was_empty = st.queue.is_empty();
        let mut full = false;
        while let Some(p) = parts.pop_front() {
            if let Err(e) = st.queue.push(p) {
                if let Error::Full(p) = e {
                    parts.push_front(p);
                }
                full = true;
                break;
            }
        }
        // All parts in one `writev` (outside callbacks).
        self.write_now(&mut st, was_empty);
        if full {
            Err(Error::Full(Bytes::new()))
        } else {
            Ok(())
        }
    }
    fn queued_bytes(&self) -> usize {
        lock(&self.state).queue.len()
    }
    fn shutdown_write(&self) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.closed || st.closing || st.write_shut {
            return Err(Error::Closed);
        }
        st.write_shut = true;
        self.kick(&mut st);
        Ok(())
    }
    fn close(&self) {
        let mut st = lock(&self.state);
        if st.closed || st.closing {
            return;
        }
        st.closing = true;
        self.kick(&mut st);
    }
    fn abort(&self) {
        let mut st = lock(&self.state);
        if st.closed || st.abort {
            return;
        }
        st.abort = true;
        st.closing = true;
        st.queue.clear();
        self.kick(&mut st);
    }
    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(Error::Closed);
        }
        st.new_timers.push((Instant::now() + after, token));
        self.kick(&mut st);
        Ok(())
    }
    fn wake(&self, token: u64) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(Error::Closed);
        }
        st.wakes.push(token);
        self.kick(&mut st);
        Ok(())
    }
    fn set_idle_timeout(&self, idle: Option<Duration>) {
        let mut st = lock(&self.state);
        st.idle = idle;
        st.idle_changed = true;
        self.kick(&mut st);
    }
    fn set_read_paused(&self, paused: bool) {
        let mut st = lock(&self.state);
        if st.paused != paused {
            st.paused = paused;
            self.kick(&mut st);
        }
    }
    fn is_closed(&self) -> bool {
        let st = lock(&self.state);
        st.closed || st.closing
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TimerKind {
    User(u64),
    Idle,
    ConnectTimeout,
    Linger,
    /// Retry accepting on the listener with this id (in the timer's slot) after an
    /// accept error that leaves the connection queued (`EMFILE`…).
    AcceptRetry(u64),
}

struct ConnEntry {
    shared: Arc<ConnShared>,
    conn: Conn,
    handler: Box<dyn Handler>,
    rbuf: BytesMut,
    listener: Option<u64>,
    eof: bool,
    paused: bool,
    idle: Option<Duration>,
    idle_armed: bool,
    linger_armed: bool,
    fd: RawFd,
}

struct PendingConnect {
    id: ConnId,
    socket: Socket,
    addr: SocketAddr,
    handler: Box<dyn Handler>,
}

struct ListenerEntry {
    id: u64,
    socket: TcpListener,
    factory: HandlerFactory,
    shut: Arc<AtomicBool>,
    /// Pacing of retries while `accept` fails (`EMFILE`, `ENFILE`…).
    backoff: AcceptBackoff,
    /// An `AcceptRetry` timer is pending.
    retry_armed: bool,
}

enum Slot {
    Free,
    Conn(Box<ConnEntry>),
    Connecting(Box<PendingConnect>),
    Listener(ListenerEntry),
}

struct Common {
    name: String,
    cfg: Config,
    mode: AcceptMode,
    loops: Vec<Arc<LoopHandle>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_conn: AtomicU64,
    next_listener: AtomicU64,
    next_loop: AtomicUsize,
    shut: AtomicBool,
}

impl Common {
    fn pick_loop(&self) -> &Arc<LoopHandle> {
        let i = self.next_loop.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        &self.loops[i]
    }
}

struct Loop {
    poller: Box<dyn Poller>,
    handle: Arc<LoopHandle>,
    common: Arc<Common>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    wheel: TimerWheel<(usize, ConnId, TimerKind)>,
    events: Vec<Event>,
    scratch: Box<[u8]>,
    pool: Vec<BytesMut>,
    again: Vec<usize>,
    /// Connections woken by [`Connection::wake`]: `on_timer(token)` runs after
    /// this turn's events and commands.
    woken: Vec<(usize, ConnId, u64)>,
    woken_spare: Vec<(usize, ConnId, u64)>,
    closed_listeners: HashSet<u64>,
    now: Instant,
}

/// Gives an outgoing connection's handler its only callback, `on_connect_failed`,
/// then drops it (a panic in either is caught and logged).
fn connect_failed(mut handler: Box<dyn Handler>, id: Option<ConnId>, err: Error) {
    catch_handler_panic(id, "on_connect_failed", || handler.on_connect_failed(err));
    drop_guarded(id, handler);
}

fn close_reason(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => CloseReason::Reset,
        k => CloseReason::Error(k),
    }
}

impl Loop {
    fn alloc(&mut self) -> usize {
        if let Some(i) = self.free.pop() {
            i
        } else {
            self.slots.push(Slot::Free);
            self.slots.len() - 1
        }
    }

    fn release(&mut self, slot: usize) {
        self.slots[slot] = Slot::Free;
        self.free.push(slot);
    }

    fn run(mut self) {
        CURRENT_LOOP.with(|c| c.set(Arc::as_ptr(&self.handle) as usize));
        let mut expired = Vec::new();
        // The clock read that ended the previous turn, when nothing ran after
        // it (no timer expired): the next wait's timeout is measured from it
        // instead of a read of its own.
        let mut turn_end = None;
        loop {
            let timeout = if !self.again.is_empty()
                || !self.woken.is_empty()
                || !lock(&self.handle.mailbox).cmds.is_empty()
            {
                Some(Duration::ZERO)
            } else {
                self.wheel.next_deadline().map(|d| {
                    d.saturating_duration_since(turn_end.take().unwrap_or_else(Instant::now))
                })
            };
            self.events.clear();
            if let Err(e) = self.poller.wait(&mut self.events, timeout) {
                tracing::error!("zs-io reactor: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.now = Instant::now();
            // One clock read per turn serves every layer's `clock::now()`.
            let turn = clock::Turn::begin(self.now);
            let events = std::mem::take(&mut self.events);
            for ev in &events {
                self.on_event(*ev);
            }
            self.events = events;
            let again = std::mem::take(&mut self.again);
            for slot in again {
                match self.slots.get(slot) {
                    Some(Slot::Conn(_)) => {
                        self.do_read(slot, true);
                    }
                    Some(Slot::Listener(_)) => self.do_accept(slot),
                    _ => {}
                }
            }
            if self.drain_mailbox() {
                return;
            }
            if !self.woken.is_empty() {
                // Swapped with a kept vector: no allocation per turn.
                let mut woken =
                    std::mem::replace(&mut self.woken, std::mem::take(&mut self.woken_spare));
                for &(slot, id, token) in &woken {
                    if self.conn_matches(slot, id) {
                        self.callback(slot, "on_timer", |h, c| h.on_timer(c, token));
                    }
                }
                woken.clear();
                self.woken_spare = woken;
            }
            expired.clear();
            let now = Instant::now();
            self.now = now;
            turn.advance(now);
            self.wheel.poll(now, &mut expired);
            for &(slot, id, kind) in &expired {
                self.on_timer(slot, id, kind);
            }
            turn_end = expired.is_empty().then_some(now);
        }
    }

    /// Runs the mailbox; `true` when the loop must exit.
    fn drain_mailbox(&mut self) -> bool {
        loop {
            let cmds = std::mem::take(&mut lock(&self.handle.mailbox).cmds);
            if cmds.is_empty() {
                return false;
            }
            for cmd in cmds {
                match cmd {
                    Cmd::Listen {
                        id,
                        socket,
                        factory,
                        shut,
                    } => {
                        if shut.load(Ordering::Acquire) || self.closed_listeners.contains(&id) {
                            continue;
                        }
                        let slot = self.alloc();
                        if let Err(e) =
                            self.poller
                                .register(socket.as_raw_fd(), slot, Interest::Read)
                        {
                            tracing::error!("zs-io reactor: register listener: {e}");
                            self.release(slot);
                            continue;
                        }
                        self.slots[slot] = Slot::Listener(ListenerEntry {
                            id,
                            socket,
                            factory,
                            shut,
                            backoff: AcceptBackoff::new(),
                            retry_armed: false,
                        });
                        self.do_accept(slot);
                    }
                    Cmd::Adopt {
                        stream,
                        factory,
                        listener,
                        shut,
                    } => {
                        if !shut.load(Ordering::Acquire)
                            && !self.closed_listeners.contains(&listener)
                        {
                            // A panicking factory drops (closes) the socket.
                            if let Some(h) =
                                catch_handler_panic(None, "HandlerFactory", || factory())
                            {
                                self.adopt(stream, h, Some(listener));
                            }
                        }
                    }
                    Cmd::Connect {
                        socket,
                        addr,
                        timeout,
                        handler,
                    } => self.start_connect(socket, addr, timeout, handler),
                    Cmd::CloseListener { id } => self.close_listener(id),
                    Cmd::Kick { slot, id } => {
                        if self.conn_matches(slot, id) {
                            self.service(slot);
                        }
                    }
                    Cmd::Stop => {
                        self.stop();
                        return true;
                    }
                }
            }
        }
    }

    fn conn_matches(&self, slot: usize, id: ConnId) -> bool {
        match self.slots.get(slot) {
            Some(Slot::Conn(e)) => e.shared.id == id,
            Some(Slot::Connecting(p)) => p.id == id,
            _ => false,
        }
    }

    fn on_event(&mut self, ev: Event) {
        match self.slots.get(ev.token) {
            Some(Slot::Conn(_)) => {
                let read = ev.readable || ev.error || ev.hup;
                if ev.error || (ev.writable && !read) {
                    self.service(ev.token);
                }
                // A read edge reports the writable bit too (edge-triggered,
                // both interests): the read's callback services the
                // connection after it (flush, `on_writable`), so it is
                // serviced here only when no callback ran (session 14: one
                // service per read less, about 260 instructions).
                if read && !self.do_read(ev.token, ev.hup || ev.error) && ev.writable && !ev.error {
                    self.service(ev.token);
                }
            }
            Some(Slot::Connecting(_)) => self.finish_connect(ev.token),
            Some(Slot::Listener(_)) => self.do_accept(ev.token),
            _ => {}
        }
    }

    fn do_accept(&mut self, slot: usize) {
        let mut accepted = Vec::new();
        let mut more = false;
        let mut retry = None;
        let (factory, lid, shut) = {
            let Slot::Listener(l) = &mut self.slots[slot] else {
                return;
            };
            loop {
                match l.socket.accept() {
                    Ok((s, _)) => {
                        accepted.push(s);
                        if accepted.len() >= ACCEPT_BUDGET {
                            more = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The queue is empty: a burst of failures is over.
                        if let Some(n) = l.backoff.recovered() {
                            tracing::warn!(
                                "zs-io reactor: listener {} accepting again after {n} failed attempts",
                                l.id
                            );
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                    Err(e) => {
                        // EMFILE, ENFILE, ENOBUFS, ENOMEM…: the connection stays queued
                        // and the edge-triggered listener raises no new edge for it, so
                        // retry on a timer (backing off) instead of waiting for one.
                        let f = l.backoff.failed();
                        if f.log {
                            tracing::warn!(
                                "zs-io reactor: accept on listener {} failed: {e}; retrying every {}-{} ms while it persists",
                                l.id,
                                AcceptBackoff::MIN.as_millis(),
                                AcceptBackoff::MAX.as_millis()
                            );
                        }
                        if !l.retry_armed {
                            l.retry_armed = true;
                            retry = Some(f.retry_after);
                        }
                        break;
                    }
                }
            }
            (l.factory.clone(), l.id, l.shut.clone())
        };
        if more {
            self.again.push(slot);
        }
        if let Some(after) = retry {
            let at = Instant::now() + after;
            self.arm(slot, ConnId(0), TimerKind::AcceptRetry(lid), at);
        }
        for stream in accepted {
            let target = match self.common.mode {
                AcceptMode::ReusePort => None,
                AcceptMode::HandOff => {
                    let t = self.common.pick_loop().clone();
                    if Arc::ptr_eq(&t, &self.handle) {
                        None
                    } else {
                        Some(t)
                    }
                }
            };
            match target {
                None => {
                    // A panicking factory drops (closes) the socket; accepting goes on.
                    if let Some(h) = catch_handler_panic(None, "HandlerFactory", || factory()) {
                        self.adopt(stream, h, Some(lid));
                    }
                }
                Some(t) => {
                    let _ = t.post(Cmd::Adopt {
                        stream,
                        factory: factory.clone(),
                        listener: lid,
                        shut: shut.clone(),
                    });
                }
            }
        }
    }

    fn new_state(&self, stream: TcpStream) -> ConnState {
        ConnState {
            stream: Some(stream),
            queue: SendQueue::new(self.common.cfg.send_queue_limit),
            in_callback: false,
            kicked: false,
            closing: false,
            abort: false,
            write_shut: false,
            fin_sent: false,
            closed: false,
            paused: false,
            idle: self.common.cfg.idle_timeout,
            idle_changed: false,
            new_timers: Vec::new(),
            wakes: Vec::new(),
            last_activity: self.now,
            write_error: None,
        }
    }

    /// Takes an established stream into the loop and calls `on_open`.
    fn adopt(&mut self, stream: TcpStream, handler: Box<dyn Handler>, listener: Option<u64>) {
        let id = ConnId(self.common.next_conn.fetch_add(1, Ordering::Relaxed));
        self.adopt_with(stream, handler, listener, id, None);
    }

    fn adopt_with(
        &mut self,
        stream: TcpStream,
        handler: Box<dyn Handler>,
        listener: Option<u64>,
        id: ConnId,
        reuse_slot: Option<usize>,
    ) {
        let setup = || -> io::Result<(SocketAddr, SocketAddr)> {
            stream.set_nonblocking(true)?;
            if self.common.cfg.nodelay {
                stream.set_nodelay(true)?;
            }
            Ok((stream.peer_addr()?, stream.local_addr()?))
        };
        let (peer, local) = match setup() {
            Ok(a) => a,
            Err(e) => {
                // The peer left before we got to it: nothing was opened, no callback.
                tracing::debug!("zs-io reactor: dropping accepted socket: {e}");
                if let Some(slot) = reuse_slot {
                    let _ = self.poller.deregister(stream.as_raw_fd());
                    self.release(slot);
                }
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let slot = match reuse_slot {
            Some(s) => s,
            None => {
                let s = self.alloc();
                if let Err(e) = self.poller.register(fd, s, Interest::ReadWrite) {
                    tracing::error!("zs-io reactor: register connection: {e}");
                    self.release(s);
                    return;
                }
                s
            }
        };
        let shared = Arc::new(ConnShared {
            id,
            slot,
            peer,
            local,
            lp: self.handle.clone(),
            state: Mutex::new(self.new_state(stream)),
        });
        let idle = self.common.cfg.idle_timeout;
        let conn: Conn = shared.clone();
        self.slots[slot] = Slot::Conn(Box::new(ConnEntry {
            shared,
            conn,
            handler,
            rbuf: BytesMut::new(),
            listener,
            eof: false,
            paused: false,
            idle,
            idle_armed: false,
            linger_armed: false,
            fd,
        }));
        if let Some(d) = idle {
            self.arm(slot, id, TimerKind::Idle, self.now + d);
            if let Slot::Conn(e) = &mut self.slots[slot] {
                e.idle_armed = true;
            }
        }
        self.callback(slot, "on_open", |h, c| h.on_open(c));
        // A fresh registration reports data that is already waiting (epoll and
        // kqueue check readiness when a descriptor is added), but a connect's slot was
        // registered earlier and its readable edge may have been spent on
        // `finish_connect`: read now.
        if reuse_slot.is_some() {
            self.do_read(slot, true);
        }
    }

    fn arm(&mut self, slot: usize, id: ConnId, kind: TimerKind, at: Instant) {
        self.wheel.insert(at, (slot, id, kind));
    }

    fn start_connect(
        &mut self,
        socket: io::Result<Socket>,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) {
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                connect_failed(handler, None, Error::from_connect(e));
                return;
            }
        };
        let slot = self.alloc();
        if let Err(e) = self
            .poller
            .register(socket.as_raw_fd(), slot, Interest::ReadWrite)
        {
            self.release(slot);
            connect_failed(handler, None, Error::Io(e));
            return;
        }
        let id = ConnId(self.common.next_conn.fetch_add(1, Ordering::Relaxed));
        self.slots[slot] = Slot::Connecting(Box::new(PendingConnect {
            id,
            socket,
            addr,
            handler,
        }));
        self.arm(slot, id, TimerKind::ConnectTimeout, self.now + timeout);
        // An immediate (loopback) completion may have fired its edge already.
        self.finish_connect(slot);
    }

    fn finish_connect(&mut self, slot: usize) {
        let outcome = {
            let Slot::Connecting(p) = &self.slots[slot] else {
                return;
            };
            match p.socket.take_error() {
                Ok(Some(e)) | Err(e) => Some(Err(e)),
                Ok(None) => match p.socket.peer_addr() {
                    Ok(_) => Some(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => None, // still in progress
                    Err(e) => Some(Err(e)),
                },
            }
        };
        let Some(outcome) = outcome else { return };
        let Slot::Connecting(p) = std::mem::replace(&mut self.slots[slot], Slot::Free) else {
            return;
        };
        let PendingConnect {
            id,
            socket,
            addr,
            handler,
        } = *p;
        match outcome {
            Ok(()) => {
                let stream: TcpStream = socket.into();
                self.adopt_with(stream, handler, None, id, Some(slot));
            }
            Err(e) => {
                let _ = self.poller.deregister(socket.as_raw_fd());
                drop(socket);
                self.free.push(slot);
                tracing::debug!("zs-io reactor: connect to {addr} failed: {e}");
                connect_failed(handler, Some(id), Error::from_connect(e));
            }
        }
    }

    /// Runs one handler callback (named `what` for the log) with the connection
    /// marked "in callback", then services the connection (flush, flags,
    /// notifications). A panic in the callback resets only this connection
    /// (`on_close(HandlerPanicked)`, contract item 8).
    fn callback(
        &mut self,
        slot: usize,
        what: &'static str,
        f: impl FnOnce(&mut dyn Handler, &Conn),
    ) {
        let Slot::Conn(e) = &mut self.slots[slot] else {
            return;
        };
        lock(&e.shared.state).in_callback = true;
        let id = e.shared.id;
        if catch_handler_panic(Some(id), what, || f(&mut *e.handler, &e.conn)).is_none() {
            self.close_now(slot, CloseReason::HandlerPanicked, true);
            return;
        }
        self.service(slot);
    }

    /// Reads what is available and delivers it. Stops at a short read (a later
    /// arrival raises a new edge) unless `to_block`, when it reads until
    /// `WouldBlock` or end of stream. Whether a callback ran (`on_data` or
    /// `on_eof`: the connection was serviced after it).
    fn do_read(&mut self, slot: usize, to_block: bool) -> bool {
        let read_budget = self.common.cfg.read_chunk.max(1024) * 4;
        let Slot::Conn(e) = &mut self.slots[slot] else {
            return false;
        };
        if e.paused || e.eof {
            return false;
        }
        let mut buf = if e.rbuf.is_empty() {
            self.pool.pop().unwrap_or_default()
        } else {
            std::mem::take(&mut e.rbuf)
        };
        let had_leftover = !buf.is_empty();
        let mut got = 0usize;
        let mut eof = false;
        let mut err = None;
        let mut more = false;
        {
            let mut st = lock(&e.shared.state);
            if st.closed || st.closing {
                return false;
            }
            let Some(stream) = st.stream.as_ref() else {
                return false;
            };
            let chunk = self.scratch.len();
            // A buffer the handler left data in, with a chunk of room behind
            // it (the handler sized it: a frame completed where it lies) or
            // holding a chunk or more, is filled up to its room, not regrown:
            // regrowing would copy what it holds, where a short read costs a
            // syscall. Any other buffer, once a full chunk shows a bulk
            // transfer, gets room for the whole read budget at once instead
            // of being regrown (and its contents moved) chunk by chunk.
            let room = buf.capacity() - buf.len();
            let sized = had_leftover && room > 0 && (room >= chunk || buf.len() >= chunk);
            let budget = if sized {
                room.min(read_budget)
            } else {
                read_budget
            };
            loop {
                let want = chunk.min(budget - got);
                if want == 0 {
                    more = true;
                    break;
                }
                match (&*stream).read(&mut self.scratch[..want]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        if !sized && got == 0 && n == chunk {
                            buf.reserve(read_budget);
                        }
                        buf.extend_from_slice(&self.scratch[..n]);
                        got += n;
                        if n < want && !to_block {
                            break;
                        }
                        if got >= budget {
                            more = true;
                            break;
                        }
                    }
                    Err(x) if x.kind() == io::ErrorKind::WouldBlock => break,
                    Err(x) if x.kind() == io::ErrorKind::Interrupted => {}
                    Err(x) => {
                        err = Some(x);
                        break;
                    }
                }
            }
            #[cfg(any(target_os = "linux", target_os = "android"))]
            if got > 0 && self.common.cfg.quickack {
                let _ = SockRef::from(stream).set_tcp_quickack(true);
            }
            if got > 0 {
                st.last_activity = self.now;
            }
        }
        let called = got > 0 || had_leftover;
        if called {
            self.callback(slot, "on_data", |h, c| h.on_data(c, &mut buf));
        }
        // Keep a partial frame with the connection; recycle an empty buffer.
        if let Slot::Conn(e) = &mut self.slots[slot] {
            if buf.is_empty() {
                if buf.capacity() > 0 && self.pool.len() < 64 {
                    buf.clear();
                    self.pool.push(buf);
                }
            } else {
                e.rbuf = buf;
            }
        } else {
            return true;
        }
        if let Some(x) = err {
            self.close_now(slot, close_reason(&x), false);
            return true;
        }
        if eof {
            if let Slot::Conn(e) = &mut self.slots[slot] {
                e.eof = true;
            }
            self.callback(slot, "on_eof", |h, c| h.on_eof(c));
            return true;
        }
        if more {
            self.again.push(slot);
        }
        called
    }

    /// Reconciles a connection with its shared state: timers, idle, pause, abort,
    /// flush, FIN, graceful close, `on_writable`.
    fn service(&mut self, slot: usize) {
        loop {
            let Slot::Conn(e) = &mut self.slots[slot] else {
                return;
            };
            let id = e.shared.id;
            let shared = e.shared.clone();
            let mut st = lock(&shared.state);
            st.in_callback = false;
            st.kicked = false;
            if st.closed {
                return;
            }
            let timers = std::mem::take(&mut st.new_timers);
            if !st.wakes.is_empty() {
                for token in st.wakes.drain(..) {
                    self.woken.push((slot, id, token));
                }
            }
            let mut arm_idle = None;
            if st.idle_changed {
                st.idle_changed = false;
                e.idle = st.idle;
                if let (Some(d), false) = (e.idle, e.idle_armed) {
                    e.idle_armed = true;
                    arm_idle = Some(st.last_activity + d);
                }
            }
            let mut resume = false;
            if e.paused != st.paused {
                e.paused = st.paused;
                resume = !e.paused;
            }
            let eof = e.eof;
            let abort = st.abort;
            let flush = if abort { FlushResult::Done } else { st.flush() };
            let error = st.write_error.take();
            let closing = st.closing;
            let drained = st.queue.is_empty();
            let writable = !closing && st.queue.take_writable();
            let need_linger = closing && !drained && !e.linger_armed;
            if need_linger {
                e.linger_armed = true;
            }
            drop(st);
            for (at, token) in timers {
                self.arm(slot, id, TimerKind::User(token), at);
            }
            if let Some(at) = arm_idle {
                self.arm(slot, id, TimerKind::Idle, at);
            }
            if need_linger {
                let at = self.now + self.common.cfg.close_linger;
                self.arm(slot, id, TimerKind::Linger, at);
            }
            if abort {
                self.close_now(slot, CloseReason::Local, true);
                return;
            }
            if let Some(x) = error {
                self.close_now(slot, close_reason(&x), false);
                return;
            }
            if let FlushResult::Failed(x) = flush {
                self.close_now(slot, close_reason(&x), false);
                return;
            }
            if closing && drained {
                self.close_now(
                    slot,
                    if eof {
                        CloseReason::PeerClosed
                    } else {
                        CloseReason::Local
                    },
                    false,
                );
                return;
            }
            if resume {
                self.again.push(slot);
            }
            if !writable {
                return;
            }
            // on_writable, then service again (it may have queued more).
            let Slot::Conn(e) = &mut self.slots[slot] else {
                return;
            };
            lock(&e.shared.state).in_callback = true;
            if catch_handler_panic(Some(id), "on_writable", || e.handler.on_writable(&e.conn))
                .is_none()
            {
                self.close_now(slot, CloseReason::HandlerPanicked, true);
                return;
            }
        }
    }

    fn on_timer(&mut self, slot: usize, id: ConnId, kind: TimerKind) {
        if let TimerKind::AcceptRetry(lid) = kind {
            if let Some(Slot::Listener(l)) = self.slots.get_mut(slot) {
                if l.id == lid {
                    l.retry_armed = false;
                    self.do_accept(slot);
                }
            }
            return;
        }
        if !self.conn_matches(slot, id) {
            return;
        }
        match kind {
            TimerKind::ConnectTimeout => {
                let Slot::Connecting(_) = &self.slots[slot] else {
                    return;
                };
                let Slot::Connecting(p) = std::mem::replace(&mut self.slots[slot], Slot::Free)
                else {
                    return;
                };
                let PendingConnect {
                    id,
                    socket,
                    handler,
                    ..
                } = *p;
                let _ = self.poller.deregister(socket.as_raw_fd());
                drop(socket);
                self.free.push(slot);
                connect_failed(handler, Some(id), Error::TimedOut);
            }
            TimerKind::User(token) => self.callback(slot, "on_timer", |h, c| h.on_timer(c, token)),
            TimerKind::Idle => {
                let Slot::Conn(e) = &mut self.slots[slot] else {
                    return;
                };
                let Some(d) = e.idle else {
                    e.idle_armed = false;
                    return;
                };
                let last = lock(&e.shared.state).last_activity;
                let now = Instant::now();
                if now.saturating_duration_since(last) >= d {
                    self.close_now(slot, CloseReason::IdleTimeout, false);
                } else {
                    self.arm(slot, id, TimerKind::Idle, last + d);
                }
            }
            TimerKind::Linger => {
                let Slot::Conn(e) = &self.slots[slot] else {
                    return;
                };
                let reason = if e.eof {
                    CloseReason::PeerClosed
                } else {
                    CloseReason::Local
                };
                self.close_now(slot, reason, false);
            }
            TimerKind::AcceptRetry(_) => {}
        }
    }

    /// Ends a connection now: closes the socket (with RST if `reset`), frees the slot
    /// and calls `on_close`.
    fn close_now(&mut self, slot: usize, reason: CloseReason, reset: bool) {
        let Slot::Conn(e) = std::mem::replace(&mut self.slots[slot], Slot::Free) else {
            return;
        };
        self.free.push(slot);
        let ConnEntry {
            shared,
            conn,
            mut handler,
            fd,
            ..
        } = *e;
        let id = shared.id;
        {
            let mut st = lock(&shared.state);
            st.closed = true;
            st.closing = true;
            st.queue.clear();
            st.new_timers.clear();
            st.wakes.clear();
            if let Some(stream) = st.stream.take() {
                let _ = self.poller.deregister(fd);
                if reset {
                    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
                drop(stream);
            }
        }
        catch_handler_panic(Some(id), "on_close", || handler.on_close(&conn, reason));
        drop_guarded(Some(id), handler);
    }

    fn close_listener(&mut self, id: u64) {
        self.closed_listeners.insert(id);
        for slot in 0..self.slots.len() {
            let close = match &self.slots[slot] {
                Slot::Listener(l) => {
                    if l.id == id {
                        let _ = self.poller.deregister(l.socket.as_raw_fd());
                        self.slots[slot] = Slot::Free;
                        self.free.push(slot);
                    }
                    false
                }
                Slot::Conn(e) => e.listener == Some(id),
                _ => false,
            };
            if close {
                self.close_now(slot, CloseReason::Shutdown, false);
            }
        }
    }

    fn stop(&mut self) {
        let leftovers = {
            let mut mb = lock(&self.handle.mailbox);
            mb.stopped = true;
            std::mem::take(&mut mb.cmds)
        };
        for slot in 0..self.slots.len() {
            match &self.slots[slot] {
                Slot::Conn(_) => self.close_now(slot, CloseReason::Shutdown, false),
                Slot::Connecting(_) => {
                    if let Slot::Connecting(p) =
                        std::mem::replace(&mut self.slots[slot], Slot::Free)
                    {
                        let p = *p;
                        let _ = self.poller.deregister(p.socket.as_raw_fd());
                        connect_failed(p.handler, Some(p.id), Error::ShutDown);
                    }
                }
                Slot::Listener(l) => {
                    let _ = self.poller.deregister(l.socket.as_raw_fd());
                    self.slots[slot] = Slot::Free;
                }
                Slot::Free => {}
            }
        }
        for cmd in leftovers {
            if let Cmd::Connect { handler, .. } = cmd {
                connect_failed(handler, None, Error::ShutDown);
            }
        }
    }
}

/// A complete [`Backend`] over any [`Poller`]: what `zs-io-epoll` and `zs-io-kqueue`
/// return (wrapped in their own types).
pub struct ReactorBackend {
    common: Arc<Common>,
}

impl std::fmt::Debug for ReactorBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorBackend")
            .field("name", &self.common.name)
            .field("loops", &self.common.loops.len())
            .field("mode", &self.common.mode)
            .finish()
    }
}

impl ReactorBackend {
    /// Starts `cfg.effective_loops()` loop threads, each with a poller from `pollers`.
    pub fn start(
        name: &str,
        cfg: Config,
        mode: AcceptMode,
        pollers: PollerFactory,
    ) -> Result<ReactorBackend, Error> {
        let n = cfg.effective_loops();
        let mut made = Vec::with_capacity(n);
        for _ in 0..n {
            let p = pollers()?;
            let handle = Arc::new(LoopHandle {
                mailbox: Mutex::new(Mailbox {
                    cmds: Vec::new(),
                    stopped: false,
                }),
                waker: p.waker(),
            });
            made.push((p, handle));
        }
        let common = Arc::new(Common {
            name: name.to_string(),
            cfg: cfg.clone(),
            mode,
            loops: made.iter().map(|(_, h)| h.clone()).collect(),
            threads: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            next_listener: AtomicU64::new(1),
            next_loop: AtomicUsize::new(0),
            shut: AtomicBool::new(false),
        });
        let read_chunk = cfg.read_chunk.max(1024);
        for (i, (poller, handle)) in made.into_iter().enumerate() {
            let lp = Loop {
                poller,
                handle,
                common: common.clone(),
                slots: Vec::new(),
                free: Vec::new(),
                wheel: TimerWheel::new(Instant::now(), TICK, WHEEL_SLOTS),
                events: Vec::with_capacity(1024),
                scratch: vec![0u8; read_chunk].into_boxed_slice(),
                pool: Vec::new(),
                again: Vec::new(),
                woken: Vec::new(),
                woken_spare: Vec::new(),
                closed_listeners: HashSet::new(),
                now: Instant::now(),
            };
            let t = std::thread::Builder::new()
                .name(format!("zs-{name}-{i}"))
                .spawn(move || lp.run())?;
            lock(&common.threads).push(t);
        }
        Ok(ReactorBackend { common })
    }

    /// The number of event loops.
    pub fn loops(&self) -> usize {
        self.common.loops.len()
    }

    /// The accept mode in use.
    pub fn accept_mode(&self) -> AcceptMode {
        self.common.mode
    }

    fn bind(&self, addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(self.common.cfg.backlog)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    }
}

struct ReactorListener {
    id: u64,
    addr: SocketAddr,
    common: Arc<Common>,
    shut: Arc<AtomicBool>,
}

impl Listener for ReactorListener {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    fn shutdown(&self) {
        if self.shut.swap(true, Ordering::AcqRel) {
            return;
        }
        for l in &self.common.loops {
            let _ = l.post(Cmd::CloseListener { id: self.id });
        }
    }
}

impl Drop for ReactorListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Backend for ReactorBackend {
    fn name(&self) -> &str {
        &self.common.name
    }

    fn listen(
        &self,
        addr: SocketAddr,
        factory: HandlerFactory,
    ) -> Result<Box<dyn Listener>, Error> {
        if self.common.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let id = self.common.next_listener.fetch_add(1, Ordering::Relaxed);
        let shut = Arc::new(AtomicBool::new(false));
        let mut sockets = Vec::new();
        let bound = match self.common.mode {
            AcceptMode::ReusePort => {
                let first = self.bind(addr, true)?;
                let bound = first.local_addr()?;
                sockets.push(first);
                for _ in 1..self.common.loops.len() {
                    sockets.push(self.bind(bound, true)?);
                }
                bound
            }
            AcceptMode::HandOff => {
                let s = self.bind(addr, false)?;
                let bound = s.local_addr()?;
                sockets.push(s);
                bound
            }
        };
        let n = self.common.loops.len();
        let start = self.common.next_loop.fetch_add(1, Ordering::Relaxed);
        for (i, socket) in sockets.into_iter().enumerate() {
            let lp = &self.common.loops[(start + i) % n];
            if lp
                .post(Cmd::Listen {
                    id,
                    socket,
                    factory: factory.clone(),
                    shut: shut.clone(),
                })
                .is_err()
            {
                return Err(Error::ShutDown);
            }
        }
        Ok(Box::new(ReactorListener {
            id,
            addr: bound,
            common: self.common.clone(),
            shut,
        }))
    }

    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> Result<(), Error> {
        if self.common.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let nodelay = self.common.cfg.nodelay;
        let socket = (|| -> io::Result<Socket> {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            if nodelay {
                s.set_tcp_nodelay(true)?;
            }
            match s.connect(&addr.into()) {
                Ok(()) => Ok(s),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::EINPROGRESS) =>
                {
                    Ok(s)
                }
                Err(e) => Err(e),
            }
        })();
        let lp = self.common.pick_loop();
        match lp.post(Cmd::Connect {
            socket,
            addr,
            timeout,
            handler,
        }) {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::ShutDown),
        }
    }

    fn shutdown(&self) {
        self.common.shut.store(true, Ordering::Release);
        for l in &self.common.loops {
            let _ = l.post(Cmd::Stop);
        }
        if self.common.loops.iter().any(|l| l.on_this_thread()) {
            return; // cannot join ourselves; the loops stop on their own
        }
        let threads = std::mem::take(&mut *lock(&self.common.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for ReactorBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}
