//! # zs-secure: security as a transport layer
//!
//! [`SecureBackend`] wraps any [`zs_io::Backend`] with a
//! [`zs_crypto::SecurityProvider`] and is itself a `Backend`: its connections carry
//! **plaintext**. Handlers written against the transport seam (an echo, zs-core's
//! frame runtime, the p2pvm mux) run unchanged over epoll, tokio or a tunnel, with or
//! without encryption, and stacks compose from trait objects:
//! `SecureBackend(epoll)`, `SecureBackend(TunnelHandle(SecureBackend(epoll)))`.
//!
//! What the layer does per connection (it is the raw connection's [`Handler`]):
//!
//! * **Handshake** with its own timeout ([`SecureConfig::handshake_timeout`]); the
//!   inner handler is made (listen side) and gets `on_open` only once keys exist. A
//!   failed or timed-out handshake never reaches an accepted connection's handler; an
//!   outgoing connection's handler gets `on_connect_failed` with an error that carries
//!   a typed [`HandshakeError`] (see [`handshake_error`]): a handshake timeout is
//!   `HandshakeError::TimedOut`, not a peer close.
//! * **Records opened in place**: the raw bytes are decrypted where they lie; when the
//!   records of one read are all complete (the common case) the inner handler's
//!   plaintext `BytesMut` is a slice of the very buffer the backend read into (headers
//!   and tags squeezed out in place, no allocation); a record that straddles two reads
//!   is left in that buffer (the backend appends the next read behind it) and opened
//!   there once complete; only plaintext behind a partial frame the inner handler
//!   left is joined, as the zs-io contract's "leave the partial frame" rule asks.
//! * **Idle connections stay small**: after [`SecureConfig::key_idle`] without a
//!   record the session's expanded cipher keys and empty buffers are released (made
//!   again from the traffic secrets by the next record).
//! * **Many sends per record**: sends made inside one callback of the inner handler
//!   share one open record, sealed when the callback returns (zs-core's "held output",
//!   one layer down). Sends from other threads are sealed at once.
//! * **The zs-io contract** (items 1-8) holds for the plaintext connections: bounded
//!   send queue with `Full`/`on_writable` ([`SecureConfig::send_queue_limit`]),
//!   half-close (a close record, then FIN), timers, idle timeout, pause, linger,
//!   panics isolated per connection.
//! * **Bounds against hostile peers**: the handshake timeout, the record size (the
//!   provider's `max_record`: an oversize header fails before its body is buffered),
//!   the plaintext a handler may leave unconsumed
//!   ([`SecureConfig::max_pending_plaintext`]). A peer that breaks one is
//!   disconnected with a `tracing` warning naming the reason and counted in
//!   [`SecureBackend::stats`]; other connections carry on.
//! * **Who the peer is**: [`zs_io::Connection::security_info`] on the inner
//!   handler's connection reports the provider, suite, PSK identity and server key.
//!
//! The record bytes are exactly those of zs-core's built-in secure links (both run a
//! zs-crypto [`SecureSession`](zs_crypto::SecureSession)), so a zs-core `Client`
//! talks to a plaintext handler behind a `SecureBackend` (see `tests/interop.rs`).
//!
//! ## Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bytes::BytesMut;
//! use zs_crypto::{ClientConfig, ServerConfig, ZsSecurity};
//! use zs_io::{Backend, Conn, Handler};
//! use zs_secure::SecureBackend;
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
//!         let _ = conn.send(data.split().freeze()); // plaintext in, plaintext out
//!     }
//! }
//!
//! let key = [7u8; 32]; // a pre-shared key (random in real use)
//! let provider = Arc::new(ZsSecurity::new(
//!     Some(Arc::new(ClientConfig::psk(b"alice", &key).unwrap())),
//!     Some(Arc::new(ServerConfig::with_psk(b"alice", &key).unwrap())),
//! ));
//! let raw = Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, ..Default::default() }).unwrap());
//! let secure = SecureBackend::new(raw, provider);
//! let listener = secure.listen("127.0.0.1:0".parse().unwrap(), zs_io::handler_factory(|| Echo)).unwrap();
//!
//! // A client through the same layer: plaintext both ways, records on the wire.
//! let (tx, rx) = std::sync::mpsc::channel();
//! struct Client(std::sync::mpsc::Sender<Vec<u8>>);
//! impl Handler for Client {
//!     fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
//!         let _ = self.0.send(data.split().to_vec());
//!     }
//! }
//! let conn = zs_io::connect_blocking(&secure, listener.local_addr(), Duration::from_secs(5),
//!     Box::new(Client(tx))).unwrap();
//! conn.send(bytes::Bytes::from_static(b"hello")).unwrap();
//! let mut got = Vec::new();
//! while got.len() < 5 {
//!     got.extend(rx.recv_timeout(Duration::from_secs(5)).unwrap());
//! }
//! assert_eq!(got, b"hello");
//! let info = conn.security_info().unwrap();
//! assert_eq!(info.psk_identity.as_deref(), None); // the client side names no PSK peer
//! assert_eq!(info.suite, "AES-256-GCM");
//! secure.shutdown();
//! ```
#![forbid(unsafe_code)]

