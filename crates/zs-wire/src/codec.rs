//! Sans-IO [`Decoder`] and [`Encoder`] of frames over `BytesMut`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::{FrameKind, FLAG_COMPRESSED, FLAG_RESERVED, KIND_MASK, VERSION};
use crate::varint::{get_varint, put_varint, varint_fast, varint_len, varint_mid, Varint};
use crate::{Config, DecodeError, Frame, WireError};

/// Frames up to this size (header included) are assembled on the stack.
const SMALL_FRAME: usize = 128;

/// While a frame is incomplete, the decoder reserves room for at most this many
/// more bytes: the buffer grows with what the peer actually sends (`BytesMut`
/// grows geometrically on its own), never with the length its header announces.
const RESERVE_STEP: usize = 64 << 10;

/// Parsed frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub(crate) kind: FrameKind,
    pub(crate) compressed: bool,
    pub(crate) header_len: usize,
    pub(crate) body_len: usize,
}

/// Parses the header at the start of `b`; `Ok(None)` while it is incomplete. Every
/// check is made on the bytes present, so a bad version or token is reported as
/// soon as its first byte arrives.
#[inline]
pub(crate) fn parse_header(b: &[u8], config: &Config) -> Result<Option<Header>, WireError> {
    let Some(&v) = b.first() else { return Ok(None) };
    if v != VERSION {
        return Err(WireError::UnsupportedVersion(v));
    }
    let mut p = 1;
    if let Some(tok) = &config.token {
        let have = &b[1..b.len().min(5)];
        if have != &tok[..have.len()] {
            return Err(WireError::BadToken);
        }
        if have.len() < 4 {
            return Ok(None);
        }
        p = 5;
    }
    let Some(&k) = b.get(p) else { return Ok(None) };
    if k & FLAG_RESERVED != 0 {
        return Err(WireError::ReservedFlags(k));
    }
    let kind = FrameKind::from_code(k & KIND_MASK).ok_or(WireError::UnknownKind(k))?;
    let compressed = k & FLAG_COMPRESSED != 0;
    if compressed && !config.accept_compressed {
        return Err(WireError::CompressionRefused(k));
    }
    let len = match varint_fast(&b[p + 1..]) {
        Some((v, n)) => Varint::Done(v, n),
        None => get_varint(&b[p + 1..])?,
    };
    match len {
        Varint::Incomplete => Ok(None),
        Varint::Done(len, n) => {
            if len > config.limits.max_frame as u64 {
                return Err(WireError::FrameTooLarge {
                    len,
                    max: config.limits.max_frame,
                });
            }
            Ok(Some(Header {
                kind,
                compressed,
                header_len: p + 1 + n,
                body_len: len as usize,
            }))
        }
    }
}

/// Upper bound of lz4's expansion: one input byte can stand for at most 255 output
/// bytes, plus a small constant for the final literals.
fn lz4_max_output(compressed: usize) -> u64 {
    (compressed as u64).saturating_mul(255).saturating_add(64)
}

/// The request id at the start of a body of `kind`, if the kind has one and it reads.
#[inline]
fn leading_id(kind: FrameKind, body: &[u8]) -> Option<u64> {
    if !kind.has_request_id() {
        return None;
    }
    match varint_fast(body) {
        Some((id, _)) => Some(id),
        None => match get_varint(body) {
            Ok(Varint::Done(id, _)) => Some(id),
            _ => None,
        },
    }
}

/// Turns a received body into the frame, decompressing first if flagged. Every
/// error is a [`DecodeError::BadBody`]: the whole frame was there and is consumed.
#[inline]
fn finish(h: Header, body: Bytes, config: &Config) -> Result<Frame, DecodeError> {
    let bad = |id, error| DecodeError::BadBody {
        kind: h.kind,
        id,
        frame_len: h.header_len + h.body_len,
        error,
    };
    let body = if h.compressed {
        decompress(&body, config).map_err(|e| bad(None, e))?
    } else {
        body
    };
    // The text kinds (every console call and its answer) are built straight
    // into the frame returned; anything unusual takes the general parser below,
    // which reports the exact error.
    let body = match text_frame(h, body, &config.limits) {
        Ok(Ok(f)) => return Ok(f),
        Ok(Err((id, e))) => return Err(bad(id, e)),
        Err(body) => body,
    };
    // Read before `body` moves into the parser (no reference-count update).
    let id = leading_id(h.kind, &body);
    Frame::decode_body(h.kind, body, &config.limits).map_err(|e| bad(id, e))
}

/// Reads a varint at `*p` of `b` (any error: `None`).
#[inline(always)]
fn varint_at(b: &[u8], p: &mut usize) -> Option<u64> {
    let rest = b.get(*p..)?;
    let (v, n) = match varint_fast(rest).or_else(|| varint_mid(rest)) {
        Some(vn) => vn,
        None => match get_varint(rest) {
            Ok(Varint::Done(v, n)) => (v, n),
            _ => return None,
        },
    };
    *p += n;
    Some(v)
}

