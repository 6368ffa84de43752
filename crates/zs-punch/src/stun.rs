//! STUN (RFC 5389 binding, RFC 5780 behaviour discovery): the message codec, a server on
//! two addresses × two ports, and a client that classifies the NAT in front of it.
//!
//! Codec limits: a message is at most [`MAX_MESSAGE`] bytes and carries at most
//! [`MAX_ATTRS`] attributes; FINGERPRINT, when present, must be last and must match.
//! Anything else is an error, never a panic (fuzz target `punch_stun`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// The RFC 5389 magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Largest message we encode or accept (bytes, header included).
pub const MAX_MESSAGE: usize = 1280;
/// Most attributes we accept in one message.
pub const MAX_ATTRS: usize = 32;
/// Binding request message type.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response message type.
pub const BINDING_SUCCESS: u16 = 0x0101;
/// Binding error response message type.
pub const BINDING_ERROR: u16 = 0x0111;

const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_CHANGE_REQUEST: u16 = 0x0003;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_RESPONSE_ORIGIN: u16 = 0x802b;
const ATTR_OTHER_ADDRESS: u16 = 0x802c;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// A STUN decoding error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than its header or than its declared length.
    #[error("truncated STUN message")]
    Truncated,
    /// Over [`MAX_MESSAGE`] bytes or [`MAX_ATTRS`] attributes.
    #[error("STUN message too large")]
    TooLarge,
    /// Not a STUN message (top bits, cookie or length alignment).
    #[error("not a STUN message")]
    NotStun,
    /// An attribute's value is malformed.
    #[error("malformed STUN attribute {0:#06x}")]
    BadAttribute(u16),
    /// FINGERPRINT does not match, or is not the last attribute.
    #[error("bad STUN fingerprint")]
    BadFingerprint,
}

/// One attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    /// MAPPED-ADDRESS (0x0001), the RFC 3489 form.
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS (0x0020).
    XorMappedAddress(SocketAddr),
    /// CHANGE-REQUEST (0x0003): answer from the other IP and/or port.
    ChangeRequest {
        /// Change the IP address.
        ip: bool,
        /// Change the port.
        port: bool,
    },
    /// RESPONSE-ORIGIN (0x802b): where the response was sent from.
    ResponseOrigin(SocketAddr),
    /// OTHER-ADDRESS (0x802c): the server's alternate IP and port.
    OtherAddress(SocketAddr),
    /// SOFTWARE (0x8022), UTF-8.
    Software(String),
    /// ERROR-CODE (0x0009).
    ErrorCode {
        /// 300..=699.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// Any other attribute, kept as bytes.
    Unknown {
        /// Attribute type.
        typ: u16,
        /// Value bytes.
        value: Vec<u8>,
    },
}

/// A STUN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message type (class + method), e.g. [`BINDING_REQUEST`].
    pub typ: u16,
    /// Transaction id.
    pub txid: [u8; 12],
    /// Attributes in order (FINGERPRINT is not listed: see `fingerprint`).
    pub attrs: Vec<Attr>,
    /// Whether a FINGERPRINT attribute ends the message.
    pub fingerprint: bool,
}

impl Message {
    /// A binding request, with CHANGE-REQUEST when `change` has a flag set.
    pub fn binding_request(txid: [u8; 12], change_ip: bool, change_port: bool) -> Message {
        let mut attrs = Vec::new();
        if change_ip || change_port {
            attrs.push(Attr::ChangeRequest {
                ip: change_ip,
                port: change_port,
            });
        }
        Message {
            typ: BINDING_REQUEST,
            txid,
            attrs,
            fingerprint: true,
        }
    }

    /// The first XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
    pub fn mapped(&self) -> Option<SocketAddr> {
        let x = self.attrs.iter().find_map(|a| match a {
            Attr::XorMappedAddress(s) => Some(*s),
            _ => None,
        });
        x.or_else(|| {
            self.attrs.iter().find_map(|a| match a {
                Attr::MappedAddress(s) => Some(*s),
                _ => None,
            })
        })
    }

