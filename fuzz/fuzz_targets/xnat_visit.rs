//! The visitor sub-protocol decoder (zs-xnat `visit`, PROTOCOL Part 14) fed arbitrary
//! bodies: no panic, and every message decoded re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_xnat::visit::VisitMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = VisitMsg::decode(data) {
        let bytes = m.encode();
        assert_eq!(bytes, data, "canonical encoding");
        assert_eq!(VisitMsg::decode(&bytes).expect("re-decodes"), m);
    }
});
