//! Offline messages and push through a real server on loopback: queueing,
//! ordered delivery with acknowledgements, exactly once across reconnects and
//! restarts, duplicates by nonce, caps, expiry, broadcast and groups.

mod common;

use std::time::Duration;

use common::*;
use zs_services::messages::push_kind;
use zs_services::{code, Services};

const WAIT: Duration = Duration::from_secs(10);

/// A new connection of bob (password `bob-password`) with an inbox, logged in
/// and subscribed; with the number of messages queued for him.
fn bob_subscribed(rig: &Rig) -> (zs_services::ServicesClient, zs_services::Inbox, u64) {
    let (bob, inbox) = rig.client_inbox();
    bob.login("bob", "bob-password").unwrap();
    let queued = bob.subscribe().unwrap();
    (bob, inbox, queued)
}

/// The next `n` pushes of `inbox` and their bodies as text.
fn next(inbox: &zs_services::Inbox, n: usize) -> (Vec<zs_services::Message>, Vec<String>) {
    let got: Vec<_> = (0..n).map(|_| inbox.recv_timeout(WAIT).unwrap()).collect();
    let bodies = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into())
        .collect();
    (got, bodies)
}

#[test]
fn offline_messages_wait_then_arrive_in_order_once() {
    let rig = Rig::mem(cheap());
    let ann = rig.user("ann");
    let bob_id = rig
        .services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    for i in 1..=20u64 {
        let s = ann.send("bob", i, format!("m{i}").as_bytes()).unwrap();
        assert!(!s.duplicate);
    }
    assert_eq!(rig.services.messages.queued(bob_id), 20);
    // First connection: takes 12, acknowledges 10, vanishes.
    let (bob, inbox, queued) = bob_subscribed(&rig);
    assert_eq!(queued, 20);
    let (got, bodies) = next(&inbox, 12);
    assert_eq!(
        bodies,
        (1..=12).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    assert!(got
        .iter()
        .all(|m| m.kind == push_kind::DIRECT && m.from_name == "ann"));
    let ids: Vec<u64> = got.iter().map(|m| m.id).collect();
    assert_eq!(bob.ack(&ids[..10]).unwrap(), 10);
    bob.close();
    // Second connection: the 10 unacknowledged ones, in order, then nothing more.
    let (bob, inbox, queued) = bob_subscribed(&rig);
    assert_eq!(queued, 10);
    let (rest, bodies) = next(&inbox, 10);
    assert_eq!(
        bodies,
        (11..=20).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    bob.ack(&rest.iter().map(|m| m.id).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(rig.services.messages.queued(bob_id), 0);
    assert!(inbox.recv_timeout(Duration::from_millis(200)).is_err());
    // Live: now that bob is subscribed, a new message is pushed at once.
    ann.send("bob", 21, b"live").unwrap();
    assert_eq!(&inbox.recv_timeout(WAIT).unwrap().body[..], b"live");
}

#[test]
fn the_push_window_bounds_unacknowledged_messages() {
    let mut cfg = cheap();
    cfg.messages.push_window = 4;
    let rig = Rig::mem(cfg);
    let ann = rig.user("ann");
    rig.services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    for i in 1..=10u64 {
        ann.send("bob", i, &[i as u8]).unwrap();
    }
    let (bob, inbox, _) = bob_subscribed(&rig);
    let (first, _) = next(&inbox, 4);
    assert!(
        inbox.recv_timeout(Duration::from_millis(300)).is_err(),
        "window exceeded"
    );
    bob.ack(&[first[0].id, first[1].id]).unwrap();
    let more: Vec<u8> = (0..2)
        .map(|_| inbox.recv_timeout(WAIT).unwrap().body[0])
        .collect();
    assert_eq!(more, vec![5, 6]);
}

#[test]
fn a_resend_with_the_same_nonce_is_a_duplicate() {
    let rig = Rig::mem(cheap());
    let ann = rig.user("ann");
    let bob_id = rig
        .services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    let first = ann.send("bob", 7, b"once").unwrap();
    let again = ann.send("bob", 7, b"once").unwrap();
    assert!(again.duplicate && !first.duplicate);
    // An older nonce too (it would break the order).
    assert!(ann.send("bob", 3, b"late").unwrap().duplicate);
    // Nonce 0: no check.
    ann.send("bob", 0, b"x").unwrap();
    ann.send("bob", 0, b"x").unwrap();
    assert_eq!(rig.services.messages.queued(bob_id), 3);
}

#[test]
fn full_queues_and_big_bodies_are_refused_clearly() {
    let mut cfg = cheap();
    cfg.messages.max_queue_len = 5;
    cfg.messages.max_queue_bytes = 1000;
    cfg.messages.max_body = 600;
    let rig = Rig::mem(cfg);
    let ann = rig.user("ann");
    let bob_id = rig
        .services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    let cid_id = rig
        .services
        .accounts
        .create_user("cid", "cid-password", false)
        .unwrap();
    assert_eq!(
        code_of(ann.send("bob", 1, &[0; 601])),
        zs_core::code::TOO_LARGE
    );
    ann.send("bob", 2, &[0; 600]).unwrap();
    let e = ann.send("bob", 3, &[0; 401]).unwrap_err();
    assert_eq!(e.code, code::QUEUE_FULL, "{e}");
    assert!(e.message.contains("queue is full"), "{e}");
    for i in 0..5u64 {
        ann.send("cid", 10 + i, b"x").unwrap();
    }
    assert_eq!(code_of(ann.send("cid", 20, b"x")), code::QUEUE_FULL);
    // Nothing acknowledged was lost.
    assert_eq!(rig.services.messages.queued(bob_id), 1);
    assert_eq!(rig.services.messages.queued(cid_id), 5);
    assert_eq!(code_of(ann.send("nobody", 1, b"x")), code::NO_SUCH_USER);
    // Not logged in.
    let anon = rig.client();
    assert_eq!(code_of(anon.send("bob", 1, b"x")), code::NOT_LOGGED_IN);
    assert_eq!(code_of(anon.fetch(0, 10)), code::NOT_LOGGED_IN);
}

#[test]
fn expired_messages_are_dropped() {
    let mut cfg = cheap();
    cfg.messages.ttl = Duration::from_millis(50);
    let rig = Rig::mem(cfg);
    let ann = rig.user("ann");
    rig.services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    ann.send("bob", 1, b"stale").unwrap();
    std::thread::sleep(Duration::from_millis(120));
    let bob = rig.client();
    bob.login("bob", "bob-password").unwrap();
    assert!(bob.fetch(0, 10).unwrap().is_empty());
    assert_eq!(rig.services.messages.expired(), 1);
    assert_eq!(rig.services.messages.totals(), (0, 0));
}

#[test]
fn fetch_and_ack_pull_mode_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bob_id;
    {
        let rig = Rig::with(Services::open_dir(dir.path(), cheap()).unwrap());
        let ann = rig.user("ann");
        bob_id = rig
            .services
            .accounts
            .create_user("bob", "bob-password", false)
            .unwrap();
        for i in 1..=5u64 {
            ann.send("bob", i, format!("p{i}").as_bytes()).unwrap();
        }
        rig.server.shutdown();
        rig.services.close().unwrap();
        // Closed: a late command gets a clear storage error, nothing is half-written.
        assert_eq!(
            rig.services
                .messages
                .send(1, bob_id, 99, b"late")
                .unwrap_err()
                .code,
            code::STORAGE
        );
    }
    let rig = Rig::with(Services::open_dir(dir.path(), cheap()).unwrap());
    assert_eq!(rig.services.messages.queued(bob_id), 5);
    let bob = rig.client();
    bob.login("bob", "bob-password").unwrap();
    let page = bob.fetch(0, 3).unwrap();
    assert_eq!(page.len(), 3);
    assert_eq!(&page[0].body[..], b"p1");
    let page2 = bob.fetch(page[2].id, 10).unwrap();
    let bodies: Vec<&[u8]> = page2.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, vec![&b"p4"[..], b"p5"]);
    // Acknowledging someone else's id does nothing.
    let ann = rig.client();
    ann.login("ann", "ann-password").unwrap();
    assert_eq!(ann.ack(&[page[0].id]).unwrap(), 0);
    assert_eq!(bob.ack(&[page[0].id, page[1].id]).unwrap(), 2);
    // The pair's nonce survived the restart: a resend is a duplicate.
    assert!(ann.send("bob", 5, b"p5").unwrap().duplicate);
    assert_eq!(bob.fetch(0, 10).unwrap().len(), 3);
}

#[test]
fn broadcast_and_groups_reach_online_users() {
    let rig = Rig::mem(cheap());
    let pw = rig.services.ensure_admin("root").unwrap().unwrap();
    let (admin, admin_inbox) = rig.client_inbox();
    admin.login("root", &pw).unwrap();
    let mut users = Vec::new();
    for n in ["u1", "u2", "u3"] {
        rig.services
            .accounts
            .create_user(n, "password1", false)
            .unwrap();
        let (c, inbox) = rig.client_inbox();
        c.login(n, "password1").unwrap();
        users.push((c, inbox));
    }
    assert_eq!(code_of(users[0].0.broadcast(b"spam")), code::FORBIDDEN);
    assert_eq!(admin.broadcast(b"hello all").unwrap(), 4);
    for (_, inbox) in &users {
        let m = inbox.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (m.kind, &m.body[..], m.from_name.as_str()),
            (push_kind::BROADCAST, &b"hello all"[..], "root")
        );
    }
    admin_inbox.recv_timeout(WAIT).unwrap();
    // Group: u1 and u2 join; u3 does not get it.
    users[0].0.join("Team").unwrap();
    users[1].0.join("team").unwrap();
    assert_eq!(
        code_of(users[2].0.group_send("team", b"x")),
        code::FORBIDDEN
    );
    assert_eq!(users[0].0.group_send("team", b"huddle").unwrap(), 2);
    for (_, inbox) in &users[..2] {
        let m = inbox.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (m.kind, m.group.as_str(), &m.body[..]),
            (push_kind::GROUP, "team", &b"huddle"[..])
        );
    }
    assert!(users[2].1.recv_timeout(Duration::from_millis(200)).is_err());
    users[1].0.leave("team").unwrap();
    assert_eq!(users[0].0.group_send("team", b"again").unwrap(), 1);
    // A member that disconnects is dropped.
    users[0].0.close();
    assert_eq!(
        code_of(users[1].0.group_send("team", b"x")),
        code::FORBIDDEN
    );
    assert_eq!(code_of(users[1].0.join("../bad")), code::INVALID);
}

