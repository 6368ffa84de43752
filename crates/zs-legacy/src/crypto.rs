//! The connection's ciphers and hashes: [`FrameCrypto`] over `zs_crypto::legacy`.

use std::sync::Mutex;

use bytes::Bytes;
use zs_wire::legacy::{FrameCrypto, LegacyError, PlainCrypto};

/// Cipher ids of the originals' `TCipherSecurity` this build can use on the wire.
pub fn supported_cipher(id: u8) -> bool {
    id == 0
}

/// Hash ids of `THashSecurity` this build can produce and check.
pub fn supported_hash(id: u8) -> bool {
    id <= 2
}

/// A new key buffer for cipher `cipher` from an 8-byte random seed (the originals'
/// `TCipher.GenerateKey`).
pub fn key_buffer(cipher: u8, _seed: &[u8; 8]) -> Result<Bytes, LegacyError> {
    match cipher {
        0 => Ok(Bytes::from_static(&[0])),
        c => Err(LegacyError::UnknownCipher(c)),
    }
}

/// One connection's key buffer, with the cipher objects made from it on first use
/// (a peer may send with any cipher id using the one key buffer).
pub struct ConnCrypto {
    key: Bytes,
    _cache: Mutex<()>,
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
            _cache: Mutex::new(()),
        }
    }

    /// The key buffer.
    pub fn key(&self) -> &Bytes {
        &self.key
    }
}

impl FrameCrypto for ConnCrypto {
    fn hash(&self, alg: u8, plain: &[u8]) -> Result<Vec<u8>, LegacyError> {
        PlainCrypto.hash(alg, plain)
    }
    fn encrypt(&self, cipher: u8, data: &mut [u8]) -> Result<(), LegacyError> {
        PlainCrypto.encrypt(cipher, data)
    }
    fn decrypt(&self, cipher: u8, data: &mut [u8]) -> Result<(), LegacyError> {
        PlainCrypto.decrypt(cipher, data)
    }
}
