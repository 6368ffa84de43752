//! A secure layer over a tokio TCP stream: handshake, framed control
//! messages, and the split halves the data path pumps through. The layer is
//! our relay-pinned zs-crypto session (the default) or TLS 1.3 through rustls
//! (`[*.transport] type = "tls"`; zs-crypto's sans-IO [`TlsSession`]), both
//! driven by the same code: one secure byte stream with a channel binding.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex as AsyncMutex;
use zs_crypto::session::{ClientConfig, Event, ServerConfig, Session};
use zs_crypto::tls::TlsSession;
use zs_crypto::SecureSession;

use crate::proto::{chunk_header, ChunkDecoder, Decoder, Msg, MAX_CHUNK};

/// Largest read buffer of a tunnel socket: one read takes up to this much (a
/// record carries up to 64 KiB of plaintext, zs-crypto's default, so a full
/// buffer holds about four records and costs one syscall).
pub(crate) const READ_BUF: usize = 256 * 1024;

/// First read buffer of a data path direction: buffers start here and double
/// (up to [`READ_BUF`]) each time a read fills them, so a bulk transfer
/// reaches 256 KiB reads after a few reads while a connection of small
/// requests keeps 16 KiB (RSS under many connections).
pub(crate) const READ_MIN: usize = 16 * 1024;

/// Most records [`SecureWrite::carry_from`] reads into at once.
const MAX_SLOTS: usize = 8;

/// Doubles `buf` (up to [`READ_BUF`]) when the last read of `n` bytes filled it.
pub(crate) fn grow(buf: &mut Vec<u8>, n: usize) {
    if n == buf.len() && buf.len() < READ_BUF {
        let to = (buf.len() * 2).clamp(READ_MIN, READ_BUF);
        buf.resize(to, 0);
    }
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Names why a TLS handshake with the relay failed, for the log line: a
/// certificate `trusted_root` does not vouch for, or one that does not name
/// `hostname`, is said in those words (rustls's own error follows).
fn tls_refusal(e: io::Error, name: &str) -> io::Error {
    let text = e.to_string();
    let why = if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "the relay's TLS certificate is not signed by [client.transport.tls] trusted_root"
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        "the relay's TLS certificate does not name [client.transport.tls] hostname"
    } else if text.contains("certificate") || text.contains("Certificate") {
        "the relay's TLS certificate is refused"
    } else {
        "TLS handshake with the relay failed"
    };
    io::Error::new(e.kind(), format!("{why} ({name:?}): {text}"))
}

/// The secure layer of one connection.
pub(crate) enum Layer {
    /// Our session (relay key pinned by fingerprint).
    Zs(Box<Session>),
    /// TLS 1.3 (rustls, ring provider): the relay's certificate checked
    /// against `trusted_root` and `hostname`.
    Tls(Box<TlsSession>),
}

impl Layer {
    fn s(&mut self) -> &mut dyn SecureSession {
        match self {
            Layer::Zs(s) => &mut **s,
            Layer::Tls(s) => &mut **s,
        }
    }

    fn is_handshaking(&self) -> bool {
        match self {
            Layer::Zs(s) => s.is_handshaking(),
            Layer::Tls(s) => SecureSession::is_handshaking(&**s),
        }
    }

    /// Whether sealed output may be waiting (TLS: always asked, since
    /// rustls's `wants_write` is not exposed through the session).
    fn has_output(&self) -> bool {
        match self {
            Layer::Zs(s) => s.has_output(),
            Layer::Tls(_) => true,
        }
    }

    fn channel_binding(&self) -> Option<[u8; 32]> {
        match self {
            Layer::Zs(s) => s.channel_binding(),
            Layer::Tls(s) => SecureSession::channel_binding(&**s),
        }
    }
}

/// How a side dials the relay.
#[derive(Clone)]
pub(crate) enum Dialer {
    /// Our session with the relay key pinned.
    Session(Arc<ClientConfig>),
    /// TLS 1.3: the roots to trust and the name the certificate must carry.
    Tls(Arc<rustls::ClientConfig>, String),
}

