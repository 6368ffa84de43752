//! The multiplexer state machine.
//!
//! # Poll order
//!
//! What a driver of a [`Mux`] calls, and when (the `tunnel` module's driver
//! follows this order on the physical connection's loop):
//!
//! * **Start.** [`Mux::new`] queues the HELLO: take the output and send it.
//!   Inside a secure session, [`Mux::bind_channel`] before any of the peer's
//!   bytes are handled (the tunnel driver does it when the secure handshake
//!   completed); [`Mux::restart_timers`] when the link opens later than the
//!   `Mux` was made (the ready deadline and idle timer count from then).
//! * **Input.** Every read goes to [`Mux::handle_input_buf`] (the link's
//!   `BytesMut`: large DATA payloads are split off uncopied, a partial frame
//!   may stay in the buffer for the next bytes) or [`Mux::handle_input`]
//!   (`&[u8]`, everything copied or held inside). When the control output
//!   reaches its cap, [`Mux::input_blocked`] is true and the rest of the input
//!   is held: stop reading the link, send the output, then call
//!   `handle_input(&[], now)` to handle what was held (it may block again).
//! * **Events.** After every input, timer or stream call, [`Mux::poll_event`]
//!   until it returns `None` ([`MuxEvent`]: the tunnel ready, listen changes,
//!   streams accepted, connected, readable, writable, finished, closed, the
//!   tunnel closed). `Readable` is edge-triggered (reported again only after
//!   a read found the stream drained): read ([`Mux::read_buf`] /
//!   [`Mux::read`]) until it returns `None`, or remember the stream and read
//!   it later, or it is never reported again. The driver may handle one event
//!   at a time and react (read, send, close) before taking the next.
//! * **Stream calls.** [`Mux::connect`], [`Mux::send`] / [`Mux::send_bytes`]
//!   (a short count: the send buffer is full, wait for `Writable`),
//!   [`Mux::read_buf`] (returns credit: window updates are queued),
//!   [`Mux::shutdown_write`], [`Mux::close`], [`Mux::reset`], [`Mux::listen`],
//!   [`Mux::close_tunnel`]: each may queue output.
//! * **Output.** [`Mux::write_output_parts`] (no copy of long payloads, for a
//!   vectored send) or [`Mux::write_output`]: control frames first, then
//!   stream data round-robin, up to about [`OUTPUT_LIMIT`] data bytes per
//!   call. Call it again until it returns 0 ([`Mux::wants_write`] says whether
//!   it would append anything), or until the transport refuses more (then wait
//!   for the transport's writable signal and go on).
//! * **Timers.** [`Mux::poll_timeout`] is the earliest of the keepalive ping,
//!   the idle timeout and the ready deadline (`None` once closed); when it has
//!   passed, [`Mux::handle_timeout`] (it may queue a PING or close the tunnel).
//!
//! **The loop rule.** After any call that takes input, time or a stream
//! operation: drain [`Mux::poll_event`] and react to the events, then write
//! the output until [`Mux::write_output`] returns 0 (or the transport is
//! full), then read [`Mux::poll_timeout`] again and re-arm the timer, then
//! check [`Mux::input_blocked`] before reading more. An input error is fatal
//! for the tunnel: a GOAWAY with the reason is queued and
//! [`MuxEvent::TunnelClosed`] reported; take the output once more, send it,
//! and close the link. Once closed, [`Mux::close_error`] says why.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use ring::hmac;
use zeroize::Zeroizing;

use crate::addr::{anonymous, AddrTable};
use crate::frame::{
    self, AuthMode, Frame, ListenChange, RefuseCode, BINDING_LEN, HEADER_LEN, HELLO_LEN, NONCE_LEN,
};
use crate::{Auth, Error, MuxConfig, MuxEvent, Role, StreamId};

/// Bytes one stream may put on the link in one round-robin turn.
pub const QUANTUM: usize = 16 * 1024;

/// DATA payloads at least this large are queued as slices of the link's read
/// buffer by [`Mux::handle_input_buf`]; smaller ones are copied.
pub const ZERO_COPY_MIN: usize = 16 * 1024;

/// A received DATA payload: borrowed from the input (copied when queued), or
/// already an owned slice of the link's buffer (queued as it is).
enum Payload<'a> {
    Slice(&'a [u8]),
    Owned(BytesMut),
}

impl Payload<'_> {
    fn len(&self) -> usize {
        match self {
            Payload::Slice(s) => s.len(),
            Payload::Owned(b) => b.len(),
        }
    }

    fn into_buf(self) -> BytesMut {
        match self {
            Payload::Slice(s) => BytesMut::from(s),
            Payload::Owned(b) => b,
        }
    }
}
/// [`Mux::write_output`] stops adding data frames once it appended this many bytes
/// (control frames are always appended in full).
pub const OUTPUT_LIMIT: usize = 256 * 1024;
/// Most listen addresses a peer may announce; more is a protocol error.
pub const MAX_PEER_LISTENS: usize = 65_536;

/// While data flows, the RTT is re-measured when the last sample is this old.
const RTT_REFRESH: Duration = Duration::from_secs(1);

// Stream flags.
const F_OPENING: u16 = 1 << 0; // we opened it; no ACCEPT yet
const F_PENDING_CONNECT: u16 = 1 << 1; // OPEN not sent yet (tunnel not ready)
const F_FIN_QUEUED: u16 = 1 << 2; // shutdown_write: FIN after the queued data
const F_FIN_SENT: u16 = 1 << 3;
const F_FIN_RECV: u16 = 1 << 4;
const F_APP_CLOSED: u16 = 1 << 5; // close(): incoming data is discarded
const F_SCHEDULED: u16 = 1 << 6; // in the send round-robin
const F_READ_NOTIFIED: u16 = 1 << 7; // Readable reported, not drained since
const F_WRITE_BLOCKED: u16 = 1 << 8; // a send was cut short

/// Queued outgoing bytes of one stream (allocated only while non-empty).
#[derive(Default)]
struct SendBuf {
    /// Older chunks (from `send_bytes`, or a frozen tail).
    chunks: VecDeque<Bytes>,
    /// Newest bytes copied in by `send`.
    tail: BytesMut,
    len: usize,
}

impl SendBuf {
    /// Appends the next `n` queued bytes to `out` (n <= len).
    fn copy_out(&mut self, mut n: usize, out: &mut Vec<u8>) {
        self.len -= n;
        while n > 0 {
            if let Some(front) = self.chunks.front_mut() {
                let k = n.min(front.len());
                out.extend_from_slice(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                n -= k;
            } else {
                let k = n.min(self.tail.len());
                out.extend_from_slice(&self.tail[..k]);
                self.tail.advance(k);
                n -= k;
            }
        }
    }
}

impl SendBuf {
    /// Moves the next `n` queued bytes (n <= len) to `out` without copying them:
    /// slices of the queued `Bytes`, and the copied-in tail split off and frozen.
    /// Pieces shorter than [`COPY_BELOW`] are copied into the head instead.
    fn take_out(&mut self, mut n: usize, out: &mut Parts<'_>) {
        self.len -= n;
        while n > 0 {
            let piece = if let Some(front) = self.chunks.front_mut() {
                let k = n.min(front.len());
                let piece = if k == front.len() {
                    self.chunks.pop_front().unwrap_or_default()
                } else {
                    front.split_to(k)
                };
                n -= k;
                piece
            } else {
                let k = n.min(self.tail.len());
                n -= k;
                self.tail.split_to(k).freeze()
            };
            out.payload(piece);
        }
    }
}

/// Payload pieces shorter than this are copied next to their frame header by
/// [`Mux::write_output_parts`] (a separate buffer costs more than the copy).
pub const COPY_BELOW: usize = 2048;

/// Where [`Mux::write_output_parts`] puts its output: headers, control frames and
/// short payloads are appended to `head`, which is cut off into `parts` before
/// each long payload slice.
struct Parts<'a> {
    head: &'a mut BytesMut,
    parts: &'a mut VecDeque<Bytes>,
    len: usize,
}

