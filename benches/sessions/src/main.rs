//! `cargo xtask bench sessions`: 15,000 connected zserver clients with completed
//! AES-256-GCM handshakes (3,000 with `--quick`): how long until every session
//! is established, and how much user-space memory (RSS) the server spends per
//! idle session, next to the same number of bare accepted TCP sockets.
//!
//! Process layout (the limit here is 20,000 descriptors per process, so the two
//! ends cannot share one): the bench process (orchestrator) re-executes itself
//! as a **server** (`--server <kind> <n>`), and the server re-executes itself as
//! the **clients** (`--clients <addr> <n> <fingerprint>`). Each sample gets a
//! fresh server process, so memory freed by an earlier sample never hides the
//! cost of a later one. Both processes raise RLIMIT_NOFILE's soft limit to the
//! hard limit.
//!
//! The clients are real [`zs_core::Client`]s (one shared epoll backend, four
//! connecting threads); after its handshake each sends a `ready` signal, which
//! the server can only decrypt once its own side of the handshake is complete.
//! The server starts its clock when it tells the clients "go" and stops it when
//! its `ready` handler has counted `n` signals (for `bare`: `n` accepts); after
//! 300 ms of settling it reads its RSS again.
//! `rss_per_session_bytes` = (RSS after − RSS before) / n.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zs_bench_harness::raw::{open_and_rss_cases, raise_fd_limit, rss_bytes, server_sample};
use zs_bench_harness::{Options, Suite};
use zs_core::{Client, Registry, Server};
use zs_crypto::session::{ClientConfig, SuitePolicy};
use zs_crypto::{Fingerprint, ServerConfig, ServerIdentity, SuiteId, ZsSecurity};

const CONNECT_THREADS: usize = 4;

/// The zs-io backend called `kind` (`epoll`, `tokio`), through the facade.
fn backend(kind: &str, loops: usize) -> Arc<dyn zs_io::Backend> {
    let cfg = zs_io::Config {
        loops,
        ..zs_io::Config::default()
    };
    Arc::from(zserver::backend_by_name(kind, cfg).expect("backend"))
}

/// The client process: waits for "go", opens `n` sessions (or bare sockets when
/// `fp` is `bare`), reports, then holds them until stdin closes.
fn clients(addr: SocketAddr, n: usize, fp: &str) {
    if let Err(e) = raise_fd_limit() {
        eprintln!("clients: cannot raise the descriptor limit: {e}");
    }
    let mut line = String::new();
    println!("ready");
    std::io::stdout().flush().ok();
    std::io::stdin().lock().read_line(&mut line).ok();
    let t0 = Instant::now();
    let failures = AtomicUsize::new(0);
    let opened = if fp == "bare" {
        let conns: Vec<TcpStream> = (0..n)
            .filter_map(|_| {
                TcpStream::connect(addr)
                    .map_err(|_| failures.fetch_add(1, Ordering::Relaxed))
                    .ok()
            })
            .collect();
        let k = conns.len();
        println!("connected {k} in {:?}", t0.elapsed());
        std::io::stdout().flush().ok();
        line.clear();
        std::io::stdin().lock().read_line(&mut line).ok();
        drop(conns);
        k
    } else {
        // The clients run over the secure layer (`SecureBackend`), as the
        // server does.
        let fp: Fingerprint = fp.parse().expect("fingerprint");
        let mut ccfg = ClientConfig::pinned(fp);
        ccfg.suites = vec![SuiteId::Aes256Gcm];
        let provider: Arc<dyn zs_crypto::SecurityProvider> =
            Arc::new(ZsSecurity::new(Some(Arc::new(ccfg)), None));
        #[cfg(target_os = "linux")]
        let b = backend("epoll", 1);
        #[cfg(not(target_os = "linux"))]
        let b = backend("tokio", 1);
        let secure: Arc<dyn zs_io::Backend> = Arc::new(zs_secure::SecureBackend::with_config(
            b.clone(),
            provider.clone(),
            zs_secure::SecureConfig::for_io(&zs_io::Config::default()),
        ));
        let all: Mutex<Vec<Client>> = Mutex::new(Vec::with_capacity(n));
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..CONNECT_THREADS {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let mut o = zs_core::Options::client();
                        o.keepalive = None;
                        match Client::connect(secure.clone(), Registry::new(), o, addr) {
                            Ok(c) => {
                                if c.peer().send_signal("ready", 0).is_err() {
                                    failures.fetch_add(1, Ordering::Relaxed);
                                }
                                all.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                            }
                            Err(e) => {
                                if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                                    eprintln!("clients: connect failed: {e}");
                                }
                            }
                        }
                    }
                });
            }
        });
        let all = all.into_inner().unwrap_or_else(|p| p.into_inner());
        let k = all.len();
        println!("connected {k} in {:?}", t0.elapsed());
        std::io::stdout().flush().ok();
        line.clear();
        std::io::stdin().lock().read_line(&mut line).ok();
        drop(all);
        k
    };
    let f = failures.load(Ordering::Relaxed);
    if f > 0 {
        eprintln!("clients: {f} of {n} failed ({opened} opened)");
    }
}

