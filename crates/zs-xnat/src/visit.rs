//! Visitors and direct paths (`zs xnat visit`): a local port whose connections reach
//! an agent's service through the relay at once, and move to a punched QUIC path
//! (zs-punch) when one comes up, without being closed; back to the relay when it dies.
//!
//! ## Shape
//! - Every visitor connection is a [`zs_punch::migrate`] stream between the visitor and
//!   the agent, identified by a random 128-bit id. Its paths: a **relay path** (a
//!   secure connection to the relay, bridged there to one of the agent's pooled data
//!   connections) and, while a direct path exists, a **QUIC stream** on the punched
//!   socket. The direct path has the higher priority; the relay path stands by
//!   (an ACK every 20 s keeps it open) and takes over at once when the direct one dies.
//! - A connection accepted while no direct path exists opens its relay path at once
//!   (no wait). One accepted while the direct path is up starts on QUIC; if the direct
//!   path dies, it gets a relay path then.
//! - In the background the visitor asks the relay to punch (`Punch`): the relay tells
//!   the agent the visitor names (else the least-loaded one) over its control session
//!   (`PunchRequest` with a single-use ticket), both meet at the relay's [`zs_punch::rendezvous::Hub`] inside
//!   their secure sessions, classify their NATs against the relay's STUN server,
//!   punch, and the visitor connects QUIC with both keys pinned (fingerprints
//!   exchanged through the hub). A failed attempt is retried after `direct_retry`
//!   (a "relay only" answer after ten times that), or at once when a router's
//!   UPnP-IGD answered after the attempt: the visitor's own (it sees it), or the
//!   agent's (the agent announces it with a `Mapped` session, and the relay sends
//!   `Again` on the wait session the visitor holds after a failed attempt).
//! - The relay learns nothing new: it checks the visitor's token proof (HMAC over the
//!   session's channel binding, never the token) exactly as it checks agents'.
//!
//! Wire: every message rides inside the relay's secure session as [`Msg::Visit`]
//! (kind `0x30`), whose body is a [`VisitMsg`] (`docs/PROTOCOL.md`, Part 14).
//!
//! - **Several agents on one mapping.** The relay's `Ok` names the agent (its id) that
//!   got a relay path; a connection born on a direct path belongs to that path's agent.
//!   The visitor keeps one direct path per agent and punches, one at a time, with each
//!   agent that holds a live connection without one (`Hello` names it); a new direct
//!   path carries only its agent's connections, and a relay path for a connection
//!   whose direct path died goes to the agent that holds it.
//!
//! ## Limits
//! - One punch per mapping at a time (the hub pairs by mapping): a visitor punches its
//!   agents one after the other, and two visitors punching the same mapping at the
//!   same instant with different agents can be paired crosswise (each still gets a
//!   working direct path for new connections, but its live connections, held by the
//!   agent it named, stay relayed).
//! - A direct path that dies is noticed by QUIC's idle timeout (3 s by default):
//!   bytes stall that long, then continue on the relay, none lost.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zs_crypto::session::ClientConfig as CryptoClient;
use zs_crypto::Fingerprint;
use zs_punch::migrate::{self, ConnConfig};
use zs_punch::quic::{self, Identity, QuicLimits};
use zs_punch::rendezvous::{pair_key, Hub, HubConfig, Side as PunchSide};

use crate::config::ConfigError;
use crate::proto::{Msg, MAX_NAME, PROOF_LEN};
use crate::relay::Relay;
use crate::secure::SecureConn;
use crate::stats::inc;

/// Length of a connection id.
pub const CONN_ID_LEN: usize = 16;
/// First bytes of a visitor's QUIC stream: magic, connection id, attach flag.
pub const STREAM_MAGIC: &[u8; 4] = b"ZSV1";
/// Priority of a relay path in the migrate driver.
const PRIO_RELAY: u8 = 0;
/// Priority of a direct (QUIC) path.
const PRIO_DIRECT: u8 = 1;
/// How long a ticket for the agent's rendezvous connection stays valid.
const TICKET_TTL: Duration = Duration::from_secs(10);
/// Tickets outstanding at once on a relay.
const MAX_TICKETS: usize = 1024;
/// Punch attempts an agent runs at once.
const AGENT_PUNCHES: usize = 2;
/// Live QUIC (direct) sessions an agent keeps at once.
const AGENT_DIRECT: usize = 64;
/// How long an agent waits for a connection id it does not know yet (a QUIC stream
/// that overtook the relay path that opens the connection).
const ATTACH_WAIT: Duration = Duration::from_secs(2);
/// Timeout of each step of a visitor's relay session.
const STEP: Duration = Duration::from_secs(5);
/// Visitors waiting for [`VisitMsg::Again`] on a relay at once.
const MAX_WAITERS: usize = 1024;
/// Longest a relay keeps a visitor's [`Purpose::Wait`] session.
const WAIT_MAX: Duration = Duration::from_secs(3600);
/// How long an agent watches for its router's UPnP-IGD search to end after an attempt
/// without a port mapping (the search is bounded by its wait + one HTTP timeout, 3 s).
const AGENT_IGD_WATCH: Duration = Duration::from_secs(6);
/// Least time between two attempts of a visitor with one agent when an
/// [`VisitMsg::Again`] asks for the second (a token holder cannot make visitors loop).
const AGAIN_MIN_GAP: Duration = Duration::from_secs(2);

/// What a visitor connection to the relay is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A relay path that opens a new connection at the agent.
    Open,
    /// A relay path for a connection the agent already holds.
    Attach,
    /// A rendezvous (punch) session.
    Punch,
    /// After a failed punch: wait for [`VisitMsg::Again`] (an agent's router mapped a
    /// port meanwhile), so that the visitor punches again at once.
    Wait,
    /// From an agent (it proves the mapping's token like a visitor): its router's
    /// UPnP-IGD answered after a failed attempt, so the next one gets a mapped,
    /// public port; the relay sends [`VisitMsg::Again`] to the visitors waiting on the
    /// mapping.
    Mapped,
}

impl Purpose {
    fn code(self) -> u8 {
        match self {
            Purpose::Open => 1,
            Purpose::Attach => 2,
            Purpose::Punch => 3,
            Purpose::Wait => 4,
            Purpose::Mapped => 5,
        }
    }
    fn from_code(c: u8) -> Option<Purpose> {
        Some(match c {
            1 => Purpose::Open,
            2 => Purpose::Attach,
            3 => Purpose::Punch,
            4 => Purpose::Wait,
            5 => Purpose::Mapped,
            _ => return None,
        })
    }
}

/// The visitor sub-protocol (the body of [`Msg::Visit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisitMsg {
    /// visitor → relay, first message: what for, which mapping, the token proof.
    Hello {
        /// What for.
        purpose: Purpose,
        /// The mapping.
        service: String,
        /// The connection (zero for `Punch`).
        conn: [u8; CONN_ID_LEN],
        /// [`visit_proof`].
        proof: [u8; PROOF_LEN],
        /// The agent wanted (the relay's id from an earlier [`VisitMsg::Ok`]): the one
        /// that holds the connection (`Attach`) or to punch with (`Punch`); 0 any.
        agent: u64,
    },
    /// relay → visitor: accepted; `stun` is the STUN server peers classify against
    /// (punch only; unspecified otherwise).
    Ok {
        /// The STUN server (RFC 5780).
        stun: SocketAddr,
        /// The relay's id of the agent that got the path or the punch request.
        agent: u64,
    },
    /// relay → visitor: refused.
    Refused {
        /// Why.
        reason: String,
    },
    /// relay → agent on a pooled data connection: migrate frames of visitor
    /// connection `conn` follow.
    Start {
        /// The connection.
        conn: [u8; CONN_ID_LEN],
        /// Whether the agent already holds it (else it opens the service).
        attach: bool,
        /// The visitor's address as the relay sees it.
        peer: SocketAddr,
    },
    /// relay → agent on the control session: a visitor wants to punch.
    PunchRequest {
        /// The mapping.
        service: String,
        /// Single-use ticket for [`VisitMsg::Join`].
        ticket: [u8; 16],
        /// The STUN server.
        stun: SocketAddr,
    },
    /// agent → relay, first message of its rendezvous connection.
    Join {
        /// From [`VisitMsg::PunchRequest`].
        ticket: [u8; 16],
    },
    /// relay → visitor on a [`Purpose::Wait`] session: an agent of the mapping can
    /// now be reached at a mapped port; punch again now. The relay closes after it.
    Again,
}

/// A malformed visitor message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad visitor message: {0}")]
pub struct VisitError(pub &'static str);

fn put_str(o: &mut Vec<u8>, s: &str) {
    let mut n = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    o.extend_from_slice(&(n as u16).to_le_bytes());
    o.extend_from_slice(&s.as_bytes()[..n]);
}

fn put_addr(o: &mut Vec<u8>, a: &SocketAddr) {
    zs_punch::addr::put(o, a);
}

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], VisitError> {
        if self.0.len() < n {
            return Err(VisitError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], VisitError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, VisitError> {
        Ok(self.arr::<1>()?[0])
    }
    fn str(&mut self, max: usize) -> Result<String, VisitError> {
        let n = u16::from_le_bytes(self.arr()?) as usize;
        if n > max {
            return Err(VisitError("string too long"));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| VisitError("string is not UTF-8"))
    }
    fn name(&mut self) -> Result<String, VisitError> {
        let s = self.str(MAX_NAME)?;
        if s.is_empty() {
            return Err(VisitError("empty service name"));
        }
        Ok(s)
    }
    fn addr(&mut self) -> Result<SocketAddr, VisitError> {
        zs_punch::addr::take(&mut self.0).map_err(VisitError)
    }
}

/// Longest reason in [`VisitMsg::Refused`].
pub const MAX_REASON: usize = 512;

impl VisitMsg {
    /// The body bytes (type byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(64);
        match self {
            VisitMsg::Hello {
                purpose,
                service,
                conn,
                proof,
                agent,
            } => {
                o.push(1);
                o.push(purpose.code());
                put_str(&mut o, service);
                o.extend_from_slice(conn);
                o.extend_from_slice(proof);
                o.extend_from_slice(&agent.to_le_bytes());
            }
            VisitMsg::Ok { stun, agent } => {
                o.push(2);
                put_addr(&mut o, stun);
                o.extend_from_slice(&agent.to_le_bytes());
            }
            VisitMsg::Refused { reason } => {
                o.push(3);
                let mut n = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(n) {
                    n -= 1;
                }
                put_str(&mut o, &reason[..n]);
            }
            VisitMsg::Start { conn, attach, peer } => {
                o.push(4);
                o.extend_from_slice(conn);
                o.push(u8::from(*attach));
                put_addr(&mut o, peer);
            }
            VisitMsg::PunchRequest {
                service,
                ticket,
                stun,
            } => {
                o.push(5);
                put_str(&mut o, service);
                o.extend_from_slice(ticket);
                put_addr(&mut o, stun);
            }
            VisitMsg::Join { ticket } => {
                o.push(6);
                o.extend_from_slice(ticket);
            }
            VisitMsg::Again => o.push(7),
        }
        o
    }

    /// Decodes a whole body; trailing bytes are an error.
    pub fn decode(b: &[u8]) -> Result<VisitMsg, VisitError> {
        let mut r = Rd(b);
        let m = match r.u8()? {
            1 => VisitMsg::Hello {
                purpose: Purpose::from_code(r.u8()?).ok_or(VisitError("purpose"))?,
                service: r.name()?,
                conn: r.arr()?,
                proof: r.arr()?,
                agent: u64::from_le_bytes(r.arr()?),
            },
            2 => VisitMsg::Ok {
                stun: r.addr()?,
                agent: u64::from_le_bytes(r.arr()?),
            },
            3 => VisitMsg::Refused {
                reason: r.str(MAX_REASON)?,
            },
            4 => VisitMsg::Start {
                conn: r.arr()?,
                attach: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(VisitError("attach flag")),
                },
                peer: r.addr()?,
            },
            5 => VisitMsg::PunchRequest {
                service: r.name()?,
                ticket: r.arr()?,
                stun: r.addr()?,
            },
            6 => VisitMsg::Join { ticket: r.arr()? },
            7 => VisitMsg::Again,
            _ => return Err(VisitError("type")),
        };
        if !r.0.is_empty() {
            return Err(VisitError("trailing bytes"));
        }
        Ok(m)
    }

    /// As a control message.
    pub fn to_msg(&self) -> Msg {
        Msg::Visit {
            body: self.encode(),
        }
    }
}

