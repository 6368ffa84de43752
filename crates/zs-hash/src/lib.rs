//! Bulk hashing of file data: SHA3-256, XXH3-128, CRC-32 and the rolling
//! checksum of delta uploads, behind non-generic functions.
//!
//! Why a crate of its own: sha3 0.12 and keccak 0.2 are generic (the Keccak
//! permutation is `keccak_p<L, ROUNDS>`), so their loops are compiled in the
//! crate that names a concrete hasher, at *that* crate's opt-level; a
//! `[profile.dev.package.sha3]` override never reaches them. Here every entry
//! point is a plain function or method marked `#[inline(never)]`, so the
//! loops are code-generated in this crate, and the workspace `Cargo.toml`
//! compiles this crate at opt-level 3 in debug builds too
//! (`[profile.dev.package.zs-hash]`). Callers (zs-crypto's `hash` module,
//! zs-services) hash through it and never instantiate the generic hashers
//! themselves. Unoptimised SHA3-256 runs at a few MB/s; a 256 MiB
//! upload is hashed several times in a test (ARCHITECTURE, zs-services
//! "Session 14 (full16)").
//!
//! ```
//! // One shot and incremental SHA3-256 agree.
//! let mut h = zs_hash::Sha3_256::new();
//! h.update(b"hello ");
//! h.update(b"world");
//! assert_eq!(h.finalize(), zs_hash::sha3_256(b"hello world"));
//!
//! // The rolling checksum of a window, moved one byte on, equals the
//! // checksum of the new window computed from scratch.
//! let data = b"abcdefgh";
//! let sum = zs_hash::rolling(&data[0..4]);
//! assert_eq!(zs_hash::roll(sum, 4, data[0], data[4]), zs_hash::rolling(&data[1..5]));
//! ```

#![forbid(unsafe_code)]

use sha3::Digest;

/// Incremental SHA3-256.
#[derive(Clone, Default)]
pub struct Sha3_256 {
    inner: sha3::Sha3_256,
}

impl std::fmt::Debug for Sha3_256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha3_256")
    }
}

impl Sha3_256 {
    /// A hasher over no bytes yet.
    pub fn new() -> Sha3_256 {
        Sha3_256::default()
    }

    /// Feeds `data`.
    #[inline(never)]
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// The SHA3-256 of everything fed.
    #[inline(never)]
    pub fn finalize(self) -> [u8; 32] {
        self.inner.finalize().into()
    }
}

/// SHA3-256 of `data`.
#[inline(never)]
pub fn sha3_256(data: &[u8]) -> [u8; 32] {
    sha3::Sha3_256::digest(data).into()
}

/// XXH3-128 of `data` (seed 0).
#[inline(never)]
pub fn xxh3_128(data: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(data)
}

/// CRC-32 (IEEE, as zlib) of `data`.
#[inline(never)]
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The rolling checksum of delta uploads (rsync's): `a` = sum of the bytes,
/// `b` = sum of the running `a`s, both mod 2^16; the value is `b << 16 | a`.
#[inline(never)]
pub fn rolling(block: &[u8]) -> u32 {
    let (mut a, mut b) = (0u32, 0u32);
    for &x in block {
        a = a.wrapping_add(x as u32);
        b = b.wrapping_add(a);
    }
    ((b & 0xffff) << 16) | (a & 0xffff)
}

/// Slides a [`rolling`] checksum of a window of `len` bytes one byte on:
/// `out` leaves, `inn` enters.
#[inline(never)]
pub fn roll(sum: u32, len: usize, out: u8, inn: u8) -> u32 {
    let a = sum & 0xffff;
    let b = sum >> 16;
    let a2 = a.wrapping_sub(out as u32).wrapping_add(inn as u32) & 0xffff;
    let b2 = b
        .wrapping_sub((len as u32).wrapping_mul(out as u32))
        .wrapping_add(a2)
        & 0xffff;
    (b2 << 16) | a2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha3_256_known_answers_one_shot_and_incremental() {
        assert_eq!(
            hex(&sha3_256(b"")),
            "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
        );
        assert_eq!(
            hex(&sha3_256(b"abc")),
            "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
        );
        // Fed in pieces that straddle the 136-byte rate.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut h = Sha3_256::new();
        for piece in data.chunks(97) {
            h.update(piece);
        }
        assert_eq!(h.finalize(), sha3_256(&data));
        assert_ne!(sha3_256(&data[1..]), sha3_256(&data));
    }

    #[test]
    fn xxh3_and_crc32_known_answers() {
        // zlib's CRC-32 check value.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        // XXH3-128 of the empty input (seed 0), from the reference implementation.
        assert_eq!(xxh3_128(b""), 0x99aa_06d3_0147_98d8_6001_c324_468d_497f);
        assert_ne!(xxh3_128(b"a"), xxh3_128(b"b"));
    }

    #[test]
    fn roll_slides_the_rolling_checksum() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for len in [1usize, 7, 700, 2048] {
            let mut sum = rolling(&data[..len]);
            for pos in 0..data.len() - len {
                sum = roll(sum, len, data[pos], data[pos + len]);
                assert_eq!(
                    sum,
                    rolling(&data[pos + 1..pos + 1 + len]),
                    "len {len} pos {pos}"
                );
            }
        }
        // a and b by hand for a short block: a = 1+2+3, b = 1+3+6.
        assert_eq!(rolling(&[1, 2, 3]), (10 << 16) | 6);
    }
}
