//! Hostile peers beside honest clients.
//!
//! First, a crowd: garbage bytes, oversized lengths, slow-loris, handshake
//! floods and peers that never read. Each hostile connection is disconnected
//! (the server logs why) while 50 honest clients' calls all succeed.
//!
//! Then one test per attack of the December 2026 reviews
//! (`security-audit-2026-12.md` C1, C2, H3, H4, M4, M5, M9, L1 and
//! `spec-conformance-2026-12.md` G9, D1-D3), each with the reports' traffic
//! against a real [`Server`] on loopback (epoll). The memory attacks sample the
//! process RSS every 20 ms while they run and stop (and fail) as soon as it
//! grows past the attack's budget; they hold an exclusive lock so that no
//! other test of this binary runs meanwhile (RSS is per process). Honest
//! clients call `echo` during and after each attack.
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
use common::epoll;
use common::{
    console, control, exclusive, fast_reconnect, json_bomb_lz4, json_bomb_plain, provider, shared,
    wait_until, zero_stage, Got, Honest, Proxy, Raw, Watch, MIB,
};
use zs_core::{code, Client, Options, Registry, Responder, Server};
use zs_crypto::SecurityProvider;
use zs_io::Backend;
use zs_wire::{DataFrame, Frame, FrameKind, Text};

/// Reads until EOF or reset; returns true if the server ended the connection
/// before `limit`.
fn ended_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Garbage,
    Oversized,
    SlowLoris,
    Flood,
    NeverReads,
}

fn hostile(kind: Kind, addr: SocketAddr, provider: Arc<dyn SecurityProvider>) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    match kind {
        Kind::Garbage => {
            let mut x = 0x9e37_79b9_u32;
            let junk: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = s.write_all(&junk);
            ended_by_server(&mut s, Duration::from_secs(10))
        }
        Kind::Oversized => {
            // A handshake record header claiming a 2 GiB body.
            let _ = s.write_all(&[0x16, 0xff, 0xff, 0xff, 0x7f]);
            ended_by_server(&mut s, Duration::from_secs(10))
        }
        Kind::SlowLoris => {
            // A valid ClientHello, one byte every 150 ms.
            let mut hello = Vec::new();
            provider
                .new_client(Instant::now())
                .unwrap()
                .write_output(&mut hello);
            s.set_read_timeout(Some(Duration::from_millis(150)))
                .unwrap();
            let end = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 64];
            for b in hello.iter().cycle() {
                if Instant::now() > end {
                    return false;
                }
                if s.write_all(&[*b]).is_err() {
                    return true;
                }
                match s.read(&mut buf) {
                    Ok(0) => return true,
                    Err(e)
                        if e.kind() != std::io::ErrorKind::WouldBlock
                            && e.kind() != std::io::ErrorKind::TimedOut =>
                    {
                        return true
                    }
                    _ => {}
                }
            }
            false
        }
        Kind::Flood => ended_by_server(&mut s, Duration::from_secs(10)),
        Kind::NeverReads => {
            // A real handshake (zs-crypto's client session, as the layer
            // speaks it), then requests whose answers are never read.
            let mut sess = provider.new_client(Instant::now()).unwrap();
            let mut codec = zs_wire::FrameCodec::new(zs_wire::Config::default());
            let mut buf = vec![0u8; 65536];
            while sess.is_handshaking() {
                let mut out = Vec::new();
                sess.write_output(&mut out);
                s.write_all(&out).unwrap();
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return false;
                }
                sess.handle_input(&buf[..n], Instant::now()).unwrap();
            }
            let mut id = 0u64;
            s.set_write_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let text = "x".repeat(32 * 1024);
            let end = Instant::now() + Duration::from_secs(15);
            let mut out: Vec<u8> = Vec::new();
            while Instant::now() < end {
                if out.len() < 256 * 1024 {
                    id += 1;
                    let call = Frame::Console {
                        id,
                        cmd: Text::from("echo"),
                        text: Text::from(text.as_str()),
                    };
                    let mut f = bytes::BytesMut::new();
                    codec.encode(&call, &mut f).unwrap();
                    if sess.send(&f, Instant::now()).is_err() {
                        return false;
                    }
                    sess.write_output(&mut out);
                }
                // Partial writes keep the rest: the record stream stays intact.
                match s.write(&out) {
                    Ok(0) => return true,
                    Ok(n) => {
                        out.drain(..n);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        // Our send buffer is full: the server stopped reading us.
                        // Peek (never read) to see whether it closed the connection.
                        let mut probe = [0u8; 1];
                        s.set_nonblocking(true).unwrap();
                        let r = s.peek(&mut probe);
                        s.set_nonblocking(false).unwrap();
                        match r {
                            Ok(0) => return true,
                            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return true,
                            _ => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                    Err(_) => return true,
                }
            }
            false
        }
    }
}

/// `backend` with the security layer on top (the handshake deadline of `run`;
/// every peer of `run` comes from 127.0.0.1: 140 of them sit in their
/// handshake at once, and the 50 honest clients must get in).
fn secured(
    backend: Arc<dyn Backend>,
    p: &Arc<dyn SecurityProvider>,
) -> Arc<zs_secure::SecureBackend> {
    Arc::new(zs_secure::SecureBackend::with_config(
        backend,
        p.clone(),
        zs_secure::SecureConfig {
            handshake_timeout: Duration::from_secs(3),
            ..zs_secure::SecureConfig::for_io(&zs_io::Config::default())
        },
    ))
}

fn run(backend: Arc<dyn Backend>) {
    let provider = provider();
    let mut r = Registry::new();
    r.console("echo", |_, t| Ok(t.to_owned()));
    let opts = Options {
        // Longer than the layer's handshake timeout, so silent peers count as
        // handshake failures; it is what ends the peers that never read.
        idle_timeout: Some(Duration::from_secs(5)),
        max_backlog: 1 << 20,
        ..Options::default()
    };
    let layer = secured(backend, &provider);
    let server = Server::start(layer.clone(), r, opts, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();

    // 50 garbage, 50 oversized, 40 slow-loris, 50 flood, 10 never-reading.
    let kind_of = |i: usize| match i % 20 {
        0..=4 => Kind::Garbage,
        5..=9 => Kind::Oversized,
        10..=13 => Kind::SlowLoris,
        14..=18 => Kind::Flood,
        _ => Kind::NeverReads,
    };
    let hostiles: Vec<_> = (0..200)
        .map(|i| {
            let kind = kind_of(i);
            let p = provider.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || (kind, hostile(kind, addr, p)))
                .unwrap()
        })
        .collect();

    // 50 honest clients on their own backend, calling while the hostiles attack.
    // (on their own backend, as separate client machines would be).
    let client_layer = secured(client_backend(), &provider);
    // Keepalives well inside the server's 5 s idle timeout.
    let client_opts = Options {
        keepalive: Some(Duration::from_millis(500)),
        ..Options::client()
    };
    let clients: Vec<Client> = (0..50)
        .map(|_| {
            Client::connect(
                client_layer.clone(),
                Registry::new(),
                client_opts.clone(),
                addr,
            )
            .unwrap()
        })
        .collect();
    for round in 0..20 {
        let futs: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.call("echo", &format!("{round}/{i}"))))
            .collect();
        for (i, f) in futs {
            match f.wait() {
                Ok(v) => assert_eq!(v, format!("{round}/{i}")),
                Err(e) => panic!("round {round} client {i}: {e}; server: {}", server.stats()),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut ended = 0;
    for h in hostiles {
        let (kind, ok) = h.join().unwrap();
        assert!(ok, "hostile {kind:?} was not disconnected");
        ended += 1;
    }
    assert_eq!(ended, 200);
    // The honest clients are still served after the attack.
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            c.call("echo", &i.to_string()).wait().unwrap(),
            i.to_string()
        );
    }
    let stats = server.stats();
    // Garbage, oversized and slow-loris peers (140) are handshake failures (a
    // flood peer may hit the idle timeout first on an overloaded machine).
    // They never reach zs-core: the layer counts them.
    let ls = layer.stats();
    assert!(
        ls.handshake_failures + ls.handshake_timeouts + ls.record_errors >= 140,
        "{ls:?}"
    );
    assert_eq!(stats.protocol_errors, 0, "{stats}");
    let echo = &stats.commands[0];
    assert!(echo.calls >= 50 * 21, "{stats}");
}

