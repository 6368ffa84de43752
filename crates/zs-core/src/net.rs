//! Running sessions on a `zs-io` backend: the per-connection [`zs_io::Handler`],
//! the [`Server`] and the [`Client`].
//!
//! Each connection's [`Session`] sits behind a small mutex shared by the loop
//! (which feeds it input and timers) and by any thread that sends on it (calls,
//! delayed responders, HPC workers, broadcasts). Handlers run on the loop thread
//! with the mutex released, so they may call, push or answer freely.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_crypto::SecurityProvider;
use zs_io::{Backend, CloseReason, Conn, Handler, Listener};
use zs_wire::{DataFrame, Frame, Text};

use crate::error::{Error, Result};
use crate::oneshot::{channel, CallFuture, Completer};
use crate::pool::WorkerPool;
use crate::registry::{Outbox, Peer, Registry};
use crate::session::{Call, Event, Reply, Request, Session, SessionConfig};
use crate::stats::{EndpointStats, StatsSnapshot};

// Our timer tokens have the high bit set; a raw handler's tokens never do.
const OURS: u64 = 1 << 63;
const TOKEN_SESSION: u64 = OURS | 1;
const TOKEN_KEEPALIVE: u64 = OURS | 2;
const TOKEN_HANDSHAKE: u64 = OURS | 3;
const TOKEN_NEXT: u64 = OURS | 4;
/// The first byte of every zs session: a handshake record (zs-crypto).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Endpoint settings shared by [`Server`] and [`Client`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Session settings (wire limits and token, CompleteBuffer limit, batches).
    pub session: SessionConfig,
    /// A connection whose secure handshake has not completed by then is dropped
    /// (handshake floods, slow-loris). Default 10 s.
    pub handshake_timeout: Duration,
    /// Send a keepalive frame this often. Default: none on servers, 15 s on clients
    /// (see [`Options::client`]).
    pub keepalive: Option<Duration>,
    /// Close a connection on which no byte moved for this long. Default 60 s on
    /// servers, none on clients.
    pub idle_timeout: Option<Duration>,
    /// Default timeout of a call. Default 30 s.
    pub call_timeout: Option<Duration>,
    /// Execute each connection's requests one at a time in arrival order (the
    /// seed's sequenced queue), even with delayed or HPC handlers. Default false.
    pub ordered: bool,
    /// HPC worker threads (created only when the registry has HPC handlers);
    /// 0 = one per core. Default 0.
    pub hpc_threads: usize,
    /// Most encrypted bytes kept for a connection beyond the transport's own send
    /// queue; a peer that lets more pile up (it never reads) is disconnected.
    /// Default 8 MiB.
    pub max_backlog: usize,
    /// Client connect timeout. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            session: SessionConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            keepalive: None,
            idle_timeout: Some(Duration::from_secs(60)),
            call_timeout: Some(Duration::from_secs(30)),
            ordered: false,
            hpc_threads: 0,
            max_backlog: 8 << 20,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Options {
    /// Defaults for a client: keepalive every 15 s, no idle timeout.
    pub fn client() -> Options {
        Options {
            keepalive: Some(Duration::from_secs(15)),
            idle_timeout: None,
            ..Options::default()
        }
    }
}

type Completion = Box<dyn FnOnce(Result<Reply>) + Send>;
type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Endpoint-wide state shared by every connection of a server or client.
struct Shared {
    registry: Arc<Registry>,
    provider: Arc<dyn SecurityProvider>,
    options: Options,
    pool: Option<WorkerPool>,
    stats: EndpointStats,
    conns: Mutex<HashMap<u64, Peer>>,
    server: bool,
}

impl Shared {
    fn new(
        registry: Registry,
        provider: Arc<dyn SecurityProvider>,
        options: Options,
        server: bool,
    ) -> Arc<Shared> {
        let pool = registry.has_hpc().then(|| {
            let n = if options.hpc_threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                options.hpc_threads
            };
            WorkerPool::new(n)
        });
        Arc::new(Shared {
            registry: Arc::new(registry),
            provider,
            options,
            pool,
            stats: EndpointStats::default(),
            conns: Mutex::new(HashMap::new()),
            server,
        })
    }

    fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot(self.registry.stats())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct LinkState {
    session: Session,
    out: Vec<u8>,
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    completions: HashMap<u64, Completion>,
    progress: HashMap<u64, ProgressFn>,
    ready: Vec<Completer<()>>,
    armed: Option<Instant>,
    busy: bool,
    in_dispatch: bool,
    queue: VecDeque<Request>,
}

