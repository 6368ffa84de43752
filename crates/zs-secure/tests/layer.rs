//! The layer's own promises: who the peer is (`SecurityInfo`), one record per
//! callback (checked on the wire against a zs-crypto session driven by hand),
//! typed handshake errors on connect, the inner handler's timer tokens, pause.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use zs_io::testkit::RecordingConn;
use zs_io::{Backend, Conn, Error, Handler};
use zs_secure::{handshake_error, HandshakeError, SecureBackend, SecureConfig};

#[test]
fn security_info_reports_suite_and_psk_identity() {
    let srv = EchoServer::start(SecureConfig::default());
    let mut c = good_client(srv.addr());
    roundtrip(&mut c, b"hi");
    let conn = loop {
        if let Seen::Open(c) = srv.seen.recv_timeout(WAIT).unwrap() {
            break c;
        }
    };
    let info = conn.security_info().expect("a secure connection reports");
    assert_eq!(info.provider, "zs-aead");
    assert_eq!(info.suite, "AES-256-GCM");
    assert_eq!(info.psk_identity.as_deref(), Some(&b"alice"[..]));
    assert_eq!(info.server_key, None, "a PSK handshake uses no server key");
    // The blocking client sees the same suite and the same channel binding.
    let ci = c.security_info().unwrap();
    assert_eq!(ci.suite, "AES-256-GCM");
    assert!(info.channel_binding.is_some());
    assert_eq!(ci.channel_binding, info.channel_binding);
    assert!(!format!("{info:?}").contains(&format!("{:?}", info.channel_binding.unwrap())[1..8]));

    // A plain transport knows nothing.
    let raw = epoll();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let l = raw
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || Box::new(Echo(tx.lock().unwrap().clone())) as Box<dyn Handler>),
        )
        .unwrap();
    let _s = tcp(l.local_addr());
    match rx.recv_timeout(WAIT).unwrap() {
        Seen::Open(c) => assert!(c.security_info().is_none()),
        other => panic!("{other:?}"),
    }
    raw.shutdown();
}

/// Sends `n` small messages in `on_open` (one callback), then one more from
/// another thread per message of `later`.
struct Burst {
    n: usize,
    opened: mpsc::Sender<Conn>,
}

