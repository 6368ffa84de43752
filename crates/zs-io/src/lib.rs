//! # zs-io: the transport seam
//!
//! zserver's protocol logic is sans-IO: sessions take bytes and return bytes. This
//! crate is the one place where those bytes meet sockets. It defines a small set of
//! **object-safe** traits that every transport backend implements (epoll, kqueue,
//! IOCP, tokio, and later the `zs-p2pvm` virtual connections), so the framework
//! holds a `Box<dyn Backend>` and never learns which one runs underneath. The same
//! seam hides readiness models (epoll, kqueue: "you may read now") and completion
//! models (IOCP: "your read finished"): handlers only ever see bytes that arrived.
//!
//! ## The pieces
//!
//! * [`Backend`]: owns sockets, event loops and threads. [`Backend::listen`],
//!   [`Backend::connect`] (asynchronous, with a timeout), [`Backend::resolve`]
//!   (AAAA/A preference, see [`Prefer`]), [`Backend::shutdown`].
//! * [`Listener`]: what `listen` returns; [`Listener::shutdown`] (also on drop) stops
//!   accepting **and closes every connection accepted through it**.
//! * [`Handler`]: one per connection, owned by the backend and called on the
//!   connection's event loop: `on_open`, `on_data(&mut BytesMut)`, `on_eof`,
//!   `on_writable`, `on_timer`, `on_close(reason)` (and `on_connect_failed` for
//!   outgoing connections that never opened). Handlers must not block.
//! * [`Connection`] (shared as [`Conn`] = `Arc<dyn Connection>`): the handle a
//!   handler (or any other thread) uses to act on a connection: `send(Bytes)` into a
//!   **bounded** send queue, `shutdown_write` (half-close), `close` (graceful),
//!   `abort` (reset), `set_timer`, `set_idle_timeout`, `set_read_paused`,
//!   `peer_addr`, `local_addr`, `id`, and `security_info` (who the peer
//!   authenticated as, when a security layer such as `zs-secure` runs underneath).
//! * [`Config`]: the knobs every backend honours (loops, send queue limit, idle
//!   timeout, read chunk, close linger, `TCP_NODELAY`).
//! * Helpers for backend authors: [`SendQueue`] (the bounded queue with the
//!   back-pressure rules below, with `IoSlice` gathering for vectored writes) and
//!   [`TimerWheel`] (a hashed timer wheel).
//! * Feature `testkit`: the `testkit` module, the conformance kit every backend runs unchanged,
//!   and the `conformance_tests!` macro that expands to one `#[test]` per kit item.
//! * Also for backend authors: [`catch_handler_panic`] (contract item 8) and
//!   [`AcceptBackoff`] (retrying `accept` on a timer while it fails with
//!   `EMFILE`/`ENFILE`).
//! * Feature `reactor` (Unix): `reactor`, a generic, safe readiness event loop
//!   (connections table, buffers, timer wheel, send queues, accept logic) over a tiny
//!   `Poller` trait; `zs-io-epoll` and `zs-io-kqueue` only supply the poller.
//!
//! ## Contract (every backend must keep it; the kit checks it)
//!
//! 1. **Threads.** All [`Handler`] callbacks of one connection run on one thread (its
//!    event loop), one at a time, never re-entrantly. [`Conn`] methods may be called
//!    from any thread, including from inside a callback of that same connection.
//! 2. **Order.** For an accepted connection: `on_open` first, then any number of
//!    `on_data` / `on_eof` / `on_writable` / `on_timer`, then exactly one `on_close`;
//!    nothing after `on_close`, after which the handler is dropped. For an outgoing
//!    connection: either that same sequence, or exactly one `on_connect_failed`
//!    (then the handler is dropped).
//! 3. **Bytes in.** `on_data(conn, buf)` gets every byte the peer sent, in order. The
//!    handler consumes what it can (`buf.split_to(n)`, `buf.split()`, `buf.advance`)
//!    and leaves a partial frame in `buf`: the backend keeps the rest and appends
//!    newer bytes behind it before the next `on_data`. `on_eof` is called once when
//!    the peer half-closed (FIN); its default closes the connection gracefully.
//!    While [`Connection::set_read_paused`]`(true)` is in force no `on_data` is
//!    delivered and the backend stops reading the socket (TCP flow control then
//!    slows the peer).
//! 4. **Bytes out, back-pressure.** [`Connection::send`] appends to a send queue
//!    bounded by [`Config::send_queue_limit`]: a send is accepted while fewer than
//!    `limit` bytes are queued (so the queue holds at most `limit` plus one message),
//!    otherwise it returns [`Error::Full`] with the bytes handed back and the
//!    backend will call `on_writable` once the queue has drained to `limit / 2` or
//!    less. Memory therefore stays bounded however slowly the peer reads. Sends are
//!    written in order, gathered into vectored writes. After `close`, `abort`,
//!    `shutdown_write` or the connection's end, `send` returns [`Error::Closed`]
//!    (never a panic).
//! 5. **Closing.** `close()` is graceful: no more `on_data`, the queue is flushed,
//!    then the socket is closed (if the peer does not drain it within
//!    [`Config::close_linger`] the socket is closed anyway). `abort()` drops the queue
//!    and resets the connection (`SO_LINGER` 0 → RST). `shutdown_write()` flushes the
//!    queue and then sends FIN while reading continues. The [`CloseReason`] tells
//!    `on_close` why the connection ended.
//! 6. **Timers.** `set_timer(after, token)` arms a one-shot timer that calls
//!    `on_timer(conn, token)` on the loop (resolution: a few milliseconds; never
//!    early). Tokens are the handler's own; several may be pending. The idle timeout
//!    ([`Config::idle_timeout`], per connection via `set_idle_timeout`) closes a
//!    connection with [`CloseReason::IdleTimeout`] when no byte moved either way
//!    for that long.
//! 7. **Shutdown.** [`Backend::shutdown`] closes every listener and connection
//!    (`on_close(Shutdown)`), stops the loops and joins their threads; it is
//!    idempotent and also runs on drop.
//! 8. **Panics.** A panic in a handler callback is caught (see
//!    [`catch_handler_panic`]), logged with the connection id and the panic message,
//!    counted in [`handler_panics`], and ends **only that connection**: it is reset
//!    (queued bytes dropped) and the handler gets one last
//!    `on_close(`[`CloseReason::HandlerPanicked`]`)` (if `on_close` itself panics,
//!    that is caught too). Every other connection of the loop, the listeners and
//!    the timers keep running. A panicking [`HandlerFactory`] drops the accepted
//!    socket it was called for; a panicking `on_connect_failed` is logged. (Nothing
//!    can be caught when the binary is built with `panic = "abort"`.)
//!
//! ## Example
//!
//! A handler is plain synchronous code; here, an echo:
//!
//! ```
//! use bytes::BytesMut;
//! use zs_io::{Conn, Error, Handler};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
//!         match conn.send(data.split().freeze()) {
//!             Ok(()) => {}
//!             // A real handler would stop reading until `on_writable`.
//!             Err(Error::Full(_)) => conn.set_read_paused(true),
//!             Err(_) => conn.close(),
//!         }
//!     }
//!     fn on_writable(&mut self, conn: &Conn) {
//!         conn.set_read_paused(false);
//!     }
//! }
//! // With a backend (e.g. `zs_io_epoll::EpollBackend`):
//! // let listener = backend.listen("127.0.0.1:0".parse()?, zs_io::handler_factory(|| Echo))?;
//! let factory = zs_io::handler_factory(|| Echo);
//! let _handler: Box<dyn Handler> = factory();
//! ```
//!
//! Async user code uses the same seam through `zs_io_tokio::AsyncConn`.
#![forbid(unsafe_code)]

