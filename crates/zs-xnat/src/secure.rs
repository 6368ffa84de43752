//! A zs-crypto session over a tokio TCP stream: handshake, framed control
//! messages, and the split halves the data path pumps through.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex as AsyncMutex;
use zs_crypto::session::{ClientConfig, Event, ServerConfig, Session};

use crate::proto::{Decoder, Msg};

/// Largest read buffer of a tunnel socket: one read takes up to this much (a
/// record carries up to 64 KiB of plaintext, zs-crypto's default, so a full
/// buffer holds about four records and costs one syscall).
pub(crate) const READ_BUF: usize = 256 * 1024;

/// First read buffer of a data path direction: buffers start here and double
/// (up to [`READ_BUF`]) each time a read fills them, so a bulk transfer
/// reaches 256 KiB reads after a few reads while a connection of small
/// requests keeps 16 KiB (RSS under many connections).
pub(crate) const READ_MIN: usize = 16 * 1024;

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

/// An established secure connection.
pub(crate) struct SecureConn {
    tcp: TcpStream,
    session: Box<Session>,
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
        Self::handshake(tcp, session, timeout).await
    }

    /// Server handshake.
    pub(crate) async fn accept(
        tcp: TcpStream,
        cfg: Arc<ServerConfig>,
        timeout: Duration,
    ) -> io::Result<SecureConn> {
        let rng = ring::rand::SystemRandom::new();
        let session = Session::server(cfg, &rng, Instant::now()).map_err(err)?;
        Self::handshake(tcp, session, timeout).await
    }

    async fn handshake(tcp: TcpStream, session: Session, timeout: Duration) -> io::Result<Self> {
        let _ = tcp.set_nodelay(true);
        let mut c = SecureConn {
            tcp,
            session: Box::new(session),
            dec: Decoder::new(),
            // Small until the connection carries data (pooled ones stay small).
            buf: vec![0; 4096],
            out: Vec::new(),
            eof: false,
        };
        tokio::time::timeout(timeout, async {
            c.flush().await?;
            while c.session.is_handshaking() {
                c.read_some().await?;
                c.flush().await?;
            }
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
        c.session.shrink();
        Ok(c)
    }

    /// The session's channel binding.
    pub(crate) fn channel_binding(&self) -> [u8; 32] {
        self.session.channel_binding().unwrap_or([0; 32])
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.out.clear();
        self.session.write_output(&mut self.out);
        if !self.out.is_empty() {
            self.tcp.write_all(&self.out).await?;
        }
        Ok(())
    }

    /// Reads once from TCP and feeds the session (plaintext goes to the decoder).
    async fn read_some(&mut self) -> io::Result<()> {
        let n = self.tcp.read(&mut self.buf).await?;
        if n == 0 {
            self.eof = true;
            self.session.handle_eof().map_err(err)?;
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let dec = &mut self.dec;
        self.session
            .handle_input_in_place(&mut self.buf[..n], Instant::now(), &mut |d| dec.push(d))
            .map_err(err)?;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Data(d) => self.dec.push(&d),
                Event::Closed => self.eof = true,
                _ => {}
            }
        }
        Ok(())
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
        self.session.send(frames, Instant::now()).map_err(err)?;
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

    /// Leaves the session for a plaintext data connection (`encryption =
    /// "none"`): the TCP stream and the plaintext already received after the
    /// last message. The protocol sends nothing after `Start` until both sides
    /// confirm plaintext (see `pump::carry`), so no record is left half read.
    pub(crate) fn into_plain(self) -> (TcpStream, Vec<u8>) {
        let SecureConn { tcp, mut dec, .. } = self;
        (tcp, dec.take_rest())
    }

    /// Splits for the data path; returns the raw bytes already received after
    /// the last message.
    pub(crate) fn split(self) -> (SecureRead, SecureWrite, Vec<u8>) {
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
            },
            SecureWrite {
                s: shared,
                spare: Vec::new(),
            },
            dec.take_rest(),
        )
    }
}

struct Shared {
    session: std::sync::Mutex<Box<Session>>,
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
        if std::mem::take(&mut self.grow_next) {
            let n = self.buf.len();
            grow(&mut self.buf, n);
        }
        loop {
            let n = self.r.read(&mut self.buf).await?;
            let full = n == self.buf.len();
            let mut closed = false;
            {
                let mut s = self.s.session.lock().map_err(|_| err("poisoned"))?;
                if n == 0 {
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
                s.handle_input_in_place(&mut self.buf[..n], Instant::now(), &mut |d| keep(d))
                    .map_err(err)?;
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
            if !self.parts.is_empty() {
                return Ok(Some(Parts {
                    buf: &self.buf,
                    copied: &self.copied,
                    parts: &self.parts,
                }));
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

    /// Reads plaintext into `out` (cleared first); `Ok(false)` at end of stream.
    pub(crate) async fn read(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        loop {
            let n = self.r.read(&mut self.buf).await?;
            let mut closed = false;
            {
                let mut s = self.s.session.lock().map_err(|_| err("poisoned"))?;
                if n == 0 {
                    s.handle_eof().map_err(err)?;
                    return Ok(false);
                }
                s.handle_input_in_place(&mut self.buf[..n], Instant::now(), &mut |d| {
                    out.extend_from_slice(d)
                })
                .map_err(err)?;
                while let Some(ev) = s.poll_event() {
                    match ev {
                        Event::Data(d) => out.extend_from_slice(&d),
                        Event::Closed => closed = true,
                        _ => {}
                    }
                }
            }
            // Key updates or close acknowledgements may need an answer.
            let pending = self
                .s
                .session
                .lock()
                .map_err(|_| err("poisoned"))?
                .has_output();
            if pending {
                self.s.flush().await?;
            }
            if !out.is_empty() {
                return Ok(true);
            }
            if closed {
                return Ok(false);
            }
        }
    }
}

/// Sending half of a split secure connection.
pub(crate) struct SecureWrite {
    s: Arc<Shared>,
    /// The buffer handed back to the session after each write: the session
    /// appends plaintext into it (one copy), seals the records in place, and
    /// `write_output` swaps it out again, so the steady state allocates nothing.
    spare: Vec<u8>,
}

impl SecureWrite {
    /// Seals and writes `data`.
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut w = self.s.w.lock().await;
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        {
            let mut s = self.s.session.lock().map_err(|_| err("poisoned"))?;
            s.send(data, Instant::now()).map_err(err)?;
            // `out` is empty: the session's buffer (the sealed records) is
            // swapped into it and ours, with its capacity, becomes the
            // session's: two buffers take turns.
            s.write_output(&mut out);
        }
        let r = w.write_all(&out).await;
        self.spare = out;
        r
    }

    /// Orderly close of the sending direction.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        {
            let mut s = self.s.session.lock().map_err(|_| err("poisoned"))?;
            let _ = s.close();
        }
        self.s.flush().await?;
        self.s.w.lock().await.shutdown().await
    }
}