fn client_backend() -> Arc<dyn Backend> {
    let cfg = zs_io::Config {
        loops: 1,
        ..zs_io::Config::default()
    };
    #[cfg(target_os = "linux")]
    return Arc::new(zs_io_epoll::EpollBackend::new(cfg).unwrap());
    #[cfg(not(target_os = "linux"))]
    return Arc::new(zs_io_tokio::TokioBackend::new(cfg).unwrap());
}

/// The crowd against sessions over `SecureBackend(epoll)`.
#[cfg(target_os = "linux")]
#[test]
fn hostile_peers_epoll() {
    let _g = shared();
    run(epoll(2));
}

fn tokio2() -> Arc<dyn Backend> {
    Arc::new(
        zs_io_tokio::TokioBackend::new(zs_io::Config {
            loops: 2,
            ..zs_io::Config::default()
        })
        .unwrap(),
    )
}

/// The crowd against sessions over `SecureBackend(tokio)`.
#[test]
fn hostile_peers_tokio() {
    let _g = shared();
    run(tokio2());
}

// ---- attacks of the December 2026 reviews -------------------------------------------

#[cfg(target_os = "linux")]
fn start(p: &Arc<dyn SecurityProvider>, r: Registry, o: Options, loops: usize) -> Server {
    Server::start(sec(epoll(loops), p), r, o, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// `backend` under the security layer of `p` (default bounds).
fn sec(backend: Arc<dyn Backend>, p: &Arc<dyn SecurityProvider>) -> Arc<dyn Backend> {
    Arc::new(zs_secure::SecureBackend::new(backend, p.clone()))
}

/// Connects a plain client (no StableIO) of the server at `addr` on `backend`.
fn connect(
    backend: Arc<dyn Backend>,
    p: &Arc<dyn SecurityProvider>,
    addr: SocketAddr,
) -> Result<Client, zs_core::Error> {
    Client::connect(sec(backend, p), Registry::new(), Options::client(), addr)
}

/// A plain client of `server` on `backend` (a separate client machine).
fn honest(backend: &Arc<dyn Backend>, p: &Arc<dyn SecurityProvider>, server: &Server) -> Client {
    connect(backend.clone(), p, server.local_addr()).expect("an honest client connects")
}

/// A StableIO client of the server at `addr` on `backend` that reconnects
/// fast.
fn stable_client(
    backend: Arc<dyn Backend>,
    p: &Arc<dyn SecurityProvider>,
    addr: SocketAddr,
) -> Client {
    Client::connect_stable(sec(backend, p), Registry::new(), fast_reconnect(), addr).unwrap()
}

/// An honest client on its own backend calling `echo` every 20 ms in the
/// background.
fn honest_caller(p: &Arc<dyn SecurityProvider>, server: &Server) -> Honest {
    let cb = client_backend();
    Honest::start(honest(&cb, p, server), Duration::from_millis(20))
}

/// `c`'s `echo` call "after" (5 s timeout) is answered "after"; `what` heads
/// the failure message.
fn assert_echo_after(c: &Client, what: &str) {
    let r = c
        .call_timeout("echo", "after", Some(Duration::from_secs(5)))
        .wait();
    assert_eq!(r.as_deref().ok(), Some("after"), "{what}: {r:?}");
}

/// Stops the honest caller (all its calls must have succeeded) and checks
/// that a new client's `echo` works.
fn honest_after(caller: Honest, what: &str, p: &Arc<dyn SecurityProvider>, server: &Server) {
    caller.finish(what);
    fresh_echo(what, p, server);
}

/// A new honest client connects and its `echo` works.
fn fresh_echo(what: &str, p: &Arc<dyn SecurityProvider>, server: &Server) {
    let c = connect(client_backend(), p, server.local_addr())
        .unwrap_or_else(|e| panic!("{what}: a new client cannot connect after the attack: {e}"));
    assert_echo_after(&c, &format!("{what}: a new client's call after the attack"));
}

fn echo_registry() -> Registry {
    let mut r = Registry::new();
    r.console("echo", |_, t| Ok(t.to_owned()));
    r
}

/// A server with default options and only `echo`, on `loops` event loops.
#[cfg(target_os = "linux")]
fn echo_server(p: &Arc<dyn SecurityProvider>, loops: usize) -> Server {
    start(p, echo_registry(), Options::default(), loops)
}

/// Requests to `cmd` held unanswered: registers a delayed handler that counts
/// them and keeps their responders.
fn holding(r: &mut Registry, cmd: &str) -> (Arc<Mutex<Vec<Responder>>>, Arc<AtomicUsize>) {
    let held: Arc<Mutex<Vec<Responder>>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let (h, n) = (held.clone(), seen.clone());
    r.console_delayed(cmd, move |_, _, resp| {
        n.fetch_add(1, Ordering::AcqRel);
        h.lock().unwrap().push(resp);
    });
    (held, seen)
}

/// Answers (ConsoleResponse, StreamResponse, Error) in `got`, by request id.
fn answered(got: &[Got]) -> std::collections::BTreeMap<u64, Got> {
    got.iter()
        .filter(|g| g.is_answer())
        .map(|g| (g.id, g.clone()))
        .collect()
}

/// A raw attacker of `server` that was granted StableIO.
fn stable_raw(server: &Server, p: &Arc<dyn SecurityProvider>) -> Raw {
    let mut a = Raw::connect(server.local_addr(), p);
    a.stable();
    a
}

/// Queues `calls` Console requests (ids 1..=calls) for `cmd` as StableIO
/// records.
fn queue_records(a: &mut Raw, calls: u64, cmd: &str, text: &str) {
    for id in 1..=calls {
        a.queue_record(&console(id, cmd, text));
    }
}

/// Collects the answers to `calls` requests that arrive within 2 s,
/// acknowledging nothing: at least 7 must (G9); returns them and how many
/// requests they answer.
fn answers_before_ack(a: &mut Raw, calls: u64) -> (Vec<Got>, usize) {
    let mut got = Vec::new();
    a.pump_until(Duration::from_secs(2), |r| {
        got.extend(r.take_answers());
        false
    });
    let before = answered(&got).len();
    assert!(
        before >= 7,
        "G9: only {before} of {calls} answers before any ack"
    );
    (got, before)
}

/// Acknowledges what arrives (into `got`) until `calls` requests are answered
/// or `limit` passed; true if they all were.
fn ack_until_answered(a: &mut Raw, got: &mut Vec<Got>, calls: u64, limit: Duration) -> bool {
    a.pump_until(limit, |r| {
        got.extend(r.take_answers());
        r.ack();
        r.pump(Duration::from_millis(10));
        answered(got).len() as u64 >= calls
    })
}

/// Sends `bytes` up to 20 times (stopping when `watch` trips or the server
/// closes), flushing within `flush` and pumping for `pause` after each, and
/// returns the largest value `sample` took after a round.
fn send_rounds(
    a: &mut Raw,
    watch: &Watch,
    bytes: &[u8],
    flush: Duration,
    pause: Duration,
    sample: impl Fn() -> u64,
) -> u64 {
    let mut most = 0u64;
    for _ in 0..20 {
        if watch.tripped() || a.closed.is_some() {
            break;
        }
        a.queue_plain(bytes);
        a.flush(flush);
        a.pump(pause);
        most = most.max(sample());
    }
    most
}

/// Answers every held request with `text`.
fn reply_all(held: &Mutex<Vec<Responder>>, text: &str) {
    let batch: Vec<Responder> = std::mem::take(&mut *held.lock().unwrap());
    for resp in batch {
        let _ = resp.reply_text(text);
    }
}

/// C1: StableIO `SeqResend` amplification. 7 answers of 1 MiB are held
/// unacknowledged, then records of 13,107 `SeqResend{1,7}` frames (one 64 KiB
/// record each) arrive, 20 of them. Before the fix each frame re-sent all 7
/// MiB inside one read (report: RSS past 1 GB in 0.9 s); now each record goes
/// out again at most once per link and decoding stops while more than
/// `max_pending_output` waits. Budget: 256 MiB of process RSS.
#[cfg(target_os = "linux")]
#[test]
fn c1_seq_resend_amplification() {
    let _x = exclusive();
    let p = provider();
    let server = echo_server(&p, 2);
    let caller = honest_caller(&p, &server);

    let mut a = stable_raw(&server, &p);
    let text = "x".repeat(1 << 20);
    queue_records(&mut a, 7, "echo", &text);
    assert!(
        a.pump_until(Duration::from_secs(20), |r| r.got_seq >= 7),
        "C1 setup: 7 answers of 1 MiB did not arrive (got {}, closed: {:?})",
        a.got_seq,
        a.closed
    );
    let held = answered(&a.take_answers());
    assert_eq!(held.len(), 7, "C1 setup: {held:?}");
    assert!(
        held.values().all(|g| g.len == 1 << 20),
        "C1 setup: {held:?}"
    );

    let resend = a.encode(&Frame::SeqResend { from: 1, to: 7 });
    let record: Vec<u8> = resend
        .iter()
        .copied()
        .cycle()
        .take(resend.len() * (65_535 / resend.len()))
        .collect();
    assert_eq!(record.len() / resend.len(), 13_107);
    // From now on what the server sends is read and dropped (never acknowledged).
    a.discard = true;
    let watch = Watch::start("C1", 256 * MIB);
    let unacked = send_rounds(
        &mut a,
        &watch,
        &record,
        Duration::from_secs(2),
        Duration::from_millis(50),
        || server.stats().stable_unacked_bytes,
    );
    a.pump(Duration::from_millis(300));
    let (read, closed) = (a.bytes_read, a.closed.clone());
    drop(a);
    watch.finish();
    eprintln!(
        "[C1] the attacker read {} MiB; closed: {closed:?}",
        read / MIB
    );
    // 7 answers, at most `stable_max_unacked` kept plus as much parked.
    assert!(
        unacked <= 16 * MIB,
        "C1: {unacked} bytes of StableIO records held for one session"
    );
    honest_after(caller, "C1", &p, &server);
}

/// C2: BatchStream staging. Stages of 16 MiB of zeros, LZ4-compressed to
/// ~66 KB each, never final. A default server refuses compressed frames; a
/// server that accepts them answers a stage for an unregistered command 404
/// at once and stages nothing, caps what a registered batch command stages at
/// `max_batch_bytes` (413), and drops an idle batch (408). Before the fix 187
/// such stages took RSS past 2 GB; here 20 per command against a 256 MiB budget.
#[cfg(target_os = "linux")]
#[test]
fn c2_batch_staging_budget() {
    let _x = exclusive();
    let p = provider();
    let registry = || {
        let mut r = echo_registry();
        r.batch("sum", |_, frames| {
            Ok(DataFrame::new().with(frames.len() as u64))
        });
        r
    };
    const STAGE: usize = (16 << 20) - 256;

    // A server with default options refuses a compressed frame.
    {
        let server = start(&p, registry(), Options::default(), 2);
        let watch = Watch::start("C2 (default options)", 256 * MIB);
        let mut a = Raw::connect(server.local_addr(), &p);
        let stage = zero_stage(1, "nosuch", STAGE);
        assert!(stage.len() < 70_000, "{}", stage.len());
        a.queue_plain(&stage);
        let closed = a.wait_closed(Duration::from_secs(5));
        let got = a.take_answers();
        drop(a);
        watch.finish();
        assert!(
            closed,
            "C2: a server with default options accepted an LZ4-compressed frame \
             (16 MiB for 66 KB); answers: {got:?}"
        );
        fresh_echo("C2 (default options)", &p, &server);
    }

    let mut o = Options::default();
    o.session.wire.accept_compressed = true;
    o.session.max_batch_bytes = 20 << 20;
    o.session.batch_idle_timeout = Duration::from_secs(1);
    let server = start(&p, registry(), o, 2);
    let caller = honest_caller(&p, &server);
    let watch = Watch::start("C2", 256 * MIB);
    // Sends stage `id` for `cmd` up to 20 times, then waits for its answer
    // (and the watch must not have tripped); `staged` tracks the most staged.
    let stage_until_answered = |a: &mut Raw, id: u64, cmd: &str, staged: &mut u64| {
        let stage = zero_stage(id, cmd, STAGE);
        let most = send_rounds(
            a,
            &watch,
            &stage,
            Duration::from_secs(5),
            Duration::from_millis(20),
            || server.stats().batch_staged_bytes,
        );
        *staged = (*staged).max(most);
        let e = a.wait_for(Duration::from_secs(5), |g| g.id == id && g.is_answer());
        watch.check();
        e
    };
    let mut staged = 0u64;

    // A command with no batch handler: 404 at the first stage, nothing staged.
    let mut a = Raw::connect(server.local_addr(), &p);
    let e = stage_until_answered(&mut a, 1, "nosuch", &mut staged);
    assert_eq!(
        e.as_ref().map(|g| g.code),
        Some(code::UNKNOWN_COMMAND),
        "C2: stages for an unregistered command must be answered 404 at the first stage \
         (got {e:?}, closed: {:?})",
        a.closed
    );
    assert_eq!(
        staged, 0,
        "C2: {staged} bytes staged for a command that has no batch handler"
    );
    drop(a);

    // A registered batch command: at most `max_batch_bytes` staged, then 413.
    let mut a = Raw::connect(server.local_addr(), &p);
    let e = stage_until_answered(&mut a, 2, "sum", &mut staged);
    assert_eq!(
        e.as_ref().map(|g| g.code),
        Some(code::TOO_LARGE),
        "C2: a batch over max_batch_bytes (20 MiB) must be refused with 413 \
         (got {e:?}, closed: {:?})",
        a.closed
    );
    assert!(
        staged <= 20 * MIB,
        "C2: {staged} bytes staged, over max_batch_bytes (20 MiB)"
    );

    // A batch left open is dropped after `batch_idle_timeout` (1 s) with 408.
    a.queue(&Frame::BatchStream {
        id: 3,
        cmd: Text::from("sum"),
        last: false,
        data: DataFrame::new().with(1u64),
    });
    let e = a.wait_for(Duration::from_secs(5), |g| g.id == 3 && g.is_answer());
    assert_eq!(
        e.as_ref().map(|g| g.code),
        Some(code::TIMED_OUT),
        "C2: an idle batch must be dropped with 408 (got {e:?}, closed: {:?})",
        a.closed
    );
    drop(a);
    watch.finish();
    assert!(
        wait_until(Duration::from_secs(2), || server.stats().batch_staged_bytes
            == 0),
        "C2: staged bytes not released: {}",
        server.stats().batch_staged_bytes
    );
    honest_after(caller, "C2", &p, &server);
}

/// H3: a request flood whose answers are delayed. 20,000 Console requests of
/// 4 KiB to a delayed handler that has not answered yet: at `max_in_flight`
/// (64 here) the connection stops being read, so at most 64 (plus what one
/// read burst of 256 KiB holds) reach the handler; once answers go out,
/// reading resumes.
/// And a slow HPC handler with a queue of 8 jobs answers the overflow 503.
#[cfg(target_os = "linux")]
#[test]
fn h3_request_flood() {
    let _x = exclusive();
    let p = provider();
    let mut r = echo_registry();
    let (held, seen) = holding(&mut r, "hold");
    let o = Options {
        max_in_flight: 64,
        ..Options::default()
    };
    let server = start(&p, r, o, 2);
    let caller = honest_caller(&p, &server);
    let watch = Watch::start("H3", 256 * MIB);

    let mut a = Raw::connect(server.local_addr(), &p);
    let text = "r".repeat(4096);
    let one = a.encode(&console(1, "hold", &text)).len();
    let mut sent = 0u64;
    let end = Instant::now() + Duration::from_secs(3);
    while sent < 20_000 && Instant::now() < end && !watch.tripped() && a.closed.is_none() {
        if a.unsent() < 256 * 1024 {
            for _ in 0..64 {
                sent += 1;
                a.queue(&console(sent, "hold", &text));
            }
        }
        if !a.step() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let dispatched = seen.load(Ordering::Acquire);
    // The cap, plus what one read burst (4 × 64 KiB) holds.
    let cap = 64 + 4 * 65_536 / one + 16;
    eprintln!("[H3] {sent} requests queued, {dispatched} reached the handler");
    watch.check();
    assert!(
        dispatched <= cap,
        "H3: {dispatched} of {sent} requests reached a handler that answered none of them \
         (max_in_flight 64): the server kept reading"
    );

    // Answer what is held: reading resumes and more requests come in.
    let mut answers = 0usize;
    let end = Instant::now() + Duration::from_secs(5);
    while answers < 4 * cap && Instant::now() < end && a.closed.is_none() {
        reply_all(&held, "ok");
        a.pump(Duration::from_millis(10));
        answers += a.take_answers().len();
    }
    assert!(
        answers >= 4 * cap,
        "H3: only {answers} answers after the handler answered: reading did not resume \
         (closed: {:?})",
        a.closed
    );
    drop(a);
    reply_all(&held, "ok");
    watch.finish();
    caller.finish("H3");
    drop(server);

    // A slow HPC handler, one worker, a queue of 8 jobs: 100 requests at once
    // get 503 beyond what the queue holds, and every one is answered.
    let mut r = echo_registry();
    r.console_hpc("slow", |_, t| {
        std::thread::sleep(Duration::from_millis(20));
        Ok(t.to_owned())
    });
    let o = Options {
        hpc_threads: 1,
        hpc_queue: 8,
        ..Options::default()
    };
    let server = start(&p, r, o, 2);
    let mut a = Raw::connect(server.local_addr(), &p);
    for id in 1..=100 {
        a.queue(&console(id, "slow", "x"));
    }
    let mut got = Vec::new();
    a.pump_until(Duration::from_secs(10), |r| {
        got.extend(r.take_answers());
        got.len() >= 100
    });
    let busy = got.iter().filter(|g| g.code == code::BUSY).count();
    let ok = got
        .iter()
        .filter(|g| g.kind == FrameKind::ConsoleResponse)
        .count();
    eprintln!(
        "[H3] HPC: {ok} answered, {busy} refused busy; {:?}",
        got.iter()
            .filter(|g| g.kind == FrameKind::Error && g.code != code::BUSY)
            .take(3)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        got.len(),
        100,
        "H3: {} of 100 HPC requests answered",
        got.len()
    );
    assert!(
        busy > 0 && ok >= 8,
        "H3: 100 requests for one slow worker with hpc_queue 8: {ok} answered, {busy} refused 503"
    );
    assert!(server.stats().busy_refusals >= busy as u64);
}

/// H4: a JSON bomb. A Stream request to an unknown command carrying one JSON
/// value `[0,0,…]` of 8,000,000 elements (16 MB of text), from 4 connections
/// at once: LZ4-compressed (65,5xx B each, 3 per connection) to a server that
/// accepts compression, then plain to a default one. Before the fix each was
/// parsed into ~8 M `serde_json::Value`s (report: 563 MB peak); now it is
/// refused by `max_json` or validated without building values. Every
/// connection gets an answer or is closed; budget 256 MiB.
#[cfg(target_os = "linux")]
#[test]
fn h4_json_bomb() {
    let _x = exclusive();
    let p = provider();
    const ELEMENTS: usize = 8_000_000;

    let attack = |what: &str, server: &Server, bomb: Arc<Vec<u8>>, per_conn: u64| {
        let caller = honest_caller(&p, server);
        let watch = Watch::start(what, 256 * MIB);
        let attackers: Vec<_> = (0..4)
            .map(|_| {
                let (addr, p, bomb, w) =
                    (server.local_addr(), p.clone(), bomb.clone(), watch.handle());
                std::thread::spawn(move || {
                    let mut a = Raw::connect(addr, &p);
                    for _ in 0..per_conn {
                        if w.tripped() || a.closed.is_some() {
                            break;
                        }
                        a.queue_plain(&bomb);
                    }
                    let mut got = Vec::new();
                    a.pump_until(Duration::from_secs(30), |r| {
                        got.extend(r.take_answers());
                        w.tripped() || got.len() as u64 >= per_conn
                    });
                    (got, a.closed.clone())
                })
            })
            .collect();
        for t in attackers {
            let (got, closed) = t.join().unwrap();
            eprintln!(
                "[{what}] answers {:?}, closed: {closed:?}",
                got.iter()
                    .map(|g| (g.code, g.text.as_str()))
                    .collect::<Vec<_>>()
            );
            if watch.tripped() {
                continue;
            }
            assert!(
                !got.is_empty() || closed.is_some(),
                "{what}: a JSON bomb got no answer and the connection stayed open"
            );
            assert!(
                got.iter().all(|g| g.kind == FrameKind::Error),
                "{what}: {got:?}"
            );
        }
        watch.finish();
        honest_after(caller, what, &p, server);
    };

    let mut o = Options::default();
    o.session.wire.accept_compressed = true;
    let server = start(&p, echo_registry(), o, 2);
    let bomb = Arc::new(json_bomb_lz4(1, "nosuch", ELEMENTS));
    assert!(bomb.len() < 70_000, "{}", bomb.len());
    attack("H4 (compressed)", &server, bomb, 3);
    drop(server);

    let server = echo_server(&p, 2);
    let bomb = Arc::new(json_bomb_plain(1, "nosuch", ELEMENTS));
    assert!(bomb.len() > 16_000_000 && bomb.len() < 16 << 20);
    attack("H4 (plain)", &server, bomb, 1);
}

/// M4: a handler that panics ends only its own connection: on a server with
/// one event loop, the caller's call fails at once, another client of the
/// same loop keeps working, and new connections are accepted.
#[cfg(target_os = "linux")]
#[test]
fn m4_panicking_handler() {
    let _x = exclusive();
    let p = provider();
    let mut r = echo_registry();
    r.console("boom", |_, _| panic!("boom: a handler bug"));
    let server = start(&p, r, Options::default(), 1);
    let cb = client_backend();
    let other = honest(&cb, &p, &server);
    assert_eq!(other.call("echo", "before").wait().unwrap(), "before");

    let victim = honest(&cb, &p, &server);
    let t0 = Instant::now();
    let r = victim
        .call_timeout("boom", "x", Some(Duration::from_secs(5)))
        .wait();
    let took = t0.elapsed();
    assert!(
        r.is_err() && !matches!(r, Err(zs_core::Error::TimedOut)) && took < Duration::from_secs(4),
        "M4: the call to a panicking handler must fail at once (its connection ends), \
         got {r:?} after {took:?}"
    );
    assert_echo_after(
        &other,
        "M4: another connection of the same event loop after the panic",
    );
    fresh_echo("M4", &p, &server);
}

/// M5: 64 bytes injected into a StableIO session's TCP link (a forged Data
/// record: MAC failure at the server) cost the link, not the session: the
/// client resumes on a new connection, a call pending across it completes,
/// later calls work.
#[cfg(target_os = "linux")]
#[test]
fn m5_link_error_is_link_loss() {
    let _g = shared();
    let p = provider();
    let mut r = echo_registry();
    r.console_delayed("later", |_, t, resp| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let _ = resp.reply_text(t);
        });
    });
    let server = start(&p, r, Options::default(), 2);
    let proxy = Proxy::start(server.local_addr());
    let cb = client_backend();
    let client = stable_client(cb, &p, proxy.addr);
    assert_eq!(client.call("echo", "before").wait().unwrap(), "before");
    let pending = client.call_timeout("later", "survives", Some(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(50));

    // A Data record header (type 0x17, 59 bytes) and 59 random bytes.
    let mut x = 0x2545_f491_u32;
    let mut garbage = vec![0x17, 59, 0, 0, 0];
    garbage.extend((0..59).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    assert_eq!(garbage.len(), 64);
    proxy.inject(garbage);
    assert!(
        wait_until(Duration::from_secs(3), || proxy
            .injected
            .load(Ordering::Acquire)
            == 1),
        "M5: the proxy did not inject"
    );
    let resumed = wait_until(Duration::from_secs(5), || client.resumes() >= 1);
    let r = pending.wait();
    assert!(
        resumed && r.as_deref().ok() == Some("survives"),
        "M5: a record error on the link must be survived like a lost link \
         (resumes {}, pending call: {r:?}, connections {})",
        client.resumes(),
        proxy.connections.load(Ordering::Acquire)
    );
    assert_eq!(client.call("echo", "after").wait().unwrap(), "after");
    assert!(server.stats().stable_resumed >= 1, "{}", server.stats());
}

/// An `echo` server whose StableIO sessions may hold 16 MiB unacknowledged in
/// all (`stable_max_unacked_total`).
#[cfg(target_os = "linux")]
fn m9_server(p: &Arc<dyn SecurityProvider>) -> Server {
    let o = Options {
        stable_max_unacked_total: 16 << 20,
        ..Options::default()
    };
    start(p, echo_registry(), o, 2)
}

/// M9: StableIO sessions that do not acknowledge, 6 of them, each asking for
/// 8 answers of 1 MiB (what one session may keep and park): the records kept
/// (and parked) by all of them stay within `stable_max_unacked_total` (16 MiB
/// here; the 503 refusals themselves are small records); answers beyond are
/// refused 503 at once, never silently dropped; once acknowledged, every call
/// has its answer and the budget is free again for an honest StableIO client.
#[cfg(target_os = "linux")]
#[test]
fn m9_global_unacked_budget() {
    let _x = exclusive();
    let p = provider();
    let server = m9_server(&p);
    let cb = client_backend();
    let caller = Honest::start(honest(&cb, &p, &server), Duration::from_millis(20));
    let watch = Watch::start("M9", 256 * MIB);

    const N: usize = 6;
    const CALLS: u64 = 8;
    let text = "m".repeat(1 << 20);
    let mut attackers: Vec<Raw> = (0..N).map(|_| stable_raw(&server, &p)).collect();
    for a in &mut attackers {
        queue_records(a, CALLS, "echo", &text);
    }
    let mut got: Vec<Vec<Got>> = vec![Vec::new(); N];
    let mut held = 0u64;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end && !watch.tripped() {
        for (a, g) in attackers.iter_mut().zip(&mut got) {
            a.step();
            g.extend(a.take_answers());
        }
        held = held.max(server.stats().stable_unacked_bytes);
        std::thread::sleep(Duration::from_millis(1));
    }
    watch.check();
    let busy: usize = got
        .iter()
        .map(|g| g.iter().filter(|g| g.code == code::BUSY).count())
        .sum();
    eprintln!(
        "[M9] held at most {} KiB; answers (id, code) per attacker {:?}; closed {:?}",
        held / 1024,
        got.iter()
            .map(|g| g.iter().map(|g| (g.id, g.code)).collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        attackers
            .iter()
            .map(|a| a.closed.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        held <= 16 * MIB + 64 * 1024,
        "M9: {held} bytes of StableIO records held, over stable_max_unacked_total (16 MiB)"
    );
    assert!(
        busy > 0,
        "M9: {} answers of 1 MiB for sessions that never acknowledge, 16 MiB in total: \
         none was refused 503",
        N as u64 * CALLS
    );

    // Acknowledging releases the rest: every call gets its answer or a 503.
    for (i, (a, g)) in attackers.iter_mut().zip(&mut got).enumerate() {
        let done = ack_until_answered(a, g, CALLS, Duration::from_secs(10));
        assert!(
            done,
            "M9: attacker {i} got answers for ids {:?} of 1..={CALLS} after acknowledging \
             (closed: {:?})",
            answered(g).keys().collect::<Vec<_>>(),
            a.closed
        );
        a.ack();
        a.flush(Duration::from_secs(1));
    }
    let released = wait_until(Duration::from_secs(3), || {
        server.stats().stable_unacked_bytes <= 64 * 1024
    });
    assert!(
        released,
        "M9: {} bytes still charged to the endpoint after every record was acknowledged",
        server.stats().stable_unacked_bytes
    );
    let stable = stable_client(cb.clone(), &p, server.local_addr());
    let r = stable
        .call_timeout("echo", &text, Some(Duration::from_secs(5)))
        .wait();
    assert!(
        r.as_ref().is_ok_and(|v| v.len() == 1 << 20),
        "M9: an honest StableIO client after the attack: {:?}",
        r.map(|v| v.len())
    );
    drop(attackers);
    watch.finish();
    caller.finish("M9");
}

/// M9, attackers that vanish: two StableIO sessions fill the endpoint's 16 MiB
/// of `stable_max_unacked_total` without acknowledging, then drop their
/// connections. Their offline sessions must not starve everyone else until
/// `stable_offline_timeout` (60 s): an honest StableIO client's 1 MiB call
/// still succeeds within 5 s.
#[cfg(target_os = "linux")]
#[test]
fn m9_offline_sessions_do_not_starve_others() {
    let _x = exclusive();
    let p = provider();
    let server = m9_server(&p);
    let text = "o".repeat(1 << 20);
    for _ in 0..2 {
        let mut a = stable_raw(&server, &p);
        queue_records(&mut a, 8, "echo", &text);
        let mut n = 0;
        a.pump_until(Duration::from_secs(5), |r| {
            n += r.take_answers().len();
            n >= 7
        });
    }
    // Each went offline holding ~9 MiB: kept, or evicted because offline
    // sessions may hold at most half of the endpoint's budget.
    assert!(
        wait_until(Duration::from_secs(3), || {
            server.stable_offline() as u64 + server.stats().stable_evicted == 2
        }),
        "M9: {} offline sessions, {} evicted",
        server.stable_offline(),
        server.stats().stable_evicted
    );
    assert!(
        server.stats().stable_unacked_bytes <= 8 << 20,
        "M9: offline sessions hold {} bytes, over half the budget",
        server.stats().stable_unacked_bytes
    );
    let held = server.stats().stable_unacked_bytes;
    let stable = stable_client(client_backend(), &p, server.local_addr());
    let r = stable
        .call_timeout("echo", &text, Some(Duration::from_secs(5)))
        .wait();
    assert!(
        r.as_ref().is_ok_and(|v| v.len() == 1 << 20),
        "M9: with two vanished sessions holding {} KiB of the 16 MiB budget, an honest \
         StableIO client's 1 MiB call: {:?} ({})",
        held / 1024,
        r.map(|v| v.len()),
        server.stats()
    );
}

/// G9: an answer that does not fit the StableIO resend buffer is never
/// silently lost. (a) An honest StableIO client, 3 × 12 concurrent calls
/// answered with 1 MiB: all succeed (12 concurrent echo calls of 1 MiB may
/// also be refused locally, `Full`, by the client's own resend buffer). (b) A raw session that does not acknowledge sends
/// those 12 calls: 7 answers come; after `SeqAck{7}` the others come too.
/// (c) 20 answers of 1 MiB produced at once for an honest StableIO client
/// (it acknowledges as the protocol says): every call completes (answer or
/// 503), none waits for its timeout. (d) The same burst for a session that
/// does not acknowledge (for 2 s): 7 go out, the next are parked, those that
/// cannot be parked either are refused 503; once acknowledged, every call
/// has its answer.
#[cfg(target_os = "linux")]
#[test]
fn g9_answer_that_does_not_fit() {
    let _x = exclusive();
    let p = provider();
    let mut r = echo_registry();
    let (held, _) = holding(&mut r, "big");
    r.console("blow", |_, _| Ok("b".repeat(1 << 20)));
    let server = start(&p, r, Options::default(), 2);
    let text = "g".repeat(1 << 20);

    // (a) 12 MiB of requests do not fit the client's own 8 MiB: a call may
    // be refused locally (Full), never left without an answer.
    let client = stable_client(client_backend(), &p, server.local_addr());
    for round in 0..3 {
        let calls: Vec<_> = (0..12)
            .map(|_| client.call_timeout("echo", &text, Some(Duration::from_secs(10))))
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.wait();
            assert!(
                matches!(&r, Ok(v) if v.len() == 1 << 20)
                    || matches!(r, Err(zs_core::Error::Full { .. })),
                "G9: round {round}, concurrent echo call {i} of 1 MiB over StableIO: {:?}",
                r.map(|v| v.len())
            );
        }
        // Small requests, answers of 1 MiB: 12 MiB of answers for 8 MiB of
        // room, and every call succeeds (answers wait for acks).
        let calls: Vec<_> = (0..12)
            .map(|_| client.call_timeout("blow", "x", Some(Duration::from_secs(10))))
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.wait();
            assert!(
                matches!(&r, Ok(v) if v.len() == 1 << 20),
                "G9: round {round}, concurrent call {i} answered with 1 MiB over StableIO: {:?}",
                r.map(|v| v.len())
            );
        }
    }
    drop(client);

    // (b)
    let mut a = stable_raw(&server, &p);
    queue_records(&mut a, 12, "echo", &text);
    let (mut got, before) = answers_before_ack(&mut a, 12);
    let done = ack_until_answered(&mut a, &mut got, 12, Duration::from_secs(5));
    assert!(
        done,
        "G9: 12 calls of 1 MiB, {before} answered before the first ack; after acknowledging, \
         only ids {:?} were ever answered (closed: {:?})",
        answered(&got).keys().collect::<Vec<_>>(),
        a.closed
    );
    drop(a);

    // (c) A burst of 20 answers of 1 MiB for an honest StableIO client (it
    // acknowledges as the protocol says): every call completes, with its
    // answer or a 503.
    let client = stable_client(client_backend(), &p, server.local_addr());
    let calls: Vec<_> = (0..20)
        .map(|_| client.call_timeout("big", "x", Some(Duration::from_secs(10))))
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || held.lock().unwrap().len() >= 20),
        "G9: the honest client's 20 requests did not reach the handler"
    );
    reply_all(&held, &text);
    for (i, c) in calls.into_iter().enumerate() {
        let r = c.wait();
        assert!(
            matches!(&r, Ok(v) if v.len() == 1 << 20)
                || matches!(&r, Err(zs_core::Error::Remote { code, .. }) if *code == code::BUSY),
            "G9: a burst of 20 answers of 1 MiB to an honest StableIO client: call {i}: {:?} \
             (resumes {})",
            r.map(|v| v.len()),
            client.resumes()
        );
    }

    // (d) The same burst for a session that does not acknowledge for 2 s.
    let mut a = stable_raw(&server, &p);
    queue_records(&mut a, 20, "big", "x");
    assert!(
        a.pump_until(Duration::from_secs(5), |_| held.lock().unwrap().len() >= 20),
        "G9: the 20 requests did not reach the handler"
    );
    reply_all(&held, &text);
    let (mut got, before) = answers_before_ack(&mut a, 20);
    let done = ack_until_answered(&mut a, &mut got, 20, Duration::from_secs(5));
    let all = answered(&got);
    assert!(
        done,
        "G9: 20 answers of 1 MiB, {before} delivered before the first ack; after acknowledging, \
         only ids {:?} of 1..=20 were ever answered (closed: {:?})",
        all.keys().collect::<Vec<_>>(),
        a.closed
    );
    // 20 MiB do not fit 8 MiB kept plus 8 MiB parked: some are refused 503,
    // the others arrive whole.
    let busy = all.values().filter(|g| g.code == code::BUSY).count();
    assert!(
        busy > 0
            && all.values().all(|g| g.code == code::BUSY
                || (g.kind == FrameKind::ConsoleResponse && g.len == 1 << 20)),
        "G9: 20 answers of 1 MiB for 16 MiB of room: {all:?}"
    );
    eprintln!("[G9] {before} answers before any ack; {busy} of 20 refused 503");
    drop(a);
}

