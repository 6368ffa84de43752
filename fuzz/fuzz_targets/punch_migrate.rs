//! The migrate layer (zs-punch `migrate`, the frames every visitor connection's
//! paths carry) fed arbitrary frames from a hostile peer: the decoder never panics,
//! a decoded frame re-encodes to the same bytes, and the stream state machine either
//! accepts a frame or returns an error; its buffers stay within their bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_punch::migrate::{Frame, Stream};

fuzz_target!(|data: &[u8]| {
    let mut s = Stream::new(4096, 4096);
    assert_eq!(s.write(&[7u8; 3000]), 3000);
    // Length-prefixed frames (u8 length, so that short inputs hold several).
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (f, tail) = tail.split_at(n);
        rest = tail;
        if let Ok(frame) = Frame::decode(f) {
            assert_eq!(frame.encode(), f);
            if s.on_frame(frame).is_err() {
                break;
            }
        }
        while s.poll_transmit().is_some() {}
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        assert!(s.buffered() <= 4096 && s.unacked() <= 4096);
    }
});