/// The visitor's token proof: HMAC-SHA256 keyed by the service token over
/// `"zs-xnat visit v1" | channel binding | purpose | conn id | u16 LE name length | name`.
/// The channel binding is fresh per session (both sides' ephemeral keys), so a proof
/// cannot be replayed elsewhere and no challenge round trip is needed.
pub fn visit_proof(
    token: &str,
    binding: &[u8; 32],
    purpose: Purpose,
    conn: &[u8; CONN_ID_LEN],
    service: &str,
) -> [u8; PROOF_LEN] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(b"zs-xnat visit v1");
    ctx.update(binding);
    ctx.update(&[purpose.code()]);
    ctx.update(conn);
    ctx.update(&(service.len() as u16).to_le_bytes());
    ctx.update(service.as_bytes());
    let mut out = [0u8; PROOF_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Sends `Hello` (with the token proof for this session) and reads the relay's answer:
/// the `Ok`'s STUN server and agent, or the refusal as an error.
async fn hello(
    conn: &mut SecureConn,
    token: &str,
    purpose: Purpose,
    service: &str,
    id: [u8; CONN_ID_LEN],
    want: u64,
) -> io::Result<(SocketAddr, u64)> {
    let proof = visit_proof(token, &conn.channel_binding(), purpose, &id, service);
    let hello = VisitMsg::Hello {
        purpose,
        service: service.to_string(),
        conn: id,
        proof,
        agent: want,
    };
    conn.send(&hello.to_msg()).await?;
    let m = tokio::time::timeout(STEP, conn.recv())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from the relay"))??;
    let Msg::Visit { body } = m else {
        return Err(io::Error::other("unexpected answer from the relay"));
    };
    match VisitMsg::decode(&body).map_err(io::Error::other)? {
        VisitMsg::Ok { stun, agent } => Ok((stun, agent)),
        VisitMsg::Refused { reason } => {
            Err(io::Error::other(format!("the relay refused: {reason}")))
        }
        _ => Err(io::Error::other("unexpected answer from the relay")),
    }
}

/// A secure connection as a byte stream (for the hub and the migrate driver): two
/// tasks move bytes between the session and the returned end. Either side ending
/// (or failing) ends the stream.
fn secure_stream(conn: SecureConn) -> DuplexStream {
    let (mine, theirs) = tokio::io::duplex(128 * 1024);
    let (mut sr, mut sw, rest) = conn.split();
    let (mut r, mut w) = tokio::io::split(theirs);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let ok = rest.is_empty() || w.write_all(&rest).await.is_ok();
        if ok {
            while let Ok(true) = sr.read(&mut buf).await {
                if w.write_all(&buf).await.is_err() {
                    break;
                }
            }
        }
        let _ = w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sw.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sw.shutdown().await;
    });
    mine
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let _ = SystemRandom::new().fill(&mut b);
    b
}

/// A path of a migrate connection.
type BoxPath = Box<dyn PathObj>;
trait PathObj: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PathObj for T {}
type PathTx = mpsc::Sender<(BoxPath, u8)>;

// ---------------------------------------------------------------------------------
// Relay side

/// `[server.direct]`: the relay hosts the rendezvous hub and (optionally) answers STUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectServerConfig {
    /// `stun_bind_addr`: the relay answers STUN here, on the next port, and on
    /// `stun_alt_ip` with both ports (RFC 5780 needs two addresses).
    pub stun_bind_addr: Option<SocketAddr>,
    /// `stun_alt_ip`: the second address of the relay's STUN server.
    pub stun_alt_ip: Option<IpAddr>,
    /// `stun_addr`: the STUN server peers classify against (default `stun_bind_addr`;
    /// any RFC 5780 server, e.g. coturn).
    pub stun_addr: SocketAddr,
}

/// Parses `[server.direct]` of `text` (`None` without the table).
pub fn parse_direct(text: &str, file: &str) -> Result<Option<DirectServerConfig>, ConfigError> {
    let e = |key: &str, m: String| ConfigError {
        file: file.to_string(),
        key: key.to_string(),
        message: m,
    };
    let root: toml::Table = text
        .parse()
        .map_err(|x: toml::de::Error| e("", format!("not valid TOML: {}", x.message())))?;
    let Some(d) = root
        .get("server")
        .and_then(|s| s.as_table())
        .and_then(|s| s.get("direct"))
    else {
        return Ok(None);
    };
    let Some(d) = d.as_table() else {
        return Err(e("server.direct", "expected a table".into()));
    };
    for k in d.keys() {
        if !["stun_bind_addr", "stun_alt_ip", "stun_addr"].contains(&k.as_str()) {
            return Err(e(
                &format!("server.direct.{k}"),
                "unknown key; expected one of stun_bind_addr, stun_alt_ip, stun_addr".into(),
            ));
        }
    }
    let get = |k: &str| -> Result<Option<String>, ConfigError> {
        match d.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(e(
                &format!("server.direct.{k}"),
                format!("expected a string, got {}", v.type_str()),
            )),
        }
    };
    let addr = |k: &str| -> Result<Option<SocketAddr>, ConfigError> {
        get(k)?
            .map(|s| {
                s.parse().map_err(|_| {
                    e(
                        &format!("server.direct.{k}"),
                        format!("expected a socket address like \"203.0.113.7:3478\", got {s:?}"),
                    )
                })
            })
            .transpose()
    };
    let stun_bind_addr = addr("stun_bind_addr")?;
    let stun_alt_ip = get("stun_alt_ip")?
        .map(|s| {
            s.parse().map_err(|_| {
                e(
                    "server.direct.stun_alt_ip",
                    format!("expected an IP address, got {s:?}"),
                )
            })
        })
        .transpose()?;
    if stun_bind_addr.is_some() != stun_alt_ip.is_some() {
        return Err(e(
            "server.direct.stun_alt_ip",
            "stun_bind_addr and stun_alt_ip go together (NAT classification needs two addresses)"
                .into(),
        ));
    }
    let stun_addr = addr("stun_addr")?.or(stun_bind_addr).ok_or_else(|| {
        e(
            "server.direct.stun_addr",
            "required without stun_bind_addr: an RFC 5780 STUN server peers classify against"
                .into(),
        )
    })?;
    Ok(Some(DirectServerConfig {
        stun_bind_addr,
        stun_alt_ip,
        stun_addr,
    }))
}

/// Relay counters of visitors and direct paths.
#[derive(Debug, Default)]
pub struct RelayVisitStats {
    /// Relay paths of visitor connections bridged.
    pub relay_paths: AtomicU64,
    /// Relay paths open now.
    pub relay_paths_active: AtomicU64,
    /// Bytes carried on relay paths (both directions, migrate frames).
    pub relay_path_bytes: AtomicU64,
    /// Punch sessions handed to the hub (visitor and agent sides).
    pub rendezvous: AtomicU64,
    /// Visitor sessions refused (token, unknown mapping, limits, direct off).
    pub refused: AtomicU64,
    /// Visitors waiting now for an agent's router to map a port ([`Purpose::Wait`]).
    pub waiting: AtomicU64,
    /// [`VisitMsg::Again`] sent to waiting visitors (after a [`Purpose::Mapped`]).
    pub again: AtomicU64,
}

/// Visitors waiting for [`VisitMsg::Again`], by a relay-local id (at most
/// [`MAX_WAITERS`]).
#[derive(Default)]
struct Waiters {
    next: u64,
    by_id: HashMap<u64, (String, tokio::sync::oneshot::Sender<()>)>,
}

impl Waiters {
    /// Registers a waiter on `service`; `None` when [`MAX_WAITERS`] wait already.
    fn add(&mut self, service: &str) -> Option<(u64, tokio::sync::oneshot::Receiver<()>)> {
        if self.by_id.len() >= MAX_WAITERS {
            return None;
        }
        self.next += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.by_id.insert(self.next, (service.to_string(), tx));
        Some((self.next, rx))
    }

    /// Wakes (and forgets) every waiter on `service`; how many.
    fn wake(&mut self, service: &str) -> usize {
        let ids: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, (s, _))| s == service)
            .map(|(id, _)| *id)
            .collect();
        let mut n = 0;
        for id in ids {
            if let Some((_, tx)) = self.by_id.remove(&id) {
                n += usize::from(tx.send(()).is_ok());
            }
        }
        n
    }
}

/// Removes a waiter when its session ends, however it ends.
struct WaiterGuard<'a>(&'a RelayVisit, u64);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.lock().expect("visit").by_id.remove(&self.1);
    }
}

struct DirectOn {
    hub: Arc<Hub>,
    stun: SocketAddr,
    _stun_task: Option<tokio::task::JoinHandle<()>>,
}

