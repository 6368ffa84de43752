//! Whole BigStream bodies for [`Registry::big_stream_collect`](crate::Registry::big_stream_collect):
//! in memory when small, spilled to a temporary file when large (the seed's
//! "disk swap").

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Limits of a collecting BigStream handler.
#[derive(Debug, Clone)]
pub struct CollectLimits {
    /// Bodies larger than this go to a temporary file instead of memory.
    /// Default 4 MiB.
    pub spill_threshold: u64,
    /// Streams announcing more are refused with
    /// [`code::TOO_LARGE`](crate::code::TOO_LARGE). Default 1 GiB.
    pub max_size: u64,
    /// Where temporary files go (default: the system's temporary directory).
    pub spill_dir: Option<PathBuf>,
}

impl Default for CollectLimits {
    fn default() -> Self {
        CollectLimits {
            spill_threshold: 4 << 20,
            max_size: 1 << 30,
            spill_dir: None,
        }
    }
}

/// A body being received.
pub(crate) enum Assembly {
    Memory(Vec<u8>, u64),
    File(tempfile::NamedTempFile, io::BufWriter<File>, u64),
}

impl Assembly {
    pub(crate) fn new(total: u64, limits: &CollectLimits) -> io::Result<Assembly> {
        if total <= limits.spill_threshold {
            // `total` is bounded by the threshold, so this allocation is too.
            return Ok(Assembly::Memory(Vec::with_capacity(total as usize), total));
        }
        let f = match &limits.spill_dir {
            Some(d) => tempfile::Builder::new().prefix("zs-big-").tempfile_in(d)?,
            None => tempfile::Builder::new().prefix("zs-big-").tempfile()?,
        };
        let w = io::BufWriter::with_capacity(256 * 1024, f.reopen()?);
        Ok(Assembly::File(f, w, total))
    }

    pub(crate) fn push(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Assembly::Memory(v, total) => {
                if v.len() as u64 + data.len() as u64 > *total {
                    return Err(io::Error::other("more bytes than announced"));
                }
                v.extend_from_slice(data);
                Ok(())
            }
            Assembly::File(_, w, _) => w.write_all(data),
        }
    }

    pub(crate) fn finish(self) -> io::Result<BigBody> {
        match self {
            Assembly::Memory(v, _) => Ok(BigBody {
                len: v.len() as u64,
                inner: Inner::Memory(Cursor::new(Bytes::from(v))),
            }),
            Assembly::File(f, w, total) => {
                w.into_inner().map_err(|e| e.into_error())?.sync_data()?;
                let file = f.reopen()?;
                Ok(BigBody {
                    len: total,
                    inner: Inner::File(f, file),
                })
            }
        }
    }
}

enum Inner {
    Memory(Cursor<Bytes>),
    /// The temporary file (deleted on drop) and a read handle.
    File(tempfile::NamedTempFile, File),
}

/// A whole BigStream payload: [`Read`] + [`Seek`] over memory or a temporary
/// file. The file is removed when the body is dropped.
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
    /// writes an in-memory body there.
    pub fn persist(self, path: &Path) -> io::Result<()> {
        match self.inner {
            Inner::File(f, _) => f.persist(path).map(|_| ()).map_err(|e| e.error),
            Inner::Memory(c) => std::fs::write(path, c.into_inner()),
        }
    }
}

impl Read for BigBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Memory(c) => c.read(buf),
            Inner::File(_, f) => f.read(buf),
        }
    }
}

impl Seek for BigBody {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match &mut self.inner {
            Inner::Memory(c) => c.seek(pos),
            Inner::File(_, f) => f.seek(pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bodies_stay_in_memory_and_large_ones_spill() {
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
