//! The command registry: handlers by name for each kind, the [`Peer`] handle a
//! handler gets, and the [`Responder`] that answers a request (now or later).
//!
//! **Names are case-insensitive (ASCII)**, as in the ZServer4D seed: `Echo`,
//! `echo` and `ECHO` name the same command. Each kind (console, stream, direct
//! console, direct stream, CompleteBuffer, batch) has its own namespace, so one
//! name may serve several kinds.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use zs_wire::{DataFrame, Frame, Text};

pub use crate::body::{BigBody, CollectLimits};
use crate::error::{code, Result};
use crate::pool::WorkerPool;
use crate::session::{Reply, Request};
use crate::stats::{CommandSnapshot, CommandStats};

/// Entry points for a runtime outside zs-core (a transport that decodes its
/// own protocol into [`Request`]s, as zs-legacy does for ZServer4D clients,
/// or a test driving a [`crate::Session`] by hand). Applications do not call
/// these: zs-core's own runtimes ([`crate::Server`], [`crate::Client`],
/// local connections) do it for them. They were methods of the public
/// [`Registry`] before session 14 (issue 13: runtime internals off it).
pub mod runtime {
    use super::{Peer, Registry, Request};
    use crate::pool::WorkerPool;

    /// Runs the handler for `req` from `peer`: on the calling thread, or on
    /// `pool` for a handler registered as HPC when a pool is given. Returns
    /// false when no handler matched (an answering request has then been
    /// answered with [`code::UNKNOWN_COMMAND`](crate::code::UNKNOWN_COMMAND)).
    pub fn dispatch(
        registry: &Registry,
        peer: &Peer,
        req: Request,
        pool: Option<&WorkerPool>,
    ) -> bool {
        registry.dispatch(peer, req, pool, false)
    }

    /// The connection of `peer` ended for good: every partial BigStream body
    /// it was sending to a collecting command is dropped. Call it once, when
    /// the connection closes, without holding the connection's lock.
    pub fn connection_closed(registry: &Registry, peer: &Peer) {
        registry.peer_closed(peer)
    }
}

/// Where frames for one connection go: implemented by the runtime's connection
/// (and by test doubles). Callable from any thread.
pub trait Outbox: Send + Sync {
    /// Encrypts and sends `frame` on the connection.
    fn send_frame(&self, frame: Frame) -> Result<()>;
    /// Whether the connection is still open.
    fn is_open(&self) -> bool;
    /// Closes the connection, logging `reason`.
    fn close(&self, reason: &str);
    /// Ordered mode: the request being executed has been answered; start the next.
    fn request_done(&self) {}
    /// A request of this peer is executing: a [`Responder`] for it exists.
    /// The runtime caps these per connection. Default: nothing.
    fn request_started(&self) {}
    /// That request was answered (or its responder dropped). Default: nothing.
    fn request_finished(&self) {}
    /// Aborts the current transport connection without ending a StableIO
    /// session (which then resumes on a new one). Default: nothing.
    fn drop_link(&self) {}
    /// The server-wide state of the registry serving this connection
    /// ([`Registry::with_app_state`]). Default: none.
    fn app_state(&self) -> Option<AppState> {
        None
    }
    /// What the connection's security layer learnt in its handshake (suite,
    /// PSK identity, server key). Default: nothing (test doubles).
    fn security_info(&self) -> Option<Arc<zs_io::SecurityInfo>> {
        None
    }
}

/// A connection as seen by handlers and the server's connection map: its id, its
/// address, its user state, and sending to it (pushes) from any thread.
///
/// A clone is one reference count (the id, address, outbox and user state
/// share one allocation): every request's [`Responder`] holds one.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<PeerInner>,
}

struct PeerInner {
    id: u64,
    addr: Option<SocketAddr>,
    out: Arc<dyn Outbox>,
    /// The user state, behind a thin pointer (8 B instead of a 16-byte
    /// `Box<dyn Any>`: every idle session keeps a `PeerInner`, and its `Arc`
    /// is then 88 B, a 96-byte malloc chunk instead of 112; issue 13).
    state: Mutex<Option<Box<UserState>>>,
}

/// A registry's server-wide state (see [`Registry::with_app_state`]).
pub type AppState = Arc<dyn Any + Send + Sync>;

/// A connection's user state (see [`Peer::set_state`]).
type UserState = Box<dyn Any + Send>;

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer(#{} {:?})", self.inner.id, self.inner.addr)
    }
}

impl Peer {
    /// A peer handle over `out`.
    pub fn new(id: u64, addr: Option<SocketAddr>, out: Arc<dyn Outbox>) -> Peer {
        Peer {
            inner: Arc::new(PeerInner {
                id,
                addr,
                out,
                state: Mutex::new(None),
            }),
        }
    }

    /// The connection id (unique per backend).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The remote address, when the transport has one.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.inner.addr
    }

    /// The connection's outbox.
    fn out(&self) -> &Arc<dyn Outbox> {
        &self.inner.out
    }

    /// Server in PSK mode: the identity the client proved it holds the key
    /// of, for per-identity authorization (`None` in server-key mode, or
    /// before the handshake completed).
    pub fn psk_identity(&self) -> Option<Vec<u8>> {
        self.out().security_info()?.psk_identity.clone()
    }

    /// Who the peer authenticated as: what the connection's security layer
    /// reported after its handshake ([`zs_io::SecurityInfo`]: the provider,
    /// the negotiated suite, the PSK identity a client proved, the fingerprint
    /// of the server key). For a StableIO session, that of its latest
    /// connection. `None` before the handshake completed (or for a test
    /// double without a layer).
    pub fn security_info(&self) -> Option<Arc<zs_io::SecurityInfo>> {
        self.out().security_info()
    }

    /// Whether the connection is open. A StableIO session between two
    /// connections counts as open: what is sent to it is queued and delivered
    /// on resume.
    pub fn is_open(&self) -> bool {
        self.out().is_open()
    }

    /// Closes the connection (a StableIO session ends).
    pub fn close(&self, reason: &str) {
        self.out().close(reason)
    }

    /// Aborts the current connection without ending a StableIO session (the
    /// client reconnects and resumes it; a test hook too). For other sessions
    /// this ends the connection.
    pub fn drop_link(&self) {
        self.out().drop_link()
    }

    /// Sends any frame (advanced; prefer the typed methods).
    pub fn send_frame(&self, frame: Frame) -> Result<()> {
        self.out().send_frame(frame)
    }

    /// Pushes a direct console message (no answer).
    pub fn send_direct_console(&self, cmd: &str, text: &str) -> Result<()> {
        self.send_frame(Frame::DirectConsole {
            cmd: Text::from(cmd),
            text: Text::from(text),
        })
    }

    /// Pushes a direct stream message (no answer).
    pub fn send_direct_stream(&self, cmd: &str, data: DataFrame) -> Result<()> {
        self.send_frame(Frame::DirectStream {
            cmd: Text::from(cmd),
            data,
        })
    }

    /// Sends one raw binary message (no answer).
    pub fn send_complete_buffer(&self, cmd: &str, data: Bytes) -> Result<()> {
        self.send_frame(Frame::CompleteBuffer {
            cmd: Text::from(cmd),
            data,
        })
    }

    /// Sends a named signal with a numeric argument.
    pub fn send_signal(&self, name: &str, code: u64) -> Result<()> {
        self.send_frame(Frame::Signal {
            name: Text::from(name),
            code,
        })
    }

    /// Replaces this connection's user state.
    pub fn set_state<T: Any + Send>(&self, value: T) {
        *self.inner.state.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Box::new(Box::new(value)));
    }

    /// Runs `f` on this connection's user state of type `T`, creating it with
    /// `T::default()` when absent (or of another type).
    pub fn with_state<T: Any + Send + Default, R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut g = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if !g.as_deref().is_some_and(|b| (**b).is::<T>()) {
            *g = Some(Box::new(Box::new(T::default())));
        }
        let v = g
            .as_deref_mut()
            .and_then(|b| (**b).downcast_mut::<T>())
            .expect("state of type T was just ensured");
        f(v)
    }

    /// The server-wide state of type `T` that the registry serving this
    /// connection was given with [`Registry::with_app_state`] (one value shared by
    /// every connection; unlike [`Peer::state`], which is this connection's
    /// own). `None` if the registry has none, or of another type.
    pub fn app_state<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.out().app_state()?.downcast::<T>().ok()
    }

    /// A copy of this connection's user state of type `T`, if set.
    pub fn state<T: Any + Send + Clone>(&self) -> Option<T> {
        let g = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        g.as_deref()
            .and_then(|b| (**b).downcast_ref::<T>())
            .cloned()
    }
}

