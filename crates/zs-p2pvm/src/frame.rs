//! The frame codec (sans-IO, total).
//!
//! Every frame is a 10-byte header followed by a payload:
//!
//! ```text
//! offset 0  u8      type
//! offset 1  u8      flags (only LISTEN defines one: 0x01 = initial table complete)
//! offset 2  u32 LE  stream id (0 = the session itself)
//! offset 6  u32 LE  payload length
//! offset 10 ...     payload
//! ```
//!
//! The byte-level description of each payload is in `docs/PROTOCOL.md`, Part 4.
//! [`decode`] is total: any input gives a frame, "need more bytes" or an
//! [`Error::Protocol`], never a panic, and it checks the header (type, flags, stream
//! id, length against the type's rule and against the configured maximum) before it
//! waits for the payload, so an untrusted length never causes an allocation.

use std::net::SocketAddr;

use crate::{Error, Role};

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 10;
/// The smallest `max_frame_payload` a side may announce (a listen-table frame must fit).
pub const MIN_FRAME_PAYLOAD: u32 = 1024;
/// Protocol version carried in HELLO.
pub const VERSION: u8 = 1;
/// Length of the random nonce in HELLO.
pub const NONCE_LEN: usize = 32;
/// Length of the HMAC-SHA256 proof in PROOF.
pub const PROOF_LEN: usize = 32;
/// LISTEN flag: this frame completes the sender's initial listen table.
pub const FLAG_TABLE_DONE: u8 = 0x01;
/// Longest GOAWAY reason the encoder writes (longer reasons are cut at a char boundary).
pub const MAX_REASON: usize = 512;
/// Largest encoded listen-table entry (remove/add, family, IPv6 address, port).
pub const MAX_LISTEN_ENTRY: usize = 20;

/// Frame type codes (byte 0 of the header).
pub mod ty {
    /// Authentication hello: version, auth mode, max payload, nonce.
    pub const HELLO: u8 = 0x01;
    /// Authentication proof: HMAC-SHA256 over the transcript.
    pub const PROOF: u8 = 0x02;
    /// Listen-table update.
    pub const LISTEN: u8 = 0x03;
    /// Open a stream to a virtual address.
    pub const OPEN: u8 = 0x04;
    /// Accept an opened stream.
    pub const ACCEPT: u8 = 0x05;
    /// Refuse an opened stream (open failed).
    pub const REFUSE: u8 = 0x06;
    /// Stream data.
    pub const DATA: u8 = 0x07;
    /// Credit (window) update.
    pub const WINDOW: u8 = 0x08;
    /// End of the sender's data on a stream.
    pub const FIN: u8 = 0x09;
    /// Abort a stream.
    pub const RESET: u8 = 0x0A;
    /// Keepalive ping.
    pub const PING: u8 = 0x0B;
    /// Keepalive pong.
    pub const PONG: u8 = 0x0C;
    /// Tunnel close with a reason.
    pub const GOAWAY: u8 = 0x0D;
}

/// Auth mode byte in HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication.
    None = 0,
    /// Pre-shared token, challenge-response.
    Token = 1,
}

/// Why an OPEN was refused (REFUSE payload byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// Nobody listens on the requested virtual address.
    UnknownAddress = 1,
    /// The acceptor has `max_streams` streams open.
    TooManyStreams = 2,
}

/// One listen-table change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenChange {
    /// True for "now listening", false for "no longer listening".
    pub add: bool,
    /// The virtual address.
    pub addr: SocketAddr,
}

