//! TLS 1.3 as an alternative security layer: a sans-IO wrapper around
//! rustls (ring provider) with the same [`SecureSession`] shape as our own
//! sessions, so any transport can carry it.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{Error, Result};
use crate::provider::{SecureSession, SecurityProvider};
use crate::session::{Event, MAX_QUEUED_BEFORE_HANDSHAKE};
use crate::suite::SuiteId;

fn tls_err(e: impl core::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3-only server configuration (ring provider) for a certificate chain and key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>> {
    let c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    Ok(Arc::new(c))
}

/// A TLS 1.3-only client configuration trusting exactly the given roots.
pub fn client_config(roots: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(tls_err)?;
    }
    let c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(c))
}

/// The suite reported for a negotiated TLS suite; `None` for anything but
/// the three TLS 1.3 suites.
fn suite_of(cs: rustls::CipherSuite) -> Option<SuiteId> {
    match cs {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(SuiteId::Tls13Aes128GcmSha256),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(SuiteId::Tls13Aes256GcmSha384),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
            Some(SuiteId::Tls13ChaCha20Poly1305Sha256)
        }
        _ => None,
    }
}

/// One TLS connection, sans-IO. Like [`crate::session::Session`], a send of
/// any size is accepted (buffered until [`SecureSession::write_output`]),
/// plaintext sent before the handshake completes is capped at
/// [`MAX_QUEUED_BEFORE_HANDSHAKE`], and any TLS error makes the session
/// unusable ([`Error::Failed`] afterwards).
pub struct TlsSession {
    conn: rustls::Connection,
    events: std::collections::VecDeque<Event>,
    reported: bool,
    peer_closed: bool,
    we_closed: bool,
    failed: bool,
    /// Plaintext bytes sent while handshaking (bounded).
    early: usize,
}

impl TlsSession {
    /// A client connection to `server_name` (checked against the certificate).
    pub fn client(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<TlsSession> {
        let name = ServerName::try_from(server_name.to_string()).map_err(tls_err)?;
        let c = rustls::ClientConnection::new(config, name).map_err(tls_err)?;
        Ok(TlsSession::wrap(rustls::Connection::Client(c)))
    }

    /// A server connection.
    pub fn server(config: Arc<rustls::ServerConfig>) -> Result<TlsSession> {
        let c = rustls::ServerConnection::new(config).map_err(tls_err)?;
        Ok(TlsSession::wrap(rustls::Connection::Server(c)))
    }

    fn wrap(mut conn: rustls::Connection) -> TlsSession {
        // rustls caps its plaintext and TLS buffers at 64 KiB by default and
        // then accepts short writes; this wrapper buffers like our own
        // sessions do (the transport drains `write_output`), and bounds only
        // what is sent before the handshake completes (see `send`).
        conn.set_buffer_limit(None);
        TlsSession {
            conn,
            events: Default::default(),
            reported: false,
            peer_closed: false,
            we_closed: false,
            failed: false,
            early: 0,
        }
    }

    /// The negotiated TLS suite (e.g. `TLS13_CHACHA20_POLY1305_SHA256`), once known.
    pub fn suite(&self) -> Option<SuiteId> {
        self.conn
            .negotiated_cipher_suite()
            .and_then(|s| suite_of(s.suite()))
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            Err(Error::Failed)
        } else {
            Ok(())
        }
    }

    /// Marks the session failed and passes the error on.
    fn fail(&mut self, e: Error) -> Error {
        self.failed = true;
        e
    }

