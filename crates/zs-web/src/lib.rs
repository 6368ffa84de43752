//! # zs-web: the web face of a zserver
//!
//! Why it exists: InIOCP served HTTP, WebSocket and JSON from the same server
//! as its binary protocol, so browsers and scripts reached the same business
//! logic. This crate is that for zserver: an opt-in HTTP listener
//! ([`Gateway`]) next to a running zs-core `Server`, with
//!
//! - **`/ws`**: a WebSocket (RFC 6455, through axum/tungstenite) whose JSON
//!   text messages map one to one onto the server's `Registry`: console and
//!   stream calls with request ids and many in flight, direct commands, server
//!   pushes and broadcasts, typed errors; binary messages carry DataFrames
//!   (docs/PROTOCOL.md Part 8 gives every byte);
//! - **`/metrics`**: the Prometheus text format (`prometheus-client`): the
//!   server's `StatsSnapshot` counters, per-command latency percentiles, and
//!   the gateway's own counters and per-command call-duration histograms;
//! - **`/`**: a live dashboard (vendored uPlot, no CDN) fed by **`/api/stats`**;
//! - **`/zs.js`**: a small ES module client (`call`, `callStream`, `send`,
//!   `on(push)`, reconnect with backoff, typed errors).
//!
//! **How a WebSocket reaches the handlers.** Each WebSocket session is bridged
//! to its own zs-core [`Client`](zs_core::Client) session against the server
//! (the [`Upstream`]: its address and a backend: a security layer pinning its
//! identity over a zs-io backend). The server therefore runs *the same handlers with the same
//! per-connection user state and the same limits* for a browser as for a
//! binary client, because to the server it *is* one more client: one
//! WebSocket = one `Peer`. Server pushes to that peer (direct commands named in
//! [`Config::pushes`], and broadcasts) come back to the browser as push
//! messages. zs-core is used through its public API only; see
//! docs/ARCHITECTURE.md ("zs-web") for the alternatives weighed.
//!
//! Everything a client can make us spend is bounded by [`Config`]: message
//! size, requests in flight per WebSocket (reading pauses at the cap), the
//! send queue (a client that does not read is disconnected), connections per
//! process and per IP, concurrent server handshakes, HTTP header time.
//!
//! ```
//! use std::sync::Arc;
//! use zs_core::{Options, Registry, Server};
//! use zs_crypto::{ServerConfig, ServerIdentity, ZsSecurity};
//!
//! // A zs-core server with one command...
//! let (identity, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
//! let fingerprint = identity.fingerprint();
//! let provider = Arc::new(ZsSecurity::new(None, Some(Arc::new(ServerConfig::with_identity(Arc::new(identity))))));
//! let raw = Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, ..Default::default() }).unwrap());
//! let backend = zs_secure::compose::secure(raw, provider); // security as a transport layer
//! let mut commands = Registry::new();
//! commands.console("echo", |_peer, text| Ok(text.to_owned()));
//! let server = Arc::new(Server::start(backend, commands, Options::default(),
//!     "127.0.0.1:0".parse().unwrap()).unwrap());
//!
//! // ...and its web face on another port.
//! let s = server.clone();
//! let upstream = zs_web::Upstream::pinned(server.local_addr(), fingerprint)
//!     .unwrap()
//!     .with_stats(Arc::new(move || Some(s.stats())));
//! let config = zs_web::Config { addr: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
//! let gateway = zs_web::Gateway::start(config, upstream).unwrap();
//! println!("dashboard at http://{}/", gateway.local_addr());
//! // A browser now runs: const zs = await ZsClient.connect("ws://.../ws");
//! //                     await zs.call("echo", "hi")
//! gateway.shutdown();
//! ```
#![forbid(unsafe_code)]

mod assets;
mod gateway;
pub mod json;
pub mod metrics;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zs_core::{LocalConn, LocalSink, Server, StatsSnapshot};
use zs_crypto::{ClientConfig, Fingerprint, SecurityProvider, ZsSecurity};
use zs_io::Backend;

