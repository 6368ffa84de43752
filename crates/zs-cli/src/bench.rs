//! `zs bench rpc|stream|conns`: a load generator against a running `zs serve`.
//!
//! - `rpc`: `--count` console calls of the built-in `echo` with `--concurrency`
//!   calls in flight on one connection (each answer starts the next call), a
//!   `--size`-byte text each; every answer is checked against what was sent.
//! - `stream`: `--count` BigStreams of `--bytes` bytes each to the built-in
//!   `bigsink` command, one after another; the server answers with the byte count
//!   and CRC-32 of what it received, compared with what was sent.
//! - `conns`: opens `--count` sessions (full handshake each) with
//!   `--concurrency` connecting threads, holds them for `--hold` seconds, then
//!   checks they are all still open.
//!
//! The server is found like `zs call` finds it: `--addr`, and the fingerprint
//! from `--fingerprint`, `ZS_FINGERPRINT`, or the key file (`--key`, default
//! `./zs-identity.key`). A progress bar runs on stderr when it is a terminal; the
//! summary table goes to stdout, one header line and one row:
//!
//! ```text
//! bench  count  errors  seconds  throughput  unit      p50_us  p90_us  p99_us
//! rpc    10000  0       0.412    24271.8     calls/s   2510    2930    3471
//! ```
//!
//! Percentiles are of each call's round trip (rpc), each transfer's duration
//! (stream) or each session's connect + handshake time (conns). The exit status
//! is non-zero when any operation failed.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use zserver::crypto::session::ClientConfig;
use zserver::crypto::ZsSecurity;
use zserver::framework::Call;
use zserver::{Client, Registry, Reply, SuiteId, Text};

/// Arguments of `zs bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub kind: BenchKind,
}

/// The three load generators.
#[derive(Debug, clap::Subcommand)]
pub enum BenchKind {
    /// Console calls of `echo` with many in flight.
    Rpc {
        /// Calls in all.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Bytes of text per call.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Server and connection settings.
        #[command(flatten)]
        target: Target,
    },
    /// BigStream transfers to `bigsink`.
    Stream {
        /// Transfers, one after another.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Bytes per transfer.
        #[arg(long, default_value_t = 64 << 20)]
        bytes: u64,
        /// Server and connection settings.
        #[command(flatten)]
        target: Target,
    },
    /// Open many sessions and hold them.
    Conns {
        /// Sessions to open.
        #[arg(long, default_value_t = 1_000)]
        count: u64,
        /// Threads opening sessions at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Seconds to hold the sessions open.
        #[arg(long, default_value_t = 1.0)]
        hold: f64,
        /// Server and connection settings.
        #[command(flatten)]
        target: Target,
    },
}

/// Where the server is and how to reach it (the same flags as `zs call`).
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Server address.
    #[arg(long, default_value = zserver::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// The server's fingerprint, as printed by `zs serve` (`sha3-256:…`).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The server's key file, to read the fingerprint of a local server.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Transport backend: epoll, tokio or default.
    #[arg(long, default_value = "default")]
    pub backend: String,
    /// Seconds to wait for a connection or an answer.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// Largest BigStream `zs bench stream` sends (the payload is held in memory).
const MAX_STREAM_BYTES: u64 = 8 << 30;
/// Largest text per rpc call.
const MAX_RPC_SIZE: usize = 1 << 20;

impl Target {
    /// One shared backend and security provider for every connection of a run.
    fn endpoint(&self, loops: usize) -> Result<Endpoint, String> {
        let mut cfg = ClientConfig::pinned(crate::call::resolve_fingerprint(
            self.fingerprint.as_deref(),
            self.key.as_deref(),
        )?);
        cfg.suites = vec![SuiteId::Aes256Gcm, SuiteId::ChaCha20Poly1305];
        let io = zserver::io::Config {
            loops,
            ..Default::default()
        };
        let raw = zserver::backend_by_name(&self.backend, io.clone()).map_err(|e| e.to_string())?;
        let timeout = Duration::from_secs(self.timeout.max(1));
        let mut options = zserver::Options::client();
        options.call_timeout = Some(timeout);
        options.connect_timeout = timeout;
        let provider = Arc::new(ZsSecurity::new(Some(Arc::new(cfg)), None));
        Ok(Endpoint {
            // The security layer over the named backend.
            backend: zserver::secure::secure_over(&io, Arc::from(raw), provider),
            options,
            addr: self.addr,
        })
    }
}

struct Endpoint {
    /// `secure(backend)`: its connections carry plaintext.
    backend: Arc<dyn zserver::Backend>,
    options: zserver::Options,
    addr: SocketAddr,
}

