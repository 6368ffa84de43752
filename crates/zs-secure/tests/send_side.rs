//! The send side of the layer, driven by hand over a scripted raw connection:
//! sealed bytes the raw queue refused ("stalled") still go out before the close
//! record's FIN, and a vectored send is one record.
#![cfg(target_os = "linux")] // (the shared helpers use the epoll backend)
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use zs_io::{Conn, Connection, Error, Handler};
use zs_secure::{SecureConfig, SecureLayer};

/// What the layer asked of a raw connection, in order.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Send(Bytes),
    ShutdownWrite,
    Close,
    Abort,
}

/// A raw connection that records what the layer does and refuses sends
/// (`Full`, as a full queue would) while `refuse` is set. With `limit` set it
/// models a bounded queue (contract item 4): a send is taken while `queued` is
/// below the limit, else refused, and then an `on_writable` is `owed`.
#[derive(Default)]
struct Raw {
    log: Mutex<Vec<Ev>>,
    refuse: AtomicBool,
    timers: Mutex<Vec<(Duration, u64)>>,
    limit: AtomicUsize,
    queued: AtomicUsize,
    owed: AtomicBool,
}

impl Raw {
    fn take_sent(&self) -> Vec<Bytes> {
        let mut log = self.log.lock().unwrap();
        let (sent, rest): (Vec<Ev>, Vec<Ev>) =
            log.drain(..).partition(|e| matches!(e, Ev::Send(_)));
        *log = rest;
        sent.into_iter()
            .map(|e| match e {
                Ev::Send(b) => b,
                _ => unreachable!("partitioned"),
            })
            .collect()
    }
    fn events(&self) -> Vec<Ev> {
        self.log.lock().unwrap().clone()
    }
}

impl Connection for Raw {
    fn id(&self) -> zs_io::ConnId {
        zs_io::ConnId(7)
    }
    fn peer_addr(&self) -> std::net::SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }
    fn local_addr(&self) -> std::net::SocketAddr {
        "127.0.0.1:2".parse().unwrap()
    }
    fn send(&self, data: Bytes) -> Result<(), Error> {
        if self.refuse.load(Ordering::Acquire) {
            return Err(Error::Full(data));
        }
        let limit = self.limit.load(Ordering::Acquire);
        if limit > 0 {
            if self.queued.load(Ordering::Acquire) >= limit {
                self.owed.store(true, Ordering::Release);
                return Err(Error::Full(data));
            }
            self.queued.fetch_add(data.len(), Ordering::AcqRel);
        }
        self.log.lock().unwrap().push(Ev::Send(data));
        Ok(())
    }
    fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
    fn shutdown_write(&self) -> Result<(), Error> {
        self.log.lock().unwrap().push(Ev::ShutdownWrite);
        Ok(())
    }
    fn close(&self) {
        self.log.lock().unwrap().push(Ev::Close);
    }
    fn abort(&self) {
        self.log.lock().unwrap().push(Ev::Abort);
    }
    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error> {
        self.timers.lock().unwrap().push((after, token));
        Ok(())
    }
    fn set_idle_timeout(&self, _idle: Option<Duration>) {}
    fn set_read_paused(&self, _paused: bool) {}
    fn is_closed(&self) -> bool {
        false
    }
}

/// Hands its plaintext connection out on open and reports what it receives.
struct Inner {
    conn: mpsc::Sender<Conn>,
    data: mpsc::Sender<Vec<u8>>,
    eof: mpsc::Sender<()>,
}

impl Handler for Inner {
    fn on_open(&mut self, conn: &Conn) {
        let _ = self.conn.send(conn.clone());
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        let _ = self.data.send(data.split().to_vec());
    }
    fn on_eof(&mut self, _conn: &Conn) {
        let _ = self.eof.send(());
    }
}

struct End {
    handler: Box<dyn Handler>,
    raw: Arc<Raw>,
    raw_conn: Conn,
    /// The raw read buffer: what the handler leaves (a partial record) stays
    /// and the next bytes go behind it, as in a backend (contract item 3).
    rbuf: BytesMut,
    conn: mpsc::Receiver<Conn>,
    data: mpsc::Receiver<Vec<u8>>,
    eof: mpsc::Receiver<()>,
}

impl End {
    fn received(&self) -> Vec<u8> {
        self.data.try_iter().flatten().collect()
    }
}

const LINGER: Duration = Duration::from_secs(3);

/// A server and a client end of one layer, handshaken over two `Raw`s.
fn pair() -> (SecureLayer, End, End) {
    let cfg = SecureConfig {
        close_linger: LINGER,
        ..SecureConfig::default()
    };
    pair_with(cfg, |inner| inner)
}