pub use assets::{DASHBOARD_HTML, DASHBOARD_JS, UPLOT_JS, ZS_JS};
pub use json::{WsError, WsRequest};
pub use metrics::{WebSnapshot, WebStats};

/// Reads the server's statistics (for `/metrics` and the dashboard); `None`
/// once the server is gone.
pub type StatsFn = Arc<dyn Fn() -> Option<StatsSnapshot> + Send + Sync>;

/// Errors starting a gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding the listener or starting the runtime failed.
    #[error("zs-web: {0}")]
    Io(#[from] std::io::Error),
    /// The bridge backend could not be created.
    #[error("zs-web: backend: {0}")]
    Backend(#[from] zs_io::Error),
    /// The configuration cannot work.
    #[error("zs-web: configuration: {0}")]
    Config(String),
}

/// Gateway settings. Every resource a client can make the gateway spend has a
/// bound here.
#[derive(Clone)]
pub struct Config {
    /// Listen address (loopback by default).
    pub addr: SocketAddr,
    /// Largest WebSocket message (and frame) accepted, in bytes; a larger one
    /// closes the connection with 1009 before it is buffered. Default 64 KiB.
    pub max_message: usize,
    /// Requests of one WebSocket sent to the server and not yet answered; at
    /// the cap the gateway stops reading that socket. Default 64.
    pub max_in_flight: usize,
    /// Messages queued for one client (answers, pushes, errors). A push that
    /// finds it full, or a write that stalls past `write_timeout`, disconnects
    /// the client (it does not read). Default 256.
    pub send_queue: usize,
    /// Most HTTP connections open at once (refused at accept beyond). Default 1024.
    pub max_connections: usize,
    /// Most HTTP connections open at once from one IP address. Default 64.
    pub max_connections_per_ip: usize,
    /// Server sessions being opened at once (each costs a handshake; the
    /// server caps handshakes per IP, and every bridged session comes from
    /// the gateway's address). Default 16.
    pub max_bridging: usize,
    /// A write to a client that takes longer closes it. Default 10 s.
    pub write_timeout: Duration,
    /// Time allowed for a request's headers (and a TLS handshake). Default 10 s.
    pub header_timeout: Duration,
    /// Names of the server's direct commands forwarded to clients as pushes
    /// (`{"push":name,...}`): the server calls `peer.send_direct_console(name, ..)`
    /// or broadcasts it. Default `["push"]`.
    pub pushes: Vec<String>,
    /// Names of the server's signals (`peer.send_signal(name, code)`)
    /// forwarded to clients as `{"signal":name,"code":N}`. Default
    /// `["user.kicked"]` (the accounts service kicking an older login).
    pub signals: Vec<String>,
    /// Serve HTTPS/WSS with this rustls configuration. Default none (plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// DataFrame decoding limits for request data.
    pub limits: zs_wire::Limits,
    /// Gateway runtime threads. Default 2.
    pub threads: usize,
    /// Send a WebSocket ping to a client from which nothing arrived for this
    /// long (keeps NAT and proxy mappings alive, and probes the client).
    /// `None`: no pings and no dead-peer detection. Default 20 s.
    pub ping_interval: Option<Duration>,
    /// A client from which nothing (not even the pong) arrived for
    /// `ping_interval + pong_timeout` is dead: its session ends (counted in
    /// `dead_peers`). Default 20 s.
    pub pong_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_message: 64 * 1024,
            max_in_flight: 64,
            send_queue: 256,
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_bridging: 16,
            write_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            pushes: vec!["push".into()],
            signals: vec!["user.kicked".into()],
            tls: None,
            limits: zs_wire::Limits::default(),
            threads: 2,
            ping_interval: Some(Duration::from_secs(20)),
            pong_timeout: Duration::from_secs(20),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("max_message", &self.max_message)
            .field("max_in_flight", &self.max_in_flight)
            .field("send_queue", &self.send_queue)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("tls", &self.tls.is_some())
            .field("pushes", &self.pushes)
            .field("signals", &self.signals)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .finish_non_exhaustive()
    }
}

