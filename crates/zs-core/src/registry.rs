//! The command registry: handlers by name for each kind, the [`Peer`] handle a
//! handler gets, and the [`Responder`] that answers a request (now or later).
//!
//! **Names are case-insensitive (ASCII)**, as in the ZServer4D seed: `Echo`,
//! `echo` and `ECHO` name the same command. Each kind (console, stream, direct
//! console, direct stream, CompleteBuffer, batch) has its own namespace, so one
//! name may serve several kinds.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use zs_wire::{DataFrame, Frame, Text};

pub use crate::body::{BigBody, CollectLimits};
use crate::error::{code, Result};
use crate::pool::WorkerPool;
use crate::session::{Reply, Request};
use crate::stats::{CommandSnapshot, CommandStats};

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
    /// Aborts the current transport connection without ending a StableIO
    /// session (which then resumes on a new one). Default: nothing.
    fn drop_link(&self) {}
}

/// A connection as seen by handlers and the server's connection map: its id, its
/// address, its user state, and sending to it (pushes) from any thread.
#[derive(Clone)]
pub struct Peer {
    id: u64,
    addr: Option<SocketAddr>,
    out: Arc<dyn Outbox>,
    state: Arc<Mutex<Option<Box<dyn Any + Send>>>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer(#{} {:?})", self.id, self.addr)
    }
}

impl Peer {
    /// A peer handle over `out`.
    pub fn new(id: u64, addr: Option<SocketAddr>, out: Arc<dyn Outbox>) -> Peer {
        Peer {
            id,
            addr,
            out,
            state: Arc::new(Mutex::new(None)),
        }
    }

    /// The connection id (unique per backend).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The remote address, when the transport has one.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Whether the connection is open. A StableIO session between two
    /// connections counts as open: what is sent to it is queued and delivered
    /// on resume.
    pub fn is_open(&self) -> bool {
        self.out.is_open()
    }

    /// Closes the connection (a StableIO session ends).
    pub fn close(&self, reason: &str) {
        self.out.close(reason)
    }

    /// Aborts the current connection without ending a StableIO session (the
    /// client reconnects and resumes it; a test hook too). For other sessions
    /// this ends the connection.
    pub fn drop_link(&self) {
        self.out.drop_link()
    }

