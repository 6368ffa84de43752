//! Server and client over real loopback sockets, on the epoll and tokio backends.
//! Every scenario runs unchanged on both.

mod common;

use std::borrow::Cow;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{provider, wait_until};
use zs_core::{code, Client, Error, Options, Registry, Responder, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ZsSecurity};
use zs_io::Backend;
use zs_wire::{DataFrame, Frame, Text};

fn addr0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A tiny executor: proves `CallFuture` works with any runtime (here none).
fn block_on<F: Future>(f: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

struct Setup {
    server: Server,
    provider: Arc<dyn SecurityProvider>,
    backend: Arc<dyn Backend>,
}

impl Setup {
    fn new(backend: Arc<dyn Backend>, registry: Registry, options: Options) -> Setup {
        let provider = provider();
        let server = Server::start(
            Arc::new(zs_secure::SecureBackend::new(
                backend.clone(),
                provider.clone(),
            )),
            registry,
            options,
            addr0(),
        )
        .unwrap();
        Setup {
            server,
            provider,
            backend,
        }
    }

    fn client_with(&self, registry: Registry, options: Options) -> Client {
        Client::connect(
            Arc::new(zs_secure::SecureBackend::new(
                self.backend.clone(),
                self.provider.clone(),
            )),
            registry,
            options,
            self.server.local_addr(),
        )
        .unwrap()
    }

    fn client(&self) -> Client {
        self.client_with(Registry::new(), Options::client())
    }
}

fn base_registry() -> Registry {
    let mut r = Registry::new();
    r.console("echo", |_, t| Ok(t.to_owned()));
    r.stream("add", |_, d| {
        let mut rd = d.reader();
        let a = rd.read_i64().map_err(|e| e.to_string())?;
        let b = rd.read_i64().map_err(|e| e.to_string())?;
        Ok(DataFrame::new().with(a + b))
    });
    r.batch("lens", |_, fs| {
        let mut out = DataFrame::new();
        for f in fs {
            out.push(f.len() as u64);
        }
        Ok(out)
    });
    r.console("count", |p, _| {
        Ok(p.with_state(|n: &mut u64| {
            *n += 1;
            n.to_string()
        }))
    });
    r.stream_hpc("slow", |_, d| {
        std::thread::sleep(Duration::from_millis(30));
        let name = std::thread::current().name().unwrap_or("").to_owned();
        Ok(d.clone().with(name))
    });
    r
}

fn calls_of_every_form(backend: Arc<dyn Backend>) {
    let s = Setup::new(backend, base_registry(), Options::default());
    let c = s.client();
    assert_eq!(c.call("echo", "hello").wait().unwrap(), "hello");
    assert_eq!(block_on(c.call("ECHO", "async")).unwrap(), "async");
    let d = c
        .call_stream("add", DataFrame::new().with(40i64).with(2i64))
        .wait()
        .unwrap();
    assert_eq!(d.reader().read_i64().unwrap(), 42);
    let frames = vec![
        DataFrame::new().with(1u8),
        DataFrame::new().with(1u8).with(2u8),
    ];
    let d = c.call_batch("lens", frames).wait().unwrap();
    assert_eq!(d.reader().read_u64().unwrap(), 1);
    // Callback form.
    let (tx, rx) = std::sync::mpsc::channel();
    let call = zs_core::Call::Console {
        cmd: Text::from("echo"),
        text: Text::from("cb"),
    };
    c.call_with(call, None, move |r| tx.send(r).unwrap());
    let r = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(r, zs_core::Reply::Text(Text::from("cb")));
    // Unknown command and wrong-shape reply are clear errors.
    assert!(matches!(
        c.call("missing", "").wait(),
        Err(Error::Remote {
            code: code::UNKNOWN_COMMAND,
            ..
        })
    ));
    // Many calls in flight from several threads on one connection.
    let c = Arc::new(c);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let futs: Vec<_> = (0..250)
                    .map(|i| (i, c.call("echo", &format!("{t}-{i}"))))
                    .collect();
                for (i, f) in futs {
                    assert_eq!(f.wait().unwrap(), format!("{t}-{i}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // HPC handlers run on the worker pool, concurrently.
    let start = Instant::now();
    let futs: Vec<_> = (0..4)
        .map(|i| c.call_stream("slow", DataFrame::new().with(i as u32)))
        .collect();
    for f in futs {
        let d = f.wait().unwrap();
        let mut rd = d.reader();
        rd.read_u32().unwrap();
        assert!(rd.read_text().unwrap().as_str().starts_with("zs-hpc-"));
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    let stats = s.server.stats();
    let echo = stats.commands.iter().find(|c| c.name == "echo").unwrap();
    assert_eq!(echo.calls, 1003);
    assert_eq!(echo.errors, 0);
    assert_eq!(stats.unknown_commands, 1);
    assert!(echo.p99_us >= echo.p50_us && echo.max_us >= echo.p99_us);
    assert!(stats.to_string().contains("echo"));
}

fn delayed_responses_timeouts_and_lost_connections(backend: Arc<dyn Backend>) {
    let kept: Arc<Mutex<Vec<Responder>>> = Arc::default();
    let mut r = base_registry();
    let k = kept.clone();
    r.console_delayed("later", move |_, text, resp| {
        let text = text.as_str().to_owned();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            resp.reply_text(format!("late {text}")).unwrap();
        });
    });
    r.console_delayed("never", move |_, _, resp| k.lock().unwrap().push(resp));
    let s = Setup::new(backend, r, Options::default());
    let c = s.client();
    assert_eq!(c.call("later", "x").wait().unwrap(), "late x");
    // Per-call timeout.
    let t = Instant::now();
    let r = c
        .call_timeout("never", "", Some(Duration::from_millis(150)))
        .wait();
    assert!(matches!(r, Err(Error::TimedOut)), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(150) && t.elapsed() < Duration::from_secs(3));
    // Pending calls complete with an error when the connection dies.
    let pending: Vec<_> = (0..5).map(|_| c.call("never", "")).collect();
    assert!(wait_until(Duration::from_secs(5), || kept
        .lock()
        .unwrap()
        .len()
        == 6));
    c.close();
    for f in pending {
        assert!(matches!(
            f.wait_timeout(Duration::from_secs(5)),
            Err(Error::ConnectionLost(_))
        ));
    }
    assert!(matches!(
        c.call("echo", "x").wait(),
        Err(Error::ConnectionLost(_))
    ));
    // The kept responders learn that the connection is gone.
    let resp = kept.lock().unwrap().pop().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !resp.is_connected()));
    assert!(matches!(
        resp.reply_text("too late"),
        Err(Error::ConnectionLost(_))
    ));
    kept.lock().unwrap().clear();
    // Server shutdown: pending calls of another client fail too.
    let c2 = s.client();
    let f = c2.call("never", "");
    assert!(wait_until(Duration::from_secs(5), || !kept
        .lock()
        .unwrap()
        .is_empty()));
    s.server.shutdown();
    assert!(matches!(
        f.wait_timeout(Duration::from_secs(5)),
        Err(Error::ConnectionLost(_))
    ));
}

fn broadcast_state_map_and_pushes(backend: Arc<dyn Backend>) {
    let s = Setup::new(backend, base_registry(), Options::default());
    let got = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let clients: Vec<Client> = (0..3)
        .map(|i| {
            let mut r = Registry::new();
            let g = got.clone();
            r.direct_console("news", move |_, t| {
                g.lock().unwrap().push((i, t.to_owned()))
            });
            s.client_with(r, Options::client())
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || s
        .server
        .connection_count()
        == 3));
    // Per-connection user state.
    assert_eq!(clients[0].call("count", "").wait().unwrap(), "1");
    assert_eq!(clients[0].call("count", "").wait().unwrap(), "2");
    assert_eq!(clients[1].call("count", "").wait().unwrap(), "1");
    let news = Frame::DirectConsole {
        cmd: Text::from("news"),
        text: Text::from("all"),
    };
    assert_eq!(s.server.broadcast(&news), 3);
    let first = s.server.peers().iter().map(|p| p.id()).min().unwrap();
    let only = Frame::DirectConsole {
        cmd: Text::from("news"),
        text: Text::from("one"),
    };
    assert_eq!(s.server.broadcast_filter(&only, |p| p.id() == first), 1);
    assert!(wait_until(Duration::from_secs(5), || got
        .lock()
        .unwrap()
        .len()
        == 4));
    let g = got.lock().unwrap().clone();
    assert_eq!(g.iter().filter(|(_, t)| t == "all").count(), 3);
    assert_eq!(g.iter().filter(|(_, t)| t == "one").count(), 1);
    // The connection map follows connects and disconnects.
    let p = s.server.peer(first).unwrap();
    assert!(p.is_open());
    drop(clients);
    assert!(wait_until(Duration::from_secs(5), || s
        .server
        .connection_count()
        == 0));
    assert!(s.server.peer(first).is_none());
    assert_eq!(s.server.stats().connections_opened, 3);
}

fn ordered_mode_runs_one_request_at_a_time(backend: Arc<dyn Backend>) {
    let running = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut r = Registry::new();
    let (ru, ov, or) = (running.clone(), overlap.clone(), order.clone());
    r.console_delayed("step", move |_, t, resp| {
        if ru.fetch_add(1, Ordering::SeqCst) > 0 {
            ov.fetch_add(1, Ordering::SeqCst);
        }
        or.lock().unwrap().push(t.as_str().parse::<u32>().unwrap());
        let ru = ru.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(3));
            ru.fetch_sub(1, Ordering::SeqCst);
            resp.reply_text("ok").unwrap();
        });
    });
    r.direct_console("mark", {
        let or = order.clone();
        move |_, t| or.lock().unwrap().push(t.parse::<u32>().unwrap())
    });
    let opts = Options {
        ordered: true,
        ..Options::default()
    };
    let s = Setup::new(backend, r, opts);
    let c = s.client();
    let mut futs = Vec::new();
    for i in 0..30u32 {
        if i % 5 == 4 {
            c.send_direct_console("mark", &i.to_string()).unwrap();
        } else {
            futs.push(c.call("step", &i.to_string()));
        }
    }
    for f in futs {
        assert_eq!(f.wait_timeout(Duration::from_secs(10)).unwrap(), "ok");
    }
    assert_eq!(overlap.load(Ordering::SeqCst), 0);
    assert!(wait_until(Duration::from_secs(5), || order
        .lock()
        .unwrap()
        .len()
        == 30));
    assert_eq!(*order.lock().unwrap(), (0..30).collect::<Vec<u32>>());
}

