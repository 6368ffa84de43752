//! Data connections that go back to the pool (`StartFramed`, `DataDone`,
//! `[server] data_reuse`): byte-exact traffic over reused connections with
//! either side closing first, the reuse bounds, and agents that end a framed
//! connection wrongly.

use std::sync::Arc;

use super::*;
use crate::proto::{chunk_header, MAX_CHUNK};

fn agent_stat(a: &Agent, f: impl Fn(&crate::stats::AgentStats) -> &AtomicU64) -> u64 {
    f(a.stats()).load(Ordering::Relaxed)
}

/// A service that greets and closes at once (the server closes first, the
/// client after reading everything: an HTTP/1.0-style exchange).
fn greeter() -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(b"hello\n");
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    a
}

fn tunnel(
    reuse: u32,
    echo: SocketAddr,
    greet: SocketAddr,
) -> ((Side, Relay), (Side, Agent), SocketAddr, SocketAddr) {
    let mut rc = relay_cfg(0, &[("echo", "t", 0), ("greet", "t", 0)]);
    rc.data_reuse = reuse;
    let (rs, relay) = start_relay(rc);
    let (sa, agent) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[("echo", "t", echo, 16), ("greet", "t", greet, 16)],
    ));
    wait_until("public ports", Duration::from_secs(10), || {
        relay.public_addr("echo").is_some() && relay.public_addr("greet").is_some()
    });
    let (e, g) = (
        relay.public_addr("echo").unwrap(),
        relay.public_addr("greet").unwrap(),
    );
    ((rs, relay), (sa, agent), e, g)
}

/// Sequential public connections, client closing first (echo, half-close)
/// and server closing first (greeter): every byte exact, and the agent
/// opens a handful of data connections, not one per public connection.
#[test]
fn data_connections_carry_public_connections_in_turn() {
    let ((_rs, relay), (_sa, agent), echo, greet) = tunnel(100, echo_server(), greeter());
    let rounds = 30usize;
    for i in 0..rounds {
        let data: Vec<u8> = (0..(i * 7919) % 200_000)
            .map(|j| (j * 31 + i) as u8)
            .collect();
        assert!(echo_exact(echo, &data) == data, "round {i}: echo differs");
        let mut s = StdStream::connect(greet).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello\n", "round {i}");
    }
    // The last connection's DataDone may still be on its way.
    wait_until("reuse counted", Duration::from_secs(5), || {
        stat(&relay, "data_reused") >= (2 * rounds - 10) as u64
    });
    let opened = agent_stat(&agent, |s| &s.data_conns);
    assert!(
        opened <= 12,
        "{opened} data connections for {} public ones",
        2 * rounds
    );
    assert_eq!(stat(&relay, "data_reuse_errors"), 0);
    assert_eq!(relay.mapping_stats()["echo"]["errors"], 0);
    assert_eq!(agent_stat(&agent, |s| &s.forwarded), 2 * rounds as u64);
}

/// `data_reuse = 1`: one public connection per data connection (raw
/// `Start`); `data_reuse = 3`: no data connection carries more than three.
#[test]
fn reuse_is_bounded_by_data_reuse() {
    for (reuse, rounds) in [(1u32, 8u64), (3, 12)] {
        let ((_rs, relay), (_sa, agent), echo, _) = tunnel(reuse, echo_server(), greeter());
        for i in 0..rounds {
            assert_eq!(echo_exact(echo, b"abc"), b"abc", "reuse {reuse} round {i}");
        }
        std::thread::sleep(Duration::from_millis(100));
        let reused = stat(&relay, "data_reused");
        let opened = agent_stat(&agent, |s| &s.data_conns);
        if reuse == 1 {
            assert_eq!(reused, 0);
            assert!(opened >= rounds, "{opened} < {rounds}");
        } else {
            // Each data connection carries at most `reuse` public ones.
            assert!(
                opened * reuse as u64 >= rounds,
                "{opened} x {reuse} < {rounds}"
            );
            assert!(reused > 0 && reused <= rounds - rounds / reuse as u64);
        }
    }
}

