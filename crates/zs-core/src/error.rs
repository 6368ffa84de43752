//! The crate's one error type.

/// Well-known error codes carried in [`zs_wire::Frame::Error`] answers.
pub mod code {
    /// The request was malformed or of the wrong kind for the command.
    pub const BAD_REQUEST: u32 = 400;
    /// No command of that kind is registered under that name.
    pub const UNKNOWN_COMMAND: u32 = 404;
    /// A staged request (a BatchStream batch) saw no new part for the
    /// receiver's idle timeout and was dropped.
    pub const TIMED_OUT: u32 = 408;
    /// The payload exceeds a receiver limit (e.g. a CompleteBuffer).
    pub const TOO_LARGE: u32 = 413;
    /// The StableIO session to resume is unknown, expired or evicted (or the
    /// resume secret is wrong).
    pub const GONE: u32 = 410;
    /// Too many requests are staged (batches).
    pub const TOO_MANY: u32 = 429;
    /// The handler failed (or dropped its responder without answering).
    pub const HANDLER_FAILED: u32 = 500;
    /// The frame kind is not served by this endpoint.
    pub const NOT_SUPPORTED: u32 = 501;
    /// The receiver is over a budget (its HPC queue is full, or an answer does
    /// not fit the StableIO resend buffer): retry later.
    pub const BUSY: u32 = 503;
}

