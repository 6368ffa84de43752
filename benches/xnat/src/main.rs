//! `cargo xtask bench xnat`: zs-xnat against direct loopback, rathole and
//! bore, in alternating rounds (after one warm-up pass through every tunnel):
//! bulk throughput (iperf3, 1 and 8 streams), closed-loop HTTP (wrk, 10
//! connections, against nginx `return 200`), open-loop HTTP latency (oha at
//! 1000 and 4000 req/s, 50 connections, `--latency-correction`, p50/p99), and
//! relay + agent RSS sampled halfway through the 1000 req/s run.
//!
//! Like with like, named in the output: our default (every byte inside the
//! relay-pinned zs-crypto session) against rathole `noise` (encrypted, server
//! key pinned): `xnat_vs_rathole`, `http_vs_rathole`, `p99_vs_rathole`,
//! `rss_vs_rathole`; our plaintext opt-out (`encryption = "none"`, splice)
//! against rathole `tcp` and bore (both plaintext): `plain_vs_*`. `xnat_plain_rw`
//! is the plaintext path with read/write instead of splice (`splice_vs_rw`).
//!
//! Every tunnel runs as its own processes (ours: this binary re-executed
//! with `__relay CONFIG` / `__agent CONFIG`, so no `zs` build is needed).
//! Peers come from `target/peers/bin` (installed by xtask from BENCH_TOOLS).
#![forbid(unsafe_code)]

mod mux;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zs_bench_harness::{Better, Options, Suite};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn rss_kb(&self) -> f64 {
        let s =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    let t = Instant::now();
    let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    while TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            panic!("{what}: port {port} never opened");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn peers_bin(name: &str) -> Option<PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let p = dir.join("target/peers/bin").join(name);
        if p.exists() {
            return Some(p);
        }
        if !dir.pop() {
            return None;
        }
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
    )
}

/// One iperf3 run: Gbit/s received, and the CPU seconds per GiB carried of
/// the two iperf3 endpoints (iperf3's own `cpu_utilization_percent`, host and
/// remote, over the run) and of `pids` (the tunnel's processes, from
/// `/proc/PID/stat` before and after).
#[derive(Clone, Copy, Debug)]
struct Bulk {
    gbit: f64,
    endpoints_cpu: f64,
    tunnel_cpu: f64,
}

impl Bulk {
    const NAN: Bulk = Bulk {
        gbit: f64::NAN,
        endpoints_cpu: f64::NAN,
        tunnel_cpu: f64::NAN,
    };
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after ')'.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        // USER_HZ is 100 on every Linux this runs on.
        (Some(u), Some(k)) => (u + k) / 100.0,
        _ => f64::NAN,
    }
}

/// iperf3 through `port` (retried when the iperf3 server is still busy with
/// the previous test).
fn iperf(port: u16, streams: u32, secs: u32, pids: &[u32]) -> Bulk {
    let _t = Trace::new(format!("iperf3 port {port} x{streams}"));
    for _ in 0..5 {
        let before: f64 = pids.iter().map(|&p| cpu_secs(p)).sum();
        let v = iperf_once(port, streams, secs);
        let after: f64 = pids.iter().map(|&p| cpu_secs(p)).sum();
        if v.gbit.is_finite() {
            let gib = v.gbit * 1e9 / 8.0 * f64::from(secs) / f64::from(1u32 << 30);
            return Bulk {
                tunnel_cpu: if pids.is_empty() {
                    0.0
                } else {
                    (after - before) / gib
                },
                ..v
            };
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Bulk::NAN
}

/// Runs an iperf3 client with `args`, killed if it outlives `limit` (a test
/// that stalls in a tunnel must not stall the bench); its stdout.
fn iperf_client(port: u16, args: &[&str], limit: Duration) -> Vec<u8> {
    let mut child = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &port.to_string()])
        .args(["--connect-timeout", "3000"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3");
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
        }
    }
    child
        .wait_with_output()
        .map(|o| o.stdout)
        .unwrap_or_default()
}

fn iperf_once(port: u16, streams: u32, secs: u32) -> Bulk {
    let stdout = iperf_client(
        port,
        &["-t", &secs.to_string(), "-P", &streams.to_string(), "-J"],
        Duration::from_secs(u64::from(secs) + 8),
    );
    let out = Out { stdout };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let end = &v["end"];
    let Some(bps) = end["sum_received"]["bits_per_second"].as_f64() else {
        return Bulk::NAN;
    };
    let bytes = end["sum_received"]["bytes"].as_f64().unwrap_or(f64::NAN);
    let wall = end["sum_received"]["seconds"].as_f64().unwrap_or(f64::NAN);
    let cpu = &end["cpu_utilization_percent"];
    let pct = cpu["host_total"].as_f64().unwrap_or(f64::NAN)
        + cpu["remote_total"].as_f64().unwrap_or(f64::NAN);
    Bulk {
        gbit: bps / 1e9,
        endpoints_cpu: pct / 100.0 * wall / (bytes / f64::from(1u32 << 30)),
        tunnel_cpu: f64::NAN,
    }
}

struct Out {
    stdout: Vec<u8>,
}

/// `ZS_XNAT_BENCH_TRACE=1`: prints how long each client run took (stderr).
struct Trace(String, Instant);

