//! The error types of the crate.

use crate::FrameKind;

/// Everything that can go wrong while encoding, decoding or reading wire data.
///
/// Decoding errors are caused by the peer (or by corrupted input): they never panic
/// and never allocate from the bad length first. After an error from the *header* of
/// a frame ([`UnsupportedVersion`](WireError::UnsupportedVersion),
/// [`BadToken`](WireError::BadToken), [`UnknownKind`](WireError::UnknownKind),
/// [`ReservedFlags`](WireError::ReservedFlags),
/// [`CompressionRefused`](WireError::CompressionRefused),
/// [`FrameTooLarge`](WireError::FrameTooLarge), varint errors in the length) the byte
/// stream cannot be resynchronised and the connection should be closed. Errors inside
/// a body leave the stream in step (the frame's bytes were consumed), so a caller may
/// choose to answer with an error frame and carry on:
/// [`Decoder::decode_recoverable`](crate::Decoder::decode_recoverable) tells the two
/// apart ([`DecodeError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The first byte of a frame is not a protocol version this crate speaks.
    #[error("unsupported protocol version {0:#04x}")]
    UnsupportedVersion(u8),
    /// The deployment's verification token did not match.
    #[error("verification token mismatch")]
    BadToken,
    /// The frame kind byte names no known kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// Reserved bits of the kind byte are set.
    #[error("reserved flag bits set in kind byte {0:#04x}")]
    ReservedFlags(u8),
    /// The kind byte has the compressed bit set but this side does not accept
    /// compressed frames ([`Config::accept_compressed`](crate::Config::accept_compressed)).
    /// A header error: the connection should be closed.
    #[error("compressed frame refused (kind byte {0:#04x}): compression is not enabled")]
    CompressionRefused(u8),
    /// A varint is longer than 10 bytes or does not fit its target type.
    #[error("varint overflows its type")]
    VarintOverflow,
    /// A varint has a redundant trailing zero group (every value has exactly one encoding).
    #[error("non-canonical varint")]
    NonCanonicalVarint,
    /// A frame body (or its decompressed form) is longer than `Limits::max_frame`.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Declared length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// A field says more bytes follow than the frame body holds.
    #[error("truncated: {field} needs more bytes than the frame holds")]
    Truncated {
        /// Which field was being read.
        field: &'static str,
    },
    /// Bytes are left over after a body whose layout ends before the end of the frame.
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    /// A command or signal name is longer than `Limits::max_name`.
    #[error("name of {len} bytes exceeds the limit of {max}")]
    NameTooLong {
        /// Declared length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// A text field is not valid UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A bool byte or a flags byte holds a value other than the ones defined.
    #[error("invalid {field} byte {value:#04x}")]
    InvalidByte {
        /// Which field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// A number array's byte length is not a whole number of elements.
    #[error("array of {len} bytes is not a whole number of {elem}-byte elements")]
    ArrayLength {
        /// Declared byte length.
        len: u64,
        /// Element size.
        elem: usize,
    },
    /// A range field is inconsistent (a BigStream chunk past its total, a resend
    /// request whose end precedes its start).
    #[error("inconsistent range in {field}")]
    InvalidRange {
        /// Which field.
        field: &'static str,
    },
    /// A DataFrame value tag names no known type.
    #[error("unknown value tag {0:#04x}")]
    UnknownValueTag(u8),
    /// A number array names an element type that is not a number.
    #[error("unknown array element type {0:#04x}")]
    UnknownArrayKind(u8),
    /// A variant value names an unknown variant type.
    #[error("unknown variant tag {0:#04x}")]
    UnknownVariantTag(u8),
    /// DataFrames are nested deeper than `Limits::max_depth`.
    #[error("DataFrame nesting exceeds the limit of {max}")]
    DepthExceeded {
        /// Configured maximum.
        max: usize,
    },
    /// A DataFrame (counting nested ones) holds more values than `Limits::max_values`.
    #[error("DataFrame value count {count} exceeds the limit of {max}")]
    TooManyValues {
        /// Declared count (or running total).
        count: u64,
        /// Configured maximum.
        max: usize,
    },
    /// A string, bytes, JSON or array value (or a rest-text) is longer than
    /// `Limits::max_string`.
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge {
        /// Declared length in bytes.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// A JSON value's text is longer than `Limits::max_json`.
    #[error("JSON value of {len} bytes exceeds the limit of {max}")]
    JsonTooLarge {
        /// Declared length in bytes.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// A JSON value's text does not parse (or a JSON form does not follow the typed layout).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The lz4 block of a compressed frame is corrupt or does not fill the declared size.
    #[error("lz4 decompression failed: {0}")]
    Decompress(String),
    /// A typed reader ran past the last value of a DataFrame.
    #[error("no value at index {index}")]
    ReadPastEnd {
        /// The index that was asked for.
        index: usize,
    },
    /// A typed reader found a value it cannot convert to the type asked for.
    #[error("value {index} is {found}, cannot read it as {expected}")]
    TypeMismatch {
        /// Index of the value.
        index: usize,
        /// Type asked for.
        expected: &'static str,
        /// Type found.
        found: &'static str,
    },
}

/// A decoding error split by what the caller can do next (see
/// [`Decoder::decode_recoverable`](crate::Decoder::decode_recoverable)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The byte stream cannot be resynchronised (a header error, or a whole-buffer
    /// input whose size does not match its header): close the connection.
    #[error(transparent)]
    Fatal(WireError),
    /// The header was valid and the whole frame arrived, but its body is malformed
    /// (or breaks a limit, or does not decompress). Exactly that frame's bytes were
    /// consumed, so the decoder is still in step: the caller may answer `id` with an
    /// error frame and go on decoding.
    #[error("bad {kind:?} frame body ({frame_len} bytes on the wire): {error}")]
    BadBody {
        /// The frame's kind (from its valid header).
        kind: FrameKind,
        /// The request id, when the kind carries one and it could be read (it is the
        /// first field of the body; `None` for kinds without an id, or when the body
        /// is too broken to read it, e.g. it does not decompress).
        id: Option<u64>,
        /// Bytes the frame took on the wire (header and body), all consumed.
        frame_len: usize,
        /// What is wrong with the body.
        error: WireError,
    },
}

impl DecodeError {
    /// True when the decoder is still in step and decoding may go on.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, DecodeError::BadBody { .. })
    }

    /// The underlying error (what [`Decoder::decode`](crate::Decoder::decode) returns).
    pub fn error(&self) -> &WireError {
        match self {
            DecodeError::Fatal(e) | DecodeError::BadBody { error: e, .. } => e,
        }
    }

    /// Unwraps the underlying error.
    pub fn into_error(self) -> WireError {
        match self {
            DecodeError::Fatal(e) | DecodeError::BadBody { error: e, .. } => e,
        }
    }
}

impl From<DecodeError> for WireError {
    fn from(e: DecodeError) -> Self {
        e.into_error()
    }
}

impl From<DecodeError> for std::io::Error {
    fn from(e: DecodeError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

impl From<WireError> for std::io::Error {
    fn from(e: WireError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}
