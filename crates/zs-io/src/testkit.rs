//! The conformance kit (feature `testkit`): one suite every backend runs unchanged.
//!
//! A backend's `tests/conformance.rs` is one line:
//!
//! ```text
//! zs_io::conformance_tests!(|cfg: zs_io::Config| -> Box<dyn zs_io::Backend> {
//!     Box::new(zs_io_epoll::EpollBackend::new(cfg).unwrap())
//! });
//! ```
//!
//! which expands to one `#[test]` per kit item below (or call [`run_all`]). Each item
//! takes a [`MakeBackend`]: the kit builds the backends it needs with the
//! [`Config`] it wants (two loops, small queues, short idle timeouts), so the same
//! items check every backend under the same settings.
//!
//! Rules the kit follows: servers bind 127.0.0.1 / ::1 only, peers are either the
//! backend itself or plain `std::net` sockets on loopback, nothing goes off this
//! machine, and every wait has a deadline, so each item ends by itself (a stuck
//! backend fails the item, it does not hang it).
//!
//! Sizes: [`big_transfer_slow_reader`] moves **1 GiB** by default (env
//! `ZS_IO_KIT_BIG_BYTES` overrides it, e.g. for slow emulators); boundedness is
//! proved whatever the size by the queue high-water mark (≤ limit + one chunk), by
//! `Error::Full` / `on_writable` having really happened, and on Linux by the
//! process RSS growing by less than 64 MiB while the bytes flow.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::{
    connect_blocking, handler_factory, Backend, CloseReason, Config, Conn, Error, Handler, Prefer,
};

/// Builds a backend from a configuration.
pub type MakeBackend<'a> = &'a dyn Fn(Config) -> Box<dyn Backend>;

/// A connection without a backend that records what its handler asks of it:
/// every `send`, `set_timer` and `wake`, for tests that drive a layered handler
/// (a tunnel driver, a security layer) by hand: the test moves the bytes and
/// decides which timers and wakes to deliver.
#[derive(Default)]
pub struct RecordingConn {
    /// The id it reports.
    pub id: u64,
    /// Bytes handed to `send`, in order.
    pub sent: Mutex<Vec<Bytes>>,
    /// `set_timer` calls: (delay, token).
    pub timers: Mutex<Vec<(Duration, u64)>>,
    /// `wake` tokens.
    pub wakes: Mutex<Vec<u64>>,
}

impl crate::Connection for RecordingConn {
    fn id(&self) -> crate::ConnId {
        crate::ConnId(self.id)
    }
    fn peer_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }
    fn local_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 2))
    }
    fn send(&self, data: Bytes) -> Result<(), Error> {
        self.sent.lock().unwrap().push(data);
        Ok(())
    }
    fn queued_bytes(&self) -> usize {
        0
    }
    fn shutdown_write(&self) -> Result<(), Error> {
        Ok(())
    }
    fn close(&self) {}
    fn abort(&self) {}
    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error> {
        self.timers.lock().unwrap().push((after, token));
        Ok(())
    }
    fn set_idle_timeout(&self, _idle: Option<Duration>) {}
    fn set_read_paused(&self, _paused: bool) {}
    fn is_closed(&self) -> bool {
        false
    }
    fn wake(&self, token: u64) -> Result<(), Error> {
        self.wakes.lock().unwrap().push(token);
        Ok(())
    }
}

/// The longest any single wait in the kit lasts.
pub const WAIT: Duration = Duration::from_secs(30);

fn kit_config() -> Config {
    Config {
        loops: 2,
        ..Config::default()
    }
}

fn v4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// What a [`Recorder`] saw, in order.
#[derive(Debug)]
pub enum Ev {
    /// `on_open`.
    Open(Conn),
    /// `on_data` (the bytes were consumed).
    Data(Bytes),
    /// `on_eof`.
    Eof,
    /// `on_writable`.
    Writable,
    /// `on_timer`.
    Timer(u64, Instant),
    /// `on_close`.
    Close(CloseReason),
    /// `on_connect_failed`.
    ConnectFailed(Error),
}

/// A handler that reports every callback on a channel; optionally echoes data and
/// answers EOF by closing (the default) or not.
pub struct Recorder {
    tx: Sender<Ev>,
    echo: bool,
    /// Echo bytes the connection refused with `Error::Full`: held (reading paused)
    /// until `on_writable`, so a slow peer back-pressures the echo instead of
    /// killing it.
    held: Option<Bytes>,
}

impl Recorder {
    /// A recorder and the receiving end of its events.
    pub fn new(echo: bool) -> (Recorder, Events) {
        let (tx, rx) = mpsc::channel();
        (
            Recorder {
                tx,
                echo,
                held: None,
            },
            Events(rx),
        )
    }
    /// Echoes `b`, or holds it and pauses reading when the send queue is full.
    fn echo_send(&mut self, conn: &Conn, b: Bytes) {
        let b = match self.held.take() {
            Some(held) => {
                let mut joined = BytesMut::from(&held[..]);
                joined.extend_from_slice(&b);
                joined.freeze()
            }
            None => b,
        };
        match conn.send(b) {
            Ok(()) => {}
            Err(Error::Full(back)) => {
                self.held = Some(back);
                conn.set_read_paused(true);
            }
            Err(e) => panic!("echo send failed: {e}"),
        }
    }
    /// Another recorder reporting on the same channel (for factories).
    pub fn sibling(&self) -> Recorder {
        Recorder {
            tx: self.tx.clone(),
            echo: self.echo,
            held: None,
        }
    }
}

impl Handler for Recorder {
    fn on_open(&mut self, conn: &Conn) {
        let _ = self.tx.send(Ev::Open(conn.clone()));
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let b = data.split().freeze();
        if self.echo {
            self.echo_send(conn, b.clone());
        }
        let _ = self.tx.send(Ev::Data(b));
    }
    fn on_eof(&mut self, conn: &Conn) {
        let _ = self.tx.send(Ev::Eof);
        conn.close();
    }
    fn on_writable(&mut self, conn: &Conn) {
        if let Some(b) = self.held.take() {
            conn.set_read_paused(false);
            self.echo_send(conn, b);
        }
        let _ = self.tx.send(Ev::Writable);
    }
    fn on_timer(&mut self, _conn: &Conn, token: u64) {
        let _ = self.tx.send(Ev::Timer(token, Instant::now()));
    }
    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let _ = self.tx.send(Ev::Close(reason));
    }
    fn on_connect_failed(&mut self, error: Error) {
        let _ = self.tx.send(Ev::ConnectFailed(error));
    }
}

/// The receiving end of a [`Recorder`].
pub struct Events(Receiver<Ev>);

