//! `cargo xtask bench xnat-direct`: direct paths in a network-namespace test bed (root,
//! `ip`, `nft`): two endpoint-independent NATs (`masquerade`) and two random-port NATs
//! (`masquerade fully-random`) behind one "public" namespace with the STUN server and
//! the rendezvous hub.
//!
//! - **Punch success and time-to-direct per NAT pair** (easy/easy, easy/hard,
//!   hard/hard): each trial is a full attempt on fresh sockets (STUN classification,
//!   rendezvous, punching); time-to-direct runs from the start of classification to the
//!   first packet from the peer. Hard/hard is declined by the hub (relay only), so its
//!   success rate is 0 by design and its "time" is the time to learn that.
//!   Two more sites have NATs whose ports change regularly (netlab `RegularPorts`,
//!   +1 per new flow): easy/regular (mode Predict) and regular/regular (PredictBoth).
//! - **Direct QUIC throughput vs raw UDP** between the same two namespaces over the same
//!   punched NAT mappings: QUIC (quinn, TLS 1.3 with pinned keys, congestion control,
//!   reliable and ordered) sends one stream; raw UDP blasts 1,200-byte datagrams with no
//!   reliability, no encryption and no congestion control, and we count what the
//!   receiver got. Ratio `quic_vs_raw_udp` = QUIC goodput / raw UDP goodput.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_bench_harness::{median, Better, Options, Suite};
use zs_punch::netlab::{enter_and_run, Lab, Nat, NsRuntime, Site, PUBLIC_IP, PUBLIC_IP2};
use zs_punch::peer::{run_attempt, Attempt};
use zs_punch::punch::{PunchConfig, Punched, SocketFactory};
use zs_punch::quic::{self, Identity, QuicLimits};
use zs_punch::rendezvous::{pair_key, Hub, HubConfig, Side};
use zs_punch::stun::StunServer;

struct Bed {
    _lab: Lab,
    public_ns: String,
    hub: SocketAddr,
    sites: Vec<Site>,
}

fn udp(ns: &str, ip: IpAddr) -> tokio::net::UdpSocket {
    let s = enter_and_run(ns, move || std::net::UdpSocket::bind((ip, 0)))
        .expect("enter namespace")
        .expect("bind");
    s.set_nonblocking(true).unwrap();
    tokio::net::UdpSocket::from_std(s).unwrap()
}

fn factory(ns: String, ip: IpAddr) -> Arc<SocketFactory> {
    zs_punch::netlab::socket_factory(ns, ip)
}

/// One side's attempt; returns the punched path (if any) and the time to it.
async fn side(
    bed: &Bed,
    site: &Site,
    who: Side,
    fp: [u8; 32],
    key: &str,
) -> (Option<Punched>, Duration) {
    let t = Instant::now();
    let (ns, ip, hub) = (site.ns.clone(), site.ip, bed.hub);
    let tcp = enter_and_run(&ns, move || std::net::TcpStream::connect(hub))
        .unwrap()
        .expect("connect to the hub");
    tcp.set_nonblocking(true).unwrap();
    let mut tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    let a = Attempt {
        side: who,
        pair_key: pair_key(key, "bench"),
        fingerprint: fp,
        stun: SocketAddr::new(PUBLIC_IP.into(), 3478),
        punch: PunchConfig::default(),
        classify: Default::default(),
        port_mapping: None,
        igd_memory: Default::default(),
    };
    let f = factory(ns.clone(), ip);
    match run_attempt(&a, udp(&ns, ip), &mut tcp, &*f).await {
        Ok(r) => match r.path {
            Ok(p) => (Some(p), t.elapsed()),
            Err(_) => (None, t.elapsed()),
        },
        Err(_) => (None, t.elapsed()),
    }
}

/// Both sides; success when both got a path.
async fn trial(
    bed: &Bed,
    a: usize,
    v: usize,
    fa: [u8; 32],
    fv: [u8; 32],
    key: &str,
) -> (Option<(Punched, Punched)>, Duration) {
    let (ra, rv) = tokio::join!(
        side(bed, &bed.sites[a], Side::Agent, fa, key),
        side(bed, &bed.sites[v], Side::Visitor, fv, key)
    );
    let t = ra.1.max(rv.1);
    match (ra.0, rv.0) {
        (Some(x), Some(y)) => (Some((x, y)), t),
        _ => (None, t),
    }
}

