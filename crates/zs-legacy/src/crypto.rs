//! The connection's ciphers and hashes: [`FrameCrypto`] over `zs_crypto::legacy`.

use std::sync::OnceLock;

use bytes::Bytes;
use zs_crypto::legacy::{generate_key_buffer, legacy_hash, FrameCipher, LegacyCipher, LegacyHash};
use zs_wire::legacy::{FrameCrypto, LegacyError};

/// Number of `TCipherSecurity` ids (0..=18).
const CIPHERS: usize = 19;

/// Whether cipher id `id` can be used on the wire by this build (zs-crypto has
/// it).
pub fn supported_cipher(id: u8) -> bool {
    LegacyCipher::from_u8(id).is_some_and(|c| FrameCipher::new(c, &[0]).is_ok())
}

/// Whether hash id `id` (`THashSecurity`) can be produced and checked.
pub fn supported_hash(id: u8) -> bool {
    LegacyHash::from_u8(id).is_some()
}

/// A new key buffer for cipher `cipher` from an 8-byte random seed (the
/// originals' `TCipher.GenerateKey`; style byte first).
pub fn key_buffer(cipher: u8, seed: &[u8; 8]) -> Result<Bytes, LegacyError> {
    let c = LegacyCipher::from_u8(cipher).ok_or(LegacyError::UnknownCipher(cipher))?;
    Ok(Bytes::from(generate_key_buffer(c, seed)))
}

/// One connection's key buffer, with the cipher objects made from it on first
/// use: a peer may send with any cipher id using the one key buffer (the
/// originals derive the real key from the whole buffer), and is answered with
/// the cipher of its request.
pub struct ConnCrypto {
    key: Bytes,
    ciphers: [OnceLock<Option<FrameCipher>>; CIPHERS],
}

impl std::fmt::Debug for ConnCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnCrypto({} key bytes)", self.key.len())
    }
}

impl ConnCrypto {
    /// Keyed with a handshake key buffer (style byte first).
    pub fn new(key: Bytes) -> ConnCrypto {
        ConnCrypto {
            key,
            ciphers: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The key buffer.
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    fn cipher(&self, id: u8) -> Result<&FrameCipher, LegacyError> {
        let slot = self
            .ciphers
            .get(id as usize)
            .ok_or(LegacyError::UnknownCipher(id))?;
        slot.get_or_init(|| {
            LegacyCipher::from_u8(id).and_then(|c| FrameCipher::new(c, &self.key).ok())
        })
        .as_ref()
        .ok_or(LegacyError::UnknownCipher(id))
    }
}

impl FrameCrypto for ConnCrypto {
    fn hash(&self, alg: u8, plain: &[u8]) -> Result<Vec<u8>, LegacyError> {
        let h = LegacyHash::from_u8(alg).ok_or(LegacyError::UnknownHash(alg))?;
        Ok(legacy_hash(h, plain))
    }
    fn encrypt(&self, cipher: u8, data: &mut [u8]) -> Result<(), LegacyError> {
        self.cipher(cipher)?.encrypt(data);
        Ok(())
    }
    fn decrypt(&self, cipher: u8, data: &mut [u8]) -> Result<(), LegacyError> {
        self.cipher(cipher)?.decrypt(data);
        Ok(())
    }
}
