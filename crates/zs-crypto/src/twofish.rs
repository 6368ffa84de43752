//! Twofish (Schneier, Kelsey, Whiting, Wagner, Hall, Ferguson; AES finalist,
//! 1998) with the key-dependent S-boxes folded into four tables once per key:
//! the paper's "full keying" (section 4.3.5 of the specification), so that the
//! round function `g` is four table lookups and three XORs. A cipher that
//! recomputes the S-boxes for every byte of every block runs about fifty times
//! slower; this one is proven by the official known-answer files in
//! `tests/kat.rs` and the specification's intermediate values below.
//!
//! Keys of 16, 24 or 32 bytes; 128-bit blocks; words are read little-endian.
//! Like every table-driven cipher, lookups depend on secret data (see the
//! suite notes in `suite.rs`); the AEAD suites are the default.

use std::sync::OnceLock;

use zeroize::Zeroize;

use crate::block::{check_aligned, Algorithm, BlockCipher};
use crate::error::{Error, Result};

/// The 4-bit permutations `t0..t3` that build `q0` and `q1` (specification 4.3.5).
const Q_NIBBLES: [[[u8; 16]; 4]; 2] = [
    [
        [8, 1, 7, 13, 6, 15, 3, 2, 0, 11, 5, 9, 14, 12, 10, 4],
        [14, 12, 11, 8, 1, 2, 3, 5, 15, 4, 10, 6, 7, 0, 9, 13],
        [11, 10, 5, 14, 6, 13, 9, 0, 12, 8, 15, 3, 2, 4, 7, 1],
        [13, 7, 15, 4, 1, 2, 6, 14, 9, 11, 3, 0, 8, 5, 12, 10],
    ],
    [
        [2, 8, 11, 13, 15, 7, 6, 14, 3, 1, 9, 4, 0, 10, 12, 5],
        [1, 14, 2, 11, 4, 12, 3, 7, 6, 13, 10, 5, 15, 9, 0, 8],
        [4, 12, 7, 5, 1, 6, 9, 10, 0, 14, 13, 8, 2, 11, 3, 15],
        [11, 9, 5, 1, 12, 3, 13, 14, 6, 4, 7, 15, 2, 0, 8, 10],
    ],
];

/// The MDS matrix over GF(2^8) modulo `x^8 + x^6 + x^5 + x^3 + 1`.
const MDS: [[u8; 4]; 4] = [
    [0x01, 0xEF, 0x5B, 0x5B],
    [0x5B, 0xEF, 0xEF, 0x01],
    [0xEF, 0x5B, 0x01, 0xEF],
    [0xEF, 0x01, 0xEF, 0x5B],
];
const MDS_POLY: u16 = 0x169;

/// The Reed-Solomon matrix over GF(2^8) modulo `x^8 + x^6 + x^3 + x^2 + 1`.
const RS: [[u8; 8]; 4] = [
    [0x01, 0xA4, 0x55, 0x87, 0x5A, 0x58, 0xDB, 0x9E],
    [0xA4, 0x56, 0x82, 0xF3, 0x1E, 0xC6, 0x68, 0xE5],
    [0x02, 0xA1, 0xFC, 0xC1, 0x47, 0xAE, 0x3D, 0x19],
    [0xA4, 0x55, 0x87, 0x5A, 0x58, 0xDB, 0x9E, 0x03],
];
const RS_POLY: u16 = 0x14D;

/// Which of `q0` (0) or `q1` (1) each byte position passes through at each
/// level of `h`, outermost key word first: the level of `L3` (256-bit keys),
/// of `L2` (192 and 256), then the three levels every key has.
const Q_ORDER: [[usize; 4]; 5] = [
    [1, 0, 0, 1],
    [1, 1, 0, 0],
    [0, 1, 0, 1],
    [0, 0, 1, 1],
    [1, 0, 1, 0],
];

const ROUNDS: usize = 16;

