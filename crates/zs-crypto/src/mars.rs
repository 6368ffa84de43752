//! MARS, IBM's AES finalist (Burwick et al., 1998), with the revised key
//! schedule of the 1999 round-2 submission. 128-bit block; keys of 4 to 14
//! 32-bit words (16 to 56 bytes; the vectors use 16, 24 and 32). Key and data
//! words are read little-endian from the bytes, as in IBM's test vectors.
//!
//! The 512-word S-box is not shipped as a table: [`sbox`] builds it the way
//! the submission describes (SHA-1 over `5i, c1, c2, c3`, then the fix-up of
//! entries that differ from a later one in fewer than three bytes), and a test
//! checks entries against published values.

use std::sync::OnceLock;

use crate::block::{check_aligned, Algorithm, BlockCipher};
use crate::error::{Error, Result};

/// The constants hashed into the S-box: binary expansions of e and pi, and
/// the `c3` IBM picked by search.
const SBOX_C: [u32; 3] = [0xb7e1_5162, 0x243f_6a88, 0x0291_7d59];

/// Fixed patterns of the key-schedule fix-up of multiplication keys.
const B: [u32; 4] = [0xa4a8_d57b, 0x5b5d_193b, 0xc8a8_309b, 0x73f9_a978];

/// The MARS S-box: `S0` is entries 0..256, `S1` entries 256..512.
pub fn sbox() -> &'static [u32; 512] {
    static S: OnceLock<[u32; 512]> = OnceLock::new();
    S.get_or_init(build_sbox)
}

