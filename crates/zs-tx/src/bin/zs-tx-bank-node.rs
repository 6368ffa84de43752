//! One application server of the multi-server bank test (`tests/pg.rs`): an engine
//! on a PostgreSQL table shared with other processes (`PgBackend::connect_shared`),
//! running random transfers among the accounts on `WRITERS` threads while one
//! reader sums every balance inside transactions.
//!
//! `zs-tx-bank-node PARAMS TABLE WRITERS TRANSFERS SEED`: prints `ready` once the
//! engine is open, waits for a line on stdin (so every node starts together), runs,
//! then prints
//! `report TRANSFERS_COMMITTED BODY_READS BODY_VIOLATIONS COMMITTED_READS COMMITTED_VIOLATIONS REDOS`
//! and `deltas D0 D1 ..` (the net committed change of each account by this node).
//! The accounts (`accounts`, u32 -> u64) must already hold `ACCOUNTS` x 100.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use zs_tx::{Backend, Db, Options, PgBackend};

const ACCOUNTS: u32 = 1000;
const INITIAL: u64 = 100;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: zs-tx-bank-node PARAMS TABLE WRITERS TRANSFERS SEED");
        std::process::exit(2);
    }
    let writers: u64 = a[3].parse().expect("WRITERS");
    let transfers: u64 = a[4].parse().expect("TRANSFERS");
    let seed: u64 = a[5].parse().expect("SEED");
    let backend: Arc<dyn Backend> = Arc::new(
        PgBackend::connect_shared(&a[1], &a[2], writers as usize + 1, None).expect("connect"),
    );
    let db = Db::open(
        backend,
        Options {
            max_redo: 100_000,
            ..Options::default()
        },
    )
    .expect("open");
    let t = db.table::<u32, u64>("accounts");
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");

    let total = INITIAL * ACCOUNTS as u64;
    let done = AtomicBool::new(false);
    let (body_reads, body_bad, reads, reads_bad) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let mut deltas = vec![0i64; ACCOUNTS as usize];
    let mut committed = 0u64;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut n = 0;
            while !done.load(Ordering::Acquire) || n < 2 {
                n += 1;
                let sum = db
                    .run(|tx| {
                        let mut sum = 0u64;
                        for i in 0..ACCOUNTS {
                            sum += t.get(tx, &i)?.unwrap_or(0);
                        }
                        body_reads.fetch_add(1, Ordering::Relaxed);
                        if sum != total {
                            body_bad.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(sum)
                    })
                    .expect("reader");
                reads.fetch_add(1, Ordering::Relaxed);
                if sum != total {
                    reads_bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let hs: Vec<_> = (0..writers)
            .map(|w| {
                let (db, t) = (&db, &t);
                s.spawn(move || {
                    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((w + 1) * 0x1234_5678);
                    let mut next = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    let mut deltas = vec![0i64; ACCOUNTS as usize];
                    let mut committed = 0u64;
                    for _ in 0..transfers {
                        let from = (next() % ACCOUNTS as u64) as u32;
                        let mut to = (next() % (ACCOUNTS as u64 - 1)) as u32;
                        if to >= from {
                            to += 1;
                        }
                        let amount = 1 + next() % 50;
                        let moved = db
                            .run(|tx| {
                                let a = t.get(tx, &from)?.unwrap_or(0);
                                let Some(left) = a.checked_sub(amount) else {
                                    return Ok(false);
                                };
                                let c = t.get(tx, &to)?.unwrap_or(0);
                                t.put(tx, &from, &left)?;
                                t.put(tx, &to, &(c + amount))?;
                                Ok(true)
                            })
                            .expect("transfer");
                        if moved {
                            deltas[from as usize] -= amount as i64;
                            deltas[to as usize] += amount as i64;
                            committed += 1;
                        }
                    }
                    (deltas, committed)
                })
            })
            .collect();
        for h in hs {
            let (d, c) = h.join().expect("writer");
            for (a, b) in deltas.iter_mut().zip(d) {
                *a += b;
            }
            committed += c;
        }
        done.store(true, Ordering::Release);
        reader.join().expect("reader");
    });
    println!(
        "report {committed} {} {} {} {} {}",
        body_reads.load(Ordering::Relaxed),
        body_bad.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        reads_bad.load(Ordering::Relaxed),
        db.stats().redos
    );
    let d: Vec<String> = deltas.iter().map(|d| d.to_string()).collect();
    println!("deltas {}", d.join(" "));
    db.close().expect("close");
}
