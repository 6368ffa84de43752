//! Profiling aid: `commit_ab [blocks]` interleaves blocks of 50 durable single-record
//! commits of zs-db, fjall (`persist(SyncAll)` per insert) and a raw `pwrite` +
//! `fdatasync` loop into preallocated room, so that all three see the same moments of a
//! shared disk whose latency swings between seconds, and prints the rates and ratios.
#![forbid(unsafe_code)]
use std::sync::Arc;
use std::time::{Duration, Instant};
use zs_db::{Database, DbOptions, DirVfs, Kind, Vfs};
fn main() {
    let blocks: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let tmp = tempfile::tempdir().expect("tempdir");
    let value = vec![7u8; 100];
    let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(tmp.path()).expect("dir"));
    let db = Database::create(vfs, "probe", DbOptions::default()).expect("create");
    let ks = fjall::Config::new(tmp.path().join("fj"))
        .open()
        .expect("fjall");
    let p = ks
        .open_partition("t", fjall::PartitionCreateOptions::default())
        .expect("p");
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(tmp.path().join("limit")).expect("file");
    f.write_all_at(&vec![0u8; 8 << 20], 0).expect("prealloc");
    f.sync_all().expect("sync");
    let mut at = 0u64;
    let mut tot = [Duration::ZERO; 3];
    let mut i = 0u64;
    for _ in 0..blocks {
        let t = Instant::now();
        for _ in 0..50 {
            db.insert(Kind::Raw, &value).expect("insert");
        }
        tot[0] += t.elapsed();
        let t = Instant::now();
        for _ in 0..50 {
            i += 1;
            p.insert(i.to_be_bytes(), value.clone()).expect("i");
            ks.persist(fjall::PersistMode::SyncAll).expect("p");
        }
        tot[1] += t.elapsed();
        let t = Instant::now();
        for _ in 0..50 {
            f.write_all_at(&[7u8; 136], at).expect("w");
            at += 136;
            f.sync_data().expect("s");
        }
        tot[2] += t.elapsed();
    }
    let n = 50.0 * blocks as f64;
    println!(
        "zs {:.0}/s  fjall {:.0}/s  limit {:.0}/s  zs/fjall {:.3} zs/limit {:.3}",
        n / tot[0].as_secs_f64(),
        n / tot[1].as_secs_f64(),
        n / tot[2].as_secs_f64(),
        tot[1].as_secs_f64() / tot[0].as_secs_f64(),
        tot[2].as_secs_f64() / tot[0].as_secs_f64()
    );
}
