//! The legacy server: original ZServer4D/ZNet clients on their own port, their
//! commands dispatched to a zs-core [`Registry`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ring::rand::{SecureRandom, SystemRandom};
use zs_core::{Outbox, Peer, Registry, Request, WorkerPool};
use zs_io::{Backend, CloseReason, Conn, Handler, Listener};
use zs_wire::legacy::{
    self, control, frame, CipherModel, CmdBody, CmdKind, Dfe, FrameDecoder, LegacyError,
    LegacyFrame, LegacyLimits, SeqLayer, SignalKind,
};
use zs_wire::{Frame, Text};

use crate::crypto::{self, ConnCrypto};

/// Which ciphers the server hands out, one drawn at random per connection (the
/// seed's `SwitchMaxPerformance` / `SwitchDefaultPerformance` / `SwitchMaxSecurity`
/// pools, or a list of `TCipherSecurity` ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CipherPool {
    /// Cipher 0 (plaintext): the `maxperf` profile.
    Performance,
    /// DES64, DES128, DES192, Blowfish, LBC, LQC, XXTea512 (ids 1-6, 10): the
    /// seed's default, which ZServer4D and ZNet clients both accept.
    Default,
    /// RC6, Serpent, Mars, Rijndael, TwoFish (ids 11-15): the seed's `maxsec`.
    Security,
    /// These ids.
    Custom(Vec<u8>),
}

impl CipherPool {
    /// The cipher ids.
    pub fn ids(&self) -> Vec<u8> {
        match self {
            CipherPool::Performance => vec![0],
            CipherPool::Default => vec![1, 2, 3, 4, 5, 6, 10],
            CipherPool::Security => vec![11, 12, 13, 14, 15],
            CipherPool::Custom(v) => v.clone(),
        }
    }

