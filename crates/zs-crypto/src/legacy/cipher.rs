//! [`FrameCipher`]: `CreateCipherClassFromBuffer` with `CBC := True` and
//! `ProcessTail := True`.

use super::prim;
use super::{derive_key_buffer, LegacyCipher, LegacyError};

/// A legacy frame cipher keyed from a handshake key buffer.
#[derive(Clone)]
pub struct FrameCipher {
    cipher: LegacyCipher,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    None,
}

impl std::fmt::Debug for FrameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("FrameCipher")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl FrameCipher {
    /// `CreateCipherClassFromBuffer(c, key_buffer)`: the real key is derived
    /// from the whole buffer (style byte included), so any non-empty buffer
    /// keys any cipher, as in the original.
    pub fn new(c: LegacyCipher, key_buffer: &[u8]) -> Result<FrameCipher, LegacyError> {
        if key_buffer.is_empty() {
            return Err(LegacyError::BadKeyBuffer("empty key buffer"));
        }
        let k = derive_key_buffer(c, key_buffer);
        let kind = match c {
            LegacyCipher::None => Kind::None,
            _ => {
                let _ = &k;
                return Err(LegacyError::UnknownCipher(c as u8));
            }
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
            Kind::None => {}
        }
        let _ = prim::xor_pad;
    }

    /// Decrypts a frame payload in place.
    pub fn decrypt(&self, data: &mut [u8]) {
        if data.is_empty() {
            return;
        }
        match &self.kind {
            Kind::None => {}
        }
    }
}
