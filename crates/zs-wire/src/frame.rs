//! [`Frame`]: every message zserver puts on a connection, and its body layouts.

use bytes::{BufMut, Bytes};

use crate::value::Text;
use crate::varint::{put_varint, varint_len, Cursor};
use crate::{DataFrame, Limits, WireError};

/// Protocol version carried in the first byte of every frame.
pub const VERSION: u8 = 0x01;

/// Bit 7 of the kind byte: the body is lz4-compressed.
pub(crate) const FLAG_COMPRESSED: u8 = 0x80;
/// Bit 6 of the kind byte: reserved, must be zero.
pub(crate) const FLAG_RESERVED: u8 = 0x40;
/// Bits 0..=5 of the kind byte: the [`FrameKind`] code.
pub(crate) const KIND_MASK: u8 = 0x3f;

/// One message on a connection. Requests carry a request `id` chosen by the sender
/// so that many requests can be in flight at once; the response or error frame
/// carries the same `id`. Names (`cmd`) select the handler on the receiving side.
///
/// Byte, text and DataFrame fields decoded from the wire are zero-copy slices of the
/// received buffer (texts of up to 20 bytes are copied inline into the [`Text`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Console request: text in, a [`Frame::ConsoleResponse`] (or error) out.
    Console {
        /// Request id.
        id: u64,
        /// Command name.
        cmd: Text,
        /// Request text.
        text: Text,
    },
    /// Stream request: DataFrame in, a [`Frame::StreamResponse`] (or error) out.
    Stream {
        /// Request id.
        id: u64,
        /// Command name.
        cmd: Text,
        /// Request values.
        data: DataFrame,
    },
    /// Console command without response.
    DirectConsole {
        /// Command name.
        cmd: Text,
        /// Text.
        text: Text,
    },
    /// Stream command without response.
    DirectStream {
        /// Command name.
        cmd: Text,
        /// Values.
        data: DataFrame,
    },
    /// One chunk of a large payload sent in pieces. `offset` is where `data` starts
    /// in the whole payload of `total` bytes; `last` marks the final chunk (its end is
    /// `total`). The receiver answers with [`Frame::BigStreamAck`] for flow control
    /// and resume.
    BigStream {
        /// Transfer id (also the id of the final response).
        id: u64,
        /// Command name.
        cmd: Text,
        /// Offset of `data` in the payload.
        offset: u64,
        /// Total payload size.
        total: u64,
        /// Final chunk.
        last: bool,
        /// Chunk bytes.
        data: Bytes,
    },
    /// Receiver → sender: bytes `0..offset` of BigStream `id` are stored; send from
    /// `offset` (also the resume point after a reconnect).
    BigStreamAck {
        /// Transfer id.
        id: u64,
        /// Bytes received contiguously from the start.
        offset: u64,
    },
    /// One complete raw binary message without response (the fastest path).
    CompleteBuffer {
        /// Command name.
        cmd: Text,
        /// The message.
        data: Bytes,
    },
    /// One staged DataFrame of a batch: the receiver stores the frames of batch `id`
    /// and, when the `last` one arrives, runs `cmd` over all of them and answers `id`.
    BatchStream {
        /// Batch id (the request id of the final answer).
        id: u64,
        /// Command name.
        cmd: Text,
        /// Final frame of the batch.
        last: bool,
        /// This stage's values.
        data: DataFrame,
    },
    /// Framework-internal command (the seed's `__@` commands), in its own kind so a
    /// user command can never be mistaken for one. `id` 0 means no answer expected.
    Control {
        /// Request id (0: no answer).
        id: u64,
        /// Control command name.
        cmd: Text,
        /// Arguments.
        data: DataFrame,
    },
    /// Answer to a [`Frame::Console`] request.
    ConsoleResponse {
        /// The request id answered.
        id: u64,
        /// Response text.
        text: Text,
    },
    /// Answer to a [`Frame::Stream`], [`Frame::BatchStream`], [`Frame::BigStream`] or
    /// [`Frame::Control`] request.
    StreamResponse {
        /// The request id answered.
        id: u64,
        /// Response values.
        data: DataFrame,
    },
    /// Failure answer to any request.
    Error {
        /// The request id answered.
        id: u64,
        /// Application or framework error code.
        code: u32,
        /// Human-readable message.
        message: Text,
    },
    /// A named one-way notification with a numeric argument (server push or client event).
    Signal {
        /// Signal name.
        name: Text,
        /// Argument.
        code: u64,
    },
    /// Keeps an idle connection alive; no answer.
    Keepalive,
    /// Echo request; the peer answers [`Frame::EchoReply`] with the same id and payload
    /// (round-trip time measurement).
    Echo {
        /// Echo id.
        id: u64,
        /// Payload to send back.
        payload: Bytes,
    },
    /// Answer to [`Frame::Echo`].
    EchoReply {
        /// Echo id.
        id: u64,
        /// The payload received.
        payload: Bytes,
    },
    /// StableIO: a numbered record; `payload` is one encoded frame.
    SeqData {
        /// Sequence number.
        seq: u64,
        /// The encoded inner frame.
        payload: Bytes,
    },
    /// StableIO: every record up to and including `seq` arrived.
    SeqAck {
        /// Highest contiguous sequence number received.
        seq: u64,
    },
    /// StableIO: please send records `from..=to` again.
    SeqResend {
        /// First missing sequence number.
        from: u64,
        /// Last missing sequence number (`>= from`).
        to: u64,
    },
    /// StableIO keepalive, carrying the sender's cumulative ack.
    SeqKeepalive {
        /// Highest contiguous sequence number received.
        acked: u64,
    },
    /// StableIO echo request (link liveness and RTT across reconnects).
    SeqEcho {
        /// Value to send back.
        nonce: u64,
    },
    /// StableIO echo answer.
    SeqEchoReply {
        /// The value received.
        nonce: u64,
    },
}

