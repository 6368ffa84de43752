//! Bad input and failures: a registry restart, etcd killed and back, watches
//! behind compaction, lost leases, hostile connections.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{have_etcd, EmbeddedServer, EtcdProc};
use zs_registry::proto::{CMD, CMD_CHANGES};
use zs_registry::service::ServiceConfig;
use zs_registry::{
    Change, EmbeddedConfig, Error, Instance, Keeper, Limits, ServiceRegistry, WatchItem,
};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn embedded_registry_restart_keeps_state_and_resyncs_watches() {
    let mut es = EmbeddedServer::start(EmbeddedConfig::default(), ServiceConfig::default());
    let reg = es.client();
    let lease = reg.grant(Duration::from_secs(2)).unwrap();
    let orphan = reg.grant(Duration::from_millis(500)).unwrap();
    reg.register(lease, &Instance::new("game", "a", "h:1").with_load(1, 10))
        .unwrap();
    reg.register(orphan, &Instance::new("game", "o", "h:2"))
        .unwrap();
    let ids = reg.allocate_ids("n", 5).unwrap();
    let mut w = reg.watch(Some("game"), None).unwrap();
    assert!(matches!(
        w.next(Duration::from_secs(5)).unwrap(),
        Some(WatchItem::Snapshot { .. })
    ));
    // a change the watch has not fetched yet, then the registry restarts
    reg.register(lease, &Instance::new("game", "b", "h:3"))
        .unwrap();
    es.restart();
    // the first call after the restart finds the old connection dead
    let end = Instant::now() + Duration::from_secs(5);
    while reg.keepalive(lease).is_err() {
        assert!(Instant::now() < end);
    }
    let names: Vec<String> = reg
        .list(Some("game"))
        .unwrap()
        .instances
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(names, ["a", "b", "o"], "state survived the restart");
    assert_eq!(
        reg.allocate_ids("n", 1).unwrap().start,
        ids.end,
        "id counters survived"
    );
    // the open watch was pushed `b` before the restart (or, if it had not
    // taken it in, gets a resync): nothing is lost across the restart
    match w.next(Duration::from_secs(5)).unwrap() {
        Some(WatchItem::Change(e)) => {
            assert!(matches!(e.change, Change::Put { instance } if instance.id == "b"))
        }
        Some(WatchItem::Snapshot {
            snapshot,
            resync: true,
        }) => assert_eq!(snapshot.instances.len(), 3),
        other => panic!("expected b or a resync, got {other:?}"),
    }
    // a watch resuming from before the restart: the history is gone, so it
    // says so with a snapshot
    let mut old = reg.watch(Some("game"), Some(1)).unwrap();
    match old.next(Duration::from_secs(5)).unwrap() {
        Some(WatchItem::Snapshot {
            snapshot,
            resync: true,
        }) => assert_eq!(snapshot.instances.len(), 3),
        other => panic!("expected a resync, got {other:?}"),
    }
    // the lease nobody renews expires after the restart too
    wait_until("orphan expiry", || {
        reg.keepalive(lease).unwrap();
        reg.list(Some("game")).unwrap().instances.len() == 2
    });
    match w.next(Duration::from_secs(5)).unwrap() {
        Some(WatchItem::Change(e)) => {
            assert!(matches!(e.change, Change::Delete { id, .. } if id == "o"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn acknowledged_changes_survive_power_loss() {
    for seed in 0..4u64 {
        let vfs = Arc::new(zs_db::MemVfs::new());
        let reg = zs_registry::Embedded::open(vfs.clone(), "r", EmbeddedConfig::default()).unwrap();
        let lease = reg.grant(Duration::from_secs(60)).unwrap();
        let first_ids = reg.allocate_ids("n", 10).unwrap();
        let acked = std::sync::Mutex::new(Vec::new());
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (reg, acked, stop) = (&reg, &acked, &stop);
                s.spawn(move || {
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let id = format!("{t}-{i}");
                        if reg.register(lease, &Instance::new("p", &id, "h:1")).is_ok() {
                            acked.lock().unwrap().push(id);
                        }
                        i += 1;
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(100 + 30 * seed));
            // power cut while registrations are in flight
            reg.abandon();
            vfs.crash(seed);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let acked = acked.into_inner().unwrap();
        assert!(!acked.is_empty());
        drop(reg);
        let again = reopen_keeping(vfs, "p", &acked, &format!("seed {seed}"));
        assert!(again.keepalive(lease).is_ok(), "the lease survived");
        assert!(
            again.allocate_ids("n", 1).unwrap().start >= first_ids.end,
            "ids never repeat"
        );
    }
}

#[test]
fn embedded_watch_behind_compaction_resyncs() {
    let es = EmbeddedServer::start(
        EmbeddedConfig {
            history: 4,
            ..EmbeddedConfig::default()
        },
        ServiceConfig::default(),
    );
    let reg = es.client();
    let lease = reg.grant(Duration::from_secs(30)).unwrap();
    let r0 = reg
        .register(lease, &Instance::new("c", "0", "h:1"))
        .unwrap();
    for i in 1..10 {
        reg.register(lease, &Instance::new("c", &i.to_string(), "h:1"))
            .unwrap();
    }
    let mut w = reg.watch(Some("c"), Some(r0)).unwrap();
    match w.next(Duration::from_secs(5)).unwrap() {
        Some(WatchItem::Snapshot {
            snapshot,
            resync: true,
        }) => assert_eq!(snapshot.instances.len(), 10),
        other => panic!("{other:?}"),
    }
    // recent enough: no resync
    let r8 = w.revision() - 1;
    let mut w2 = reg.watch(Some("c"), Some(r8)).unwrap();
    assert!(matches!(
        w2.next(Duration::from_secs(5)).unwrap(),
        Some(WatchItem::Change(_))
    ));
}

#[test]
fn etcd_watch_behind_compaction_resyncs() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdProc::start();
    let reg = etcd.registry(Limits::default());
    let lease = reg.grant(Duration::from_secs(30)).unwrap();
    let r0 = reg
        .register(lease, &Instance::new("c", "0", "h:1"))
        .unwrap();
    let mut last = r0;
    for i in 1..10 {
        last = reg
            .register(lease, &Instance::new("c", &i.to_string(), "h:1"))
            .unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.url()], None)
            .await
            .unwrap();
        c.compact(last, None).await.unwrap();
    });
    let mut w = reg.watch(Some("c"), Some(r0)).unwrap();
    match w.next(Duration::from_secs(10)).unwrap() {
        Some(WatchItem::Snapshot {
            snapshot,
            resync: true,
        }) => assert_eq!(snapshot.instances.len(), 10),
        other => panic!("{other:?}"),
    }
    reg.register(lease, &Instance::new("c", "new", "h:1"))
        .unwrap();
    assert!(matches!(
        w.next(Duration::from_secs(10)).unwrap(),
        Some(WatchItem::Change(_))
    ));
}

#[test]
fn etcd_killed_and_back() {
    if !have_etcd() {
        return;
    }
    let mut etcd = EtcdProc::start();
    let reg = etcd.registry(Limits::default());
    let lease = reg.grant(Duration::from_secs(10)).unwrap();
    reg.register(lease, &Instance::new("k", "a", "h:1"))
        .unwrap();
    let mut w = reg.watch(Some("k"), None).unwrap();
    assert!(matches!(
        w.next(Duration::from_secs(10)).unwrap(),
        Some(WatchItem::Snapshot { .. })
    ));
    etcd.kill();
    assert!(
        matches!(reg.list(Some("k")), Err(Error::Unavailable(_))),
        "calls fail while etcd is down"
    );
    assert!(
        w.next(Duration::from_millis(300)).unwrap().is_none(),
        "the watch waits"
    );
    etcd.restart();
    wait_until("etcd back", || reg.keepalive(lease).is_ok());
    assert_eq!(
        reg.list(Some("k")).unwrap().instances.len(),
        1,
        "the lease and its key survived"
    );
    reg.register(lease, &Instance::new("k", "b", "h:2"))
        .unwrap();
    let e = match w.next(Duration::from_secs(15)).unwrap() {
        Some(WatchItem::Change(e)) => e,
        Some(other) => panic!("no resync expected: {other:?}"),
        None => panic!("the watch did not resume"),
    };
    assert!(matches!(e.change, Change::Put { instance } if instance.id == "b"));
}

fn keeper_on(reg: Arc<dyn ServiceRegistry>, ttl: Duration) {
    let keeper = Keeper::start(
        reg.clone(),
        ttl,
        |r, lease| {
            r.register(lease, &Instance::new("kept", "me", "h:1"))
                .map(|_| ())
        },
        |_, _| {},
    )
    .unwrap();
    let first = keeper.lease();
    // renewals keep it for several TTLs
    std::thread::sleep(ttl * 3);
    assert_eq!(
        reg.list(Some("kept")).unwrap().instances.len(),
        1,
        "{}",
        reg.backend()
    );
    // someone revokes the lease: the keeper notices, re-grants, re-registers
    // (tolerant: on a loaded machine a late renewal may already have replaced it)
    let _ = reg.revoke(first);
    wait_until("re-registration", || {
        keeper.lease() != first && reg.list(Some("kept")).unwrap().instances.len() == 1
    });
    assert!(keeper.was_lost());
    drop(keeper);
    assert!(
        reg.list(Some("kept")).unwrap().instances.is_empty(),
        "drop revokes"
    );
}

#[test]
fn keeper_renews_and_recovers_embedded() {
    let es = EmbeddedServer::start(EmbeddedConfig::default(), ServiceConfig::default());
    keeper_on(Arc::new(es.client()), Duration::from_secs(1));
}

#[test]
fn keeper_renews_and_recovers_etcd() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdProc::start();
    keeper_on(
        Arc::new(etcd.registry(Limits::default())),
        Duration::from_secs(2),
    );
}

#[test]
fn hostile_connection_is_closed_others_carry_on() {
    let es = EmbeddedServer::start(
        EmbeddedConfig::default(),
        ServiceConfig {
            max_bad_requests: 4,
            ..ServiceConfig::default()
        },
    );
    let honest = es.client();
    let lease = honest.grant(Duration::from_secs(30)).unwrap();
    let bad = es.raw_client();
    for junk in ["", "{", "[1,2]", r#"{"op":"grant"}"#, r#"{"op":"nuke"}"#] {
        match bad
            .call_timeout(CMD, junk, Some(Duration::from_secs(2)))
            .wait()
        {
            Err(zs_core::Error::Remote { code: 400, .. }) => {}
            Err(_) => break, // closed after the 4th
            Ok(a) => panic!("garbage answered {a}"),
        }
    }
    wait_until("the hostile connection closed", || !bad.is_connected());
    honest
        .register(lease, &Instance::new("h", "ok", "h:1"))
        .unwrap();
    assert_eq!(honest.list(Some("h")).unwrap().instances.len(), 1);
}

#[test]
fn per_connection_bounds() {
    let es = EmbeddedServer::start(
        EmbeddedConfig {
            limits: Limits {
                max_waiters_per_conn: 2,
                max_leases_per_conn: 3,
                ..Limits::default()
            },
            ..EmbeddedConfig::default()
        },
        ServiceConfig {
            max_request_bytes: 1024,
            ..ServiceConfig::default()
        },
    );
    let c = es.raw_client();
    // leases per connection
    for _ in 0..3 {
        c.call(CMD, r#"{"op":"grant","ttl_ms":30000}"#)
            .wait()
            .unwrap();
    }
    match c.call(CMD, r#"{"op":"grant","ttl_ms":30000}"#).wait() {
        Err(zs_core::Error::Remote { code: 429, .. }) => {}
        other => panic!("{other:?}"),
    }
    // waiting watches per connection
    let rev: serde_json::Value =
        serde_json::from_str(&c.call(CMD, r#"{"op":"list"}"#).wait().unwrap()).unwrap();
    let rev = rev["revision"].as_i64().unwrap();
    let poll = format!(r#"{{"after":{rev},"wait_ms":3000}}"#);
    let w1 = c.call(CMD_CHANGES, &poll);
    let w2 = c.call(CMD_CHANGES, &poll);
    std::thread::sleep(Duration::from_millis(200));
    match c.call(CMD_CHANGES, &poll).wait() {
        Err(zs_core::Error::Remote { code: 429, .. }) => {}
        other => panic!("{other:?}"),
    }
    // oversized request
    let big = format!(r#"{{"op":"query","pattern":"{}"}}"#, "x".repeat(2000));
    assert!(matches!(
        c.call(CMD, &big).wait(),
        Err(zs_core::Error::Remote { code: 400, .. })
    ));
    // the waits still complete (empty, at their deadline)
    let a: serde_json::Value = serde_json::from_str(&w1.wait().unwrap()).unwrap();
    assert_eq!(a["events"].as_array().unwrap().len(), 0);
    w2.wait().unwrap();
    // another connection is not affected
    let other = es.client();
    other.grant(Duration::from_secs(5)).unwrap();
}

/// Registrations from many connections at once share fsyncs (the service's
/// sync thread: one fsync answers every change that arrived meanwhile), and
/// every one that was acknowledged survives a power cut.
#[test]
fn the_service_group_commits_across_connections_and_loses_nothing_acknowledged() {
    use zs_core::{Options, Server};
    let mem = Arc::new(zs_db::MemVfs::new());
    let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // every fsync counted, and as slow as a disk's flush (2 ms)
    let n = syncs.clone();
    let vfs = Arc::new(zs_db::SyncHookVfs::new(mem.clone(), move || {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
    }));
    let reg = zs_registry::Embedded::open(vfs, "r", EmbeddedConfig::default()).unwrap();
    let mut cmds = zs_core::Registry::new();
    zs_registry::service::install(&mut cmds, reg.clone(), ServiceConfig::default());
    let backend = common::backend();
    let server = Server::start(
        backend.clone(),
        cmds,
        Options::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr();
    const CLIENTS: usize = 16;
    const EACH: usize = 25;
    let clients: Vec<zs_registry::Remote> = (0..CLIENTS)
        .map(|_| {
            let b = backend.clone();
            zs_registry::Remote::new(
                move |cmds| zs_core::Client::connect(b.clone(), cmds, Options::client(), addr),
                Duration::from_secs(10),
            )
        })
        .collect();
    let leases: Vec<_> = clients
        .iter()
        .map(|c| c.grant(Duration::from_secs(60)).unwrap())
        .collect();
    let before = syncs.load(std::sync::atomic::Ordering::Relaxed);
    let start = std::sync::Barrier::new(CLIENTS);
    let acked = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (c, (client, lease)) in clients.iter().zip(&leases).enumerate() {
            let (start, acked) = (&start, &acked);
            s.spawn(move || {
                start.wait();
                for i in 0..EACH {
                    let id = format!("{c}-{i}");
                    client
                        .register(*lease, &Instance::new("g", &id, "h:1"))
                        .unwrap();
                    acked.lock().unwrap().push(id);
                }
            });
        }
    });
    let used = syncs.load(std::sync::atomic::Ordering::Relaxed) - before;
    let acked = acked.into_inner().unwrap();
    assert_eq!(acked.len(), CLIENTS * EACH);
    eprintln!(
        "{} registrations from {CLIENTS} connections: {used} fsyncs",
        acked.len()
    );
    assert!(
        used * 4 <= acked.len() as u64,
        "{used} fsyncs for {} registrations: no group commit",
        acked.len()
    );
    // power cut now: what was acknowledged is on disk
    reg.abandon();
    mem.crash(7);
    server.shutdown();
    drop(clients);
    drop(reg);
    reopen_keeping(mem, "g", &acked, "group commit");
}

/// Reopens registry "r" on `vfs` after a simulated power cut and checks that
/// every acknowledged instance id of `service` is still registered.
fn reopen_keeping(
    vfs: Arc<dyn zs_db::Vfs>,
    service: &str,
    acked: &[String],
    case: &str,
) -> zs_registry::Embedded {
    let again = zs_registry::Embedded::open(vfs, "r", EmbeddedConfig::default()).unwrap();
    let have: std::collections::BTreeSet<String> = again
        .list(Some(service))
        .unwrap()
        .instances
        .into_iter()
        .map(|i| i.id)
        .collect();
    for id in acked {
        assert!(
            have.contains(id),
            "{case}: acknowledged {id} lost ({} acked, {} kept)",
            acked.len(),
            have.len()
        );
    }
    again
}
