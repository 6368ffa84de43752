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
    /// A relay's per-mapping counters (connections, active, bytes_up,
    /// bytes_down, errors, agents); empty for an agent.
    fn mapping_stats(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>>;
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
    fn mapping_stats(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        match Node::role(self) {
            Role::Relay(r) => r.mapping_stats(),
            Role::Agent(_) => BTreeMap::new(),
        }
    }
}

/// Starts an agent from the `[client]` of a rathole-format TOML text whose
/// mappings named in `in_process` end in an in-process server instead of
/// their `local_addr`: each entry is the mapping's name, the
/// [`zs_xnat::VirtualBackend`] a zs-core `Server` was started on (as its
/// `Arc<dyn zs_io::Backend>`), and the virtual address it listens on.
///
/// ```no_run
/// use std::path::Path;
/// let backend = zserver::XnatVirtualBackend::new();
/// let at: std::net::SocketAddr = "10.255.0.1:7".parse().unwrap();
/// // With feature `core`: zs_core::Server::start(
/// //     zs_secure::compose::secure(Arc::new(backend.clone()), security),
/// //     registry, options, at) puts the application's commands behind "app".
/// let agent = zserver::xnat_agent_in_process(
///     r#"
///     [client]
///     remote_addr = "relay.example.com:2333"
///     relay_fingerprint = "sha3-256:0000000000000000000000000000000000000000000000000000000000000000"
///     [client.services.app]
///     token = "use_a_secret"
///     local_addr = "in-process"
///     "#,
///     Path::new("."),
///     &[("app", backend, at)],
/// )
/// .unwrap();
/// assert_eq!(agent.role(), "agent");
/// ```
pub fn xnat_agent_in_process(
    text: &str,
    base: &Path,
    in_process: &[(&str, zs_xnat::VirtualBackend, SocketAddr)],
) -> Result<Box<dyn XnatNode>, String> {
    let cfg = zs_xnat::Config::parse(text, "<inline>", base).map_err(|e| e.to_string())?;
    let client = cfg.client.ok_or("<inline>: expected a [client] table")?;
    for (name, _, _) in in_process {
        if !client.services.contains_key(*name) {
            return Err(format!(
                "<inline>: key client.services.{name}: required for an in-process mapping (token, max_load)"
            ));
        }
    }
    let node = Node::start_agent(client).map_err(|e| e.to_string())?;
    if let Role::Agent(a) = Node::role(&node) {
        for (name, backend, addr) in in_process {
            a.serve_in_process(name, backend.clone(), *addr);
        }
    }
    Ok(Box::new(node))
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

/// A running visitor (`zs xnat visit`): a local port whose connections reach an
/// agent's service through the relay at once, and over a punched direct path when
/// one comes up (moving live connections without closing them). Dropping it stops it.
pub trait XnatVisitor: Send + Sync {
    /// The local port.
    fn local_addr(&self) -> SocketAddr;
    /// Whether a direct path is up now.
    fn is_direct(&self) -> bool;
    /// Visitor counters: `connections`, `refused`, `started_direct`,
    /// `started_relayed`, `upgraded`, `fell_back`, `punch_attempts`, `direct_up`,
    /// `direct_lost`, `relay_failures`.
    fn counters(&self) -> BTreeMap<&'static str, u64>;
    /// Closes the direct path now, as if it died (live connections continue on
    /// the relay; punching resumes after `direct_retry`).
    fn drop_direct(&self);
}

struct VisitorNode {
    v: zs_xnat::visit::RunningVisitor,
}

impl XnatVisitor for VisitorNode {
    fn local_addr(&self) -> SocketAddr {
        self.v.visitor().local_addr()
    }
    fn is_direct(&self) -> bool {
        self.v.visitor().is_direct()
    }
    fn counters(&self) -> BTreeMap<&'static str, u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.v.visitor().stats();
        BTreeMap::from([
            ("connections", s.connections.load(Relaxed)),
            ("refused", s.refused.load(Relaxed)),
            ("started_direct", s.started_direct.load(Relaxed)),
            ("started_relayed", s.started_relayed.load(Relaxed)),
            ("upgraded", s.upgraded.load(Relaxed)),
            ("fell_back", s.fell_back.load(Relaxed)),
            ("punch_attempts", s.punch_attempts.load(Relaxed)),
            ("direct_up", s.direct_up.load(Relaxed)),
            ("direct_lost", s.direct_lost.load(Relaxed)),
            ("relay_failures", s.relay_failures.load(Relaxed)),
        ])
    }
    fn drop_direct(&self) {
        self.v.visitor().drop_direct();
    }
}

/// Starts the visitor a `[visitor]` TOML text describes, on its own runtime.
///
/// A connection to its port goes through the relay at once; when the relay cannot
/// be reached and no direct path is up, it is closed at once (not after a timeout):
///
/// ```
/// use std::io::Read;
/// let v = zserver::xnat_visitor_from_toml(
///     r#"
///     [visitor]
///     remote_addr = "127.0.0.1:9"   # nothing listens there
///     relay_fingerprint = "sha3-256:0000000000000000000000000000000000000000000000000000000000000000"
///     service = "web"
///     token = "use_a_secret"
///     bind_addr = "127.0.0.1:0"
///     direct = false
///     "#,
/// )
/// .unwrap();
/// assert!(!v.is_direct());
/// let mut s = std::net::TcpStream::connect(v.local_addr()).unwrap();
/// let mut buf = [0u8; 16];
/// assert_eq!(s.read(&mut buf).unwrap_or(0), 0); // closed: no path to the service
/// assert_eq!(v.counters()["relay_failures"], 1);
/// ```
pub fn xnat_visitor_from_toml(text: &str) -> Result<Box<dyn XnatVisitor>, String> {
    let cfg = zs_xnat::VisitorConfig::parse(text, "<inline>").map_err(|e| e.to_string())?;
    let v = zs_xnat::visit::RunningVisitor::start(cfg)
        .map_err(|e| format!("<inline>: key visitor.bind_addr: {e}"))?;
    Ok(Box::new(VisitorNode { v }))
}