pub mod blocking;
pub mod compose;
mod conn;
mod layer;
mod sniff;

pub use blocking::SecureStream;
pub use layer::SecureLayer;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zs_crypto::SecurityProvider;
use zs_io::{Backend, Handler, HandlerFactory, Listener, Prefer};

/// The layer's bounds and timings.
#[derive(Debug, Clone)]
pub struct SecureConfig {
    /// How long an accepted connection may take from TCP open to established
    /// keys. A peer that is slower (slowloris, garbage, silence) is disconnected.
    /// Default 10 s. (An outgoing connection's handshake is bounded by the
    /// `timeout` given to `connect`, which covers TCP and the handshake.)
    pub handshake_timeout: Duration,
    /// Plaintext send queue bound (contract item 4): a send is accepted while the
    /// raw connection's queue plus the plaintext not yet sealed is below it. Use the
    /// raw backend's [`zs_io::Config::send_queue_limit`] (see
    /// [`SecureConfig::for_io`]) so back-pressure is signalled without polling.
    /// Default 256 KiB.
    pub send_queue_limit: usize,
    /// Most decrypted plaintext a connection may hold that its handler has not
    /// consumed (a partial frame, or data that arrived while reading was paused).
    /// Beyond it the connection is reset. Default 1 MiB.
    pub max_pending_plaintext: usize,
    /// Most accepted connections of this layer (over all its listeners) that may
    /// be in their handshake at once; a connection beyond it is reset at once
    /// (a handshake flood costs one counter, not a session each). Default 4096.
    pub max_handshakes: usize,
    /// How long a graceful `close` whose sealed bytes the raw queue refused
    /// waits for them to go out before it resets the connection (the close
    /// record and FIN go out only after those bytes). Use the raw backend's
    /// [`zs_io::Config::close_linger`] (see [`SecureConfig::for_io`]). Default 10 s.
    pub close_linger: Duration,
    /// After this long without a record sealed or opened, a connection drops
    /// its expanded cipher keys and empty buffers (`SecureSession::release_keys`;
    /// for AES-256-GCM 1,088 of the ~1.9 KB an idle connection held); the next
    /// record makes the keys again from the traffic secrets (a few
    /// microseconds). A busy connection pays one timer per period. `None`
    /// keeps the keys for the connection's life. Default 100 ms.
    pub key_idle: Option<Duration>,
}

impl Default for SecureConfig {
    fn default() -> Self {
        SecureConfig {
            handshake_timeout: Duration::from_secs(10),
            send_queue_limit: 256 * 1024,
            max_pending_plaintext: 1 << 20,
            max_handshakes: 4096,
            close_linger: Duration::from_secs(10),
            key_idle: Some(Duration::from_millis(100)),
        }
    }
}

impl SecureConfig {
    /// The defaults, with the send queue bound and close linger of the raw
    /// backend's configuration.
    pub fn for_io(cfg: &zs_io::Config) -> SecureConfig {
        SecureConfig {
            send_queue_limit: cfg.send_queue_limit,
            close_linger: cfg.close_linger,
            ..SecureConfig::default()
        }
    }
}

