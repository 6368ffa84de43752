//! # The legacy ZServer4D / ZNet wire protocol (sans-IO)
//!
//! The original Delphi/FreePascal framework (ZServer4D and its successor ZNet)
//! speaks a protocol of three layers on one TCP connection; this module encodes
//! and decodes each of them, bounded by [`LegacyLimits`], without owning a socket
//! (the `zs-legacy` crate drives it with a `zs-io` backend). `docs/PROTOCOL.md`,
//! Part "Legacy ZNet wire", gives every byte.
//!
//! - [`seq`]: the **sequence layer**: packets (`02`, u16 size, u32 seq, MD5 of the
//!   payload), acks (`03`), keepalive (`04`) and its echo (`05`), resend requests
//!   (`06`); [`SeqLayer`] is the per-connection state machine (sequence numbers
//!   per direction, the history of unacknowledged packets for resends).
//! - [`frame`]: the **command frames** carried by the sequence payloads:
//!   `F0F0F0F0`, type byte (requests only), i32 length, hash id, hash, cipher id,
//!   payload, `F1F1F1F1`; BigStream and CompleteBuffer headers with their raw
//!   bodies, and the BigStream flow-control signals ([`FrameDecoder`],
//!   [`encode_request`], [`encode_response`], ...).
//! - [`dfe`]: **DataFrameEngine** values ([`Dfe`], [`DfeValue`]): the typed lists
//!   the originals send, with a mapping to and from our [`DataFrame`](crate::DataFrame).
//! - [`control`]: the `__@` commands a client and a server exchange: the
//!   `__@CipherModel` handshake ([`CipherModel`], all 15 fields) and `__@Wait`.
//!
//! Ciphers and hashes are not in this crate: the frame codec takes them through the
//! small [`FrameCrypto`] trait, which the glue crate implements with
//! `zs_crypto::legacy`. [`PlainCrypto`] is the plaintext profile (cipher 0; hash
//! ids 0, 1 and 2, i.e. none and MD5), enough for the originals' `maxperf` profile.
//!
//! **Security:** the original handshake sends the symmetric key in clear. This
//! codec reproduces the protocol for migration; it adds no secrecy.
//!
//! ```
//! use bytes::BytesMut;
//! use zs_wire::legacy::{self, CmdKind, Dfe, DfeValue, FrameDecoder, LegacyFrame, LegacyLimits, PlainCrypto, SeqLayer};
//!
//! // A console request `echo("hi")`, as a ZNet client sends it (cipher 0, hash 0).
//! let payload = Dfe::from(vec![DfeValue::string("echo"), DfeValue::string("hi")]).to_bytes();
//! let mut frame = Vec::new();
//! legacy::encode_request(CmdKind::Console, &payload, 0, 0, &PlainCrypto, &mut frame).unwrap();
//! // ...inside sequence packets.
//! let (mut tx, mut rx) = (SeqLayer::new(LegacyLimits::default()), SeqLayer::new(LegacyLimits::default()));
//! let mut wire = BytesMut::new();
//! tx.send(&frame, &mut wire).unwrap();
//!
//! // The receiver: sequence records -> frame bytes (+ the ack to send back) -> frames.
//! let (mut plain, mut reply) = (BytesMut::new(), BytesMut::new());
//! rx.receive(&mut wire, &mut plain, &mut reply).unwrap();
//! assert_eq!(&reply[..], &[0x03, 0, 0, 0, 0]); // ack of packet 0
//! let mut dec = FrameDecoder::new(LegacyLimits::default());
//! let Some(LegacyFrame::Request { kind, payload, .. }) = dec.decode(&mut plain, false, &PlainCrypto).unwrap() else { panic!() };
//! assert_eq!(kind, CmdKind::Console);
//! let (cmd, body) = legacy::decode_command(kind, &payload, &LegacyLimits::default()).unwrap();
//! assert_eq!((cmd.as_str(), body.text()), ("echo", Some("hi")));
//! ```

pub mod compress;
pub mod control;
pub mod dfe;
pub mod frame;
pub mod seq;

pub use control::{CipherModel, CIPHER_MODEL, WAIT};
pub use dfe::{Dfe, DfeValue, DfeVariant};
pub use frame::{
    decode_command, encode_big_stream_chunk, encode_big_stream_chunk_compressed,
    encode_big_stream_head, encode_command, encode_command_compressed, encode_complete_buffer,
    encode_request, encode_response, encode_signal, CmdBody, CmdKind, FrameCrypto, FrameDecoder,
    LegacyFrame, PlainCrypto, SignalKind,
};
pub use seq::{SeqLayer, SeqStats};

