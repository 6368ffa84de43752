//! The registry as a zs-core service: [`install`] adds the `reg`, `reg.watch`,
//! `reg.ack`, `reg.unwatch` and `reg.changes` commands (docs/PROTOCOL.md, Part
//! "zs-registry") for an [`Embedded`] registry to a command registry; `zs
//! serve --registry` calls it.
//!
//! **Trust.** A lease belongs to the connection that granted it (a StableIO
//! session keeps it across reconnects): only that connection may renew or
//! revoke it, register or deregister instances under it (or replace an
//! instance registered under it), or take and release locks with it; other
//! connections get [`Error::Forbidden`] (code 403), and the refusal is logged.
//! When the owning connection is gone for good (closed, or the registry
//! restarted), the next connection that uses the lease **and authenticated as
//! the same PSK identity** claims it (the identity is stored with the lease);
//! so a client that reconnects keeps its leases. With server-key security
//! clients are anonymous and any anonymous connection may claim an orphaned
//! lease: give clients PSK identities where clients must not touch each
//! other's leases. Connections whose PSK identity is listed in
//! [`ServiceConfig::admins`] may act on every lease (operators' tools). Reads
//! (list, query, pick, watch, lock holders) and id allocation are open to
//! every connection the server accepted: restrict who connects with PSK
//! identities or network rules.
//!
//! Per connection: requests above [`ServiceConfig::max_request_bytes`] are
//! refused, at most [`Limits::max_leases_per_conn`](crate::Limits) live leases are
//! granted through it and [`Limits::max_waiters_per_conn`](crate::Limits) watches
//! wait on it; a connection that sends [`ServiceConfig::max_bad_requests`]
//! undecodable requests is closed with a logged reason.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zs_core::{HandlerError, Peer, Registry, Responder};

use crate::embedded::PushSink;
use crate::proto::{
    codes, decode_request, Ack, Changes, ChangesRequest, Push, Request, Response, Unwatch,
    WatchAnswer, WatchRequest, CMD, CMD_ACK, CMD_CHANGES, CMD_UNWATCH, CMD_WATCH,
    MAX_KEEPALIVE_BATCH, PUSH,
};
use crate::{Embedded, Error, LeaseId, LockState, ServiceRegistry};

/// Per-connection bounds of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Largest request text.
    pub max_request_bytes: usize,
    /// Undecodable requests before the connection is closed.
    pub max_bad_requests: u32,
    /// PSK identities allowed to act on every lease (see the module docs).
    pub admins: Vec<Vec<u8>>,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            max_request_bytes: 64 * 1024,
            max_bad_requests: 16,
            admins: Vec::new(),
        }
    }
}

#[derive(Default)]
struct ConnState {
    leases: HashSet<LeaseId>,
    bad: u32,
}

fn is_admin(peer: &Peer, cfg: &ServiceConfig) -> bool {
    !cfg.admins.is_empty()
        && peer
            .psk_identity()
            .is_some_and(|id| cfg.admins.contains(&id))
}

/// Which connection holds each lease granted (or claimed) through the service.
#[derive(Default)]
pub(crate) struct Owners(Mutex<HashMap<LeaseId, Peer>>);

impl Owners {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, Peer>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, peer: &Peer, lease: LeaseId) {
        self.map().insert(lease, peer.clone());
        peer.with_state(|s: &mut ConnState| s.leases.insert(lease));
    }

    /// Forgets leases that ended (bounded by the live ones).
    fn purge(&self, reg: &Embedded) {
        let mut m = self.map();
        if m.len() > 2 * reg.counts().0 + 1024 {
            m.retain(|l, _| reg.lease_alive(*l));
        }
    }
}

/// Whether `peer` may act on `lease` (the module's trust rules); claims an
/// orphaned lease for a connection of the same identity.
fn check_lease(
    reg: &Embedded,
    owners: &Owners,
    peer: &Peer,
    cfg: &ServiceConfig,
    lease: LeaseId,
) -> Result<(), Error> {
    let holder = owners.map().get(&lease).map(|p| (p.id(), p.is_open()));
    match holder {
        Some((id, _)) if id == peer.id() => return Ok(()),
        _ if is_admin(peer, cfg) => return Ok(()),
        Some((_, true)) => {
            tracing::warn!(
                peer = peer.id(),
                lease,
                "registry: refused a request on a lease of another connection"
            );
            return Err(Error::Forbidden(format!(
                "lease {lease:x} belongs to another connection"
            )));
        }
        _ => {}
    }
    // no live owner: the same identity may claim it
    let Some(identity) = reg.lease_owner(lease) else {
        return Err(Error::LeaseNotFound(lease));
    };
    if identity != peer.psk_identity() {
        tracing::warn!(
            peer = peer.id(),
            lease,
            "registry: refused a claim of a lease granted to another identity"
        );
        return Err(Error::Forbidden(format!(
            "lease {lease:x} was granted to another identity"
        )));
    }
    tracing::info!(
        peer = peer.id(),
        lease,
        "registry: lease claimed (its connection is gone)"
    );
    owners.take(peer, lease);
    Ok(())
}

