//! Where committed records are kept: the [`Backend`] trait and the embedded zs-db
//! backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zs_db::{Batch, Database, DbOptions, Durability, Kind, Vfs};

use crate::{Error, Result};

/// One record to write: `value == None` removes it.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// The table's name.
    pub table: &'a str,
    /// The encoded key.
    pub key: &'a [u8],
    /// The rkyv archive of the value, or `None` to remove the record.
    pub value: Option<&'a [u8]>,
}

/// Receives stored rows while loading: `(table, key, value)`.
pub type LoadSink<'a> = dyn FnMut(&str, &[u8], &[u8]) + 'a;

/// A row's name: table and encoded key.
type RowName = (Box<str>, Box<[u8]>);

/// Persistent storage under a [`crate::Db`]. The engine keeps every record in memory
/// and is the only writer: it loads everything at open and then writes changes.
///
/// `write` must be atomic (all records or none after a crash) and durable when it
/// returns. The engine never writes one record from two threads at once, and writes
/// of one record reach `write` in commit order.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Calls `sink(table, key, value)` for every stored record.
    fn load(&self, sink: &mut LoadSink<'_>) -> Result<()>;
    /// Writes `writes` atomically and durably.
    fn write(&self, writes: &[Write<'_>]) -> Result<()>;
    /// Reads one stored record (for engines that cache a bounded number of records,
    /// [`crate::Options::cache_records`]); `None` when it is not stored. Backends
    /// that cannot read single records return an error (the default).
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let _ = (table, key);
        Err(Error::Storage(
            "this backend cannot read single records".into(),
        ))
    }
    /// The shared-store interface when several engines (application servers) share
    /// this store ([`Shared`]); `None` (the default) when one engine owns it.
    fn shared(&self) -> Option<&dyn Shared> {
        None
    }
}

/// Receives committed changes of other engines, one commit at a time, in commit
/// order: `(commit number, writes)`.
pub type ChangeSink<'a> = dyn FnMut(u64, &[Write<'_>]) + 'a;

/// What [`Shared::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedCommit {
    /// Written and durable as global commit number `n`.
    Committed(u64),
    /// `validate` said no after catching up: nothing was written (redo).
    Conflict,
    /// The store's change log no longer holds the commits right after the engine's
    /// position (it was pruned while the engine lagged): the engine must reload
    /// ([`Shared::load_at`]); nothing was written.
    Behind,
}