    fn after_packets(&mut self) -> Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.events.push_back(Event::Data(buf[..n].to_vec())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(tls_err(e)),
            }
        }
        if !self.reported && !self.conn.is_handshaking() {
            self.reported = true;
            let negotiated = self.conn.negotiated_cipher_suite().map(|s| s.suite());
            let suite = negotiated.and_then(suite_of).ok_or_else(|| {
                Error::Tls(format!(
                    "negotiated {negotiated:?}: TlsSession supports TLS 1.3 suites only"
                ))
            })?;
            self.events.push_back(Event::HandshakeComplete {
                suite,
                psk_identity: None,
            });
        }
        Ok(())
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            match self.conn.writer().write(data) {
                // Cannot happen without a buffer limit; never spin on it.
                Ok(0) => return Err(Error::Tls("TLS layer accepted no data".into())),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(tls_err(e)),
            }
        }
        Ok(())
    }
}

impl SecureSession for TlsSession {
    fn handle_input(&mut self, data: &[u8], _now: Instant) -> Result<()> {
        self.check_usable()?;
        let mut rd = data;
        while !rd.is_empty() {
            let n = self
                .conn
                .read_tls(&mut rd)
                .map_err(|e| self.fail(tls_err(e)))?;
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| self.fail(tls_err(e)))?;
            let closed = state.peer_has_closed();
            self.after_packets().map_err(|e| self.fail(e))?;
            if closed && !self.peer_closed {
                self.peer_closed = true;
                self.events.push_back(Event::Closed);
            }
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    fn write_output(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn send(&mut self, data: &[u8], _now: Instant) -> Result<()> {
        self.check_usable()?;
        if self.we_closed {
            return Err(Error::Closed);
        }
        if self.conn.is_handshaking() {
            if self.early + data.len() > MAX_QUEUED_BEFORE_HANDSHAKE {
                return Err(Error::Config(
                    "too much data queued before the handshake".into(),
                ));
            }
            self.early += data.len();
        }
        self.write_all(data).map_err(|e| self.fail(e))
    }

    fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<()> {
        self.check_usable()
    }

    fn rekey(&mut self, _now: Instant) -> Result<()> {
        self.check_usable()?;
        if self.we_closed {
            return Err(Error::Closed);
        }
        // Refused while handshaking (not fatal, like our own sessions).
        self.conn.refresh_traffic_keys().map_err(tls_err)
    }

    fn close(&mut self) -> Result<()> {
        self.check_usable()?;
        if !self.we_closed {
            self.we_closed = true;
            self.conn.send_close_notify();
        }
        Ok(())
    }

    fn handle_eof(&mut self) -> Result<()> {
        if self.peer_closed {
            Ok(())
        } else {
            self.failed = true;
            Err(Error::Truncated)
        }
    }

    /// The TLS exporter (RFC 8446 §7.5) with the label `zs1 exporter`.
    fn channel_binding(&self) -> Option<[u8; 32]> {
        if self.failed || self.conn.is_handshaking() {
            return None;
        }
        self.conn
            .export_keying_material([0u8; 32], b"zs1 exporter", None)
            .ok()
    }
}

/// Provider of TLS 1.3 sessions.
pub struct TlsSecurity {
    client: Option<(Arc<rustls::ClientConfig>, String)>,
    server: Option<Arc<rustls::ServerConfig>>,
}

impl TlsSecurity {
    /// A provider: client configuration with the server name to expect, and/or a server configuration.
    pub fn new(
        client: Option<(Arc<rustls::ClientConfig>, String)>,
        server: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        TlsSecurity { client, server }
    }
}

impl SecurityProvider for TlsSecurity {
    fn name(&self) -> &str {
        "tls13"
    }
    fn new_client(&self, _now: Instant) -> Result<Box<dyn SecureSession>> {
        let (c, name) = self
            .client
            .clone()
            .ok_or_else(|| Error::Config("no TLS client configuration".into()))?;
        Ok(Box::new(TlsSession::client(c, &name)?))
    }
    fn new_server(&self, _now: Instant) -> Result<Box<dyn SecureSession>> {
        let s = self
            .server
            .clone()
            .ok_or_else(|| Error::Config("no TLS server configuration".into()))?;
        Ok(Box::new(TlsSession::server(s)?))
    }
}
