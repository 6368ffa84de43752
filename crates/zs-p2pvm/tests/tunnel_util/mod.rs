//! Shared helpers of the tunnel tests: a tunnel pair over a real loopback TCP
//! connection, and a `Backend` made of such a pair (listen at one end, connect
//! from the other) for the zs-io conformance kit.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zs_io::{Backend, Handler, HandlerFactory, Listener};
use zs_p2pvm::{Auth, Tunnel, TunnelConfig, TunnelHandle};

pub const WAIT: Duration = Duration::from_secs(30);

/// Which physical backend carries the link.
#[derive(Clone, Copy, Debug)]
pub enum Io {
    #[cfg(target_os = "linux")]
    Epoll,
    Tokio,
}

pub fn io_backend(io: Io, cfg: zs_io::Config) -> Arc<dyn Backend> {
    match io {
        #[cfg(target_os = "linux")]
        Io::Epoll => Arc::new(zs_io_epoll::EpollBackend::new(cfg).unwrap()),
        Io::Tokio => Arc::new(zs_io_tokio::TokioBackend::new(cfg).unwrap()),
    }
}

/// What [`Pair::try_new`] returns: the physical backend and listener, the
/// acceptor end, and the initiator's outcome.
pub type Attempt = (
    Arc<dyn Backend>,
    Box<dyn Listener>,
    TunnelHandle,
    Result<TunnelHandle, zs_p2pvm::Error>,
);

/// Both ends of one tunnel over one loopback TCP connection.
pub struct Pair {
    pub io: Arc<dyn Backend>,
    /// The acceptor end (its physical connection was accepted).
    pub a: TunnelHandle,
    /// The initiator end (it connected the physical link).
    pub b: TunnelHandle,
    pub phys_listener: Box<dyn Listener>,
}

impl Pair {
    /// A ready pair: `cfg_a` for the acceptor, `cfg_b` for the initiator.
    pub fn new(io: Io, cfg_a: TunnelConfig, cfg_b: TunnelConfig) -> Pair {
        let io = io_backend(
            io,
            zs_io::Config {
                loops: 1,
                ..zs_io::Config::default()
            },
        );
        let (factory, rx) = Tunnel::acceptor(cfg_a).unwrap();
        let phys_listener = io.listen("127.0.0.1:0".parse().unwrap(), factory).unwrap();
        let b = Tunnel::connect(&*io, phys_listener.local_addr(), cfg_b, WAIT).unwrap();
        let a = rx.recv_timeout(WAIT).unwrap();
        a.wait_ready(WAIT).unwrap();
        Pair {
            io,
            a,
            b,
            phys_listener,
        }
    }

    /// Both ends not yet ready (for auth tests): returns the initiator's result.
    pub fn try_new(io: Io, cfg_a: TunnelConfig, cfg_b: TunnelConfig) -> Attempt {
        let io = io_backend(io, zs_io::Config::default());
        let (factory, rx) = Tunnel::acceptor(cfg_a).unwrap();
        let phys_listener = io.listen("127.0.0.1:0".parse().unwrap(), factory).unwrap();
        let b = Tunnel::connect(&*io, phys_listener.local_addr(), cfg_b, WAIT);
        let a = rx.recv_timeout(WAIT).unwrap();
        (io, phys_listener, a, b)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.a.close("test over");
        self.b.close("test over");
        self.phys_listener.shutdown();
        self.io.shutdown();
    }
}

/// A `Backend` made of a tunnel pair: `listen` listens inside the tunnel at the
/// acceptor end (and waits until the initiator's copy of the listen table has
/// it), `connect` connects from the initiator end. So every connection the kit
/// makes is a virtual connection crossing the real loopback link.
pub struct PairBackend {
    pair: Pair,
}

impl PairBackend {
    pub fn new(io: Io, cfg: zs_io::Config) -> PairBackend {
        let t = TunnelConfig {
            send_queue_limit: cfg.send_queue_limit,
            idle_timeout: cfg.idle_timeout,
            read_chunk: cfg.read_chunk,
            close_linger: cfg.close_linger,
            ..TunnelConfig::plaintext(Auth::None)
        };
        PairBackend {
            pair: Pair::new(io, t.clone(), t),
        }
    }
}

impl Backend for PairBackend {
    fn name(&self) -> &str {
        "p2pvm-pair"
    }
    fn listen(
        &self,
        addr: SocketAddr,
        factory: HandlerFactory,
    ) -> Result<Box<dyn Listener>, zs_io::Error> {
        let l = self.pair.a.listen(addr, factory)?;
        assert!(self.pair.b.wait_peer_listen(l.local_addr(), WAIT));
        Ok(l)
    }
    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> Result<(), zs_io::Error> {
        self.pair.b.connect(addr, timeout, handler)
    }
    fn shutdown(&self) {
        self.pair.a.shutdown();
        self.pair.b.shutdown();
    }
}

/// One echo round trip through a fresh virtual connection from `b` to `addr`.
pub fn echo_once(b: &dyn Backend, addr: SocketAddr, msg: &[u8]) {
    let (client, cev) = zs_io::testkit::Recorder::new(false);
    let conn = zs_io::connect_blocking(b, addr, WAIT, Box::new(client)).unwrap();
    conn.send(bytes::Bytes::copy_from_slice(msg)).unwrap();
    assert_eq!(cev.data(msg.len()), msg);
    conn.close();
    assert_eq!(cev.close(), zs_io::CloseReason::Local);
}
