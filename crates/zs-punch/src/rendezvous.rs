//! The rendezvous: both peers report their NAT and key, the hub pairs them, picks a mode
//! (remembering per peer pair which mode worked) and gives both the same go time.
//!
//! Byte format: `docs/PROTOCOL.md`, Part "zs-punch rendezvous". Over any byte stream
//! (TCP here; a zs-xnat relay can host it on its own connections with one call,
//! [`Hub::serve_conn`]). One attempt per connection:
//!
//! ```text
//! peer -> hub   HELLO   (role, pair key, fingerprint, NAT info)
//! hub  -> peer  PLAN    (attempt, mode, role, go_in, peer's fingerprint + NAT, nonce, bounds)
//! peer -> hub   RESULT  (attempt, ok, elapsed)
//! hub  -> peer  ERROR   (code, reason)   instead of PLAN when refused
//! ```
//!
//! Bounds: frames ≤ [`MAX_FRAME`] bytes; HELLO within [`HubConfig::hello_timeout`];
//! at most [`HubConfig::max_waiting`] peers waiting for their partner, each for at most
//! [`HubConfig::wait_timeout`]; the per-pair memory holds at most
//! [`HubConfig::max_pairs`] pairs (oldest forgotten first).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::punch::{candidate_modes, role_for, Mode, NatInfo, Plan, Role};
use crate::stun::{Mapping, PortPattern};

/// Largest frame body.
pub const MAX_FRAME: usize = 512;
/// Longest ERROR reason (bytes).
pub const MAX_REASON: usize = 200;
/// Protocol version in HELLO.
pub const VERSION: u8 = 1;

const T_HELLO: u8 = 1;
const T_PLAN: u8 = 2;
const T_RESULT: u8 = 3;
const T_ERROR: u8 = 4;

/// Which end of a mapping a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The agent (the service's side).
    Agent,
    /// The visitor (the local port's side).
    Visitor,
}

/// The first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Agent or visitor.
    pub side: Side,
    /// Both ends of one mapping present the same key ([`pair_key`]).
    pub pair_key: [u8; 32],
    /// This peer's QUIC key fingerprint (SHA3-256 of its Ed25519 public key).
    pub fingerprint: [u8; 32],
    /// Its NAT.
    pub nat: NatInfo,
}

/// `SHA3-256("zs-punch pair" || 0 || service || 0 || token)`.
pub fn pair_key(service: &str, token: &str) -> [u8; 32] {
    let mut v = b"zs-punch pair\0".to_vec();
    v.extend_from_slice(service.as_bytes());
    v.push(0);
    v.extend_from_slice(token.as_bytes());
    zs_crypto::hash::sha3_256(&v)
}

/// Result of an attempt as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Attempt id from the plan.
    pub attempt: u64,
    /// Direct path up.
    pub ok: bool,
    /// Milliseconds from go to the path (or to giving up).
    pub elapsed_ms: u32,
}

/// A rendezvous message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Peer → hub.
    Hello(Hello),
    /// Hub → peer.
    Plan(Plan),
    /// Peer → hub.
    Result(Outcome),
    /// Hub → peer: refused.
    Error {
        /// 1 bad message, 2 busy (same side already waiting), 3 no partner in time, 4 full.
        code: u8,
        /// Human-readable reason.
        reason: String,
    },
}

