//! Static vectors of the original library (`znet_cipher`, ZNet `974c237`), so
//! the legacy ciphers and hashes are checked without Free Pascal installed.
//! `tests/legacy_oracle.rs` re-derives such cases live from the oracle;
//! `tests/legacy/gen_vectors.py` regenerates this table.

#[path = "legacy/vectors.rs"]
mod vectors;

use zs_crypto::legacy::{generate_key_buffer, legacy_hash, FrameCipher, LegacyCipher, LegacyHash};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

#[test]
fn every_hash_id_matches_the_recorded_oracle_outputs() {
    let mut seen = [false; 20];
    for &(id, n, want) in vectors::HASHES {
        let h = LegacyHash::from_u8(id).unwrap();
        seen[usize::from(id)] = true;
        assert_eq!(
            legacy_hash(h, &pattern(n)),
            unhex(want),
            "hash {h} ({id}) over {n} bytes"
        );
    }
    assert!(seen.iter().all(|s| *s), "every hash id has vectors");
}

#[test]
fn every_key_buffer_matches_the_recorded_oracle_outputs() {
    for &(id, seed, want) in vectors::KEYS {
        let c = LegacyCipher::from_u8(id).unwrap();
        let seed: [u8; 8] = unhex(seed).try_into().unwrap();
        assert_eq!(generate_key_buffer(c, &seed), unhex(want), "key {c}");
    }
}

#[test]
fn every_cipher_id_matches_the_recorded_oracle_outputs() {
    let mut seen = [0usize; 19];
    for &(id, key, n, want) in vectors::CIPHERS {
        let c = LegacyCipher::from_u8(id).unwrap();
        seen[usize::from(id)] += 1;
        let fc = FrameCipher::new(c, &unhex(key)).unwrap();
        let plain = pattern(n);
        let mut data = plain.clone();
        fc.encrypt(&mut data);
        assert_eq!(data, unhex(want), "enc {c} key {key} len {n}");
        fc.decrypt(&mut data);
        assert_eq!(data, plain, "dec {c} key {key} len {n}");
    }
    assert!(
        seen.iter().all(|&n| n >= 3),
        "every cipher id has vectors: {seen:?}"
    );
}
