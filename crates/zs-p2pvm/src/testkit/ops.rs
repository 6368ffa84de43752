//! Random operation scripts on a [`Pair`], with the invariants checked after every
//! step. Shared by the proptest suite and the `p2pvm_ops` fuzz target.
//!
//! Invariants (a violation panics):
//! * two correct muxes never make each other fail (`handle_input` never errors, the
//!   tunnel never closes);
//! * every stream delivers its bytes in order and exactly once: every byte read is
//!   the byte sent at that offset, and after the final drain every direction that was
//!   not reset or closed by its reader has delivered everything that was sent;
//! * the session budget holds on both sides after every step (unread bytes and
//!   granted credit never exceed `session_budget`);
//! * when both sides close every stream, both stream tables end empty.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::{Pair, Side};
use crate::{Auth, Error, MuxConfig, MuxEvent, StreamId};

/// One step of a script. Stream and address operands are indexes, taken modulo the
/// number of candidates, so any value is meaningful.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// Connect from one side to one of the address pool.
    Connect {
        /// Acting side (true: client).
        client: bool,
        /// Address pool index.
        addr: u8,
    },
    /// Send `len` bytes of the stream's pattern.
    Send {
        /// Acting side.
        client: bool,
        /// Index among the side's known streams.
        stream: u8,
        /// Bytes offered.
        len: u16,
    },
    /// Read up to `max` bytes.
    Read {
        /// Acting side.
        client: bool,
        /// Index among the side's known streams.
        stream: u8,
        /// Most bytes to take.
        max: u16,
    },
    /// Half-close (FIN after queued data).
    ShutdownWrite {
        /// Acting side.
        client: bool,
        /// Index among the side's known streams.
        stream: u8,
    },
    /// Graceful close.
    Close {
        /// Acting side.
        client: bool,
        /// Index among the side's known streams.
        stream: u8,
    },
    /// Abort.
    Reset {
        /// Acting side.
        client: bool,
        /// Index among the side's known streams.
        stream: u8,
    },
    /// Listen on a pool address.
    Listen {
        /// Acting side.
        client: bool,
        /// Address pool index.
        addr: u8,
    },
    /// Stop listening on a pool address.
    Unlisten {
        /// Acting side.
        client: bool,
        /// Address pool index.
        addr: u8,
    },
    /// Let virtual time pass (timers and link).
    Advance {
        /// Milliseconds.
        ms: u16,
    },
    /// Run the link until idle.
    Drive,
    /// Re-chunk deliveries into pieces of at most `max` bytes (0: off).
    Chunking {
        /// Largest piece.
        max: u16,
    },
    /// Change the one-way latency.
    Latency {
        /// Milliseconds.
        ms: u8,
    },
}

const POOL: [&str; 3] = ["10.0.0.1:1", "10.0.0.2:2", "[fd00::3]:3"];

fn pool(i: u8) -> SocketAddr {
    POOL[i as usize % POOL.len()]
        .parse()
        .unwrap_or_else(|_| unreachable!())
}

/// The configuration scripts run with: small windows, budget and buffers, so flow
/// control, blocking and budget limits are exercised constantly.
pub fn script_config() -> MuxConfig {
    MuxConfig {
        initial_window: 1024,
        max_window: 8192,
        session_budget: 6000,
        send_buffer: 3000,
        max_frame_payload: 1024,
        keepalive: Some(Duration::from_millis(700)),
        idle_timeout: None,
        ..MuxConfig::new(Auth::None)
    }
}

/// Byte `off` of the stream `id` in the direction from the client (`dir`) or server.
fn byte_at(dir: bool, id: u32, off: u64) -> u8 {
    let x = (id as u64)
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(off.wrapping_mul(0x85EB_CA6B))
        ^ dir as u64;
    (x ^ (x >> 13) ^ (x >> 29)) as u8
}

/// Bookkeeping of what was sent and received.
#[derive(Default)]
struct Model {
    /// Streams each side may act on (client, server).
    known: [Vec<StreamId>; 2],
    /// Bytes accepted by `send`, per (from client, id).
    sent: HashMap<(bool, u32), u64>,
    /// Bytes read, per (from client, id).
    recv: HashMap<(bool, u32), u64>,
    /// Directions that may legitimately lose data (reset, closed by the reader,
    /// connect failed).
    lossy: HashSet<(bool, u32)>,
    /// Streams a side shut down or closed (writes must fail), per (client, id).
    shut: HashSet<(bool, u32)>,
}

