//! # zs-io-tokio: the portable transport backend and the async bridge
//!
//! Why it exists: it runs the [`zs_io`] seam anywhere tokio runs (the portable
//! default where no native backend exists), and it is the bridge between the
//! callback-style seam and `async` user code.
//!
//! * [`TokioBackend`] implements [`zs_io::Backend`] on tokio: one task per
//!   listener and one task per connection; the task owns the socket and the
//!   [`Handler`], so the seam's threading contract holds (all callbacks of a
//!   connection run one at a time in its task; tokio may move the task between
//!   worker threads, which the contract allows as long as calls never overlap).
//!   The runtime is owned by the backend ([`TokioBackend::new`], `Config::loops`
//!   worker threads) or borrowed through a [`tokio::runtime::Handle`]
//!   ([`TokioBackend::with_handle`]).
//! * [`AsyncConn`] / [`AsyncListener`] wrap **any** `dyn Backend` (epoll, kqueue,
//!   IOCP, tokio) for async code: `read`, `write_all`, `shutdown_write`, `close`,
//!   with back-pressure both ways (`write_all` waits for `on_writable`; the reader
//!   pauses the connection when more than its buffer limit is unread).
//!
//! ```
//! use zs_io::{Backend, BytesMut, Config, Conn, Handler};
//! use zs_io_tokio::{AsyncConn, TokioBackend};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
//!         let _ = conn.send(data.split().freeze());
//!     }
//! }
//! let backend = std::sync::Arc::new(TokioBackend::new(Config { loops: 1, ..Config::default() }).unwrap());
//! let listener = backend.listen("127.0.0.1:0".parse().unwrap(), zs_io::handler_factory(|| Echo)).unwrap();
//! let addr = listener.local_addr();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! rt.block_on(async {
//!     let mut c = AsyncConn::connect(&*backend, addr, std::time::Duration::from_secs(5)).await.unwrap();
//!     c.write_all(b"hello").await.unwrap();
//!     let mut buf = [0u8; 5];
//!     c.read_exact(&mut buf).await.unwrap();
//!     assert_eq!(&buf, b"hello");
//! });
//! backend.shutdown();
//! ```
#![forbid(unsafe_code)]

mod bridge;
mod timers;

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use socket2::SockRef;
use std::task::{Poll, Waker};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};

use tokio::sync::watch;
use tokio::time::Instant;
use zs_io::{
    catch_handler_panic, drop_guarded, AcceptBackoff, Backend, Bytes, BytesMut, CloseReason,
    Config, Conn, ConnId, Connection, Error, Handler, HandlerFactory, Listener, Prefer, SendQueue,
};

pub use bridge::{AsyncConn, AsyncListener};
use timers::{Target, Timers};

const MAX_IOV: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Shared {
    cfg: Config,
    handle: Handle,
    runtime: Mutex<Option<Runtime>>,
    shut_tx: watch::Sender<bool>,
    /// The outgoing connections, which the backend's shutdown ends.
    outgoing: Arc<StopSet>,
    /// Every connection's timers, driven by one task (session 13).
    timers: Arc<Timers<TConn>>,
    shut: AtomicBool,
    next_id: AtomicU64,
    /// Live tasks (listeners, connections, connects) and a condvar to await zero.
    tasks: Mutex<usize>,
    tasks_cv: Condvar,
}

/// Counts a task for the lifetime of the guard.
struct TaskGuard(Arc<Shared>);

impl TaskGuard {
    fn new(s: &Arc<Shared>) -> TaskGuard {
        *lock(&s.tasks) += 1;
        TaskGuard(s.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut n = lock(&self.0.tasks);
        *n -= 1;
        if *n == 0 {
            self.0.tasks_cv.notify_all();
        }
    }
}

/// The seam on tokio (see the crate docs).
pub struct TokioBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TokioBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioBackend")
            .field("shut", &self.shared.shut.load(Ordering::Relaxed))
            .finish()
    }
}

impl TokioBackend {
    /// Starts an owned multi-thread runtime with `cfg.effective_loops()` workers.
    pub fn new(cfg: Config) -> Result<TokioBackend, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.effective_loops())
            .thread_name("zs-tokio")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        Ok(TokioBackend::build(cfg, handle, Some(rt)))
    }

    /// Runs on an existing runtime (which must have IO and time enabled).
    pub fn with_handle(cfg: Config, handle: Handle) -> TokioBackend {
        TokioBackend::build(cfg, handle, None)
    }

    fn build(cfg: Config, handle: Handle, rt: Option<Runtime>) -> TokioBackend {
        let (shut_tx, _) = watch::channel(false);
        let timers = Timers::new();
        timers.start(&handle);
        TokioBackend {
            shared: Arc::new(Shared {
                cfg,
                handle,
                runtime: Mutex::new(rt),
                shut_tx,
                outgoing: Arc::default(),
                timers,
                shut: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                tasks: Mutex::new(0),
                tasks_cv: Condvar::new(),
            }),
        }
    }

    /// The runtime handle the backend spawns on.
    pub fn handle(&self) -> &Handle {
        &self.shared.handle
    }
}