/// What the loop does after releasing the session lock.
enum Work {
    Request(Request),
    Complete(Completion, Result<Reply>),
    Ready(Vec<Completer<()>>),
    Signal(Text, u64),
    Progress(ProgressFn, u64, u64),
    PeerError(u32, String),
    Closed,
}

/// One connection: the transport handle and the session.
struct Link {
    conn: Conn,
    shared: Arc<Shared>,
    st: Mutex<LinkState>,
    open: AtomicBool,
}

impl Link {
    fn new(conn: Conn, session: Session, shared: Arc<Shared>) -> Link {
        Link {
            conn,
            shared,
            st: Mutex::new(LinkState {
                session,
                out: Vec::new(),
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                completions: HashMap::new(),
                progress: HashMap::new(),
                ready: Vec::new(),
                armed: None,
                busy: false,
                in_dispatch: false,
                queue: VecDeque::new(),
            }),
            open: AtomicBool::new(true),
        }
    }

    /// Sends what the session produced and arms its next timer. Call with the lock held.
    fn flush(&self, st: &mut LinkState) {
        st.session.write_output(&mut st.out);
        if !st.out.is_empty() {
            let b = Bytes::from(std::mem::take(&mut st.out));
            self.shared
                .stats
                .bytes_out
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            if st.backlog.is_empty() {
                match self.conn.send(b) {
                    Ok(()) => {}
                    Err(zs_io::Error::Full(b)) => {
                        st.backlog_bytes += b.len();
                        st.backlog.push_back(b);
                        self.conn.set_read_paused(true);
                    }
                    Err(_) => {}
                }
            } else {
                st.backlog_bytes += b.len();
                st.backlog.push_back(b);
            }
            if st.backlog_bytes > self.shared.options.max_backlog {
                tracing::warn!(
                    conn = self.conn.id().0,
                    peer = %self.conn.peer_addr(),
                    backlog = st.backlog_bytes,
                    "disconnecting: the peer does not read its data"
                );
                st.backlog.clear();
                st.backlog_bytes = 0;
                self.open.store(false, Ordering::Release);
                self.conn.abort();
            }
        }
        if let Some(t) = st.session.poll_timeout() {
            if st.armed.is_none_or(|a| t < a) {
                let after = t.saturating_duration_since(Instant::now());
                if self.conn.set_timer(after, TOKEN_SESSION).is_ok() {
                    st.armed = Some(t);
                }
            }
        }
    }

    /// Moves the session's events out as work (with the lock held).
    fn drain(&self, st: &mut LinkState, works: &mut Vec<Work>) {
        while let Some(ev) = st.session.poll_event() {
            match ev {
                Event::Established { suite } => {
                    tracing::debug!(conn = self.conn.id().0, %suite, "session established");
                    works.push(Work::Ready(std::mem::take(&mut st.ready)));
                }
                Event::Request(r) => works.push(Work::Request(r)),
                Event::Reply { id, result } => {
                    st.progress.remove(&id);
                    if let Some(c) = st.completions.remove(&id) {
                        works.push(Work::Complete(c, result));
                    }
                }
                Event::Signal { name, code } => works.push(Work::Signal(name, code)),
                Event::Progress { id, acked, total } => {
                    if let Some(p) = st.progress.get(&id) {
                        works.push(Work::Progress(p.clone(), acked, total));
                    }
                }
                Event::PeerError { code, message } => works.push(Work::PeerError(code, message)),
                Event::Closed => works.push(Work::Closed),
            }
        }
    }

    fn start_call(&self, call: Call, timeout: Option<Duration>, done: Completion) {
        let mut st = lock(&self.st);
        match st.session.call(call, timeout, Instant::now()) {
            Ok(id) => {
                st.completions.insert(id, done);
                self.flush(&mut st);
            }
            Err(e) => {
                drop(st);
                done(Err(e));
            }
        }
    }

