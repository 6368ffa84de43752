//! The embedded backend: state in memory under one mutex, every change
//! committed to a zs-db database (docs/STORAGE.md, "Registry records") before it
//! is acknowledged or announced; a reaper thread expires leases, answers
//! long-poll waits that timed out and drops push watchers that stayed behind.
//!
//! Push watches ([`Embedded::subscribe`]): each watcher has a sink (a zs-core
//! connection, or a channel in-process), the revision it was last sent and a
//! count of unacknowledged pushes. Every change, once durable, is pushed at
//! once, under the state lock, so pushes of one watcher leave in revision
//! order. A watcher with `window` pushes unacknowledged is sent nothing more;
//! when it acknowledges them all it gets everything it missed in one push (or a
//! resync snapshot when the history no longer covers it); after
//! [`Limits::max_stall`] behind it is dropped with a logged reason. So a
//! watcher that does not read costs the registry one small record, never a
//! queue.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zs_db::{Batch, Database, DbOptions, Durability, Kind, Vfs};

use crate::model::{
    check_name, glob_match, Change, Event, Holder, Instance, LeaseId, Limits, Revision, Snapshot,
};
use crate::proto::{Changes, Push};
use crate::push::{ChannelSink, PushWatch, WatchLink};
use crate::{Error, LockState, Result, ServiceRegistry, Watch};

/// Settings of an [`Embedded`] registry.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Bounds.
    pub limits: Limits,
    /// Changes kept for watches resuming from a revision (older → resync).
    pub history: usize,
    /// How changes are made durable. `Immediate` (default): a change is
    /// acknowledged after an fsync, shared by the changes made meanwhile
    /// (group commit); `Periodic(t)`: fsync every `t`, acknowledged before.
    pub durability: Durability,
    /// How often leases and waits are checked for expiry.
    pub tick: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> EmbeddedConfig {
        EmbeddedConfig {
            limits: Limits::default(),
            history: 10_000,
            durability: Durability::Immediate,
            tick: Duration::from_millis(20),
        }
    }
}

/// A record in the registry's database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Stored {
    Meta {
        rev: Revision,
    },
    Lease {
        id: LeaseId,
        ttl_ms: u64,
        /// The PSK identity (hex) of the connection that granted it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    Inst {
        inst: Instance,
    },
    Lock {
        name: String,
        lease: LeaseId,
        holder: String,
    },
    Ids {
        name: String,
        next: u64,
    },
}

struct LeaseEntry {
    ttl: Duration,
    owner: Option<Vec<u8>>,
    deadline: Instant,
    rec: u64,
    keys: BTreeSet<(String, String)>,
    locks: BTreeSet<String>,
}

type Reply = Box<dyn FnOnce(Changes) + Send>;

struct Waiter {
    kind: Option<String>,
    after: Revision,
    deadline: Instant,
    owner: u64,
    reply: Reply,
}

/// Where a push watcher's messages go.
pub trait PushSink: Send + Sync {
    /// Sends one push; false when it cannot be delivered (the watcher is
    /// then dropped).
    fn push(&self, push: Push) -> bool;
    /// Sends `Push::Events { wid, revision, events }` whose JSON text
    /// ([`events_push_json`]) is already made: the watchers owed the same
    /// changes share one copy and one encoding of them. The default builds the
    /// typed push and calls [`PushSink::push`].
    fn push_events(&self, wid: u64, revision: Revision, events: &[Event], json: &str) -> bool {
        let _ = json;
        self.push(Push::Events {
            wid,
            revision,
            events: events.to_vec(),
        })
    }
    /// Whether the receiver is still there (checked by the reaper).
    fn is_open(&self) -> bool;
}

/// The JSON text of `Push::Events { wid, revision, events }` given the
/// encoded `events` array: byte for byte what `serde_json` makes of the
/// typed push (tested), without encoding the events once per watcher.
pub fn events_push_json(wid: u64, revision: Revision, events_json: &str) -> String {
    format!(
        "{{\"push\":\"events\",\"wid\":{wid},\"revision\":{revision},\"events\":{events_json}}}"
    )
}

struct Watcher {
    kind: Option<String>,
    /// Up to date through this revision (pushed, or nothing matched).
    sent: Revision,
    unacked: u32,
    window: u32,
    stalled_since: Option<Instant>,
    sink: Arc<dyn PushSink>,
}

struct State {
    rev: Revision,
    /// Every change up to this revision is on disk (announced only then).
    durable: Revision,
    watchers: HashMap<(u64, u64), Watcher>,
    meta_rec: u64,
    leases: HashMap<LeaseId, LeaseEntry>,
    instances: BTreeMap<(String, String), (Instance, u64)>,
    locks: BTreeMap<String, (Holder, u64)>,
    counters: BTreeMap<String, (u64, u64)>,
    history: VecDeque<Event>,
    /// Every event with a revision above this is in `history`.
    floor: Revision,
    waiters: Vec<Waiter>,
    turn: u64,
    salt: RandomState,
    lease_seq: u64,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    db: Database,
    cfg: EmbeddedConfig,
    next_wid: AtomicU64,
}

/// The embedded registry (cheap to clone; the last clone stops its reaper).
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    s.len()
        .is_multiple_of(2)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

