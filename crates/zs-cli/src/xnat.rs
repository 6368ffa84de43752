//! `zs xnat server|agent|fingerprint --config FILE`: expose intranet TCP
//! services through a public relay (rathole's config format; see the zs-xnat
//! crate docs for every key).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `zs xnat`.
#[derive(Debug, clap::Args)]
#[command(
    about = "expose intranet TCP and UDP services through a public relay (rathole config format)",
    long_about = "Expose intranet TCP and UDP services through a public relay.\n\n\
The config file is rathole's TOML: [server] bind_addr, default_token, \
[server.services.NAME] token, bind_addr, type (\"tcp\" | \"udp\"); [client] remote_addr, \
default_token, [client.services.NAME] token, local_addr, type; [*.transport] type = \
\"tcp\" | \"noise\" (both: our encrypted session over TCP with the relay key pinned, \
the default) | \"tls\" (TLS 1.3 through rustls: [server.transport.tls] cert, key = PEM \
files (rathole's pkcs12 is refused with the openssl command that converts it); \
[client.transport.tls] trusted_root = the CA's PEM (REQUIRED), hostname (default: the \
host of remote_addr); no relay_fingerprint then; the token proof is bound to the TLS \
exporter; a relay with tls also takes our pinned session on the same port, for the \
command API and visitors); nodelay is accepted; [*.transport] encryption = \"session\" (default) | \"none\" \
(ours: plaintext data connections, moved with splice(2) on Linux, for trusted networks; \
relay and agent must agree; control, token proof and tickets stay encrypted).\n\n\
Our keys: [server] threads, [client] threads (1, the default: one thread runs every \
connection; N: N worker threads; 0: one per core); [client] relay_fingerprint (REQUIRED unless type = \"tls\", \"sha3-256:<64 hex>\", printed by \
`zs xnat server` and `zs xnat fingerprint`), remote_addrs = [..] (one tunnel to each \
relay), agent_name, retry_interval (s, longest reconnect backoff, 2), heartbeat_timeout \
(s, 40); [client.services.NAME] max_load (4096), proxy_protocol = \"v2\" (TCP only: \
the public client's address to the local service, off); [server] identity_file \
(xnat-relay.key next to the config, created when missing), pool_size (8), data_reuse \
(100: public connections one data connection carries in turn; 1: one each, as rathole), \
data_reuse_age (s, 300: a data connection older than this is not pooled again; one that \
reaches it while pooled is closed and replaced), max_agents \
(256), heartbeat_interval (s, 10), handshake_timeout (s, 5), admin_token (turns on the \
command API of add/remove/list/status; at least 8 bytes; proven, never sent), store_dir \
(xnat-relay.store next to the config: the zs-db store of mappings added with `zs xnat add`), \
max_udp_flows (16384, UDP flows over all mappings), max_runtime_mappings (1024, mappings \
`zs xnat add` may create); [server.services.NAME] idle_timeout \
(s, 600 for TCP, 60 for a UDP flow), max_connections (4096; UDP: flows, one per public \
source address).\n\n\
Visitors (`zs xnat visit`): [visitor] remote_addr (the relay), relay_fingerprint, service, \
token (proved, never sent), bind_addr (the local port), direct (true: punch a direct UDP/QUIC \
path in the background; connections start on the relay at once and move to it and back \
without being closed), port_mapping (true: ask the router for a public UDP port first; \
PCP, NAT-PMP, UPnP-IGD), direct_retry (s, 30; 300 after a \"relay only\" answer), \
max_connections (1024). The relay hosts the punch rendezvous with [server.direct] \
stun_bind_addr + stun_alt_ip (it answers STUN on two addresses) or stun_addr (another RFC \
5780 server); without [server.direct] visitors work through the relay only.\n\n\
A public port listens only while at least one agent serves its mapping. The server and \
agent re-read their config file when it changes (services tables only). \
Logs go to stderr (RUST_LOG overrides the default `info`)."
)]
pub struct XnatArgs {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Run the public relay (`[server]` table).
    Server {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the intranet agent (`[client]` table); it dials out to the relay(s).
    Agent {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a visitor (`[visitor]` table): a local port for one mapping, through
    /// the relay at once, moved to a punched direct path when one comes up.
    ///
    /// Keys: remote_addr (the relay), relay_fingerprint, service, token (proved, never
    /// sent), bind_addr (the local port), direct (true), port_mapping (true: ask the
    /// router for a public UDP port with PCP, NAT-PMP, then UPnP-IGD), direct_retry
    /// (s, 30), max_connections (1024). The relay needs [server.direct].
    ///
    /// Modes: the visitor and the agent classify their NATs against the relay's STUN
    /// server and meet at its rendezvous, which picks one: simultaneous (both NATs keep
    /// one port per socket, or one side is public), predicted ports (a NAT whose port
    /// moves by a fixed step per new destination), birthday (one NAT picks random
    /// ports: 256 sockets on that side, up to 2,048 random probes from the other), or
    /// relay only (both pick random ports: nothing is sent). A side whose router maps a
    /// port is public, so any pair gets a direct path then. The mode that worked for a
    /// pair is tried first next time. Direct paths are QUIC with both keys pinned.
    ///
    /// Limits: two random-port NATs without a port mapping stay relayed; a dead direct
    /// path is noticed within 3 s (bytes stall that long, then continue on the relay,
    /// none lost); port mapping is IPv4 only; one punch per mapping at a time.
    ///
    /// When only the relay works, connections work exactly as before, through the
    /// relay (none waits for a punch), at the relay's speed. The log says "no direct
    /// path; connections go through the relay" with the reason and retry_in_s:
    /// "relay only" (both NATs random) retries after 10 x direct_retry, anything else
    /// after direct_retry, and at once when a router's UPnP-IGD answers after a failed
    /// attempt (the visitor's own, or the agent's: the relay then tells the visitor).
    Visit {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the relay's key fingerprint (for the agents' relay_fingerprint).
    Fingerprint {
        /// The relay's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Add a mapping to a running relay through its command API (stored by
    /// the relay: it survives a restart).
    Add {
        #[command(flatten)]
        api: Api,
        /// The mapping's name (agents register it as [client.services.NAME]).
        #[arg(long)]
        name: String,
        /// The token agents prove for it.
        #[arg(long)]
        token: String,
        /// The public address, like 0.0.0.0:8080.
        #[arg(long)]
        bind: std::net::SocketAddr,
        /// tcp or udp.
        #[arg(long = "type", default_value = "tcp")]
        kind: String,
        /// Seconds without traffic before a connection (UDP: flow) closes (0: 600 for TCP, 60 for UDP).
        #[arg(long, default_value_t = 0)]
        idle_timeout: u32,
        /// Most connections (UDP: flows) at once (0: 4096).
        #[arg(long, default_value_t = 0)]
        max_connections: u32,
    },
    /// Remove a mapping added with `zs xnat add`.
    Remove {
        #[command(flatten)]
        api: Api,
        /// The mapping's name.
        #[arg(long)]
        name: String,
    },
    /// List the relay's mappings (name, type, addresses, file or runtime).
    List {
        #[command(flatten)]
        api: Api,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Per-mapping statistics (connections, bytes, errors, agents) and the relay's counters.
    Status {
        #[command(flatten)]
        api: Api,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Where the relay's command API is and how to prove the right to use it:
/// `--relay`, `--fingerprint` and `--admin-token`, or on the relay's host
/// `--config relay.toml` (its bind_addr, identity and admin_token).
#[derive(Debug, clap::Args)]
struct Api {
    /// The relay's config file: takes the address (0.0.0.0 / :: become loopback),
    /// the fingerprint and the admin token from it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The relay's agent address (bind_addr of its server table), like relay.example.com:2333.
    #[arg(long, required_unless_present = "config")]
    relay: Option<String>,
    /// The relay's key fingerprint (sha3-256:<64 hex>), as agents pin it.
    #[arg(long, required_unless_present = "config")]
    fingerprint: Option<String>,
    /// The relay's admin_token (server table; default: the ZS_XNAT_ADMIN_TOKEN
    /// environment variable, or the config's).
    #[arg(long)]
    admin_token: Option<String>,
}

fn api_call(
    api: Api,
    cmd: zs_xnat::AdminCommand,
) -> Result<(String, Vec<serde_json::Value>), String> {
    let (mut relay, mut fp, mut token) = (None, None, None);
    if let Some(path) = &api.config {
        let cfg = zs_xnat::Config::load(path).map_err(|e| e.to_string())?;
        let server = cfg
            .server
            .ok_or_else(|| format!("{}: expected a [server] table", path.display()))?;
        let mut addr = server.bind_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        relay = Some(addr.to_string());
        fp = Some(zs_xnat::relay_fingerprint_file(path)?);
        token = server.admin.admin_token;
    }
    let relay = api
        .relay
        .or(relay)
        .ok_or("--relay (or --config) is required")?;
    let fp = match api.fingerprint {
        Some(text) => text.parse().map_err(|_| {
            format!("--fingerprint: expected \"sha3-256:\" and 64 hex digits, got {text:?}")
        })?,
        None => fp.ok_or("--fingerprint (or --config) is required")?,
    };
    let token = api
        .admin_token
        .or_else(|| std::env::var("ZS_XNAT_ADMIN_TOKEN").ok())
        .or(token)
        .ok_or("--admin-token (or ZS_XNAT_ADMIN_TOKEN, or admin_token in --config) is required")?;
    zs_xnat::admin_command(&relay, fp, &token, cmd)
}

fn print_items(items: &[serde_json::Value], json: bool, cols: &[&str]) {
    if json {
        for it in items {
            println!("{it}");
        }
        return;
    }
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .filter(|it| it.get("name").is_some())
        .map(|it| cols.iter().map(|c| cell(&it[*c])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |r: Vec<String>| {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    };
    line(cols.iter().map(|c| c.to_string()).collect());
    for r in rows {
        line(r);
    }
    for it in items {
        if let Some(serde_json::Value::Object(relay)) = it.get("relay") {
            let kv: Vec<String> = relay.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("relay: {}", kv.join(" "));
        }
    }
}

/// Runs `zs xnat`.
pub fn run(a: XnatArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let r = match a.verb {
        Verb::Server { config } => zs_xnat::run_relay_file(&config),
        Verb::Agent { config } => zs_xnat::run_agent_file(&config),
        Verb::Visit { config } => crate::visit::run(&config),
        Verb::Fingerprint { config } => {
            zs_xnat::relay_fingerprint_file(&config).map(|fp| println!("{fp}"))
        }
        Verb::Add {
            api,
            name,
            token,
            bind,
            kind,
            idle_timeout,
            max_connections,
        } => {
            let udp = match kind.as_str() {
                "tcp" => Ok(false),
                "udp" => Ok(true),
                other => Err(format!("--type: expected tcp or udp, got {other:?}")),
            };
            udp.and_then(|udp| {
                api_call(
                    api,
                    zs_xnat::AdminCommand::Add(zs_xnat::proto::MappingSpec {
                        service: name,
                        token,
                        bind_addr: bind,
                        udp,
                        idle_timeout_s: idle_timeout,
                        max_connections,
                    }),
                )
            })
            .map(|(m, _)| println!("{m}"))
        }
        Verb::Remove { api, name } => {
            api_call(api, zs_xnat::AdminCommand::Remove(name)).map(|(m, _)| println!("{m}"))
        }
        Verb::List { api, json } => api_call(api, zs_xnat::AdminCommand::List).map(|(_, v)| {
            print_items(
                &v,
                json,
                &[
                    "name",
                    "type",
                    "source",
                    "bind_addr",
                    "public_addr",
                    "idle_timeout_s",
                    "max_connections",
                ],
            )
        }),
        Verb::Status { api, json } => api_call(api, zs_xnat::AdminCommand::Stats).map(|(_, v)| {
            print_items(
                &v,
                json,
                &[
                    "name",
                    "type",
                    "listening",
                    "agents",
                    "connections",
                    "active",
                    "bytes_up",
                    "bytes_down",
                    "errors",
                ],
            )
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zs xnat: {e}");
            ExitCode::FAILURE
        }
    }
}
