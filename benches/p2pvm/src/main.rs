//! `cargo xtask bench p2pvm`: virtual connections of zs-p2pvm against raw TCP and
//! the `yamux` crate, all over loopback TCP in this process.
//!
//! * **One stream's throughput** (`GB_per_s`): 1 GiB (256 MiB with `--quick`)
//!   through one virtual connection of the real driver (`Tunnel` over
//!   zs-io-epoll, one backend with one event loop per tunnel end), against a raw TCP copy
//!   (the harness's blocking sink) and one yamux stream (tokio, two workers, the
//!   futures compat layer), 256 KiB writes everywhere.
//!   Ratios `stream_vs_raw` and `stream_vs_yamux`.
//! * **Opening N virtual connections** over one link (N = 10k, 100k, and 1M
//!   without `--quick`): each sample is a fresh child process (so allocator reuse
//!   never hides memory) that builds the link, reads its RSS, opens N connections
//!   from one end to a listener at the other, waits until both ends have seen all
//!   N, settles 200 ms and reads its RSS again. `open_s` is the time to open them
//!   all; `bytes_per_idle_vconn` = RSS growth (both ends together) / N. yamux does
//!   the same for 10k only (its open time grows quadratically here: 30k took
//!   about 20 s); its streams each send one byte so the far end surely sees them,
//!   the far end answers one byte (yamux acknowledges a stream with its first
//!   outgoing frame and lets at most 256 wait unacknowledged) and keeps the stream
//!   objects without a task each.
//! * **1,000 streams of 64-byte messages** (`msgs_per_s`): each stream sends M
//!   messages (500 with `--quick`, 2,000 otherwise), one `send` / `write_all` per
//!   message, all streams at once; timed until the far end counted every byte.
//!   Ratio `msgs_vs_yamux`.
//!
//! * **A zs-core server inside a tunnel vs outside it** (`calls_per_s`): one
//!   zs-core `Client` makes sequential 64-byte `echo` calls (each waits for its
//!   answer) to a zs-core `Server`, both with the same zs-crypto session (PSK,
//!   AES-256-GCM by default), once over epoll directly and once over the two ends
//!   of the plaintext tunnel above (`Arc<dyn Backend>` = the `TunnelHandle`): the
//!   same work and the same security promise, plus the tunnel. Ratio
//!   `core_in_tunnel_vs_outside`.
//!
//! Diagnostics (not part of the suite): `--child stream N` prints N 256 MiB
//! transfers through the driver, `--child msgs M` one messages sample of each
//! kind with M messages per stream.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use zs_bench_harness::{Better, Options, Suite};
use zs_io::{Backend, Bytes, BytesMut, Conn, Handler};
use zs_p2pvm::{Auth, Tunnel, TunnelConfig, TunnelHandle};

mod ymx;

/// Case filter (a profiling aid): `ZS_P2PVM_ONLY=zs-core-in-tunnel-seq` runs only
/// the cases named (comma-separated), see `Suite::case_selected`.
const ONLY: &str = "ZS_P2PVM_ONLY";
const WAIT: Duration = Duration::from_secs(120);
const CHUNK: usize = 256 * 1024;
const STREAMS: usize = 1000;
const MSG: usize = 64;
/// yamux's open time grows quadratically here (10k: ≈2 s, 30k: ≈20 s, so 100k
/// would take minutes): it is measured at 10k only.
const YAMUX_MAX_OPEN: usize = 10_000;

fn rss_bytes() -> u64 {
    zs_bench_harness::raw::rss_bytes()
}

/// Both ends of one tunnel over one loopback TCP connection: each end on its own
/// epoll backend with one event loop (as two processes would run it; one
/// backend with two loops may put both connections on the same loop).
pub struct Pair {
    io_a: Arc<dyn Backend>,
    io_b: Arc<dyn Backend>,
    _phys: Box<dyn zs_io::Listener>,
    a: TunnelHandle,
    b: TunnelHandle,
}

