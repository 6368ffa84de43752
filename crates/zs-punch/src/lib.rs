//! # zs-punch: direct paths between two NATed peers
//!
//! The direct half of zs-xnat: instead of relaying every byte through a public server,
//! the agent (the service's side) and the visitor (the local port's side) punch a UDP
//! path through their NATs and run QUIC on it. The pieces, in the order they are used:
//!
//! 1. [`stun`]: RFC 5389/5780 codec, a server on two addresses × two ports, and a
//!    client that **classifies** the NAT: mapping (endpoint-independent, address-
//!    dependent, address-and-port-dependent, or public), port-change regularity
//!    (the delta between consecutive new mappings), and (on a fresh socket) filtering.
//! 2. [`portmap`]: alongside classification, ask the default gateway for a public UDP
//!    port (PCP, then NAT-PMP). A side with a mapped port is **public**: no punch is
//!    needed on its side, so even a random-port NAT on the other side gets a path.
//! 3. [`rendezvous`]: both peers send HELLO (NAT class, mapped addresses, key
//!    fingerprint) to a hub, which pairs them by a key derived from the service name
//!    and token, picks a mode, and gives both the same go time. It remembers per peer
//!    pair which mode worked and tries that one first next time. A zs-xnat relay hosts
//!    it with one call: [`rendezvous::Hub::serve_conn`] on a connection it hands over.
//! 4. [`punch`]: the modes, each bounded in sockets, probes and time
//!    ([`punch::PunchConfig`]):
//!    - **simultaneous** (easy/easy, or a public side with any NAT): both prime their
//!      NAT with a low-TTL packet, then probe the peer's mapped address;
//!    - **predict** (easy/hard with regular port deltas): the easy side probes the
//!      ports the hard NAT will hand out next;
//!    - **birthday** (easy/hard with random ports): the hard side opens 256 sockets,
//!      the easy side probes up to 2048 random ports (≈ 1 − e^(−8) of hitting one when
//!      the NAT picks from 64 k ports);
//!    - **predict-both** (hard/hard, both regular): sequence-aligned predictions;
//!    - **relay only** (hard/hard otherwise): declined at once, no probe is sent.
//! 5. [`quic`]: QUIC (quinn + rustls/ring) on the punched socket, both ends pinned by
//!    the SHA3-256 fingerprint of their Ed25519 key (as the tunnel pins its relay);
//!    each TCP connection to the visitor's local port rides one QUIC stream to the
//!    agent, which connects to its service.
//! 6. [`migrate`]: a framed stream with sequence numbers and acks that can switch
//!    between paths (relay ⇄ direct) without loss or duplication.
//!
//! ## Limits (what does not punch)
//! - Two NATs that both pick random ports per destination ("symmetric" with random
//!   ports, e.g. `masquerade fully-random`): the odds are about 256 × 2048 / 64 k² per
//!   attempt, so the hub answers **relay only** without trying, unless one side's
//!   router maps a port (PCP / NAT-PMP): that side is then public and it works.
//! - Routers that speak only UPnP-IGD are not asked (no SSDP/SOAP client here).
//! - UDP blocked outright, or a carrier-grade NAT chain deeper than the primer TTL
//!   ([`punch::PunchConfig::prime_ttl`], default 2 hops): raise the TTL or use the relay.
//! - Filtering NATs that create an entry for unsolicited inbound packets (Linux
//!   conntrack does): handled by priming with a low TTL and by probing only after the
//!   peer has primed (`probe_delay`).
//!
//! ## What a user sees when only the relay works
//! [`peer::run_attempt`] returns the plan and `Err(PunchError::RelayOnly)` (declined:
//! no probe sent, nothing to wait for) or `Err(PunchError::Timeout { .. })` after at
//! most `attempt_time` (3 s by default) with the counts it spent. The caller keeps its
//! connections on the relay; the hub records the failure so the next attempt for that
//! pair tries another mode first. Nothing is lost: connections opened meanwhile go
//! through the relay at once. When no path at all is left and none can come (the relay
//! is unreachable too), [`migrate::run`] fails at once with `NoPath`.
//!
//! ## Example: classify this host's NAT against a STUN server
//! ```
//! use zs_punch::stun::{classify, ClassifyOptions, Mapping, StunServer};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An RFC 5780 server on two loopback addresses × two ports.
//! let server = StunServer::bind("127.0.0.1".parse()?, Some("127.0.0.2".parse()?), (0, 0))?;
//! let primary = server.local_addrs()[0];
//! let _task = server.spawn();
//! let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
//! let report = classify(&sock, primary, ClassifyOptions::default()).await?;
//! assert_eq!(report.mapping, Mapping::Public); // no NAT on loopback
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod addr;
pub mod migrate;
#[cfg(all(feature = "netlab", target_os = "linux"))]
pub mod netlab;
pub mod peer;
pub mod portmap;
pub mod punch;
pub mod quic;
pub mod rendezvous;
pub mod stun;
