//! The crate's one error type.

use std::net::SocketAddr;

use crate::StreamId;

/// Everything that can go wrong in a [`Mux`](crate::Mux) operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer does not listen on this virtual address.
    #[error("the peer does not listen on virtual address {0}")]
    UnknownAddress(SocketAddr),
    /// No stream with this id exists (never opened, or already fully closed).
    #[error("unknown stream {0}")]
    UnknownStream(StreamId),
    /// The stream exists but this direction is closed (write after FIN, or reset).
    #[error("stream {0} is closed for this operation")]
    StreamClosed(StreamId),
    /// `max_streams` streams are open already (or the id space is exhausted).
    #[error("too many streams")]
    TooManyStreams,
    /// This side already listens on the virtual address.
    #[error("virtual address {0} is already in use")]
    AddressInUse(SocketAddr),
    /// Tunnel authentication failed (wrong token, or the two sides disagree on auth).
    #[error("tunnel authentication failed")]
    AuthFailed,
    /// The peer broke the protocol (malformed frame, credit violation, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The tunnel is closed (GoAway, idle timeout, protocol error or `close_tunnel`).
    #[error("the tunnel is closed")]
    TunnelClosed,
    /// A configuration or API use this crate refuses (no authentication chosen, a
    /// token that is too short, no secure session without the plaintext opt-in, a
    /// channel binding set too late).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The operating system's random generator failed (no nonce could be made).
    #[error("the OS random generator failed")]
    Rng,
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind;
        let kind = match &e {
            Error::UnknownAddress(_) => ErrorKind::ConnectionRefused,
            Error::UnknownStream(_) => ErrorKind::NotFound,
            Error::StreamClosed(_) => ErrorKind::BrokenPipe,
            Error::TooManyStreams => ErrorKind::OutOfMemory,
            Error::AddressInUse(_) => ErrorKind::AddrInUse,
            Error::AuthFailed => ErrorKind::PermissionDenied,
            Error::Protocol(_) => ErrorKind::InvalidData,
            Error::TunnelClosed => ErrorKind::ConnectionAborted,
            Error::Config(_) => ErrorKind::InvalidInput,
            Error::Rng => ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}