    /// OTHER-ADDRESS, if any.
    pub fn other(&self) -> Option<SocketAddr> {
        self.attrs.iter().find_map(|a| match a {
            Attr::OtherAddress(s) => Some(*s),
            _ => None,
        })
    }

    /// RESPONSE-ORIGIN, if any.
    pub fn origin(&self) -> Option<SocketAddr> {
        self.attrs.iter().find_map(|a| match a {
            Attr::ResponseOrigin(s) => Some(*s),
            _ => None,
        })
    }

    /// CHANGE-REQUEST flags (false, false when absent).
    pub fn change_request(&self) -> (bool, bool) {
        self.attrs
            .iter()
            .find_map(|a| match a {
                Attr::ChangeRequest { ip, port } => Some((*ip, *port)),
                _ => None,
            })
            .unwrap_or((false, false))
    }

    /// Encode (appends FINGERPRINT when `self.fingerprint`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.typ.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.txid);
        for a in &self.attrs {
            let (typ, value) = attr_value(a, &self.txid);
            put_attr(&mut out, typ, &value);
        }
        if self.fingerprint {
            // The length covers the FINGERPRINT attribute (8 bytes) when the CRC is taken.
            let len = (out.len() - 20 + 8) as u16;
            out[2..4].copy_from_slice(&len.to_be_bytes());
            let crc = crc32fast::hash(&out) ^ FINGERPRINT_XOR;
            put_attr(&mut out, ATTR_FINGERPRINT, &crc.to_be_bytes());
        }
        let len = (out.len() - 20) as u16;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Decode one datagram.
    pub fn decode(buf: &[u8]) -> Result<Message, StunError> {
        if buf.len() < 20 {
            return Err(StunError::Truncated);
        }
        if buf.len() > MAX_MESSAGE {
            return Err(StunError::TooLarge);
        }
        let typ = u16::from_be_bytes([buf[0], buf[1]]);
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let cookie = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if typ & 0xC000 != 0 || cookie != MAGIC_COOKIE || len % 4 != 0 {
            return Err(StunError::NotStun);
        }
        if buf.len() < 20 + len {
            return Err(StunError::Truncated);
        }
        if buf.len() > 20 + len {
            return Err(StunError::NotStun);
        }
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&buf[8..20]);
        let mut attrs = Vec::new();
        let mut fingerprint = false;
        let mut pos = 20;
        while pos < buf.len() {
            if fingerprint {
                return Err(StunError::BadFingerprint);
            }
            if buf.len() - pos < 4 {
                return Err(StunError::Truncated);
            }
            let at = u16::from_be_bytes([buf[pos], buf[pos + 1]]);
            let alen = u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize;
            let vstart = pos + 4;
            let padded = alen.div_ceil(4) * 4;
            if buf.len() - vstart < padded {
                return Err(StunError::Truncated);
            }
            let value = &buf[vstart..vstart + alen];
            if at == ATTR_FINGERPRINT {
                if alen != 4 {
                    return Err(StunError::BadFingerprint);
                }
                let got = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                let want = crc32fast::hash(&buf[..pos]) ^ FINGERPRINT_XOR;
                if got != want {
                    return Err(StunError::BadFingerprint);
                }
                fingerprint = true;
            } else {
                if attrs.len() >= MAX_ATTRS {
                    return Err(StunError::TooLarge);
                }
                attrs.push(parse_attr(at, value, &txid)?);
            }
            pos = vstart + padded;
        }
        Ok(Message {
            typ,
            txid,
            attrs,
            fingerprint,
        })
    }
}

fn put_attr(out: &mut Vec<u8>, typ: u16, value: &[u8]) {
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn encode_addr(addr: SocketAddr, xor: Option<&[u8; 12]>) -> Vec<u8> {
    let mut v = vec![0u8];
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = if xor.is_some() {
        addr.port() ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        addr.port()
    };
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&port.to_be_bytes());
            let mut o = ip.octets();
            if xor.is_some() {
                for (b, c) in o.iter_mut().zip(cookie) {
                    *b ^= c;
                }
            }
            v.extend_from_slice(&o);
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&port.to_be_bytes());
            let mut o = ip.octets();
            if let Some(t) = xor {
                let key: Vec<u8> = cookie.iter().chain(t.iter()).copied().collect();
                for (b, c) in o.iter_mut().zip(key) {
                    *b ^= c;
                }
            }
            v.extend_from_slice(&o);
        }
    }
    v
}