/// The fast path of the text kinds (`Console`, `ConsoleResponse`,
/// `DirectConsole`): the fields parsed from the body and the frame built once,
/// in place (`Ok(Ok(frame))`), or the one error this path reports itself
/// (`Ok(Err((id, error)))`: invalid UTF-8 in the text, after every other field
/// read).
/// Gives the body back (for the general parser, which finds and reports the
/// error) for any other kind, a compressed body, or any other error.
#[inline(always)]
fn text_frame(
    h: Header,
    body: Bytes,
    limits: &crate::Limits,
) -> Result<Result<Frame, (Option<u64>, WireError)>, Bytes> {
    if h.compressed
        || !matches!(
            h.kind,
            FrameKind::Console | FrameKind::ConsoleResponse | FrameKind::DirectConsole
        )
    {
        return Err(body);
    }
    let b: &[u8] = &body;
    let mut p = 0;
    let id = if h.kind == FrameKind::DirectConsole {
        0
    } else {
        match varint_at(b, &mut p) {
            Some(id) => id,
            None => return Err(body),
        }
    };
    let cmd = if h.kind == FrameKind::ConsoleResponse {
        None
    } else {
        let Some(n) = varint_at(b, &mut p) else {
            return Err(body);
        };
        if n > limits.max_name as u64 || n as usize > b.len() - p {
            return Err(body);
        }
        let (s, e) = (p, p + n as usize);
        match crate::Text::from_utf8_slice(&b[s..e], || body.slice(s..e)) {
            Ok(t) => {
                p = e;
                Some(t)
            }
            Err(_) => return Err(body),
        }
    };
    if b.len() - p > limits.max_string {
        return Err(body);
    }
    // The text is the rest of the body: the body's own handle, moved (no
    // reference-count update). Invalid UTF-8 there is the one error left, and
    // it is exactly the general parser's.
    let mut body = body;
    body.advance(p);
    let text = match crate::Text::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            let id = (h.kind != FrameKind::DirectConsole).then_some(id);
            return Ok(Err((id, e)));
        }
    };
    Ok(Ok(match (h.kind, cmd) {
        (FrameKind::Console, Some(cmd)) => Frame::Console { id, cmd, text },
        (FrameKind::DirectConsole, Some(cmd)) => Frame::DirectConsole { cmd, text },
        _ => Frame::ConsoleResponse { id, text },
    }))
}

fn decompress(body: &Bytes, config: &Config) -> Result<Bytes, WireError> {
    let (raw_len, n) = match get_varint(body)? {
        Varint::Done(v, n) => (v, n),
        Varint::Incomplete => {
            return Err(WireError::Truncated {
                field: "uncompressed length",
            })
        }
    };
    let block = &body[n..];
    // Both bounds are checked before the output buffer is allocated.
    if raw_len > config.limits.max_frame as u64 {
        return Err(WireError::FrameTooLarge {
            len: raw_len,
            max: config.limits.max_frame,
        });
    }
    if raw_len > lz4_max_output(block.len()) {
        return Err(WireError::Decompress(format!(
            "{} compressed bytes cannot expand to {raw_len}",
            block.len()
        )));
    }
    let mut out = vec![0u8; raw_len as usize];
    let got = lz4_flex::block::decompress_into(block, &mut out)
        .map_err(|e| WireError::Decompress(e.to_string()))?;
    if got != out.len() {
        return Err(WireError::Decompress(format!(
            "expanded to {got} bytes, header says {raw_len}"
        )));
    }
    Ok(Bytes::from(out))
}

/// Decodes frames from a byte stream, sans-IO: feed whatever arrived into a
/// `BytesMut` and call [`decode`](Decoder::decode) until it returns `Ok(None)`.
///
/// Input may be split at any byte. A decoded frame's byte fields are slices of the
/// buffer (no copy). See [`decode_recoverable`](Decoder::decode_recoverable) for
/// which errors leave the stream in step.
///
/// Memory: while a frame is incomplete the decoder reserves at most 64 KiB beyond
/// what arrived, not the length the header announces, so a peer that announces
/// `max_frame` and stalls pins little memory (frames up to the length set with
/// [`Decoder::reserve_whole_frames_up_to`] excepted: their whole length is
/// reserved at once).
///
/// `C` is where the decoder finds its [`Config`]: by default it holds its own
/// copy; many decoders (and encoders) may share one instead, e.g. through an
/// `Arc<Config>` or any other type that is `AsRef<Config>` (see [`FrameCodec`]).
#[derive(Debug, Clone, Default)]
pub struct Decoder<C = Config> {
    config: C,
    /// Frames up to this length (header included) have their whole length
    /// reserved once their header arrived (see
    /// [`Decoder::reserve_whole_frames_up_to`]); 0: none. (`u32`s: every
    /// idle session holds a decoder.)
    whole: u32,
    /// A frame of a bulk transfer reserved whole gets a buffer of at least
    /// this many bytes (see [`Decoder::bulk_room`]); 0: only its own length.
    bulk: u32,
}

