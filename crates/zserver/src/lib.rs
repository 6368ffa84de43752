//! # zserver: the facade
//!
//! One dependency that brings the zserver crates you enable, under short names,
//! and builders that assemble a server or a client from trait objects
//! (`Box<dyn Backend>`, `Arc<dyn SecurityProvider>`, options) with sensible
//! defaults: the epoll backend on Linux (tokio elsewhere), X25519 + AES-256-GCM
//! sessions, a pinned Ed25519 server identity.
//!
//! Features (one per sub-crate): `wire`, `crypto`, `io`, `io-epoll`, `io-tokio`,
//! `core` (the framework and the builders), `expr`, `db`, `p2pvm`, and one per
//! service crate: `tx` (transactions), `services` (accounts, files, messages
//! and push; `ServerBuilder::service`, `ClientBuilder::connect_services`),
//! `registry` (clusters), `db-service` (zs-db over the network), `legacy`
//! (ZServer4D/ZNet clients and servers on the wire), `web`
//! (WebSocket gateway, dashboard, `/metrics`), `xnat` (NAT traversal);
//! `full` enables all.
//! `default` = `core`, `io-epoll`, `io-tokio`.
//!
//! ```
//! use zserver::{ClientBuilder, DataFrame, ServerBuilder};
//!
//! // A server with two commands, on a free loopback port.
//! let server = ServerBuilder::new()
//!     .addr("127.0.0.1:0".parse().unwrap())
//!     .commands(|r| {
//!         r.console("echo", |_peer, text| Ok(text.to_owned()));
//!         r.stream("add", |_peer, data| {
//!             let mut rd = data.reader();
//!             let (a, b) = (rd.read_i64().map_err(|e| e.to_string())?, rd.read_i64().map_err(|e| e.to_string())?);
//!             Ok(DataFrame::new().with(a + b))
//!         });
//!     })
//!     .start()
//!     .unwrap();
//!
//! // A client pins the server's fingerprint.
//! let client = ClientBuilder::new(server.local_addr())
//!     .fingerprint(server.fingerprint().unwrap())
//!     .connect()
//!     .unwrap();
//! assert_eq!(client.call("echo", "hello").wait().unwrap(), "hello");
//! let sum = client.call_stream("add", DataFrame::new().with(2i64).with(40i64)).wait().unwrap();
//! assert_eq!(sum.reader().read_i64().unwrap(), 42);
//! ```
#![forbid(unsafe_code)]

/// Framing and value codec (`zs-wire`).
#[cfg(feature = "wire")]
pub use zs_wire as wire;

/// Ciphers, handshake and records (`zs-crypto`).
#[cfg(feature = "crypto")]
pub use zs_crypto as crypto;

/// The transport seam (`zs-io`).
#[cfg(feature = "io")]
pub use zs_io as io;

/// The Linux epoll backend (`zs-io-epoll`).
#[cfg(feature = "io-epoll")]
pub use zs_io_epoll as io_epoll;

/// The tokio backend and async bridge (`zs-io-tokio`).
#[cfg(feature = "io-tokio")]
pub use zs_io_tokio as io_tokio;

/// The framework kernel (`zs-core`).
#[cfg(feature = "core")]
pub use zs_core as framework;

/// The expression engine (`zs-expr`).
#[cfg(feature = "expr")]
pub use zs_expr as expr;

/// The embedded store (`zs-db`).
#[cfg(feature = "db")]
pub use zs_db as db;

/// Virtual connections multiplexed over one physical connection (`zs-p2pvm`).
#[cfg(feature = "p2pvm")]
pub use zs_p2pvm as p2pvm;

#[cfg(feature = "xnat")]
mod xnat;
#[cfg(feature = "xnat")]
pub use xnat::{xnat_agent_in_process, xnat_from_toml, XnatNode};
#[cfg(feature = "xnat")]
pub use xnat::{xnat_visitor_from_toml, XnatVisitor};
#[cfg(feature = "xnat")]
pub use zs_xnat::{
    Agent as XnatAgent, Config as XnatConfig, Relay as XnatRelay,
    VirtualBackend as XnatVirtualBackend,
};

#[cfg(feature = "core")]
mod builder;

// Transactions: procedures registered as commands (`zs-tx`); docs in the module.
#[cfg(feature = "tx")]
pub mod tx;
/// Application services: accounts, offline messages and push (`zs-services`).
#[cfg(feature = "services")]
pub use zs_services as services;
#[cfg(feature = "services")]
#[path = "services.rs"]
mod services_facade;
#[cfg(feature = "services")]
pub use services_facade::ServicesConnection;
#[cfg(feature = "registry")]
mod registry;
#[cfg(feature = "registry")]
pub use registry::{
    cluster, connect_instance, join_cluster, FailoverClient, LoadSource, Member, META_FINGERPRINT,
};
#[cfg(feature = "db-service")]
mod db_service;
// (`core` runs zs-core over the layer, so it brings the layer too.)
#[cfg(any(feature = "secure", feature = "core"))]
pub mod secure;

#[cfg(feature = "legacy")]
pub mod legacy;
#[cfg(feature = "web")]
pub mod web;
#[cfg(feature = "db-service")]
pub use db_service::{connect_db, Access, DbClient, DbIdentity, DbService, ServiceConfig};
#[cfg(all(feature = "db-service", feature = "services"))]
pub use db_service::{AccountsIdentity, DbServiceAccountsExt};

#[cfg(feature = "core")]
pub use builder::{
    backend_by_name, backend_names, load_identity, load_or_create_identity, ClientBuilder,
    RunningServer, ServerBuilder, DEFAULT_ADDR,
};
#[cfg(feature = "core")]
pub use zs_core::{
    code, BigBody, BigChunk, CallFuture, Client, CollectLimits, Error, HandlerError, Options, Peer,
    Reconnect, Registry, Reply, Responder, Result, Server, StatsSnapshot,
};
#[cfg(feature = "crypto")]
pub use zs_crypto::{Fingerprint, SecurityProvider, ServerIdentity, SuiteId};
#[cfg(feature = "io")]
pub use zs_io::Backend;
#[cfg(feature = "wire")]
pub use zs_wire::{DataFrame, Frame, Text};