/// A zs-core connection as a push sink.
struct PeerSink(Peer);

impl PushSink for PeerSink {
    fn push(&self, push: Push) -> bool {
        match serde_json::to_string(&push) {
            Ok(t) => self.0.send_direct_console(PUSH, &t).is_ok(),
            Err(_) => false,
        }
    }
    fn push_events(
        &self,
        _wid: u64,
        _revision: crate::Revision,
        _events: &[crate::Event],
        json: &str,
    ) -> bool {
        self.0.send_direct_console(PUSH, json).is_ok()
    }
    fn is_open(&self) -> bool {
        self.0.is_open()
    }
}

/// The error answer for a registry error.
pub fn to_handler_error(e: &Error) -> HandlerError {
    let code = match e {
        Error::LeaseNotFound(_) => codes::LEASE_NOT_FOUND,
        Error::Invalid(_) => codes::INVALID,
        Error::Quota(_) => codes::QUOTA,
        Error::Locked { .. } => codes::LOCKED,
        Error::Forbidden(_) => codes::FORBIDDEN,
        Error::Unavailable(_) | Error::Store(_) => codes::STORE,
    };
    let message = match e {
        Error::LeaseNotFound(l) => l.to_string(),
        Error::Invalid(m)
        | Error::Quota(m)
        | Error::Unavailable(m)
        | Error::Store(m)
        | Error::Forbidden(m) => m.clone(),
        Error::Locked { holder, .. } => holder.clone(),
    };
    HandlerError::new(code, message)
}

fn bad(peer: &Peer, cfg: &ServiceConfig, why: String) -> HandlerError {
    let n = peer.with_state(|s: &mut ConnState| {
        s.bad += 1;
        s.bad
    });
    if n >= cfg.max_bad_requests {
        tracing::warn!(
            peer = peer.id(),
            "registry: closing a connection after {n} bad requests ({why})"
        );
        peer.close(&format!("registry: {n} bad requests"));
    }
    HandlerError::new(codes::INVALID, why)
}