/// One tunnel end's physical backend: epoll with one loop (tokio with one worker
/// where epoll does not exist).
fn epoll_one_loop() -> Arc<dyn Backend> {
    let cfg = zs_io::Config {
        loops: 1,
        ..zs_io::Config::default()
    };
    #[cfg(target_os = "linux")]
    let b: Arc<dyn Backend> = Arc::new(zs_io_epoll::EpollBackend::new(cfg).expect("epoll backend"));
    #[cfg(not(target_os = "linux"))]
    let b: Arc<dyn Backend> = Arc::new(zs_io_tokio::TokioBackend::new(cfg).expect("tokio backend"));
    b
}

/// The benchmarks' tunnel: loopback, so no secure session and no token (both
/// chosen explicitly), like the yamux and raw TCP baselines.
fn bench_config() -> TunnelConfig {
    TunnelConfig::plaintext(Auth::None)
}

impl Pair {
    fn new(cfg: TunnelConfig) -> Pair {
        let (io_a, io_b) = (epoll_one_loop(), epoll_one_loop());
        let (factory, rx) = Tunnel::acceptor(cfg.clone()).expect("tunnel config");
        let phys = io_a
            .listen("127.0.0.1:0".parse().expect("addr"), factory)
            .expect("listen");
        let b = Tunnel::connect(&*io_b, phys.local_addr(), cfg, WAIT).expect("tunnel");
        let a = rx.recv_timeout(WAIT).expect("acceptor end");
        a.wait_ready(WAIT).expect("ready");
        Pair {
            io_a,
            io_b,
            _phys: phys,
            a,
            b,
        }
    }

    fn listen(&self, addr: &str, factory: zs_io::HandlerFactory) -> Box<dyn zs_io::Listener> {
        let l = self
            .a
            .listen(addr.parse().expect("vaddr"), factory)
            .expect("virtual listen");
        assert!(self.b.wait_peer_listen(l.local_addr(), WAIT));
        l
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.a.close("bench over");
        self.b.close("bench over");
        self.io_a.shutdown();
        self.io_b.shutdown();
    }
}

// ------------------------------------------------------------------ throughput

/// Counts what arrives; on EOF answers the count (8 bytes) and closes.
struct Sink(u64);

impl Handler for Sink {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        self.0 += data.len() as u64;
        data.clear();
    }
    fn on_eof(&mut self, conn: &Conn) {
        let _ = conn.send(Bytes::copy_from_slice(&self.0.to_le_bytes()));
        conn.close();
    }
}

/// Sends `total` bytes in 256 KiB chunks, half-closes, waits for the count.
struct Pump {
    total: u64,
    sent: u64,
    chunk: Bytes,
    answer: Vec<u8>,
    done: mpsc::Sender<u64>,
}

impl Pump {
    fn pump(&mut self, conn: &Conn) {
        while self.sent < self.total {
            let n = (self.total - self.sent).min(self.chunk.len() as u64) as usize;
            match conn.send(self.chunk.slice(..n)) {
                Ok(()) => self.sent += n as u64,
                Err(zs_io::Error::Full(_)) => return,
                Err(e) => panic!("pump: {e}"),
            }
        }
        let _ = conn.shutdown_write();
    }
}

impl Handler for Pump {
    fn on_open(&mut self, conn: &Conn) {
        self.pump(conn);
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        self.answer.extend_from_slice(&data.split());
        if self.answer.len() >= 8 {
            let mut n = [0u8; 8];
            n.copy_from_slice(&self.answer[..8]);
            let _ = self.done.send(u64::from_le_bytes(n));
            conn.close();
        }
    }
    fn on_writable(&mut self, conn: &Conn) {
        self.pump(conn);
    }
}

