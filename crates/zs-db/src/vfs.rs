//! The file layer: every byte the store reads or writes goes through [`Vfs`] and
//! [`FileBackend`], so tests and the fuzz target can swap the disk for
//! [`MemVfs`], which models power loss (unsynced writes lost or torn) and injects
//! faults (failing writes and fsyncs, short writes).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// One open file: positional reads and writes, durability barrier.
pub trait FileBackend: Send + Sync + Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fills `buf` from offset `off`; a read past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Writes all of `buf` at offset `off` (extending the file as needed).
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// An exclusive lock taken with [`Vfs::try_lock`]; dropping it releases the lock.
pub type LockGuard = Box<dyn Debug + Send + Sync>;

/// A directory of files addressed by name.
pub trait Vfs: Send + Sync + Debug {
    /// Opens an existing file (`create == false`) or creates/truncates one (`create == true`).
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileBackend>>;
    /// True if the file exists.
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Atomically renames `from` to `to` only if `to` does not exist: never replaces a
    /// file (an `AlreadyExists` error instead), even against a concurrent creator.
    fn rename_new(&self, from: &str, to: &str) -> io::Result<()>;
    /// Takes an exclusive advisory lock named `name` without waiting, or fails with
    /// `WouldBlock` if another holder (another process, or another handle in this
    /// process) has it. The lock lasts until the guard is dropped. [`DirVfs`] locks the
    /// file `name` (created if missing, never removed) with the OS file lock (`flock`
    /// on Unix, `LockFileEx` on Windows).
    fn try_lock(&self, name: &str) -> io::Result<LockGuard>;
    /// Names of all files.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes directory changes (create, rename, remove) durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// The real file system: a directory on disk.
#[derive(Debug, Clone)]
pub struct DirVfs {
    root: PathBuf,
}

impl DirVfs {
    /// Uses (and creates if missing) the directory `root`.
    pub fn new(root: impl AsRef<Path>) -> io::Result<DirVfs> {
        std::fs::create_dir_all(root.as_ref())?;
        Ok(DirVfs {
            root: root.as_ref().to_path_buf(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[derive(Debug)]
struct OsFile(std::fs::File);

impl FileBackend for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, off)
    }
    #[cfg(unix)]
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, off)
    }
    #[cfg(windows)]
    fn read_exact_at(&self, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = std::os::windows::fs::FileExt::seek_read(&self.0, buf, off)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf = &mut buf[n..];
            off += n as u64;
        }
        Ok(())
    }
    #[cfg(windows)]
    fn write_all_at(&self, mut buf: &[u8], mut off: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = std::os::windows::fs::FileExt::seek_write(&self.0, buf, off)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
            off += n as u64;
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Vfs for DirVfs {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileBackend>> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true);
        if create {
            o.create(true).truncate(true);
        }
        Ok(Arc::new(OsFile(o.open(self.root.join(name))?)))
    }
    fn exists(&self, name: &str) -> io::Result<bool> {
        self.root.join(name).try_exists()
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.root.join(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.root.join(from), self.root.join(to))
    }
    fn rename_new(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (self.root.join(from), self.root.join(to));
        // a hard link never replaces its target: creation is atomic (EEXIST)
        match std::fs::hard_link(&from, &to) {
            Ok(()) => std::fs::remove_file(&from),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                // no hard links here: claim the name with create_new, then rename over
                // the placeholder this call created
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&to)?;
                std::fs::rename(&from, &to)
            }
            Err(e) => Err(e),
        }
    }
    fn try_lock(&self, name: &str) -> io::Result<LockGuard> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join(name))?;
        match f.try_lock() {
            Ok(()) => Ok(Box::new(f)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.root)? {
            let e = e?;
            if e.file_type()?.is_file() {
                if let Some(n) = e.file_name().to_str() {
                    v.push(n.to_string());
                }
            }
        }
        v.sort();
        Ok(v)
    }
    fn sync_dir(&self) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::fs::File::open(&self.root)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            Ok(())
        }
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The write fails and nothing is written.
    WriteError,
    /// Only the first `n` bytes (at most) are written, then the write fails.
    ShortWrite(usize),
    /// The fsync fails; the unsynced writes stay volatile (they may or may not survive a crash).
    SyncError,
}

