//! The zs-io conformance kit over virtual connections.
//!
//! The kit's `MakeBackend` gets a [`PairBackend`]: two tunnel ends over one real
//! loopback TCP connection (epoll), `listen` at one end, `connect` from the
//! other, so every connection the kit makes crosses the link as a virtual stream.
//!
//! Kit items run **unchanged**: `many_connections`, `ipv4_ipv6_loopback` and
//! `resolve_preference` (they only use the backend under test). The other kit
//! items use plain `std::net` sockets as the peer (`TcpStream::connect` to the
//! listener's address, or a `TcpListener` as the server the backend connects
//! to) or OS behaviour (a full listen backlog). A virtual address is not a
//! socket the OS knows, so those items cannot apply as written; each has a
//! counterpart below (`v_*`) that checks the same contract clauses with a
//! virtual connection as the peer:
//!
//! | kit item | why not as is | counterpart |
//! |---|---|---|
//! | `echo` | std client to the listener | `v_echo` |
//! | `big_transfer_slow_reader` | std reader | `v_big_transfer_slow_reader` |
//! | `half_close` | std client / std server | `v_half_close` |
//! | `peer_reset` | std peer with `SO_LINGER` 0 | `v_peer_reset` |
//! | `idle_timeout` | std peers | `v_idle_timeout` |
//! | `timers` | connects to a std `TcpListener` | `v_timers` |
//! | `connect_refused` | a closed OS port | `v_connect_refused` |
//! | `connect_timeout` | a full OS listen backlog | `v_connect_timeout` (a tunnel whose link never becomes ready) |
//! | `listener_shutdown` | std peers | `v_listener_shutdown` |
//! | `send_after_close` | a std `TcpListener` peer | `v_send_after_close` |
//! | `panicking_handler` | std clients to the listener | `handler_panic_closes_only_its_stream` in `tests/tunnel.rs` |
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod tunnel_util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_io::testkit::{Ev, Events, Recorder, WAIT};
use zs_io::{connect_blocking, Backend, CloseReason, Config, Conn, Error, Handler, HandlerFactory};
use zs_p2pvm::{Tunnel, TunnelConfig};

use tunnel_util::{Io, PairBackend};

fn make(cfg: Config) -> Box<dyn Backend> {
    Box::new(PairBackend::new(Io::Epoll, cfg))
}

fn kit_config() -> Config {
    Config {
        loops: 2,
        ..Config::default()
    }
}

fn v4() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn recorder_factory(echo: bool) -> (HandlerFactory, Events) {
    let (r, ev) = Recorder::new(echo);
    let r = Mutex::new(r);
    (
        Arc::new(move || Box::new(r.lock().unwrap().sibling()) as Box<dyn Handler>),
        ev,
    )
}

// ------------------------------------------------------------- kit, unchanged

#[test]
fn kit_many_connections() {
    zs_io::testkit::many_connections(&make);
}

#[test]
fn kit_ipv4_ipv6_loopback() {
    zs_io::testkit::ipv4_ipv6_loopback(&make);
}

#[test]
fn kit_resolve_preference() {
    zs_io::testkit::resolve_preference(&make);
}

/// The same unchanged kit items with the tunnel's physical link on the tokio
/// backend.
mod over_tokio {
    use super::*;

    fn make_tokio(cfg: Config) -> Box<dyn Backend> {
        Box::new(PairBackend::new(Io::Tokio, cfg))
    }

    #[test]
    fn kit_many_connections() {
        zs_io::testkit::many_connections(&make_tokio);
    }

    #[test]
    fn kit_ipv4_ipv6_loopback() {
        zs_io::testkit::ipv4_ipv6_loopback(&make_tokio);
    }
}

// ------------------------------------------------------------- counterparts

/// Echo: 200 messages of odd sizes through one virtual connection, byte-exact;
/// addresses reported consistently; closing the client ends both sides with the
/// right reasons; connection ids unique.
#[test]
fn v_echo() {
    let backend = make(kit_config());
    let (f, sev) = recorder_factory(true);
    let listener = backend.listen(v4(), f).unwrap();
    let addr = listener.local_addr();
    assert!(addr.port() != 0 && addr.ip().is_loopback());
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, addr, WAIT, Box::new(client)).unwrap();
    assert_eq!(conn.peer_addr(), addr);
    let sc = sev.open();
    assert_eq!(sc.local_addr(), addr);
    assert_eq!(sc.peer_addr(), conn.local_addr());
    assert_ne!(sc.id(), conn.id());
    let mut total = Vec::new();
    for i in 0..200usize {
        let m = pattern(1 + (i * 37) % 8000, i as u8);
        conn.send(Bytes::from(m.clone())).unwrap();
        total.extend_from_slice(&m);
        if i % 10 == 9 {
            assert_eq!(cev.data(total.len()), total, "echo mismatch");
            total.clear();
        }
    }
    conn.close();
    assert_eq!(cev.close(), CloseReason::Local);
    assert_eq!(sev.close(), CloseReason::PeerClosed);
    drop(listener);
    backend.shutdown();
}

