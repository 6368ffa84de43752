//! The XNat control protocol, sans-IO: message types, their byte layout, a
//! bounded incremental [`Decoder`], and the token proof.
//!
//! Every message travels **inside** a zs-crypto session (never in clear) as a
//! frame: `u8 kind | u32 LE payload length | payload` (layout in
//! `docs/PROTOCOL.md`, Part "XNat"). Strings are `u16 LE length | UTF-8`.
//! A payload longer than [`MAX_FRAME`] is an error, so a peer cannot make the
//! decoder buffer more than `MAX_FRAME + 5` bytes.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Protocol version carried in [`Msg::Hello`].
pub const VERSION: u16 = 1;
/// Largest payload of one frame.
pub const MAX_FRAME: usize = 16 * 1024;
/// Longest service name.
pub const MAX_NAME: usize = 128;
/// Length of the random data-connection ticket.
pub const TICKET_LEN: usize = 16;
/// Length of the register challenge nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a token proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The declared payload is larger than [`MAX_FRAME`].
    TooLarge(usize),
    /// Unknown message kind byte.
    UnknownKind(u8),
    /// The payload is shorter or longer than its fields.
    Malformed(&'static str),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds {MAX_FRAME}"),
            ProtoError::UnknownKind(k) => write!(f, "unknown message kind 0x{k:02x}"),
            ProtoError::Malformed(w) => write!(f, "malformed message: {w}"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// agent → relay, first message of a control connection.
    Hello {
        /// [`VERSION`].
        version: u16,
        /// Free text naming the agent (logs only).
        agent: String,
    },
    /// relay → agent: the nonce every [`Msg::Register`] proof covers.
    Challenge {
        /// Random, fresh per control connection.
        nonce: [u8; NONCE_LEN],
    },
    /// agent → relay: serve a mapping, proving the token (see [`proof`]).
    Register {
        /// Service name (`[client.services.NAME]`).
        service: String,
        /// Most connections this agent takes for the service.
        max_load: u32,
        /// HMAC-SHA256 proof of the service token.
        proof: [u8; PROOF_LEN],
    },
    /// relay → agent: the mapping is served (its public port listens).
    Registered {
        /// Service name.
        service: String,
    },
    /// relay → agent: the mapping was refused.
    Refused {
        /// Service name.
        service: String,
        /// Why (wrong token, unknown service, bind failed, ...).
        reason: String,
    },
    /// relay → agent: open one data connection for `service` presenting `ticket`.
    OpenData {
        /// Service name.
        service: String,
        /// Single-use random ticket.
        ticket: [u8; TICKET_LEN],
    },
    /// agent → relay: current number of connections the agent carries for `service`.
    Load {
        /// Service name.
        service: String,
        /// Current connections (all relays).
        current: u32,
    },
    /// Either side: liveness probe.
    Ping(u64),
    /// Either side: answer to [`Msg::Ping`].
    Pong(u64),
    /// agent → relay, first message of a data connection.
    DataHello {
        /// The ticket from [`Msg::OpenData`].
        ticket: [u8; TICKET_LEN],
    },
    /// relay → agent on a data connection: a public peer is attached; raw
    /// bytes follow in both directions.
    Start {
        /// The public peer's address.
        peer: SocketAddr,
    },
    /// agent → relay: stop serving a mapping (the agent's configuration no
    /// longer has it); connections already carried go on to their end.
    Unregister {
        /// Service name.
        service: String,
    },
    /// relay → agent on a data connection: a public peer is attached, like
    /// [`Msg::Start`], but the bytes that follow in each direction are
    /// chunks (`u32 LE length | bytes`, [`ChunkDecoder`]) ended by a
    /// zero-length chunk, so the data connection outlives the public
    /// connection: once both directions ended, the agent sends
    /// [`Msg::DataDone`] and the connection waits for the next start.
    StartFramed {
        /// The public peer's address.
        peer: SocketAddr,
    },
    /// agent → relay on a data connection after a [`Msg::StartFramed`]
    /// exchange: both directions ended cleanly (each side's end chunk sent
    /// and received, the local connection closed without error); the data
    /// connection may carry the next public connection.
    DataDone,
    /// relay → agent on a data connection of a UDP mapping: the data
    /// connection carries the flow of public source `peer`; datagram frames
    /// ([`encode_datagram`]) follow in both directions.
    StartUdp {
        /// The public source address of the flow.
        peer: SocketAddr,
    },
    /// admin → relay, first message of a command-API connection.
    AdminHello {
        /// [`VERSION`].
        version: u16,
    },
    /// admin → relay: proof of the relay's `admin_token` over the
    /// [`Msg::Challenge`] nonce and the channel binding ([`admin_proof`]).
    AdminAuth {
        /// HMAC-SHA256 proof.
        proof: [u8; PROOF_LEN],
    },
    /// admin → relay: add a mapping at runtime (persisted in the relay's store).
    AdminAdd {
        /// The mapping.
        mapping: MappingSpec,
    },
    /// admin → relay: remove a mapping added at runtime.
    AdminRemove {
        /// Service name.
        service: String,
    },
    /// admin → relay: list the mappings (one [`Msg::AdminItem`] each, then
    /// [`Msg::AdminResult`]).
    AdminList,
    /// admin → relay: statistics (one [`Msg::AdminItem`] per mapping and one
    /// for the relay, then [`Msg::AdminResult`]).
    AdminStats,
    /// relay → admin: one JSON object of a listing.
    AdminItem {
        /// JSON text.
        json: String,
    },
    /// relay → admin: the end of an answer.
    AdminResult {
        /// Whether the request was carried out.
        ok: bool,
        /// What was done, or why not.
        message: String,
    },
    /// Visitors and direct paths: the body is a `crate::visit::VisitMsg`
    /// (PROTOCOL.md Part 14).
    Visit {
        /// The visitor message's bytes.
        body: Vec<u8>,
    },
}

/// A mapping as the command API carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingSpec {
    /// Service name.
    pub service: String,
    /// The token agents prove.
    pub token: String,
    /// The public address.
    pub bind_addr: SocketAddr,
    /// UDP (`true`) or TCP.
    pub udp: bool,
    /// Idle timeout in seconds (0: the default of the type).
    pub idle_timeout_s: u32,
    /// Most public connections (UDP: flows) at once (0: the default, 4096).
    pub max_connections: u32,
}

