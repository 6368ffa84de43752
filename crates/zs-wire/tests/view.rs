//! `Decoder::decode_ref` (frames read in place) against the owned decoder: same
//! frames, same fields, same lengths, same errors; `decode_each` over batches;
//! the text-kind encode fast path against PROTOCOL.md bytes.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use zs_wire::{Config, DecodeError, Decoder, Frame, FrameKind, FrameRef, Text, WireError};

/// The fields a view exposes, read from an owned frame.
fn fields(f: &Frame) -> (Option<u64>, Option<String>, Option<String>, Option<u32>) {
    let s = |t: &Text| Some(t.as_str().to_owned());
    match f {
        Frame::Console { id, cmd, text } => (Some(*id), s(cmd), s(text), None),
        Frame::DirectConsole { cmd, text } => (None, s(cmd), s(text), None),
        Frame::ConsoleResponse { id, text } => (Some(*id), None, s(text), None),
        Frame::Error { id, code, message } => (Some(*id), None, s(message), Some(*code)),
        other => {
            let id = match other {
                Frame::Stream { id, .. }
                | Frame::BigStream { id, .. }
                | Frame::BigStreamAck { id, .. }
                | Frame::BatchStream { id, .. }
                | Frame::Control { id, .. }
                | Frame::StreamResponse { id, .. }
                | Frame::Echo { id, .. }
                | Frame::EchoReply { id, .. } => Some(*id),
                _ => None,
            };
            (id, other.name().and_then(s), None, None)
        }
    }
}

fn view_fields(v: &FrameRef<'_>) -> (Option<u64>, Option<String>, Option<String>, Option<u32>) {
    (
        v.id(),
        v.name().map(str::to_owned),
        v.text().map(str::to_owned),
        v.code(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every frame kind under every configuration: the view sees what the owned
    /// decoder sees (compressed frames: kind and length only), and `to_frame`
    /// gives the owned frame back.
    #[test]
    fn view_agrees_with_owned_decode(f in frame(), c in config()) {
        let wire = enc(&f, &c);
        let dec = Decoder::new(c);
        let v = dec.decode_ref(&wire).unwrap().expect("a whole frame");
        prop_assert_eq!(v.len(), wire.len());
        prop_assert_eq!(v.as_bytes(), &wire[..]);
        prop_assert_eq!(v.kind(), f.kind());
        let owned = Frame::decode(&wire, &c).unwrap();
        if !v.is_compressed() {
            prop_assert_eq!(view_fields(&v), fields(&owned));
        }
        prop_assert!(same(&v.to_frame(&c).unwrap(), &owned, &c));
        // Incomplete at every shorter length.
        for cut in [0, 1, wire.len() / 2, wire.len() - 1] {
            prop_assert_eq!(dec.decode_ref(&wire[..cut]).unwrap(), None);
        }
    }

    /// Arbitrary bytes: the view and the owned decoder agree on incomplete,
    /// fatal errors (same error) and frame lengths; a view error is the owned
    /// decoder's error (the view checks a prefix of the same fields, in order).
    #[test]
    fn view_agrees_on_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..64), c in config()) {
        let dec = Decoder::new(c);
        let mut owned = Decoder::new(c);
        let mut buf = BytesMut::from(&input[..]);
        let v = dec.decode_ref(&input);
        let o = owned.decode_recoverable(&mut buf);
        match (&v, &o) {
            (Ok(None), Ok(None)) => {}
            (Ok(Some(v)), Ok(Some(f))) => {
                prop_assert_eq!(v.len(), input.len() - buf.len());
                if !v.is_compressed() {
                    prop_assert_eq!(view_fields(v), fields(f));
                }
            }
            // The owned decoder also checks the payload the view leaves unparsed.
            (Ok(Some(v)), Err(DecodeError::BadBody { frame_len, .. })) => {
                prop_assert_eq!(v.len(), *frame_len);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "view {:?} vs owned {:?}", v, o),
        }
    }
}

#[test]
fn decode_each_reads_a_batch_in_place() {
    let c = Config::default();
    let mut rx = BytesMut::new();
    for id in 0..100u64 {
        let f = Frame::Console {
            id,
            cmd: Text::from("echo"),
            text: Text::from("x".repeat(id as usize).as_str()),
        };
        rx.extend_from_slice(&f.to_bytes(&c).unwrap());
    }
    let tail = Frame::Keepalive.to_bytes(&c).unwrap();
    rx.extend_from_slice(&tail[..1]); // an incomplete frame stays
    let dec = Decoder::new(c);
    let mut seen = Vec::new();
    let n = dec
        .decode_each(&mut rx, |f| {
            seen.push((
                f.id().unwrap(),
                f.name().unwrap().len(),
                f.text().unwrap().len(),
            ))
        })
        .unwrap();
    assert_eq!(n, 100);
    assert_eq!(
        seen,
        (0..100u64).map(|i| (i, 4, i as usize)).collect::<Vec<_>>()
    );
    assert_eq!(&rx[..], &tail[..1]);
}

