//! Moving a live byte stream between paths (relay ⇄ direct) without loss or duplication.
//!
//! A sans-IO [`Stream`] per side: the bytes the application writes get stream offsets
//! (like TCP sequence numbers); they stay in a bounded send buffer until the peer's
//! cumulative ACK covers them. Frames go out on whichever path is current; on a switch
//! ([`Stream::rewind`]) everything not yet acknowledged is sent again on the new path.
//! The receiver accepts frames from any path and keeps exactly the bytes at its next
//! offset: a retransmitted or late duplicate is trimmed, a gap is a protocol error (a
//! path is ordered, and a sender never skips ahead of what was acknowledged).
//!
//! Frame (inside whatever framing the path has):
//! `type:u8` (1 DATA, 2 ACK, 3 FIN), `offset:u64be`, and for DATA `len:u16be` + bytes
//! (≤ [`MAX_DATA`]). ACK's offset is the next byte expected, followed by
//! `limit:u64be` (flow control: send only below it); FIN's offset is the stream's end.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// Largest DATA payload.
pub const MAX_DATA: usize = 16 * 1024;
/// What a sender may send before the first ACK: receivers must buffer at least this.
pub const INITIAL_WINDOW: u64 = MAX_DATA as u64;
/// Bytes of a DATA frame before its payload (type, offset, length).
pub const DATA_HEADER: usize = 11;
/// Largest encoded frame (a full DATA frame).
pub const MAX_FRAME: usize = DATA_HEADER + MAX_DATA;

/// A frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes at `offset`.
    Data {
        /// Stream offset of the first byte.
        offset: u64,
        /// The bytes (a view of the sender's buffer or of the receive buffer: no copy).
        bytes: Bytes,
    },
    /// Everything below `next` arrived; the sender may send up to `limit` (exclusive).
    Ack {
        /// The next offset expected.
        next: u64,
        /// Flow control: the receiver has room for bytes below this offset.
        limit: u64,
    },
    /// The stream ends at `end`.
    Fin {
        /// Total length.
        end: u64,
    },
}

/// Protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// Malformed frame.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// DATA beyond the next expected offset (a gap).
    #[error("gap: data at {offset}, expected {expected}")]
    Gap {
        /// Offset received.
        offset: u64,
        /// Offset expected.
        expected: u64,
    },
    /// ACK for bytes never sent.
    #[error("ack {0} beyond what was sent")]
    AckBeyond(u64),
    /// The receive buffer is full (the application does not read).
    #[error("receive buffer full")]
    RecvFull,
    /// FIN disagrees with data already seen.
    #[error("bad fin")]
    BadFin,
}

impl Frame {
    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Data { bytes, .. } => DATA_HEADER + bytes.len(),
            Frame::Ack { .. } => 17,
            Frame::Fin { .. } => 9,
        }
    }

    /// Appends the encoding to `o`.
    pub fn encode_into<B: BufMut>(&self, o: &mut B) {
        match self {
            Frame::Data { offset, bytes } => {
                o.put_u8(1);
                o.put_u64(*offset);
                o.put_u16(bytes.len() as u16);
                o.put_slice(bytes);
            }
            Frame::Ack { next, limit } => {
                o.put_u8(2);
                o.put_u64(*next);
                o.put_u64(*limit);
            }
            Frame::Fin { end } => {
                o.put_u8(3);
                o.put_u64(*end);
            }
        }
    }

    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut o);
        o
    }

    /// Decode one whole frame (copies a DATA payload; see [`Frame::decode_bytes`]).
    pub fn decode(b: &[u8]) -> Result<Frame, MigrateError> {
        Frame::decode_bytes(Bytes::copy_from_slice(b))
    }

    /// Decode one whole frame; a DATA payload is a view of `b` (no copy).
    pub fn decode_bytes(b: Bytes) -> Result<Frame, MigrateError> {
        if b.len() < 9 {
            return Err(MigrateError::Malformed("short"));
        }
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[1..9]);
        let offset = u64::from_be_bytes(off);
        match b[0] {
            1 => {
                if b.len() < DATA_HEADER {
                    return Err(MigrateError::Malformed("short data"));
                }
                let n = usize::from(u16::from_be_bytes([b[9], b[10]]));
                if n > MAX_DATA || b.len() != DATA_HEADER + n {
                    return Err(MigrateError::Malformed("data length"));
                }
                Ok(Frame::Data {
                    offset,
                    bytes: b.slice(DATA_HEADER..),
                })
            }
            2 if b.len() == 17 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[9..17]);
                Ok(Frame::Ack {
                    next: offset,
                    limit: u64::from_be_bytes(l),
                })
            }
            3 if b.len() == 9 => Ok(Frame::Fin { end: offset }),
            _ => Err(MigrateError::Malformed("type")),
        }
    }
}

/// One side of a migratable stream.
///
/// Buffers are queues of [`Bytes`] chunks: what the application wrote stays in the
/// chunks it arrived in until acknowledged, a DATA frame is a view of one chunk, and a
/// received payload is queued as the view it arrived as; bytes are copied only where
/// they enter or leave (and never one by one).
#[derive(Debug)]
pub struct Stream {
    // Send side.
    unacked: VecDeque<Bytes>,
    unacked_len: usize,
    /// Offset of `unacked[0][0]` (everything below is acknowledged).
    acked: u64,
    /// Next offset to put on the current path.
    next_send: u64,
    max_unacked: usize,
    fin_requested: bool,
    fin_sent: bool,
    // Receive side.
    recv: VecDeque<Bytes>,
    recv_len: usize,
    /// Next offset expected.
    next_recv: u64,
    /// Last ACK we sent (next, limit).
    ack_sent: (u64, u64),
    /// The peer lets us send below this offset.
    peer_limit: u64,
    max_recv: usize,
    fin_at: Option<u64>,
    /// Bytes received more than once (trimmed): visible for tests and stats.
    pub duplicate_bytes: u64,
}

