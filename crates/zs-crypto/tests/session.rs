//! Handshake and record tests on in-memory pairs: every suite, both
//! authentication modes, failures named precisely, tampering, replay,
//! reordering, truncation, rekeying under a stream of records, TLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ring::rand::SystemRandom;
use zs_crypto::handshake::alert;
use zs_crypto::record::{ContentType, RecordOpener, RecordSealer, HEADER_LEN};
use zs_crypto::session::{
    ClientConfig, Direction, Event, RekeyPolicy, Selection, ServerConfig, ServerIdentity, Session,
    SuitePolicy,
};
use zs_crypto::{Error, Fingerprint, SuiteId};

fn identity() -> Arc<ServerIdentity> {
    Arc::new(ServerIdentity::from_seed(&[0x33; 32]).unwrap())
}

struct Pair {
    c: Session,
    s: Session,
    now: Instant,
}

impl Pair {
    fn new(c: ClientConfig, s: ServerConfig) -> Pair {
        let rng = SystemRandom::new();
        let now = Instant::now();
        Pair {
            c: Session::client(Arc::new(c), &rng, now).unwrap(),
            s: Session::server(Arc::new(s), &rng, now).unwrap(),
            now,
        }
    }

    /// Shuttles bytes until quiet; returns the first error of (client, server).
    fn drive(&mut self) -> (Result<(), Error>, Result<(), Error>) {
        let (mut rc, mut rs) = (Ok(()), Ok(()));
        for _ in 0..16 {
            let to_s = self.c.take_output();
            let to_c = self.s.take_output();
            if to_s.is_empty() && to_c.is_empty() {
                break;
            }
            if !to_s.is_empty() && rs.is_ok() {
                rs = self.s.handle_input(&to_s, self.now);
            }
            if !to_c.is_empty() && rc.is_ok() {
                rc = self.c.handle_input(&to_c, self.now);
            }
        }
        (rc, rs)
    }

    /// Drives and requires both sides to stay healthy.
    fn ok(&mut self) {
        let (a, b) = self.drive();
        a.unwrap();
        b.unwrap();
    }

