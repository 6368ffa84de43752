//! Collecting BigStream handlers: whole bodies in memory or spilled to a
//! temporary file, the size limit, a spilled transfer carried across StableIO
//! reconnects; partial bodies freed at once when a transfer is refused or its
//! connection ends (H2), the process-wide spill quotas, and acknowledgements
//! only for chunks the handler accepted (D4). On the epoll backend.
#![cfg(target_os = "linux")]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_core::{code, Client, CollectLimits, Error, Options, Reconnect, Registry, Server};
use zs_crypto::{
    ClientConfig, SecureSession, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity,
};
use zs_io::Backend;
use zs_wire::{DataFrame, Frame, FrameCodec, Text};

/// The tests count this process's descriptors and the process-wide spill
/// quota: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn provider() -> Arc<dyn SecurityProvider> {
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = ServerIdentity::generate(&rng).unwrap();
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(id.fingerprint()))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

fn fnv(d: &[u8]) -> u64 {
    d.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One handler run: spilled, and the temp path with whether it existed then.
type Run = (bool, Option<(PathBuf, bool)>);

struct Seen {
    calls: Mutex<Vec<Run>>,
}

fn setup(
    limits: CollectLimits,
) -> (
    Server,
    Arc<dyn Backend>,
    Arc<dyn SecurityProvider>,
    Arc<Seen>,
) {
    let seen = Arc::new(Seen {
        calls: Mutex::new(Vec::new()),
    });
    let s2 = seen.clone();
    let mut reg = Registry::new();
    reg.big_stream_collect("upload", limits, move |_, mut body| {
        let path = body.path().map(|p| (p.to_owned(), p.exists()));
        s2.calls.lock().unwrap().push((body.is_spilled(), path));
        let len = body.len();
        let hash = if body.is_spilled() {
            let mut all = Vec::new();
            body.read_to_end(&mut all).map_err(|e| e.to_string())?;
            fnv(&all)
        } else {
            let b = body.into_bytes().map_err(|_| "in memory")?;
            fnv(&b)
        };
        Ok(Some(DataFrame::new().with(len).with(hash)))
    });
    let backend: Arc<dyn Backend> = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 2,
            ..zs_io::Config::default()
        })
        .unwrap(),
    );
    let p = provider();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(backend.clone(), p.clone())),
        reg,
        Options::default(),
        addr,
    )
    .unwrap();
    (server, backend, p, seen)
}

fn data(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>())
}

fn check(d: DataFrame, want: &Bytes) {
    let mut r = d.reader();
    assert_eq!(r.read_u64().unwrap(), want.len() as u64);
    assert_eq!(r.read_u64().unwrap(), fnv(want));
}

/// A plain (not StableIO) client of `server`.
fn plain_client(
    server: &Server,
    backend: Arc<dyn Backend>,
    p: Arc<dyn SecurityProvider>,
) -> Client {
    Client::connect(
        Arc::new(zs_secure::SecureBackend::new(backend, p)),
        Registry::new(),
        Options::client(),
        server.local_addr(),
    )
    .unwrap()
}

/// Sends `body` to "upload" from `offset`; the answer within `wait`.
fn upload(c: &Client, body: Bytes, offset: u64, wait: Duration) -> Result<DataFrame, Error> {
    c.send_big_stream("upload", body, offset, |_, _| {})
        .wait_timeout(wait)
}

/// Sends `body` to "upload" whole: the handler saw exactly it.
#[track_caller]
fn upload_ok(c: &Client, body: &Bytes, wait: Duration) {
    check(upload(c, body.clone(), 0, wait).unwrap(), body);
}

#[test]
fn bodies_below_and_above_the_threshold_and_over_the_limit() {
    let _g = serial();
    let limits = CollectLimits {
        spill_threshold: 64 * 1024,
        max_size: 2 << 20,
        ..CollectLimits::default()
    };
    let (server, backend, p, seen) = setup(limits);
    let c = plain_client(&server, backend, p);
    let wait = Duration::from_secs(30);

    let small = data(10_000);
    upload_ok(&c, &small, wait);
    let large = data(1_500_000);
    upload_ok(&c, &large, wait);
    let calls = seen.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], (false, None), "10 kB stays in memory");
    let (spilled, Some((path, existed))) = calls[1].clone() else {
        panic!("1.5 MB spills to a file: {:?}", calls[1]);
    };
    assert!(spilled && existed, "the file exists while the handler runs");
    assert!(!path.exists(), "and is gone after: {}", path.display());

    let too_big = data((2 << 20) + 1);
    match upload(&c, too_big, 0, wait) {
        Err(Error::Remote { code: c, message }) => {
            assert_eq!(c, code::TOO_LARGE, "{message}")
        }
        other => panic!("expected 413, got {other:?}"),
    }
    // A resume from an offset cannot be collected whole.
    match upload(&c, small.clone(), 100, wait) {
        Err(Error::Remote { code: c, .. }) => assert_eq!(c, code::BAD_REQUEST),
        other => panic!("expected 400, got {other:?}"),
    }
    // Still serving.
    upload_ok(&c, &small, wait);
    assert_eq!(seen.calls.lock().unwrap().len(), 3);
}

