//! Configuration: rathole's TOML format plus our keys.
//!
//! A config error names the file, the key and what is expected, e.g.
//! `relay.toml: key server.services.web.bind_addr: expected a socket address like "0.0.0.0:8080", got "web"`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};
use zs_crypto::Fingerprint;

/// A configuration error: file, key, expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<inline>`).
    pub file: String,
    /// The dotted key (empty for a syntax error).
    pub key: String,
    /// What is expected / what went wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: key {}: {}", self.file, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Relay (`[server]`) settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `bind_addr`: where agents connect.
    pub bind_addr: SocketAddr,
    /// `default_token`: token of services that set none.
    pub default_token: Option<String>,
    /// Ours: `identity_file`, the relay's key seed (created when missing).
    pub identity_file: PathBuf,
    /// Ours: `pool_size`, data connections kept ready per agent and service (default 8).
    pub pool_size: usize,
    /// Ours: `data_reuse`, public connections one data connection may carry
    /// in turn (default 100; 1: one each, the connection closes with its
    /// public connection). Only encrypted data connections are reused.
    pub data_reuse: u32,
    /// Ours: `data_reuse_age` seconds: a data connection older than this is
    /// not pooled again after a public connection, and one that reaches it
    /// while waiting in the pool is closed and replaced (default 300).
    pub data_reuse_age: Duration,
    /// Ours: `max_agents`, control connections at once (default 256).
    pub max_agents: usize,
    /// Ours: `heartbeat_interval` seconds (rathole's key, default 10).
    pub heartbeat_interval: Duration,
    /// Ours: `handshake_timeout` seconds (default 5).
    pub handshake_timeout: Duration,
    /// Services by name.
    pub services: BTreeMap<String, ServerService>,
    /// Ours: the command API and the store of mappings added through it.
    pub admin: AdminConfig,
    /// Ours: `[server.transport] encryption` (see [`DataEncryption`]).
    pub data_encryption: DataEncryption,
    /// Ours: `[server.transport] plain_copy` (see [`PlainCopy`]).
    pub plain_copy: PlainCopy,
    /// `[server.transport] type = "tls"`: agents connect with TLS 1.3 and
    /// this certificate (see [`ServerTls`]); `None`: our session only.
    pub tls: Option<ServerTls>,
    /// Ours: `threads`, the tokio worker threads of `zs xnat server` (see
    /// [`Threads`]).
    pub threads: Threads,
}

/// `[server] threads` / `[client] threads` (ours): how many threads run the
/// relay's or agent's connections in `zs xnat server|agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// Absent or `1` (default): one thread runs every connection (tokio's
    /// current-thread runtime): a request crossing the tunnel wakes no
    /// other thread, which is what decided the default (see
    /// docs/ARCHITECTURE.md, zs-xnat).
    #[default]
    One,
    /// `N` > 1: N worker threads with work stealing; `0`: one per core.
    Many(usize),
}

impl Threads {
    /// The tokio runtime for this setting.
    pub fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Threads::One => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Threads::Many(n) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                if n > 0 {
                    b.worker_threads(n);
                }
                b.enable_all().build()
            }
        }
    }
}

/// `[server.transport.tls]` (with `type = "tls"`): the relay's certificate.
/// rathole takes a PKCS#12 file here (`pkcs12`, `pkcs12_password`); we take
/// PEM files, the form rustls and Let's Encrypt use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// `cert`: PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `key`: PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[client.transport.tls]` (with `type = "tls"`; rathole's keys): how the
/// agent checks the relay's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// `trusted_root`: PEM file of the CA certificate(s) (or the relay's
    /// self-signed certificate) the relay's certificate must chain to.
    pub trusted_root: PathBuf,
    /// `hostname`: the name the relay's certificate must carry (default: the
    /// host part of each `remote_addr`).
    pub hostname: Option<String>,
}

/// Ours: `[server] admin_token`, `store_dir`, `max_udp_flows`, `max_runtime_mappings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// `admin_token`: enables the command API (`zs xnat add|remove|list|status`);
    /// proven by HMAC over a fresh challenge, never sent. `None`: API off.
    pub admin_token: Option<String>,
    /// `store_dir`: the zs-db store of the mappings added at runtime (default
    /// `xnat-relay.store` next to the config; used only with `admin_token`).
    pub store_dir: PathBuf,
    /// `max_udp_flows`: UDP flows at once over all mappings (default 16384).
    pub max_udp_flows: usize,
    /// `max_runtime_mappings`: mappings the command API may add (default 1024).
    pub max_runtime_mappings: usize,
}

impl AdminConfig {
    /// The defaults: no command API, `store_dir` under `base`.
    pub fn defaults(base: &Path) -> AdminConfig {
        AdminConfig {
            admin_token: None,
            store_dir: base.join("xnat-relay.store"),
            max_udp_flows: 16_384,
            max_runtime_mappings: 1024,
        }
    }
}

