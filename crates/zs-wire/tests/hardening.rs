//! Audit findings on zs-wire, one test each: H4 (`max_json`, JSON checked like
//! serde_json without building it), C2 (compression only where configured), L8 (no
//! reservation from an announced length), G4 (a bad body is recoverable: the decoder
//! stays in step). The allocation side of H4 is in `json_alloc.rs`.

use bytes::{Bytes, BytesMut};
use zs_wire::{
    Config, DataFrame, DecodeError, Decoder, Encoder, Frame, FrameKind, Limits, Value, WireError,
};

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A frame of `kind` around `body`, no token, uncompressed.
fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0x01, kind];
    put_varint(&mut f, body.len() as u64);
    f.extend_from_slice(body);
    f
}

/// A StreamResponse `{ id, data: [json text] }` with the JSON text as given.
fn json_response(id: u64, text: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_varint(&mut body, id);
    body.extend_from_slice(&[0x01, 0x10]);
    put_varint(&mut body, text.len() as u64);
    body.extend_from_slice(text);
    raw_frame(0x11, &body)
}

fn dec_one(bytes: &[u8], config: Config) -> Result<Option<Frame>, DecodeError> {
    Decoder::new(config).decode_recoverable(&mut BytesMut::from(bytes))
}

#[test]
fn max_json_bounds_json_values() {
    let small = Config {
        limits: Limits {
            max_json: 8,
            ..Limits::default()
        },
        ..Config::default()
    };
    // 8 bytes: fine; 9 bytes: refused, and reported as a bad body of that frame.
    assert!(matches!(
        dec_one(&json_response(3, b"[1,2,3] "), small),
        Ok(Some(Frame::StreamResponse { id: 3, .. }))
    ));
    let nine = json_response(3, b"[1,2,3,4]");
    assert_eq!(
        dec_one(&nine, small),
        Err(DecodeError::BadBody {
            kind: FrameKind::StreamResponse,
            id: Some(3),
            frame_len: nine.len(),
            error: WireError::JsonTooLarge { len: 9, max: 8 },
        })
    );
    // max_string still applies to JSON too.
    let tight = Config {
        limits: Limits {
            max_string: 4,
            ..Limits::default()
        },
        ..Config::default()
    };
    assert_eq!(
        dec_one(&json_response(3, b"[1,2]"), tight).map_err(DecodeError::into_error),
        Err(WireError::ValueTooLarge { len: 5, max: 4 })
    );
    // Default: 1 MiB of JSON is accepted, one byte more is not.
    let d = Limits::default();
    assert_eq!(d.max_json, 1 << 20);
    let mut text = vec![b' '; d.max_json];
    text[0] = b'0';
    assert!(dec_one(&json_response(1, &text), Config::default()).is_ok());
    text.push(b' ');
    assert_eq!(
        dec_one(&json_response(1, &text), Config::default()).map_err(DecodeError::into_error),
        Err(WireError::JsonTooLarge {
            len: d.max_json as u64 + 1,
            max: d.max_json
        })
    );
    // The same limits inside a decompressed body.
    let zsmall = small.compression(0);
    let over = Frame::decode(&Bytes::from(nine), &small).err();
    assert_eq!(over, Some(WireError::JsonTooLarge { len: 9, max: 8 }));
    let ones = format!("[{}1]", "1,".repeat(40));
    let data = DataFrame::new().with(serde_json::from_str::<serde_json::Value>(&ones).unwrap());
    let packed = Frame::StreamResponse { id: 5, data }
        .to_bytes(&Config::with_compression(0))
        .unwrap();
    assert_eq!(packed[1], 0x91, "compressed on the wire");
    assert!(packed.len() < ones.len());
    assert_eq!(
        Frame::decode_recoverable(&packed, &zsmall),
        Err(DecodeError::BadBody {
            kind: FrameKind::StreamResponse,
            id: Some(5),
            frame_len: packed.len(),
            error: WireError::JsonTooLarge { len: 83, max: 8 },
        })
    );
}