/// What a relay accepts.
#[derive(Clone)]
pub(crate) struct Acceptor {
    /// Our session (always accepted: the command API and visitors use it).
    pub(crate) session: Arc<ServerConfig>,
    /// TLS 1.3 with the relay's certificate (`[server.transport] type = "tls"`).
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Whether the first three bytes of a connection are a TLS record header
/// (`0x16 0x03 0x0N`: a handshake record of TLS 1.0-1.3's record layer). Our
/// session's first record is also type `0x16`, but its next byte is the low
/// byte of a ClientHello length of 39 to 165 (PROTOCOL.md 2.1-2.2), never 3.
pub(crate) fn looks_like_tls(first: &[u8; 3]) -> bool {
    first[0] == 0x16 && first[1] == 0x03 && first[2] <= 0x04
}

/// An established secure connection.
pub(crate) struct SecureConn {
    tcp: TcpStream,
    session: Layer,
    dec: Decoder,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// The peer's stream ended.
    eof: bool,
}

impl SecureConn {
    /// Client handshake with the relay key pinned in `cfg`.
    pub(crate) async fn connect(
        tcp: TcpStream,
        cfg: Arc<ClientConfig>,
        timeout: Duration,
    ) -> io::Result<SecureConn> {
        let rng = ring::rand::SystemRandom::new();
        let session = Session::client(cfg, &rng, Instant::now()).map_err(err)?;
        Self::handshake(tcp, Layer::Zs(Box::new(session)), timeout, &[]).await
    }

    /// Client handshake through `dialer` (our session or TLS). A TLS
    /// certificate that `trusted_root` does not vouch for, or that does not
    /// name `hostname`, fails with an error saying which.
    pub(crate) async fn dial(
        tcp: TcpStream,
        dialer: &Dialer,
        timeout: Duration,
    ) -> io::Result<SecureConn> {
        match dialer {
            Dialer::Session(cfg) => Self::connect(tcp, cfg.clone(), timeout).await,
            Dialer::Tls(cfg, name) => {
                let s = TlsSession::client(cfg.clone(), name).map_err(err)?;
                Self::handshake(tcp, Layer::Tls(Box::new(s)), timeout, &[])
                    .await
                    .map_err(|e| tls_refusal(e, name))
            }
        }
    }

    /// Server handshake through `acceptor`: with TLS configured, the first
    /// three bytes (read within `timeout`) choose TLS or our session.
    pub(crate) async fn accept_any(
        mut tcp: TcpStream,
        acceptor: &Acceptor,
        timeout: Duration,
    ) -> io::Result<SecureConn> {
        let Some(tls) = &acceptor.tls else {
            return Self::accept(tcp, acceptor.session.clone(), timeout).await;
        };
        let mut first = [0u8; 3];
        tokio::time::timeout(timeout, tcp.read_exact(&mut first))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
        let layer = if looks_like_tls(&first) {
            Layer::Tls(Box::new(TlsSession::server(tls.clone()).map_err(err)?))
        } else {
            let rng = ring::rand::SystemRandom::new();
            let s = Session::server(acceptor.session.clone(), &rng, Instant::now()).map_err(err)?;
            Layer::Zs(Box::new(s))
        };
        Self::handshake(tcp, layer, timeout, &first).await
    }

    /// Server handshake.
    pub(crate) async fn accept(
        tcp: TcpStream,
        cfg: Arc<ServerConfig>,
        timeout: Duration,
    ) -> io::Result<SecureConn> {
        let rng = ring::rand::SystemRandom::new();
        let session = Session::server(cfg, &rng, Instant::now()).map_err(err)?;
        Self::handshake(tcp, Layer::Zs(Box::new(session)), timeout, &[]).await
    }

