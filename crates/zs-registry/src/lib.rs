//! # zs-registry: the cluster registry
//!
//! ZServer4D's ServMan / HostQuery and ZNet's C4 dispatch, as one trait,
//! [`ServiceRegistry`], with two backends that pass the same conformance suite
//! (`tests/conformance.rs`):
//!
//! - [`Embedded`]: the registry in this process, its state in a zs-db database
//!   (it survives a restart); [`service`] serves it to zs-core clients (`zs serve
//!   --registry`) and [`Remote`] is the client side. Nothing else to install.
//! - [`Etcd`]: the same trait on etcd v3 (leases, keepalive, watch from a
//!   revision, transactions for locks and ids) through the `etcd-client` crate.
//!
//! The model: an [`Instance`] (type, id, physical and p2pvm addresses, metadata,
//! [`Load`]) is attached to a **lease** with a TTL kept alive by keepalives
//! ([`Keeper`] does it on a thread); it disappears when the lease expires or is
//! revoked. A [`Watch`] delivers a snapshot, then every change in revision
//! order, resumes after a reconnect from its last revision, and when that
//! revision is no longer available (compaction, registry restart) sends a new
//! snapshot marked `resync`. Queries: by type ([`ServiceRegistry::list`]), by
//! name pattern (`kind/id` with `*` and `?`, the HostQuery use), and the
//! least-loaded instance of a type ([`ServiceRegistry::pick`]; full instances are
//! skipped, ties are served in turn). Lease-based locks and leader election
//! (held until unlocked or the lease ends) and id-range allocation (Zeze's
//! AllocateId). [`Limits`] bound instances, leases, metadata size, watches.
//!
//! Watches of the embedded registry, in process or through [`Remote`], are
//! **pushed**: each change is sent to its watchers as soon as it is on disk
//! (over the watcher's open zs-core connection for [`Remote`]), in revision
//! order, with flow control: a watcher has at most [`Limits::watch_window`]
//! pushes unacknowledged (acknowledged as [`Watch::next`] takes them in); one
//! that falls that far behind is sent nothing more, then gets every change it
//! missed in one push (or a resync snapshot), and is dropped with a logged
//! reason after [`Limits::max_stall`] (it then reopens from its revision). So a
//! reader that stops costs the registry a few bytes, never a queue.
//! [`ServiceRegistry::keepalive_many`] renews many leases in one message.
//!
//! **Trust** (the embedded service, [`service`]): a lease, and the instances
//! and locks under it, may be renewed, revoked or changed only by the
//! connection that granted it (after that connection closed or the registry
//! restarted: by a connection with the same PSK identity), or by an admin
//! identity; others get [`Error::Forbidden`]. Reads and id allocation are open
//! to every accepted connection. In process, the caller is trusted.
//!
//! The API is blocking (`Send + Sync`, usable as `Arc<dyn ServiceRegistry>`); the
//! etcd backend runs its own small tokio runtime, so call it from plain threads
//! (or `spawn_blocking`), not from inside an async task.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use zs_registry::{Embedded, EmbeddedConfig, Instance, ServiceRegistry, WatchItem};
//!
//! let vfs = Arc::new(zs_db::MemVfs::new());
//! let reg: Arc<dyn ServiceRegistry> = Arc::new(Embedded::open(vfs, "registry", EmbeddedConfig::default())?);
//!
//! let lease = reg.grant(Duration::from_secs(10))?;
//! reg.register(lease, &Instance::new("game", "eu-1", "10.0.0.1:7777").with_load(40, 100))?;
//! reg.register(lease, &Instance::new("game", "eu-2", "10.0.0.2:7777").with_load(10, 100))?;
//! assert_eq!(reg.pick("game")?.unwrap().id, "eu-2");           // least loaded
//! assert_eq!(reg.query("game/eu-*")?.len(), 2);                 // HostQuery
//!
//! let mut watch = reg.watch(Some("game"), None)?;
//! let Some(WatchItem::Snapshot { snapshot, .. }) = watch.next(Duration::from_secs(1))? else { panic!() };
//! assert_eq!(snapshot.instances.len(), 2);
//! reg.revoke(lease)?;                                           // both disappear
//! assert!(matches!(watch.next(Duration::from_secs(1))?, Some(WatchItem::Change(_))));
//! assert!(reg.list(Some("game"))?.instances.is_empty());
//!
//! let ids = reg.allocate_ids("orders", 100)?;                   // Zeze AllocateId
//! assert_eq!(ids.end - ids.start, 100);
//! # Ok::<(), zs_registry::Error>(())
//! ```
#![forbid(unsafe_code)]

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod embedded;
#[cfg(feature = "etcd")]
mod etcd;
mod model;
pub mod proto;
mod push;
mod remote;
pub mod service;

