//! The XNat control-protocol decoder fed arbitrary bytes in arbitrary pieces:
//! no panic, the buffer never holds more than one maximal frame plus one
//! piece, and every message decoded re-encodes to bytes that decode to the
//! same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_xnat::proto::{Decoder, Msg, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = (rest[0] as usize % 61 + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        d.push(piece);
        assert!(d.buffered() <= MAX_FRAME + 5 + 61);
        loop {
            match d.next_msg() {
                Ok(Some(m)) => {
                    let bytes = m.to_bytes();
                    let again = Msg::decode(bytes[0], &bytes[5..]).expect("re-decodes");
                    assert_eq!(again, m);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