pub mod clock;
mod error;
mod guard;
mod queue;
mod timer;

#[cfg(all(unix, feature = "reactor"))]
pub mod reactor;
#[cfg(feature = "testkit")]
pub mod testkit;

/// Runs `f` with the event-loop wake-ups of what it posts to the loops deferred
/// to its end (one per loop instead of one per kick), for a thread that sends
/// to many connections in a row off the loops. See `reactor::defer_wakes`
/// (readiness backends: epoll, kqueue); with other backends it just runs `f`.
/// `f` must not wait for a loop to act on what it posted.
pub fn defer_wakes<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(unix, feature = "reactor"))]
    {
        reactor::defer_wakes(f)
    }
    #[cfg(not(all(unix, feature = "reactor")))]
    {
        f()
    }
}

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

pub use bytes::{Bytes, BytesMut};
pub use error::{Error, HandshakeFailure};
pub use guard::{
    catch_handler_panic, drop_guarded, handler_panics, panic_message, AcceptBackoff, AcceptFailure,
};
pub use queue::SendQueue;
pub use timer::TimerWheel;

/// A connection's identity, unique within one backend for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Why a connection ended (the argument of [`Handler::on_close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Closed by this side ([`Connection::close`] or [`Connection::abort`]) while the
    /// peer had not finished sending.
    Local,
    /// The peer finished: it sent FIN and the connection was then closed gracefully
    /// (by `on_eof`'s default, or by the handler after it).
    PeerClosed,
    /// The peer reset the connection (RST, `ECONNRESET`, `EPIPE`).
    Reset,
    /// No byte moved in either direction for the idle timeout.
    IdleTimeout,
    /// Its listener or the whole backend was shut down.
    Shutdown,
    /// Another socket error.
    Error(std::io::ErrorKind),
    /// A callback of this connection's handler panicked (contract item 8): the
    /// connection was reset and its queued bytes dropped. The handler's state may be
    /// inconsistent; this `on_close` is the only call it gets after the panic.
    HandlerPanicked,
}

