//! # zs-xnat: expose intranet TCP and UDP services through a public relay
//!
//! A **relay** (`zs xnat server --config relay.toml`) runs on a public host; an
//! **agent** (`zs xnat agent --config agent.toml`) runs next to the intranet
//! services and dials out to it. Each named mapping ("service") gets a public
//! port on the relay that **listens only while at least one agent serves it**
//! (the seed's rule); a public connection is carried to the agent that has the
//! lowest `current / max_load`, then to the service's `local_addr`.
//!
//! Security by default:
//! - every byte between agent and relay (control and data) runs inside a
//!   zs-crypto session (X25519 + AES-256-GCM / ChaCha20-Poly1305) whose relay
//!   key is **pinned by fingerprint** (`relay_fingerprint`);
//! - a service token is never sent: the agent proves it with
//!   HMAC-SHA256(token, nonce ‖ channel binding ‖ name) ([`proto::proof`]), so
//!   a proof cannot be replayed on another session;
//! - data connections present a random single-use 128-bit ticket the relay
//!   issued over the authenticated control session.
//!
//! ## Configuration: rathole's format, plus our keys
//!
//! | key | meaning |
//! |---|---|
//! | `[server] bind_addr` | where agents connect (rathole) |
//! | `[server] default_token` | token of services without one (rathole) |
//! | `[server.services.NAME] token`, `bind_addr` | per mapping (rathole) |
//! | `[server.services.NAME] type`, `[client.services.NAME] type` | `"tcp"` (default) or `"udp"` (rathole; both sides must agree): see [UDP mappings](#udp-mappings) |
//! | `[*.services.NAME] nodelay` | rathole's; accepted (TCP_NODELAY is always on) |
//! | `[server.services.NAME] idle_timeout` | ours: seconds without a byte moved before a public connection (UDP: flow) is closed (600; 60 for UDP) |
//! | `[server.services.NAME] max_connections` | ours: public connections at once (4096); UDP: flows at once |
//! | `[server] admin_token` | ours: turns on the [command API](#the-command-api) (at least 8 bytes; proven by HMAC, never sent) |
//! | `[server] store_dir` | ours: the zs-db store of mappings added through the command API (`xnat-relay.store` next to the config) |
//! | `[server] max_udp_flows` | ours: UDP flows at once over all mappings (16384) |
//! | `[server] max_runtime_mappings` | ours: mappings the command API may add (1024) |
//! | `[server] identity_file` | ours: the relay's Ed25519 seed, created on first start (`xnat-relay.key` next to the config) |
//! | `[server] pool_size` | ours: ready data connections per agent and mapping (8, like rathole) |
//! | `[server] data_reuse`, `data_reuse_age` | ours: public connections one encrypted data connection carries in turn before it is closed (100; `1`: one each, as rathole), and the age after which it is not pooled again, and closed and replaced if it reaches it in the pool (300 s); PROTOCOL.md 5.4.1 |
//! | `[server] max_agents`, `heartbeat_interval`, `handshake_timeout` | ours / rathole: 256, 10 s, 5 s |
//! | `[client] remote_addr` | the relay (rathole); ours: `remote_addrs = [..]` keeps one tunnel to **each** relay |
//! | `[client] relay_fingerprint` | ours, **required** with our session (not with `type = "tls"`): `sha3-256:<64 hex>`, printed by the relay at start and by `zs xnat fingerprint` |
//! | `[client] default_token`, `[client.services.NAME] token`, `local_addr` | rathole |
//! | `[client.services.NAME] max_load` | ours: connections this agent takes (4096) |
//! | `[client.services.NAME] proxy_protocol` | ours: `"v2"` sends the public client's address to the local service in a PROXY protocol v2 header before any byte (off) |
//! | `[client] retry_interval`, `heartbeat_timeout` | rathole's names: longest reconnect backoff (2 s), relay silence before reconnecting (40 s) |
//! | `agent_name` | ours: shown in the relay's logs |
//! | `[server] threads`, `[client] threads` | ours: threads running `zs xnat server` / `agent`: `1` (default) one thread, no cross-thread wakeups per request; `N` worker threads; `0` one per core ([`Threads`]) |
//! | `[*.transport] encryption` | ours: `"session"` (default) or `"none"`: plaintext **data** connections for trusted networks (control session, token proof and tickets stay encrypted; Linux moves the bytes with `splice(2)`); relay and agent must agree; warned at start ([`DataEncryption`], PROTOCOL.md Part 12) |
//! | `[*.transport] plain_copy` | ours: how plaintext data connections move bytes: `"splice"` (default; `splice(2)` on Linux, a buffered copy elsewhere) or `"buffered"` (`read`/`write` through one user-space buffer everywhere); each side chooses for itself ([`PlainCopy`]) |
//! | `[*.transport] type` | `"tcp"` or `"noise"`: **both** mean our encrypted, relay-pinned session over TCP (rathole's `noise` is Noise_NK: an ephemeral X25519 exchange with a pinned server key, which is what our handshake already does); `"tls"`: TLS 1.3 through rustls, see [TLS](#tls-transport); rathole's `websocket` is refused with an error |
//! | `[server.transport.tls] cert`, `key` | with `type = "tls"`: PEM files of the relay's certificate chain and private key (rathole's `pkcs12`/`pkcs12_password` are refused with the `openssl` commands that convert them) |
//! | `[client.transport.tls] trusted_root`, `hostname` | rathole's, with `type = "tls"`: the CA (or self-signed certificate) PEM the relay's certificate must chain to (required), and the name it must carry (default: the host of `remote_addr`) |
//!
//! | `[server.direct] stun_bind_addr`, `stun_alt_ip`, `stun_addr` | ours: the relay hosts the punch rendezvous for visitors and answers STUN on two addresses (or names another RFC 5780 server): see [Visitors](#visitors-and-direct-paths) |
//! | `[visitor] remote_addr`, `relay_fingerprint`, `service`, `token`, `bind_addr` | ours (`zs xnat visit`): a local port for one mapping; `direct` (true), `direct_retry` (30 s), `max_connections` (1024) |
//!
//! Errors name the file, the key and what is expected ([`config::ConfigError`]).
//!
//! ## TLS transport
//!
//! `[*.transport] type = "tls"` runs control and data connections inside TLS
//! 1.3 (rustls, ring provider) instead of our session: the agent checks the
//! relay's certificate against `trusted_root` and `hostname`; a certificate
//! that does not chain to the root, or does not name the host, is refused
//! and logged in those words (`xnat agent: cannot reach the relay ... reason="the
//! relay's TLS certificate is not signed by [client.transport.tls]
//! trusted_root ..."`). The token proof is bound to the TLS exporter (RFC
//! 8446 7.5, label `zs1 exporter`) as it is to our session's channel binding,
//! so a proof seen on one connection is worthless on another. The data path
//! is the same code over either layer (zs-crypto's sans-IO TLS session).
//! A relay with TLS still accepts our pinned session on the same port (the
//! first three bytes tell them apart: PROTOCOL.md Part 5.1), so the command
//! API, visitors and agents that keep `type = "tcp"` go on working.
//! `encryption = "none"` needs `type = "tcp"`. Our session stays the default:
//! it needs no certificate authority, and one key pin replaces the PKI.
//!
//! ```toml
//! # relay.toml
//! [server]
//! bind_addr = "0.0.0.0:2333"
//! [server.transport]
//! type = "tls"
//! [server.transport.tls]
//! cert = "relay.crt"   # PEM chain, leaf first
//! key = "relay.key"    # PEM private key
//! [server.services.web]
//! token = "s3cret"
//! bind_addr = "0.0.0.0:8080"
//!
//! # agent.toml
//! [client]
//! remote_addr = "relay.example.com:2333"
//! [client.transport]
//! type = "tls"
//! [client.transport.tls]
//! trusted_root = "ca.crt"
//! hostname = "relay.example.com"   # default: the host of remote_addr
//! [client.services.web]
//! token = "s3cret"
//! local_addr = "127.0.0.1:80"
//! ```
//!
//! ## Visitors and direct paths
//!
//! `zs xnat visit --config visitor.toml` ([`Visitor`], [`visit`]) opens a local port
//! for one mapping: each connection goes through the relay at once, and when the
//! visitor and an agent punch a direct UDP path (zs-punch; rendezvous and STUN on the
//! relay, `[server.direct]`), live connections move to QUIC on it without being
//! closed, and back to the relay when it dies. When only the relay works (both NATs
//! pick random ports, UDP blocked), the log says why and connections stay relayed.
//!
//! ## UDP mappings
//!
//! `type = "udp"` on both sides: the relay opens a public UDP socket while an
//! agent serves the mapping; each public source address is a flow carried on
//! its own data connection (same pool, tickets and least-load choice as TCP),
//! datagrams framed inside the secure session so their boundaries survive; the
//! agent sends them from one UDP socket per flow, so the local service tells
//! sources apart and its answers go back to the right one. Flows end after
//! `idle_timeout` (60 s) without a datagram; `max_connections` flows per
//! mapping and `max_udp_flows` per relay; a flow queues at most 64 datagrams
//! towards its agent (and a relay 64 MiB over all flows), so a flooding
//! source loses its own excess and nobody else's (counters
//! `udp_flows_refused`, `udp_datagrams_dropped`, gauge `udp_queued_bytes`).
//!
//! ## The command API
//!
//! With `[server] admin_token`, the relay's agent port also takes command-API
//! sessions ([`admin`]; `zs xnat add|remove|list|status`, [`AdminClient`],
//! [`admin_command`]): mappings added this way are stored (synced) in a zs-db
//! database in `store_dir` ([`store`]) and served again after a restart; a
//! config reload keeps them; the file's mapping wins a name clash. `status`
//! reports per-mapping connections, active, bytes up/down, errors and agents,
//! and every relay counter ([`Relay::stats_report`]).
//!
//! ## Mappings that end in an in-process server
//!
//! [`VirtualBackend`] is a zs-io backend without sockets: start a zs-core
//! `Server` on it (through the security layer, `zs_secure::SecureBackend`
//! over it) at any virtual address and call [`Agent::serve_in_process`]; each
//! public connection of that mapping becomes a connection of that server (the
//! public client runs the server's own handshake end to end), with no port on
//! the agent's host.
//!
//! ## Changing mappings at runtime
//!
//! `zs xnat server` and `zs xnat agent` re-read their config file when it
//! changes (checked every second) and apply its `services` tables without
//! touching the other mappings ([`Relay::reload`], [`Agent::reload`]): a new
//! mapping is served, a removed one closes its public port, a changed token or
//! public address is proved and bound afresh; connections already carried run
//! to their end. A file that does not parse is logged and the running
//! configuration stays. Other keys need a restart (logged). Change the relay
//! first, then the agents: an agent that proves a token the relay does not
//! know yet is refused and tries again at its next reload or reconnect.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use zs_xnat::{config::Config, Agent, Relay};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An intranet echo service.
//! let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let echo_addr = echo.local_addr().unwrap();
//! tokio::spawn(async move {
//!     loop {
//!         let (mut s, _) = echo.accept().await.unwrap();
//!         tokio::spawn(async move {
//!             let (mut r, mut w) = s.split();
//!             let _ = tokio::io::copy(&mut r, &mut w).await;
//!         });
//!     }
//! });
//! let dir = tempfile::tempdir().unwrap();
//! let relay_cfg = Config::parse(r#"
//!     [server]
//!     bind_addr = "127.0.0.1:0"
//!     [server.services.echo]
//!     token = "s3cret"
//!     bind_addr = "127.0.0.1:0"
//! "#, "relay.toml", dir.path()).unwrap();
//! let relay = Relay::bind(relay_cfg.server.unwrap()).await.unwrap();
//! let agent_cfg = Config::parse(&format!(r#"
//!     [client]
//!     remote_addr = "{}"
//!     relay_fingerprint = "{}"
//!     [client.services.echo]
//!     token = "s3cret"
//!     local_addr = "{echo_addr}"
//! "#, relay.local_addr(), relay.fingerprint()), "agent.toml", dir.path()).unwrap();
//! tokio::spawn(relay.clone().run());
//! tokio::spawn(Agent::new(agent_cfg.client.unwrap()).run());
//! // The public port opens once the agent registered.
//! let public = loop {
//!     if let Some(a) = relay.public_addr("echo") { break a; }
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! };
//! let mut c = tokio::net::TcpStream::connect(public).await.unwrap();
//! c.write_all(b"hello").await.unwrap();
//! let mut got = [0u8; 5];
//! c.read_exact(&mut got).await.unwrap();
//! assert_eq!(&got, b"hello");
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod config;
pub mod node;
pub mod proto;
mod pump;
pub mod relay;
mod secure;
pub mod stats;
pub mod store;
mod udp;
pub mod virt;
pub mod visit;

