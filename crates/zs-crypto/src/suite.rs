//! Cipher suites and the per-record protection they give: ring AEADs, and an
//! encrypt-then-MAC construction (CTR mode + HMAC-SHA3-256) for the block
//! ciphers the seed names. Keys and IVs come from a 32-byte traffic secret
//! through HKDF-SHA256 (see `docs/PROTOCOL.md`, Part 2).

use hmac::{KeyInit as _, Mac};
use ring::aead;
use ring::hkdf;
use zeroize::Zeroizing;

use crate::block::{Algorithm, BlockCipher};
use crate::error::{Error, Result};

/// A named cipher suite with its wire id (`u16`, little-endian on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SuiteId {
    /// AES-256-GCM (ring). Wire id `0x0001`.
    Aes256Gcm,
    /// ChaCha20-Poly1305 (ring). Wire id `0x0002`.
    ChaCha20Poly1305,
    /// AES-256 in CTR mode + HMAC-SHA3-256, encrypt-then-MAC. Wire id `0x0101`.
    Aes256CtrHmacSha3,
    /// Twofish-256 CTR + HMAC-SHA3-256. Wire id `0x0102`.
    Twofish256CtrHmacSha3,
    /// Serpent-256 CTR + HMAC-SHA3-256. Wire id `0x0103`.
    Serpent256CtrHmacSha3,
    /// RC6-32/20 with a 256-bit key, CTR + HMAC-SHA3-256. Wire id `0x0104`.
    Rc6256CtrHmacSha3,
    /// MARS-256 CTR + HMAC-SHA3-256. Wire id `0x0105`.
    Mars256CtrHmacSha3,
    /// TLS 1.3 `TLS_AES_128_GCM_SHA256` (id `0x1301`). Only reported by
    /// [`crate::tls::TlsSession`]; never negotiated by a zs1 session.
    Tls13Aes128GcmSha256,
    /// TLS 1.3 `TLS_AES_256_GCM_SHA384` (id `0x1302`). Only reported by
    /// [`crate::tls::TlsSession`]; never negotiated by a zs1 session.
    Tls13Aes256GcmSha384,
    /// TLS 1.3 `TLS_CHACHA20_POLY1305_SHA256` (id `0x1303`). Only reported by
    /// [`crate::tls::TlsSession`]; never negotiated by a zs1 session.
    Tls13ChaCha20Poly1305Sha256,
    /// No protection at all: for fuzzing only (feature `fuzzing`). Wire id `0xffff`.
    #[cfg(feature = "fuzzing")]
    Null,
}

impl SuiteId {
    /// The suites offered ([`crate::session::ClientConfig::pinned`],
    /// [`crate::session::ClientConfig::psk`]) and allowed
    /// ([`crate::session::SuitePolicy::default`]) by default, in preference
    /// order: the two AEADs, whose ring implementations are constant time.
    /// Every other suite is used only when named explicitly (see
    /// [`Self::is_legacy`]).
    pub const DEFAULT: [SuiteId; 2] = [SuiteId::Aes256Gcm, SuiteId::ChaCha20Poly1305];

    /// Every zs1 record suite (those a handshake can negotiate), AEADs first.
    pub const ALL: [SuiteId; 7] = [
        SuiteId::Aes256Gcm,
        SuiteId::ChaCha20Poly1305,
        SuiteId::Aes256CtrHmacSha3,
        SuiteId::Twofish256CtrHmacSha3,
        SuiteId::Serpent256CtrHmacSha3,
        SuiteId::Rc6256CtrHmacSha3,
        SuiteId::Mars256CtrHmacSha3,
    ];

    /// True for the CTR + HMAC-SHA3-256 suites kept for compatibility with
    /// the seed's block ciphers: they are never offered or allowed unless
    /// named explicitly. Twofish and MARS use secret-dependent table lookups
    /// (cache-timing leaks), RC6 data-dependent rotations; AES-CTR and Serpent
    /// add nothing over the AEADs.
    pub fn is_legacy(self) -> bool {
        self.block_algorithm().is_some()
    }

    /// The wire id (for the TLS 1.3 variants: the IANA TLS id, never on a zs1 wire).
    pub fn wire_id(self) -> u16 {
        match self {
            SuiteId::Aes256Gcm => 0x0001,
            SuiteId::ChaCha20Poly1305 => 0x0002,
            SuiteId::Aes256CtrHmacSha3 => 0x0101,
            SuiteId::Twofish256CtrHmacSha3 => 0x0102,
            SuiteId::Serpent256CtrHmacSha3 => 0x0103,
            SuiteId::Rc6256CtrHmacSha3 => 0x0104,
            SuiteId::Mars256CtrHmacSha3 => 0x0105,
            SuiteId::Tls13Aes128GcmSha256 => 0x1301,
            SuiteId::Tls13Aes256GcmSha384 => 0x1302,
            SuiteId::Tls13ChaCha20Poly1305Sha256 => 0x1303,
            #[cfg(feature = "fuzzing")]
            SuiteId::Null => 0xffff,
        }
    }

