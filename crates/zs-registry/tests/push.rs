//! Push watches and the trust model of the embedded registry service, over
//! real zs-core connections: flow control (a watcher that does not read is
//! sent at most its window, then one coalesced push or a resync, or is dropped
//! after `max_stall`), ordering, resume after a lost connection, and leases
//! usable only by the connection that granted them (or an admin).
#![cfg(target_os = "linux")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{raw_backend, EmbeddedServer};
use zs_core::{Client, Options, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ZsSecurity};
use zs_registry::proto::{Push, CMD, CMD_ACK, CMD_WATCH, PUSH};
use zs_registry::service::{install, ServiceConfig};
use zs_registry::{
    Change, Embedded, EmbeddedConfig, Error, Instance, Limits, LockState, Remote, ServiceRegistry,
    WatchItem,
};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A raw zs-core client that records every `reg.push` it gets.
fn recording_client(es: &EmbeddedServer) -> (Client, Arc<Mutex<Vec<Push>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let mut cmds = zs_core::Registry::new();
    cmds.direct_console(PUSH, move |_, text| {
        g.lock().unwrap().push(serde_json::from_str(text).unwrap());
    });
    let c = es.raw_client_with(cmds);
    (c, got)
}

/// A registry server, a writer with a lease, and a raw client that opened a
/// push watch with `watch` (a `reg.watch` request) and records its pushes.
struct Setup {
    es: EmbeddedServer,
    writer: Remote,
    lease: i64,
    c: Client,
    got: Arc<Mutex<Vec<Push>>>,
}

fn setup(cfg: EmbeddedConfig, watch: &str) -> Setup {
    let es = EmbeddedServer::start(cfg, ServiceConfig::default());
    let writer = es.client();
    let lease = writer.grant(Duration::from_secs(30)).unwrap();
    let (c, got) = recording_client(&es);
    c.call(CMD_WATCH, watch).wait().unwrap();
    wait_until("the snapshot", || got.lock().unwrap().len() == 1);
    Setup {
        es,
        writer,
        lease,
        c,
        got,
    }
}