/// The relay's visitor state (one per relay).
#[derive(Default)]
pub(crate) struct RelayVisit {
    direct: Mutex<Option<Arc<DirectOn>>>,
    tickets: Mutex<HashMap<[u8; 16], (String, Instant)>>,
    waiters: Mutex<Waiters>,
    pub(crate) stats: RelayVisitStats,
}

impl Relay {
    /// Hosts the rendezvous hub (and the STUN server of `cfg`, when it has one) so
    /// that visitors and agents can punch direct paths. Without this, visitors work
    /// through the relay only (their punch requests are refused with a reason).
    /// Needs a tokio runtime.
    pub fn enable_direct(&self, cfg: &DirectServerConfig) -> io::Result<()> {
        let stun_task = match (cfg.stun_bind_addr, cfg.stun_alt_ip) {
            (Some(a), Some(alt)) => {
                let s = zs_punch::stun::StunServer::bind(
                    a.ip(),
                    Some(alt),
                    (a.port(), a.port().wrapping_add(1)),
                )?;
                info!(addrs = ?s.local_addrs(), "xnat relay: answering STUN");
                Some(s.spawn())
            }
            _ => None,
        };
        let on = DirectOn {
            hub: Hub::new(HubConfig::default()),
            stun: cfg.stun_addr,
            _stun_task: stun_task,
        };
        *self.visit_side().direct.lock().expect("visit") = Some(Arc::new(on));
        Ok(())
    }

    /// Counters of visitor connections and rendezvous.
    pub fn visit_stats(&self) -> &RelayVisitStats {
        &self.visit_side().stats
    }
}

impl Drop for DirectOn {
    fn drop(&mut self) {
        if let Some(t) = &self._stun_task {
            t.abort();
        }
    }
}

/// A visitor's [`Purpose::Wait`] session: registered (or refused at [`MAX_WAITERS`]),
/// answered `Ok`, then [`VisitMsg::Again`] when an agent of `service` announces a
/// mapped port; it ends without one when the visitor closes (or sends anything) or
/// after [`WAIT_MAX`].
async fn relay_wait(vs: &RelayVisit, mut conn: SecureConn, service: &str, agent: u64) {
    let added = vs.waiters.lock().expect("visit").add(service);
    let Some((id, rx)) = added else {
        let n = inc(&vs.stats.refused);
        warn!(%service, visitors_refused = n, "xnat relay: visitor refused (too many visitors waiting)");
        let _ = conn
            .send(
                &VisitMsg::Refused {
                    reason: "too many visitors waiting".into(),
                }
                .to_msg(),
            )
            .await;
        return;
    };
    let _guard = WaiterGuard(vs, id);
    let ok = VisitMsg::Ok {
        stun: SocketAddr::from(([0, 0, 0, 0], 0)),
        agent,
    };
    if conn.send(&ok.to_msg()).await.is_err() {
        return;
    }
    inc(&vs.stats.waiting);
    let _w = Dec(&vs.stats.waiting);
    let again = tokio::select! {
        r = rx => r.is_ok(),
        _ = conn.recv() => false,
        _ = tokio::time::sleep(WAIT_MAX) => false,
    };
    if again {
        let _ = conn.send(&VisitMsg::Again.to_msg()).await;
    }
}

/// A relay connection whose first message is [`Msg::Visit`].
pub(crate) async fn relay_conn(
    relay: &Relay,
    mut conn: SecureConn,
    peer: SocketAddr,
    body: Vec<u8>,
) {
    let vs = relay.visit_side();
    let refuse = |why: &str| {
        let n = inc(&vs.stats.refused);
        warn!(%peer, reason = why, visitors_refused = n, "xnat relay: visitor refused");
        VisitMsg::Refused { reason: why.into() }.to_msg()
    };
    let m = match VisitMsg::decode(&body) {
        Ok(m) => m,
        Err(e) => {
            inc(&relay.stats().protocol_errors);
            warn!(%peer, error = %e, "xnat relay: bad visitor message");
            return;
        }
    };
    match m {
        VisitMsg::Hello {
            purpose,
            service,
            conn: id,
            proof,
            agent: want_agent,
        } => {
            let Some((conf, mstats)) = relay.mapping(&service) else {
                let _ = conn.send(&refuse("unknown service")).await;
                return;
            };
            let want = visit_proof(&conf.token, &conn.channel_binding(), purpose, &id, &service);
            use subtle::ConstantTimeEq;
            if !bool::from(want.ct_eq(&proof)) {
                inc(&relay.stats().auth_failures);
                let _ = conn.send(&refuse("wrong token")).await;
                return;
            }
            let direct = matches!(purpose, Purpose::Punch | Purpose::Wait | Purpose::Mapped);
            let on = vs.direct.lock().expect("visit").clone();
            if direct && on.is_none() {
                let _ = conn
                    .send(&refuse(
                        "direct paths are off on this relay ([server.direct])",
                    ))
                    .await;
                return;
            }
            if purpose == Purpose::Mapped {
                // An agent's router mapped a port after a failed attempt: the
                // visitors waiting on the mapping punch again.
                let n = vs.waiters.lock().expect("visit").wake(&service);
                vs.stats.again.fetch_add(n as u64, Ordering::Relaxed);
                info!(%service, %peer, woken = n, "xnat relay: an agent's router mapped a port; waiting visitors punch again");
                let ok = VisitMsg::Ok {
                    stun: SocketAddr::from(([0, 0, 0, 0], 0)),
                    agent: 0,
                };
                let _ = conn.send(&ok.to_msg()).await;
                return;
            }
            if purpose == Purpose::Wait {
                relay_wait(vs, conn, &service, want_agent).await;
                return;
            }
            if let (Purpose::Punch, Some(on)) = (purpose, on) {
                let ticket: [u8; 16] = random();
                let full = {
                    let mut t = vs.tickets.lock().expect("visit");
                    let now = Instant::now();
                    t.retain(|_, (_, exp)| *exp > now);
                    let full = t.len() >= MAX_TICKETS;
                    if !full {
                        t.insert(ticket, (service.clone(), now + TICKET_TTL));
                    }
                    full
                };
                if full {
                    let _ = conn.send(&refuse("too many punches in progress")).await;
                    return;
                }
                let req = VisitMsg::PunchRequest {
                    service: service.clone(),
                    ticket,
                    stun: on.stun,
                };
                let Some(chosen) = relay.notify_agent(&service, want_agent, req.to_msg()) else {
                    vs.tickets.lock().expect("visit").remove(&ticket);
                    let _ = conn.send(&refuse("no agent serves the mapping")).await;
                    return;
                };
                let ok = VisitMsg::Ok {
                    stun: on.stun,
                    agent: chosen,
                };
                if conn.send(&ok.to_msg()).await.is_err() {
                    return;
                }
                inc(&vs.stats.rendezvous);
                if let Err(e) = on.hub.serve_conn(secure_stream(conn)).await {
                    debug!(%peer, error = %e, "xnat relay: visitor rendezvous ended");
                }
                return;
            }
            // A relay path: admitted against the mapping's max_connections.
            let cap = conf.max_connections as u64;
            if mstats
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < cap).then_some(n + 1)
                })
                .is_err()
            {
                let _ = conn
                    .send(&refuse("the mapping is at max_connections"))
                    .await;
                return;
            }
            let _active = Dec(&mstats.active);
            let (mut agent, load, chosen) = match relay.data_for_agent(&service, want_agent).await {
                Ok(x) => x,
                Err(why) => {
                    let _ = conn.send(&refuse(why)).await;
                    return;
                }
            };
            let start = VisitMsg::Start {
                conn: id,
                attach: purpose == Purpose::Attach,
                peer,
            };
            if agent.send(&start.to_msg()).await.is_err() {
                let _ = conn
                    .send(&refuse("the agent's data connection failed"))
                    .await;
                return;
            }
            if conn
                .send(
                    &VisitMsg::Ok {
                        stun: SocketAddr::from(([0, 0, 0, 0], 0)),
                        agent: chosen,
                    }
                    .to_msg(),
                )
                .await
                .is_err()
            {
                return;
            }
            inc(&mstats.connections);
            inc(&vs.stats.relay_paths);
            inc(&vs.stats.relay_paths_active);
            let _a = Dec(&vs.stats.relay_paths_active);
            load.fetch_add(1, Ordering::Relaxed);
            let r = bridge(
                conn,
                agent,
                conf.idle_timeout,
                &[&mstats.bytes_up, &vs.stats.relay_path_bytes],
                &[&mstats.bytes_down, &vs.stats.relay_path_bytes],
            )
            .await;
            load.fetch_sub(1, Ordering::Relaxed);
            debug!(%service, %peer, result = ?r, "xnat relay: visitor relay path ended");
        }
        VisitMsg::Join { ticket } => {
            let found = vs.tickets.lock().expect("visit").remove(&ticket);
            let on = vs.direct.lock().expect("visit").clone();
            match (found, on) {
                (Some((_, exp)), Some(on)) if exp > Instant::now() => {
                    inc(&vs.stats.rendezvous);
                    if let Err(e) = on.hub.serve_conn(secure_stream(conn)).await {
                        debug!(%peer, error = %e, "xnat relay: agent rendezvous ended");
                    }
                }
                _ => {
                    let n = inc(&relay.stats().bad_tickets);
                    warn!(%peer, bad_tickets = n, "xnat relay: rendezvous with an unknown or expired ticket");
                }
            }
        }
        other => {
            inc(&relay.stats().protocol_errors);
            warn!(%peer, msg = ?other, "xnat relay: unexpected visitor message");
        }
    }
}

struct Dec<'a>(&'a AtomicU64);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// One direction of [`bridge`]: what the handshake read ahead first, then every
/// record, then the end passed on as a close; each byte counted in `counters`.
async fn one_way(
    rest: Vec<u8>,
    r: &mut crate::secure::SecureRead,
    w: &mut crate::secure::SecureWrite,
    counters: &[&AtomicU64],
    touch: &impl Fn(),
) -> io::Result<()> {
    let count = |n: usize| {
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    if !rest.is_empty() {
        w.write(&rest).await?;
        count(rest.len());
    }
    let mut buf = Vec::new();
    while r.read(&mut buf).await? {
        w.write(&buf).await?;
        count(buf.len());
        touch();
    }
    w.shutdown().await
}

/// Bytes both ways between two secure connections (each direction's end is passed
/// on as a close), until both end, one fails, or nothing moves for `idle`.
async fn bridge(
    a: SecureConn,
    b: SecureConn,
    idle: Duration,
    up: &[&AtomicU64],
    down: &[&AtomicU64],
) -> io::Result<()> {
    let (mut ar, mut aw, arest) = a.split();
    let (mut br, mut bw, brest) = b.split();
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let ab = one_way(arest, &mut ar, &mut bw, up, &touch);
    let ba = one_way(brest, &mut br, &mut aw, down, &touch);
    let watchdog = async {
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::time::sleep(tick).await;
            let since = start.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
            if since >= idle.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(ab, ba) } => r.map(|_| ()),
        _ = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
    }
}

