//! The lock manager and commit path (`src/engine.rs`, included here a second time on
//! shuttle's `Mutex`, `Condvar` and atomics) under shuttle's randomized and PCT
//! schedulers: no deadlock, mutual exclusion of commit locks, snapshots that always
//! see whole commits, and no lost update.

/// shuttle's primitives in place of std's (what `engine.rs` names as `super::sync`).
mod sync {
    pub(crate) use shuttle::sync::atomic::{AtomicU64, Ordering};
    pub(crate) use shuttle::sync::{Condvar, Mutex, MutexGuard};
}

#[allow(dead_code)]
#[path = "../src/engine.rs"]
mod engine;

use std::sync::Arc;

use engine::{lock_sorted, unlock_all, validate, Cell, Clock, ReadEntry};
use shuttle::sync::atomic::{AtomicU64, Ordering};
use shuttle::thread;

fn val(x: u64) -> engine::Val {
    Some(x.to_le_bytes().to_vec().into())
}
fn num(v: &engine::Val) -> u64 {
    u64::from_le_bytes(v.as_deref().unwrap().try_into().unwrap())
}

struct World {
    cells: Vec<Arc<Cell>>,
    clock: Clock,
    /// Per cell: how many owners are inside the locked region (must stay <= 1).
    inside: Vec<AtomicU64>,
}

/// One transfer of 1 from `a` to `b` by transaction `id`, as `Db::run` does it:
/// snapshot reads, sorted locks kept across redos, validation, install, publish.
fn transfer(w: &World, id: u64, a: usize, b: usize) -> u32 {
    let mut held: Vec<(usize, Arc<Cell>)> = Vec::new();
    let mut redos = 0;
    loop {
        let ts = w.clock.snapshot();
        let (Some((ta, va)), Some((tb, vb))) = (w.cells[a].read_at(ts), w.cells[b].read_at(ts))
        else {
            redos += 1;
            continue;
        };
        let mut want = vec![(a, w.cells[a].clone()), (b, w.cells[b].clone())];
        want.sort_by_key(|x| x.0);
        lock_sorted(id, &want, &mut held);
        for (k, _) in &held {
            assert_eq!(
                w.inside[*k].fetch_add(1, Ordering::SeqCst),
                0,
                "two owners of a lock"
            );
        }
        let reads = [
            ReadEntry {
                cell: w.cells[a].clone(),
                ts: ta,
            },
            ReadEntry {
                cell: w.cells[b].clone(),
                ts: tb,
            },
        ];
        let ok = validate(&reads);
        if ok {
            w.clock.commit(|ts| {
                w.cells[a].install(ts, val(num(&va) - 1), 2);
                w.cells[b].install(ts, val(num(&vb) + 1), 2);
            });
        }
        for (k, _) in &held {
            w.inside[*k].fetch_sub(1, Ordering::SeqCst);
        }
        if ok {
            unlock_all(id, &mut held);
            return redos;
        }
        redos += 1; // redo keeping the locks
    }
}

fn bank() {
    let w = Arc::new(World {
        cells: (0..3).map(|_| Arc::new(Cell::new(val(10)))).collect(),
        clock: Clock::new(0),
        inside: (0..3).map(|_| AtomicU64::new(0)).collect(),
    });
    let mut hs = Vec::new();
    for (id, (a, b)) in [(1, (0, 2)), (2, (2, 0)), (3, (1, 2))] {
        let w = w.clone();
        hs.push(thread::spawn(move || {
            transfer(&w, id, a, b);
            transfer(&w, id, a, b);
        }));
    }
    let r = {
        let w = w.clone();
        thread::spawn(move || {
            for _ in 0..2 {
                let ts = w.clock.snapshot();
                let vals: Option<Vec<u64>> = w
                    .cells
                    .iter()
                    .map(|c| c.read_at(ts).map(|r| num(&r.1)))
                    .collect();
                if let Some(v) = vals {
                    assert_eq!(v.iter().sum::<u64>(), 30, "a snapshot saw part of a commit");
                }
            }
        })
    };
    for h in hs {
        h.join().unwrap();
    }
    r.join().unwrap();
    let fin: Vec<u64> = w.cells.iter().map(|c| num(&c.read_latest().1)).collect();
    // 0->2 twice, 2->0 twice, 1->2 twice: no lost update
    assert_eq!(fin, vec![10, 8, 12]);
    assert!(w.cells.iter().all(|c| c.owner() == 0), "a lock leaked");
}

#[test]
fn commit_path_random_schedules() {
    shuttle::check_random(bank, 300);
}

#[test]
fn commit_path_pct_schedules() {
    shuttle::check_pct(bank, 300, 3);
}

/// A redo that needs a record sorting before one it still holds releases and
/// re-takes everything in order (no deadlock with a thread locking in order).
fn regrow() {
    let cells: Arc<Vec<Arc<Cell>>> = Arc::new((0..3).map(|_| Arc::new(Cell::new(None))).collect());
    let c1 = cells.clone();
    let t = thread::spawn(move || {
        let mut held = Vec::new();
        lock_sorted(1, &[(2, c1[2].clone())], &mut held);
        // the redo touches 0 and 1 as well (both sort before 2)
        let want: Vec<(usize, Arc<Cell>)> = (0..3).map(|i| (i, c1[i].clone())).collect();
        lock_sorted(1, &want, &mut held);
        assert_eq!(held.iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(c1.iter().all(|c| c.owner() == 1));
        // and a later redo that needs fewer records releases the rest
        lock_sorted(1, &want[1..2], &mut held);
        assert_eq!(c1[1].owner(), 1);
        assert!(c1[0].owner() != 1 && c1[2].owner() != 1);
        unlock_all(1, &mut held);
    });
    let mut held = Vec::new();
    let want: Vec<(usize, Arc<Cell>)> = (0..3).map(|i| (i, cells[i].clone())).collect();
    lock_sorted(2, &want, &mut held);
    unlock_all(2, &mut held);
    t.join().unwrap();
    assert!(cells.iter().all(|c| c.owner() == 0));
}

#[test]
fn lock_regrowth_random_schedules() {
    shuttle::check_random(regrow, 500);
}

/// The checker is live: a commit path that publishes before installing is caught.
#[test]
fn shuttle_catches_a_broken_publish_order() {
    let caught = std::panic::catch_unwind(|| {
        shuttle::check_random(
            || {
                let w = Arc::new((
                    Arc::new(Cell::new(val(5))),
                    Arc::new(Cell::new(val(5))),
                    Clock::new(0),
                ));
                let w2 = w.clone();
                let t = thread::spawn(move || {
                    // broken: the timestamp is published first, versions installed after
                    let (ts, ()) = w2.2.commit(|_| ());
                    w2.0.install(ts, val(4), 4);
                    w2.1.install(ts, val(6), 4);
                });
                let ts = w.2.snapshot();
                let a = num(&w.0.read_at(ts).unwrap().1);
                let b = num(&w.1.read_at(ts).unwrap().1);
                assert_eq!(a + b, 10);
                t.join().unwrap();
            },
            3000,
        )
    });
    assert!(caught.is_err(), "shuttle did not find the torn snapshot");
}