fn p2pvm_throughput(pair: &Pair, target: SocketAddr, bytes: u64, chunk: &Bytes) -> f64 {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    pair.b
        .connect(
            target,
            WAIT,
            Box::new(Pump {
                total: bytes,
                sent: 0,
                chunk: chunk.clone(),
                answer: Vec::new(),
                done: tx,
            }),
        )
        .expect("connect");
    let got = rx.recv_timeout(WAIT).expect("transfer finished");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(got, bytes, "short transfer");
    bytes as f64 / secs / 1e9
}

fn raw_throughput(sink: SocketAddr, data: &[u8]) -> f64 {
    let t0 = Instant::now();
    let (n, _) = zs_bench_harness::raw::copy_to(sink, data).expect("raw copy");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(n, data.len() as u64);
    n as f64 / secs / 1e9
}

// ------------------------------------------------------------------ zs-core inside

/// A zs-core server and client on two backends (both ends' `Arc<dyn Backend>`).
struct CorePair {
    client: zs_core::Client,
    _server: zs_core::Server,
}

fn core_security() -> Arc<dyn zs_crypto::SecurityProvider> {
    use zs_crypto::{ClientConfig, ServerConfig, ZsSecurity};
    let key = [0x5au8; 32];
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::psk(b"bench", &key).expect("psk"))),
        Some(Arc::new(
            ServerConfig::with_psk(b"bench", &key).expect("psk"),
        )),
    ))
}

impl CorePair {
    /// `listening(addr)` runs between the server's start and the client's
    /// connect: a tunnel end learns of a virtual listener from the peer's LISTEN
    /// frame, and a connect before it arrived is refused at once.
    fn new(
        server_io: Arc<dyn Backend>,
        client_io: Arc<dyn Backend>,
        addr: SocketAddr,
        listening: impl Fn(SocketAddr),
    ) -> CorePair {
        let mut commands = zs_core::Registry::new();
        commands.console("echo", |_, text| Ok(text.to_owned()));
        let server = zs_core::Server::start(
            zs_secure::compose::secure(server_io, core_security()),
            commands,
            zs_core::Options::default(),
            addr,
        )
        .expect("server");
        listening(server.local_addr());
        let client = zs_core::Client::connect(
            zs_secure::compose::secure(client_io, core_security()),
            zs_core::Registry::new(),
            zs_core::Options::client(),
            server.local_addr(),
        )
        .expect("client");
        CorePair {
            client,
            _server: server,
        }
    }

    /// Sequential calls for about `min`; calls per second.
    fn seq_calls(&self, min: Duration) -> f64 {
        let text = "x".repeat(MSG);
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < min {
            for _ in 0..64 {
                let got = self.client.call("echo", &text).wait().expect("echo");
                assert_eq!(got.len(), MSG);
            }
            n += 64;
        }
        n as f64 / t0.elapsed().as_secs_f64()
    }
}

// ------------------------------------------------------------------ messages

static OPENED: AtomicUsize = AtomicUsize::new(0);

/// An idle virtual connection's handler (zero-sized: no allocation of its own).
struct Idle;

impl Handler for Idle {
    fn on_open(&mut self, _conn: &Conn) {
        OPENED.fetch_add(1, Ordering::Relaxed);
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
}

/// Counts received bytes into a shared counter.
struct Count(Arc<AtomicU64>);

impl Handler for Count {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        self.0.fetch_add(data.len() as u64, Ordering::Relaxed);
        data.clear();
    }
}

const START: u64 = 1;

/// Sends `left` 64-byte messages, one `send` each, once its start timer fires.
struct Blaster {
    left: usize,
    msg: Bytes,
}

impl Blaster {
    fn pump(&mut self, conn: &Conn) {
        while self.left > 0 {
            match conn.send(self.msg.clone()) {
                Ok(()) => self.left -= 1,
                Err(zs_io::Error::Full(_)) => return,
                Err(e) => panic!("blaster: {e}"),
            }
        }
    }
}

impl Handler for Blaster {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
    fn on_timer(&mut self, conn: &Conn, token: u64) {
        if token == START {
            self.pump(conn);
        }
    }
    fn on_writable(&mut self, conn: &Conn) {
        self.pump(conn);
    }
}