fn limits_keepalive_and_idle_timeouts(backend: Arc<dyn Backend>) {
    let mut r = base_registry();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let sz = sizes.clone();
    r.complete_buffer("blob", move |_, b| sz.lock().unwrap().push(b.len()));
    let mut opts = Options {
        idle_timeout: Some(Duration::from_millis(400)),
        ..Options::default()
    };
    opts.session.max_complete_buffer = 64 * 1024;
    let s = Setup::new(backend, r, opts);

    // CompleteBuffer limit: the sender gets a clear error, the connection lives on.
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut cr = Registry::new();
    let e = errors.clone();
    cr.on_peer_error(move |_, code, msg| e.lock().unwrap().push((code, msg.to_owned())));
    let keep = Options {
        keepalive: Some(Duration::from_millis(100)),
        ..Options::client()
    };
    let c = s.client_with(cr, keep);
    c.send_complete_buffer("blob", Bytes::from(vec![1u8; 64 * 1024]))
        .unwrap();
    c.send_complete_buffer("blob", Bytes::from(vec![1u8; 64 * 1024 + 1]))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || !errors
        .lock()
        .unwrap()
        .is_empty()));
    let (code, msg) = errors.lock().unwrap()[0].clone();
    assert_eq!(code, code::TOO_LARGE);
    assert!(msg.contains("65537") && msg.contains("65536"), "{msg}");
    assert_eq!(c.call("echo", "still here").wait().unwrap(), "still here");
    assert_eq!(*sizes.lock().unwrap(), vec![64 * 1024]);

    // Idle timeout: a silent client is dropped; one with keepalive stays.
    let silent = s.client();
    assert!(wait_until(Duration::from_secs(5), || !silent.is_connected()));
    assert!(matches!(
        silent.call("echo", "x").wait(),
        Err(Error::ConnectionLost(_))
    ));
    std::thread::sleep(Duration::from_millis(600));
    assert!(c.is_connected());
    assert_eq!(c.call("echo", "alive").wait().unwrap(), "alive");
    // (The handshake timeout is the security layer's: zs-secure's
    // tests/hostile.rs and tests/sniff.rs.)
}

