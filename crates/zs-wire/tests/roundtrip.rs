//! Round trips: every frame kind and every value type survives encode → decode, under
//! every configuration (token, compression), fed whole, byte by byte, or in random chunks.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use zs_wire::{Config, DataFrame, Decoder, Encoder, Frame, FrameKind, Limits, Value, WireError};

/// `v` as a LEB128 varint (the wire's counts and lengths).
fn leb128(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn decode_all(dec: &mut Decoder, buf: &mut BytesMut) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = dec.decode(buf).expect("valid stream") {
        out.push(f);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frame_round_trip(f in frame(), c in config()) {
        let mut wire = BytesMut::new();
        Encoder::new(c).encode(&f, &mut wire).unwrap();
        let bytes = wire.clone().freeze();
        let mut dec = Decoder::new(c);
        let got = dec.decode(&mut wire).unwrap().expect("one frame");
        prop_assert!(wire.is_empty());
        prop_assert!(same(&got, &f, &c), "{got:?} != {f:?}");
        // The whole-buffer API agrees.
        let again = Frame::decode(&bytes, &c).unwrap();
        prop_assert!(same(&again, &f, &c));
        // Without NaNs in the frame, structural equality holds too.
        if !format!("{f:?}").contains("NaN") {
            prop_assert_eq!(got, f);
        }
    }

    #[test]
    fn value_round_trip(v in value()) {
        let df = DataFrame::new().with(v.clone());
        let bytes = df.to_bytes();
        prop_assert_eq!(bytes.len(), df.encoded_len());
        let back = DataFrame::decode(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(back.to_bytes(), bytes);
        prop_assert_eq!(back.get(0).map(Value::type_name), Some(v.type_name()));
    }

    #[test]
    fn one_pass_decode_agrees_with_decode_then_values(df in dataframe()) {
        // `decode_indexed` (validate and build in one pass) gives what `decode` +
        // `values` give, and refuses what `decode` refuses with the same error.
        let bytes = df.to_bytes();
        let indexed = DataFrame::decode_indexed(&bytes, &Limits::default()).unwrap();
        let lazy = DataFrame::decode(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(indexed.values(), lazy.values());
        prop_assert_eq!(indexed.to_bytes(), bytes.clone());
        for cut in [1usize, 2, 5] {
            if bytes.len() > cut {
                let short = bytes.slice(..bytes.len() - cut);
                prop_assert_eq!(
                    DataFrame::decode_indexed(&short, &Limits::default()).err(),
                    DataFrame::decode(&short, &Limits::default()).err()
                );
            }
        }
    }

    #[test]
    fn one_pass_decode_agrees_on_damaged_bytes(
        df in dataframe(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        extra in 0u64..400,
    ) {
        // `decode_indexed` builds the values with an exact-size `collect` and
        // stops at the first bad value, or, when the count claims more values
        // than the bytes left can hold, with a loop of pushes: either way it
        // accepts and refuses exactly what `decode` does, with the same error
        // and the same values. One byte changed anywhere, and the count raised.
        let good = df.to_bytes().to_vec();
        let mut changed = good.clone();
        let i = at.index(changed.len());
        changed[i] = byte;
        let count_len = good.iter().position(|b| b & 0x80 == 0).unwrap() + 1;
        let mut count = 0u64;
        for (k, b) in good[..count_len].iter().enumerate() {
            count |= u64::from(b & 0x7f) << (7 * k);
        }
        let mut raised = leb128(count + extra);
        raised.extend_from_slice(&good[count_len..]);
        for input in [changed, raised] {
            let input = Bytes::from(input);
            let limits = Limits { max_values: 1 << 12, ..Limits::default() };
            let indexed = DataFrame::decode_indexed(&input, &limits);
            let lazy = DataFrame::decode(&input, &limits);
            match (&indexed, &lazy) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(format!("{:?}", a.values()), format!("{:?}", b.values()));
                    prop_assert_eq!(a.to_bytes(), input.clone());
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                _ => prop_assert!(false, "decode_indexed {:?} vs decode {:?}", indexed, lazy),
            }
        }
    }

    #[test]
    fn reader_on_bytes_agrees_with_reader_on_values(df in dataframe()) {
        let decoded = DataFrame::decode(&df.to_bytes(), &Limits::default()).unwrap();
        for i in 0..df.len() {
            // Advance both readers with read_json, which accepts every value and keeps
            // the decoded one reading straight from the bytes.
            let mut a = df.reader();
            let mut b = decoded.reader();
            for _ in 0..i {
                prop_assert_eq!(format!("{:?}", a.read_json()), format!("{:?}", b.read_json()));
            }
            macro_rules! same_read {
                ($($m:ident),*) => {$(
                    let (x, y) = (a.clone().$m(), b.clone().$m());
                    prop_assert_eq!(format!("{x:?}"), format!("{y:?}"), "{} at {}", stringify!($m), i);
                )*};
            }
            same_read!(read_i8, read_i16, read_i32, read_i64, read_u8, read_u16, read_u32, read_u64,
                read_f32, read_f64, read_bool, read_text, read_bytes, read_variant, read_json);
        }
    }

    #[test]
    fn dataframe_json_round_trip(df in dataframe()) {
        let j = df.to_json();
        let text = serde_json::to_string(&j).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let back = DataFrame::from_json(&parsed, &Limits::default()).unwrap();
        prop_assert_eq!(back.to_bytes(), df.to_bytes());
    }

    #[test]
    fn stream_in_random_chunks(frames in prop::collection::vec(frame(), 1..6), c in config(),
                               cuts in prop::collection::vec(1usize..40, 1..50)) {
        let mut enc = Encoder::new(c);
        let mut wire = BytesMut::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        let mut dec = Decoder::new(c);
        let mut rx = BytesMut::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - pos);
            rx.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            i += 1;
            got.extend(decode_all(&mut dec, &mut rx));
        }
        prop_assert!(rx.is_empty());
        prop_assert_eq!(got.len(), frames.len());
        for (g, f) in got.iter().zip(&frames) {
            prop_assert!(same(g, f, &c));
        }
    }
}

/// Every frame kind, split into two parts at every byte boundary, and fed one byte
/// at a time: nothing comes out early, exactly the frame comes out at the end.
#[test]
fn every_frame_split_at_every_byte() {
    let frames = one_of_each();
    let kinds: std::collections::HashSet<FrameKind> = frames.iter().map(Frame::kind).collect();
    assert_eq!(
        kinds.len(),
        FrameKind::ALL.len(),
        "one_of_each covers every kind"
    );
    let configs = [
        Config::default(),
        Config::with_token(*b"\xA5zs\x01"),
        Config::with_token(*b"tokn").compression(0),
    ];
    for c in configs {
        for f in &frames {
            let wire = f.to_bytes(&c).unwrap();
            for split in 0..=wire.len() {
                let mut dec = Decoder::new(c);
                let mut rx = BytesMut::from(&wire[..split]);
                if split < wire.len() {
                    assert_eq!(dec.decode(&mut rx).unwrap(), None, "{f:?} split at {split}");
                    rx.extend_from_slice(&wire[split..]);
                }
                assert_eq!(
                    dec.decode(&mut rx).unwrap().as_ref(),
                    Some(f),
                    "{f:?} split at {split}"
                );
                assert!(rx.is_empty());
                assert_eq!(dec.decode(&mut rx).unwrap(), None);
            }
            let mut dec = Decoder::new(c);
            let mut rx = BytesMut::new();
            for (i, b) in wire.iter().enumerate() {
                rx.extend_from_slice(&[*b]);
                let out = dec.decode(&mut rx).unwrap();
                if i + 1 < wire.len() {
                    assert_eq!(out, None);
                } else {
                    assert_eq!(out.as_ref(), Some(f));
                }
            }
        }
    }
}

#[test]
fn compression_applies_above_threshold_only_when_smaller() {
    let c = Config::with_compression(64);
    let big = Frame::CompleteBuffer {
        cmd: "z".into(),
        data: Bytes::from(vec![7u8; 10_000]),
    };
    let wire = big.to_bytes(&c).unwrap();
    assert!(
        wire.len() < 200,
        "repetitive data compresses: {} bytes",
        wire.len()
    );
    assert_eq!(wire[1] & 0x80, 0x80, "compressed flag set");
    let accepting = Config {
        accept_compressed: true,
        ..Config::default()
    };
    assert_eq!(
        Frame::decode(&wire, &accepting).unwrap(),
        big,
        "any decoder that accepts compression decodes it, whatever its threshold"
    );
    assert_eq!(
        Frame::decode(&wire, &Config::default()),
        Err(WireError::CompressionRefused(0x87)),
        "a decoder that does not accept compression refuses it"
    );
    let small = Frame::CompleteBuffer {
        cmd: "z".into(),
        data: Bytes::from(vec![7u8; 61]),
    }; // body 63 bytes
    assert_eq!(
        small.to_bytes(&c).unwrap()[1] & 0x80,
        0,
        "below threshold: raw"
    );
    let mut x = 0x9e3779b97f4a7c15u64;
    let noise: Vec<u8> = (0..5000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let random = Frame::CompleteBuffer {
        cmd: "z".into(),
        data: Bytes::from(noise),
    };
    let w = random.to_bytes(&c).unwrap();
    assert_eq!(w[1] & 0x80, 0, "incompressible data is sent raw");
    assert_eq!(Frame::decode(&w, &c).unwrap(), random);
}

#[test]
fn large_values_are_not_copied_on_decode() {
    let payload = Bytes::from(vec![0x5au8; 1 << 20]);
    let f = Frame::StreamResponse {
        id: 1,
        data: DataFrame::new().with(payload),
    };
    let wire = f.to_bytes(&Config::default()).unwrap();
    let range = wire.as_ptr_range();
    let Frame::StreamResponse { data, .. } = Frame::decode(&wire, &Config::default()).unwrap()
    else {
        panic!("kind")
    };
    let Some(Value::Bytes(b)) = data.get(0) else {
        panic!("value")
    };
    assert_eq!(b.len(), 1 << 20);
    assert!(
        range.contains(&b.as_ptr()),
        "the value is a slice of the received buffer"
    );
}

#[test]
fn small_console_request_overhead() {
    // 64 bytes of request content: a 4-byte command name and 60 bytes of text.
    let f = Frame::Console {
        id: 1000,
        cmd: "echo".into(),
        text: "x".repeat(60).as_str().into(),
    };
    let plain = f.to_bytes(&Config::default()).unwrap().len() - 64;
    let tok = f.to_bytes(&Config::with_token(*b"abcd")).unwrap().len() - 64;
    assert_eq!(plain, 6, "version, kind, length, 2-byte id, name length");
    assert_eq!(tok, 10);
    assert!(tok <= 12);
}