impl Events {
    /// The next event, failing the test after `within`.
    pub fn next(&self, within: Duration) -> Ev {
        match self.0.recv_timeout(within) {
            Ok(e) => e,
            Err(e) => panic!("no event within {within:?}: {e}"),
        }
    }
    /// The next event, or `None` if none arrives within `within`.
    pub fn try_next(&self, within: Duration) -> Option<Ev> {
        self.0.recv_timeout(within).ok()
    }
    /// Skips events until `pick` returns `Some`, failing after `within`.
    pub fn until<T>(&self, within: Duration, mut pick: impl FnMut(Ev) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(e) => panic!("expected event not seen within {within:?}: {e}"),
            }
        }
    }
    /// Waits for `on_open` and returns the connection.
    pub fn open(&self) -> Conn {
        self.until(WAIT, |e| match e {
            Ev::Open(c) => Some(c),
            _ => None,
        })
    }
    /// Waits for `on_close` and returns the reason.
    pub fn close(&self) -> CloseReason {
        self.until(WAIT, |e| match e {
            Ev::Close(r) => Some(r),
            _ => None,
        })
    }
    /// Collects data events until `n` bytes arrived.
    pub fn data(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            self.until(WAIT, |e| match e {
                Ev::Data(b) => {
                    out.extend_from_slice(&b);
                    Some(())
                }
                Ev::Close(r) => panic!("closed ({r:?}) after {} of {n} bytes", out.len()),
                _ => None,
            });
        }
        out
    }
    /// Asserts that no event arrives for `d`.
    pub fn quiet(&self, d: Duration) {
        if let Ok(e) = self.0.recv_timeout(d) {
            panic!("unexpected event {e:?}");
        }
    }
}

/// One socket peer of the kit: a plain TCP stream, or (through a [`PeerWrap`]) a
/// stream that speaks the protocol of a layered backend, e.g. a secure session.
pub trait PeerStream: Read + Write + Send {
    /// The TCP socket underneath (addresses, timeouts, linger).
    fn tcp(&self) -> &TcpStream;
    /// Ends this side's sending half (plain TCP: `shutdown(Write)`; a secure
    /// stream first sends its close record). Reading continues.
    fn shutdown_write(&mut self) -> std::io::Result<()>;
}

/// A kit peer.
pub type Peer = Box<dyn PeerStream>;

/// How the kit's socket peers speak to the backend under test. The default (no
/// wrap) is plain TCP, which is what a transport backend carries. A backend that
/// layers a protocol over its connections (e.g. `zs_secure::SecureBackend`) runs
/// the same kit items with [`with_peers`] (or `conformance_tests!(make, peers)`),
/// so the kit's own peers speak that protocol: every item is unchanged.
pub trait PeerWrap: Send + Sync {
    /// Wraps a stream the kit connected to the backend (client side); may run a
    /// handshake. An error means the backend ended the connection during it.
    fn client(&self, s: TcpStream) -> std::io::Result<Peer>;
    /// Wraps a stream the kit accepted from the backend (server side).
    fn server(&self, s: TcpStream) -> std::io::Result<Peer>;
}

struct PlainPeer(TcpStream);

impl Read for PlainPeer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for PlainPeer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl PeerStream for PlainPeer {
    fn tcp(&self) -> &TcpStream {
        &self.0
    }
    fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.0.shutdown(Shutdown::Write)
    }
}

thread_local! {
    static WRAP: RefCell<Option<Arc<dyn PeerWrap>>> = const { RefCell::new(None) };
}

/// Runs `f` (kit items) with the kit's socket peers wrapped by `wrap` on this
/// thread (see [`PeerWrap`]).
pub fn with_peers<R>(wrap: Arc<dyn PeerWrap>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Arc<dyn PeerWrap>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let old = self.0.take();
            WRAP.with(|w| *w.borrow_mut() = old);
        }
    }
    let old = WRAP.with(|w| w.borrow_mut().replace(wrap));
    let _reset = Reset(old);
    f()
}

fn peer_wrap() -> Option<Arc<dyn PeerWrap>> {
    WRAP.with(|w| w.borrow().clone())
}

fn std_connect(addr: SocketAddr) -> Peer {
    let s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    match peer_wrap() {
        Some(w) => w.client(s).unwrap(),
        None => Box::new(PlainPeer(s)),
    }
}

/// A loopback listener for the kit's server-side peers. With a [`PeerWrap`] it
/// accepts (and runs the wrap's handshake) on a thread of its own from the start,
/// since a layered backend's connect completes only once that handshake did.
struct PeerListener {
    addr: SocketAddr,
    plain: Option<TcpListener>,
    ready: Option<Receiver<Peer>>,
    stop: Arc<AtomicBool>,
}

impl PeerListener {
    fn bind() -> PeerListener {
        let l = TcpListener::bind(v4()).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let Some(wrap) = peer_wrap() else {
            return PeerListener {
                addr,
                plain: Some(l),
                ready: None,
                stop,
            };
        };
        l.set_nonblocking(true).unwrap();
        let (tx, rx) = mpsc::channel();
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(WAIT)).unwrap();
                        s.set_write_timeout(Some(WAIT)).unwrap();
                        if let Ok(p) = wrap.server(s) {
                            if tx.send(p).is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        PeerListener {
            addr,
            plain: None,
            ready: Some(rx),
            stop,
        }
    }
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    fn accept(&self) -> Peer {
        match (&self.plain, &self.ready) {
            (Some(l), _) => Box::new(PlainPeer(l.accept().unwrap().0)),
            (None, Some(rx)) => rx.recv_timeout(WAIT).unwrap(),
            (None, None) => unreachable!("a PeerListener has one of both"),
        }
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_exact_timeout(s: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Echo through the backend: a plain TCP client against a backend server (many
/// messages, odd sizes, byte-exact), and a backend client against a backend
/// server; closing the client ends both sides with the right reasons.
pub fn echo(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let (server, sev) = Recorder::new(true);
    let server = Mutex::new(server);
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || Box::new(server.lock().unwrap().sibling()) as Box<dyn Handler>),
        )
        .unwrap();
    let addr = listener.local_addr();
    assert!(addr.port() != 0 && addr.ip().is_loopback());

    // std client: 200 messages of sizes 1..~8 KiB, read back byte-exact.
    let mut s = std_connect(addr);
    let mut total = Vec::new();
    for i in 0..200usize {
        let m = pattern(1 + (i * 37) % 8000, i as u8);
        s.write_all(&m).unwrap();
        total.extend_from_slice(&m);
        if i % 10 == 9 {
            let got = read_exact_timeout(&mut s, total.len());
            assert_eq!(got, total, "echo mismatch");
            total.clear();
        }
    }
    let c = sev.open();
    assert_eq!(c.peer_addr(), s.tcp().local_addr().unwrap());
    assert_eq!(c.local_addr(), addr);
    drop(s);
    assert_eq!(sev.close(), CloseReason::PeerClosed);

    // backend client.
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, addr, WAIT, Box::new(client)).unwrap();
    assert_eq!(conn.peer_addr(), addr);
    assert!(matches!(cev.next(WAIT), Ev::Open(_)));
    let msg = pattern(100_000, 7);
    conn.send(Bytes::from(msg.clone())).unwrap();
    assert_eq!(cev.data(msg.len()), msg);
    let sc = sev.open();
    assert_ne!(sc.id(), conn.id());
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
    done: Sender<CloseReason>,
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
    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let _ = self.done.send(reason);
    }
}

