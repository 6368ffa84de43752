//! The one error type of this crate.

use crate::hash::Fingerprint;

/// Everything that can go wrong in zs-crypto. Errors a peer can trigger are
/// values of this enum, never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key of the wrong length was given to a cipher.
    #[error("invalid key length {got} bytes for {algorithm}")]
    InvalidKeyLength {
        /// Cipher name.
        algorithm: &'static str,
        /// The length that was given.
        got: usize,
    },
    /// Data for a block operation is not a whole number of blocks.
    #[error("data length {len} is not a multiple of the {block} byte block")]
    NotBlockAligned {
        /// Data length.
        len: usize,
        /// Block size of the cipher.
        block: usize,
    },
    /// The server presented an Ed25519 key whose fingerprint is not the pinned one.
    #[error("wrong server key: expected fingerprint {expected}, got {got}")]
    WrongServerKey {
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// The fingerprint of the key the server presented.
        got: Fingerprint,
    },
    /// The server's signature over the handshake transcript did not verify.
    #[error("server signature over the handshake transcript is invalid")]
    BadSignature,
    /// The peer's proof of the pre-shared key did not verify: the two sides hold different keys.
    #[error("pre-shared key mismatch: the peer proved a different key")]
    PskMismatch,
    /// The client named a pre-shared key identity the server does not know.
    /// Server side only, for its logs: on the wire the server behaves as for a
    /// wrong key, so the client sees [`Error::PskMismatch`].
    #[error("unknown pre-shared key identity {0:?}")]
    UnknownPskId(String),
    /// The client asked for an authentication mode the server is not configured for.
    #[error("authentication mode mismatch: peer asked for {peer}, we use {ours}")]
    AuthModeMismatch {
        /// What the peer wanted.
        peer: &'static str,
        /// What we are configured for.
        ours: &'static str,
    },
    /// No cipher suite is both offered by the client and allowed by the server.
    #[error("no cipher suite in common")]
    NoCommonSuite,
    /// The server picked a suite the client did not offer.
    #[error("peer picked suite {0:#06x} which was not offered")]
    UnofferedSuite(u16),
    /// A wire id that names no suite we know (or one disabled in this build).
    #[error("unsupported cipher suite id {0:#06x}")]
    UnsupportedSuite(u16),
    /// Bytes that do not parse as the message they claim to be.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A well-formed message arrived at a point of the protocol where it is not allowed.
    #[error("unexpected {what} while {state}")]
    UnexpectedMessage {
        /// The message kind.
        what: &'static str,
        /// The state the session was in.
        state: &'static str,
    },
    /// A record longer than the configured maximum.
    #[error("record of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge {
        /// Declared length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A record failed authentication: altered, replayed, reordered, truncated or under the wrong key.
    #[error("record authentication failed (altered, replayed, reordered, truncated or wrong key)")]
    BadRecordMac,
    /// A key-update record named a generation that is not the next one.
    #[error("key update out of step: expected generation {expected}, got {got}")]
    KeyUpdateOutOfStep {
        /// The generation we expected.
        expected: u32,
        /// The generation the peer announced.
        got: u32,
    },
    /// The peer aborted the handshake with an alert.
    #[error("peer sent alert {0}")]
    PeerAlert(u8),
    /// The byte stream ended without a close record: the data may have been cut short.
    #[error("stream ended without a close record (truncation)")]
    Truncated,
    /// The session was closed and cannot send or receive any more.
    #[error("session is closed")]
    Closed,
    /// An earlier error made this session unusable.
    #[error("session failed earlier and is unusable")]
    Failed,
    /// Failure inside the TLS layer (rustls).
    #[error("TLS: {0}")]
    Tls(String),
    /// Failure hashing or parsing a password hash.
    #[error("password hash: {0}")]
    PasswordHash(String),
    /// The random generator failed.
    #[error("random number generator failed")]
    Rng,
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result alias of this crate.
pub type Result<T> = core::result::Result<T, Error>;

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match e {
            Error::Truncated => std::io::ErrorKind::UnexpectedEof,
            Error::Closed => std::io::ErrorKind::NotConnected,
            Error::Config(_) | Error::InvalidKeyLength { .. } => std::io::ErrorKind::InvalidInput,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}
