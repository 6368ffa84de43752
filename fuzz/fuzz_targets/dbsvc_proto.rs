//! zs-db-service payload decoders: requests, answers, pushes, one-way messages.
//! Whatever decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_db_service::proto::{Answer, Limits, Oneway, Push, Request};

fuzz_target!(|data: &[u8]| {
    let b = bytes::Bytes::copy_from_slice(data);
    let lim = Limits::default();
    if let Ok(r) = Request::decode(&b, &lim) {
        // floats (NaN) and over-long strings aside, the encoding is canonical
        let again = Request::decode(&r.encode(), &lim).expect("re-decodes");
        assert_eq!(format!("{again:?}"), format!("{r:?}"));
    }
    if let Ok(a) = Answer::decode(&b, &lim) {
        assert_eq!(a.encode(), b);
    }
    if let Ok(p) = Push::decode(&b, &lim) {
        assert_eq!(p.encode(), b);
    }
    if let Ok(m) = Oneway::decode(&b, &lim) {
        assert_eq!(m.encode(), b);
    }
});