    /// The suite with wire id `id`, if this build knows it.
    pub fn from_wire_id(id: u16) -> Option<SuiteId> {
        #[cfg(feature = "fuzzing")]
        if id == 0xffff {
            return Some(SuiteId::Null);
        }
        SuiteId::ALL.into_iter().find(|s| s.wire_id() == id)
    }

    /// Name as used in configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            SuiteId::Aes256Gcm => "AES-256-GCM",
            SuiteId::ChaCha20Poly1305 => "CHACHA20-POLY1305",
            SuiteId::Aes256CtrHmacSha3 => "AES-256-CTR-HMAC-SHA3-256",
            SuiteId::Twofish256CtrHmacSha3 => "TWOFISH-256-CTR-HMAC-SHA3-256",
            SuiteId::Serpent256CtrHmacSha3 => "SERPENT-256-CTR-HMAC-SHA3-256",
            SuiteId::Rc6256CtrHmacSha3 => "RC6-256-CTR-HMAC-SHA3-256",
            SuiteId::Mars256CtrHmacSha3 => "MARS-256-CTR-HMAC-SHA3-256",
            SuiteId::Tls13Aes128GcmSha256 => "TLS13_AES_128_GCM_SHA256",
            SuiteId::Tls13Aes256GcmSha384 => "TLS13_AES_256_GCM_SHA384",
            SuiteId::Tls13ChaCha20Poly1305Sha256 => "TLS13_CHACHA20_POLY1305_SHA256",
            #[cfg(feature = "fuzzing")]
            SuiteId::Null => "NULL",
        }
    }

    /// Bytes each record grows by (the tag).
    pub fn tag_len(self) -> usize {
        match self {
            SuiteId::Aes256Gcm
            | SuiteId::ChaCha20Poly1305
            | SuiteId::Tls13Aes128GcmSha256
            | SuiteId::Tls13Aes256GcmSha384
            | SuiteId::Tls13ChaCha20Poly1305Sha256 => 16,
            #[cfg(feature = "fuzzing")]
            SuiteId::Null => 0,
            _ => 32,
        }
    }

    fn block_algorithm(self) -> Option<Algorithm> {
        match self {
            SuiteId::Aes256CtrHmacSha3 => Some(Algorithm::Aes),
            SuiteId::Twofish256CtrHmacSha3 => Some(Algorithm::Twofish),
            SuiteId::Serpent256CtrHmacSha3 => Some(Algorithm::Serpent),
            SuiteId::Rc6256CtrHmacSha3 => Some(Algorithm::Rc6),
            SuiteId::Mars256CtrHmacSha3 => Some(Algorithm::Mars),
            _ => None,
        }
    }
}

impl core::fmt::Display for SuiteId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for SuiteId {
    type Err = Error;
    fn from_str(s: &str) -> Result<SuiteId> {
        let all = SuiteId::ALL.into_iter();
        #[cfg(feature = "fuzzing")]
        let all = all.chain([SuiteId::Null]);
        all.into_iter()
            .find(|x| x.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::Config(format!("unknown suite {s:?}")))
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand (SHA-256) of `prk` with the one-part info `label`, into `out`.
pub(crate) fn expand(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) {
    let info = [label];
    // Lengths used here are all far below 255 * 32, the only failure case.
    if let Ok(okm) = prk.expand(&info, Len(out.len())) {
        let _ = okm.fill(out);
    }
}

/// HKDF-Expand from a raw 32-byte secret used as the PRK.
pub(crate) fn expand_secret(secret: &[u8; 32], label: &[u8], out: &mut [u8]) {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret);
    expand(&prk, label, out);
}

/// The next traffic secret of a direction after a key update.
pub(crate) fn next_secret(secret: &[u8; 32]) -> [u8; 32] {
    let mut n = [0u8; 32];
    expand_secret(secret, b"zs1 next", &mut n);
    n
}

type HmacSha3 = hmac::SimpleHmac<sha3::Sha3_256>;

/// Keys of one direction and one generation, ready to protect records.
pub(crate) enum Protector {
    Aead {
        key: aead::LessSafeKey,
        iv: [u8; 12],
    },
    Etm {
        cipher: Box<dyn BlockCipher>,
        mac: HmacSha3,
        iv: [u8; 12],
    },
    #[cfg(feature = "fuzzing")]
    Null,
}

fn nonce(iv: &[u8; 12], seq: u64) -> [u8; 12] {
    let mut n = *iv;
    for (a, b) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *a ^= b;
    }
    n
}

