//! In-process connections (`Server::connect_local`): the same registry,
//! connection map, caps, ordered mode, HPC pool and statistics as a network
//! connection, with frames going to a sink instead of a socket.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use zs_core::{Client, HandlerError, LocalSink, Options, Registry, Request, Server, LOCAL_ID_BASE};
use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, ZsSecurity};
use zs_wire::{DataFrame, Frame};

/// Collects frames; remembers why the server closed it.
#[derive(Default)]
struct Inbox {
    frames: Mutex<Vec<Frame>>,
    closed: Mutex<Option<String>>,
    cv: Condvar,
}

impl LocalSink for Inbox {
    fn frame(&self, f: Frame) -> zs_core::Result<()> {
        self.frames.lock().unwrap().push(f);
        self.cv.notify_all();
        Ok(())
    }
    fn closed(&self, reason: &str) {
        *self.closed.lock().unwrap() = Some(reason.to_owned());
        self.cv.notify_all();
    }
}

impl Inbox {
    /// Waits (5 s at most) until `n` frames arrived; returns them all.
    fn wait(&self, n: usize) -> Vec<Frame> {
        let g = self.frames.lock().unwrap();
        let (g, _) = self
            .cv
            .wait_timeout_while(g, Duration::from_secs(5), |v| v.len() < n)
            .unwrap();
        assert!(g.len() >= n, "{} of {n} frames: {:?}", g.len(), *g);
        g.clone()
    }
}

fn server(reg: Registry, options: Options) -> (Server, Arc<ZsSecurity>) {
    let (id, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
    let security = Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(id.fingerprint()))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ));
    let backend = Arc::new(
        zs_io_tokio::TokioBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    );
    let s = Server::start(
        Arc::new(zs_secure::SecureBackend::new(backend, security.clone())),
        reg,
        options,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    (s, security)
}

/// A console command `name` whose handler keeps every responder (the test
/// answers them later).
fn keeper(reg: &mut Registry, name: &str) -> Arc<Mutex<Vec<zs_core::Responder>>> {
    let kept: Arc<Mutex<Vec<zs_core::Responder>>> = Arc::default();
    let k = kept.clone();
    reg.console_delayed(name, move |_, _, r| k.lock().unwrap().push(r));
    kept
}

fn console(id: u64, cmd: &str, text: &str) -> Request {
    Request::Console {
        id,
        cmd: cmd.into(),
        text: text.into(),
    }
}

#[test]
fn answers_pushes_broadcasts_and_unknown_commands_reach_the_sink() {
    let mut reg = Registry::new();
    reg.console("echo", |_, t| Ok(t.to_owned()));
    reg.console("pushme", |p, t| {
        p.send_direct_console("push", t)
            .map_err(|e| e.to_string())?;
        Ok("ok".into())
    });
    reg.stream_hpc("sum", |_, d| {
        let mut r = d.reader();
        let (a, b) = (r.read_u32().unwrap(), r.read_u32().unwrap());
        Ok(DataFrame::new().with(a + b))
    });
    let (server, _) = server(reg, Options::default());
    let inbox = Arc::new(Inbox::default());
    let conn = server.connect_local(None, inbox.clone()).unwrap();
    assert!(conn.peer().id() >= LOCAL_ID_BASE);
    assert_eq!(conn.peer().addr(), None);
    conn.request(console(1, "echo", "hi"));
    conn.request(console(2, "pushme", "ding"));
    conn.request(console(3, "nope", ""));
    // HPC: answered from a worker thread.
    conn.request(Request::Stream {
        id: 4,
        cmd: "sum".into(),
        data: DataFrame::new().with(40u32).with(2u32),
    });
    let f = inbox.wait(5);
    assert_eq!(
        f[0],
        Frame::ConsoleResponse {
            id: 1,
            text: "hi".into()
        }
    );
    assert_eq!(
        f[1],
        Frame::DirectConsole {
            cmd: "push".into(),
            text: "ding".into()
        }
    );
    assert_eq!(
        f[2],
        Frame::ConsoleResponse {
            id: 2,
            text: "ok".into()
        }
    );
    assert!(
        matches!(
            &f[3],
            Frame::Error {
                id: 3,
                code: 404,
                ..
            }
        ),
        "{:?}",
        f[3]
    );
    assert_eq!(
        f[4],
        Frame::StreamResponse {
            id: 4,
            data: DataFrame::new().with(42u32)
        }
    );
    assert_eq!(
        server.broadcast(&Frame::DirectConsole {
            cmd: "news".into(),
            text: "all".into()
        }),
        1
    );
    assert!(matches!(&inbox.wait(6)[5], Frame::DirectConsole { cmd, .. } if cmd == "news"));
    let st = server.stats();
    assert_eq!(st.unknown_commands, 1);
    assert_eq!((st.connections_opened, st.connections_open), (1, 1));
    assert_eq!(
        st.commands.iter().find(|c| c.name == "echo").unwrap().calls,
        1
    );
    // a responder counts its request finished just after its answer reached the
    // sink (on the HPC pool's thread for `sum`): wait for that, bounded
    let t0 = std::time::Instant::now();
    while conn.in_flight() != 0 && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(conn.in_flight(), 0);
    drop(conn);
    assert_eq!(server.connection_count(), 0);
    assert_eq!(server.stats().connections_open, 0);
    // The owner closed it: the sink is not told.
    assert!(inbox.closed.lock().unwrap().is_none());
}