impl Drop for TokioBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct ListenerCtl {
    addr: SocketAddr,
    /// Also held by the accept loop, which sets it when the backend shuts
    /// down: the listener's connections watch this one channel only.
    tx: Arc<watch::Sender<bool>>,
}

impl Listener for ListenerCtl {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

impl Drop for ListenerCtl {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl Backend for TokioBackend {
    fn name(&self) -> &str {
        "tokio"
    }

    fn listen(
        &self,
        addr: SocketAddr,
        factory: HandlerFactory,
    ) -> Result<Box<dyn Listener>, Error> {
        if self.shared.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let std_l = bind(addr, self.shared.cfg.backlog)?;
        let bound = std_l.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let shared = self.shared.clone();
        let guard = TaskGuard::new(&shared);
        let l = {
            let _e = shared.handle.enter();
            TcpListener::from_std(std_l)?
        };
        shared.handle.spawn(accept_loop(
            shared.clone(),
            l,
            factory,
            rx,
            tx.clone(),
            guard,
        ));
        Ok(Box::new(ListenerCtl { addr: bound, tx }))
    }

    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> Result<(), Error> {
        if self.shared.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let shared = self.shared.clone();
        let guard = TaskGuard::new(&shared);
        self.shared.handle.spawn(async move {
            let mut shut = shared.shut_tx.subscribe();
            let r = tokio::select! {
                r = tokio::time::timeout(timeout, TcpStream::connect(addr)) => r,
                _ = stopped(&mut shut) => {
                    connect_failed(handler, Error::ShutDown);
                    return;
                }
            };
            match r {
                Err(_) => connect_failed(handler, Error::TimedOut),
                Ok(Err(e)) => connect_failed(handler, Error::from_connect(e)),
                Ok(Ok(stream)) => {
                    drop(shut);
                    let stop = shared.outgoing.clone();
                    run_conn(stream, handler, stop, guard).await;
                    return;
                }
            }
            drop(guard);
        });
        Ok(())
    }

    fn resolve(&self, host: &str, port: u16, prefer: Prefer) -> Result<Vec<SocketAddr>, Error> {
        zs_io::resolve_blocking(host, port, prefer)
    }

