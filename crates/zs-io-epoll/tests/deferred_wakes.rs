//! `zs_io::defer_wakes`: posts a thread makes to a loop inside the scope do
//! not wake the loop one by one; the loop is woken once when the scope ends,
//! and then acts on every one of them.

#![cfg(target_os = "linux")]

use std::io;
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use zs_io::reactor::{AcceptMode, Event, Interest, Poller, PollerFactory, ReactorBackend, Waker};
use zs_io::testkit::WAIT;
use zs_io::{Backend, BytesMut, Config, Conn, Handler};
use zs_io_epoll::EpollPoller;

/// The epoll poller, counting the wake-ups asked of it.
struct Counting {
    inner: EpollPoller,
    wakes: Arc<AtomicUsize>,
}

struct CountingWaker {
    inner: Arc<dyn Waker>,
    wakes: Arc<AtomicUsize>,
}

impl Waker for CountingWaker {
    fn wake(&self) -> io::Result<()> {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.inner.wake()
    }
}

impl Poller for Counting {
    fn register(&mut self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        self.inner.register(fd, token, interest)
    }
    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.inner.deregister(fd)
    }
    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.wait(events, timeout)
    }
    fn waker(&self) -> Arc<dyn Waker> {
        Arc::new(CountingWaker {
            inner: self.inner.waker(),
            wakes: self.wakes.clone(),
        })
    }
}

/// Hands its connection out on open; reports each wake token.
struct Woken {
    conn_tx: mpsc::Sender<Conn>,
    woke_tx: mpsc::Sender<u64>,
}

impl Handler for Woken {
    fn on_open(&mut self, conn: &Conn) {
        let _ = self.conn_tx.send(conn.clone());
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
    fn on_timer(&mut self, _conn: &Conn, token: u64) {
        let _ = self.woke_tx.send(token);
    }
}

#[test]
fn posts_in_a_deferred_scope_wake_the_loop_once_at_its_end() {
    const N: usize = 20;
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = wakes.clone();
    let pollers: PollerFactory = Arc::new(move || {
        Ok(Box::new(Counting {
            inner: EpollPoller::new()?,
            wakes: w.clone(),
        }) as Box<dyn Poller>)
    });
    let backend = ReactorBackend::start(
        "counting-epoll",
        Config {
            loops: 1,
            ..Config::default()
        },
        AcceptMode::ReusePort,
        pollers,
    )
    .unwrap();
    let (conn_tx, conn_rx) = mpsc::channel();
    let (woke_tx, woke_rx) = mpsc::channel();
    let listener = backend
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || {
                Box::new(Woken {
                    conn_tx: conn_tx.clone(),
                    woke_tx: woke_tx.clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let clients: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(listener.local_addr()).unwrap())
        .collect();
    let conns: Vec<Conn> = (0..N)
        .map(|_| conn_rx.recv_timeout(WAIT).unwrap())
        .collect();

    // Outside a scope, a wake from this thread wakes the loop.
    let before = wakes.load(Ordering::SeqCst);
    conns[0].wake(1000).unwrap();
    assert_eq!(woke_rx.recv_timeout(WAIT).unwrap(), 1000);
    assert!(wakes.load(Ordering::SeqCst) > before);

    // Inside: one post per connection (each its own kick), no wake-up until
    // the scope ends, then exactly one, and every connection is woken.
    let before = wakes.load(Ordering::SeqCst);
    let during = zs_io::defer_wakes(|| {
        for (i, c) in conns.iter().enumerate() {
            c.wake(i as u64).unwrap();
        }
        // Nested scopes wake at the end of the outermost one.
        zs_io::defer_wakes(|| conns[0].set_timer(Duration::ZERO, 99).unwrap());
        wakes.load(Ordering::SeqCst) - before
    });
    assert_eq!(during, 0, "the loop was woken inside the scope");
    assert_eq!(
        wakes.load(Ordering::SeqCst) - before,
        1,
        "one wake-up at the end"
    );
    let mut got: Vec<u64> = (0..=N)
        .map(|_| woke_rx.recv_timeout(WAIT).unwrap())
        .collect();
    got.sort_unstable();
    let mut want: Vec<u64> = (0..N as u64).collect();
    want.push(99);
    assert_eq!(got, want);

    // A scope that unwinds still wakes the loop.
    let before = wakes.load(Ordering::SeqCst);
    let c = conns[1].clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        zs_io::defer_wakes(|| {
            c.wake(7).unwrap();
            panic!("in the scope");
        })
    }));
    assert!(r.is_err());
    assert_eq!(wakes.load(Ordering::SeqCst) - before, 1);
    assert_eq!(woke_rx.recv_timeout(WAIT).unwrap(), 7);
    drop(clients);
    drop(listener);
    backend.shutdown();
}