fn ror4(x: u8) -> u8 {
    ((x >> 1) | (x << 3)) & 0xf
}

fn q_entry(t: &[[u8; 16]; 4], x: u8) -> u8 {
    let (a0, b0) = (x >> 4, x & 0xf);
    let a1 = a0 ^ b0;
    let b1 = a0 ^ ror4(b0) ^ ((a0 << 3) & 0xf);
    let (a2, b2) = (t[0][a1 as usize], t[1][b1 as usize]);
    let a3 = a2 ^ b2;
    let b3 = a2 ^ ror4(b2) ^ ((a2 << 3) & 0xf);
    let (a4, b4) = (t[2][a3 as usize], t[3][b3 as usize]);
    (b4 << 4) | a4
}

/// `q0` and `q1` as 256-byte tables, built once from their nibble tables.
fn q() -> &'static [[u8; 256]; 2] {
    static Q: OnceLock<[[u8; 256]; 2]> = OnceLock::new();
    Q.get_or_init(|| {
        let mut q = [[0u8; 256]; 2];
        for (table, nibbles) in q.iter_mut().zip(&Q_NIBBLES) {
            for (x, out) in table.iter_mut().enumerate() {
                *out = q_entry(nibbles, x as u8);
            }
        }
        q
    })
}

fn gf_mul(a: u8, mut b: u8, poly: u16) -> u8 {
    let mut a = u16::from(a);
    let mut r = 0u16;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        a <<= 1;
        if a & 0x100 != 0 {
            a ^= poly;
        }
        b >>= 1;
    }
    r as u8
}

/// Column `j` of the MDS matrix times `y`, as a little-endian word.
fn mds_column(j: usize, y: u8) -> u32 {
    (0..4).fold(0u32, |z, i| {
        z | (u32::from(gf_mul(MDS[i][j], y, MDS_POLY)) << (8 * i))
    })
}

/// The byte chain of `h` for byte position `j`: `x` through the q-boxes,
/// mixed with byte `j` of each key word (`words[0]` is `L0`).
fn chain(j: usize, x: u8, words: &[u32]) -> u8 {
    let q = q();
    let k = words.len();
    let byte = |w: u32| (w >> (8 * j)) as u8;
    let mut y = x;
    // Levels for L_{k-1} down to L_0; the first two exist only for longer keys.
    let first = 4 - k;
    for (level, order) in Q_ORDER.iter().enumerate().take(4).skip(first) {
        let word = words[3 - level];
        y = q[order[j]][y as usize] ^ byte(word);
    }
    q[Q_ORDER[4][j]][y as usize]
}

/// The function `h` of the specification.
fn h(x: u32, words: &[u32]) -> u32 {
    (0..4).fold(0u32, |z, j| {
        z ^ mds_column(j, chain(j, (x >> (8 * j)) as u8, words))
    })
}

/// Twofish with its round keys and key-dependent tables.
pub struct Twofish {
    /// The 40 round keys: 8 whitening words, then 2 per round.
    k: [u32; 40],
    /// `g` split by input byte: `g(x) = s[0][x0] ^ s[1][x1] ^ s[2][x2] ^ s[3][x3]`.
    s: Box<[[u32; 256]; 4]>,
}

