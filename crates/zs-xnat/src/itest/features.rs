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
    assert_eq!(
        stat(&relay, "udp_queued_bytes"),
        0,
        "every queued byte accounted for"
    );
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

const ADMIN: &str = "admin-token-1234";

fn admin_relay_cfg(port: u16, store: &Path, file: &[(&str, &str, u16)]) -> ServerConfig {
    let mut c = relay_cfg(port, file);
    c.admin.admin_token = Some(ADMIN.into());
    c.admin.store_dir = store.to_path_buf();
    c
}

/// Starts a relay on a store a relay being shut down may still hold (its
/// runtime drops its tasks in the background): retries while it is locked.
fn restart_relay(cfg: ServerConfig) -> (Side, Relay) {
    let t = Instant::now();
    loop {
        let side = Side::new();
        let r = side.rt().block_on(Relay::bind_with_identity(
            cfg.clone(),
            ServerIdentity::from_seed(&SEED).unwrap(),
        ));
        match r {
            Ok(relay) => {
                side.rt().spawn(relay.clone().run());
                return (side, relay);
            }
            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                assert!(
                    e.to_string().contains("locked") || e.kind() == std::io::ErrorKind::AddrInUse,
                    "{e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("relay does not restart: {e}"),
        }
    }
}

fn admin(side: &Side, relay: &Relay, token: &str) -> std::io::Result<crate::AdminClient> {
    side.rt().block_on(crate::AdminClient::connect(
        &relay.local_addr().to_string(),
        relay.fingerprint(),
        token,
        Duration::from_secs(3),
    ))
}

fn spec(name: &str, token: &str, udp: bool) -> proto::MappingSpec {
    proto::MappingSpec {
        service: name.into(),
        token: token.into(),
        bind_addr: "127.0.0.1:0".parse().unwrap(),
        udp,
        idle_timeout_s: 0,
        max_connections: 0,
    }
}

#[test]
fn mappings_added_through_the_command_api_are_served_stored_and_back_after_a_restart() {
    let echo = echo_server();
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let (rs, relay) = start_relay(admin_relay_cfg(port, store.path(), &[("f", "tf", 0)]));
    let mut api = admin(&rs, &relay, ADMIN).unwrap();
    let msg = rs.rt().block_on(api.add(spec("rt", "trt", false))).unwrap();
    assert!(msg.contains("added"), "{msg}");
    // Same name again, and a file mapping's removal, are refused with a reason.
    let e = rs
        .rt()
        .block_on(api.add(spec("rt", "x", false)))
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    let e = rs.rt().block_on(api.remove("f")).unwrap_err();
    assert!(e.to_string().contains("config file"), "{e}");
    let e = rs.rt().block_on(api.remove("nope")).unwrap_err();
    assert!(e.to_string().contains("no mapping"), "{e}");

    let (_as, agent) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[("rt", "trt", echo, 10), ("f", "tf", echo, 10)],
    ));
    wait_until("runtime mapping served", Duration::from_secs(5), || {
        relay.public_addr("rt").is_some()
    });
    assert!(serves(relay.public_addr("rt").unwrap()));
    let list = rs.rt().block_on(api.list()).unwrap();
    let names: Vec<_> = list.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["f", "rt"]);
    assert_eq!(list[1]["source"], "runtime");
    assert_eq!(list[0]["source"], "file");
    assert!(list[1]["public_addr"].is_string());
    assert!(list[1].get("token").is_none(), "tokens are never listed");

    // A file reload keeps the runtime mapping.
    relay.reload(relay_cfg(port, &[("f", "tf", 0)]).services);
    assert!(relay.services().contains_key("rt"));
    assert!(serves(relay.public_addr("rt").unwrap()));

    // The relay restarts on the same store: the runtime mapping is back and
    // the agent (redialing) serves it again.
    drop(api);
    drop(relay);
    drop(rs);
    let (rs, relay) = restart_relay(admin_relay_cfg(port, store.path(), &[("f", "tf", 0)]));
    assert!(
        relay.services().contains_key("rt"),
        "restored from the store"
    );
    wait_until(
        "restored mapping served again",
        Duration::from_secs(10),
        || relay.public_addr("rt").is_some_and(serves),
    );

    // Removing it closes its port, tells the agent, and it stays removed.
    let mut api = admin(&rs, &relay, ADMIN).unwrap();
    rs.rt().block_on(api.remove("rt")).unwrap();
    assert!(relay.public_addr("rt").is_none());
    assert!(
        serves(relay.public_addr("f").unwrap()),
        "the other mapping carries on"
    );
    wait_until("agent told", Duration::from_secs(5), || {
        agent.stats().snapshot()["refused"] >= 1
    });
    assert_eq!(stat(&relay, "admin_changes"), 1);
    drop(api);
    drop(relay);
    drop(rs);
    let (_rs, relay) = restart_relay(admin_relay_cfg(port, store.path(), &[("f", "tf", 0)]));
    assert!(!relay.services().contains_key("rt"));
}