#[test]
fn group_limits_hold() {
    let mut cfg = cheap();
    cfg.messages.max_groups_per_peer = 3;
    let rig = Rig::mem(cfg);
    let ann = rig.user("ann");
    for i in 0..3 {
        ann.join(&format!("g{i}")).unwrap();
    }
    assert_eq!(code_of(ann.join("g3")), code::QUEUE_FULL);
}

#[test]
fn concurrent_sends_share_commits_and_keep_their_order() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    // A store whose every fsync takes 5 ms (a slow disk), counted.
    let syncs = Arc::new(AtomicU64::new(0));
    let n = syncs.clone();
    let vfs = zs_db::SyncHookVfs::new(Arc::new(zs_db::MemVfs::new()), move || {
        n.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    });
    let env = zs_db::Env::with_vfs(Arc::new(vfs));
    let rig = Rig::with(Services::open(&env, cheap()).unwrap());
    let ann = rig.user("ann");
    let cy = rig.user("cy");
    rig.services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    // 200 sends in flight from ann (nonces 1..=200) and 200 from cy at once.
    let before = syncs.load(Ordering::Relaxed);
    let calls: Vec<_> = (1..=200u64)
        .flat_map(|k| {
            [&ann, &cy].map(|c| {
                c.client().call_stream(
                    "msg.send",
                    zs_wire::DataFrame::new()
                        .with("bob")
                        .with(k)
                        .with(format!("{k}").into_bytes()),
                )
            })
        })
        .collect();
    let mut ids = Vec::new();
    for c in calls {
        let df = c.wait().unwrap();
        let mut r = df.reader();
        let (id, dup) = (r.read_u64().unwrap(), r.read_bool().unwrap());
        assert!(!dup);
        ids.push(id);
    }
    let used = syncs.load(Ordering::Relaxed) - before;
    // One fsync each would be 400 (2 s of sleeping); batches share them.
    assert!(used < 200, "{used} fsyncs for 400 sends: no group commit");
    // Each sender's messages got growing ids, in the order it sent them.
    let (a, c): (Vec<_>, Vec<_>) = ids.chunks(2).map(|p| (p[0], p[1])).unzip();
    assert!(a.windows(2).all(|w| w[0] < w[1]) && c.windows(2).all(|w| w[0] < w[1]));
    // A resend of a nonce in the same burst as its first send: a duplicate.
    let s = ann.send("bob", 200, b"again").unwrap();
    assert!(s.duplicate);
    // bob gets the 400 in id order; each sender's in its order; acks
    // (also batched) empty the queue.
    let (bob, inbox, queued) = bob_subscribed(&rig);
    assert_eq!(queued, 400);
    let (got, _) = next(&inbox, 256);
    let mut got = got;
    let ids256: Vec<u64> = got.iter().map(|m| m.id).collect();
    bob.ack(&ids256).unwrap();
    let (more, _) = next(&inbox, 144);
    got.extend(more);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    for who in ["ann", "cy"] {
        let bodies: Vec<u64> = got
            .iter()
            .filter(|m| m.from_name == who)
            .map(|m| String::from_utf8_lossy(&m.body).parse().unwrap())
            .collect();
        assert_eq!(bodies, (1..=200).collect::<Vec<_>>(), "{who}");
    }
    let rest: Vec<u64> = got[256..].iter().map(|m| m.id).collect();
    assert_eq!(bob.ack(&rest).unwrap(), 144);
    let bob_id = rig.services.accounts.resolve("bob").unwrap();
    assert_eq!(rig.services.messages.queued(bob_id), 0);
}