/// A decoded frame. `Data` and `GoAway` borrow from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// HELLO (stream 0).
    Hello {
        /// Auth mode the sender uses.
        mode: AuthMode,
        /// Largest payload the sender accepts.
        max_payload: u32,
        /// The sender's random challenge.
        nonce: [u8; NONCE_LEN],
    },
    /// PROOF (stream 0).
    Proof {
        /// HMAC-SHA256(token, transcript).
        mac: [u8; PROOF_LEN],
    },
    /// LISTEN (stream 0).
    Listen {
        /// The sender's initial table is complete with this frame.
        done: bool,
        /// The changes, in order.
        changes: Vec<ListenChange>,
    },
    /// OPEN.
    Open {
        /// New stream id (opener's parity).
        id: u32,
        /// Receive credit the opener grants for this stream.
        window: u32,
        /// The virtual destination address.
        addr: SocketAddr,
    },
    /// ACCEPT.
    Accept {
        /// The stream.
        id: u32,
        /// Receive credit the acceptor grants for this stream.
        window: u32,
    },
    /// REFUSE.
    Refuse {
        /// The stream.
        id: u32,
        /// Why.
        code: RefuseCode,
    },
    /// DATA.
    Data {
        /// The stream.
        id: u32,
        /// The bytes.
        payload: &'a [u8],
    },
    /// WINDOW.
    Window {
        /// The stream.
        id: u32,
        /// Additional credit (never 0).
        increment: u32,
    },
    /// FIN.
    Fin {
        /// The stream.
        id: u32,
    },
    /// RESET.
    Reset {
        /// The stream.
        id: u32,
    },
    /// PING (stream 0).
    Ping {
        /// Opaque value echoed by the pong.
        value: u64,
    },
    /// PONG (stream 0).
    Pong {
        /// The ping's value.
        value: u64,
    },
    /// GOAWAY (stream 0).
    GoAway {
        /// UTF-8 reason (lossy decoded).
        reason: String,
    },
}

fn proto(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Type code (one of [`ty`]).
    pub ty: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload length.
    pub len: u32,
}

