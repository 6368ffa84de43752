//! Integration tests: relay and agent each on their own tokio runtime (so
//! "kill" drops every socket of that side at once, like a process dying), a
//! real HTTP server (nginx, or python3's http.server where nginx is absent)
//! behind the agent, and curl as the public client.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zs_crypto::session::ServerIdentity;

use crate::config::{AdminConfig, ClientConfig, ClientService, Kind, ServerConfig, ServerService};
use crate::proto::{self, Msg};
use crate::secure::SecureConn;
use crate::{Agent, Relay};

const SEED: [u8; 32] = [42; 32];

mod features;
mod reuse;
mod tls;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// `None` (and a skip line) when `program` is missing outside CI.
fn need(program: &str) -> Option<()> {
    if have(program) {
        return Some(());
    }
    if std::env::var_os("CI").is_some() {
        panic!("{program} not installed (required under CI)");
    }
    println!("skipped: {program} not installed");
    None
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(addr: SocketAddr) {
    let t = Instant::now();
    while StdStream::connect(addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{addr} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx (`return 200`) or python3's http.server on a loopback port.
fn http_server(dir: &Path) -> Option<(Proc, SocketAddr, &'static str)> {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    if have("nginx") {
        let d = dir.display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{ access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n\
             fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello through xnat\\n\"; }} }} }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p"])
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Proc(child);
        wait_port(addr);
        return Some((p, addr, "hello through xnat\n"));
    }
    need("python3")?;
    std::fs::write(dir.join("index.html"), "hello through xnat\n").unwrap();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_port(addr);
    Some((p, addr, "hello through xnat\n"))
}

/// One curl request; the body on success.
fn curl(addr: SocketAddr) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "-f", "-m", "3", &format!("http://{addr}/")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A side (relay or agent) on its own runtime; dropping it kills every task and socket.
pub(crate) struct Side(Option<tokio::runtime::Runtime>);

impl Side {
    fn new() -> Side {
        Side::with_threads(1)
    }
    fn with_threads(n: usize) -> Side {
        Side(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build()
                .unwrap(),
        ))
    }
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().unwrap()
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub(crate) fn relay_cfg(port: u16, services: &[(&str, &str, u16)]) -> ServerConfig {
    ServerConfig {
        bind_addr: format!("127.0.0.1:{port}").parse().unwrap(),
        default_token: None,
        identity_file: "unused".into(),
        pool_size: 2,
        data_reuse: 100,
        data_reuse_age: Duration::from_secs(300),
        max_agents: 16,
        heartbeat_interval: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(2),
        admin: AdminConfig::defaults(Path::new("unused")),
        services: services
            .iter()
            .map(|(n, t, p)| {
                (
                    n.to_string(),
                    ServerService {
                        token: t.to_string(),
                        bind_addr: format!("127.0.0.1:{p}").parse().unwrap(),
                        idle_timeout: Duration::from_secs(30),
                        max_connections: 64,
                        kind: Kind::Tcp,
                    },
                )
            })
            .collect(),
        data_encryption: Default::default(),
        plain_copy: Default::default(),
        tls: None,
        threads: Default::default(),
    }
}

pub(crate) fn start_relay(cfg: ServerConfig) -> (Side, Relay) {
    let side = Side::new();
    let relay = side
        .rt()
        .block_on(Relay::bind_with_identity(
            cfg,
            ServerIdentity::from_seed(&SEED).unwrap(),
        ))
        .unwrap();
    side.rt().spawn(relay.clone().run());
    (side, relay)
}

pub(crate) fn agent_cfg(
    relays: &[SocketAddr],
    services: &[(&str, &str, SocketAddr, u32)],
) -> ClientConfig {
    ClientConfig {
        remote_addrs: relays.iter().map(|a| a.to_string()).collect(),
        relay_fingerprint: Some(ServerIdentity::from_seed(&SEED).unwrap().fingerprint()),
        default_token: None,
        retry_max: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_secs(5),
        agent_name: "test-agent".into(),
        services: services
            .iter()
            .map(|(n, t, a, m)| {
                (
                    n.to_string(),
                    ClientService {
                        token: t.to_string(),
                        local_addr: a.to_string(),
                        max_load: *m,
                        proxy_protocol: false,
                        kind: Kind::Tcp,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        data_encryption: Default::default(),
        plain_copy: Default::default(),
        tls: None,
        threads: Default::default(),
    }
}

pub(crate) fn start_agent(cfg: ClientConfig) -> (Side, Agent) {
    let side = Side::new();
    let agent = Agent::new(cfg);
    side.rt().spawn(agent.clone().run());
    (side, agent)
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

fn stat(r: &Relay, name: &str) -> u64 {
    r.stats().snapshot()[name]
}

/// A tiny echo service (threads) for byte-exact tests.
fn echo_server() -> SocketAddr {
    counting_echo_server(std::sync::Arc::new(AtomicU64::new(0)))
}

/// An echo service that adds every byte it receives to `received`, and
/// half-closes when its client does.
pub(crate) fn counting_echo_server(received: std::sync::Arc<AtomicU64>) -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let received = received.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    a
}

/// Sends `data` to an echo behind `public`, half-closes, and returns all
/// that comes back until the far end closes.
pub(crate) fn echo_exact(public: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = StdStream::connect(public).unwrap();
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        got
    });
    s.write_all(data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    reader.join().unwrap()
}

/// A hand-driven agent: a secure connection to the relay at `addr` (pinned
/// to the test key) that said `Hello` as `name`; returns it and the relay's
/// challenge nonce.
async fn hand_agent(addr: SocketAddr, name: &str) -> (SecureConn, [u8; proto::NONCE_LEN]) {
    let mut c = dial(addr).await;
    c.send(&Msg::Hello {
        version: proto::VERSION,
        agent: name.into(),
    })
    .await
    .unwrap();
    let Msg::Challenge { nonce } = c.recv().await.unwrap() else {
        panic!("no challenge")
    };
    (c, nonce)
}

/// A secure connection to the relay at `addr`, pinned to the test key.
async fn dial(addr: SocketAddr) -> SecureConn {
    let fp = ServerIdentity::from_seed(&SEED).unwrap().fingerprint();
    let cfg = std::sync::Arc::new(zs_crypto::ClientConfig::pinned(fp));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    SecureConn::connect(tcp, cfg, Duration::from_secs(2))
        .await
        .unwrap()
}

/// Registers `service` on a hand-driven agent with `proof`.
async fn hand_register(c: &mut SecureConn, service: &str, proof: [u8; proto::PROOF_LEN]) {
    c.send(&Msg::Register {
        service: service.into(),
        max_load: 1,
        proof,
    })
    .await
    .unwrap();
}

#[test]
fn http_requests_through_the_tunnel_with_a_real_server_and_curl() {
    let Some(()) = need("curl") else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some((_srv, http, body)) = http_server(dir.path()) else {
        return;
    };
    let public = free_port();
    let (_rs, relay) = start_relay(relay_cfg(0, &[("web", "tok", public)]));
    let (_as, agent) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[("web", "tok", http, 100)],
    ));
    wait_until("public port", Duration::from_secs(5), || {
        relay.public_addr("web").is_some()
    });
    let pa = relay.public_addr("web").unwrap();
    for _ in 0..20 {
        assert_eq!(curl(pa).as_deref(), Some(body));
    }
    let m = &relay.mapping_stats()["web"];
    assert_eq!(m["connections"], 20);
    assert_eq!(m["agents"], 1);
    assert!(m["bytes_down"] > 20 * body.len() as u64);
    assert!(agent.stats().forwarded.load(Ordering::Relaxed) >= 20);
}

#[test]
fn bytes_are_exact_both_ways_with_half_close() {
    let echo = echo_server();
    let (_rs, relay) = start_relay(relay_cfg(0, &[("echo", "t", 0)]));
    let (_as, _agent) = start_agent(agent_cfg(&[relay.local_addr()], &[("echo", "t", echo, 10)]));
    wait_until("public port", Duration::from_secs(5), || {
        relay.public_addr("echo").is_some()
    });
    let pa = relay.public_addr("echo").unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let got = echo_exact(pa, &data);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
}

#[test]
fn public_port_listens_only_while_an_agent_serves_the_mapping() {
    let echo = echo_server();
    let public = free_port();
    let pa: SocketAddr = format!("127.0.0.1:{public}").parse().unwrap();
    let (_rs, relay) = start_relay(relay_cfg(0, &[("echo", "t", public)]));
    std::thread::sleep(Duration::from_millis(100));
    assert!(StdStream::connect(pa).is_err(), "listens before any agent");
    let agent = start_agent(agent_cfg(&[relay.local_addr()], &[("echo", "t", echo, 10)]));
    wait_until("public port", Duration::from_secs(5), || {
        StdStream::connect(pa).is_ok()
    });
    assert_eq!(stat(&relay, "listeners_opened"), 1);
    drop(agent); // the agent dies
    wait_until("public port closed", Duration::from_secs(5), || {
        StdStream::connect(pa).is_err()
    });
    assert_eq!(stat(&relay, "listeners_closed"), 1);
    assert_eq!(relay.public_addr("echo"), None);
}

#[test]
fn wrong_token_and_unknown_service_are_refused_counted_and_others_carry_on() {
    let echo = echo_server();
    let (_rs, relay) = start_relay(relay_cfg(0, &[("good", "right", 0), ("bad", "right", 0)]));
    let (_as, agent) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[
            ("good", "right", echo, 10),
            ("bad", "WRONG", echo, 10),
            ("ghost", "x", echo, 10),
        ],
    ));
    wait_until("refusals", Duration::from_secs(5), || {
        agent.stats().refused.load(Ordering::Relaxed) == 2 && relay.public_addr("good").is_some()
    });
    assert_eq!(stat(&relay, "auth_failures"), 1);
    assert_eq!(stat(&relay, "unknown_service"), 1);
    assert_eq!(
        relay.public_addr("bad"),
        None,
        "a wrong token opens no port"
    );
    let mut s = StdStream::connect(relay.public_addr("good").unwrap()).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
}

