//! # zs-tx: Zeze-style optimistic procedures with a consistent view
//!
//! Game and service logic written as plain code over typed tables, run as
//! transactions:
//!
//! - A **procedure** is a closure over a [`Tx`]. It runs without locks on private
//!   copies; at commit the engine sorts the records it touched, locks them, checks
//!   that nothing it read has changed, installs its writes under one commit
//!   timestamp, and otherwise **redoes** the closure (keeping the locks it took, as
//!   Zeze does, so a hot record is not livelocked), up to a budget
//!   ([`Options::max_redo`]) after which [`Error::RetriesExhausted`] comes back.
//! - **Isolation**: serializable, and by default **opaque** ([`Isolation::Opaque`]):
//!   every read of an attempt sees one committed snapshot (version chains plus a
//!   global commit clock), so an invariant that holds between transactions also
//!   holds inside every body, including bodies that will be redone. Zeze does not
//!   promise this; its semantics are available as [`Isolation::Zeze`] (reads see the
//!   newest version, validated at commit).
//! - **Nested procedures** ([`Tx::nested`]) roll back partially; **actions** bound to
//!   the outcome ([`Tx::on_commit`], [`Tx::on_rollback`]) run once, after the final
//!   commit or rollback, never for a redone attempt.
//! - **Change listeners** ([`Table::listen`]) get committed deltas in commit order.
//! - **Backends** ([`Backend`]): the embedded zs-db store ([`ZdbBackend`]) and
//!   PostgreSQL (`PgBackend`, feature `postgres`), with Zeze's three
//!   [`Checkpoint`] modes (immediate, periodic, related record sets).
//! - Values are stored as **rkyv** archives ([`Value`], checked on read;
//!   [`Table::read_archived`] reads in place); keys through [`Key`], an
//!   order-preserving byte encoding (the commit lock order).
//!
//! The model, the guarantees of each mode and the differences from Zeze:
//! `docs/TRANSACTIONS.md`.
//!
//! ```
//! use std::sync::Arc;
//! use zs_tx::{Backend, Checkpoint, Db, Error, Options, ZdbBackend};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let backend: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir.path(), "bank")?);
//! let db = Db::open(backend, Options { checkpoint: Checkpoint::Immediate, ..Options::default() })?;
//! let accounts = db.table::<u32, u64>("accounts");
//!
//! db.run(|tx| {
//!     accounts.put(tx, &1, &100)?;
//!     accounts.put(tx, &2, &0)
//! })?;
//!
//! // move 30 from account 1 to 2; the reply is sent only once the transfer commits
//! let (sent_tx, sent) = std::sync::mpsc::channel();
//! db.run(|tx| {
//!     let a = accounts.get(tx, &1)?.unwrap_or(0);
//!     let b = accounts.get(tx, &2)?.unwrap_or(0);
//!     if a < 30 {
//!         return Err(Error::Abort("insufficient funds".into()));
//!     }
//!     accounts.put(tx, &1, &(a - 30))?;
//!     accounts.put(tx, &2, &(b + 30))?;
//!     let sent_tx = sent_tx.clone();
//!     tx.on_commit(move || sent_tx.send("transfer done").unwrap());
//!     Ok(())
//! })?;
//! assert_eq!(sent.try_recv().unwrap(), "transfer done");
//! assert_eq!(accounts.peek(&1)?, Some(70));
//! db.close()?;                          // releases zs-db (the table handle may live on)
//!
//! // reopened from zs-db: the commits are there
//! let backend: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir.path(), "bank")?);
//! let db = Db::open(backend, Options::default())?;
//! assert_eq!(db.table::<u32, u64>("accounts").peek(&2)?, Some(30));
//! # Ok::<(), zs_tx::Error>(())
//! ```
#![forbid(unsafe_code)]

mod backend;
mod codec;
mod db;
mod engine;
pub mod history;
#[cfg(feature = "postgres")]
mod pg;
mod tx;

/// The synchronization primitives of the lock manager and commit path (`engine.rs`),
/// swapped for shuttle's in `tests/interleavings.rs`.
mod sync {
    pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
    pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};
}

pub use backend::{
    decode_record, encode_record, Backend, ChangeSink, LoadSink, Shared, SharedCommit, Write,
    ZdbBackend, RECORD_FORMAT,
};
pub use codec::{FixedKey, Key, Value};
pub use db::{Checkpoint, Db, Isolation, Options, Stats, Table};
#[cfg(feature = "postgres")]
pub use pg::PgBackend;
pub use tx::{Tx, MAX_NESTING};

/// Errors of procedures and backends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The attempt read something that changed (or whose snapshot version was
    /// pruned); the engine redoes the procedure. Bodies just propagate it with `?`.
    #[error("conflict: the attempt is redone")]
    Conflict,
    /// The procedure conflicted on every attempt of its budget.
    #[error("transaction redone {attempts} times without committing (budget spent)")]
    RetriesExhausted {
        /// Attempts made (1 + `max_redo`).
        attempts: u32,
    },
    /// The body gave up (rolled back; not redone).
    #[error("aborted: {0}")]
    Abort(String),
    /// A value or key could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// A configured limit was reached ([`Options::max_records`],
    /// [`Options::max_tx_records`]); the procedure was rolled back.
    #[error("limit: {0}")]
    Limit(String),
    /// The engine was closed ([`Db::close`]): nothing more is written.
    #[error("the transaction engine is closed")]
    Closed,
    /// The backend failed (the commit did not happen).
    #[error("storage: {0}")]
    Storage(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
