//! The web face of a server (feature `web`, crate `zs-web`): an HTTP listener
//! whose WebSocket maps JSON messages onto the server's commands, a live
//! dashboard, `/metrics` for Prometheus and the `/zs.js` client.
//!
//! The pieces are trait objects: the gateway reaches the server through an
//! [`Upstream`] (an `Arc<dyn SecurityProvider>` pinning its identity, an
//! `Arc<dyn Backend>` for the bridged sessions, and a [`StatsFn`] reading its
//! statistics), so any server, built here or elsewhere, can have one.
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

pub use zs_web::{json, metrics, Config, Error, Gateway, StatsFn, Upstream, WsError};

use crate::RunningServer;

/// Starts a gateway for `server` (built by [`ServerBuilder`](crate::ServerBuilder),
/// so its fingerprint is known): WebSocket sessions are bridged to it, and
/// `/metrics` and the dashboard read its statistics (through a weak
/// reference: the gateway does not keep the server alive).
pub fn start(server: &Arc<RunningServer>, config: Config) -> Result<Gateway, Error> {
    let fingerprint = server.fingerprint().ok_or_else(|| {
        Error::Config("the server has a custom security provider: build an Upstream with a client provider and use Gateway::start".into())
    })?;
    let weak = Arc::downgrade(server);
    let upstream = Upstream::pinned(server.local_addr(), fingerprint)?
        .with_stats(Arc::new(move || weak.upgrade().map(|s| s.stats())));
    Gateway::start(config, upstream)
}
