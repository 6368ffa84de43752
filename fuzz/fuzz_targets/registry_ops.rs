//! The registry's request decoder and state machine: arbitrary lines are
//! decoded as `reg` requests (JSON, docs/PROTOCOL.md "zs-registry") or
//! `reg.changes` requests (`~` lines), push watch opens (`@` lines, a
//! `reg.watch` request) and acks (`!` lines, a `reg.ack`), applied to an
//! embedded registry on an in-memory store with small limits. Never a panic;
//! limits hold; no watcher ever has more pushes unacknowledged than its
//! window, and its events arrive in revision order; and what was
//! acknowledged survives a close and reopen (the instances, locks and counters
//! read back equal).
#![no_main]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use zs_registry::proto::{
    decode_request, Ack, Changes, ChangesRequest, Push, Request, WatchRequest,
};
use zs_registry::{Embedded, EmbeddedConfig, Limits, PushSink, ServiceRegistry};

/// Counts what a watcher was sent against what it acknowledged.
#[derive(Default)]
struct Counting {
    st: Mutex<(u32, u32, i64)>, // unacked, window, last revision
}

impl PushSink for Counting {
    fn push(&self, push: Push) -> bool {
        let mut g = self.st.lock().unwrap();
        g.0 += 1;
        assert!(
            g.0 <= g.1 + 1,
            "{} pushes unacknowledged, window {}",
            g.0,
            g.1
        );
        match push {
            Push::Events {
                revision, events, ..
            } => {
                for e in &events {
                    assert!(e.revision > g.2 && e.revision <= revision, "order");
                    g.2 = e.revision;
                }
                g.2 = g.2.max(revision);
            }
            Push::Snapshot { snapshot, .. } => g.2 = snapshot.revision,
            Push::Dropped { .. } => {}
        }
        true
    }
    fn is_open(&self) -> bool {
        true
    }
}

fn apply(reg: &Embedded, req: Request) {
    let _ = match req {
        Request::Grant { ttl_ms } => reg
            .grant(Duration::from_millis(ttl_ms.max(600_000)))
            .map(|_| ()),
        Request::Keepalive { lease } => reg.keepalive(lease).map(|_| ()),
        Request::KeepaliveMany { leases } => reg.keepalive_many(&leases).map(|_| ()),
        Request::Revoke { lease } => reg.revoke(lease),
        Request::Register { lease, instance } => reg.register(lease, &instance).map(|_| ()),
        Request::Deregister { kind, id } => reg.deregister(&kind, &id).map(|_| ()),
        Request::List { kind } => reg.list(kind.as_deref()).map(|_| ()),
        Request::Query { pattern } => reg.query(&pattern).map(|_| ()),
        Request::Pick { kind } => reg.pick(&kind).map(|_| ()),
        Request::TryLock {
            name,
            lease,
            holder,
        } => reg.try_lock(&name, lease, &holder).map(|_| ()),
        Request::Unlock { name, lease } => reg.unlock(&name, lease).map(|_| ()),
        Request::Holder { name } => reg.lock_holder(&name).map(|_| ()),
        Request::Ids { name, count } => reg.allocate_ids(&name, count).map(|_| ()),
    };
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vfs = Arc::new(zs_db::MemVfs::new());
    let cfg = EmbeddedConfig {
        limits: Limits {
            max_instances: 8,
            max_leases: 4,
            max_locks: 4,
            max_counters: 4,
            max_meta_bytes: 256,
            max_id_batch: 1000,
            ..Limits::default()
        },
        ..EmbeddedConfig::default()
    };
    let reg = Embedded::open(vfs.clone(), "r", cfg.clone()).expect("open");
    let mut leases = Vec::new();
    let mut sinks: Vec<(u64, Arc<Counting>)> = Vec::new();
    for line in text.lines().take(64) {
        if let Some(rest) = line.strip_prefix('@') {
            if let Ok(w) = serde_json::from_str::<WatchRequest>(rest) {
                let sink = Arc::new(Counting::default());
                sink.st.lock().unwrap().1 = w.window.clamp(1, 64);
                if reg
                    .subscribe(1, w.wid, w.kind.as_deref(), w.from, w.window, sink.clone())
                    .is_ok()
                {
                    sinks.push((w.wid, sink));
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix('!') {
            if let Ok(a) = serde_json::from_str::<Ack>(rest) {
                if let Some((_, s)) = sinks.iter().find(|(w, _)| *w == a.wid) {
                    let mut g = s.st.lock().unwrap();
                    g.0 = g.0.saturating_sub(a.n);
                    drop(g); // the ack may push to it
                }
                reg.ack(1, a.wid, a.n);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix('~') {
            if let Ok(c) = serde_json::from_str::<ChangesRequest>(rest) {
                let _ = reg.changes(
                    c.kind.as_deref(),
                    c.after,
                    Duration::ZERO,
                    1,
                    Box::new(|c: Changes| {
                        let _ = serde_json::to_string(&c);
                    }),
                );
            }
            continue;
        }
        // `#n`: use the n-th lease granted so far (valid leases reach deeper states)
        let line = match line.split_once('#') {
            Some((a, b)) => {
                let n: usize = b
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0);
                match leases.get(n) {
                    Some(l) => format!(
                        "{a}{l}{}",
                        &b[b.chars().take_while(char::is_ascii_digit).count()..]
                    ),
                    None => line.to_owned(),
                }
            }
            None => line.to_owned(),
        };
        if let Ok(req) = decode_request(&line, 4096) {
            if let Request::Grant { ttl_ms } = req {
                if let Ok(l) = reg.grant(Duration::from_millis(ttl_ms.max(600_000))) {
                    leases.push(l);
                }
                continue;
            }
            apply(&reg, req);
        }
    }
    let (l, i) = reg.counts();
    assert!(l <= 4 && i <= 8, "limits: {l} leases, {i} instances");
    let before = reg.list(None).expect("list");
    let holders: Vec<_> = ["a", "b", "lock"]
        .iter()
        .map(|n| reg.lock_holder(n).expect("holder"))
        .collect();
    let next = reg.allocate_ids("ctr", 1).ok();
    reg.close().expect("close");
    drop(reg);
    let again = Embedded::open(vfs, "r", cfg).expect("reopen");
    let after = again.list(None).expect("list");
    assert_eq!(before, after, "acknowledged state survives a reopen");
    let holders2: Vec<_> = ["a", "b", "lock"]
        .iter()
        .map(|n| again.lock_holder(n).expect("holder"))
        .collect();
    assert_eq!(holders, holders2);
    if let Some(next) = next {
        assert_eq!(again.allocate_ids("ctr", 1).expect("ids").start, next.end);
    }
});
