//! The hex examples of docs/PROTOCOL.md Part "Application services" are
//! exactly what zs-services produces and reads.

use zs_services::files::{rolling, signature_answer};
use zs_services::messages::{
    decode_record, encode_message_record, encode_pair_record, StoredRecord,
};
use zs_services::{BlockSum, Space};
use zs_wire::DataFrame;

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");
const PART: &str = "# Part 6: Application services (zs-services)";

/// `(name, bytes)` of every ```hex <name> block of the part (`#` starts a comment).
fn examples() -> Vec<(String, Vec<u8>)> {
    let part = DOC
        .split(PART)
        .nth(1)
        .expect("the services part in docs/PROTOCOL.md");
    let part = part.split("\n# Part ").next().unwrap_or(part);
    let mut out = Vec::new();
    let mut lines = part.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("```hex ") else {
            continue;
        };
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            let data = l.split('#').next().unwrap_or("");
            let hex: String = data.split_whitespace().collect();
            assert!(hex.len().is_multiple_of(2), "odd hex digits in {name}: {l}");
            for i in (0..hex.len()).step_by(2) {
                bytes.push(u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"));
            }
        }
        out.push((name.trim().to_string(), bytes));
    }
    out
}

fn expected(name: &str) -> Vec<u8> {
    match name {
        "login-request" => DataFrame::new().with("ann").with("pw").to_bytes().to_vec(),
        "send-request" => DataFrame::new()
            .with("bob")
            .with(7u64)
            .with(b"hi".to_vec())
            .to_bytes()
            .to_vec(),
        "chunk-request" => DataFrame::new()
            .with(5u64)
            .with(0u64)
            .with(b"abc".to_vec())
            .with(zs_hash::crc32(b"abc").to_le_bytes().to_vec())
            .to_bytes()
            .to_vec(),
        "hash-request" => {
            zs_services::client::file_hash_request(5, &zs_crypto::hash::sha3_256(b"abc"))
                .to_bytes()
                .to_vec()
        }
        "signature-request" => {
            zs_services::client::file_signature_request(Space::Private, "a", 2048, BlockSum::Xxh3)
                .to_bytes()
                .to_vec()
        }
        "signature-answer" => {
            let sig = [(rolling(b"abc"), BlockSum::Xxh3.of(b"abc"))];
            signature_answer(&sig, BlockSum::Xxh3).to_bytes().to_vec()
        }
        "message-record" => encode_message_record(2, 1, 7, 1000, 2000, b"hi"),
        "pair-record" => encode_pair_record(1, 2, 7),
        other => panic!("unknown example {other}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x} ")).collect()
}

#[test]
fn examples_match_the_encoders() {
    let ex = examples();
    let names: Vec<&str> = ex.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "login-request",
            "send-request",
            "hash-request",
            "signature-request",
            "signature-answer",
            "chunk-request",
            "message-record",
            "pair-record"
        ]
    );
    for (name, bytes) in &ex {
        let want = expected(name);
        assert_eq!(bytes, &want, "{name}: the encoder gives {}", hex(&want));
    }
}

#[test]
fn records_decode_back() {
    assert_eq!(
        decode_record(&encode_message_record(2, 1, 7, 1000, 2000, b"hi")),
        Some(StoredRecord::Message {
            to: 2,
            from: 1,
            nonce: 7,
            sent_ms: 1000,
            expires_ms: 2000,
            body_len: 2
        })
    );
    assert_eq!(
        decode_record(&encode_pair_record(1, 2, 7)),
        Some(StoredRecord::Pair {
            from: 1,
            to: 2,
            last_nonce: 7
        })
    );
    assert_eq!(decode_record(b""), None);
    assert_eq!(decode_record(b"M123"), None);
    assert_eq!(decode_record(&encode_pair_record(1, 2, 7)[..24]), None);
    assert_eq!(decode_record(b"X0000000000000000000000000"), None);
}

/// The two block sums of `file.signature` on known inputs: SHA3-256/16 of
/// `abc` (FIPS 202's test vector, cut) and XXH3-128 of the empty input
/// (the reference implementation's value), so the sum's byte order is fixed.
#[test]
fn block_sums_are_the_documented_functions() {
    assert_eq!(
        hex(&BlockSum::Sha3.of(b"abc")),
        "3a 98 5d a7 4f e2 25 b2 04 5c 17 2d 6b d3 90 bd "
    );
    // XXH3_128bits("") = 0x99aa06d3014798d86001c324468d497f (high, low).
    assert_eq!(
        BlockSum::Xxh3.of(b""),
        0x99aa_06d3_0147_98d8_6001_c324_468d_497f_u128.to_le_bytes()
    );
    assert_eq!(BlockSum::from_u8(1).unwrap(), BlockSum::Sha3);
    assert_eq!(BlockSum::from_u8(2).unwrap(), BlockSum::Xxh3);
    assert!(BlockSum::from_u8(3).is_err());
}
