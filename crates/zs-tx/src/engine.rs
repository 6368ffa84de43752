//! The lock manager and commit path, on bytes: version chains per record, record
//! locks owned by a transaction id, and the commit clock.
//!
//! This file only names `super::sync` for its primitives, so the shuttle test
//! (`tests/interleavings.rs`) includes it a second time on shuttle's `Mutex`,
//! `Condvar` and atomics and explores the interleavings of the real code.

use super::sync::{AtomicU64, Condvar, Mutex, MutexGuard, Ordering};
use std::sync::Arc;

/// A stored value: `None` is "absent" (never written, or removed).
pub(crate) type Val = Option<Arc<[u8]>>;

/// The mutable part of a record: its committed versions (oldest first) and its lock.
#[derive(Debug)]
pub(crate) struct CellState {
    /// `(commit timestamp, value)`, strictly increasing timestamps, never empty.
    pub(crate) versions: Vec<(u64, Val)>,
    /// The transaction holding the commit lock (0 = free).
    pub(crate) owner: u64,
    /// Transactions waiting for the lock (so `unlock` only notifies when needed).
    waiters: u32,
    /// Read since the last eviction sweep (the clock algorithm's reference bit).
    referenced: bool,
}

/// One record of one table.
#[derive(Debug)]
pub(crate) struct Cell {
    st: Mutex<CellState>,
    cv: Condvar,
}

/// What a read returned: the version's timestamp and its value.
pub(crate) type Read = (u64, Val);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cell {
    /// A record whose only version is `initial` at timestamp 0.
    pub(crate) fn new(initial: Val) -> Cell {
        Cell {
            st: Mutex::new(CellState {
                versions: vec![(0, initial)],
                owner: 0,
                waiters: 0,
                referenced: true,
            }),
            cv: Condvar::new(),
        }
    }

    /// A record that is absent as of timestamp `ts` (snapshots older than `ts` see
    /// no version and redo).
    pub(crate) fn absent_since(ts: u64) -> Cell {
        Cell {
            st: Mutex::new(CellState {
                versions: vec![(ts, None)],
                owner: 0,
                waiters: 0,
                referenced: true,
            }),
            cv: Condvar::new(),
        }
    }

    /// True when the record is absent now and unlocked (it may be forgotten).
    pub(crate) fn is_absent_and_free(&self) -> bool {
        let st = lock(&self.st);
        st.owner == 0 && st.versions.last().map(|v| v.1.is_none()).unwrap_or(false)
    }

    /// The newest version with timestamp `<= read_ts`, or `None` when it was pruned
    /// (the snapshot is too old: the caller redoes with a fresh one).
    pub(crate) fn read_at(&self, read_ts: u64) -> Option<Read> {
        let mut st = lock(&self.st);
        st.referenced = true;
        st.versions
            .iter()
            .rev()
            .find(|(ts, _)| *ts <= read_ts)
            .cloned()
    }

    /// The newest committed version (Zeze semantics: no snapshot).
    pub(crate) fn read_latest(&self) -> Read {
        let mut st = lock(&self.st);
        st.referenced = true;
        st.versions.last().cloned().expect("never empty")
    }

    /// The timestamp of the newest committed version.
    pub(crate) fn latest_ts(&self) -> u64 {
        let st = lock(&self.st);
        st.versions.last().map(|v| v.0).expect("never empty")
    }

    /// Takes the commit lock for transaction `owner` (non-zero), waiting while another
    /// transaction holds it. Re-entrant for the same owner.
    pub(crate) fn lock(&self, owner: u64) {
        debug_assert_ne!(owner, 0);
        let mut st = lock(&self.st);
        while st.owner != 0 && st.owner != owner {
            st.waiters += 1;
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            st.waiters -= 1;
        }
        st.owner = owner;
    }

    /// Releases the commit lock held by `owner` (a no-op when it does not hold it).
    pub(crate) fn unlock(&self, owner: u64) {
        let mut st = lock(&self.st);
        if st.owner == owner {
            st.owner = 0;
            if st.waiters > 0 {
                self.cv.notify_all();
            }
        }
    }

    /// A record loaded from the store whose only version is `val` at `ts`.
    #[allow(dead_code)]
    pub(crate) fn loaded(ts: u64, val: Val) -> Cell {
        let c = Cell::absent_since(ts);
        lock(&c.st).versions[0].1 = val;
        c
    }

    /// The clock sweep's test: the timestamp of the newest version when the record
    /// is unlocked and was not read since the last sweep (it may be evicted);
    /// otherwise `None`, clearing its reference bit.
    #[allow(dead_code)]
    /// Records with a version newer than `floor` are kept (a reload would date
    /// their value too early).
    pub(crate) fn sweep(&self, floor: u64) -> Option<u64> {
        let mut st = lock(&self.st);
        let ts = st.versions.last().map(|v| v.0)?;
        if st.owner != 0 || ts > floor {
            return None;
        }
        if st.referenced {
            st.referenced = false;
            return None;
        }
        Some(ts)
    }

    /// Who holds the lock (0 = nobody).
    #[allow(dead_code)]
    pub(crate) fn owner(&self) -> u64 {
        lock(&self.st).owner
    }

    /// Appends version `(ts, val)`; keeps at most `keep` versions (at least one).
    pub(crate) fn install(&self, ts: u64, val: Val, keep: usize) {
        let mut st = lock(&self.st);
        debug_assert!(st.versions.last().map(|v| v.0 < ts).unwrap_or(true));
        st.versions.push((ts, val));
        let keep = keep.max(1);
        if st.versions.len() > keep {
            let cut = st.versions.len() - keep;
            st.versions.drain(..cut);
        }
    }
}

