//! Port mapping: ask the local router for a public UDP port before punching.
//!
//! A side whose router maps a public port to its punched socket is **public**: the
//! peer reaches it directly, so even a peer behind a random-port NAT (which cannot
//! punch with another hard NAT) gets a direct path. Two protocols are spoken, in this
//! order, to the default gateway's UDP port 5351:
//!
//! 1. **PCP** (RFC 6887) `MAP`: version 2, a random 96-bit nonce per mapping;
//! 2. **NAT-PMP** (RFC 6886), when the router answers PCP with
//!    `UNSUPP_VERSION` or not at all (version 0; PCP servers answer it too);
//! 3. **UPnP-IGD** ([`upnp`]: SSDP + SOAP over HTTP, through `igd-next`), when neither
//!    maps. Its SSDP search starts with PCP, so a router that speaks only UPnP costs
//!    no more than the other two's silence; a mapping is asked for only after both
//!    failed, so a router that speaks all three gets exactly one mapping.
//!
//! A punch attempt uses [`map_udp_now`], which does not wait for an SSDP search still
//! running once PCP and NAT-PMP failed (on most networks nothing answers it, and
//! multicast gets no ICMP error, so it would run its full wait): the search ends in
//! the background and its result is remembered per gateway (in the caller's
//! [`IgdMemory`], one per visitor or agent), so an IGD found serves the next attempt
//! and a silent network is not searched again for [`NO_IGD_MEMORY`].
//!
//! This order: PCP and NAT-PMP are one datagram each way with a fixed binary layout;
//! UPnP needs a multicast search, TCP connections and XML, and many routers ship it
//! disabled for security, so it is the last resort.
//!
//! Each request is sent up to [`PortMapConfig::tries`] times, 250 ms then twice as
//! long each time (RFC 6886 §3.1, shortened: a punch should not wait 64 s). A router
//! that answers garbage (wrong length, wrong opcode, wrong nonce, a mapping of
//! another port) is an error for this attempt and the next protocol is tried; nothing
//! here panics on input (`fuzz/fuzz_targets/punch_portmap.rs`).
//!
//! A [`Lease`] renews its mapping at half its lifetime and deletes it (lifetime 0)
//! when [`Lease::release`] is awaited or, best effort, when it is dropped inside a
//! runtime. What a user sees: `direct path up` logs name the mapping
//! (`port mapping: PCP 198.20.1.1:40000`), and without a mapping router the
//! attempt goes on with plain punching after at most the tries' total (1.75 s by
//! default, overlapped with STUN classification).
//!
//! Byte layouts: `docs/PROTOCOL.md`, Part 15 (test `documented_bytes`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

pub mod upnp;

/// The port of PCP and NAT-PMP servers.
pub const SERVER_PORT: u16 = 5351;

/// The protocol that produced a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device (WANIPConnection's `AddPortMapping`).
    Upnp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP-IGD",
        })
    }
}

/// Why no mapping was obtained.
#[derive(Debug, thiserror::Error)]
pub enum PortMapError {
    /// No default gateway (and none configured).
    #[error("no default gateway")]
    NoGateway,
    /// The router did not answer any protocol.
    #[error("no answer from {0} (no PCP, NAT-PMP or UPnP-IGD router)")]
    NoAnswer(IpAddr),
    /// The router refused.
    #[error("{protocol} refused: result {code} ({meaning})")]
    Refused {
        /// Which protocol.
        protocol: Protocol,
        /// The result code.
        code: u16,
        /// Its meaning.
        meaning: &'static str,
    },
    /// The router's answer is malformed or does not match the request.
    #[error("{protocol}: bad answer: {why}")]
    Garbage {
        /// Which protocol.
        protocol: Protocol,
        /// What is wrong.
        why: &'static str,
    },
    /// A UPnP-IGD exchange failed (no IGD, HTTP or SOAP error, deadline).
    #[error("UPnP-IGD: {0}")]
    Upnp(String),
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

// ---------------------------------------------------------------------------------
// NAT-PMP (RFC 6886); all integers big-endian.

/// NAT-PMP messages.
pub mod natpmp {
    use super::*;

    /// A NAT-PMP request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Request {
        /// Opcode 0: the router's external address (2 bytes).
        ExternalAddress,
        /// Opcode 1 (UDP) or 2 (TCP): map `internal` (12 bytes); lifetime 0 deletes.
        Map {
            /// UDP (else TCP).
            udp: bool,
            /// Our port.
            internal: u16,
            /// Suggested external port (0: any).
            external: u16,
            /// Requested lifetime in seconds.
            lifetime: u32,
        },
    }

