//! Backends for the conformance suite: a real etcd process (temp data dir,
//! loopback ports, killed on drop) and the embedded registry served over a
//! real zs-core connection.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zs_core::{Client, Options, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_registry::service::{install, ServiceConfig};
use zs_registry::{Embedded, EmbeddedConfig, Etcd, EtcdConfig, Limits, Remote, ServiceRegistry};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `etcd` is on PATH; under `CI` its absence fails the test.
pub fn have_etcd() -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is not installed (CI)"
        );
        println!("skipped: etcd not installed");
    }
    ok
}

/// A real etcd 3.4 server.
pub struct EtcdProc {
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdProc {
    pub fn start() -> EtcdProc {
        let mut p = EtcdProc {
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        p.spawn();
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let data: PathBuf = self.dir.path().join("data");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(self.url())
            .arg("--advertise-client-urls")
            .arg(self.url())
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-cluster")
            .arg(format!("default=http://127.0.0.1:{}", self.peer_port))
            .arg("--log-level")
            .arg("error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < end, "etcd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn registry(&self, limits: Limits) -> Etcd {
        let mut cfg = EtcdConfig::new(&self.url());
        cfg.limits = limits;
        cfg.timeout = Duration::from_secs(3);
        Etcd::connect(cfg).unwrap()
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn provider() -> Arc<dyn SecurityProvider> {
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = ServerIdentity::generate(&rng).unwrap();
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(id.fingerprint()))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

/// A raw epoll backend with one loop.
pub fn raw_backend() -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..zs_io::Config::default()
        })
        .unwrap(),
    )
}

/// `secure(epoll)` with a fresh server identity (its clients pin it).
pub fn backend() -> Arc<dyn zs_io::Backend> {
    zs_secure::compose::secure(raw_backend(), provider())
}

/// The embedded registry in a zs-core server, on a DirVfs in a temp dir.
pub struct EmbeddedServer {
    pub dir: tempfile::TempDir,
    pub reg: Option<Embedded>,
    pub server: Option<Server>,
    pub addr: Arc<Mutex<SocketAddr>>,
    pub cfg: EmbeddedConfig,
    pub svc: ServiceConfig,
    /// `secure(epoll)`: the server's and its clients' backend.
    backend: Arc<dyn zs_io::Backend>,
}

impl EmbeddedServer {
    pub fn start(cfg: EmbeddedConfig, svc: ServiceConfig) -> EmbeddedServer {
        let mut s = EmbeddedServer {
            dir: tempfile::tempdir().unwrap(),
            reg: None,
            server: None,
            addr: Arc::new(Mutex::new("127.0.0.1:0".parse().unwrap())),
            cfg,
            svc,
            backend: backend(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let vfs = Arc::new(zs_db::DirVfs::new(self.dir.path()).unwrap());
        let reg = Embedded::open(vfs, "registry", self.cfg.clone()).unwrap();
        let mut cmds = zs_core::Registry::new();
        install(&mut cmds, reg.clone(), self.svc.clone());
        let server = Server::start(
            self.backend.clone(),
            cmds,
            Options::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        *self.addr.lock().unwrap() = server.local_addr();
        self.reg = Some(reg);
        self.server = Some(server);
    }

    /// Stop the server and close the database, then start both again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        if let Some(r) = self.reg.take() {
            r.close().unwrap();
        }
    }

    /// A client of the service (reconnects to wherever the server is now).
    pub fn client(&self) -> Remote {
        let (b, a) = (self.backend.clone(), self.addr.clone());
        Remote::new(
            move |cmds| {
                let addr = *a.lock().unwrap();
                Client::connect(b.clone(), cmds, Options::client(), addr)
            },
            Duration::from_secs(5),
        )
    }

    /// A raw zs-core client (for attack tests).
    pub fn raw_client(&self) -> Client {
        self.raw_client_with(zs_core::Registry::new())
    }

    /// A raw zs-core client with its own commands (pushes).
    pub fn raw_client_with(&self, cmds: zs_core::Registry) -> Client {
        Client::connect(
            self.backend.clone(),
            cmds,
            Options::client(),
            *self.addr.lock().unwrap(),
        )
        .unwrap()
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `f` against the embedded service (over zs-core) and against etcd.
pub fn both(limits: Limits, f: impl Fn(&dyn ServiceRegistry)) {
    let es = EmbeddedServer::start(
        EmbeddedConfig {
            limits: limits.clone(),
            ..EmbeddedConfig::default()
        },
        ServiceConfig::default(),
    );
    let remote = es.client();
    f(&remote);
    drop(remote);
    drop(es);
    if have_etcd() {
        let etcd = EtcdProc::start();
        let reg = etcd.registry(limits);
        f(&reg);
    }
}
