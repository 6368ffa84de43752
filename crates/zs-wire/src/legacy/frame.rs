//! Command frames: what the sequence payloads carry, concatenated.
//!
//! ```text
//! request:  F0F0F0F0  type  u32 len  u8 hashId  u16 hashLen  hash  u8 cipher  payload[len]  F1F1F1F1
//! response: F0F0F0F0        i32 len  u8 hashId  u16 hashLen  hash  u8 cipher  payload[len]  F1F1F1F1
//! ```
//! type: `F1` console, `2F` stream, `F3` direct console, `4F` direct stream (the
//! payload is a DFE `[String name, String text]` or `[String name, Stream dfe]`);
//! the payload is encrypted (same length) with the cipher named, and the hash
//! covers the plaintext. A response has no type byte and no request id: it answers
//! the one request in flight. Other frames: BigStream `F0F0F0F0 F5 i64 total u32
//! cmdLen cmd F1F1F1F1` then chunks `i32 size, u8 compressed, bytes`; CompleteBuffer
//! `F0F0F0F0 6F u32 rawSize u32 compSize u32 cmdLen cmd F1F1F1F1` then the raw
//! body; signals `F0F0F0F0 F6|F7 F1F1F1F1` (BigStream: next chunk / done).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::dfe::{Dfe, DfeValue};
use super::{too_large, LegacyError, LegacyLimits};

/// Frame head token.
pub const HEAD: u32 = 0xF0F0_F0F0;
/// Frame tail token.
pub const TAIL: u32 = 0xF1F1_F1F1;
/// BigStream header type.
pub const BIG_STREAM: u8 = 0xF5;
/// CompleteBuffer header type.
pub const COMPLETE_BUFFER: u8 = 0x6F;
/// Longest hash a frame may carry (the 256-byte LMD hash).
pub const MAX_HASH: usize = 256;

/// The four command kinds of a request frame (its type byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmdKind {
    /// `F1`: text in, text out.
    Console = 0xF1,
    /// `2F`: DFE in, DFE out.
    Stream = 0x2F,
    /// `F3`: text, no response.
    DirectConsole = 0xF3,
    /// `4F`: DFE, no response.
    DirectStream = 0x4F,
}

impl CmdKind {
    /// The kind for a type byte.
    pub fn from_u8(b: u8) -> Option<CmdKind> {
        Some(match b {
            0xF1 => CmdKind::Console,
            0x2F => CmdKind::Stream,
            0xF3 => CmdKind::DirectConsole,
            0x4F => CmdKind::DirectStream,
            _ => return None,
        })
    }

    /// Whether the peer answers this kind with a response frame.
    pub fn answered(self) -> bool {
        matches!(self, CmdKind::Console | CmdKind::Stream)
    }

    /// Whether the body is a DFE (stream kinds) rather than text.
    pub fn is_stream(self) -> bool {
        matches!(self, CmdKind::Stream | CmdKind::DirectStream)
    }
}

/// BigStream flow-control signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// `F6`: the receiver took a chunk and wants the next.
    Fragment = 0xF6,
    /// `F7`: the receiver has the whole BigStream.
    Done = 0xF7,
}

/// Ciphers and hashes, supplied by the glue crate (`zs-legacy` implements it with
/// `zs_crypto::legacy`). Ids are the originals' `TCipherSecurity` /
/// `THashSecurity` ordinals.
pub trait FrameCrypto {
    /// The frame hash of `plain` (the originals' `TCipher.GenerateHashByte`,
    /// including its rule that 1..=5-byte payloads always carry an MD5, and that
    /// empty payloads carry nothing). Unknown id: [`LegacyError::UnknownHash`].
    fn hash(&self, alg: u8, plain: &[u8]) -> Result<Vec<u8>, LegacyError>;
    /// Encrypts in place with cipher `cipher` and the connection's key.
    fn encrypt(&self, cipher: u8, data: &mut [u8]) -> Result<(), LegacyError>;
    /// Decrypts in place.
    fn decrypt(&self, cipher: u8, data: &mut [u8]) -> Result<(), LegacyError>;
}

