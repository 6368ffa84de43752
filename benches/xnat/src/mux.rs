//! The other data path the issue asks to measure: **one p2pvm mux per agent**
//! (zs-p2pvm's `Tunnel` over one zs-crypto session, pinned relay key, token
//! auth) instead of zs-xnat's pool of pre-opened data connections (one
//! zs-crypto session per public connection).
//!
//! A minimal relay and agent on zs-p2pvm's public API, run as processes of
//! this binary (`__mux_relay`, `__mux_agent`) so they are measured like the
//! others: each public TCP connection on the relay opens one virtual stream to
//! the agent (one OPEN frame, no new TCP connection or handshake), and the
//! agent connects it to the local service. Bytes go both ways with the
//! zs-io back-pressure rules (a full send queue pauses the other side's
//! reads until `on_writable`), half-closes pass through. Same promise as our
//! default: every byte sealed with AES-256-GCM inside a session whose server
//! key the agent pins.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use zs_crypto::provider::ZsSecurity;
use zs_crypto::session::{ClientConfig, ServerConfig, ServerIdentity};
use zs_io::{Backend, CloseReason, Conn, Error, Handler, HandlerFactory};
use zs_p2pvm::{Auth, Tunnel, TunnelConfig, TunnelHandle};

const TOKEN: &[u8] = b"zs-xnat-bench-mux-token";
const SEED: [u8; 32] = [42; 32];

fn identity() -> ServerIdentity {
    ServerIdentity::from_seed(&SEED).expect("seed")
}

fn tunnel_config(security: ZsSecurity) -> TunnelConfig {
    let mut c = TunnelConfig::secure(Arc::new(security), Auth::token(TOKEN).expect("token"));
    c.mux.keepalive = Some(Duration::from_secs(10));
    c.mux.idle_timeout = Some(Duration::from_secs(60));
    c
}

fn backend() -> Arc<zs_io_epoll::EpollBackend> {
    Arc::new(zs_io_epoll::EpollBackend::new(zs_io::Config::default()).expect("epoll backend"))
}

/// The virtual address of mapping `i` inside the tunnel.
fn vaddr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 1000 + i as u16))
}

/// Two connections joined back to back (a public one and a virtual stream, or
/// a virtual stream and a local one).
#[derive(Default)]
struct Pair {
    conns: [Option<Conn>; 2],
    /// Bytes for side `i` that its queue refused (or that came before it opened).
    held: [Vec<Bytes>; 2],
    /// Side `i` is to be shut for writing once its held bytes are sent (the
    /// other side's peer half-closed).
    eof_for: [bool; 2],
    /// Side `i` was shut for writing.
    shut: [bool; 2],
    /// Side `i`'s peer half-closed.
    got_eof: [bool; 2],
    closed: bool,
}

impl Pair {
    /// Sends what is held for side `to`; false while its queue is full.
    fn flush(&mut self, to: usize) -> bool {
        let Some(c) = self.conns[to].clone() else {
            return false;
        };
        while !self.held[to].is_empty() {
            let b = self.held[to].remove(0);
            match c.send(b) {
                Ok(()) => {}
                Err(Error::Full(b)) => {
                    self.held[to].insert(0, b);
                    return false;
                }
                Err(_) => {
                    self.held[to].clear();
                    return true;
                }
            }
        }
        if std::mem::take(&mut self.eof_for[to]) {
            let _ = c.shutdown_write();
            self.shut[to] = true;
            if self.got_eof[to] {
                // Both directions of this side ended.
                c.close();
            }
        }
        true
    }
}

struct Half {
    pair: Arc<Mutex<Pair>>,
    me: usize,
    /// Agent side: the local service to connect once the stream opens.
    connect: Option<(Arc<dyn Backend>, SocketAddr)>,
}