impl Parts<'_> {
    fn put(&mut self, b: &[u8]) {
        self.head.extend_from_slice(b);
        self.len += b.len();
    }
    fn payload(&mut self, piece: Bytes) {
        self.len += piece.len();
        if piece.len() < COPY_BELOW {
            self.head.extend_from_slice(&piece);
            return;
        }
        if !self.head.is_empty() {
            self.parts.push_back(self.head.split().freeze());
        }
        self.parts.push_back(piece);
    }
    fn finish(&mut self) {
        if !self.head.is_empty() {
            self.parts.push_back(self.head.split().freeze());
        }
    }
}

/// The output of one [`Mux`] turn: a contiguous buffer ([`Mux::write_output`]) or
/// header and payload pieces ([`Mux::write_output_parts`]).
trait Sink {
    /// Bytes appended so far.
    fn written(&self) -> usize;
    /// Appends bytes (headers, control frames).
    fn put(&mut self, b: &[u8]);
    /// Appends the next `n` queued bytes of `send`.
    fn data(&mut self, send: &mut SendBuf, n: usize);
}

impl Sink for Vec<u8> {
    fn written(&self) -> usize {
        self.len()
    }
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn data(&mut self, send: &mut SendBuf, n: usize) {
        send.copy_out(n, self);
    }
}

impl Sink for Parts<'_> {
    fn written(&self) -> usize {
        self.len
    }
    fn put(&mut self, b: &[u8]) {
        Parts::put(self, b);
    }
    fn data(&mut self, send: &mut SendBuf, n: usize) {
        send.take_out(n, self);
    }
}

/// The buffers of a stream that has data queued in either direction.
#[derive(Default)]
struct Bufs {
    send: SendBuf,
    recv: VecDeque<BytesMut>,
}

/// One stream. Kept small: an idle stream is only this plus its table slot.
struct Stream {
    /// Allocated while data is queued either way, freed when both sides drained.
    bufs: Option<Box<Bufs>>,
    /// Index into the address table (the listen address this stream is bound to).
    addr: u32,
    /// Bytes we may still send (peer's credit).
    send_credit: u32,
    /// Current receive window (auto-tuned).
    window: u32,
    /// Receive credit granted to the peer and not yet used.
    granted: u32,
    /// Received, unread bytes.
    buffered: u32,
    /// Start of the current auto-tune epoch (micros since the mux epoch, wrapping).
    epoch_us: u32,
    /// Bytes read in the current epoch.
    epoch_read: u32,
    flags: u16,
}

impl Stream {
    fn queued(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.send.len)
    }
    fn bufs(&mut self) -> &mut Bufs {
        self.bufs.get_or_insert_with(Default::default)
    }
    /// Frees the buffers once both directions are drained.
    fn trim(&mut self) {
        if self
            .bufs
            .as_ref()
            .is_some_and(|b| b.send.len == 0 && b.recv.is_empty())
        {
            self.bufs = None;
        }
    }
    fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
    fn sendable(&self) -> bool {
        if self.has(F_PENDING_CONNECT) || self.has(F_FIN_SENT) {
            return false;
        }
        let q = self.queued();
        (q > 0 && self.send_credit > 0) || (q == 0 && self.has(F_FIN_QUEUED))
    }
}

/// Removes flow info and scope id, which are not carried on the wire.
fn normalize(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port())
}

/// One end of a tunnel session: a sans-IO multiplexer of virtual connections.
///
/// See the crate documentation for the model and `docs/PROTOCOL.md` Part 4 for the
/// wire format and the flow-control rules.
///
/// Poll order in short (in full in the module docs of `zs-p2pvm/src/mux.rs`, a
/// private module): after every input ([`Mux::handle_input_buf`]), timer
/// ([`Mux::handle_timeout`]) or stream call, drain [`Mux::poll_event`], then
/// call [`Mux::write_output`] until it returns 0 (or the link is full), then
/// re-arm [`Mux::poll_timeout`], then check [`Mux::input_blocked`] (stop reading
/// until the output went out, then `handle_input(&[], now)`).
pub struct Mux {
    role: Role,
    cfg: MuxConfig,
    epoch: Instant,
    now: Instant,

    // Authentication.
    auth: Auth,
    my_hello: [u8; HELLO_LEN],
    peer_hello: Option<[u8; HELLO_LEN]>,
    /// The secure channel's binding, covered by PROOF (see `bind_channel`).
    binding: Option<Zeroizing<[u8; BINDING_LEN]>>,
    authed: bool,
    peer_max_payload: u32,
    /// The tunnel closes if it is not ready by then.
    ready_deadline: Option<Instant>,

    // Listen tables.
    local_listens: HashSet<SocketAddr>,
    peer_listens: HashSet<SocketAddr>,
    peer_table_done: bool,
    ready: bool,
    pending_connects: Vec<u32>,

    // Streams.
    streams: HashMap<u32, Stream>,
    addrs: AddrTable,
    next_local_id: u32,
    max_peer_id: u32,

    // Session-level flow control (receive side): `session_granted` is the session
    // credit the peer still has, `buffered_total` the unread bytes, `session_pending`
    // consumed bytes not yet returned. They always sum to `session_budget` once
    // authenticated.
    session_granted: usize,
    session_pending: usize,
    buffered_total: usize,
    // Session-level credit for sending.
    session_send: u64,
    // Streams with data and stream credit, waiting for session credit.
    session_blocked: VecDeque<u32>,

    // Output.
    ctrl: Vec<u8>,
    sched: VecDeque<u32>,

    // Input: a partial frame, or, while the control queue is at its cap, the input
    // held back (handled by the next `handle_input` once the output drained).
    inbuf: BytesMut,

    events: VecDeque<MuxEvent>,

    // Timers.
    last_recv: Instant,
    next_ping: Option<Instant>,
    ping_out: Option<(u64, Instant)>,
    ping_seq: u64,
    srtt: Option<Duration>,
    last_rtt: Option<Duration>,
    last_rtt_at: Instant,

    closed: bool,
    close_error: Option<Error>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("role", &self.role)
            .field("ready", &self.ready)
            .field("closed", &self.closed)
            .field("streams", &self.streams.len())
            .field("committed", &self.session_committed())
            .finish_non_exhaustive()
    }
}

impl Mux {
    /// Creates one end of a tunnel. The HELLO is queued at once: call
    /// [`write_output`](Self::write_output).
    ///
    /// Errors: [`Error::Config`] if `cfg.auth` is `None` (no authentication chosen:
    /// see [`MuxConfig::validate`]); [`Error::Rng`] if the OS random generator fails
    /// (the HELLO nonce never comes from a weaker source).
    ///
    /// Out-of-range settings are clamped: `max_frame_payload` to at least
    /// [`frame::MIN_FRAME_PAYLOAD`], `initial_window` to at least 1, `max_window` to at
    /// least `initial_window`, `send_buffer` to at least 1, `session_budget` and
    /// `max_control_bytes` to at least 1 KiB.
    pub fn new(role: Role, cfg: MuxConfig, now: Instant) -> Result<Mux, Error> {
        Mux::new_with_rng(role, cfg, now, &mut |buf| {
            use ring::rand::SecureRandom;
            ring::rand::SystemRandom::new().fill(buf)
        })
    }