/// The plaintext profile: cipher 0 only; hash ids 0 (none), 1 (FastMD5) and 2
/// (MD5). Anything else is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainCrypto;

impl FrameCrypto for PlainCrypto {
    fn hash(&self, alg: u8, plain: &[u8]) -> Result<Vec<u8>, LegacyError> {
        if alg > 2 {
            return Err(LegacyError::UnknownHash(alg));
        }
        Ok(if plain.is_empty() || (alg == 0 && plain.len() >= 6) {
            Vec::new()
        } else {
            super::seq::md5(plain).to_vec()
        })
    }
    fn encrypt(&self, cipher: u8, _data: &mut [u8]) -> Result<(), LegacyError> {
        match cipher {
            0 => Ok(()),
            c => Err(LegacyError::UnknownCipher(c)),
        }
    }
    fn decrypt(&self, cipher: u8, data: &mut [u8]) -> Result<(), LegacyError> {
        self.encrypt(cipher, data)
    }
}

/// One decoded frame. Payloads are decrypted and their hash checked.
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyFrame {
    /// A request (or a direct command).
    Request {
        /// Its kind.
        kind: CmdKind,
        /// The hash id it carried.
        hash: u8,
        /// The cipher it was encrypted with (answer with the same).
        cipher: u8,
        /// Plaintext payload: a DFE (see [`decode_command`]).
        payload: Bytes,
    },
    /// The response to the request in flight.
    Response {
        /// The hash id it carried.
        hash: u8,
        /// The cipher it was encrypted with.
        cipher: u8,
        /// Plaintext: console text (UTF-8; one `00` byte means empty) or a DFE.
        payload: Bytes,
    },
    /// One BigStream chunk (the header is folded into the first).
    BigStreamChunk {
        /// Command name.
        cmd: String,
        /// Where `data` starts.
        offset: u64,
        /// The whole size.
        total: u64,
        /// Final chunk: answer with [`SignalKind::Done`], else with
        /// [`SignalKind::Fragment`].
        last: bool,
        /// Chunk bytes.
        data: Bytes,
    },
    /// A whole CompleteBuffer.
    CompleteBuffer {
        /// Command name.
        cmd: String,
        /// The body.
        data: Bytes,
    },
    /// A BigStream signal from the receiver of our BigStream.
    Signal(SignalKind),
}

#[derive(Debug)]
enum State {
    Frames,
    Big {
        cmd: String,
        total: u64,
        done: u64,
    },
    /// `len` body bytes to come; `raw` is the decompressed size when the body is
    /// a compressed container.
    Complete {
        cmd: String,
        len: usize,
        raw: Option<usize>,
    },
}

