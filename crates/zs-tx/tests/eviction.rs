//! The bounded record cache (`Options::cache_records`): over a working set much
//! larger than the cap, the records held stay bounded, every value reads back
//! right (evicted records are reloaded from the backend), and the bank's totals
//! hold in every body read while records come and go.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{run_bank, Bank};
use zs_tx::{Backend, Checkpoint, Db, Options, ZdbBackend};

fn open(dir: &std::path::Path, checkpoint: Checkpoint, cap: u64) -> Db {
    let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir, "ev").unwrap());
    Db::open(
        b,
        Options {
            checkpoint,
            cache_records: Some(cap),
            ..Options::default()
        },
    )
    .unwrap()
}

#[test]
fn cache_stays_bounded_over_a_larger_working_set() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 200u64;
    let db = open(dir.path(), Checkpoint::Immediate, cap);
    let t = db.table::<u32, Vec<u8>>("blobs");
    let value = |i: u32| vec![(i % 251) as u8; 512];
    let mut max_seen = 0;
    // 4,000 records of 512 bytes: 20 times the cap
    for chunk in 0..40u32 {
        db.run(|tx| {
            for i in chunk * 100..chunk * 100 + 100 {
                t.put(tx, &i, &value(i))?;
            }
            Ok(())
        })
        .unwrap();
        max_seen = max_seen.max(db.stats().records);
    }
    // a transaction may hold up to 100 records beyond the cap while it runs
    assert!(max_seen <= cap + 100, "records held: {max_seen}");
    // read everything back in a scattered order, a few records per transaction
    let mut x = 12345u64;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % 4000) as u32;
        let got = db.run(|tx| t.get(tx, &i)).unwrap();
        assert_eq!(got, Some(value(i)), "record {i}");
        max_seen = max_seen.max(db.stats().records);
    }
    let s = db.stats();
    assert!(s.records <= cap, "{s:?}");
    assert!(max_seen <= cap + 100, "records held: {max_seen}");
    assert!(s.evicted >= 3000, "{s:?}");
    // updates of evicted records: read from the store, written back
    for i in (0..4000u32).step_by(97) {
        db.run(|tx| {
            let mut v = t.get(tx, &i)?.unwrap();
            v[0] = 7;
            t.put(tx, &i, &v)
        })
        .unwrap();
    }
    db.close().unwrap();
    drop((db, t));
    // reopened without a bound: everything is there
    let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir.path(), "ev").unwrap());
    let db = Db::open(b, Options::default()).unwrap();
    let t = db.table::<u32, Vec<u8>>("blobs");
    for i in 0..4000u32 {
        let mut want = value(i);
        if i % 97 == 0 {
            want[0] = 7;
        }
        assert_eq!(t.peek(&i).unwrap(), Some(want), "record {i}");
    }
}

#[test]
fn periodic_checkpoints_keep_unwritten_records_cached() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(
        dir.path(),
        Checkpoint::Periodic(Duration::from_secs(3600)),
        50,
    );
    let t = db.table::<u32, u64>("n");
    for i in 0..300u32 {
        db.run(|tx| t.put(tx, &i, &u64::from(i))).unwrap();
    }
    // nothing was checkpointed: nothing could be evicted (it is not in the store)
    assert_eq!(db.stats().evicted, 0);
    assert!(db.stats().records >= 300);
    db.checkpoint().unwrap();
    for i in 300..400u32 {
        db.run(|tx| t.put(tx, &i, &u64::from(i))).unwrap();
    }
    assert!(db.stats().evicted > 0, "{:?}", db.stats());
    for i in 0..400u32 {
        assert_eq!(db.run(|tx| t.get(tx, &i)).unwrap(), Some(u64::from(i)));
    }
}

#[test]
fn bank_on_a_bounded_cache() {
    let dir = tempfile::tempdir().unwrap();
    // 1,000 accounts, 300 cached: readers summing every account hold them all
    // while they run; transfers load and evict all the time
    let db = open(
        dir.path(),
        Checkpoint::Periodic(Duration::from_millis(5)),
        300,
    );
    let r = run_bank(
        &db,
        Bank {
            readers: 1,
            transfers: 150,
            ..Bank::sized(150)
        },
    );
    assert_eq!(r.committed_violations + r.body_violations, 0, "{r:?}");
    let s = db.stats();
    assert!(s.evicted > 0, "{s:?}");
    eprintln!("bounded bank: {r:?} {s:?}");
}
