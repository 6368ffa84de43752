//! `cargo xtask bench tx`: Zeze's three transaction benchmarks reproduced one for one,
//! zs-tx (opaque mode, zs-db backend) side by side with redb write transactions doing
//! the same read-add-write in the same run:
//!
//! - **sequential**: one thread, add one to one record (`ABasicSimpleAddOneThread`);
//! - **heavy conflict**: 4 threads add one to the same record
//!   (`BBasicSimpleAddConcurrentWithConflict`);
//! - **normal conflict**: 4 threads add one to random records of 1,000
//!   (`CBasicSimpleAddConcurrent`).
//!
//! Each case reports transactions/s; the zs-tx conflict cases also report their redo
//! rate (redos per committed transaction).
//!
//! Both sides make the same durability promise, pair by pair:
//! - **periodic** (the headline ratios `seq_vs_redb`, `normal_conflict_vs_redb`,
//!   `heavy_conflict_vs_redb`; Zeze's default checkpoint mode): zs-tx
//!   `Checkpoint::Periodic(1 s)` against redb commits with `Durability::None` plus a
//!   `Durability::Immediate` commit at least once per second (redb's documented way
//!   to bound loss). On a crash each side loses at most the last ~1 s of
//!   acknowledged commits and keeps a prefix of the commit order, nothing torn;
//! - **immediate** (`*_immediate_vs_redb`): zs-tx `Checkpoint::Immediate` against
//!   redb `Durability::Immediate`: every acknowledged commit is synced.
//!
//! Robustness on a shared machine: every case warms up once before the measured
//! rounds; each sample measures both sides of a pair in 8 alternating slices
//! (A B B A A B B A), so both see the same stretch of load and disk latency; the
//! suite runs several rounds and compares medians; each slice stops all threads at
//! one instant (no straggler tail); the immediate windows are twice as long (fsync
//! latency is the noisiest cost).
//! At the end both sides' counters are summed and checked against the number of
//! add-one transactions each side acknowledged.
#![forbid(unsafe_code)]

use std::cell::Cell as StdCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableTable, TableDefinition};
use zs_bench_harness::{Better, Options, Suite};
use zs_tx::{Backend, Checkpoint, Db, Options as TxOptions, ZdbBackend};

const T: TableDefinition<'_, u64, u64> = TableDefinition::new("t");
const THREADS: u64 = 4;
const RECORDS: u64 = 1000;
/// The periodic pair's bound on lost work: our checkpoint interval, and how often
/// redb makes a `Durability::Immediate` commit.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Runs `op(thread, i)` on `threads` threads until `time` has passed (every thread
/// stops at the same instant); returns (operations, seconds).
fn threaded(threads: u64, time: Duration, op: &(dyn Fn(u64, u64) + Sync)) -> (u64, f64) {
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    let n: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|k| {
                let stop = &stop;
                s.spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        op(k, i);
                        i += 1;
                    }
                    i
                })
            })
            .collect();
        std::thread::sleep(time);
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    (n, t.elapsed().as_secs_f64())
}

/// Slices of one paired sample: each side runs `SLICES` slices of `window / SLICES`,
/// alternating A B B A A B …, so both sides see the same stretch of machine load
/// and disk latency (fsync latency here drifts over seconds).
const SLICES: u32 = 8;

/// One paired sample of `w` over `window` per side: (ours tx/s, redb tx/s). A side
/// that is switched off (`ZS_TX_BENCH_ONLY`) reports 0.
fn paired(w: Work, ours: Option<&Ours>, redb: Option<&Redb>, window: Duration) -> (f64, f64) {
    let slice = window / SLICES;
    let (mut a, mut b) = ((0u64, 0f64), (0u64, 0f64));
    let mut side = |first: bool| {
        if first {
            if let Some(o) = ours {
                let (n, t) = w.run(o, slice);
                a = (a.0 + n, a.1 + t);
            }
        } else if let Some(r) = redb {
            let (n, t) = w.run(r, slice);
            b = (b.0 + n, b.1 + t);
        }
    };
    for i in 0..SLICES {
        let ours_first = (i + 1) % 4 < 2; // A B, B A, A B, B A …
        side(ours_first);
        side(!ours_first);
    }
    let rate = |(n, t): (u64, f64)| if t > 0.0 { n as f64 / t } else { 0.0 };
    (rate(a), rate(b))
}

fn key_of(k: u64, i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xD1B5_4A32_D192_ED03)) % RECORDS
}

/// One side of the comparison: add one to a counter in one durable-as-promised
/// transaction, counting the acknowledged ones.
trait Store: Send + Sync {
    fn add(&self, key: u64);
    /// Acknowledged add-one transactions.
    fn acked(&self) -> u64;
    /// The sum of all counters as stored.
    fn sum(&self) -> u64;
}

struct Ours {
    db: Db,
    table: zs_tx::Table<u64, u64>,
    acked: AtomicU64,
}

