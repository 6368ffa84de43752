//! Port mapping against a real router: Debian's `miniupnpd` (nftables backend) on a
//! netlab site's router, speaking PCP, NAT-PMP and UPnP-IGD. For each protocol: a mapping is
//! obtained, unsolicited traffic from the public side reaches the host through it
//! (a plain masquerade NAT would drop it), it is renewed before it expires, and it is
//! deleted at the router on release. Then the integration: a side with a mapping is
//! public, so two random-port NATs (which never punch) get a direct path.
#![cfg(target_os = "linux")] // the test bed is Linux network namespaces

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_punch::netlab::{enter_and_run, lab_or_skip, Lab, MappingRouter, Nat, NsRuntime, Site};
use zs_punch::netlab::{PUBLIC_IP, PUBLIC_IP2};
use zs_punch::peer::{run_attempt, Attempt};
use zs_punch::portmap::{self, Lease, Mapping, PortMapConfig, Protocol};
use zs_punch::punch::{PunchConfig, SocketFactory};
use zs_punch::rendezvous::{pair_key, Hub, HubConfig, Side};
use zs_punch::stun::StunServer;

/// A lab with one masquerading site whose router runs miniupnpd (None: skipped).
fn bed(nat: Nat) -> Option<(Lab, Site, MappingRouter)> {
    bed_with(nat, true)
}

/// [`bed`]; `pcp_natpmp` false: the router speaks only UPnP-IGD.
fn bed_with(nat: Nat, pcp_natpmp: bool) -> Option<(Lab, Site, MappingRouter)> {
    let mut lab = lab_or_skip()?;
    let site = lab.add_site(nat).unwrap();
    match lab.start_miniupnpd_with(&site, pcp_natpmp) {
        Ok(r) => Some((lab, site, r)),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("miniupnpd unavailable under CI: {why}");
            }
            println!("skipped: {why}");
            None
        }
    }
}

