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

/// A pre-shared key of the minimum length.
const KEY: [u8; 32] = [0x4b; 32];
/// Another one.
const KEY2: [u8; 32] = [0x4c; 32];

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
            let (mut c, mut s) = if psk {
                (
                    ClientConfig::psk(b"user-1", &KEY).unwrap(),
                    ServerConfig::with_psk(b"user-1", &KEY).unwrap(),
                )
            } else {
                let id = identity();
                (
                    ClientConfig::pinned(id.fingerprint()),
                    ServerConfig::with_identity(id),
                )
            };
            s.policy = only(suite);
            c.suites = vec![suite];
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
    let mut c = ClientConfig::pinned(id.fingerprint());
    c.suites = SuiteId::ALL.to_vec();
    for _ in 0..40 {
        let p = Pair::established(c.clone(), s.clone());
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
        ClientConfig::psk(b"id", &KEY).unwrap(),
        ServerConfig::with_psk(b"id", &KEY2).unwrap(),
    );
    let (c, s) = p.drive();
    assert_eq!(c, Err(Error::PskMismatch));
    assert_eq!(s, Err(Error::PeerAlert(alert::PSK_MISMATCH)));

    // An unknown identity looks like a wrong key to the client; only the
    // server's own error names it.
    let mut p = Pair::new(
        ClientConfig::psk(b"who", &KEY).unwrap(),
        ServerConfig::with_psk(b"id", &KEY).unwrap(),
    );
    let (c, s) = p.drive();
    assert_eq!(s, Err(Error::UnknownPskId("who".into())));
    assert_eq!(c, Err(Error::PskMismatch));

    let mut p = Pair::new(
        ClientConfig::psk(b"id", &KEY).unwrap(),
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
    let mut s = ServerConfig::with_psk(b"i", &KEY).unwrap();
    s.policy = only(suite);
    let mut c = ClientConfig::psk(b"i", &KEY).unwrap();
    c.suites = vec![suite];
    let mut p = Pair::established(c, s);
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

/// An established PSK pair on `suite` alone whose client seals records of
/// at most 1,024 plaintext bytes, the server's handshake events taken.
fn psk_pair_of_1k_records(suite: SuiteId) -> Pair {
    let mut s = ServerConfig::with_psk(b"i", &KEY).unwrap();
    s.policy = only(suite);
    let mut c = ClientConfig::psk(b"i", &KEY).unwrap();
    c.suites = vec![suite];
    c.max_record = 1024;
    let mut p = Pair::established(c, s);
    events(&mut p.s);
    p
}

#[test]
fn sends_between_takes_share_records() {
    for suite in [SuiteId::Aes256Gcm, SuiteId::Mars256CtrHmacSha3] {
        let mut p = psk_pair_of_1k_records(suite);
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
        ClientConfig::psk(b"i", &KEY).unwrap(),
        ServerConfig::with_psk(b"i", &KEY).unwrap(),
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
        ClientConfig::psk(b"i", &KEY).unwrap(),
        ServerConfig::with_psk(b"i", &KEY).unwrap(),
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
        let mut c = ClientConfig::psk(b"i", &KEY).unwrap();
        c.suites = vec![suite];
        c.rekey = policy;
        let mut s = ServerConfig::with_psk(b"i", &KEY).unwrap();
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
        ClientConfig::psk(b"i", &KEY).unwrap(),
        ServerConfig::with_psk(b"i", &KEY).unwrap(),
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
    let mut s = Session::server(
        Arc::new(ServerConfig::with_psk(b"i", &KEY).unwrap()),
        &rng,
        now,
    )
    .unwrap();
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

// ---- audit 2026-12: M1, L2, L4, L5, L7 and the channel binding ----------

/// M1: a pre-shared key shorter than 32 bytes is refused everywhere it can enter.
#[test]
fn psk_shorter_than_minimum_is_refused() {
    use zeroize::Zeroize;
    use zs_crypto::session::{ClientAuth, PskKey, MIN_PSK_LEN};
    assert_eq!(MIN_PSK_LEN, 32);
    for short in [&b""[..], b"k", b"password", &[1; 31]] {
        assert!(matches!(
            ClientConfig::psk(b"id", short),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            ServerConfig::with_psk(b"id", short),
            Err(Error::Config(_))
        ));
        let mut s = ServerConfig::with_identity(identity());
        assert!(s.add_psk(b"id", short).is_err());
        assert!(s.psks.is_empty());
        assert!(PskKey::new(short).is_err());
    }
    ClientConfig::psk(b"id", &[1; 32]).unwrap();
    ServerConfig::with_psk(b"id", &[1; 64]).unwrap();
    // Identities over 64 bytes cannot be sent: refused at configuration.
    assert!(ClientConfig::psk(&[b'a'; 65], &KEY).is_err());
    assert!(ServerConfig::with_psk(&[b'a'; 65], &KEY).is_err());
    // A key emptied after construction is caught when a session starts.
    let rng = SystemRandom::new();
    let mut c = ClientConfig::psk(b"id", &KEY).unwrap();
    if let ClientAuth::Psk { key, .. } = &mut c.auth {
        key.zeroize();
    }
    assert!(matches!(
        Session::client(Arc::new(c), &rng, Instant::now()),
        Err(Error::Config(_))
    ));
    let mut s = ServerConfig::with_psk(b"id", &KEY).unwrap();
    s.psks.values_mut().for_each(|k| k.zeroize());
    assert!(matches!(
        Session::server(Arc::new(s), &rng, Instant::now()),
        Err(Error::Config(_))
    ));
    // A random key meets the minimum.
    let k = PskKey::generate(&rng).unwrap();
    assert_eq!(k.expose_secret().len(), MIN_PSK_LEN);
}

/// Every form in which secret bytes could leak through `Debug`.
fn leaks(debug: &str, secret: &[u8]) -> bool {
    let hex = zs_crypto::hash::to_hex(secret);
    let decimal = format!("{:?}", secret); // "[115, 117, ...]"
    let decimal = &decimal[1..decimal.len() - 1];
    let raw = String::from_utf8_lossy(secret);
    debug.to_lowercase().contains(&hex[..16])
        || debug.contains(&decimal[..20])
        || debug.contains(&raw[..8])
        || debug.contains(&format!("{:?}", &raw[..8]))
}

/// L2: `Debug` of the configurations and the identity shows no key material.
#[test]
fn debug_redacts_keys_and_seeds() {
    let psk = *b"super-secret-psk-material-012345";
    let seed = *b"ed25519-seed-never-in-the-logs!!";
    let id = Arc::new(ServerIdentity::from_seed(&seed).unwrap());
    let mut s = ServerConfig::with_identity(id.clone());
    s.add_psk(b"alice", &psk).unwrap();
    let c = ClientConfig::psk(b"alice", &psk).unwrap();
    let ds = format!("{s:?} {s:#?}");
    let dc = format!("{c:?} {c:#?}");
    let di = format!("{id:?} {id:#?}");
    // The check itself catches the forms a derived Debug prints.
    assert!(leaks(&format!("{:?}", psk.to_vec()), &psk));
    assert!(leaks(&zs_crypto::hash::to_hex(&psk), &psk));
    for (what, d) in [("server", &ds), ("client", &dc), ("identity", &di)] {
        assert!(!leaks(d, &psk), "{what} config shows the PSK: {d}");
        assert!(!leaks(d, &seed), "{what} shows the identity seed: {d}");
    }
    // Still useful: names, not secrets.
    assert!(
        ds.contains("alice") && ds.contains(&id.fingerprint().to_string()),
        "{ds}"
    );
    assert!(dc.contains("<redacted>") || dc.contains("<hidden>"), "{dc}");
}

/// L4: defaults are the AEADs; legacy suites only when named explicitly.
#[test]
fn default_policy_offers_and_allows_only_aeads() {
    let legacy: Vec<SuiteId> = SuiteId::ALL
        .into_iter()
        .filter(|s| !matches!(s, SuiteId::Aes256Gcm | SuiteId::ChaCha20Poly1305))
        .collect();
    assert_eq!(legacy.len(), 5);
    let id = identity();
    let defaults = [
        SuitePolicy::default().allowed,
        ClientConfig::pinned(id.fingerprint()).suites,
        ClientConfig::psk(b"i", &KEY).unwrap().suites,
        ServerConfig::with_identity(id.clone()).policy.allowed,
        ServerConfig::with_psk(b"i", &KEY).unwrap().policy.allowed,
    ];
    for d in defaults {
        assert_eq!(d, [SuiteId::Aes256Gcm, SuiteId::ChaCha20Poly1305]);
    }
    // A client offering only legacy suites gets nothing from a default server.
    let mut c = ClientConfig::pinned(id.fingerprint());
    c.suites = legacy.clone();
    let mut p = Pair::new(c.clone(), ServerConfig::with_identity(id.clone()));
    let (rc, rs) = p.drive();
    assert_eq!(rs, Err(Error::NoCommonSuite));
    assert_eq!(rc, Err(Error::PeerAlert(alert::NO_COMMON_SUITE)));
    // A default client cannot be talked into a legacy suite either.
    let mut s = ServerConfig::with_identity(id.clone());
    s.policy = only(SuiteId::Mars256CtrHmacSha3);
    let mut p = Pair::new(ClientConfig::pinned(id.fingerprint()), s);
    assert_eq!(p.drive().1, Err(Error::NoCommonSuite));
    // Named explicitly on both sides, each legacy suite works.
    for suite in legacy {
        let mut s = ServerConfig::with_identity(id.clone());
        s.policy = only(suite);
        let mut c = ClientConfig::pinned(id.fingerprint());
        c.suites = vec![suite];
        let p = Pair::established(c, s);
        assert_eq!(p.s.suite(), Some(suite));
    }
}

struct PskAttempt {
    server_hello_len: usize,
    client_err: Result<(), Error>,
    client_out: Vec<u8>,
    server_err: Result<(), Error>,
    server_out: Vec<u8>,
    /// The server's answer to a forged ClientFinished instead of the alert.
    forged_err: Result<(), Error>,
    forged_out: Vec<u8>,
}

fn psk_attempt(client_id: &[u8], client_key: &[u8]) -> PskAttempt {
    let rng = SystemRandom::new();
    let now = Instant::now();
    let scfg = Arc::new(ServerConfig::with_psk(b"alice", &KEY).unwrap());
    let ccfg = Arc::new(ClientConfig::psk(client_id, client_key).unwrap());
    let mut c = Session::client(ccfg.clone(), &rng, now).unwrap();
    let mut s = Session::server(scfg.clone(), &rng, now).unwrap();
    let hello = c.take_output();
    s.handle_input(&hello, now).unwrap();
    let sh = s.take_output();
    let client_err = c.handle_input(&sh, now);
    let client_out = c.take_output();
    let server_err = s.handle_input(&client_out, now);
    let server_out = s.take_output();
    // An active attacker who goes on with a made-up ClientFinished.
    let mut s2 = Session::server(scfg, &rng, now).unwrap();
    let mut c2 = Session::client(ccfg, &rng, now).unwrap();
    s2.handle_input(&c2.take_output(), now).unwrap();
    assert_eq!(s2.take_output().len(), sh.len()); // its ServerHello
    let mut forged = vec![ContentType::Handshake as u8, 33, 0, 0, 0, 0x03];
    forged.extend_from_slice(&[0x77; 32]);
    let forged_err = s2.handle_input(&forged, now);
    PskAttempt {
        server_hello_len: sh.len(),
        client_err,
        client_out,
        server_err,
        server_out,
        forged_err,
        forged_out: s2.take_output(),
    }
}

/// L5: an unknown identity and a wrong key look the same on the wire; only
/// the server's local error tells them apart.
#[test]
fn unknown_psk_identity_is_indistinguishable_from_a_wrong_key() {
    let unknown = psk_attempt(b"mallory", &KEY);
    let wrong = psk_attempt(b"alice", &KEY2);
    let alert_record = [ContentType::Alert as u8, 1, 0, 0, 0, alert::PSK_MISMATCH];
    for a in [&unknown, &wrong] {
        assert_eq!(a.client_err, Err(Error::PskMismatch));
        assert_eq!(a.client_out, alert_record);
        assert!(a.server_out.is_empty());
        assert_eq!(a.forged_out, alert_record);
    }
    assert_eq!(unknown.server_hello_len, wrong.server_hello_len);
    // Server side, for the logs.
    assert_eq!(
        unknown.server_err,
        Err(Error::UnknownPskId("mallory".into()))
    );
    assert_eq!(
        unknown.forged_err,
        Err(Error::UnknownPskId("mallory".into()))
    );
    assert_eq!(wrong.server_err, Err(Error::PeerAlert(alert::PSK_MISMATCH)));
    assert_eq!(wrong.forged_err, Err(Error::PskMismatch));
    // The right identity and key: the identity reaches the application.
    let mut p = Pair::established(
        ClientConfig::psk(b"alice", &KEY).unwrap(),
        ServerConfig::with_psk(b"alice", &KEY).unwrap(),
    );
    assert!(matches!(
        &events(&mut p.s)[0],
        Event::HandshakeComplete { psk_identity: Some(id), .. } if id == b"alice"
    ));
}

/// The exporter: equal on both ends, unique per session, stable across key
/// updates, `None` before the handshake completes.
#[test]
fn channel_binding_is_shared_unique_and_only_after_the_handshake() {
    let rng = SystemRandom::new();
    let now = Instant::now();
    let id = identity();
    let ccfg = Arc::new(ClientConfig::pinned(id.fingerprint()));
    let scfg = Arc::new(ServerConfig::with_identity(id));
    let mut c = Session::client(ccfg.clone(), &rng, now).unwrap();
    let mut s = Session::server(scfg.clone(), &rng, now).unwrap();
    assert_eq!((c.channel_binding(), s.channel_binding()), (None, None));
    s.handle_input(&c.take_output(), now).unwrap();
    // The server has its keys but has not verified ClientFinished yet.
    assert_eq!(s.channel_binding(), None);
    c.handle_input(&s.take_output(), now).unwrap();
    let cb = c.channel_binding().expect("client established");
    assert_eq!(s.channel_binding(), None);
    s.handle_input(&c.take_output(), now).unwrap();
    assert_eq!(s.channel_binding(), Some(cb));
    assert_ne!(cb, [0; 32]);
    // Key updates do not change it.
    c.rekey(now).unwrap();
    s.handle_input(&c.take_output(), now).unwrap();
    c.handle_input(&s.take_output(), now).unwrap();
    assert_eq!(c.generations(), Some((1, 1)));
    assert_eq!(
        (c.channel_binding(), s.channel_binding()),
        (Some(cb), Some(cb))
    );
    // Another session between the same configurations: another value.
    let mut p = Pair::new((*ccfg).clone(), (*scfg).clone());
    p.ok();
    let cb2 = p.c.channel_binding().unwrap();
    assert_eq!(p.s.channel_binding(), Some(cb2));
    assert_ne!(cb, cb2);
    // A failed session has none.
    let mut bad = Pair::new(ClientConfig::pinned(Fingerprint([1; 32])), (*scfg).clone());
    let _ = bad.drive();
    assert_eq!(
        (bad.c.channel_binding(), bad.s.channel_binding()),
        (None, None)
    );
}

mod tls {
    use super::*;
    use zs_crypto::tls::{client_config, server_config, TlsSession};
    use zs_crypto::SecureSession;

    fn cert() -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        (ck.cert.der().clone(), key)
    }

    /// A client offering only `suite`.
    fn client_with(
        root: &rustls::pki_types::CertificateDer<'static>,
        suite: rustls::SupportedCipherSuite,
    ) -> TlsSession {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![suite];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsSession::client(Arc::new(cfg), "localhost").unwrap()
    }

    /// Shuttles bytes until quiet; returns what each side received and its events.
    fn pump(c: &mut TlsSession, s: &mut TlsSession) -> (Vec<Event>, Vec<Event>) {
        let now = Instant::now();
        let (mut ce, mut se) = (Vec::new(), Vec::new());
        for _ in 0..1000 {
            let mut a = Vec::new();
            c.write_output(&mut a);
            let mut b = Vec::new();
            s.write_output(&mut b);
            if a.is_empty() && b.is_empty() {
                break;
            }
            s.handle_input(&a, now).unwrap();
            c.handle_input(&b, now).unwrap();
            se.extend(std::iter::from_fn(|| s.poll_event()));
            ce.extend(std::iter::from_fn(|| c.poll_event()));
        }
        (ce, se)
    }

    fn bytes(ev: &[Event]) -> Vec<u8> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Data(d) => Some(d.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn suite_of(ev: &[Event]) -> Option<SuiteId> {
        ev.iter().find_map(|e| match e {
            Event::HandshakeComplete { suite, .. } => Some(*suite),
            _ => None,
        })
    }

    /// L7: one send of 1 MiB (before and after the handshake) succeeds and
    /// arrives intact.
    #[test]
    fn one_mib_in_one_send_round_trips() {
        let (cert, key) = cert();
        let mut s = TlsSession::server(server_config(vec![cert.clone()], key).unwrap()).unwrap();
        let mut c = TlsSession::client(client_config(&[cert]).unwrap(), "localhost").unwrap();
        let now = Instant::now();
        let early: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        c.send(&early, now).unwrap();
        let (_, se) = pump(&mut c, &mut s);
        assert_eq!(bytes(&se), early);
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
        s.send(&big, now).unwrap();
        c.send(&big, now).unwrap();
        let (ce, se) = pump(&mut c, &mut s);
        assert_eq!(bytes(&ce), big);
        assert_eq!(bytes(&se), big);
    }

    /// Data sent before the handshake is bounded like our own sessions'.
    #[test]
    fn early_data_is_bounded() {
        let (cert, _) = cert();
        let mut c = TlsSession::client(client_config(&[cert]).unwrap(), "localhost").unwrap();
        let now = Instant::now();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..16 {
            c.send(&chunk, now).unwrap();
        }
        assert!(matches!(c.send(b"x", now), Err(Error::Config(_))));
    }

    /// L7: the negotiated suite is reported, not assumed.
    #[test]
    fn negotiated_suite_is_reported() {
        use rustls::crypto::ring::cipher_suite as cs;
        for (suite, want, name) in [
            (
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                SuiteId::Tls13ChaCha20Poly1305Sha256,
                "TLS13_CHACHA20_POLY1305_SHA256",
            ),
            (
                cs::TLS13_AES_128_GCM_SHA256,
                SuiteId::Tls13Aes128GcmSha256,
                "TLS13_AES_128_GCM_SHA256",
            ),
            (
                cs::TLS13_AES_256_GCM_SHA384,
                SuiteId::Tls13Aes256GcmSha384,
                "TLS13_AES_256_GCM_SHA384",
            ),
        ] {
            let (cert, key) = cert();
            let mut s =
                TlsSession::server(server_config(vec![cert.clone()], key).unwrap()).unwrap();
            let mut c = client_with(&cert, suite);
            let (ce, se) = pump(&mut c, &mut s);
            assert_eq!(suite_of(&ce), Some(want));
            assert_eq!(suite_of(&se), Some(want));
            assert_eq!(want.name(), name);
            assert_eq!((c.suite(), s.suite()), (Some(want), Some(want)));
        }
    }

    /// L7: errors make the session unusable.
    #[test]
    fn errors_fail_the_session() {
        let (cert, key) = cert();
        let now = Instant::now();
        let mut s = TlsSession::server(server_config(vec![cert.clone()], key).unwrap()).unwrap();
        assert!(matches!(
            s.handle_input(&[0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5], now),
            Err(Error::Tls(_))
        ));
        assert_eq!(s.send(b"x", now), Err(Error::Failed));
        assert_eq!(s.handle_input(b"", now), Err(Error::Failed));
        // The stream ending without close_notify: truncation, then unusable.
        let mut c = TlsSession::client(client_config(&[cert]).unwrap(), "localhost").unwrap();
        assert_eq!(c.handle_eof(), Err(Error::Truncated));
        assert_eq!(c.send(b"x", now), Err(Error::Failed));
        assert_eq!(c.close(), Err(Error::Failed));
    }
}

/// `set_record_wire_size` makes each Data record sent at most that long on
/// the wire (header, plaintext, tag), whatever the suite's tag; a size above
/// `max_record`'s records is capped by `max_record`; the receiver opens them
/// as any others.
#[test]
fn records_fit_the_wire_size_asked_for() {
    for suite in [SuiteId::Aes256Gcm, SuiteId::Mars256CtrHmacSha3] {
        for (wire, plain) in [(512, 512 - HEADER_LEN - suite.tag_len()), (4096, 1024)] {
            let mut p = psk_pair_of_1k_records(suite);
            p.c.set_record_wire_size(wire);
            let want: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
            p.c.send(&want[..1000], p.now).unwrap();
            p.c.send(&want[1000..], p.now).unwrap();
            let out = p.c.take_output();
            let lens: Vec<usize> = records(&out).iter().map(|r| r.len()).collect();
            let full = HEADER_LEN + plain + suite.tag_len();
            assert!(
                lens[..lens.len() - 1].iter().all(|&l| l == full),
                "{suite} {wire}: {lens:?}"
            );
            assert_eq!(lens.iter().sum::<usize>(), out.len());
            assert_eq!(lens.len(), 3000usize.div_ceil(plain), "{suite} {wire}");
            let mut got = Vec::new();
            let mut all = out.to_vec();
            p.s.handle_input_in_place(&mut all, p.now, &mut |d| got.extend_from_slice(d))
                .unwrap();
            assert_eq!(got, want, "{suite} {wire}");
        }
    }
}
