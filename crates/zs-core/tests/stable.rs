//! StableIO over real loopback sockets on the epoll backend: sessions that
//! survive their TCP connection dying.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{epoll, fast_reconnect, provider, wait_until};
use zs_core::{
    code, Client, Error, Event, Options, Reconnect, Registry, Server, Session, SessionConfig,
};
use zs_wire::{DataFrame, Frame, Text};

fn addr0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A small seeded generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The test: 10,000 commands (calls and direct sends, plus server
/// pushes) while the link is forced down 100 times from both ends at random
/// points, some in the middle of the resume handshake. Every command arrives
/// exactly once and in order; every call is answered exactly once.
#[test]
fn ten_thousand_commands_through_a_hundred_link_drops() {
    const N: u64 = 10_000;
    const DROPS: u64 = 100;
    let seed = 0x5eed_0000_2026_u64;
    let backend = epoll(2);
    let provider = provider();

    let got = Arc::new(Mutex::new(Vec::<u64>::with_capacity(N as usize)));
    let mut reg = Registry::new();
    let record = |got: &Arc<Mutex<Vec<u64>>>, peer: &zs_core::Peer, text: &str| {
        let n: u64 = text.parse().unwrap();
        got.lock().unwrap().push(n);
        // Some server→client pushes, and per-session state that must survive.
        peer.with_state(|count: &mut u64| *count += 1);
        if n % 10 == 0 {
            let _ = peer.send_direct_console("push", text);
        }
    };
    let g = got.clone();
    reg.console("cmd", move |peer, text| {
        record(&g, peer, text);
        Ok(format!("ok {text}"))
    });
    let g = got.clone();
    reg.console_delayed("slow", move |peer, text, responder| {
        record(&g, peer, text.as_str());
        // Answered later from another thread: must survive link drops too.
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(3));
            let _ = responder.reply_text(format!("ok {}", text.as_str()));
        });
    });
    let g = got.clone();
    reg.direct_console("cmd", move |peer, text| record(&g, peer, text));
    let server_opts = Options {
        idle_timeout: None,
        ..Options::default()
    };
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            provider.clone(),
        )),
        reg,
        server_opts,
        addr0(),
    )
    .unwrap();

    let pushes = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut creg = Registry::new();
    let p = pushes.clone();
    creg.direct_console("push", move |_, text| {
        p.lock().unwrap().push(text.parse().unwrap())
    });
    let client = Client::connect_stable(
        Arc::new(zs_secure::SecureBackend::new(backend.clone(), provider)),
        creg,
        fast_reconnect(),
        server.local_addr(),
    )
    .unwrap();
    assert!(client.stable_id().is_some());
    let server_peer = server.peers()[0].clone();

    type Answer = (u64, Result<String, String>);
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let mut rng = Rng(seed);
    let mut drop_at: Vec<u64> = (0..DROPS).map(|_| rng.below(N)).collect();
    drop_at.sort_unstable();
    let mut next_drop = 0;
    let mut calls = 0u64;
    let started = Instant::now();
    for n in 0..N {
        while next_drop < drop_at.len() && drop_at[next_drop] == n {
            let k = next_drop as u64;
            let before = client.links();
            if rng.below(2) == 0 {
                client.drop_link();
            } else {
                server_peer.drop_link();
            }
            if k % 4 == 0 {
                // Drop again as soon as the next connection exists: the resume
                // handshake is cut (or just finished).
                assert!(wait_until(Duration::from_secs(10), || client.links() > before));
                client.drop_link();
            }
            // The next drop hits a live, resumed link.
            let min = before + 1 + u64::from(k % 4 == 0);
            assert!(
                wait_until(Duration::from_secs(10), || client.links() >= min
                    && client.is_online()),
                "no resume after drop {k}"
            );
            next_drop += 1;
        }
        let text = n.to_string();
        loop {
            let r = match rng.below(3) {
                0 => client.send_direct_console("cmd", &text),
                kind => {
                    let cmd = if kind == 1 || n % 7 != 0 {
                        "cmd"
                    } else {
                        "slow"
                    };
                    let a = answers.clone();
                    let call = zs_core::Call::Console {
                        cmd: Text::from(cmd),
                        text: Text::from(text.as_str()),
                    };
                    let (tx, rx) = std::sync::mpsc::channel();
                    client.call_with(call, Some(Duration::from_secs(60)), move |r| {
                        let r = r.map(|reply| format!("{reply:?}")).map_err(|e| {
                            let _ = tx.send(matches!(e, Error::Full { .. }));
                            e.to_string()
                        });
                        a.lock().unwrap().push((n, r));
                    });
                    // A call refused at once for back-pressure is retried.
                    if rx.try_recv() == Ok(true) {
                        answers.lock().unwrap().retain(|(m, _)| *m != n);
                        Err(Error::Full {
                            unacked: 0,
                            limit: 0,
                        })
                    } else {
                        calls += 1;
                        Ok(())
                    }
                }
            };
            match r {
                Ok(()) => break,
                Err(Error::Full { .. }) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("command {n}: {e}"),
            }
        }
    }
    let done = wait_until(Duration::from_secs(25), || {
        got.lock().unwrap().len() as u64 >= N
            && answers.lock().unwrap().len() as u64 >= calls
            && pushes.lock().unwrap().len() as u64 >= N / 10
    });
    let got = got.lock().unwrap().clone();
    let answers = answers.lock().unwrap().clone();
    assert!(
        done,
        "after {:?}: {} of {N} commands, {} of {calls} answers, {} pushes, {} resumes",
        started.elapsed(),
        got.len(),
        answers.len(),
        pushes.lock().unwrap().len(),
        client.resumes()
    );
    // Every command exactly once, in order.
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    // Every call answered exactly once, successfully, with its own answer.
    assert_eq!(answers.len() as u64, calls);
    let mut ids: Vec<u64> = answers.iter().map(|(n, _)| *n).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, calls, "no call completed twice");
    for (n, r) in &answers {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("call {n} failed: {e}"));
        assert!(r.contains(&format!("ok {n}")), "call {n} answered {r}");
    }
    // Server pushes: exactly once, in order.
    assert_eq!(
        *pushes.lock().unwrap(),
        (0..N).filter(|n| n % 10 == 0).collect::<Vec<_>>()
    );
    // One logical peer with its state across every reconnect.
    assert_eq!(server_peer.state::<u64>(), Some(N));
    let stats = server.stats();
    assert!(
        client.resumes() >= DROPS && stats.stable_resumed >= client.resumes(),
        "{} resumes (server {}), {} links",
        client.resumes(),
        stats.stable_resumed,
        client.links()
    );
    assert_eq!(stats.stable_sessions, 1);
    assert_eq!(server.stable_sessions(), 1);
    eprintln!(
        "{N} commands, {calls} calls, {} links, {} resumes in {:?}",
        client.links(),
        client.resumes(),
        started.elapsed()
    );
    client.close();
    assert!(wait_until(Duration::from_secs(5), || server
        .stable_sessions()
        == 0));
    assert!(
        wait_until(Duration::from_secs(5), || server.stats().connections_open
            == 0),
        "every connection of the session was counted closed: {:?}",
        server.stats()
    );
    assert_eq!(server.connection_count(), 0);
}