/// A hand-driven agent serving `svc` (token "t") on the relay: returns its
/// control connection and one data connection that received `StartFramed`
/// for a public client that sent `ping` and half-closed.
async fn framed_data(
    relay: SocketAddr,
    public: impl Fn() -> Option<SocketAddr>,
) -> (SecureConn, SecureConn, std::thread::JoinHandle<Vec<u8>>) {
    let (mut ctl, nonce) = hand_agent(relay, "hand").await;
    let binding = ctl.channel_binding();
    hand_register(&mut ctl, "svc", proto::proof("t", &nonce, &binding, "svc")).await;
    let ticket = loop {
        match ctl.recv().await.unwrap() {
            Msg::OpenData { ticket, .. } => break ticket,
            _ => continue,
        }
    };
    let mut data = dial(relay).await;
    data.send(&Msg::DataHello { ticket }).await.unwrap();
    let t = Instant::now();
    let addr = loop {
        if let Some(a) = public() {
            break a;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no public port");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let client = std::thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The relay may already have dropped this connection (the hand
        // agent's bad end can come before this thread runs on a loaded
        // machine): what counts is what the client reads.
        let _ = s.write_all(b"ping");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    // When the client comes before the relay pooled our data connection,
    // the relay asks for another one (never opened), gives up on it after
    // DATA_WAIT (5 s) and takes ours.
    let m = tokio::time::timeout(Duration::from_secs(20), data.recv())
        .await
        .expect("a start in time")
        .expect("the relay sends a start on the data connection");
    assert!(matches!(m, Msg::StartFramed { .. }), "{m:?}");
    (ctl, data, client)
}

/// Agents that end a framed data connection wrongly: another message
/// instead of `DataDone`, bytes after the end chunk, a chunk longer than
/// the limit. The public client gets what was sent before, the connection
/// is dropped and counted, nothing is pooled from it, and the relay carries
/// on.
#[test]
fn agents_that_end_framed_connections_wrongly_are_dropped_and_counted() {
    let side = Side::new();
    for case in [
        "ping instead of DataDone",
        "bytes after the end",
        "oversized chunk",
    ] {
        let mut rc = relay_cfg(0, &[("svc", "t", 0)]);
        rc.pool_size = 1;
        // The hand agent answers no pings: keep it from counting as dead
        // (3 heartbeats) on a loaded machine.
        rc.heartbeat_interval = Duration::from_secs(20);
        rc.handshake_timeout = Duration::from_secs(10);
        let (_rs, relay) = start_relay(rc);
        let addr = relay.local_addr();
        let r2 = relay.clone();
        side.rt().block_on(async {
            let (_ctl, data, client) = framed_data(addr, || r2.public_addr("svc")).await;
            let (mut sr, mut sw) = data.split_framed();
            if case == "oversized chunk" {
                // A header claiming more than MAX_CHUNK, sent as one write
                // of the raw session stream: the relay must not wait for it.
                sw.write_raw_for_test(&chunk_header_unchecked(MAX_CHUNK + 1))
                    .await
                    .unwrap();
                let got = client.join().unwrap();
                assert!(got.is_empty(), "{case}: {got:?}");
                return;
            }
            let mut buf = Vec::new();
            let mut got = Vec::new();
            while sr.read(&mut buf).await.unwrap() {
                got.extend_from_slice(&buf);
            }
            assert_eq!(got, b"ping", "{case}");
            sw.write(b"pong").await.unwrap();
            sw.shutdown().await.unwrap();
            let mut conn = SecureConn::rejoin(sr, sw).expect("both directions ended");
            assert_eq!(client.join().unwrap(), b"pong", "{case}");
            if case == "bytes after the end" {
                let mut late = chunk_header(3).to_vec();
                late.extend_from_slice(b"bad");
                conn.send_raw(&late).await.unwrap();
            } else {
                conn.send(&Msg::Ping(1)).await.unwrap();
            }
            // The relay drops it: the next read ends.
            let r = tokio::time::timeout(Duration::from_secs(5), conn.recv()).await;
            assert!(matches!(r, Ok(Err(_))), "{case}: {r:?}");
        });
        if case == "oversized chunk" {
            wait_until("error counted", Duration::from_secs(5), || {
                relay.mapping_stats()["svc"]["errors"] >= 1
            });
            assert_eq!(stat(&relay, "data_reused"), 0);
        } else {
            wait_until(case, Duration::from_secs(5), || {
                stat(&relay, "data_reuse_errors") == 1
            });
            assert_eq!(relay.mapping_stats()["svc"]["errors"], 0, "{case}");
        }
    }
}

fn chunk_header_unchecked(len: usize) -> [u8; 4] {
    (len as u32).to_le_bytes()
}

/// A framed public connection to an in-process mapping is not handed back
/// (the agent closes the data connection): not an error on the relay.
#[test]
fn an_agent_may_decline_reuse_by_closing() {
    let received = Arc::new(AtomicU64::new(0));
    let ((_rs, relay), (_sa, agent), echo, _) =
        tunnel(100, counting_echo_server(received), greeter());
    // Declined: the agent closes data connections of in-process mappings.
    agent.serve_in_process(
        "echo",
        crate::VirtualBackend::new(),
        "10.255.0.1:7".parse().unwrap(),
    );
    for _ in 0..3 {
        let mut s = StdStream::connect(echo).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"x");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(stat(&relay, "data_reuse_errors"), 0);
    assert_eq!(stat(&relay, "data_reused"), 0);
}

/// A pooled data connection that waits longer than `data_reuse_age` is
/// closed and replaced, with no public connection to trigger it (before
/// session 11 the age was checked only when a connection came back, so an
/// idle pool kept its connections for ever); the tunnel still carries
/// traffic afterwards.
#[test]
fn idle_pooled_data_connections_expire_on_age_and_are_replaced() {
    let mut rc = relay_cfg(0, &[("echo", "t", 0)]);
    rc.data_reuse_age = Duration::from_millis(300);
    let pool = rc.pool_size as u64;
    let (_rs, relay) = start_relay(rc);
    let (_sa, agent) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[("echo", "t", echo_server(), 16)],
    ));
    wait_until("public port", Duration::from_secs(10), || {
        relay.public_addr("echo").is_some()
    });
    // Two generations replaced: each expired connection was closed and
    // the agent opened another one.
    wait_until(
        "pooled connections expired",
        Duration::from_secs(20),
        || {
            stat(&relay, "data_expired") >= 2 * pool
                && agent_stat(&agent, |s| &s.data_conns) >= 3 * pool
        },
    );
    assert_eq!(agent_stat(&agent, |s| &s.forwarded), 0);
    assert_eq!(stat(&relay, "data_reuse_errors"), 0);
    let echo = relay.public_addr("echo").unwrap();
    assert_eq!(echo_exact(echo, b"still here"), b"still here");
}

