//! The client of the embedded registry service: the trait over zs-core calls.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use zs_core::Client;

use crate::embedded::PushSink;
use crate::proto::{
    codes, Ack, Push, Request, Response, Unwatch, WatchAnswer, WatchRequest, CMD, CMD_ACK,
    CMD_UNWATCH, CMD_WATCH, MAX_KEEPALIVE_BATCH, PUSH,
};
use crate::push::{ChannelSink, PushWatch, WatchLink};
use crate::{
    Error, Holder, Instance, LeaseId, LockState, Result, Revision, ServiceRegistry, Snapshot, Watch,
};

type Connect = dyn Fn(zs_core::Registry) -> zs_core::Result<Client> + Send + Sync;
type Routes = Mutex<HashMap<u64, (Arc<ChannelSink>, Weak<Client>)>>;

/// Largest push accepted from the registry (a snapshot of many instances).
const MAX_PUSH_BYTES: usize = 256 << 20;

/// A registry served by another process (`zs serve --registry`), over zs-core.
///
/// It connects lazily with the given function and reconnects the same way
/// after the connection (or the registry) went away: a call that found the
/// connection dead answers [`Error::Unavailable`] and the next one reconnects.
/// Calls are not retried by themselves (a grant or an id allocation might
/// otherwise happen twice); [`Keeper`](crate::Keeper) and watches retry.
///
/// `connect` gets the zs-core command registry the client needs (the
/// registry's watch pushes, `reg.push`) and makes the connection with it.
/// Watches are pushed by the registry as changes commit, with flow control
/// (docs/PROTOCOL.md Part 7); one opened on a connection that is lost is
/// reopened on the next one from its last revision.
///
/// Leases belong to the connection that granted them: after a reconnect
/// (without StableIO) the old leases are refused ([`Error::Forbidden`]);
/// [`Keeper`](crate::Keeper) then grants a new lease and registers again.
pub struct Remote {
    inner: Arc<RemoteInner>,
}

struct RemoteInner {
    connect: Box<Connect>,
    client: Mutex<Option<Arc<Client>>>,
    timeout: Duration,
    routes: Arc<Routes>,
    next_wid: AtomicU64,
}

impl Remote {
    /// A remote registry reached through `connect` (called now and after every
    /// lost connection); calls time out after `timeout`.
    pub fn new(
        connect: impl Fn(zs_core::Registry) -> zs_core::Result<Client> + Send + Sync + 'static,
        timeout: Duration,
    ) -> Remote {
        Remote {
            inner: Arc::new(RemoteInner {
                connect: Box::new(connect),
                client: Mutex::new(None),
                timeout,
                routes: Arc::new(Mutex::new(HashMap::new())),
                next_wid: AtomicU64::new(1),
            }),
        }
    }

    fn client(&self) -> Result<Arc<Client>> {
        self.inner.client()
    }

    fn call(&self, req: &Request) -> Result<Response> {
        let text = serde_json::to_string(req).map_err(|e| Error::Invalid(e.to_string()))?;
        let out = self.inner.raw(CMD, &text, self.inner.timeout)?;
        serde_json::from_str(&out).map_err(|e| Error::Unavailable(format!("bad answer: {e}")))
    }
}

impl RemoteInner {
    fn client(&self) -> Result<Arc<Client>> {
        let mut g = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.as_ref().filter(|c| c.is_connected()) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            (self.connect)(push_commands(&self.routes))
                .map_err(|e| Error::Unavailable(e.to_string()))?,
        );
        *g = Some(c.clone());
        Ok(c)
    }

    fn raw(&self, cmd: &str, text: &str, timeout: Duration) -> Result<String> {
        let c = self.client()?;
        match c.call_timeout(cmd, text, Some(timeout)).wait() {
            Ok(s) => Ok(s),
            Err(zs_core::Error::Remote { code, message }) => Err(from_code(code, message)),
            Err(e) => {
                let mut g = self.client.lock().unwrap_or_else(|p| p.into_inner());
                if g.as_ref().is_some_and(|x| Arc::ptr_eq(x, &c)) {
                    c.close();
                    *g = None;
                }
                Err(Error::Unavailable(e.to_string()))
            }
        }
    }
}