/// Bounds on everything a legacy peer can make us hold. Every size read from the
/// wire is checked against these before anything is allocated for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyLimits {
    /// Largest command frame payload (a request's or response's `len`), and largest
    /// encoded DFE. Default 16 MiB.
    pub max_frame: usize,
    /// Most values in one DFE. Default 1 Mi.
    pub max_values: usize,
    /// Longest command name in bytes. Default 255.
    pub max_name: usize,
    /// Largest CompleteBuffer body (the originals' `MaxCompleteBufferSize`, which a
    /// server announces in the handshake). Default 64 MiB.
    pub max_complete_buffer: usize,
    /// Largest BigStream chunk (the originals send 1 MiB chunks). Default 4 MiB.
    pub max_big_chunk: usize,
    /// Largest BigStream total announced. Default 4 GiB.
    pub max_big_total: u64,
    /// Bytes of sent packets kept until the peer acknowledges them (for its resend
    /// requests); going over it is an error (the peer does not ack). Default 64 MiB.
    pub max_unacked: usize,
}

impl Default for LegacyLimits {
    fn default() -> Self {
        LegacyLimits {
            max_frame: 16 << 20,
            max_values: 1 << 20,
            max_name: 255,
            max_complete_buffer: 64 << 20,
            max_big_chunk: 4 << 20,
            max_big_total: 4 << 30,
            max_unacked: 64 << 20,
        }
    }
}

/// Everything that can be wrong with legacy input (or an encode request). Each one
/// ends the connection; the message is the logged reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyError {
    /// A sequence record's type byte is none of `01`..`06`.
    #[error("unknown sequence record type {0:#04x}")]
    UnknownRecord(u8),
    /// A sequence packet's MD5 does not match its payload.
    #[error("sequence packet {seq}: MD5 mismatch")]
    BadPacketMd5 {
        /// The packet's sequence number.
        seq: u32,
    },
    /// A sequence packet arrived ahead of the one expected (TCP does not reorder).
    #[error("sequence packet {got} arrived, {expected} expected")]
    SequenceGap {
        /// Expected sequence number.
        expected: u32,
        /// Received sequence number.
        got: u32,
    },
    /// The peer does not acknowledge what we send.
    #[error("{0} bytes sent and not acknowledged")]
    Unacked(usize),
    /// A frame does not start with `F0F0F0F0`.
    #[error("bad frame head {0:#010x}")]
    BadHead(u32),
    /// A frame does not end with `F1F1F1F1`.
    #[error("bad frame tail {0:#010x}")]
    BadTail(u32),
    /// A frame's type byte is not a known kind.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// A size on the wire is over its limit (or negative).
    #[error("{what} of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The size announced.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The cipher ordinal is unknown (or this [`FrameCrypto`] cannot do it).
    #[error("unknown or unsupported cipher {0}")]
    UnknownCipher(u8),
    /// The hash ordinal is unknown (or this [`FrameCrypto`] cannot do it).
    #[error("unknown or unsupported hash {0}")]
    UnknownHash(u8),
    /// The frame's hash does not match its decrypted payload.
    #[error("frame hash (id {0}) does not match the payload")]
    BadHash(u8),
    /// A DFE is malformed.
    #[error("bad DFE: {0}")]
    BadDfe(String),
    /// A DFE compressed with the originals' own CoreCompress codecs (tokens 2,
    /// 3, 22, 33; no profile sends them): not supported. zlib (1, 11) and the
    /// parallel container (4, 44) are read.
    #[error("compressed DFE (token {0}) not supported")]
    CompressedDfe(u8),
    /// A command payload is not `[String name, String text]` / `[String name, Stream dfe]`.
    #[error("bad command payload: {0}")]
    BadCommand(String),
    /// A compressed form we do not read (the originals' own CoreCompress
    /// codecs).
    #[error("compressed {0} not supported")]
    Compressed(&'static str),
    /// A compressed DFE, CompleteBuffer or BigStream chunk is malformed.
    #[error("bad compressed data: {0}")]
    BadCompressed(String),
    /// A value has no DFE form (e.g. JSON too large), or a value is out of range.
    #[error("cannot convert: {0}")]
    Convert(String),
    /// The handshake reply is malformed.
    #[error("bad __@CipherModel: {0}")]
    BadCipherModel(String),
}

pub(crate) fn too_large(what: &'static str, size: u64, limit: usize) -> LegacyError {
    LegacyError::TooLarge {
        what,
        size,
        limit: limit as u64,
    }
}
