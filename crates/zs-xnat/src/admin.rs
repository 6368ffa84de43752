//! The relay's command API (ZNet's `Add_XNAT_Mapping`): add and remove
//! mappings at runtime, list them, read statistics. `zs xnat
//! add|remove|list|status` are its client.
//!
//! It runs on the relay's agent port inside the same relay-pinned zs-crypto
//! session. It is off unless `[server] admin_token` is set. The client opens with
//! [`Msg::AdminHello`], the relay answers [`Msg::Challenge`], the client proves
//! the admin token with [`proto::admin_proof`] (HMAC over the nonce and the
//! channel binding; the token is never sent), and the relay answers
//! [`Msg::AdminResult`]. Then each request ([`Msg::AdminAdd`],
//! [`Msg::AdminRemove`], [`Msg::AdminList`], [`Msg::AdminStats`]) gets zero or
//! more [`Msg::AdminItem`] (one JSON object each) and one [`Msg::AdminResult`].
//! A wrong proof, a request before the proof, or a session idle for
//! [`ADMIN_IDLE`] ends the connection; each is logged and counted
//! (`admin_refused`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::{info, warn};
use zs_crypto::session::ClientConfig as CryptoClient;
use zs_crypto::Fingerprint;

use crate::config::{Kind, ServerService};
use crate::proto::{self, MappingSpec, Msg};
use crate::relay::Relay;
use crate::secure::SecureConn;
use crate::stats::inc;

/// A command-API session without a request for this long is closed.
pub const ADMIN_IDLE: Duration = Duration::from_secs(60);

fn result(ok: bool, message: impl Into<String>) -> Msg {
    Msg::AdminResult {
        ok,
        message: message.into(),
    }
}

