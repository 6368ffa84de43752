//! `cargo xtask bench db`: zs-db side by side with redb and fjall on the same data:
//! durable single-record commits/s (one thread, next to the disk's limit of one
//! write + fdatasync per commit; and 4 threads at once against redb),
//! batched inserts/s of 100-byte records, random point reads/s, a filtered scan (ours
//! parallel, redb single-threaded with the same closure), and file sizes after loading
//! and after compaction.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::TableDefinition;
use zs_bench_harness::{Better, Options, Suite};
use zs_db::{Batch, Database, DbOptions, DirVfs, Kind, Query, Vfs};

const T: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("t");
const VALUE: usize = 100;
/// Committer threads of the concurrent durable-commit case.
const COMMIT_THREADS: u64 = 4;

fn value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The scan filter: about 1 in 16 records match.
fn matches(v: &[u8]) -> bool {
    v[0] < 16 && v[1] != 0
}

fn ours_open(dir: &Path) -> Database {
    let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(dir).expect("dir"));
    Database::create(vfs, "bench", DbOptions::default()).expect("create")
}

fn ours_load(db: &Database, n: u64) {
    let mut b = Batch::new();
    for i in 0..n {
        b.insert(Kind::Raw, value(i));
    }
    db.commit(&b).expect("commit");
}

fn redb_load(db: &redb::Database, n: u64) {
    let tx = db.begin_write().expect("tx");
    {
        let mut t = tx.open_table(T).expect("table");
        for i in 0..n {
            t.insert(i + 1, value(i).as_slice()).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

fn fjall_open(dir: &Path) -> (fjall::Keyspace, fjall::PartitionHandle) {
    let ks = fjall::Config::new(dir).open().expect("fjall");
    let p = ks
        .open_partition("t", fjall::PartitionCreateOptions::default())
        .expect("partition");
    (ks, p)
}

fn fjall_load(ks: &fjall::Keyspace, p: &fjall::PartitionHandle, n: u64) {
    let mut b = ks.batch();
    for i in 0..n {
        b.insert(p, (i + 1).to_be_bytes(), value(i));
    }
    b.commit().expect("commit");
    ks.persist(fjall::PersistMode::SyncAll).expect("persist");
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            n += if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            };
        }
    }
    n
}

fn rate(n: u64, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64().max(1e-9)
}