#[test]
fn json_is_checked_exactly_as_serde_json_parses_it() {
    let mut deep_ok = "[".repeat(127);
    deep_ok.push_str(&"]".repeat(127));
    let mut deep_bad = "[".repeat(128);
    deep_bad.push_str(&"]".repeat(128));
    let mut deep_obj = r#"{"a":"#.repeat(128);
    deep_obj.push('1');
    deep_obj.push_str(&"}".repeat(128));
    let texts: Vec<Vec<u8>> = [
        "0",
        " null ",
        "true",
        r#"{"a":[1,2.5,-3e2,"x\n\u00e9\ud83d\ude00"],"b":{}}"#,
        "[]",
        "-0",
        "1e308",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1e309",
        "-1e400",
        "1e-400",
        "0e999999999999999999",
        "123456789012345678901234567890",
        "18446744073709551616",
        "-9223372036854775809",
        "01",
        "1.",
        ".5",
        "+1",
        "[1,]",
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{1:2}"#,
        "[1] [2]",
        "",
        "   ",
        "nul",
        "NaN",
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud800\u0041""#,
        r#""\x""#,
        "\"tab\there\"",
        r#""\u12""#,
        r#"{"a":1,"a":2}"#,
        deep_ok.as_str(),
        deep_bad.as_str(),
        deep_obj.as_str(),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([
        b"\"\xff\"".to_vec(),
        b"\"\xc3\"".to_vec(),
        b"\"\xed\xa0\x80\"".to_vec(),
        b"\xef\xbb\xbf1".to_vec(),
        b"[1]\x00".to_vec(),
    ])
    .collect();
    for text in texts {
        let serde = serde_json::from_slice::<serde_json::Value>(&text);
        let mut df = vec![0x01, 0x10];
        put_varint(&mut df, text.len() as u64);
        df.extend_from_slice(&text);
        let ours = DataFrame::decode(&Bytes::from(df), &Limits::default());
        let shown = String::from_utf8_lossy(&text);
        match (serde, ours) {
            (Ok(v), Ok(df)) => {
                assert_eq!(df.get(0), Some(&Value::Json(Box::new(v))), "{shown}");
            }
            (Err(_), Err(WireError::Json(_))) => {}
            (serde, ours) => panic!("{shown}: serde_json {serde:?}, decoder {ours:?}"),
        }
    }
}

#[test]
fn compressed_frames_only_where_configured() {
    let frame = Frame::CompleteBuffer {
        cmd: "z".into(),
        data: Bytes::from(vec![b'a'; 4096]),
    };
    let both = Config::with_compression(16);
    assert_eq!(both.compress_threshold, Some(16));
    assert!(both.accept_compressed);
    assert!(!Config::default().accept_compressed, "off by default");
    let wire = frame.to_bytes(&both).unwrap();
    assert_eq!(wire[1], 0x87, "sent compressed");

    // Default: refused as soon as the kind byte arrives, as a fatal header error,
    // and nothing is consumed or reserved.
    let mut dec = Decoder::new(Config::default());
    let mut rx = BytesMut::from(&wire[..2]);
    let cap = rx.capacity();
    let e = dec.decode_recoverable(&mut rx).unwrap_err();
    assert_eq!(e, DecodeError::Fatal(WireError::CompressionRefused(0x87)));
    assert!(!e.is_recoverable());
    assert_eq!((rx.len(), rx.capacity()), (2, cap));
    assert_eq!(
        Frame::decode(&wire, &Config::default()),
        Err(WireError::CompressionRefused(0x87))
    );
    // Sending compressed does not by itself mean accepting it.
    let send_only = Config {
        compress_threshold: Some(16),
        ..Config::default()
    };
    assert_eq!(
        Frame::decode(&wire, &send_only),
        Err(WireError::CompressionRefused(0x87))
    );
    // Accepted when configured, with or without sending compressed.
    let accept_only = Config {
        accept_compressed: true,
        ..Config::default()
    };
    for c in [both, accept_only] {
        assert_eq!(dec_one(&wire, c), Ok(Some(frame.clone())));
    }
    // Plain frames are accepted either way.
    let plain = frame.to_bytes(&Config::default()).unwrap();
    assert_eq!(dec_one(&plain, both), Ok(Some(frame.clone())));
    // The decompressed size counts against max_frame, even when the wire is small.
    let small = Config {
        limits: Limits {
            max_frame: 4000,
            ..Limits::default()
        },
        ..both
    };
    assert!(wire.len() < 100);
    assert_eq!(
        Frame::decode(&wire, &small),
        Err(WireError::FrameTooLarge {
            len: 4098,
            max: 4000
        })
    );
    // Strings in a decompressed body meet the same limits as in a plain one.
    let text = Frame::ConsoleResponse {
        id: 4,
        text: "x".repeat(300).as_str().into(),
    };
    let short = Config {
        limits: Limits {
            max_string: 299,
            ..Limits::default()
        },
        ..both
    };
    for c in [both, Config::default()] {
        let w = text.to_bytes(&c).unwrap();
        assert_eq!(
            Frame::decode(&w, &short),
            Err(WireError::ValueTooLarge { len: 300, max: 299 }),
            "compressed: {}",
            w[1] & 0x80 != 0
        );
    }
}

#[test]
fn an_announced_length_reserves_only_what_arrives() {
    let c = Config::default();
    let max = c.limits.max_frame;
    // CompleteBuffer announcing max_frame bytes: header, then a few body bytes.
    let mut body = vec![0x01, b'x'];
    body.resize(max, 0x5a);
    let wire = raw_frame(0x07, &body);
    let header = wire.len() - max;
    let mut dec = Decoder::new(c);

    // A header cut inside its length reserves nothing.
    let mut rx = BytesMut::with_capacity(8);
    rx.extend_from_slice(&wire[..header - 1]);
    assert_eq!(dec.decode(&mut rx), Ok(None));
    assert_eq!(rx.capacity(), 8);

    // The whole header and 10 body bytes: at most a 64 KiB step is reserved, not
    // the announced 16 MiB.
    let mut rx = BytesMut::new();
    rx.extend_from_slice(&wire[..header + 10]);
    assert_eq!(dec.decode(&mut rx), Ok(None));
    assert!(
        rx.capacity() <= 128 << 10,
        "reserved {} bytes for a stalled frame",
        rx.capacity()
    );
    // As data arrives the buffer grows with it (within twice what arrived plus a
    // step), and the frame comes out whole.
    let mut pos = header + 10;
    while pos < wire.len() {
        let n = (wire.len() - pos).min(1 << 20);
        rx.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        let got = dec.decode(&mut rx).unwrap();
        if pos < wire.len() {
            assert_eq!(got, None);
            assert!(
                rx.capacity() <= 2 * rx.len() + (256 << 10),
                "capacity {} for {} bytes",
                rx.capacity(),
                rx.len()
            );
        } else {
            let Some(Frame::CompleteBuffer { data, .. }) = got else {
                panic!("the frame")
            };
            assert_eq!(data.len(), max - 2);
        }
    }
    assert!(rx.is_empty());
}

/// With `reserve_whole_frames_up_to(limit)`, a frame up to `limit` has its
/// whole length reserved once its header is in (no regrowth while it arrives);
/// a longer one, announced and stalled, still gets only the 64 KiB step.
#[test]
fn whole_frames_are_reserved_only_up_to_the_limit() {
    let c = Config::default();
    let limit = 1 << 20;
    let mut dec = Decoder::new(c);
    dec.reserve_whole_frames_up_to(limit);
    for (len, whole) in [
        (256 << 10, true),
        (limit - 16, true),
        (c.limits.max_frame, false),
    ] {
        let mut body = vec![0x01, b'x'];
        body.resize(len, 0x5a);
        let wire = raw_frame(0x07, &body);
        let header = wire.len() - len;
        let mut rx = BytesMut::new();
        rx.extend_from_slice(&wire[..header + 10]);
        assert_eq!(dec.decode(&mut rx), Ok(None));
        if whole {
            assert!(rx.capacity() >= wire.len(), "{len}: {}", rx.capacity());
            let cap = rx.capacity();
            rx.extend_from_slice(&wire[header + 10..wire.len() - 1]);
            assert_eq!(dec.decode(&mut rx), Ok(None));
            assert_eq!(rx.capacity(), cap, "{len}: regrown while arriving");
            rx.extend_from_slice(&wire[wire.len() - 1..]);
            let Ok(Some(Frame::CompleteBuffer { data, .. })) = dec.decode(&mut rx) else {
                panic!("the frame")
            };
            assert_eq!(data.len(), len - 2);
        } else {
            assert!(
                rx.capacity() <= 128 << 10,
                "reserved {} bytes for a stalled {len}-byte frame",
                rx.capacity()
            );
        }
    }
}

/// With `bulk_room`, a frame of 64 KiB or more reserved whole gets a buffer
/// of that many bytes, so the frames behind it complete where they lie (the
/// buffer does not move while four 256 KiB frames arrive in 64 KiB reads,
/// once the first is reserved; without the room, each frame's start moves);
/// a small frame and an announced frame
/// above the whole-frame limit still reserve only their own step.
#[test]
fn bulk_frames_get_the_bulk_room() {
    let c = Config::default();
    let room = 2 << 20;
    let mut dec = Decoder::new(c);
    dec.reserve_whole_frames_up_to(1 << 20);
    dec.bulk_room(room);
    let len = 256 << 10;
    let mut wire = Vec::new();
    for i in 0..4u8 {
        let mut body = vec![0x01, b'x'];
        body.resize(len, i);
        wire.extend_from_slice(&raw_frame(0x07, &body));
    }
    let mut rx = BytesMut::new();
    let (mut got, mut start) = (0, None);
    for piece in wire.chunks(64 << 10) {
        rx.extend_from_slice(piece);
        while let Some(f) = dec.decode(&mut rx).unwrap() {
            let Frame::CompleteBuffer { data, .. } = f else {
                panic!("the frame")
            };
            assert!(data.iter().all(|&b| b == got as u8));
            got += 1;
        }
        if !rx.is_empty() {
            // Where the allocation starts, if it never moved: the frames
            // taken were split off its front.
            let base = rx.as_ptr() as usize - got * (wire.len() / 4);
            match start {
                None => start = Some(base),
                Some(s) => assert_eq!(s, base, "the buffer moved at frame {got}"),
            }
        }
    }
    assert_eq!(got, 4);
    for (len, limit) in [(1000, 64 << 10), (c.limits.max_frame, 128 << 10)] {
        let mut body = vec![0x01, b'x'];
        body.resize(len, 0x5a);
        let wire = raw_frame(0x07, &body);
        let mut rx = BytesMut::new();
        rx.extend_from_slice(&wire[..wire.len() - len + 10]);
        assert_eq!(dec.decode(&mut rx), Ok(None));
        assert!(
            rx.capacity() <= limit + 1024,
            "reserved {} bytes for a {len}-byte frame",
            rx.capacity()
        );
    }
}

/// `encode_apart` writes everything but a large trailing payload and returns
/// the payload: together the same bytes as `encode`; small payloads, other
/// kinds and compressing encoders encode whole.
#[test]
fn encode_apart_leaves_out_only_large_payloads() {
    use zs_wire::Text;
    let big = Bytes::from(vec![7u8; 70_000]);
    let frames = [
        Frame::BigStream {
            id: 300,
            cmd: Text::from("sink"),
            offset: 1 << 33,
            total: (1 << 33) + 70_000,
            last: true,
            data: big.clone(),
        },
        Frame::CompleteBuffer {
            cmd: Text::from("blob"),
            data: big.clone(),
        },
        Frame::BigStream {
            id: 1,
            cmd: Text::from("s"),
            offset: 0,
            total: 10,
            last: false,
            data: Bytes::from_static(b"tiny"),
        },
        Frame::Echo {
            id: 2,
            payload: big.clone(),
        },
        // An answer whose DataFrame ends with a large `bytes` value (a file
        // range, say): that value's content leaves apart.
        Frame::StreamResponse {
            id: 1 << 40,
            data: DataFrame::new().with(12u64).with("hash").with(big.clone()),
        },
        // Not apart: the large value is not last, is small, or the DataFrame
        // is decoded wire bytes.
        Frame::StreamResponse {
            id: 3,
            data: DataFrame::new().with(big.clone()).with(12u64),
        },
        Frame::StreamResponse {
            id: 4,
            data: DataFrame::new().with(1u8).with(Bytes::from_static(b"tiny")),
        },
        Frame::StreamResponse {
            id: 5,
            data: DataFrame::decode(
                &DataFrame::new().with(big.clone()).to_bytes(),
                &Limits::default(),
            )
            .unwrap(),
        },
    ];
    for compress in [None, Some(64)] {
        let c = Config {
            compress_threshold: compress,
            ..Config::default()
        };
        for f in &frames {
            let mut enc = Encoder::new(c);
            let mut whole = BytesMut::new();
            enc.encode(f, &mut whole).unwrap();
            let mut head = BytesMut::from(&b"before"[..]);
            let payload = enc.encode_apart(f, 4096, &mut head).unwrap();
            let apart = compress.is_none()
                && (matches!(f, Frame::BigStream { .. } | Frame::CompleteBuffer { .. })
                    && f != &frames[2]
                    || f == &frames[4]);
            assert_eq!(payload.is_some(), apart, "{f:?}");
            let mut wire = head.to_vec();
            if let Some(p) = payload {
                assert_eq!(p.as_ptr(), big.as_ptr(), "the payload is not copied");
                wire.extend_from_slice(&p);
            }
            assert_eq!(&wire[..6], b"before");
            assert_eq!(&wire[6..], &whole[..]);
        }
    }
}

#[test]
fn a_bad_body_is_recoverable_and_the_decoder_stays_in_step() {
    let c = Config::default();
    let good = |id| Frame::Echo {
        id,
        payload: Bytes::from_static(b"ok"),
    };
    let mut deep = vec![0x09, 0x00]; // Stream id 9, empty name, 33 nested DataFrames
    for _ in 1..33 {
        deep.extend_from_slice(&[0x01, 0x0f]);
    }
    deep.push(0x00);
    let bad: Vec<(Vec<u8>, FrameKind, Option<u64>, WireError)> = vec![
        (
            raw_frame(0x01, &[0x07, 0x01, 0xff]),
            FrameKind::Console,
            Some(7),
            WireError::InvalidUtf8,
        ),
        (
            raw_frame(0x02, &deep),
            FrameKind::Stream,
            Some(9),
            WireError::DepthExceeded { max: 32 },
        ),
        (
            json_response(11, b"[1,"),
            FrameKind::StreamResponse,
            Some(11),
            WireError::Json("EOF while parsing a value at line 1 column 3".into()),
        ),
        (
            // BigStreamAck whose offset varint is non-canonical.
            raw_frame(0x06, &[0x0c, 0x81, 0x00]),
            FrameKind::BigStreamAck,
            Some(12),
            WireError::NonCanonicalVarint,
        ),
        (
            // Signal (no id) with trailing bytes.
            raw_frame(0x18, &[0x01, b's', 0x02, 0x00]),
            FrameKind::Signal,
            None,
            WireError::TrailingBytes(1),
        ),
        (
            // A Stream whose id itself is broken.
            raw_frame(0x02, &[0x80, 0x00, 0x00, 0x00]),
            FrameKind::Stream,
            None,
            WireError::NonCanonicalVarint,
        ),
    ];
    let mut stream = good(1).to_bytes(&c).unwrap().to_vec();
    let mut want: Vec<Result<Frame, DecodeError>> = vec![Ok(good(1))];
    for (i, (bytes, kind, id, error)) in bad.into_iter().enumerate() {
        stream.extend_from_slice(&bytes);
        want.push(Err(DecodeError::BadBody {
            kind,
            id,
            frame_len: bytes.len(),
            error,
        }));
        let next = good(100 + i as u64);
        stream.extend_from_slice(&next.to_bytes(&c).unwrap());
        want.push(Ok(next));
    }
    // A header error at the end is fatal and consumes nothing.
    stream.extend_from_slice(&[0x01, 0x7f, 0x00]);
    let fatal = DecodeError::Fatal(WireError::ReservedFlags(0x7f));

    // All at once.
    let mut dec = Decoder::new(c);
    let mut rx = BytesMut::from(&stream[..]);
    let mut got = Vec::new();
    let end = loop {
        match dec.decode_recoverable(&mut rx) {
            Ok(Some(f)) => got.push(Ok(f)),
            Ok(None) => panic!("the stream ends with a fatal error"),
            Err(e) if e.is_recoverable() => got.push(Err(e)),
            Err(e) => break e,
        }
    };
    assert_eq!(got, want);
    assert_eq!(end, fatal);
    assert_eq!(
        &rx[..],
        &[0x01, 0x7f, 0x00],
        "nothing of the bad header consumed"
    );

    // Byte by byte: the same sequence.
    let mut dec = Decoder::new(c);
    let mut rx = BytesMut::new();
    let mut got = Vec::new();
    let mut end = None;
    'feed: for b in &stream {
        rx.extend_from_slice(&[*b]);
        loop {
            match dec.decode_recoverable(&mut rx) {
                Ok(Some(f)) => got.push(Ok(f)),
                Ok(None) => break,
                Err(e) if e.is_recoverable() => got.push(Err(e)),
                Err(e) => {
                    end = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got, want);
    assert_eq!(end, Some(fatal));

    // `decode` reports the same errors flattened, and can go on after them too.
    let mut dec = Decoder::new(c);
    let mut rx = BytesMut::from(&stream[..]);
    assert_eq!(dec.decode(&mut rx), Ok(Some(good(1))));
    assert_eq!(dec.decode(&mut rx), Err(WireError::InvalidUtf8));
    assert_eq!(dec.decode(&mut rx), Ok(Some(good(100))));

    // A compressed frame that does not decompress: recoverable, id unknown.
    let z = Config::with_compression(0);
    let corrupt = [0x01, 0x81, 0x02, 0x0a, 0xf0];
    let e = dec_one(&corrupt, z).unwrap_err();
    assert!(
        matches!(
            &e,
            DecodeError::BadBody {
                kind: FrameKind::Console,
                id: None,
                frame_len: 5,
                error: WireError::Decompress(_),
            }
        ),
        "{e:?}"
    );
    // Whole-buffer API: a size mismatch is fatal, a bad body is not.
    let bad_utf8 = Bytes::from(raw_frame(0x01, &[0x07, 0x01, 0xff]));
    assert!(Frame::decode_recoverable(&bad_utf8, &c)
        .unwrap_err()
        .is_recoverable());
    assert_eq!(
        Frame::decode_recoverable(&bad_utf8.slice(..5), &c),
        Err(DecodeError::Fatal(WireError::Truncated { field: "body" }))
    );
    // Errors convert for `?` in callers that only know WireError or io::Error.
    let w: WireError = e.clone().into();
    assert!(matches!(w, WireError::Decompress(_)));
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
    // The encoder side is unchanged: a frame it makes decodes under the same config.
    let mut out = BytesMut::new();
    Encoder::new(z).encode(&good(5), &mut out).unwrap();
    assert_eq!(dec_one(&out, z), Ok(Some(good(5))));
}
