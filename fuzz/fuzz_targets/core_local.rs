//! zs-core in-process connections (`Server::connect_local`) driven by
//! arbitrary operation scripts: requests of every kind to known and unknown
//! commands, delayed answers given later (or dropped), handler-side closes and
//! panics, broadcasts, owner closes, in ordered mode or not. Invariants: no
//! panic escapes; every answering request to a connection that stays open is
//! answered exactly once; nothing arrives after a connection closed; the
//! server's connection map and counters match the connections open.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use zs_core::{LocalConn, LocalSink, Options, Registry, Request, Responder, Server};
use zs_wire::{DataFrame, Frame};

struct NullListener;
impl zs_io::Listener for NullListener {
    fn local_addr(&self) -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }
    fn shutdown(&self) {}
}

/// A backend with no network: the servers here only have in-process peers.
struct NullBackend;
impl zs_io::Backend for NullBackend {
    fn name(&self) -> &str {
        "null"
    }
    fn listen(
        &self,
        _: SocketAddr,
        _: zs_io::HandlerFactory,
    ) -> Result<Box<dyn zs_io::Listener>, zs_io::Error> {
        Ok(Box::new(NullListener))
    }
    fn connect(
        &self,
        _: SocketAddr,
        _: Duration,
        _: Box<dyn zs_io::Handler>,
    ) -> Result<(), zs_io::Error> {
        Err(zs_io::Error::ShutDown)
    }
    fn shutdown(&self) {}
}

type Held = Arc<Mutex<Vec<Responder>>>;

fn server(ordered: bool, held: Held) -> Server {
    let mut r = Registry::new();
    r.console("echo", |_, t| Ok(t.to_owned()));
    r.console("fail", |_, _| Err("no".into()));
    r.console("bye", |p, _| {
        p.close("bye");
        Ok("late".into())
    });
    r.console("boom", |_, _| -> Result<String, zs_core::HandlerError> {
        panic!("fuzz: handler panic")
    });
    r.console_delayed("hold", move |_, _, resp| held.lock().unwrap().push(resp));
    r.stream("len", |_, d| Ok(DataFrame::new().with(d.len() as u64)));
    r.direct_console("note", |p, t| {
        let _ = p.send_direct_console("push", t);
    });
    let options = Options {
        ordered,
        max_connections: 6,
        max_connections_per_ip: 4,
        stable: false,
        ..Options::default()
    };
    // In-process peers only: no transport, so no security layer either
    // (`start` over a backend that never delivers a connection).
    Server::start(
        Arc::new(NullBackend),
        r,
        options,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

#[derive(Default)]
struct Sink {
    frames: Mutex<Vec<Frame>>,
    closed: Mutex<bool>,
}

impl LocalSink for Sink {
    fn frame(&self, f: Frame) -> zs_core::Result<()> {
        assert!(!*self.closed.lock().unwrap(), "a frame after close: {f:?}");
        self.frames.lock().unwrap().push(f);
        Ok(())
    }
    fn closed(&self, _: &str) {
        let mut c = self.closed.lock().unwrap();
        assert!(!*c, "closed twice");
        *c = true;
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open(u8),
    Call { conn: u8, cmd: u8, text: u8 },
    Stream { conn: u8, values: u8 },
    Direct { conn: u8, known: bool },
    Answer { index: u8, drop: bool },
    Broadcast,
    Close(u8),
}

#[derive(Arbitrary, Debug)]
struct Script {
    ordered: bool,
    ops: Vec<Op>,
}

struct Open {
    conn: LocalConn,
    sink: Arc<Sink>,
    /// Answering requests sent, by id.
    sent: Vec<u64>,
}

fn quiet_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.to_string().contains("fuzz: handler panic") {
                prev(info)
            }
        }));
    });
}