pub use embedded::{events_push_json, Embedded, EmbeddedConfig, PushSink};
#[cfg(feature = "etcd")]
pub use etcd::{Etcd, EtcdConfig};
pub use model::{
    check_name, choose_least_loaded, choose_least_loaded_of, glob_match, literal_prefix, Change,
    Event, Holder, Instance, LeaseId, Limits, Load, Revision, Snapshot, WatchItem,
};
pub use remote::Remote;

/// Registry errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The lease expired, was revoked, or never existed.
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// Malformed input (names, TTLs, counts).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A limit was reached (instances, leases, metadata size, waiters).
    #[error("quota: {0}")]
    Quota(String),
    /// The registry could not be reached (or answered garbage); retry later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The lease, or the instance or lock under it, belongs to another
    /// connection of the registry service (see [`service`]: only the
    /// connection that granted a lease, or an admin, may use it).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The lock is held by someone else after waiting.
    #[error("lock {name} held by {holder}")]
    Locked {
        /// The lock.
        name: String,
        /// Its holder.
        holder: String,
    },
    /// The store failed (embedded: zs-db; etcd: an error answer).
    #[error("store: {0}")]
    Store(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A stream of [`WatchItem`]s (see the crate docs for the order guarantees).
pub trait Watch: Send {
    /// The next item, or `None` when nothing came within `timeout`. Connection
    /// failures are retried inside (resuming from [`Watch::revision`]); an error
    /// means the watch cannot go on.
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchItem>>;
    /// The last revision delivered (resume point).
    fn revision(&self) -> Revision;
}

/// What a lock attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// The caller's lease holds it now (also when it already did).
    Acquired,
    /// Someone else holds it.
    Held(Holder),
}