#[test]
fn the_command_api_refuses_a_wrong_token_and_is_off_without_admin_token() {
    let store = tempfile::tempdir().unwrap();
    let (rs, relay) = start_relay(admin_relay_cfg(0, store.path(), &[]));
    let e = admin(&rs, &relay, "wrong-token-000").err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("wrong admin token"), "{e}");
    assert_eq!(stat(&relay, "admin_refused"), 1);
    assert_eq!(stat(&relay, "admin_sessions"), 0);
    // Nothing was added by the refused session.
    assert!(relay.services().is_empty());
    // A request before the proof ends the connection.
    let mut c = rs
        .rt()
        .block_on(async {
            let tcp = tokio::net::TcpStream::connect(relay.local_addr()).await?;
            let crypto = std::sync::Arc::new(zs_crypto::session::ClientConfig::pinned(
                relay.fingerprint(),
            ));
            SecureConn::connect(tcp, crypto, Duration::from_secs(2)).await
        })
        .unwrap();
    rs.rt().block_on(async {
        c.send(&Msg::AdminHello {
            version: proto::VERSION,
        })
        .await
        .unwrap();
        assert!(matches!(c.recv().await.unwrap(), Msg::Challenge { .. }));
        c.send(&Msg::AdminAdd {
            mapping: spec("sneak", "t", false),
        })
        .await
        .unwrap();
        assert!(c.recv().await.is_err(), "closed");
    });
    assert!(relay.services().is_empty());
    assert_eq!(stat(&relay, "admin_refused"), 2);

    // Bad requests of an authenticated session are answered, not obeyed.
    let mut api = admin(&rs, &relay, ADMIN).unwrap();
    let e = rs.rt().block_on(api.add(spec("x", "", false))).unwrap_err();
    assert!(e.to_string().contains("non-empty token"), "{e}");
    assert!(relay.services().is_empty());
    drop(api);

    let (rs2, off) = start_relay(relay_cfg(0, &[]));
    let e = admin(&rs2, &off, ADMIN).err().unwrap();
    assert!(e.to_string().contains("command API is off"), "{e}");
    assert_eq!(stat(&off, "admin_refused"), 1);
}

