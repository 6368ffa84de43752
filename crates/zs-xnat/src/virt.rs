//! Mappings that end in an in-process server (the seed's
//! MappingOnVirtualService).
//!
//! [`VirtualBackend`] is a zs-io [`Backend`] without sockets: a zs-core
//! `Server` started on the security layer over it
//! (`Server::start(SecureBackend(backend), …, addr)`) listens on a
//! virtual address, and an [`Agent`](crate::Agent) told to
//! [`serve_in_process`](crate::Agent::serve_in_process) a mapping hands each
//! public connection of that mapping to the server as a connection of this
//! backend: the bytes of the secure data connection are the connection's
//! bytes, so the public client runs the server's own handshake and protocol
//! end to end (the agent sees only ciphertext), with no local socket and no
//! port on the agent's host.
//!
//! Each connection runs its handler on one tokio task (callbacks in order,
//! never at once); a reader task feeds it and a writer task drains its send
//! queue (bounded by [`SEND_QUEUE_LIMIT`]: `send` hands the bytes back with
//! `Error::Full` beyond it and `on_writable` follows at half), timers are tokio
//! sleeps, and a panic in a callback closes only that connection
//! (`HandlerPanicked`), as the socket backends do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use zs_io::{
    catch_handler_panic, Backend, CloseReason, Conn, ConnId, Connection, Error, Handler,
    HandlerFactory, Listener,
};

use crate::secure::{SecureRead, SecureWrite};

/// Bytes a virtual connection queues for the tunnel before `send` says `Full`.
pub const SEND_QUEUE_LIMIT: usize = 4 << 20;
/// Reads (each at most one tunnel read) waiting for the handler.
const DATA_QUEUE: usize = 8;

/// A zs-io backend whose connections are public connections carried by an
/// agent. Cheap to clone.
#[derive(Clone, Default)]
pub struct VirtualBackend {
    inner: Arc<BackendInner>,
}

#[derive(Default)]
struct BackendInner {
    listeners: Mutex<HashMap<SocketAddr, Arc<ListenerInner>>>,
    next_id: AtomicU64,
    shut: AtomicBool,
}

struct ListenerInner {
    factory: HandlerFactory,
    conns: Mutex<HashMap<u64, Weak<VConn>>>,
    shut: AtomicBool,
}

impl ListenerInner {
    fn shutdown(&self) {
        self.shut.store(true, Ordering::Release);
        let conns: Vec<_> = self
            .conns
            .lock()
            .map(|mut m| m.drain().collect())
            .unwrap_or_default();
        for (_, c) in conns {
            if let Some(c) = c.upgrade() {
                c.end(CloseReason::Shutdown);
            }
        }
    }
}

impl VirtualBackend {
    /// A backend with no listener.
    pub fn new() -> VirtualBackend {
        VirtualBackend::default()
    }