impl Msg {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Msg::Hello { .. } => 0x01,
            Msg::Challenge { .. } => 0x02,
            Msg::Register { .. } => 0x03,
            Msg::Registered { .. } => 0x04,
            Msg::Refused { .. } => 0x05,
            Msg::OpenData { .. } => 0x06,
            Msg::Load { .. } => 0x07,
            Msg::Ping(_) => 0x08,
            Msg::Pong(_) => 0x09,
            Msg::DataHello { .. } => 0x10,
            Msg::Start { .. } => 0x11,
            Msg::Unregister { .. } => 0x12,
            Msg::StartUdp { .. } => 0x13,
            Msg::StartFramed { .. } => 0x14,
            Msg::DataDone => 0x15,
            Msg::AdminHello { .. } => 0x20,
            Msg::AdminAuth { .. } => 0x21,
            Msg::AdminAdd { .. } => 0x22,
            Msg::AdminRemove { .. } => 0x23,
            Msg::AdminList => 0x24,
            Msg::AdminStats => 0x25,
            Msg::AdminItem { .. } => 0x26,
            Msg::AdminResult { .. } => 0x27,
            Msg::Visit { .. } => 0x30,
        }
    }

    /// Appends the frame of `self` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(self.kind());
        out.extend_from_slice(&[0; 4]);
        match self {
            Msg::Hello { version, agent } => {
                out.extend_from_slice(&version.to_le_bytes());
                put_str(out, agent);
            }
            Msg::Challenge { nonce } => out.extend_from_slice(nonce),
            Msg::Register {
                service,
                max_load,
                proof,
            } => {
                put_str(out, service);
                out.extend_from_slice(&max_load.to_le_bytes());
                out.extend_from_slice(proof);
            }
            Msg::Registered { service } => put_str(out, service),
            Msg::Refused { service, reason } => {
                put_str(out, service);
                put_str(out, reason);
            }
            Msg::OpenData { service, ticket } => {
                put_str(out, service);
                out.extend_from_slice(ticket);
            }
            Msg::Load { service, current } => {
                put_str(out, service);
                out.extend_from_slice(&current.to_le_bytes());
            }
            Msg::Ping(v) | Msg::Pong(v) => out.extend_from_slice(&v.to_le_bytes()),
            Msg::DataHello { ticket } => out.extend_from_slice(ticket),
            Msg::Start { peer } => zs_punch::addr::put(out, peer),
            Msg::Unregister { service } => put_str(out, service),
            Msg::StartUdp { peer } => zs_punch::addr::put(out, peer),
            Msg::StartFramed { peer } => zs_punch::addr::put(out, peer),
            Msg::DataDone => {}
            Msg::AdminHello { version } => out.extend_from_slice(&version.to_le_bytes()),
            Msg::AdminAuth { proof } => out.extend_from_slice(proof),
            Msg::AdminAdd { mapping: m } => {
                put_str(out, &m.service);
                put_str(out, &m.token);
                zs_punch::addr::put(out, &m.bind_addr);
                out.push(m.udp as u8);
                out.extend_from_slice(&m.idle_timeout_s.to_le_bytes());
                out.extend_from_slice(&m.max_connections.to_le_bytes());
            }
            Msg::AdminRemove { service } => put_str(out, service),
            Msg::AdminList | Msg::AdminStats => {}
            Msg::AdminItem { json } => put_str(out, json),
            Msg::AdminResult { ok, message } => {
                out.push(*ok as u8);
                put_str(out, message);
            }
            Msg::Visit { body } => out.extend_from_slice(body),
        }
        let len = (out.len() - start - 5) as u32;
        out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    }

    /// The frame of `self`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes one payload of kind `kind`.
    pub fn decode(kind: u8, p: &[u8]) -> Result<Msg, ProtoError> {
        let mut r = Reader(p);
        let m = match kind {
            0x01 => Msg::Hello {
                version: r.u16()?,
                agent: r.str()?,
            },
            0x02 => Msg::Challenge { nonce: r.arr()? },
            0x03 => Msg::Register {
                service: r.name()?,
                max_load: r.u32()?,
                proof: r.arr()?,
            },
            0x04 => Msg::Registered { service: r.name()? },
            0x05 => Msg::Refused {
                service: r.name()?,
                reason: r.str()?,
            },
            0x06 => Msg::OpenData {
                service: r.name()?,
                ticket: r.arr()?,
            },
            0x07 => Msg::Load {
                service: r.name()?,
                current: r.u32()?,
            },
            0x08 => Msg::Ping(r.u64()?),
            0x09 => Msg::Pong(r.u64()?),
            0x10 => Msg::DataHello { ticket: r.arr()? },
            0x11 => Msg::Start { peer: r.addr()? },
            0x12 => Msg::Unregister { service: r.name()? },
            0x13 => Msg::StartUdp { peer: r.addr()? },
            0x14 => Msg::StartFramed { peer: r.addr()? },
            0x15 => Msg::DataDone,
            0x20 => Msg::AdminHello { version: r.u16()? },
            0x21 => Msg::AdminAuth { proof: r.arr()? },
            0x22 => Msg::AdminAdd {
                mapping: MappingSpec {
                    service: r.name()?,
                    token: r.str()?,
                    bind_addr: r.addr()?,
                    udp: r.flag()?,
                    idle_timeout_s: r.u32()?,
                    max_connections: r.u32()?,
                },
            },
            0x23 => Msg::AdminRemove { service: r.name()? },
            0x24 => Msg::AdminList,
            0x25 => Msg::AdminStats,
            0x26 => Msg::AdminItem { json: r.str()? },
            0x27 => Msg::AdminResult {
                ok: r.flag()?,
                message: r.str()?,
            },
            0x30 => Msg::Visit {
                body: r.take(r.0.len())?.to_vec(),
            },
            k => return Err(ProtoError::UnknownKind(k)),
        };
        if !r.0.is_empty() {
            return Err(ProtoError::Malformed("trailing bytes"));
        }
        Ok(m)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Callers keep strings short (names <= MAX_NAME, reasons are ours);
    // anything beyond u16 is cut at a char boundary.
    let mut n = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn flag(&mut self) -> Result<bool, ProtoError> {
        match self.arr::<1>()?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ProtoError::Malformed("flag is neither 0 nor 1")),
        }
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn str(&mut self) -> Result<String, ProtoError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed("string is not UTF-8"))
    }
    fn name(&mut self) -> Result<String, ProtoError> {
        let s = self.str()?;
        if s.is_empty() || s.len() > MAX_NAME {
            return Err(ProtoError::Malformed("service name empty or too long"));
        }
        Ok(s)
    }
    fn addr(&mut self) -> Result<SocketAddr, ProtoError> {
        zs_punch::addr::take(&mut self.0).map_err(ProtoError::Malformed)
    }
}