struct Pump {
    total: u64,
    sent: u64,
    chunk: Bytes,
    max_queued: Arc<AtomicUsize>,
    fulls: Arc<AtomicUsize>,
    writables: Arc<AtomicUsize>,
}

impl Pump {
    fn pump(&mut self, conn: &Conn) {
        while self.sent < self.total {
            let n = (self.total - self.sent).min(self.chunk.len() as u64) as usize;
            match conn.send(self.chunk.slice(..n)) {
                Ok(()) => {
                    self.sent += n as u64;
                    self.max_queued
                        .fetch_max(conn.queued_bytes(), Ordering::Relaxed);
                }
                Err(Error::Full(_)) => {
                    self.fulls.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => panic!("pump send: {e}"),
            }
        }
        conn.close();
    }
}

impl Handler for Pump {
    fn on_open(&mut self, conn: &Conn) {
        self.pump(conn);
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
    fn on_writable(&mut self, conn: &Conn) {
        self.writables.fetch_add(1, Ordering::Relaxed);
        self.pump(conn);
    }
}

/// Checks the stream against the repeated chunk and counts it.
struct Verify {
    chunk: Bytes,
    got: Arc<AtomicUsize>,
    done: Sender<(u64, CloseReason)>,
    n: u64,
}

impl Handler for Verify {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        let c = self.chunk.len();
        let mut i = 0;
        while i < data.len() {
            let o = ((self.n + i as u64) % c as u64) as usize;
            let len = (data.len() - i).min(c - o);
            assert_eq!(
                &data[i..i + len],
                &self.chunk[o..o + len],
                "corrupt at {}",
                self.n
            );
            i += len;
        }
        self.n += data.len() as u64;
        self.got.store(self.n as usize, Ordering::Relaxed);
        data.clear();
    }
    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let _ = self.done.send((self.n, reason));
    }
}