#[test]
fn admission_caps_count_local_connections_under_their_address() {
    let options = Options {
        max_connections_per_ip: 2,
        max_connections: 3,
        ..Options::default()
    };
    let (server, _) = server(Registry::new(), options);
    let a = "198.51.100.1:1".parse().ok();
    let b = "198.51.100.2:1".parse().ok();
    let sink = || -> Arc<dyn LocalSink> { Arc::new(Inbox::default()) };
    let c1 = server.connect_local(a, sink()).unwrap();
    let c2 = server.connect_local(a, sink()).unwrap();
    let e = server.connect_local(a, sink()).unwrap_err();
    assert!(e.to_string().contains("max_connections_per_ip"), "{e}");
    let c3 = server.connect_local(b, sink()).unwrap();
    let e = server.connect_local(b, sink()).unwrap_err();
    assert!(e.to_string().contains("max_connections"), "{e}");
    assert_eq!(server.stats().refused_connections, 2);
    drop(c1);
    let c4 = server.connect_local(a, sink()).unwrap();
    assert_eq!(server.connection_count(), 3);
    drop((c2, c3, c4));
    assert_eq!(server.connection_count(), 0);
}

#[test]
fn ordered_mode_runs_one_request_at_a_time() {
    // `hold` answers only when the test releases it, from another thread.
    let mut reg = Registry::new();
    let gate = keeper(&mut reg, "hold");
    reg.console("echo", |_, t| Ok(t.to_owned()));
    let (server, _) = server(
        reg,
        Options {
            ordered: true,
            ..Options::default()
        },
    );
    let inbox = Arc::new(Inbox::default());
    let conn = server.connect_local(None, inbox.clone()).unwrap();
    conn.request(console(1, "hold", ""));
    conn.request(console(2, "echo", "after"));
    conn.request(console(3, "echo", "last"));
    std::thread::sleep(Duration::from_millis(50));
    assert!(inbox.frames.lock().unwrap().is_empty(), "ran out of order");
    assert_eq!(conn.in_flight(), 3);
    let r = gate.lock().unwrap().pop().unwrap();
    std::thread::spawn(move || r.reply_text("first").unwrap())
        .join()
        .unwrap();
    let f = inbox.wait(3);
    let ids: Vec<u64> = f
        .iter()
        .map(|f| match f {
            Frame::ConsoleResponse { id, .. } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(conn.in_flight(), 0);
}

#[test]
fn the_server_closing_tells_the_sink_and_refuses_new_connections() {
    let mut reg = Registry::new();
    reg.console("bye", |p, _| {
        p.close("asked to leave");
        Ok("never delivered".into())
    });
    reg.console("boom", |_, _| -> Result<String, HandlerError> {
        panic!("handler bug")
    });
    reg.console("echo", |_, t| Ok(t.to_owned()));
    let (server, security) = server(reg, Options::default());
    let inbox = Arc::new(Inbox::default());
    let conn = server.connect_local(None, inbox.clone()).unwrap();
    conn.request(console(1, "bye", ""));
    assert_eq!(
        inbox.closed.lock().unwrap().as_deref(),
        Some("asked to leave")
    );
    assert!(!conn.is_open());
    assert_eq!(server.connection_count(), 0);
    conn.request(console(2, "echo", "x")); // ignored
    assert!(inbox.frames.lock().unwrap().is_empty());

    // A panicking handler closes its connection only.
    let other = Arc::new(Inbox::default());
    let c2 = server.connect_local(None, other.clone()).unwrap();
    let bystander = Arc::new(Inbox::default());
    let c3 = server.connect_local(None, bystander.clone()).unwrap();
    c2.request(console(1, "boom", ""));
    assert_eq!(
        other.closed.lock().unwrap().as_deref(),
        Some("a handler panicked")
    );
    c3.request(console(1, "echo", "fine"));
    assert_eq!(
        bystander.wait(1)[0],
        Frame::ConsoleResponse {
            id: 1,
            text: "fine".into()
        }
    );
    // A network client of the same server is unaffected, and counted beside.
    let backend = Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config::default()).unwrap());
    let client = Client::connect(
        Arc::new(zs_secure::SecureBackend::new(backend, security)),
        Registry::new(),
        Options::client(),
        server.local_addr(),
    )
    .unwrap();
    assert_eq!(client.call("echo", "net").wait().unwrap(), "net");
    assert_eq!(server.connection_count(), 2);

    server.shutdown();
    assert_eq!(
        bystander.closed.lock().unwrap().as_deref(),
        Some("the server shut down")
    );
    assert!(!c3.is_open());
    let e = server
        .connect_local(None, Arc::new(Inbox::default()))
        .unwrap_err();
    assert!(e.to_string().contains("shut down"), "{e}");
}

