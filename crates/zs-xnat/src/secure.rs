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

/// Read buffer size of tunnel sockets.
pub(crate) const READ_BUF: usize = 64 * 1024;

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
        buf.resize(READ_BUF, 0);
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
            },
            SecureWrite { s: shared },
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
}

impl SecureRead {
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
}

impl SecureWrite {
    /// Seals and writes `data`.
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut w = self.s.w.lock().await;
        let mut out = Vec::with_capacity(data.len() + 64);
        {
            let mut s = self.s.session.lock().map_err(|_| err("poisoned"))?;
            s.send(data, Instant::now()).map_err(err)?;
            s.write_output(&mut out);
        }
        w.write_all(&out).await
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
