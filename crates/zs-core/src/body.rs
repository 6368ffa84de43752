//! Whole BigStream bodies for [`Registry::big_stream_collect`](crate::Registry::big_stream_collect):
//! in memory when small, spilled to a temporary file when large (the seed's
//! "disk swap").

use std::io::{self, BufWriter, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tempfile::NamedTempFile;

use crate::error::code;
use crate::registry::HandlerError;

/// Limits of a collecting BigStream handler.
///
/// `max_spill_bytes_total` and `max_spill_files` bound the temporary files of
/// **all** collecting handlers of the process together (every command, every
/// server); each handler compares the shared count with its own limits.
#[derive(Debug, Clone)]
pub struct CollectLimits {
    /// Bodies larger than this go to a temporary file instead of memory.
    /// Default 4 MiB.
    pub spill_threshold: u64,
    /// Streams announcing more are refused with
    /// [`code::TOO_LARGE`](crate::code::TOO_LARGE) before anything is stored.
    /// Default 256 MiB: each spilled transfer reserves its announced size of
    /// the process-wide `max_spill_bytes_total`, so a bigger limit lets fewer
    /// transfers run at once (raise both for bigger bodies).
    pub max_size: u64,
    /// Where temporary files go (default: the system's temporary directory).
    pub spill_dir: Option<PathBuf>,
    /// Most bytes announced by the spilled transfers of the whole process
    /// (transfers being received and [`BigBody`]s not dropped yet). A transfer
    /// that would exceed it is refused on its first chunk, before anything is
    /// stored: [`code::TOO_MANY`](crate::code::TOO_MANY) (try again later), or
    /// [`code::TOO_LARGE`](crate::code::TOO_LARGE) when it alone exceeds it.
    /// Default 4 GiB.
    pub max_spill_bytes_total: u64,
    /// Most temporary files of the whole process (as above); the transfer that
    /// would need one more is refused with
    /// [`code::TOO_MANY`](crate::code::TOO_MANY). Default 64.
    pub max_spill_files: usize,
    /// Most bytes announced by bodies assembled in memory (below
    /// `spill_threshold`) in the whole process, while they are received; a
    /// body that would exceed it goes to a temporary file instead (when the
    /// spill quota allows), else it is refused with
    /// [`code::TOO_MANY`](crate::code::TOO_MANY). Default 256 MiB.
    pub max_memory_bytes_total: u64,
    /// Most bodies one connection may have half received at once (in memory
    /// or spilled); one more is refused with
    /// [`code::TOO_MANY`](crate::code::TOO_MANY), so one peer cannot take the
    /// process-wide quotas. Default 8.
    pub max_transfers_per_peer: usize,
    /// A transfer that received no chunk for this long is dropped (with its
    /// memory or file); the check runs when a chunk for the same command
    /// arrives. A later chunk of the dropped transfer is answered
    /// [`code::BAD_REQUEST`](crate::code::BAD_REQUEST). Default 60 s.
    pub idle_timeout: Duration,
}

impl Default for CollectLimits {
    fn default() -> Self {
        CollectLimits {
            spill_threshold: 4 << 20,
            max_size: 256 << 20,
            spill_dir: None,
            max_spill_bytes_total: 4 << 30,
            max_spill_files: 64,
            max_memory_bytes_total: 256 << 20,
            max_transfers_per_peer: 8,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl CollectLimits {
    /// The process-wide spill usage now: temporary files and the bytes their
    /// transfers announced (held until the transfer is dropped or its
    /// [`BigBody`] is dropped or persisted).
    pub fn spill_in_use() -> (u64, u64) {
        (
            SPILL_FILES.load(Ordering::Acquire),
            SPILL_BYTES.load(Ordering::Acquire),
        )
    }

    /// Bytes announced by the bodies being received in memory in the whole
    /// process now (see [`CollectLimits::max_memory_bytes_total`]).
    pub fn memory_in_use() -> u64 {
        MEMORY_BYTES.load(Ordering::Acquire)
    }
}

/// Bytes announced by bodies being assembled in memory in this process.
static MEMORY_BYTES: AtomicU64 = AtomicU64::new(0);

/// A body's share of [`CollectLimits::max_memory_bytes_total`] while it is
/// received in memory; given back when dropped.
#[derive(Debug)]
struct MemoryQuota {
    bytes: u64,
}

impl MemoryQuota {
    fn take(bytes: u64, limits: &CollectLimits) -> Option<MemoryQuota> {
        let max = limits.max_memory_bytes_total;
        MEMORY_BYTES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(bytes).filter(|t| *t <= max)
            })
            .ok()
            .map(|_| MemoryQuota { bytes })
    }
}

impl Drop for MemoryQuota {
    fn drop(&mut self) {
        MEMORY_BYTES.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Temporary files of collecting handlers in this process.
static SPILL_FILES: AtomicU64 = AtomicU64::new(0);
/// Bytes announced by the transfers owning those files.
static SPILL_BYTES: AtomicU64 = AtomicU64::new(0);

/// One temporary file's share of the process-wide spill quota: a file and the
/// bytes its transfer announced, given back when dropped (whatever the path:
/// abort, error, finished body dropped or persisted).
#[derive(Debug)]
struct SpillQuota {
    bytes: u64,
}

impl SpillQuota {
    fn take(bytes: u64, limits: &CollectLimits) -> Result<SpillQuota, HandlerError> {
        if bytes > limits.max_spill_bytes_total {
            return Err(HandlerError::new(
                code::TOO_LARGE,
                format!(
                    "BigStream of {bytes} bytes exceeds the receiver's spill space of {} bytes",
                    limits.max_spill_bytes_total
                ),
            ));
        }
        let max_files = limits.max_spill_files as u64;
        if SPILL_FILES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_files).then_some(n + 1)
            })
            .is_err()
        {
            return Err(HandlerError::new(
                code::TOO_MANY,
                format!(
                    "the receiver is storing {max_files} large BigStreams already; try again later"
                ),
            ));
        }
        let max_bytes = limits.max_spill_bytes_total;
        if SPILL_BYTES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_add(bytes).filter(|t| *t <= max_bytes)
            })
            .is_err()
        {
            SPILL_FILES.fetch_sub(1, Ordering::AcqRel);
            return Err(HandlerError::new(
                code::TOO_MANY,
                format!(
                    "the receiver's spill space ({max_bytes} bytes) is taken by other \
                     BigStreams; try again later"
                ),
            ));
        }
        Ok(SpillQuota { bytes })
    }
}