    fn shutdown(&self) {
        self.shared.shut.store(true, Ordering::Release);
        self.shared.shut_tx.send_replace(true);
        self.shared.outgoing.stop();
        self.shared.timers.shutdown();
        if Handle::try_current().is_ok() {
            // Inside a runtime we must not block: the tasks end on their own.
            // An owned runtime cannot be dropped here either (tokio panics when
            // a runtime is dropped in an async context), so it is shut down in
            // the background: its workers stop without being waited for.
            if let Some(rt) = lock(&self.shared.runtime).take() {
                rt.shutdown_background();
            }
            return;
        }
        {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let mut n = lock(&self.shared.tasks);
            while *n > 0 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    tracing::warn!("zs-io-tokio: {} tasks still running at shutdown", *n);
                    break;
                }
                n = self
                    .shared
                    .tasks_cv
                    .wait_timeout(n, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        if let Some(rt) = lock(&self.shared.runtime).take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Gives an outgoing connection's handler its only callback, then drops it (a
/// panic in either is caught and logged).
fn connect_failed(mut handler: Box<dyn Handler>, err: Error) {
    catch_handler_panic(None, "on_connect_failed", || handler.on_connect_failed(err));
    drop_guarded(None, handler);
}

/// Resolves once the flag is (or becomes) true, or its sender is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Accepts until the listener or the backend shuts down; then stops the
/// listener's [`StopSet`], which ends every connection it accepted.
async fn accept_loop(
    shared: Arc<Shared>,
    l: TcpListener,
    factory: HandlerFactory,
    stop: watch::Receiver<bool>,
    stop_tx: Arc<watch::Sender<bool>>,
    _guard: TaskGuard,
) {
    let conns = Arc::new(StopSet::default());
    accept_until_stopped(shared, l, factory, stop, &conns).await;
    stop_tx.send_replace(true);
    conns.stop();
}

/// The connections that one stop ends (a listener's, or the backend's
/// outgoing ones). Each connection registers its `TConn` here; [`stop`]
/// marks every one (`TState::stop`) and wakes its task. That is one slot
/// (8 bytes, 16 while free) per connection instead of a `watch` receiver and
/// its `changed()` future stored in every task (about 100 bytes; session
/// 12). Slots are reused, so the set holds as many as the most connections
/// it had at once.
///
/// [`stop`]: StopSet::stop
#[derive(Default)]
struct StopSet {
    inner: Mutex<StopInner>,
}

#[derive(Default)]
struct StopInner {
    stopped: bool,
    slots: Vec<Option<Weak<TConn>>>,
    free: Vec<usize>,
}

impl StopSet {
    /// Registers `c`; its slot, or `None` when the set was already stopped.
    fn join(&self, c: &Arc<TConn>) -> Option<usize> {
        let mut s = lock(&self.inner);
        if s.stopped {
            return None;
        }
        let w = Some(Arc::downgrade(c));
        Some(match s.free.pop() {
            Some(i) => {
                s.slots[i] = w;
                i
            }
            None => {
                s.slots.push(w);
                s.slots.len() - 1
            }
        })
    }

    /// Gives back the slot [`join`](StopSet::join) returned.
    fn leave(&self, slot: usize) {
        let mut s = lock(&self.inner);
        if !s.stopped {
            s.slots[slot] = None;
            s.free.push(slot);
        }
    }

    /// Marks every registered connection stopped and wakes it; later
    /// [`join`](StopSet::join)s are refused.
    fn stop(&self) {
        let slots = {
            let mut s = lock(&self.inner);
            s.stopped = true;
            s.free = Vec::new();
            std::mem::take(&mut s.slots)
        };
        for c in slots.iter().flatten().filter_map(Weak::upgrade) {
            let mut st = lock(&c.state);
            st.stop = true;
            c.poke(&mut st);
        }
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        let s = lock(&self.inner);
        s.slots.len() - s.free.len()
    }
}

async fn accept_until_stopped(
    shared: Arc<Shared>,
    l: TcpListener,
    factory: HandlerFactory,
    mut stop: watch::Receiver<bool>,
    conns: &Arc<StopSet>,
) {
    let mut shut = shared.shut_tx.subscribe();
    let mut backoff = AcceptBackoff::new();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((stream, _)) => {
                    if let Some(n) = backoff.recovered() {
                        tracing::warn!("zs-io-tokio: accepting again after {n} failed attempts");
                    }
                    // A panicking factory drops (closes) the socket; accepting goes on.
                    let Some(h) = catch_handler_panic(None, "HandlerFactory", || factory()) else {
                        continue;
                    };
                    let guard = TaskGuard::new(&shared);
                    // `run_conn`'s future itself is the task: a wrapping
                    // `async` block would store its arguments twice.
                    shared.handle.spawn(run_conn(stream, h, conns.clone(), guard));
                }
                Err(e) => {
                    // EMFILE and friends leave the connection queued: back off (10 to
                    // 100 ms) while the error persists, logging once per burst.
                    let f = backoff.failed();
                    if f.log {
                        tracing::warn!(
                            "zs-io-tokio: accept failed: {e}; retrying every {}-{} ms while it persists",
                            AcceptBackoff::MIN.as_millis(),
                            AcceptBackoff::MAX.as_millis()
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(f.retry_after) => {}
                        _ = stopped(&mut stop) => return,
                        _ = stopped(&mut shut) => return,
                    }
                }
            },
            _ = stopped(&mut stop) => return,
            _ = stopped(&mut shut) => return,
        }
    }
}

struct TState {
    queue: SendQueue,
    in_callback: bool,
    closing: bool,
    abort: bool,
    write_shut: bool,
    closed: bool,
    paused: bool,
    /// The idle timeout in nanoseconds, [`NO_IDLE`] for none (8 bytes where
    /// an `Option<Duration>` is 16; see [`TState::idle`]).
    idle_ns: u64,
    /// Tokens of [`Connection::wake`] calls and of timers that came due, not
    /// yet delivered (freed when empty: idle connections hold no buffer).
    wakes: Tokens,
    /// Another thread asked the task to look at this state.
    poked: bool,
    /// The connection's [`StopSet`] was stopped: the task ends it.
    stop: bool,
    /// The task's waker while it waits (a waker slot instead of a
    /// `tokio::sync::Notify`, so the waiting task stores no `Notified` future).
    waker: Option<Waker>,
}

/// [`TState::idle_ns`] of a connection without an idle timeout.
const NO_IDLE: u64 = u64::MAX;

impl TState {
    fn idle(&self) -> Option<Duration> {
        (self.idle_ns != NO_IDLE).then(|| Duration::from_nanos(self.idle_ns))
    }