/// The client's commands: the registry's pushes, routed to their watches.
fn push_commands(routes: &Arc<Routes>) -> zs_core::Registry {
    let mut cmds = zs_core::Registry::new();
    let routes = routes.clone();
    cmds.direct_console(PUSH, move |_peer, text| {
        if text.len() > MAX_PUSH_BYTES {
            tracing::warn!("registry push of {} bytes ignored", text.len());
            return;
        }
        let push: Push = match serde_json::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("registry push ignored: {e}");
                return;
            }
        };
        let wid = push.wid();
        let mut r = routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((sink, _)) = r.get(&wid) {
            if !sink.push(push) {
                // beyond the window, or the watch is gone: it reopens
                r.remove(&wid);
            }
        }
    });
    cmds
}

impl WatchLink for RemoteInner {
    fn subscribe(
        &self,
        kind: Option<&str>,
        from: Option<Revision>,
        window: u32,
        sink: Arc<ChannelSink>,
    ) -> Result<(u64, u32)> {
        let c = self.client()?;
        let wid = self.next_wid.fetch_add(1, Ordering::Relaxed);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wid, (sink, Arc::downgrade(&c)));
        let req = WatchRequest {
            wid,
            kind: kind.map(str::to_owned),
            from,
            window,
        };
        let text = serde_json::to_string(&req).map_err(|e| Error::Invalid(e.to_string()));
        let res = text
            .and_then(|t| self.raw(CMD_WATCH, &t, self.timeout))
            .and_then(|out| match serde_json::from_str(&out) {
                Ok(WatchAnswer::Watching { window, .. }) => Ok(window),
                Err(e) => Err(Error::Unavailable(format!("bad answer: {e}"))),
            });
        match res {
            Ok(window) => Ok((wid, window)),
            Err(e) => {
                self.routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&wid);
                Err(e)
            }
        }
    }

    fn ack(&self, wid: u64, n: u32) {
        let c = self.route_client(wid);
        if let (Some(c), Ok(t)) = (c, serde_json::to_string(&Ack { wid, n })) {
            let _ = c.send_direct_console(CMD_ACK, &t);
        }
    }

    fn unsubscribe(&self, wid: u64) {
        let c = self.route_client(wid);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&wid);
        if let (Some(c), Ok(t)) = (c, serde_json::to_string(&Unwatch { wid })) {
            if c.is_connected() {
                let _ = c.send_direct_console(CMD_UNWATCH, &t);
            }
        }
    }

    fn alive(&self, wid: u64) -> bool {
        self.route_client(wid).is_some_and(|c| c.is_connected())
    }
}