/// A handler's failure, answered to the caller as an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Error code (see [`code`]); default [`code::HANDLER_FAILED`].
    pub code: u32,
    /// Message for the caller.
    pub message: String,
}

impl HandlerError {
    /// An error with a specific code.
    pub fn new(code: u32, message: impl Into<String>) -> HandlerError {
        HandlerError {
            code,
            message: message.into(),
        }
    }
}

impl From<&str> for HandlerError {
    fn from(m: &str) -> Self {
        HandlerError::new(code::HANDLER_FAILED, m)
    }
}

impl From<String> for HandlerError {
    fn from(m: String) -> Self {
        HandlerError::new(code::HANDLER_FAILED, m)
    }
}

/// Answers one request, now or later, from any thread. Dropping it unanswered
/// answers [`code::HANDLER_FAILED`] so the caller never hangs.
///
/// Answered while its handler runs on the event loop (the common case), it
/// is a loop-local responder: the answer joins the batch's output without
/// a lock or an in-flight count (`registry::inline`). Kept by the handler for later,
/// it takes the shared path: counted in flight, sent under the connection's
/// lock from whatever thread answers.
pub struct Responder {
    id: u64,
    peer: Peer,
    stats: Arc<CommandStats>,
    started: Instant,
    /// Non-zero while the handler that got it may still be running inline
    /// (see `inline`).
    ticket: u64,
    /// The runtime holds this connection's batch: an inline answer may wait
    /// in the loop's local buffer.
    local: bool,
    ordered: bool,
    done: bool,
}

/// Loop-local answers: what lets a handler that answers before it returns
/// skip the shared path (no in-flight count, no lock per answer).
///
/// The dispatcher gives each responder it hands to an inline handler a
/// ticket unique in the process and marks it current on its thread while
/// the handler runs. A responder finished while its ticket is current was
/// answered inline: it is not counted in flight, and when the runtime holds
/// the connection's batch ([`hold`]) its answer is encoded at once into this
/// thread's local buffer, which the runtime hands to the session as one
/// piece under the lock it takes anyway at the end of the batch (and before
/// anything else it sends on that connection, so the order of frames is
/// kept). A responder finished after its handler returned (kept, moved to
/// another thread) was counted in flight when the handler returned and
/// answers through [`Outbox::send_frame`]; one answered on another thread
/// before its handler even returned is counted down first and up after (the
/// count is signed, so the order does not matter).
pub(crate) mod inline {
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::BytesMut;
    use zs_wire::{Encoder, Frame};

    /// Threads that issued tickets (the high half of a ticket).
    static THREADS: AtomicU64 = AtomicU64::new(0);

    struct Local {
        /// The encoder of the held connection (its endpoint's wire settings).
        encoder: Option<Encoder>,
        /// Answers encoded, waiting for the end of the batch.
        buf: BytesMut,
    }

    /// Whether the responder of the handler running inline answered.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Answered {
        No,
        /// Answered, its statistics recorded.
        Yes,
        /// Answered within the turn while a batch of statistics is held:
        /// its payload bytes and whether it was an error, left for the
        /// dispatcher to sum with the request in one record.
        Left {
            bytes: usize,
            error: bool,
        },
    }

    thread_local! {
        /// The ticket of the handler running inline on this thread (0: none),
        /// and whether its responder answered.
        static CURRENT: Cell<(u64, Answered)> = const { Cell::new((0, Answered::No)) };
        /// The last ticket issued on this thread.
        static LAST: Cell<u64> = const { Cell::new(0) };
        /// The connection whose batch this thread holds with local answers
        /// allowed (0: none).
        static HELD: Cell<usize> = const { Cell::new(0) };
        /// The connection whose answers wait in [`LOCAL`] (0: none).
        static WAITING: Cell<usize> = const { Cell::new(0) };
        static LOCAL: RefCell<Local> = RefCell::new(Local { encoder: None, buf: BytesMut::new() });
    }

    /// A fresh ticket, made current; returns it and the ticket it replaced
    /// (to give back to [`end`]).
    pub(crate) fn begin() -> (u64, (u64, Answered)) {
        let mut t = LAST.get();
        if t & 0xFFFF_FFFF == 0xFFFF_FFFF || t == 0 {
            t = (THREADS.fetch_add(1, Ordering::Relaxed) + 1) << 32;
        }
        t += 1;
        LAST.set(t);
        (t, CURRENT.replace((t, Answered::No)))
    }

    /// The inline run of `ticket` ended: whether its responder answered.
    pub(crate) fn end(ticket: u64, previous: (u64, Answered)) -> Answered {
        let (t, answered) = CURRENT.replace(previous);
        if t == ticket {
            answered
        } else {
            Answered::No
        }
    }

    /// Called as a responder finishes: whether it answers inline (its
    /// ticket is current on this thread); marks it answered.
    pub(crate) fn answering(ticket: u64) -> bool {
        let (t, _) = CURRENT.get();
        if ticket != 0 && t == ticket {
            CURRENT.set((t, Answered::Yes));
            true
        } else {
            false
        }
    }

    /// The responder of `ticket` (answering inline, see [`answering`])
    /// leaves its statistics to the dispatcher.
    pub(crate) fn leave(ticket: u64, bytes: usize, error: bool) {
        CURRENT.set((ticket, Answered::Left { bytes, error }));
    }

    /// Encodes `frame` for connection `key` into the local buffer. `None`
    /// when this thread does not hold that connection's batch (or holds
    /// another connection's answers): the caller sends it the shared way.
    pub(crate) fn encode(key: usize, frame: &Frame) -> Option<Result<(), zs_wire::WireError>> {
        encode_with(key, |e, buf| e.encode(frame, buf))
    }

    /// [`encode`] of the answer `ConsoleResponse { id, text }` from its
    /// parts (no [`Frame`] built for it).
    pub(crate) fn encode_text_answer(
        key: usize,
        id: u64,
        text: &str,
    ) -> Option<Result<(), zs_wire::WireError>> {
        encode_with(key, |e, buf| e.encode_console_response(id, text, buf))
    }

    fn encode_with(
        key: usize,
        put: impl FnOnce(&mut Encoder, &mut BytesMut) -> Result<(), zs_wire::WireError>,
    ) -> Option<Result<(), zs_wire::WireError>> {
        if HELD.get() != key || (WAITING.get() != key && WAITING.get() != 0) {
            return None;
        }
        LOCAL.with_borrow_mut(|l| {
            let Local { encoder, buf } = l;
            let r = put(encoder.as_mut()?, buf);
            if !buf.is_empty() {
                WAITING.set(key);
            }
            Some(r)
        })
    }

    /// Hands the answers encoded for connection `key` (whole frames, in
    /// order) to `send`, once.
    pub(crate) fn take(key: usize, send: impl FnOnce(&mut BytesMut)) {
        if WAITING.get() != key {
            return;
        }
        WAITING.set(0);
        LOCAL.with_borrow_mut(|l| {
            send(&mut l.buf);
            l.buf.clear();
        })
    }

    /// Whether this thread holds the batch of connection `key` with local
    /// answers allowed.
    pub(crate) fn held(key: usize) -> bool {
        key != 0 && HELD.get() == key
    }

    /// This thread holds the batch of connection `key` from now on (0: none,
    /// or local answers not allowed), whose frames are encoded with
    /// `wire`; returns what it held before (to give back to [`release`]).
    pub(crate) fn hold(key: usize, wire: &zs_wire::Config) -> usize {
        if key != 0 {
            LOCAL.with_borrow_mut(|l| {
                if l.encoder.as_ref().is_none_or(|e| e.config() != wire) {
                    l.encoder = Some(Encoder::new(*wire));
                }
            });
        }
        HELD.replace(key)
    }

    /// Gives back what [`hold`] returned.
    pub(crate) fn release(previous: usize) {
        HELD.set(previous);
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Responder(#{} on {:?})", self.id, self.peer)
    }
}

impl Responder {
    /// The request id being answered.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The connection the request came from.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether the connection is still open (an answer can still be delivered).
    pub fn is_connected(&self) -> bool {
        self.peer.is_open()
    }

    /// Answers with text (console requests). [`Error::ConnectionLost`](crate::Error::ConnectionLost) if the
    /// connection is gone.
    pub fn reply_text(self, text: impl Into<Text>) -> Result<()> {
        self.reply(Ok(Reply::Text(text.into())))
    }

    /// Answers with values (stream and batch requests).
    pub fn reply_data(self, data: DataFrame) -> Result<()> {
        self.reply(Ok(Reply::Data(data)))
    }

