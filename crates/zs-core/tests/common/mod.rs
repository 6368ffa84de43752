//! Tools for the attack tests in `hostile.rs`: a process RSS watchdog, a raw
//! attacker that speaks the protocol frame by frame (and never acknowledges
//! unless told to), hand-built LZ4 bombs, a background honest caller and a
//! TCP proxy that can inject bytes into a link. Also the setup the
//! loopback tests share (security provider, epoll backend, client options).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use zs_core::{Client, Options, Reconnect};
use zs_crypto::{
    ClientConfig, SecureSession, SecurityProvider, ServerConfig, ServerIdentity, SuiteId,
    ZsSecurity,
};
use zs_wire::{DataFrame, Frame, FrameCodec, FrameKind, Text};

pub const MIB: u64 = 1 << 20;

// ---- shared setup -------------------------------------------------------------

/// A fresh server identity, and a client pinned to it (AES-256-GCM only).
pub fn provider() -> Arc<dyn SecurityProvider> {
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = ServerIdentity::generate(&rng).unwrap();
    let mut c = ClientConfig::pinned(id.fingerprint());
    c.suites = vec![SuiteId::Aes256Gcm];
    Arc::new(ZsSecurity::new(
        Some(Arc::new(c)),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

/// An epoll backend with `loops` event loops.
#[cfg(target_os = "linux")]
pub fn epoll(loops: usize) -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops,
            ..zs_io::Config::default()
        })
        .unwrap(),
    )
}

/// Client options that reconnect within milliseconds (giving up after 20 s).
pub fn fast_reconnect() -> Options {
    Options {
        reconnect: Reconnect {
            initial: Duration::from_millis(2),
            max: Duration::from_millis(40),
            give_up: Duration::from_secs(20),
        },
        ..Options::client()
    }
}

// ---- serialization ----------------------------------------------------------

static LOCK: RwLock<()> = RwLock::new(());

/// Held by tests that measure process RSS (or count process-wide panics): no
/// other test of this binary runs meanwhile.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    ensure_sampler();
    LOCK.write().unwrap_or_else(|p| p.into_inner())
}

/// Held by the other tests: they may run together, never during an
/// exclusive one.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    ensure_sampler();
    LOCK.read().unwrap_or_else(|p| p.into_inner())
}

// ---- RSS watchdog ------------------------------------------------------------

/// Resident set size of this process in bytes (`VmRSS` of /proc/self/status).
pub fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Beyond the budget by this much, the watchdog ends the whole process: the
/// server may be allocating inside one callback that no dropped socket stops
/// (and a test that failed may leave it running), and the machine is shared.
const HARD_EXTRA: u64 = 768 * MIB;
/// Whatever runs, this process never grows past this RSS.
const CEILING: u64 = 3 << 30;

struct WatchInner {
    name: String,
    base: u64,
    budget: u64,
    peak: AtomicU64,
    tripped: AtomicBool,
}

/// The watch being sampled.
static ACTIVE: Mutex<Option<Arc<WatchInner>>> = Mutex::new(None);
/// RSS at which the sampler ends the process (besides [`CEILING`]).
static HARD: AtomicU64 = AtomicU64::new(u64::MAX);
static SAMPLER: OnceLock<()> = OnceLock::new();

/// Starts the process-wide sampler once: every 20 ms it reads RSS, updates
/// the active [`Watch`], and ends the process past the hard limit.
pub fn ensure_sampler() {
    SAMPLER.get_or_init(|| {
        std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(|| loop {
                let now = rss();
                let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let name = active.as_ref().map_or("-", |w| w.name.as_str()).to_owned();
                if let Some(w) = active {
                    let growth = now.saturating_sub(w.base);
                    w.peak.fetch_max(growth, Ordering::AcqRel);
                    if growth > w.budget && !w.tripped.swap(true, Ordering::AcqRel) {
                        eprintln!(
                            "[{}] RSS grew by {} MiB, over the budget of {} MiB: stopping the attack",
                            w.name,
                            growth / MIB,
                            w.budget / MIB
                        );
                    }
                }
                if now > CEILING.min(HARD.load(Ordering::Acquire)) {
                    eprintln!(
                        "[{name}] process RSS {} MiB keeps growing after the attack was stopped: \
                         ending the test process before it exhausts the machine",
                        now / MIB
                    );
                    std::process::exit(3);
                }
                std::thread::sleep(Duration::from_millis(20));
            })
            .unwrap();
    });
}

