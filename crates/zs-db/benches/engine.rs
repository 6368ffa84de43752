//! `cargo bench -p zs-db`: micro-benchmarks of the engine's CPU paths, on the in-memory
//! [`MemVfs`] so that no disk latency (fsync: milliseconds, and noisy on a shared
//! machine) hides a change of a few percent in encoding, checksums, index or cache
//! work. The ratios against redb and fjall on a real disk stay in
//! `cargo xtask bench db` (benches/db); these are for a contributor comparing two
//! versions of a hot path (`cargo bench -p zs-db -- --save-baseline before`, change,
//! `cargo bench -p zs-db -- --baseline before`).

// criterion_group! defines an undocumented pub fn
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use zs_db::format::{self, FrameHeader, Salt, FLAG_COMMIT, OP_PUT};
use zs_db::{Batch, Database, DbOptions, Durability, Kind, MemVfs, Query, Vfs};

fn value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn mem_db(opts: DbOptions) -> Database {
    let vfs: Arc<dyn Vfs> = Arc::new(MemVfs::new());
    Database::create(vfs, "bench", opts).expect("create")
}

fn loaded(n: u64, opts: DbOptions) -> Database {
    let db = mem_db(opts);
    let mut b = Batch::new();
    for i in 0..n {
        b.insert(Kind::Raw, value(i));
    }
    db.commit(&b).expect("load");
    db
}

/// Frame encoding and checking: the per-record work of every write, read and scan.
fn frames(c: &mut Criterion) {
    let salt = Salt::new([7; 16]);
    let v = value(1);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    g.bench_function("encode 100 B", |b| {
        b.iter(|| {
            out.clear();
            format::encode_frame(&mut out, &salt, OP_PUT, 0, FLAG_COMMIT, 42, 0, 0, &v);
            black_box(out.len())
        })
    });
    let fh = FrameHeader::decode(&out, out.len() as u64).expect("frame");
    g.bench_function("check 100 B", |b| {
        b.iter(|| black_box(fh.check_frame(&salt, black_box(&out))))
    });
    g.finish();
}

/// Commits without the disk: encoding, validation, index and cache updates.
fn commits(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit");
    g.throughput(Throughput::Elements(1000));
    let batch = {
        let mut b = Batch::new();
        for i in 0..1000 {
            b.insert(Kind::Raw, value(i));
        }
        b
    };
    // a fresh store per commit (not timed), so the file does not grow without bound
    g.bench_function("batch 1000 x 100 B", |b| {
        b.iter_batched(
            || mem_db(DbOptions::default()),
            |db| {
                db.commit(&batch).expect("commit");
                db
            },
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    // single-record commits, buffered (periodic durability: no sync per commit)
    g.bench_function("single insert, buffered", |b| {
        b.iter_custom(|iters| {
            let opts = DbOptions {
                durability: Durability::Periodic(Duration::from_secs(3600)),
                ..Default::default()
            };
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(20_000);
                let db = mem_db(opts.clone());
                let v = value(3);
                let t = Instant::now();
                for _ in 0..n {
                    black_box(db.insert(Kind::Raw, &v).expect("insert"));
                }
                total += t.elapsed();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

/// Point reads served by the record cache and from the file.
fn reads(c: &mut Criterion) {
    let n = 20_000u64;
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    for (name, cache_bytes) in [("cached", 64 << 20), ("uncached", 0)] {
        let db = loaded(
            n,
            DbOptions {
                cache_bytes,
                ..Default::default()
            },
        );
        for id in 1..=n {
            db.get(id).expect("get"); // warm the cache (if any)
        }
        let mut seed = 1u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = (seed >> 33) % n + 1;
                black_box(db.get(id).expect("get").expect("present").data.len())
            })
        });
    }
    g.finish();
}

/// A filtered scan over 100k records (the store's worker threads).
fn scans(c: &mut Criterion) {
    let n = 100_000u64;
    let db = loaded(n, DbOptions::default());
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Elements(n));
    g.sample_size(20);
    g.bench_function("filter 100k x 100 B", |b| {
        b.iter(|| {
            db.query(Query::filter(|r| r.data[0] < 16))
                .expect("query")
                .collect_all()
                .expect("scan")
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, frames, commits, reads, scans);
criterion_main!(benches);