fn decode_addr(at: u16, v: &[u8], xor: Option<&[u8; 12]>) -> Result<SocketAddr, StunError> {
    if v.len() < 4 {
        return Err(StunError::BadAttribute(at));
    }
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    match (v[1], v.len()) {
        (1, 8) => {
            let mut o = [v[4], v[5], v[6], v[7]];
            if xor.is_some() {
                for (b, c) in o.iter_mut().zip(cookie) {
                    *b ^= c;
                }
            }
            Ok(SocketAddr::new(Ipv4Addr::from(o).into(), port))
        }
        (2, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[4..20]);
            if let Some(t) = xor {
                let key: Vec<u8> = cookie.iter().chain(t.iter()).copied().collect();
                for (b, c) in o.iter_mut().zip(key) {
                    *b ^= c;
                }
            }
            Ok(SocketAddr::new(Ipv6Addr::from(o).into(), port))
        }
        _ => Err(StunError::BadAttribute(at)),
    }
}

fn attr_value(a: &Attr, txid: &[u8; 12]) -> (u16, Vec<u8>) {
    match a {
        Attr::MappedAddress(s) => (ATTR_MAPPED_ADDRESS, encode_addr(*s, None)),
        Attr::XorMappedAddress(s) => (ATTR_XOR_MAPPED_ADDRESS, encode_addr(*s, Some(txid))),
        Attr::ChangeRequest { ip, port } => {
            let f = (u32::from(*ip) << 2) | (u32::from(*port) << 1);
            (ATTR_CHANGE_REQUEST, f.to_be_bytes().to_vec())
        }
        Attr::ResponseOrigin(s) => (ATTR_RESPONSE_ORIGIN, encode_addr(*s, None)),
        Attr::OtherAddress(s) => (ATTR_OTHER_ADDRESS, encode_addr(*s, None)),
        Attr::Software(s) => (ATTR_SOFTWARE, truncate_utf8(s, 763).as_bytes().to_vec()),
        Attr::ErrorCode { code, reason } => {
            let mut v = vec![0, 0, (code / 100) as u8 & 0x7, (code % 100) as u8];
            v.extend_from_slice(truncate_utf8(reason, 763).as_bytes());
            (ATTR_ERROR_CODE, v)
        }
        Attr::Unknown { typ, value } => (*typ, value.clone()),
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn parse_attr(at: u16, v: &[u8], txid: &[u8; 12]) -> Result<Attr, StunError> {
    Ok(match at {
        ATTR_MAPPED_ADDRESS => Attr::MappedAddress(decode_addr(at, v, None)?),
        ATTR_XOR_MAPPED_ADDRESS => Attr::XorMappedAddress(decode_addr(at, v, Some(txid))?),
        ATTR_RESPONSE_ORIGIN => Attr::ResponseOrigin(decode_addr(at, v, None)?),
        ATTR_OTHER_ADDRESS => Attr::OtherAddress(decode_addr(at, v, None)?),
        ATTR_CHANGE_REQUEST => {
            if v.len() != 4 {
                return Err(StunError::BadAttribute(at));
            }
            let f = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
            Attr::ChangeRequest {
                ip: f & 4 != 0,
                port: f & 2 != 0,
            }
        }
        ATTR_SOFTWARE => {
            Attr::Software(String::from_utf8(v.to_vec()).map_err(|_| StunError::BadAttribute(at))?)
        }
        ATTR_ERROR_CODE => {
            if v.len() < 4 {
                return Err(StunError::BadAttribute(at));
            }
            let class = u16::from(v[2] & 0x7);
            let num = u16::from(v[3]);
            if !(3..=6).contains(&class) || num > 99 {
                return Err(StunError::BadAttribute(at));
            }
            Attr::ErrorCode {
                code: class * 100 + num,
                reason: String::from_utf8(v[4..].to_vec())
                    .map_err(|_| StunError::BadAttribute(at))?,
            }
        }
        _ => Attr::Unknown {
            typ: at,
            value: v.to_vec(),
        },
    })
}

// ---------------------------------------------------------------------------------------
// Server

/// A STUN server: one primary address, and optionally an alternate address and port
/// (RFC 5780: then it answers CHANGE-REQUEST and advertises OTHER-ADDRESS).
///
/// Stateless: one response per well-formed binding request, nothing kept per client.
/// Responses are never larger than [`MAX_MESSAGE`].
pub struct StunServer {
    /// sockets[ip_index][port_index]; one or four.
    sockets: Vec<Vec<Arc<UdpSocket>>>,
}

impl fmt::Debug for StunServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StunServer")
            .field("addrs", &self.local_addrs())
            .finish()
    }
}