    /// A NAT-PMP response.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Response {
        /// Opcode 128 (12 bytes).
        ExternalAddress {
            /// Result code (0 success).
            result: u16,
            /// Seconds since the router's mapping table was (re)started.
            epoch: u32,
            /// The external address.
            ip: Ipv4Addr,
        },
        /// Opcode 129 / 130 (16 bytes).
        Map {
            /// UDP (else TCP).
            udp: bool,
            /// Result code (0 success).
            result: u16,
            /// Seconds since the router's mapping table was (re)started.
            epoch: u32,
            /// Our port.
            internal: u16,
            /// The external port.
            external: u16,
            /// Granted lifetime in seconds.
            lifetime: u32,
        },
    }

    /// Meaning of a NAT-PMP result code.
    pub fn meaning(code: u16) -> &'static str {
        match code {
            0 => "success",
            1 => "unsupported version",
            2 => "not authorized / refused",
            3 => "network failure (no external address)",
            4 => "out of resources",
            5 => "unsupported opcode",
            _ => "unknown result code",
        }
    }

    impl Request {
        /// The datagram.
        pub fn encode(&self) -> Vec<u8> {
            match *self {
                Request::ExternalAddress => vec![0, 0],
                Request::Map {
                    udp,
                    internal,
                    external,
                    lifetime,
                } => {
                    let mut o = vec![0, if udp { 1 } else { 2 }, 0, 0];
                    o.extend_from_slice(&internal.to_be_bytes());
                    o.extend_from_slice(&external.to_be_bytes());
                    o.extend_from_slice(&lifetime.to_be_bytes());
                    o
                }
            }
        }

        /// Parses a datagram (what a router reads).
        pub fn decode(b: &[u8]) -> Result<Request, &'static str> {
            match b {
                [0, 0] => Ok(Request::ExternalAddress),
                [0, op @ (1 | 2), 0, 0, i0, i1, e0, e1, l0, l1, l2, l3] => Ok(Request::Map {
                    udp: *op == 1,
                    internal: u16::from_be_bytes([*i0, *i1]),
                    external: u16::from_be_bytes([*e0, *e1]),
                    lifetime: u32::from_be_bytes([*l0, *l1, *l2, *l3]),
                }),
                [v, ..] if *v != 0 => Err("version"),
                _ => Err("length or opcode"),
            }
        }
    }

    impl Response {
        /// The datagram (what a router sends).
        pub fn encode(&self) -> Vec<u8> {
            match *self {
                Response::ExternalAddress { result, epoch, ip } => {
                    let mut o = vec![0, 128];
                    o.extend_from_slice(&result.to_be_bytes());
                    o.extend_from_slice(&epoch.to_be_bytes());
                    o.extend_from_slice(&ip.octets());
                    o
                }
                Response::Map {
                    udp,
                    result,
                    epoch,
                    internal,
                    external,
                    lifetime,
                } => {
                    let mut o = vec![0, if udp { 129 } else { 130 }];
                    o.extend_from_slice(&result.to_be_bytes());
                    o.extend_from_slice(&epoch.to_be_bytes());
                    o.extend_from_slice(&internal.to_be_bytes());
                    o.extend_from_slice(&external.to_be_bytes());
                    o.extend_from_slice(&lifetime.to_be_bytes());
                    o
                }
            }
        }

        /// Parses a router's datagram.
        pub fn decode(b: &[u8]) -> Result<Response, &'static str> {
            if b.len() < 8 {
                return Err("short");
            }
            if b[0] != 0 {
                return Err("version");
            }
            let result = u16::from_be_bytes([b[2], b[3]]);
            let epoch = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            match (b[1], b.len()) {
                (128, 12) => Ok(Response::ExternalAddress {
                    result,
                    epoch,
                    ip: Ipv4Addr::new(b[8], b[9], b[10], b[11]),
                }),
                (op @ (129 | 130), 16) => Ok(Response::Map {
                    udp: op == 129,
                    result,
                    epoch,
                    internal: u16::from_be_bytes([b[8], b[9]]),
                    external: u16::from_be_bytes([b[10], b[11]]),
                    lifetime: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
                }),
                (128..=130, _) => Err("length"),
                _ => Err("opcode"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// PCP (RFC 6887): the MAP opcode only; all integers big-endian, addresses as 16
// bytes (IPv4 as ::ffff:a.b.c.d).

/// PCP messages (MAP).
pub mod pcp {
    use super::*;

    /// PCP version.
    pub const VERSION: u8 = 2;
    /// The MAP opcode.
    pub const OP_MAP: u8 = 1;
    /// Length of a MAP request or response.
    pub const MAP_LEN: usize = 60;
    /// Result code of a server that speaks only NAT-PMP... or an older PCP.
    pub const UNSUPP_VERSION: u8 = 1;

    /// A MAP request (60 bytes).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MapRequest {
        /// Requested lifetime in seconds (0 deletes).
        pub lifetime: u32,
        /// Our address (must be the datagram's source address).
        pub client: IpAddr,
        /// Random; the same for renewals and the delete of one mapping.
        pub nonce: [u8; 12],
        /// IANA protocol number (17 UDP, 6 TCP).
        pub protocol: u8,
        /// Our port.
        pub internal: u16,
        /// Suggested external port (0: any).
        pub external: u16,
        /// Suggested external address (unspecified: any).
        pub external_ip: IpAddr,
    }

    /// A MAP response (60 bytes).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MapResponse {
        /// Result code (0 success).
        pub result: u8,
        /// Granted lifetime in seconds (on error: how long the error lasts).
        pub lifetime: u32,
        /// Seconds since the server's state was (re)started.
        pub epoch: u32,
        /// The request's nonce.
        pub nonce: [u8; 12],
        /// IANA protocol number.
        pub protocol: u8,
        /// Our port.
        pub internal: u16,
        /// The assigned external port.
        pub external: u16,
        /// The assigned external address.
        pub external_ip: IpAddr,
    }

    /// Meaning of a PCP result code.
    pub fn meaning(code: u8) -> &'static str {
        match code {
            0 => "success",
            1 => "unsupported version",
            2 => "not authorized",
            3 => "malformed request",
            4 => "unsupported opcode",
            5 => "unsupported option",
            6 => "malformed option",
            7 => "network failure",
            8 => "no resources",
            9 => "unsupported protocol",
            10 => "user exceeded quota",
            11 => "cannot provide external",
            12 => "address mismatch",
            13 => "excessive remote peers",
            _ => "unknown result code",
        }
    }

    fn put_ip(o: &mut Vec<u8>, ip: IpAddr) {
        let v6 = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        o.extend_from_slice(&v6.octets());
    }

    fn get_ip(b: &[u8]) -> IpAddr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        let v6 = Ipv6Addr::from(a);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }

    /// "Any address" in a request: `::ffff:0.0.0.0` for IPv4 (RFC 6887 §11.1).
    pub fn any_like(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    impl MapRequest {
        /// The datagram.
        pub fn encode(&self) -> Vec<u8> {
            let mut o = Vec::with_capacity(MAP_LEN);
            o.extend_from_slice(&[VERSION, OP_MAP, 0, 0]);
            o.extend_from_slice(&self.lifetime.to_be_bytes());
            put_ip(&mut o, self.client);
            o.extend_from_slice(&self.nonce);
            o.extend_from_slice(&[self.protocol, 0, 0, 0]);
            o.extend_from_slice(&self.internal.to_be_bytes());
            o.extend_from_slice(&self.external.to_be_bytes());
            put_ip(&mut o, self.external_ip);
            o
        }

        /// Parses a datagram (what a server reads; no options accepted).
        pub fn decode(b: &[u8]) -> Result<MapRequest, &'static str> {
            if b.len() != MAP_LEN {
                return Err("length");
            }
            if b[0] != VERSION {
                return Err("version");
            }
            if b[1] != OP_MAP {
                return Err("opcode");
            }
            if b[2..4] != [0, 0] || b[37..40] != [0, 0, 0] {
                return Err("reserved bytes");
            }
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&b[24..36]);
            Ok(MapRequest {
                lifetime: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                client: get_ip(&b[8..24]),
                nonce,
                protocol: b[36],
                internal: u16::from_be_bytes([b[40], b[41]]),
                external: u16::from_be_bytes([b[42], b[43]]),
                external_ip: get_ip(&b[44..60]),
            })
        }
    }

    impl MapResponse {
        /// The datagram (what a server sends).
        pub fn encode(&self) -> Vec<u8> {
            let mut o = Vec::with_capacity(MAP_LEN);
            o.extend_from_slice(&[VERSION, 0x80 | OP_MAP, 0, self.result]);
            o.extend_from_slice(&self.lifetime.to_be_bytes());
            o.extend_from_slice(&self.epoch.to_be_bytes());
            o.extend_from_slice(&[0; 12]);
            o.extend_from_slice(&self.nonce);
            o.extend_from_slice(&[self.protocol, 0, 0, 0]);
            o.extend_from_slice(&self.internal.to_be_bytes());
            o.extend_from_slice(&self.external.to_be_bytes());
            put_ip(&mut o, self.external_ip);
            o
        }

        /// Parses a server's datagram. A short error answer (a server that does not
        /// speak this version answers with its header only) decodes with zeroed MAP
        /// fields so that its result code can be read.
        pub fn decode(b: &[u8]) -> Result<MapResponse, &'static str> {
            if b.len() < 24 {
                return Err("short");
            }
            if b[1] != 0x80 | OP_MAP {
                return Err("opcode");
            }
            let result = b[3];
            let lifetime = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let epoch = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
            if b[0] != VERSION || (result != 0 && b.len() < MAP_LEN) {
                if b.len() != 24 && b.len() != MAP_LEN {
                    return Err("length");
                }
                return Ok(MapResponse {
                    result: if b[0] != VERSION {
                        UNSUPP_VERSION
                    } else {
                        result
                    },
                    lifetime,
                    epoch,
                    nonce: [0; 12],
                    protocol: 0,
                    internal: 0,
                    external: 0,
                    external_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                });
            }
            if b.len() != MAP_LEN {
                return Err("length");
            }
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&b[24..36]);
            Ok(MapResponse {
                result,
                lifetime,
                epoch,
                nonce,
                protocol: b[36],
                internal: u16::from_be_bytes([b[40], b[41]]),
                external: u16::from_be_bytes([b[42], b[43]]),
                external_ip: get_ip(&b[44..60]),
            })
        }
    }
}

