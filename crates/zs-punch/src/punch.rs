//! Punching modes and their execution on UDP sockets.
//!
//! | mode | pair | what each side does |
//! |---|---|---|
//! | [`Mode::Simultaneous`] | easy + easy (or public) | both prime their NAT with a low-TTL packet to the peer's mapped address, then probe it at full TTL |
//! | [`Mode::Predict`] | easy + hard with regular ports | the hard side primes from its socket (its next mapping is `last + delta`); the easy side probes the predicted ports |
//! | [`Mode::Birthday`] | easy + hard with random ports | the hard side opens `sockets` sockets and primes each (low TTL); the easy side probes `probes` random ports of the hard side's IP |
//! | [`Mode::PredictBoth`] | hard + hard, both regular | both prime then probe the peer's k-th predicted port from their own k-th new mapping |
//! | [`Mode::RelayOnly`] | hard + hard otherwise | nothing: no direct path is expected; the relay carries the data |
//!
//! Why low-TTL priming: Linux conntrack (and many home routers) create an entry for an
//! unsolicited inbound packet; a later outbound mapping to that same remote then clashes
//! and gets a *new* port, so the peer's packets hit a closed filter. A primer whose TTL
//! dies between the two NATs opens our mapping without creating that entry at the peer.
//!
//! Every attempt is bounded by [`PunchConfig`]: sockets opened, probes sent, wall time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::stun::{Mapping, NatReport, PortPattern};

/// How to punch (chosen by the rendezvous from both sides' NAT classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// No direct path expected: use the relay at once.
    RelayOnly,
    /// Easy/easy: simultaneous probes to the mapped addresses.
    Simultaneous,
    /// Easy/hard with regular port deltas: probe the predicted ports.
    Predict,
    /// Easy/hard with random ports: many ports open on the hard side, random probes.
    Birthday,
    /// Hard/hard, both regular: sequence-aligned predicted ports on both sides.
    PredictBoth,
}

impl Mode {
    /// Wire code.
    pub fn code(self) -> u8 {
        match self {
            Mode::RelayOnly => 0,
            Mode::Simultaneous => 1,
            Mode::Predict => 2,
            Mode::Birthday => 3,
            Mode::PredictBoth => 4,
        }
    }

    /// From a wire code.
    pub fn from_code(c: u8) -> Option<Mode> {
        Some(match c {
            0 => Mode::RelayOnly,
            1 => Mode::Simultaneous,
            2 => Mode::Predict,
            3 => Mode::Birthday,
            4 => Mode::PredictBoth,
            _ => return None,
        })
    }
}

/// This side's part in a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Symmetric modes: prime, then probe.
    Both,
    /// Probe many ports of the peer (the easy side).
    Spray,
    /// Prime and wait for a probe (the hard side).
    Listen,
}

impl Role {
    /// Wire code.
    pub fn code(self) -> u8 {
        match self {
            Role::Both => 0,
            Role::Spray => 1,
            Role::Listen => 2,
        }
    }

    /// From a wire code.
    pub fn from_code(c: u8) -> Option<Role> {
        Some(match c {
            0 => Role::Both,
            1 => Role::Spray,
            2 => Role::Listen,
            _ => return None,
        })
    }
}

/// What one side tells the rendezvous about its NAT (from [`crate::stun::classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatInfo {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Port pattern.
    pub ports: PortPattern,
    /// The first mapped address (the one a peer aims at for an easy NAT).
    pub mapped: SocketAddr,
    /// The last mapped address seen (the base of port prediction).
    pub last: SocketAddr,
}

impl NatInfo {
    /// From a classification.
    pub fn from_report(r: &NatReport) -> NatInfo {
        NatInfo {
            mapping: r.mapping,
            ports: r.ports,
            mapped: r.samples[0].1,
            last: r.samples[r.samples.len() - 1].1,
        }
    }

    fn regular(&self) -> Option<i32> {
        match self.ports {
            PortPattern::Regular(d) => Some(d),
            _ => None,
        }
    }
}

