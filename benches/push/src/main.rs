//! `cargo xtask bench push`: the zs-services messages against mosquitto
//! (Debian's `mosquitto`, MQTT 3.1.1, QoS 1, persistence on, started here as
//! a plain process with its own config in a temp dir; the MQTT side is driven
//! by `rumqttc`), in the Open MQTT Benchmark Suite's shapes, each bounded in
//! time:
//!
//! - **p2p** (`p2p-1K-1K-1K-1K`): 1,000 connected users, each sending one
//!   64-byte message per second to the next user (1,000 topics for MQTT,
//!   user-to-user messages for us), 1,000 messages per second in all; the
//!   figure is the p99 of send-to-receive latency.
//! - **fan-out** (`fanout-1-1k-1-1K`): one publisher, 1,000 subscribers of one
//!   topic (a named group for us), one message per second, so 1,000
//!   deliveries per second; p99 latency.
//! - **offline enqueue**: messages to a user who is offline (for MQTT a
//!   persistent session, `clean_session = false`, subscribed at QoS 1 and
//!   disconnected), from 8 senders with 64 in flight each, counted when the sender's acknowledgement
//!   arrives (our `msg.send` answer comes after the fsync; mosquitto's PUBACK
//!   before anything reaches the disk: persistence writes its database on
//!   its autosave interval). Messages per second.
//!
//!   A second figure of ours, `zs-offline-enqueue-periodic`, runs the same
//!   service with messages durability `Periodic(1 s)` (answered once buffered,
//!   fsynced within 1 s): the promise closest to mosquitto's (whose
//!   `autosave_interval` is 1,800 s by default), still the stronger one.
//!
//! Ratios: `p2p_p99_vs_mosquitto` and `fanout_p99_vs_mosquitto` are
//! theirs/ours, `offline_enqueue_vs_mosquitto` and
//! `offline_enqueue_periodic_vs_mosquitto` ours/theirs: above 1.0 we are
//! ahead.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zs_bench_harness::{Better, Options, Suite};
use zs_core::{Client, Registry, Server};
use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, SuiteId, ZsSecurity};
use zs_services::messages::push_kind;
use zs_services::{Message, Services, ServicesClient, ServicesConfig};
use zs_wire::DataFrame;

const BODY: usize = 64;
/// Offline enqueue: senders on each side, each with this many in flight.
const SENDERS: usize = 8;
const IN_FLIGHT: usize = 64;

/// Latencies in microseconds, shared by every receiver.
type Lat = Arc<Mutex<Vec<u64>>>;

fn p99_ms(lat: &Lat) -> f64 {
    let mut v = std::mem::take(&mut *lat.lock().expect("lat"));
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)] as f64 / 1e3
}

/// A body carrying the send time (µs since `epoch`).
fn body(epoch: Instant) -> Vec<u8> {
    let mut b = vec![0u8; BODY];
    b[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_le_bytes());
    b
}

fn latency_us(epoch: Instant, body: &[u8]) -> Option<u64> {
    let sent = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    Some((epoch.elapsed().as_micros() as u64).saturating_sub(sent))
}

/// An epoll backend with `loops` event loops.
fn backend(loops: usize) -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops,
            ..zs_io::Config::default()
        })
        .expect("epoll"),
    )
}

/// Event loops of the server (mosquitto runs one thread).
const SERVER_LOOPS: usize = 1;
/// Event loops of our 1,000 subscribers: as many as the tokio workers the
/// rumqttc clients of the other side run on ([`Theirs::start`]), so neither
/// side's receivers get more threads than the other's (session 13: they sat
/// on one loop against rumqttc's two workers).
const CLIENT_LOOPS: usize = 2;

/// Our side: a server with the services, `n` users logged in and subscribed,
/// each push recorded (and DIRECT ones acknowledged in batches).
struct Ours {
    _server: Server,
    clients: Vec<ServicesClient>,
    names: Vec<String>,
    offline_senders: Vec<ServicesClient>,
    _acker: std::thread::JoinHandle<()>,
}