// ---------------------------------------------------------------------------------
// Client

/// Port mapping settings.
#[derive(Debug, Clone, Copy)]
pub struct PortMapConfig {
    /// The router (default: the default route's gateway, from `/proc/net/route`).
    pub gateway: Option<Ipv4Addr>,
    /// Requested lifetime (renewed at half of what the router grants).
    pub lifetime: Duration,
    /// Sends per request and protocol (250 ms, then twice as long each time).
    pub tries: u32,
    /// Speak only this protocol (a router known to misbehave with the others; tests).
    pub only: Option<Protocol>,
    /// How long the UPnP-IGD SSDP search waits for the router (it runs beside PCP
    /// and NAT-PMP).
    pub upnp_wait: Duration,
    /// Where the SSDP `M-SEARCH` goes ([`upnp::SSDP`]; tests point it elsewhere).
    pub ssdp: SocketAddr,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        PortMapConfig {
            gateway: None,
            lifetime: Duration::from_secs(3600),
            tries: 3,
            only: None,
            upnp_wait: Duration::from_secs(1),
            ssdp: upnp::SSDP,
        }
    }
}

/// A mapping the router granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Which protocol.
    pub protocol: Protocol,
    /// The router.
    pub gateway: Ipv4Addr,
    /// Our address (the mapped socket's).
    pub internal: SocketAddr,
    /// The public address peers reach us at.
    pub external: SocketAddr,
    /// Granted lifetime.
    pub lifetime: Duration,
    /// PCP nonce (zero for the others).
    pub nonce: [u8; 12],
    /// The router's IGD (UPnP-IGD mappings only).
    pub igd: Option<upnp::Igd>,
}