fn big_stream_with_progress_and_resume(backend: Arc<dyn Backend>) {
    // The handler checks order and keeps a running checksum (FNV-1a) of what it got.
    let mut r = Registry::new();
    r.big_stream("upload", |p, c| {
        let (next, mut h) = p
            .state::<(u64, u64)>()
            .unwrap_or((c.offset, 0xcbf2_9ce4_8422_2325));
        if c.offset != next {
            return Err(format!("expected offset {next}, got {}", c.offset).into());
        }
        for b in c.data.iter() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        let end = c.offset + c.data.len() as u64;
        if c.last {
            p.set_state(());
            Ok(Some(DataFrame::new().with(end).with(h)))
        } else {
            p.set_state((end, h));
            Ok(None)
        }
    });
    let s = Setup::new(backend, r, Options::default());
    let c = s.client();
    let data: Vec<u8> = (0..20u32 * 1024 * 1024 + 17)
        .map(|i| (i % 253) as u8)
        .collect();
    let fnv = |d: &[u8]| {
        d.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let data = Bytes::from(data);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sn = seen.clone();
    let d = c
        .send_big_stream("upload", data.clone(), 0, move |a, t| {
            sn.lock().unwrap().push((a, t))
        })
        .wait_timeout(Duration::from_secs(60))
        .unwrap();
    let mut rd = d.reader();
    assert_eq!(rd.read_u64().unwrap(), data.len() as u64);
    assert_eq!(rd.read_u64().unwrap(), fnv(&data));
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 10 && seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        seen.last().unwrap(),
        &(data.len() as u64, data.len() as u64)
    );
    // Resume: only the tail is sent and the handler starts from the offset.
    let from = 15 * 1024 * 1024;
    let d = c
        .send_big_stream("upload", data.clone(), from, |_, _| {})
        .wait_timeout(Duration::from_secs(60))
        .unwrap();
    let mut rd = d.reader();
    assert_eq!(rd.read_u64().unwrap(), data.len() as u64);
    assert_eq!(rd.read_u64().unwrap(), fnv(&data[from as usize..]));
    assert!(c.call("echo", "x").wait().is_err()); // no console "echo" here: 404
    let st = s.server.stats();
    let up = st.commands.iter().find(|c| c.kind == "big-stream").unwrap();
    assert_eq!(up.bytes_in, data.len() as u64 + (data.len() as u64 - from));
}

