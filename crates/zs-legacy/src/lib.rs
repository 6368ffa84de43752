//! # zs-legacy: speak ZServer4D/ZNet on the wire
//!
//! Deployed Delphi/FreePascal clients and servers built on ZServer4D or its
//! successor ZNet cannot all be rebuilt at once. This crate lets a team move the
//! back end first:
//!
//! - [`LegacyServer`] accepts the original clients on their own port and hands
//!   their console, stream, direct, CompleteBuffer and BigStream commands to a
//!   zs-core [`Registry`](zs_core::Registry): **one handler serves modern and
//!   legacy clients**. DFE values become our `DataFrame`s and back
//!   ([`zs_wire::legacy::Dfe::to_dataframe`]). The cipher handed to each
//!   connection is drawn from a [`CipherPool`] (the seed's performance, default
//!   and security pools).
//! - [`LegacyClient`] connects to an original server (or ours) and calls console
//!   and stream commands, sends direct commands and CompleteBuffers.
//!
//! The codec (sequence layer, frames, DFE, `__@CipherModel`) is
//! [`zs_wire::legacy`]; ciphers and hashes come from `zs_crypto::legacy` through
//! [`ConnCrypto`]. `docs/PROTOCOL.md`, Part "Legacy ZNet wire", has the bytes.
//!
//! **Security: legacy mode sends each connection's key in clear**, in the
//! handshake, exactly as the originals do. Anyone who can read the traffic can
//! decrypt it. It is off unless asked for, and the server logs a warning when
//! it starts. Put it behind a VPN or TLS tunnel, and move clients to the zserver
//! protocol as they are rebuilt.
//!
//! ```
//! use std::sync::Arc;
//! use zs_core::Registry;
//! use zs_legacy::{ClientConfig, CipherPool, LegacyClient, LegacyConfig, LegacyServer};
//!
//! let backend: Arc<dyn zs_io::Backend> =
//!     Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, quickack: true, ..Default::default() }).unwrap());
//! // The same registry a zs-core Server would use.
//! let mut commands = Registry::new();
//! commands.console("echo", |_peer, text| Ok(text.to_owned()));
//! commands.stream("add", |_peer, data| {
//!     let mut r = data.reader();
//!     let (a, b) = (r.read_i64().map_err(|e| e.to_string())?, r.read_i64().map_err(|e| e.to_string())?);
//!     Ok(zs_wire::DataFrame::new().with(a + b))
//! });
//! let config = LegacyConfig { ciphers: CipherPool::Performance, ..Default::default() };
//! let server = LegacyServer::start(backend.clone(), commands, config, "127.0.0.1:0".parse().unwrap()).unwrap();
//!
//! // A legacy client (ours here; a ZNet or ZServer4D client works the same).
//! let client = LegacyClient::connect(backend, server.local_addr(), ClientConfig::default()).unwrap();
//! assert_eq!(client.call_console("echo", "hello").unwrap(), "hello");
//! let sum = client.call_stream("add", &zs_wire::DataFrame::new().with(2i32).with(40i64)).unwrap();
//! assert_eq!(sum.reader().read_i64().unwrap(), 42);
//! ```
#![forbid(unsafe_code)]

mod client;
mod crypto;
mod demo;
pub mod peers;
mod server;

/// The signal that acknowledges one received BigStream chunk, as both ends of
/// ZNet's link send it: `Done` after the last chunk, `Fragment` otherwise.
fn chunk_signal(last: bool) -> Vec<u8> {
    let mut sig = Vec::with_capacity(9);
    let kind = if last {
        zs_wire::legacy::SignalKind::Done
    } else {
        zs_wire::legacy::SignalKind::Fragment
    };
    zs_wire::legacy::frame::encode_signal(kind, &mut sig);
    sig
}

pub use client::{ClientConfig, LegacyClient, Push, PushedData};
pub use crypto::{key_buffer, supported_cipher, supported_hash, ConnCrypto};
pub use demo::register_demo_commands;
pub use server::{
    push_big_stream, CipherPool, LegacyConfig, LegacyServer, LegacyStats, BIG_STREAM_CHUNK,
};
pub use zs_wire::legacy::{
    CipherModel, CmdBody, CmdKind, Dfe, DfeValue, LegacyError, LegacyLimits,
};
