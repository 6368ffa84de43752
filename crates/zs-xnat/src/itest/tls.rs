//! `[*.transport] type = "tls"`: agents reach the relay over TLS 1.3
//! (rustls) with a certificate made in the test (rcgen); a wrong root or a
//! wrong hostname is refused with an error that says which.

use super::*;
use crate::config::{ClientTls, ServerTls};

/// A self-signed certificate for `name`, written as PEM files into `dir`:
/// (cert path, key path).
fn cert_files(dir: &Path, stem: &str, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A relay with TLS on (certificate for `relay.test`) serving `echo`; the
/// directory holds `relay.crt` and `relay.key`.
fn tls_relay(dir: &Path) -> (Side, Relay) {
    let (cert, key) = cert_files(dir, "relay", "relay.test");
    let mut cfg = relay_cfg(0, &[("echo", "t", 0)]);
    cfg.tls = Some(ServerTls { cert, key });
    start_relay(cfg)
}

fn tls_agent(relay: &Relay, echo: SocketAddr, root: &Path, hostname: &str) -> ClientConfig {
    let mut cfg = agent_cfg(&[relay.local_addr()], &[("echo", "t", echo, 10)]);
    cfg.relay_fingerprint = None;
    cfg.tls = Some(ClientTls {
        trusted_root: root.to_path_buf(),
        hostname: Some(hostname.to_string()),
    });
    cfg
}

#[test]
fn tls_transport_carries_exact_bytes_and_the_relay_still_takes_pinned_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let (_rs, relay) = tls_relay(dir.path());
    let cfg = tls_agent(&relay, echo, &dir.path().join("relay.crt"), "relay.test");
    let (_as, agent) = start_agent(cfg);
    wait_until("public port over TLS", Duration::from_secs(10), || {
        relay.public_addr("echo").is_some()
    });
    // The token proof is bound to the TLS exporter: it was accepted, and the
    // data connections (TLS too) carry bytes exactly, both ways.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let got = echo_exact(relay.public_addr("echo").unwrap(), &data);
    assert!(
        got == data,
        "{} of {} bytes came back",
        got.len(),
        data.len()
    );
    assert_eq!(agent.stats().sessions.load(Ordering::Relaxed), 1);
    // Our pinned session still works on the same port (command API,
    // visitors, agents that keep type = "tcp"): a second agent uses it.
    let (_as2, agent2) = start_agent(agent_cfg(&[relay.local_addr()], &[("echo", "t", echo, 10)]));
    wait_until(
        "session agent on the TLS relay",
        Duration::from_secs(10),
        || agent2.stats().sessions.load(Ordering::Relaxed) == 1,
    );
    let got = echo_exact(relay.public_addr("echo").unwrap(), b"both transports");
    assert_eq!(got, b"both transports");
    assert_eq!(stat(&relay, "handshake_failures"), 0);
}

