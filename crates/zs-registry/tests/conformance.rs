//! The conformance suite: every test runs against the embedded registry
//! (served over a real zs-core connection) and against a real etcd 3.4.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::both;
use zs_registry::{Change, Error, Instance, Limits, LockState, ServiceRegistry, WatchItem};

/// A TTL that expires quickly on this backend (etcd's minimum is about 2 s).
fn short_ttl(reg: &dyn ServiceRegistry) -> Duration {
    if reg.backend() == "etcd" {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(1000)
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn next_change(w: &mut Box<dyn zs_registry::Watch>) -> zs_registry::Event {
    match w.next(Duration::from_secs(10)).unwrap() {
        Some(WatchItem::Change(e)) => e,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[test]
fn register_list_query_pick() {
    both(Limits::default(), |reg| {
        let lease = reg.grant(Duration::from_secs(30)).unwrap();
        let a = Instance::new("game", "eu-1", "10.0.0.1:7777")
            .with_load(50, 100)
            .with_vaddr("p2pvm:7")
            .with_meta("zone", "eu");
        reg.register(lease, &a).unwrap();
        reg.register(
            lease,
            &Instance::new("game", "eu-2", "10.0.0.2:7777").with_load(10, 100),
        )
        .unwrap();
        reg.register(
            lease,
            &Instance::new("game", "us-1", "10.0.0.3:7777").with_load(10, 100),
        )
        .unwrap();
        reg.register(
            lease,
            &Instance::new("game", "full", "10.0.0.4:7777").with_load(0, 0),
        )
        .unwrap();
        reg.register(
            lease,
            &Instance::new("gamedb", "d1", "10.0.0.5:1").with_load(0, 1),
        )
        .unwrap();

        let games = reg.list(Some("game")).unwrap();
        let ids: Vec<&str> = games.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["eu-1", "eu-2", "full", "us-1"], "{}", reg.backend());
        let got = games.instances.iter().find(|i| i.id == "eu-1").unwrap();
        assert_eq!(got.vaddrs, ["p2pvm:7"]);
        assert_eq!(got.meta["zone"], "eu");
        assert_eq!(got.lease, lease);
        assert_eq!(reg.list(None).unwrap().instances.len(), 5);

        // HostQuery
        let names =
            |p: &str| -> Vec<String> { reg.query(p).unwrap().iter().map(|i| i.name()).collect() };
        assert_eq!(names("game/eu-*"), ["game/eu-1", "game/eu-2"]);
        assert_eq!(names("*/??-1"), ["game/eu-1", "game/us-1"]);
        assert_eq!(names("game*/d?"), ["gamedb/d1"]);
        assert!(names("nothing*").is_empty());

        // least loaded: `full` (0/0 = no capacity, ranked by current 0) is the
        // lightest; make it really full, then eu-2 and us-1 tie at 10%
        assert_eq!(reg.pick("game").unwrap().unwrap().id, "full");
        reg.register(lease, &Instance::new("game", "full", "x:1").with_load(5, 5))
            .unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..40 {
            *counts
                .entry(reg.pick("game").unwrap().unwrap().id)
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!(counts["eu-2"], 20, "ties served in turn: {counts:?}");
        assert_eq!(counts["us-1"], 20);
        assert!(reg.pick("nosuch").unwrap().is_none());

        // load update = register again
        reg.register(
            lease,
            &Instance::new("game", "eu-1", "10.0.0.1:7777").with_load(1, 100),
        )
        .unwrap();
        assert_eq!(reg.pick("game").unwrap().unwrap().id, "eu-1");
        assert!(reg.deregister("game", "eu-1").unwrap());
        assert!(!reg.deregister("game", "eu-1").unwrap());
        reg.revoke(lease).unwrap();
        assert!(reg.list(None).unwrap().instances.is_empty());
    });
}

#[test]
fn late_renewal_loses_the_lease() {
    both(Limits::default(), |reg| {
        let ttl = short_ttl(reg);
        let kept = reg.grant(ttl).unwrap();
        let late = reg.grant(ttl).unwrap();
        reg.register(kept, &Instance::new("svc", "kept", "a:1"))
            .unwrap();
        reg.register(late, &Instance::new("svc", "late", "a:2"))
            .unwrap();
        // renew one, let the other lapse
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            reg.keepalive(kept).unwrap();
            let ids: Vec<String> = reg
                .list(Some("svc"))
                .unwrap()
                .instances
                .into_iter()
                .map(|i| i.id)
                .collect();
            if ids == ["kept"] {
                break;
            }
            assert!(
                Instant::now() < end,
                "the lapsed lease never expired: {ids:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            reg.keepalive(late),
            Err(Error::LeaseNotFound(late)),
            "{}",
            reg.backend()
        );
        assert!(matches!(
            reg.register(late, &Instance::new("svc", "late", "a:2")),
            Err(Error::LeaseNotFound(_))
        ));
        assert!(reg.keepalive(kept).unwrap() >= ttl);
        // a batch renews the live ones and names the lapsed one
        let renewed = reg.keepalive_many(&[kept, late, kept]).unwrap();
        assert_eq!(renewed.len(), 3);
        assert!(renewed[0].is_some_and(|t| t >= ttl), "{}", reg.backend());
        assert_eq!(renewed[1], None);
        assert!(renewed[2].is_some());
        // the keepalive loop kept `kept` alive through the batch path too
        let t0 = Instant::now();
        while t0.elapsed() < ttl + ttl / 2 {
            assert!(reg.keepalive_many(&[kept]).unwrap()[0].is_some());
            std::thread::sleep(ttl / 4);
        }
        assert_eq!(reg.list(Some("svc")).unwrap().instances.len(), 1);
        reg.revoke(kept).unwrap();
        assert!(matches!(reg.revoke(kept), Err(Error::LeaseNotFound(_))));
    });
}

#[test]
fn watch_snapshot_then_ordered_changes() {
    both(Limits::default(), |reg| {
        let lease = reg.grant(Duration::from_secs(30)).unwrap();
        reg.register(lease, &Instance::new("w", "a", "a:1"))
            .unwrap();
        reg.register(lease, &Instance::new("other", "x", "a:1"))
            .unwrap();
        let mut w = reg.watch(Some("w"), None).unwrap();
        let snap = match w.next(Duration::from_secs(10)).unwrap() {
            Some(WatchItem::Snapshot {
                snapshot,
                resync: false,
            }) => snapshot,
            other => panic!("{other:?}"),
        };
        assert_eq!(snap.instances.len(), 1);
        reg.register(lease, &Instance::new("w", "b", "a:2").with_load(3, 9))
            .unwrap();
        reg.register(lease, &Instance::new("other", "y", "a:1"))
            .unwrap(); // filtered out
        assert!(reg.deregister("w", "a").unwrap());
        let lease2 = reg.grant(Duration::from_secs(30)).unwrap();
        reg.register(lease2, &Instance::new("w", "c", "a:3"))
            .unwrap();
        reg.revoke(lease2).unwrap();

        let e1 = next_change(&mut w);
        assert!(e1.revision > snap.revision);
        assert!(
            matches!(&e1.change, Change::Put { instance } if instance.id == "b" && instance.load.current == 3)
        );
        let e2 = next_change(&mut w);
        assert!(matches!(&e2.change, Change::Delete { kind, id } if kind == "w" && id == "a"));
        let e3 = next_change(&mut w);
        assert!(matches!(&e3.change, Change::Put { instance } if instance.id == "c"));
        let e4 = next_change(&mut w);
        assert!(
            matches!(&e4.change, Change::Delete { id, .. } if id == "c"),
            "revoke shows as a delete"
        );
        assert!(
            e1.revision < e2.revision && e2.revision < e3.revision && e3.revision < e4.revision
        );
        assert_eq!(w.revision(), e4.revision);
        assert!(w.next(Duration::from_millis(200)).unwrap().is_none());
        reg.revoke(lease).unwrap();
    });
}

#[test]
fn watch_resumes_from_a_revision() {
    both(Limits::default(), |reg| {
        let lease = reg.grant(Duration::from_secs(30)).unwrap();
        let r0 = reg
            .register(lease, &Instance::new("r", "0", "a:1"))
            .unwrap();
        for i in 1..=5 {
            reg.register(lease, &Instance::new("r", &i.to_string(), "a:1"))
                .unwrap();
        }
        let mut w = reg.watch(Some("r"), Some(r0)).unwrap();
        let ids: Vec<String> = (0..5)
            .map(|_| match next_change(&mut w).change {
                Change::Put { instance } => instance.id,
                c => panic!("{c:?}"),
            })
            .collect();
        assert_eq!(ids, ["1", "2", "3", "4", "5"]);
        reg.revoke(lease).unwrap();
    });
}

#[test]
fn locks_and_leader_election() {
    both(Limits::default(), |reg| {
        let a = reg.grant(Duration::from_secs(30)).unwrap();
        let b = reg.grant(Duration::from_secs(30)).unwrap();
        assert_eq!(
            reg.try_lock("job", a, "node-a").unwrap(),
            LockState::Acquired
        );
        assert_eq!(
            reg.try_lock("job", a, "node-a").unwrap(),
            LockState::Acquired,
            "re-entrant for its lease"
        );
        match reg.try_lock("job", b, "node-b").unwrap() {
            LockState::Held(h) => assert_eq!((h.lease, h.holder.as_str()), (a, "node-a")),
            s => panic!("{s:?}"),
        }
        assert!(matches!(
            reg.lock("job", b, "node-b", Duration::from_millis(200)),
            Err(Error::Locked { .. })
        ));
        assert!(!reg.unlock("job", b).unwrap(), "only the holder unlocks");
        assert!(reg.unlock("job", a).unwrap());
        reg.lock("job", b, "node-b", Duration::from_secs(1))
            .unwrap();
        assert_eq!(reg.lock_holder("job").unwrap().unwrap().holder, "node-b");

        // election: the leader's lease ends, another takes over
        assert_eq!(
            reg.campaign("primary", a, "10.0.0.1:1").unwrap(),
            LockState::Acquired
        );
        assert!(matches!(
            reg.campaign("primary", b, "10.0.0.2:1").unwrap(),
            LockState::Held(_)
        ));
        assert_eq!(reg.leader("primary").unwrap().unwrap().holder, "10.0.0.1:1");
        reg.revoke(a).unwrap();
        assert_eq!(
            reg.campaign("primary", b, "10.0.0.2:1").unwrap(),
            LockState::Acquired
        );
        assert_eq!(reg.leader("primary").unwrap().unwrap().lease, b);
        assert!(reg.resign("primary", b).unwrap());
        assert!(reg.leader("primary").unwrap().is_none());
        assert!(matches!(
            reg.try_lock("x", a, "dead"),
            Err(Error::LeaseNotFound(_))
        ));
        reg.revoke(b).unwrap();
        assert!(
            reg.lock_holder("job").unwrap().is_none(),
            "locks go with the lease"
        );
    });
}

#[test]
fn id_ranges_never_overlap() {
    both(Limits::default(), |reg| {
        let first = reg.allocate_ids("orders", 10).unwrap();
        assert_eq!(first, 1..11);
        let all = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for n in 1..=15u64 {
                        let r = reg.allocate_ids("orders", n).unwrap();
                        assert_eq!(r.end - r.start, n);
                        all.lock().unwrap().push(r);
                    }
                });
            }
        });
        let mut seen = BTreeSet::new();
        for r in all.into_inner().unwrap() {
            for id in r {
                assert!(id >= 11 && seen.insert(id), "id {id} handed out twice");
            }
        }
        assert_eq!(seen.len(), 4 * (1..=15).sum::<usize>());
        assert!(matches!(
            reg.allocate_ids("orders", 0),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            reg.allocate_ids("bad/name", 1),
            Err(Error::Invalid(_))
        ));
        assert_eq!(reg.allocate_ids("other", 1).unwrap(), 1..2);
    });
}