    /// Answers with an error.
    pub fn reply_error(self, code: u32, message: impl Into<String>) -> Result<()> {
        self.reply(Err(HandlerError::new(code, message)))
    }

    /// Answers with `result`.
    pub fn reply(mut self, result: std::result::Result<Reply, HandlerError>) -> Result<()> {
        self.finish(result)
    }

    fn finish(&mut self, result: std::result::Result<Reply, HandlerError>) -> Result<()> {
        self.done = true;
        let (len, err) = match &result {
            Ok(r) => (r.payload_len(), false),
            Err(e) => (e.message.len(), true),
        };
        // Answered within the turn it was dispatched in (an inline answer):
        // the turn's clock gives the same instant, so no subtraction.
        let now = crate::clock::now();
        let latency = if now == self.started {
            std::time::Duration::ZERO
        } else {
            now.saturating_duration_since(self.started)
        };
        let inline = inline::answering(self.ticket);
        if inline && latency.is_zero() && crate::stats::batch::active() {
            // Summed by the dispatcher with the request, in the batch's
            // sums (published before the batch's output, this answer
            // included, leaves).
            inline::leave(self.ticket, len, err);
        } else {
            self.stats.record_out(len, err, latency);
        }
        let id = self.id;
        let local = inline && self.local;
        // A text answer given inline is encoded from its parts (the common
        // answer: no `Frame` built for it).
        let text = match (&result, local) {
            (Ok(Reply::Text(t)), true) => inline::encode_text_answer(conn_key(&self.peer), id, t),
            _ => None,
        };
        let r = match text {
            Some(r) => r.map_err(crate::Error::from),
            None => {
                let frame = Reply::frame(id, result.map_err(|e| (e.code, Text::from(e.message))));
                match local {
                    // Encoded now; the batch's end hands it to the session,
                    // under the lock taken then anyway.
                    true => inline::encode(conn_key(&self.peer), &frame),
                    false => None,
                }
                .map(|r| r.map_err(crate::Error::from))
                // Fails with ConnectionLost when the connection is gone (one lock).
                .unwrap_or_else(|| self.peer.send_frame(frame))
            }
        };
        if !inline {
            self.peer.out().request_finished();
        }
        if self.ordered {
            self.peer.out().request_done();
        }
        r
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.finish(Err(HandlerError::new(
                code::HANDLER_FAILED,
                "the handler dropped its responder without answering",
            )));
        }
    }
}

/// The internal handler wrappers get the [`Request`] the session built from
/// the decoded frame, moved (no other shape of it exists on the way) and
/// take its payload out.
type Answering = Arc<dyn Fn(&Peer, Request, Responder) + Send + Sync>;
type OneWay = Arc<dyn Fn(&Peer, Request) + Send + Sync>;

/// The text of a console request or message.
#[inline(always)]
fn text_of(req: Request) -> Option<Text> {
    match req {
        Request::Console { text, .. } | Request::DirectConsole { text, .. } => Some(text),
        _ => None,
    }
}

/// The values of a stream request or message.
#[inline(always)]
fn data_of(req: Request) -> Option<DataFrame> {
    match req {
        Request::Stream { data, .. } | Request::DirectStream { data, .. } => Some(data),
        _ => None,
    }
}

type Chunks = Arc<
    dyn Fn(&Peer, &BigChunk) -> std::result::Result<Option<DataFrame>, HandlerError> + Send + Sync,
>;

/// One chunk of a BigStream as its handler sees it. Chunks arrive in order; a
/// resumed transfer starts at the sender's resume offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigChunk {
    /// Where `data` starts in the whole payload.
    pub offset: u64,
    /// Size of the whole payload.
    pub total: u64,
    /// Final chunk: the handler's answer completes the sender's call.
    pub last: bool,
    /// The bytes.
    pub data: Bytes,
}

type Collect = Arc<Collector>;

type BodyFn = Box<
    dyn Fn(&Peer, BigBody) -> std::result::Result<Option<DataFrame>, HandlerError> + Send + Sync,
>;

/// A collecting BigStream command: its handler, its limits and the bodies being
/// received, by connection and transfer id.
struct Collector {
    limits: CollectLimits,
    open: Mutex<Transfers>,
    f: BodyFn,
}

/// Identifies a connection while a transfer of it is open: the address of its
/// [`Outbox`] (kept alive by the [`Peer`] stored with the transfer, so it cannot
/// be reused meanwhile). Unlike [`Peer::id`] it is unique across backends and
/// servers sharing one registry.
type ConnKey = usize;

/// A transfer: its connection and its id.
type Key = (ConnKey, u64);

fn conn_key(peer: &Peer) -> ConnKey {
    Arc::as_ptr(peer.out()) as *const () as usize
}

#[derive(Default)]
struct Transfers {
    map: HashMap<Key, Transfer>,
    /// The last idle sweep.
    swept: Option<Instant>,
}

struct Transfer {
    peer: Peer,
    body: crate::body::Assembly,
    touched: Instant,
}

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Transfers> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One chunk of transfer `id` from `peer` (the session delivers them in
    /// order; a chunk that does not continue what is stored is refused all the
    /// same and its transfer dropped).
    fn chunk(
        &self,
        peer: &Peer,
        id: u64,
        chunk: &BigChunk,
    ) -> std::result::Result<Option<DataFrame>, HandlerError> {
        let now = Instant::now();
        self.sweep(now);
        let key = (conn_key(peer), id);
        // The transfer leaves the map while its chunk is stored, so the lock is
        // not held for disk writes; every error path below drops it (memory,
        // file, descriptor and quota at once).
        let stored = self.lock().map.remove(&key);
        let mut t = match stored {
            Some(t) if t.body.len() == chunk.offset && t.body.total() == chunk.total => t,
            Some(t) if chunk.offset != 0 => {
                let m = format!(
                    "BigStream chunk at offset {} of {} does not continue the {} of {} bytes \
                     stored: transfer dropped",
                    chunk.offset,
                    chunk.total,
                    t.body.len(),
                    t.body.total()
                );
                drop(t);
                return Err(HandlerError::new(code::BAD_REQUEST, m));
            }
            // A new transfer (a stale one under the same id starts over).
            stale => {
                drop(stale);
                let conn = key.0;
                let open = self.lock().map.keys().filter(|k| k.0 == conn).count();
                if open >= self.limits.max_transfers_per_peer {
                    return Err(HandlerError::new(
                        code::TOO_MANY,
                        format!(
                            "this connection is sending {open} BigStreams to collect already \
                             (max_transfers_per_peer)"
                        ),
                    ));
                }
                Transfer {
                    peer: peer.clone(),
                    body: self.start(chunk)?,
                    touched: now,
                }
            }
        };
        t.body.push(&chunk.data).map_err(|e| {
            HandlerError::new(
                code::HANDLER_FAILED,
                format!("cannot store the stream: {e}"),
            )
        })?;
        if !chunk.last {
            t.touched = now;
            // A connection that ended meanwhile keeps nothing.
            if peer.is_open() {
                self.lock().map.insert(key, t);
            }
            return Ok(None);
        }
        let body = t.body.finish().map_err(|e| {
            HandlerError::new(
                code::HANDLER_FAILED,
                format!("cannot store the stream: {e}"),
            )
        })?;
        (self.f)(peer, body)
    }

    /// Checks the first chunk of a transfer and makes room for its body.
    fn start(&self, chunk: &BigChunk) -> std::result::Result<crate::body::Assembly, HandlerError> {
        if chunk.total > self.limits.max_size {
            return Err(HandlerError::new(
                code::TOO_LARGE,
                format!(
                    "BigStream of {} bytes exceeds the receiver limit of {} bytes",
                    chunk.total, self.limits.max_size
                ),
            ));
        }
        if chunk.offset != 0 {
            return Err(HandlerError::new(
                code::BAD_REQUEST,
                "this command collects whole streams: it cannot resume from an offset",
            ));
        }
        crate::body::Assembly::new(chunk.total, &self.limits)
    }

    /// Drops transfer `id` of `peer`, if open.
    fn abort(&self, peer: &Peer, id: u64) -> bool {
        let t = self.lock().map.remove(&(conn_key(peer), id));
        t.is_some()
    }

    /// Drops every transfer of `peer`; returns how many.
    fn close_peer(&self, peer: &Peer) -> usize {
        let conn = conn_key(peer);
        let gone: Vec<Transfer> = {
            let mut open = self.lock();
            let keys: Vec<Key> = open.map.keys().filter(|k| k.0 == conn).copied().collect();
            keys.iter().filter_map(|k| open.map.remove(k)).collect()
        };
        gone.len()
    }

    /// Drops transfers idle for [`CollectLimits::idle_timeout`] and those of
    /// connections that are no longer open. Runs at most once per second (or
    /// twice per `idle_timeout` when that is shorter), on any chunk of the
    /// command. Connections are asked whether they are open outside the lock.
    fn sweep(&self, now: Instant) {
        let every = (self.limits.idle_timeout / 2).min(Duration::from_secs(1));
        let idle = self.limits.idle_timeout;
        let (idle_gone, others): (Vec<Transfer>, Vec<(Key, Peer)>) = {
            let mut open = self.lock();
            if open
                .swept
                .is_some_and(|t| now.saturating_duration_since(t) < every)
            {
                return;
            }
            open.swept = Some(now);
            let expired: Vec<Key> = open
                .map
                .iter()
                .filter(|(_, t)| now.saturating_duration_since(t.touched) >= idle)
                .map(|(k, _)| *k)
                .collect();
            let gone = expired.iter().filter_map(|k| open.map.remove(k)).collect();
            let others = open.map.iter().map(|(k, t)| (*k, t.peer.clone())).collect();
            (gone, others)
        };
        if !idle_gone.is_empty() {
            tracing::debug!(
                transfers = idle_gone.len(),
                "idle BigStream transfers dropped"
            );
        }
        drop(idle_gone);
        let closed: Vec<Key> = others
            .into_iter()
            .filter(|(_, p)| !p.is_open())
            .map(|(k, _)| k)
            .collect();
        if !closed.is_empty() {
            let gone: Vec<Transfer> = {
                let mut open = self.lock();
                closed.iter().filter_map(|k| open.map.remove(k)).collect()
            };
            drop(gone);
        }
    }
}