/// The next `OpenData` on a hand agent's control connection (10 s at most).
async fn open_data(ctl: &mut SecureConn) -> Option<[u8; proto::TICKET_LEN]> {
    let f = async {
        loop {
            match ctl.recv().await.unwrap() {
                Msg::OpenData { ticket, .. } => break ticket,
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), f).await.ok()
}

/// The relay closes an expired pooled connection in order (its session's
/// close record, so the agent reads the end of a session, not a cut), not
/// before `data_reuse_age`, and asks the agent for a replacement.
#[test]
fn an_expired_pooled_connection_is_closed_in_order_and_replaced() {
    let mut rc = relay_cfg(0, &[("svc", "t", 0)]);
    rc.pool_size = 1;
    let age = Duration::from_millis(400);
    rc.data_reuse_age = age;
    // The hand agent answers no pings.
    rc.heartbeat_interval = Duration::from_secs(20);
    let (_rs, relay) = start_relay(rc);
    let addr = relay.local_addr();
    Side::new().rt().block_on(async {
        let (mut ctl, nonce) = hand_agent(addr, "hand").await;
        let binding = ctl.channel_binding();
        hand_register(&mut ctl, "svc", proto::proof("t", &nonce, &binding, "svc")).await;
        let ticket = open_data(&mut ctl).await.expect("a first OpenData");
        let t = Instant::now();
        let mut data = dial(addr).await;
        data.send(&Msg::DataHello { ticket }).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), data.recv())
            .await
            .expect("closed in time")
            .expect_err("nothing but the close");
        assert!(t.elapsed() >= age, "closed after {:?}", t.elapsed());
        // A truncated session would be another error (zs-crypto's Truncated).
        assert_eq!(end.kind(), std::io::ErrorKind::UnexpectedEof, "{end}");
        open_data(&mut ctl).await.expect("a replacement OpenData");
    });
    assert_eq!(stat(&relay, "data_expired"), 1);
}