thread_local! {
    /// Set while a service thread runs a request under [`Embedded::deferring`].
    static DEFER_SYNC: Cell<bool> = const { Cell::new(false) };
}

fn json(s: &Stored) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_default()
}

impl Embedded {
    /// Opens (or creates) the registry database `name` in `vfs`. Leases found
    /// there get a full TTL from now (clients that keep renewing keep their
    /// instances across the restart); the watch history starts empty, so
    /// watches resuming from an older revision get a resync snapshot.
    pub fn open(vfs: Arc<dyn Vfs>, name: &str, cfg: EmbeddedConfig) -> Result<Embedded> {
        let exists = vfs.exists(&zs_db::file_name(name)).map_err(store_err)?;
        // Changes are buffered in order under the state lock; `durable` then
        // fsyncs outside it, so concurrent changes share one fsync.
        let opts = DbOptions {
            durability: match cfg.durability {
                Durability::Immediate => Durability::Periodic(Duration::from_millis(200)),
                d => d,
            },
            ..DbOptions::default()
        };
        let db = if exists {
            Database::open_with(vfs, name, opts).map_err(store_err)?
        } else {
            Database::create(vfs, name, opts).map_err(store_err)?
        };
        let now = Instant::now();
        let mut st = State {
            rev: 0,
            durable: 0,
            watchers: HashMap::new(),
            meta_rec: 0,
            leases: HashMap::new(),
            instances: BTreeMap::new(),
            locks: BTreeMap::new(),
            counters: BTreeMap::new(),
            history: VecDeque::new(),
            floor: 0,
            waiters: Vec::new(),
            turn: 0,
            salt: RandomState::new(),
            lease_seq: 0,
        };
        let mut orphans = Vec::new();
        let mut insts = Vec::new();
        let mut locks = Vec::new();
        for rec in db.cursor(0, false) {
            let rec = rec.map_err(store_err)?;
            let Ok(s) = serde_json::from_slice::<Stored>(&rec.data) else {
                tracing::warn!(record = rec.id, "registry: unreadable record dropped");
                orphans.push(rec.id);
                continue;
            };
            match s {
                Stored::Meta { rev } => {
                    if st.meta_rec != 0 {
                        orphans.push(st.meta_rec);
                    }
                    st.rev = st.rev.max(rev);
                    st.meta_rec = rec.id;
                }
                Stored::Lease { id, ttl_ms, owner } => {
                    let ttl = Duration::from_millis(ttl_ms);
                    st.leases.insert(
                        id,
                        LeaseEntry {
                            ttl,
                            owner: owner.as_deref().and_then(unhex),
                            deadline: now + ttl,
                            rec: rec.id,
                            keys: BTreeSet::new(),
                            locks: BTreeSet::new(),
                        },
                    );
                }
                Stored::Inst { inst } => insts.push((inst, rec.id)),
                Stored::Lock {
                    name,
                    lease,
                    holder,
                } => locks.push((name, Holder { lease, holder }, rec.id)),
                Stored::Ids { name, next } => {
                    st.counters.insert(name, (next, rec.id));
                }
            }
        }
        for (inst, rec) in insts {
            match st.leases.get_mut(&inst.lease) {
                Some(l) => {
                    l.keys.insert((inst.kind.clone(), inst.id.clone()));
                    st.instances
                        .insert((inst.kind.clone(), inst.id.clone()), (inst, rec));
                }
                None => orphans.push(rec),
            }
        }
        for (name, h, rec) in locks {
            match st.leases.get_mut(&h.lease) {
                Some(l) => {
                    l.locks.insert(name.clone());
                    st.locks.insert(name, (h, rec));
                }
                None => orphans.push(rec),
            }
        }
        if st.meta_rec == 0 {
            st.meta_rec = db
                .insert(Kind::Json, &json(&Stored::Meta { rev: st.rev }))
                .map_err(store_err)?;
        }
        if !orphans.is_empty() {
            let mut b = Batch::new();
            for id in orphans {
                b.delete(id);
            }
            db.commit(&b).map_err(store_err)?;
        }
        st.floor = st.rev;
        st.durable = st.rev;
        let inner = Arc::new(Inner {
            state: Mutex::new(st),
            db,
            cfg,
            next_wid: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&inner);
        let tick = inner.cfg.tick;
        std::thread::Builder::new()
            .name("zs-registry-reaper".into())
            .spawn(move || reaper(weak, tick))
            .map_err(store_err)?;
        Ok(Embedded { inner })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.cfg.limits
    }

    /// Live leases and instances.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.leases.len(), st.instances.len())
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.lock().rev
    }