/// A decoding error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rendezvous message: {0}")]
pub struct DecodeError(pub &'static str);

fn put_addr(o: &mut Vec<u8>, a: SocketAddr) {
    crate::addr::put(o, &a);
}

fn put_nat(o: &mut Vec<u8>, n: &NatInfo) {
    o.push(match n.mapping {
        Mapping::Public => 0,
        Mapping::EndpointIndependent => 1,
        Mapping::AddressDependent => 2,
        Mapping::AddressAndPortDependent => 3,
    });
    let (p, d) = match n.ports {
        PortPattern::Stable => (0u8, 0i8),
        PortPattern::Regular(d) => (1, d.clamp(-127, 127) as i8),
        PortPattern::Random => (2, 0),
    };
    o.push(p);
    o.push(d as u8);
    put_addr(o, n.mapped);
    put_addr(o, n.last);
}

struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        crate::addr::take(&mut self.0).map_err(DecodeError)
    }
    fn nat(&mut self) -> Result<NatInfo, DecodeError> {
        let mapping = match self.u8()? {
            0 => Mapping::Public,
            1 => Mapping::EndpointIndependent,
            2 => Mapping::AddressDependent,
            3 => Mapping::AddressAndPortDependent,
            _ => return Err(DecodeError("mapping")),
        };
        let p = self.u8()?;
        let d = self.u8()? as i8;
        let ports = match (p, d) {
            (0, 0) => PortPattern::Stable,
            (1, d) if d != 0 && d != i8::MIN => PortPattern::Regular(i32::from(d)),
            (2, 0) => PortPattern::Random,
            _ => return Err(DecodeError("port pattern")),
        };
        Ok(NatInfo {
            mapping,
            ports,
            mapped: self.addr()?,
            last: self.addr()?,
        })
    }
}

impl Msg {
    /// Encode the frame body (without the 2-byte length).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(128);
        match self {
            Msg::Hello(h) => {
                o.push(T_HELLO);
                o.push(VERSION);
                o.push(match h.side {
                    Side::Agent => 1,
                    Side::Visitor => 2,
                });
                o.extend_from_slice(&h.pair_key);
                o.extend_from_slice(&h.fingerprint);
                put_nat(&mut o, &h.nat);
            }
            Msg::Plan(p) => {
                o.push(T_PLAN);
                o.extend_from_slice(&p.attempt.to_be_bytes());
                o.push(p.mode.code());
                o.push(p.role.code());
                let go = u16::try_from(p.go_in.as_millis()).unwrap_or(u16::MAX);
                o.extend_from_slice(&go.to_be_bytes());
                o.extend_from_slice(&p.peer_fingerprint);
                put_nat(&mut o, &p.peer);
                o.extend_from_slice(&p.nonce);
                o.extend_from_slice(&p.sockets.to_be_bytes());
                o.extend_from_slice(&p.probes.to_be_bytes());
            }
            Msg::Result(r) => {
                o.push(T_RESULT);
                o.extend_from_slice(&r.attempt.to_be_bytes());
                o.push(u8::from(r.ok));
                o.extend_from_slice(&r.elapsed_ms.to_be_bytes());
            }
            Msg::Error { code, reason } => {
                o.push(T_ERROR);
                o.push(*code);
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                let r = &reason.as_bytes()[..end];
                o.push(r.len() as u8);
                o.extend_from_slice(r);
            }
        }
        o
    }

    /// Decode one frame body; trailing bytes are an error.
    pub fn decode(b: &[u8]) -> Result<Msg, DecodeError> {
        if b.len() > MAX_FRAME {
            return Err(DecodeError("frame too large"));
        }
        let mut r = Rd(b);
        let m = match r.u8()? {
            T_HELLO => {
                if r.u8()? != VERSION {
                    return Err(DecodeError("version"));
                }
                let side = match r.u8()? {
                    1 => Side::Agent,
                    2 => Side::Visitor,
                    _ => return Err(DecodeError("side")),
                };
                Msg::Hello(Hello {
                    side,
                    pair_key: r.arr()?,
                    fingerprint: r.arr()?,
                    nat: r.nat()?,
                })
            }
            T_PLAN => {
                let attempt = r.u64()?;
                let mode = Mode::from_code(r.u8()?).ok_or(DecodeError("mode"))?;
                let role = Role::from_code(r.u8()?).ok_or(DecodeError("role"))?;
                let go_in = Duration::from_millis(u64::from(r.u16()?));
                Msg::Plan(Plan {
                    attempt,
                    mode,
                    role,
                    go_in,
                    peer_fingerprint: r.arr()?,
                    peer: r.nat()?,
                    nonce: r.arr()?,
                    sockets: r.u16()?,
                    probes: r.u16()?,
                })
            }
            T_RESULT => Msg::Result(Outcome {
                attempt: r.u64()?,
                ok: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError("ok flag")),
                },
                elapsed_ms: r.u32()?,
            }),
            T_ERROR => {
                let code = r.u8()?;
                let n = usize::from(r.u8()?);
                if n > MAX_REASON {
                    return Err(DecodeError("reason too long"));
                }
                let reason = String::from_utf8(r.take(n)?.to_vec())
                    .map_err(|_| DecodeError("reason utf-8"))?;
                Msg::Error { code, reason }
            }
            _ => return Err(DecodeError("type")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(m)
    }
}

