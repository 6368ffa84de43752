//! A blocking secure stream over any `Read + Write` (a `std::net::TcpStream`, a
//! pipe): the same session and record bytes as [`SecureBackend`](crate::SecureBackend)
//! connections, for tools, tests and threads that want `std::io` instead of a
//! callback handler.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use zs_crypto::{Event, SecureSession, SecurityProvider};
use zs_io::SecurityInfo;

/// A secure session driven by blocking reads and writes on `io`.
pub struct SecureStream<S> {
    io: S,
    session: Box<dyn SecureSession>,
    provider: String,
    plain: Vec<u8>,
    pos: usize,
    eof: bool,
    truncated: bool,
    info: Option<Arc<SecurityInfo>>,
    rbuf: Vec<u8>,
}

fn invalid(e: zs_crypto::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: Read + Write> SecureStream<S> {
    /// Runs the client handshake on `io` and returns the established stream.
    pub fn connect(io: S, provider: &dyn SecurityProvider) -> io::Result<SecureStream<S>> {
        let session = provider.new_client(Instant::now()).map_err(invalid)?;
        SecureStream::handshake(io, session, provider.name())
    }

    /// Runs the server handshake on `io` and returns the established stream.
    pub fn accept(io: S, provider: &dyn SecurityProvider) -> io::Result<SecureStream<S>> {
        let session = provider.new_server(Instant::now()).map_err(invalid)?;
        SecureStream::handshake(io, session, provider.name())
    }

    fn handshake(
        io: S,
        session: Box<dyn SecureSession>,
        provider: &str,
    ) -> io::Result<SecureStream<S>> {
        let mut s = SecureStream {
            io,
            session,
            provider: provider.to_owned(),
            plain: Vec::new(),
            pos: 0,
            eof: false,
            truncated: false,
            info: None,
            rbuf: vec![0; 16 * 1024],
        };
        s.flush_out()?;
        while s.session.is_handshaking() {
            if !s.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "peer closed during the handshake",
                ));
            }
        }
        if s.info.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake ended without keys",
            ));
        }
        Ok(s)
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Who the peer authenticated as (see [`SecurityInfo`]).
    pub fn security_info(&self) -> Option<Arc<SecurityInfo>> {
        self.info.clone()
    }

    /// Whether the peer ended the stream without its close record.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Sends the close record: the peer reads end of stream; reading continues.
    pub fn close_write(&mut self) -> io::Result<()> {
        self.session.close().map_err(invalid)?;
        self.flush_out()
    }

    fn flush_out(&mut self) -> io::Result<()> {
        let mut out = Vec::new();
        self.session.write_output(&mut out);
        if !out.is_empty() {
            self.io.write_all(&out)?;
        }
        Ok(())
    }

    /// Reads once from `io` and opens what arrived; `false` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let n = self.io.read(&mut self.rbuf)?;
        if n == 0 {
            self.eof = true;
            self.truncated = self.session.handle_eof().is_err();
            return Ok(false);
        }
        if self.pos == self.plain.len() {
            self.plain.clear();
            self.pos = 0;
        }
        let plain = &mut self.plain;
        let r = self
            .session
            .handle_input_with(&self.rbuf[..n], Instant::now(), &mut |d| {
                plain.extend_from_slice(d)
            });
        // An alert for the peer, or key-update records.
        let flushed = self.flush_out();
        r.map_err(invalid)?;
        flushed?;
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::HandshakeComplete {
                    suite,
                    psk_identity,
                } => {
                    let key = if psk_identity.is_some() {
                        None
                    } else {
                        self.session.server_key()
                    };
                    self.info = Some(Arc::new(
                        SecurityInfo::new(self.provider.clone(), suite.name(), psk_identity, key)
                            .with_channel_binding(self.session.channel_binding()),
                    ));
                }
                Event::Data(d) => self.plain.extend_from_slice(&d),
                Event::Closed => self.eof = true,
                Event::KeyUpdated { .. } => {}
            }
        }
        Ok(true)
    }
}

impl<S: Read + Write> Read for SecureStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.pos);
                buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.eof || buf.is_empty() {
                return Ok(0);
            }
            self.fill()?;
        }
    }
}

impl<S: Read + Write> Write for SecureStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.session
            .send(buf, Instant::now())
            .map_err(|e| match e {
                zs_crypto::Error::Closed => io::Error::new(io::ErrorKind::BrokenPipe, e),
                e => invalid(e),
            })?;
        self.flush_out()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_out()?;
        self.io.flush()
    }
}
