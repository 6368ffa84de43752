//! The child process of the `kill -9` tests (`tests/crash.rs`): runs a commit storm
//! on a zs-db backend in one checkpoint mode and prints what is promised durable.
//!
//! `zs-tx-crash-child DIR MODE` with MODE `immediate`, `periodic` or `sets`. Workers
//! `w` move 1 from account `2w` to `2w+1` and set `seq[w]` to their count in each
//! transaction (every 8th also moves 1 to the next worker's account, linking record
//! sets). Output lines: `ack W N` (immediate: transaction N of worker W returned) and
//! `durable N0 N1 ..` (periodic modes: a checkpoint that started after these counts
//! were committed returned).
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use zs_tx::{Backend, Checkpoint, Db, Options, ZdbBackend};

/// Workers (and account pairs).
const WORKERS: u32 = 4;
/// Initial balance of every account.
const INIT: u64 = 1_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: zs-tx-crash-child DIR immediate|periodic|sets");
        std::process::exit(2);
    }
    let checkpoint = match args[2].as_str() {
        "immediate" => Checkpoint::Immediate,
        "periodic" => Checkpoint::Periodic(Duration::from_millis(30)),
        "sets" => Checkpoint::RecordSets(Duration::from_millis(30)),
        m => {
            eprintln!("unknown mode {m}");
            std::process::exit(2);
        }
    };
    let backend: Arc<dyn Backend> =
        Arc::new(ZdbBackend::open_dir(&args[1], "crash").expect("open backend"));
    let db = Db::open(
        backend,
        Options {
            checkpoint,
            ..Options::default()
        },
    )
    .expect("open db");
    let acc = db.table::<u32, u64>("acc");
    let seq = db.table::<u32, u64>("seq");
    if acc.peek(&0).expect("peek").is_none() {
        db.run(|tx| {
            for i in 0..2 * WORKERS {
                acc.put(tx, &i, &INIT)?;
            }
            for w in 0..WORKERS {
                seq.put(tx, &w, &0)?;
            }
            Ok(())
        })
        .expect("seed");
        db.checkpoint().expect("seed checkpoint");
    }
    println!("ready");
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    std::thread::scope(|s| {
        if checkpoint != Checkpoint::Immediate {
            let (db, seq, out) = (&db, &seq, out.clone());
            s.spawn(move || loop {
                let counts: Vec<u64> = (0..WORKERS)
                    .map(|w| seq.peek(&w).unwrap().unwrap())
                    .collect();
                db.checkpoint().expect("checkpoint");
                let line: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
                let mut o = out.lock().unwrap();
                writeln!(o, "durable {}", line.join(" ")).unwrap();
                o.flush().unwrap();
                drop(o);
                std::thread::sleep(Duration::from_millis(5));
            });
        }
        for w in 0..WORKERS {
            let (db, acc, seq, out) = (&db, &acc, &seq, out.clone());
            s.spawn(move || loop {
                let n = db
                    .run(|tx| {
                        let n = seq.get(tx, &w)?.unwrap() + 1;
                        let a = acc.get(tx, &(2 * w))?.unwrap();
                        let b = acc.get(tx, &(2 * w + 1))?.unwrap();
                        acc.put(tx, &(2 * w), &(a - 1))?;
                        if n % 8 == 0 {
                            let next = (2 * ((w + 1) % WORKERS)) + 1;
                            let c = acc.get(tx, &next)?.unwrap();
                            acc.put(tx, &next, &(c + 1))?;
                            acc.put(tx, &(2 * w + 1), &b)?;
                        } else {
                            acc.put(tx, &(2 * w + 1), &(b + 1))?;
                        }
                        seq.put(tx, &w, &n)?;
                        Ok(n)
                    })
                    .expect("transfer");
                if checkpoint == Checkpoint::Immediate {
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {w} {n}").unwrap();
                    o.flush().unwrap();
                }
            });
        }
    });
}
