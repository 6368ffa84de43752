//! Punching in the namespace test bed: easy/easy and easy/hard succeed; NATs with
//! regular port changes punch by prediction (easy/regular and regular/regular);
//! hard/hard with random ports is declined at once (relay only), and a forced
//! birthday attempt on it fails within its bounds.
#![cfg(target_os = "linux")] // the test bed is Linux network namespaces

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_punch::netlab::{enter_and_run, lab_or_skip, Lab, Nat, Site, PUBLIC_IP, PUBLIC_IP2};
use zs_punch::peer::{run_attempt, Attempt, AttemptResult};
use zs_punch::punch::{Mode, PunchConfig, PunchError, SocketFactory};
use zs_punch::rendezvous::{pair_key, Hub, HubConfig, Side};
use zs_punch::stun::StunServer;

struct Bed {
    lab: Lab,
    hub: SocketAddr,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn make_bed(lab: Lab, hub_cfg: HubConfig) -> Bed {
    let ns = lab.public_ns.clone();
    let (stun, tcp) = lab
        .run_in(&ns, || {
            (
                StunServer::bind_std(PUBLIC_IP.into(), Some(PUBLIC_IP2.into()), (3478, 3479)),
                std::net::TcpListener::bind((PUBLIC_IP, 7000)),
            )
        })
        .unwrap();
    let stun = StunServer::from_std(stun.unwrap()).unwrap().spawn();
    let tcp = tcp.unwrap();
    tcp.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
    let hub = Hub::new(hub_cfg);
    let h = tokio::spawn(hub.serve(tcp));
    Bed {
        lab,
        hub: SocketAddr::new(PUBLIC_IP.into(), 7000),
        _tasks: vec![stun, h],
    }
}

fn factory(ns: String, ip: IpAddr) -> Arc<SocketFactory> {
    zs_punch::netlab::socket_factory(ns, ip)
}

async fn side(
    bed: &Bed,
    site: &Site,
    side: Side,
    cfg: PunchConfig,
) -> Result<AttemptResult, PunchError> {
    side_with(bed, site, side, cfg, [side as u8 + 1; 32]).await
}

async fn side_with(
    bed: &Bed,
    site: &Site,
    side: Side,
    cfg: PunchConfig,
    fingerprint: [u8; 32],
) -> Result<AttemptResult, PunchError> {
    let (ns, ip, hub) = (site.ns.clone(), site.ip, bed.hub);
    let (udp, tcp) = bed
        .lab
        .run_in(&ns, move || {
            (
                std::net::UdpSocket::bind((ip, 0)),
                std::net::TcpStream::connect(hub),
            )
        })
        .unwrap();
    let udp = udp.unwrap();
    udp.set_nonblocking(true).unwrap();
    let tcp = tcp.unwrap();
    tcp.set_nonblocking(true).unwrap();
    let mut tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    let a = Attempt {
        side,
        pair_key: pair_key("web", "secret"),
        fingerprint,
        stun: SocketAddr::new(PUBLIC_IP.into(), 3478),
        punch: cfg,
        classify: Default::default(),
        port_mapping: None,
        igd_memory: Default::default(),
    };
    let f = factory(ns, ip);
    run_attempt(
        &a,
        tokio::net::UdpSocket::from_std(udp).unwrap(),
        &mut tcp,
        &*f,
    )
    .await
}

async fn pair(bed: &Bed, a: &Site, v: &Site, cfg: PunchConfig) -> (AttemptResult, AttemptResult) {
    let (ra, rv) = tokio::join!(
        side(bed, a, Side::Agent, cfg),
        side(bed, v, Side::Visitor, cfg)
    );
    (ra.unwrap(), rv.unwrap())
}

/// Each side's punched path reaches the other: a datagram from one arrives at the other
/// from the expected address.
fn check_path(a: &AttemptResult, v: &AttemptResult) {
    let pa = a.path.as_ref().expect("agent punched");
    let pv = v.path.as_ref().expect("visitor punched");
    pa.socket.send_to(b"hello over the hole", pa.peer).unwrap();
    pv.socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        let (n, from) = pv.socket.recv_from(&mut buf).unwrap();
        if &buf[..n] == b"hello over the hole" {
            assert_eq!(from, pv.peer);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easy_easy_punches_simultaneously() {
    let Some(mut lab) = lab_or_skip() else { return };
    let a = lab.add_site(Nat::EndpointIndependent).unwrap();
    let v = lab.add_site(Nat::EndpointIndependent).unwrap();
    let bed = make_bed(lab, HubConfig::default());
    let (ra, rv) = pair(&bed, &a, &v, PunchConfig::default()).await;
    assert_eq!(ra.plan.mode, Mode::Simultaneous);
    check_path(&ra, &rv);
    assert_eq!(ra.path.as_ref().unwrap().peer.ip(), v.public_ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easy_hard_punches_birthday_style_and_both_directions() {
    let Some(mut lab) = lab_or_skip() else { return };
    let easy = lab.add_site(Nat::EndpointIndependent).unwrap();
    let hard = lab.add_site(Nat::RandomPorts).unwrap();
    let bed = make_bed(lab, HubConfig::default());
    // The agent easy and the visitor hard, then the other way round.
    let (ra, rv) = pair(&bed, &easy, &hard, PunchConfig::default()).await;
    assert_eq!(ra.plan.mode, Mode::Birthday);
    check_path(&ra, &rv);
    let (ra, rv) = pair(&bed, &hard, &easy, PunchConfig::default()).await;
    assert_eq!(ra.plan.mode, Mode::Birthday);
    let p = ra.path.as_ref().expect("hard agent punched");
    assert!(p.elapsed < Duration::from_secs(3));
    check_path(&rv, &ra);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_hard_random_falls_back_within_bounds() {
    let Some(mut lab) = lab_or_skip() else { return };
    let a = lab.add_site(Nat::RandomPorts).unwrap();
    let v = lab.add_site(Nat::RandomPorts).unwrap();
    let bed = make_bed(lab, HubConfig::default());
    let t = Instant::now();
    let (ra, rv) = pair(&bed, &a, &v, PunchConfig::default()).await;
    assert_eq!(ra.plan.mode, Mode::RelayOnly);
    assert!(matches!(ra.path, Err(PunchError::RelayOnly)));
    assert!(matches!(rv.path, Err(PunchError::RelayOnly)));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(bed);

    // Forced birthday on hard/hard: every bound holds and it ends in time.
    let Some(mut lab) = lab_or_skip() else { return };
    let a = lab.add_site(Nat::RandomPorts).unwrap();
    let v = lab.add_site(Nat::RandomPorts).unwrap();
    let bed = make_bed(
        lab,
        HubConfig {
            force_mode: Some(Mode::Birthday),
            ..Default::default()
        },
    );
    let cfg = PunchConfig {
        attempt_time: Duration::from_millis(1500),
        max_probes: 512,
        max_sockets: 64,
        ..Default::default()
    };
    let (ra, rv) = pair(&bed, &a, &v, cfg).await;
    for r in [&ra, &rv] {
        match &r.path {
            Err(PunchError::Timeout {
                probes_sent,
                sockets,
                elapsed,
                ..
            }) => {
                assert!(*probes_sent <= 512);
                assert!(*sockets <= 64);
                assert!(*elapsed < Duration::from_millis(2500), "{elapsed:?}");
            }
            other => panic!("hard/hard birthday should fail: {other:?}"),
        }
    }
}

/// A NAT whose ports change regularly (`Nat::RegularPorts`: every new UDP flow gets
/// the next port of a counter): the classifier sees delta +1, and the predicted-port
/// modes get a direct path: easy/regular by `Predict` (the regular side primes its
/// next mapping, the easy side probes the predicted ports), regular/regular by
/// `PredictBoth` (both prime and probe their k-th predicted ports). The paths carry
/// datagrams both ways; the regular side is reached on a port it never showed STUN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regular_port_nats_punch_by_prediction() {
    use zs_punch::stun::PortPattern;
    let Some(mut lab) = lab_or_skip() else { return };
    let easy = lab.add_site(Nat::EndpointIndependent).unwrap();
    let reg_a = lab.add_site(Nat::RegularPorts).unwrap();
    let reg_v = lab.add_site(Nat::RegularPorts).unwrap();
    let bed = make_bed(lab, HubConfig::default());
    // easy (agent) / regular (visitor).
    let (ra, rv) = pair(&bed, &easy, &reg_v, PunchConfig::default()).await;
    assert_eq!(rv.nat.ports, PortPattern::Regular(1), "{:?}", rv.nat);
    assert_eq!(ra.plan.mode, Mode::Predict);
    check_path(&ra, &rv);
    check_path(&rv, &ra);
    let seen: Vec<u16> = rv.nat.samples.iter().map(|s| s.1.port()).collect();
    let reached = ra.path.as_ref().unwrap().peer;
    assert_eq!(reached.ip(), reg_v.public_ip);
    assert!(
        !seen.contains(&reached.port()),
        "reached {reached} on a predicted port, STUN saw {seen:?}"
    );
    // regular (agent) / regular (visitor): both predicted.
    let (ra, rv) = pair(&bed, &reg_a, &reg_v, PunchConfig::default()).await;
    assert_eq!(ra.nat.ports, PortPattern::Regular(1), "{:?}", ra.nat);
    assert_eq!(ra.plan.mode, Mode::PredictBoth);
    check_path(&ra, &rv);
    check_path(&rv, &ra);
}

/// Step 4 end to end: a visitor's local TCP port (in the visitor's namespace, behind a
/// random-port NAT) reaches the agent's TCP service (in the agent's namespace, behind an
/// endpoint-independent NAT) over QUIC on the punched socket, keys pinned both ways;
/// three concurrent connections, every byte checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_reaches_the_agent_service_over_punched_quic() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use zs_punch::quic::{self, Identity, QuicLimits};
    let Some(mut lab) = lab_or_skip() else { return };
    let a = lab.add_site(Nat::EndpointIndependent).unwrap();
    let v = lab.add_site(Nat::RandomPorts).unwrap();
    let bed = make_bed(lab, HubConfig::default());
    let (ai, vi) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (ra, rv) = tokio::join!(
        side_with(
            &bed,
            &a,
            Side::Agent,
            PunchConfig::default(),
            ai.fingerprint()
        ),
        side_with(
            &bed,
            &v,
            Side::Visitor,
            PunchConfig::default(),
            vi.fingerprint()
        )
    );
    let (ra, rv) = (ra.unwrap(), rv.unwrap());
    assert_eq!(ra.plan.peer_fingerprint, vi.fingerprint());
    let pa = ra.path.unwrap();
    let pv = rv.path.unwrap();

    // The agent's service: in its namespace, answers each byte + 1.
    let aip = a.ip;
    let svc = bed
        .lab
        .run_in(&a.ns, move || std::net::TcpListener::bind((aip, 0)))
        .unwrap()
        .unwrap();
    let svc_addr = svc.local_addr().unwrap();
    svc.set_nonblocking(true).unwrap();
    let svc = tokio::net::TcpListener::from_std(svc).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = svc.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    for b in &mut buf[..n] {
                        *b = b.wrapping_add(1);
                    }
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let ans = a.ns.clone();
    let connector: quic::Connector = Arc::new(move || {
        let ns = ans.clone();
        Box::pin(async move {
            let s = enter_and_run(&ns, move || std::net::TcpStream::connect(svc_addr))
                .map_err(std::io::Error::other)??;
            s.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(s)
        })
    });
    let l = QuicLimits::default();
    let vf = vi.fingerprint();
    let af = ai.fingerprint();
    let agent = tokio::spawn(async move {
        let (ep, conn) = quic::accept(pa.socket, &ai, vf, l).await.unwrap();
        quic::serve_agent(conn, connector).await;
        drop(ep);
    });
    let (_vep, vconn) = quic::connect(pv.socket, pv.peer, &vi, af, l).await.unwrap();
    let local = bed
        .lab
        .run_in(&v.ns, || std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let laddr = local.local_addr().unwrap();
    local.set_nonblocking(true).unwrap();
    tokio::spawn(quic::serve_visitor(
        tokio::net::TcpListener::from_std(local).unwrap(),
        vconn.clone(),
    ));
    let mut clients = Vec::new();
    for c in 0..3u32 {
        let vns = v.ns.clone();
        clients.push(tokio::spawn(async move {
            let s = enter_and_run(&vns, move || std::net::TcpStream::connect(laddr))
                .unwrap()
                .unwrap();
            s.set_nonblocking(true).unwrap();
            let mut s = tokio::net::TcpStream::from_std(s).unwrap();
            let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + c) as u8).collect();
            let (mut r, mut w) = s.split();
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let (_, got) = tokio::join!(send, r.read_to_end(&mut back));
            got.unwrap();
            let want: Vec<u8> = data.iter().map(|b| b.wrapping_add(1)).collect();
            assert!(back == want, "connection {c}: {} bytes back", back.len());
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    vconn.close(0u32.into(), b"done");
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("agent ends when the visitor closes")
        .unwrap();
}