/// D1: `Control{id 7, "__@stable"}` is answered Error 501 like any Control
/// with an id (PROTOCOL.md 3.2), not granted.
#[cfg(target_os = "linux")]
#[test]
fn d1_control_with_id_is_501() {
    let _g = shared();
    let p = provider();
    let server = echo_server(&p, 1);
    let mut a = Raw::connect(server.local_addr(), &p);
    a.queue(&control(7, "__@stable", DataFrame::new()));
    let g = a.wait_for(Duration::from_secs(3), |g| {
        g.kind == FrameKind::Control || g.kind == FrameKind::Error
    });
    assert!(
        g.as_ref().is_some_and(|g| g.kind == FrameKind::Error
            && g.id == 7
            && g.code == code::NOT_SUPPORTED),
        "D1: Control{{id 7, __@stable}} must be answered Error 501, got {g:?} (closed: {:?})",
        a.closed
    );
    // The connection carries on (plain, not StableIO).
    a.queue(&console(1, "echo", "still"));
    let g = a.wait_for(Duration::from_secs(3), |g| g.is_answer());
    assert!(
        g.as_ref()
            .is_some_and(|g| g.kind == FrameKind::ConsoleResponse && g.id == 1 && g.seq.is_none()),
        "D1: after the 501: {g:?}"
    );
}

