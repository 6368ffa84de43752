//! `secure(backend)` for programs that used to run their security inside
//! zs-core.
//!
//! zs-core's built-in secure session had three handshake settings on its
//! `Options`: `handshake_timeout` (10 s), `max_handshakes` (1,000) and
//! `max_handshakes_per_ip` (64). On the layer they belong to the layer:
//! [`Handshakes`] carries them with the same meanings and defaults, and
//! [`secure`] / [`secure_with`] build the [`SecureBackend`] a zs-core
//! `Server::start` / `Client::connect` runs on, with the raw
//! backend's send queue bound and close linger ([`SecureConfig::for_io`]) so
//! back-pressure needs no polling.
//!
//! ```
//! use std::sync::Arc;
//! use zs_crypto::{ClientConfig, ServerConfig, ZsSecurity};
//! use zs_secure::compose::{self, Handshakes};
//!
//! let key = [7u8; 32];
//! let provider = Arc::new(ZsSecurity::new(
//!     Some(Arc::new(ClientConfig::psk(b"alice", &key).unwrap())),
//!     Some(Arc::new(ServerConfig::with_psk(b"alice", &key).unwrap())),
//! ));
//! let io = zs_io::Config { loops: 1, ..Default::default() };
//! let raw = Arc::new(zs_io_tokio::TokioBackend::new(io.clone()).unwrap());
//! let secure = compose::secure_with(raw, provider, &io, Handshakes { max_per_ip: 16, ..Default::default() });
//! assert_eq!(secure.config().max_handshakes, 1_000);
//! assert_eq!(secure.config().send_queue_limit, io.send_queue_limit);
//! ```

use std::sync::Arc;
use std::time::Duration;

use zs_crypto::SecurityProvider;
use zs_io::Backend;

use crate::{SecureBackend, SecureConfig};

/// Bounds on handshakes in progress, with the meanings and defaults zs-core's
/// `Options` gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshakes {
    /// An accepted connection without keys by then is dropped
    /// ([`SecureConfig::handshake_timeout`]). Default 10 s.
    pub timeout: Duration,
    /// Most accepted connections in their handshake at once
    /// ([`SecureConfig::max_handshakes`]). Default 1,000.
    pub max: usize,
    /// Most of them from one source address
    /// ([`SecureBackend::with_max_handshakes_per_ip`]; `0`: no bound).
    /// Default 64.
    pub max_per_ip: usize,
}

impl Default for Handshakes {
    fn default() -> Self {
        Handshakes {
            timeout: Duration::from_secs(10),
            max: 1_000,
            max_per_ip: 64,
        }
    }
}

impl Handshakes {
    /// The layer's configuration: these bounds, and the send queue bound and
    /// close linger of the raw backend's `io` configuration.
    pub fn config(&self, io: &zs_io::Config) -> SecureConfig {
        SecureConfig {
            handshake_timeout: self.timeout,
            max_handshakes: self.max,
            ..SecureConfig::for_io(io)
        }
    }
}

/// `secure(inner)` with the default [`Handshakes`], for a raw backend made
/// with the default `zs_io::Config` send queue bound and close linger.
pub fn secure(inner: Arc<dyn Backend>, provider: Arc<dyn SecurityProvider>) -> Arc<SecureBackend> {
    secure_with(
        inner,
        provider,
        &zs_io::Config::default(),
        Handshakes::default(),
    )
}

/// `secure(inner)` for a raw backend made with `io`, with the bounds `hs`.
pub fn secure_with(
    inner: Arc<dyn Backend>,
    provider: Arc<dyn SecurityProvider>,
    io: &zs_io::Config,
    hs: Handshakes,
) -> Arc<SecureBackend> {
    Arc::new(
        SecureBackend::with_config(inner, provider, hs.config(io))
            .with_max_handshakes_per_ip(hs.max_per_ip),
    )
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Instant;

    use zs_crypto::{ClientConfig, ServerConfig, ZsSecurity};
    use zs_io::{Conn, Handler};

    use super::*;

    struct Quiet;
    impl Handler for Quiet {
        fn on_data(&mut self, _conn: &Conn, _data: &mut bytes::BytesMut) {}
    }

    fn provider() -> Arc<dyn SecurityProvider> {
        let key = [3u8; 32];
        Arc::new(ZsSecurity::new(
            Some(Arc::new(ClientConfig::psk(b"a", &key).unwrap())),
            Some(Arc::new(ServerConfig::with_psk(b"a", &key).unwrap())),
        ))
    }

    fn raw(io: &zs_io::Config) -> Arc<dyn Backend> {
        Arc::new(zs_io_epoll::EpollBackend::new(io.clone()).unwrap())
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The server ended the connection (end of stream or a reset).
    fn dropped(s: &mut TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 64];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    }

    #[test]
    fn defaults_are_zs_cores_and_the_io_bounds_are_the_raw_backends() {
        let io = zs_io::Config {
            loops: 1,
            send_queue_limit: 96 * 1024,
            close_linger: Duration::from_secs(3),
            ..Default::default()
        };
        let s = secure_with(raw(&io), provider(), &io, Handshakes::default());
        let c = s.config();
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_handshakes, 1_000);
        assert_eq!(c.send_queue_limit, 96 * 1024);
        assert_eq!(c.close_linger, Duration::from_secs(3));
        assert_eq!(s.name(), "secure(epoll)");
        s.shutdown();
    }

    #[test]
    fn per_address_bound_and_timeout_reach_the_layer() {
        let io = zs_io::Config {
            loops: 1,
            ..Default::default()
        };
        let hs = Handshakes {
            timeout: Duration::from_secs(1),
            max: 100,
            max_per_ip: 1,
        };
        let s = secure_with(raw(&io), provider(), &io, hs);
        let l = s
            .listen(
                "127.0.0.1:0".parse().unwrap(),
                zs_io::handler_factory(|| Quiet),
            )
            .unwrap();
        // One silent connection holds 127.0.0.1's only slot (accepted first:
        // the backlog is in order)...
        let mut first = TcpStream::connect(l.local_addr()).unwrap();
        // ...so the next one is refused at accept (max_per_ip = 1)...
        let mut second = TcpStream::connect(l.local_addr()).unwrap();
        assert!(dropped(&mut second));
        wait_for("the refusal", || s.stats().handshakes_refused >= 1);
        // ...and the silent one ends at the 1 s handshake timeout.
        assert!(dropped(&mut first));
        wait_for("the timeout", || s.stats().handshake_timeouts == 1);
        l.shutdown();
        s.shutdown();
    }
}
