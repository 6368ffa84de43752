//! A zs-core server `Session` fed arbitrary plaintext (what the security
//! layer under it hands on), cut in arbitrary pieces with the zs-io
//! convention (a partial frame stays in the caller's buffer and the next
//! bytes are appended to it): (a) from the first byte on, (b) after a valid
//! `__@stable` request, so StableIO records, acks, resends and resume requests
//! are reached too, (c) as (b) with the client's orderly end `__@close` sent
//! at an arbitrary point: once the session reported `Closed`, the end of its
//! link ends it (it is not kept offline). Every frame kind, Control command,
//! BigStream and batch is reachable. No panic; memory stays bounded (resend
//! buffer, staged batches and transfers are capped by the config), and the
//! server's output is whole, valid frames.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use zs_core::{Event, Reply, Request, Session, SessionConfig};
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

/// What the security layer reports for the link.
fn link() -> zs_io::SecurityInfo {
    zs_io::SecurityInfo::new("fuzz", "AES-256-GCM", Some(b"id".to_vec()), None)
        .with_channel_binding(Some([5; 32]))
}

/// The server's output must be whole, valid frames for a real client.
fn check_output(s: &mut Session, codec: &mut FrameCodec) {
    let mut b = BytesMut::new();
    s.write_output(&mut b);
    while !b.is_empty() {
        match codec.decode(&mut b) {
            Ok(Some(_)) => {}
            other => panic!("server output is not whole valid frames: {other:?}"),
        }
    }
}

/// Handles the server's events like a runtime; true once it reported `Closed`.
fn serve_events(s: &mut Session, now: Instant) -> bool {
    let mut closed = false;
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
            Event::Closed => closed = true,
            _ => {}
        }
    }
    closed
}

fn encode(f: &Frame) -> BytesMut {
    let mut b = BytesMut::new();
    FrameCodec::new(config().wire)
        .encode(f, &mut b)
        .expect("encode");
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut s = Session::new(config());
    s.serve_stable(Some((7, [3; 32])));
    s.open_link(&link(), now).expect("link");
    let mut out_codec = FrameCodec::new(config().wire);
    let mut input = BytesMut::new();
    let mut t = now;
    let mode = mode % 3;
    if mode != 0 {
        let hello = Frame::Control {
            id: 0,
            cmd: Text::from("__@stable"),
            data: DataFrame::new(),
        };
        input.extend_from_slice(&encode(&hello));
        s.handle_input(&mut input, now).expect("stable request");
        assert!(input.is_empty());
        assert!(s.is_stable());
        serve_events(&mut s, now);
        check_output(&mut s, &mut out_codec);
    }
    // Mode 2: the orderly end goes after the piece the first byte picks.
    let mut close_after = if mode == 2 {
        rest.first().map(|b| *b as usize % 8)
    } else {
        None
    };
    let mut closed = false;
    let mut rest = rest;
    while !rest.is_empty() {
        let n = (rest[0] as usize * 7 % 512 + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        t += Duration::from_millis(7);
        input.extend_from_slice(piece);
        if close_after == Some(0) {
            let bye = Frame::Control {
                id: 0,
                cmd: Text::from("__@close"),
                data: DataFrame::new(),
            };
            input.extend_from_slice(&encode(&bye));
        }
        close_after = close_after.and_then(|n| n.checked_sub(1));
        if s.handle_input(&mut input, t).is_err() {
            return;
        }
        // Only a partial frame may stay with the caller.
        assert!(input.len() < 256 * 1024 + 16 || s.input_blocked());
        let _ = s.handle_timeout(t);
        closed |= serve_events(&mut s, t);
        check_output(&mut s, &mut out_codec);
        while s.input_blocked() {
            if s.resume_input(t).is_err() {
                return;
            }
            closed |= serve_events(&mut s, t);
            check_output(&mut s, &mut out_codec);
        }
        assert!(s.stable_unacked_bytes() <= UNACKED + 300 * 1024);
        assert!(s.pending_calls() == 0, "the server never called");
    }
    if closed {
        assert!(
            !s.link_lost("EOF after __@close"),
            "ended, not kept offline"
        );
    }
});
