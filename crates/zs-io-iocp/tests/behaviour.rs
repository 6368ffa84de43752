//! IOCP-specific behaviour beyond the conformance kit: partial frames kept across
//! receives, paused reading, and a backend shut down from inside a handler.
#![cfg(windows)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zs_io::{Backend, Bytes, BytesMut, CloseReason, Config, Conn, Handler};
use zs_io_iocp::IocpBackend;

const WAIT: Duration = Duration::from_secs(20);

fn backend() -> IocpBackend {
    IocpBackend::new(Config {
        loops: 2,
        ..Config::default()
    })
    .unwrap()
}

/// Consumes only whole frames (1-byte length + body) and reports each body; the
/// rest stays in the buffer for the next receive.
struct Framer(Sender<Vec<u8>>);

impl Handler for Framer {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        while let Some(&len) = data.first() {
            let len = len as usize;
            if data.len() < 1 + len {
                break;
            }
            let frame = data.split_to(1 + len);
            let _ = self.0.send(frame[1..].to_vec());
        }
    }
}

#[test]
fn partial_frames_survive_between_receives() {
    let b = backend();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let l = b
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || Box::new(Framer(tx.lock().unwrap().clone())) as Box<dyn Handler>),
        )
        .unwrap();
    let mut s = TcpStream::connect(l.local_addr()).unwrap();
    s.set_nodelay(true).unwrap();
    let frames: Vec<Vec<u8>> = (1..=20u8).map(|n| vec![n; n as usize * 7]).collect();
    let mut wire = Vec::new();
    for f in &frames {
        wire.push(f.len() as u8);
        wire.extend_from_slice(f);
    }
    // Dribble the stream in odd pieces so frames straddle receives.
    for piece in wire.chunks(13) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    for f in &frames {
        assert_eq!(&rx.recv_timeout(WAIT).unwrap(), f);
    }
    drop(l);
    b.shutdown();
}

/// Pauses reading on the first bytes, resumes from a timer 300 ms later.
struct Pauser {
    events: Sender<(Instant, usize)>,
}

impl Handler for Pauser {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let _ = self.events.send((Instant::now(), data.len()));
        data.clear();
        conn.set_read_paused(true);
        conn.set_timer(Duration::from_millis(300), 1).unwrap();
    }
    fn on_timer(&mut self, conn: &Conn, _token: u64) {
        conn.set_read_paused(false);
    }
}

#[test]
fn paused_reading_holds_data_until_resumed() {
    let b = backend();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let l = b
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || {
                Box::new(Pauser {
                    events: tx.lock().unwrap().clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let mut s = TcpStream::connect(l.local_addr()).unwrap();
    s.write_all(b"first").unwrap();
    let (t1, n1) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(n1, 5);
    s.write_all(b"second").unwrap();
    let (t2, n2) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(n2, 6);
    assert!(
        t2.duration_since(t1) >= Duration::from_millis(300),
        "data delivered while paused"
    );
    drop(l);
    b.shutdown();
}

/// Shuts the whole backend down from inside `on_data` (must not deadlock).
struct Stopper {
    backend: Arc<Mutex<Option<Arc<IocpBackend>>>>,
    closed: Sender<CloseReason>,
}

impl Handler for Stopper {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        data.clear();
        let _ = conn.send(Bytes::from_static(b"bye"));
        if let Some(b) = self.backend.lock().unwrap().take() {
            b.shutdown();
        }
    }
    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let _ = self.closed.send(reason);
    }
}

#[test]
fn shutdown_from_a_handler() {
    let b = Arc::new(backend());
    let slot = Arc::new(Mutex::new(Some(b.clone())));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let slot2 = slot.clone();
    let l = b
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || {
                Box::new(Stopper {
                    backend: slot2.clone(),
                    closed: tx.lock().unwrap().clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let mut s = TcpStream::connect(l.local_addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"stop").unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), CloseReason::Shutdown);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(matches!(
        b.connect(l.local_addr(), WAIT, Box::new(Framer(mpsc::channel().0))),
        Err(zs_io::Error::ShutDown)
    ));
    drop(l);
    b.shutdown(); // joins the loops that already stopped
}