/// The server process: one sample. Prints `RESULT <open_s> <rss_per_session> <count>`.
fn server(kind: &str, n: usize) {
    if let Err(e) = raise_fd_limit() {
        eprintln!("server: cannot raise the descriptor limit: {e}");
    }
    let ready = Arc::new(AtomicUsize::new(0));
    let mut keep_server: Option<Server> = None;
    let bare_conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
    let (addr, fp) = if kind == "bare" {
        // Same backlog as the backends (`zs_io::Config::backlog`), so only the loop differs.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
            .expect("bind");
        sock.listen(zs_io::Config::default().backlog)
            .expect("listen");
        let l: TcpListener = sock.into();
        let addr = l.local_addr().expect("addr");
        let (r, keep) = (ready.clone(), bare_conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                match s {
                    Ok(s) => {
                        keep.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("bare accept: {e}"),
                }
            }
        });
        (addr, "bare".to_string())
    } else {
        let (identity, _seed) =
            ServerIdentity::generate(&ring::rand::SystemRandom::new()).expect("identity");
        let fp = identity.fingerprint().to_string();
        let mut scfg = ServerConfig::with_identity(Arc::new(identity));
        scfg.policy = SuitePolicy {
            allowed: vec![SuiteId::Aes256Gcm],
            ..SuitePolicy::default()
        };
        let provider: Arc<dyn zs_crypto::SecurityProvider> =
            Arc::new(ZsSecurity::new(None, Some(Arc::new(scfg))));
        let mut commands = Registry::new();
        let r = ready.clone();
        commands.signal("ready", move |_, _| {
            r.fetch_add(1, Ordering::Relaxed);
        });
        // Every session comes from 127.0.0.1: lift the admission caps
        // (this bench measures memory per session, not admission).
        let options = zs_core::Options {
            max_connections: usize::MAX,
            max_connections_per_ip: usize::MAX,
            ..zs_core::Options::default()
        };
        let addr = "127.0.0.1:0".parse().expect("addr");
        // zs_secure::SecureBackend(kind) under zs-core's plaintext sessions
        // (its handshake cap lifted too).
        let secure = Arc::new(zs_secure::SecureBackend::with_config(
            backend(kind, 2),
            provider,
            zs_secure::SecureConfig {
                max_handshakes: usize::MAX,
                ..zs_secure::SecureConfig::for_io(&zs_io::Config::default())
            },
        ));
        let s = Server::start(secure, commands, options, addr).expect("server");
        let addr = s.local_addr();
        keep_server = Some(s);
        (addr, fp)
    };
    std::thread::sleep(Duration::from_millis(100));
    let rss0 = rss_bytes();
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args(["--clients", &addr.to_string(), &n.to_string(), &fp])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn clients");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut cin = child.stdin.take().expect("stdin");
    let mut line = String::new();
    out.read_line(&mut line).expect("clients ready");
    let t0 = Instant::now();
    writeln!(cin, "go").expect("go");
    cin.flush().ok();
    let deadline = t0 + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(500));
    }
    let open_s = t0.elapsed().as_secs_f64();
    let got = ready.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let rss1 = rss_bytes();
    let per = rss1.saturating_sub(rss0) as f64 / got.max(1) as f64;
    if let Some(s) = &keep_server {
        let open = s.connection_count();
        if open < got {
            eprintln!("server: only {open} of {got} sessions still open");
        }
    }
    println!("RESULT {open_s} {per} {got}");
    std::io::stdout().flush().ok();
    line.clear();
    out.read_line(&mut line).ok(); // "connected …"
    drop(cin);
    let _ = child.wait();
    drop(keep_server);
}

/// One fresh server process: `(open_s, rss_per_session)`; NaN unless every
/// session got ready.
fn sample(kind: &str, n: usize) -> (f64, f64) {
    let Some((s, stderr)) = server_sample(kind, n) else {
        return (f64::NAN, f64::NAN);
    };
    if s.count != n {
        eprintln!("{kind}: only {} of {n} sessions ready: {stderr}", s.count);
        return (f64::NAN, f64::NAN);
    }
    (s.open_s, s.rss_per_item)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1] == "--clients" {
        clients(
            args[2].parse().expect("addr"),
            args[3].parse().expect("n"),
            &args[4],
        );
        return;
    }
    if args.len() == 4 && args[1] == "--server" {
        server(&args[2], args[3].parse().expect("n"));
        return;
    }
    let opts = Options::from_env();
    let n = if opts.quick { 3_000 } else { 15_000 };
    let mut suite = Suite::from_options("sessions", &opts, 1, 3);
    let mut kinds = vec!["bare"];
    if cfg!(target_os = "linux") {
        kinds.push("epoll");
    }
    kinds.push("tokio");
    open_and_rss_cases(&mut suite, &kinds, "rss_per_session_bytes", move |kind| {
        sample(kind, n)
    });
    suite.run();
    for kind in ["epoll", "tokio"] {
        suite.ratio(
            &format!("{kind}_open_vs_bare"),
            &format!("{kind}-open"),
            "bare-open",
        );
        let (ours, bare) = (
            suite.summary(&format!("{kind}-rss")).map(|s| s.median),
            suite.summary("bare-rss").map(|s| s.median),
        );
        if let (Some(o), Some(b)) = (ours, bare) {
            suite.note(format!(
                "{kind}: {o:.0} B of server user RSS per idle AES-256-GCM session ({:.0} B above a bare accepted socket; goal ≤ 3072, issue 13)",
                o - b
            ));
        }
    }
    suite.note(format!(
        "{n} sessions per sample (zs kinds: zs-core over zs_secure::SecureBackend, handshake done on both ends, proven by a signal the server decrypted; \
         bare: accepted sockets); server 2 event loops, clients in a separate process (1 loop, {CONNECT_THREADS} \
         connecting threads), fresh server process per sample; RSS from /proc/self/statm; threads not pinned"
    ));
    suite.finish();
}