/// Incremental frame decoder with a bounded buffer.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    /// After an error the decoder must be dropped (the peer is disconnected).
    pub fn next_msg(&mut self) -> Result<Option<Msg>, ProtoError> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 5 {
            self.compact();
            return Ok(None);
        }
        let len = u32::from_le_bytes([avail[1], avail[2], avail[3], avail[4]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtoError::TooLarge(len));
        }
        if avail.len() < 5 + len {
            self.compact();
            return Ok(None);
        }
        let m = Msg::decode(avail[0], &avail[5..5 + len])?;
        self.pos += 5 + len;
        Ok(Some(m))
    }

    /// Bytes received after the last complete message (on a data connection,
    /// the first raw bytes that followed [`Msg::Start`]).
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf[self.pos..].to_vec();
        self.buf.clear();
        self.pos = 0;
        rest
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// The PROXY protocol v2 header (haproxy's spec, "PROXY" command over TCP)
/// the agent sends to a local service with `proxy_protocol = "v2"`: the
/// 12-byte signature, `0x21`, `0x11` (TCP over IPv4, 12 address bytes) or
/// `0x21` (TCP over IPv6, 36 bytes; an IPv4 address among IPv6 ones is
/// v4-mapped), the address length (u16 BE), then source address, destination
/// address, source port, destination port (big endian).
pub fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + 36);
    h.extend_from_slice(b"\r\n\r\n\0\r\nQUIT\n");
    h.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// The token proof of a [`Msg::Register`]: HMAC-SHA256 keyed by the service