    /// Long-polls watch changes: `reply` runs now if there are changes for
    /// `kind` after `after` (or a resync is due, or `wait` is zero), else when
    /// they come or `wait` passes. `owner` names the waiting connection for the
    /// per-connection bound (0 = in-process).
    pub fn changes(
        &self,
        kind: Option<&str>,
        after: Revision,
        wait: Duration,
        owner: u64,
        reply: Box<dyn FnOnce(Changes) + Send>,
    ) -> Result<()> {
        let lim = &self.inner.cfg.limits;
        if let Some(k) = kind {
            check_name("type", k)?;
        }
        let wait = wait.min(lim.max_wait);
        let mut st = self.lock();
        if after < st.floor || after > st.rev {
            let snap = snapshot(&st, kind, lim)?;
            drop(st);
            reply(Changes::Resync(snap));
            return Ok(());
        }
        let events = events_between(&st, kind, after, st.durable);
        if !events.is_empty() || wait.is_zero() {
            let revision = st.durable.max(after);
            drop(st);
            reply(Changes::Events { revision, events });
            return Ok(());
        }
        watch_quota(&st, lim, owner)?;
        st.waiters.push(Waiter {
            kind: kind.map(str::to_owned),
            after,
            deadline: Instant::now() + wait,
            owner,
            reply,
        });
        Ok(())
    }

    /// Opens push watch `wid` of `owner` (a connection id; 0 = in-process):
    /// `sink` gets a snapshot first when `from` is `None`, else the changes
    /// after `from` (a resync snapshot when they are gone), then every change
    /// of `kind` as soon as it is durable, at most `window` pushes
    /// unacknowledged ([`Embedded::ack`]). Answers the window applied.
    pub fn subscribe(
        &self,
        owner: u64,
        wid: u64,
        kind: Option<&str>,
        from: Option<Revision>,
        window: u32,
        sink: Arc<dyn PushSink>,
    ) -> Result<u32> {
        let lim = &self.inner.cfg.limits;
        if let Some(k) = kind {
            check_name("type", k)?;
        }
        let window = window.clamp(1, lim.watch_window.max(1));
        let mut st = self.lock();
        if self.inner.db.is_closed() {
            return Err(Error::Unavailable("registry closed".into()));
        }
        if st.watchers.contains_key(&(owner, wid)) {
            return Err(Error::Invalid(format!("watch {wid} is already open")));
        }
        watch_quota(&st, lim, owner)?;
        let mut w = Watcher {
            kind: kind.map(str::to_owned),
            sent: 0,
            unacked: 0,
            window,
            stalled_since: None,
            sink,
        };
        let first = match from {
            Some(r) if r >= st.floor && r <= st.rev => {
                w.sent = r;
                catch_up(&st, &mut w, wid, lim)
            }
            _ => {
                let snapshot = snapshot(&st, kind, lim)?;
                w.sent = snapshot.revision;
                Some(Push::Snapshot {
                    wid,
                    resync: from.is_some(),
                    snapshot,
                })
            }
        };
        if let Some(p) = first {
            if !send(&mut w, p) {
                return Err(Error::Unavailable("watcher gone".into()));
            }
        }
        st.watchers.insert((owner, wid), w);
        Ok(window)
    }

    /// The watcher consumed `n` more pushes; a paused one gets what it
    /// missed, in one push.
    pub fn ack(&self, owner: u64, wid: u64, n: u32) {
        let lim = &self.inner.cfg.limits;
        let mut st = self.lock();
        let Some(mut w) = st.watchers.remove(&(owner, wid)) else {
            return;
        };
        w.unacked = w.unacked.saturating_sub(n);
        let mut keep = true;
        if w.unacked <= w.window / 2 {
            if w.stalled_since.take().is_some() {
                tracing::debug!(owner, wid, "registry watch caught up: coalesced push");
            }
            if let Some(p) = catch_up(&st, &mut w, wid, lim) {
                keep = send(&mut w, p);
            }
        }
        if keep {
            st.watchers.insert((owner, wid), w);
        }
    }

    /// Ends push watch `wid` of `owner`; whether it was open.
    pub fn unsubscribe(&self, owner: u64, wid: u64) -> bool {
        self.lock().watchers.remove(&(owner, wid)).is_some()
    }

    /// Ends every push watch of `owner` (its connection went away).
    pub fn unsubscribe_all(&self, owner: u64) -> usize {
        let mut st = self.lock();
        let before = st.watchers.len();
        st.watchers.retain(|k, _| k.0 != owner);
        before - st.watchers.len()
    }

    /// Open push watches.
    pub fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Answers (empty) every wait of a connection that went away.
    pub fn drop_waiters(&self, owner: u64) {
        let mut st = self.lock();
        let rev = st.rev;
        let mine: Vec<Waiter>;
        (mine, st.waiters) = std::mem::take(&mut st.waiters)
            .into_iter()
            .partition(|w| w.owner == owner);
        drop(st);
        for w in mine {
            (w.reply)(Changes::Events {
                revision: rev,
                events: Vec::new(),
            });
        }
    }

    /// Closes the database (a stop, or a crash as far as clients can tell):
    /// afterwards every change fails with [`Error::Store`] and waiting watches
    /// are answered; reopen the same database with [`Embedded::open`].
    pub fn close(&self) -> Result<()> {
        let mut st = self.lock();
        let rev = st.rev;
        let waiters = std::mem::take(&mut st.waiters);
        for ((_, wid), w) in std::mem::take(&mut st.watchers) {
            w.sink.push(Push::Dropped {
                wid,
                reason: "registry closed".into(),
            });
        }
        self.inner.db.close().map_err(store_err)?;
        drop(st);
        for w in waiters {
            (w.reply)(Changes::Events {
                revision: rev,
                events: Vec::new(),
            });
        }
        Ok(())
    }

