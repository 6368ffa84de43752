//! Named databases in one directory, and the object-safe [`Store`] seam the facade uses.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::db::{file_name, lock_db, mlock, tmp_name, Database, DbOptions};
use crate::error::{Error, Result};
use crate::query::{Query, QueryHandle};
use crate::record::{Kind, Record};
use crate::vfs::{DirVfs, Vfs};

/// Checks a database name: 1..=64 characters of `A-Z a-z 0-9 _ - .`, not starting with `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// What a storage backend offers the rest of zserver (object safe: use `Arc<dyn Store>`).
pub trait Store: Send + Sync {
    /// Names of all databases.
    fn list(&self) -> Result<Vec<String>>;
    /// Creates a database.
    fn create(&self, db: &str, opts: DbOptions) -> Result<()>;
    /// Deletes a database and its file.
    fn drop_db(&self, db: &str) -> Result<()>;
    /// Inserts a record, returning its id.
    fn insert(&self, db: &str, kind: Kind, data: &[u8]) -> Result<u64>;
    /// Replaces a record.
    fn update(&self, db: &str, id: u64, kind: Kind, data: &[u8]) -> Result<()>;
    /// Deletes a record; `false` if absent.
    fn delete(&self, db: &str, id: u64) -> Result<bool>;
    /// Reads a record.
    fn get(&self, db: &str, id: u64) -> Result<Option<Record>>;
    /// Starts a scan.
    fn query(&self, db: &str, q: Query) -> Result<QueryHandle>;
    /// Compacts a database; returns (bytes before, bytes after).
    fn compact(&self, db: &str) -> Result<(u64, u64)>;
}

/// A directory of named databases (this crate's [`Store`]). Handles are cached, so
/// every `open` of one name shares one engine; a database open elsewhere (another
/// process, or a handle this `Env` no longer caches) is refused with
/// [`Error::Locked`]. Removing or replacing a database closes its engine: handles
/// still held elsewhere then fail with [`Error::Closed`] instead of writing to a
/// file that is gone.
#[derive(Debug)]
pub struct Env {
    vfs: Arc<dyn Vfs>,
    open: Mutex<HashMap<String, Database>>,
}

impl Env {
    /// Databases in directory `path` (created if missing).
    pub fn open_dir(path: impl AsRef<Path>) -> Result<Env> {
        let vfs = DirVfs::new(path).map_err(Error::io("open directory"))?;
        Ok(Env::with_vfs(Arc::new(vfs)))
    }

