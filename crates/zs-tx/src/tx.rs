//! One attempt of a procedure: read set, private copies, savepoints, actions.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::db::{Inner, Isolation, RecKey};
use crate::engine::{self as eng, Cell, ReadEntry, Val};
use crate::{Error, Result};

type Action = Box<dyn FnOnce()>;

/// A private copy: the record's cell and the value written.
type Private = (Arc<Cell>, Val);

/// The state of one attempt (what the commit needs).
pub(crate) struct TxState {
    pub(crate) id: u64,
    pub(crate) read_ts: u64,
    /// Records read from the store, with the version read and its value.
    pub(crate) reads: HashMap<RecKey, (ReadEntry, Val)>,
    /// Private copies: records written by this attempt.
    pub(crate) writes: HashMap<RecKey, Private>,
    /// A read failed with a conflict: this attempt cannot commit.
    pub(crate) doomed: bool,
    /// The record whose read doomed the attempt (its snapshot version was pruned).
    pub(crate) doomed_on: Option<(RecKey, Arc<Cell>)>,
}

impl TxState {
    /// Every record the attempt touched (reads, writes, the record that doomed it),
    /// sorted by key and deduplicated: what a redo keeps locked.
    fn touched(&self) -> Vec<(RecKey, Arc<Cell>)> {
        let mut v: Vec<(RecKey, Arc<Cell>)> = self
            .reads
            .iter()
            .map(|(k, r)| (k.clone(), r.0.cell.clone()))
            .chain(self.writes.iter().map(|(k, w)| (k.clone(), w.0.clone())))
            .chain(self.doomed_on.clone())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }
}

/// A transaction attempt, handed to procedure bodies.
pub struct Tx<'a> {
    inner: &'a Inner,
    pub(crate) st: TxState,
    /// Undo log of `writes` for savepoints: (record, previous private copy).
    undo: Vec<(RecKey, Option<Private>)>,
    on_commit: Vec<Action>,
    on_rollback: Vec<Action>,
    depth: u32,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("id", &self.st.id)
            .field("read_ts", &self.st.read_ts)
            .field("reads", &self.st.reads.len())
            .field("writes", &self.st.writes.len())
            .finish()
    }
}

/// Deepest nesting of [`Tx::nested`].
pub const MAX_NESTING: u32 = 64;