/// CTR mode over a 128-bit block cipher: counter block = nonce (12 bytes) ||
/// block counter (u32 big-endian, from 0). XORs the key stream into `data`.
pub(crate) fn ctr_xor(cipher: &dyn BlockCipher, nonce: &[u8; 12], data: &mut [u8]) -> Result<()> {
    const BATCH: usize = 16;
    let mut ks = [0u8; 16 * BATCH];
    let mut counter: u32 = 0;
    for chunk in data.chunks_mut(16 * BATCH) {
        let blocks = chunk.len().div_ceil(16);
        for b in 0..blocks {
            let blk = &mut ks[16 * b..16 * b + 16];
            blk[..12].copy_from_slice(nonce);
            blk[12..].copy_from_slice(&counter.to_be_bytes());
            counter = counter.wrapping_add(1);
        }
        cipher.encrypt_blocks(&mut ks[..16 * blocks])?;
        for (d, k) in chunk.iter_mut().zip(ks.iter()) {
            *d ^= k;
        }
    }
    Ok(())
}

impl Protector {
    /// Derives the keys of `suite` from a direction's traffic secret.
    pub(crate) fn new(suite: SuiteId, secret: &[u8; 32]) -> Result<Protector> {
        let mut iv = [0u8; 12];
        expand_secret(secret, b"zs1 iv", &mut iv);
        let mut key = Zeroizing::new([0u8; 32]);
        expand_secret(secret, b"zs1 key", &mut key[..]);
        let ring_alg = match suite {
            SuiteId::Aes256Gcm => Some(&aead::AES_256_GCM),
            SuiteId::ChaCha20Poly1305 => Some(&aead::CHACHA20_POLY1305),
            _ => None,
        };
        if let Some(alg) = ring_alg {
            let unbound = aead::UnboundKey::new(alg, &key[..]).map_err(|_| Error::Rng)?;
            return Ok(Protector::Aead {
                key: aead::LessSafeKey::new(unbound),
                iv,
            });
        }
        #[cfg(feature = "fuzzing")]
        if suite == SuiteId::Null {
            return Ok(Protector::Null);
        }
        let alg = suite
            .block_algorithm()
            .ok_or(Error::UnsupportedSuite(suite.wire_id()))?;
        let cipher = alg.new_cipher(&key[..])?;
        let mut mac_key = Zeroizing::new([0u8; 32]);
        expand_secret(secret, b"zs1 mac", &mut mac_key[..]);
        let mac = HmacSha3::new_from_slice(&mac_key[..]).map_err(|_| Error::Rng)?;
        Ok(Protector::Etm { cipher, mac, iv })
    }

    /// Encrypts `data` in place and writes the tag into `tag` (its first
    /// `tag_len` bytes); returns the tag length.
    pub(crate) fn seal(
        &self,
        seq: u64,
        aad: &[u8],
        data: &mut [u8],
        tag: &mut [u8; 32],
    ) -> Result<usize> {
        match self {
            Protector::Aead { key, iv } => {
                let n = aead::Nonce::assume_unique_for_key(nonce(iv, seq));
                let t = key
                    .seal_in_place_separate_tag(n, aead::Aad::from(aad), data)
                    .map_err(|_| Error::RecordTooLarge {
                        len: data.len(),
                        max: usize::MAX,
                    })?;
                tag[..16].copy_from_slice(t.as_ref());
                Ok(16)
            }
            Protector::Etm { cipher, mac, iv } => {
                ctr_xor(cipher.as_ref(), &nonce(iv, seq), data)?;
                let mut m = mac.clone();
                m.update(&seq.to_be_bytes());
                m.update(aad);
                m.update(data);
                tag.copy_from_slice(&m.finalize().into_bytes());
                Ok(32)
            }
            #[cfg(feature = "fuzzing")]
            Protector::Null => Ok(0),
        }
    }

    /// Checks and decrypts the sealed body `in_out[src..]` (ciphertext, then
    /// the tag) and writes the plaintext at the start of `in_out` (moved
    /// `src` bytes down in the same pass for ring's AEADs; a copy for the
    /// others); returns its length. What lies before `src` is overwritten;
    /// on error the bytes of `in_out` are unspecified.
    pub(crate) fn open_shifted(
        &self,
        seq: u64,
        aad: &[u8],
        in_out: &mut [u8],
        src: usize,
        tag_len: usize,
    ) -> Result<usize> {
        let body = in_out.len().checked_sub(src).ok_or(Error::BadRecordMac)?;
        let n = body.checked_sub(tag_len).ok_or(Error::BadRecordMac)?;
        let (data, tag) = in_out.split_at_mut(src + n);
        match self {
            Protector::Aead { key, iv } => {
                let nonce = aead::Nonce::assume_unique_for_key(nonce(iv, seq));
                let t: [u8; 16] = (&tag[..]).try_into().map_err(|_| Error::BadRecordMac)?;
                key.open_in_place_separate_tag(
                    nonce,
                    aead::Aad::from(aad),
                    aead::Tag::from(t),
                    data,
                    src..,
                )
                .map_err(|_| Error::BadRecordMac)?;
            }
            _ => {
                self.open(seq, aad, &mut data[src..], tag)?;
                if src > 0 {
                    data.copy_within(src.., 0);
                }
            }
        }
        Ok(n)
    }