impl Stream {
    /// A stream holding at most `max_unacked` unacknowledged bytes and `max_recv`
    /// unread bytes.
    pub fn new(max_unacked: usize, max_recv: usize) -> Stream {
        Stream {
            unacked: VecDeque::new(),
            unacked_len: 0,
            acked: 0,
            next_send: 0,
            max_unacked,
            fin_requested: false,
            fin_sent: false,
            recv: VecDeque::new(),
            recv_len: 0,
            next_recv: 0,
            ack_sent: (0, max_recv as u64),
            peer_limit: INITIAL_WINDOW,
            max_recv,
            fin_at: None,
            duplicate_bytes: 0,
        }
    }

    /// Room left in the send buffer.
    pub fn send_room(&self) -> usize {
        if self.fin_requested {
            0
        } else {
            self.max_unacked - self.unacked_len
        }
    }

    /// Queue bytes (copied); returns how many fit (0 when the window is full: wait for
    /// ACKs).
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.send_room());
        for c in data[..n].chunks(MAX_DATA) {
            self.push_chunk(Bytes::copy_from_slice(c));
        }
        n
    }

    /// Queue a chunk without copying it; returns false (and queues nothing) when it
    /// does not fit whole.
    pub fn write_bytes(&mut self, chunk: Bytes) -> bool {
        if chunk.len() > self.send_room() {
            return false;
        }
        if !chunk.is_empty() {
            self.push_chunk(chunk);
        }
        true
    }

    fn push_chunk(&mut self, c: Bytes) {
        self.unacked_len += c.len();
        self.unacked.push_back(c);
    }

    /// No more bytes will be written.
    pub fn finish(&mut self) {
        self.fin_requested = true;
    }

    /// Take unread bytes (copied into `out`).
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(c) = self.read_chunk(out.len() - n) else {
                break;
            };
            out[n..n + c.len()].copy_from_slice(&c);
            n += c.len();
        }
        n
    }

    /// Take the next unread chunk, at most `max` bytes (no copy).
    pub fn read_chunk(&mut self, max: usize) -> Option<Bytes> {
        let front = self.recv.front_mut()?;
        let c = if front.len() <= max {
            self.recv.pop_front()?
        } else {
            front.split_to(max)
        };
        self.recv_len -= c.len();
        Some(c)
    }

    /// All bytes of the peer's stream were read.
    pub fn is_read_closed(&self) -> bool {
        self.fin_at == Some(self.next_recv) && self.recv_len == 0
    }

    /// All our bytes (and FIN) were acknowledged.
    pub fn is_write_done(&self) -> bool {
        self.fin_requested && self.unacked_len == 0 && self.fin_sent
    }

    /// Both directions are over: all our bytes and our FIN are out and acknowledged
    /// ([`Stream::is_write_done`]), the peer's FIN is here and everything before it
    /// was read ([`Stream::is_read_closed`]), and the last ACK handed out covers
    /// every byte received. A window update may still be pending (the application's
    /// reads move the limit), but the peer needs none after its FIN: it sends nothing
    /// more. Waiting for one kept a connection whose peer had already ended (and
    /// dropped its paths) waiting for a path until `pathless_timeout`, then failing
    /// with `NoPath` (session 12: `migrate_lab::relay_to_direct_and_back_without_loss`,
    /// about 2 % of runs, whenever the visitor's application read its last bytes after
    /// the agent had ended).
    pub fn is_done(&self) -> bool {
        self.is_write_done() && self.is_read_closed() && self.ack_sent.0 == self.next_recv
    }

    /// Bytes written but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked_len
    }

    /// (next offset expected, window limit) as an ACK would carry them now. The limit
    /// moves in steps of a quarter of the buffer so that reads do not each cause an ACK.
    fn ack_now(&self) -> (u64, u64) {
        let room = (self.max_recv - self.recv_len) as u64;
        let limit = self.next_recv + room;
        let step = (self.max_recv as u64 / 4).max(1);
        let last = self.ack_sent.1;
        let limit = if last != u64::MAX && limit < last.saturating_add(step) && limit >= last {
            last
        } else {
            limit
        };
        (self.next_recv, limit)
    }

    /// An ACK with what this side has received and its window now (does not count as
    /// the ACK sent on the current path: a keep-alive for a standby path).
    pub fn ack_frame(&self) -> Frame {
        let (next, limit) = self.ack_now();
        Frame::Ack { next, limit }
    }

    /// Bytes received and not yet read.
    pub fn buffered(&self) -> usize {
        self.recv_len
    }

    /// Whether [`Stream::poll_transmit`] has a frame now.
    pub fn wants_transmit(&self) -> bool {
        self.ack_sent != self.ack_now()
            || self.next_send < (self.acked + self.unacked_len as u64).min(self.peer_limit)
            || (self.fin_requested && !self.fin_sent)
    }

    /// The path changed: send everything unacknowledged again (and re-announce our
    /// ACK and FIN) on the new one.
    pub fn rewind(&mut self) {
        self.next_send = self.acked;
        self.ack_sent = (u64::MAX, u64::MAX); // force an ACK
        self.fin_sent = false;
    }

    /// The next frame to send on the current path, if any.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        let ack = self.ack_now();
        if self.ack_sent != ack {
            self.ack_sent = ack;
            return Some(Frame::Ack {
                next: ack.0,
                limit: ack.1,
            });
        }
        let end = self.acked + self.unacked_len as u64;
        let end_ok = end.min(self.peer_limit);
        if self.next_send < end_ok {
            // The chunk holding `next_send` (chunks are few: the window over their size).
            let mut at = (self.next_send - self.acked) as usize;
            let mut chunk = None;
            for c in &self.unacked {
                if at < c.len() {
                    chunk = Some(c);
                    break;
                }
                at -= c.len();
            }
            let c = chunk.expect("next_send below the end of the send buffer");
            let n = (c.len() - at)
                .min(MAX_DATA)
                .min((end_ok - self.next_send) as usize);
            let f = Frame::Data {
                offset: self.next_send,
                bytes: c.slice(at..at + n),
            };
            self.next_send += n as u64;
            return Some(f);
        }
        if self.fin_requested && !self.fin_sent {
            self.fin_sent = true;
            return Some(Frame::Fin { end });
        }
        None
    }

    /// A frame arrived (from any path).
    pub fn on_frame(&mut self, f: Frame) -> Result<(), MigrateError> {
        match f {
            Frame::Data { offset, mut bytes } => {
                let len = bytes.len() as u64;
                if offset > self.next_recv {
                    return Err(MigrateError::Gap {
                        offset,
                        expected: self.next_recv,
                    });
                }
                let skip = (self.next_recv - offset).min(len);
                self.duplicate_bytes += skip;
                let _ = bytes.split_to(skip as usize);
                if self.recv_len + bytes.len() > self.max_recv {
                    return Err(MigrateError::RecvFull);
                }
                if let Some(end) = self.fin_at {
                    if self.next_recv + bytes.len() as u64 > end {
                        return Err(MigrateError::BadFin);
                    }
                }
                if !bytes.is_empty() {
                    self.next_recv += bytes.len() as u64;
                    self.recv_len += bytes.len();
                    self.recv.push_back(bytes);
                }
            }
            Frame::Ack { next, limit } => {
                if limit > self.peer_limit {
                    self.peer_limit = limit;
                }
                let sent_end = self.acked + self.unacked_len as u64;
                if next > sent_end {
                    return Err(MigrateError::AckBeyond(next));
                }
                if next > self.acked {
                    let mut k = (next - self.acked) as usize;
                    self.unacked_len -= k;
                    while k > 0 {
                        let front = self.unacked.front_mut().expect("acked bytes are queued");
                        if front.len() <= k {
                            k -= front.len();
                            self.unacked.pop_front();
                        } else {
                            let _ = front.split_to(k);
                            k = 0;
                        }
                    }
                    self.acked = next;
                    if self.next_send < next {
                        self.next_send = next;
                    }
                }
            }
            Frame::Fin { end } => {
                if end < self.next_recv || self.fin_at.is_some_and(|e| e != end) {
                    return Err(MigrateError::BadFin);
                }
                self.fin_at = Some(end);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Async driver: one application byte stream over whichever path is current.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A path: any ordered byte stream (a relay data connection, a QUIC stream, TCP).
pub trait PathIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> PathIo for T {}

/// Driver limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    /// Unacknowledged bytes kept for resending (the memory a connection may hold).
    pub max_unacked: usize,
    /// Received bytes not yet taken by the application (the window offered to the
    /// peer; at least [`INITIAL_WINDOW`]).
    pub max_recv: usize,
    /// How long the connection may have no path before it fails.
    pub pathless_timeout: std::time::Duration,
    /// A standby path (attached, not current) gets an ACK frame this often, so that
    /// a relay's idle timeout and NAT mappings keep it open (about 19 bytes each).
    pub standby_keepalive: std::time::Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            max_unacked: 256 * 1024,
            max_recv: 256 * 1024,
            pathless_timeout: std::time::Duration::from_secs(30),
            standby_keepalive: std::time::Duration::from_secs(20),
        }
    }
}

