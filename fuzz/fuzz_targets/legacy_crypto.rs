//! Legacy ZNet crypto with hostile input: an arbitrary cipher byte (any u8,
//! known or not), an arbitrary key buffer (any length, any style byte), an
//! arbitrary hash byte and payload. Decrypt, encrypt and hash must never
//! panic, and encrypt must undo decrypt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_crypto::legacy::{legacy_hash, FrameCipher, LegacyCipher, LegacyHash};

fuzz_target!(|data: &[u8]| {
    let [cipher, hash, key_len, rest @ ..] = data else {
        return;
    };
    let split = usize::from(*key_len).min(rest.len());
    let (key, payload) = rest.split_at(split);
    if let Some(h) = LegacyHash::from_u8(*hash) {
        let d = legacy_hash(h, payload);
        assert_eq!(d.len(), h.frame_hash_len(payload.len()));
    }
    let Some(c) = LegacyCipher::from_u8(*cipher) else {
        return;
    };
    match FrameCipher::new(c, key) {
        Ok(fc) => {
            let mut buf = payload.to_vec();
            fc.decrypt(&mut buf);
            fc.encrypt(&mut buf);
            assert_eq!(buf, payload);
        }
        Err(_) => assert!(key.is_empty()),
    }
});
