//! Security as a transport layer (feature `secure`, crate `zs-secure`): any
//! backend plus a security provider is a backend whose connections carry
//! plaintext, so stacks compose from trait objects.
//!
//! ```
//! use std::sync::Arc;
//! use zserver::secure::secure_over;
//!
//! let cfg = zs_io::Config { loops: 1, ..Default::default() };
//! let raw: Arc<dyn zs_io::Backend> = Arc::new(zs_io_tokio::TokioBackend::new(cfg.clone()).unwrap());
//! let key = [9u8; 32];
//! let provider = Arc::new(zs_crypto::ZsSecurity::new(
//!     Some(Arc::new(zs_crypto::ClientConfig::psk(b"me", &key).unwrap())),
//!     Some(Arc::new(zs_crypto::ServerConfig::with_psk(b"me", &key).unwrap())),
//! ));
//! let secure: Arc<dyn zs_io::Backend> = secure_over(&cfg, raw, provider);
//! assert_eq!(secure.name(), "secure(tokio)");
//! secure.shutdown();
//! ```

use std::sync::Arc;

pub use zs_secure::{
    handshake_error, HandshakeError, SecureBackend, SecureConfig, SecureStats, SecureStream,
};

/// `SecureBackend(raw)` with the default handshake bounds
/// ([`zs_secure::compose::Handshakes`]) and the send queue bound of `raw`'s
/// configuration `cfg` (so back-pressure needs no polling).
pub fn secure_over(
    cfg: &zs_io::Config,
    raw: Arc<dyn zs_io::Backend>,
    provider: Arc<dyn zs_crypto::SecurityProvider>,
) -> Arc<dyn zs_io::Backend> {
    zs_secure::compose::secure_with(raw, provider, cfg, Default::default())
}
