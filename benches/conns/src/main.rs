//! `cargo xtask bench conns`: how fast a backend opens N connections and how much
//! user-space memory each idle connection costs, next to a bare accept loop.
//!
//! Process layout (each sample is fresh, so allocator reuse never hides memory):
//! the bench process (orchestrator) re-executes itself as a **server** (`--server
//! <kind> <n>`: starts the backend, listens on 127.0.0.1, reads its RSS), and the
//! server re-executes itself as a **client** (`--client <addr> <n>`: a separate
//! process, so client sockets never count in the server's RSS or fd budget). The
//! server starts its clock when it tells the ready client "go" and stops it when
//! its handlers have seen `n` `on_open`s; after 200 ms of settling it reads its RSS
//! again. `rss_per_conn_bytes` = (RSS after − RSS before) / n. N = 15,000 (3,000 with
//! `--quick`), within the 20,000-descriptor limit of each process. The clients
//! connect one after another; `ZS_CONNS_TRACE=1` prints their progress (a stall of
//! about 1 s is a dropped SYN being retransmitted, seen here when the machine is
//! loaded, for the bare loop as much as for the backends).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_bench_harness::raw::{open_and_rss_cases, rss_bytes, server_sample};
use zs_bench_harness::{Options, Suite};
use zs_io::{Backend, BytesMut, Config, Conn, Handler};

/// An idle connection's handler: counts opens, discards data.
struct Idle(Arc<AtomicUsize>);

impl Handler for Idle {
    fn on_open(&mut self, _conn: &Conn) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
}

fn client(addr: SocketAddr, n: usize) {
    let stdin = std::io::stdin();
    let mut line = String::new();
    println!("ready");
    std::io::stdout().flush().ok();
    stdin.lock().read_line(&mut line).ok();
    let mut conns = Vec::with_capacity(n);
    let t0 = Instant::now();
    let trace = std::env::var_os("ZS_CONNS_TRACE").is_some();
    for i in 0..n {
        if trace && i % 1000 == 0 {
            eprintln!("client: {i} connected after {:?}", t0.elapsed());
        }
        // A SYN dropped under load costs a 1 s retransmit; a failed connect is retried.
        let mut tries = 0;
        loop {
            match TcpStream::connect(addr) {
                Ok(s) => {
                    conns.push(s);
                    break;
                }
                Err(e) if tries < 3 => {
                    eprintln!("client: connect {i} failed ({e}), retrying");
                    tries += 1;
                }
                Err(e) => {
                    eprintln!("client: giving up after {} connections: {e}", conns.len());
                    break;
                }
            }
        }
    }
    println!("connected {}", conns.len());
    std::io::stdout().flush().ok();
    // Hold the connections until the server closes our stdin.
    line.clear();
    stdin.lock().read_line(&mut line).ok();
}

fn server(kind: &str, n: usize) {
    let opened = Arc::new(AtomicUsize::new(0));
    let cfg = Config {
        loops: 2,
        ..Config::default()
    };
    let mut backend: Option<Box<dyn Backend>> = None;
    let mut _listener = None;
    let addr: SocketAddr;
    let bare_conns = Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
    match kind {
        "bare" => {
            // Same backlog as the backends (`Config::backlog`), so only the loop differs.
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.set_reuse_address(true).expect("reuse");
            sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
                .expect("bind");
            sock.listen(Config::default().backlog).expect("listen");
            let l: TcpListener = sock.into();
            addr = l.local_addr().expect("addr");
            let (o, keep) = (opened.clone(), bare_conns.clone());
            std::thread::spawn(move || {
                for s in l.incoming() {
                    match s {
                        Ok(s) => {
                            keep.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => eprintln!("bare accept: {e}"),
                    }
                }
            });
        }
        _ => {
            let b: Box<dyn Backend> = match kind {
                #[cfg(target_os = "linux")]
                "epoll" => Box::new(zs_io_epoll::EpollBackend::new(cfg).expect("epoll")),
                "tokio" => Box::new(zs_io_tokio::TokioBackend::new(cfg).expect("tokio")),
                other => panic!("unknown server kind {other}"),
            };
            let o = opened.clone();
            let l = b
                .listen(
                    "127.0.0.1:0".parse().expect("addr"),
                    Arc::new(move || Box::new(Idle(o.clone())) as Box<dyn Handler>),
                )
                .expect("listen");
            addr = l.local_addr();
            _listener = Some(l);
            backend = Some(b);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let rss0 = rss_bytes();
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args(["--client", &addr.to_string(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut cin = child.stdin.take().expect("stdin");
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    let t0 = Instant::now();
    writeln!(cin, "go").expect("go");
    cin.flush().ok();
    let deadline = t0 + Duration::from_secs(60);
    while opened.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let open_s = t0.elapsed().as_secs_f64();
    let got = opened.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let rss1 = rss_bytes();
    let per = rss1.saturating_sub(rss0) as f64 / got.max(1) as f64;
    println!("RESULT {open_s} {per} {got}");
    std::io::stdout().flush().ok();
    drop(cin);
    let _ = child.wait();
    if let Some(b) = backend {
        b.shutdown();
    }
}

/// One fresh server process: `(open_s, rss_per_conn)`.
fn sample(kind: &str, n: usize) -> (f64, f64) {
    let Some((s, _)) = server_sample(kind, n) else {
        return (f64::NAN, f64::NAN);
    };
    if s.count != n {
        eprintln!("{kind}: only {} of {n} connections opened", s.count);
    }
    (s.open_s, s.rss_per_item)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--client" {
        client(args[2].parse().expect("addr"), args[3].parse().expect("n"));
        return;
    }
    if args.len() == 4 && args[1] == "--server" {
        server(&args[2], args[3].parse().expect("n"));
        return;
    }
    let opts = Options::from_env();
    let n = if opts.quick { 3_000 } else { 15_000 };
    let mut suite = Suite::from_options("conns", &opts, 1, 3);
    let mut kinds = vec!["bare"];
    if cfg!(target_os = "linux") {
        kinds.push("epoll");
    }
    kinds.push("tokio");
    open_and_rss_cases(&mut suite, &kinds, "rss_per_conn_bytes", move |kind| {
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
            suite.note(format!("{kind}: {:.0} bytes of user RSS per idle connection above the bare accept loop (goal ≤ 2048)", o - b));
        }
    }
    suite.note(format!(
        "{n} connections per sample; server (2 event loops / tokio workers) and client in separate processes, \
         each sample a fresh server process; RSS from /proc/self/statm; 2-vCPU machine, threads not pinned"
    ));
    suite.finish();
}
