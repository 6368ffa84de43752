//! A corpus of malformed inputs, each of which must give its own specific error
//! (never a panic, never "needs more bytes" forever), plus the limit tests.

use bytes::{Bytes, BytesMut};
use zs_wire::{Config, DataFrame, Decoder, Encoder, Frame, Limits, Text, Value, WireError};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect()
}

enum Want {
    Exact(WireError),
    /// Only the variant is checked (the message comes from a dependency).
    Json,
    Decompress,
}

fn matches(want: &Want, got: &WireError) -> bool {
    match want {
        Want::Exact(e) => e == got,
        Want::Json => matches!(got, WireError::Json(_)),
        Want::Decompress => matches!(got, WireError::Decompress(_)),
    }
}

fn nested(depth: usize) -> Vec<u8> {
    // Stream request id 1, empty name, then `depth` DataFrames each holding the next.
    let mut body = vec![0x01, 0x00];
    for _ in 1..depth {
        body.extend_from_slice(&[0x01, 0x0f]);
    }
    body.push(0x00);
    let mut f = vec![0x01, 0x02, body.len() as u8];
    f.extend(body);
    f
}

fn corpus() -> Vec<(&'static str, Vec<u8>, Config, Want)> {
    use Want::*;
    use WireError as E;
    let d = Config::default();
    let t = Config::with_token(*b"abcd");
    // Compression accepted.
    let z = Config {
        accept_compressed: true,
        ..d
    };
    // A small JSON limit.
    let j = Config {
        limits: Limits {
            max_json: 4,
            ..Limits::default()
        },
        ..d
    };
    vec![
        (
            "wrong version",
            hex("02 01 00"),
            d,
            Exact(E::UnsupportedVersion(2)),
        ),
        (
            "token mismatch seen early",
            hex("01 61 62 78"),
            t,
            Exact(E::BadToken),
        ),
        (
            "token missing",
            hex("01 01 03 01 00 41"),
            t,
            Exact(E::BadToken),
        ),
        (
            "unknown kind",
            hex("01 3f 00"),
            d,
            Exact(E::UnknownKind(0x3f)),
        ),
        (
            "reserved flag",
            hex("01 41 00"),
            d,
            Exact(E::ReservedFlags(0x41)),
        ),
        (
            "length varint overflow",
            hex("01 01 ff ff ff ff ff ff ff ff ff 02"),
            d,
            Exact(E::VarintOverflow),
        ),
        (
            "length non-canonical",
            hex("01 19 80 00"),
            d,
            Exact(E::NonCanonicalVarint),
        ),
        (
            "frame too large",
            hex("01 01 ff ff ff ff 0f"),
            d,
            Exact(E::FrameTooLarge {
                len: 0xffff_ffff,
                max: 16 << 20,
            }),
        ),
        (
            "empty console body",
            hex("01 01 00"),
            d,
            Exact(E::Truncated { field: "id" }),
        ),
        (
            "name too long",
            hex("01 01 03 01 80 02"),
            d,
            Exact(E::NameTooLong { len: 256, max: 255 }),
        ),
        (
            "name truncated",
            hex("01 01 03 01 05 61"),
            d,
            Exact(E::Truncated { field: "name" }),
        ),
        (
            "name not utf-8",
            hex("01 01 03 01 01 ff"),
            d,
            Exact(E::InvalidUtf8),
        ),
        (
            "text not utf-8",
            hex("01 01 04 01 00 c3 28"),
            d,
            Exact(E::InvalidUtf8),
        ),
        (
            "keepalive with a body",
            hex("01 19 01 00"),
            d,
            Exact(E::TrailingBytes(1)),
        ),
        (
            "ack with trailing byte",
            hex("01 21 02 05 00"),
            d,
            Exact(E::TrailingBytes(1)),
        ),
        (
            "dataframe trailing byte",
            hex("01 11 03 01 00 00"),
            d,
            Exact(E::TrailingBytes(1)),
        ),
        (
            "unknown value tag",
            hex("01 02 04 01 00 01 7f"),
            d,
            Exact(E::UnknownValueTag(0x7f)),
        ),
        (
            "bool byte 2",
            hex("01 02 05 01 00 01 02 02"),
            d,
            Exact(E::InvalidByte {
                field: "bool",
                value: 2,
            }),
        ),
        (
            "array of bools",
            hex("01 02 06 01 00 01 0e 02 00"),
            d,
            Exact(E::UnknownArrayKind(2)),
        ),
        (
            "array partial element",
            hex("01 02 09 01 00 01 0e 05 03 aa bb cc"),
            d,
            Exact(E::ArrayLength { len: 3, elem: 4 }),
        ),
        (
            "unknown variant tag",
            hex("01 02 05 01 00 01 11 09"),
            d,
            Exact(E::UnknownVariantTag(9)),
        ),
        (
            "i64 truncated",
            hex("01 02 06 01 00 01 06 01 02"),
            d,
            Exact(E::Truncated { field: "i64" }),
        ),
        (
            "value count over limit",
            hex("01 02 07 01 00 ff ff ff ff 0f"),
            d,
            Exact(E::TooManyValues {
                count: 0xffff_ffff,
                max: 1 << 20,
            }),
        ),
        (
            "values missing",
            hex("01 02 03 01 00 05"),
            d,
            Exact(E::Truncated { field: "value tag" }),
        ),
        (
            "string length over limit",
            hex("01 02 08 01 00 01 01 ff ff ff 7f"),
            d,
            Exact(E::ValueTooLarge {
                len: 0x0fff_ffff,
                max: 16 << 20,
            }),
        ),
        (
            "string body missing",
            hex("01 02 05 01 00 01 01 05"),
            d,
            Exact(E::Truncated { field: "string" }),
        ),
        (
            "nesting too deep",
            nested(33),
            d,
            Exact(E::DepthExceeded { max: 32 }),
        ),
        ("invalid json", hex("01 02 06 01 00 01 10 01 7b"), d, Json),
        (
            "batch flags 2",
            hex("01 08 04 01 00 02 00"),
            d,
            Exact(E::InvalidByte {
                field: "flags",
                value: 2,
            }),
        ),
        (
            "chunk past total",
            hex("01 05 05 01 00 05 04 00"),
            d,
            Exact(E::InvalidRange { field: "chunk" }),
        ),
        (
            "last chunk short of total",
            hex("01 05 05 01 00 00 04 01"),
            d,
            Exact(E::InvalidRange { field: "chunk" }),
        ),
        (
            "resend backwards",
            hex("01 22 02 05 04"),
            d,
            Exact(E::InvalidRange { field: "resend" }),
        ),
        (
            "error code over u32",
            hex("01 12 06 01 80 80 80 80 10"),
            d,
            Exact(E::VarintOverflow),
        ),
        (
            "compressed size over limit",
            hex("01 81 05 ff ff ff ff 0f"),
            z,
            Exact(E::FrameTooLarge {
                len: 0xffff_ffff,
                max: 16 << 20,
            }),
        ),
        (
            "compression bomb",
            hex("01 81 04 80 80 40 00"),
            z,
            Decompress,
        ),
        ("corrupt lz4 block", hex("01 81 02 0a f0"), z, Decompress),
        (
            "compressed frame refused by default, at its kind byte",
            hex("01 81 05 0a 30 61 62 63"),
            d,
            Exact(E::CompressionRefused(0x81)),
        ),
        (
            "compressed frame refused with a token",
            hex("01 61 62 63 64 92"),
            Config {
                compress_threshold: Some(0),
                ..t
            },
            Exact(E::CompressionRefused(0x92)),
        ),
        (
            "json over max_json",
            hex("01 02 0a 01 00 01 10 05 5b 31 2c 32 5d"),
            j,
            Exact(E::JsonTooLarge { len: 5, max: 4 }),
        ),
        (
            "json at max_json but invalid",
            hex("01 02 09 01 00 01 10 04 5b 31 2c 5d"),
            j,
            Json,
        ),
        (
            "json number out of range",
            hex("01 02 0a 01 00 01 10 05 31 65 34 30 30"),
            d,
            Json,
        ),
        (
            "json lone surrogate",
            hex("01 02 0d 01 00 01 10 08 22 5c 75 64 38 30 30 22"),
            d,
            Json,
        ),
        (
            "json string not utf-8",
            hex("01 02 08 01 00 01 10 03 22 ff 22"),
            d,
            Json,
        ),
        (
            "lz4 output short of size",
            hex("01 81 05 0a 30 61 62 63"),
            z,
            Decompress,
        ),
        (
            "compressed body empty",
            hex("01 81 00"),
            z,
            Exact(E::Truncated {
                field: "uncompressed length",
            }),
        ),
    ]
}

