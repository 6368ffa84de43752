//! The etcd v3 backend: the same trait on leases, keepalives, prefix watches
//! from a revision and transactions (locks, id counters), through the
//! `etcd-client` crate on a small private tokio runtime.
//!
//! Keys (under [`EtcdConfig::prefix`], default `/zsreg/`): `i/<type>/<id>` → the
//! instance as JSON, attached to its lease; `l/<name>` → the lock holder as
//! JSON, attached to the holder's lease; `n/<name>` → the next free id (decimal).
//!
//! Limits: metadata size and names are checked before sending; the instance
//! count is checked with a count-only range before each registration (so under
//! concurrent registrations it can be exceeded by the number of racing
//! writers: etcd has no atomic "count below N" compare). etcd's own limits stay
//! in force (1.5 MiB per request, the backend quota).

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use crate::model::{
    check_name, choose_least_loaded, glob_match, literal_prefix, Change, Event, Holder, Instance,
    LeaseId, Limits, Revision, Snapshot, WatchItem,
};
use crate::{Error, LockState, Result, ServiceRegistry, Watch};

/// Settings of the etcd backend.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix of everything this registry stores.
    pub prefix: String,
    /// Bounds checked before sending.
    pub limits: Limits,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl EtcdConfig {
    /// One endpoint, default prefix, limits and a 5 s timeout.
    pub fn new(endpoint: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![endpoint.to_owned()],
            prefix: "/zsreg/".into(),
            limits: Limits::default(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The registry on etcd v3.
pub struct Etcd {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
    cfg: EtcdConfig,
    turn: AtomicU64,
}

fn map_err(e: etcd_client::Error, lease: LeaseId) -> Error {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) => {
            let m = s.message();
            if m.contains("lease not found") {
                Error::LeaseNotFound(lease)
            } else if m.contains("too large") || m.contains("space exceeded") {
                Error::Quota(m.to_owned())
            } else if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) || m.contains("transport")
                || m.contains("connect")
            {
                Error::Unavailable(m.to_owned())
            } else {
                Error::Store(format!("{:?}: {m}", s.code()))
            }
        }
        E::TransportError(t) => Error::Unavailable(t.to_string()),
        E::IoError(t) => Error::Unavailable(t.to_string()),
        E::LeaseKeepAliveError(m) if m.contains("lease not found") => Error::LeaseNotFound(lease),
        E::LeaseKeepAliveError(m) | E::WatchError(m) => Error::Unavailable(m),
        other => Error::Store(other.to_string()),
    }
}

fn bad_json(e: serde_json::Error) -> Error {
    Error::Store(format!("unreadable value in etcd: {e}"))
}

impl Etcd {
    /// Connects (the connection itself is made lazily and re-made after
    /// failures by the client).
    pub fn connect(cfg: EtcdConfig) -> Result<Etcd> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("zs-registry-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::Store(e.to_string()))?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(cfg.timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let client = rt
            .block_on(Client::connect(cfg.endpoints.clone(), Some(opts)))
            .map_err(|e| map_err(e, 0))?;
        Ok(Etcd {
            rt: Arc::new(rt),
            client,
            cfg,
            turn: AtomicU64::new(0),
        })
    }

    fn run<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        let t = self.cfg.timeout;
        self.rt.block_on(async move {
            match tokio::time::timeout(t, f).await {
                Ok(r) => r,
                Err(_) => Err(Error::Unavailable(format!(
                    "etcd did not answer within {t:?}"
                ))),
            }
        })
    }

    fn ikey(&self, kind: &str, id: &str) -> String {
        format!("{}i/{kind}/{id}", self.cfg.prefix)
    }

    fn iprefix(&self) -> String {
        format!("{}i/", self.cfg.prefix)
    }

    async fn snapshot_at(c: &mut Client, prefix: String, lim: &Limits) -> Result<Snapshot> {
        let r = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| map_err(e, 0))?;
        if r.kvs().len() > lim.max_results {
            return Err(Error::Quota(format!(
                "{} instances (at most {} per answer)",
                r.kvs().len(),
                lim.max_results
            )));
        }
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        let instances = r
            .kvs()
            .iter()
            .map(|kv| {
                let mut i: Instance = serde_json::from_slice(kv.value()).map_err(bad_json)?;
                i.lease = kv.lease();
                Ok(i)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Snapshot {
            revision,
            instances,
        })
    }
}