    /// Virtual addresses listened on now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.inner
            .listeners
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Runs one connection to the listener at `addr`: `peer` is the public
    /// client's address (the connection's `peer_addr`), `first` the bytes
    /// already received; the connection's bytes are added to `(up, down)`
    /// when it ends. Returns when the connection ended.
    pub(crate) async fn carry(
        &self,
        addr: SocketAddr,
        peer: SocketAddr,
        sr: SecureRead,
        sw: SecureWrite,
        first: Vec<u8>,
        (up, down): (&AtomicU64, &AtomicU64),
    ) -> Result<(), String> {
        let listener = self
            .inner
            .listeners
            .lock()
            .map_err(|_| "poisoned")?
            .get(&addr)
            .cloned()
            .ok_or_else(|| format!("no in-process server listens on {addr}"))?;
        if listener.shut.load(Ordering::Acquire) || self.inner.shut.load(Ordering::Acquire) {
            return Err("the in-process server is shut down".into());
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        // Bytes from the tunnel wait here for the handler: bounded, so a client
        // that sends faster than the server consumes is held back by TCP.
        let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (pause_tx, pause_rx) = watch::channel(false);
        let conn = Arc::new(VConn {
            id: ConnId(id),
            peer,
            local: addr,
            ev: ev_tx,
            out: out_tx,
            queued: AtomicUsize::new(0),
            full: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            paused: pause_tx,
            idle: Mutex::new(None),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        });
        listener
            .conns
            .lock()
            .map_err(|_| "poisoned")?
            .insert(id, Arc::downgrade(&conn));
        let handler = (listener.factory)();
        let reader = tokio::spawn(read_loop(sr, data_tx, pause_rx, first, conn.clone()));
        let writer = tokio::spawn(write_loop(sw, out_rx, conn.clone()));
        let r = run_handler(handler, conn.clone(), ev_rx, data_rx).await;
        reader.abort();
        writer.abort();
        if let Ok(mut m) = listener.conns.lock() {
            m.remove(&id);
        }
        up.fetch_add(conn.up.load(Ordering::Relaxed), Ordering::Relaxed);
        down.fetch_add(conn.down.load(Ordering::Relaxed), Ordering::Relaxed);
        r
    }
}

enum Ev {
    Data(Bytes),
    Eof,
    Timer(u64),
    Writable,
    End(CloseReason),
}

enum Out {
    Data(Bytes),
    ShutdownWrite,
    Close,
}

struct VConn {
    id: ConnId,
    peer: SocketAddr,
    local: SocketAddr,
    ev: mpsc::UnboundedSender<Ev>,
    out: mpsc::UnboundedSender<Out>,
    queued: AtomicUsize,
    full: AtomicBool,
    /// No more sends (close, abort, shutdown_write, end).
    closed: AtomicBool,
    /// The connection is over (on_close is due or done).
    ended: AtomicBool,
    paused: watch::Sender<bool>,
    idle: Mutex<Option<Duration>>,
    /// Bytes public client -> server, server -> public client.
    up: AtomicU64,
    down: AtomicU64,
}

impl VConn {
    /// Ends the connection now (abort, shutdown, error): no more callbacks
    /// but `on_close(reason)`.
    fn end(&self, reason: CloseReason) {
        self.closed.store(true, Ordering::Release);
        if !self.ended.swap(true, Ordering::AcqRel) {
            let _ = self.ev.send(Ev::End(reason));
        }
    }
}

impl Connection for VConn {
    fn id(&self) -> ConnId {
        self.id
    }
    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    fn local_addr(&self) -> SocketAddr {
        self.local
    }
    fn send(&self, data: Bytes) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.queued.load(Ordering::Acquire) >= SEND_QUEUE_LIMIT {
            self.full.store(true, Ordering::Release);
            return Err(Error::Full(data));
        }
        self.queued.fetch_add(data.len(), Ordering::AcqRel);
        self.out.send(Out::Data(data)).map_err(|_| Error::Closed)
    }
    fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
    fn shutdown_write(&self) -> Result<(), Error> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Err(Error::Closed);
        }
        self.out.send(Out::ShutdownWrite).map_err(|_| Error::Closed)
    }
    fn close(&self) {
        if !self.ended.load(Ordering::Acquire) {
            self.closed.store(true, Ordering::Release);
            let _ = self.out.send(Out::Close);
        }
    }
    fn abort(&self) {
        self.end(CloseReason::Local);
    }
    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error> {
        if self.ended.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let ev = self.ev.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Err(Error::ShutDown);
        };
        rt.spawn(async move {
            tokio::time::sleep(after).await;
            let _ = ev.send(Ev::Timer(token));
        });
        Ok(())
    }
    fn set_idle_timeout(&self, idle: Option<Duration>) {
        if let Ok(mut i) = self.idle.lock() {
            *i = idle;
        }
    }
    fn set_read_paused(&self, paused: bool) {
        let _ = self.paused.send(paused);
    }
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
    fn wake(&self, token: u64) -> Result<(), Error> {
        if self.ended.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.ev.send(Ev::Timer(token)).map_err(|_| Error::Closed)
    }
}