impl Twofish {
    /// A cipher for a 16, 24 or 32 byte key.
    pub fn new(key: &[u8]) -> Result<Self> {
        if ![16, 24, 32].contains(&key.len()) {
            return Err(Error::InvalidKeyLength {
                algorithm: "Twofish",
                got: key.len(),
            });
        }
        let k = key.len() / 8;
        let mut m = [0u32; 8];
        for (w, c) in m.iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let mut even = [0u32; 4];
        let mut odd = [0u32; 4];
        for i in 0..k {
            even[i] = m[2 * i];
            odd[i] = m[2 * i + 1];
        }
        // S_i = RS · (key bytes 8i..8i+8); g uses them in reverse order.
        let mut sw = [0u32; 4];
        for (i, chunk) in key.chunks_exact(8).enumerate() {
            let mut w = 0u32;
            for (r, row) in RS.iter().enumerate() {
                let v = row
                    .iter()
                    .zip(chunk)
                    .fold(0u8, |acc, (&c, &b)| acc ^ gf_mul(c, b, RS_POLY));
                w |= u32::from(v) << (8 * r);
            }
            sw[k - 1 - i] = w;
        }
        let mut cipher = Twofish {
            k: [0; 40],
            s: Box::new([[0; 256]; 4]),
        };
        const RHO: u32 = 0x0101_0101;
        for i in 0..20u32 {
            let a = h(RHO.wrapping_mul(2 * i), &even[..k]);
            let b = h(RHO.wrapping_mul(2 * i + 1), &odd[..k]).rotate_left(8);
            cipher.k[2 * i as usize] = a.wrapping_add(b);
            cipher.k[2 * i as usize + 1] = a.wrapping_add(b.wrapping_mul(2)).rotate_left(9);
        }
        for (j, table) in cipher.s.iter_mut().enumerate() {
            for (x, out) in table.iter_mut().enumerate() {
                *out = mds_column(j, chain(j, x as u8, &sw[..k]));
            }
        }
        m.zeroize();
        even.zeroize();
        odd.zeroize();
        sw.zeroize();
        Ok(cipher)
    }

    #[inline(always)]
    fn g(&self, x: u32) -> u32 {
        let b = x.to_le_bytes();
        self.s[0][b[0] as usize]
            ^ self.s[1][b[1] as usize]
            ^ self.s[2][b[2] as usize]
            ^ self.s[3][b[3] as usize]
    }

    fn encrypt_block(&self, block: &mut [u8]) {
        let w = words(block);
        let k = &self.k;
        let (mut r0, mut r1, mut r2, mut r3) = (w[0] ^ k[0], w[1] ^ k[1], w[2] ^ k[2], w[3] ^ k[3]);
        // Two rounds per step, so the halves swap back without moves.
        for r in (0..ROUNDS).step_by(2) {
            let t0 = self.g(r0);
            let t1 = self.g(r1.rotate_left(8));
            r2 = (r2 ^ t0.wrapping_add(t1).wrapping_add(k[2 * r + 8])).rotate_right(1);
            r3 = r3.rotate_left(1)
                ^ t0.wrapping_add(t1.wrapping_mul(2))
                    .wrapping_add(k[2 * r + 9]);
            let t0 = self.g(r2);
            let t1 = self.g(r3.rotate_left(8));
            r0 = (r0 ^ t0.wrapping_add(t1).wrapping_add(k[2 * r + 10])).rotate_right(1);
            r1 = r1.rotate_left(1)
                ^ t0.wrapping_add(t1.wrapping_mul(2))
                    .wrapping_add(k[2 * r + 11]);
        }
        put_words(block, [r2 ^ k[4], r3 ^ k[5], r0 ^ k[6], r1 ^ k[7]]);
    }

    fn decrypt_block(&self, block: &mut [u8]) {
        let w = words(block);
        let k = &self.k;
        let (mut r2, mut r3, mut r0, mut r1) = (w[0] ^ k[4], w[1] ^ k[5], w[2] ^ k[6], w[3] ^ k[7]);
        for r in (0..ROUNDS).step_by(2).rev() {
            let t0 = self.g(r2);
            let t1 = self.g(r3.rotate_left(8));
            r0 = r0.rotate_left(1) ^ t0.wrapping_add(t1).wrapping_add(k[2 * r + 10]);
            r1 = (r1
                ^ t0.wrapping_add(t1.wrapping_mul(2))
                    .wrapping_add(k[2 * r + 11]))
            .rotate_right(1);
            let t0 = self.g(r0);
            let t1 = self.g(r1.rotate_left(8));
            r2 = r2.rotate_left(1) ^ t0.wrapping_add(t1).wrapping_add(k[2 * r + 8]);
            r3 = (r3
                ^ t0.wrapping_add(t1.wrapping_mul(2))
                    .wrapping_add(k[2 * r + 9]))
            .rotate_right(1);
        }
        put_words(block, [r0 ^ k[0], r1 ^ k[1], r2 ^ k[2], r3 ^ k[3]]);
    }
}