#[cfg(test)]
mod itest;

pub use admin::AdminClient;
pub use agent::Agent;
pub use config::{Config, ConfigError, DataEncryption, PlainCopy, Threads};
pub use node::Node;
pub use relay::Relay;
pub use virt::VirtualBackend;
pub use visit::{Visitor, VisitorConfig};

/// Runs the relay of config file `path` on a new tokio runtime until the
/// process ends (the `zs xnat server` verb). Prints the fingerprint agents pin.
pub fn run_relay_file(path: &std::path::Path) -> Result<(), String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let server = cfg
        .server
        .ok_or_else(|| format!("{}: expected a [server] table", path.display()))?;
    let rt = server.threads.runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let relay = Relay::bind(server.clone())
            .await
            .map_err(|e| format!("cannot start the relay on {}: {e}", server.bind_addr))?;
        println!(
            "zs xnat server: listening for agents on {}, relay_fingerprint = \"{}\"",
            relay.local_addr(),
            relay.fingerprint()
        );
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        if let Some(d) = visit::parse_direct(&text, &path.display().to_string()).map_err(|e| e.to_string())? {
            relay.enable_direct(&d).map_err(|e| format!("[server.direct]: {e}"))?;
        }
        let watched = relay.clone();
        let first = server.clone();
        tokio::spawn(watch_file(path.to_path_buf(), move |cfg| {
            let Some(new) = cfg.server else {
                return Err("expected a [server] table".to_string());
            };
            let mut rest = new.clone();
            rest.services = first.services.clone();
            if rest != first {
                tracing::warn!("xnat relay: only [server.services] are reloaded; restart the relay to apply the other changed keys");
            }
            watched.reload(new.services);
            Ok(())
        }));
        relay.run().await.map_err(|e| e.to_string())
    })
}