#[test]
fn each_malformed_input_gives_its_error() {
    for (what, bytes, config, want) in corpus() {
        // Whole input at once.
        let mut buf = BytesMut::from(&bytes[..]);
        let got = Decoder::new(config).decode(&mut buf);
        match &got {
            Err(e) => assert!(matches(&want, e), "{what}: got {e:?}"),
            Ok(f) => panic!("{what}: decoded {f:?}"),
        }
        // Byte by byte: the same error, at the latest when the last byte arrives.
        let mut dec = Decoder::new(config);
        let mut rx = BytesMut::new();
        let mut err = None;
        for b in &bytes {
            rx.extend_from_slice(&[*b]);
            match dec.decode(&mut rx) {
                Ok(None) => {}
                Ok(Some(f)) => panic!("{what}: decoded {f:?}"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let e = err.unwrap_or_else(|| panic!("{what}: no error byte by byte"));
        assert!(matches(&want, &e), "{what}: byte by byte got {e:?}");
        // Whole-buffer API.
        let e = Frame::decode(&Bytes::from(bytes), &config).expect_err(what);
        assert!(matches(&want, &e), "{what}: Frame::decode got {e:?}");
    }
}

#[test]
fn whole_buffer_api_wants_exactly_one_frame() {
    let c = Config::default();
    let mut two = Frame::Keepalive.to_bytes(&c).unwrap().to_vec();
    two.extend_from_slice(&two.clone());
    assert_eq!(
        Frame::decode(&Bytes::from(two), &c),
        Err(WireError::TrailingBytes(3))
    );
    assert_eq!(
        Frame::decode(&Bytes::from_static(&[1, 1, 5, 1]), &c),
        Err(WireError::Truncated { field: "body" })
    );
    assert_eq!(
        Frame::decode(&Bytes::from_static(&[1]), &c),
        Err(WireError::Truncated { field: "header" })
    );
}

#[test]
fn oversized_length_is_rejected_before_allocating() {
    let c = Config {
        limits: Limits {
            max_frame: 1000,
            ..Limits::default()
        },
        ..Config::default()
    };
    // 2^40 declared: refused from the header alone, and the buffer did not grow.
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[0x01, 0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
    let cap = buf.capacity();
    assert_eq!(
        Decoder::new(c).decode(&mut buf),
        Err(WireError::FrameTooLarge {
            len: 1 << 40,
            max: 1000
        })
    );
    assert_eq!(buf.capacity(), cap);
    // Within the limit: the decoder waits and reserves room for exactly the frame.
    let mut buf = BytesMut::from(&[0x01, 0x07, 0xe8, 0x07][..]); // CompleteBuffer, 1000 bytes
    assert_eq!(Decoder::new(c).decode(&mut buf), Ok(None));
    assert!(buf.capacity() >= 1004);
    // A DataFrame claiming a million values in a few bytes reserves nothing big.
    let l = Limits::default();
    let e = DataFrame::decode(&Bytes::from_static(&[0x80, 0x80, 0x40]), &l);
    assert_eq!(e, Err(WireError::Truncated { field: "value tag" }));
}

#[test]
fn limits_are_enforced_on_both_sides() {
    let limits = Limits {
        max_frame: 100,
        max_depth: 3,
        max_values: 10,
        max_string: 10,
        max_name: 4,
        max_json: 10,
    };
    let c = Config {
        limits,
        ..Config::default()
    };
    let mut enc = Encoder::new(c);
    let mut out = BytesMut::new();
    let big = Frame::CompleteBuffer {
        cmd: "x".into(),
        data: Bytes::from(vec![0; 100]),
    };
    assert_eq!(
        enc.encode(&big, &mut out),
        Err(WireError::FrameTooLarge { len: 102, max: 100 })
    );
    assert!(out.is_empty(), "nothing written on error");
    let long_name = Frame::DirectConsole {
        cmd: "login".into(),
        text: Text::new(),
    };
    assert_eq!(
        enc.encode(&long_name, &mut out),
        Err(WireError::NameTooLong { len: 5, max: 4 })
    );
    let long_text = Frame::ConsoleResponse {
        id: 1,
        text: "01234567890".into(),
    };
    assert_eq!(
        enc.encode(&long_text, &mut out),
        Err(WireError::ValueTooLarge { len: 11, max: 10 })
    );

    // Decoder side: frames made under default limits, decoded under the small ones.
    let d = Config::default();
    let dec = |f: &Frame| Frame::decode(&f.to_bytes(&d).unwrap(), &c);
    assert_eq!(
        dec(&big),
        Err(WireError::FrameTooLarge { len: 102, max: 100 })
    );
    assert_eq!(
        dec(&long_name),
        Err(WireError::NameTooLong { len: 5, max: 4 })
    );
    assert_eq!(
        dec(&long_text),
        Err(WireError::ValueTooLarge { len: 11, max: 10 })
    );
    let s = |df: DataFrame| dec(&Frame::StreamResponse { id: 0, data: df });
    assert_eq!(
        s(DataFrame::new().with("01234567890")),
        Err(WireError::ValueTooLarge { len: 11, max: 10 })
    );
    assert_eq!(
        s(DataFrame::new().with(Bytes::from_static(&[0; 11]))),
        Err(WireError::ValueTooLarge { len: 11, max: 10 })
    );
    assert!(
        s(DataFrame::new().with("0123456789")).is_ok(),
        "exactly at the limit is fine"
    );
    // Values are counted across nesting: 5 outer + 6 inner = 11.
    let inner: DataFrame = (0..6).map(|i| Value::U8(i as u8)).collect();
    let mut outer: DataFrame = (0..4).map(|i| Value::U8(i as u8)).collect();
    outer.push(inner);
    assert_eq!(
        s(outer.clone()),
        Err(WireError::TooManyValues { count: 6, max: 10 })
    );
    outer.values_mut().pop();
    outer.values_mut().pop();
    outer.push(DataFrame::new().with(1u8).with(2u8).with(3u8));
    assert!(s(outer).is_ok(), "4 + 3 values");
    // Depth: 3 levels fine, 4 refused.
    let d3 = DataFrame::new().with(DataFrame::new().with(DataFrame::new()));
    assert!(s(d3.clone()).is_ok());
    assert_eq!(
        s(DataFrame::new().with(d3)),
        Err(WireError::DepthExceeded { max: 3 })
    );
}

#[test]
fn errors_bridge_to_io() {
    let e: std::io::Error = WireError::BadToken.into();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}