    /// Stops the way a killed process would (crash tests): no final flush,
    /// the database lock is released, every later change fails.
    pub fn abandon(&self) {
        self.inner.db.clone().abandon();
    }

    /// Grants a lease on behalf of a client authenticated as `owner` (a PSK
    /// identity, kept with the lease: after a restart only a connection with
    /// the same identity may claim it; see [`service`](crate::service)).
    pub fn grant_for(&self, ttl: Duration, owner: Option<&[u8]>) -> Result<LeaseId> {
        let lim = &self.inner.cfg.limits;
        let ttl = lim.grant_ttl(ttl)?;
        let mut st = self.lock();
        if st.leases.len() >= lim.max_leases {
            return Err(Error::Quota(format!(
                "{} live leases (at most {})",
                st.leases.len(),
                lim.max_leases
            )));
        }
        let id = loop {
            st.lease_seq += 1;
            let id = (st.salt.hash_one(st.lease_seq) & (i64::MAX as u64)) as i64;
            if id != 0 && !st.leases.contains_key(&id) {
                break id;
            }
        };
        let mut b = Batch::new();
        b.insert(
            Kind::Json,
            json(&Stored::Lease {
                id,
                ttl_ms: ttl.as_millis() as u64,
                owner: owner.map(hex),
            }),
        );
        let (_, recs) = self.commit(&mut st, b, Vec::new())?;
        st.leases.insert(
            id,
            LeaseEntry {
                ttl,
                owner: owner.map(<[u8]>::to_vec),
                deadline: Instant::now() + ttl,
                rec: recs[0],
                keys: BTreeSet::new(),
                locks: BTreeSet::new(),
            },
        );
        drop(st);
        self.durable()?;
        Ok(id)
    }

    /// The identity a live lease was granted for (`Some(None)`: anonymous),
    /// or `None` when the lease is gone.
    pub fn lease_owner(&self, lease: LeaseId) -> Option<Option<Vec<u8>>> {
        self.lock().leases.get(&lease).map(|l| l.owner.clone())
    }

    /// Whether a lease is live.
    pub fn lease_alive(&self, lease: LeaseId) -> bool {
        self.lock().leases.contains_key(&lease)
    }

    /// The lease an instance is registered under.
    pub fn instance_lease(&self, kind: &str, id: &str) -> Option<LeaseId> {
        self.lock()
            .instances
            .get(&(kind.to_owned(), id.to_owned()))
            .map(|(i, _)| i.lease)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every change made so far is on disk (Immediate durability),
    /// unless this thread defers that to [`Embedded::sync_and_announce`] (see
    /// [`Embedded::deferring`]).
    fn durable(&self) -> Result<()> {
        if self.syncs_now() {
            self.inner.db.sync().map_err(store_err)?;
        }
        Ok(())
    }

    /// Makes the change committed at `rev` durable, then announces it (both
    /// left to [`Embedded::sync_and_announce`] on a deferring thread).
    fn durable_then_wake(&self, rev: Revision) -> Result<()> {
        if self.defers() && DEFER_SYNC.with(Cell::get) {
            return Ok(());
        }
        self.durable()?;
        self.wake(self.lock(), rev);
        Ok(())
    }

    /// Whether changes wait for an fsync before they are acknowledged
    /// (`Immediate` durability), so that a caller may batch those fsyncs.
    pub(crate) fn defers(&self) -> bool {
        matches!(self.inner.cfg.durability, Durability::Immediate)
    }

    fn syncs_now(&self) -> bool {
        self.defers() && !DEFER_SYNC.with(Cell::get)
    }

    /// Runs `f` with this thread's fsyncs deferred: the changes `f` makes are
    /// committed and visible to reads, but neither durable nor announced to
    /// watchers when `f` returns. The caller must not acknowledge them before a
    /// later [`Embedded::sync_and_announce`] returned `Ok` (the service's sync
    /// thread does that for every request that arrived meanwhile: group commit
    /// across connections with one fsync, not one per request).
    pub(crate) fn deferring<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                DEFER_SYNC.with(|d| d.set(false));
            }
        }
        DEFER_SYNC.with(|d| d.set(true));
        let _reset = Reset;
        f()
    }

    /// Makes every change committed so far durable (one fsync), then pushes
    /// them to the watchers and answers the waiters that have news.
    pub(crate) fn sync_and_announce(&self) -> Result<()> {
        // every commit up to `rev` is in the store's buffer: the sync covers it
        let rev = self.lock().rev;
        if self.defers() {
            self.inner.db.sync().map_err(store_err)?;
        }
        self.wake(self.lock(), rev);
        Ok(())
    }

    /// Commits `batch` plus the new revision; records `events` and wakes waiters.
    fn commit(
        &self,
        st: &mut MutexGuard<'_, State>,
        mut batch: Batch,
        changes: Vec<Change>,
    ) -> Result<(Revision, Vec<u64>)> {
        let rev = if changes.is_empty() {
            st.rev
        } else {
            st.rev + 1
        };
        batch.update(st.meta_rec, Kind::Json, json(&Stored::Meta { rev }));
        let ids = self.inner.db.commit(&batch).map_err(store_err)?;
        st.rev = rev;
        if !matches!(self.inner.cfg.durability, Durability::Immediate) {
            st.durable = rev;
        }
        for c in changes {
            st.history.push_back(Event {
                revision: rev,
                change: c,
            });
        }
        while st.history.len() > self.inner.cfg.history {
            if let Some(e) = st.history.pop_front() {
                st.floor = e.revision;
            }
        }
        Ok((rev, ids))
    }

    /// Everything up to `durable` is on disk: pushes it to the watchers and
    /// answers the waiters that have news.
    fn wake(&self, mut st: MutexGuard<'_, State>, durable: Revision) {
        st.durable = st.durable.max(durable.min(st.rev));
        deliver(&mut st, &self.inner.cfg.limits);
        if st.waiters.is_empty() {
            return;
        }
        let mut ready = Vec::new();
        let mut keep = Vec::new();
        let upto = st.durable;
        for w in std::mem::take(&mut st.waiters) {
            let ev = events_between(&st, w.kind.as_deref(), w.after, upto);
            if ev.is_empty() {
                keep.push(w);
            } else {
                ready.push((w.reply, ev));
            }
        }
        st.waiters = keep;
        let rev = st.durable;
        drop(st);
        for (r, events) in ready {
            r(Changes::Events {
                revision: rev,
                events,
            });
        }
    }

    /// Removes a lease and everything attached (one revision).
    fn end_lease(&self, st: &mut MutexGuard<'_, State>, lease: LeaseId) -> Result<bool> {
        let Some(l) = st.leases.get(&lease) else {
            return Ok(false);
        };
        let mut b = Batch::new();
        b.delete(l.rec);
        let mut changes = Vec::new();
        let keys: Vec<_> = l.keys.iter().cloned().collect();
        let locks: Vec<_> = l.locks.iter().cloned().collect();
        for k in &keys {
            if let Some((_, rec)) = st.instances.get(k) {
                b.delete(*rec);
                changes.push(Change::Delete {
                    kind: k.0.clone(),
                    id: k.1.clone(),
                });
            }
        }
        for n in &locks {
            if let Some((_, rec)) = st.locks.get(n) {
                b.delete(*rec);
            }
        }
        self.commit(st, b, changes)?;
        st.leases.remove(&lease);
        for k in &keys {
            st.instances.remove(k);
        }
        for n in &locks {
            st.locks.remove(n);
        }
        Ok(true)
    }

    fn live_lease(st: &State, lease: LeaseId) -> Result<()> {
        if st.leases.contains_key(&lease) {
            Ok(())
        } else {
            Err(Error::LeaseNotFound(lease))
        }
    }
}