#[cfg(target_os = "linux")]
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(not(target_os = "linux"))]
fn rss_bytes() -> Option<u64> {
    None
}

/// The size [`big_transfer_slow_reader`] moves: `ZS_IO_KIT_BIG_BYTES` or 1 GiB.
pub fn big_transfer_bytes() -> u64 {
    std::env::var("ZS_IO_KIT_BIG_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

/// A backend server pushes [`big_transfer_bytes`] (1 GiB) to a client that starts
/// slowly (stalls, then small reads) and then reads at full speed: every byte
/// arrives in order, the send queue never exceeds limit + one chunk, back-pressure
/// really engaged (`Full` then `on_writable`), and RSS stays bounded (Linux).
pub fn big_transfer_slow_reader(make: MakeBackend<'_>) {
    const LIMIT: usize = 256 * 1024;
    const CHUNK: usize = 64 * 1024;
    let backend = make(Config {
        send_queue_limit: LIMIT,
        ..kit_config()
    });
    let total = big_transfer_bytes();
    let chunk = Bytes::from(pattern(CHUNK, 0));
    let max_queued = Arc::new(AtomicUsize::new(0));
    let fulls = Arc::new(AtomicUsize::new(0));
    let writables = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let (mq, fu, wr, ch) = (
        max_queued.clone(),
        fulls.clone(),
        writables.clone(),
        chunk.clone(),
    );
    let done_tx = Mutex::new(done_tx);
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
                    done: done_tx.lock().unwrap().clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let rss0 = rss_bytes();
    let mut s = std_connect(listener.local_addr());
    // Slow phase: nothing for 300 ms, then 2 MiB in 1 KiB reads with pauses.
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = vec![0u8; CHUNK];
    let mut got: u64 = 0;
    let mut rss_peak = 0u64;
    let mut small = 0;
    let started = Instant::now();
    loop {
        let want = if got < 2 << 20 { 1024 } else { CHUNK };
        let n = s.read(&mut buf[..want]).unwrap();
        if n == 0 {
            break;
        }
        let off = (got % CHUNK as u64) as usize;
        // The stream is `chunk` repeated; compare against it (memcmp, cheap in debug).
        let mut i = 0;
        while i < n {
            let o = (off + i) % CHUNK;
            let len = (n - i).min(CHUNK - o);
            assert_eq!(
                &buf[i..i + len],
                &chunk[o..o + len],
                "corrupt stream at byte {}",
                got + i as u64
            );
            i += len;
        }
        got += n as u64;
        if got < 2 << 20 {
            small += 1;
            if small % 64 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if got % (64 << 20) < n as u64 {
            if let Some(r) = rss_bytes() {
                rss_peak = rss_peak.max(r);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "transfer too slow: {got} bytes"
        );
    }
    assert_eq!(got, total, "short transfer");
    let reason = done_rx.recv_timeout(WAIT).unwrap();
    assert!(
        matches!(reason, CloseReason::Local | CloseReason::PeerClosed),
        "{reason:?}"
    );
    let mq = max_queued.load(Ordering::Relaxed);
    assert!(
        mq <= LIMIT + CHUNK,
        "send queue grew to {mq} bytes, bound {}",
        LIMIT + CHUNK
    );
    assert!(
        fulls.load(Ordering::Relaxed) > 0,
        "back-pressure never engaged"
    );
    assert!(
        writables.load(Ordering::Relaxed) > 0,
        "on_writable never called"
    );
    if let (Some(r0), true) = (rss0, rss_peak > 0) {
        let growth = rss_peak.saturating_sub(r0);
        assert!(
            growth < 64 << 20,
            "RSS grew by {growth} bytes while moving {total} bytes"
        );
    }
    drop(listener);
    backend.shutdown();
}

struct HalfCloseServer {
    seen: usize,
    events: Sender<Ev>,
}

impl Handler for HalfCloseServer {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        self.seen += data.len();
        data.clear();
    }
    fn on_eof(&mut self, conn: &Conn) {
        // The peer finished sending; we can still answer.
        conn.send(Bytes::from(format!("got {}", self.seen)))
            .unwrap();
        conn.close();
    }
    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let _ = self.events.send(Ev::Close(reason));
    }
}

/// Half-close both ways: a client that shuts down its write side still receives the
/// server's answer (the server saw `on_eof` and replied); and a backend client's
/// `shutdown_write` reaches a plain server as EOF while the client still reads.
pub fn half_close(make: MakeBackend<'_>) {
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
    let mut s = std_connect(listener.local_addr());
    s.write_all(&pattern(12345, 1)).unwrap();
    s.shutdown_write().unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got 12345");
    let reason = Events(rx).close();
    assert_eq!(reason, CloseReason::PeerClosed);

    // The other way round: the backend half-closes.
    let plain = PeerListener::bind();
    let paddr = plain.local_addr();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, paddr, WAIT, Box::new(client)).unwrap();
    let mut peer = plain.accept();
    peer.tcp().set_read_timeout(Some(WAIT)).unwrap();
    conn.send(Bytes::from_static(b"request")).unwrap();
    conn.shutdown_write().unwrap();
    assert!(matches!(
        conn.send(Bytes::from_static(b"late")),
        Err(Error::Closed)
    ));
    let mut req = Vec::new();
    peer.read_to_end(&mut req).unwrap(); // ends: the backend sent FIN
    assert_eq!(req, b"request");
    peer.write_all(b"response").unwrap();
    drop(peer);
    assert_eq!(cev.data(8), b"response");
    cev.until(WAIT, |e| matches!(e, Ev::Eof).then_some(()));
    assert_eq!(cev.close(), CloseReason::PeerClosed);
    drop(listener);
    backend.shutdown();
}

/// A peer reset is reported as [`CloseReason::Reset`]; a backend `abort()` resets
/// the plain peer (it reads `ConnectionReset`), and sends afterwards are errors.
pub fn peer_reset(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let (server, sev) = Recorder::new(false);
    let server = Mutex::new(server);
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || Box::new(server.lock().unwrap().sibling()) as Box<dyn Handler>),
        )
        .unwrap();
    let mut s = std_connect(listener.local_addr());
    s.write_all(b"hi").unwrap();
    let c = sev.open();
    assert_eq!(sev.data(2), b"hi");
    socket2::SockRef::from(s.tcp())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s); // RST
    assert_eq!(sev.close(), CloseReason::Reset);
    assert!(matches!(
        c.send(Bytes::from_static(b"x")),
        Err(Error::Closed)
    ));

    let plain = PeerListener::bind();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, plain.local_addr(), WAIT, Box::new(client)).unwrap();
    let mut peer = plain.accept();
    peer.tcp().set_read_timeout(Some(WAIT)).unwrap();
    conn.abort();
    assert_eq!(cev.close(), CloseReason::Local);
    let mut b = [0u8; 4];
    let r = peer.read(&mut b);
    // Wine reports a reset to a reader as end of file; a zero-length send then
    // fails with a reset after an RST and succeeds after a FIN, so a FIN still fails.
    let reset = match &r {
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(0) if cfg!(windows) => socket2::SockRef::from(peer.tcp())
            .send(&[])
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        _ => false,
    };
    assert!(reset, "abort must reset the peer, got {r:?}");
    assert!(matches!(
        conn.send(Bytes::from_static(b"x")),
        Err(Error::Closed)
    ));
    drop(listener);
    backend.shutdown();
}