#[test]
fn periodic_durability_answers_before_the_fsync_immediate_after() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    for (durability, periodic) in [
        (zs_db::Durability::Periodic(Duration::from_secs(3600)), true),
        (zs_db::Durability::Immediate, false),
    ] {
        let syncs = Arc::new(AtomicU64::new(0));
        let n = syncs.clone();
        let vfs = zs_db::SyncHookVfs::new(Arc::new(zs_db::MemVfs::new()), move || {
            n.fetch_add(1, Ordering::Relaxed);
        });
        let env = zs_db::Env::with_vfs(Arc::new(vfs));
        let mut cfg = cheap();
        cfg.messages.durability = durability;
        let rig = Rig::with(Services::open(&env, cfg).unwrap());
        let ann = rig.user("ann");
        let bob = rig
            .services
            .accounts
            .create_user("bob", "bob-password", false)
            .unwrap();
        let before = syncs.load(Ordering::Relaxed);
        for k in 1..=20u64 {
            ann.send("bob", k, b"x").unwrap();
        }
        let used = syncs.load(Ordering::Relaxed) - before;
        if periodic {
            assert_eq!(used, 0, "periodic: answered before any fsync");
        } else {
            assert!(
                used >= 20,
                "immediate: one fsync per sequential send, got {used}"
            );
        }
        assert_eq!(rig.services.messages.queued(bob), 20);
    }
}

