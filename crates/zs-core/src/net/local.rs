//! In-process connections: [`Server::connect_local`], [`LocalConn`] (whose docs
//! say what they are for and how they differ from network connections),
//! [`LocalSink`].

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use zs_wire::Frame;

use super::{lock, Server, Shared};
use crate::error::{Error, Result};
use crate::registry::{Outbox, Peer};
use crate::session::Request;

/// Ids of in-process connections start here: far above the ids a backend
/// gives its connections (counted from 1), below 2^53 (exact as a JavaScript
/// number).
pub const LOCAL_ID_BASE: u64 = 1 << 48;

/// Where the frames for an in-process connection go.
pub trait LocalSink: Send + Sync {
    /// A frame for the connection: the answer to a request made with
    /// [`LocalConn::request`] (`ConsoleResponse`, `StreamResponse`, `Error`,
    /// `BigStreamAck`, carrying the request's id), or a push
    /// (`DirectConsole`, `DirectStream`, `CompleteBuffer`, `Signal`) from a
    /// handler, a delayed responder, an HPC worker or a broadcast. Runs on
    /// the sender's thread (the one that called [`LocalConn::request`] for
    /// an inline answer) and must not block. An error goes back to the sender
    /// (a push then fails as to a closed connection).
    fn frame(&self, frame: Frame) -> Result<()>;

    /// The server ended the connection (a handler called [`Peer::close`], or
    /// the server shut down). Called at most once, and not when the owner
    /// closed it ([`LocalConn::close`], drop).
    fn closed(&self, reason: &str);
}

/// The server's side of its in-process connections.
#[derive(Default)]
pub(crate) struct LocalHub {
    /// The server shut down: no new connection.
    shut: AtomicBool,
    next: AtomicU64,
}

impl Server {
    /// Opens an in-process connection (no transport, no security layer;
    /// see [`LocalConn`] and [`LocalSink`]): a new
    /// [`Peer`] in the connection map, whose frames go to `sink`. `addr` is
    /// the address handlers see ([`Peer::addr`]) and the one the admission
    /// caps count it under (127.0.0.1 when `None`).
    ///
    /// Refused with [`Error::ConnectionLost`] once the server is shut down
    /// or when an admission cap is reached (counted in
    /// `refused_connections`).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use zs_core::{LocalSink, Options, Registry, Request, Server};
    /// use zs_wire::Frame;
    ///
    /// # let backend = Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, ..Default::default() }).unwrap());
    /// # let (identity, _) = zs_crypto::ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
    /// # let security = Arc::new(zs_crypto::ZsSecurity::new(None, Some(Arc::new(zs_crypto::ServerConfig::with_identity(Arc::new(identity))))));
    /// # let backend = Arc::new(zs_secure::SecureBackend::new(backend, security));
    /// let mut commands = Registry::new();
    /// commands.console("count", |peer, _| Ok(peer.with_state(|n: &mut u32| { *n += 1; n.to_string() })));
    /// let server = Server::start(backend, commands, Options::default(),
    ///     "127.0.0.1:0".parse().unwrap()).unwrap();
    ///
    /// #[derive(Default)]
    /// struct Inbox(Mutex<Vec<Frame>>);
    /// impl LocalSink for Inbox {
    ///     fn frame(&self, f: Frame) -> zs_core::Result<()> { self.0.lock().unwrap().push(f); Ok(()) }
    ///     fn closed(&self, _reason: &str) {}
    /// }
    /// let inbox = Arc::new(Inbox::default());
    /// let conn = server.connect_local(Some("203.0.113.9:5000".parse().unwrap()), inbox.clone()).unwrap();
    /// for id in 1..=2 {
    ///     conn.request(Request::Console { id, cmd: "count".into(), text: "".into() });
    /// }
    /// // Answered inline, on this thread, with this connection's own state.
    /// assert_eq!(*inbox.0.lock().unwrap(), [
    ///     Frame::ConsoleResponse { id: 1, text: "1".into() },
    ///     Frame::ConsoleResponse { id: 2, text: "2".into() },
    /// ]);
    /// assert_eq!(server.connection_count(), 1);
    /// assert_eq!(server.peers()[0].addr(), Some("203.0.113.9:5000".parse().unwrap()));
    /// drop(conn);
    /// assert_eq!(server.connection_count(), 0);
    /// ```
    pub fn connect_local(
        &self,
        addr: Option<SocketAddr>,
        sink: Arc<dyn LocalSink>,
    ) -> Result<LocalConn> {
        if self.local.shut.load(Ordering::Acquire) {
            return Err(Error::ConnectionLost("the server is shut down".into()));
        }
        let shared = &self.shared;
        let ip = addr.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip());
        if let Err(why) = shared.admit(ip) {
            let n = shared
                .stats
                .refused_connections
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(%ip, reason = %why, refused_total = n, "in-process connection refused");
            }
            return Err(Error::ConnectionLost(format!("refused: {why}")));
        }
        let id = LOCAL_ID_BASE + self.local.next.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(LocalLink {
            shared: shared.clone(),
            sink,
            id,
            ip,
            open: AtomicBool::new(true),
            in_flight: AtomicIsize::new(0),
            queue: Mutex::new(Queue::default()),
        });
        let peer = Peer::new(id, addr, link.clone());
        shared.stats.opened.fetch_add(1, Ordering::Relaxed);
        lock(&shared.conns).insert(id, peer.clone());
        // A shutdown that ran meanwhile did not see it: close it now.
        if self.local.shut.load(Ordering::Acquire) {
            link.end("the server is shut down", false);
            return Err(Error::ConnectionLost("the server is shut down".into()));
        }
        tracing::debug!(id, ?addr, "in-process connection open");
        Ok(LocalConn { link, peer })
    }

    /// Shutdown: no new in-process connection; those open end (their sinks
    /// are told).
    pub(crate) fn close_local(&self) {
        self.local.shut.store(true, Ordering::Release);
        let locals: Vec<Peer> = lock(&self.shared.conns)
            .iter()
            .filter(|(id, _)| **id >= LOCAL_ID_BASE)
            .map(|(_, p)| p.clone())
            .collect();
        for p in locals {
            p.close("the server shut down");
        }
    }
}

