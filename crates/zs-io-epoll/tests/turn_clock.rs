//! The loop-turn clock (`zs_io::clock`): inside a callback on the reactor's
//! loop thread `clock::now()` is the turn's one reading (it does not move
//! while the callback runs); any other thread reads the system clock.

#![cfg(target_os = "linux")]

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zs_io::testkit::WAIT;
use zs_io::{clock, handler_factory, Backend, BytesMut, Config, Conn, Handler};
use zs_io_epoll::EpollBackend;

/// Reads the turn clock before and after sleeping inside `on_data`.
struct Probe(mpsc::Sender<(Instant, Instant, Instant)>);

impl Handler for Probe {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
        let before = clock::now();
        std::thread::sleep(Duration::from_millis(3));
        let after = clock::now();
        let _ = self.0.send((before, after, Instant::now()));
    }
}

#[test]
fn a_callback_sees_one_clock_reading_per_turn() {
    let backend = EpollBackend::new(Config::default()).unwrap();
    let (tx, rx) = mpsc::channel();
    let listener = backend
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            handler_factory(move || Probe(tx.clone())),
        )
        .unwrap();
    let mut client = TcpStream::connect(listener.local_addr()).unwrap();
    client.write_all(b"x").unwrap();
    let (before, after, real) = rx.recv_timeout(WAIT).expect("on_data ran");
    assert_eq!(before, after, "the turn's clock moved inside one callback");
    assert!(
        real.duration_since(after) >= Duration::from_millis(3),
        "the turn's reading is not the system clock's: {:?} behind",
        real.duration_since(after)
    );
    // Off the loop: the system clock.
    let a = clock::now();
    std::thread::sleep(Duration::from_millis(2));
    assert!(clock::now().duration_since(a) >= Duration::from_millis(2));
    drop(listener);
    backend.shutdown();
}
