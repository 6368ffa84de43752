//! The port-mapping decoders (PCP MAP, NAT-PMP; PROTOCOL Part 15) fed arbitrary
//! datagrams, as a hostile or broken router would send them: no panic, and every
//! NAT-PMP message decoded re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_punch::portmap::{natpmp, pcp};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = natpmp::Response::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(r) = natpmp::Request::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Ok(r) = pcp::MapRequest::decode(data) {
        assert_eq!(pcp::MapRequest::decode(&r.encode()), Ok(r));
    }
    if let Ok(r) = pcp::MapResponse::decode(data) {
        if data.len() == pcp::MAP_LEN && data[0] == pcp::VERSION {
            assert_eq!(pcp::MapResponse::decode(&r.encode()), Ok(r));
        }
    }
});
