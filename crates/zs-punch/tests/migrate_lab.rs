//! One live connection moved between paths in the namespace test bed: it starts on a
//! relay (a TCP forwarder in the public namespace standing in for a zs-xnat relay data
//! connection), moves to QUIC on a punched path mid-transfer, loses that path (the QUIC
//! connection is closed with bytes in flight) and carries on over the relay again.
//! The application sees one unbroken byte stream each way: every byte once, in order.
#![cfg(target_os = "linux")] // the test bed is Linux network namespaces

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use zs_punch::migrate::{self, ConnConfig};
use zs_punch::netlab::{enter_and_run, lab_or_skip, Lab, Nat, Site, PUBLIC_IP, PUBLIC_IP2};
use zs_punch::peer::{run_attempt, Attempt};
use zs_punch::punch::{PunchConfig, SocketFactory};
use zs_punch::quic::{self, Identity, QuicLimits};
use zs_punch::rendezvous::{pair_key, Hub, HubConfig, Side};
use zs_punch::stun::StunServer;

type BoxPath = Box<dyn PathObj>;
trait PathObj: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PathObj for T {}

fn tcp_from(ns: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let s = enter_and_run(ns, move || std::net::TcpStream::connect(to))
        .unwrap()
        .unwrap();
    s.set_nonblocking(true).unwrap();
    tokio::net::TcpStream::from_std(s).unwrap()
}

fn factory(ns: String, ip: IpAddr) -> Arc<SocketFactory> {
    zs_punch::netlab::socket_factory(ns, ip)
}