/// One `[server.services.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerService {
    /// `token` (or the default token).
    pub token: String,
    /// `bind_addr`: the public port.
    pub bind_addr: SocketAddr,
    /// Ours: `idle_timeout` seconds without a byte moved before a public
    /// connection is closed (default 600).
    pub idle_timeout: Duration,
    /// Ours: `max_connections` public connections at once (default 4096); for
    /// a UDP mapping, the most flows (public source addresses) at once.
    pub max_connections: usize,
    /// `type`: TCP (default) or UDP (per-source flows).
    pub kind: Kind,
}

/// A mapping's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// `type = "tcp"`: one public TCP connection per data connection.
    #[default]
    Tcp,
    /// `type = "udp"`: each public source address is a flow carried on its own
    /// data connection; datagrams keep their boundaries.
    Udp,
}

impl Kind {
    /// `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
        }
    }
}

/// Agent (`[client]`) settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `remote_addr`: the relay (ours: also `remote_addrs`, a list, one tunnel each).
    pub remote_addrs: Vec<String>,
    /// Ours: `relay_fingerprint`, the pinned relay key (`sha3-256:` + 64
    /// hex); required with our session, refused with `type = "tls"` (then
    /// [`ClientConfig::tls`] says how the relay is checked).
    pub relay_fingerprint: Option<Fingerprint>,
    /// `default_token`.
    pub default_token: Option<String>,
    /// `retry_interval` seconds: the longest reconnect backoff (default 2).
    pub retry_max: Duration,
    /// `heartbeat_timeout` seconds (rathole's key, default 40).
    pub heartbeat_timeout: Duration,
    /// Ours: `agent_name` (logs).
    pub agent_name: String,
    /// Services by name.
    pub services: BTreeMap<String, ClientService>,
    /// Ours: `[client.transport] encryption` (see [`DataEncryption`]).
    pub data_encryption: DataEncryption,
    /// Ours: `[client.transport] plain_copy` (see [`PlainCopy`]).
    pub plain_copy: PlainCopy,
    /// `[client.transport] type = "tls"`: TLS 1.3 to the relay (see [`ClientTls`]).
    pub tls: Option<ClientTls>,
    /// Ours: `threads`, the tokio worker threads of `zs xnat agent` (see
    /// [`Threads`]).
    pub threads: Threads,
}

/// One `[client.services.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientService {
    /// `token` (or the default token).
    pub token: String,
    /// `local_addr`: the intranet service.
    pub local_addr: String,
    /// Ours: `max_load`, connections this agent accepts (default 4096).
    pub max_load: u32,
    /// Ours: `proxy_protocol = "v2"` sends a PROXY protocol v2 header with the
    /// public client's address to the local service before any byte (off by
    /// default; the service must expect it).
    pub proxy_protocol: bool,
    /// `type`: must match the relay's mapping.
    pub kind: Kind,
}

/// The whole file: a relay, an agent, or both.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`.
    pub server: Option<ServerConfig>,
    /// `[client]`.
    pub client: Option<ClientConfig>,
}

struct P<'a> {
    file: &'a str,
}

