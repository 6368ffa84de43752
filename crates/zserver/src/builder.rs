//! Builders that assemble a server or a client from trait objects with sensible
//! defaults: the epoll backend on Linux (tokio elsewhere), our X25519 + AEAD
//! sessions with AES-256-GCM, a pinned Ed25519 server identity. The security
//! is a transport layer: the builders always wrap the backend in
//! `zs_secure::SecureBackend` and start zs-core on its plaintext connections
//! (`Server::start` / `Client::connect`); the handshake's deadline and caps are
//! the layer's ([`ServerBuilder::handshake_timeout`],
//! [`ServerBuilder::max_handshakes`]).

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zs_core::{Client, Error, Options, Reconnect, Registry, Result, Server};
use zs_crypto::session::{Selection, SuitePolicy};
use zs_crypto::{
    ClientConfig, Fingerprint, SecurityProvider, ServerConfig, ServerIdentity, SuiteId, ZsSecurity,
};
use zs_io::Backend;

/// The default server address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7777";

/// Backends this build can construct by name (see [`backend_by_name`]).
pub fn backend_names() -> Vec<&'static str> {
    [
        cfg!(all(feature = "io-epoll", target_os = "linux")).then_some("epoll"),
        cfg!(feature = "io-tokio").then_some("tokio"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Makes the backend called `name` (`"epoll"`, `"tokio"`, or `"default"`: epoll
/// on Linux, else tokio) with `cfg`.
pub fn backend_by_name(name: &str, cfg: zs_io::Config) -> Result<Box<dyn Backend>> {
    let name = if name == "default" {
        backend_names().first().copied().ok_or_else(|| {
            Error::Config("no backend feature enabled (io-epoll, io-tokio)".into())
        })?
    } else {
        name
    };
    let _ = &cfg;
    match name {
        #[cfg(all(feature = "io-epoll", target_os = "linux"))]
        "epoll" => Ok(Box::new(zs_io_epoll::EpollBackend::new(cfg)?)),
        #[cfg(feature = "io-tokio")]
        "tokio" => Ok(Box::new(zs_io_tokio::TokioBackend::new(cfg)?)),
        other => Err(Error::Config(format!(
            "unknown or disabled backend {other:?}; available: {:?}",
            backend_names()
        ))),
    }
}

/// Reads the Ed25519 identity seed kept in `path` (64 hex digits), or generates
/// one and writes it there (mode 0600 on Unix). Returns the identity and whether
/// it was created.
pub fn load_or_create_identity(path: &Path) -> Result<(ServerIdentity, bool)> {
    match fs::read_to_string(path) {
        Ok(text) => Ok((read_identity(&text, path)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let rng = ring::rand::SystemRandom::new();
            let (id, seed) = ServerIdentity::generate(&rng).map_err(crypto)?;
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(|e| {
                Error::Config(format!("cannot create key file {}: {e}", path.display()))
            })?;
            writeln!(f, "{}", zs_crypto::hash::to_hex(&seed)).map_err(|e| {
                Error::Config(format!("cannot write key file {}: {e}", path.display()))
            })?;
            Ok((id, true))
        }
        Err(e) => Err(Error::Config(format!(
            "cannot read key file {}: {e}",
            path.display()
        ))),
    }
}

/// Reads an existing identity key file (see [`load_or_create_identity`]).
pub fn load_identity(path: &Path) -> Result<ServerIdentity> {
    let text = fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read key file {}: {e}", path.display())))?;
    read_identity(&text, path)
}

fn read_identity(text: &str, path: &Path) -> Result<ServerIdentity> {
    let bad = || {
        Error::Config(format!(
            "{}: expected 64 hex digits (an Ed25519 seed)",
            path.display()
        ))
    };
    let bytes = zs_crypto::hash::from_hex(text.trim()).ok_or_else(bad)?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    ServerIdentity::from_seed(&seed).map_err(crypto)
}

/// A zs-crypto error as zs-core's (zs-core knows no cryptography since the
/// security became a transport layer).
fn crypto(e: zs_crypto::Error) -> Error {
    Error::Config(format!("security: {e}"))
}

fn io_config_default() -> zs_io::Config {
    zs_io::Config::default()
}

/// Assembles a [`Server`]. Defaults: [`DEFAULT_ADDR`], the default backend (one
/// loop per core), a freshly generated identity (use [`ServerBuilder::identity`]
/// to keep one), AES-256-GCM only, [`Options::default`].
pub struct ServerBuilder {
    addr: SocketAddr,
    backend: Option<Box<dyn Backend>>,
    backend_name: String,
    io: zs_io::Config,
    security: Option<Arc<dyn SecurityProvider>>,
    identity: Option<ServerIdentity>,
    suites: Vec<SuiteId>,
    options: Options,
    registry: Registry,
    handshakes: zs_secure::compose::Handshakes,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder::new()
    }
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerBuilder({})", self.addr)
    }
}

impl ServerBuilder {
    /// A builder with the defaults.
    pub fn new() -> ServerBuilder {
        ServerBuilder {
            addr: DEFAULT_ADDR.parse().expect("valid default address"),
            backend: None,
            backend_name: "default".into(),
            io: io_config_default(),
            security: None,
            identity: None,
            suites: vec![SuiteId::Aes256Gcm],
            options: Options::default(),
            registry: Registry::new(),
            handshakes: zs_secure::compose::Handshakes::default(),
        }
    }

    /// A connection whose secure handshake has not completed by then is
    /// dropped by the layer (handshake floods, slow-loris;
    /// `zs_secure::SecureConfig::handshake_timeout`). Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshakes.timeout = timeout;
        self
    }

    /// Most accepted connections in their handshake at once, in all and from
    /// one source address (each costs a key agreement and a signature); one
    /// more is reset at accept, before a key is made
    /// (`zs_secure::SecureConfig::max_handshakes`,
    /// `SecureBackend::with_max_handshakes_per_ip`). Default 1,000 and 64.
    pub fn max_handshakes(mut self, total: usize, per_ip: usize) -> Self {
        self.handshakes.max = total;
        self.handshakes.max_per_ip = per_ip;
        self
    }

    /// Only the per-address part of [`ServerBuilder::max_handshakes`]
    /// (default 64), for configurations that set just that key (`zs serve`'s
    /// `max_handshakes_per_ip`).
    pub fn max_handshakes_per_ip(mut self, per_ip: usize) -> Self {
        self.handshakes.max_per_ip = per_ip;
        self
    }

    /// Listen address.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The transport backend (overrides [`ServerBuilder::backend_name`]).
    pub fn backend(mut self, backend: Box<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The backend by name (see [`backend_by_name`]), built with the I/O config.
    pub fn backend_name(mut self, name: &str) -> Self {
        self.backend_name = name.to_owned();
        self
    }

    /// I/O settings for a backend built by name.
    pub fn io_config(mut self, cfg: zs_io::Config) -> Self {
        self.io = cfg;
        self
    }

    /// A security provider (overrides identity and suites).
    pub fn security(mut self, provider: Arc<dyn SecurityProvider>) -> Self {
        self.security = Some(provider);
        self
    }

    /// The server's Ed25519 identity (see [`load_or_create_identity`]).
    pub fn identity(mut self, identity: ServerIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Allowed suites, in preference order.
    pub fn suites(mut self, suites: Vec<SuiteId>) -> Self {
        self.suites = suites;
        self
    }

    /// Endpoint options.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The command registry.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Registers commands with a closure.
    pub fn commands(mut self, f: impl FnOnce(&mut Registry)) -> Self {
        f(&mut self.registry);
        self
    }

    /// Server-wide state for every handler ([`Registry::with_state`];
    /// handlers read it with `peer.app_state::<T>()`).
    pub fn with_state<T: std::any::Any + Send + Sync>(mut self, state: T) -> Self {
        self.registry.with_state(state);
        self
    }

    /// StableIO: accept sessions that survive reconnects (default on), keeping
    /// a disconnected one for `offline_timeout` before dropping it (see
    /// [`Options::stable_offline_timeout`] and the other `stable_*` limits).
    pub fn stable(mut self, accept: bool, offline_timeout: Duration) -> Self {
        self.options.stable = accept;
        self.options.stable_offline_timeout = offline_timeout;
        self
    }

    /// Starts the server.
    pub fn start(self) -> Result<RunningServer> {
        let backend: Arc<dyn Backend> = match self.backend {
            Some(b) => Arc::from(b),
            None => Arc::from(backend_by_name(&self.backend_name, self.io.clone())?),
        };
        let (provider, fingerprint): (Arc<dyn SecurityProvider>, Option<Fingerprint>) =
            match self.security {
                Some(p) => (p, None),
                None => {
                    if self.suites.is_empty() {
                        return Err(Error::Config("no cipher suite allowed".into()));
                    }
                    let identity = match self.identity {
                        Some(i) => i,
                        None => {
                            ServerIdentity::generate(&ring::rand::SystemRandom::new())
                                .map_err(crypto)?
                                .0
                        }
                    };
                    let fp = identity.fingerprint();
                    let mut cfg = ServerConfig::with_identity(Arc::new(identity));
                    cfg.policy = SuitePolicy {
                        allowed: self.suites,
                        selection: Selection::ServerPreference,
                    };
                    (
                        Arc::new(ZsSecurity::new(None, Some(Arc::new(cfg)))),
                        Some(fp),
                    )
                }
            };
        // Security as a transport layer (issue 13): the handshake and the
        // records run in `SecureBackend`, zs-core sees plaintext connections.
        let secure = zs_secure::compose::secure_with(backend, provider, &self.io, self.handshakes);
        let server = Server::start(secure, self.registry, self.options, self.addr)?;
        Ok(RunningServer {
            server,
            fingerprint,
        })
    }
}

/// A started server and the fingerprint clients pin (when the builder made the
/// security provider). Derefs to [`Server`]; dropping it shuts the server down.
#[derive(Debug)]
pub struct RunningServer {
    server: Server,
    fingerprint: Option<Fingerprint>,
}

impl RunningServer {
    /// The identity's fingerprint (`None` with a custom security provider).
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The server itself.
    pub fn into_server(self) -> Server {
        self.server
    }
}

impl std::ops::Deref for RunningServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

/// Assembles a [`Client`]. Give the server's fingerprint (or a security
/// provider); defaults: the default backend with one loop, AES-256-GCM offered,
/// [`Options::client`].
pub struct ClientBuilder {
    addr: SocketAddr,
    backend: Option<Box<dyn Backend>>,
    backend_name: String,
    io: zs_io::Config,
    security: Option<Arc<dyn SecurityProvider>>,
    fingerprint: Option<Fingerprint>,
    suites: Vec<SuiteId>,
    options: Options,
    registry: Registry,
    stable: bool,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientBuilder({})", self.addr)
    }
}

impl ClientBuilder {
    /// A builder for a client of the server at `addr`.
    pub fn new(addr: SocketAddr) -> ClientBuilder {
        ClientBuilder {
            addr,
            backend: None,
            backend_name: "default".into(),
            io: zs_io::Config {
                loops: 1,
                ..io_config_default()
            },
            security: None,
            fingerprint: None,
            suites: vec![SuiteId::Aes256Gcm],
            options: Options::client(),
            registry: Registry::new(),
            stable: false,
        }
    }

    /// StableIO: the session survives its connection dying. The client
    /// reconnects by itself with `reconnect`'s backoff and resumes; nothing is
    /// lost or duplicated (see [`Client::connect_stable`]).
    pub fn stable(mut self, reconnect: Reconnect) -> Self {
        self.stable = true;
        self.options.reconnect = reconnect;
        self
    }

    /// The transport backend.
    pub fn backend(mut self, backend: Box<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The backend by name (see [`backend_by_name`]).
    pub fn backend_name(mut self, name: &str) -> Self {
        self.backend_name = name.to_owned();
        self
    }

    /// I/O settings for a backend built by name.
    pub fn io_config(mut self, cfg: zs_io::Config) -> Self {
        self.io = cfg;
        self
    }

    /// Pin the server's identity by fingerprint.
    pub fn fingerprint(mut self, fp: Fingerprint) -> Self {
        self.fingerprint = Some(fp);
        self
    }

    /// A security provider (overrides fingerprint and suites).
    pub fn security(mut self, provider: Arc<dyn SecurityProvider>) -> Self {
        self.security = Some(provider);
        self
    }

    /// Offered suites, in preference order.
    pub fn suites(mut self, suites: Vec<SuiteId>) -> Self {
        self.suites = suites;
        self
    }

    /// Endpoint options.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Handlers for what the server pushes.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// The registry being built (for feature modules adding handlers).
    #[allow(dead_code)]
    pub(crate) fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Connects and completes the handshake (blocking).
    pub fn connect(self) -> Result<Client> {
        let provider: Arc<dyn SecurityProvider> = match (self.security, self.fingerprint) {
            (Some(p), _) => p,
            (None, Some(fp)) => {
                let mut c = ClientConfig::pinned(fp);
                c.suites = self.suites;
                Arc::new(ZsSecurity::new(Some(Arc::new(c)), None))
            }
            (None, None) => {
                return Err(Error::Config(
                    "give the server's fingerprint or a security provider".into(),
                ))
            }
        };
        let backend: Arc<dyn Backend> = match self.backend {
            Some(b) => Arc::from(b),
            None => Arc::from(backend_by_name(&self.backend_name, self.io.clone())?),
        };
        // The send queue bound is the raw backend's (`io`), so back-pressure
        // needs no polling; the connect timeout covers the handshake.
        let secure: Arc<dyn Backend> = Arc::new(zs_secure::SecureBackend::with_config(
            backend,
            provider,
            zs_secure::SecureConfig::for_io(&self.io),
        ));
        if self.stable {
            Client::connect_stable(secure, self.registry, self.options, self.addr)
        } else {
            Client::connect(secure, self.registry, self.options, self.addr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("id.key");
        let (a, created) = load_or_create_identity(&p).unwrap();
        assert!(created);
        let (b, created) = load_or_create_identity(&p).unwrap();
        assert!(!created);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(load_identity(&p).unwrap().fingerprint(), a.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
        }
        fs::write(&p, "not hex").unwrap();
        assert!(load_identity(&p).is_err());
    }

    #[test]
    fn wrong_fingerprint_is_refused_and_backends_by_name() {
        let server = ServerBuilder::new()
            .addr("127.0.0.1:0".parse().unwrap())
            .io_config(zs_io::Config {
                loops: 1,
                ..Default::default()
            })
            .commands(|r| {
                r.console("echo", |_, t| Ok(t.to_owned()));
            })
            .start()
            .unwrap();
        // The security runs as a transport under zs-core.
        assert!(
            server.backend_name().starts_with("secure("),
            "{}",
            server.backend_name()
        );
        let wrong = Fingerprint([9; 32]);
        let err = ClientBuilder::new(server.local_addr())
            .fingerprint(wrong)
            .connect()
            .unwrap_err();
        // The layer refuses the server's key during the handshake: a typed
        // handshake failure, not a lost connection.
        assert!(
            matches!(
                &err,
                Error::Handshake {
                    kind: zs_core::HandshakeKind::Refused,
                    ..
                }
            ),
            "{err}"
        );
        for name in backend_names() {
            let c = ClientBuilder::new(server.local_addr())
                .backend_name(name)
                .fingerprint(server.fingerprint().unwrap())
                .connect()
                .unwrap();
            assert_eq!(c.call("echo", name).wait().unwrap(), name);
        }
        assert!(backend_by_name("carrier-pigeon", zs_io::Config::default()).is_err());
    }

    #[test]
    fn with_state_reaches_handlers() {
        let server = ServerBuilder::new()
            .addr("127.0.0.1:0".parse().unwrap())
            .io_config(zs_io::Config {
                loops: 1,
                ..Default::default()
            })
            .with_state(String::from("shared"))
            .commands(|r| {
                r.console("state", |peer, _| {
                    Ok(peer.app_state::<String>().ok_or("none")?.to_string())
                });
            })
            .start()
            .unwrap();
        let c = ClientBuilder::new(server.local_addr())
            .fingerprint(server.fingerprint().unwrap())
            .connect()
            .unwrap();
        assert_eq!(c.call("state", "").wait().unwrap(), "shared");
    }
}