/// What [`run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Paths used (the first one included).
    pub paths: u32,
    /// Times the current path failed and a standby path took over.
    pub fallbacks: u32,
    /// Bytes from the application sent (once each, resends not counted).
    pub app_bytes_out: u64,
    /// Bytes delivered to the application.
    pub app_bytes_in: u64,
    /// Duplicate bytes received and trimmed.
    pub duplicate_bytes: u64,
}

/// Why [`run`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(#[from] MigrateError),
    /// The application side failed.
    #[error("application: {0}")]
    App(std::io::Error),
    /// No path for longer than `pathless_timeout`, or none left and the path
    /// channel closed (no more can come).
    #[error("no path")]
    NoPath,
}

/// Reads `len:u16be frame` records from a path into one buffer; a DATA payload is a
/// view of that buffer (no copy, no allocation per frame: a new 64 KiB block only when
/// the old one is used up).
struct FrameReader<R> {
    r: R,
    buf: BytesMut,
}

/// Read-buffer block size of a path.
const READ_BLOCK: usize = 64 * 1024;
/// A path's writer gathers queued frames up to this many bytes per write.
const WRITE_BATCH: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(r: R) -> Self {
        FrameReader {
            r,
            buf: BytesMut::with_capacity(READ_BLOCK),
        }
    }

    async fn next(&mut self) -> std::io::Result<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let n = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if n > MAX_FRAME {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "frame too large",
                    ));
                }
                if self.buf.len() >= 2 + n {
                    let _ = self.buf.split_to(2);
                    let b = self.buf.split_to(n).freeze();
                    return Frame::decode_bytes(b)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
                self.buf.reserve((2 + n).max(READ_BLOCK) - self.buf.len());
            } else {
                self.buf.reserve(READ_BLOCK);
            }
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

