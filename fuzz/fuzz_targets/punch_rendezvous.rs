//! The rendezvous frame decoder and the probe decoder fed arbitrary bytes: no
//! panic, and every accepted frame re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_punch::punch::decode_probe;
use zs_punch::rendezvous::{Msg, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::decode(data) {
        assert!(data.len() <= MAX_FRAME);
        assert_eq!(m.encode(), data, "{m:?}");
    }
    if data.len() >= 16 {
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&data[..16]);
        let _ = decode_probe(&data[16..], &nonce);
    }
});
