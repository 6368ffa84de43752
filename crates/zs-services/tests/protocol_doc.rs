//! The hex examples of docs/PROTOCOL.md Part "Application services" are
//! exactly what zs-services produces and reads.

use zs_services::messages::{
    decode_record, encode_message_record, encode_pair_record, StoredRecord,
};
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
            .with(crc32fast::hash(b"abc").to_le_bytes().to_vec())
            .to_bytes()
            .to_vec(),
        "hash-request" => {
            zs_services::client::file_hash_request(5, &zs_crypto::hash::sha3_256(b"abc"))
                .to_bytes()
                .to_vec()
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
