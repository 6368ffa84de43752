//! The bank workload shared by the backend tests and by the multi-server test's
//! child process (`src/bin/zs-tx-bank-node.rs` includes this file).
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use zs_tx::{Db, Error, Table};

/// A small xorshift generator (deterministic per seed).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Sizes of one bank run.
#[derive(Debug, Clone, Copy)]
pub struct Bank {
    pub accounts: u32,
    pub writers: u32,
    pub transfers: u32,
    pub readers: u32,
    pub initial: u64,
    /// Seeds the writers' random transfers (nodes of one multi-server run differ).
    pub seed: u64,
}

impl Bank {
    /// The size (8 threads x 100k transfers, 1,000 accounts) when
    /// `ZS_TX_BANK_FULL` is set; otherwise `transfers` per writer.
    pub fn sized(transfers: u32) -> Bank {
        let full = std::env::var_os("ZS_TX_BANK_FULL").is_some();
        Bank {
            accounts: 1000,
            writers: 8,
            transfers: if full { 100_000 } else { transfers },
            readers: 2,
            initial: 100,
            seed: 1,
        }
    }
}

/// What a run observed.
#[derive(Debug, Default)]
pub struct BankReport {
    pub committed_reads: u64,
    pub body_reads: u64,
    pub body_violations: u64,
    pub committed_violations: u64,
    pub transfers_committed: u64,
    pub redos: u64,
}

pub fn accounts(db: &Db) -> Table<u32, u64> {
    db.table::<u32, u64>("accounts")
}

/// Creates the accounts (if the table is empty).
pub fn seed(db: &Db, b: &Bank) {
    let t = accounts(db);
    if t.peek(&0).unwrap().is_some() {
        return;
    }
    db.run(|tx| {
        for i in 0..b.accounts {
            t.put(tx, &i, &b.initial)?;
        }
        Ok(())
    })
    .unwrap();
}

/// Runs the bank workload and checks: the total in every committed read, no negative
/// balance (u64 plus a checked subtraction in the body), and no lost update (every
/// final balance equals the initial one plus the committed deltas of all writers).
/// Returns what it saw; the caller asserts on body reads (mode-dependent).
pub fn run_bank(db: &Db, b: Bank) -> BankReport {
    seed(db, &b);
    let (report, deltas) = run_transfers(db, b);
    let t = accounts(db);
    // no lost update: the final balances are exactly the committed deltas applied
    let finals: Vec<u64> = db
        .run(|tx| {
            (0..b.accounts)
                .map(|i| Ok(t.get(tx, &i)?.unwrap_or(0)))
                .collect()
        })
        .unwrap();
    for (i, (f, d)) in finals.iter().zip(&deltas).enumerate() {
        assert_eq!(*f as i64, b.initial as i64 + d, "account {i}: lost update");
    }
    assert_eq!(
        finals.iter().sum::<u64>(),
        b.initial * b.accounts as u64,
        "final total"
    );
    report
}

/// The transfers and concurrent summing readers on seeded accounts, without the
/// final check: what was observed, and the net committed change of each account.
pub fn run_transfers(db: &Db, b: Bank) -> (BankReport, Vec<i64>) {
    let t = accounts(db);
    let total = b.initial * b.accounts as u64;
    let done = Arc::new(AtomicBool::new(false));
    let committed_reads = Arc::new(AtomicU64::new(0));
    let body_reads = Arc::new(AtomicU64::new(0));
    let body_violations = Arc::new(AtomicU64::new(0));
    let committed_violations = Arc::new(AtomicU64::new(0));
    let before = db.stats().redos;
    let mut deltas = vec![0i64; b.accounts as usize];
    let mut committed = 0u64;
    std::thread::scope(|s| {
        let mut readers = Vec::new();
        for r in 0..b.readers {
            let (db, t, done) = (db.clone(), t.clone(), done.clone());
            let (cr, br, bv, cv) = (
                committed_reads.clone(),
                body_reads.clone(),
                body_violations.clone(),
                committed_violations.clone(),
            );
            readers.push(s.spawn(move || {
                let mut n = 0u32;
                while !done.load(Ordering::Acquire) || n < 2 {
                    n += 1;
                    let sum = db
                        .run(|tx| {
                            let mut sum = 0u64;
                            for i in 0..b.accounts {
                                sum += t.get(tx, &i)?.unwrap_or(0);
                            }
                            br.fetch_add(1, Ordering::Relaxed);
                            if sum != total {
                                bv.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(sum)
                        })
                        .unwrap_or_else(|e| panic!("reader {r}: {e}"));
                    cr.fetch_add(1, Ordering::Relaxed);
                    if sum != total {
                        cv.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let writers: Vec<_> = (0..b.writers)
            .map(|w| {
                let (db, t) = (db.clone(), t.clone());
                s.spawn(move || {
                    let mut rng =
                        Rng(b.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                            ^ ((w as u64 + 1) * 0x1234_5678));
                    let mut deltas = vec![0i64; b.accounts as usize];
                    let mut committed = 0u64;
                    for _ in 0..b.transfers {
                        let from = rng.below(b.accounts as u64) as u32;
                        let mut to = rng.below(b.accounts as u64 - 1) as u32;
                        if to >= from {
                            to += 1;
                        }
                        let amount = 1 + rng.below(50);
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
                            .unwrap_or_else(|e: Error| panic!("writer {w}: {e}"));
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
        for w in writers {
            let (d, c) = w.join().unwrap();
            for (acc, x) in deltas.iter_mut().zip(d) {
                *acc += x;
            }
            committed += c;
        }
        done.store(true, Ordering::Release);
        for r in readers {
            r.join().unwrap();
        }
    });
    let report = BankReport {
        committed_reads: committed_reads.load(Ordering::Relaxed),
        body_reads: body_reads.load(Ordering::Relaxed),
        body_violations: body_violations.load(Ordering::Relaxed),
        committed_violations: committed_violations.load(Ordering::Relaxed),
        transfers_committed: committed,
        redos: db.stats().redos - before,
    };
    (report, deltas)
}