/// The modes worth trying for a pair, best first (before per-pair memory reorders them).
pub fn candidate_modes(a: &NatInfo, b: &NatInfo) -> Vec<Mode> {
    match (a.mapping.is_easy(), b.mapping.is_easy()) {
        (true, true) => vec![Mode::Simultaneous],
        (true, false) | (false, true) => {
            let (easy, hard) = if a.mapping.is_easy() { (a, b) } else { (b, a) };
            // A public side (no NAT, or a port mapped by its router) is reached at its
            // address from any port: the hard side just probes it.
            let mut m = if easy.mapping == Mapping::Public {
                vec![Mode::Simultaneous]
            } else {
                vec![]
            };
            if hard.regular().is_some() {
                m.push(Mode::Predict);
            }
            m.push(Mode::Birthday);
            m
        }
        (false, false) => {
            if a.regular().is_some() && b.regular().is_some() {
                vec![Mode::PredictBoth]
            } else {
                vec![Mode::RelayOnly]
            }
        }
    }
}

/// The role of side `me` (with peer `peer`) in `mode`.
pub fn role_for(mode: Mode, me: &NatInfo, peer: &NatInfo) -> Role {
    match mode {
        Mode::Predict | Mode::Birthday => {
            if me.mapping.is_easy() && !peer.mapping.is_easy() {
                Role::Spray
            } else if !me.mapping.is_easy() && peer.mapping.is_easy() {
                Role::Listen
            } else {
                // Both easy or both hard (forced): the first side sprays; callers pass
                // `me` = agent first, so the agent sprays and the visitor listens.
                Role::Spray
            }
        }
        _ => Role::Both,
    }
}

/// One attempt, as the rendezvous hands it to a side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Attempt id (echoed in the result).
    pub attempt: u64,
    /// Mode.
    pub mode: Mode,
    /// Our part.
    pub role: Role,
    /// Start this long after receiving the plan (both sides get it at the same moment).
    pub go_in: Duration,
    /// The peer's QUIC key fingerprint (pinned by the transport).
    pub peer_fingerprint: [u8; 32],
    /// The peer's NAT.
    pub peer: NatInfo,
    /// Shared attempt secret: probes without it are ignored.
    pub nonce: [u8; 16],
    /// Sockets the listening side opens (birthday).
    pub sockets: u16,
    /// Probes the spraying side sends at most.
    pub probes: u16,
}

/// Bounds and timing of one attempt (each side applies its own, whatever the plan asks).
#[derive(Debug, Clone, Copy)]
pub struct PunchConfig {
    /// Most sockets opened per attempt (birthday listener).
    pub max_sockets: u16,
    /// Most probes sent per attempt.
    pub max_probes: u16,
    /// Give up this long after the go time.
    pub attempt_time: Duration,
    /// TTL of primers: enough to leave our NAT(s), too little to reach the peer's.
    pub prime_ttl: u32,
    /// Wait after priming before full-TTL probes (the peer primes meanwhile).
    pub probe_delay: Duration,
    /// Interval between symmetric probe rounds.
    pub probe_interval: Duration,
    /// Ports predicted on each side of the regular pattern.
    pub predict_range: u16,
}

impl Default for PunchConfig {
    fn default() -> Self {
        PunchConfig {
            max_sockets: 256,
            max_probes: 2048,
            attempt_time: Duration::from_secs(3),
            prime_ttl: 2,
            probe_delay: Duration::from_millis(150),
            probe_interval: Duration::from_millis(100),
            predict_range: 16,
        }
    }
}

/// A punched path.
#[derive(Debug)]
pub struct Punched {
    /// The socket whose mapping reaches the peer.
    pub socket: std::net::UdpSocket,
    /// The peer's address as seen from here.
    pub peer: SocketAddr,
    /// The mode that worked.
    pub mode: Mode,
    /// From the go time to the first packet from the peer.
    pub elapsed: Duration,
    /// Probes we sent.
    pub probes_sent: u32,
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing came back within the attempt time.
    #[error("no direct path ({mode:?}, {probes_sent} probes, {sockets} sockets, {elapsed:?})")]
    Timeout {
        /// The mode tried.
        mode: Mode,
        /// Probes sent.
        probes_sent: u32,
        /// Sockets used.
        sockets: usize,
        /// Time spent.
        elapsed: Duration,
    },
    /// The plan says relay only.
    #[error("no direct path is expected for this NAT pair: relay only")]
    RelayOnly,
}

/// Makes extra sockets for the listening side of birthday mode (in the right network
/// namespace, on the right address).
pub type SocketFactory = dyn Fn(usize) -> std::io::Result<Vec<std::net::UdpSocket>> + Send + Sync;