/// The handle to one connection, shared as [`Conn`]. Every method may be called from
/// any thread, also from inside the connection's own handler callbacks, and none of
/// them blocks on the network or panics on a closed connection.
pub trait Connection: Send + Sync + 'static {
    /// This connection's id.
    fn id(&self) -> ConnId;
    /// The remote address.
    fn peer_addr(&self) -> SocketAddr;
    /// The local address.
    fn local_addr(&self) -> SocketAddr;
    /// Queues `data` for sending (contract item 4): `Ok` when accepted,
    /// [`Error::Full`] (bytes handed back; `on_writable` follows) when the queue holds
    /// `send_queue_limit` bytes or more, [`Error::Closed`] after close, abort,
    /// `shutdown_write` or the end of the connection. Empty `data` is accepted and
    /// ignored.
    fn send(&self, data: Bytes) -> Result<(), Error>;
    /// Queues the front of `parts` in order, as consecutive [`send`](Self::send)s
    /// would (the same bound and errors), removing each part it accepted: `Ok`
    /// when `parts` is empty, [`Error::Full`] (with empty bytes: the parts not
    /// taken stay in `parts`; `on_writable` follows) when the queue filled,
    /// [`Error::Closed`] as for `send`. For output kept as pieces (frame headers
    /// apart from payload slices) that should leave in one vectored write.
    ///
    /// The default calls `send` per part. The reactor backends (epoll, kqueue)
    /// take the connection's lock once and, outside callbacks, write the parts
    /// with one `writev`, where consecutive `send`s would make one write each.
    fn send_vectored(&self, parts: &mut std::collections::VecDeque<Bytes>) -> Result<(), Error> {
        while let Some(p) = parts.pop_front() {
            match self.send(p.clone()) {
                Ok(()) => {}
                Err(Error::Full(_)) => {
                    parts.push_front(p);
                    return Err(Error::Full(Bytes::new()));
                }
                Err(e) => {
                    parts.push_front(p);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
    /// Bytes accepted by `send` and not yet handed to the kernel.
    fn queued_bytes(&self) -> usize;
    /// Half-close: once the queue is flushed, send FIN; reading continues.
    /// [`Error::Closed`] if the connection is already closing or closed.
    fn shutdown_write(&self) -> Result<(), Error>;
    /// Graceful close (contract item 5); idempotent.
    fn close(&self);
    /// Immediate close with a reset (RST); queued bytes are dropped; idempotent.
    fn abort(&self);
    /// Arms a one-shot timer: `on_timer(conn, token)` after `after`.
    /// [`Error::Closed`] if the connection is closed.
    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error>;
    /// Sets (or with `None` clears) this connection's idle timeout.
    fn set_idle_timeout(&self, idle: Option<Duration>);
    /// Stops (`true`) or resumes (`false`) reading from the socket and delivering
    /// `on_data`; inbound flow control for slow consumers.
    fn set_read_paused(&self, paused: bool);
    /// Whether the connection has been closed or is closing (no more sends accepted).
    fn is_closed(&self) -> bool;
    /// Wakes the connection's event loop: `on_timer(conn, token)` runs on the
    /// loop as soon as it gets to it, from any thread, without waiting for a
    /// timer tick. The doorbell for cross-thread work (a delayed answer, the next
    /// queued request, a resumed reader). Wakes are not coalesced: each call gives
    /// one `on_timer`. [`Error::Closed`] if the connection is closed.
    ///
    /// The default arms a zero-length timer (`set_timer(Duration::ZERO, token)`),
    /// which costs the backend's timer resolution (5 ms ticks on the reactor
    /// backends); the reactor (epoll, kqueue) and tokio backends wake at once.
    fn wake(&self, token: u64) -> Result<(), Error> {
        self.set_timer(Duration::ZERO, token)
    }

    /// Who the peer authenticated as, for connections that run through a security
    /// layer (e.g. `zs_secure::SecureBackend`) once its handshake completed.
    /// Default `None`: a plain transport knows nothing about the peer's identity.
    fn security_info(&self) -> Option<Arc<SecurityInfo>> {
        None
    }
}

/// What a security layer learnt about a connection in its handshake (see
/// [`Connection::security_info`]). Plain data, so the transport seam stays free of
/// any cryptography crate. `Debug` never prints the channel binding.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SecurityInfo {
    /// The security provider's name (e.g. `"zs-aead"`, `"tls13"`).
    pub provider: String,
    /// The negotiated cipher suite's name (e.g. `"AES-256-GCM"`).
    pub suite: String,
    /// On a server, the pre-shared key identity the client proved (PSK
    /// handshakes only).
    pub psk_identity: Option<Vec<u8>>,
    /// The fingerprint (SHA3-256) of the static server key that authenticated the
    /// server (key-pinning handshakes only): on a client the pinned key it verified,
    /// on a server its own.
    pub server_key: Option<[u8; 32]>,
    /// A **secret** 32-byte value equal on both ends and unique to this session
    /// (like a TLS exporter), for binding higher-layer proofs to the channel
    /// (StableIO resume, the p2pvm token proof). Never send or log it.
    pub channel_binding: Option<[u8; 32]>,
}

impl fmt::Debug for SecurityInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityInfo")
            .field("provider", &self.provider)
            .field("suite", &self.suite)
            .field("psk_identity", &self.psk_identity)
            .field("server_key", &self.server_key)
            .field("channel_binding", &self.channel_binding.map(|_| "<secret>"))
            .finish()
    }
}