/// In-process connections ("local peers"): a connection to a [`Server`] from
/// code in the same process, with no transport and no security layer.
///
/// A gateway that runs in the server's process (the zs-web WebSocket face,
/// for one) needs what a client connection gets: the same [`Registry`]
/// handlers, its own [`Peer`] with its own user state, pushes and broadcasts,
/// the server's connection caps, statistics and HPC pool. Over a loopback TCP
/// connection that costs an encryption, a decryption, two system calls and
/// two thread hops per message, although nothing leaves the process.
/// [`Server::connect_local`] gives the same connection without any of it:
/// [`LocalConn::request`] runs the handler on the calling thread (an HPC
/// handler on the pool), and every frame for the connection (answers,
/// pushes, broadcasts) goes to the owner's [`LocalSink`].
///
/// What is the same as for a network connection: the registry and its
/// per-command statistics, the connection map ([`Server::peers`],
/// [`Server::broadcast`], [`Server::connection_count`]), the admission caps
/// ([`Options::max_connections`], [`Options::max_connections_per_ip`], under
/// the address the owner gives), [`Options::ordered`], the HPC pool and its
/// queue cap, `connections_opened` / `connections_open` /
/// `unknown_commands` / `refused_connections` in [`StatsSnapshot`].
///
/// What differs, on purpose: no bytes are counted in `bytes_in`/`bytes_out`
/// (no transport bytes exist); no idle timeout and no keepalive (the owner
/// knows when its client is gone); no StableIO (the owner's client
/// reconnects to a new connection); [`Options::max_in_flight`] is reported by
/// [`LocalConn::max_in_flight`] for the owner to enforce, since only the owner
/// can stop reading its client; a handler that panics closes the connection
/// (logged) instead of the transport's panic guard doing it.
///
/// [`Registry`]: crate::Registry
/// [`Options::max_connections`]: super::Options::max_connections
/// [`Options::max_connections_per_ip`]: super::Options::max_connections_per_ip
/// [`Options::ordered`]: super::Options::ordered
/// [`Options::max_in_flight`]: super::Options::max_in_flight
/// [`StatsSnapshot`]: crate::StatsSnapshot
///
/// One in-process connection is made by [`Server::connect_local`]. Closing
/// it (or dropping it) removes its peer from the server.
pub struct LocalConn {
    link: Arc<LocalLink>,
    peer: Peer,
}

impl std::fmt::Debug for LocalConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalConn({:?})", self.peer)
    }
}

impl LocalConn {
    /// The connection as handlers see it (id, address, user state).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether the connection is open (the server may close it).
    pub fn is_open(&self) -> bool {
        self.link.open.load(Ordering::Acquire)
    }

    /// Requests of this connection being executed (a handler holds their
    /// responder) or waiting in the ordered-mode queue.
    pub fn in_flight(&self) -> usize {
        self.link.in_flight.load(Ordering::Acquire).max(0) as usize
            + lock(&self.link.queue).waiting.len()
    }

    /// The server's [`Options::max_in_flight`](super::Options::max_in_flight):
    /// the owner stops reading its client while [`LocalConn::in_flight`] (or
    /// its own count of unanswered requests) is at this cap.
    pub fn max_in_flight(&self) -> usize {
        self.link.shared.options.max_in_flight
    }

    /// The server's session settings (its wire limits, to decode what the
    /// owner's client sends under the same bounds).
    pub fn session_config(&self) -> &crate::SessionConfig {
        &self.link.shared.session_cfg
    }