#[test]
fn a_replayed_proof_from_another_session_is_refused() {
    // A proof is bound to its session's nonce and channel binding.
    let (_rs, relay) = start_relay(relay_cfg(0, &[("svc", "token", 0)]));
    let side = Side::new();
    let addr = relay.local_addr();
    side.rt().block_on(async {
        let (mut a, na) = hand_agent(addr, "x").await;
        let p = proto::proof("token", &na, &a.channel_binding(), "svc");
        hand_register(&mut a, "svc", p).await;
        assert_eq!(
            a.recv().await.unwrap(),
            Msg::Registered {
                service: "svc".into()
            }
        );
        let (mut b, _) = hand_agent(addr, "x").await;
        hand_register(&mut b, "svc", p).await;
        let m = loop {
            match b.recv().await.unwrap() {
                Msg::Ping(_) => continue,
                m => break m,
            }
        };
        assert!(
            matches!(m, Msg::Refused { ref reason, .. } if reason == "wrong token"),
            "{m:?}"
        );
    });
    assert_eq!(stat(&relay, "auth_failures"), 1);
}

#[test]
fn an_agent_with_the_wrong_relay_key_never_connects() {
    let echo = echo_server();
    let (_rs, relay) = start_relay(relay_cfg(0, &[("echo", "t", 0)]));
    let mut cfg = agent_cfg(&[relay.local_addr()], &[("echo", "t", echo, 10)]);
    cfg.relay_fingerprint = Some(ServerIdentity::from_seed(&[1; 32]).unwrap().fingerprint());
    let (_as, agent) = start_agent(cfg);
    wait_until("failures", Duration::from_secs(5), || {
        agent.stats().connect_failures.load(Ordering::Relaxed) >= 2
    });
    assert_eq!(agent.stats().sessions.load(Ordering::Relaxed), 0);
    assert!(stat(&relay, "handshake_failures") >= 1);
    assert_eq!(relay.public_addr("echo"), None);
}

