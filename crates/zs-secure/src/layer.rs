//! [`SecureLayer`]: the secure layer without a backend of its own, for code that
//! is handed a raw connection's handler slot rather than a backend (a tunnel
//! driver given to `backend.connect`, a listener's factory).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_crypto::SecurityProvider;
use zs_io::{Handler, HandlerFactory};

use crate::{conn, Counters, Layer, SecureConfig, SecureStats};

/// The secure layer as handler wrappers: what [`SecureBackend`](crate::SecureBackend)
/// does to the connections of its inner backend, applied to one raw connection's
/// handler at a time. Cheap to clone; clones share the counters and the bound on
/// handshakes in progress (`SecureConfig::max_handshakes`), so give every
/// connection of one listener handlers of the same layer.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use zs_crypto::{ClientConfig, ServerConfig, ZsSecurity};
/// use zs_io::{Backend, Conn, Handler};
/// use zs_secure::{SecureConfig, SecureLayer};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_data(&mut self, conn: &Conn, data: &mut bytes::BytesMut) {
///         let _ = conn.send(data.split().freeze());
///     }
/// }
/// let key = [5u8; 32];
/// let provider = Arc::new(ZsSecurity::new(
///     Some(Arc::new(ClientConfig::psk(b"me", &key).unwrap())),
///     Some(Arc::new(ServerConfig::with_psk(b"me", &key).unwrap())),
/// ));
/// let layer = SecureLayer::new(provider, SecureConfig::default());
/// let raw = zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, ..Default::default() }).unwrap();
/// // A raw listener whose connections speak the secure protocol to `Echo`.
/// let l = layer.clone();
/// let listener = raw.listen("127.0.0.1:0".parse().unwrap(),
///     Arc::new(move || l.server_handler(zs_io::handler_factory(|| Echo)))).unwrap();
/// let mut s = zs_secure::SecureStream::connect(
///     std::net::TcpStream::connect(listener.local_addr()).unwrap(), &*layer.provider()).unwrap();
/// use std::io::{Read, Write};
/// s.write_all(b"ping").unwrap();
/// let mut got = [0u8; 4];
/// s.read_exact(&mut got).unwrap();
/// assert_eq!(&got, b"ping");
/// assert_eq!(layer.stats().handshakes, 1);
/// raw.shutdown();
/// ```
#[derive(Clone)]
pub struct SecureLayer {
    pub(crate) layer: Arc<Layer>,
}

impl std::fmt::Debug for SecureLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureLayer")
            .field("provider", &self.layer.provider.name())
            .field("cfg", &self.layer.cfg)
            .finish()
    }
}

impl SecureLayer {
    /// A layer running sessions of `provider` within the bounds of `cfg`.
    pub fn new(provider: Arc<dyn SecurityProvider>, cfg: SecureConfig) -> SecureLayer {
        SecureLayer {
            layer: Arc::new(Layer {
                provider,
                cfg,
                counters: Counters::default(),
                handshaking: AtomicUsize::new(0),
                per_ip: Default::default(),
            }),
        }
    }

    /// The security provider.
    pub fn provider(&self) -> Arc<dyn SecurityProvider> {
        self.layer.provider.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> &SecureConfig {
        &self.layer.cfg
    }

    /// The counters of this layer (all handlers it made).
    pub fn stats(&self) -> SecureStats {
        self.layer.counters.snapshot()
    }

    /// The handler for one accepted raw connection: it runs the server side of
    /// the handshake (bounded by [`SecureConfig::handshake_timeout`] and
    /// [`SecureConfig::max_handshakes`]), then calls `factory` **once keys
    /// exist** and gives the handler it makes a plaintext connection.
    pub fn server_handler(&self, factory: HandlerFactory) -> Box<dyn Handler> {
        Box::new(conn::SecureHandler::server(self.layer.clone(), factory))
    }

    /// The handler for one outgoing raw connection: it runs the client side of
    /// the handshake, which must complete within `timeout` of this call (else
    /// `inner` gets `on_connect_failed` with [`HandshakeError::TimedOut`](crate::HandshakeError)
    /// inside), then gives `inner` a plaintext connection.
    pub fn client_handler(&self, inner: Box<dyn Handler>, timeout: Duration) -> Box<dyn Handler> {
        Box::new(conn::SecureHandler::client(
            self.layer.clone(),
            inner,
            Instant::now() + timeout,
        ))
    }
}