impl Setup {
    /// Registers `k/0` … `k/{n-1}`.
    fn register(&self, n: usize) {
        for i in 0..n {
            self.writer
                .register(self.lease, &Instance::new("k", &i.to_string(), "h:1"))
                .unwrap();
        }
    }
    fn pushes(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

fn events_in(p: &Push) -> Vec<i64> {
    match p {
        Push::Events { events, .. } => events.iter().map(|e| e.revision).collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

#[test]
fn a_watcher_that_does_not_read_gets_its_window_then_one_coalesced_push() {
    let s = setup(
        EmbeddedConfig::default(),
        r#"{"wid":7,"kind":"k","window":4}"#,
    );
    // 1 snapshot + 3 events fill the window of 4; the rest is held back
    s.register(40);
    wait_until("a full window", || s.pushes() == 4);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.pushes(), 4, "nothing beyond the window");
    // consuming them releases everything missed in one push, in order
    s.c.send_direct_console(CMD_ACK, r#"{"wid":7,"n":4}"#)
        .unwrap();
    wait_until("the coalesced push", || s.pushes() == 5);
    let all: Vec<i64> = s.got.lock().unwrap()[1..]
        .iter()
        .flat_map(events_in)
        .collect();
    assert_eq!(all.len(), 40, "every change exactly once");
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "revision order: {all:?}"
    );
    assert_eq!(s.es.reg.as_ref().unwrap().watcher_count(), 1);
}

#[test]
fn a_stalled_watcher_behind_compaction_gets_a_resync() {
    let s = setup(
        EmbeddedConfig {
            history: 4,
            ..EmbeddedConfig::default()
        },
        r#"{"wid":1,"kind":"k","window":1}"#,
    );
    s.register(10);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.pushes(), 1);
    s.c.send_direct_console(CMD_ACK, r#"{"wid":1,"n":1}"#)
        .unwrap();
    wait_until("the resync", || s.pushes() == 2);
    let second = s.got.lock().unwrap()[1].clone();
    match second {
        Push::Snapshot {
            resync: true,
            snapshot,
            ..
        } => assert_eq!(snapshot.instances.len(), 10),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_watcher_stalled_too_long_is_dropped_and_told() {
    let s = setup(
        EmbeddedConfig {
            limits: Limits {
                max_stall: Duration::from_millis(300),
                ..Limits::default()
            },
            ..EmbeddedConfig::default()
        },
        r#"{"wid":3,"window":2}"#,
    );
    s.register(5);
    let reg = s.es.reg.as_ref().unwrap().clone();
    wait_until("the drop", || reg.watcher_count() == 0);
    wait_until("the notice", || {
        matches!(
            s.got.lock().unwrap().last(),
            Some(Push::Dropped { wid: 3, .. })
        )
    });
    assert_eq!(s.pushes(), 3, "the window (2), then the notice");
    // the connection itself carries on
    assert!(s.c.call(CMD, r#"{"op":"list"}"#).wait().is_ok());
}

#[test]
fn watchers_of_a_closed_connection_are_released() {
    let es = EmbeddedServer::start(EmbeddedConfig::default(), ServiceConfig::default());
    let (c, _got) = recording_client(&es);
    for wid in 0..3 {
        c.call(CMD_WATCH, &format!(r#"{{"wid":{wid},"window":8}}"#))
            .wait()
            .unwrap();
    }
    let reg = es.reg.as_ref().unwrap().clone();
    assert_eq!(reg.watcher_count(), 3);
    // a second open of the same id is refused
    assert!(c.call(CMD_WATCH, r#"{"wid":1,"window":8}"#).wait().is_err());
    c.close();
    wait_until("release", || reg.watcher_count() == 0);
}

#[test]
fn a_remote_watch_resumes_after_its_connection_is_cut() {
    let es = EmbeddedServer::start(EmbeddedConfig::default(), ServiceConfig::default());
    let writer = es.client();
    let lease = writer.grant(Duration::from_secs(30)).unwrap();
    let watcher = es.client();
    let mut w = watcher.watch(Some("k"), None).unwrap();
    assert!(matches!(
        w.next(Duration::from_secs(5)).unwrap(),
        Some(WatchItem::Snapshot { resync: false, .. })
    ));
    writer
        .register(lease, &Instance::new("k", "a", "h:1"))
        .unwrap();
    let first = match w.next(Duration::from_secs(5)).unwrap() {
        Some(WatchItem::Change(e)) => e.revision,
        other => panic!("{other:?}"),
    };
    // cut the watcher's connection on the server side (it connected second)
    let mut peers = es.server.as_ref().unwrap().peers();
    assert_eq!(peers.len(), 2);
    peers.sort_by_key(|p| p.id());
    peers[1].close("test: cut the watcher");
    for id in ["b", "c", "d"] {
        writer
            .register(lease, &Instance::new("k", id, "h:1"))
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match w.next(Duration::from_secs(10)).unwrap() {
            Some(WatchItem::Change(e)) => {
                assert!(e.revision > first);
                if let Change::Put { instance } = e.change {
                    seen.push(instance.id);
                }
            }
            other => panic!("expected the missed changes, got {other:?}"),
        }
    }
    assert_eq!(seen, ["b", "c", "d"], "in order, once, no resync");
}

#[test]
fn another_connection_cannot_touch_a_lease_it_did_not_grant() {
    let es = EmbeddedServer::start(EmbeddedConfig::default(), ServiceConfig::default());
    let owner = es.client();
    let lease = owner.grant(Duration::from_secs(30)).unwrap();
    owner
        .register(lease, &Instance::new("game", "eu-1", "h:1"))
        .unwrap();
    assert_eq!(
        owner.try_lock("boss", lease, "owner").unwrap(),
        LockState::Acquired
    );
    let attacker = es.client();
    let mine = attacker.grant(Duration::from_secs(30)).unwrap();
    let forbidden = |r: Result<(), Error>| match r {
        Err(Error::Forbidden(_)) => {}
        other => panic!("expected forbidden, got {other:?}"),
    };
    forbidden(attacker.revoke(lease));
    forbidden(attacker.keepalive(lease).map(|_| ()));
    forbidden(
        attacker
            .register(lease, &Instance::new("game", "evil", "h:6"))
            .map(|_| ()),
    );
    forbidden(
        attacker
            .register(mine, &Instance::new("game", "eu-1", "h:6"))
            .map(|_| ()),
    );
    forbidden(attacker.deregister("game", "eu-1").map(|_| ()));
    forbidden(attacker.unlock("boss", lease).map(|_| ()));
    forbidden(attacker.try_lock("other", lease, "evil").map(|_| ()));
    assert_eq!(attacker.keepalive_many(&[lease, mine]).unwrap()[0], None);
    // nothing changed
    let snap = owner.list(Some("game")).unwrap();
    assert_eq!(snap.instances.len(), 1);
    assert_eq!(snap.instances[0].addrs[0], "h:1");
    assert_eq!(owner.lock_holder("boss").unwrap().unwrap().lease, lease);
    assert!(owner.keepalive(lease).is_ok());
    // the owner still can
    assert!(owner.deregister("game", "eu-1").unwrap());
    owner.revoke(lease).unwrap();
    assert!(matches!(
        attacker.revoke(lease),
        Err(Error::LeaseNotFound(_))
    ));
}

#[test]
fn an_admin_identity_may_revoke_any_lease() {
    let admin_key = [0x11; 32];
    let user_key = [0x22; 32];
    let mut scfg = ServerConfig::with_psk(b"admin", &admin_key).unwrap();
    scfg.add_psk(b"user", &user_key).unwrap();
    scfg.add_psk(b"eve", &[0x33; 32]).unwrap();
    let server_p: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(None, Some(Arc::new(scfg))));
    let vfs = Arc::new(zs_db::MemVfs::new());
    let reg = Embedded::open(vfs, "registry", EmbeddedConfig::default()).unwrap();
    let mut cmds = zs_core::Registry::new();
    install(
        &mut cmds,
        reg,
        ServiceConfig {
            admins: vec![b"admin".to_vec()],
            ..ServiceConfig::default()
        },
    );
    let be = raw_backend();
    let server = Server::start(
        zs_secure::compose::secure(be.clone(), server_p),
        cmds,
        Options::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr();
    let client = |who: &'static str, key: [u8; 32]| {
        let p: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
            Some(Arc::new(ClientConfig::psk(who.as_bytes(), &key).unwrap())),
            None,
        ));
        let be = zs_secure::compose::secure(be.clone(), p);
        Remote::new(
            move |cmds| Client::connect(be.clone(), cmds, Options::client(), addr),
            Duration::from_secs(5),
        )
    };
    let (user, user2, eve, admin) = (
        client("user", user_key),
        client("user", user_key),
        client("eve", [0x33; 32]),
        client("admin", admin_key),
    );
    let lease = user.grant(Duration::from_secs(30)).unwrap();
    user.register(lease, &Instance::new("s", "1", "h:1"))
        .unwrap();
    // same identity, other connection: not its lease while the owner is connected
    assert!(matches!(user2.revoke(lease), Err(Error::Forbidden(_))));
    // the owner's connection ends: another identity may not claim the lease...
    drop(user);
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(eve.keepalive(lease), Err(Error::Forbidden(_))));
    // ...a connection of the same identity may (a client that reconnected)
    user2.keepalive(lease).unwrap();
    assert!(matches!(eve.revoke(lease), Err(Error::Forbidden(_))));
    admin.keepalive(lease).unwrap();
    admin.revoke(lease).unwrap();
    assert!(user2.list(Some("s")).unwrap().instances.is_empty());
}

#[test]
fn a_lease_keeps_its_owner_identity_across_a_restart() {
    let vfs = Arc::new(zs_db::MemVfs::new());
    let reg = Embedded::open(vfs.clone(), "registry", EmbeddedConfig::default()).unwrap();
    let mine = reg
        .grant_for(Duration::from_secs(30), Some(b"user"))
        .unwrap();
    let anon = reg.grant(Duration::from_secs(30)).unwrap();
    reg.close().unwrap();
    drop(reg);
    let again = Embedded::open(vfs, "registry", EmbeddedConfig::default()).unwrap();
    assert_eq!(again.lease_owner(mine), Some(Some(b"user".to_vec())));
    assert_eq!(again.lease_owner(anon), Some(None));
    assert_eq!(again.lease_owner(12345), None);
}

#[test]
fn watch_floods_and_garbage_acks_are_bounded() {
    let es = EmbeddedServer::start(
        EmbeddedConfig {
            limits: Limits {
                max_waiters_per_conn: 3,
                ..Limits::default()
            },
            ..EmbeddedConfig::default()
        },
        ServiceConfig {
            max_bad_requests: 3,
            ..ServiceConfig::default()
        },
    );
    let (c, _got) = recording_client(&es);
    for wid in 0..3 {
        c.call(CMD_WATCH, &format!(r#"{{"wid":{wid},"window":1000000}}"#))
            .wait()
            .unwrap();
    }
    match c.call(CMD_WATCH, r#"{"wid":9,"window":1}"#).wait() {
        Err(zs_core::Error::Remote { code: 429, .. }) => {}
        other => panic!("a 4th watch on one connection: {other:?}"),
    }
    let reg = es.reg.as_ref().unwrap().clone();
    assert_eq!(reg.watcher_count(), 3);
    // another connection is not affected
    let (other, _) = recording_client(&es);
    other
        .call(CMD_WATCH, r#"{"wid":0,"window":8}"#)
        .wait()
        .unwrap();
    // garbage acks count as bad requests: the sender is closed, the others stay
    for junk in ["", "{", r#"{"wid":"x","n":1}"#] {
        let _ = c.send_direct_console(CMD_ACK, junk);
    }
    wait_until("the hostile connection closed", || !c.is_connected());
    wait_until("its watches released", || reg.watcher_count() == 1);
    assert!(other.is_connected());
}