impl ServiceRegistry for Etcd {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl = self.cfg.limits.grant_ttl(ttl)?;
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let mut c = self.client.clone();
        self.run(async move {
            let r = c.lease_grant(secs, None).await.map_err(|e| map_err(e, 0))?;
            Ok(r.id())
        })
    }

    fn keepalive(&self, lease: LeaseId) -> Result<Duration> {
        let mut c = self.client.clone();
        self.run(async move {
            let (mut keeper, mut stream) = c
                .lease_keep_alive(lease)
                .await
                .map_err(|e| map_err(e, lease))?;
            keeper.keep_alive().await.map_err(|e| map_err(e, lease))?;
            match stream.message().await.map_err(|e| map_err(e, lease))? {
                Some(r) if r.ttl() > 0 => Ok(Duration::from_secs(r.ttl() as u64)),
                Some(_) => Err(Error::LeaseNotFound(lease)),
                None => Err(Error::Unavailable("keepalive stream closed".into())),
            }
        })
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        let mut c = self.client.clone();
        self.run(async move {
            c.lease_revoke(lease).await.map_err(|e| map_err(e, lease))?;
            Ok(())
        })
    }

    fn register(&self, lease: LeaseId, instance: &Instance) -> Result<Revision> {
        let lim = &self.cfg.limits;
        lim.check_instance(instance)?;
        let mut inst = instance.clone();
        inst.lease = 0;
        let key = self.ikey(&inst.kind, &inst.id);
        let value = serde_json::to_vec(&inst).map_err(|e| Error::Invalid(e.to_string()))?;
        let (prefix, max) = (self.iprefix(), lim.max_instances);
        let mut c = self.client.clone();
        self.run(async move {
            let n = c
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(|e| map_err(e, lease))?
                .count();
            if n as usize >= max {
                // replacing an existing key is fine at the limit
                let exists = c
                    .get(key.clone(), Some(GetOptions::new().with_count_only()))
                    .await
                    .map_err(|e| map_err(e, lease))?
                    .count()
                    > 0;
                if !exists {
                    return Err(Error::Quota(format!(
                        "{n} instances registered (at most {max})"
                    )));
                }
            }
            let r = c
                .put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
                .map_err(|e| map_err(e, lease))?;
            Ok(r.header().map(|h| h.revision()).unwrap_or(0))
        })
    }

    fn deregister(&self, kind: &str, id: &str) -> Result<bool> {
        check_name("type", kind)?;
        check_name("id", id)?;
        let key = self.ikey(kind, id);
        let mut c = self.client.clone();
        self.run(async move {
            let r = c.delete(key, None).await.map_err(|e| map_err(e, 0))?;
            Ok(r.deleted() > 0)
        })
    }

    fn list(&self, kind: Option<&str>) -> Result<Snapshot> {
        let prefix = match kind {
            Some(k) => {
                check_name("type", k)?;
                format!("{}{k}/", self.iprefix())
            }
            None => self.iprefix(),
        };
        let mut c = self.client.clone();
        let lim = self.cfg.limits.clone();
        self.run(async move { Etcd::snapshot_at(&mut c, prefix, &lim).await })
    }

    fn query(&self, pattern: &str) -> Result<Vec<Instance>> {
        if pattern.len() > 200 {
            return Err(Error::Invalid("pattern longer than 200 bytes".into()));
        }
        let prefix = format!("{}{}", self.iprefix(), literal_prefix(pattern));
        let mut c = self.client.clone();
        let lim = self.cfg.limits.clone();
        let snap = self.run(async move { Etcd::snapshot_at(&mut c, prefix, &lim).await })?;
        Ok(snap
            .instances
            .into_iter()
            .filter(|i| glob_match(pattern, &i.name()))
            .collect())
    }

    fn pick(&self, kind: &str) -> Result<Option<Instance>> {
        let snap = self.list(Some(kind))?;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(choose_least_loaded(&snap.instances, turn))
    }

    fn watch(&self, kind: Option<&str>, from: Option<Revision>) -> Result<Box<dyn Watch>> {
        let prefix = match kind {
            Some(k) => {
                check_name("type", k)?;
                format!("{}{k}/", self.iprefix())
            }
            None => self.iprefix(),
        };
        let (tx, rx) = mpsc::sync_channel(1024);
        let task = self.rt.spawn(watch_task(
            self.client.clone(),
            prefix,
            self.iprefix(),
            from,
            self.cfg.limits.clone(),
            tx,
        ));
        Ok(Box::new(EtcdWatch {
            rx,
            task,
            rev: from.unwrap_or(0),
        }))
    }

    fn try_lock(&self, name: &str, lease: LeaseId, holder: &str) -> Result<LockState> {
        check_name("lock", name)?;
        if holder.len() > 256 {
            return Err(Error::Quota("holder text longer than 256 bytes".into()));
        }
        let key = format!("{}l/{name}", self.cfg.prefix);
        let value = serde_json::to_vec(&Holder {
            lease,
            holder: holder.to_owned(),
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut c = self.client.clone();
        self.run(async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let r = c.txn(txn).await.map_err(|e| map_err(e, lease))?;
            if r.succeeded() {
                return Ok(LockState::Acquired);
            }
            for op in r.op_responses() {
                if let TxnOpResponse::Get(g) = op {
                    if let Some(kv) = g.kvs().first() {
                        let h: Holder = serde_json::from_slice(kv.value()).map_err(bad_json)?;
                        return Ok(if kv.lease() == lease {
                            LockState::Acquired
                        } else {
                            LockState::Held(h)
                        });
                    }
                }
            }
            Err(Error::Unavailable(
                "lock vanished during the attempt; retry".into(),
            ))
        })
    }

    fn unlock(&self, name: &str, lease: LeaseId) -> Result<bool> {
        check_name("lock", name)?;
        let key = format!("{}l/{name}", self.cfg.prefix);
        let mut c = self.client.clone();
        self.run(async move {
            let txn = Txn::new()
                .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(key, None)]);
            let r = c.txn(txn).await.map_err(|e| map_err(e, lease))?;
            Ok(r.succeeded())
        })
    }

    fn lock_holder(&self, name: &str) -> Result<Option<Holder>> {
        check_name("lock", name)?;
        let key = format!("{}l/{name}", self.cfg.prefix);
        let mut c = self.client.clone();
        self.run(async move {
            let r = c.get(key, None).await.map_err(|e| map_err(e, 0))?;
            match r.kvs().first() {
                Some(kv) => Ok(Some(serde_json::from_slice(kv.value()).map_err(bad_json)?)),
                None => Ok(None),
            }
        })
    }

    fn allocate_ids(&self, name: &str, count: u64) -> Result<Range<u64>> {
        check_name("counter", name)?;
        let max = self.cfg.limits.max_id_batch;
        if count == 0 || count > max {
            return Err(Error::Invalid(format!("count must be 1 to {max}")));
        }
        let key = format!("{}n/{name}", self.cfg.prefix);
        let mut c = self.client.clone();
        self.run(async move {
            for _ in 0..1000 {
                let r = c.get(key.clone(), None).await.map_err(|e| map_err(e, 0))?;
                let (start, cmp) = match r.kvs().first() {
                    Some(kv) => {
                        let n: u64 = std::str::from_utf8(kv.value())
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| Error::Store("unreadable id counter".into()))?;
                        (
                            n,
                            Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                        )
                    }
                    None => (
                        1,
                        Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    ),
                };
                let end = start
                    .checked_add(count)
                    .ok_or_else(|| Error::Quota("id counter exhausted".into()))?;
                let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
                    key.clone(),
                    end.to_string(),
                    None,
                )]);
                if c.txn(txn).await.map_err(|e| map_err(e, 0))?.succeeded() {
                    return Ok(start..end);
                }
            }
            Err(Error::Unavailable("id counter too contended".into()))
        })
    }
}