#[test]
fn sends_are_buffered_during_an_fsync_and_answered_and_pushed_only_after_their_own() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{mpsc, Arc, Condvar, Mutex};
    // Every fsync of the store can be held until the test opens the gate.
    let hold = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU64::new(0));
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let vfs = {
        let (hold, syncs, gate) = (hold.clone(), syncs.clone(), gate.clone());
        let entered = Mutex::new(entered_tx);
        zs_db::SyncHookVfs::new(Arc::new(zs_db::MemVfs::new()), move || {
            syncs.fetch_add(1, Ordering::SeqCst);
            if hold.load(Ordering::SeqCst) {
                let _ = entered.lock().unwrap().send(());
                let (open, cv) = &*gate;
                let mut g = open.lock().unwrap();
                while !*g {
                    g = cv.wait(g).unwrap();
                }
            }
        })
    };
    let env = zs_db::Env::with_vfs(Arc::new(vfs));
    let rig = Rig::with(Services::open(&env, cheap()).unwrap());
    let ann = Arc::new(rig.user("ann"));
    let bob_id = rig
        .services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    let (_bob, inbox, _) = bob_subscribed(&rig);

    // Send 1: its fsync is held.
    hold.store(true, Ordering::SeqCst);
    let (answered_tx, answered_rx) = mpsc::channel::<u64>();
    let first = {
        let (ann, answered) = (ann.clone(), answered_tx.clone());
        std::thread::spawn(move || {
            let s = ann.send("bob", 1, b"m1").unwrap();
            answered.send(1).unwrap();
            s
        })
    };
    entered_rx
        .recv_timeout(WAIT)
        .expect("the first fsync began");
    let before = syncs.load(Ordering::SeqCst);
    // Sends 2..=11 while it is held: they are checked and written to the
    // store's buffer (the queue counts them), not answered, not pushed.
    let rest = {
        let (ann, answered) = (ann.clone(), answered_tx);
        std::thread::spawn(move || {
            let calls: Vec<_> = (2..=11u64)
                .map(|k| {
                    let df = zs_wire::DataFrame::new()
                        .with("bob")
                        .with(k)
                        .with(format!("m{k}").into_bytes());
                    (k, ann.client().call_stream("msg.send", df))
                })
                .collect();
            for (k, c) in calls {
                c.wait().unwrap();
                answered.send(k).unwrap();
            }
        })
    };
    let (tx, rx) = mpsc::channel();
    let svc = rig.services.messages.clone();
    std::thread::spawn(move || {
        while svc.queued(bob_id) < 11 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = tx.send(());
    });
    rx.recv_timeout(WAIT)
        .expect("the next batch is planned and buffered while the first is fsynced");
    assert_eq!(
        answered_rx.try_recv().ok(),
        None,
        "a send answered before its fsync"
    );
    assert!(
        inbox.try_recv().is_none(),
        "a message pushed before its fsync"
    );
    assert_eq!(
        syncs.load(Ordering::SeqCst),
        before,
        "no fsync began meanwhile"
    );

    // Open the gate: 1 is answered, then 2..=11 after one more fsync.
    hold.store(false, Ordering::SeqCst);
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    assert!(!first.join().unwrap().duplicate);
    rest.join().unwrap();
    let order: Vec<u64> = answered_rx.try_iter().collect();
    assert_eq!(order.len(), 11);
    let used = syncs.load(Ordering::SeqCst) - before;
    assert!(
        used <= 3,
        "sends buffered during one fsync share the next: {used} fsyncs"
    );
    let (_, bodies) = next(&inbox, 11);
    let want: Vec<String> = (1..=11).map(|k| format!("m{k}")).collect();
    assert_eq!(bodies, want, "pushed once each, in order");
}