/// Write one frame: `len:u16be body`.
pub async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, m: &Msg) -> std::io::Result<()> {
    let body = m.encode();
    let mut f = Vec::with_capacity(body.len() + 2);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&body);
    w.write_all(&f).await?;
    w.flush().await
}

/// Read one frame (bounded by [`MAX_FRAME`]).
pub async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Msg> {
    let mut l = [0u8; 2];
    r.read_exact(&mut l).await?;
    let n = usize::from(u16::from_be_bytes(l));
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "rendezvous frame too large",
        ));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).await?;
    Msg::decode(&b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Hub limits and timing.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Time allowed for HELLO after connecting.
    pub hello_timeout: Duration,
    /// How long a peer waits for its partner.
    pub wait_timeout: Duration,
    /// Peers waiting at once (process-wide).
    pub max_waiting: usize,
    /// Rendezvous connections open at once ([`Hub::serve`]).
    pub max_conns: usize,
    /// Pairs remembered (mode history).
    pub max_pairs: usize,
    /// Go time given in plans (covers the hub → peer delay difference).
    pub go_in: Duration,
    /// Sockets a birthday listener is asked to open.
    pub sockets: u16,
    /// Probes a sprayer is asked to send.
    pub probes: u16,
    /// Time allowed for RESULT after the plan.
    pub result_timeout: Duration,
    /// Use this mode for every pair instead of choosing (benches, tests of a mode's
    /// bounds on a NAT pair it does not suit).
    pub force_mode: Option<Mode>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            hello_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(30),
            max_waiting: 1024,
            max_conns: 4096,
            max_pairs: 4096,
            go_in: Duration::from_millis(100),
            sockets: 256,
            probes: 2048,
            result_timeout: Duration::from_secs(15),
            force_mode: None,
        }
    }
}

/// Per-mode history of one pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeStats {
    /// Successful attempts.
    pub ok: u32,
    /// Failed attempts.
    pub failed: u32,
    /// Attempt number of the last success (higher is more recent).
    pub last_ok: u64,
    /// Attempt number of the last failure.
    pub last_failed: u64,
}

type PairId = ([u8; 32], [u8; 32]);

struct Waiter {
    side: Side,
    hello: Hello,
    tx: oneshot::Sender<(Plan, oneshot::Sender<Outcome>)>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<[u8; 32], Waiter>,
    memory: HashMap<PairId, HashMap<Mode, ModeStats>>,
    order: VecDeque<PairId>,
    attempt: u64,
}

/// The rendezvous hub (hosted by the relay, or standalone with [`Hub::serve`]).
pub struct Hub {
    cfg: HubConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("cfg", &self.cfg).finish()
    }
}

fn random16() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut n = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut n);
    n
}

