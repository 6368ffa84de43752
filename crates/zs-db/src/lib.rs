//! # zs-db: the embedded NoSQL store
//!
//! zserver applications keep their data next to the server: named databases of
//! records (DataFrame, JSON, key/value maps, raw bytes) with **stable ids**, written
//! crash-safely and queried in parallel. This crate is that store.
//!
//! - **Format**: one append-only log file per database, every frame checksummed with a
//!   random per-file salt, writes grouped into commits; opening after a crash ends the
//!   log at the first invalid frame after the last synced end (a prefix of the commits
//!   survives) and skips (and reports) damaged regions before it. Byte layout:
//!   `docs/STORAGE.md`.
//! - **Single writer**: an engine holds an exclusive lock (`<name>.zdb.lock`); a second
//!   open, in this process or another, fails with [`Error::Locked`].
//! - **Durability** per database: [`Durability::Immediate`] (a commit returns after an
//!   fsync; concurrent committers share one) or
//!   [`Durability::Periodic`] (group commit every N ms); [`Batch`]es commit atomically.
//! - **Cache**: a record cache with a memory budget, dropped after an idle period;
//!   optional LZ4 compression of values.
//! - **Compaction** online while reads go on, ids unchanged; copy and replace of databases.
//! - **Query**: a parallel filtered scan ([`Query`]) with limit, reverse order, batches
//!   streamed while it runs, pause/resume/stop and progress; optional secondary indexes.
//! - **Testing seams**: every byte goes through [`Vfs`]; [`MemVfs`] models power loss and
//!   injects I/O faults (used by the crash tests and the `db_faults` fuzz target).
//!
//! ```
//! use std::sync::Arc;
//! use zs_db::{Database, DbOptions, Kind, MemVfs, Query};
//!
//! let vfs = Arc::new(MemVfs::new());
//! let db = Database::create(vfs.clone(), "people", DbOptions::default())?;
//! let bob = db.insert(Kind::Json, br#"{"name":"bob","age":31}"#)?;
//! db.insert(Kind::Json, br#"{"name":"ann","age":25}"#)?;
//! assert_eq!(db.get(bob)?.unwrap().data, br#"{"name":"bob","age":31}"#);
//!
//! let old = Query::filter(|r| r.field("age").and_then(|v| v.as_f64()).is_some_and(|a| a > 30.0));
//! let found = db.query(old)?.collect_all()?;
//! assert_eq!(found.len(), 1);
//! assert_eq!(found[0].id, bob);
//!
//! db.delete(bob)?;
//! db.compact()?;                       // ids of the other records do not change
//! drop(db);
//! let db = Database::open(vfs, "people")?;
//! assert_eq!(db.len(), 1);
//! # Ok::<(), zs_db::Error>(())
//! ```
#![forbid(unsafe_code)]

mod dataframe;
mod db;
mod error;
mod expr;
pub mod format;
mod ids;
mod query;
mod record;
mod store;
pub mod vfs;

pub use dataframe::{decode_dataframe, encode_dataframe};
pub use db::{
    file_name, Batch, CorruptRegion, Cursor, Database, DbOptions, Durability, OpenReport, Stats,
    ValueReader,
};
pub use error::{Error, Result};
pub use expr::{compile_filter, index_hints};
pub use query::{FilterFn, IndexHint, PackFn, Progress, Query, QueryControl, QueryHandle};
pub use record::{decode_kv, encode_kv, FieldValue, Kind, Record, RecordRef, MAX_KV_ENTRIES};
pub use store::{check_name, Env, Store};
pub use vfs::{DirVfs, Fault, FaultKind, FileBackend, LockGuard, MemVfs, SyncHookVfs, Vfs};
pub use zs_wire;