#[test]
fn the_next_fsync_does_not_wait_for_the_answers_of_the_batch_before() {
    use std::sync::{mpsc, Arc, Condvar, Mutex};
    let env = zs_db::Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
    let services = Services::open(&env, cheap()).unwrap();
    let ann = services
        .accounts
        .create_user("ann", "ann-password", false)
        .unwrap();
    let bob = services
        .accounts
        .create_user("bob", "bob-password", false)
        .unwrap();
    let msgs = &services.messages;
    // Send 1's answer is held (a slow connection) until the gate opens.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (answered_tx, answered_rx) = mpsc::channel::<u64>();
    {
        let (gate, answered) = (gate.clone(), answered_tx.clone());
        msgs.submit_send(
            ann,
            bob,
            1,
            zs_io::Bytes::from_static(b"m1"),
            Box::new(move |r| {
                assert!(r.is_ok(), "{r:?}");
                entered_tx.send(()).unwrap();
                let (open, cv) = &*gate;
                let mut g = open.lock().unwrap();
                while !*g {
                    g = cv.wait(g).unwrap();
                }
                answered.send(1).unwrap();
            }),
        );
    }
    entered_rx
        .recv_timeout(WAIT)
        .expect("send 1 was answered after its fsync");
    // Send 2 is fsynced (visible to a fetch) while 1's answer is still being
    // given; its own answer comes after 1's.
    msgs.submit_send(
        ann,
        bob,
        2,
        zs_io::Bytes::from_static(b"m2"),
        Box::new(move |r| {
            assert!(r.is_ok(), "{r:?}");
            answered_tx.send(2).unwrap();
        }),
    );
    eventually("send 2 is durable while send 1's answer is held", || {
        msgs.fetch(bob, 0, 10).unwrap().len() == 2
    });
    assert_eq!(
        answered_rx.try_recv().ok(),
        None,
        "answers keep their order"
    );
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    let order: Vec<u64> = (0..2)
        .map(|_| answered_rx.recv_timeout(WAIT).unwrap())
        .collect();
    assert_eq!(order, [1, 2]);
}