/// The default route's gateway (Linux: the routing table of the calling thread's
/// network namespace, `/proc/thread-self/net/route`; `/proc/net` would show the main
/// thread's namespace).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let t = std::fs::read_to_string("/proc/thread-self/net/route")
        .or_else(|_| std::fs::read_to_string("/proc/net/route"))
        .ok()?;
    for line in t.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" {
            let g = u32::from_str_radix(f[2], 16).ok()?;
            if g != 0 {
                return Some(Ipv4Addr::from(g.to_le_bytes()));
            }
        }
    }
    None
}

/// Sends `req` with retries until `accept` takes an answer (`Some`); answers it
/// rejects (`None`: not ours) are skipped.
async fn exchange<T>(
    sock: &UdpSocket,
    req: &[u8],
    tries: u32,
    mut accept: impl FnMut(&[u8]) -> Option<T>,
) -> Result<Option<T>, std::io::Error> {
    let mut wait = Duration::from_millis(250);
    let mut buf = [0u8; 1100];
    for _ in 0..tries.max(1) {
        sock.send(req).await?;
        let end = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(end, sock.recv(&mut buf)).await {
                Err(_) => break,
                // ICMP port unreachable: nothing listens there.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(n)) => {
                    if let Some(t) = accept(&buf[..n]) {
                        return Ok(Some(t));
                    }
                }
            }
        }
        wait *= 2;
    }
    Ok(None)
}

/// A socket connected to the router's port-mapping port, from the address that
/// routes to it (PCP requires the request to name its source address).
async fn router_socket(gateway: Ipv4Addr) -> std::io::Result<(UdpSocket, IpAddr)> {
    let to = SocketAddr::new(gateway.into(), SERVER_PORT);
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    s.connect(to).await?;
    let me = s.local_addr()?.ip();
    Ok((s, me))
}

enum Answer<T> {
    Ok(T),
    /// Try the next protocol (unsupported version, no answer).
    Next(Option<PortMapError>),
    Fail(PortMapError),
}

async fn pcp_map(
    gateway: Ipv4Addr,
    internal_port: u16,
    suggested: Option<SocketAddr>,
    lifetime: u32,
    nonce: [u8; 12],
    tries: u32,
) -> Result<Answer<Mapping>, std::io::Error> {
    let (s, me) = router_socket(gateway).await?;
    let req = pcp::MapRequest {
        lifetime,
        client: me,
        nonce,
        protocol: 17,
        internal: internal_port,
        external: suggested.map_or(0, |a| a.port()),
        external_ip: suggested.map_or(pcp::any_like(me), |a| a.ip()),
    };
    let mut bad: Option<&'static str> = None;
    let got = exchange(
        &s,
        &req.encode(),
        tries,
        |b| match pcp::MapResponse::decode(b) {
            Ok(r) if r.result != 0 => Some(r),
            Ok(r) if r.nonce != nonce || r.protocol != 17 || r.internal != internal_port => {
                bad = Some("the answer names another mapping");
                None
            }
            Ok(r) => Some(r),
            Err(why) => {
                bad = Some(why);
                None
            }
        },
    )
    .await?;
    Ok(match got {
        None => Answer::Next(bad.map(|why| PortMapError::Garbage {
            protocol: Protocol::Pcp,
            why,
        })),
        Some(r) if r.result == pcp::UNSUPP_VERSION => Answer::Next(None),
        Some(r) if r.result != 0 => Answer::Fail(PortMapError::Refused {
            protocol: Protocol::Pcp,
            code: u16::from(r.result),
            meaning: pcp::meaning(r.result),
        }),
        Some(r) => {
            if lifetime != 0 && (r.external == 0 || r.external_ip.is_unspecified()) {
                return Ok(Answer::Fail(PortMapError::Garbage {
                    protocol: Protocol::Pcp,
                    why: "no external address in a success",
                }));
            }
            Answer::Ok(Mapping {
                protocol: Protocol::Pcp,
                gateway,
                internal: SocketAddr::new(me, internal_port),
                external: SocketAddr::new(r.external_ip, r.external),
                lifetime: Duration::from_secs(u64::from(r.lifetime)),
                nonce,
                igd: None,
            })
        }
    })
}