    fn ready(&self) -> CallFuture<()> {
        let mut st = lock(&self.st);
        if st.session.is_established() {
            CallFuture::ready(Ok(()))
        } else if st.session.is_dead() || !self.open.load(Ordering::Acquire) {
            CallFuture::ready(Err(Error::ConnectionLost(
                "the connection closed during the handshake".into(),
            )))
        } else {
            let (c, f) = channel();
            st.ready.push(c);
            f
        }
    }
}

impl Outbox for Link {
    fn send_frame(&self, frame: Frame) -> Result<()> {
        if !self.open.load(Ordering::Acquire) {
            return Err(Error::ConnectionLost("the connection is closed".into()));
        }
        let mut st = lock(&self.st);
        st.session.send_frame(&frame, Instant::now())?;
        self.flush(&mut st);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire) && !self.conn.is_closed()
    }

    fn close(&self, reason: &str) {
        tracing::debug!(conn = self.conn.id().0, reason, "closing connection");
        let mut st = lock(&self.st);
        st.session.close();
        self.flush(&mut st);
        self.open.store(false, Ordering::Release);
        drop(st);
        self.conn.close();
    }

    fn request_done(&self) {
        let mut st = lock(&self.st);
        st.busy = false;
        if !st.in_dispatch && !st.queue.is_empty() {
            let _ = self.conn.set_timer(Duration::ZERO, TOKEN_NEXT);
        }
    }
}

/// What a client's handler reports once its connection opened (or failed).
type Connected = Result<(Arc<Link>, Peer)>;

/// The zs-io handler of one connection (server or client side).
struct ConnHandler {
    shared: Arc<Shared>,
    link: Option<(Arc<Link>, Peer)>,
    connected: Option<mpsc::Sender<Connected>>,
    /// Custom-protocol mode: makes the handler for connections that do not
    /// start with a zs handshake.
    raw_factory: Option<zs_io::HandlerFactory>,
    raw: Option<Box<dyn Handler>>,
    sniffed: bool,
}

impl ConnHandler {
    fn process(&self, works: Vec<Work>) {
        let Some((link, peer)) = &self.link else {
            return;
        };
        for w in works {
            match w {
                Work::Request(r) => self.dispatch(link, peer, r),
                Work::Complete(c, r) => c(r),
                Work::Ready(v) => v.into_iter().for_each(|c| c.complete(Ok(()))),
                Work::Signal(name, code) => self.shared.registry.signal_received(peer, &name, code),
                Work::Progress(f, acked, total) => f(acked, total),
                Work::PeerError(code, message) => {
                    tracing::warn!(conn = peer.id(), code, %message, "peer reported an error");
                    self.shared.registry.peer_error(peer, code, &message);
                }
                Work::Closed => {
                    link.open.store(false, Ordering::Release);
                    link.conn.close();
                }
            }
        }
    }