    fn established(c: ClientConfig, s: ServerConfig) -> Pair {
        let mut p = Pair::new(c, s);
        let (a, b) = p.drive();
        a.unwrap();
        b.unwrap();
        assert!(p.c.is_established() && p.s.is_established());
        p
    }
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn data(s: &mut Session) -> Vec<u8> {
    events(s)
        .into_iter()
        .filter_map(|e| {
            if let Event::Data(d) = e {
                Some(d)
            } else {
                None
            }
        })
        .flatten()
        .collect()
}

fn only(suite: SuiteId) -> SuitePolicy {
    SuitePolicy {
        allowed: vec![suite],
        selection: Selection::ServerPreference,
    }
}

#[test]
fn every_suite_both_auth_modes_both_directions() {
    for suite in SuiteId::ALL {
        for psk in [false, true] {
            let (c, mut s) = if psk {
                (
                    ClientConfig::psk(b"user-1", b"k3y"),
                    ServerConfig::with_psk(b"user-1", b"k3y"),
                )
            } else {
                let id = identity();
                (
                    ClientConfig::pinned(id.fingerprint()),
                    ServerConfig::with_identity(id),
                )
            };
            s.policy = only(suite);
            let mut p = Pair::established(c, s);
            let ce = events(&mut p.c);
            assert_eq!(
                ce[0],
                Event::HandshakeComplete {
                    suite,
                    psk_identity: None
                }
            );
            let se = events(&mut p.s);
            let want_id = psk.then(|| b"user-1".to_vec());
            assert_eq!(
                se[0],
                Event::HandshakeComplete {
                    suite,
                    psk_identity: want_id
                }
            );
            let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
            p.c.send(b"ping", p.now).unwrap();
            p.s.send(&big, p.now).unwrap();
            p.ok();
            assert_eq!(data(&mut p.s), b"ping", "{suite}");
            assert_eq!(data(&mut p.c), big, "{suite}");
            assert_eq!(p.c.suite(), Some(suite));
        }
    }
}

#[test]
fn random_policy_varies_per_connection_over_the_allowed_set() {
    let id = identity();
    let mut s = ServerConfig::with_identity(id.clone());
    s.policy = SuitePolicy {
        allowed: vec![
            SuiteId::Aes256Gcm,
            SuiteId::Serpent256CtrHmacSha3,
            SuiteId::Mars256CtrHmacSha3,
        ],
        selection: Selection::Random,
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let p = Pair::established(ClientConfig::pinned(id.fingerprint()), s.clone());
        seen.insert(p.s.suite().unwrap());
    }
    // 40 draws over 3 suites: all three appear unless the RNG is broken (p < 1e-6).
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn wrong_fingerprint_is_named() {
    let id = identity();
    let wrong = Fingerprint([0xab; 32]);
    let mut p = Pair::new(
        ClientConfig::pinned(wrong),
        ServerConfig::with_identity(id.clone()),
    );
    let (c, s) = p.drive();
    assert_eq!(
        c,
        Err(Error::WrongServerKey {
            expected: wrong,
            got: id.fingerprint()
        })
    );
    assert_eq!(s, Err(Error::PeerAlert(alert::BAD_SERVER_IDENTITY)));
    let msg = Error::WrongServerKey {
        expected: wrong,
        got: id.fingerprint(),
    }
    .to_string();
    assert!(msg.contains(&wrong.to_string()) && msg.contains(&id.fingerprint().to_string()));
    assert_eq!(p.c.send(b"x", p.now), Err(Error::Failed));
}

#[test]
fn psk_mismatch_unknown_id_and_mode_mismatch() {
    let mut p = Pair::new(
        ClientConfig::psk(b"id", b"one"),
        ServerConfig::with_psk(b"id", b"two"),
    );
    let (c, s) = p.drive();
    assert_eq!(c, Err(Error::PskMismatch));
    assert_eq!(s, Err(Error::PeerAlert(alert::PSK_MISMATCH)));

    let mut p = Pair::new(
        ClientConfig::psk(b"who", b"one"),
        ServerConfig::with_psk(b"id", b"one"),
    );
    let (c, s) = p.drive();
    assert_eq!(s, Err(Error::UnknownPskId("who".into())));
    assert_eq!(c, Err(Error::PeerAlert(alert::UNKNOWN_PSK_ID)));

    let mut p = Pair::new(
        ClientConfig::psk(b"id", b"one"),
        ServerConfig::with_identity(identity()),
    );
    let (c, s) = p.drive();
    assert!(matches!(s, Err(Error::AuthModeMismatch { .. })), "{s:?}");
    assert_eq!(c, Err(Error::PeerAlert(alert::AUTH_MODE)));
}

#[test]
fn no_common_suite() {
    let id = identity();
    let mut c = ClientConfig::pinned(id.fingerprint());
    c.suites = vec![SuiteId::ChaCha20Poly1305];
    let mut s = ServerConfig::with_identity(id);
    s.policy = only(SuiteId::Aes256Gcm);
    let mut p = Pair::new(c, s);
    let (c, s) = p.drive();
    assert_eq!(s, Err(Error::NoCommonSuite));
    assert_eq!(c, Err(Error::PeerAlert(alert::NO_COMMON_SUITE)));
}

/// Splits a byte stream into whole records.
fn records(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while b.len() >= HEADER_LEN {
        let len = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as usize;
        v.push(b[..HEADER_LEN + len].to_vec());
        b = &b[HEADER_LEN + len..];
    }
    v
}

fn two_records(suite: SuiteId) -> (Pair, Vec<Vec<u8>>) {
    let mut s = ServerConfig::with_psk(b"i", b"k");
    s.policy = only(suite);
    let mut p = Pair::established(ClientConfig::psk(b"i", b"k"), s);
    events(&mut p.s);
    // Output taken after each send: one record each (sends between two takes
    // share a record, see `sends_between_takes_share_records`).
    p.c.send(b"one", p.now).unwrap();
    let mut out = p.c.take_output();
    p.c.send(b"two", p.now).unwrap();
    out.extend_from_slice(&p.c.take_output());
    let r = records(&out);
    assert_eq!(r.len(), 2);
    (p, r)
}

#[test]
fn sends_between_takes_share_records() {
    for suite in [SuiteId::Aes256Gcm, SuiteId::Mars256CtrHmacSha3] {
        let mut s = ServerConfig::with_psk(b"i", b"k");
        s.policy = only(suite);
        let mut c = ClientConfig::psk(b"i", b"k");
        c.max_record = 1024;
        let mut p = Pair::established(c, s);
        events(&mut p.s);
        // Many small sends: one record.
        let mut want = Vec::new();
        for i in 0..50u8 {
            let msg = [i; 7];
            p.c.send(&msg, p.now).unwrap();
            want.extend_from_slice(&msg);
        }
        let out = p.c.take_output();
        assert_eq!(records(&out).len(), 1, "{suite}");
        assert_eq!(out.len(), HEADER_LEN + 350 + suite.tag_len());
        // A long send fills records up to max_record (350 + 2000 = 2350 bytes:
        // 1024 + 1024 + 302).
        p.c.send(&[9; 350], p.now).unwrap();
        p.c.send(&[8; 2000], p.now).unwrap();
        want.extend_from_slice(&[9; 350]);
        want.extend_from_slice(&[8; 2000]);
        let out2 = p.c.take_output();
        let lens: Vec<usize> = records(&out2)
            .iter()
            .map(|r| r.len() - HEADER_LEN - suite.tag_len())
            .collect();
        assert_eq!(lens, [1024, 1024, 302], "{suite}");
        // Opened in place from pieces of every size (partial headers and
        // records are kept between calls).
        let mut got = Vec::new();
        let mut all = [out, out2].concat();
        let mut rest = &mut all[..];
        let mut k = 0;
        while !rest.is_empty() {
            k = k % 700 + 1;
            let n = k.min(rest.len());
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(n);
            p.s.handle_input_in_place(piece, p.now, &mut |d| got.extend_from_slice(d))
                .unwrap();
            rest = tail;
        }
        assert_eq!(got, want);
        // A rekey in between seals the open record first: order is kept.
        p.c.send(b"before", p.now).unwrap();
        p.c.rekey(p.now).unwrap();
        p.c.send(b"after", p.now).unwrap();
        let out3 = p.c.take_output();
        assert_eq!(records(&out3).len(), 3);
        p.s.handle_input(&out3, p.now).unwrap();
        assert_eq!(data(&mut p.s), b"beforeafter");
        // Data handed over directly: same bytes, no Data event.
        p.c.send(b"direct", p.now).unwrap();
        let out4 = p.c.take_output();
        let mut got = Vec::new();
        p.s.handle_input_with(&out4, p.now, &mut |d| got.extend_from_slice(d))
            .unwrap();
        assert_eq!(got, b"direct");
        assert!(data(&mut p.s).is_empty());
    }
}

#[test]
fn tamper_replay_reorder_truncate_are_rejected() {
    for suite in SuiteId::ALL {
        // altered byte anywhere in the record
        // (bytes 1..5 are the length: changing it makes the record incomplete
        // or too long, covered by the truncation and size tests)
        for pos in [0usize, 5, 7, 20, usize::MAX] {
            let (mut p, r) = two_records(suite);
            let mut bad = r[0].clone();
            let pos = pos.min(bad.len() - 1);
            bad[pos] ^= 0x40;
            assert!(p.s.handle_input(&bad, p.now).is_err(), "{suite} pos {pos}");
            assert!(data(&mut p.s).is_empty());
        }
        // replay
        let (mut p, r) = two_records(suite);
        p.s.handle_input(&r[0], p.now).unwrap();
        assert_eq!(
            p.s.handle_input(&r[0], p.now),
            Err(Error::BadRecordMac),
            "{suite}"
        );
        // reorder
        let (mut p, r) = two_records(suite);
        assert_eq!(
            p.s.handle_input(&r[1], p.now),
            Err(Error::BadRecordMac),
            "{suite}"
        );
        // truncated record, header fixed up to match
        let (mut p, r) = two_records(suite);
        let mut t = r[0][..r[0].len() - 1].to_vec();
        let n = (t.len() - HEADER_LEN) as u32;
        t[1..5].copy_from_slice(&n.to_le_bytes());
        assert_eq!(
            p.s.handle_input(&t, p.now),
            Err(Error::BadRecordMac),
            "{suite}"
        );
        // dropped record (the second arrives alone) = reorder
        // stream cut short: no close record
        let (mut p, r) = two_records(suite);
        p.s.handle_input(&r[0], p.now).unwrap();
        assert_eq!(p.s.handle_eof(), Err(Error::Truncated));
    }
}

#[test]
fn orderly_close_then_eof_is_clean() {
    let mut p = Pair::established(
        ClientConfig::psk(b"i", b"k"),
        ServerConfig::with_psk(b"i", b"k"),
    );
    p.c.send(b"last words", p.now).unwrap();
    p.c.close().unwrap();
    assert_eq!(p.c.send(b"more", p.now), Err(Error::Closed));
    p.ok();
    let ev = events(&mut p.s);
    assert_eq!(
        ev[ev.len() - 2..],
        [Event::Data(b"last words".to_vec()), Event::Closed]
    );
    p.s.handle_eof().unwrap();
}

#[test]
fn oversized_record_header_is_rejected_before_buffering() {
    let mut p = Pair::established(
        ClientConfig::psk(b"i", b"k"),
        ServerConfig::with_psk(b"i", b"k"),
    );
    let mut h = vec![ContentType::Data as u8];
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        p.s.handle_input(&h, p.now),
        Err(Error::RecordTooLarge { .. })
    ));
}

