//! Record opener with arbitrary bytes: (a) raw `RecordOpener`s of real suites,
//! (b) a session established over the NullCipher suite, so arbitrary input
//! reaches post-handshake states (data, key updates, close, errors).
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use zs_crypto::record::RecordOpener;
use zs_crypto::session::{ClientConfig, Selection, ServerConfig, Session, SuitePolicy};
use zs_crypto::SuiteId;

fn null_pair(now: Instant) -> (Session, Session) {
    let rng = ring::rand::SystemRandom::new();
    let mut c = ClientConfig::psk(b"fuzz", b"key");
    c.suites = vec![SuiteId::Null];
    c.max_record = 4096;
    let mut s = ServerConfig::with_psk(b"fuzz", b"key");
    s.policy = SuitePolicy {
        allowed: vec![SuiteId::Null],
        selection: Selection::ServerPreference,
    };
    s.max_record = 4096;
    let mut c = Session::client(Arc::new(c), &rng, now).expect("client");
    let mut s = Session::server(Arc::new(s), &rng, now).expect("server");
    for _ in 0..3 {
        s.handle_input(&c.take_output(), now).expect("handshake");
        c.handle_input(&s.take_output(), now).expect("handshake");
    }
    assert!(c.is_established() && s.is_established());
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
                let out = s.take_output();
                c.handle_input(&out, t)
                    .expect("server output is valid for the client");
            }
            let _ = s.handle_eof();
        }
    }
});
