//! `zs serve`: run a zserver with the built-in commands until Ctrl-C.
//!
//! Settings come from an optional TOML file (`--config`), overridden by flags:
//!
//! ```toml
//! addr = "127.0.0.1:7777"
//! backend = "epoll"            # or "tokio", "default"
//! suites = ["AES-256-GCM", "CHACHA20-POLY1305"]
//! key = "./zs-identity.key"    # Ed25519 identity seed, created when missing
//! loops = 0                    # event loops, 0 = one per core
//! max_connections = 10000      # admission caps (connections refused beyond)
//! max_connections_per_ip = 1000
//! max_handshakes_per_ip = 64   # handshakes in progress from one address
//! data = "./zs-data"           # the services' store (accounts, messages)
//! http = "127.0.0.1:8080"      # also serve the web face (dashboard, /ws, /metrics)
//!
//! [services]                   # all optional
//! enabled = true               # false: only the demo commands
//! second_login = "kick"        # or "refuse"
//! open_registration = true     # anyone may `user.register`
//! password_memory_kib = 19456  # Argon2id cost of new password hashes
//! password_iterations = 2
//! user_failures = 5            # failed logins per user / per address
//! addr_failures = 20           #   within 15 minutes before throttling
//! file_quota_mib = 1024        # bytes of files per user
//! max_file_mib = 1024          # largest file
//! ```
//!
//! Every other limit has the default documented in docs/PROTOCOL.md §3.7.
//!
//! Built-in commands (console): `echo` (answers its text), `time` (UTC time,
//! RFC 3339), `stats` (the server's statistics table); and `bigsink`
//! (BigStream): reads every chunk, checks they arrive in order, and answers the
//! last one with the byte count (u64) and CRC-32 (u32) of what it received (the
//! target of `zs bench stream`; one transfer at a time per connection).
//! And the application services (`user.*`, `msg.*`, `file.*`: docs/PROTOCOL.md Part 6)
//! on a store in `./zs-data`, unless `--no-services`; the first start creates
//! the `admin` account and writes its password to `zs-data/admin.password`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use zserver::{
    code, load_or_create_identity, BigChunk, DataFrame, HandlerError, Peer, Registry,
    RunningServer, ServerBuilder, SuiteId,
};

/// The key file used when none is given (also where `zs call` looks).
pub const DEFAULT_KEY_FILE: &str = "zs-identity.key";

/// Arguments of `zs serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:7777].
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Transport backend: epoll, tokio or default (epoll on Linux).
    #[arg(long)]
    pub backend: Option<String>,
    /// Allowed cipher suites, comma separated, preferred first [default: AES-256-GCM].
    #[arg(long, value_delimiter = ',')]
    pub suites: Option<Vec<String>>,
    /// Identity key file; generated when missing [default: ./zs-identity.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Event loops (0 = one per core).
    #[arg(long)]
    pub loops: Option<usize>,
    /// Most connections open at once [default: 10000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one IP address [default: 1000].
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// Most handshakes in progress from one IP address [default: 64].
    #[arg(long)]
    pub max_handshakes_per_ip: Option<usize>,
    /// The services' data directory [default: ./zs-data].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run without the application services (accounts, messages, files).
    #[arg(long)]
    pub no_services: bool,
    /// Cluster registry: serve it (`--registry`) or join one (`--join`, `--join-etcd`).
    #[command(flatten)]
    pub cluster: crate::registry::ServeCluster,
    /// Also serve the web face on this address: dashboard (/), WebSocket/JSON
    /// gateway (/ws), Prometheus (/metrics), JavaScript client (/zs.js).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// The network DB service.
    #[command(flatten)]
    pub db_service: crate::dbsvc::DbServiceArgs,
    /// The legacy ZServer4D/ZNet listener.
    #[command(flatten)]
    pub legacy: crate::legacy::ServeLegacy,
}

/// The TOML configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<SocketAddr>,
    backend: Option<String>,
    suites: Option<Vec<String>>,
    key: Option<PathBuf>,
    loops: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_handshakes_per_ip: Option<usize>,
    data: Option<PathBuf>,
    services: Option<crate::services::ServicesFile>,
    http: Option<SocketAddr>,
}

/// Formats a Unix time as RFC 3339 UTC (civil-from-days, proleptic Gregorian).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Per-connection state of `bigsink`: bytes seen and their running CRC-32.
#[derive(Default)]
struct SinkState {
    seen: u64,
    crc: crc32fast::Hasher,
}