/// A fault fired at the `at_op`-th mutating operation (write or sync, counted from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Operation number at which the fault fires.
    pub at_op: u64,
    /// What happens.
    pub kind: FaultKind,
}

#[derive(Debug, Default)]
struct MemFileState {
    /// What a reader sees now.
    data: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Writes since the last successful sync, in order: (offset, bytes) or a truncation.
    pending: Vec<PendingOp>,
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct MemShared {
    files: BTreeMap<String, Arc<Mutex<MemFileState>>>,
    locks: BTreeSet<String>,
    ops: u64,
    faults: Vec<Fault>,
    fired: u64,
}

/// An in-memory [`Vfs`] modelling a disk with a volatile cache, plus fault injection.
///
/// Writes are visible at once but only [`FileBackend::sync_data`] makes them durable;
/// [`MemVfs::crash`] throws away unsynced writes, keeping a pseudo-random subset of them,
/// possibly torn (the model of a power cut). Directory operations are durable at once.
#[derive(Debug, Clone, Default)]
pub struct MemVfs {
    shared: Arc<Mutex<MemShared>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemVfs {
    /// An empty in-memory directory.
    pub fn new() -> MemVfs {
        MemVfs::default()
    }

    /// Schedules faults (replacing earlier ones). Operation numbers count from now.
    pub fn set_faults(&self, faults: Vec<Fault>) {
        let mut s = lock(&self.shared);
        s.ops = 0;
        s.faults = faults;
    }

    /// How many faults have fired so far.
    pub fn faults_fired(&self) -> u64 {
        lock(&self.shared).fired
    }

    /// Simulates a power cut: every file reverts to its durable content plus a
    /// `seed`-chosen subset of its unsynced writes, each possibly torn (cut short).
    /// Faults are cleared. Open handles keep working on the new content.
    pub fn crash(&self, seed: u64) {
        let mut rng = seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut s = lock(&self.shared);
        s.faults.clear();
        for f in s.files.values() {
            let mut f = lock(f);
            let mut data = f.durable.clone();
            for op in std::mem::take(&mut f.pending) {
                match op {
                    PendingOp::Write(off, bytes) => match next() % 3 {
                        0 => {}
                        1 => apply_write(&mut data, off, &bytes),
                        _ => {
                            let keep = (next() % (bytes.len() as u64 + 1)) as usize;
                            apply_write(&mut data, off, &bytes[..keep]);
                        }
                    },
                    PendingOp::SetLen(len) => {
                        if next() % 2 == 0 {
                            data.resize(len as usize, 0);
                        }
                    }
                }
            }
            f.durable = data.clone();
            f.data = data;
        }
    }

    /// Content of a file as a reader sees it now (for tests).
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let s = lock(&self.shared);
        s.files.get(name).map(|f| lock(f).data.clone())
    }

    /// Overwrites a file's content, durably (for corruption tests).
    pub fn write_file(&self, name: &str, bytes: &[u8]) {
        let mut s = lock(&self.shared);
        let f = s.files.entry(name.to_string()).or_default();
        let mut f = lock(f);
        f.data = bytes.to_vec();
        f.durable = bytes.to_vec();
        f.pending.clear();
    }