impl Hub {
    /// A hub.
    pub fn new(cfg: HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            cfg,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mode history of a pair (agent fingerprint, visitor fingerprint).
    pub fn history(&self, agent: [u8; 32], visitor: [u8; 32]) -> Vec<(Mode, ModeStats)> {
        let st = self.lock();
        let mut v: Vec<_> = st
            .memory
            .get(&(agent, visitor))
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        v.sort_by_key(|(m, _)| m.code());
        v
    }

    /// Peers waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// The mode to try for a pair: the candidate that last succeeded (unless it has
    /// failed since), else the first candidate not yet failed more often than it
    /// succeeded, else the first. So a mode that worked once and then stops working
    /// (the NAT changed) is tried again once, not first forever.
    fn choose(&self, st: &State, id: &PairId, cands: &[Mode]) -> Mode {
        if let Some(h) = st.memory.get(id) {
            if let Some((m, _)) = cands
                .iter()
                .filter_map(|m| h.get(m).map(|s| (*m, *s)))
                .filter(|(_, s)| s.ok > 0 && s.last_ok > s.last_failed)
                .max_by_key(|(_, s)| s.last_ok)
            {
                return m;
            }
            if let Some(m) = cands
                .iter()
                .find(|m| h.get(m).is_none_or(|s| s.failed <= s.ok))
            {
                return *m;
            }
        }
        cands[0]
    }

    fn record(&self, id: PairId, mode: Mode, attempt: u64, ok: bool) {
        let mut st = self.lock();
        if !st.memory.contains_key(&id) {
            if st.memory.len() >= self.cfg.max_pairs {
                if let Some(old) = st.order.pop_front() {
                    st.memory.remove(&old);
                }
            }
            st.order.push_back(id);
        }
        let s = st.memory.entry(id).or_default().entry(mode).or_default();
        if ok {
            s.ok += 1;
            s.last_ok = attempt;
        } else {
            s.failed += 1;
            s.last_failed = attempt;
        }
    }

    /// Serve one rendezvous connection to its end (the one call a relay makes for a
    /// connection that announced itself as a punch rendezvous).
    pub async fn serve_conn<S>(self: &Arc<Hub>, mut io: S) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let cfg = self.cfg;
        let first = tokio::time::timeout(cfg.hello_timeout, read_msg(&mut io))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HELLO"))?;
        let hello = match first {
            Ok(Msg::Hello(h)) => h,
            Ok(_) => {
                let m = Msg::Error {
                    code: 1,
                    reason: "expected HELLO".into(),
                };
                write_msg(&mut io, &m).await?;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "expected HELLO",
                ));
            }
            Err(e) => {
                tracing::info!("rendezvous peer dropped: {e}");
                return Err(e);
            }
        };
        // Pair up, or wait.
        enum Next {
            Wait(oneshot::Receiver<(Plan, oneshot::Sender<Outcome>)>),
            Matched(Box<Waiter>),
            Refuse(u8, &'static str),
        }
        let next = {
            let mut st = self.lock();
            match st.waiting.remove(&hello.pair_key) {
                Some(w) if w.side != hello.side && !w.tx.is_closed() => Next::Matched(Box::new(w)),
                Some(w) if w.side == hello.side && !w.tx.is_closed() => {
                    st.waiting.insert(hello.pair_key, w);
                    Next::Refuse(2, "the same side of this pair is already waiting")
                }
                _ => {
                    if st.waiting.len() >= cfg.max_waiting {
                        Next::Refuse(4, "rendezvous full")
                    } else {
                        let (tx, rx) = oneshot::channel();
                        st.waiting.insert(
                            hello.pair_key,
                            Waiter {
                                side: hello.side,
                                hello: hello.clone(),
                                tx,
                            },
                        );
                        Next::Wait(rx)
                    }
                }
            }
        };
        match next {
            Next::Refuse(code, reason) => {
                write_msg(
                    &mut io,
                    &Msg::Error {
                        code,
                        reason: reason.into(),
                    },
                )
                .await
            }
            Next::Wait(rx) => {
                let got = tokio::time::timeout(cfg.wait_timeout, rx).await;
                let (plan, result_tx) = match got {
                    Ok(Ok(x)) => x,
                    _ => {
                        {
                            let mut st = self.lock();
                            if st
                                .waiting
                                .get(&hello.pair_key)
                                .is_some_and(|w| w.hello == hello)
                            {
                                st.waiting.remove(&hello.pair_key);
                            }
                        }
                        return write_msg(
                            &mut io,
                            &Msg::Error {
                                code: 3,
                                reason: "no partner in time".into(),
                            },
                        )
                        .await;
                    }
                };
                write_msg(&mut io, &Msg::Plan(plan.clone())).await?;
                let r = self.read_result(&mut io, plan.attempt).await;
                let _ = result_tx.send(r);
                Ok(())
            }
            Next::Matched(w) => {
                let (agent, visitor) = if w.side == Side::Agent {
                    (&w.hello, &hello)
                } else {
                    (&hello, &w.hello)
                };
                let id = (agent.fingerprint, visitor.fingerprint);
                let (mode, attempt) = {
                    let mut st = self.lock();
                    st.attempt += 1;
                    let cands = candidate_modes(&agent.nat, &visitor.nat);
                    let m = cfg
                        .force_mode
                        .unwrap_or_else(|| self.choose(&st, &id, &cands));
                    (m, st.attempt)
                };
                let nonce = random16();
                let plan_for = |me: &Hello, peer: &Hello| {
                    // Agent first in role_for's tie-break.
                    let role = if me.side == Side::Agent {
                        role_for(mode, &me.nat, &peer.nat)
                    } else {
                        match role_for(mode, &peer.nat, &me.nat) {
                            Role::Spray => Role::Listen,
                            Role::Listen => Role::Spray,
                            Role::Both => Role::Both,
                        }
                    };
                    Plan {
                        attempt,
                        mode,
                        role,
                        go_in: cfg.go_in,
                        peer_fingerprint: peer.fingerprint,
                        peer: peer.nat,
                        nonce,
                        sockets: cfg.sockets,
                        probes: cfg.probes,
                    }
                };
                let theirs = plan_for(&w.hello, &hello);
                let mine = plan_for(&hello, &w.hello);
                let (rtx, rrx) = oneshot::channel();
                if w.tx.send((theirs, rtx)).is_err() {
                    return write_msg(
                        &mut io,
                        &Msg::Error {
                            code: 3,
                            reason: "partner left".into(),
                        },
                    )
                    .await;
                }
                write_msg(&mut io, &Msg::Plan(mine)).await?;
                let a = self.read_result(&mut io, attempt).await;
                let b = tokio::time::timeout(cfg.result_timeout, rrx)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or(Outcome {
                        attempt,
                        ok: false,
                        elapsed_ms: 0,
                    });
                if mode != Mode::RelayOnly {
                    self.record(id, mode, attempt, a.ok && b.ok);
                }
                Ok(())
            }
        }
    }

    async fn read_result<S: AsyncRead + Unpin>(&self, io: &mut S, attempt: u64) -> Outcome {
        let failed = Outcome {
            attempt,
            ok: false,
            elapsed_ms: 0,
        };
        match tokio::time::timeout(self.cfg.result_timeout, read_msg(io)).await {
            Ok(Ok(Msg::Result(r))) if r.attempt == attempt => r,
            _ => failed,
        }
    }

    /// Accept rendezvous connections on `listener` until the task is dropped; at most
    /// [`HubConfig::max_conns`] at once (more are closed at once, with a log line).
    pub async fn serve(self: Arc<Hub>, listener: tokio::net::TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.cfg.max_conns));
        loop {
            let Ok((s, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::info!(
                    "rendezvous {peer}: refused, {} connections open",
                    self.cfg.max_conns
                );
                drop(s);
                continue;
            };
            let hub = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = hub.serve_conn(s).await {
                    tracing::info!("rendezvous {peer}: {e}");
                }
                drop(permit);
            });
        }
    }
}