impl Endpoint {
    fn connect(&self) -> Result<Client, String> {
        Client::connect(
            self.backend.clone(),
            Registry::new(),
            self.options.clone(),
            self.addr,
        )
        .map_err(|e| format!("cannot connect to {}: {e}", self.addr))
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// `rpc`, `stream` or `conns`.
    pub bench: &'static str,
    /// Operations that succeeded.
    pub count: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Operations (or bytes) per second.
    pub throughput: f64,
    /// Unit of `throughput`.
    pub unit: &'static str,
    /// Latency percentiles in microseconds: p50, p90, p99.
    pub pct_us: [u64; 3],
}

impl Summary {
    /// The table: a header line and one row.
    pub fn table(&self) -> String {
        format!(
            "{:<6} {:>10} {:>7} {:>9} {:>14} {:<8} {:>9} {:>9} {:>9}\n{:<6} {:>10} {:>7} {:>9.3} {:>14.1} {:<8} {:>9} {:>9} {:>9}\n",
            "bench", "count", "errors", "seconds", "throughput", "unit", "p50_us", "p90_us", "p99_us",
            self.bench,
            self.count,
            self.errors,
            self.seconds,
            self.throughput,
            self.unit,
            self.pct_us[0],
            self.pct_us[1],
            self.pct_us[2],
        )
    }
}

/// Nearest-rank percentiles (p50, p90, p99) of `us`; zeros when empty.
fn percentiles(mut us: Vec<u64>) -> [u64; 3] {
    if us.is_empty() {
        return [0; 3];
    }
    us.sort_unstable();
    let at = |p: f64| {
        let rank = ((p / 100.0) * us.len() as f64).ceil() as usize;
        us[rank.clamp(1, us.len()) - 1]
    };
    [at(50.0), at(90.0), at(99.0)]
}

fn bar(len: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    let tpl = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}})");
    b.set_style(
        ProgressStyle::with_template(&tpl)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// State of the rpc chains: each answer starts the next call until `count`
/// calls were issued; the last completion wakes the caller.
struct Chains {
    client: Client,
    text: Text,
    count: u64,
    issued: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    first_error: Mutex<Option<String>>,
    done: (Mutex<u64>, Condvar),
    bar: ProgressBar,
}

impl Chains {
    fn issue(self: Arc<Self>) {
        let i = self.issued.fetch_add(1, Ordering::Relaxed);
        if i >= self.count {
            return;
        }
        if !self.client.is_connected() {
            // Fail this call and every call not issued yet at once (no recursion
            // through completions that would fail inline).
            let prev = self.issued.swap(self.count, Ordering::Relaxed).max(i + 1);
            let n = 1 + self.count.saturating_sub(prev);
            self.errors.fetch_add(n, Ordering::Relaxed);
            self.first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| "the connection is closed".into());
            self.bar.inc(n);
            self.finished(n);
            return;
        }
        let call = Call::Console {
            cmd: Text::from("echo"),
            text: self.text.clone(),
        };
        let me = self.clone();
        let t0 = Instant::now();
        self.client.call_with(call, None, move |r| {
            let lat = micros(t0.elapsed());
            match r {
                Ok(Reply::Text(t)) if t.as_str() == me.text.as_str() => {
                    me.ok.fetch_add(1, Ordering::Relaxed);
                    me.latencies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(lat);
                }
                other => {
                    me.errors.fetch_add(1, Ordering::Relaxed);
                    let mut fe = me.first_error.lock().unwrap_or_else(|p| p.into_inner());
                    if fe.is_none() {
                        *fe = Some(match other {
                            Err(e) => e.to_string(),
                            Ok(_) => "the echo differs from the text sent".into(),
                        });
                    }
                }
            }
            me.bar.inc(1);
            me.finished(1);
            me.issue();
        });
    }

    fn finished(&self, k: u64) {
        let (m, c) = &self.done;
        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
        *n += k;
        if *n >= self.count {
            c.notify_all();
        }
    }
}

fn rpc(t: &Target, count: u64, concurrency: usize, size: usize) -> Result<Summary, String> {
    if size > MAX_RPC_SIZE {
        return Err(format!("--size is at most {MAX_RPC_SIZE}"));
    }
    let ep = t.endpoint(1)?;
    let client = ep.connect()?;
    let text: String = (0..size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let bar = bar(count, "calls");
    let chains = Arc::new(Chains {
        client,
        text: Text::from(text.as_str()),
        count,
        issued: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latencies: Mutex::new(Vec::with_capacity(count.min(1 << 24) as usize)),
        first_error: Mutex::new(None),
        done: (Mutex::new(0), Condvar::new()),
        bar: bar.clone(),
    });
    let t0 = Instant::now();
    for _ in 0..concurrency.max(1) {
        chains.clone().issue();
    }
    {
        let (m, c) = &chains.done;
        let mut n = m.lock().unwrap_or_else(|p| p.into_inner());
        while *n < count {
            n = c.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    chains.client.close();
    if let Some(e) = chains
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        eprintln!("zs bench rpc: first error: {e}");
    }
    let ok = chains.ok.load(Ordering::Relaxed);
    let lat = std::mem::take(&mut *chains.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Summary {
        bench: "rpc",
        count: ok,
        errors: chains.errors.load(Ordering::Relaxed),
        seconds,
        throughput: ok as f64 / seconds.max(1e-9),
        unit: "calls/s",
        pct_us: percentiles(lat),
    })
}

/// Deterministic pseudo-random payload (xorshift64*).
fn payload(len: u64) -> Vec<u8> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let mut v = Vec::with_capacity(len);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let w = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
        let take = (len - v.len()).min(8);
        v.extend_from_slice(&w[..take]);
    }
    v
}

