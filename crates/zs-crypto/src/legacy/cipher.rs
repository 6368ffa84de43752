//! [`FrameCipher`]: `CreateCipherClassFromBuffer` with `CBC := True` and
//! `ProcessTail := True`, i.e. what `TPeerIO` does to every frame payload.
//!
//! For the block ciphers (`TCipher_DES64.Encrypt` and its siblings):
//! 1. ECB over every whole block (`Level` = 1);
//! 2. the tail after the last whole block is XOR-ed with the start of `SystemCBC`;
//! 3. the whole buffer is XOR-ed with `SystemCBC`, repeated every 64 KiB.
//!
//! Decryption undoes 3, then 1, then 2. The stream ciphers (RNG32, RNG64,
//! LSC) XOR their key stream, restarted for every frame, then apply step 3.

use super::prim::{self, Lbc, Lqc, Lsc};
use super::quirks::{mars_1998_key_schedule, ZnetBlowfish, ZnetRc6, ZnetSerpent};
use super::{derive_key_buffer, LegacyCipher, LegacyError};
use crate::block::{Algorithm, BlockCipher};

/// A legacy frame cipher keyed from a handshake key buffer. Cheap to use for
/// many frames: the key schedule runs once, in [`FrameCipher::new`].
pub struct FrameCipher {
    cipher: LegacyCipher,
    kind: Kind,
}

enum Kind {
    None,
    /// A block cipher of this crate (DES, 3DES, Blowfish, XXTEA, RC6, Serpent,
    /// MARS, AES, Twofish) in CoreCipher's ECB-plus-pad mode.
    Block(Box<dyn BlockCipher>),
    Lbc {
        enc: Box<Lbc>,
        dec: Box<Lbc>,
    },
    Lqc(Lqc),
    Rng32(u32),
    Rng64 {
        lo: u32,
        hi: u32,
    },
    Lsc(Box<Lsc>),
}

impl std::fmt::Debug for FrameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("FrameCipher")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

fn u32_at(k: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([k[at], k[at + 1], k[at + 2], k[at + 3]])
}

fn key16(k: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&k[1..17]);
    out
}

fn block(alg: Algorithm, key: &[u8]) -> Result<Kind, LegacyError> {
    alg.new_cipher(key)
        .map(Kind::Block)
        .map_err(|_| LegacyError::BadKeyBuffer("derived key rejected by the cipher"))
}

impl FrameCipher {
    /// `CreateCipherClassFromBuffer(c, key_buffer)`: the real key is derived
    /// from the whole buffer, style byte included
    /// ([`derive_key_buffer`]), so any non-empty buffer keys any cipher, as in
    /// the original. The NIST ciphers hash their 32 key bytes once more with
    /// LMD to the size they use (32; 16/24/32 for AES128/192/256).
    pub fn new(c: LegacyCipher, key_buffer: &[u8]) -> Result<FrameCipher, LegacyError> {
        if key_buffer.is_empty() {
            return Err(LegacyError::BadKeyBuffer("empty key buffer"));
        }
        let k = derive_key_buffer(c, key_buffer);
        // ckyDynamicKey: style, u32 size (32), the key bytes.
        let dynamic = || &k[5..];
        let kind = match c {
            LegacyCipher::None => Kind::None,
            LegacyCipher::Des64 => block(Algorithm::Des, &k[1..9])?,
            LegacyCipher::Des128 => block(Algorithm::TripleDes, &k[1..17])?,
            // TDES.EncryptTripleDES3Key runs E(k3), D(k2), E(k1): EDE3 with the keys reversed.
            LegacyCipher::Des192 => {
                let rev: Vec<u8> = k[1..25].chunks(8).rev().flatten().copied().collect();
                block(Algorithm::TripleDes, &rev)?
            }
            LegacyCipher::Blowfish => Kind::Block(Box::new(ZnetBlowfish::new(&key16(&k)))),
            LegacyCipher::Lbc => {
                let key = key16(&k);
                Kind::Lbc {
                    enc: Box::new(Lbc::new(&key, 16, true)),
                    dec: Box::new(Lbc::new(&key, 16, false)),
                }
            }
            LegacyCipher::Lqc => Kind::Lqc(Lqc::new(&key16(&k))),
            LegacyCipher::Rng32 => Kind::Rng32(u32_at(&k, 1)),
            // InitEncryptRNG64(KeyHi = first u32, KeyLo = second u32).
            LegacyCipher::Rng64 => Kind::Rng64 {
                hi: u32_at(&k, 1),
                lo: u32_at(&k, 5),
            },
            LegacyCipher::Lsc => Kind::Lsc(Box::new(Lsc::new(dynamic()))),
            LegacyCipher::XxTea512 => block(Algorithm::Xxtea512, &k[1..17])?,
            LegacyCipher::Rc6 => Kind::Block(Box::new(ZnetRc6::new(&prim::lmd_vec(dynamic(), 32)))),
            LegacyCipher::Serpent => {
                let mut key = [0u8; 32];
                prim::lmd(dynamic(), &mut key);
                Kind::Block(Box::new(ZnetSerpent::znet(&key)))
            }
            LegacyCipher::Mars => Kind::Block(Box::new(crate::mars::Mars::from_expanded_key(
                mars_1998_key_schedule(&prim::lmd_vec(dynamic(), 32)),
            ))),
            LegacyCipher::Rijndael => block(Algorithm::Aes, &prim::lmd_vec(dynamic(), 32))?,
            LegacyCipher::TwoFish => block(Algorithm::Twofish, &prim::lmd_vec(dynamic(), 32))?,
            LegacyCipher::Aes128 => block(Algorithm::Aes, &prim::lmd_vec(dynamic(), 16))?,
            LegacyCipher::Aes192 => block(Algorithm::Aes, &prim::lmd_vec(dynamic(), 24))?,
            LegacyCipher::Aes256 => block(Algorithm::Aes, &prim::lmd_vec(dynamic(), 32))?,
        };
        Ok(FrameCipher { cipher: c, kind })
    }

