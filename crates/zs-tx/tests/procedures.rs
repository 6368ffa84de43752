//! Procedures: opacity vs Zeze semantics (deterministic interleaving), redo budget,
//! savepoints, actions bound to the outcome, listeners, zero-copy reads.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use zs_tx::{Db, Error, Isolation, Options};

/// Thread A reads account 0, then thread B commits a transfer 0 -> 1, then A reads
/// account 1. Returns the sums A's body saw on each attempt.
fn interleaved_sum(opts: Options) -> Vec<u64> {
    let db = Db::in_memory(opts);
    let t = db.table::<u32, u64>("acc");
    db.run(|tx| {
        t.put(tx, &0, &50)?;
        t.put(tx, &1, &50)
    })
    .unwrap();
    let mut seen = Vec::new();
    let mut first = true;
    db.run(|tx| {
        let a = t.get(tx, &0)?.unwrap();
        if first {
            first = false;
            let (db2, t2) = (db.clone(), t.clone());
            std::thread::spawn(move || {
                db2.run(|tx| {
                    let x = t2.get(tx, &0)?.unwrap();
                    let y = t2.get(tx, &1)?.unwrap();
                    t2.put(tx, &0, &(x - 20))?;
                    t2.put(tx, &1, &(y + 20))
                })
                .unwrap()
            })
            .join()
            .unwrap();
        }
        let b = t.get(tx, &1)?.unwrap();
        seen.push(a + b);
        Ok(())
    })
    .unwrap();
    seen
}

#[test]
fn opaque_body_sees_one_snapshot() {
    // the read of account 1 comes from the body's snapshot: the total holds
    assert_eq!(interleaved_sum(Options::default()), vec![100]);
    // with one version kept the snapshot's version is gone: the attempt is redone
    // (never shown a mixed state)
    let seen = interleaved_sum(Options {
        versions: 1,
        ..Options::default()
    });
    assert_eq!(seen, vec![100]);
}

#[test]
fn zeze_body_can_see_a_mixed_state_but_is_redone() {
    // Zeze's documented weakness: the first attempt sees 50 + 70 = 120; its commit
    // fails validation, the redo sees 100
    let seen = interleaved_sum(Options {
        isolation: Isolation::Zeze,
        ..Options::default()
    });
    assert_eq!(seen, vec![120, 100]);
}

#[test]
fn zeze_read_only_bodies_are_validated_too() {
    let db = Db::in_memory(Options {
        isolation: Isolation::Zeze,
        ..Options::default()
    });
    let t = db.table::<u32, u64>("k");
    let mut attempts = 0;
    let v = db
        .run(|tx| {
            attempts += 1;
            let v = t.get(tx, &7)?;
            if attempts == 1 {
                let (db2, t2) = (db.clone(), t.clone());
                std::thread::spawn(move || db2.run(|tx| t2.put(tx, &7, &1)).unwrap())
                    .join()
                    .unwrap();
            }
            Ok(v)
        })
        .unwrap();
    assert_eq!((attempts, v), (2, Some(1)));
}

#[test]
fn budget_spent_is_a_clear_error_and_runs_rollback_actions_once() {
    let db = Db::in_memory(Options {
        max_redo: 3,
        keep_locks_on_redo: false,
        ..Options::default()
    });
    let t = db.table::<u32, u64>("k");
    let rolled = Rc::new(RefCell::new(0));
    let committed = Rc::new(RefCell::new(0));
    let mut attempts = 0;
    let r = db.run(|tx| {
        attempts += 1;
        let v = t.get(tx, &1)?.unwrap_or(0);
        // someone else always commits the record in between
        let (db2, t2) = (db.clone(), t.clone());
        std::thread::spawn(move || db2.run(|tx| t2.put(tx, &1, &(v + 100))).unwrap())
            .join()
            .unwrap();
        t.put(tx, &1, &(v + 1))?;
        let (r, c) = (rolled.clone(), committed.clone());
        tx.on_rollback(move || *r.borrow_mut() += 1);
        tx.on_commit(move || *c.borrow_mut() += 1);
        Ok(())
    });
    assert_eq!(r, Err(Error::RetriesExhausted { attempts: 4 }));
    assert_eq!(attempts, 4);
    assert_eq!((*rolled.borrow(), *committed.borrow()), (1, 0));
    assert_eq!(t.peek(&1).unwrap(), Some(400));
    let s = db.stats();
    assert_eq!((s.failures, s.redos), (1, 3));
}

#[test]
fn redo_keeping_locks_commits_a_hot_record() {
    let db = Db::in_memory(Options {
        max_redo: 2,
        ..Options::default()
    });
    let t = db.table::<u32, u64>("hot");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..2000 {
                    db.run(|tx| {
                        let v = t.get(tx, &0)?.unwrap_or(0);
                        t.put(tx, &0, &(v + 1))
                    })
                    .expect("a redo holding the locks cannot conflict again");
                }
            });
        }
    });
    assert_eq!(t.peek(&0).unwrap(), Some(8000));
}