    /// Counts one mutating op and returns the fault to fire, if any.
    fn next_fault(&self) -> Option<FaultKind> {
        let mut s = lock(&self.shared);
        let n = s.ops;
        s.ops += 1;
        let hit = s.faults.iter().find(|f| f.at_op == n).map(|f| f.kind);
        if hit.is_some() {
            s.fired += 1;
        }
        hit
    }
}

fn apply_write(data: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let end = off as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[off as usize..end].copy_from_slice(bytes);
}

#[derive(Debug)]
struct MemFile {
    vfs: MemVfs,
    state: Arc<Mutex<MemFileState>>,
}

const MEM_MAX_FILE: u64 = 1 << 32;

impl FileBackend for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.state).data.len() as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let s = lock(&self.state);
        let end = off
            .checked_add(buf.len() as u64)
            .ok_or(io::ErrorKind::InvalidInput)?;
        if end > s.data.len() as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&s.data[off as usize..end as usize]);
        Ok(())
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if off.saturating_add(buf.len() as u64) > MEM_MAX_FILE {
            return Err(io::Error::other("memory file limit"));
        }
        let fault = self.vfs.next_fault();
        let mut s = lock(&self.state);
        let n = match fault {
            Some(FaultKind::WriteError) => return Err(io::Error::other("injected write error")),
            Some(FaultKind::ShortWrite(n)) => n.min(buf.len()),
            _ => buf.len(),
        };
        apply_write(&mut s.data, off, &buf[..n]);
        s.pending.push(PendingOp::Write(off, buf[..n].to_vec()));
        if n < buf.len() {
            return Err(io::Error::other("injected short write"));
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        if let Some(FaultKind::SyncError) = self.vfs.next_fault() {
            return Err(io::Error::other("injected fsync error"));
        }
        let mut s = lock(&self.state);
        s.durable = s.data.clone();
        s.pending.clear();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > MEM_MAX_FILE {
            return Err(io::Error::other("memory file limit"));
        }
        if let Some(k) = self.vfs.next_fault() {
            if k != FaultKind::SyncError {
                return Err(io::Error::other("injected set_len error"));
            }
        }
        let mut s = lock(&self.state);
        s.data.resize(len as usize, 0);
        s.pending.push(PendingOp::SetLen(len));
        Ok(())
    }
}

impl Vfs for MemVfs {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileBackend>> {
        let mut s = lock(&self.shared);
        let state = if create {
            let st = Arc::new(Mutex::new(MemFileState::default()));
            s.files.insert(name.to_string(), st.clone());
            st
        } else {
            s.files.get(name).cloned().ok_or(io::ErrorKind::NotFound)?
        };
        Ok(Arc::new(MemFile {
            vfs: self.clone(),
            state,
        }))
    }
    fn exists(&self, name: &str) -> io::Result<bool> {
        Ok(lock(&self.shared).files.contains_key(name))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        lock(&self.shared)
            .files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = lock(&self.shared);
        let f = s.files.remove(from).ok_or(io::ErrorKind::NotFound)?;
        s.files.insert(to.to_string(), f);
        Ok(())
    }
    fn rename_new(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = lock(&self.shared);
        if s.files.contains_key(to) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        let f = s.files.remove(from).ok_or(io::ErrorKind::NotFound)?;
        s.files.insert(to.to_string(), f);
        Ok(())
    }
    fn try_lock(&self, name: &str) -> io::Result<LockGuard> {
        if !lock(&self.shared).locks.insert(name.to_string()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(MemLock {
            shared: self.shared.clone(),
            name: name.to_string(),
        }))
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.shared).files.keys().cloned().collect())
    }
    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A lock held in a [`MemVfs`] (a power cut keeps it: the process lives on).
struct MemLock {
    shared: Arc<Mutex<MemShared>>,
    name: String,
}

impl Debug for MemLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemLock").field("name", &self.name).finish()
    }
}

impl Drop for MemLock {
    fn drop(&mut self) {
        lock(&self.shared).locks.remove(&self.name);
    }
}

/// Counts of a [`MemVfs`]'s files, for tests: name → (visible length, durable length).
pub fn mem_sizes(vfs: &MemVfs) -> HashMap<String, (usize, usize)> {
    let s = lock(&vfs.shared);
    s.files
        .iter()
        .map(|(k, f)| {
            let f = lock(f);
            (k.clone(), (f.data.len(), f.durable.len()))
        })
        .collect()
}

/// A [`Vfs`] over another that runs a hook before every `sync_data` of the
/// files it opens: instrumentation and tests (count fsyncs, make them as slow as
/// a given disk, hold one at a gate while another thread works).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use zs_db::{Batch, Database, DbOptions, Kind, MemVfs, SyncHookVfs};
/// let syncs = Arc::new(AtomicU64::new(0));
/// let n = syncs.clone();
/// let vfs = Arc::new(SyncHookVfs::new(Arc::new(MemVfs::new()), move || {
///     n.fetch_add(1, Ordering::Relaxed);
/// }));
/// let db = Database::create(vfs, "hooked", DbOptions::default()).unwrap();
/// let before = syncs.load(Ordering::Relaxed);
/// let mut b = Batch::new();
/// b.insert(Kind::Raw, b"x".to_vec());
/// db.commit(&b).unwrap(); // Immediate: one fsync before it returns
/// assert!(syncs.load(Ordering::Relaxed) > before);
/// ```
pub struct SyncHookVfs {
    inner: Arc<dyn Vfs>,
    hook: Arc<dyn Fn() + Send + Sync>,
}