/// An offline session expires after `stable_offline_timeout` (counted); the
/// client's later resume is refused and its pending calls fail with the
/// distinct `SessionLost` error.
#[test]
fn offline_sessions_expire_and_late_resumes_fail_pending_calls() {
    let backend = epoll(2);
    let provider = provider();
    let mut reg = Registry::new();
    reg.console("echo", |_, t| Ok(t.to_owned()));
    let opts = Options {
        stable_offline_timeout: Duration::from_millis(200),
        ..Options::default()
    };
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            provider.clone(),
        )),
        reg,
        opts,
        addr0(),
    )
    .unwrap();
    let copts = Options {
        reconnect: Reconnect {
            initial: Duration::from_millis(800),
            max: Duration::from_millis(800),
            give_up: Duration::from_secs(10),
        },
        ..Options::client()
    };
    let client = Client::connect_stable(
        Arc::new(zs_secure::SecureBackend::new(backend, provider)),
        Registry::new(),
        copts,
        server.local_addr(),
    )
    .unwrap();
    assert_eq!(client.call("echo", "a").wait().unwrap(), "a");
    client.drop_link();
    assert!(wait_until(Duration::from_secs(2), || server
        .stable_offline()
        == 1));
    // Queued while offline; the session will be gone when the client returns.
    let pending = client.call("echo", "b");
    assert!(wait_until(Duration::from_secs(3), || server
        .stats()
        .stable_expired
        == 1));
    assert_eq!(server.stable_sessions(), 0);
    assert_eq!(
        server.connection_count(),
        0,
        "the expired peer left the map"
    );
    match pending.wait_timeout(Duration::from_secs(10)) {
        Err(Error::SessionLost(why)) => assert!(why.contains("resume refused"), "{why}"),
        other => panic!("expected SessionLost, got {other:?}"),
    }
    assert_eq!(server.stats().stable_rejected, 1);
    assert!(!client.is_connected());
    assert!(matches!(
        client.call("echo", "c").wait(),
        Err(Error::ConnectionLost(_))
    ));
}