#[derive(Clone)]
enum Run {
    Answering(Answering),
    OneWay(OneWay),
    Chunks(Chunks),
    Collect(Collect),
}

#[derive(Clone)]
pub(crate) struct Entry {
    run: Run,
    hpc: bool,
    stats: Arc<CommandStats>,
    /// A [`Registry::console_ref`] handler: the runtime may call it with the
    /// request's text where it lies in the input buffer (`run` wraps the
    /// same handler for requests taken the owned way).
    borrowed: Option<RefFn>,
}

/// A [`Registry::console_ref`] handler.
type RefFn = Arc<
    dyn for<'a> Fn(&Peer, &'a str) -> std::result::Result<Cow<'a, str>, HandlerError> + Send + Sync,
>;

const KINDS: [&str; 7] = [
    "console",
    "stream",
    "direct-console",
    "direct-stream",
    "complete-buffer",
    "batch",
    "big-stream",
];
const CONSOLE: usize = 0;
const STREAM: usize = 1;
const DIRECT_CONSOLE: usize = 2;
const DIRECT_STREAM: usize = 3;
const COMPLETE_BUFFER: usize = 4;
const BATCH: usize = 5;
const BIG_STREAM: usize = 6;

fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Command handlers by kind and (case-insensitive) name. Build it, then hand it to
/// a server or client (it is shared read-only afterwards).
///
/// Handler forms: plain closures returning the answer (run on the connection's
/// event loop; must not block), `*_delayed` closures that get a [`Responder`] to
/// answer later from anywhere, and `*_hpc` closures run on the worker pool.
#[derive(Clone, Default)]
pub struct Registry {
    maps: [NameMap<Entry>; 7],
    signals: NameMap<SignalFn>,
    peer_error: Option<PeerErrorFn>,
    /// Requests answered `BUSY` because the HPC queue was full.
    busy: Arc<std::sync::atomic::AtomicU64>,
    /// A [`Registry::console_ref`] handler was registered (the runtime then
    /// looks for requests it can serve from their borrowed bytes).
    borrowed: bool,
    /// The server-wide state ([`Registry::with_app_state`]).
    state: Option<AppState>,
}

/// Handlers by folded name. Keys are only inserted by the application, so a
/// fast non-keyed hash is safe (peers only look names up).
type NameMap<V> = HashMap<String, V, std::hash::BuildHasherDefault<crate::session::IdHasher>>;

