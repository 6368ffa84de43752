//! Properties of the legacy layer that hold for every input: round trips,
//! lengths, ordinals, and refusal of what cannot key a cipher.

use proptest::prelude::*;
use zs_crypto::legacy::{
    generate_key_buffer, legacy_hash, FrameCipher, LegacyCipher, LegacyError, LegacyHash,
};

fn any_cipher() -> impl Strategy<Value = LegacyCipher> {
    (0u8..19).prop_map(|v| LegacyCipher::from_u8(v).unwrap())
}

fn any_hash() -> impl Strategy<Value = LegacyHash> {
    (0u8..20).prop_map(|v| LegacyHash::from_u8(v).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decrypt_undoes_encrypt_for_every_cipher_key_and_length(
        c in any_cipher(),
        key in proptest::collection::vec(any::<u8>(), 1..64),
        data in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let fc = FrameCipher::new(c, &key).unwrap();
        let mut buf = data.clone();
        fc.encrypt(&mut buf);
        prop_assert_eq!(buf.len(), data.len());
        // A payload shorter than one block goes out in clear: the tail pad and
        // the whole-buffer pad are the same bytes and cancel (the original does
        // this too; see the module docs). From one block on, it is changed.
        if c != LegacyCipher::None && data.len() >= c.block_len().max(16) {
            prop_assert_ne!(&buf, &data, "{} left the payload unchanged", c);
        }
        if c.block_len() > 0 && data.len() < c.block_len() {
            prop_assert_eq!(&buf, &data, "{} changed a sub-block payload", c);
        }
        fc.decrypt(&mut buf);
        prop_assert_eq!(&buf, &data);
        // And the other way round: what a peer sends us is decrypted first.
        fc.decrypt(&mut buf);
        fc.encrypt(&mut buf);
        prop_assert_eq!(&buf, &data);
    }

    #[test]
    fn hash_length_follows_the_frame_rule(h in any_hash(), data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let d = legacy_hash(h, &data);
        prop_assert_eq!(d.len(), h.frame_hash_len(data.len()));
        if (1..=5).contains(&data.len()) {
            prop_assert_eq!(d, legacy_hash(LegacyHash::Md5, &data));
        }
    }

    #[test]
    fn key_buffers_have_the_style_and_length_of_their_cipher(c in any_cipher(), seed in any::<[u8; 8]>()) {
        let k = generate_key_buffer(c, &seed);
        prop_assert_eq!(k.len(), c.key_len());
        prop_assert_eq!(k[0], c.key_style());
        prop_assert!(FrameCipher::new(c, &k).is_ok());
    }
}

#[test]
fn ordinals_round_trip_and_unknown_ones_are_none() {
    for v in 0..=255u8 {
        match LegacyCipher::from_u8(v) {
            Some(c) => {
                assert!(v < 19);
                assert_eq!(c as u8, v);
                assert_eq!(LegacyCipher::from_name(c.name()), Some(c));
                assert_eq!(
                    LegacyCipher::from_name(&format!("cs{}", c.name().to_lowercase())),
                    Some(c)
                );
            }
            None => assert!(v >= 19),
        }
        match LegacyHash::from_u8(v) {
            Some(h) => assert_eq!(h as u8, v),
            None => assert!(v >= 20),
        }
    }
    assert_eq!(LegacyCipher::from_name("nope"), None);
    assert_eq!(LegacyHash::from_name("hs16"), Some(LegacyHash::Lmd16));
    assert_eq!(LegacyHash::from_name("16"), Some(LegacyHash::Elf64));
    assert_eq!(LegacyHash::from_name("FastMD5"), Some(LegacyHash::FastMd5));
    assert_eq!(
        LegacyHash::from_name("hsSHA3_256"),
        Some(LegacyHash::Sha3_256)
    );
    for h in LegacyHash::ALL {
        assert_eq!(LegacyHash::from_name(&format!("hs{}", h.name())), Some(h));
    }
}

#[test]
fn an_empty_key_buffer_is_refused_and_empty_payloads_are_untouched() {
    for c in LegacyCipher::ALL {
        assert_eq!(
            FrameCipher::new(c, &[]).unwrap_err(),
            LegacyError::BadKeyBuffer("empty key buffer")
        );
        let fc = FrameCipher::new(c, &[0]).unwrap();
        let mut empty: [u8; 0] = [];
        fc.encrypt(&mut empty);
        fc.decrypt(&mut empty);
        assert_eq!(fc.cipher(), c);
    }
}

#[test]
fn frame_ciphers_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<FrameCipher>();
    shared::<LegacyError>();
}

#[test]
fn pools_are_the_libraries_pools() {
    // ZNet's default pool draws every cipher but the three no profile uses and None.
    for c in LegacyCipher::ALL {
        let unused = matches!(
            c,
            LegacyCipher::None | LegacyCipher::Rng32 | LegacyCipher::Rng64 | LegacyCipher::Lsc
        );
        assert_eq!(LegacyCipher::POOL_DEFAULT.contains(&c), !unused, "{c}");
    }
    assert!(LegacyCipher::POOL_SECURITY
        .iter()
        .all(|c| c.block_len() == 16));
}