/// Memory bounds: a session's resend buffer answers `Full` instead of growing,
/// and the server evicts the oldest offline session beyond its offline limits.
#[test]
fn memory_is_bounded_per_session_and_for_offline_sessions() {
    let backend = epoll(2);
    let provider = provider();
    let opts = Options {
        stable_max_offline: 1,
        ..Options::default()
    };
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            provider.clone(),
        )),
        Registry::new(),
        opts,
        addr0(),
    )
    .unwrap();
    let slow = Options {
        session: SessionConfig {
            stable_max_unacked: 4096,
            ..SessionConfig::default()
        },
        reconnect: Reconnect {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(30),
            give_up: Duration::from_secs(60),
        },
        ..Options::client()
    };
    let connect = || {
        Client::connect_stable(
            Arc::new(zs_secure::SecureBackend::new(
                backend.clone(),
                provider.clone(),
            )),
            Registry::new(),
            slow.clone(),
            server.local_addr(),
        )
        .unwrap()
    };
    let (a, b) = (connect(), connect());
    a.drop_link();
    assert!(wait_until(Duration::from_secs(2), || !a.is_online()));
    // Offline: sends queue up to the limit, then back-pressure.
    let payload = "x".repeat(500);
    let mut queued = 0;
    let err = loop {
        match a.send_direct_console("nothing", &payload) {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued < 100, "the resend buffer never filled");
    };
    assert!(matches!(err, Error::Full { limit: 4096, .. }), "{err}");
    assert!((6..=8).contains(&queued), "{queued} queued");
    assert!(wait_until(Duration::from_secs(2), || server
        .stable_offline()
        == 1));
    b.drop_link();
    // Two offline sessions exceed the limit of one: the oldest (a) is evicted.
    assert!(wait_until(Duration::from_secs(2), || server
        .stats()
        .stable_evicted
        == 1));
    assert_eq!(server.stable_sessions(), 1);
    assert_eq!(server.stable_offline(), 1);
}

/// Drives a sans-IO client session over a blocking secure stream until
/// `until` says stop.
fn drive(
    sock: &mut zs_secure::SecureStream<TcpStream>,
    s: &mut Session,
    mut until: impl FnMut(&Event) -> bool,
) -> bool {
    sock.get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    let mut input = BytesMut::new();
    while Instant::now() < end {
        let mut out = BytesMut::new();
        s.write_output(&mut out);
        sock.write_all(&out).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                input.extend_from_slice(&buf[..n]);
                s.handle_input(&mut input, Instant::now()).unwrap()
            }
            Err(_) => {}
        }
        while let Some(ev) = s.poll_event() {
            if until(&ev) {
                return true;
            }
        }
    }
    false
}

