//! `cargo xtask bench db-service`: the zs DB service against Redis 7 on loopback,
//! 100-byte values, in one run:
//! - FastPost (pipelined inserts, records per message 16, counted once every
//!   record is acknowledged **durable**) vs `redis-benchmark -t set -P 16`;
//! - pipelined GETs (16 in flight per connection) vs `redis-benchmark -t get -P 16`;
//! - one GET at a time per connection vs `redis-benchmark -t get` (pipelining 1);
//! - a remote full scan vs zs-db's embedded parallel scan (records/s).
//!
//! Each case runs with 50 connections (the redis-benchmark default), and the
//! pipelined ones with 1 connection too. Our side is encrypted (AES-256-GCM
//! session records), Redis's is not; Redis runs without persistence
//! (`--save "" --appendonly no`).
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_bench_harness::{Better, Options, Suite};
use zs_core::{Client, Options as CoreOptions, Registry, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_db::{Kind, Query};
use zs_db_service::{DbClient, DbService, FastPostConfig, QuerySpec, ServiceConfig};

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

fn start_redis(dir: &std::path::Path, port: u16) -> Option<Redis> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
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

/// One `redis-benchmark` run; returns requests/s.
fn redis_bench(port: u16, test: &str, n: u64, conns: usize, pipeline: usize) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", test, "-n", &n.to_string()])
        .args(["-c", &conns.to_string(), "-P", &pipeline.to_string()])
        .args(["-d", &VALUE.to_string(), "-r", "100000", "--csv"])
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

fn backend(loops: usize) -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops,
            ..zs_io::Config::default()
        })
        .expect("epoll"),
    )
}

fn connect(be: &Arc<dyn zs_io::Backend>, addr: SocketAddr) -> DbClient {
    let be = be.clone();
    DbClient::connect_with(move |reg| {
        Client::connect_stable(be.clone(), provider(), reg, CoreOptions::client(), addr)
    })
    .expect("connect")
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("{i:020}").into_bytes();
    v.resize(VALUE, b'v');
    v
}

/// Runs `f(connection index)` on `clients.len()` threads at once; returns the seconds.
fn parallel(clients: &[DbClient], f: impl Fn(usize, &DbClient) + Sync) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for (i, c) in clients.iter().enumerate() {
            let f = &f;
            s.spawn(move || f(i, c));
        }
    });
    t.elapsed().as_secs_f64().max(1e-9)
}