fn custom_protocol_beside_commands(backend: Arc<dyn Backend>) {
    struct Upper;
    impl zs_io::Handler for Upper {
        fn on_data(&mut self, conn: &zs_io::Conn, data: &mut bytes::BytesMut) {
            let up = data.split().to_ascii_uppercase();
            let _ = conn.send(Bytes::from(up));
        }
    }
    // Sniffing is the layer's: `listen_with_raw` makes the listener, the
    // server gives it its connection handler factory.
    let secure = Arc::new(zs_secure::SecureBackend::new(backend, provider()));
    let sb = secure.clone();
    let server = Server::start_with(
        secure.clone(),
        base_registry(),
        Options::default(),
        move |f| sb.listen_with_raw(addr0(), f, zs_io::handler_factory(|| Upper)),
    )
    .unwrap();
    let mut raw = std::net::TcpStream::connect(server.local_addr()).unwrap();
    std::io::Write::write_all(&mut raw, b"hello raw").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 9];
    raw.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HELLO RAW");
    let c = Client::connect(
        secure,
        Registry::new(),
        Options::client(),
        server.local_addr(),
    )
    .unwrap();
    assert_eq!(c.call("echo", "zs").wait().unwrap(), "zs");
    assert_eq!(server.connection_count(), 1);
}