fn stream(t: &Target, count: u64, bytes: u64) -> Result<Summary, String> {
    if bytes > MAX_STREAM_BYTES {
        return Err(format!("--bytes is at most {MAX_STREAM_BYTES}"));
    }
    let ep = t.endpoint(1)?;
    let client = ep.connect()?;
    let data = payload(bytes);
    let want = crc32fast::hash(&data);
    let data = zserver::io::Bytes::from(data);
    let bar = bar(count.saturating_mul(bytes), "bytes");
    let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
    let t0 = Instant::now();
    for i in 0..count {
        let b = bar.clone();
        let base = i * bytes;
        let s = Instant::now();
        let r = client
            .send_big_stream("bigsink", data.clone(), 0, move |acked, _| {
                b.set_position(base + acked)
            })
            .wait();
        let d = s.elapsed();
        let verdict = r.map_err(|e| e.to_string()).and_then(|df| {
            let mut rd = df.reader();
            let n = rd.read_u64().map_err(|e| e.to_string())?;
            let crc = rd.read_u32().map_err(|e| e.to_string())?;
            if n == bytes && crc == want {
                Ok(())
            } else {
                Err(format!(
                    "the server saw {n} bytes with CRC-32 {crc:08x}, sent {bytes} with {want:08x}"
                ))
            }
        });
        match verdict {
            Ok(()) => {
                ok += 1;
                lat.push(micros(d));
            }
            Err(e) => {
                if errors == 0 {
                    eprintln!("zs bench stream: transfer {i}: {e}");
                }
                errors += 1;
            }
        }
        bar.set_position(base + bytes);
    }
    let seconds = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    client.close();
    Ok(Summary {
        bench: "stream",
        count: ok,
        errors,
        seconds,
        throughput: (ok * bytes) as f64 / 1e6 / seconds.max(1e-9),
        unit: "MB/s",
        pct_us: percentiles(lat),
    })
}

fn conns(t: &Target, count: u64, concurrency: usize, hold: f64) -> Result<Summary, String> {
    if !(0.0..=3600.0).contains(&hold) {
        return Err("--hold is 0 to 3600 seconds".into());
    }
    let ep = t.endpoint(1)?;
    let bar = bar(count, "sessions");
    let next = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let first_error = Mutex::new(None::<String>);
    let opened: Mutex<Vec<(Client, u64)>> = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, 256) {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let st = Instant::now();
                    match ep.connect() {
                        Ok(c) => opened
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((c, micros(st.elapsed()))),
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                    bar.inc(1);
                }
            });
        }
    });
    let open_s = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    std::thread::sleep(Duration::from_secs_f64(hold));
    let opened = opened.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut errors = errors.into_inner();
    let (mut ok, mut lat) = (0u64, Vec::with_capacity(opened.len()));
    for (c, us) in &opened {
        if c.is_connected() {
            ok += 1;
            lat.push(*us);
        } else {
            errors += 1;
        }
    }
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        eprintln!("zs bench conns: first error: {e}");
    }
    for (c, _) in &opened {
        c.close();
    }
    Ok(Summary {
        bench: "conns",
        count: ok,
        errors,
        seconds: open_s,
        throughput: ok as f64 / open_s.max(1e-9),
        unit: "conns/s",
        pct_us: percentiles(lat),
    })
}

/// Runs `zs bench`.
pub fn run(a: BenchArgs) -> ExitCode {
    let r = match &a.kind {
        BenchKind::Rpc {
            count,
            concurrency,
            size,
            target,
        } => rpc(target, *count, *concurrency, *size),
        BenchKind::Stream {
            count,
            bytes,
            target,
        } => stream(target, *count, *bytes),
        BenchKind::Conns {
            count,
            concurrency,
            hold,
            target,
        } => conns(target, *count, *concurrency, *hold),
    };
    match r {
        Ok(s) => {
            print!("{}", s.table());
            if s.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("zs bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        assert_eq!(percentiles(vec![]), [0, 0, 0]);
        assert_eq!(percentiles(vec![7]), [7, 7, 7]);
        let v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentiles(v), [50, 90, 99]);
    }

    #[test]
    fn table_has_header_and_row() {
        let s = Summary {
            bench: "rpc",
            count: 10,
            errors: 1,
            seconds: 0.5,
            throughput: 20.0,
            unit: "calls/s",
            pct_us: [1, 2, 3],
        };
        let t = s.table();
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0][1], "count");
        assert_eq!(
            lines[1],
            ["rpc", "10", "1", "0.500", "20.0", "calls/s", "1", "2", "3"]
        );
    }

    #[test]
    fn payload_is_exact_length_and_deterministic() {
        for n in [0u64, 1, 7, 8, 9, 1000] {
            assert_eq!(payload(n).len() as u64, n);
        }
        assert_eq!(payload(100), payload(100));
        assert_ne!(payload(16)[..8], payload(16)[8..]);
    }
}