/// One extra table on the dashboard (and in `/api/stats` under `panels`):
/// what other parts of the process want watched, such as a zs-xnat relay's
/// mappings or a DB service's running queries (the facade builds those).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Panel {
    /// Card title.
    pub title: String,
    /// Column headers.
    pub columns: Vec<String>,
    /// Rows, one cell per column.
    pub rows: Vec<Vec<String>>,
}

/// Most panels shown, rows per panel and bytes per cell (beyond: cut).
pub const PANEL_LIMITS: (usize, usize, usize) = (16, 200, 200);

/// Reads the extra dashboard panels (at each `/api/stats` request).
pub type PanelsFn = Arc<dyn Fn() -> Vec<Panel> + Send + Sync>;

/// Opens an in-process connection to the server for one WebSocket (see
/// [`Route::InProcess`]): `zs_core::Server::connect_local` or a wrapper of it.
pub type ConnectFn =
    Arc<dyn Fn(Option<SocketAddr>, Arc<dyn LocalSink>) -> zs_core::Result<LocalConn> + Send + Sync>;

/// The server the gateway serves WebSocket sessions from, and where its
/// statistics come from.
#[derive(Clone)]
pub struct Upstream {
    /// How a WebSocket session reaches the server's handlers.
    pub route: Route,
    /// The server's statistics, for `/metrics` and the dashboard.
    pub stats: Option<StatsFn>,
    /// Extra dashboard panels (XNat mappings, DB service queries, ...).
    pub panels: Option<PanelsFn>,
}

/// How WebSocket sessions reach the server's handlers.
#[derive(Clone)]
pub enum Route {
    /// The server runs in this process (`zs serve --http`, the facade): each
    /// WebSocket is an in-process connection of the server
    /// (`zs_core::Server::connect_local`): its own `Peer` with the browser's
    /// address, the same handlers, user state, caps, pushes and broadcasts,
    /// and a request runs its handler on the WebSocket's task, without
    /// transport or encryption (nothing leaves the process).
    InProcess(ConnectFn),
    /// The server is elsewhere: each WebSocket is bridged to its own
    /// encrypted zs-core `Client` session against it.
    Remote(Box<Remote>),
}

/// A server reached over the network (see [`Route::Remote`]).
#[derive(Clone)]
pub struct Remote {
    /// The zs server's address.
    pub addr: SocketAddr,
    /// The backend the bridged sessions run on: a security layer
    /// (`zs_secure::SecureBackend`, pinning the server's identity) over a raw
    /// zs-io backend, so its connections carry plaintext.
    pub backend: Arc<dyn Backend>,
    /// Options of the bridged sessions (call timeout, in-flight cap, ...).
    pub options: zs_core::Options,
}