#[test]
fn rekey_under_a_stream_of_records() {
    for suite in [
        SuiteId::Aes256Gcm,
        SuiteId::ChaCha20Poly1305,
        SuiteId::Mars256CtrHmacSha3,
    ] {
        let policy = RekeyPolicy {
            max_bytes: 1000,
            max_age: Duration::from_secs(3600),
        };
        let mut c = ClientConfig::psk(b"i", b"k");
        c.rekey = policy;
        let mut s = ServerConfig::with_psk(b"i", b"k");
        s.rekey = policy;
        s.policy = only(suite);
        let mut p = Pair::established(c, s);
        events(&mut p.c);
        events(&mut p.s);
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for i in 0..600u32 {
            let msg: Vec<u8> = format!("record {i} ").into_bytes().repeat(5);
            p.c.send(&msg, p.now).unwrap();
            sent.extend_from_slice(&msg);
            if i % 97 == 0 {
                p.s.rekey(p.now).unwrap(); // explicit, asks the client to update too
            }
            if i % 3 == 0 {
                p.ok();
                got.extend(data(&mut p.s));
            }
        }
        p.ok();
        got.extend(data(&mut p.s));
        assert_eq!(
            got, sent,
            "{suite}: every record arrives, in order, across key changes"
        );
        let (cs, cr) = p.c.generations().unwrap();
        let (ss, sr) = p.s.generations().unwrap();
        assert_eq!((cs, cr), (sr, ss), "both sides in step");
        // ~ 600 * 55 bytes / 1000 per generation, plus the explicit requests
        assert!(cs > 30, "client send generation {cs}");
        assert!(ss >= 7, "server send generation {ss}");
    }
}

