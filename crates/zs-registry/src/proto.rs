//! The embedded registry's wire messages (docs/PROTOCOL.md, Part "zs-registry"): JSON text
//! in zs-core console commands. `reg` carries one [`Request`] and answers one
//! [`Response`]; `reg.changes` is the long-poll watch ([`ChangesRequest`] →
//! [`Changes`]). Errors travel as zs-core error answers (codes in [`codes`]).

use serde::{Deserialize, Serialize};

use crate::model::{Event, Holder, Instance, LeaseId, Revision, Snapshot};

/// The command carrying [`Request`]s.
pub const CMD: &str = "reg";
/// The long-poll watch command.
pub const CMD_CHANGES: &str = "reg.changes";

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