/// A server pushes a large stream (64 MiB; `ZS_IO_KIT_BIG_BYTES` overrides it) to
/// a virtual client that starts with reading paused and then reads at full
/// speed: every byte arrives in order, the send queue stays within limit + one
/// chunk, back-pressure really engaged (`Full`, then `on_writable`).
#[test]
fn v_big_transfer_slow_reader() {
    const LIMIT: usize = 256 * 1024;
    const CHUNK: usize = 64 * 1024;
    let backend = make(Config {
        send_queue_limit: LIMIT,
        ..kit_config()
    });
    let total: u64 = std::env::var("ZS_IO_KIT_BIG_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    let chunk = Bytes::from(pattern(CHUNK, 0));
    let max_queued = Arc::new(AtomicUsize::new(0));
    let fulls = Arc::new(AtomicUsize::new(0));
    let writables = Arc::new(AtomicUsize::new(0));
    let (mq, fu, wr, ch) = (
        max_queued.clone(),
        fulls.clone(),
        writables.clone(),
        chunk.clone(),
    );
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || {
                Box::new(Pump {
                    total,
                    sent: 0,
                    chunk: ch.clone(),
                    max_queued: mq.clone(),
                    fulls: fu.clone(),
                    writables: wr.clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let (dtx, drx) = mpsc::channel();
    struct PausedFirst(Verify);
    impl Handler for PausedFirst {
        fn on_open(&mut self, conn: &Conn) {
            conn.set_read_paused(true);
        }
        fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
            self.0.on_data(conn, data)
        }
        fn on_close(&mut self, conn: &Conn, reason: CloseReason) {
            self.0.on_close(conn, reason)
        }
    }
    let conn = connect_blocking(
        &*backend,
        listener.local_addr(),
        WAIT,
        Box::new(PausedFirst(Verify {
            chunk: chunk.clone(),
            got: got.clone(),
            done: dtx,
            n: 0,
        })),
    )
    .unwrap();
    // Slow phase: nothing read for 300 ms (the sender must block), then all.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(got.load(Ordering::Relaxed), 0);
    assert!(
        fulls.load(Ordering::Relaxed) > 0,
        "back-pressure never engaged"
    );
    conn.set_read_paused(false);
    let (n, reason) = drx.recv_timeout(Duration::from_secs(120)).unwrap();
    assert_eq!(n, total, "short transfer");
    assert_eq!(reason, CloseReason::PeerClosed);
    let mq = max_queued.load(Ordering::Relaxed);
    assert!(mq <= LIMIT + CHUNK, "send queue grew to {mq}");
    assert!(
        writables.load(Ordering::Relaxed) > 0,
        "on_writable never called"
    );
    drop(listener);
    backend.shutdown();
}

struct HalfCloseServer {
    seen: usize,
    events: Sender<CloseReason>,
}

impl Handler for HalfCloseServer {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        self.seen += data.len();
        data.clear();
    }
    fn on_eof(&mut self, conn: &Conn) {
        conn.send(Bytes::from(format!("got {}", self.seen)))
            .unwrap();
        conn.close();
    }
    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let _ = self.events.send(reason);
    }
}

/// Half-close: a client that shuts down its write side still receives the
/// server's answer (the server saw `on_eof` and replied); sends after
/// `shutdown_write` fail; the client then sees EOF and both end `PeerClosed`.
#[test]
fn v_half_close() {
    let backend = make(kit_config());
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || {
                Box::new(HalfCloseServer {
                    seen: 0,
                    events: tx.lock().unwrap().clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, listener.local_addr(), WAIT, Box::new(client)).unwrap();
    conn.send(Bytes::from(pattern(12345, 1))).unwrap();
    conn.shutdown_write().unwrap();
    assert!(matches!(
        conn.send(Bytes::from_static(b"late")),
        Err(Error::Closed)
    ));
    assert!(matches!(conn.shutdown_write(), Err(Error::Closed)));
    assert_eq!(cev.data(9), b"got 12345");
    cev.until(WAIT, |e| matches!(e, Ev::Eof).then_some(()));
    assert_eq!(cev.close(), CloseReason::PeerClosed);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), CloseReason::PeerClosed);
    drop(listener);
    backend.shutdown();
}

/// A peer's abort is reported as `Reset`; `abort()` ends the local side with
/// `Local`; sends afterwards are errors.
#[test]
fn v_peer_reset() {
    let backend = make(kit_config());
    let (f, sev) = recorder_factory(false);
    let listener = backend.listen(v4(), f).unwrap();
    // Client aborts: the server sees Reset.
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, listener.local_addr(), WAIT, Box::new(client)).unwrap();
    conn.send(Bytes::from_static(b"hi")).unwrap();
    let sc = sev.open();
    assert_eq!(sev.data(2), b"hi");
    conn.abort();
    assert_eq!(cev.close(), CloseReason::Local);
    assert_eq!(sev.close(), CloseReason::Reset);
    assert!(matches!(
        sc.send(Bytes::from_static(b"x")),
        Err(Error::Closed)
    ));
    assert!(matches!(
        conn.send(Bytes::from_static(b"x")),
        Err(Error::Closed)
    ));
    // Server aborts: the client sees Reset.
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, listener.local_addr(), WAIT, Box::new(client)).unwrap();
    let sc = sev.open();
    sc.abort();
    assert_eq!(sev.close(), CloseReason::Local);
    assert_eq!(cev.close(), CloseReason::Reset);
    assert!(matches!(
        conn.send(Bytes::from_static(b"x")),
        Err(Error::Closed)
    ));
    drop(listener);
    backend.shutdown();
}

/// The idle timeout closes a silent virtual connection (`IdleTimeout`, not
/// earlier; the peer sees EOF), traffic keeps one alive, and
/// `set_idle_timeout(None)` disables it per connection.
#[test]
fn v_idle_timeout() {
    let idle = Duration::from_millis(300);
    let backend = make(Config {
        idle_timeout: Some(idle),
        ..kit_config()
    });
    let (f, sev) = recorder_factory(true);
    let listener = backend.listen(v4(), f).unwrap();
    let addr = listener.local_addr();

    let t0 = Instant::now();
    let (client, cev) = Recorder::new(false);
    let silent = connect_blocking(&*backend, addr, WAIT, Box::new(client)).unwrap();
    silent.set_idle_timeout(None); // only the server side times out here
    sev.open();
    assert_eq!(sev.close(), CloseReason::IdleTimeout);
    assert!(t0.elapsed() >= idle, "closed before the idle timeout");
    cev.until(WAIT, |e| matches!(e, Ev::Eof).then_some(()));
    assert_eq!(cev.close(), CloseReason::PeerClosed);

    // A chatty connection stays open past the timeout.
    let (client, cev) = Recorder::new(false);
    let chatty = connect_blocking(&*backend, addr, WAIT, Box::new(client)).unwrap();
    chatty.set_idle_timeout(None);
    let sc = sev.open();
    for _ in 0..8 {
        chatty.send(Bytes::from_static(b"k")).unwrap();
        assert_eq!(cev.data(1), b"k");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!sc.is_closed(), "chatty connection closed");
    assert_eq!(sev.close(), CloseReason::IdleTimeout);
    assert!(sc.is_closed());

    // Disabled per connection.
    let (client, _cev) = Recorder::new(false);
    let quiet = connect_blocking(&*backend, addr, WAIT, Box::new(client)).unwrap();
    quiet.set_idle_timeout(None);
    let c = sev.open();
    c.set_idle_timeout(None);
    sev.quiet(Duration::from_millis(800));
    c.close();
    assert_eq!(sev.close(), CloseReason::Local);
    drop(listener);
    backend.shutdown();
}

