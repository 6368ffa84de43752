//! Serpent (Anderson, Biham, Knudsen; AES finalist, 1998), bitsliced with
//! Osvik's S-box circuits, **four blocks at a time**: each of the four state
//! words is a `Lanes` value holding that word of four blocks, so every
//! circuit operation and every rotation of the linear transform works on four
//! blocks with one 128-bit vector instruction (the compiler vectorises the
//! lane loops; no `unsafe`, no intrinsics). A run shorter than four blocks
//! takes the same rounds on one block (`u32` words).
//!
//! The published key schedule (keys of 16, 24 or 32 bytes; shorter keys are
//! padded with a one bit, then zeros) is proven by the official known-answer
//! file in `tests/kat.rs`; ZNet's variant with its own round keys is in
//! `legacy::quirks`. Words are read little-endian (the NESSIE byte order the
//! `serpent` crate and the known-answer file use).

use std::ops::{BitAndAssign, BitOrAssign, BitXorAssign, Not};

use zeroize::Zeroize;

use crate::block::{check_aligned, Algorithm, BlockCipher};
use crate::error::{Error, Result};

mod sbox;

use sbox::{
    sbox_d0, sbox_d1, sbox_d2, sbox_d3, sbox_d4, sbox_d5, sbox_d6, sbox_d7, sbox_e0, sbox_e1,
    sbox_e2, sbox_e3, sbox_e4, sbox_e5, sbox_e6, sbox_e7,
};

/// What the S-box circuits and the linear transform need of a word: one block's
/// 32-bit word (`u32`) or the same word of several blocks ([`Lanes`]).
trait Word: Copy + BitXorAssign + BitAndAssign + BitOrAssign + Not<Output = Self> {
    /// `k` in every lane.
    fn splat(k: u32) -> Self;
    /// Rotation left by `n` (1..=31) of every lane.
    fn rotl(self, n: u32) -> Self;
    /// Shift left by `n` (1..=31) of every lane.
    fn shl(self, n: u32) -> Self;
}

impl Word for u32 {
    #[inline(always)]
    fn splat(k: u32) -> Self {
        k
    }
    #[inline(always)]
    fn rotl(self, n: u32) -> Self {
        self.rotate_left(n)
    }
    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        self << n
    }
}

/// One state word of `N` blocks.
#[derive(Clone, Copy)]
struct Lanes<const N: usize>([u32; N]);

macro_rules! lane_op {
    ($tr:ident, $f:ident, $op:tt) => {
        impl<const N: usize> $tr for Lanes<N> {
            #[inline(always)]
            fn $f(&mut self, o: Lanes<N>) {
                for (a, b) in self.0.iter_mut().zip(o.0) {
                    *a $op b;
                }
            }
        }
    };
}
lane_op!(BitXorAssign, bitxor_assign, ^=);
lane_op!(BitAndAssign, bitand_assign, &=);
lane_op!(BitOrAssign, bitor_assign, |=);

impl<const N: usize> Not for Lanes<N> {
    type Output = Lanes<N>;
    #[inline(always)]
    fn not(self) -> Lanes<N> {
        Lanes(self.0.map(|a| !a))
    }
}

impl<const N: usize> Word for Lanes<N> {
    #[inline(always)]
    fn splat(k: u32) -> Self {
        Lanes([k; N])
    }
    #[inline(always)]
    fn rotl(self, n: u32) -> Self {
        Lanes(self.0.map(|a| a.rotate_left(n)))
    }
    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        Lanes(self.0.map(|a| a << n))
    }
}

/// The 33 round keys of 128 bits.
pub(crate) type RoundKeys = [[u32; 4]; 33];