    /// [`Mux::new`] with the random generator passed in (tests make it fail).
    fn new_with_rng(
        role: Role,
        cfg: MuxConfig,
        now: Instant,
        rng: &mut dyn FnMut(&mut [u8]) -> Result<(), ring::error::Unspecified>,
    ) -> Result<Mux, Error> {
        let auth = cfg.chosen_auth()?.clone();
        let mut cfg = cfg;
        cfg.max_frame_payload = cfg.max_frame_payload.max(frame::MIN_FRAME_PAYLOAD);
        cfg.initial_window = cfg.initial_window.max(1);
        cfg.max_window = cfg.max_window.max(cfg.initial_window);
        cfg.send_buffer = cfg.send_buffer.max(1);
        cfg.session_budget = cfg.session_budget.max(frame::MIN_FRAME_PAYLOAD as usize);
        cfg.max_control_bytes = cfg.max_control_bytes.max(frame::MIN_FRAME_PAYLOAD as usize);

        let mut nonce = [0u8; NONCE_LEN];
        // Fail closed: no nonce from a weaker source if the OS generator fails.
        rng(&mut nonce).map_err(|_| Error::Rng)?;
        let mode = match auth {
            Auth::None => AuthMode::None,
            Auth::Token(_) => AuthMode::Token,
        };
        let mut ctrl = Vec::with_capacity(64);
        Frame::Hello {
            mode,
            max_payload: cfg.max_frame_payload,
            nonce,
        }
        .encode(&mut ctrl);
        let mut my_hello = [0u8; HELLO_LEN];
        my_hello.copy_from_slice(&ctrl[HEADER_LEN..HEADER_LEN + HELLO_LEN]);

        Ok(Mux {
            role,
            epoch: now,
            now,
            auth,
            my_hello,
            peer_hello: None,
            binding: None,
            authed: false,
            peer_max_payload: frame::MIN_FRAME_PAYLOAD,
            ready_deadline: now.checked_add(cfg.ready_timeout),
            local_listens: HashSet::new(),
            peer_listens: HashSet::new(),
            peer_table_done: false,
            ready: false,
            pending_connects: Vec::new(),
            streams: HashMap::new(),
            addrs: AddrTable::default(),
            next_local_id: match role {
                Role::Initiator => 1,
                Role::Acceptor => 2,
            },
            max_peer_id: 0,
            session_granted: 0,
            session_pending: 0,
            buffered_total: 0,
            session_send: 0,
            session_blocked: VecDeque::new(),
            ctrl,
            sched: VecDeque::new(),
            inbuf: BytesMut::new(),
            events: VecDeque::new(),
            last_recv: now,
            next_ping: None,
            ping_out: None,
            ping_seq: 0,
            srtt: None,
            last_rtt: None,
            last_rtt_at: now,
            closed: false,
            close_error: None,
            cfg,
        })
    }

    /// Binds the authentication to the secure channel this tunnel runs over: the
    /// channel's 32-byte binding (zs-crypto's `Session::channel_binding`, secret,
    /// equal on both ends of one secure session) is appended to what each PROOF
    /// signs, so a token handshake relayed between two different secure sessions
    /// fails. Both ends must bind (to the same channel) or neither.
    ///
    /// Call it before the peer's HELLO is handled (the tunnel driver does it when
    /// the secure handshake completes, before any tunnel byte is read); later it
    /// returns [`Error::Config`] and changes nothing.
    pub fn bind_channel(&mut self, binding: [u8; BINDING_LEN]) -> Result<(), Error> {
        if self.peer_hello.is_some() || self.authed || self.closed {
            return Err(Error::Config(
                "channel binding set after the authentication started".into(),
            ));
        }
        self.binding = Some(Zeroizing::new(binding));
        Ok(())
    }

    /// Restarts the ready deadline ([`MuxConfig::ready_timeout`], if not ready yet)
    /// and the idle timer from `now`: for a driver that makes the Mux before its link
    /// exists (the tunnel driver calls it when the physical connection opens).
    pub fn restart_timers(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.now = now;
        self.last_recv = now;
        if !self.ready {
            self.ready_deadline = now.checked_add(self.cfg.ready_timeout);
        }
    }

    /// True while the queued control output is at its cap
    /// ([`MuxConfig::max_control_bytes`]): [`handle_input`](Self::handle_input) then
    /// holds what it is given instead of handling it. A driver should stop reading
    /// the link, drain [`write_output`](Self::write_output) to the link, and then
    /// call `handle_input(&[], now)` to handle the held input.
    pub fn input_blocked(&self) -> bool {
        self.ctrl.len() >= self.cfg.max_control_bytes
    }

    /// Bytes of control frames queued for [`write_output`](Self::write_output).
    pub fn control_len(&self) -> usize {
        self.ctrl.len()
    }

    /// Bytes received and not handled yet: a partial frame, plus input held while
    /// [`input_blocked`](Self::input_blocked).
    pub fn pending_input(&self) -> usize {
        self.inbuf.len()
    }

    /// The configuration in use (after clamping).
    pub fn config(&self) -> &MuxConfig {
        &self.cfg
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    // ------------------------------------------------------------------ input

    /// Feeds bytes received from the link (split anywhere).
    ///
    /// Frames are handled in order until the control queue reaches its cap
    /// ([`input_blocked`](Self::input_blocked)); the rest is held and handled by a
    /// later call (with more bytes or with none) once
    /// [`write_output`](Self::write_output) drained the queue.
    ///
    /// An error is fatal for the tunnel: a GOAWAY with the reason is queued (flush it
    /// with [`write_output`](Self::write_output), then drop the link) and a
    /// [`MuxEvent::TunnelClosed`] is reported. After the tunnel closed this returns
    /// [`Error::TunnelClosed`].
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), Error> {
        self.begin_input(!data.is_empty(), now)?;
        let r = self.input(data);
        self.input_result(r)
    }

    /// The clock and the idle timer of one input call; `TunnelClosed` once closed.
    fn begin_input(&mut self, some: bool, now: Instant) -> Result<(), Error> {
        if self.closed {
            return Err(Error::TunnelClosed);
        }
        self.now = now;
        if some {
            self.last_recv = now;
        }
        Ok(())
    }

