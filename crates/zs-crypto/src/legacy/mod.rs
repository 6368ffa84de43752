//! # Legacy ZNet / ZServer4D crypto, byte for byte
//!
//! What the original `Z.Cipher.pas` (ZNet) and `CoreCipher.pas` (ZServer4D)
//! do to a command frame, for talking to deployed Delphi/FreePascal peers:
//!
//! - [`LegacyHash`] and [`legacy_hash`]: the frame hash (`TCipher.GenerateHashByte`),
//!   including its rule that payloads of 1 to 5 bytes always carry a 16-byte
//!   MD5 whatever the id (that rule lives in `GenerateHashByte` itself, so it
//!   is applied here) and that an empty payload has an empty hash.
//! - [`LegacyCipher`], [`generate_key_buffer`] (`TCipher.GenerateKey`, how a
//!   server makes the key buffer it sends in clear in `__@CipherModel`) and
//!   [`FrameCipher`] (`CreateCipherClassFromBuffer` with `CBC := True` and
//!   `ProcessTail := True`, what `TPeerIO` uses with `FastEncrypt`, the
//!   default).
//!
//! **None of this is secure.** The key crosses the wire in clear, the "CBC"
//! is ECB with a fixed public XOR pad, nothing is authenticated. Worse,
//! measured against the original: for the block ciphers the tail pad and the
//! whole-buffer pad are the same bytes, so a payload shorter than one block
//! (8 bytes for DES/Blowfish/LQC, 16 for LBC and the NIST ciphers, 64 for
//! XXTea512) is sent **in clear**; ZNet's Blowfish is a XOR with a 64-bit
//! key-dependent constant, and its RC6 uses 4 bytes of its key (see
//! [`quirks`]). It exists only for compatibility; the modern protocol is
//! [`crate::session`]. ZNet's SHA-3 ids are not FIPS 202 for every length
//! ([`prim::znet_sha3`]); the frame hash follows ZNet.
//!
//! The reference is ZNet (commit `974c237`, the `znet_cipher` oracle).
//! ZServer4D's CoreCipher shares ids 0..=15; the peers' notes report a ZNet
//! client and a ZServer4D server agreeing on all of them, but no ZServer4D
//! oracle was run for this module.
//!
//! Notes for callers (legacy-wire): the API is the one agreed. Encryption
//! never changes the length (`encrypt`/`decrypt` work in place on any
//! length, including 0). [`FrameCipher::new`] derives the real key from the
//! whole key buffer (style byte included) the way ZNet does, so any
//! non-empty buffer works with any cipher id; only an empty buffer is refused.
//!
//! Every cipher and hash id is checked against the original library's own
//! code (`znet_cipher`, see `tests/legacy_oracle.rs` and the vectors in
//! `tests/legacy_vectors.rs`).
//!
//! ```
//! use zs_crypto::legacy::{generate_key_buffer, legacy_hash, FrameCipher, LegacyCipher, LegacyHash};
//!
//! let key = generate_key_buffer(LegacyCipher::Blowfish, &[1, 2, 3, 4, 5, 6, 7, 8]);
//! assert_eq!(key.len(), LegacyCipher::Blowfish.key_len());
//! let cipher = FrameCipher::new(LegacyCipher::Blowfish, &key).unwrap();
//! let mut frame = b"hello legacy world".to_vec();
//! let hash = legacy_hash(LegacyHash::Md5, &frame); // hash of the plaintext
//! cipher.encrypt(&mut frame);
//! assert_ne!(&frame[..], b"hello legacy world");
//! cipher.decrypt(&mut frame);
//! assert_eq!(&frame[..], b"hello legacy world");
//! assert_eq!(hash.len(), 16);
//! ```

mod cipher;
pub mod prim;
pub mod quirks;

use md5::Digest as _;

pub use cipher::FrameCipher;

