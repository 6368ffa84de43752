//! docs/STORAGE.md section 9's example record is what zs-tx writes and reads.

use zs_tx::{decode_record, encode_record, Key, Value};

fn example(name: &str) -> Vec<u8> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/STORAGE.md"
    ))
    .unwrap();
    let start = doc
        .find(&format!("```hex {name}\n"))
        .expect("example in the doc");
    doc[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .flat_map(|l| l.split_whitespace())
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

#[test]
fn documented_record_bytes() {
    let mut key = Vec::new();
    7u32.encode_key(&mut key);
    let value = 100u64.encode_value().unwrap();
    let rec = encode_record("acc", &key, &value).unwrap();
    assert_eq!(rec, example("zs-tx-record"));
    let (t, k, v) = decode_record(&rec).unwrap();
    assert_eq!((t, k), ("acc", &key[..]));
    assert_eq!(u64::decode_value(v).unwrap(), 100);
}

#[test]
fn malformed_records_are_errors() {
    let good = example("zs-tx-record");
    for cut in 0..13 {
        assert!(
            decode_record(&good[..cut]).is_err(),
            "prefix of {cut} bytes"
        );
    }
    let mut bad = good.clone();
    bad[0] = 2;
    assert!(decode_record(&bad).is_err());
    let mut bad = good.clone();
    bad[1] = 0;
    assert!(decode_record(&bad).is_err());
    assert!(encode_record("", b"k", b"v").is_err());
    assert!(encode_record(&"x".repeat(256), b"k", b"v").is_err());
}