/// Samples RSS (every 20 ms) from `start` to `finish`; trips when it grows
/// past `budget` over the baseline (the attack must then stop at once). The
/// process ends if it grows on to `budget + 768 MiB`, or past 3 GiB.
pub struct Watch {
    inner: Arc<WatchInner>,
}

impl Watch {
    pub fn start(name: &str, budget: u64) -> Watch {
        ensure_sampler();
        let inner = Arc::new(WatchInner {
            name: name.to_owned(),
            base: rss(),
            budget,
            peak: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
        });
        HARD.store(inner.base + budget + HARD_EXTRA, Ordering::Release);
        *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(inner.clone());
        Watch { inner }
    }

    /// The server grew past the budget: stop attacking.
    pub fn tripped(&self) -> bool {
        self.inner.tripped.load(Ordering::Acquire)
    }

    /// Fails the test now if the budget was exceeded (the attacker's socket,
    /// dropped while unwinding, ends the attack).
    pub fn check(&self) {
        assert!(
            !self.tripped(),
            "{}: the process RSS grew by {} MiB during the attack, over the budget of {} MiB",
            self.inner.name,
            self.peak() / MIB,
            self.inner.budget / MIB
        );
    }

    /// A handle for attack threads.
    pub fn handle(&self) -> WatchHandle {
        WatchHandle(self.inner.clone())
    }

    /// Largest growth over the baseline so far.
    pub fn peak(&self) -> u64 {
        self.inner.peak.load(Ordering::Acquire)
    }

    /// Stops watching and asserts the peak stayed within the budget; returns
    /// the peak growth.
    pub fn finish(self) -> u64 {
        // One last sample, after the attack.
        let growth = rss().saturating_sub(self.inner.base);
        self.inner.peak.fetch_max(growth, Ordering::AcqRel);
        let peak = self.peak();
        eprintln!(
            "[{}] peak RSS growth {} MiB (budget {} MiB)",
            self.inner.name,
            peak / MIB,
            self.inner.budget / MIB
        );
        assert!(
            !self.tripped() && peak <= self.inner.budget,
            "{}: the process RSS grew by {} MiB during the attack, over the budget of {} MiB",
            self.inner.name,
            peak / MIB,
            self.inner.budget / MIB
        );
        peak
    }
}

/// [`Watch::tripped`] for other threads.
#[derive(Clone)]
pub struct WatchHandle(Arc<WatchInner>);

impl WatchHandle {
    pub fn tripped(&self) -> bool {
        self.0.tripped.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
        if active.as_ref().is_some_and(|w| Arc::ptr_eq(w, &self.inner)) {
            *active = None;
            // A tripped attack may still be running in the server: its hard
            // limit stays.
            if !self.tripped() {
                HARD.store(u64::MAX, Ordering::Release);
            }
        }
    }
}

// ---- raw attacker ----------------------------------------------------------------

/// What the attacker received, without the bulky payloads.
#[derive(Debug, Clone)]
pub struct Got {
    pub kind: FrameKind,
    /// Request id answered (answers, errors, controls), 0 otherwise.
    pub id: u64,
    /// Error code (Error frames).
    pub code: u32,
    /// Error message or control name.
    pub text: String,
    /// Payload length (text or DataFrame encoding).
    pub len: usize,
    /// The StableIO record that carried it.
    pub seq: Option<u64>,
}

impl Got {
    fn of(f: &Frame, seq: Option<u64>) -> Got {
        let mut g = Got {
            kind: f.kind(),
            id: 0,
            code: 0,
            text: String::new(),
            len: 0,
            seq,
        };
        match f {
            Frame::ConsoleResponse { id, text } => {
                g.id = *id;
                g.len = text.len();
            }
            Frame::StreamResponse { id, data } => {
                g.id = *id;
                g.len = data.encoded_len();
            }
            Frame::Error { id, code, message } => {
                g.id = *id;
                g.code = *code;
                g.text = message.as_str().to_owned();
            }
            Frame::Control { id, cmd, .. } => {
                g.id = *id;
                g.text = cmd.as_str().to_owned();
            }
            Frame::EchoReply { id, .. } | Frame::BigStreamAck { id, .. } => g.id = *id,
            Frame::SeqAck { seq } => g.id = *seq,
            Frame::SeqResend { to, .. } => g.id = *to,
            _ => {}
        }
        g
    }