/// How often `zs xnat server|agent` look at their config file.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Polls `path` and calls `apply` with each new valid configuration (the
/// content changed and parses). An invalid file is logged once per change and
/// the running configuration stays.
async fn watch_file(
    path: std::path::PathBuf,
    mut apply: impl FnMut(Config) -> Result<(), String> + Send + 'static,
) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let now = std::fs::read(&path).ok();
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        let applied = Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(&mut apply);
        if let Err(e) = applied {
            tracing::error!(file = %path.display(), error = %e, "xnat: the changed config is not applied");
        }
    }
}

/// Runs the agent of config file `path` on a new tokio runtime until the
/// process ends (the `zs xnat agent` verb).
pub fn run_agent_file(path: &std::path::Path) -> Result<(), String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let client = cfg
        .client
        .ok_or_else(|| format!("{}: expected a [client] table", path.display()))?;
    let agent = Agent::try_new(client.clone()).map_err(|e| format!("{}: {e}", path.display()))?;
    let rt = client.threads.runtime().map_err(|e| e.to_string())?;
    let watched = agent.clone();
    rt.spawn(watch_file(path.to_path_buf(), move |cfg| {
        let Some(new) = cfg.client else {
            return Err("expected a [client] table".to_string());
        };
        let mut rest = new.clone();
        rest.services = client.services.clone();
        if rest != client {
            tracing::warn!("xnat agent: only [client.services] are reloaded; restart the agent to apply the other changed keys");
        }
        watched.reload(new.services);
        Ok(())
    }));
    rt.block_on(agent.run());
    Ok(())
}

