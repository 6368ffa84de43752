//! Profiling aid: `commit_ab [blocks] [sides]` interleaves durable single-record
//! commits of several sides commit by commit (each step in another order of the
//! sides), so that all of them see the same moments of a shared disk whose flush latency swings between
//! phases seconds long, and prints each side's rate from the geometric mean of its
//! block times (a block = its 20 commits of a round, the way the `db` suite does) and its ratio to fjall.
//!
//! Sides (comma-separated, default all): `zs` (zs-db `insert`, Immediate), `fjall`
//! (`insert` + `persist(SyncData)`), and raw 136-byte-record loops that isolate one
//! write pattern each: `zeros` (pwrite + fdatasync into zero-filled room, zs-db's
//! layout), `hole` (append through the cursor into a `set_len` hole + fdatasync,
//! fjall's journal layout), `grow` (append past the end + fdatasync: the size changes
//! every commit), `dsync` (one `pwritev2(RWF_DSYNC)` into zero-filled room).
#![forbid(unsafe_code)]
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;
use zs_db::{Database, DbOptions, DirVfs, Kind, Vfs};

#[path = "../src/orders.rs"]
mod orders;
use orders::permutations;

const BLOCK: u64 = 20;
const REC: usize = 136;

fn main() {
    let mut args = std::env::args().skip(1);
    let blocks: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let want: Vec<String> = args
        .next()
        .unwrap_or_else(|| "zs,fjall,zeros,hole,grow,dsync".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let value = vec![7u8; 100];
    let mut sides: Vec<(String, Box<dyn FnMut()>)> = Vec::new();
    for name in &want {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let v = value.clone();
        let f: Box<dyn FnMut()> = match name.as_str() {
            "zs" => {
                let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(&dir).expect("dir"));
                let db = Database::create(vfs, "probe", DbOptions::default()).expect("create");
                Box::new(move || {
                    db.insert(Kind::Raw, &v).expect("insert");
                })
            }
            "fjall" => {
                let ks = fjall::Config::new(&dir).open().expect("fjall");
                let p = ks
                    .open_partition("t", fjall::PartitionCreateOptions::default())
                    .expect("p");
                let mut i = 0u64;
                Box::new(move || {
                    i += 1;
                    p.insert(i.to_be_bytes(), v.clone()).expect("i");
                    ks.persist(fjall::PersistMode::SyncData).expect("p");
                })
            }
            "zeros" | "dsync" => {
                let f = std::fs::File::create(dir.join("log")).expect("file");
                f.write_all_at(&vec![0u8; 32 << 20], 0).expect("prealloc");
                f.sync_all().expect("sync");
                let mut at = 0u64;
                let dsync = name == "dsync";
                Box::new(move || {
                    if dsync {
                        let n = rustix::io::pwritev2(
                            &f,
                            &[std::io::IoSlice::new(&[7u8; REC])],
                            at,
                            rustix::io::ReadWriteFlags::DSYNC,
                        )
                        .expect("pwritev2");
                        assert_eq!(n, REC);
                    } else {
                        f.write_all_at(&[7u8; REC], at).expect("w");
                        f.sync_data().expect("s");
                    }
                    at += REC as u64;
                })
            }
            "hole" | "grow" => {
                let mut f = std::fs::File::create(dir.join("log")).expect("file");
                if name == "hole" {
                    f.set_len(32 << 20).expect("set_len");
                    f.sync_all().expect("sync");
                }
                Box::new(move || {
                    f.write_all(&[7u8; REC]).expect("w");
                    f.sync_data().expect("s");
                })
            }
            other => panic!("unknown side {other:?}"),
        };
        sides.push((name.clone(), f));
    }
    let k = sides.len();
    let mut log_sum = vec![0f64; k];
    for (_, f) in sides.iter_mut() {
        f(); // warm: first commit, file creation
    }
    // commit by commit, each step in the next order of the sides (every order in
    // turn, as the `db` suite does); a side's block = its BLOCK commits of a round
    let orders = permutations(k);
    let mut step = 0usize;
    let mut each: Vec<Vec<f64>> = vec![Vec::new(); k];
    for _ in 0..blocks {
        let mut times = vec![0f64; k];
        for _ in 0..BLOCK {
            for &s in &orders[step % orders.len()] {
                let t = Instant::now();
                (sides[s].1)();
                let el = t.elapsed().as_secs_f64();
                times[s] += el;
                each[s].push(el);
            }
            step += 1;
        }
        for (l, t) in log_sum.iter_mut().zip(&times) {
            *l += t.ln();
        }
    }
    let rates: Vec<f64> = log_sum
        .iter()
        .map(|l| BLOCK as f64 / (l / blocks as f64).exp())
        .collect();
    let fj = want.iter().position(|n| n == "fjall");
    for (i, (name, _)) in sides.iter().enumerate() {
        let e = &mut each[i];
        e.sort_by(f64::total_cmp);
        let q = |p: f64| e[((e.len() - 1) as f64 * p) as usize] * 1e3;
        print!(
            "{name} {:.0}/s (ms p10 {:.3} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}; mean {:.3})",
            rates[i],
            q(0.1),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            e.iter().sum::<f64>() / e.len() as f64 * 1e3
        );
        if let Some(fj) = fj {
            print!(" ({:.3}x fjall)", rates[i] / rates[fj]);
        }
        println!();
    }
}
