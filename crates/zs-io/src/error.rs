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

/// The marker a security layer wraps its handshake error in (inside
/// [`Error::Io`], whose `io::ErrorKind` says which way it failed: `TimedOut`,
/// `PermissionDenied` for a refused key or suite, `ConnectionAborted` for a peer
/// that closed mid-handshake, `Other`). Layers above the transport (zs-core) find
/// it with [`Error::handshake_failure`] without depending on the layer's crate;
/// the layer's own error is its [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct HandshakeFailure(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for HandshakeFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl HandshakeFailure {
    /// The transport error for a handshake that failed with `kind`.
    pub fn into_error(
        kind: std::io::ErrorKind,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::Io(std::io::Error::new(kind, HandshakeFailure(Box::new(error))))
    }
}

impl Error {
    /// The security layer's handshake failure inside this error (a connect that
    /// failed in the handshake rather than in TCP), with its `io::ErrorKind`.
    pub fn handshake_failure(&self) -> Option<(std::io::ErrorKind, &HandshakeFailure)> {
        match self {
            Error::Io(io) => Some((io.kind(), io.get_ref()?.downcast_ref::<HandshakeFailure>()?)),
            _ => None,
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

    #[test]
    fn handshake_failure_is_found_with_its_kind() {
        let e = HandshakeFailure::into_error(
            std::io::ErrorKind::TimedOut,
            std::io::Error::other("slow"),
        );
        let (kind, f) = e.handshake_failure().unwrap();
        assert_eq!(kind, std::io::ErrorKind::TimedOut);
        assert_eq!(f.to_string(), "slow");
        assert!(Error::TimedOut.handshake_failure().is_none());
        assert!(Error::Io(std::io::Error::other("x"))
            .handshake_failure()
            .is_none());
    }
}