/// `bigsink`: every chunk in order into a CRC-32; the last answers `[count, crc]`.
fn bigsink(peer: &Peer, c: &BigChunk) -> Result<Option<DataFrame>, HandlerError> {
    peer.with_state(|st: &mut SinkState| {
        if c.offset == 0 {
            *st = SinkState::default();
        }
        if c.offset != st.seen {
            let seen = st.seen;
            *st = SinkState::default();
            return Err(HandlerError::new(
                code::BAD_REQUEST,
                format!("bigsink: chunk at offset {} after {seen} bytes", c.offset),
            ));
        }
        st.crc.update(&c.data);
        st.seen += c.data.len() as u64;
        if !c.last {
            return Ok(None);
        }
        let done = std::mem::take(st);
        Ok(Some(
            DataFrame::new().with(done.seen).with(done.crc.finalize()),
        ))
    })
}

/// The built-in commands; `stats` reads the server through `server`.
fn builtins(server: Arc<OnceLock<Weak<RunningServer>>>) -> Registry {
    let mut r = Registry::new();
    r.console("echo", |_, text| Ok(text.to_owned()));
    r.console("time", |_, _| Ok(rfc3339(SystemTime::now())));
    r.console("stats", move |_, _| {
        match server.get().and_then(Weak::upgrade) {
            Some(s) => Ok(s.server().stats().to_string()),
            None => Err("the server is shutting down".into()),
        }
    });
    r.big_stream("bigsink", bigsink);
    r
}

fn parse_suites(names: &[String]) -> Result<Vec<SuiteId>, String> {
    names
        .iter()
        .map(|n| {
            n.trim()
                .to_ascii_uppercase()
                .parse::<SuiteId>()
                .map_err(|e| format!("suite {n:?}: {e}"))
        })
        .collect()
}

fn run_inner(a: ServeArgs) -> Result<(), String> {
    let file: FileConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let addr = a.addr.or(file.addr).unwrap_or_else(|| {
        zserver::DEFAULT_ADDR
            .parse()
            .expect("valid default address")
    });
    let backend = a
        .backend
        .or(file.backend)
        .unwrap_or_else(|| "default".into());
    let suites = parse_suites(
        &a.suites
            .or(file.suites)
            .unwrap_or_else(|| vec!["AES-256-GCM".into()]),
    )?;
    let key = a
        .key
        .or(file.key)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
    let loops = a.loops.or(file.loops).unwrap_or(0);
    let mut options = zserver::Options::default();
    if let Some(n) = a.max_connections.or(file.max_connections) {
        options.max_connections = n;
    }
    if let Some(n) = a.max_connections_per_ip.or(file.max_connections_per_ip) {
        options.max_connections_per_ip = n;
    }
    // The layer's per-address handshake bound
    // (`SecureBackend::with_max_handshakes_per_ip`), checked at accept.
    let max_handshakes_per_ip = a.max_handshakes_per_ip.or(file.max_handshakes_per_ip);

    let services_file = file.services.unwrap_or_default();
    // One data directory: the services' stores at its top, the DB service's
    // databases in `db/` (so remote clients never reach the accounts store).
    let data = a
        .data
        .clone()
        .or(file.data)
        .unwrap_or_else(|| PathBuf::from(crate::services::DEFAULT_DATA_DIR));
    let services = if a.no_services || services_file.enabled == Some(false) {
        None
    } else {
        let (s, written) = crate::services::open_for_serve(&data, services_file.config()?)?;
        if let Some(p) = written {
            println!(
                "services: admin account created, password in {}",
                p.display()
            );
        }
        println!(
            "services: accounts, messages and files in {} (zs user|msg|file)",
            data.display()
        );
        Some(s)
    };

    let (identity, created) = load_or_create_identity(&key).map_err(|e| e.to_string())?;
    let fingerprint = identity.fingerprint();
    let slot = Arc::new(OnceLock::new());
    let mut commands = builtins(slot.clone());
    let mut cluster = crate::registry::Cluster::prepare(&a.cluster, &mut commands)?;
    let mut db_note = Ok(None);
    let mut legacy = Ok(None);
    let mut builder = ServerBuilder::new();
    if let Some(n) = max_handshakes_per_ip {
        builder = builder.max_handshakes_per_ip(n);
    }
    let io = zserver::io::Config {
        loops,
        ..Default::default()
    };
    // Backends by name are the command line's business (`--backend`).
    let transport = zserver::backend_by_name(&backend, io.clone())
        .map_err(|e| format!("cannot start the server on {addr}: {e}"))?;
    let server = builder
        .addr(addr)
        .backend(transport.into())
        .io_config(io)
        .identity(identity)
        .suites(suites.clone())
        .options(options)
        .registry(commands)
        .commands(|r| {
            if let Some(s) = &services {
                s.register(r)
            }
            db_note = crate::dbsvc::install(
                &a.db_service,
                &data,
                services.as_ref().map(|s| &s.accounts),
                r,
            );
            legacy = crate::legacy::install(&a.legacy, &backend, r);
        })
        .start()
        .map_err(|e| format!("cannot start the server on {addr}: {e}"))?;
    let db_note = db_note?;
    let _legacy = legacy?;
    let server = Arc::new(server);
    let _ = slot.set(Arc::downgrade(&server));
    cluster.join(&server)?;

    let local = server.local_addr();
    let suite_names: Vec<&str> = suites.iter().map(|s| s.name()).collect();
    println!(
        "zs serve: listening on {local} (backend {}, suites {})",
        server.server().backend_name(),
        suite_names.join(",")
    );
    println!(
        "identity: {} ({})",
        key.display(),
        if created { "created" } else { "loaded" }
    );
    println!("fingerprint: {fingerprint}");
    println!("connect with: zs call echo hello --addr {local} --fingerprint {fingerprint}");
    println!("commands: echo, time, stats, bigsink (BigStream); Ctrl-C stops");
    let web = match a.http.or(file.http) {
        Some(http) => {
            let config = zserver::web::Config {
                addr: http,
                ..Default::default()
            };
            // the dashboard shows the DB service's panel when it runs here
            let g = match &db_note {
                Some((_, svc)) => zserver::web::start_with_panels(
                    &server,
                    config,
                    zserver::web::db_service_panel(svc),
                ),
                None => zserver::web::start(&server, config),
            }
            .map_err(|e| format!("cannot start the web face on {http}: {e}"))?;
            let at = g.local_addr();
            println!(
                "web: dashboard http://{at}/  WebSocket ws://{at}/ws  metrics http://{at}/metrics"
            );
            Some(g)
        }
        None => None,
    };
    if let Some((note, _)) = &db_note {
        println!("{note}");
    }

    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;
    let _ = rx.recv();
    println!(
        "zs serve: shutting down ({} connections open)",
        server.server().connection_count()
    );
    drop(web);
    server.shutdown();
    drop(server);
    if let Some(s) = services {
        s.close().map_err(|e| e.to_string())?;
    }
    println!("zs serve: stopped");
    Ok(())
}