impl SyncHookVfs {
    /// Wraps `inner`; `before_sync` runs (on the syncing thread) before each
    /// file sync.
    pub fn new(inner: Arc<dyn Vfs>, before_sync: impl Fn() + Send + Sync + 'static) -> Self {
        SyncHookVfs {
            inner,
            hook: Arc::new(before_sync),
        }
    }
}

impl Debug for SyncHookVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHookVfs")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

struct HookedFile {
    inner: Arc<dyn FileBackend>,
    hook: Arc<dyn Fn() + Send + Sync>,
}

impl Debug for HookedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedFile")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FileBackend for HookedFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, off)
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        (self.hook)();
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Vfs for SyncHookVfs {
    fn open(&self, name: &str, create: bool) -> io::Result<Arc<dyn FileBackend>> {
        Ok(Arc::new(HookedFile {
            inner: self.inner.open(name, create)?,
            hook: self.hook.clone(),
        }))
    }
    fn exists(&self, name: &str) -> io::Result<bool> {
        self.inner.exists(name)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn rename_new(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename_new(from, to)
    }
    fn try_lock(&self, name: &str) -> io::Result<LockGuard> {
        self.inner.try_lock(name)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_crash_drops_unsynced() {
        let vfs = MemVfs::new();
        let f = vfs.open("a", true).unwrap();
        f.write_all_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"XXXXXXX", 0).unwrap();
        vfs.crash(1);
        let mut buf = [0u8; 7];
        f.read_exact_at(&mut buf, 0).unwrap();
        // each byte is either the durable or the unsynced version (torn at a prefix)
        for (i, b) in buf.iter().enumerate() {
            assert!(*b == b"durable"[i] || *b == b'X');
        }
    }

    #[test]
    fn locks_are_exclusive_until_dropped() {
        let vfs = MemVfs::new();
        let g = vfs.try_lock("a.lock").unwrap();
        assert_eq!(
            vfs.try_lock("a.lock").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(g);
        drop(vfs.try_lock("a.lock").unwrap());

        let dir = std::env::temp_dir().join(format!("zs-db-lock-{}", std::process::id()));
        let d = DirVfs::new(&dir).unwrap();
        let g = d.try_lock("a.lock").unwrap();
        // a second handle in the same process is refused too (flock is per open file)
        assert_eq!(
            d.try_lock("a.lock").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(g);
        drop(d.try_lock("a.lock").unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rename_new_never_replaces() {
        let vfs = MemVfs::new();
        vfs.write_file("a", b"1");
        vfs.write_file("b", b"2");
        assert_eq!(
            vfs.rename_new("a", "b").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(vfs.read_file("b").unwrap(), b"2");
        vfs.rename_new("a", "c").unwrap();
        assert_eq!(vfs.read_file("c").unwrap(), b"1");

        let dir = std::env::temp_dir().join(format!("zs-db-rn-{}", std::process::id()));
        let d = DirVfs::new(&dir).unwrap();
        std::fs::write(dir.join("x"), b"x").unwrap();
        std::fs::write(dir.join("y"), b"y").unwrap();
        assert_eq!(
            d.rename_new("x", "y").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(dir.join("y")).unwrap(), b"y");
        d.rename_new("x", "z").unwrap();
        assert!(!dir.join("x").exists());
        assert_eq!(std::fs::read(dir.join("z")).unwrap(), b"x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn faults_fire_at_their_op() {
        let vfs = MemVfs::new();
        let f = vfs.open("a", true).unwrap();
        vfs.set_faults(vec![
            Fault {
                at_op: 1,
                kind: FaultKind::ShortWrite(2),
            },
            Fault {
                at_op: 2,
                kind: FaultKind::SyncError,
            },
        ]);
        f.write_all_at(b"abcd", 0).unwrap();
        assert!(f.write_all_at(b"efgh", 4).is_err());
        assert_eq!(f.len().unwrap(), 6);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        assert_eq!(vfs.faults_fired(), 2);
    }
}