impl<C: AsRef<Config>> Decoder<C> {
    /// A decoder with the given configuration (a [`Config`], or a shared one).
    pub fn new(config: C) -> Decoder<C> {
        Decoder {
            config,
            whole: 0,
            bulk: 0,
        }
    }

    /// Once the header of a frame of at most `limit` bytes (header included)
    /// arrived, reserve room for all of it at once, plus one 64 KiB step for
    /// what follows it in the same reads, so its body is not regrown (and
    /// copied) step by step as it arrives; longer frames keep the 64 KiB
    /// step. `limit` is what a peer that announces a frame and
    /// stalls can make the buffer reserve (never above `max_frame`, which the
    /// header check refuses first). Default 0: every frame grows by steps.
    pub fn reserve_whole_frames_up_to(&mut self, limit: usize) {
        self.whole = u32::try_from(limit).unwrap_or(u32::MAX);
    }

    /// When a frame of at least 64 KiB is reserved whole (see
    /// [`Decoder::reserve_whole_frames_up_to`]) and the buffer has too little
    /// room behind it (so it moves anyway), make the buffer hold at least
    /// `room` bytes, so the frames that follow it in a bulk transfer complete
    /// where they lie too, instead of the start of each being moved into a
    /// buffer sized for it. What a peer that announces a frame and stalls can
    /// make the buffer reserve becomes the larger of `room` and the whole
    /// frame plus one 64 KiB step. Default 0: the frame's own length.
    pub fn bulk_room(&mut self, room: usize) {
        self.bulk = u32::try_from(room).unwrap_or(u32::MAX);
    }

    /// The configuration.
    #[inline(always)]
    pub fn config(&self) -> &Config {
        self.config.as_ref()
    }

    /// Takes one complete frame off the front of `buf`. Returns `Ok(None)` (and
    /// reserves room for more of the frame, once its length is known and accepted)
    /// when more bytes are needed.
    ///
    /// Same as [`decode_recoverable`](Decoder::decode_recoverable) with the error
    /// flattened: after an error inside a body the frame was consumed and decoding
    /// may go on; after any other error it must not.
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        self.decode_as(buf)
    }

    /// Like [`decode`](Decoder::decode), but says whether the decoder is still in
    /// step after an error:
    /// - [`DecodeError::BadBody`]: the header was valid and the whole frame arrived,
    ///   but the body is malformed or breaks a limit (invalid UTF-8, a bad varint in
    ///   the body, a DataFrame too deep, JSON too long or invalid, a corrupt lz4
    ///   block…). Exactly that frame was taken off `buf`; the caller may answer its
    ///   `id` (if any) with an error frame and call `decode` again.
    /// - [`DecodeError::Fatal`]: an error in the header (version, token, kind byte,
    ///   refused compression, length): nothing was consumed and the stream cannot be
    ///   resynchronised; close the connection.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use zs_wire::{Config, DecodeError, Decoder, Frame, FrameKind, WireError};
    /// let mut dec = Decoder::new(Config::default());
    /// // A Console request (id 7) whose name is not UTF-8, then a Keepalive.
    /// let mut buf = BytesMut::from(&[0x01, 0x01, 0x03, 0x07, 0x01, 0xff, 0x01, 0x19, 0x00][..]);
    /// let e = dec.decode_recoverable(&mut buf).unwrap_err();
    /// assert!(e.is_recoverable());
    /// assert_eq!(e, DecodeError::BadBody {
    ///     kind: FrameKind::Console,
    ///     id: Some(7),
    ///     frame_len: 6,
    ///     error: WireError::InvalidUtf8,
    /// });
    /// assert_eq!(dec.decode_recoverable(&mut buf), Ok(Some(Frame::Keepalive)));
    /// ```
    pub fn decode_recoverable(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        self.decode_as(buf)
    }

    /// [`decode_recoverable`](Decoder::decode_recoverable) with the error
    /// converted where it is made, so the frame is returned without being
    /// moved from one `Result` into another.
    #[inline(always)]
    fn decode_as<E: From<DecodeError>>(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, E> {
        let h = match parse_header(buf, self.config()) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => return Err(E::from(DecodeError::Fatal(e))),
        };
        let total = h.header_len + h.body_len;
        if buf.len() < total {
            let more = total - buf.len();
            buf.reserve(if total <= self.whole as usize {
                let own = more + RESERVE_STEP;
                if total >= RESERVE_STEP && buf.capacity() - buf.len() < own {
                    // It moves anyway: into the bulk room.
                    own.max((self.bulk as usize).saturating_sub(buf.len()))
                } else {
                    own
                }
            } else {
                more.min(RESERVE_STEP)
            });
            return Ok(None);
        }
        // One split (one reference-count increment) for the whole frame; skipping
        // the header of the frozen `Bytes` is pointer arithmetic.
        let mut body = buf.split_to(total).freeze();
        body.advance(h.header_len);
        match finish(h, body, self.config()) {
            Ok(f) => Ok(Some(f)),
            Err(e) => Err(E::from(e)),
        }
    }
}

