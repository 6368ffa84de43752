//! A zs-core server `Session` fed arbitrary bytes, over the NullCipher suite so
//! the input reaches the frame layer: (a) raw bytes from the first byte on
//! (handshake parser), (b) after a valid handshake, arbitrary plaintext cut in
//! arbitrary pieces (every frame kind, Control commands, BigStream, batches),
//! (c) the same after a valid `__@stable` request, so StableIO records, acks,
//! resends and resume requests are reached too. No panic; memory stays bounded
//! (resend buffer, staged batches and transfers are capped by the config).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use zs_core::{Event, Reply, Request, Session, SessionConfig};
use zs_crypto::{SecureSession, SecurityProvider, ZsSecurity};
use zs_wire::bytes::BytesMut;
use zs_wire::{DataFrame, Frame, FrameCodec, Text};

const UNACKED: usize = 64 * 1024;

fn config() -> SessionConfig {
    let mut cfg = SessionConfig {
        max_complete_buffer: 64 * 1024,
        max_open_batches: 8,
        max_batch_frames: 64,
        big_chunk: 4096,
        big_window: 16 * 1024,
        max_big_streams: 8,
        stable_max_unacked: UNACKED,
        ..SessionConfig::default()
    };
    cfg.wire.limits.max_frame = 256 * 1024;
    cfg
}

fn pump(c: &mut dyn SecureSession, s: &mut Session, now: Instant) -> bool {
    let mut b = Vec::new();
    c.write_output(&mut b);
    if s.handle_input(&b, now).is_err() {
        return false;
    }
    let mut b = Vec::new();
    s.write_output(&mut b);
    // The server's output must stay valid for a real client.
    c.handle_input(&b, now)
        .expect("server output is valid for the client");
    while c.poll_event().is_some() {}
    true
}

fn serve_events(s: &mut Session, now: Instant) {
    while let Some(ev) = s.poll_event() {
        match ev {
            Event::Request(r) => {
                if let Some(id) = r.id() {
                    let reply = match r {
                        Request::Console { text, .. } => Ok(Reply::Text(text)),
                        _ => Ok(Reply::Data(DataFrame::new().with(1u8))),
                    };
                    let _ = s.respond(id, reply, now);
                } else if let Request::BigChunk { id, last: true, .. } = r {
                    let _ = s.respond(id, Ok(Reply::Data(DataFrame::new())), now);
                }
            }
            Event::ResumeRequest { .. } => {
                s.refuse_resume("unknown", now);
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let p = ZsSecurity::null_cipher(b"key");
    let mut s = Session::new(p.new_server(now).expect("server"), config());
    s.serve_stable(Some((7, [3; 32])));
    let mut t = now;
    if mode % 3 == 0 {
        let mut rest = rest;
        while !rest.is_empty() {
            let n = (rest[0] as usize % 97 + 1).min(rest.len());
            let (piece, tail) = rest.split_at(n);
            rest = tail;
            t += Duration::from_millis(30);
            if s.handle_input(piece, t).is_err() {
                return;
            }
            let _ = s.handle_timeout(t);
            serve_events(&mut s, t);
        }
        return;
    }
    let mut c = p.new_client(now).expect("client");
    for _ in 0..3 {
        assert!(pump(c.as_mut(), &mut s, now), "handshake");
    }
    assert!(s.is_established());
    if mode % 3 == 2 {
        let mut b = BytesMut::new();
        let hello = Frame::Control {
            id: 0,
            cmd: Text::from("__@stable"),
            data: DataFrame::new(),
        };
        FrameCodec::new(config().wire)
            .encode(&hello, &mut b)
            .expect("encode");
        c.send(&b, now).expect("send");
        assert!(pump(c.as_mut(), &mut s, now));
        assert!(s.is_stable());
    }
    // Arbitrary plaintext in arbitrary pieces, each sealed into valid records.
    let mut rest = rest;
    while !rest.is_empty() {
        let n = (rest[0] as usize * 7 % 512 + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        t += Duration::from_millis(7);
        if c.send(piece, t).is_err() || !pump(c.as_mut(), &mut s, t) {
            return;
        }
        let _ = s.handle_timeout(t);
        serve_events(&mut s, t);
        assert!(s.stable_unacked_bytes() <= UNACKED + 300 * 1024);
        assert!(s.pending_calls() == 0, "the server never called");
    }
});