impl Trace {
    fn new(what: String) -> Trace {
        Trace(what, Instant::now())
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if std::env::var_os("ZS_XNAT_BENCH_TRACE").is_some() {
            eprintln!(
                "trace: {} took {:.2} s",
                self.0,
                self.1.elapsed().as_secs_f64()
            );
        }
    }
}

/// A short untimed transfer (64 MiB) through `port`.
fn warm(port: u16) {
    let _t = Trace::new(format!("warm-up port {port}"));
    for _ in 0..5 {
        let out = iperf_client(port, &["-n", "64M", "-J"], Duration::from_secs(10));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        if v["end"]["sum_received"]["bytes"].as_f64().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Geometric mean (NaN when any sample is not a positive number).
fn geomean(v: &[f64]) -> f64 {
    if v.is_empty() || v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return f64::NAN;
    }
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// One block of a round: `measure(i)` for every entry `i < n`, in an order
/// rotated by `round`, then (with `mirrored`) again in the reverse order, so
/// every entry's two runs sit at the same mean time in the block: a load
/// phase that rises or falls across the block weighs on every entry alike.
/// Returns each entry's runs.
fn block<T>(
    n: usize,
    round: usize,
    mirrored: bool,
    mut measure: impl FnMut(usize) -> T,
) -> Vec<Vec<T>> {
    let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
    let mut runs: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
    for &i in &order {
        runs[i].push(measure(i));
    }
    if mirrored {
        for &i in order.iter().rev() {
            runs[i].push(measure(i));
        }
    }
    runs
}

/// wrk through `port`: requests/s.
fn wrk(port: u16, secs: u32) -> f64 {
    wrk_with(port, secs, false)
}

/// wrk through `port`; `close`: a new connection for every request
/// (`Connection: close`), the short-connection load.
fn wrk_with(port: u16, secs: u32, close: bool) -> f64 {
    let _t = Trace::new(format!("wrk port {port} close {close}"));
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c10", &format!("-d{secs}s")]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Median microseconds from `connect` to the end of the answer of one
/// `Connection: close` GET on a fresh connection through `port`, `n` in a
/// row: what opening a connection through the tunnel costs.
fn open_latency_us(port: u16, n: usize) -> f64 {
    use std::io::{Read, Write};
    let _t = Trace::new(format!("open latency port {port}"));
    let mut v = Vec::with_capacity(n);
    let mut buf = [0u8; 1024];
    for _ in 0..n {
        let t = Instant::now();
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            continue;
        }
        let mut got = 0;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            got += k;
        }
        if got > 0 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The p2pvm-mux data path (`mux.rs`): relay and agent processes of this binary.
fn ours_mux(iperf: u16, http: Option<u16>) -> Tunnel {
    let _t = Trace::new("start xnat mux".to_string());
    let exe = std::env::current_exe().unwrap();
    let control = free_port();
    let (pi, ph) = (free_port(), free_port());
    let mut publics = vec![format!("127.0.0.1:{pi}")];
    let mut locals = vec![format!("127.0.0.1:{iperf}")];
    if let Some(h) = http {
        publics.push(format!("127.0.0.1:{ph}"));
        locals.push(format!("127.0.0.1:{h}"));
    }
    relay_then_agent(
        Command::new(&exe)
            .arg("__mux_relay")
            .arg(format!("127.0.0.1:{control}"))
            .args(&publics),
        Command::new(&exe)
            .arg("__mux_agent")
            .arg(format!("127.0.0.1:{control}"))
            .arg(mux::fingerprint())
            .args(&locals),
        (control, pi, http.map(|_| ph)),
        "mux",
    )
}

/// Starts `relay`, waits for its agent port `ports.0`, starts `agent`, waits
/// for the public ports (`ports.1` for iperf3, `ports.2` for HTTP).
fn relay_then_agent(
    relay: &mut Command,
    agent: &mut Command,
    ports: (u16, u16, Option<u16>),
    what: &str,
) -> Tunnel {
    let (control, pi, ph) = ports;
    let r = spawn(relay);
    wait_port(control, &format!("{what} relay"));
    let a = spawn(agent);
    wait_port(pi, &format!("{what} public port"));
    if let Some(ph) = ph {
        wait_port(ph, &format!("{what} public http port"));
    }
    Tunnel {
        procs: vec![r, a],
        iperf_port: pi,
        http_port: ph,
    }
}

struct Tunnel {
    procs: Vec<Proc>,
    iperf_port: u16,
    http_port: Option<u16>,
}

/// Our relay + agent. `plain`: `[*.transport] encryption = "none"` on both
/// (plaintext data connections; the default runs every byte through the
/// relay-pinned session).
fn ours(dir: &Path, iperf: u16, http: Option<u16>, plain: bool) -> Tunnel {
    ours_with(dir, iperf, http, plain, false, None)
}

/// [`ours`]; `buffered`: plaintext moved by read/write instead of splice(2)
/// (`[*.transport] plain_copy = "buffered"`, to measure what splice buys).
/// `reuse`: the relay's `data_reuse` (`Some(1)`: one data connection per
/// public connection, as before session 10; `None`: the default).
fn ours_with(
    dir: &Path,
    iperf: u16,
    http: Option<u16>,
    plain: bool,
    buffered: bool,
    reuse: Option<u32>,
) -> Tunnel {
    let _t = Trace::new(format!("start xnat (plain {plain})"));
    let exe = std::env::current_exe().unwrap();
    let control = free_port();
    let (pi, ph) = (free_port(), free_port());
    let copy = if buffered { "buffered" } else { "splice" };
    let (st, ct) = if plain {
        (
            format!("[server.transport]\nencryption = \"none\"\nplain_copy = \"{copy}\"\n"),
            format!("[client.transport]\nencryption = \"none\"\nplain_copy = \"{copy}\"\n"),
        )
    } else {
        (String::new(), String::new())
    };
    let reuse = reuse
        .map(|n| format!("data_reuse = {n}\n"))
        .unwrap_or_default();
    let mut relay = format!(
        "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"bench\"\nidentity_file = \"relay.key\"\n{reuse}{st}\
         [server.services.iperf]\nbind_addr = \"127.0.0.1:{pi}\"\n"
    );
    if http.is_some() {
        relay += &format!("[server.services.http]\nbind_addr = \"127.0.0.1:{ph}\"\n");
    }
    std::fs::write(dir.join("relay.toml"), relay).unwrap();
    let fp = zs_xnat::relay_fingerprint_file(&dir.join("relay.toml")).unwrap();
    let mut agent = format!(
        "[client]\nremote_addr = \"127.0.0.1:{control}\"\ndefault_token = \"bench\"\nrelay_fingerprint = \"{fp}\"\n{ct}\
         [client.services.iperf]\nlocal_addr = \"127.0.0.1:{iperf}\"\n"
    );
    if let Some(h) = http {
        agent += &format!("[client.services.http]\nlocal_addr = \"127.0.0.1:{h}\"\n");
    }
    std::fs::write(dir.join("agent.toml"), agent).unwrap();
    relay_then_agent(
        Command::new(&exe)
            .arg("__relay")
            .arg(dir.join("relay.toml")),
        Command::new(&exe)
            .arg("__agent")
            .arg(dir.join("agent.toml")),
        (control, pi, http.map(|_| ph)),
        "zs-xnat",
    )
}

/// rathole's `--genkey` output: (private, public), base64.
fn rathole_keys(bin: &Path) -> (String, String) {
    let out = Command::new(bin)
        .arg("--genkey")
        .output()
        .expect("rathole --genkey");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let after = |label: &str| {
        let i = lines
            .iter()
            .position(|l| l.starts_with(label))
            .expect("genkey label");
        lines[i + 1].to_string()
    };
    (after("Private"), after("Public"))
}

/// rathole with `type = "tcp"` (plaintext) or, with `noise`, its encrypted
/// transport (Noise_NK_25519_ChaChaPoly_BLAKE2s), the fair peer of ours.
fn rathole(bin: &Path, dir: &Path, iperf: u16, http: Option<u16>, noise: bool) -> Tunnel {
    let _t = Trace::new(format!("start rathole (noise {noise})"));
    let control = free_port();
    let (pi, ph) = (free_port(), free_port());
    let (st, ct) = if noise {
        let (private, public) = rathole_keys(bin);
        (
            format!("[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
            format!("[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"),
        )
    } else {
        (String::new(), String::new())
    };
    let mut server = format!(
        "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"bench\"\n{st}\
         [server.services.iperf]\nbind_addr = \"127.0.0.1:{pi}\"\n"
    );
    let mut client = format!(
        "[client]\nremote_addr = \"127.0.0.1:{control}\"\ndefault_token = \"bench\"\n{ct}\
         [client.services.iperf]\nlocal_addr = \"127.0.0.1:{iperf}\"\n"
    );
    if let Some(h) = http {
        server += &format!("[server.services.http]\nbind_addr = \"127.0.0.1:{ph}\"\n");
        client += &format!("[client.services.http]\nlocal_addr = \"127.0.0.1:{h}\"\n");
    }
    std::fs::write(dir.join("rh-server.toml"), server).unwrap();
    std::fs::write(dir.join("rh-client.toml"), client).unwrap();
    let s = spawn(Command::new(bin).arg("-s").arg(dir.join("rh-server.toml")));
    wait_port(control, "rathole server");
    let c = spawn(Command::new(bin).arg("-c").arg(dir.join("rh-client.toml")));
    wait_port(pi, "rathole public port");
    if http.is_some() {
        wait_port(ph, "rathole public http port");
    }
    Tunnel {
        procs: vec![s, c],
        iperf_port: pi,
        http_port: http.map(|_| ph),
    }
}

fn bore(bin: &Path, iperf: u16) -> Tunnel {
    let s = spawn(Command::new(bin).args(["server", "--bind-addr", "127.0.0.1"]));
    wait_port(7835, "bore server");
    let pi = free_port();
    let c = spawn(Command::new(bin).args([
        "local",
        &iperf.to_string(),
        "--local-host",
        "127.0.0.1",
        "--to",
        "127.0.0.1",
        "--port",
        &pi.to_string(),
    ]));
    wait_port(pi, "bore public port");
    Tunnel {
        procs: vec![s, c],
        iperf_port: pi,
        http_port: None,
    }
}

fn nginx(dir: &Path) -> Option<(Proc, u16)> {
    if !have("nginx") {
        return None;
    }
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; keepalive_requests 100000000; client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n\
         fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
         server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let p = spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log")),
    );
    wait_port(port, "nginx");
    Some((p, port))
}

/// One open-loop `oha` run at `rate` requests/s: (p50 ms, p99 ms, relay+agent
/// RSS in KiB sampled halfway through, failed requests). `--latency-correction`
/// counts each request from its scheduled start (no coordinated omission).
fn oha(bin: &Path, port: u16, rate: u32, secs: u32, pids: &[u32]) -> (f64, f64, f64, u64) {
    let child = Command::new(bin)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args([
            "-c",
            "50",
            "-q",
            &rate.to_string(),
            "-z",
            &format!("{secs}s"),
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("oha");
    std::thread::sleep(Duration::from_millis(u64::from(secs) * 500));
    let rss = pids.iter().map(|&p| rss_kb(p)).sum::<f64>();
    let out = child.wait_with_output().expect("oha");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let pct = |k: &str| {
        v["latencyPercentiles"][k]
            .as_f64()
            .map(|s| s * 1e3)
            .unwrap_or(f64::NAN)
    };
    let ok: u64 = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    // Requests still in flight when `-z` ends are "aborted due to deadline":
    // not failures of the tunnel.
    let failed: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, x)| x.as_u64())
                .sum()
        })
        .unwrap_or(0)
        + v["statusCodeDistribution"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.as_str() != "200")
                    .filter_map(|(_, x)| x.as_u64())
                    .sum::<u64>()
            })
            .unwrap_or(0);
    if ok == 0 {
        return (f64::NAN, f64::NAN, rss, failed);
    }
    (pct("p50"), pct("p99"), rss, failed)
}