#[test]
fn data_reuse_keys_parse_and_name_the_key_on_error() {
    let parse = |t: &str| crate::config::Config::parse(t, "x.toml", Path::new("."));
    let base = "[server]\nbind_addr = \"127.0.0.1:1\"\n";
    let keys = |extra: &str| {
        let s = parse(&format!("{base}{extra}")).unwrap().server.unwrap();
        (s.data_reuse, s.data_reuse_age.as_secs())
    };
    assert_eq!(keys(""), (100, 300));
    assert_eq!(keys("data_reuse = 1\ndata_reuse_age = 9\n"), (1, 9));
    // 0 means the same as 1: no reuse.
    assert_eq!(keys("data_reuse = 0\n"), (1, 300));
    let e = parse(&format!("{base}data_reuse = -3\n")).unwrap_err();
    assert_eq!(e.key, "server.data_reuse");
    let e = parse(&format!("{base}data_reuse_age = \"long\"\n")).unwrap_err();
    assert_eq!(e.key, "server.data_reuse_age");
}

/// A relay (hand-driven) that reuses wrongly: after a clean framed
/// exchange and the agent's `DataDone` it sends chunk bytes where a start
/// message belongs. The agent drops that data connection (it never reaches
/// the local service again) and keeps its control session.
#[test]
fn an_agent_drops_a_data_connection_a_relay_reuses_wrongly() {
    let received = Arc::new(AtomicU64::new(0));
    let echo = counting_echo_server(received.clone());
    let side = Side::new();
    let l = side
        .rt()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let relay_addr = l.local_addr().unwrap();
    let (_sa, agent) = start_agent(agent_cfg(&[relay_addr], &[("svc", "t", echo, 4)]));
    side.rt().block_on(async {
        let id = Arc::new(ServerIdentity::from_seed(&SEED).unwrap());
        let scfg = Arc::new(zs_crypto::session::ServerConfig::with_identity(id));
        let t = Duration::from_secs(10);
        let accept = || async {
            let (tcp, _) = l.accept().await.unwrap();
            SecureConn::accept(tcp, scfg.clone(), t).await.unwrap()
        };
        let mut ctl = accept().await;
        assert!(matches!(ctl.recv().await.unwrap(), Msg::Hello { .. }));
        ctl.send(&Msg::Challenge { nonce: [3; 32] }).await.unwrap();
        assert!(matches!(ctl.recv().await.unwrap(), Msg::Register { .. }));
        ctl.send(&Msg::OpenData {
            service: "svc".into(),
            ticket: [5; 16],
        })
        .await
        .unwrap();
        let mut data = accept().await;
        assert_eq!(
            data.recv().await.unwrap(),
            Msg::DataHello { ticket: [5; 16] }
        );
        data.send(&Msg::StartFramed {
            peer: "192.0.2.9:1000".parse().unwrap(),
        })
        .await
        .unwrap();
        let (mut sr, mut sw) = data.split_framed();
        sw.write(b"hi").await.unwrap();
        sw.shutdown().await.unwrap();
        let (mut got, mut buf) = (Vec::new(), Vec::new());
        while sr.read(&mut buf).await.unwrap() {
            got.extend_from_slice(&buf);
        }
        assert_eq!(got, b"hi", "echoed through the agent");
        let mut data = SecureConn::rejoin(sr, sw).expect("clean");
        assert_eq!(data.recv().await.unwrap(), Msg::DataDone);
        // Wrong: a chunk where a start message belongs.
        let mut late = chunk_header(2).to_vec();
        late.extend_from_slice(b"hi");
        data.send_raw(&late).await.unwrap();
        let r = tokio::time::timeout(t, data.recv()).await;
        assert!(matches!(r, Ok(Err(_))), "the agent keeps it: {r:?}");
        // The control session is still there: it answers a ping.
        ctl.send(&Msg::Ping(7)).await.unwrap();
        loop {
            match tokio::time::timeout(t, ctl.recv()).await.unwrap().unwrap() {
                Msg::Pong(7) => break,
                _ => continue,
            }
        }
    });
    assert_eq!(
        received.load(Ordering::Relaxed),
        2,
        "only the first exchange"
    );
    assert_eq!(agent_stat(&agent, |s| &s.data_reused), 1);
}
