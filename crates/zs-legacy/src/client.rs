//! The legacy client: connects to an original ZServer4D/ZNet server (or ours) and
//! calls console and stream commands, sends direct commands and CompleteBuffers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_core::{Error, Result};
use zs_io::{Backend, CloseReason, Conn, Handler};
use zs_wire::legacy::{
    self, control, frame, CipherModel, CmdBody, CmdKind, Dfe, FrameDecoder, LegacyError,
    LegacyFrame, LegacyLimits, SeqLayer, SignalKind,
};
use zs_wire::DataFrame;

use crate::crypto::ConnCrypto;

/// Legacy client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Decoding bounds.
    pub limits: LegacyLimits,
    /// Hash id of our frames. Default 0 (none; ZNet's default).
    pub hash: u8,
    /// Send with this cipher id instead of the one the server chose (the key
    /// buffer is the server's either way; the originals answer each request with
    /// the request's cipher). Default: the server's.
    pub cipher: Option<u8>,
    /// How long a call waits for its answer. Default 5 s.
    pub timeout: Duration,
    /// TCP connect limit. Default 5 s.
    pub connect_timeout: Duration,
    /// Platform id sent in the handshake. Default 8 (`epLinux64`).
    pub platform: i32,
    /// Send a keepalive after this long without sending. Default 1 s, as the
    /// originals.
    pub keepalive: Option<Duration>,
    /// Bytes the server pushed (direct commands, CompleteBuffers, BigStream
    /// chunks) that the application has not taken yet ([`LegacyClient::next_push`],
    /// [`LegacyClient::next_data`]); a server that pushes more is disconnected.
    /// Default 64 MiB.
    pub max_pending_push_bytes: usize,
    /// Compress what we send as the originals' `maxsec` clients do
    /// (`SendDataCompressed`): requests as zlib DFEs (the parallel container
    /// over 1 MiB), BigStream chunks as zlib containers. Compressed answers are
    /// read whatever this says. Default false.
    pub compress: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            limits: LegacyLimits::default(),
            hash: 0,
            cipher: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            platform: control::PLATFORM_LINUX64,
            keepalive: Some(Duration::from_secs(1)),
            max_pending_push_bytes: 64 << 20,
            compress: false,
        }
    }
}

/// A command the server pushed to us (direct console or direct stream).
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    /// Its kind.
    pub kind: CmdKind,
    /// Command name.
    pub cmd: String,
    /// Text or values.
    pub body: CmdBody,
    /// Its encoded size (what it counts against
    /// [`ClientConfig::max_pending_push_bytes`]).
    pub size: usize,
}

/// Raw data the server pushed: a CompleteBuffer, or one chunk of a BigStream
/// (chunks arrive in order; the client has already sent the server's flow
/// signal for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushedData {
    /// A whole CompleteBuffer.
    CompleteBuffer {
        /// Command name.
        cmd: String,
        /// The bytes.
        data: Bytes,
    },
    /// One BigStream chunk: `data` sits at `offset` of `total` bytes.
    BigStream {
        /// Command name.
        cmd: String,
        /// Offset of `data` in the stream.
        offset: u64,
        /// The stream's size.
        total: u64,
        /// The final chunk.
        last: bool,
        /// The chunk.
        data: Bytes,
    },
}

impl PushedData {
    fn len(&self) -> usize {
        match self {
            PushedData::CompleteBuffer { data, .. } | PushedData::BigStream { data, .. } => {
                data.len()
            }
        }
    }
}

type Answer = mpsc::Sender<std::result::Result<Bytes, String>>;
/// Progress of a BigStream we send: bytes the server confirmed (`F6`), the total
/// on its `F7`.
type BigAnswer = mpsc::Sender<std::result::Result<u64, String>>;

struct Job {
    kind: CmdKind,
    bytes: Vec<u8>,
    answer: Option<Answer>,
    /// A BigStream: `bytes` is its header, then these bytes in 1 MiB chunks.
    big: Option<(Bytes, BigAnswer)>,
}

