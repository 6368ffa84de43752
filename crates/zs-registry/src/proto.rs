//! The embedded registry's wire messages (docs/PROTOCOL.md, Part "zs-registry"): JSON text
//! in zs-core console commands. `reg` carries one [`Request`] and answers one
//! [`Response`]; `reg.watch` opens a push watch ([`WatchRequest`]): the
//! server then sends [`Push`] messages (direct console `reg.push`) as changes
//! commit, at most `window` of them unacknowledged; the client acknowledges
//! the ones it consumed with [`Ack`] (direct console `reg.ack`) and ends the
//! watch with [`Unwatch`] (`reg.unwatch`). `reg.changes` is the older
//! long-poll watch ([`ChangesRequest`] → [`Changes`]). Errors travel as
//! zs-core error answers (codes in [`codes`]).

use serde::{Deserialize, Serialize};

use crate::model::{Event, Holder, Instance, LeaseId, Revision, Snapshot};

/// The command carrying [`Request`]s.
pub const CMD: &str = "reg";
/// The long-poll watch command.
pub const CMD_CHANGES: &str = "reg.changes";
/// Opens a push watch (console: [`WatchRequest`] → `{"ok":"watching","wid":..}`).
pub const CMD_WATCH: &str = "reg.watch";
/// Client → server, direct console: [`Ack`].
pub const CMD_ACK: &str = "reg.ack";
/// Client → server, direct console: [`Unwatch`].
pub const CMD_UNWATCH: &str = "reg.unwatch";
/// Server → client, direct console: [`Push`].
pub const PUSH: &str = "reg.push";

/// Error codes in answers (zs-core's numbering, plus registry ones).
pub mod codes {
    /// Malformed or invalid request.
    pub const INVALID: u32 = 400;
    /// The lease is gone.
    pub const LEASE_NOT_FOUND: u32 = 410;
    /// A quota was reached.
    pub const QUOTA: u32 = 429;
    /// The lock is held (only from waits).
    pub const LOCKED: u32 = 423;
    /// The lease (or the instance, lock under it) belongs to another connection.
    pub const FORBIDDEN: u32 = 403;
    /// The store failed.
    pub const STORE: u32 = 500;
}

/// One registry request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// New lease.
    Grant {
        /// TTL in milliseconds.
        ttl_ms: u64,
    },
    /// Renew.
    Keepalive {
        /// The lease.
        lease: LeaseId,
    },
    /// Renew many leases in one message (etcd's keepalive stream does the same).
    KeepaliveMany {
        /// The leases (at most [`MAX_KEEPALIVE_BATCH`]).
        leases: Vec<LeaseId>,
    },
    /// End a lease.
    Revoke {
        /// The lease.
        lease: LeaseId,
    },
    /// Register or update.
    Register {
        /// The lease.
        lease: LeaseId,
        /// The instance.
        instance: Instance,
    },
    /// Remove.
    Deregister {
        /// Type.
        kind: String,
        /// Id.
        id: String,
    },
    /// List a type or all.
    List {
        /// Type filter.
        #[serde(default)]
        kind: Option<String>,
    },
    /// HostQuery.
    Query {
        /// Glob over `kind/id`.
        pattern: String,
    },
    /// Least-loaded of a type.
    Pick {
        /// Type.
        kind: String,
    },
    /// Try a lock.
    TryLock {
        /// Lock name.
        name: String,
        /// Lease.
        lease: LeaseId,
        /// Holder text.
        holder: String,
    },
    /// Release a lock.
    Unlock {
        /// Lock name.
        name: String,
        /// Lease.
        lease: LeaseId,
    },
    /// Who holds a lock.
    Holder {
        /// Lock name.
        name: String,
    },
    /// Allocate ids.
    Ids {
        /// Counter name.
        name: String,
        /// How many.
        count: u64,
    },
}

impl Request {
    /// Whether the request may change stored state (so its answer waits for
    /// the fsync that makes the change durable); keepalives and reads do not.
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Grant { .. }
            | Request::Revoke { .. }
            | Request::Register { .. }
            | Request::Deregister { .. }
            | Request::TryLock { .. }
            | Request::Unlock { .. }
            | Request::Ids { .. } => true,
            Request::Keepalive { .. }
            | Request::KeepaliveMany { .. }
            | Request::List { .. }
            | Request::Query { .. }
            | Request::Pick { .. }
            | Request::Holder { .. } => false,
        }
    }
}