/// A spilled transfer in a StableIO session survives its connection being
/// dropped (up to three times) mid-transfer: the file receives every byte once.
#[test]
fn a_spilled_transfer_resumes_across_reconnects() {
    let _g = serial();
    let limits = CollectLimits {
        spill_threshold: 256 * 1024,
        ..CollectLimits::default()
    };
    let (server, backend, p, seen) = setup(limits);
    let opts = Options {
        reconnect: Reconnect {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
            give_up: Duration::from_secs(20),
        },
        ..Options::client()
    };
    let c = Arc::new(
        Client::connect_stable(
            Arc::new(zs_secure::SecureBackend::new(backend, p)),
            Registry::new(),
            opts,
            server.local_addr(),
        )
        .unwrap(),
    );
    let big = data(6 << 20);
    let next_drop = Arc::new(AtomicU64::new(1 << 20));
    let (c2, nd) = (Arc::downgrade(&c), next_drop.clone());
    let f = c.send_big_stream("upload", big.clone(), 0, move |acked, _| {
        let at = nd.load(Ordering::SeqCst);
        if acked >= at && at < (4 << 20) {
            nd.store(at + (1 << 20) + 123, Ordering::SeqCst);
            if let Some(c) = c2.upgrade() {
                c.drop_link();
            }
        }
    });
    check(f.wait_timeout(Duration::from_secs(60)).unwrap(), &big);
    // Drops close together may hit the same connection: at least one resume.
    assert!(c.resumes() >= 1, "{} resumes", c.resumes());
    let calls = seen.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (true, Some((path, true))) = calls[0].clone() else {
        panic!("spilled: {:?}", calls[0]);
    };
    assert!(!path.exists());
}

/// A client that sends and sees raw frames (the runtime's client hides
/// acknowledgements and answers to transfers it did not start).
struct Raw {
    s: TcpStream,
    sec: Box<dyn SecureSession>,
    codec: FrameCodec,
    plain: BytesMut,
    frames: VecDeque<Frame>,
}

impl Raw {
    fn connect(addr: SocketAddr, provider: &Arc<dyn SecurityProvider>) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut raw = Raw {
            s,
            sec: provider.new_client(Instant::now()).unwrap(),
            codec: FrameCodec::new(zs_wire::Config::default()),
            plain: BytesMut::new(),
            frames: VecDeque::new(),
        };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            raw.flush();
            if !raw.sec.is_handshaking() {
                return raw;
            }
            assert!(Instant::now() < end, "handshake timed out");
            raw.read_some(Duration::from_millis(200));
        }
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        self.sec.write_output(&mut out);
        self.s.write_all(&out).unwrap();
    }

    fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        self.codec.encode(f, &mut b).unwrap();
        self.sec.send(&b, Instant::now()).unwrap();
        self.flush();
    }

    /// Reads what arrives within `wait`; false at end of stream.
    fn read_some(&mut self, wait: Duration) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        self.s.set_read_timeout(Some(wait)).unwrap();
        let n = match self.s.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return true
            }
            Err(e) => panic!("read: {e}"),
        };
        self.sec.handle_input(&buf[..n], Instant::now()).unwrap();
        while let Some(ev) = self.sec.poll_event() {
            if let zs_crypto::Event::Data(d) = ev {
                self.plain.extend_from_slice(&d);
            }
        }
        while let Some(f) = self.codec.decode(&mut self.plain).unwrap() {
            self.frames.push_back(f);
        }
        true
    }

    /// The next frame (within [`WAIT`]) is the acknowledgement of `offset`
    /// bytes of transfer `id`.
    #[track_caller]
    fn expect_ack(&mut self, id: u64, offset: u64) {
        assert_eq!(self.next(WAIT), Some(Frame::BigStreamAck { id, offset }));
    }

    /// The next frame, if one arrives within `wait`.
    fn next(&mut self, wait: Duration) -> Option<Frame> {
        let end = Instant::now() + wait;
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Some(f);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.read_some(left.min(Duration::from_millis(100))) {
                return None;
            }
        }
    }
}

