//! Sans-IO tests: a client and a server [`Session`] joined in memory, with
//! virtual time (quinn-proto `Pair` style). No sockets, no threads. The link
//! carries plaintext (the security layer would sit under it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use zs_core::{
    code, Call, Error, Event, Outbox, Peer, Registry, Reply, Request, Session, SessionConfig,
};
use zs_wire::{DataFrame, Frame, Text};

/// Frames a server handler sends, applied to the server session by the pair.
#[derive(Default)]
struct Sink(Mutex<Vec<Frame>>);

impl Outbox for Sink {
    fn send_frame(&self, frame: Frame) -> zs_core::Result<()> {
        self.0.lock().unwrap().push(frame);
        Ok(())
    }
    fn is_open(&self) -> bool {
        true
    }
    fn close(&self, _: &str) {}
}

struct Pair {
    now: Instant,
    client: Session,
    server: Session,
    registry: Registry,
    sink: Arc<Sink>,
    peer: Peer,
    /// Requests the server did not dispatch (when `dispatch` is false).
    held: Vec<Request>,
    dispatch: bool,
    client_events: Vec<Event>,
}

/// What the security layer reports for the pair's link.
fn link() -> zs_io::SecurityInfo {
    zs_io::SecurityInfo::new("test", "AES-256-GCM", None, None).with_channel_binding(Some([1; 32]))
}

impl Pair {
    fn new(registry: Registry, cfg: SessionConfig) -> Pair {
        let now = Instant::now();
        let sink = Arc::new(Sink::default());
        let (mut client, mut server) = (Session::new(cfg), Session::new(cfg));
        client.open_link(&link(), now).unwrap();
        server.open_link(&link(), now).unwrap();
        Pair {
            now,
            client,
            server,
            registry,
            peer: Peer::new(1, None, sink.clone()),
            sink,
            held: Vec::new(),
            dispatch: true,
            client_events: Vec::new(),
        }
    }

    /// Moves bytes both ways and runs server handlers until nothing moves.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            let mut b = BytesMut::new();
            self.client.write_output(&mut b);
            if !b.is_empty() {
                moved = true;
                self.server.handle_input(&mut b, self.now).unwrap();
                assert!(b.is_empty(), "whole frames");
            }
            while let Some(ev) = self.server.poll_event() {
                if let Event::Request(r) = ev {
                    if self.dispatch {
                        zs_core::runtime::dispatch(&self.registry, &self.peer, r, None);
                    } else {
                        self.held.push(r);
                    }
                }
            }
            for f in std::mem::take(&mut *self.sink.0.lock().unwrap()) {
                self.server.send_frame(&f, self.now).unwrap();
            }
            let mut b = BytesMut::new();
            self.server.write_output(&mut b);
            if !b.is_empty() {
                moved = true;
                self.client.handle_input(&mut b, self.now).unwrap();
                assert!(b.is_empty(), "whole frames");
            }
            while let Some(ev) = self.client.poll_event() {
                self.client_events.push(ev);
            }
            if !moved {
                break;
            }
        }
    }

    fn replies(&mut self) -> Vec<(u64, zs_core::Result<Reply>)> {
        let evs = std::mem::take(&mut self.client_events);
        evs.into_iter()
            .filter_map(|e| match e {
                Event::Reply { id, result } => Some((id, result)),
                _ => None,
            })
            .collect()
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.console("echo", |_, t| Ok(t.to_owned()));
    r.console("fail", |_, _| Err("it broke".into()));
    r.stream("sum", |_, d| {
        let mut rd = d.reader();
        let mut s = 0i64;
        while rd.remaining() > 0 {
            s += rd.read_i64().map_err(|e| e.to_string())?;
        }
        Ok(DataFrame::new().with(s))
    });
    r.batch("count", |_, frames| {
        Ok(DataFrame::new()
            .with(frames.len() as u64)
            .with(frames.iter().map(|f| f.len() as u64).sum::<u64>()))
    });
    r
}