    /// Sends any frame (advanced; prefer the typed methods).
    pub fn send_frame(&self, frame: Frame) -> Result<()> {
        self.out.send_frame(frame)
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
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(value));
    }

    /// Runs `f` on this connection's user state of type `T`, creating it with
    /// `T::default()` when absent (or of another type).
    pub fn with_state<T: Any + Send + Default, R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !g.as_ref().is_some_and(|b| b.is::<T>()) {
            *g = Some(Box::new(T::default()));
        }
        let v = g
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .expect("state of type T was just ensured");
        f(v)
    }

    /// A copy of this connection's user state of type `T`, if set.
    pub fn state<T: Any + Send + Clone>(&self) -> Option<T> {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().and_then(|b| b.downcast_ref::<T>()).cloned()
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
pub struct Responder {
    id: u64,
    peer: Peer,
    stats: Arc<CommandStats>,
    started: Instant,
    ordered: bool,
    done: bool,
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
        self.stats.record_out(len, err, self.started.elapsed());
        let id = self.id;
        let frame = match result {
            Ok(Reply::Text(text)) => Frame::ConsoleResponse { id, text },
            Ok(Reply::Data(data)) => Frame::StreamResponse { id, data },
            Err(e) => Frame::Error {
                id,
                code: e.code,
                message: Text::from(e.message),
            },
        };
        // Fails with ConnectionLost when the connection is gone (one lock).
        let r = self.peer.send_frame(frame);
        if self.ordered {
            self.peer.out.request_done();
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

type Answering = Arc<dyn Fn(&Peer, Payload, Responder) + Send + Sync>;
type OneWay = Arc<dyn Fn(&Peer, Payload) + Send + Sync>;

/// A request's payload as handed to the internal handler wrappers.
enum Payload {
    Text(Text),
    Data(DataFrame),
    Bytes(Bytes),
    Frames(Vec<DataFrame>),
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

type Collect = Arc<
    dyn Fn(&Peer, u64, &BigChunk) -> std::result::Result<Option<DataFrame>, HandlerError>
        + Send
        + Sync,
>;

#[derive(Clone)]
enum Run {
    Answering(Answering),
    OneWay(OneWay),
    Chunks(Chunks),
    Collect(Collect),
}

#[derive(Clone)]
struct Entry {
    run: Run,
    hpc: bool,
    stats: Arc<CommandStats>,
}

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

    fn insert(&mut self, kind: usize, name: &str, run: Run, hpc: bool) -> &mut Registry {
        self.maps[kind].insert(
            fold(name),
            Entry {
                run,
                hpc,
                stats: Arc::new(CommandStats::default()),
            },
        );
        self
    }

    fn answering<F>(&mut self, kind: usize, name: &str, hpc: bool, f: F) -> &mut Registry
    where
        F: Fn(&Peer, Payload, Responder) + Send + Sync + 'static,
    {
        self.insert(kind, name, Run::Answering(Arc::new(f)), hpc)
    }

    /// A console command: text in, text out, answered on the event loop.
    pub fn console<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&Peer, &str) -> std::result::Result<String, HandlerError> + Send + Sync + 'static,
    {
        self.answering(CONSOLE, name, false, move |p, pl, r| {
            if let Payload::Text(t) = pl {
                let _ = r.reply(f(p, t.as_str()).map(|s| Reply::Text(Text::from(s))));
            }
        })
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
            if let Payload::Text(t) = pl {
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
            if let Payload::Text(t) = pl {
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
            if let Payload::Data(d) = pl {
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
            if let Payload::Data(d) = pl {
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
            if let Payload::Data(d) = pl {
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
            if let Payload::Text(t) = pl {
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
            if let Payload::Data(d) = pl {
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
            if let Payload::Bytes(b) = pl {
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
    /// answered [`code::BAD_REQUEST`]). Transfers cut by a lost connection are
    /// discarded (with their file) when the next transfer starts.
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
        let open: Mutex<HashMap<(u64, u64), (Peer, crate::body::Assembly)>> =
            Mutex::new(HashMap::new());
        let run: Collect = Arc::new(move |peer, id, chunk| {
            let key = (peer.id(), id);
            let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
            if !open.contains_key(&key) {
                // Forget transfers whose connection is gone.
                open.retain(|_, (p, _)| p.is_open());
                if chunk.total > limits.max_size {
                    return Err(HandlerError::new(
                        code::TOO_LARGE,
                        format!(
                            "BigStream of {} bytes exceeds the receiver limit of {} bytes",
                            chunk.total, limits.max_size
                        ),
                    ));
                }
                if chunk.offset != 0 {
                    return Err(HandlerError::new(
                        code::BAD_REQUEST,
                        "this command collects whole streams: it cannot resume from an offset",
                    ));
                }
                let a = crate::body::Assembly::new(chunk.total, &limits).map_err(|e| {
                    HandlerError::new(
                        code::HANDLER_FAILED,
                        format!("cannot store the stream: {e}"),
                    )
                })?;
                open.insert(key, (peer.clone(), a));
            }
            let stored = match open.get_mut(&key) {
                Some((_, a)) => a.push(&chunk.data),
                None => Ok(()),
            };
            if let Err(e) = stored {
                open.remove(&key);
                return Err(HandlerError::new(
                    code::HANDLER_FAILED,
                    format!("cannot store the stream: {e}"),
                ));
            }
            if !chunk.last {
                return Ok(None);
            }
            let Some((_, a)) = open.remove(&key) else {
                return Ok(None);
            };
            drop(open);
            let body = a.finish().map_err(|e| {
                HandlerError::new(
                    code::HANDLER_FAILED,
                    format!("cannot store the stream: {e}"),
                )
            })?;
            f(peer, body)
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
            if let Payload::Frames(v) = pl {
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
    pub fn signal_received(&self, peer: &Peer, name: &str, code: u64) {
        match self.signals.get(&fold(name)) {
            Some(f) => f(peer, code),
            None => tracing::debug!(peer = peer.id(), name, "unhandled signal"),
        }
    }

    /// Runs the peer-error hook, if any.
    pub fn peer_error(&self, peer: &Peer, code: u32, message: &str) {
        if let Some(f) = &self.peer_error {
            f(peer, code, message)
        }
    }

    /// Whether any handler runs on the HPC pool.
    pub fn has_hpc(&self) -> bool {
        self.maps.iter().any(|m| m.values().any(|e| e.hpc))
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
    pub fn dispatch(
        &self,
        peer: &Peer,
        req: Request,
        pool: Option<&WorkerPool>,
        ordered: bool,
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
        let (kind, id, cmd, payload) = match req {
            Request::Console { id, cmd, text } => (CONSOLE, Some(id), cmd, Payload::Text(text)),
            Request::Stream { id, cmd, data } => (STREAM, Some(id), cmd, Payload::Data(data)),
            Request::DirectConsole { cmd, text } => {
                (DIRECT_CONSOLE, None, cmd, Payload::Text(text))
            }
            Request::DirectStream { cmd, data } => (DIRECT_STREAM, None, cmd, Payload::Data(data)),
            Request::CompleteBuffer { cmd, data } => {
                (COMPLETE_BUFFER, None, cmd, Payload::Bytes(data))
            }
            Request::Batch { id, cmd, frames } => (BATCH, Some(id), cmd, Payload::Frames(frames)),
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
                peer.out.request_done();
            }
            return false;
        };
        entry.stats.record_in(len);
        match (&entry.run, id) {
            (Run::Answering(f), Some(id)) => {
                let responder = Responder {
                    id,
                    peer: peer.clone(),
                    stats: entry.stats.clone(),
                    started: Instant::now(),
                    ordered,
                    done: false,
                };
                match pool.filter(|_| entry.hpc) {
                    Some(pool) => {
                        let f = f.clone();
                        let p = peer.clone();
                        // If the pool is shut down the job (and its responder) is
                        // dropped, which answers the caller with an error.
                        pool.spawn(move || f(&p, payload, responder));
                    }
                    None => f(peer, payload, responder),
                }
            }
            (Run::OneWay(f), _) => {
                let started = Instant::now();
                f(peer, payload);
                entry.stats.record_out(0, false, started.elapsed());
                if ordered {
                    peer.out.request_done();
                }
            }
            (Run::Answering(_), None) | (Run::Chunks(_), _) | (Run::Collect(_), _) => {}
        }
        true
    }

    fn big_chunk(&self, peer: &Peer, id: u64, cmd: &Text, chunk: BigChunk, ordered: bool) -> bool {
        let name = cmd.as_str();
        let entry = self.maps[BIG_STREAM].get(&fold(name));
        let Some((run, stats)) = entry.and_then(|e| match &e.run {
            Run::Chunks(_) | Run::Collect(_) => Some((&e.run, &e.stats)),
            _ => None,
        }) else {
            if chunk.last || chunk.offset == 0 {
                let _ = peer.send_frame(Frame::Error {
                    id,
                    code: code::UNKNOWN_COMMAND,
                    message: Text::from(format!("no big-stream command {name:?}")),
                });
            }
            if ordered {
                peer.out.request_done();
            }
            return false;
        };
        let started = Instant::now();
        stats.record_in(chunk.data.len());
        let r = match run {
            Run::Chunks(f) => f(peer, &chunk),
            Run::Collect(f) => f(peer, id, &chunk),
            _ => Ok(None),
        };
        let frame = match r {
            Ok(Some(d)) if chunk.last => Some(Frame::StreamResponse { id, data: d }),
            Ok(None) if chunk.last => Some(Frame::StreamResponse {
                id,
                data: DataFrame::new(),
            }),
            Ok(_) => None,
            Err(e) => Some(Frame::Error {
                id,
                code: e.code,
                message: Text::from(e.message),
            }),
        };
        if let Some(frame) = frame {
            let err = matches!(frame, Frame::Error { .. });
            stats.record_out(0, err, started.elapsed());
            let _ = peer.send_frame(frame);
        }
        if ordered {
            peer.out.request_done();
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
    }
}