impl StunServer {
    /// Bind blocking std sockets (call from the thread whose network namespace should
    /// hold them): `primary`:`ports.0`, and with `alternate` the full 2 × 2 set.
    pub fn bind_std(
        primary: IpAddr,
        alternate: Option<IpAddr>,
        ports: (u16, u16),
    ) -> std::io::Result<Vec<std::net::UdpSocket>> {
        // Port 0 picks a free port on the primary address, then reuses it on the alternate.
        let a = std::net::UdpSocket::bind((primary, ports.0))?;
        let p0 = a.local_addr()?.port();
        let mut out = vec![a];
        if let Some(alt) = alternate {
            let b = std::net::UdpSocket::bind((primary, ports.1))?;
            let p1 = b.local_addr()?.port();
            out.push(b);
            out.push(std::net::UdpSocket::bind((alt, p0))?);
            out.push(std::net::UdpSocket::bind((alt, p1))?);
        }
        Ok(out)
    }

    /// Take sockets from [`StunServer::bind_std`] (1 or 4, in its order). Needs a tokio runtime.
    pub fn from_std(socks: Vec<std::net::UdpSocket>) -> std::io::Result<StunServer> {
        if socks.len() != 1 && socks.len() != 4 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a STUN server takes 1 or 4 sockets",
            ));
        }
        let mut conv = Vec::new();
        for s in socks {
            s.set_nonblocking(true)?;
            conv.push(Arc::new(UdpSocket::from_std(s)?));
        }
        let sockets = if conv.len() == 1 {
            vec![conv]
        } else {
            let d = conv.pop().expect("4");
            let c = conv.pop().expect("4");
            let b = conv.pop().expect("4");
            let a = conv.pop().expect("4");
            vec![vec![a, b], vec![c, d]]
        };
        Ok(StunServer { sockets })
    }

    /// Bind on this thread's namespace and build (needs a tokio runtime).
    pub fn bind(
        primary: IpAddr,
        alternate: Option<IpAddr>,
        ports: (u16, u16),
    ) -> std::io::Result<StunServer> {
        StunServer::from_std(StunServer::bind_std(primary, alternate, ports)?)
    }

    /// The addresses served (primary first).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .flatten()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Answer one datagram `buf` from `from` received on socket (`ip_idx`, `port_idx`):
    /// returns the socket indexes to answer from and the response bytes.
    /// Pure (no I/O): the serving loop and the fuzz target share it.
    pub fn respond(
        &self,
        ip_idx: usize,
        port_idx: usize,
        from: SocketAddr,
        buf: &[u8],
    ) -> Option<(usize, usize, Vec<u8>)> {
        let req = Message::decode(buf).ok()?;
        if req.typ != BINDING_REQUEST {
            return None;
        }
        let (ci, cp) = req.change_request();
        let full = self.sockets.len() == 2;
        let mut attrs = Vec::new();
        if (ci || cp) && !full {
            attrs.push(Attr::ErrorCode {
                code: 420,
                reason: "CHANGE-REQUEST needs an alternate address".into(),
            });
            let resp = Message {
                typ: BINDING_ERROR,
                txid: req.txid,
                attrs,
                fingerprint: true,
            };
            return Some((ip_idx, port_idx, resp.encode()));
        }
        let oi = if ci { 1 - ip_idx } else { ip_idx };
        let op = if cp { 1 - port_idx } else { port_idx };
        let origin = self.sockets[oi][op].local_addr().ok()?;
        attrs.push(Attr::XorMappedAddress(from));
        attrs.push(Attr::MappedAddress(from));
        attrs.push(Attr::ResponseOrigin(origin));
        if full {
            let other = self.sockets[1 - ip_idx][1 - port_idx].local_addr().ok()?;
            attrs.push(Attr::OtherAddress(other));
        }
        attrs.push(Attr::Software("zs-punch".into()));
        let resp = Message {
            typ: BINDING_SUCCESS,
            txid: req.txid,
            attrs,
            fingerprint: true,
        };
        Some((oi, op, resp.encode()))
    }

    /// Serve until the returned handle is aborted or dropped with its runtime.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        let this = Arc::new(self);
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, row) in this.sockets.iter().enumerate() {
                for (p, sock) in row.iter().enumerate() {
                    let sock = Arc::clone(sock);
                    let srv = Arc::clone(&this);
                    tasks.spawn(async move {
                        let mut buf = vec![0u8; MAX_MESSAGE + 1];
                        loop {
                            let (n, from) = match sock.recv_from(&mut buf).await {
                                Ok(x) => x,
                                Err(e) => {
                                    tracing::debug!("stun recv: {e}");
                                    continue;
                                }
                            };
                            if let Some((oi, op, resp)) = srv.respond(i, p, from, &buf[..n]) {
                                let _ = srv.sockets[oi][op].send_to(&resp, from).await;
                            }
                        }
                    });
                }
            }
            while tasks.join_next().await.is_some() {}
        })
    }
}