/// Errors of the legacy layer: what a peer can make go wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyError {
    /// A cipher byte that names no `TCipherSecurity` ordinal (0..=18).
    #[error("unknown legacy cipher ordinal {0}")]
    UnknownCipher(u8),
    /// A hash byte that names no `THashSecurity` ordinal (0..=19).
    #[error("unknown legacy hash ordinal {0}")]
    UnknownHash(u8),
    /// A key buffer that cannot key a cipher.
    #[error("bad legacy key buffer: {0}")]
    BadKeyBuffer(&'static str),
}

/// `TCipherSecurity`: the cipher byte of a frame. The ordinal is the wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum LegacyCipher {
    /// Plaintext.
    None = 0,
    /// DES, 8-byte key.
    Des64,
    /// Two-key triple DES (EDE), 16-byte key.
    Des128,
    /// Three-key triple DES (EDE), 24-byte key.
    Des192,
    /// Blowfish, 16-byte key.
    Blowfish,
    /// LockBox's LBC: 128-bit block, 16 rounds.
    Lbc,
    /// LockBox's LQC: 64-bit block, 4 rounds.
    Lqc,
    /// XOR with a `Ran01` byte stream keyed by 4 bytes.
    Rng32,
    /// XOR with a `Random64` byte stream keyed by 8 bytes.
    Rng64,
    /// LockBox's LSC stream cipher.
    Lsc,
    /// XXTEA on 64-byte blocks.
    XxTea512,
    /// RC6-32/20 with a 32-byte key.
    Rc6,
    /// Serpent with a 32-byte key.
    Serpent,
    /// MARS with a 32-byte key.
    Mars,
    /// Rijndael (AES block) with a 32-byte key.
    Rijndael,
    /// Twofish with a 32-byte key.
    TwoFish,
    /// AES-128 (ZNet only, not in ZServer4D).
    Aes128,
    /// AES-192 (ZNet only).
    Aes192,
    /// AES-256 (ZNet only).
    Aes256,
}

impl LegacyCipher {
    /// Every cipher, in ordinal order.
    pub const ALL: [LegacyCipher; 19] = [
        LegacyCipher::None,
        LegacyCipher::Des64,
        LegacyCipher::Des128,
        LegacyCipher::Des192,
        LegacyCipher::Blowfish,
        LegacyCipher::Lbc,
        LegacyCipher::Lqc,
        LegacyCipher::Rng32,
        LegacyCipher::Rng64,
        LegacyCipher::Lsc,
        LegacyCipher::XxTea512,
        LegacyCipher::Rc6,
        LegacyCipher::Serpent,
        LegacyCipher::Mars,
        LegacyCipher::Rijndael,
        LegacyCipher::TwoFish,
        LegacyCipher::Aes128,
        LegacyCipher::Aes192,
        LegacyCipher::Aes256,
    ];

    /// ZNet's `default` pool (`SwitchDefaultPerformance`), in the library's order.
    pub const POOL_DEFAULT: [LegacyCipher; 15] = [
        LegacyCipher::Des64,
        LegacyCipher::Des128,
        LegacyCipher::Des192,
        LegacyCipher::Blowfish,
        LegacyCipher::Lbc,
        LegacyCipher::Lqc,
        LegacyCipher::XxTea512,
        LegacyCipher::Rc6,
        LegacyCipher::Serpent,
        LegacyCipher::Mars,
        LegacyCipher::Rijndael,
        LegacyCipher::TwoFish,
        LegacyCipher::Aes128,
        LegacyCipher::Aes192,
        LegacyCipher::Aes256,
    ];

    /// ZNet's `maxsec` pool (`SwitchMaxSecurity`).
    pub const POOL_SECURITY: [LegacyCipher; 8] = [
        LegacyCipher::Rc6,
        LegacyCipher::Serpent,
        LegacyCipher::Mars,
        LegacyCipher::Rijndael,
        LegacyCipher::TwoFish,
        LegacyCipher::Aes128,
        LegacyCipher::Aes192,
        LegacyCipher::Aes256,
    ];

    /// ZNet's `maxperf` pool (`SwitchMaxPerformance`): plaintext.
    pub const POOL_PERFORMANCE: [LegacyCipher; 1] = [LegacyCipher::None];

    /// The cipher with wire ordinal `v`.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }

    /// The library's name (`TCipher.CCipherSecurityName`).
    pub fn name(self) -> &'static str {
        match self {
            LegacyCipher::None => "None",
            LegacyCipher::Des64 => "DES64",
            LegacyCipher::Des128 => "DES128",
            LegacyCipher::Des192 => "DES192",
            LegacyCipher::Blowfish => "Blowfish",
            LegacyCipher::Lbc => "LBC",
            LegacyCipher::Lqc => "LQC",
            LegacyCipher::Rng32 => "RNG32",
            LegacyCipher::Rng64 => "RNG64",
            LegacyCipher::Lsc => "LSC",
            LegacyCipher::XxTea512 => "XXTea512",
            LegacyCipher::Rc6 => "RC6",
            LegacyCipher::Serpent => "Serpent",
            LegacyCipher::Mars => "Mars",
            LegacyCipher::Rijndael => "Rijndael",
            LegacyCipher::TwoFish => "TwoFish",
            LegacyCipher::Aes128 => "AES128",
            LegacyCipher::Aes192 => "AES192",
            LegacyCipher::Aes256 => "AES256",
        }
    }

    /// The cipher named `name` (case-insensitive, optional `cs` prefix), or a
    /// decimal ordinal, as `znet_serv --cipher` accepts.
    pub fn from_name(name: &str) -> Option<Self> {
        if let Ok(n) = name.parse::<u8>() {
            return Self::from_u8(n);
        }
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_prefix("cs").unwrap_or(&lower);
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(bare))
    }

    /// `TCipherKeyStyle` ordinal of this cipher's key buffer (its first byte).
    pub fn key_style(self) -> u8 {
        match self {
            LegacyCipher::None => 0,
            LegacyCipher::Des64 => 1,
            LegacyCipher::Des192 => 2,
            LegacyCipher::Des128
            | LegacyCipher::Blowfish
            | LegacyCipher::Lbc
            | LegacyCipher::Lqc
            | LegacyCipher::XxTea512 => 3,
            LegacyCipher::Rng64 => 5,
            LegacyCipher::Rng32 => 6,
            _ => 7,
        }
    }

    /// Bytes of the key buffer `TCipher.GenerateKey` makes for this cipher,
    /// style byte included (1, 5, 9, 17, 25 or 37).
    pub fn key_len(self) -> usize {
        match self.key_style() {
            0 => 1,
            1 | 5 => 9,
            2 => 25,
            3 => 17,
            6 => 5,
            _ => 1 + 4 + DYNAMIC_KEY_LEN,
        }
    }

    /// Block size of the cipher's ECB part (0 for the stream ciphers and None).
    pub fn block_len(self) -> usize {
        match self {
            LegacyCipher::None | LegacyCipher::Rng32 | LegacyCipher::Rng64 | LegacyCipher::Lsc => 0,
            LegacyCipher::Des64
            | LegacyCipher::Des128
            | LegacyCipher::Des192
            | LegacyCipher::Blowfish
            | LegacyCipher::Lqc => 8,
            LegacyCipher::XxTea512 => 64,
            _ => 16,
        }
    }
}

impl std::fmt::Display for LegacyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Key bytes of the `ckyDynamicKey` style as `GenerateKey` makes them.
const DYNAMIC_KEY_LEN: usize = 32;

/// `THashSecurity`: the hash byte of a frame. The ordinal is the wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum LegacyHash {
    /// No hash (but see the 1..=5-byte rule of [`legacy_hash`]).
    None = 0,
    /// MD5 (`umlMD5`).
    FastMd5,
    /// MD5 (`THashMD5`).
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
    /// ZNet's SHA3-224: FIPS 202 for short inputs, not for all (see [`prim::znet_sha3`]).
    Sha3_224,
    /// SHA3-256.
    Sha3_256,
    /// SHA3-384.
    Sha3_384,
    /// SHA3-512.
    Sha3_512,
    /// LMD, 256 bytes (`hs256`).
    Lmd256,
    /// LMD, 128 bytes (`hs128`).
    Lmd128,
    /// LMD, 64 bytes (`hs64`).
    Lmd64,
    /// LMD, 32 bytes (`hs32`).
    Lmd32,
    /// LMD, 16 bytes (`hs16`).
    Lmd16,
    /// ELF hash, 4 bytes little-endian.
    Elf,
    /// ELF hash on 64 bits, 8 bytes little-endian.
    Elf64,
    /// `TMISC.HashMix128`, 4 bytes (inputs under 16 bytes are LMD-16 hashed first).
    Mix128,
    /// CRC-16/ARC, 2 bytes little-endian.
    Crc16,
    /// CRC-32 (IEEE), 4 bytes little-endian.
    Crc32,
}

