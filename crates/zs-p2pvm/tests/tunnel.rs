//! The tunnel driver over real backends (epoll and tokio) on loopback: token auth,
//! many virtual connections, connection clone, link death, read-pause flow control,
//! keepalive RTT, and the optional secure session on the physical link.
#![allow(clippy::unwrap_used)]

mod tunnel_util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_io::testkit::{Bomb, Ev, FailBomb, Recorder, BOMB_FACTORY, BOMB_NONE, BOMB_ON_OPEN};
use zs_io::{Backend, CloseReason, Conn, Handler};
use zs_p2pvm::{Auth, MuxConfig, Tunnel, TunnelConfig};

use tunnel_util::{echo_once, Io, Pair, WAIT};

fn ios() -> Vec<Io> {
    vec![
        #[cfg(target_os = "linux")]
        Io::Epoll,
        Io::Tokio,
    ]
}

fn token_cfg(token: &[u8]) -> TunnelConfig {
    TunnelConfig::plaintext(Auth::token(token).unwrap())
}

/// Both sides of a zs-crypto secure session with a pre-shared key named `id`.
fn psk_security(id: &[u8]) -> Arc<dyn zs_crypto::SecurityProvider> {
    use zs_crypto::{ClientConfig, ServerConfig, ZsSecurity};
    let key = b"0123456789abcdef0123456789abcdef";
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::psk(id, key).unwrap())),
        Some(Arc::new(ServerConfig::with_psk(id, key).unwrap())),
    ))
}

/// The plain-link, unauthenticated configuration most tests run with (both opt-ins
/// explicit).
fn open_cfg() -> TunnelConfig {
    TunnelConfig::plaintext(Auth::None)
}

fn vaddr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn echo_factory() -> (zs_io::HandlerFactory, zs_io::testkit::Events) {
    let (rec, ev) = Recorder::new(true);
    let rec = Mutex::new(rec);
    (
        Arc::new(move || Box::new(rec.lock().unwrap().sibling()) as Box<dyn Handler>),
        ev,
    )
}

#[test]
fn token_auth_ok_and_echo() {
    for io in ios() {
        let p = Pair::new(
            io,
            token_cfg(b"s3cret-s3cret-s3cret"),
            token_cfg(b"s3cret-s3cret-s3cret"),
        );
        assert!(p.a.is_ready() && p.b.is_ready());
        let (f, sev) = echo_factory();
        let l = p.a.listen(vaddr("10.0.0.1:80"), f).unwrap();
        assert!(p.b.wait_peer_listen(l.local_addr(), WAIT));
        echo_once(&p.b, l.local_addr(), b"hello through the tunnel");
        assert_eq!(sev.close(), CloseReason::PeerClosed);
        // And the other direction: the initiator listens, the acceptor connects.
        let (f2, _sev2) = echo_factory();
        let l2 = p.b.listen(vaddr("[fd00::1]:0"), f2).unwrap();
        assert!(l2.local_addr().port() != 0 && l2.local_addr().is_ipv6());
        assert!(p.a.wait_peer_listen(l2.local_addr(), WAIT));
        echo_once(&p.a, l2.local_addr(), b"and back");
    }
}

#[test]
fn token_auth_failure_closes_both_ends() {
    for io in ios() {
        let (iob, _l, a, b) = Pair::try_new(
            io,
            token_cfg(b"right token, 16+ bytes"),
            token_cfg(b"wrong token, 16+ bytes"),
        );
        match b {
            Err(zs_p2pvm::Error::AuthFailed) => {}
            other => panic!("{io:?}: expected AuthFailed, got {other:?}"),
        }
        assert!(matches!(
            a.wait_ready(WAIT),
            Err(zs_p2pvm::Error::AuthFailed)
        ));
        let info = a.wait_closed(WAIT).unwrap();
        assert!(info.reason.contains("auth"), "{info:?}");
        // Nothing can be opened on a failed tunnel.
        assert!(a.listen(vaddr("10.0.0.1:1"), echo_factory().0).is_err());
        iob.shutdown();
    }
}