/// Runs one connect of `cfg`'s agent to `relay` and returns its error text.
fn connect_error(relay: &Relay, cfg: ClientConfig) -> String {
    let side = Side::new();
    let agent = Agent::try_new(cfg).unwrap();
    let addr = relay.local_addr().to_string();
    match side.rt().block_on(agent.connect(&addr)) {
        Ok(_) => panic!("the agent connected"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tls_with_a_wrong_root_or_hostname_is_refused_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let (_rs, relay) = tls_relay(dir.path());
    // A root that did not sign the relay's certificate.
    let (other, _) = cert_files(dir.path(), "other", "relay.test");
    let e = connect_error(&relay, tls_agent(&relay, echo, &other, "relay.test"));
    assert!(
        e.contains("not signed by [client.transport.tls] trusted_root"),
        "{e}"
    );
    // The right root, but the certificate does not name this host.
    let root = dir.path().join("relay.crt");
    let e = connect_error(&relay, tls_agent(&relay, echo, &root, "evil.test"));
    assert!(
        e.contains("does not name [client.transport.tls] hostname") && e.contains("evil.test"),
        "{e}"
    );
    // Without `hostname`, the relay's address is the name: 127.0.0.1 is not
    // in a certificate for relay.test either.
    let mut cfg = tls_agent(&relay, echo, &root, "x");
    cfg.tls.as_mut().unwrap().hostname = None;
    let e = connect_error(&relay, cfg);
    assert!(
        e.contains("does not name") && e.contains("127.0.0.1"),
        "{e}"
    );
    // A running agent with a wrong root never registers; the relay counts
    // the failed handshakes and keeps serving others.
    let (_as, agent) = start_agent(tls_agent(&relay, echo, &other, "relay.test"));
    wait_until("failures", Duration::from_secs(10), || {
        agent.stats().connect_failures.load(Ordering::Relaxed) >= 2
            && stat(&relay, "handshake_failures") >= 2
    });
    assert_eq!(agent.stats().sessions.load(Ordering::Relaxed), 0);
    assert_eq!(relay.public_addr("echo"), None);
    let good = tls_agent(&relay, echo, &root, "relay.test");
    let (_as2, _agent2) = start_agent(good);
    wait_until("good agent", Duration::from_secs(10), || {
        relay.public_addr("echo").is_some()
    });
    assert_eq!(echo_exact(relay.public_addr("echo").unwrap(), b"ok"), b"ok");
}

#[test]
fn an_unreadable_trusted_root_is_an_error_naming_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_cfg(&["127.0.0.1:1".parse().unwrap()], &[]);
    cfg.relay_fingerprint = None;
    cfg.tls = Some(ClientTls {
        trusted_root: dir.path().join("missing.pem"),
        hostname: None,
    });
    let e = Agent::try_new(cfg).err().unwrap().to_string();
    assert!(
        e.contains("[client.transport.tls] trusted_root") && e.contains("missing.pem"),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let mut cfg = relay_cfg(0, &[]);
    cfg.tls = Some(ServerTls {
        cert: empty.clone(),
        key: empty,
    });
    let side = Side::new();
    let e = side
        .rt()
        .block_on(Relay::bind_with_identity(
            cfg,
            ServerIdentity::from_seed(&SEED).unwrap(),
        ))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("[server.transport.tls] cert")
            && e.contains("expected at least one PEM CERTIFICATE"),
        "{e}"
    );
}

/// Attack: on a relay with TLS on, a peer that sends two bytes of a TLS
/// record header and stalls, one that sends garbage, and one that sends a TLS
/// record header followed by garbage are each closed and counted, and an
/// honest agent is served meanwhile.
#[test]
fn a_tls_relay_counts_stalled_and_garbage_peers_and_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let (_rs, relay) = tls_relay(dir.path());
    let mut stalled = StdStream::connect(relay.local_addr()).unwrap();
    stalled.write_all(&[0x16, 0x03]).unwrap();
    let mut garbage = StdStream::connect(relay.local_addr()).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut fake = StdStream::connect(relay.local_addr()).unwrap();
    fake.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3])
        .unwrap();
    let root = dir.path().join("relay.crt");
    let (_as, _agent) = start_agent(tls_agent(&relay, echo, &root, "relay.test"));
    wait_until("honest agent", Duration::from_secs(10), || {
        relay.public_addr("echo").is_some()
    });
    assert_eq!(
        echo_exact(relay.public_addr("echo").unwrap(), b"still"),
        b"still"
    );
    wait_until("three failed handshakes", Duration::from_secs(15), || {
        stat(&relay, "handshake_failures") >= 3
    });
    // Each of them was closed: a read sees the end (or a reset), not a hang.
    for mut s in [stalled, garbage, fake] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Err(e) => {
                    assert!(
                        !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                        "a hostile peer's connection is still open"
                    );
                    break; // reset
                }
                Ok(_) => {} // an alert or a handshake answer, then the end
            }
        }
    }
}
