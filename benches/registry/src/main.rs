//! `cargo xtask bench registry`: the embedded registry side by side with etcd 3.4.
//!
//! Both run as their own process on loopback: etcd (Debian `etcd-server`,
//! default settings, data in a temp dir) and this binary re-started in server
//! mode (`--serve-registry`: the embedded registry on zs-core over epoll, its
//! database fsynced before every acknowledgement, as etcd does). Clients:
//! - ours: `zs_registry::Remote` (zs-core connections, AEAD sessions);
//! - theirs: raw `etcd-client` calls (a put with a lease; a prefix get plus the
//!   same least-loaded choice client-side; a prefix watch); and our etcd backend
//!   (the trait over etcd-client) to report its own overhead.
//!
//! Cases: registrations/s with 1 and 64 clients, least-loaded picks/s with 1
//! and 64 clients (100 instances of the type), register-to-watch-event latency
//! p50/p99 with 1 and 64 watchers, and server CPU seconds per second while
//! 1,000 leases (and 10,000 in full runs) are renewed every second (ours
//! batched with `keepalive_many`, etcd on one keepalive stream per lease).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, PutOptions, WatchOptions};
use zs_bench_harness::{Better, Options, Suite};
use zs_core::{Client, Options as CoreOptions};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_registry::service::{install, ServiceConfig};
use zs_registry::{
    choose_least_loaded, Embedded, EmbeddedConfig, Etcd, EtcdConfig, Instance, Limits, Remote,
    ServiceRegistry, WatchItem,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

fn limits() -> Limits {
    Limits {
        max_leases_per_conn: 1 << 20,
        max_instances_per_lease: 1 << 20,
        max_instances: 1 << 20,
        max_waiters_per_conn: 64,
        ..Limits::default()
    }
}

fn epoll(loops: usize) -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops,
            ..zs_io::Config::default()
        })
        .expect("epoll"),
    )
}

/// Server mode: the embedded registry on zs-core until stdin closes.
fn serve(dir: &str, seed: &str) {
    let id = ServerIdentity::from_seed(&unhex(seed)).expect("seed");
    let provider: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
        None,
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ));
    let vfs = Arc::new(zs_db::DirVfs::new(dir).expect("dir"));
    let reg = Embedded::open(
        vfs,
        "registry",
        EmbeddedConfig {
            limits: limits(),
            ..EmbeddedConfig::default()
        },
    )
    .expect("open");
    let mut cmds = zs_core::Registry::new();
    install(&mut cmds, reg, ServiceConfig::default());
    // the default of `zs serve`: one event loop per core (etcd runs with
    // GOMAXPROCS = cores too)
    let server = zs_core::Server::start(
        zs_secure::compose::secure(epoll(0), provider),
        cmds,
        CoreOptions::default(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    println!("ADDR {}", server.local_addr());
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// CPU time of the process so far, in seconds: the sum of its threads'
    /// run time from `/proc/PID/task/*/schedstat` (nanoseconds; `stat`'s
    /// 10 ms ticks cannot see a batched renewal of 1,000 leases).
    fn cpu_seconds(&self) -> f64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.0.id())) else {
            return 0.0;
        };
        let ns: u64 = tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        ns as f64 / 1e9
    }
}

fn start_etcd(dir: &std::path::Path) -> (Proc, String) {
    let (cp, pp) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{cp}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pp}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{pp}"),
        ])
        .args([
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{pp}"),
        ])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt-get install etcd-server)");
    let p = Proc(child);
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", cp)).is_err() {
        assert!(Instant::now() < end, "etcd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, url)
}

fn start_ours(dir: &std::path::Path) -> (Proc, SocketAddr, Arc<dyn SecurityProvider>) {
    let (id, seed) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).expect("identity");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("--serve-registry")
        .arg(dir.join("ours"))
        .arg(hex(&seed))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server mode");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("addr line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("ADDR ")
        .expect("ADDR line")
        .parse()
        .expect("addr");
    let provider: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(id.fingerprint()))),
        None,
    ));
    (Proc(child), addr, provider)
}

/// A client of the registry at `addr` over `backend` (a security layer).
fn remote(backend: Arc<dyn zs_io::Backend>, addr: SocketAddr) -> Remote {
    Remote::new(
        move |cmds| Client::connect(backend.clone(), cmds, CoreOptions::client(), addr),
        Duration::from_secs(10),
    )
}