/// The fingerprint of the relay of config file `path` (creating its identity
/// file when missing), for the agents' `relay_fingerprint`.
pub fn relay_fingerprint_file(path: &std::path::Path) -> Result<zs_crypto::Fingerprint, String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let server = cfg
        .server
        .ok_or_else(|| format!("{}: expected a [server] table", path.display()))?;
    relay::load_or_create_identity(&server.identity_file)
        .map(|id| id.fingerprint())
        .map_err(|e| e.to_string())
}

/// One command-API request (`zs xnat add|remove|list|status`).
#[derive(Debug, Clone)]
pub enum AdminCommand {
    /// Add a mapping (stored by the relay).
    Add(proto::MappingSpec),
    /// Remove a mapping added at runtime.
    Remove(String),
    /// List the mappings.
    List,
    /// Per-mapping statistics and the relay's counters.
    Stats,
}

/// Runs `cmd` against relay `addr` (key pinned by `fingerprint`, `admin_token`
/// proved) on a small runtime of its own; returns the relay's message and the
/// JSON items of a listing.
pub fn admin_command(
    addr: &str,
    fingerprint: zs_crypto::Fingerprint,
    admin_token: &str,
    cmd: AdminCommand,
) -> Result<(String, Vec<serde_json::Value>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut c = AdminClient::connect(
            addr,
            fingerprint,
            admin_token,
            std::time::Duration::from_secs(5),
        )
        .await
        .map_err(|e| format!("relay {addr}: {e}"))?;
        let r = match cmd {
            AdminCommand::Add(m) => c.add(m).await.map(|s| (s, Vec::new())),
            AdminCommand::Remove(n) => c.remove(&n).await.map(|s| (s, Vec::new())),
            AdminCommand::List => c.list().await.map(|v| (String::new(), v)),
            AdminCommand::Stats => c.stats().await.map(|v| (String::new(), v)),
        };
        r.map_err(|e| format!("relay {addr}: {e}"))
    })
}