    /// The cipher this is.
    pub fn cipher(&self) -> LegacyCipher {
        self.cipher
    }

    /// Encrypts a frame payload in place (any length; the length never changes).
    pub fn encrypt(&self, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        match &self.kind {
            Kind::None => return,
            Kind::Block(c) => {
                let full = whole_blocks(data.len(), c.block_size());
                // Cannot fail: `full` is a multiple of the block size.
                let _ = c.encrypt_blocks(&mut data[..full]);
                prim::xor_pad(&mut data[full..]);
            }
            Kind::Lbc { enc, .. } => {
                let full = whole_blocks(data.len(), 16);
                data[..full]
                    .chunks_exact_mut(16)
                    .for_each(|b| enc.process_block(b));
                prim::xor_pad(&mut data[full..]);
            }
            Kind::Lqc(q) => {
                let full = whole_blocks(data.len(), 8);
                data[..full]
                    .chunks_exact_mut(8)
                    .for_each(|b| q.process_block(b, true));
                prim::xor_pad(&mut data[full..]);
            }
            Kind::Rng32(k) => prim::rng32(*k, data),
            Kind::Rng64 { lo, hi } => prim::rng64(*lo, *hi, data),
            Kind::Lsc(l) => l.apply(data),
        }
        prim::xor_pad(data);
    }

    /// Decrypts a frame payload in place.
    pub fn decrypt(&self, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        if matches!(self.kind, Kind::None) {
            return;
        }
        prim::xor_pad(data);
        match &self.kind {
            Kind::None => {}
            Kind::Block(c) => {
                let full = whole_blocks(data.len(), c.block_size());
                let _ = c.decrypt_blocks(&mut data[..full]);
                prim::xor_pad(&mut data[full..]);
            }
            Kind::Lbc { dec, .. } => {
                let full = whole_blocks(data.len(), 16);
                data[..full]
                    .chunks_exact_mut(16)
                    .for_each(|b| dec.process_block(b));
                prim::xor_pad(&mut data[full..]);
            }
            Kind::Lqc(q) => {
                let full = whole_blocks(data.len(), 8);
                data[..full]
                    .chunks_exact_mut(8)
                    .for_each(|b| q.process_block(b, false));
                prim::xor_pad(&mut data[full..]);
            }
            Kind::Rng32(k) => prim::rng32(*k, data),
            Kind::Rng64 { lo, hi } => prim::rng64(*lo, *hi, data),
            Kind::Lsc(l) => l.apply(data),
        }
    }
}

fn whole_blocks(len: usize, block: usize) -> usize {
    len - len % block
}
