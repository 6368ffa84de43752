//! # zs-p2pvm: virtual connections over one physical connection
//!
//! A tunnel between two peers carries many **virtual connections** (streams) over one
//! byte stream (a TCP connection, or any `zs-io` connection). Each side *listens* on
//! virtual addresses (an IP address and port, like the original p2pVM); the other side
//! *connects* to them. The listen tables are exchanged when the tunnel opens, after an
//! optional challenge-response authentication with a pre-shared token.
//!
//! The crate is **sans-IO**: a [`Mux`] takes bytes from the link
//! ([`Mux::handle_input`], or [`Mux::handle_input_buf`]: the link's `BytesMut` in,
//! frames as slices of it, large DATA payloads handed on uncopied), produces bytes
//! for the link ([`Mux::write_output`]),
//! reports what happened ([`Mux::poll_event`]) and tells when it wants to be woken
//! ([`Mux::poll_timeout`]). Time is passed in. It never owns a socket, a thread or a
//! clock, so tests run two of them over a simulated link with virtual time (feature
//! `testkit`), and any transport can drive it.
//!
//! Unlike the original p2pVM, which had no flow control, every stream has a credit
//! window that **auto-tunes** toward the bandwidth-delay product, and all streams share a
//! **session-wide receive budget** ([`MuxConfig::session_budget`]), so memory stays
//! bounded however many streams exist and however slowly readers read. Sending is
//! round-robin across streams with control frames first, so small messages are not
//! stuck behind bulk transfers. The frame format is in `docs/PROTOCOL.md`, Part 4.
//!
//! ## Security and default limits
//!
//! * **Authentication must be chosen**: [`MuxConfig::auth`] has no default, and
//!   [`Mux::new`] refuses a configuration without one ([`Error::Config`]).
//!   [`Auth::None`] works only when set explicitly.
//! * **Tokens** ([`Token`]) have at least [`Token::MIN_LEN`] = 16 bytes (shorter:
//!   [`Error::Config`]); use random bytes, since anyone who completes the HELLO
//!   exchange obtains a PROOF to test guesses against offline. Tokens are redacted in
//!   `Debug` and zeroed on drop.
//! * **PROOF** = HMAC-SHA256(token, `"zs-p2pvm/1 proof"` ‖ prover role ‖ both HELLOs
//!   ‖ channel binding). The HELLOs carry both random nonces (no replay), the role
//!   byte stops reflection, and inside a secure session the session's 32-byte channel
//!   binding (`zs_crypto::SecureSession::channel_binding`, reported by zs-secure's
//!   layer as `SecurityInfo::channel_binding`; [`Mux::bind_channel`], done by the
//!   tunnel driver) ties the proof to that session, so a handshake relayed
//!   between two secure sessions fails. Over a plain
//!   link there is no binding: token auth is access control only and does not
//!   protect the integrity of the tunnel; the tunnel driver therefore requires a
//!   secure session ([`TunnelConfig::security`], run by zs-secure's layer, or a
//!   secure physical backend, [`TunnelConfig::secure_link`]) unless
//!   [`TunnelConfig::allow_plaintext`] is set.
//! * **Limits** (defaults): [`MuxConfig::max_streams`] 4,096 open streams;
//!   [`MuxConfig::max_control_bytes`] 64 KiB of queued control frames, beyond which
//!   input is held (and the driver pauses reading the link) until the output drains;
//!   [`MuxConfig::ready_timeout`] 10 s to become ready (authenticated, listen tables
//!   exchanged), however slowly the peer trickles bytes; [`MuxConfig::session_budget`]
//!   64 MiB of unread data plus outstanding credit; [`MuxConfig::idle_timeout`] 60 s
//!   without any byte received; at most [`MAX_PEER_LISTENS`] peer listen addresses.
//! * **Nonces** come from the OS generator; if it fails, [`Mux::new`] fails
//!   ([`Error::Rng`]) rather than use a weaker source.
//!
//! ## Example
//!
//! ```
//! use std::time::Instant;
//! use zs_p2pvm::{Auth, Mux, MuxConfig, MuxEvent, Role};
//!
//! let now = Instant::now();
//! let cfg = MuxConfig::new(Auth::token(b"16+ random bytes, shared")?);
//! let mut server = Mux::new(Role::Acceptor, cfg.clone(), now)?;
//! let mut client = Mux::new(Role::Initiator, cfg, now)?;
//! let addr = "10.0.0.1:80".parse().unwrap();
//! server.listen(addr).unwrap();
//!
//! // A stand-in for the network: move bytes both ways until both sides are quiet.
//! fn pump(a: &mut Mux, b: &mut Mux, now: Instant) {
//!     loop {
//!         let (mut ab, mut ba) = (Vec::new(), Vec::new());
//!         a.write_output(&mut ab);
//!         b.write_output(&mut ba);
//!         if ab.is_empty() && ba.is_empty() {
//!             break;
//!         }
//!         b.handle_input(&ab, now).unwrap();
//!         a.handle_input(&ba, now).unwrap();
//!     }
//! }
//!
//! let id = client.connect(addr).unwrap(); // queued until the tables arrive
//! pump(&mut client, &mut server, now);
//! assert!(client.is_ready() && server.is_ready());
//!
//! client.send(id, b"hello").unwrap();
//! pump(&mut client, &mut server, now);
//! let mut incoming = None;
//! while let Some(ev) = server.poll_event() {
//!     if let MuxEvent::Incoming { id, local, .. } = ev {
//!         assert_eq!(local, addr);
//!         incoming = Some(id);
//!     }
//! }
//! let got = server.read(incoming.unwrap(), 1024).unwrap().unwrap();
//! assert_eq!(&got[..], b"hello");
//! # Ok::<(), zs_p2pvm::Error>(())
//! ```
#![forbid(unsafe_code)]