// ---------------------------------------------------------------------------------------
// Client

/// A binding response as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Our address as the server saw it.
    pub mapped: SocketAddr,
    /// RESPONSE-ORIGIN (or the datagram's source).
    pub origin: SocketAddr,
    /// OTHER-ADDRESS, when the server has one.
    pub other: Option<SocketAddr>,
}

/// Client timing: each request is retransmitted `tries` times, `rto` apart.
#[derive(Debug, Clone, Copy)]
pub struct ClientTiming {
    /// Wait per try.
    pub rto: Duration,
    /// Tries per request.
    pub tries: u32,
}

impl Default for ClientTiming {
    fn default() -> Self {
        ClientTiming {
            rto: Duration::from_millis(200),
            tries: 4,
        }
    }
}

fn random_txid() -> [u8; 12] {
    use ring::rand::SecureRandom;
    let mut t = [0u8; 12];
    // SystemRandom only fails when the OS has no randomness; a zero txid still works.
    let _ = ring::rand::SystemRandom::new().fill(&mut t);
    t
}

/// One binding transaction from `sock` to `server`. `Ok(None)` when no answer came
/// within the timing (the expected result of a filtered CHANGE-REQUEST).
pub async fn binding(
    sock: &UdpSocket,
    server: SocketAddr,
    change_ip: bool,
    change_port: bool,
    timing: ClientTiming,
) -> std::io::Result<Option<Binding>> {
    let txid = random_txid();
    let req = Message::binding_request(txid, change_ip, change_port).encode();
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    for _ in 0..timing.tries.max(1) {
        sock.send_to(&req, server).await?;
        let deadline = Instant::now() + timing.rto;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Ok(r) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await else {
                break;
            };
            let (n, from) = r?;
            let Ok(m) = Message::decode(&buf[..n]) else {
                continue;
            };
            if m.txid != txid || m.typ != BINDING_SUCCESS {
                continue;
            }
            let Some(mapped) = m.mapped() else { continue };
            return Ok(Some(Binding {
                mapped,
                origin: m.origin().unwrap_or(from),
                other: m.other(),
            }));
        }
    }
    Ok(None)
}