async fn natpmp_map(
    gateway: Ipv4Addr,
    internal_port: u16,
    suggested: u16,
    lifetime: u32,
    tries: u32,
) -> Result<Answer<Mapping>, std::io::Error> {
    use natpmp::{Request, Response};
    let (s, me) = router_socket(gateway).await?;
    let mut bad: Option<&'static str> = None;
    let mut check = |b: &[u8]| -> Option<Response> {
        match Response::decode(b) {
            Ok(r) => Some(r),
            Err(why) => {
                bad = Some(why);
                None
            }
        }
    };
    let ip = if lifetime == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        match exchange(&s, &Request::ExternalAddress.encode(), tries, |b| {
            check(b).filter(|r| matches!(r, Response::ExternalAddress { .. }))
        })
        .await?
        {
            None => {
                return Ok(Answer::Next(bad.map(|why| PortMapError::Garbage {
                    protocol: Protocol::NatPmp,
                    why,
                })))
            }
            Some(Response::ExternalAddress { result: 0, ip, .. }) if !ip.is_unspecified() => ip,
            Some(Response::ExternalAddress { result, .. }) => {
                return Ok(Answer::Fail(PortMapError::Refused {
                    protocol: Protocol::NatPmp,
                    code: result,
                    meaning: natpmp::meaning(result),
                }))
            }
            Some(_) => unreachable!("filtered"),
        }
    };
    let req = Request::Map {
        udp: true,
        internal: internal_port,
        external: suggested,
        lifetime,
    };
    let got = exchange(&s, &req.encode(), tries, |b| {
        check(b).filter(|r| matches!(r, Response::Map { udp: true, .. }))
    })
    .await?;
    Ok(match got {
        None => Answer::Next(Some(bad.map_or(
            PortMapError::NoAnswer(gateway.into()),
            |why| PortMapError::Garbage {
                protocol: Protocol::NatPmp,
                why,
            },
        ))),
        Some(Response::Map {
            result,
            internal,
            external,
            lifetime: granted,
            ..
        }) => {
            if result != 0 {
                return Ok(Answer::Fail(PortMapError::Refused {
                    protocol: Protocol::NatPmp,
                    code: result,
                    meaning: natpmp::meaning(result),
                }));
            }
            if internal != internal_port || (lifetime != 0 && external == 0) {
                return Ok(Answer::Fail(PortMapError::Garbage {
                    protocol: Protocol::NatPmp,
                    why: "the answer names another mapping",
                }));
            }
            Answer::Ok(Mapping {
                protocol: Protocol::NatPmp,
                gateway,
                internal: SocketAddr::new(me, internal_port),
                external: SocketAddr::new(ip.into(), external),
                lifetime: Duration::from_secs(u64::from(granted)),
                nonce: [0; 12],
                igd: None,
            })
        }
        Some(_) => unreachable!("filtered"),
    })
}

fn lifetime_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1)
}

/// PCP, then NAT-PMP (as configured): the first mapping, or why none.
async fn map_pcp_natpmp(
    gateway: Ipv4Addr,
    internal_port: u16,
    cfg: &PortMapConfig,
) -> Result<Mapping, PortMapError> {
    let mut nonce = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| std::io::Error::other("no randomness"))?;
    let life = lifetime_secs(cfg.lifetime);
    let mut garbage = None;
    if cfg.only != Some(Protocol::NatPmp) {
        match pcp_map(gateway, internal_port, None, life, nonce, cfg.tries).await? {
            Answer::Ok(m) => return Ok(m),
            Answer::Fail(e) => return Err(e),
            Answer::Next(e) => garbage = e,
        }
        if cfg.only == Some(Protocol::Pcp) {
            return Err(garbage.unwrap_or(PortMapError::NoAnswer(gateway.into())));
        }
    }
    match natpmp_map(gateway, internal_port, internal_port, life, cfg.tries).await? {
        Answer::Ok(m) => Ok(m),
        Answer::Fail(e) => Err(e),
        Answer::Next(e) => Err(match (garbage, e) {
            (Some(g), _) => g,
            (None, Some(e)) => e,
            (None, None) => PortMapError::NoAnswer(gateway.into()),
        }),
    }
}