impl SecurityInfo {
    /// A record of one handshake's outcome (no channel binding; see
    /// [`SecurityInfo::with_channel_binding`]).
    pub fn new(
        provider: impl Into<String>,
        suite: impl Into<String>,
        psk_identity: Option<Vec<u8>>,
        server_key: Option<[u8; 32]>,
    ) -> SecurityInfo {
        SecurityInfo {
            provider: provider.into(),
            suite: suite.into(),
            psk_identity,
            server_key,
            channel_binding: None,
        }
    }

    /// The same, with the session's channel binding.
    pub fn with_channel_binding(mut self, binding: Option<[u8; 32]>) -> SecurityInfo {
        self.channel_binding = binding;
        self
    }
}

/// A shared connection handle.
pub type Conn = Arc<dyn Connection>;

impl fmt::Debug for dyn Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            self.id(),
            self.local_addr(),
            self.peer_addr()
        )
    }
}

/// Per-connection logic called by the backend on the connection's event loop
/// (contract items 1–3). All methods but `on_data` have defaults. Callbacks must not
/// block: hand heavy work to a pool and come back with [`Connection::send`].
pub trait Handler: Send + 'static {
    /// The connection is established (accepted, or the outgoing connect succeeded).
    fn on_open(&mut self, conn: &Conn) {
        let _ = conn;
    }
    /// Bytes arrived. Consume what forms complete messages and leave the rest in
    /// `data`; the backend keeps it and appends newer bytes behind it.
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut);
    /// The peer half-closed its sending side. Default: [`Connection::close`].
    fn on_eof(&mut self, conn: &Conn) {
        conn.close();
    }
    /// The send queue drained to half its limit after a send returned [`Error::Full`].
    fn on_writable(&mut self, conn: &Conn) {
        let _ = conn;
    }
    /// A timer armed with [`Connection::set_timer`] fired.
    fn on_timer(&mut self, conn: &Conn, token: u64) {
        let _ = (conn, token);
    }
    /// The connection ended; the last callback.
    fn on_close(&mut self, conn: &Conn, reason: CloseReason) {
        let _ = (conn, reason);
    }
    /// An outgoing connection could not be established ([`Error::Refused`],
    /// [`Error::TimedOut`], [`Error::Io`], [`Error::ShutDown`]); the only callback
    /// such a handler gets.
    fn on_connect_failed(&mut self, error: Error) {
        let _ = error;
    }
}