/// The commit clock: commits take timestamps in order inside one short section, and
/// a snapshot is the last timestamp whose versions are all installed.
#[derive(Debug)]
pub(crate) struct Clock {
    published: AtomicU64,
    section: Mutex<u64>,
}

impl Clock {
    /// A clock whose first commit gets timestamp `start + 1`.
    pub(crate) fn new(start: u64) -> Clock {
        Clock {
            published: AtomicU64::new(start),
            section: Mutex::new(start),
        }
    }

    /// A snapshot timestamp: every commit `<=` it is fully installed.
    pub(crate) fn snapshot(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Runs `install(ts)` for the next timestamp inside the commit section, then
    /// publishes `ts` (snapshots taken afterwards see all of it, earlier ones none).
    pub(crate) fn commit<R>(&self, install: impl FnOnce(u64) -> R) -> (u64, R) {
        let mut next = lock(&self.section);
        let ts = *next + 1;
        let r = install(ts);
        *next = ts;
        self.published.store(ts, Ordering::Release);
        (ts, r)
    }
}

impl Clock {
    /// Runs `f` on the last published timestamp inside the commit section (shared
    /// stores: `f` applies other engines' commits and its own at the numbers the
    /// store gave them, and moves the value), then publishes the new value.
    #[allow(dead_code)]
    pub(crate) fn advance<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        let mut next = lock(&self.section);
        let r = f(&mut next);
        self.published.store(*next, Ordering::Release);
        r
    }
}

/// The read set entry the commit validates: the cell and the version timestamp read.
pub(crate) struct ReadEntry {
    pub(crate) cell: Arc<Cell>,
    pub(crate) ts: u64,
}

/// Locks `cells` (already sorted by key, deduplicated) for `owner`, keeping the ones
/// in `held` (sorted the same way, by index into the caller's key order) held.
///
/// Deadlock freedom: locks are only ever waited for in ascending key order. When a
/// redo needs a key that sorts before one it still holds, every held lock is released
/// first and the whole set is taken again in order (as Zeze does).
pub(crate) fn lock_sorted<K: Ord + Clone>(
    owner: u64,
    want: &[(K, Arc<Cell>)],
    held: &mut Vec<(K, Arc<Cell>)>,
) {
    let max_held = held.last().map(|h| h.0.clone());
    let need_restart = match &max_held {
        None => false,
        Some(m) => want
            .iter()
            .any(|(k, _)| k < m && held.binary_search_by(|h| h.0.cmp(k)).is_err()),
    };
    if need_restart {
        for (_, c) in held.drain(..) {
            c.unlock(owner);
        }
    }
    // keys no longer wanted are released (a redo may touch fewer records)
    held.retain(|(k, c)| {
        let keep = want.binary_search_by(|w| w.0.cmp(k)).is_ok();
        if !keep {
            c.unlock(owner);
        }
        keep
    });
    for (k, c) in want {
        if held.binary_search_by(|h| h.0.cmp(k)).is_err() {
            c.lock(owner);
            let at = held.partition_point(|h| h.0 < *k);
            held.insert(at, (k.clone(), c.clone()));
        }
    }
}

/// Releases every lock in `held`.
pub(crate) fn unlock_all<K>(owner: u64, held: &mut Vec<(K, Arc<Cell>)>) {
    for (_, c) in held.drain(..) {
        c.unlock(owner);
    }
}

/// True when every read is still the newest version (call with the locks held).
pub(crate) fn validate<'a>(reads: impl IntoIterator<Item = &'a ReadEntry>) -> bool {
    reads.into_iter().all(|r| r.cell.latest_ts() == r.ts)
}