impl Drop for SpillQuota {
    fn drop(&mut self) {
        SPILL_BYTES.fetch_sub(self.bytes, Ordering::AcqRel);
        SPILL_FILES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a body being received goes.
enum Store {
    /// Grows with the data (never reserved from the announced total).
    Memory(
        Vec<u8>,
        // Held for its `Drop`: the memory quota returns with the body.
        #[allow(dead_code)] MemoryQuota,
    ),
    /// A temporary file (deleted on drop, one descriptor) behind a buffer.
    File(SpillWriter, SpillQuota),
}

/// A temporary file behind a buffer. Dropped unfinished, it discards the
/// buffered bytes instead of writing them to a file about to be deleted.
struct SpillWriter(Option<BufWriter<NamedTempFile>>);

impl SpillWriter {
    fn get(&mut self) -> io::Result<&mut BufWriter<NamedTempFile>> {
        self.0
            .as_mut()
            .ok_or_else(|| io::Error::other("the temporary file is gone"))
    }
}

impl Drop for SpillWriter {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            drop(w.into_parts());
        }
    }
}

/// A body being received: `len` of `total` announced bytes so far. Dropping
/// it frees everything (memory, file, descriptor, quota) at once.
pub(crate) struct Assembly {
    total: u64,
    len: u64,
    store: Store,
}

/// Buffer in front of a temporary file.
const FILE_BUFFER: usize = 256 * 1024;

fn store_error(e: io::Error) -> HandlerError {
    HandlerError::new(
        code::HANDLER_FAILED,
        format!("cannot store the stream: {e}"),
    )
}

