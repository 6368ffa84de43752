//! The registry as a zs-core service: [`install`] adds the `reg` and
//! `reg.changes` commands (docs/PROTOCOL.md, Part "zs-registry") for an [`Embedded`]
//! registry to a command registry; `zs serve --registry` calls it.
//!
//! Per connection: requests above [`ServiceConfig::max_request_bytes`] are
//! refused, at most [`Limits::max_leases_per_conn`](crate::Limits) live leases are
//! granted through it and [`Limits::max_waiters_per_conn`](crate::Limits) watches
//! wait on it; a connection that sends [`ServiceConfig::max_bad_requests`]
//! undecodable requests is closed with a logged reason.

use std::time::Duration;

use zs_core::{HandlerError, Peer, Registry};

use crate::proto::{
    codes, decode_request, Changes, ChangesRequest, Request, Response, CMD, CMD_CHANGES,
};
use crate::{Embedded, Error, LeaseId, LockState, ServiceRegistry};

/// Per-connection bounds of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Largest request text.
    pub max_request_bytes: usize,
    /// Undecodable requests before the connection is closed.
    pub max_bad_requests: u32,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            max_request_bytes: 64 * 1024,
            max_bad_requests: 16,
        }
    }
}

#[derive(Default)]
struct ConnState {
    leases: Vec<LeaseId>,
    bad: u32,
}

/// The error answer for a registry error.
pub fn to_handler_error(e: &Error) -> HandlerError {
    let code = match e {
        Error::LeaseNotFound(_) => codes::LEASE_NOT_FOUND,
        Error::Invalid(_) => codes::INVALID,
        Error::Quota(_) => codes::QUOTA,
        Error::Locked { .. } => codes::LOCKED,
        Error::Unavailable(_) | Error::Store(_) => codes::STORE,
    };
    let message = match e {
        Error::LeaseNotFound(l) => l.to_string(),
        Error::Invalid(m) | Error::Quota(m) | Error::Unavailable(m) | Error::Store(m) => m.clone(),
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

/// Runs one request against the registry (the `reg` command's body).
pub fn handle(reg: &Embedded, peer: &Peer, req: Request) -> Result<Response, Error> {
    Ok(match req {
        Request::Grant { ttl_ms } => {
            let lim = reg.limits().max_leases_per_conn;
            let live = peer.with_state(|s: &mut ConnState| {
                s.leases.retain(|l| reg.lease_alive(*l));
                s.leases.len()
            });
            if live >= lim {
                return Err(Error::Quota(format!(
                    "{live} live leases on this connection"
                )));
            }
            let lease = reg.grant(Duration::from_millis(ttl_ms))?;
            peer.with_state(|s: &mut ConnState| s.leases.push(lease));
            let ttl = reg.keepalive(lease)?;
            Response::Lease {
                lease,
                ttl_ms: ttl.as_millis() as u64,
            }
        }
        Request::Keepalive { lease } => {
            let ttl = reg.keepalive(lease)?;
            Response::Lease {
                lease,
                ttl_ms: ttl.as_millis() as u64,
            }
        }
        Request::Revoke { lease } => {
            reg.revoke(lease)?;
            Response::Revision {
                revision: reg.revision(),
            }
        }
        Request::Register { lease, instance } => Response::Revision {
            revision: reg.register(lease, &instance)?,
        },
        Request::Deregister { kind, id } => Response::Done {
            done: reg.deregister(&kind, &id)?,
        },
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
        } => match reg.try_lock(&name, lease, &holder)? {
            LockState::Acquired => Response::Lock {
                acquired: true,
                holder: Some(crate::Holder { lease, holder }),
            },
            LockState::Held(h) => Response::Lock {
                acquired: false,
                holder: Some(h),
            },
        },
        Request::Unlock { name, lease } => Response::Done {
            done: reg.unlock(&name, lease)?,
        },
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

/// Adds the registry commands to `commands`.
pub fn install(commands: &mut Registry, reg: Embedded, cfg: ServiceConfig) {
    let (r1, c1) = (reg.clone(), cfg.clone());
    // hpc: a commit waits for an fsync, which must not stall the event loop
    commands.console_hpc(CMD, move |peer, text| {
        let req = decode_request(text, c1.max_request_bytes).map_err(|e| bad(peer, &c1, e))?;
        let resp = handle(&r1, peer, req).map_err(|e| to_handler_error(&e))?;
        serde_json::to_string(&resp).map_err(|e| HandlerError::new(codes::STORE, e.to_string()))
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