// ---------------------------------------------------------------------------------
// Agent side

/// Agent counters of visitor connections and direct paths.
#[derive(Debug, Default)]
pub struct AgentVisitStats {
    /// Visitor connections opened to the local service.
    pub connections: AtomicU64,
    /// Paths attached to a connection the agent holds (upgrades and fallbacks).
    pub attached: AtomicU64,
    /// Paths for a connection id the agent does not hold (refused).
    pub unknown: AtomicU64,
    /// Punch attempts (requests from the relay).
    pub punches: AtomicU64,
    /// Direct (QUIC) sessions established.
    pub direct_up: AtomicU64,
    /// Failed attempts after which the router's UPnP-IGD answered (its search ran
    /// past the attempt): announced to the relay ([`Purpose::Mapped`]) so that the
    /// waiting visitors punch again, now with a mapped, public port on this side.
    pub mapped_late: AtomicU64,
}

/// The agent's visitor state (one per agent).
pub(crate) struct AgentVisit {
    conns: Mutex<HashMap<[u8; CONN_ID_LEN], PathTx>>,
    /// Services whose failed attempt waits for the router's IGD search (one watch each).
    watching: Mutex<std::collections::HashSet<String>>,
    identity: Option<Arc<Identity>>,
    punching: Arc<tokio::sync::Semaphore>,
    direct: Arc<tokio::sync::Semaphore>,
    /// What this agent's port-mapping searches learned about its router's IGD.
    igd: zs_punch::portmap::IgdMemory,
    pub(crate) stats: AgentVisitStats,
}

impl Default for AgentVisit {
    fn default() -> Self {
        AgentVisit {
            conns: Mutex::default(),
            watching: Mutex::default(),
            identity: Identity::generate().ok().map(Arc::new),
            punching: Arc::new(tokio::sync::Semaphore::new(AGENT_PUNCHES)),
            direct: Arc::new(tokio::sync::Semaphore::new(AGENT_DIRECT)),
            igd: zs_punch::portmap::IgdMemory::new(),
            stats: AgentVisitStats::default(),
        }
    }
}

impl crate::Agent {
    /// Counters of visitor connections and direct paths.
    pub fn visit_stats(&self) -> &AgentVisitStats {
        &self.visit_side().stats
    }
}