    /// An input error is fatal: GOAWAY, `TunnelClosed`, and the error kept.
    fn input_result(&mut self, r: Result<(), Error>) -> Result<(), Error> {
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                let reason = match &e {
                    Error::AuthFailed => "authentication failed".to_string(),
                    other => other.to_string(),
                };
                self.fail(reason, true);
                self.close_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// [`handle_input`](Self::handle_input) over the link's own read buffer, the
    /// `zs_io` convention: `BytesMut` in, frames as slices of it. Every complete
    /// frame at the front of `data` is handled and taken out; a DATA payload of
    /// at least [`ZERO_COPY_MIN`] bytes is queued for its stream as a slice of
    /// `data` (split off, not copied: [`read_buf`](Self::read_buf) hands it on
    /// as it is). An incomplete DATA frame with such a payload at the end
    /// **stays in `data`** for the caller to complete with the next bytes (what a
    /// `zs_io` handler does by leaving it), so its payload arrives whole; any
    /// other incomplete frame, and input held because the control output is at its cap
    /// ([`input_blocked`](Self::input_blocked)), move into the Mux as with
    /// `handle_input` (the next call completes it first, copying only the bytes
    /// it needs). Errors as for `handle_input`.
    ///
    /// Smaller payloads are copied, so a queued slice never pins a read buffer
    /// more than `capacity / ZERO_COPY_MIN` times its own size in the worst case,
    /// and the session budget still bounds what the peer can make us hold.
    pub fn handle_input_buf(&mut self, data: &mut BytesMut, now: Instant) -> Result<(), Error> {
        self.begin_input(!data.is_empty(), now)?;
        let r = self.input_buf(data);
        self.input_result(r)
    }

    fn input_buf(&mut self, data: &mut BytesMut) -> Result<(), Error> {
        let max = self.cfg.max_frame_payload;
        let mut rest: &[u8] = data;
        let drained = self.drain_held(&mut rest)?;
        let used = data.len() - rest.len();
        if !drained {
            if !self.closed && self.input_blocked() {
                self.inbuf.extend_from_slice(rest);
            }
            data.clear();
            return Ok(());
        }
        data.advance(used);
        while !self.closed {
            if self.input_blocked() {
                self.inbuf.extend_from_slice(data);
                data.clear();
                return Ok(());
            }
            // The same parsing and checks as `process`, one frame at a time.
            let (id, payload_len, total) = match frame::decode(data, max)? {
                None => {
                    // A partial DATA frame that will be sliced stays in the link's
                    // buffer to arrive whole; any other partial frame waits in the
                    // Mux, so the buffer is handed back empty and reused.
                    let big = frame::decode_header(data, max)?.is_some_and(|h| {
                        h.ty == frame::ty::DATA && h.len as usize >= ZERO_COPY_MIN
                    });
                    if !big {
                        self.inbuf.extend_from_slice(data);
                        data.clear();
                    }
                    return Ok(());
                }
                Some((Frame::Data { id, payload }, n)) if self.authed => (id, payload.len(), n),
                Some((f, n)) => {
                    self.on_frame(f)?;
                    data.advance(n);
                    continue;
                }
            };
            let header = total - payload_len;
            if payload_len >= ZERO_COPY_MIN {
                let mut f = data.split_to(total);
                f.advance(header);
                self.on_data(id, Payload::Owned(f))?;
            } else {
                self.on_data(id, Payload::Slice(&data[header..total]))?;
                data.advance(total);
            }
        }
        Ok(())
    }

    fn input(&mut self, mut data: &[u8]) -> Result<(), Error> {
        if !self.drain_held(&mut data)? {
            if !self.closed && self.input_blocked() {
                self.inbuf.extend_from_slice(data);
            }
            return Ok(());
        }
        if self.inbuf.capacity() > 4 * self.cfg.max_frame_payload as usize {
            // Give back the memory of input held during a burst.
            self.inbuf = BytesMut::new();
        }
        let used = self.process(data)?;
        if !self.closed {
            self.inbuf.extend_from_slice(&data[used..]);
        }
        Ok(())
    }

    /// The bytes left from earlier calls first: held frames, then a partial
    /// frame, which is completed by copying only the bytes it needs from the
    /// front of `data` (advanced past them). `Ok(true)` when nothing is held any
    /// more; `Ok(false)` when the tunnel closed, input is blocked at the control
    /// cap (the caller keeps the rest of `data`) or `data` ran out.
    fn drain_held(&mut self, data: &mut &[u8]) -> Result<bool, Error> {
        let max = self.cfg.max_frame_payload;
        while !self.inbuf.is_empty() {
            if self.closed || self.input_blocked() {
                return Ok(false);
            }
            let need = match frame::decode_header(&self.inbuf, max)? {
                None => HEADER_LEN - self.inbuf.len(),
                Some(h) => (HEADER_LEN + h.len as usize).saturating_sub(self.inbuf.len()),
            };
            if need == 0 {
                // At least one complete frame: handle what can be handled now.
                let mut buf = std::mem::take(&mut self.inbuf);
                let used = self.process(&buf)?;
                if self.closed {
                    return Ok(false);
                }
                if used == buf.len() {
                    buf.clear();
                } else {
                    buf.advance(used);
                }
                self.inbuf = buf;
                continue;
            }
            if data.is_empty() {
                return Ok(false);
            }
            let take = need.min(data.len());
            self.inbuf.extend_from_slice(&data[..take]);
            *data = &data[take..];
        }
        Ok(true)
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes used.
    fn process(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let max = self.cfg.max_frame_payload;
        let mut pos = 0;
        while !self.closed && !self.input_blocked() {
            match frame::decode(&buf[pos..], max)? {
                None => break,
                Some((f, n)) => {
                    pos += n;
                    self.on_frame(f)?;
                }
            }
        }
        Ok(pos)
    }

    fn on_frame(&mut self, f: Frame<'_>) -> Result<(), Error> {
        if !self.authed {
            return match f {
                Frame::Hello {
                    mode, max_payload, ..
                } => self.on_hello(mode, max_payload, &f),
                Frame::Proof { mac } => self.on_proof(&mac),
                Frame::GoAway { reason } => {
                    self.fail(format!("peer closed the tunnel: {reason}"), false);
                    Ok(())
                }
                _ => Err(Error::Protocol("frame before authentication".into())),
            };
        }
        match f {
            Frame::Hello { .. } | Frame::Proof { .. } => {
                Err(Error::Protocol("repeated authentication frame".into()))
            }
            Frame::Listen { done, changes } => self.on_listen(done, changes),
            Frame::Open { id, window, addr } => self.on_open(id, window, addr),
            Frame::Accept { id, window } => self.on_accept(id, window),
            Frame::Refuse { id, code } => self.on_refuse(id, code),
            Frame::Data { id, payload } => self.on_data(id, Payload::Slice(payload)),
            Frame::Window { id, increment } => self.on_window(id, increment),
            Frame::Fin { id } => self.on_fin(id),
            Frame::Reset { id } => {
                self.check_known(id)?;
                if self.streams.contains_key(&id) {
                    self.free_stream(id, true);
                }
                Ok(())
            }
            Frame::Ping { value } => {
                Frame::Pong { value }.encode(&mut self.ctrl);
                Ok(())
            }
            Frame::Pong { value } => {
                if let Some((v, sent)) = self.ping_out {
                    if v == value {
                        self.ping_out = None;
                        self.last_rtt_at = self.now;
                        let rtt = self.now.saturating_duration_since(sent);
                        self.last_rtt = Some(rtt);
                        self.srtt = Some(match self.srtt {
                            None => rtt,
                            Some(s) => (s * 7 + rtt) / 8,
                        });
                        self.events.push_back(MuxEvent::Pong { rtt });
                    }
                }
                Ok(())
            }
            Frame::GoAway { reason } => {
                self.fail(format!("peer closed the tunnel: {reason}"), false);
                Ok(())
            }
        }
    }

    /// What a proof by `prover` signs (see [`frame::proof_message`]).
    fn transcript(&self, prover: Role) -> Zeroizing<Vec<u8>> {
        let peer = self.peer_hello.unwrap_or([0u8; HELLO_LEN]);
        let (hi, ha) = match self.role {
            Role::Initiator => (self.my_hello, peer),
            Role::Acceptor => (peer, self.my_hello),
        };
        Zeroizing::new(frame::proof_message(
            prover,
            &hi,
            &ha,
            self.binding.as_deref(),
        ))
    }

    fn on_hello(&mut self, mode: AuthMode, max_payload: u32, f: &Frame<'_>) -> Result<(), Error> {
        if self.peer_hello.is_some() {
            return Err(Error::Protocol("repeated HELLO".into()));
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + HELLO_LEN);
        f.encode(&mut bytes);
        let mut h = [0u8; HELLO_LEN];
        h.copy_from_slice(&bytes[HEADER_LEN..]);
        self.peer_hello = Some(h);
        self.peer_max_payload = max_payload;
        match (&self.auth, mode) {
            (Auth::None, AuthMode::None) => {
                self.on_authed();
                Ok(())
            }
            (Auth::Token(key), AuthMode::Token) => {
                let mac = frame::proof(key.secret(), &self.transcript(self.role));
                Frame::Proof { mac }.encode(&mut self.ctrl);
                Ok(())
            }
            _ => Err(Error::AuthFailed),
        }
    }

    fn on_proof(&mut self, mac: &[u8]) -> Result<(), Error> {
        let Auth::Token(key) = &self.auth else {
            return Err(Error::Protocol("unexpected PROOF".into()));
        };
        if self.peer_hello.is_none() {
            return Err(Error::Protocol("PROOF before HELLO".into()));
        }
        let peer_role = match self.role {
            Role::Initiator => Role::Acceptor,
            Role::Acceptor => Role::Initiator,
        };
        let k = hmac::Key::new(hmac::HMAC_SHA256, key.secret());
        // Constant-time comparison inside ring.
        if hmac::verify(&k, &self.transcript(peer_role), mac).is_err() {
            return Err(Error::AuthFailed);
        }
        self.on_authed();
        Ok(())
    }

    fn on_authed(&mut self) {
        self.authed = true;
        // Our listen table, in frames that fit the peer's limit; the last is marked.
        let mut addrs: Vec<SocketAddr> = self.local_listens.iter().copied().collect();
        addrs.sort();
        self.send_listen_changes(
            addrs
                .into_iter()
                .map(|addr| ListenChange { add: true, addr }),
            true,
        );
        // The whole session budget as session credit.
        self.session_pending = self.cfg.session_budget;
        self.flush_session_credit();
        // A first ping measures the RTT for window auto-tuning.
        self.send_ping();
        self.next_ping = self.cfg.keepalive.and_then(|k| self.now.checked_add(k));
    }

    fn send_listen_changes(&mut self, changes: impl Iterator<Item = ListenChange>, done: bool) {
        let limit = self.peer_max_payload as usize;
        let mut batch: Vec<ListenChange> = Vec::new();
        let mut size = 0;
        for c in changes {
            let n = 1 + zs_wire::addr::len(&c.addr);
            if size + n > limit {
                Frame::Listen {
                    done: false,
                    changes: std::mem::take(&mut batch),
                }
                .encode(&mut self.ctrl);
                size = 0;
            }
            size += n;
            batch.push(c);
        }
        if !batch.is_empty() || done {
            Frame::Listen {
                done,
                changes: batch,
            }
            .encode(&mut self.ctrl);
        }
    }

    fn send_ping(&mut self) {
        self.ping_seq += 1;
        self.ping_out = Some((self.ping_seq, self.now));
        Frame::Ping {
            value: self.ping_seq,
        }
        .encode(&mut self.ctrl);
    }

    fn on_listen(&mut self, done: bool, changes: Vec<ListenChange>) -> Result<(), Error> {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for c in changes {
            if c.add {
                if self.peer_listens.insert(c.addr) {
                    if self.peer_listens.len() > MAX_PEER_LISTENS {
                        return Err(Error::Protocol("too many peer listen addresses".into()));
                    }
                    removed.retain(|a| *a != c.addr);
                    added.push(c.addr);
                }
            } else if self.peer_listens.remove(&c.addr) {
                added.retain(|a| *a != c.addr);
                removed.push(c.addr);
            }
        }
        if !added.is_empty() || !removed.is_empty() {
            self.events
                .push_back(MuxEvent::PeerListen { added, removed });
        }
        if done && !self.peer_table_done {
            self.peer_table_done = true;
            self.ready = true;
            self.ready_deadline = None;
            self.events.push_back(MuxEvent::Ready);
            let pending = std::mem::take(&mut self.pending_connects);
            for id in pending {
                self.start_pending_connect(id);
            }
        }
        Ok(())
    }

    fn start_pending_connect(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        let addr = self.addrs.get(s.addr);
        if !self.peer_listens.contains(&addr) {
            self.release_stream(id);
            self.events.push_back(MuxEvent::ConnectFailed {
                id: StreamId(id),
                error: Error::UnknownAddress(addr),
            });
            return;
        }
        let window = self.cfg.initial_window;
        if let Some(s) = self.streams.get_mut(&id) {
            s.flags &= !F_PENDING_CONNECT;
            s.granted = window;
        }
        Frame::Open { id, window, addr }.encode(&mut self.ctrl);
        self.schedule(id);
    }

    fn is_local_id(&self, id: u32) -> bool {
        (id % 2 == 1) == (self.role == Role::Initiator)
    }

    /// Errors if `id` was never opened by either side.
    fn check_known(&self, id: u32) -> Result<(), Error> {
        let known = if self.is_local_id(id) {
            id < self.next_local_id && !self.pending_connects.contains(&id)
        } else {
            id <= self.max_peer_id
        };
        if known {
            Ok(())
        } else {
            Err(Error::Protocol(format!(
                "frame for stream {id}, which was never opened"
            )))
        }
    }

    fn on_open(&mut self, id: u32, window: u32, addr: SocketAddr) -> Result<(), Error> {
        if self.is_local_id(id) || id <= self.max_peer_id {
            return Err(Error::Protocol(format!(
                "bad or reused stream id {id} in OPEN"
            )));
        }
        self.max_peer_id = id;
        let code = if !self.local_listens.contains(&addr) {
            Some(RefuseCode::UnknownAddress)
        } else if self.streams.len() >= self.cfg.max_streams as usize {
            Some(RefuseCode::TooManyStreams)
        } else {
            None
        };
        if let Some(code) = code {
            Frame::Refuse { id, code }.encode(&mut self.ctrl);
            return Ok(());
        }
        let grant = self.cfg.initial_window;
        let a = self.addrs.intern(addr);
        self.streams.insert(
            id,
            Stream {
                bufs: None,
                addr: a,
                send_credit: window,
                window: self.cfg.initial_window,
                granted: grant,
                buffered: 0,
                epoch_us: self.now_us(),
                epoch_read: 0,
                flags: 0,
            },
        );
        Frame::Accept { id, window: grant }.encode(&mut self.ctrl);
        self.events.push_back(MuxEvent::Incoming {
            id: StreamId(id),
            local: addr,
            peer: anonymous(addr),
        });
        Ok(())
    }

    fn own_stream(&mut self, id: u32, what: &str) -> Result<Option<&mut Stream>, Error> {
        if !self.is_local_id(id) {
            return Err(Error::Protocol(format!(
                "{what} for a stream the peer opened"
            )));
        }
        self.check_known(id)?;
        Ok(self.streams.get_mut(&id))
    }

    fn on_accept(&mut self, id: u32, window: u32) -> Result<(), Error> {
        let Some(s) = self.own_stream(id, "ACCEPT")? else {
            return Ok(()); // we reset it meanwhile
        };
        if !s.has(F_OPENING) {
            return Err(Error::Protocol(format!(
                "ACCEPT for stream {id}, which is open"
            )));
        }
        s.flags &= !F_OPENING;
        s.send_credit = window;
        self.events
            .push_back(MuxEvent::Connected { id: StreamId(id) });
        self.schedule(id);
        Ok(())
    }

    fn on_refuse(&mut self, id: u32, code: RefuseCode) -> Result<(), Error> {
        let Some(s) = self.own_stream(id, "REFUSE")? else {
            return Ok(());
        };
        if !s.has(F_OPENING) {
            return Err(Error::Protocol(format!(
                "REFUSE for stream {id}, which is open"
            )));
        }
        let a = s.addr;
        let addr = self.addrs.get(a);
        self.release_stream(id);
        let error = match code {
            RefuseCode::UnknownAddress => Error::UnknownAddress(addr),
            RefuseCode::TooManyStreams => Error::TooManyStreams,
        };
        self.events.push_back(MuxEvent::ConnectFailed {
            id: StreamId(id),
            error,
        });
        Ok(())
    }

    fn on_data(&mut self, id: u32, payload: Payload<'_>) -> Result<(), Error> {
        self.check_known(id)?;
        let len = payload.len();
        // Every DATA byte uses session credit, whatever happens to it.
        if len > self.session_granted {
            return Err(Error::Protocol(format!(
                "{len} bytes received with only {} session credit",
                self.session_granted
            )));
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // Closed here meanwhile: drop the bytes, return the session credit.
            self.session_granted -= len;
            self.return_session(len);
            return Ok(());
        };
        if s.has(F_OPENING) {
            return Err(Error::Protocol(format!(
                "DATA on stream {id} before ACCEPT"
            )));
        }
        if s.has(F_FIN_RECV) {
            return Err(Error::Protocol(format!("DATA on stream {id} after FIN")));
        }
        if len > s.granted as usize {
            return Err(Error::Protocol(format!(
                "stream {id}: {len} bytes received with only {} credit",
                s.granted
            )));
        }
        if len == 0 {
            return Ok(());
        }
        s.granted -= len as u32;
        self.session_granted -= len;
        if s.has(F_APP_CLOSED) {
            // Nobody will read: drop the bytes and hand the credit back so the peer
            // can finish.
            self.return_session(len);
            self.maybe_grant(id);
            return Ok(());
        }
        s.buffered += len as u32;
        self.buffered_total += len;
        s.bufs().recv.push_back(payload.into_buf());
        if !s.has(F_READ_NOTIFIED) {
            s.flags |= F_READ_NOTIFIED;
            self.events
                .push_back(MuxEvent::Readable { id: StreamId(id) });
        }
        Ok(())
    }

    fn on_window(&mut self, id: u32, increment: u32) -> Result<(), Error> {
        if id == 0 {
            self.session_send = self
                .session_send
                .checked_add(increment as u64)
                .ok_or_else(|| Error::Protocol("session credit overflow".into()))?;
            let blocked = std::mem::take(&mut self.session_blocked);
            for id in blocked {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.flags &= !F_SCHEDULED;
                }
                self.schedule(id);
            }
            return Ok(());
        }
        self.check_known(id)?;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if s.has(F_OPENING) {
            return Err(Error::Protocol(format!(
                "WINDOW on stream {id} before ACCEPT"
            )));
        }
        s.send_credit = s
            .send_credit
            .checked_add(increment)
            .ok_or_else(|| Error::Protocol(format!("stream {id}: credit overflow")))?;
        self.schedule(id);
        Ok(())
    }

    fn on_fin(&mut self, id: u32) -> Result<(), Error> {
        self.check_known(id)?;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if s.has(F_FIN_RECV) {
            return Err(Error::Protocol(format!("second FIN on stream {id}")));
        }
        if s.has(F_OPENING) {
            return Err(Error::Protocol(format!("FIN on stream {id} before ACCEPT")));
        }
        s.flags |= F_FIN_RECV;
        s.granted = 0;
        self.events
            .push_back(MuxEvent::Finished { id: StreamId(id) });
        self.maybe_free(id);
        Ok(())
    }

    // ------------------------------------------------------------ flow control

    fn now_us(&self) -> u32 {
        self.now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    /// Counts `n` consumed (read or dropped) bytes; returns them to the peer as
    /// session credit once enough accumulated.
    fn return_session(&mut self, n: usize) {
        self.session_pending += n;
        let threshold = (self.cfg.session_budget / 4).clamp(1, 64 * 1024);
        if self.session_pending >= threshold {
            self.flush_session_credit();
        }
    }

    fn flush_session_credit(&mut self) {
        while self.session_pending > 0 {
            let inc = self.session_pending.min(u32::MAX as usize);
            self.session_pending -= inc;
            self.session_granted += inc;
            Frame::Window {
                id: 0,
                increment: inc as u32,
            }
            .encode(&mut self.ctrl);
        }
    }

    /// Tops the stream's credit up to its window once the deficit is at least half a
    /// window (so updates are batched).
    fn maybe_grant(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.has(F_FIN_RECV | F_PENDING_CONNECT) {
            return;
        }
        let have = s.granted as u64 + s.buffered as u64;
        let target = s.window as u64;
        if have >= target {
            return;
        }
        let deficit = target - have;
        if deficit < target.div_ceil(2) {
            return;
        }
        s.granted += deficit as u32;
        Frame::Window {
            id,
            increment: deficit as u32,
        }
        .encode(&mut self.ctrl);
    }

    // ---------------------------------------------------------------- output

    /// Appends bytes for the link to `out` and returns how many: all pending control
    /// frames first, then stream data round-robin ([`QUANTUM`] bytes per stream per
    /// turn) until about [`OUTPUT_LIMIT`] bytes were appended or no stream can send.
    pub fn write_output(&mut self, out: &mut Vec<u8>) -> usize {
        self.write_output_limit(out, OUTPUT_LIMIT)
    }

    /// Like [`write_output`](Self::write_output) with a custom data limit (at least
    /// one data frame is written if any stream can send).
    pub fn write_output_limit(&mut self, out: &mut Vec<u8>, limit: usize) -> usize {
        let start = out.len();
        self.write_to(out, limit);
        out.len() - start
    }

    /// Like [`write_output_limit`](Self::write_output_limit), but DATA payloads are
    /// not copied: the output is appended to `parts` as pieces for a vectored send
    /// (`zs_io::Connection::send_vectored`). Frame headers, control frames and
    /// payload pieces shorter than [`COPY_BELOW`] are written into `head` (kept by
    /// the caller for reuse; cut off into `parts` before each long payload); a
    /// long payload is the very `Bytes` given to [`send_bytes`](Self::send_bytes),
    /// sliced, or the bytes copied in by [`send`](Self::send), split off. The
    /// concatenated pieces are exactly what `write_output_limit` would have
    /// written. Returns the number of bytes appended.
    pub fn write_output_parts(
        &mut self,
        head: &mut BytesMut,
        parts: &mut VecDeque<Bytes>,
        limit: usize,
    ) -> usize {
        let mut sink = Parts {
            head,
            parts,
            len: 0,
        };
        self.write_to(&mut sink, limit);
        sink.finish();
        sink.len
    }

    fn write_to(&mut self, out: &mut impl Sink, limit: usize) {
        out.put(&self.ctrl);
        self.ctrl.clear();
        if self.ctrl.capacity() > 64 * 1024 {
            self.ctrl.shrink_to(1024);
        }
        if self.closed {
            return;
        }
        let max_frame = (self.peer_max_payload as usize).min(QUANTUM);
        let data_start = out.written();
        while out.written() - data_start < limit.max(1) {
            let Some(id) = self.sched.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if !s.sendable() {
                s.flags &= !F_SCHEDULED;
                continue;
            }
            if s.queued() > 0 && self.session_send == 0 {
                // Stays marked scheduled; rescheduled when session credit arrives.
                self.session_blocked.push_back(id);
                continue;
            }
            s.flags &= !F_SCHEDULED;
            let n = s
                .queued()
                .min(s.send_credit as usize)
                .min(max_frame)
                .min(self.session_send.min(usize::MAX as u64) as usize);
            if n > 0 {
                out.put(&frame::header(frame::ty::DATA, 0, id, n as u32));
                if let Some(b) = s.bufs.as_mut() {
                    out.data(&mut b.send, n);
                    if b.send.len == 0 {
                        b.send = SendBuf::default();
                        s.trim(); // free the buffers when drained
                    }
                }
                s.send_credit -= n as u32;
                self.session_send -= n as u64;
                if s.has(F_WRITE_BLOCKED) && s.queued() <= self.cfg.send_buffer / 2 {
                    s.flags &= !F_WRITE_BLOCKED;
                    self.events
                        .push_back(MuxEvent::Writable { id: StreamId(id) });
                }
            }
            if s.queued() == 0 && s.has(F_FIN_QUEUED) && !s.has(F_FIN_SENT) {
                s.flags |= F_FIN_SENT;
                out.put(&frame::header(frame::ty::FIN, 0, id, 0));
                self.maybe_free(id);
                continue;
            }
            if s.sendable() {
                s.flags |= F_SCHEDULED;
                self.sched.push_back(id);
            }
        }
    }

    /// True if [`write_output`](Self::write_output) has something to append.
    pub fn wants_write(&self) -> bool {
        if !self.ctrl.is_empty() {
            return true;
        }
        !self.closed
            && self.sched.iter().any(|id| {
                self.streams
                    .get(id)
                    .is_some_and(|s| s.sendable() && (s.queued() == 0 || self.session_send > 0))
            })
    }

    fn schedule(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.has(F_SCHEDULED) && s.sendable() {
                s.flags |= F_SCHEDULED;
                self.sched.push_back(id);
            }
        }
    }

    // ---------------------------------------------------------------- events, time

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        let e = self.events.pop_front();
        if self.events.is_empty() && self.events.capacity() > 1024 {
            // A burst (a storm of closes) is over: give its memory back.
            self.events = VecDeque::new();
        }
        e
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let idle = self
            .cfg
            .idle_timeout
            .and_then(|d| self.last_recv.checked_add(d));
        [idle, self.next_ping, self.ready_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs timers: keepalive pings, the idle timeout and the ready deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.now = now;
        if self.ready_deadline.is_some_and(|at| now >= at) {
            let what = if self.authed {
                "the peer's listen table"
            } else {
                "authentication"
            };
            self.fail(
                format!(
                    "not ready within {:?}: {what} incomplete",
                    self.cfg.ready_timeout
                ),
                true,
            );
            return;
        }
        if let Some(idle) = self.cfg.idle_timeout {
            if self.last_recv.checked_add(idle).is_some_and(|at| now >= at) {
                self.fail(format!("idle timeout: nothing received for {idle:?}"), true);
                return;
            }
        }
        if let (Some(at), Some(every)) = (self.next_ping, self.cfg.keepalive) {
            if now >= at {
                self.send_ping();
                self.next_ping = now.checked_add(every);
            }
        }
    }

    /// True once authentication is done and both listen tables were exchanged.
    pub fn is_ready(&self) -> bool {
        self.ready && !self.closed
    }

    /// True after the tunnel closed (any reason).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Why the tunnel closed, once it did: [`Error::AuthFailed`] (wrong token or
    /// mismatched auth modes, detected here), [`Error::Protocol`] (the peer broke the
    /// protocol), or [`Error::TunnelClosed`] (GOAWAY received, idle timeout, ready
    /// deadline, or [`close_tunnel`](Self::close_tunnel)). `None` while open.
    pub fn close_error(&self) -> Option<&Error> {
        self.close_error.as_ref()
    }

    // ---------------------------------------------------------------- listen tables

    /// Listens on a virtual address; the peer learns it (before the tunnel is ready:
    /// with the initial table). Incoming streams are accepted automatically.
    pub fn listen(&mut self, addr: SocketAddr) -> Result<(), Error> {
        if self.closed {
            return Err(Error::TunnelClosed);
        }
        let addr = normalize(addr);
        if !self.local_listens.insert(addr) {
            return Err(Error::AddressInUse(addr));
        }
        if self.authed {
            self.send_listen_changes(std::iter::once(ListenChange { add: true, addr }), false);
        }
        Ok(())
    }

    /// Stops listening on a virtual address (open streams are not affected).
    pub fn unlisten(&mut self, addr: SocketAddr) {
        let addr = normalize(addr);
        if self.local_listens.remove(&addr) && self.authed && !self.closed {
            self.send_listen_changes(std::iter::once(ListenChange { add: false, addr }), false);
        }
    }

    /// The virtual addresses this side listens on.
    pub fn local_listens(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.local_listens.iter().copied()
    }

    /// The virtual addresses the peer listens on (as far as known).
    pub fn peer_listens(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peer_listens.iter().copied()
    }

    // ---------------------------------------------------------------- streams

    /// Opens a virtual connection to a peer's listen address.
    ///
    /// If the tunnel is ready and the peer does not listen there: `Err(UnknownAddress)`.
    /// Before it is ready, the connect is queued and checked when the peer's table
    /// arrives ([`MuxEvent::ConnectFailed`] if unknown). Data may be sent at once; it
    /// goes out after the peer accepted.
    pub fn connect(&mut self, addr: SocketAddr) -> Result<StreamId, Error> {
        if self.closed {
            return Err(Error::TunnelClosed);
        }
        let addr = normalize(addr);
        if self.ready && !self.peer_listens.contains(&addr) {
            return Err(Error::UnknownAddress(addr));
        }
        if self.streams.len() >= self.cfg.max_streams as usize {
            return Err(Error::TooManyStreams);
        }
        let id = self.next_local_id;
        self.next_local_id = id.checked_add(2).ok_or(Error::TooManyStreams)?;
        let a = self.addrs.intern(addr);
        let mut s = Stream {
            bufs: None,
            addr: a,
            send_credit: 0,
            window: self.cfg.initial_window,
            granted: 0,
            buffered: 0,
            epoch_us: self.now_us(),
            epoch_read: 0,
            flags: F_OPENING,
        };
        if self.ready {
            let window = self.cfg.initial_window;
            s.granted = window;
            self.streams.insert(id, s);
            Frame::Open { id, window, addr }.encode(&mut self.ctrl);
        } else {
            s.flags |= F_PENDING_CONNECT;
            self.streams.insert(id, s);
            self.pending_connects.push(id);
        }
        Ok(StreamId(id))
    }

    fn writable_stream(&mut self, id: StreamId) -> Result<&mut Stream, Error> {
        if self.closed {
            return Err(Error::TunnelClosed);
        }
        let s = self
            .streams
            .get_mut(&id.0)
            .ok_or(Error::UnknownStream(id))?;
        if s.has(F_FIN_QUEUED | F_APP_CLOSED) {
            return Err(Error::StreamClosed(id));
        }
        Ok(s)
    }

    /// Copies up to the free send-buffer space of `data`; `Ok(0)` means the buffer is
    /// full: wait for [`MuxEvent::Writable`].
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> Result<usize, Error> {
        let cap = self.cfg.send_buffer;
        let s = self.writable_stream(id)?;
        let n = data.len().min(cap - s.queued());
        if n < data.len() {
            s.flags |= F_WRITE_BLOCKED;
        }
        if n == 0 {
            return Ok(0);
        }
        let sb = &mut s.bufs().send;
        sb.tail.extend_from_slice(&data[..n]);
        sb.len += n;
        self.schedule(id.0);
        Ok(n)
    }

    /// Zero-copy variant of [`send`](Self::send): queues (a prefix of) `data` without
    /// copying it.
    pub fn send_bytes(&mut self, id: StreamId, mut data: Bytes) -> Result<usize, Error> {
        let cap = self.cfg.send_buffer;
        let s = self.writable_stream(id)?;
        let n = data.len().min(cap - s.queued());
        if n < data.len() {
            s.flags |= F_WRITE_BLOCKED;
            data.truncate(n);
        }
        if n == 0 {
            return Ok(0);
        }
        let sb = &mut s.bufs().send;
        if !sb.tail.is_empty() {
            let t = sb.tail.split().freeze();
            sb.chunks.push_back(t);
        }
        sb.chunks.push_back(data);
        sb.len += n;
        self.schedule(id.0);
        Ok(n)
    }

    /// Takes up to `max` received bytes (possibly fewer than available: call again).
    /// `None` means nothing to read now (after [`MuxEvent::Finished`]: nothing ever).
    /// Reading returns credit to the peer.
    pub fn read(&mut self, id: StreamId, max: usize) -> Result<Option<Bytes>, Error> {
        Ok(self.read_buf(id, max)?.map(BytesMut::freeze))
    }

    /// [`read`](Self::read) as a `BytesMut`: a DATA payload that arrived through
    /// [`handle_input_buf`](Self::handle_input_buf) is the very slice of the
    /// link's read buffer (no copy), ready to be handed to a `zs_io` handler.
    pub fn read_buf(&mut self, id: StreamId, max: usize) -> Result<Option<BytesMut>, Error> {
        if self.closed {
            return Err(Error::TunnelClosed);
        }
        let now_us = self.now_us();
        // RTT floor of 1 ms for the comparison: on a LAN, a window read in under
        // 2 ms is worth growing anyway.
        // The larger of the smoothed and the latest sample, so a stale small
        // estimate does not hold the window back once the path got slower.
        let srtt_us = self
            .srtt
            .zip(self.last_rtt)
            .map(|(a, b)| a.max(b).as_micros().clamp(1000, u32::MAX as u128) as u32);
        let mut epoch_done = false;
        let max_window = self.cfg.max_window;
        let s = self
            .streams
            .get_mut(&id.0)
            .ok_or(Error::UnknownStream(id))?;
        let Some(q) = s
            .bufs
            .as_mut()
            .map(|b| &mut b.recv)
            .filter(|q| !q.is_empty())
        else {
            s.flags &= !F_READ_NOTIFIED;
            return Ok(None);
        };
        if max == 0 {
            return Ok(None);
        }
        let Some(front) = q.front_mut() else {
            return Ok(None);
        };
        let chunk = if front.len() <= max {
            q.pop_front().unwrap_or_default()
        } else {
            front.split_to(max)
        };
        if q.is_empty() {
            *q = VecDeque::new();
            s.trim(); // free the buffers when drained
            s.flags &= !F_READ_NOTIFIED;
        }
        let n = chunk.len();
        s.buffered -= n as u32;
        self.buffered_total -= n;
        // Auto-tune: a full window read in under ~2 RTT means the window, not the
        // reader, limits the stream: double it.
        s.epoch_read = s.epoch_read.saturating_add(n as u32);
        if s.epoch_read >= s.window {
            let elapsed = now_us.wrapping_sub(s.epoch_us);
            if let Some(rtt) = srtt_us {
                if elapsed < rtt.saturating_mul(2) && s.window < max_window {
                    s.window = s.window.saturating_mul(2).min(max_window);
                }
            }
            s.epoch_us = now_us;
            s.epoch_read = 0;
            epoch_done = true;
        }
        // Keep the RTT estimate fresh while data flows (one probe per second at most).
        if epoch_done
            && self.ping_out.is_none()
            && self.now.saturating_duration_since(self.last_rtt_at) >= RTT_REFRESH
        {
            self.send_ping();
        }
        self.return_session(n);
        self.maybe_grant(id.0);
        self.maybe_free(id.0);
        Ok(Some(chunk))
    }

    /// Bytes accepted by [`send`](Self::send) / [`send_bytes`](Self::send_bytes) on
    /// this stream and not yet written by [`write_output`](Self::write_output)
    /// (0 if unknown).
    pub fn send_queued(&self, id: StreamId) -> usize {
        self.streams.get(&id.0).map_or(0, |s| s.queued())
    }

    /// Received bytes waiting to be read on this stream (0 if unknown).
    pub fn readable_len(&self, id: StreamId) -> usize {
        self.streams.get(&id.0).map_or(0, |s| s.buffered as usize)
    }

    /// Sends FIN after the queued data; reading continues.
    pub fn shutdown_write(&mut self, id: StreamId) -> Result<(), Error> {
        if self.closed {
            return Err(Error::TunnelClosed);
        }
        let s = self
            .streams
            .get_mut(&id.0)
            .ok_or(Error::UnknownStream(id))?;
        if !s.has(F_FIN_QUEUED) {
            s.flags |= F_FIN_QUEUED;
            self.schedule(id.0);
        }
        Ok(())
    }

    /// Graceful close: FIN after the queued data, unread and later data is dropped,
    /// and the stream is freed ([`MuxEvent::Closed`]) once the peer finished too.
    pub fn close(&mut self, id: StreamId) {
        if self.closed {
            return;
        }
        let Some(s) = self.streams.get_mut(&id.0) else {
            return;
        };
        s.flags |= F_APP_CLOSED | F_FIN_QUEUED;
        let dropped = s.buffered as usize;
        s.buffered = 0;
        if let Some(b) = s.bufs.as_mut() {
            b.recv = VecDeque::new();
        }
        s.trim();
        self.buffered_total -= dropped;
        self.return_session(dropped);
        self.schedule(id.0);
        self.maybe_grant(id.0);
        self.maybe_free(id.0);
    }

    /// Aborts the stream now: queued data is dropped, the peer gets RESET, and the
    /// stream is freed ([`MuxEvent::Closed`] with `reset: true`).
    pub fn reset(&mut self, id: StreamId) {
        if self.closed {
            return;
        }
        let Some(s) = self.streams.get(&id.0) else {
            return;
        };
        if !s.has(F_PENDING_CONNECT) {
            Frame::Reset { id: id.0 }.encode(&mut self.ctrl);
        }
        self.free_stream(id.0, true);
    }

    /// Frees the stream if both directions are finished and everything was read.
    fn maybe_free(&mut self, id: u32) {
        if let Some(s) = self.streams.get(&id) {
            if s.has(F_FIN_SENT) && s.has(F_FIN_RECV) && s.buffered == 0 {
                self.free_stream(id, false);
            }
        }
    }

    fn free_stream(&mut self, id: u32, reset: bool) {
        self.release_stream(id);
        self.events.push_back(MuxEvent::Closed {
            id: StreamId(id),
            reset,
        });
    }

    /// Removes a stream and returns its budget share.
    fn release_stream(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            self.buffered_total -= s.buffered as usize;
            self.addrs.release(s.addr);
            if s.buffered > 0 && !self.closed {
                self.return_session(s.buffered as usize);
            }
        }
        let (len, cap) = (self.streams.len(), self.streams.capacity());
        if cap > 1024 && len * 4 < cap {
            // Most streams of a past storm are gone: give the table memory back
            // (amortized: only after three quarters of the capacity emptied).
            self.streams.shrink_to(len * 2);
        }
        if self.streams.is_empty() {
            // Drop stale ids and give back the memory of a past storm.
            self.sched.clear();
            self.session_blocked.clear();
            self.sched.shrink_to_fit();
            self.session_blocked.shrink_to_fit();
        }
    }