impl P<'_> {
    fn e(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: key.to_string(),
            message: msg.into(),
        }
    }

    fn table<'t>(
        &self,
        t: &'t Table,
        k: &str,
        path: &str,
    ) -> Result<Option<&'t Table>, ConfigError> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::Table(x)) => Ok(Some(x)),
            Some(v) => Err(self.e(path, format!("expected a table, got {}", v.type_str()))),
        }
    }

    fn str<'t>(&self, t: &'t Table, k: &str, path: &str) -> Result<Option<&'t str>, ConfigError> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.e(path, format!("expected a string, got {}", v.type_str()))),
        }
    }

    fn addr(&self, t: &Table, k: &str, path: &str) -> Result<Option<SocketAddr>, ConfigError> {
        match self.str(t, k, path)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| {
                self.e(
                    path,
                    format!("expected a socket address like \"0.0.0.0:8080\", got {s:?}"),
                )
            }),
        }
    }

    fn uint(&self, t: &Table, k: &str, path: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::Integer(i)) if *i >= 0 && (*i as u64) <= max => Ok(Some(*i as u64)),
            Some(v) => Err(self.e(
                path,
                format!("expected an integer from 0 to {max}, got {v}"),
            )),
        }
    }

    fn bool(&self, t: &Table, k: &str, path: &str) -> Result<Option<bool>, ConfigError> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.e(path, format!("expected true or false, got {v}"))),
        }
    }

    fn only(&self, t: &Table, prefix: &str, known: &[&str]) -> Result<(), ConfigError> {
        for k in t.keys() {
            if !known.contains(&k.as_str()) {
                return Err(self.e(
                    &format!("{prefix}.{k}"),
                    format!("unknown key; expected one of {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// `[X.transport]`: `type` is "tcp" or "noise" (both: our encrypted
    /// session over TCP) or "tls" (TLS 1.3 through rustls; returns the
    /// `[X.transport.tls]` table); rathole's `tcp`/`noise` option tables are
    /// accepted.
    fn transport<'t>(&self, t: &'t Table, prefix: &str) -> Result<Option<&'t Table>, ConfigError> {
        let Some(tr) = self.table(t, "transport", &format!("{prefix}.transport"))? else {
            return Ok(None);
        };
        let p = format!("{prefix}.transport");
        self.only(
            tr,
            &p,
            &["type", "tcp", "noise", "tls", "encryption", "plain_copy"],
        )?;
        match self.str(tr, "type", &format!("{p}.type"))? {
            None | Some("tcp") | Some("noise") => Ok(None),
            Some("tls") => {
                if self.str(tr, "encryption", &format!("{p}.encryption"))? == Some("none") {
                    return Err(self.e(
                        &format!("{p}.encryption"),
                        "expected \"session\" with type = \"tls\" (a TLS data connection stays inside TLS; plaintext data connections need type = \"tcp\")",
                    ));
                }
                self.table(tr, "tls", &format!("{p}.tls"))?.map(Some).ok_or_else(|| {
                    self.e(
                        &format!("{p}.tls"),
                        if prefix == "server" {
                            "required with type = \"tls\": a table with cert and key (PEM files)"
                        } else {
                            "required with type = \"tls\": a table with trusted_root (PEM file) and optionally hostname"
                        },
                    )
                })
            }
            Some(other) => Err(self.e(
                &format!("{p}.type"),
                format!(
                    "expected \"tcp\" or \"noise\" (both run our encrypted, relay-pinned session over TCP) or \"tls\" (TLS 1.3 through rustls); {other:?} is not supported"
                ),
            )),
        }
    }

    /// `[server.transport.tls]`: `cert` and `key` PEM files.
    fn server_tls(&self, t: &Table, base: &Path) -> Result<ServerTls, ConfigError> {
        let p = "server.transport.tls";
        if t.contains_key("pkcs12") || t.contains_key("pkcs12_password") {
            return Err(self.e(
                &format!("{p}.pkcs12"),
                "expected cert and key PEM files instead of a PKCS#12 file; convert it with `openssl pkcs12 -in identity.p12 -nokeys -out cert.pem` and `openssl pkcs12 -in identity.p12 -nocerts -nodes -out key.pem`",
            ));
        }
        self.only(t, p, &["cert", "key"])?;
        let path = |k: &str, what: &str| -> Result<PathBuf, ConfigError> {
            self.str(t, k, &format!("{p}.{k}"))?
                .map(|f| base.join(f))
                .ok_or_else(|| self.e(&format!("{p}.{k}"), format!("required: {what}")))
        };
        Ok(ServerTls {
            cert: path(
                "cert",
                "the PEM file of the relay's certificate chain, leaf first",
            )?,
            key: path("key", "the PEM file of the relay's private key")?,
        })
    }

    /// `[client.transport.tls]`: `trusted_root` and `hostname`.
    fn client_tls(&self, t: &Table, base: &Path) -> Result<ClientTls, ConfigError> {
        let p = "client.transport.tls";
        self.only(t, p, &["trusted_root", "hostname"])?;
        let trusted_root = self
            .str(t, "trusted_root", &format!("{p}.trusted_root"))?
            .map(|f| base.join(f))
            .ok_or_else(|| {
                self.e(
                    &format!("{p}.trusted_root"),
                    "required: the PEM file of the CA (or the relay's self-signed certificate) that signed the relay's certificate",
                )
            })?;
        let hostname = self
            .str(t, "hostname", &format!("{p}.hostname"))?
            .map(String::from);
        if let Some(h) = &hostname {
            if rustls::pki_types::ServerName::try_from(h.as_str()).is_err() {
                return Err(self.e(
                    &format!("{p}.hostname"),
                    format!("expected a DNS name or an IP address, got {h:?}"),
                ));
            }
        }
        Ok(ClientTls {
            trusted_root,
            hostname,
        })
    }

    fn service_type(&self, s: &Table, path: &str) -> Result<Kind, ConfigError> {
        match self.str(s, "type", &format!("{path}.type"))? {
            None | Some("tcp") => Ok(Kind::Tcp),
            Some("udp") => Ok(Kind::Udp),
            Some(other) => Err(self.e(
                &format!("{path}.type"),
                format!("expected \"tcp\" or \"udp\", got {other:?}"),
            )),
        }
    }

    fn secs(&self, t: &Table, k: &str, path: &str, default: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(
            self.uint(t, k, path, 86_400 * 365)?.unwrap_or(default),
        ))
    }
}

fn check_name(p: &P<'_>, name: &str, path: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > crate::proto::MAX_NAME {
        return Err(p.e(path, "expected a service name of 1 to 128 bytes"));
    }
    Ok(())
}

/// What every `[server.services.NAME]` and `[client.services.NAME]` table
/// shares: a valid name, only known keys (`token`, `type`, `nodelay` and the
/// side's own `keys`), a supported `type`, and a non-empty token that falls back
/// to the side's `default_token`. Returns the table's path, the table and the token.
fn service_table<'t>(
    p: &P<'_>,
    side: &str,
    name: &str,
    v: &'t Value,
    keys: &[&str],
    default_token: &Option<String>,
) -> Result<(String, &'t Table, String, Kind), ConfigError> {
    let path = format!("{side}.services.{name}");
    check_name(p, name, &path)?;
    let Value::Table(t) = v else {
        return Err(p.e(&path, "expected a table"));
    };
    let mut known = vec!["token", "type", "nodelay"];
    known.extend_from_slice(keys);
    p.only(t, &path, &known)?;
    let kind = p.service_type(t, &path)?;
    p.bool(t, "nodelay", &format!("{path}.nodelay"))?;
    let token = match p.str(t, "token", &format!("{path}.token"))? {
        Some(t) => t.to_string(),
        None => default_token.clone().ok_or_else(|| {
            p.e(
                &format!("{path}.token"),
                format!("required when {side}.default_token is not set"),
            )
        })?,
    };
    if token.is_empty() {
        return Err(p.e(&format!("{path}.token"), "expected a non-empty token"));
    }
    Ok((path, t, token, kind))
}