/// Our BigStream being sent: the next chunk goes on the server's `F6`.
struct BigOut {
    data: Bytes,
    pos: usize,
    answer: BigAnswer,
}

struct State {
    conn: Option<Conn>,
    seq: SeqLayer,
    dec: FrameDecoder,
    plain: BytesMut,
    crypto: ConnCrypto,
    queue: VecDeque<Job>,
    inflight: Option<Option<Answer>>,
    closed: Option<String>,
    backlog: VecDeque<Bytes>,
    last_send: Instant,
    pushes: mpsc::Sender<Push>,
    data: mpsc::Sender<PushedData>,
    /// Bytes pushed and not taken by the application.
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    big_out: Option<BigOut>,
    limits: LegacyLimits,
    compress: bool,
}

struct Link {
    state: Mutex<State>,
    keepalive: Option<Duration>,
}

const KEEPALIVE: u64 = 1;

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn write(st: &mut State, bytes: Bytes) {
    let Some(conn) = st.conn.clone() else { return };
    if bytes.is_empty() {
        return;
    }
    st.last_send = Instant::now();
    if !st.backlog.is_empty() {
        st.backlog.push_back(bytes);
        return;
    }
    if let Err(zs_io::Error::Full(b)) = conn.send(bytes) {
        st.backlog.push_back(b);
    }
}

fn fail(st: &mut State, reason: String) {
    if st.closed.is_some() {
        return;
    }
    tracing::warn!("legacy client connection closed: {reason}");
    if let Some(Some(a)) = st.inflight.take() {
        let _ = a.send(Err(reason.clone()));
    }
    if let Some(b) = st.big_out.take() {
        let _ = b.answer.send(Err(reason.clone()));
    }
    for j in st.queue.drain(..) {
        if let Some(a) = j.answer {
            let _ = a.send(Err(reason.clone()));
        }
        if let Some((_, a)) = j.big {
            let _ = a.send(Err(reason.clone()));
        }
    }
    if let Some(c) = &st.conn {
        c.close();
    }
    st.closed = Some(reason);
}

/// Sends queued jobs until one waits for its answer (or a BigStream of ours for
/// the server's signals: like the originals, nothing else goes until its `F7`).
fn drain(st: &mut State) {
    while st.inflight.is_none() && st.big_out.is_none() {
        let Some(mut job) = st.queue.pop_front() else {
            return;
        };
        if let Some((data, answer)) = job.big.take() {
            let end = data.len().min(crate::BIG_STREAM_CHUNK);
            chunk(st.compress, &data[..end], &mut job.bytes);
            st.big_out = Some(BigOut {
                data,
                pos: end,
                answer,
            });
        }
        let mut out = BytesMut::new();
        if let Err(e) = st.seq.send(&job.bytes, &mut out) {
            fail(st, e.to_string());
            return;
        }
        write(st, out.freeze());
        if job.kind.answered() {
            st.inflight = Some(job.answer);
        }
    }
}

fn chunk(compress: bool, data: &[u8], out: &mut Vec<u8>) {
    if compress {
        frame::encode_big_stream_chunk_compressed(data, out);
    } else {
        frame::encode_big_stream_chunk(data, out);
    }
}

fn command(compress: bool, cmd: &str, body: &CmdBody) -> Vec<u8> {
    if compress {
        frame::encode_command_compressed(cmd, body)
    } else {
        frame::encode_command(cmd, body)
    }
}