#[test]
fn runtime_mappings_and_admin_sessions_are_capped() {
    let store = tempfile::tempdir().unwrap();
    let mut cfg = admin_relay_cfg(0, store.path(), &[]);
    cfg.admin.max_runtime_mappings = 2;
    let (rs, relay) = start_relay(cfg);
    let mut api = admin(&rs, &relay, ADMIN).unwrap();
    for n in ["a", "b"] {
        rs.rt().block_on(api.add(spec(n, "t", false))).unwrap();
    }
    let e = rs
        .rt()
        .block_on(api.add(spec("c", "t", false)))
        .unwrap_err();
    assert!(e.to_string().contains("max_runtime_mappings"), "{e}");
    rs.rt().block_on(api.remove("a")).unwrap();
    rs.rt().block_on(api.add(spec("c", "t", true))).unwrap();
    // Four sessions at once are allowed; a fifth is refused and counted.
    let _more: Vec<_> = (0..3).map(|_| admin(&rs, &relay, ADMIN).unwrap()).collect();
    assert!(admin(&rs, &relay, ADMIN).is_err());
    assert_eq!(stat(&relay, "admin_refused"), 1);
    let list = rs.rt().block_on(api.list()).unwrap();
    let names: Vec<_> = list.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(list[1]["type"], "udp");
}

#[test]
fn status_reports_per_mapping_statistics() {
    let echo = echo_server();
    let store = tempfile::tempdir().unwrap();
    let (rs, relay) = start_relay(admin_relay_cfg(
        0,
        store.path(),
        &[("a", "ta", 0), ("idle", "ti", 0)],
    ));
    let (_as, _agent) = start_agent(agent_cfg(&[relay.local_addr()], &[("a", "ta", echo, 10)]));
    wait_until("served", Duration::from_secs(5), || {
        relay.public_addr("a").is_some()
    });
    let pa = relay.public_addr("a").unwrap();
    for _ in 0..3 {
        assert!(serves(pa));
    }
    let mut api = admin(&rs, &relay, ADMIN).unwrap();
    wait_until("connections closed", Duration::from_secs(5), || {
        mstat(&relay, "a", "active") == 0
    });
    let st = rs.rt().block_on(api.stats()).unwrap();
    let a = st.iter().find(|m| m["name"] == "a").unwrap();
    assert_eq!(a["connections"], 3);
    assert_eq!(a["active"], 0);
    assert_eq!(a["bytes_up"], 12, "3 x \"ping\"");
    assert_eq!(a["bytes_down"], 12);
    assert_eq!(a["agents"], 1);
    assert_eq!(a["errors"], 0);
    assert_eq!(a["listening"], true);
    let idle = st.iter().find(|m| m["name"] == "idle").unwrap();
    assert_eq!(idle["agents"], 0);
    assert_eq!(idle["listening"], false);
    let r = &st.last().unwrap()["relay"];
    assert_eq!(r["visitors_total"], 3);
    assert_eq!(r["agents_connected"], 1);
}

#[test]
fn an_agent_that_never_reads_is_dropped_as_slow_and_others_carry_on() {
    let echo = echo_server();
    let (_rs, relay) = start_relay(relay_cfg(0, &[("svc", "token", 0), ("ok", "tok", 0)]));
    let (_as, _agent) = start_agent(agent_cfg(&[relay.local_addr()], &[("ok", "tok", echo, 10)]));
    wait_until("good mapping served", Duration::from_secs(5), || {
        relay.public_addr("ok").is_some()
    });
    let side = Side::new();
    let addr = relay.local_addr();
    let sent = side.rt().block_on(async {
        let (mut c, nonce) = hand_agent(addr, "deaf").await;
        let p = proto::proof("token", &nonce, &c.channel_binding(), "svc");
        hand_register(&mut c, "svc", p).await;
        // Ping without ever reading the answers: the relay's writes back up,
        // its bounded control queue fills, and it must let go of us.
        let mut batch = Vec::new();
        for i in 0..2000u64 {
            Msg::Ping(i).encode(&mut batch);
        }
        let mut sent = 0u64;
        while sent < 4_000_000 {
            let w = tokio::time::timeout(Duration::from_secs(2), c.send_raw(&batch)).await;
            if !matches!(w, Ok(Ok(()))) {
                break;
            }
            sent += 2000;
        }
        sent
    });
    wait_until("deaf agent dropped", Duration::from_secs(10), || {
        stat(&relay, "slow_agents") == 1
    });
    assert!(
        sent < 4_000_000,
        "the relay never stopped reading a deaf agent"
    );
    wait_until("its port closed", Duration::from_secs(5), || {
        relay.public_addr("svc").is_none()
    });
    assert!(
        serves(relay.public_addr("ok").unwrap()),
        "other mappings carry on"
    );
    assert_eq!(stat(&relay, "agents_connected"), 1);
}

