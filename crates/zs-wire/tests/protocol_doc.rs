//! The hex examples in docs/PROTOCOL.md (Part 1) are exactly what the encoder
//! produces, and decode back to the documented values.

use bytes::Bytes;
use zs_wire::{Config, DataFrame, Frame, Limits, NumArray, Variant};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// `(name, bytes)` of every line starting with `marker` (then `` name` ``) followed
/// by a ```hex block in `text`.
fn hex_examples(text: &str, marker: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(marker) else {
            continue;
        };
        let name = rest
            .split('`')
            .next()
            .expect("closing backtick")
            .to_string();
        for l in lines.by_ref() {
            if l.trim() == "```hex" {
                break;
            }
        }
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            bytes.extend(
                l.split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).expect("hex byte")),
            );
        }
        out.push((name, bytes));
    }
    out
}

/// `(name, bytes)` of every `Example \`name\`` followed by a ```hex block in Part 1.
fn examples() -> Vec<(String, Vec<u8>)> {
    let part1 = DOC.split("# Part 2").next().expect("part 1");
    hex_examples(part1, "Example `")
}

enum Expected {
    Frame(Frame, Config),
    DataFrame(DataFrame),
}

fn expected(name: &str) -> Expected {
    let d = Config::default();
    let f = |frame| Expected::Frame(frame, d);
    match name {
        "console-request" => f(Frame::Console {
            id: 1,
            cmd: "echo".into(),
            text: "hello".into(),
        }),
        "console-request-token" => Expected::Frame(
            Frame::Console {
                id: 1,
                cmd: "echo".into(),
                text: "hello".into(),
            },
            Config::with_token([0xa5, 0x7a, 0x73, 0x01]),
        ),
        "console-response" => f(Frame::ConsoleResponse {
            id: 1,
            text: "hello".into(),
        }),
        "stream-request" => f(Frame::Stream {
            id: 300,
            cmd: "login".into(),
            data: DataFrame::new().with("alice").with(42i32).with(true),
        }),
        "error" => f(Frame::Error {
            id: 2,
            code: 404,
            message: "no such command".into(),
        }),
        "big-stream-last-chunk" => f(Frame::BigStream {
            id: 9,
            cmd: "put".into(),
            offset: 1000,
            total: 1004,
            last: true,
            data: Bytes::from_static(b"abcd"),
        }),
        "keepalive" => f(Frame::Keepalive),
        "seq-data" => f(Frame::SeqData {
            seq: 5,
            payload: Bytes::from_static(&[0x01, 0x19, 0x00]),
        }),
        "seq-resend" => f(Frame::SeqResend { from: 10, to: 12 }),
        "compressed" => Expected::Frame(
            Frame::CompleteBuffer {
                cmd: "z".into(),
                data: Bytes::from(vec![b'a'; 32]),
            },
            Config::with_compression(16),
        ),
        "dataframe-every-type" => Expected::DataFrame(
            DataFrame::new()
                .with("hi")
                .with(true)
                .with(-1i8)
                .with(-2i16)
                .with(-3i32)
                .with(-4i64)
                .with(1u8)
                .with(2u16)
                .with(3u32)
                .with(4u64)
                .with(1.5f32)
                .with(-0.5f64)
                .with(Bytes::from_static(&[0xde, 0xad]))
                .with(NumArray::from_slice(&[1u16, 2]))
                .with(DataFrame::new().with(7u8))
                .with(serde_json::json!({"a": 1}))
                .with(Variant::Int(5))
                .with(Variant::Null),
        ),
        other => panic!("PROTOCOL.md has an example {other:?} this test does not know"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn protocol_examples_match_the_encoder_byte_for_byte() {
    let ex = examples();
    assert!(ex.len() >= 11, "found only {} examples", ex.len());
    for (name, doc_bytes) in ex {
        match expected(&name) {
            Expected::Frame(frame, config) => {
                let ours = frame.to_bytes(&config).unwrap();
                assert_eq!(hex(&ours), hex(&doc_bytes), "example {name}");
                let back = Frame::decode(&Bytes::from(doc_bytes), &config).unwrap();
                assert_eq!(back, frame, "example {name} decodes");
            }
            Expected::DataFrame(df) => {
                let ours = df.to_bytes();
                assert_eq!(hex(&ours), hex(&doc_bytes), "example {name}");
                let back = DataFrame::decode(&Bytes::from(doc_bytes), &Limits::default()).unwrap();
                assert_eq!(back, df, "example {name} decodes");
            }
        }
    }
}

#[test]
fn kind_table_matches_the_code() {
    // Every kind code in the code appears in table 1.3 with its name.
    for k in zs_wire::FrameKind::ALL {
        let row = format!("| `{:02x}` | {:?}", k.code(), k);
        assert!(DOC.contains(&row), "PROTOCOL.md lacks the row {row:?}");
    }
}

/// `(name, bytes)` of every "Address example `name`" hex block of 1.10.
fn address_examples() -> Vec<(String, Vec<u8>)> {
    let sec = DOC
        .split("## 1.10 Socket addresses")
        .nth(1)
        .expect("1.10 in docs/PROTOCOL.md");
    let sec = sec.split("\n# Part 2").next().unwrap_or(sec);
    hex_examples(sec, "Address example `")
}

#[test]
fn socket_address_examples_are_what_the_codec_writes() {
    let ex = address_examples();
    let names: Vec<&str> = ex.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["v4", "v6"]);
    for (name, bytes) in ex {
        let addr: std::net::SocketAddr = match name.as_str() {
            "v4" => "198.19.1.1:40000".parse().unwrap(),
            "v6" => "[fd00::1]:443".parse().unwrap(),
            other => panic!("unexpected address example {other}"),
        };
        let mut o = Vec::new();
        zs_wire::addr::put(&mut o, &addr);
        assert_eq!(o, bytes, "{name}");
        assert_eq!(zs_wire::addr::len(&addr), bytes.len(), "{name}");
        assert_eq!(
            zs_wire::addr::decode(&bytes),
            Ok((addr, bytes.len())),
            "{name}"
        );
        // Every strict prefix is an error, never a shorter address.
        for cut in 0..bytes.len() {
            assert!(
                zs_wire::addr::decode(&bytes[..cut]).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
}