/// How the NAT maps one local address:port to public ones (RFC 4787 / 5780).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// No NAT: the mapped address is our own.
    Public,
    /// Same mapping for every destination ("easy", cone NAT).
    EndpointIndependent,
    /// A new mapping per destination address.
    AddressDependent,
    /// A new mapping per destination address and port ("symmetric").
    AddressAndPortDependent,
}

impl Mapping {
    /// Easy to punch: the mapped address seen by the STUN server is the one a peer can use.
    pub fn is_easy(self) -> bool {
        matches!(self, Mapping::Public | Mapping::EndpointIndependent)
    }
}

/// How mapped ports move between consecutive new mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    /// One mapping only (nothing to predict).
    Stable,
    /// Each new mapping is the previous port + delta (|delta| <= [`MAX_REGULAR_DELTA`]).
    Regular(i32),
    /// No usable pattern.
    Random,
}

/// Largest per-mapping port step still called regular (frp uses 5).
pub const MAX_REGULAR_DELTA: i32 = 5;

/// Filtering behaviour (RFC 5780 §4.4), when probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Packets from any address reach the mapping.
    EndpointIndependent,
    /// Only from addresses we sent to.
    AddressDependent,
    /// Only from address:ports we sent to.
    AddressAndPortDependent,
}

/// What the classifier learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// Our socket's local address.
    pub local: SocketAddr,
    /// (destination, mapped address) in the order probed.
    pub samples: Vec<(SocketAddr, SocketAddr)>,
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Port pattern of the new mappings.
    pub ports: PortPattern,
}

impl NatReport {
    /// The first mapped address (what a peer should aim at for an easy NAT).
    pub fn mapped(&self) -> SocketAddr {
        self.samples[0].1
    }
}

/// Classifier options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClassifyOptions {
    /// Per-request timing.
    pub timing: ClientTiming,
}

/// Classification failure.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer.
    #[error("no answer from STUN server {0}")]
    NoAnswer(SocketAddr),
    /// The server has no OTHER-ADDRESS (RFC 5780 needs two addresses).
    #[error("STUN server {0} has no OTHER-ADDRESS: cannot classify")]
    NoOtherAddress(SocketAddr),
}

async fn must(
    sock: &UdpSocket,
    to: SocketAddr,
    t: ClientTiming,
) -> Result<SocketAddr, ClassifyError> {
    binding(sock, to, false, false, t)
        .await?
        .map(|b| b.mapped)
        .ok_or(ClassifyError::NoAnswer(to))
}

/// Classify the NAT in front of `sock` with an RFC 5780 server at `server` (primary
/// address). Probes primary, (primary ip, alt port), (alt ip, primary port), (alt ip,
/// alt port) in that order from the same socket.
pub async fn classify(
    sock: &UdpSocket,
    server: SocketAddr,
    opts: ClassifyOptions,
) -> Result<NatReport, ClassifyError> {
    let t = opts.timing;
    let first = binding(sock, server, false, false, t)
        .await?
        .ok_or(ClassifyError::NoAnswer(server))?;
    let other = first.other.ok_or(ClassifyError::NoOtherAddress(server))?;
    let local = sock.local_addr()?;
    let dests = [
        SocketAddr::new(server.ip(), other.port()),
        SocketAddr::new(other.ip(), server.port()),
        other,
    ];
    let mut samples = vec![(server, first.mapped)];
    for d in dests {
        samples.push((d, must(sock, d, t).await?));
    }
    let m = |i: usize| samples[i].1;
    let public = if local.ip().is_unspecified() {
        local_ip_towards(server).is_some_and(|ip| ip == m(0).ip()) && m(0).port() == local.port()
    } else {
        m(0) == local
    };
    // samples: 0 = A1:P1, 1 = A1:P2, 2 = A2:P1, 3 = A2:P2.
    let mapping = if public {
        Mapping::Public
    } else if m(2) == m(0) {
        Mapping::EndpointIndependent
    } else if m(3) == m(2) && m(1) == m(0) {
        Mapping::AddressDependent
    } else {
        Mapping::AddressAndPortDependent
    };
    let ports = port_pattern(&samples.iter().map(|s| s.1).collect::<Vec<_>>());
    Ok(NatReport {
        local,
        samples,
        mapping,
        ports,
    })
}