impl Ours {
    fn start(
        dir: &std::path::Path,
        n: usize,
        epoch: Instant,
        lat: Lat,
        durability: zs_db::Durability,
    ) -> Ours {
        let mut cfg = ServicesConfig::cheap_for_tests();
        cfg.messages.durability = durability;
        cfg.messages.max_queue_len = 1 << 20;
        cfg.messages.max_queue_bytes = 1 << 30;
        cfg.messages.max_total_len = 1 << 22;
        cfg.messages.max_total_bytes = 1 << 32;
        cfg.messages.max_groups_per_peer = 4;
        let services = Services::open_dir(dir, cfg).expect("services");
        let (identity, _) =
            ServerIdentity::generate(&ring::rand::SystemRandom::new()).expect("identity");
        let mut ccfg = ClientConfig::pinned(identity.fingerprint());
        ccfg.suites = vec![SuiteId::Aes256Gcm];
        let provider = Arc::new(ZsSecurity::new(
            Some(Arc::new(ccfg)),
            Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
        ));
        let mut r = Registry::new();
        services.register(&mut r);
        // Every connection comes from 127.0.0.1: raise the per-address caps
        // (the handshake one is the security layer's).
        let opts = zs_core::Options {
            max_connections_per_ip: 10 * n + 100,
            max_connections: 10 * n + 100,
            idle_timeout: None,
            ..zs_core::Options::default()
        };
        let handshakes = zs_secure::compose::Handshakes {
            max_per_ip: 1_000,
            ..Default::default()
        };
        let server = Server::start(
            zs_secure::compose::secure_with(
                backend(SERVER_LOOPS),
                provider.clone(),
                &zs_io::Config::default(),
                handshakes,
            ),
            r,
            opts,
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("server");
        let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        let senders: Vec<String> = (0..SENDERS).map(|i| format!("sender{i}")).collect();
        for name in names
            .iter()
            .chain(senders.iter())
            .chain([&"offline".to_string()])
        {
            services
                .accounts
                .create_user(name, "push-bench-pw", false)
                .expect("user");
        }
        let cb = zs_secure::compose::secure(backend(CLIENT_LOOPS), provider);
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<(usize, u64)>();
        let mut clients = Vec::with_capacity(n);
        for (i, name) in names.iter().enumerate() {
            let mut reg = Registry::new();
            let lat = lat.clone();
            let ack_tx = Mutex::new(ack_tx.clone());
            reg.direct_stream("msg.push", move |_, df| {
                let Ok(m) = Message::read(&mut df.reader()) else {
                    return;
                };
                if let Some(us) = latency_us(epoch, &m.body) {
                    lat.lock().expect("lat").push(us);
                }
                if m.kind == push_kind::DIRECT {
                    let _ = ack_tx.lock().expect("ack").send((i, m.id));
                }
            });
            let c = ServicesClient::new(
                Client::connect(
                    cb.clone(),
                    reg,
                    zs_core::Options::client(),
                    server.local_addr(),
                )
                .expect("connect"),
            );
            c.login(name, "push-bench-pw").expect("login");
            c.subscribe().expect("subscribe");
            c.join("fan").expect("join");
            clients.push(c);
        }
        // Acknowledge pushes every 50 ms, one msg.ack per client.
        let ackers = clients.clone();
        let acker = std::thread::spawn(move || loop {
            let first = match ack_rx.recv() {
                Ok(x) => x,
                Err(_) => return,
            };
            std::thread::sleep(Duration::from_millis(50));
            let mut per: HashMap<usize, Vec<u64>> = HashMap::new();
            per.entry(first.0).or_default().push(first.1);
            while let Ok((i, id)) = ack_rx.try_recv() {
                per.entry(i).or_default().push(id);
            }
            let calls: Vec<_> = per
                .into_iter()
                .map(|(i, ids)| {
                    let mut df = DataFrame::new().with(ids.len() as u64);
                    for id in ids {
                        df.push(id);
                    }
                    ackers[i].client().call_stream("msg.ack", df)
                })
                .collect();
            for c in calls {
                let _ = c.wait();
            }
        });
        let offline_senders = senders
            .iter()
            .map(|name| {
                let c = ServicesClient::new(
                    Client::connect(
                        cb.clone(),
                        Registry::new(),
                        zs_core::Options::client(),
                        server.local_addr(),
                    )
                    .expect("connect"),
                );
                c.login(name, "push-bench-pw").expect("login");
                c
            })
            .collect();
        Ours {
            _server: server,
            clients,
            names,
            offline_senders,
            _acker: acker,
        }
    }

    /// Every user sends one message per second to the next, for `secs`.
    fn p2p(&self, epoch: Instant, secs: u64) {
        let n = self.clients.len();
        let t0 = Instant::now();
        let total = n as u64 * secs;
        let mut pending = std::collections::VecDeque::new();
        for k in 0..total {
            let due = t0 + Duration::from_micros(k * 1_000_000 / n as u64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let i = (k as usize) % n;
            let to = &self.names[(i + 1) % n];
            let df = DataFrame::new()
                .with(to.as_str())
                .with(0u64)
                .with(body(epoch));
            pending.push_back(self.clients[i].client().call_stream("msg.send", df));
            while pending.len() > 256 {
                pending.pop_front().expect("front").wait().expect("send");
            }
        }
        for p in pending {
            p.wait().expect("send");
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// One publisher, every user a member of group `fan`: one message per second.
    fn fanout(&self, epoch: Instant, secs: u64) {
        let t0 = Instant::now();
        for k in 0..secs {
            let due = t0 + Duration::from_secs(k);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let got = self.clients[0]
                .group_send("fan", &body(epoch))
                .expect("group send");
            assert_eq!(got as usize, self.clients.len(), "fan-out reach");
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// `count` messages to the offline user from [`SENDERS`] senders, each
    /// with [`IN_FLIGHT`] in flight; messages per second.
    fn offline(&self, epoch: Instant, count: usize) -> f64 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for sender in &self.offline_senders {
                s.spawn(move || {
                    let mut pending = std::collections::VecDeque::new();
                    for _ in 0..count / SENDERS {
                        let df = DataFrame::new()
                            .with("offline")
                            .with(0u64)
                            .with(body(epoch));
                        pending.push_back(sender.client().call_stream("msg.send", df));
                        if pending.len() >= IN_FLIGHT {
                            pending.pop_front().expect("front").wait().expect("send");
                        }
                    }
                    for p in pending {
                        p.wait().expect("send");
                    }
                });
            }
        });
        (count / SENDERS * SENDERS) as f64 / t0.elapsed().as_secs_f64()
    }
}

/// The uid and gid of system user `name` (from /etc/passwd).
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// mosquitto as a child process with its own config and persistence
/// directory; killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &std::path::Path) -> Option<Mosquitto> {
        let program = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|p| Command::new(p).arg("-h").output().is_ok())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).expect("mosquitto dir");
        // Started as root, mosquitto drops to its `mosquitto` user: its
        // persistence directory must be that user's, or it cannot save.
        if let Some((uid, gid)) = system_user("mosquitto") {
            for d in [dir, data.as_path()] {
                let _ = std::os::unix::fs::chown(d, Some(uid), Some(gid));
            }
        }
        let conf = data.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\nlog_dest none\n",
                data.display()
            ),
        )
        .expect("mosquitto.conf");
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let m = Mosquitto { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(m);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto did not listen on {port}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Their side: `n` rumqttc clients on one tokio runtime, each subscribed
/// (QoS 1) to its own topic `u/<i>` and to `fan`.
struct Theirs {
    rt: tokio::runtime::Runtime,
    clients: Vec<rumqttc::AsyncClient>,
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Theirs {
    fn start(port: u16, n: usize, epoch: Instant, lat: Lat) -> Theirs {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(CLIENT_LOOPS)
            .enable_all()
            .build()
            .expect("runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::with_capacity(n);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        for i in 0..n {
            let mut o = MqttOptions::new(format!("u{i}"), "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(60));
            o.set_clean_session(true);
            let (c, mut ev) = AsyncClient::new(o, 1024);
            let lat = lat.clone();
            let stop = stop.clone();
            let ready = ready_tx.clone();
            let sub = c.clone();
            rt.spawn(async move {
                let mut subscribed = false;
                while !stop.load(Ordering::Relaxed) {
                    match ev.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) if !subscribed => {
                            subscribed = true;
                            let _ = sub.subscribe(format!("u/{i}"), QoS::AtLeastOnce).await;
                            let _ = sub.subscribe("fan", QoS::AtLeastOnce).await;
                        }
                        Ok(Event::Incoming(Packet::SubAck(s))) if s.pkid == 2 => {
                            let _ = ready.send(());
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some(us) = latency_us(epoch, &p.payload) {
                                lat.lock().expect("lat").push(us);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            eprintln!("mqtt client u{i}: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
            clients.push(c);
        }
        for _ in 0..n {
            ready_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("every MQTT client subscribed");
        }
        Theirs {
            rt,
            clients,
            port,
            stop,
        }
    }

    fn p2p(&self, epoch: Instant, secs: u64) {
        let n = self.clients.len();
        let t0 = Instant::now();
        for k in 0..n as u64 * secs {
            let due = t0 + Duration::from_micros(k * 1_000_000 / n as u64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let i = (k as usize) % n;
            self.clients[i]
                .try_publish(
                    format!("u/{}", (i + 1) % n),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    body(epoch),
                )
                .expect("publish");
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    fn fanout(&self, epoch: Instant, secs: u64) {
        let t0 = Instant::now();
        for k in 0..secs {
            let due = t0 + Duration::from_secs(k);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            self.clients[0]
                .try_publish("fan", rumqttc::QoS::AtLeastOnce, false, body(epoch))
                .expect("publish");
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// `count` QoS 1 messages to a persistent session that is offline,
    /// counted by PUBACK; messages per second.
    fn offline(&self, epoch: Instant, count: usize, round: u64) -> f64 {
        use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
        let port = self.port;
        self.rt.block_on(async move {
            // The offline subscriber: a persistent session, subscribed, gone.
            let mut o = MqttOptions::new(format!("offline-{round}"), "127.0.0.1", port);
            o.set_clean_session(false);
            let (c, mut ev) = AsyncClient::new(o, 16);
            c.subscribe(format!("off/{round}"), QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            loop {
                if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.expect("poll") {
                    break;
                }
            }
            c.disconnect().await.expect("disconnect");
            loop {
                match ev.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let per = count / SENDERS;
            // Every sender connected before the clock starts (ours are too).
            let mut conns = Vec::new();
            for k in 0..SENDERS {
                let mut o = MqttOptions::new(format!("sender-{round}-{k}"), "127.0.0.1", port);
                o.set_inflight(IN_FLIGHT as u16);
                let (c, mut ev) = AsyncClient::new(o, 2 * IN_FLIGHT);
                loop {
                    if let Event::Incoming(Packet::ConnAck(_)) = ev.poll().await.expect("poll") {
                        break;
                    }
                }
                conns.push((c, ev));
            }
            let t0 = Instant::now();
            let mut senders = Vec::new();
            for (c, mut ev) in conns {
                let topic = format!("off/{round}");
                let producer = tokio::spawn(async move {
                    for _ in 0..per {
                        c.publish(topic.as_str(), QoS::AtLeastOnce, false, body(epoch))
                            .await
                            .expect("publish");
                    }
                    c
                });
                senders.push(tokio::spawn(async move {
                    let mut acked = 0;
                    while acked < per {
                        if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.expect("poll") {
                            acked += 1;
                        }
                    }
                    let c = producer.await.expect("producer");
                    let _ = c.disconnect().await;
                }));
            }
            for s in senders {
                s.await.expect("sender");
            }
            (per * SENDERS) as f64 / t0.elapsed().as_secs_f64()
        })
    }
}

impl Drop for Theirs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn main() {
    let opts = Options::from_env();
    let users = 1_000;
    // Offline samples of 10,000 messages (half a second or so): at 2,000
    // one sample took ~0.1 s and swung 5x with the machine's load.
    let (secs, offline) = if opts.quick {
        (6, 10_000)
    } else {
        (20, 50_000)
    };
    let mut suite = Suite::from_options("push", &opts, 2, 3);
    if let Err(e) = zs_bench_harness::raw::raise_fd_limit() {
        eprintln!("cannot raise the descriptor limit: {e}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let epoch = Instant::now();
    let Some(mosq) = Mosquitto::start(dir.path()) else {
        eprintln!("skipped: mosquitto not installed");
        return;
    };
    let lat_ours: Lat = Arc::default();
    let lat_theirs: Lat = Arc::default();
    let ours = Arc::new(Ours::start(
        &dir.path().join("zs"),
        users,
        epoch,
        lat_ours.clone(),
        zs_db::Durability::Immediate,
    ));
    // The same service with its messages answered once buffered and fsynced
    // within 1 s: the promise closest to mosquitto's (still stronger).
    let ours_periodic = Ours::start(
        &dir.path().join("zs-periodic"),
        0,
        epoch,
        Arc::default(),
        zs_db::Durability::PERIODIC_1S,
    );
    let theirs = Arc::new(Theirs::start(mosq.port, users, epoch, lat_theirs.clone()));

    let (o, l) = (ours.clone(), lat_ours.clone());
    suite.case("zs-p2p-p99", "ms", Better::Lower, move || {
        l.lock().expect("lat").clear();
        o.p2p(epoch, secs);
        p99_ms(&l)
    });
    let (t, l) = (theirs.clone(), lat_theirs.clone());
    suite.case("mosquitto-p2p-p99", "ms", Better::Lower, move || {
        l.lock().expect("lat").clear();
        t.p2p(epoch, secs);
        p99_ms(&l)
    });
    let (o, l) = (ours.clone(), lat_ours.clone());
    suite.case("zs-fanout-p99", "ms", Better::Lower, move || {
        l.lock().expect("lat").clear();
        o.fanout(epoch, secs);
        p99_ms(&l)
    });
    let (t, l) = (theirs.clone(), lat_theirs.clone());
    suite.case("mosquitto-fanout-p99", "ms", Better::Lower, move || {
        l.lock().expect("lat").clear();
        t.fanout(epoch, secs);
        p99_ms(&l)
    });
    let o = ours.clone();
    suite.case(
        "zs-offline-enqueue",
        "msgs_per_s",
        Better::Higher,
        move || o.offline(epoch, offline),
    );
    let t = theirs.clone();
    let mut round = 0;
    suite.case(
        "mosquitto-offline-enqueue",
        "msgs_per_s",
        Better::Higher,
        move || {
            round += 1;
            t.offline(epoch, offline, round)
        },
    );
    suite.case(
        "zs-offline-enqueue-periodic",
        "msgs_per_s",
        Better::Higher,
        move || ours_periodic.offline(epoch, offline),
    );
    suite.run();
    suite.ratio("p2p_p99_vs_mosquitto", "zs-p2p-p99", "mosquitto-p2p-p99");
    suite.ratio(
        "fanout_p99_vs_mosquitto",
        "zs-fanout-p99",
        "mosquitto-fanout-p99",
    );
    suite.ratio(
        "offline_enqueue_vs_mosquitto",
        "zs-offline-enqueue",
        "mosquitto-offline-enqueue",
    );
    suite.ratio(
        "offline_enqueue_periodic_vs_mosquitto",
        "zs-offline-enqueue-periodic",
        "mosquitto-offline-enqueue",
    );
    suite.note(format!(
        "{users} users connected on each side; p2p: each sends 1 msg/s of {BODY} B to the next for {secs} s \
         (ours: msg.send, queued and fsynced, pushed at once, acknowledged in batches every 50 ms; \
         theirs: QoS 1 publish to the next user's topic); fan-out: 1 msg/s to all {users} for {secs} s \
         (ours: a named group, live; theirs: one topic, QoS 1); latency = send to receipt in this process, \
         p99 per sample; offline enqueue: {offline} messages from {SENDERS} senders, {IN_FLIGHT} in flight each, to an offline user (ours: \
         fsynced before each answer; zs-offline-enqueue-periodic: messages durability Periodic(1 s), answered \
         once buffered, fsynced within 1 s) / a persistent MQTT session (mosquitto: PUBACK before persistence, \
         which writes its whole database every autosave_interval, default 1800 s, and at shutdown, never per \
         message: a weaker promise than ours); zs: AES-256-GCM, epoll, {SERVER_LOOPS} server loop and {CLIENT_LOOPS} client loops \
         (rumqttc: {CLIENT_LOOPS} tokio workers), a fan-out's pushes sent by up to one thread per core \
         (zs_core::send_to_each); mosquitto 2 \
         with persistence true, max_queued_messages 0"
    ));
    suite.finish();
    drop(theirs);
    drop(ours);
    drop(mosq);
}