#[test]
fn actions_run_once_after_commit_even_when_redone() {
    let db = Db::in_memory(Options::default());
    let t = db.table::<u32, u64>("k");
    let (sent_tx, sent) = mpsc::channel();
    let mut attempts = 0;
    db.run(|tx| {
        attempts += 1;
        let v = t.get(tx, &1)?.unwrap_or(0);
        let s = sent_tx.clone();
        tx.on_commit(move || s.send(v).unwrap());
        if attempts == 1 {
            let (db2, t2) = (db.clone(), t.clone());
            std::thread::spawn(move || db2.run(|tx| t2.put(tx, &1, &5)).unwrap())
                .join()
                .unwrap();
        }
        t.put(tx, &1, &(v + 1))
    })
    .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(sent.try_iter().collect::<Vec<_>>(), vec![5]);
    assert_eq!(t.peek(&1).unwrap(), Some(6));
}

#[test]
fn abort_rolls_back_everything_and_runs_rollback_actions() {
    let db = Db::in_memory(Options::default());
    let t = db.table::<u32, String>("k");
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let r: Result<(), Error> = db.run(|tx| {
        t.put(tx, &1, &"x".to_string())?;
        let (a, b) = (l.clone(), l.clone());
        tx.on_commit(move || a.borrow_mut().push("commit"));
        tx.on_rollback(move || b.borrow_mut().push("rollback"));
        Err(Error::Abort("no".into()))
    });
    assert_eq!(r, Err(Error::Abort("no".into())));
    assert_eq!(*log.borrow(), vec!["rollback"]);
    assert_eq!(t.peek(&1).unwrap(), None);
}

#[test]
fn nested_procedures_roll_back_partially() {
    let db = Db::in_memory(Options::default());
    let t = db.table::<u32, u64>("k");
    let log = Rc::new(RefCell::new(Vec::new()));
    db.run(|tx| {
        t.put(tx, &1, &1)?;
        let l = log.clone();
        // a failing nested procedure: its writes and commit actions vanish
        let r = tx.nested(|tx| {
            t.put(tx, &1, &99)?;
            t.put(tx, &2, &2)?;
            let (a, b) = (l.clone(), l.clone());
            tx.on_commit(move || a.borrow_mut().push("inner commit"));
            tx.on_rollback(move || b.borrow_mut().push("inner rollback"));
            // a nested-nested one that succeeds, inside the one that fails
            tx.nested(|tx| t.put(tx, &3, &3))?;
            Err::<(), _>(Error::Abort("inner".into()))
        });
        assert_eq!(r, Err(Error::Abort("inner".into())));
        assert_eq!(t.get(tx, &1)?, Some(1), "the outer write is back");
        assert_eq!(t.get(tx, &2)?, None);
        assert_eq!(t.get(tx, &3)?, None);
        // a succeeding nested procedure keeps its writes
        tx.nested(|tx| t.put(tx, &4, &4))?;
        let a = l.clone();
        tx.on_commit(move || a.borrow_mut().push("outer commit"));
        Ok(())
    })
    .unwrap();
    assert_eq!(*log.borrow(), vec!["inner rollback", "outer commit"]);
    assert_eq!(t.peek(&1).unwrap(), Some(1));
    assert_eq!(t.peek(&2).unwrap(), None);
    assert_eq!(t.peek(&3).unwrap(), None);
    assert_eq!(t.peek(&4).unwrap(), Some(4));
}

#[test]
fn nesting_depth_is_bounded() {
    let db = Db::in_memory(Options::default());
    fn dive(tx: &mut zs_tx::Tx<'_>, n: u32) -> zs_tx::Result<u32> {
        tx.nested(|tx| {
            if n == 0 {
                Ok(0)
            } else {
                dive(tx, n - 1).map(|d| d + 1)
            }
        })
    }
    assert_eq!(db.run(|tx| dive(tx, 10)).unwrap(), 10);
    assert!(matches!(db.run(|tx| dive(tx, 1000)), Err(Error::Abort(_))));
}