/// Makes one [`Handler`] per accepted connection.
pub type HandlerFactory = Arc<dyn Fn() -> Box<dyn Handler> + Send + Sync>;

/// Wraps a closure returning a concrete handler type as a [`HandlerFactory`].
pub fn handler_factory<H, F>(make: F) -> HandlerFactory
where
    H: Handler,
    F: Fn() -> H + Send + Sync + 'static,
{
    Arc::new(move || Box::new(make()) as Box<dyn Handler>)
}

/// A listening socket returned by [`Backend::listen`].
pub trait Listener: Send + Sync {
    /// The bound address (with the real port when port 0 was asked for).
    fn local_addr(&self) -> SocketAddr;
    /// Stops accepting and closes every connection accepted through this listener
    /// (`on_close(Shutdown)`). Idempotent; also runs on drop. Returns once the loops
    /// have been told; the `on_close` callbacks follow on their loops.
    fn shutdown(&self);
}

/// Address-family preference for [`Backend::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefer {
    /// IPv6 (AAAA) addresses first, then IPv4 (A).
    #[default]
    V6First,
    /// IPv4 (A) addresses first, then IPv6 (AAAA).
    V4First,
    /// Only IPv6 addresses.
    V6Only,
    /// Only IPv4 addresses.
    V4Only,
}

/// Orders (and filters) addresses by `prefer`, keeping the resolver's order within a
/// family and dropping duplicates.
pub fn sort_by_preference(
    addrs: impl IntoIterator<Item = SocketAddr>,
    prefer: Prefer,
) -> Vec<SocketAddr> {
    let mut v6 = Vec::new();
    let mut v4 = Vec::new();
    for a in addrs {
        let list = if a.is_ipv6() { &mut v6 } else { &mut v4 };
        if !list.contains(&a) {
            list.push(a);
        }
    }
    match prefer {
        Prefer::V6First => v6.into_iter().chain(v4).collect(),
        Prefer::V4First => v4.into_iter().chain(v6).collect(),
        Prefer::V6Only => v6,
        Prefer::V4Only => v4,
    }
}