/// A visitor path reached the agent: attach it to the connection it belongs to, or
/// (`attach == false`) open the service for a new connection.
async fn agent_path(
    agent: &crate::Agent,
    id: [u8; CONN_ID_LEN],
    attach: bool,
    path: BoxPath,
    prio: u8,
    local_addr: String,
) {
    let vs = agent.visit_side();
    let deadline = Instant::now() + ATTACH_WAIT;
    let mut path = Some(path);
    loop {
        let tx = vs.conns.lock().expect("visit").get(&id).cloned();
        if let Some(tx) = tx {
            inc(&vs.stats.attached);
            let _ = tx.send((path.take().expect("once"), prio)).await;
            return;
        }
        if !attach {
            break;
        }
        if Instant::now() >= deadline {
            let n = inc(&vs.stats.unknown);
            info!(unknown = n, "xnat agent: a visitor path for a connection this agent does not hold (another agent, or it ended)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let local = match tokio::time::timeout(STEP, TcpStream::connect(&local_addr)).await {
        Ok(Ok(t)) => t,
        other => {
            let n = inc(&agent.stats().local_failures);
            warn!(local_addr = %local_addr, result = ?other.map(|r| r.map(|_| ())), local_failures = n, "xnat agent: local service unreachable for a visitor");
            return;
        }
    };
    let _ = local.set_nodelay(true);
    let (tx, rx) = mpsc::channel(4);
    {
        let mut c = vs.conns.lock().expect("visit");
        if c.contains_key(&id) {
            return; // a duplicate open
        }
        c.insert(id, tx.clone());
    }
    inc(&vs.stats.connections);
    inc(&agent.stats().forwarded);
    let _ = tx.send((path.take().expect("once"), prio)).await;
    drop(tx);
    let r = migrate::run_prio(local, rx, ConnConfig::default()).await;
    vs.conns.lock().expect("visit").remove(&id);
    debug!(result = ?r, "xnat agent: visitor connection ended");
}

/// The agent's hook for a data connection whose `Start` is a visitor's.
pub(crate) async fn agent_data(
    agent: &crate::Agent,
    conn: SecureConn,
    service: &str,
    local_addr: &str,
    body: Vec<u8>,
) {
    match VisitMsg::decode(&body) {
        Ok(VisitMsg::Start {
            conn: id, attach, ..
        }) => {
            let path: BoxPath = Box::new(secure_stream(conn));
            agent_path(agent, id, attach, path, PRIO_RELAY, local_addr.to_string()).await;
        }
        other => {
            warn!(%service, msg = ?other, "xnat agent: unexpected visitor message on a data connection");
        }
    }
}

/// The agent's hook for a visitor message on its control session.
pub(crate) fn agent_control(agent: &crate::Agent, relay_addr: &str, body: Vec<u8>) {
    let Ok(VisitMsg::PunchRequest {
        service,
        ticket,
        stun,
    }) = VisitMsg::decode(&body)
    else {
        warn!(relay = %relay_addr, "xnat agent: unexpected visitor message on the control session");
        return;
    };
    let Some(svc) = agent.services().get(&service).cloned() else {
        return;
    };
    let vs = agent.visit_side();
    let (Some(id), Ok(permit)) = (vs.identity.clone(), vs.punching.clone().try_acquire_owned())
    else {
        info!(%service, "xnat agent: punch request ignored (attempts in progress)");
        return;
    };
    inc(&vs.stats.punches);
    let agent = agent.clone();
    let addr = relay_addr.to_string();
    tokio::spawn(async move {
        let r = agent_punch(&agent, &addr, &service, &svc, ticket, stun, &id, permit).await;
        if let Err(e) = r {
            info!(%service, error = %e, "xnat agent: no direct path");
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn agent_punch(
    agent: &crate::Agent,
    relay_addr: &str,
    service: &str,
    svc: &crate::config::ClientService,
    ticket: [u8; 16],
    stun: SocketAddr,
    id: &Identity,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let vs = agent.visit_side();
    let mut conn = agent.connect(relay_addr).await.map_err(|e| e.to_string())?;
    conn.send(&VisitMsg::Join { ticket }.to_msg())
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = secure_stream(conn);
    let (sock, factory) = punch_socket(stun)?;
    let igd_before = vs.igd.known_for_default_gateway();
    let a = zs_punch::peer::Attempt {
        side: PunchSide::Agent,
        pair_key: pair_key(service, &svc.token),
        fingerprint: id.fingerprint(),
        stun,
        punch: Default::default(),
        classify: Default::default(),
        port_mapping: Some(Default::default()),
        igd_memory: vs.igd.clone(),
    };
    let res = zs_punch::peer::run_attempt(&a, sock, &mut stream, &*factory).await;
    drop(permit);
    // No direct path and no port mapping while the router's UPnP-IGD search was still
    // running: if it finds the IGD, the next attempt is public; say so (the visitor
    // would otherwise wait for its `direct_retry`, x10 after "relay only").
    let unmapped = res.as_ref().map_or(true, |r| r.mapping.is_none());
    let failed = res.as_ref().map_or(true, |r| r.path.is_err());
    if failed && unmapped && igd_before != Some(true) {
        let (agent, relay, service) = (agent.clone(), relay_addr.to_string(), service.to_string());
        let token = svc.token.clone();
        tokio::spawn(async move { agent_watch_igd(&agent, &relay, &service, &token).await });
    }
    let res = res.map_err(|e| e.to_string())?;
    // The router's port mapping (if any) lives as long as the direct path.
    let lease = res.mapping;
    let punched = res.path.map_err(|e| e.to_string())?;
    let slot = vs
        .direct
        .clone()
        .try_acquire_owned()
        .map_err(|_| "too many direct sessions".to_string())?;
    let (ep, qc) = quic::accept(punched.socket, id, res.plan.peer_fingerprint, limits())
        .await
        .map_err(|e| e.to_string())?;
    inc(&vs.stats.direct_up);
    info!(%service, mode = ?punched.mode, peer = %punched.peer, "xnat agent: direct path up");
    let local_addr = svc.local_addr.clone();
    while let Ok((send, mut recv)) = qc.accept_bi().await {
        let agent = agent.clone();
        let local_addr = local_addr.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 4 + CONN_ID_LEN + 1];
            let ok = tokio::time::timeout(STEP, recv.read_exact(&mut head))
                .await
                .is_ok_and(|r| r.is_ok());
            if !ok || &head[..4] != STREAM_MAGIC || head[20] > 1 {
                let mut send = send;
                let _ = send.reset(quinn::VarInt::from_u32(1));
                return;
            }
            let mut cid = [0u8; CONN_ID_LEN];
            cid.copy_from_slice(&head[4..20]);
            let path: BoxPath = Box::new(tokio::io::join(recv, send));
            agent_path(&agent, cid, head[20] == 1, path, PRIO_DIRECT, local_addr).await;
        });
    }
    drop((ep, slot));
    if let Some(l) = lease {
        let _ = l.release().await;
    }
    info!(%service, "xnat agent: direct path closed");
    Ok(())
}

/// After an attempt of `service` that failed without a port mapping: waits (at most
/// [`AGENT_IGD_WATCH`]) for the router's UPnP-IGD search that attempt started; when
/// it found the IGD, tells the relay ([`Purpose::Mapped`], proving the service's
/// token) so that visitors waiting on the mapping punch again at once. The next
/// attempt maps through the remembered IGD without a search (`portmap::map_udp_now`).
async fn agent_watch_igd(agent: &crate::Agent, relay_addr: &str, service: &str, token: &str) {
    let vs = agent.visit_side();
    if !vs
        .watching
        .lock()
        .expect("visit")
        .insert(service.to_string())
    {
        return; // this service's watch runs already
    }
    let end = Instant::now() + AGENT_IGD_WATCH;
    let found = loop {
        match vs.igd.known_for_default_gateway() {
            Some(k) => break k,
            None if Instant::now() >= end => break false,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    vs.watching.lock().expect("visit").remove(service);
    if !found {
        return;
    }
    let n = inc(&vs.stats.mapped_late);
    info!(%service, mapped_late = n, "xnat agent: the router's UPnP-IGD answered after the attempt; asking the visitors to punch again");
    let r = async {
        let mut conn = agent.connect(relay_addr).await?;
        hello(
            &mut conn,
            token,
            Purpose::Mapped,
            service,
            [0; CONN_ID_LEN],
            0,
        )
        .await
    }
    .await;
    if let Err(e) = r {
        info!(%service, error = %e, "xnat agent: could not announce the mapped port");
    }
}

/// QUIC limits of direct paths: a short idle timeout so that a dead path is left for
/// the relay within seconds.
fn limits() -> QuicLimits {
    QuicLimits {
        idle_timeout: Duration::from_secs(3),
        keep_alive: Duration::from_millis(700),
        ..Default::default()
    }
}

type Factory = Arc<zs_punch::punch::SocketFactory>;

/// A UDP socket for punching (on the address that routes towards `stun`) and a
/// factory of more like it (birthday mode).
fn punch_socket(stun: SocketAddr) -> Result<(tokio::net::UdpSocket, Factory), String> {
    let ip = zs_punch::stun::local_ip_towards(stun).unwrap_or_else(|| IpAddr::from([0, 0, 0, 0]));
    let s = std::net::UdpSocket::bind((ip, 0)).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let s = tokio::net::UdpSocket::from_std(s).map_err(|e| e.to_string())?;
    let f: Factory = Arc::new(move |n: usize| {
        (0..n)
            .map(|_| std::net::UdpSocket::bind((ip, 0)))
            .collect::<io::Result<Vec<_>>>()
    });
    Ok((s, f))
}

// ---------------------------------------------------------------------------------
// Visitor

/// `[visitor]`: a local port for one mapping of a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisitorConfig {
    /// `remote_addr`: the relay (its agent port).
    pub remote_addr: String,
    /// `relay_fingerprint`: the pinned relay key.
    pub relay_fingerprint: Fingerprint,
    /// `service`: the mapping's name.
    pub service: String,
    /// `token`: the mapping's token (proved, never sent).
    pub token: String,
    /// `bind_addr`: the local port.
    pub bind_addr: SocketAddr,
    /// `direct`: punch direct paths (default true).
    pub direct: bool,
    /// `port_mapping`: ask the local router for a public port (PCP, NAT-PMP, UPnP-IGD)
    /// before punching (default true; zs-punch `portmap`).
    pub port_mapping: bool,
    /// `direct_retry`: seconds between punch attempts after a failure (default 30;
    /// ten times that after a "relay only" answer).
    pub direct_retry: Duration,
    /// `max_connections`: local connections at once (default 1024).
    pub max_connections: usize,
}

impl VisitorConfig {
    /// Reads `[visitor]` of `path`.
    pub fn load(path: &Path) -> Result<VisitorConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        VisitorConfig::parse(&text, &file)
    }

    /// Parses `[visitor]` of `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<VisitorConfig, ConfigError> {
        let e = |key: &str, m: String| ConfigError {
            file: file.to_string(),
            key: key.to_string(),
            message: m,
        };
        let root: toml::Table = text
            .parse()
            .map_err(|x: toml::de::Error| e("", format!("not valid TOML: {}", x.message())))?;
        let Some(v) = root.get("visitor").and_then(|v| v.as_table()) else {
            return Err(e("visitor", "expected a [visitor] table".into()));
        };
        const KNOWN: &[&str] = &[
            "remote_addr",
            "relay_fingerprint",
            "service",
            "token",
            "bind_addr",
            "direct",
            "direct_retry",
            "max_connections",
            "port_mapping",
        ];
        for k in v.keys() {
            if !KNOWN.contains(&k.as_str()) {
                return Err(e(
                    &format!("visitor.{k}"),
                    format!("unknown key; expected one of {}", KNOWN.join(", ")),
                ));
            }
        }
        let s = |k: &str, what: &str| -> Result<String, ConfigError> {
            match v.get(k) {
                Some(toml::Value::String(x)) if !x.is_empty() => Ok(x.clone()),
                Some(x) => Err(e(
                    &format!("visitor.{k}"),
                    format!("expected {what}, got {x}"),
                )),
                None => Err(e(&format!("visitor.{k}"), format!("required: {what}"))),
            }
        };
        let n = |k: &str, default: u64, max: u64| -> Result<u64, ConfigError> {
            match v.get(k) {
                None => Ok(default),
                Some(toml::Value::Integer(i)) if *i >= 1 && (*i as u64) <= max => Ok(*i as u64),
                Some(x) => Err(e(
                    &format!("visitor.{k}"),
                    format!("expected an integer from 1 to {max}, got {x}"),
                )),
            }
        };
        let fp = s("relay_fingerprint", "the relay's \"sha3-256:<64 hex>\"")?;
        let relay_fingerprint = fp.parse::<Fingerprint>().map_err(|_| {
            e(
                "visitor.relay_fingerprint",
                format!("expected \"sha3-256:<64 hex>\" (printed by the relay), got {fp:?}"),
            )
        })?;
        let service = s("service", "the mapping's name")?;
        if service.len() > MAX_NAME {
            return Err(e(
                "visitor.service",
                "expected a service name of 1 to 128 bytes".into(),
            ));
        }
        let bind = s("bind_addr", "a local address like \"127.0.0.1:8080\"")?;
        let bind_addr = bind.parse().map_err(|_| {
            e(
                "visitor.bind_addr",
                format!("expected a socket address like \"127.0.0.1:8080\", got {bind:?}"),
            )
        })?;
        let port_mapping = match v.get("port_mapping") {
            None => true,
            Some(toml::Value::Boolean(b)) => *b,
            Some(x) => {
                return Err(e(
                    "visitor.port_mapping",
                    format!("expected true or false, got {x}"),
                ))
            }
        };
        let direct = match v.get("direct") {
            None => true,
            Some(toml::Value::Boolean(b)) => *b,
            Some(x) => {
                return Err(e(
                    "visitor.direct",
                    format!("expected true or false, got {x}"),
                ))
            }
        };
        Ok(VisitorConfig {
            remote_addr: s(
                "remote_addr",
                "the relay's address like \"relay.example:2333\"",
            )?,
            relay_fingerprint,
            service,
            token: s("token", "the mapping's token")?,
            bind_addr,
            direct,
            port_mapping,
            direct_retry: Duration::from_secs(n("direct_retry", 30, 86_400)?),
            max_connections: n("max_connections", 1024, 1_000_000)? as usize,
        })
    }
}

/// Visitor counters.
#[derive(Debug, Default)]
pub struct VisitorStats {
    /// Local connections accepted.
    pub connections: AtomicU64,
    /// Local connections refused (max_connections).
    pub refused: AtomicU64,
    /// Connections started on the direct path.
    pub started_direct: AtomicU64,
    /// Connections started on the relay.
    pub started_relayed: AtomicU64,
    /// Live connections moved to a new direct path.
    pub upgraded: AtomicU64,
    /// Relay paths opened for live connections after the direct path died.
    pub fell_back: AtomicU64,
    /// Punch attempts.
    pub punch_attempts: AtomicU64,
    /// Direct paths established.
    pub direct_up: AtomicU64,
    /// Direct paths lost.
    pub direct_lost: AtomicU64,
    /// Relay paths that could not be opened.
    pub relay_failures: AtomicU64,
    /// [`VisitMsg::Again`] received on a wait session (an agent's router mapped a
    /// port after a failed attempt).
    pub again: AtomicU64,
}

/// A failed attempt in the visitor's direct loop.
struct Backoff {
    /// When to try again anyway.
    until: Instant,
    /// Whether our router's IGD was known when it started.
    had_igd: bool,
    /// When it started.
    tried: Instant,
    /// Its wait session's task.
    wait: tokio::task::AbortHandle,
}

struct Live {
    paths: PathTx,
    has_relay: bool,
    /// The relay's id of the agent that holds it (0 until known).
    agent: u64,
}

struct VInner {
    cfg: VisitorConfig,
    crypto: Arc<CryptoClient>,
    identity: Identity,
    listener: Mutex<Option<TcpListener>>,
    addr: SocketAddr,
    conns: Mutex<HashMap<[u8; CONN_ID_LEN], Live>>,
    /// Direct paths by the relay's id of the agent at their other end.
    direct: Mutex<HashMap<u64, quinn::Connection>>,
    stats: VisitorStats,
    slots: Arc<tokio::sync::Semaphore>,
    lost: tokio::sync::Notify,
    /// Keys of the direct loop's failed attempts whose wait session got `Again`.
    again: Mutex<std::collections::HashSet<u64>>,
    /// What this visitor's port-mapping searches learned about its router's IGD.
    igd: zs_punch::portmap::IgdMemory,
    /// Tests: the router's IGD counts as known (no router on loopback to find).
    #[cfg(test)]
    test_igd: std::sync::atomic::AtomicBool,
}

/// A visitor on a runtime of its own (for programs without tokio, e.g. through the
/// `zserver` facade): dropping it stops it.
pub struct RunningVisitor {
    rt: Option<tokio::runtime::Runtime>,
    visitor: Visitor,
}

impl RunningVisitor {
    /// Binds the local port of `cfg` and serves it (and punches) on two worker threads.
    pub fn start(cfg: VisitorConfig) -> io::Result<RunningVisitor> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("zs-xnat-visit")
            .enable_all()
            .build()?;
        let visitor = rt.block_on(Visitor::bind(cfg))?;
        rt.spawn(visitor.clone().run());
        Ok(RunningVisitor {
            rt: Some(rt),
            visitor,
        })
    }

    /// The visitor.
    pub fn visitor(&self) -> &Visitor {
        &self.visitor
    }
}

impl Drop for RunningVisitor {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Why [`Visitor::punch`] found no direct path.
#[derive(Debug, Clone)]
pub struct PunchFailed {
    /// What happened.
    pub reason: String,
    /// The rendezvous expects no direct path for this NAT pair (both hard).
    pub relay_only: bool,
    /// The relay's id of the agent asked (0 when the relay was not reached).
    pub agent: u64,
}

impl std::fmt::Display for PunchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A visitor (`zs xnat visit`). Cheap to clone.
#[derive(Clone)]
pub struct Visitor {
    inner: Arc<VInner>,
}

impl Visitor {
    /// Binds the local port of `cfg`.
    pub async fn bind(cfg: VisitorConfig) -> io::Result<Visitor> {
        let listener = TcpListener::bind(cfg.bind_addr).await?;
        let addr = listener.local_addr()?;
        let identity = Identity::generate().map_err(io::Error::other)?;
        Ok(Visitor {
            inner: Arc::new(VInner {
                crypto: Arc::new(CryptoClient::pinned(cfg.relay_fingerprint)),
                identity,
                listener: Mutex::new(Some(listener)),
                addr,
                conns: Mutex::default(),
                direct: Mutex::default(),
                stats: VisitorStats::default(),
                slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
                lost: tokio::sync::Notify::new(),
                again: Mutex::default(),
                igd: zs_punch::portmap::IgdMemory::new(),
                #[cfg(test)]
                test_igd: Default::default(),
                cfg,
            }),
        })
    }

    /// The local port.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Counters.
    pub fn stats(&self) -> &VisitorStats {
        &self.inner.stats
    }

    /// Whether a direct path (to any agent) is up now.
    pub fn is_direct(&self) -> bool {
        self.direct_paths() > 0
    }

    /// Direct paths up now (one per agent at most).
    pub fn direct_paths(&self) -> usize {
        self.inner
            .direct
            .lock()
            .expect("visitor")
            .values()
            .filter(|c| c.close_reason().is_none())
            .count()
    }

    /// Closes the direct paths now (as if they died): live connections continue on
    /// the relay. For tests and operators; punching resumes after `direct_retry`.
    pub fn drop_direct(&self) {
        for (_, c) in self.inner.direct.lock().expect("visitor").drain() {
            c.close(0u32.into(), b"dropped");
        }
    }

    /// Serves the local port (and punches in the background) until dropped.
    pub async fn run(self) -> io::Result<()> {
        let listener = self
            .inner
            .listener
            .lock()
            .expect("visitor")
            .take()
            .ok_or_else(|| io::Error::other("visitor already running"))?;
        let mut tasks = tokio::task::JoinSet::new();
        if self.inner.cfg.direct {
            tasks.spawn(self.clone().direct_loop());
        }
        info!(addr = %self.inner.addr, relay = %self.inner.cfg.remote_addr, service = %self.inner.cfg.service, "xnat visitor: listening");
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "xnat visitor: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = self.inner.slots.clone().try_acquire_owned() else {
                let n = inc(&self.inner.stats.refused);
                warn!(%peer, refused = n, max_connections = self.inner.cfg.max_connections, "xnat visitor: local connection refused (max_connections)");
                continue;
            };
            inc(&self.inner.stats.connections);
            let me = self.clone();
            tokio::spawn(async move {
                me.conn(tcp).await;
                drop(slot);
            });
            while tasks.try_join_next().is_some() {}
        }
    }

    async fn conn(&self, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        let id: [u8; CONN_ID_LEN] = random();
        let (tx, rx) = mpsc::channel(4);
        // Any live direct path: the agent at its end opens the service.
        let direct = self
            .inner
            .direct
            .lock()
            .expect("visitor")
            .iter()
            .find(|(_, c)| c.close_reason().is_none())
            .map(|(a, c)| (*a, c.clone()));
        let mut on_direct = None;
        if let Some((agent, qc)) = direct {
            if let Ok(p) = open_stream(&qc, &id, false).await {
                let _ = tx.send((p, PRIO_DIRECT)).await;
                on_direct = Some(agent);
                inc(&self.inner.stats.started_direct);
            }
        }
        self.inner.conns.lock().expect("visitor").insert(
            id,
            Live {
                paths: tx.clone(),
                has_relay: on_direct.is_none(),
                agent: on_direct.unwrap_or(0),
            },
        );
        if on_direct.is_none() {
            inc(&self.inner.stats.started_relayed);
            let me = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move { me.relay_path(id, Purpose::Open, 0, tx).await });
        }
        drop(tx);
        let r = migrate::run_prio(tcp, rx, ConnConfig::default()).await;
        self.inner.conns.lock().expect("visitor").remove(&id);
        debug!(result = ?r, "xnat visitor: connection ended");
    }

    /// Opens a relay path for connection `id` (to agent `want` when not 0) and hands
    /// it to its driver. An open path learns which agent holds the connection; if a
    /// direct path to that agent is up already, the connection gets a stream on it.
    async fn relay_path(&self, id: [u8; CONN_ID_LEN], purpose: Purpose, want: u64, tx: PathTx) {
        match self.session(purpose, id, want).await {
            Ok((conn, _, agent)) => {
                let _ = tx.send((Box::new(secure_stream(conn)), PRIO_RELAY)).await;
                if purpose == Purpose::Open {
                    if let Some(l) = self.inner.conns.lock().expect("visitor").get_mut(&id) {
                        l.agent = agent;
                    }
                    let qc = self
                        .inner
                        .direct
                        .lock()
                        .expect("visitor")
                        .get(&agent)
                        .cloned();
                    match qc.filter(|c| c.close_reason().is_none()) {
                        Some(qc) => {
                            if let Ok(p) = open_stream(&qc, &id, true).await {
                                if tx.send((p, PRIO_DIRECT)).await.is_ok() {
                                    inc(&self.inner.stats.upgraded);
                                }
                            }
                        }
                        // An agent without a direct path: the punch loop looks now.
                        None => self.inner.lost.notify_waiters(),
                    }
                }
            }
            Err(e) => {
                let n = inc(&self.inner.stats.relay_failures);
                warn!(error = %e, relay_failures = n, "xnat visitor: no relay path; a connection without a direct path is closed now");
                // Dropping the connection's path sender (with ours) tells its driver
                // no path is coming: without one it fails at once (not after
                // `pathless_timeout`); with a direct path it carries on.
                self.inner.conns.lock().expect("visitor").remove(&id);
            }
        }
    }

    /// A secure session to the relay that passed `Hello` (returns the `Ok`'s STUN
    /// and agent).
    async fn session(
        &self,
        purpose: Purpose,
        id: [u8; CONN_ID_LEN],
        want: u64,
    ) -> io::Result<(SecureConn, SocketAddr, u64)> {
        let c = &self.inner.cfg;
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(&c.remote_addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let mut conn = SecureConn::connect(tcp, self.inner.crypto.clone(), STEP).await?;
        let (stun, agent) = hello(&mut conn, &c.token, purpose, &c.service, id, want).await?;
        Ok((conn, stun, agent))
    }

    /// Keeps a direct path to every agent that holds a live connection (and, with
    /// none, to any agent so that new connections start direct): punches each one
    /// missing, one at a time (the hub pairs by mapping), again after `direct_retry`
    /// when it failed (ten times that after a "relay only" answer), or at once when
    /// a router's UPnP-IGD answered after the failed attempt: ours (seen here) or
    /// the agent's (the relay's `Again` on a wait session opened after the failure).
    async fn direct_loop(self) {
        let retry = self.inner.cfg.direct_retry;
        // Key (the agent asked; 0 any) -> the failed attempt's backoff.
        let mut next: HashMap<u64, Backoff> = HashMap::new();
        let mut waits = tokio::task::JoinSet::new();
        loop {
            let now = Instant::now();
            // An attempt does not wait for the UPnP-IGD search; an IGD it found
            // afterwards makes this side public, so try again at once (the upgrade).
            let igd = self.igd_known();
            let mut again = std::mem::take(&mut *self.inner.again.lock().expect("visitor"));
            next.retain(|key, b| {
                let upgrade = igd && !b.had_igd;
                if upgrade {
                    info!(agent = key, "xnat visitor: the router's UPnP-IGD answered after the attempt; punching again with a mapped port");
                }
                // The agent's router mapped a port: at once, but not more often than
                // AGAIN_MIN_GAP (the flag stays until then).
                let woken = again.contains(key) && now >= b.tried + AGAIN_MIN_GAP;
                if woken {
                    again.remove(key);
                    info!(agent = key, "xnat visitor: the agent's router mapped a port after the attempt; punching again");
                }
                let keep = b.until > now && !upgrade && !woken;
                if !keep {
                    b.wait.abort();
                    again.remove(key);
                }
                keep
            });
            self.inner.again.lock().expect("visitor").extend(again);
            while waits.try_join_next().is_some() {}
            for want in self.punch_targets() {
                if next.contains_key(&want) {
                    continue;
                }
                let tried = Instant::now();
                // Whether the IGD was known when the attempt started: one that answers
                // while the attempt runs (it does not wait for the search) must still
                // trigger the upgrade, so this is read before the attempt, not after.
                let had_igd = self.igd_known();
                if let Err(e) = self.punch_agent(want).await {
                    let wait = if e.relay_only { retry * 10 } else { retry };
                    info!(error = %e.reason, agent = want, retry_in_s = wait.as_secs(), "xnat visitor: no direct path; connections go through the relay");
                    let until = Instant::now() + wait;
                    let w = waits.spawn(self.clone().wait_again(want, e.agent, until));
                    next.insert(
                        want,
                        Backoff {
                            until,
                            had_igd,
                            tried,
                            wait: w,
                        },
                    );
                }
            }
            // New connections (of another agent), a lost path or an `Again` wake us
            // early.
            let _ =
                tokio::time::timeout(Duration::from_millis(500), self.inner.lost.notified()).await;
        }
    }

    /// After a failed attempt (loop key `key`, agent `agent`): holds a wait session
    /// with the relay until `until`; an `Again` on it (the agent's router mapped a
    /// port) flags `key` for the loop and wakes it. A session the relay ends without
    /// one is opened again if it lasted a minute at least (else we stop waiting: the
    /// loop's timer still retries).
    async fn wait_again(self, key: u64, agent: u64, until: Instant) {
        loop {
            let opened = Instant::now();
            if opened >= until {
                return;
            }
            let mut conn = match self.session(Purpose::Wait, [0; CONN_ID_LEN], agent).await {
                Ok((conn, _, _)) => conn,
                Err(e) => {
                    debug!(error = %e, "xnat visitor: no wait session (the relay does not offer one)");
                    return;
                }
            };
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, conn.recv()).await {
                Ok(Ok(Msg::Visit { body })) if VisitMsg::decode(&body) == Ok(VisitMsg::Again) => {
                    inc(&self.inner.stats.again);
                    self.inner.again.lock().expect("visitor").insert(key);
                    self.inner.lost.notify_waiters();
                    return;
                }
                Err(_) => return, // the loop's own retry time came
                _ if opened.elapsed() < Duration::from_secs(60) => return,
                _ => {}
            }
        }
    }

    /// Whether a port-mapping search of an earlier attempt found our default
    /// gateway's UPnP-IGD (then the next attempt maps through it at once).
    fn igd_known(&self) -> bool {
        #[cfg(test)]
        if self.inner.test_igd.load(Ordering::Relaxed) {
            return true;
        }
        self.inner.cfg.port_mapping && self.inner.igd.known_for_default_gateway() == Some(true)
    }

    /// Agents to punch with now: those holding a live connection without a live
    /// direct path to them; with no direct path at all and none known, "any" (0).
    fn punch_targets(&self) -> Vec<u64> {
        let direct: Vec<u64> = self
            .inner
            .direct
            .lock()
            .expect("visitor")
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .map(|(a, _)| *a)
            .collect();
        let mut want: Vec<u64> = self
            .inner
            .conns
            .lock()
            .expect("visitor")
            .values()
            .map(|l| l.agent)
            .filter(|a| *a != 0 && !direct.contains(a))
            .collect();
        want.sort_unstable();
        want.dedup();
        if want.is_empty() && direct.is_empty() {
            want.push(0);
        }
        want
    }

    /// Resolves once no direct path is up.
    pub async fn direct_lost(&self) {
        loop {
            let up: Vec<quinn::Connection> = self
                .inner
                .direct
                .lock()
                .expect("visitor")
                .values()
                .cloned()
                .collect();
            if up.is_empty() {
                return;
            }
            for qc in up {
                qc.closed().await;
            }
            // The watchers of `punch_agent` clear the slots and move connections back.
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.inner.lost.notified()).await;
        }
    }

    /// One punch attempt now with any agent of the mapping (with `direct = true`,
    /// [`Visitor::run`] does this in the background): on success the live
    /// connections that agent holds move to the direct path, new ones start on it,
    /// and when it dies they continue on the relay.
    pub async fn punch(&self) -> Result<(), PunchFailed> {
        self.punch_agent(0).await.map(|_| ())
    }

    /// One punch attempt for each agent that holds a live connection without a
    /// direct path to it (what the background loop does); the count made.
    pub async fn punch_held(&self) -> Result<usize, PunchFailed> {
        let mut n = 0;
        for want in self.punch_targets().into_iter().filter(|a| *a != 0) {
            self.punch_agent(want).await?;
            n += 1;
        }
        Ok(n)
    }

    /// One punch attempt with agent `want` (the relay's id; 0 any): returns the
    /// agent's id.
    pub async fn punch_agent(&self, want: u64) -> Result<u64, PunchFailed> {
        let (qc, agent) = self
            .punch_once(want)
            .await
            .map_err(|(reason, relay_only, agent)| PunchFailed {
                reason,
                relay_only,
                agent,
            })?;
        let me = self.clone();
        tokio::spawn(async move {
            let reason = qc.closed().await;
            {
                let mut d = me.inner.direct.lock().expect("visitor");
                if d.get(&agent)
                    .is_some_and(|c| c.stable_id() == qc.stable_id())
                {
                    d.remove(&agent);
                }
            }
            let n = inc(&me.inner.stats.direct_lost);
            warn!(%reason, agent, direct_lost = n, "xnat visitor: direct path lost; connections continue on the relay");
            me.fall_back(agent).await;
            me.inner.lost.notify_waiters();
        });
        Ok(agent)
    }

    async fn punch_once(&self, want: u64) -> Result<(quinn::Connection, u64), (String, bool, u64)> {
        inc(&self.inner.stats.punch_attempts);
        let c = &self.inner.cfg;
        let (conn, stun, agent) = self
            .session(Purpose::Punch, [0; CONN_ID_LEN], want)
            .await
            .map_err(|e| (e.to_string(), false, 0))?;
        let mut stream = secure_stream(conn);
        let (sock, factory) = punch_socket(stun).map_err(|e| (e, false, agent))?;
        let a = zs_punch::peer::Attempt {
            side: PunchSide::Visitor,
            pair_key: pair_key(&c.service, &c.token),
            fingerprint: self.inner.identity.fingerprint(),
            stun,
            punch: Default::default(),
            classify: Default::default(),
            port_mapping: c.port_mapping.then(Default::default),
            igd_memory: self.inner.igd.clone(),
        };
        let res = zs_punch::peer::run_attempt(&a, sock, &mut stream, &*factory)
            .await
            .map_err(|e| (e.to_string(), false, agent))?;
        let lease = res.mapping;
        let punched = match res.path {
            Ok(p) => p,
            Err(e) => {
                let relay_only = matches!(e, zs_punch::punch::PunchError::RelayOnly);
                return Err((e.to_string(), relay_only, agent));
            }
        };
        let (ep, qc) = quic::connect(
            punched.socket,
            punched.peer,
            &self.inner.identity,
            res.plan.peer_fingerprint,
            limits(),
        )
        .await
        .map_err(|e| (e.to_string(), false, agent))?;
        // The endpoint lives as long as the connection.
        let qc2 = qc.clone();
        tokio::spawn(async move {
            qc2.closed().await;
            drop(ep);
            if let Some(l) = lease {
                let _ = l.release().await;
            }
        });
        let n = inc(&self.inner.stats.direct_up);
        info!(mode = ?punched.mode, peer = %punched.peer, agent, direct_up = n, "xnat visitor: direct path up");
        if let Some(old) = self
            .inner
            .direct
            .lock()
            .expect("visitor")
            .insert(agent, qc.clone())
        {
            old.close(0u32.into(), b"replaced");
        }
        // Move the live connections this agent holds.
        let live: Vec<_> = self
            .inner
            .conns
            .lock()
            .expect("visitor")
            .iter()
            .filter(|(_, v)| v.agent == agent)
            .map(|(k, v)| (*k, v.paths.clone()))
            .collect();
        for (id, tx) in live {
            if let Ok(p) = open_stream(&qc, &id, true).await {
                if tx.send((p, PRIO_DIRECT)).await.is_ok() {
                    inc(&self.inner.stats.upgraded);
                }
            }
        }
        Ok((qc, agent))
    }

    /// The direct path to `agent` died: its connections without a relay path get
    /// one (to that agent, which holds them).
    async fn fall_back(&self, agent: u64) {
        let need: Vec<_> = {
            let mut c = self.inner.conns.lock().expect("visitor");
            c.iter_mut()
                .filter(|(_, v)| !v.has_relay && v.agent == agent)
                .map(|(k, v)| {
                    v.has_relay = true;
                    (*k, v.paths.clone())
                })
                .collect()
        };
        for (id, tx) in need {
            inc(&self.inner.stats.fell_back);
            let me = self.clone();
            tokio::spawn(async move { me.relay_path(id, Purpose::Attach, agent, tx).await });
        }
    }
}

