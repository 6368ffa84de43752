//! Punching in the namespace test bed: easy/easy and easy/hard succeed; hard/hard with
//! random ports is declined at once (relay only), and a forced birthday attempt on it
//! fails within its bounds.

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
    Arc::new(move |n: usize| {
        enter_and_run(&ns, move || {
            (0..n)
                .map(|_| std::net::UdpSocket::bind((ip, 0)))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .map_err(std::io::Error::other)?
    })
}

async fn side(
    bed: &Bed,
    site: &Site,
    side: Side,
    cfg: PunchConfig,
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
        fingerprint: [side as u8 + 1; 32],
        stun: SocketAddr::new(PUBLIC_IP.into(), 3478),
        punch: cfg,
        classify: Default::default(),
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
