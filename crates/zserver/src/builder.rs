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
/// on Linux, else tokio) with `cfg`. For command lines and configuration files
/// that name a backend (`zs serve --backend`); in code, hand the builders a
/// backend value ([`ServerBuilder::backend`]) or leave them the default.
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

/// AES-256-GCM only (the builders' default suites).
fn default_suites() -> Vec<SuiteId> {
    vec![SuiteId::Aes256Gcm]
}

fn io_config_default() -> zs_io::Config {
    zs_io::Config::default()
}

/// The backend a builder was given, else the default one built with `io`.
fn pick_backend(given: Option<Arc<dyn Backend>>, io: &zs_io::Config) -> Result<Arc<dyn Backend>> {
    match given {
        Some(b) => Ok(b),
        None => Ok(Arc::from(backend_by_name("default", io.clone())?)),
    }
}

/// Refuses a security provider given together with settings it replaces
/// rather than silently ignoring them.
fn provider_alone(conflicts: &[(&str, bool)]) -> Result<()> {
    let set: Vec<&str> = conflicts
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
    if set.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "security(..) was set together with {}, which it replaces; give either the provider or those",
            set.join(" and ")
        )))
    }
}

/// Assembles a [`Server`]. Defaults: [`DEFAULT_ADDR`], the default backend (one
/// loop per core), a freshly generated identity (use [`ServerBuilder::identity`]
/// to keep one), AES-256-GCM only, [`Options::default`].
pub struct ServerBuilder {
    addr: SocketAddr,
    backend: Option<Arc<dyn Backend>>,
    io: zs_io::Config,
    security: Option<Arc<dyn SecurityProvider>>,
    identity: Option<ServerIdentity>,
    suites: Option<Vec<SuiteId>>,
    options: Options,
    registry: Registry,
    /// What [`ServerBuilder::with_app_state`] gave, put into the registry at
    /// `start` (so a later `registry(..)` cannot drop it silently).
    app_state: Option<PutState>,
    handshakes: zs_secure::compose::Handshakes,
}

