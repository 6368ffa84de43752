//! Running sessions on a `zs-io` backend: the per-connection [`zs_io::Handler`],
//! the [`Server`] and the [`Client`].
//!
//! Each connection's [`Session`] sits behind a small mutex shared by the loop
//! (which feeds it input and timers) and by any thread that sends on it (calls,
//! delayed responders, HPC workers, broadcasts). Handlers run on the loop thread
//! with the mutex released, so they may call, push or answer freely.
//!
//! StableIO: a `Link` is the *logical* session. Its current connection is
//! swappable: when it dies, a stable session stays (offline) in the server's
//! table until the client resumes it on a new connection, or until it expires.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use bytes::{Bytes, BytesMut};
use zs_io::{Backend, CloseReason, Conn, Handler, Listener};
use zs_wire::{DataFrame, Frame, Text};

use crate::budget::BatchFilter;
use crate::budget::Budgets;
use crate::error::{Error, Result};
use crate::lazy::LazyMap;
use crate::oneshot::{channel, CallFuture, Completer};
use crate::pool::WorkerPool;
use crate::registry::{Outbox, Peer, Registry};
use crate::session::{Call, Event, IdHasher, Reply, Request, Session, SessionConfig};
use crate::stable::SECRET_LEN;
use crate::stats::{EndpointStats, StatsSnapshot};

mod local;
pub use local::{LocalConn, LocalSink, LOCAL_ID_BASE};

// Our timer tokens.
const OURS: u64 = 1 << 63;
const TOKEN_SESSION: u64 = OURS | 1;
const TOKEN_KEEPALIVE: u64 = OURS | 2;
const TOKEN_NEXT: u64 = OURS | 4;
const TOKEN_SHRINK: u64 = OURS | 5;

/// A busy connection keeps its buffers (no allocation per call); once it has
/// been idle for this long they are released (an idle session keeps little
/// memory).
const SHRINK_AFTER: Duration = Duration::from_millis(100);

/// A link counts as busy (keeps its buffers) once this many batches in a row
/// came within [`SHRINK_AFTER`] of each other; until then it releases them
/// after every batch, as an idle session does.
const BUSY_BATCHES: u8 = 4;

/// A transport read buffer up to this capacity goes back to the transport
/// (its pool) for the next read; a larger one is released.
const KEEP_READ_BUF: usize = 16 << 10;
/// Why a connection's reading is paused (bits of `LinkState::paused`).
const PAUSE_BACKLOG: u8 = 1;
const PAUSE_IN_FLIGHT: u8 = 2;
const PAUSE_INPUT: u8 = 4;

/// Endpoint settings shared by [`Server`] and [`Client`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Session settings (wire limits and token, CompleteBuffer limit, batches).
    pub session: SessionConfig,
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
    /// Most bytes kept for a connection beyond the transport's own send
    /// queue; a peer that lets more pile up (it never reads) is disconnected
    /// (checked before anything more is queued). Default 8 MiB.
    pub max_backlog: usize,
    /// Client connect timeout (TCP and the security layer's handshake: a
    /// connect over a secure backend completes once keys exist). Default 10 s.
    pub connect_timeout: Duration,
    /// Server: accept StableIO sessions (clients made with
    /// [`Client::connect_stable`]). Default true (bounded by the limits below).
    pub stable: bool,
    /// Server: how long a StableIO session whose connection died is kept for
    /// its client to resume it; then it is dropped (logged, counted in
    /// [`StatsSnapshot::stable_expired`]). Default 60 s.
    pub stable_offline_timeout: Duration,
    /// Server: most StableIO sessions kept offline at once; beyond, the oldest
    /// offline one is evicted (logged, [`StatsSnapshot::stable_evicted`]).
    /// Default 4096.
    pub stable_max_offline: usize,
    /// Server: most bytes of unacknowledged records (and staged batches) kept
    /// by all offline sessions together (each is also bounded by
    /// [`SessionConfig::stable_max_unacked`]), and never more than half of
    /// [`Options::stable_max_unacked_total`]; beyond, the oldest offline
    /// sessions are evicted. Default 256 MiB.
    pub stable_max_offline_bytes: usize,
    /// Client (StableIO): how to reconnect after the connection died.
    pub reconnect: Reconnect,
    /// Most requests of one connection dispatched and not yet answered (plus
    /// those waiting in the ordered-mode queue); at the cap the connection's
    /// reading pauses until answers go out. Default 256.
    pub max_in_flight: usize,
    /// Most jobs waiting for the HPC worker pool; a request that finds the
    /// queue full is answered [`code::BUSY`](crate::code::BUSY). Default 4096.
    pub hpc_queue: usize,
    /// Server: most connections open at once; beyond, a new connection is
    /// closed at accept (logged, counted in
    /// [`StatsSnapshot::refused_connections`]). Default 10,000.
    pub max_connections: usize,
    /// Server: most connections open at once from one source IP address.
    /// Default 1,000.
    pub max_connections_per_ip: usize,
    /// Most StableIO record bytes (unacknowledged or parked) kept by all
    /// sessions of this endpoint together, online or offline; a send beyond it
    /// is refused like one beyond [`SessionConfig::stable_max_unacked`].
    /// Default 256 MiB.
    pub stable_max_unacked_total: usize,
    /// Most BatchStream bytes staged by all sessions of this endpoint
    /// together (each is also bounded by [`SessionConfig::max_batch_bytes`]).
    /// Default 256 MiB.
    pub max_batch_bytes_total: usize,
}

/// Reconnection policy of a StableIO client: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Delay before the first attempt. Default 50 ms.
    pub initial: Duration,
    /// Largest delay between attempts. Default 5 s.
    pub max: Duration,
    /// Give up this long after the connection died (pending calls then fail
    /// with [`Error::SessionLost`]). Keep it at or below the server's
    /// [`Options::stable_offline_timeout`]. Default 60 s.
    pub give_up: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            give_up: Duration::from_secs(60),
        }
    }
}

impl Reconnect {
    /// The delay before attempt `n` (1-based): `initial · 2^(n-1)` capped at
    /// `max`, scaled by `jitter` in `[0.5, 1.0]`.
    pub fn delay(&self, n: u32, jitter: f64) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << n.saturating_sub(1).min(20));
        exp.min(self.max).mul_f64(jitter.clamp(0.5, 1.0))
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            session: SessionConfig::default(),
            keepalive: None,
            idle_timeout: Some(Duration::from_secs(60)),
            call_timeout: Some(Duration::from_secs(30)),
            ordered: false,
            hpc_threads: 0,
            max_backlog: 8 << 20,
            connect_timeout: Duration::from_secs(10),
            stable: true,
            stable_offline_timeout: Duration::from_secs(60),
            stable_max_offline: 4096,
            stable_max_offline_bytes: 256 << 20,
            reconnect: Reconnect::default(),
            max_in_flight: 256,
            hpc_queue: 4096,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            stable_max_unacked_total: 256 << 20,
            max_batch_bytes_total: 256 << 20,
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

/// Receives the answers of calls made with [`Client::call_to`]. One shared sink
/// serves any number of calls, told apart by the caller's `tag`, so a call
/// allocates nothing for its completion (a [`Client::call_with`] closure is
/// boxed per call).
pub trait ReplySink: Send + Sync {
    /// The outcome of the call made with `tag`. Runs on the client's event loop
    /// thread (must not block), or on the calling thread when the call could not
    /// start.
    fn on_reply(&self, tag: u64, result: Result<Reply>);

    /// Whether this sink takes text answers borrowed ([`ReplySink::on_text`]).
    /// Default false: every outcome comes to [`ReplySink::on_reply`]. Asked
    /// once per call, when [`Client::call_to`] starts it.
    fn borrows_text(&self) -> bool {
        false
    }

    /// The text answer of the console call made with `tag`, borrowed from the
    /// connection's input buffer where the security layer opened it (no
    /// `Reply`, `Text` or reference count per answer). Called instead of
    /// [`ReplySink::on_reply`] for a successful text answer when
    /// [`ReplySink::borrows_text`] is true and the runtime serves the answer
    /// where it lies (a connection without StableIO; otherwise `on_reply`
    /// gets it owned). Runs on the client's event loop thread with no lock
    /// of the connection held: it may start the next call. The default
    /// hands `on_reply` a copy.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use zs_core::{ReplySink, Reply, Result};
    /// /// Counts the answers that say "pong".
    /// struct Pongs(AtomicU64);
    /// impl ReplySink for Pongs {
    ///     fn on_reply(&self, tag: u64, r: Result<Reply>) {
    ///         if let Ok(Reply::Text(t)) = r {
    ///             self.on_text(tag, t.as_str());
    ///         }
    ///     }
    ///     fn borrows_text(&self) -> bool {
    ///         true
    ///     }
    ///     fn on_text(&self, _tag: u64, text: &str) {
    ///         if text == "pong" {
    ///             self.0.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     }
    /// }
    /// let sink = Pongs(AtomicU64::new(0));
    /// sink.on_text(1, "pong");
    /// assert_eq!(sink.0.load(Ordering::Relaxed), 1);
    /// ```
    fn on_text(&self, tag: u64, text: &str) {
        self.on_reply(tag, Ok(Reply::Text(Text::from(text))));
    }
}

/// What runs when a call's answer comes (kept with the call in the
/// session's map of pending calls).
pub(crate) enum Completion {
    /// A closure (boxed per call).
    Once(Box<dyn FnOnce(Result<Reply>) + Send>),
    /// A shared sink and the caller's tag (no allocation).
    Sink(Arc<dyn ReplySink>, u64),
    /// A sink that takes text answers borrowed ([`ReplySink::borrows_text`],
    /// asked when the call was made, not under the link's lock).
    SinkText(Arc<dyn ReplySink>, u64),
}

impl Completion {
    pub(crate) fn complete(self, r: Result<Reply>) {
        match self {
            Completion::Once(f) => f(r),
            Completion::Sink(s, tag) | Completion::SinkText(s, tag) => s.on_reply(tag, r),
        }
    }
}
type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A StableIO session known to a server.
struct StableEntry {
    link: Arc<Link>,
    peer: Peer,
    /// The resume secret handed out last (rotated on every resume)...
    secret: [u8; SECRET_LEN],
    /// ...and the one the client proved last: the answer carrying the newer
    /// secret may have died with its connection, so both are accepted until
    /// the client proves the newer one.
    previous: Option<[u8; SECRET_LEN]>,
    /// When its connection died (None: online).
    offline_since: Option<Instant>,
}

/// Messages to a StableIO client's reconnect thread.
enum Reconn {
    /// The link died (or an attempt failed): try again.
    Down,
    /// The session resumed.
    Up,
    /// The client is closed.
    Stop,
}

/// Endpoint-wide state shared by every connection of a server or client.
struct Shared {
    registry: Arc<Registry>,
    options: Options,
    pool: Option<WorkerPool>,
    stats: EndpointStats,
    conns: Mutex<HashMap<u64, Peer>>,
    server: bool,
    /// Client: ask for StableIO on the first connection.
    client_stable: bool,
    /// Server: StableIO sessions by id.
    stable: Mutex<HashMap<u64, StableEntry>>,
    /// Client: the reconnect thread's mailbox.
    reconnect: Mutex<Option<mpsc::Sender<Reconn>>>,
    rng: ring::rand::SystemRandom,
    /// Bytes all sessions hold (StableIO records, staged batches).
    budgets: Arc<Budgets>,
    /// `options.session`, shared by every session.
    session_cfg: Arc<SessionConfig>,
    /// Server: connections open, per source address.
    admission: Mutex<Admission>,
    /// Client: a call was made with a sink that takes text answers borrowed
    /// ([`ReplySink::borrows_text`]): look for its answers in each read.
    borrowing_sinks: AtomicBool,
}

/// What the server's admission caps count.
#[derive(Default)]
struct Admission {
    conns: usize,
    /// Connections per source address.
    per_ip: HashMap<IpAddr, usize>,
}