/// Asks the router to map a public UDP port to local port `internal_port` (the
/// punched socket's): PCP first, then NAT-PMP, then UPnP-IGD (whose SSDP search runs
/// beside the first two; see the module text).
pub async fn map_udp(internal_port: u16, cfg: &PortMapConfig) -> Result<Mapping, PortMapError> {
    let gateway = cfg
        .gateway
        .or_else(default_gateway)
        .ok_or(PortMapError::NoGateway)?;
    let want_upnp = matches!(cfg.only, None | Some(Protocol::Upnp));
    let search = async {
        if want_upnp {
            upnp::discover(gateway, cfg.ssdp, cfg.upnp_wait).await
        } else {
            Err(PortMapError::NoAnswer(gateway.into()))
        }
    };
    let first = async {
        if cfg.only == Some(Protocol::Upnp) {
            Err(PortMapError::NoAnswer(gateway.into()))
        } else {
            map_pcp_natpmp(gateway, internal_port, cfg).await
        }
    };
    tokio::pin!(search, first);
    let mut found = None;
    let first = loop {
        tokio::select! {
            r = &mut first => break r,
            s = &mut search, if found.is_none() => found = Some(s),
        }
    };
    let first_err = match first {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    if !want_upnp {
        return Err(first_err);
    }
    let found = match found {
        Some(s) => s,
        None => search.await,
    };
    map_upnp(found, first_err, gateway, internal_port, cfg).await
}

/// After PCP / NAT-PMP failed with `first_err`: map through the IGD `found`, or say
/// why there is no mapping.
async fn map_upnp(
    found: Result<upnp::Igd, PortMapError>,
    first_err: PortMapError,
    gateway: Ipv4Addr,
    internal_port: u16,
    cfg: &PortMapConfig,
) -> Result<Mapping, PortMapError> {
    let igd = match found {
        Ok(igd) => igd,
        // Nothing answered anything: say so; a PCP / NAT-PMP refusal or garbage
        // says more than "no IGD".
        Err(e) => {
            return Err(match first_err {
                PortMapError::NoAnswer(_)
                    if cfg.only == Some(Protocol::Upnp) || !matches!(e, PortMapError::Upnp(_)) =>
                {
                    e
                }
                f => f,
            })
        }
    };
    let (_, me) = router_socket(gateway).await?;
    let life = lifetime_secs(cfg.lifetime);
    upnp::map(
        &igd,
        gateway,
        SocketAddr::new(me, internal_port),
        internal_port,
        life,
    )
    .await
}

/// How long "no IGD answered the SSDP search" is remembered per gateway: no search
/// is sent to it meanwhile by [`map_udp_now`].
pub const NO_IGD_MEMORY: Duration = Duration::from_secs(300);

/// What an earlier SSDP search found for a gateway.
#[derive(Clone)]
enum Known {
    Igd(upnp::Igd),
    Absent(std::time::Instant),
}

/// Key: the gateway, where the search went.
type IgdKey = (Ipv4Addr, SocketAddr);

#[derive(Default)]
struct MemoryInner {
    known: std::collections::HashMap<IgdKey, Known>,
    /// Searches [`map_udp_now`] started, per key (tests).
    searches: std::collections::HashMap<IgdKey, u32>,
}

/// What [`map_udp_now`]'s SSDP searches learned about routers' UPnP-IGDs: an IGD
/// found (the next call maps through it without a search), or "none answered"
/// (no search for [`NO_IGD_MEMORY`]). One per owner (a visitor, an agent), kept for
/// its life and passed to each of its attempts; clones share it.
///
/// It is not process-wide on purpose: a process may hold owners in several network
/// namespaces (the test beds do), and a namespace cannot be named for good from
/// user space without `unsafe` (the inode of `/proc/thread-self/ns/net` is reused
/// as soon as a namespace is freed). A process-wide memory keyed by that inode let
/// a deleted namespace's "no IGD" silence a new namespace's search for 5 minutes
/// (`visit_lab::hard_hard_gets_direct_once_the_visitors_igd_answers`, session 12).
/// An owner's attempts all run in the namespace it lives in.
#[derive(Clone, Default)]
pub struct IgdMemory(std::sync::Arc<std::sync::Mutex<MemoryInner>>);

impl std::fmt::Debug for IgdMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IgdMemory")
            .field("gateways", &self.lock().known.len())
            .finish()
    }
}

