//! The web face of a server (feature `web`, crate `zs-web`): an HTTP listener
//! whose WebSocket maps JSON messages onto the server's commands, a live
//! dashboard, `/metrics` for Prometheus and the `/zs.js` client.
//!
//! The pieces are trait objects: the gateway reaches the server through an
//! [`Upstream`]: in this process ([`start`]), a [`ConnectFn`] opening an
//! in-process connection per WebSocket (`Server::connect_local`: the same
//! handlers, user state, caps, pushes and broadcasts as a network client,
//! with no transport and no encryption, since nothing leaves the process);
//! or over the network ([`Route::Remote`]: an `Arc<dyn SecurityProvider>`
//! pinning the server's identity and an `Arc<dyn Backend>` for one bridged
//! session per WebSocket). A [`StatsFn`] reads the server's statistics.
//!
//! ```
//! use std::sync::Arc;
//! use zserver::ServerBuilder;
//!
//! let server = Arc::new(
//!     ServerBuilder::new()
//!         .addr("127.0.0.1:0".parse().unwrap())
//!         .commands(|r| {
//!             r.console("echo", |_peer, text| Ok(text.to_owned()));
//!         })
//!         .start()
//!         .unwrap(),
//! );
//! let config = zserver::web::Config { addr: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
//! let gateway = zserver::web::start(&server, config).unwrap();
//! println!("dashboard: http://{}/  WebSocket: ws://{}/ws", gateway.local_addr(), gateway.local_addr());
//! gateway.shutdown();
//! ```

use std::sync::Arc;

pub use zs_web::{
    json, metrics, Config, ConnectFn, Error, Gateway, Remote, Route, StatsFn, Upstream, WsError,
};

use crate::RunningServer;

/// Starts a gateway for `server`, in this process: each WebSocket is an
/// in-process connection of the server (its handlers see the browser's
/// address), and `/metrics` and the dashboard read its statistics. The
/// gateway holds the server weakly: it does not keep it alive, and refuses
/// new WebSockets (close 1013) once it is gone.
pub fn start(server: &Arc<RunningServer>, config: Config) -> Result<Gateway, Error> {
    let (w1, w2) = (Arc::downgrade(server), Arc::downgrade(server));
    let connect: ConnectFn = Arc::new(move |addr, sink| match w1.upgrade() {
        Some(s) => s.connect_local(addr, sink),
        None => Err(zs_core::Error::ConnectionLost("the server is gone".into())),
    });
    let upstream = Upstream::in_process_with(connect)
        .with_stats(Arc::new(move || w2.upgrade().map(|s| s.stats())));
    Gateway::start(config, upstream)
}

/// Starts a gateway for `server` that reaches it over the network, like any
/// client (one encrypted session per WebSocket, pinned to the server's
/// identity): for a gateway meant to move to another process later, or to
/// measure the difference. Needs the fingerprint the builder made.
pub fn start_remote(server: &Arc<RunningServer>, config: Config) -> Result<Gateway, Error> {
    let fingerprint = server.fingerprint().ok_or_else(|| {
        Error::Config("the server has a custom security provider: build an Upstream with a client provider and use Gateway::start".into())
    })?;
    let weak = Arc::downgrade(server);
    let upstream = Upstream::pinned(server.local_addr(), fingerprint)?
        .with_stats(Arc::new(move || weak.upgrade().map(|s| s.stats())));
    Gateway::start(config, upstream)
}
