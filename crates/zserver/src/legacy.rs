//! Legacy ZServer4D/ZNet wire compatibility (`zs-legacy`): original Delphi and
//! FreePascal clients call the same command handlers as zserver clients, and
//! Rust code calls original servers.
//!
//! **The legacy protocol sends each connection's key in clear** (its
//! `__@CipherModel` handshake): use it only to migrate, on networks you trust.
//!
//! ```
//! use zserver::legacy::{self, CipherPool, ClientConfig, LegacyConfig};
//! use zserver::{Registry, ServerBuilder};
//!
//! let mut commands = Registry::new();
//! commands.console("echo", |_peer, text| Ok(text.to_owned()));
//! // One registry, two listeners: zserver clients and legacy clients.
//! let server = ServerBuilder::new()
//!     .addr("127.0.0.1:0".parse().unwrap())
//!     .registry(commands.clone())
//!     .start()
//!     .unwrap();
//! let config = LegacyConfig { ciphers: CipherPool::Performance, ..Default::default() };
//! let old = legacy::start("127.0.0.1:0".parse().unwrap(), commands, config).unwrap();
//!
//! // A ZNet/ZServer4D client (here ours) reaches the same handler.
//! let client = legacy::connect(old.local_addr(), ClientConfig::default()).unwrap();
//! assert_eq!(client.call_console("echo", "from 2015").unwrap(), "from 2015");
//! # drop(server);
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

pub use zs_legacy::{
    peers, push_big_stream, register_demo_commands, supported_cipher, supported_hash, CipherModel,
    CipherPool, ClientConfig, CmdBody, CmdKind, Dfe, DfeValue, LegacyClient, LegacyConfig,
    LegacyError, LegacyLimits, LegacyServer, LegacyStats, Push, PushedData, BIG_STREAM_CHUNK,
};

use crate::{backend_by_name, Error, Registry, Result};

fn default_backend() -> Result<Arc<dyn zs_io::Backend>> {
    Ok(Arc::from(backend_by_name(
        "default",
        zs_io::Config {
            loops: 1,
            // The original clients write twice in a row without TCP_NODELAY:
            // acknowledge at once (see zs_legacy::LegacyServer).
            quickack: true,
            ..Default::default()
        },
    )?))
}

/// Starts a legacy listener on `addr` (default backend, one event loop) whose
/// clients' commands go to `registry`.
pub fn start(addr: SocketAddr, registry: Registry, config: LegacyConfig) -> Result<LegacyServer> {
    LegacyServer::start(default_backend()?, registry, config, addr).map_err(Error::Io)
}

/// Connects a legacy client to an original (or our) ZServer4D/ZNet server.
pub fn connect(addr: SocketAddr, config: ClientConfig) -> Result<LegacyClient> {
    LegacyClient::connect(default_backend()?, addr, config)
}