mod addr;
mod auth;
mod error;
pub mod frame;
mod mux;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::fmt;
use std::time::Duration;

pub use auth::{Auth, Token};
pub use error::Error;
pub use mux::{Mux, COPY_BELOW, MAX_PEER_LISTENS, OUTPUT_LIMIT, QUANTUM, ZERO_COPY_MIN};
/// Virtual addresses are socket addresses (IPv4 or IPv6 and a port), like the seed's.
pub use std::net::SocketAddr;

/// Identifies one stream (virtual connection) within a tunnel.
///
/// The [`Role::Initiator`] allocates odd ids, the [`Role::Acceptor`] even ids (never 0,
/// which names the session itself), so the two sides never collide. Ids only grow:
/// an id is never used twice in one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Which end of the tunnel a [`Mux`] is. The two ends must have different roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The end that opened the physical connection; allocates odd stream ids.
    Initiator,
    /// The end that accepted the physical connection; allocates even stream ids.
    Acceptor,
}

/// Knobs of a [`Mux`]. Every field is public; start from [`MuxConfig::new`] (which
/// names the authentication) or [`MuxConfig::default`] plus an explicit `auth`.
///
/// The defaults bound what an authenticated but hostile peer can make this side
/// hold: at most `max_streams` (4,096) streams, `session_budget` (64 MiB) of unread
/// data, `max_control_bytes` (64 KiB) of queued control frames before input is held,
/// and `ready_timeout` (10 s) to finish authentication at all.
#[derive(Debug, Clone)]
pub struct MuxConfig {
    /// Tunnel authentication. **No default**: `None` (the default) is refused by
    /// [`Mux::new`]; choose `Some(Auth::Token(..))` or, explicitly,
    /// `Some(Auth::None)`.
    pub auth: Option<Auth>,
    /// Receive credit a new stream starts with (default 64 KiB). It is also the most
    /// unread data a slow reader's stream holds (its window only grows while the
    /// reader keeps up).
    pub initial_window: u32,
    /// Ceiling for the auto-tuned per-stream window (default 16 MiB).
    pub max_window: u32,
    /// Session-wide receive budget (default 64 MiB): the peer holds session credit
    /// for at most this many bytes, and every DATA byte on any stream uses it until
    /// it is read (or discarded) here. So *unread bytes + credit the peer still holds
    /// ≤ `session_budget`* at every moment, however many streams exist; idle streams
    /// hold none of it. See `docs/PROTOCOL.md` 4.6.
    pub session_budget: usize,
    /// Maximum number of open streams, both directions together (default 4,096).
    /// Each stream the peer opens may start an application connection here (e.g. a
    /// zs-core session with its key exchange), so this bounds what one peer can make
    /// this side set up; further OPENs are refused (REFUSE 2). Raise it for tunnels
    /// whose peer is trusted to open many streams.
    pub max_streams: u32,
    /// Largest frame payload this side accepts (default 64 KiB; at least 1 KiB is
    /// used). Announced to the peer, which never sends more; a bigger frame is a
    /// protocol error.
    pub max_frame_payload: u32,
    /// Cap on queued control frames (PONG, REFUSE, ACCEPT, WINDOW, ...), in bytes
    /// (default 64 KiB; at least 1 KiB is used). Once this much control output waits
    /// for [`Mux::write_output`], the mux stops handling input: the rest is held
    /// (see [`Mux::input_blocked`]) until the output drains, so a peer that sends
    /// requests (PING, OPEN) without reading the answers cannot grow this side's
    /// memory. The tunnel driver pauses reading the link meanwhile.
    pub max_control_bytes: usize,
    /// Keepalive ping interval (default 10 s); each pong measures the round-trip time.
    pub keepalive: Option<Duration>,
    /// The tunnel closes when nothing was received for this long (default 60 s).
    pub idle_timeout: Option<Duration>,
    /// The tunnel closes unless it is ready (authenticated and the peer's listen
    /// table received) this long after [`Mux::new`] (or
    /// [`Mux::restart_timers`]), whatever the peer trickles (default 10 s).
    pub ready_timeout: Duration,
    /// Bytes per stream that [`Mux::send`] accepts before returning 0 (default 256 KiB).
    pub send_buffer: usize,
}

