//! A server-side zs-core `Session` in a StableIO session, driven by an
//! arbitrary script of what a hostile client can send: calls whose answers it
//! never acknowledges, acks (also of the future), keepalives, resend requests
//! (repeated many times in one record, ranges of any size), records out of
//! order, batch stages, and time passing. After every step the memory the
//! session holds and the output one step produced stay within the budgets of
//! its configuration (the security audit's C1, C2 and M9 bounds); a violation
//! of the protocol may end the session, never panic it.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use zs_core::{Budgets, Event, Reply, Request, Session, SessionConfig};
use zs_wire::bytes::BytesMut;
use zs_wire::{DataFrame, Frame, FrameCodec, Text};

const UNACKED: usize = 64 * 1024;
const PENDING: usize = 32 * 1024;
const MAX_FRAME: usize = 256 * 1024;
const BATCH: usize = 128 * 1024;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A numbered Console call `echo` of `size` × 97 bytes.
    Call {
        size: u16,
    },
    /// Many calls in one record.
    Calls {
        n: u8,
        size: u8,
    },
    Ack {
        seq: u64,
    },
    Keepalive {
        acked: u64,
    },
    /// `times` copies of `SeqResend { from, to }` in one record.
    Resend {
        from: u64,
        to: u64,
        times: u16,
    },
    /// A record with an arbitrary number (gaps, duplicates, the future).
    Data {
        seq: u64,
    },
    /// One stage of batch `id` (numbered).
    Batch {
        id: u8,
        size: u16,
        last: bool,
    },
    Tick {
        ms: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Script {
    ops: Vec<Op>,
}

fn config() -> SessionConfig {
    let mut cfg = SessionConfig {
        stable_max_unacked: UNACKED,
        max_pending_output: PENDING,
        max_batch_bytes: BATCH,
        max_batch_frames: 64,
        ..SessionConfig::default()
    };
    cfg.wire.limits.max_frame = MAX_FRAME;
    cfg
}

struct Client {
    codec: FrameCodec,
    /// Next record number of ours.
    seq: u64,
}

impl Client {
    /// The plaintext the security layer would hand the server.
    fn frames(&mut self, frames: &[Frame]) -> BytesMut {
        let mut b = BytesMut::new();
        for f in frames {
            if self.codec.encode(f, &mut b).is_err() {
                return BytesMut::new();
            }
        }
        b
    }

    fn record(&mut self, inner: &Frame) -> Frame {
        let mut b = BytesMut::new();
        let _ = self.codec.encode(inner, &mut b);
        self.seq += 1;
        Frame::SeqData {
            seq: self.seq,
            payload: b.freeze(),
        }
    }
}

/// Handles the server's events like a runtime: echo answers, batch answers.
fn serve(s: &mut Session, now: Instant) {
    while let Some(ev) = s.poll_event() {
        if let Event::Request(r) = ev {
            if let Some(id) = r.id() {
                let reply = match r {
                    Request::Console { text, .. } => Ok(Reply::Text(text)),
                    _ => Ok(Reply::Data(DataFrame::new().with(1u8))),
                };
                let _ = s.respond(id, reply, now);
            }
        }
    }
}

/// Takes the server's output (the client never reads it) and checks what one
/// step may produce and what the session may hold.
fn check(s: &mut Session, budgets: &Budgets) -> usize {
    let mut out = BytesMut::new();
    s.write_output(&mut out);
    // One step: at most the pending-output budget, plus what the last frame
    // handled produced (one resend of the whole buffer, or one answer).
    assert!(
        out.len() <= PENDING + UNACKED + 2 * MAX_FRAME,
        "one step produced {} bytes",
        out.len()
    );
    assert!(
        s.held_bytes() <= 2 * UNACKED + 64 * 1024 + BATCH + MAX_FRAME,
        "the session holds {} bytes",
        s.held_bytes()
    );
    assert!(budgets.batch_bytes() <= BATCH);
    out.len()
}

fuzz_target!(|script: Script| {
    let now = Instant::now();
    let budgets = Arc::new(Budgets::new(4 * UNACKED, BATCH));
    let mut s = Session::new(config());
    s.set_budgets(budgets.clone());
    s.serve_stable(Some((7, [3; 32])));
    let link = zs_io::SecurityInfo::new("fuzz", "AES-256-GCM", None, None)
        .with_channel_binding(Some([5; 32]));
    s.open_link(&link, now).expect("link");
    let mut cl = Client {
        codec: FrameCodec::new(config().wire),
        seq: 0,
    };
    // The StableIO grant.
    let hello = Frame::Control {
        id: 0,
        cmd: Text::from("__@stable"),
        data: DataFrame::new(),
    };
    let mut b = cl.frames(&[hello]);
    s.handle_input(&mut b, now).expect("stable request");
    assert!(s.is_stable());
    let mut t = now;
    let mut id = 0u64;
    for op in script.ops.into_iter().take(256) {
        let frames: Vec<Frame> = match op {
            Op::Call { size } => {
                id += 1;
                let text = "x".repeat(size as usize % 2048 * 97);
                let call = Frame::Console {
                    id,
                    cmd: Text::from("echo"),
                    text: Text::from(text),
                };
                vec![cl.record(&call)]
            }
            Op::Calls { n, size } => (0..n)
                .map(|_| {
                    id += 1;
                    let call = Frame::Console {
                        id,
                        cmd: Text::from("echo"),
                        text: Text::from("y".repeat(size as usize * 13)),
                    };
                    cl.record(&call)
                })
                .collect(),
            Op::Ack { seq } => vec![Frame::SeqAck { seq }],
            Op::Keepalive { acked } => vec![Frame::SeqKeepalive { acked }],
            Op::Resend { from, to, times } => {
                vec![Frame::SeqResend { from, to }; times as usize % 12_000 + 1]
            }
            Op::Data { seq } => {
                let f = Frame::DirectConsole {
                    cmd: Text::from("note"),
                    text: Text::from("z"),
                };
                let mut b = BytesMut::new();
                let _ = cl.codec.encode(&f, &mut b);
                vec![Frame::SeqData {
                    seq,
                    payload: b.freeze(),
                }]
            }
            Op::Batch { id: b, size, last } => {
                let stage = Frame::BatchStream {
                    id: u64::from(b) + 1_000_000,
                    cmd: Text::from("sum"),
                    last,
                    data: DataFrame::new().with(vec![0u8; size as usize % 32_768]),
                };
                vec![cl.record(&stage)]
            }
            Op::Tick { ms } => {
                t += Duration::from_millis(u64::from(ms));
                if s.handle_timeout(t).is_err() {
                    return;
                }
                serve(&mut s, t);
                check(&mut s, &budgets);
                continue;
            }
        };
        let mut b = cl.frames(&frames);
        if s.handle_input(&mut b, t).is_err() {
            return; // a violation ends the session; nothing may have panicked
        }
        serve(&mut s, t);
        check(&mut s, &budgets);
        // Input held back while output waited: the runtime continues it once
        // the output is taken, one bounded step at a time.
        let mut steps = 0;
        while s.input_blocked() {
            steps += 1;
            assert!(steps < 100_000, "input never drains");
            if s.resume_input(t).is_err() {
                return;
            }
            serve(&mut s, t);
            check(&mut s, &budgets);
        }
    }
    drop(s);
    assert_eq!(
        budgets.stable_bytes(),
        0,
        "a dropped session returns its budget"
    );
    assert_eq!(budgets.batch_bytes(), 0);
});