    /// By name: `performance`/`maxperf`, `default`, `security`/`maxsec`, or a
    /// comma list of ids.
    pub fn parse(s: &str) -> Result<CipherPool, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "performance" | "maxperf" | "none" => CipherPool::Performance,
            "default" => CipherPool::Default,
            "security" | "maxsec" => CipherPool::Security,
            list => CipherPool::Custom(
                list.split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<u8>()
                            .map_err(|e| format!("cipher id {x:?}: {e}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// Legacy server settings.
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    /// Decoding bounds.
    pub limits: LegacyLimits,
    /// The ciphers handed out.
    pub ciphers: CipherPool,
    /// Hash id of our frames (`THashSecurity`): 0 none (ZNet's default), 1 FastMD5
    /// (ZServer4D's). Default 0.
    pub hash: u8,
    /// Close a connection after this long without a byte from it. The originals'
    /// clients send a keepalive every second. Default 60 s.
    pub idle_timeout: Duration,
    /// Close a connection that has not completed `__@CipherModel` by then.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Most legacy connections open at once. Default 10 000.
    pub max_connections: usize,
    /// HPC handler threads (0: HPC handlers run on the event loop). Default 2.
    pub workers: usize,
    /// Bytes of pushes (direct commands, CompleteBuffers, BigStreams) one
    /// connection may hold while they wait for the request in flight to be
    /// answered or for the client's BigStream signals; a push over it fails with
    /// [`zs_core::Error::Full`] (nothing queued; retry later). Default 256 MiB.
    pub max_push_bytes: usize,
    /// Compress what we send as the originals' `maxsec` profile does
    /// (`SendDataCompressed`, announced in handshake field 11): stream answers
    /// and pushed commands as zlib DFEs (the parallel container over 1 MiB),
    /// BigStream chunks as zlib containers. Console answers stay plain text, as
    /// theirs. We read compressed input whatever this says. Default false.
    pub compress: bool,
}

impl Default for LegacyConfig {
    fn default() -> Self {
        LegacyConfig {
            limits: LegacyLimits::default(),
            ciphers: CipherPool::Default,
            hash: 0,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            workers: 2,
            max_push_bytes: 256 << 20,
            compress: false,
        }
    }
}

/// Server counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Commands received (all kinds).
    pub commands: u64,
    /// Connections closed for bad input (or a broken limit).
    pub refused: u64,
    /// Connections open now.
    pub open: usize,
    /// BigStreams pushed to clients and completed (the client's `F7`).
    pub big_streams_pushed: u64,
    /// CompleteBuffers pushed to clients (handed to the sequence layer).
    pub complete_buffers_pushed: u64,
}

struct Shared {
    registry: Registry,
    config: LegacyConfig,
    pool: Option<WorkerPool>,
    rng: SystemRandom,
    instance: [u8; 16],
    next_id: AtomicU32,
    open: AtomicUsize,
    accepted: AtomicU64,
    handshakes: AtomicU64,
    commands: AtomicU64,
    refused: AtomicU64,
    big_pushed: AtomicU64,
    cb_pushed: AtomicU64,
    peers: Mutex<HashMap<u64, Peer>>,
}

/// A running legacy listener. Dropping it (or [`LegacyServer::shutdown`]) stops
/// accepting and closes its connections.
pub struct LegacyServer {
    listener: Box<dyn Listener>,
    shared: Arc<Shared>,
    _backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for LegacyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LegacyServer({})", self.local_addr())
    }
}

impl LegacyServer {
    /// Listens on `addr` with `backend`; every command of a legacy client goes to
    /// `registry` (the same handlers modern clients reach).
    ///
    /// Give it a backend with [`zs_io::Config::quickack`] set (as `zs serve
    /// --legacy-addr` and the facade do): the original clients acknowledge our
    /// answer and then write their next command without `TCP_NODELAY`, so
    /// their Nagle holds that command until our kernel acknowledges the ack
    /// segment, 40 ms later with delayed ACKs (measured with `strace -tt` on
    /// `znet_cli`: 44 ms between its ack and its next command reaching us;
    /// with quick acks, 1 ms).
    ///
    /// Logs at warn level that the legacy protocol sends its key in clear.
    pub fn start(
        backend: Arc<dyn Backend>,
        registry: Registry,
        config: LegacyConfig,
        addr: SocketAddr,
    ) -> Result<LegacyServer, zs_io::Error> {
        for c in config.ciphers.ids() {
            if !crypto::supported_cipher(c) {
                return Err(zs_io::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("legacy cipher id {c} is not supported by this build"),
                )));
            }
        }
        let rng = SystemRandom::new();
        let mut seed = [0u8; 16];
        let _ = rng.fill(&mut seed);
        let instance = zs_wire::legacy::seq::md5(&seed);
        let shared = Arc::new(Shared {
            pool: (config.workers > 0).then(|| WorkerPool::new(config.workers)),
            registry,
            config,
            rng,
            instance,
            next_id: AtomicU32::new(1),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            big_pushed: AtomicU64::new(0),
            cb_pushed: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let listener = backend.listen(
            addr,
            Arc::new(move || {
                Box::new(ConnHandler {
                    shared: s.clone(),
                    link: None,
                }) as Box<dyn Handler>
            }),
        )?;
        tracing::warn!(
            addr = %listener.local_addr(),
            ciphers = ?shared.config.ciphers.ids(),
            "legacy ZServer4D/ZNet listener: this protocol sends each connection's cipher key in clear \
             (__@CipherModel); anyone who sees the traffic can decrypt it"
        );
        Ok(LegacyServer {
            listener,
            shared,
            _backend: backend,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Legacy connections open now.
    pub fn connection_count(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// The open connections as zs-core peers (push with `send_direct_console` /
    /// `send_direct_stream`).
    pub fn peers(&self) -> Vec<Peer> {
        self.shared
            .peers
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Counters.
    pub fn stats(&self) -> LegacyStats {
        let s = &self.shared;
        LegacyStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            handshakes: s.handshakes.load(Ordering::Relaxed),
            commands: s.commands.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            open: s.open.load(Ordering::Relaxed),
            big_streams_pushed: s.big_pushed.load(Ordering::Relaxed),
            complete_buffers_pushed: s.cb_pushed.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and closes every legacy connection.
    pub fn shutdown(&self) {
        self.listener.shutdown();
    }
}

impl Drop for LegacyServer {
    fn drop(&mut self) {
        self.listener.shutdown();
    }
}

const PUMP: u64 = 1;
const HANDSHAKE: u64 = 2;

/// What the in-flight request is, to answer it.
struct InFlight {
    id: u64,
    kind: CmdKind,
    cipher: u8,
    /// Its answer is encoded and waits in `State::held_answer`.
    answered: bool,
}

/// The legacy BigStream chunk size (the originals' `ZNet_Def_BigStream_ChunkSize`).
pub const BIG_STREAM_CHUNK: usize = 1 << 20;

/// A push waiting for its turn.
enum Out {
    /// Frame bytes (a direct command, a CompleteBuffer).
    Frames(Vec<u8>),
    /// One BigStream chunk; the first carries the header. After it we wait for
    /// the client's `F6` (more to come) or `F7` (`last`).
    Big {
        head: Option<Vec<u8>>,
        chunk: Bytes,
        last: bool,
    },
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Frames(b) => b.len(),
            Out::Big { head, chunk, .. } => head.as_ref().map_or(0, Vec::len) + chunk.len() + 5,
        }
    }
}

/// Which BigStream signal we wait for from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BigWait {
    Fragment,
    Done,
}

struct State {
    seq: SeqLayer,
    dec: FrameDecoder,
    plain: BytesMut,
    crypto: ConnCrypto,
    cipher: u8,
    handshaken: bool,
    inflight: Option<InFlight>,
    next_req: u64,
    /// Request id of the BigStream being received (its acks and answer have no
    /// legacy form).
    big: Option<u64>,
    /// Pushes waiting for the answer in flight or for a BigStream signal, in order.
    pushes: VecDeque<Out>,
    /// Bytes in `pushes`.
    push_bytes: usize,
    /// A BigStream chunk of ours is out: nothing else may be sent until the
    /// client's signal (the receiver reads raw chunk bytes in between).
    big_wait: Option<BigWait>,
    /// A BigStream of ours is under way (first chunk sent, no `F7` yet): only its
    /// next chunk may be sent, nothing else.
    big_active: bool,
    /// The answer to the request in flight, held while `big_wait`.
    held_answer: Option<Vec<u8>>,
    /// Bytes the backend would not take yet.
    backlog: VecDeque<Bytes>,
    closed: bool,
}

/// One legacy connection: the handler side and the [`Outbox`] handed to handlers.
pub(crate) struct Link {
    id: u64,
    conn: Conn,
    shared: Weak<Shared>,
    hash: u8,
    limits: LegacyLimits,
    compress: bool,
    state: Mutex<State>,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends frame bytes through the sequence layer.
    fn send_frames(&self, st: &mut State, frames: &[u8]) -> Result<(), LegacyError> {
        let mut out = BytesMut::new();
        st.seq.send(frames, &mut out)?;
        self.write(st, out.freeze());
        Ok(())
    }

    fn write(&self, st: &mut State, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if !st.backlog.is_empty() {
            st.backlog.push_back(bytes);
            return;
        }
        match self.conn.send(bytes) {
            Ok(()) => {}
            Err(zs_io::Error::Full(b)) => {
                st.backlog.push_back(b);
                self.conn.set_read_paused(true);
            }
            Err(_) => {}
        }
    }

    fn flush_backlog(&self, st: &mut State) {
        while let Some(b) = st.backlog.pop_front() {
            match self.conn.send(b) {
                Ok(()) => {}
                Err(zs_io::Error::Full(b)) => {
                    st.backlog.push_front(b);
                    return;
                }
                Err(_) => {
                    st.backlog.clear();
                    return;
                }
            }
        }
        self.conn.set_read_paused(false);
    }

    fn fail(&self, st: &mut State, reason: &str) {
        if st.closed {
            return;
        }
        st.closed = true;
        if let Some(s) = self.shared.upgrade() {
            s.refused.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(conn = self.id, peer = %self.conn.peer_addr(), "legacy connection closed: {reason}");
        self.conn.close();
    }

    /// Encodes and sends the answer to the request in flight (held while a
    /// BigStream chunk of ours waits for its signal).
    fn answer(&self, st: &mut State, payload: &[u8]) {
        let Some(f) = st.inflight.as_mut().filter(|f| !f.answered) else {
            return;
        };
        f.answered = true;
        let cipher = f.cipher;
        let mut buf = Vec::with_capacity(payload.len() + 32);
        if let Err(e) = frame::encode_response(payload, self.hash, cipher, &st.crypto, &mut buf) {
            self.fail(st, &format!("cannot answer: {e}"));
            return;
        }
        st.held_answer = Some(buf);
        self.flush_out(st);
    }

    /// A DFE as this connection sends it (compressed or not).
    fn dfe_bytes(&self, d: &Dfe) -> Vec<u8> {
        if self.compress {
            d.to_compressed_bytes()
        } else {
            d.to_bytes()
        }
    }

    /// Sends what may go now, in order: the held answer (which frees the next
    /// request), then pushes, until a request is in flight (its answer must
    /// come first: the client reads the next frame as that answer) or a
    /// BigStream chunk of ours waits for the client's signal.
    fn flush_out(&self, st: &mut State) {
        loop {
            if st.closed || st.big_wait.is_some() {
                return;
            }
            if st.big_active && !matches!(st.pushes.front(), Some(Out::Big { head: None, .. })) {
                // Cannot happen: a BigStream's chunks are queued together.
                return;
            }
            if let Some(a) = st.held_answer.take_if(|_| !st.big_active) {
                st.inflight = None;
                if let Err(e) = self.send_frames(st, &a) {
                    self.fail(st, &format!("cannot answer: {e}"));
                    return;
                }
                let _ = self.conn.set_timer(Duration::ZERO, PUMP);
            }
            if st.inflight.is_some() && !st.big_active {
                return;
            }
            let Some(o) = st.pushes.pop_front() else {
                return;
            };
            st.push_bytes -= o.len();
            let r = match o {
                Out::Frames(b) => self.send_frames(st, &b),
                Out::Big { head, chunk, last } => {
                    let mut b = head.unwrap_or_default();
                    if self.compress {
                        frame::encode_big_stream_chunk_compressed(&chunk, &mut b);
                    } else {
                        frame::encode_big_stream_chunk(&chunk, &mut b);
                    }
                    st.big_active = true;
                    st.big_wait = Some(if last {
                        BigWait::Done
                    } else {
                        BigWait::Fragment
                    });
                    self.send_frames(st, &b)
                }
            };
            if let Err(e) = r {
                self.fail(st, &format!("cannot push: {e}"));
                return;
            }
        }
    }

    /// A BigStream signal from the client: the next chunk (or anything) may go.
    fn signal(&self, st: &mut State, s: SignalKind) {
        match (st.big_wait, s) {
            (Some(BigWait::Fragment), SignalKind::Fragment) => st.big_wait = None,
            (Some(BigWait::Done), SignalKind::Done) => {
                st.big_wait = None;
                st.big_active = false;
                if let Some(sh) = self.shared.upgrade() {
                    sh.big_pushed.fetch_add(1, Ordering::Relaxed);
                }
            }
            (w, s) => {
                // The originals ignore a stray signal too.
                tracing::debug!(
                    conn = self.id,
                    ?w,
                    ?s,
                    "legacy BigStream signal not expected; ignored"
                );
                return;
            }
        }
        self.flush_out(st);
    }

    /// Queues pushes (all or none) within `max_push_bytes`, then sends what may go.
    fn enqueue(&self, items: Vec<Out>) -> zs_core::Result<()> {
        let mut st = self.lock();
        self.ready(&st)?;
        self.enqueue_locked(&mut st, items)
    }

    fn ready(&self, st: &State) -> zs_core::Result<()> {
        if st.closed || !st.handshaken {
            return Err(zs_core::Error::ConnectionLost(
                "legacy connection not ready".into(),
            ));
        }
        Ok(())
    }

    fn enqueue_locked(&self, st: &mut State, items: Vec<Out>) -> zs_core::Result<()> {
        let n: usize = items.iter().map(Out::len).sum();
        let max = self
            .shared
            .upgrade()
            .map_or(usize::MAX, |s| s.config.max_push_bytes);
        if st.push_bytes + n > max {
            return Err(zs_core::Error::Full {
                unacked: st.push_bytes,
                limit: max,
            });
        }
        st.push_bytes += n;
        st.pushes.extend(items);
        self.flush_out(st);
        Ok(())
    }

    fn push(&self, kind: CmdKind, cmd: &str, body: CmdBody) -> zs_core::Result<()> {
        let payload = if self.compress {
            frame::encode_command_compressed(cmd, &body)
        } else {
            frame::encode_command(cmd, &body)
        };
        let mut st = self.lock();
        self.ready(&st)?;
        let mut buf = Vec::with_capacity(payload.len() + 32);
        frame::encode_request(kind, &payload, self.hash, st.cipher, &st.crypto, &mut buf)
            .map_err(|e| zs_core::Error::Protocol(e.to_string()))?;
        self.enqueue_locked(&mut st, vec![Out::Frames(buf)])
    }

    fn push_complete_buffer(&self, cmd: &str, data: &[u8]) -> zs_core::Result<()> {
        check_push_name(cmd, &self.limits)?;
        if data.len() > u32::MAX as usize {
            return Err(zs_core::Error::Protocol(format!(
                "a legacy CompleteBuffer holds at most 4 GiB, not {} bytes",
                data.len()
            )));
        }
        let mut buf = Vec::with_capacity(data.len() + 21 + cmd.len());
        frame::encode_complete_buffer(cmd, data, &mut buf);
        self.enqueue(vec![Out::Frames(buf)])?;
        if let Some(s) = self.shared.upgrade() {
            s.cb_pushed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn push_big_stream(&self, cmd: &str, data: Bytes) -> zs_core::Result<()> {
        check_push_name(cmd, &self.limits)?;
        if data.is_empty() {
            return Err(zs_core::Error::Protocol(
                "an empty legacy BigStream has no chunk to send".into(),
            ));
        }
        let mut head = Vec::with_capacity(17 + cmd.len());
        frame::encode_big_stream_head(cmd, data.len() as u64, &mut head);
        let mut head = Some(head);
        let mut items = Vec::with_capacity(data.len().div_ceil(BIG_STREAM_CHUNK));
        let mut at = 0;
        while at < data.len() {
            let end = (at + BIG_STREAM_CHUNK).min(data.len());
            items.push(Out::Big {
                head: head.take(),
                chunk: data.slice(at..end),
                last: end == data.len(),
            });
            at = end;
        }
        self.enqueue(items)
    }
}

fn check_push_name(cmd: &str, limits: &LegacyLimits) -> zs_core::Result<()> {
    if cmd.is_empty() || cmd.len() > limits.max_name {
        return Err(zs_core::Error::Protocol(format!(
            "command name of {} bytes (1 to {} allowed)",
            cmd.len(),
            limits.max_name
        )));
    }
    Ok(())
}

impl Outbox for Link {
    fn app_state(&self) -> Option<zs_core::AppState> {
        self.shared.upgrade()?.registry.app_state_any()
    }

    fn send_frame(&self, frame: Frame) -> zs_core::Result<()> {
        match frame {
            Frame::ConsoleResponse { id, text } => {
                let mut st = self.lock();
                if st.inflight.as_ref().is_some_and(|f| f.id == id) {
                    // ZNet sends an empty text as one 00 byte (ZServer4D clients
                    // read either form).
                    let b: &[u8] = if text.is_empty() {
                        &[0]
                    } else {
                        text.as_bytes()
                    };
                    self.answer(&mut st, b);
                }
                Ok(())
            }
            Frame::StreamResponse { id, data } => {
                let mut st = self.lock();
                if st.inflight.as_ref().is_some_and(|f| f.id == id) {
                    match Dfe::from_dataframe(&data) {
                        Ok(d) => self.answer(&mut st, &self.dfe_bytes(&d)),
                        Err(e) => {
                            tracing::warn!(conn = self.id, "legacy answer has no DFE form: {e}");
                            self.answer(&mut st, &Dfe::new().to_bytes());
                        }
                    }
                } else if st.big == Some(id) {
                    st.big = None;
                }
                Ok(())
            }
            Frame::Error { id, code, message } => {
                let mut st = self.lock();
                if let Some(f) = st.inflight.as_ref().filter(|f| f.id == id) {
                    // The legacy protocol has no error answer: like the originals
                    // for an unknown command, answer empty, and log why.
                    tracing::info!(conn = self.id, code, %message, "legacy request failed; answered empty");
                    let empty = if f.kind == CmdKind::Console {
                        vec![0]
                    } else {
                        Dfe::new().to_bytes()
                    };
                    self.answer(&mut st, &empty);
                } else if st.big == Some(id) {
                    st.big = None;
                    tracing::info!(conn = self.id, code, %message, "legacy BigStream refused");
                }
                Ok(())
            }
            Frame::BigStreamAck { .. } => Ok(()),
            Frame::CompleteBuffer { cmd, data } => self.push_complete_buffer(&cmd, &data),
            Frame::BigStream {
                cmd,
                offset: 0,
                total,
                last: true,
                data,
                ..
            } if data.len() as u64 == total => self.push_big_stream(&cmd, data),
            Frame::BigStream { .. } => Err(zs_core::Error::Protocol(
                "a legacy BigStream push must be whole (offset 0, last, all bytes): \
                 use zs_legacy::push_big_stream"
                    .into(),
            )),
            Frame::DirectConsole { cmd, text } => self.push(
                CmdKind::DirectConsole,
                &cmd,
                CmdBody::Text(text.as_str().to_owned()),
            ),
            Frame::DirectStream { cmd, data } => {
                let d = Dfe::from_dataframe(&data)
                    .map_err(|e| zs_core::Error::Protocol(e.to_string()))?;
                self.push(CmdKind::DirectStream, &cmd, CmdBody::Dfe(d))
            }
            other => Err(zs_core::Error::Protocol(format!(
                "a legacy connection cannot carry {:?}",
                other.kind()
            ))),
        }
    }

    fn is_open(&self) -> bool {
        !self.lock().closed && !self.conn.is_closed()
    }

    fn close(&self, reason: &str) {
        let mut st = self.lock();
        if !st.closed {
            st.closed = true;
            tracing::info!(
                conn = self.id,
                "legacy connection closed by the application: {reason}"
            );
            self.conn.close();
        }
    }
}

struct ConnHandler {
    shared: Arc<Shared>,
    link: Option<(Arc<Link>, Peer)>,
}

impl Handler for ConnHandler {
    fn on_open(&mut self, conn: &Conn) {
        let s = &self.shared;
        s.accepted.fetch_add(1, Ordering::Relaxed);
        let open = s.open.fetch_add(1, Ordering::Relaxed) + 1;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed) as u64;
        let link = Arc::new(Link {
            id,
            conn: conn.clone(),
            shared: Arc::downgrade(s),
            hash: s.config.hash,
            limits: s.config.limits,
            compress: s.config.compress,
            state: Mutex::new(State {
                seq: SeqLayer::new(s.config.limits),
                dec: FrameDecoder::new(s.config.limits),
                plain: BytesMut::new(),
                crypto: ConnCrypto::new(Bytes::from_static(&[0])),
                cipher: 0,
                handshaken: false,
                inflight: None,
                next_req: 1,
                big: None,
                pushes: VecDeque::new(),
                push_bytes: 0,
                big_wait: None,
                big_active: false,
                held_answer: None,
                backlog: VecDeque::new(),
                closed: false,
            }),
        });
        let peer = Peer::new(id, Some(conn.peer_addr()), link.clone());
        self.link = Some((link.clone(), peer.clone()));
        if open > s.config.max_connections {
            let mut st = link.lock();
            link.fail(
                &mut st,
                &format!(
                    "{open} legacy connections open, the limit is {}",
                    s.config.max_connections
                ),
            );
            return;
        }
        if let Ok(mut m) = s.peers.lock() {
            m.insert(id, peer);
        }
        conn.set_idle_timeout(Some(s.config.idle_timeout));
        let _ = conn.set_timer(s.config.handshake_timeout, HANDSHAKE);
    }

    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        let Some((link, _)) = &self.link else { return };
        let link = link.clone();
        {
            let mut st = link.lock();
            if st.closed {
                data.clear();
                return;
            }
            let mut reply = BytesMut::new();
            let State { seq, plain, .. } = &mut *st;
            let r = seq.receive(data, plain, &mut reply);
            link.write(&mut st, reply.freeze());
            if let Err(e) = r {
                link.fail(&mut st, &e.to_string());
                return;
            }
            // A peer must not pile up input while its request is answered.
            let cap = link.limits.max_frame + (1 << 20);
            if st.plain.len() > cap {
                let n = st.plain.len();
                link.fail(
                    &mut st,
                    &format!("{n} bytes of unprocessed input (limit {cap})"),
                );
                return;
            }
        }
        self.pump();
    }

    fn on_writable(&mut self, _conn: &Conn) {
        if let Some((link, _)) = &self.link {
            let mut st = link.lock();
            link.flush_backlog(&mut st);
        }
    }

    fn on_timer(&mut self, _conn: &Conn, token: u64) {
        match token {
            PUMP => self.pump(),
            HANDSHAKE => {
                if let Some((link, _)) = &self.link {
                    let mut st = link.lock();
                    if !st.handshaken {
                        let t = self.shared.config.handshake_timeout;
                        link.fail(
                            &mut st,
                            &format!("no __@CipherModel handshake within {t:?}"),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if let Some((link, peer)) = self.link.take() {
            link.lock().closed = true;
            if let Ok(mut m) = self.shared.peers.lock() {
                m.remove(&link.id);
            }
            zs_core::runtime::connection_closed(&self.shared.registry, &peer);
            tracing::debug!(conn = link.id, ?reason, "legacy connection ended");
        }
    }
}

enum Step {
    Dispatch(Request),
    Again,
    Stop,
}

impl ConnHandler {
    /// Handles the buffered frames in order, stopping while a request is answered.
    fn pump(&mut self) {
        let Some((link, peer)) = &self.link else {
            return;
        };
        let (link, peer) = (link.clone(), peer.clone());
        loop {
            let step = {
                let mut st = link.lock();
                self.next(&link, &mut st)
            };
            match step {
                Step::Stop => return,
                Step::Again => continue,
                Step::Dispatch(req) => {
                    self.shared.commands.fetch_add(1, Ordering::Relaxed);
                    zs_core::runtime::dispatch(
                        &self.shared.registry,
                        &peer,
                        req,
                        self.shared.pool.as_ref(),
                    );
                }
            }
        }
    }

    fn next(&self, link: &Link, st: &mut State) -> Step {
        if st.closed {
            return Step::Stop;
        }
        // While a request is handled, only BigStream signals are read on: the
        // held answer may be waiting for one.
        if st.inflight.is_some() && !(st.big_wait.is_some() && signal_next(st)) {
            return Step::Stop;
        }
        let State {
            dec, plain, crypto, ..
        } = &mut *st;
        let f = match dec.decode(plain, false, &*crypto) {
            Ok(Some(f)) => f,
            Ok(None) => return Step::Stop,
            Err(e) => {
                link.fail(st, &e.to_string());
                return Step::Stop;
            }
        };
        match self.frame(link, st, f) {
            Ok(s) => s,
            Err(e) => {
                link.fail(st, &e.to_string());
                Step::Stop
            }
        }
    }

    fn frame(&self, link: &Link, st: &mut State, f: LegacyFrame) -> Result<Step, LegacyError> {
        let limits = &link.limits;
        match f {
            LegacyFrame::Request {
                kind,
                cipher,
                payload,
                ..
            } => {
                let (cmd, body) = legacy::decode_command(kind, &payload, limits)?;
                if !st.handshaken && cmd != control::CIPHER_MODEL {
                    return Err(LegacyError::BadCommand(format!(
                        "{cmd:?} before the __@CipherModel handshake"
                    )));
                }
                let id = st.next_req;
                st.next_req += 1;
                if kind.answered() {
                    st.inflight = Some(InFlight {
                        id,
                        kind,
                        cipher,
                        answered: false,
                    });
                }
                if cmd == control::CIPHER_MODEL && kind == CmdKind::Stream {
                    let model = self.handshake(link, st)?;
                    self.shared.handshakes.fetch_add(1, Ordering::Relaxed);
                    link.answer(st, &link.dfe_bytes(&model.to_dfe()));
                    return Ok(Step::Again);
                }
                if cmd.eq_ignore_ascii_case(control::WAIT) && kind == CmdKind::Console {
                    let tick = format!("{:X}", started().elapsed().as_millis());
                    link.answer(st, tick.as_bytes());
                    return Ok(Step::Again);
                }
                let cmd_t = Text::from(cmd.as_str());
                Ok(Step::Dispatch(match (kind, body) {
                    (CmdKind::Console, CmdBody::Text(t)) => Request::Console {
                        id,
                        cmd: cmd_t,
                        text: Text::from(t),
                    },
                    (CmdKind::DirectConsole, CmdBody::Text(t)) => Request::DirectConsole {
                        cmd: cmd_t,
                        text: Text::from(t),
                    },
                    (CmdKind::Stream, CmdBody::Dfe(d)) => Request::Stream {
                        id,
                        cmd: cmd_t,
                        data: d.to_dataframe()?,
                    },
                    (CmdKind::DirectStream, CmdBody::Dfe(d)) => Request::DirectStream {
                        cmd: cmd_t,
                        data: d.to_dataframe()?,
                    },
                    (k, _) => return Err(LegacyError::BadCommand(format!("{k:?} body"))),
                }))
            }
            LegacyFrame::BigStreamChunk {
                cmd,
                offset,
                total,
                last,
                data,
            } => {
                if !st.handshaken {
                    return Err(LegacyError::BadCommand(
                        "BigStream before the handshake".into(),
                    ));
                }
                let id = match st.big {
                    Some(id) if offset > 0 => id,
                    _ => {
                        let id = st.next_req;
                        st.next_req += 1;
                        st.big = Some(id);
                        id
                    }
                };
                let sig = crate::chunk_signal(last);
                link.send_frames(st, &sig)?;
                Ok(Step::Dispatch(Request::BigChunk {
                    id,
                    cmd: Text::from(cmd),
                    offset,
                    total,
                    last,
                    data,
                }))
            }
            LegacyFrame::CompleteBuffer { cmd, data } => {
                if !st.handshaken {
                    return Err(LegacyError::BadCommand(
                        "CompleteBuffer before the handshake".into(),
                    ));
                }
                Ok(Step::Dispatch(Request::CompleteBuffer {
                    cmd: Text::from(cmd),
                    data,
                }))
            }
            LegacyFrame::Signal(s) => {
                link.signal(st, s);
                Ok(Step::Again)
            }
            LegacyFrame::Response { .. } => Err(LegacyError::BadCommand(
                "a response frame with no request in flight".into(),
            )),
        }
    }

    /// Draws the connection's cipher and key: the `__@CipherModel` answer.
    fn handshake(&self, link: &Link, st: &mut State) -> Result<CipherModel, LegacyError> {
        let s = &self.shared;
        if !st.handshaken {
            let ids = s.config.ciphers.ids();
            let mut r = [0u8; 9];
            let _ = s.rng.fill(&mut r);
            let cipher = ids[r[0] as usize % ids.len().max(1)];
            let seed: [u8; 8] = r[1..9].try_into().unwrap_or_default();
            st.crypto = ConnCrypto::new(crypto::key_buffer(cipher, &seed)?);
            st.cipher = cipher;
            st.handshaken = true;
        }
        let mut m = CipherModel::znet(
            link.id as u32,
            st.cipher,
            st.crypto.key().clone(),
            s.instance,
        );
        m.max_complete_buffer_size = link.limits.max_complete_buffer.min(u32::MAX as usize) as u32;
        m.send_data_compressed = link.compress;
        Ok(m)
    }
}

/// Whether the next buffered frame is a whole BigStream signal.
fn signal_next(st: &State) -> bool {
    let p = &st.plain;
    !st.dec.in_body()
        && p.len() >= 9
        && p[..4] == frame::HEAD.to_le_bytes()
        && matches!(p[4], 0xF6 | 0xF7)
}

/// Pushes `data` to a legacy client as one BigStream `cmd`: 1 MiB chunks, the
/// next sent on the client's `F6`, the transfer done on its `F7`
/// ([`LegacyStats::big_streams_pushed`]). Like every push it waits for the
/// answer to the client's request in flight; answers and pushes after it wait
/// for its `F7`. Over [`LegacyConfig::max_push_bytes`] it fails with
/// [`zs_core::Error::Full`] and queues nothing. Legacy peers only: a zs-core
/// connection refuses a BigStream frame from the server.
pub fn push_big_stream(peer: &Peer, cmd: &str, data: Bytes) -> zs_core::Result<()> {
    peer.send_frame(Frame::BigStream {
        id: 0,
        cmd: Text::from(cmd),
        offset: 0,
        total: data.len() as u64,
        last: true,
        data,
    })
}

fn started() -> Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T.get_or_init(Instant::now)
}