/// The server's BigStream signal for our stream.
fn big_signal(st: &mut State, s: SignalKind) -> std::result::Result<(), LegacyError> {
    let Some(b) = st.big_out.as_mut() else {
        tracing::debug!(
            ?s,
            "legacy client: BigStream signal with none of ours out; ignored"
        );
        return Ok(());
    };
    let more = b.pos < b.data.len();
    match (s, more) {
        (SignalKind::Fragment, true) => {
            let _ = b.answer.send(Ok(b.pos as u64));
            let end = (b.pos + crate::BIG_STREAM_CHUNK).min(b.data.len());
            let mut buf = Vec::with_capacity(end - b.pos + 5);
            chunk(st.compress, &b.data[b.pos..end], &mut buf);
            b.pos = end;
            let mut out = BytesMut::new();
            st.seq.send(&buf, &mut out)?;
            write(st, out.freeze());
        }
        (SignalKind::Done, false) => {
            if let Some(b) = st.big_out.take() {
                let _ = b.answer.send(Ok(b.data.len() as u64));
            }
            drain(st);
        }
        (s, _) => {
            return Err(LegacyError::BadCommand(format!(
                "BigStream signal {s:?} with {} of {} bytes sent",
                b.pos,
                b.data.len()
            )))
        }
    }
    Ok(())
}

/// Counts pushed data the application has yet to take, within `max_pending`.
fn deliver(st: &mut State, n: usize) -> std::result::Result<(), LegacyError> {
    let now = st.pending.fetch_add(n, Ordering::Relaxed) + n;
    if now > st.max_pending {
        return Err(LegacyError::TooLarge {
            what: "data pushed and not taken by the application",
            size: now as u64,
            limit: st.max_pending as u64,
        });
    }
    Ok(())
}

struct ClientHandler {
    link: Arc<Link>,
}

impl Handler for ClientHandler {
    fn on_open(&mut self, conn: &Conn) {
        let mut st = self.link.lock();
        st.conn = Some(conn.clone());
        drain(&mut st);
        if let Some(k) = self.link.keepalive {
            let _ = conn.set_timer(k, KEEPALIVE);
        }
    }

    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        let mut st = self.link.lock();
        if st.closed.is_some() {
            data.clear();
            return;
        }
        let mut reply = BytesMut::new();
        let State { seq, plain, .. } = &mut *st;
        let r = seq.receive(data, plain, &mut reply);
        write(&mut st, reply.freeze());
        if let Err(e) = r {
            fail(&mut st, e.to_string());
            return;
        }
        loop {
            let expect = st.inflight.is_some();
            let State {
                dec, plain, crypto, ..
            } = &mut *st;
            match dec.decode(plain, expect, &*crypto) {
                Ok(None) => break,
                Ok(Some(f)) => {
                    if let Err(e) = handle(&mut st, f) {
                        fail(&mut st, e.to_string());
                        return;
                    }
                }
                Err(e) => {
                    fail(&mut st, e.to_string());
                    return;
                }
            }
        }
    }

    fn on_writable(&mut self, _conn: &Conn) {
        let mut st = self.link.lock();
        let Some(conn) = st.conn.clone() else { return };
        while let Some(b) = st.backlog.pop_front() {
            if let Err(zs_io::Error::Full(b)) = conn.send(b) {
                st.backlog.push_front(b);
                return;
            }
        }
    }

    fn on_timer(&mut self, conn: &Conn, token: u64) {
        if token != KEEPALIVE {
            return;
        }
        let Some(k) = self.link.keepalive else { return };
        let mut st = self.link.lock();
        if st.closed.is_some() {
            return;
        }
        if st.last_send.elapsed() >= k {
            let mut b = BytesMut::new();
            SeqLayer::keepalive(&mut b);
            write(&mut st, b.freeze());
        }
        let _ = conn.set_timer(k, KEEPALIVE);
    }

    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let mut st = self.link.lock();
        fail(&mut st, format!("connection ended ({reason:?})"));
    }

    fn on_connect_failed(&mut self, error: zs_io::Error) {
        let mut st = self.link.lock();
        fail(&mut st, format!("connect failed: {error}"));
    }
}