#[test]
fn quotas_and_bad_input() {
    let limits = Limits {
        max_instances: 5,
        max_meta_bytes: 100,
        ..Limits::default()
    };
    both(limits, |reg| {
        let lease = reg.grant(Duration::from_secs(30)).unwrap();
        let fat = Instance::new("q", "fat", "a:1").with_meta("blob", &"x".repeat(200));
        assert!(
            matches!(reg.register(lease, &fat), Err(Error::Quota(_))),
            "{}",
            reg.backend()
        );
        assert!(matches!(
            reg.register(lease, &Instance::new("q/x", "a", "")),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            reg.register(lease, &Instance::new("q", "", "")),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            reg.register(lease, &Instance::new("q", &"i".repeat(65), "")),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(reg.list(Some("a b")), Err(Error::Invalid(_))));
        assert!(matches!(
            reg.grant(Duration::from_secs(365 * 86400)),
            Err(Error::Invalid(_))
        ));
        for i in 0..5 {
            reg.register(lease, &Instance::new("q", &i.to_string(), "a:1"))
                .unwrap();
        }
        assert!(matches!(
            reg.register(lease, &Instance::new("q", "6", "a:1")),
            Err(Error::Quota(_))
        ));
        // replacing at the limit is fine
        reg.register(lease, &Instance::new("q", "0", "a:1").with_load(1, 2))
            .unwrap();
        assert!(matches!(
            reg.register(12345, &Instance::new("q", "0", "a:1")),
            Err(Error::LeaseNotFound(_))
        ));
        reg.revoke(lease).unwrap();
        assert!(matches!(
            reg.keepalive(987654321),
            Err(Error::LeaseNotFound(_))
        ));
    });
}

#[test]
fn flood_of_registrations() {
    both(Limits::default(), |reg| {
        let lease_count = 8;
        let per = 40;
        let leases: Vec<i64> = (0..lease_count)
            .map(|_| reg.grant(Duration::from_secs(30)).unwrap())
            .collect();
        let mut w = reg.watch(Some("flood"), None).unwrap();
        assert!(matches!(
            w.next(Duration::from_secs(10)).unwrap(),
            Some(WatchItem::Snapshot { .. })
        ));
        std::thread::scope(|s| {
            for (t, lease) in leases.iter().enumerate() {
                s.spawn(move || {
                    for i in 0..per {
                        reg.register(*lease, &Instance::new("flood", &format!("{t}-{i}"), "a:1"))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(
            reg.list(Some("flood")).unwrap().instances.len(),
            lease_count * per
        );
        let mut puts = BTreeSet::new();
        let mut last = 0;
        while puts.len() < lease_count * per {
            let e = next_change(&mut w);
            assert!(e.revision > last, "revisions in order");
            last = e.revision;
            if let Change::Put { instance } = e.change {
                puts.insert(instance.id);
            }
        }
        for l in leases {
            reg.revoke(l).unwrap();
        }
        wait_until("all gone", || {
            reg.list(Some("flood")).unwrap().instances.is_empty()
        });
    });
}