/// The relay's side of one command-API connection.
pub(crate) async fn serve(relay: &Relay, mut conn: SecureConn, peer: SocketAddr, version: u16) {
    let stats = relay.stats();
    let refuse = |why: &str| {
        let n = inc(&stats.admin_refused);
        warn!(%peer, admin_refused = n, reason = why, "xnat relay: command API refused");
    };
    if version != proto::VERSION {
        refuse("unsupported protocol version");
        let _ = conn
            .send(&result(false, "unsupported protocol version"))
            .await;
        return;
    }
    let Some(token) = relay.admin_token().map(str::to_string) else {
        refuse("the command API is off (no [server] admin_token)");
        let _ = conn
            .send(&result(
                false,
                "the relay's command API is off: set [server] admin_token",
            ))
            .await;
        return;
    };
    let Some(nonce) = relay.nonce() else { return };
    let binding = conn.channel_binding();
    if conn.send(&Msg::Challenge { nonce }).await.is_err() {
        return;
    }
    let hs = relay.handshake_timeout();
    match tokio::time::timeout(hs, conn.recv()).await {
        Ok(Ok(Msg::AdminAuth { proof })) => {
            if !proto::verify_admin_proof(&token, &nonce, &binding, &proof) {
                refuse("wrong admin token");
                let _ = conn.send(&result(false, "wrong admin token")).await;
                return;
            }
        }
        Ok(Ok(m)) => {
            refuse(&format!(
                "message 0x{:02x} before the admin proof",
                m.kind()
            ));
            return;
        }
        Ok(Err(e)) => {
            refuse(&format!("bad admin proof message: {e}"));
            return;
        }
        Err(_) => {
            refuse("no admin proof within the handshake timeout");
            return;
        }
    }
    let n = inc(&stats.admin_sessions);
    info!(%peer, admin_sessions = n, "xnat relay: command-API session authenticated");
    if conn.send(&result(true, "authenticated")).await.is_err() {
        return;
    }
    loop {
        let m = match tokio::time::timeout(ADMIN_IDLE, conn.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => return, // closed
            Err(_) => {
                info!(%peer, "xnat relay: idle command-API session closed");
                return;
            }
        };
        let mut out = Vec::new();
        match m {
            Msg::AdminAdd { mapping } => {
                let name = mapping.service.clone();
                let r = match spec_to_service(&mapping) {
                    Ok(conf) => relay.add_mapping(&name, conf).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => result(true, format!("added {name:?}")).encode(&mut out),
                    Err(e) => result(false, e).encode(&mut out),
                }
            }
            Msg::AdminRemove { service } => match relay.remove_mapping(&service).await {
                Ok(()) => result(true, format!("removed {service:?}")).encode(&mut out),
                Err(e) => result(false, e).encode(&mut out),
            },
            Msg::AdminList | Msg::AdminStats => {
                let items = if matches!(m, Msg::AdminList) {
                    relay.mapping_list()
                } else {
                    relay.stats_report()
                };
                let n = items.len();
                for it in items {
                    Msg::AdminItem {
                        json: it.to_string(),
                    }
                    .encode(&mut out);
                    // Each item is its own frame, so no answer outgrows MAX_FRAME.
                    if out.len() > 64 * 1024 {
                        if conn.send_raw(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
                result(true, format!("{n} items")).encode(&mut out);
            }
            other => {
                refuse(&format!("unexpected message 0x{:02x}", other.kind()));
                return;
            }
        }
        if conn.send_raw(&out).await.is_err() {
            return;
        }
    }
}

/// The relay-side mapping for a command-API request (defaults by type: idle
/// 600 s for TCP, 60 s for UDP; 4096 connections or flows).
fn spec_to_service(m: &MappingSpec) -> Result<ServerService, String> {
    if m.token.is_empty() {
        return Err("expected a non-empty token".into());
    }
    let kind = if m.udp { Kind::Udp } else { Kind::Tcp };
    let idle = match (m.idle_timeout_s, kind) {
        (0, Kind::Udp) => 60,
        (0, Kind::Tcp) => 600,
        (s, _) => s as u64,
    };
    Ok(ServerService {
        token: m.token.clone(),
        bind_addr: m.bind_addr,
        idle_timeout: Duration::from_secs(idle),
        max_connections: if m.max_connections == 0 {
            4096
        } else {
            m.max_connections as usize
        },
        kind,
    })
}

/// A command-API client (what `zs xnat add|remove|list|status` use).
pub struct AdminClient {
    conn: SecureConn,
}

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

impl AdminClient {
    /// Connects to relay `addr` (pinning `fingerprint`) and proves `token`.
    pub async fn connect(
        addr: &str,
        fingerprint: Fingerprint,
        token: &str,
        timeout: Duration,
    ) -> io::Result<AdminClient> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let crypto = std::sync::Arc::new(CryptoClient::pinned(fingerprint));
        let mut conn = SecureConn::connect(tcp, crypto, timeout).await?;
        conn.send(&Msg::AdminHello {
            version: proto::VERSION,
        })
        .await?;
        let nonce = match tokio::time::timeout(timeout, conn.recv()).await {
            Ok(r) => match r? {
                Msg::Challenge { nonce } => nonce,
                Msg::AdminResult { message, .. } => return Err(refused(message)),
                m => {
                    return Err(io::Error::other(format!(
                        "unexpected message 0x{:02x}",
                        m.kind()
                    )))
                }
            },
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no challenge")),
        };
        let proof = proto::admin_proof(token, &nonce, &conn.channel_binding());
        conn.send(&Msg::AdminAuth { proof }).await?;
        let mut c = AdminClient { conn };
        c.result(&mut Vec::new())
            .await
            .map_err(|e| refused(e.to_string()))?;
        Ok(c)
    }

    /// Reads items until the result.
    async fn result(&mut self, items: &mut Vec<serde_json::Value>) -> io::Result<String> {
        loop {
            match tokio::time::timeout(ADMIN_IDLE, self.conn.recv()).await {
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the relay closed the command-API connection",
                    ))
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Msg::AdminItem { json })) => items.push(
                    serde_json::from_str(&json)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
                ),
                Ok(Ok(Msg::AdminResult { ok: true, message })) => return Ok(message),
                Ok(Ok(Msg::AdminResult { ok: false, message })) => {
                    return Err(io::Error::other(message))
                }
                Ok(Ok(m)) => {
                    return Err(io::Error::other(format!(
                        "unexpected message 0x{:02x}",
                        m.kind()
                    )))
                }
            }
        }
    }

    /// Adds a mapping; the relay stores it before it answers.
    pub async fn add(&mut self, mapping: MappingSpec) -> io::Result<String> {
        self.conn.send(&Msg::AdminAdd { mapping }).await?;
        self.result(&mut Vec::new()).await
    }

    /// Removes a mapping added at runtime.
    pub async fn remove(&mut self, service: &str) -> io::Result<String> {
        self.conn
            .send(&Msg::AdminRemove {
                service: service.to_string(),
            })
            .await?;
        self.result(&mut Vec::new()).await
    }

    /// Every mapping (see [`Relay::mapping_list`]).
    pub async fn list(&mut self) -> io::Result<Vec<serde_json::Value>> {
        self.conn.send(&Msg::AdminList).await?;
        let mut v = Vec::new();
        self.result(&mut v).await?;
        Ok(v)
    }

    /// Statistics (see [`Relay::stats_report`]).
    pub async fn stats(&mut self) -> io::Result<Vec<serde_json::Value>> {
        self.conn.send(&Msg::AdminStats).await?;
        let mut v = Vec::new();
        self.result(&mut v).await?;
        Ok(v)
    }
}