/// Runs `zs serve`.
pub fn run(a: ServeArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run_inner(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zs serve: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(rfc3339(t), "2025-12-31T23:59:59.000Z");
    }

    #[test]
    fn suites_parse_case_insensitively() {
        let s = parse_suites(&["aes-256-gcm".into(), "CHACHA20-POLY1305".into()]).unwrap();
        assert_eq!(s, vec![SuiteId::Aes256Gcm, SuiteId::ChaCha20Poly1305]);
        assert!(parse_suites(&["rot13".into()]).is_err());
    }

    #[test]
    fn bigsink_checks_order_and_answers_count_and_crc() {
        struct Nowhere;
        impl zserver::framework::Outbox for Nowhere {
            fn send_frame(&self, _: zserver::Frame) -> zserver::Result<()> {
                Ok(())
            }
            fn is_open(&self) -> bool {
                true
            }
            fn close(&self, _: &str) {}
        }
        let peer = Peer::new(1, None, Arc::new(Nowhere));
        let chunk = |offset: u64, data: &'static [u8], last: bool| BigChunk {
            offset,
            total: 9,
            last,
            data: zserver::io::Bytes::from_static(data),
        };
        assert_eq!(bigsink(&peer, &chunk(0, b"abcd", false)).unwrap(), None);
        let df = bigsink(&peer, &chunk(4, b"efghi", true)).unwrap().unwrap();
        let mut r = df.reader();
        assert_eq!(r.read_u64().unwrap(), 9);
        assert_eq!(r.read_u32().unwrap(), crc32fast::hash(b"abcdefghi"));
        // A gap is refused, and the next transfer starts clean.
        assert_eq!(bigsink(&peer, &chunk(0, b"abcd", false)).unwrap(), None);
        let e = bigsink(&peer, &chunk(5, b"fghi", true)).unwrap_err();
        assert_eq!(e.code, code::BAD_REQUEST);
        let df = bigsink(&peer, &chunk(0, b"abcdefghi", true))
            .unwrap()
            .unwrap();
        assert_eq!(df.reader().read_u64().unwrap(), 9);
    }

    #[test]
    fn config_file_fields() {
        let c: FileConfig = toml::from_str(
            "addr = \"127.0.0.1:9000\"\nbackend = \"tokio\"\nsuites = [\"AES-256-GCM\"]\nkey = \"k\"\nloops = 2\n",
        )
        .unwrap();
        assert_eq!(c.addr, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(c.loops, Some(2));
        assert!(toml::from_str::<FileConfig>("port = 1\n").is_err());
    }
}
