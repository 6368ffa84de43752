//! Profiling aid: `sync_probe [blocks]` interleaves blocks of 8 durable 136-byte
//! appends through four file layouts (overwriting zero-filled preallocated room,
//! writing into a sparse `set_len` file, extending the file, and zs-db itself) and
//! prints each one's median block rate: which layout a one-write-plus-fdatasync commit
//! is cheapest on, on this disk.
#![forbid(unsafe_code)]
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use zs_db::{Database, DbOptions, DirVfs, Kind, Vfs};

fn main() {
    let blocks: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40);
    let tmp = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(tmp.path().join(name))
            .expect("file")
    };
    let pre = open("pre");
    pre.write_all_at(&vec![0u8; 16 << 20], 0).expect("prealloc");
    pre.sync_all().expect("sync");
    let sparse = open("sparse");
    sparse.set_len(32 << 20).expect("set_len");
    sparse.sync_all().expect("sync");
    let grow = open("grow");
    let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(tmp.path()).expect("dir"));
    let db = Database::create(vfs, "probe", DbOptions::default()).expect("create");
    let rec = [7u8; 136];
    let mut at = [0u64; 3];
    let names = ["prealloc", "sparse", "grow", "zs-db"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for b in 0..blocks {
        for j in 0..4 {
            let s = (j + b) % 4;
            let t = Instant::now();
            for _ in 0..8 {
                match s {
                    3 => {
                        db.insert(Kind::Raw, &rec[..100]).expect("insert");
                    }
                    _ => {
                        let f = [&pre, &sparse, &grow][s];
                        f.write_all_at(&rec, at[s]).expect("write");
                        at[s] += rec.len() as u64;
                        f.sync_data().expect("fdatasync");
                    }
                }
            }
            times[s].push(t.elapsed().as_secs_f64());
        }
    }
    for (s, name) in names.iter().enumerate() {
        let mut v = times[s].clone();
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name:>9}: {:.0} commits/s (median block), {:.0} (fastest block)",
            8.0 / v[v.len() / 2],
            8.0 / v[0]
        );
    }
}