#[test]
fn time_based_rekey_via_timeout() {
    let mut p = Pair::established(
        ClientConfig::psk(b"i", b"k"),
        ServerConfig::with_psk(b"i", b"k"),
    );
    events(&mut p.c);
    events(&mut p.s);
    let deadline = p.c.poll_timeout().unwrap();
    assert_eq!(deadline, p.now + RekeyPolicy::default().max_age);
    p.c.handle_timeout(deadline - Duration::from_secs(1))
        .unwrap();
    assert!(!p.c.has_output());
    p.c.handle_timeout(deadline).unwrap();
    assert_eq!(
        events(&mut p.c),
        [Event::KeyUpdated {
            direction: Direction::Send,
            generation: 1
        }]
    );
    p.now = deadline;
    p.c.send(b"after", p.now).unwrap();
    p.ok();
    assert_eq!(
        events(&mut p.s),
        [
            Event::KeyUpdated {
                direction: Direction::Receive,
                generation: 1
            },
            Event::Data(b"after".to_vec())
        ]
    );
    assert!(p.c.poll_timeout().unwrap() > deadline);
}

#[test]
fn garbage_before_handshake_fails_cleanly() {
    let rng = SystemRandom::new();
    let now = Instant::now();
    let mut s = Session::server(Arc::new(ServerConfig::with_psk(b"i", b"k")), &rng, now).unwrap();
    assert!(s.handle_input(&[0x17, 1, 0, 0, 0, 0], now).is_err());
    assert_eq!(
        s.take_output(),
        [ContentType::Alert as u8, 1, 0, 0, 0, alert::DECODE]
    );
    assert_eq!(s.handle_input(&[], now), Err(Error::Failed));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn seal_open_round_trip_any_size(len in 0usize..65536, suite_ix in 0usize..7, seed in any::<u8>()) {
        let suite = SuiteId::ALL[suite_ix];
        let secret = [seed; 32];
        let mut s = RecordSealer::new(suite, secret).unwrap();
        let mut o = RecordOpener::new(suite, secret).unwrap();
        let msg: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
        for _ in 0..2 {
            let mut rec = Vec::new();
            s.seal(ContentType::Data, &msg, &mut rec).unwrap();
            prop_assert_eq!(rec.len(), s.wire_len(len));
            let (ty, p) = o.open_in_place(&mut rec).unwrap();
            prop_assert_eq!(ty, ContentType::Data);
            prop_assert_eq!(&p[..], &msg[..]);
        }
    }
}

