//! `cargo xtask bench tx`: Zeze's three transaction benchmarks reproduced one for one,
//! zs-tx (opaque mode, zs-db backend, periodic checkpoint) side by side with redb
//! write transactions doing the same work in the same run:
//!
//! - **sequential**: one thread, add one to one record (`ABasicSimpleAddOneThread`);
//! - **heavy conflict**: 4 threads add one to the same record
//!   (`BBasicSimpleAddConcurrentWithConflict`);
//! - **normal conflict**: 4 threads add one to random records of 1,000
//!   (`CBasicSimpleAddConcurrent`).
//!
//! Each case reports transactions/s; the zs-tx conflict cases also report their redo
//! rate (redos per committed transaction) in the case measured just before.
//!
//! Durability is matched pair by pair:
//! - **immediate** (the headline ratios `seq_vs_redb`, `normal_conflict_vs_redb`):
//!   zs-tx `Checkpoint::Immediate` (each commit synced before it returns; concurrent
//!   commits share one fsync through zs-db's group commit) against redb
//!   `Durability::Immediate` (each commit synced before it returns);
//! - **periodic**: zs-tx `Checkpoint::Periodic(1 s)` against redb
//!   `Durability::Eventual` (committed, synced by a later commit), the closest redb
//!   has to a periodic flush;
//! - **nosync** (context): the periodic zs-tx engine against redb `Durability::None`.
#![forbid(unsafe_code)]

use std::cell::Cell as StdCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableTable, TableDefinition};
use zs_bench_harness::{Better, Options, Suite};
use zs_tx::{Backend, Checkpoint, Db, Options as TxOptions, ZdbBackend};

const T: TableDefinition<'_, u64, u64> = TableDefinition::new("t");
const THREADS: u64 = 4;
const RECORDS: u64 = 1000;

fn rate(n: u64, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64().max(1e-9)
}

