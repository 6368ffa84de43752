//! The embedded backend: state in memory under one mutex, every change
//! committed to a zs-db database (docs/STORAGE.md, "Registry records") before it
//! is acknowledged or announced; a reaper thread expires leases and answers
//! long-poll waits that timed out.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zs_db::{Batch, Database, DbOptions, Durability, Kind, Vfs};

use crate::model::{
    check_name, choose_least_loaded, glob_match, Change, Event, Holder, Instance, LeaseId, Limits,
    Revision, Snapshot, WatchItem,
};
use crate::proto::Changes;
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

struct State {
    rev: Revision,
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
}

/// The embedded registry (cheap to clone; the last clone stops its reaper).
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
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
                Stored::Lease { id, ttl_ms } => {
                    let ttl = Duration::from_millis(ttl_ms);
                    st.leases.insert(
                        id,
                        LeaseEntry {
                            ttl,
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
        let inner = Arc::new(Inner {
            state: Mutex::new(st),
            db,
            cfg,
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
        let events = events_after(&st, kind, after);
        if !events.is_empty() || wait.is_zero() {
            let revision = st.rev;
            drop(st);
            reply(Changes::Events { revision, events });
            return Ok(());
        }
        if st.waiters.len() >= lim.max_waiters {
            return Err(Error::Quota(format!(
                "{} watches waiting (at most {})",
                st.waiters.len(),
                lim.max_waiters
            )));
        }
        if owner != 0
            && st.waiters.iter().filter(|w| w.owner == owner).count() >= lim.max_waiters_per_conn
        {
            return Err(Error::Quota(format!(
                "{} watches waiting on this connection",
                lim.max_waiters_per_conn
            )));
        }
        st.waiters.push(Waiter {
            kind: kind.map(str::to_owned),
            after,
            deadline: Instant::now() + wait,
            owner,
            reply,
        });
        Ok(())
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

    /// Whether a lease is live.
    pub fn lease_alive(&self, lease: LeaseId) -> bool {
        self.lock().leases.contains_key(&lease)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every change made so far is on disk (Immediate durability).
    fn durable(&self) -> Result<()> {
        if matches!(self.inner.cfg.durability, Durability::Immediate) {
            self.inner.db.sync().map_err(store_err)?;
        }
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

    /// Answers the waiters that have news (call after commit, with the guard).
    fn wake(&self, mut st: MutexGuard<'_, State>) {
        if st.waiters.is_empty() {
            return;
        }
        let mut ready = Vec::new();
        let mut keep = Vec::new();
        for w in std::mem::take(&mut st.waiters) {
            let ev = events_after(&st, w.kind.as_deref(), w.after);
            if ev.is_empty() {
                keep.push(w);
            } else {
                ready.push((w.reply, ev));
            }
        }
        st.waiters = keep;
        let rev = st.rev;
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

fn events_after(st: &State, kind: Option<&str>, after: Revision) -> Vec<Event> {
    // history is in revision order: skip to the first one after `after`
    let start = st.history.partition_point(|e| e.revision <= after);
    st.history
        .range(start..)
        .filter(|e| match (kind, &e.change) {
            (None, _) => true,
            (Some(k), Change::Put { instance }) => instance.kind == k,
            (Some(k), Change::Delete { kind, .. }) => kind == k,
        })
        .cloned()
        .collect()
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
        for id in expired {
            tracing::debug!(lease = id, "registry: lease expired");
            if let Err(e) = reg.end_lease(&mut st, id) {
                tracing::warn!("registry: expiring lease {id:x}: {e}");
            }
        }
        let rev = st.rev;
        let (late, keep): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut st.waiters)
            .into_iter()
            .partition(|w| w.deadline <= now);
        st.waiters = keep;
        reg.wake(st);
        for w in late {
            (w.reply)(Changes::Events {
                revision: rev,
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
            }),
        );
        let (_, recs) = self.commit(&mut st, b, Vec::new())?;
        st.leases.insert(
            id,
            LeaseEntry {
                ttl,
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

    fn keepalive(&self, lease: LeaseId) -> Result<Duration> {
        let mut st = self.lock();
        let l = st
            .leases
            .get_mut(&lease)
            .ok_or(Error::LeaseNotFound(lease))?;
        l.deadline = Instant::now() + l.ttl;
        Ok(l.ttl)
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut st = self.lock();
        if !self.end_lease(&mut st, lease)? {
            return Err(Error::LeaseNotFound(lease));
        }
        drop(st);
        self.durable()?;
        self.wake(self.lock());
        Ok(())
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
        self.durable()?;
        self.wake(self.lock());
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
        drop(st);
        self.durable()?;
        self.wake(self.lock());
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
        let cands: Vec<Instance> = st
            .instances
            .range((kind.to_owned(), String::new())..)
            .take_while(|((k, _), _)| k == kind)
            .map(|(_, (i, _))| i.clone())
            .collect();
        st.turn = st.turn.wrapping_add(1);
        Ok(choose_least_loaded(&cands, st.turn))
    }

    fn watch(&self, kind: Option<&str>, from: Option<Revision>) -> Result<Box<dyn Watch>> {
        if let Some(k) = kind {
            check_name("type", k)?;
        }
        Ok(Box::new(PollWatch::new(
            Arc::new(self.clone()),
            kind.map(str::to_owned),
            from,
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

/// Where a [`PollWatch`] gets its data.
pub(crate) trait ChangeSource: Send + Sync {
    fn snapshot(&self, kind: Option<&str>) -> Result<Snapshot>;
    fn changes(&self, kind: Option<&str>, after: Revision, wait: Duration) -> Result<Changes>;
}

impl ChangeSource for Embedded {
    fn snapshot(&self, kind: Option<&str>) -> Result<Snapshot> {
        self.list(kind)
    }
    fn changes(&self, kind: Option<&str>, after: Revision, wait: Duration) -> Result<Changes> {
        let (tx, rx) = mpsc::sync_channel(1);
        Embedded::changes(
            self,
            kind,
            after,
            wait,
            0,
            Box::new(move |c| {
                let _ = tx.send(c);
            }),
        )?;
        rx.recv()
            .map_err(|_| Error::Unavailable("registry closed".into()))
    }
}

/// A watch over long-poll requests (embedded in-process and remote).
pub(crate) struct PollWatch {
    src: Arc<dyn ChangeSource>,
    kind: Option<String>,
    rev: Option<Revision>,
    pending: VecDeque<WatchItem>,
}

impl PollWatch {
    pub(crate) fn new(
        src: Arc<dyn ChangeSource>,
        kind: Option<String>,
        from: Option<Revision>,
    ) -> PollWatch {
        PollWatch {
            src,
            kind,
            rev: from,
            pending: VecDeque::new(),
        }
    }
}

impl Watch for PollWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchItem>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.pop_front() {
                return Ok(Some(i));
            }
            let left = end.saturating_duration_since(Instant::now());
            let got = match self.rev {
                None => self.src.snapshot(self.kind.as_deref()).map(|s| {
                    self.rev = Some(s.revision);
                    self.pending.push_back(WatchItem::Snapshot {
                        snapshot: s,
                        resync: false,
                    });
                }),
                Some(after) => {
                    self.src
                        .changes(self.kind.as_deref(), after, left)
                        .map(|c| match c {
                            Changes::Events { revision, events } => {
                                self.rev = Some(revision.max(after));
                                self.pending
                                    .extend(events.into_iter().map(WatchItem::Change));
                            }
                            Changes::Resync(s) => {
                                self.rev = Some(s.revision);
                                self.pending.push_back(WatchItem::Snapshot {
                                    snapshot: s,
                                    resync: true,
                                });
                            }
                        })
                }
            };
            match got {
                Ok(()) => {}
                Err(Error::Unavailable(e)) => {
                    tracing::debug!("watch: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(50).min(left));
                }
                Err(e) => return Err(e),
            }
            if self.pending.is_empty() && Instant::now() >= end {
                return Ok(None);
            }
        }
    }

    fn revision(&self) -> Revision {
        self.rev.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::Stored;

    #[test]
    fn storage_doc_records_round_trip() {
        const DOC: &str = include_str!("../../../docs/STORAGE.md");
        let part = &DOC[DOC.find("## Registry records").expect("section")..];
        let recs: Vec<&str> = part
            .lines()
            .filter_map(|l| l.strip_prefix("record: "))
            .collect();
        assert_eq!(recs.len(), 5);
        for r in recs {
            let s: Stored = serde_json::from_str(r).unwrap_or_else(|e| panic!("{r}: {e}"));
            assert_eq!(super::json(&s), r.as_bytes());
        }
    }
}