async fn attempt(lab: &Lab, site: &Site, side: Side, fp: [u8; 32]) -> zs_punch::punch::Punched {
    let hub = SocketAddr::new(PUBLIC_IP.into(), 7000);
    let mut tcp = tcp_from(&site.ns, hub);
    let ip = site.ip;
    let udp = lab
        .run_in(&site.ns, move || std::net::UdpSocket::bind((ip, 0)))
        .unwrap()
        .unwrap();
    udp.set_nonblocking(true).unwrap();
    let a = Attempt {
        side,
        pair_key: pair_key("svc", "t"),
        fingerprint: fp,
        stun: SocketAddr::new(PUBLIC_IP.into(), 3478),
        punch: PunchConfig::default(),
        classify: Default::default(),
        port_mapping: None,
        igd_memory: Default::default(),
    };
    let f = factory(site.ns.clone(), ip);
    run_attempt(
        &a,
        tokio::net::UdpSocket::from_std(udp).unwrap(),
        &mut tcp,
        &*f,
    )
    .await
    .unwrap()
    .path
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_direct_and_back_without_loss() {
    let Some(mut lab) = lab_or_skip() else { return };
    let a = lab.add_site(Nat::EndpointIndependent).unwrap();
    let v = lab.add_site(Nat::RandomPorts).unwrap();
    let ns = lab.public_ns.clone();
    let (stun, hub_l, relay_l) = lab
        .run_in(&ns, || {
            (
                StunServer::bind_std(PUBLIC_IP.into(), Some(PUBLIC_IP2.into()), (3478, 3479)),
                std::net::TcpListener::bind((PUBLIC_IP, 7000)),
                std::net::TcpListener::bind((PUBLIC_IP, 7100)),
            )
        })
        .unwrap();
    let _stun = StunServer::from_std(stun.unwrap()).unwrap().spawn();
    let hub_l = hub_l.unwrap();
    hub_l.set_nonblocking(true).unwrap();
    tokio::spawn(
        Hub::new(HubConfig::default()).serve(tokio::net::TcpListener::from_std(hub_l).unwrap()),
    );
    // The stand-in relay: pairs connections two by two and forwards bytes.
    let relay_l = relay_l.unwrap();
    relay_l.set_nonblocking(true).unwrap();
    let relay_l = tokio::net::TcpListener::from_std(relay_l).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut x, _) = relay_l.accept().await.unwrap();
            let (mut y, _) = relay_l.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut x, &mut y).await;
            });
        }
    });
    let relay = SocketAddr::new(PUBLIC_IP.into(), 7100);
    let relay_pair = |a: &Site, v: &Site| {
        // Agent first, then visitor: the forwarder pairs them in accept order.
        let x = tcp_from(&a.ns, relay);
        std::thread::sleep(Duration::from_millis(20));
        let y = tcp_from(&v.ns, relay);
        (x, y)
    };

    let (atx, arx) = mpsc::channel::<BoxPath>(4);
    let (vtx, vrx) = mpsc::channel::<BoxPath>(4);
    let (x, y) = relay_pair(&a, &v);
    atx.send(Box::new(x)).await.unwrap();
    vtx.send(Box::new(y)).await.unwrap();
    let (a_app, a_user) = tokio::io::duplex(64 * 1024);
    let (v_app, mut v_user) = tokio::io::duplex(64 * 1024);
    let cfg = ConnConfig::default();
    let ta = tokio::spawn(migrate::run(a_app, arx, cfg));
    let tv = tokio::spawn(migrate::run(v_app, vrx, cfg));
    // The agent's application: answers every byte + 1.
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(a_user);
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for b in &mut buf[..n] {
                *b = b.wrapping_add(1);
            }
            w.write_all(&buf[..n]).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let total = 3_000_000usize;
    let data: Vec<u8> = (0..total).map(|i| (i * 13 + i / 977) as u8).collect();
    let (mut vr, mut vw) = tokio::io::split(&mut v_user);
    let reader = async {
        let mut back = Vec::new();
        vr.read_to_end(&mut back).await.unwrap();
        back
    };
    let (ai, vi) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let writer = async {
        let mut direct = None;
        for (i, chunk) in data.chunks(50_000).enumerate() {
            vw.write_all(chunk).await.unwrap();
            if i == 10 {
                // Upgrade: punch, QUIC, one stream as the next path of both ends.
                let (pa, pv) = tokio::join!(
                    attempt(&lab, &a, Side::Agent, ai.fingerprint()),
                    attempt(&lab, &v, Side::Visitor, vi.fingerprint())
                );
                let l = QuicLimits::default();
                let (af, vf) = (ai.fingerprint(), vi.fingerprint());
                let acc = quic::accept(pa.socket, &ai, vf, l);
                let con = quic::connect(pv.socket, pv.peer, &vi, af, l);
                let (acc, con) = tokio::join!(acc, con);
                let ((aep, ac), (vep, vc)) = (acc.unwrap(), con.unwrap());
                let (s, r) = vc.open_bi().await.unwrap();
                vtx.send(Box::new(tokio::io::join(r, s))).await.unwrap();
                let (s, r) = ac.accept_bi().await.unwrap();
                atx.send(Box::new(tokio::io::join(r, s))).await.unwrap();
                direct = Some((aep, vep, ac, vc));
            }
            if i == 30 {
                // The direct path dies with bytes in flight; the relay takes over again.
                let (aep, vep, ac, vc) = direct.take().expect("direct path up");
                vc.close(0u32.into(), b"killed");
                ac.close(0u32.into(), b"killed");
                drop((aep, vep));
                let (x, y) = relay_pair(&a, &v);
                atx.send(Box::new(x)).await.unwrap();
                vtx.send(Box::new(y)).await.unwrap();
            }
        }
        vw.shutdown().await.unwrap();
    };
    let (back, ()) = tokio::time::timeout(Duration::from_secs(40), async {
        tokio::join!(reader, writer)
    })
    .await
    .expect("transfer finished in time");
    let want: Vec<u8> = data.iter().map(|b| b.wrapping_add(1)).collect();
    assert!(back == want, "{} bytes back of {}", back.len(), want.len());
    let sa = ta.await.unwrap().unwrap();
    let sv = tv.await.unwrap().unwrap();
    assert_eq!(sv.paths, 3);
    assert_eq!(sa.paths, 3);
    assert_eq!(sv.app_bytes_out, total as u64);
}
