//! The STUN codec fed arbitrary datagrams: no panic; every message it accepts
//! re-encodes to bytes that decode to the same message (strings longer than the
//! RFC's 763-byte limit are cut on encode, so those only have to re-decode).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_punch::stun::{Attr, Message, MAX_MESSAGE};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::decode(data) else { return };
    assert!(data.len() <= MAX_MESSAGE);
    let bytes = m.encode();
    let again = Message::decode(&bytes).expect("re-decodes");
    let long = m.attrs.iter().any(|a| match a {
        Attr::Software(s) => s.len() > 763,
        Attr::ErrorCode { reason, .. } => reason.len() > 763,
        _ => false,
    });
    if !long {
        assert_eq!(again, m);
    }
    let _ = (m.mapped(), m.other(), m.origin(), m.change_request());
});