/// Why a handshake did not complete. Carried inside the `zs_io::Error::Io` an
/// outgoing connection's `on_connect_failed` receives, wrapped in a
/// [`zs_io::HandshakeFailure`] so layers above find it (see [`handshake_error`];
/// zs-core turns it into `zs_core::Error::Handshake`).
#[derive(Debug)]
#[non_exhaustive]
pub enum HandshakeError {
    /// No established keys within [`SecureConfig::handshake_timeout`] (accepted
    /// connections) or the connect's timeout (outgoing ones).
    TimedOut(Duration),
    /// The peer's handshake was refused (bad key, bad record, unknown PSK, ...).
    Failed(zs_crypto::Error),
    /// The peer closed or reset the connection before the handshake completed.
    PeerClosed,
    /// The provider could not make a session (e.g. no client configuration).
    Provider(zs_crypto::Error),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::TimedOut(d) => write!(f, "handshake timed out after {d:?}"),
            HandshakeError::Failed(e) => write!(f, "handshake failed: {e}"),
            HandshakeError::PeerClosed => write!(f, "peer closed during the handshake"),
            HandshakeError::Provider(e) => write!(f, "security provider: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl HandshakeError {
    /// The transport error an outgoing connection's handler receives:
    /// `zs_io::Error::Io` whose kind is `TimedOut`, `PermissionDenied` (failed),
    /// `ConnectionAborted` (peer closed) or `Other`, with this error inside
    /// (in a [`zs_io::HandshakeFailure`]).
    pub fn into_io(self) -> zs_io::Error {
        use std::io::ErrorKind as K;
        let kind = match self {
            HandshakeError::TimedOut(_) => K::TimedOut,
            HandshakeError::Failed(_) => K::PermissionDenied,
            HandshakeError::PeerClosed => K::ConnectionAborted,
            HandshakeError::Provider(_) => K::Other,
        };
        zs_io::HandshakeFailure::into_error(kind, self)
    }
}

/// The [`HandshakeError`] inside a connect error, if the connect failed in the
/// secure layer's handshake (rather than in TCP).
pub fn handshake_error(e: &zs_io::Error) -> Option<&HandshakeError> {
    e.handshake_failure()?.1 .0.downcast_ref::<HandshakeError>()
}

/// Counters of one [`SecureBackend`] (all connections, since it was made).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecureStats {
    /// Handshakes that completed.
    pub handshakes: u64,
    /// Connections dropped because the handshake took too long.
    pub handshake_timeouts: u64,
    /// Handshakes refused (bad bytes, wrong key, unknown PSK, oversize record).
    pub handshake_failures: u64,
    /// Established connections dropped for a bad record (forged, oversize,
    /// malformed, replayed).
    pub record_errors: u64,
    /// Connections reset because unconsumed plaintext passed
    /// [`SecureConfig::max_pending_plaintext`].
    pub plaintext_overflows: u64,
    /// Peers that sent FIN without the close record first (the stream may be
    /// truncated; the handler still gets `on_eof`).
    pub truncated_eofs: u64,
    /// Accepted connections reset because [`SecureConfig::max_handshakes`]
    /// handshakes were already in progress.
    pub handshakes_refused: u64,
    /// Key updates received from peers (each replaced the peer's sending
    /// keys: by volume, by age, or on request).
    pub key_updates_received: u64,
}

#[derive(Default)]
struct Counters {
    handshakes: AtomicU64,
    handshake_timeouts: AtomicU64,
    handshake_failures: AtomicU64,
    record_errors: AtomicU64,
    plaintext_overflows: AtomicU64,
    truncated_eofs: AtomicU64,
    handshakes_refused: AtomicU64,
    key_updates_received: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> SecureStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SecureStats {
            handshakes: l(&self.handshakes),
            handshake_timeouts: l(&self.handshake_timeouts),
            handshake_failures: l(&self.handshake_failures),
            record_errors: l(&self.record_errors),
            plaintext_overflows: l(&self.plaintext_overflows),
            truncated_eofs: l(&self.truncated_eofs),
            handshakes_refused: l(&self.handshakes_refused),
            key_updates_received: l(&self.key_updates_received),
        }
    }
}

