//! XXTEA (Corrected Block TEA, Wheeler and Needham 1998) on blocks of `n >= 2`
//! 32-bit words, with the 64-byte (16-word) block CoreCipher calls XXTea512.
//! Bytes map to words little-endian, as CoreCipher does on x86 and ARM.

use crate::block::{check_aligned, Algorithm, BlockCipher};
use crate::error::{Error, Result};

const DELTA: u32 = 0x9e37_79b9;

fn mx(sum: u32, y: u32, z: u32, p: usize, e: usize, k: &[u32; 4]) -> u32 {
    (((z >> 5) ^ (y << 2)).wrapping_add((y >> 3) ^ (z << 4)))
        ^ ((sum ^ y).wrapping_add(k[(p & 3) ^ e] ^ z))
}

/// Encrypts the words `v` (at least two) in place with the 128-bit key `k`.
pub fn encrypt_words(v: &mut [u32], k: &[u32; 4]) {
    let n = v.len();
    if n < 2 {
        return;
    }
    let rounds = 6 + 52 / n;
    let mut sum: u32 = 0;
    let mut z = v[n - 1];
    for _ in 0..rounds {
        sum = sum.wrapping_add(DELTA);
        let e = ((sum >> 2) & 3) as usize;
        for p in 0..n {
            let y = v[(p + 1) % n];
            v[p] = v[p].wrapping_add(mx(sum, y, z, p, e, k));
            z = v[p];
        }
    }
}

/// Decrypts the words `v` (at least two) in place with the 128-bit key `k`.
pub fn decrypt_words(v: &mut [u32], k: &[u32; 4]) {
    let n = v.len();
    if n < 2 {
        return;
    }
    let rounds = 6 + 52 / n;
    let mut sum = (rounds as u32).wrapping_mul(DELTA);
    let mut y = v[0];
    for _ in 0..rounds {
        let e = ((sum >> 2) & 3) as usize;
        for p in (0..n).rev() {
            let z = v[(p + n - 1) % n];
            v[p] = v[p].wrapping_sub(mx(sum, y, z, p, e, k));
            y = v[p];
        }
        sum = sum.wrapping_sub(DELTA);
    }
}

/// Key bytes (16) to the four key words, little-endian.
pub fn key_words(key: &[u8]) -> Result<[u32; 4]> {
    if key.len() != 16 {
        return Err(Error::InvalidKeyLength {
            algorithm: "XXTEA",
            got: key.len(),
        });
    }
    let mut k = [0u32; 4];
    for (w, c) in k.iter_mut().zip(key.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(k)
}

fn words_of(bytes: &[u8], out: &mut [u32]) {
    for (w, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn bytes_of(words: &[u32], out: &mut [u8]) {
    for (w, c) in words.iter().zip(out.chunks_exact_mut(4)) {
        c.copy_from_slice(&w.to_le_bytes());
    }
}

/// XXTEA over byte blocks of any whole number of words (at least 8 bytes):
/// the whole of `data` is one block.
pub fn encrypt_bytes(data: &mut [u8], key: &[u8]) -> Result<()> {
    let k = key_words(key)?;
    if data.len() < 8 || data.len() % 4 != 0 {
        return Err(Error::NotBlockAligned {
            len: data.len(),
            block: 4,
        });
    }
    let mut v = vec![0u32; data.len() / 4];
    words_of(data, &mut v);
    encrypt_words(&mut v, &k);
    bytes_of(&v, data);
    Ok(())
}

/// Inverse of [`encrypt_bytes`].
pub fn decrypt_bytes(data: &mut [u8], key: &[u8]) -> Result<()> {
    let k = key_words(key)?;
    if data.len() < 8 || data.len() % 4 != 0 {
        return Err(Error::NotBlockAligned {
            len: data.len(),
            block: 4,
        });
    }
    let mut v = vec![0u32; data.len() / 4];
    words_of(data, &mut v);
    decrypt_words(&mut v, &k);
    bytes_of(&v, data);
    Ok(())
}

/// XXTEA with a fixed 64-byte block (CoreCipher's XXTea512). The key is zeroized on drop.
#[derive(zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Xxtea512 {
    key: [u32; 4],
}

impl Xxtea512 {
    /// Keyed with 16 bytes.
    pub fn new(key: &[u8]) -> Result<Self> {
        Ok(Xxtea512 {
            key: key_words(key)?,
        })
    }
}

impl BlockCipher for Xxtea512 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Xxtea512
    }
    fn block_size(&self) -> usize {
        64
    }
    fn encrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), 64)?;
        let mut v = [0u32; 16];
        for block in data.chunks_exact_mut(64) {
            words_of(block, &mut v);
            encrypt_words(&mut v, &self.key);
            bytes_of(&v, block);
        }
        Ok(())
    }
    fn decrypt_blocks(&self, data: &mut [u8]) -> Result<()> {
        check_aligned(data.len(), 64)?;
        let mut v = [0u32; 16];
        for block in data.chunks_exact_mut(64) {
            words_of(block, &mut v);
            decrypt_words(&mut v, &self.key);
            bytes_of(&v, block);
        }
        Ok(())
    }
}