#[test]
fn listeners_get_committed_deltas_in_commit_order() {
    let db = Db::in_memory(Options::default());
    let t = db.table::<u32, u64>("k");
    let other = db.table::<u32, u64>("other");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    t.listen(move |ts, k, v| s.lock().unwrap().push((ts, k, v)));
    std::thread::scope(|sc| {
        for w in 0..4u32 {
            let (db, t, other) = (&db, &t, &other);
            sc.spawn(move || {
                for i in 0..200u32 {
                    db.run(|tx| {
                        let v = t.get(tx, &(i % 5))?.unwrap_or(0);
                        t.put(tx, &(i % 5), &(v + 1))?;
                        other.put(tx, &w, &1)
                    })
                    .unwrap();
                }
            });
        }
    });
    let _ = db.run(|tx| {
        t.put(tx, &9, &1)
            .and_then(|_| Err::<(), _>(Error::Abort("x".into())))
    });
    db.run(|tx| t.remove(tx, &0)).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        801,
        "one delta per committed write of this table only"
    );
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "commit order");
    // replaying the deltas gives the final state: in order, none lost
    let mut state = std::collections::HashMap::new();
    for (_, k, v) in seen.iter() {
        state.insert(*k, *v);
    }
    for k in 0..5u32 {
        assert_eq!(state[&k], t.peek(&k).unwrap());
    }
    assert_eq!(state[&0], None);
    assert!(!state.contains_key(&9), "aborted writes are not published");
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Player {
    name: String,
    level: u32,
    items: Vec<u64>,
}

#[test]
fn rkyv_values_and_zero_copy_reads() {
    let db = Db::in_memory(Options::default());
    let t = db.table::<(u32, String), Player>("players");
    let key = (3u32, "eu".to_string());
    db.run(|tx| {
        t.put(
            tx,
            &key,
            &Player {
                name: "ann".into(),
                level: 7,
                items: vec![1, 2, 3],
            },
        )
    })
    .unwrap();
    let (name, items) = db
        .run(|tx| {
            t.read_archived(tx, &key, |p| {
                let p = p.unwrap();
                (p.name.as_str().to_string(), p.items.len())
            })
        })
        .unwrap();
    assert_eq!((name.as_str(), items), ("ann", 3));
    assert_eq!(t.peek(&key).unwrap().unwrap().level, 7);
}

#[test]
fn values_of_the_wrong_type_are_codec_errors() {
    let db = Db::in_memory(Options::default());
    db.run(|tx| db.table::<u32, u8>("t").put(tx, &1, &7))
        .unwrap();
    let wrong = db.table::<u32, Player>("t");
    assert!(matches!(
        db.run(|tx| wrong.get(tx, &1)),
        Err(Error::Codec(_))
    ));
}

#[test]
fn close_releases_the_store_and_refuses_writes() {
    use zs_tx::{Backend, Checkpoint, ZdbBackend};
    let vfs = Arc::new(zs_db::MemVfs::new());
    for checkpoint in [
        Checkpoint::Immediate,
        Checkpoint::Periodic(std::time::Duration::from_secs(3600)),
        Checkpoint::RecordSets(std::time::Duration::from_secs(3600)),
    ] {
        let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open(vfs.clone(), "c").unwrap());
        let db = Db::open(
            b,
            Options {
                checkpoint,
                ..Options::default()
            },
        )
        .unwrap();
        let t = db.table::<u32, u64>("t");
        db.run(|tx| {
            let v = t.get(tx, &1)?.unwrap_or(0);
            t.put(tx, &1, &(v + 1))
        })
        .unwrap();
        db.close().unwrap();
        assert_eq!(db.run(|tx| t.put(tx, &1, &0)), Err(Error::Closed));
        assert!(db.run(|tx| t.get(tx, &1)).is_ok(), "reads still work");
        // `t` is alive, yet the store can be opened again, with the final checkpoint
        let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open(vfs.clone(), "c").unwrap());
        let db2 = Db::open(b, Options::default()).unwrap();
        assert_eq!(
            db2.table::<u32, u64>("t").peek(&1).unwrap(),
            t.peek(&1).unwrap()
        );
        db2.close().unwrap();
    }
    let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open(vfs, "c").unwrap());
    let db = Db::open(b, Options::default()).unwrap();
    assert_eq!(db.table::<u32, u64>("t").peek(&1).unwrap(), Some(3));
}

#[test]
fn forgetting_absent_records_never_shows_an_old_snapshot_a_wrong_absence() {
    let db = Db::in_memory(Options {
        max_records: 20,
        ..Options::default()
    });
    let t = db.table::<u32, u64>("t");
    db.run(|tx| {
        t.put(tx, &1, &10)?;
        t.put(tx, &2, &10)
    })
    .unwrap();
    let mut seen = Vec::new();
    let mut first = true;
    db.run(|tx| {
        let a = t.get(tx, &1)?;
        if first {
            first = false;
            let (db2, t2) = (db.clone(), t.clone());
            std::thread::spawn(move || {
                // record 2 is removed, then a flood of absent reads makes the engine
                // forget it
                db2.run(|tx| t2.remove(tx, &2)).unwrap();
                for k in 100..200u32 {
                    db2.run(|tx| t2.get(tx, &k)).unwrap();
                }
            })
            .join()
            .unwrap();
            assert!(db.stats().records <= 20);
        }
        // the snapshot still has record 2 (10); a forgotten record must not read as
        // absent in it: the attempt redoes instead
        let b = t.get(tx, &2)?;
        seen.push((a, b));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![(Some(10), None)],
        "only the redo (after the removal) got this far"
    );
}