fn console(cmd: &str, text: &str) -> Call {
    Call::Console {
        cmd: Text::from(cmd),
        text: Text::from(text),
    }
}

#[test]
fn many_calls_in_flight_matched_by_id() {
    let mut p = Pair::new(registry(), SessionConfig::default());
    assert!(matches!(
        p.client.poll_event(),
        Some(Event::Established { suite, psk_identity: None }) if suite == "AES-256-GCM"
    ));
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = if i % 2 == 0 {
            p.client
                .call(console("ECHO", &format!("m{i}")), None, p.now)
                .unwrap()
        } else {
            let data = DataFrame::new().with(i as i64).with(1000i64);
            let call = Call::Stream {
                cmd: Text::from("sum"),
                data,
            };
            p.client.call(call, None, p.now).unwrap()
        };
        ids.push((id, i));
    }
    assert_eq!(p.client.pending_calls(), 200);
    p.drive();
    assert!(p.client.is_online() && p.server.is_online());
    let replies = p.replies();
    assert_eq!(replies.len(), 200);
    for (id, result) in replies {
        let i = ids.iter().find(|(x, _)| *x == id).unwrap().1;
        match result.unwrap() {
            Reply::Text(t) => assert_eq!(t.as_str(), format!("m{i}")),
            Reply::Data(d) => assert_eq!(d.reader().read_i64().unwrap(), i as i64 + 1000),
        }
    }
    assert_eq!(p.client.pending_calls(), 0);
}

#[test]
fn answers_out_of_order_reach_the_right_call() {
    let mut p = Pair::new(registry(), SessionConfig::default());
    p.dispatch = false;
    let a = p.client.call(console("echo", "a"), None, p.now).unwrap();
    let b = p.client.call(console("echo", "b"), None, p.now).unwrap();
    p.drive();
    assert_eq!(p.held.len(), 2);
    // Answer b first, then a (what a delayed responder does).
    for r in p.held.drain(..).rev() {
        let Request::Console { id, text, .. } = r else {
            panic!()
        };
        let reply = Reply::Text(Text::from(format!("re:{}", text.as_str())));
        p.server.respond(id, Ok(reply), p.now).unwrap();
    }
    p.drive();
    let r = p.replies();
    assert_eq!(r[0].0, b);
    assert_eq!(r[1].0, a);
    assert!(matches!(&r[1].1, Ok(Reply::Text(t)) if t.as_str() == "re:a"));
}

#[test]
fn errors_unknown_commands_timeouts_and_lost_connections() {
    let mut p = Pair::new(registry(), SessionConfig::default());
    let f = p.client.call(console("fail", ""), None, p.now).unwrap();
    let u = p.client.call(console("nope", ""), None, p.now).unwrap();
    p.drive();
    let r = p.replies();
    assert!(
        matches!(&r[0], (id, Err(Error::Remote { code: 500, message })) if *id == f && message == "it broke")
    );
    assert!(
        matches!(&r[1], (id, Err(Error::Remote { code: code::UNKNOWN_COMMAND, .. })) if *id == u)
    );

    // Virtual time: a held (never answered) call times out exactly after its timeout.
    p.dispatch = false;
    let t = p
        .client
        .call(console("echo", "x"), Some(Duration::from_secs(5)), p.now)
        .unwrap();
    let never = p.client.call(console("echo", "y"), None, p.now).unwrap();
    p.drive();
    let deadline = p.client.poll_timeout().unwrap();
    assert_eq!(deadline, p.now + Duration::from_secs(5));
    p.client
        .handle_timeout(p.now + Duration::from_secs(4))
        .unwrap();
    assert!(p.client.poll_event().is_none());
    p.client.handle_timeout(deadline).unwrap();
    assert!(matches!(
        p.client.poll_event(),
        Some(Event::Reply { id, result: Err(Error::TimedOut) }) if id == t
    ));
    // The transport dies: the remaining call completes with an error.
    p.client.connection_lost("reset by test");
    assert!(matches!(
        p.client.poll_event(),
        Some(Event::Reply { id, result: Err(Error::ConnectionLost(_)) }) if id == never
    ));
    assert!(p.client.call(console("echo", "z"), None, p.now).is_err());
}