#[test]
fn a_public_client_that_never_sends_is_closed_by_the_idle_timeout() {
    let echo = echo_server();
    let mut cfg = relay_cfg(0, &[("echo", "t", 0)]);
    cfg.services.get_mut("echo").unwrap().idle_timeout = Duration::from_millis(600);
    let (_rs, relay) = start_relay(cfg);
    let (_as, _agent) = start_agent(agent_cfg(&[relay.local_addr()], &[("echo", "t", echo, 10)]));
    wait_until("public port", Duration::from_secs(5), || {
        relay.public_addr("echo").is_some()
    });
    let pa = relay.public_addr("echo").unwrap();
    let mut silent = StdStream::connect(pa).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Meanwhile an active client carries on.
    let mut busy = StdStream::connect(pa).unwrap();
    for _ in 0..5 {
        busy.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        busy.read_exact(&mut b).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut b = [0u8; 1];
    assert_eq!(
        silent.read(&mut b).unwrap(),
        0,
        "the silent client is closed"
    );
    assert!(stat(&relay, "idle_timeouts") >= 1);
    busy.write_all(b"y").unwrap();
    busy.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y", "the active client still works");
}

#[test]
fn a_service_that_never_reads_holds_bounded_memory_and_times_out() {
    // The local service accepts and never reads: the relay must push back
    // (bounded buffers), then close on the idle timeout.
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let stuck = l.local_addr().unwrap();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    let echo = echo_server();
    let mut cfg = relay_cfg(0, &[("stuck", "t", 0), ("echo", "t", 0)]);
    cfg.services.get_mut("stuck").unwrap().idle_timeout = Duration::from_millis(800);
    let (_rs, relay) = start_relay(cfg);
    let (_as, _agent) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[("stuck", "t", stuck, 10), ("echo", "t", echo, 10)],
    ));
    wait_until("ports", Duration::from_secs(5), || {
        relay.public_addr("stuck").is_some() && relay.public_addr("echo").is_some()
    });
    let mut s = StdStream::connect(relay.public_addr("stuck").unwrap()).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    // Kernel buffers on 4 sockets plus one 64 KiB buffer per pump direction.
    assert!(
        sent < 64 << 20,
        "{sent} bytes accepted: nothing pushes back"
    );
    wait_until("idle close", Duration::from_secs(5), || {
        stat(&relay, "idle_timeouts") >= 1
    });
    // The other mapping is unaffected.
    let mut e = StdStream::connect(relay.public_addr("echo").unwrap()).unwrap();
    e.write_all(b"ok").unwrap();
    let mut b = [0u8; 2];
    e.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
}