/// Peer side: send HELLO and wait for the plan (or the hub's refusal).
pub async fn request_plan<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    hello: Hello,
) -> std::io::Result<Plan> {
    write_msg(io, &Msg::Hello(hello)).await?;
    match read_msg(io).await? {
        Msg::Plan(p) => Ok(p),
        Msg::Error { code, reason } => Err(std::io::Error::other(format!(
            "rendezvous refused ({code}): {reason}"
        ))),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unexpected rendezvous message",
        )),
    }
}

/// Peer side: report the outcome.
pub async fn report<S: AsyncWrite + Unpin>(io: &mut S, o: Outcome) -> std::io::Result<()> {
    write_msg(io, &Msg::Result(o)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nat(m: Mapping, p: PortPattern, port: u16) -> NatInfo {
        NatInfo {
            mapping: m,
            ports: p,
            mapped: SocketAddr::from(([198, 19, 1, 1], port)),
            last: SocketAddr::from(([198, 19, 1, 1], port + 2)),
        }
    }

    #[test]
    fn round_trips() {
        let h = Msg::Hello(Hello {
            side: Side::Visitor,
            pair_key: [1; 32],
            fingerprint: [2; 32],
            nat: nat(
                Mapping::AddressAndPortDependent,
                PortPattern::Regular(-2),
                5000,
            ),
        });
        let p = Msg::Plan(Plan {
            attempt: 7,
            mode: Mode::Birthday,
            role: Role::Listen,
            go_in: Duration::from_millis(100),
            peer_fingerprint: [3; 32],
            peer: nat(Mapping::EndpointIndependent, PortPattern::Stable, 40000),
            nonce: [4; 16],
            sockets: 256,
            probes: 2048,
        });
        let r = Msg::Result(Outcome {
            attempt: 7,
            ok: true,
            elapsed_ms: 250,
        });
        let e = Msg::Error {
            code: 2,
            reason: "busy".into(),
        };
        for m in [h, p, r, e] {
            let b = m.encode();
            assert_eq!(Msg::decode(&b).unwrap(), m);
            for cut in 0..b.len() {
                assert!(Msg::decode(&b[..cut]).is_err());
            }
            let mut long = b.clone();
            long.push(0);
            assert!(Msg::decode(&long).is_err());
        }
    }

    async fn hello(
        hub: &Arc<Hub>,
        side: Side,
        fp: u8,
        n: NatInfo,
    ) -> (Plan, tokio::io::DuplexStream) {
        let (mut a, b) = tokio::io::duplex(4096);
        let h = Arc::clone(hub);
        tokio::spawn(async move { h.serve_conn(b).await });
        let p = request_plan(
            &mut a,
            Hello {
                side,
                pair_key: [9; 32],
                fingerprint: [fp; 32],
                nat: n,
            },
        )
        .await
        .unwrap();
        (p, a)
    }

    /// The hub pairs agent and visitor, gives complementary roles and the same nonce,
    /// and remembers which mode worked: after Predict failed and Birthday succeeded,
    /// Birthday comes first for that pair.
    #[tokio::test]
    async fn pairs_and_remembers_what_worked() {
        let (hub, easy, reg) = easy_and_regular();
        let mut modes = Vec::new();
        for (round, ok) in [(0, false), (1, true), (2, true)] {
            let (pa, pv) = play(&hub, easy, reg, round, ok).await;
            assert_eq!(pa.nonce, pv.nonce);
            assert_eq!(pa.peer, reg);
            assert_eq!(pv.peer, easy);
            assert_eq!(pa.peer_fingerprint, [2; 32]);
            assert_eq!((pa.role, pv.role), (Role::Spray, Role::Listen));
            modes.push(pa.mode);
        }
        assert_eq!(modes, vec![Mode::Predict, Mode::Birthday, Mode::Birthday]);
    }

    /// A hub, an easy NAT and one with regular ports (+1).
    fn easy_and_regular() -> (Arc<Hub>, NatInfo, NatInfo) {
        let easy = nat(Mapping::EndpointIndependent, PortPattern::Stable, 40000);
        let reg = nat(
            Mapping::AddressAndPortDependent,
            PortPattern::Regular(1),
            5000,
        );
        (Hub::new(HubConfig::default()), easy, reg)
    }

    /// One rendezvous of agent 1 (`agent`) and visitor 2 (`visitor`) whose outcome
    /// both report as `ok`; returns once the hub recorded it (its `round + 1`-th for
    /// the pair): the agent's and the visitor's plans.
    async fn play(
        hub: &Arc<Hub>,
        agent: NatInfo,
        visitor: NatInfo,
        round: u32,
        ok: bool,
    ) -> (Plan, Plan) {
        let h2 = Arc::clone(hub);
        let ag = tokio::spawn(async move { hello(&h2, Side::Agent, 1, agent).await });
        while hub.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let (pv, mut v) = hello(hub, Side::Visitor, 2, visitor).await;
        let (pa, mut a) = ag.await.unwrap();
        let o = Outcome {
            attempt: pa.attempt,
            ok,
            elapsed_ms: round,
        };
        report(&mut a, o).await.unwrap();
        report(&mut v, o).await.unwrap();
        let mut n = 0;
        while hub
            .history([1; 32], [2; 32])
            .iter()
            .map(|(_, s)| s.ok + s.failed)
            .sum::<u32>()
            < round + 1
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            n += 1;
            assert!(n < 400, "hub did not record the result");
        }
        (pa, pv)
    }

    /// A mode that worked and then stops working is not tried first forever: after
    /// Predict succeeded once and failed twice, Birthday comes first; once Birthday
    /// worked, it stays first.
    #[tokio::test]
    async fn a_mode_that_stops_working_is_left() {
        let (hub, easy, reg) = easy_and_regular();
        let mut modes = Vec::new();
        for (round, ok) in [(0, true), (1, false), (2, false), (3, true), (4, true)] {
            modes.push(play(&hub, easy, reg, round, ok).await.0.mode);
        }
        assert_eq!(
            modes,
            vec![
                Mode::Predict,
                Mode::Predict,
                Mode::Predict,
                Mode::Birthday,
                Mode::Birthday
            ]
        );
    }

    /// Attack: two agents for one pair (the second is refused, the first keeps waiting),
    /// garbage instead of HELLO, an oversized frame, silence (HELLO timeout).
    #[tokio::test]
    async fn refuses_bad_peers() {
        let hub = Hub::new(HubConfig {
            hello_timeout: Duration::from_millis(100),
            wait_timeout: Duration::from_millis(300),
            ..Default::default()
        });
        let easy = nat(Mapping::EndpointIndependent, PortPattern::Stable, 40000);
        let (mut a, b) = tokio::io::duplex(4096);
        let h = Arc::clone(&hub);
        tokio::spawn(async move { h.serve_conn(b).await });
        let hel = Hello {
            side: Side::Agent,
            pair_key: [5; 32],
            fingerprint: [1; 32],
            nat: easy,
        };
        write_msg(&mut a, &Msg::Hello(hel.clone())).await.unwrap();
        while hub.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let (mut a2, b2) = tokio::io::duplex(4096);
        let h = Arc::clone(&hub);
        tokio::spawn(async move { h.serve_conn(b2).await });
        let e = request_plan(&mut a2, hel).await.unwrap_err();
        assert!(e.to_string().contains("already waiting"), "{e}");
        // The first one times out cleanly and leaves no waiter behind.
        match read_msg(&mut a).await.unwrap() {
            Msg::Error { code: 3, .. } => {}
            m => panic!("{m:?}"),
        }
        assert_eq!(hub.waiting(), 0);
        // Oversized frame.
        let (mut c, d) = tokio::io::duplex(4096);
        let h = Arc::clone(&hub);
        let t = tokio::spawn(async move { h.serve_conn(d).await });
        c.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
        assert!(t.await.unwrap().is_err());
        // Silence.
        let (_c, d) = tokio::io::duplex(4096);
        let h = Arc::clone(&hub);
        let e = h.serve_conn(d).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    /// The documented bytes of docs/PROTOCOL.md (Part "zs-punch rendezvous").
    #[test]
    fn documented_bytes() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let part = &doc[doc
            .find("zs-punch rendezvous")
            .expect("part in PROTOCOL.md")..];
        let hello = Msg::Hello(Hello {
            side: Side::Visitor,
            pair_key: [0x11; 32],
            fingerprint: [0x22; 32],
            nat: NatInfo {
                mapping: Mapping::EndpointIndependent,
                ports: PortPattern::Stable,
                mapped: "198.19.1.1:40000".parse().unwrap(),
                last: "198.19.1.1:40000".parse().unwrap(),
            },
        });
        let result = Msg::Result(Outcome {
            attempt: 3,
            ok: true,
            elapsed_ms: 250,
        });
        for (label, m) in [("punch-hello", hello), ("punch-result", result)] {
            let mut frame = (m.encode().len() as u16).to_be_bytes().to_vec();
            frame.extend(m.encode());
            let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
            let fence = format!("```text {label}\n");
            let at = part
                .find(&fence)
                .unwrap_or_else(|| panic!("{label} missing"));
            let block = &part[at + fence.len()..];
            let block = &block[..block.find("```").expect("end of block")];
            // Each line: hex bytes, then `|` and a comment.
            let doc_hex: String = block
                .lines()
                .map(|l| l.split('|').next().unwrap_or(""))
                .flat_map(|l| l.split_whitespace())
                .collect();
            assert_eq!(doc_hex, hex, "{label}");
        }
    }
}
