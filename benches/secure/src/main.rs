//! `cargo xtask bench secure`: the security layer as a transport (`zs-secure`).
//!
//! Throughput (1 GiB per sample, 128 MiB with `--quick`), AES-256-GCM, one
//! connection over loopback, server and client in this process on their own
//! epoll backends with one loop thread each:
//! * `secure-epoll`: a plaintext pump handler behind `SecureBackend(epoll)` sends
//!   the payload (8-byte length, then 64 KiB sends with `Full`/`on_writable`
//!   back-pressure) to a plaintext sink handler behind another `SecureBackend(epoll)`,
//!   which checksums every byte and answers `[count, checksum]`;
//! * `zs-core-bigstream`: today's zs-core secure link (built-in session) moving the
//!   same payload as one BigStream (the `stream` suite's case);
//! * `raw-tcp-copy`: blocking TCP copy to a checksumming sink thread (the limit).
//!
//! Idle memory: a server process (this binary re-executed) accepts `n`
//! connections (2,000; 10,000 without `--quick`) from a client process of
//! blocking `SecureStream`s (or bare sockets for the baseline), waits until every
//! handshake completed (the inner handler's `on_open`), settles 300 ms and reports
//! (RSS after − RSS before) / n: `secure-epoll-idle` vs `bare-epoll-idle`.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use zs_bench_harness::raw::{self, raise_fd_limit, rss_bytes, Checksum};
use zs_bench_harness::{Better, Options, Suite};
use zs_core::{BigChunk, Client, HandlerError, Registry, Server};
use zs_crypto::session::{ClientConfig, SuitePolicy};
use zs_crypto::{SecurityProvider, ServerConfig, ServerIdentity, SuiteId, ZsSecurity};
use zs_io::{Backend, Bytes, BytesMut, Conn, Handler};
use zs_secure::{SecureBackend, SecureStream};
use zs_wire::DataFrame;

fn data(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while v.len() + 8 <= len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    while v.len() < len {
        v.push(v.len() as u8);
    }
    v
}

/// AES-256-GCM only, server key pinned; the same provider for both sides (a fixed
/// seed, so the idle bench's client process pins the server process's key).
fn provider() -> Arc<dyn SecurityProvider> {
    let identity = ServerIdentity::from_seed(&[0x5e; 32]).expect("identity");
    let mut ccfg = ClientConfig::pinned(identity.fingerprint());
    ccfg.suites = vec![SuiteId::Aes256Gcm];
    let mut scfg = ServerConfig::with_identity(Arc::new(identity));
    scfg.policy = SuitePolicy {
        allowed: vec![SuiteId::Aes256Gcm],
        ..SuitePolicy::default()
    };
    Arc::new(ZsSecurity::new(Some(Arc::new(ccfg)), Some(Arc::new(scfg))))
}

fn epoll() -> Arc<dyn Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..zs_io::Config::default()
        })
        .expect("epoll"),
    )
}

fn gbps(bytes: usize, el: Duration) -> f64 {
    bytes as f64 / el.as_secs_f64() / 1e9
}

// ---- secure-epoll: pump and sink over SecureBackend ----

/// Server side: `[len u64]` then `len` bytes; answers `[count, checksum]`.
struct Sink {
    want: Option<u64>,
    sum: Checksum,
}

impl Handler for Sink {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        loop {
            let want = match self.want {
                Some(w) => w,
                None => {
                    if data.len() < 8 {
                        return;
                    }
                    let h = data.split_to(8);
                    let w = u64::from_le_bytes(h[..].try_into().expect("8 bytes"));
                    self.want = Some(w);
                    self.sum = Checksum::new();
                    w
                }
            };
            let n = ((want - self.sum.len()) as usize).min(data.len());
            self.sum.update(&data[..n]);
            let _ = data.split_to(n);
            if self.sum.len() == want {
                let mut back = Vec::with_capacity(16);
                back.extend_from_slice(&self.sum.len().to_le_bytes());
                back.extend_from_slice(&self.sum.value().to_le_bytes());
                let _ = conn.send(Bytes::from(back));
                self.want = None;
            }
            if data.is_empty() {
                return;
            }
        }
    }
}

/// The job a pump works on: the payload and how much of it went out.
type Job = Arc<Mutex<Option<(Bytes, usize)>>>;

struct Pump {
    job: Job,
    done: mpsc::Sender<(u64, u64)>,
    back: Vec<u8>,
}

impl Pump {
    fn pump(&mut self, conn: &Conn) {
        let mut job = self.job.lock().unwrap_or_else(|p| p.into_inner());
        let Some((payload, off)) = job.as_mut() else {
            return;
        };
        if *off == 0 {
            let len = (payload.len() as u64).to_le_bytes();
            if conn.send(Bytes::copy_from_slice(&len)).is_err() {
                return;
            }
        }
        while *off < payload.len() {
            let end = (*off + 64 * 1024).min(payload.len());
            match conn.send(payload.slice(*off..end)) {
                Ok(()) => *off = end,
                Err(_) => return, // Full: on_writable follows
            }
        }
        *job = None;
    }
}