#[test]
fn a_silent_agent_is_dropped_by_the_heartbeat_and_its_port_closes() {
    let (_rs, relay) = start_relay(relay_cfg(0, &[("svc", "token", 0)]));
    let side = Side::new();
    let addr = relay.local_addr();
    let _conn = side.rt().block_on(async {
        let (mut c, nonce) = hand_agent(addr, "mute").await;
        let p = proto::proof("token", &nonce, &c.channel_binding(), "svc");
        hand_register(&mut c, "svc", p).await;
        c // then never reads nor writes again
    });
    wait_until("registered", Duration::from_secs(3), || {
        relay.public_addr("svc").is_some()
    });
    wait_until("dropped", Duration::from_secs(8), || {
        stat(&relay, "agents_lost") == 1
    });
    assert_eq!(relay.public_addr("svc"), None);
    assert_eq!(stat(&relay, "agents_connected"), 0);
}

#[test]
fn garbage_and_bad_tickets_are_counted_and_closed() {
    let (_rs, relay) = start_relay(relay_cfg(0, &[("svc", "token", 0)]));
    // Not a handshake at all.
    let mut g = StdStream::connect(relay.local_addr()).unwrap();
    g.write_all(&[0xff; 300]).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    let _ = g.read(&mut b);
    wait_until("handshake failure", Duration::from_secs(5), || {
        stat(&relay, "handshake_failures") >= 1
    });
    // A data connection with a made-up ticket.
    let side = Side::new();
    let addr = relay.local_addr();
    side.rt().block_on(async {
        let mut c = dial(addr).await;
        c.send(&Msg::DataHello { ticket: [7; 16] }).await.unwrap();
        assert!(c.recv().await.is_err(), "closed");
    });
    assert_eq!(stat(&relay, "bad_tickets"), 1);
}