#[test]
fn a_mapping_that_ends_in_an_in_process_zs_core_server_answers_a_real_client() {
    use std::sync::Arc;
    use zs_core::{Client, Options, Registry, Server};
    use zs_crypto::{ClientConfig, ServerConfig, ZsSecurity};

    let (_rs, relay) = start_relay(relay_cfg(0, &[("vs", "tv", 0), ("tcp", "tt", 0)]));
    let echo = echo_server();
    // The in-process server: a zs-core Server on the agent's virtual backend.
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = zs_crypto::ServerIdentity::generate(&rng).unwrap();
    let fp = id.fingerprint();
    let server_side: Arc<dyn zs_crypto::SecurityProvider> = Arc::new(ZsSecurity::new(
        None,
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ));
    let vb = crate::VirtualBackend::new();
    let vaddr: SocketAddr = "10.255.0.1:7".parse().unwrap();
    let mut reg = Registry::new();
    reg.console("whoami", |peer, text| {
        Ok(format!(
            "{text} from {}",
            peer.addr().map(|a| a.ip().to_string()).unwrap_or_default()
        ))
    });
    reg.console("count", |peer, _| {
        Ok(peer.with_state(|n: &mut u32| {
            *n += 1;
            n.to_string()
        }))
    });
    // zs-core on the security layer over the virtual backend (the layer's
    // send bound is the virtual connections' own).
    let io = zs_io::Config {
        send_queue_limit: crate::virt::SEND_QUEUE_LIMIT,
        ..Default::default()
    };
    let secure_vb = zs_secure::compose::secure_with(
        Arc::new(vb.clone()),
        server_side,
        &io,
        zs_secure::compose::Handshakes::default(),
    );
    let server = Server::start(secure_vb, reg, Options::default(), vaddr).unwrap();
    assert_eq!(vb.listening(), [vaddr]);

    let agent_side = Side::new();
    let agent = Agent::new(agent_cfg(
        &[relay.local_addr()],
        &[
            ("vs", "tv", "127.0.0.1:9".parse().unwrap(), 10),
            ("tcp", "tt", echo, 10),
        ],
    ));
    agent.serve_in_process("vs", vb.clone(), vaddr);
    agent_side.rt().spawn(agent.clone().run());
    wait_until("in-process mapping served", Duration::from_secs(5), || {
        relay.public_addr("vs").is_some()
    });
    let pa = relay.public_addr("vs").unwrap();

    // Real zs-core clients (their own tokio backend, the server key pinned)
    // reach the in-process server through the relay.
    let client_side: Arc<dyn zs_crypto::SecurityProvider> = Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(fp))),
        None,
    ));
    let backend = zs_secure::compose::secure(
        Arc::new(
            zs_io_tokio::TokioBackend::new(zs_io::Config {
                loops: 1,
                ..Default::default()
            })
            .unwrap(),
        ),
        client_side,
    );
    let c1 = Client::connect(backend.clone(), Registry::new(), Options::client(), pa).unwrap();
    let c2 = Client::connect(backend.clone(), Registry::new(), Options::client(), pa).unwrap();
    let rt = agent_side.rt();
    assert_eq!(
        rt.block_on(c1.call("whoami", "hi")).unwrap(),
        "hi from 127.0.0.1"
    );
    for want in ["1", "2", "3"] {
        assert_eq!(rt.block_on(c1.call("count", "")).unwrap(), want);
    }
    assert_eq!(
        rt.block_on(c2.call("count", "")).unwrap(),
        "1",
        "its own connection state"
    );
    assert_eq!(server.connection_count(), 2);
    // A big answer crosses in many records.
    let big = "x".repeat(300_000);
    assert_eq!(
        rt.block_on(c2.call("whoami", &big)).unwrap().len(),
        300_000 + 15
    );
    assert!(
        serves(relay.public_addr("tcp").unwrap()),
        "a TCP mapping beside it"
    );
    drop(c1);
    wait_until(
        "the server sees the client leave",
        Duration::from_secs(5),
        || server.connection_count() == 1,
    );
    assert_eq!(agent.stats().snapshot()["local_failures"], 0);
    // c1's bytes are counted once its connection ended.
    assert!(agent.stats().snapshot()["bytes_down"] > 0);
    drop(c2);
    wait_until("c2's bytes counted", Duration::from_secs(5), || {
        agent.stats().snapshot()["bytes_down"] > 300_000
    });
    server.shutdown();
}

