//! zs-p2pvm: (a) operation scripts on an in-memory pair (the invariants of
//! `zs_p2pvm::testkit::ops`: in-order exactly-once delivery, no errors between
//! correct peers, budget bound, empty tables at the end), and (b) raw bytes fed to a
//! fresh mux and to a ready one (after a valid HELLO/LISTEN/WINDOW prefix).
#![no_main]

use std::time::Instant;

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zs_p2pvm::frame::{AuthMode, Frame};
use zs_p2pvm::testkit::ops::{run, script_config, Op};
use zs_p2pvm::{Auth, Mux, MuxConfig, Role, StreamId};

fn poke(m: &mut Mux, budget: usize) {
    assert!(m.session_committed() <= budget);
    assert!(m.buffered_bytes() <= m.session_committed());
    while m.poll_event().is_some() {}
    for id in 0..8 {
        let _ = m.read(StreamId(id), 1000);
        let _ = m.send(StreamId(id), b"fuzz");
    }
    let mut out = Vec::new();
    m.write_output(&mut out);
    // The output drained: input held at the control-queue cap is handled now.
    let _ = m.handle_input(&[], Instant::now());
    // Handling stops at the cap; one more frame's answer (at most a GOAWAY) fits.
    assert!(m.control_len() <= m.config().max_control_bytes + 1024);
}

fn raw(data: &[u8]) {
    let now = Instant::now();
    let cfg = MuxConfig {
        session_budget: 10_000,
        max_control_bytes: 2048,
        ..script_config()
    };
    let token = Auth::token(b"a fuzzing token, 16+ bytes").expect("long enough");
    for (role, auth, bound) in [
        (Role::Acceptor, Auth::None, false),
        (Role::Initiator, Auth::None, false),
        (Role::Acceptor, token.clone(), false),
        (Role::Initiator, token, true),
    ] {
        // A fresh mux: nothing but HELLO/PROOF/GOAWAY is accepted.
        let mut fresh = Mux::new(
            role,
            MuxConfig {
                auth: Some(auth),
                ..cfg.clone()
            },
            now,
        )
        .expect("valid configuration");
        if bound {
            fresh.bind_channel([0xB1; 32]).expect("before any input");
        }
        let _ = fresh.handle_input(data, now);
        poke(&mut fresh, 10_000);
    }
    // A ready mux (valid None-auth prefix), then the bytes, split in two; fed as
    // slices (`handle_input`) and as the link's buffer (`handle_input_buf`,
    // which keeps a partial frame in it): the same outcome and the same bytes.
    for role in [Role::Acceptor, Role::Initiator] {
        let mut m = ready(role, &cfg, now);
        let mut b = ready(role, &cfg, now);
        let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
        let ra = [
            m.handle_input(&data[..cut], now),
            m.handle_input(&data[cut..], now),
        ];
        let mut link = BytesMut::from(&data[..cut]);
        let first = b.handle_input_buf(&mut link, now);
        link.extend_from_slice(&data[cut..]);
        let rb = [first, b.handle_input_buf(&mut link, now)];
        let err = |r: &[Result<(), zs_p2pvm::Error>; 2]| {
            r.iter().find_map(|x| x.as_ref().err()).map(|e| format!("{e:?}"))
        };
        assert_eq!(err(&ra), err(&rb), "handle_input_buf decided otherwise");
        for id in 0..8 {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            while let Ok(Some(c)) = m.read(StreamId(id), usize::MAX) {
                x.extend_from_slice(&c);
            }
            while let Ok(Some(c)) = b.read_buf(StreamId(id), usize::MAX) {
                y.extend_from_slice(&c);
            }
            assert_eq!(x, y, "stream {id} got other bytes");
        }
        poke(&mut m, 10_000);
        m.handle_timeout(now + std::time::Duration::from_secs(1));
        poke(&mut m, 10_000);
        poke(&mut b, 10_000);
    }
}

/// A mux made ready by a valid None-auth prefix, listening on one address.
fn ready(role: Role, cfg: &MuxConfig, now: Instant) -> Mux {
    {
        let mut m = Mux::new(role, cfg.clone(), now).expect("valid configuration");
        m.listen("10.0.0.1:1".parse().unwrap()).unwrap();
        let mut prefix = Vec::new();
        Frame::Hello {
            mode: AuthMode::None,
            max_payload: 4096,
            nonce: [1; 32],
        }
        .encode(&mut prefix);
        Frame::Listen {
            done: true,
            changes: vec![],
        }
        .encode(&mut prefix);
        Frame::Window {
            id: 0,
            increment: 100_000,
        }
        .encode(&mut prefix);
        m.handle_input(&prefix, now).unwrap();
        assert!(m.is_ready());
        m
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let mut u = Unstructured::new(rest);
        if let Ok(ops) = Vec::<Op>::arbitrary(&mut u) {
            if ops.len() <= 200 {
                run(&ops);
            }
        }
    } else {
        raw(rest);
    }
});
