//! One application server of the multi-server bank test (`tests/pg.rs`): an engine
//! on a PostgreSQL table shared with other processes (`PgBackend::connect_shared`),
//! running random transfers among the accounts on `WRITERS` threads while one
//! reader sums every balance inside transactions (the workload of the single-server
//! bank tests, `tests/common/mod.rs`, included here).
//!
//! `zs-tx-bank-node PARAMS TABLE WRITERS TRANSFERS SEED`: prints `ready` once the
//! engine is open, waits for a line on stdin (so every node starts together), runs,
//! then prints
//! `report TRANSFERS_COMMITTED BODY_READS BODY_VIOLATIONS COMMITTED_READS COMMITTED_VIOLATIONS REDOS`
//! and `deltas D0 D1 ..` (the net committed change of each account by this node).
//! The accounts (`accounts`, u32 -> u64) must already hold 1,000 x 100.
#![forbid(unsafe_code)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::BufRead;
use std::sync::Arc;

use zs_tx::{Backend, Db, Options, PgBackend};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: zs-tx-bank-node PARAMS TABLE WRITERS TRANSFERS SEED");
        std::process::exit(2);
    }
    let bank = common::Bank {
        accounts: 1000,
        writers: a[3].parse().expect("WRITERS"),
        transfers: a[4].parse().expect("TRANSFERS"),
        readers: 1,
        initial: 100,
        seed: a[5].parse().expect("SEED"),
    };
    let backend: Arc<dyn Backend> = Arc::new(
        PgBackend::connect_shared(&a[1], &a[2], bank.writers as usize + 1, None).expect("connect"),
    );
    let db = Db::open(
        backend,
        Options {
            max_redo: 100_000,
            ..Options::default()
        },
    )
    .expect("open");
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");

    let (r, deltas) = common::run_transfers(&db, bank);
    println!(
        "report {} {} {} {} {} {}",
        r.transfers_committed,
        r.body_reads,
        r.body_violations,
        r.committed_reads,
        r.committed_violations,
        r.redos
    );
    let d: Vec<String> = deltas.iter().map(|d| d.to_string()).collect();
    println!("deltas {}", d.join(" "));
    db.close().expect("close");
}
