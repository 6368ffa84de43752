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
//! rate (redos per committed transaction) in the case measured just before. redb
//! commits with `Durability::None` (visible, not yet synced), the counterpart of a
//! commit that waits for the next periodic checkpoint.
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

fn redb_add(db: &redb::Database, key: u64) {
    let mut tx = db.begin_write().expect("tx");
    tx.set_durability(redb::Durability::None);
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
    std::fs::create_dir_all(root.path().join("redb")).expect("dir");
    let rdb = Arc::new(redb::Database::create(root.path().join("redb/r.redb")).expect("redb"));

    // --- sequential --------------------------------------------------------------
    {
        let (db, t) = (db.clone(), table.clone());
        suite.case("zs-tx sequential", "tx_per_s", Better::Higher, move || {
            threaded(1, time, |_, _| ours_add(&db, &t, 0))
        });
        let rdb = rdb.clone();
        suite.case("redb sequential", "tx_per_s", Better::Higher, move || {
            threaded(1, time, |_, _| redb_add(&rdb, 0))
        });
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
            move || threaded(THREADS, time, |_, _| redb_add(&rdb, 1)),
        );
    }

    // --- normal conflict -------------------------------------------------------------
    let normal_redo = Rc::new(StdCell::new(0.0));
    {
        let (db2, t, r) = (db.clone(), table.clone(), normal_redo.clone());
        suite.case(
            "zs-tx normal conflict x4",
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
        let rdb = rdb.clone();
        suite.case(
            "redb normal conflict x4",
            "tx_per_s",
            Better::Higher,
            move || threaded(THREADS, time, |k, i| redb_add(&rdb, 100 + key_of(k, i))),
        );
    }

    suite.run();
    suite.ratio("seq_vs_redb", "zs-tx sequential", "redb sequential");
    suite.ratio(
        "normal_conflict_vs_redb",
        "zs-tx normal conflict x4",
        "redb normal conflict x4",
    );
    suite.ratio(
        "heavy_conflict_vs_redb",
        "zs-tx heavy conflict x4",
        "redb heavy conflict x4",
    );
    suite.ratio(
        "heavy_vs_normal_conflict",
        "zs-tx heavy conflict x4",
        "zs-tx normal conflict x4",
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
        "zs-tx: opaque isolation, zs-db backend, periodic checkpoint every 1 s ({} checkpoints); redb: Durability::None commits; {THREADS} threads on {} vCPUs",
        stats.checkpoints,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    ));
    suite.note(format!(
        "check: the counters sum to the {} committed add-one transactions",
        stats.commits - 1
    ));
    suite.note("Zeze (Java, published, hardware not stated): sequential 1,495,740/s; heavy conflict 252,613/s; normal conflict 1,140,652/s");
    db.close().expect("close");
    suite.finish();
}