fn parse_event(ev: &etcd_client::Event, iprefix: &str) -> Option<Event> {
    let kv = ev.kv()?;
    let revision = kv.mod_revision();
    let change = match ev.event_type() {
        EventType::Put => {
            let mut instance: Instance = serde_json::from_slice(kv.value()).ok()?;
            instance.lease = kv.lease();
            Change::Put { instance }
        }
        EventType::Delete => {
            let key = std::str::from_utf8(kv.key()).ok()?;
            let (kind, id) = key.strip_prefix(iprefix)?.split_once('/')?;
            Change::Delete {
                kind: kind.to_owned(),
                id: id.to_owned(),
            }
        }
    };
    Some(Event { revision, change })
}

/// Feeds a watch: snapshot (if asked), then events; reconnects from the last
/// revision after failures; re-snapshots (resync) when compacted.
async fn watch_task(
    client: Client,
    prefix: String,
    iprefix: String,
    from: Option<Revision>,
    lim: Limits,
    tx: mpsc::SyncSender<Result<WatchItem>>,
) {
    let mut rev = from;
    let mut resync = false;
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut c = client.clone();
        if rev.is_none() || resync {
            match Etcd::snapshot_at(&mut c, prefix.clone(), &lim).await {
                Ok(s) => {
                    rev = Some(s.revision);
                    if tx
                        .send(Ok(WatchItem::Snapshot {
                            snapshot: s,
                            resync,
                        }))
                        .is_err()
                    {
                        return;
                    }
                    resync = false;
                }
                Err(Error::Unavailable(_)) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        let after = rev.unwrap_or(0);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let mut stream = match c.watch(prefix.clone(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("etcd watch: {e}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(r)) => {
                    backoff = Duration::from_millis(50);
                    if r.compact_revision() > 0 {
                        tracing::info!(
                            "etcd watch fell behind compaction (revision {}); resyncing",
                            r.compact_revision()
                        );
                        resync = true;
                        break;
                    }
                    if r.canceled() {
                        tracing::debug!("etcd watch canceled: {}", r.cancel_reason());
                        break;
                    }
                    for ev in r.events() {
                        if let Some(e) = parse_event(ev, &iprefix) {
                            rev = Some(e.revision);
                            if tx.send(Ok(WatchItem::Change(e))).is_err() {
                                return;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("etcd watch stream: {e}; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

struct EtcdWatch {
    rx: mpsc::Receiver<Result<WatchItem>>,
    task: tokio::task::JoinHandle<()>,
    rev: Revision,
}

impl Watch for EtcdWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchItem>> {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(item)) => {
                match &item {
                    WatchItem::Snapshot { snapshot, .. } => self.rev = snapshot.revision,
                    WatchItem::Change(e) => self.rev = e.revision,
                }
                Ok(Some(item))
            }
            Ok(Err(e)) => Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(Error::Unavailable("watch task ended".into()))
            }
        }
    }

    fn revision(&self) -> Revision {
        self.rev
    }
}

impl Drop for EtcdWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