    /// Number of open streams (both directions, including ones still opening).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Smoothed round-trip time from pings, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// (local, peer) virtual addresses of a stream. The listen address is the real one;
    /// the other end is anonymous (unspecified address of the same family, port 0).
    pub fn stream_addrs(&self, id: StreamId) -> Option<(SocketAddr, SocketAddr)> {
        let s = self.streams.get(&id.0)?;
        let a = self.addrs.get(s.addr);
        Some(if self.is_local_id(id.0) {
            (anonymous(a), a)
        } else {
            (a, anonymous(a))
        })
    }

    /// Current receive window of a stream (it grows by auto-tuning).
    pub fn recv_window(&self, id: StreamId) -> Option<u32> {
        self.streams.get(&id.0).map(|s| s.window)
    }

    /// Bytes of the session budget in use: session credit the peer still holds plus
    /// received unread bytes over all streams (consumed bytes not yet returned to the
    /// peer make up the rest). Never above [`MuxConfig::session_budget`].
    pub fn session_committed(&self) -> usize {
        self.session_granted + self.buffered_total
    }

    /// Received, unread bytes over all streams (≤ `session_committed`).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_total
    }

    /// Sends GOAWAY with `reason` and closes every stream; a
    /// [`MuxEvent::TunnelClosed`] follows.
    pub fn close_tunnel(&mut self, reason: &str) {
        self.fail(reason.to_string(), true);
    }

    fn fail(&mut self, reason: String, send_goaway: bool) {
        if self.closed {
            return;
        }
        self.close_error = Some(Error::TunnelClosed);
        if send_goaway {
            Frame::GoAway {
                reason: reason.clone(),
            }
            .encode(&mut self.ctrl);
        }
        self.closed = true;
        self.ready = false;
        self.streams = HashMap::new();
        self.addrs.clear();
        self.sched = VecDeque::new();
        self.session_blocked = VecDeque::new();
        self.pending_connects = Vec::new();
        self.session_granted = 0;
        self.session_pending = 0;
        self.session_send = 0;
        self.buffered_total = 0;
        self.inbuf = BytesMut::new();
        self.next_ping = None;
        self.events.push_back(MuxEvent::TunnelClosed { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_generation_fails_closed() {
        let cfg = MuxConfig::new(Auth::None);
        let now = Instant::now();
        let broken = Mux::new_with_rng(Role::Initiator, cfg.clone(), now, &mut |_| {
            Err(ring::error::Unspecified)
        });
        assert_eq!(broken.err(), Some(Error::Rng));
        // A working generator: the HELLO carries its bytes.
        let mut m = Mux::new_with_rng(Role::Initiator, cfg, now, &mut |b| {
            b.fill(0x5A);
            Ok(())
        })
        .unwrap();
        let mut out = Vec::new();
        m.write_output(&mut out);
        assert_eq!(
            &out[HEADER_LEN + 6..HEADER_LEN + 6 + NONCE_LEN],
            &[0x5A; NONCE_LEN]
        );
    }

    #[test]
    fn idle_stream_entry_is_small() {
        // One table slot: key + stream. hashbrown adds one control byte per bucket
        // and keeps the load at most 7/8 (buckets are a power of two).
        let slot = std::mem::size_of::<(u32, Stream)>();
        assert!(slot <= 48, "stream table slot is {slot} bytes");
        // An idle stream owns no heap memory: both buffers are None.
        assert_eq!(std::mem::size_of::<Option<Box<Bufs>>>(), 8);
    }
}