/// Puts [`ServerBuilder::with_app_state`]'s value into the registry.
type PutState = Box<dyn FnOnce(&mut Registry) + Send>;

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
            io: io_config_default(),
            security: None,
            identity: None,
            suites: None,
            options: Options::default(),
            registry: Registry::new(),
            app_state: None,
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

    /// The transport backend (default: epoll on Linux, else tokio, built with
    /// [`ServerBuilder::io_config`]; by name: [`backend_by_name`]). Shared: the
    /// same backend (its loops) can carry this server and clients
    /// ([`ClientBuilder::backend`]); a boxed one converts with `.into()`.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// I/O settings: the default backend's, and the secure layer's send bound.
    pub fn io_config(mut self, cfg: zs_io::Config) -> Self {
        self.io = cfg;
        self
    }

    /// A security provider, instead of the one made from
    /// [`ServerBuilder::identity`] and [`ServerBuilder::suites`] (`start`
    /// refuses it together with either).
    pub fn security(mut self, provider: Arc<dyn SecurityProvider>) -> Self {
        self.security = Some(provider);
        self
    }

    /// The server's Ed25519 identity (see [`load_or_create_identity`]).
    pub fn identity(mut self, identity: ServerIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Allowed suites, in preference order (default AES-256-GCM only).
    pub fn suites(mut self, suites: Vec<SuiteId>) -> Self {
        self.suites = Some(suites);
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

    /// Server-wide state for every handler ([`Registry::with_app_state`];
    /// handlers read it with `peer.app_state::<T>()`).
    /// It is put into the registry at `start`; a registry given with
    /// [`ServerBuilder::registry`] that holds state of its own is refused
    /// then, not overridden.
    pub fn with_app_state<T: std::any::Any + Send + Sync>(mut self, state: T) -> Self {
        self.app_state = Some(Box::new(move |r: &mut Registry| {
            r.with_app_state(state);
        }));
        self
    }

    /// StableIO: accept sessions that survive reconnects (the default),
    /// keeping a disconnected one for `offline_timeout` before dropping it
    /// (see [`Options::stable_offline_timeout`] and the other `stable_*`
    /// limits). The client's side is [`ClientBuilder::stable_session`].
    pub fn accept_stable_sessions(mut self, offline_timeout: Duration) -> Self {
        self.options.stable = true;
        self.options.stable_offline_timeout = offline_timeout;
        self
    }

    /// StableIO off: every session ends with its connection.
    pub fn refuse_stable_sessions(mut self) -> Self {
        self.options.stable = false;
        self
    }

    /// Starts the server. Conflicting settings (a security provider and an
    /// identity or suites) are an [`Error::Config`].
    pub fn start(self) -> Result<RunningServer> {
        if self.security.is_some() {
            provider_alone(&[
                ("identity(..)", self.identity.is_some()),
                ("suites(..)", self.suites.is_some()),
            ])?;
        }
        let backend = pick_backend(self.backend, &self.io)?;
        let (provider, fingerprint): (Arc<dyn SecurityProvider>, Option<Fingerprint>) =
            match self.security {
                Some(p) => (p, None),
                None => {
                    let suites = self.suites.unwrap_or_else(default_suites);
                    if suites.is_empty() {
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
                        allowed: suites,
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
        let mut registry = self.registry;
        if let Some(put) = self.app_state {
            if registry.app_state_any().is_some() {
                return Err(Error::Config(
                    "with_app_state(..) and a registry(..) that holds app state of its own: give the state once"
                        .into(),
                ));
            }
            put(&mut registry);
        }
        let server = Server::start(secure, registry, self.options, self.addr)?;
        Ok(RunningServer {
            server,
            fingerprint,
        })
    }
}

/// A started server and the fingerprint clients pin (when the builder made the
/// security provider). It does not deref to [`Server`]: the common calls are
/// its own methods, the rest go through [`RunningServer::server`]. Dropping it
/// shuts the server down.
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

    /// The address the server listens on (clients connect here).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops accepting and closes every connection (see [`Server::shutdown`]).
    pub fn shutdown(&self) {
        self.server.shutdown()
    }

    /// The zs-core server, for everything else (peers, broadcast, stats).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The server itself.
    pub fn into_server(self) -> Server {
        self.server
    }
}

/// Assembles a [`Client`]. Give the server's fingerprint (or a security
/// provider); defaults: the default backend with one loop, AES-256-GCM offered,
/// [`Options::client`].
pub struct ClientBuilder {
    addr: SocketAddr,
    backend: Option<Arc<dyn Backend>>,
    io: zs_io::Config,
    security: Option<Arc<dyn SecurityProvider>>,
    fingerprint: Option<Fingerprint>,
    suites: Option<Vec<SuiteId>>,
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
            io: zs_io::Config {
                loops: 1,
                ..io_config_default()
            },
            security: None,
            fingerprint: None,
            suites: None,
            options: Options::client(),
            registry: Registry::new(),
            stable: false,
        }
    }

    /// StableIO: open a session that survives its connection dying. The
    /// client reconnects by itself with `reconnect`'s backoff and resumes;
    /// nothing is lost or duplicated (see [`Client::connect_stable`]). The
    /// server must accept them ([`ServerBuilder::accept_stable_sessions`]).
    pub fn stable_session(mut self, reconnect: Reconnect) -> Self {
        self.stable = true;
        self.options.reconnect = reconnect;
        self
    }

    /// The transport backend (default: the default one with one loop); may
    /// be the one a server runs on (see [`ServerBuilder::backend`]).
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// I/O settings: the default backend's, and the secure layer's send bound.
    pub fn io_config(mut self, cfg: zs_io::Config) -> Self {
        self.io = cfg;
        self
    }

    /// Pin the server's identity by fingerprint.
    pub fn fingerprint(mut self, fp: Fingerprint) -> Self {
        self.fingerprint = Some(fp);
        self
    }

    /// A security provider, instead of the one made from
    /// [`ClientBuilder::fingerprint`] and [`ClientBuilder::suites`]
    /// (`connect` refuses it together with either).
    pub fn security(mut self, provider: Arc<dyn SecurityProvider>) -> Self {
        self.security = Some(provider);
        self
    }

    /// Offered suites, in preference order (default AES-256-GCM only).
    pub fn suites(mut self, suites: Vec<SuiteId>) -> Self {
        self.suites = Some(suites);
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

    /// Connects and completes the handshake (blocking). Conflicting settings
    /// (a security provider and a fingerprint or suites) are an
    /// [`Error::Config`].
    pub fn connect(self) -> Result<Client> {
        if self.security.is_some() {
            provider_alone(&[
                ("fingerprint(..)", self.fingerprint.is_some()),
                ("suites(..)", self.suites.is_some()),
            ])?;
        }
        let provider: Arc<dyn SecurityProvider> = match (self.security, self.fingerprint) {
            (Some(p), _) => p,
            (None, Some(fp)) => {
                let mut c = ClientConfig::pinned(fp);
                c.suites = self.suites.unwrap_or_else(default_suites);
                Arc::new(ZsSecurity::new(Some(Arc::new(c)), None))
            }
            (None, None) => {
                return Err(Error::Config(
                    "give the server's fingerprint or a security provider".into(),
                ))
            }
        };
        let backend = pick_backend(self.backend, &self.io)?;
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
            server.server().backend_name().starts_with("secure("),
            "{}",
            server.server().backend_name()
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
                .backend(backend_by_name(name, one_loop()).unwrap().into())
                .fingerprint(server.fingerprint().unwrap())
                .connect()
                .unwrap();
            assert_eq!(c.call("echo", name).wait().unwrap(), name);
        }
        assert!(backend_by_name("carrier-pigeon", zs_io::Config::default()).is_err());
    }

    fn one_loop() -> zs_io::Config {
        zs_io::Config {
            loops: 1,
            ..Default::default()
        }
    }

    fn any_addr() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// The error of a refused configuration, which must name both settings.
    fn config_error(r: Result<impl std::fmt::Debug>, names: &[&str]) {
        match r {
            Err(Error::Config(msg)) => {
                for n in names {
                    assert!(msg.contains(n), "{msg:?} does not name {n}");
                }
            }
            other => panic!("expected a configuration error naming {names:?}, got {other:?}"),
        }
    }

    #[test]
    fn conflicting_settings_are_refused_not_overridden() {
        let id = || {
            ServerIdentity::generate(&ring::rand::SystemRandom::new())
                .unwrap()
                .0
        };
        let server_provider = || -> Arc<dyn SecurityProvider> {
            let cfg = ServerConfig::with_identity(Arc::new(id()));
            Arc::new(ZsSecurity::new(None, Some(Arc::new(cfg))))
        };
        let server = || ServerBuilder::new().addr(any_addr()).io_config(one_loop());
        let backend =
            || -> Arc<dyn Backend> { backend_by_name("default", one_loop()).unwrap().into() };

        // Server: a provider and what it replaces.
        config_error(
            server().security(server_provider()).identity(id()).start(),
            &["security(..)", "identity(..)"],
        );
        config_error(
            server()
                .security(server_provider())
                .suites(vec![SuiteId::Aes256Gcm])
                .start(),
            &["security(..)", "suites(..)"],
        );
        // Each alone is fine, and a custom provider serves.
        let running = server().security(server_provider()).start().unwrap();
        assert_eq!(running.fingerprint(), None);
        let identity = id();
        let fp = identity.fingerprint();
        let by_parts = server()
            .backend(backend())
            .identity(identity)
            .suites(vec![SuiteId::Aes256Gcm])
            .commands(|r| {
                r.console("echo", |_, t| Ok(t.to_owned()));
            })
            .start()
            .unwrap();
        assert_eq!(by_parts.fingerprint(), Some(fp));

        // Client: the same conflicts.
        let client_provider = || -> Arc<dyn SecurityProvider> {
            Arc::new(ZsSecurity::new(
                Some(Arc::new(ClientConfig::pinned(fp))),
                None,
            ))
        };
        let client = || ClientBuilder::new(by_parts.local_addr());
        config_error(
            client()
                .security(client_provider())
                .fingerprint(fp)
                .connect(),
            &["security(..)", "fingerprint(..)"],
        );
        config_error(
            client()
                .security(client_provider())
                .suites(vec![SuiteId::Aes256Gcm])
                .connect(),
            &["security(..)", "suites(..)"],
        );
        // The provider alone connects.
        let c = client().security(client_provider()).connect().unwrap();
        assert_eq!(c.call("echo", "alone").wait().unwrap(), "alone");
    }

    /// One backend (one epoll loop) carries a server and a client of it.
    #[cfg(all(feature = "io-epoll", target_os = "linux"))]
    #[test]
    fn one_backend_serves_a_server_and_a_client() {
        let shared: Arc<dyn Backend> =
            Arc::new(zs_io_epoll::EpollBackend::new(one_loop()).unwrap());
        let server = ServerBuilder::new()
            .addr(any_addr())
            .io_config(one_loop())
            .backend(shared.clone())
            .commands(|r| {
                r.console("echo", |_, t| Ok(t.to_owned()));
            })
            .start()
            .unwrap();
        let client = ClientBuilder::new(server.local_addr())
            .backend(shared.clone())
            .fingerprint(server.fingerprint().unwrap())
            .connect()
            .unwrap();
        assert_eq!(client.call("echo", "shared").wait().unwrap(), "shared");
        assert_eq!(server.server().connection_count(), 1);
        // Both ends hold the one backend (through their secure layers).
        assert!(
            Arc::strong_count(&shared) >= 3,
            "{}",
            Arc::strong_count(&shared)
        );
        drop(client);
        server.shutdown();
    }

    /// `accept_stable_sessions` / `refuse_stable_sessions` decide whether a
    /// client's `stable_session` is kept as one.
    #[test]
    fn stable_sessions_are_accepted_or_refused() {
        for accept in [true, false] {
            let b = ServerBuilder::new()
                .addr(any_addr())
                .io_config(one_loop())
                .commands(|r| {
                    r.console("echo", |_, t| Ok(t.to_owned()));
                });
            let b = if accept {
                b.accept_stable_sessions(Duration::from_secs(7))
            } else {
                b.refuse_stable_sessions()
            };
            assert_eq!(b.options.stable, accept);
            if accept {
                assert_eq!(b.options.stable_offline_timeout, Duration::from_secs(7));
            }
            let server = b.start().unwrap();
            let client = ClientBuilder::new(server.local_addr())
                .fingerprint(server.fingerprint().unwrap())
                .stable_session(Reconnect::default())
                .connect();
            match client {
                Ok(c) => {
                    assert_eq!(c.call("echo", "s").wait().unwrap(), "s");
                    let expected = usize::from(accept);
                    assert_eq!(
                        server.server().stable_sessions(),
                        expected,
                        "accept {accept}"
                    );
                }
                Err(e) => assert!(!accept, "refused with stable sessions accepted: {e}"),
            }
        }
    }

    #[test]
    fn with_app_state_reaches_handlers() {
        let server = ServerBuilder::new()
            .addr("127.0.0.1:0".parse().unwrap())
            .io_config(zs_io::Config {
                loops: 1,
                ..Default::default()
            })
            .with_app_state(String::from("shared"))
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

        // A registry given after the state keeps it (it is put in at start).
        let mut r = Registry::new();
        r.console("state", |peer, _| {
            Ok(peer.app_state::<String>().ok_or("none")?.to_string())
        });
        let later = ServerBuilder::new()
            .addr("127.0.0.1:0".parse().unwrap())
            .io_config(one_loop())
            .with_app_state(String::from("kept"))
            .registry(r)
            .start()
            .unwrap();
        let c = ClientBuilder::new(later.local_addr())
            .fingerprint(later.fingerprint().unwrap())
            .connect()
            .unwrap();
        assert_eq!(c.call("state", "").wait().unwrap(), "kept");

        // State given twice (the registry's own and the builder's) is refused.
        let mut own = Registry::new();
        own.with_app_state(1u32);
        config_error(
            ServerBuilder::new()
                .addr("127.0.0.1:0".parse().unwrap())
                .io_config(one_loop())
                .registry(own)
                .with_app_state(2u32)
                .start(),
            &["with_app_state(..)", "registry(..)"],
        );
    }
}