/// The events of `kind` in revisions `after + 1 ..= upto`.
fn events_between(st: &State, kind: Option<&str>, after: Revision, upto: Revision) -> Vec<Event> {
    // history is in revision order: skip to the first one after `after`
    let start = st.history.partition_point(|e| e.revision <= after);
    st.history
        .range(start..)
        .take_while(|e| e.revision <= upto)
        .filter(|e| match (kind, &e.change) {
            (None, _) => true,
            (Some(k), Change::Put { instance }) => instance.kind == k,
            (Some(k), Change::Delete { kind, .. }) => kind == k,
        })
        .cloned()
        .collect()
}

/// Refuses a new watch (long-poll wait or push watcher) past the limits.
fn watch_quota(st: &State, lim: &Limits, owner: u64) -> Result<()> {
    let total = st.waiters.len() + st.watchers.len();
    if total >= lim.max_waiters {
        return Err(Error::Quota(format!(
            "{total} watches open (at most {})",
            lim.max_waiters
        )));
    }
    if owner != 0 {
        let mine = st.waiters.iter().filter(|w| w.owner == owner).count()
            + st.watchers.keys().filter(|k| k.0 == owner).count();
        if mine >= lim.max_waiters_per_conn {
            return Err(Error::Quota(format!(
                "{mine} watches open on this connection (at most {})",
                lim.max_waiters_per_conn
            )));
        }
    }
    Ok(())
}

/// What watcher `w` is owed now, or `None`: the changes after `w.sent` up to
/// the durable revision, or a resync snapshot when the history no longer
/// has them. Advances `w.sent`.
fn catch_up(st: &State, w: &mut Watcher, wid: u64, lim: &Limits) -> Option<Push> {
    if w.sent < st.floor {
        return match snapshot(st, w.kind.as_deref(), lim) {
            Ok(snapshot) => {
                w.sent = snapshot.revision;
                Some(Push::Snapshot {
                    wid,
                    resync: true,
                    snapshot,
                })
            }
            Err(e) => Some(Push::Dropped {
                wid,
                reason: e.to_string(),
            }),
        };
    }
    if w.sent >= st.durable {
        return None;
    }
    let events = events_between(st, w.kind.as_deref(), w.sent, st.durable);
    w.sent = st.durable;
    (!events.is_empty()).then_some(Push::Events {
        wid,
        revision: st.durable,
        events,
    })
}

/// Sends one push, counting it against the window; false: drop the watcher.
fn send(w: &mut Watcher, push: Push) -> bool {
    let dropped = matches!(push, Push::Dropped { .. });
    w.unacked = w.unacked.saturating_add(1);
    w.sink.push(push) && !dropped
}

