//! `cargo xtask bench db-service`: the zs DB service against Redis 7 on loopback,
//! 100-byte values, in one run:
//! - FastPost (pipelined inserts, records per message 16, one loader thread per
//!   connection, streams open across samples; a sample counts the records
//!   acknowledged **durable** while it ran) vs `redis-benchmark -t set -P 16`;
//! - pipelined GETs (bursts of 16 per connection, the next burst sent when the
//!   last answer of one arrives) vs `redis-benchmark -t get -P 16`;
//! - one GET at a time per connection vs `redis-benchmark -t get` (pipelining 1).
//!   Our loader is event-driven like redis-benchmark: the next request leaves
//!   from the answer's callback on the client's event loop, no thread per
//!   connection; answers go to one shared sink that reads each record in place
//!   ([`DbClient::get_to`]), as redis-benchmark's hiredis parses each reply;
//! - a remote full scan vs zs-db's embedded parallel scan (records/s).
//!
//! Each case runs with 50 connections (the redis-benchmark default), and, without
//! `--quick`, the pipelined ones with 1 connection too (diagnostics, no goal). Our side is encrypted (AES-256-GCM
//! session records), Redis's is not; Redis runs without persistence
//! (`--save "" --appendonly no`), and a second Redis with an fsync per write
//! batch (`--appendonly yes --appendfsync always`) is the durability-matched
//! peer of FastPost.
//!
//! Every sample runs for a fixed time (1 s with `--quick`, 2 s otherwise; the
//! request count of `redis-benchmark` follows the rate of its previous sample),
//! and each pair runs side by side (ours, then theirs) in every round, so a
//! change of machine load hits both sides of a ratio alike.
//!
//! `ZS_DBSVC_CASES=get_vs_redis_get_p1,scan_remote_vs_embedded` runs only the
//! pairs with these ratio names (for profiling one pair);
//! `ZS_DBSVC_SERVER_LOOPS` (default 2) and `ZS_DBSVC_CLIENT_LOOPS` (default 1,
//! as redis-benchmark runs one thread) set the event loops, and
//! `ZS_DBSVC_SCAN_BATCH_KIB` (default 512) the remote scan's batch size.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use zs_bench_harness::{Better, Options, Suite};
use zs_core::{Client, Options as CoreOptions, Registry, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_db::{Kind, Query};
use zs_db_service::{DbClient, DbService, FastPostConfig, GetSink, QuerySpec, ServiceConfig};

const VALUE: usize = 100;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `redis-server` on `port` with `persistence` (`--appendonly ...`
/// arguments), data in `dir`.
fn start_redis(dir: &std::path::Path, port: u16, persistence: &[&str]) -> Option<Redis> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--daemonize", "no"])
        .args(persistence)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let r = Redis(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(5) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(r)
}

/// One `redis-benchmark` run over keys `key:0..keys` (`-r`); returns requests/s.
fn redis_bench_n(port: u16, test: &str, n: u64, conns: usize, pipeline: usize, keys: u64) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", test, "-n", &n.to_string()])
        .args(["-c", &conns.to_string(), "-P", &pipeline.to_string()])
        .args(["-d", &VALUE.to_string(), "-r", &keys.to_string(), "--csv"])
        .output()
        .expect("redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps",...  then  "SET","123456.78",...
    text.lines()
        .find(|l| {
            l.to_ascii_uppercase()
                .starts_with(&format!("\"{}\"", test.to_ascii_uppercase()))
        })
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("cannot read redis-benchmark output: {text}"))
}

fn provider() -> Arc<dyn SecurityProvider> {
    let id = ServerIdentity::from_seed(&[3u8; 32]).expect("identity");
    let c = ClientConfig::pinned(id.fingerprint());
    Arc::new(ZsSecurity::new(
        Some(Arc::new(c)),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

/// `secure(epoll)` with `loops` event loops (the security runs as a layer
/// under zs-core).
fn backend(loops: usize) -> Arc<dyn zs_io::Backend> {
    let raw = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops,
            ..zs_io::Config::default()
        })
        .expect("epoll"),
    );
    zs_secure::compose::secure(raw, provider())
}

fn connect(be: &Arc<dyn zs_io::Backend>, addr: SocketAddr) -> DbClient {
    let be = be.clone();
    DbClient::connect_with(move |reg| {
        Client::connect_stable(be.clone(), reg, CoreOptions::client(), addr)
    })
    .expect("connect")
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("{i:020}").into_bytes();
    v.resize(VALUE, b'v');
    v
}

/// A `redis-benchmark` sampler that runs about `secs` seconds: its request
/// count follows the rate of the previous sample.
fn redis_sampler(
    port: u16,
    test: &'static str,
    conns: usize,
    pipeline: usize,
    secs: f64,
    keys: u64,
) -> impl FnMut() -> f64 {
    let mut rate = 0.0f64;
    move || {
        let n = if rate == 0.0 {
            // probe: a short run to learn the rate
            let probe = (20_000 * pipeline as u64).min(100_000);
            rate = redis_bench_n(port, test, probe, conns, pipeline, keys);
            ((rate * secs) as u64).max(2_000)
        } else {
            ((rate * secs) as u64).max(2_000)
        };
        rate = redis_bench_n(port, test, n, conns, pipeline, keys);
        rate
    }
}

/// An event-driven GET load, the way `redis-benchmark -P N` drives Redis: each
/// connection sends a burst of `pipeline` GETs and, when the last answer of the
/// burst arrives, sends the next burst from the answer's callback on the
/// client's event loop (so a burst leaves in one write), until `dur` is over.
/// Answers come to one shared sink ([`DbClient::get_to`]) that reads each
/// record in place (its value checked, not copied): no allocation per GET on
/// our side of the API. Returns GETs per second.
fn get_load(clients: &[DbClient], pipeline: usize, n_kv: u64, dur: Duration) -> f64 {
    struct Conn {
        client: DbClient,
        left: AtomicUsize,
        k: AtomicU64,
    }
    struct Load {
        deadline: Instant,
        pipeline: usize,
        n_kv: u64,
        gets: AtomicU64,
        conns: Vec<Conn>,
        sink: std::sync::OnceLock<GetSink>,
        active: Mutex<usize>,
        all_done: Condvar,
        failed: Mutex<Option<String>>,
    }
    fn end(load: &Load) {
        let mut a = load.active.lock().expect("lock");
        *a -= 1;
        if *a == 0 {
            load.all_done.notify_all();
        }
    }
    fn burst(load: &Load, i: usize) {
        let (c, sink) = (&load.conns[i], load.sink.get().expect("sink"));
        c.left.store(load.pipeline, Ordering::Release);
        let k = c.k.fetch_add(104_729, Ordering::Relaxed);
        for j in 0..load.pipeline as u64 {
            let id = 1 + (k + j * 31) % load.n_kv;
            c.client.get_to("kv", id, sink, i as u64);
        }
    }
    let t = Instant::now();
    let load = Arc::new(Load {
        deadline: t + dur,
        pipeline,
        n_kv,
        gets: AtomicU64::new(0),
        conns: clients
            .iter()
            .enumerate()
            .map(|(i, c)| Conn {
                client: c.clone(),
                left: AtomicUsize::new(0),
                k: AtomicU64::new(i as u64 * 7919),
            })
            .collect(),
        sink: std::sync::OnceLock::new(),
        active: Mutex::new(clients.len()),
        all_done: Condvar::new(),
        failed: Mutex::new(None),
    });
    let weak = Arc::downgrade(&load);
    let sink = clients[0].get_sink(move |tag, r| {
        let Some(load) = weak.upgrade() else { return };
        match r {
            Ok(Some(rec)) if rec.data.len() == VALUE => {
                load.gets.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                let got = other.map(|r| r.map(|r| r.data.len()));
                *load.failed.lock().expect("lock") = Some(format!("{got:?}"));
            }
        }
        let i = tag as usize;
        if load.conns[i].left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ok = load.failed.lock().expect("lock").is_none();
            if ok && Instant::now() < load.deadline {
                burst(&load, i);
            } else {
                end(&load);
            }
        }
    });
    let _ = load.sink.set(sink);
    for i in 0..clients.len() {
        burst(&load, i);
    }
    let mut a = load.active.lock().expect("lock");
    while *a > 0 {
        a = load.all_done.wait(a).expect("wait");
    }
    drop(a);
    if let Some(f) = load.failed.lock().expect("lock").take() {
        panic!("GET failed: {f}");
    }
    load.gets.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// Wraps a sampler so each sample is the geometric mean of every sample so far.
/// The paired cases of a ratio run back to back in every round, so on this
/// shared machine a phase of load or slow flushes (seconds long) hits both
/// sides of a pair alike; the ratio of two cumulative geometric means is the
/// geometric mean of the round-by-round ratios, in which such phases cancel,
/// where per-case medians could pair one side's fast round with the other's
/// slow one (the approach of `benches/db`).
fn cumulative(mut f: impl FnMut() -> f64) -> impl FnMut() -> f64 {
    let (mut log_sum, mut n) = (0.0f64, 0u32);
    move || {
        let v = f().max(1e-9);
        log_sum += v.ln();
        n += 1;
        (log_sum / f64::from(n)).exp()
    }
}

/// Whether pair `ratio` runs (see `ZS_DBSVC_CASES`).
fn wanted(ratio: &str) -> bool {
    match std::env::var("ZS_DBSVC_CASES") {
        Ok(v) if !v.trim().is_empty() => v.split(',').any(|w| ratio == w.trim()),
        _ => true,
    }
}

fn main() {
    let opts = Options::from_env();
    let (secs, n_kv, n_scan) = if opts.quick {
        (1.0f64, 20_000u64, 1_000_000u64)
    } else {
        (2.0, 100_000, 1_000_000)
    };
    let dur = Duration::from_secs_f64(secs);
    let mut suite = Suite::from_options("db-service", &opts, 4, 6);
    let dir = tempfile::tempdir().expect("tempdir");

    // --- Redis ------------------------------------------------------------------
    let have_redis = Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_ok();
    let (port, port_aof) = (free_port(), free_port());
    let (redis, redis_aof) = if have_redis {
        let plain = dir.path().join("redis");
        let aof = dir.path().join("redis-aof");
        let _ = std::fs::create_dir_all(&plain);
        let _ = std::fs::create_dir_all(&aof);
        (
            start_redis(&plain, port, &["--appendonly", "no"]),
            start_redis(
                &aof,
                port_aof,
                &["--appendonly", "yes", "--appendfsync", "always"],
            ),
        )
    } else {
        (None, None)
    };
    if redis.is_none() {
        eprintln!("redis-server / redis-benchmark not installed: Redis cases skipped");
    } else {
        // every key the GETs ask for exists, as every record ours read does
        // (10 × n random SETs leave about e^-10 of the keys unset)
        redis_bench_n(port, "set", 10 * n_kv, 50, 16, n_kv);
    }

    // --- ours ---------------------------------------------------------------------
    let service =
        DbService::open_dir(dir.path().join("zs"), ServiceConfig::default()).expect("service");
    let srv_loops = env_loops("ZS_DBSVC_SERVER_LOOPS", 2);
    let server_be = backend(srv_loops);
    let mut reg = Registry::new();
    service.register(&mut reg);
    let server = Server::start(
        server_be,
        reg,
        CoreOptions::default(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let addr = server.local_addr();
    // one client loop, as redis-benchmark runs one thread
    let client_be = backend(env_loops("ZS_DBSVC_CLIENT_LOOPS", 1));
    let clients50: Arc<Vec<DbClient>> =
        Arc::new((0..50).map(|_| connect(&client_be, addr)).collect());
    let clients1: Arc<Vec<DbClient>> = Arc::new(vec![connect(&client_be, addr)]);
    clients1[0].open("kv", true).expect("open");
    clients1[0].open("scan", true).expect("open");

    // preload records for GET and scan
    for (db, n) in [("kv", n_kv), ("scan", n_scan)] {
        let mut fp = clients1[0]
            .fastpost(db, FastPostConfig::default())
            .expect("fastpost");
        for i in 0..n {
            fp.post(Kind::Raw, &value(i)).expect("post");
        }
        fp.flush().expect("flush");
    }

    // FastPost: one loader thread per connection posts to its stream, 16
    // records (one message) at a time (FastPost's `post` blocks when its
    // window is full, so a single thread driving 50 streams would stall all of
    // them behind one; measured at 0.4-0.6x this). The streams stay open across
    // samples (as redis-benchmark's connections stay open during its run) and
    // a sample counts the records acknowledged **durable** while it ran: the
    // steady rate at which records become durable, not the time of the last
    // fsync of a burst.
    let fastpost_case = |clients: Arc<Vec<DbClient>>| {
        let streams: Vec<Mutex<zs_db_service::FastPost>> = clients
            .iter()
            .map(|c| {
                let fp = c
                    .fastpost(
                        "kv",
                        FastPostConfig {
                            records_per_message: 16,
                            // records in flight bounded (as -P 16 bounds
                            // redis-benchmark's) yet enough to cover an fsync:
                            // about 4,500 per stream
                            max_unacked: 512 << 10,
                            ..FastPostConfig::default()
                        },
                    )
                    .expect("fastpost");
                Mutex::new(fp)
            })
            .collect();
        let next = AtomicU64::new(0);
        let post_for = move |streams: &[Mutex<zs_db_service::FastPost>], d: Duration| {
            std::thread::scope(|s| {
                for fp in streams {
                    let next = &next;
                    s.spawn(move || {
                        let mut fp = fp.lock().expect("lock");
                        // like redis-benchmark's fixed value: 100 B, the record
                        // number in its first bytes (no formatting in the loop)
                        let mut v = value(0);
                        let t = Instant::now();
                        while t.elapsed() < d {
                            let i = next.fetch_add(16, Ordering::Relaxed);
                            for j in i..i + 16 {
                                v[..8].copy_from_slice(&j.to_le_bytes());
                                fp.post(Kind::Raw, &v).expect("post");
                            }
                        }
                    });
                }
            });
        };
        let mut warm = true;
        move || {
            if warm {
                post_for(&streams, dur / 2); // warm-up: the pipeline fills
                warm = false;
            }
            let acked = || -> u64 {
                streams
                    .iter()
                    .map(|f| f.lock().expect("lock").acked())
                    .sum()
            };
            let (a0, t) = (acked(), Instant::now());
            post_for(&streams, dur);
            (acked() - a0) as f64 / t.elapsed().as_secs_f64()
        }
    };
    let get_case = |clients: Arc<Vec<DbClient>>, pipeline: usize| {
        move || get_load(&clients, pipeline, n_kv, dur)
    };
    let have = redis.is_some();
    let aof = redis_aof.is_some();
    let mut pairs: Vec<(&str, &str, &str)> = Vec::new();
    if wanted("fastpost_vs_redis_set_p16") || wanted("fastpost_vs_redis_set_p16_fsync_matched") {
        suite.case(
            "zs fastpost P16 c50",
            "records_per_s",
            Better::Higher,
            cumulative(fastpost_case(clients50.clone())),
        );
        if have {
            suite.case(
                "redis SET P16 c50",
                "requests_per_s",
                Better::Higher,
                cumulative(redis_sampler(port, "set", 50, 16, secs, n_kv)),
            );
            pairs.push((
                "fastpost_vs_redis_set_p16",
                "zs fastpost P16 c50",
                "redis SET P16 c50",
            ));
        }
        if aof {
            suite.case(
                "redis-aof-always SET P16 c50",
                "requests_per_s",
                Better::Higher,
                cumulative(redis_sampler(port_aof, "set", 50, 16, secs, n_kv)),
            );
            pairs.push((
                "fastpost_vs_redis_set_p16_fsync_matched",
                "zs fastpost P16 c50",
                "redis-aof-always SET P16 c50",
            ));
        }
    }
    let diag = !opts.quick; // the c1 pairs: diagnostics, not goals
    if diag && wanted("fastpost_vs_redis_set_p16_c1") {
        suite.case(
            "zs fastpost P16 c1",
            "records_per_s",
            Better::Higher,
            cumulative(fastpost_case(clients1.clone())),
        );
        if have {
            suite.case(
                "redis SET P16 c1",
                "requests_per_s",
                Better::Higher,
                cumulative(redis_sampler(port, "set", 1, 16, secs, n_kv)),
            );
            pairs.push((
                "fastpost_vs_redis_set_p16_c1",
                "zs fastpost P16 c1",
                "redis SET P16 c1",
            ));
        }
    }
    if wanted("get_vs_redis_get_p16") {
        suite.case(
            "zs get P16 c50",
            "gets_per_s",
            Better::Higher,
            cumulative(get_case(clients50.clone(), 16)),
        );
        if have {
            suite.case(
                "redis GET P16 c50",
                "requests_per_s",
                Better::Higher,
                cumulative(redis_sampler(port, "get", 50, 16, secs, n_kv)),
            );
            pairs.push((
                "get_vs_redis_get_p16",
                "zs get P16 c50",
                "redis GET P16 c50",
            ));
        }
    }
    if diag && wanted("get_vs_redis_get_p16_c1") {
        suite.case(
            "zs get P16 c1",
            "gets_per_s",
            Better::Higher,
            cumulative(get_case(clients1.clone(), 16)),
        );
        if have {
            suite.case(
                "redis GET P16 c1",
                "requests_per_s",
                Better::Higher,
                cumulative(redis_sampler(port, "get", 1, 16, secs, n_kv)),
            );
            pairs.push((
                "get_vs_redis_get_p16_c1",
                "zs get P16 c1",
                "redis GET P16 c1",
            ));
        }
    }
    if wanted("get_vs_redis_get_p1") {
        suite.case(
            "zs get P1 c50",
            "gets_per_s",
            Better::Higher,
            cumulative(get_case(clients50.clone(), 1)),
        );
        if have {
            suite.case(
                "redis GET P1 c50",
                "requests_per_s",
                Better::Higher,
                cumulative(redis_sampler(port, "get", 50, 1, secs, n_kv)),
            );
            pairs.push(("get_vs_redis_get_p1", "zs get P1 c50", "redis GET P1 c50"));
        }
    }
    if wanted("scan_remote_vs_embedded") {
        let remote = clients1[0].clone();
        suite.case(
            "zs scan remote",
            "records_per_s",
            Better::Higher,
            cumulative(move || {
                let t = Instant::now();
                let (mut n, mut bytes) = (0u64, 0u64);
                while t.elapsed() < dur {
                    let mut spec = QuerySpec::new("scan");
                    spec.batch_bytes = env_loops("ZS_DBSVC_SCAN_BATCH_KIB", 512) as u32 * 1024;
                    // the most a query may keep in flight by default (4 MiB)
                    spec.window = (4 << 20) / spec.batch_bytes;
                    let mut q = remote.query(spec).expect("query");
                    // every record read (in place, as the embedded side reads
                    // its owned records)
                    while let Some(b) = q.next_records() {
                        for r in b.expect("batch").iter() {
                            n += 1;
                            bytes += r.data.len() as u64;
                        }
                    }
                }
                assert_eq!(bytes, n * VALUE as u64);
                n as f64 / t.elapsed().as_secs_f64()
            }),
        );
        let local = service.env().db("scan").expect("db");
        suite.case(
            "zs-db scan embedded",
            "records_per_s",
            Better::Higher,
            cumulative(move || {
                let t = Instant::now();
                let (mut n, mut bytes) = (0u64, 0u64);
                while t.elapsed() < dur {
                    // batch by batch, as the remote reader reads (nothing held
                    // beyond the batch in hand)
                    for recs in local.query(Query::all()).expect("query") {
                        for r in &recs.expect("scan") {
                            n += 1;
                            bytes += r.data.len() as u64;
                        }
                    }
                }
                assert_eq!(bytes, n * VALUE as u64);
                n as f64 / t.elapsed().as_secs_f64()
            }),
        );
        pairs.push((
            "scan_remote_vs_embedded",
            "zs scan remote",
            "zs-db scan embedded",
        ));
    }
    suite.run();
    for (key, ours, theirs) in pairs {
        suite.ratio(key, ours, theirs);
    }
    suite.note(format!(
        "values {VALUE} B on loopback, {secs} s per sample, pairs side by side in every round, each figure the geometric mean of its samples up to that round (ratios = geometric means of the round-by-round ratios); \
         ours: AES-256-GCM session encryption and StableIO sessions; server {srv_loops} epoll loops, clients: one epoll client loop for all connections (decrypts, decodes each answer, runs its callback) plus, for FastPost, one loader thread per connection (FastPost's post blocks on a full window); FastPost rate = records acknowledged durable during the sample, streams open across samples (after an fsync of the database; per round of all streams' queued records one fsync of their marks, the database synced every 10 ms), GETs through the full service (small cached records from the loop's lock-free answer cache), each answer handed to one shared sink that reads the record in place and checks its value's length (DbClient::get_to: no allocation or copy of the answer on our side of the API; redis-benchmark parses every reply with hiredis into a malloc'd reply object holding a copy of the value, then frees it); scans: both sides hand every record to the caller (remote: {scan_kib} KiB batches, up to 4 MiB in flight (the service's default cap), records read in place from the received batch after one check of its bytes, embedded: zs-db's parallel scan, owned records read batch by batch); {n_scan} records; \
         Redis 7: no encryption, driven by redis-benchmark -d {VALUE} (one thread, one process per sample, run length set from its previous rate) in the same run; `redis` persistence off (--save \"\" --appendonly no: acknowledged before any write), \
         `redis-aof-always` --appendonly yes --appendfsync always (fsync before the acknowledgement, the durability FastPost promises); \
         server and loaders share the machine's {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        scan_kib = env_loops("ZS_DBSVC_SCAN_BATCH_KIB", 512),
    ));
    drop(redis);
    drop(redis_aof);
    suite.finish();
}

/// Event loops from environment variable `var`, else `default`.
fn env_loops(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