fn chunk(id: u64, cmd: &str, offset: u64, total: u64, data: Bytes) -> Frame {
    let last = offset + data.len() as u64 == total;
    Frame::BigStream {
        id,
        cmd: Text::from(cmd),
        offset,
        total,
        last,
        data,
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Bodies over 64 KiB spill to files in `dir`.
fn spill_to(dir: &Path) -> CollectLimits {
    CollectLimits {
        spill_threshold: 64 * 1024,
        spill_dir: Some(dir.to_owned()),
        ..CollectLimits::default()
    }
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Polls `f` for up to `limit`.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// H2: transfers announcing 1 GiB, each started with one stored chunk and
/// then aborted by an out-of-order chunk, 200 times on one connection: each
/// aborted body (temporary file, descriptor, quota) is gone at once, so
/// descriptors and files stay flat, and honest transfers still work.
#[test]
fn aborted_transfers_free_their_files_and_descriptors_at_once() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let limits = CollectLimits {
        max_size: 1 << 30,
        ..spill_to(dir.path())
    };
    let (server, backend, p, seen) = setup(limits);
    let mut raw = Raw::connect(server.local_addr(), &p);
    let fds = open_fds();
    let piece = data(64 * 1024);
    for i in 0..200u64 {
        let id = 1000 + i;
        raw.send(&chunk(id, "upload", 0, 1 << 30, piece.clone()));
        // Stored (acknowledged only now that the handler took it), in a file.
        match raw.next(WAIT) {
            Some(Frame::BigStreamAck { id: a, offset }) if a == id && offset == 64 * 1024 => {}
            other => panic!("transfer {i}: {other:?}"),
        }
        assert_eq!(files_in(dir.path()), 1, "transfer {i}");
        raw.send(&chunk(id, "upload", 12_345, 1 << 30, piece.clone()));
        match raw.next(WAIT) {
            Some(Frame::Error {
                id: e, code: 400, ..
            }) if e == id => {}
            other => panic!("transfer {i}: {other:?}"),
        }
        assert!(
            within(Duration::from_secs(1), || files_in(dir.path()) == 0),
            "transfer {i}: the aborted body's file is still there"
        );
        assert!(
            open_fds() <= fds + 3,
            "transfer {i}: {} descriptors open, {fds} before",
            open_fds()
        );
    }
    assert!(within(Duration::from_secs(1), || {
        CollectLimits::spill_in_use() == (0, 0)
    }));
    assert!(seen.calls.lock().unwrap().is_empty());
    // An honest client is served, on the same connection too.
    let c = plain_client(&server, backend, p);
    let body = data(300_000);
    upload_ok(&c, &body, WAIT);
    let small = data(1000);
    raw.send(&chunk(7, "upload", 0, 1000, small.clone()));
    raw.expect_ack(7, 1000);
    match raw.next(WAIT) {
        Some(Frame::StreamResponse { id: 7, data }) => check(data, &small),
        other => panic!("{other:?}"),
    }
    assert_eq!(files_in(dir.path()), 0);
}

/// H2: a connection that ends mid-transfer takes its partial body with it.
#[test]
fn a_dropped_connection_frees_its_partial_body_promptly() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let limits = spill_to(dir.path());
    let (server, _backend, p, _seen) = setup(limits);
    let fds = open_fds();
    let mut raw = Raw::connect(server.local_addr(), &p);
    for id in [1, 2] {
        raw.send(&chunk(id, "upload", 0, 100 << 20, data(128 * 1024)));
        raw.expect_ack(id, 128 * 1024);
    }
    assert_eq!(files_in(dir.path()), 2);
    assert_eq!(CollectLimits::spill_in_use(), (2, 200 << 20));
    drop(raw);
    let t = Instant::now();
    assert!(
        within(Duration::from_secs(1), || files_in(dir.path()) == 0
            && open_fds() <= fds
            && CollectLimits::spill_in_use() == (0, 0)),
        "after the disconnect: {} files, {} descriptors ({fds} before), quota {:?}",
        files_in(dir.path()),
        open_fds(),
        CollectLimits::spill_in_use()
    );
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// The spill quotas are process-wide: with `max_spill_files = 2`, a third
/// spilling transfer (from another connection) is refused with 429 before
/// anything is stored, while the first two complete; then there is room again.
#[test]
fn spill_files_are_capped_across_connections() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let limits = CollectLimits {
        max_spill_files: 2,
        ..spill_to(dir.path())
    };
    let (server, backend, p, seen) = setup(limits);
    let mut raw = Raw::connect(server.local_addr(), &p);
    let body = data(300_000);
    let half = 150_000;
    for id in [1, 2] {
        raw.send(&chunk(
            id,
            "upload",
            0,
            body.len() as u64,
            body.slice(..half),
        ));
        raw.expect_ack(id, half as u64);
    }
    assert_eq!(files_in(dir.path()), 2);
    let c = plain_client(&server, backend, p);
    match upload(&c, body.clone(), 0, WAIT) {
        Err(Error::Remote { code: c, message }) => assert_eq!(c, code::TOO_MANY, "{message}"),
        other => panic!("expected 429, got {other:?}"),
    }
    assert_eq!(
        files_in(dir.path()),
        2,
        "nothing stored for the refused one"
    );
    // A body that stays in memory needs no file.
    let small = data(10_000);
    upload_ok(&c, &small, WAIT);
    for id in [1, 2] {
        raw.send(&chunk(
            id,
            "upload",
            half as u64,
            body.len() as u64,
            body.slice(half..),
        ));
        raw.expect_ack(id, body.len() as u64);
        match raw.next(WAIT) {
            Some(Frame::StreamResponse { id: i, data }) if i == id => check(data, &body),
            other => panic!("transfer {id}: {other:?}"),
        }
    }
    assert_eq!(seen.calls.lock().unwrap().len(), 3);
    assert!(within(Duration::from_secs(1), || files_in(dir.path()) == 0));
    // The quota came back.
    upload_ok(&c, &body, WAIT);
}

/// D4: a chunk the handler refused is not acknowledged: a first chunk at
/// offset 10 to a collecting command gets `Error 400` and nothing else, as
/// does (with 404) a chunk for an unknown command.
#[test]
fn refused_chunks_get_only_the_error() {
    let _g = serial();
    let (server, _backend, p, _seen) = setup(CollectLimits::default());
    let mut raw = Raw::connect(server.local_addr(), &p);
    raw.send(&chunk(5, "upload", 10, 100, data(10)));
    match raw.next(WAIT) {
        Some(Frame::Error { id: 5, code, .. }) => assert_eq!(code, code::BAD_REQUEST),
        other => panic!("expected only Error 400, got {other:?}"),
    }
    raw.send(&chunk(6, "no-such-command", 0, 100, data(10)));
    match raw.next(WAIT) {
        Some(Frame::Error { id: 6, code, .. }) => assert_eq!(code, code::UNKNOWN_COMMAND),
        other => panic!("expected only Error 404, got {other:?}"),
    }
    assert_eq!(raw.next(Duration::from_millis(300)), None);
    // An accepted chunk is acknowledged.
    raw.send(&chunk(8, "upload", 0, 100, data(10)));
    raw.expect_ack(8, 10);
}

/// Ordered mode: chunks of a transfer that still wait in the ordered queue
/// when the session refuses that transfer do not start it again (no body is
/// made, no ack is sent).
#[test]
fn ordered_queue_drops_chunks_of_a_refused_transfer() {
    let _g = serial();
    let held: Arc<Mutex<Vec<zs_core::Responder>>> = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    let mut reg = Registry::new();
    reg.console_delayed("hold", move |_, _, r| h.lock().unwrap().push(r));
    reg.big_stream_collect("upload", CollectLimits::default(), |_, body| {
        Ok(Some(DataFrame::new().with(body.len())))
    });
    let backend: Arc<dyn Backend> = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..zs_io::Config::default()
        })
        .unwrap(),
    );
    let p = provider();
    let options = Options {
        ordered: true,
        ..Options::default()
    };
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(backend, p.clone())),
        reg,
        options,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let before = CollectLimits::memory_in_use();
    let mut raw = Raw::connect(server.local_addr(), &p);
    raw.send(&Frame::Console {
        id: 1,
        cmd: Text::from("hold"),
        text: Text::from(""),
    });
    assert!(within(WAIT, || held.lock().unwrap().len() == 1));
    // Queued behind "hold"; then a chunk out of order refuses the transfer.
    raw.send(&chunk(5, "upload", 0, 100, data(10)));
    raw.send(&chunk(5, "upload", 50, 100, data(10)));
    match raw.next(WAIT) {
        Some(Frame::Error { id: 5, code, .. }) => assert_eq!(code, code::BAD_REQUEST),
        other => panic!("expected Error 400 for the refused transfer, got {other:?}"),
    }
    let r = held.lock().unwrap().pop().unwrap();
    r.reply_text("done").unwrap();
    match raw.next(WAIT) {
        Some(Frame::ConsoleResponse { id: 1, .. }) => {}
        other => panic!("expected the held answer, got {other:?}"),
    }
    assert_eq!(
        raw.next(Duration::from_millis(300)),
        None,
        "a queued chunk of the refused transfer started it again"
    );
    assert_eq!(CollectLimits::memory_in_use(), before);
}
