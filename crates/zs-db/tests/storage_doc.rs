//! docs/STORAGE.md's example bytes and header layout are what the code writes and reads.

use zs_db::format::{
    self, FrameHeader, Salt, CHECKPOINT_LEN, CHECKPOINT_OFFSETS, FILE_HEADER_LEN, FLAG_COMMIT,
    OP_PUT, SALT_LEN,
};
use zs_db::{encode_kv, FieldValue};

fn doc() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/STORAGE.md"
    ))
    .unwrap()
}

fn example(name: &str) -> Vec<u8> {
    let doc = doc();
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

/// The salt of the doc's examples: bytes 00 01 02 … 0f.
fn doc_salt() -> Salt {
    let mut b = [0u8; SALT_LEN];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    Salt::new(b)
}

/// The `| offset | size | field |` row of a table naming `field`, as (offset, size).
fn row(field: &str) -> (u64, u64) {
    let doc = doc();
    let line = doc
        .lines()
        .find(|l| l.split('|').nth(3).map(str::trim) == Some(field))
        .unwrap_or_else(|| panic!("no table row for {field}"));
    let cols: Vec<&str> = line.split('|').map(str::trim).collect();
    (cols[1].parse().unwrap(), cols[2].parse().unwrap())
}

#[test]
fn header_example() {
    let h = example("header");
    assert_eq!(
        h,
        format::encode_file_header(1, &doc_salt(), FILE_HEADER_LEN).to_vec()
    );
    let d = format::decode_file_header("x", &h).unwrap();
    assert_eq!(d.id_floor, 1);
    assert_eq!(d.salt, doc_salt());
    assert_eq!(
        (d.checkpoint, d.checkpoint_slot),
        (FILE_HEADER_LEN, Some(0))
    );
    assert!(doc().contains(&format!("version {}", format::FORMAT_VERSION)));
    assert!(doc().contains(&format!("## 2. File header ({FILE_HEADER_LEN} bytes)")));
}

#[test]
fn header_table_matches_the_code() {
    let h = example("header");
    assert_eq!(row("salt"), (24, SALT_LEN as u64));
    assert_eq!(&h[24..40], doc_salt().bytes());
    assert_eq!(row("header CRC"), (40, 4));
    assert_eq!(
        u32::from_le_bytes(h[40..44].try_into().unwrap()),
        crc32fast::hash(&h[..40])
    );
    assert_eq!(row("id floor"), (16, 8));
    for (i, off) in CHECKPOINT_OFFSETS.iter().enumerate() {
        assert_eq!(
            row(&format!("checkpoint slot {i}")),
            (*off, CHECKPOINT_LEN as u64)
        );
    }
    assert_eq!(
        CHECKPOINT_OFFSETS[1] + CHECKPOINT_LEN as u64,
        FILE_HEADER_LEN
    );
    // slot layout: synced end, then the salted CRC of it
    assert_eq!(row("synced end"), (0, 8));
    assert_eq!(row("slot CRC"), (8, 4));
    let slot = &h[64..80];
    let mut salted = doc_salt().bytes().to_vec();
    salted.extend_from_slice(&slot[..8]);
    assert_eq!(
        u32::from_le_bytes(slot[8..12].try_into().unwrap()),
        crc32fast::hash(&salted)
    );
    assert_eq!(
        format::decode_checkpoint(&doc_salt(), slot),
        Some(FILE_HEADER_LEN)
    );
    assert_eq!(format::decode_checkpoint(&doc_salt(), &h[80..96]), None);
}

#[test]
fn put_frame_example() {
    let f = example("put-json");
    let salt = doc_salt();
    let mut out = Vec::new();
    format::encode_frame(
        &mut out,
        &salt,
        OP_PUT,
        1,
        FLAG_COMMIT,
        1,
        0,
        0,
        br#"{"a":1}"#,
    );
    assert_eq!(f, out);
    let fh = FrameHeader::decode(&f, 8).unwrap();
    assert_eq!(
        (fh.op, fh.kind, fh.flags, fh.id, fh.len, fh.index),
        (OP_PUT, 1, FLAG_COMMIT, 1, 7, 0)
    );
    assert!(fh.check(&salt, &f, &f[32..39]));
    // CRC(salt ‖ bytes 4..32 ‖ payload), as the table says
    let mut salted = salt.bytes().to_vec();
    salted.extend_from_slice(&f[4..39]);
    assert_eq!(fh.crc, crc32fast::hash(&salted));
    // the same image does not validate in a file with another salt
    assert!(!fh.check(&Salt::new([0xAA; SALT_LEN]), &f, &f[32..39]));
}

#[test]
fn kv_example() {
    assert_eq!(
        example("kv"),
        encode_kv(&[("age".into(), FieldValue::Int(31))]).unwrap()
    );
}
