//! The one socket-address codec of zserver's binary protocols (PROTOCOL.md
//! "Socket addresses"): `family:u8` (4 or 6), the IP bytes (4 or 16, network
//! order), `port:u16le`, so 7 or 19 bytes. The p2pvm Mux (virtual addresses,
//! Part 4.4), the direct-path rendezvous (Part 13), XNat (Part 5) and its visitor
//! messages (Part 14) all write addresses with it. An IPv6 address's flow info
//! and scope id are not carried.
//!
//! ```
//! let a: std::net::SocketAddr = "198.19.1.1:40000".parse().unwrap();
//! let mut o = Vec::new();
//! zs_wire::addr::put(&mut o, &a);
//! assert_eq!(o, [4, 198, 19, 1, 1, 0x40, 0x9c]);
//! assert_eq!(zs_wire::addr::decode(&o), Ok((a, 7)));
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Family byte of an IPv4 address.
pub const FAMILY_V4: u8 = 4;
/// Family byte of an IPv6 address.
pub const FAMILY_V6: u8 = 6;
/// Encoded length of an IPv4 address.
pub const LEN_V4: usize = 7;
/// Encoded length of an IPv6 address (the longest address).
pub const LEN_V6: usize = 19;

/// Why an address could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrError {
    /// No byte at all where an address should start.
    Missing,
    /// A known family byte, but fewer bytes than its address needs.
    Truncated,
    /// A family byte other than 4 or 6.
    Family(u8),
}

impl AddrError {
    /// A short static description (`"truncated"` also for [`AddrError::Missing`],
    /// `"address family"`), for decoders whose errors carry `&'static str`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrError::Missing | AddrError::Truncated => "truncated",
            AddrError::Family(_) => "address family",
        }
    }
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::Missing => f.write_str("missing address"),
            AddrError::Truncated => f.write_str("truncated address"),
            AddrError::Family(x) => write!(f, "bad address family {x}"),
        }
    }
}

impl std::error::Error for AddrError {}

/// Encoded length of `a` (7 or 19).
pub fn len(a: &SocketAddr) -> usize {
    if a.is_ipv4() {
        LEN_V4
    } else {
        LEN_V6
    }
}

/// Appends `a`.
pub fn put(o: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            o.push(FAMILY_V4);
            o.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            o.push(FAMILY_V6);
            o.extend_from_slice(&ip.octets());
        }
    }
    o.extend_from_slice(&a.port().to_le_bytes());
}

/// Decodes the address at the start of `p`; returns it and the bytes it used.
pub fn decode(p: &[u8]) -> Result<(SocketAddr, usize), AddrError> {
    match p.first() {
        Some(&FAMILY_V4) if p.len() >= LEN_V4 => {
            let ip = Ipv4Addr::new(p[1], p[2], p[3], p[4]);
            let port = u16::from_le_bytes([p[5], p[6]]);
            Ok((SocketAddr::new(IpAddr::V4(ip), port), LEN_V4))
        }
        Some(&FAMILY_V6) if p.len() >= LEN_V6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&p[1..17]);
            let port = u16::from_le_bytes([p[17], p[18]]);
            Ok((SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port), LEN_V6))
        }
        Some(&FAMILY_V4) | Some(&FAMILY_V6) => Err(AddrError::Truncated),
        Some(&f) => Err(AddrError::Family(f)),
        None => Err(AddrError::Missing),
    }
}

/// Takes one address off the front of `b` (which then starts behind it); on an
/// error `b` is unchanged. The error is [`AddrError::as_str`].
pub fn take(b: &mut &[u8]) -> Result<SocketAddr, &'static str> {
    let (a, n) = decode(b).map_err(AddrError::as_str)?;
    *b = &b[n..];
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_and_errors() {
        let mut o = Vec::new();
        put(&mut o, &"198.19.1.1:40000".parse().unwrap());
        assert_eq!(o, [4, 198, 19, 1, 1, 0x40, 0x9c]);
        let mut b = &o[..];
        assert_eq!(take(&mut b).unwrap(), "198.19.1.1:40000".parse().unwrap());
        assert!(b.is_empty());
        assert_eq!(decode(&[]), Err(AddrError::Missing));
        assert_eq!(decode(&[4, 1, 2, 3, 4, 5]), Err(AddrError::Truncated));
        assert_eq!(decode(&[6; 18]), Err(AddrError::Truncated));
        assert_eq!(decode(&[5, 1, 2, 3, 4, 5, 6]), Err(AddrError::Family(5)));
        let mut short: &[u8] = &[4, 1, 2, 3, 4, 5];
        assert_eq!(take(&mut short), Err("truncated"));
        assert_eq!(short.len(), 6, "unchanged on error");
        assert_eq!(take(&mut &[][..]), Err("truncated"));
        assert_eq!(take(&mut &[5, 1, 2, 3, 4, 5, 6][..]), Err("address family"));
        assert_eq!(AddrError::Family(9).to_string(), "bad address family 9");
    }

    proptest! {
        #[test]
        fn round_trips(ip in any::<[u8; 16]>(), v4 in any::<bool>(), port in any::<u16>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let ipa: IpAddr = if v4 { Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into() } else { Ipv6Addr::from(ip).into() };
            let a = SocketAddr::new(ipa, port);
            let mut o = Vec::new();
            put(&mut o, &a);
            prop_assert_eq!(o.len(), len(&a));
            o.extend_from_slice(&tail);
            prop_assert_eq!(decode(&o), Ok((a, len(&a))));
            let mut b = &o[..];
            prop_assert_eq!(take(&mut b).unwrap(), a);
            prop_assert_eq!(b, &tail[..]);
        }

        #[test]
        fn never_panics(p in proptest::collection::vec(any::<u8>(), 0..24)) {
            if let Ok((a, n)) = decode(&p) {
                let mut o = Vec::new();
                put(&mut o, &a);
                prop_assert_eq!(&o[..], &p[..n]);
            }
        }
    }
}