const MAGIC: &[u8; 4] = b"ZSPP";
const KIND_PRIME: u8 = 0;
const KIND_PROBE: u8 = 1;
const KIND_ACK: u8 = 2;
/// Size of a probe datagram.
pub const PROBE_LEN: usize = 4 + 1 + 16 + 4;

/// Encode a probe datagram: `"ZSPP" kind:u8 nonce:[16] seq:u32be`.
pub fn encode_probe(kind: u8, nonce: &[u8; 16], seq: u32) -> [u8; PROBE_LEN] {
    let mut b = [0u8; PROBE_LEN];
    b[..4].copy_from_slice(MAGIC);
    b[4] = kind;
    b[5..21].copy_from_slice(nonce);
    b[21..25].copy_from_slice(&seq.to_be_bytes());
    b
}

/// Decode a probe datagram carrying `nonce`: its kind, or `None` for anything else.
pub fn decode_probe(b: &[u8], nonce: &[u8; 16]) -> Option<u8> {
    if b.len() != PROBE_LEN || &b[..4] != MAGIC || &b[5..21] != nonce {
        return None;
    }
    (b[4] <= KIND_ACK).then_some(b[4])
}

/// Random ports in 1024..=65535, `n` of them, distinct.
fn random_ports(n: usize) -> Vec<u16> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    let n = n.min(64_000);
    while out.len() < n {
        let mut b = [0u8; 2];
        if rng.fill(&mut b).is_err() {
            break;
        }
        let p = u16::from_be_bytes(b);
        if p >= 1024 && seen.insert(p) {
            out.push(p);
        }
    }
    out
}

/// The k-th predicted ports after `last` with step `delta` (k = 1..=range), in range.
pub fn predicted_ports(last: u16, delta: i32, range: u16) -> Vec<u16> {
    (1..=i32::from(range))
        .filter_map(|k| u16::try_from(i32::from(last) + k * delta).ok())
        .filter(|p| *p >= 1024)
        .collect()
}

async fn send_ttl(
    s: &UdpSocket,
    buf: &[u8],
    to: SocketAddr,
    ttl: Option<u32>,
) -> std::io::Result<()> {
    if let Some(t) = ttl {
        s.set_ttl(t)?;
    }
    let r = s.send_to(buf, to).await.map(|_| ());
    if ttl.is_some() {
        s.set_ttl(64)?;
    }
    // Unreachable destinations (ICMP from a primer) are not our failure.
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        r => r,
    }
}