fn udp_in(ns: &str, ip: IpAddr) -> std::net::UdpSocket {
    let s = enter_and_run(ns, move || std::net::UdpSocket::bind((ip, 0)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A datagram from the public namespace to `to` arrives at `host`, and the answer
/// comes back (through the conntrack entry the mapping's DNAT made).
fn traffic_through(lab: &Lab, host: &std::net::UdpSocket, to: SocketAddr, tag: &[u8]) {
    let outside = udp_in(&lab.public_ns, PUBLIC_IP2.into());
    outside.send_to(tag, to).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = host
        .recv_from(&mut buf)
        .expect("datagram through the mapping");
    assert_eq!(&buf[..n], tag);
    host.send_to(b"back", from).unwrap();
    let (n, back_from) = outside.recv_from(&mut buf).expect("the answer");
    assert_eq!(&buf[..n], b"back");
    assert_eq!(back_from, to, "the answer comes from the mapped address");
}

fn rule_for(m: &Mapping) -> String {
    format!("dnat ip to {}", m.internal)
}

fn mapping_carries_traffic_renews_and_is_deleted(proto: Protocol) {
    let Some((lab, site, router)) = bed(Nat::EndpointIndependent) else {
        return;
    };
    let host = udp_in(&site.ns, site.ip);
    let port = host.local_addr().unwrap().port();
    let rt = NsRuntime::new(&site.ns).unwrap();
    let cfg = PortMapConfig {
        gateway: Some(router.gateway),
        lifetime: Duration::from_secs(3),
        tries: 3,
        only: Some(proto),
        ..Default::default()
    };
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let m = tokio_rt
        .block_on(rt.run(async move { portmap::map_udp(port, &cfg).await }))
        .unwrap_or_else(|e| panic!("{proto} mapping: {e}"));
    assert_eq!(m.protocol, proto);
    assert_eq!(m.igd.is_some(), proto == Protocol::Upnp);
    assert_eq!(
        m.external,
        SocketAddr::new(router.public_ip.into(), m.external.port())
    );
    assert_eq!(m.internal, SocketAddr::new(site.ip, port));
    assert!(router.mapping_rules().unwrap().contains(&rule_for(&m)));
    traffic_through(&lab, &host, m.external, b"first");

    // Renewal: the lease renews at half the lifetime; after two renewals (past the
    // first grant's end) the mapping still carries traffic.
    let lease: Arc<std::sync::Mutex<Option<Lease>>> = Arc::default();
    let m2 = m.clone();
    let l2 = lease.clone();
    tokio_rt.block_on(rt.run(async move {
        *l2.lock().unwrap() = Some(Lease::keep(m2, Duration::from_secs(3), 3));
    }));
    let t = Instant::now();
    while lease.lock().unwrap().as_ref().unwrap().renewals() < 2 {
        assert!(t.elapsed() < Duration::from_secs(30), "no renewals");
        std::thread::sleep(Duration::from_millis(50));
    }
    let now = lease.lock().unwrap().as_ref().unwrap().mapping();
    assert_eq!(now.external, m.external, "a renewal keeps the port");
    traffic_through(&lab, &host, m.external, b"after renewals");

    // Release: the router deletes the rule before it answers.
    let l = lease.lock().unwrap().take().unwrap();
    tokio_rt
        .block_on(rt.run(async move { l.release().await }))
        .unwrap_or_else(|e| panic!("{proto} delete: {e}"));
    assert!(
        !router.mapping_rules().unwrap().contains(&rule_for(&m)),
        "{}",
        router.mapping_rules().unwrap()
    );
}

#[test]
fn pcp_mapping_carries_traffic_renews_and_is_deleted() {
    mapping_carries_traffic_renews_and_is_deleted(Protocol::Pcp);
}

#[test]
fn natpmp_mapping_carries_traffic_renews_and_is_deleted() {
    mapping_carries_traffic_renews_and_is_deleted(Protocol::NatPmp);
}

/// UPnP-IGD: SSDP multicast from the host finds miniupnpd's IGD on the gateway,
/// SOAP maps, renews (AddPortMapping again) and deletes.
#[test]
fn upnp_mapping_carries_traffic_renews_and_is_deleted() {
    mapping_carries_traffic_renews_and_is_deleted(Protocol::Upnp);
}

/// A router that speaks only UPnP-IGD: PCP and NAT-PMP get no answer (port
/// unreachable), the default configuration falls through to UPnP-IGD, and the
/// mapping carries traffic from the public side.
/// A site behind a router that speaks only UPnP-IGD, a host socket there, and
/// runtimes in its namespace.
struct UpnpOnly {
    lab: Lab,
    router: MappingRouter,
    host: std::net::UdpSocket,
    port: u16,
    rt: NsRuntime,
    tokio_rt: tokio::runtime::Runtime,
}

fn upnp_only() -> Option<UpnpOnly> {
    let (lab, site, router) = bed_with(Nat::EndpointIndependent, false)?;
    let host = udp_in(&site.ns, site.ip);
    let port = host.local_addr().unwrap().port();
    let rt = NsRuntime::new(&site.ns).unwrap();
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Some(UpnpOnly {
        lab,
        router,
        host,
        port,
        rt,
        tokio_rt,
    })
}

/// `m` is a UPnP-IGD mapping at `router`: it carries traffic from the public side to
/// `host`, and deleting it removes the router's rule.
fn upnp_works_then_delete(u: &UpnpOnly, m: Mapping, tag: &[u8]) {
    let (router, rt) = (&u.router, &u.rt);
    assert_eq!(m.protocol, Protocol::Upnp);
    assert_eq!(m.external.ip(), IpAddr::from(router.public_ip));
    assert!(router.mapping_rules().unwrap().contains(&rule_for(&m)));
    traffic_through(&u.lab, &u.host, m.external, tag);
    let m2 = m.clone();
    u.tokio_rt
        .block_on(rt.run(async move { portmap::renew(&m2, Duration::ZERO, 1).await }))
        .unwrap();
    assert!(!router.mapping_rules().unwrap().contains(&rule_for(&m)));
}

#[test]
fn a_upnp_only_router_maps_through_upnp() {
    let Some(u) = upnp_only() else {
        return;
    };
    let (port, rt, tokio_rt) = (u.port, &u.rt, &u.tokio_rt);
    let [a, b, c, _] = u.router.gateway.octets();
    let impostor = std::net::Ipv4Addr::new(a, b, c, 99);
    let (m, only_pcp, wrong_gw) = tokio_rt.block_on(rt.run(async move {
        // The IGD that answers SSDP is not the (configured) gateway: refused.
        let wrong_gw = portmap::map_udp(
            port,
            &PortMapConfig {
                gateway: Some(impostor),
                only: Some(Protocol::Upnp),
                ..Default::default()
            },
        )
        .await;
        let only_pcp = portmap::map_udp(
            port,
            &PortMapConfig {
                only: Some(Protocol::Pcp),
                ..Default::default()
            },
        )
        .await;
        (
            portmap::map_udp(port, &PortMapConfig::default()).await,
            only_pcp,
            wrong_gw,
        )
    }));
    assert!(only_pcp.is_err(), "PCP is off: {only_pcp:?}");
    assert!(
        matches!(
            wrong_gw,
            Err(portmap::PortMapError::Garbage {
                protocol: Protocol::Upnp,
                ..
            })
        ),
        "{wrong_gw:?}"
    );
    let m = m.unwrap_or_else(|e| panic!("UPnP-IGD fallback: {e}"));
    upnp_works_then_delete(&u, m, b"upnp only");
}

/// A punch attempt's port mapping (`map_udp_now`) does not wait for the SSDP search
/// once PCP and NAT-PMP failed; the search goes on, and the IGD it finds is
/// remembered, so the next attempt maps through UPnP-IGD at once (the upgrade).
#[test]
fn an_igd_found_after_an_attempt_maps_the_next_one() {
    let Some(u) = upnp_only() else {
        return;
    };
    let (port, rt, tokio_rt) = (u.port, &u.rt, &u.tokio_rt);
    let (first, known, next) = tokio_rt.block_on(rt.run(async move {
        let cfg = PortMapConfig::default();
        let memory = portmap::IgdMemory::new();
        // Mapped only if the IGD answered before PCP and NAT-PMP failed (a race).
        let first = portmap::map_udp_now(port, &cfg, &memory).await;
        let gw = portmap::default_gateway().expect("the site has a default route");
        // The background search records the IGD (guard only, the search takes ~1 s).
        let t = Instant::now();
        while memory.known(gw, cfg.ssdp).is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the search never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let known = memory.known(gw, cfg.ssdp);
        (
            first,
            known,
            portmap::map_udp_now(port, &cfg, &memory).await,
        )
    }));
    assert_eq!(known, Some(true), "the IGD is remembered");
    if let Err(e) = &first {
        assert!(
            matches!(e, portmap::PortMapError::NoAnswer(_)),
            "PCP / NAT-PMP are off: {e}"
        );
    }
    let m = next.unwrap_or_else(|e| panic!("the next attempt maps through the known IGD: {e}"));
    upnp_works_then_delete(&u, m, b"upgrade");
}

/// Without a preference the client speaks PCP (miniupnpd answers it).
#[test]
fn pcp_is_tried_first() {
    let Some((_lab, site, router)) = bed(Nat::EndpointIndependent) else {
        return;
    };
    let rt = NsRuntime::new(&site.ns).unwrap();
    let gw = router.gateway;
    let m = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(rt.run(async move {
            let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
            let port = s.local_addr().unwrap().port();
            let cfg = PortMapConfig {
                gateway: Some(gw),
                ..Default::default()
            };
            let m = portmap::map_udp(port, &cfg).await;
            // The router speaks UPnP-IGD too, and its SSDP search ran beside PCP:
            // it made no mapping (checked below), since PCP answered.
            if let Ok(m) = &m {
                let _ = portmap::renew(m, Duration::ZERO, 3).await;
            }
            m
        }))
        .unwrap();
    assert_eq!(m.protocol, Protocol::Pcp);
    let rules = router.mapping_rules().unwrap();
    assert!(
        !rules.contains("dnat"),
        "one mapping only, deleted: {rules}"
    );
}

fn factory(ns: String, ip: IpAddr) -> Arc<SocketFactory> {
    zs_punch::netlab::socket_factory(ns, ip)
}

/// Two random-port NATs never punch (the hub declines: relay only). When one side's
/// router maps a port, that side is public and the pair gets a direct path.
#[test]
fn a_mapped_side_is_public_so_two_random_port_nats_get_a_direct_path() {
    let Some((mut lab, mapped_site, router)) = bed(Nat::RandomPorts) else {
        return;
    };
    let other = lab.add_site(Nat::RandomPorts).unwrap();
    let pubns = lab.public_ns.clone();
    let (stun, tcp) = enter_and_run(&pubns, || {
        (
            StunServer::bind_std(PUBLIC_IP.into(), Some(PUBLIC_IP2.into()), (3478, 3479)),
            std::net::TcpListener::bind((PUBLIC_IP, 7000)),
        )
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        StunServer::from_std(stun.unwrap()).unwrap().spawn();
        let tcp = tcp.unwrap();
        tcp.set_nonblocking(true).unwrap();
        tokio::spawn(
            Hub::new(HubConfig::default()).serve(tokio::net::TcpListener::from_std(tcp).unwrap()),
        );
    });
    let run = |site: &Site,
               side: Side,
               key: &'static str,
               port_mapping: Option<portmap::PortMapConfig>| {
        let (ns, ip) = (site.ns.clone(), site.ip);
        let rt_ns = NsRuntime::new(&ns).unwrap();
        let f = factory(ns.clone(), ip);
        async move {
            rt_ns
                .run(async move {
                    let mut tcp = tokio::net::TcpStream::connect((PUBLIC_IP, 7000))
                        .await
                        .unwrap();
                    let udp = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
                    let a = Attempt {
                        side,
                        pair_key: pair_key(key, "t"),
                        fingerprint: [side as u8; 32],
                        stun: SocketAddr::new(PUBLIC_IP.into(), 3478),
                        punch: PunchConfig::default(),
                        classify: Default::default(),
                        port_mapping,
                        igd_memory: Default::default(),
                    };
                    let r = run_attempt(&a, udp, &mut tcp, &*f).await.unwrap();
                    let mapped = r.mapping.as_ref().map(|l| l.mapping());
                    if let Some(l) = r.mapping {
                        l.release().await.unwrap();
                    }
                    (r.path.map(|p| p.peer).map_err(|e| e.to_string()), mapped)
                })
                .await
        }
    };
    // Without a mapping: declined.
    let (a, v) = rt.block_on(async {
        tokio::join!(
            run(&mapped_site, Side::Agent, "plain", None),
            run(&other, Side::Visitor, "plain", None)
        )
    });
    assert!(a.0.is_err() && v.0.is_err(), "{a:?} {v:?}");
    // With one: direct. The gateway is found from the namespace's routing table.
    let cfg = PortMapConfig::default();
    let (a, v) = rt.block_on(async {
        tokio::join!(
            run(&mapped_site, Side::Agent, "mapped", Some(cfg)),
            run(&other, Side::Visitor, "mapped", None)
        )
    });
    let mapped = a.1.clone().expect("the agent's router mapped a port");
    assert_eq!(mapped.external.ip(), IpAddr::from(router.public_ip));
    assert!(a.0.is_ok(), "{a:?}");
    assert_eq!(
        v.0.unwrap(),
        mapped.external,
        "the visitor reached the mapped address"
    );
}