/// Runs `op(thread, i)` on `threads` threads for `time`; returns transactions/s.
fn threaded(threads: u64, time: Duration, op: impl Fn(u64, u64) + Sync) -> f64 {
    let t = Instant::now();
    let n: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|k| {
                let op = &op;
                s.spawn(move || {
                    let mut i = 0u64;
                    while t.elapsed() < time {
                        for _ in 0..64 {
                            op(k, i);
                            i += 1;
                        }
                    }
                    i
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    rate(n, t)
}

fn key_of(k: u64, i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xD1B5_4A32_D192_ED03)) % RECORDS
}

fn ours_add(db: &Db, t: &zs_tx::Table<u64, u64>, key: u64) {
    db.run(|tx| {
        let v = t.get(tx, &key)?.unwrap_or(0);
        t.put(tx, &key, &(v + 1))
    })
    .expect("add one");
}

fn redb_add(db: &redb::Database, d: redb::Durability, key: u64) {
    let mut tx = db.begin_write().expect("tx");
    tx.set_durability(d);
    {
        let mut t = tx.open_table(T).expect("table");
        let v = t.get(key).expect("get").map(|g| g.value()).unwrap_or(0);
        t.insert(key, v + 1).expect("insert");
    }
    tx.commit().expect("commit");
}

fn main() {
    let opts = Options::from_env();
    let time = if opts.quick {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    };
    let mut suite = Suite::from_options("tx", &opts, 3, 5);
    let root = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn Backend> =
        Arc::new(ZdbBackend::open_dir(root.path().join("zs"), "bench").expect("zs-db"));
    let db = Db::open(
        backend,
        TxOptions {
            checkpoint: Checkpoint::Periodic(Duration::from_secs(1)),
            ..TxOptions::default()
        },
    )
    .expect("open");
    let table = db.table::<u64, u64>("counters");
    let ibackend: Arc<dyn Backend> =
        Arc::new(ZdbBackend::open_dir(root.path().join("zsi"), "bench").expect("zs-db"));
    let idb = Db::open(ibackend, TxOptions::default()).expect("open immediate");
    assert_eq!(idb.options().checkpoint, Checkpoint::Immediate);
    let itable = idb.table::<u64, u64>("counters");
    std::fs::create_dir_all(root.path().join("redb")).expect("dir");
    let rdb = Arc::new(redb::Database::create(root.path().join("redb/r.redb")).expect("redb"));

    use redb::Durability as D;
    // --- sequential --------------------------------------------------------------
    {
        let (idb2, it) = (idb.clone(), itable.clone());
        suite.case(
            "zs-tx sequential immediate",
            "tx_per_s",
            Better::Higher,
            move || threaded(1, time, |_, _| ours_add(&idb2, &it, 0)),
        );
        let rdb2 = rdb.clone();
        suite.case(
            "redb sequential immediate",
            "tx_per_s",
            Better::Higher,
            move || threaded(1, time, |_, _| redb_add(&rdb2, D::Immediate, 0)),
        );
        let (db, t) = (db.clone(), table.clone());
        suite.case(
            "zs-tx sequential periodic",
            "tx_per_s",
            Better::Higher,
            move || threaded(1, time, |_, _| ours_add(&db, &t, 0)),
        );
        let rdb2 = rdb.clone();
        suite.case(
            "redb sequential eventual",
            "tx_per_s",
            Better::Higher,
            move || threaded(1, time, |_, _| redb_add(&rdb2, D::Eventual, 0)),
        );
        let rdb2 = rdb.clone();
        suite.case(
            "redb sequential nosync",
            "tx_per_s",
            Better::Higher,
            move || threaded(1, time, |_, _| redb_add(&rdb2, D::None, 0)),
        );
    }

    // --- heavy conflict ------------------------------------------------------------
    let heavy_redo = Rc::new(StdCell::new(0.0));
    {
        let (db2, t, r) = (db.clone(), table.clone(), heavy_redo.clone());
        suite.case(
            "zs-tx heavy conflict x4",
            "tx_per_s",
            Better::Higher,
            move || {
                let before = db2.stats();
                let v = threaded(THREADS, time, |_, _| ours_add(&db2, &t, 1));
                let after = db2.stats();
                r.set(
                    (after.redos - before.redos) as f64
                        / (after.commits - before.commits).max(1) as f64,
                );
                v
            },
        );
        let r = heavy_redo.clone();
        suite.case(
            "zs-tx heavy conflict redo rate",
            "redos_per_tx",
            Better::Lower,
            move || r.get(),
        );
        let rdb = rdb.clone();
        suite.case(
            "redb heavy conflict x4",
            "tx_per_s",
            Better::Higher,
            move || threaded(THREADS, time, |_, _| redb_add(&rdb, D::None, 1)),
        );
    }

    // --- normal conflict -------------------------------------------------------------
    let normal_redo = Rc::new(StdCell::new(0.0));
    {
        let (db2, t) = (idb.clone(), itable.clone());
        suite.case(
            "zs-tx normal conflict x4 immediate",
            "tx_per_s",
            Better::Higher,
            move || threaded(THREADS, time, |k, i| ours_add(&db2, &t, 100 + key_of(k, i))),
        );
        let rdb2 = rdb.clone();
        suite.case(
            "redb normal conflict x4 immediate",
            "tx_per_s",
            Better::Higher,
            move || {
                threaded(THREADS, time, |k, i| {
                    redb_add(&rdb2, D::Immediate, 100 + key_of(k, i))
                })
            },
        );
        let (db2, t, r) = (db.clone(), table.clone(), normal_redo.clone());
        suite.case(
            "zs-tx normal conflict x4 periodic",
            "tx_per_s",
            Better::Higher,
            move || {
                let before = db2.stats();
                let v = threaded(THREADS, time, |k, i| ours_add(&db2, &t, 100 + key_of(k, i)));
                let after = db2.stats();
                r.set(
                    (after.redos - before.redos) as f64
                        / (after.commits - before.commits).max(1) as f64,
                );
                v
            },
        );
        let r = normal_redo.clone();
        suite.case(
            "zs-tx normal conflict redo rate",
            "redos_per_tx",
            Better::Lower,
            move || r.get(),
        );
        for (name, d) in [
            ("redb normal conflict x4 eventual", D::Eventual),
            ("redb normal conflict x4 nosync", D::None),
        ] {
            let rdb2 = rdb.clone();
            suite.case(name, "tx_per_s", Better::Higher, move || {
                threaded(THREADS, time, |k, i| redb_add(&rdb2, d, 100 + key_of(k, i)))
            });
        }
    }

    suite.run();
    // headline: durable commits on both sides
    suite.ratio(
        "seq_vs_redb",
        "zs-tx sequential immediate",
        "redb sequential immediate",
    );
    suite.ratio(
        "normal_conflict_vs_redb",
        "zs-tx normal conflict x4 immediate",
        "redb normal conflict x4 immediate",
    );
    suite.ratio(
        "seq_periodic_vs_redb_eventual",
        "zs-tx sequential periodic",
        "redb sequential eventual",
    );
    suite.ratio(
        "normal_conflict_periodic_vs_redb_eventual",
        "zs-tx normal conflict x4 periodic",
        "redb normal conflict x4 eventual",
    );
    suite.ratio(
        "seq_periodic_vs_redb_nosync",
        "zs-tx sequential periodic",
        "redb sequential nosync",
    );
    suite.ratio(
        "normal_conflict_periodic_vs_redb_nosync",
        "zs-tx normal conflict x4 periodic",
        "redb normal conflict x4 nosync",
    );
    suite.ratio(
        "heavy_conflict_vs_redb_nosync",
        "zs-tx heavy conflict x4",
        "redb heavy conflict x4",
    );
    suite.ratio(
        "heavy_vs_normal_conflict",
        "zs-tx heavy conflict x4",
        "zs-tx normal conflict x4 periodic",
    );
    let check = db
        .run(|tx| {
            let mut sum = 0;
            for k in 0..100 + RECORDS {
                sum += table.get(tx, &k)?.unwrap_or(0);
            }
            Ok(sum)
        })
        .expect("sum");
    let stats = db.stats();
    assert_eq!(
        check,
        stats.commits - 1,
        "every add-one committed exactly once"
    );
    suite.note(format!(
        "zs-tx: opaque isolation, zs-db backend; immediate cases: Checkpoint::Immediate vs redb Durability::Immediate; periodic cases: checkpoint every 1 s ({} checkpoints) vs redb Durability::Eventual; nosync: vs redb Durability::None; heavy conflict: periodic vs nosync; {THREADS} threads on {} vCPUs",
        stats.checkpoints,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    ));
    suite.note(format!(
        "check: the counters sum to the {} committed add-one transactions",
        stats.commits - 1
    ));
    suite.note("Zeze (Java, published, hardware not stated): sequential 1,495,740/s; heavy conflict 252,613/s; normal conflict 1,140,652/s");
    let icheck = idb
        .run(|tx| {
            let mut sum = 0;
            for k in 0..100 + RECORDS {
                sum += itable.get(tx, &k)?.unwrap_or(0);
            }
            Ok(sum)
        })
        .expect("sum");
    assert_eq!(
        icheck,
        idb.stats().commits - 1,
        "immediate: every add-one committed once"
    );
    idb.close().expect("close");
    db.close().expect("close");
    suite.finish();
}