impl Config {
    /// Reads and parses `path` (relative `identity_file` resolves against its directory).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses `text`; `file` names it in errors; `base` resolves relative paths.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let p = P { file };
        let root: Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            file: file.to_string(),
            key: String::new(),
            message: format!("not valid TOML: {}", e.message()),
        })?;
        p.only(&root, "", &["server", "client"]).map_err(|mut e| {
            e.key = e.key.trim_start_matches('.').to_string();
            e
        })?;
        let server = match p.table(&root, "server", "server")? {
            None => None,
            Some(s) => Some(parse_server(&p, s, base)?),
        };
        let client = match p.table(&root, "client", "client")? {
            None => None,
            Some(c) => Some(parse_client(&p, c, base)?),
        };
        if server.is_none() && client.is_none() {
            return Err(p.e("", "expected a [server] or a [client] table"));
        }
        Ok(Config { server, client })
    }
}

fn parse_server(p: &P<'_>, s: &Table, base: &Path) -> Result<ServerConfig, ConfigError> {
    p.only(
        s,
        "server",
        &[
            "bind_addr",
            "default_token",
            "services",
            "transport",
            "heartbeat_interval",
            "identity_file",
            "pool_size",
            "data_reuse",
            "data_reuse_age",
            "max_agents",
            "handshake_timeout",
            "admin_token",
            "store_dir",
            "max_udp_flows",
            "max_runtime_mappings",
            "direct",
            "threads",
        ],
    )?;
    let bind_addr = p.addr(s, "bind_addr", "server.bind_addr")?.ok_or_else(|| {
        p.e(
            "server.bind_addr",
            "required: the address agents connect to, like \"0.0.0.0:2333\"",
        )
    })?;
    let default_token = p
        .str(s, "default_token", "server.default_token")?
        .map(String::from);
    let tls = match p.transport(s, "server")? {
        Some(t) => Some(p.server_tls(t, base)?),
        None => None,
    };
    let data_encryption = p.data_encryption(s, "server")?;
    let plain_copy = p.plain_copy(s, "server")?;
    let identity_file = base.join(
        p.str(s, "identity_file", "server.identity_file")?
            .unwrap_or("xnat-relay.key"),
    );
    let pool_size = p.uint(s, "pool_size", "server.pool_size", 64)?.unwrap_or(8) as usize;
    let data_reuse = p
        .uint(s, "data_reuse", "server.data_reuse", 1_000_000)?
        .unwrap_or(100)
        .max(1) as u32;
    let data_reuse_age = p.secs(s, "data_reuse_age", "server.data_reuse_age", 300)?;
    let max_agents = p
        .uint(s, "max_agents", "server.max_agents", 100_000)?
        .unwrap_or(256) as usize;
    let heartbeat_interval = p.secs(s, "heartbeat_interval", "server.heartbeat_interval", 10)?;
    let handshake_timeout = p.secs(s, "handshake_timeout", "server.handshake_timeout", 5)?;
    let mut services = BTreeMap::new();
    if let Some(svcs) = p.table(s, "services", "server.services")? {
        for (name, v) in svcs {
            let (path, t, token, kind) = service_table(
                p,
                "server",
                name,
                v,
                &["bind_addr", "idle_timeout", "max_connections"],
                &default_token,
            )?;
            let bind_addr = p
                .addr(t, "bind_addr", &format!("{path}.bind_addr"))?
                .ok_or_else(|| {
                    p.e(
                        &format!("{path}.bind_addr"),
                        "required: the public address, like \"0.0.0.0:8080\"",
                    )
                })?;
            services.insert(
                name.clone(),
                ServerService {
                    token,
                    bind_addr,
                    // rathole's UDP flows end after 60 s without a datagram.
                    idle_timeout: p.secs(
                        t,
                        "idle_timeout",
                        &format!("{path}.idle_timeout"),
                        if kind == Kind::Udp { 60 } else { 600 },
                    )?,
                    kind,
                    max_connections: p
                        .uint(
                            t,
                            "max_connections",
                            &format!("{path}.max_connections"),
                            1_000_000,
                        )?
                        .unwrap_or(4096) as usize,
                },
            );
        }
    }
    let admin = parse_admin(p, s, base)?;
    Ok(ServerConfig {
        bind_addr,
        default_token,
        identity_file,
        pool_size,
        data_reuse,
        data_reuse_age,
        max_agents,
        heartbeat_interval,
        handshake_timeout,
        services,
        admin,
        data_encryption,
        plain_copy,
        tls,
        threads: p.threads(s, "server")?,
    })
}