/// The 140 words `w[-8..132]` of the published schedule for a key padded to 32
/// bytes: the key words, then the prekeys passed through the S-boxes (S3, S2,
/// S1, S0, S7, ... for K0, K1, ...). ZNet's variant takes its round keys from
/// a different offset of the same words (`legacy::quirks`).
pub(crate) fn schedule_words(key: &[u8; 32]) -> [u32; 140] {
    let mut kp = [0u32; 140];
    for (i, c) in key.chunks_exact(4).enumerate() {
        kp[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    for i in 8..140 {
        let t = kp[i - 8] ^ kp[i - 5] ^ kp[i - 3] ^ kp[i - 1] ^ 0x9e37_79b9 ^ (i as u32 - 8);
        kp[i] = t.rotate_left(11);
    }
    for r in 0..33 {
        let at = 8 + 4 * r;
        let w = sbox::apply_s(
            (3 + 8 - r % 8) % 8,
            [kp[at], kp[at + 1], kp[at + 2], kp[at + 3]],
        );
        kp[at..at + 4].copy_from_slice(&w);
    }
    kp
}

/// Round keys from 132 schedule words.
pub(crate) fn round_keys(words: &[u32]) -> RoundKeys {
    let mut k = [[0u32; 4]; 33];
    for (r, rk) in k.iter_mut().enumerate() {
        rk.copy_from_slice(&words[4 * r..4 * r + 4]);
    }
    k
}

#[inline(always)]
fn xk<W: Word>(mut x: [W; 4], k: &[u32; 4]) -> [W; 4] {
    for (a, &b) in x.iter_mut().zip(k) {
        *a ^= W::splat(b);
    }
    x
}

#[inline(always)]
fn lt<W: Word>([mut a, mut b, mut c, mut d]: [W; 4]) -> [W; 4] {
    a = a.rotl(13);
    c = c.rotl(3);
    b ^= a;
    b ^= c;
    d ^= c;
    d ^= a.shl(3);
    b = b.rotl(1);
    d = d.rotl(7);
    a ^= b;
    a ^= d;
    c ^= d;
    c ^= b.shl(7);
    a = a.rotl(5);
    c = c.rotl(22);
    [a, b, c, d]
}

#[inline(always)]
fn inv_lt<W: Word>([mut a, mut b, mut c, mut d]: [W; 4]) -> [W; 4] {
    c = c.rotl(32 - 22);
    a = a.rotl(32 - 5);
    c ^= d;
    c ^= b.shl(7);
    a ^= b;
    a ^= d;
    d = d.rotl(32 - 7);
    b = b.rotl(32 - 1);
    d ^= c;
    d ^= a.shl(3);
    b ^= a;
    b ^= c;
    c = c.rotl(32 - 3);
    a = a.rotl(32 - 13);
    [a, b, c, d]
}

/// The 32 rounds and the final key mixing.
#[inline(always)]
fn encrypt_words<W: Word>(k: &RoundKeys, mut x: [W; 4]) -> [W; 4] {
    for r in (0..32).step_by(8) {
        x = lt(sbox_e0(xk(x, &k[r])));
        x = lt(sbox_e1(xk(x, &k[r + 1])));
        x = lt(sbox_e2(xk(x, &k[r + 2])));
        x = lt(sbox_e3(xk(x, &k[r + 3])));
        x = lt(sbox_e4(xk(x, &k[r + 4])));
        x = lt(sbox_e5(xk(x, &k[r + 5])));
        x = lt(sbox_e6(xk(x, &k[r + 6])));
        x = sbox_e7(xk(x, &k[r + 7]));
        if r < 24 {
            x = lt(x);
        }
    }
    xk(x, &k[32])
}

/// The inverse of [`encrypt_words`].
#[inline(always)]
fn decrypt_words<W: Word>(k: &RoundKeys, mut x: [W; 4]) -> [W; 4] {
    x = xk(x, &k[32]);
    for r in (0..32).step_by(8).rev() {
        if r < 24 {
            x = inv_lt(x);
        }
        x = xk(sbox_d7(x), &k[r + 7]);
        x = xk(sbox_d6(inv_lt(x)), &k[r + 6]);
        x = xk(sbox_d5(inv_lt(x)), &k[r + 5]);
        x = xk(sbox_d4(inv_lt(x)), &k[r + 4]);
        x = xk(sbox_d3(inv_lt(x)), &k[r + 3]);
        x = xk(sbox_d2(inv_lt(x)), &k[r + 2]);
        x = xk(sbox_d1(inv_lt(x)), &k[r + 1]);
        x = xk(sbox_d0(inv_lt(x)), &k[r]);
    }
    x
}

#[inline(always)]
fn load(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The rounds over `N` blocks at the start of `g` (`16 * N` bytes), in place.
#[inline(always)]
fn lanes<const N: usize>(
    k: &RoundKeys,
    g: &mut [u8],
    f: fn(&RoundKeys, [Lanes<N>; 4]) -> [Lanes<N>; 4],
) {
    let x: [Lanes<N>; 4] =
        std::array::from_fn(|j| Lanes(std::array::from_fn(|b| load(g, 16 * b + 4 * j))));
    for (j, w) in f(k, x).iter().enumerate() {
        for (b, v) in w.0.iter().enumerate() {
            g[16 * b + 4 * j..16 * b + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Blocks run together: four 32-bit lanes fill one 128-bit vector register
/// (eight, two registers per word, measured slower: the state and the
/// circuits' temporaries no longer fit the 16 vector registers).
const LANES: usize = 4;

/// The functions one direction runs: on [`LANES`] blocks and on one block.
type Rounds = (
    fn(&RoundKeys, [Lanes<LANES>; 4]) -> [Lanes<LANES>; 4],
    fn(&RoundKeys, [u32; 4]) -> [u32; 4],
);

/// Encryption on [`LANES`] blocks and on one block.
const ENCRYPT: Rounds = (encrypt_words, encrypt_words);
/// Decryption on [`LANES`] blocks and on one block.
const DECRYPT: Rounds = (decrypt_words, decrypt_words);

/// Runs the rounds over every 16-byte block of `data` (whole blocks only):
/// [`LANES`] blocks at a time, then the rest one by one.
#[inline(always)]
fn each_block(k: &RoundKeys, data: &mut [u8], (many, one): Rounds) {
    let mut groups = data.chunks_exact_mut(16 * LANES);
    for g in &mut groups {
        lanes(k, g, many);
    }
    for blk in groups.into_remainder().chunks_exact_mut(16) {
        let y = one(k, std::array::from_fn(|j| load(blk, 4 * j)));
        for (j, v) in y.iter().enumerate() {
            blk[4 * j..4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Serpent with the published key schedule.
pub struct Serpent {
    k: RoundKeys,
}

impl Serpent {
    /// Keys of 16, 24 or 32 bytes (shorter ones padded as the specification says).
    pub fn new(key: &[u8]) -> Result<Serpent> {
        if ![16, 24, 32].contains(&key.len()) {
            return Err(Error::InvalidKeyLength {
                algorithm: "Serpent",
                got: key.len(),
            });
        }
        let mut padded = [0u8; 32];
        padded[..key.len()].copy_from_slice(key);
        if key.len() < 32 {
            padded[key.len()] = 1;
        }
        let mut words = schedule_words(&padded);
        let k = round_keys(&words[8..]);
        padded.zeroize();
        words.zeroize();
        Ok(Serpent { k })
    }

    /// The rounds with other round keys (ZNet's schedule, `legacy::quirks`).
    pub(crate) fn with_round_keys(k: RoundKeys) -> Serpent {
        Serpent { k }
    }
}

impl Drop for Serpent {
    fn drop(&mut self) {
        self.k.zeroize();
    }
}

impl BlockCipher for Serpent {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Serpent
    }
    fn block_size(&self) -> usize {
        16
    }
    fn encrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), 16)?;
        each_block(&self.k, data, ENCRYPT);
        Ok(())
    }
    fn decrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), 16)?;
        each_block(&self.k, data, DECRYPT);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cipher::{BlockCipherEncrypt, KeyInit};

    #[test]
    fn four_lanes_and_one_block_agree_with_the_serpent_crate() {
        for len in [16usize, 24, 32] {
            let key: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
            let ours = Serpent::new(&key).unwrap();
            let theirs = serpent::Serpent::new_from_slice(&key).unwrap();
            // 7 blocks: a group of four lanes and three single blocks.
            let plain: Vec<u8> = (0..112u32).map(|i| (i * 31 % 251) as u8).collect();
            let mut a = plain.clone();
            ours.encrypt_blocks(&mut a).unwrap();
            for (i, blk) in plain.chunks_exact(16).enumerate() {
                let mut b = cipher::array::Array::try_from(blk).unwrap();
                theirs.encrypt_block(&mut b);
                assert_eq!(
                    &a[16 * i..16 * i + 16],
                    b.as_slice(),
                    "key {len}, block {i}"
                );
            }
            ours.decrypt_blocks(&mut a).unwrap();
            assert_eq!(a, plain, "key {len}");
        }
    }

    #[test]
    fn rejects_other_key_sizes_and_ragged_data() {
        assert!(Serpent::new(&[0; 15]).is_err());
        assert!(Serpent::new(&[0; 33]).is_err());
        let s = Serpent::new(&[1; 32]).unwrap();
        assert!(s.encrypt_blocks(&mut [0; 17]).is_err());
    }
}
