//! STUN classification in the namespace test bed, against our server and coturn.
#![cfg(target_os = "linux")] // the test bed is Linux network namespaces

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use zs_punch::netlab::{lab_or_skip, Lab, Nat, PUBLIC_IP, PUBLIC_IP2};
use zs_punch::stun::{self, ClassifyOptions, Filtering, Mapping, PortPattern, StunServer};

fn udp_in(lab: &Lab, ns: &str, ip: IpAddr) -> tokio::net::UdpSocket {
    let s = lab
        .run_in(ns, move || std::net::UdpSocket::bind((ip, 0)))
        .unwrap()
        .unwrap();
    s.set_nonblocking(true).unwrap();
    tokio::net::UdpSocket::from_std(s).unwrap()
}

fn start_stun(lab: &Lab, ports: (u16, u16)) -> tokio::task::JoinHandle<()> {
    let socks = lab
        .run_in(&lab.public_ns, move || {
            StunServer::bind_std(PUBLIC_IP.into(), Some(PUBLIC_IP2.into()), ports)
        })
        .unwrap()
        .unwrap();
    StunServer::from_std(socks).unwrap().spawn()
}

/// Our server, three sites: a public host, `masquerade` and `masquerade fully-random`.
/// Each is classified right (mapping, port pattern, filtering), and the lab leaves no
/// namespace behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifies_both_nftables_nat_kinds_and_a_public_host() {
    let Some(mut lab) = lab_or_skip() else { return };
    let public = lab.add_site(Nat::None).unwrap();
    let easy = lab.add_site(Nat::EndpointIndependent).unwrap();
    let hard = lab.add_site(Nat::RandomPorts).unwrap();
    let _srv = start_stun(&lab, (3478, 3479));
    let server = SocketAddr::new(PUBLIC_IP.into(), 3478);
    let opts = ClassifyOptions::default();

    let s = udp_in(&lab, &public.ns, public.ip);
    let r = stun::classify(&s, server, opts).await.unwrap();
    assert_eq!(r.mapping, Mapping::Public, "{r:?}");

    let s = udp_in(&lab, &easy.ns, easy.ip);
    let r = stun::classify(&s, server, opts).await.unwrap();
    assert_eq!(r.mapping, Mapping::EndpointIndependent, "{r:?}");
    assert_eq!(r.ports, PortPattern::Stable);
    assert_eq!(r.mapped().ip(), easy.public_ip);
    // Linux conntrack filters by address and port (a fresh socket: see `stun::filtering`).
    let f = udp_in(&lab, &easy.ns, easy.ip);
    let short = stun::ClientTiming {
        rto: Duration::from_millis(150),
        tries: 2,
    };
    let got = stun::filtering(&f, server, short).await.unwrap();
    assert_eq!(got, Filtering::AddressAndPortDependent);
    let p = udp_in(&lab, &public.ns, public.ip);
    assert_eq!(
        stun::filtering(&p, server, short).await.unwrap(),
        Filtering::EndpointIndependent
    );

    let s = udp_in(&lab, &hard.ns, hard.ip);
    let r = stun::classify(&s, server, opts).await.unwrap();
    assert_eq!(r.mapping, Mapping::AddressAndPortDependent, "{r:?}");
    assert_eq!(r.ports, PortPattern::Random, "{r:?}");
    assert!(!r.mapping.is_easy());
    let names = lab.namespaces().to_vec();
    drop(lab);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for n in names {
        assert!(!list.contains(&n), "namespace {n} left behind");
    }
}

/// coturn (an independent RFC 5780 server) classifies the same NATs the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_agrees() {
    let Some(mut lab) = lab_or_skip() else { return };
    let Some(turn) = which("turnserver") else {
        if std::env::var_os("CI").is_some() {
            panic!("turnserver (coturn) not installed under CI");
        }
        println!("skipped: turnserver (coturn) not installed");
        return;
    };
    let easy = lab.add_site(Nat::EndpointIndependent).unwrap();
    let hard = lab.add_site(Nat::RandomPorts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("turnserver.conf");
    std::fs::write(
        &conf,
        format!(
            "listening-ip={PUBLIC_IP}\nlistening-ip={PUBLIC_IP2}\nlistening-port=4478\n\
             alt-listening-port=4479\nstun-only\nno-tls\nno-dtls\nno-cli\n\
             pidfile={}\nuserdb={}\nlog-file=stdout\nsimple-log\n",
            dir.path().join("turn.pid").display(),
            dir.path().join("turndb").display()
        ),
    )
    .unwrap();
    let ns = lab.public_ns.clone();
    lab.spawn(&ns, &turn, &["-c", conf.to_str().unwrap()])
        .unwrap();
    let server = SocketAddr::new(PUBLIC_IP.into(), 4478);
    // Wait (bounded) for coturn to answer.
    let probe = udp_in(&lab, &easy.ns, easy.ip);
    let mut up = false;
    for _ in 0..50 {
        let t = stun::ClientTiming {
            rto: Duration::from_millis(100),
            tries: 1,
        };
        if let Ok(Some(b)) = stun::binding(&probe, server, false, false, t).await {
            assert!(b.other.is_some(), "coturn without OTHER-ADDRESS: {b:?}");
            up = true;
            break;
        }
    }
    assert!(up, "coturn did not answer within 5 s");
    let r = stun::classify(&probe, server, ClassifyOptions::default())
        .await
        .unwrap();
    assert_eq!(r.mapping, Mapping::EndpointIndependent, "{r:?}");
    let s = udp_in(&lab, &hard.ns, hard.ip);
    let r = stun::classify(&s, server, ClassifyOptions::default())
        .await
        .unwrap();
    assert_eq!(r.mapping, Mapping::AddressAndPortDependent, "{r:?}");
}

fn which(p: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|f| f.is_file())
        .map(|f| f.display().to_string())
}
