//! A services server on loopback and clients for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_core::{Client, Options, Registry, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_services::{Inbox, Services, ServicesClient, ServicesConfig};

pub struct Rig {
    pub services: Services,
    pub server: Server,
    /// `secure(tokio)`: the server's and its clients' backend.
    pub backend: Arc<dyn zs_io::Backend>,
    pub addr: SocketAddr,
}

pub fn provider() -> Arc<dyn SecurityProvider> {
    let (id, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(id.fingerprint()))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

/// `secure(epoll)` (what `zs serve` and the `zs` client run; `secure(tokio)`
/// elsewhere) with a fresh server identity its clients pin.
pub fn epoll_backend() -> Arc<dyn zs_io::Backend> {
    let cfg = zs_io::Config {
        loops: 1,
        ..Default::default()
    };
    #[cfg(target_os = "linux")]
    let raw: Arc<dyn zs_io::Backend> = Arc::new(zs_io_epoll::EpollBackend::new(cfg).unwrap());
    #[cfg(not(target_os = "linux"))]
    let raw: Arc<dyn zs_io::Backend> = Arc::new(zs_io_tokio::TokioBackend::new(cfg).unwrap());
    zs_secure::compose::secure(raw, provider())
}

/// `secure(tokio)` with a fresh server identity its clients pin.
pub fn backend() -> Arc<dyn zs_io::Backend> {
    let raw = Arc::new(
        zs_io_tokio::TokioBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    );
    zs_secure::compose::secure(raw, provider())
}

impl Rig {
    /// A server with the services over `services`.
    pub fn with(services: Services) -> Rig {
        Rig::with_registry(services, |_| {})
    }

    /// [`Rig::with`], `more` changing the registry after the services
    /// registered (a test may wrap one of their commands).
    pub fn with_registry(services: Services, more: impl FnOnce(&mut Registry)) -> Rig {
        Rig::on(backend(), services, more)
    }

    /// [`Rig::with_registry`] on `backend` (servers and clients).
    pub fn on(
        backend: Arc<dyn zs_io::Backend>,
        services: Services,
        more: impl FnOnce(&mut Registry),
    ) -> Rig {
        let mut r = Registry::new();
        services.register(&mut r);
        more(&mut r);
        // A handler that stores its own per-connection state (must not log anyone out).
        r.console("scratch", |peer, t| {
            peer.set_state(t.to_owned());
            Ok("ok".into())
        });
        let options = Options {
            hpc_threads: 2,
            ..Options::default()
        };
        let server =
            Server::start(backend.clone(), r, options, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr();
        Rig {
            services,
            server,
            backend,
            addr,
        }
    }

    /// A server on an in-memory store with `cfg`.
    pub fn mem(cfg: ServicesConfig) -> Rig {
        let env = zs_db::Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
        Rig::with(Services::open(&env, cfg).unwrap())
    }

    pub fn client(&self) -> ServicesClient {
        self.client_with(Registry::new())
    }

    pub fn client_with(&self, r: Registry) -> ServicesClient {
        self.client_timeout(r, Duration::from_secs(20))
    }

    /// A client whose calls wait up to `timeout` (full-size runs on a
    /// debug build: one call may hash or copy 64 MiB).
    pub fn client_timeout(&self, r: Registry, timeout: Duration) -> ServicesClient {
        let mut o = Options::client();
        o.call_timeout = Some(timeout);
        ServicesClient::new(Client::connect(self.backend.clone(), r, o, self.addr).unwrap())
    }

    pub fn client_inbox(&self) -> (ServicesClient, Inbox) {
        let mut r = Registry::new();
        let inbox = Inbox::register(&mut r);
        (self.client_with(r), inbox)
    }

    /// A client logged in as a fresh user `name` (password `name` repeated).
    pub fn user(&self, name: &str) -> ServicesClient {
        let c = self.client();
        let pw = format!("{name}-password");
        self.services
            .accounts
            .create_user(name, &pw, false)
            .unwrap();
        c.login(name, &pw).unwrap();
        c
    }
}

pub fn cheap() -> ServicesConfig {
    ServicesConfig::cheap_for_tests()
}

/// Waits until `f` holds (or panics after 10 s).
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn code_of<T: std::fmt::Debug>(r: zs_services::Result<T>) -> u32 {
    r.expect_err("expected an error").code
}