    /// Databases in any file layer (e.g. [`crate::MemVfs`]).
    pub fn with_vfs(vfs: Arc<dyn Vfs>) -> Env {
        Env {
            vfs,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The file layer.
    pub fn vfs(&self) -> &Arc<dyn Vfs> {
        &self.vfs
    }

    /// Creates database `name`.
    pub fn create_db(&self, name: &str, opts: DbOptions) -> Result<Database> {
        let mut open = mlock(&self.open);
        let db = Database::create(self.vfs.clone(), name, opts)?;
        open.insert(name.to_string(), db.clone());
        Ok(db)
    }

    /// Opens database `name` (recovering after a crash), or returns the open handle.
    pub fn db(&self, name: &str) -> Result<Database> {
        let mut open = mlock(&self.open);
        if let Some(d) = open.get(name) {
            if !d.is_closed() {
                return Ok(d.clone());
            }
        }
        let db = Database::open(self.vfs.clone(), name)?;
        open.insert(name.to_string(), db.clone());
        Ok(db)
    }

    /// Opens database `name` with explicit options. A cached handle is closed first
    /// (its buffered commits are written and synced; its clones then fail with
    /// [`Error::Closed`]), so there is never a second engine on the file.
    pub fn db_with(&self, name: &str, opts: DbOptions) -> Result<Database> {
        let mut open = mlock(&self.open);
        if let Some(old) = open.remove(name) {
            old.close()?;
        }
        let db = Database::open_with(self.vfs.clone(), name, opts)?;
        open.insert(name.to_string(), db.clone());
        Ok(db)
    }

    /// Forgets the cached handle of `name` (the engine closes when the last handle drops).
    pub fn close(&self, name: &str) {
        mlock(&self.open).remove(name);
    }

    /// Names of all databases.
    pub fn list_dbs(&self) -> Result<Vec<String>> {
        let files = self.vfs.list().map_err(Error::io("list"))?;
        Ok(files
            .iter()
            .filter_map(|f| f.strip_suffix(".zdb"))
            .filter(|n| check_name(n).is_ok())
            .map(str::to_string)
            .collect())
    }

    /// Deletes database `name`. Its cached handle is closed (clones held elsewhere
    /// fail with [`Error::Closed`]); if another engine has it open the result is
    /// [`Error::Locked`] and nothing is removed.
    pub fn remove_db(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let mut open = mlock(&self.open);
        if let Some(old) = open.remove(name) {
            // the file goes away: what the handle buffered needs no flush
            let _ = old.close();
        }
        let _lock = lock_db(&*self.vfs, name)?;
        let _ = self.vfs.remove(&tmp_name(name)); // a leftover, if any (we hold the lock)
        match self.vfs.remove(&file_name(name)) {
            Ok(()) => self.vfs.sync_dir().map_err(Error::io("remove")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NoSuchDatabase(name.to_string()))
            }
            Err(e) => Err(Error::Io {
                op: "remove",
                source: e,
            }),
        }
    }

    /// Writes a compacted copy of `src` as new database `dst`.
    pub fn copy_db(&self, src: &str, dst: &str) -> Result<()> {
        let db = self.db(src)?;
        db.copy_to(&self.vfs, dst)
    }

    /// Replaces database `target` by `source` atomically (`source` disappears). The
    /// cached handles of both are closed first (`source`'s buffered commits are synced),
    /// so their clones held elsewhere fail with [`Error::Closed`] instead of writing
    /// to a file that is gone; if another engine has either open the result is
    /// [`Error::Locked`] and nothing is renamed.
    pub fn replace_db(&self, target: &str, source: &str) -> Result<()> {
        check_name(target)?;
        check_name(source)?;
        if target == source {
            return Err(Error::InvalidName(format!(
                "cannot replace {target:?} by itself"
            )));
        }
        let mut open = mlock(&self.open);
        if let Some(d) = open.remove(source) {
            d.close()?;
        }
        if let Some(d) = open.remove(target) {
            d.close()?;
        }
        let _source_lock = lock_db(&*self.vfs, source)?;
        let _target_lock = lock_db(&*self.vfs, target)?;
        if !self
            .vfs
            .exists(&file_name(source))
            .map_err(Error::io("replace"))?
        {
            return Err(Error::NoSuchDatabase(source.to_string()));
        }
        self.vfs
            .rename(&file_name(source), &file_name(target))
            .map_err(Error::io("replace"))?;
        self.vfs.sync_dir().map_err(Error::io("replace"))
    }
}

impl Store for Env {
    fn list(&self) -> Result<Vec<String>> {
        self.list_dbs()
    }
    fn create(&self, db: &str, opts: DbOptions) -> Result<()> {
        self.create_db(db, opts).map(|_| ())
    }
    fn drop_db(&self, db: &str) -> Result<()> {
        self.remove_db(db)
    }
    fn insert(&self, db: &str, kind: Kind, data: &[u8]) -> Result<u64> {
        self.db(db)?.insert(kind, data)
    }
    fn update(&self, db: &str, id: u64, kind: Kind, data: &[u8]) -> Result<()> {
        self.db(db)?.update(id, kind, data)
    }
    fn delete(&self, db: &str, id: u64) -> Result<bool> {
        self.db(db)?.delete(id)
    }
    fn get(&self, db: &str, id: u64) -> Result<Option<Record>> {
        self.db(db)?.get(id)
    }
    fn query(&self, db: &str, q: Query) -> Result<QueryHandle> {
        self.db(db)?.query(q)
    }
    fn compact(&self, db: &str) -> Result<(u64, u64)> {
        self.db(db)?.compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Store) {}

    #[test]
    fn names() {
        assert!(check_name("users-1.v2").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
