//! The engine: records in memory (version chains), tables, commit, checkpoints.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::{Backend, Shared, SharedCommit, Write};
use crate::codec::{Key, Value};
use crate::engine::{self as eng, Cell, Clock, Val};
use crate::tx::{Tx, TxState};
use crate::{Error, Result};

const SHARDS: usize = 64;
/// Buckets of eviction timestamps (`Inner::evict_ts`).
const EVICT_BUCKETS: usize = 4096;

fn bucket_of(k: &RecKey) -> usize {
    let mut h = DefaultHasher::new();
    (k, 0x5eed_u32).hash(&mut h);
    (h.finish() as usize) % EVICT_BUCKETS
}

/// What a body sees when it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Serializable with a consistent view (opacity): every read of an attempt sees
    /// the same committed snapshot, so an invariant that holds between transactions
    /// holds inside every body, including bodies that are then redone. The default.
    #[default]
    Opaque,
    /// Zeze's semantics: reads see the newest committed version, checked at commit.
    /// Commits are still serializable, but a body may observe a mix of states (an
    /// invariant checked in the body can fail) before it is redone. Read-only bodies
    /// lock and validate their reads at commit, as updates do.
    Zeze,
}

/// When committed transactions reach the backend (as Zeze's `CheckpointMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Each commit is written and synced before it becomes visible or returns: a
    /// transaction that returned `Ok` survives a crash.
    Immediate,
    /// Every interval all records changed since the last checkpoint are written as
    /// one atomic batch (many updates of one record are written once). After a crash
    /// the store is exactly the state at the end of some checkpoint: a prefix of the
    /// commit order; commits of the last interval may be lost.
    Periodic(Duration),
    /// Zeze's related record sets: every interval the changed records are grouped into
    /// sets of records touched (read or written) by the same transactions, and each
    /// set is written as its own atomic batch. A crash during a checkpoint keeps some
    /// sets of that checkpoint and not others; each transaction is still all or
    /// nothing, and sets that were not written touch disjoint records, so the result
    /// is still a serializable state. Commits of the last interval may be lost.
    RecordSets(Duration),
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Isolation of bodies (default [`Isolation::Opaque`]).
    pub isolation: Isolation,
    /// Redoes allowed after the first attempt before [`Error::RetriesExhausted`]
    /// (default 256, as Zeze).
    pub max_redo: u32,
    /// Keep the commit locks taken by a failed attempt while redoing it, so the redo
    /// cannot conflict on those records (Zeze's behaviour; default true). Turning it
    /// off makes heavily contended procedures spend their budget instead.
    pub keep_locks_on_redo: bool,
    /// Committed versions kept per record for snapshots (default 8, at least 1). A
    /// read whose version was pruned redoes the attempt with a fresh snapshot.
    pub versions: usize,
    /// Durability of commits when a backend is attached (default `Immediate`).
    pub checkpoint: Checkpoint,
    /// Records the engine may hold in memory, stored or "absent" ones created by
    /// reads (default 10 million). When it is reached, absent records no
    /// transaction holds are forgotten; if that frees nothing, touching a new record
    /// fails with [`Error::Limit`].
    pub max_records: u64,
    /// Distinct records one attempt may read or write (default 1 million); beyond
    /// it the procedure fails with [`Error::Limit`].
    pub max_tx_records: usize,
    /// A bound on the records the engine caches (default `None`: every stored
    /// record is loaded at open and kept). With `Some(n)` and a backend that reads
    /// single records ([`Backend::get`]; zs-db and unshared PostgreSQL do), records
    /// are read from the backend on first use, and when `n` are cached a clock
    /// sweep (second chance) evicts unlocked, clean (persisted, unreferenced by any
    /// transaction) records down to 7/8 of `n`. Records that running transactions
    /// hold or that wait for a checkpoint are not evicted, so the cache may exceed
    /// `n` by those. A reloaded record's version is dated by the newest evicted
    /// version of its hash bucket (4,096 buckets): a snapshot older than that
    /// redoes. Not available with a shared backend.
    pub cache_records: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            isolation: Isolation::Opaque,
            max_redo: 256,
            keep_locks_on_redo: true,
            versions: 8,
            checkpoint: Checkpoint::Immediate,
            max_records: 10_000_000,
            max_tx_records: 1_000_000,
            cache_records: None,
        }
    }
}