/// `[server] admin_token`, `store_dir`, `max_udp_flows`.
fn parse_admin(p: &P<'_>, s: &Table, base: &Path) -> Result<AdminConfig, ConfigError> {
    let mut a = AdminConfig::defaults(base);
    if let Some(t) = p.str(s, "admin_token", "server.admin_token")? {
        if t.len() < 8 {
            return Err(p.e(
                "server.admin_token",
                "expected a token of at least 8 bytes (it guards adding and removing mappings)",
            ));
        }
        a.admin_token = Some(t.to_string());
    }
    if let Some(d) = p.str(s, "store_dir", "server.store_dir")? {
        a.store_dir = base.join(d);
    }
    if let Some(n) = p.uint(s, "max_udp_flows", "server.max_udp_flows", 1_000_000)? {
        a.max_udp_flows = n as usize;
    }
    if let Some(n) = p.uint(
        s,
        "max_runtime_mappings",
        "server.max_runtime_mappings",
        100_000,
    )? {
        a.max_runtime_mappings = n as usize;
    }
    Ok(a)
}

fn parse_client(p: &P<'_>, c: &Table, base: &Path) -> Result<ClientConfig, ConfigError> {
    p.only(
        c,
        "client",
        &[
            "remote_addr",
            "remote_addrs",
            "default_token",
            "services",
            "transport",
            "retry_interval",
            "heartbeat_timeout",
            "relay_fingerprint",
            "agent_name",
            "threads",
        ],
    )?;
    let mut remote_addrs = Vec::new();
    if let Some(a) = p.str(c, "remote_addr", "client.remote_addr")? {
        remote_addrs.push(a.to_string());
    }
    if let Some(v) = c.get("remote_addrs") {
        let bad = || {
            p.e(
                "client.remote_addrs",
                "expected a list of \"host:port\" strings",
            )
        };
        let Value::Array(a) = v else {
            return Err(bad());
        };
        for x in a {
            remote_addrs.push(x.as_str().ok_or_else(bad)?.to_string());
        }
    }
    if remote_addrs.is_empty() {
        return Err(p.e(
            "client.remote_addr",
            "required: the relay address, like \"relay.example.com:2333\"",
        ));
    }
    for a in &remote_addrs {
        if a.rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .is_none()
        {
            return Err(p.e(
                "client.remote_addr",
                format!("expected \"host:port\", got {a:?}"),
            ));
        }
    }
    let tls = match p.transport(c, "client")? {
        Some(t) => Some(p.client_tls(t, base)?),
        None => None,
    };
    let data_encryption = p.data_encryption(c, "client")?;
    let plain_copy = p.plain_copy(c, "client")?;
    let fp_text = p.str(c, "relay_fingerprint", "client.relay_fingerprint")?;
    let relay_fingerprint = match (fp_text, &tls) {
        (None, None) => {
            return Err(p.e(
                "client.relay_fingerprint",
                "required: the relay key fingerprint (\"sha3-256:<64 hex>\"), printed by `zs xnat server` at start and by `zs xnat fingerprint --config RELAY.toml`",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(p.e(
                "client.relay_fingerprint",
                "expected no relay_fingerprint with [client.transport] type = \"tls\": the relay is checked by [client.transport.tls] trusted_root and hostname (remove one of the two)",
            ))
        }
        (None, Some(_)) => None,
        (Some(fp_text), None) => Some(fp_text.parse::<Fingerprint>().map_err(|_| {
            p.e(
                "client.relay_fingerprint",
                format!("expected \"sha3-256:\" and 64 hex digits, got {fp_text:?}"),
            )
        })?),
    };
    let default_token = p
        .str(c, "default_token", "client.default_token")?
        .map(String::from);
    let retry_max = p
        .secs(c, "retry_interval", "client.retry_interval", 2)?
        .max(Duration::from_millis(200));
    let heartbeat_timeout = p.secs(c, "heartbeat_timeout", "client.heartbeat_timeout", 40)?;
    let agent_name = p
        .str(c, "agent_name", "client.agent_name")?
        .unwrap_or("agent")
        .to_string();
    let mut services = BTreeMap::new();
    if let Some(svcs) = p.table(c, "services", "client.services")? {
        for (name, v) in svcs {
            let (path, t, token, kind) = service_table(
                p,
                "client",
                name,
                v,
                &["local_addr", "max_load", "retry_interval", "proxy_protocol"],
                &default_token,
            )?;
            let local_addr = p
                .str(t, "local_addr", &format!("{path}.local_addr"))?
                .ok_or_else(|| {
                    p.e(
                        &format!("{path}.local_addr"),
                        "required: the intranet service, like \"127.0.0.1:80\"",
                    )
                })?
                .to_string();
            let proxy_protocol =
                match p.str(t, "proxy_protocol", &format!("{path}.proxy_protocol"))? {
                    None => false,
                    Some("v2") => true,
                    Some(other) => {
                        return Err(p.e(
                            &format!("{path}.proxy_protocol"),
                            format!(
                            "expected \"v2\" (PROXY protocol v1 is not supported), got {other:?}"
                        ),
                        ))
                    }
                };
            if proxy_protocol && kind == Kind::Udp {
                return Err(p.e(
                    &format!("{path}.proxy_protocol"),
                    "expected no proxy_protocol on a UDP mapping (the header is sent on TCP connections only)",
                ));
            }
            let max_load = p
                .uint(t, "max_load", &format!("{path}.max_load"), u32::MAX as u64)?
                .unwrap_or(4096)
                .max(1) as u32;
            services.insert(
                name.clone(),
                ClientService {
                    token,
                    local_addr,
                    max_load,
                    proxy_protocol,
                    kind,
                },
            );
        }
    }
    Ok(ClientConfig {
        remote_addrs,
        relay_fingerprint,
        default_token,
        retry_max,
        heartbeat_timeout,
        agent_name,
        services,
        data_encryption,
        plain_copy,
        tls,
        threads: p.threads(c, "client")?,
    })
}

// --- [*.transport] encryption (the data path's plaintext opt-out) -----------

/// `[*.transport] encryption`: what protects the **data** connections (the
/// control connection and the ticket that claims each data connection always
/// run inside the relay-pinned session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataEncryption {
    /// `"session"` (default): every byte inside the relay-pinned zs-crypto
    /// session (AES-256-GCM).
    #[default]
    Session,
    /// `"none"`: after the encrypted ticket exchange, a data connection
    /// carries the public connection's bytes in clear (Linux: `splice(2)`,
    /// no copy through user space). For trusted networks only; relay and
    /// agent must both set it (a mismatch fails each connection with an
    /// error naming this key); logged as a warning at start.
    None,
}

/// `[*.transport] plain_copy`: how a **plaintext** data connection
/// (`encryption = "none"`) moves bytes between its two sockets. Each side
/// chooses for itself (nothing of it crosses the wire); without
/// `encryption = "none"` it has no effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainCopy {
    /// `"splice"` (default): on Linux the pages go socket -> pipe -> socket
    /// with `splice(2)` and never enter user space; elsewhere the same as
    /// `"buffered"`.
    #[default]
    Splice,
    /// `"buffered"`: `read`/`write` through one reused buffer (16 KiB growing
    /// to 256 KiB) on every system: for kernels or filters where splice
    /// misbehaves, and to measure what splice buys (`bench xnat`,
    /// `splice_vs_rw`).
    Buffered,
}