impl Upstream {
    /// The server at `addr` whose identity has `fingerprint`, reached through a
    /// one-loop backend (epoll on Linux, tokio elsewhere) with
    /// [`zs_core::Options::client`] (its keepalive keeps an idle browser's
    /// session alive past the server's idle timeout). On Linux the backend may
    /// be dropped anywhere, an async context included.
    pub fn pinned(addr: SocketAddr, fingerprint: Fingerprint) -> Result<Upstream, Error> {
        let io = zs_io::Config {
            loops: 1,
            ..Default::default()
        };
        #[cfg(target_os = "linux")]
        let raw: Arc<dyn Backend> = Arc::new(zs_io_epoll::EpollBackend::new(io.clone())?);
        #[cfg(not(target_os = "linux"))]
        let raw: Arc<dyn Backend> = Arc::new(zs_io_tokio::TokioBackend::new(io.clone())?);
        let security: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
            Some(Arc::new(ClientConfig::pinned(fingerprint))),
            None,
        ));
        let options = zs_core::Options::client();
        Ok(Upstream {
            route: Route::Remote(Box::new(Remote {
                addr,
                backend: zs_secure::compose::secure_with(
                    raw,
                    security,
                    &io,
                    zs_secure::compose::Handshakes::default(),
                ),
                options,
            })),
            stats: None,
            panels: None,
        })
    }

    /// `server`, in this process ([`Route::InProcess`]), with its statistics.
    /// The gateway holds it weakly: once the server is dropped, new
    /// WebSockets are refused (1013) and `/metrics` shows the gateway alone.
    pub fn in_process(server: &Arc<Server>) -> Upstream {
        let (w1, w2) = (Arc::downgrade(server), Arc::downgrade(server));
        let connect: ConnectFn = Arc::new(move |addr, sink| match w1.upgrade() {
            Some(s) => s.connect_local(addr, sink),
            None => Err(zs_core::Error::ConnectionLost("the server is gone".into())),
        });
        Upstream {
            route: Route::InProcess(connect),
            stats: Some(Arc::new(move || w2.upgrade().map(|s| s.stats()))),
            panels: None,
        }
    }

    /// An in-process route through `connect` (for servers held in another
    /// wrapper, like the facade's); no statistics until [`Upstream::with_stats`].
    pub fn in_process_with(connect: ConnectFn) -> Upstream {
        Upstream {
            route: Route::InProcess(connect),
            stats: None,
            panels: None,
        }
    }

    /// Sets where the server's statistics come from.
    pub fn with_stats(mut self, stats: StatsFn) -> Upstream {
        self.stats = Some(stats);
        self
    }

    /// Adds extra dashboard panels.
    pub fn with_panels(mut self, panels: PanelsFn) -> Upstream {
        self.panels = Some(panels);
        self
    }

    /// The remote settings, when the route is [`Route::Remote`].
    pub fn remote_mut(&mut self) -> Option<&mut Remote> {
        match &mut self.route {
            Route::Remote(r) => Some(r),
            Route::InProcess(_) => None,
        }
    }
}

/// A running gateway. Dropping it shuts it down.
pub struct Gateway {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
    backend: Option<Arc<dyn Backend>>,
    stats: Arc<WebStats>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gateway({})", self.addr)
    }
}

impl Gateway {
    /// Binds `config.addr` and serves on a runtime of its own (callable from
    /// any thread, async or not).
    pub fn start(config: Config, upstream: Upstream) -> Result<Gateway, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("zs-web")
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind(config.addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let backend = match &upstream.route {
            Route::Remote(r) => Some(r.backend.clone()),
            Route::InProcess(_) => None,
        };
        let shared = gateway::Shared::new(config, upstream);
        let stats = shared.stats.clone();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let listener = {
            let _g = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        runtime.spawn(gateway::serve(shared, listener, tls, stop_rx));
        tracing::info!(%addr, "zs-web: gateway listening");
        Ok(Gateway {
            addr,
            stop,
            runtime: Some(runtime),
            backend,
            stats,
        })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gateway's counters.
    pub fn stats(&self) -> WebSnapshot {
        self.stats.snapshot()
    }

    /// Stops accepting, closes every connection and stops the runtime
    /// (waits up to 2 s for tasks). Idempotent; also runs on drop.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        let rt = self.runtime.take();
        let backend = self.backend.take();
        // On a plain thread: runtimes (ours, and a tokio bridge backend's)
        // may not be dropped from inside an async context, and the caller
        // may be in one.
        let stopper = std::thread::spawn(move || {
            if let Some(rt) = rt {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
            if let Some(b) = backend {
                b.shutdown();
            }
        });
        let _ = stopper.join();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop_now();
    }
}
