//! Clusters (`zs-registry`, feature `registry`): servers register themselves
//! and report their load; clients connect to the least-loaded server of a type
//! and fail over when it goes away; the registry is embedded (a zs-core
//! service on zs-db) or etcd, behind one trait object
//! (`Arc<dyn ServiceRegistry>`).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use zserver::{cluster, join_cluster, FailoverClient, Member, ServerBuilder};
//!
//! // The registry: embedded here (a `cluster::Remote` or `cluster::Etcd` works the same).
//! let vfs = Arc::new(zserver::db::MemVfs::new());
//! let reg: Arc<dyn cluster::ServiceRegistry> =
//!     Arc::new(cluster::Embedded::open(vfs, "registry", Default::default()).unwrap());
//!
//! // Two `game` servers register themselves; load = open connections.
//! let mut members = Vec::new();
//! for name in ["a", "b"] {
//!     let server = Arc::new(ServerBuilder::new()
//!         .addr("127.0.0.1:0".parse().unwrap())
//!         .commands(move |r| { r.console("whoami", move |_, _| Ok(name.to_owned())); })
//!         .start().unwrap());
//!     let keeper = join_cluster(&server, reg.clone(), Member::new("game", name)).unwrap();
//!     members.push((server, keeper));
//! }
//!
//! // A client of "the least-loaded game server".
//! let game = FailoverClient::new(reg.clone(), "game");
//! let first = game.call("whoami", "").unwrap();
//! // that server leaves the cluster (its lease ends): the next call goes elsewhere
//! let i = if first == "a" { 0 } else { 1 };
//! reg.revoke(members[i].1.lease()).unwrap();
//! members.remove(i);
//! let deadline = std::time::Instant::now() + Duration::from_secs(5);
//! while game.call("whoami", "").unwrap() == first {
//!     assert!(std::time::Instant::now() < deadline);
//! }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub use zs_registry as cluster;
use zs_registry::{Change, Instance, Keeper, Load, ServiceRegistry, WatchItem};

use crate::{ClientBuilder, Fingerprint, RunningServer, ServerBuilder};

/// Metadata key holding a server's fingerprint (clients pin it).
pub const META_FINGERPRINT: &str = "fingerprint";

impl ServerBuilder {
    /// Serves an embedded registry from this server (`reg` and `reg.changes`
    /// commands, docs/PROTOCOL.md, Part "zs-registry"): the server becomes the dispatcher.
    pub fn registry_service(self, reg: cluster::Embedded) -> Self {
        self.commands(move |r| {
            cluster::service::install(r, reg, cluster::service::ServiceConfig::default())
        })
    }
}

/// How a member reports its load.
#[derive(Clone)]
pub enum LoadSource {
    /// Open connections out of `max`.
    Connections {
        /// The capacity announced.
        max: u64,
    },
    /// A figure the service computes.
    Custom(Arc<dyn Fn() -> Load + Send + Sync>),
}

/// How a server appears in the registry.
#[derive(Clone)]
pub struct Member {
    /// Service type.
    pub kind: String,
    /// Instance id.
    pub id: String,
    /// Lease TTL (renewed every third of it).
    pub ttl: Duration,
    /// Addresses announced (default: the server's listening address).
    pub addrs: Vec<String>,
    /// Extra metadata (the fingerprint is added).
    pub meta: Vec<(String, String)>,
    /// Load figure.
    pub load: LoadSource,
}

impl Member {
    /// Type and id; TTL 10 s; load = connections out of 10,000.
    pub fn new(kind: &str, id: &str) -> Member {
        Member {
            kind: kind.to_owned(),
            id: id.to_owned(),
            ttl: Duration::from_secs(10),
            addrs: Vec::new(),
            meta: Vec::new(),
            load: LoadSource::Connections { max: 10_000 },
        }
    }
}

/// Registers `server` as `member` and keeps it registered: the lease is
/// renewed, the load re-reported when it changes, and everything registered
/// again under a new lease if the old one was lost. Drop the [`Keeper`] to leave.
pub fn join_cluster(
    server: &Arc<RunningServer>,
    reg: Arc<dyn ServiceRegistry>,
    member: Member,
) -> Result<Keeper, cluster::Error> {
    let weak: Weak<RunningServer> = Arc::downgrade(server);
    let mut base = Instance::new(&member.kind, &member.id, "");
    base.addrs = if member.addrs.is_empty() {
        vec![server.local_addr().to_string()]
    } else {
        member.addrs.clone()
    };
    if let Some(fp) = server.fingerprint() {
        base.meta.insert(META_FINGERPRINT.into(), fp.to_string());
    }
    for (k, v) in &member.meta {
        base.meta.insert(k.clone(), v.clone());
    }
    let load_now = {
        let (weak, src) = (weak.clone(), member.load.clone());
        move || match &src {
            LoadSource::Connections { max } => Load::new(
                weak.upgrade()
                    .map_or(0, |s| s.server().connection_count() as u64),
                *max,
            ),
            LoadSource::Custom(f) => f(),
        }
    };
    let load_now = Arc::new(load_now);
    let last = Arc::new(Mutex::new(Load::default()));
    let (b1, l1, last1) = (base.clone(), load_now.clone(), last.clone());
    let (b2, l2, last2) = (base, load_now, last);
    Keeper::start(
        reg,
        member.ttl,
        move |r, lease| {
            let mut i = b1.clone();
            i.load = l1();
            r.register(lease, &i)?;
            *last1.lock().unwrap_or_else(|p| p.into_inner()) = i.load;
            Ok(())
        },
        move |r, lease| {
            let now = l2();
            let mut prev = last2.lock().unwrap_or_else(|p| p.into_inner());
            if *prev != now {
                let mut i = b2.clone();
                i.load = now;
                if r.register(lease, &i).is_ok() {
                    *prev = now;
                }
            }
        },
    )
}