fn async_handler_awaits_another_server(backend: Arc<dyn Backend>) {
    // Server B answers; server A's async handler calls B and awaits the answer
    // (the seed's delayed response "after calling another server").
    let b = Setup::new(backend.clone(), base_registry(), Options::default());
    let to_b = Arc::new(b.client());
    let mut r = Registry::new();
    let c = to_b.clone();
    r.console_async("proxy", move |_, text| {
        let answer = c.call("echo", &format!("via B: {text}"));
        async move { answer.await.map_err(|e| e.to_string().into()) }
    });
    r.stream_async("double", |_, d| async move {
        let v = d.reader().read_i64().map_err(|e| e.to_string())?;
        Ok(DataFrame::new().with(v * 2))
    });
    let a = Setup::new(backend, r, Options::default());
    let c = a.client();
    let futs: Vec<_> = (0..20).map(|i| c.call("proxy", &i.to_string())).collect();
    for (i, f) in futs.into_iter().enumerate() {
        assert_eq!(f.wait().unwrap(), format!("via B: {i}"));
    }
    let d = c
        .call_stream("double", DataFrame::new().with(21i64))
        .wait()
        .unwrap();
    assert_eq!(d.reader().read_i64().unwrap(), 42);
    // When B is gone the awaited call fails and A answers with that error.
    b.server.shutdown();
    assert!(wait_until(Duration::from_secs(5), || !to_b.is_connected()));
    assert!(matches!(
        c.call("proxy", "x").wait(),
        Err(Error::Remote { code: 500, .. })
    ));
}

/// PSK mode: a handler sees which identity the client proved it holds the
/// key of (per-identity authorization).
fn psk_identity_reaches_handlers(backend: Arc<dyn Backend>) {
    let key = [0x5a; 32];
    let mut server_cfg = ServerConfig::with_psk(b"alice", &key).unwrap();
    server_cfg.add_psk(b"bob", &[0x77; 32]).unwrap();
    let server_p: Arc<dyn SecurityProvider> =
        Arc::new(ZsSecurity::new(None, Some(Arc::new(server_cfg))));
    let mut reg = Registry::new();
    reg.console("whoami", |peer, _| {
        Ok(String::from_utf8_lossy(&peer.psk_identity().unwrap_or_default()).into_owned())
    });
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(backend.clone(), server_p)),
        reg,
        Options::default(),
        addr0(),
    )
    .unwrap();
    for (who, k) in [("alice", key), ("bob", [0x77; 32])] {
        let client_p: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
            Some(Arc::new(ClientConfig::psk(who.as_bytes(), &k).unwrap())),
            None,
        ));
        let c = Client::connect(
            Arc::new(zs_secure::SecureBackend::new(backend.clone(), client_p)),
            Registry::new(),
            Options::client(),
            server.local_addr(),
        )
        .unwrap();
        assert_eq!(block_on(c.call("whoami", "")).unwrap(), who);
    }
}

