//! [`FrameRef`]: a frame read in place from the receive buffer (borrowed decode).

use bytes::{Bytes, BytesMut};

use crate::codec::{parse_header, Header};
use crate::varint::{get_varint, varint_fast, Varint};
use crate::{Config, DecodeError, Frame, FrameKind, WireError};

/// A frame read in place: the header and the head of the body (request id,
/// command name, text) parsed and validated straight from the bytes in the
/// receive buffer, the rest of the body borrowed as a slice. Decoding one costs no
/// allocation, no copy and no reference count, so it is the form for code that
/// looks at a frame and is done with it before the buffer changes (routers,
/// filters, counters, proxies, the bench's decode case); code that keeps a frame
/// takes the owned [`Frame`] ([`Decoder::decode`](crate::Decoder::decode), or
/// [`FrameRef::to_frame`]).
///
/// What is validated, by kind (exactly the checks [`Frame`] decoding makes on
/// the same fields):
/// - every frame: the header (version, token, kind byte, length limit);
/// - the request id of kinds that carry one ([`FrameKind::has_request_id`]);
/// - the command name (`max_name`, UTF-8) of named kinds;
/// - the text of `Console`, `DirectConsole`, `ConsoleResponse` and the code and
///   message of `Error` (`max_string`, UTF-8).
///
/// The remaining bytes ([`FrameRef::payload`]: a DataFrame, a chunk with its
/// offsets, a buffer, sequence fields) are returned unparsed;
/// [`to_frame`](FrameRef::to_frame) checks them. A compressed frame is viewed
/// without its body ([`FrameRef::is_compressed`]; only its kind and length are
/// known): decompressing needs an owned buffer, so take it with `to_frame`.
///
/// ```
/// use bytes::BytesMut;
/// use zs_wire::{Config, Decoder, Frame, FrameKind, Text};
/// let config = Config::default();
/// let mut rx = BytesMut::new();
/// for id in [1, 2] {
///     let f = Frame::Console { id, cmd: Text::from("echo"), text: Text::from("hello") };
///     rx.extend_from_slice(&f.to_bytes(&config).unwrap());
/// }
/// let dec = Decoder::new(config);
/// let mut seen = Vec::new();
/// let mut at = 0;
/// while let Some(f) = dec.decode_ref(&rx[at..]).unwrap() {
///     assert_eq!(f.kind(), FrameKind::Console);
///     seen.push((f.id(), f.name(), f.text()));
///     at += f.len();
/// }
/// assert_eq!(seen, [(Some(1), Some("echo"), Some("hello")), (Some(2), Some("echo"), Some("hello"))]);
/// // Done with the views: drop the bytes they covered.
/// let _ = rx.split_to(at);
/// assert!(rx.is_empty());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    kind: FrameKind,
    compressed: bool,
    id: Option<u64>,
    name: Option<&'a str>,
    text: Option<&'a str>,
    code: Option<u32>,
    /// Header and body, exactly the frame's bytes.
    raw: &'a [u8],
    /// Where the unparsed rest of the body starts in `raw`.
    payload_at: usize,
}

impl<'a> FrameRef<'a> {
    /// The frame kind.
    #[inline]
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// Whether the body is lz4-compressed (then only the kind and the length are
    /// known here; [`to_frame`](FrameRef::to_frame) decompresses).
    #[inline]
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// The request id, for kinds that carry one.
    #[inline]
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The command (or signal) name, for named kinds.
    #[inline]
    pub fn name(&self) -> Option<&'a str> {
        self.name
    }

    /// The text of a `Console`, `DirectConsole` or `ConsoleResponse` frame, the
    /// message of an `Error` frame.
    #[inline]
    pub fn text(&self) -> Option<&'a str> {
        self.text
    }

    /// The code of an `Error` frame.
    #[inline]
    pub fn code(&self) -> Option<u32> {
        self.code
    }

    /// The body bytes after the fields this view parsed (empty for the text
    /// kinds; the DataFrame, chunk, buffer or sequence fields of the others; the
    /// whole compressed block of a compressed frame).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.raw[self.payload_at..]
    }

    /// The frame's bytes on the wire (header and body).
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// The frame's length on the wire: advance the buffer by this much.
    #[inline]
    #[allow(clippy::len_without_is_empty)] // a frame is never empty
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// The owned [`Frame`] (fully decoded and checked, decompressed if needed),
    /// copying the frame's bytes once. To keep a frame without that copy, decode
    /// it with [`Decoder::decode`](crate::Decoder::decode) instead.
    pub fn to_frame(&self, config: &Config) -> Result<Frame, WireError> {
        Frame::decode(&Bytes::copy_from_slice(self.raw), config)
    }
}

/// Reads a varint at `*p` of `b`, advancing `*p`.
#[inline]
fn varint(b: &[u8], p: &mut usize, field: &'static str) -> Result<u64, WireError> {
    let rest = &b[*p..];
    if let Some((v, n)) = varint_fast(rest) {
        *p += n;
        return Ok(v);
    }
    match get_varint(rest)? {
        Varint::Done(v, n) => {
            *p += n;
            Ok(v)
        }
        Varint::Incomplete => Err(WireError::Truncated { field }),
    }
}