fn main() {
    let opts = Options::from_env();
    if let Some(why) = Lab::unavailable() {
        panic!("bench xnat-direct needs network namespaces: {why}");
    }
    let trials_per_round = if opts.quick { 10 } else { 25 };
    let mut suite = Suite::from_options("xnat-direct", &opts, 2, 4);
    let secs = if opts.quick { 1.0 } else { 2.0 };
    let rt = Rc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let mut lab = Lab::new().expect("lab");
    let sites = vec![
        lab.add_site(Nat::EndpointIndependent).unwrap(),
        lab.add_site(Nat::EndpointIndependent).unwrap(),
        lab.add_site(Nat::RandomPorts).unwrap(),
        lab.add_site(Nat::RandomPorts).unwrap(),
        lab.add_site(Nat::RegularPorts).unwrap(),
        lab.add_site(Nat::RegularPorts).unwrap(),
    ];
    let pubns = lab.public_ns.clone();
    let (stun, tcp) = enter_and_run(&pubns, || {
        (
            StunServer::bind_std(PUBLIC_IP.into(), Some(PUBLIC_IP2.into()), (3478, 3479)),
            std::net::TcpListener::bind((PUBLIC_IP, 7000)),
        )
    })
    .unwrap();
    {
        let _g = rt.enter();
        StunServer::from_std(stun.unwrap()).unwrap().spawn();
        let tcp = tcp.unwrap();
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
        rt.spawn(Hub::new(HubConfig::default()).serve(tcp));
    }
    let bed = Rc::new(Bed {
        _lab: lab,
        public_ns: pubns.clone(),
        hub: SocketAddr::new(PUBLIC_IP.into(), 7000),
        sites,
    });

    // Punch trials per NAT pair: success rate, then the median time of that round.
    let mut totals = Vec::new();
    for (name, a, v) in [
        ("easy-easy", 0usize, 1usize),
        ("easy-hard", 0, 2),
        ("hard-easy", 2, 1),
        ("hard-hard", 2, 3),
        // Ports that change by +1 per new flow: predicted (Predict, PredictBoth).
        ("easy-regular", 0, 4),
        ("regular-regular", 4, 5),
    ] {
        let times = Rc::new(RefCell::new(Vec::<f64>::new()));
        // Every trial's time (all rounds), for the median over all trials.
        let every = Rc::new(RefCell::new(Vec::<f64>::new()));
        let all = Rc::new(RefCell::new((0u32, 0u32)));
        totals.push((name, all.clone(), every.clone()));
        let (rt2, bed2, times2, all2) = (rt.clone(), bed.clone(), times.clone(), all.clone());
        suite.case(
            &format!("punch-{name}"),
            "success_pct",
            Better::Higher,
            move || {
                let mut ok = 0;
                times2.borrow_mut().clear();
                for i in 0..trials_per_round {
                    let key = format!("{name}-{i}-{:?}", Instant::now());
                    let (r, t) = rt2.block_on(trial(&bed2, a, v, [1; 32], [2; 32], &key));
                    if r.is_some() {
                        ok += 1;
                    }
                    // Time to direct for pairs that punch; for hard-hard (declined),
                    // the time until both sides know they stay on the relay.
                    if r.is_some() || name == "hard-hard" {
                        times2.borrow_mut().push(t.as_secs_f64() * 1000.0);
                        every.borrow_mut().push(t.as_secs_f64() * 1000.0);
                    }
                }
                let mut g = all2.borrow_mut();
                g.0 += ok;
                g.1 += trials_per_round;
                100.0 * f64::from(ok) / f64::from(trials_per_round)
            },
        );
        let times3 = times.clone();
        let tname = if name == "hard-hard" {
            format!("time-to-relay-decision-{name}")
        } else {
            format!("time-to-direct-{name}")
        };
        suite.case(&tname, "ms_median", Better::Lower, move || {
            median(&times3.borrow())
        });
    }

    // Throughput over the same punched mappings (easy/hard: the harder pair). The raw
    // UDP cases punch a fresh path each round: nothing keeps a raw mapping alive, and
    // the punch trials run first (a full run spends minutes there, past conntrack's
    // 120 s UDP timeout; QUIC's keep-alive holds its own mappings).
    let raw_trial = {
        let (rt, bed) = (rt.clone(), bed.clone());
        move |key: &str, fa: [u8; 32], fv: [u8; 32]| {
            rt.block_on(trial(&bed, 0, 2, fa, fv, key))
                .0
                .expect("punch for a raw UDP case")
        }
    };
    let ai = Identity::generate().unwrap();
    let vi = Identity::generate().unwrap();
    let (qa, qv) = rt
        .block_on(trial(
            &bed,
            0,
            2,
            ai.fingerprint(),
            vi.fingerprint(),
            "quic",
        ))
        .0
        .expect("punch for the QUIC case");
    let (vf, af) = (vi.fingerprint(), ai.fingerprint());
    let l = QuicLimits::default();
    let (aconn, vconn, _eps) = rt.block_on(async move {
        let acc = tokio::spawn(async move { quic::accept(qa.socket, &ai, vf, l).await });
        let (vep, vconn) = quic::connect(qv.socket, qv.peer, &vi, af, l).await.unwrap();
        let (aep, aconn) = acc.await.unwrap().unwrap();
        (aconn, vconn, (aep, vep))
    });
    // QUIC: the visitor writes one stream for `secs`; the agent counts what it reads.
    // Its path MTU (quinn's MTU discovery) is the datagram size of the raw baselines.
    let quic_mtu = Rc::new(std::cell::Cell::new(1200usize));
    let (rt2, secs2, quic_mtu2) = (rt.clone(), secs, quic_mtu.clone());
    suite.case("direct-quic", "MB_per_s", Better::Higher, move || {
        let (a, v) = (aconn.clone(), vconn.clone());
        let mtu = quic_mtu2.clone();
        let vc = vconn.clone();
        rt2.block_on(async move {
            let reader = tokio::spawn(async move {
                let (_s, mut r) = a.accept_bi().await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0u64;
                let t = Instant::now();
                while let Ok(Some(k)) = r.read(&mut buf).await {
                    n += k as u64;
                }
                n as f64 / t.elapsed().as_secs_f64() / 1e6
            });
            let (mut s, _r) = v.open_bi().await.unwrap();
            let chunk = vec![0x5au8; 64 * 1024];
            let end = Instant::now() + Duration::from_secs_f64(secs2);
            while Instant::now() < end {
                s.write_all(&chunk).await.unwrap();
            }
            s.finish().unwrap();
            let r = reader.await.unwrap();
            mtu.set(usize::from(vc.stats().path.current_mtu));
            r
        })
    });
    // The visitor path as a user sees it: TCP into the visitor's local port, a QUIC
    // stream over the punched path, TCP from the agent to a sink service.
    let ai2 = Identity::generate().unwrap();
    let vi2 = Identity::generate().unwrap();
    let (fa2, fv2) = (ai2.fingerprint(), vi2.fingerprint());
    let (ta, tv) = rt
        .block_on(trial(&bed, 0, 2, fa2, fv2, "tcp"))
        .0
        .expect("punch for the TCP-over-QUIC case");
    let (asite, vsite) = (bed.sites[0].clone(), bed.sites[2].clone());
    let laddr = rt.block_on(async move {
        let aip = asite.ip;
        let sink = enter_and_run(&asite.ns, move || std::net::TcpListener::bind((aip, 0)))
            .unwrap()
            .unwrap();
        let sink_addr = sink.local_addr().unwrap();
        sink.set_nonblocking(true).unwrap();
        serve_sink(tokio::net::TcpListener::from_std(sink).unwrap());
        let ans = asite.ns.clone();
        let connector: quic::Connector = Arc::new(move || {
            let ns = ans.clone();
            Box::pin(async move {
                let s = enter_and_run(&ns, move || std::net::TcpStream::connect(sink_addr))
                    .map_err(std::io::Error::other)??;
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            })
        });
        let acc = tokio::spawn(async move {
            let (ep, c) = quic::accept(ta.socket, &ai2, fv2, l).await.unwrap();
            quic::serve_agent(c, connector).await;
            drop(ep);
        });
        let (vep, vc) = quic::connect(tv.socket, tv.peer, &vi2, fa2, l)
            .await
            .unwrap();
        let local = enter_and_run(&vsite.ns, || std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let laddr = local.local_addr().unwrap();
        local.set_nonblocking(true).unwrap();
        tokio::spawn(async move {
            quic::serve_visitor(tokio::net::TcpListener::from_std(local).unwrap(), vc).await;
            drop(vep);
            drop(acc);
        });
        laddr
    });
    let (rt4, secs4, vns) = (rt.clone(), secs, bed.sites[2].ns.clone());
    suite.case(
        "visitor-tcp-over-quic",
        "MB_per_s",
        Better::Higher,
        move || {
            let vns = vns.clone();
            rt4.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let s = enter_and_run(&vns, move || std::net::TcpStream::connect(laddr))
                    .unwrap()
                    .unwrap();
                s.set_nonblocking(true).unwrap();
                let mut s = tokio::net::TcpStream::from_std(s).unwrap();
                let chunk = vec![0x3cu8; 64 * 1024];
                let t = Instant::now();
                let end = t + Duration::from_secs_f64(secs4);
                while Instant::now() < end {
                    s.write_all(&chunk).await.unwrap();
                }
                s.shutdown().await.unwrap();
                let mut n = [0u8; 8];
                s.read_exact(&mut n).await.unwrap();
                u64::from_be_bytes(n) as f64 / t.elapsed().as_secs_f64() / 1e6
            })
        },
    );

    // Raw UDP: blast for `secs`; receiver goodput (and, next case, what was sent).
    let (rt3, secs3) = (rt.clone(), secs);
    let sent_rate = Rc::new(std::cell::Cell::new(0.0f64));
    let sent_rate2 = sent_rate.clone();
    let raw_trial3 = raw_trial.clone();
    suite.case("direct-raw-udp", "MB_per_s", Better::Higher, move || {
        let sent_rate = sent_rate2.clone();
        let (ra, rv) = raw_trial3("raw", [1; 32], [2; 32]);
        rt3.block_on(async move {
            let rs = ra.socket.try_clone().unwrap();
            rs.set_nonblocking(false).unwrap();
            rs.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut n = 0u64;
                let mut first: Option<Instant> = None;
                let mut last = Instant::now();
                while let Ok((k, _)) = rs.recv_from(&mut buf) {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    n += k as u64;
                }
                let span = first.map(|f| (last - f).as_secs_f64()).unwrap_or(1.0);
                n as f64 / span.max(1e-3) / 1e6
            });
            let ss = rv.socket.try_clone().unwrap();
            ss.set_nonblocking(false).unwrap();
            let to = rv.peer;
            let sender = std::thread::spawn(move || {
                let d = [0xa5u8; 1200];
                let t = Instant::now();
                let end = t + Duration::from_secs_f64(secs3);
                let mut n = 0u64;
                while Instant::now() < end {
                    for _ in 0..64 {
                        if ss.send_to(&d, to).is_ok() {
                            n += 1200;
                        }
                    }
                }
                n as f64 / t.elapsed().as_secs_f64() / 1e6
            });
            sent_rate.set(sender.join().unwrap());
            let got = reader.join().unwrap();
            assert!(got > 0.0, "raw UDP: nothing arrived over the punched path");
            got
        })
    });
    // Raw UDP with the batching quinn itself uses (quinn-udp: GSO on send, GRO on
    // receive), over the same punched mappings: the fair raw baseline.
    let secs6 = secs;
    let gso_segs = Rc::new(std::cell::Cell::new(0usize));
    let gso_segs2 = gso_segs.clone();
    let quic_mtu6 = quic_mtu.clone();
    suite.case(
        "direct-raw-udp-gso",
        "MB_per_s",
        Better::Higher,
        move || {
            let (ga, gv) = raw_trial("raw-gso", [3; 32], [4; 32]);
            let (rate, segs) = raw_gso(&ga, &gv, secs6, quic_mtu6.get());
            gso_segs2.set(segs);
            rate
        },
    );
    suite.case(
        "direct-raw-udp-sent",
        "MB_per_s",
        Better::Higher,
        move || sent_rate.get(),
    );
    // The zs-xnat visitor end to end: relay (hosting the hub) in public, agent behind
    // an easy NAT, visitor behind the other easy NAT. Each round: a connection starts
    // on the relay, the visitor punches, then `visit_bytes` move over the direct path;
    // the relay's count of bytes on visitor relay paths during that phase, per GiB.
    let visit_bytes: usize = if opts.quick { 64 << 20 } else { 256 << 20 };
    let vx = Rc::new(visitor_bed(&bed));
    let vrate = Rc::new(std::cell::Cell::new(0.0f64));
    let vttd = Rc::new(RefCell::new(Vec::<f64>::new()));
    let (rt5, vx5, vrate5, vttd5) = (rt.clone(), vx.clone(), vrate.clone(), vttd.clone());
    suite.case(
        "visitor-relay-bytes-per-gib-after-upgrade",
        "bytes_per_GiB",
        Better::Lower,
        move || {
            let (relay_share, rate, ttd) = rt5.block_on(visitor_round(&vx5, visit_bytes));
            vrate5.set(rate);
            vttd5.borrow_mut().push(ttd);
            relay_share
        },
    );
    suite.case(
        "visitor-over-direct",
        "MB_per_s",
        Better::Higher,
        move || vrate.get(),
    );
    suite.case(
        "visitor-time-to-direct",
        "ms_median",
        Better::Lower,
        move || median(&vttd.borrow()),
    );
    // The same visitor, agent and sink with no direct path: every byte through the
    // relay (visitor session -> relay -> the agent's data connection).
    let (rt6, vx6) = (rt.clone(), vx.clone());
    suite.case(
        "visitor-over-relay",
        "MB_per_s",
        Better::Higher,
        move || rt6.block_on(relay_round(&vx6, visit_bytes)),
    );
    suite.note(format!(
        "visitor: zs xnat visit end to end (relay with the hub, agent and visitor behind easy NATs); per round a connection starts on the relay, the visitor punches (visitor-time-to-direct: classification, rendezvous, punch and QUIC handshake), then {} MiB go over the direct path to a sink; visitor-relay-bytes-per-GiB-after-upgrade: what the relay carried on visitor relay paths meanwhile (goal < 1 % = 10,737,418 bytes per GiB); visitor-over-direct: that phase's rate (migrate frames in one QUIC stream; compare with direct-quic)",
        visit_bytes >> 20
    ));
    suite.note(
        "punch trials: fresh sockets each, STUN + rendezvous + punching; hard-hard is declined (relay only) by design",
    );
    suite.note(
        "direct-quic: TLS 1.3, pinned Ed25519 keys, reliable ordered stream, congestion control; direct-raw-udp: 1,200 B datagrams blasted from one thread, no reliability, no encryption, no congestion control, receiver goodput (direct-raw-udp-sent: what the sender put out; the gap is loss at the receiver); visitor-tcp-over-quic: TCP client -> visitor port -> QUIC stream -> agent -> TCP sink, the sink's count over the client's time",
    );
    suite.run();
    suite.ratio("quic_vs_raw_udp", "direct-quic", "direct-raw-udp");
    suite.ratio("quic_vs_raw_udp_gso", "direct-quic", "direct-raw-udp-gso");
    suite.note(format!(
        "direct-raw-udp-gso: {} B datagrams (QUIC's discovered path MTU, so both sides put the same bytes per packet on the wire) sent {} per sendmsg with UDP GSO and received with GRO (quinn-udp, the batching quinn uses), blocking sockets, no reliability, no encryption, no congestion control, receiver goodput over its receiving time: the fair raw baseline for quic_vs_raw_udp_gso (goal >= 0.8); direct-quic promises more (TLS 1.3 encryption, reliable ordered delivery, congestion control); quic_vs_raw_udp compares with one 1,200 B send_to per datagram, which is syscall-bound",
        quic_mtu.get(),
        gso_segs.get()
    ));
    suite.ratio(
        "visitor_migrate_vs_direct_quic",
        "visitor-over-direct",
        "direct-quic",
    );
    suite.ratio(
        "visitor_tcp_vs_direct_quic",
        "visitor-tcp-over-quic",
        "direct-quic",
    );
    suite.ratio(
        "visitor_direct_vs_relayed",
        "visitor-over-direct",
        "visitor-over-relay",
    );
    suite.note(
        "throughput, direct vs relayed vs raw: visitor-over-direct and visitor-over-relay are the same zs xnat visit connection (migrate frames) over the punched QUIC path and over the relay; direct-quic a bare quinn stream on a punched path; direct-raw-udp-gso the raw UDP baseline (all in the same namespaces)",
    );
    for (name, all, every) in totals {
        let (ok, n) = *all.borrow();
        let what = if name == "hard-hard" {
            "time to the relay-only decision"
        } else {
            "time-to-direct"
        };
        suite.note(format!(
            "{name}: {ok}/{n} trials punched ({:.1} %), median {what} over those {} trials {:.1} ms",
            100.0 * f64::from(ok) / f64::from(n.max(1)),
            every.borrow().len(),
            median(&every.borrow())
        ));
    }
    suite.finish();
}