/// Run one attempt: `main` is the socket that was classified (its mapping is the one the
/// peer knows); `factory` makes the extra sockets of a birthday listener.
pub async fn execute(
    plan: &Plan,
    main: UdpSocket,
    factory: &SocketFactory,
    cfg: &PunchConfig,
) -> Result<Punched, PunchError> {
    if plan.mode == Mode::RelayOnly {
        return Err(PunchError::RelayOnly);
    }
    let go = Instant::now() + plan.go_in;
    let deadline = go + cfg.attempt_time;
    let nonce = plan.nonce;
    let mut socks = vec![Arc::new(main)];
    if plan.mode == Mode::Birthday && plan.role == Role::Listen {
        let n = usize::from(plan.sockets.min(cfg.max_sockets)).saturating_sub(1);
        for s in factory(n)? {
            s.set_nonblocking(true)?;
            socks.push(Arc::new(UdpSocket::from_std(s)?));
        }
    }
    // Readers: every socket forwards valid packets (socket index, source, kind).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, SocketAddr, u8)>(64);
    let mut readers = tokio::task::JoinSet::new();
    for (i, s) in socks.iter().enumerate() {
        let s = Arc::clone(s);
        let tx = tx.clone();
        readers.spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if let Some(k) = decode_probe(&buf[..n], &nonce) {
                            if k != KIND_PRIME && tx.send((i, from, k)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => continue,
                }
            }
        });
    }
    drop(tx);
    tokio::time::sleep_until(go.into()).await;

    let peer = plan.peer;
    let ip = peer.mapped.ip();
    // The destinations we probe, and which need a primer first.
    let (prime, targets): (Vec<SocketAddr>, Vec<SocketAddr>) = match (plan.mode, plan.role) {
        (Mode::Simultaneous, _) => (vec![peer.mapped], vec![peer.mapped]),
        (Mode::Predict | Mode::Birthday, Role::Listen) => (vec![peer.mapped], vec![]),
        (Mode::Predict, _) => {
            let d = peer.regular().unwrap_or(1);
            let ports = predicted_ports(peer.last.port(), d, cfg.predict_range);
            (
                vec![],
                ports.into_iter().map(|p| SocketAddr::new(ip, p)).collect(),
            )
        }
        (Mode::Birthday, _) => {
            let n = usize::from(plan.probes.min(cfg.max_probes));
            (
                vec![],
                random_ports(n)
                    .into_iter()
                    .map(|p| SocketAddr::new(ip, p))
                    .collect(),
            )
        }
        (Mode::PredictBoth, _) => {
            let d = peer.regular().unwrap_or(1);
            let t: Vec<SocketAddr> = predicted_ports(peer.last.port(), d, cfg.predict_range)
                .into_iter()
                .map(|p| SocketAddr::new(ip, p))
                .collect();
            (t.clone(), t)
        }
        (Mode::RelayOnly, _) => unreachable!("returned above"),
    };
    let max_probes = u32::from(cfg.max_probes);
    let mut sent: u32 = 0;
    let primer = encode_probe(KIND_PRIME, &nonce, 0);
    for s in &socks {
        for p in &prime {
            send_ttl(s, &primer, *p, Some(cfg.prime_ttl)).await?;
        }
    }
    let symmetric = plan.role == Role::Both;
    let sprays = plan.role == Role::Spray;
    let mut next_round = go + cfg.probe_delay;
    let mut cursor = 0usize;
    let result = loop {
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        // Send what is due: symmetric sides re-probe every interval; sprayers send
        // batches of 32 every 2 ms once the delay has passed.
        if (symmetric || sprays) && now >= next_round && sent < max_probes {
            let batch: Vec<SocketAddr> = if symmetric {
                targets.clone()
            } else {
                let end = (cursor + 32).min(targets.len());
                let b = targets[cursor..end].to_vec();
                cursor = end;
                b
            };
            for t in batch {
                if sent >= max_probes {
                    break;
                }
                sent += 1;
                send_ttl(&socks[0], &encode_probe(KIND_PROBE, &nonce, sent), t, None).await?;
            }
            next_round = now
                + if symmetric {
                    cfg.probe_interval
                } else {
                    Duration::from_millis(2)
                };
        }
        let wake = if (symmetric || sprays) && sent < max_probes && cursor <= targets.len() {
            next_round.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            got = rx.recv() => match got {
                Some((i, from, kind)) => {
                    // Answer at full TTL; a probe proves peer -> us, our ack proves us -> peer.
                    let reps = if kind == KIND_PROBE { 3 } else { 1 };
                    for _ in 0..reps {
                        send_ttl(&socks[i], &encode_probe(KIND_ACK, &nonce, 0), from, None).await?;
                    }
                    break Some((i, from));
                }
                None => break None,
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    readers.shutdown().await;
    let elapsed = Instant::now().saturating_duration_since(go);
    let count = socks.len();
    match result {
        Some((i, from)) => {
            let s = socks.swap_remove(i);
            drop(socks);
            let s = Arc::try_unwrap(s).map_err(|_| {
                std::io::Error::other("punched socket still shared after the readers stopped")
            })?;
            Ok(Punched {
                socket: s.into_std()?,
                peer: from,
                mode: plan.mode,
                elapsed,
                probes_sent: sent,
            })
        }
        None => Err(PunchError::Timeout {
            mode: plan.mode,
            probes_sent: sent,
            sockets: count,
            elapsed,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(m: Mapping, p: PortPattern) -> NatInfo {
        let a: SocketAddr = "198.19.1.1:40000".parse().unwrap();
        NatInfo {
            mapping: m,
            ports: p,
            mapped: a,
            last: a,
        }
    }

    #[test]
    fn modes_per_nat_pair() {
        let easy = info(Mapping::EndpointIndependent, PortPattern::Stable);
        let public = info(Mapping::Public, PortPattern::Stable);
        let hard = info(Mapping::AddressAndPortDependent, PortPattern::Random);
        let reg = info(Mapping::AddressAndPortDependent, PortPattern::Regular(1));
        assert_eq!(candidate_modes(&easy, &public), vec![Mode::Simultaneous]);
        assert_eq!(candidate_modes(&easy, &hard), vec![Mode::Birthday]);
        assert_eq!(
            candidate_modes(&reg, &easy),
            vec![Mode::Predict, Mode::Birthday]
        );
        assert_eq!(candidate_modes(&reg, &reg), vec![Mode::PredictBoth]);
        assert_eq!(candidate_modes(&hard, &reg), vec![Mode::RelayOnly]);
        // A public side (e.g. a port mapped by its router) with a random-port NAT:
        // the hard side probes the public address first.
        assert_eq!(
            candidate_modes(&hard, &public),
            vec![Mode::Simultaneous, Mode::Birthday]
        );
        assert_eq!(role_for(Mode::Birthday, &easy, &hard), Role::Spray);
        assert_eq!(role_for(Mode::Birthday, &hard, &easy), Role::Listen);
        assert_eq!(role_for(Mode::Simultaneous, &easy, &easy), Role::Both);
    }

    #[test]
    fn predicted_ports_follow_the_delta_and_stay_in_range() {
        assert_eq!(predicted_ports(40000, 2, 3), vec![40002, 40004, 40006]);
        assert_eq!(predicted_ports(65534, 1, 3), vec![65535]);
        assert_eq!(predicted_ports(1025, -1, 3), vec![1024]);
    }

    #[test]
    fn probes_need_the_nonce() {
        let n = [7u8; 16];
        let p = encode_probe(KIND_PROBE, &n, 9);
        assert_eq!(decode_probe(&p, &n), Some(KIND_PROBE));
        assert_eq!(decode_probe(&p, &[8u8; 16]), None);
        assert_eq!(decode_probe(&p[..10], &n), None);
        let mut bad = p;
        bad[4] = 9;
        assert_eq!(decode_probe(&bad, &n), None);
    }

    #[test]
    fn random_ports_are_distinct_and_unprivileged() {
        let p = random_ports(2048);
        assert_eq!(p.len(), 2048);
        assert!(p.iter().all(|x| *x >= 1024));
        let s: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(s.len(), 2048);
    }

    /// Two sockets on loopback (public/public): simultaneous mode connects, and the
    /// returned socket and peer address are the right ones.
    #[tokio::test]
    async fn simultaneous_on_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mk = |peer: SocketAddr| Plan {
            attempt: 1,
            mode: Mode::Simultaneous,
            role: Role::Both,
            go_in: Duration::from_millis(10),
            peer_fingerprint: [0; 32],
            peer: info_at(peer),
            nonce: [3; 16],
            sockets: 1,
            probes: 16,
        };
        let cfg = PunchConfig::default();
        let none: &SocketFactory = &|_| Ok(Vec::new());
        let (pa, pb) = (mk(ba), mk(aa));
        let (ra, rb) = tokio::join!(execute(&pa, a, none, &cfg), execute(&pb, b, none, &cfg));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.peer, ba);
        assert_eq!(rb.peer, aa);
        assert_eq!(ra.socket.local_addr().unwrap(), aa);
    }

    /// Nobody answers: the attempt ends at its time bound with its probe bound respected.
    #[tokio::test]
    async fn a_silent_peer_times_out_within_bounds() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let plan = Plan {
            attempt: 1,
            mode: Mode::Birthday,
            role: Role::Spray,
            go_in: Duration::ZERO,
            peer_fingerprint: [0; 32],
            peer: info_at(dead.local_addr().unwrap()),
            nonce: [3; 16],
            sockets: 1,
            probes: 60_000,
        };
        let cfg = PunchConfig {
            attempt_time: Duration::from_millis(400),
            max_probes: 300,
            ..Default::default()
        };
        let t = Instant::now();
        let none: &SocketFactory = &|_| Ok(Vec::new());
        match execute(&plan, a, none, &cfg).await {
            Err(PunchError::Timeout { probes_sent, .. }) => assert_eq!(probes_sent, 300),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    fn info_at(a: SocketAddr) -> NatInfo {
        NatInfo {
            mapping: Mapping::Public,
            ports: PortPattern::Stable,
            mapped: a,
            last: a,
        }
    }
}