impl<'a> Tx<'a> {
    fn new(inner: &'a Inner, id: u64) -> Tx<'a> {
        Tx {
            inner,
            st: TxState {
                id,
                read_ts: inner.clock.snapshot(),
                reads: HashMap::new(),
                writes: HashMap::new(),
                doomed: false,
                doomed_on: None,
            },
            undo: Vec::new(),
            on_commit: Vec::new(),
            on_rollback: Vec::new(),
            depth: 0,
        }
    }

    /// The snapshot this attempt reads ([`crate::Isolation::Opaque`]).
    pub fn snapshot(&self) -> u64 {
        self.st.read_ts
    }

    pub(crate) fn read(&mut self, k: RecKey) -> Result<Val> {
        if let Some((_, v)) = self.st.writes.get(&k) {
            return Ok(v.clone());
        }
        if let Some((_, v)) = self.st.reads.get(&k) {
            return Ok(v.clone());
        }
        self.check_size()?;
        let cell = self.inner.cell(&k)?;
        let (ts, v) = match self.inner.opts.isolation {
            Isolation::Opaque => match cell.read_at(self.st.read_ts) {
                Some(r) => r,
                None => {
                    self.st.doomed = true;
                    self.st.doomed_on = Some((k, cell));
                    return Err(Error::Conflict);
                }
            },
            Isolation::Zeze => cell.read_latest(),
        };
        self.st.reads.insert(k, (ReadEntry { cell, ts }, v.clone()));
        Ok(v)
    }

    fn check_size(&self) -> Result<()> {
        let max = self.inner.opts.max_tx_records;
        if self.st.reads.len() + self.st.writes.len() >= max {
            return Err(Error::Limit(format!(
                "a transaction may touch at most {max} records"
            )));
        }
        Ok(())
    }

    pub(crate) fn write(&mut self, k: RecKey, v: Val) -> Result<()> {
        let cell = match self.st.writes.get(&k) {
            Some((c, _)) => c.clone(),
            None => {
                if !self.st.reads.contains_key(&k) {
                    self.check_size()?;
                }
                self.inner.cell(&k)?
            }
        };
        let prev = self.st.writes.insert(k.clone(), (cell, v));
        if self.depth > 0 {
            self.undo.push((k, prev));
        }
        Ok(())
    }

    /// Runs `f` after this procedure commits (Zeze's `WhileCommit`; replies and
    /// outgoing messages belong here, so a redone body never sends twice).
    pub fn on_commit(&mut self, f: impl FnOnce() + 'static) {
        self.on_commit.push(Box::new(f));
    }

    /// Runs `f` if this procedure finally fails, or if the [`Tx::nested`] scope it
    /// was registered in rolls back (Zeze's `WhileRollback`).
    pub fn on_rollback(&mut self, f: impl FnOnce() + 'static) {
        self.on_rollback.push(Box::new(f));
    }

    /// A nested procedure with a savepoint: when `f` returns an error, its writes and
    /// its `on_commit` actions are undone, its `on_rollback` actions run, and the error
    /// is returned to the caller, which may carry on (partial rollback). A conflict is
    /// not rolled back here: it redoes the whole procedure. Reads made by `f` stay in
    /// the read set either way (the outer body's decisions may depend on them).
    pub fn nested<T>(&mut self, f: impl FnOnce(&mut Tx<'a>) -> Result<T>) -> Result<T> {
        if self.depth >= MAX_NESTING {
            return Err(Error::Abort(format!("nesting deeper than {MAX_NESTING}")));
        }
        let (u, c, r) = (
            self.undo.len(),
            self.on_commit.len(),
            self.on_rollback.len(),
        );
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        match out {
            Ok(v) => {
                if self.depth == 0 {
                    self.undo.clear();
                }
                Ok(v)
            }
            Err(Error::Conflict) => Err(Error::Conflict),
            Err(e) => {
                while self.undo.len() > u {
                    let (k, prev) = self.undo.pop().expect("len checked");
                    match prev {
                        Some(p) => {
                            self.st.writes.insert(k, p);
                        }
                        None => {
                            self.st.writes.remove(&k);
                        }
                    }
                }
                self.on_commit.truncate(c);
                for a in self.on_rollback.drain(r..).collect::<Vec<_>>() {
                    a();
                }
                Err(e)
            }
        }
    }
}

/// Ends a procedure: releases its locks, counts it, then runs the actions bound to
/// its outcome (`on_commit` after a commit, `on_rollback` after a final failure).
fn finish<T>(
    inner: &Inner,
    id: u64,
    held: &mut Vec<(RecKey, Arc<Cell>)>,
    mut tx: Tx<'_>,
    out: Result<T>,
) -> Result<T> {
    eng::unlock_all(id, held);
    let actions = if out.is_ok() {
        std::mem::take(&mut tx.on_commit)
    } else {
        std::mem::take(&mut tx.on_rollback)
    };
    drop(tx); // its records may be evicted now
    inner.finished(out.is_ok());
    for a in actions {
        a();
    }
    out
}

pub(crate) fn run<T>(
    inner: &Inner,
    id: u64,
    mut body: impl FnMut(&mut Tx<'_>) -> Result<T>,
) -> Result<T> {
    let mut held: Vec<(RecKey, Arc<Cell>)> = Vec::new();
    let attempts = inner.opts.max_redo.saturating_add(1);
    for attempt in 1..=attempts {
        let mut tx = Tx::new(inner, id);
        let out = body(&mut tx);
        let committed = match out {
            Ok(v) => inner.commit(&mut tx.st, &mut held).map(|()| v),
            Err(e) => Err(e),
        };
        match committed {
            Err(Error::Conflict) => {
                if attempt < attempts {
                    inner.redos.fetch_add(1, Ordering::Relaxed);
                }
                if !inner.opts.keep_locks_on_redo {
                    eng::unlock_all(id, &mut held);
                } else if attempt < attempts {
                    // A conflict inside the body (a pruned snapshot version) took no
                    // locks yet: take them now, so the redo's snapshot, taken after,
                    // sees the latest version of every record it touched.
                    eng::lock_sorted(id, &tx.st.touched(), &mut held);
                }
                if attempt == attempts {
                    return finish(
                        inner,
                        id,
                        &mut held,
                        tx,
                        Err(Error::RetriesExhausted { attempts }),
                    );
                }
            }
            done => return finish(inner, id, &mut held, tx, done),
        }
    }
    unreachable!("the last attempt returns")
}