impl LegacyHash {
    /// Every hash, in ordinal order.
    pub const ALL: [LegacyHash; 20] = [
        LegacyHash::None,
        LegacyHash::FastMd5,
        LegacyHash::Md5,
        LegacyHash::Sha1,
        LegacyHash::Sha256,
        LegacyHash::Sha512,
        LegacyHash::Sha3_224,
        LegacyHash::Sha3_256,
        LegacyHash::Sha3_384,
        LegacyHash::Sha3_512,
        LegacyHash::Lmd256,
        LegacyHash::Lmd128,
        LegacyHash::Lmd64,
        LegacyHash::Lmd32,
        LegacyHash::Lmd16,
        LegacyHash::Elf,
        LegacyHash::Elf64,
        LegacyHash::Mix128,
        LegacyHash::Crc16,
        LegacyHash::Crc32,
    ];

    /// The hash with wire ordinal `v`.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }

    /// The library's name (`TCipher.CHashName`).
    pub fn name(self) -> &'static str {
        match self {
            LegacyHash::None => "None",
            LegacyHash::FastMd5 => "FastMD5",
            LegacyHash::Md5 => "MD5",
            LegacyHash::Sha1 => "SHA1",
            LegacyHash::Sha256 => "SHA256",
            LegacyHash::Sha512 => "SHA512",
            LegacyHash::Sha3_224 => "SHA3_224",
            LegacyHash::Sha3_256 => "SHA3_256",
            LegacyHash::Sha3_384 => "SHA3_384",
            LegacyHash::Sha3_512 => "SHA3_512",
            LegacyHash::Lmd256 => "256",
            LegacyHash::Lmd128 => "128",
            LegacyHash::Lmd64 => "64",
            LegacyHash::Lmd32 => "32",
            LegacyHash::Lmd16 => "16",
            LegacyHash::Elf => "ELF",
            LegacyHash::Elf64 => "ELF64",
            LegacyHash::Mix128 => "Mix128",
            LegacyHash::Crc16 => "CRC16",
            LegacyHash::Crc32 => "CRC32",
        }
    }

    /// The hash named `name` (case-insensitive, optional `hs` prefix), or a
    /// decimal ordinal, as `znet_serv --hash` accepts (`hs16` is LMD-16;
    /// `16` alone is ordinal 16, ELF64).
    pub fn from_name(name: &str) -> Option<Self> {
        if let Ok(n) = name.parse::<u8>() {
            return Self::from_u8(n);
        }
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_prefix("hs").unwrap_or(&lower);
        Self::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(bare))
    }

    /// Digest bytes for a payload of 6 bytes or more (shorter non-empty
    /// payloads always get 16, empty ones 0: see [`legacy_hash`]).
    pub fn digest_len(self) -> usize {
        match self {
            LegacyHash::None => 0,
            LegacyHash::FastMd5 | LegacyHash::Md5 | LegacyHash::Lmd16 => 16,
            LegacyHash::Sha1 => 20,
            LegacyHash::Sha256 | LegacyHash::Sha3_256 | LegacyHash::Lmd32 => 32,
            LegacyHash::Sha512 | LegacyHash::Sha3_512 | LegacyHash::Lmd64 => 64,
            LegacyHash::Sha3_224 => 28,
            LegacyHash::Sha3_384 => 48,
            LegacyHash::Lmd256 => 256,
            LegacyHash::Lmd128 => 128,
            LegacyHash::Elf | LegacyHash::Mix128 | LegacyHash::Crc32 => 4,
            LegacyHash::Elf64 => 8,
            LegacyHash::Crc16 => 2,
        }
    }

    /// The hash length a frame of `payload_len` bytes carries with this id.
    pub fn frame_hash_len(self, payload_len: usize) -> usize {
        match payload_len {
            0 => 0,
            1..=5 => 16,
            _ => self.digest_len(),
        }
    }
}