#[test]
fn tls13_in_memory_with_self_signed_certificate() {
    use zs_crypto::tls::{client_config, server_config, TlsSession};
    use zs_crypto::SecureSession;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut s = TlsSession::server(server_config(vec![cert.clone()], key).unwrap()).unwrap();
    let mut c = TlsSession::client(client_config(&[cert]).unwrap(), "localhost").unwrap();
    let now = Instant::now();
    c.send(b"over tls", now).unwrap();
    let mut got = Vec::new();
    let mut closed = false;
    for round in 0..10 {
        let mut b = Vec::new();
        c.write_output(&mut b);
        s.handle_input(&b, now).unwrap();
        let mut b = Vec::new();
        s.write_output(&mut b);
        c.handle_input(&b, now).unwrap();
        while let Some(e) = s.poll_event() {
            match e {
                Event::Data(d) => got.extend(d),
                Event::Closed => closed = true,
                _ => {}
            }
        }
        if round == 3 {
            c.rekey(now).unwrap();
            c.send(b" and after key update", now).unwrap();
            c.close().unwrap();
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    assert_eq!(got, b"over tls and after key update");
    assert!(closed);
    s.handle_eof().unwrap();

    // A client that trusts another certificate refuses the server.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let mut c2 = TlsSession::client(
        client_config(&[other.cert.der().clone()]).unwrap(),
        "localhost",
    )
    .unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut s2 =
        TlsSession::server(server_config(vec![ck.cert.der().clone()], key).unwrap()).unwrap();
    let mut failed = false;
    for _ in 0..5 {
        let mut b = Vec::new();
        c2.write_output(&mut b);
        if s2.handle_input(&b, now).is_err() {
            break;
        }
        let mut b = Vec::new();
        s2.write_output(&mut b);
        if let Err(e) = c2.handle_input(&b, now) {
            assert!(matches!(e, Error::Tls(_)));
            failed = true;
            break;
        }
    }
    assert!(failed);
}
