//! The sans-IO session: zs-wire frames carried inside zs-crypto records.
//!
//! A [`Session`] is one end of one connection. Feed it received bytes with
//! [`Session::handle_input`], take the bytes to send with [`Session::write_output`],
//! read [`Event`]s with [`Session::poll_event`], and drive time with
//! [`Session::poll_timeout`] / [`Session::handle_timeout`]. It owns no socket,
//! thread or clock; `now` is always passed in.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_crypto::{SecureSession, SuiteId};
use zs_wire::{DataFrame, Frame, FrameCodec, Text};

use crate::error::{code, Error, Result};

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
    /// BigStream chunk size in bytes. Default 256 KiB.
    pub big_chunk: usize,
    /// BigStream window: most bytes sent and not yet acknowledged per transfer
    /// (back-pressure without stop-and-wait). Default 4 MiB.
    pub big_window: u64,
    /// Most BigStream transfers received at once. Default 64.
    pub max_big_streams: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            wire: zs_wire::Config::default(),
            max_complete_buffer: 4 << 20,
            max_open_batches: 64,
            max_batch_frames: 1024,
            big_chunk: 256 * 1024,
            big_window: 4 << 20,
            max_big_streams: 64,
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
    /// with a DataFrame (request id `id`).
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
    /// The secure handshake completed; `suite` is the negotiated suite when known.
    Established {
        /// Negotiated suite.
        suite: SuiteId,
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
    /// The peer closed the session in an orderly way.
    Closed,
}

struct Pending {
    deadline: Option<Instant>,
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

/// One end of a connection: framing inside the secure record layer, request ids,
/// timeouts. See the module docs.
pub struct Session {
    secure: Box<dyn SecureSession>,
    codec: FrameCodec,
    cfg: SessionConfig,
    plain: BytesMut,
    scratch: BytesMut,
    events: VecDeque<Event>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    batches: HashMap<u64, (Text, Vec<DataFrame>)>,
    sending: HashMap<u64, Outgoing>,
    receiving: HashMap<u64, Incoming>,
    established: bool,
    dead: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("established", &self.established)
            .field("pending", &self.pending.len())
            .field("dead", &self.dead)
            .finish()
    }
}