#[test]
fn agent_killed_and_restarted_during_a_request_loop_is_back_within_2s() {
    let Some(()) = need("curl") else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some((_srv, http, body)) = http_server(dir.path()) else {
        return;
    };
    let public = free_port();
    let pa: SocketAddr = format!("127.0.0.1:{public}").parse().unwrap();
    let (_rs, relay) = start_relay(relay_cfg(0, &[("web", "tok", public)]));
    let acfg = agent_cfg(&[relay.local_addr()], &[("web", "tok", http, 100)]);
    let agent = start_agent(acfg.clone());
    wait_until("public port", Duration::from_secs(5), || {
        relay.public_addr("web").is_some()
    });
    let mut ok_before = 0;
    for _ in 0..10 {
        assert_eq!(
            curl(pa).as_deref(),
            Some(body),
            "no request fails while the agent is up"
        );
        ok_before += 1;
    }
    drop(agent); // kill
    wait_until("port closed", Duration::from_secs(5), || {
        relay.public_addr("web").is_none()
    });
    assert_eq!(curl(pa), None, "nothing listens while no agent serves");
    let restarted = Instant::now();
    let _agent = start_agent(acfg);
    wait_until(
        "first request after restart",
        Duration::from_secs(2),
        || curl(pa).as_deref() == Some(body),
    );
    let back = restarted.elapsed();
    println!("tunnel back {back:?} after the agent restart");
    for _ in 0..10 {
        assert_eq!(
            curl(pa).as_deref(),
            Some(body),
            "no request fails after the restart"
        );
    }
    assert_eq!(ok_before, 10);
}

#[test]
fn a_relay_that_disappears_is_redialed_and_mappings_reinstalled() {
    let echo = echo_server();
    let port = free_port();
    let public = free_port();
    let (rs, relay) = start_relay(relay_cfg(port, &[("echo", "t", public)]));
    let (_as, agent) = start_agent(agent_cfg(&[relay.local_addr()], &[("echo", "t", echo, 10)]));
    wait_until("registered", Duration::from_secs(5), || {
        relay.public_addr("echo").is_some()
    });
    drop(rs); // the relay process dies
    wait_until("loss noticed", Duration::from_secs(5), || {
        agent.stats().relay_lost.load(Ordering::Relaxed) == 1
    });
    wait_until("retries", Duration::from_secs(5), || {
        agent.stats().connect_failures.load(Ordering::Relaxed) >= 1
    });
    let (_rs2, relay2) = start_relay(relay_cfg(port, &[("echo", "t", public)]));
    let back = wait_until("re-registered", Duration::from_secs(3), || {
        relay2.public_addr("echo").is_some()
    });
    println!("mapping re-installed {back:?} after the relay came back");
    let mut s = StdStream::connect(relay2.public_addr("echo").unwrap()).unwrap();
    s.write_all(b"again").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"again");
    assert!(agent.stats().sessions.load(Ordering::Relaxed) >= 2);
}

#[test]
fn one_agent_on_two_relays_survives_losing_one() {
    let echo = echo_server();
    let (ra_side, ra) = start_relay(relay_cfg(0, &[("echo", "t", 0)]));
    let (_rb_side, rb) = start_relay(relay_cfg(0, &[("echo", "t", 0)]));
    let (_as, _agent) = start_agent(agent_cfg(
        &[ra.local_addr(), rb.local_addr()],
        &[("echo", "t", echo, 10)],
    ));
    wait_until("both serve", Duration::from_secs(5), || {
        ra.public_addr("echo").is_some() && rb.public_addr("echo").is_some()
    });
    let mut on_b = StdStream::connect(rb.public_addr("echo").unwrap()).unwrap();
    on_b.write_all(b"1").unwrap();
    let mut b = [0u8; 1];
    on_b.read_exact(&mut b).unwrap();
    drop(ra_side); // relay A dies
                   // The connection on relay B carries on, and B accepts new ones.
    on_b.write_all(b"2").unwrap();
    on_b.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"2");
    let mut n = StdStream::connect(rb.public_addr("echo").unwrap()).unwrap();
    n.write_all(b"3").unwrap();
    n.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"3");
}