fn main() {
    let opts = Options::from_env();
    let (n_write, n_get, n_get_p1, n_scan, n_kv) = if opts.quick {
        (16_000u64, 16_000u64, 4_000u64, 100_000u64, 20_000u64)
    } else {
        (400_000, 400_000, 100_000, 1_000_000, 100_000)
    };
    let mut suite = Suite::from_options("db-service", &opts, 3, 5);
    let dir = tempfile::tempdir().expect("tempdir");

    // --- Redis ------------------------------------------------------------------
    let port = free_port();
    let have_redis = Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_ok();
    let redis = if have_redis {
        start_redis(dir.path(), port)
    } else {
        None
    };
    if redis.is_none() {
        eprintln!("redis-server / redis-benchmark not installed: Redis cases skipped");
    }

    // --- ours ---------------------------------------------------------------------
    let service =
        DbService::open_dir(dir.path().join("zs"), ServiceConfig::default()).expect("service");
    let server_be = backend(2);
    let mut reg = Registry::new();
    service.register(&mut reg);
    let server = Server::start(
        server_be,
        provider(),
        reg,
        CoreOptions::default(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let addr = server.local_addr();
    let client_be = backend(2);
    let clients50: Arc<Vec<DbClient>> =
        Arc::new((0..50).map(|_| connect(&client_be, addr)).collect());
    let clients1: Arc<Vec<DbClient>> = Arc::new(vec![connect(&client_be, addr)]);
    clients1[0].open("kv", true).expect("open");
    clients1[0].open("scan", true).expect("open");

    // preload records for GET and scan
    {
        let mut fp = clients1[0]
            .fastpost("kv", FastPostConfig::default())
            .expect("fastpost");
        for i in 0..n_kv {
            fp.post(Kind::Raw, &value(i)).expect("post");
        }
        fp.flush().expect("flush");
        let mut fp = clients1[0]
            .fastpost("scan", FastPostConfig::default())
            .expect("fastpost");
        for i in 0..n_scan {
            fp.post(Kind::Raw, &value(i)).expect("post");
        }
        fp.flush().expect("flush");
    }

    let fastpost_case = |clients: Arc<Vec<DbClient>>, n: u64| {
        move || {
            let per = n / clients.len() as u64;
            let secs = parallel(&clients, |_, c| {
                let mut fp = c
                    .fastpost(
                        "kv",
                        FastPostConfig {
                            records_per_message: 16,
                            ..FastPostConfig::default()
                        },
                    )
                    .expect("fastpost");
                for i in 0..per {
                    fp.post(Kind::Raw, &value(i)).expect("post");
                }
                fp.flush().expect("flush"); // every record durable
            });
            (per * clients.len() as u64) as f64 / secs
        }
    };
    let get_case = |clients: Arc<Vec<DbClient>>, n: u64, pipeline: usize| {
        move || {
            let per = n / clients.len() as u64;
            let secs = parallel(&clients, |k, c| {
                let mut id = 1 + (k as u64 * 7919) % n_kv;
                let mut done = 0;
                while done < per {
                    let ids: Vec<u64> = (0..pipeline as u64)
                        .map(|j| 1 + (id + j * 31) % n_kv)
                        .collect();
                    if pipeline == 1 {
                        c.get("kv", ids[0]).expect("get").expect("present");
                    } else {
                        for r in c.get_pipelined("kv", &ids).expect("get") {
                            r.expect("present");
                        }
                    }
                    id = (id + 104_729) % n_kv;
                    done += pipeline as u64;
                }
            });
            (per * clients.len() as u64) as f64 / secs
        }
    };

    suite.case(
        "zs fastpost P16 c50",
        "records_per_s",
        Better::Higher,
        fastpost_case(clients50.clone(), n_write),
    );
    suite.case(
        "zs fastpost P16 c1",
        "records_per_s",
        Better::Higher,
        fastpost_case(clients1.clone(), n_write / 4),
    );
    suite.case(
        "zs get P16 c50",
        "gets_per_s",
        Better::Higher,
        get_case(clients50.clone(), n_get, 16),
    );
    suite.case(
        "zs get P16 c1",
        "gets_per_s",
        Better::Higher,
        get_case(clients1.clone(), n_get / 4, 16),
    );
    suite.case(
        "zs get P1 c50",
        "gets_per_s",
        Better::Higher,
        get_case(clients50.clone(), n_get_p1, 1),
    );
    let remote = clients1[0].clone();
    suite.case(
        "zs scan remote",
        "records_per_s",
        Better::Higher,
        move || {
            let t = Instant::now();
            let mut spec = QuerySpec::new("scan");
            spec.batch_bytes = 256 << 10;
            let mut n = 0u64;
            for b in remote.query(spec).expect("query") {
                n += b.expect("batch").len() as u64;
            }
            n as f64 / t.elapsed().as_secs_f64()
        },
    );
    let local = service.env().db("scan").expect("db");
    suite.case(
        "zs-db scan embedded",
        "records_per_s",
        Better::Higher,
        move || {
            let t = Instant::now();
            let n = local
                .query(Query::all())
                .expect("query")
                .collect_all()
                .expect("scan")
                .len();
            n as f64 / t.elapsed().as_secs_f64()
        },
    );
    if redis.is_some() {
        suite.case(
            "redis SET P16 c50",
            "requests_per_s",
            Better::Higher,
            move || redis_bench(port, "set", n_write, 50, 16),
        );
        suite.case(
            "redis SET P16 c1",
            "requests_per_s",
            Better::Higher,
            move || redis_bench(port, "set", n_write / 4, 1, 16),
        );
        suite.case(
            "redis GET P16 c50",
            "requests_per_s",
            Better::Higher,
            move || redis_bench(port, "get", n_get, 50, 16),
        );
        suite.case(
            "redis GET P16 c1",
            "requests_per_s",
            Better::Higher,
            move || redis_bench(port, "get", n_get / 4, 1, 16),
        );
        suite.case(
            "redis GET P1 c50",
            "requests_per_s",
            Better::Higher,
            move || redis_bench(port, "get", n_get_p1, 50, 1),
        );
    }
    suite.run();
    suite.ratio(
        "fastpost_vs_redis_set_p16",
        "zs fastpost P16 c50",
        "redis SET P16 c50",
    );
    suite.ratio(
        "fastpost_vs_redis_set_p16_c1",
        "zs fastpost P16 c1",
        "redis SET P16 c1",
    );
    suite.ratio(
        "get_vs_redis_get_p16",
        "zs get P16 c50",
        "redis GET P16 c50",
    );
    suite.ratio(
        "get_vs_redis_get_p16_c1",
        "zs get P16 c1",
        "redis GET P16 c1",
    );
    suite.ratio("get_vs_redis_get_p1", "zs get P1 c50", "redis GET P1 c50");
    suite.ratio(
        "scan_remote_vs_embedded",
        "zs scan remote",
        "zs-db scan embedded",
    );
    suite.note(format!(
        "values {VALUE} B on loopback; ours: AES-256-GCM session encryption, FastPost counted when acknowledged durable (fsync), GETs through the full service; \
         Redis 7: no encryption, persistence off (--save \"\" --appendonly no), driven by redis-benchmark -d {VALUE} in the same run; \
         server and loaders share the machine's {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    ));
    drop(redis);
    suite.finish();
}