fn words(block: &[u8]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (x, c) in w.iter_mut().zip(block.chunks_exact(4)) {
        *x = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

fn put_words(block: &mut [u8], w: [u32; 4]) {
    for (c, x) in block.chunks_exact_mut(4).zip(w) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

impl Drop for Twofish {
    fn drop(&mut self) {
        self.k.zeroize();
        for t in self.s.iter_mut() {
            t.zeroize();
        }
    }
}

impl BlockCipher for Twofish {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Twofish
    }
    fn block_size(&self) -> usize {
        16
    }
    fn encrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), 16)?;
        for b in data.chunks_exact_mut(16) {
            self.encrypt_block(b);
        }
        Ok(())
    }
    fn decrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), 16)?;
        for b in data.chunks_exact_mut(16) {
            self.decrypt_block(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_tables_start_as_the_specification_prints_them() {
        let q = q();
        assert_eq!(q[0][..8], [0xA9, 0x67, 0xB3, 0xE8, 0x04, 0xFD, 0xA3, 0x76]);
        assert_eq!(q[1][..8], [0x75, 0xF3, 0xC6, 0xF4, 0xDB, 0x7B, 0xFB, 0xC8]);
        // Both are permutations.
        for t in q {
            let mut seen = [false; 256];
            for &v in t {
                seen[v as usize] = true;
            }
            assert!(seen.iter().all(|&s| s));
        }
    }

    /// Round keys of the specification's intermediate-value file (ECB_IVAL.TXT).
    #[test]
    fn round_keys_match_the_intermediate_values() {
        let zero = Twofish::new(&[0u8; 16]).unwrap();
        assert_eq!(
            zero.k[..4],
            [0x52C5_4DDE, 0x11F0_626D, 0x7CAC_9D4A, 0x4D1B_4AAA]
        );
        assert_eq!(zero.k[39], 0x696E_A672);
        let key: Vec<u8> = (0..32)
            .map(|i| {
                [
                    0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0xFE, 0xDC, 0xBA, 0x98, 0x76,
                    0x54, 0x32, 0x10, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99,
                    0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF,
                ][i]
            })
            .collect();
        let c192 = Twofish::new(&key[..24]).unwrap();
        assert_eq!(c192.k[..2], [0x3839_4A24, 0xC36D_1175]);
        assert_eq!(c192.k[39], 0x6A1A_D61E);
        let c256 = Twofish::new(&key).unwrap();
        assert_eq!(c256.k[..2], [0x5EC7_69BF, 0x44D1_3C60]);
        assert_eq!(c256.k[39], 0xF0D5_4DCD);
    }

    #[test]
    fn decrypt_inverts_encrypt_for_every_key_length() {
        for len in [16, 24, 32] {
            let key: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let c = Twofish::new(&key).unwrap();
            let plain: Vec<u8> = (0..64u8).collect();
            let mut data = plain.clone();
            c.encrypt_blocks(&mut data).unwrap();
            assert_ne!(data, plain);
            c.decrypt_blocks(&mut data).unwrap();
            assert_eq!(data, plain);
        }
    }

    #[test]
    fn bad_key_lengths_and_unaligned_data_are_errors() {
        for len in [0, 8, 15, 17, 31, 33] {
            assert!(Twofish::new(&vec![0; len]).is_err(), "{len}");
        }
        let c = Twofish::new(&[0; 16]).unwrap();
        assert!(c.encrypt_blocks(&mut [0u8; 15]).is_err());
    }
}