/// One answer (the variant matches the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ok", rename_all = "snake_case")]
pub enum Response {
    /// Grant / keepalive.
    Lease {
        /// The lease.
        lease: LeaseId,
        /// Its TTL in ms.
        ttl_ms: u64,
    },
    /// Keepalive many: each lease's TTL in ms, in request order; 0 for a
    /// lease that is gone (or not this connection's).
    Renewed {
        /// The TTLs.
        ttl_ms: Vec<u64>,
    },
    /// Register / revoke.
    Revision {
        /// The store revision after the change.
        revision: Revision,
    },
    /// Deregister / unlock.
    Done {
        /// Whether something was removed.
        done: bool,
    },
    /// List.
    Snapshot(Snapshot),
    /// Query.
    Instances {
        /// The matches.
        instances: Vec<Instance>,
    },
    /// Pick.
    Pick {
        /// The instance, if any is free.
        instance: Option<Instance>,
    },
    /// Try lock / holder.
    Lock {
        /// Whether the caller holds it (try lock).
        acquired: bool,
        /// Who holds it.
        holder: Option<Holder>,
    },
    /// Ids.
    Ids {
        /// First id.
        start: u64,
        /// One past the last.
        end: u64,
    },
}

/// The long-poll watch request (`reg.changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesRequest {
    /// Type filter.
    #[serde(default)]
    pub kind: Option<String>,
    /// Changes after this revision.
    pub after: Revision,
    /// Longest wait in ms when nothing changed yet.
    pub wait_ms: u64,
}

/// The long-poll answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ok", rename_all = "snake_case")]
pub enum Changes {
    /// The changes after `after` (maybe none), current up to `revision`.
    Events {
        /// Resume point.
        revision: Revision,
        /// The changes, in order.
        events: Vec<Event>,
    },
    /// `after` is no longer covered by the history: the whole state.
    Resync(Snapshot),
}

/// Most leases in one [`Request::KeepaliveMany`].
pub const MAX_KEEPALIVE_BATCH: usize = 2048;

/// Opens a push watch (`reg.watch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRequest {
    /// The client's id for this watch (unique on its connection).
    pub wid: u64,
    /// Type filter.
    #[serde(default)]
    pub kind: Option<String>,
    /// Resume after this revision; `None`: a snapshot first.
    #[serde(default)]
    pub from: Option<Revision>,
    /// Pushes the client accepts unacknowledged (raised to 1, capped by the
    /// server's limit).
    pub window: u32,
}

/// The answer to [`WatchRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ok", rename_all = "snake_case")]
pub enum WatchAnswer {
    /// The watch is open; its pushes follow (the first may come before this).
    Watching {
        /// The watch.
        wid: u64,
        /// The window the server applies.
        window: u32,
    },
}

/// The client consumed `n` more pushes of watch `wid` (`reg.ack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The watch.
    pub wid: u64,
    /// Pushes consumed since the last ack.
    pub n: u32,
}

/// Ends watch `wid` (`reg.unwatch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unwatch {
    /// The watch.
    pub wid: u64,
}

/// A server push to a watcher (`reg.push`), in revision order per watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "push", rename_all = "snake_case")]
pub enum Push {
    /// Changes after the last push, up to `revision` (committed and durable).
    /// After the watcher fell `window` pushes behind, the next one carries
    /// every change it missed at once (coalesced).
    Events {
        /// The watch.
        wid: u64,
        /// Resume point.
        revision: Revision,
        /// The changes, in order.
        events: Vec<Event>,
    },
    /// The whole state: first push of a watch opened without a revision, or
    /// `resync` when the changes it needs are gone (compaction, restart).
    Snapshot {
        /// The watch.
        wid: u64,
        /// Whether this replaces lost changes.
        resync: bool,
        /// The state.
        snapshot: Snapshot,
    },
    /// The server ended the watch (it stayed behind too long, or the
    /// registry closed); the client may open it again from its revision.
    Dropped {
        /// The watch.
        wid: u64,
        /// Why.
        reason: String,
    },
}

impl Push {
    /// The watch it belongs to.
    pub fn wid(&self) -> u64 {
        match self {
            Push::Events { wid, .. } | Push::Snapshot { wid, .. } | Push::Dropped { wid, .. } => {
                *wid
            }
        }
    }
}

/// Parses a request, with a size cap in bytes.
pub fn decode_request(text: &str, max_bytes: usize) -> Result<Request, String> {
    if text.len() > max_bytes {
        return Err(format!(
            "request of {} bytes (at most {max_bytes})",
            text.len()
        ));
    }
    serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))
}