/// Encodes frames into a `BytesMut`, compressing bodies above the configured
/// threshold when that makes them smaller.
///
/// `C` is where the encoder finds its [`Config`], as for [`Decoder`].
#[derive(Debug, Clone, Default)]
pub struct Encoder<C = Config> {
    config: C,
    scratch: Vec<u8>,
    packed: Vec<u8>,
}

impl<C: AsRef<Config>> Encoder<C> {
    /// An encoder with the given configuration (a [`Config`], or a shared one).
    pub fn new(config: C) -> Encoder<C> {
        Encoder {
            config,
            scratch: Vec::new(),
            packed: Vec::new(),
        }
    }

    /// The configuration.
    #[inline(always)]
    pub fn config(&self) -> &Config {
        self.config.as_ref()
    }

    /// Appends `frame` to `dst` (reserving the exact size first). Fails, writing
    /// nothing, if the frame breaks the configured limits (body above `max_frame`,
    /// name above `max_name`, text above `max_string`) or has an inconsistent range.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        // The text kinds (every console call and answer) take a direct path:
        // the head is assembled in a small array and name and text are appended
        // as they are; the same bytes as the general path.
        // (With compression configured, every frame takes the general path.)
        match frame {
            _ if self.config().compress_threshold.is_some() => {}
            Frame::Console { id, cmd, text } => {
                return self.encode_text(
                    FrameKind::Console,
                    Some(*id),
                    Some(cmd.as_str()),
                    text,
                    dst,
                )
            }
            Frame::ConsoleResponse { id, text } => {
                return self.encode_text(FrameKind::ConsoleResponse, Some(*id), None, text, dst)
            }
            Frame::DirectConsole { cmd, text } => {
                return self.encode_text(
                    FrameKind::DirectConsole,
                    None,
                    Some(cmd.as_str()),
                    text,
                    dst,
                )
            }
            _ => {}
        }
        self.encode_general(frame, dst)
    }

    /// Appends the frame `ConsoleResponse { id, text }` to `dst` from its
    /// parts, without a [`Frame`] built for it: the same bytes and the same
    /// checks as [`Encoder::encode`] of that frame (with compression
    /// configured it takes that path, and copies `text` into a [`Text`](crate::Text)
    /// for it). `text` is any `&str` (a [`Text`](crate::Text) coerces), so an
    /// answer borrowed from the request's bytes needs no owned value.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use zs_wire::{Config, Encoder, Frame, Text};
    /// let config = Config::with_token(*b"zsv1");
    /// let text = Text::from("pong");
    /// let mut dst = BytesMut::new();
    /// Encoder::new(config).encode_console_response(300, &text, &mut dst).unwrap();
    /// let frame = Frame::ConsoleResponse { id: 300, text };
    /// assert_eq!(&dst[..], &frame.to_bytes(&config).unwrap()[..]);
    /// ```
    pub fn encode_console_response(
        &mut self,
        id: u64,
        text: &str,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        if self.config().compress_threshold.is_some() {
            let frame = Frame::ConsoleResponse {
                id,
                text: crate::Text::from(text),
            };
            return self.encode_general(&frame, dst);
        }
        self.encode_text(FrameKind::ConsoleResponse, Some(id), None, text, dst)
    }

    /// [`Encoder::encode`] of `Console`, `ConsoleResponse` and `DirectConsole`.
    #[inline]
    fn encode_text(
        &mut self,
        kind: FrameKind,
        id: Option<u64>,
        name: Option<&str>,
        text: &str,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        let limits = &self.config().limits;
        let name = name.map(|n| n.as_bytes());
        let text = text.as_bytes();
        if let Some(n) = name {
            if n.len() > limits.max_name {
                return Err(WireError::NameTooLong {
                    len: n.len() as u64,
                    max: limits.max_name,
                });
            }
        }
        if text.len() > limits.max_string {
            return Err(WireError::ValueTooLarge {
                len: text.len() as u64,
                max: limits.max_string,
            });
        }
        let body_len = id.map_or(0, varint_len)
            + name.map_or(0, |n| varint_len(n.len() as u64) + n.len())
            + text.len();
        if body_len > limits.max_frame {
            return Err(WireError::FrameTooLarge {
                len: body_len as u64,
                max: limits.max_frame,
            });
        }
        // version, token, kind, length, id, name length: at most 1+4+1+10+10+10.
        let mut head = [0u8; 36];
        let mut n = 0;
        head[0] = VERSION;
        n += 1;
        if let Some(t) = &self.config().token {
            head[1..5].copy_from_slice(t);
            n += 4;
        }
        head[n] = kind.code();
        n += 1;
        n += put_varint_at(&mut head[n..], body_len as u64);
        if let Some(id) = id {
            n += put_varint_at(&mut head[n..], id);
        }
        if let Some(name) = name {
            n += put_varint_at(&mut head[n..], name.len() as u64);
        }
        // The head goes in with one fixed-size store when it fits in 16
        // bytes (every head but one with a 10-byte id or length): a
        // constant-size copy compiles to one 16-byte store, where a copy of
        // `n` bytes is a call to memcpy; the slack is cut off at once.
        dst.reserve(HEAD_STORE.max(n) + body_len);
        if n <= HEAD_STORE {
            let at = dst.len();
            dst.extend_from_slice(&head[..HEAD_STORE]);
            dst.truncate(at + n);
        } else {
            dst.extend_from_slice(&head[..n]);
        }
        if let Some(name) = name {
            dst.extend_from_slice(name);
        }
        dst.extend_from_slice(text);
        Ok(())
    }

    /// Writes the header of a frame of `kind` whose (uncompressed) body is
    /// `body_len` bytes: the header is encoded apart from the body, so a large
    /// payload can follow from its own buffer (a vectored write) instead of
    /// being copied behind the header. Fails if `body_len` is above `max_frame`.
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use zs_wire::{Config, Encoder, Frame, FrameKind, Text};
    /// let config = Config::default();
    /// let frame = Frame::CompleteBuffer { cmd: Text::from("blob"), data: Bytes::from(vec![7u8; 300]) };
    /// // The header and the name, then the payload bytes as they are.
    /// let mut head = BytesMut::new();
    /// Encoder::new(config).encode_header(FrameKind::CompleteBuffer, 1 + 4 + 300, &mut head).unwrap();
    /// head.extend_from_slice(&[4, b'b', b'l', b'o', b'b']);
    /// let mut wire = head.to_vec();
    /// wire.extend_from_slice(&[7u8; 300]);
    /// assert_eq!(wire, frame.to_bytes(&config).unwrap());
    /// ```
    pub fn encode_header(
        &self,
        kind: FrameKind,
        body_len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        if body_len > self.config().limits.max_frame {
            return Err(WireError::FrameTooLarge {
                len: body_len as u64,
                max: self.config().limits.max_frame,
            });
        }
        dst.reserve(self.header_len(body_len));
        self.put_header(dst, kind.code(), body_len);
        Ok(())
    }

    /// [`Encoder::encode`], except that a frame ending in a byte payload of at
    /// least `apart` bytes (`BigStream`, `CompleteBuffer`) is written without
    /// that payload, which is returned (a clone of the frame's `Bytes`, no
    /// copy) to be sent right behind what was written, for example in one
    /// vectored write: the same bytes on the wire, one copy fewer. With
    /// compression configured the frame is encoded whole (`None`).
    ///
    /// ```
    /// use bytes::{Bytes, BytesMut};
    /// use zs_wire::{Config, Encoder, Frame, Text};
    /// let config = Config::default();
    /// let frame = Frame::BigStream {
    ///     id: 3, cmd: Text::from("up"), offset: 0, total: 5000, last: true,
    ///     data: Bytes::from(vec![9u8; 5000]),
    /// };
    /// let mut head = BytesMut::new();
    /// let payload = Encoder::new(config).encode_apart(&frame, 4096, &mut head).unwrap();
    /// let mut wire = head.to_vec();
    /// wire.extend_from_slice(&payload.unwrap());
    /// assert_eq!(wire, frame.to_bytes(&config).unwrap());
    /// ```
    pub fn encode_apart(
        &mut self,
        frame: &Frame,
        apart: usize,
        dst: &mut BytesMut,
    ) -> Result<Option<Bytes>, WireError> {
        let payload = match frame.trailing_payload() {
            Some(p) if p.len() >= apart && self.config().compress_threshold.is_none() => p,
            _ => return self.encode(frame, dst).map(|()| None),
        };
        let body_len = self.checked_body_len(frame)?;
        dst.reserve(self.header_len(body_len) + body_len - payload.len());
        self.put_header(dst, frame.kind().code(), body_len);
        frame.put_body_head(dst);
        Ok(Some(payload.clone()))
    }

    /// Appends the call frame `Console { id, cmd, text }` to `dst` from its
    /// parts, without a [`Frame`] built for it (a client's call): the same
    /// bytes and the same checks as [`Encoder::encode`] of that frame, and
    /// nothing written when it fails (with compression configured it takes
    /// that path).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use zs_wire::{Config, Encoder, Frame, Text};
    /// let config = Config::with_token(*b"zsv1");
    /// let (cmd, text) = (Text::from("echo"), Text::from("ping"));
    /// let mut dst = BytesMut::new();
    /// Encoder::new(config).encode_console(300, &cmd, &text, &mut dst).unwrap();
    /// let frame = Frame::Console { id: 300, cmd, text };
    /// assert_eq!(&dst[..], &frame.to_bytes(&config).unwrap()[..]);
    /// ```
    pub fn encode_console(
        &mut self,
        id: u64,
        cmd: &crate::Text,
        text: &crate::Text,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        if self.config().compress_threshold.is_some() {
            let frame = Frame::Console {
                id,
                cmd: cmd.clone(),
                text: text.clone(),
            };
            return self.encode_general(&frame, dst);
        }
        self.encode_text(FrameKind::Console, Some(id), Some(cmd.as_str()), text, dst)
    }

    /// The frame's (uncompressed) body length, after the encoder-side checks
    /// (names, texts, ranges, `max_frame`).
    fn checked_body_len(&self, frame: &Frame) -> Result<usize, WireError> {
        let limits = &self.config().limits;
        frame.check(limits)?;
        let body_len = frame.body_len();
        if body_len > limits.max_frame {
            return Err(WireError::FrameTooLarge {
                len: body_len as u64,
                max: limits.max_frame,
            });
        }
        Ok(body_len)
    }

    /// The general path of [`Encoder::encode`].
    fn encode_general(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        let body_len = self.checked_body_len(frame)?;
        let code = frame.kind().code();
        if let Some(t) = self.config().compress_threshold {
            if body_len >= t && self.try_compressed(frame, code, body_len, dst) {
                return Ok(());
            }
        }
        let total = self.header_len(body_len) + body_len;
        dst.reserve(total);
        if total <= SMALL_FRAME {
            // Small frames are assembled on the stack and appended with one copy:
            // many one-byte appends to a `BytesMut` each cost a call.
            let mut buf = [0u8; SMALL_FRAME];
            let mut w: &mut [u8] = &mut buf[..total];
            self.put_header(&mut w, code, body_len);
            frame.put_body(&mut w);
            dst.put_slice(&buf[..total]);
        } else {
            self.put_header(dst, code, body_len);
            frame.put_body(dst);
        }
        Ok(())
    }

    fn header_len(&self, body_len: usize) -> usize {
        1 + if self.config().token.is_some() { 4 } else { 0 } + 1 + varint_len(body_len as u64)
    }

    fn put_header(&self, dst: &mut impl BufMut, kind_byte: u8, body_len: usize) {
        dst.put_u8(VERSION);
        if let Some(t) = &self.config().token {
            dst.put_slice(t);
        }
        dst.put_u8(kind_byte);
        put_varint(dst, body_len as u64);
    }

    /// Writes the compressed form if it is smaller; returns whether it did.
    fn try_compressed(
        &mut self,
        frame: &Frame,
        code: u8,
        body_len: usize,
        dst: &mut BytesMut,
    ) -> bool {
        self.scratch.clear();
        self.scratch.reserve(body_len);
        frame.put_body(&mut self.scratch);
        self.packed.clear();
        self.packed
            .resize(lz4_flex::block::get_maximum_output_size(body_len), 0);
        let Ok(n) = lz4_flex::block::compress_into(&self.scratch, &mut self.packed) else {
            return false;
        };
        let packed_body = varint_len(body_len as u64) + n;
        if packed_body >= body_len {
            // Not worth it: send the raw body we already built.
            dst.reserve(self.header_len(body_len) + body_len);
            self.put_header(dst, code, body_len);
            dst.put_slice(&self.scratch);
            return true;
        }
        dst.reserve(self.header_len(packed_body) + packed_body);
        self.put_header(dst, code | FLAG_COMPRESSED, packed_body);
        put_varint(dst, body_len as u64);
        dst.put_slice(&self.packed[..n]);
        true
    }
}