/// Answers given while their handler runs on the event loop wait in the
/// loop's local buffer until the batch ends (no lock per answer): they must
/// still leave before anything a later handler of the same batch sends. `a`
/// answers inline through its responder, `b` pushes a note, then answers;
/// the client sees every `a` answer before the note `b` sent after it.
/// A client that logs the `note` pushes it receives ("note TEXT").
fn noting_client(s: &Setup) -> (Client, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut cr = Registry::new();
    let l = log.clone();
    cr.direct_console("note", move |_, t| {
        l.lock().unwrap().push(format!("note {t}"))
    });
    (s.client_with(cr, Options::client()), log)
}

fn inline_answers_keep_their_order_with_pushes(backend: Arc<dyn Backend>) {
    let mut r = Registry::new();
    r.console_delayed("a", |_, t, r| {
        let _ = r.reply_text(t);
    });
    r.console("b", |p, t| {
        p.send_direct_console("note", t)
            .map_err(|e| e.to_string())?;
        Ok(t.to_owned())
    });
    let s = Setup::new(backend, r, Options::default());
    let (c, log) = noting_client(&s);
    assert_eq!(c.call("a", "warm").wait().unwrap(), "warm");
    const N: usize = 200;
    for i in 0..N {
        for cmd in ["a", "b"] {
            let l = log.clone();
            let text = format!("{cmd}{i}");
            let call = zs_core::Call::Console {
                cmd: cmd.into(),
                text: text.as_str().into(),
            };
            c.call_with(call, None, move |r| {
                assert!(r.is_ok(), "{r:?}");
                l.lock().unwrap().push(format!("reply {text}"));
            });
        }
    }
    assert!(wait_until(Duration::from_secs(20), || log
        .lock()
        .unwrap()
        .len()
        == 3 * N));
    let log = log.lock().unwrap().clone();
    let at = |e: String| log.iter().position(|x| *x == e).unwrap();
    for i in 0..N {
        let (a, note, b) = (
            at(format!("reply a{i}")),
            at(format!("note b{i}")),
            at(format!("reply b{i}")),
        );
        assert!(
            a < note && note < b,
            "{i}: a at {a}, note at {note}, b at {b}"
        );
    }
}

/// Command statistics are summed per batch on the loop thread and published
/// before the batch's answers leave: every answer the client sees is already
/// counted (checked per answer: it fails if the sums were published only
/// later, e.g. when the link goes idle; publishing right after the flush
/// instead of before it is a race this test does not catch), and the totals
/// are exact at the end.
fn batched_statistics_are_exact_once_answered(backend: Arc<dyn Backend>) {
    let mut r = Registry::new();
    r.console_delayed("a", |_, t, r| {
        let _ = r.reply_text(t);
    });
    let s = Arc::new(Setup::new(backend, r, Options::default()));
    let c = s.client();
    const N: usize = 300;
    let seen = Arc::new(AtomicUsize::new(0));
    let early = Arc::new(Mutex::new(Vec::new()));
    for i in 0..N {
        let (s, seen, early) = (s.clone(), seen.clone(), early.clone());
        let call = zs_core::Call::Console {
            cmd: "a".into(),
            text: format!("{i:04}").as_str().into(),
        };
        c.call_with(call, None, move |r| {
            assert!(r.is_ok(), "{r:?}");
            let n = seen.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            let st = s.server.stats();
            let a = st.commands.iter().find(|c| c.name == "a").unwrap();
            if a.calls < n || a.bytes_in < 4 * n || a.bytes_out < 4 * n {
                early.lock().unwrap().push((n, a.calls, a.bytes_out));
            }
        });
    }
    assert!(wait_until(Duration::from_secs(20), || seen
        .load(Ordering::SeqCst)
        == N));
    assert_eq!(
        *early.lock().unwrap(),
        vec![],
        "answers seen before counted"
    );
    let st = s.server.stats();
    let a = st.commands.iter().find(|c| c.name == "a").unwrap();
    let n = N as u64;
    assert_eq!(
        (a.calls, a.errors, a.bytes_in, a.bytes_out),
        (n, 0, 4 * n, 4 * n)
    );
}