/// Resolves `host` with the system resolver (blocking; `getaddrinfo`) and orders the
/// answers by `prefer`. A literal address is returned as is. No answer in the wanted
/// families is [`Error::Resolve`].
pub fn resolve_blocking(host: &str, port: u16, prefer: Prefer) -> Result<Vec<SocketAddr>, Error> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Resolve(format!("{host}: {e}")))?;
    let out = sort_by_preference(addrs, prefer);
    if out.is_empty() {
        return Err(Error::Resolve(format!("{host}: no address for {prefer:?}")));
    }
    Ok(out)
}

/// Backend-independent settings. Every backend takes one in its constructor.
#[derive(Debug, Clone)]
pub struct Config {
    /// Event loops (threads); 0 means one per available core.
    pub loops: usize,
    /// Send queue bound in bytes (contract item 4). Default 256 KiB.
    pub send_queue_limit: usize,
    /// Default idle timeout for new connections; `None` (default) = none.
    pub idle_timeout: Option<Duration>,
    /// Bytes read per read call and the most a backend buffers per read burst before
    /// giving other connections a turn. Default 64 KiB.
    pub read_chunk: usize,
    /// How long a graceful `close` waits for the queue to drain. Default 10 s.
    pub close_linger: Duration,
    /// Set `TCP_NODELAY` on every connection. Default true.
    pub nodelay: bool,
    /// Re-arm `TCP_QUICKACK` after every read that got bytes (Linux reactor
    /// backend; elsewhere ignored), so each received segment is acknowledged at
    /// once instead of after the kernel's delayed-ACK timer (40 ms). For peers
    /// that write twice in a row without `TCP_NODELAY`: their Nagle holds the
    /// second write until our ACK of the first. One extra syscall per read.
    /// Default false.
    pub quickack: bool,
    /// Listen backlog. Default 4096.
    pub backlog: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            loops: 0,
            send_queue_limit: 256 * 1024,
            idle_timeout: None,
            read_chunk: 64 * 1024,
            close_linger: Duration::from_secs(10),
            nodelay: true,
            quickack: false,
            backlog: 4096,
        }
    }
}

impl Config {
    /// The number of loops to start: `loops`, or the available cores when 0.
    pub fn effective_loops(&self) -> usize {
        if self.loops > 0 {
            self.loops
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// A transport backend (see the crate docs for the contract). Object-safe: the
/// framework holds a `Box<dyn Backend>` or `Arc<dyn Backend>`.
pub trait Backend: Send + Sync {
    /// A short name for logs and benches, e.g. `"epoll"`.
    fn name(&self) -> &str;
    /// Binds `addr` (with `SO_REUSEADDR`) and accepts connections, giving each a
    /// handler made by `factory`.
    fn listen(&self, addr: SocketAddr, factory: HandlerFactory)
        -> Result<Box<dyn Listener>, Error>;
    /// Starts an outgoing connection to `addr`. Returns at once (errors here are only
    /// immediate ones, e.g. [`Error::ShutDown`]); later the handler gets `on_open`, or
    /// `on_connect_failed` with [`Error::Refused`] / [`Error::TimedOut`] (after
    /// `timeout`) / [`Error::Io`].
    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> Result<(), Error>;
    /// Resolves a host name to addresses ordered by `prefer` (may block; don't call it
    /// from a handler). Default: [`resolve_blocking`].
    fn resolve(&self, host: &str, port: u16, prefer: Prefer) -> Result<Vec<SocketAddr>, Error> {
        resolve_blocking(host, port, prefer)
    }
    /// Closes all listeners and connections, stops the loops and joins them
    /// (contract item 7). Called from one of the backend's own loops it only requests
    /// the stop.
    fn shutdown(&self);
}

/// A handler wrapper that reports the outcome of a connect to a waiting thread and
/// then forwards everything to the inner handler.
struct ConnectWaiter {
    inner: Box<dyn Handler>,
    tx: Option<mpsc::Sender<Result<Conn, Error>>>,
}

impl Handler for ConnectWaiter {
    fn on_open(&mut self, conn: &Conn) {
        self.inner.on_open(conn);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(conn.clone()));
        }
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        self.inner.on_data(conn, data)
    }
    fn on_eof(&mut self, conn: &Conn) {
        self.inner.on_eof(conn)
    }
    fn on_writable(&mut self, conn: &Conn) {
        self.inner.on_writable(conn)
    }
    fn on_timer(&mut self, conn: &Conn, token: u64) {
        self.inner.on_timer(conn, token)
    }
    fn on_close(&mut self, conn: &Conn, reason: CloseReason) {
        self.inner.on_close(conn, reason)
    }
    fn on_connect_failed(&mut self, error: Error) {
        let copy = error.duplicate();
        self.inner.on_connect_failed(error);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(copy));
        }
    }
}