#[test]
fn complete_buffer_limit_answers_the_sender_clearly() {
    let cfg = SessionConfig {
        max_complete_buffer: 1000,
        ..SessionConfig::default()
    };
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut r = Registry::new();
    let g = got.clone();
    r.complete_buffer("blob", move |_, b| g.lock().unwrap().push(b.len()));
    let mut p = Pair::new(r, cfg);
    let send = |p: &mut Pair, n: usize| {
        let f = Frame::CompleteBuffer {
            cmd: Text::from("blob"),
            data: Bytes::from(vec![7u8; n]),
        };
        p.client.send_frame(&f, p.now).unwrap();
        p.drive();
    };
    send(&mut p, 1000);
    send(&mut p, 1001);
    send(&mut p, 10);
    assert_eq!(*got.lock().unwrap(), vec![1000, 10]);
    let errs: Vec<_> = p
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::PeerError { code, message } => Some((*code, message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].0, code::TOO_LARGE);
    assert!(errs[0].1.contains("1001") && errs[0].1.contains("1000") && errs[0].1.contains("blob"));
}

#[test]
fn batch_stages_frames_and_runs_once() {
    let mut p = Pair::new(registry(), SessionConfig::default());
    let frames = vec![
        DataFrame::new().with(1u32),
        DataFrame::new().with(1u32).with(2u32),
        DataFrame::new().with("x").with("y").with("z"),
    ];
    let call = Call::Batch {
        cmd: Text::from("count"),
        frames,
    };
    p.client.call(call, None, p.now).unwrap();
    p.drive();
    let r = p.replies();
    let Ok(Reply::Data(d)) = &r[0].1 else {
        panic!("{r:?}")
    };
    let mut rd = d.reader();
    assert_eq!((rd.read_u64().unwrap(), rd.read_u64().unwrap()), (3, 6));
}

#[test]
fn garbage_kills_the_session_and_fails_pending_calls() {
    let mut p = Pair::new(registry(), SessionConfig::default());
    p.drive();
    p.dispatch = false;
    p.client.call(console("echo", "x"), None, p.now).unwrap();
    let err = p
        .client
        .handle_input(&mut BytesMut::from(&[0xff; 64][..]), p.now)
        .unwrap_err();
    assert!(matches!(err, Error::Wire(_)), "{err}");
    assert!(p.client.is_dead());
    assert!(matches!(
        p.client.poll_event(),
        Some(Event::Reply {
            result: Err(Error::ConnectionLost(_)),
            ..
        })
    ));
    assert!(p
        .server
        .handle_input(&mut BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]), p.now)
        .is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Whatever the mix of calls and the order the server answers them in, every
    /// call completes exactly once with its own answer.
    #[test]
    fn every_call_completes_once_with_its_answer(
        texts in proptest::collection::vec("[a-z]{0,12}", 1..40),
        order_seed in any::<u64>(),
    ) {
        let mut p = Pair::new(registry(), SessionConfig::default());
        p.dispatch = false;
        let mut ids = Vec::new();
        for t in &texts {
            ids.push(p.client.call(console("echo", t), None, p.now).unwrap());
        }
        p.drive();
        let mut held = std::mem::take(&mut p.held);
        // Deterministic shuffle.
        let mut s = order_seed | 1;
        for i in (1..held.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            held.swap(i, (s % (i as u64 + 1)) as usize);
        }
        for r in held {
            let Request::Console { id, text, .. } = r else { unreachable!() };
            p.server.respond(id, Ok(Reply::Text(text)), p.now).unwrap();
        }
        p.drive();
        let mut replies = p.replies();
        replies.sort_by_key(|r| r.0);
        prop_assert_eq!(replies.len(), texts.len());
        for ((id, r), (want_id, t)) in replies.into_iter().zip(ids.into_iter().zip(&texts)) {
            prop_assert_eq!(id, want_id);
            prop_assert!(matches!(r, Ok(Reply::Text(x)) if x.as_str() == t));
        }
    }
}