/// Filtering behaviour (RFC 5780 §4.4) with CHANGE-REQUEST; costs up to two timeouts
/// (`timing.rto` × `timing.tries`) when filtered.
///
/// Use a **fresh** socket that has sent nothing yet: the unsolicited answers this test
/// provokes create conntrack entries on Linux NATs, and a later mapping towards those
/// server addresses then gets a different port (seen in the test bed).
pub async fn filtering(
    sock: &UdpSocket,
    server: SocketAddr,
    timing: ClientTiming,
) -> Result<Filtering, ClassifyError> {
    binding(sock, server, false, false, timing)
        .await?
        .ok_or(ClassifyError::NoAnswer(server))?;
    Ok(
        if binding(sock, server, true, true, timing).await?.is_some() {
            Filtering::EndpointIndependent
        } else if binding(sock, server, false, true, timing).await?.is_some() {
            Filtering::AddressDependent
        } else {
            Filtering::AddressAndPortDependent
        },
    )
}

/// The pattern of the distinct mappings in `mapped`, in order.
pub fn port_pattern(mapped: &[SocketAddr]) -> PortPattern {
    let mut distinct: Vec<SocketAddr> = Vec::new();
    for m in mapped {
        if distinct.last() != Some(m) && !distinct.contains(m) {
            distinct.push(*m);
        }
    }
    if distinct.len() < 2 {
        return PortPattern::Stable;
    }
    let deltas: Vec<i32> = distinct
        .windows(2)
        .map(|w| i32::from(w[1].port()) - i32::from(w[0].port()))
        .collect();
    let d = deltas[0];
    if d != 0 && d.abs() <= MAX_REGULAR_DELTA && deltas.iter().all(|x| *x == d) {
        PortPattern::Regular(d)
    } else {
        PortPattern::Random
    }
}