#[test]
fn least_load_selection_prefers_the_agent_with_room() {
    let echo = echo_server();
    let (_rs, relay) = start_relay(relay_cfg(0, &[("echo", "t", 0)]));
    let (_a1, small) = start_agent(agent_cfg(&[relay.local_addr()], &[("echo", "t", echo, 2)]));
    let (_a2, big) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[("echo", "t", echo, 100)],
    ));
    wait_until("two agents", Duration::from_secs(5), || {
        relay.mapping_stats()["echo"]["agents"] == 2
    });
    let pa = relay.public_addr("echo").unwrap();
    let mut open = Vec::new();
    for i in 0..10u8 {
        let mut s = StdStream::connect(pa).unwrap();
        s.write_all(&[i]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        open.push(s);
    }
    let f = |a: &Agent| a.stats().forwarded.load(Ordering::Relaxed);
    // With max_load 2 vs 100, load/max favours the big agent for at least 8 of 10.
    assert!(f(&big) >= 8, "small {} big {}", f(&small), f(&big));
    assert!(f(&small) <= 2, "the small agent got more than its max_load");
}

#[test]
fn simultaneous_visitors_never_exceed_max_connections() {
    let echo = echo_server();
    let mut cfg = relay_cfg(0, &[("echo", "t", 0)]);
    cfg.services.get_mut("echo").unwrap().max_connections = 4;
    // Several relay threads, so visitors really are admitted in parallel.
    let side = Side::with_threads(4);
    let relay = side
        .rt()
        .block_on(Relay::bind_with_identity(
            cfg,
            ServerIdentity::from_seed(&SEED).unwrap(),
        ))
        .unwrap();
    side.rt().spawn(relay.clone().run());
    let (_as, _agent) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[("echo", "t", echo, 100)],
    ));
    wait_until("public port", Duration::from_secs(5), || {
        relay.public_addr("echo").is_some()
    });
    let pa = relay.public_addr("echo").unwrap();
    for round in 0..3 {
        // 48 visitors at once; each holds its connection open until all are counted.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(48));
        let threads: Vec<_> = (0..48)
            .map(|_| {
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    let Ok(mut s) = StdStream::connect(pa) else {
                        return None;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let mut one = [0u8; 1];
                    let served = s.write_all(b"x").is_ok() && s.read_exact(&mut one).is_ok();
                    Some((served, s))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let served = results.iter().flatten().filter(|(ok, _)| *ok).count();
        assert!(
            (1..=4).contains(&served),
            "round {round}: {served} visitors served at once with max_connections = 4"
        );
        drop(results);
        wait_until("visitors gone", Duration::from_secs(5), || {
            relay.mapping_stats()["echo"]["active"] == 0
        });
    }
    assert!(stat(&relay, "visitors_refused") >= 3 * 44);
}

/// One echo round trip on `s`.
fn echo_once(s: &mut StdStream, msg: &[u8]) -> bool {
    let mut got = vec![0u8; msg.len()];
    s.write_all(msg).is_ok() && s.read_exact(&mut got).is_ok() && got == msg
}

/// A fresh connection to `pa` answers one echo.
fn serves(pa: SocketAddr) -> bool {
    let Ok(mut s) = StdStream::connect(pa) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    echo_once(&mut s, b"ping")
}

#[test]
fn reload_adds_changes_and_removes_a_mapping_while_another_carries_traffic() {
    let (ea, eb) = (echo_server(), echo_server());
    let (_rs, relay) = start_relay(relay_cfg(0, &[("a", "ta", 0)]));
    let (_as, agent) = start_agent(agent_cfg(&[relay.local_addr()], &[("a", "ta", ea, 10)]));
    wait_until("a listens", Duration::from_secs(5), || {
        relay.public_addr("a").is_some()
    });
    // One long-lived connection on `a` echoes without pause during all
    // reloads; after each step the test waits for its next round trip (an
    // event, not a count reached in time).
    let pa = relay.public_addr("a").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let traffic = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        std::thread::spawn(move || {
            let mut s = StdStream::connect(pa).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let n = rounds.load(Ordering::Relaxed);
                let msg = n.to_le_bytes().repeat(64);
                assert!(
                    echo_once(&mut s, &msg),
                    "traffic on `a` broke after {n} rounds"
                );
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let a_carries = |step: &str| {
        let n = rounds.load(Ordering::Relaxed);
        wait_until(
            &format!("a round trip on `a` after {step}"),
            Duration::from_secs(10),
            || rounds.load(Ordering::Relaxed) > n || traffic.is_finished(),
        );
        assert!(
            !traffic.is_finished(),
            "traffic on `a` stopped after {step}"
        );
    };
    a_carries("start");
    let both_relay = |tb: &str| {
        let mut c = relay_cfg(0, &[("a", "ta", 0), ("b", tb, 0)]);
        std::mem::take(&mut c.services)
    };
    let both_agent = |tb: &str, load: u32| {
        let mut c = agent_cfg(&[], &[("a", "ta", ea, 10), ("b", tb, eb, load)]);
        std::mem::take(&mut c.services)
    };

    // Add `b` (relay first, as the docs say), then serve it.
    let r = relay.reload(both_relay("tb"));
    assert_eq!(
        (r.added.as_slice(), r.removed.len(), r.changed.len()),
        (&["b".to_string()][..], 0, 0)
    );
    let r = agent.reload(both_agent("tb", 10));
    assert_eq!(r.added, ["b"]);
    wait_until("b listens", Duration::from_secs(5), || {
        relay.public_addr("b").is_some()
    });
    assert!(serves(relay.public_addr("b").unwrap()));
    a_carries("adding b");

    // A new load figure re-registers `b`; it keeps serving.
    assert_eq!(agent.reload(both_agent("tb", 20)).changed, ["b"]);
    assert!(serves(relay.public_addr("b").unwrap()));
    a_carries("a new load for b");

    // A new token on the relay drops `b`'s registration; the agent's reload
    // with the same token brings it back.
    assert_eq!(relay.reload(both_relay("tb2")).changed, ["b"]);
    assert_eq!(
        relay.public_addr("b"),
        None,
        "b's port closes until re-proved"
    );
    assert_eq!(agent.reload(both_agent("tb2", 20)).changed, ["b"]);
    wait_until("b listens again", Duration::from_secs(5), || {
        relay.public_addr("b").is_some()
    });
    assert!(serves(relay.public_addr("b").unwrap()));
    a_carries("a new token for b");

    // The agent drops `b` (Unregister): its port closes though the relay still lists it.
    let mut only_a = agent_cfg(&[], &[("a", "ta", ea, 10)]);
    assert_eq!(
        agent.reload(std::mem::take(&mut only_a.services)).removed,
        ["b"]
    );
    wait_until("b closed by unregister", Duration::from_secs(5), || {
        relay.public_addr("b").is_none()
    });
    assert!(relay.services().contains_key("b"));
    a_carries("the agent dropping b");

    // And the relay removes it.
    let mut only_a = relay_cfg(0, &[("a", "ta", 0)]);
    assert_eq!(
        relay.reload(std::mem::take(&mut only_a.services)).removed,
        ["b"]
    );
    assert!(!relay.services().contains_key("b"));
    a_carries("the relay removing b");

    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic on `a` never broke");
    assert_eq!(
        relay.mapping_stats()["a"]["connections"],
        1,
        "one connection on `a` all along"
    );
    assert_eq!(stat(&relay, "reloads"), 3);
    assert_eq!(agent.stats().reloads.load(Ordering::Relaxed), 4);
}

#[test]
fn proxy_protocol_v2_gives_a_real_nginx_the_public_client_address() {
    let Some(()) = need("nginx") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = free_port();
    let nginx_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n\
             fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
             server {{ listen 127.0.0.1:{port} proxy_protocol;\n\
             location / {{ return 200 \"$proxy_protocol_addr $proxy_protocol_port\\n\"; }} }} }}\n"
        ),
    )
    .unwrap();
    let _nginx = Proc(
        Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(nginx_addr);
    let (_rs, relay) = start_relay(relay_cfg(0, &[("web", "t", 0)]));
    let mut cfg = agent_cfg(&[relay.local_addr()], &[("web", "t", nginx_addr, 10)]);
    cfg.services.get_mut("web").unwrap().proxy_protocol = true;
    let (_as, _agent) = start_agent(cfg);
    wait_until("public port", Duration::from_secs(5), || {
        relay.public_addr("web").is_some()
    });
    let pa = relay.public_addr("web").unwrap();
    for _ in 0..3 {
        let mut s = StdStream::connect(pa).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let me = s.local_addr().unwrap();
        assert!(
            resp.ends_with(&format!("\r\n\r\n{} {}\n", me.ip(), me.port())),
            "nginx saw another client than {me}: {resp:?}"
        );
    }
}