type Connect = dyn Fn(&Instance) -> Result<zs_core::Client, String> + Send + Sync;

struct FailoverInner {
    reg: Arc<dyn ServiceRegistry>,
    kind: String,
    connect: Box<Connect>,
    current: Mutex<Option<(Instance, Arc<zs_core::Client>)>>,
    stale: AtomicBool,
}

/// A client of "the least-loaded server of a type": it picks one through the
/// registry, connects, and picks again when that server's registration
/// disappears (lease expired or revoked, seen by a watch) or its connection
/// fails.
pub struct FailoverClient {
    inner: Arc<FailoverInner>,
}

/// Connects to an instance: its first address, pinning the fingerprint in its
/// metadata.
pub fn connect_instance(inst: &Instance) -> Result<zs_core::Client, String> {
    let addr = inst
        .addrs
        .first()
        .ok_or_else(|| format!("{} has no address", inst.name()))?
        .parse()
        .map_err(|e| format!("{}: bad address: {e}", inst.name()))?;
    let fp: Fingerprint = inst
        .meta
        .get(META_FINGERPRINT)
        .ok_or_else(|| format!("{} has no fingerprint", inst.name()))?
        .parse()
        .map_err(|e| format!("{}: bad fingerprint: {e}", inst.name()))?;
    ClientBuilder::new(addr)
        .fingerprint(fp)
        .connect()
        .map_err(|e| format!("{}: {e}", inst.name()))
}

impl FailoverClient {
    /// A client of the least-loaded `kind` server, connecting with
    /// [`connect_instance`].
    pub fn new(reg: Arc<dyn ServiceRegistry>, kind: &str) -> FailoverClient {
        FailoverClient::with_connect(reg, kind, connect_instance)
    }

    /// The same with your own way to connect to an instance.
    pub fn with_connect(
        reg: Arc<dyn ServiceRegistry>,
        kind: &str,
        connect: impl Fn(&Instance) -> Result<zs_core::Client, String> + Send + Sync + 'static,
    ) -> FailoverClient {
        let inner = Arc::new(FailoverInner {
            reg,
            kind: kind.to_owned(),
            connect: Box::new(connect),
            current: Mutex::new(None),
            stale: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        let _ = std::thread::Builder::new()
            .name("zs-failover-watch".into())
            .spawn(move || watch_loop(weak));
        FailoverClient { inner }
    }

    /// The instance in use (after the first call).
    pub fn current(&self) -> Option<Instance> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(i, _)| i.clone())
    }

    /// The connection to the current instance, picking (again) when needed.
    pub fn client(&self) -> Result<Arc<zs_core::Client>, String> {
        let mut cur = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        let stale = self.inner.stale.swap(false, Ordering::AcqRel);
        if let Some((_, c)) = cur.as_ref().filter(|(_, c)| !stale && c.is_connected()) {
            return Ok(c.clone());
        }
        if let Some((_, c)) = cur.take() {
            c.close();
        }
        let inst = self
            .inner
            .reg
            .pick(&self.inner.kind)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no {} server available", self.inner.kind))?;
        let c = Arc::new((self.inner.connect)(&inst)?);
        *cur = Some((inst, c.clone()));
        Ok(c)
    }

    /// A console call on the least-loaded server; a failed connection is
    /// retried once on a fresh pick.
    pub fn call(&self, cmd: &str, text: &str) -> Result<String, String> {
        let c = self.client()?;
        match c.call(cmd, text).wait() {
            Err(zs_core::Error::Remote { code, message }) => Err(format!("{code}: {message}")),
            Err(_) => {
                self.inner.stale.store(true, Ordering::Release);
                let c = self.client()?;
                c.call(cmd, text).wait().map_err(|e| e.to_string())
            }
            Ok(s) => Ok(s),
        }
    }
}

fn watch_loop(weak: Weak<FailoverInner>) {
    let mut watch = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if watch.is_none() {
            match inner.reg.watch(Some(&inner.kind), None) {
                Ok(w) => watch = Some(w),
                Err(_) => {
                    drop(inner);
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        let Some(w) = watch.as_mut() else { continue };
        let item = w.next(Duration::from_millis(200));
        let cur_id = inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(i, _)| i.id.clone());
        match (item, cur_id) {
            (Ok(Some(WatchItem::Change(e))), Some(id)) if matches!(&e.change, Change::Delete { id: gone, .. } if *gone == id) =>
            {
                inner.stale.store(true, Ordering::Release);
            }
            (Ok(Some(WatchItem::Snapshot { snapshot, .. })), Some(id))
                if !snapshot.instances.iter().any(|i| i.id == id) =>
            {
                inner.stale.store(true, Ordering::Release);
            }
            (Err(_), _) => watch = None,
            _ => {}
        }
    }
}
