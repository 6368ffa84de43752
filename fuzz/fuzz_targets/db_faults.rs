//! zs-db under injected I/O faults and power cuts (redb's FuzzerBackend is the model):
//! an Arbitrary script of writes runs against a MemVfs that fails writes/fsyncs or
//! writes short; then the power is cut (unsynced writes dropped or torn) and the store
//! reopened. Every acknowledged write must be there, intact; a failed write may or may
//! not be; nothing else may appear; no damaged region may be reported; a second reopen
//! must see the same state.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use zs_db::{Batch, Database, DbOptions, Fault, FaultKind, Kind, MemVfs, Vfs};

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        len: u8,
        byte: u8,
    },
    Batch {
        items: Vec<(u8, u8)>,
        /// the items are repeated 1 + repeat % 48 times: up to ~100 KB, larger than
        /// the 64 KiB write buffer of a `small` script (written in pieces)
        repeat: u8,
        delete: Option<u8>,
    },
    Update {
        pick: u8,
        len: u8,
        byte: u8,
    },
    Delete {
        pick: u8,
    },
    Compact,
    Crash {
        seed: u64,
    },
}

#[derive(Arbitrary, Debug)]
struct Script {
    compress: bool,
    /// 64 KiB write buffer and 16 KiB of cache: big batches go out in pieces, and
    /// most batches are bulk commits (not cached, warmed in the background)
    small: bool,
    faults: Vec<(u8, u8, u16)>,
    ops: Vec<Op>,
    seed: u64,
}

fn val(len: u8, byte: u8, id: u64) -> Vec<u8> {
    let mut v = vec![byte; len as usize + 1];
    v[0] = id as u8; // ties a value to its id
    v
}

/// Expected content: id -> one of the allowed values (None = absent).
type Model = HashMap<u64, Vec<Option<Vec<u8>>>>;

fn verify(db: &Database, model: &mut Model) {
    assert!(
        db.open_report().corrupt.is_empty(),
        "damaged region after a crash: {:?}",
        db.open_report()
    );
    for (id, allowed) in model.iter_mut() {
        let got = db.get(*id).expect("read after reopen").map(|r| r.data);
        assert!(
            allowed.contains(&got),
            "id {id}: got {got:?}, allowed {allowed:?}"
        );
        *allowed = vec![got];
    }
    for r in db.cursor(1, false) {
        let r = r.expect("cursor");
        assert!(model.contains_key(&r.id), "unexpected record {}", r.id);
    }
    model.retain(|_, a| a[0].is_some());
}

fn live(model: &Model) -> Vec<u64> {
    let mut v: Vec<u64> = model
        .iter()
        .filter(|(_, a)| a.len() == 1 && a[0].is_some())
        .map(|(k, _)| *k)
        .collect();
    v.sort_unstable();
    v
}

fuzz_target!(|s: Script| {
    let mem = Arc::new(MemVfs::new());
    let vfs: Arc<dyn Vfs> = mem.clone();
    let mut opts = DbOptions {
        compress: s.compress,
        ..Default::default()
    };
    if s.small {
        opts.write_buffer = 64 << 10;
        opts.cache_bytes = 16 << 10;
    }
    let mut db = Database::create(vfs.clone(), "f", opts.clone()).expect("create");
    let faults = s
        .faults
        .iter()
        .take(4)
        .map(|&(at, k, n)| Fault {
            at_op: at as u64,
            kind: match k % 3 {
                0 => FaultKind::WriteError,
                1 => FaultKind::ShortWrite(n as usize),
                _ => FaultKind::SyncError,
            },
        })
        .collect();
    mem.set_faults(faults);
    let mut model: Model = HashMap::new();
    for op in s.ops.iter().take(64) {
        if db.is_poisoned() && !matches!(op, Op::Crash { .. }) {
            continue; // refused without touching the file
        }
        let next = db.stats().next_id;
        let ids = live(&model);
        let pick = |p: u8| (!ids.is_empty()).then(|| ids[p as usize % ids.len()]);
        match op {
            Op::Insert { len, byte } => {
                let v = val(*len, *byte, next);
                match db.insert(Kind::Raw, &v) {
                    Ok(id) => {
                        assert_eq!(id, next);
                        model.insert(id, vec![Some(v)]);
                    }
                    Err(_) => {
                        model.insert(next, vec![None, Some(v)]);
                    }
                }
            }
            Op::Batch {
                items,
                repeat,
                delete,
            } => {
                let mut b = Batch::new();
                let mut planned = Vec::new();
                let n = items.len().min(8) * (1 + *repeat as usize % 48);
                for (i, (len, byte)) in items.iter().take(8).cycle().take(n).enumerate() {
                    let v = val(*len, *byte, next + i as u64);
                    b.insert(Kind::Raw, v.clone());
                    planned.push((next + i as u64, v));
                }
                let del = delete.and_then(pick);
                if let Some(d) = del {
                    b.delete(d);
                }
                let ok = db.commit(&b).is_ok();
                for (id, v) in planned {
                    model.insert(
                        id,
                        if ok {
                            vec![Some(v)]
                        } else {
                            vec![None, Some(v)]
                        },
                    );
                }
                if let Some(d) = del {
                    let old = model[&d][0].clone();
                    model.insert(d, if ok { vec![None] } else { vec![old, None] });
                }
            }
            Op::Update { pick: p, len, byte } => {
                let Some(id) = pick(*p) else { continue };
                let v = val(*len, *byte, id);
                let old = model[&id][0].clone();
                let ok = db.update(id, Kind::Raw, &v).is_ok();
                model.insert(
                    id,
                    if ok {
                        vec![Some(v)]
                    } else {
                        vec![old, Some(v)]
                    },
                );
            }
            Op::Delete { pick: p } => {
                let Some(id) = pick(*p) else { continue };
                let old = model[&id][0].clone();
                let ok = db.delete(id).is_ok();
                model.insert(id, if ok { vec![None] } else { vec![old, None] });
            }
            Op::Compact => {
                let _ = db.compact();
                if !db.is_poisoned() {
                    // a failed compaction leaves the database as it was
                    for id in live(&model) {
                        let got = db.get(id).expect("read after compaction").map(|r| r.data);
                        assert_eq!(Some(&got), model[&id].first(), "id {id} after compaction");
                    }
                }
            }
            Op::Crash { seed } => {
                db.abandon();
                mem.crash(*seed);
                db = Database::open_with(vfs.clone(), "f", opts.clone())
                    .expect("reopen after crash");
                verify(&db, &mut model);
            }
        }
    }
    db.abandon();
    mem.crash(s.seed);
    let db = Database::open(vfs.clone(), "f").expect("final reopen");
    verify(&db, &mut model);
    let n = db.len();
    drop(db);
    let db = Database::open(vfs, "f").expect("second reopen");
    assert_eq!(db.len(), n, "a second reopen sees the same state");
    verify(&db, &mut model);
});