#[test]
fn a_reload_that_turns_a_tcp_mapping_into_udp_rebinds_it() {
    let (echo, uecho) = (echo_server(), udp_echo());
    let (_rs, relay) = start_relay(relay_cfg(0, &[("m", "tm", 0), ("other", "to", 0)]));
    let (_as, agent) = start_agent(agent_cfg(
        &[relay.local_addr()],
        &[("m", "tm", echo, 10), ("other", "to", echo, 10)],
    ));
    wait_until("tcp served", Duration::from_secs(5), || {
        relay.public_addr("m").is_some_and(serves)
    });
    let other = relay.public_addr("other").unwrap();
    let mut carried = StdStream::connect(other).unwrap();
    carried
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(echo_once(&mut carried, b"before"));

    let mut services = relay.services();
    services.insert("m".into(), udp_service("tm", 8, Duration::from_secs(5)));
    let r = relay.reload(services);
    assert_eq!(r.changed, ["m"]);
    let mut local = agent.services();
    local.insert("m".into(), udp_local("tm", uecho, Kind::Udp));
    agent.reload(local);
    let s = client_udp();
    wait_until(
        "udp served after the reload",
        Duration::from_secs(10),
        || {
            relay
                .public_addr("m")
                .is_some_and(|a| udp_round_trip(&s, a, b"now udp", 1))
        },
    );
    assert!(
        echo_once(&mut carried, b"after"),
        "the other mapping's connection carried on"
    );
}

#[test]
fn a_config_file_that_takes_over_a_runtime_name_wins_and_the_stored_one_goes() {
    let store = tempfile::tempdir().unwrap();
    let (rs, relay) = start_relay(admin_relay_cfg(0, store.path(), &[]));
    let mut api = admin(&rs, &relay, ADMIN).unwrap();
    rs.rt()
        .block_on(api.add(spec("x", "runtime-token", false)))
        .unwrap();
    rs.rt().block_on(api.add(spec("y", "ty", false))).unwrap();
    // The file now defines "x" too.
    let r = relay.reload(relay_cfg(0, &[("x", "file-token", 0)]).services);
    assert_eq!(r.changed, ["x"]);
    assert_eq!(relay.services()["x"].token, "file-token");
    let list = rs.rt().block_on(api.list()).unwrap();
    let src: Vec<_> = list
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["source"].as_str().unwrap()))
        .collect();
    assert_eq!(src, [("x", "file"), ("y", "runtime")]);
    drop(api);
    drop(relay);
    drop(rs);
    let (_st, stored) = {
        // Wait until the old relay let go of the store, then read it directly.
        let t = Instant::now();
        loop {
            match crate::store::MappingStore::open(store.path()) {
                Ok(x) => break x,
                Err(e) if t.elapsed() < Duration::from_secs(10) => {
                    assert!(e.to_string().contains("locked"), "{e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(stored.keys().collect::<Vec<_>>(), ["y"]);
}