/// D2: `__@stable` after another frame is a protocol violation: the
/// connection is closed, nothing is granted.
#[cfg(target_os = "linux")]
#[test]
fn d2_late_stable_is_a_violation() {
    let _g = shared();
    let p = provider();
    let server = echo_server(&p, 1);
    let mut a = Raw::connect(server.local_addr(), &p);
    a.queue(&console(1, "echo", "first"));
    assert!(a
        .wait_for(Duration::from_secs(3), |g| g.id == 1 && g.is_answer())
        .is_some());
    a.queue(&control(0, "__@stable", DataFrame::new()));
    let closed = a.wait_closed(Duration::from_secs(3));
    let grant = a
        .inbox
        .iter()
        .find(|g| g.kind == FrameKind::Control)
        .cloned();
    assert!(
        closed && grant.is_none(),
        "D2: a late __@stable must close the connection (closed: {:?}, grant: {grant:?})",
        a.closed
    );
    assert!(server.stats().protocol_errors >= 1, "{}", server.stats());
}

/// D3: a client→server `__@batchsum` is a control on the wrong side: a
/// protocol violation, the connection is closed.
#[cfg(target_os = "linux")]
#[test]
fn d3_client_batchsum_is_a_violation() {
    let _g = shared();
    let p = provider();
    let server = echo_server(&p, 1);
    let mut a = Raw::connect(server.local_addr(), &p);
    a.queue(&control(
        0,
        "__@batchsum",
        DataFrame::new().with(1u64).with(vec![0u8; 16]),
    ));
    let closed = a.wait_closed(Duration::from_secs(3));
    assert!(
        closed,
        "D3: a client->server __@batchsum must close the connection; inbox {:?}",
        a.inbox
    );
    assert!(server.stats().protocol_errors >= 1, "{}", server.stats());
}