/// Bytes of a text frame's head stored at once by [`Encoder::encode_text`].
const HEAD_STORE: usize = 16;

/// Writes `v` as a varint at the start of `dst` (room for 10 bytes); returns its length.
#[inline]
fn put_varint_at(dst: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        dst[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    dst[i] = v as u8;
    i + 1
}

/// An [`Encoder`] and a [`Decoder`] sharing one [`Config`]: the codec of one connection.
///
/// ```
/// use bytes::BytesMut;
/// use zs_wire::{Config, Frame, FrameCodec, Text};
/// let mut codec = FrameCodec::new(Config::with_token(*b"zsv1"));
/// let mut wire = BytesMut::new();
/// let ping = Frame::Console { id: 1, cmd: Text::from("echo"), text: Text::from("hi") };
/// codec.encode(&ping, &mut wire).unwrap();
/// let mut rx = BytesMut::new();
/// for b in wire.iter() {
///     // bytes arrive one by one: nothing until the frame is complete
///     rx.extend_from_slice(&[*b]);
///     if rx.len() < wire.len() {
///         assert_eq!(codec.decode(&mut rx).unwrap(), None);
///     }
/// }
/// assert_eq!(codec.decode(&mut rx).unwrap(), Some(ping));
/// ```
///
/// `FrameCodec::new(config)` gives each half its own copy of a [`Config`]
/// (two copies of about 70 bytes). A server with many connections can share
/// one configuration instead: any `C` that is `Clone + AsRef<Config>` works,
/// e.g. an `Arc<Config>`, so that each half holds a pointer.
///
/// ```
/// use std::sync::Arc;
/// use zs_wire::{Config, FrameCodec};
/// let shared = Arc::new(Config::with_token(*b"zsv1"));
/// let codec = FrameCodec::new(shared.clone());
/// assert_eq!(codec.decoder.config(), &*shared);
/// assert!(std::mem::size_of_val(&codec) < std::mem::size_of::<FrameCodec>());
/// ```
#[derive(Debug, Clone, Default)]
pub struct FrameCodec<C = Config> {
    /// The decoding half.
    pub decoder: Decoder<C>,
    /// The encoding half.
    pub encoder: Encoder<C>,
}

impl<C: AsRef<Config> + Clone> FrameCodec<C> {
    /// A codec with the given configuration for both directions (a
    /// [`Config`], copied into each half, or a shared one, cloned).
    pub fn new(config: C) -> FrameCodec<C> {
        FrameCodec {
            decoder: Decoder::new(config.clone()),
            encoder: Encoder::new(config),
        }
    }

    /// See [`Decoder::decode`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        self.decoder.decode(buf)
    }

    /// See [`Decoder::decode_recoverable`].
    pub fn decode_recoverable(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        self.decoder.decode_recoverable(buf)
    }

    /// See [`Encoder::encode`].
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encoder.encode(frame, dst)
    }
}