    /// Runs the handler for `req` (any request but a BigStream chunk is the
    /// usual use): on this thread, or on the HPC pool for HPC handlers. The
    /// answer (with the request's id) and anything the handler pushes go to
    /// the sink; an unknown command is answered with a 404 `Error` frame and
    /// counted in `unknown_commands`. Ignored once the connection is closed.
    /// In ordered mode the request waits until the previous one is answered
    /// (the next one then runs on the thread that answered).
    pub fn request(&self, req: Request) {
        if !self.is_open() {
            return;
        }
        if self.link.shared.options.ordered {
            {
                let mut q = lock(&self.link.queue);
                if q.busy || !q.waiting.is_empty() {
                    q.waiting.push_back(req);
                    return;
                }
                q.busy = true;
                q.in_dispatch = true;
            }
            self.link.run(&self.peer, req, true);
            self.link.run_queue(&self.peer);
        } else {
            self.link.run(&self.peer, req, false);
        }
    }

    /// Closes the connection (the sink is not told: the owner knows).
    pub fn close(&self) {
        self.link.end("closed by its owner", false);
    }
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        self.link.end("closed by its owner", false);
    }
}

/// Ordered mode: one request executes at a time.
#[derive(Default)]
struct Queue {
    busy: bool,
    /// A thread is in [`LocalLink::run_queue`] (an answer given meanwhile
    /// lets it continue instead of starting a second runner).
    in_dispatch: bool,
    waiting: VecDeque<Request>,
}

/// The [`Outbox`] of an in-process connection.
struct LocalLink {
    shared: Arc<Shared>,
    sink: Arc<dyn LocalSink>,
    id: u64,
    /// The address the admission caps count it under.
    ip: IpAddr,
    open: AtomicBool,
    /// Requests whose handler kept its responder. Signed: one answered on
    /// another thread before its handler returned is counted down first
    /// (see `registry::inline`).
    in_flight: AtomicIsize,
    queue: Mutex<Queue>,
}

impl LocalLink {
    /// Dispatches one request; a panicking handler closes the connection.
    fn run(&self, peer: &Peer, req: Request, ordered: bool) {
        let shared = &self.shared;
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            shared
                .registry
                .dispatch(peer, req, shared.pool.as_ref(), ordered)
        }));
        match r {
            Ok(true) => {}
            Ok(false) => {
                shared
                    .stats
                    .unknown_commands
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tracing::error!(
                    peer = self.id,
                    "a handler panicked: closing the in-process connection"
                );
                self.end("a handler panicked", true);
            }
        }
    }

    /// Ordered mode: runs queued requests while the previous one is answered.
    fn run_queue(&self, peer: &Peer) {
        loop {
            let next = {
                let mut q = lock(&self.queue);
                q.in_dispatch = false;
                if q.busy || !self.open.load(Ordering::Acquire) {
                    None
                } else {
                    let n = q.waiting.pop_front();
                    if n.is_some() {
                        q.busy = true;
                        q.in_dispatch = true;
                    }
                    n
                }
            };
            match next {
                Some(r) => self.run(peer, r, true),
                None => return,
            }
        }
    }

    /// Ends the connection once: out of the connection map and the
    /// admission count, partial BigStream bodies dropped, the sink told
    /// when `tell`.
    fn end(&self, reason: &str, tell: bool) {
        if !self.open.swap(false, Ordering::AcqRel) {
            return;
        }
        let peer = lock(&self.shared.conns).remove(&self.id);
        self.shared.stats.closed.fetch_add(1, Ordering::Relaxed);
        self.shared.release(self.ip);
        lock(&self.queue).waiting.clear();
        if let Some(p) = peer {
            self.shared.registry.peer_closed(&p);
        }
        tracing::debug!(peer = self.id, reason, "in-process connection closed");
        if tell {
            self.sink.closed(reason);
        }
    }
}

impl Outbox for LocalLink {
    fn app_state(&self) -> Option<crate::registry::AppState> {
        self.shared.registry.app_state_any()
    }

    fn send_frame(&self, frame: Frame) -> Result<()> {
        if !self.open.load(Ordering::Acquire) {
            return Err(Error::ConnectionLost("the connection is closed".into()));
        }
        self.sink.frame(frame)
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn close(&self, reason: &str) {
        self.end(reason, true);
    }

    fn request_done(&self) {
        let run = {
            let mut q = lock(&self.queue);
            q.busy = false;
            if q.in_dispatch || q.waiting.is_empty() {
                false
            } else {
                q.in_dispatch = true;
                true
            }
        };
        if run {
            // The map's lock must be released before handlers run (they may
            // close or broadcast): not held by an `if let` scrutinee.
            let peer = lock(&self.shared.conns).get(&self.id).cloned();
            match peer {
                Some(peer) => self.run_queue(&peer),
                None => lock(&self.queue).in_dispatch = false,
            }
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
