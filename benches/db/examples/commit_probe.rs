//! Profiling aid for the durable-commit case: `commit_probe <zs|fjall|limit> [n] [dir]`
//! makes `n` durable single-record commits (100-byte values) the way the `db` suite
//! does, and prints commits/s. Run it under `strace -f -c` to compare the system calls
//! each engine makes per commit.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use zs_db::{Database, DbOptions, DirVfs, Kind, Vfs};

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "zs".into());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let value = vec![7u8; 100];
    let t = Instant::now();
    match which.as_str() {
        "zs" => {
            let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(&dir).expect("dir"));
            let db = Database::create(vfs, "probe", DbOptions::default()).expect("create");
            let t = Instant::now();
            for _ in 0..n {
                db.insert(Kind::Raw, &value).expect("insert");
            }
            report("zs-db", n, t);
        }
        "fjall" => {
            let ks = fjall::Config::new(&dir).open().expect("fjall");
            let p = ks
                .open_partition("t", fjall::PartitionCreateOptions::default())
                .expect("partition");
            let t = Instant::now();
            for i in 0..n {
                p.insert(i.to_be_bytes(), value.clone()).expect("insert");
                ks.persist(fjall::PersistMode::SyncData).expect("persist");
            }
            report("fjall", n, t);
        }
        "limit" => {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(dir.join("limit")).expect("file");
            f.write_all_at(&vec![0u8; 4 << 20], 0).expect("prealloc");
            f.sync_all().expect("sync");
            let rec = [7u8; 136];
            let t = Instant::now();
            for i in 0..n {
                f.write_all_at(&rec, i * 136).expect("write");
                f.sync_data().expect("fdatasync");
            }
            report("limit", n, t);
        }
        other => eprintln!("unknown engine {other:?} (zs, fjall, limit)"),
    }
    let _ = t;
}

fn report(name: &str, n: u64, t: Instant) {
    println!(
        "{name}: {n} commits, {:.0} commits/s",
        n as f64 / t.elapsed().as_secs_f64()
    );
}