fn rss_kb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A tunnel under test: its case-name prefix; `bulk_only`: iperf3 cases
/// only; `web_only`: wrk cases only (no iperf3, no oha).
struct Entry {
    name: &'static str,
    tunnel: Option<std::rc::Rc<Tunnel>>,
    bulk_only: bool,
    web_only: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "__relay" {
        zs_xnat::run_relay_file(Path::new(&args[2])).expect("relay");
        return;
    }
    if args.len() == 3 && args[1] == "__agent" {
        zs_xnat::run_agent_file(Path::new(&args[2])).expect("agent");
        return;
    }
    if args.len() >= 3 && args[1] == "__mux_relay" {
        mux::relay(&args[2..]);
        return;
    }
    if args.len() >= 4 && args[1] == "__mux_agent" {
        mux::agent(&args[2..]);
        return;
    }
    if args.len() == 3 && args[1] == "__soak" {
        let n: u64 = args[2].parse().expect("__soak takes a request count");
        std::process::exit(soak(n));
    }
    let opts = Options::from_env();
    let secs = if opts.quick { 1 } else { 3 };
    let mut suite = Suite::from_options("xnat", &opts, 1, 3);
    assert!(
        have("iperf3"),
        "iperf3 not installed (apt-get install iperf3)"
    );
    let root = tempfile::tempdir().unwrap();
    let iperf_port = free_port();
    // `--idle-timeout`: a server left in a test that stalled restarts.
    let _iperf = spawn(Command::new("iperf3").args([
        "-s",
        "-B",
        "127.0.0.1",
        "-p",
        &iperf_port.to_string(),
        "--idle-timeout",
        "3",
        "--rcv-timeout",
        "3000",
    ]));
    wait_port(iperf_port, "iperf3");
    let ng_dir = root.path().join("nginx");
    std::fs::create_dir_all(&ng_dir).unwrap();
    let ng = if have("wrk") { nginx(&ng_dir) } else { None };
    let http = ng.as_ref().map(|n| n.1);
    let sub = |name: &str| {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let rc = std::rc::Rc::new;
    let rh_bin = peers_bin("rathole");
    let mut tunnels = vec![
        Entry {
            name: "direct",
            tunnel: None,
            bulk_only: false,
            web_only: false,
        },
        Entry {
            name: "xnat",
            tunnel: Some(rc(ours(&sub("ours"), iperf_port, http, false))),
            bulk_only: false,
            web_only: false,
        },
        // Data connections not reused (`data_reuse = 1`): what session 10's
        // reuse changed, measured in the same run (wrk cases only).
        Entry {
            name: "xnat_noreuse",
            tunnel: Some(rc(ours_with(
                &sub("ours-noreuse"),
                iperf_port,
                http,
                false,
                false,
                Some(1),
            ))),
            bulk_only: false,
            web_only: true,
        },
        Entry {
            name: "xnat_plain",
            tunnel: Some(rc(ours(&sub("ours-plain"), iperf_port, http, true))),
            bulk_only: false,
            web_only: false,
        },
        // The data path the pool was chosen over: one p2pvm mux per agent.
        Entry {
            name: "xnat_mux",
            tunnel: Some(rc(ours_mux(iperf_port, http))),
            bulk_only: false,
            web_only: false,
        },
    ];
    // read/write instead of splice: a diagnostic pair, full runs only.
    if !opts.quick {
        tunnels.push(Entry {
            name: "xnat_plain_rw",
            tunnel: Some(rc(ours_with(
                &sub("ours-plain-rw"),
                iperf_port,
                None,
                true,
                true,
                None,
            ))),
            bulk_only: true,
            web_only: false,
        });
    }
    if let Some(b) = &rh_bin {
        tunnels.push(Entry {
            name: "rathole_noise",
            tunnel: Some(rc(rathole(b, &sub("rh-noise"), iperf_port, http, true))),
            bulk_only: false,
            web_only: false,
        });
        tunnels.push(Entry {
            name: "rathole",
            tunnel: Some(rc(rathole(b, &sub("rh-tcp"), iperf_port, http, false))),
            bulk_only: false,
            web_only: false,
        });
    } else {
        suite.note("rathole not in target/peers/bin: run `cargo xtask bench xnat` (installs it)");
    }
    if let Some(b) = peers_bin("bore") {
        tunnels.push(Entry {
            name: "bore",
            tunnel: Some(rc(bore(&b, iperf_port))),
            bulk_only: false,
            web_only: false,
        });
    } else {
        suite.note("bore not in target/peers/bin");
    }
    suite.note(
        "pairings (what each side promises): xnat = our default, every byte inside the relay-pinned \
         zs-crypto session (AES-256-GCM, ring), against rathole_noise (Noise_NK_25519_ChaChaPoly_BLAKE2s, \
         server key pinned): xnat_vs_rathole, http_vs_rathole, p99_vs_rathole, rss_vs_rathole, \
         cpu_vs_rathole. xnat_plain = [*.transport] encryption = \"none\" (ticket proved inside the \
         encrypted control session, data connections in clear, splice(2)) against rathole \
         (type = \"tcp\", plaintext, token sent in clear) and bore (plaintext): plain_vs_*. \
         direct = iperf3/nginx without a tunnel, the baseline of xnat_vs_direct (encrypted) and \
         xnat_plain_vs_direct (plaintext), both from the same direct runs",
    );
    suite.note(
        "xnat_mux = the other data path of issue 14: one zs-p2pvm mux per agent (Tunnel over one \
         zs-crypto session, AES-256-GCM, relay key pinned; one virtual stream per public \
         connection, opened with one OPEN frame) against xnat's pool of pre-opened data \
         connections (one session per public connection): mux_vs_pool* (above 1.0: the mux is \
         ahead). *_http_close: wrk with a new connection per request; *_open_us: median time \
         from connect to the end of one answer on a fresh connection, sequential",
    );
    let pids_of = |t: &Entry| -> Vec<u32> {
        t.tunnel
            .as_ref()
            .map(|t| t.procs.iter().map(|p| p.0.id()).collect())
            .unwrap_or_default()
    };
    // Warm-up: one transfer and a few requests through each tunnel (pools
    // filled, pages touched, the CPU frequency up) before anything is measured.
    for t in &tunnels {
        let p = t.tunnel.as_ref().map_or(iperf_port, |t| t.iperf_port);
        if !t.web_only {
            warm(p);
        }
        if !opts.quick {
            if let (Some(h), Some(_)) = (t.tunnel.as_ref().map_or(http, |t| t.http_port), &ng) {
                let _ = wrk(h, 1);
            }
        }
    }
    // Bulk: in every round one block per stream count runs each tunnel in a
    // rotated order and then (1 stream, the goals) in the reverse order; a
    // tunnel's figure in the round is the geometric mean of its runs. The
    // first case of the block runs it; the others report its figures.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let gib_gbit = f64::from(1u32 << 30) * 8.0 / 1e9;
    for streams in [1u32, 8] {
        let bulk: Vec<(&'static str, u16, Vec<u32>)> = tunnels
            .iter()
            .filter(|t| (streams == 1 || !t.bulk_only) && !t.web_only)
            .map(|t| {
                let p = t.tunnel.as_ref().map_or(iperf_port, |t| t.iperf_port);
                (t.name, p, pids_of(t))
            })
            .collect();
        let results = std::rc::Rc::new(std::cell::RefCell::new(vec![Bulk::NAN; bulk.len()]));
        let round = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let mirrored = streams == 1;
        for (i, (name, _, pids)) in bulk.iter().enumerate() {
            let (res, round) = (results.clone(), round.clone());
            let all: Vec<(u16, Vec<u32>)> = bulk.iter().map(|(_, p, d)| (*p, d.clone())).collect();
            suite.case(
                &format!("{name}_{streams}"),
                "gbit_per_s",
                Better::Higher,
                move || {
                    if i == 0 {
                        let runs = block(all.len(), round.get(), mirrored, |j| {
                            iperf(all[j].0, streams, secs, &all[j].1)
                        });
                        round.set(round.get() + 1);
                        let mut r = res.borrow_mut();
                        for (j, v) in runs.iter().enumerate() {
                            let g =
                                |f: fn(&Bulk) -> f64| geomean(&v.iter().map(f).collect::<Vec<_>>());
                            r[j] = Bulk {
                                gbit: g(|b| b.gbit),
                                endpoints_cpu: g(|b| b.endpoints_cpu),
                                tunnel_cpu: if all[j].1.is_empty() {
                                    0.0
                                } else {
                                    g(|b| b.tunnel_cpu)
                                },
                            };
                        }
                    }
                    res.borrow()[i].gbit
                },
            );
            if streams == 1 && !pids.is_empty() {
                let r2 = results.clone();
                suite.case(
                    &format!("{name}_cpu_1"),
                    "cpu_s_per_gib",
                    Better::Lower,
                    move || r2.borrow()[i].tunnel_cpu,
                );
            }
            if streams == 1 && *name == "xnat" {
                // What the encrypted tunnel could carry at most if relay,
                // agent and both iperf3 ends kept every core busy at the CPU
                // cost per byte measured in its own runs.
                let r2 = results.clone();
                suite.case(
                    "xnat_cpu_bound_1",
                    "gbit_per_s",
                    Better::Higher,
                    move || {
                        let b = r2.borrow()[i];
                        cores / (b.endpoints_cpu + b.tunnel_cpu) * gib_gbit
                    },
                );
                let r2 = results.clone();
                suite.case(
                    "xnat_endpoints_cpu_1",
                    "cpu_s_per_gib",
                    Better::Lower,
                    move || r2.borrow()[i].endpoints_cpu,
                );
            }
            if streams == 1 && *name == "direct" {
                let r2 = results.clone();
                suite.case(
                    "direct_endpoints_cpu_1",
                    "cpu_s_per_gib",
                    Better::Lower,
                    move || r2.borrow()[i].endpoints_cpu,
                );
            }
        }
    }
    // The AEAD the data records use (ring, sealed in place), one core, at
    // zs-crypto's default record size: what a byte of the encrypted tunnel
    // costs twice (sealed at one end, opened at the other).
    let aead_secs = if opts.quick { 0.2 } else { 0.5 };
    suite.case(
        "aes256gcm_seal_64k",
        "gbit_per_s",
        Better::Higher,
        move || aead_gbit(&ring::aead::AES_256_GCM, aead_secs),
    );
    suite.case(
        "chacha20poly1305_seal_64k",
        "gbit_per_s",
        Better::Higher,
        move || aead_gbit(&ring::aead::CHACHA20_POLY1305, aead_secs),
    );
    let oha_bin = peers_bin("oha");
    let mut failed_notes: Vec<(String, std::rc::Rc<std::cell::Cell<u64>>)> = Vec::new();
    if let Some(h) = http {
        // Closed loop (wrk): the same mirrored block as the bulk cases.
        let web: Vec<(&'static str, u16)> = tunnels
            .iter()
            .filter(|t| !t.bulk_only)
            .filter_map(|t| Some((t.name, t.tunnel.as_ref().map_or(Some(h), |t| t.http_port)?)))
            .collect();
        let results = std::rc::Rc::new(std::cell::RefCell::new(vec![f64::NAN; web.len()]));
        let round = std::rc::Rc::new(std::cell::Cell::new(0usize));
        for (i, (name, _)) in web.iter().enumerate() {
            let (results, round) = (results.clone(), round.clone());
            let ports: Vec<u16> = web.iter().map(|w| w.1).collect();
            suite.case(
                &format!("{name}_http"),
                "req_per_s",
                Better::Higher,
                move || {
                    if i == 0 {
                        let runs = block(ports.len(), round.get(), true, |j| wrk(ports[j], secs));
                        round.set(round.get() + 1);
                        let mut r = results.borrow_mut();
                        for (j, v) in runs.iter().enumerate() {
                            r[j] = geomean(v);
                        }
                    }
                    results.borrow()[i]
                },
            );
        }
        // Short connections (the data-path decision): wrk with a new
        // connection per request, and the latency of one fresh connection.
        let short: Vec<(&'static str, u16)> = web
            .iter()
            .filter(|w| {
                [
                    "direct",
                    "xnat",
                    "xnat_noreuse",
                    "xnat_mux",
                    "rathole_noise",
                ]
                .contains(&w.0)
            })
            .copied()
            .collect();
        let results = std::rc::Rc::new(std::cell::RefCell::new(vec![
            (f64::NAN, f64::NAN);
            short.len()
        ]));
        let round = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let opens = if opts.quick { 200 } else { 1000 };
        for (i, (name, _)) in short.iter().enumerate() {
            let (r2, round) = (results.clone(), round.clone());
            let ports: Vec<u16> = short.iter().map(|w| w.1).collect();
            suite.case(
                &format!("{name}_http_close"),
                "req_per_s",
                Better::Higher,
                move || {
                    if i == 0 {
                        let runs = block(ports.len(), round.get(), true, |j| {
                            (
                                wrk_with(ports[j], secs, true),
                                open_latency_us(ports[j], opens),
                            )
                        });
                        round.set(round.get() + 1);
                        let mut r = r2.borrow_mut();
                        for (j, v) in runs.iter().enumerate() {
                            r[j] = (
                                geomean(&v.iter().map(|x| x.0).collect::<Vec<_>>()),
                                geomean(&v.iter().map(|x| x.1).collect::<Vec<_>>()),
                            );
                        }
                    }
                    r2.borrow()[i].0
                },
            );
            let r3 = results.clone();
            suite.case(&format!("{name}_open_us"), "us", Better::Lower, move || {
                r3.borrow()[i].1
            });
        }
        match &oha_bin {
            Some(ob) => {
                for rate in [1000u32, 4000] {
                    for t in tunnels.iter().filter(|t| !t.bulk_only && !t.web_only) {
                        let Some(p) = t.tunnel.as_ref().map_or(Some(h), |t| t.http_port) else {
                            continue;
                        };
                        let pids = pids_of(t);
                        let cell = std::rc::Rc::new(std::cell::Cell::new((f64::NAN, f64::NAN)));
                        let failed = std::rc::Rc::new(std::cell::Cell::new(0u64));
                        failed_notes.push((format!("{}@{rate}", t.name), failed.clone()));
                        let (c2, ob) = (cell.clone(), ob.clone());
                        let name = t.name;
                        // The p99 case runs oha; the p50 (and, at 1000 req/s,
                        // the RSS) cases that follow it in the same round
                        // report the same run.
                        suite.case(
                            &format!("{name}_p99_{rate}"),
                            "ms",
                            Better::Lower,
                            move || {
                                let (p50, p99, rss, f) = oha(&ob, p, rate, secs.max(2), &pids);
                                c2.set((p50, rss));
                                failed.set(failed.get() + f);
                                p99
                            },
                        );
                        let c3 = cell.clone();
                        suite.case(
                            &format!("{name}_p50_{rate}"),
                            "ms",
                            Better::Lower,
                            move || c3.get().0,
                        );
                        if rate == 1000 && t.tunnel.is_some() {
                            suite.case(&format!("{name}_rss"), "kib", Better::Lower, move || {
                                cell.get().1
                            });
                        }
                    }
                }
            }
            None => suite.note("oha not in target/peers/bin: latency and RSS cases skipped"),
        }
    } else {
        suite.note("wrk or nginx missing: HTTP cases skipped");
    }
    suite.run();
    let failed: Vec<String> = failed_notes
        .iter()
        .map(|(n, c)| format!("{n} {}", c.get()))
        .collect();
    suite.note(format!(
        "oha: failed or non-200 requests (not counting those in flight at the end of a run): {}",
        failed.join(", ")
    ));
    suite.note(
        "rss: relay + agent (or server + client) VmRSS sampled halfway through the 1000 req/s oha run",
    );
    suite.note(format!(
        "bulk: iperf3 {secs} s per run; per round each tunnel runs in a rotated order, then (1 stream) \
         in the reverse order, and its round figure is the geometric mean of its runs; wrk likewise. \
         *_cpu_1: relay + agent (server + client) CPU seconds per GiB carried (/proc/PID/stat over \
         the 1-stream runs); *_endpoints_cpu_1: the two iperf3 ends' (iperf3's own figure)"
    ));
    // The CPU bound of the encrypted tunnel on this machine, from this run.
    let med = |n: &str| suite.summary(n).map_or(f64::NAN, |s| s.median);
    let (aes, t_cpu, e_cpu, e_direct) = (
        med("aes256gcm_seal_64k"),
        med("xnat_cpu_1"),
        med("xnat_endpoints_cpu_1"),
        med("direct_endpoints_cpu_1"),
    );
    let aes_s_per_gib = gib_gbit / aes;
    suite.note(format!(
        "bound of the encrypted tunnel ({cores} cores shared by iperf3 client, relay, agent and \
         iperf3 server): relay + agent spend {t_cpu:.3} CPU s/GiB, of which sealing and opening \
         at ring's one-core rate ({aes:.1} Gbit/s) take at least 2 x {aes_s_per_gib:.3} = {:.3}; \
         the iperf3 ends spend {e_cpu:.3} s/GiB (direct: {e_direct:.3}). With every core busy the \
         tunnel carries at most {cores} / ({e_cpu:.3} + {t_cpu:.3}) GiB/s = {:.2} Gbit/s \
         (xnat_cpu_bound_1), {:.2} of direct_1; if relay and agent cost nothing but the two AEAD passes \
         it would be below {cores} / ({e_cpu:.3} + {:.3}) = {:.2} Gbit/s",
        2.0 * aes_s_per_gib,
        cores / (e_cpu + t_cpu) * gib_gbit,
        cores / (e_cpu + t_cpu) * gib_gbit / med("direct_1"),
        2.0 * aes_s_per_gib,
        cores / (e_cpu + 2.0 * aes_s_per_gib) * gib_gbit,
    ));
    // (ratio, ours, theirs)
    for (key, ours, theirs) in [
        // The goals of issue 14: encrypted against encrypted.
        ("xnat_vs_rathole", "xnat_1", "rathole_noise_1"),
        ("xnat_vs_rathole_8", "xnat_8", "rathole_noise_8"),
        ("xnat_vs_direct", "xnat_1", "direct_1"),
        ("xnat_vs_direct_8", "xnat_8", "direct_8"),
        ("xnat_cpu_bound_vs_direct", "xnat_cpu_bound_1", "direct_1"),
        ("http_vs_rathole", "xnat_http", "rathole_noise_http"),
        ("p99_vs_rathole", "xnat_p99_4000", "rathole_noise_p99_4000"),
        (
            "p99_vs_rathole_1000",
            "xnat_p99_1000",
            "rathole_noise_p99_1000",
        ),
        ("rss_vs_rathole", "xnat_rss", "rathole_noise_rss"),
        ("cpu_vs_rathole", "xnat_cpu_1", "rathole_noise_cpu_1"),
        (
            "aes_vs_chacha",
            "aes256gcm_seal_64k",
            "chacha20poly1305_seal_64k",
        ),
        // Plaintext against plaintext (and against direct).
        ("xnat_plain_vs_direct", "xnat_plain_1", "direct_1"),
        ("xnat_plain_vs_direct_8", "xnat_plain_8", "direct_8"),
        ("plain_vs_rathole", "xnat_plain_1", "rathole_1"),
        ("plain_vs_rathole_8", "xnat_plain_8", "rathole_8"),
        ("plain_vs_bore", "xnat_plain_1", "bore_1"),
        ("cpu_plain_vs_rathole", "xnat_plain_cpu_1", "rathole_cpu_1"),
        ("splice_vs_rw", "xnat_plain_1", "xnat_plain_rw_1"),
        ("splice_vs_rw_8", "xnat_plain_8", "xnat_plain_rw_8"),
        ("http_plain_vs_rathole", "xnat_plain_http", "rathole_http"),
        (
            "p99_plain_vs_rathole",
            "xnat_plain_p99_4000",
            "rathole_p99_4000",
        ),
        ("rss_plain_vs_rathole", "xnat_plain_rss", "rathole_rss"),
        // The data path decision: one p2pvm mux per agent against the
        // pool (above 1.0: the mux is ahead).
        ("mux_vs_pool", "xnat_mux_1", "xnat_1"),
        ("mux_vs_pool_8", "xnat_mux_8", "xnat_8"),
        ("mux_vs_pool_http", "xnat_mux_http", "xnat_http"),
        (
            "mux_vs_pool_http_close",
            "xnat_mux_http_close",
            "xnat_http_close",
        ),
        ("mux_vs_pool_open", "xnat_mux_open_us", "xnat_open_us"),
        ("mux_vs_pool_cpu", "xnat_mux_cpu_1", "xnat_cpu_1"),
        (
            "http_close_vs_rathole",
            "xnat_http_close",
            "rathole_noise_http_close",
        ),
        ("open_vs_rathole", "xnat_open_us", "rathole_noise_open_us"),
        // Session 10: data connections back to the pool, against one data
        // connection per public connection (same binary, same run).
        (
            "reuse_vs_noreuse_http_close",
            "xnat_http_close",
            "xnat_noreuse_http_close",
        ),
        ("reuse_vs_noreuse_http", "xnat_http", "xnat_noreuse_http"),
        (
            "reuse_vs_noreuse_open",
            "xnat_open_us",
            "xnat_noreuse_open_us",
        ),
    ] {
        suite.ratio(key, ours, theirs);
    }
    suite.finish();
}

/// One core sealing 64 KiB records in place with `alg` (ring) for `secs`:
/// Gbit/s of plaintext.
fn aead_gbit(alg: &'static ring::aead::Algorithm, secs: f64) -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(alg, &[7u8; 32]).expect("key"));
    let mut buf = vec![0x5au8; 64 * 1024];
    let start = Instant::now();
    let (mut bytes, mut seq) = (0u64, 0u64);
    while start.elapsed().as_secs_f64() < secs {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        seq += 1;
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from([0u8; 5]),
                &mut buf,
            )
            .expect("seal");
        let _ = std::hint::black_box(tag);
        bytes += buf.len() as u64;
    }
    bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9
}

/// `cargo xtask soak xnat`: ApacheBench keep-alive requests through our tunnel
/// to nginx (the seed's test: 10 M requests in 15 minutes, 0 errors), printing
/// relay + agent RSS every 10 s and the totals. Exit status 1 on any failed
/// request or a dead tunnel process.
fn soak(requests: u64) -> i32 {
    assert!(
        have("ab"),
        "ab not installed (apt-get install apache2-utils)"
    );
    let root = tempfile::tempdir().unwrap();
    let ng_dir = root.path().join("nginx");
    std::fs::create_dir_all(&ng_dir).unwrap();
    let (_ng, http) = nginx(&ng_dir).expect("nginx not installed (apt-get install nginx-light)");
    let our_dir = root.path().join("ours");
    std::fs::create_dir_all(&our_dir).unwrap();
    // The iperf mapping is unused here; its local port needs no listener.
    let mut tunnel = ours(&our_dir, free_port(), Some(http), false);
    let port = tunnel.http_port.unwrap();
    wait_port(port, "zs-xnat http mapping");
    println!(
        "soak: {requests} keep-alive requests, 50 at once, ab -> xnat relay -> agent -> nginx"
    );
    let start = std::time::Instant::now();
    let mut ab = Command::new("ab")
        .args(["-k", "-r", "-q", "-c", "50", "-s", "30"])
        .args(["-n", &requests.to_string()])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ab");
    let mut peak = 0f64;
    let mut next = std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = ab.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() >= next {
            let (relay, agent) = (tunnel.procs[0].rss_kb(), tunnel.procs[1].rss_kb());
            let rss = relay + agent;
            peak = peak.max(rss);
            println!(
                "soak: {:>5.0} s  RSS relay {relay:.0} KiB + agent {agent:.0} KiB = {rss:.0} KiB",
                start.elapsed().as_secs_f64()
            );
            next += std::time::Duration::from_secs(10);
        }
        if tunnel
            .procs
            .iter_mut()
            .any(|p| p.0.try_wait().ok().flatten().is_some())
        {
            let _ = ab.kill();
            println!("soak: FAILED: a tunnel process died");
            return 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let out = ab.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let (complete, failed) = (field("Complete requests"), field("Failed requests"));
    let rss: f64 = tunnel.procs.iter().map(|p| p.rss_kb()).sum();
    println!(
        "soak: done in {:.0} s: complete {complete}, failed {failed}, non-2xx {}, {} req/s; relay+agent RSS now {rss:.0} KiB, peak sampled {:.0} KiB",
        start.elapsed().as_secs_f64(),
        field("Non-2xx responses").replace('?', "0"),
        field("Requests per second").split_whitespace().next().unwrap_or("?"),
        peak.max(rss),
    );
    let ok = status.success()
        && failed == "0"
        && complete == requests.to_string()
        && !text.contains("Non-2xx responses");
    if !ok {
        println!(
            "soak: FAILED\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    i32::from(!ok)
}