/// `pair` with `cfg`, and the server's inner handler made by `wrap` from the
/// reporting one.
fn pair_with(
    cfg: SecureConfig,
    wrap: impl FnOnce(Box<dyn Handler>) -> Box<dyn Handler>,
) -> (SecureLayer, End, End) {
    let layer = SecureLayer::new(psk_provider(b"alice", &KEY), cfg);
    let mut server = end(|inner| {
        let slot = Mutex::new(Some(wrap(inner)));
        layer.server_handler(Arc::new(move || slot.lock().unwrap().take().unwrap()))
    });
    let mut client = end(|inner| layer.client_handler(inner, WAIT));
    server.handler.on_open(&server.raw_conn);
    client.handler.on_open(&client.raw_conn);
    for _ in 0..20 {
        move_bytes(&mut client, &mut server);
        move_bytes(&mut server, &mut client);
    }
    (layer, server, client)
}

fn end(make: impl FnOnce(Box<dyn Handler>) -> Box<dyn Handler>) -> End {
    let (ctx, crx) = mpsc::channel();
    let (dtx, drx) = mpsc::channel();
    let (etx, erx) = mpsc::channel();
    let inner = Inner {
        conn: ctx,
        data: dtx,
        eof: etx,
    };
    let raw = Arc::new(Raw::default());
    End {
        rbuf: BytesMut::new(),
        handler: make(Box::new(inner)),
        raw_conn: raw.clone(),
        raw,
        conn: crx,
        data: drx,
        eof: erx,
    }
}

/// Delivers what `from` sent on its raw connection to `to`.
fn move_bytes(from: &mut End, to: &mut End) {
    for b in from.raw.take_sent() {
        to.rbuf.extend_from_slice(&b);
        to.handler.on_data(&to.raw_conn, &mut to.rbuf);
    }
}

/// Closes (or half-closes) the server's plaintext connection right after a send
/// the raw queue refused; checks that nothing sealed is lost and that the raw
/// close comes only after those bytes.
fn close_after_refused_send(half: bool) {
    let (layer, mut server, mut client) = pair();
    let s = server.conn.recv_timeout(WAIT).unwrap();
    let _c = client.conn.recv_timeout(WAIT).unwrap();
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    server.raw.refuse.store(true, Ordering::Release);
    // Off the loop: sealed at once; the raw queue refuses the record.
    s.send(Bytes::from(msg.clone())).unwrap();
    if half {
        s.shutdown_write().unwrap();
    } else {
        s.close();
    }
    let end_ev = if half { Ev::ShutdownWrite } else { Ev::Close };
    assert!(
        !server.raw.events().contains(&end_ev),
        "the raw connection was closed with sealed bytes still held back"
    );
    // The raw queue drained: the stalled bytes go out, then the close.
    server.raw.refuse.store(false, Ordering::Release);
    server.handler.on_writable(&server.raw_conn);
    let ev = server.raw.events();
    let last_send = ev.iter().rposition(|e| matches!(e, Ev::Send(_))).unwrap();
    let end_at = ev
        .iter()
        .position(|e| *e == end_ev)
        .expect("closed once drained");
    assert!(
        last_send < end_at,
        "the close went out before the data: {ev:?}"
    );
    // Everything sealed arrives, and the close record with it.
    move_bytes(&mut server, &mut client);
    assert_eq!(client.received(), msg);
    client.handler.on_eof(&client.raw_conn); // the FIN after the close record
    client.eof.recv_timeout(WAIT).unwrap();
    assert_eq!(layer.stats().truncated_eofs, 0, "the close record arrived");
}

#[test]
fn close_sends_stalled_bytes_before_closing() {
    close_after_refused_send(false);
}

#[test]
fn shutdown_write_sends_stalled_bytes_before_the_fin() {
    close_after_refused_send(true);
}

#[test]
fn close_with_bytes_that_never_drain_is_bounded_by_the_linger() {
    let (_layer, server, _client) = pair();
    let s = server.conn.recv_timeout(WAIT).unwrap();
    server.raw.refuse.store(true, Ordering::Release);
    s.send(Bytes::from(vec![1u8; 50_000])).unwrap();
    s.close();
    assert!(!server.raw.events().contains(&Ev::Close));
    let token = server
        .raw
        .timers
        .lock()
        .unwrap()
        .iter()
        .find(|&&(after, _)| after == LINGER)
        .map(|&(_, t)| t)
        .expect("a linger timer bounds the wait");
    let mut h = server.handler;
    h.on_timer(&server.raw_conn, token);
    assert_eq!(
        server.raw.events().last(),
        Some(&Ev::Abort),
        "a peer that never drains is reset after the linger"
    );
}

