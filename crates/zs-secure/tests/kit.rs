//! The zs-io conformance kit, unchanged, against `SecureBackend` over epoll and over
//! tokio. The kit's own socket peers speak the secure protocol through
//! [`zs_secure::SecureStream`] (the kit's `PeerWrap` hook), so every item checks the
//! plaintext connections the layer gives its handlers.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::sync::Arc;

use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ZsSecurity};
use zs_io::testkit::{Peer, PeerStream, PeerWrap};
use zs_secure::{SecureBackend, SecureConfig, SecureStream};

fn provider() -> Arc<dyn SecurityProvider> {
    let key = [0x5a; 32];
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::psk(b"kit", &key).unwrap())),
        Some(Arc::new(ServerConfig::with_psk(b"kit", &key).unwrap())),
    ))
}

struct KitPeer(SecureStream<TcpStream>);

impl std::io::Read for KitPeer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for KitPeer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl PeerStream for KitPeer {
    fn tcp(&self) -> &TcpStream {
        self.0.get_ref()
    }
    fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.0.close_write()?;
        self.0.get_ref().shutdown(std::net::Shutdown::Write)
    }
}

/// The kit's socket peers, speaking the secure protocol.
struct SecurePeers(Arc<dyn SecurityProvider>);

impl PeerWrap for SecurePeers {
    fn client(&self, s: TcpStream) -> std::io::Result<Peer> {
        Ok(Box::new(KitPeer(SecureStream::connect(s, &*self.0)?)))
    }
    fn server(&self, s: TcpStream) -> std::io::Result<Peer> {
        Ok(Box::new(KitPeer(SecureStream::accept(s, &*self.0)?)))
    }
}

fn peers() -> Arc<dyn PeerWrap> {
    Arc::new(SecurePeers(provider()))
}

/// `SecureBackend(raw)` with the raw backend's queue bound and the kit's own patience
/// for handshakes: 1,000 handshakes at once (`many_connections`) cost about 1.5 s of
/// CPU in a debug build (ring's C is unoptimised there), which on a loaded shared
/// machine can take longer than the 10 s default. That bound is tested in
/// `tests/hostile.rs`.
fn secure(raw: Arc<dyn zs_io::Backend>, cfg: &zs_io::Config) -> Box<dyn zs_io::Backend> {
    let scfg = SecureConfig {
        handshake_timeout: zs_io::testkit::WAIT,
        ..SecureConfig::for_io(cfg)
    };
    Box::new(SecureBackend::with_config(raw, provider(), scfg))
}

type Make = fn(zs_io::Config) -> Box<dyn zs_io::Backend>;

fn epoll(cfg: zs_io::Config) -> Box<dyn zs_io::Backend> {
    secure(
        Arc::new(zs_io_epoll::EpollBackend::new(cfg.clone()).unwrap()),
        &cfg,
    )
}

fn tokio(cfg: zs_io::Config) -> Box<dyn zs_io::Backend> {
    secure(
        Arc::new(zs_io_tokio::TokioBackend::new(cfg.clone()).unwrap()),
        &cfg,
    )
}

mod epoll {
    zs_io::conformance_tests!(super::epoll as super::Make, super::peers());
}

mod tokio {
    zs_io::conformance_tests!(super::tokio as super::Make, super::peers());
}