/// Counters since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Procedures committed (read-only ones included).
    pub commits: u64,
    /// Attempts redone after a conflict.
    pub redos: u64,
    /// Procedures that failed (user error, abort, spent budget, storage).
    pub failures: u64,
    /// Checkpoints written (periodic modes).
    pub checkpoints: u64,
    /// Records held in memory.
    pub records: u64,
    /// Records evicted ([`Options::cache_records`]).
    pub evicted: u64,
}

/// Names a record: the table id and the encoded key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RecKey {
    pub(crate) table: u32,
    pub(crate) key: Box<[u8]>,
}

type Listener = Arc<dyn Fn(u64, &[u8], Option<&[u8]>) + Send + Sync>;

/// Changes waiting for the next checkpoint.
#[derive(Default)]
struct Dirty {
    values: HashMap<RecKey, Val>,
    /// Related record sets: the set of every record touched this period.
    set_of: HashMap<RecKey, usize>,
    parent: Vec<usize>,
}

impl Dirty {
    /// Starts a new record set for `keys`, merged with the sets they are in already.
    fn join<'k>(&mut self, keys: impl IntoIterator<Item = &'k RecKey>) {
        let s = self.parent.len();
        self.parent.push(s);
        for k in keys {
            if let Some(&o) = self.set_of.get(k) {
                let r = self.find(o);
                self.parent[r] = s;
            }
            self.set_of.insert(k.clone(), s);
        }
    }

    fn find(&mut self, mut s: usize) -> usize {
        while self.parent[s] != s {
            let p = self.parent[self.parent[s]];
            self.parent[s] = p;
            s = p;
        }
        s
    }
}

pub(crate) struct Inner {
    shards: Vec<RwLock<HashMap<RecKey, Arc<Cell>>>>,
    tables: Mutex<Vec<Arc<str>>>,
    pub(crate) clock: Clock,
    next_tx: AtomicU64,
    pub(crate) opts: Options,
    /// Released by `Db::close` (so the store can be reopened while table handles live).
    backend: RwLock<Option<Arc<dyn Backend>>>,
    /// A backend written by checkpoints (not immediate mode).
    periodic: bool,
    listeners: RwLock<HashMap<u32, Vec<Listener>>>,
    dirty: Mutex<Dirty>,
    flush: Mutex<()>,
    stop: Mutex<bool>,
    wake: Condvar,
    closed: AtomicBool,
    records: AtomicU64,
    /// Timestamp from which forgotten absent records are known absent, and at
    /// which evicted records are reloaded.
    absent_floor: AtomicU64,
    /// `Options::cache_records` when records are loaded on demand and evicted.
    cache_cap: Option<u64>,
    /// Eviction sweeps that removed records (a load that raced one retries).
    evictions: AtomicU64,
    /// Per key hash bucket: the newest version timestamp of any record evicted
    /// from it. A reloaded record gets its bucket's value as its version's
    /// timestamp: never earlier than the commit that wrote the stored value.
    evict_ts: Vec<AtomicU64>,
    /// Records evicted so far.
    evicted: AtomicU64,
    commits: AtomicU64,
    pub(crate) redos: AtomicU64,
    failures: AtomicU64,
    checkpoints: AtomicU64,
    last_flush_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("opts", &self.opts).finish()
    }
}

/// A transactional store of typed tables. Cheap to clone (one shared engine).
#[derive(Debug, Clone)]
pub struct Db {
    inner: Arc<Inner>,
    ckpt: Arc<Mutex<Option<JoinHandle<()>>>>,
}