fn main() {
    let opts = Options::from_env();
    let (batch_n, scan_n, reads_n, commit_time) = if opts.quick {
        (
            100_000u64,
            500_000u64,
            100_000u64,
            Duration::from_millis(250),
        )
    } else {
        (1_000_000, 10_000_000, 1_000_000, Duration::from_secs(1))
    };
    let mut suite = Suite::from_options("db", &opts, 3, 5);
    let root = tempfile::tempdir().expect("tempdir");
    let root = Arc::new(root);

    // --- durable single-record commits -------------------------------------------
    {
        let d = root.path().join("c-ours");
        let db = ours_open(&d);
        let mut i = 0u64;
        suite.case("zs-db commit", "commits_per_s", Better::Higher, move || {
            let t = Instant::now();
            let mut n = 0;
            while t.elapsed() < commit_time {
                db.insert(Kind::Raw, &value(i)).expect("insert");
                i += 1;
                n += 1;
            }
            rate(n, t)
        });
        let d = root.path().join("c-redb");
        std::fs::create_dir_all(&d).expect("dir");
        let db = redb::Database::create(d.join("r.redb")).expect("redb");
        let mut i = 0u64;
        suite.case("redb commit", "commits_per_s", Better::Higher, move || {
            let t = Instant::now();
            let mut n = 0;
            while t.elapsed() < commit_time {
                let tx = db.begin_write().expect("tx");
                tx.open_table(T)
                    .expect("t")
                    .insert(i, value(i).as_slice())
                    .expect("insert");
                tx.commit().expect("commit");
                i += 1;
                n += 1;
            }
            rate(n, t)
        });
        // the physical limit of a durable commit on this disk: one write of a
        // frame-sized record into preallocated room, then fdatasync (what any engine
        // that acknowledges after a flush must wait for at least)
        let f = root.path().join("c-limit");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(f)
            .expect("limit file");
        let mut f = f;
        let mut at = 0u64;
        let mut room = 0u64;
        suite.case(
            "fdatasync limit",
            "commits_per_s",
            Better::Higher,
            move || {
                use std::io::{Seek, SeekFrom, Write};
                let rec = [7u8; VALUE + 32 + 4];
                let t = Instant::now();
                let mut n = 0;
                while t.elapsed() < commit_time {
                    if at + rec.len() as u64 > room {
                        f.seek(SeekFrom::Start(room)).expect("seek");
                        f.write_all(&vec![0u8; 4 << 20]).expect("prealloc");
                        room += 4 << 20;
                    }
                    f.seek(SeekFrom::Start(at)).expect("seek");
                    f.write_all(&rec).expect("write");
                    f.sync_data().expect("fdatasync");
                    at += rec.len() as u64;
                    n += 1;
                }
                rate(n, t)
            },
        );
        // the same promise on every side: a commit is acknowledged only once it is on
        // disk (zs-db Durability::Immediate: write + fdatasync; redb's default
        // Durability::Immediate: fsync; fjall PersistMode::SyncAll after each insert:
        // journal write + fsync)
        let (ks, p) = fjall_open(&root.path().join("c-fjall"));
        let mut i = 0u64;
        suite.case("fjall commit", "commits_per_s", Better::Higher, move || {
            let t = Instant::now();
            let mut n = 0;
            while t.elapsed() < commit_time {
                p.insert(i.to_be_bytes(), value(i)).expect("insert");
                ks.persist(fjall::PersistMode::SyncAll).expect("persist");
                i += 1;
                n += 1;
            }
            rate(n, t)
        });
    }

    // --- durable commits from several threads at once -------------------------------
    // ours groups concurrent Immediate commits into shared fsyncs; redb serializes
    // write transactions (each its own fsync); both: every commit durable on return
    {
        let d = root.path().join("cc-ours");
        let db = ours_open(&d);
        suite.case(
            "zs-db commit x4 threads",
            "commits_per_s",
            Better::Higher,
            move || {
                let t = Instant::now();
                let n: u64 = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..COMMIT_THREADS)
                        .map(|k| {
                            let db = db.clone();
                            s.spawn(move || {
                                let mut n = 0u64;
                                while t.elapsed() < commit_time {
                                    db.insert(Kind::Raw, &value(k * 1_000_000 + n))
                                        .expect("insert");
                                    n += 1;
                                }
                                n
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().expect("thread")).sum()
                });
                rate(n, t)
            },
        );
        let d = root.path().join("cc-redb");
        std::fs::create_dir_all(&d).expect("dir");
        let db = Arc::new(redb::Database::create(d.join("r.redb")).expect("redb"));
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        suite.case(
            "redb commit x4 threads",
            "commits_per_s",
            Better::Higher,
            move || {
                let t = Instant::now();
                let n: u64 = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..COMMIT_THREADS)
                        .map(|_| {
                            let (db, next) = (db.clone(), next.clone());
                            s.spawn(move || {
                                let mut n = 0u64;
                                while t.elapsed() < commit_time {
                                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    let tx = db.begin_write().expect("tx");
                                    tx.open_table(T)
                                        .expect("t")
                                        .insert(i, value(i).as_slice())
                                        .expect("insert");
                                    tx.commit().expect("commit");
                                    n += 1;
                                }
                                n
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().expect("thread")).sum()
                });
                rate(n, t)
            },
        );
    }

    // --- batched inserts into a fresh store ----------------------------------------
    {
        let r = root.clone();
        let mut round = 0;
        suite.case("zs-db batch", "records_per_s", Better::Higher, move || {
            round += 1;
            let d = r.path().join(format!("b-ours-{round}"));
            let db = ours_open(&d);
            let t = Instant::now();
            ours_load(&db, batch_n);
            let v = rate(batch_n, t);
            drop(db);
            let _ = std::fs::remove_dir_all(&d);
            v
        });
        let r = root.clone();
        let mut round = 0;
        suite.case("redb batch", "records_per_s", Better::Higher, move || {
            round += 1;
            let d = r.path().join(format!("b-redb-{round}"));
            std::fs::create_dir_all(&d).expect("dir");
            let db = redb::Database::create(d.join("r.redb")).expect("redb");
            let t = Instant::now();
            redb_load(&db, batch_n);
            let v = rate(batch_n, t);
            drop(db);
            let _ = std::fs::remove_dir_all(&d);
            v
        });
        let r = root.clone();
        let mut round = 0;
        suite.case("fjall batch", "records_per_s", Better::Higher, move || {
            round += 1;
            let d = r.path().join(format!("b-fjall-{round}"));
            let (ks, p) = fjall_open(&d);
            let t = Instant::now();
            fjall_load(&ks, &p, batch_n);
            let v = rate(batch_n, t);
            drop((p, ks));
            let _ = std::fs::remove_dir_all(&d);
            v
        });
    }

    // --- the shared data set for reads and scans -----------------------------------
    let ours_dir = root.path().join("s-ours");
    let ours = ours_open(&ours_dir);
    ours_load(&ours, scan_n);
    let redb_dir = root.path().join("s-redb");
    std::fs::create_dir_all(&redb_dir).expect("dir");
    let rdb = redb::Database::create(redb_dir.join("r.redb")).expect("redb");
    redb_load(&rdb, scan_n);
    let fjall_dir = root.path().join("s-fjall");
    let (ks, part) = fjall_open(&fjall_dir);
    fjall_load(&ks, &part, scan_n);

    // file sizes after loading, then after deleting every other record and compacting
    let sizes_loaded = (
        dir_size(&ours_dir),
        dir_size(&redb_dir),
        dir_size(&fjall_dir),
    );
    let expected_matches = (0..scan_n).filter(|&i| matches(&value(i))).count();

    // --- random point reads --------------------------------------------------------
    {
        let db = ours.clone();
        let mut seed = 1u64;
        suite.case("zs-db read", "reads_per_s", Better::Higher, move || {
            let t = Instant::now();
            for _ in 0..reads_n {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = (seed >> 33) % scan_n + 1;
                let r = db.get(id).expect("get").expect("present");
                std::hint::black_box(r.data.len());
            }
            rate(reads_n, t)
        });
    }
    // shared by the read and scan closures; taken back for compaction at the end
    let rdb_read = Arc::new(rdb);
    {
        let db = rdb_read.clone();
        let mut seed = 1u64;
        suite.case("redb read", "reads_per_s", Better::Higher, move || {
            let t = Instant::now();
            let tx = db.begin_read().expect("tx");
            let table = tx.open_table(T).expect("t");
            for _ in 0..reads_n {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = (seed >> 33) % scan_n + 1;
                let v = table.get(id).expect("get").expect("present");
                std::hint::black_box(v.value().len());
            }
            rate(reads_n, t)
        });
        let p = part.clone();
        let mut seed = 1u64;
        suite.case("fjall read", "reads_per_s", Better::Higher, move || {
            let t = Instant::now();
            for _ in 0..reads_n {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = (seed >> 33) % scan_n + 1;
                let v = p.get(id.to_be_bytes()).expect("get").expect("present");
                std::hint::black_box(v.len());
            }
            rate(reads_n, t)
        });
    }

    // --- filtered scan -------------------------------------------------------------
    {
        let db = ours.clone();
        suite.case(
            "zs-db scan (parallel)",
            "records_per_s",
            Better::Higher,
            move || {
                let t = Instant::now();
                let n = db
                    .query(Query::filter(|r| matches(r.data)))
                    .expect("query")
                    .collect_all()
                    .expect("scan")
                    .len();
                assert_eq!(n, expected_matches);
                rate(scan_n, t)
            },
        );
        let db = rdb_read.clone();
        suite.case(
            "redb scan (1 thread)",
            "records_per_s",
            Better::Higher,
            move || {
                let t = Instant::now();
                let tx = db.begin_read().expect("tx");
                let table = tx.open_table(T).expect("t");
                let mut n = 0;
                for e in table.range(0u64..).expect("range") {
                    let (_, v) = e.expect("entry");
                    if matches(v.value()) {
                        n += 1;
                    }
                }
                assert_eq!(n, expected_matches);
                rate(scan_n, t)
            },
        );
        let p = part.clone();
        suite.case(
            "fjall scan (1 thread)",
            "records_per_s",
            Better::Higher,
            move || {
                let t = Instant::now();
                let mut n = 0;
                for e in p.iter() {
                    let (_, v) = e.expect("entry");
                    if matches(&v) {
                        n += 1;
                    }
                }
                assert_eq!(n, expected_matches);
                rate(scan_n, t)
            },
        );
    }

    suite.run();
    suite.ratio("commits_vs_limit", "zs-db commit", "fdatasync limit");
    suite.ratio("commits_vs_redb", "zs-db commit", "redb commit");
    suite.ratio(
        "commits_x4_vs_redb",
        "zs-db commit x4 threads",
        "redb commit x4 threads",
    );
    suite.ratio("batch_vs_redb", "zs-db batch", "redb batch");
    suite.ratio("reads_vs_redb", "zs-db read", "redb read");
    suite.ratio(
        "scan_vs_redb",
        "zs-db scan (parallel)",
        "redb scan (1 thread)",
    );
    suite.ratio("commits_vs_fjall", "zs-db commit", "fjall commit");
    suite.ratio("batch_vs_fjall", "zs-db batch", "fjall batch");
    suite.ratio("reads_vs_fjall", "zs-db read", "fjall read");
    suite.ratio(
        "scan_vs_fjall",
        "zs-db scan (parallel)",
        "fjall scan (1 thread)",
    );

    // --- sizes: delete every other record, compact ----------------------------------
    let mut b = Batch::new();
    for id in (1..=scan_n).step_by(2) {
        b.delete(id);
    }
    ours.commit(&b).expect("delete");
    ours.compact().expect("compact");
    let mut rdb = match Arc::try_unwrap(rdb_read) {
        Ok(db) => db,
        Err(_) => panic!("redb handle still shared"),
    };
    {
        let tx = rdb.begin_write().expect("tx");
        {
            let mut t = tx.open_table(T).expect("t");
            for id in (1..=scan_n).step_by(2) {
                t.remove(id).expect("remove");
            }
        }
        tx.commit().expect("commit");
    }
    let _ = rdb.compact();
    for id in (1..=scan_n).step_by(2) {
        part.remove(id.to_be_bytes()).expect("remove");
    }
    ks.persist(fjall::PersistMode::SyncAll).expect("persist");
    let sizes_compacted = (
        dir_size(&ours_dir),
        dir_size(&redb_dir),
        dir_size(&fjall_dir),
    );
    suite.note(format!(
        "file bytes after loading {scan_n} x {VALUE} B: zs-db {}, redb {}, fjall {}",
        sizes_loaded.0, sizes_loaded.1, sizes_loaded.2
    ));
    suite.note(format!(
        "after deleting half + compaction: zs-db {}, redb {}, fjall {} (fjall: no explicit compaction, LSM compacts in the background)",
        sizes_compacted.0, sizes_compacted.1, sizes_compacted.2
    ));
    suite.note(format!(
        "size ratio redb/zs-db after load {:.2}, after compaction {:.2}",
        sizes_loaded.1 as f64 / sizes_loaded.0 as f64,
        sizes_compacted.1 as f64 / sizes_compacted.0 as f64
    ));
    suite.note(format!(
        "batch = one commit of {batch_n} records; scan = {scan_n} records, filter matches {expected_matches}; zs-db scan uses {} threads",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    ));
    drop((ours, rdb, part, ks));
    suite.finish();
}