    fn set_idle(&mut self, idle: Option<Duration>) {
        self.idle_ns = idle_ns(idle);
    }
}

/// An idle timeout as [`TState::idle_ns`] (saturating at 584 years).
fn idle_ns(idle: Option<Duration>) -> u64 {
    idle.map_or(NO_IDLE, |d| {
        u64::try_from(d.as_nanos()).map_or(NO_IDLE - 1, |n| n.min(NO_IDLE - 1))
    })
}

/// Tokens waiting to be delivered, oldest first, in one boxed slice whose
/// slot 0 holds their count: 16 bytes in [`TState`] where a `Vec` is 24, so
/// a [`TConn`] is 232 B and its `Arc` a 256-byte malloc chunk instead of 272
/// (session 14, issue 13's idle bytes). The slice is freed when its last
/// token is taken: an idle connection holds none.
#[derive(Default)]
struct Tokens(Option<Box<[u64]>>);

impl Tokens {
    fn push(&mut self, token: u64) {
        let b = self.0.get_or_insert_with(|| vec![0; 4].into_boxed_slice());
        let n = b[0] as usize;
        if n + 1 == b.len() {
            let mut v = Vec::with_capacity(2 * b.len());
            v.extend_from_slice(b);
            v.resize(2 * b.len(), 0);
            *b = v.into_boxed_slice();
        }
        b[n + 1] = token;
        b[0] += 1;
    }