struct Counter {
    expect: Bytes,
    got: Vec<u8>,
    done: Sender<bool>,
}

impl Handler for Counter {
    fn on_open(&mut self, conn: &Conn) {
        conn.send(self.expect.clone()).unwrap();
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        self.got.extend_from_slice(data);
        data.clear();
        if self.got.len() >= self.expect.len() {
            let _ = self.done.send(self.got == self.expect[..]);
            conn.close();
        }
    }
    fn on_connect_failed(&mut self, error: Error) {
        panic!("connect failed: {error}");
    }
}

/// 1,000 concurrent connections, all opened from the backend to itself at once, each
/// echoing its own 64-byte message; all complete, and each conn id is unique.
pub fn many_connections(make: MakeBackend<'_>) {
    const N: usize = 1000;
    let backend = make(kit_config());
    let ids = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let ids2 = ids.clone();
    struct Echo(Arc<Mutex<std::collections::HashSet<u64>>>);
    impl Handler for Echo {
        fn on_open(&mut self, conn: &Conn) {
            assert!(
                self.0.lock().unwrap().insert(conn.id().0),
                "duplicate conn id"
            );
        }
        fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
            let _ = conn.send(data.split().freeze());
        }
    }
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || Box::new(Echo(ids2.clone())) as Box<dyn Handler>),
        )
        .unwrap();
    let addr = listener.local_addr();
    let (tx, rx) = mpsc::channel();
    for i in 0..N {
        let mut msg = pattern(64, i as u8);
        msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
        backend
            .connect(
                addr,
                WAIT,
                Box::new(Counter {
                    expect: Bytes::from(msg),
                    got: Vec::new(),
                    done: tx.clone(),
                }),
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..N {
        let left = deadline.saturating_duration_since(Instant::now());
        let ok = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("only {n} of {N} connections echoed"));
        assert!(ok, "echo mismatch");
    }
    assert_eq!(ids.lock().unwrap().len(), N);
    drop(listener);
    backend.shutdown();
}

/// The idle timeout closes a silent connection (reason `IdleTimeout`, the peer sees
/// EOF) no earlier than the timeout; traffic keeps a connection alive; a per
/// connection `set_idle_timeout(None)` disables it.
pub fn idle_timeout(make: MakeBackend<'_>) {
    let idle = Duration::from_millis(300);
    let backend = make(Config {
        idle_timeout: Some(idle),
        ..kit_config()
    });
    let (server, sev) = Recorder::new(true);
    let server = Mutex::new(server);
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || Box::new(server.lock().unwrap().sibling()) as Box<dyn Handler>),
        )
        .unwrap();
    let addr = listener.local_addr();

    let t0 = Instant::now();
    let mut silent = std_connect(addr);
    sev.open();
    assert_eq!(sev.close(), CloseReason::IdleTimeout);
    let waited = t0.elapsed();
    assert!(
        waited >= idle,
        "closed after {waited:?}, before the idle timeout"
    );
    let mut b = [0u8; 1];
    assert_eq!(
        silent.read(&mut b).unwrap_or(0),
        0,
        "peer must see the close"
    );

    // A chatty connection stays open past the timeout.
    let mut chatty = std_connect(addr);
    sev.open();
    for _ in 0..8 {
        chatty.write_all(b"k").unwrap();
        assert_eq!(read_exact_timeout(&mut chatty, 1), b"k");
        std::thread::sleep(Duration::from_millis(100));
    }
    for e in sev.0.try_iter() {
        assert!(
            !matches!(e, Ev::Close(_)),
            "chatty connection closed: {e:?}"
        );
    }
    assert_eq!(sev.close(), CloseReason::IdleTimeout);

    // Idle timeout disabled per connection.
    let _quiet = std_connect(addr);
    let c = sev.open();
    c.set_idle_timeout(None);
    sev.quiet(Duration::from_millis(800));
    c.close();
    assert_eq!(sev.close(), CloseReason::Local);
    drop(listener);
    backend.shutdown();
}

/// Timers fire once each, with their token, never early, also when armed from
/// another thread; arming on a closed connection is an error.
pub fn timers(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let plain = PeerListener::bind();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, plain.local_addr(), WAIT, Box::new(client)).unwrap();
    cev.open();
    let t0 = Instant::now();
    conn.set_timer(Duration::from_millis(120), 2).unwrap();
    conn.set_timer(Duration::from_millis(40), 1).unwrap();
    let (tok, at) = cev.until(WAIT, |e| match e {
        Ev::Timer(t, at) => Some((t, at)),
        _ => None,
    });
    assert_eq!(tok, 1);
    assert!(at.duration_since(t0) >= Duration::from_millis(40));
    let (tok, at) = cev.until(WAIT, |e| match e {
        Ev::Timer(t, at) => Some((t, at)),
        _ => None,
    });
    assert_eq!(tok, 2);
    assert!(at.duration_since(t0) >= Duration::from_millis(120));
    cev.quiet(Duration::from_millis(200));
    conn.close();
    assert_eq!(cev.close(), CloseReason::Local);
    assert!(matches!(
        conn.set_timer(Duration::from_millis(1), 3),
        Err(Error::Closed)
    ));
    backend.shutdown();
}