/// Parses and validates a header; `Ok(None)` if fewer than [`HEADER_LEN`] bytes.
pub fn decode_header(buf: &[u8], max_payload: u32) -> Result<Option<Header>, Error> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let ty = h[0];
    let flags = h[1];
    let stream = u32::from_le_bytes([h[2], h[3], h[4], h[5]]);
    let len = u32::from_le_bytes([h[6], h[7], h[8], h[9]]);
    if len > max_payload {
        return Err(proto(format!(
            "frame payload {len} exceeds the maximum {max_payload}"
        )));
    }
    let session = matches!(
        ty,
        ty::HELLO | ty::PROOF | ty::LISTEN | ty::PING | ty::PONG | ty::GOAWAY
    );
    let len_ok = match ty {
        ty::HELLO => len as usize == HELLO_LEN,
        ty::PROOF => len as usize == PROOF_LEN,
        ty::LISTEN => true,
        ty::OPEN => len == 4 + 7 || len == 4 + 19,
        ty::ACCEPT | ty::WINDOW => len == 4,
        ty::REFUSE => len == 1,
        ty::DATA | ty::GOAWAY => true,
        ty::FIN | ty::RESET => len == 0,
        ty::PING | ty::PONG => len == 8,
        other => return Err(proto(format!("unknown frame type 0x{other:02x}"))),
    };
    let allowed_flags = if ty == ty::LISTEN { FLAG_TABLE_DONE } else { 0 };
    if flags & !allowed_flags != 0 {
        return Err(proto(format!(
            "bad flags 0x{flags:02x} for frame type 0x{ty:02x}"
        )));
    }
    // WINDOW on stream 0 is the session-level credit update.
    if ty != ty::WINDOW && session != (stream == 0) {
        return Err(proto(format!(
            "bad stream id {stream} for frame type 0x{ty:02x}"
        )));
    }
    if !len_ok {
        return Err(proto(format!("bad length {len} for frame type 0x{ty:02x}")));
    }
    Ok(Some(Header {
        ty,
        flags,
        stream,
        len,
    }))
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&p[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Decodes an address (PROTOCOL "Socket addresses": `zs_wire::addr`) at the start
/// of `p`; returns it and the bytes used.
fn decode_addr(p: &[u8]) -> Result<(SocketAddr, usize), Error> {
    zs_wire::addr::decode(p).map_err(|e| proto(e.to_string()))
}

/// Decodes one frame from the start of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, otherwise the frame and the number of
/// bytes it used. `max_payload` is this side's limit.
pub fn decode(buf: &[u8], max_payload: u32) -> Result<Option<(Frame<'_>, usize)>, Error> {
    let Some(h) = decode_header(buf, max_payload)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + h.len as usize;
    let Some(p) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let id = h.stream;
    let frame = match h.ty {
        ty::HELLO => {
            if p[0] != VERSION {
                return Err(proto(format!("unsupported version {}", p[0])));
            }
            let mode = match p[1] {
                0 => AuthMode::None,
                1 => AuthMode::Token,
                m => return Err(proto(format!("unknown auth mode {m}"))),
            };
            let max_payload = u32_at(p, 2);
            if max_payload < MIN_FRAME_PAYLOAD {
                return Err(proto(format!("peer max payload {max_payload} too small")));
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&p[6..6 + NONCE_LEN]);
            Frame::Hello {
                mode,
                max_payload,
                nonce,
            }
        }
        ty::PROOF => {
            let mut mac = [0u8; PROOF_LEN];
            mac.copy_from_slice(p);
            Frame::Proof { mac }
        }
        ty::LISTEN => {
            // Each entry is at least 8 bytes, so this allocation is bounded by bytes
            // that are present.
            let mut changes = Vec::with_capacity(p.len() / 8);
            let mut rest = p;
            while let Some(&op) = rest.first() {
                let add = match op {
                    1 => true,
                    2 => false,
                    o => return Err(proto(format!("bad listen op {o}"))),
                };
                let (addr, n) = decode_addr(&rest[1..])?;
                changes.push(ListenChange { add, addr });
                rest = &rest[1 + n..];
            }
            Frame::Listen {
                done: h.flags & FLAG_TABLE_DONE != 0,
                changes,
            }
        }
        ty::OPEN => {
            let window = u32_at(p, 0);
            let (addr, n) = decode_addr(&p[4..])?;
            if 4 + n != p.len() {
                return Err(proto("bad OPEN length for its address family"));
            }
            Frame::Open { id, window, addr }
        }
        ty::ACCEPT => Frame::Accept {
            id,
            window: u32_at(p, 0),
        },
        ty::REFUSE => {
            let code = match p[0] {
                1 => RefuseCode::UnknownAddress,
                2 => RefuseCode::TooManyStreams,
                c => return Err(proto(format!("bad refuse code {c}"))),
            };
            Frame::Refuse { id, code }
        }
        ty::DATA => Frame::Data { id, payload: p },
        ty::WINDOW => {
            let increment = u32_at(p, 0);
            if increment == 0 {
                return Err(proto("zero window increment"));
            }
            Frame::Window { id, increment }
        }
        ty::FIN => Frame::Fin { id },
        ty::RESET => Frame::Reset { id },
        ty::PING | ty::PONG => {
            let mut b = [0u8; 8];
            b.copy_from_slice(p);
            let value = u64::from_le_bytes(b);
            if h.ty == ty::PING {
                Frame::Ping { value }
            } else {
                Frame::Pong { value }
            }
        }
        ty::GOAWAY => Frame::GoAway {
            reason: String::from_utf8_lossy(p).into_owned(),
        },
        // decode_header rejected every other type.
        other => return Err(proto(format!("unknown frame type 0x{other:02x}"))),
    };
    Ok(Some((frame, total)))
}

/// Length of a HELLO payload (version, mode, max payload, nonce).
pub const HELLO_LEN: usize = 2 + 4 + NONCE_LEN;
/// Label that starts every signed auth transcript.
pub const PROOF_LABEL: &[u8] = b"zs-p2pvm/1 proof";

/// Length of a channel binding (a secure session's exporter) covered by PROOF.
pub const BINDING_LEN: usize = 32;

/// The message a PROOF signs: [`PROOF_LABEL`], one byte for the prover's role
/// (1 = initiator, 2 = acceptor), then the initiator's and the acceptor's HELLO
/// payloads (so both random nonces and both announced limits), then, when the tunnel
/// runs inside a secure session, that session's 32-byte channel binding (so a proof
/// made over one secure channel is worthless over another).
pub fn proof_message(
    prover: Role,
    initiator_hello: &[u8; HELLO_LEN],
    acceptor_hello: &[u8; HELLO_LEN],
    binding: Option<&[u8; BINDING_LEN]>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(PROOF_LABEL.len() + 1 + 2 * HELLO_LEN + BINDING_LEN);
    m.extend_from_slice(PROOF_LABEL);
    m.push(match prover {
        Role::Initiator => 1,
        Role::Acceptor => 2,
    });
    m.extend_from_slice(initiator_hello);
    m.extend_from_slice(acceptor_hello);
    if let Some(b) = binding {
        m.extend_from_slice(b);
    }
    m
}

/// The PROOF value: HMAC-SHA256(token, [`proof_message`]).
pub fn proof(token: &[u8], message: &[u8]) -> [u8; PROOF_LEN] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token);
    let tag = ring::hmac::sign(&key, message);
    let mut mac = [0u8; PROOF_LEN];
    mac.copy_from_slice(tag.as_ref());
    mac
}

/// Appends a header.
pub fn encode_header(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, len: u32) {
    out.extend_from_slice(&header(ty, flags, stream, len));
}