    fn dispatch(&self, link: &Arc<Link>, peer: &Peer, req: Request) {
        let pool = self.shared.pool.as_ref();
        if !self.shared.options.ordered {
            if !self.shared.registry.dispatch(peer, req, pool, false) {
                self.shared
                    .stats
                    .unknown_commands
                    .fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        {
            let mut st = lock(&link.st);
            if st.busy {
                st.queue.push_back(req);
                return;
            }
            st.busy = true;
            st.in_dispatch = true;
        }
        self.shared.registry.dispatch(peer, req, pool, true);
        self.run_queue(link, peer);
    }

    /// Ordered mode: runs queued requests while the previous one is answered.
    fn run_queue(&self, link: &Arc<Link>, peer: &Peer) {
        loop {
            let next = {
                let mut st = lock(&link.st);
                st.in_dispatch = false;
                if st.busy {
                    None
                } else {
                    let n = st.queue.pop_front();
                    if n.is_some() {
                        st.busy = true;
                        st.in_dispatch = true;
                    }
                    n
                }
            };
            match next {
                Some(r) => {
                    self.shared
                        .registry
                        .dispatch(peer, r, self.shared.pool.as_ref(), true);
                }
                None => return,
            }
        }
    }

    fn fail(&self, link: &Link, why: &str) {
        tracing::warn!(
            conn = link.conn.id().0,
            peer = %link.conn.peer_addr(),
            reason = why,
            "disconnecting peer"
        );
        self.shared
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        link.open.store(false, Ordering::Release);
        link.conn.close();
    }
}

impl Handler for ConnHandler {
    fn on_open(&mut self, conn: &Conn) {
        let _span = tracing::debug_span!("zs.conn", id = conn.id().0).entered();
        let now = Instant::now();
        let secure = if self.shared.server {
            self.shared.provider.new_server(now)
        } else {
            self.shared.provider.new_client(now)
        };
        let secure = match secure {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a secure session");
                if let Some(tx) = self.connected.take() {
                    let _ = tx.send(Err(e.into()));
                }
                conn.abort();
                return;
            }
        };
        let o = &self.shared.options;
        let link = Arc::new(Link::new(
            conn.clone(),
            Session::new(secure, o.session),
            self.shared.clone(),
        ));
        let peer = Peer::new(conn.id().0, Some(conn.peer_addr()), link.clone());
        self.shared.stats.opened.fetch_add(1, Ordering::Relaxed);
        if self.shared.server {
            lock(&self.shared.conns).insert(peer.id(), peer.clone());
        }
        conn.set_idle_timeout(o.idle_timeout);
        let _ = conn.set_timer(o.handshake_timeout, TOKEN_HANDSHAKE);
        if let Some(k) = o.keepalive {
            let _ = conn.set_timer(k, TOKEN_KEEPALIVE);
        }
        link.flush(&mut lock(&link.st));
        if let Some(tx) = self.connected.take() {
            let _ = tx.send(Ok((link.clone(), peer.clone())));
        }
        tracing::debug!(peer = %conn.peer_addr(), "connection open");
        self.link = Some((link, peer));
    }

    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        if let Some(raw) = &mut self.raw {
            return raw.on_data(conn, data);
        }
        if !self.sniffed && !data.is_empty() {
            self.sniffed = true;
            if data[0] != HANDSHAKE_RECORD {
                if let Some(make) = &self.raw_factory {
                    tracing::debug!(conn = conn.id().0, "custom protocol connection");
                    if let Some((link, peer)) = self.link.take() {
                        link.open.store(false, Ordering::Release);
                        lock(&self.shared.conns).remove(&peer.id());
                    }
                    let mut raw = make();
                    raw.on_open(conn);
                    raw.on_data(conn, data);
                    self.raw = Some(raw);
                    return;
                }
            }
        }
        let Some((link, _)) = &self.link else {
            data.clear();
            return;
        };
        let link = link.clone();
        let _span = tracing::debug_span!("zs.conn", id = conn.id().0).entered();
        let input = data.split();
        self.shared
            .stats
            .bytes_in
            .fetch_add(input.len() as u64, Ordering::Relaxed);
        let mut works = Vec::new();
        let r = {
            let mut st = lock(&link.st);
            let r = st.session.handle_input(&input, Instant::now());
            link.drain(&mut st, &mut works);
            link.flush(&mut st);
            r
        };
        self.process(works);
        if let Err(e) = r {
            self.fail(&link, &e.to_string());
        }
    }

    fn on_eof(&mut self, conn: &Conn) {
        match &mut self.raw {
            Some(raw) => raw.on_eof(conn),
            None => conn.close(),
        }
    }

    fn on_writable(&mut self, conn: &Conn) {
        if let Some(raw) = &mut self.raw {
            return raw.on_writable(conn);
        }
        let Some((link, _)) = &self.link else {
            return;
        };
        let mut st = lock(&link.st);
        while let Some(b) = st.backlog.pop_front() {
            let n = b.len();
            match conn.send(b) {
                Ok(()) => st.backlog_bytes -= n,
                Err(zs_io::Error::Full(b)) => {
                    st.backlog.push_front(b);
                    return;
                }
                Err(_) => {
                    st.backlog.clear();
                    st.backlog_bytes = 0;
                    return;
                }
            }
        }
        conn.set_read_paused(false);
    }

