//! Record opener with arbitrary bytes: (a) raw `RecordOpener`s of real suites,
//! (b) a session established over the NullCipher suite, so arbitrary input
//! reaches post-handshake states (data, key updates, close, errors).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use zs_crypto::record::RecordOpener;
use zs_crypto::{SecureSession, SecurityProvider, SuiteId, ZsSecurity};

fn null_pair(now: Instant) -> (Box<dyn SecureSession>, Box<dyn SecureSession>) {
    let p = ZsSecurity::null_cipher(b"key");
    let mut c = p.new_client(now).expect("client");
    let mut s = p.new_server(now).expect("server");
    for _ in 0..3 {
        let mut b = Vec::new();
        c.write_output(&mut b);
        s.handle_input(&b, now).expect("handshake");
        let mut b = Vec::new();
        s.write_output(&mut b);
        c.handle_input(&b, now).expect("handshake");
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (c, s)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    match mode % 3 {
        0 => {
            let suite = SuiteId::ALL[(mode as usize / 3) % SuiteId::ALL.len()];
            let mut o = RecordOpener::new(suite, [1; 32]).expect("keys");
            let mut buf = rest.to_vec();
            let _ = o.open_in_place(&mut buf);
        }
        _ => {
            let (mut c, mut s) = null_pair(now);
            // Input in pieces (chunk sizes from the data) to exercise partial records.
            let mut rest = rest;
            let mut t = now;
            while !rest.is_empty() {
                let n = (rest[0] as usize % 64 + 1).min(rest.len());
                let (piece, tail) = rest.split_at(n);
                rest = tail;
                t += Duration::from_secs(60);
                if s.handle_input(piece, t).is_err() {
                    break;
                }
                let _ = s.handle_timeout(t);
                while s.poll_event().is_some() {}
                // Whatever the server answers must be acceptable to the real client.
                let mut out = Vec::new();
                s.write_output(&mut out);
                c.handle_input(&out, t)
                    .expect("server output is valid for the client");
            }
            let _ = s.handle_eof();
        }
    }
});