/// token over `"zs-xnat register v1" | nonce | channel binding | u16 LE name length | name`.
/// The token itself never leaves the agent; the proof is bound to this
/// session (channel binding) and this connection's challenge (nonce), so it
/// cannot be replayed on another connection.
pub fn proof(
    token: &str,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8; 32],
    service: &str,
) -> [u8; PROOF_LEN] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(b"zs-xnat register v1");
    ctx.update(nonce);
    ctx.update(binding);
    ctx.update(&(service.len() as u16).to_le_bytes());
    ctx.update(service.as_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; PROOF_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Checks a proof in constant time.
pub fn verify_proof(
    token: &str,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8; 32],
    service: &str,
    got: &[u8; PROOF_LEN],
) -> bool {
    let want = proof(token, nonce, binding, service);
    use subtle::ConstantTimeEq;
    bool::from(want.ct_eq(got))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Hello {
                version: VERSION,
                agent: "office".into(),
            },
            Msg::Challenge { nonce: [7; 32] },
            Msg::Register {
                service: "web".into(),
                max_load: 100,
                proof: [9; 32],
            },
            Msg::Registered {
                service: "web".into(),
            },
            Msg::Refused {
                service: "web".into(),
                reason: "wrong token".into(),
            },
            Msg::OpenData {
                service: "web".into(),
                ticket: [1; 16],
            },
            Msg::Load {
                service: "web".into(),
                current: 3,
            },
            Msg::Ping(42),
            Msg::Pong(42),
            Msg::DataHello { ticket: [2; 16] },
            Msg::Start {
                peer: "127.0.0.1:8080".parse().unwrap(),
            },
            Msg::Start {
                peer: "[::1]:9".parse().unwrap(),
            },
            Msg::Unregister {
                service: "web".into(),
            },
            Msg::StartUdp {
                peer: "10.0.0.1:53".parse().unwrap(),
            },
            Msg::StartFramed {
                peer: "192.0.2.7:40000".parse().unwrap(),
            },
            Msg::DataDone,
            Msg::AdminHello { version: VERSION },
            Msg::AdminAuth { proof: [5; 32] },
            Msg::AdminAdd {
                mapping: MappingSpec {
                    service: "dns".into(),
                    token: "t".into(),
                    bind_addr: "0.0.0.0:5353".parse().unwrap(),
                    udp: true,
                    idle_timeout_s: 30,
                    max_connections: 9,
                },
            },
            Msg::AdminRemove {
                service: "dns".into(),
            },
            Msg::AdminList,
            Msg::AdminStats,
            Msg::AdminItem { json: "{}".into() },
            Msg::AdminResult {
                ok: true,
                message: "added".into(),
            },
        ]
    }

    #[test]
    fn datagram_frames_keep_boundaries_and_refuse_oversize() {
        let mut wire = Vec::new();
        let grams: Vec<Vec<u8>> = vec![vec![], vec![1], vec![7; 1400], vec![9; MAX_DATAGRAM]];
        for g in &grams {
            encode_datagram(&mut wire, g);
        }
        assert_eq!(&wire[..4], &[0, 0, 1, 0], "u16 LE length, then the payload");
        let mut d = DatagramDecoder::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(1000) {
            d.push(chunk);
            while let Some(g) = d.next_datagram().unwrap() {
                got.push(g.to_vec());
            }
        }
        assert_eq!(got, grams);
        assert_eq!(d.buffered(), 0);
        let mut d = DatagramDecoder::new();
        d.push(&[0xff, 0xff, 1]);
        assert_eq!(d.next_datagram(), Err(ProtoError::TooLarge(65_535)));
    }

    #[test]
    fn admin_proofs_are_not_service_proofs() {
        let (n, b) = ([1; 32], [2; 32]);
        let a = admin_proof("tok", &n, &b);
        assert!(verify_admin_proof("tok", &n, &b, &a));
        assert!(!verify_admin_proof("tok2", &n, &b, &a));
        assert!(!verify_admin_proof("tok", &n, &[3; 32], &a));
        assert!(!verify_proof("tok", &n, &b, "zs-xnat admin v1", &a));
    }

    #[test]
    fn every_message_round_trips_byte_by_byte() {
        let mut wire = Vec::new();
        for m in all() {
            m.encode(&mut wire);
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_msg().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, all());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn proxy_v2_headers_match_the_spec_layout() {
        let h = proxy_v2_header(
            "192.0.2.1:56324".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        );
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 1, 10, 0, 0, 2, 0xDC, 0x04, 0x1F, 0x90,
        ]);
        assert_eq!(h, want);
        let h = proxy_v2_header(
            "[2001:db8::1]:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(
            &h[32..48],
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&h[48..52], &[0, 1, 0, 2]);
    }

    /// The bytes of PROTOCOL.md 5.4.1 (reused data connections), checked
    /// against the document's own text.
    #[test]
    fn documented_reuse_bytes() {
        let hex = |b: &[u8]| -> String { b.iter().map(|x| format!("{x:02x}")).collect() };
        let start = Msg::StartFramed {
            peer: "192.0.2.7:40000".parse().unwrap(),
        }
        .to_bytes();
        assert_eq!(start, [0x14, 7, 0, 0, 0, 4, 192, 0, 2, 7, 0x40, 0x9c]);
        assert_eq!(Msg::DataDone.to_bytes(), [0x15, 0, 0, 0, 0]);
        let mut framed = chunk_header(2).to_vec();
        framed.extend_from_slice(b"hi");
        framed.extend_from_slice(&chunk_header(0));
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/PROTOCOL.md"
        ))
        .unwrap();
        let part = &doc[doc.find("### 5.4.1").expect("PROTOCOL.md 5.4.1")..];
        let part = &part[..part.find("## 5.5").unwrap()];
        let flat: String = part.split_whitespace().collect();
        for (what, bytes) in [
            ("StartFramed", &start[..]),
            ("DataDone", &Msg::DataDone.to_bytes()[..]),
            ("chunks", &framed[..]),
        ] {
            assert!(
                flat.contains(&hex(bytes)),
                "{what}: {} not in 5.4.1",
                hex(bytes)
            );
        }
        assert_eq!(MAX_CHUNK, 1_048_576);
        assert!(part.contains("1 to 1,048,576 bytes, `MAX_CHUNK`"));
    }

    /// The bytes documented in docs/PROTOCOL.md, Part 5 (XNat).
    #[test]
    fn documented_bytes() {
        // 5.6 and 5.7 (UDP flows, command API).
        assert_eq!(
            Msg::StartUdp {
                peer: "10.0.0.1:53".parse().unwrap()
            }
            .to_bytes(),
            [0x13, 0x07, 0, 0, 0, 0x04, 10, 0, 0, 1, 0x35, 0x00]
        );
        let mut g = Vec::new();
        encode_datagram(&mut g, b"hi");
        assert_eq!(g, [0x02, 0x00, b'h', b'i']);
        assert_eq!(
            Msg::AdminAdd {
                mapping: MappingSpec {
                    service: "dns".into(),
                    token: "t".into(),
                    bind_addr: "0.0.0.0:5353".parse().unwrap(),
                    udp: true,
                    idle_timeout_s: 30,
                    max_connections: 9,
                }
            }
            .to_bytes(),
            [
                0x22, 0x18, 0, 0, 0, 0x03, 0x00, b'd', b'n', b's', 0x01, 0x00, b't', 0x04, 0, 0, 0,
                0, 0xE9, 0x14, 0x01, 0x1E, 0, 0, 0, 0x09, 0, 0, 0
            ]
        );
        assert_eq!(
            Msg::AdminResult {
                ok: true,
                message: "added".into()
            }
            .to_bytes(),
            [0x27, 0x08, 0, 0, 0, 0x01, 0x05, 0x00, b'a', b'd', b'd', b'e', b'd']
        );
        assert_eq!(Msg::AdminList.to_bytes(), [0x24, 0, 0, 0, 0]);
        assert_eq!(
            zs_crypto::hash::to_hex(&admin_proof("secret", &[0; 32], &[1; 32])),
            "853f64d8172b6b5c67ebc6a1e671d8b4b52311909462e7c830beb1493eda0bc8"
        );
        assert_eq!(
            Msg::Register {
                service: "web".into(),
                max_load: 100,
                proof: [0xAA; 32],
            }
            .to_bytes(),
            [
                &[0x03, 0x29, 0, 0, 0, 0x03, 0x00, b'w', b'e', b'b', 0x64, 0, 0, 0][..],
                &[0xAA; 32][..]
            ]
            .concat()
        );
        assert_eq!(
            Msg::Start {
                peer: "10.0.0.1:443".parse().unwrap()
            }
            .to_bytes(),
            [0x11, 0x07, 0, 0, 0, 0x04, 10, 0, 0, 1, 0xBB, 0x01]
        );
        assert_eq!(
            Msg::Ping(1).to_bytes(),
            [0x08, 0x08, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Msg::Hello {
                version: 1,
                agent: "a".into()
            }
            .to_bytes(),
            [0x01, 0x05, 0, 0, 0, 0x01, 0x00, 0x01, 0x00, b'a']
        );
        assert_eq!(
            Msg::Unregister {
                service: "web".into()
            }
            .to_bytes(),
            [0x12, 0x05, 0, 0, 0, 0x03, 0x00, b'w', b'e', b'b']
        );
        // The proof of the PROTOCOL.md example.
        let p = proof("secret", &[0; 32], &[1; 32], "web");
        assert_eq!(
            zs_crypto::hash::to_hex(&p),
            "4f4919785d7cfb2b8dbf9c69bc2e2429ae0d028a1d7261e0ed3086076eb2360f"
        );
        assert_ne!(p, proof("secret", &[0; 32], &[2; 32], "web"));
        assert_ne!(p, proof("secret", &[1; 32], &[1; 32], "web"));
        assert_ne!(p, proof("Secret", &[0; 32], &[1; 32], "web"));
        assert_ne!(p, proof("secret", &[0; 32], &[1; 32], "web2"));
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut d = Decoder::new();
        d.push(&[0x01, 0xff, 0xff, 0xff, 0x00]);
        assert_eq!(d.next_msg(), Err(ProtoError::TooLarge(0x00ff_ffff)));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(Msg::decode(0x7f, &[]), Err(ProtoError::UnknownKind(0x7f)));
        assert!(Msg::decode(0x08, &[1, 2, 3]).is_err());
        assert!(Msg::decode(0x08, &[0; 9]).is_err());
        assert!(Msg::decode(0x04, &[0, 0]).is_err(), "empty name");
        assert!(Msg::decode(0x04, &[2, 0, 0xff, 0xfe]).is_err(), "not utf-8");
        assert!(Msg::decode(0x11, &[5, 0, 0]).is_err(), "family");
        let long = "x".repeat(MAX_NAME + 1);
        let mut p = Vec::new();
        put_str(&mut p, &long);
        assert!(Msg::decode(0x04, &p).is_err(), "name too long");
    }

    #[test]
    fn proof_verification_is_exact() {
        let p = proof("t", &[3; 32], &[4; 32], "svc");
        assert!(verify_proof("t", &[3; 32], &[4; 32], "svc", &p));
        assert!(!verify_proof("u", &[3; 32], &[4; 32], "svc", &p));
        let mut q = p;
        q[0] ^= 1;
        assert!(!verify_proof("t", &[3; 32], &[4; 32], "svc", &q));
    }
}