impl Ours {
    fn open(dir: std::path::PathBuf, checkpoint: Checkpoint) -> Arc<Ours> {
        let backend: Arc<dyn Backend> =
            Arc::new(ZdbBackend::open_dir(dir, "bench").expect("zs-db"));
        let db = Db::open(
            backend,
            TxOptions {
                checkpoint,
                ..TxOptions::default()
            },
        )
        .expect("open");
        let table = db.table::<u64, u64>("counters");
        Arc::new(Ours {
            db,
            table,
            acked: AtomicU64::new(0),
        })
    }
}

impl Store for Ours {
    fn add(&self, key: u64) {
        let t = &self.table;
        self.db
            .run(|tx| {
                let v = t.get(tx, &key)?.unwrap_or(0);
                t.put(tx, &key, &(v + 1))
            })
            .expect("add one");
        self.acked.fetch_add(1, Ordering::Relaxed);
    }
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    fn sum(&self) -> u64 {
        self.db
            .run(|tx| {
                let mut sum = 0;
                for k in 0..100 + RECORDS {
                    sum += self.table.get(tx, &k)?.unwrap_or(0);
                }
                Ok(sum)
            })
            .expect("sum")
    }
}

struct Redb {
    db: redb::Database,
    /// `None`: every commit `Durability::Immediate`; `Some(every)`: commits with
    /// `Durability::None`, and the first commit after `every` since the last
    /// durable one with `Durability::Immediate`.
    sync_every: Option<Duration>,
    epoch: Instant,
    last_sync_us: AtomicU64,
    syncs: AtomicU64,
    acked: AtomicU64,
}

impl Redb {
    fn open(path: std::path::PathBuf, sync_every: Option<Duration>) -> Arc<Redb> {
        Arc::new(Redb {
            db: redb::Database::create(path).expect("redb"),
            sync_every,
            epoch: Instant::now(),
            last_sync_us: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        })
    }

    fn durability(&self) -> redb::Durability {
        let Some(every) = self.sync_every else {
            return redb::Durability::Immediate;
        };
        let now = self.epoch.elapsed().as_micros() as u64;
        let last = self.last_sync_us.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every.as_micros() as u64
            && self
                .last_sync_us
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        }
    }
}

impl Store for Redb {
    fn add(&self, key: u64) {
        let mut tx = self.db.begin_write().expect("tx");
        tx.set_durability(self.durability());
        {
            let mut t = tx.open_table(T).expect("table");
            let v = t.get(key).expect("get").map(|g| g.value()).unwrap_or(0);
            t.insert(key, v + 1).expect("insert");
        }
        tx.commit().expect("commit");
        self.acked.fetch_add(1, Ordering::Relaxed);
    }
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
    fn sum(&self) -> u64 {
        let tx = self.db.begin_read().expect("read");
        let t = match tx.open_table(T) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return 0, // never written
            Err(e) => panic!("redb table: {e}"),
        };
        t.iter()
            .expect("iter")
            .map(|r| r.expect("row").1.value())
            .sum()
    }
}

/// Zeze's three workloads.
#[derive(Clone, Copy)]
enum Work {
    Sequential,
    Heavy,
    Normal,
}

impl Work {
    fn run(self, store: &dyn Store, time: Duration) -> (u64, f64) {
        match self {
            Work::Sequential => threaded(1, time, &|_, _| store.add(0)),
            Work::Heavy => threaded(THREADS, time, &|_, _| store.add(1)),
            Work::Normal => threaded(THREADS, time, &|k, i| store.add(100 + key_of(k, i))),
        }
    }
}