/// [`Connection::wake`] from another thread delivers `on_timer(token)` once per
/// call, in order, without waiting for pending timers (here one armed for 10 s);
/// waking a closed connection is an error.
pub fn wake(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let plain = TcpListener::bind(v4()).unwrap();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(
        &*backend,
        plain.local_addr().unwrap(),
        WAIT,
        Box::new(client),
    )
    .unwrap();
    cev.open();
    conn.set_timer(Duration::from_secs(10), 99).unwrap();
    let c2 = conn.clone();
    std::thread::spawn(move || {
        for t in [7, 8, 7] {
            c2.wake(t).unwrap();
        }
    })
    .join()
    .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(cev.until(WAIT, |e| match e {
            Ev::Timer(t, _) => Some(t),
            _ => None,
        }));
    }
    assert_eq!(
        got,
        [7, 8, 7],
        "one on_timer per wake, in order, before the 10 s timer"
    );
    conn.close();
    assert_eq!(cev.close(), CloseReason::Local);
    assert!(matches!(conn.wake(1), Err(Error::Closed)));
    backend.shutdown();
}

/// `send_vectored` from another thread and from a callback: the parts arrive
/// in order as one byte stream, every accepted part is taken out of the deque,
/// and a closed connection answers [`Error::Closed`] with the parts left in it.
pub fn send_vectored(make: MakeBackend<'_>) {
    use std::collections::VecDeque;
    let backend = make(kit_config());
    let plain = PeerListener::bind();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, plain.local_addr(), WAIT, Box::new(client)).unwrap();
    let mut peer = plain.accept();
    peer.tcp().set_read_timeout(Some(WAIT)).unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut parts: VecDeque<Bytes> = VecDeque::from([
        Bytes::from_static(b"head"),
        Bytes::from(big.clone()),
        Bytes::new(),
        Bytes::from_static(b"tail"),
    ]);
    let c2 = conn.clone();
    let left = std::thread::spawn(move || {
        c2.send_vectored(&mut parts).unwrap();
        parts.len()
    })
    .join()
    .unwrap();
    assert_eq!(left, 0, "every accepted part is taken out");
    let mut want = b"head".to_vec();
    want.extend_from_slice(&big);
    want.extend_from_slice(b"tail");
    let mut got = vec![0u8; want.len()];
    peer.read_exact(&mut got).unwrap();
    assert!(got == want, "the parts arrive in order, whole");
    conn.close();
    assert_eq!(cev.close(), CloseReason::Local);
    let mut parts = VecDeque::from([Bytes::from_static(b"x"), Bytes::from_static(b"y")]);
    assert!(matches!(conn.send_vectored(&mut parts), Err(Error::Closed)));
    assert_eq!(parts.len(), 2, "a refused part stays in the deque");
    drop(peer);
    backend.shutdown();
}

/// Connecting to a loopback port where nothing listens fails with
/// [`Error::Refused`] (quickly, through `on_connect_failed`).
pub fn connect_refused(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let port = {
        let l = TcpListener::bind(v4()).unwrap();
        l.local_addr().unwrap()
    };
    let (client, cev) = Recorder::new(false);
    let t0 = Instant::now();
    backend
        .connect(port, Duration::from_secs(10), Box::new(client))
        .unwrap();
    match cev.next(WAIT) {
        Ev::ConnectFailed(Error::Refused) => {}
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    let (client, _cev) = Recorder::new(false);
    assert!(matches!(
        connect_blocking(&*backend, port, WAIT, Box::new(client)),
        Err(Error::Refused)
    ));
    backend.shutdown();
}

/// Fills a loopback listener's accept queue (backlog 0, never accepted) until a
/// connect hangs: further SYNs are dropped, so a connect there times out without
/// leaving the machine. `None` if the platform answers with a reset instead.
fn full_backlog_listener() -> Option<(socket2::Socket, Vec<socket2::Socket>, SocketAddr)> {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    l.bind(&v4().into()).ok()?;
    l.listen(0).ok()?;
    let addr = l.local_addr().ok()?.as_socket()?;
    let mut fillers = Vec::new();
    for _ in 0..16 {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
        match c.connect_timeout(&addr.into(), Duration::from_millis(200)) {
            Ok(()) => fillers.push(c),
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                return Some((l, fillers, addr))
            }
            Err(_) => return None,
        }
    }
    None
}

/// A connect that cannot complete fails with [`Error::TimedOut`] after its timeout
/// (not before, not much after); uses a full-backlog loopback listener. Skipped with
/// a message where the OS refuses instead of dropping SYNs (never on Linux).
pub fn connect_timeout(make: MakeBackend<'_>) {
    let Some((_l, _fillers, addr)) = full_backlog_listener() else {
        if cfg!(target_os = "linux") {
            panic!("could not fill a listen backlog on Linux");
        }
        eprintln!(
            "zs-io testkit: connect_timeout skipped: this OS does not drop SYNs on a full backlog"
        );
        return;
    };
    let backend = make(kit_config());
    let (client, cev) = Recorder::new(false);
    let t0 = Instant::now();
    let timeout = Duration::from_millis(400);
    backend.connect(addr, timeout, Box::new(client)).unwrap();
    match cev.next(WAIT) {
        Ev::ConnectFailed(Error::TimedOut) => {}
        other => panic!("expected TimedOut, got {other:?}"),
    }
    let took = t0.elapsed();
    assert!(took >= timeout, "timed out early: {took:?}");
    assert!(
        took < timeout + Duration::from_secs(3),
        "timed out late: {took:?}"
    );
    backend.shutdown();
}

fn loopback_roundtrip(backend: &dyn Backend, bind: SocketAddr) {
    let (server, sev) = Recorder::new(true);
    let server = Mutex::new(server);
    let listener = backend
        .listen(
            bind,
            Arc::new(move || Box::new(server.lock().unwrap().sibling()) as Box<dyn Handler>),
        )
        .unwrap();
    let addr = listener.local_addr();
    assert_eq!(addr.is_ipv6(), bind.is_ipv6());
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(backend, addr, WAIT, Box::new(client)).unwrap();
    assert_eq!(conn.peer_addr(), addr);
    assert_eq!(conn.local_addr().is_ipv6(), bind.is_ipv6());
    let sc = sev.open();
    assert_eq!(sc.peer_addr(), conn.local_addr());
    conn.send(Bytes::from_static(b"family")).unwrap();
    assert_eq!(cev.data(6), b"family");
    conn.close();
    assert_eq!(sev.close(), CloseReason::PeerClosed);
}

