//! First-byte sniffing (`SecureBackend::listen_with_raw`): a custom protocol
//! beside the secure one on the same port (moved here from zs-core's
//! `start_with_raw`), and its bounds: a silent peer and a peer that sends the
//! handshake record's first byte and stalls are both closed by the handshake
//! timeout; the connections waiting for a first byte are capped.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{assert_dropped, epoll, good_client, psk_provider, roundtrip, tcp, Echo, KEY, WAIT};
use zs_io::{Conn, Handler, HandlerFactory, Listener};
use zs_secure::{SecureBackend, SecureConfig};

/// Answers the raw bytes upper-cased.
struct Upper;

impl Handler for Upper {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let up = data.split().to_ascii_uppercase();
        let _ = conn.send(Bytes::from(up));
    }
}

fn sniffing(cfg: SecureConfig) -> (SecureBackend, Box<dyn Listener>) {
    let secure = SecureBackend::with_config(epoll(), psk_provider(b"alice", &KEY), cfg);
    let (tx, _rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let factory: HandlerFactory =
        Arc::new(move || Box::new(Echo(tx.lock().unwrap().clone())) as Box<dyn Handler>);
    let listener = secure
        .listen_with_raw(
            "127.0.0.1:0".parse().unwrap(),
            factory,
            zs_io::handler_factory(|| Upper),
        )
        .unwrap();
    (secure, listener)
}

fn short() -> SecureConfig {
    SecureConfig {
        handshake_timeout: Duration::from_millis(300),
        ..SecureConfig::default()
    }
}

#[test]
fn a_custom_protocol_beside_the_secure_one_on_the_same_port() {
    let (secure, listener) = sniffing(SecureConfig::default());
    let addr = listener.local_addr();
    let mut raw = tcp(addr);
    raw.write_all(b"hello raw").unwrap();
    let mut buf = [0u8; 9];
    raw.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HELLO RAW");
    let mut good = good_client(addr);
    roundtrip(&mut good, b"secure echo");
    // The raw connection goes on beside it.
    raw.write_all(b"again").unwrap();
    let mut buf = [0u8; 5];
    raw.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"AGAIN");
    assert_eq!(secure.stats().handshakes, 1);
}

/// Attack: a peer that sends the first byte of a handshake record and stalls,
/// and one that sends nothing, are both closed at the handshake timeout and
/// counted; an honest client is served meanwhile.
#[test]
fn one_byte_then_silence_is_bounded_by_the_handshake_timeout() {
    let (secure, listener) = sniffing(short());
    let addr = listener.local_addr();
    let t0 = Instant::now();
    let mut one = tcp(addr);
    one.write_all(&[0x16]).unwrap();
    let mut silent = tcp(addr);
    let mut good = good_client(addr);
    roundtrip(&mut good, b"served");
    assert_dropped(&mut one, "one byte then silence");
    assert_dropped(&mut silent, "silence");
    let took = t0.elapsed();
    assert!(took < WAIT, "closed after {took:?}");
    let t = Instant::now();
    while secure.stats().handshake_timeouts < 2 {
        assert!(t.elapsed() < WAIT, "{:?}", secure.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    roundtrip(&mut good, b"still served");
}

/// The connections waiting for their first byte are capped by
/// `max_handshakes`: one more is reset at accept and counted.
#[test]
fn connections_waiting_for_a_first_byte_are_capped() {
    let (secure, listener) = sniffing(SecureConfig {
        max_handshakes: 3,
        ..SecureConfig::default()
    });
    let addr = listener.local_addr();
    let waiting: Vec<_> = (0..3).map(|_| tcp(addr)).collect();
    let t = Instant::now();
    // The reset of a connection over the cap may even beat `connect`.
    match std::net::TcpStream::connect_timeout(&addr, WAIT) {
        Ok(mut over) => {
            over.set_read_timeout(Some(WAIT)).unwrap();
            assert_dropped(&mut over, "over max_handshakes");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    while secure.stats().handshakes_refused < 1 {
        assert!(t.elapsed() < WAIT, "{:?}", secure.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(waiting);
    // Once they left, a client gets in.
    let t = Instant::now();
    loop {
        let mut c = tcp(addr);
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        if c.read_exact(&mut b).is_ok() {
            assert_eq!(&b, b"X");
            break;
        }
        assert!(t.elapsed() < WAIT, "never admitted again");
        std::thread::sleep(Duration::from_millis(20));
    }
}