#[test]
fn send_vectored_seals_all_parts_as_one_record() {
    let (_layer, server, mut client) = pair();
    let s = server.conn.recv_timeout(WAIT).unwrap();
    let _ = server.raw.take_sent();
    let mut parts: VecDeque<Bytes> = [&b"header"[..], &[9u8; 5000][..], b"trailer"]
        .iter()
        .map(|p| Bytes::copy_from_slice(p))
        .collect();
    s.send_vectored(&mut parts).unwrap();
    assert!(parts.is_empty(), "every part taken");
    let sent = server.raw.take_sent();
    assert_eq!(sent.len(), 1, "one raw send for one vectored send");
    for b in sent {
        client
            .handler
            .on_data(&client.raw_conn, &mut BytesMut::from(&b[..]));
    }
    let mut want = b"header".to_vec();
    want.extend_from_slice(&[9u8; 5000]);
    want.extend_from_slice(b"trailer");
    assert_eq!(client.received(), want);
    // Refused as a whole when the queue is full: nothing taken, `Full`.
    server.raw.refuse.store(true, Ordering::Release);
    s.send(Bytes::from_static(b"x")).unwrap(); // stalls
    let mut parts: VecDeque<Bytes> =
        VecDeque::from([Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    assert!(matches!(s.send_vectored(&mut parts), Err(Error::Full(_))));
    assert_eq!(parts.len(), 2, "no part taken when refused");
}

/// Sends `chunk`-sized pieces in every callback until one is refused.
struct Pump {
    inner: Box<dyn Handler>,
    chunk: usize,
    sent: Arc<AtomicUsize>,
}

impl Pump {
    fn pump(&self, conn: &Conn) {
        let mut n = 0u8;
        loop {
            n = n.wrapping_add(1);
            match conn.send(Bytes::from(vec![n; self.chunk])) {
                Ok(()) => {
                    self.sent.fetch_add(self.chunk, Ordering::AcqRel);
                }
                Err(_) => return,
            }
        }
    }
}

impl Handler for Pump {
    fn on_open(&mut self, conn: &Conn) {
        self.inner.on_open(conn);
        self.pump(conn);
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        self.inner.on_data(conn, data);
    }
    fn on_writable(&mut self, conn: &Conn) {
        self.pump(conn);
    }
}

/// A bulk sender resumes through the raw backend's `on_writable` alone: every
/// time the layer stops it, the raw queue owes an `on_writable` (no drain
/// timer, which waits for a reactor tick, is needed). Before, the stalled bytes
/// sent at the raw `on_writable` (at half the bound) put the queue above half
/// again and only the timer resumed the sender: BigStream over the layer ran
/// at 0.31x zs-core's built-in session.
#[test]
fn a_refused_bulk_sender_is_resumed_by_the_raw_on_writable_alone() {
    const LIMIT: usize = 64 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    let cfg = SecureConfig {
        send_queue_limit: LIMIT,
        ..SecureConfig::default()
    };
    let (_layer, mut server, mut client) = pair_with(cfg, |inner| {
        Box::new(Pump {
            inner,
            chunk: 16 * 1024,
            sent: s2,
        })
    });
    // The handshake is done (the pump ran in `on_open` over an unbounded
    // queue): from now on the raw queue is bounded.
    let before = sent.load(Ordering::Acquire);
    server.raw.limit.store(LIMIT, Ordering::Release);
    server.raw.timers.lock().unwrap().clear();
    server.handler.on_writable(&server.raw_conn); // a first refusal
    let mut delivered = 0;
    for round in 0..20 {
        assert!(
            server.raw.owed.swap(false, Ordering::AcqRel),
            "round {round}: the sender waits, and the raw queue owes no on_writable"
        );
        // The raw queue drains to half the bound and calls `on_writable`.
        let q = server.raw.queued.load(Ordering::Acquire);
        assert!(q <= LIMIT + 64 * 1024, "raw queue {q} past its bound");
        server.raw.queued.store(LIMIT / 2, Ordering::Release);
        server.handler.on_writable(&server.raw_conn);
        move_bytes(&mut server, &mut client);
        delivered += client.received().len();
    }
    let moved = sent.load(Ordering::Acquire) - before;
    assert!(
        moved >= 20 * LIMIT / 4,
        "only {moved} bytes sent in 20 rounds"
    );
    assert!(
        !server
            .raw
            .timers
            .lock()
            .unwrap()
            .iter()
            .any(|&(after, _)| after < Duration::from_millis(100)),
        "no drain timer was needed"
    );
    assert!(
        delivered >= moved - LIMIT * 2,
        "{delivered} of {moved} arrived"
    );
}
