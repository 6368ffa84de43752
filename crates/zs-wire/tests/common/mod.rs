//! proptest strategies shared by the integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use proptest::prelude::*;
use zs_wire::{Config, DataFrame, Frame, NumArray, Text, Value, Variant};

pub fn text() -> impl Strategy<Value = Text> {
    prop_oneof![
        Just(Text::new()),
        "[a-z_@]{1,12}".prop_map(Text::from),
        any::<String>().prop_map(Text::from),
    ]
}

pub fn name() -> impl Strategy<Value = Text> {
    prop_oneof![
        "[a-zA-Z_@]{0,20}".prop_map(Text::from),
        "\\PC{0,8}".prop_map(Text::from)
    ]
}

pub fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from)
}

fn array() -> impl Strategy<Value = NumArray> {
    prop_oneof![
        prop::collection::vec(any::<i8>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<i16>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<i32>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<i64>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<u16>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<u32>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<u64>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<f32>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
        prop::collection::vec(any::<f64>(), 0..8).prop_map(|v| NumArray::from_slice(&v)),
    ]
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "\\PC{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{0,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn variant() -> impl Strategy<Value = Variant> {
    prop_oneof![
        Just(Variant::Null),
        any::<bool>().prop_map(Variant::Bool),
        any::<i64>().prop_map(Variant::Int),
        any::<u64>().prop_map(Variant::UInt),
        any::<f64>().prop_map(Variant::Float),
        text().prop_map(Variant::Text),
    ]
}

pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::Str),
        any::<bool>().prop_map(Value::Bool),
        any::<i8>().prop_map(Value::I8),
        any::<i16>().prop_map(Value::I16),
        any::<i32>().prop_map(Value::I32),
        any::<i64>().prop_map(Value::I64),
        any::<u8>().prop_map(Value::U8),
        any::<u16>().prop_map(Value::U16),
        any::<u32>().prop_map(Value::U32),
        any::<u64>().prop_map(Value::U64),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        bytes().prop_map(Value::Bytes),
        array().prop_map(Value::Array),
        json().prop_map(|j| Value::Json(Box::new(j))),
        variant().prop_map(Value::Variant),
    ]
}

pub fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 32, 6, |inner| {
        prop::collection::vec(inner, 0..6)
            .prop_map(|v| Value::Frame(Box::new(v.into_iter().collect())))
    })
}

pub fn dataframe() -> impl Strategy<Value = DataFrame> {
    prop::collection::vec(value(), 0..8).prop_map(|v| v.into_iter().collect())
}

pub fn frame() -> impl Strategy<Value = Frame> {
    let chunk = (
        any::<u64>(),
        name(),
        0u64..1000,
        bytes(),
        any::<bool>(),
        0u64..1000,
    )
        .prop_map(|(id, cmd, offset, data, last, extra)| {
            let end = offset + data.len() as u64;
            let total = if last { end } else { end + extra };
            Frame::BigStream {
                id,
                cmd,
                offset,
                total,
                last,
                data,
            }
        });
    prop_oneof![
        (any::<u64>(), name(), text()).prop_map(|(id, cmd, text)| Frame::Console { id, cmd, text }),
        (any::<u64>(), name(), dataframe()).prop_map(|(id, cmd, data)| Frame::Stream {
            id,
            cmd,
            data
        }),
        (name(), text()).prop_map(|(cmd, text)| Frame::DirectConsole { cmd, text }),
        (name(), dataframe()).prop_map(|(cmd, data)| Frame::DirectStream { cmd, data }),
        chunk,
        (any::<u64>(), any::<u64>()).prop_map(|(id, offset)| Frame::BigStreamAck { id, offset }),
        (name(), bytes()).prop_map(|(cmd, data)| Frame::CompleteBuffer { cmd, data }),
        (any::<u64>(), name(), any::<bool>(), dataframe()).prop_map(|(id, cmd, last, data)| {
            Frame::BatchStream {
                id,
                cmd,
                last,
                data,
            }
        }),
        (any::<u64>(), name(), dataframe()).prop_map(|(id, cmd, data)| Frame::Control {
            id,
            cmd,
            data
        }),
        (any::<u64>(), text()).prop_map(|(id, text)| Frame::ConsoleResponse { id, text }),
        (any::<u64>(), dataframe()).prop_map(|(id, data)| Frame::StreamResponse { id, data }),
        (any::<u64>(), any::<u32>(), text()).prop_map(|(id, code, message)| Frame::Error {
            id,
            code,
            message
        }),
        (name(), any::<u64>()).prop_map(|(name, code)| Frame::Signal { name, code }),
        Just(Frame::Keepalive),
        (any::<u64>(), bytes()).prop_map(|(id, payload)| Frame::Echo { id, payload }),
        (any::<u64>(), bytes()).prop_map(|(id, payload)| Frame::EchoReply { id, payload }),
        (any::<u64>(), bytes()).prop_map(|(seq, payload)| Frame::SeqData { seq, payload }),
        any::<u64>().prop_map(|seq| Frame::SeqAck { seq }),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Frame::SeqResend {
            from: a.min(b),
            to: a.max(b)
        }),
        any::<u64>().prop_map(|acked| Frame::SeqKeepalive { acked }),
        any::<u64>().prop_map(|nonce| Frame::SeqEcho { nonce }),
        any::<u64>().prop_map(|nonce| Frame::SeqEchoReply { nonce }),
    ]
}