/// Largest datagram a UDP flow carries (the largest UDP payload over IPv4).
pub const MAX_DATAGRAM: usize = 65_507;

/// Appends one datagram frame of a UDP flow's data connection:
/// `u16 LE length | payload`. Longer payloads than [`MAX_DATAGRAM`] are the
/// caller's error (a UDP socket never returns one).
pub fn encode_datagram(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_DATAGRAM);
    let n = payload.len().min(MAX_DATAGRAM);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&payload[..n]);
}

/// Incremental decoder of datagram frames ([`encode_datagram`]); buffers at
/// most one frame plus what one read brought.
#[derive(Debug, Default)]
pub struct DatagramDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl DatagramDecoder {
    /// An empty decoder.
    pub fn new() -> DatagramDecoder {
        DatagramDecoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole datagram, `Ok(None)` when more bytes are needed; an
    /// error for a frame longer than [`MAX_DATAGRAM`] (drop the connection).
    pub fn next_datagram(&mut self) -> Result<Option<&[u8]>, ProtoError> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 2 {
            return Ok(None);
        }
        let n = u16::from_le_bytes([avail[0], avail[1]]) as usize;
        if n > MAX_DATAGRAM {
            return Err(ProtoError::TooLarge(n));
        }
        if avail.len() < 2 + n {
            return Ok(None);
        }
        let start = self.pos + 2;
        self.pos += 2 + n;
        Ok(Some(&self.buf[start..start + n]))
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// The command API's proof of the relay's `admin_token`:
/// HMAC-SHA256(token, "zs-xnat admin v1" ‖ nonce ‖ channel binding), a label
/// of its own so an admin proof is never a service proof or the reverse.
pub fn admin_proof(token: &str, nonce: &[u8; NONCE_LEN], binding: &[u8; 32]) -> [u8; PROOF_LEN] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(b"zs-xnat admin v1");
    ctx.update(nonce);
    ctx.update(binding);
    let mut out = [0u8; PROOF_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Checks an admin proof in constant time.
pub fn verify_admin_proof(
    token: &str,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8; 32],
    got: &[u8; PROOF_LEN],
) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(admin_proof(token, nonce, binding).ct_eq(got))
}

/// Largest chunk of a framed data connection ([`Msg::StartFramed`]); a
/// longer length is a protocol error (the sender splits its writes).
pub const MAX_CHUNK: usize = 1 << 20;

/// The header of one chunk of a framed data connection: `u32 LE length`
/// (0: the end of this direction).
pub fn chunk_header(len: usize) -> [u8; 4] {
    debug_assert!(len <= MAX_CHUNK);
    (len as u32).to_le_bytes()
}

/// Splits one direction of a framed data connection into its payload,
/// sans-IO: fed the plaintext as it arrives (in any pieces), it names the
/// payload ranges of each piece, skips the 4-byte headers (which may straddle
/// pieces) and stops at the end chunk. Buffers nothing but a partial header.
#[derive(Debug, Default, Clone)]
pub struct ChunkDecoder {
    header: [u8; 4],
    have: u8,
    /// Payload bytes left in the current chunk.
    left: usize,
    ended: bool,
}

impl ChunkDecoder {
    /// A decoder at the start of a direction.
    pub fn new() -> ChunkDecoder {
        ChunkDecoder::default()
    }