async fn read_loop(
    mut sr: SecureRead,
    ev: mpsc::Sender<Ev>,
    mut paused: watch::Receiver<bool>,
    first: Vec<u8>,
    conn: Arc<VConn>,
) {
    conn.up.fetch_add(first.len() as u64, Ordering::Relaxed);
    if !first.is_empty() && ev.send(Ev::Data(Bytes::from(first))).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    loop {
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
        }
        match sr.read(&mut buf).await {
            Ok(true) => {
                if ev
                    .send(Ev::Data(Bytes::copy_from_slice(&buf)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(false) => {
                let _ = ev.send(Ev::Eof).await;
                return;
            }
            Err(_) => {
                let _ = ev.send(Ev::End(CloseReason::Reset)).await;
                return;
            }
        }
    }
}

async fn write_loop(mut sw: SecureWrite, mut out: mpsc::UnboundedReceiver<Out>, conn: Arc<VConn>) {
    while let Some(o) = out.recv().await {
        match o {
            Out::Data(b) => {
                let r = sw.write(&b).await;
                conn.down.fetch_add(b.len() as u64, Ordering::Relaxed);
                let left = conn.queued.fetch_sub(b.len(), Ordering::AcqRel) - b.len();
                if r.is_err() {
                    conn.end(CloseReason::Reset);
                    return;
                }
                if left <= SEND_QUEUE_LIMIT / 2 && conn.full.swap(false, Ordering::AcqRel) {
                    let _ = conn.ev.send(Ev::Writable);
                }
            }
            Out::ShutdownWrite => {
                let _ = sw.shutdown().await;
            }
            Out::Close => {
                let _ = sw.shutdown().await;
                conn.end(CloseReason::Local);
                return;
            }
        }
    }
}

async fn run_handler(
    mut h: Box<dyn Handler>,
    conn: Arc<VConn>,
    mut ev: mpsc::UnboundedReceiver<Ev>,
    mut data: mpsc::Receiver<Ev>,
) -> Result<(), String> {
    let c: Conn = conn.clone();
    let id = Some(conn.id);
    let mut pending = BytesMut::new();
    let mut peer_done = false;
    let mut ended_by_panic = false;
    if catch_handler_panic(id, "on_open", || h.on_open(&c)).is_none() {
        ended_by_panic = true;
    }
    let reason = loop {
        if ended_by_panic {
            conn.closed.store(true, Ordering::Release);
            conn.ended.store(true, Ordering::Release);
            break CloseReason::HandlerPanicked;
        }
        let idle = conn.idle.lock().ok().and_then(|i| *i);
        let recv = async {
            tokio::select! {
                biased;
                e = ev.recv() => e,
                // The reader gone (its end was sent): only control events remain.
                Some(e) = data.recv() => Some(e),
            }
        };
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, recv).await {
                Ok(e) => e,
                Err(_) => {
                    conn.end(CloseReason::IdleTimeout);
                    continue;
                }
            },
            None => recv.await,
        };
        let Some(e) = next else {
            break CloseReason::Local;
        };
        let ok = match e {
            Ev::End(r) => {
                conn.closed.store(true, Ordering::Release);
                conn.ended.store(true, Ordering::Release);
                break if r == CloseReason::Local && peer_done {
                    CloseReason::PeerClosed
                } else {
                    r
                };
            }
            _ if conn.ended.load(Ordering::Acquire) => continue,
            Ev::Data(b) => {
                pending.extend_from_slice(&b);
                catch_handler_panic(id, "on_data", || h.on_data(&c, &mut pending))
            }
            Ev::Eof => {
                peer_done = true;
                catch_handler_panic(id, "on_eof", || h.on_eof(&c))
            }
            Ev::Timer(t) => catch_handler_panic(id, "on_timer", || h.on_timer(&c, t)),
            Ev::Writable => catch_handler_panic(id, "on_writable", || h.on_writable(&c)),
        };
        if ok.is_none() {
            ended_by_panic = true;
        }
    };
    let _ = catch_handler_panic(id, "on_close", || h.on_close(&c, reason));
    match reason {
        CloseReason::HandlerPanicked => Err("the in-process handler panicked".into()),
        _ => Ok(()),
    }
}

struct VListener {
    addr: SocketAddr,
    inner: Arc<ListenerInner>,
    backend: Weak<BackendInner>,
}

impl Listener for VListener {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    fn shutdown(&self) {
        self.inner.shutdown();
        if let Some(b) = self.backend.upgrade() {
            if let Ok(mut m) = b.listeners.lock() {
                if m.get(&self.addr)
                    .is_some_and(|l| Arc::ptr_eq(l, &self.inner))
                {
                    m.remove(&self.addr);
                }
            }
        }
    }
}

impl Drop for VListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Backend for VirtualBackend {
    fn name(&self) -> &str {
        "xnat-virtual"
    }

    /// Registers `addr` (any address: it is a name, no socket is bound; port 0
    /// stays 0). A second listener on the same address is refused (`AddrInUse`).
    fn listen(
        &self,
        addr: SocketAddr,
        factory: HandlerFactory,
    ) -> Result<Box<dyn Listener>, Error> {
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let mut m = self
            .inner
            .listeners
            .lock()
            .map_err(|_| Error::Io(std::io::Error::other("poisoned")))?;
        if m.contains_key(&addr) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{addr} is already listened on"),
            )));
        }
        let inner = Arc::new(ListenerInner {
            factory,
            conns: Mutex::new(HashMap::new()),
            shut: AtomicBool::new(false),
        });
        m.insert(addr, inner.clone());
        Ok(Box::new(VListener {
            addr,
            inner,
            backend: Arc::downgrade(&self.inner),
        }))
    }

    /// A virtual backend only accepts: outgoing connections are refused.
    fn connect(
        &self,
        _addr: SocketAddr,
        _timeout: Duration,
        mut handler: Box<dyn Handler>,
    ) -> Result<(), Error> {
        handler.on_connect_failed(Error::Refused);
        Ok(())
    }

    fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::Release);
        let all: Vec<_> = self
            .inner
            .listeners
            .lock()
            .map(|mut m| m.drain().collect())
            .unwrap_or_default();
        for (_, l) in all {
            l.shutdown();
        }
    }
}