macro_rules! kinds {
    ($($(#[$m:meta])* $name:ident = $code:expr),* $(,)?) => {
        /// The kind of a [`Frame`], with its wire code (bits 0..=5 of the kind byte).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameKind {
            $($(#[$m])* $name = $code,)*
        }

        impl FrameKind {
            /// Every kind, in code order.
            pub const ALL: &'static [FrameKind] = &[$(FrameKind::$name,)*];

            /// The kind for a wire code.
            pub fn from_code(code: u8) -> Option<FrameKind> {
                match code {
                    $($code => Some(FrameKind::$name),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// [`Frame::Console`]
    Console = 0x01,
    /// [`Frame::Stream`]
    Stream = 0x02,
    /// [`Frame::DirectConsole`]
    DirectConsole = 0x03,
    /// [`Frame::DirectStream`]
    DirectStream = 0x04,
    /// [`Frame::BigStream`]
    BigStream = 0x05,
    /// [`Frame::BigStreamAck`]
    BigStreamAck = 0x06,
    /// [`Frame::CompleteBuffer`]
    CompleteBuffer = 0x07,
    /// [`Frame::BatchStream`]
    BatchStream = 0x08,
    /// [`Frame::Control`]
    Control = 0x09,
    /// [`Frame::ConsoleResponse`]
    ConsoleResponse = 0x10,
    /// [`Frame::StreamResponse`]
    StreamResponse = 0x11,
    /// [`Frame::Error`]
    Error = 0x12,
    /// [`Frame::Signal`]
    Signal = 0x18,
    /// [`Frame::Keepalive`]
    Keepalive = 0x19,
    /// [`Frame::Echo`]
    Echo = 0x1A,
    /// [`Frame::EchoReply`]
    EchoReply = 0x1B,
    /// [`Frame::SeqData`]
    SeqData = 0x20,
    /// [`Frame::SeqAck`]
    SeqAck = 0x21,
    /// [`Frame::SeqResend`]
    SeqResend = 0x22,
    /// [`Frame::SeqKeepalive`]
    SeqKeepalive = 0x23,
    /// [`Frame::SeqEcho`]
    SeqEcho = 0x24,
    /// [`Frame::SeqEchoReply`]
    SeqEchoReply = 0x25,
}

impl FrameKind {
    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Whether bodies of this kind start with a request id (see [`Frame::request_id`]).
    pub const fn has_request_id(self) -> bool {
        matches!(
            self,
            FrameKind::Console
                | FrameKind::Stream
                | FrameKind::BigStream
                | FrameKind::BigStreamAck
                | FrameKind::BatchStream
                | FrameKind::Control
                | FrameKind::ConsoleResponse
                | FrameKind::StreamResponse
                | FrameKind::Error
                | FrameKind::Echo
                | FrameKind::EchoReply
        )
    }
}

const FLAG_LAST: u8 = 0x01;

#[inline]
fn lp_len(n: usize) -> usize {
    varint_len(n as u64) + n
}

#[inline]
fn put_name(dst: &mut impl BufMut, name: &Text) {
    put_varint(dst, name.len() as u64);
    dst.put_slice(name.as_bytes());
}

impl Frame {
    /// The kind of this frame.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Console { .. } => FrameKind::Console,
            Frame::Stream { .. } => FrameKind::Stream,
            Frame::DirectConsole { .. } => FrameKind::DirectConsole,
            Frame::DirectStream { .. } => FrameKind::DirectStream,
            Frame::BigStream { .. } => FrameKind::BigStream,
            Frame::BigStreamAck { .. } => FrameKind::BigStreamAck,
            Frame::CompleteBuffer { .. } => FrameKind::CompleteBuffer,
            Frame::BatchStream { .. } => FrameKind::BatchStream,
            Frame::Control { .. } => FrameKind::Control,
            Frame::ConsoleResponse { .. } => FrameKind::ConsoleResponse,
            Frame::StreamResponse { .. } => FrameKind::StreamResponse,
            Frame::Error { .. } => FrameKind::Error,
            Frame::Signal { .. } => FrameKind::Signal,
            Frame::Keepalive => FrameKind::Keepalive,
            Frame::Echo { .. } => FrameKind::Echo,
            Frame::EchoReply { .. } => FrameKind::EchoReply,
            Frame::SeqData { .. } => FrameKind::SeqData,
            Frame::SeqAck { .. } => FrameKind::SeqAck,
            Frame::SeqResend { .. } => FrameKind::SeqResend,
            Frame::SeqKeepalive { .. } => FrameKind::SeqKeepalive,
            Frame::SeqEcho { .. } => FrameKind::SeqEcho,
            Frame::SeqEchoReply { .. } => FrameKind::SeqEchoReply,
        }
    }

    /// The request id this frame carries (requests, responses, errors, BigStream
    /// acks, echoes), if any.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            Frame::Console { id, .. }
            | Frame::Stream { id, .. }
            | Frame::BigStream { id, .. }
            | Frame::BigStreamAck { id, .. }
            | Frame::BatchStream { id, .. }
            | Frame::Control { id, .. }
            | Frame::ConsoleResponse { id, .. }
            | Frame::StreamResponse { id, .. }
            | Frame::Error { id, .. }
            | Frame::Echo { id, .. }
            | Frame::EchoReply { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The command or signal name, if the frame has one.
    pub fn name(&self) -> Option<&Text> {
        match self {
            Frame::Console { cmd, .. }
            | Frame::Stream { cmd, .. }
            | Frame::DirectConsole { cmd, .. }
            | Frame::DirectStream { cmd, .. }
            | Frame::BigStream { cmd, .. }
            | Frame::CompleteBuffer { cmd, .. }
            | Frame::BatchStream { cmd, .. }
            | Frame::Control { cmd, .. } => Some(cmd),
            Frame::Signal { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Checks the encoder-side rules: name length, text length, chunk and resend ranges.
    pub(crate) fn check(&self, limits: &Limits) -> Result<(), WireError> {
        if let Some(n) = self.name() {
            if n.len() > limits.max_name {
                return Err(WireError::NameTooLong {
                    len: n.len() as u64,
                    max: limits.max_name,
                });
            }
        }
        match self {
            Frame::Console { text, .. }
            | Frame::DirectConsole { text, .. }
            | Frame::ConsoleResponse { text, .. }
            | Frame::Error { message: text, .. }
                if text.len() > limits.max_string =>
            {
                Err(WireError::ValueTooLarge {
                    len: text.len() as u64,
                    max: limits.max_string,
                })
            }
            Frame::BigStream {
                offset,
                total,
                last,
                data,
                ..
            } => check_chunk(*offset, *total, *last, data.len()),
            Frame::SeqResend { from, to } if to < from => {
                Err(WireError::InvalidRange { field: "resend" })
            }
            _ => Ok(()),
        }
    }

    /// Exact length of the (uncompressed) body in bytes.
    pub(crate) fn body_len(&self) -> usize {
        let v = |x: u64| varint_len(x);
        match self {
            Frame::Console { id, cmd, text } => v(*id) + lp_len(cmd.len()) + text.len(),
            Frame::Stream { id, cmd, data } => v(*id) + lp_len(cmd.len()) + data.encoded_len(),
            Frame::DirectConsole { cmd, text } => lp_len(cmd.len()) + text.len(),
            Frame::DirectStream { cmd, data } => lp_len(cmd.len()) + data.encoded_len(),
            Frame::BigStream {
                id,
                cmd,
                offset,
                total,
                data,
                ..
            } => v(*id) + lp_len(cmd.len()) + v(*offset) + v(*total) + 1 + data.len(),
            Frame::BigStreamAck { id, offset } => v(*id) + v(*offset),
            Frame::CompleteBuffer { cmd, data } => lp_len(cmd.len()) + data.len(),
            Frame::BatchStream { id, cmd, data, .. } => {
                v(*id) + lp_len(cmd.len()) + 1 + data.encoded_len()
            }
            Frame::Control { id, cmd, data } => v(*id) + lp_len(cmd.len()) + data.encoded_len(),
            Frame::ConsoleResponse { id, text } => v(*id) + text.len(),
            Frame::StreamResponse { id, data } => v(*id) + data.encoded_len(),
            Frame::Error { id, code, message } => v(*id) + v(*code as u64) + message.len(),
            Frame::Signal { name, code } => lp_len(name.len()) + v(*code),
            Frame::Keepalive => 0,
            Frame::Echo { id, payload } | Frame::EchoReply { id, payload } => {
                v(*id) + payload.len()
            }
            Frame::SeqData { seq, payload } => v(*seq) + payload.len(),
            Frame::SeqAck { seq } => v(*seq),
            Frame::SeqResend { from, to } => v(*from) + v(*to),
            Frame::SeqKeepalive { acked } => v(*acked),
            Frame::SeqEcho { nonce } | Frame::SeqEchoReply { nonce } => v(*nonce),
        }
    }

    /// The byte payload that ends the body of a `BigStream` or `CompleteBuffer`,
    /// or the content of the `bytes` value that ends a `StreamResponse`'s
    /// DataFrame (an answer carrying a large blob last, such as a file range)
    /// (what [`Frame::put_body_head`] leaves out); `None` for other kinds.
    pub(crate) fn trailing_payload(&self) -> Option<&Bytes> {
        match self {
            Frame::BigStream { data, .. } | Frame::CompleteBuffer { data, .. } => Some(data),
            Frame::StreamResponse { data, .. } => data.trailing_bytes(),
            _ => None,
        }
    }

    /// Writes the body up to its trailing payload (see
    /// [`Frame::trailing_payload`]); the whole body for other kinds.
    pub(crate) fn put_body_head(&self, dst: &mut impl BufMut) {
        match self {
            Frame::BigStream {
                id,
                cmd,
                offset,
                total,
                last,
                ..
            } => {
                put_varint(dst, *id);
                put_name(dst, cmd);
                put_varint(dst, *offset);
                put_varint(dst, *total);
                dst.put_u8(if *last { FLAG_LAST } else { 0 });
            }
            Frame::CompleteBuffer { cmd, .. } => put_name(dst, cmd),
            Frame::StreamResponse { id, data } if data.trailing_bytes().is_some() => {
                put_varint(dst, *id);
                data.encode_head_into(dst);
            }
            _ => self.put_body(dst),
        }
    }

    /// Writes the (uncompressed) body.
    pub(crate) fn put_body(&self, dst: &mut impl BufMut) {
        match self {
            Frame::Console { id, cmd, text } => {
                put_varint(dst, *id);
                put_name(dst, cmd);
                dst.put_slice(text.as_bytes());
            }
            Frame::Stream { id, cmd, data } | Frame::Control { id, cmd, data } => {
                put_varint(dst, *id);
                put_name(dst, cmd);
                data.encode_into(dst);
            }
            Frame::DirectConsole { cmd, text } => {
                put_name(dst, cmd);
                dst.put_slice(text.as_bytes());
            }
            Frame::DirectStream { cmd, data } => {
                put_name(dst, cmd);
                data.encode_into(dst);
            }
            Frame::BigStream { data, .. } | Frame::CompleteBuffer { data, .. } => {
                self.put_body_head(dst);
                dst.put_slice(data);
            }
            Frame::BigStreamAck { id, offset } => {
                put_varint(dst, *id);
                put_varint(dst, *offset);
            }
            Frame::BatchStream {
                id,
                cmd,
                last,
                data,
            } => {
                put_varint(dst, *id);
                put_name(dst, cmd);
                dst.put_u8(if *last { FLAG_LAST } else { 0 });
                data.encode_into(dst);
            }
            Frame::ConsoleResponse { id, text } => {
                put_varint(dst, *id);
                dst.put_slice(text.as_bytes());
            }
            Frame::StreamResponse { id, data } => {
                put_varint(dst, *id);
                data.encode_into(dst);
            }
            Frame::Error { id, code, message } => {
                put_varint(dst, *id);
                put_varint(dst, *code as u64);
                dst.put_slice(message.as_bytes());
            }
            Frame::Signal { name, code } => {
                put_name(dst, name);
                put_varint(dst, *code);
            }
            Frame::Keepalive => {}
            Frame::Echo { id, payload } | Frame::EchoReply { id, payload } => {
                put_varint(dst, *id);
                dst.put_slice(payload);
            }
            Frame::SeqData { seq, payload } => {
                put_varint(dst, *seq);
                dst.put_slice(payload);
            }
            Frame::SeqAck { seq: x }
            | Frame::SeqKeepalive { acked: x }
            | Frame::SeqEcho { nonce: x }
            | Frame::SeqEchoReply { nonce: x } => put_varint(dst, *x),
            Frame::SeqResend { from, to } => {
                put_varint(dst, *from);
                put_varint(dst, *to);
            }
        }
    }

    /// Parses a complete (decompressed) body of the given kind.
    pub(crate) fn decode_body(
        kind: FrameKind,
        body: Bytes,
        limits: &Limits,
    ) -> Result<Frame, WireError> {
        let mut c = Cursor::new(body);
        let c = &mut c;
        let frame = match kind {
            FrameKind::Console => Frame::Console {
                id: c.varint("id")?,
                cmd: name(c, limits)?,
                text: rest_text(c, limits)?,
            },
            FrameKind::Stream => Frame::Stream {
                id: c.varint("id")?,
                cmd: name(c, limits)?,
                data: DataFrame::decode_rest(c, limits)?,
            },
            FrameKind::DirectConsole => Frame::DirectConsole {
                cmd: name(c, limits)?,
                text: rest_text(c, limits)?,
            },
            FrameKind::DirectStream => Frame::DirectStream {
                cmd: name(c, limits)?,
                data: DataFrame::decode_rest(c, limits)?,
            },
            FrameKind::BigStream => {
                let id = c.varint("id")?;
                let cmd = name(c, limits)?;
                let offset = c.varint("offset")?;
                let total = c.varint("total")?;
                let last = flag_last(c)?;
                let data = c.rest();
                check_chunk(offset, total, last, data.len())?;
                Frame::BigStream {
                    id,
                    cmd,
                    offset,
                    total,
                    last,
                    data,
                }
            }
            FrameKind::BigStreamAck => Frame::BigStreamAck {
                id: c.varint("id")?,
                offset: c.varint("offset")?,
            },
            FrameKind::CompleteBuffer => Frame::CompleteBuffer {
                cmd: name(c, limits)?,
                data: c.rest(),
            },
            FrameKind::BatchStream => Frame::BatchStream {
                id: c.varint("id")?,
                cmd: name(c, limits)?,
                last: flag_last(c)?,
                data: DataFrame::decode_rest(c, limits)?,
            },
            FrameKind::Control => Frame::Control {
                id: c.varint("id")?,
                cmd: name(c, limits)?,
                data: DataFrame::decode_rest(c, limits)?,
            },
            FrameKind::ConsoleResponse => Frame::ConsoleResponse {
                id: c.varint("id")?,
                text: rest_text(c, limits)?,
            },
            FrameKind::StreamResponse => Frame::StreamResponse {
                id: c.varint("id")?,
                data: DataFrame::decode_rest(c, limits)?,
            },
            FrameKind::Error => Frame::Error {
                id: c.varint("id")?,
                code: u32::try_from(c.varint("code")?).map_err(|_| WireError::VarintOverflow)?,
                message: rest_text(c, limits)?,
            },
            FrameKind::Signal => Frame::Signal {
                name: name(c, limits)?,
                code: c.varint("code")?,
            },
            FrameKind::Keepalive => Frame::Keepalive,
            FrameKind::Echo => Frame::Echo {
                id: c.varint("id")?,
                payload: c.rest(),
            },
            FrameKind::EchoReply => Frame::EchoReply {
                id: c.varint("id")?,
                payload: c.rest(),
            },
            FrameKind::SeqData => Frame::SeqData {
                seq: c.varint("seq")?,
                payload: c.rest(),
            },
            FrameKind::SeqAck => Frame::SeqAck {
                seq: c.varint("seq")?,
            },
            FrameKind::SeqResend => {
                let from = c.varint("from")?;
                let to = c.varint("to")?;
                if to < from {
                    return Err(WireError::InvalidRange { field: "resend" });
                }
                Frame::SeqResend { from, to }
            }
            FrameKind::SeqKeepalive => Frame::SeqKeepalive {
                acked: c.varint("acked")?,
            },
            FrameKind::SeqEcho => Frame::SeqEcho {
                nonce: c.varint("nonce")?,
            },
            FrameKind::SeqEchoReply => Frame::SeqEchoReply {
                nonce: c.varint("nonce")?,
            },
        };
        c.finish()?;
        Ok(frame)
    }
}

fn check_chunk(offset: u64, total: u64, last: bool, len: usize) -> Result<(), WireError> {
    let end = offset.checked_add(len as u64);
    match end {
        Some(e) if e <= total && (!last || e == total) => Ok(()),
        _ => Err(WireError::InvalidRange { field: "chunk" }),
    }
}

#[inline]
fn name(c: &mut Cursor, limits: &Limits) -> Result<Text, WireError> {
    let n = c.varint("name length")?;
    if n > limits.max_name as u64 {
        return Err(WireError::NameTooLong {
            len: n,
            max: limits.max_name,
        });
    }
    c.text(n as usize, "name")
}

#[inline]
fn rest_text(c: &mut Cursor, limits: &Limits) -> Result<Text, WireError> {
    if c.remaining() > limits.max_string {
        return Err(WireError::ValueTooLarge {
            len: c.remaining() as u64,
            max: limits.max_string,
        });
    }
    Text::from_utf8(c.rest())
}

fn flag_last(c: &mut Cursor) -> Result<bool, WireError> {
    match c.u8("flags")? {
        0 => Ok(false),
        FLAG_LAST => Ok(true),
        value => Err(WireError::InvalidByte {
            field: "flags",
            value,
        }),
    }
}