impl Handler for Half {
    fn on_open(&mut self, conn: &Conn) {
        {
            let mut p = self.pair.lock().unwrap();
            if p.closed {
                conn.abort();
                return;
            }
            p.conns[self.me] = Some(conn.clone());
            if p.flush(self.me) {
                if let Some(o) = &p.conns[1 - self.me] {
                    o.set_read_paused(false);
                }
            }
        }
        if let Some((b, local)) = self.connect.take() {
            // Read nothing from the stream until the local side is open.
            conn.set_read_paused(true);
            let other = Half {
                pair: self.pair.clone(),
                me: 1 - self.me,
                connect: None,
            };
            if b.connect(local, Duration::from_secs(5), Box::new(other))
                .is_err()
            {
                conn.abort();
            }
        }
    }

    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let b = data.split().freeze();
        let to = 1 - self.me;
        let mut p = self.pair.lock().unwrap();
        p.held[to].push(b);
        if !p.flush(to) {
            conn.set_read_paused(true);
        }
    }

    fn on_writable(&mut self, _conn: &Conn) {
        let mut p = self.pair.lock().unwrap();
        if p.flush(self.me) {
            if let Some(o) = &p.conns[1 - self.me] {
                o.set_read_paused(false);
            }
        }
    }

    fn on_eof(&mut self, conn: &Conn) {
        let to = 1 - self.me;
        let mut p = self.pair.lock().unwrap();
        p.got_eof[self.me] = true;
        if p.shut[self.me] {
            conn.close();
        }
        p.eof_for[to] = true;
        p.flush(to);
    }

    fn on_close(&mut self, _conn: &Conn, _reason: CloseReason) {
        let mut p = self.pair.lock().unwrap();
        if !p.closed {
            p.closed = true;
            if let Some(o) = &p.conns[1 - self.me] {
                o.close();
            }
        }
    }

    fn on_connect_failed(&mut self, _error: Error) {
        let mut p = self.pair.lock().unwrap();
        p.closed = true;
        if let Some(o) = &p.conns[1 - self.me] {
            o.abort();
        }
    }
}

/// `__mux_relay CONTROL PUBLIC...`: accepts one agent tunnel on `CONTROL`,
/// then serves public port `PUBLIC[i]` through virtual address `vaddr(i)`.
pub fn relay(args: &[String]) {
    let control: SocketAddr = args[0].parse().expect("control address");
    let publics: Vec<SocketAddr> = args[1..]
        .iter()
        .map(|a| a.parse().expect("public"))
        .collect();
    let be = backend();
    let server = ServerConfig::with_identity(Arc::new(identity()));
    let cfg = tunnel_config(ZsSecurity::new(None, Some(Arc::new(server))));
    let (factory, tunnels) = Tunnel::acceptor(cfg).expect("tunnel acceptor");
    let _control = be.listen(control, factory).expect("listen control");
    let mut listeners = Vec::new();
    let mut current: Option<TunnelHandle> = None;
    loop {
        // A new agent tunnel replaces the old one (the bench runs one agent).
        let t = tunnels.recv().expect("tunnel");
        if t.wait_ready(Duration::from_secs(10)).is_err() {
            continue;
        }
        for i in 0..publics.len() {
            t.wait_peer_listen(vaddr(i), Duration::from_secs(10));
        }
        if current.is_none() {
            for (i, p) in publics.iter().enumerate() {
                let shared: Arc<Mutex<Option<TunnelHandle>>> =
                    Arc::new(Mutex::new(Some(t.clone())));
                let f: HandlerFactory = Arc::new(move || {
                    let pair = Arc::new(Mutex::new(Pair::default()));
                    let t = shared.lock().unwrap().clone();
                    let stream = Half {
                        pair: pair.clone(),
                        me: 1,
                        connect: None,
                    };
                    if let Some(t) = t {
                        let _ = t.connect(vaddr(i), Duration::from_secs(5), Box::new(stream));
                    }
                    Box::new(Half {
                        pair,
                        me: 0,
                        connect: None,
                    })
                });
                listeners.push(be.listen(*p, f).expect("listen public"));
            }
        }
        current = Some(t);
    }
}

/// `__mux_agent RELAY_CONTROL FINGERPRINT LOCAL...`: one tunnel to the
/// relay (its key pinned), virtual address `vaddr(i)` connected to `LOCAL[i]`.
pub fn agent(args: &[String]) {
    let relay: SocketAddr = args[0].parse().expect("relay address");
    let fp = args[1].parse().expect("fingerprint");
    let locals: Vec<SocketAddr> = args[2..]
        .iter()
        .map(|a| a.parse().expect("local"))
        .collect();
    let be = backend();
    let cfg = tunnel_config(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(fp))),
        None,
    ));
    let t =
        Tunnel::connect(&*be, relay, cfg, Duration::from_secs(10)).expect("tunnel to the relay");
    let mut listeners = Vec::new();
    for (i, local) in locals.iter().enumerate() {
        let local = *local;
        let dial: Arc<dyn Backend> = be.clone();
        let f: HandlerFactory = Arc::new(move || {
            Box::new(Half {
                pair: Arc::new(Mutex::new(Pair::default())),
                me: 0,
                connect: Some((dial.clone(), local)),
            })
        });
        listeners.push(t.listen(vaddr(i), f).expect("virtual listen"));
    }
    let _ = t.wait_closed(Duration::from_secs(86_400));
}

/// The relay fingerprint agents of the mux path pin.
pub fn fingerprint() -> String {
    identity().fingerprint().to_string()
}
