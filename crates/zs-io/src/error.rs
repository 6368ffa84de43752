//! The crate's single error enum.

use bytes::Bytes;

/// Errors of the transport seam.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The send queue is full; the bytes are handed back. `on_writable` follows once
    /// the queue has drained to half its limit.
    #[error("send queue full ({} bytes handed back)", .0.len())]
    Full(Bytes),
    /// The connection is closed or closing (or its write side is shut down).
    #[error("connection closed")]
    Closed,
    /// The peer refused the connection (nothing listens there).
    #[error("connection refused")]
    Refused,
    /// A connect did not complete within its timeout.
    #[error("timed out")]
    TimedOut,
    /// Name resolution failed or gave no address of the wanted family.
    #[error("name resolution failed: {0}")]
    Resolve(String),
    /// The backend has been shut down.
    #[error("backend shut down")]
    ShutDown,
    /// Another operating-system error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A copy of this error (`io::Error` is not `Clone`: the copy keeps its kind and
    /// message; `Full` keeps its bytes, which is a cheap reference count).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Full(b) => Error::Full(b.clone()),
            Error::Closed => Error::Closed,
            Error::Refused => Error::Refused,
            Error::TimedOut => Error::TimedOut,
            Error::Resolve(s) => Error::Resolve(s.clone()),
            Error::ShutDown => Error::ShutDown,
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }

    /// Maps an `io::Error` from a connect attempt to the seam's kinds
    /// (`ConnectionRefused` → [`Error::Refused`], `TimedOut` → [`Error::TimedOut`]).
    pub fn from_connect(e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Error::Refused,
            std::io::ErrorKind::TimedOut => Error::TimedOut,
            _ => Error::Io(e),
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        use std::io::ErrorKind as K;
        match e {
            Error::Io(e) => e,
            Error::Full(_) => std::io::Error::new(K::WouldBlock, "send queue full"),
            Error::Closed => std::io::Error::new(K::NotConnected, "connection closed"),
            Error::Refused => std::io::Error::new(K::ConnectionRefused, "connection refused"),
            Error::TimedOut => std::io::Error::new(K::TimedOut, "timed out"),
            Error::Resolve(s) => std::io::Error::new(K::NotFound, s),
            Error::ShutDown => std::io::Error::other("backend shut down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_and_duplicate() {
        let e = Error::from_connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(e, Error::Refused));
        let io: std::io::Error = Error::Full(Bytes::from_static(b"x")).into();
        assert_eq!(io.kind(), std::io::ErrorKind::WouldBlock);
        let d = Error::Io(std::io::Error::other("boom")).duplicate();
        assert!(d.to_string().contains("boom"));
    }
}