impl Model {
    fn side_ix(client: bool) -> usize {
        if client {
            0
        } else {
            1
        }
    }

    fn pick(&self, client: bool, i: u8) -> Option<StreamId> {
        let k = &self.known[Self::side_ix(client)];
        if k.is_empty() {
            None
        } else {
            Some(k[i as usize % k.len()])
        }
    }

    fn forget(&mut self, client: bool, id: StreamId) {
        self.known[Self::side_ix(client)].retain(|s| *s != id);
    }

    fn taint(&mut self, id: u32) {
        self.lossy.insert((true, id));
        self.lossy.insert((false, id));
    }
}

fn side(p: &mut Pair, client: bool) -> &mut Side {
    if client {
        &mut p.client
    } else {
        &mut p.server
    }
}

/// Processes the events both sides collected; checks budget and health.
fn absorb(p: &mut Pair, m: &mut Model) {
    for client in [true, false] {
        let budget = side(p, client).mux.config().session_budget;
        let s = side(p, client);
        assert!(
            s.errors.is_empty(),
            "a correct peer caused errors: {:?}",
            s.errors
        );
        assert!(!s.mux.is_closed(), "tunnel closed between correct peers");
        assert!(
            s.max_committed <= budget,
            "session budget exceeded: {}",
            s.max_committed
        );
        assert!(s.mux.buffered_bytes() <= s.mux.session_committed());
        for e in s.take_events() {
            match e {
                MuxEvent::Incoming { id, .. } => m.known[Model::side_ix(client)].push(id),
                MuxEvent::ConnectFailed { id, .. } => {
                    m.forget(client, id);
                    m.taint(id.0);
                }
                MuxEvent::Closed { id, reset } => {
                    m.forget(client, id);
                    if reset {
                        m.taint(id.0);
                    }
                }
                MuxEvent::TunnelClosed { reason } => panic!("tunnel closed: {reason}"),
                _ => {}
            }
        }
    }
}

/// Reads up to `max` from one stream and checks the bytes against the pattern.
fn read_check(p: &mut Pair, m: &mut Model, client: bool, id: StreamId, max: usize) -> usize {
    let dir = !client; // data read by the client came from the server
    match side(p, client).mux.read(id, max) {
        Ok(Some(b)) => {
            assert!(
                !b.is_empty() && b.len() <= max,
                "read returned {} bytes for max {max}",
                b.len()
            );
            let off = m.recv.entry((dir, id.0)).or_insert(0);
            for (i, &x) in b.iter().enumerate() {
                assert_eq!(
                    x,
                    byte_at(dir, id.0, *off + i as u64),
                    "stream {id} corrupted at {}",
                    *off + i as u64
                );
            }
            *off += b.len() as u64;
            let sent = m.sent.get(&(dir, id.0)).copied().unwrap_or(0);
            assert!(*off <= sent, "stream {id}: read {} of {sent} sent", *off);
            b.len()
        }
        Ok(None) => 0,
        Err(Error::UnknownStream(_)) => {
            m.forget(client, id);
            0
        }
        Err(e) => panic!("read: {e}"),
    }
}

