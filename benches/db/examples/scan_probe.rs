//! Profiling aid for the scan case: `scan_probe [records] [scans]` loads `records`
//! 100-byte records in one commit, then runs the bench's filtered parallel scan
//! `scans` times and prints records/s. Run it under `perf record` to see where a
//! scan spends its time.
#![forbid(unsafe_code)]
use std::sync::Arc;
use std::time::Instant;

use zs_db::{Batch, Database, DbOptions, DirVfs, Kind, Query, Vfs};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let scans: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let tmp = tempfile::tempdir().expect("tempdir");
    let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(tmp.path()).expect("dir"));
    let db = Database::create(vfs, "probe", DbOptions::default()).expect("create");
    let mut b = Batch::new();
    for i in 0..n {
        let v: Vec<u8> = (0..100u64)
            .map(|k| (i.wrapping_mul(31) ^ k) as u8)
            .collect();
        b.insert(Kind::Raw, v);
    }
    db.commit(&b).expect("commit");
    let t = Instant::now();
    let mut found = 0;
    for _ in 0..scans {
        found = db
            .query(Query::filter(|r| r.data[0] < 16 && r.data[1] != 0))
            .expect("query")
            .collect_all()
            .expect("scan")
            .len();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "{:.0} records/s ({found} matches per scan)",
        (n * u64::from(scans)) as f64 / el
    );
}