/// A store shared by several engines, each caching records in memory (Zeze's
/// GlobalCacheManager role). Commits of all engines are numbered by one global
/// counter and recorded in a change log; each engine applies the log in order, so
/// its in-memory state is always a prefix of the global commit order (the basis of
/// its snapshots), and it validates a commit after catching up to the commit just
/// before its own, while the store holds the counter (so no other commit can come
/// in between).
pub trait Shared: Send + Sync {
    /// Calls `sink` for every stored record as of one consistent commit number, and
    /// returns that number.
    fn load_at(&self, sink: &mut LoadSink<'_>) -> Result<u64>;
    /// Feeds `sink` the commits after number `after`, in order; returns the last
    /// number fed (`after` when there were none), or `None` when the log no longer
    /// reaches back to `after + 1` (reload with [`Shared::load_at`]).
    fn changes(&self, after: u64, sink: &mut ChangeSink<'_>) -> Result<Option<u64>>;
    /// Commits `writes` (non-empty) as the next global commit: takes the next
    /// number `n` (holding it, so commits of every engine are serialized), feeds
    /// `sink` the commits between `after` and `n`, then writes only if `validate()`
    /// returns true (the caller's reads are still current), atomically and durably.
    fn commit(
        &self,
        after: u64,
        writes: &[Write<'_>],
        sink: &mut ChangeSink<'_>,
        validate: &mut dyn FnMut() -> bool,
    ) -> Result<SharedCommit>;
    /// Waits up to `timeout` for news of a commit (by any engine); returns the
    /// highest commit number announced, if any.
    fn wait(&self, timeout: std::time::Duration) -> Result<Option<u64>>;
}

/// Format byte of a stored record (see docs/STORAGE.md, "zs-tx records").
pub const RECORD_FORMAT: u8 = 1;

/// The zs-db record of one table row: `[1][name len u8][name][key len u32 LE][key][value]`.
pub fn encode_record(table: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
    let n = u8::try_from(table.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::Abort(format!("table name must be 1..=255 bytes: {table:?}")))?;
    let kl = u32::try_from(key.len()).map_err(|_| Error::Abort("key longer than 4 GiB".into()))?;
    let mut out = Vec::with_capacity(6 + table.len() + key.len() + value.len());
    out.push(RECORD_FORMAT);
    out.push(n);
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(&kl.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    Ok(out)
}

/// Splits a record written by [`encode_record`] into `(table, key, value)`.
pub fn decode_record(b: &[u8]) -> Result<(&str, &[u8], &[u8])> {
    let bad = |why: &str| Error::Storage(format!("bad zs-tx record: {why}"));
    let (&fmt, rest) = b.split_first().ok_or_else(|| bad("empty"))?;
    if fmt != RECORD_FORMAT {
        return Err(bad("unknown format byte"));
    }
    let (&n, rest) = rest.split_first().ok_or_else(|| bad("no name length"))?;
    if n == 0 {
        return Err(bad("empty table name"));
    }
    let (name, rest) = rest
        .split_at_checked(n as usize)
        .ok_or_else(|| bad("short name"))?;
    let name = std::str::from_utf8(name).map_err(|_| bad("name not UTF-8"))?;
    let (kl, rest) = rest
        .split_at_checked(4)
        .ok_or_else(|| bad("no key length"))?;
    let kl = u32::from_le_bytes(kl.try_into().expect("4 bytes")) as usize;
    let (key, value) = rest.split_at_checked(kl).ok_or_else(|| bad("short key"))?;
    Ok((name, key, value))
}

/// Records in one zs-db database (one zs-db record per table row, kind `Raw`).
#[derive(Debug)]
pub struct ZdbBackend {
    db: Database,
    ids: Mutex<HashMap<RowName, u64>>,
}

fn storage(e: zs_db::Error) -> Error {
    Error::Storage(e.to_string())
}

impl ZdbBackend {
    /// Opens database `name` in `vfs` (created when missing). Its durability is
    /// `Immediate` (each write is synced before it returns): the engine's
    /// [`crate::Checkpoint`] decides how often writes happen.
    pub fn open(vfs: Arc<dyn Vfs>, name: &str) -> Result<ZdbBackend> {
        let opts = DbOptions {
            durability: Durability::Immediate,
            ..DbOptions::default()
        };
        let db = match Database::open_with(vfs.clone(), name, opts.clone()) {
            Ok(db) => db,
            Err(zs_db::Error::NoSuchDatabase(_)) => {
                Database::create(vfs, name, opts).map_err(storage)?
            }
            Err(e) => return Err(storage(e)),
        };
        Ok(ZdbBackend {
            db,
            ids: Mutex::new(HashMap::new()),
        })
    }

    /// Opens database `name` in directory `dir` (created when missing).
    pub fn open_dir(dir: impl AsRef<std::path::Path>, name: &str) -> Result<ZdbBackend> {
        let vfs = zs_db::DirVfs::new(dir).map_err(|e| Error::Storage(e.to_string()))?;
        ZdbBackend::open(Arc::new(vfs), name)
    }

    /// The underlying database.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

impl Backend for ZdbBackend {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let id = {
            let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            match ids.get(&(Box::<str>::from(table), Box::<[u8]>::from(key))) {
                Some(&id) => id,
                None => return Ok(None),
            }
        };
        match self.db.get(id).map_err(storage)? {
            Some(r) => {
                let (t, k, v) = decode_record(&r.data)?;
                if t != table || k != key {
                    return Err(Error::Storage("zs-tx record id points elsewhere".into()));
                }
                Ok(Some(v.to_vec()))
            }
            None => Ok(None),
        }
    }

    fn load(&self, sink: &mut LoadSink<'_>) -> Result<()> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.clear();
        for r in self.db.cursor(0, false) {
            let r = r.map_err(storage)?;
            let (t, k, v) = decode_record(&r.data)?;
            ids.insert((t.into(), k.into()), r.id);
            sink(t, k, v);
        }
        Ok(())
    }

    fn write(&self, writes: &[Write<'_>]) -> Result<()> {
        let mut batch = Batch::new();
        let mut inserted: Vec<RowName> = Vec::new();
        let mut removed: Vec<RowName> = Vec::new();
        {
            let ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            for w in writes {
                let name: RowName = (w.table.into(), w.key.into());
                match (ids.get(&name), w.value) {
                    (Some(&id), Some(v)) => {
                        batch.update(id, Kind::Raw, encode_record(w.table, w.key, v)?);
                    }
                    (Some(&id), None) => {
                        batch.delete(id);
                        removed.push(name);
                    }
                    (None, Some(v)) => {
                        batch.insert(Kind::Raw, encode_record(w.table, w.key, v)?);
                        inserted.push(name);
                    }
                    (None, None) => {}
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        // the sync happens outside the id map lock: concurrent writers share it
        let new_ids = self.db.commit(&batch).map_err(storage)?;
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        for n in removed {
            ids.remove(&n);
        }
        for (n, id) in inserted.into_iter().zip(new_ids) {
            ids.insert(n, id);
        }
        Ok(())
    }
}
