//! # zs-core: the framework kernel
//!
//! Why it exists: this is what a ZServer4D user did with `RegisterConsole` /
//! `SendStreamCmd`, in Rust, on any transport. It joins the other crates:
//! `zs-wire` frames travel over a `zs-io` backend whose connections already
//! carry plaintext because a security layer sits under them (`zs-secure`'s
//! `SecureBackend`: handshake, records, who the peer is), and named command
//! handlers answer them. zs-core itself knows no cryptography.
//!
//! Layers:
//! - [`Session`] (sans-IO): one end of a connection. Frames over the plaintext
//!   link (`BytesMut` in, frames as slices of it); request ids so **many calls are in flight** on one
//!   connection and answers may come in any order; per-call timeouts on virtual
//!   time; [`Session::connection_lost`] completes every pending call with an error.
//!   CompleteBuffer has a receiver size limit answered with a clear
//!   [`code::TOO_LARGE`] error (the seed disconnected silently); BatchStream frames
//!   are staged and handed over together, and the answer is followed by a
//!   checksum of every staged frame (SHA3-256, first 16 bytes) that the caller
//!   verifies ([`Error::ChecksumMismatch`]); BigStream is chunked with a window
//!   of unacknowledged bytes (back-pressure without stop-and-wait), progress
//!   events, and resume from an offset ([`Session::big_stream`]).
//! - **StableIO** ([`Client::connect_stable`]): a session that survives its TCP
//!   connection dying. Application frames become numbered records kept until
//!   the peer acknowledges them; the client reconnects by itself (exponential
//!   backoff with jitter, [`Reconnect`]), presents the session id and secret
//!   the server gave it, and both sides send again what the other has not
//!   handled: nothing lost, nothing duplicated, order kept. Pending calls,
//!   delayed responders, the server's [`Peer`] (same id, same user state) all
//!   carry over. Sending while offline queues up to
//!   [`SessionConfig::stable_max_unacked`] bytes, then answers [`Error::Full`].
//!   A server keeps an offline session for [`Options::stable_offline_timeout`]
//!   within count and memory limits, then drops it with a logged reason (and a
//!   counter in [`StatsSnapshot`]); the client's pending calls then fail with
//!   [`Error::SessionLost`]. [`Client::drop_link`] / [`Peer::drop_link`] cut
//!   the current connection on purpose; [`Client::close`] ends the session on
//!   the server at once (an in-band `__@close`: over the layer a FIN is only a
//!   lost link).
//! - [`Registry`]: handlers by kind and name. **Names are case-insensitive
//!   (ASCII)**, as in the seed. Plain closures run on the connection's event loop;
//!   `*_delayed` handlers keep a [`Responder`] and answer later from any thread
//!   (it reports [`Error::ConnectionLost`] if the connection is gone, and answers
//!   an error if dropped unanswered); `*_hpc` handlers run on a crossbeam
//!   [`WorkerPool`] and answer from there; `*_async` handlers are futures polled
//!   on that pool (any runtime-agnostic future, e.g. a [`CallFuture`] to another
//!   server). BigStream handlers see every chunk in order ([`BigChunk`]), so
//!   nothing is buffered whole; or, with [`Registry::big_stream_collect`], get
//!   the whole body as a [`BigBody`] (`Read + Seek`), kept in memory below a
//!   threshold and spilled to a temporary file above it (the seed's disk swap),
//!   with a hard size limit answered [`code::TOO_LARGE`].
//! - [`Server`] / [`Client`] (on any `zs_io::Backend`): connection map by id,
//!   per-connection user state ([`Peer::with_state`]), broadcast to all or a
//!   filter, statistics per server and per command ([`StatsSnapshot`]: counts,
//!   bytes, errors, p50/p90/p99/max latency), keepalive and idle timeouts, an
//!   ordered mode ([`Options::ordered`]), back-pressure (a peer that does not
//!   read is disconnected past [`Options::max_backlog`]). Who the peer is
//!   (suite, PSK identity) and the StableIO channel binding come from
//!   `zs_io::Connection::security_info`; a connection without it is refused,
//!   so a raw backend given by mistake serves nothing in the clear. The
//!   handshake's deadline and caps are the layer's. Custom-protocol mode
//!   (connections that do not start with a zs handshake go to a raw-bytes
//!   `zs_io::Handler` on the same port) is the layer's too:
//!   `zs_secure::SecureBackend::listen_with_raw` with [`Server::start_with`].
//!   Client calls
//!   return a [`CallFuture`] (runtime-agnostic: `.await` it anywhere or `wait()`),
//!   or take a callback.
//!
//! This crate depends on no async runtime and no particular backend: the
//! `zserver` facade and the `zs` CLI pick them. docs/PROTOCOL.md Part 3 gives
//! the session layer byte by byte.
//!
//! ```
//! use std::sync::Arc;
//! use zs_core::{Client, Options, Registry, Server};
//! use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, ZsSecurity};
//!
//! // Security: the server's Ed25519 identity, pinned by the client.
//! let (identity, _seed) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
//! let provider = Arc::new(ZsSecurity::new(
//!     Some(Arc::new(ClientConfig::pinned(identity.fingerprint()))),
//!     Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
//! ));
//! // Any zs-io backend (tokio here) under the security layer.
//! let io = Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, ..Default::default() }).unwrap());
//! let backend = Arc::new(zs_secure::SecureBackend::new(io, provider));
//!
//! let mut commands = Registry::new();
//! commands.console("echo", |_peer, text| Ok(text.to_owned()));
//! let server = Server::start(backend.clone(), commands, Options::default(),
//!     "127.0.0.1:0".parse().unwrap()).unwrap();
//!
//! let client = Client::connect(backend.clone(), Registry::new(),
//!     Options::client(), server.local_addr()).unwrap();
//! assert_eq!(client.call("Echo", "hello").wait().unwrap(), "hello");
//! assert_eq!(server.stats().commands[0].calls, 1);
//!
//! // StableIO: the session outlives its connection.
//! let stable = Client::connect_stable(backend, Registry::new(),
//!     Options::client(), server.local_addr()).unwrap();
//! let call = stable.call("echo", "survives");
//! stable.drop_link();                              // the TCP connection dies...
//! assert_eq!(call.wait().unwrap(), "survives");    // ...the call completes, once
//! assert_eq!(stable.call("echo", "again").wait().unwrap(), "again");
//! assert_eq!(server.stats().stable_sessions, 1);
//! ```
#![forbid(unsafe_code)]

mod body;
mod budget;
mod clock;
mod error;
mod fanout;
mod lazy;
mod net;
mod oneshot;
mod pending;
mod pool;
mod registry;
mod session;
mod stable;
mod stats;

pub use budget::{BatchFilter, Budgets};
pub use error::{code, Error, HandshakeKind, Result};
pub use fanout::{defer_wakes, send_to_each};
pub use net::{Client, LocalConn, LocalSink, Options, Reconnect, ReplySink, Server, LOCAL_ID_BASE};
pub use oneshot::CallFuture;
pub use pool::WorkerPool;
pub use registry::runtime;
pub use registry::{
    AppState, BigBody, BigChunk, CollectLimits, HandlerError, Outbox, Peer, Registry, Responder,
};
pub use session::{Call, Event, Reply, Request, Session, SessionConfig};
pub use stable::{batch_checksum, SECRET_LEN};
pub use stats::{CommandSnapshot, CommandStats, EndpointStats, StatsSnapshot, LATENCY_SAMPLES};