struct Attached {
    frames_out: mpsc::Sender<Frame>,
    tasks: tokio::task::JoinSet<()>,
    id: u32,
    prio: u8,
}

fn attach<P: PathIo>(
    path: P,
    id: u32,
    prio: u8,
    frames_in: mpsc::Sender<(u32, Option<Frame>)>,
) -> Attached {
    let (r, mut w) = tokio::io::split(path);
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        let mut r = FrameReader::new(r);
        loop {
            match r.next().await {
                Ok(f) => {
                    if frames_in.send((id, Some(f))).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = frames_in.send((id, None)).await;
                    return;
                }
            }
        }
    });
    tasks.spawn(async move {
        // Everything queued goes out in one write (up to WRITE_BATCH): one copy per
        // byte into the batch, one write per batch.
        let mut out = BytesMut::with_capacity(WRITE_BATCH + MAX_FRAME + 2);
        while let Some(f) = rx.recv().await {
            let mut f = Some(f);
            while let Some(x) = f.take() {
                out.put_u16(x.encoded_len() as u16);
                x.encode_into(&mut out);
                if out.len() < WRITE_BATCH {
                    f = rx.try_recv().ok();
                }
            }
            if w.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        let _ = w.shutdown().await;
    });
    Attached {
        frames_out: tx,
        tasks,
        id,
        prio,
    }
}

/// The attached paths of one connection: the current one is the live path with the
/// highest priority (the most recent among equals); the others stand by.
struct Paths {
    list: Vec<Attached>,
    cur: Option<usize>,
}

impl Paths {
    fn best(&self) -> Option<usize> {
        // max_by_key keeps the last maximum: the most recent among equals.
        self.list
            .iter()
            .enumerate()
            .max_by_key(|(_, a)| a.prio)
            .map(|(i, _)| i)
    }
    fn current(&self) -> Option<&Attached> {
        self.cur.map(|i| &self.list[i])
    }
}

/// Carry `app` (the local end: a TCP connection, a duplex) over the paths that arrive
/// on `paths`: the first one starts the connection; each later one replaces the current
/// path at once (everything unacknowledged is resent on it) and the old one stands by;
/// when the current path fails, the most recent standby path takes over; with no path
/// at all the connection waits (bounded by `pathless_timeout`) for the next. Ends when
/// both directions are finished and acknowledged.
pub async fn run<A, P>(
    app: A,
    mut paths: mpsc::Receiver<P>,
    cfg: ConnConfig,
) -> Result<ConnStats, ConnError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    P: PathIo,
{
    let (tx, rx) = mpsc::channel(1);
    let fwd = tokio::spawn(async move {
        while let Some(p) = paths.recv().await {
            if tx.send((p, 0u8)).await.is_err() {
                return;
            }
        }
    });
    let r = run_prio(app, rx, cfg).await;
    fwd.abort();
    r
}