/// Timers fire once each with their token, never early, also armed from another
/// thread; arming on a closed connection is an error.
#[test]
fn v_timers() {
    let backend = make(kit_config());
    let (f, _sev) = recorder_factory(false);
    let listener = backend.listen(v4(), f).unwrap();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, listener.local_addr(), WAIT, Box::new(client)).unwrap();
    cev.open();
    let t0 = Instant::now();
    conn.set_timer(Duration::from_millis(120), 2).unwrap();
    conn.set_timer(Duration::from_millis(40), 1).unwrap();
    for (want, after) in [(1, 40), (2, 120)] {
        let (tok, at) = cev.until(WAIT, |e| match e {
            Ev::Timer(t, at) => Some((t, at)),
            _ => None,
        });
        assert_eq!(tok, want);
        assert!(at.duration_since(t0) >= Duration::from_millis(after));
    }
    cev.quiet(Duration::from_millis(200));
    conn.close();
    assert_eq!(cev.close(), CloseReason::Local);
    assert!(matches!(
        conn.set_timer(Duration::from_millis(1), 3),
        Err(Error::Closed)
    ));
    drop(listener);
    backend.shutdown();
}

/// Connecting to a virtual address nobody listens on fails with `Refused`
/// quickly, through `on_connect_failed` and through `connect_blocking`.
#[test]
fn v_connect_refused() {
    let backend = make(kit_config());
    let addr = {
        let (f, _) = recorder_factory(false);
        let l = backend.listen(v4(), f).unwrap();
        l.local_addr()
        // dropped here: the address is free again
    };
    let (client, cev) = Recorder::new(false);
    let t0 = Instant::now();
    backend
        .connect(addr, Duration::from_secs(10), Box::new(client))
        .unwrap();
    match cev.next(WAIT) {
        Ev::ConnectFailed(Error::Refused) => {}
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    let (client, _cev) = Recorder::new(false);
    assert!(matches!(
        connect_blocking(&*backend, addr, WAIT, Box::new(client)),
        Err(Error::Refused)
    ));
    backend.shutdown();
}

/// A virtual connect that cannot complete (the tunnel's physical link reaches a
/// socket that never answers, so the tunnel never becomes ready) fails with
/// `TimedOut` after its timeout, not before, not much after.
#[test]
fn v_connect_timeout() {
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let io = tunnel_util::io_backend(Io::Epoll, kit_config());
    let (handle, driver) = Tunnel::handler(
        zs_p2pvm::Role::Initiator,
        TunnelConfig::plaintext(zs_p2pvm::Auth::None),
    )
    .unwrap();
    io.connect(mute.local_addr().unwrap(), WAIT, Box::new(driver))
        .unwrap();
    let _accepted = mute.accept().unwrap();
    let (client, cev) = Recorder::new(false);
    let t0 = Instant::now();
    let timeout = Duration::from_millis(400);
    handle
        .connect("10.0.0.1:80".parse().unwrap(), timeout, Box::new(client))
        .unwrap();
    match cev.next(WAIT) {
        Ev::ConnectFailed(Error::TimedOut) => {}
        other => panic!("expected TimedOut, got {other:?}"),
    }
    let took = t0.elapsed();
    assert!(took >= timeout, "timed out early: {took:?}");
    assert!(took < timeout + Duration::from_secs(3), "late: {took:?}");
    handle.shutdown();
    io.shutdown();
}

/// `Listener::shutdown` closes every connection accepted through it (`Shutdown`;
/// the peers are closed too), stops accepting (new connects are refused), and
/// leaves other listeners alone; `Backend::shutdown` closes the rest, after which
/// connects and listens fail.
#[test]
fn v_listener_shutdown() {
    let backend = make(kit_config());
    let (f, sev) = recorder_factory(true);
    let listener = backend.listen(v4(), f).unwrap();
    let (f2, oev) = recorder_factory(true);
    let listener2 = backend.listen(v4(), f2).unwrap();
    let addr = listener.local_addr();
    let mut peers = Vec::new();
    for _ in 0..20 {
        let (c, ev) = Recorder::new(false);
        let conn = connect_blocking(&*backend, addr, WAIT, Box::new(c)).unwrap();
        sev.open();
        peers.push((conn, ev));
    }
    let (c, survivor_ev) = Recorder::new(false);
    let survivor = connect_blocking(&*backend, listener2.local_addr(), WAIT, Box::new(c)).unwrap();
    oev.open();

    listener.shutdown();
    for _ in 0..20 {
        assert_eq!(sev.close(), CloseReason::Shutdown);
    }
    for (conn, ev) in &peers {
        assert!(matches!(
            ev.close(),
            CloseReason::Reset | CloseReason::PeerClosed
        ));
        assert!(conn.is_closed());
    }
    let t0 = Instant::now();
    loop {
        let (c, ev) = Recorder::new(false);
        backend.connect(addr, WAIT, Box::new(c)).unwrap();
        match ev.next(WAIT) {
            Ev::ConnectFailed(Error::Refused) => break,
            Ev::Open(c) => {
                // Raced the table update: it must not live.
                assert!(matches!(
                    ev.close(),
                    CloseReason::Reset | CloseReason::PeerClosed
                ));
                drop(c);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "listener still accepting"
        );
    }
    survivor.send(Bytes::from_static(b"alive")).unwrap();
    assert_eq!(survivor_ev.data(5), b"alive");

    backend.shutdown();
    assert_eq!(oev.close(), CloseReason::Shutdown);
    assert_eq!(survivor_ev.close(), CloseReason::Shutdown);
    let (client, cev) = Recorder::new(false);
    match backend.connect(addr, WAIT, Box::new(client)) {
        Err(Error::ShutDown) => {}
        Ok(()) => match cev.next(WAIT) {
            Ev::ConnectFailed(Error::ShutDown) => {}
            other => panic!("connect after shutdown: {other:?}"),
        },
        Err(e) => panic!("connect after shutdown: {e}"),
    }
    assert!(backend
        .listen(v4(), zs_io::handler_factory(|| Recorder::new(false).0))
        .is_err());
    backend.shutdown(); // idempotent
    drop(listener2);
}

/// Every operation on a closed virtual connection is an error or a no-op, never
/// a panic; a sender thread hammering a connection whose peer aborts ends with
/// `Error::Closed`.
#[test]
fn v_send_after_close() {
    let backend = make(kit_config());
    let (f, sev) = recorder_factory(false);
    let listener = backend.listen(v4(), f).unwrap();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, listener.local_addr(), WAIT, Box::new(client)).unwrap();
    sev.open();
    conn.close();
    assert!(conn.is_closed());
    assert!(matches!(
        conn.send(Bytes::from_static(b"x")),
        Err(Error::Closed)
    ));
    assert_eq!(cev.close(), CloseReason::Local);
    assert!(matches!(
        conn.send(Bytes::from_static(b"x")),
        Err(Error::Closed)
    ));
    assert!(matches!(conn.shutdown_write(), Err(Error::Closed)));
    assert!(matches!(
        conn.set_timer(Duration::from_millis(1), 1),
        Err(Error::Closed)
    ));
    conn.close();
    conn.abort();
    conn.set_read_paused(true);
    conn.set_idle_timeout(Some(Duration::from_millis(1)));
    assert_eq!(conn.queued_bytes(), 0);

    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, listener.local_addr(), WAIT, Box::new(client)).unwrap();
    let peer = sev.open();
    let c2 = conn.clone();
    let sender = std::thread::spawn(move || {
        let chunk = Bytes::from(vec![0u8; 4096]);
        let t0 = Instant::now();
        loop {
            match c2.send(chunk.clone()) {
                Ok(()) | Err(Error::Full(_)) => std::thread::yield_now(),
                Err(Error::Closed) => return true,
                Err(_) => return false,
            }
            if t0.elapsed() > WAIT {
                return false;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    peer.abort();
    assert_eq!(cev.close(), CloseReason::Reset);
    assert!(
        sender.join().unwrap(),
        "send after the peer went away must end in Closed"
    );
    drop(listener);
    backend.shutdown();
}