/// Listening and connecting work on IPv4 (127.0.0.1) and IPv6 (::1) loopback, with
/// the right address families reported; IPv6 is skipped with a message when ::1
/// cannot be bound here.
pub fn ipv4_ipv6_loopback(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    loopback_roundtrip(&*backend, v4());
    let v6: SocketAddr = "[::1]:0".parse().unwrap();
    if TcpListener::bind(v6).is_ok() {
        loopback_roundtrip(&*backend, v6);
    } else {
        eprintln!("zs-io testkit: IPv6 part skipped: ::1 is not available on this machine");
    }
    backend.shutdown();
}

/// `resolve("localhost")` honours the AAAA/A preference (order and filters), a
/// literal that cannot match the wanted family is a [`Error::Resolve`] error, and
/// `connect_host_blocking` reaches a listener by name. No query leaves the
/// machine (`localhost` comes from the hosts file).
pub fn resolve_preference(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let v4first = backend.resolve("localhost", 80, Prefer::V4First).unwrap();
    assert!(
        v4first.contains(&"127.0.0.1:80".parse().unwrap()),
        "localhost → {v4first:?}"
    );
    assert!(v4first[0].is_ipv4());
    let v6first = backend.resolve("localhost", 80, Prefer::V6First).unwrap();
    assert_eq!(v6first.len(), v4first.len());
    if v6first.iter().any(|a| a.is_ipv6()) {
        assert!(v6first[0].is_ipv6(), "AAAA must come first: {v6first:?}");
        assert!(backend
            .resolve("localhost", 80, Prefer::V6Only)
            .unwrap()
            .iter()
            .all(|a| a.is_ipv6()));
    } else {
        eprintln!(
            "zs-io testkit: localhost has no AAAA record here; V6First order checked on A only"
        );
    }
    assert!(backend
        .resolve("localhost", 80, Prefer::V4Only)
        .unwrap()
        .iter()
        .all(|a| a.is_ipv4()));
    assert!(matches!(
        backend.resolve("127.0.0.1", 80, Prefer::V6Only),
        Err(Error::Resolve(_))
    ));
    assert_eq!(
        backend.resolve("::1", 9, Prefer::V4First).unwrap(),
        vec!["[::1]:9".parse().unwrap()]
    );

    let (server, _sev) = Recorder::new(true);
    let server = Mutex::new(server);
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || Box::new(server.lock().unwrap().sibling()) as Box<dyn Handler>),
        )
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let conn = crate::connect_host_blocking(
        &*backend,
        "localhost",
        listener.local_addr().port(),
        Prefer::V4First,
        WAIT,
        || {
            let (r, ev) = Recorder::new(false);
            let _ = tx.lock().unwrap().send(ev);
            Box::new(r)
        },
    )
    .unwrap();
    let ev: Vec<Events> = rx.try_iter().collect();
    assert!(conn.peer_addr().is_ipv4());
    conn.send(Bytes::from_static(b"by name")).unwrap();
    assert_eq!(ev.last().unwrap().data(7), b"by name");
    conn.close();
    drop(listener);
    backend.shutdown();
}

/// `Listener::shutdown` closes every connection accepted through it (reason
/// `Shutdown`, the peers see EOF), stops accepting, and leaves other listeners and
/// their connections alone. `Backend::shutdown` then closes the rest and later
/// connects fail.
pub fn listener_shutdown(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let (server, sev) = Recorder::new(true);
    let server = Mutex::new(server);
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || Box::new(server.lock().unwrap().sibling()) as Box<dyn Handler>),
        )
        .unwrap();
    let (other, oev) = Recorder::new(true);
    let other = Mutex::new(other);
    let listener2 = backend
        .listen(
            v4(),
            Arc::new(move || Box::new(other.lock().unwrap().sibling()) as Box<dyn Handler>),
        )
        .unwrap();
    let addr = listener.local_addr();
    let mut peers: Vec<Peer> = (0..20).map(|_| std_connect(addr)).collect();
    for _ in 0..20 {
        sev.open();
    }
    let mut survivor = std_connect(listener2.local_addr());
    oev.open();

    listener.shutdown();
    for _ in 0..20 {
        assert_eq!(sev.close(), CloseReason::Shutdown);
    }
    for p in &mut peers {
        let mut b = [0u8; 1];
        match p.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("peer of a shut listener still open: {other:?}"),
        }
    }
    let t0 = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(_) => break,
            Ok(mut s) => {
                // Accepted by the kernel before the socket closed: it must not live.
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut b = [0u8; 1];
                assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "listener still accepting"
        );
    }
    survivor.write_all(b"alive").unwrap();
    assert_eq!(read_exact_timeout(&mut survivor, 5), b"alive");

    backend.shutdown();
    assert_eq!(oev.close(), CloseReason::Shutdown);
    let mut b = [0u8; 1];
    assert!(matches!(survivor.read(&mut b), Ok(0) | Err(_)));
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
        .listen(v4(), handler_factory(|| Recorder::new(false).0))
        .is_err());
    backend.shutdown(); // idempotent
    drop(listener2);
}

/// Every operation on a closed connection is an error or a no-op, never a panic:
/// `send`, `shutdown_write`, `set_timer` after `close` and after `on_close`;
/// `close`/`abort` twice; `send` from another thread while the peer goes away.
pub fn send_after_close(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let plain = PeerListener::bind();
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, plain.local_addr(), WAIT, Box::new(client)).unwrap();
    let peer = plain.accept();
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
    drop(peer);

    // A sender thread hammering a connection whose peer resets.
    let (client, cev) = Recorder::new(false);
    let conn = connect_blocking(&*backend, plain.local_addr(), WAIT, Box::new(client)).unwrap();
    let peer = plain.accept();
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
    socket2::SockRef::from(peer.tcp())
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
    assert!(matches!(
        cev.close(),
        CloseReason::Reset | CloseReason::Error(_) | CloseReason::PeerClosed
    ));
    assert!(
        sender.join().unwrap(),
        "send after the peer went away must end in Error::Closed"
    );
    backend.shutdown();
}

/// What a [`Bomb`] handler factory does when it is called: nothing special,
/// panic itself, or make a handler that panics in `on_open`.
pub const BOMB_NONE: u8 = 0;
/// See [`BOMB_NONE`].
pub const BOMB_FACTORY: u8 = 1;
/// See [`BOMB_NONE`].
pub const BOMB_ON_OPEN: u8 = 2;