impl Frame {
    /// Decodes exactly one complete frame held in `src` (for example the payload of
    /// a [`Frame::SeqData`]). Fields are zero-copy slices of `src`.
    pub fn decode(src: &Bytes, config: &Config) -> Result<Frame, WireError> {
        Frame::decode_recoverable(src, config).map_err(DecodeError::into_error)
    }

    /// [`Frame::decode`] telling a bad body ([`DecodeError::BadBody`]: the header
    /// was valid and `src` held exactly the frame, so the caller may answer its id
    /// and go on) from a bad header or a size mismatch ([`DecodeError::Fatal`]).
    pub fn decode_recoverable(src: &Bytes, config: &Config) -> Result<Frame, DecodeError> {
        let h = parse_header(src, config)
            .map_err(DecodeError::Fatal)?
            .ok_or(DecodeError::Fatal(WireError::Truncated { field: "header" }))?;
        let total = h.header_len + h.body_len;
        match src.len().cmp(&total) {
            std::cmp::Ordering::Less => {
                Err(DecodeError::Fatal(WireError::Truncated { field: "body" }))
            }
            std::cmp::Ordering::Greater => Err(DecodeError::Fatal(WireError::TrailingBytes(
                src.len() - total,
            ))),
            std::cmp::Ordering::Equal => finish(h, src.slice(h.header_len..), config),
        }
    }