#[inline]
fn has_name(kind: FrameKind) -> bool {
    matches!(
        kind,
        FrameKind::Console
            | FrameKind::Stream
            | FrameKind::DirectConsole
            | FrameKind::DirectStream
            | FrameKind::BigStream
            | FrameKind::CompleteBuffer
            | FrameKind::BatchStream
            | FrameKind::Control
            | FrameKind::Signal
    )
}

/// The parsed head of a body: id, name, text, error code, and where the rest starts.
type Head<'a> = (
    Option<u64>,
    Option<&'a str>,
    Option<&'a str>,
    Option<u32>,
    usize,
);

/// Parses the head of an uncompressed body (`b` is the body).
#[inline]
fn head<'a>(kind: FrameKind, b: &'a [u8], config: &Config) -> Result<Head<'a>, WireError> {
    let limits = &config.limits;
    let mut p = 0;
    let id = if kind.has_request_id() {
        Some(varint(b, &mut p, "id")?)
    } else {
        None
    };
    let name = if has_name(kind) {
        let n = varint(b, &mut p, "name length")?;
        if n > limits.max_name as u64 {
            return Err(WireError::NameTooLong {
                len: n,
                max: limits.max_name,
            });
        }
        let n = n as usize;
        if n > b.len() - p {
            return Err(WireError::Truncated { field: "name" });
        }
        let s = crate::value::utf8(&b[p..p + n])?;
        p += n;
        Some(s)
    } else {
        None
    };
    let code = if kind == FrameKind::Error {
        Some(u32::try_from(varint(b, &mut p, "code")?).map_err(|_| WireError::VarintOverflow)?)
    } else {
        None
    };
    let text = match kind {
        FrameKind::Console
        | FrameKind::DirectConsole
        | FrameKind::ConsoleResponse
        | FrameKind::Error => {
            let rest = &b[p..];
            if rest.len() > limits.max_string {
                return Err(WireError::ValueTooLarge {
                    len: rest.len() as u64,
                    max: limits.max_string,
                });
            }
            p = b.len();
            Some(crate::value::utf8(rest)?)
        }
        _ => None,
    };
    Ok((id, name, text, code, p))
}

impl<C: AsRef<Config>> crate::Decoder<C> {
    /// Reads the frame at the start of `buf` in place, without consuming it
    /// (advance by [`FrameRef::len`] when done with the view); `Ok(None)` while it
    /// is incomplete. Errors as [`decode_recoverable`](crate::Decoder::decode_recoverable):
    /// [`DecodeError::BadBody`] for a whole frame whose head is malformed (skip
    /// `frame_len` bytes and go on), [`DecodeError::Fatal`] for a bad header.
    /// See [`FrameRef`] for what is checked.
    #[inline]
    pub fn decode_ref<'a>(&self, buf: &'a [u8]) -> Result<Option<FrameRef<'a>>, DecodeError> {
        let config = self.config();
        let Some(h) = parse_header(buf, config).map_err(DecodeError::Fatal)? else {
            return Ok(None);
        };
        let Header {
            kind,
            compressed,
            header_len,
            body_len,
        } = h;
        let total = header_len + body_len;
        if buf.len() < total {
            return Ok(None);
        }
        let raw = &buf[..total];
        if compressed {
            return Ok(Some(FrameRef {
                kind,
                compressed,
                id: None,
                name: None,
                text: None,
                code: None,
                raw,
                payload_at: header_len,
            }));
        }
        let body = &raw[header_len..];
        match head(kind, body, config) {
            Ok((id, name, text, code, p)) => Ok(Some(FrameRef {
                kind,
                compressed,
                id,
                name,
                text,
                code,
                raw,
                payload_at: header_len + p,
            })),
            Err(error) => Err(DecodeError::BadBody {
                kind,
                id: if kind.has_request_id() {
                    varint(body, &mut 0, "id").ok()
                } else {
                    None
                },
                frame_len: total,
                error,
            }),
        }
    }

    /// Calls `f` with every complete frame at the front of `buf`, read in place,
    /// then drops the bytes of the frames seen from `buf` (one buffer operation
    /// for the whole batch). Stops at the first incomplete frame (left in `buf`)
    /// or error (the frames before it are consumed; after a
    /// [`DecodeError::BadBody`] the bad frame is consumed too and the call may be
    /// repeated). Returns how many frames `f` saw.
    pub fn decode_each(
        &self,
        buf: &mut BytesMut,
        mut f: impl FnMut(FrameRef<'_>),
    ) -> Result<usize, DecodeError> {
        let mut at = 0;
        let mut n = 0;
        let r = loop {
            match self.decode_ref(&buf[at..]) {
                Ok(Some(v)) => {
                    at += v.len();
                    n += 1;
                    f(v);
                }
                Ok(None) => break Ok(n),
                Err(e) => {
                    if let DecodeError::BadBody { frame_len, .. } = &e {
                        at += frame_len;
                    }
                    break Err(e);
                }
            }
        };
        bytes::Buf::advance(buf, at);
        r
    }
}