/// Admission: over `max_connections_per_ip` or `max_connections`, a new
/// connection is closed when the layer hands it over (after its handshake)
/// and counted; the honest client gets in once the others are gone. (The
/// handshake caps, `SecureConfig::max_handshakes` and
/// `SecureBackend::with_max_handshakes_per_ip`, are the layer's: zs-secure's
/// `tests/hostile.rs`.)
#[cfg(target_os = "linux")]
#[test]
fn admission_caps() {
    let _g = shared();
    let p = provider();
    type Cap = fn(&mut Options);
    let caps: [(&str, Cap, usize); 2] = [
        (
            "max_connections_per_ip",
            |o| o.max_connections_per_ip = 5,
            5,
        ),
        ("max_connections", |o| o.max_connections = 5, 5),
    ];
    for (what, set, cap) in caps {
        let mut o = Options::default();
        set(&mut o);
        let server = start(&p, echo_registry(), o, 2);
        // Handshaken connections (the layer hands them to zs-core).
        let socks: Vec<zs_secure::SecureStream<TcpStream>> = (0..20)
            .map(|_| {
                let t = TcpStream::connect(server.local_addr()).unwrap();
                zs_secure::SecureStream::connect(t, &*p).unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        // Closed by the server: end of stream or reset; open: nothing to read.
        let open: Vec<_> = socks
            .into_iter()
            .filter(|s| {
                let s = s.get_ref();
                s.set_nonblocking(true).unwrap();
                matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .collect();
        let refused = server.stats().refused_connections;
        assert!(
            open.len() == cap && refused >= (20 - cap) as u64,
            "admission {what} = {cap}: {} of 20 connections stay open, {refused} refused",
            open.len()
        );
        // Full: an honest client is refused too, then gets in once they left.
        // (Its connect may complete: the layer's handshake is over before
        // zs-core refuses the connection; its first call fails then.)
        let cb = client_backend();
        let full = connect(cb.clone(), &p, server.local_addr())
            .and_then(|c| c.call("echo", "over the cap").wait());
        assert!(
            full.is_err(),
            "admission {what}: a client got in over the cap"
        );
        drop(open);
        let mut last = None;
        let ok = wait_until(Duration::from_secs(5), || {
            match connect(cb.clone(), &p, server.local_addr()) {
                Ok(c) => {
                    last = Some(c.call("echo", "in").wait());
                    matches!(last, Some(Ok(_)))
                }
                Err(e) => {
                    last = Some(Err(e));
                    false
                }
            }
        });
        assert!(
            ok,
            "admission {what}: the honest client after the others left: {last:?}"
        );
    }
}

/// L1: `SeqData{seq: u64::MAX}` then another record in a StableIO session:
/// before the fix the second one overflowed `u64` in a debug build (the
/// server's event loop panicked). No handler panics now; the connection is
/// dropped as a violation or the record ignored; the server keeps serving.
#[cfg(target_os = "linux")]
#[test]
fn l1_seq_u64_max() {
    let _x = exclusive();
    let p = provider();
    let server = echo_server(&p, 1);
    let cb = client_backend();
    let other = honest(&cb, &p, &server);
    let panics = zs_io::handler_panics();
    let mut a = stable_raw(&server, &p);
    let payload = a.encode(&console(1, "echo", "x"));
    a.queue(&Frame::SeqData {
        seq: u64::MAX,
        payload: payload.clone(),
    });
    a.queue(&Frame::SeqData { seq: 5, payload });
    a.queue(&Frame::SeqEcho { nonce: 9 });
    a.pump_until(Duration::from_secs(2), |r| {
        r.inbox.iter().any(|g| g.kind == FrameKind::SeqEchoReply)
    });
    assert_eq!(
        zs_io::handler_panics(),
        panics,
        "L1: SeqData{{seq: u64::MAX}} panicked the server (closed: {:?})",
        a.closed
    );
    assert_echo_after(&other, "L1");
    fresh_echo("L1", &p, &server);
}

/// Session 14: requests for `console_ref` handlers are served from their
/// bytes where they lie in the input buffer (before the session decodes
/// the rest). Hostile frames met on that path get what the session gives
/// them anywhere else, and the frames around them keep their order: a
/// malformed text for a `console_ref` command in the middle of one read is
/// answered 400 between the answers before and after it (the served
/// requests' answers go into the output before the session decodes the
/// rest, which sends a malformed frame's error at once); a name in capitals
/// finds the handler; a frame whose header breaks the limits behind valid
/// ones closes the connection after those are answered. An honest client's
/// calls go on.
#[cfg(target_os = "linux")]
#[test]
fn s14_borrowed_requests_with_hostile_frames() {
    let _g = shared();
    let p = provider();
    let mut r = echo_registry();
    r.console_ref("echo-ref", |_, t| Ok(std::borrow::Cow::Borrowed(t)));
    let server = start(&p, r, Options::default(), 1);
    let honest = honest_caller(&p, &server);
    let mut a = Raw::connect(server.local_addr(), &p);
    a.queue(&console(1, "echo-ref", "first"));
    assert!(a
        .wait_for(Duration::from_secs(3), |g| g.id == 1 && g.is_answer())
        .is_some());
    // One read: good, bad UTF-8, good, capitals.
    let mut plain = Vec::new();
    plain.extend_from_slice(&a.encode(&console(2, "echo-ref", "two")));
    let mut bad = a.encode(&console(3, "echo-ref", "xx")).to_vec();
    let n = bad.len();
    bad[n - 1] = 0xFF;
    plain.extend_from_slice(&bad);
    plain.extend_from_slice(&a.encode(&console(4, "echo-ref", "four")));
    plain.extend_from_slice(&a.encode(&console(5, "ECHO-REF", "five")));
    a.queue_plain(&plain);
    assert!(a.pump_until(Duration::from_secs(5), |r| r
        .inbox
        .iter()
        .filter(|g| g.id >= 2 && g.is_answer())
        .count()
        == 4));
    // (A text answer is seen by its length: "two", "four", "five".)
    let got: Vec<(u64, FrameKind, u32, String)> = a
        .inbox
        .iter()
        .filter(|g| g.id >= 2 && g.is_answer())
        .map(|g| match g.kind {
            FrameKind::ConsoleResponse => (g.id, g.kind, g.code, g.len.to_string()),
            _ => (g.id, g.kind, g.code, g.text.clone()),
        })
        .collect();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![2, 3, 4, 5],
        "{got:?}"
    );
    assert_eq!(
        (got[0].1, got[0].3.as_str()),
        (FrameKind::ConsoleResponse, "3")
    );
    assert_eq!(
        (got[1].1, got[1].2),
        (FrameKind::Error, code::BAD_REQUEST),
        "{got:?}"
    );
    assert_eq!(
        (got[2].1, got[2].3.as_str()),
        (FrameKind::ConsoleResponse, "4")
    );
    assert_eq!(
        (got[3].1, got[3].3.as_str()),
        (FrameKind::ConsoleResponse, "4")
    );
    // Valid frames, then a header over the frame limit: answered, then closed.
    let mut plain = Vec::new();
    plain.extend_from_slice(&a.encode(&console(6, "echo-ref", "six")));
    plain.extend_from_slice(&a.encode(&console(7, "echo-ref", "seven")));
    let mut huge = a.encode(&console(8, "echo-ref", "x")).to_vec();
    // Version and kind kept, then the body length: a varint of 2^32 - 1.
    huge.truncate(2);
    huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
    plain.extend_from_slice(&huge);
    a.queue_plain(&plain);
    assert!(
        a.wait_closed(Duration::from_secs(5)),
        "closed: {:?}",
        a.closed
    );
    let ids: Vec<u64> = a
        .inbox
        .iter()
        .filter(|g| g.id >= 6 && g.kind == FrameKind::ConsoleResponse)
        .map(|g| g.id)
        .collect();
    assert_eq!(ids, vec![6, 7]);
    honest_after(honest, "s14", &p, &server);
}

/// Frames over 1 MiB (session 14, frame1m): zs-core takes a partial frame
/// longer than 1 MiB over into its own buffer (bounded by `max_frame`), so
/// the security layer's `max_pending_plaintext` no longer resets a peer whose
/// frame the wire limits allow. A peer announcing more than `max_frame` is
/// still disconnected; peers that send a `max_frame` frame all but its last
/// byte and stall each hold about `max_frame`, stay connected, and their
/// frames complete once the last byte comes.
#[cfg(target_os = "linux")]
#[test]
fn f1_frames_over_a_mib() {
    let _x = exclusive();
    let p = provider();
    let max = 3 << 20;
    let mut r = echo_registry();
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    r.complete_buffer("blob", move |_, b| {
        g.fetch_add(b.len(), Ordering::SeqCst);
    });
    let mut o = Options::default();
    o.session.wire.limits.max_frame = max;
    o.session.max_complete_buffer = max;
    let server = start(&p, r, o, 1);
    let addr = server.local_addr();

    // One byte over the limit: disconnected (zs-wire's header check).
    let mut a = Raw::connect(addr, &p);
    let mut head = vec![zs_wire::VERSION, FrameKind::CompleteBuffer.code()];
    common::varint(max as u64 + 1, &mut head);
    common::name("blob", &mut head);
    head.extend_from_slice(&[0x5a; 64]);
    a.queue_plain(&head);
    assert!(a.wait_closed(Duration::from_secs(10)), "over max_frame");
    // Dropped with a logged reason ("disconnecting peer"), counted.
    assert_eq!(server.stats().protocol_errors, 1, "{}", server.stats());

    // Exactly `max_frame`, all but the last byte, from 4 peers at once.
    let mut body = Vec::with_capacity(max);
    common::name("blob", &mut body);
    let data = max - body.len();
    body.resize(max, 0x5a);
    let frame = common::frame(FrameKind::CompleteBuffer, false, &body);
    let peers = 4;
    // The server holds about `max_frame` (3 MiB) per peer, the attackers as
    // much again (their sealed output, in this process), the frame 6 MiB,
    // plus socket buffers: 30 MiB (64 MiB were measured with 8 peers).
    let watch = Watch::start("f1", 40 * MIB);
    let mut raws: Vec<Raw> = (0..peers).map(|_| Raw::connect(addr, &p)).collect();
    for a in &mut raws {
        a.queue_plain(&frame[..frame.len() - 1]);
    }
    for a in &mut raws {
        assert!(a.flush(Duration::from_secs(20)), "{:?}", a.closed);
    }
    let c = honest(&client_backend(), &p, &server);
    assert_echo_after(&c, "F1 while the frames stall");
    for a in &mut raws {
        a.pump(Duration::from_millis(1));
        assert!(a.closed.is_none(), "a stalled frame reset: {:?}", a.closed);
        a.queue_plain(&frame[frame.len() - 1..]);
        assert!(a.flush(Duration::from_secs(20)));
    }
    assert!(
        wait_until(Duration::from_secs(30), || got.load(Ordering::SeqCst)
            == peers * data),
        "{} of {} bytes arrived",
        got.load(Ordering::SeqCst),
        peers * data
    );
    watch.finish();
    assert_echo_after(&c, "F1 after");
}
