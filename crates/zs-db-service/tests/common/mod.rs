//! Setup shared by the service tests: security from a fixed seed, the
//! security layer over an epoll backend, a service on a temp dir served on loopback, and clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zs_core::{Client, Options, Reconnect, Registry, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_db_service::{DbClient, DbService, ServiceConfig};

pub const SEED: [u8; 32] = [7u8; 32];

/// Server and client security from the fixed test identity.
pub fn provider() -> Arc<dyn SecurityProvider> {
    let id = ServerIdentity::from_seed(&SEED).unwrap();
    let c = ClientConfig::pinned(id.fingerprint());
    Arc::new(ZsSecurity::new(
        Some(Arc::new(c)),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

/// `secure(epoll)` with the fixed test identity: the server's and its
/// clients' backend (connections carry plaintext).
pub fn backend() -> Arc<dyn zs_io::Backend> {
    let raw = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..zs_io::Config::default()
        })
        .unwrap(),
    );
    zs_secure::compose::secure(raw, provider())
}

pub fn client_options() -> Options {
    Options {
        reconnect: Reconnect {
            initial: Duration::from_millis(2),
            max: Duration::from_millis(40),
            give_up: Duration::from_secs(3),
        },
        ..Options::client()
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub service: DbService,
    pub server: Server,
    pub backend: Arc<dyn zs_io::Backend>,
}

pub fn start(cfg: ServiceConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let service = DbService::open_dir(dir.path(), cfg).unwrap();
    let backend = backend();
    let server = serve(&service, &backend, "127.0.0.1:0".parse().unwrap());
    Fixture {
        dir,
        service,
        server,
        backend,
    }
}

pub fn serve(service: &DbService, backend: &Arc<dyn zs_io::Backend>, addr: SocketAddr) -> Server {
    let mut reg = Registry::new();
    service.register(&mut reg);
    Server::start(backend.clone(), reg, Options::default(), addr).unwrap()
}

impl Fixture {
    pub fn client(&self) -> DbClient {
        connect(
            self.backend.clone(),
            Arc::new(Mutex::new(self.server.local_addr())),
        )
    }
}

/// A StableIO client that reconnects to whatever address `addr` holds then.
pub fn connect(backend: Arc<dyn zs_io::Backend>, addr: Arc<Mutex<SocketAddr>>) -> DbClient {
    DbClient::connect_with(move |reg| {
        let a = *addr.lock().unwrap();
        Client::connect_stable(backend.clone(), reg, client_options(), a)
    })
    .unwrap()
}

/// The error code of a refusal.
pub fn code<T: std::fmt::Debug>(r: zs_db_service::Result<T>) -> u32 {
    match r {
        Err(zs_db_service::Error::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A JSON record `{"n":i,"group":"g<i % 10>","pad":"x…"}` with `pad` bytes of padding.
pub fn json_record(i: u64, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"n":{i},"group":"g{}","pad":"{}"}}"#,
        i % 10,
        "x".repeat(pad)
    )
    .into_bytes()
}
