//! # zs-crypto: ciphers, key exchange, authenticated records, rekeying
//!
//! ZServer4D sent its session key in clear and encrypted with ECB under a
//! fixed XOR pad. This crate keeps the seed's *capabilities* (a choice of
//! ciphers, one key per client, keys replaced periodically, a random cipher
//! per connection) and builds them properly:
//!
//! - [`session::Session`]: a sans-IO handshake (ephemeral X25519, HKDF-SHA256,
//!   SHA3-256 transcript) authenticated by a pinned Ed25519 server key or a
//!   pre-shared key, then sealed records with per-direction keys and
//!   sequence-number nonces, automatic and explicit key updates, orderly close.
//! - [`suite::SuiteId`]: AES-256-GCM and ChaCha20-Poly1305 (ring); AES,
//!   Twofish, Serpent, RC6 and MARS in CTR mode with HMAC-SHA3-256
//!   (encrypt-then-MAC). The server picks by [`session::SuitePolicy`].
//! - [`block`]: every block cipher of the seed behind one trait, including
//!   [`mars`] (implemented here) and the legacy Blowfish, DES/3DES and
//!   [`xxtea`]; [`hash`]: SHA-3, SHAKE and the key fingerprint.
//! - [`provider::SecurityProvider`]: the object-safe seam the framework holds;
//!   [`tls`] offers TLS 1.3 (rustls) through the same seam.
//! - [`password`]: Argon2id password hashes for user accounts.
//!
//! Byte layouts are in `docs/PROTOCOL.md`, Part 2.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use zs_crypto::session::{ClientConfig, Event, ServerConfig, ServerIdentity, Session};
//!
//! let rng = ring::rand::SystemRandom::new();
//! let (identity, _seed) = ServerIdentity::generate(&rng).unwrap();
//! let client_cfg = Arc::new(ClientConfig::pinned(identity.fingerprint()));
//! let server_cfg = Arc::new(ServerConfig::with_identity(Arc::new(identity)));
//! let now = Instant::now();
//! let mut client = Session::client(client_cfg, &rng, now).unwrap();
//! let mut server = Session::server(server_cfg, &rng, now).unwrap();
//! client.send(b"hello", now).unwrap(); // queued until the handshake completes
//! // Shuttle bytes both ways until nothing is left (a transport does this).
//! while client.has_output() || server.has_output() {
//!     server.handle_input(&client.take_output(), now).unwrap();
//!     client.handle_input(&server.take_output(), now).unwrap();
//! }
//! let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
//! assert!(events.contains(&Event::Data(b"hello".to_vec())));
//! ```
#![forbid(unsafe_code)]

pub mod block;
pub mod error;
pub mod handshake;
pub mod hash;
pub mod legacy;
pub mod mars;
pub mod password;
pub mod provider;
pub mod record;
pub mod serpent;
pub mod session;
pub mod suite;
pub mod tls;
pub mod twofish;
pub mod xxtea;

pub use block::{Algorithm, BlockCipher};
pub use error::{Error, Result};
pub use hash::Fingerprint;
pub use provider::{SecureSession, SecurityProvider, ZsSecurity};
pub use session::{ClientConfig, Event, ServerConfig, ServerIdentity, Session};
pub use suite::SuiteId;