/// [`run`] with a priority per path: the current path is the live one with the highest
/// priority (the most recent among equals), so a direct path (high) stays current when
/// a relay path (low) arrives after it, and a relay path that arrives first stands by
/// once the direct one is up.
pub async fn run_prio<A, P>(
    app: A,
    mut paths: mpsc::Receiver<(P, u8)>,
    cfg: ConnConfig,
) -> Result<ConnStats, ConnError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    P: PathIo,
{
    let (mut ar, mut aw) = tokio::io::split(app);
    let mut st = Stream::new(cfg.max_unacked, cfg.max_recv.max(INITIAL_WINDOW as usize));
    let (fin_tx, mut fin_rx) = mpsc::channel::<(u32, Option<Frame>)>(64);
    let mut pl = Paths {
        list: Vec::new(),
        cur: None,
    };
    let mut next_id = 0u32;
    let mut stats = ConnStats::default();
    let mut app_eof = false;
    let mut app_closed_write = false;
    // What the application writes is read into blocks of this buffer and queued as
    // views of them (no copy until a path's writer batches it).
    let mut inbuf = BytesMut::with_capacity(READ_BLOCK);
    // The chunk on its way to the application (written without blocking the loop).
    let mut out = Bytes::new();
    let mut pathless_since = Some(tokio::time::Instant::now());
    let mut paths_open = true;
    let mut keepalive = tokio::time::interval(cfg.standby_keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    loop {
        // Hand frames to the current path's writer while its queue has room; the rest
        // waits in the stream (no await here: both ends may be full at once).
        if let Some(c) = pl.current() {
            while st.wants_transmit() {
                let Ok(permit) = c.frames_out.try_reserve() else {
                    break;
                };
                match st.poll_transmit() {
                    Some(f) => permit.send(f),
                    None => break,
                }
            }
        }
        if out.is_empty() {
            if let Some(c) = st.read_chunk(usize::MAX) {
                stats.app_bytes_in += c.len() as u64;
                out = c;
            }
        }
        if out.is_empty() && st.is_read_closed() && !app_closed_write {
            app_closed_write = true;
            let _ = aw.shutdown().await;
        }
        if st.is_done() && out.is_empty() {
            // Let the last frames go out before the paths are dropped.
            if let Some(i) = pl.cur.take() {
                let c = pl.list.remove(i);
                drop(c.frames_out);
                let mut t = c.tasks;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    while t.join_next().await.is_some() {}
                })
                .await;
            }
            stats.duplicate_bytes = st.duplicate_bytes;
            return Ok(stats);
        }
        let room = st.send_room();
        let can_read_app = !app_eof && room > 0;
        let deadline = pathless_since.map(|t| t + cfg.pathless_timeout);
        let tx = pl.current().map(|c| c.frames_out.clone());
        let wants = tx.is_some() && st.wants_transmit();
        let rlen = room.clamp(1, MAX_DATA);
        if inbuf.capacity() < rlen {
            inbuf.reserve(READ_BLOCK);
        }
        let standby = pl.list.len() > 1;
        tokio::select! {
            r = aw.write(&out), if !out.is_empty() => {
                let n = r.map_err(ConnError::App)?;
                let _ = out.split_to(n);
            }
            r = async { ar.read_buf(&mut (&mut inbuf).limit(rlen)).await }, if can_read_app => {
                match r {
                    Ok(0) => { app_eof = true; st.finish(); }
                    Ok(n) => {
                        let ok = st.write_bytes(inbuf.split().freeze());
                        debug_assert!(ok);
                        stats.app_bytes_out += n as u64;
                    }
                    Err(e) => return Err(ConnError::App(e)),
                }
            }
            permit = async { tx.as_ref().expect("checked").reserve().await }, if wants => {
                if let (Ok(p), Some(f)) = (permit, st.poll_transmit()) {
                    p.send(f);
                }
            }
            got = fin_rx.recv() => {
                if let Some((id, f)) = got {
                    match f {
                        // Frames count from every path: late ones from an old path
                        // are trimmed, the standby's keep-alives are plain ACKs.
                        Some(f) => st.on_frame(f)?,
                        None => {
                            let Some(i) = pl.list.iter().position(|a| a.id == id) else {
                                continue;
                            };
                            let was_cur = pl.cur == Some(i);
                            let cur_id = pl.current().map(|c| c.id);
                            pl.list.remove(i);
                            pl.cur = if was_cur {
                                pl.best()
                            } else {
                                cur_id.and_then(|c| pl.list.iter().position(|a| a.id == c))
                            };
                            if was_cur {
                                if pl.cur.is_some() {
                                    stats.fallbacks += 1;
                                    st.rewind();
                                } else if !paths_open {
                                    // No path left and none can come.
                                    return Err(ConnError::NoPath);
                                } else {
                                    pathless_since = Some(tokio::time::Instant::now());
                                }
                            }
                        }
                    }
                }
            }
            p = paths.recv(), if paths_open => {
                match p {
                    Some((p, prio)) => {
                        next_id += 1;
                        stats.paths += 1;
                        pl.list.push(attach(p, next_id, prio, fin_tx.clone()));
                        pathless_since = None;
                        let best = pl.best();
                        if best != pl.cur {
                            pl.cur = best;
                            st.rewind();
                        }
                    }
                    None => {
                        // The caller will send no more paths: without one now, give up
                        // at once (e.g. the relay could not be reached).
                        paths_open = false;
                        if pl.list.is_empty() {
                            return Err(ConnError::NoPath);
                        }
                    }
                }
            }
            _ = keepalive.tick(), if standby => {
                let ack = st.ack_frame();
                for (i, a) in pl.list.iter().enumerate() {
                    if Some(i) != pl.cur {
                        let _ = a.frames_out.try_send(ack.clone());
                    }
                }
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => return Err(ConnError::NoPath),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An in-memory path: frames in flight, in order; it can die (drop what is in
    /// flight) or linger (deliver its backlog late, after the switch).
    #[derive(Default)]
    struct Path {
        a_to_b: VecDeque<Vec<u8>>,
        b_to_a: VecDeque<Vec<u8>>,
    }

    struct Run {
        a: Stream,
        b: Stream,
        paths: [Path; 2],
        cur: usize,
        sent: Vec<u8>,
        got: Vec<u8>,
    }

    impl Run {
        fn new(window: usize) -> Run {
            Run {
                a: Stream::new(window, 1 << 20),
                b: Stream::new(window, 1 << 20),
                paths: [Path::default(), Path::default()],
                cur: 0,
                sent: Vec::new(),
                got: Vec::new(),
            }
        }
        fn transmit(&mut self) {
            while let Some(f) = self.a.poll_transmit() {
                self.paths[self.cur].a_to_b.push_back(f.encode());
            }
            while let Some(f) = self.b.poll_transmit() {
                self.paths[self.cur].b_to_a.push_back(f.encode());
            }
        }
        /// Deliver up to `n` frames each way on path `p`.
        fn deliver(&mut self, p: usize, n: usize) {
            for _ in 0..n {
                if let Some(f) = self.paths[p].a_to_b.pop_front() {
                    self.b.on_frame(Frame::decode(&f).unwrap()).unwrap();
                }
                if let Some(f) = self.paths[p].b_to_a.pop_front() {
                    self.a.on_frame(Frame::decode(&f).unwrap()).unwrap();
                }
            }
            let mut buf = [0u8; 4096];
            loop {
                let n = self.b.read(&mut buf);
                if n == 0 {
                    break;
                }
                self.got.extend_from_slice(&buf[..n]);
            }
        }
        fn switch(&mut self, kill_old: bool) {
            if kill_old {
                self.paths[self.cur] = Path::default();
            }
            self.cur = 1 - self.cur;
            self.a.rewind();
            self.b.rewind();
        }
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Relay → direct in the middle of a transfer while the relay still holds frames
    /// in flight (delivered late): every byte arrives once, in order.
    #[test]
    fn upgrade_mid_transfer_no_loss_no_duplication() {
        let mut r = Run::new(64 * 1024);
        let payload = data(300_000, 1);
        let mut pos = 0;
        let mut switched = false;
        while r.got.len() < payload.len() {
            pos += r.a.write(&payload[pos..]);
            r.sent = payload[..pos].to_vec();
            r.transmit();
            if !switched && r.got.len() > 100_000 {
                r.switch(false); // the old path lingers
                switched = true;
            }
            r.deliver(r.cur, 3);
            r.deliver(1 - r.cur, 1); // late frames from the other path
        }
        r.a.finish();
        for _ in 0..10 {
            r.transmit();
            r.deliver(r.cur, 10);
            r.deliver(1 - r.cur, 10);
        }
        assert!(switched);
        assert_eq!(r.got, payload);
        assert!(r.b.is_read_closed());
        assert!(r.a.is_write_done());
        assert!(
            r.b.duplicate_bytes > 0,
            "the late path delivered duplicates"
        );
    }

    /// The direct path dies with frames in flight: back on the relay, the unacked bytes
    /// are sent again and nothing is lost.
    #[test]
    fn direct_path_dies_connection_survives_on_the_relay() {
        let mut r = Run::new(32 * 1024);
        let payload = data(200_000, 7);
        let mut pos = 0;
        let mut died = false;
        while r.got.len() < payload.len() {
            pos += r.a.write(&payload[pos..]);
            r.transmit();
            if !died && r.got.len() > 50_000 {
                r.switch(true);
                died = true;
            }
            r.deliver(r.cur, 2);
        }
        assert_eq!(r.got, payload);
    }

    /// The window bounds memory: a writer cannot queue more than `max_unacked`.
    #[test]
    fn window_bounds_unacked_bytes() {
        let mut s = Stream::new(1000, 1000);
        assert_eq!(s.write(&[0; 5000]), 1000);
        assert_eq!(s.write(&[0; 10]), 0);
        assert_eq!(s.unacked(), 1000);
    }

    /// Hostile peer: a gap, an ack for unsent bytes, an overflowing sender, a bad FIN.
    #[test]
    fn hostile_frames_are_errors() {
        let mut s = Stream::new(100, 10);
        assert!(matches!(
            s.on_frame(Frame::Data {
                offset: 5,
                bytes: Bytes::from(vec![1])
            }),
            Err(MigrateError::Gap { .. })
        ));
        assert_eq!(
            s.on_frame(Frame::Ack { next: 1, limit: 1 }),
            Err(MigrateError::AckBeyond(1))
        );
        assert_eq!(
            s.on_frame(Frame::Data {
                offset: 0,
                bytes: Bytes::from(vec![0; 11])
            }),
            Err(MigrateError::RecvFull)
        );
        s.on_frame(Frame::Data {
            offset: 0,
            bytes: Bytes::from(vec![0; 4]),
        })
        .unwrap();
        assert_eq!(s.on_frame(Frame::Fin { end: 2 }), Err(MigrateError::BadFin));
        assert!(Frame::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).is_err());
    }

    proptest! {
        /// Any schedule of switches, path deaths and interleavings delivers the stream
        /// exactly once, in order.
        #[test]
        fn any_schedule_delivers_exactly_once(
            len in 1usize..60_000,
            steps in proptest::collection::vec((0u8..6, 1usize..5), 1..200),
        ) {
            let mut r = Run::new(8 * 1024);
            let payload = data(len, 3);
            let mut pos = 0;
            for (op, n) in steps {
                pos += r.a.write(&payload[pos..]);
                r.transmit();
                match op {
                    0 => r.switch(false),
                    1 => r.switch(true),
                    2 => r.deliver(1 - r.cur, n),
                    _ => r.deliver(r.cur, n),
                }
            }
            // Settle on the current path.
            for _ in 0..1000 {
                if r.got.len() == payload.len() { break; }
                pos += r.a.write(&payload[pos..]);
                r.transmit();
                r.deliver(r.cur, 8);
            }
            prop_assert_eq!(r.got, payload);
        }

        #[test]
        fn frames_round_trip(offset in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            for f in [Frame::Data { offset, bytes: Bytes::from(bytes.clone()) }, Frame::Ack { next: offset, limit: offset ^ 7 }, Frame::Fin { end: offset }] {
                prop_assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
            }
        }
    }

    /// A path through a proxy task that can be killed (bytes in flight are lost).
    fn path() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<()>,
    ) {
        let (a, pa) = tokio::io::duplex(16 * 1024);
        let (b, pb) = tokio::io::duplex(16 * 1024);
        let h = tokio::spawn(async move {
            let (mut pa, mut pb) = (pa, pb);
            let _ = tokio::io::copy_bidirectional(&mut pa, &mut pb).await;
        });
        (a, b, h)
    }

    /// `events`: (bytes written by A, kill the current path first?) → a new path then.
    async fn exchange(events: &[(usize, bool)]) -> (Vec<u8>, Vec<u8>, ConnStats) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a_app, mut a_user) = tokio::io::duplex(64 * 1024);
        let (b_app, b_user) = tokio::io::duplex(64 * 1024);
        let (atx, arx) = mpsc::channel(4);
        let (btx, brx) = mpsc::channel(4);
        let (x, y, mut proxy) = path();
        atx.send(x).await.unwrap();
        btx.send(y).await.unwrap();
        let cfg = ConnConfig::default();
        let ta = tokio::spawn(run(a_app, arx, cfg));
        let tb = tokio::spawn(run(b_app, brx, cfg));
        let payload = data(1_000_000, 9);
        let echo_back = data(300_000, 4);
        let (p, e) = (payload.clone(), echo_back.clone());
        let events = events.to_vec();
        let writer = tokio::spawn(async move {
            let mut sent = 0;
            for chunk in p.chunks(10_000) {
                a_user.write_all(chunk).await.unwrap();
                sent += chunk.len();
                for (at, kill) in &events {
                    if *at == sent {
                        if *kill {
                            proxy.abort();
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        let (x, y, h) = path();
                        proxy = h;
                        atx.send(x).await.unwrap();
                        btx.send(y).await.unwrap();
                    }
                }
            }
            a_user.shutdown().await.unwrap();
            let mut back = Vec::new();
            a_user.read_to_end(&mut back).await.unwrap();
            (back, atx, btx, proxy)
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let (mut r, mut w) = tokio::io::split(b_user);
            let w = async {
                w.write_all(&e).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let (_, n) = tokio::join!(w, r.read_to_end(&mut got));
            n.unwrap();
            got
        });
        let got = reader.await.unwrap();
        let (back, _a, _b, _p) = writer.await.unwrap();
        let sa = ta.await.unwrap().unwrap();
        let _ = tb.await.unwrap().unwrap();
        assert!(
            back == echo_back,
            "B -> A: {} of {}",
            back.len(),
            echo_back.len()
        );
        (got, payload, sa)
    }

    /// Relay-only connection upgraded to a new path mid-transfer (the old one left
    /// alive): both directions arrive complete, in order, once.
    #[tokio::test]
    async fn driver_upgrades_mid_transfer() {
        let (got, want, stats) = exchange(&[(400_000, false)]).await;
        assert!(got == want, "got {} bytes of {}", got.len(), want.len());
        assert_eq!(stats.paths, 2);
        assert_eq!(stats.app_bytes_out, 1_000_000);
    }

    /// The direct path dies mid-transfer with bytes in flight; the connection carries on
    /// over the relay (a new path), then upgrades again: nothing lost or duplicated.
    #[tokio::test]
    async fn driver_survives_a_dead_path_and_moves_back() {
        let (got, want, stats) =
            exchange(&[(200_000, false), (500_000, true), (800_000, false)]).await;
        assert!(got == want, "got {} bytes of {}", got.len(), want.len());
        assert_eq!(stats.paths, 4);
    }

    /// A path through a proxy task that counts the bytes it carries (both ways).
    fn counted_path() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<()>,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) {
        let (a, pa) = tokio::io::duplex(16 * 1024);
        let (b, pb) = tokio::io::duplex(16 * 1024);
        let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let n2 = n.clone();
        let h = tokio::spawn(async move {
            let (mut ar, mut aw) = tokio::io::split(pa);
            let (mut br, mut bw) = tokio::io::split(pb);
            let c1 = n2.clone();
            let up = async move {
                let mut buf = [0u8; 4096];
                while let Ok(k) = ar.read(&mut buf).await {
                    if k == 0 || bw.write_all(&buf[..k]).await.is_err() {
                        break;
                    }
                    c1.fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
                }
            };
            let down = async move {
                let mut buf = [0u8; 4096];
                while let Ok(k) = br.read(&mut buf).await {
                    if k == 0 || aw.write_all(&buf[..k]).await.is_err() {
                        break;
                    }
                    n2.fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
                }
            };
            tokio::join!(up, down);
        });
        (a, b, h, n)
    }

    /// A direct path (priority 1) stays current when a relay path (priority 0) arrives
    /// after it: the relay carries nothing meanwhile. When the direct path dies with
    /// bytes in flight, the standby relay path takes over at once (no new path needed):
    /// every byte arrives once, in order.
    #[tokio::test]
    async fn priority_keeps_direct_current_and_the_standby_takes_over() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a_app, mut a_user) = tokio::io::duplex(64 * 1024);
        let (b_app, mut b_user) = tokio::io::duplex(64 * 1024);
        let (atx, arx) = mpsc::channel(4);
        let (btx, brx) = mpsc::channel(4);
        let (d1, d2, direct, _dn) = counted_path();
        let (r1, r2, _relay, relayed) = counted_path();
        atx.send((d1, 1u8)).await.unwrap();
        btx.send((d2, 1u8)).await.unwrap();
        atx.send((r1, 0u8)).await.unwrap();
        btx.send((r2, 0u8)).await.unwrap();
        let cfg = ConnConfig::default();
        let ta = tokio::spawn(run_prio(a_app, arx, cfg));
        let tb = tokio::spawn(run_prio(b_app, brx, cfg));
        let payload = data(600_000, 5);
        let p = payload.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b_user.read_to_end(&mut got).await.unwrap();
            b_user.shutdown().await.unwrap();
            got
        });
        a_user.write_all(&p[..200_000]).await.unwrap();
        // Wait until the peer acknowledged most of it over the direct path.
        let t = tokio::time::Instant::now();
        while _dn.load(std::sync::atomic::Ordering::Relaxed) < 200_000 {
            assert!(t.elapsed() < std::time::Duration::from_secs(10));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(relayed.load(std::sync::atomic::Ordering::Relaxed), 0);
        a_user.write_all(&p[200_000..300_000]).await.unwrap();
        direct.abort();
        a_user.write_all(&p[300_000..]).await.unwrap();
        a_user.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_user.read_to_end(&mut back).await.unwrap();
        let got = reader.await.unwrap();
        assert!(got == payload, "got {} of {}", got.len(), payload.len());
        let sa = ta.await.unwrap().unwrap();
        let sb = tb.await.unwrap().unwrap();
        assert_eq!((sa.fallbacks, sb.fallbacks), (1, 1));
        assert!(relayed.load(std::sync::atomic::Ordering::Relaxed) >= 300_000);
        drop((atx, btx));
    }

    /// The peer ends (everything of ours acknowledged, its FIN sent) and drops its path
    /// while our application has not read its last bytes yet: once it has, the
    /// connection ends `Ok` at once. Reading moves our window, but with no path that
    /// update cannot go out, and the peer needs none after its FIN; before the fix the
    /// connection waited for a path and failed with `NoPath` after `pathless_timeout`.
    #[tokio::test]
    async fn a_window_update_nobody_needs_does_not_hold_the_end() {
        let (pa, pb) = tokio::io::duplex(1 << 20);
        let (atx, arx) = mpsc::channel(1);
        let (btx, brx) = mpsc::channel(1);
        atx.send(pa).await.unwrap();
        btx.send(pb).await.unwrap();
        // B's application takes 1 KiB at a time and reads nothing until A ended: B's
        // stream holds the rest.
        let (a_app, mut a_user) = tokio::io::duplex(64 * 1024);
        let (b_app, mut b_user) = tokio::io::duplex(1024);
        let cfg = ConnConfig {
            pathless_timeout: std::time::Duration::from_secs(3600),
            ..Default::default()
        };
        let ta = tokio::spawn(run(a_app, arx, cfg));
        let tb = tokio::spawn(run(b_app, brx, cfg));
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 253) as u8).collect();
        b_user.shutdown().await.unwrap();
        a_user.write_all(&payload).await.unwrap();
        a_user.shutdown().await.unwrap();
        let mut none = Vec::new();
        a_user.read_to_end(&mut none).await.unwrap();
        assert!(none.is_empty());
        let sa = tokio::time::timeout(std::time::Duration::from_secs(20), ta)
            .await
            .expect("A ended")
            .unwrap()
            .unwrap();
        assert_eq!(sa.app_bytes_out, payload.len() as u64);
        drop(atx); // A's path is gone; B keeps its path channel open (more could come)
        let mut got = Vec::new();
        b_user.read_to_end(&mut got).await.unwrap();
        assert!(got == payload, "got {} of {}", got.len(), payload.len());
        let sb = tokio::time::timeout(std::time::Duration::from_secs(20), tb)
            .await
            .expect("B ended at once, not after pathless_timeout (an hour here)")
            .unwrap()
            .expect("B ended Ok");
        assert_eq!(sb.app_bytes_in, payload.len() as u64);
        drop(btx);
    }

    /// Without a new path the connection gives up after `pathless_timeout`, with an error.
    #[tokio::test]
    async fn driver_without_path_fails_in_time() {
        let (app, _user) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel::<tokio::io::DuplexStream>(1);
        let cfg = ConnConfig {
            pathless_timeout: std::time::Duration::from_millis(100),
            ..Default::default()
        };
        let r = run(app, rx, cfg).await;
        drop(tx);
        assert!(matches!(r, Err(ConnError::NoPath)), "{r:?}");
    }

    /// No path and the path channel closed (the relay could not be reached): the
    /// connection fails at once, not after `pathless_timeout` (an hour here).
    #[tokio::test]
    async fn driver_fails_at_once_when_no_path_can_come() {
        let (app, _user) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel::<tokio::io::DuplexStream>(1);
        let cfg = ConnConfig {
            pathless_timeout: std::time::Duration::from_secs(3600),
            ..Default::default()
        };
        drop(tx);
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), run(app, rx, cfg))
            .await
            .expect("failed at once, not after pathless_timeout");
        assert!(matches!(r, Err(ConnError::NoPath)), "{r:?}");
    }

    /// The only path dies after the path channel closed: no wait either.
    #[tokio::test]
    async fn driver_fails_at_once_when_the_last_path_dies_and_none_can_come() {
        let (app, _user) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(1);
        let (x, _y, proxy) = path();
        tx.send(x).await.unwrap();
        drop(tx);
        let cfg = ConnConfig {
            pathless_timeout: std::time::Duration::from_secs(3600),
            ..Default::default()
        };
        let t = tokio::spawn(run(app, rx, cfg));
        proxy.abort();
        drop(_y);
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), t)
            .await
            .expect("failed at once")
            .unwrap();
        assert!(matches!(r, Err(ConnError::NoPath)), "{r:?}");
    }
}