/// A header on its own (for output that keeps headers apart from payloads).
pub fn header(ty: u8, flags: u8, stream: u32, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = ty;
    h[1] = flags;
    h[2..6].copy_from_slice(&stream.to_le_bytes());
    h[6..10].copy_from_slice(&len.to_le_bytes());
    h
}

impl Frame<'_> {
    /// Appends the encoded frame to `out`.
    ///
    /// A `Listen` frame must fit the peer's payload limit (the mux splits long
    /// tables); a `GoAway` reason is cut to [`MAX_REASON`] bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello {
                mode,
                max_payload,
                nonce,
            } => {
                encode_header(out, ty::HELLO, 0, 0, HELLO_LEN as u32);
                out.push(VERSION);
                out.push(*mode as u8);
                out.extend_from_slice(&max_payload.to_le_bytes());
                out.extend_from_slice(nonce);
            }
            Frame::Proof { mac } => {
                encode_header(out, ty::PROOF, 0, 0, PROOF_LEN as u32);
                out.extend_from_slice(mac);
            }
            Frame::Listen { done, changes } => {
                let len: usize = changes
                    .iter()
                    .map(|c| 1 + zs_wire::addr::len(&c.addr))
                    .sum();
                let flags = if *done { FLAG_TABLE_DONE } else { 0 };
                encode_header(out, ty::LISTEN, flags, 0, len as u32);
                for c in changes {
                    out.push(if c.add { 1 } else { 2 });
                    zs_wire::addr::put(out, &c.addr);
                }
            }
            Frame::Open { id, window, addr } => {
                encode_header(out, ty::OPEN, 0, *id, 4 + zs_wire::addr::len(addr) as u32);
                out.extend_from_slice(&window.to_le_bytes());
                zs_wire::addr::put(out, addr);
            }
            Frame::Accept { id, window } => {
                encode_header(out, ty::ACCEPT, 0, *id, 4);
                out.extend_from_slice(&window.to_le_bytes());
            }
            Frame::Refuse { id, code } => {
                encode_header(out, ty::REFUSE, 0, *id, 1);
                out.push(*code as u8);
            }
            Frame::Data { id, payload } => {
                encode_header(out, ty::DATA, 0, *id, payload.len() as u32);
                out.extend_from_slice(payload);
            }
            Frame::Window { id, increment } => {
                encode_header(out, ty::WINDOW, 0, *id, 4);
                out.extend_from_slice(&increment.to_le_bytes());
            }
            Frame::Fin { id } => encode_header(out, ty::FIN, 0, *id, 0),
            Frame::Reset { id } => encode_header(out, ty::RESET, 0, *id, 0),
            Frame::Ping { value } => {
                encode_header(out, ty::PING, 0, 0, 8);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Frame::Pong { value } => {
                encode_header(out, ty::PONG, 0, 0, 8);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Frame::GoAway { reason } => {
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                encode_header(out, ty::GOAWAY, 0, 0, end as u32);
                out.extend_from_slice(&reason.as_bytes()[..end]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 64 * 1024;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn all_frames() -> Vec<Frame<'static>> {
        vec![
            Frame::Hello {
                mode: AuthMode::None,
                max_payload: 65536,
                nonce: [9; NONCE_LEN],
            },
            Frame::Hello {
                mode: AuthMode::Token,
                max_payload: MIN_FRAME_PAYLOAD,
                nonce: [0; NONCE_LEN],
            },
            Frame::Proof {
                mac: [0xAB; PROOF_LEN],
            },
            Frame::Listen {
                done: true,
                changes: vec![],
            },
            Frame::Listen {
                done: false,
                changes: vec![
                    ListenChange {
                        add: true,
                        addr: a("10.0.0.1:80"),
                    },
                    ListenChange {
                        add: false,
                        addr: a("[fd00::1]:65535"),
                    },
                ],
            },
            Frame::Open {
                id: 1,
                window: 65536,
                addr: a("192.168.1.2:8080"),
            },
            Frame::Open {
                id: 4,
                window: 0,
                addr: a("[::1]:1"),
            },
            Frame::Accept { id: 2, window: 123 },
            Frame::Refuse {
                id: 3,
                code: RefuseCode::UnknownAddress,
            },
            Frame::Refuse {
                id: 5,
                code: RefuseCode::TooManyStreams,
            },
            Frame::Data {
                id: 7,
                payload: b"hello",
            },
            Frame::Data {
                id: 7,
                payload: b"",
            },
            Frame::Window {
                id: 9,
                increment: 1,
            },
            Frame::Window {
                id: 0,
                increment: u32::MAX,
            },
            Frame::Fin { id: 11 },
            Frame::Reset { id: u32::MAX },
            Frame::Ping {
                value: 0x0102_0304_0506_0708,
            },
            Frame::Pong { value: u64::MAX },
            Frame::GoAway {
                reason: "bye".into(),
            },
            Frame::GoAway {
                reason: String::new(),
            },
        ]
    }

    #[test]
    fn every_frame_type_round_trips() {
        let mut all = Vec::new();
        for f in all_frames() {
            let mut b = Vec::new();
            f.encode(&mut b);
            assert!(b.len() >= HEADER_LEN);
            let (g, n) = decode(&b, MAX).unwrap().unwrap();
            assert_eq!(g, f);
            assert_eq!(n, b.len());
            // Every strict prefix asks for more bytes.
            for cut in 0..b.len() {
                assert_eq!(decode(&b[..cut], MAX).unwrap(), None, "{f:?} cut at {cut}");
            }
            all.extend_from_slice(&b);
        }
        // Back to back.
        let mut rest = &all[..];
        let mut count = 0;
        while let Some((_, n)) = decode(rest, MAX).unwrap() {
            rest = &rest[n..];
            count += 1;
        }
        assert!(rest.is_empty());
        assert_eq!(count, all_frames().len());
    }

    #[test]
    fn header_is_ten_bytes_little_endian() {
        let mut b = Vec::new();
        Frame::Window {
            id: 0x0403_0201,
            increment: 0x0807_0605,
        }
        .encode(&mut b);
        assert_eq!(
            b,
            [0x08, 0x00, 0x01, 0x02, 0x03, 0x04, 0x04, 0x00, 0x00, 0x00, 0x05, 0x06, 0x07, 0x08]
        );
        assert_eq!(HEADER_LEN, 10);
    }

    fn header(ty: u8, flags: u8, stream: u32, len: u32) -> Vec<u8> {
        let mut b = Vec::new();
        encode_header(&mut b, ty, flags, stream, len);
        b
    }

    fn err(buf: &[u8]) -> String {
        match decode(buf, MAX) {
            Err(Error::Protocol(s)) => s,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_headers_are_rejected_before_the_payload() {
        // Nothing but a header: the error comes without waiting for the payload.
        assert!(err(&header(ty::DATA, 0, 1, MAX + 1)).contains("exceeds the maximum"));
        assert!(err(&header(ty::DATA, 0, 1, u32::MAX)).contains("exceeds the maximum"));
        assert!(err(&header(0x00, 0, 0, 0)).contains("unknown frame type"));
        assert!(err(&header(0x0E, 0, 0, 0)).contains("unknown frame type"));
        assert!(err(&header(0xFF, 0, 1, 0)).contains("unknown frame type"));
        assert!(err(&header(ty::DATA, 0x01, 1, 0)).contains("bad flags"));
        assert!(err(&header(ty::LISTEN, 0x02, 0, 0)).contains("bad flags"));
        assert!(err(&header(ty::DATA, 0, 0, 0)).contains("bad stream id"));
        assert!(err(&header(ty::FIN, 0, 0, 0)).contains("bad stream id"));
        assert!(err(&header(ty::PING, 0, 5, 8)).contains("bad stream id"));
        assert!(err(&header(ty::HELLO, 0, 1, 38)).contains("bad stream id"));
        assert!(err(&header(ty::HELLO, 0, 0, 37)).contains("bad length"));
        assert!(err(&header(ty::PROOF, 0, 0, 31)).contains("bad length"));
        assert!(err(&header(ty::OPEN, 0, 1, 12)).contains("bad length"));
        assert!(err(&header(ty::ACCEPT, 0, 1, 5)).contains("bad length"));
        assert!(err(&header(ty::REFUSE, 0, 1, 0)).contains("bad length"));
        assert!(err(&header(ty::WINDOW, 0, 1, 8)).contains("bad length"));
        assert!(err(&header(ty::FIN, 0, 1, 1)).contains("bad length"));
        assert!(err(&header(ty::RESET, 0, 1, 4)).contains("bad length"));
        assert!(err(&header(ty::PONG, 0, 0, 4)).contains("bad length"));
    }

    fn with_payload(ty: u8, flags: u8, stream: u32, p: &[u8]) -> Vec<u8> {
        let mut b = header(ty, flags, stream, p.len() as u32);
        b.extend_from_slice(p);
        b
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        let mut hello = vec![VERSION, 0];
        hello.extend_from_slice(&65536u32.to_le_bytes());
        hello.extend_from_slice(&[0; NONCE_LEN]);
        assert!(decode(&with_payload(ty::HELLO, 0, 0, &hello), MAX).is_ok());
        let mut h = hello.clone();
        h[0] = 2;
        assert!(err(&with_payload(ty::HELLO, 0, 0, &h)).contains("unsupported version"));
        let mut h = hello.clone();
        h[1] = 2;
        assert!(err(&with_payload(ty::HELLO, 0, 0, &h)).contains("unknown auth mode"));
        let mut h = hello;
        h[2..6].copy_from_slice(&(MIN_FRAME_PAYLOAD - 1).to_le_bytes());
        assert!(err(&with_payload(ty::HELLO, 0, 0, &h)).contains("too small"));

        assert!(
            err(&with_payload(ty::LISTEN, 0, 0, &[3, 4, 1, 2, 3, 4, 0, 0]))
                .contains("bad listen op")
        );
        assert!(
            err(&with_payload(ty::LISTEN, 0, 0, &[1, 5, 1, 2, 3, 4, 0, 0]))
                .contains("bad address family")
        );
        assert!(err(&with_payload(ty::LISTEN, 0, 0, &[1, 4, 1, 2, 3, 4, 0]))
            .contains("truncated address"));
        assert!(
            err(&with_payload(ty::LISTEN, 0, 0, &[1, 6, 1, 2, 3, 4, 0, 0]))
                .contains("truncated address")
        );
        assert!(err(&with_payload(ty::LISTEN, 0, 0, &[1])).contains("missing address"));

        // OPEN: family and length disagree.
        let mut open = 100u32.to_le_bytes().to_vec();
        open.extend_from_slice(&[6, 1, 2, 3, 4, 0, 0]);
        assert!(err(&with_payload(ty::OPEN, 0, 1, &open)).contains("truncated address"));
        let mut open = 100u32.to_le_bytes().to_vec();
        open.extend_from_slice(&[4; 19]);
        assert!(err(&with_payload(ty::OPEN, 0, 1, &open)).contains("bad OPEN length"));
        let mut open = 100u32.to_le_bytes().to_vec();
        open.extend_from_slice(&[9, 1, 2, 3, 4, 0, 0]);
        assert!(err(&with_payload(ty::OPEN, 0, 1, &open)).contains("bad address family"));

        assert!(err(&with_payload(ty::REFUSE, 0, 1, &[0])).contains("bad refuse code"));
        assert!(err(&with_payload(ty::REFUSE, 0, 1, &[3])).contains("bad refuse code"));
        assert!(err(&with_payload(ty::WINDOW, 0, 1, &[0; 4])).contains("zero window increment"));
        // GOAWAY with invalid UTF-8 is accepted (lossy), never a panic.
        let g = with_payload(ty::GOAWAY, 0, 0, &[0xFF, b'x']);
        let (f, _) = decode(&g, MAX).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::GoAway {
                reason: "\u{FFFD}x".into()
            }
        );
    }

    #[test]
    fn goaway_reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_REASON); // 2 bytes each
        let mut b = Vec::new();
        Frame::GoAway { reason: long }.encode(&mut b);
        assert_eq!(b.len(), HEADER_LEN + MAX_REASON);
        let (f, _) = decode(&b, MAX).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::GoAway {
                reason: "é".repeat(MAX_REASON / 2)
            }
        );
    }

    #[test]
    fn every_type_byte_is_handled() {
        for t in 0..=255u8 {
            for len in [0u32, 1, 4, 8, 11, 23, 32, 38] {
                for stream in [0u32, 1] {
                    let mut b = header(t, 0, stream, len);
                    b.resize(HEADER_LEN + len as usize, 4);
                    let _ = decode(&b, MAX); // never panics
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut rest = &bytes[..];
            while let Ok(Some((_, n))) = decode(rest, MAX) {
                prop_assert!(n >= HEADER_LEN && n <= rest.len());
                rest = &rest[n..];
            }
        }

        #[test]
        fn data_round_trips(id in 1u32.., payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let f = Frame::Data { id, payload: &payload };
            let mut b = Vec::new();
            f.encode(&mut b);
            let (g, n) = decode(&b, MAX).unwrap().unwrap();
            prop_assert_eq!(g, f);
            prop_assert_eq!(n, b.len());
        }
    }
}
