//! XNat through the facade (feature `xnat`): relays and agents as
//! `Box<dyn XnatNode>`, each on its own runtime, started from rathole-format TOML.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let nodes = zserver::xnat_from_toml(
//!     r#"
//!     [server]
//!     bind_addr = "127.0.0.1:0"
//!     default_token = "use_a_secret"
//!     [server.services.web]
//!     bind_addr = "127.0.0.1:0"
//!     "#,
//!     dir.path(),
//! )
//! .unwrap();
//! assert_eq!(nodes.len(), 1);
//! assert_eq!(nodes[0].role(), "relay");
//! assert!(nodes[0].fingerprint().is_some());
//! // No agent serves "web" yet, so its public port is closed.
//! assert_eq!(nodes[0].public_addr("web"), None);
//! assert_eq!(nodes[0].counters()["agents_connected"], 0);
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use zs_xnat::node::Role;
use zs_xnat::Node;

/// A running relay or agent; dropping it stops it.
pub trait XnatNode: Send + Sync {
    /// `"relay"` or `"agent"`.
    fn role(&self) -> &'static str;
    /// Relay-wide or agent-wide counters.
    fn counters(&self) -> BTreeMap<&'static str, u64>;
    /// A relay's public address of `service` while an agent serves it.
    fn public_addr(&self, service: &str) -> Option<SocketAddr>;
    /// A relay's key fingerprint (what agents pin).
    fn fingerprint(&self) -> Option<zs_crypto::Fingerprint>;
}

impl XnatNode for Node {
    fn role(&self) -> &'static str {
        match Node::role(self) {
            Role::Relay(_) => "relay",
            Role::Agent(_) => "agent",
        }
    }
    fn counters(&self) -> BTreeMap<&'static str, u64> {
        Node::counters(self)
    }
    fn public_addr(&self, service: &str) -> Option<SocketAddr> {
        match Node::role(self) {
            Role::Relay(r) => r.public_addr(service),
            Role::Agent(_) => None,
        }
    }
    fn fingerprint(&self) -> Option<zs_crypto::Fingerprint> {
        match Node::role(self) {
            Role::Relay(r) => Some(r.fingerprint()),
            Role::Agent(_) => None,
        }
    }
}

/// Starts what a rathole-format TOML text describes: a relay for `[server]`,
/// an agent for `[client]` (both when both are present, relay first).
/// Relative paths (`identity_file`) resolve against `base`.
pub fn xnat_from_toml(text: &str, base: &Path) -> Result<Vec<Box<dyn XnatNode>>, String> {
    let cfg = zs_xnat::Config::parse(text, "<inline>", base).map_err(|e| e.to_string())?;
    let mut out: Vec<Box<dyn XnatNode>> = Vec::new();
    if let Some(s) = cfg.server {
        out.push(Box::new(Node::start_relay(s).map_err(|e| e.to_string())?));
    }
    if let Some(c) = cfg.client {
        out.push(Box::new(Node::start_agent(c).map_err(|e| e.to_string())?));
    }
    Ok(out)
}