    fn on_timer(&mut self, conn: &Conn, token: u64) {
        if let Some(raw) = &mut self.raw {
            if token & OURS == 0 {
                raw.on_timer(conn, token);
            }
            return;
        }
        let Some((link, peer)) = &self.link else {
            return;
        };
        let (link, peer) = (link.clone(), peer.clone());
        match token {
            TOKEN_SESSION => {
                let mut works = Vec::new();
                let r = {
                    let mut st = lock(&link.st);
                    st.armed = None;
                    let r = st.session.handle_timeout(Instant::now());
                    link.drain(&mut st, &mut works);
                    link.flush(&mut st);
                    r
                };
                self.process(works);
                if let Err(e) = r {
                    self.fail(&link, &e.to_string());
                }
            }
            TOKEN_HANDSHAKE if !lock(&link.st).session.is_established() => {
                let t = self.shared.options.handshake_timeout;
                self.fail(&link, &format!("handshake not completed within {t:?}"));
            }
            TOKEN_KEEPALIVE => {
                if let Some(k) = self.shared.options.keepalive {
                    let est = lock(&link.st).session.is_established();
                    if est {
                        let _ = link.send_frame(Frame::Keepalive);
                    }
                    let _ = conn.set_timer(k, TOKEN_KEEPALIVE);
                }
            }
            TOKEN_NEXT => self.run_queue(&link, &peer),
            _ => {}
        }
    }

    fn on_close(&mut self, conn: &Conn, reason: CloseReason) {
        if let Some(raw) = &mut self.raw {
            raw.on_close(conn, reason);
            self.shared.stats.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some((link, peer)) = self.link.take() else {
            return;
        };
        let _span = tracing::debug_span!("zs.conn", id = conn.id().0).entered();
        match reason {
            CloseReason::IdleTimeout | CloseReason::Reset | CloseReason::Error(_) => {
                tracing::info!(peer = %conn.peer_addr(), ?reason, "connection ended")
            }
            _ => tracing::debug!(?reason, "connection closed"),
        }
        link.open.store(false, Ordering::Release);
        let mut works = Vec::new();
        {
            let mut st = lock(&link.st);
            st.session.connection_lost(&format!("{reason:?}"));
            link.drain(&mut st, &mut works);
            st.ready.clear();
            st.queue.clear();
            st.backlog.clear();
        }
        self.link = Some((link, peer.clone()));
        self.process(works);
        self.link = None;
        self.shared.stats.closed.fetch_add(1, Ordering::Relaxed);
        if self.shared.server {
            lock(&self.shared.conns).remove(&peer.id());
        }
    }

    fn on_connect_failed(&mut self, error: zs_io::Error) {
        if let Some(tx) = self.connected.take() {
            let _ = tx.send(Err(error.into()));
        }
    }
}

/// A server: listens, runs the registry's handlers for every connection, keeps the
/// connection map and statistics. Dropping it (or [`Server::shutdown`]) stops
/// listening and closes every connection.
pub struct Server {
    shared: Arc<Shared>,
    listener: Box<dyn Listener>,
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Server({} on {})",
            self.listener.local_addr(),
            self.backend.name()
        )
    }
}

impl Server {
    /// Listens on `addr` with `backend`; sessions come from `provider`, commands
    /// from `registry`.
    pub fn start(
        backend: Arc<dyn Backend>,
        provider: Arc<dyn SecurityProvider>,
        registry: Registry,
        options: Options,
        addr: SocketAddr,
    ) -> Result<Server> {
        Server::start_with_raw(backend, provider, registry, options, addr, None)
    }

