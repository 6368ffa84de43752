//! SHA-3 and SHAKE helpers, and the server key fingerprint.

use core::fmt;
use core::str::FromStr;

use sha3::Digest;
use shake::{ExtendableOutput, Update, XofReader};

use crate::error::Error;

/// SHA3-224 of `data`.
pub fn sha3_224(data: &[u8]) -> [u8; 28] {
    sha3::Sha3_224::digest(data).into()
}

/// SHA3-256 of `data` (zs-hash's: compiled optimised in debug builds too).
pub fn sha3_256(data: &[u8]) -> [u8; 32] {
    zs_hash::sha3_256(data)
}

/// Incremental SHA3-256 for bulk data (zs-hash's, see [`sha3_256`]).
pub use zs_hash::Sha3_256;

/// SHA3-384 of `data`.
pub fn sha3_384(data: &[u8]) -> [u8; 48] {
    sha3::Sha3_384::digest(data).into()
}

/// SHA3-512 of `data`.
pub fn sha3_512(data: &[u8]) -> [u8; 64] {
    sha3::Sha3_512::digest(data).into()
}

/// SHAKE128 of `data`, filling all of `out` (any output length).
pub fn shake128(data: &[u8], out: &mut [u8]) {
    let mut h = shake::Shake128::default();
    h.update(data);
    h.finalize_xof().read(out);
}

/// SHAKE256 of `data`, filling all of `out` (any output length).
pub fn shake256(data: &[u8], out: &mut [u8]) {
    let mut h = shake::Shake256::default();
    h.update(data);
    h.finalize_xof().read(out);
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Parses hex (either case, even length, no separators).
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    b.chunks_exact(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// The fingerprint of a server's static Ed25519 public key: SHA3-256 of the
/// 32 raw public-key bytes. Its text form is `sha3-256:` followed by 64
/// lower-case hex digits; [`FromStr`] also accepts the bare 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a raw Ed25519 public key.
    pub fn of_public_key(public_key: &[u8]) -> Fingerprint {
        Fingerprint(sha3_256(public_key))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha3-256:{}", to_hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let hex = s.strip_prefix("sha3-256:").unwrap_or(s);
        let bytes = from_hex(hex).ok_or(Error::Config(format!("bad fingerprint {s:?}")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Config(format!("fingerprint {s:?} is not 32 bytes")))?;
        Ok(Fingerprint(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trip() {
        let fp = Fingerprint::of_public_key(&[7u8; 32]);
        let s = fp.to_string();
        assert!(s.starts_with("sha3-256:") && s.len() == 9 + 64);
        assert_eq!(s.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(s[9..].parse::<Fingerprint>().unwrap(), fp);
        assert!("sha3-256:zz".parse::<Fingerprint>().is_err());
        assert!("abcd".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn sha3_empty_known_answer() {
        assert_eq!(
            to_hex(&sha3_256(b"")),
            "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
    }
}