fn inst(kind: &str, id: u64, load: u64) -> Instance {
    Instance::new(kind, &format!("n{id}"), "10.1.2.3:7777")
        .with_load(load, 1000)
        .with_meta("zone", "eu-west")
}

/// Runs `f(client_index)` on `n` threads for `t`; answers operations/s.
fn threads_rate(n: usize, t: Duration, f: Arc<dyn Fn(usize, u64) + Send + Sync>) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(n + 1));
    let mut hs = Vec::new();
    for c in 0..n {
        let (done, start, f) = (done.clone(), start.clone(), f.clone());
        hs.push(std::thread::spawn(move || {
            start.wait();
            let t0 = Instant::now();
            let mut i = 0u64;
            while t0.elapsed() < t {
                f(c, i);
                i += 1;
            }
            done.fetch_add(i, Ordering::Relaxed);
        }));
    }
    start.wait();
    let t0 = Instant::now();
    for h in hs {
        h.join().expect("thread");
    }
    done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

/// Runs `n` etcd clients as tasks on `rt` for `t`, each repeating
/// `op(its client, client index, iteration)`; answers operations/s.
fn etcd_rate<F, Fut>(
    rt: &tokio::runtime::Runtime,
    clients: &[etcd_client::Client],
    n: usize,
    t: Duration,
    op: F,
) -> f64
where
    F: Fn(etcd_client::Client, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let t0 = Instant::now();
    let futs: Vec<_> = (0..n)
        .map(|c| {
            let (cl, op) = (clients[c].clone(), op.clone());
            rt.spawn(async move {
                let start = Instant::now();
                let mut i = 0u64;
                while start.elapsed() < t {
                    op(cl.clone(), c, i).await;
                    i += 1;
                }
                i
            })
        })
        .collect();
    let total: u64 = rt.block_on(async {
        let mut s = 0;
        for f in futs {
            s += f.await.expect("task");
        }
        s
    });
    total as f64 / t0.elapsed().as_secs_f64()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve-registry") {
        serve(&args[2], &args[3]);
        return;
    }
    let opts = Options::from_env();
    let (t, events) = if opts.quick {
        (Duration::from_millis(300), 60usize)
    } else {
        (Duration::from_secs(1), 300usize)
    };
    let mut suite = Suite::from_options("registry", &opts, 3, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let (etcd_proc, url) = start_etcd(dir.path());
    let (ours_proc, addr, provider) = start_ours(dir.path());
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let etcd_client = rt
        .block_on(etcd_client::Client::connect([url.clone()], None))
        .expect("etcd connect");
    let mut etcd_clients = Vec::new();
    for _ in 0..64 {
        etcd_clients.push(
            rt.block_on(etcd_client::Client::connect([url.clone()], None))
                .expect("etcd connect"),
        );
    }
    // our 64 clients share one epoll backend with 2 loops, as etcd's share a
    // 2-thread tokio runtime (a backend per client was 64 more threads)
    let client_io = zs_secure::compose::secure(epoll(2), provider);
    let ours: Vec<Arc<Remote>> = (0..64)
        .map(|_| Arc::new(remote(client_io.clone(), addr)))
        .collect();
    // a lease belongs to the connection that granted it: one per client
    let client_leases: Arc<Vec<i64>> = Arc::new(
        ours.iter()
            .map(|o| o.grant(Duration::from_secs(600)).expect("grant"))
            .collect(),
    );
    let ours_lease = client_leases[0];
    let etcd_lease = {
        let mut c = etcd_client.clone();
        rt.block_on(c.lease_grant(600, None)).expect("grant").id()
    };
    let backend = Arc::new(
        Etcd::connect(EtcdConfig {
            prefix: "/zsb/".into(),
            ..EtcdConfig::new(&url)
        })
        .expect("etcd backend"),
    );
    let backend_lease = backend.grant(Duration::from_secs(600)).expect("grant");

    // --- registrations/s --------------------------------------------------------
    for n in [1usize, 64] {
        let (o, ls) = (ours.clone(), client_leases.clone());
        suite.case(
            &format!("zs register c{n}"),
            "registrations_per_s",
            Better::Higher,
            move || {
                let (o, ls) = (o.clone(), ls.clone());
                threads_rate(
                    n,
                    t,
                    Arc::new(move |c, i| {
                        o[c].register(ls[c], &inst("reg", (c as u64) * 1000 + i % 1000, i % 100))
                            .expect("register");
                    }),
                )
            },
        );
        let (rt2, cl) = (rt.clone(), etcd_clients.clone());
        suite.case(
            &format!("etcd register c{n}"),
            "registrations_per_s",
            Better::Higher,
            move || {
                etcd_rate(&rt2, &cl, n, t, move |mut cl, c, i| async move {
                    let id = (c as u64) * 1000 + i % 1000;
                    let v = serde_json::to_vec(&inst("reg", id, i % 100)).expect("json");
                    cl.put(
                        format!("/raw/i/reg/n{id}"),
                        v,
                        Some(PutOptions::new().with_lease(etcd_lease)),
                    )
                    .await
                    .expect("put");
                })
            },
        );
    }
    {
        let b = backend.clone();
        suite.case(
            "zs-etcd-backend register c1",
            "registrations_per_s",
            Better::Higher,
            move || {
                let b = b.clone();
                threads_rate(
                    1,
                    t,
                    Arc::new(move |_, i| {
                        b.register(backend_lease, &inst("reg", i % 1000, i % 100))
                            .expect("register");
                    }),
                )
            },
        );
    }

    // --- least-loaded picks/s ----------------------------------------------------
    for i in 0..100u64 {
        ours[0]
            .register(ours_lease, &inst("game", i, (i * 37) % 500))
            .expect("register");
        let v = serde_json::to_vec(&inst("game", i, (i * 37) % 500)).expect("json");
        let mut c = etcd_client.clone();
        rt.block_on(c.put(
            format!("/raw/i/game/n{i}"),
            v,
            Some(PutOptions::new().with_lease(etcd_lease)),
        ))
        .expect("put");
    }
    for n in [1usize, 64] {
        let o = ours.clone();
        suite.case(
            &format!("zs pick c{n}"),
            "picks_per_s",
            Better::Higher,
            move || {
                let o = o.clone();
                threads_rate(
                    n,
                    t,
                    Arc::new(move |c, _| {
                        o[c].pick("game").expect("pick").expect("some");
                    }),
                )
            },
        );
        let (rt2, cl) = (rt.clone(), etcd_clients.clone());
        suite.case(
            &format!("etcd pick c{n}"),
            "picks_per_s",
            Better::Higher,
            move || {
                etcd_rate(&rt2, &cl, n, t, |mut cl, _, i| async move {
                    let r = cl
                        .get("/raw/i/game/", Some(GetOptions::new().with_prefix()))
                        .await
                        .expect("get");
                    let all: Vec<Instance> = r
                        .kvs()
                        .iter()
                        .map(|kv| serde_json::from_slice(kv.value()).expect("json"))
                        .collect();
                    std::hint::black_box(choose_least_loaded(&all, i).expect("some"));
                })
            },
        );
    }

    // --- register-to-watch latency -------------------------------------------------
    let base = Instant::now();
    let now_us = move || base.elapsed().as_secs_f64() * 1e6;
    for n in [1usize, 64] {
        let p99: Arc<Mutex<f64>> = Arc::new(Mutex::new(f64::NAN));
        let (o, p) = (ours.clone(), p99.clone());
        let mut seq = 0u64;
        suite.case(
            &format!("zs watch p50 w{n}"),
            "us",
            Better::Lower,
            move || {
                seq += 1;
                let kind = format!("w{n}x{seq}");
                let samples = Arc::new(Mutex::new(Vec::new()));
                let ready = Arc::new(Barrier::new(n + 1));
                let stop = Arc::new(AtomicBool::new(false));
                let mut hs = Vec::new();
                for c in 0..n {
                    let (o, kind, samples, ready, stop) = (
                        o[c].clone(),
                        kind.clone(),
                        samples.clone(),
                        ready.clone(),
                        stop.clone(),
                    );
                    hs.push(std::thread::spawn(move || {
                        let mut w = o.watch(Some(&kind), None).expect("watch");
                        let _ = w.next(Duration::from_secs(5)).expect("snapshot");
                        ready.wait();
                        let mut got = 0;
                        while got < events && !stop.load(Ordering::Relaxed) {
                            if let Some(WatchItem::Change(e)) =
                                w.next(Duration::from_millis(200)).expect("next")
                            {
                                if let zs_registry::Change::Put { instance } = e.change {
                                    let sent: f64 = instance.meta["t"].parse().expect("t");
                                    samples.lock().expect("s").push(now_us() - sent);
                                    got += 1;
                                }
                            }
                        }
                    }));
                }
                ready.wait();
                for i in 0..events {
                    let mut x = inst(&kind, i as u64 % 10, 1);
                    x.meta.insert("t".into(), format!("{:.1}", now_us()));
                    o[0].register(ours_lease, &x).expect("register");
                    std::thread::sleep(Duration::from_millis(2));
                }
                std::thread::sleep(Duration::from_millis(300));
                stop.store(true, Ordering::Relaxed);
                for h in hs {
                    h.join().expect("watcher");
                }
                let mut s = samples.lock().expect("s").clone();
                *p.lock().expect("p") = percentile(&mut s, 0.99);
                percentile(&mut s, 0.5)
            },
        );
        suite.case(
            &format!("zs watch p99 w{n}"),
            "us",
            Better::Lower,
            move || *p99.lock().expect("p"),
        );

        let p99: Arc<Mutex<f64>> = Arc::new(Mutex::new(f64::NAN));
        let (rt2, cl, p) = (rt.clone(), etcd_clients.clone(), p99.clone());
        let mut seq = 0u64;
        suite.case(
            &format!("etcd watch p50 w{n}"),
            "us",
            Better::Lower,
            move || {
                seq += 1;
                let prefix = format!("/raw/i/w{n}x{seq}/");
                let samples = Arc::new(Mutex::new(Vec::new()));
                let mut tasks = Vec::new();
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                for c in 0..n {
                    let (mut cl, prefix, samples, ready_tx) = (
                        cl[c].clone(),
                        prefix.clone(),
                        samples.clone(),
                        ready_tx.clone(),
                    );
                    tasks.push(rt2.spawn(async move {
                        let mut ws = cl
                            .watch(prefix, Some(WatchOptions::new().with_prefix()))
                            .await
                            .expect("watch");
                        let _ = ready_tx.send(());
                        let mut got = 0;
                        while got < events {
                            let Ok(Ok(Some(r))) =
                                tokio::time::timeout(Duration::from_secs(2), ws.message()).await
                            else {
                                break;
                            };
                            for e in r.events() {
                                if let Some(kv) = e.kv() {
                                    if let Ok(i) = serde_json::from_slice::<Instance>(kv.value()) {
                                        let sent: f64 = i.meta["t"].parse().expect("t");
                                        samples.lock().expect("s").push(now_us() - sent);
                                        got += 1;
                                    }
                                }
                            }
                        }
                    }));
                }
                for _ in 0..n {
                    ready_rx.recv().expect("ready");
                }
                std::thread::sleep(Duration::from_millis(50));
                let mut w = cl[0].clone();
                for i in 0..events {
                    let mut x = inst("w", i as u64 % 10, 1);
                    x.meta.insert("t".into(), format!("{:.1}", now_us()));
                    let v = serde_json::to_vec(&x).expect("json");
                    rt2.block_on(w.put(
                        format!("{prefix}n{}", i % 10),
                        v,
                        Some(PutOptions::new().with_lease(etcd_lease)),
                    ))
                    .expect("put");
                    std::thread::sleep(Duration::from_millis(2));
                }
                rt2.block_on(async {
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                let mut s = samples.lock().expect("s").clone();
                *p.lock().expect("p") = percentile(&mut s, 0.99);
                percentile(&mut s, 0.5)
            },
        );
        suite.case(
            &format!("etcd watch p99 w{n}"),
            "us",
            Better::Lower,
            move || *p99.lock().expect("p"),
        );
    }

    // --- server CPU with 1,000 (and 10,000, full runs) leases renewed every second --
    let ours_proc = Arc::new(ours_proc);
    let etcd_proc = Arc::new(etcd_proc);
    let sizes: &[usize] = if opts.quick { &[1000] } else { &[1000, 10_000] };
    for &leases in sizes {
        let label = format!("{}k", leases / 1000);
        let ours_leases: Vec<i64> = (0..leases)
            .map(|i| ours[i % 8].grant(Duration::from_secs(600)).expect("grant"))
            .collect();
        let etcd_leases: Vec<i64> = (0..leases)
            .map(|_| {
                rt.block_on(etcd_client.clone().lease_grant(600, None))
                    .expect("grant")
                    .id()
            })
            .collect();
        {
            let (o, p, ls) = (ours.clone(), ours_proc.clone(), Arc::new(ours_leases));
            suite.case(
                &format!("zs cpu {label} leases"),
                "cpu_s_per_s",
                Better::Lower,
                move || {
                    let c0 = p.cpu_seconds();
                    let t0 = Instant::now();
                    std::thread::scope(|sc| {
                        for c in 0..8 {
                            let (o, ls) = (&o, &ls);
                            sc.spawn(move || {
                                let mine: Vec<i64> =
                                    ls.iter().skip(c).step_by(8).copied().collect();
                                let ttls = o[c].keepalive_many(&mine).expect("keepalive");
                                assert!(ttls.iter().all(Option::is_some), "a lease was lost");
                            });
                        }
                    });
                    let spent = t0.elapsed();
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(spent));
                    (p.cpu_seconds() - c0) / t0.elapsed().as_secs_f64()
                },
            );
            // one keepalive stream per lease, opened once (what a long-lived etcd client keeps)
            let keepers: Vec<Arc<tokio::sync::Mutex<Vec<_>>>> = (0..8)
                .map(|c| {
                    let mut cl = etcd_clients[c].clone();
                    let mine: Vec<i64> = etcd_leases.iter().skip(c).step_by(8).copied().collect();
                    let v = rt.block_on(async move {
                        let mut v = Vec::new();
                        for l in mine {
                            v.push(cl.lease_keep_alive(l).await.expect("keepalive stream"));
                        }
                        v
                    });
                    Arc::new(tokio::sync::Mutex::new(v))
                })
                .collect();
            let (rt2, p) = (rt.clone(), etcd_proc.clone());
            suite.case(
                &format!("etcd cpu {label} leases"),
                "cpu_s_per_s",
                Better::Lower,
                move || {
                    let c0 = p.cpu_seconds();
                    let t0 = Instant::now();
                    rt2.block_on(async {
                        let mut hs = Vec::new();
                        for k in &keepers {
                            let k = k.clone();
                            hs.push(tokio::spawn(async move {
                                for (keeper, stream) in k.lock().await.iter_mut() {
                                    keeper.keep_alive().await.expect("ka");
                                    stream.message().await.expect("ka");
                                }
                            }));
                        }
                        for h in hs {
                            h.await.expect("task");
                        }
                    });
                    let spent = t0.elapsed();
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(spent));
                    (p.cpu_seconds() - c0) / t0.elapsed().as_secs_f64()
                },
            );
        }
    }

    suite.run();
    suite.ratio("register_vs_etcd", "zs register c1", "etcd register c1");
    suite.ratio(
        "register_c64_vs_etcd",
        "zs register c64",
        "etcd register c64",
    );
    suite.ratio("pick_vs_etcd", "zs pick c1", "etcd pick c1");
    suite.ratio("pick_c64_vs_etcd", "zs pick c64", "etcd pick c64");
    suite.ratio("watch_p50_vs_etcd", "zs watch p50 w1", "etcd watch p50 w1");
    suite.ratio("watch_p99_vs_etcd", "zs watch p99 w1", "etcd watch p99 w1");
    suite.ratio(
        "watch_p99_w64_vs_etcd",
        "zs watch p99 w64",
        "etcd watch p99 w64",
    );
    suite.ratio(
        "cpu_10k_leases_vs_etcd",
        "zs cpu 10k leases",
        "etcd cpu 10k leases",
    );
    suite.ratio(
        "cpu_1k_leases_vs_etcd",
        "zs cpu 1k leases",
        "etcd cpu 1k leases",
    );
    suite.ratio(
        "etcd_backend_vs_raw_etcd",
        "zs-etcd-backend register c1",
        "etcd register c1",
    );
    suite.note("both servers are separate processes on loopback; ours fsyncs before acknowledging (group commit), as etcd does; ours runs one event loop per core (the `zs serve` default), etcd GOMAXPROCS = cores");
    suite.note("keepalives: ours one zs-core call renewing up to 2048 leases (KeepaliveMany); etcd one message on a keepalive stream per lease, streams opened beforehand");
    suite.note("watch: ours pushed on the watcher's open zs-core connection as the change is durable (window 64); etcd pushes on its gRPC watch stream");
    suite.finish();
}