impl Session {
    /// A session over `secure` (from a [`zs_crypto::SecurityProvider`]).
    pub fn new(secure: Box<dyn SecureSession>, cfg: SessionConfig) -> Session {
        Session {
            secure,
            codec: FrameCodec::new(cfg.wire),
            cfg,
            plain: BytesMut::new(),
            scratch: BytesMut::new(),
            events: VecDeque::new(),
            next_id: 1,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            batches: HashMap::new(),
            sending: HashMap::new(),
            receiving: HashMap::new(),
            established: false,
            dead: None,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// True once the secure handshake completed.
    pub fn is_established(&self) -> bool {
        self.established
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

    /// Feeds bytes received from the transport. An error is fatal: the session is
    /// dead, every pending call has completed with [`Error::ConnectionLost`], and
    /// the caller should close the connection (after sending what
    /// [`Session::write_output`] still yields, e.g. an alert).
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<()> {
        if let Some(why) = &self.dead {
            return Err(Error::ConnectionLost(why.clone()));
        }
        let r = self.input(data, now);
        if let Err(e) = &r {
            self.connection_lost(&e.to_string());
        }
        r
    }

    fn input(&mut self, data: &[u8], now: Instant) -> Result<()> {
        self.secure.handle_input(data, now)?;
        while let Some(ev) = self.secure.poll_event() {
            match ev {
                zs_crypto::Event::HandshakeComplete { suite, .. } => {
                    self.established = true;
                    self.events.push_back(Event::Established { suite });
                }
                zs_crypto::Event::Data(d) => {
                    self.bytes_in += d.len() as u64;
                    self.plain.extend_from_slice(&d);
                }
                zs_crypto::Event::KeyUpdated { .. } => {}
                zs_crypto::Event::Closed => {
                    self.events.push_back(Event::Closed);
                }
            }
        }
        while let Some(frame) = self.codec.decode(&mut self.plain)? {
            self.on_frame(frame, now)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: Frame, now: Instant) -> Result<()> {
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
            s.batches.remove(&id);
            s.send_frame(
                &Frame::Error {
                    id,
                    code,
                    message: Text::from(message),
                },
                now,
            )
        };
        if !self.batches.contains_key(&id) && self.batches.len() >= self.cfg.max_open_batches {
            return refuse(
                self,
                code::TOO_MANY,
                format!("more than {} open batches", self.cfg.max_open_batches),
            );
        }
        let entry = self
            .batches
            .entry(id)
            .or_insert_with(|| (cmd.clone(), Vec::new()));
        if entry.0 != cmd {
            return refuse(self, code::BAD_REQUEST, "batch changed its command".into());
        }
        if entry.1.len() >= self.cfg.max_batch_frames {
            return refuse(
                self,
                code::TOO_LARGE,
                format!("batch exceeds {} frames", self.cfg.max_batch_frames),
            );
        }
        entry.1.push(data);
        if last {
            if let Some((cmd, frames)) = self.batches.remove(&id) {
                self.push_request(Request::Batch { id, cmd, frames });
            }
        }
        Ok(())
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
            s.receiving.remove(&id);
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
        self.send_frame(&Frame::BigStreamAck { id, offset: end }, now)?;
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
            self.deadlines.insert((d, id));
        }
        self.pending.insert(id, Pending { deadline });
        Ok(id)
    }

    fn push_request(&mut self, r: Request) {
        self.events.push_back(Event::Request(r));
    }

    fn complete(&mut self, id: u64, result: Result<Reply>) {
        // Unknown ids are late answers to calls that already timed out: dropped.
        self.sending.remove(&id);
        if let Some(p) = self.pending.remove(&id) {
            if let Some(d) = p.deadline {
                self.deadlines.remove(&(d, id));
            }
            self.events.push_back(Event::Reply { id, result });
        }
    }

    /// Encodes `frame` and queues it (before the handshake completes it is held by
    /// the security layer and sent once keys exist).
    pub fn send_frame(&mut self, frame: &Frame, now: Instant) -> Result<()> {
        if let Some(why) = &self.dead {
            return Err(Error::ConnectionLost(why.clone()));
        }
        self.scratch.clear();
        self.codec.encode(frame, &mut self.scratch)?;
        self.bytes_out += self.scratch.len() as u64;
        self.secure.send(&self.scratch, now)?;
        Ok(())
    }

    /// Sends a request and returns its id; its outcome arrives as
    /// [`Event::Reply`] with that id (after `timeout`, if given, as
    /// [`Error::TimedOut`]).
    pub fn call(&mut self, call: Call, timeout: Option<Duration>, now: Instant) -> Result<u64> {
        let id = self.next_id;
        match call {
            Call::Console { cmd, text } => {
                self.send_frame(&Frame::Console { id, cmd, text }, now)?
            }
            Call::Stream { cmd, data } => self.send_frame(&Frame::Stream { id, cmd, data }, now)?,
            Call::Batch { cmd, frames } => {
                if frames.is_empty() {
                    return Err(Error::Config("a batch needs at least one frame".into()));
                }
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
            self.deadlines.insert((d, id));
        }
        self.pending.insert(id, Pending { deadline });
        Ok(id)
    }

    /// Answers request `id` with `result` (an error carries its code and message).
    pub fn respond(
        &mut self,
        id: u64,
        result: Result<Reply, (u32, String)>,
        now: Instant,
    ) -> Result<()> {
        let frame = match result {
            Ok(Reply::Text(text)) => Frame::ConsoleResponse { id, text },
            Ok(Reply::Data(data)) => Frame::StreamResponse { id, data },
            Err((code, message)) => Frame::Error {
                id,
                code,
                message: Text::from(message),
            },
        };
        self.send_frame(&frame, now)
    }

    /// Appends the bytes to send on the transport to `out`.
    pub fn write_output(&mut self, out: &mut Vec<u8>) {
        self.secure.write_output(out);
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.deadlines.first().map(|(d, _)| *d);
        match (calls, self.secure.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires calls whose timeout passed and drives the security layer's timers.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        while let Some(&(d, id)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.deadlines.remove(&(d, id));
            self.sending.remove(&id);
            if self.pending.remove(&id).is_some() {
                self.events.push_back(Event::Reply {
                    id,
                    result: Err(Error::TimedOut),
                });
            }
        }
        if self.dead.is_none() {
            if let Err(e) = self.secure.handle_timeout(now) {
                self.connection_lost(&e.to_string());
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Orderly close (a close record is queued for the peer).
    pub fn close(&mut self) {
        let _ = self.secure.close();
        self.connection_lost("closed locally");
    }

    /// The transport ended (or failed): the session is dead and every pending call
    /// completes with [`Error::ConnectionLost`] carrying `why`.
    pub fn connection_lost(&mut self, why: &str) {
        if self.dead.is_none() {
            self.dead = Some(why.to_owned());
        }
        let mut ids: Vec<u64> = self.pending.drain().map(|(id, _)| id).collect();
        ids.sort_unstable();
        self.deadlines.clear();
        self.batches.clear();
        self.sending.clear();
        self.receiving.clear();
        for id in ids {
            self.events.push_back(Event::Reply {
                id,
                result: Err(Error::ConnectionLost(why.to_owned())),
            });
        }
    }
}