    /// Walks `input`, calling `data` with each payload range of it in order.
    /// `Ok(Some(n))`: the end chunk finished at offset `n` (the bytes from
    /// `n` on do not belong to this direction; so does any later input).
    /// `Ok(None)`: all of `input` consumed. An error for a chunk longer than
    /// [`MAX_CHUNK`] (drop the connection).
    pub fn feed(
        &mut self,
        input: &[u8],
        data: &mut impl FnMut(std::ops::Range<usize>),
    ) -> Result<Option<usize>, ProtoError> {
        if self.ended {
            return Ok(Some(0));
        }
        let mut at = 0;
        while at < input.len() {
            if self.left > 0 {
                let n = self.left.min(input.len() - at);
                data(at..at + n);
                at += n;
                self.left -= n;
                continue;
            }
            let n = (4 - self.have as usize).min(input.len() - at);
            self.header[self.have as usize..self.have as usize + n]
                .copy_from_slice(&input[at..at + n]);
            self.have += n as u8;
            at += n;
            if self.have < 4 {
                break;
            }
            self.have = 0;
            let len = u32::from_le_bytes(self.header) as usize;
            if len > MAX_CHUNK {
                return Err(ProtoError::TooLarge(len));
            }
            if len == 0 {
                self.ended = true;
                return Ok(Some(at));
            }
            self.left = len;
        }
        Ok(None)
    }