/// Pushes what every watcher that is not a full window behind is owed.
fn deliver(st: &mut State, lim: &Limits) {
    if st.watchers.is_empty() {
        return;
    }
    let mut watchers = std::mem::take(&mut st.watchers);
    // the changes owed to watchers of one kind up to date through one revision
    // (the common case: every watcher of a type), copied and encoded once
    let mut owed: HashMap<(Option<String>, Revision), (Vec<Event>, String)> = HashMap::new();
    watchers.retain(|&(owner, wid), w| {
        if w.stalled_since.is_some() {
            return true;
        }
        if w.unacked >= w.window {
            if w.sent < st.durable {
                w.stalled_since = Some(Instant::now());
                tracing::debug!(owner, wid, "registry watch a full window behind: paused");
            }
            return true;
        }
        if w.sent >= st.floor && w.sent < st.durable {
            let (events, json) = owed.entry((w.kind.clone(), w.sent)).or_insert_with(|| {
                let events = events_between(st, w.kind.as_deref(), w.sent, st.durable);
                let json = serde_json::to_string(&events).unwrap_or_default();
                (events, json)
            });
            w.sent = st.durable;
            if events.is_empty() {
                return true;
            }
            w.unacked = w.unacked.saturating_add(1);
            let text = events_push_json(wid, st.durable, json);
            let ok = w.sink.push_events(wid, st.durable, events, &text);
            if !ok {
                tracing::warn!(
                    owner,
                    wid,
                    "registry watch dropped: its connection refused a push"
                );
            }
            return ok;
        }
        match catch_up(st, w, wid, lim) {
            None => true,
            Some(p) => {
                let ok = send(w, p);
                if !ok {
                    tracing::warn!(
                        owner,
                        wid,
                        "registry watch dropped: its connection refused a push"
                    );
                }
                ok
            }
        }
    });
    st.watchers = watchers;
}

fn snapshot(st: &State, kind: Option<&str>, lim: &Limits) -> Result<Snapshot> {
    let instances: Vec<Instance> = match kind {
        Some(k) => st
            .instances
            .range((k.to_owned(), String::new())..)
            .take_while(|((kk, _), _)| kk == k)
            .map(|(_, (i, _))| i.clone())
            .collect(),
        None => st.instances.values().map(|(i, _)| i.clone()).collect(),
    };
    if instances.len() > lim.max_results {
        return Err(Error::Quota(format!(
            "{} instances (at most {} per answer)",
            instances.len(),
            lim.max_results
        )));
    }
    Ok(Snapshot {
        revision: st.rev,
        instances,
    })
}

fn reaper(weak: Weak<Inner>, tick: Duration) {
    loop {
        std::thread::sleep(tick);
        let Some(inner) = weak.upgrade() else { return };
        if inner.db.is_closed() || inner.db.is_poisoned() {
            return;
        }
        let reg = Embedded { inner };
        let now = Instant::now();
        let mut st = reg.lock();
        let expired: Vec<LeaseId> = st
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let any_expired = !expired.is_empty();
        for id in expired {
            tracing::debug!(lease = id, "registry: lease expired");
            if let Err(e) = reg.end_lease(&mut st, id) {
                tracing::warn!("registry: expiring lease {id:x}: {e}");
            }
        }
        let max_stall = reg.inner.cfg.limits.max_stall;
        st.watchers.retain(|&(owner, wid), w| {
            if !w.sink.is_open() {
                tracing::debug!(owner, wid, "registry watch ended: its connection is gone");
                return false;
            }
            match w.stalled_since {
                Some(t) if now.duration_since(t) >= max_stall => {
                    tracing::warn!(
                        owner,
                        wid,
                        "registry watch dropped: {} pushes unread for {max_stall:?}",
                        w.unacked
                    );
                    w.sink.push(Push::Dropped {
                        wid,
                        reason: format!("{} pushes unread for {max_stall:?}", w.unacked),
                    });
                    false
                }
                _ => true,
            }
        });
        let rev = st.rev;
        let (late, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut st.waiters)
            .into_iter()
            .partition(|w| w.deadline <= now);
        st.waiters = keep;
        let durable = st.durable;
        drop(st);
        if any_expired {
            if let Err(e) = reg.durable_then_wake(rev) {
                tracing::warn!("registry: syncing expired leases: {e}");
            }
        }
        for w in late {
            (w.reply)(Changes::Events {
                revision: durable.max(w.after),
                events: Vec::new(),
            });
        }
    }
}