/// The frame parser of one connection (sans-IO).
#[derive(Debug)]
pub struct FrameDecoder {
    limits: LegacyLimits,
    state: State,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl FrameDecoder {
    /// A decoder with these limits.
    pub fn new(limits: LegacyLimits) -> FrameDecoder {
        FrameDecoder {
            limits,
            state: State::Frames,
        }
    }

    /// Whether a BigStream or CompleteBuffer body is being received.
    pub fn in_body(&self) -> bool {
        !matches!(self.state, State::Frames)
    }

    /// Takes the next whole frame from the front of `src` (`Ok(None)`: more bytes
    /// needed; nothing is consumed). `expect_response`: this side has a request in
    /// flight, so the next frame is its response (it has no type byte), as in the
    /// originals. Each size is checked against the limits as soon as it arrives.
    pub fn decode(
        &mut self,
        src: &mut BytesMut,
        expect_response: bool,
        crypto: &dyn FrameCrypto,
    ) -> Result<Option<LegacyFrame>, LegacyError> {
        match &mut self.state {
            State::Big { cmd, total, done } => {
                if *total == *done {
                    // An empty BigStream: its only (empty) chunk.
                    let f = LegacyFrame::BigStreamChunk {
                        cmd: std::mem::take(cmd),
                        offset: 0,
                        total: 0,
                        last: true,
                        data: Bytes::new(),
                    };
                    self.state = State::Frames;
                    return Ok(Some(f));
                }
                if src.len() < 5 {
                    return Ok(None);
                }
                let size = i32::from_le_bytes([src[0], src[1], src[2], src[3]]);
                if size < 0 || size as usize > self.limits.max_big_chunk {
                    return Err(too_large(
                        "BigStream chunk",
                        size as i64 as u64,
                        self.limits.max_big_chunk,
                    ));
                }
                let compressed = match src[4] {
                    0 => false,
                    1 => true,
                    b => {
                        return Err(LegacyError::BadCommand(format!(
                            "BigStream chunk compression flag {b}"
                        )))
                    }
                };
                let left = *total - *done;
                if !compressed && (size as u64 > left || size == 0) {
                    return Err(LegacyError::BadCommand(format!(
                        "BigStream chunk of {size} bytes with {left} left"
                    )));
                }
                let size = size as usize;
                if src.len() < 5 + size {
                    return Ok(None);
                }
                src.advance(5);
                let data = src.split_to(size).freeze();
                let data = if compressed {
                    // The parallel container (`SendDataCompressed`), at most
                    // what is left of the stream and the chunk limit.
                    let limit = (left.min(self.limits.max_big_chunk as u64)) as usize;
                    let d = Bytes::from(super::compress::parallel_decompress(&data, limit)?);
                    if d.is_empty() {
                        return Err(LegacyError::BadCommand(
                            "empty compressed BigStream chunk".into(),
                        ));
                    }
                    d
                } else {
                    data
                };
                let size = data.len() as u64;
                let offset = *done;
                *done += size;
                let last = *done == *total;
                let f = LegacyFrame::BigStreamChunk {
                    cmd: if last {
                        std::mem::take(cmd)
                    } else {
                        cmd.clone()
                    },
                    offset,
                    total: *total,
                    last,
                    data,
                };
                if last {
                    self.state = State::Frames;
                }
                return Ok(Some(f));
            }
            State::Complete { cmd, len, raw } => {
                if src.len() < *len {
                    return Ok(None);
                }
                let mut data = src.split_to(*len).freeze();
                if let Some(raw) = *raw {
                    let d = super::compress::parallel_decompress(&data, raw)?;
                    if d.len() != raw {
                        return Err(LegacyError::BadCompressed(format!(
                            "CompleteBuffer container gave {} bytes, {raw} announced",
                            d.len()
                        )));
                    }
                    data = Bytes::from(d);
                }
                let f = LegacyFrame::CompleteBuffer {
                    cmd: std::mem::take(cmd),
                    data,
                };
                self.state = State::Frames;
                return Ok(Some(f));
            }
            State::Frames => {}
        }
        if src.len() < 4 {
            return Ok(None);
        }
        let head = u32_at(src, 0);
        if head != HEAD {
            return Err(LegacyError::BadHead(head));
        }
        if expect_response {
            return self.hashed(src, 4, None, crypto);
        }
        if src.len() < 5 {
            return Ok(None);
        }
        let t = src[4];
        if let Some(kind) = CmdKind::from_u8(t) {
            return self.hashed(src, 5, Some(kind), crypto);
        }
        match t {
            0xF6 | 0xF7 => {
                if src.len() < 9 {
                    return Ok(None);
                }
                check_tail(u32_at(src, 5))?;
                src.advance(9);
                Ok(Some(LegacyFrame::Signal(if t == 0xF6 {
                    SignalKind::Fragment
                } else {
                    SignalKind::Done
                })))
            }
            BIG_STREAM => {
                if src.len() < 17 {
                    return Ok(None);
                }
                let total = i64::from_le_bytes(src[5..13].try_into().unwrap_or_default());
                if total < 0 || total as u64 > self.limits.max_big_total {
                    return Err(LegacyError::TooLarge {
                        what: "BigStream",
                        size: total as u64,
                        limit: self.limits.max_big_total,
                    });
                }
                let Some(cmd) = self.name(src, 13)? else {
                    return Ok(None);
                };
                self.state = State::Big {
                    cmd,
                    total: total as u64,
                    done: 0,
                };
                self.decode(src, false, crypto)
            }
            COMPLETE_BUFFER => {
                if src.len() < 21 {
                    return Ok(None);
                }
                let raw = u32_at(src, 5) as usize;
                let comp = u32_at(src, 9);
                if raw > self.limits.max_complete_buffer {
                    return Err(too_large(
                        "CompleteBuffer",
                        raw as u64,
                        self.limits.max_complete_buffer,
                    ));
                }
                if comp as usize > self.limits.max_complete_buffer {
                    return Err(too_large(
                        "compressed CompleteBuffer",
                        comp as u64,
                        self.limits.max_complete_buffer,
                    ));
                }
                let Some(cmd) = self.name(src, 13)? else {
                    return Ok(None);
                };
                self.state = if comp == 0 {
                    State::Complete {
                        cmd,
                        len: raw,
                        raw: None,
                    }
                } else {
                    State::Complete {
                        cmd,
                        len: comp as usize,
                        raw: Some(raw),
                    }
                };
                self.decode(src, false, crypto)
            }
            other => Err(LegacyError::UnknownFrameType(other)),
        }
    }

    /// `u32 len, name, tail` at `at`; consumes the header when whole.
    fn name(&self, src: &mut BytesMut, at: usize) -> Result<Option<String>, LegacyError> {
        let n = u32_at(src, at) as usize;
        if n > self.limits.max_name {
            return Err(too_large("command name", n as u64, self.limits.max_name));
        }
        if src.len() < at + 4 + n + 4 {
            return Ok(None);
        }
        check_tail(u32_at(src, at + 4 + n))?;
        let name = std::str::from_utf8(&src[at + 4..at + 4 + n])
            .map_err(|_| LegacyError::BadCommand("command name is not UTF-8".into()))?
            .to_owned();
        src.advance(at + 4 + n + 4);
        Ok(Some(name))
    }

    fn hashed(
        &mut self,
        src: &mut BytesMut,
        at: usize,
        kind: Option<CmdKind>,
        crypto: &dyn FrameCrypto,
    ) -> Result<Option<LegacyFrame>, LegacyError> {
        if src.len() < at + 7 {
            return Ok(None);
        }
        let len = u32_at(src, at) as usize;
        if len > self.limits.max_frame {
            return Err(too_large("frame", len as u64, self.limits.max_frame));
        }
        let alg = src[at + 4];
        let hlen = u16::from_le_bytes([src[at + 5], src[at + 6]]) as usize;
        if hlen > MAX_HASH {
            return Err(too_large("frame hash", hlen as u64, MAX_HASH));
        }
        let body = at + 7 + hlen + 1;
        if src.len() < body + len + 4 {
            return Ok(None);
        }
        check_tail(u32_at(src, body + len))?;
        let cipher = src[body - 1];
        let hash = src[at + 7..at + 7 + hlen].to_vec();
        src.advance(body);
        let mut payload = src.split_to(len);
        src.advance(4);
        if cipher != 0 {
            crypto.decrypt(cipher, &mut payload)?;
        }
        if crypto.hash(alg, &payload)? != hash {
            return Err(LegacyError::BadHash(alg));
        }
        let payload = payload.freeze();
        Ok(Some(match kind {
            Some(kind) => LegacyFrame::Request {
                kind,
                hash: alg,
                cipher,
                payload,
            },
            None => LegacyFrame::Response {
                hash: alg,
                cipher,
                payload,
            },
        }))
    }
}

fn check_tail(t: u32) -> Result<(), LegacyError> {
    if t == TAIL {
        Ok(())
    } else {
        Err(LegacyError::BadTail(t))
    }
}

fn hashed_body(
    out: &mut Vec<u8>,
    payload: &[u8],
    hash: u8,
    cipher: u8,
    crypto: &dyn FrameCrypto,
) -> Result<(), LegacyError> {
    let h = crypto.hash(hash, payload)?;
    out.put_u32_le(payload.len() as u32);
    out.put_u8(hash);
    out.put_u16_le(h.len() as u16);
    out.put_slice(&h);
    out.put_u8(cipher);
    let at = out.len();
    out.put_slice(payload);
    if cipher != 0 {
        crypto.encrypt(cipher, &mut out[at..])?;
    }
    out.put_u32_le(TAIL);
    Ok(())
}

/// Appends a request frame: `payload` (plaintext) hashed with `hash`, encrypted
/// with `cipher`.
pub fn encode_request(
    kind: CmdKind,
    payload: &[u8],
    hash: u8,
    cipher: u8,
    crypto: &dyn FrameCrypto,
    out: &mut Vec<u8>,
) -> Result<(), LegacyError> {
    out.put_u32_le(HEAD);
    out.put_u8(kind as u8);
    hashed_body(out, payload, hash, cipher, crypto)
}

/// Appends a response frame (no type byte).
pub fn encode_response(
    payload: &[u8],
    hash: u8,
    cipher: u8,
    crypto: &dyn FrameCrypto,
    out: &mut Vec<u8>,
) -> Result<(), LegacyError> {
    out.put_u32_le(HEAD);
    hashed_body(out, payload, hash, cipher, crypto)
}

/// Appends a BigStream header.
pub fn encode_big_stream_head(cmd: &str, total: u64, out: &mut Vec<u8>) {
    out.put_u32_le(HEAD);
    out.put_u8(BIG_STREAM);
    out.put_i64_le(total as i64);
    out.put_u32_le(cmd.len() as u32);
    out.put_slice(cmd.as_bytes());
    out.put_u32_le(TAIL);
}

/// Appends one uncompressed BigStream chunk.
pub fn encode_big_stream_chunk(data: &[u8], out: &mut Vec<u8>) {
    out.put_i32_le(data.len() as i32);
    out.put_u8(0);
    out.put_slice(data);
}

/// Appends an uncompressed CompleteBuffer (header and body).
pub fn encode_complete_buffer(cmd: &str, data: &[u8], out: &mut Vec<u8>) {
    out.put_u32_le(HEAD);
    out.put_u8(COMPLETE_BUFFER);
    out.put_u32_le(data.len() as u32);
    out.put_u32_le(0);
    out.put_u32_le(cmd.len() as u32);
    out.put_slice(cmd.as_bytes());
    out.put_u32_le(TAIL);
    out.put_slice(data);
}

/// Appends a BigStream signal frame.
pub fn encode_signal(kind: SignalKind, out: &mut Vec<u8>) {
    out.put_u32_le(HEAD);
    out.put_u8(kind as u8);
    out.put_u32_le(TAIL);
}

/// A command's body: text (console kinds) or a DFE (stream kinds).
#[derive(Debug, Clone, PartialEq)]
pub enum CmdBody {
    /// Console text.
    Text(String),
    /// Stream values.
    Dfe(Dfe),
}

impl CmdBody {
    /// The text of a console body.
    pub fn text(&self) -> Option<&str> {
        match self {
            CmdBody::Text(t) => Some(t),
            CmdBody::Dfe(_) => None,
        }
    }
}

/// The plaintext payload of a request: DFE `[String cmd, String text]` or
/// `[String cmd, Stream dfe]`.
pub fn encode_command(cmd: &str, body: &CmdBody) -> Vec<u8> {
    command_dfe(cmd, body).to_bytes()
}

/// [`encode_command`] in the compressed form a `SendDataCompressed` sender
/// uses ([`Dfe::encode_compressed`]).
pub fn encode_command_compressed(cmd: &str, body: &CmdBody) -> Vec<u8> {
    command_dfe(cmd, body).to_compressed_bytes()
}

fn command_dfe(cmd: &str, body: &CmdBody) -> Dfe {
    let second = match body {
        CmdBody::Text(t) => DfeValue::string(t),
        CmdBody::Dfe(d) => DfeValue::dfe(d),
    };
    Dfe(vec![DfeValue::string(cmd), second])
}

/// Appends one BigStream chunk compressed as the originals do with
/// `SendDataCompressed`: flag 1, a parallel container of `scmZLIB_Fast` strips.
pub fn encode_big_stream_chunk_compressed(data: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.put_i32_le(0);
    out.put_u8(1);
    super::compress::parallel_compress(data, super::compress::METHOD_ZLIB_FAST, out);
    let n = (out.len() - at - 5) as i32;
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
}

/// Splits a request payload into its command name and body.
pub fn decode_command(
    kind: CmdKind,
    payload: &Bytes,
    limits: &LegacyLimits,
) -> Result<(String, CmdBody), LegacyError> {
    let d = Dfe::decode(payload, limits)?;
    let mut it = d.0.into_iter();
    let name = match it.next() {
        Some(DfeValue::String(b)) => {
            if b.len() > limits.max_name {
                return Err(too_large("command name", b.len() as u64, limits.max_name));
            }
            String::from_utf8(b.to_vec())
                .map_err(|_| LegacyError::BadCommand("command name is not UTF-8".into()))?
        }
        other => {
            return Err(LegacyError::BadCommand(format!(
                "first value is {other:?}, not the command name"
            )))
        }
    };
    let body = match (kind.is_stream(), it.next()) {
        (false, Some(DfeValue::String(b))) => {
            CmdBody::Text(String::from_utf8_lossy(&b).into_owned())
        }
        (false, None) => CmdBody::Text(String::new()),
        (true, Some(DfeValue::Stream(b))) => CmdBody::Dfe(Dfe::decode(&b, limits)?),
        (true, None) => CmdBody::Dfe(Dfe::new()),
        (_, Some(other)) => {
            return Err(LegacyError::BadCommand(format!(
                "{kind:?} body is a {} value",
                other.type_id()
            )))
        }
    };
    Ok((name, body))
}

/// The text of a console response payload (one `00` byte is ZNet's empty text).
pub fn console_text(payload: &[u8]) -> String {
    if payload == [0] {
        String::new()
    } else {
        String::from_utf8_lossy(payload).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: CmdKind, payload: &[u8], hash: u8) -> BytesMut {
        let mut v = Vec::new();
        encode_request(kind, payload, hash, 0, &PlainCrypto, &mut v).unwrap();
        BytesMut::from(&v[..])
    }

    #[test]
    fn request_and_response_round_trip_and_partial_frames_wait() {
        let lim = LegacyLimits::default();
        let payload = encode_command("echo", &CmdBody::Text("hi".into()));
        let full = req(CmdKind::Console, &payload, 1);
        let mut d = FrameDecoder::new(lim);
        for n in 0..full.len() {
            let mut part = BytesMut::from(&full[..n]);
            assert_eq!(d.decode(&mut part, false, &PlainCrypto).unwrap(), None);
            assert_eq!(part.len(), n);
        }
        let mut all = full.clone();
        let f = d.decode(&mut all, false, &PlainCrypto).unwrap().unwrap();
        assert!(all.is_empty());
        let LegacyFrame::Request {
            kind,
            payload,
            hash,
            ..
        } = f
        else {
            panic!()
        };
        assert_eq!((kind, hash), (CmdKind::Console, 1));
        let (cmd, body) = decode_command(kind, &payload, &lim).unwrap();
        assert_eq!((cmd.as_str(), body), ("echo", CmdBody::Text("hi".into())));
        // A response; short payloads carry an MD5 even with hash 0.
        let mut v = Vec::new();
        encode_response(b"abc", 0, 0, &PlainCrypto, &mut v).unwrap();
        assert_eq!(v.len(), 4 + 4 + 3 + 16 + 1 + 3 + 4);
        let mut b = BytesMut::from(&v[..]);
        let f = d.decode(&mut b, true, &PlainCrypto).unwrap().unwrap();
        assert_eq!(
            f,
            LegacyFrame::Response {
                hash: 0,
                cipher: 0,
                payload: Bytes::from_static(b"abc")
            }
        );
    }

    #[test]
    fn bad_tail_hash_cipher_and_sizes_are_errors() {
        let lim = LegacyLimits::default();
        let payload = encode_command("echo", &CmdBody::Text("hello".into()));
        let good = req(CmdKind::Console, &payload, 1);
        let mut d = FrameDecoder::new(lim);
        let mut b = good.clone();
        let n = b.len();
        b[n - 1] = 0;
        assert!(matches!(
            d.decode(&mut b, false, &PlainCrypto),
            Err(LegacyError::BadTail(_))
        ));
        let mut b = good.clone();
        b[30] ^= 0x40; // inside the payload: the MD5 no longer matches
        assert_eq!(
            d.decode(&mut b, false, &PlainCrypto),
            Err(LegacyError::BadHash(1))
        );
        let mut b = good.clone();
        b[9 + 3 + 16] = 77; // cipher byte
        assert_eq!(
            d.decode(&mut b, false, &PlainCrypto),
            Err(LegacyError::UnknownCipher(77))
        );
        let mut b = good.clone();
        b[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            d.decode(&mut b, false, &PlainCrypto),
            Err(LegacyError::TooLarge { .. })
        ));
        let mut b = BytesMut::from(&[1u8, 2, 3, 4][..]);
        assert!(matches!(
            d.decode(&mut b, false, &PlainCrypto),
            Err(LegacyError::BadHead(_))
        ));
        let mut b = BytesMut::from(&[0xf0u8, 0xf0, 0xf0, 0xf0, 0x99][..]);
        assert_eq!(
            d.decode(&mut b, false, &PlainCrypto),
            Err(LegacyError::UnknownFrameType(0x99))
        );
        let mut v = Vec::new();
        encode_complete_buffer("cb", &[0; 10], &mut v);
        v[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut b = BytesMut::from(&v[..]);
        assert!(matches!(
            d.decode(&mut b, false, &PlainCrypto),
            Err(LegacyError::TooLarge { .. })
        ));
    }

    #[test]
    fn big_stream_and_complete_buffer_and_signals() {
        let mut d = FrameDecoder::new(LegacyLimits::default());
        let mut v = Vec::new();
        encode_big_stream_head("up", 5, &mut v);
        encode_big_stream_chunk(b"abc", &mut v);
        encode_big_stream_chunk(b"de", &mut v);
        encode_complete_buffer("cb", b"xyz", &mut v);
        encode_signal(SignalKind::Fragment, &mut v);
        let mut b = BytesMut::from(&v[..]);
        let mut got = Vec::new();
        while let Some(f) = d.decode(&mut b, false, &PlainCrypto).unwrap() {
            got.push(f);
        }
        assert!(b.is_empty());
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[1],
            LegacyFrame::BigStreamChunk {
                cmd: "up".into(),
                offset: 3,
                total: 5,
                last: true,
                data: Bytes::from_static(b"de")
            }
        );
        assert_eq!(
            got[2],
            LegacyFrame::CompleteBuffer {
                cmd: "cb".into(),
                data: Bytes::from_static(b"xyz")
            }
        );
        assert_eq!(got[3], LegacyFrame::Signal(SignalKind::Fragment));
    }
}