impl IgdMemory {
    /// An empty memory (nothing searched yet).
    pub fn new() -> IgdMemory {
        IgdMemory::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the searches learned about `gateway`'s IGD (searched at `ssdp`):
    /// `Some(true)` an IGD is known (the next [`map_udp_now`] maps through it without
    /// a search), `Some(false)` none answered within the last [`NO_IGD_MEMORY`],
    /// `None` nothing known (no search yet, or one still running).
    pub fn known(&self, gateway: Ipv4Addr, ssdp: SocketAddr) -> Option<bool> {
        match self.lock().known.get(&(gateway, ssdp)) {
            Some(Known::Igd(_)) => Some(true),
            Some(Known::Absent(t)) if t.elapsed() < NO_IGD_MEMORY => Some(false),
            _ => None,
        }
    }

    /// [`IgdMemory::known`] for the calling thread's default gateway, searched at
    /// [`upnp::SSDP`] (what [`PortMapConfig::default`] does); `None` without a
    /// default route.
    pub fn known_for_default_gateway(&self) -> Option<bool> {
        default_gateway().and_then(|g| self.known(g, upnp::SSDP))
    }

    /// Searches [`map_udp_now`] started for `gateway` / `ssdp` with this memory.
    pub fn searches(&self, gateway: Ipv4Addr, ssdp: SocketAddr) -> u32 {
        self.lock()
            .searches
            .get(&(gateway, ssdp))
            .copied()
            .unwrap_or(0)
    }

    fn get(&self, key: &IgdKey) -> Option<Known> {
        self.lock().known.get(key).cloned()
    }

    fn set(&self, key: IgdKey, k: Known) {
        self.lock().known.insert(key, k);
    }

    fn forget(&self, key: &IgdKey) {
        self.lock().known.remove(key);
    }

    fn count_search(&self, key: IgdKey) {
        *self.lock().searches.entry(key).or_default() += 1;
    }
}

/// [`map_udp`] for a punch attempt, which must not wait for a silent SSDP search
/// (no router answers it on most networks, and multicast gets no ICMP error, so it
/// runs its full [`PortMapConfig::upnp_wait`]). PCP then NAT-PMP as in [`map_udp`];
/// when both failed, UPnP-IGD maps only through an IGD already known for this
/// gateway or one whose search answered by then. A search still running is left to
/// finish in the background and its result is remembered per gateway (and network
/// namespace): an IGD found is used by the next call (the next attempt is the
/// upgrade), and "no IGD" stops searches for [`NO_IGD_MEMORY`]. An IGD that fails
/// to map is forgotten. What is remembered lives in `memory` (the caller's, one per
/// owner of attempts: [`IgdMemory`]).
pub async fn map_udp_now(
    internal_port: u16,
    cfg: &PortMapConfig,
    memory: &IgdMemory,
) -> Result<Mapping, PortMapError> {
    let gateway = cfg
        .gateway
        .or_else(default_gateway)
        .ok_or(PortMapError::NoGateway)?;
    let want_upnp = matches!(cfg.only, None | Some(Protocol::Upnp));
    let key = (gateway, cfg.ssdp);
    let known = if want_upnp { memory.get(&key) } else { None };
    let mut search = match known {
        Some(Known::Igd(_)) => None,
        Some(Known::Absent(t)) if t.elapsed() < NO_IGD_MEMORY => None,
        _ if !want_upnp => None,
        _ => {
            memory.count_search(key);
            let (memory, ssdp, wait) = (memory.clone(), cfg.ssdp, cfg.upnp_wait);
            Some(tokio::spawn(async move {
                let r = upnp::discover(gateway, ssdp, wait).await;
                let k = match &r {
                    Ok(igd) => Known::Igd(igd.clone()),
                    Err(_) => Known::Absent(std::time::Instant::now()),
                };
                memory.set(key, k);
                r
            }))
        }
    };
    let first = async {
        if cfg.only == Some(Protocol::Upnp) {
            Err(PortMapError::NoAnswer(gateway.into()))
        } else {
            map_pcp_natpmp(gateway, internal_port, cfg).await
        }
    };
    let (first, found) = {
        let waiting = async {
            match search.as_mut() {
                Some(h) => h
                    .await
                    .unwrap_or_else(|e| Err(PortMapError::Upnp(format!("SSDP search: {e}")))),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(first, waiting);
        let mut found = None;
        let first = loop {
            tokio::select! {
                r = &mut first => break r,
                s = &mut waiting, if found.is_none() => found = Some(s),
            }
        };
        (first, found)
    };
    let first_err = match first {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    if !want_upnp {
        return Err(first_err);
    }
    if let Some(Known::Igd(igd)) = known {
        let r = map_upnp(Ok(igd), first_err, gateway, internal_port, cfg).await;
        if r.is_err() {
            memory.forget(&key);
        }
        return r;
    }
    match found {
        Some(found) => map_upnp(found, first_err, gateway, internal_port, cfg).await,
        // No IGD known, or the search is still waiting: do not wait for it (dropping
        // the handle leaves it running; it records what it finds).
        None => {
            if search.is_some() {
                tracing::info!(%gateway, "port mapping: SSDP search still running; an IGD it finds serves the next attempt");
            }
            Err(first_err)
        }
    }
}

/// Renews `m` (same external port and, for PCP, the same nonce) for `lifetime`, or
/// deletes it with `Duration::ZERO`.
pub async fn renew(m: &Mapping, lifetime: Duration, tries: u32) -> Result<Mapping, PortMapError> {
    let life = if lifetime.is_zero() {
        0
    } else {
        lifetime_secs(lifetime)
    };
    let port = m.internal.port();
    let a = match (m.protocol, &m.igd) {
        (Protocol::Pcp, _) => {
            pcp_map(m.gateway, port, Some(m.external), life, m.nonce, tries).await?
        }
        (Protocol::NatPmp, _) => {
            // RFC 6886 §3.4: a delete names the internal port; the suggestion is 0.
            let sugg = if life == 0 { 0 } else { m.external.port() };
            natpmp_map(m.gateway, port, sugg, life, tries).await?
        }
        (Protocol::Upnp, Some(igd)) => {
            if life == 0 {
                upnp::delete(igd, m.external.port()).await?;
                return Ok(m.clone());
            }
            // AddPortMapping again for the same client and port extends the lease.
            let n = upnp::map(igd, m.gateway, m.internal, m.external.port(), life).await?;
            Answer::Ok(n)
        }
        (Protocol::Upnp, None) => {
            return Err(PortMapError::Upnp("a UPnP mapping without its IGD".into()))
        }
    };
    match a {
        Answer::Ok(mut n) => {
            if life == 0 {
                n.external = m.external;
            }
            Ok(n)
        }
        Answer::Fail(e) => Err(e),
        Answer::Next(e) => Err(e.unwrap_or(PortMapError::NoAnswer(m.gateway.into()))),
    }
}

/// A mapping kept alive: renewed at half its granted lifetime until released.
pub struct Lease {
    tries: u32,
    renewals: std::sync::Arc<std::sync::atomic::AtomicU32>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    current: std::sync::Arc<std::sync::Mutex<Mapping>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({:?})", self.mapping())
    }
}

impl Lease {
    /// Starts renewing `m` (needs a tokio runtime). `lifetime` is what each renewal
    /// asks for.
    pub fn keep(m: Mapping, lifetime: Duration, tries: u32) -> Lease {
        let current = std::sync::Arc::new(std::sync::Mutex::new(m));
        let cur = current.clone();
        let renewals = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = renewals.clone();
        let renewer = tokio::spawn(async move {
            loop {
                let granted = cur.lock().expect("lease").lifetime;
                let wait = (granted / 2).max(Duration::from_secs(1));
                tokio::time::sleep(wait).await;
                let m = cur.lock().expect("lease").clone();
                match renew(&m, lifetime, tries).await {
                    Ok(n) => {
                        if n.external != m.external {
                            tracing::warn!(old = %m.external, new = %n.external, "port mapping: the router moved the external port");
                        }
                        *cur.lock().expect("lease") = n;
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "port mapping: renewal failed; retrying");
                        cur.lock().expect("lease").lifetime = Duration::from_secs(2);
                    }
                }
            }
        });
        Lease {
            tries,
            renewals,
            renewer: Some(renewer),
            current,
        }
    }

    /// Renewals the router granted so far.
    pub fn renewals(&self) -> u32 {
        self.renewals.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The mapping as last granted.
    pub fn mapping(&self) -> Mapping {
        self.current.lock().expect("lease").clone()
    }

    /// Stops renewing and deletes the mapping at the router.
    pub async fn release(mut self) -> Result<(), PortMapError> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        let m = self.mapping();
        renew(&m, Duration::ZERO, self.tries).await.map(|_| ())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
            // Best effort: delete in the background when a runtime is there.
            let m = self.mapping();
            let tries = self.tries;
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = renew(&m, Duration::ZERO, tries).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc_block(label: &str) -> String {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let part = &doc[doc
            .find("zs-punch port mapping")
            .expect("the port mapping part in PROTOCOL.md")..];
        let fence = format!("```text {label}\n");
        let at = part
            .find(&fence)
            .unwrap_or_else(|| panic!("{label} missing"));
        let block = &part[at + fence.len()..];
        let block = &block[..block.find("```").expect("end of block")];
        block
            .lines()
            .map(|l| l.split('|').next().unwrap_or(""))
            .flat_map(|l| l.split_whitespace())
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The byte layouts of PROTOCOL Part 15.
    #[test]
    fn documented_bytes() {
        let nonce = [0xab; 12];
        let req = pcp::MapRequest {
            lifetime: 3600,
            client: "198.18.1.2".parse().unwrap(),
            nonce,
            protocol: 17,
            internal: 40000,
            external: 0,
            external_ip: "0.0.0.0".parse().unwrap(),
        };
        assert_eq!(hex(&req.encode()), doc_block("pcp-map-request"));
        let resp = pcp::MapResponse {
            result: 0,
            lifetime: 3600,
            epoch: 5,
            nonce,
            protocol: 17,
            internal: 40000,
            external: 40000,
            external_ip: "198.20.1.1".parse().unwrap(),
        };
        assert_eq!(hex(&resp.encode()), doc_block("pcp-map-response"));
        let m = natpmp::Request::Map {
            udp: true,
            internal: 40000,
            external: 40000,
            lifetime: 3600,
        };
        assert_eq!(hex(&m.encode()), doc_block("natpmp-map-request"));
        let r = natpmp::Response::Map {
            udp: true,
            result: 0,
            epoch: 5,
            internal: 40000,
            external: 40000,
            lifetime: 3600,
        };
        assert_eq!(hex(&r.encode()), doc_block("natpmp-map-response"));
    }

    #[test]
    fn garbage_answers_are_errors() {
        assert!(natpmp::Response::decode(&[]).is_err());
        assert!(natpmp::Response::decode(&[0, 129, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(natpmp::Response::decode(&[1, 128, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]).is_err());
        assert!(natpmp::Response::decode(&[0, 7, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]).is_err());
        assert!(pcp::MapResponse::decode(&[2, 0x81, 0, 0]).is_err());
        assert!(pcp::MapResponse::decode(&[0u8; 60]).is_err());
        assert!(pcp::MapResponse::decode(&[
            2, 0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
        ])
        .is_err());
        // A NAT-PMP router answering a PCP request: version 0, "unsupported version".
        let r = pcp::MapResponse::decode(&[
            0, 0x81, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ])
        .unwrap();
        assert_eq!(r.result, pcp::UNSUPP_VERSION);
    }

    /// A "router" on loopback that answers garbage: an error after the tries, no panic.
    #[tokio::test]
    async fn a_router_answering_garbage_is_an_error() {
        // The client always talks to port 5351; bind it on a loopback address of
        // its own when free, else skip (another test or a real router holds it).
        let Ok(router) = UdpSocket::bind("127.0.0.3:5351").await else {
            eprintln!("skipped: 127.0.0.3:5351 busy");
            return;
        };
        let t = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let mut answered = 0u32;
            while let Ok((n, from)) = router.recv_from(&mut buf).await {
                // Right length, wrong everything: random-ish bytes of the length.
                let junk: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(37) ^ 0x5a).collect();
                let _ = router.send_to(&junk, from).await;
                answered += 1;
            }
            answered
        });
        let cfg = PortMapConfig {
            gateway: Some(Ipv4Addr::new(127, 0, 0, 3)),
            lifetime: Duration::from_secs(60),
            tries: 2,
            only: None,
            upnp_wait: Duration::from_millis(200),
            // No multicast out of a test: the SSDP search goes to a closed port.
            ssdp: SocketAddr::from(([127, 0, 0, 3], 1900)),
        };
        let e = map_udp(40000, &cfg).await.unwrap_err();
        assert!(matches!(e, PortMapError::Garbage { .. }), "{e}");
        t.abort();
    }

    proptest! {
        #[test]
        fn decoders_never_panic_and_round_trip(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(r) = natpmp::Response::decode(&b) { prop_assert_eq!(r.encode(), b.clone()); }
            if let Ok(r) = natpmp::Request::decode(&b) { prop_assert_eq!(r.encode(), b.clone()); }
            let _ = pcp::MapResponse::decode(&b);
            let _ = pcp::MapRequest::decode(&b);
        }
    }
}
