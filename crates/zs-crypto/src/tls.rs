//! TLS 1.3 as an alternative security layer: a sans-IO wrapper around
//! rustls (ring provider) with the same [`SecureSession`] shape as our own
//! sessions, so any transport can carry it.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::{Error, Result};
use crate::provider::{SecureSession, SecurityProvider};
use crate::session::Event;
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

/// One TLS connection, sans-IO.
pub struct TlsSession {
    conn: rustls::Connection,
    events: std::collections::VecDeque<Event>,
    reported: bool,
    peer_closed: bool,
    failed: bool,
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

    fn wrap(conn: rustls::Connection) -> TlsSession {
        TlsSession {
            conn,
            events: Default::default(),
            reported: false,
            peer_closed: false,
            failed: false,
        }
    }

    fn after_packets(&mut self) -> Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.events.push_back(Event::Data(buf[..n].to_vec())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(tls_err(e)),
            }
        }
        if !self.reported && !self.conn.is_handshaking() {
            self.reported = true;
            // Our own suite ids do not name TLS suites; report the TLS 1.3 AEAD family.
            let suite = match self.conn.negotiated_cipher_suite().map(|s| s.suite()) {
                Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256) => {
                    SuiteId::ChaCha20Poly1305
                }
                _ => SuiteId::Aes256Gcm,
            };
            self.events.push_back(Event::HandshakeComplete {
                suite,
                psk_identity: None,
            });
        }
        Ok(())
    }
}

impl SecureSession for TlsSession {
    fn handle_input(&mut self, data: &[u8], _now: Instant) -> Result<()> {
        if self.failed {
            return Err(Error::Failed);
        }
        let mut rd = data;
        while !rd.is_empty() {
            let n = self.conn.read_tls(&mut rd).map_err(tls_err)?;
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    self.failed = true;
                    return Err(tls_err(e));
                }
            };
            let closed = state.peer_has_closed();
            self.after_packets()?;
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
        if self.failed {
            return Err(Error::Failed);
        }
        self.conn.writer().write_all(data).map_err(tls_err)
    }

    fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<()> {
        Ok(())
    }

    fn rekey(&mut self, _now: Instant) -> Result<()> {
        self.conn.refresh_traffic_keys().map_err(tls_err)
    }

    fn close(&mut self) -> Result<()> {
        self.conn.send_close_notify();
        Ok(())
    }

    fn handle_eof(&mut self) -> Result<()> {
        if self.peer_closed {
            Ok(())
        } else {
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