fn p2pvm_msgs(pair: &Pair, target: SocketAddr, counter: &AtomicU64, per_stream: usize) -> f64 {
    let msg = Bytes::from(vec![0x5au8; MSG]);
    let conns: Vec<Conn> = (0..STREAMS)
        .map(|_| {
            zs_io::connect_blocking(
                &pair.b,
                target,
                WAIT,
                Box::new(Blaster {
                    left: per_stream,
                    msg: msg.clone(),
                }),
            )
            .expect("connect")
        })
        .collect();
    counter.store(0, Ordering::Relaxed);
    let total = (STREAMS * per_stream * MSG) as u64;
    let t0 = Instant::now();
    for c in &conns {
        c.set_timer(Duration::ZERO, START).expect("start");
    }
    while counter.load(Ordering::Relaxed) < total {
        assert!(t0.elapsed() < WAIT, "messages stalled");
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = t0.elapsed().as_secs_f64();
    for c in &conns {
        c.close();
    }
    (STREAMS * per_stream) as f64 / secs
}

// ------------------------------------------------------------------ open N (child)

/// Child process: opens `n` virtual connections; prints `RESULT <secs> <bytes each>`.
fn child_open_p2pvm(n: usize) {
    let mut cfg = bench_config();
    cfg.mux.max_streams = (n as u32).saturating_add(16);
    let pair = Pair::new(cfg);
    let l = pair.listen("10.0.0.1:1", zs_io::handler_factory(|| Idle));
    std::thread::sleep(Duration::from_millis(100));
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    for _ in 0..n {
        pair.b
            .connect(l.local_addr(), WAIT, Box::new(Idle))
            .expect("connect");
    }
    // Both ends: n accepted (a) + n connected (b).
    while OPENED.load(Ordering::Relaxed) < 2 * n {
        assert!(
            t0.elapsed() < WAIT,
            "only {} opened",
            OPENED.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let rss1 = rss_bytes();
    assert_eq!(pair.a.vconn_count(), n);
    assert_eq!(pair.b.vconn_count(), n);
    println!(
        "RESULT {secs} {}",
        rss1.saturating_sub(rss0) as f64 / n as f64
    );
    std::process::exit(0);
}

/// Runs this binary as a child (`--child <kind> <n>`) and parses its result.
fn run_child(kind: &str, n: usize) -> (f64, f64) {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .args(["--child", kind, &n.to_string()])
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "child {kind} {n} failed: {}\n{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut it = line.split_whitespace().skip(1);
    let secs: f64 = it.next().and_then(|v| v.parse().ok()).expect("secs");
    let bytes: f64 = it.next().and_then(|v| v.parse().ok()).expect("bytes");
    (secs, bytes)
}

fn label(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1000)
    }
}

/// Adds the open-time and memory cases of one kind and size; one child run feeds both.
fn add_open_cases(suite: &mut Suite, kind: &'static str, n: usize) {
    let last = Arc::new(Mutex::new(None::<f64>));
    let l2 = last.clone();
    suite.case_selected(
        ONLY,
        &format!("{kind}-open-{}", label(n)),
        "open_s",
        Better::Lower,
        move || {
            let (secs, bytes) = run_child(kind, n);
            *l2.lock().expect("lock") = Some(bytes);
            secs
        },
    );
    suite.case_selected(
        ONLY,
        &format!("{kind}-idle-{}", label(n)),
        "bytes_per_idle_vconn",
        Better::Lower,
        move || {
            last.lock()
                .expect("lock")
                .take()
                .expect("open case ran first")
        },
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--child" {
        let n: usize = args[3].parse().expect("n");
        match args[2].as_str() {
            "p2pvm" => child_open_p2pvm(n),
            "yamux" => ymx::child_open(n),
            // Diagnostics: throughput samples of the driver only, printed.
            "stream" => {
                let pair = Pair::new(bench_config());
                let l = pair.listen("10.0.0.1:9", zs_io::handler_factory(|| Sink(0)));
                let chunk = Bytes::from(vec![7u8; CHUNK]);
                for _ in 0..n {
                    let g = p2pvm_throughput(&pair, l.local_addr(), 256 << 20, &chunk);
                    println!("p2pvm {g:.3} GB/s");
                }
            }
            // Diagnostics: one messages sample of each kind, printed.
            "msgs" => {
                let y = ymx::Bench::new();
                println!("yamux {:.0} msgs/s", y.msgs(STREAMS, n, MSG));
                let pair = Pair::new(bench_config());
                let counter = Arc::new(AtomicU64::new(0));
                let c2 = counter.clone();
                let l = pair.listen(
                    "10.0.0.1:10",
                    Arc::new(move || Box::new(Count(c2.clone())) as Box<dyn Handler>),
                );
                println!(
                    "p2pvm {:.0} msgs/s",
                    p2pvm_msgs(&pair, l.local_addr(), &counter, n)
                );
            }
            other => panic!("unknown child kind {other}"),
        }
        return;
    }
    let opts = Options::from_env();
    let mut suite = Suite::from_options("p2pvm", &opts, 3, 5);
    let bytes: u64 = if opts.quick { 256 << 20 } else { 1 << 30 };
    let per_stream = if opts.quick { 500 } else { 2000 };
    let sizes: Vec<usize> = if opts.quick {
        vec![10_000, 100_000]
    } else {
        vec![10_000, 100_000, 1_000_000]
    };

    // Shared fixtures, built once.
    let pair = Arc::new(Pair::new(bench_config()));
    let sink_l = pair.listen("10.0.0.1:9", zs_io::handler_factory(|| Sink(0)));
    let counter = Arc::new(AtomicU64::new(0));
    let c2 = counter.clone();
    let count_l = pair.listen(
        "10.0.0.1:10",
        Arc::new(move || Box::new(Count(c2.clone())) as Box<dyn Handler>),
    );
    let data: Arc<Vec<u8>> = Arc::new((0..bytes as usize).map(|i| (i % 251) as u8).collect());
    let chunk = Bytes::from(data[..CHUNK].to_vec());
    let raw_sink = zs_bench_harness::raw::sink_server();
    let core_min = Duration::from_millis(if opts.quick { 300 } else { 1000 });
    let core_in = Arc::new(CorePair::new(
        Arc::new(pair.a.clone()),
        Arc::new(pair.b.clone()),
        "10.0.0.1:11".parse().expect("vaddr"),
        |a| {
            assert!(
                pair.b.wait_peer_listen(a, WAIT),
                "virtual listener announced"
            )
        },
    ));
    let core_io = epoll_one_loop();
    let core_out = Arc::new(CorePair::new(
        core_io.clone(),
        core_io.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        |_| {},
    ));
    // The same outside, but client and server on two backends of one loop each,
    // like the tunnel's two ends: the same number of thread hand-offs per call
    // (client thread -> server loop -> client loop -> client thread) as in the
    // tunnel, so this ratio isolates the tunnel's own cost.
    let (core_io_s, core_io_c) = (epoll_one_loop(), epoll_one_loop());
    let core_out2 = Arc::new(CorePair::new(
        core_io_s.clone(),
        core_io_c.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        |_| {},
    ));
    let yamux = Arc::new(ymx::Bench::new());

    let (p, t, c) = (pair.clone(), sink_l.local_addr(), chunk.clone());
    suite.case_selected(
        ONLY,
        "p2pvm-epoll-1stream",
        "GB_per_s",
        Better::Higher,
        move || p2pvm_throughput(&p, t, bytes, &c),
    );
    let d = data.clone();
    suite.case_selected(
        ONLY,
        "raw-tcp-1stream",
        "GB_per_s",
        Better::Higher,
        move || raw_throughput(raw_sink, &d),
    );
    let (y, d) = (yamux.clone(), data.clone());
    suite.case_selected(
        ONLY,
        "yamux-1stream",
        "GB_per_s",
        Better::Higher,
        move || y.throughput(&d),
    );

    for &n in &sizes {
        add_open_cases(&mut suite, "p2pvm", n);
        if n <= YAMUX_MAX_OPEN {
            add_open_cases(&mut suite, "yamux", n);
        }
    }

    let c = core_in.clone();
    suite.case_selected(
        ONLY,
        "zs-core-in-tunnel-seq",
        "calls_per_s",
        Better::Higher,
        move || c.seq_calls(core_min),
    );
    let c = core_out.clone();
    suite.case_selected(
        ONLY,
        "zs-core-outside-seq",
        "calls_per_s",
        Better::Higher,
        move || c.seq_calls(core_min),
    );
    let c = core_out2.clone();
    suite.case_selected(
        ONLY,
        "zs-core-outside-2loops-seq",
        "calls_per_s",
        Better::Higher,
        move || c.seq_calls(core_min),
    );

    let (p, t, cn) = (pair.clone(), count_l.local_addr(), counter.clone());
    suite.case_selected(
        ONLY,
        "p2pvm-1000x64B",
        "msgs_per_s",
        Better::Higher,
        move || p2pvm_msgs(&p, t, &cn, per_stream),
    );
    let y = yamux.clone();
    suite.case_selected(
        ONLY,
        "yamux-1000x64B",
        "msgs_per_s",
        Better::Higher,
        move || y.msgs(STREAMS, per_stream, MSG),
    );

    suite.run();
    suite.ratio("stream_vs_raw", "p2pvm-epoll-1stream", "raw-tcp-1stream");
    suite.ratio("stream_vs_yamux", "p2pvm-epoll-1stream", "yamux-1stream");
    for &n in &sizes {
        if n <= YAMUX_MAX_OPEN {
            let l = label(n);
            suite.ratio(
                &format!("open_vs_yamux_{l}"),
                &format!("p2pvm-open-{l}"),
                &format!("yamux-open-{l}"),
            );
            suite.ratio(
                &format!("idle_bytes_vs_yamux_{l}"),
                &format!("p2pvm-idle-{l}"),
                &format!("yamux-idle-{l}"),
            );
        }
    }
    suite.ratio("msgs_vs_yamux", "p2pvm-1000x64B", "yamux-1000x64B");
    suite.ratio(
        "core_in_tunnel_vs_outside",
        "zs-core-in-tunnel-seq",
        "zs-core-outside-seq",
    );
    suite.ratio(
        "core_in_tunnel_vs_outside_2loops",
        "zs-core-in-tunnel-seq",
        "zs-core-outside-2loops-seq",
    );
    suite.note(
        "zs-core-*-seq: sequential 64 B echo calls, zs-core client and server with the same PSK zs-crypto session; \
         in-tunnel: over the plaintext tunnel's two ends (the tunnel's own epoll loops), outside: over one epoll backend with one loop; outside-2loops: client and server on two one-loop epoll backends \
         (the tunnel's thread hand-offs without the tunnel)",
    );
    let biggest = label(*sizes.last().expect("sizes"));
    if let Some(s) = suite.summary(&format!("p2pvm-idle-{biggest}")) {
        let note = format!(
            "bytes_per_idle_vconn ({biggest}, both ends, full driver incl. zs-io handles): {:.0} B (goal <= 512)",
            s.median
        );
        suite.note(note);
    }
    suite.note(
        "yamux opens only 10k streams: its open time grows quadratically here (30k took about 20 s)",
    );
    drop(sink_l);
    drop(count_l);
    drop(core_in);
    drop(core_out);
    drop(core_out2);
    core_io.shutdown();
    core_io_s.shutdown();
    core_io_c.shutdown();
    suite.finish();
}