impl Handler for Pump {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        self.back.extend_from_slice(data);
        data.clear();
        while self.back.len() >= 16 {
            let c = u64::from_le_bytes(self.back[..8].try_into().expect("8"));
            let s = u64::from_le_bytes(self.back[8..16].try_into().expect("8"));
            self.back.drain(..16);
            let _ = self.done.send((c, s));
        }
    }
    fn on_writable(&mut self, conn: &Conn) {
        self.pump(conn);
    }
    fn on_timer(&mut self, conn: &Conn, _token: u64) {
        self.pump(conn);
    }
}

struct SecurePair {
    conn: Conn,
    job: Job,
    done: mpsc::Receiver<(u64, u64)>,
    _server: SecureBackend,
    _listener: Box<dyn zs_io::Listener>,
    _client: SecureBackend,
}

fn secure_pair() -> SecurePair {
    let p = provider();
    let server = SecureBackend::new(epoll(), p.clone());
    let listener = server
        .listen(
            "127.0.0.1:0".parse().expect("addr"),
            zs_io::handler_factory(|| Sink {
                want: None,
                sum: Checksum::new(),
            }),
        )
        .expect("listen");
    let client = SecureBackend::new(epoll(), p);
    let job: Job = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    let conn = zs_io::connect_blocking(
        &client,
        listener.local_addr(),
        Duration::from_secs(10),
        Box::new(Pump {
            job: job.clone(),
            done: tx,
            back: Vec::new(),
        }),
    )
    .expect("connect");
    SecurePair {
        conn,
        job,
        done: rx,
        _server: server,
        _listener: listener,
        _client: client,
    }
}

fn secure_sample(p: &SecurePair, payload: &Bytes, want: (u64, u64)) -> f64 {
    let t0 = Instant::now();
    *p.job.lock().unwrap_or_else(|e| e.into_inner()) = Some((payload.clone(), 0));
    p.conn.set_timer(Duration::ZERO, 1).expect("kick");
    let got = p
        .done
        .recv_timeout(Duration::from_secs(300))
        .expect("answer");
    let el = t0.elapsed();
    assert_eq!(got, want, "secure sink saw different bytes");
    gbps(payload.len(), el)
}

// ---- zs-core's built-in secure link ----

fn big_sink(peer: &zs_core::Peer, c: &BigChunk) -> Result<Option<DataFrame>, HandlerError> {
    peer.with_state(|st: &mut Checksum| {
        if c.offset == 0 {
            *st = Checksum::new();
        }
        st.update(&c.data);
        if c.last {
            let df = DataFrame::new().with(st.len()).with(st.value());
            *st = Checksum::new();
            Ok(Some(df))
        } else {
            Ok(None)
        }
    })
}

struct ZsPair {
    client: Client,
    _server: Server,
}

