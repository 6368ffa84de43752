//! Checks every byte the "Legacy ZNet crypto" part of `docs/PROTOCOL.md`
//! shows (key buffers, ciphertexts, hashes, the pad's first bytes, the SHA-3
//! padding example) against the code. The values were produced by the
//! original library (`znet_cipher`); the document cannot drift from the code.

use zs_crypto::legacy::{
    generate_key_buffer, legacy_hash, prim, FrameCipher, LegacyCipher, LegacyHash,
};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

fn part() -> &'static str {
    DOC.split("Legacy ZNet crypto (zs-crypto `legacy`)")
        .nth(1)
        .expect("the legacy crypto part")
}

fn block(name: &str) -> &'static str {
    let p = part();
    let fence = format!("```text {name}\n");
    let start = p.find(&fence).expect(name) + fence.len();
    &p[start..start + p[start..].find("```").unwrap()]
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The text between the backticks after `marker` in the part.
fn after(marker: &str) -> &'static str {
    let p = part();
    let at = p.find(marker).expect(marker) + marker.len();
    let s = &p[at..];
    let open = s.find('`').unwrap() + 1;
    &s[open..open + s[open..].find('`').unwrap()]
}

#[test]
fn documented_cipher_vectors_are_what_the_code_does() {
    let seed = [0, 1, 2, 3, 4, 5, 6, 7];
    let plain: Vec<u8> = (0..70).collect();
    let mut lines = block("legacy-cipher-vectors").lines();
    let mut n = 0;
    while let Some(head) = lines.next() {
        let mut f = head.split_whitespace();
        let id: u8 = f.next().unwrap().parse().unwrap();
        let c = LegacyCipher::from_u8(id).unwrap();
        assert_eq!(f.next(), Some(c.name()));
        let key = lines.next().unwrap().trim().strip_prefix("key ").unwrap();
        let ct = lines.next().unwrap().trim().strip_prefix("ct  ").unwrap();
        assert_eq!(hex(&generate_key_buffer(c, &seed)), key, "{c}");
        let fc = FrameCipher::new(c, &unhex(key)).unwrap();
        let mut data = plain.clone();
        fc.encrypt(&mut data);
        assert_eq!(hex(&data), ct, "{c}");
        fc.decrypt(&mut data);
        assert_eq!(data, plain);
        n += 1;
    }
    assert_eq!(n, 19, "one vector per cipher id");
}

#[test]
fn documented_hash_vectors_are_what_the_code_does() {
    let input: Vec<u8> = (0..64).collect();
    let mut n = 0;
    for line in block("legacy-hash-vectors").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let h = LegacyHash::from_u8(f[0].parse().unwrap()).unwrap();
        assert_eq!(f[1], h.name());
        let want = if f[2] == "-" {
            String::new()
        } else {
            f[2].to_string()
        };
        assert_eq!(hex(&legacy_hash(h, &input)), want, "{h}");
        n += 1;
    }
    assert_eq!(n, 20, "one vector per hash id");
}

#[test]
fn documented_pad_short_rule_and_sha3_quirk_are_what_the_code_does() {
    assert_eq!(hex(&prim::system_cbc()[..16]), after("First bytes:"));
    assert_eq!(
        hex(&legacy_hash(LegacyHash::None, b"abc")),
        after("Frame hash of `abc` with id 0:")
    );
    let bytes: Vec<u8> = (0..135).collect();
    let znet = legacy_hash(LegacyHash::Sha3_256, &bytes);
    assert_eq!(hex(&znet), after("`00 01 .. 86` is"));
    assert_ne!(
        znet,
        zs_crypto::hash::sha3_256(&bytes).to_vec(),
        "the quirk is real"
    );
}