/// The local IP the kernel would use towards `to` (no packet sent).
pub fn local_ip_towards(to: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(to).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 5769 §2.2 sample IPv4 response (SOFTWARE "test vector", XOR-MAPPED-ADDRESS
    /// 192.0.2.1:32853, MESSAGE-INTEGRITY, FINGERPRINT): we decode it, check the address
    /// and the fingerprint (MESSAGE-INTEGRITY is kept as an unknown attribute).
    #[test]
    fn rfc5769_ipv4_response_vector() {
        let hex = "0101003c2112a442b7e7a701bc34d686fa87dfae802200\
                   0b7465737420766563746f7220002000080001a147e112a643000800\
                   142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
        let bytes = zs_crypto::hash::from_hex(hex).unwrap();
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.typ, BINDING_SUCCESS);
        assert!(m.fingerprint);
        assert_eq!(m.mapped(), Some("192.0.2.1:32853".parse().unwrap()));
        assert_eq!(m.attrs[0], Attr::Software("test vector".into()));
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        assert!(Message::decode(&bad).is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Message::decode(&[0; 10]), Err(StunError::Truncated));
        let mut m = Message::binding_request([1; 12], false, false).encode();
        m[4] = 0;
        assert_eq!(Message::decode(&m), Err(StunError::NotStun));
        let mut m = Message::binding_request([1; 12], true, false).encode();
        m.truncate(m.len() - 4);
        assert!(Message::decode(&m).is_err());
        assert_eq!(
            Message::decode(&vec![0u8; MAX_MESSAGE + 1]),
            Err(StunError::TooLarge)
        );
    }

    #[test]
    fn port_patterns() {
        let a = |p: u16| SocketAddr::from(([198, 19, 1, 1], p));
        assert_eq!(port_pattern(&[a(5), a(5), a(5)]), PortPattern::Stable);
        assert_eq!(port_pattern(&[a(5), a(6), a(7)]), PortPattern::Regular(1));
        assert_eq!(port_pattern(&[a(9), a(7), a(5)]), PortPattern::Regular(-2));
        assert_eq!(port_pattern(&[a(5), a(6), a(9)]), PortPattern::Random);
        assert_eq!(
            port_pattern(&[a(5), a(5000), a(10000)]),
            PortPattern::Random
        );
    }

    #[tokio::test]
    async fn server_answers_change_requests_from_the_right_socket() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo2: IpAddr = "127.0.0.2".parse().unwrap();
        let srv = StunServer::bind(lo, Some(lo2), (0, 0)).unwrap();
        let addrs = srv.local_addrs();
        let _h = srv.spawn();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t = ClientTiming::default();
        let b = binding(&c, addrs[0], false, false, t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.mapped, c.local_addr().unwrap());
        assert_eq!(b.origin, addrs[0]);
        assert_eq!(b.other, Some(addrs[3]));
        let b = binding(&c, addrs[0], true, true, t).await.unwrap().unwrap();
        assert_eq!(b.origin, addrs[3]);
        let b = binding(&c, addrs[0], false, true, t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.origin, addrs[1]);
        let r = classify(&c, addrs[0], ClassifyOptions::default())
            .await
            .unwrap();
        assert_eq!(r.mapping, Mapping::Public);
        assert_eq!(r.ports, PortPattern::Stable);
    }

    /// Attack: garbage, truncated, oversized, responses and non-binding requests get no
    /// answer; a CHANGE-REQUEST to a one-address server gets a 420 error, not a reply
    /// from a socket it does not have; answers stay small (no amplification beyond
    /// the fixed attribute set).
    #[tokio::test]
    async fn hostile_datagrams_get_no_answer() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let one = StunServer::bind(lo, None, (0, 0)).unwrap();
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(one.respond(0, 0, from, b"").is_none());
        assert!(one.respond(0, 0, from, &[0xff; 300]).is_none());
        assert!(one
            .respond(0, 0, from, &vec![0u8; MAX_MESSAGE + 1])
            .is_none());
        let mut resp = Message::binding_request([1; 12], false, false);
        resp.typ = BINDING_SUCCESS;
        assert!(one.respond(0, 0, from, &resp.encode()).is_none());
        let mut other = Message::binding_request([1; 12], false, false);
        other.typ = 0x0003; // Allocate (TURN): not served
        assert!(one.respond(0, 0, from, &other.encode()).is_none());
        let req = Message::binding_request([2; 12], true, true).encode();
        let (i, p, bytes) = one.respond(0, 0, from, &req).unwrap();
        assert_eq!((i, p), (0, 0));
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.typ, BINDING_ERROR);
        assert!(matches!(m.attrs[0], Attr::ErrorCode { code: 420, .. }));
        let ok = one
            .respond(
                0,
                0,
                from,
                &Message::binding_request([3; 12], false, false).encode(),
            )
            .unwrap();
        assert!(ok.2.len() <= 100, "{} bytes", ok.2.len());
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))),
        ]
    }

    fn arb_attr() -> impl Strategy<Value = Attr> {
        prop_oneof![
            arb_addr().prop_map(Attr::MappedAddress),
            arb_addr().prop_map(Attr::XorMappedAddress),
            arb_addr().prop_map(Attr::ResponseOrigin),
            arb_addr().prop_map(Attr::OtherAddress),
            (any::<bool>(), any::<bool>()).prop_map(|(ip, port)| Attr::ChangeRequest { ip, port }),
            "[a-z ]{0,40}".prop_map(Attr::Software),
            (300u16..700, "[a-z ]{0,20}")
                .prop_map(|(code, reason)| Attr::ErrorCode { code, reason }),
            (
                0x8030u16..0x8100,
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(typ, value)| Attr::Unknown { typ, value }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(typ in 0u16..0x3fff, txid in any::<[u8; 12]>(),
                      attrs in proptest::collection::vec(arb_attr(), 0..8), fp in any::<bool>()) {
            let m = Message { typ, txid, attrs, fingerprint: fp };
            let bytes = m.encode();
            prop_assert_eq!(bytes.len() % 4, 0);
            prop_assert_eq!(Message::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&bytes);
        }
    }
}