#[test]
fn ordered_mode_runs_the_next_request_without_holding_the_connection_map() {
    // Found by the `core_local` fuzz target: the answer of a delayed request
    // runs the next queued one; if that one closes its connection (or
    // broadcasts) it takes the server's connection map, which the runner
    // must not hold.
    let gate: Arc<Mutex<Vec<zs_core::Responder>>> = Arc::default();
    let g = gate.clone();
    let mut reg = Registry::new();
    reg.console_delayed("hold", move |_, _, r| g.lock().unwrap().push(r));
    reg.console("bye", |p, _| {
        p.close("bye");
        Ok(String::new())
    });
    let (server, _) = server(
        reg,
        Options {
            ordered: true,
            ..Options::default()
        },
    );
    let inbox = Arc::new(Inbox::default());
    let conn = server.connect_local(None, inbox.clone()).unwrap();
    conn.request(console(1, "hold", ""));
    conn.request(console(2, "bye", ""));
    let r = gate.lock().unwrap().pop().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        r.reply_text("done").unwrap();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("deadlock: the answer did not return");
    assert_eq!(inbox.closed.lock().unwrap().as_deref(), Some("bye"));
    assert_eq!(server.connection_count(), 0);
}

/// A responder is counted in flight only when its handler keeps it: one
/// answered inline is never counted, one kept stays counted until it
/// answers, and one answered on another thread before its handler returned
/// (counted down before it is counted up) leaves the count at zero.
#[test]
fn only_kept_responders_count_in_flight() {
    let mut reg = Registry::new();
    let kept = keeper(&mut reg, "keep");
    reg.console_delayed("inline", |_, t, r| r.reply_text(t).unwrap());
    reg.console_delayed("elsewhere", |_, t, r| {
        std::thread::spawn(move || r.reply_text(t).unwrap())
            .join()
            .unwrap();
    });
    let (server, _) = server(reg, Options::default());
    let inbox = Arc::new(Inbox::default());
    let conn = server.connect_local(None, inbox.clone()).unwrap();
    conn.request(console(1, "inline", "a"));
    inbox.wait(1);
    assert_eq!(conn.in_flight(), 0);
    conn.request(console(2, "keep", ""));
    assert_eq!(conn.in_flight(), 1);
    conn.request(console(3, "elsewhere", "c"));
    inbox.wait(2);
    assert_eq!(conn.in_flight(), 1);
    let r = kept.lock().unwrap().pop().unwrap();
    r.reply_text("later").unwrap();
    inbox.wait(3);
    assert_eq!(conn.in_flight(), 0);
}