    /// Checks `tag` and decrypts `data` in place. Nothing is decrypted when the tag is wrong.
    pub(crate) fn open(&self, seq: u64, aad: &[u8], data: &mut [u8], tag: &[u8]) -> Result<()> {
        match self {
            Protector::Aead { key, iv } => {
                let n = aead::Nonce::assume_unique_for_key(nonce(iv, seq));
                let t: [u8; 16] = tag.try_into().map_err(|_| Error::BadRecordMac)?;
                key.open_in_place_separate_tag(
                    n,
                    aead::Aad::from(aad),
                    aead::Tag::from(t),
                    data,
                    0..,
                )
                .map_err(|_| Error::BadRecordMac)?;
                Ok(())
            }
            Protector::Etm { cipher, mac, iv } => {
                let mut m = mac.clone();
                m.update(&seq.to_be_bytes());
                m.update(aad);
                m.update(data);
                // Constant-time comparison inside `verify_slice`.
                m.verify_slice(tag).map_err(|_| Error::BadRecordMac)?;
                ctr_xor(cipher.as_ref(), &nonce(iv, seq), data)
            }
            #[cfg(feature = "fuzzing")]
            Protector::Null => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_aeads_only() {
        assert_eq!(
            SuiteId::DEFAULT,
            [SuiteId::Aes256Gcm, SuiteId::ChaCha20Poly1305]
        );
        for s in SuiteId::ALL {
            assert_eq!(s.is_legacy(), !SuiteId::DEFAULT.contains(&s), "{s}");
        }
        // TLS-only ids never parse from a zs1 wire.
        assert_eq!(SuiteId::from_wire_id(0x1303), None);
        assert!(Protector::new(SuiteId::Tls13ChaCha20Poly1305Sha256, &[1; 32]).is_err());
    }

    #[test]
    fn wire_ids_round_trip_and_names_parse() {
        for s in SuiteId::ALL {
            assert_eq!(SuiteId::from_wire_id(s.wire_id()), Some(s));
            assert_eq!(s.name().parse::<SuiteId>().unwrap(), s);
        }
        assert_eq!(SuiteId::from_wire_id(0x0003), None);
        assert!("DES-CBC".parse::<SuiteId>().is_err());
    }

    #[test]
    fn ctr_matches_rustcrypto_ctr32be() {
        use ctr::cipher::{KeyIvInit, StreamCipher};
        let key = [0x42u8; 32];
        let nonce12 = [7u8; 12];
        let mut iv = [0u8; 16];
        iv[..12].copy_from_slice(&nonce12);
        for len in [0usize, 1, 15, 16, 17, 255, 256, 257, 1000] {
            let mut ours: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut theirs = ours.clone();
            let c = Algorithm::Aes.new_cipher(&key).unwrap();
            ctr_xor(c.as_ref(), &nonce12, &mut ours).unwrap();
            let mut r = ctr::Ctr32BE::<aes::Aes256>::new(&key.into(), &iv.into());
            r.apply_keystream(&mut theirs);
            assert_eq!(ours, theirs, "len {len}");
        }
    }

    #[test]
    fn every_suite_seals_and_opens_and_rejects_flips() {
        for s in SuiteId::ALL {
            let p = Protector::new(s, &[9; 32]).unwrap();
            let mut data = b"hello records".to_vec();
            let mut tag = [0u8; 32];
            let n = p.seal(5, b"hdr", &mut data, &mut tag).unwrap();
            assert_eq!(n, s.tag_len());
            assert_ne!(&data[..], b"hello records");
            let mut bad = data.clone();
            bad[0] ^= 1;
            assert_eq!(
                p.open(5, b"hdr", &mut bad, &tag[..n]),
                Err(Error::BadRecordMac)
            );
            assert_eq!(
                p.open(6, b"hdr", &mut data.clone(), &tag[..n]),
                Err(Error::BadRecordMac)
            );
            assert_eq!(
                p.open(5, b"hdX", &mut data.clone(), &tag[..n]),
                Err(Error::BadRecordMac)
            );
            p.open(5, b"hdr", &mut data, &tag[..n]).unwrap();
            assert_eq!(&data[..], b"hello records");
        }
    }
}