    /// Runs the handshake of `session` over `tcp`; `prefix` holds bytes
    /// already read from `tcp` (fed first).
    async fn handshake(
        tcp: TcpStream,
        session: Layer,
        timeout: Duration,
        prefix: &[u8],
    ) -> io::Result<Self> {
        let _ = tcp.set_nodelay(true);
        let mut c = SecureConn {
            tcp,
            session,
            dec: Decoder::new(),
            // Small until the connection carries data (pooled ones stay small).
            buf: vec![0; 4096],
            out: Vec::new(),
            eof: false,
        };
        tokio::time::timeout(timeout, async {
            if !prefix.is_empty() {
                c.buf[..prefix.len()].copy_from_slice(prefix);
                c.feed(prefix.len())?;
            }
            c.flush().await?;
            while c.session.is_handshaking() {
                c.read_some().await?;
                c.flush().await?;
            }
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
        c.session.s().shrink();
        Ok(c)
    }

    /// The session's channel binding.
    pub(crate) fn channel_binding(&self) -> [u8; 32] {
        self.session.channel_binding().unwrap_or([0; 32])
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.out.clear();
        self.session.s().write_output(&mut self.out);
        if !self.out.is_empty() {
            self.tcp.write_all(&self.out).await?;
        }
        Ok(())
    }

    /// Feeds the first `n` bytes of `buf` to the session (plaintext goes to
    /// the decoder).
    fn feed(&mut self, n: usize) -> io::Result<()> {
        let dec = &mut self.dec;
        let s = self.session.s();
        s.handle_input_in_place(&mut self.buf[..n], Instant::now(), &mut |d| dec.push(d))
            .map_err(err)?;
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Data(d) => self.dec.push(&d),
                Event::Closed => self.eof = true,
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads once from TCP and feeds the session (plaintext goes to the decoder).
    async fn read_some(&mut self) -> io::Result<()> {
        let n = self.tcp.read(&mut self.buf).await?;
        if n == 0 {
            self.eof = true;
            self.session.s().handle_eof().map_err(err)?;
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.feed(n)
    }

    /// Sends one message.
    pub(crate) async fn send(&mut self, m: &Msg) -> io::Result<()> {
        self.send_raw(&m.to_bytes()).await
    }

    /// Sends already encoded messages (nothing when `frames` is empty).
    pub(crate) async fn send_raw(&mut self, frames: &[u8]) -> io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        self.session.s().send(frames, Instant::now()).map_err(err)?;
        self.flush().await
    }

    /// Receives one message (errors on EOF or a protocol violation).
    pub(crate) async fn recv(&mut self) -> io::Result<Msg> {
        loop {
            if let Some(m) = self
                .dec
                .next_msg()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                return Ok(m);
            }
            if self.eof {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.read_some().await?;
            self.flush().await?;
        }
    }

    /// Orderly close: the session's close record, then the TCP write side
    /// (the peer's `recv` ends with `UnexpectedEof`, not a truncation).
    pub(crate) async fn close(&mut self) -> io::Result<()> {
        self.session.s().close().map_err(err)?;
        self.flush().await?;
        self.tcp.shutdown().await
    }

    /// Leaves the session for a plaintext data connection (`encryption =
    /// "none"`): the TCP stream and the plaintext already received after the
    /// last message. The protocol sends nothing after `Start` until both sides
    /// confirm plaintext (see `pump::carry`), so no record is left half read.
    /// A TLS connection cannot leave its layer (the configuration refuses
    /// `type = "tls"` with `encryption = "none"`): an error.
    pub(crate) fn into_plain(self) -> io::Result<(TcpStream, Vec<u8>)> {
        let SecureConn {
            tcp,
            mut dec,
            session,
            ..
        } = self;
        if let Layer::Tls(_) = session {
            return Err(err(
                "a TLS data connection cannot carry plaintext (encryption = \"none\" needs type = \"tcp\")",
            ));
        }
        Ok((tcp, dec.take_rest()))
    }

    /// Splits for the data path; returns the raw bytes already received after
    /// the last message.
    pub(crate) fn split(self) -> (SecureRead, SecureWrite, Vec<u8>) {
        self.split_as(false)
    }

    /// Splits for a framed data path ([`Msg::StartFramed`]): both halves
    /// carry chunks, [`SecureWrite::shutdown`] sends the end chunk instead of
    /// closing, and [`SecureConn::rejoin`] gives the connection back once
    /// both directions ended. The plaintext already received after the last
    /// message is fed to the read half's chunk decoder (nothing is returned).
    pub(crate) fn split_framed(self) -> (SecureRead, SecureWrite) {
        let (mut r, w, rest) = self.split_as(true);
        r.pending = rest;
        (r, w)
    }

    fn split_as(self, framed: bool) -> (SecureRead, SecureWrite, Vec<u8>) {
        let SecureConn {
            tcp,
            session,
            mut dec,
            mut buf,
            ..
        } = self;
        buf.resize(READ_MIN, 0);
        let (r, w) = tcp.into_split();
        let shared = Arc::new(Shared {
            session: std::sync::Mutex::new(session),
            w: AsyncMutex::new(w),
        });
        (
            SecureRead {
                r,
                s: shared.clone(),
                buf,
                parts: Vec::new(),
                copied: Vec::new(),
                grow_next: false,
                framed: framed.then(ChunkDecoder::new),
                pending: Vec::new(),
                rest: Vec::new(),
                done: false,
                scratch: Vec::new(),
                partial: 0..0,
            },
            SecureWrite {
                s: shared,
                rec: Vec::new(),
                spare: Vec::new(),
                framed,
                ended: false,
            },
            dec.take_rest(),
        )
    }

    /// The connection again, from the two halves of a framed data path
    /// whose directions both ended with their end chunks (the read half saw
    /// the peer's, the write half sent ours): the plaintext the read half
    /// received after the peer's end chunk is the start of the next message.
    /// `None` when either direction did not end cleanly (drop the halves).
    pub(crate) fn rejoin(r: SecureRead, w: SecureWrite) -> Option<SecureConn> {
        if !w.framed || !w.ended || !r.framed.as_ref().is_some_and(ChunkDecoder::ended) {
            return None;
        }
        let SecureRead {
            r: rd,
            s,
            rest,
            mut buf,
            partial,
            ..
        } = r;
        drop(w.s);
        let shared = Arc::into_inner(s)?;
        let tcp = rd.reunite(shared.w.into_inner()).ok()?;
        let mut session = shared.session.into_inner().ok()?;
        let mut dec = Decoder::new();
        dec.push(&rest);
        // The start of the next record, if the last read ended in one: the
        // session keeps it (a partial record only waits for the rest).
        if !partial.is_empty() {
            let d = &mut dec;
            session
                .s()
                .handle_input_in_place(&mut buf[partial], Instant::now(), &mut |p| d.push(p))
                .ok()?;
        }
        session.s().shrink();
        Some(SecureConn {
            tcp,
            session,
            dec,
            // Back to a pooled connection's size.
            buf: vec![0; 4096],
            out: Vec::new(),
            eof: false,
        })
    }
}

struct Shared {
    session: std::sync::Mutex<Layer>,
    /// Held while sealed output is taken from the session and written, so
    /// records reach the wire in sequence order.
    w: AsyncMutex<OwnedWriteHalf>,
}

impl Shared {
    async fn flush(&self) -> io::Result<()> {
        let mut w = self.w.lock().await;
        let mut out = Vec::new();
        self.session
            .lock()
            .map_err(|_| err("poisoned"))?
            .s()
            .write_output(&mut out);
        if !out.is_empty() {
            w.write_all(&out).await?;
        }
        Ok(())
    }
}

/// Receiving half of a split secure connection.
pub(crate) struct SecureRead {
    r: OwnedReadHalf,
    s: Arc<Shared>,
    buf: Vec<u8>,
    /// The plaintext of the last [`SecureRead::read_parts`], in order.
    parts: Vec<Part>,
    /// Plaintext that did not open inside `buf` (a record that straddled two
    /// reads is completed in the session's own buffer): copied here.
    copied: Vec<u8>,
    /// The last read filled `buf`: double it before the next read.
    grow_next: bool,
    /// A framed data path: the chunks' decoder.
    framed: Option<ChunkDecoder>,
    /// Framed: plaintext received before the split, decoded first.
    pending: Vec<u8>,
    /// Framed: plaintext after the peer's end chunk (the next message).
    rest: Vec<u8>,
    /// Framed: the end chunk was returned; every later read is the end.
    done: bool,
    /// Framed: the parts of a read before the headers are taken out.
    scratch: Vec<Part>,
    /// The start of a record the last read ended in, still in `buf`: moved
    /// to its front before the next read, which completes it there.
    partial: std::ops::Range<usize>,
}

/// Where one piece of opened plaintext lies.
#[derive(Debug, Clone)]
enum Part {
    /// In `SecureRead::buf` (opened in place: no copy).
    Buf(std::ops::Range<usize>),
    /// In `SecureRead::copied`.
    Copied(std::ops::Range<usize>),
}

/// The plaintext of one read, as slices in order (see [`SecureRead::read_parts`]).
pub(crate) struct Parts<'a> {
    buf: &'a [u8],
    copied: &'a [u8],
    parts: &'a [Part],
}

impl<'a> Parts<'a> {
    /// Total plaintext bytes.
    pub(crate) fn len(&self) -> usize {
        self.slices().map(<[u8]>::len).sum()
    }

    /// The slices, in order.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.parts.iter().map(|p| match p {
            Part::Buf(r) => &self.buf[r.clone()],
            Part::Copied(r) => &self.copied[r.clone()],
        })
    }
}