    /// Whether the end chunk was read.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    fn framed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut w = Vec::new();
        for c in chunks {
            w.extend_from_slice(&chunk_header(c.len()));
            w.extend_from_slice(c);
        }
        w.extend_from_slice(&chunk_header(0));
        w
    }

    /// Every way of cutting the stream into pieces gives the same payload,
    /// and the bytes after the end chunk are left alone.
    #[test]
    fn chunks_decode_the_same_in_any_pieces_and_stop_at_the_end() {
        let big = vec![7u8; 70_000];
        let mut wire = framed(&[b"GET / HTTP/1.1\r\n\r\n", b"x", &big]);
        let want: Vec<u8> = [&b"GET / HTTP/1.1\r\n\r\n"[..], b"x", &big].concat();
        wire.extend_from_slice(b"after");
        for piece in [1usize, 2, 3, 5, 7, 4096, wire.len()] {
            let mut d = ChunkDecoder::new();
            let (mut got, mut rest) = (Vec::new(), Vec::new());
            for p in wire.chunks(piece) {
                if d.ended() {
                    rest.extend_from_slice(p);
                    continue;
                }
                let end = d.feed(p, &mut |r| got.extend_from_slice(&p[r])).unwrap();
                if let Some(n) = end {
                    rest.extend_from_slice(&p[n..]);
                }
            }
            assert!(d.ended(), "piece {piece}");
            assert!(got == want, "piece {piece}: payload differs");
            assert_eq!(rest, b"after", "piece {piece}");
        }
    }

    #[test]
    fn oversized_chunks_are_refused_and_input_after_the_end_is_not_read() {
        let mut d = ChunkDecoder::new();
        let h = ((MAX_CHUNK + 1) as u32).to_le_bytes();
        assert_eq!(
            d.feed(&h, &mut |_| {}),
            Err(ProtoError::TooLarge(MAX_CHUNK + 1))
        );
        let mut d = ChunkDecoder::new();
        let mut n = 0;
        assert_eq!(d.feed(&[0, 0, 0, 0, 1, 2], &mut |_| n += 1), Ok(Some(4)));
        assert_eq!(d.feed(&[9, 9], &mut |_| n += 1), Ok(Some(0)));
        assert_eq!(n, 0);
        // A header split across pieces, then a partial chunk: not ended.
        let mut d = ChunkDecoder::new();
        assert_eq!(d.feed(&[3, 0], &mut |_| {}), Ok(None));
        assert_eq!(d.feed(&[0, 0, b'a'], &mut |_| {}), Ok(None));
        assert!(!d.ended());
    }
}