type SignalFn = Arc<dyn Fn(&Peer, u64) + Send + Sync>;
type PeerErrorFn = Arc<dyn Fn(&Peer, u32, &str) + Send + Sync>;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_map();
        for (k, m) in KINDS.iter().zip(&self.maps) {
            let mut names: Vec<&String> = m.keys().collect();
            names.sort();
            l.entry(k, &names);
        }
        l.finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Gives every handler of this registry one shared value (like axum's
    /// `with_state`): a database handle, configuration, counters. Handlers
    /// read it with [`Peer::app_state`]; it is kept in one `Arc` for the
    /// registry and its clones (replacing any earlier state). Per-connection
    /// state is [`Peer::set_state`] instead.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use zs_core::Registry;
    ///
    /// struct App {
    ///     greeting: String,
    ///     hits: AtomicU64,
    /// }
    ///
    /// let mut r = Registry::new();
    /// r.with_app_state(App { greeting: "hello".into(), hits: AtomicU64::new(0) })
    ///     .console("greet", |peer, name| {
    ///         let app = peer.app_state::<App>().ok_or("no state")?;
    ///         app.hits.fetch_add(1, Ordering::Relaxed);
    ///         Ok(format!("{} {name}", app.greeting))
    ///     });
    /// assert_eq!(r.app_state::<App>().unwrap().greeting, "hello");
    /// ```
    pub fn with_app_state<T: Any + Send + Sync>(&mut self, state: T) -> &mut Registry {
        self.state = Some(Arc::new(state));
        self
    }

    /// The server-wide state of type `T` ([`Registry::with_app_state`]), if set.
    pub fn app_state<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.state.clone()?.downcast::<T>().ok()
    }

    /// The server-wide state, untyped (for [`Outbox::app_state`] in runtimes
    /// outside this crate).
    pub fn app_state_any(&self) -> Option<AppState> {
        self.state.clone()
    }

    fn insert(&mut self, kind: usize, name: &str, run: Run, hpc: bool) -> &mut Registry {
        self.maps[kind].insert(
            fold(name),
            Entry {
                run,
                hpc,
                stats: Arc::new(CommandStats::default()),
                borrowed: None,
            },
        );
        self
    }

    fn answering<F>(&mut self, kind: usize, name: &str, hpc: bool, f: F) -> &mut Registry
    where
        F: Fn(&Peer, Request, Responder) + Send + Sync + 'static,
    {
        self.insert(kind, name, Run::Answering(Arc::new(f)), hpc)
    }

    /// A console command: text in, text out, answered on the event loop.
    pub fn console<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &str) -> std::result::Result<String, HandlerError> + Send + Sync + 'static,
    {
        self.answering(CONSOLE, name, false, move |p, pl, r| {
            if let Some(t) = text_of(pl) {
                let _ = r.reply(f(p, t.as_str()).map(|s| Reply::Text(Text::from(s))));
            }
        })
    }

    /// A console command answered on the event loop from the request's text
    /// as it lies in the connection's input buffer: `&str` in, and out a
    /// [`Cow`] that may borrow from it (an answer that is the request's text
    /// or a part of it, or a `&'static str`, costs no owned value) or own a
    /// new `String`.
    ///
    /// On a connection without StableIO, outside ordered mode, the runtime
    /// serves a run of such requests at the front of each read while the
    /// frames still lie in the buffer the security layer opened them in: no
    /// `Frame`, `Request`, `Text` or reference count per request, and the
    /// answer encoded at once into the loop's batch of answers. Anywhere else
    /// (StableIO, ordered mode, a request behind another kind of frame, a
    /// compressed frame) the same handler gets the request's owned text, so
    /// it behaves the same on every path. No lock of the connection is held
    /// while it runs: it may send, call or close on this or another
    /// connection. It must not block (it runs on the event loop).
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use zs_core::{HandlerError, Registry};
    /// let mut commands = Registry::new();
    /// // An echo: the answer borrows the request's bytes.
    /// commands.console_ref("echo-ref", |_, text| Ok(Cow::Borrowed(text)));
    /// // A computed answer, and an error.
    /// commands.console_ref("upper", |_, text| {
    ///     if text.is_empty() {
    ///         return Err(HandlerError::from("nothing to shout"));
    ///     }
    ///     Ok(Cow::Owned(text.to_uppercase()))
    /// });
    /// ```
    pub fn console_ref<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: for<'a> Fn(&Peer, &'a str) -> std::result::Result<Cow<'a, str>, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        let f: RefFn = Arc::new(f);
        let owned = f.clone();
        self.answering(CONSOLE, name, false, move |p, pl, r| {
            if let Some(t) = text_of(pl) {
                let answer = match owned(p, t.as_str()) {
                    // The request's own text given back: its `Text` again.
                    Ok(Cow::Borrowed(a)) if std::ptr::eq(a, t.as_str()) => Ok(t.clone()),
                    Ok(a) => Ok(Text::from(a.as_ref())),
                    Err(e) => Err(e),
                };
                let _ = r.reply(answer.map(Reply::Text));
            }
        });
        if let Some(e) = self.maps[CONSOLE].get_mut(&fold(name)) {
            e.borrowed = Some(f);
        }
        self.borrowed = true;
        self
    }

    /// Whether a [`Registry::console_ref`] handler is registered.
    pub(crate) fn has_borrowed(&self) -> bool {
        self.borrowed
    }

    /// The entry of console command `cmd` if it has a
    /// [`Registry::console_ref`] handler run on the event loop (not on the
    /// HPC pool), for [`Registry::serve_borrowed`]; `None` for any other
    /// command, which the caller then takes the owned way
    /// ([`Registry::dispatch_in`]).
    pub(crate) fn borrowed_entry(&self, cmd: &str) -> Option<&Entry> {
        let map = &self.maps[CONSOLE];
        let entry = if cmd.bytes().any(|b| b.is_ascii_uppercase()) {
            map.get(&fold(cmd))
        } else {
            map.get(cmd)
        }?;
        (entry.borrowed.is_some() && !entry.hpc).then_some(entry)
    }

    /// Serves console request `id` with `text` borrowed from the input
    /// buffer by `entry`'s [`Registry::console_ref`] handler (from
    /// [`Registry::borrowed_entry`]): runs it and encodes its answer into
    /// this thread's batch of answers for the peer's connection (the runtime
    /// holds its batch), or sends it the shared way if it does not.
    pub(crate) fn serve_borrowed(&self, entry: &Entry, peer: &Peer, id: u64, text: &str) {
        let Some(f) = &entry.borrowed else {
            return;
        };
        let key = conn_key(peer);
        let answer = f(peer, text);
        let out = match &answer {
            Ok(a) => (a.len(), false),
            Err(e) => (e.message.len(), true),
        };
        let sent = match &answer {
            Ok(a) => inline::encode_text_answer(key, id, a),
            Err(_) => None,
        };
        let frame = match (answer, sent) {
            (_, Some(Ok(()))) => None,
            // (An answer over the wire limits: the caller gets an error
            // instead of nothing.)
            (_, Some(Err(e))) => Some(Frame::Error {
                id,
                code: code::HANDLER_FAILED,
                message: Text::from(format!("the answer was not sent: {e}")),
            }),
            // (Not held by this thread: the shared way.)
            (Ok(a), None) => Some(Frame::ConsoleResponse {
                id,
                text: Text::from(a.as_ref()),
            }),
            (Err(e), None) => Some(Frame::Error {
                id,
                code: e.code,
                message: Text::from(e.message),
            }),
        };
        if let Some(frame) = frame {
            if !matches!(inline::encode(key, &frame), Some(Ok(()))) {
                let _ = peer.send_frame(frame);
            }
        }
        // Answered within the turn: 0 µs, summed with the request while the
        // loop holds a batch of statistics.
        if crate::stats::batch::active() {
            crate::stats::batch::record(&entry.stats, text.len(), Some(out));
        } else {
            entry.stats.record_in(text.len());
            entry.stats.record_out(out.0, out.1, Duration::ZERO);
        }
    }

    /// A console command run on the HPC worker pool (may block).
    pub fn console_hpc<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &str) -> std::result::Result<String, HandlerError> + Send + Sync + 'static,
    {
        self.console(name, f);
        if let Some(e) = self.maps[CONSOLE].get_mut(&fold(name)) {
            e.hpc = true;
        }
        self
    }

    /// A console command that answers through its [`Responder`], now or later.
    pub fn console_delayed<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, Text, Responder) + Send + Sync + 'static,
    {
        self.answering(CONSOLE, name, false, move |p, pl, r| {
            if let Some(t) = text_of(pl) {
                f(p, t, r)
            }
        })
    }

    /// An `async` console command. The future runs on the HPC worker pool (polled
    /// there whenever it is woken; any runtime-agnostic future works, e.g. a
    /// [`CallFuture`](crate::CallFuture) to another server) and its output is
    /// the answer.
    pub fn console_async<F, Fut>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(Peer, String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<String, HandlerError>>
            + Send
            + 'static,
    {
        self.answering(CONSOLE, name, true, move |p, pl, r| {
            if let Some(t) = text_of(pl) {
                let fut = f(p.clone(), t.as_str().to_owned());
                crate::pool::spawn_on_current(async move {
                    let _ = r.reply(fut.await.map(|s| Reply::Text(Text::from(s))));
                });
            }
        })
    }

    /// An `async` stream command (see [`Registry::console_async`]).
    pub fn stream_async<F, Fut>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(Peer, DataFrame) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<DataFrame, HandlerError>>
            + Send
            + 'static,
    {
        self.answering(STREAM, name, true, move |p, pl, r| {
            if let Some(d) = data_of(pl) {
                let fut = f(p.clone(), d);
                crate::pool::spawn_on_current(async move {
                    let _ = r.reply(fut.await.map(Reply::Data));
                });
            }
        })
    }

    /// A stream command: values in, values out, answered on the event loop.
    pub fn stream<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &DataFrame) -> std::result::Result<DataFrame, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.answering(STREAM, name, false, move |p, pl, r| {
            if let Some(d) = data_of(pl) {
                let _ = r.reply(f(p, &d).map(Reply::Data));
            }
        })
    }

    /// A stream command run on the HPC worker pool (may block).
    pub fn stream_hpc<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &DataFrame) -> std::result::Result<DataFrame, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.stream(name, f);
        if let Some(e) = self.maps[STREAM].get_mut(&fold(name)) {
            e.hpc = true;
        }
        self
    }

    /// A stream command that answers through its [`Responder`], now or later.
    pub fn stream_delayed<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, DataFrame, Responder) + Send + Sync + 'static,
    {
        self.answering(STREAM, name, false, move |p, pl, r| {
            if let Some(d) = data_of(pl) {
                f(p, d, r)
            }
        })
    }

    /// A direct console command (no answer).
    pub fn direct_console<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &str) + Send + Sync + 'static,
    {
        let run: OneWay = Arc::new(move |p, pl| {
            if let Some(t) = text_of(pl) {
                f(p, t.as_str())
            }
        });
        self.insert(DIRECT_CONSOLE, name, Run::OneWay(run), false)
    }

    /// A direct stream command (no answer).
    pub fn direct_stream<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &DataFrame) + Send + Sync + 'static,
    {
        let run: OneWay = Arc::new(move |p, pl| {
            if let Some(d) = data_of(pl) {
                f(p, &d)
            }
        });
        self.insert(DIRECT_STREAM, name, Run::OneWay(run), false)
    }

    /// A CompleteBuffer command: one raw binary message, no answer (see
    /// [`SessionConfig::max_complete_buffer`](crate::SessionConfig::max_complete_buffer)).
    pub fn complete_buffer<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, Bytes) + Send + Sync + 'static,
    {
        let run: OneWay = Arc::new(move |p, pl| {
            if let Request::CompleteBuffer { data: b, .. } = pl {
                f(p, b)
            }
        });
        self.insert(COMPLETE_BUFFER, name, Run::OneWay(run), false)
    }

    /// A BigStream command: `f` runs on the event loop for every chunk in order
    /// (so it can append to a file, hash, forward: nothing is buffered whole) and
    /// its answer to the last chunk (`None`: an empty DataFrame) completes the
    /// sender's call. An error answers the sender at once, which stops sending;
    /// chunks already in flight (at most one window) still reach `f`.
    pub fn big_stream<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &BigChunk) -> std::result::Result<Option<DataFrame>, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.insert(BIG_STREAM, name, Run::Chunks(Arc::new(f)), false)
    }

    /// A BigStream command whose handler gets the **whole** payload as a
    /// [`BigBody`]: assembled in memory up to [`CollectLimits::spill_threshold`]
    /// bytes, in a temporary file above it (removed when the body is dropped);
    /// a stream announcing more than [`CollectLimits::max_size`] is refused
    /// with [`code::TOO_LARGE`] before anything is stored. `f` runs on the event
    /// loop once the last chunk arrived; its answer completes the sender's call.
    /// The stream must start at offset 0 (a StableIO session carries a transfer
    /// across reconnects; a resume from an offset on a new connection is
    /// answered [`code::BAD_REQUEST`]).
    ///
    /// A partial body (memory, temporary file, descriptor, spill quota) lives
    /// only as long as its transfer: it is dropped at once when the session
    /// refuses the transfer, when the connection ends
    /// ([`runtime::connection_closed`]), when the handler's storage
    /// fails, and when no chunk arrived for [`CollectLimits::idle_timeout`]
    /// (checked as chunks of this command arrive). Temporary files count
    /// against process-wide quotas ([`CollectLimits::max_spill_files`],
    /// [`CollectLimits::max_spill_bytes_total`]): a transfer over them is
    /// refused on its first chunk.
    pub fn big_stream_collect<F>(
        &mut self,
        name: &str,
        limits: CollectLimits,
        f: F,
    ) -> &mut Registry
    where
        F: Fn(&Peer, BigBody) -> std::result::Result<Option<DataFrame>, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        let run = Arc::new(Collector {
            limits,
            open: Mutex::new(Transfers::default()),
            f: Box::new(f),
        });
        self.insert(BIG_STREAM, name, Run::Collect(run), false)
    }

    /// A BatchStream command: the staged frames together in, values out.
    pub fn batch<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &[DataFrame]) -> std::result::Result<DataFrame, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.answering(BATCH, name, false, move |p, pl, r| {
            if let Request::Batch { frames: v, .. } = pl {
                let _ = r.reply(f(p, &v).map(Reply::Data));
            }
        })
    }

    /// A handler for the named signal (case-insensitive) sent with
    /// [`Peer::send_signal`].
    pub fn signal<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, u64) + Send + Sync + 'static,
    {
        self.signals.insert(fold(name), Arc::new(f));
        self
    }

    /// A hook for errors the peer reports outside any call (request id 0), such
    /// as a CompleteBuffer refused for its size. They are also logged.
    pub fn on_peer_error<F>(&mut self, f: F) -> &mut Registry
    where
        F: Fn(&Peer, u32, &str) + Send + Sync + 'static,
    {
        self.peer_error = Some(Arc::new(f));
        self
    }

    /// Runs the handler of signal `name`, if any.
    pub(crate) fn signal_received(&self, peer: &Peer, name: &str, code: u64) {
        match self.signals.get(&fold(name)) {
            Some(f) => f(peer, code),
            None => tracing::debug!(peer = peer.id(), name, "unhandled signal"),
        }
    }

    /// Runs the peer-error hook, if any.
    pub(crate) fn peer_error(&self, peer: &Peer, code: u32, message: &str) {
        if let Some(f) = &self.peer_error {
            f(peer, code, message)
        }
    }

    /// Whether any handler runs on the HPC pool.
    pub fn has_hpc(&self) -> bool {
        self.maps.iter().any(|m| m.values().any(|e| e.hpc))
    }

    /// Requests answered [`code::BUSY`] because the HPC queue was full.
    pub fn busy_refusals(&self) -> u64 {
        self.busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a command of that kind (see [`CommandSnapshot::kind`]) and name exists.
    pub fn contains(&self, kind: &str, name: &str) -> bool {
        KINDS
            .iter()
            .position(|k| *k == kind)
            .is_some_and(|i| self.maps[i].contains_key(&fold(name)))
    }

    /// Statistics of every command, sorted by kind then name.
    pub fn stats(&self) -> Vec<CommandSnapshot> {
        let mut v = Vec::new();
        for (kind, m) in KINDS.iter().zip(&self.maps) {
            let mut names: Vec<&String> = m.keys().collect();
            names.sort();
            for n in names {
                v.push(m[n].stats.snapshot(n, kind));
            }
        }
        v
    }

    /// Runs the handler for `req` from `peer`. Handlers run on the calling thread
    /// (the event loop) unless registered as HPC and a `pool` is given. Returns
    /// false when no handler matched (an answering request has then been answered
    /// with [`code::UNKNOWN_COMMAND`]). `ordered` makes the responder report
    /// completion through [`Outbox::request_done`].
    pub(crate) fn dispatch(
        &self,
        peer: &Peer,
        req: Request,
        pool: Option<&WorkerPool>,
        ordered: bool,
    ) -> bool {
        self.dispatch_in(peer, req, pool, ordered, false)
    }

    /// [`Registry::dispatch`]; `local`: the runtime holds this connection's
    /// batch on this thread and hands the answers encoded by
    /// [`inline::encode`] to the session at its end.
    pub(crate) fn dispatch_in(
        &self,
        peer: &Peer,
        req: Request,
        pool: Option<&WorkerPool>,
        ordered: bool,
        local: bool,
    ) -> bool {
        let len = req.payload_len();
        if let Request::BigChunk {
            id,
            cmd,
            offset,
            total,
            last,
            data,
        } = req
        {
            let chunk = BigChunk {
                offset,
                total,
                last,
                data,
            };
            return self.big_chunk(peer, id, &cmd, chunk, ordered);
        }
        let (kind, id, cmd) = match &req {
            Request::Console { id, cmd, .. } => (CONSOLE, Some(*id), cmd),
            Request::Stream { id, cmd, .. } => (STREAM, Some(*id), cmd),
            Request::DirectConsole { cmd, .. } => (DIRECT_CONSOLE, None, cmd),
            Request::DirectStream { cmd, .. } => (DIRECT_STREAM, None, cmd),
            Request::CompleteBuffer { cmd, .. } => (COMPLETE_BUFFER, None, cmd),
            Request::Batch { id, cmd, .. } => (BATCH, Some(*id), cmd),
            Request::BigChunk { .. } => return false,
        };
        let name = cmd.as_str();
        let entry = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.maps[kind].get(&fold(name))
        } else {
            self.maps[kind].get(name)
        };
        let Some(entry) = entry else {
            tracing::debug!(
                peer = peer.id(),
                cmd = name,
                kind = KINDS[kind],
                "unknown command"
            );
            if let Some(id) = id {
                let _ = peer.send_frame(Frame::Error {
                    id,
                    code: code::UNKNOWN_COMMAND,
                    message: Text::from(format!("no {} command {:?}", KINDS[kind], name)),
                });
            }
            if ordered {
                peer.out().request_done();
            }
            return false;
        };
        // While the loop holds a batch the request is summed with its
        // answer when the handler returns (`stats::batch`).
        let batched = crate::stats::batch::active();
        if !batched {
            entry.stats.record_in(len);
        }
        match (&entry.run, id) {
            (Run::Answering(f), Some(id)) => {
                let mut responder = Responder {
                    id,
                    peer: peer.clone(),
                    stats: entry.stats.clone(),
                    started: crate::clock::now(),
                    ticket: 0,
                    // Batch answers carry their checksums first (the
                    // session adds them): the shared path.
                    local: local && !ordered && kind != BATCH,
                    ordered,
                    done: false,
                };
                let pool = pool.filter(|_| entry.hpc);
                if pool.is_some() {
                    if batched {
                        crate::stats::batch::record(&entry.stats, len, None);
                    }
                    peer.out().request_started();
                }
                match pool {
                    None => {
                        let (ticket, previous) = inline::begin();
                        responder.ticket = ticket;
                        f(peer, req, responder);
                        let answered = inline::end(ticket, previous);
                        if answered == inline::Answered::No {
                            // Kept for later: in flight until it answers.
                            peer.out().request_started();
                        }
                        if batched {
                            let out = match answered {
                                inline::Answered::Left { bytes, error } => Some((bytes, error)),
                                _ => None,
                            };
                            crate::stats::batch::record(&entry.stats, len, out);
                        }
                    }
                    Some(pool) if pool.is_full() => {
                        tracing::debug!(peer = peer.id(), cmd = name, "HPC queue full");
                        self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let m = format!(
                            "the server is busy: {name:?} waits for a worker (HPC queue full)"
                        );
                        drop(req);
                        let _ = responder.reply_error(code::BUSY, m);
                    }
                    Some(pool) => {
                        let f = f.clone();
                        let p = peer.clone();
                        // If the pool is shut down (or filled up meanwhile) the job
                        // and its responder are dropped, which answers the caller
                        // with an error.
                        pool.spawn(move || f(&p, req, responder));
                    }
                }
            }
            (Run::OneWay(f), _) => {
                let started = crate::clock::now();
                f(peer, req);
                let latency = crate::clock::now().saturating_duration_since(started);
                match batched {
                    true if latency.is_zero() => {
                        crate::stats::batch::record(&entry.stats, len, Some((0, false)))
                    }
                    true => {
                        crate::stats::batch::record(&entry.stats, len, None);
                        entry.stats.record_out(0, false, latency);
                    }
                    false => entry.stats.record_out(0, false, latency),
                }
                if ordered {
                    peer.out().request_done();
                }
            }
            (Run::Answering(_), None) | (Run::Chunks(_), _) | (Run::Collect(_), _) => {
                if batched {
                    crate::stats::batch::record(&entry.stats, len, None);
                }
            }
        }
        true
    }

    /// The session refused BigStream transfer `id` of command `cmd` from
    /// `peer` and forgot it (chunk out of order, total changed, ...: it
    /// reported [`Event::BigAborted`](crate::Event::BigAborted)). A collecting
    /// command ([`Registry::big_stream_collect`]) drops the partial body at
    /// once: memory, temporary file, descriptor and spill quota. Chunk handlers
    /// ([`Registry::big_stream`]) keep no state here and are not told.
    ///
    /// The runtime calls it in the order of the session's events (after the
    /// chunks that came before the refusal were dispatched), without holding
    /// the connection's lock. Unknown commands and transfers are ignored.
    pub(crate) fn big_stream_aborted(&self, peer: &Peer, id: u64, cmd: &str) {
        if let Some(Entry {
            run: Run::Collect(c),
            ..
        }) = self.maps[BIG_STREAM].get(&fold(cmd))
        {
            if c.abort(peer, id) {
                tracing::debug!(peer = peer.id(), id, cmd, "aborted BigStream body dropped");
            }
        }
    }

    /// The connection of `peer` ended for good (not a StableIO link that may
    /// resume): every partial body it was sending to a collecting command is
    /// dropped at once. The runtime calls it when the connection closes,
    /// without holding the connection's lock.
    pub(crate) fn peer_closed(&self, peer: &Peer) {
        let mut n = 0;
        for e in self.maps[BIG_STREAM].values() {
            if let Run::Collect(c) = &e.run {
                n += c.close_peer(peer);
            }
        }
        if n > 0 {
            tracing::debug!(
                peer = peer.id(),
                transfers = n,
                "unfinished BigStream bodies dropped"
            );
        }
    }

    /// Runs the BigStream handler for one chunk and answers: a
    /// `BigStreamAck` once the handler accepted the chunk (D4: never for a
    /// chunk it refused or could not see), then, for the last chunk, the
    /// handler's answer; a refusal is answered with the handler's error
    /// alone; a chunk for an unknown command with 404 alone (every chunk: the
    /// sender gets no ack and must hear why, even when its transfer resumes
    /// from an offset).
    fn big_chunk(&self, peer: &Peer, id: u64, cmd: &Text, chunk: BigChunk, ordered: bool) -> bool {
        let name = cmd.as_str();
        let entry = self.maps[BIG_STREAM].get(&fold(name));
        let Some((run, stats)) = entry.and_then(|e| match &e.run {
            Run::Chunks(_) | Run::Collect(_) => Some((&e.run, &e.stats)),
            _ => None,
        }) else {
            let _ = peer.send_frame(Frame::Error {
                id,
                code: code::UNKNOWN_COMMAND,
                message: Text::from(format!("no big-stream command {name:?}")),
            });
            if ordered {
                peer.out().request_done();
            }
            return false;
        };
        let started = Instant::now();
        stats.record_in(chunk.data.len());
        let r = match run {
            Run::Chunks(f) => f(peer, &chunk),
            Run::Collect(c) => c.chunk(peer, id, &chunk),
            _ => Ok(None),
        };
        match r {
            Ok(answer) => {
                // The session checked that the chunk lies inside `total`.
                let offset = chunk.offset.saturating_add(chunk.data.len() as u64);
                match peer.send_frame(Frame::BigStreamAck { id, offset }) {
                    Ok(()) | Err(crate::Error::ConnectionLost(_)) => {}
                    Err(e) => {
                        // Without its ack the sender would wait forever.
                        tracing::warn!(peer = peer.id(), id, %e, "cannot acknowledge a BigStream chunk");
                        peer.close(&format!("cannot acknowledge BigStream {id}: {e}"));
                    }
                }
                if chunk.last {
                    stats.record_out(0, false, started.elapsed());
                    let _ = peer.send_frame(Frame::StreamResponse {
                        id,
                        data: answer.unwrap_or_default(),
                    });
                }
            }
            Err(e) => {
                stats.record_out(0, true, started.elapsed());
                let _ = peer.send_frame(Frame::Error {
                    id,
                    code: e.code,
                    message: Text::from(e.message),
                });
            }
        }
        if ordered {
            peer.out().request_done();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Sink(Mutex<Vec<Frame>>);
    impl Outbox for Sink {
        fn send_frame(&self, frame: Frame) -> Result<()> {
            self.0.lock().unwrap().push(frame);
            Ok(())
        }
        fn is_open(&self) -> bool {
            true
        }
        fn close(&self, _: &str) {}
    }

    #[test]
    fn names_are_case_insensitive_and_kinds_separate() {
        let mut r = Registry::new();
        r.console("Echo", |_, t| Ok(t.to_owned()));
        let sink = Arc::new(Sink::default());
        let peer = Peer::new(1, None, sink.clone());
        for (id, name) in [(1, "echo"), (2, "ECHO"), (3, "eChO")] {
            let req = Request::Console {
                id,
                cmd: Text::from(name),
                text: Text::from("x"),
            };
            assert!(r.dispatch(&peer, req, None, false));
        }
        let req = Request::Stream {
            id: 4,
            cmd: Text::from("echo"),
            data: DataFrame::new(),
        };
        assert!(!r.dispatch(&peer, req, None, false));
        let frames = sink.0.lock().unwrap().clone();
        assert_eq!(frames.len(), 4);
        assert!(
            matches!(&frames[1], Frame::ConsoleResponse { id: 2, text } if text.as_str() == "x")
        );
        assert!(matches!(
            &frames[3],
            Frame::Error {
                id: 4,
                code: 404,
                ..
            }
        ));
        assert!(r.contains("console", "ECHO") && !r.contains("stream", "echo"));
        assert_eq!(r.stats()[0].calls, 3);
    }

    fn chunk(id: u64, cmd: &str, offset: u64, total: u64, data: &'static [u8]) -> Request {
        Request::BigChunk {
            id,
            cmd: Text::from(cmd),
            offset,
            total,
            last: offset + data.len() as u64 == total,
            data: Bytes::from_static(data),
        }
    }

    /// What `sink` received since the last look is exactly one `Error` for
    /// request `id` with `code`.
    #[track_caller]
    fn assert_only_error(sink: &Sink, id: u64, code: u32) {
        let f = take(sink);
        assert!(
            matches!(&f[..], [Frame::Error { id: i, code: c, .. }] if *i == id && *c == code),
            "expected only Error {code} for request {id}, got {f:?}"
        );
    }

    fn take(sink: &Sink) -> Vec<Frame> {
        std::mem::take(&mut *sink.0.lock().unwrap())
    }

    fn collecting(limits: CollectLimits) -> Registry {
        let mut r = Registry::new();
        r.big_stream_collect("up", limits, |_, body| {
            Ok(Some(DataFrame::new().with(body.len())))
        });
        r.big_stream("picky", |_, c| {
            if c.data.starts_with(b"bad") {
                Err(HandlerError::new(code::BAD_REQUEST, "bad chunk"))
            } else {
                Ok(None)
            }
        });
        r
    }

    fn spill_files(dir: &tempfile::TempDir) -> usize {
        std::fs::read_dir(dir.path()).unwrap().count()
    }

    #[test]
    fn big_stream_acks_only_chunks_the_handler_accepted() {
        // Process-wide quotas: no other quota test at the same time.
        let _g = crate::body::SPILL_TEST_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let r = collecting(CollectLimits::default());
        let sink = Arc::new(Sink::default());
        let peer = Peer::new(1, None, sink.clone());
        r.dispatch(&peer, chunk(1, "up", 0, 6, b"abc"), None, false);
        assert_eq!(take(&sink), [Frame::BigStreamAck { id: 1, offset: 3 }]);
        // The last chunk: its ack, then the handler's answer.
        r.dispatch(&peer, chunk(1, "up", 3, 6, b"def"), None, false);
        let f = take(&sink);
        assert_eq!(f[0], Frame::BigStreamAck { id: 1, offset: 6 });
        assert!(
            matches!(&f[1], Frame::StreamResponse { id: 1, data } if data.reader().read_u64().unwrap() == 6)
        );
        assert_eq!(f.len(), 2);
        // Refused first chunks (a resume, too large): the error alone.
        r.dispatch(&peer, chunk(2, "up", 10, 20, b"0123456789"), None, false);
        assert_only_error(&sink, 2, 400);
        let r2 = collecting(CollectLimits {
            max_size: 4,
            ..CollectLimits::default()
        });
        r2.dispatch(&peer, chunk(3, "up", 0, 5, b"ab"), None, false);
        assert_only_error(&sink, 3, 413);
        // A chunk handler's refusal: the error alone.
        r.dispatch(&peer, chunk(4, "picky", 0, 9, b"bad"), None, false);
        assert_only_error(&sink, 4, 400);
        r.dispatch(&peer, chunk(5, "picky", 0, 9, b"ok!"), None, false);
        assert_eq!(take(&sink), [Frame::BigStreamAck { id: 5, offset: 3 }]);
        // Unknown command: 404 alone, for every chunk (also a resumed one).
        for (id, offset) in [(6, 0), (7, 3)] {
            assert!(!r.dispatch(&peer, chunk(id, "nope", offset, 9, b"abc"), None, false));
            let f = take(&sink);
            assert!(
                matches!(&f[..], [Frame::Error { id: i, code: 404, .. }] if *i == id),
                "{f:?}"
            );
        }
    }

    #[test]
    fn one_connection_has_a_bounded_number_of_partial_bodies() {
        let _g = crate::body::SPILL_TEST_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let r = collecting(CollectLimits {
            max_transfers_per_peer: 2,
            ..CollectLimits::default()
        });
        let (sa, sb) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
        let (a, b) = (
            Peer::new(1, None, sa.clone()),
            Peer::new(2, None, sb.clone()),
        );
        for id in 1..=2 {
            r.dispatch(&a, chunk(id, "up", 0, 6, b"abc"), None, false);
            assert_eq!(take(&sa), [Frame::BigStreamAck { id, offset: 3 }]);
        }
        r.dispatch(&a, chunk(3, "up", 0, 6, b"abc"), None, false);
        // A third partial body of the same connection is refused.
        assert_only_error(&sa, 3, 429);
        // Another connection is not affected; a finished transfer frees a place.
        r.dispatch(&b, chunk(1, "up", 0, 6, b"abc"), None, false);
        assert_eq!(take(&sb), [Frame::BigStreamAck { id: 1, offset: 3 }]);
        r.dispatch(&a, chunk(1, "up", 3, 6, b"def"), None, false);
        assert_eq!(take(&sa).len(), 2);
        r.dispatch(&a, chunk(3, "up", 0, 6, b"abc"), None, false);
        assert_eq!(take(&sa), [Frame::BigStreamAck { id: 3, offset: 3 }]);
    }

    #[test]
    fn aborted_and_closed_transfers_free_their_bodies_at_once() {
        let _g = crate::body::SPILL_TEST_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let r = collecting(CollectLimits {
            spill_threshold: 4,
            spill_dir: Some(dir.path().to_owned()),
            ..CollectLimits::default()
        });
        let sink = Arc::new(Sink::default());
        let peer = Peer::new(1, None, sink.clone());
        // Another connection with the same id (another backend) is separate.
        let other_sink = Arc::new(Sink::default());
        let other = Peer::new(1, None, other_sink.clone());
        for id in [1, 2] {
            r.dispatch(&peer, chunk(id, "up", 0, 8, b"abcd"), None, false);
        }
        r.dispatch(&other, chunk(1, "up", 0, 8, b"wxyz"), None, false);
        assert_eq!(spill_files(&dir), 3);
        assert_eq!(CollectLimits::spill_in_use(), (3, 24));

        r.big_stream_aborted(&peer, 1, "UP");
        assert_eq!(spill_files(&dir), 2, "dropped at once");
        assert_eq!(CollectLimits::spill_in_use(), (2, 16));
        // Unknown transfers, commands and chunk commands: nothing happens.
        r.big_stream_aborted(&peer, 99, "up");
        r.big_stream_aborted(&peer, 2, "nope");
        r.big_stream_aborted(&peer, 2, "picky");
        assert_eq!(spill_files(&dir), 2);
        // The aborted transfer's next chunk does not resurrect it.
        take(&sink);
        r.dispatch(&peer, chunk(1, "up", 4, 8, b"efgh"), None, false);
        assert_only_error(&sink, 1, 400);

        r.peer_closed(&peer);
        assert_eq!(
            spill_files(&dir),
            1,
            "only the other connection's body remains"
        );
        assert_eq!(CollectLimits::spill_in_use(), (1, 8));
        take(&other_sink);
        r.dispatch(&other, chunk(1, "up", 4, 8, b"1234"), None, false);
        let f = take(&other_sink);
        assert!(
            matches!(&f[1], Frame::StreamResponse { id: 1, .. }),
            "{f:?}"
        );
        assert_eq!(spill_files(&dir), 0);
        assert_eq!(CollectLimits::spill_in_use(), (0, 0));
    }

    #[test]
    fn a_chunk_that_does_not_continue_the_body_drops_it() {
        // Process-wide quotas: no other quota test at the same time.
        let _g = crate::body::SPILL_TEST_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let r = collecting(CollectLimits::default());
        let sink = Arc::new(Sink::default());
        let peer = Peer::new(1, None, sink.clone());
        r.dispatch(&peer, chunk(1, "up", 0, 9, b"abc"), None, false);
        r.dispatch(&peer, chunk(1, "up", 6, 9, b"ghi"), None, false);
        let f = take(&sink);
        assert!(
            matches!(
                &f[1],
                Frame::Error {
                    id: 1,
                    code: 400,
                    ..
                }
            ),
            "{f:?}"
        );
        // It is gone: the missing part cannot be sent any more...
        r.dispatch(&peer, chunk(1, "up", 3, 9, b"def"), None, false);
        assert_only_error(&sink, 1, 400);
        // ... but the id can start over.
        r.dispatch(&peer, chunk(1, "up", 0, 3, b"abc"), None, false);
        assert!(matches!(
            &take(&sink)[1],
            Frame::StreamResponse { id: 1, .. }
        ));
    }

    #[test]
    fn idle_transfers_are_dropped_when_the_command_gets_a_chunk() {
        // Process-wide quotas: no other quota test at the same time.
        let _g = crate::body::SPILL_TEST_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let r = collecting(CollectLimits {
            idle_timeout: Duration::from_millis(50),
            ..CollectLimits::default()
        });
        let sink = Arc::new(Sink::default());
        let peer = Peer::new(1, None, sink.clone());
        r.dispatch(&peer, chunk(1, "up", 0, 6, b"abc"), None, false);
        let Some(Entry {
            run: Run::Collect(c),
            ..
        }) = r.maps[BIG_STREAM].get("up")
        else {
            panic!("a collecting command")
        };
        let ids = || {
            let mut v: Vec<u64> = c.lock().map.keys().map(|k| k.1).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(ids(), [1]);
        std::thread::sleep(Duration::from_millis(120));
        // Any chunk of the command sweeps: transfer 1 idled too long.
        r.dispatch(&peer, chunk(3, "up", 0, 6, b"abc"), None, false);
        assert_eq!(ids(), [3]);
        take(&sink);
        r.dispatch(&peer, chunk(1, "up", 3, 6, b"def"), None, false);
        assert_only_error(&sink, 1, 400);
    }

    #[test]
    fn dropped_responder_answers_an_error_and_state_is_typed() {
        let mut r = Registry::new();
        r.console_delayed("lazy", |_, _, resp| drop(resp));
        let sink = Arc::new(Sink::default());
        let peer = Peer::new(1, None, sink.clone());
        r.dispatch(
            &peer,
            Request::Console {
                id: 9,
                cmd: Text::from("lazy"),
                text: Text::from(""),
            },
            None,
            false,
        );
        assert!(matches!(
            &sink.0.lock().unwrap()[0],
            Frame::Error {
                id: 9,
                code: 500,
                ..
            }
        ));
        peer.with_state(|n: &mut u32| *n += 2);
        peer.with_state(|n: &mut u32| *n += 3);
        assert_eq!(peer.state::<u32>(), Some(5));
        assert_eq!(peer.state::<String>(), None);
        // Another type replaces the state; `set_state` too.
        peer.with_state(|s: &mut String| s.push('x'));
        assert_eq!(peer.state::<u32>(), None);
        assert_eq!(peer.state::<String>().as_deref(), Some("x"));
        peer.set_state(7u8);
        assert_eq!(
            (peer.state::<u8>(), peer.state::<String>()),
            (Some(7), None)
        );
    }

    /// Every session keeps one `PeerInner` in an `Arc` (issue 13's idle
    /// bytes): 72 B (80 with a fat `Box<dyn Any>` for the user state,
    /// session 13), so the `Arc`'s malloc chunk is 96 B instead of 112.
    #[test]
    fn a_peer_stays_small() {
        let n = std::mem::size_of::<PeerInner>();
        assert!(n <= 72, "PeerInner is {n} bytes");
    }
}