impl Shared {
    fn new(registry: Registry, options: Options, server: bool) -> Arc<Shared> {
        Shared::with(registry, options, server, false)
    }

    fn with(
        registry: Registry,
        options: Options,
        server: bool,
        client_stable: bool,
    ) -> Arc<Shared> {
        let pool = registry.has_hpc().then(|| {
            let n = if options.hpc_threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                options.hpc_threads
            };
            WorkerPool::with_queue(n, options.hpc_queue)
        });
        let session_cfg = Arc::new(options.session);
        let registry = Arc::new(registry);
        let reg = registry.clone();
        let batch_filter: BatchFilter = Arc::new(move |name: &str| reg.contains("batch", name));
        let budgets = Arc::new(
            Budgets::new(
                options.stable_max_unacked_total,
                options.max_batch_bytes_total,
            )
            .with_batch_filter(batch_filter),
        );
        Arc::new(Shared {
            registry,
            options,
            pool,
            stats: EndpointStats::default(),
            conns: Mutex::new(HashMap::new()),
            server,
            client_stable,
            stable: Mutex::new(HashMap::new()),
            reconnect: Mutex::new(None),
            rng: ring::rand::SystemRandom::new(),
            budgets,
            session_cfg,
            admission: Mutex::new(Admission::default()),
            borrowing_sinks: AtomicBool::new(false),
        })
    }

    fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot(
            self.registry.stats(),
            &self.budgets,
            self.registry.busy_refusals(),
        )
    }

    /// Server: counts a new connection from `ip`, or says which cap refuses
    /// it. (Handshakes in progress are the security layer's to bound:
    /// `SecureConfig::max_handshakes`, `SecureBackend::with_max_handshakes_per_ip`.)
    fn admit(&self, ip: IpAddr) -> std::result::Result<(), String> {
        let o = &self.options;
        let mut a = lock(&self.admission);
        let conns = a.per_ip.get(&ip).copied().unwrap_or(0);
        if a.conns >= o.max_connections {
            return Err(format!("{} connections open (max_connections)", a.conns));
        }
        if conns >= o.max_connections_per_ip {
            return Err(format!(
                "{conns} connections open from {ip} (max_connections_per_ip)"
            ));
        }
        a.conns += 1;
        *a.per_ip.entry(ip).or_default() += 1;
        Ok(())
    }

    /// Server: a connection from `ip` closed.
    fn release(&self, ip: IpAddr) {
        let mut a = lock(&self.admission);
        a.conns = a.conns.saturating_sub(1);
        if let Some(e) = a.per_ip.get_mut(&ip) {
            *e = e.saturating_sub(1);
            if *e == 0 {
                a.per_ip.remove(&ip);
            }
        }
    }

    fn notify(&self, m: Reconn) {
        if let Some(tx) = lock(&self.reconnect).as_ref() {
            let _ = tx.send(m);
        }
    }

    /// Fresh StableIO credentials (a nonzero id not in use, a random secret).
    fn new_offer(&self) -> Option<(u64, [u8; SECRET_LEN])> {
        let mut b = [0u8; 8 + SECRET_LEN];
        for _ in 0..4 {
            self.rng.fill(&mut b).ok()?;
            let sid = u64::from_le_bytes(b[..8].try_into().ok()?);
            if sid != 0 && !lock(&self.stable).contains_key(&sid) {
                let mut secret = [0u8; SECRET_LEN];
                secret.copy_from_slice(&b[8..]);
                return Some((sid, secret));
            }
        }
        None
    }

    /// Ends StableIO session `sid` for good (expiry, eviction, shutdown).
    fn drop_stable(self: &Arc<Shared>, sid: u64, why: &str) {
        let Some(e) = lock(&self.stable).remove(&sid) else {
            return;
        };
        let mut works = Vec::new();
        {
            let mut st = lock(&e.link.st);
            e.link.open.store(false, Ordering::Release);
            st.session.end_stable(why);
            e.link.drain(&mut st, &mut works);
            if let Some(c) = st.conn.take() {
                c.close();
            }
        }
        lock(&self.conns).remove(&e.peer.id());
        process_works(self, &e.link, &e.peer, &mut works);
        self.registry.peer_closed(&e.peer);
    }

    /// Enforces the offline limits (count and bytes), evicting the oldest.
    fn enforce_offline_caps(self: &Arc<Shared>) {
        let o = &self.options;
        // Offline sessions never hold more than half the endpoint's StableIO
        // budget: the rest stays for sessions that are online.
        let max_bytes = o
            .stable_max_offline_bytes
            .min(o.stable_max_unacked_total / 2);
        loop {
            let victim = {
                let t = lock(&self.stable);
                let mut offline: Vec<(Instant, u64, usize)> = t
                    .iter()
                    .filter_map(|(sid, e)| {
                        e.offline_since.map(|since| {
                            let bytes = lock(&e.link.st).session.held_bytes();
                            (since, *sid, bytes)
                        })
                    })
                    .collect();
                let bytes: usize = offline.iter().map(|x| x.2).sum();
                if offline.len() <= o.stable_max_offline && bytes <= max_bytes {
                    return;
                }
                offline.sort_unstable();
                offline.first().map(|v| (v.1, offline.len(), bytes))
            };
            let Some((sid, n, bytes)) = victim else {
                return;
            };
            tracing::warn!(
                session = sid,
                offline_sessions = n,
                offline_bytes = bytes,
                reason = "offline limits exceeded",
                "evicting StableIO session"
            );
            self.stats.stable_evicted.fetch_add(1, Ordering::Relaxed);
            self.drop_stable(
                sid,
                &format!(
                    "evicted: {n} offline sessions holding {bytes} bytes exceed the limits ({} sessions, {} bytes)",
                    o.stable_max_offline, max_bytes
                ),
            );
        }
    }

    /// One pass of the server's StableIO reaper: expires sessions offline too
    /// long and runs offline sessions' call timeouts.
    fn reap(self: &Arc<Shared>, now: Instant) {
        let timeout = self.options.stable_offline_timeout;
        let (expired, offline): (Vec<_>, Vec<_>) = {
            let t = lock(&self.stable);
            let off: Vec<(u64, Instant, Arc<Link>, Peer)> = t
                .iter()
                .filter_map(|(sid, e)| {
                    e.offline_since
                        .map(|s| (*sid, s, e.link.clone(), e.peer.clone()))
                })
                .collect();
            off.into_iter()
                .partition(|(_, since, _, _)| now.saturating_duration_since(*since) >= timeout)
        };
        for (sid, since, _, peer) in expired {
            tracing::warn!(
                session = sid,
                peer = peer.id(),
                offline = ?now.saturating_duration_since(since),
                reason = "offline timeout",
                "dropping StableIO session"
            );
            self.drop_stable(sid, &format!("expired: offline for more than {timeout:?}"));
            // Counted once it is gone from every map.
            self.stats.stable_expired.fetch_add(1, Ordering::Relaxed);
        }
        for (_, _, link, peer) in offline {
            let mut works = Vec::new();
            {
                let mut st = lock(&link.st);
                let _ = st.session.handle_timeout(now);
                link.drain(&mut st, &mut works);
            }
            process_works(self, &link, &peer, &mut works);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct LinkState {
    session: Session,
    /// The current connection (None: a StableIO session between connections).
    conn: Option<Conn>,
    /// The session's output, split off as `Bytes` for the transport; the
    /// buffer alternates with the session's (see [`Session::write_output`])
    /// and its space is reused once the transport wrote it (no allocation
    /// per flush).
    out: BytesMut,
    /// Work was done since the shrink timer was armed.
    active: bool,
    /// The shrink timer is armed.
    shrink_armed: bool,
    /// When the last batch was read.
    last_batch: Option<Instant>,
    /// Batches in a row that came within [`SHRINK_AFTER`] of the previous one.
    quick: u8,
    progress: LazyMap<u64, ProgressFn, std::hash::BuildHasherDefault<IdHasher>>,
    armed: Option<Instant>,
    busy: bool,
    in_dispatch: bool,
    /// While above 0 the event loop is dispatching what it read: frames sent
    /// meanwhile (answers, new calls from completions) stay in the session and
    /// leave together, as one write of few records, when the loop finishes.
    hold: u32,
    /// The time the loop read the batch being held (one clock read serves
    /// every frame sent meanwhile).
    held_at: Instant,
    /// Why reading is paused (`PAUSE_*` bits; 0: reading).
    paused: u8,
    /// What the security layer reported for the current (or latest)
    /// connection ([`Peer::security_info`]).
    security: Option<Arc<zs_io::SecurityInfo>>,
    /// What an idle handshaken session does not use, made on first use.
    cold: Option<Box<Cold>>,
}

/// The part of [`LinkState`] an idle handshaken session never uses (issue
/// 13's idle bytes: 120 B of an idle `Link` become one pointer). Made on
/// first use ([`LinkState::cold`]), released when it empties
/// ([`LinkState::trim_cold`]).
#[derive(Default)]
struct Cold {
    /// Output the transport refused, in order, and its size.
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    /// Client: `ready()` futures waiting for the handshake.
    ready: Vec<Completer<()>>,
    /// Ordered mode: requests waiting for the one executing.
    queue: VecDeque<Request>,
    /// StableIO client: the server's refusal, once it came.
    refused: Option<String>,
}

impl Cold {
    fn is_empty(&self) -> bool {
        self.backlog.is_empty()
            && self.ready.is_empty()
            && self.queue.is_empty()
            && self.refused.is_none()
    }
}

impl LinkState {
    /// Now, or the batch's time while the loop holds the output.
    fn now(&self) -> Instant {
        if self.hold > 0 {
            self.held_at
        } else {
            Instant::now()
        }
    }
}

impl LinkState {
    /// The cold part, made now if it is not there.
    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Releases the cold part once nothing is left in it.
    fn trim_cold(&mut self) {
        if self.cold.as_ref().is_some_and(|c| c.is_empty()) {
            self.cold = None;
        }
    }

    fn backlog_is_empty(&self) -> bool {
        self.cold.as_ref().is_none_or(|c| c.backlog.is_empty())
    }

    fn backlog_bytes(&self) -> usize {
        self.cold.as_ref().map_or(0, |c| c.backlog_bytes)
    }

    /// Drops the backlog (the connection is gone or replaced).
    fn clear_backlog(&mut self) {
        if let Some(c) = &mut self.cold {
            c.backlog.clear();
            c.backlog_bytes = 0;
        }
        self.trim_cold();
    }

    /// Requests waiting in the ordered queue.
    fn queued(&self) -> usize {
        self.cold.as_ref().map_or(0, |c| c.queue.len())
    }

    /// The `ready()` futures waiting, taken out.
    fn take_ready(&mut self) -> Vec<Completer<()>> {
        let r = self
            .cold
            .as_mut()
            .map(|c| std::mem::take(&mut c.ready))
            .unwrap_or_default();
        self.trim_cold();
        r
    }

    fn refused(&self) -> Option<&String> {
        self.cold.as_ref().and_then(|c| c.refused.as_ref())
    }

    /// Whether `conn` is this link's current connection.
    fn is_current(&self, conn: &Conn) -> bool {
        self.conn.as_ref().is_some_and(|c| c.id() == conn.id())
    }
}

/// What the loop does after releasing the session lock: the session's own
/// event, as it came (a request goes to its handler in the shape the session
/// built from the decoded frame), or what the runtime attached to an event
/// while it held the lock.
enum Work {
    /// A session event handled as it is.
    Event(Event),
    /// A call completed: its waiter and its outcome.
    Complete(Completion, Result<Reply>),
    /// The session is ready: these `ready()` futures complete.
    Ready(Vec<Completer<()>>),
    /// A BigStream we send progressed.
    Progress(ProgressFn, u64, u64),
}

/// One logical session: the session and its current connection.
struct Link {
    shared: Arc<Shared>,
    st: Mutex<LinkState>,
    /// The logical session is alive (a StableIO session stays alive offline).
    open: AtomicBool,
    /// Connections this link has had (StableIO clients: 1 + reconnects).
    /// (u32 counters: 4 B each instead of 8 make the `Link` 760 B; session 14.)
    links: AtomicU32,
    /// Successful resumes.
    resumes: AtomicU32,
    /// Requests executing (a kept responder exists), counted without the
    /// lock. Signed: a responder answered on another thread before its
    /// handler returned is counted down before it is counted up.
    in_flight: AtomicIsize,
    /// Reading is paused for too many requests in flight (mirrors the
    /// `PAUSE_IN_FLIGHT` bit, readable without the lock).
    in_flight_paused: AtomicBool,
}

impl Link {
    fn new(conn: Conn, session: Session, shared: Arc<Shared>) -> Link {
        Link {
            shared,
            st: Mutex::new(LinkState {
                session,
                conn: Some(conn),
                out: BytesMut::new(),
                active: false,
                shrink_armed: false,
                last_batch: None,
                quick: 0,
                progress: LazyMap::default(),
                armed: None,
                busy: false,
                in_dispatch: false,
                hold: 0,
                held_at: Instant::now(),
                paused: 0,
                security: None,
                cold: None,
            }),
            open: AtomicBool::new(true),
            links: AtomicU32::new(1),
            resumes: AtomicU32::new(0),
            in_flight: AtomicIsize::new(0),
            in_flight_paused: AtomicBool::new(false),
        }
    }

    /// This link's key in the loop-local answer buffer
    /// ([`registry::inline`](crate::registry::inline)).
    fn key(&self) -> usize {
        self as *const Link as *const () as usize
    }

    /// Encodes the answers this thread's handlers gave inline and buffered
    /// (see [`registry::inline`](crate::registry::inline)), before anything
    /// else this link sends. Call with the lock held.
    fn take_local(&self, st: &mut LinkState) {
        // (The clock is read only when answers wait: outside a batch
        // `st.now()` is a system clock read, and this runs before every
        // flush and call.)
        crate::registry::inline::take(self.key(), |frames| {
            let now = st.now();
            if let Err(e) = st.session.send_encoded(frames, now) {
                tracing::debug!(error = %e, "inline answers were not sent");
            }
        });
    }

    /// Whether `n` more bytes the transport refused may wait in the backlog
    /// (the budget is checked before anything more is kept); if not, the
    /// peer, which does not read its data, is disconnected.
    fn may_keep(&self, st: &mut LinkState, conn: &Conn, n: usize) -> bool {
        if st.backlog_bytes() + n <= self.shared.options.max_backlog {
            return true;
        }
        tracing::warn!(
            conn = conn.id().0,
            peer = %conn.peer_addr(),
            backlog = st.backlog_bytes() + n,
            limit = self.shared.options.max_backlog,
            "disconnecting: the peer does not read its data"
        );
        st.clear_backlog();
        if !st.session.is_stable() {
            self.open.store(false, Ordering::Release);
        }
        conn.abort();
        false
    }

    /// Sends what the session produced and arms its next timer. Call with the lock held.
    fn flush(&self, st: &mut LinkState) {
        // Statistics summed by this thread's batch first: no answer leaves
        // before it is counted.
        crate::stats::batch::publish();
        self.take_local(st);
        // A large payload kept apart from its frame head goes out as its own
        // piece, in one vectored send with the rest (no copy behind the head).
        let mut parts = VecDeque::new();
        if st.session.has_output_parts() {
            st.session.write_output_parts(&mut parts);
        } else {
            st.session.write_output(&mut st.out);
        }
        let Some(conn) = st.conn.clone() else {
            st.out.clear();
            return;
        };
        if let Some(why) = st.session.take_link_failure() {
            tracing::warn!(
                conn = conn.id().0,
                peer = %conn.peer_addr(),
                reason = %why,
                "disconnecting peer"
            );
            st.out.clear();
            conn.abort();
            return;
        }
        if !parts.is_empty() {
            let n: usize = parts.iter().map(Bytes::len).sum();
            self.shared
                .stats
                .bytes_out
                .fetch_add(n as u64, Ordering::Relaxed);
            if st.backlog_is_empty() {
                match conn.send_vectored(&mut parts) {
                    Ok(()) | Err(zs_io::Error::Full(_)) => {}
                    Err(_) => parts.clear(),
                }
            }
            let left: usize = parts.iter().map(Bytes::len).sum();
            if left > 0 {
                if !self.may_keep(st, &conn, left) {
                    return;
                }
                let cold = st.cold();
                cold.backlog_bytes += left;
                cold.backlog.extend(parts);
                self.pause(st, PAUSE_BACKLOG, true);
            }
        } else if !st.out.is_empty() {
            let b = st.out.split().freeze();
            self.shared
                .stats
                .bytes_out
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            let b = if st.backlog_is_empty() {
                match conn.send(b) {
                    Ok(()) => None,
                    Err(zs_io::Error::Full(b)) => Some(b),
                    Err(_) => None,
                }
            } else {
                Some(b)
            };
            if let Some(b) = b {
                if !self.may_keep(st, &conn, b.len()) {
                    return;
                }
                let cold = st.cold();
                cold.backlog_bytes += b.len();
                cold.backlog.push_back(b);
                self.pause(st, PAUSE_BACKLOG, true);
            }
        }
        if let Some(t) = st.session.poll_timeout() {
            if st.armed.is_none_or(|a| t < a) {
                let after = t.saturating_duration_since(Instant::now());
                if conn.set_timer(after, TOKEN_SESSION).is_ok() {
                    st.armed = Some(t);
                }
            }
        }
    }

    /// Pauses (`on`) or resumes reading for `reason`; reading goes on only
    /// when no reason is left. Call with the lock held.
    fn pause(&self, st: &mut LinkState, reason: u8, on: bool) {
        let before = st.paused;
        if on {
            st.paused |= reason;
        } else {
            st.paused &= !reason;
        }
        // (Stored only when it changes: a SeqCst store is a locked
        // instruction, and this runs after every batch.)
        if reason == PAUSE_IN_FLIGHT && (before & reason != 0) != on {
            self.in_flight_paused.store(on, Ordering::SeqCst);
        }
        if (before == 0) != (st.paused == 0) {
            if let Some(c) = &st.conn {
                c.set_read_paused(st.paused != 0);
            }
            if st.paused != 0 {
                self.shared
                    .stats
                    .reads_paused
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Resumes reading paused for too many requests in flight once below the
    /// cap. Call with the lock held.
    fn relieve(&self, st: &mut LinkState) {
        if st.paused & PAUSE_IN_FLIGHT != 0 && self.requests(st) < self.shared.options.max_in_flight
        {
            self.pause(st, PAUSE_IN_FLIGHT, false);
        }
    }

    /// After a batch of input from `conn`: applies the in-flight cap (pauses
    /// or resumes reading) and pauses reading while the session holds input
    /// back for its output; true when held-back input can be decoded now
    /// (the output went out). Call with the lock held.
    fn input_check(&self, st: &mut LinkState, conn: &Conn) -> bool {
        if !st.is_current(conn) {
            return false;
        }
        let over = self.requests(st) >= self.shared.options.max_in_flight;
        self.pause(st, PAUSE_IN_FLIGHT, over);
        // An answer may have gone out between the count and the pause.
        self.relieve(st);
        let blocked = st.session.input_blocked();
        if !blocked || !st.backlog_is_empty() {
            self.pause(st, PAUSE_INPUT, blocked);
            return false;
        }
        true
    }

    /// Requests executing or waiting in the ordered queue. Call with the lock held.
    fn requests(&self, st: &LinkState) -> usize {
        self.in_flight.load(Ordering::SeqCst).max(0) as usize + st.queued()
    }

    /// After a batch of work (read at `now`): a handshaking session, or one
    /// whose batches are sparse, releases its buffers at once; a busy one
    /// ([`BUSY_BATCHES`] quick batches in a row) keeps them and releases them
    /// once it has been idle for [`SHRINK_AFTER`] (see `TOKEN_SHRINK`). Call
    /// with the lock held.
    fn after_batch(&self, st: &mut LinkState, now: Instant) {
        // (`now < t + SHRINK_AFTER`: an addition instead of a subtraction
        // of two instants, which costs about 55 instructions per batch.)
        let quick = st
            .last_batch
            .and_then(|t| t.checked_add(SHRINK_AFTER))
            .is_some_and(|until| now < until);
        st.last_batch = Some(now);
        st.quick = if quick { st.quick.saturating_add(1) } else { 0 };
        if st.conn.is_none() || st.quick < BUSY_BATCHES {
            Self::shrink(st);
            return;
        }
        st.active = true;
        if !st.shrink_armed {
            if let Some(c) = &st.conn {
                st.shrink_armed = c.set_timer(SHRINK_AFTER, TOKEN_SHRINK).is_ok();
            }
            if !st.shrink_armed {
                Self::shrink(st);
            }
        }
    }

    /// The shrink timer fired: releases the buffers if the link stayed idle,
    /// else waits another period. Call with the lock held.
    fn shrink_due(&self, st: &mut LinkState) {
        st.shrink_armed = false;
        if std::mem::take(&mut st.active) {
            if let Some(c) = &st.conn {
                st.shrink_armed = c.set_timer(SHRINK_AFTER, TOKEN_SHRINK).is_ok();
            }
            if st.shrink_armed {
                return;
            }
        }
        Self::shrink(st);
    }

    fn shrink(st: &mut LinkState) {
        st.session.shrink_buffers();
        if st.out.is_empty() {
            st.out = BytesMut::new();
        }
    }

    /// [`Self::flush`] unless the event loop holds the output (it flushes when
    /// it finishes its batch). Call with the lock held.
    fn flush_soon(&self, st: &mut LinkState) {
        if st.hold == 0 {
            self.flush(st);
        }
    }

    /// Moves the session's events out as work (with the lock held).
    fn drain(&self, st: &mut LinkState, works: &mut Vec<Work>) {
        while let Some(ev) = st.session.poll_event() {
            match ev {
                Event::Established { suite, .. } => {
                    tracing::debug!(%suite, "session established");
                    // A StableIO client is ready once the server accepted
                    // (StableReady) or refused (StableRefused) it.
                    if !self.shared.client_stable {
                        works.push(Work::Ready(st.take_ready()));
                    }
                }
                Event::Reply { id, result } => {
                    if !st.progress.is_empty() {
                        st.progress.remove(&id);
                    }
                    if let Some(c) = st.session.take_waiter(id) {
                        works.push(Work::Complete(c, result));
                    }
                }
                Event::Progress { id, acked, total } => {
                    if let Some(p) = st.progress.get(&id) {
                        works.push(Work::Progress(p.clone(), acked, total));
                    }
                }
                Event::StableReady { session } => {
                    works.push(Work::Event(Event::StableReady { session }));
                    if self.shared.client_stable {
                        works.push(Work::Ready(st.take_ready()));
                    }
                }
                Event::StableRefused { message } => {
                    st.cold().refused = Some(message.clone());
                    works.push(Work::Event(Event::StableRefused { message }));
                }
                ev => works.push(Work::Event(ev)),
            }
        }
    }

    fn start_call(&self, call: Call, timeout: Option<Duration>, done: Completion) {
        let mut st = lock(&self.st);
        self.take_local(&mut st);
        let now = st.now();
        let mut waiter = Some(done);
        match st.session.call_waiting(call, timeout, now, &mut waiter) {
            Ok(_) => self.flush_soon(&mut st),
            Err(e) => {
                drop(st);
                if let Some(done) = waiter {
                    done.complete(Err(e));
                }
            }
        }
    }

    fn ready(&self) -> CallFuture<()> {
        let mut st = lock(&self.st);
        if let Some(m) = st.refused() {
            return CallFuture::ready(Err(Error::Config(format!(
                "the server refused StableIO: {m}"
            ))));
        }
        let stable_pending = self.shared.client_stable && st.session.stable_id() == Some(0);
        if st.session.is_online() && !st.session.is_dead() && !stable_pending {
            CallFuture::ready(Ok(()))
        } else if st.session.is_dead() || !self.open.load(Ordering::Acquire) {
            CallFuture::ready(Err(Error::ConnectionLost(
                "the connection closed before the session was ready".into(),
            )))
        } else {
            let (c, f) = channel();
            st.cold().ready.push(c);
            f
        }
    }

    fn conn(&self) -> Option<Conn> {
        lock(&self.st).conn.clone()
    }

    /// Whether answers can still reach the peer: the session lives and it is
    /// either a StableIO session (queued for resume) or its transport
    /// connection is not closed.
    fn open_in(st: &LinkState) -> bool {
        !st.session.is_dead()
            && (st.session.is_stable() || st.conn.as_ref().is_some_and(|c| !c.is_closed()))
    }
}

impl Outbox for Link {
    fn send_frame(&self, frame: Frame) -> Result<()> {
        if !self.open.load(Ordering::Acquire) {
            return Err(Error::ConnectionLost("the connection is closed".into()));
        }
        let mut st = lock(&self.st);
        // The same test as `is_open`: the transport may report its close
        // before this link's `on_close` ran (the layer closes its side first),
        // and an answer then must fail, not vanish.
        if !Self::open_in(&st) {
            return Err(Error::ConnectionLost("the connection is closed".into()));
        }
        self.take_local(&mut st);
        let now = st.now();
        st.session.send_frame(&frame, now)?;
        self.flush_soon(&mut st);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire) && Self::open_in(&lock(&self.st))
    }

    fn close(&self, reason: &str) {
        tracing::debug!(reason, "closing connection");
        let mut st = lock(&self.st);
        let now = st.now();
        st.session.close(now);
        self.flush(&mut st);
        self.open.store(false, Ordering::Release);
        let conn = st.conn.clone();
        drop(st);
        if let Some(c) = conn {
            c.close();
        }
    }

    fn request_done(&self) {
        let mut st = lock(&self.st);
        st.busy = false;
        if !st.in_dispatch && st.queued() > 0 {
            if let Some(c) = &st.conn {
                let _ = c.wake(TOKEN_NEXT);
            }
        }
    }

    fn drop_link(&self) {
        if let Some(c) = self.conn() {
            c.abort();
        }
    }

    fn security_info(&self) -> Option<Arc<zs_io::SecurityInfo>> {
        lock(&self.st).security.clone()
    }

    fn app_state(&self) -> Option<crate::registry::AppState> {
        self.shared.registry.app_state_any()
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // SeqCst on both sides (Dekker): either the loop sees the lower count
        // after it paused, or this sees its pause and resumes reading.
        if self.in_flight_paused.load(Ordering::SeqCst) {
            let mut st = lock(&self.st);
            self.relieve(&mut st);
        }
    }
}

/// Releases a [`LinkState::hold`] when dropped (also if a handler panics):
/// flushes what was sent meanwhile (answers given inline first) and trims
/// idle buffers. While it lives, this thread holds the link's batch: inline
/// answers wait in the loop-local buffer
/// ([`registry::inline`](crate::registry::inline)).
struct Held<'a>(&'a Link, usize);

impl<'a> Held<'a> {
    /// `local`: answers given inline may wait in the loop-local buffer (not
    /// in a StableIO session, whose answers are numbered records one by one).
    fn new(link: &'a Link, local: bool) -> Held<'a> {
        let key = if local { link.key() } else { 0 };
        let wire = &link.shared.session_cfg.wire;
        // Command statistics are summed until the batch's end.
        crate::stats::batch::begin();
        Held(link, crate::registry::inline::hold(key, wire))
    }
}

impl Held<'_> {
    /// Releases the hold as dropping it does and, with `input` given, runs
    /// [`Link::input_check`] for that connection under the same lock (one
    /// lock per batch fewer); returns what it returned (false without `input`).
    fn end(self, input: Option<&Conn>) -> bool {
        let (link, previous) = (self.0, self.1);
        std::mem::forget(self);
        crate::registry::inline::release(previous);
        // Published before the batch's output leaves (`end_hold`).
        crate::stats::batch::end();
        let mut st = lock(&link.st);
        link.end_hold(&mut st);
        input.is_some_and(|conn| link.input_check(&mut st, conn))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        crate::registry::inline::release(self.1);
        crate::stats::batch::end();
        self.0.end_hold(&mut lock(&self.0.st));
    }
}

impl Link {
    /// The loop's batch ends ([`Held`]): the answers given inline go first,
    /// then, once no hold is left, the output. Call with the lock held.
    fn end_hold(&self, st: &mut LinkState) {
        self.take_local(st);
        st.hold = st.hold.saturating_sub(1);
        if st.hold == 0 {
            self.flush(st);
            let at = st.held_at;
            self.after_batch(st, at);
        }
    }
}

/// What a client's handler reports once its connection opened (or failed).
type Connected = Result<(Arc<Link>, Peer)>;

/// The zs-io handler of one connection (server or client side).
struct ConnHandler {
    shared: Arc<Shared>,
    link: Option<(Arc<Link>, Peer)>,
    /// (This and the next are boxed: most connections never have them, and
    /// every idle session keeps its handler; issue 13's idle bytes. A
    /// server's StableIO offer is kept by the session only.)
    connected: Option<Box<mpsc::Sender<Connected>>>,
    /// StableIO client reconnect: the logical session this connection joins.
    attach: Option<Box<(Arc<Link>, Peer)>>,
    /// Server: the source address this connection is counted under by the
    /// admission caps (None: not counted).
    admitted: Option<IpAddr>,
    /// The work list of the last batch, kept (empty) for the next one.
    spare: Vec<Work>,
    /// A busy link's batch of requests and call outcomes, moved out of the
    /// session whole (kept, empty, while the link stays busy).
    plain: Option<Box<Plain>>,
}

/// A frame served from its borrowed bytes ([`ConnHandler::serve_borrowed`]).
enum Served<'a> {
    /// A console request for a `console_ref` handler: its entry, id and text.
    Request(&'a crate::registry::Entry, u64, &'a str),
    /// A text answer for a sink that borrows it, with the call's tag.
    Answer(Arc<dyn ReplySink>, u64, &'a str),
    /// A text answer for another completion (given a copy).
    Owned(Completion, &'a str),
}

thread_local! {
    /// The (empty) item list of the loop's last borrowed batch, kept for
    /// the next (no allocation per batch).
    static SERVED_ITEMS: std::cell::Cell<Vec<Served<'static>>> =
        const { std::cell::Cell::new(Vec::new()) };
}

/// An empty vector in `v`'s allocation, for the same type with other
/// lifetimes (std collects a mapped `IntoIter` in place when the layouts
/// match, as they do here).
fn recycle<'a, 'b>(mut v: Vec<Served<'a>>) -> Vec<Served<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

/// A batch of only requests and call outcomes with the outcomes' waiters,
/// moved out of the session in one swap ([`Session::swap_plain_events`]):
/// the common batch of a busy link, worked through without a [`Work`] per
/// event.
#[derive(Default)]
struct Plain {
    events: VecDeque<Event>,
    waiters: VecDeque<(u64, Completion)>,
}

impl ConnHandler {
    fn new(shared: Arc<Shared>) -> ConnHandler {
        ConnHandler {
            shared,
            link: None,
            connected: None,
            attach: None,
            admitted: None,
            spare: Vec::new(),
            plain: None,
        }
    }

    /// Continues decoding input the session held back while its output
    /// waited, as long as the transport takes the output; pauses reading
    /// otherwise. Applies the in-flight cap.
    fn after_input(&mut self, conn: &Conn, link: &Arc<Link>) {
        loop {
            let mut works = std::mem::take(&mut self.spare);
            let turn;
            let local;
            let r = {
                let mut st = lock(&link.st);
                if !link.input_check(&mut st, conn) {
                    self.spare = works;
                    return;
                }
                let now = Instant::now();
                turn = crate::clock::Turn::begin(now);
                let r = st.session.resume_input(now);
                link.drain(&mut st, &mut works);
                st.hold += 1;
                st.held_at = now;
                local = !st.session.is_stable();
                r
            };
            {
                let _held = Held::new(link, local);
                self.process(conn, &mut works);
            }
            self.spare = works;
            drop(turn);
            if let Err(e) = r {
                self.fail(link, &e.to_string());
                return;
            }
        }
    }

    fn process(&mut self, conn: &Conn, works: &mut Vec<Work>) {
        let Some((link, peer)) = &self.link else {
            return;
        };
        if !works.iter().any(|w| {
            matches!(
                w,
                Work::Event(Event::StableReady { .. } | Event::ResumeRequest { .. })
            )
        }) {
            // The common case: nothing for the connection handler itself
            // (borrowed: no reference counts per batch).
            return process_works(&self.shared, link, peer, works);
        }
        let (link, peer) = (link.clone(), peer.clone());
        let mut rest = Vec::new();
        for w in std::mem::take(works) {
            match w {
                Work::Event(Event::StableReady { session: sid }) if self.shared.server => {
                    let offered = lock(&link.st).session.stable_credentials();
                    if let Some((_, secret)) = offered.filter(|o| o.0 == sid) {
                        lock(&self.shared.stable).insert(
                            sid,
                            StableEntry {
                                link: link.clone(),
                                peer: peer.clone(),
                                secret,
                                previous: None,
                                offline_since: None,
                            },
                        );
                        self.shared
                            .stats
                            .stable_sessions
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(session = sid, peer = peer.id(), "StableIO session");
                    }
                }
                Work::Event(Event::ResumeRequest {
                    session: sid,
                    proof,
                    delivered,
                }) => {
                    // Everything after the request belongs to the resumed session.
                    process_works(&self.shared, &link, &peer, &mut rest);
                    self.resume(conn, sid, proof, delivered);
                    return;
                }
                other => rest.push(other),
            }
        }
        process_works(&self.shared, &link, &peer, &mut rest);
    }

    /// Server: a fresh connection asks to resume StableIO session `sid`.
    fn resume(&mut self, conn: &Conn, sid: u64, proof: [u8; 32], delivered: u64) {
        let Some((fresh, fresh_peer)) = self.link.clone() else {
            return;
        };
        let now = Instant::now();
        let found = lock(&self.shared.stable)
            .get(&sid)
            .map(|e| (e.link.clone(), e.peer.clone(), [Some(e.secret), e.previous]));
        let mut proved = None;
        let found = found.map(|(l, p, secrets)| {
            let fs = lock(&fresh.st);
            proved = secrets
                .into_iter()
                .flatten()
                .find(|k| fs.session.verify_resume(k, &proof));
            (l, p, proved.is_some())
        });
        // The session's next secret (rotated on every resume).
        let mut next = [0u8; SECRET_LEN];
        let fresh_secret = self.shared.rng.fill(&mut next).is_ok();
        let (old, old_peer) = match found {
            Some((l, p, true)) if l.open.load(Ordering::Acquire) && fresh_secret => (l, p),
            other => {
                let reason = match other {
                    None => "unknown or expired session",
                    Some((_, _, false)) => "wrong resume proof",
                    Some(_) if !fresh_secret => "no random secret available",
                    Some(_) => "session already ended",
                };
                tracing::warn!(
                    session = sid,
                    peer = %conn.peer_addr(),
                    reason,
                    "StableIO resume refused"
                );
                self.shared
                    .stats
                    .stable_rejected
                    .fetch_add(1, Ordering::Relaxed);
                let mut st = lock(&fresh.st);
                st.session
                    .refuse_resume("unknown or expired StableIO session", now);
                fresh.flush(&mut st);
                fresh.open.store(false, Ordering::Release);
                drop(st);
                conn.close();
                return;
            }
        };
        // Move this connection (and the input after the request) into the old session.
        let input = lock(&fresh.st).session.take_input();
        let Some(security) = conn.security_info() else {
            return; // (on_open refused connections without it)
        };
        fresh.open.store(false, Ordering::Release);
        lock(&self.shared.conns).remove(&fresh_peer.id());
        let mut works = Vec::new();
        let r = {
            let mut st = lock(&old.st);
            if let Some(prev) = st.conn.take() {
                // The old connection is not dead yet (half-open): replace it.
                prev.abort();
                st.session.link_lost("replaced by a resumed connection");
            }
            st.conn = Some(conn.clone());
            st.armed = None;
            st.shrink_armed = false;
            st.clear_backlog();
            st.paused = 0;
            old.in_flight_paused.store(false, Ordering::SeqCst);
            let r = st
                .session
                .resume_link(input, &security, delivered, next, now);
            st.security = Some(security);
            old.drain(&mut st, &mut works);
            old.flush(&mut st);
            if st.queued() > 0 && !st.busy {
                let _ = conn.wake(TOKEN_NEXT);
            }
            r
        };
        if let Some(e) = lock(&self.shared.stable).get_mut(&sid) {
            e.offline_since = None;
            e.previous = proved;
            e.secret = next;
        }
        old.links.fetch_add(1, Ordering::Relaxed);
        old.resumes.fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .stable_resumed
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            session = sid,
            peer = old_peer.id(),
            "StableIO session resumed"
        );
        self.link = Some((old.clone(), old_peer));
        self.process(conn, &mut works);
        if let Err(e) = r {
            self.fail(&old, &e.to_string());
        }
    }

    /// Serves the frames at the front of `data` that need no owned form,
    /// from their bytes where they lie (the layer's buffer): console requests
    /// for [`Registry::console_ref`] handlers (answered into the loop-local
    /// batch of answers) and text answers to calls made with
    /// [`Client::call_to`] whose sink [borrows text](ReplySink::borrows_text).
    /// Each frame is read in place ([`zs_wire::Decoder::decode_ref`]: the
    /// same checks as the session's decode). The link's lock is taken once,
    /// to check that the session would only queue these frames
    /// ([`Session::takes_borrowed_input`]), to take the answered calls out of
    /// its pending table and to hold the batch; the handlers and sinks then
    /// run in order with no lock held (they may send, call or close). Stops
    /// at the first frame it does not serve (another kind or command, an
    /// answer to another kind of call, a compressed, partial or malformed
    /// frame): that one and the rest go through the session as usual, after
    /// these. Returns the batch's hold and the bytes served (consumed from
    /// `data`), or `None` (nothing done) when the link does not take this path.
    fn serve_borrowed<'l>(
        &mut self,
        conn: &Conn,
        link: &'l Link,
        data: &mut BytesMut,
        now: Instant,
    ) -> Option<(Held<'l>, usize)> {
        let shared = &self.shared;
        if shared.options.ordered || data.is_empty() {
            return None;
        }
        // (A client's answers come as `ConsoleResponse`s, requests as `Console`.)
        let requests = shared.registry.has_borrowed();
        if !requests && !shared.borrowing_sinks.load(Ordering::Relaxed) {
            return None;
        }
        let (_, peer) = self.link.as_ref()?;
        let registry = &*shared.registry;
        let decoder = zs_wire::Decoder::new(&shared.session_cfg.wire);
        let mut items: Vec<Served<'_>> = recycle(SERVED_ITEMS.take());
        let mut at = 0;
        // The last command served and its entry: a run of requests for one
        // command (the common batch) looks its name up once.
        let mut last: Option<(&str, &crate::registry::Entry)> = None;
        {
            let mut st = lock(&link.st);
            if !(st.is_current(conn) && st.progress.is_empty() && st.session.takes_borrowed_input())
            {
                SERVED_ITEMS.set(recycle(items));
                return None;
            }
            while let Ok(Some(f)) = decoder.decode_ref(&data[at..]) {
                let item = match (f.kind(), f.is_compressed(), f.id(), f.name(), f.text()) {
                    (zs_wire::FrameKind::Console, false, Some(id), Some(cmd), Some(text)) => {
                        let entry = match last {
                            Some((name, e)) if name == cmd => e,
                            _ => match registry.borrowed_entry(cmd) {
                                Some(e) => {
                                    last = Some((cmd, e));
                                    e
                                }
                                None => break,
                            },
                        };
                        Served::Request(entry, id, text)
                    }
                    (zs_wire::FrameKind::ConsoleResponse, false, Some(id), _, Some(text)) => {
                        let borrows = |w: &Completion| matches!(w, Completion::SinkText(..));
                        match st.session.take_borrowed_answer(id, borrows) {
                            Some(Completion::SinkText(sink, tag)) => {
                                Served::Answer(sink, tag, text)
                            }
                            // (Not taken: only sinks that borrow are.)
                            Some(other) => Served::Owned(other, text),
                            None => break,
                        }
                    }
                    _ => break,
                };
                items.push(item);
                at += f.len();
            }
            if items.is_empty() {
                SERVED_ITEMS.set(recycle(items));
                return None;
            }
            st.hold += 1;
            st.held_at = now;
        }
        let held = Held::new(link, true);
        for item in items.drain(..) {
            match item {
                Served::Request(entry, id, text) => registry.serve_borrowed(entry, peer, id, text),
                Served::Answer(sink, tag, text) => sink.on_text(tag, text),
                Served::Owned(c, text) => c.complete(Ok(Reply::Text(Text::from(text)))),
            }
            #[cfg(all(test, target_os = "linux"))]
            borrowed_tests::SERVED.fetch_add(1, Ordering::Relaxed);
        }
        SERVED_ITEMS.set(recycle(items));
        bytes::Buf::advance(data, at);
        Some((held, at))
    }

    fn fail(&self, link: &Link, why: &str) {
        let conn = link.conn();
        tracing::warn!(
            conn = conn.as_ref().map(|c| c.id().0),
            reason = why,
            "disconnecting peer"
        );
        self.shared
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        {
            let mut st = lock(&link.st);
            if !st.session.is_stable() || st.session.is_dead() {
                link.open.store(false, Ordering::Release);
                // (A StableIO session tells its peer it ended: `__@close`.)
                let now = st.now();
                st.session.close(now);
                link.flush(&mut st);
            }
        }
        if let Some(c) = conn {
            c.close();
        }
    }
}

fn process_works(shared: &Arc<Shared>, link: &Arc<Link>, peer: &Peer, works: &mut Vec<Work>) {
    for w in works.drain(..) {
        match w {
            Work::Event(Event::Request(r)) => dispatch(shared, link, peer, r),
            Work::Complete(c, r) => c.complete(r),
            Work::Ready(v) => v.into_iter().for_each(|c| c.complete(Ok(()))),
            Work::Event(Event::Signal { name, code }) => {
                shared.registry.signal_received(peer, &name, code)
            }
            Work::Progress(f, acked, total) => f(acked, total),
            Work::Event(Event::PeerError { code, message }) => {
                tracing::warn!(conn = peer.id(), code, %message, "peer reported an error");
                shared.registry.peer_error(peer, code, &message);
            }
            Work::Event(Event::Closed) => {
                link.open.store(false, Ordering::Release);
                let conn = {
                    let mut st = lock(&link.st);
                    link.flush(&mut st); // what was answered so far goes first
                    st.conn.clone()
                };
                if let Some(c) = conn {
                    c.close();
                }
            }
            Work::Event(Event::StableRefused { message }) => {
                tracing::warn!(%message, "the server refused StableIO");
                let ready = lock(&link.st).take_ready();
                for c in ready {
                    c.complete(Err(Error::Config(format!(
                        "the server refused StableIO: {message}"
                    ))));
                }
            }
            Work::Event(Event::Resumed { resent }) => {
                tracing::debug!(resent, "StableIO session resumed");
                link.resumes.fetch_add(1, Ordering::Relaxed);
                shared.notify(Reconn::Up);
            }
            Work::Event(Event::BigAborted { id, cmd }) => {
                if shared.options.ordered {
                    // Chunks of the refused transfer still waiting in the
                    // ordered queue must not start it again.
                    if let Some(c) = &mut lock(&link.st).cold {
                        c.queue
                            .retain(|r| !matches!(r, Request::BigChunk { id: i, .. } if *i == id));
                    }
                }
                shared.registry.big_stream_aborted(peer, id, cmd.as_str())
            }
            // Handled by the connection handler (StableReady, ResumeRequest),
            // or by `drain` with the lock held (Established, Reply, Progress).
            Work::Event(_) => {}
        }
    }
}

/// Works through a [`Plain`] batch in order: requests to their handlers,
/// call outcomes to their waiters (as [`process_works`] does with the same
/// events one by one). Leaves both queues empty.
fn process_plain(shared: &Arc<Shared>, link: &Arc<Link>, peer: &Peer, plain: &mut Plain) {
    let Plain { events, waiters } = plain;
    for ev in events.drain(..) {
        match ev {
            Event::Request(r) => dispatch(shared, link, peer, r),
            Event::Reply { id, result } => {
                if let Some(c) = crate::session::take_waiter_from(waiters, id) {
                    c.complete(result);
                }
            }
            // (`swap_plain_events` moves only requests and call outcomes.)
            _ => {}
        }
    }
    waiters.clear();
}

fn dispatch(shared: &Arc<Shared>, link: &Arc<Link>, peer: &Peer, req: Request) {
    let pool = shared.pool.as_ref();
    if !shared.options.ordered {
        let local = crate::registry::inline::held(link.key());
        if !shared.registry.dispatch_in(peer, req, pool, false, local) {
            shared
                .stats
                .unknown_commands
                .fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    {
        let mut st = lock(&link.st);
        // Behind queued requests too: the queue may be non-empty while not
        // busy (an answer came; its TOKEN_NEXT wake runs the queue).
        if st.busy || st.queued() > 0 {
            st.cold().queue.push_back(req);
            return;
        }
        st.busy = true;
        st.in_dispatch = true;
    }
    shared.registry.dispatch(peer, req, pool, true);
    run_queue(shared, link, peer);
}

/// Ordered mode: runs queued requests while the previous one is answered.
fn run_queue(shared: &Arc<Shared>, link: &Arc<Link>, peer: &Peer) {
    loop {
        let next = {
            let mut st = lock(&link.st);
            st.in_dispatch = false;
            if st.busy {
                None
            } else {
                let n = st.cold.as_mut().and_then(|c| c.queue.pop_front());
                if n.is_some() {
                    st.busy = true;
                    st.in_dispatch = true;
                    link.relieve(&mut st);
                }
                n
            }
        };
        match next {
            Some(r) => {
                shared
                    .registry
                    .dispatch(peer, r, shared.pool.as_ref(), true);
            }
            None => return,
        }
    }
}

impl Handler for ConnHandler {
    fn on_open(&mut self, conn: &Conn) {
        let _span = tracing::debug_span!("zs.conn", id = conn.id().0).entered();
        if self.shared.server {
            let ip = conn.peer_addr().ip();
            if let Err(why) = self.shared.admit(ip) {
                let n = self
                    .shared
                    .stats
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                // Logged at warn for the 1st, 2nd, 4th, 8th... refusal: a
                // flood must not flood the log too.
                if n.is_power_of_two() {
                    tracing::warn!(peer = %conn.peer_addr(), reason = %why, refused_total = n, "connection refused");
                } else {
                    tracing::debug!(peer = %conn.peer_addr(), reason = %why, "connection refused");
                }
                conn.abort();
                return;
            }
            self.admitted = Some(ip);
        }
        let now = Instant::now();
        // The layer under us did the handshake and tells who the peer is; a
        // connection without it is refused (fail closed: a raw backend given
        // by mistake serves nothing in the clear).
        let Some(security) = conn.security_info() else {
            let e = Error::Config("the connection has no security layer (zs-core needs a secure backend such as zs_secure::SecureBackend)".into());
            tracing::warn!(peer = %conn.peer_addr(), error = %e, "connection refused");
            if let Some(tx) = self.connected.take() {
                let _ = tx.send(Err(e));
            }
            if self.attach.take().is_some() {
                self.shared.notify(Reconn::Down);
            }
            conn.abort();
            return;
        };
        let o = &self.shared.options;
        conn.set_idle_timeout(o.idle_timeout);
        if let Some(k) = o.keepalive {
            let _ = conn.set_timer(k, TOKEN_KEEPALIVE);
        }
        self.shared.stats.opened.fetch_add(1, Ordering::Relaxed);
        if let Some((link, peer)) = self.attach.take().map(|a| *a) {
            // StableIO client: a new connection for the existing session; the
            // resume request goes out at once (keys exist already).
            let mut st = lock(&link.st);
            let attached = st
                .session
                .attach()
                .and_then(|()| st.session.open_link(&security, now));
            st.security = Some(security);
            if let Err(e) = attached {
                drop(st);
                tracing::debug!(error = %e, "reconnected, but the session is over");
                conn.abort();
                // Kept so that on_close counts the connection as closed (it is
                // not the link's current connection, so nothing else happens).
                self.link = Some((link, peer));
                return;
            }
            st.conn = Some(conn.clone());
            st.armed = None;
            st.clear_backlog();
            st.paused = 0;
            link.in_flight_paused.store(false, Ordering::SeqCst);
            link.links.fetch_add(1, Ordering::Relaxed);
            link.flush(&mut st);
            drop(st);
            tracing::debug!(peer = %conn.peer_addr(), "StableIO reconnected");
            self.link = Some((link, peer));
            return;
        }
        let mut session = Session::with_config(self.shared.session_cfg.clone());
        session.set_budgets(self.shared.budgets.clone());
        if self.shared.server {
            session.serve_stable(if o.stable {
                self.shared.new_offer()
            } else {
                None
            });
        } else if self.shared.client_stable {
            let _ = session.request_stable(now);
        }
        if let Err(e) = session.open_link(&security, now) {
            tracing::warn!(peer = %conn.peer_addr(), error = %e, "cannot start a session");
            if let Some(tx) = self.connected.take() {
                let _ = tx.send(Err(e));
            }
            conn.abort();
            return;
        }
        let link = Arc::new(Link::new(conn.clone(), session, self.shared.clone()));
        lock(&link.st).security = Some(security);
        let peer = Peer::new(conn.id().0, Some(conn.peer_addr()), link.clone());
        if self.shared.server {
            lock(&self.shared.conns).insert(peer.id(), peer.clone());
        }
        link.flush(&mut lock(&link.st));
        if let Some(tx) = self.connected.take() {
            let _ = tx.send(Ok((link.clone(), peer.clone())));
        }
        tracing::debug!(peer = %conn.peer_addr(), "connection open");
        self.link = Some((link, peer));
    }

    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let Some((link, _)) = &self.link else {
            data.clear();
            return;
        };
        let link = link.clone();
        // (The connection's span only when it is recorded: made and entered
        // on every read it cost about 220 instructions, a tenth of a
        // sequential call's runtime work.)
        let _span = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| tracing::debug_span!("zs.conn", id = conn.id().0).entered());
        // Frames are decoded as slices of the transport's buffer (the layer
        // opened the records in place in it); a partial frame stays there for
        // the next bytes to be appended to.
        self.shared
            .stats
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut works = std::mem::take(&mut self.spare);
        let mut plain: Option<Box<Plain>> = None;
        // One clock read for the whole batch (statistics and session timers):
        // the loop turn's, when the backend installed one (zs_io::clock).
        let now = crate::clock::now();
        let _turn = crate::clock::Turn::begin(now);
        // Console requests for `console_ref` handlers at the front of the
        // input are served where they lie, without the lock (see `served`).
        let served = self.serve_borrowed(conn, &link, data, now);
        let (r, dead, busy, local, mut more) = {
            let mut st = lock(&link.st);
            if !st.is_current(conn) {
                data.clear();
                return; // a replaced connection's late bytes
            }
            let busy = st.quick >= BUSY_BATCHES;
            if let Some((_, n)) = &served {
                st.session.count_borrowed_input(*n);
                // The served requests' answers go before anything the
                // session sends while decoding the rest (an error for a
                // malformed frame is sent at once).
                link.take_local(&mut st);
            }
            let r = st.session.handle_input(data, now);
            if data.is_empty() && data.capacity() > KEEP_READ_BUF {
                // A large buffer (a bulk transfer) is released, not pooled.
                *data = BytesMut::new();
            }
            let dead = st.session.is_dead();
            // A busy link's batch of requests and answers moves out in one
            // swap (see `Plain`); anything else goes through `drain`.
            if busy && st.progress.is_empty() {
                let mut p = self.plain.take().unwrap_or_default();
                if st.session.swap_plain_events(&mut p.events, &mut p.waiters) {
                    plain = Some(p);
                } else {
                    self.plain = Some(p);
                }
            }
            if plain.is_none() {
                link.drain(&mut st, &mut works);
            }
            let mut more = false;
            if served.is_some() {
                // (Held since the borrowed requests: ends below.)
            } else if works.is_empty() && plain.is_none() {
                link.flush(&mut st);
                link.after_batch(&mut st, now);
                // The input checks under this lock (see below).
                more = r.is_ok() && !dead && link.input_check(&mut st, conn);
            } else {
                st.hold += 1;
                st.held_at = now;
            }
            let local = !st.session.is_stable();
            (r, dead, busy, local, more)
        };
        if let Some((held, _)) = served {
            // The rest of the batch after the borrowed requests, under the
            // same hold: one flush for all of it.
            if let Some(p) = plain.as_deref_mut() {
                if let Some((link, peer)) = &self.link {
                    process_plain(&self.shared, link, peer, p);
                }
            } else if !works.is_empty() {
                self.process(conn, &mut works);
            }
            more = held.end((r.is_ok() && !dead).then_some(conn));
        } else if let Some(p) = plain.as_deref_mut() {
            // Answers and calls made while dispatching leave in one flush,
            // under the lock that also runs the input checks.
            let held = Held::new(&link, local);
            if let Some((link, peer)) = &self.link {
                process_plain(&self.shared, link, peer, p);
            }
            more = held.end((r.is_ok() && !dead).then_some(conn));
        } else if !works.is_empty() {
            // (The same for any other batch.)
            let held = Held::new(&link, local);
            self.process(conn, &mut works);
            more = held.end((r.is_ok() && !dead).then_some(conn));
        }
        // A busy link keeps the (empty) work vector and plain batch for its
        // next batch; an idle one releases them with its other buffers.
        self.spare = if busy { works } else { Vec::new() };
        if busy && plain.is_some() {
            self.plain = plain;
        } else if !busy {
            self.plain = None;
        }
        if let Err(e) = r {
            self.fail(&link, &e.to_string());
        } else if !dead {
            // The in-flight cap and the output's back-pressure were applied
            // at the batch's end (`input_check`); input held back for the
            // output is decoded now if the output went out.
            if more {
                self.after_input(conn, &link);
            }
        } else {
            // e.g. a StableIO resume refused by the server
            let cur = self.link.as_ref().map(|(l, _)| l.clone());
            if let Some(l) = cur.filter(|l| lock(&l.st).session.is_dead()) {
                l.open.store(false, Ordering::Release);
                conn.close();
            }
        }
    }

    fn on_eof(&mut self, conn: &Conn) {
        // (A StableIO session survives an EOF unless its peer sent `__@close`
        // first: over a security layer a FIN is only a lost link.)
        conn.close();
    }

    fn on_writable(&mut self, conn: &Conn) {
        let Some((link, _)) = &self.link else {
            return;
        };
        let mut st = lock(&link.st);
        if !st.is_current(conn) {
            return;
        }
        while let Some(b) = st.cold.as_mut().and_then(|c| c.backlog.pop_front()) {
            let n = b.len();
            match conn.send(b) {
                Ok(()) => st.cold().backlog_bytes -= n,
                Err(zs_io::Error::Full(b)) => {
                    st.cold().backlog.push_front(b);
                    return;
                }
                Err(_) => {
                    st.clear_backlog();
                    return;
                }
            }
        }
        st.trim_cold();
        link.pause(&mut st, PAUSE_BACKLOG, false);
        let blocked = st.session.input_blocked();
        drop(st);
        if blocked {
            let link = link.clone();
            self.after_input(conn, &link);
        }
    }

    fn on_timer(&mut self, conn: &Conn, token: u64) {
        let Some((link, peer)) = &self.link else {
            return;
        };
        let (link, peer) = (link.clone(), peer.clone());
        if !lock(&link.st).is_current(conn) {
            return;
        }
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
                self.process(conn, &mut works);
                if let Err(e) = r {
                    self.fail(&link, &e.to_string());
                }
            }
            TOKEN_KEEPALIVE => {
                if let Some(k) = self.shared.options.keepalive {
                    let mut st = lock(&link.st);
                    if st.session.is_online() {
                        let _ = st.session.send_keepalive(Instant::now());
                        link.flush(&mut st);
                    }
                    let _ = conn.set_timer(k, TOKEN_KEEPALIVE);
                }
            }
            TOKEN_NEXT => run_queue(&self.shared, &link, &peer),
            TOKEN_SHRINK => {
                let mut st = lock(&link.st);
                if st.is_current(conn) {
                    link.shrink_due(&mut st);
                }
            }
            _ => {}
        }
    }

    fn on_close(&mut self, conn: &Conn, reason: CloseReason) {
        if let Some(ip) = self.admitted.take() {
            self.shared.release(ip);
        }
        let Some((link, peer)) = self.link.take() else {
            return;
        };
        self.shared.stats.closed.fetch_add(1, Ordering::Relaxed);
        let _span = tracing::debug_span!("zs.conn", id = conn.id().0).entered();
        match reason {
            CloseReason::IdleTimeout
            | CloseReason::Reset
            | CloseReason::Error(_)
            | CloseReason::HandlerPanicked => {
                tracing::info!(peer = %conn.peer_addr(), ?reason, "connection ended")
            }
            _ => tracing::debug!(?reason, "connection closed"),
        }
        let mut works = Vec::new();
        {
            let mut st = lock(&link.st);
            if !st.is_current(conn) {
                return; // replaced by a resumed connection
            }
            st.conn = None;
            st.clear_backlog();
            st.armed = None;
            let why = format!("{reason:?}");
            // A handler that panicked may have left the session's state half
            // done: it is not kept for a resume.
            let kept = reason != CloseReason::Shutdown
                && reason != CloseReason::HandlerPanicked
                && link.open.load(Ordering::Acquire)
                && st.session.link_lost(&why);
            if kept {
                drop(st);
                tracing::debug!(peer = peer.id(), ?reason, "StableIO session offline");
                if self.shared.server {
                    let sid = lock(&link.st).session.stable_id();
                    if let Some(sid) = sid {
                        if let Some(e) = lock(&self.shared.stable).get_mut(&sid) {
                            e.offline_since = Some(Instant::now());
                        }
                    }
                    self.shared.enforce_offline_caps();
                } else {
                    self.shared.notify(Reconn::Down);
                }
                return;
            }
            st.session.connection_lost(&why);
            link.open.store(false, Ordering::Release);
            link.drain(&mut st, &mut works);
            if let Some(c) = &mut st.cold {
                c.ready.clear();
                c.queue.clear();
            }
            st.trim_cold();
        }
        process_works(&self.shared, &link, &peer, &mut works);
        self.shared.registry.peer_closed(&peer);
        if self.shared.server {
            lock(&self.shared.conns).remove(&peer.id());
            let sid = lock(&link.st).session.stable_id();
            if let Some(sid) = sid {
                lock(&self.shared.stable).remove(&sid);
            }
        } else {
            self.shared.notify(Reconn::Stop);
        }
    }

    fn on_connect_failed(&mut self, error: zs_io::Error) {
        if self.attach.take().is_some() {
            tracing::debug!(%error, "StableIO reconnect attempt failed");
            self.shared.notify(Reconn::Down);
        }
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
    reaper: Mutex<Option<mpsc::Sender<()>>>,
    local: local::LocalHub,
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
    /// Listens on `addr` with a `backend` whose connections carry plaintext:
    /// a security layer such as `zs_secure::SecureBackend` did the handshake
    /// (its deadline and caps: `SecureConfig::handshake_timeout`,
    /// `max_handshakes`, `SecureBackend::with_max_handshakes_per_ip`), seals
    /// and opens the records, and reports who the peer is
    /// ([`zs_io::Connection::security_info`]: the suite and PSK identity in
    /// [`Event::Established`], the channel binding for StableIO resume
    /// proofs); commands come from `registry`. A connection without security
    /// info is refused with a logged reason (fail closed), so a raw backend
    /// given by mistake serves nothing in the clear. Custom protocols beside
    /// ours on the same port (first-byte sniffing) are the layer's:
    /// `zs_secure::SecureBackend::listen_with_raw`, with
    /// [`Server::start_with`].
    pub fn start(
        backend: Arc<dyn Backend>,
        registry: Registry,
        options: Options,
        addr: SocketAddr,
    ) -> Result<Server> {
        let b = backend.clone();
        Server::start_with(backend, registry, options, move |factory| {
            b.listen(addr, factory)
        })
    }

    /// [`Server::start`] with the listener made by `listen` from the
    /// server's connection handler factory (e.g.
    /// `secure.listen_with_raw(addr, factory, raw)`: custom-protocol
    /// connections go to `raw`, ours to the server). `backend` is the one
    /// whose connections the factory's handlers get (it names the server's
    /// backend).
    pub fn start_with(
        backend: Arc<dyn Backend>,
        registry: Registry,
        options: Options,
        listen: impl FnOnce(
            zs_io::HandlerFactory,
        ) -> std::result::Result<Box<dyn Listener>, zs_io::Error>,
    ) -> Result<Server> {
        let shared = Shared::new(registry, options, true);
        let s2 = shared.clone();
        let factory: zs_io::HandlerFactory =
            Arc::new(move || Box::new(ConnHandler::new(s2.clone())) as Box<dyn Handler>);
        let listener = listen(factory)?;
        tracing::info!(addr = %listener.local_addr(), backend = backend.name(), "server listening");
        let reaper = if shared.options.stable {
            let (tx, rx) = mpsc::channel::<()>();
            let s3 = shared.clone();
            let tick = (s3.options.stable_offline_timeout / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            std::thread::Builder::new()
                .name("zs-stable-reaper".into())
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(tick) {
                        s3.reap(Instant::now());
                    }
                })
                .map_err(|e| Error::Config(format!("cannot start the StableIO reaper: {e}")))?;
            Some(tx)
        } else {
            None
        };
        Ok(Server {
            shared,
            listener,
            backend,
            reaper: Mutex::new(reaper),
            local: local::LocalHub::default(),
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

    /// Connections currently open (a StableIO session waiting for its client
    /// to reconnect counts as one; see [`Server::stable_offline`]).
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

    /// StableIO sessions kept (online and offline).
    pub fn stable_sessions(&self) -> usize {
        lock(&self.shared.stable).len()
    }

    /// StableIO sessions currently without a connection.
    pub fn stable_offline(&self) -> usize {
        lock(&self.shared.stable)
            .values()
            .filter(|e| e.offline_since.is_some())
            .count()
    }

    /// Stops listening and closes every connection (idempotent); StableIO
    /// sessions end.
    pub fn shutdown(&self) {
        self.listener.shutdown();
        self.close_local();
        lock(&self.reaper).take();
        let sids: Vec<u64> = lock(&self.shared.stable).keys().copied().collect();
        for sid in sids {
            self.shared.drop_stable(sid, "the server shut down");
        }
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
    /// Connects to `addr` over a `backend` whose connections carry plaintext
    /// (a security layer such as `zs_secure::SecureBackend` under it; see
    /// [`Server::start`]); blocking, don't call from a handler. The
    /// backend's connect covers TCP and the layer's handshake
    /// (`options.connect_timeout`). `registry` serves what the server pushes.
    pub fn connect(
        backend: Arc<dyn Backend>,
        registry: Registry,
        options: Options,
        addr: SocketAddr,
    ) -> Result<Client> {
        Client::open(backend, registry, options, addr, false)
    }

    /// Like [`Client::connect`], with a **StableIO** session that survives its
    /// connection: when the connection dies the client reconnects by itself
    /// (backoff and jitter per [`Options::reconnect`]) and resumes the session
    /// (the resume proof is bound to the layer's channel binding of each new
    /// connection); records the server had not acknowledged are sent again,
    /// nothing is lost or duplicated, order is kept. Calls and sends made
    /// while offline are queued (up to [`SessionConfig::stable_max_unacked`]
    /// bytes, then [`Error::Full`]); pending calls survive reconnects and
    /// complete exactly once. If the server no longer knows the session
    /// (expired, evicted) or the client gives up, pending calls fail with
    /// [`Error::SessionLost`]. Fails with [`Error::Config`] if the server
    /// refuses StableIO. [`Client::close`] ends the session on the server at
    /// once (`__@close`).
    pub fn connect_stable(
        backend: Arc<dyn Backend>,
        registry: Registry,
        options: Options,
        addr: SocketAddr,
    ) -> Result<Client> {
        Client::open_stable(backend, registry, options, addr)
    }

    fn open_stable(
        backend: Arc<dyn Backend>,
        registry: Registry,
        options: Options,
        addr: SocketAddr,
    ) -> Result<Client> {
        let client = Client::open(backend.clone(), registry, options, addr, true)?;
        let (tx, rx) = mpsc::channel();
        *lock(&client.shared.reconnect) = Some(tx.clone());
        let (shared, link, peer) = (
            client.shared.clone(),
            client.link.clone(),
            client.peer.clone(),
        );
        std::thread::Builder::new()
            .name("zs-stable-reconnect".into())
            .spawn(move || reconnect_loop(rx, tx, backend, addr, shared, link, peer))
            .map_err(|e| Error::Config(format!("cannot start the reconnect thread: {e}")))?;
        Ok(client)
    }

    fn open(
        backend: Arc<dyn Backend>,
        registry: Registry,
        options: Options,
        addr: SocketAddr,
        stable: bool,
    ) -> Result<Client> {
        let shared = Shared::with(registry, options, false, stable);
        let (tx, rx) = mpsc::channel();
        let o = &shared.options;
        let mut h = ConnHandler::new(shared.clone());
        h.connected = Some(Box::new(tx));
        backend.connect(addr, o.connect_timeout, Box::new(h))?;
        let (link, peer) = rx
            .recv_timeout(o.connect_timeout + Duration::from_secs(5))
            .map_err(|_| Error::TimedOut)??;
        let client = Client {
            link,
            peer,
            shared,
            _backend: backend,
        };
        client
            .link
            .ready()
            .wait_timeout(client.shared.options.connect_timeout)?;
        Ok(client)
    }

    /// StableIO: whether the session currently has a working connection
    /// (false while reconnecting). Always equal to [`Client::is_connected`]
    /// for other clients.
    pub fn is_online(&self) -> bool {
        let st = lock(&self.link.st);
        st.conn.is_some() && st.session.is_online()
    }

    /// StableIO: the session id the server gave (None for other clients).
    pub fn stable_id(&self) -> Option<u64> {
        lock(&self.link.st).session.stable_id().filter(|s| *s != 0)
    }

    /// StableIO: how many times the session was resumed on a new connection.
    pub fn resumes(&self) -> u64 {
        u64::from(self.link.resumes.load(Ordering::Relaxed))
    }

    /// How many connections this client has opened (StableIO: 1 + reconnects).
    pub fn links(&self) -> u64 {
        u64::from(self.link.links.load(Ordering::Relaxed))
    }

    /// Aborts the current connection without ending the session: a StableIO
    /// client then reconnects and resumes (a test hook, and a way to move a
    /// session to a fresh connection). Other clients simply lose the connection.
    pub fn drop_link(&self) {
        self.link.drop_link();
    }

    /// The connection as a [`Peer`] (pushes, user state).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether the connection is open (StableIO: whether the session is alive,
    /// online or reconnecting).
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
        // The cheap check; a dead session refuses the call in `start_call`.
        if !self.link.open.load(Ordering::Acquire) {
            done(Err(Error::ConnectionLost(
                "the connection is closed".into(),
            )));
            return;
        }
        let t = timeout.or(self.shared.options.call_timeout);
        self.link
            .start_call(call, t, Completion::Once(Box::new(done)));
    }

    /// Starts `call` like [`call_with`](Client::call_with), reporting its outcome
    /// to `sink` with `tag`: the allocation-free form for callers with many calls
    /// in flight (the sink is shared, the tag tells the calls apart).
    ///
    /// ```
    /// use std::sync::{mpsc, Arc, Mutex};
    /// use zs_core::{Call, Client, Registry, Reply, ReplySink, Result, Server};
    /// # let backend: Arc<dyn zs_io::Backend> = Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config::default()).unwrap());
    /// # let (identity, _) = zs_crypto::ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
    /// # let client_cfg = zs_crypto::session::ClientConfig::pinned(identity.fingerprint());
    /// # let server_cfg = zs_crypto::ServerConfig::with_identity(Arc::new(identity));
    /// # let security = Arc::new(zs_crypto::ZsSecurity::new(Some(Arc::new(client_cfg)), Some(Arc::new(server_cfg))));
    /// # let backend: Arc<dyn zs_io::Backend> = Arc::new(zs_secure::SecureBackend::new(backend, security));
    /// let mut commands = Registry::new();
    /// commands.console("shout", |_, text| Ok(text.to_uppercase()));
    /// let server = Server::start(backend.clone(), commands,
    ///     zs_core::Options::default(), "127.0.0.1:0".parse().unwrap()).unwrap();
    /// let client = Client::connect(backend, Registry::new(),
    ///     zs_core::Options::client(), server.local_addr()).unwrap();
    ///
    /// struct Collect(Mutex<mpsc::Sender<(u64, String)>>);
    /// impl ReplySink for Collect {
    ///     fn on_reply(&self, tag: u64, r: Result<Reply>) {
    ///         let Ok(Reply::Text(t)) = r else { panic!("{r:?}") };
    ///         self.0.lock().unwrap().send((tag, t.as_str().to_owned())).unwrap();
    ///     }
    /// }
    /// let (tx, rx) = mpsc::channel();
    /// let sink: Arc<dyn ReplySink> = Arc::new(Collect(Mutex::new(tx)));
    /// for (tag, word) in [(1, "a"), (2, "b")] {
    ///     let call = Call::Console { cmd: "shout".into(), text: word.into() };
    ///     client.call_to(call, None, &sink, tag);
    /// }
    /// let mut got = vec![rx.recv().unwrap(), rx.recv().unwrap()];
    /// got.sort();
    /// assert_eq!(got, [(1, "A".to_string()), (2, "B".to_string())]);
    /// ```
    pub fn call_to(
        &self,
        call: Call,
        timeout: Option<Duration>,
        sink: &Arc<dyn ReplySink>,
        tag: u64,
    ) {
        if !self.link.open.load(Ordering::Acquire) {
            sink.on_reply(
                tag,
                Err(Error::ConnectionLost("the connection is closed".into())),
            );
            return;
        }
        let t = timeout.or(self.shared.options.call_timeout);
        let done = if sink.borrows_text() {
            let borrowing = &self.shared.borrowing_sinks;
            if !borrowing.load(Ordering::Relaxed) {
                borrowing.store(true, Ordering::Relaxed);
            }
            Completion::SinkText(sink.clone(), tag)
        } else {
            Completion::Sink(sink.clone(), tag)
        };
        self.link.start_call(call, t, done);
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
        let mut waiter = Some(Completion::Once(Box::new(move |r| {
            c.complete(r.and_then(data_reply))
        })));
        match st.session.big_stream_waiting(
            Text::from(cmd),
            data,
            resume_from,
            None,
            Instant::now(),
            &mut waiter,
        ) {
            Ok(id) => {
                st.progress.insert(id, Arc::new(progress));
                self.link.flush(&mut st);
            }
            Err(e) => {
                drop(st);
                if let Some(w) = waiter {
                    w.complete(Err(e));
                }
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

    /// Closes the connection (a StableIO session ends); pending calls complete
    /// with [`Error::ConnectionLost`].
    pub fn close(&self) {
        if let Some(tx) = lock(&self.shared.reconnect).take() {
            let _ = tx.send(Reconn::Stop);
        }
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
        if let Some(tx) = lock(&self.shared.reconnect).take() {
            let _ = tx.send(Reconn::Stop);
        }
        if self.link.is_open() {
            self.link.close("client dropped");
        }
    }
}

/// A StableIO client's reconnect thread: waits for the link to die, then
/// reconnects with backoff and jitter until the session resumed, the client
/// closed, or [`Reconnect::give_up`] passed.
fn reconnect_loop(
    rx: mpsc::Receiver<Reconn>,
    tx: mpsc::Sender<Reconn>,
    backend: Arc<dyn Backend>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    link: Arc<Link>,
    peer: Peer,
) {
    let policy = shared.options.reconnect;
    let mut attempt = 0u32;
    let mut down_since: Option<Instant> = None;
    let offline_tick = || {
        let mut works = Vec::new();
        {
            let mut st = lock(&link.st);
            if st.conn.is_some() {
                return;
            }
            let _ = st.session.handle_timeout(Instant::now());
            link.drain(&mut st, &mut works);
        }
        process_works(&shared, &link, &peer, &mut works);
    };
    let give_up = |since: Instant| {
        let why = format!(
            "gave up reconnecting after {:?}",
            since.elapsed().max(policy.give_up)
        );
        tracing::warn!(reason = %why, "StableIO session lost");
        let mut works = Vec::new();
        {
            let mut st = lock(&link.st);
            link.open.store(false, Ordering::Release);
            st.session.end_stable(&why);
            link.drain(&mut st, &mut works);
        }
        process_works(&shared, &link, &peer, &mut works);
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Reconn::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Reconn::Up) => {
                attempt = 0;
                down_since = None;
            }
            Ok(Reconn::Down) => {
                if !link.open.load(Ordering::Acquire) || lock(&link.st).session.is_dead() {
                    return;
                }
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= policy.give_up {
                    give_up(since);
                    return;
                }
                attempt = attempt.saturating_add(1);
                let mut b = [0u8; 4];
                let r = shared
                    .rng
                    .fill(&mut b)
                    .map_or(0.5, |_| u32::from_le_bytes(b) as f64 / u32::MAX as f64);
                let delay = policy.delay(attempt, 0.5 + 0.5 * r);
                match rx.recv_timeout(delay) {
                    Ok(Reconn::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    _ => {}
                }
                offline_tick();
                tracing::debug!(attempt, ?delay, "StableIO reconnecting");
                let mut h = ConnHandler::new(shared.clone());
                h.attach = Some(Box::new((link.clone(), peer.clone())));
                if let Err(e) = backend.connect(addr, shared.options.connect_timeout, Box::new(h)) {
                    tracing::debug!(error = %e, "StableIO reconnect attempt failed");
                    let _ = tx.send(Reconn::Down);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(since) = down_since {
                    offline_tick();
                    if since.elapsed() >= policy.give_up && lock(&link.st).conn.is_none() {
                        give_up(since);
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// Every idle session holds one `Link` (issue 13's idle-bytes goal): its
    /// rarely used maps are `LazyMap`s (one pointer each until used), and
    /// what it never uses is one boxed [`Cold`](super::Cold) part made on
    /// first use. Was 1,136 B before session 12, 872 B before session 13's
    /// cold part; 760 B on x86-64 with it, 768 B with the pending-call ring
    /// (a boxed slice and a lazy spill map: 32 B, as the hash map it
    /// replaced) and the decoder's bulk room; 760 B again with its two
    /// connection counters as `u32`s (session 14: its `Arc`'s chunk is then
    /// 784 B instead of 800).
    #[test]
    fn a_link_stays_small() {
        let n = std::mem::size_of::<super::Link>();
        assert!(n <= 760, "Link is {n} bytes");
    }

    /// Every idle session keeps its connection handler: what only some
    /// connections have (a client's connect reply, a StableIO reconnect) is
    /// boxed, and a server's StableIO offer is kept by the session only. 160 B
    /// before session 13, 96 B on x86-64 after.
    #[test]
    fn a_connection_handler_stays_small() {
        let n = std::mem::size_of::<super::ConnHandler>();
        assert!(n <= 96, "ConnHandler is {n} bytes");
    }
}

/// (Over the epoll backend: Linux only, like the other epoll tests.)
#[cfg(all(test, target_os = "linux"))]
mod borrowed_tests {
    use std::borrow::Cow;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, SuiteId, ZsSecurity};

    use super::{Client, Options, ReplySink, Server};
    use crate::{Call, Registry, Reply};

    /// Frames served from their borrowed bytes (`serve_borrowed`).
    pub(super) static SERVED: AtomicU64 = AtomicU64::new(0);

    fn pair(server: Registry) -> (Server, Client) {
        let (id, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
        let mut c = ClientConfig::pinned(id.fingerprint());
        c.suites = vec![SuiteId::Aes256Gcm];
        let provider: Arc<dyn zs_crypto::SecurityProvider> = Arc::new(ZsSecurity::new(
            Some(Arc::new(c)),
            Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
        ));
        let backend = || -> Arc<dyn zs_io::Backend> {
            let raw = zs_io_epoll::EpollBackend::new(zs_io::Config {
                loops: 1,
                ..zs_io::Config::default()
            })
            .unwrap();
            Arc::new(zs_secure::SecureBackend::new(
                Arc::new(raw),
                provider.clone(),
            ))
        };
        let server = Server::start(
            backend(),
            server,
            Options::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let client = Client::connect(
            backend(),
            Registry::new(),
            Options::client(),
            server.local_addr(),
        )
        .unwrap();
        (server, client)
    }

    /// Chains of calls through `call_to`: each answer starts the next call
    /// from the sink (on the client's loop, where the link's lock must not
    /// be held), until `left` reaches 0.
    struct Chain {
        client: Client,
        borrows: bool,
        left: AtomicUsize,
        borrowed: AtomicUsize,
        owned: AtomicUsize,
        bad: AtomicUsize,
        me: std::sync::OnceLock<Arc<dyn ReplySink>>,
    }

    struct ChainSink(std::sync::Weak<Chain>);

    impl Chain {
        fn next(&self) {
            let take = |n: usize| n.checked_sub(1);
            if self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
                .is_ok()
            {
                let call = Call::Console {
                    cmd: "e".into(),
                    text: "hello".into(),
                };
                self.client.call_to(call, None, self.me.get().unwrap(), 7);
            }
        }
    }

    impl ReplySink for ChainSink {
        fn on_reply(&self, tag: u64, r: crate::Result<Reply>) {
            let Some(c) = self.0.upgrade() else {
                return;
            };
            c.owned.fetch_add(1, Ordering::SeqCst);
            if tag != 7 || !matches!(&r, Ok(Reply::Text(t)) if t.as_str() == "hello") {
                c.bad.fetch_add(1, Ordering::SeqCst);
            }
            c.next();
        }

        fn borrows_text(&self) -> bool {
            self.0.upgrade().is_some_and(|c| c.borrows)
        }

        fn on_text(&self, tag: u64, text: &str) {
            let Some(c) = self.0.upgrade() else {
                return;
            };
            c.borrowed.fetch_add(1, Ordering::SeqCst);
            if tag != 7 || text != "hello" {
                c.bad.fetch_add(1, Ordering::SeqCst);
            }
            c.next();
        }
    }

    /// A sink that borrows text answers gets them through `on_text` (the
    /// borrowed path is taken), starts its next call from there without a
    /// deadlock, and every answer comes once; a sink that does not borrow
    /// gets every answer through `on_reply`.
    #[cfg(target_os = "linux")]
    #[test]
    fn sinks_that_borrow_get_text_answers_in_place_and_call_again() {
        let mut r = Registry::new();
        r.console_ref("e", |_, t| Ok(Cow::Borrowed(t)));
        for borrows in [true, false] {
            let (_server, client) = pair(r.clone());
            const N: usize = 3000;
            let chain = Arc::new(Chain {
                client,
                borrows,
                left: AtomicUsize::new(N),
                borrowed: AtomicUsize::new(0),
                owned: AtomicUsize::new(0),
                bad: AtomicUsize::new(0),
                me: std::sync::OnceLock::new(),
            });
            let sink: Arc<dyn ReplySink> = Arc::new(ChainSink(Arc::downgrade(&chain)));
            let _ = chain.me.set(sink);
            for _ in 0..32 {
                chain.next();
            }
            let total =
                || chain.borrowed.load(Ordering::SeqCst) + chain.owned.load(Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(20);
            while total() < N && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(total(), N, "answers");
            assert_eq!(chain.bad.load(Ordering::SeqCst), 0);
            let borrowed = chain.borrowed.load(Ordering::SeqCst);
            if borrows {
                assert!(borrowed > N / 2, "{borrowed} of {N} borrowed");
            } else {
                assert_eq!(borrowed, 0);
            }
        }
    }

    /// Pipelined calls to a `console_ref` command are served from the input
    /// buffer (the path is taken: counted), answered right, and a request
    /// for another form in the same reads still goes the owned way.
    #[cfg(target_os = "linux")]
    #[test]
    fn pipelined_console_ref_calls_take_the_borrowed_path() {
        let mut r = Registry::new();
        r.console_ref("e", |_, t| Ok(Cow::Borrowed(t)));
        r.console("o", |_, t| Ok(t.to_owned()));
        let (server, client) = pair(r);
        assert_eq!(client.call("e", "warm").wait().unwrap(), "warm");
        let before = SERVED.load(Ordering::Relaxed);
        const N: usize = 2000;
        let ok = Arc::new(AtomicUsize::new(0));
        // In waves of 100 calls, each wave's last one for the owned form
        // (a wave arrives in a read or a few).
        for i in 0..N {
            let cmd = if i % 100 == 99 { "o" } else { "e" };
            let text = format!("{i}");
            let ok2 = ok.clone();
            let call = Call::Console {
                cmd: cmd.into(),
                text: text.as_str().into(),
            };
            client.call_with(call, None, move |r| {
                if matches!(&r, Ok(Reply::Text(t)) if t.as_str() == text) {
                    ok2.fetch_add(1, Ordering::SeqCst);
                }
            });
            if i % 100 == 99 {
                let deadline = Instant::now() + Duration::from_secs(20);
                while ok.load(Ordering::SeqCst) <= i && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        assert_eq!(ok.load(Ordering::SeqCst), N);
        let served = SERVED.load(Ordering::Relaxed) - before;
        // Every `e` but those of the reads before the link counted as busy,
        // or behind an `o` in the same read, went the borrowed way.
        assert!(served > N as u64 / 2, "{served} of {N} served borrowed");
        let st = server.stats();
        let e = st.commands.iter().find(|c| c.name == "e").unwrap();
        assert_eq!(e.calls, 1 + N as u64 - N as u64 / 100);
    }
}