/// Runs one request against the registry (the `reg` command's body), with
/// the trust rules of the module docs.
fn handle(
    reg: &Embedded,
    owners: &Owners,
    peer: &Peer,
    cfg: &ServiceConfig,
    req: Request,
) -> Result<Response, Error> {
    Ok(match req {
        Request::Grant { ttl_ms } => {
            let lim = reg.limits().max_leases_per_conn;
            let live = peer.with_state(|s: &mut ConnState| {
                if s.leases.len() >= lim {
                    s.leases.retain(|l| reg.lease_alive(*l));
                }
                s.leases.len()
            });
            if live >= lim {
                return Err(Error::Quota(format!(
                    "{live} live leases on this connection"
                )));
            }
            let lease = reg.grant_for(
                Duration::from_millis(ttl_ms),
                peer.psk_identity().as_deref(),
            )?;
            owners.purge(reg);
            owners.take(peer, lease);
            let ttl = reg.keepalive(lease)?;
            Response::Lease {
                lease,
                ttl_ms: ttl.as_millis() as u64,
            }
        }
        Request::Keepalive { lease } => {
            check_lease(reg, owners, peer, cfg, lease)?;
            let ttl = reg.keepalive(lease)?;
            Response::Lease {
                lease,
                ttl_ms: ttl.as_millis() as u64,
            }
        }
        Request::KeepaliveMany { leases } => {
            if leases.len() > MAX_KEEPALIVE_BATCH {
                return Err(Error::Invalid(format!(
                    "{} leases in one keepalive (at most {MAX_KEEPALIVE_BATCH})",
                    leases.len()
                )));
            }
            let mine: Vec<bool> = leases
                .iter()
                .map(|l| check_lease(reg, owners, peer, cfg, *l).is_ok())
                .collect();
            let foreign = mine.iter().filter(|m| !**m).count();
            if foreign > 0 {
                tracing::warn!(
                    peer = peer.id(),
                    foreign,
                    "registry: keepalive of leases of another connection refused"
                );
            }
            let ok: Vec<LeaseId> = leases
                .iter()
                .zip(&mine)
                .filter(|(_, m)| **m)
                .map(|(l, _)| *l)
                .collect();
            let mut ttls = reg.keepalive_many(&ok)?.into_iter();
            Response::Renewed {
                ttl_ms: mine
                    .iter()
                    .map(|m| match m {
                        true => ttls.next().flatten().map_or(0, |t| t.as_millis() as u64),
                        false => 0,
                    })
                    .collect(),
            }
        }
        Request::Revoke { lease } => {
            check_lease(reg, owners, peer, cfg, lease)?;
            reg.revoke(lease)?;
            owners.map().remove(&lease);
            peer.with_state(|s: &mut ConnState| s.leases.remove(&lease));
            Response::Revision {
                revision: reg.revision(),
            }
        }
        Request::Register { lease, instance } => {
            check_lease(reg, owners, peer, cfg, lease)?;
            if let Some(old) = reg.instance_lease(&instance.kind, &instance.id) {
                if old != lease {
                    check_lease(reg, owners, peer, cfg, old)?;
                }
            }
            Response::Revision {
                revision: reg.register(lease, &instance)?,
            }
        }
        Request::Deregister { kind, id } => {
            if let Some(old) = reg.instance_lease(&kind, &id) {
                check_lease(reg, owners, peer, cfg, old)?;
            }
            Response::Done {
                done: reg.deregister(&kind, &id)?,
            }
        }
        Request::List { kind } => Response::Snapshot(reg.list(kind.as_deref())?),
        Request::Query { pattern } => Response::Instances {
            instances: reg.query(&pattern)?,
        },
        Request::Pick { kind } => Response::Pick {
            instance: reg.pick(&kind)?,
        },
        Request::TryLock {
            name,
            lease,
            holder,
        } => match check_lease(reg, owners, peer, cfg, lease)
            .and_then(|_| reg.try_lock(&name, lease, &holder))?
        {
            LockState::Acquired => Response::Lock {
                acquired: true,
                holder: Some(crate::Holder { lease, holder }),
            },
            LockState::Held(h) => Response::Lock {
                acquired: false,
                holder: Some(h),
            },
        },
        Request::Unlock { name, lease } => {
            check_lease(reg, owners, peer, cfg, lease)?;
            Response::Done {
                done: reg.unlock(&name, lease)?,
            }
        }
        Request::Holder { name } => Response::Lock {
            acquired: false,
            holder: reg.lock_holder(&name)?,
        },
        Request::Ids { name, count } => {
            let r = reg.allocate_ids(&name, count)?;
            Response::Ids {
                start: r.start,
                end: r.end,
            }
        }
    })
}

/// Answers a `reg` request.
fn answer(responder: Responder, result: Result<Response, Error>) {
    let reply = result.map_err(|e| to_handler_error(&e)).and_then(|resp| {
        serde_json::to_string(&resp).map_err(|e| HandlerError::new(codes::STORE, e.to_string()))
    });
    let _ = match reply {
        Ok(t) => responder.reply_text(t),
        Err(e) => responder.reply_error(e.code, e.message),
    };
}

/// Work to run once everything committed before it is durable (or the fsync
/// failed).
type AfterSync = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// The service's sync thread: batches the answers of state-changing requests
/// behind one fsync ([`Embedded::sync_and_announce`]). It ends when the
/// command registry holding it is dropped.
struct Syncer {
    /// `None` when the thread could not be started: every job then syncs inline.
    tx: Option<std::sync::mpsc::Sender<AfterSync>>,
    reg: Embedded,
}

impl Syncer {
    fn start(reg: Embedded) -> Syncer {
        let (tx, rx) = std::sync::mpsc::channel::<AfterSync>();
        let r = reg.clone();
        let spawned = std::thread::Builder::new()
            .name("zs-registry-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // everything queued now was committed before this fsync starts
                    let batch: Vec<AfterSync> =
                        std::iter::once(first).chain(rx.try_iter()).collect();
                    let synced = r.sync_and_announce();
                    if let Err(e) = &synced {
                        tracing::error!(
                            "registry: fsync failed, {} changes unacknowledged: {e}",
                            batch.len()
                        );
                    }
                    for job in batch {
                        job(synced.clone());
                    }
                }
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!("registry: no sync thread ({e}); syncing per request");
                None
            }
        };
        Syncer { tx, reg }
    }

    /// Runs `job` after the next fsync.
    fn after_sync(&self, job: AfterSync) {
        let job = match &self.tx {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(job)) => job,
            },
            None => job,
        };
        job(self.reg.sync_and_announce());
    }
}