fn main() {
    let opts = Options::from_env();
    // windows: the immediate ones twice as long (fsync latency swings most)
    let (time, itime) = if opts.quick {
        (Duration::from_millis(400), Duration::from_millis(800))
    } else {
        (Duration::from_secs(1), Duration::from_secs(2))
    };
    let mut suite = Suite::from_options("tx", &opts, 5, 7);
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("redb")).expect("dir");
    let ours_p = Ours::open(root.path().join("zsp"), Checkpoint::Periodic(SYNC_EVERY));
    let ours_i = Ours::open(root.path().join("zsi"), Checkpoint::Immediate);
    assert_eq!(ours_i.db.options().checkpoint, Checkpoint::Immediate);
    let redb_p = Redb::open(root.path().join("redb/p.redb"), Some(SYNC_EVERY));
    let redb_i = Redb::open(root.path().join("redb/i.redb"), None);

    let pairs: [(&str, Duration, Arc<Ours>, Arc<Redb>); 2] = [
        ("periodic", time, ours_p.clone(), redb_p.clone()),
        ("immediate", itime, ours_i.clone(), redb_i.clone()),
    ];
    let works = [
        ("sequential", Work::Sequential),
        ("heavy conflict x4", Work::Heavy),
        ("normal conflict x4", Work::Normal),
    ];
    // `ZS_TX_BENCH_ONLY=<text>`: only the cases whose name contains it (to profile
    // one side of one case, e.g. `strace -f -c` on "zs-tx sequential immediate")
    let only = std::env::var("ZS_TX_BENCH_ONLY").unwrap_or_default();
    let (ours_on, redb_on) = (
        |w: &str, m: &str| format!("zs-tx {w} {m}").contains(&only),
        |w: &str, m: &str| format!("redb {w} {m}").contains(&only),
    );
    // warm-up: every workload once on every store (files grown, caches and the
    // allocator warm, records created) before anything is measured
    for (mode, _, ours, redb) in &pairs {
        for (wname, w) in works {
            paired(
                w,
                ours_on(wname, mode).then_some(&**ours),
                redb_on(wname, mode).then_some(&**redb),
                Duration::from_millis(150),
            );
        }
    }
    for (mode, window, ours, redb) in &pairs {
        for (wname, w) in works {
            if !ours_on(wname, mode) && !redb_on(wname, mode) {
                continue;
            }
            let redo = Rc::new(StdCell::new(0.0));
            let theirs = Rc::new(StdCell::new(0.0));
            let (o, rd, win) = (ours.clone(), redb.clone(), *window);
            let (on, ron) = (ours_on(wname, mode), redb_on(wname, mode));
            let (r, th) = (redo.clone(), theirs.clone());
            // one sampler measures both sides, interleaved in slices; the redb
            // case reports the figure it measured
            suite.case(
                &format!("zs-tx {wname} {mode}"),
                "tx_per_s",
                Better::Higher,
                move || {
                    let before = o.db.stats();
                    let (v, t) = paired(w, on.then_some(&*o), ron.then_some(&*rd), win);
                    let after = o.db.stats();
                    r.set(
                        (after.redos - before.redos) as f64
                            / (after.commits - before.commits).max(1) as f64,
                    );
                    th.set(t);
                    v
                },
            );
            suite.case(
                &format!("redb {wname} {mode}"),
                "tx_per_s",
                Better::Higher,
                move || theirs.get(),
            );
            if !matches!(w, Work::Sequential) {
                suite.case(
                    &format!("zs-tx {wname} {mode} redo rate"),
                    "redos_per_tx",
                    Better::Lower,
                    move || redo.get(),
                );
            }
        }
    }
    suite.run();

    // headline: Zeze's default checkpoint mode (periodic), matched on both sides
    for (key, w) in [
        ("seq", "sequential"),
        ("heavy_conflict", "heavy conflict x4"),
        ("normal_conflict", "normal conflict x4"),
    ] {
        suite.ratio(
            &format!("{key}_vs_redb"),
            &format!("zs-tx {w} periodic"),
            &format!("redb {w} periodic"),
        );
        suite.ratio(
            &format!("{key}_immediate_vs_redb"),
            &format!("zs-tx {w} immediate"),
            &format!("redb {w} immediate"),
        );
    }
    suite.ratio(
        "heavy_vs_normal_conflict",
        "zs-tx heavy conflict x4 periodic",
        "zs-tx normal conflict x4 periodic",
    );
    // the other no-conflict case: one committer, nobody to conflict with
    suite.ratio(
        "heavy_vs_sequential",
        "zs-tx heavy conflict x4 periodic",
        "zs-tx sequential periodic",
    );
    suite.ratio(
        "heavy_vs_normal_conflict_immediate",
        "zs-tx heavy conflict x4 immediate",
        "zs-tx normal conflict x4 immediate",
    );

    // both sides did the work they acknowledged, exactly once
    let stores: [(&str, &dyn Store); 4] = [
        ("zs-tx periodic", &*ours_p),
        ("zs-tx immediate", &*ours_i),
        ("redb periodic", &*redb_p),
        ("redb immediate", &*redb_i),
    ];
    for (name, s) in stores {
        assert_eq!(
            s.sum(),
            s.acked(),
            "{name}: every acknowledged add-one counted once"
        );
    }
    suite.note(format!(
        "promises: periodic = zs-tx Checkpoint::Periodic(1 s) ({} checkpoints) vs redb Durability::None + a Durability::Immediate commit at least once per second ({} of them): on a crash each loses at most ~1 s of acknowledged commits, keeps a prefix, nothing torn; immediate = zs-tx Checkpoint::Immediate vs redb Durability::Immediate: every acknowledged commit synced",
        ours_p.db.stats().checkpoints,
        redb_p.syncs.load(Ordering::Relaxed),
    ));
    suite.note(format!(
        "zs-tx: opaque isolation, zs-db backend; {THREADS} threads on {} vCPUs; windows {} ms (periodic) / {} ms (immediate) after one warm-up of each case",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        time.as_millis(),
        itime.as_millis(),
    ));
    suite.note(format!(
        "check: every store's counters sum to its acknowledged add-one transactions (zs-tx {} + {}, redb {} + {})",
        ours_p.acked(),
        ours_i.acked(),
        redb_p.acked(),
        redb_i.acked()
    ));
    suite.note("Zeze (Java, published, hardware not stated, periodic checkpoint): sequential 1,495,740/s; heavy conflict 252,613/s; normal conflict 1,140,652/s");
    drop(pairs);
    for o in [ours_p, ours_i] {
        o.db.close().expect("close");
    }
    suite.finish();
}