impl Assembly {
    /// Starts a body of `total` bytes: in memory up to
    /// [`CollectLimits::spill_threshold`], else in a temporary file once the
    /// process-wide spill quota allows it (refusals carry the code to answer).
    /// `max_size` is the caller's check.
    pub(crate) fn new(total: u64, limits: &CollectLimits) -> Result<Assembly, HandlerError> {
        let memory = (total <= limits.spill_threshold)
            .then(|| MemoryQuota::take(total, limits))
            .flatten();
        let store = if let Some(quota) = memory {
            // Memory is taken as data arrives; the quota counts the total.
            Store::Memory(Vec::new(), quota)
        } else {
            let quota = SpillQuota::take(total, limits)?;
            let builder = {
                let mut b = tempfile::Builder::new();
                b.prefix("zs-big-");
                b
            };
            let f = match &limits.spill_dir {
                Some(d) => builder.tempfile_in(d),
                None => builder.tempfile(),
            }
            .map_err(store_error)?;
            Store::File(
                SpillWriter(Some(BufWriter::with_capacity(FILE_BUFFER, f))),
                quota,
            )
        };
        Ok(Assembly {
            total,
            len: 0,
            store,
        })
    }

    /// Bytes stored so far.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The size the sender announced.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Appends `data`; more bytes than announced is an error.
    pub(crate) fn push(&mut self, data: &[u8]) -> io::Result<()> {
        let end = self
            .len
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.total)
            .ok_or_else(|| io::Error::other("more bytes than announced"))?;
        match &mut self.store {
            Store::Memory(v, _) => {
                if end as usize > v.capacity() {
                    // Geometric growth, never past the announced total (which
                    // is at most the spill threshold here).
                    let want = (end as usize)
                        .max(v.capacity().saturating_mul(2))
                        .min(self.total as usize);
                    v.reserve_exact(want - v.len());
                }
                v.extend_from_slice(data);
            }
            Store::File(w, _) => w.get()?.write_all(data)?,
        }
        self.len = end;
        Ok(())
    }

    /// The whole body (`len` must have reached `total`).
    pub(crate) fn finish(self) -> io::Result<BigBody> {
        if self.len != self.total {
            return Err(io::Error::other(format!(
                "{} of {} bytes received",
                self.len, self.total
            )));
        }
        match self.store {
            Store::Memory(v, _) => Ok(BigBody {
                len: v.len() as u64,
                inner: Inner::Memory(Cursor::new(Bytes::from(v))),
            }),
            Store::File(mut w, quota) => {
                w.get()?.flush()?;
                let mut f = match w.0.take() {
                    Some(b) => b.into_parts().0,
                    None => return Err(io::Error::other("the temporary file is gone")),
                };
                f.as_file().sync_data()?;
                f.seek(SeekFrom::Start(0))?;
                Ok(BigBody {
                    len: self.total,
                    inner: Inner::File(f, quota),
                })
            }
        }
    }
}

enum Inner {
    Memory(Cursor<Bytes>),
    /// The temporary file (deleted on drop; also the read handle) and its
    /// share of the spill quota.
    File(NamedTempFile, SpillQuota),
}

/// A whole BigStream payload: [`Read`] + [`Seek`] over memory or a temporary
/// file. The file is removed when the body is dropped; until then it counts
/// against [`CollectLimits::max_spill_files`] and
/// [`CollectLimits::max_spill_bytes_total`].
pub struct BigBody {
    len: u64,
    inner: Inner,
}

impl std::fmt::Debug for BigBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BigBody({} bytes, spilled: {})",
            self.len,
            self.is_spilled()
        )
    }
}

impl BigBody {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the body lives in a temporary file.
    pub fn is_spilled(&self) -> bool {
        matches!(self.inner, Inner::File(..))
    }

    /// The temporary file's path, when spilled (it disappears with the body;
    /// use [`BigBody::persist`] to keep it).
    pub fn path(&self) -> Option<&Path> {
        match &self.inner {
            Inner::File(f, _) => Some(f.path()),
            Inner::Memory(_) => None,
        }
    }