fn shard_of(k: &RecKey) -> usize {
    let mut h = DefaultHasher::new();
    k.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl Inner {
    /// The backend, until `Db::close` releases it.
    fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.backend
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remembers the error of a background checkpoint or follower round.
    fn record_error(&self, e: &Error) {
        *self
            .last_flush_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    /// The record named `k`, created (as "absent") on first use, within
    /// `Options::max_records`.
    pub(crate) fn cell(&self, k: &RecKey) -> Result<Arc<Cell>> {
        if let Some(c) = self.existing(k) {
            return Ok(c);
        }
        if let Some(cap) = self.cache_cap {
            return self.load_cell(k, cap);
        }
        for attempt in 0..2 {
            let mut shard = self.shards[shard_of(k)]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(c) = shard.get(k) {
                return Ok(c.clone());
            }
            if self.records.fetch_add(1, Ordering::AcqRel) < self.opts.max_records {
                let floor = self.absent_floor.load(Ordering::Acquire);
                let c = Arc::new(Cell::absent_since(floor));
                shard.insert(k.clone(), c.clone());
                return Ok(c);
            }
            self.records.fetch_sub(1, Ordering::AcqRel);
            drop(shard);
            if attempt == 0 {
                self.forget_absent();
            }
        }
        Err(Error::Limit(format!(
            "the engine holds its maximum of {} records",
            self.opts.max_records
        )))
    }

    /// A record that is not cached, read from the backend (bounded cache).
    fn load_cell(&self, k: &RecKey, cap: u64) -> Result<Arc<Cell>> {
        let backend = self.backend().ok_or(Error::Closed)?;
        let name = self.table_name(k.table);
        loop {
            let epoch = self.evictions.load(Ordering::Acquire);
            let v = backend.get(&name, &k.key)?;
            if self.records.load(Ordering::Acquire) >= cap {
                self.evict(cap);
            }
            let mut shard = self.shards[shard_of(k)]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(c) = shard.get(k) {
                return Ok(c.clone());
            }
            if self.evictions.load(Ordering::Acquire) != epoch {
                continue; // an eviction ran meanwhile: what we read may be stale
            }
            let ts = self.evict_ts[bucket_of(k)].load(Ordering::Acquire);
            let c = Arc::new(Cell::loaded(ts, v.map(Arc::from)));
            shard.insert(k.clone(), c.clone());
            self.records.fetch_add(1, Ordering::AcqRel);
            return Ok(c);
        }
    }

    /// Evicts cached records down to 7/8 of `cap` (clock sweep, two passes):
    /// only unlocked records no transaction holds, whose newest version is
    /// persisted (not waiting for a checkpoint) and not newer than the floor.
    fn evict(&self, cap: u64) {
        // no checkpoint is between taking its changes and writing them
        let _flush = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        if self.records.load(Ordering::Acquire) < cap {
            return; // another thread evicted meanwhile
        }
        let dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let target = cap - cap / 8;
        let floor = self.clock.snapshot();
        for _pass in 0..2 {
            for shard in &self.shards {
                if self.records.load(Ordering::Acquire) <= target {
                    return;
                }
                let mut m = shard.write().unwrap_or_else(|p| p.into_inner());
                let before = m.len();
                m.retain(|k, c| {
                    if self.records.load(Ordering::Acquire) <= target
                        || Arc::strong_count(c) > 1
                        || dirty.values.contains_key(k)
                    {
                        return true;
                    }
                    let Some(ts) = c.sweep(floor) else {
                        return true;
                    };
                    self.evict_ts[bucket_of(k)].fetch_max(ts, Ordering::AcqRel);
                    self.records.fetch_sub(1, Ordering::AcqRel);
                    false
                });
                let gone = (before - m.len()) as u64;
                if gone > 0 {
                    self.evicted.fetch_add(gone, Ordering::Relaxed);
                    self.evictions.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// The record named `k`, created even beyond `max_records` (other engines'
    /// commits must be applied whatever the cap).
    fn cell_forced(&self, k: &RecKey) -> Arc<Cell> {
        if let Some(c) = self.existing(k) {
            return c;
        }
        let mut shard = self.shards[shard_of(k)]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        shard
            .entry(k.clone())
            .or_insert_with(|| {
                self.records.fetch_add(1, Ordering::AcqRel);
                Arc::new(Cell::absent_since(
                    self.absent_floor.load(Ordering::Acquire),
                ))
            })
            .clone()
    }

    /// Installs another engine's commit `ts` (shared stores), in the commit section.
    fn apply_remote(&self, ts: u64, writes: &[Write<'_>], listeners: &HashMap<u32, Vec<Listener>>) {
        let keep = self.opts.versions;
        for w in writes {
            let rk = RecKey {
                table: self.table_id(w.table),
                key: w.key.into(),
            };
            let cell = self.cell_forced(&rk);
            cell.install(ts, w.value.map(Arc::from), keep);
            if let Some(ls) = listeners.get(&rk.table) {
                for l in ls {
                    l(ts, w.key, w.value);
                }
            }
        }
    }

    /// Reloads every record from a shared store that pruned the commits this engine
    /// still needed (in the commit section): records that differ get a version at
    /// the loaded commit number, records gone from the store become absent.
    fn reload(
        &self,
        sh: &dyn Shared,
        next: &mut u64,
        listeners: &HashMap<u32, Vec<Listener>>,
    ) -> Result<()> {
        let mut rows: HashMap<RecKey, Vec<u8>> = HashMap::new();
        let n = sh.load_at(&mut |t, k, v| {
            rows.insert(
                RecKey {
                    table: self.table_id(t),
                    key: k.into(),
                },
                v.to_vec(),
            );
        })?;
        if n <= *next {
            return Ok(());
        }
        let keep = self.opts.versions;
        let mut changed: Vec<(RecKey, Val)> = Vec::new();
        for shard in &self.shards {
            let m = shard.read().unwrap_or_else(|p| p.into_inner());
            for (k, c) in m.iter() {
                if !rows.contains_key(k) && c.read_latest().1.is_some() {
                    changed.push((k.clone(), None));
                }
            }
        }
        for (k, v) in rows {
            let cell = self.cell_forced(&k);
            if cell.read_latest().1.as_deref() != Some(&v[..]) {
                changed.push((k, Some(v.into())));
            }
        }
        for (k, v) in changed {
            self.cell_forced(&k).install(n, v.clone(), keep);
            if let Some(ls) = listeners.get(&k.table) {
                for l in ls {
                    l(n, &k.key, v.as_deref());
                }
            }
        }
        *next = n;
        Ok(())
    }

    /// Applies the commits other engines made since this one's position (shared
    /// stores; a no-op otherwise).
    fn catch_up(&self) -> Result<()> {
        let Some(b) = self.backend() else {
            return Ok(());
        };
        let Some(sh) = b.shared() else { return Ok(()) };
        let listeners = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        self.clock.advance(|next| {
            let mut applied = *next;
            let r = sh.changes(*next, &mut |ts, ws| {
                self.apply_remote(ts, ws, &listeners);
                applied = ts;
            });
            *next = applied;
            match r? {
                Some(_) => Ok(()),
                None => self.reload(sh, next, &listeners),
            }
        })
    }

    /// Forgets records that are absent, unlocked and held by no transaction. Records
    /// created afterwards are "absent since now", so an older snapshot that reads
    /// one redoes instead of missing a version that was forgotten.
    fn forget_absent(&self) {
        self.absent_floor
            .fetch_max(self.clock.snapshot(), Ordering::AcqRel);
        for shard in &self.shards {
            let mut m = shard.write().unwrap_or_else(|p| p.into_inner());
            let before = m.len();
            m.retain(|_, c| Arc::strong_count(c) > 1 || !c.is_absent_and_free());
            self.records
                .fetch_sub((before - m.len()) as u64, Ordering::AcqRel);
        }
    }

    /// The record named `k` if it exists (never creates one).
    pub(crate) fn existing(&self, k: &RecKey) -> Option<Arc<Cell>> {
        self.shards[shard_of(k)]
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(k)
            .cloned()
    }

    fn table_id(&self, name: &str) -> u32 {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = t.iter().position(|n| &**n == name) {
            return i as u32;
        }
        t.push(name.into());
        (t.len() - 1) as u32
    }

    fn table_name(&self, id: u32) -> Arc<str> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())[id as usize].clone()
    }

    /// The commit of an attempt whose body returned: locks, validation, persistence
    /// (immediate mode), then install and publish. On `Err(Conflict)` the locks in
    /// `held` stay held for the redo.
    pub(crate) fn commit(
        &self,
        st: &mut TxState,
        held: &mut Vec<(RecKey, Arc<Cell>)>,
    ) -> Result<()> {
        if st.doomed {
            return Err(Error::Conflict);
        }
        if st.writes.is_empty() && self.opts.isolation == Isolation::Opaque {
            // a read-only attempt saw one committed snapshot: it serializes there
            return Ok(());
        }
        let mut want: Vec<(RecKey, Arc<Cell>)> = st
            .reads
            .iter()
            .map(|(k, r)| (k.clone(), r.0.cell.clone()))
            .chain(st.writes.iter().map(|(k, w)| (k.clone(), w.0.clone())))
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        want.dedup_by(|a, b| a.0 == b.0);
        eng::lock_sorted(st.id, &want, held);
        if !eng::validate(st.reads.values().map(|r| &r.0)) {
            return Err(Error::Conflict);
        }
        if st.writes.is_empty() {
            return Ok(());
        }
        let mut writes: Vec<(&RecKey, &(Arc<Cell>, Val))> = st.writes.iter().collect();
        writes.sort_by(|a, b| a.0.cmp(b.0));
        let immediate = match self.opts.checkpoint {
            Checkpoint::Immediate => self.backend(),
            _ => None,
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(b) = immediate.as_ref().filter(|b| b.shared().is_some()) {
            return self.commit_shared(b.shared().expect("checked"), st, &writes);
        }
        if let Some(b) = immediate {
            self.with_writes(writes.iter().map(|(k, (_, v))| (*k, v)), |batch| {
                b.write(batch)
            })?;
        }
        let listeners = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        let keep = self.opts.versions;
        let periodic = self.periodic;
        let sets = matches!(self.opts.checkpoint, Checkpoint::RecordSets(_));
        self.clock.commit(|ts| {
            for (_, (cell, v)) in &writes {
                cell.install(ts, v.clone(), keep);
            }
            if periodic {
                let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                for (k, (_, v)) in &writes {
                    d.values.insert((*k).clone(), v.clone());
                }
                if sets {
                    d.join(want.iter().map(|(k, _)| k));
                }
            }
            for (k, (_, v)) in &writes {
                if let Some(ls) = listeners.get(&k.table) {
                    for l in ls {
                        l(ts, &k.key, v.as_deref());
                    }
                }
            }
        });
        Ok(())
    }

    /// The commit of a validated attempt on a shared store: in the commit section,
    /// the store numbers it after every other engine's commit, the engine applies
    /// those first, validates again and only then is it written and installed.
    fn commit_shared(
        &self,
        sh: &dyn Shared,
        st: &TxState,
        writes: &[(&RecKey, &(Arc<Cell>, Val))],
    ) -> Result<()> {
        let listeners = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        let keep = self.opts.versions;
        let rows = writes.iter().map(|(k, (_, v))| (*k, v));
        self.with_writes(rows, |batch| {
            self.clock.advance(|next| {
                let mut applied = *next;
                let r = sh.commit(
                    *next,
                    batch,
                    &mut |ts, ws| {
                        self.apply_remote(ts, ws, &listeners);
                        applied = ts;
                    },
                    &mut || eng::validate(st.reads.values().map(|r| &r.0)),
                );
                *next = applied;
                match r? {
                    SharedCommit::Committed(n) => {
                        for (k, (cell, v)) in writes {
                            cell.install(n, v.clone(), keep);
                            if let Some(ls) = listeners.get(&k.table) {
                                for l in ls {
                                    l(n, &k.key, v.as_deref());
                                }
                            }
                        }
                        *next = n;
                        Ok(())
                    }
                    SharedCommit::Conflict => Err(Error::Conflict),
                    SharedCommit::Behind => {
                        self.reload(sh, next, &listeners)?;
                        Err(Error::Conflict)
                    }
                }
            })
        })
    }

    /// Runs `f` on the backend writes of `rows` (record, new value), in their order.
    fn with_writes<'r, R>(
        &self,
        rows: impl Iterator<Item = (&'r RecKey, &'r Val)>,
        f: impl FnOnce(&[Write<'_>]) -> R,
    ) -> R {
        let rows: Vec<(&RecKey, &Val)> = rows.collect();
        let names: Vec<Arc<str>> = rows.iter().map(|(k, _)| self.table_name(k.table)).collect();
        let batch: Vec<Write<'_>> = rows
            .iter()
            .zip(&names)
            .map(|((k, v), n)| Write {
                table: n,
                key: &k.key,
                value: v.as_deref(),
            })
            .collect();
        f(&batch)
    }

    pub(crate) fn finished(&self, ok: bool) {
        if let Some(cap) = self.cache_cap {
            // records a finished transaction held may be evictable now
            if self.records.load(Ordering::Acquire) > cap + cap / 16 {
                self.evict(cap);
            }
        }
        if ok {
            self.commits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes everything changed since the last checkpoint (periodic modes).
    fn checkpoint(&self) -> Result<()> {
        let Some(backend) = self.backend() else {
            return Ok(());
        };
        let _one = self.flush.lock().unwrap_or_else(|p| p.into_inner());
        let taken = {
            let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *d)
        };
        if taken.values.is_empty() {
            return Ok(());
        }
        let mut taken = taken;
        let mut groups: Vec<Vec<(RecKey, Val)>> = Vec::new();
        if matches!(self.opts.checkpoint, Checkpoint::RecordSets(_)) {
            let mut index: HashMap<usize, usize> = HashMap::new();
            let values = std::mem::take(&mut taken.values);
            for (k, v) in values {
                let s = taken.set_of[&k];
                let root = taken.find(s);
                let g = *index.entry(root).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push((k, v));
            }
        } else {
            groups.push(taken.values.drain().collect());
        }
        let mut result = Ok(());
        let mut failed: Vec<(RecKey, Val)> = Vec::new();
        for mut g in groups {
            g.sort_by(|a, b| a.0.cmp(&b.0));
            if result.is_err() {
                failed.extend(g);
                continue;
            }
            if let Err(e) =
                self.with_writes(g.iter().map(|(k, v)| (k, v)), |batch| backend.write(batch))
            {
                result = Err(e);
                failed.extend(g);
            }
        }
        if let Err(e) = &result {
            // keep what was not written for the next checkpoint (newer changes win)
            let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in failed {
                if !d.values.contains_key(&k) {
                    d.join([&k]);
                    d.values.insert(k, v);
                }
            }
            self.record_error(e);
        } else {
            self.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // after `close` the backend is gone and this is a no-op
        let _ = self.checkpoint();
    }
}

impl Db {
    /// An engine without persistence (records live as long as the engine).
    pub fn in_memory(opts: Options) -> Db {
        Db::build(opts, None, Vec::new(), 0)
    }

    /// An engine over `backend`: loads every stored record, then persists commits as
    /// `opts.checkpoint` says.
    ///
    /// A shared backend ([`Backend::shared`], e.g. `PgBackend::connect_shared`)
    /// requires [`Checkpoint::Immediate`] (a commit is known to the other engines
    /// only once it is in the store): the engine loads the store as of one global
    /// commit, applies the other engines' commits as they are announced (and polls
    /// every 200 ms), and commits through the store's global order.
    pub fn open(backend: Arc<dyn Backend>, opts: Options) -> Result<Db> {
        let mut loaded: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
        let lazy = opts.cache_records.is_some();
        let mut sink = |t: &str, k: &[u8], v: &[u8]| {
            if !lazy {
                loaded.push((t.to_string(), k.to_vec(), v.to_vec()))
            }
        };
        let start = match backend.shared() {
            Some(sh) => {
                if opts.checkpoint != Checkpoint::Immediate {
                    return Err(Error::Abort(
                        "a shared backend needs Checkpoint::Immediate".into(),
                    ));
                }
                sh.load_at(&mut sink)?
            }
            None => {
                backend.load(&mut sink)?;
                0
            }
        };
        let shared = backend.shared().is_some();
        if opts.cache_records.is_some() {
            if shared {
                return Err(Error::Abort(
                    "a bounded cache (cache_records) is not available with a shared backend".into(),
                ));
            }
            // records are read on demand: drop what the load read (it also lets
            // the backend index its rows)
            loaded.clear();
            loaded.shrink_to_fit();
        }
        let db = Db::build(opts, Some(backend), loaded, start);
        if shared {
            let weak = Arc::downgrade(&db.inner);
            *db.ckpt.lock().unwrap_or_else(|p| p.into_inner()) = Some(
                std::thread::Builder::new()
                    .name("zs-tx-follower".into())
                    .spawn(move || follow_loop(weak))
                    .map_err(|e| Error::Storage(format!("spawn follower: {e}")))?,
            );
        }
        Ok(db)
    }

    /// Applies the commits other engines made on a shared backend up to now (they
    /// arrive by themselves within milliseconds; this makes "now" exact, e.g.
    /// before a read-only procedure that must see another server's commit). A no-op
    /// for an unshared backend.
    pub fn sync(&self) -> Result<()> {
        self.inner.catch_up()
    }

    fn build(
        opts: Options,
        backend: Option<Arc<dyn Backend>>,
        loaded: Vec<(String, Vec<u8>, Vec<u8>)>,
        start: u64,
    ) -> Db {
        let periodic = backend.is_some() && !matches!(opts.checkpoint, Checkpoint::Immediate);
        let cache_cap = if backend.is_some() {
            opts.cache_records.map(|n| n.max(8))
        } else {
            None
        };
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            tables: Mutex::new(Vec::new()),
            clock: Clock::new(start),
            next_tx: AtomicU64::new(1),
            opts,
            periodic,
            backend: RwLock::new(backend),
            listeners: RwLock::new(HashMap::new()),
            dirty: Mutex::new(Dirty::default()),
            flush: Mutex::new(()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            records: AtomicU64::new(0),
            absent_floor: AtomicU64::new(0),
            cache_cap,
            evictions: AtomicU64::new(0),
            evict_ts: (0..EVICT_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            evicted: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            redos: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            last_flush_error: Mutex::new(None),
        });
        for (t, k, v) in loaded {
            let rk = RecKey {
                table: inner.table_id(&t),
                key: k.into(),
            };
            let cell = Arc::new(Cell::new(Some(v.into())));
            inner.shards[shard_of(&rk)]
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rk, cell);
            inner.records.fetch_add(1, Ordering::Relaxed);
        }
        let ckpt = match (inner.opts.checkpoint, inner.periodic) {
            (Checkpoint::Periodic(every) | Checkpoint::RecordSets(every), true) => {
                let weak = Arc::downgrade(&inner);
                Some(
                    std::thread::Builder::new()
                        .name("zs-tx-checkpoint".into())
                        .spawn(move || checkpoint_loop(weak, every))
                        .expect("spawn checkpoint thread"),
                )
            }
            _ => None,
        };
        Db {
            inner,
            ckpt: Arc::new(Mutex::new(ckpt)),
        }
    }

    /// The typed table `name` (created on first use; a name always means the same
    /// table, so two handles with the same name and types share records).
    pub fn table<K: Key, V: Value>(&self, name: &str) -> Table<K, V> {
        Table {
            inner: self.inner.clone(),
            id: self.inner.table_id(name),
            _t: PhantomData,
        }
    }

    /// Runs `body` as a procedure: optimistically on private copies, committed at the
    /// end, redone from the start on conflict (up to `max_redo` times).
    ///
    /// `on_commit` actions run after a commit, `on_rollback` actions after a final
    /// failure; actions of attempts that were redone are dropped (the redo registers
    /// its own). Do not call `run` from inside a body (it would wait for locks the
    /// outer attempt may hold): use [`Tx::nested`].
    pub fn run<T>(&self, body: impl FnMut(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let id = self.inner.next_tx.fetch_add(1, Ordering::Relaxed);
        crate::tx::run(&self.inner, id, body)
    }

    /// Writes every change since the last checkpoint now (periodic modes; a no-op in
    /// immediate mode and without a backend). Returns after the writes are synced.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// The error of the last failed background checkpoint, if any (its changes are
    /// kept and retried by the next one).
    pub fn last_checkpoint_error(&self) -> Option<String> {
        self.inner
            .last_flush_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes the engine: later commits that write fail with [`Error::Closed`]
    /// (reads still work, from memory), the checkpoint thread stops, a final
    /// checkpoint is written, and the backend is released (so the store can be
    /// opened again even while table handles live). Dropping the last handle of an
    /// engine (tables included) does the same.
    pub fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        {
            *self.inner.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.inner.wake.notify_all();
        }
        if let Some(h) = self.ckpt.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
        let r = self.inner.checkpoint();
        *self
            .inner
            .backend
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
        r
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let records = self
            .inner
            .shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len() as u64)
            .sum();
        Stats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            redos: self.inner.redos.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            records,
            evicted: self.inner.evicted.load(Ordering::Relaxed),
        }
    }

    /// The engine's settings.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }
}

/// Applies other engines' commits on a shared backend: on each announcement, and
/// every 200 ms in case one was missed.
fn follow_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if *inner.stop.lock().unwrap_or_else(|p| p.into_inner()) {
            return;
        }
        let Some(b) = inner.backend() else {
            return;
        };
        let Some(sh) = b.shared() else { return };
        let news = match sh.wait(Duration::from_millis(200)) {
            Ok(n) => n,
            Err(e) => {
                inner.record_error(&e);
                std::thread::sleep(Duration::from_millis(200));
                None
            }
        };
        if matches!(news, Some(n) if n <= inner.clock.snapshot()) {
            continue; // our own commit, already applied
        }
        if let Err(e) = inner.catch_up() {
            inner.record_error(&e);
        }
    }
}

fn checkpoint_loop(weak: Weak<Inner>, every: Duration) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        {
            let stop = inner.stop.lock().unwrap_or_else(|p| p.into_inner());
            if *stop {
                return;
            }
            let (stop, _) = inner
                .wake
                .wait_timeout(stop, every)
                .unwrap_or_else(|p| p.into_inner());
            if *stop {
                return;
            }
        }
        let _ = inner.checkpoint();
    }
}

/// A typed table: keys through [`Key`], values stored as rkyv archives ([`Value`]).
pub struct Table<K, V> {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: u32,
    _t: PhantomData<fn(K) -> V>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Table {
            inner: self.inner.clone(),
            id: self.id,
            _t: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({})", self.inner.table_name(self.id))
    }
}

impl<K: Key, V: Value> Table<K, V> {
    pub(crate) fn rec_key(&self, k: &K) -> RecKey {
        let mut b = Vec::new();
        k.encode_key(&mut b);
        RecKey {
            table: self.id,
            key: b.into(),
        }
    }

    /// The table's name.
    pub fn name(&self) -> Arc<str> {
        self.inner.table_name(self.id)
    }

    /// Reads `key` in `tx` (its own writes first, then its snapshot).
    pub fn get(&self, tx: &mut Tx<'_>, key: &K) -> Result<Option<V>> {
        match tx.read(self.rec_key(key))? {
            None => Ok(None),
            Some(b) => V::decode_value(&b).map(Some),
        }
    }

    /// Reads `key` in `tx` and hands `f` the archived value in place (rkyv's
    /// zero-copy access; checked, so a malformed stored value is an error).
    pub fn read_archived<R>(
        &self,
        tx: &mut Tx<'_>,
        key: &K,
        f: impl FnOnce(Option<&V::Archived>) -> R,
    ) -> Result<R> {
        match tx.read(self.rec_key(key))? {
            None => Ok(f(None)),
            Some(b) => crate::codec::with_aligned(&b, |b| {
                rkyv::access::<V::Archived, rkyv::rancor::Error>(b)
                    .map(|a| f(Some(a)))
                    .map_err(|e| Error::Codec(e.to_string()))
            }),
        }
    }

    /// Writes `value` under `key` in `tx` (visible to others once `tx` commits).
    pub fn put(&self, tx: &mut Tx<'_>, key: &K, value: &V) -> Result<()> {
        let bytes = value.encode_value()?;
        let rk = self.rec_key(key);
        tx.write(rk, Some(bytes.into()))
    }

    /// Removes `key` in `tx`.
    pub fn remove(&self, tx: &mut Tx<'_>, key: &K) -> Result<()> {
        let rk = self.rec_key(key);
        tx.write(rk, None)
    }

    /// The newest committed value outside any transaction.
    pub fn peek(&self, key: &K) -> Result<Option<V>> {
        let rk = self.rec_key(key);
        let cell = if self.inner.cache_cap.is_some() {
            self.inner.cell(&rk)?
        } else {
            match self.inner.existing(&rk) {
                Some(c) => c,
                None => return Ok(None),
            }
        };
        match cell.read_latest().1 {
            None => Ok(None),
            Some(b) => V::decode_value(&b).map(Some),
        }
    }

    /// Calls `f(commit_ts, key, new value)` for every committed change of this table,
    /// in commit order (timestamps increase; one transaction's changes share one),
    /// from the committing thread while commits are serialized: keep it short (for
    /// example, forward to a channel); it must not run procedures or register
    /// listeners (that would wait for itself). `None` means removed. Keys or values
    /// that fail to decode are skipped.
    pub fn listen(&self, f: impl Fn(u64, K, Option<V>) + Send + Sync + 'static) {
        let l: Listener = Arc::new(move |ts, k: &[u8], v: Option<&[u8]>| {
            let Some(key) = K::decode_key(k) else { return };
            let val = match v {
                None => None,
                Some(b) => match V::decode_value(b) {
                    Ok(v) => Some(v),
                    Err(_) => return,
                },
            };
            f(ts, key, val)
        });
        self.inner
            .listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(self.id)
            .or_default()
            .push(l);
    }
}