impl ServiceRegistry for Embedded {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.grant_for(ttl, None)
    }

    fn keepalive(&self, lease: LeaseId) -> Result<Duration> {
        let mut st = self.lock();
        let l = st
            .leases
            .get_mut(&lease)
            .ok_or(Error::LeaseNotFound(lease))?;
        l.deadline = Instant::now() + l.ttl;
        Ok(l.ttl)
    }

    fn keepalive_many(&self, leases: &[LeaseId]) -> Result<Vec<Option<Duration>>> {
        let now = Instant::now();
        let mut st = self.lock();
        Ok(leases
            .iter()
            .map(|id| {
                st.leases.get_mut(id).map(|l| {
                    l.deadline = now + l.ttl;
                    l.ttl
                })
            })
            .collect())
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut st = self.lock();
        if !self.end_lease(&mut st, lease)? {
            return Err(Error::LeaseNotFound(lease));
        }
        let rev = st.rev;
        drop(st);
        self.durable_then_wake(rev)
    }

    fn register(&self, lease: LeaseId, instance: &Instance) -> Result<Revision> {
        let lim = &self.inner.cfg.limits;
        lim.check_instance(instance)?;
        let mut inst = instance.clone();
        inst.lease = lease;
        let key = (inst.kind.clone(), inst.id.clone());
        let mut st = self.lock();
        Self::live_lease(&st, lease)?;
        let old = st.instances.get(&key).map(|(i, rec)| (i.lease, *rec));
        if old.is_none() && st.instances.len() >= lim.max_instances {
            return Err(Error::Quota(format!(
                "{} instances registered (at most {})",
                st.instances.len(),
                lim.max_instances
            )));
        }
        if old.map(|o| o.0) != Some(lease)
            && st.leases[&lease].keys.len() >= lim.max_instances_per_lease
        {
            return Err(Error::Quota(format!(
                "{} instances on this lease",
                lim.max_instances_per_lease
            )));
        }
        let mut b = Batch::new();
        let data = json(&Stored::Inst { inst: inst.clone() });
        match old {
            Some((_, rec)) => b.update(rec, Kind::Json, data),
            None => b.insert(Kind::Json, data),
        };
        let (rev, recs) = self.commit(
            &mut st,
            b,
            vec![Change::Put {
                instance: inst.clone(),
            }],
        )?;
        let rec = old.map(|o| o.1).unwrap_or_else(|| recs[0]);
        if let Some((old_lease, _)) = old {
            if old_lease != lease {
                if let Some(l) = st.leases.get_mut(&old_lease) {
                    l.keys.remove(&key);
                }
            }
        }
        if let Some(l) = st.leases.get_mut(&lease) {
            l.keys.insert(key.clone());
        }
        st.instances.insert(key, (inst, rec));
        drop(st);
        self.durable_then_wake(rev)?;
        Ok(rev)
    }

    fn deregister(&self, kind: &str, id: &str) -> Result<bool> {
        check_name("type", kind)?;
        check_name("id", id)?;
        let key = (kind.to_owned(), id.to_owned());
        let mut st = self.lock();
        let Some((inst, rec)) = st.instances.get(&key).map(|(i, r)| (i.clone(), *r)) else {
            return Ok(false);
        };
        let mut b = Batch::new();
        b.delete(rec);
        self.commit(
            &mut st,
            b,
            vec![Change::Delete {
                kind: kind.to_owned(),
                id: id.to_owned(),
            }],
        )?;
        st.instances.remove(&key);
        if let Some(l) = st.leases.get_mut(&inst.lease) {
            l.keys.remove(&key);
        }
        let rev = st.rev;
        drop(st);
        self.durable_then_wake(rev)?;
        Ok(true)
    }

    fn list(&self, kind: Option<&str>) -> Result<Snapshot> {
        if let Some(k) = kind {
            check_name("type", k)?;
        }
        snapshot(&self.lock(), kind, &self.inner.cfg.limits)
    }

    fn query(&self, pattern: &str) -> Result<Vec<Instance>> {
        if pattern.len() > 200 {
            return Err(Error::Invalid("pattern longer than 200 bytes".into()));
        }
        let st = self.lock();
        let out: Vec<Instance> = st
            .instances
            .values()
            .filter(|(i, _)| glob_match(pattern, &i.name()))
            .map(|(i, _)| i.clone())
            .take(self.inner.cfg.limits.max_results + 1)
            .collect();
        if out.len() > self.inner.cfg.limits.max_results {
            return Err(Error::Quota("too many matches".into()));
        }
        Ok(out)
    }

    fn pick(&self, kind: &str) -> Result<Option<Instance>> {
        check_name("type", kind)?;
        let mut st = self.lock();
        st.turn = st.turn.wrapping_add(1);
        let cands = st
            .instances
            .range((kind.to_owned(), String::new())..)
            .take_while(|((k, _), _)| k == kind)
            .map(|(_, (i, _))| i);
        Ok(crate::model::choose_least_loaded_of(cands, st.turn).cloned())
    }

    fn watch(&self, kind: Option<&str>, from: Option<Revision>) -> Result<Box<dyn Watch>> {
        if let Some(k) = kind {
            check_name("type", k)?;
        }
        Ok(Box::new(PushWatch::new(
            Arc::new(self.clone()),
            kind.map(str::to_owned),
            from,
            self.inner.cfg.limits.watch_window,
        )))
    }

    fn try_lock(&self, name: &str, lease: LeaseId, holder: &str) -> Result<LockState> {
        check_name("lock", name)?;
        if holder.len() > 256 {
            return Err(Error::Quota("holder text longer than 256 bytes".into()));
        }
        let mut st = self.lock();
        Self::live_lease(&st, lease)?;
        if let Some((h, _)) = st.locks.get(name) {
            return Ok(if h.lease == lease {
                LockState::Acquired
            } else {
                LockState::Held(h.clone())
            });
        }
        if st.locks.len() >= self.inner.cfg.limits.max_locks {
            return Err(Error::Quota("too many locks".into()));
        }
        let mut b = Batch::new();
        b.insert(
            Kind::Json,
            json(&Stored::Lock {
                name: name.to_owned(),
                lease,
                holder: holder.to_owned(),
            }),
        );
        let (_, recs) = self.commit(&mut st, b, Vec::new())?;
        let h = Holder {
            lease,
            holder: holder.to_owned(),
        };
        st.locks.insert(name.to_owned(), (h, recs[0]));
        if let Some(l) = st.leases.get_mut(&lease) {
            l.locks.insert(name.to_owned());
        }
        drop(st);
        self.durable()?;
        Ok(LockState::Acquired)
    }

    fn unlock(&self, name: &str, lease: LeaseId) -> Result<bool> {
        check_name("lock", name)?;
        let mut st = self.lock();
        let Some(rec) = st
            .locks
            .get(name)
            .filter(|(h, _)| h.lease == lease)
            .map(|(_, r)| *r)
        else {
            return Ok(false);
        };
        let mut b = Batch::new();
        b.delete(rec);
        self.commit(&mut st, b, Vec::new())?;
        st.locks.remove(name);
        if let Some(l) = st.leases.get_mut(&lease) {
            l.locks.remove(name);
        }
        drop(st);
        self.durable()?;
        Ok(true)
    }

    fn lock_holder(&self, name: &str) -> Result<Option<Holder>> {
        check_name("lock", name)?;
        Ok(self.lock().locks.get(name).map(|(h, _)| h.clone()))
    }

    fn allocate_ids(&self, name: &str, count: u64) -> Result<Range<u64>> {
        check_name("counter", name)?;
        let lim = &self.inner.cfg.limits;
        if count == 0 || count > lim.max_id_batch {
            return Err(Error::Invalid(format!(
                "count must be 1 to {}",
                lim.max_id_batch
            )));
        }
        let mut st = self.lock();
        let (start, rec) = match st.counters.get(name) {
            Some(&(n, r)) => (n, Some(r)),
            None if st.counters.len() >= lim.max_counters => {
                return Err(Error::Quota("too many id counters".into()))
            }
            None => (1, None),
        };
        let end = start
            .checked_add(count)
            .ok_or_else(|| Error::Quota(format!("counter {name} exhausted")))?;
        let data = json(&Stored::Ids {
            name: name.to_owned(),
            next: end,
        });
        let mut b = Batch::new();
        match rec {
            Some(r) => b.update(r, Kind::Json, data),
            None => b.insert(Kind::Json, data),
        };
        let (_, recs) = self.commit(&mut st, b, Vec::new())?;
        let rec = rec.unwrap_or_else(|| recs[0]);
        st.counters.insert(name.to_owned(), (end, rec));
        drop(st);
        self.durable()?;
        Ok(start..end)
    }
}

