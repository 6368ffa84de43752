//! `Decoder::decode_ref` (frames read in place) over arbitrary bytes, against the
//! owned decoder on the same bytes: both agree on incomplete input, on fatal
//! errors, on frame lengths and on every field the view exposes; a view error
//! is the owned decoder's error. `decode_each` consumes exactly the frames seen.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_wire::bytes::BytesMut;
use zs_wire::{Config, DecodeError, Decoder, Frame, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let config = Config {
        token: (sel & 1 != 0).then_some(*b"\xA5zs\x01"),
        compress_threshold: None,
        limits: Limits {
            max_frame: 1 << 16,
            max_depth: 8,
            max_values: 256,
            max_string: (sel as usize >> 2) * 32,
            max_name: 32,
            max_json: 4096,
        },
        accept_compressed: sel & 2 != 0,
    };
    let view = Decoder::new(config);
    let mut owned = Decoder::new(config);
    let mut buf = BytesMut::from(input);
    let mut at = 0;
    loop {
        let before = buf.len();
        let v = view.decode_ref(&input[at..]);
        let o = owned.decode_recoverable(&mut buf);
        match (v, o) {
            (Ok(None), Ok(None)) => break,
            (Ok(Some(v)), Ok(Some(f))) => {
                assert_eq!(v.len(), before - buf.len());
                assert_eq!(v.kind(), f.kind());
                if !v.is_compressed() {
                    let (id, text) = match &f {
                        Frame::Console { id, text, .. } | Frame::ConsoleResponse { id, text } => {
                            (Some(*id), Some(text.as_str()))
                        }
                        Frame::DirectConsole { text, .. } => (None, Some(text.as_str())),
                        Frame::Error { id, message, .. } => (Some(*id), Some(message.as_str())),
                        _ => (v.id(), None),
                    };
                    assert_eq!(v.id(), id);
                    assert_eq!(v.text(), text);
                    assert_eq!(v.name(), f.name().map(|n| n.as_str()));
                }
                at += v.len();
            }
            (Ok(Some(v)), Err(DecodeError::BadBody { frame_len, .. })) => {
                assert_eq!(v.len(), frame_len);
                at += frame_len;
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, b);
                match a {
                    DecodeError::BadBody { frame_len, .. } => at += frame_len,
                    _ => break, // fatal
                }
            }
            (v, o) => panic!("view {v:?} vs owned {o:?}"),
        }
    }
    // decode_each consumes exactly the frames it reports.
    let mut rx = BytesMut::from(input);
    let mut total = 0;
    loop {
        let start = rx.len();
        let mut seen = 0;
        match view.decode_each(&mut rx, |f| {
            seen += f.len();
        }) {
            Ok(_) => {
                assert_eq!(start - rx.len(), seen);
                total += seen;
                break;
            }
            Err(DecodeError::BadBody { frame_len, .. }) => {
                assert_eq!(start - rx.len(), seen + frame_len);
                total += seen + frame_len;
            }
            Err(_) => {
                // Fatal: nothing of the bad frame consumed.
                assert_eq!(start - rx.len(), seen);
                total += seen;
                break;
            }
        }
    }
    assert!(total <= input.len());
});