#[test]
fn unknown_virtual_address_is_refused() {
    let p = Pair::new(ios()[0], open_cfg(), open_cfg());
    let (client, cev) = Recorder::new(false);
    p.b.connect(vaddr("10.9.9.9:9"), WAIT, Box::new(client))
        .unwrap();
    match cev.next(WAIT) {
        Ev::ConnectFailed(zs_io::Error::Refused) => {}
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn many_virtual_connections_concurrently() {
    const N: usize = 2000;
    for io in ios() {
        let p = Pair::new(io, open_cfg(), open_cfg());
        let (f, _sev) = echo_factory();
        let l = p.a.listen(vaddr("10.0.0.2:7"), f).unwrap();
        assert!(p.b.wait_peer_listen(l.local_addr(), WAIT));
        struct Check {
            msg: Bytes,
            got: Vec<u8>,
            done: mpsc::Sender<bool>,
        }
        impl Handler for Check {
            fn on_open(&mut self, conn: &Conn) {
                conn.send(self.msg.clone()).unwrap();
            }
            fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
                self.got.extend_from_slice(&data.split());
                if self.got.len() >= self.msg.len() {
                    let _ = self.done.send(self.got == self.msg[..]);
                    conn.close();
                }
            }
        }
        let (tx, rx) = mpsc::channel();
        for i in 0..N {
            let msg = Bytes::from(format!("message {i:06} ").repeat(1 + i % 7));
            p.b.connect(
                l.local_addr(),
                WAIT,
                Box::new(Check {
                    msg,
                    got: Vec::new(),
                    done: tx.clone(),
                }),
            )
            .unwrap();
        }
        for n in 0..N {
            assert!(
                rx.recv_timeout(WAIT)
                    .unwrap_or_else(|_| panic!("{io:?}: {n} of {N} echoed")),
                "echo mismatch"
            );
        }
        // All closed again: both tables drain.
        let t0 = Instant::now();
        while p.a.vconn_count() + p.b.vconn_count() > 0 {
            assert!(
                t0.elapsed() < WAIT,
                "vconns left: {} {}",
                p.a.vconn_count(),
                p.b.vconn_count()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.a.stream_count() + p.b.stream_count(), 0);
    }
}

/// An echo that respects back-pressure: on `Full` it keeps the bytes and stops
/// reading until `on_writable`.
struct PoliteEcho(Option<Bytes>);

impl Handler for PoliteEcho {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        if self.0.is_some() {
            conn.set_read_paused(true);
            return;
        }
        if let Err(zs_io::Error::Full(back)) = conn.send(data.split().freeze()) {
            self.0 = Some(back);
            conn.set_read_paused(true);
        }
    }
    fn on_writable(&mut self, conn: &Conn) {
        if let Some(b) = self.0.take() {
            if let Err(zs_io::Error::Full(back)) = conn.send(b) {
                self.0 = Some(back);
                return;
            }
        }
        conn.set_read_paused(false);
    }
}

/// "Connection clone": connecting again to the same virtual address opens an
/// independent stream; a stalled first stream does not hold up the clone.
#[test]
fn connection_clone_is_independent() {
    let p = Pair::new(ios()[0], open_cfg(), open_cfg());
    let l =
        p.a.listen(
            vaddr("10.0.0.3:1"),
            zs_io::handler_factory(|| PoliteEcho(None)),
        )
        .unwrap();
    assert!(p.b.wait_peer_listen(l.local_addr(), WAIT));
    let (c1, ev1) = Recorder::new(false);
    let first = zs_io::connect_blocking(&p.b, l.local_addr(), WAIT, Box::new(c1)).unwrap();
    let (c2, ev2) = Recorder::new(false);
    let clone = zs_io::connect_blocking(&p.b, l.local_addr(), WAIT, Box::new(c2)).unwrap();
    assert_ne!(first.id(), clone.id());
    // The first stream's reader stops: the server echo fills its window.
    first.set_read_paused(true);
    let big = Bytes::from(vec![7u8; 4 << 20]);
    let mut sent = 0;
    while sent < big.len() {
        match first.send(big.slice(sent..(sent + 64 * 1024).min(big.len()))) {
            Ok(()) => sent += 64 * 1024,
            Err(zs_io::Error::Full(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    clone.send(Bytes::from_static(b"clone works")).unwrap();
    assert_eq!(ev2.data(11), b"clone works");
    first.set_read_paused(false);
    assert!(!ev1.data(1024).is_empty());
    first.abort();
    clone.close();
    assert_eq!(ev2.close(), CloseReason::Local);
}

/// The physical link dies: every virtual connection closes with a reason, pending
/// connects fail, and the tunnel reports what was pending.
#[test]
fn link_killed_closes_every_virtual_connection() {
    for io in ios() {
        let p = Pair::new(io, open_cfg(), open_cfg());
        // The server never reads: data piles up (unread at a, unsent at b).
        struct Sink(mpsc::Sender<Conn>);
        impl Handler for Sink {
            fn on_open(&mut self, conn: &Conn) {
                conn.set_read_paused(true);
                let _ = self.0.send(conn.clone());
            }
            fn on_data(&mut self, _conn: &Conn, _data: &mut BytesMut) {}
        }
        let (stx, srx) = mpsc::channel();
        let stx = Mutex::new(stx);
        let l =
            p.a.listen(
                vaddr("10.0.0.4:1"),
                Arc::new(move || Box::new(Sink(stx.lock().unwrap().clone())) as Box<dyn Handler>),
            )
            .unwrap();
        assert!(p.b.wait_peer_listen(l.local_addr(), WAIT));
        const N: usize = 20;
        let mut clients = Vec::new();
        for _ in 0..N {
            let (c, ev) = Recorder::new(false);
            let conn = zs_io::connect_blocking(&p.b, l.local_addr(), WAIT, Box::new(c)).unwrap();
            srx.recv_timeout(WAIT).unwrap();
            // Fill: the Mux's window and send buffer, then this connection's queue.
            let chunk = Bytes::from(vec![1u8; 64 * 1024]);
            let t0 = Instant::now();
            loop {
                match conn.send(chunk.clone()) {
                    Ok(()) => {}
                    Err(zs_io::Error::Full(_)) => break,
                    Err(e) => panic!("{e}"),
                }
                assert!(t0.elapsed() < WAIT);
            }
            assert!(conn.queued_bytes() > 0);
            clients.push((conn, ev));
        }
        // Kill the link from the acceptor side with a reset.
        p.a.physical().unwrap().abort();
        for (conn, ev) in &clients {
            match ev.close() {
                CloseReason::Error(std::io::ErrorKind::ConnectionAborted) => {}
                other => panic!("{io:?}: vconn closed with {other:?}"),
            }
            assert!(conn.is_closed());
            assert!(matches!(
                conn.send(Bytes::from_static(b"x")),
                Err(zs_io::Error::Closed)
            ));
        }
        let info = p.b.wait_closed(WAIT).unwrap();
        assert_eq!(info.open_streams, N, "{info:?}");
        assert!(info.unsent_bytes > 0, "{info:?}");
        let ia = p.a.wait_closed(WAIT).unwrap();
        assert_eq!(ia.open_streams, N, "{ia:?}");
        assert!(ia.unread_bytes > 0, "{ia:?}");
        // A connect on a dead tunnel is refused at once.
        let (c, _ev) = Recorder::new(false);
        assert!(matches!(
            p.b.connect(l.local_addr(), WAIT, Box::new(c)),
            Err(zs_io::Error::ShutDown)
        ));
    }
}

/// `set_read_paused(true)` on the receiving virtual connection stops reading from
/// the Mux: credit is not returned, the sender's Mux buffer and then its
/// connection queue fill up (`Error::Full`), memory stays bounded; resuming
/// delivers every byte in order and the sender gets `on_writable`.
#[test]
fn read_pause_flow_controls_the_sender() {
    for io in ios() {
        let p = Pair::new(io, open_cfg(), open_cfg());
        struct Slow {
            got: Arc<Mutex<Vec<u8>>>,
            conn: mpsc::Sender<Conn>,
        }
        impl Handler for Slow {
            fn on_open(&mut self, conn: &Conn) {
                conn.set_read_paused(true);
                let _ = self.conn.send(conn.clone());
            }
            fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
                self.got.lock().unwrap().extend_from_slice(&data.split());
            }
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let (ctx, crx) = mpsc::channel();
        let (g2, ctx) = (got.clone(), Mutex::new(ctx));
        let l =
            p.a.listen(
                vaddr("10.0.0.5:1"),
                Arc::new(move || {
                    Box::new(Slow {
                        got: g2.clone(),
                        conn: ctx.lock().unwrap().clone(),
                    }) as Box<dyn Handler>
                }),
            )
            .unwrap();
        assert!(p.b.wait_peer_listen(l.local_addr(), WAIT));

        // The sender: pumps a pattern, counting Full and on_writable.
        struct Pump {
            total: usize,
            sent: usize,
            fulls: Arc<AtomicUsize>,
            writables: Arc<AtomicUsize>,
        }
        fn pat(i: usize) -> u8 {
            (i as u8).wrapping_mul(13).wrapping_add((i >> 16) as u8)
        }
        impl Pump {
            fn pump(&mut self, conn: &Conn) {
                while self.sent < self.total {
                    let n = (self.total - self.sent).min(32 * 1024);
                    let b: Vec<u8> = (self.sent..self.sent + n).map(pat).collect();
                    match conn.send(Bytes::from(b)) {
                        Ok(()) => self.sent += n,
                        Err(zs_io::Error::Full(_)) => {
                            self.fulls.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }
        impl Handler for Pump {
            fn on_open(&mut self, conn: &Conn) {
                self.pump(conn);
            }
            fn on_data(&mut self, _conn: &Conn, _data: &mut BytesMut) {}
            fn on_writable(&mut self, conn: &Conn) {
                self.writables.fetch_add(1, Ordering::Relaxed);
                self.pump(conn);
            }
        }
        let total = 8 << 20;
        let fulls = Arc::new(AtomicUsize::new(0));
        let writables = Arc::new(AtomicUsize::new(0));
        let conn = zs_io::connect_blocking(
            &p.b,
            l.local_addr(),
            WAIT,
            Box::new(Pump {
                total,
                sent: 0,
                fulls: fulls.clone(),
                writables: writables.clone(),
            }),
        )
        .unwrap();
        let server = crx.recv_timeout(WAIT).unwrap();
        // Wait for the sender to hit Full while the receiver is paused.
        let t0 = Instant::now();
        while fulls.load(Ordering::Relaxed) == 0 {
            assert!(t0.elapsed() < WAIT, "{io:?}: sender never blocked");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(got.lock().unwrap().is_empty(), "paused reader got data");
        let limit = TunnelConfig::default().send_queue_limit;
        assert!(conn.queued_bytes() <= limit + 32 * 1024);
        assert_eq!(writables.load(Ordering::Relaxed), 0);
        // Resume: everything arrives, in order.
        server.set_read_paused(false);
        let t0 = Instant::now();
        while got.lock().unwrap().len() < total {
            assert!(
                t0.elapsed() < WAIT,
                "{io:?}: got {} of {total}",
                got.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let g = got.lock().unwrap();
        assert_eq!(g.len(), total);
        assert!(g.iter().enumerate().all(|(i, b)| *b == pat(i)), "corrupt");
        assert!(writables.load(Ordering::Relaxed) > 0);
        conn.close();
    }
}

/// Keepalive pings measure the round trip; it is visible on the handle.
#[test]
fn keepalive_rtt_is_visible() {
    for io in ios() {
        let cfg = TunnelConfig {
            mux: MuxConfig {
                keepalive: Some(Duration::from_millis(30)),
                ..MuxConfig::new(Auth::None)
            },
            ..open_cfg()
        };
        let p = Pair::new(io, cfg.clone(), cfg);
        let t0 = Instant::now();
        while p.b.pongs() < 3 || p.a.pongs() < 3 {
            assert!(t0.elapsed() < WAIT, "{io:?}: no pongs");
            std::thread::sleep(Duration::from_millis(10));
        }
        let rtt = p.b.rtt().unwrap();
        assert!(rtt < Duration::from_secs(1), "{rtt:?}");
        assert!(p.a.rtt().is_some());
    }
}

/// The tunnel's idle timeout (nothing received for that long) ends it and every
/// virtual connection in it.
#[test]
fn tunnel_idle_timeout_closes_vconns() {
    let cfg = TunnelConfig {
        mux: MuxConfig {
            idle_timeout: Some(Duration::from_millis(300)),
            ..MuxConfig::new(Auth::None)
        },
        ..open_cfg()
    };
    let p = Pair::new(ios()[0], cfg.clone(), open_cfg());
    let (f, sev) = echo_factory();
    let l = p.a.listen(vaddr("10.0.0.6:1"), f).unwrap();
    assert!(p.b.wait_peer_listen(l.local_addr(), WAIT));
    let (c, cev) = Recorder::new(false);
    let _conn = zs_io::connect_blocking(&p.b, l.local_addr(), WAIT, Box::new(c)).unwrap();
    sev.open();
    let info = p.a.wait_closed(WAIT).unwrap();
    assert!(info.reason.contains("idle"), "{info:?}");
    assert_eq!(
        sev.close(),
        CloseReason::Error(std::io::ErrorKind::ConnectionAborted)
    );
    assert_eq!(
        cev.close(),
        CloseReason::Error(std::io::ErrorKind::ConnectionAborted)
    );
}

/// A relay that records every byte crossing the physical link.
fn recording_relay(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        let (a, _) = l.accept().unwrap();
        let b = TcpStream::connect(target).unwrap();
        let copy = |mut from: TcpStream, mut to: TcpStream, seen: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = to.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            seen.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
        };
        copy(a.try_clone().unwrap(), b.try_clone().unwrap(), s2.clone());
        copy(b, a, s2);
    });
    (addr, seen)
}

/// With a security provider the physical bytes are the zs-crypto session's
/// records: virtual connections work and their plaintext never crosses the link;
/// without one, it does (the relay sees it), which shows the check can fail.
#[test]
fn secure_session_protects_the_link() {
    for secure in [true, false] {
        let cfg = if secure {
            TunnelConfig::secure(psk_security(b"tunnel"), Auth::None)
        } else {
            open_cfg()
        };
        let io = tunnel_util::io_backend(ios()[0], zs_io::Config::default());
        let (factory, rx) = Tunnel::acceptor(cfg.clone()).unwrap();
        let phys = io.listen(vaddr("127.0.0.1:0"), factory).unwrap();
        let (relay, seen) = recording_relay(phys.local_addr());
        let b = Tunnel::connect(&*io, relay, cfg, WAIT).unwrap();
        let a = rx.recv_timeout(WAIT).unwrap();
        a.wait_ready(WAIT).unwrap();
        let (f, _sev) = echo_factory();
        let l = a.listen(vaddr("10.0.0.7:1"), f).unwrap();
        assert!(b.wait_peer_listen(l.local_addr(), WAIT));
        let secret = b"TOP-SECRET-PAYLOAD-0123456789";
        echo_once(&b, l.local_addr(), secret);
        let s = seen.lock().unwrap().clone();
        let found = s.windows(secret.len()).any(|w| w == secret);
        assert_eq!(
            found, !secure,
            "secure={secure}: plaintext on the link: {found}"
        );
        a.close("done");
        b.close("done");
        io.shutdown();
    }
}

/// Handlers and factories run without the tunnel's lock held: a factory that
/// queries the tunnel, and a handler that, from inside its callbacks, opens
/// another virtual connection through the same tunnel, sends, closes and reads
/// the tunnel's state, all complete (a held lock would deadlock here).
#[test]
fn callbacks_may_reenter_the_tunnel() {
    let p = Pair::new(ios()[0], open_cfg(), open_cfg());
    let a2 = p.a.clone();
    let l =
        p.a.listen(
            vaddr("10.0.0.8:1"),
            Arc::new(move || {
                // The factory itself looks at the tunnel.
                assert!(a2.vconn_count() >= 1);
                Box::new(PoliteEcho(None)) as Box<dyn Handler>
            }),
        )
        .unwrap();
    assert!(p.b.wait_peer_listen(l.local_addr(), WAIT));
    struct Chain {
        handle: zs_p2pvm::TunnelHandle,
        target: SocketAddr,
        depth: u32,
        done: mpsc::Sender<u32>,
    }
    impl Handler for Chain {
        fn on_open(&mut self, conn: &Conn) {
            assert!(self.handle.stream_count() >= 1);
            conn.send(Bytes::from_static(b"x")).unwrap();
        }
        fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
            data.clear();
            let _ = self.done.send(self.depth);
            if self.depth < 5 {
                // Open the next link of the chain from inside this callback.
                self.handle
                    .connect(
                        self.target,
                        WAIT,
                        Box::new(Chain {
                            handle: self.handle.clone(),
                            target: self.target,
                            depth: self.depth + 1,
                            done: self.done.clone(),
                        }),
                    )
                    .unwrap();
            }
            conn.close();
        }
    }
    let (tx, rx) = mpsc::channel();
    p.b.connect(
        l.local_addr(),
        WAIT,
        Box::new(Chain {
            handle: p.b.clone(),
            target: l.local_addr(),
            depth: 0,
            done: tx,
        }),
    )
    .unwrap();
    for want in 0..=5 {
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), want);
    }
}

/// Sends `msg` on a virtual connection and expects it echoed.
fn v_roundtrip(conn: &Conn, ev: &zs_io::testkit::Events, msg: &[u8]) {
    conn.send(Bytes::copy_from_slice(msg)).unwrap();
    assert_eq!(ev.data(msg.len()), msg, "echo mismatch");
}

/// A client virtual connection (from the initiator end) to `addr`, echo-checked.
fn v_client(p: &Pair, addr: SocketAddr, msg: &[u8]) -> (Conn, zs_io::testkit::Events) {
    let (client, cev) = Recorder::new(false);
    let conn = zs_io::connect_blocking(&p.b, addr, WAIT, Box::new(client)).unwrap();
    v_roundtrip(&conn, &cev, msg);
    (conn, cev)
}

/// The peer of a virtual connection whose handler panicked sees it reset (an
/// outgoing connect may also have been refused or seen open first).
fn assert_reset(cev: &zs_io::testkit::Events, what: &str) {
    let end = cev.until(WAIT, |e| match e {
        Ev::Close(r) => Some(Ok(r)),
        Ev::ConnectFailed(e) => Some(Err(e)),
        _ => None,
    });
    match end {
        Ok(CloseReason::Reset) | Err(zs_io::Error::Refused) => {}
        other => panic!("{what}: the peer saw {other:?}, not a reset"),
    }
}

/// The seam's contract item 8 inside a tunnel: a panicking handler of a virtual
/// connection ends only that virtual stream (reset: its peer sees `Reset`; its
/// handler gets one `on_close(HandlerPanicked)`), for panics in `on_data`,
/// `on_timer`, `on_writable`, `on_eof` and `on_open`; a panicking handler factory
/// only resets the stream it was called for; panics in `on_close` and
/// `on_connect_failed` are caught too. Another virtual connection of the same
/// tunnel keeps echoing throughout, new ones still open, the tunnel itself stays
/// up, and every panic is counted in `zs_io::handler_panics()`.
#[test]
fn handler_panic_closes_only_its_stream() {
    for io in ios() {
        let p = Pair::new(io, open_cfg(), open_cfg());
        let panics0 = zs_io::handler_panics();
        let (server, sev) = Recorder::new(true);
        let server = Mutex::new(server);
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(BOMB_NONE));
        let m = mode.clone();
        let l =
            p.a.listen(
                vaddr("10.0.0.9:80"),
                Arc::new(move || {
                    let mode = m.load(Ordering::SeqCst);
                    if mode == BOMB_FACTORY {
                        panic!("p2pvm test: deliberate panic in the handler factory");
                    }
                    Box::new(Bomb::new(
                        server.lock().unwrap().sibling(),
                        mode == BOMB_ON_OPEN,
                    )) as Box<dyn Handler>
                }),
            )
            .unwrap();
        let addr = l.local_addr();
        assert!(p.b.wait_peer_listen(addr, WAIT));

        let (a, aev) = v_client(&p, addr, b"hello");
        sev.open();
        let (b, bev) = v_client(&p, addr, b"world");
        sev.open();

        // on_data panics: only b ends, reset.
        b.send(Bytes::from_static(b"boom")).unwrap();
        assert_eq!(sev.close(), CloseReason::HandlerPanicked, "{io:?}");
        assert_reset(&bev, "after a panic in on_data");
        assert!(b.is_closed());
        v_roundtrip(&a, &aev, b"still echoing");
        assert!(p.a.close_info().is_none() && p.b.close_info().is_none());
        let (c, cev) = v_client(&p, addr, b"new virtual connections open");
        sev.open();

        // on_timer panics.
        c.send(Bytes::from_static(b"timer")).unwrap();
        assert_eq!(sev.close(), CloseReason::HandlerPanicked);
        assert_reset(&cev, "after a panic in on_timer");
        v_roundtrip(&a, &aev, b"still echoing after on_timer");

        // on_writable panics: the server fills its send queue while the client
        // does not read, then the client reads.
        let (d, dev) = v_client(&p, addr, b"d");
        sev.open();
        d.set_read_paused(true);
        d.send(Bytes::from_static(b"flood")).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        d.set_read_paused(false);
        assert_eq!(sev.close(), CloseReason::HandlerPanicked);
        assert_reset(&dev, "after a panic in on_writable");
        v_roundtrip(&a, &aev, b"still echoing after on_writable");

        // on_eof panics.
        let (e, eev) = v_client(&p, addr, b"e");
        sev.open();
        e.send(Bytes::from_static(b"eof-bomb")).unwrap();
        e.shutdown_write().unwrap();
        assert_eq!(sev.close(), CloseReason::HandlerPanicked);
        assert_reset(&eev, "after a panic in on_eof");
        v_roundtrip(&a, &aev, b"still echoing after on_eof");

        // on_open panics: no Open event, but on_close runs.
        mode.store(BOMB_ON_OPEN, Ordering::SeqCst);
        let (client, fev) = Recorder::new(false);
        p.b.connect(addr, WAIT, Box::new(client)).unwrap();
        assert_eq!(sev.close(), CloseReason::HandlerPanicked);
        assert_reset(&fev, "after a panic in on_open");
        // The factory panics: that stream is reset, nothing else happens.
        mode.store(BOMB_FACTORY, Ordering::SeqCst);
        let (client, gev) = Recorder::new(false);
        p.b.connect(addr, WAIT, Box::new(client)).unwrap();
        assert_reset(&gev, "after a panic in the handler factory");
        mode.store(BOMB_NONE, Ordering::SeqCst);
        v_roundtrip(&a, &aev, b"still echoing after the factory");

        // on_close panics (after a normal close by the handler).
        let (h, hev) = v_client(&p, addr, b"h");
        sev.open();
        h.send(Bytes::from_static(b"close-bomb")).unwrap();
        assert_eq!(sev.close(), CloseReason::Local);
        hev.close();

        // An outgoing virtual connection's on_connect_failed panics.
        let (tx, rx) = mpsc::channel();
        p.b.connect(vaddr("10.9.9.9:9"), WAIT, Box::new(FailBomb(tx)))
            .unwrap();
        rx.recv_timeout(WAIT).unwrap();

        // The tunnel survived all of it.
        v_roundtrip(&a, &aev, b"the tunnel survived");
        let (i, iev) = v_client(&p, addr, b"and still opens streams");
        sev.open();
        assert!(p.a.close_info().is_none() && p.b.close_info().is_none());
        // The last panic happens just after its handler reported: wait for it.
        let t0 = Instant::now();
        loop {
            let caught = zs_io::handler_panics() - panics0;
            if caught >= 8 {
                break;
            }
            assert!(
                t0.elapsed() < WAIT,
                "{io:?}: only {caught} handler panics counted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for (conn, ev) in [(a, aev), (i, iev)] {
            conn.close();
            assert_eq!(ev.close(), CloseReason::Local);
            assert_eq!(sev.close(), CloseReason::PeerClosed);
        }
        drop(l);
    }
}

/// secure(tunnel(secure(epoll))) composes from trait objects with no code of its
/// own: the physical backend is a `SecureBackend` (the tunnel runs no session
/// and binds its token PROOFs to the link's session), and a second
/// `SecureBackend` over the tunnel handles carries an end-to-end session inside
/// a virtual connection. A relay on the physical link sees neither plaintext.
#[test]
fn secure_tunnel_secure_composes_from_trait_objects() {
    for io in ios() {
        let raw = tunnel_util::io_backend(io, zs_io::Config::default());
        let link: Arc<dyn Backend> = Arc::new(zs_secure::SecureBackend::new(
            raw.clone(),
            psk_security(b"link"),
        ));
        let cfg = TunnelConfig::over_secure_link(Auth::token(b"a token of 16+ bytes").unwrap());
        let (factory, rx) = Tunnel::acceptor(cfg.clone()).unwrap();
        let phys = link.listen(vaddr("127.0.0.1:0"), factory).unwrap();
        let (relay, seen) = recording_relay(phys.local_addr());
        let b = Tunnel::connect(&*link, relay, cfg, WAIT).unwrap();
        let a = rx.recv_timeout(WAIT).unwrap();
        a.wait_ready(WAIT).unwrap();
        let e2e = |h: &zs_p2pvm::TunnelHandle| -> Arc<dyn Backend> {
            Arc::new(zs_secure::SecureBackend::new(
                Arc::new(h.clone()),
                psk_security(b"end-to-end"),
            ))
        };
        let (inner_a, inner_b) = (e2e(&a), e2e(&b));
        assert!(inner_b.name().starts_with("secure("), "{}", inner_b.name());
        let (f, _ev) = echo_factory();
        let l = inner_a.listen(vaddr("10.0.0.9:1"), f).unwrap();
        assert!(b.wait_peer_listen(l.local_addr(), WAIT));
        let secret = b"TOP-SECRET-END-TO-END-0123456789";
        echo_once(&*inner_b, l.local_addr(), secret);
        // The same tunnel also carries plain virtual connections.
        let (f, _ev2) = echo_factory();
        let l2 = a.listen(vaddr("10.0.0.9:2"), f).unwrap();
        assert!(b.wait_peer_listen(l2.local_addr(), WAIT));
        let inside = b"INSIDE-THE-LINK-SESSION-ONLY-42";
        echo_once(&b, l2.local_addr(), inside);
        let s = seen.lock().unwrap().clone();
        for p in [&secret[..], &inside[..]] {
            assert!(!s.windows(p.len()).any(|w| w == p), "plaintext on the link");
        }
        a.close("done");
        b.close("done");
        raw.shutdown();
    }
}

/// A tunnel that requires a secure link ends (never ready) on a plain one, and
/// token auth over a secure link fails closed when the PROOF would be unbound.
#[test]
fn secure_link_tunnel_refuses_a_plain_link() {
    let raw = tunnel_util::io_backend(ios()[0], zs_io::Config::default());
    let cfg = TunnelConfig::over_secure_link(Auth::None);
    let (factory, rx) = Tunnel::acceptor(cfg.clone()).unwrap();
    let phys = raw.listen(vaddr("127.0.0.1:0"), factory).unwrap();
    let b = Tunnel::connect(&*raw, phys.local_addr(), cfg, WAIT);
    assert!(b.is_err(), "a plain link was accepted");
    let a = rx.recv_timeout(WAIT).unwrap();
    let info = a.wait_closed(WAIT).expect("the acceptor end closes");
    assert!(info.reason.contains("no secure session"), "{info:?}");
    // Both choices at once are a configuration error.
    let mut both = TunnelConfig::secure(psk_security(b"x"), Auth::None);
    both.secure_link = true;
    assert!(matches!(
        Tunnel::handler(zs_p2pvm::Role::Initiator, both),
        Err(zs_p2pvm::Error::Config(_))
    ));
    raw.shutdown();
}