/// An echo handler (through a [`Recorder`]) that panics on command, for
/// panic-isolation tests of any backend (the kit's [`panicking_handler`], and
/// backends built on other transports): `boom` panics in `on_data`, `timer`
/// arms a timer whose `on_timer` panics, `flood` fills the send queue so that
/// the `on_writable` that follows panics, `eof-bomb` makes the peer's FIN panic
/// in `on_eof`, `close-bomb` closes and then panics in `on_close`.
pub struct Bomb {
    inner: Recorder,
    panic_on_open: bool,
    panic_on_eof: bool,
    panic_on_writable: bool,
    panic_on_close: bool,
}

impl Bomb {
    /// A bomb echoing through `inner`; `panic_on_open` makes its `on_open` panic.
    pub fn new(inner: Recorder, panic_on_open: bool) -> Bomb {
        Bomb {
            inner,
            panic_on_open,
            panic_on_eof: false,
            panic_on_writable: false,
            panic_on_close: false,
        }
    }
}

impl Handler for Bomb {
    fn on_open(&mut self, conn: &Conn) {
        if self.panic_on_open {
            panic!("testkit: deliberate panic in on_open of {}", conn.id());
        }
        self.inner.on_open(conn);
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        if data.starts_with(b"boom") {
            panic!("testkit: deliberate panic in on_data of {}", conn.id());
        }
        if data.starts_with(b"timer") {
            data.clear();
            conn.set_timer(Duration::from_millis(10), 7).unwrap();
            return;
        }
        if data.starts_with(b"flood") {
            data.clear();
            self.panic_on_writable = true;
            let chunk = Bytes::from(vec![b'f'; 64 * 1024]);
            while conn.send(chunk.clone()).is_ok() {}
            return;
        }
        if data.starts_with(b"eof-bomb") {
            data.clear();
            self.panic_on_eof = true;
            return;
        }
        if data.starts_with(b"close-bomb") {
            data.clear();
            self.panic_on_close = true;
            conn.close();
            return;
        }
        self.inner.on_data(conn, data);
    }
    fn on_eof(&mut self, conn: &Conn) {
        if self.panic_on_eof {
            panic!("testkit: deliberate panic in on_eof of {}", conn.id());
        }
        self.inner.on_eof(conn);
    }
    fn on_writable(&mut self, conn: &Conn) {
        if self.panic_on_writable {
            panic!("testkit: deliberate panic in on_writable of {}", conn.id());
        }
        self.inner.on_writable(conn);
    }
    fn on_timer(&mut self, conn: &Conn, token: u64) {
        panic!(
            "testkit: deliberate panic in on_timer({token}) of {}",
            conn.id()
        );
    }
    fn on_close(&mut self, conn: &Conn, reason: CloseReason) {
        self.inner.on_close(conn, reason);
        if self.panic_on_close {
            panic!("testkit: deliberate panic in on_close of {}", conn.id());
        }
    }
}

/// An outgoing connection's handler that reports its failure on the channel,
/// then panics in `on_connect_failed`.
pub struct FailBomb(pub Sender<()>);

impl Handler for FailBomb {
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        data.clear();
    }
    fn on_connect_failed(&mut self, error: Error) {
        let _ = self.0.send(());
        panic!("testkit: deliberate panic in on_connect_failed({error})");
    }
}

/// Writes `msg` and expects it echoed back.
fn roundtrip(s: &mut Peer, msg: &[u8]) {
    s.write_all(msg).unwrap();
    assert_eq!(read_exact_timeout(s, msg.len()), msg, "echo mismatch");
}

/// The peer must see the connection end (FIN or reset), not data and not silence.
fn assert_peer_closed(s: &mut impl Read, what: &str) {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) => {}
        other => panic!("{what}: the peer's connection is still open: {other:?}"),
    }
}