/// Everything that can go wrong in zs-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer sent bytes that are not a valid frame, or a frame we may not send.
    #[error("framing: {0}")]
    Wire(#[from] zs_wire::WireError),
    /// The transport failed.
    #[error("transport: {0}")]
    Io(#[source] zs_io::Error),
    /// The connection's security layer did not complete its handshake (a
    /// timeout, a server key that is not the pinned one, a refused suite or
    /// PSK, a peer that closed mid-handshake): not a lost connection. The
    /// layer's own error (e.g. `zs_secure::HandshakeError`) is in `source`'s
    /// chain (`zs_secure::handshake_error(source)` finds it).
    #[error("handshake {kind:?}: {source}")]
    Handshake {
        /// Which way it failed.
        kind: HandshakeKind,
        /// The transport error that carries the layer's error.
        #[source]
        source: zs_io::Error,
    },
    /// The peer answered the request with an error.
    #[error("remote error {code}: {message}")]
    Remote {
        /// Error code (see [`code`]).
        code: u32,
        /// The peer's message.
        message: String,
    },
    /// The call was not answered within its timeout.
    #[error("call timed out")]
    TimedOut,
    /// The connection ended before the call was answered (or the answer sent).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The peer violated the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The answer had the wrong shape (text where values were expected or the reverse).
    #[error("unexpected reply: expected {expected}")]
    UnexpectedReply {
        /// What the call expected.
        expected: &'static str,
    },
    /// StableIO: the resend buffer holds
    /// [`SessionConfig::stable_max_unacked`](crate::SessionConfig::stable_max_unacked)
    /// bytes the peer has not acknowledged yet (back-pressure: nothing was sent
    /// or dropped; retry once the peer caught up).
    #[error("StableIO resend buffer full: {unacked} bytes unacknowledged (limit {limit})")]
    Full {
        /// Bytes currently kept.
        unacked: usize,
        /// The limit.
        limit: usize,
    },
    /// StableIO: the session ended for good (the server expired or evicted it,
    /// refused the resume, or the client gave up reconnecting). Calls that were
    /// pending can no longer complete.
    #[error("StableIO session lost: {0}")]
    SessionLost(String),
    /// BatchStream: the checksums in the answer do not match the frames sent.
    #[error("batch checksum mismatch (frame {index:?}): {detail}")]
    ChecksumMismatch {
        /// The first staged frame whose checksum differs, when known.
        index: Option<usize>,
        /// What was wrong.
        detail: String,
    },
    /// A configuration or argument was invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// How a security handshake failed (see [`Error::Handshake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeKind {
    /// No keys were established within the handshake timeout.
    TimedOut,
    /// The peer's handshake was refused: wrong server key, unknown PSK, no
    /// common suite, bad handshake bytes.
    Refused,
    /// The peer closed or reset the connection during the handshake.
    PeerClosed,
    /// The provider failed otherwise (e.g. no client configuration).
    Other,
}

impl From<zs_io::Error> for Error {
    fn from(e: zs_io::Error) -> Error {
        use std::io::ErrorKind as K;
        let Some((kind, _)) = e.handshake_failure() else {
            return Error::Io(e);
        };
        let kind = match kind {
            K::TimedOut => HandshakeKind::TimedOut,
            K::PermissionDenied => HandshakeKind::Refused,
            K::ConnectionAborted | K::ConnectionReset | K::UnexpectedEof => {
                HandshakeKind::PeerClosed
            }
            _ => HandshakeKind::Other,
        };
        Error::Handshake { kind, source: e }
    }
}

/// The `io::Error` bridge (for `?` in functions returning `io::Result`): each
/// variant gets the nearest `ErrorKind`, and the `zs_core::Error` itself is
/// kept as the inner error (`get_ref`/`into_inner` and `source` reach it),
/// except that a transport error becomes its own `io::Error`.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        use std::io::ErrorKind as K;
        let e = match e {
            Error::Io(io) => return io.into(),
            e => e,
        };
        let kind = match &e {
            Error::Io(_) => K::Other,
            Error::Handshake { kind, .. } => match kind {
                HandshakeKind::TimedOut => K::TimedOut,
                HandshakeKind::Refused => K::PermissionDenied,
                HandshakeKind::PeerClosed => K::ConnectionAborted,
                HandshakeKind::Other => K::Other,
            },
            Error::Wire(_) | Error::Protocol(_) | Error::UnexpectedReply { .. } => K::InvalidData,
            Error::ChecksumMismatch { .. } => K::InvalidData,
            Error::Remote { .. } => K::Other,
            Error::TimedOut => K::TimedOut,
            Error::ConnectionLost(_) => K::ConnectionAborted,
            Error::SessionLost(_) => K::NotConnected,
            Error::Full { .. } => K::WouldBlock,
            Error::Config(_) => K::InvalidInput,
        };
        std::io::Error::new(kind, e)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind as K;

    #[test]
    fn io_bridge_kinds_and_source() {
        let cases: Vec<(Error, K)> = vec![
            (Error::TimedOut, K::TimedOut),
            (Error::ConnectionLost("x".into()), K::ConnectionAborted),
            (Error::SessionLost("x".into()), K::NotConnected),
            (Error::Protocol("x".into()), K::InvalidData),
            (Error::Config("x".into()), K::InvalidInput),
            (
                Error::Full {
                    unacked: 1,
                    limit: 1,
                },
                K::WouldBlock,
            ),
            (
                Error::Remote {
                    code: code::BUSY,
                    message: "m".into(),
                },
                K::Other,
            ),
        ];
        for (e, kind) in cases {
            let text = e.to_string();
            let io: std::io::Error = e.into();
            assert_eq!(io.kind(), kind, "{text}");
            // The zs-core error is kept inside.
            let inner = io.into_inner().unwrap().downcast::<Error>().unwrap();
            assert_eq!(inner.to_string(), text);
        }
        // A transport error becomes its own io::Error (its kind, not Other).
        let io: std::io::Error = Error::Io(zs_io::Error::Refused).into();
        assert_eq!(io.kind(), K::ConnectionRefused);
        let io: std::io::Error = Error::Io(zs_io::Error::Io(std::io::Error::other("os"))).into();
        assert_eq!(io.to_string(), "os");
    }

    #[test]
    fn a_handshake_failure_is_its_own_variant() {
        for (io_kind, kind) in [
            (K::TimedOut, HandshakeKind::TimedOut),
            (K::PermissionDenied, HandshakeKind::Refused),
            (K::ConnectionAborted, HandshakeKind::PeerClosed),
            (K::Other, HandshakeKind::Other),
        ] {
            let e: Error =
                zs_io::HandshakeFailure::into_error(io_kind, std::io::Error::other("hs")).into();
            match &e {
                Error::Handshake { kind: k, source } => {
                    assert_eq!(*k, kind);
                    assert!(source.handshake_failure().is_some());
                }
                other => panic!("{other}"),
            }
            // And back to io: the same kind.
            let io: std::io::Error = e.into();
            assert_eq!(io.kind(), io_kind);
        }
        // Plain transport failures stay Io (a refused TCP connect, a close).
        assert!(matches!(Error::from(zs_io::Error::Refused), Error::Io(_)));
        assert!(matches!(
            Error::from(zs_io::Error::Io(std::io::Error::from(K::TimedOut))),
            Error::Io(_)
        ));
    }
}