/// A TCP sink: each connection is read to its end, then answered with the byte count
/// (u64 BE).
fn serve_sink(l: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0u64;
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                let _ = s.write_all(&n.to_be_bytes()).await;
            });
        }
    });
}

/// The zs-xnat side of the bench: runtimes in the namespaces, the three roles, a sink.
struct VisitorBed {
    _rts: Vec<NsRuntime>,
    visitor_rt: NsRuntime,
    relay: zs_xnat::Relay,
    visitor: zs_xnat::Visitor,
    visitor_ns: String,
    _dir: tempfile::TempDir,
}

fn visitor_bed(bed: &Bed) -> VisitorBed {
    let (asite, vsite) = (bed.sites[0].clone(), bed.sites[1].clone());
    let dir = tempfile::tempdir().unwrap();
    let relay_rt = NsRuntime::new(&bed.public_ns).unwrap();
    let agent_rt = NsRuntime::new(&asite.ns).unwrap();
    let visitor_rt = NsRuntime::new(&vsite.ns).unwrap();
    let relay_addr = SocketAddr::new(PUBLIC_IP.into(), 7100);
    let rcfg = zs_xnat::Config::parse(
        &format!(
            "[server]\nbind_addr = \"{relay_addr}\"\n[server.services.sink]\ntoken = \"bench\"\nbind_addr = \"{PUBLIC_IP}:0\"\n"
        ),
        "relay.toml",
        dir.path(),
    )
    .unwrap()
    .server
    .unwrap();
    let stun = SocketAddr::new(PUBLIC_IP.into(), 3478);
    let relay = relay_rt.handle().block_on_spawned(async move {
        let r = zs_xnat::Relay::bind(rcfg).await.unwrap();
        r.enable_direct(&zs_xnat::visit::DirectServerConfig {
            stun_bind_addr: None,
            stun_alt_ip: None,
            stun_addr: stun,
        })
        .unwrap();
        tokio::spawn(r.clone().run());
        r
    });
    let sink = agent_rt.handle().block_on_spawned(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        serve_sink(l);
        a
    });
    let fp = relay.fingerprint();
    let acfg = zs_xnat::Config::parse(
        &format!(
            "[client]\nremote_addr = \"{relay_addr}\"\nrelay_fingerprint = \"{fp}\"\n[client.services.sink]\ntoken = \"bench\"\nlocal_addr = \"{sink}\"\n"
        ),
        "agent.toml",
        dir.path(),
    )
    .unwrap()
    .client
    .unwrap();
    agent_rt.handle().spawn(zs_xnat::Agent::new(acfg).run());
    let vcfg = zs_xnat::VisitorConfig::parse(
        &format!(
            "[visitor]\nremote_addr = \"{relay_addr}\"\nrelay_fingerprint = \"{fp}\"\nservice = \"sink\"\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:0\"\ndirect = false\n"
        ),
        "visitor.toml",
    )
    .unwrap();
    let visitor = visitor_rt.handle().block_on_spawned(async move {
        let v = zs_xnat::Visitor::bind(vcfg).await.unwrap();
        tokio::spawn(v.clone().run());
        v
    });
    let t = Instant::now();
    while relay.public_addr("sink").is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "agent never registered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    VisitorBed {
        _rts: vec![relay_rt, agent_rt],
        visitor_rt,
        relay,
        visitor,
        visitor_ns: vsite.ns,
        _dir: dir,
    }
}

