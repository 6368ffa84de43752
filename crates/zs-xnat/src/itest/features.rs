//! Tests of UDP mappings, the command API and its store, and in-process
//! mappings (same helpers as the parent module).

use std::net::UdpSocket as StdUdp;

use super::*;

/// A UDP echo service on a thread.
fn udp_echo() -> SocketAddr {
    let s = StdUdp::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                return;
            };
            let _ = s.send_to(&buf[..n], from);
        }
    });
    a
}

fn udp_service(token: &str, max_connections: usize, idle: Duration) -> ServerService {
    ServerService {
        token: token.into(),
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        idle_timeout: idle,
        max_connections,
        kind: Kind::Udp,
    }
}

fn udp_local(token: &str, local: SocketAddr, kind: Kind) -> ClientService {
    ClientService {
        token: token.into(),
        local_addr: local.to_string(),
        max_load: 100,
        proxy_protocol: false,
        kind,
    }
}

fn client_udp() -> StdUdp {
    let s = StdUdp::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Sends `msg` to `to` until the same bytes come back (UDP may drop), at most `tries` times.
fn udp_round_trip(s: &StdUdp, to: SocketAddr, msg: &[u8], tries: usize) -> bool {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..tries {
        s.send_to(msg, to).unwrap();
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            match s.recv(&mut buf) {
                Ok(n) if &buf[..n] == msg => return true,
                Ok(_) => continue, // an older answer
                Err(_) => break,
            }
        }
    }
    false
}

fn mstat(r: &Relay, service: &str, name: &str) -> u64 {
    r.mapping_stats()[service][name]
}

#[test]
fn udp_echo_with_per_source_flows_caps_and_idle_timeout() {
    let echo = udp_echo();
    let mut rc = relay_cfg(0, &[]);
    rc.services
        .insert("u".into(), udp_service("tu", 2, Duration::from_secs(1)));
    let (_rs, relay) = start_relay(rc);
    let mut ac = agent_cfg(&[relay.local_addr()], &[]);
    ac.services
        .insert("u".into(), udp_local("tu", echo, Kind::Udp));
    let (_as, agent) = start_agent(ac);
    wait_until("UDP port open", Duration::from_secs(5), || {
        relay.public_addr("u").is_some()
    });
    let pa = relay.public_addr("u").unwrap();

    // Two sources at once, each its own flow; datagram boundaries kept.
    let (a, b) = (client_udp(), client_udp());
    assert!(udp_round_trip(&a, pa, b"from a", 10));
    assert!(udp_round_trip(&b, pa, b"from b", 10));
    for size in [1usize, 1400, 9000, 60_000] {
        let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        assert!(udp_round_trip(&a, pa, &msg, 10), "{size} bytes");
    }
    assert_eq!(mstat(&relay, "u", "active"), 2, "one flow per source");
    assert_eq!(mstat(&relay, "u", "connections"), 2);
    assert_eq!(stat(&relay, "udp_flows_active"), 2);

    // A third source is beyond max_connections = 2: dropped and counted.
    let c = client_udp();
    assert!(!udp_round_trip(&c, pa, b"from c", 2));
    assert!(stat(&relay, "udp_flows_refused") >= 1);

    // A flood from a does not stop b's flow.
    let flood = std::thread::spawn(move || {
        let junk = vec![0x5a; 1000];
        for _ in 0..20_000 {
            let _ = a.send_to(&junk, pa);
        }
    });
    for i in 0..20 {
        let msg = format!("b during the flood {i}");
        assert!(udp_round_trip(&b, pa, msg.as_bytes(), 10), "{msg}");
    }
    flood.join().unwrap();
    assert!(mstat(&relay, "u", "active") <= 2);
    assert!(agent.stats().snapshot()["forwarded"] <= 3);

    // Idle flows end (idle_timeout 1 s), which frees room for c.
    wait_until("flows idle", Duration::from_secs(10), || {
        mstat(&relay, "u", "active") == 0
    });
    assert_eq!(stat(&relay, "udp_flows_active"), 0);
    assert!(udp_round_trip(&c, pa, b"c again", 10));
    assert!(mstat(&relay, "u", "bytes_up") > 60_000);
    assert!(mstat(&relay, "u", "bytes_down") > 60_000);
}

#[test]
fn a_udp_mapping_served_as_tcp_by_the_agent_is_a_counted_mismatch() {
    let echo = udp_echo();
    let mut rc = relay_cfg(0, &[]);
    rc.services
        .insert("m".into(), udp_service("tm", 4, Duration::from_secs(5)));
    let (_rs, relay) = start_relay(rc);
    let mut ac = agent_cfg(&[relay.local_addr()], &[]);
    ac.services
        .insert("m".into(), udp_local("tm", echo, Kind::Tcp));
    let (_as, agent) = start_agent(ac);
    wait_until("UDP port open", Duration::from_secs(5), || {
        relay.public_addr("m").is_some()
    });
    let s = client_udp();
    let _ = udp_round_trip(&s, relay.public_addr("m").unwrap(), b"x", 1);
    wait_until("mismatch counted", Duration::from_secs(5), || {
        agent.stats().snapshot()["kind_mismatch"] >= 1
    });
    wait_until("the flow ends as an error", Duration::from_secs(5), || {
        mstat(&relay, "m", "errors") >= 1
    });
}