fn build_sbox() -> [u32; 512] {
    let mut s = [0u32; 512];
    let mut input = [0u8; 16];
    for (i, c) in SBOX_C.iter().enumerate() {
        input[4 + 4 * i..8 + 4 * i].copy_from_slice(&c.to_le_bytes());
    }
    let mut n = 0;
    let mut i = 0u32;
    while n < 512 {
        input[..4].copy_from_slice(&(5 * i).to_le_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
        for chunk in digest.as_ref().chunks_exact(4) {
            if n < 512 {
                s[n] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                n += 1;
            }
        }
        i += 1;
    }
    // Fix-up: within each half, an entry that agrees with a later entry of
    // the same half in two or more byte positions is multiplied by 3.
    fn zero_bytes(x: u32) -> usize {
        x.to_le_bytes().iter().filter(|&&b| b == 0).count()
    }
    for half in [0usize, 256] {
        for i in half..half + 256 {
            if (i + 1..half + 256).any(|j| zero_bytes(s[i] ^ s[j]) >= 2) {
                s[i] = s[i].wrapping_mul(3);
            }
        }
    }
    s
}

/// A MARS cipher with its 40 expanded key words (zeroized on drop).
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Mars {
    k: [u32; 40],
}

/// Bits of `w` inside a run of ten or more equal bits with both neighbours
/// equal to them, restricted to positions 2..=30 (the spec's mask `M`).
fn long_run_mask(w: u32) -> u32 {
    let mut m = 0u32;
    let mut start = 0u32;
    while start < 32 {
        let bit = (w >> start) & 1;
        let mut end = start;
        while end + 1 < 32 && (w >> (end + 1)) & 1 == bit {
            end += 1;
        }
        if end - start + 1 >= 10 {
            for p in start + 1..end {
                if (2..=30).contains(&p) {
                    m |= 1 << p;
                }
            }
        }
        start = end + 1;
    }
    m
}

impl Mars {
    /// Expands a 16..=56 byte key (a whole number of 32-bit words).
    pub fn new(key: &[u8]) -> Result<Mars> {
        if key.len() < 16 || key.len() > 56 || key.len() % 4 != 0 {
            return Err(Error::InvalidKeyLength {
                algorithm: "MARS",
                got: key.len(),
            });
        }
        let s = sbox();
        let n = key.len() / 4;
        let mut t = [0u32; 15];
        for (w, c) in t.iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        t[n] = n as u32;
        let mut k = [0u32; 40];
        for j in 0..4 {
            // Linear transformation.
            for i in 0..15 {
                t[i] ^= (t[(i + 8) % 15] ^ t[(i + 13) % 15]).rotate_left(3) ^ (4 * i + j) as u32;
            }
            // Four stirring rounds through the S-box.
            for _ in 0..4 {
                for i in 0..15 {
                    let prev = t[(i + 14) % 15];
                    t[i] = t[i].wrapping_add(s[(prev & 0x1ff) as usize]).rotate_left(9);
                }
            }
            for i in 0..10 {
                k[10 * j + i] = t[(4 * i) % 15];
            }
        }
        // Multiplication keys: low two bits set, long runs of equal bits broken.
        for i in (5..=35).step_by(2) {
            let j = (k[i] & 3) as usize;
            let w = k[i] | 3;
            let m = long_run_mask(w);
            let p = B[j].rotate_left(k[i - 1] & 31);
            k[i] = w ^ (p & m);
        }
        Ok(Mars { k })
    }

    fn e(&self, input: u32, k1: u32, k2: u32) -> (u32, u32, u32) {
        let s = sbox();
        let m = input.wrapping_add(k1);
        let mut r = input.rotate_left(13).wrapping_mul(k2);
        let mut l = s[(m & 0x1ff) as usize];
        r = r.rotate_left(5);
        let m = m.rotate_left(r & 31);
        l ^= r;
        r = r.rotate_left(5);
        l ^= r;
        l = l.rotate_left(r & 31);
        (l, m, r)
    }

    /// Encrypts four words (A first).
    pub fn encrypt_words(&self, w: [u32; 4]) -> [u32; 4] {
        let s = sbox();
        let k = &self.k;
        let mut a = w[0].wrapping_add(k[0]);
        let mut b = w[1].wrapping_add(k[1]);
        let mut c = w[2].wrapping_add(k[2]);
        let mut d = w[3].wrapping_add(k[3]);
        for i in 0..8 {
            b = (b ^ s[(a & 0xff) as usize]).wrapping_add(s[256 + ((a >> 8) & 0xff) as usize]);
            c = c.wrapping_add(s[((a >> 16) & 0xff) as usize]);
            d ^= s[256 + (a >> 24) as usize];
            a = a.rotate_right(24);
            if i == 0 || i == 4 {
                a = a.wrapping_add(d);
            }
            if i == 1 || i == 5 {
                a = a.wrapping_add(b);
            }
            (a, b, c, d) = (b, c, d, a);
        }
        for i in 0..16 {
            let (l, m, r) = self.e(a, k[2 * i + 4], k[2 * i + 5]);
            let ar = a.rotate_left(13);
            c = c.wrapping_add(m);
            if i < 8 {
                b = b.wrapping_add(l);
                d ^= r;
            } else {
                d = d.wrapping_add(l);
                b ^= r;
            }
            (a, b, c, d) = (b, c, d, ar);
        }
        for i in 0..8 {
            if i == 2 || i == 6 {
                a = a.wrapping_sub(d);
            }
            if i == 3 || i == 7 {
                a = a.wrapping_sub(b);
            }
            b ^= s[256 + (a & 0xff) as usize];
            c = c.wrapping_sub(s[(a >> 24) as usize]);
            d = d.wrapping_sub(s[256 + ((a >> 16) & 0xff) as usize])
                ^ s[((a >> 8) & 0xff) as usize];
            a = a.rotate_left(24);
            (a, b, c, d) = (b, c, d, a);
        }
        [
            a.wrapping_sub(k[36]),
            b.wrapping_sub(k[37]),
            c.wrapping_sub(k[38]),
            d.wrapping_sub(k[39]),
        ]
    }

    /// Decrypts four words (A first).
    pub fn decrypt_words(&self, w: [u32; 4]) -> [u32; 4] {
        let s = sbox();
        let k = &self.k;
        let mut a = w[0].wrapping_add(k[36]);
        let mut b = w[1].wrapping_add(k[37]);
        let mut c = w[2].wrapping_add(k[38]);
        let mut d = w[3].wrapping_add(k[39]);
        for i in (0..8).rev() {
            let ar = d.rotate_right(24);
            let d0 = (c ^ s[((ar >> 8) & 0xff) as usize])
                .wrapping_add(s[256 + ((ar >> 16) & 0xff) as usize]);
            let c0 = b.wrapping_add(s[(ar >> 24) as usize]);
            let b0 = a ^ s[256 + (ar & 0xff) as usize];
            let mut a0 = ar;
            if i == 2 || i == 6 {
                a0 = a0.wrapping_add(d0);
            }
            if i == 3 || i == 7 {
                a0 = a0.wrapping_add(b0);
            }
            (a, b, c, d) = (a0, b0, c0, d0);
        }
        for i in (0..16).rev() {
            let a0 = d.rotate_right(13);
            let (l, m, r) = self.e(a0, k[2 * i + 4], k[2 * i + 5]);
            let c0 = b.wrapping_sub(m);
            let (b0, d0) = if i < 8 {
                (a.wrapping_sub(l), c ^ r)
            } else {
                (a ^ r, c.wrapping_sub(l))
            };
            (a, b, c, d) = (a0, b0, c0, d0);
        }
        for i in (0..8).rev() {
            let mut t = d;
            if i == 0 || i == 4 {
                t = t.wrapping_sub(c);
            }
            if i == 1 || i == 5 {
                t = t.wrapping_sub(a);
            }
            let a0 = t.rotate_left(24);
            let d0 = c ^ s[256 + (a0 >> 24) as usize];
            let c0 = b.wrapping_sub(s[((a0 >> 16) & 0xff) as usize]);
            let b0 = a.wrapping_sub(s[256 + ((a0 >> 8) & 0xff) as usize]) ^ s[(a0 & 0xff) as usize];
            (a, b, c, d) = (a0, b0, c0, d0);
        }
        [
            a.wrapping_sub(k[0]),
            b.wrapping_sub(k[1]),
            c.wrapping_sub(k[2]),
            d.wrapping_sub(k[3]),
        ]
    }
}

fn load(b: &[u8]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (x, c) in w.iter_mut().zip(b.chunks_exact(4)) {
        *x = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

fn store(w: [u32; 4], b: &mut [u8]) {
    for (x, c) in w.iter().zip(b.chunks_exact_mut(4)) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

impl Mars {
    /// A cipher from an already expanded key (the 40 round words), for key
    /// schedules other than [`Mars::new`]'s: ZNet's legacy MARS uses the 1998 one.
    pub fn from_expanded_key(k: [u32; 40]) -> Mars {
        Mars { k }
    }
}

impl BlockCipher for Mars {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Mars
    }
    fn block_size(&self) -> usize {
        16
    }
    fn encrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), 16)?;
        for blk in data.chunks_exact_mut(16) {
            let out = self.encrypt_words(load(blk));
            store(out, blk);
        }
        Ok(())
    }
    fn decrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), 16)?;
        for blk in data.chunks_exact_mut(16) {
            let out = self.decrypt_words(load(blk));
            store(out, blk);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbox_matches_published_entries() {
        // The first entries of the table printed in IBM's submission.
        let s = sbox();
        assert_eq!(
            &s[..6],
            &[
                0x09d0_c479,
                0x28c8_ffe0,
                0x84aa_6c39,
                0x9dad_7287,
                0x7dff_9be3,
                0xd426_8361
            ]
        );
        // The fix-up leaves no pair in a half agreeing in two or more byte positions.
        for half in [0usize, 256] {
            for i in half..half + 256 {
                for j in i + 1..half + 256 {
                    let z = (s[i] ^ s[j])
                        .to_le_bytes()
                        .iter()
                        .filter(|&&b| b == 0)
                        .count();
                    assert!(z < 2 || i > j, "S[{i}] ~ S[{j}]");
                }
            }
        }
    }

    #[test]
    fn mask_marks_only_long_run_interiors() {
        assert_eq!(long_run_mask(0xaaaa_aaaa), 0);
        // zero bits at positions 4..=14 (bit 3 and bit 15 are ones): interior 5..=13.
        let w = 0xaaaa_aaaa & !(0x3ff << 4);
        assert_eq!(long_run_mask(w), 0x1ff << 5);
        // a run touching the top: bits 20..=31 ones, only positions 21..=30 qualify.
        assert_eq!(long_run_mask(0xfff0_0000 | 0x0005_5555), 0x3ff << 21);
        // nine equal bits are not enough.
        assert_eq!(long_run_mask(0xaaaa_aaaa & !(0x1ff << 4)), 0);
    }

    #[test]
    fn round_trip() {
        let m = Mars::new(&[3u8; 32]).unwrap();
        let p = [1, 2, 3, 0xdead_beef];
        assert_eq!(m.decrypt_words(m.encrypt_words(p)), p);
    }
}