/// Configurations both ends of a link can share: compression, when on, is accepted
/// too (and sometimes accepted without being sent).
pub fn config() -> impl Strategy<Value = Config> {
    (any::<bool>(), prop::option::of(0usize..64), any::<bool>()).prop_map(
        |(tok, compress_threshold, accept)| Config {
            token: tok.then_some(*b"\xA5zs\x01"),
            compress_threshold,
            accept_compressed: accept || compress_threshold.is_some(),
            ..Config::default()
        },
    )
}

/// Bytes of a frame under a config; the canonical comparison for frames with NaNs.
pub fn enc(f: &Frame, c: &Config) -> Bytes {
    f.to_bytes(c).expect("encodes")
}

/// Strict equality that treats floats bitwise (NaN == NaN when the bits match).
pub fn same(a: &Frame, b: &Frame, c: &Config) -> bool {
    enc(a, c) == enc(b, c) && a.kind() == b.kind()
}

/// One frame of every kind, with typical content, for exhaustive split tests.
pub fn one_of_each() -> Vec<Frame> {
    let df = DataFrame::new()
        .with("alice")
        .with(42i32)
        .with(2.5f64)
        .with(Bytes::from_static(b"\x00\x01\x02"))
        .with(NumArray::from_slice(&[1u16, 2, 3]))
        .with(DataFrame::new().with(true).with(Variant::Int(-7)))
        .with(serde_json::json!({"k": [1, "two"]}));
    vec![
        Frame::Console {
            id: 1,
            cmd: "echo".into(),
            text: "hello".into(),
        },
        Frame::Stream {
            id: 300,
            cmd: "login".into(),
            data: df.clone(),
        },
        Frame::DirectConsole {
            cmd: "log".into(),
            text: "x".into(),
        },
        Frame::DirectStream {
            cmd: "pos".into(),
            data: df.clone(),
        },
        Frame::BigStream {
            id: 9,
            cmd: "put".into(),
            offset: 1000,
            total: 1004,
            last: true,
            data: Bytes::from_static(b"abcd"),
        },
        Frame::BigStreamAck {
            id: 9,
            offset: 1004,
        },
        Frame::CompleteBuffer {
            cmd: "raw".into(),
            data: Bytes::from_static(&[9; 40]),
        },
        Frame::BatchStream {
            id: 5,
            cmd: "sum".into(),
            last: false,
            data: df.clone(),
        },
        Frame::Control {
            id: 0,
            cmd: "__@Auth".into(),
            data: df.clone(),
        },
        Frame::ConsoleResponse {
            id: 1,
            text: "hello".into(),
        },
        Frame::StreamResponse { id: 300, data: df },
        Frame::Error {
            id: 2,
            code: 404,
            message: "no such command".into(),
        },
        Frame::Signal {
            name: "kick".into(),
            code: 3,
        },
        Frame::Keepalive,
        Frame::Echo {
            id: 77,
            payload: Bytes::from_static(b"ping"),
        },
        Frame::EchoReply {
            id: 77,
            payload: Bytes::from_static(b"ping"),
        },
        Frame::SeqData {
            seq: 1 << 40,
            payload: Bytes::from_static(b"\x01\x19\x00"),
        },
        Frame::SeqAck { seq: 12 },
        Frame::SeqResend { from: 10, to: 12 },
        Frame::SeqKeepalive { acked: 12 },
        Frame::SeqEcho { nonce: u64::MAX },
        Frame::SeqEchoReply { nonce: u64::MAX },
    ]
}