/// The registry, whatever the backend.
pub trait ServiceRegistry: Send + Sync {
    /// `embedded`, `remote` or `etcd`.
    fn backend(&self) -> &'static str;
    /// A new lease with this TTL (raised to the backend's minimum: 200 ms
    /// embedded, about 2 s on etcd with default settings).
    fn grant(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews the lease; answers its TTL, or [`Error::LeaseNotFound`] once it is gone.
    fn keepalive(&self, lease: LeaseId) -> Result<Duration>;
    /// Renews many leases at once (one message on the embedded service; a
    /// loop elsewhere): each lease's TTL in order, `None` for one that is gone.
    fn keepalive_many(&self, leases: &[LeaseId]) -> Result<Vec<Option<Duration>>> {
        leases
            .iter()
            .map(|l| match self.keepalive(*l) {
                Ok(t) => Ok(Some(t)),
                Err(Error::LeaseNotFound(_)) => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }
    /// Ends the lease now: its instances and locks disappear.
    fn revoke(&self, lease: LeaseId) -> Result<()>;
    /// Registers (or replaces: load updates) an instance under a live lease.
    fn register(&self, lease: LeaseId, instance: &Instance) -> Result<Revision>;
    /// Removes an instance; whether it existed.
    fn deregister(&self, kind: &str, id: &str) -> Result<bool>;
    /// Every instance of a type (or all), at one revision.
    fn list(&self, kind: Option<&str>) -> Result<Snapshot>;
    /// Instances whose `kind/id` matches a glob (`*`, `?`): HostQuery.
    fn query(&self, pattern: &str) -> Result<Vec<Instance>>;
    /// The least-loaded instance of a type that is not full (ties in turn).
    fn pick(&self, kind: &str) -> Result<Option<Instance>>;
    /// Watches a type (or all): snapshot first when `from` is `None`, else the
    /// changes after revision `from` (or a resync snapshot if they are gone).
    fn watch(&self, kind: Option<&str>, from: Option<Revision>) -> Result<Box<dyn Watch>>;
    /// Takes the lock `name` for `lease` if it is free.
    fn try_lock(&self, name: &str, lease: LeaseId, holder: &str) -> Result<LockState>;
    /// Releases the lock if `lease` holds it; whether it did.
    fn unlock(&self, name: &str, lease: LeaseId) -> Result<bool>;
    /// Who holds the lock.
    fn lock_holder(&self, name: &str) -> Result<Option<Holder>>;
    /// `count` fresh ids from the counter `name` (starts at 1; never repeats).
    fn allocate_ids(&self, name: &str, count: u64) -> Result<Range<u64>>;

    /// Waits up to `wait` for the lock (polling every 50 ms), else [`Error::Locked`].
    fn lock(&self, name: &str, lease: LeaseId, holder: &str, wait: Duration) -> Result<()> {
        let end = Instant::now() + wait;
        loop {
            match self.try_lock(name, lease, holder)? {
                LockState::Acquired => return Ok(()),
                LockState::Held(h) if Instant::now() >= end => {
                    return Err(Error::Locked {
                        name: name.to_owned(),
                        holder: h.holder,
                    })
                }
                LockState::Held(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    /// Leader election: become the leader of `election` (a lock named
    /// `election.<name>`), as `value`, if there is none. The leadership ends with
    /// the lease or [`ServiceRegistry::resign`].
    fn campaign(&self, election: &str, lease: LeaseId, value: &str) -> Result<LockState> {
        self.try_lock(&format!("election.{election}"), lease, value)
    }
    /// The current leader of `election`.
    fn leader(&self, election: &str) -> Result<Option<Holder>> {
        self.lock_holder(&format!("election.{election}"))
    }
    /// Gives up leadership.
    fn resign(&self, election: &str, lease: LeaseId) -> Result<bool> {
        self.unlock(&format!("election.{election}"), lease)
    }
}

/// Keeps a lease alive on a thread: a keepalive every `ttl / 3`; when the lease
/// is found gone (renewed too late, registry lost it), grants a new one and
/// calls `on_new_lease` (re-register there). Also runs `tick` after each
/// keepalive (report load there). Stops (and revokes) on drop.
pub struct Keeper {
    lease: Arc<Mutex<LeaseId>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    lost: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    reg: Arc<dyn ServiceRegistry>,
    revoke_on_drop: bool,
}

impl Keeper {
    /// Grants a lease, calls `on_new_lease(lease)` (register there), and keeps it
    /// alive; `tick(lease)` runs after every keepalive.
    pub fn start(
        reg: Arc<dyn ServiceRegistry>,
        ttl: Duration,
        on_new_lease: impl Fn(&dyn ServiceRegistry, LeaseId) -> Result<()> + Send + 'static,
        tick: impl Fn(&dyn ServiceRegistry, LeaseId) + Send + 'static,
    ) -> Result<Keeper> {
        let first = reg.grant(ttl)?;
        on_new_lease(&*reg, first)?;
        let lease = Arc::new(Mutex::new(first));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let lost = Arc::new(AtomicBool::new(false));
        let (l2, s2, lost2, r2) = (lease.clone(), stop.clone(), lost.clone(), reg.clone());
        let period = (ttl / 3).max(Duration::from_millis(50));
        let thread = std::thread::Builder::new()
            .name("zs-registry-keeper".into())
            .spawn(move || loop {
                {
                    let (m, c) = &*s2;
                    let g = m.lock().unwrap_or_else(|p| p.into_inner());
                    let (g, _) = c
                        .wait_timeout_while(g, period, |s| !*s)
                        .unwrap_or_else(|p| p.into_inner());
                    if *g {
                        return;
                    }
                }
                let cur = *l2.lock().unwrap_or_else(|p| p.into_inner());
                match r2.keepalive(cur) {
                    Ok(_) => tick(&*r2, cur),
                    Err(Error::LeaseNotFound(_) | Error::Forbidden(_)) => {
                        lost2.store(true, Ordering::Relaxed);
                        tracing::warn!(lease = cur, "registry lease lost; granting a new one");
                        if let Ok(new) = r2.grant(ttl) {
                            if on_new_lease(&*r2, new).is_ok() {
                                *l2.lock().unwrap_or_else(|p| p.into_inner()) = new;
                            } else {
                                let _ = r2.revoke(new);
                            }
                        }
                    }
                    Err(e) => tracing::debug!("registry keepalive failed: {e}"),
                }
            })
            .map_err(|e| Error::Store(e.to_string()))?;
        Ok(Keeper {
            lease,
            stop,
            lost,
            thread: Some(thread),
            reg,
            revoke_on_drop: true,
        })
    }

    /// The current lease.
    pub fn lease(&self) -> LeaseId {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops renewing without revoking: the registration lives until the lease
    /// expires (what a crashed process looks like; also a hand-over).
    pub fn abandon(mut self) {
        self.revoke_on_drop = false;
    }

    /// Whether a lease was ever lost and replaced.
    pub fn was_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        {
            let (m, c) = &*self.stop;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
            c.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.revoke_on_drop {
            let _ = self.reg.revoke(self.lease());
        }
    }
}
