//! The crate's error type.

use std::io;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation of the file layer failed.
    #[error("i/o error during {op}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file header is missing, damaged or of an unknown version.
    #[error("database {name:?}: bad header: {reason}")]
    BadHeader {
        /// Database name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A frame failed its checksum or structural check when read.
    #[error("corrupt frame at byte offset {offset}: {reason}")]
    Corrupt {
        /// Byte offset of the frame in the file.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// An earlier write or fsync failed; writes are refused until the database is reopened.
    #[error("database poisoned by an earlier i/o error; reopen it")]
    Poisoned,
    /// Another engine (in another process, or another handle of this process) has the
    /// database open: only one writer may hold its lock file `<name>.zdb.lock`.
    #[error("database {name:?} is locked: it is open in another process or handle")]
    Locked {
        /// Database name.
        name: String,
    },
    /// The handle was closed ([`crate::Database::close`], or the database was
    /// removed or replaced through [`crate::Env`]); open the database again.
    #[error("database {name:?} was closed (closed, removed or replaced); open it again")]
    Closed {
        /// Database name.
        name: String,
    },
    /// No live record has this id.
    #[error("no record with id {0}")]
    NotFound(u64),
    /// No database of this name exists.
    #[error("no database named {0:?}")]
    NoSuchDatabase(String),
    /// A database of this name already exists.
    #[error("database {0:?} already exists")]
    AlreadyExists(String),
    /// The name is not a valid database name (1..=64 of `A-Z a-z 0-9 _ - .`, not starting with `.`).
    #[error("invalid database name {0:?}")]
    InvalidName(String),
    /// A value exceeds a configured bound.
    #[error("{what} too large: {len} > {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// A record payload could not be decoded as its kind.
    #[error("decode error: {0}")]
    Decode(String),
    /// A query could not be built or run.
    #[error("query error: {0}")]
    Query(String),
}

impl Error {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { op, source }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io { source, .. } => source,
            Error::NotFound(_) | Error::NoSuchDatabase(_) => {
                io::Error::new(io::ErrorKind::NotFound, e)
            }
            Error::AlreadyExists(_) => io::Error::new(io::ErrorKind::AlreadyExists, e),
            Error::Locked { .. } => io::Error::new(io::ErrorKind::ResourceBusy, e),
            Error::InvalidName(_) | Error::TooLarge { .. } | Error::Query(_) => {
                io::Error::new(io::ErrorKind::InvalidInput, e)
            }
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