impl std::fmt::Display for LegacyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn md5(data: &[u8]) -> Vec<u8> {
    md5::Md5::digest(data).to_vec()
}

/// `TCipher.GenerateHashByte(h, data)`: the hash a frame carries over its
/// plaintext payload. Empty data gives an empty hash; 1 to 5 bytes give their
/// MD5 whatever `h` is (even [`LegacyHash::None`]); otherwise `h`'s digest.
pub fn legacy_hash(h: LegacyHash, data: &[u8]) -> Vec<u8> {
    use ring::digest;
    if data.is_empty() {
        return Vec::new();
    }
    if data.len() < 6 {
        return md5(data);
    }
    match h {
        LegacyHash::None => Vec::new(),
        LegacyHash::FastMd5 | LegacyHash::Md5 => md5(data),
        LegacyHash::Sha1 => digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data)
            .as_ref()
            .to_vec(),
        LegacyHash::Sha256 => digest::digest(&digest::SHA256, data).as_ref().to_vec(),
        LegacyHash::Sha512 => digest::digest(&digest::SHA512, data).as_ref().to_vec(),
        LegacyHash::Sha3_224 => prim::znet_sha3(data, 28),
        LegacyHash::Sha3_256 => prim::znet_sha3(data, 32),
        LegacyHash::Sha3_384 => prim::znet_sha3(data, 48),
        LegacyHash::Sha3_512 => prim::znet_sha3(data, 64),
        LegacyHash::Lmd256
        | LegacyHash::Lmd128
        | LegacyHash::Lmd64
        | LegacyHash::Lmd32
        | LegacyHash::Lmd16 => prim::lmd_vec(data, h.digest_len()),
        LegacyHash::Elf => prim::elf(data).to_le_bytes().to_vec(),
        LegacyHash::Elf64 => prim::elf64(data).to_le_bytes().to_vec(),
        LegacyHash::Mix128 => {
            let v = if data.len() < 16 {
                prim::mix128_hash(&prim::lmd_vec(data, 16))
            } else {
                prim::mix128_hash(data)
            };
            v.to_le_bytes().to_vec()
        }
        LegacyHash::Crc16 => prim::crc16(data).to_le_bytes().to_vec(),
        LegacyHash::Crc32 => crc32fast::hash(data).to_le_bytes().to_vec(),
    }
}

/// `TCipher.GenerateKey(c, seed)`: the key buffer a server makes for cipher
/// `c` from 8 random bytes per connection (`TMISC.GenerateRandomKey`), and
/// sends in clear in `__@CipherModel`.
pub fn generate_key_buffer(c: LegacyCipher, seed: &[u8; 8]) -> Vec<u8> {
    derive_key_buffer(c, seed)
}

/// `TCipher.GenerateKey(c, data, len)` for any source length: the style byte,
/// then the LMD hash of `source` stretched to the style's key size
/// (`ckyDynamicKey` also carries a little-endian u32 of the key size, 32).
/// [`FrameCipher::new`] applies it to the handshake key buffer.
pub fn derive_key_buffer(c: LegacyCipher, source: &[u8]) -> Vec<u8> {
    let style = c.key_style();
    let mut out = Vec::with_capacity(c.key_len());
    out.push(style);
    match style {
        0 => {}
        7 => {
            out.extend_from_slice(&(DYNAMIC_KEY_LEN as u32).to_le_bytes());
            out.extend_from_slice(&prim::lmd_vec(source, DYNAMIC_KEY_LEN));
        }
        _ => out.extend_from_slice(&prim::lmd_vec(source, c.key_len() - 1)),
    }
    out
}