    /// The oldest token; the slice goes with the last one.
    fn pop(&mut self) -> Option<u64> {
        let b = self.0.as_mut()?;
        let n = b[0] as usize;
        let token = b[1];
        b.copy_within(2..n + 1, 1);
        b[0] -= 1;
        if n == 1 {
            self.0 = None;
        }
        Some(token)
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

struct TConn {
    id: ConnId,
    peer: SocketAddr,
    local: SocketAddr,
    /// The backend's timers, and this connection as their target: timers
    /// live there, not in the connection (session 13).
    timers: Arc<Timers<TConn>>,
    me: Weak<TConn>,
    state: Mutex<TState>,
}

impl Target for TConn {
    fn fire(&self, token: u64, internal: bool) {
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        // An internal entry (the task's idle or linger deadline) only wakes
        // the task, which checks its deadlines once nothing else is ready.
        if !internal {
            st.wakes.push(token);
        }
        self.poke(&mut st);
    }
}

impl TConn {
    fn poke(&self, st: &mut TState) {
        if !st.in_callback {
            st.poked = true;
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
    }
}

impl Connection for TConn {
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
        if was_empty {
            self.poke(&mut st);
        }
        Ok(())
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
        self.poke(&mut st);
        Ok(())
    }
    fn close(&self) {
        let mut st = lock(&self.state);
        if st.closed || st.closing {
            return;
        }
        st.closing = true;
        self.poke(&mut st);
    }
    fn abort(&self) {
        let mut st = lock(&self.state);
        if st.closed || st.abort {
            return;
        }
        st.abort = true;
        st.closing = true;
        st.queue.clear();
        self.poke(&mut st);
    }
    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error> {
        if lock(&self.state).closed {
            return Err(Error::Closed);
        }
        let at = Instant::now() + after;
        self.timers.arm(at, token, false, self.me.clone());
        Ok(())
    }
    fn wake(&self, token: u64) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(Error::Closed);
        }
        st.wakes.push(token);
        self.poke(&mut st);
        Ok(())
    }
    fn set_idle_timeout(&self, idle: Option<Duration>) {
        let mut st = lock(&self.state);
        st.set_idle(idle);
        self.poke(&mut st);
    }
    fn set_read_paused(&self, paused: bool) {
        let mut st = lock(&self.state);
        if st.paused != paused {
            st.paused = paused;
            self.poke(&mut st);
        }
    }
    fn is_closed(&self) -> bool {
        let st = lock(&self.state);
        st.closed || st.closing
    }
}

fn reason_of(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => CloseReason::Reset,
        k => CloseReason::Error(k),
    }
}

/// What the connection task should wait for next.
struct Plan {
    read: bool,
    write: bool,
    writable_cb: bool,
    /// A [`Connection::wake`] or timer token to deliver now.
    wake: Option<u64>,
    end: Option<(CloseReason, bool)>,
}

/// What ended one wait of a connection's task.
enum Wake {
    Stop,
    Poked,
    Readable(io::Result<()>),
    Writable(io::Result<()>),
    /// The soonest own deadline (idle timeout, close linger) has passed.
    Deadline,
}

/// Reads what `stream` has into `rbuf`: bytes read, whether the stream
/// ended, and an error. The rule is zs-io's reactor's (`do_read`): a buffer
/// the handler left data in, with a chunk of room behind it (the handler
/// sized it: a frame completed where it lies) or holding a chunk or more, is
/// filled up to its room and never regrown, since regrowing would copy what
/// it holds; the socket stays readable, so the task reads on once the handler
/// has taken what it wanted. Any other buffer gets a chunk of room, and once
/// a first read fills it (a bulk transfer), room for the rest of the read
/// budget (4 chunks) at once instead of being regrown chunk by chunk. Reading
/// stops at the budget (a read may take all the room it has), at
/// `WouldBlock` or at the end of the stream.
fn read_into(
    stream: &TcpStream,
    rbuf: &mut BytesMut,
    read_chunk: usize,
) -> (usize, bool, Option<io::Error>) {
    let chunk = read_chunk.max(1024);
    let most = 4 * chunk;
    let room = rbuf.capacity() - rbuf.len();
    let sized = !rbuf.is_empty() && room > 0 && (room >= chunk || rbuf.len() >= chunk);
    let budget = if sized { room.min(most) } else { most };
    if !sized {
        rbuf.reserve(chunk);
    }
    let mut got = 0;
    loop {
        if got >= budget {
            return (got, false, None);
        }
        if rbuf.capacity() == rbuf.len() {
            if sized {
                return (got, false, None);
            }
            rbuf.reserve(chunk);
        }
        match stream.try_read_buf(rbuf) {
            Ok(0) => return (got, true, None),
            Ok(n) => {
                if !sized && got == 0 && rbuf.capacity() == rbuf.len() {
                    rbuf.reserve(most.saturating_sub(n));
                }
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (got, false, None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (got, false, Some(e)),
        }
    }
}

/// One connection's task: owns the socket and the handler.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// `async fn`'s future stores its arguments twice (as arguments, and as the
/// locals they are moved into), a block's stores what it captures once
/// (session 14). The backend is reached through the guard (`guard.0`), not
/// through an `Arc` and a `&Config` of the task's own, and the id through
/// the `TConn`: every word kept across the wait is in every idle task.
// Not an `async fn` on purpose (the task's size, see above).
#[allow(clippy::manual_async_fn)]
fn run_conn(
    stream: TcpStream,
    mut handler: Box<dyn Handler>,
    stop: Arc<StopSet>,
    guard: TaskGuard,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let tc = {
            let shared = &guard.0;
            let cfg = &shared.cfg;
            if cfg.nodelay {
                let _ = stream.set_nodelay(true);
            }
            let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
                return;
            };
            Arc::new_cyclic(|me| TConn {
                id: ConnId(shared.next_id.fetch_add(1, Ordering::Relaxed)),
                peer,
                local,
                timers: shared.timers.clone(),
                me: me.clone(),
                state: Mutex::new(TState {
                    queue: SendQueue::new(cfg.send_queue_limit),
                    in_callback: false,
                    closing: false,
                    abort: false,
                    write_shut: false,
                    closed: false,
                    paused: false,
                    idle_ns: idle_ns(cfg.idle_timeout),
                    wakes: Tokens::default(),
                    poked: false,
                    stop: false,
                    waker: None,
                }),
            })
        };
        let slot = stop.join(&tc);
        if slot.is_none() {
            lock(&tc.state).stop = true;
        }
        let conn: Conn = tc.clone();
        // The connection stores no future: readiness is polled without one
        // (`poll_*_ready`), other threads wake the task through `TState::waker`,
        // a stop (the listener's, or the backend's for an outgoing connection)
        // comes as `TState::stop` through the `StopSet` (session 12), and timers
        // (the handler's, and the task's own idle and linger deadlines) are
        // entries in the backend's `Timers`, which come back as `TState::wakes`
        // and `TState::deadline_due` (session 13). A `select!` over six futures
        // made this task 1.2 KB.
        // The soonest own deadline armed in `Timers` (later entries may still be
        // pending there; they come as a harmless extra check).
        let mut armed_at: Option<Instant> = None;
        let mut rbuf = BytesMut::new();
        let mut eof = false;
        let mut fin_sent = false;
        let mut last_activity = Instant::now();
        let mut linger_deadline: Option<Instant> = None;

        // Runs one handler callback; `false` when it panicked (contract item 8: the
        // connection is then reset and the handler only gets `on_close`).
        macro_rules! callback {
            ($what:literal, $call:expr) => {{
                lock(&tc.state).in_callback = true;
                let ok = catch_handler_panic(Some(tc.id), $what, || $call).is_some();
                lock(&tc.state).in_callback = false;
                ok
            }};
        }
        const PANICKED: (CloseReason, bool) = (CloseReason::HandlerPanicked, true);

        let opened = callback!("on_open", handler.on_open(&conn));
        let (reason, reset) = if !opened {
            PANICKED
        } else {
            'conn: loop {
                // Service: flush, FIN, timers, flags.
                let plan = {
                    let mut st = lock(&tc.state);
                    let mut plan = Plan {
                        read: !st.paused && !eof && !st.closing,
                        write: false,
                        writable_cb: false,
                        wake: None,
                        end: None,
                    };
                    plan.wake = st.wakes.pop();

                    if st.abort {
                        plan.end = Some((CloseReason::Local, true));
                    } else {
                        let mut failed = None;
                        let mut wrote = false;
                        while !st.queue.is_empty() {
                            let mut slices = [IoSlice::new(&[]); MAX_IOV];
                            let n = st.queue.io_slices(&mut slices);
                            match stream.try_write_vectored(&slices[..n]) {
                                Ok(0) => {
                                    failed = Some(io::Error::from(io::ErrorKind::WriteZero));
                                    break;
                                }
                                Ok(k) => {
                                    st.queue.advance(k);
                                    wrote = true;
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    plan.write = true;
                                    break;
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                        if wrote {
                            last_activity = Instant::now();
                        }
                        if let Some(e) = failed {
                            plan.end = Some((reason_of(&e), false));
                        } else if st.queue.is_empty() {
                            if st.write_shut && !fin_sent {
                                fin_sent = true;
                                if let Err(e) = SockRef::from(&stream).shutdown(Shutdown::Write) {
                                    plan.end = Some((reason_of(&e), false));
                                }
                            }
                            if st.closing && plan.end.is_none() {
                                plan.end = Some((
                                    if eof {
                                        CloseReason::PeerClosed
                                    } else {
                                        CloseReason::Local
                                    },
                                    false,
                                ));
                            }
                        } else if st.closing && linger_deadline.is_none() {
                            linger_deadline = Some(Instant::now() + guard.0.cfg.close_linger);
                        }
                        if plan.end.is_none() && !st.closing {
                            plan.writable_cb = st.queue.take_writable();
                        }
                    }
                    plan
                };
                if let Some(end) = plan.end {
                    break end;
                }
                if plan.writable_cb {
                    if !callback!("on_writable", handler.on_writable(&conn)) {
                        break 'conn PANICKED;
                    }
                    continue;
                }
                if let Some(token) = plan.wake {
                    if !callback!("on_timer", handler.on_timer(&conn, token)) {
                        break 'conn PANICKED;
                    }
                    continue;
                }
                let deadline = match (
                    lock(&tc.state).idle().map(|d| last_activity + d),
                    linger_deadline,
                ) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(d) = deadline {
                    if armed_at.is_none_or(|a| d < a) {
                        tc.timers.arm(d, 0, true, tc.me.clone());
                        armed_at = Some(d);
                    }
                }
                // Only what the wait needs is kept across it (the task's size).
                let (want_read, want_write) = (plan.read, plan.write);
                let wake = std::future::poll_fn(|cx| {
                    {
                        let mut st = lock(&tc.state);
                        if st.stop {
                            return Poll::Ready(Wake::Stop);
                        }
                        if std::mem::take(&mut st.poked) {
                            return Poll::Ready(Wake::Poked);
                        }
                        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                            st.waker = Some(cx.waker().clone());
                        }
                    }
                    if want_read {
                        if let Poll::Ready(r) = stream.poll_read_ready(cx) {
                            return Poll::Ready(Wake::Readable(r));
                        }
                    }
                    if want_write {
                        if let Poll::Ready(r) = stream.poll_write_ready(cx) {
                            return Poll::Ready(Wake::Writable(r));
                        }
                    }
                    // Own deadlines last: data already waiting is read first
                    // (it may keep the connection alive).
                    if armed_at.is_some_and(|a| a <= Instant::now()) {
                        return Poll::Ready(Wake::Deadline);
                    }
                    Poll::Pending
                })
                .await;
                match wake {
                    Wake::Stop => break (CloseReason::Shutdown, false),
                    Wake::Poked => {}
                    Wake::Readable(r) => {
                        if let Err(e) = r {
                            break (reason_of(&e), false);
                        }
                        let (got, end, err) = read_into(&stream, &mut rbuf, guard.0.cfg.read_chunk);
                        eof = end;
                        if got > 0 {
                            last_activity = Instant::now();
                            #[cfg(any(target_os = "linux", target_os = "android"))]
                            if guard.0.cfg.quickack {
                                let _ = SockRef::from(&stream).set_tcp_quickack(true);
                            }
                            if !callback!("on_data", handler.on_data(&conn, &mut rbuf)) {
                                break 'conn PANICKED;
                            }
                        }
                        if rbuf.is_empty() {
                            // Idle connections keep no read buffer (a spurious wake-up would
                            // otherwise leave a 64 KiB reservation behind).
                            rbuf = BytesMut::new();
                        }
                        if let Some(e) = err {
                            break (reason_of(&e), false);
                        }
                        if eof && !callback!("on_eof", handler.on_eof(&conn)) {
                            break 'conn PANICKED;
                        }
                    }
                    Wake::Writable(r) => {
                        if let Err(e) = r {
                            break (reason_of(&e), false);
                        }
                    }
                    Wake::Deadline => {
                        armed_at = None;
                        let now = Instant::now();
                        if linger_deadline.is_some_and(|l| l <= now) {
                            break (
                                if eof {
                                    CloseReason::PeerClosed
                                } else {
                                    CloseReason::Local
                                },
                                false,
                            );
                        }
                        let idle = lock(&tc.state).idle();
                        if idle.is_some_and(|d| now.duration_since(last_activity) >= d) {
                            break (CloseReason::IdleTimeout, false);
                        }
                    }
                }
            }
        };
        {
            let mut st = lock(&tc.state);
            st.closed = true;
            st.closing = true;
            st.queue.clear();
            st.wakes.clear();
            st.waker = None;
        }
        if let Some(slot) = slot {
            stop.leave(slot);
        }
        if reset {
            let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        drop(stream);
        catch_handler_panic(Some(tc.id), "on_close", || handler.on_close(&conn, reason));
        drop_guarded(Some(tc.id), handler);
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Runs `f` on a fresh current-thread runtime.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Every idle connection is one task holding this future (issue 13's
    /// idle-bytes goal): it waits through `poll_fn` on readiness, its stop
    /// flag and one timer. The `select!` of six futures it replaced made it
    /// 1,216 B (debug build); 760 with a `watch` future for the stop flag,
    /// 560 since the stop comes through the `StopSet` (session 12); 408
    /// (392 release) since timers live in the backend's `Timers` and the
    /// future is spawned without a wrapping block (session 13); 240 since
    /// `run_conn` returns an `async move` block instead of being an `async
    /// fn` (which stored its arguments twice) and keeps no `Arc<Shared>`,
    /// `&Config` or id of its own (session 14). Tokio's task cell (header
    /// and trailer, about 104 B, 128-byte aligned) around the release future
    /// is then 384 B (512 in session 13, 768 before): keep the release
    /// future at or below 280 B.
    #[test]
    fn the_connection_task_stays_small() {
        block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let (s, _) = l.accept().await.unwrap();
            let b = TokioBackend::with_handle(Config::default(), Handle::current());
            struct H;
            impl Handler for H {
                fn on_data(&mut self, _: &Conn, _: &mut BytesMut) {}
            }
            let g = TaskGuard::new(&b.shared);
            let f = run_conn(s, Box::new(H), Arc::default(), g);
            let n = std::mem::size_of_val(&f);
            assert!(n <= 256, "the connection future is {n} bytes");
        });
    }

    /// Every connection keeps one `TConn` in an `Arc` (issue 13's idle
    /// bytes): 232 B (248 in session 13, with an `Option<Duration>` idle
    /// timeout and a `Vec` of tokens), so the `Arc`'s malloc chunk is 256 B
    /// instead of 272.
    #[test]
    fn a_connection_stays_small() {
        let n = std::mem::size_of::<TConn>();
        assert!(n <= 232, "TConn is {n} bytes");
    }

    /// Tokens come out in the order they went in, across the slice's
    /// growth, and the slice is freed with the last one.
    #[test]
    fn tokens_keep_their_order_and_free_their_slice() {
        let mut t = Tokens::default();
        assert_eq!(t.pop(), None);
        for round in 0..3u64 {
            let n = 1 + 5 * round;
            for i in 0..n {
                t.push(round * 100 + i);
            }
            for i in 0..n {
                assert!(t.0.is_some());
                assert_eq!(t.pop(), Some(round * 100 + i));
            }
            assert!(t.0.is_none(), "freed when empty");
            assert_eq!(t.pop(), None);
        }
        t.push(7);
        t.push(8);
        assert_eq!(t.pop(), Some(7));
        t.push(9);
        assert_eq!((t.pop(), t.pop(), t.pop()), (Some(8), Some(9), None));
        t.push(1);
        t.clear();
        assert!(t.0.is_none());
        // The idle timeout round-trips, `None` included.
        let round_trip = |d: Option<Duration>| {
            let ns = idle_ns(d);
            (ns != NO_IDLE).then(|| Duration::from_nanos(ns))
        };
        for d in [
            None,
            Some(Duration::ZERO),
            Some(Duration::from_millis(1500)),
        ] {
            assert_eq!(round_trip(d), d);
        }
        assert_eq!(
            round_trip(Some(Duration::MAX)),
            Some(Duration::from_nanos(NO_IDLE - 1))
        );
    }

    /// `read_into` on a fresh buffer with a bulk transfer waiting stops at
    /// the budget (4 chunks: after a full first chunk the buffer gets room
    /// for the rest of it); a buffer the handler sized is filled up to its
    /// room and not regrown; the stream's end is reported once all is read.
    #[test]
    fn read_into_follows_the_reactors_rule() {
        block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().await.unwrap();
            // `read_chunk` 1 means the smallest chunk, 1 KiB.
            let chunk = 1024;
            let data: Vec<u8> = (0..160 * chunk).map(|i| i as u8).collect();
            std::io::Write::write_all(&mut c, &data).unwrap();
            let mut rbuf = BytesMut::new();
            let mut got = 0;
            while got == 0 {
                s.readable().await.unwrap();
                let (n, end, err) = read_into(&s, &mut rbuf, 1);
                assert!(!end && err.is_none());
                got = n;
            }
            assert!(got <= 4 * chunk, "read {got}, past the budget");
            assert_eq!(&rbuf[..], &data[..got]);
            // The handler sizes the buffer for 3 more chunks.
            rbuf.reserve(3 * chunk);
            let (at, room) = (rbuf.as_ptr(), rbuf.capacity() - rbuf.len());
            let mut have = rbuf.len();
            while rbuf.capacity() > rbuf.len() {
                s.readable().await.unwrap();
                let (n, _, _) = read_into(&s, &mut rbuf, 1);
                have += n;
                assert_eq!(rbuf.as_ptr(), at, "a sized buffer was regrown");
            }
            assert_eq!(have - got, room);
            assert_eq!(&rbuf[..], &data[..have]);
            drop(c);
            let mut rest = rbuf.split().len();
            loop {
                s.readable().await.unwrap();
                let (n, end, err) = read_into(&s, &mut rbuf, 1);
                assert!(err.is_none());
                rest += n;
                rbuf.clear();
                if end {
                    break;
                }
            }
            assert_eq!(rest, data.len());
        });
    }

    /// Records a connection's open and close.
    struct Rec(std::sync::mpsc::Sender<Option<CloseReason>>);
    impl Handler for Rec {
        fn on_open(&mut self, _: &Conn) {
            let _ = self.0.send(None);
        }
        fn on_data(&mut self, _: &Conn, _: &mut BytesMut) {}
        fn on_close(&mut self, _: &Conn, reason: CloseReason) {
            let _ = self.0.send(Some(reason));
        }
    }

    /// An outgoing connection holds one slot of the backend's `StopSet`
    /// while it lives and gives it back when it closes; the backend's
    /// shutdown ends the ones still open through that set (reason
    /// `Shutdown`), and a connection that comes up after the stop is ended
    /// at once.
    #[test]
    fn outgoing_connections_are_stopped_through_the_stop_set() {
        let wait = Duration::from_secs(10);
        let b = TokioBackend::new(Config::default()).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        b.connect(addr, wait, Box::new(Rec(tx.clone()))).unwrap();
        let (_peer1, _) = l.accept().unwrap();
        assert_eq!(rx.recv_timeout(wait).unwrap(), None);
        assert_eq!(b.shared.outgoing.live(), 1);
        // A connection closed by its peer gives its slot back.
        b.connect(addr, wait, Box::new(Rec(tx.clone()))).unwrap();
        let (peer2, _) = l.accept().unwrap();
        assert_eq!(rx.recv_timeout(wait).unwrap(), None);
        assert_eq!(b.shared.outgoing.live(), 2);
        drop(peer2);
        assert_eq!(
            rx.recv_timeout(wait).unwrap(),
            Some(CloseReason::PeerClosed)
        );
        assert_eq!(b.shared.outgoing.live(), 1);
        // The backend's stop ends the other one.
        b.shared.outgoing.stop();
        assert_eq!(rx.recv_timeout(wait).unwrap(), Some(CloseReason::Shutdown));
        // One that comes up after the stop is ended at once.
        b.connect(addr, wait, Box::new(Rec(tx))).unwrap();
        let (_peer3, _) = l.accept().unwrap();
        assert_eq!(rx.recv_timeout(wait).unwrap(), None);
        assert_eq!(rx.recv_timeout(wait).unwrap(), Some(CloseReason::Shutdown));
        b.shutdown();
    }
}