/// `console_ref` handlers (served from the request's bytes where they lie, on
/// a busy link) answer pipelined calls correctly and in order, mixed in one
/// read with other handler forms and with errors; a handler that sends on its
/// own connection and one that starts a call on a client runs without a lock
/// held (no deadlock; the push leaves before the answer); statistics stay exact.
fn borrowed_handlers_answer_in_order(backend: Arc<dyn Backend>) {
    let other: Arc<std::sync::OnceLock<Client>> = Arc::new(std::sync::OnceLock::new());
    let relayed = Arc::new(AtomicUsize::new(0));
    let mut r = Registry::new();
    r.console_ref("echo-ref", |_, t| Ok(Cow::Borrowed(t)));
    r.console_ref("tail", |_, t| Ok(Cow::Borrowed(&t[1..])));
    r.console_ref("upper", |_, t| Ok(Cow::Owned(t.to_uppercase())));
    r.console_ref("fail", |_, t| {
        Err(zs_core::HandlerError::new(4242, format!("no {t}")))
    });
    r.console("plain", |_, t| Ok(format!("plain {t}")));
    r.console_ref("push", |p, t| {
        p.send_direct_console("note", t)
            .map_err(|e| e.to_string())?;
        Ok(Cow::Borrowed(t))
    });
    let (o, n) = (other.clone(), relayed.clone());
    r.console_ref("relay", move |_, t| {
        let n = n.clone();
        let c = o.get().ok_or("no client")?;
        let call = zs_core::Call::Console {
            cmd: "echo-ref".into(),
            text: t.into(),
        };
        c.call_with(call, None, move |r| {
            if r.is_ok() {
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(Cow::Borrowed("relayed"))
    });
    let s = Setup::new(backend, r, Options::default());
    let _ = other.set(s.client());
    let (c, log) = noting_client(&s);
    assert_eq!(c.call("echo-ref", "warm").wait().unwrap(), "warm");
    const N: usize = 200;
    const CMDS: [&str; 7] = [
        "echo-ref", "tail", "upper", "fail", "plain", "push", "relay",
    ];
    for i in 0..N {
        for cmd in CMDS {
            let l = log.clone();
            let text = format!("{cmd}{i}");
            let call = zs_core::Call::Console {
                cmd: cmd.into(),
                text: text.as_str().into(),
            };
            c.call_with(call, None, move |r| {
                let got = match r {
                    Ok(zs_core::Reply::Text(t)) => t.as_str().to_owned(),
                    Err(Error::Remote { code, message }) => format!("{code} {message}"),
                    other => format!("{other:?}"),
                };
                l.lock().unwrap().push(format!("reply {text} {got}"));
            });
        }
    }
    assert!(wait_until(Duration::from_secs(20), || log
        .lock()
        .unwrap()
        .len()
        == (CMDS.len() + 1) * N));
    assert!(wait_until(Duration::from_secs(20), || relayed
        .load(Ordering::SeqCst)
        == N));
    let log = log.lock().unwrap().clone();
    let replies: Vec<&String> = log.iter().filter(|x| x.starts_with("reply")).collect();
    let mut want = Vec::new();
    for i in 0..N {
        want.push(format!("reply echo-ref{i} echo-ref{i}"));
        want.push(format!("reply tail{i} ail{i}"));
        want.push(format!("reply upper{i} UPPER{i}"));
        want.push(format!("reply fail{i} 4242 no fail{i}"));
        want.push(format!("reply plain{i} plain plain{i}"));
        want.push(format!("reply push{i} push{i}"));
        want.push(format!("reply relay{i} relayed"));
    }
    assert_eq!(replies, want.iter().collect::<Vec<_>>());
    for i in 0..N {
        let at = |e: &str| log.iter().position(|x| x == e).unwrap();
        assert!(at(&format!("note push{i}")) < at(&format!("reply push{i} push{i}")));
    }
    let st = s.server.stats();
    let of = |name: &str| st.commands.iter().find(|c| c.name == name).unwrap().clone();
    let n = N as u64;
    let e = of("echo-ref");
    // N calls from `c` (plus its warm-up) and N relayed from the other client.
    assert_eq!((e.calls, e.errors), (2 * n + 1, 0));
    let f = of("fail");
    assert_eq!((f.calls, f.errors), (n, n));
    let u = of("upper");
    assert_eq!(
        (u.calls, u.bytes_in, u.bytes_out),
        (n, u.bytes_in, u.bytes_in)
    );
}

/// Bytes that LZ4 cannot shrink (so a frame is as long on the wire as its
/// payload): xorshift64, as lowercase letters when `text`.
fn noise(n: usize, seed: u64, text: bool) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if text {
                b'a' + (x % 26) as u8
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

/// Frames of several MiB (a ~3 MiB console request and answer, a CompleteBuffer
/// of `max_complete_buffer`, 4 MiB, each way): what zs-core's limits allow
/// completes through the security layer on every backend (session 14: over
/// epoll the layer reset a connection whose handler left more than its
/// `max_pending_plaintext`, 1 MiB, of a partial frame).
fn frames_of_several_mib_both_ways(backend: Arc<dyn Backend>) {
    let limit = zs_core::SessionConfig::default().max_complete_buffer;
    let mut r = base_registry();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    r.complete_buffer("blob", move |peer, b| {
        g.lock().unwrap().push(b.clone());
        // Back to the client, as large.
        peer.send_complete_buffer("blob", b).unwrap();
    });
    let s = Setup::new(backend, r, Options::default());
    let back = Arc::new(Mutex::new(Vec::new()));
    let mut cr = Registry::new();
    let bk = back.clone();
    cr.complete_buffer("blob", move |_, b| bk.lock().unwrap().push(b));
    let c = s.client_with(cr, Options::client());

    let text = String::from_utf8(noise(3 << 20, 7, true)).unwrap();
    let answer = c
        .call("echo", &text)
        .wait_timeout(Duration::from_secs(30))
        .unwrap();
    assert!(answer == text, "a {}-byte answer differs", answer.len());

    let blob = Bytes::from(noise(limit, 11, false));
    c.send_complete_buffer("blob", blob.clone()).unwrap();
    assert!(wait_until(Duration::from_secs(30), || !back
        .lock()
        .unwrap()
        .is_empty()));
    assert!(
        got.lock().unwrap()[..] == [blob.clone()],
        "server got it whole"
    );
    assert!(back.lock().unwrap()[..] == [blob], "client got it whole");
    // The connection lives on.
    assert_eq!(c.call("echo", "still here").wait().unwrap(), "still here");
    assert!(c.is_connected());
}

macro_rules! on_backends {
    ($($name:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        mod epoll {
            $(
                #[test]
                fn $name() {
                    let cfg = zs_io::Config { loops: 2, ..zs_io::Config::default() };
                    let b: std::sync::Arc<dyn zs_io::Backend> =
                        std::sync::Arc::new(zs_io_epoll::EpollBackend::new(cfg).unwrap());
                    super::$name(b);
                }
            )*
        }
        mod tokio {
            $(
                #[test]
                fn $name() {
                    let cfg = zs_io::Config { loops: 2, ..zs_io::Config::default() };
                    let b: std::sync::Arc<dyn zs_io::Backend> =
                        std::sync::Arc::new(zs_io_tokio::TokioBackend::new(cfg).unwrap());
                    super::$name(b);
                }
            )*
        }
    };
}

on_backends!(
    calls_of_every_form,
    delayed_responses_timeouts_and_lost_connections,
    broadcast_state_map_and_pushes,
    ordered_mode_runs_one_request_at_a_time,
    limits_keepalive_and_idle_timeouts,
    big_stream_with_progress_and_resume,
    custom_protocol_beside_commands,
    async_handler_awaits_another_server,
    psk_identity_reaches_handlers,
    inline_answers_keep_their_order_with_pushes,
    batched_statistics_are_exact_once_answered,
    borrowed_handlers_answer_in_order,
    frames_of_several_mib_both_ways,
);