#[test]
fn decode_each_consumes_a_bad_frame_and_stops() {
    let c = Config::default();
    let good = Frame::Console {
        id: 1,
        cmd: Text::from("a"),
        text: Text::from("b"),
    }
    .to_bytes(&c)
    .unwrap();
    // Console id 7, name of one byte that is not UTF-8.
    let bad = [0x01, 0x01, 0x03, 0x07, 0x01, 0xff];
    let mut rx = BytesMut::new();
    rx.extend_from_slice(&good);
    rx.extend_from_slice(&bad);
    rx.extend_from_slice(&good);
    let dec = Decoder::new(c);
    let mut n = 0;
    let e = dec.decode_each(&mut rx, |_| n += 1).unwrap_err();
    assert_eq!(n, 1);
    assert_eq!(
        e,
        DecodeError::BadBody {
            kind: FrameKind::Console,
            id: Some(7),
            frame_len: 6,
            error: WireError::InvalidUtf8,
        }
    );
    assert_eq!(&rx[..], &good[..], "the good frame after it is left");
    assert_eq!(dec.decode_each(&mut rx, |_| n += 1), Ok(1));
    assert!(rx.is_empty());
}

#[test]
fn a_bad_header_is_fatal_and_consumes_nothing() {
    let dec = Decoder::new(Config::default());
    assert_eq!(
        dec.decode_ref(&[0x02, 0x01]),
        Err(DecodeError::Fatal(WireError::UnsupportedVersion(2)))
    );
    let mut rx = BytesMut::from(&[0x01u8, 0x3f, 0x00][..]);
    assert!(matches!(
        dec.decode_each(&mut rx, |_| {}),
        Err(DecodeError::Fatal(WireError::UnknownKind(0x3f)))
    ));
    assert_eq!(rx.len(), 3);
}

/// The direct encode path of the text kinds writes the bytes PROTOCOL.md
/// documents (version, kind, length, id, name length, name, text), with and
/// without a token, at varint boundaries of id and length.
#[test]
fn text_kinds_encode_the_documented_bytes() {
    for token in [None, Some(*b"zsv1")] {
        let c = Config {
            token,
            ..Config::default()
        };
        for id in [0u64, 127, 128, 16_383, 16_384, u64::MAX] {
            for tlen in [0usize, 1, 100, 200] {
                let text = "t".repeat(tlen);
                let mut body = Vec::new();
                put(&mut body, id);
                put(&mut body, 4);
                body.extend_from_slice(b"ping");
                body.extend_from_slice(text.as_bytes());
                let f = Frame::Console {
                    id,
                    cmd: Text::from("ping"),
                    text: Text::from(text.as_str()),
                };
                assert_eq!(f.to_bytes(&c).unwrap(), expect(&c, 0x01, &body));
                let mut body = Vec::new();
                put(&mut body, id);
                body.extend_from_slice(text.as_bytes());
                let f = Frame::ConsoleResponse {
                    id,
                    text: Text::from(text.as_str()),
                };
                assert_eq!(
                    f.to_bytes(&c).unwrap(),
                    expect(&c, FrameKind::ConsoleResponse.code(), &body)
                );
                let mut body = Vec::new();
                put(&mut body, 4);
                body.extend_from_slice(b"ping");
                body.extend_from_slice(text.as_bytes());
                let f = Frame::DirectConsole {
                    cmd: Text::from("ping"),
                    text: Text::from(text.as_str()),
                };
                assert_eq!(
                    f.to_bytes(&c).unwrap(),
                    expect(&c, FrameKind::DirectConsole.code(), &body)
                );
            }
        }
    }
    // Limits are enforced on the direct path too.
    let c = Config::default();
    let long = Frame::Console {
        id: 1,
        cmd: Text::from("n".repeat(c.limits.max_name + 1).as_str()),
        text: Text::new(),
    };
    assert!(matches!(
        long.to_bytes(&c),
        Err(WireError::NameTooLong { .. })
    ));
    let mut small = c;
    small.limits.max_string = 3;
    let big = Frame::ConsoleResponse {
        id: 1,
        text: Text::from("four"),
    };
    assert!(matches!(
        big.to_bytes(&small),
        Err(WireError::ValueTooLarge { .. })
    ));
}

fn put(v: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        v.push(x as u8 | 0x80);
        x >>= 7;
    }
    v.push(x as u8);
}

fn expect(c: &Config, kind: u8, body: &[u8]) -> Bytes {
    let mut w = vec![0x01];
    if let Some(t) = &c.token {
        w.extend_from_slice(t);
    }
    w.push(kind);
    put(&mut w, body.len() as u64);
    w.extend_from_slice(body);
    Bytes::from(w)
}
