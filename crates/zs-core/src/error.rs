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
    Io(#[from] zs_io::Error),
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

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