async fn open_stream(
    qc: &quinn::Connection,
    id: &[u8; CONN_ID_LEN],
    attach: bool,
) -> io::Result<BoxPath> {
    let (mut send, recv) = qc.open_bi().await.map_err(io::Error::other)?;
    let mut head = Vec::with_capacity(21);
    head.extend_from_slice(STREAM_MAGIC);
    head.extend_from_slice(id);
    head.push(u8::from(attach));
    send.write_all(&head).await.map_err(io::Error::other)?;
    Ok(Box::new(tokio::io::join(recv, send)))
}

/// Runs the visitor of config file `path` on a new tokio runtime until the process
/// ends (the `zs xnat visit` verb).
pub fn run_visitor_file(path: &Path) -> Result<(), String> {
    let cfg = VisitorConfig::load(path).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let v = Visitor::bind(cfg.clone())
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind_addr))?;
        println!(
            "zs xnat visit: {} -> service {:?} through {}{}",
            v.local_addr(),
            cfg.service,
            cfg.remote_addr,
            if cfg.direct {
                " (direct paths when they can be punched)"
            } else {
                " (relay only)"
            }
        );
        v.run().await.map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<VisitMsg> {
        let hello = |purpose, conn, proof, agent| VisitMsg::Hello {
            purpose,
            service: "web".into(),
            conn,
            proof,
            agent,
        };
        vec![
            hello(Purpose::Attach, [7; 16], [9; 32], 0x0102),
            VisitMsg::Ok {
                stun: "198.19.0.2:3478".parse().unwrap(),
                agent: 2,
            },
            VisitMsg::Refused {
                reason: "wrong token".into(),
            },
            VisitMsg::Start {
                conn: [1; 16],
                attach: true,
                peer: "[2001:db8::1]:5000".parse().unwrap(),
            },
            VisitMsg::PunchRequest {
                service: "web".into(),
                ticket: [3; 16],
                stun: "198.19.0.2:3478".parse().unwrap(),
            },
            VisitMsg::Join { ticket: [4; 16] },
            hello(Purpose::Wait, [0; 16], [5; 32], 3),
            hello(Purpose::Mapped, [0; 16], [6; 32], 0),
            VisitMsg::Again,
        ]
    }

    /// Every message round-trips; every truncation and any trailing byte is an error.
    #[test]
    fn messages_round_trip_and_reject_damage() {
        for m in all() {
            let b = m.encode();
            assert_eq!(VisitMsg::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(VisitMsg::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut long = b.clone();
            long.push(0);
            assert!(VisitMsg::decode(&long).is_err());
            // Through the control framing too.
            let frame = m.to_msg().to_bytes();
            let mut d = crate::proto::Decoder::new();
            d.push(&frame);
            assert_eq!(d.next_msg().unwrap(), Some(m.to_msg()));
        }
        assert!(VisitMsg::decode(&[1, 9]).is_err(), "unknown purpose");
        assert!(VisitMsg::decode(&[99]).is_err(), "unknown type");
    }

    /// The documented bytes of docs/PROTOCOL.md (Part 14).
    #[test]
    fn documented_bytes() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let part = &doc[doc.find("# Part 14: XNat visitors").expect("Part 14")..];
        let hello = VisitMsg::Hello {
            purpose: Purpose::Open,
            service: "web".into(),
            conn: [7; 16],
            proof: [9; 32],
            agent: 0,
        };
        for (name, m) in [("visit-hello", hello), ("visit-again", VisitMsg::Again)] {
            let hex: String = m
                .to_msg()
                .to_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let fence = format!("```text {name}\n");
            let block = &part[part.find(&fence).expect("block") + fence.len()..];
            let block = &block[..block.find("```").expect("end")];
            let doc_hex: String = block
                .lines()
                .map(|l| l.split('|').next().unwrap_or(""))
                .flat_map(|l| l.split_whitespace())
                .collect();
            assert_eq!(doc_hex, hex, "{name}");
        }
    }

    /// A proof binds the token, the session, the purpose, the connection and the name.
    #[test]
    fn proofs_bind_everything() {
        let p = visit_proof("t", &[1; 32], Purpose::Open, &[2; 16], "web");
        assert_ne!(
            p,
            visit_proof("u", &[1; 32], Purpose::Open, &[2; 16], "web")
        );
        assert_ne!(
            p,
            visit_proof("t", &[3; 32], Purpose::Open, &[2; 16], "web")
        );
        assert_ne!(
            p,
            visit_proof("t", &[1; 32], Purpose::Attach, &[2; 16], "web")
        );
        assert_ne!(
            p,
            visit_proof("t", &[1; 32], Purpose::Open, &[4; 16], "web")
        );
        assert_ne!(
            p,
            visit_proof("t", &[1; 32], Purpose::Open, &[2; 16], "wex")
        );
    }

    /// `[visitor]` parses with defaults; errors name the file and the key.
    #[test]
    fn visitor_config_parses_and_names_keys() {
        let fp = format!("sha3-256:{}", "ab".repeat(32));
        let ok = format!(
            "[visitor]\nremote_addr = \"relay:2333\"\nrelay_fingerprint = \"{fp}\"\nservice = \"web\"\ntoken = \"t\"\nbind_addr = \"127.0.0.1:0\"\n"
        );
        let c = VisitorConfig::parse(&ok, "v.toml").unwrap();
        assert!(c.direct);
        assert_eq!(c.direct_retry, Duration::from_secs(30));
        assert_eq!(c.max_connections, 1024);
        let e = VisitorConfig::parse(&ok.replace("service = \"web\"\n", ""), "v.toml").unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("v.toml", "visitor.service")
        );
        let e = VisitorConfig::parse(&format!("{ok}bogus = 1\n"), "v.toml").unwrap_err();
        assert_eq!(e.key, "visitor.bogus");
        let e = VisitorConfig::parse(&ok.replace("127.0.0.1:0", "nope"), "v.toml").unwrap_err();
        assert_eq!(e.key, "visitor.bind_addr");
        let e = VisitorConfig::parse(&format!("{ok}direct = \"yes\"\n"), "v.toml").unwrap_err();
        assert_eq!(e.key, "visitor.direct");
        assert!(c.port_mapping);
        let e = VisitorConfig::parse(&format!("{ok}port_mapping = 1\n"), "v.toml").unwrap_err();
        assert_eq!(e.key, "visitor.port_mapping");
        let c = VisitorConfig::parse(&format!("{ok}port_mapping = false\n"), "v.toml").unwrap();
        assert!(!c.port_mapping);
    }

    /// The relay's wait list is bounded and wakes only the service announced.
    #[test]
    fn waiters_are_bounded_and_woken_per_service() {
        let mut w = Waiters::default();
        let mut rxs = Vec::new();
        for i in 0..MAX_WAITERS {
            let svc = if i % 2 == 0 { "web" } else { "ssh" };
            rxs.push((svc, w.add(svc).expect("room").1));
        }
        assert!(w.add("web").is_none(), "more than MAX_WAITERS waiting");
        assert_eq!(w.wake("nope"), 0);
        assert_eq!(w.wake("web"), MAX_WAITERS / 2);
        assert_eq!(w.wake("web"), 0, "woken once");
        for (svc, mut rx) in rxs {
            assert_eq!(rx.try_recv().is_ok(), svc == "web", "{svc}");
        }
        assert!(w.add("web").is_some(), "room again");
    }

    /// A visitor's wait session (after a failed attempt) gets `Again` when an agent
    /// proves the mapping's token with `Mapped`; a wrong token is refused and wakes
    /// nobody; a relay without direct paths refuses both.
    #[tokio::test]
    async fn a_mapped_announcement_wakes_the_waiting_visitor() {
        let dir = tempfile::tempdir().unwrap();
        let rcfg = crate::Config::parse(
            "[server]\nbind_addr = \"127.0.0.1:0\"\n[server.services.web]\ntoken = \"t0ken\"\nbind_addr = \"127.0.0.1:0\"\n",
            "relay.toml",
            dir.path(),
        )
        .unwrap()
        .server
        .unwrap();
        let relay = Relay::bind(rcfg).await.unwrap();
        tokio::spawn(relay.clone().run());
        let (addr, fp) = (relay.local_addr(), relay.fingerprint());
        let announce = |token: &'static str| async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let crypto = Arc::new(CryptoClient::pinned(fp));
            let mut conn = SecureConn::connect(tcp, crypto, STEP).await.unwrap();
            hello(
                &mut conn,
                token,
                Purpose::Mapped,
                "web",
                [0; CONN_ID_LEN],
                0,
            )
            .await
        };
        let cfg = VisitorConfig::parse(
            &format!("[visitor]\nremote_addr = \"{addr}\"\nrelay_fingerprint = \"{fp}\"\nservice = \"web\"\ntoken = \"t0ken\"\nbind_addr = \"127.0.0.1:0\"\n"),
            "v.toml",
        )
        .unwrap();
        let v = Visitor::bind(cfg).await.unwrap();
        let far = Instant::now() + Duration::from_secs(600);
        // Direct paths off: no wait session, no announcement.
        let e = announce("t0ken").await.unwrap_err();
        assert!(e.to_string().contains("direct paths are off"), "{e}");
        tokio::time::timeout(Duration::from_secs(10), v.clone().wait_again(7, 0, far))
            .await
            .expect("a refused wait session ends at once");
        relay
            .enable_direct(&DirectServerConfig {
                stun_bind_addr: None,
                stun_alt_ip: None,
                stun_addr: "127.0.0.1:3478".parse().unwrap(),
            })
            .unwrap();
        let waiting = tokio::spawn(v.clone().wait_again(7, 0, far));
        let t = Instant::now();
        while relay.visit_stats().waiting.load(Ordering::Relaxed) != 1 {
            assert!(t.elapsed() < Duration::from_secs(10), "never waiting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let e = announce("wrong").await.unwrap_err();
        assert!(e.to_string().contains("wrong token"), "{e}");
        assert_eq!(relay.visit_stats().again.load(Ordering::Relaxed), 0);
        assert!(!waiting.is_finished());
        announce("t0ken").await.expect("the agent's announcement");
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(relay.visit_stats().again.load(Ordering::Relaxed), 1);
        assert_eq!(v.stats().again.load(Ordering::Relaxed), 1);
        assert!(v.inner.again.lock().unwrap().contains(&7));
        let t = Instant::now();
        while relay.visit_stats().waiting.load(Ordering::Relaxed) != 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "still waiting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The relay cannot be reached and no direct path is up: a local connection is
    /// closed at once (the driver's `pathless_timeout` is 30 s; this waits at most 15).
    #[tokio::test]
    async fn an_unreachable_relay_closes_a_pathless_connection_at_once() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = dead.local_addr().unwrap();
        drop(dead); // nothing listens there now: connect is refused
        let fp = format!("sha3-256:{}", "ab".repeat(32));
        let cfg = VisitorConfig::parse(
            &format!("[visitor]\nremote_addr = \"{relay}\"\nrelay_fingerprint = \"{fp}\"\nservice = \"web\"\ntoken = \"t\"\nbind_addr = \"127.0.0.1:0\"\ndirect = false\n"),
            "v.toml",
        )
        .unwrap();
        let v = Visitor::bind(cfg).await.unwrap();
        tokio::spawn(v.clone().run());
        let mut s = TcpStream::connect(v.local_addr()).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
            .await
            .expect("closed before the 30 s pathless timeout");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert_eq!(v.stats().relay_failures.load(Ordering::Relaxed), 1);
        assert!(t.elapsed() < Duration::from_secs(15));
    }

    /// The router's IGD answers while an attempt runs (attempts do not wait for the
    /// SSDP search): the direct loop makes the next attempt at once, not after
    /// `direct_retry` (3600 s here). The "relay" accepts the attempt's session and
    /// holds it: the IGD becomes known only then, and the session's end fails the
    /// attempt. Fails when the loop reads "was the IGD known" after the attempt
    /// instead of before it (the bug fixed by 71c7740: such an answer then counted as
    /// known before, and the visitor waited `direct_retry` x 10 in the field).
    #[tokio::test]
    async fn an_igd_found_during_an_attempt_makes_the_next_one_at_once() {
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = relay.local_addr().unwrap();
        let fp = format!("sha3-256:{}", "ab".repeat(32));
        let cfg = VisitorConfig::parse(
            &format!("[visitor]\nremote_addr = \"{addr}\"\nrelay_fingerprint = \"{fp}\"\nservice = \"web\"\ntoken = \"t\"\nbind_addr = \"127.0.0.1:0\"\ndirect_retry = 3600\n"),
            "v.toml",
        )
        .unwrap();
        let v = Visitor::bind(cfg).await.unwrap();
        tokio::spawn(v.clone().run());
        let accept = || async {
            tokio::time::timeout(Duration::from_secs(20), relay.accept())
                .await
                .expect("a session within 20 s (direct_retry is 3600 s)")
                .unwrap()
                .0
        };
        // The first attempt's session: the attempt runs until we drop it.
        let first = accept().await;
        assert_eq!(v.stats().punch_attempts.load(Ordering::Relaxed), 1);
        assert!(!v.igd_known());
        v.inner.test_igd.store(true, Ordering::Relaxed);
        drop(first);
        // The failed attempt's wait session comes too; the second attempt must come
        // at once.
        while v.stats().punch_attempts.load(Ordering::Relaxed) < 2 {
            drop(accept().await);
        }
        assert_eq!(v.stats().direct_up.load(Ordering::Relaxed), 0);
    }

    /// `[server.direct]`: STUN on the relay needs both addresses; without it,
    /// `stun_addr` is required.
    #[test]
    fn direct_config_parses() {
        let base = "[server]\nbind_addr = \"0.0.0.0:2333\"\n";
        assert_eq!(parse_direct(base, "r.toml").unwrap(), None);
        let d = parse_direct(
            &format!("{base}[server.direct]\nstun_bind_addr = \"198.19.0.2:3478\"\nstun_alt_ip = \"198.19.0.3\"\n"),
            "r.toml",
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.stun_addr, "198.19.0.2:3478".parse().unwrap());
        let e = parse_direct(
            &format!("{base}[server.direct]\nstun_bind_addr = \"198.19.0.2:3478\"\n"),
            "r.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "server.direct.stun_alt_ip");
        let e = parse_direct(&format!("{base}[server.direct]\n"), "r.toml").unwrap_err();
        assert_eq!(e.key, "server.direct.stun_addr");
    }
}
