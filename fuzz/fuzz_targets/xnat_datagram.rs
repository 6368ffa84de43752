//! The UDP flow's datagram-frame decoder fed arbitrary bytes in arbitrary
//! pieces: no panic, it never holds more than one maximal frame plus one
//! piece once the whole datagrams are taken out, and every datagram it
//! returns re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_xnat::proto::{encode_datagram, DatagramDecoder, MAX_DATAGRAM};

fuzz_target!(|data: &[u8]| {
    let mut d = DatagramDecoder::new();
    let mut rest = data;
    let mut consumed = Vec::new();
    while !rest.is_empty() {
        let n = (rest[0] as usize * 7 % 1021 + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        d.push(piece);
        loop {
            match d.next_datagram() {
                Ok(Some(g)) => {
                    assert!(g.len() <= MAX_DATAGRAM);
                    encode_datagram(&mut consumed, g);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= MAX_DATAGRAM + 2 + 1021);
    }
    // What came out, re-encoded, is exactly the input's prefix.
    assert_eq!(&data[..consumed.len()], &consumed[..]);
});
