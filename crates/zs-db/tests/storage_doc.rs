//! docs/STORAGE.md's example bytes are what the code writes and reads.

use zs_db::format::{self, FrameHeader, FLAG_COMMIT, OP_PUT};
use zs_db::{encode_kv, FieldValue};

fn example(name: &str) -> Vec<u8> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/STORAGE.md"
    ))
    .unwrap();
    let start = doc
        .find(&format!("```hex {name}\n"))
        .unwrap_or_else(|| panic!("example {name} missing"));
    let body = &doc[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join(" ");
    body.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

#[test]
fn header_example() {
    let h = example("header");
    assert_eq!(h, format::encode_file_header(1).to_vec());
    assert_eq!(format::decode_file_header("x", &h).unwrap(), 1);
    assert!(doc_mentions_version());
}

fn doc_mentions_version() -> bool {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/STORAGE.md"
    ))
    .unwrap();
    doc.contains(&format!("version {}", format::FORMAT_VERSION))
}

#[test]
fn put_frame_example() {
    let f = example("put-json");
    let mut out = Vec::new();
    format::encode_frame(&mut out, OP_PUT, 1, FLAG_COMMIT, 1, 0, 0, br#"{"a":1}"#);
    assert_eq!(f, out);
    let fh = FrameHeader::decode(&f, 8).unwrap();
    assert_eq!(
        (fh.op, fh.kind, fh.flags, fh.id, fh.len, fh.index),
        (OP_PUT, 1, FLAG_COMMIT, 1, 7, 0)
    );
    assert!(fh.check(&f, &f[32..39]));
}

#[test]
fn kv_example() {
    assert_eq!(
        example("kv"),
        encode_kv(&[("age".into(), FieldValue::Int(31))]).unwrap()
    );
}