impl P<'_> {
    fn threads(&self, t: &Table, prefix: &str) -> Result<Threads, ConfigError> {
        Ok(
            match self.uint(t, "threads", &format!("{prefix}.threads"), 1024)? {
                None | Some(1) => Threads::One,
                Some(n) => Threads::Many(n as usize),
            },
        )
    }

    fn plain_copy(&self, t: &Table, prefix: &str) -> Result<PlainCopy, ConfigError> {
        let Some(tr) = self.table(t, "transport", &format!("{prefix}.transport"))? else {
            return Ok(PlainCopy::Splice);
        };
        let key = format!("{prefix}.transport.plain_copy");
        match self.str(tr, "plain_copy", &key)? {
            None | Some("splice") => Ok(PlainCopy::Splice),
            Some("buffered") => Ok(PlainCopy::Buffered),
            Some(other) => Err(self.e(
                &key,
                format!(
                    "expected \"splice\" (default: splice(2) on Linux) or \"buffered\" (read/write through a user-space buffer), got {other:?}"
                ),
            )),
        }
    }

    fn data_encryption(&self, t: &Table, prefix: &str) -> Result<DataEncryption, ConfigError> {
        let Some(tr) = self.table(t, "transport", &format!("{prefix}.transport"))? else {
            return Ok(DataEncryption::Session);
        };
        let key = format!("{prefix}.transport.encryption");
        match self.str(tr, "encryption", &key)? {
            None | Some("session") => Ok(DataEncryption::Session),
            Some("none") => Ok(DataEncryption::None),
            Some(other) => Err(self.e(
                &key,
                format!(
                    "expected \"session\" (default: data inside the relay-pinned session) or \"none\" (plaintext data connections, trusted networks only), got {other:?}"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, "x.toml", Path::new("/etc/zs"))
    }

    const FP: &str = "sha3-256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn rathole_tls_transport_parses_with_paths_next_to_the_config() {
        let c = parse(
            "[server]\nbind_addr = \"0.0.0.0:2333\"\n[server.transport]\ntype = \"tls\"\n[server.transport.tls]\ncert = \"relay.crt\"\nkey = \"/k/relay.key\"\n",
        )
        .unwrap();
        let tls = c.server.unwrap().tls.unwrap();
        assert_eq!(tls.cert, Path::new("/etc/zs/relay.crt"));
        assert_eq!(tls.key, Path::new("/k/relay.key"));
        let c = parse(
            "[client]\nremote_addr = \"relay.example.com:2333\"\n[client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = \"ca.pem\"\nhostname = \"relay.example.com\"\n",
        )
        .unwrap();
        let c = c.client.unwrap();
        assert_eq!(c.relay_fingerprint, None);
        let tls = c.tls.unwrap();
        assert_eq!(tls.trusted_root, Path::new("/etc/zs/ca.pem"));
        assert_eq!(tls.hostname.as_deref(), Some("relay.example.com"));
        // Without type = "tls", a tls table is rathole's leftover: no TLS.
        let c = parse(&format!(
            "[client]\nremote_addr = \"r:1\"\nrelay_fingerprint = \"{FP}\"\n[client.transport]\ntype = \"noise\"\n[client.transport.tls]\ntrusted_root = \"ca.pem\"\n"
        ))
        .unwrap();
        assert_eq!(c.client.unwrap().tls, None);
    }

    #[test]
    fn threads_default_to_one_and_parse() {
        let c = parse("[server]\nbind_addr = \"0.0.0.0:1\"\n").unwrap();
        assert_eq!(c.server.unwrap().threads, Threads::One);
        let c = parse("[server]\nbind_addr = \"0.0.0.0:1\"\nthreads = 0\n").unwrap();
        assert_eq!(c.server.unwrap().threads, Threads::Many(0));
        let c = parse(&format!(
            "[client]\nremote_addr = \"r:1\"\nrelay_fingerprint = \"{FP}\"\nthreads = 4\n"
        ))
        .unwrap();
        assert_eq!(c.client.unwrap().threads, Threads::Many(4));
        let e = parse("[server]\nbind_addr = \"0.0.0.0:1\"\nthreads = -2\n").unwrap_err();
        assert_eq!(e.key, "server.threads");
        // Both kinds of runtime run a task.
        for t in [Threads::One, Threads::Many(2)] {
            assert_eq!(t.runtime().unwrap().block_on(async { 7 }), 7);
        }
    }

    #[test]
    fn tls_transport_errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[server]\nbind_addr = \"0.0.0.0:1\"\n[server.transport]\ntype = \"tls\"\n",
                "server.transport.tls",
                "cert and key",
            ),
            (
                "[server]\nbind_addr = \"0.0.0.0:1\"\n[server.transport]\ntype = \"tls\"\n[server.transport.tls]\npkcs12 = \"id.p12\"\npkcs12_password = \"x\"\n",
                "server.transport.tls.pkcs12",
                "openssl pkcs12",
            ),
            (
                "[server]\nbind_addr = \"0.0.0.0:1\"\n[server.transport]\ntype = \"tls\"\n[server.transport.tls]\ncert = \"c\"\n",
                "server.transport.tls.key",
                "required",
            ),
            (
                "[server]\nbind_addr = \"0.0.0.0:1\"\n[server.transport]\ntype = \"tls\"\nencryption = \"none\"\n[server.transport.tls]\ncert = \"c\"\nkey = \"k\"\n",
                "server.transport.encryption",
                "stays inside TLS",
            ),
            (
                "[client]\nremote_addr = \"r:1\"\n[client.transport]\ntype = \"tls\"\n[client.transport.tls]\nhostname = \"r\"\n",
                "client.transport.tls.trusted_root",
                "required",
            ),
            (
                "[client]\nremote_addr = \"r:1\"\n[client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = \"ca.pem\"\nhostname = \"not a name!\"\n",
                "client.transport.tls.hostname",
                "DNS name",
            ),
        ];
        for (text, key, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, *key, "{text}");
            assert!(e.message.contains(needle), "{}: {}", key, e.message);
        }
        let e = parse(&format!(
            "[client]\nremote_addr = \"r:1\"\nrelay_fingerprint = \"{FP}\"\n[client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = \"ca.pem\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "client.relay_fingerprint");
        assert!(
            e.message.contains("trusted_root and hostname"),
            "{}",
            e.message
        );
    }

    #[test]
    fn rathole_server_config_parses() {
        let c = parse(
            r#"
[server]
bind_addr = "0.0.0.0:2333"
default_token = "dt"
[server.transport]
type = "tcp"
[server.services.ssh]
token = "t1"
bind_addr = "0.0.0.0:5202"
[server.services.web]
bind_addr = "127.0.0.1:8080"
idle_timeout = 60
"#,
        )
        .unwrap();
        let s = c.server.unwrap();
        assert_eq!(s.bind_addr, "0.0.0.0:2333".parse().unwrap());
        assert_eq!(s.services["ssh"].token, "t1");
        assert_eq!(s.services["web"].token, "dt");
        assert_eq!(s.services["web"].idle_timeout, Duration::from_secs(60));
        assert_eq!(s.services["ssh"].idle_timeout, Duration::from_secs(600));
        assert_eq!(s.identity_file, Path::new("/etc/zs/xnat-relay.key"));
        assert!(c.client.is_none());
    }

    #[test]
    fn rathole_client_config_parses_with_our_fingerprint() {
        let c = parse(&format!(
            r#"
[client]
remote_addr = "relay.example.com:2333"
default_token = "dt"
relay_fingerprint = "{FP}"
[client.transport]
type = "noise"
[client.services.ssh]
local_addr = "127.0.0.1:22"
max_load = 10
"#
        ))
        .unwrap();
        let cl = c.client.unwrap();
        assert_eq!(cl.remote_addrs, ["relay.example.com:2333"]);
        assert_eq!(cl.services["ssh"].token, "dt");
        assert_eq!(cl.services["ssh"].max_load, 10);
        assert!(!cl.services["ssh"].proxy_protocol);
    }

    #[test]
    fn errors_name_file_key_and_expectation() {
        let e = parse("[server]\nbind_addr = \"nope\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.toml: key server.bind_addr: expected a socket address like \"0.0.0.0:8080\", got \"nope\""
        );
        let e = parse(
            "[server]\nbind_addr = \"0.0.0.0:1\"\n[server.services.a]\nbind_addr = \"0.0.0.0:2\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "server.services.a.token");
        let e = parse("[client]\nremote_addr = \"r:1\"\n").unwrap_err();
        assert_eq!(e.key, "client.relay_fingerprint");
        assert!(e.message.contains("zs xnat fingerprint"));
        let e = parse(
            "[server]\nbind_addr = \"0.0.0.0:1\"\n[server.transport]\ntype = \"websocket\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "server.transport.type");
        let e = parse("[server]\nbind_addr = \"0.0.0.0:1\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e.key, "server.bogus");
        let e = parse("[server]\nbind_addr = \"0.0.0.0:1\"\npool_size = -1\n").unwrap_err();
        assert_eq!(e.key, "server.pool_size");
        let e = parse("[server]\nbind_addr = \"0.0.0.0:1\"\ndefault_token=\"x\"\n[server.services.u]\nbind_addr = \"0.0.0.0:2\"\ntype = \"quic\"\n").unwrap_err();
        assert_eq!(e.key, "server.services.u.type");
        let e =
            parse("[server]\nbind_addr = \"0.0.0.0:1\"\nadmin_token = \"short\"\n").unwrap_err();
        assert_eq!(e.key, "server.admin_token");
        let e = parse("[[server]]\n").unwrap_err();
        assert_eq!(e.key, "server");
        let e = parse("= =").unwrap_err();
        assert!(e.to_string().starts_with("x.toml: not valid TOML"));
        let e = parse(&format!(
            "[client]\nremote_addr = \"r\"\nrelay_fingerprint = \"{FP}\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "client.remote_addr");
        let e =
            parse("[client]\nremote_addr = \"r:1\"\nrelay_fingerprint = \"abc\"\n").unwrap_err();
        assert_eq!(e.key, "client.relay_fingerprint");
    }

    #[test]
    fn udp_mappings_and_admin_keys_parse() {
        let c = parse(&format!(
            r#"
[server]
bind_addr = "0.0.0.0:2333"
admin_token = "long_enough"
store_dir = "state"
max_udp_flows = 100
[server.services.dns]
type = "udp"
token = "t"
bind_addr = "0.0.0.0:53"
[client]
remote_addr = "r:1"
relay_fingerprint = "{FP}"
[client.services.dns]
type = "udp"
token = "t"
local_addr = "127.0.0.1:53"
"#
        ))
        .unwrap();
        let s = c.server.unwrap();
        assert_eq!(s.services["dns"].kind, Kind::Udp);
        assert_eq!(s.services["dns"].idle_timeout, Duration::from_secs(60));
        assert_eq!(s.admin.admin_token.as_deref(), Some("long_enough"));
        assert_eq!(s.admin.store_dir, Path::new("/etc/zs/state"));
        assert_eq!(s.admin.max_udp_flows, 100);
        assert_eq!(c.client.unwrap().services["dns"].kind, Kind::Udp);
        let e = parse(&format!(
            "[client]\nremote_addr = \"r:1\"\nrelay_fingerprint = \"{FP}\"\n[client.services.d]\ntype = \"udp\"\ntoken = \"t\"\nlocal_addr = \"127.0.0.1:53\"\nproxy_protocol = \"v2\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "client.services.d.proxy_protocol");
    }

    #[test]
    fn service_tables_check_the_same_things_on_both_sides() {
        for side in ["server", "client"] {
            let head = if side == "server" {
                "[server]\nbind_addr = \"0.0.0.0:1\"\n".to_string()
            } else {
                format!("[client]\nremote_addr = \"r:1\"\nrelay_fingerprint = \"{FP}\"\n")
            };
            let addr = if side == "server" {
                "bind_addr = \"0.0.0.0:2\""
            } else {
                "local_addr = \"127.0.0.1:2\""
            };
            let cases = [
                ("token = \"\"", "token"),
                ("token = \"t\"\nbogus = 1", "bogus"),
                ("token = \"t\"\ntype = \"sctp\"", "type"),
                ("token = \"t\"\nnodelay = 3", "nodelay"),
            ];
            for (body, key) in cases {
                let e = parse(&format!("{head}[{side}.services.s]\n{addr}\n{body}\n")).unwrap_err();
                assert_eq!(e.key, format!("{side}.services.s.{key}"), "{side}: {body}");
            }
            let e = parse(&format!("{head}[{side}.services.s]\n{addr}\n")).unwrap_err();
            assert_eq!(e.key, format!("{side}.services.s.token"));
            assert!(
                e.message.contains(&format!("{side}.default_token")),
                "{}",
                e.message
            );
        }
    }
}
