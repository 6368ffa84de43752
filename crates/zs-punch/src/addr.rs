//! The one socket-address codec of the direct-path wire (PROTOCOL Parts 13 and 14):
//! `family:u8` (4 or 6), the IP bytes (4 or 16), `port:u16le` (the byte order of
//! XNat's Part 5 addresses, which Part 14 rides inside).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Encoded length of `a` (7 or 19).
pub fn len(a: &SocketAddr) -> usize {
    if a.is_ipv4() {
        7
    } else {
        19
    }
}

/// Appends `a`.
pub fn put(o: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            o.push(4);
            o.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            o.push(6);
            o.extend_from_slice(&ip.octets());
        }
    }
    o.extend_from_slice(&a.port().to_le_bytes());
}

/// Takes one address off the front of `b`.
pub fn take(b: &mut &[u8]) -> Result<SocketAddr, &'static str> {
    let (&family, rest) = b.split_first().ok_or("truncated")?;
    let n = match family {
        4 => 4,
        6 => 16,
        _ => return Err("address family"),
    };
    if rest.len() < n + 2 {
        return Err("truncated");
    }
    let ip: IpAddr = if n == 4 {
        Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]).into()
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&rest[..16]);
        Ipv6Addr::from(a).into()
    };
    let port = u16::from_le_bytes([rest[n], rest[n + 1]]);
    *b = &rest[n + 2..];
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn port_is_little_endian() {
        let mut o = Vec::new();
        put(&mut o, &"198.19.1.1:40000".parse().unwrap());
        assert_eq!(o, [4, 198, 19, 1, 1, 0x40, 0x9c]);
        let mut b = &o[..];
        assert_eq!(take(&mut b).unwrap(), "198.19.1.1:40000".parse().unwrap());
        assert!(b.is_empty());
        assert_eq!(take(&mut &[4, 1, 2, 3, 4, 5][..]), Err("truncated"));
        assert_eq!(take(&mut &[5, 1, 2, 3, 4, 5, 6][..]), Err("address family"));
    }

    proptest! {
        #[test]
        fn round_trips(ip in any::<[u8; 16]>(), v4 in any::<bool>(), port in any::<u16>()) {
            let ipa: IpAddr = if v4 { Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into() } else { Ipv6Addr::from(ip).into() };
            let a = SocketAddr::new(ipa, port);
            let mut o = Vec::new();
            put(&mut o, &a);
            prop_assert_eq!(o.len(), len(&a));
            let mut b = &o[..];
            prop_assert_eq!(take(&mut b).unwrap(), a);
        }
    }
}