/// Blocks on a future spawned on a runtime's handle (from outside any runtime).
trait BlockOnSpawned {
    fn block_on_spawned<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T;
}

impl BlockOnSpawned for tokio::runtime::Handle {
    fn block_on_spawned<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("task finished")
    }
}

/// A new connection to the visitor's port with no direct path up (it starts on the
/// relay).
async fn relayed_conn(vx: &VisitorBed) -> tokio::net::TcpStream {
    let v = vx.visitor.clone();
    vx.visitor_rt
        .run(async move {
            v.drop_direct();
            v.direct_lost().await;
        })
        .await;
    let to = vx.visitor.local_addr();
    let s = enter_and_run(&vx.visitor_ns, move || std::net::TcpStream::connect(to))
        .unwrap()
        .unwrap();
    s.set_nonblocking(true).unwrap();
    tokio::net::TcpStream::from_std(s).unwrap()
}

/// One visitor round: (relay bytes per GiB after the upgrade, MB/s over the direct
/// path, time to direct in ms).
async fn visitor_round(vx: &VisitorBed, bytes: usize) -> (f64, f64, f64) {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let mut s = relayed_conn(vx).await;
    let chunk = vec![0x77u8; 64 * 1024];
    for _ in 0..16 {
        s.write_all(&chunk).await.unwrap(); // 1 MiB on the relay
    }
    let v = vx.visitor.clone();
    let t = Instant::now();
    vx.visitor_rt
        .run(async move { v.punch().await })
        .await
        .expect("visitor punch (easy/easy)");
    let ttd = t.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = vx
        .relay
        .visit_stats()
        .relay_path_bytes
        .load(Ordering::Relaxed);
    let t = Instant::now();
    let n = push_to_sink(&mut s, &chunk, bytes).await;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, (bytes + (1 << 20)) as u64, "sink count");
    let after = vx
        .relay
        .visit_stats()
        .relay_path_bytes
        .load(Ordering::Relaxed);
    let per_gib = (after - before) as f64 * (1u64 << 30) as f64 / bytes as f64;
    (per_gib, bytes as f64 / secs / 1e6, ttd)
}