/// Connects and waits for the outcome: the [`Conn`] once `on_open` has run, or the
/// connect error. Blocks the calling thread, so never call it from a handler.
pub fn connect_blocking(
    backend: &dyn Backend,
    addr: SocketAddr,
    timeout: Duration,
    handler: Box<dyn Handler>,
) -> Result<Conn, Error> {
    let (tx, rx) = mpsc::channel();
    backend.connect(
        addr,
        timeout,
        Box::new(ConnectWaiter {
            inner: handler,
            tx: Some(tx),
        }),
    )?;
    // The backend enforces `timeout`; the margin only guards against a broken backend.
    match rx.recv_timeout(timeout + Duration::from_secs(5)) {
        Ok(r) => r,
        Err(_) => Err(Error::TimedOut),
    }
}

/// Resolves `host` with `backend` and connects to the answers in preference order,
/// returning the first connection that opens (each attempt gets `timeout`).
pub fn connect_host_blocking(
    backend: &dyn Backend,
    host: &str,
    port: u16,
    prefer: Prefer,
    timeout: Duration,
    mut make: impl FnMut() -> Box<dyn Handler>,
) -> Result<Conn, Error> {
    let mut last = Error::Resolve(format!("{host}: no address"));
    for addr in backend.resolve(host, port, prefer)? {
        match connect_blocking(backend, addr, timeout, make()) {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_orders_and_filters() {
        let a4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a6: SocketAddr = "[::1]:1".parse().unwrap();
        let b4: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let input = vec![a4, a6, b4, a4];
        assert_eq!(
            sort_by_preference(input.clone(), Prefer::V6First),
            vec![a6, a4, b4]
        );
        assert_eq!(
            sort_by_preference(input.clone(), Prefer::V4First),
            vec![a4, b4, a6]
        );
        assert_eq!(sort_by_preference(input.clone(), Prefer::V6Only), vec![a6]);
        assert_eq!(sort_by_preference(input, Prefer::V4Only), vec![a4, b4]);
    }

    #[test]
    fn resolve_literal_and_failure() {
        let v = resolve_blocking("127.0.0.1", 80, Prefer::V6First).unwrap();
        assert_eq!(v, vec!["127.0.0.1:80".parse().unwrap()]);
        assert!(matches!(
            resolve_blocking("127.0.0.1", 80, Prefer::V6Only),
            Err(Error::Resolve(_))
        ));
    }

    #[test]
    fn config_loops() {
        let c = Config {
            loops: 3,
            ..Config::default()
        };
        assert_eq!(c.effective_loops(), 3);
        assert!(Config::default().effective_loops() >= 1);
    }
}
