//! The bank test (Jepsen's `bank`, with readers concurrent with the transfers and a
//! check of every body read), on the in-memory engine and on zs-db. The PostgreSQL
//! run is in `pg.rs`. `ZS_TX_BANK_FULL=1` runs the full size (8 x 100k).

mod common;

use std::sync::Arc;

use common::{run_bank, Bank};
use zs_tx::{Backend, Checkpoint, Db, Isolation, Options, ZdbBackend};

#[test]
fn bank_opaque_every_body_read_sees_the_total() {
    let db = Db::in_memory(Options::default());
    let r = run_bank(&db, Bank::sized(2_500));
    assert_eq!(r.committed_violations, 0, "{r:?}");
    assert_eq!(
        r.body_violations, 0,
        "opacity: a body saw a wrong total: {r:?}"
    );
    assert!(r.committed_reads >= 2 && r.transfers_committed > 0, "{r:?}");
    eprintln!("opaque: {r:?}");
}

#[test]
fn bank_zeze_mode_commits_stay_serializable() {
    let db = Db::in_memory(Options {
        isolation: Isolation::Zeze,
        ..Options::default()
    });
    // smaller than the opaque run: a Zeze-mode reader locks all 1,000 accounts at
    // commit, so writers queue behind it (5.8 s at 2,500 on the loaded 2-core box)
    let r = run_bank(&db, Bank::sized(1_000));
    // committed reads are validated; body reads may be inconsistent (Zeze's weakness,
    // shown deterministically in procedures.rs), so they are only reported here
    assert_eq!(r.committed_violations, 0, "{r:?}");
    eprintln!("zeze: {r:?}");
}

#[test]
fn bank_without_keeping_locks_on_redo() {
    let db = Db::in_memory(Options {
        keep_locks_on_redo: false,
        max_redo: 10_000,
        ..Options::default()
    });
    let r = run_bank(&db, Bank::sized(2_000));
    assert_eq!(r.committed_violations + r.body_violations, 0, "{r:?}");
}

#[test]
fn bank_on_zs_db_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Db {
        let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir.path(), "bank").unwrap());
        Db::open(
            b,
            Options {
                checkpoint: Checkpoint::Periodic(std::time::Duration::from_millis(20)),
                ..Options::default()
            },
        )
        .unwrap()
    };
    let db = open();
    let r = run_bank(&db, Bank::sized(2_000));
    assert_eq!(r.committed_violations + r.body_violations, 0, "{r:?}");
    let before: Vec<Option<u64>> = (0..1000)
        .map(|i| common::accounts(&db).peek(&i).unwrap())
        .collect();
    db.close().unwrap();
    drop(db);
    let db = open();
    let after: Vec<Option<u64>> = (0..1000)
        .map(|i| common::accounts(&db).peek(&i).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(after.iter().map(|v| v.unwrap()).sum::<u64>(), 100_000);
}

#[test]
fn bank_on_zs_db_immediate_mode() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir.path(), "bank").unwrap());
    let db = Db::open(b, Options::default()).unwrap();
    let r = run_bank(
        &db,
        Bank {
            transfers: 150,
            ..Bank::sized(150)
        },
    );
    assert_eq!(r.committed_violations + r.body_violations, 0, "{r:?}");
    drop(db);
    let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir.path(), "bank").unwrap());
    let db = Db::open(b, Options::default()).unwrap();
    let sum: u64 = (0..1000)
        .map(|i| common::accounts(&db).peek(&i).unwrap().unwrap())
        .sum();
    assert_eq!(sum, 100_000);
}