fn handle(st: &mut State, f: LegacyFrame) -> std::result::Result<(), LegacyError> {
    match f {
        LegacyFrame::Response { payload, .. } => {
            if let Some(Some(a)) = st.inflight.take() {
                let _ = a.send(Ok(payload));
            }
            drain(st);
        }
        LegacyFrame::Request {
            kind,
            payload,
            cipher,
            ..
        } => {
            let (cmd, body) = legacy::decode_command(kind, &payload, &st.limits.clone())?;
            if kind.answered() {
                // We register no answering handlers: answer empty, as the
                // originals do for an unknown command.
                let empty = if kind == CmdKind::Console {
                    vec![0]
                } else {
                    Dfe::new().to_bytes()
                };
                let mut buf = Vec::new();
                frame::encode_response(&empty, 0, cipher, &st.crypto, &mut buf)?;
                let mut out = BytesMut::new();
                st.seq.send(&buf, &mut out)?;
                write(st, out.freeze());
            }
            deliver(st, payload.len())?;
            let _ = st.pushes.send(Push {
                kind,
                cmd,
                body,
                size: payload.len(),
            });
        }
        LegacyFrame::CompleteBuffer { cmd, data } => {
            let d = PushedData::CompleteBuffer { cmd, data };
            deliver(st, d.len())?;
            let _ = st.data.send(d);
        }
        LegacyFrame::BigStreamChunk {
            cmd,
            offset,
            total,
            last,
            data,
        } => {
            let sig = crate::chunk_signal(last);
            let mut out = BytesMut::new();
            st.seq.send(&sig, &mut out)?;
            write(st, out.freeze());
            let d = PushedData::BigStream {
                cmd,
                offset,
                total,
                last,
                data,
            };
            deliver(st, d.len())?;
            let _ = st.data.send(d);
        }
        LegacyFrame::Signal(s) => big_signal(st, s)?,
    }
    Ok(())
}

/// A connection to a ZServer4D/ZNet server.
pub struct LegacyClient {
    link: Arc<Link>,
    model: CipherModel,
    config: ClientConfig,
    send_cipher: u8,
    pushes: Mutex<mpsc::Receiver<Push>>,
    data: Mutex<mpsc::Receiver<PushedData>>,
    pending: Arc<AtomicUsize>,
    _backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for LegacyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LegacyClient(id {} cipher {})",
            self.model.id, self.model.cipher
        )
    }
}