/// Writes `chunk` until `bytes` went, ends the stream and reads the sink's count.
async fn push_to_sink(s: &mut tokio::net::TcpStream, chunk: &[u8], bytes: usize) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sent = 0;
    while sent < bytes {
        s.write_all(chunk).await.unwrap();
        sent += chunk.len();
    }
    s.shutdown().await.unwrap();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await.unwrap();
    u64::from_be_bytes(n)
}

/// One relayed round: with no direct path, `bytes` from a new visitor connection to
/// the sink, every byte through the relay; MB/s (the sink's count over the client's
/// time).
async fn relay_round(vx: &VisitorBed, bytes: usize) -> f64 {
    let mut s = relayed_conn(vx).await;
    let chunk = vec![0x55u8; 64 * 1024];
    let t = Instant::now();
    let n = push_to_sink(&mut s, &chunk, bytes).await;
    assert_eq!(n, bytes as u64, "sink count");
    assert!(
        !vx.visitor.is_direct(),
        "no direct path during the relayed round"
    );
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// Raw UDP over a punched path with GSO/GRO for `secs`: (receiver MB/s, segments per send).
fn raw_gso(a: &Punched, v: &Punched, secs: f64, size: usize) -> (f64, usize) {
    use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
    let rs = a.socket.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        // quinn-udp makes the socket non-blocking; block again (with a timeout) so that
        // the receiver sleeps instead of ending when it has caught up with the sender
        // (ending there measured a burst, not a rate: the old baseline's swings).
        let state = UdpSocketState::new((&rs).into()).unwrap();
        rs.set_nonblocking(false).unwrap();
        rs.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        let start = Instant::now();
        loop {
            let mut meta = [RecvMeta::default()];
            let mut bufs = [std::io::IoSliceMut::new(&mut buf)];
            match state.recv((&rs).into(), &mut bufs, &mut meta) {
                Ok(k) if k > 0 => {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    n += meta[0].len as u64;
                }
                // 200 ms without a datagram: the sender is done (or never started).
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if first.is_some() || start.elapsed() > Duration::from_secs(5) {
                        break;
                    }
                }
                _ => break,
            }
        }
        let span = first.map(|f| (last - f).as_secs_f64()).unwrap_or(1.0);
        n as f64 / span.max(1e-3) / 1e6
    });
    let ss = v.socket.try_clone().unwrap();
    let to = v.peer;
    let state = UdpSocketState::new((&ss).into()).unwrap();
    // Blocking sends (quinn-udp made it non-blocking): a full socket buffer puts the
    // sender to sleep instead of spinning on the receiver's core.
    ss.set_nonblocking(false).unwrap();
    let segs = state.max_gso_segments().clamp(1, (64 * 1024 - 1) / size);
    let d = vec![0xa5u8; size * segs];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t = Transmit {
            destination: to,
            ecn: None,
            contents: &d,
            segment_size: (segs > 1).then_some(size),
            src_ip: None,
        };
        let _ = state.send((&ss).into(), &t);
    }
    let got = reader.join().unwrap();
    assert!(
        got > 0.0,
        "raw UDP (GSO): nothing arrived over the punched path"
    );
    (got, segs)
}