impl Handler for Burst {
    fn on_open(&mut self, conn: &Conn) {
        for i in 0..self.n {
            conn.send(Bytes::from(format!("msg{i:04};"))).unwrap();
        }
        let _ = self.opened.send(conn.clone());
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
}

/// Reads `want` plaintext bytes with a hand-driven zs-crypto session, counting
/// the Data records (type 0x17) that carried them.
fn read_records(
    s: &mut std::net::TcpStream,
    session: &mut dyn zs_crypto::SecureSession,
    want: usize,
) -> (Vec<u8>, usize) {
    let mut plain = Vec::new();
    let mut records = 0;
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    while plain.len() < want {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        raw.extend_from_slice(&buf[..n]);
        // Count whole records by their headers (type u8, length u32 LE).
        while raw.len() >= 5 {
            let len = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
            if raw.len() < 5 + len {
                break;
            }
            if raw[0] == 0x17 {
                records += 1;
            }
            let rec: Vec<u8> = raw.drain(..5 + len).collect();
            session
                .handle_input_with(&rec, Instant::now(), &mut |d| plain.extend_from_slice(d))
                .unwrap();
        }
        while let Some(ev) = session.poll_event() {
            if let zs_crypto::Event::Data(d) = ev {
                plain.extend_from_slice(&d);
            }
        }
    }
    (plain, records)
}

#[test]
fn sends_in_one_callback_share_one_record_on_the_wire() {
    let provider = psk_provider(b"alice", &KEY);
    let secure = SecureBackend::new(epoll(), provider.clone());
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let l = secure
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || {
                Box::new(Burst {
                    n: 100,
                    opened: tx.lock().unwrap().clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    // The peer is a zs-crypto session driven by hand over a plain socket.
    let mut s = tcp(l.local_addr());
    let mut session = provider.new_client(Instant::now()).unwrap();
    let mut out = Vec::new();
    session.write_output(&mut out);
    s.write_all(&out).unwrap();
    let mut buf = [0u8; 4096];
    while session.is_handshaking() {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        session.handle_input(&buf[..n], Instant::now()).unwrap();
    }
    let mut out = Vec::new();
    session.write_output(&mut out); // the client's Finished
    s.write_all(&out).unwrap();
    let want: Vec<u8> = (0..100)
        .flat_map(|i| format!("msg{i:04};").into_bytes())
        .collect();
    let (plain, records) = read_records(&mut s, &mut *session, want.len());
    assert_eq!(plain, want);
    assert_eq!(
        records, 1,
        "100 sends in one callback must share one record"
    );

    // Sends from another thread are sealed at once: one record each.
    let conn = rx.recv_timeout(WAIT).unwrap();
    for i in 0..3 {
        conn.send(Bytes::from(format!("late{i}"))).unwrap();
        let (plain, records) = read_records(&mut s, &mut *session, 5);
        assert_eq!(plain, format!("late{i}").as_bytes());
        assert_eq!(records, 1);
    }
    secure.shutdown();
}

/// Reports the connect outcome.
struct Outcome(mpsc::Sender<Result<Conn, Error>>);

impl Handler for Outcome {
    fn on_open(&mut self, conn: &Conn) {
        let _ = self.0.send(Ok(conn.clone()));
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
    fn on_connect_failed(&mut self, error: Error) {
        let _ = self.0.send(Err(error));
    }
}

#[test]
fn connect_reports_typed_handshake_errors() {
    let secure = SecureBackend::new(epoll(), psk_provider(b"alice", &KEY));
    // A server that accepts and says nothing: a handshake timeout, not a close.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    // (An outgoing connection's handshake is bounded by the connect's timeout.)
    secure
        .connect(
            silent.local_addr().unwrap(),
            Duration::from_millis(300),
            Box::new(Outcome(tx)),
        )
        .unwrap();
    let (_held, _) = silent.accept().unwrap();
    let e = rx.recv_timeout(WAIT).unwrap().expect_err("must fail");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(
        matches!(handshake_error(&e), Some(HandshakeError::TimedOut(_))),
        "{e:?}"
    );
    assert_eq!(secure.stats().handshake_timeouts, 1);

    // A server that answers garbage: a failed handshake.
    let (tx, rx) = mpsc::channel();
    secure
        .connect(silent.local_addr().unwrap(), WAIT, Box::new(Outcome(tx)))
        .unwrap();
    let (mut peer, _) = silent.accept().unwrap();
    peer.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
    let e = rx.recv_timeout(WAIT).unwrap().expect_err("must fail");
    assert!(
        matches!(handshake_error(&e), Some(HandshakeError::Failed(_))),
        "{e:?}"
    );
    // A server that closes at once.
    let (tx, rx) = mpsc::channel();
    secure
        .connect(silent.local_addr().unwrap(), WAIT, Box::new(Outcome(tx)))
        .unwrap();
    drop(silent.accept().unwrap());
    let e = rx.recv_timeout(WAIT).unwrap().expect_err("must fail");
    assert!(
        matches!(handshake_error(&e), Some(HandshakeError::PeerClosed)),
        "{e:?}"
    );
    // TCP refusals stay plain zs-io errors.
    let port = silent.local_addr().unwrap();
    drop(silent);
    let (tx, rx) = mpsc::channel();
    secure.connect(port, WAIT, Box::new(Outcome(tx))).unwrap();
    let e = rx.recv_timeout(WAIT).unwrap().expect_err("must fail");
    assert!(matches!(e, Error::Refused), "{e:?}");
    secure.shutdown();
}

/// Arms timers with the tokens the layer uses for itself, pauses reading.
struct Timers {
    fired: mpsc::Sender<u64>,
    data: mpsc::Sender<Vec<u8>>,
}

impl Handler for Timers {
    fn on_open(&mut self, conn: &Conn) {
        for t in [0u64, 1, 2, 3, 16, u64::MAX] {
            conn.set_timer(Duration::from_millis(20), t).unwrap();
        }
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        if data.starts_with(b"pause") {
            data.advance_to(5);
            conn.set_read_paused(true);
            let c = conn.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                c.set_read_paused(false);
            });
            return;
        }
        let _ = self.data.send(data.split().to_vec());
    }
    fn on_timer(&mut self, _conn: &Conn, token: u64) {
        let _ = self.fired.send(token);
    }
}

trait AdvanceTo {
    fn advance_to(&mut self, n: usize);
}

impl AdvanceTo for BytesMut {
    fn advance_to(&mut self, n: usize) {
        let _ = self.split_to(n);
    }
}

#[test]
fn inner_timer_tokens_are_the_handlers_own_and_pause_holds_plaintext() {
    let secure = SecureBackend::new(epoll(), psk_provider(b"alice", &KEY));
    let (ftx, frx) = mpsc::channel();
    let (dtx, drx) = mpsc::channel();
    let m = std::sync::Mutex::new((ftx, dtx));
    let l = secure
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || {
                let g = m.lock().unwrap();
                Box::new(Timers {
                    fired: g.0.clone(),
                    data: g.1.clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let mut c = good_client(l.local_addr());
    let mut fired: Vec<u64> = (0..6).map(|_| frx.recv_timeout(WAIT).unwrap()).collect();
    fired.sort();
    assert_eq!(fired, vec![0, 1, 2, 3, 16, u64::MAX]);
    assert!(
        frx.recv_timeout(Duration::from_millis(100)).is_err(),
        "each fires once"
    );

    // While paused, plaintext waits in the layer and comes after the resume.
    let t0 = Instant::now();
    c.write_all(b"pause").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    c.write_all(b"held").unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(drx.recv_timeout(WAIT).unwrap());
    }
    assert_eq!(got, b"held");
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "delivered while paused"
    );
    secure.shutdown();
}

/// Wakes itself once it is open and reports the tokens of its `on_timer`s.
struct WakeOnOpen(mpsc::Sender<u64>);

impl Handler for WakeOnOpen {
    fn on_open(&mut self, conn: &Conn) {
        conn.wake(42).unwrap();
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
    fn on_timer(&mut self, _conn: &Conn, token: u64) {
        let _ = self.0.send(token);
    }
}

#[test]
fn wake_rings_the_raw_connections_doorbell_not_a_zero_timer() {
    let layer = zs_secure::SecureLayer::new(psk_provider(b"alice", &KEY), SecureConfig::default());
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let mut server = layer.server_handler(Arc::new(move || {
        Box::new(WakeOnOpen(tx.lock().unwrap().clone())) as Box<dyn Handler>
    }));
    let (ctx, _crx) = mpsc::channel();
    let mut client = layer.client_handler(Box::new(WakeOnOpen(ctx)), WAIT);
    let (s_raw, c_raw) = (
        Arc::new(RecordingConn::default()),
        Arc::new(RecordingConn::default()),
    );
    let (s_conn, c_conn): (Conn, Conn) = (s_raw.clone(), c_raw.clone());
    server.on_open(&s_conn);
    client.on_open(&c_conn);
    // Move the handshake's bytes both ways until the server's inner handler is open.
    for _ in 0..20 {
        let to_server: Vec<Bytes> = std::mem::take(&mut *c_raw.sent.lock().unwrap());
        for b in to_server {
            server.on_data(&s_conn, &mut BytesMut::from(&b[..]));
        }
        let to_client: Vec<Bytes> = std::mem::take(&mut *s_raw.sent.lock().unwrap());
        for b in to_client {
            client.on_data(&c_conn, &mut BytesMut::from(&b[..]));
        }
        if !s_raw.wakes.lock().unwrap().is_empty() {
            break;
        }
    }
    let wakes = s_raw.wakes.lock().unwrap().clone();
    assert_eq!(
        wakes.len(),
        1,
        "one wake of the raw connection, not a timer"
    );
    assert!(
        !s_raw
            .timers
            .lock()
            .unwrap()
            .iter()
            .any(|&(after, _)| after.is_zero()),
        "no zero timer stands in for the wake"
    );
    // The raw loop answers the doorbell: the inner handler gets its own token.
    server.on_timer(&s_conn, wakes[0]);
    assert_eq!(rx.try_recv(), Ok(42));
}