    /// Like [`Server::start`], plus custom-protocol mode: a connection whose
    /// first byte is not a zs handshake record (`0x16`) is handed to a plain
    /// [`zs_io::Handler`] made by `raw` (raw bytes beside the command protocol,
    /// on the same port). Raw connections are not in the connection map.
    pub fn start_with_raw(
        backend: Arc<dyn Backend>,
        provider: Arc<dyn SecurityProvider>,
        registry: Registry,
        options: Options,
        addr: SocketAddr,
        raw: Option<zs_io::HandlerFactory>,
    ) -> Result<Server> {
        let shared = Shared::new(registry, provider, options, true);
        let s2 = shared.clone();
        let factory: zs_io::HandlerFactory = Arc::new(move || {
            Box::new(ConnHandler {
                shared: s2.clone(),
                link: None,
                connected: None,
                raw_factory: raw.clone(),
                raw: None,
                sniffed: false,
            }) as Box<dyn Handler>
        });
        let listener = backend.listen(addr, factory)?;
        tracing::info!(addr = %listener.local_addr(), backend = backend.name(), security = shared.provider.name(), "server listening");
        Ok(Server {
            shared,
            listener,
            backend,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// The connection with id `id`, if open.
    pub fn peer(&self, id: u64) -> Option<Peer> {
        lock(&self.shared.conns).get(&id).cloned()
    }

    /// Every open connection.
    pub fn peers(&self) -> Vec<Peer> {
        lock(&self.shared.conns).values().cloned().collect()
    }

    /// Sends `frame` to every open connection; returns how many accepted it.
    pub fn broadcast(&self, frame: &Frame) -> usize {
        self.broadcast_filter(frame, |_| true)
    }

    /// Sends `frame` to every open connection for which `filter` is true.
    pub fn broadcast_filter(&self, frame: &Frame, filter: impl Fn(&Peer) -> bool) -> usize {
        self.peers()
            .iter()
            .filter(|p| filter(p))
            .filter(|p| p.send_frame(frame.clone()).is_ok())
            .count()
    }

    /// Counters of the server and of every command.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.snapshot()
    }

    /// Stops listening and closes every connection (idempotent).
    pub fn shutdown(&self) {
        self.listener.shutdown();
        if let Some(p) = &self.shared.pool {
            p.shutdown();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client connection with its own registry (for pushes from the server).
/// Calls return a [`CallFuture`] (await it or `wait()`), or take a callback.
/// Every call completes: answer, remote error, timeout, or
/// [`Error::ConnectionLost`] when the connection dies.
pub struct Client {
    link: Arc<Link>,
    peer: Peer,
    shared: Arc<Shared>,
    _backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:?})", self.peer)
    }
}

impl Client {
    /// Connects to `addr` and completes the secure handshake (blocking; don't call
    /// from a handler). `registry` serves what the server pushes.
    pub fn connect(
        backend: Arc<dyn Backend>,
        provider: Arc<dyn SecurityProvider>,
        registry: Registry,
        options: Options,
        addr: SocketAddr,
    ) -> Result<Client> {
        let shared = Shared::new(registry, provider, options, false);
        let (tx, rx) = mpsc::channel();
        let o = &shared.options;
        backend.connect(
            addr,
            o.connect_timeout,
            Box::new(ConnHandler {
                shared: shared.clone(),
                link: None,
                connected: Some(tx),
                raw_factory: None,
                raw: None,
                sniffed: true,
            }),
        )?;
        let (link, peer) = rx
            .recv_timeout(o.connect_timeout + Duration::from_secs(5))
            .map_err(|_| Error::TimedOut)??;
        link.ready().wait_timeout(o.handshake_timeout)?;
        Ok(Client {
            link,
            peer,
            shared,
            _backend: backend,
        })
    }

    /// The connection as a [`Peer`] (pushes, user state).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.link.is_open()
    }

    /// Starts `call` with `timeout` (or the default) and runs `done` with the
    /// outcome (on the loop thread, or at once on error).
    pub fn call_with(
        &self,
        call: Call,
        timeout: Option<Duration>,
        done: impl FnOnce(Result<Reply>) + Send + 'static,
    ) {
        if !self.link.is_open() {
            done(Err(Error::ConnectionLost(
                "the connection is closed".into(),
            )));
            return;
        }
        let t = timeout.or(self.shared.options.call_timeout);
        self.link.start_call(call, t, Box::new(done));
    }

    fn future<T: Send + 'static>(
        &self,
        call: Call,
        timeout: Option<Duration>,
        map: fn(Reply) -> Result<T>,
    ) -> CallFuture<T> {
        let (c, f) = channel();
        self.call_with(call, timeout, move |r| c.complete(r.and_then(map)));
        f
    }