impl SecureRead {
    /// Reads and opens records in place: the plaintext is left where it was
    /// decrypted (inside the read buffer, between record headers and tags)
    /// and returned as slices for one vectored write, instead of being copied
    /// out. `Ok(None)` at end of stream.
    pub(crate) async fn read_parts(&mut self) -> io::Result<Option<Parts<'_>>> {
        self.parts.clear();
        self.copied.clear();
        if self.done {
            return Ok(None);
        }
        if std::mem::take(&mut self.grow_next) {
            let n = self.buf.len();
            grow(&mut self.buf, n);
        }
        if !self.pending.is_empty() {
            // Framed: plaintext that came with the start message.
            std::mem::swap(&mut self.copied, &mut self.pending);
            self.parts.push(Part::Copied(0..self.copied.len()));
            if self.unframe()? {
                return Ok(Some(self.view()));
            }
            if self.done {
                return Ok(None);
            }
            self.copied.clear();
        }
        loop {
            // A record the last read ended in is completed where it lies
            // (its start moved to the front), not copied into the session.
            let p = self.partial.len();
            self.buf.copy_within(self.partial.clone(), 0);
            self.partial = 0..0;
            if p == self.buf.len() {
                // A record longer than the buffer: room for the rest (the
                // session refuses a header over its record limit).
                self.buf.resize(2 * p, 0);
            }
            let n = p + self.r.read(&mut self.buf[p..]).await?;
            let full = n == self.buf.len();
            let mut closed = false;
            {
                let mut g = self.s.session.lock().map_err(|_| err("poisoned"))?;
                let s = g.s();
                if n == p {
                    s.handle_eof().map_err(err)?;
                    return Ok(None);
                }
                // Which opened slices lie in `buf`: compared as addresses
                // (plain integers; nothing is dereferenced through them).
                let base = self.buf.as_ptr() as usize;
                let (parts, copied) = (&mut self.parts, &mut self.copied);
                let mut keep = |d: &[u8]| {
                    let at = (d.as_ptr() as usize).wrapping_sub(base);
                    if at < n && d.len() <= n - at {
                        parts.push(Part::Buf(at..at + d.len()));
                    } else {
                        let start = copied.len();
                        copied.extend_from_slice(d);
                        parts.push(Part::Copied(start..copied.len()));
                    }
                };
                let took = s
                    .handle_input_leaving_partial(&mut self.buf[..n], Instant::now(), &mut |d| {
                        keep(d)
                    })
                    .map_err(err)?;
                self.partial = took..n;
                while let Some(ev) = s.poll_event() {
                    match ev {
                        Event::Data(d) => {
                            let start = self.copied.len();
                            self.copied.extend_from_slice(&d);
                            self.parts.push(Part::Copied(start..self.copied.len()));
                        }
                        Event::Closed => closed = true,
                        _ => {}
                    }
                }
            }
            let pending = self
                .s
                .session
                .lock()
                .map_err(|_| err("poisoned"))?
                .has_output();
            if pending {
                self.s.flush().await?;
            }
            if full && self.buf.len() < READ_BUF {
                // The plaintext of this read lies in `buf`: grow it on the
                // next call (see `read_parts`'s start), not now.
                self.grow_next = true;
            }
            self.parts.retain(|p| match p {
                Part::Buf(r) | Part::Copied(r) => !r.is_empty(),
            });
            if self.framed.is_some() && self.unframe()? {
                return Ok(Some(self.view()));
            }
            if self.done {
                return Ok(None);
            }
            if self.framed.is_none() && !self.parts.is_empty() {
                return Ok(Some(self.view()));
            }
            if closed {
                return Ok(None);
            }
            if std::mem::take(&mut self.grow_next) {
                let n = self.buf.len();
                grow(&mut self.buf, n);
            }
        }
    }

    /// The plaintext of the last read, as [`Parts`].
    fn view(&self) -> Parts<'_> {
        Parts {
            buf: &self.buf,
            copied: &self.copied,
            parts: &self.parts,
        }
    }

    /// Framed: takes the chunk headers out of `parts` (what is left names
    /// payload only) and keeps what follows the peer's end chunk in `rest`.
    /// Whether payload is left; `done` is set at the end chunk.
    fn unframe(&mut self) -> io::Result<bool> {
        let Some(dec) = self.framed.as_mut() else {
            return Ok(!self.parts.is_empty());
        };
        std::mem::swap(&mut self.parts, &mut self.scratch);
        self.parts.clear();
        for p in self.scratch.drain(..) {
            let (from, range) = match &p {
                Part::Buf(r) => (&self.buf[..], r.clone()),
                Part::Copied(r) => (&self.copied[..], r.clone()),
            };
            let piece = &from[range.clone()];
            if dec.ended() {
                self.rest.extend_from_slice(piece);
                continue;
            }
            let parts = &mut self.parts;
            let at = range.start;
            let end = dec
                .feed(piece, &mut |r| {
                    let r = at + r.start..at + r.end;
                    parts.push(match p {
                        Part::Buf(_) => Part::Buf(r),
                        Part::Copied(_) => Part::Copied(r),
                    })
                })
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some(n) = end {
                self.rest.extend_from_slice(&piece[n..]);
            }
        }
        self.done = dec.ended();
        Ok(!self.parts.is_empty())
    }

    /// Reads plaintext into `out` (cleared first); `Ok(false)` at end of stream.
    pub(crate) async fn read(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        match self.read_parts().await? {
            Some(parts) => {
                for s in parts.slices() {
                    out.extend_from_slice(s);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Sending half of a split secure connection.
pub(crate) struct SecureWrite {
    s: Arc<Shared>,
    /// [`Self::carry_from`]'s records: the plaintext is read into them and
    /// sealed where it lies.
    rec: Vec<u8>,
    /// The buffer handed back to the session after each write: the session
    /// appends plaintext into it (one copy), seals the records in place, and
    /// `write_output` swaps it out again, so the steady state allocates nothing.
    spare: Vec<u8>,
    /// A framed data path: each write is a chunk, the end is a chunk.
    framed: bool,
    /// Framed: the end chunk was sent.
    ended: bool,
}

impl SecureWrite {
    /// Seals and writes `data`.
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.framed && data.is_empty() {
            return Ok(()); // an empty chunk would be the end
        }
        let mut w = self.s.w.lock().await;
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        {
            let mut g = self.s.session.lock().map_err(|_| err("poisoned"))?;
            let s = g.s();
            if self.framed {
                let now = Instant::now();
                for c in data.chunks(MAX_CHUNK) {
                    s.send(&chunk_header(c.len()), now).map_err(err)?;
                    s.send(c, now).map_err(err)?;
                }
            } else {
                s.send(data, Instant::now()).map_err(err)?;
            }
            // `out` is empty: the session's buffer (the sealed records) is
            // swapped into it and ours, with its capacity, becomes the
            // session's: two buffers take turns.
            s.write_output(&mut out);
        }
        let r = w.write_all(&out).await;
        self.spare = out;
        r
    }

    /// Reads once from `from`, at most `cap` bytes, straight into the
    /// plaintext of the next records (one per `max_record` bytes, laid out
    /// back to back with room for header and tag), seals them where they lie
    /// and writes them: no user-space copy of the plaintext (our session;
    /// TLS reads into a buffer and goes through [`Self::write`]). Framed, the
    /// chunk header goes in front of the plaintext. The number of bytes
    /// read; 0 when `from` ended (nothing is sent).
    pub(crate) async fn carry_from(
        &mut self,
        from: &mut OwnedReadHalf,
        cap: usize,
    ) -> io::Result<usize> {
        let layout = match &*self.s.session.lock().map_err(|_| err("poisoned"))? {
            Layer::Zs(s) => s.data_layout(),
            Layer::Tls(_) => None,
        };
        let Some(l) = layout else {
            let mut buf = std::mem::take(&mut self.rec);
            buf.resize(cap, 0);
            let r = match from.read(&mut buf).await {
                Ok(0) => Ok(0),
                Ok(n) => self.write(&buf[..n]).await.map(|()| n),
                Err(e) => Err(e),
            };
            self.rec = buf;
            return r;
        };
        let pre = if self.framed { 4 } else { 0 };
        let (m, slot) = (l.max_plaintext, l.header + l.max_plaintext + l.tag);
        // At most MAX_SLOTS records per read.
        let plain = (pre + cap).min(MAX_SLOTS * m);
        let slots = plain.div_ceil(m);
        if self.rec.len() < slots * slot {
            self.rec.resize(slots * slot, 0);
        }
        let n = if slots == 1 {
            // tokio's `read` notes a short read as "drained": the next read
            // waits for readiness instead of asking the kernel again.
            from.read(&mut self.rec[l.header + pre..l.header + plain])
                .await?
        } else {
            let mut iov: [io::IoSliceMut<'_>; MAX_SLOTS] =
                std::array::from_fn(|_| io::IoSliceMut::new(&mut []));
            let mut rest = &mut self.rec[..];
            for (i, v) in iov.iter_mut().enumerate().take(slots) {
                let (this, next) = rest.split_at_mut(slot.min(rest.len()));
                rest = next;
                let lo = l.header + if i == 0 { pre } else { 0 };
                let hi = l.header + m.min(plain - i * m);
                *v = io::IoSliceMut::new(&mut this[lo..hi]);
            }
            loop {
                from.readable().await?;
                match from.try_read_vectored(&mut iov[..slots]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        if n == 0 {
            return Ok(0);
        }
        if self.framed {
            self.rec[l.header..l.header + pre].copy_from_slice(&chunk_header(n));
        }
        let total = pre + n;
        let (full, part) = (total / m, total % m);
        let end = full * slot + if part > 0 { l.header + part + l.tag } else { 0 };
        let mut w = self.s.w.lock().await;
        // Output the session holds after sealing record i (records it held
        // before, a key update sealing made) goes before record i: (offset
        // of record i, bytes). Empty, so allocation-free, but at a rekey.
        let mut before: Vec<(usize, Vec<u8>)> = Vec::new();
        {
            let mut g = self.s.session.lock().map_err(|_| err("poisoned"))?;
            let Layer::Zs(s) = &mut *g else {
                return Err(err("the layer changed"));
            };
            let now = Instant::now();
            for (i, r) in self.rec[..end].chunks_mut(slot).enumerate() {
                s.seal_data_in_place(r, now).map_err(err)?;
                if s.has_output() {
                    let mut o = Vec::new();
                    s.write_output(&mut o);
                    before.push((i * slot, o));
                }
            }
        }
        let mut at = 0;
        for (cut, o) in &before {
            w.write_all(&self.rec[at..*cut]).await?;
            w.write_all(o).await?;
            at = *cut;
        }
        w.write_all(&self.rec[at..end]).await?;
        Ok(n)
    }

    /// Seals `bytes` as they are, without a chunk header (tests of peers
    /// that break the framing).
    #[cfg(test)]
    pub(crate) async fn write_raw_for_test(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s
            .session
            .lock()
            .map_err(|_| err("poisoned"))?
            .s()
            .send(bytes, Instant::now())
            .map_err(err)?;
        self.s.flush().await
    }

    /// Orderly close of the sending direction (framed: the end chunk; the
    /// connection stays open for [`SecureConn::rejoin`]).
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        if self.framed {
            if !self.ended {
                self.s
                    .session
                    .lock()
                    .map_err(|_| err("poisoned"))?
                    .s()
                    .send(&chunk_header(0), Instant::now())
                    .map_err(err)?;
                self.ended = true;
            }
            return self.s.flush().await;
        }
        {
            let mut g = self.s.session.lock().map_err(|_| err("poisoned"))?;
            let _ = g.s().close();
        }
        self.s.flush().await?;
        self.s.w.lock().await.shutdown().await
    }
}

fn pem_err(file: &std::path::Path, key: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{key} {}: {e}", file.display()),
    )
}

/// Every certificate of PEM file `file` (`key` names the config key in errors).
fn pem_certs(
    file: &std::path::Path,
    key: &str,
) -> io::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(file)
        .map_err(|e| pem_err(file, key, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(file, key, e))?;
    if certs.is_empty() {
        return Err(pem_err(file, key, "expected at least one PEM CERTIFICATE"));
    }
    Ok(certs)
}

/// The relay's TLS 1.3 configuration from `[server.transport.tls]` `cert`
/// and `key` (PEM).
pub(crate) fn load_server_tls(
    t: &crate::config::ServerTls,
) -> io::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    let chain = pem_certs(&t.cert, "[server.transport.tls] cert")?;
    let kk = "[server.transport.tls] key";
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| pem_err(&t.key, kk, e))?;
    zs_crypto::tls::server_config(chain, key)
        .map_err(|e| pem_err(&t.cert, "[server.transport.tls]", e))
}

/// The agent's TLS 1.3 configuration from `[client.transport.tls]`
/// `trusted_root` (PEM: the only roots trusted).
pub(crate) fn load_client_tls(
    t: &crate::config::ClientTls,
) -> io::Result<Arc<rustls::ClientConfig>> {
    let k = "[client.transport.tls] trusted_root";
    let roots = pem_certs(&t.trusted_root, k)?;
    zs_crypto::tls::client_config(&roots).map_err(|e| pem_err(&t.trusted_root, k, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our session's first bytes (every identity length and suite list a
    /// client may send) never look like TLS, and a rustls ClientHello does:
    /// the relay's choice between the two cannot go wrong.
    #[test]
    fn the_first_three_bytes_tell_tls_from_our_session() {
        let id = zs_crypto::session::ServerIdentity::from_seed(&[9; 32]).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let mut ours = Vec::new();
        let cfg = Arc::new(ClientConfig::pinned(id.fingerprint()));
        let mut s = Session::client(cfg, &rng, Instant::now()).unwrap();
        s.write_output(&mut ours);
        let first: [u8; 3] = ours[..3].try_into().unwrap();
        // PROTOCOL.md 5.1: `16 | length 39..=165 (u32 LE)`.
        assert_eq!(first[0], 0x16, "our handshake record type");
        assert!(
            (39..=165).contains(&first[1]) && first[2] == 0,
            "{first:02x?}"
        );
        assert!(!looks_like_tls(&first), "{first:02x?}");
        // Every possible ClientHello length of ours (38..=255: a u32 LE
        // length whose low byte comes second) is told apart.
        for len in 38u32..=255 {
            let b = len.to_le_bytes();
            assert!(!looks_like_tls(&[0x16, b[0], b[1]]), "length {len}");
        }
        let ck = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).unwrap();
        let c = zs_crypto::tls::client_config(&[ck.cert.der().clone()]).unwrap();
        let mut t = TlsSession::client(c, "relay.test").unwrap();
        let mut hello = Vec::new();
        SecureSession::write_output(&mut t, &mut hello);
        let first: [u8; 3] = hello[..3].try_into().unwrap();
        assert_eq!(first, [0x16, 0x03, 0x01], "PROTOCOL.md 5.1's example");
        assert!(looks_like_tls(&first), "{first:02x?}");
    }
}
