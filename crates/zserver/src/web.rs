//! The web face of a server (feature `web`, crate `zs-web`): an HTTP listener
//! whose WebSocket maps JSON messages onto the server's commands, a live
//! dashboard, `/metrics` for Prometheus and the `/zs.js` client.
//!
//! The pieces are trait objects: the gateway reaches the server through an
//! [`Upstream`]: in this process ([`start`]), a [`ConnectFn`] opening an
//! in-process connection per WebSocket (`Server::connect_local`: the same
//! handlers, user state, caps, pushes and broadcasts as a network client,
//! with no transport and no encryption, since nothing leaves the process);
//! or over the network ([`Route::Remote`]: an `Arc<dyn Backend>`, a security
//! layer pinning the server's identity over a raw backend, for one bridged
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
    json, metrics, Config, ConnectFn, Error, Gateway, Panel, PanelsFn, Remote, Route, StatsFn,
    Upstream, WsError,
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
        Some(s) => s.server().connect_local(addr, sink),
        None => Err(zs_core::Error::ConnectionLost("the server is gone".into())),
    });
    let upstream = Upstream::in_process_with(connect)
        .with_stats(Arc::new(move || w2.upgrade().map(|s| s.server().stats())));
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
        .with_stats(Arc::new(move || weak.upgrade().map(|s| s.server().stats())));
    Gateway::start(config, upstream)
}

/// Like [`start`], with extra dashboard panels (see `xnat_panel` with feature `xnat`,
/// [`db_service_panel`], [`panels`]).
pub fn start_with_panels(
    server: &Arc<RunningServer>,
    config: Config,
    extra: PanelsFn,
) -> Result<Gateway, Error> {
    let (w1, w2) = (Arc::downgrade(server), Arc::downgrade(server));
    let connect: ConnectFn = Arc::new(move |addr, sink| match w1.upgrade() {
        Some(s) => s.server().connect_local(addr, sink),
        None => Err(zs_core::Error::ConnectionLost("the server is gone".into())),
    });
    let upstream = Upstream::in_process_with(connect)
        .with_stats(Arc::new(move || w2.upgrade().map(|s| s.server().stats())))
        .with_panels(extra);
    Gateway::start(config, upstream)
}

/// Several panel sources as one, in order.
pub fn panels(sources: Vec<PanelsFn>) -> PanelsFn {
    Arc::new(move || sources.iter().flat_map(|f| f()).collect())
}

/// A dashboard panel of a zs-xnat relay: each mapping, its public address
/// while an agent serves it, and its counters (visitors, bytes, ...).
#[cfg(feature = "xnat")]
pub fn xnat_panel(relay: &crate::XnatRelay) -> PanelsFn {
    let relay = relay.clone();
    Arc::new(move || {
        vec![mappings_panel(&relay.mapping_stats(), |m| {
            relay.public_addr(m)
        })]
    })
}

/// The XNat panel from per-mapping counters and public addresses.
#[cfg_attr(not(feature = "xnat"), allow(dead_code))]
fn mappings_panel(
    stats: &std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, u64>>,
    public_addr: impl Fn(&str) -> Option<std::net::SocketAddr>,
) -> Panel {
    let counters: Vec<&'static str> = stats
        .values()
        .next()
        .map(|m| m.keys().copied().collect())
        .unwrap_or_default();
    let mut columns = vec!["mapping".to_string(), "public address".to_string()];
    columns.extend(counters.iter().map(|c| c.replace('_', " ")));
    let rows = stats
        .iter()
        .map(|(name, m)| {
            let mut r = vec![
                name.clone(),
                public_addr(name).map_or("not listening".into(), |a| a.to_string()),
            ];
            r.extend(
                counters
                    .iter()
                    .map(|c| m.get(c).copied().unwrap_or(0).to_string()),
            );
            r
        })
        .collect();
    Panel {
        title: "XNat mappings".into(),
        columns,
        rows,
    }
}

/// A dashboard panel of a DB service: the queries running now.
#[cfg(feature = "db-service")]
pub fn db_service_panel(service: &crate::DbService) -> PanelsFn {
    let service = service.clone();
    Arc::new(move || {
        vec![Panel {
            title: "DB service".into(),
            columns: vec!["".into(), "now".into()],
            rows: vec![vec![
                "queries running".into(),
                service.running_queries().to_string(),
            ]],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xnat_panel_lists_each_mapping_with_its_address_and_counters() {
        let mut stats = std::collections::BTreeMap::new();
        stats.insert(
            "ssh".to_string(),
            std::collections::BTreeMap::from([("visitors_total", 3u64), ("bytes_up", 10)]),
        );
        stats.insert(
            "web".to_string(),
            std::collections::BTreeMap::from([("visitors_total", 7u64), ("bytes_up", 0)]),
        );
        let p = mappings_panel(&stats, |m| {
            (m == "web").then(|| "127.0.0.1:9000".parse().unwrap())
        });
        assert_eq!(p.title, "XNat mappings");
        assert_eq!(
            p.columns,
            ["mapping", "public address", "bytes up", "visitors total"]
        );
        assert_eq!(
            p.rows,
            [
                vec!["ssh", "not listening", "10", "3"],
                vec!["web", "127.0.0.1:9000", "0", "7"]
            ]
        );
    }

    #[test]
    fn panel_sources_combine_in_order() {
        let one = |t: &'static str| -> PanelsFn {
            Arc::new(move || {
                vec![Panel {
                    title: t.into(),
                    columns: vec![],
                    rows: vec![],
                }]
            })
        };
        let all = panels(vec![one("a"), one("b")]);
        let titles: Vec<String> = all().into_iter().map(|p| p.title).collect();
        assert_eq!(titles, ["a", "b"]);
    }

    #[cfg(feature = "db-service")]
    #[test]
    fn the_db_service_panel_counts_running_queries() {
        let env = zs_db::Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
        let svc = crate::DbService::with_env(env, Default::default()).unwrap();
        let p = db_service_panel(&svc)();
        assert_eq!(p[0].rows, [vec!["queries running", "0"]]);
    }
}
