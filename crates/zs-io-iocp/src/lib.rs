//! # zs-io-iocp: the Windows transport backend
//!
//! zserver runs its sessions over the object-safe `zs_io` seam. On Windows the
//! efficient way to drive thousands of sockets is the *completion* model of I/O
//! completion ports, not readiness: this crate implements the seam with
//! `AcceptEx`/`ConnectEx` and overlapped `WSARecv`/`WSASend` through `windows-sys`,
//! so the framework above never sees the difference from the epoll backend.
//!
//! ## Design
//!
//! * A pool of event loops ([`zs_io::Config::loops`], default one per core), each a
//!   thread with **its own completion port**. A socket is associated with one port,
//!   so every completion and every handler callback of a connection runs on the same
//!   thread (seam contract item 1) without locks around the handler.
//! * Per connection at most one `WSARecv` and one `WSASend` are in flight. Receives
//!   go straight into the connection's `BytesMut` (first 4 KiB, doubling up to
//!   `read_chunk` while reads fill it, so idle connections stay small); sends hand
//!   the front of the bounded `zs_io::SendQueue` to the kernel (large chunks zero
//!   copy, small ones coalesced up to 64 KiB) and drop it from the queue only when
//!   the send completes, so back-pressure counts bytes in flight.
//! * Each listener keeps 32 `AcceptEx` in flight; accepted sockets are spread round
//!   robin over the loops. `ConnectEx` runs on a socket bound to the wildcard
//!   address, with the connect timeout on the loop's timer wheel.
//! * Other threads reach a loop through a command list and one posted wake-up
//!   packet (`PostQueuedCompletionStatus`).
//! * All `unsafe` lives in the private `sys` module: every overlapped operation owns
//!   its `OVERLAPPED` and buffers until its completion packet is dequeued (dropping
//!   one in flight leaks it rather than freeing memory the kernel may write).
//!
//! On other systems the crate compiles to nothing but these docs.
//!
//! ## Example
//!
//! An echo server on loopback, reached from a plain `std` client:
//!
//! ```
//! # #[cfg(windows)]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Write};
//! use zs_io::{Backend, BytesMut, Conn, Handler};
//! use zs_io_iocp::IocpBackend;
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
//!         let _ = conn.send(data.split().freeze());
//!     }
//! }
//!
//! let backend = IocpBackend::new(zs_io::Config { loops: 1, ..Default::default() })?;
//! let listener = backend.listen("127.0.0.1:0".parse()?, zs_io::handler_factory(|| Echo))?;
//! let mut client = std::net::TcpStream::connect(listener.local_addr())?;
//! client.write_all(b"ping")?;
//! let mut answer = [0u8; 4];
//! client.read_exact(&mut answer)?;
//! assert_eq!(&answer, b"ping");
//! backend.shutdown();
//! # Ok(())
//! # }
//! # #[cfg(not(windows))]
//! # fn main() {}
//! ```
//!
//! ## Testing
//!
//! `tests/conformance.rs` runs the `zs_io` conformance kit and `tests/behaviour.rs`
//! covers partial frames, paused reading and shutdown from a handler. CI builds them
//! for `x86_64-pc-windows-gnu` and runs them under wine: `cargo xtask test-windows
//! -p zs-io-iocp`. Wine differs from Windows in one way that matters here: it reports
//! a peer's reset to a pending receive as end of file. When a receive ends with 0
//! bytes the backend therefore sends 0 bytes: that fails after a reset (reason
//! `Reset`) and succeeds after a FIN (`PeerClosed`); on Windows the receive itself
//! already fails with `WSAECONNRESET`.
#![deny(unsafe_code)]

#[cfg(windows)]
mod backend;
#[cfg(windows)]
mod conn;
#[cfg(windows)]
mod event_loop;
#[cfg(windows)]
#[allow(unsafe_code)]
mod sys;

#[cfg(windows)]
pub use backend::IocpBackend;