/// What every connection of one layer shares.
struct Layer {
    provider: Arc<dyn SecurityProvider>,
    cfg: SecureConfig,
    counters: Counters,
    /// Accepted connections in their handshake now.
    handshaking: std::sync::atomic::AtomicUsize,
    /// Accepted connections in their handshake now, per source address (only
    /// kept when [`SecureBackend::with_max_handshakes_per_ip`] set a bound).
    per_ip: PerIp,
}

/// The per-source-address bound on handshakes in progress.
#[derive(Default)]
struct PerIp {
    /// The bound (`0`: none, the default).
    max: std::sync::atomic::AtomicUsize,
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerIp {
    /// Counts one more handshake from `ip`: `Ok(true)` counted, `Ok(false)`
    /// no bound set (nothing counted), `Err(max)` `ip` is at the bound.
    fn enter(&self, ip: std::net::IpAddr) -> Result<bool, usize> {
        let max = self.max.load(Ordering::Relaxed);
        if max == 0 {
            return Ok(false);
        }
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return Err(max); // (*n >= max > 0: the entry stays)
        }
        *n += 1;
        Ok(true)
    }

    /// One handshake from `ip` is over.
    fn leave(&self, ip: std::net::IpAddr) {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// A [`Backend`] whose connections carry plaintext over a secure session run on
/// an inner backend's connections (see the crate docs).
pub struct SecureBackend {
    inner: Arc<dyn Backend>,
    layer: Arc<Layer>,
    name: String,
}

impl SecureBackend {
    /// The layer over `inner` with sessions from `provider` and the default
    /// [`SecureConfig`].
    pub fn new(inner: Arc<dyn Backend>, provider: Arc<dyn SecurityProvider>) -> SecureBackend {
        SecureBackend::with_config(inner, provider, SecureConfig::default())
    }

    /// The layer with explicit bounds.
    pub fn with_config(
        inner: Arc<dyn Backend>,
        provider: Arc<dyn SecurityProvider>,
        cfg: SecureConfig,
    ) -> SecureBackend {
        let name = format!("secure({})", inner.name());
        SecureBackend {
            inner,
            layer: Arc::new(Layer {
                provider,
                cfg,
                counters: Counters::default(),
                handshaking: std::sync::atomic::AtomicUsize::new(0),
                per_ip: PerIp::default(),
            }),
            name,
        }
    }

    /// Also bounds the accepted connections in their handshake **per source
    /// address** (`0`: no bound, the default): one more from that address is
    /// reset at accept and counted in `handshakes_refused`, so one host cannot
    /// take every handshake slot of [`SecureConfig::max_handshakes`]. (A method
    /// rather than a `SecureConfig` field, so configurations written as struct
    /// literals stay valid.)
    pub fn with_max_handshakes_per_ip(self, max: usize) -> SecureBackend {
        self.layer.per_ip.max.store(max, Ordering::Relaxed);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &SecureConfig {
        &self.layer.cfg
    }

    /// The backend underneath.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    /// The counters of this layer.
    pub fn stats(&self) -> SecureStats {
        self.layer.counters.snapshot()
    }

    /// This backend's layer as handler wrappers ([`SecureLayer`]), sharing its
    /// counters and handshake bound.
    pub fn layer(&self) -> SecureLayer {
        SecureLayer {
            layer: self.layer.clone(),
        }
    }
}

impl Backend for SecureBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn listen(
        &self,
        addr: SocketAddr,
        factory: HandlerFactory,
    ) -> Result<Box<dyn Listener>, zs_io::Error> {
        let layer = self.layer.clone();
        self.inner.listen(
            addr,
            Arc::new(move || {
                Box::new(conn::SecureHandler::server(layer.clone(), factory.clone()))
                    as Box<dyn Handler>
            }),
        )
    }

    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> Result<(), zs_io::Error> {
        // The caller's timeout covers the TCP connect and the handshake.
        let deadline = std::time::Instant::now() + timeout;
        self.inner.connect(
            addr,
            timeout,
            Box::new(conn::SecureHandler::client(
                self.layer.clone(),
                handler,
                deadline,
            )),
        )
    }

    fn resolve(
        &self,
        host: &str,
        port: u16,
        prefer: Prefer,
    ) -> Result<Vec<SocketAddr>, zs_io::Error> {
        self.inner.resolve(host, port, prefer)
    }

    fn shutdown(&self) {
        self.inner.shutdown()
    }
}