impl Default for MuxConfig {
    /// The default limits with **no authentication chosen** (`auth: None`), which
    /// [`Mux::new`] refuses: set `auth` (or use [`MuxConfig::new`]).
    fn default() -> Self {
        MuxConfig {
            auth: None,
            initial_window: 64 * 1024,
            max_window: 16 * 1024 * 1024,
            session_budget: 64 * 1024 * 1024,
            max_streams: 4096,
            max_frame_payload: 64 * 1024,
            max_control_bytes: 64 * 1024,
            keepalive: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            ready_timeout: Duration::from_secs(10),
            send_buffer: 256 * 1024,
        }
    }
}

impl MuxConfig {
    /// The default limits with the authentication `auth`.
    pub fn new(auth: Auth) -> MuxConfig {
        MuxConfig {
            auth: Some(auth),
            ..MuxConfig::default()
        }
    }

    /// Checks what [`Mux::new`] refuses: [`Error::Config`] when no authentication
    /// was chosen.
    pub fn validate(&self) -> Result<(), Error> {
        self.chosen_auth().map(|_| ())
    }

    pub(crate) fn chosen_auth(&self) -> Result<&Auth, Error> {
        self.auth.as_ref().ok_or_else(|| {
            Error::Config(
                "no tunnel authentication chosen: set `auth` to Some(Auth::Token(..)), \
                 or to Some(Auth::None) to run unauthenticated on purpose"
                    .into(),
            )
        })
    }
}

/// Something that happened in a [`Mux`]; drain them with [`Mux::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// Authentication done and both listen tables exchanged.
    Ready,
    /// The peer's listen table changed (also reported once for the initial table).
    PeerListen {
        /// Addresses the peer now listens on.
        added: Vec<SocketAddr>,
        /// Addresses the peer no longer listens on.
        removed: Vec<SocketAddr>,
    },
    /// The peer connected to one of our listen addresses; the stream is accepted
    /// already and may be used at once.
    Incoming {
        /// The new stream.
        id: StreamId,
        /// Our listen address it connected to.
        local: SocketAddr,
        /// The peer's side of the virtual connection.
        peer: SocketAddr,
    },
    /// A stream opened with [`Mux::connect`] was accepted by the peer.
    Connected {
        /// The stream.
        id: StreamId,
    },
    /// A stream opened with [`Mux::connect`] failed; the id is gone.
    ConnectFailed {
        /// The stream.
        id: StreamId,
        /// Why (usually [`Error::UnknownAddress`]).
        error: Error,
    },
    /// New data can be read (edge: reported again only after a read found the stream
    /// drained).
    Readable {
        /// The stream.
        id: StreamId,
    },
    /// The send buffer had been full (a send accepted less than offered) and has room
    /// again.
    Writable {
        /// The stream.
        id: StreamId,
    },
    /// The peer finished sending (FIN). Data received before it can still be read;
    /// after that `read` returns `None` and `readable_len` is 0.
    Finished {
        /// The stream.
        id: StreamId,
    },
    /// The stream is fully gone (both sides finished and everything read, or reset);
    /// its id is never used again.
    Closed {
        /// The stream.
        id: StreamId,
        /// True if it ended by a reset (either side) rather than gracefully.
        reset: bool,
    },
    /// A keepalive pong arrived.
    Pong {
        /// The measured round-trip time.
        rtt: Duration,
    },
    /// The tunnel is closed (GoAway received, authentication failed, idle timeout,
    /// protocol error, or [`Mux::close_tunnel`]). This is the last event; every stream
    /// is gone with it (no per-stream `Closed` events follow).
    TunnelClosed {
        /// Human-readable reason.
        reason: String,
    },
}

// --- tunnel (driver) ---
mod tunnel;
pub use tunnel::{CloseInfo, Tunnel, TunnelConfig, TunnelDriver, TunnelHandle};