    /// The bytes, when the body is in memory (no copy); a spilled body is
    /// handed back.
    pub fn into_bytes(self) -> Result<Bytes, BigBody> {
        match self.inner {
            Inner::Memory(c) => Ok(c.into_inner()),
            inner => Err(BigBody {
                len: self.len,
                inner,
            }),
        }
    }

    /// Keeps a spilled body's file at `path` (a rename; same file system), or
    /// writes an in-memory body there. The file then no longer counts against
    /// the spill quota.
    pub fn persist(self, path: &Path) -> io::Result<()> {
        match self.inner {
            Inner::File(f, _quota) => f.persist(path).map(|_| ()).map_err(|e| e.error),
            Inner::Memory(c) => std::fs::write(path, c.into_inner()),
        }
    }
}

impl Read for BigBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Memory(c) => c.read(buf),
            Inner::File(f, _) => f.read(buf),
        }
    }
}

impl Seek for BigBody {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match &mut self.inner {
            Inner::Memory(c) => c.seek(pos),
            Inner::File(f, _) => f.seek(pos),
        }
    }
}

/// Serializes the crate's unit tests that spill (the quota is process-wide).
#[cfg(test)]
pub(crate) static SPILL_TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(a: &Assembly) -> usize {
        match &a.store {
            Store::Memory(v, _) => v.capacity(),
            Store::File(..) => panic!("spilled"),
        }
    }

    #[test]
    fn memory_is_taken_as_data_arrives_not_from_the_announced_total() {
        let _g = SPILL_TEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let limits = CollectLimits::default();
        let mut a = Assembly::new(4 << 20, &limits).unwrap();
        assert_eq!(capacity(&a), 0, "nothing reserved for the announced 4 MiB");
        a.push(&[7u8; 256 * 1024]).unwrap();
        assert!(capacity(&a) <= 512 * 1024, "{}", capacity(&a));
        drop(a);

        // Growth never goes past the announced total.
        let total = 3 * 1024 * 1024 + 5;
        let mut a = Assembly::new(total, &limits).unwrap();
        let chunk = vec![1u8; 100_000];
        while a.len() + chunk.len() as u64 <= total {
            a.push(&chunk).unwrap();
        }
        let rest = (total - a.len()) as usize;
        a.push(&chunk[..rest]).unwrap();
        assert_eq!(capacity(&a), total as usize);
        let b = a.finish().unwrap();
        assert_eq!(b.len(), total);
    }

    #[test]
    fn a_short_body_does_not_finish() {
        let _g = SPILL_TEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut a = Assembly::new(4, &CollectLimits::default()).unwrap();
        a.push(b"abc").unwrap();
        assert!(a.finish().is_err());
    }

    #[test]
    fn memory_bodies_share_a_process_wide_quota_then_spill() {
        let _g = SPILL_TEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let limits = CollectLimits {
            spill_threshold: 100,
            max_memory_bytes_total: 150,
            max_spill_files: 1,
            spill_dir: Some(dir.path().to_owned()),
            ..CollectLimits::default()
        };
        let before = CollectLimits::memory_in_use();
        let a = Assembly::new(100, &limits).unwrap();
        assert!(matches!(a.store, Store::Memory(..)));
        assert_eq!(CollectLimits::memory_in_use(), before + 100);
        // Over the memory quota: to a file while the spill quota allows...
        let b = Assembly::new(100, &limits).unwrap();
        assert!(matches!(b.store, Store::File(..)));
        // ...then refused.
        let e = Assembly::new(100, &limits).err().unwrap();
        assert_eq!(e.code, code::TOO_MANY, "{}", e.message);
        drop((a, b));
        assert_eq!(CollectLimits::memory_in_use(), before);
        assert!(matches!(
            Assembly::new(100, &limits).unwrap().store,
            Store::Memory(..)
        ));
        assert_eq!(CollectLimits::memory_in_use(), before);
    }

    #[test]
    fn the_spill_quota_is_process_wide_and_returned_on_every_path() {
        let _g = SPILL_TEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(CollectLimits::spill_in_use(), (0, 0));
        let limits = CollectLimits {
            spill_threshold: 10,
            max_spill_files: 2,
            max_spill_bytes_total: 1000,
            spill_dir: Some(dir.path().to_owned()),
            ..CollectLimits::default()
        };
        let a = Assembly::new(400, &limits).unwrap();
        let mut b = Assembly::new(500, &limits).unwrap();
        assert_eq!(CollectLimits::spill_in_use(), (2, 900));
        assert_eq!(files(), 2);
        // A third file: over the file count.
        let e = Assembly::new(11, &limits).err().unwrap();
        assert_eq!(e.code, code::TOO_MANY, "{}", e.message);
        // Room for a file, not for the bytes; then a body larger than the space.
        let roomy = CollectLimits {
            max_spill_files: 3,
            ..limits.clone()
        };
        let e = Assembly::new(101, &roomy).err().unwrap();
        assert_eq!(e.code, code::TOO_MANY, "{}", e.message);
        let e = Assembly::new(1001, &roomy).err().unwrap();
        assert_eq!(e.code, code::TOO_LARGE, "{}", e.message);
        // Small bodies stay in memory and need no quota.
        assert!(Assembly::new(10, &limits).is_ok());
        assert_eq!(CollectLimits::spill_in_use(), (2, 900));

        // An aborted transfer gives everything back at once.
        drop(a);
        assert_eq!(CollectLimits::spill_in_use(), (1, 500));
        assert_eq!(files(), 1);
        // A finished body holds its share until dropped...
        b.push(&[0u8; 500]).unwrap();
        let body = b.finish().unwrap();
        assert_eq!(CollectLimits::spill_in_use(), (1, 500));
        drop(body);
        assert_eq!(CollectLimits::spill_in_use(), (0, 0));
        assert_eq!(files(), 0);
        // ... or until persisted (the file is then the application's).
        let mut c = Assembly::new(20, &limits).unwrap();
        c.push(&[1u8; 20]).unwrap();
        let kept = dir.path().join("kept");
        c.finish().unwrap().persist(&kept).unwrap();
        assert_eq!(CollectLimits::spill_in_use(), (0, 0));
        assert_eq!(std::fs::read(&kept).unwrap(), vec![1u8; 20]);
        // A failed store returns the quota too.
        let bad = CollectLimits {
            spill_dir: Some(dir.path().join("missing")),
            ..limits.clone()
        };
        let e = Assembly::new(20, &bad).err().unwrap();
        assert_eq!(e.code, code::HANDLER_FAILED, "{}", e.message);
        assert_eq!(CollectLimits::spill_in_use(), (0, 0));
    }

    #[test]
    fn small_bodies_stay_in_memory_and_large_ones_spill() {
        let _g = SPILL_TEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let limits = CollectLimits {
            spill_threshold: 8,
            ..CollectLimits::default()
        };
        let mut a = Assembly::new(5, &limits).unwrap();
        a.push(b"hel").unwrap();
        a.push(b"lo").unwrap();
        assert!(a.push(b"!").is_err(), "more than announced");
        let b = a.finish().unwrap();
        assert!(!b.is_spilled() && b.path().is_none());
        assert_eq!(b.into_bytes().unwrap(), Bytes::from_static(b"hello"));

        let mut a = Assembly::new(12, &limits).unwrap();
        a.push(b"hello ").unwrap();
        a.push(b"world!").unwrap();
        let mut b = a.finish().unwrap();
        let path = b.path().unwrap().to_owned();
        assert!(b.is_spilled() && path.exists() && b.len() == 12);
        b.seek(SeekFrom::Start(6)).unwrap();
        let mut s = String::new();
        b.read_to_string(&mut s).unwrap();
        assert_eq!(s, "world!");
        let b = b.into_bytes().unwrap_err();
        drop(b);
        assert!(!path.exists(), "the file goes with the body");
    }
}