/// A resume with the right id but a wrong secret is refused (GONE) and counted;
/// the real session is untouched and keeps working.
#[test]
fn a_wrong_resume_secret_is_rejected() {
    let backend = epoll(2);
    let provider = provider();
    let mut reg = Registry::new();
    reg.console("echo", |_, t| Ok(t.to_owned()));
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            provider.clone(),
        )),
        reg,
        Options::default(),
        addr0(),
    )
    .unwrap();
    let client = Client::connect_stable(
        Arc::new(zs_secure::SecureBackend::new(backend, provider.clone())),
        Registry::new(),
        fast_reconnect(),
        server.local_addr(),
    )
    .unwrap();
    let sid = client.stable_id().unwrap();

    let tcp = TcpStream::connect(server.local_addr()).unwrap();
    let mut sock = zs_secure::SecureStream::connect(tcp, &*provider).unwrap();
    let mut s = Session::new(SessionConfig::default());
    s.open_link(&sock.security_info().unwrap(), Instant::now())
        .unwrap();
    assert!(drive(&mut sock, &mut s, |e| matches!(
        e,
        Event::Established { .. }
    )));
    let forged = Frame::Control {
        id: 0,
        cmd: Text::from("__@resume"),
        data: DataFrame::new()
            .with(sid)
            .with(Bytes::from(vec![0u8; 32]))
            .with(0u64),
    };
    s.send_frame(&forged, Instant::now()).unwrap();
    let mut refused = None;
    drive(&mut sock, &mut s, |e| {
        if let Event::PeerError { code, message } = e {
            refused = Some((*code, message.clone()));
            return true;
        }
        false
    });
    let (c, m) = refused.expect("the forged resume was answered");
    assert_eq!(c, code::GONE, "{m}");
    assert_eq!(server.stats().stable_rejected, 1);
    assert_eq!(
        client.call("echo", "still here").wait().unwrap(),
        "still here"
    );
    client.drop_link();
    assert_eq!(client.call("echo", "resumed").wait().unwrap(), "resumed");
    assert!(client.resumes() >= 1);
}

/// Sessions that did not ask for StableIO behave as before: a dropped link
/// fails pending calls with `ConnectionLost` and leaves nothing behind; a
/// server with StableIO disabled refuses `connect_stable`.
#[test]
fn non_stable_sessions_are_unaffected() {
    let backend = epoll(2);
    let provider = provider();
    let released = Arc::new(AtomicUsize::new(0));
    let mut reg = Registry::new();
    let r = released.clone();
    reg.console_delayed("hold", move |_, _, responder| {
        let r = r.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            if responder.reply_text("late").is_err() {
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
    });
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            provider.clone(),
        )),
        reg,
        Options::default(),
        addr0(),
    )
    .unwrap();
    let client = Client::connect(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            provider.clone(),
        )),
        Registry::new(),
        Options::client(),
        server.local_addr(),
    )
    .unwrap();
    assert_eq!(client.stable_id(), None);
    let pending = client.call("hold", "x");
    std::thread::sleep(Duration::from_millis(50));
    client.drop_link();
    assert!(matches!(
        pending.wait_timeout(Duration::from_secs(5)),
        Err(Error::ConnectionLost(_))
    ));
    assert!(wait_until(Duration::from_secs(2), || server
        .connection_count()
        == 0));
    assert_eq!(server.stable_sessions(), 0);
    assert!(wait_until(Duration::from_secs(2), || released
        .load(Ordering::SeqCst)
        == 1));

    let off = Server::start(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            provider.clone(),
        )),
        Registry::new(),
        Options {
            stable: false,
            ..Options::default()
        },
        addr0(),
    )
    .unwrap();
    match Client::connect_stable(
        Arc::new(zs_secure::SecureBackend::new(backend, provider)),
        Registry::new(),
        Options::client(),
        off.local_addr(),
    ) {
        Err(Error::Config(m)) => assert!(m.contains("refused StableIO"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// With the server gone, the client retries with backoff until its give-up
/// deadline, then fails pending calls with `SessionLost`.
#[test]
fn the_client_gives_up_after_its_deadline() {
    let backend = epoll(2);
    let provider = provider();
    let mut reg = Registry::new();
    reg.console("echo", |_, t| Ok(t.to_owned()));
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            provider.clone(),
        )),
        reg,
        Options::default(),
        addr0(),
    )
    .unwrap();
    let opts = Options {
        reconnect: Reconnect {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            give_up: Duration::from_millis(400),
        },
        ..Options::client()
    };
    let client = Client::connect_stable(
        Arc::new(zs_secure::SecureBackend::new(backend, provider)),
        Registry::new(),
        opts,
        server.local_addr(),
    )
    .unwrap();
    assert_eq!(client.call("echo", "up").wait().unwrap(), "up");
    drop(server);
    let t = Instant::now();
    let pending = client.call("echo", "never");
    match pending.wait_timeout(Duration::from_secs(10)) {
        Err(Error::SessionLost(why)) => assert!(why.contains("gave up"), "{why}"),
        other => panic!("expected SessionLost, got {other:?}"),
    }
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(!client.is_connected());
}