impl LegacyClient {
    /// Connects and runs the `__@CipherModel` handshake (cipher 0), then adopts
    /// the server's cipher and key buffer.
    pub fn connect(
        backend: Arc<dyn Backend>,
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<LegacyClient> {
        let (ptx, prx) = mpsc::channel();
        let (dtx, drx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let link = Arc::new(Link {
            state: Mutex::new(State {
                conn: None,
                seq: SeqLayer::new(config.limits),
                dec: FrameDecoder::new(config.limits),
                plain: BytesMut::new(),
                crypto: ConnCrypto::new(Bytes::from_static(&[0])),
                queue: VecDeque::new(),
                inflight: None,
                closed: None,
                backlog: VecDeque::new(),
                last_send: Instant::now(),
                pushes: ptx,
                data: dtx,
                pending: pending.clone(),
                max_pending: config.max_pending_push_bytes,
                big_out: None,
                limits: config.limits,
                compress: config.compress,
            }),
            keepalive: config.keepalive,
        });
        // The handshake is queued first: it goes out as soon as the socket opens.
        let payload = command(
            config.compress,
            control::CIPHER_MODEL,
            &CmdBody::Dfe(control::handshake_request(config.platform)),
        );
        let (tx, rx) = mpsc::channel();
        {
            let mut st = link.lock();
            let mut bytes = Vec::new();
            frame::encode_request(
                CmdKind::Stream,
                &payload,
                config.hash,
                0,
                &st.crypto,
                &mut bytes,
            )
            .map_err(|e| Error::Protocol(e.to_string()))?;
            st.queue.push_back(Job {
                kind: CmdKind::Stream,
                bytes,
                answer: Some(tx),
                big: None,
            });
        }
        zs_io::connect_blocking(
            &*backend,
            addr,
            config.connect_timeout,
            Box::new(ClientHandler { link: link.clone() }),
        )?;
        let answer = wait(&rx, config.timeout.max(Duration::from_secs(5)))?;
        let dfe =
            Dfe::decode(&answer, &config.limits).map_err(|e| Error::Protocol(e.to_string()))?;
        let model = CipherModel::from_dfe(&dfe).map_err(|e| Error::Protocol(e.to_string()))?;
        let send_cipher = config.cipher.unwrap_or(model.cipher);
        {
            let mut st = link.lock();
            st.crypto = ConnCrypto::new(model.key.clone());
        }
        Ok(LegacyClient {
            link,
            model,
            send_cipher,
            config,
            pushes: Mutex::new(prx),
            data: Mutex::new(drx),
            pending,
            _backend: backend,
        })
    }

    /// The server's handshake answer (connection id, cipher, key buffer, flags).
    pub fn handshake(&self) -> &CipherModel {
        &self.model
    }

    /// The cipher id our frames use.
    pub fn send_cipher(&self) -> u8 {
        self.send_cipher
    }

    fn enqueue(
        &self,
        kind: CmdKind,
        cmd: &str,
        body: &CmdBody,
    ) -> Result<Option<mpsc::Receiver<std::result::Result<Bytes, String>>>> {
        let payload = command(self.config.compress, cmd, body);
        let mut st = self.link.lock();
        if let Some(r) = &st.closed {
            return Err(Error::ConnectionLost(r.clone()));
        }
        let mut bytes = Vec::with_capacity(payload.len() + 32);
        frame::encode_request(
            kind,
            &payload,
            self.config.hash,
            self.send_cipher,
            &st.crypto,
            &mut bytes,
        )
        .map_err(|e| Error::Protocol(e.to_string()))?;
        let (tx, rx) = if kind.answered() {
            let (tx, rx) = mpsc::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        st.queue.push_back(Job {
            kind,
            bytes,
            answer: tx,
            big: None,
        });
        drain(&mut st);
        Ok(rx)
    }

    /// Calls console command `cmd` with `text`; returns the answer text.
    pub fn call_console(&self, cmd: &str, text: &str) -> Result<String> {
        let rx = self.enqueue(CmdKind::Console, cmd, &CmdBody::Text(text.to_owned()))?;
        let b = wait(&rx.expect("answered kind"), self.config.timeout)?;
        Ok(frame::console_text(&b))
    }

    /// Calls stream command `cmd` with DFE values; returns the answer DFE.
    pub fn call_stream_dfe(&self, cmd: &str, data: Dfe) -> Result<Dfe> {
        let rx = self.enqueue(CmdKind::Stream, cmd, &CmdBody::Dfe(data))?;
        let b = wait(&rx.expect("answered kind"), self.config.timeout)?;
        Dfe::decode(&b, &self.config.limits).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Calls stream command `cmd` with one of our DataFrames (converted to a DFE
    /// and back).
    pub fn call_stream(&self, cmd: &str, data: &DataFrame) -> Result<DataFrame> {
        let d = Dfe::from_dataframe(data).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call_stream_dfe(cmd, d)?
            .to_dataframe()
            .map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Sends a direct console command (no answer). Like the originals, it leaves
    /// after the answers of earlier calls.
    pub fn send_direct_console(&self, cmd: &str, text: &str) -> Result<()> {
        self.enqueue(CmdKind::DirectConsole, cmd, &CmdBody::Text(text.to_owned()))
            .map(|_| ())
    }

    /// Sends a direct stream command (no answer).
    pub fn send_direct_stream(&self, cmd: &str, data: Dfe) -> Result<()> {
        self.enqueue(CmdKind::DirectStream, cmd, &CmdBody::Dfe(data))
            .map(|_| ())
    }

    /// Sends a CompleteBuffer (uncompressed; no answer).
    pub fn send_complete_buffer(&self, cmd: &str, data: &[u8]) -> Result<()> {
        let mut bytes = Vec::with_capacity(data.len() + 32 + cmd.len());
        frame::encode_complete_buffer(cmd, data, &mut bytes);
        let mut st = self.link.lock();
        if let Some(r) = &st.closed {
            return Err(Error::ConnectionLost(r.clone()));
        }
        st.queue.push_back(Job {
            kind: CmdKind::DirectStream,
            bytes,
            answer: None,
            big: None,
        });
        drain(&mut st);
        Ok(())
    }

    /// Sends `data` as BigStream `cmd`, as the originals do: a header, then 1 MiB
    /// chunks, each after the server's `F6`; returns on its `F7` (every byte
    /// handed to its handler). `progress(done, total)` is called on each signal.
    /// Nothing else is sent on this connection meanwhile. Fails with
    /// [`Error::TimedOut`] when the server does not signal within
    /// [`ClientConfig::timeout`].
    pub fn send_big_stream(
        &self,
        cmd: &str,
        data: Bytes,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<()> {
        if data.is_empty() || cmd.is_empty() || cmd.len() > self.config.limits.max_name {
            return Err(Error::Protocol(format!(
                "a legacy BigStream needs bytes and a name of 1 to {} bytes",
                self.config.limits.max_name
            )));
        }
        let total = data.len() as u64;
        let mut head = Vec::with_capacity(22 + cmd.len() + crate::BIG_STREAM_CHUNK.min(data.len()));
        frame::encode_big_stream_head(cmd, total, &mut head);
        let (tx, rx) = mpsc::channel();
        {
            let mut st = self.link.lock();
            if let Some(r) = &st.closed {
                return Err(Error::ConnectionLost(r.clone()));
            }
            st.queue.push_back(Job {
                kind: CmdKind::DirectStream,
                bytes: head,
                answer: None,
                big: Some((data, tx)),
            });
            drain(&mut st);
        }
        loop {
            match rx.recv_timeout(self.config.timeout) {
                Ok(Ok(n)) => {
                    progress(n, total);
                    if n == total {
                        return Ok(());
                    }
                }
                Ok(Err(reason)) => return Err(Error::ConnectionLost(reason)),
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(Error::TimedOut),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::ConnectionLost("the connection ended".into()))
                }
            }
        }
    }

    /// The next CompleteBuffer or BigStream chunk the server pushed, waiting up
    /// to `timeout`.
    pub fn next_data(&self, timeout: Duration) -> Option<PushedData> {
        let d = self.data.lock().ok()?.recv_timeout(timeout).ok()?;
        self.pending.fetch_sub(d.len(), Ordering::Relaxed);
        Some(d)
    }

    /// `__@Wait`: returns once every earlier command has been handled.
    pub fn wait(&self) -> Result<()> {
        self.call_console(control::WAIT, "").map(|_| ())
    }

    /// The next command the server pushed, waiting up to `timeout`.
    pub fn next_push(&self, timeout: Duration) -> Option<Push> {
        let p = self.pushes.lock().ok()?.recv_timeout(timeout).ok()?;
        self.pending.fetch_sub(p.size, Ordering::Relaxed);
        Some(p)
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        self.link.lock().closed.is_none()
    }

    /// Closes the connection.
    pub fn close(&self) {
        let mut st = self.link.lock();
        fail(&mut st, "closed by the application".into());
    }
}

impl Drop for LegacyClient {
    fn drop(&mut self) {
        self.close();
    }
}

fn wait(
    rx: &mpsc::Receiver<std::result::Result<Bytes, String>>,
    timeout: Duration,
) -> Result<Bytes> {
    match rx.recv_timeout(timeout) {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(reason)) => Err(Error::ConnectionLost(reason)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::TimedOut),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(Error::ConnectionLost("the connection ended".into()))
        }
    }
}