/// Adds the registry commands to `commands`.
pub fn install(commands: &mut Registry, reg: Embedded, cfg: ServiceConfig) {
    let (r1, c1) = (reg.clone(), cfg.clone());
    let owners = Arc::new(Owners::default());
    let syncer = Syncer::start(reg.clone());
    // Requests run on the connection's loop thread; a change is committed there
    // (buffered, no fsync) and its answer handed to the sync thread, which
    // fsyncs once for every change that arrived meanwhile and then answers them
    // all: group commit across connections, and no loop thread ever waits for
    // the disk. Reads answer at once.
    commands.console_delayed(CMD, move |peer, text, responder| {
        let req = match decode_request(&text, c1.max_request_bytes) {
            Ok(r) => r,
            Err(e) => {
                let e = bad(peer, &c1, e);
                let _ = responder.reply_error(e.code, e.message);
                return;
            }
        };
        let changes = r1.defers() && req.changes_state();
        let result = if changes {
            r1.deferring(|| handle(&r1, &owners, peer, &c1, req))
        } else {
            handle(&r1, &owners, peer, &c1, req)
        };
        if changes {
            syncer.after_sync(Box::new(move |synced| {
                answer(responder, synced.and(result));
            }));
        } else {
            answer(responder, result);
        }
    });
    let (r2, c2) = (reg.clone(), cfg.clone());
    commands.console(CMD_WATCH, move |peer, text| {
        let req: Result<WatchRequest, String> = if text.len() <= c2.max_request_bytes {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            Err("request too large".into())
        };
        let req = req.map_err(|e| bad(peer, &c2, format!("bad watch request: {e}")))?;
        let sink = Arc::new(PeerSink(peer.clone()));
        let window = r2
            .subscribe(
                peer.id(),
                req.wid,
                req.kind.as_deref(),
                req.from,
                req.window,
                sink,
            )
            .map_err(|e| to_handler_error(&e))?;
        serde_json::to_string(&WatchAnswer::Watching {
            wid: req.wid,
            window,
        })
        .map_err(|e| HandlerError::new(codes::STORE, e.to_string()))
    });
    let (r3, c3) = (reg.clone(), cfg.clone());
    commands.direct_console(CMD_ACK, move |peer, text| {
        match (text.len() <= c3.max_request_bytes).then(|| serde_json::from_str::<Ack>(text)) {
            Some(Ok(a)) => r3.ack(peer.id(), a.wid, a.n),
            _ => {
                bad(peer, &c3, "bad watch ack".into());
            }
        }
    });
    let (r4, c4) = (reg.clone(), cfg.clone());
    commands.direct_console(CMD_UNWATCH, move |peer, text| {
        match (text.len() <= c4.max_request_bytes).then(|| serde_json::from_str::<Unwatch>(text)) {
            Some(Ok(u)) => {
                r4.unsubscribe(peer.id(), u.wid);
            }
            _ => {
                bad(peer, &c4, "bad unwatch".into());
            }
        }
    });
    commands.console_delayed(CMD_CHANGES, move |peer, text, responder| {
        let req: ChangesRequest = match (text.len() <= cfg.max_request_bytes)
            .then(|| serde_json::from_str(text.as_str()))
        {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                let e = bad(peer, &cfg, format!("bad request: {e}"));
                let _ = responder.reply_error(e.code, e.message);
                return;
            }
            None => {
                let e = bad(peer, &cfg, "request too large".into());
                let _ = responder.reply_error(e.code, e.message);
                return;
            }
        };
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(responder)));
        let s2 = slot.clone();
        let res = reg.changes(
            req.kind.as_deref(),
            req.after,
            Duration::from_millis(req.wait_ms),
            peer.id(),
            Box::new(move |c: Changes| {
                if let Some(r) = s2.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = r.reply_text(serde_json::to_string(&c).unwrap_or_default());
                }
            }),
        );
        if let Err(e) = res {
            if let Some(r) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let h = to_handler_error(&e);
                let _ = r.reply_error(h.code, h.message);
            }
        }
    });
}