fn big_registry(log: Arc<Mutex<Vec<(u64, usize, bool)>>>, sink: Arc<Mutex<Vec<u8>>>) -> Registry {
    let mut r = Registry::new();
    r.big_stream("upload", move |_, c| {
        log.lock().unwrap().push((c.offset, c.data.len(), c.last));
        sink.lock().unwrap().extend_from_slice(&c.data);
        Ok(c.last.then(|| DataFrame::new().with(c.total)))
    });
    r
}

#[test]
fn big_stream_is_windowed_ordered_and_resumable() {
    let cfg = SessionConfig {
        big_chunk: 64 * 1024,
        big_window: 256 * 1024,
        ..SessionConfig::default()
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut p = Pair::new(big_registry(log.clone(), got.clone()), cfg);
    p.drive();
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let data = Bytes::from(data);
    let id = p
        .client
        .big_stream(Text::from("upload"), data.clone(), 0, None, p.now)
        .unwrap();
    // Back-pressure: before any acknowledgement only one window is out.
    let mut out = BytesMut::new();
    p.client.write_output(&mut out);
    assert!(
        out.len() > 256 * 1024 && out.len() < 256 * 1024 + 4096,
        "{}",
        out.len()
    );
    p.server.handle_input(&mut out, p.now).unwrap();
    p.drive();
    assert_eq!(&got.lock().unwrap()[..], &data[..]);
    let l = log.lock().unwrap().clone();
    assert_eq!(l.len(), 49);
    assert!(l.windows(2).all(|w| w[0].0 + w[0].1 as u64 == w[1].0));
    assert!(l.last().unwrap().2);
    let mut acked = Vec::new();
    let mut answer = None;
    for e in std::mem::take(&mut p.client_events) {
        match e {
            Event::Progress {
                id: i,
                acked: a,
                total,
            } if i == id => {
                assert_eq!(total, data.len() as u64);
                acked.push(a);
            }
            Event::Reply { id: i, result } if i == id => answer = Some(result),
            _ => {}
        }
    }
    assert!(acked.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*acked.last().unwrap(), data.len() as u64);
    let Some(Ok(Reply::Data(d))) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(d.reader().read_u64().unwrap(), data.len() as u64);

    // Resume from an offset: the handler sees only the rest.
    log.lock().unwrap().clear();
    got.lock().unwrap().clear();
    let from = 2 * 1024 * 1024;
    p.client
        .big_stream(Text::from("upload"), data.clone(), from, None, p.now)
        .unwrap();
    p.drive();
    assert_eq!(log.lock().unwrap()[0].0, from);
    assert_eq!(&got.lock().unwrap()[..], &data[from as usize..]);
    assert!(p
        .client
        .big_stream(
            Text::from("upload"),
            data.clone(),
            data.len() as u64 + 1,
            None,
            p.now
        )
        .is_err());
}

#[test]
fn big_stream_chunks_out_of_order_are_refused() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut p = Pair::new(big_registry(log, got.clone()), SessionConfig::default());
    p.drive();
    let chunk = |offset: u64, last: bool| Frame::BigStream {
        id: 77,
        cmd: Text::from("upload"),
        offset,
        total: 20,
        last,
        data: Bytes::from_static(b"0123456789"),
    };
    p.client.send_frame(&chunk(0, false), p.now).unwrap();
    p.client.send_frame(&chunk(5, false), p.now).unwrap(); // overlap: refused
    p.drive();
    assert_eq!(got.lock().unwrap().len(), 10);
    // The sender never registered id 77 as a call, so the refusal is dropped;
    // the server session forgot the transfer and accepts a fresh start.
    p.client.send_frame(&chunk(10, true), p.now).unwrap();
    p.drive();
    assert_eq!(got.lock().unwrap().len(), 20);
}