    /// Console call: text in, text out.
    pub fn call(&self, cmd: &str, text: &str) -> CallFuture<String> {
        self.call_timeout(cmd, text, None)
    }

    /// Console call with its own timeout.
    pub fn call_timeout(
        &self,
        cmd: &str,
        text: &str,
        timeout: Option<Duration>,
    ) -> CallFuture<String> {
        let call = Call::Console {
            cmd: Text::from(cmd),
            text: Text::from(text),
        };
        self.future(call, timeout, |r| match r {
            Reply::Text(t) => Ok(t.as_str().to_owned()),
            Reply::Data(_) => Err(Error::UnexpectedReply { expected: "text" }),
        })
    }

    /// Stream call: values in, values out.
    pub fn call_stream(&self, cmd: &str, data: DataFrame) -> CallFuture<DataFrame> {
        let call = Call::Stream {
            cmd: Text::from(cmd),
            data,
        };
        self.future(call, None, data_reply)
    }

    /// BatchStream: stages `frames` on the server, which processes them together.
    pub fn call_batch(&self, cmd: &str, frames: Vec<DataFrame>) -> CallFuture<DataFrame> {
        let call = Call::Batch {
            cmd: Text::from(cmd),
            frames,
        };
        self.future(call, None, data_reply)
    }

    /// Sends `data[resume_from..]` as BigStream `cmd`: chunked, with window-based
    /// back-pressure ([`SessionConfig::big_window`](crate::SessionConfig::big_window)
    /// unacknowledged bytes at most), `progress(acked, total)` on every
    /// acknowledgement; the receiver's answer to the last chunk completes the
    /// future. After a broken connection, call again with the last `acked`
    /// seen as `resume_from` (the receiving handler continues from there).
    pub fn send_big_stream(
        &self,
        cmd: &str,
        data: Bytes,
        resume_from: u64,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> CallFuture<DataFrame> {
        let (c, f) = channel();
        if !self.link.is_open() {
            c.complete(Err(Error::ConnectionLost(
                "the connection is closed".into(),
            )));
            return f;
        }
        // No whole-transfer timeout: a large transfer may take long; a dead peer
        // is detected by keepalive / idle timeout and fails the call.
        let mut st = lock(&self.link.st);
        match st
            .session
            .big_stream(Text::from(cmd), data, resume_from, None, Instant::now())
        {
            Ok(id) => {
                st.completions
                    .insert(id, Box::new(move |r| c.complete(r.and_then(data_reply))));
                st.progress.insert(id, Arc::new(progress));
                self.link.flush(&mut st);
            }
            Err(e) => {
                drop(st);
                c.complete(Err(e));
            }
        }
        f
    }

    /// Direct console message (no answer).
    pub fn send_direct_console(&self, cmd: &str, text: &str) -> Result<()> {
        self.peer.send_direct_console(cmd, text)
    }

    /// Direct stream message (no answer).
    pub fn send_direct_stream(&self, cmd: &str, data: DataFrame) -> Result<()> {
        self.peer.send_direct_stream(cmd, data)
    }

    /// One raw binary message (no answer; a receiver over its limit answers with a
    /// [`code::TOO_LARGE`](crate::code::TOO_LARGE) peer error, see
    /// [`Registry::on_peer_error`]).
    pub fn send_complete_buffer(&self, cmd: &str, data: Bytes) -> Result<()> {
        self.peer.send_complete_buffer(cmd, data)
    }

    /// Counters of this client's own handlers and bytes.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.snapshot()
    }

    /// Closes the connection; pending calls complete with [`Error::ConnectionLost`].
    pub fn close(&self) {
        self.link.close("client closed");
    }
}

fn data_reply(r: Reply) -> Result<DataFrame> {
    match r {
        Reply::Data(d) => Ok(d),
        Reply::Text(_) => Err(Error::UnexpectedReply { expected: "values" }),
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.link.is_open() {
            self.link.close("client dropped");
        }
    }
}