    pub fn is_answer(&self) -> bool {
        matches!(
            self.kind,
            FrameKind::ConsoleResponse | FrameKind::StreamResponse | FrameKind::Error
        )
    }
}

/// A client that speaks the protocol frame by frame on a non-blocking socket:
/// it sends whatever it is told (link frames, records, hand-made bytes) and
/// reports what comes back, and never acknowledges a StableIO record unless
/// told to.
pub struct Raw {
    pub sock: TcpStream,
    tls: Box<dyn SecureSession>,
    enc: FrameCodec,
    dec: FrameCodec,
    wire: zs_wire::Config,
    plain: BytesMut,
    out: Vec<u8>,
    out_pos: usize,
    pub inbox: VecDeque<Got>,
    pub closed: Option<String>,
    /// Read and drop what arrives without decrypting (the stream is then
    /// undecodable for good).
    pub discard: bool,
    /// Our next StableIO record number.
    pub next_seq: u64,
    /// The highest StableIO record received.
    pub got_seq: u64,
    pub bytes_read: u64,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and completes the secure handshake (blocking, 10 s at most).
    pub fn connect(addr: SocketAddr, provider: &Arc<dyn SecurityProvider>) -> Raw {
        let mut sock = TcpStream::connect(addr).expect("attacker connect");
        sock.set_nodelay(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut tls = provider.new_client(Instant::now()).unwrap();
        let mut plain = BytesMut::new();
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 64 * 1024];
        let mut established = false;
        while !established {
            assert!(Instant::now() < end, "attacker handshake timed out");
            let mut out = Vec::new();
            tls.write_output(&mut out);
            if !out.is_empty() {
                sock.write_all(&out).expect("attacker handshake write");
            }
            match sock.read(&mut buf) {
                Ok(0) => panic!("the server closed during the attacker's handshake"),
                Ok(n) => {
                    tls.handle_input(&buf[..n], Instant::now())
                        .expect("attacker handshake");
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => panic!("attacker handshake read: {e}"),
            }
            while let Some(ev) = tls.poll_event() {
                match ev {
                    zs_crypto::Event::HandshakeComplete { .. } => established = true,
                    zs_crypto::Event::Data(d) => plain.extend_from_slice(&d),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        tls.write_output(&mut out);
        sock.write_all(&out).expect("attacker finished write");
        sock.set_nonblocking(true).unwrap();
        let wire = zs_wire::Config::default();
        let mut raw = Raw {
            sock,
            tls,
            enc: FrameCodec::new(wire),
            dec: FrameCodec::new(wire),
            wire,
            plain,
            out: Vec::new(),
            out_pos: 0,
            inbox: VecDeque::new(),
            closed: None,
            discard: false,
            next_seq: 1,
            got_seq: 0,
            bytes_read: 0,
            buf,
        };
        raw.decode();
        raw
    }

    /// Encrypts already encoded frames (plaintext) for sending.
    pub fn queue_plain(&mut self, plain: &[u8]) {
        // In slices, so that the ciphertext of a large frame is written out
        // while the next slice is sealed (bounded attacker memory).
        for chunk in plain.chunks(1 << 20) {
            self.tls.send(chunk, Instant::now()).expect("attacker send");
            self.take_output();
            if self.out.len() - self.out_pos > 4 << 20 {
                self.pump_until(Duration::from_secs(20), |r| {
                    r.out.len() - r.out_pos < 1 << 20
                });
            }
        }
    }

    pub fn encode(&mut self, f: &Frame) -> Bytes {
        let mut b = BytesMut::new();
        self.enc.encode(f, &mut b).expect("encode");
        b.freeze()
    }

    /// Queues a frame as is (unnumbered).
    pub fn queue(&mut self, f: &Frame) {
        let b = self.encode(f);
        self.queue_plain(&b);
    }

    /// Queues a frame as our next StableIO record.
    pub fn queue_record(&mut self, f: &Frame) {
        let payload = self.encode(f);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue(&Frame::SeqData { seq, payload });
    }

    /// Acknowledges every StableIO record received so far.
    pub fn ack(&mut self) {
        let seq = self.got_seq;
        self.queue(&Frame::SeqAck { seq });
    }

    fn take_output(&mut self) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        self.tls.write_output(&mut self.out);
    }

    /// Bytes queued and not yet written to the socket.
    pub fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what it can and reads what came, once; true if anything moved.
    pub fn step(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let mut moved = false;
        if self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(n) => {
                    self.out_pos += n;
                    moved |= n > 0;
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => {
                    self.closed = Some(format!("write: {e}"));
                    return true;
                }
            }
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
            }
        }
        match self.sock.read(&mut self.buf) {
            Ok(0) => {
                self.closed = Some("end of stream".into());
                moved = true;
            }
            Ok(n) => {
                moved = true;
                self.bytes_read += n as u64;
                if !self.discard {
                    let now = Instant::now();
                    if let Err(e) = self.tls.handle_input(&self.buf[..n], now) {
                        self.closed = Some(format!("record layer: {e}"));
                        return true;
                    }
                    while let Some(ev) = self.tls.poll_event() {
                        match ev {
                            zs_crypto::Event::Data(d) => self.plain.extend_from_slice(&d),
                            zs_crypto::Event::Closed => {
                                self.closed = Some("Close record".into());
                            }
                            _ => {}
                        }
                    }
                    self.decode();
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                self.closed = Some(format!("read: {e}"));
                moved = true;
            }
        }
        moved
    }

    fn decode(&mut self) {
        loop {
            match self.dec.decode(&mut self.plain) {
                Ok(Some(Frame::SeqData { seq, payload })) => {
                    self.got_seq = self.got_seq.max(seq);
                    match Frame::decode(&payload, &self.wire) {
                        Ok(inner) => self.inbox.push_back(Got::of(&inner, Some(seq))),
                        Err(e) => panic!("undecodable record {seq} from the server: {e}"),
                    }
                }
                Ok(Some(f)) => self.inbox.push_back(Got::of(&f, None)),
                Ok(None) => return,
                Err(e) => panic!("undecodable frame from the server: {e}"),
            }
        }
    }

    /// Pumps for `d` (or until closed).
    pub fn pump(&mut self, d: Duration) {
        self.pump_until(d, |_| false);
    }

    /// Pumps until `done` holds, the connection closed, or `limit` passed;
    /// returns `done`'s last value.
    pub fn pump_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Raw) -> bool) -> bool {
        let end = Instant::now() + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.closed.is_some() || Instant::now() >= end {
                return false;
            }
            if !self.step() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Writes everything queued (false if that did not happen within `limit`).
    pub fn flush(&mut self, limit: Duration) -> bool {
        self.pump_until(limit, |r| r.unsent() == 0)
    }

    /// Waits for a received frame matching `pred` (taken out of the inbox).
    pub fn wait_for(&mut self, limit: Duration, mut pred: impl FnMut(&Got) -> bool) -> Option<Got> {
        let mut found = None;
        self.pump_until(limit, |r| {
            if let Some(i) = r.inbox.iter().position(&mut pred) {
                found = r.inbox.remove(i);
                true
            } else {
                false
            }
        });
        if found.is_none() {
            // Frames that arrived with the end of stream.
            if let Some(i) = self.inbox.iter().position(&mut pred) {
                found = self.inbox.remove(i);
            }
        }
        found
    }

    /// Waits until the server ended the connection.
    pub fn wait_closed(&mut self, limit: Duration) -> bool {
        self.pump_until(limit, |r| r.closed.is_some())
    }

    /// Asks for StableIO (the first frame after the handshake) and waits for
    /// the grant.
    pub fn stable(&mut self) {
        self.queue(&control(0, "__@stable", DataFrame::new()));
        let g = self
            .wait_for(Duration::from_secs(5), |g| g.kind == FrameKind::Control)
            .unwrap_or_else(|| panic!("no StableIO grant (closed: {:?})", self.closed));
        assert_eq!(g.text, "__@stable");
    }

    /// Answers received so far (taken out of the inbox), by request id.
    pub fn take_answers(&mut self) -> Vec<Got> {
        let (answers, rest): (Vec<Got>, Vec<Got>) = self.inbox.drain(..).partition(Got::is_answer);
        self.inbox = rest.into();
        answers
    }
}

pub fn control(id: u64, cmd: &str, data: DataFrame) -> Frame {
    Frame::Control {
        id,
        cmd: Text::from(cmd),
        data,
    }
}

pub fn console(id: u64, cmd: &str, text: &str) -> Frame {
    Frame::Console {
        id,
        cmd: Text::from(cmd),
        text: Text::from(text),
    }
}

pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// ---- hand-made frames --------------------------------------------------------------

pub fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub fn name(s: &str, out: &mut Vec<u8>) {
    varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// A frame: version, kind byte (bit 7 = compressed), varint length, body.
pub fn frame(kind: FrameKind, compressed: bool, body: &[u8]) -> Vec<u8> {
    let mut f = vec![
        zs_wire::VERSION,
        kind.code() | if compressed { 0x80 } else { 0 },
    ];
    varint(body.len() as u64, &mut f);
    f.extend_from_slice(body);
    f
}

fn lz4_len(mut n: usize, out: &mut Vec<u8>) {
    while n >= 255 {
        out.push(255);
        n -= 255;
    }
    out.push(n as u8);
}

/// One LZ4 block that expands to `prefix ++ unit × reps ++ suffix`: the
/// prefix and one unit as literals, one overlapping match for the other
/// units, the suffix (at least 5 bytes) as final literals. About 1 byte per
/// 255 of output: a 16 MiB run costs ~66 KB.
pub fn lz4_run(prefix: &[u8], unit: &[u8], reps: usize, suffix: &[u8]) -> Vec<u8> {
    assert!(suffix.len() >= 5 && reps >= 2 && !unit.is_empty());
    let lit: Vec<u8> = prefix.iter().chain(unit).copied().collect();
    let ml = unit.len() * (reps - 1);
    assert!(ml >= 4);
    let mut out = Vec::with_capacity(ml / 255 + lit.len() + 64);
    let tok_lit = lit.len().min(15) as u8;
    let tok_ml = (ml - 4).min(15) as u8;
    out.push(tok_lit << 4 | tok_ml);
    if lit.len() >= 15 {
        lz4_len(lit.len() - 15, &mut out);
    }
    out.extend_from_slice(&lit);
    out.extend_from_slice(&(unit.len() as u16).to_le_bytes());
    if ml - 4 >= 15 {
        lz4_len(ml - 4 - 15, &mut out);
    }
    out.push((suffix.len().min(15) as u8) << 4);
    if suffix.len() >= 15 {
        lz4_len(suffix.len() - 15, &mut out);
    }
    out.extend_from_slice(suffix);
    out
}

/// A compressed frame whose body expands to `prefix ++ unit × reps ++ suffix`.
pub fn bomb(kind: FrameKind, prefix: &[u8], unit: &[u8], reps: usize, suffix: &[u8]) -> Vec<u8> {
    let raw_len = prefix.len() + unit.len() * reps + suffix.len();
    let mut body = Vec::new();
    varint(raw_len as u64, &mut body);
    body.extend_from_slice(&lz4_run(prefix, unit, reps, suffix));
    frame(kind, true, &body)
}

/// A non-final BatchStream stage `id` for `cmd` whose DataFrame is one bytes
/// value of `n` zeros, compressed (~n/255 bytes on the wire).
pub fn zero_stage(id: u64, cmd: &str, n: usize) -> Vec<u8> {
    let mut prefix = Vec::new();
    varint(id, &mut prefix);
    name(cmd, &mut prefix);
    prefix.push(0); // flags: not last
    prefix.push(1); // DataFrame: 1 value
    prefix.push(0x0d); // bytes
    varint(n as u64, &mut prefix);
    bomb(FrameKind::BatchStream, &prefix, &[0], n - 5, &[0; 5])
}

/// The body prefix of Stream request `id` for `cmd` carrying one JSON value
/// of `json_len` bytes.
fn json_prefix(id: u64, cmd: &str, json_len: usize) -> Vec<u8> {
    let mut prefix = Vec::new();
    varint(id, &mut prefix);
    name(cmd, &mut prefix);
    prefix.push(1); // DataFrame: 1 value
    prefix.push(0x10); // json
    varint(json_len as u64, &mut prefix);
    prefix
}

/// Stream request `id` for `cmd` with one JSON value `[0,0,…,0]` of
/// `elements` elements, uncompressed (2 bytes per element).
pub fn json_bomb_plain(id: u64, cmd: &str, elements: usize) -> Vec<u8> {
    let json_len = 2 * elements + 1;
    let mut body = json_prefix(id, cmd, json_len);
    body.reserve(json_len);
    body.push(b'[');
    for _ in 0..elements - 1 {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]");
    frame(FrameKind::Stream, false, &body)
}

/// The same request, compressed (~66 KB for 8 M elements).
pub fn json_bomb_lz4(id: u64, cmd: &str, elements: usize) -> Vec<u8> {
    let json_len = 2 * elements + 1;
    let mut prefix = json_prefix(id, cmd, json_len);
    prefix.push(b'[');
    bomb(FrameKind::Stream, &prefix, b"0,", elements - 3, b"0,0,0]")
}

// ---- honest caller -----------------------------------------------------------------

/// The outcome of an honest client's background calls.
#[derive(Debug)]
pub struct HonestReport {
    pub ok: u64,
    pub failures: Vec<String>,
    pub slowest: Duration,
}

/// Calls `echo` on a client every `period` in a background thread, each call
/// with a 5 s timeout, until stopped.
pub struct Honest {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Client, HonestReport)>>,
}

impl Honest {
    pub fn start(client: Client, period: Duration) -> Honest {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut r = HonestReport {
                ok: 0,
                failures: Vec::new(),
                slowest: Duration::ZERO,
            };
            let mut i = 0u64;
            while !s.load(Ordering::Acquire) {
                i += 1;
                let text = format!("honest {i}");
                let t0 = Instant::now();
                match client
                    .call_timeout("echo", &text, Some(Duration::from_secs(5)))
                    .wait()
                {
                    Ok(v) if v == text => r.ok += 1,
                    Ok(v) => r.failures.push(format!("call {i}: wrong answer {v:?}")),
                    Err(e) => r.failures.push(format!("call {i}: {e}")),
                }
                r.slowest = r.slowest.max(t0.elapsed());
                std::thread::sleep(period);
            }
            (client, r)
        });
        Honest {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops, asserts every call succeeded (at least one), and returns the
    /// client.
    pub fn finish(mut self, what: &str) -> Client {
        self.stop.store(true, Ordering::Release);
        let (client, r) = self.thread.take().unwrap().join().unwrap();
        eprintln!(
            "[{what}] honest client: {} calls ok, slowest {:?}",
            r.ok, r.slowest
        );
        assert!(
            r.failures.is_empty(),
            "{what}: an honest client's calls failed during the attack: {:?}",
            r.failures
        );
        assert!(r.ok > 0, "{what}: the honest client made no call");
        client
    }
}

impl Drop for Honest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

// ---- TCP proxy ------------------------------------------------------------------------

/// A TCP proxy in front of a server: pumps bytes both ways for every
/// connection, and on [`Proxy::inject`] writes the given bytes into the
/// current connection towards the server (between two reads from the
/// client, i.e. at a record boundary when the link is idle).
pub struct Proxy {
    pub addr: SocketAddr,
    inject: Arc<Mutex<Option<Vec<u8>>>>,
    pub connections: Arc<AtomicUsize>,
    pub injected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let inject: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let connections = Arc::new(AtomicUsize::new(0));
        let injected = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (inj, n, done, st) = (
            inject.clone(),
            connections.clone(),
            injected.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                let client = match l.accept() {
                    Ok((c, _)) => c,
                    Err(e) if is_timeout(&e) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(_) => return,
                };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                n.fetch_add(1, Ordering::AcqRel);
                client.set_nonblocking(false).unwrap();
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (inj, done, st2) = (inj.clone(), done.clone(), st.clone());
                // client -> server, with injection
                std::thread::spawn(move || {
                    let (mut c, mut s) = (client, server);
                    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        if st2.load(Ordering::Acquire) {
                            break;
                        }
                        if let Some(bytes) = inj.lock().unwrap().take() {
                            if s.write_all(&bytes).is_err() {
                                break;
                            }
                            done.fetch_add(1, Ordering::AcqRel);
                        }
                        match c.read(&mut buf) {
                            Ok(0) => break,
                            Ok(k) => {
                                if s.write_all(&buf[..k]).is_err() {
                                    break;
                                }
                            }
                            Err(e) if is_timeout(&e) => {}
                            Err(_) => break,
                        }
                    }
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                });
                // server -> client
                std::thread::spawn(move || {
                    let (mut s, mut c) = (s2, c2);
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                if c.write_all(&buf[..k]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy {
            addr,
            inject,
            connections,
            injected,
            stop,
        }
    }

    /// Writes `bytes` into the current link towards the server.
    pub fn inject(&self, bytes: Vec<u8>) {
        *self.inject.lock().unwrap() = Some(bytes);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Polls `cond` every 5 ms for up to `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