    /// Encodes this frame into a new buffer (see [`Encoder::encode`]).
    pub fn to_bytes(&self, config: &Config) -> Result<Bytes, WireError> {
        let mut out = BytesMut::new();
        Encoder::new(*config).encode(self, &mut out)?;
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use proptest::prelude::*;

    /// What the general parser makes of a body (the reference for the fast
    /// path of the text kinds).
    fn general(h: Header, body: Bytes, config: &Config) -> Result<Frame, DecodeError> {
        let id = leading_id(h.kind, &body);
        Frame::decode_body(h.kind, body, &config.limits).map_err(|error| DecodeError::BadBody {
            kind: h.kind,
            id,
            frame_len: h.header_len + h.body_len,
            error,
        })
    }

    fn header(kind: FrameKind, body: &[u8]) -> Header {
        Header {
            kind,
            compressed: false,
            header_len: 3,
            body_len: body.len(),
        }
    }

    const TEXT_KINDS: [FrameKind; 3] = [
        FrameKind::Console,
        FrameKind::ConsoleResponse,
        FrameKind::DirectConsole,
    ];

    #[test]
    fn text_kinds_take_the_fast_path_and_build_the_same_frames() {
        let config = Config::default();
        let long = "y".repeat(100);
        for (name, text) in [("echo", "hi"), ("", ""), ("é名", long.as_str())] {
            for f in [
                Frame::Console {
                    id: 300,
                    cmd: crate::Text::from(name),
                    text: crate::Text::from(text),
                },
                Frame::ConsoleResponse {
                    id: 1 << 40,
                    text: crate::Text::from(text),
                },
                Frame::DirectConsole {
                    cmd: crate::Text::from(name),
                    text: crate::Text::from(text),
                },
            ] {
                let mut wire = BytesMut::from(&f.to_bytes(&config).unwrap()[..]);
                let h = parse_header(&wire, &config).unwrap().unwrap();
                let body = Bytes::copy_from_slice(&wire[h.header_len..]);
                // The fast path answers by itself (it does not fall back)...
                assert!(matches!(
                    text_frame(h, body.clone(), &config.limits),
                    Ok(Ok(ref g)) if *g == f
                ));
                // ...and the decoder returns the frame.
                assert_eq!(Decoder::new(config).decode(&mut wire).unwrap(), Some(f));
            }
        }
    }

    /// `encode_console_response` writes what `encode` writes for the frame
    /// (heads below and above the one-store size, with and without a token,
    /// with compression), and fails as it does, writing nothing.
    #[test]
    fn console_responses_from_their_parts_are_the_frames_bytes() {
        let long = "z".repeat(700);
        let configs = [
            Config::default(),
            Config::with_token(*b"zsv1"),
            Config::with_token(*b"zsv1").compression(64),
            Config {
                limits: Limits {
                    max_string: 8,
                    ..Limits::default()
                },
                ..Config::default()
            },
        ];
        for config in configs {
            for id in [0, 1, 300, 1 << 40, u64::MAX] {
                for text in ["", "pong", "é名", long.as_str()] {
                    let text = crate::Text::from(text);
                    let frame = Frame::ConsoleResponse {
                        id,
                        text: text.clone(),
                    };
                    let mut want = BytesMut::from(&b"before"[..]);
                    let w = Encoder::new(config).encode(&frame, &mut want);
                    let mut got = BytesMut::from(&b"before"[..]);
                    let g = Encoder::new(config).encode_console_response(id, &text, &mut got);
                    assert_eq!(g, w, "{id} {}", text.len());
                    assert_eq!(got, want, "{id} {}", text.len());
                }
            }
        }
    }

    #[test]
    fn text_kind_errors_are_the_general_parsers() {
        let config = Config {
            limits: Limits {
                max_name: 4,
                max_string: 8,
                ..Limits::default()
            },
            ..Config::default()
        };
        let cases: [&[u8]; 9] = [
            &[],                                                           // no id
            &[0x80],                                                       // truncated id
            &[0x80, 0x00],                                                 // non-canonical id
            &[7, 5, b'a', b'b', b'c', b'd', b'e'],                         // name too long
            &[7, 3, b'a'],                                                 // truncated name
            &[7, 1, 0xff, b'x'],                                           // name not UTF-8
            &[7, 1, b'a', 0xc3],                                           // text not UTF-8
            &[7, 0, b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'8'], // text too long
            &[7, 2, 0xc3, 0xa9, b'o', b'k'],                               // valid
        ];
        for kind in TEXT_KINDS {
            for body in cases {
                let h = header(kind, body);
                let want = general(h, Bytes::copy_from_slice(body), &config);
                let got = finish(h, Bytes::copy_from_slice(body), &config);
                assert_eq!(got, want, "{kind:?} {body:?}");
            }
        }
    }

    /// `encode_console` writes what `encode` writes for the call frame
    /// (short and long names and texts, with and without a token, with
    /// compression, over the limits) and fails as it does, writing nothing.
    #[test]
    fn console_calls_from_their_parts_are_the_frames_bytes() {
        let long = "q".repeat(900);
        let limited = Config {
            limits: Limits {
                max_string: 8,
                max_name: 4,
                ..Limits::default()
            },
            ..Config::default()
        };
        for config in [
            Config::default(),
            Config::with_token(*b"zsv1"),
            Config::with_token(*b"zsv1").compression(64),
            limited,
        ] {
            for id in [1, 127, 128, 1 << 35, u64::MAX] {
                for (cmd, text) in [("echo", ""), ("echo-ref", "ping"), ("x", long.as_str())] {
                    let (cmd, text) = (crate::Text::from(cmd), crate::Text::from(text));
                    let frame = Frame::Console {
                        id,
                        cmd: cmd.clone(),
                        text: text.clone(),
                    };
                    let mut want = BytesMut::from(&b"ahead"[..]);
                    let w = Encoder::new(config).encode(&frame, &mut want);
                    let mut got = BytesMut::from(&b"ahead"[..]);
                    let g = Encoder::new(config).encode_console(id, &cmd, &text, &mut got);
                    assert_eq!(g, w, "{id} {} {}", cmd.len(), text.len());
                    assert_eq!(got, want, "{id} {} {}", cmd.len(), text.len());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_the_general_parser(
            k in 0usize..3,
            body in proptest::collection::vec(any::<u8>(), 0..40),
            max_name in 0usize..8,
            max_string in 0usize..40,
        ) {
            let config = Config {
                limits: Limits { max_name, max_string, ..Limits::default() },
                ..Config::default()
            };
            let h = header(TEXT_KINDS[k], &body);
            let want = general(h, Bytes::from(body.clone()), &config);
            let got = finish(h, Bytes::from(body), &config);
            prop_assert_eq!(got, want);
        }
    }
}
