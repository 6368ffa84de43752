//! Hostile peers against a `SecureBackend` server: each is disconnected (counted in
//! the layer's stats, logged with its reason) while a well-behaved connection made
//! before the attacks keeps working.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use zs_secure::SecureConfig;

fn short() -> SecureConfig {
    SecureConfig {
        handshake_timeout: Duration::from_millis(400),
        max_pending_plaintext: 64 * 1024,
        ..SecureConfig::default()
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn garbage_before_the_handshake_is_dropped() {
    let srv = EchoServer::start(short());
    let mut good = good_client(srv.addr());
    roundtrip(&mut good, b"before");
    let mut bad = tcp(srv.addr());
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_dropped(&mut bad, "garbage");
    wait_for("counted", || srv.secure.stats().handshake_failures == 1);
    roundtrip(&mut good, b"after garbage");
    // A hello-typed record whose body is garbage.
    let mut bad = tcp(srv.addr());
    bad.write_all(&[0x16, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    assert_dropped(&mut bad, "garbage hello");
    wait_for("counted", || srv.secure.stats().handshake_failures == 2);
    roundtrip(&mut good, b"still fine");
    assert_eq!(srv.secure.stats().handshakes, 1);
}

#[test]
fn oversize_records_are_refused_before_buffering() {
    let srv = EchoServer::start(short());
    let mut good = good_client(srv.addr());
    // Before the handshake: a 1 GiB handshake record header.
    let mut bad = tcp(srv.addr());
    bad.write_all(&[0x16, 0, 0, 0, 0x40]).unwrap();
    assert_dropped(&mut bad, "oversize hello");
    // After the handshake: a 100 MiB data record header.
    let mut evil = good_client(srv.addr());
    roundtrip(&mut evil, b"ok so far");
    evil.get_ref().write_all(&[0x17, 0, 0, 0x40, 0x06]).unwrap();
    assert_dropped(&mut evil, "oversize record");
    wait_for("counted", || srv.secure.stats().record_errors == 1);
    assert_eq!(srv.secure.stats().handshake_failures, 1);
    roundtrip(&mut good, b"others carry on");
}

#[test]
fn forged_records_are_dropped_and_deliver_nothing() {
    let srv = EchoServer::start(short());
    let mut good = good_client(srv.addr());
    let mut evil = good_client(srv.addr());
    roundtrip(&mut evil, b"x");
    // Drain the server's events so far.
    while srv.seen.try_recv().is_ok() {}
    let mut forged = vec![0x17, 64, 0, 0, 0];
    forged.extend((0..64u8).map(|i| i.wrapping_mul(7)));
    evil.get_ref().write_all(&forged).unwrap();
    assert_dropped(&mut evil, "forged record");
    wait_for("counted", || srv.secure.stats().record_errors == 1);
    // The handler saw no data from the forged record, only the close.
    loop {
        match srv.seen.recv_timeout(WAIT).unwrap() {
            Seen::Data(n) => panic!("{n} bytes of a forged record delivered"),
            Seen::Close(_) => break,
            Seen::Open(_) => {}
        }
    }
    roundtrip(&mut good, b"others carry on");
}

#[test]
fn slowloris_and_silent_handshakes_time_out() {
    let srv = EchoServer::start(short());
    let mut good = good_client(srv.addr());
    let t0 = Instant::now();
    let mut silent = tcp(srv.addr());
    let mut slow = tcp(srv.addr());
    // One byte of a plausible 200-byte hello every 50 ms: never done in time.
    let hello_head = [0x16u8, 200, 0, 0, 0];
    let mut dripped = 0;
    let mut slow_dropped = false;
    while t0.elapsed() < Duration::from_millis(1500) {
        let b = hello_head.get(dripped).copied().unwrap_or(0);
        if slow.write_all(&[b]).is_err() {
            slow_dropped = true;
            break;
        }
        dripped += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    if !slow_dropped {
        assert_dropped(&mut slow, "slowloris");
    }
    assert_dropped(&mut silent, "silent");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "dropped before the handshake timeout"
    );
    assert!(dripped >= 5);
    wait_for("counted", || srv.secure.stats().handshake_timeouts == 2);
    roundtrip(&mut good, b"others carry on");
}

#[test]
fn unconsumed_plaintext_is_bounded() {
    use bytes::BytesMut;
    use std::sync::Arc;
    use zs_io::{Backend, Conn, Handler};
    // A handler that never consumes anything (waits for a frame that never ends).
    struct Hoarder;
    impl Handler for Hoarder {
        fn on_data(&mut self, _conn: &Conn, _data: &mut BytesMut) {}
    }
    let secure =
        zs_secure::SecureBackend::with_config(epoll(), psk_provider(b"alice", &KEY), short());
    let l = secure
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(|| Box::new(Hoarder) as Box<dyn Handler>),
        )
        .unwrap();
    let mut c = good_client(l.local_addr());
    let chunk = vec![7u8; 16 * 1024];
    let mut sent = 0;
    for _ in 0..64 {
        if c.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(sent > 64 * 1024);
    assert_dropped(&mut c, "hoarded plaintext");
    wait_for("counted", || secure.stats().plaintext_overflows == 1);
    secure.shutdown();
}

#[test]
fn wrong_key_fails_the_handshake_on_both_sides() {
    let srv = EchoServer::start(short());
    let wrong = psk_provider(b"alice", &[0x22; 32]);
    let r = zs_secure::SecureStream::connect(tcp(srv.addr()), &*wrong);
    assert!(r.is_err(), "a wrong key must not connect");
    wait_for("counted", || srv.secure.stats().handshake_failures == 1);
    assert_eq!(srv.secure.stats().handshakes, 0);
    let mut good = good_client(srv.addr());
    roundtrip(&mut good, b"right key");
    let _ = good.read(&mut [0u8; 0]);
}

#[test]
fn handshakes_in_progress_are_bounded_per_source_address() {
    let secure = zs_secure::SecureBackend::with_config(
        common::epoll(),
        common::psk_provider(b"alice", &common::KEY),
        SecureConfig {
            handshake_timeout: Duration::from_secs(3),
            ..short()
        },
    )
    .with_max_handshakes_per_ip(2);
    let srv = EchoServer::over(secure);
    // Two silent connections from 127.0.0.1 hold that address's slots...
    let _a = tcp(srv.addr());
    let _b = tcp(srv.addr());
    std::thread::sleep(Duration::from_millis(50));
    // ...so a third from it is reset at once, by the cap, not by a timeout...
    match std::net::TcpStream::connect_timeout(&srv.addr(), Duration::from_secs(10)) {
        Ok(mut c) => {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_dropped(&mut c, "over max_handshakes_per_ip");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    wait_for("counted", || srv.secure.stats().handshakes_refused >= 1);
    assert_eq!(srv.secure.stats().handshake_timeouts, 0);
    // ...while another address still gets in.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(
            &"127.0.0.2:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    other.connect(&srv.addr().into()).unwrap();
    let other: std::net::TcpStream = other.into();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut c =
        zs_secure::SecureStream::connect(other, &*common::psk_provider(b"alice", &common::KEY))
            .unwrap();
    roundtrip(&mut c, b"another address is not capped");
    // Once the silent ones time out, 127.0.0.1 gets in again.
    wait_for("timed out", || srv.secure.stats().handshake_timeouts == 2);
    let mut again = good_client(srv.addr());
    roundtrip(&mut again, b"slots are free again");
}

#[test]
fn handshakes_in_progress_are_bounded_per_layer() {
    // A handshake timeout far above any scheduling delay, so the silent
    // connections below surely hold their slots while the third one arrives.
    let srv = EchoServer::start(SecureConfig {
        max_handshakes: 2,
        handshake_timeout: Duration::from_secs(3),
        ..short()
    });
    let mut good = good_client(srv.addr());
    // Two silent connections hold both handshake slots...
    let _a = tcp(srv.addr());
    let _b = tcp(srv.addr());
    wait_for("both accepted", || {
        std::thread::sleep(Duration::from_millis(50));
        true
    });
    // ...so a third is reset at once (the reset may even beat `connect`),
    // refused by the cap rather than by the handshake timeout.
    match std::net::TcpStream::connect_timeout(&srv.addr(), Duration::from_secs(10)) {
        Ok(mut c) => {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_dropped(&mut c, "over max_handshakes");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(
        srv.secure.stats().handshake_timeouts,
        0,
        "dropped by a timeout, not by the cap"
    );
    wait_for("counted", || srv.secure.stats().handshakes_refused >= 1);
    // Established connections do not hold a slot; once the silent ones time out
    // the slots are free again.
    roundtrip(&mut good, b"established ones are unaffected");
    wait_for("timed out", || srv.secure.stats().handshake_timeouts == 2);
    let mut again = good_client(srv.addr());
    roundtrip(&mut again, b"slots are free again");
}