fuzz_target!(|s: Script| {
    quiet_panics();
    let held: Held = Arc::default();
    let server = server(s.ordered, held.clone());
    let mut open: Vec<Open> = Vec::new();
    let mut next_id = 1u64;
    for op in s.ops.into_iter().take(200) {
        match op {
            Op::Open(ip) => {
                let addr: SocketAddr = format!("10.0.0.{}:1", ip % 3).parse().unwrap();
                let sink = Arc::new(Sink::default());
                if let Ok(conn) = server.connect_local(Some(addr), sink.clone()) {
                    open.push(Open {
                        conn,
                        sink,
                        sent: Vec::new(),
                    });
                }
            }
            Op::Call { conn, cmd, text } => {
                if open.is_empty() {
                    continue;
                }
                let n = open.len();
                let o = &mut open[conn as usize % n];
                let name = ["echo", "fail", "bye", "boom", "hold", "nope"][cmd as usize % 6];
                let id = next_id;
                next_id += 1;
                if o.conn.is_open() {
                    o.sent.push(id);
                }
                o.conn.request(Request::Console {
                    id,
                    cmd: name.into(),
                    text: "t".repeat(text as usize % 8).as_str().into(),
                });
            }
            Op::Stream { conn, values } => {
                if open.is_empty() {
                    continue;
                }
                let n = open.len();
                let o = &mut open[conn as usize % n];
                let id = next_id;
                next_id += 1;
                if o.conn.is_open() {
                    o.sent.push(id);
                }
                let mut d = DataFrame::new();
                for i in 0..values % 5 {
                    d = d.with(u32::from(i));
                }
                o.conn.request(Request::Stream {
                    id,
                    cmd: "len".into(),
                    data: d,
                });
            }
            Op::Direct { conn, known } => {
                if open.is_empty() {
                    continue;
                }
                let o = &open[conn as usize % open.len()];
                let cmd = if known { "note" } else { "nothing" };
                o.conn.request(Request::DirectConsole {
                    cmd: cmd.into(),
                    text: "n".into(),
                });
            }
            Op::Answer { index, drop } => {
                let r = {
                    let mut h = held.lock().unwrap();
                    if h.is_empty() {
                        continue;
                    }
                    let i = index as usize % h.len();
                    h.remove(i)
                };
                if drop {
                    std::mem::drop(r); // answers HANDLER_FAILED
                } else {
                    let _ = r.reply_text("held");
                }
            }
            Op::Broadcast => {
                server.broadcast(&Frame::DirectConsole {
                    cmd: "news".into(),
                    text: "b".into(),
                });
            }
            Op::Close(i) => {
                if !open.is_empty() {
                    let o = open.remove(i as usize % open.len());
                    o.conn.close();
                }
            }
        }
        let live = open.iter().filter(|o| o.conn.is_open()).count();
        assert_eq!(server.connection_count(), live);
        assert_eq!(server.stats().connections_open, live as u64);
    }
    // Every held request answered: every open connection has all its answers.
    // (Answering one may run a queued `hold`, which is held in turn.)
    loop {
        let rest: Vec<Responder> = std::mem::take(&mut *held.lock().unwrap());
        if rest.is_empty() {
            break;
        }
        for r in rest {
            let _ = r.reply_text("end");
        }
    }
    for o in &open {
        if !o.conn.is_open() {
            continue;
        }
        let frames = o.sink.frames.lock().unwrap();
        let mut answers: HashMap<u64, usize> = HashMap::new();
        for f in frames.iter() {
            if let Frame::ConsoleResponse { id, .. }
            | Frame::StreamResponse { id, .. }
            | Frame::Error { id, .. } = f
            {
                *answers.entry(*id).or_default() += 1;
            }
        }
        for id in &o.sent {
            assert_eq!(answers.get(id), Some(&1), "request {id}: {:?}", *frames);
        }
        assert_eq!(o.conn.in_flight(), 0);
    }
    drop(open);
    assert_eq!(server.connection_count(), 0);
});