fn apply(p: &mut Pair, m: &mut Model, op: &Op) {
    match *op {
        Op::Connect { client, addr } => match side(p, client).mux.connect(pool(addr)) {
            Ok(id) => m.known[Model::side_ix(client)].push(id),
            Err(Error::UnknownAddress(_)) | Err(Error::TooManyStreams) => {}
            Err(e) => panic!("connect: {e}"),
        },
        Op::Send {
            client,
            stream,
            len,
        } => {
            let Some(id) = m.pick(client, stream) else {
                return;
            };
            let off = m.sent.get(&(client, id.0)).copied().unwrap_or(0);
            let data: Vec<u8> = (0..len as u64)
                .map(|i| byte_at(client, id.0, off + i))
                .collect();
            match side(p, client).mux.send(id, &data) {
                Ok(n) => {
                    assert!(n <= data.len());
                    assert!(
                        !m.shut.contains(&(client, id.0)),
                        "send accepted after shutdown"
                    );
                    *m.sent.entry((client, id.0)).or_insert(0) += n as u64;
                }
                Err(Error::StreamClosed(_)) => {
                    assert!(
                        m.shut.contains(&(client, id.0)),
                        "StreamClosed without shutdown"
                    );
                }
                Err(Error::UnknownStream(_)) => m.forget(client, id),
                Err(e) => panic!("send: {e}"),
            }
        }
        Op::Read {
            client,
            stream,
            max,
        } => {
            let Some(id) = m.pick(client, stream) else {
                return;
            };
            read_check(p, m, client, id, max as usize);
        }
        Op::ShutdownWrite { client, stream } => {
            let Some(id) = m.pick(client, stream) else {
                return;
            };
            if side(p, client).mux.shutdown_write(id).is_ok() {
                m.shut.insert((client, id.0));
            }
        }
        Op::Close { client, stream } => {
            let Some(id) = m.pick(client, stream) else {
                return;
            };
            side(p, client).mux.close(id);
            m.shut.insert((client, id.0));
            // Incoming data is dropped from now on.
            m.lossy.insert((!client, id.0));
        }
        Op::Reset { client, stream } => {
            let Some(id) = m.pick(client, stream) else {
                return;
            };
            side(p, client).mux.reset(id);
            m.taint(id.0);
        }
        Op::Listen { client, addr } => match side(p, client).mux.listen(pool(addr)) {
            Ok(()) | Err(Error::AddressInUse(_)) => {}
            Err(e) => panic!("listen: {e}"),
        },
        Op::Unlisten { client, addr } => side(p, client).mux.unlisten(pool(addr)),
        Op::Advance { ms } => p.drive_for(Duration::from_millis(ms as u64 % 3000)),
        Op::Drive => p.drive(),
        Op::Chunking { max } => p.max_chunk = (max > 0).then_some(max as usize),
        Op::Latency { ms } => p.latency = Duration::from_millis(ms as u64 % 50),
    }
}

/// Runs a script on a fresh pair (both sides with [`script_config`]), then drains
/// and closes everything, checking the invariants listed in the module docs.
pub fn run(ops: &[Op]) {
    let mut p = Pair::new(script_config(), script_config());
    p.server
        .mux
        .listen(pool(0))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut m = Model::default();
    for op in ops {
        apply(&mut p, &mut m, op);
        absorb(&mut p, &mut m);
    }

    // Drain: read everything until nothing moves.
    p.max_chunk = None;
    for _ in 0..10_000 {
        p.drive();
        absorb(&mut p, &mut m);
        let mut moved = 0;
        for client in [true, false] {
            for id in m.known[Model::side_ix(client)].clone() {
                while let n @ 1.. = read_check(&mut p, &mut m, client, id, usize::MAX) {
                    moved += n;
                }
            }
        }
        absorb(&mut p, &mut m);
        if moved == 0 && !p.client.mux.wants_write() && !p.server.mux.wants_write() {
            break;
        }
    }
    for (&(dir, id), &sent) in &m.sent {
        if m.lossy.contains(&(dir, id)) {
            continue;
        }
        let got = m.recv.get(&(dir, id)).copied().unwrap_or(0);
        assert_eq!(
            got,
            sent,
            "stream {id} from {}: delivered {got} of {sent}",
            if dir { "client" } else { "server" }
        );
    }

    // Close everything on both sides; the tables must end empty.
    for _ in 0..100 {
        for client in [true, false] {
            for id in m.known[Model::side_ix(client)].clone() {
                side(&mut p, client).mux.close(id);
            }
        }
        p.drive();
        absorb(&mut p, &mut m);
        if p.client.mux.stream_count() == 0 && p.server.mux.stream_count() == 0 {
            break;
        }
    }
    assert_eq!(p.client.mux.stream_count(), 0, "client streams left");
    assert_eq!(p.server.mux.stream_count(), 0, "server streams left");
    assert_eq!(
        p.client.mux.buffered_bytes() + p.server.mux.buffered_bytes(),
        0
    );
    assert!(!p.client.mux.wants_write() && !p.server.mux.wants_write());
}