impl WatchLink for Embedded {
    fn subscribe(
        &self,
        kind: Option<&str>,
        from: Option<Revision>,
        window: u32,
        sink: Arc<ChannelSink>,
    ) -> Result<(u64, u32)> {
        let wid = self.inner.next_wid.fetch_add(1, Ordering::Relaxed);
        let window = Embedded::subscribe(self, 0, wid, kind, from, window, sink)?;
        Ok((wid, window))
    }
    fn ack(&self, wid: u64, n: u32) {
        Embedded::ack(self, 0, wid, n)
    }
    fn unsubscribe(&self, wid: u64) {
        Embedded::unsubscribe(self, 0, wid);
    }
    fn alive(&self, _wid: u64) -> bool {
        // a closed registry says so with a `Dropped` push
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Stored;
    use crate::proto::Push;
    use crate::{Change, Event, Instance};

    /// The shared encoding of a change push is what serde makes of the typed
    /// push, so watchers cannot tell which path encoded it.
    #[test]
    fn shared_events_push_json_is_the_typed_encoding() {
        let mut inst = Instance::new("game", "n\"1", "10.0.0.1:7000");
        inst.meta.insert("zone".into(), "eu \u{e9}".into());
        let events = vec![
            Event {
                revision: 41,
                change: Change::Put { instance: inst },
            },
            Event {
                revision: 42,
                change: Change::Delete {
                    kind: "game".into(),
                    id: "n2".into(),
                },
            },
        ];
        for (wid, rev, ev) in [(7u64, 42i64, events.clone()), (u64::MAX, 0, Vec::new())] {
            let typed = serde_json::to_string(&Push::Events {
                wid,
                revision: rev,
                events: ev.clone(),
            })
            .unwrap();
            let shared = super::events_push_json(wid, rev, &serde_json::to_string(&ev).unwrap());
            assert_eq!(shared, typed);
        }
    }

    #[test]
    fn storage_doc_records_round_trip() {
        const DOC: &str = include_str!("../../../docs/STORAGE.md");
        let part = &DOC[DOC.find("## Registry records").expect("section")..];
        let recs: Vec<&str> = part
            .lines()
            .filter_map(|l| l.strip_prefix("record: "))
            .collect();
        assert_eq!(recs.len(), 6);
        for r in recs {
            let s: Stored = serde_json::from_str(r).unwrap_or_else(|e| panic!("{r}: {e}"));
            assert_eq!(super::json(&s), r.as_bytes());
        }
    }
}
