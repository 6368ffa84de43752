//! The services' error type and their error codes.

use zs_core::HandlerError;

/// Error codes the services answer with (in `Frame::Error`, beside zs-core's
/// [`zs_core::code`] values, which they also use: `400` malformed payload,
/// `413` too large, `503` busy).
pub mod code {
    /// The command needs a logged-in connection.
    pub const NOT_LOGGED_IN: u32 = 601;
    /// Wrong name or password (the same answer for an unknown name).
    pub const BAD_CREDENTIALS: u32 = 602;
    /// The account is disabled.
    pub const DISABLED: u32 = 603;
    /// Too many failed logins for this user or from this address: retry later
    /// (the message says when).
    pub const THROTTLED: u32 = 604;
    /// The name (or alias) is already taken.
    pub const NAME_TAKEN: u32 = 605;
    /// No such user (or alias).
    pub const NO_SUCH_USER: u32 = 606;
    /// The caller may not do this (an admin command, registration closed).
    pub const FORBIDDEN: u32 = 607;
    /// The user is already logged in elsewhere and the server refuses a second
    /// login (`SecondLogin::Refuse`).
    pub const ALREADY_ONLINE: u32 = 608;
    /// A name, alias, password or group name breaks the rules (length, characters).
    pub const INVALID: u32 = 609;
    /// The recipient's message queue (or the server's) is full.
    pub const QUEUE_FULL: u32 = 610;
    /// The store failed; nothing was acknowledged.
    pub const STORAGE: u32 = 611;
    /// A local failure of the client: transport, timeout, unexpected answer.
    pub const CLIENT: u32 = 690;
}

/// A failed service operation: the code (see [`code`] and [`zs_core::code`])
/// and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// Error code.
    pub code: u32,
    /// What went wrong.
    pub message: String,
}

impl ServiceError {
    /// An error with `code`.
    pub fn new(code: u32, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> ServiceError {
        ServiceError::new(zs_core::code::BAD_REQUEST, message)
    }

    pub(crate) fn storage(e: zs_db::Error) -> ServiceError {
        tracing::error!(error = %e, "services: store failure");
        ServiceError::new(code::STORAGE, format!("store failure: {e}"))
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServiceError {}

impl From<ServiceError> for HandlerError {
    fn from(e: ServiceError) -> HandlerError {
        HandlerError::new(e.code, e.message)
    }
}

impl From<zs_core::Error> for ServiceError {
    fn from(e: zs_core::Error) -> ServiceError {
        match e {
            zs_core::Error::Remote { code, message } => ServiceError { code, message },
            other => ServiceError::new(code::CLIENT, other.to_string()),
        }
    }
}

impl From<zs_wire::WireError> for ServiceError {
    fn from(e: zs_wire::WireError) -> ServiceError {
        ServiceError::bad(format!("malformed payload: {e}"))
    }
}

/// `Result` with [`ServiceError`].
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