/// Connects to a server expected to end the connection at once: the peer must see
/// the end (the reset may already show in the connect or when the read timeout is
/// set: the server can accept and reset before the client's connect call returns).
fn connect_expect_closed(addr: SocketAddr, what: &str) {
    let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
    let mut s = match TcpStream::connect_timeout(&addr, WAIT) {
        Ok(s) => s,
        Err(e) if reset(&e) => return,
        Err(e) => panic!("{what}: connect: {e}"),
    };
    match s.set_read_timeout(Some(WAIT)) {
        Ok(()) => match peer_wrap() {
            None => assert_peer_closed(&mut s, what),
            // The end may come during the wrap's handshake (that is seeing it).
            Some(w) => {
                if let Ok(mut p) = w.client(s) {
                    assert_peer_closed(&mut p, what);
                }
            }
        },
        Err(e) if reset(&e) => {}
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A panicking handler ends only its own connection (contract item 8). On a
/// single loop: a panic in `on_data` closes that connection (its `on_close` runs
/// with [`CloseReason::HandlerPanicked`], its peer sees the end) while another
/// connection keeps echoing and new connections are accepted; the same for panics
/// in `on_open` and `on_timer`; a panicking handler factory only drops the socket
/// it was called for; a panic in `on_close` or `on_connect_failed` leaves the loop
/// running. Every panic is counted in [`crate::handler_panics`].
pub fn panicking_handler(make: MakeBackend<'_>) {
    let backend = make(Config {
        loops: 1,
        ..kit_config()
    });
    let panics0 = crate::handler_panics();
    let (server, sev) = Recorder::new(true);
    let server = Mutex::new(server);
    let mode = Arc::new(AtomicU8::new(BOMB_NONE));
    let m = mode.clone();
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || {
                let mode = m.load(Ordering::SeqCst);
                if mode == BOMB_FACTORY {
                    panic!("zs-io testkit: deliberate panic in the handler factory");
                }
                Box::new(Bomb::new(
                    server.lock().unwrap().sibling(),
                    mode == BOMB_ON_OPEN,
                )) as Box<dyn Handler>
            }),
        )
        .unwrap();
    let addr = listener.local_addr();

    let mut a = std_connect(addr);
    roundtrip(&mut a, b"hello");
    sev.open();
    let mut b = std_connect(addr);
    roundtrip(&mut b, b"world");
    sev.open();

    // on_data panics: only b ends.
    b.write_all(b"boom").unwrap();
    assert_eq!(sev.close(), CloseReason::HandlerPanicked);
    assert_peer_closed(&mut b, "after a panic in on_data");
    roundtrip(&mut a, b"still echoing");
    let mut c = std_connect(addr);
    roundtrip(&mut c, b"new connections are accepted");
    sev.open();

    // on_timer panics.
    c.write_all(b"timer").unwrap();
    assert_eq!(sev.close(), CloseReason::HandlerPanicked);
    assert_peer_closed(&mut c, "after a panic in on_timer");
    roundtrip(&mut a, b"still echoing after on_timer");

    // on_open panics: no Open event, but on_close runs.
    mode.store(BOMB_ON_OPEN, Ordering::SeqCst);
    connect_expect_closed(addr, "after a panic in on_open");
    assert_eq!(sev.close(), CloseReason::HandlerPanicked);
    // The factory panics: that socket is dropped, accepting goes on.
    mode.store(BOMB_FACTORY, Ordering::SeqCst);
    connect_expect_closed(addr, "after a panic in the handler factory");
    mode.store(BOMB_NONE, Ordering::SeqCst);
    roundtrip(&mut a, b"still echoing after the factory");

    // on_close panics (after a normal close).
    let mut f = std_connect(addr);
    roundtrip(&mut f, b"f");
    sev.open();
    f.write_all(b"close-bomb").unwrap();
    assert_eq!(sev.close(), CloseReason::Local);
    assert_peer_closed(&mut f, "closed by its handler");

    // An outgoing connection's on_connect_failed panics.
    let dead = {
        let l = TcpListener::bind(v4()).unwrap();
        l.local_addr().unwrap()
    };
    let (tx, rx) = mpsc::channel();
    backend
        .connect(dead, Duration::from_secs(10), Box::new(FailBomb(tx)))
        .unwrap();
    rx.recv_timeout(WAIT).unwrap();

    // The loop survived all of it.
    roundtrip(&mut a, b"the loop survived");
    let mut g = std_connect(addr);
    roundtrip(&mut g, b"and still accepts");
    sev.open();
    // The last two panics happen just after their handlers reported: wait for them.
    let t0 = Instant::now();
    loop {
        let caught = crate::handler_panics() - panics0;
        if caught >= 6 {
            break;
        }
        assert!(t0.elapsed() < WAIT, "only {caught} handler panics counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(a);
    drop(g);
    assert_eq!(sev.close(), CloseReason::PeerClosed);
    assert_eq!(sev.close(), CloseReason::PeerClosed);
    drop(listener);
    backend.shutdown();
}

/// A message of [`sized_read_buffer_stays_put`]: an 8-byte length `n` (of
/// the whole message) and `n - 8` bytes. On the first bytes the handler
/// pauses reading (so the test can queue everything in the socket first),
/// reserves exactly the rest of the first message and remembers where it
/// starts; when it is complete it reports whether it still starts there,
/// then counts what follows.
struct Sizer {
    conn_tx: Sender<Conn>,
    done_tx: Sender<(bool, usize)>,
    first: Option<(usize, usize)>,
    moved: Option<bool>,
    rest: usize,
    want_rest: usize,
}

impl Handler for Sizer {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let Some((at, n)) = self.first else {
            if data.len() < 8 {
                return;
            }
            let mut len = [0u8; 8];
            len.copy_from_slice(&data[..8]);
            let n = u64::from_le_bytes(len) as usize;
            data.reserve(n - data.len());
            self.first = Some((data.as_ptr() as usize, n));
            conn.set_read_paused(true);
            let _ = self.conn_tx.send(conn.clone());
            return;
        };
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
            let _ = self.done_tx.send((self.moved == Some(true), self.rest));
        }
    }
}

/// A read buffer the handler sized (data left in it, room reserved behind
/// it) is filled up to that room, not regrown, so what the handler keeps
/// there is never moved: a frame being completed where it lies stays put.
/// Not part of [`run_all`]: a backend that reads into the handler's buffer
/// runs it on its own (epoll's reactor, tokio).
pub fn sized_read_buffer_stays_put(make: MakeBackend<'_>) {
    let backend = make(kit_config());
    let (conn_tx, conn_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    // The first message's rest (~200 KiB) is more than a 64 KiB chunk and
    // less than the 256 KiB read budget: regrowing would move it.
    let first = 200_000usize;
    let second = 150_000usize;
    let handler = Mutex::new(Some(Sizer {
        conn_tx,
        done_tx,
        first: None,
        moved: None,
        rest: 0,
        want_rest: second,
    }));
    let listener = backend
        .listen(
            v4(),
            Arc::new(move || {
                let h = handler.lock().unwrap_or_else(|p| p.into_inner()).take();
                Box::new(h.expect("one connection")) as Box<dyn Handler>
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
    assert!(!moved, "the backend regrew the buffer the handler sized");
    drop(listener);
    backend.shutdown();
}

/// Runs every kit item in turn.
pub fn run_all(make: MakeBackend<'_>) {
    echo(make);
    big_transfer_slow_reader(make);
    half_close(make);
    peer_reset(make);
    many_connections(make);
    idle_timeout(make);
    timers(make);
    wake(make);
    send_vectored(make);
    connect_refused(make);
    connect_timeout(make);
    ipv4_ipv6_loopback(make);
    resolve_preference(make);
    listener_shutdown(make);
    send_after_close(make);
    panicking_handler(make);
}

/// Expands to one `#[test]` per conformance kit item, each building backends with
/// the given `Fn(Config) -> Box<dyn Backend>` expression.
///
/// `conformance_tests!(make, peers)` runs the same items with the kit's socket
/// peers wrapped by `peers` (an `Arc<dyn PeerWrap>` expression; see
/// [`testkit::with_peers`](crate::testkit::with_peers)), for backends that layer a
/// protocol over their connections.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr, $peers:expr) => {
        $crate::conformance_tests!(@wrapped $make; $peers;
            echo, big_transfer_slow_reader, half_close, peer_reset, many_connections,
            idle_timeout, timers, send_vectored, connect_refused, connect_timeout,
            ipv4_ipv6_loopback, resolve_preference, listener_shutdown, send_after_close,
            panicking_handler);
    };
    (@wrapped $make:expr; $peers:expr; $($item:ident),*) => {
        $(
            #[test]
            fn $item() {
                let make = $make;
                $crate::testkit::with_peers($peers, || $crate::testkit::$item(&make));
            }
        )*
    };
    ($make:expr) => {
        $crate::conformance_tests!(@items $make;
            echo, big_transfer_slow_reader, half_close, peer_reset, many_connections,
            idle_timeout, timers, wake, send_vectored, connect_refused, connect_timeout,
            ipv4_ipv6_loopback, resolve_preference, listener_shutdown, send_after_close,
            panicking_handler);
    };
    (@items $make:expr; $($item:ident),*) => {
        $(
            #[test]
            fn $item() {
                let make = $make;
                $crate::testkit::$item(&make);
            }
        )*
    };
}
