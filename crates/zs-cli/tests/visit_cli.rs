//! `zs xnat visit` end to end with real processes on loopback: a relay hosting the
//! punch rendezvous and answering STUN (127.0.0.1 and 127.0.0.2), an agent with an
//! echo service, a visitor; bytes go through the visitor's port at once (relay), the
//! visitor punches a direct path in the background, and bytes stay exact after it.
#![cfg(target_os = "linux")] // 127.0.0.2 as the STUN server's second address

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{config_error, echo_server, free_port, xnat_fingerprint, zs, Guard};

fn free_udp_pair() -> u16 {
    // Two consecutive free UDP ports on both STUN addresses.
    loop {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65535
            && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.2", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.2", p + 1)).is_ok()
        {
            return p;
        }
    }
}

/// `data` through `addr` and back (echo), with a writer thread.
fn echo_through(addr: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut w = s.try_clone().ok()?;
    let d = data.to_vec();
    let t = std::thread::spawn(move || {
        let _ = w.write_all(&d);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut back = Vec::new();
    let r = s.read_to_end(&mut back);
    let _ = t.join();
    r.ok().map(|_| back)
}

/// Runs `zs xnat VERB --config cfg`, collecting stderr lines.
fn spawn(verb: &str, cfg: &std::path::Path) -> (Guard, Arc<Mutex<String>>) {
    let mut c = zs()
        .args(["xnat", verb, "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let l = log.clone();
    let err = c.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let Ok(line) = line else { return };
            l.lock().unwrap().push_str(&line);
            l.lock().unwrap().push('\n');
        }
    });
    (Guard(c), log)
}

#[test]
fn visit_goes_through_the_relay_at_once_then_direct() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let (control, local) = (free_port(), free_port());
    let stun = free_udp_pair();
    let relay_cfg = dir.path().join("relay.toml");
    std::fs::write(
        &relay_cfg,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\
             [server.services.echo]\ntoken = \"use_a_secret\"\nbind_addr = \"127.0.0.1:0\"\n\
             [server.direct]\nstun_bind_addr = \"127.0.0.1:{stun}\"\nstun_alt_ip = \"127.0.0.2\"\n"
        ),
    )
    .unwrap();
    let fp = xnat_fingerprint(&relay_cfg);
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\nrelay_fingerprint = \"{fp}\"\n\
             [client.services.echo]\ntoken = \"use_a_secret\"\nlocal_addr = \"{echo}\"\n"
        ),
    )
    .unwrap();
    let visitor_cfg = dir.path().join("visitor.toml");
    std::fs::write(
        &visitor_cfg,
        format!(
            "[visitor]\nremote_addr = \"127.0.0.1:{control}\"\nrelay_fingerprint = \"{fp}\"\n\
             service = \"echo\"\ntoken = \"use_a_secret\"\nbind_addr = \"127.0.0.1:{local}\"\n\
             direct_retry = 1\n"
        ),
    )
    .unwrap();
    let (_relay, relay_log) = spawn("server", &relay_cfg);
    let (_agent, _) = spawn("agent", &agent_cfg);
    let (_visitor, visitor_log) = spawn("visit", &visitor_cfg);
    let port: SocketAddr = format!("127.0.0.1:{local}").parse().unwrap();
    // Through the relay as soon as the agent is registered.
    let t = Instant::now();
    loop {
        if echo_through(port, b"first").as_deref() == Some(b"first") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no round trip through the visitor; relay log:\n{}\nvisitor log:\n{}",
            relay_log.lock().unwrap(),
            visitor_log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The background punch brings the direct path up.
    let t = Instant::now();
    while !visitor_log.lock().unwrap().contains("direct path up") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no direct path; visitor log:\n{}",
            visitor_log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    assert!(echo_through(port, &data).expect("direct round trip") == data);
    // A wrong token is refused with a reason in the visitor's log; the port stays up.
    assert!(relay_log.lock().unwrap().contains("listening for agents"));
}

#[test]
fn visit_config_errors_name_the_file_and_key() {
    let err = config_error(
        &["xnat", "visit"],
        "v.toml",
        "[visitor]\nremote_addr = \"127.0.0.1:1\"\n",
    );
    assert!(
        err.contains("v.toml") && err.contains("visitor.relay_fingerprint"),
        "{err}"
    );
}
