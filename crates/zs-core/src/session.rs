//! The sans-IO session: zs-wire frames over a connection that already
//! carries plaintext (the security layer, e.g. `zs_secure::SecureBackend`,
//! sits under it and reports who the peer is).
//!
//! A [`Session`] is one end of one connection. Tell it the link is up with
//! [`Session::open_link`] (what the layer reported: [`zs_io::SecurityInfo`]),
//! feed it received bytes with [`Session::handle_input`] (`BytesMut` in, frames
//! decoded as slices of it; a partial frame stays in the caller's buffer), take
//! the bytes to send with [`Session::write_output`],
//! read [`Event`]s with [`Session::poll_event`], and drive time with
//! [`Session::poll_timeout`] / [`Session::handle_timeout`]. It owns no socket,
//! thread or clock; `now` is always passed in.
//!
//! StableIO (docs/PROTOCOL.md §3.5): a client calls [`Session::request_stable`],
//! a server [`Session::serve_stable`] with fresh credentials. Application frames
//! then travel as numbered records kept until acknowledged. When the transport
//! dies, [`Session::link_lost`] keeps the session; the client gives it a new
//! link with [`Session::attach`] + [`Session::open_link`], the server moves the
//! new connection's undecoded input into it with [`Session::take_input`] +
//! [`Session::resume_link`] after checking the [`Event::ResumeRequest`]. Both
//! sides then send again what the other has not handled. An orderly end of a
//! StableIO session travels in-band as a `__@close` control frame
//! ([`Session::close`]): a FIN alone is a lost link.
//!
//! # Poll order
//!
//! What a driver calls, and when (zs-core's runtime, `ConnHandler` in
//! `net.rs`, is the driver; the order below is the one it follows):
//!
//! * **Link up.** [`Session::open_link`] once the transport (the security
//!   layer) reports the peer, before any input: bytes given to a session whose
//!   link is not up are dropped. It reports [`Event::Established`] (a
//!   resuming StableIO client also queues its `__@resume`).
//! * **Input.** Every read goes to [`Session::handle_input`]. Whole frames are
//!   decoded from the front of the buffer and become events; a partial frame
//!   stays in the caller's buffer for the next bytes to be appended to (one
//!   over 1 MiB is taken over by the session instead). Decoding stops early
//!   once [`SessionConfig::max_pending_output`] bytes of output wait: then
//!   [`Session::input_blocked`] is true, the session holds the rest, and the
//!   driver stops reading until it sent the output and called
//!   [`Session::resume_input`] (which may block again).
//! * **Events.** After every input or timer call, [`Session::poll_event`]
//!   until it returns `None`: requests ([`Event::Request`], answered with
//!   [`Session::respond`] or [`Session::send_frame`]), call outcomes
//!   ([`Event::Reply`]), [`Event::Established`], [`Event::Closed`] and the
//!   StableIO events. The runtime drains the queue after every call, never
//!   feeds more input into an undrained one, and dispatches the events after
//!   it released the link's lock.
//! * **Application calls.** [`Session::call`] (a call with a timeout adds a
//!   deadline), [`Session::send_frame`], [`Session::respond`],
//!   [`Session::send_keepalive`], [`Session::close`] queue output.
//! * **Output.** [`Session::write_output`] (or [`Session::write_output_parts`]
//!   when [`Session::has_output_parts`]: large payloads as their own pieces)
//!   takes everything queued, in order; send it on the transport. Then
//!   [`Session::take_link_failure`]: `Some` means the peer let StableIO records
//!   pile up beyond every buffer, and the link must be closed.
//! * **Timers.** [`Session::poll_timeout`] is the earliest call deadline,
//!   delayed StableIO ack or batch expiry; when it has passed,
//!   [`Session::handle_timeout`] (expired calls complete with
//!   [`Error::TimedOut`] as events), then events and output as above.
//! * **Transport end.** [`Session::connection_lost`] (or
//!   [`Session::link_lost`], which a StableIO session survives), then drain
//!   the events: every pending call completes there.
//! * **Memory.** [`Session::shrink_buffers`] after a batch when the link is
//!   not busy (the runtime keeps the buffers of a busy link and releases them
//!   after it went idle).
//!
//! **The loop rule.** After any call that takes input, time or an
//! application request (`open_link`, `handle_input`, `resume_input`,
//! `handle_timeout`, `call`, `send_frame`, `respond`, `close`, `link_lost`):
//! drain [`Session::poll_event`] and handle the events (which may queue
//! answers and calls), then take the output and send it, then read
//! [`Session::poll_timeout`] again and re-arm the timer if it moved earlier,
//! then check [`Session::input_blocked`] before reading more. The runtime
//! takes the output once per batch of input (not per answer), so the answers
//! to one read leave together. An error from `handle_input`,
//! `resume_input` or `handle_timeout` is fatal: the session is dead and its
//! pending calls completed; take the output once more (it may hold an error
//! frame for the peer), send it, and close the connection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_wire::{DataFrame, DecodeError, Frame, FrameCodec, Text};

use crate::budget::{Budgets, Charge};
use crate::error::{code, Error, Result};
use crate::lazy::LazyMap;
use crate::pending::IdTable;
use crate::stable::{
    batch_checksum, Phase, Stable, CTL_BATCHSUM, CTL_CLOSE, CTL_RESUME, CTL_STABLE, SECRET_LEN,
};

/// Session settings (both sides).
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Frame codec settings (limits, verification token, compression). Both ends
    /// must agree on the token.
    pub wire: zs_wire::Config,
    /// Largest CompleteBuffer accepted; a bigger one is refused with an
    /// [`code::TOO_LARGE`] error frame naming the command and both sizes (the seed
    /// disconnected silently). Default 4 MiB. Above `wire.limits.max_frame` the
    /// sender's own encoder refuses to send.
    pub max_complete_buffer: usize,
    /// Most BatchStream batches staged at once. Default 64.
    pub max_open_batches: usize,
    /// Most frames in one batch. Default 1024.
    pub max_batch_frames: usize,
    /// Most bytes (encoded DataFrames) staged in this session's open batches
    /// together; the stage that would exceed it is answered
    /// [`code::TOO_LARGE`] and its batch dropped. Default 16 MiB.
    pub max_batch_bytes: usize,
    /// A batch that received no stage for this long is dropped and answered
    /// [`code::TIMED_OUT`]. Default 30 s.
    pub batch_idle_timeout: Duration,
    /// Most bytes of output waiting in the session (sent, not yet taken by
    /// [`Session::write_output`]) before it stops decoding input: a peer cannot
    /// make one read produce unbounded output. [`Session::input_blocked`] tells
    /// that input waits; [`Session::resume_input`] continues. Default 1 MiB.
    pub max_pending_output: usize,
    /// BigStream chunk size in bytes. Default 256 KiB.
    pub big_chunk: usize,
    /// BigStream window: most bytes sent and not yet acknowledged per transfer
    /// (back-pressure without stop-and-wait). Default 4 MiB.
    pub big_window: u64,
    /// Most BigStream transfers received at once. Default 64.
    pub max_big_streams: usize,
    /// StableIO: most bytes of records kept for resending (sent, not yet
    /// acknowledged, or queued while offline). A send that would exceed it
    /// returns [`Error::Full`] (nothing is dropped); BigStreams pause instead.
    /// An *answer* that does not fit is parked (up to as many bytes again) and
    /// sent as acknowledgements free room; one that cannot be parked either is
    /// replaced by an [`code::BUSY`] error, so a caller never waits in vain.
    /// Default 8 MiB.
    pub stable_max_unacked: usize,
    /// StableIO: acknowledge at least every this many records. Default 32.
    pub stable_ack_every: u64,
    /// StableIO: acknowledge at most this long after a record arrived. Default 10 ms.
    pub stable_ack_delay: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            wire: zs_wire::Config::default(),
            max_complete_buffer: 4 << 20,
            max_open_batches: 64,
            max_batch_frames: 1024,
            max_batch_bytes: 16 << 20,
            batch_idle_timeout: Duration::from_secs(30),
            max_pending_output: 1 << 20,
            big_chunk: 256 * 1024,
            big_window: 4 << 20,
            max_big_streams: 64,
            stable_max_unacked: 8 << 20,
            stable_ack_every: 32,
            stable_ack_delay: Duration::from_millis(10),
        }
    }
}

/// A request received from the peer, to be dispatched to a command handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Console request: answer with text.
    Console {
        /// Request id to answer.
        id: u64,
        /// Command name.
        cmd: Text,
        /// Request text.
        text: Text,
    },
    /// Stream request: answer with a DataFrame.
    Stream {
        /// Request id to answer.
        id: u64,
        /// Command name.
        cmd: Text,
        /// Request values.
        data: DataFrame,
    },
    /// Console message without answer.
    DirectConsole {
        /// Command name.
        cmd: Text,
        /// Text.
        text: Text,
    },
    /// Stream message without answer.
    DirectStream {
        /// Command name.
        cmd: Text,
        /// Values.
        data: DataFrame,
    },
    /// One raw binary message without answer.
    CompleteBuffer {
        /// Command name.
        cmd: Text,
        /// The message.
        data: Bytes,
    },
    /// One chunk of a BigStream, delivered in order; the `last` one is answered
    /// with a DataFrame (request id `id`). The session does not acknowledge
    /// chunks: whoever handles the request sends `BigStreamAck` for each chunk
    /// it accepted (the [`Registry`](crate::Registry) does), so a refused
    /// chunk gets only its `Error` (PROTOCOL.md §3.3).
    BigChunk {
        /// Transfer id (answered after the last chunk).
        id: u64,
        /// Command name.
        cmd: Text,
        /// Where `data` starts in the whole payload (a resumed transfer starts
        /// above 0).
        offset: u64,
        /// Size of the whole payload.
        total: u64,
        /// Final chunk.
        last: bool,
        /// Chunk bytes.
        data: Bytes,
    },
    /// A complete batch of staged DataFrames: answer with a DataFrame.
    Batch {
        /// Request id to answer.
        id: u64,
        /// Command name.
        cmd: Text,
        /// The staged frames in arrival order.
        frames: Vec<DataFrame>,
    },
}

impl Request {
    /// The command name.
    pub fn cmd(&self) -> &Text {
        match self {
            Request::Console { cmd, .. }
            | Request::Stream { cmd, .. }
            | Request::DirectConsole { cmd, .. }
            | Request::DirectStream { cmd, .. }
            | Request::CompleteBuffer { cmd, .. }
            | Request::BigChunk { cmd, .. }
            | Request::Batch { cmd, .. } => cmd,
        }
    }