fn zs_pair() -> ZsPair {
    let p = provider();
    let mut commands = Registry::new();
    commands.big_stream("sink", big_sink);
    // zs-core over the layer (its only path since session 11).
    let layered = |p: Arc<dyn zs_crypto::SecurityProvider>| -> Arc<dyn zs_io::Backend> {
        Arc::new(zs_secure::SecureBackend::with_config(
            epoll(),
            p,
            zs_secure::SecureConfig::for_io(&zs_io::Config::default()),
        ))
    };
    let server = Server::start(
        layered(p.clone()),
        commands,
        zs_core::Options::default(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let client = Client::connect(
        layered(p),
        Registry::new(),
        zs_core::Options::client(),
        server.local_addr(),
    )
    .expect("client");
    ZsPair {
        client,
        _server: server,
    }
}

fn zs_sample(p: &ZsPair, payload: &Bytes, want: (u64, u64)) -> f64 {
    let t0 = Instant::now();
    let df = p
        .client
        .send_big_stream("sink", payload.clone(), 0, |_, _| {})
        .wait()
        .expect("big stream");
    let el = t0.elapsed();
    let mut r = df.reader();
    let got = (
        r.read_u64().expect("count"),
        r.read_u64().expect("checksum"),
    );
    assert_eq!(got, want, "receiver saw different bytes");
    gbps(payload.len(), el)
}

// ---- idle memory (server and clients in their own processes) ----

/// Counts inner `on_open`s (after the handshake, for the secure kind).
struct Idle(Arc<AtomicUsize>);

impl Handler for Idle {
    fn on_open(&mut self, _conn: &Conn) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
}

/// `--idle-server <secure|bare> <n>`: prints `RESULT <bytes per connection>`.
fn idle_server(kind: &str, n: usize) {
    if let Err(e) = raise_fd_limit() {
        eprintln!("idle server: cannot raise the descriptor limit: {e}");
    }
    let p = provider();
    let secure = kind == "secure";
    let raw = epoll();
    let backend: Arc<dyn Backend> = if secure {
        Arc::new(SecureBackend::new(raw, p.clone()))
    } else {
        raw
    };
    let opened = Arc::new(AtomicUsize::new(0));
    let o = opened.clone();
    let listener = backend
        .listen(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(move || Box::new(Idle(o.clone())) as Box<dyn Handler>),
        )
        .expect("listen");
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_bytes();
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args([
            "--idle-clients",
            &listener.local_addr().to_string(),
            &n.to_string(),
            kind,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("clients");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).ok();
    let t0 = Instant::now();
    while opened.load(Ordering::Relaxed) < n && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_bytes();
    let got = opened.load(Ordering::Relaxed);
    if got < n {
        eprintln!("idle server: only {got} of {n} connections opened");
    }
    println!(
        "RESULT {}",
        after.saturating_sub(before) as f64 / got.max(1) as f64
    );
    std::io::stdout().flush().ok();
    drop(child.stdin.take());
    let _ = child.wait();
    drop(listener);
    backend.shutdown();
}

/// `--idle-clients <addr> <n> <secure|bare>`: opens `n` connections, says `done`,
/// holds them until stdin closes.
fn idle_clients(addr: SocketAddr, n: usize, kind: &str) {
    if let Err(e) = raise_fd_limit() {
        eprintln!("idle clients: cannot raise the descriptor limit: {e}");
    }
    let p = provider();
    let mut secure = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..n {
        let s = TcpStream::connect(addr).expect("connect");
        if kind == "secure" {
            secure.push(SecureStream::connect(s, &*p).expect("handshake"));
        } else {
            bare.push(s);
        }
    }
    println!("done");
    std::io::stdout().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok();
}

fn idle_sample(kind: &str, n: usize) -> f64 {
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new(exe)
        .args(["--idle-server", kind, &n.to_string()])
        .output()
        .expect("spawn server");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("RESULT ")?.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "idle server gave no result: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--idle-server") {
        idle_server(&args[2], args[3].parse().expect("n"));
        return;
    }
    if args.get(1).map(String::as_str) == Some("--idle-clients") {
        idle_clients(
            args[2].parse().expect("addr"),
            args[3].parse().expect("n"),
            &args[4],
        );
        return;
    }
    let opts = Options::from_env();
    let size = if opts.quick { 128 << 20 } else { 1 << 30 };
    let idle_n = if opts.quick { 2000 } else { 10_000 };
    let mut suite = Suite::from_options("secure", &opts, 3, 5);

    let bytes = data(size);
    let mut sum = Checksum::new();
    sum.update(&bytes);
    let want = (sum.len(), sum.value());
    let payload = Bytes::from(bytes);

    let sink_addr = raw::sink_server();
    let p = payload.clone();
    suite.case("raw-tcp-copy", "gb_per_s", Better::Higher, move || {
        let t0 = Instant::now();
        let got = raw::copy_to(sink_addr, &p).expect("raw copy");
        let el = t0.elapsed();
        assert_eq!(got, want, "raw sink saw different bytes");
        gbps(p.len(), el)
    });
    let pair = secure_pair();
    let p = payload.clone();
    suite.case("secure-epoll", "gb_per_s", Better::Higher, move || {
        secure_sample(&pair, &p, want)
    });
    let zs = zs_pair();
    let p = payload.clone();
    suite.case("zs-core-bigstream", "gb_per_s", Better::Higher, move || {
        zs_sample(&zs, &p, want)
    });
    suite.case(
        "secure-epoll-idle",
        "bytes_per_conn",
        Better::Lower,
        move || idle_sample("secure", idle_n),
    );
    suite.case(
        "bare-epoll-idle",
        "bytes_per_conn",
        Better::Lower,
        move || idle_sample("bare", idle_n),
    );

    suite.run();
    suite.ratio("secure_vs_raw", "secure-epoll", "raw-tcp-copy");
    suite.ratio("secure_vs_zs_core", "secure-epoll", "zs-core-bigstream");
    suite.ratio("zs_core_vs_raw", "zs-core-bigstream", "raw-tcp-copy");
    suite.ratio(
        "idle_bare_vs_secure",
        "secure-epoll-idle",
        "bare-epoll-idle",
    );
    suite.note(format!(
        "{} MiB per sample, AES-256-GCM, 1 loop thread per side, same process, threads not pinned; \
         idle: {idle_n} connections, server RSS growth per connection (goal for the layer + kernel-side \
         user memory: <= 3 KiB per idle handshaken connection)",
        size >> 20
    ));
    suite.finish();
}