impl RemoteInner {
    fn route_client(&self, wid: u64) -> Option<Arc<Client>> {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&wid)
            .and_then(|(_, c)| c.upgrade())
    }

    fn snapshot(&self, kind: Option<&str>) -> Result<Snapshot> {
        let text = serde_json::to_string(&Request::List {
            kind: kind.map(str::to_owned),
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        match serde_json::from_str(&self.raw(CMD, &text, self.timeout)?) {
            Ok(Response::Snapshot(s)) => Ok(s),
            Ok(r) => Err(unexpected(r)),
            Err(e) => Err(Error::Unavailable(e.to_string())),
        }
    }
}

fn from_code(code: u32, message: String) -> Error {
    match code {
        codes::LEASE_NOT_FOUND => Error::LeaseNotFound(message.parse().unwrap_or(0)),
        codes::INVALID => Error::Invalid(message),
        codes::QUOTA => Error::Quota(message),
        codes::FORBIDDEN => Error::Forbidden(message),
        codes::STORE => Error::Store(message),
        _ => Error::Unavailable(format!("error {code}: {message}")),
    }
}

fn unexpected(r: Response) -> Error {
    Error::Unavailable(format!("unexpected answer {r:?}"))
}

impl ServiceRegistry for Remote {
    fn backend(&self) -> &'static str {
        "remote"
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        match self.call(&Request::Grant {
            ttl_ms: ttl.as_millis() as u64,
        })? {
            Response::Lease { lease, .. } => Ok(lease),
            r => Err(unexpected(r)),
        }
    }

    fn keepalive(&self, lease: LeaseId) -> Result<Duration> {
        match self.call(&Request::Keepalive { lease })? {
            Response::Lease { ttl_ms, .. } => Ok(Duration::from_millis(ttl_ms)),
            r => Err(unexpected(r)),
        }
    }

    fn keepalive_many(&self, leases: &[LeaseId]) -> Result<Vec<Option<Duration>>> {
        let mut out = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(MAX_KEEPALIVE_BATCH) {
            match self.call(&Request::KeepaliveMany {
                leases: chunk.to_vec(),
            })? {
                Response::Renewed { ttl_ms } if ttl_ms.len() == chunk.len() => out.extend(
                    ttl_ms
                        .into_iter()
                        .map(|t| (t > 0).then(|| Duration::from_millis(t))),
                ),
                r => return Err(unexpected(r)),
            }
        }
        Ok(out)
    }

    fn revoke(&self, lease: LeaseId) -> Result<()> {
        match self.call(&Request::Revoke { lease })? {
            Response::Revision { .. } => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn register(&self, lease: LeaseId, instance: &Instance) -> Result<Revision> {
        match self.call(&Request::Register {
            lease,
            instance: instance.clone(),
        })? {
            Response::Revision { revision } => Ok(revision),
            r => Err(unexpected(r)),
        }
    }

    fn deregister(&self, kind: &str, id: &str) -> Result<bool> {
        match self.call(&Request::Deregister {
            kind: kind.to_owned(),
            id: id.to_owned(),
        })? {
            Response::Done { done } => Ok(done),
            r => Err(unexpected(r)),
        }
    }

    fn list(&self, kind: Option<&str>) -> Result<Snapshot> {
        self.inner.snapshot(kind)
    }

    fn query(&self, pattern: &str) -> Result<Vec<Instance>> {
        match self.call(&Request::Query {
            pattern: pattern.to_owned(),
        })? {
            Response::Instances { instances } => Ok(instances),
            r => Err(unexpected(r)),
        }
    }

    fn pick(&self, kind: &str) -> Result<Option<Instance>> {
        match self.call(&Request::Pick {
            kind: kind.to_owned(),
        })? {
            Response::Pick { instance } => Ok(instance),
            r => Err(unexpected(r)),
        }
    }

    fn watch(&self, kind: Option<&str>, from: Option<Revision>) -> Result<Box<dyn Watch>> {
        if let Some(k) = kind {
            crate::check_name("type", k)?;
        }
        self.client()?;
        Ok(Box::new(PushWatch::new(
            self.inner.clone(),
            kind.map(str::to_owned),
            from,
            crate::Limits::default().watch_window,
        )))
    }

    fn try_lock(&self, name: &str, lease: LeaseId, holder: &str) -> Result<LockState> {
        let req = Request::TryLock {
            name: name.to_owned(),
            lease,
            holder: holder.to_owned(),
        };
        match self.call(&req)? {
            Response::Lock { acquired: true, .. } => Ok(LockState::Acquired),
            Response::Lock {
                acquired: false,
                holder: Some(h),
            } => Ok(LockState::Held(h)),
            r => Err(unexpected(r)),
        }
    }

    fn unlock(&self, name: &str, lease: LeaseId) -> Result<bool> {
        match self.call(&Request::Unlock {
            name: name.to_owned(),
            lease,
        })? {
            Response::Done { done } => Ok(done),
            r => Err(unexpected(r)),
        }
    }

    fn lock_holder(&self, name: &str) -> Result<Option<Holder>> {
        match self.call(&Request::Holder {
            name: name.to_owned(),
        })? {
            Response::Lock { holder, .. } => Ok(holder),
            r => Err(unexpected(r)),
        }
    }

    fn allocate_ids(&self, name: &str, count: u64) -> Result<Range<u64>> {
        match self.call(&Request::Ids {
            name: name.to_owned(),
            count,
        })? {
            Response::Ids { start, end } => Ok(start..end),
            r => Err(unexpected(r)),
        }
    }
}
