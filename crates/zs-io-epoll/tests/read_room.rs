//! The reactor fills a read buffer the handler sized (data left in it with
//! room reserved behind it) up to that room instead of regrowing it, so what
//! the handler keeps there is never moved: a frame being completed where it
//! lies stays put.

#![cfg(target_os = "linux")]

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::Arc;

use zs_io::testkit::WAIT;
use zs_io::BytesMut;
use zs_io::{Backend, Config, Conn, Handler};
use zs_io_epoll::EpollBackend;

/// A message is an 8-byte length `n` (of the whole message) and `n - 8`
/// bytes. On the first bytes the handler pauses reading (so the test can
/// queue everything in the socket first), reserves exactly the rest of the
/// first message and remembers where it starts; when it is complete it
/// reports whether it still starts there, then counts what follows.
struct Sizer {
    conn_tx: mpsc::Sender<Conn>,
    done_tx: mpsc::Sender<(bool, usize)>,
    first: Option<(usize, usize)>,
    moved: Option<bool>,
    rest: usize,
    want_rest: usize,
}

impl Handler for Sizer {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        if self.first.is_none() {
            if data.len() < 8 {
                return;
            }
            let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
            data.reserve(n - data.len());
            self.first = Some((data.as_ptr() as usize, n));
            conn.set_read_paused(true);
            let _ = self.conn_tx.send(conn.clone());
            return;
        }
        let (at, n) = self.first.unwrap();
        if self.moved.is_none() {
            if data.len() < n {
                if data.as_ptr() as usize != at {
                    self.moved = Some(true);
                }
                return;
            }
            self.moved = Some(data.as_ptr() as usize != at);
            let _ = data.split_to(n);
        }
        self.rest += data.len();
        data.clear();
        if self.rest == self.want_rest {
            let _ = self.done_tx.send((self.moved.unwrap(), self.rest));
        }
    }
}

#[test]
fn a_buffer_the_handler_sized_is_filled_not_regrown() {
    let backend = EpollBackend::new(Config {
        loops: 1,
        ..Config::default()
    })
    .unwrap();
    let (conn_tx, conn_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    // The first message's rest (~200 KiB) is more than a 64 KiB chunk and
    // less than the 256 KiB read budget: regrowing would move it.
    let first = 200_000usize;
    let second = 150_000usize;
    let handler = std::sync::Mutex::new(Some(Sizer {
        conn_tx,
        done_tx,
        first: None,
        moved: None,
        rest: 0,
        want_rest: second,
    }));
    let listener = backend
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || {
                Box::new(handler.lock().unwrap().take().expect("one connection"))
                    as Box<dyn Handler>
            }),
        )
        .unwrap();
    let mut client = TcpStream::connect(listener.local_addr()).unwrap();
    client.set_write_timeout(Some(WAIT)).unwrap();
    client.write_all(&(first as u64).to_le_bytes()).unwrap();
    let conn = conn_rx.recv_timeout(WAIT).expect("the first bytes");
    // Everything else waits in the socket before reading resumes.
    let rest: Vec<u8> = (0..first - 8 + second).map(|i| i as u8).collect();
    client.write_all(&rest).unwrap();
    conn.set_read_paused(false);
    let (moved, got) = done_rx.recv_timeout(WAIT).expect("both messages");
    assert_eq!(got, second);
    assert!(!moved, "the reactor regrew the buffer the handler sized");
    drop(listener);
    backend.shutdown();
}