    /// The request id to answer, for requests that expect an answer.
    pub fn id(&self) -> Option<u64> {
        match self {
            Request::Console { id, .. }
            | Request::Stream { id, .. }
            | Request::Batch { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// Payload size in bytes (text or raw bytes length, or encoded DataFrame length).
    pub fn payload_len(&self) -> usize {
        match self {
            Request::Console { text, .. } | Request::DirectConsole { text, .. } => text.len(),
            Request::Stream { data, .. } | Request::DirectStream { data, .. } => data.encoded_len(),
            Request::CompleteBuffer { data, .. } | Request::BigChunk { data, .. } => data.len(),
            Request::Batch { frames, .. } => frames.iter().map(|f| f.encoded_len()).sum(),
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Answer to a console request.
    Text(Text),
    /// Answer to a stream or batch request.
    Data(DataFrame),
}

impl Reply {
    /// The answer frame for request `id`: a successful answer, or an error
    /// (code and message). The one reply-to-frame mapping (the session's
    /// [`Session::respond`] and the registry's responders both use it).
    ///
    /// ```
    /// use zs_core::Reply;
    /// use zs_wire::{Frame, Text};
    /// assert_eq!(
    ///     Reply::frame(7, Ok(Reply::Text(Text::from("hi")))),
    ///     Frame::ConsoleResponse { id: 7, text: Text::from("hi") }
    /// );
    /// assert_eq!(
    ///     Reply::frame(7, Err((404, Text::from("no")))),
    ///     Frame::Error { id: 7, code: 404, message: Text::from("no") }
    /// );
    /// ```
    pub fn frame(id: u64, result: Result<Reply, (u32, Text)>) -> Frame {
        match result {
            Ok(Reply::Text(text)) => Frame::ConsoleResponse { id, text },
            Ok(Reply::Data(data)) => Frame::StreamResponse { id, data },
            Err((code, message)) => Frame::Error { id, code, message },
        }
    }

    /// Encoded size of the answer's payload.
    pub fn payload_len(&self) -> usize {
        match self {
            Reply::Text(t) => t.len(),
            Reply::Data(d) => d.encoded_len(),
        }
    }
}

/// An outgoing request that expects an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// Console request.
    Console {
        /// Command name.
        cmd: Text,
        /// Request text.
        text: Text,
    },
    /// Stream request.
    Stream {
        /// Command name.
        cmd: Text,
        /// Request values.
        data: DataFrame,
    },
    /// A batch: every frame is staged by the receiver, then processed together.
    Batch {
        /// Command name.
        cmd: Text,
        /// The frames (at least one).
        frames: Vec<DataFrame>,
    },
}

/// What a session reports.
#[derive(Debug)]
pub enum Event {
    /// The link is up ([`Session::open_link`]): what the security layer
    /// under the connection negotiated.
    Established {
        /// Negotiated suite's name (e.g. `"AES-256-GCM"`).
        suite: String,
        /// Server, PSK mode: the identity the client authenticated with (so
        /// handlers can authorize per identity; see [`Peer::psk_identity`](crate::Peer::psk_identity)).
        psk_identity: Option<Vec<u8>>,
    },
    /// The peer sent a request or message for a command handler.
    Request(Request),
    /// A call of ours completed: answered, refused, timed out or lost.
    Reply {
        /// The id [`Session::call`] returned.
        id: u64,
        /// The outcome.
        result: Result<Reply>,
    },
    /// A BigStream we were receiving was refused and dropped (the handler's
    /// partial state must go): the runtime calls
    /// `Registry::big_stream_aborted`.
    BigAborted {
        /// The transfer's id.
        id: u64,
        /// Its command.
        cmd: Text,
    },
    /// A BigStream we send progressed: the peer acknowledged `acked` of `total` bytes.
    Progress {
        /// The transfer's call id.
        id: u64,
        /// Bytes acknowledged (from the start of the payload).
        acked: u64,
        /// Payload size.
        total: u64,
    },
    /// The peer sent a named signal.
    Signal {
        /// Signal name.
        name: Text,
        /// Argument.
        code: u64,
    },
    /// The peer reported an error not tied to a call (request id 0), for example a
    /// refused CompleteBuffer.
    PeerError {
        /// Error code.
        code: u32,
        /// Message.
        message: String,
    },
    /// The peer ended the session in an orderly way (`__@close`: a StableIO
    /// session then ends with its link instead of waiting offline).
    Closed,
    /// StableIO: the session now survives its connection (client: the server
    /// accepted and gave its credentials; server: it accepted the request).
    StableReady {
        /// The server's session id.
        session: u64,
    },
    /// StableIO (client): the server refused StableIO (not enabled, or full).
    StableRefused {
        /// The server's reason.
        message: String,
    },
    /// StableIO: the session was re-attached to a new connection and every
    /// record the peer had not acknowledged was sent again.
    Resumed {
        /// Records re-sent.
        resent: usize,
    },
    /// StableIO (server, on a fresh session): the peer asks to resume session
    /// `session`. Input processing is paused: the runtime checks `proof`
    /// against the session's secret with [`Session::verify_resume`], then
    /// moves this link into the old session ([`Session::take_input`],
    /// [`Session::resume_link`]) or refuses ([`Session::refuse_resume`]).
    ResumeRequest {
        /// The session id claimed.
        session: u64,
        /// HMAC-SHA256 keyed with the resume secret over this link's channel
        /// binding (PROTOCOL.md §3.5): proves the secret without sending it,
        /// and is worthless on any other connection.
        proof: [u8; 32],
        /// The last record the peer received from the old session.
        delivered: u64,
    },
}

/// Hashes our own call ids (sequential, chosen locally, never by the peer)
/// with one multiplication instead of SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Eight bytes per step (command names are looked up once per request).
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(a)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        for b in words.remainder() {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Whether `frame` belongs to the link layer (StableIO records and their
/// control requests) rather than to the application.
#[inline]
fn is_link_frame(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::SeqData { .. }
            | Frame::SeqAck { .. }
            | Frame::SeqResend { .. }
            | Frame::SeqKeepalive { .. }
            | Frame::SeqEcho { .. }
            | Frame::SeqEchoReply { .. }
    ) || matches!(frame, Frame::Control { id: 0, cmd, .. }
        if cmd.as_str() == CTL_STABLE || cmd.as_str() == CTL_RESUME || cmd.as_str() == CTL_CLOSE)
}

/// Call deadlines with lazy removal. Calls made with the same timeout get
/// deadlines in the order they were made, so those go to a FIFO (`fifo`,
/// nondecreasing): a call answered in order removes the front, O(1), no
/// comparison walk. Consecutive calls with the same deadline (calls made
/// in one batch of the event loop, whose clock is the batch's) share one
/// FIFO entry, a run of ids: only a call whose deadline differs from the
/// last one's pushes an entry. A deadline earlier than the FIFO's last (a
/// shorter timeout) goes to a min-heap (`heap`). A call answered out of
/// order leaves its entry behind (dropped when it surfaces, or when stale
/// ids outnumber live ones and both are rebuilt), so the hot path costs a
/// push and a pop, or less.
#[derive(Default)]
struct Deadlines {
    fifo: VecDeque<Run>,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Entries whose call is still pending.
    live: usize,
    /// Ids held in `fifo`'s runs and `heap` (live and stale).
    held: usize,
}

/// Calls `first..=last` (consecutive ids), each with deadline `d`.
#[derive(Clone, Copy, PartialEq, Debug)]
struct Run {
    d: Instant,
    first: u64,
    last: u64,
}

impl Deadlines {
    fn insert(&mut self, d: Instant, id: u64) {
        self.live += 1;
        self.held += 1;
        match self.fifo.back_mut() {
            Some(b) if b.d == d && b.last.checked_add(1) == Some(id) => b.last = id,
            Some(b) if b.d > d => self.heap.push(Reverse((d, id))),
            _ => self.fifo.push_back(Run {
                d,
                first: id,
                last: id,
            }),
        }
    }

    /// The call `id` (deadline `d`) completed; `pending` no longer holds it.
    /// `keep` tells whether a call is still pending with a deadline.
    fn remove(&mut self, d: Instant, id: u64, keep: impl Fn(u64, Instant) -> bool) {
        self.live = self.live.saturating_sub(1);
        match self.fifo.front_mut() {
            Some(f) if f.d == d && f.first == id => {
                if f.first == f.last {
                    self.fifo.pop_front();
                } else {
                    f.first += 1;
                }
                self.held -= 1;
                return;
            }
            _ => {}
        }
        if self.heap.peek() == Some(&Reverse((d, id))) {
            self.heap.pop();
            self.held -= 1;
        } else if self.held > 2 * self.live + 32 {
            self.rebuild(keep);
        }
    }

    /// Drops every stale id (runs split where ids left them).
    #[cold]
    fn rebuild(&mut self, keep: impl Fn(u64, Instant) -> bool) {
        let old = std::mem::take(&mut self.fifo);
        self.held = 0;
        for r in old {
            for id in r.first..=r.last {
                if keep(id, r.d) {
                    self.held += 1;
                    match self.fifo.back_mut() {
                        Some(b) if b.d == r.d && b.last + 1 == id => b.last = id,
                        _ => self.fifo.push_back(Run {
                            d: r.d,
                            first: id,
                            last: id,
                        }),
                    }
                }
            }
        }
        self.heap.retain(|Reverse((d, id))| keep(*id, *d));
        self.held += self.heap.len();
    }

    /// The earliest entry (possibly stale: then an early wake-up finds nothing).
    fn first(&self) -> Option<Instant> {
        let a = self.fifo.front().map(|e| e.d);
        let b = self.heap.peek().map(|Reverse((d, _))| *d);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The FIFO's front id, taken out of its run.
    fn pop_front_id(&mut self) -> Option<(Instant, u64)> {
        let f = self.fifo.front_mut()?;
        let e = (f.d, f.first);
        if f.first == f.last {
            self.fifo.pop_front();
        } else {
            f.first += 1;
        }
        self.held -= 1;
        Some(e)
    }

    fn pop_heap(&mut self) -> Option<(Instant, u64)> {
        let Reverse(e) = self.heap.pop()?;
        self.held -= 1;
        Some(e)
    }

    fn pop_due(&mut self, now: Instant) -> Option<(Instant, u64)> {
        let a = self.fifo.front().map(|r| (r.d, r.first));
        let b = self.heap.peek().map(|Reverse(e)| *e);
        match (a, b) {
            (Some(a), Some(b)) if b < a => (b.0 <= now).then(|| self.pop_heap()).flatten(),
            (Some(a), _) => (a.0 <= now).then(|| self.pop_front_id()).flatten(),
            (None, Some(b)) => (b.0 <= now).then(|| self.pop_heap()).flatten(),
            (None, None) => None,
        }
    }

    fn clear(&mut self) {
        self.fifo = VecDeque::new();
        self.heap = BinaryHeap::new();
        self.live = 0;
        self.held = 0;
    }
}

struct Pending {
    deadline: Option<Instant>,
    /// Batch calls: the checksum of every staged frame, and the checksums the
    /// answer carried (`__@batchsum`); boxed, so the entry of a plain call
    /// stays small (it moves into and out of the pending table).
    batch: Option<Box<(Sums, Option<Sums>)>>,
    /// The runtime's completion for this call: kept here, in the one map of
    /// pending calls, and handed back with the call's [`Event::Reply`]
    /// through [`Session::take_waiter`] (the runtime keeps no map of its own).
    waiter: Option<Waiter>,
}

/// What the runtime runs when a call completes (see [`Pending::waiter`]).
pub(crate) type Waiter = crate::net::Completion;

/// Checksums of a batch's staged frames.
type Sums = Vec<[u8; 16]>;

/// A BatchStream batch being staged.
struct Staged {
    cmd: Text,
    frames: Vec<DataFrame>,
    bytes: usize,
    /// When its last stage arrived.
    touched: Instant,
}

/// A BigStream we send.
struct Outgoing {
    cmd: Text,
    data: Bytes,
    next: u64,
    acked: u64,
}

/// A BigStream we receive: the next offset expected.
struct Incoming {
    next: u64,
    total: u64,
}

/// Where a session's codec finds its wire [`Config`](zs_wire::Config): in
/// the [`SessionConfig`] that every session of an endpoint shares, so that
/// the decoder and the encoder each hold a pointer (8 bytes) instead of a
/// copy of the configuration (about 70 bytes each).
#[derive(Debug, Clone)]
struct SharedWire(std::sync::Arc<SessionConfig>);

impl AsRef<zs_wire::Config> for SharedWire {
    #[inline(always)]
    fn as_ref(&self) -> &zs_wire::Config {
        &self.0.wire
    }
}

/// One end of a connection: framing over a plaintext link, request ids,
/// timeouts. See the module docs.
///
/// Poll order in short (in full, with the reasons, in the module docs of
/// `zs-core/src/session.rs`, a private module): [`Session::open_link`] first;
/// after every input ([`Session::handle_input`]), timer
/// ([`Session::handle_timeout`]) or application call, drain
/// [`Session::poll_event`], then send [`Session::write_output`], then re-arm
/// [`Session::poll_timeout`], then check [`Session::input_blocked`] (stop
/// reading until the output went out, then [`Session::resume_input`]).
pub struct Session {
    codec: FrameCodec<SharedWire>,
    /// Shared by every session of an endpoint (one pointer per session).
    cfg: std::sync::Arc<SessionConfig>,
    /// Input held back undecoded (output waiting, or a resume request
    /// paused decoding); empty otherwise: input is decoded in the caller's
    /// buffer.
    plain: BytesMut,
    /// Encoded frames waiting for [`Session::write_output`].
    out: BytesMut,
    /// Output that goes before `out`: frame heads and the large payloads
    /// sent apart from them (see [`Session::write_output_parts`]); empty
    /// unless a frame with a payload of `PAYLOAD_APART` bytes or more is
    /// waiting.
    parts: Vec<Bytes>,
    /// The current link's channel binding (StableIO resume proofs).
    binding: Option<[u8; 32]>,
    scratch: BytesMut,
    events: VecDeque<Event>,
    next_id: u64,
    pending: IdTable<Pending>,
    deadlines: Deadlines,
    batches: LazyMap<u64, Staged>,
    /// What this session holds of the endpoint's budgets (bytes staged in
    /// `batches` included), and the endpoint's batch filter.
    charge: Charge,
    /// Output bytes queued since the last `write_output`.
    out_pending: usize,
    /// Decoding stopped with input left because output is waiting.
    blocked: bool,
    /// A non-link frame was received (a `__@stable` request must come first).
    got_frames: bool,
    /// The last input error came from the link (record layer or outer framing),
    /// not from the peer's authenticated content.
    link_fault: bool,
    sending: LazyMap<u64, Outgoing, BuildHasherDefault<IdHasher>>,
    receiving: LazyMap<u64, Incoming>,
    dead: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    /// StableIO state, once negotiated (or requested by a client); boxed so a
    /// plain session does not pay for it.
    stable: Option<Box<Stable>>,
    /// Server: answers `__@stable` / `__@resume` requests.
    server_side: bool,
    /// Server: credentials to hand out if the peer asks for StableIO.
    stable_offer: Option<(u64, [u8; SECRET_LEN])>,
    /// False while a stable session has no connection.
    link_up: bool,
    /// The peer closed in an orderly way (a stable session then ends too).
    peer_closed: bool,
    /// A resume request stopped input processing.
    paused: bool,
    /// Server: checksums of completed batches, sent with their answer.
    batch_sums: LazyMap<u64, Vec<[u8; 16]>>,
    /// The waiters of completed calls, in the order of their
    /// [`Event::Reply`] events (see [`Session::take_waiter`]).
    waiters: VecDeque<(u64, Waiter)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("online", &self.link_up)
            .field("pending", &self.pending.len())
            .field("dead", &self.dead)
            .finish()
    }
}

impl Session {
    /// A session; call [`Session::open_link`] once its connection is up.
    pub fn new(cfg: SessionConfig) -> Session {
        Session::with_config(std::sync::Arc::new(cfg))
    }

    /// [`Session::new`] with a configuration shared by many sessions (the
    /// runtime gives each of its sessions the same one).
    pub fn with_config(cfg: std::sync::Arc<SessionConfig>) -> Session {
        Session {
            codec: {
                let mut c = FrameCodec::new(SharedWire(cfg.clone()));
                c.decoder.reserve_whole_frames_up_to(WHOLE_FRAME_RESERVE);
                c.decoder.bulk_room(WHOLE_FRAME_RESERVE);
                c
            },
            cfg,
            plain: BytesMut::new(),
            out: BytesMut::new(),
            parts: Vec::new(),
            binding: None,
            scratch: BytesMut::new(),
            events: VecDeque::new(),
            next_id: 1,
            pending: IdTable::default(),
            deadlines: Deadlines::default(),
            batches: LazyMap::default(),
            charge: Charge::new(Budgets::shared_unlimited()),
            out_pending: 0,
            blocked: false,
            got_frames: false,
            link_fault: false,
            sending: LazyMap::default(),
            receiving: LazyMap::default(),
            dead: None,
            bytes_in: 0,
            bytes_out: 0,
            stable: None,
            server_side: false,
            stable_offer: None,
            link_up: true,
            peer_closed: false,
            paused: false,
            batch_sums: LazyMap::default(),
            waiters: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// True after a fatal error, close or [`Session::connection_lost`].
    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }

    /// Calls waiting for an answer.
    pub fn pending_calls(&self) -> usize {
        self.pending.len()
    }

    /// Plaintext bytes received and sent (frames, before encryption).
    pub fn byte_counts(&self) -> (u64, u64) {
        (self.bytes_in, self.bytes_out)
    }

    /// The connection under this session is up, secured by the layer under
    /// it: `security` is what that layer reported
    /// ([`zs_io::Connection::security_info`]). Reports [`Event::Established`];
    /// a resuming StableIO client presents its credentials, bound to this
    /// link's channel binding.
    pub fn open_link(&mut self, security: &zs_io::SecurityInfo, now: Instant) -> Result<()> {
        if let Some(why) = &self.dead {
            return Err(Error::ConnectionLost(why.clone()));
        }
        self.binding = security.channel_binding;
        self.events.push_back(Event::Established {
            suite: security.suite.clone(),
            psk_identity: security.psk_identity.clone(),
        });
        let r = self.on_link_established(now);
        if let Err(e) = &r {
            self.connection_lost(&e.to_string());
        }
        r
    }

    /// Feeds plaintext received from the transport: whole frames are taken
    /// from the front of `data` and decoded as slices of it (no copy); a
    /// partial frame stays in `data` for the caller to append the next bytes
    /// to (the zs-io convention), unless it is longer than 1 MiB: the session
    /// then takes it over (see `WHOLE_FRAME_RESERVE`), so the caller never
    /// holds more than that of a frame. When decoding stops with input left (too
    /// much output pending, or a resume request), the session takes the rest
    /// of `data` (a split, no copy) and goes on with it at
    /// [`Session::resume_input`].
    ///
    /// An error is fatal: the session is dead, every pending call has
    /// completed with [`Error::ConnectionLost`], and the caller should close
    /// the connection (after sending what [`Session::write_output`] still
    /// yields).
    pub fn handle_input(&mut self, data: &mut BytesMut, now: Instant) -> Result<()> {
        if let Some(why) = &self.dead {
            data.clear();
            return Err(Error::ConnectionLost(why.clone()));
        }
        if !self.link_up {
            data.clear();
            return Ok(()); // bytes of a link already given up: ignored
        }
        let r = if self.plain.is_empty() {
            let before = data.len();
            let r = self.decode(data, now);
            // A partial frame longer than `WHOLE_FRAME_RESERVE` is taken
            // over (see there), never left with the caller.
            if self.blocked || self.paused || data.len() > WHOLE_FRAME_RESERVE {
                self.plain = data.split();
            }
            // (A partial frame left with the caller is counted when it is
            // consumed.)
            self.bytes_in += (before - data.len()) as u64;
            r
        } else {
            // Input held back earlier comes first (reading is paused while
            // input is blocked), or the rest of a frame taken over.
            self.bytes_in += data.len() as u64;
            self.append_plain(data);
            data.clear();
            let r = self.decode_plain(now);
            if !self.blocked
                && !self.paused
                && !self.plain.is_empty()
                && self.plain.len() <= WHOLE_FRAME_RESERVE
            {
                // A short partial frame goes back to the caller (its next
                // reads complete it in place again); counted when consumed.
                // Copied out (at most 1 MiB, once per long frame), so the
                // long frame's buffer is not kept on as the caller's read
                // buffer (the layer reuses a read buffer it was handed).
                self.bytes_in -= self.plain.len() as u64;
                *data = BytesMut::from(&self.plain[..]);
                self.plain = BytesMut::new();
            }
            r
        };
        if let Err(e) = &r {
            self.input_failed(e);
        }
        r
    }

    /// Whether the runtime may serve console requests at the front of the
    /// next input from their borrowed bytes before [`Session::handle_input`]
    /// sees the rest (zs-core's `console_ref` path): the session would
    /// decode them now and only queue them (a live link without StableIO
    /// whose peer already sent frames, no input held back or paused, output
    /// under its cap, no event waiting to be taken). Those bytes are then
    /// reported with [`Session::count_borrowed_input`].
    pub(crate) fn takes_borrowed_input(&self) -> bool {
        self.dead.is_none()
            && self.link_up
            && self.stable.is_none()
            && self.got_frames
            && self.plain.is_empty()
            && !self.paused
            && !self.blocked
            && self.events.is_empty()
            && self.out_pending <= self.cfg.max_pending_output
    }

    /// The waiter of pending call `id`, taken for an answer the runtime hands
    /// on from its borrowed bytes (see [`Session::takes_borrowed_input`]),
    /// if the call is a plain one (not a batch, whose answer is verified)
    /// and `borrows` accepts its waiter; the call completes as
    /// [`Session::complete`] completes it, without an [`Event`]. `None`,
    /// and nothing changed, otherwise.
    pub(crate) fn take_borrowed_answer(
        &mut self,
        id: u64,
        borrows: impl FnOnce(&Waiter) -> bool,
    ) -> Option<Waiter> {
        match self.pending.get(id) {
            Some(Pending {
                batch: None,
                waiter: Some(w),
                ..
            }) if borrows(w) => {}
            _ => return None,
        }
        if !self.sending.is_empty() {
            self.sending.remove(&id);
        }
        let p = self.pending.remove(id)?;
        if let Some(d) = p.deadline {
            let pending = &self.pending;
            self.deadlines.remove(d, id, |id, d| {
                pending.get(id).is_some_and(|p| p.deadline == Some(d))
            });
        }
        p.waiter
    }

    /// `n` bytes of whole frames were served from their borrowed bytes (see
    /// [`Session::takes_borrowed_input`]).
    pub(crate) fn count_borrowed_input(&mut self, n: usize) {
        self.bytes_in += n as u64;
    }

    fn input_failed(&mut self, e: &Error) {
        let why = e.to_string();
        if std::mem::take(&mut self.link_fault) {
            // Survived by a stable session; otherwise the same as connection_lost.
            self.link_lost(&why);
        } else {
            self.connection_lost(&why);
        }
    }

    /// Whether received input waits undecoded because too much output is
    /// pending ([`SessionConfig::max_pending_output`]): take the output, let
    /// the transport drain it, then call [`Session::resume_input`]. Meanwhile
    /// stop reading from the transport.
    pub fn input_blocked(&self) -> bool {
        self.blocked && self.dead.is_none() && self.link_up
    }

    /// Continues decoding input that [`Session::input_blocked`] held back
    /// (errors as for [`Session::handle_input`]).
    pub fn resume_input(&mut self, now: Instant) -> Result<()> {
        if !self.input_blocked() {
            return Ok(());
        }
        let r = self.decode_plain(now);
        if let Err(e) = &r {
            self.input_failed(e);
        }
        r
    }

    /// Set once the link must be dropped because the peer lets StableIO
    /// records pile up unacknowledged beyond every buffer; the runtime closes
    /// the connection (the session itself survives, offline).
    pub fn take_link_failure(&mut self) -> Option<String> {
        self.stable.as_mut()?.link_failure.take()
    }

    /// Charges what this session holds (StableIO records, staged batches) to
    /// `budgets`, shared by every session of an endpoint; batches are staged
    /// only for the commands its [`Budgets::with_batch_filter`] accepts
    /// (others are answered [`code::UNKNOWN_COMMAND`] at the first stage).
    pub fn set_budgets(&mut self, budgets: std::sync::Arc<Budgets>) {
        self.charge.rebind(budgets);
    }

    /// Bytes this session holds for its peer: StableIO records kept or parked
    /// and staged batch frames (what an offline session costs).
    pub fn held_bytes(&self) -> usize {
        self.stable
            .as_ref()
            .map_or(0, |s| s.unacked_bytes + s.parked_bytes)
            + self.charge.batch()
    }

    fn sync_charge(&mut self) {
        let stable = self
            .stable
            .as_ref()
            .map_or(0, |s| s.unacked_bytes + s.parked_bytes);
        let batch = self.charge.batch();
        self.charge.set(stable, batch);
    }

    /// Server: whether `proof` (from [`Event::ResumeRequest`]) was made with
    /// `secret` over this link's channel binding (constant time).
    pub fn verify_resume(&self, secret: &[u8; SECRET_LEN], proof: &[u8; 32]) -> bool {
        match self.binding {
            Some(b) => crate::stable::verify_proof(secret, &b, proof),
            None => false,
        }
    }

    /// Appends `data` to `plain`, growing it by doubling but never past
    /// what the frame in it can need (`max_frame` and its header) plus one
    /// read and zs-wire's 64 KiB step: a peer that sends a frame of
    /// `max_frame` slowly makes the session hold about that much, not twice.
    fn append_plain(&mut self, data: &[u8]) {
        const STEP: usize = 64 << 10;
        let need = self.plain.len() + data.len();
        if self.plain.capacity() < need + STEP {
            let cap = (2 * self.plain.len()).min(self.cfg.wire.limits.max_frame + 16);
            let mut grown = BytesMut::with_capacity(cap.max(need) + STEP);
            grown.extend_from_slice(&self.plain);
            self.plain = grown;
        }
        self.plain.extend_from_slice(data);
    }

    /// Decodes the input held back in `plain`.
    fn decode_plain(&mut self, now: Instant) -> Result<()> {
        let mut plain = std::mem::take(&mut self.plain);
        let r = self.decode(&mut plain, now);
        if self.plain.is_empty() {
            self.plain = plain;
        } else {
            // (A resume moved other input in meanwhile: ours came first.)
            plain.extend_from_slice(&self.plain);
            self.plain = plain;
        }
        if self.plain.is_empty() {
            self.plain = BytesMut::new();
        }
        r
    }

    /// Decodes and handles the whole frames at the front of `buf`.
    fn decode(&mut self, buf: &mut BytesMut, now: Instant) -> Result<()> {
        self.blocked = false;
        while !self.paused {
            if self.out_pending > self.cfg.max_pending_output {
                self.blocked = !buf.is_empty();
                break;
            }
            let frame = match self.codec.decode_recoverable(buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                // Outside StableIO a malformed body costs only that request
                // (the frame was consumed; the stream is still in step).
                Err(DecodeError::BadBody { id, error, .. }) if self.stable.is_none() => {
                    self.bad_body(id, &error, now)?;
                    continue;
                }
                Err(e) => return Err(e.into_error().into()),
            };
            self.on_frame(frame, false, now)?;
        }
        Ok(())
    }

    /// A well-framed request with a malformed body: answered `Error 400`
    /// (a one-way message is dropped), and the session carries on.
    fn bad_body(
        &mut self,
        id: Option<u64>,
        error: &zs_wire::WireError,
        now: Instant,
    ) -> Result<()> {
        tracing::debug!(?id, %error, "malformed frame body");
        match id {
            Some(id) if id != 0 => self.send_frame(
                &Frame::Error {
                    id,
                    code: code::BAD_REQUEST,
                    message: Text::from(format!("malformed request: {error}")),
                },
                now,
            ),
            _ => Ok(()),
        }
    }

    /// A (new) link finished its handshake: a resuming client presents its
    /// credentials.
    fn on_link_established(&mut self, now: Instant) -> Result<()> {
        let binding = self.binding;
        let Some(st) = &mut self.stable else {
            return Ok(());
        };
        if st.client && st.phase == Phase::Resuming {
            let Some(binding) = binding else {
                return Err(Error::Config(
                    "the security layer offers no channel binding: StableIO cannot resume".into(),
                ));
            };
            let proof = crate::stable::resume_proof(&st.secret, &binding);
            let data = DataFrame::new()
                .with(st.sid)
                .with(Bytes::copy_from_slice(&proof))
                .with(st.delivered);
            st.mark_acked();
            self.send_link(&control(CTL_RESUME, data), now)?;
        }
        Ok(())
    }

    /// Link-level frames (never numbered). `Ok(None)` when handled.
    fn on_link_frame(
        &mut self,
        frame: Frame,
        wrapped: bool,
        now: Instant,
    ) -> Result<Option<Frame>> {
        if !is_link_frame(&frame) {
            return Ok(Some(frame));
        }
        if wrapped {
            return Err(Error::Protocol(format!(
                "{:?} frame inside a StableIO record",
                frame.kind()
            )));
        }
        match frame {
            Frame::SeqData { seq, payload } => self.on_seq_data(seq, payload, now)?,
            Frame::SeqAck { seq } | Frame::SeqKeepalive { acked: seq } => {
                self.on_seq_ack(seq, now)?
            }
            Frame::SeqResend { from, to } => self.on_seq_resend(from, to, now)?,
            Frame::SeqEcho { nonce } => self.send_link(&Frame::SeqEchoReply { nonce }, now)?,
            Frame::SeqEchoReply { .. } => {}
            Frame::Control { cmd, data, .. } if cmd.as_str() == CTL_STABLE => {
                self.on_ctl_stable(data, now)?
            }
            Frame::Control { cmd, .. } if cmd.as_str() == CTL_CLOSE => self.on_ctl_close(),
            Frame::Control { data, .. } => self.on_ctl_resume(data, now)?,
            _ => {}
        }
        Ok(None)
    }

    fn stable_mut(&mut self, what: &str) -> Result<&mut Stable> {
        match &mut self.stable {
            Some(st) if st.phase != Phase::Down => Ok(st),
            _ => Err(Error::Protocol(format!(
                "{what} outside a StableIO session"
            ))),
        }
    }

    fn on_seq_data(&mut self, seq: u64, payload: Bytes, now: Instant) -> Result<()> {
        let every = self.cfg.stable_ack_every.max(1);
        let delay = self.cfg.stable_ack_delay;
        let ack_bytes = (self.cfg.stable_max_unacked / 4).max(1);
        let st = self.stable_mut("SeqData")?;
        if st.client && st.phase == Phase::Resuming {
            return Err(Error::Protocol(
                "SeqData before the resume was confirmed".into(),
            ));
        }
        if seq <= st.delivered {
            // A duplicate after a resume: already delivered. Re-acknowledge so the
            // peer frees it.
            if st.ack_due.is_none() {
                st.ack_due = Some(now + delay);
            }
            return Ok(());
        }
        if seq > st.delivered.saturating_add(1) {
            // A gap: ask once for what is missing up to here; this record is
            // dropped and comes again with the others.
            let from = st.delivered.max(st.resend_asked).saturating_add(1);
            if from <= seq {
                st.resend_asked = seq;
                return self.send_link(&Frame::SeqResend { from, to: seq }, now);
            }
            return Ok(());
        }
        st.delivered = seq;
        st.in_since_ack += payload.len();
        // Ack every `every` records, and as soon as a quarter of a resend
        // buffer arrived: large records must not wait for the timer while the
        // sender's buffer fills.
        if st.delivered - st.acked_out >= every || st.in_since_ack >= ack_bytes {
            st.mark_acked();
            self.send_link(&Frame::SeqAck { seq }, now)?;
        } else if st.ack_due.is_none() {
            st.ack_due = Some(now + delay);
        }
        match Frame::decode_recoverable(&payload, &self.cfg.wire) {
            Ok(inner) => self.on_frame(inner, true, now),
            Err(DecodeError::BadBody { id, error, .. }) => self.bad_body(id, &error, now),
            Err(e) => Err(e.into_error().into()),
        }
    }

    fn on_seq_ack(&mut self, seq: u64, now: Instant) -> Result<()> {
        let st = self.stable_mut("SeqAck")?;
        let before = st.unacked_bytes;
        if !st.on_ack(seq) {
            return Err(Error::Protocol(format!(
                "StableIO ack of record {seq}, but only {} were sent",
                st.next_seq - 1
            )));
        }
        if st.unacked_bytes < before {
            self.sync_charge();
            self.unpark(now)?;
            if !self.sending.is_empty() {
                self.pump_all(now)?;
            }
        }
        Ok(())
    }

    fn on_seq_resend(&mut self, from: u64, to: u64, now: Instant) -> Result<()> {
        let st = self.stable_mut("SeqResend")?;
        if to >= st.next_seq {
            return Err(Error::Protocol(format!(
                "StableIO resend of record {to}, but only {} were sent",
                st.next_seq - 1
            )));
        }
        // Each record at most once per link, and only what the peer has not
        // acknowledged: repeated or overlapping requests cost nothing.
        let from = from
            .max(st.peer_acked.saturating_add(1))
            .max(st.resent_to.saturating_add(1));
        let to = to.min(st.sent);
        if from > to {
            return Ok(());
        }
        st.resent_to = to;
        let again: Vec<(u64, Bytes)> = st
            .unacked
            .iter()
            .filter(|(s, _)| *s >= from && *s <= to)
            .cloned()
            .collect();
        for (seq, payload) in again {
            self.send_link(&Frame::SeqData { seq, payload }, now)?;
        }
        Ok(())
    }

    fn on_ctl_stable(&mut self, data: DataFrame, now: Instant) -> Result<()> {
        let server = self.server_side;
        match &mut self.stable {
            // Server: a client asks for StableIO (once, first thing).
            None if server && self.got_frames => Err(Error::Protocol(
                "__@stable must be the first frame after the handshake".into(),
            )),
            None if server => match self.stable_offer.take() {
                Some((sid, secret)) => {
                    self.stable = Some(Box::new(Stable::new(false, Phase::Online, sid, secret)));
                    self.events.push_back(Event::StableReady { session: sid });
                    let data = DataFrame::new()
                        .with(sid)
                        .with(Bytes::copy_from_slice(&secret));
                    self.send_link(&control(CTL_STABLE, data), now)
                }
                None => self.send_link(
                    &Frame::Error {
                        id: 0,
                        code: code::NOT_SUPPORTED,
                        message: Text::from("StableIO is not enabled on this server"),
                    },
                    now,
                ),
            },
            // Client: the server's credentials.
            Some(st) if st.client && st.phase == Phase::Negotiating => {
                let mut r = data.reader();
                let sid = r.read_u64()?;
                let secret = r.read_slice()?;
                if secret.len() != SECRET_LEN {
                    return Err(Error::Protocol("StableIO secret of the wrong size".into()));
                }
                st.sid = sid;
                st.secret.copy_from_slice(secret);
                st.phase = Phase::Online;
                self.events.push_back(Event::StableReady { session: sid });
                Ok(())
            }
            _ => Err(Error::Protocol("unexpected __@stable control".into())),
        }
    }

    fn on_ctl_resume(&mut self, data: DataFrame, now: Instant) -> Result<()> {
        let mut r = data.reader();
        let server = self.server_side;
        match &mut self.stable {
            // Server (fresh session): a resume request; pause until the runtime
            // decides.
            None if server => {
                let session = r.read_u64()?;
                let s = r.read_slice()?;
                let delivered = r.read_u64()?;
                let mut proof = [0u8; 32];
                if s.len() == proof.len() {
                    proof.copy_from_slice(s);
                }
                self.paused = true;
                self.events.push_back(Event::ResumeRequest {
                    session,
                    proof,
                    delivered,
                });
                Ok(())
            }
            // Client: the server confirms with the last record it received
            // and the session's next resume secret.
            Some(st) if st.client && st.phase == Phase::Resuming => {
                let delivered = r.read_u64()?;
                let secret = r.read_slice()?;
                if secret.len() != SECRET_LEN {
                    return Err(Error::Protocol("StableIO secret of the wrong size".into()));
                }
                st.secret.copy_from_slice(secret);
                self.go_online(delivered, now)
            }
            _ => Err(Error::Protocol("unexpected __@resume control".into())),
        }
    }

    /// Both sides after a resume: the peer has every record up to
    /// `peer_delivered`; send the rest again, in order.
    fn go_online(&mut self, peer_delivered: u64, now: Instant) -> Result<()> {
        let Some(st) = &mut self.stable else {
            return Ok(());
        };
        if !st.on_ack(peer_delivered) {
            return Err(Error::Protocol(format!(
                "resume acknowledges record {peer_delivered}, but only {} were sent",
                st.next_seq - 1
            )));
        }
        st.phase = Phase::Online;
        st.sent = st.peer_acked;
        st.resend_asked = st.delivered;
        self.sync_charge();
        let Some(st) = &mut self.stable else {
            return Ok(());
        };
        let again: Vec<(u64, Bytes)> = st.unacked.iter().cloned().collect();
        let resent = again.len();
        for (seq, payload) in again {
            self.send_link(&Frame::SeqData { seq, payload }, now)?;
            if let Some(st) = &mut self.stable {
                st.sent = seq;
            }
        }
        if let Some(st) = &mut self.stable {
            // What was just sent again counts as this link's one resend.
            st.resent_to = st.sent;
        }
        self.events.push_back(Event::Resumed { resent });
        self.unpark(now)?;
        self.pump_all(now)
    }

    fn on_frame(&mut self, frame: Frame, wrapped: bool, now: Instant) -> Result<()> {
        // The common frames of a session without StableIO (a call and its
        // answer) go straight to their request or completion; the general
        // path below makes the same moves after its checks, none of which
        // applies to them outside StableIO.
        let frame = match frame {
            Frame::Console { id, cmd, text } if self.stable.is_none() => {
                self.got_frames = true;
                self.push_request(Request::Console { id, cmd, text });
                return Ok(());
            }
            Frame::ConsoleResponse { id, text } if self.stable.is_none() => {
                self.got_frames = true;
                self.complete(id, Ok(Reply::Text(text)));
                return Ok(());
            }
            frame => frame,
        };
        // Unnumbered errors that answer a StableIO request.
        if let (
            Frame::Error {
                id: 0,
                code,
                message,
            },
            false,
        ) = (&frame, wrapped)
        {
            if let Some(st) = &self.stable {
                if st.client && st.phase == Phase::Negotiating && *code == code::NOT_SUPPORTED {
                    self.stable = None;
                    let message = message.as_str().to_owned();
                    self.events.push_back(Event::StableRefused { message });
                    return Ok(());
                }
                if st.client && st.phase == Phase::Resuming && *code == code::GONE {
                    let why = format!("resume refused: {}", message.as_str());
                    self.end_stable(&why);
                    return Ok(());
                }
            }
        }
        // Application frames (the common case) skip the link layer without
        // moving through its `Option` (two copies of a 120-byte frame).
        let frame = if is_link_frame(&frame) {
            match self.on_link_frame(frame, wrapped, now)? {
                Some(f) => f,
                None => return Ok(()),
            }
        } else {
            frame
        };
        self.got_frames = true;
        if !wrapped
            && self.stable.is_some()
            && !matches!(
                frame,
                Frame::Keepalive | Frame::Echo { .. } | Frame::EchoReply { .. }
            )
        {
            return Err(Error::Protocol(format!(
                "unnumbered {:?} frame in a StableIO session",
                frame.kind()
            )));
        }
        match frame {
            Frame::Console { id, cmd, text } => {
                self.push_request(Request::Console { id, cmd, text });
            }
            Frame::Stream { id, cmd, data } => {
                self.push_request(Request::Stream { id, cmd, data });
            }
            Frame::DirectConsole { cmd, text } => {
                self.push_request(Request::DirectConsole { cmd, text });
            }
            Frame::DirectStream { cmd, data } => {
                self.push_request(Request::DirectStream { cmd, data });
            }
            Frame::CompleteBuffer { cmd, data } => {
                if data.len() > self.cfg.max_complete_buffer {
                    let message = format!(
                        "CompleteBuffer {:?} of {} bytes exceeds the receiver limit of {} bytes",
                        cmd.as_str(),
                        data.len(),
                        self.cfg.max_complete_buffer
                    );
                    tracing::warn!(%message, "refused CompleteBuffer");
                    self.send_frame(
                        &Frame::Error {
                            id: 0,
                            code: code::TOO_LARGE,
                            message: Text::from(message),
                        },
                        now,
                    )?;
                } else {
                    self.push_request(Request::CompleteBuffer { cmd, data });
                }
            }
            Frame::BatchStream {
                id,
                cmd,
                last,
                data,
            } => self.on_batch(id, cmd, last, data, now)?,
            Frame::ConsoleResponse { id, text } => self.complete(id, Ok(Reply::Text(text))),
            Frame::StreamResponse { id, data } => self.complete(id, Ok(Reply::Data(data))),
            Frame::Error {
                id: 0,
                code,
                message,
            } => self.events.push_back(Event::PeerError {
                code,
                message: message.as_str().to_owned(),
            }),
            Frame::Error { id, code, message } => self.complete(
                id,
                Err(Error::Remote {
                    code,
                    message: message.as_str().to_owned(),
                }),
            ),
            Frame::Signal { name, code } => self.events.push_back(Event::Signal { name, code }),
            Frame::Keepalive | Frame::EchoReply { .. } => {}
            Frame::Echo { id, payload } => {
                self.send_frame(&Frame::EchoReply { id, payload }, now)?
            }
            Frame::BigStream {
                id,
                cmd,
                offset,
                total,
                last,
                data,
            } => self.on_big_chunk(id, cmd, offset, total, last, data, now)?,
            Frame::BigStreamAck { id, offset } => self.on_big_ack(id, offset, now)?,
            Frame::Control { id: 0, cmd, .. }
                if cmd.as_str() == CTL_BATCHSUM && self.server_side =>
            {
                return Err(Error::Protocol(
                    "__@batchsum is sent by servers only".into(),
                ))
            }
            Frame::Control { id: 0, cmd, data } if cmd.as_str() == CTL_BATCHSUM => {
                self.on_batchsum(&data)?
            }
            Frame::Control { id, .. } if id != 0 => {
                self.send_frame(
                    &Frame::Error {
                        id,
                        code: code::NOT_SUPPORTED,
                        message: Text::from("frame kind not served by this endpoint"),
                    },
                    now,
                )?;
            }
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected {:?} frame",
                    other.kind()
                )))
            }
        }
        Ok(())
    }

    fn on_batch(
        &mut self,
        id: u64,
        cmd: Text,
        last: bool,
        data: DataFrame,
        now: Instant,
    ) -> Result<()> {
        let refuse = |s: &mut Session, code: u32, message: String| {
            s.drop_batch(id);
            s.send_frame(
                &Frame::Error {
                    id,
                    code,
                    message: Text::from(message),
                },
                now,
            )
        };
        if !self.batches.contains_key(&id) {
            if !self.charge.budgets().batch_known(cmd.as_str()) {
                let m = format!("no batch command {:?}", cmd.as_str());
                return refuse(self, code::UNKNOWN_COMMAND, m);
            }
            if self.batches.len() >= self.cfg.max_open_batches {
                let m = format!("more than {} open batches", self.cfg.max_open_batches);
                return refuse(self, code::TOO_MANY, m);
            }
        }
        let size = data.encoded_len();
        let staged = self.charge.batch();
        if staged + size > self.cfg.max_batch_bytes || !self.charge.batch_fits(size) {
            let m = format!(
                "batch stage of {size} bytes exceeds the staging budget ({staged} bytes staged, limit {} per session)",
                self.cfg.max_batch_bytes
            );
            return refuse(self, code::TOO_LARGE, m);
        }
        let entry = self.batches.entry(id).or_insert_with(|| Staged {
            cmd: cmd.clone(),
            frames: Vec::new(),
            bytes: 0,
            touched: now,
        });
        if entry.cmd != cmd {
            return refuse(self, code::BAD_REQUEST, "batch changed its command".into());
        }
        if entry.frames.len() >= self.cfg.max_batch_frames {
            let m = format!("batch exceeds {} frames", self.cfg.max_batch_frames);
            return refuse(self, code::TOO_LARGE, m);
        }
        entry.frames.push(data);
        entry.bytes += size;
        entry.touched = now;
        let mut staged = staged + size;
        if last {
            if let Some(b) = self.batches.remove(&id) {
                staged -= b.bytes;
                if self.batch_sums.len() < MAX_BATCH_SUMS {
                    self.batch_sums
                        .insert(id, b.frames.iter().map(batch_checksum).collect());
                }
                self.push_request(Request::Batch {
                    id,
                    cmd: b.cmd,
                    frames: b.frames,
                });
            }
        }
        self.set_batch_bytes(staged);
        Ok(())
    }

    fn drop_batch(&mut self, id: u64) {
        if let Some(b) = self.batches.remove(&id) {
            let staged = self.charge.batch() - b.bytes;
            self.set_batch_bytes(staged);
        }
    }

    /// Bytes staged in `batches` (kept as the session's batch charge).
    fn set_batch_bytes(&mut self, staged: usize) {
        let stable = self
            .stable
            .as_ref()
            .map_or(0, |s| s.unacked_bytes + s.parked_bytes);
        self.charge.set(stable, staged);
    }

    /// Drops batches idle for longer than [`SessionConfig::batch_idle_timeout`].
    fn expire_batches(&mut self, now: Instant) {
        let t = self.cfg.batch_idle_timeout;
        let idle: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, b)| now.saturating_duration_since(b.touched) >= t)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.drop_batch(id);
            tracing::debug!(batch = id, "dropping an idle batch");
            let _ = self.send_frame(
                &Frame::Error {
                    id,
                    code: code::TIMED_OUT,
                    message: Text::from(format!("batch idle for more than {t:?}: dropped")),
                },
                now,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_big_chunk(
        &mut self,
        id: u64,
        cmd: Text,
        offset: u64,
        total: u64,
        last: bool,
        data: Bytes,
        now: Instant,
    ) -> Result<()> {
        let end = offset.checked_add(data.len() as u64);
        let refuse = |s: &mut Session, code: u32, message: String| {
            if s.receiving.remove(&id).is_some() {
                // The handler may hold a partial body of it (H2).
                s.events.push_back(Event::BigAborted {
                    id,
                    cmd: cmd.clone(),
                });
            }
            s.send_frame(
                &Frame::Error {
                    id,
                    code,
                    message: Text::from(message),
                },
                now,
            )
        };
        if !self.receiving.contains_key(&id) {
            if self.receiving.len() >= self.cfg.max_big_streams {
                let m = format!("more than {} BigStreams at once", self.cfg.max_big_streams);
                return refuse(self, code::TOO_MANY, m);
            }
            self.receiving.insert(
                id,
                Incoming {
                    next: offset,
                    total,
                },
            );
        }
        let st = &self.receiving[&id];
        if offset != st.next
            || total != st.total
            || end.is_none_or(|e| e > total)
            || last != (end == Some(total))
        {
            let m = format!(
                "BigStream chunk out of order: offset {offset} (expected {}), {} bytes of {total}",
                st.next,
                data.len()
            );
            return refuse(self, code::BAD_REQUEST, m);
        }
        let end = end.unwrap_or(total);
        if last {
            self.receiving.remove(&id);
        } else if let Some(st) = self.receiving.get_mut(&id) {
            st.next = end;
        }
        // No BigStreamAck here: the registry acknowledges once the handler
        // accepted the chunk (D4).
        self.push_request(Request::BigChunk {
            id,
            cmd,
            offset,
            total,
            last,
            data,
        });
        Ok(())
    }

    fn on_big_ack(&mut self, id: u64, offset: u64, now: Instant) -> Result<()> {
        let Some(o) = self.sending.get_mut(&id) else {
            return Ok(()); // finished or failed transfer: a late ack
        };
        if offset > o.next {
            return Err(Error::Protocol(format!(
                "BigStream {id} acknowledged {offset} bytes but only {} were sent",
                o.next
            )));
        }
        if offset > o.acked {
            o.acked = offset;
            let total = o.data.len() as u64;
            self.events.push_back(Event::Progress {
                id,
                acked: offset,
                total,
            });
            if offset == total {
                self.sending.remove(&id);
                return Ok(());
            }
        }
        self.pump(id, now)
    }

    /// Sends chunks of transfer `id` while the window allows.
    fn pump(&mut self, id: u64, now: Instant) -> Result<()> {
        loop {
            let Some(o) = self.sending.get_mut(&id) else {
                return Ok(());
            };
            let total = o.data.len() as u64;
            if o.next >= total || o.next - o.acked >= self.cfg.big_window {
                return Ok(());
            }
            let start = o.next as usize;
            let end = (start + self.cfg.big_chunk.max(1)).min(total as usize);
            let cmd_len = o.cmd.len();
            if !self.stable_room(end - start + cmd_len + 48) {
                return Ok(()); // StableIO buffer full: an ack resumes the transfer
            }
            let Some(o) = self.sending.get_mut(&id) else {
                return Ok(());
            };
            o.next = end as u64;
            let frame = Frame::BigStream {
                id,
                cmd: o.cmd.clone(),
                offset: start as u64,
                total,
                last: end as u64 == total,
                data: o.data.slice(start..end),
            };
            self.send_frame(&frame, now)?;
        }
    }

    /// Sends `data[offset..]` as BigStream `cmd` and returns the call id; chunks
    /// go out while at most [`SessionConfig::big_window`] bytes are
    /// unacknowledged, [`Event::Progress`] reports acknowledgements, and the
    /// receiver's answer to the last chunk completes the call ([`Event::Reply`]).
    /// `offset` resumes an interrupted transfer (the receiver's handler sees
    /// chunks from there on).
    pub fn big_stream(
        &mut self,
        cmd: Text,
        data: Bytes,
        offset: u64,
        timeout: Option<Duration>,
        now: Instant,
    ) -> Result<u64> {
        self.big_stream_waiting(cmd, data, offset, timeout, now, &mut None)
    }

    /// [`Session::big_stream`] keeping the runtime's `waiter` with the call
    /// (taken from the option once the call started).
    pub(crate) fn big_stream_waiting(
        &mut self,
        cmd: Text,
        data: Bytes,
        offset: u64,
        timeout: Option<Duration>,
        now: Instant,
        waiter: &mut Option<Waiter>,
    ) -> Result<u64> {
        let total = data.len() as u64;
        if offset >= total && total > 0 || offset > total {
            return Err(Error::Config(format!(
                "resume offset {offset} is not inside the {total} bytes"
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        if total == 0 {
            let f = Frame::BigStream {
                id,
                cmd,
                offset: 0,
                total: 0,
                last: true,
                data,
            };
            self.send_frame(&f, now)?;
        } else {
            self.sending.insert(
                id,
                Outgoing {
                    cmd,
                    data,
                    next: offset,
                    acked: offset,
                },
            );
            if let Err(e) = self.pump(id, now) {
                self.sending.remove(&id);
                return Err(e);
            }
        }
        let deadline = timeout.map(|t| now + t);
        if let Some(d) = deadline {
            self.deadlines.insert(d, id);
        }
        self.pending.insert(
            id,
            Pending {
                deadline,
                batch: None,
                waiter: waiter.take(),
            },
        );
        Ok(id)
    }

    fn push_request(&mut self, r: Request) {
        self.events.push_back(Event::Request(r));
    }

    fn complete(&mut self, id: u64, result: Result<Reply>) {
        // Unknown ids are late answers to calls that already timed out: dropped.
        if !self.sending.is_empty() {
            self.sending.remove(&id);
        }
        if let Some(p) = self.pending.remove(id) {
            if let Some(d) = p.deadline {
                let pending = &self.pending;
                self.deadlines.remove(d, id, |id, d| {
                    pending.get(id).is_some_and(|p| p.deadline == Some(d))
                });
            }
            let result = match (p.batch.map(|b| *b), result) {
                (Some((want, got)), Ok(reply)) => {
                    verify_batch(&want, got.as_deref()).map(|_| reply)
                }
                (_, r) => r,
            };
            self.reply_event(id, result, p.waiter);
        }
    }

    /// Reports the outcome of call `id`, with its waiter (if any) queued in
    /// the same order.
    fn reply_event(&mut self, id: u64, result: Result<Reply>, waiter: Option<Waiter>) {
        self.events.push_back(Event::Reply { id, result });
        if let Some(w) = waiter {
            self.waiters.push_back((id, w));
        }
    }

    /// The runtime's waiter of call `id`, whose [`Event::Reply`] was just
    /// polled (waiters come out in the order of those events; a call made
    /// without one has none).
    pub(crate) fn take_waiter(&mut self, id: u64) -> Option<Waiter> {
        take_waiter_from(&mut self.waiters, id)
    }

    /// Moves every queued event, and the waiters queued with them, over to
    /// `events` and `waiters` (whose emptied buffers the session keeps: no
    /// allocation) when the events are only requests and call outcomes,
    /// what a busy connection's batch holds. The runtime then works through
    /// them after releasing its lock, taking each outcome's waiter with
    /// [`take_waiter_from`], instead of moving them out one by one under the
    /// lock. False, and nothing moved, when another kind of event waits.
    pub(crate) fn swap_plain_events(
        &mut self,
        events: &mut VecDeque<Event>,
        waiters: &mut VecDeque<(u64, Waiter)>,
    ) -> bool {
        if self.events.is_empty()
            || !self
                .events
                .iter()
                .all(|e| matches!(e, Event::Request(_) | Event::Reply { .. }))
        {
            return false;
        }
        events.clear();
        waiters.clear();
        std::mem::swap(&mut self.events, events);
        std::mem::swap(&mut self.waiters, waiters);
        true
    }

    fn on_batchsum(&mut self, data: &DataFrame) -> Result<()> {
        let mut r = data.reader();
        let id = r.read_u64()?;
        let flat = r.read_slice()?;
        if flat.len() % 16 != 0 {
            return Err(Error::Protocol("batch checksums of a wrong size".into()));
        }
        if let Some(Pending { batch: Some(b), .. }) = self.pending.get_mut(id) {
            let (want, got) = &mut **b;
            if flat.len() / 16 == want.len() {
                *got = Some(
                    flat.chunks_exact(16)
                        .map(|c| {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(c);
                            a
                        })
                        .collect(),
                );
            } else {
                *got = Some(Vec::new());
            }
        }
        Ok(())
    }

    /// Encodes `frame` and queues it (before the handshake completes it is held by
    /// the security layer and sent once keys exist). In a StableIO session an
    /// application frame becomes a numbered record kept until acknowledged
    /// (while offline it is only kept); [`Error::Full`] when the resend buffer
    /// is at [`SessionConfig::stable_max_unacked`].
    pub fn send_frame(&mut self, frame: &Frame, now: Instant) -> Result<()> {
        if let Some(why) = &self.dead {
            return Err(Error::ConnectionLost(why.clone()));
        }
        if !self.batch_sums.is_empty() {
            if let Frame::StreamResponse { id, .. } | Frame::Error { id, .. } = frame {
                if let Some(sums) = self.batch_sums.remove(id) {
                    if matches!(frame, Frame::StreamResponse { .. }) {
                        let flat: Vec<u8> = sums.iter().flatten().copied().collect();
                        let data = DataFrame::new().with(*id).with(flat);
                        self.send_app(&control(CTL_BATCHSUM, data), now)?;
                    }
                }
            }
        }
        self.send_app(frame, now)
    }

    fn send_app(&mut self, frame: &Frame, now: Instant) -> Result<()> {
        let link_level = matches!(
            frame,
            Frame::Keepalive
                | Frame::Echo { .. }
                | Frame::EchoReply { .. }
                | Frame::SeqData { .. }
                | Frame::SeqAck { .. }
                | Frame::SeqResend { .. }
                | Frame::SeqKeepalive { .. }
                | Frame::SeqEcho { .. }
                | Frame::SeqEchoReply { .. }
        );
        if self.stable.is_none() || link_level {
            return self.send_link(frame, now);
        }
        self.scratch.clear();
        self.codec.encode(frame, &mut self.scratch)?;
        let len = self.scratch.len();
        if len + 16 > self.cfg.wire.limits.max_frame {
            return Err(Error::Config(format!(
                "a {len}-byte frame does not fit in a StableIO record (max_frame {})",
                self.cfg.wire.limits.max_frame
            )));
        }
        let limit = self.cfg.stable_max_unacked;
        let Some(st) = &mut self.stable else {
            return Ok(());
        };
        let fits = st.parked.is_empty()
            && (st.unacked.is_empty() || st.unacked_bytes + len <= limit)
            && self.charge.stable_fits(len);
        if fits {
            let payload = self.scratch.split().freeze();
            self.push_record(payload, now);
            return Ok(());
        }
        let (unacked, parked) = (st.unacked_bytes, st.parked_bytes);
        let Some(id) = answer_id(frame) else {
            return Err(Error::Full { unacked, limit });
        };
        // An answer: park it until acknowledgements free room (in order).
        if parked + len <= limit && self.charge.stable_fits(len) {
            st.parked_bytes += len;
            st.parked.push_back(self.scratch.split().freeze());
            self.sync_charge();
            return Ok(());
        }
        if id == 0 {
            return Ok(()); // batch checksums: the answer that follows fails too
        }
        // Not even that: the caller gets a short error instead of silence.
        self.scratch.clear();
        let why = if self.charge.stable_fits(len) {
            format!("this session's resend buffer is full ({unacked} bytes unacknowledged, {parked} parked, limit {limit} each)")
        } else {
            let b = self.charge.budgets();
            format!(
                "the endpoint's StableIO budget is full ({} of {} bytes)",
                b.stable_bytes(),
                b.stable_limit()
            )
        };
        let busy = Frame::Error {
            id,
            code: code::BUSY,
            message: Text::from(format!("the answer of {len} bytes does not fit: {why}")),
        };
        self.codec.encode(&busy, &mut self.scratch)?;
        let elen = self.scratch.len();
        let payload = self.scratch.split().freeze();
        let Some(st) = &mut self.stable else {
            return Ok(());
        };
        if unacked + parked + elen > 2 * limit + STABLE_GRACE {
            // The peer lets even the short errors pile up: drop the link (the
            // session survives; the error is kept and goes out after a resume).
            st.link_failure = Some(format!(
                "the peer does not acknowledge StableIO records ({unacked} bytes unacknowledged, {parked} parked)"
            ));
        }
        if st.parked.is_empty() {
            self.push_record(payload, now);
        } else {
            st.parked_bytes += elen;
            st.parked.push_back(payload);
            self.sync_charge();
        }
        Ok(())
    }

    /// Numbers `payload` (an encoded frame), keeps it for resending and sends
    /// it when the link carries records.
    fn push_record(&mut self, payload: Bytes, now: Instant) {
        let link_up = self.link_up;
        let Some(st) = &mut self.stable else {
            return;
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        st.unacked_bytes += payload.len();
        st.unacked.push_back((seq, payload.clone()));
        let send = link_up && st.transmitting();
        if send {
            st.sent = seq;
        }
        self.sync_charge();
        if send {
            // The record is kept: a failing link only delays it (resume sends it).
            if let Err(e) = self.send_link(&Frame::SeqData { seq, payload }, now) {
                tracing::debug!(error = %e, seq, "StableIO record kept for resend");
            }
        }
    }

    /// Moves parked answers into the resend buffer while they fit.
    fn unpark(&mut self, now: Instant) -> Result<()> {
        let limit = self.cfg.stable_max_unacked;
        while let Some(st) = &mut self.stable {
            let Some(len) = st.parked.front().map(|p| p.len()) else {
                break;
            };
            if !(st.unacked.is_empty() || st.unacked_bytes + len <= limit) {
                break;
            }
            let Some(payload) = st.parked.pop_front() else {
                break;
            };
            st.parked_bytes -= len;
            self.push_record(payload, now);
        }
        Ok(())
    }

    /// Sends an unnumbered frame on the current link (dropped when there is none).
    fn send_link(&mut self, frame: &Frame, _now: Instant) -> Result<()> {
        if !self.link_up {
            return Ok(());
        }
        let before = self.out.len();
        let payload = match self
            .codec
            .encoder
            .encode_apart(frame, PAYLOAD_APART, &mut self.out)
        {
            Ok(p) => p,
            Err(e) => {
                self.out.truncate(before);
                return Err(e.into());
            }
        };
        let mut n = self.out.len() - before;
        if let Some(p) = payload {
            // The head (and the frames before it) leave first, the payload
            // behind it as it is: no copy into `out`.
            n += p.len();
            self.parts.push(self.out.split().freeze());
            self.parts.push(p);
        }
        self.bytes_out += n as u64;
        self.out_pending += n;
        Ok(())
    }

    /// A console call outside StableIO: what [`Session::send_link`] does
    /// with its `Frame::Console`, encoded from the call's parts (no frame
    /// built, moved and dropped).
    fn send_console_call(&mut self, id: u64, cmd: &Text, text: &Text) -> Result<()> {
        if !self.link_up {
            return Ok(());
        }
        let before = self.out.len();
        if let Err(e) = self
            .codec
            .encoder
            .encode_console(id, cmd, text, &mut self.out)
        {
            self.out.truncate(before);
            return Err(e.into());
        }
        let n = self.out.len() - before;
        self.bytes_out += n as u64;
        self.out_pending += n;
        Ok(())
    }

    /// Sends frames the runtime encoded itself (answers given inline, see
    /// `registry::inline`): whole frames, in order, handed to the security
    /// layer as one piece. The runtime encodes them only for sessions that
    /// are not StableIO; should one be, each frame takes the numbered path.
    pub(crate) fn send_encoded(&mut self, frames: &mut BytesMut, now: Instant) -> Result<()> {
        if let Some(why) = &self.dead {
            return Err(Error::ConnectionLost(why.clone()));
        }
        if frames.is_empty() || !self.link_up {
            return Ok(());
        }
        if self.stable.is_some() {
            while let Some(frame) = self.codec.decode(frames)? {
                self.send_frame(&frame, now)?;
            }
            return Ok(());
        }
        self.bytes_out += frames.len() as u64;
        self.out_pending += frames.len();
        if self.out.is_empty() {
            // The frames move over without a copy; the caller's buffer gets
            // our empty one (with its capacity) back.
            std::mem::swap(&mut self.out, frames);
        } else {
            self.out.extend_from_slice(frames);
            frames.clear();
        }
        Ok(())
    }

    /// Whether `n` more bytes of records fit in the StableIO resend buffer.
    fn stable_room(&self, n: usize) -> bool {
        self.stable.as_ref().is_none_or(|st| {
            st.unacked.is_empty() || st.unacked_bytes + n <= self.cfg.stable_max_unacked
        })
    }

    fn pump_all(&mut self, now: Instant) -> Result<()> {
        let mut ids: Vec<u64> = self.sending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.pump(id, now)?;
        }
        Ok(())
    }

    /// Sends a request and returns its id; its outcome arrives as
    /// [`Event::Reply`] with that id (after `timeout`, if given, as
    /// [`Error::TimedOut`]).
    pub fn call(&mut self, call: Call, timeout: Option<Duration>, now: Instant) -> Result<u64> {
        self.call_waiting(call, timeout, now, &mut None)
    }

    /// [`Session::call`] keeping the runtime's `waiter` with the call in the
    /// one map of pending calls (taken from the option once the call started;
    /// left there when it could not start).
    pub(crate) fn call_waiting(
        &mut self,
        call: Call,
        timeout: Option<Duration>,
        now: Instant,
        waiter: &mut Option<Waiter>,
    ) -> Result<u64> {
        let id = self.next_id;
        let mut batch = None;
        match call {
            // Outside StableIO a request is a link-level send (what
            // `send_frame` comes to for it, without its checks).
            Call::Console { cmd, text } if self.stable.is_none() && self.dead.is_none() => {
                self.send_console_call(id, &cmd, &text)?
            }
            Call::Console { cmd, text } => {
                self.send_frame(&Frame::Console { id, cmd, text }, now)?
            }
            Call::Stream { cmd, data } => self.send_frame(&Frame::Stream { id, cmd, data }, now)?,
            Call::Batch { cmd, frames } => {
                if frames.is_empty() {
                    return Err(Error::Config("a batch needs at least one frame".into()));
                }
                let need: usize = frames
                    .iter()
                    .map(|f| f.encoded_len() + cmd.len() + 32)
                    .sum();
                if !self.stable_room(need) {
                    let (unacked, limit) =
                        (self.stable_unacked_bytes(), self.cfg.stable_max_unacked);
                    return Err(Error::Full { unacked, limit });
                }
                batch = Some(Box::new((
                    frames.iter().map(batch_checksum).collect(),
                    None,
                )));
                let n = frames.len();
                for (i, data) in frames.into_iter().enumerate() {
                    let last = i + 1 == n;
                    let f = Frame::BatchStream {
                        id,
                        cmd: cmd.clone(),
                        last,
                        data,
                    };
                    self.send_frame(&f, now)?;
                }
            }
        }
        self.next_id += 1;
        let deadline = timeout.map(|t| now + t);
        if let Some(d) = deadline {
            self.deadlines.insert(d, id);
        }
        self.pending.insert(
            id,
            Pending {
                deadline,
                batch,
                waiter: waiter.take(),
            },
        );
        Ok(id)
    }

    /// Answers request `id` with `result` (an error carries its code and message).
    pub fn respond(
        &mut self,
        id: u64,
        result: Result<Reply, (u32, String)>,
        now: Instant,
    ) -> Result<()> {
        let frame = Reply::frame(id, result.map_err(|(c, m)| (c, Text::from(m))));
        self.send_frame(&frame, now)
    }

    /// Appends the bytes to send on the transport to `out` (nothing while a
    /// stable session has no link). When `out` is empty the buffers are
    /// swapped: the frames move out without a copy and `out`'s capacity
    /// becomes the session's next output buffer.
    pub fn write_output(&mut self, out: &mut BytesMut) {
        self.out_pending = 0;
        if !self.link_up {
            self.out.clear();
            self.parts.clear();
            return;
        }
        for p in self.parts.drain(..) {
            // (A caller that wants one buffer gets the pieces copied.)
            out.extend_from_slice(&p);
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.out);
        } else {
            out.extend_from_slice(&self.out);
            self.out.clear();
        }
    }

    /// Whether the output holds a payload kept apart from its frame head
    /// (then [`Session::write_output_parts`] sends it without a copy, where
    /// [`Session::write_output`] would copy it).
    pub fn has_output_parts(&self) -> bool {
        !self.parts.is_empty()
    }

    /// Appends the bytes to send on the transport to `parts` as pieces, in
    /// order: frame heads, and a large payload (a `BigStream` chunk or
    /// `CompleteBuffer` of 16 KiB or more) as the slice of
    /// the caller's `Bytes` it is, not copied behind its head. For
    /// [`zs_io::Connection::send_vectored`] (the security layer seals the
    /// pieces of one call into its record, one copy). Nothing while a
    /// stable session has no link.
    pub fn write_output_parts(&mut self, parts: &mut VecDeque<Bytes>) {
        self.out_pending = 0;
        if !self.link_up {
            self.out.clear();
            self.parts.clear();
            return;
        }
        parts.extend(self.parts.drain(..));
        if !self.out.is_empty() {
            parts.push_back(self.out.split().freeze());
        }
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Releases the capacity of buffers and queues that are empty (here and
    /// in the security layer), so an idle session keeps little memory. Cheap:
    /// call it after each batch of work (the runtime does, after every read).
    pub fn shrink_buffers(&mut self) {
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        if self.waiters.is_empty() {
            self.waiters = VecDeque::new();
        }
        self.pending.shrink();
        if self.plain.is_empty() {
            self.plain = BytesMut::new();
        }
        self.scratch = BytesMut::new();
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
        if self.parts.is_empty() {
            self.parts = Vec::new();
        }
    }

    /// When [`Session::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.deadlines.first();
        let mut add = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if self.link_up {
            add(self.stable.as_ref().and_then(|s| s.ack_due));
        }
        let idle = self.cfg.batch_idle_timeout;
        add(self.batches.values().map(|b| b.touched + idle).min());
        t
    }

    /// Expires calls whose timeout passed and sends a delayed StableIO ack.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        while let Some((d, id)) = self.deadlines.pop_due(now) {
            if self.pending.get(id).is_none_or(|p| p.deadline != Some(d)) {
                continue; // completed earlier: a stale entry
            }
            self.deadlines.live -= 1;
            self.sending.remove(&id);
            if let Some(p) = self.pending.remove(id) {
                self.reply_event(id, Err(Error::TimedOut), p.waiter);
            }
        }
        if !self.batches.is_empty() && self.dead.is_none() {
            self.expire_batches(now);
        }
        if self.dead.is_none() && self.link_up {
            if let Some(st) = &mut self.stable {
                if st.ack_due.is_some_and(|d| d <= now) {
                    st.mark_acked();
                    let seq = st.delivered;
                    self.send_link(&Frame::SeqAck { seq }, now)?;
                }
            }
        }
        Ok(())
    }

    /// Orderly close; a StableIO session ends for good. A negotiated
    /// StableIO session tells its peer in-band (a `__@close` control frame,
    /// docs/PROTOCOL.md §3.5), since over a security layer the peer sees an
    /// EOF only as a lost link; the runtime sends it before the FIN.
    pub fn close(&mut self, now: Instant) {
        let negotiated = self
            .stable
            .as_ref()
            .is_some_and(|s| s.phase != Phase::Negotiating);
        if self.dead.is_none() && self.link_up && negotiated {
            let _ = self.send_link(&control(CTL_CLOSE, DataFrame::new()), now);
        }
        self.connection_lost("closed locally");
    }

    /// The peer ended the session in an orderly way (`__@close`): a StableIO
    /// session no longer survives the end of its link.
    fn on_ctl_close(&mut self) {
        if !self.peer_closed {
            self.peer_closed = true;
            self.events.push_back(Event::Closed);
        }
    }

    /// The transport ended (or failed): the session is dead and every pending call
    /// completes with [`Error::ConnectionLost`] carrying `why`.
    pub fn connection_lost(&mut self, why: &str) {
        self.fail_all(why, |w| Error::ConnectionLost(w.to_owned()));
    }

    fn fail_all(&mut self, why: &str, err: fn(&str) -> Error) {
        if self.dead.is_none() {
            self.dead = Some(why.to_owned());
        }
        let ids: Vec<(u64, Option<Waiter>)> = self
            .pending
            .drain_sorted()
            .into_iter()
            .map(|(id, p)| (id, p.waiter))
            .collect();
        self.deadlines.clear();
        self.batches.clear();
        self.batch_sums.clear();
        self.sending.clear();
        self.receiving.clear();
        if let Some(st) = &mut self.stable {
            st.unacked.clear();
            st.unacked_bytes = 0;
            st.parked.clear();
            st.parked_bytes = 0;
        }
        self.set_batch_bytes(0);
        for (id, waiter) in ids {
            self.reply_event(id, Err(err(why)), waiter);
        }
    }

    // ---- StableIO ----------------------------------------------------------

    /// Client: asks the server for a StableIO session (call once, before any
    /// other frame; the request waits for the handshake). Every application
    /// frame sent from now on is a numbered record. [`Event::StableReady`] or
    /// [`Event::StableRefused`] follows.
    pub fn request_stable(&mut self, now: Instant) -> Result<()> {
        if self.stable.is_some() || self.server_side {
            return Err(Error::Config("StableIO was already requested".into()));
        }
        self.stable = Some(Box::new(Stable::new(
            true,
            Phase::Negotiating,
            0,
            [0; SECRET_LEN],
        )));
        self.send_link(&control(CTL_STABLE, DataFrame::new()), now)
    }

    /// Server: marks this session as the server end. `offer` is the session id
    /// and random resume secret handed out if the client asks for StableIO
    /// (`None`: StableIO is refused). Resume requests are answered in any case
    /// ([`Event::ResumeRequest`]).
    pub fn serve_stable(&mut self, offer: Option<(u64, [u8; SECRET_LEN])>) {
        self.server_side = true;
        self.stable_offer = offer;
    }

    /// Whether this is a StableIO session (requested or negotiated).
    pub fn is_stable(&self) -> bool {
        self.stable.is_some()
    }

    /// The StableIO session id (0 until the server answered).
    pub fn stable_id(&self) -> Option<u64> {
        self.stable.as_ref().map(|s| s.sid)
    }

    /// The StableIO session id and resume secret, once negotiated.
    pub fn stable_credentials(&self) -> Option<(u64, [u8; SECRET_LEN])> {
        self.stable.as_ref().map(|s| (s.sid, s.secret))
    }

    /// Whether a stable session is online (records flow on a link).
    pub fn is_online(&self) -> bool {
        self.link_up && self.stable.as_ref().is_none_or(|s| s.transmitting())
    }

    /// Bytes of StableIO records kept for resending.
    pub fn stable_unacked_bytes(&self) -> usize {
        self.stable.as_ref().map_or(0, |s| s.unacked_bytes)
    }

    /// StableIO counters: (records delivered to us in order, records assigned
    /// by us, records the peer acknowledged).
    pub fn stable_counts(&self) -> (u64, u64, u64) {
        self.stable
            .as_ref()
            .map_or((0, 0, 0), |s| (s.delivered, s.next_seq - 1, s.peer_acked))
    }

    /// The connection under a session ended. A StableIO session (negotiated,
    /// not closed by either side) survives: it keeps its pending calls, state
    /// and records, and waits for [`Session::attach`] (client) or
    /// [`Session::resume_link`] (server); returns true. Otherwise this is
    /// [`Session::connection_lost`] and returns false.
    pub fn link_lost(&mut self, why: &str) -> bool {
        let keep = self.dead.is_none()
            && !self.peer_closed
            && self
                .stable
                .as_ref()
                .is_some_and(|s| s.phase != Phase::Negotiating);
        if !keep {
            self.connection_lost(why);
            return false;
        }
        if let Some(st) = &mut self.stable {
            st.phase = Phase::Down;
            st.ack_due = None;
        }
        self.link_up = false;
        self.paused = false;
        self.blocked = false;
        self.plain = BytesMut::new();
        self.out = BytesMut::new();
        self.parts = Vec::new();
        self.binding = None;
        true
    }

    /// Client: a new connection for a stable session that lost its link.
    /// At [`Session::open_link`] the session sends `__@resume`;
    /// [`Event::Resumed`] follows (or the session ends with
    /// [`Error::SessionLost`] if the server no longer knows it).
    pub fn attach(&mut self) -> Result<()> {
        if let Some(why) = &self.dead {
            return Err(Error::SessionLost(why.clone()));
        }
        match &mut self.stable {
            Some(st) if st.client && st.phase == Phase::Down => st.phase = Phase::Resuming,
            _ => {
                return Err(Error::Config(
                    "attach needs a stable client session without link".into(),
                ))
            }
        }
        self.link_up = true;
        self.peer_closed = false;
        self.plain = BytesMut::new();
        Ok(())
    }

    /// Server: takes the undecoded input (what followed the request) out of
    /// a fresh session that reported [`Event::ResumeRequest`], for
    /// [`Session::resume_link`]; this session is then dead.
    pub fn take_input(&mut self) -> BytesMut {
        let plain = std::mem::take(&mut self.plain);
        self.out.clear();
        self.parts.clear();
        self.link_up = false;
        self.connection_lost("the connection resumed another session");
        plain
    }

    /// Sends a keepalive: in a StableIO session a `SeqKeepalive` carrying our
    /// cumulative ack, else a `Keepalive` frame.
    pub fn send_keepalive(&mut self, now: Instant) -> Result<()> {
        match &mut self.stable {
            Some(st) if st.phase == Phase::Online => {
                st.mark_acked();
                let acked = st.delivered;
                self.send_link(&Frame::SeqKeepalive { acked }, now)
            }
            _ => self.send_link(&Frame::Keepalive, now),
        }
    }

    /// Server: re-attaches a lost stable session to a new connection whose
    /// undecoded `input` came from [`Session::take_input`] (and whose
    /// `security` the layer reported) after the runtime verified the request. Answers
    /// `__@resume` with the last record received, sends again every record
    /// after `peer_delivered`, then continues with the input that followed the
    /// request. An error is fatal for the session.
    pub fn resume_link(
        &mut self,
        input: BytesMut,
        security: &zs_io::SecurityInfo,
        peer_delivered: u64,
        new_secret: [u8; SECRET_LEN],
        now: Instant,
    ) -> Result<()> {
        if let Some(why) = &self.dead {
            return Err(Error::SessionLost(why.clone()));
        }
        let delivered = match &mut self.stable {
            Some(st) if !st.client && st.phase == Phase::Down => {
                st.mark_acked();
                st.secret = new_secret;
                st.delivered
            }
            _ => {
                return Err(Error::Config(
                    "resume_link needs a stable server session without link".into(),
                ))
            }
        };
        self.plain = input;
        self.binding = security.channel_binding;
        self.link_up = true;
        self.peer_closed = false;
        self.paused = false;
        let answer = DataFrame::new()
            .with(delivered)
            .with(Bytes::copy_from_slice(&new_secret));
        let r = self
            .send_link(&control(CTL_RESUME, answer), now)
            .and_then(|_| self.go_online(peer_delivered, now))
            .and_then(|_| self.decode_plain(now));
        if let Err(e) = &r {
            self.connection_lost(&e.to_string());
        }
        r
    }

    /// Server: refuses a resume request (unknown, expired or wrong secret); the
    /// client's session then ends with [`Error::SessionLost`].
    pub fn refuse_resume(&mut self, message: &str, now: Instant) {
        let _ = self.send_link(
            &Frame::Error {
                id: 0,
                code: code::GONE,
                message: Text::from(message),
            },
            now,
        );
        self.connection_lost(message);
    }

    /// Ends a stable session for good (expired, evicted, resume refused, gave
    /// up reconnecting): every pending call completes with
    /// [`Error::SessionLost`] carrying `why`.
    pub fn end_stable(&mut self, why: &str) {
        self.fail_all(why, |w| Error::SessionLost(w.to_owned()));
    }
}

/// Payloads of `BigStream` and `CompleteBuffer` frames of this many bytes or
/// more are not copied behind their frame head: they leave as their own
/// piece ([`Session::write_output_parts`]). Below it the copy costs less than
/// a piece (a shared-buffer header, one more slice in the write).
const PAYLOAD_APART: usize = 16 * 1024;

/// Incoming frames up to this length have their whole length reserved in
/// the input buffer once their header arrived (a 256 KiB BigStream chunk
/// arriving in 64 KiB reads is then not regrown and copied three times);
/// longer ones grow by zs-wire's 64 KiB steps. It is what a peer that
/// announces a frame and stalls can make a connection reserve: the same as
/// the plaintext the security layer lets a connection hold unconsumed
/// (`zs_secure::SecureConfig::max_pending_plaintext`, 1 MiB by default).
/// It is also the most of a partial frame the session leaves in the caller's
/// buffer: the rest of a longer frame is taken over into the session's own
/// buffer (`Session::append_plain`, bounded by `max_frame`), so a frame the
/// wire limits allow completes under a layer that resets a connection whose
/// handler leaves more than that unconsumed (session 14). Frames up to it
/// still complete in place.
/// A frame of 64 KiB or more whose buffer must move for it moves into a
/// buffer of this size (zs-wire's `bulk_room`), so the frames behind it in a
/// bulk transfer complete where they lie (the security layer hands on its
/// raw read buffer, so that room is where the next reads land).
const WHOLE_FRAME_RESERVE: usize = 1 << 20;

/// How far past twice [`SessionConfig::stable_max_unacked`] (resend buffer
/// plus parked answers) short `Busy` errors may go before the link is
/// dropped (the peer does not acknowledge).
const STABLE_GRACE: usize = 64 * 1024;

/// The request id an answer-like frame serves (0: the batch checksums sent
/// just before an answer); `None` for frames that are not answers.
/// The waiter of call `id` from `waiters` (queued in the order of the
/// calls' [`Event::Reply`] events, so it is the front one when each outcome
/// is taken as its event comes).
pub(crate) fn take_waiter_from(waiters: &mut VecDeque<(u64, Waiter)>, id: u64) -> Option<Waiter> {
    match waiters.front() {
        Some((i, _)) if *i == id => waiters.pop_front().map(|(_, w)| w),
        None => None,
        // Not reached through the runtime (it takes every waiter as its
        // event comes); a search keeps a waiter from being stranded.
        Some(_) => {
            let at = waiters.iter().position(|(i, _)| *i == id)?;
            waiters.remove(at).map(|(_, w)| w)
        }
    }
}

fn answer_id(frame: &Frame) -> Option<u64> {
    match frame {
        Frame::ConsoleResponse { id, .. }
        | Frame::StreamResponse { id, .. }
        | Frame::BigStreamAck { id, .. } => Some(*id),
        Frame::Error { id, .. } if *id != 0 => Some(*id),
        Frame::Control { id: 0, cmd, .. } if cmd.as_str() == CTL_BATCHSUM => Some(0),
        _ => None,
    }
}

/// Most finished batches whose checksums wait for the handler's answer.
const MAX_BATCH_SUMS: usize = 4096;

fn control(cmd: &str, data: DataFrame) -> Frame {
    Frame::Control {
        id: 0,
        cmd: Text::from(cmd),
        data,
    }
}

fn verify_batch(want: &[[u8; 16]], got: Option<&[[u8; 16]]>) -> Result<()> {
    let Some(got) = got else {
        return Err(Error::ChecksumMismatch {
            index: None,
            detail: "the answer carried no checksums".into(),
        });
    };
    if got.len() != want.len() {
        return Err(Error::ChecksumMismatch {
            index: None,
            detail: format!("{} checksums for {} staged frames", got.len(), want.len()),
        });
    }
    match want.iter().zip(got).position(|(a, b)| a != b) {
        Some(i) => Err(Error::ChecksumMismatch {
            index: Some(i),
            detail: "staged frame changed in transit".into(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! Sans-IO StableIO tests: a client and a server session joined by two
    //! in-memory pipes per connection epoch. A "drop" loses every byte in flight
    //! (and possibly a prefix was delivered), then a new epoch starts with a
    //! new link (its own channel binding, as the security layer would report)
    //! and a resume.
    use std::collections::HashMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    const SECRET: [u8; SECRET_LEN] = [7; SECRET_LEN];

    /// What the security layer reports for link `epoch`: each link has its
    /// own channel binding.
    pub(super) fn link(epoch: u8) -> zs_io::SecurityInfo {
        zs_io::SecurityInfo::new("test", "AES-256-GCM", Some(b"alice".to_vec()), None)
            .with_channel_binding(Some([epoch; 32]))
    }

    /// A client and a server session whose link is up.
    pub(super) fn session_pair(now: Instant, cfg: SessionConfig) -> (Session, Session) {
        let mut c = Session::new(cfg);
        let mut s = Session::new(cfg);
        c.open_link(&link(1), now).unwrap();
        s.open_link(&link(1), now).unwrap();
        (c, s)
    }

    /// Moves `from`'s output into `to` (whole), returns its length.
    pub(super) fn pump(from: &mut Session, to: &mut Session, now: Instant) -> usize {
        let mut b = BytesMut::new();
        from.write_output(&mut b);
        let n = b.len();
        to.handle_input(&mut b, now).unwrap();
        assert!(b.is_empty(), "whole frames");
        n
    }

    struct Pair {
        now: Instant,
        /// The current link's number (its channel binding).
        epoch: u8,
        c: Session,
        s: Session,
        /// Server side of the current epoch until it resumed `s`.
        fresh: Option<Session>,
        c2s: BytesMut,
        s2c: BytesMut,
        /// What each side received and has not decoded (a partial frame).
        c_in: BytesMut,
        s_in: BytesMut,
        c_got: Vec<u64>,
        s_got: Vec<u64>,
        replies: HashMap<u64, usize>,
        calls: Vec<u64>,
        next_c: u64,
        next_s: u64,
        refused: bool,
        /// The server forgot the session (expired): resumes are refused.
        forget: bool,
        /// The session's resume secret now (rotated on each resume), and the
        /// one the client last proved (it may have missed the rotation).
        secret: [u8; SECRET_LEN],
        previous: Option<[u8; SECRET_LEN]>,
    }

    impl Pair {
        fn new(cfg: SessionConfig) -> Pair {
            let now = Instant::now();
            let (mut c, mut s) = (Session::new(cfg), Session::new(cfg));
            s.serve_stable(Some((42, SECRET)));
            c.request_stable(now).unwrap();
            c.open_link(&link(1), now).unwrap();
            s.open_link(&link(1), now).unwrap();
            let mut pair = Pair {
                now,
                epoch: 1,
                c,
                s,
                fresh: None,
                secret: SECRET,
                previous: None,
                c2s: BytesMut::new(),
                s2c: BytesMut::new(),
                c_in: BytesMut::new(),
                s_in: BytesMut::new(),
                c_got: Vec::new(),
                s_got: Vec::new(),
                replies: HashMap::new(),
                calls: Vec::new(),
                next_c: 0,
                next_s: 0,
                refused: false,
                forget: false,
            };
            pair.settle();
            assert_eq!(pair.c.stable_id(), Some(42));
            pair
        }

        fn server(&mut self) -> &mut Session {
            self.fresh.as_mut().unwrap_or(&mut self.s)
        }

        /// Moves up to `budget` bytes each way (all when None) and handles events.
        fn step(&mut self, budget: Option<usize>) -> bool {
            let mut moved = false;
            self.c.write_output(&mut self.c2s);
            let mut out = BytesMut::new();
            self.server().write_output(&mut out);
            self.s2c.extend_from_slice(&out);
            let n = budget.unwrap_or(usize::MAX).min(self.c2s.len());
            if n > 0 {
                moved = true;
                let chunk = self.c2s.split_to(n);
                let mut input = std::mem::take(&mut self.s_in);
                input.extend_from_slice(&chunk);
                let now = self.now;
                self.server()
                    .handle_input(&mut input, now)
                    .expect("server input");
                self.s_in = input;
            }
            let n = budget.unwrap_or(usize::MAX).min(self.s2c.len());
            if n > 0 {
                moved = true;
                let chunk = self.s2c.split_to(n);
                self.c_in.extend_from_slice(&chunk);
                self.c
                    .handle_input(&mut self.c_in, self.now)
                    .expect("client input");
            }
            self.events();
            moved
        }

        fn events(&mut self) {
            let now = self.now;
            let mut resumed = false;
            if let Some(f) = &mut self.fresh {
                while let Some(ev) = f.poll_event() {
                    if let Event::ResumeRequest {
                        session,
                        proof,
                        delivered,
                    } = ev
                    {
                        let used = [Some(self.secret), self.previous]
                            .into_iter()
                            .flatten()
                            .find(|k| f.verify_resume(k, &proof));
                        if let (42, Some(used), false) = (session, used, self.forget) {
                            // A replayed proof is refused on any other link.
                            assert!(!self.s.verify_resume(&used, &proof));
                            self.previous = Some(used);
                            if self.s.is_online() {
                                // Half-open: the server had not noticed the old
                                // connection die; the resume replaces it.
                                assert!(self.s.link_lost("replaced"));
                            }
                            let input = f.take_input();
                            self.secret = [self.secret[0].wrapping_add(1); SECRET_LEN];
                            let next = self.secret;
                            self.s
                                .resume_link(input, &link(self.epoch), delivered, next, now)
                                .expect("resume");
                            resumed = true;
                        } else {
                            f.refuse_resume("unknown", now);
                        }
                    }
                }
            }
            if resumed {
                self.fresh = None;
            }
            while let Some(ev) = self.s.poll_event() {
                if let Event::Request(r) = ev {
                    match r {
                        Request::DirectConsole { text, .. } => {
                            self.s_got.push(text.as_str().parse().unwrap())
                        }
                        Request::Console { id, text, .. } => {
                            self.s_got.push(text.as_str().parse().unwrap());
                            let reply = Ok(Reply::Text(text));
                            // Full is possible: the answer must then wait (never
                            // here: the server's buffer is as large as the client's).
                            self.s.respond(id, reply, now).expect("respond");
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            while let Some(ev) = self.c.poll_event() {
                match ev {
                    Event::Request(Request::DirectConsole { text, .. }) => {
                        self.c_got.push(text.as_str().parse().unwrap())
                    }
                    Event::Reply { id, result } => match result {
                        Ok(_) => *self.replies.entry(id).or_default() += 1,
                        Err(Error::SessionLost(_)) => self.refused = true,
                        Err(e) => panic!("call {id} failed: {e}"),
                    },
                    _ => {}
                }
            }
        }

        fn settle(&mut self) {
            for _ in 0..10_000 {
                self.now += Duration::from_millis(20);
                let _ = self.c.handle_timeout(self.now);
                let now = self.now;
                let _ = self.server().handle_timeout(now);
                if !self.step(None)
                    && self.c.stable_unacked_bytes() == 0
                    && self.s.stable_unacked_bytes() == 0
                {
                    return;
                }
            }
            panic!("the pair never settled");
        }

        fn client_send(&mut self, call: bool) {
            let n = self.next_c;
            let text = Text::from(n.to_string());
            let cmd = Text::from("c");
            let r = if call {
                self.c
                    .call(Call::Console { cmd, text }, None, self.now)
                    .map(|id| self.calls.push(id))
            } else {
                self.c
                    .send_frame(&Frame::DirectConsole { cmd, text }, self.now)
            };
            match r {
                Ok(()) => self.next_c += 1,
                Err(Error::Full { .. }) => {}
                Err(e) => panic!("client send: {e}"),
            }
        }

        fn server_send(&mut self) {
            let n = self.next_s;
            let f = Frame::DirectConsole {
                cmd: Text::from("s"),
                text: Text::from(n.to_string()),
            };
            match self.s.send_frame(&f, self.now) {
                Ok(()) => self.next_s += 1,
                Err(Error::Full { .. }) => {}
                Err(e) => panic!("server send: {e}"),
            }
        }

        /// The client's link dies but the server does not notice (half-open):
        /// it keeps sending on the dead link until the resume replaces it.
        fn drop_half_open(&mut self) {
            if self.fresh.is_some() {
                return self.drop_link();
            }
            self.relink(false);
        }

        /// The link dies: bytes in flight are lost; a new epoch starts.
        fn drop_link(&mut self) {
            self.relink(true);
        }

        /// The client's link dies (and the server's when `server_notices`):
        /// bytes in flight are lost, the client attaches a new link and a
        /// fresh server session answers it.
        fn relink(&mut self, server_notices: bool) {
            self.c2s.clear();
            self.s2c.clear();
            self.c_in.clear();
            self.s_in.clear();
            assert!(self.c.link_lost("test drop"));
            if server_notices {
                self.fresh = None;
                assert!(self.s.link_lost("test drop"));
            }
            self.epoch = self.epoch.wrapping_add(1);
            self.c.attach().unwrap();
            self.c.open_link(&link(self.epoch), self.now).unwrap();
            let mut fresh = Session::new(*self.s.config());
            fresh.serve_stable(None);
            fresh.open_link(&link(self.epoch), self.now).unwrap();
            self.fresh = Some(fresh);
        }

        fn check(&self) {
            let want_c: Vec<u64> = (0..self.next_s).collect();
            let want_s: Vec<u64> = (0..self.next_c).collect();
            assert_eq!(
                self.s_got, want_s,
                "server received every record once, in order"
            );
            assert_eq!(
                self.c_got, want_c,
                "client received every record once, in order"
            );
            for id in &self.calls {
                assert_eq!(
                    self.replies.get(id),
                    Some(&1),
                    "call {id} answered exactly once"
                );
            }
            assert_eq!(self.replies.len(), self.calls.len());
        }
    }

    /// A batch of only requests, or only call outcomes, moves out whole with
    /// its waiters (`swap_plain_events`, the runtime's path for a busy link),
    /// each outcome finding its own waiter; a batch with any other event is
    /// left to be polled one by one.
    #[test]
    fn plain_batches_move_out_whole_with_their_waiters() {
        use std::sync::Mutex;
        let now = Instant::now();
        let (mut c, mut s) = session_pair(now, SessionConfig::default());
        let (mut events, mut waiters) = (VecDeque::new(), VecDeque::new());
        // `Established` is not plain: polled one by one.
        assert!(!s.swap_plain_events(&mut events, &mut waiters));
        assert!(matches!(s.poll_event(), Some(Event::Established { .. })));
        assert!(matches!(c.poll_event(), Some(Event::Established { .. })));
        let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
        let mut ids = Vec::new();
        for (tag, t) in [(1u64, "a"), (2, "b"), (3, "c")] {
            let seen = seen.clone();
            let mut w = Some(Waiter::Once(Box::new(move |r: Result<Reply>| {
                let Ok(Reply::Text(t)) = r else {
                    panic!("{r:?}")
                };
                seen.lock().unwrap().push((tag, t.as_str().to_owned()));
            })));
            let call = Call::Console {
                cmd: Text::from("c"),
                text: Text::from(t),
            };
            ids.push(c.call_waiting(call, None, now, &mut w).unwrap());
        }
        pump(&mut c, &mut s, now);
        assert!(s.swap_plain_events(&mut events, &mut waiters));
        assert!(s.poll_event().is_none(), "moved out whole");
        let texts: Vec<(u64, String)> = events
            .drain(..)
            .map(|e| match e {
                Event::Request(Request::Console { id, text, .. }) => (id, text.as_str().into()),
                other => panic!("{other:?}"),
            })
            .collect();
        // Answered out of order: each outcome still finds its own waiter.
        for (id, t) in texts.iter().rev() {
            s.respond(*id, Ok(Reply::Text(Text::from(t.to_uppercase()))), now)
                .unwrap();
        }
        pump(&mut s, &mut c, now);
        assert!(c.swap_plain_events(&mut events, &mut waiters));
        assert_eq!(waiters.len(), 3);
        for e in events.drain(..) {
            let Event::Reply { id, result } = e else {
                panic!("{e:?}")
            };
            take_waiter_from(&mut waiters, id)
                .expect("its waiter")
                .complete(result);
        }
        assert!(waiters.is_empty());
        let mut got = seen.lock().unwrap().clone();
        got.sort();
        let want: Vec<(u64, String)> = vec![(1, "A".into()), (2, "B".into()), (3, "C".into())];
        assert_eq!(got, want);
        // A signal among requests: nothing moves; polled one by one.
        c.call(
            Call::Console {
                cmd: Text::from("c"),
                text: Text::from("d"),
            },
            None,
            now,
        )
        .unwrap();
        c.send_frame(
            &Frame::Signal {
                name: Text::from("s"),
                code: 1,
            },
            now,
        )
        .unwrap();
        pump(&mut c, &mut s, now);
        assert!(!s.swap_plain_events(&mut events, &mut waiters));
        assert!(events.is_empty());
        assert!(matches!(s.poll_event(), Some(Event::Request(_))));
        assert!(matches!(s.poll_event(), Some(Event::Signal { .. })));
        // Nothing queued: nothing to move.
        assert!(!s.swap_plain_events(&mut events, &mut waiters));
    }

    /// The runtime's waiters come back with their own call's outcome, in the
    /// order of the events: timeouts, answers out of order, a call made
    /// without a waiter in between, and the calls a lost connection fails.
    #[test]
    fn waiters_come_back_with_their_own_calls() {
        use std::sync::Mutex;
        let now = Instant::now();
        let (mut c, mut s) = session_pair(now, SessionConfig::default());
        let seen: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
        let waiter = |tag: u64| {
            let seen = seen.clone();
            Some(Waiter::Once(Box::new(move |r: Result<Reply>| {
                let what = match r {
                    Ok(Reply::Text(t)) => t.as_str().to_owned(),
                    Ok(Reply::Data(_)) => "data".into(),
                    Err(e) => format!("{e:?}"),
                };
                seen.lock().unwrap().push((tag, what));
            })))
        };
        let console = |t: &str| Call::Console {
            cmd: Text::from("c"),
            text: Text::from(t),
        };
        let ms = Duration::from_millis;
        let a = c
            .call_waiting(console("a"), Some(ms(50)), now, &mut waiter(1))
            .unwrap();
        let b = c
            .call_waiting(console("b"), None, now, &mut waiter(2))
            .unwrap();
        let bare = c.call(console("bare"), None, now).unwrap();
        let d = c
            .call_waiting(console("d"), None, now, &mut waiter(4))
            .unwrap();
        let e = c
            .call_waiting(console("e"), None, now, &mut waiter(5))
            .unwrap();
        // Handshake and requests; the server answers d, bare, b (not a, not e).
        let mut requests = Vec::new();
        for _ in 0..6 {
            pump(&mut c, &mut s, now);
            while let Some(ev) = s.poll_event() {
                if let Event::Request(r) = ev {
                    requests.push(r);
                }
            }
            pump(&mut s, &mut c, now);
            if requests.len() == 5 {
                break;
            }
        }
        assert_eq!(requests.len(), 5);
        for id in [d, bare, b] {
            let text = requests.iter().find(|r| r.id() == Some(id)).unwrap();
            let Request::Console { text, .. } = text else {
                panic!("console")
            };
            s.respond(id, Ok(Reply::Text(text.clone())), now).unwrap();
        }
        pump(&mut s, &mut c, now);
        c.handle_timeout(now + ms(60)).unwrap();
        c.connection_lost("gone");
        let mut replies = Vec::new();
        while let Some(ev) = c.poll_event() {
            if let Event::Reply { id, result } = ev {
                replies.push(id);
                if let Some(w) = c.take_waiter(id) {
                    w.complete(result);
                }
            }
        }
        assert_eq!(replies, [d, bare, b, a, e]);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (4, "d".to_owned()),
                (2, "b".to_owned()),
                (1, "TimedOut".to_owned()),
                (5, "ConnectionLost(\"gone\")".to_owned()),
            ]
        );
        assert!(c.waiters.is_empty());
    }

    #[test]
    fn records_survive_drops_exactly_once() {
        // A pinned server key: the same guarantees as with the test PSK.
        let mut p = Pair::new(SessionConfig::default());
        for round in 0..5 {
            for i in 0..20 {
                p.client_send(i % 3 == 0);
                p.server_send();
            }
            p.step(Some(100 + round * 37));
            p.drop_link();
            for _ in 0..5 {
                p.client_send(false); // queued while offline
            }
            p.settle();
        }
        p.check();
        assert_eq!(p.c.stable_counts().1, p.next_c, "one record per send");
    }

    #[test]
    fn a_drop_during_the_resume_handshake_is_survived() {
        let mut p = Pair::new(SessionConfig::default());
        for _ in 0..10 {
            p.client_send(true);
        }
        p.drop_link();
        p.step(Some(40)); // part of the new handshake only
        p.drop_link();
        p.server_send();
        p.settle();
        p.check();
        assert_eq!(p.replies.len(), 10);
    }

    #[test]
    fn a_half_open_link_is_replaced_by_the_resume() {
        let mut p = Pair::new(SessionConfig::default());
        p.client_send(true);
        p.drop_half_open();
        for _ in 0..10 {
            p.server_send(); // on the dead link: lost, then sent again
        }
        assert!(p.s.is_online(), "the server has not noticed");
        p.settle();
        assert!(p.fresh.is_none() && p.s.is_online());
        p.check();
        assert_eq!(p.c_got.len(), 10);
    }

    #[test]
    fn the_resend_buffer_is_bounded_and_reports_full() {
        let cfg = SessionConfig {
            stable_max_unacked: 600,
            ..SessionConfig::default()
        };
        let mut p = Pair::new(cfg);
        p.drop_link();
        let before = p.next_c;
        for _ in 0..100 {
            p.client_send(false);
        }
        let queued = p.next_c - before;
        assert!(queued > 0 && queued < 100, "{queued} records fit");
        assert!(p.c.stable_unacked_bytes() <= 600);
        let e =
            p.c.send_frame(
                &Frame::DirectConsole {
                    cmd: Text::from("c"),
                    text: Text::from("x"),
                },
                p.now,
            )
            .unwrap_err();
        assert!(matches!(e, Error::Full { limit: 600, .. }), "{e}");
        p.settle();
        p.check();
        assert_eq!(p.c.stable_unacked_bytes(), 0, "acks freed the buffer");
    }

    #[test]
    fn a_wrong_secret_or_unknown_session_ends_the_client_session() {
        let mut p = Pair::new(SessionConfig::default());
        p.client_send(true);
        p.drop_link();
        p.forget = true;
        for _ in 0..100 {
            if !p.step(None) {
                break;
            }
        }
        assert!(p.refused, "the pending call failed with SessionLost");
        assert!(p.c.is_dead());
    }

    #[test]
    fn batch_checksums_are_verified() {
        let now = Instant::now();
        let (mut c, mut s) = session_pair(now, SessionConfig::default());
        let frames = vec![DataFrame::new().with(1u32), DataFrame::new().with("two")];
        let call = Call::Batch {
            cmd: Text::from("b"),
            frames,
        };
        let mut ids = Vec::new();
        for _ in 0..2 {
            ids.push(c.call(call.clone(), None, now).unwrap());
        }
        let mut results = HashMap::new();
        for round in 0..20 {
            pump(&mut c, &mut s, now);
            while let Some(ev) = s.poll_event() {
                if let Event::Request(Request::Batch { id, .. }) = ev {
                    if id == ids[1] {
                        // Tamper: the server's record of the second batch differs.
                        let sums = s.batch_sums.get_mut(&id).unwrap();
                        sums[1][0] ^= 1;
                    }
                    s.respond(id, Ok(Reply::Data(DataFrame::new())), now)
                        .unwrap();
                }
            }
            pump(&mut s, &mut c, now);
            while let Some(ev) = c.poll_event() {
                if let Event::Reply { id, result } = ev {
                    results.insert(id, result);
                }
            }
            if results.len() == 2 || round > 15 {
                break;
            }
        }
        assert!(results[&ids[0]].is_ok(), "{:?}", results[&ids[0]]);
        assert!(
            matches!(
                &results[&ids[1]],
                Err(Error::ChecksumMismatch { index: Some(1), .. })
            ),
            "{:?}",
            results[&ids[1]]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random sends both ways, partial deliveries and link drops (also in
        /// the middle of a resume, and half-open ones where the server keeps
        /// sending on the dead connection until the resume replaces it):
        /// every record arrives exactly once, in order, and every call is
        /// answered exactly once.
        #[test]
        fn exactly_once_under_random_drops(ops in proptest::collection::vec((0u8..9, 1u16..400), 1..60)) {
            let mut p = Pair::new(SessionConfig { stable_ack_every: 4, ..SessionConfig::default() });
            for (op, arg) in ops {
                match op {
                    0 | 1 => p.client_send(false),
                    2 => p.client_send(true),
                    3 | 4 => p.server_send(),
                    5 | 6 => { p.step(Some(arg as usize)); }
                    7 => p.drop_link(),
                    _ => p.drop_half_open(),
                }
            }
            p.settle();
            p.check();
        }
    }

    /// The codec reads the wire configuration of the shared `SessionConfig`
    /// (one pointer per half, no copy): a token set there is sent and
    /// required, and the codec is much smaller than one holding two copies.
    #[test]
    fn the_codec_uses_the_shared_wire_config() {
        let now = Instant::now();
        let cfg = SessionConfig {
            wire: zs_wire::Config::with_token(*b"tok1"),
            ..SessionConfig::default()
        };
        let (mut c, mut s) = session_pair(now, cfg);
        c.send_keepalive(now).unwrap();
        let mut b = BytesMut::new();
        c.write_output(&mut b);
        assert_eq!(&b[1..5], b"tok1", "the encoder sends the shared token");
        let mut again = b.clone();
        s.handle_input(&mut b, now).unwrap();
        let (_, mut plain) = session_pair(now, SessionConfig::default());
        assert!(
            plain.handle_input(&mut again, now).is_err() || plain.is_dead(),
            "a decoder without the token refuses the frame"
        );
        let shared = std::mem::size_of::<FrameCodec<SharedWire>>();
        let copied = std::mem::size_of::<FrameCodec>();
        let config = std::mem::size_of::<zs_wire::Config>();
        assert_eq!(shared + 2 * (config - 8), copied, "{shared} vs {copied}");
        assert!(shared <= 80, "FrameCodec<SharedWire> is {shared} bytes");
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    /// A pending call `id` with deadline `d`, in both structures.
    fn track(dl: &mut Deadlines, pending: &mut IdTable<Pending>, id: u64, d: Instant) {
        dl.insert(d, id);
        let p = Pending {
            deadline: Some(d),
            batch: None,
            waiter: None,
        };
        pending.insert(id, p);
    }

    /// Call `id` completes (as `Session::complete` does).
    fn answer(dl: &mut Deadlines, pending: &mut IdTable<Pending>, id: u64) {
        let p = pending.remove(id).unwrap();
        dl.remove(p.deadline.unwrap(), id, |id, d| {
            pending.get(id).is_some_and(|p| p.deadline == Some(d))
        });
    }

    /// Consecutive calls with one deadline (a batch's calls) share one FIFO
    /// entry; in-order answers shorten it, an out-of-order one leaves a stale
    /// id that never expires, and the rest expire in id order.
    #[test]
    fn calls_with_one_deadline_share_one_entry() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(30);
        let mut pending: IdTable<Pending> = IdTable::default();
        let mut dl = Deadlines::default();
        for id in 1..=100u64 {
            track(&mut dl, &mut pending, id, d);
        }
        assert_eq!(dl.fifo.len(), 1, "one run");
        track(&mut dl, &mut pending, 101, d + Duration::from_millis(1));
        track(&mut dl, &mut pending, 103, d + Duration::from_millis(1));
        assert_eq!(dl.fifo.len(), 3, "a new deadline, then a gap in the ids");
        for id in 1..=50u64 {
            answer(&mut dl, &mut pending, id);
        }
        answer(&mut dl, &mut pending, 80);
        assert_eq!(dl.fifo.front().map(|r| (r.first, r.last)), Some((51, 100)));
        assert_eq!((dl.live, dl.held), (51, 52));
        assert_eq!(dl.first(), Some(d));
        assert!(dl.pop_due(d - Duration::from_millis(1)).is_none());
        let mut expired = Vec::new();
        while let Some((d, id)) = dl.pop_due(d + Duration::from_secs(1)) {
            if pending.get(id).is_some_and(|p| p.deadline == Some(d)) {
                pending.remove(id);
                dl.live -= 1;
                expired.push(id);
            }
        }
        let want: Vec<u64> = (51..=100).filter(|i| *i != 80).chain([101, 103]).collect();
        assert_eq!(expired, want);
        assert_eq!((dl.live, dl.held, dl.first()), (0, 0, None));
    }

    /// Attack: the peer never answers a flood of calls, then sends answers
    /// with forged ids (never issued, far beyond the ring, already answered,
    /// or aliasing a live call's ring slot). The pending table holds exactly
    /// the calls made (the ring at its bound, the rest spilled), forged
    /// answers complete nothing, and the deadlines then expire every call
    /// once and the table is released.
    #[test]
    fn hostile_answers_with_forged_ids_and_calls_that_never_complete() {
        use super::tests::{pump, session_pair};
        use crate::pending::MAX_RING;
        let now = Instant::now();
        let (mut c, mut s) = session_pair(now, SessionConfig::default());
        while c.poll_event().is_some() {}
        let n = 3 * MAX_RING as u64;
        let mut ids = Vec::new();
        for i in 0..n {
            let call = Call::Console {
                cmd: Text::from("never"),
                text: Text::from(format!("{i}")),
            };
            ids.push(c.call(call, Some(Duration::from_secs(5)), now).unwrap());
        }
        assert_eq!(c.pending_calls(), n as usize);
        assert_eq!(c.pending.shape().0, MAX_RING, "the ring stops at its bound");
        assert_eq!(c.pending.shape().1, n as usize - MAX_RING);
        // One genuine answer, then forged ones: ids never issued, the ring
        // slot of a live call plus a multiple of the ring, and the answered
        // id again.
        let real = ids[7];
        s.respond(real, Ok(Reply::Text(Text::from("ok"))), now)
            .unwrap();
        let last = *ids.last().unwrap();
        for forged in [0, last + 1, last + MAX_RING as u64, u64::MAX, real, real] {
            s.respond(forged, Ok(Reply::Text(Text::from("forged"))), now)
                .unwrap();
        }
        pump(&mut s, &mut c, now);
        let mut got = Vec::new();
        while let Some(ev) = c.poll_event() {
            if let Event::Reply { id, result } = ev {
                got.push((id, result.is_ok()));
            }
        }
        assert_eq!(got, [(real, true)], "only the real answer completes a call");
        assert_eq!(c.pending_calls(), n as usize - 1);
        // The deadlines expire every other call, each once, in id order.
        c.handle_timeout(now + Duration::from_secs(6)).unwrap();
        let mut expired = Vec::new();
        while let Some(ev) = c.poll_event() {
            match ev {
                Event::Reply {
                    id,
                    result: Err(Error::TimedOut),
                } => expired.push(id),
                other => panic!("{other:?}"),
            }
        }
        let want: Vec<u64> = ids.iter().copied().filter(|i| *i != real).collect();
        assert_eq!(expired, want);
        assert_eq!(c.pending_calls(), 0);
        assert_eq!((c.deadlines.live, c.deadlines.held), (0, 0));
        c.shrink_buffers();
        assert_eq!(c.pending.shape(), (0, 0), "released");
    }

    #[test]
    fn lazy_deadlines_expire_only_pending_calls_and_stay_bounded() {
        let t0 = Instant::now();
        let mut pending: IdTable<Pending> = IdTable::default();
        let mut dl = Deadlines::default();
        for id in 1..=1000u64 {
            track(&mut dl, &mut pending, id, t0 + Duration::from_millis(id));
            // Every call but each 100th completes at once (in any order).
            if id % 100 != 0 {
                answer(&mut dl, &mut pending, id);
            }
            assert!(dl.held <= 2 * dl.live + 33, "{}", dl.held);
        }
        assert_eq!(dl.live, 10);
        let mut expired = Vec::new();
        while let Some((d, id)) = dl.pop_due(t0 + Duration::from_secs(2)) {
            if pending.get(id).is_some_and(|p| p.deadline == Some(d)) {
                expired.push(id);
            }
        }
        assert_eq!(expired, (1..=10).map(|i| i * 100).collect::<Vec<_>>());
        assert_eq!(dl.first(), None);
    }

    #[test]
    fn idle_sessions_release_their_buffers_and_frames_leave_together() {
        use super::tests::{pump, session_pair};
        let now = Instant::now();
        let (mut c, mut s) = session_pair(now, SessionConfig::default());
        assert!(matches!(
            c.poll_event(),
            Some(Event::Established { suite, psk_identity: Some(id) }) if suite == "AES-256-GCM" && id == b"alice"
        ));
        while s.poll_event().is_some() {}
        // 50 calls queued before one flush leave in one buffer, moved out
        // without a copy (the caller's empty buffer is swapped in).
        for i in 0..50 {
            let call = Call::Console {
                cmd: Text::from("echo"),
                text: Text::from(format!("{i}")),
            };
            c.call(call, Some(Duration::from_secs(5)), now).unwrap();
        }
        let ptr = c.out.as_ptr();
        let mut b = BytesMut::new();
        c.write_output(&mut b);
        assert_eq!(b.as_ptr(), ptr, "swapped, not copied");
        // Fed in two pieces: the partial frame stays in the caller's buffer.
        let total = b.len() as u64;
        let mut input = b.split_to(b.len() - 3);
        s.handle_input(&mut input, now).unwrap();
        assert!(
            !input.is_empty() && input.len() < 64,
            "the partial frame stays"
        );
        input.extend_from_slice(&b);
        s.handle_input(&mut input, now).unwrap();
        assert!(input.is_empty());
        assert_eq!(s.byte_counts().0, total, "each byte counted once");
        let mut n = 0;
        while let Some(ev) = s.poll_event() {
            assert!(matches!(ev, Event::Request(Request::Console { .. })));
            n += 1;
        }
        assert_eq!(n, 50);
        pump(&mut s, &mut c, now);
        s.shrink_buffers();
        assert_eq!(s.events.capacity(), 0);
        assert_eq!(s.plain.capacity(), 0);
        assert_eq!(s.out.capacity(), 0);
    }

    /// Call deadlines expire in deadline order whatever mix of timeouts made
    /// them (FIFO and heap together), completed calls never expire, and
    /// entries left by out-of-order completions are dropped, not leaked.
    #[test]
    fn deadlines_expire_in_order_across_fifo_and_heap() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut pending: IdTable<Pending> = IdTable::default();
        let mut dl = Deadlines::default();
        // ids 1..=6 with deadlines 10, 20, 5 (heap), 30, 15 (heap), 30
        for (id, d) in [(1, 10), (2, 20), (3, 5), (4, 30), (5, 15), (6, 30)] {
            track(&mut dl, &mut pending, id, ms(d));
        }
        assert_eq!(dl.first(), Some(ms(5)));
        // 1 completes in order (FIFO front), 5 out of order (left behind).
        for id in [1, 5] {
            answer(&mut dl, &mut pending, id);
        }
        let mut expired = Vec::new();
        while let Some((d, id)) = dl.pop_due(ms(100)) {
            if pending.get(id).is_some_and(|p| p.deadline == Some(d)) {
                pending.remove(id);
                dl.live -= 1; // as handle_timeout does
                expired.push(id);
            }
        }
        assert_eq!(expired, [3, 2, 4, 6]);
        assert_eq!(dl.first(), None);
        // Many out-of-order completions: the stale entries are rebuilt away.
        for id in 100..400u64 {
            track(&mut dl, &mut pending, id, ms(50));
        }
        for id in (100..400u64).rev() {
            answer(&mut dl, &mut pending, id);
        }
        assert!(dl.fifo.len() + dl.heap.len() <= 40, "{}", dl.fifo.len());
        assert!(dl.held <= 33, "{}", dl.held);
        assert_eq!(dl.live, 0);
    }
}

#[cfg(test)]
mod payload_tests {
    //! Large payloads: a BigStream chunk leaves apart from its frame head (no
    //! copy into the output buffer), and an incoming frame's whole length is
    //! reserved once its header arrived, up to `WHOLE_FRAME_RESERVE`.
    use super::tests::session_pair;
    use super::*;

    fn chunks(s: &mut Session) -> Vec<(u64, Bytes)> {
        let mut got = Vec::new();
        while let Some(ev) = s.poll_event() {
            if let Event::Request(Request::BigChunk { offset, data, .. }) = ev {
                got.push((offset, data));
            }
        }
        got
    }

    #[test]
    fn big_chunks_leave_apart_from_their_heads_and_arrive_in_a_buffer_reserved_whole() {
        let now = Instant::now();
        let cfg = SessionConfig::default();
        let data = Bytes::from((0..600_000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        let (mut c, mut s) = session_pair(now, cfg);
        c.big_stream(Text::from("sink"), data.clone(), 0, None, now)
            .unwrap();
        assert!(c.has_output_parts());
        let mut parts = VecDeque::new();
        c.write_output_parts(&mut parts);
        assert!(!c.has_output_parts());
        // Each chunk (256 KiB, 256 KiB, the rest) is a slice of `data`.
        let base = data.as_ptr() as usize;
        let apart: Vec<usize> = parts
            .iter()
            .filter(|p| (base..base + data.len()).contains(&(p.as_ptr() as usize)))
            .map(Bytes::len)
            .collect();
        assert_eq!(apart, [262_144, 262_144, 600_000 - 2 * 262_144]);
        let wire: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        // The same bytes as one buffer (write_output copies the pieces).
        let (mut c2, _) = session_pair(now, cfg);
        c2.big_stream(Text::from("sink"), data.clone(), 0, None, now)
            .unwrap();
        let mut one = BytesMut::new();
        c2.write_output(&mut one);
        assert_eq!(&one[..], &wire[..]);
        // Where each frame ends on the wire.
        let mut ends = Vec::new();
        let mut all = BytesMut::from(&wire[..]);
        let mut codec = FrameCodec::new(cfg.wire);
        while codec.decode(&mut all).unwrap().is_some() {
            ends.push(wire.len() - all.len());
        }
        assert_eq!(ends.len(), 3);
        // In 64 KiB reads: once a chunk's header is in, room for its whole
        // frame is reserved (no regrowth while the rest arrives).
        let mut rx = BytesMut::new();
        let mut pos = 0;
        for piece in wire.chunks(64 << 10) {
            rx.extend_from_slice(piece);
            pos += piece.len();
            s.handle_input(&mut rx, now).unwrap();
            if rx.len() > 16 {
                let end = ends.iter().find(|&&e| e > pos).unwrap();
                assert!(
                    rx.capacity() - rx.len() >= end - pos,
                    "{} bytes of room for the {} bytes still to come",
                    rx.capacity() - rx.len(),
                    end - pos
                );
            }
        }
        assert!(rx.is_empty());
        let got = chunks(&mut s);
        let want: Vec<(u64, Bytes)> = [(0, 262_144), (262_144, 524_288), (524_288, 600_000)]
            .iter()
            .map(|&(a, b)| (a as u64, data.slice(a..b)))
            .collect();
        assert_eq!(got, want);
    }

    /// A frame longer than `WHOLE_FRAME_RESERVE` (up to `max_frame`) never
    /// leaves more than that in the caller's buffer (the security layer
    /// resets a connection whose handler leaves more than its
    /// `max_pending_plaintext`, 1 MiB by default): the session takes the
    /// rest over into a buffer that never grows past the frame plus a read
    /// and a 64 KiB step, then hands the partial frame behind it back.
    #[test]
    fn a_frame_over_the_whole_frame_bound_is_taken_over_and_bounded() {
        let now = Instant::now();
        let mut cfg = SessionConfig::default();
        let max = cfg.wire.limits.max_frame;
        cfg.max_complete_buffer = max;
        let read = 64 << 10;
        for len in [WHOLE_FRAME_RESERVE + 1, 3 << 20, max] {
            let (_, mut s) = session_pair(now, cfg);
            // CompleteBuffer (kind 7) of `len` body bytes ("x", then data),
            // then a Console request (cut in the middle) and its rest.
            let mut wire = vec![0x01u8, 0x07];
            let mut v = len as u64;
            while v >= 0x80 {
                wire.push((v as u8) | 0x80);
                v >>= 7;
            }
            wire.extend_from_slice(&[v as u8, 0x01, b'x']);
            let start = wire.len();
            wire.extend((0..len - 2).map(|i| (i * 31 % 251) as u8));
            let end = wire.len();
            let mut codec = FrameCodec::new(cfg.wire);
            let mut tail = BytesMut::new();
            codec
                .encode(
                    &Frame::Console {
                        id: 1,
                        cmd: Text::from("echo"),
                        text: Text::from("hi"),
                    },
                    &mut tail,
                )
                .unwrap();
            wire.extend_from_slice(&tail);
            // The last read ends inside the console request.
            let cut = wire.len() - 3;
            let mut rx = BytesMut::new();
            let mut most = 0;
            for piece in wire[..cut].chunks(read) {
                rx.extend_from_slice(piece);
                s.handle_input(&mut rx, now).unwrap();
                assert!(rx.len() <= WHOLE_FRAME_RESERVE, "{len}: {} left", rx.len());
                most = most.max(s.plain.capacity());
            }
            assert!(
                most <= max + 16 + read + (64 << 10),
                "{len}: the session held {most} bytes for a frame (max_frame {max})"
            );
            assert!(
                s.plain.is_empty(),
                "{len}: the partial request was handed back"
            );
            assert_eq!(s.plain.capacity(), 0, "{len}: the frame's buffer released");
            assert_eq!(rx.len(), cut - end, "{len}");
            assert!(
                rx.capacity() < WHOLE_FRAME_RESERVE,
                "{len}: {}",
                rx.capacity()
            );
            let mut got = None;
            while let Some(ev) = s.poll_event() {
                if let Event::Request(Request::CompleteBuffer { data, .. }) = ev {
                    got = Some(data);
                }
            }
            assert!(
                got.as_deref() == Some(&wire[start..end]),
                "{len}: the frame arrived whole"
            );
            rx.extend_from_slice(&wire[cut..]);
            s.handle_input(&mut rx, now).unwrap();
            assert!(rx.is_empty());
            assert!(matches!(
                s.poll_event(),
                Some(Event::Request(Request::Console { .. }))
            ));
            let (bytes_in, _) = s.byte_counts();
            assert_eq!(bytes_in, wire.len() as u64, "{len}: counted once");
        }
    }

    /// A peer announcing a frame above `WHOLE_FRAME_RESERVE` (up to
    /// `max_frame`) and stalling makes the session reserve only zs-wire's
    /// 64 KiB step, not the announced length.
    #[test]
    fn an_announced_frame_above_the_whole_frame_bound_reserves_a_step() {
        let now = Instant::now();
        let cfg = SessionConfig::default();
        for (len, whole) in [
            (WHOLE_FRAME_RESERVE - 8, true),
            (WHOLE_FRAME_RESERVE + 1, false),
            (cfg.wire.limits.max_frame, false),
        ] {
            let (_, mut s) = session_pair(now, cfg);
            // CompleteBuffer (kind 7) announcing `len` body bytes, then 10 of them.
            let mut rx = BytesMut::from(&[0x01u8, 0x07][..]);
            let mut v = len as u64;
            while v >= 0x80 {
                rx.extend_from_slice(&[(v as u8) | 0x80]);
                v >>= 7;
            }
            rx.extend_from_slice(&[v as u8, 0x01, b'x']);
            rx.extend_from_slice(&[0x5a; 8]);
            s.handle_input(&mut rx, now).unwrap();
            assert!(!rx.is_empty());
            if whole {
                assert!(rx.capacity() >= len, "{len}: {}", rx.capacity());
            } else {
                assert!(
                    rx.capacity() <= 128 << 10,
                    "{len}: reserved {} for a stalled frame",
                    rx.capacity()
                );
            }
        }
    }
}
