//! Attacks from the 2026-12 security audit (M1 token part, M2, M3, L6 is a unit test
//! in `mux.rs`): hostile peers against a `Mux` (sans-IO) and against real tunnel
//! ends on loopback. Each test fails on the code before the fixes.
#![allow(clippy::unwrap_used)]

mod tunnel_util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zs_crypto::{ClientConfig, ServerConfig, Session};
use zs_io::testkit::Recorder;
use zs_io::{Backend, Handler};
use zs_p2pvm::frame::{self, AuthMode, Frame, HEADER_LEN};
use zs_p2pvm::testkit::Pair;
use zs_p2pvm::{Auth, Error, Mux, MuxConfig, Role, Token, Tunnel, TunnelConfig, TunnelHandle};

use tunnel_util::{echo_once, Io, WAIT};

const TOKEN: &[u8] = b"a 16+ byte token for the tests";
const PSK: &[u8] = b"0123456789abcdef0123456789abcdef";

fn io() -> Io {
    #[cfg(target_os = "linux")]
    {
        Io::Epoll
    }
    #[cfg(not(target_os = "linux"))]
    {
        Io::Tokio
    }
}

/// Frames a peer sends to authenticate with `Auth::None` and announce an empty table.
fn none_hello() -> Vec<u8> {
    let mut b = Vec::new();
    Frame::Hello {
        mode: AuthMode::None,
        max_payload: 65536,
        nonce: [7; 32],
    }
    .encode(&mut b);
    Frame::Listen {
        done: true,
        changes: vec![],
    }
    .encode(&mut b);
    b
}

/// Counts the frames of each type in a byte stream of whole frames.
fn count_frames(mut b: &[u8], ty: u8) -> usize {
    let mut n = 0;
    while let Some(h) = frame::decode_header(b, u32::MAX).unwrap() {
        if h.ty == ty {
            n += 1;
        }
        b = &b[HEADER_LEN + h.len as usize..];
    }
    assert!(b.is_empty(), "trailing partial frame");
    n
}

fn echo_factory() -> zs_io::HandlerFactory {
    let (rec, _ev) = Recorder::new(true);
    let rec = Mutex::new(rec);
    Arc::new(move || Box::new(rec.lock().unwrap().sibling()) as Box<dyn Handler>)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ------------------------------------------------------------------------ M3

/// A peer floods PINGs and OPENs (100,000 each) and does not read the answers:
/// the control queue stops at its cap (input is held instead of answered), and
/// once the peer reads again every request is answered exactly once, in order.
#[test]
fn request_flood_without_reading_keeps_the_control_queue_capped() {
    let cap = 16 * 1024;
    let cfg = MuxConfig {
        max_control_bytes: cap,
        keepalive: None,
        ..MuxConfig::new(Auth::None)
    };
    let now = Instant::now();
    let mut m = Mux::new(Role::Acceptor, cfg, now).unwrap();
    let mut attack = none_hello();
    let n = 100_000u32;
    for i in 0..n {
        Frame::Ping { value: i as u64 }.encode(&mut attack);
        // OPENs to an address nobody listens on: each one asks for a REFUSE.
        Frame::Open {
            id: 2 * i + 1,
            window: 1024,
            addr: "10.9.9.9:9".parse().unwrap(),
        }
        .encode(&mut attack);
    }
    // The link: what the victim writes, as far as the (non-reading) peer's socket
    // buffers take it.
    let link_room = 64 * 1024;
    let mut wire = Vec::new();
    let mut fed = 0;
    let chunk = 64 * 1024;
    // A driver: feeds what arrives until the mux says it holds input, writes
    // output while the link takes it.
    loop {
        if !m.input_blocked() && fed < attack.len() {
            let end = (fed + chunk).min(attack.len());
            m.handle_input(&attack[fed..end], now).unwrap();
            fed = end;
        } else if wire.len() < link_room && m.wants_write() {
            m.write_output(&mut wire);
            m.handle_input(&[], now).unwrap();
        } else {
            break;
        }
        assert!(
            m.control_len() <= cap + 64,
            "control queue {} over the cap",
            m.control_len()
        );
        assert!(m.pending_input() <= chunk + cap, "{}", m.pending_input());
    }
    assert!(m.input_blocked(), "the flood must have hit the cap");
    assert!(fed < attack.len() / 10, "stopped taking input: {fed}");
    assert!(m.control_len() <= cap + 64);

    // The peer reads again: everything is answered, once, in order.
    let mut rest = Vec::new();
    loop {
        let before = (fed, rest.len(), m.pending_input());
        m.write_output(&mut rest);
        m.handle_input(&[], now).unwrap();
        if !m.input_blocked() && fed < attack.len() {
            let end = (fed + chunk).min(attack.len());
            m.handle_input(&attack[fed..end], now).unwrap();
            fed = end;
        }
        assert!(m.control_len() <= cap + 64);
        if (fed, rest.len(), m.pending_input()) == before {
            break;
        }
    }
    assert_eq!(fed, attack.len());
    assert_eq!(m.pending_input(), 0);
    wire.extend_from_slice(&rest);
    // The victim's own first PING (RTT probe) is also there; count the answers.
    assert_eq!(count_frames(&wire, frame::ty::PONG), n as usize);
    assert_eq!(count_frames(&wire, frame::ty::REFUSE), n as usize);
    let mut values = Vec::new();
    let mut b = &wire[..];
    while !b.is_empty() {
        match frame::decode(b, u32::MAX).unwrap() {
            Some((Frame::Pong { value }, used)) => {
                values.push(value);
                b = &b[used..];
            }
            Some((_, used)) => b = &b[used..],
            None => unreachable!("whole frames"),
        }
    }
    assert!(values.iter().copied().eq(0..n as u64), "PONGs out of order");
}

/// The same flood against a real tunnel end: the peer writes PINGs and never
/// reads. The tunnel end pauses reading its link once its control output is at
/// the cap (so the flooder's writes block), its control queue stays under the cap,
/// and an honest tunnel served by the same event loop keeps working.
#[test]
fn ping_flood_pauses_the_link_and_spares_other_tunnels() {
    #[cfg(target_os = "linux")]
    ping_flood(Io::Epoll);
    ping_flood(Io::Tokio);
}

fn ping_flood(backend: Io) {
    let cap = 16 * 1024;
    let mut cfg = TunnelConfig::plaintext(Auth::None);
    cfg.mux.max_control_bytes = cap;
    let io = tunnel_util::io_backend(
        backend,
        zs_io::Config {
            loops: 1,
            ..zs_io::Config::default()
        },
    );
    let (factory, ends) = Tunnel::acceptor(cfg.clone()).unwrap();
    let phys = io.listen("127.0.0.1:0".parse().unwrap(), factory).unwrap();

    // The flooder: authenticates (Auth::None), then writes PINGs until its writes
    // block for a second (or 64 MiB), never reading.
    let mut flood = TcpStream::connect(phys.local_addr()).unwrap();
    flood.write_all(&none_hello()).unwrap();
    let victim = ends.recv_timeout(WAIT).unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut s = flood.try_clone().unwrap();
        let (written, stalled) = (written.clone(), stalled.clone());
        std::thread::spawn(move || {
            let mut batch = Vec::new();
            for i in 0..4096u64 {
                Frame::Ping { value: i }.encode(&mut batch);
            }
            s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut off = 0;
            while written.load(Ordering::Relaxed) < 64 << 20 {
                match s.write(&batch[off..]) {
                    Ok(n) => {
                        written.fetch_add(n as u64, Ordering::Relaxed);
                        off = (off + n) % batch.len();
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        stalled.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => panic!("flood write: {e}"),
                }
            }
        })
    };
    wait_for("the victim to pause reading", || victim.read_paused());
    writer.join().unwrap();
    assert!(
        stalled.load(Ordering::Relaxed),
        "the flooder could write {} bytes without blocking",
        written.load(Ordering::Relaxed)
    );
    assert!(victim.read_paused());
    assert!(
        victim.control_queued() <= cap + 64,
        "control queue {} over the cap {cap}",
        victim.control_queued()
    );
    assert!(victim.close_info().is_none(), "paused, not closed");

    // An honest tunnel on the same loop still works.
    let honest_b = Tunnel::connect(&*io, phys.local_addr(), cfg, WAIT).unwrap();
    let honest_a = ends.recv_timeout(WAIT).unwrap();
    honest_a.wait_ready(WAIT).unwrap();
    let l = honest_a
        .listen("10.0.0.1:80".parse().unwrap(), echo_factory())
        .unwrap();
    assert!(honest_b.wait_peer_listen(l.local_addr(), WAIT));
    for i in 0..20 {
        echo_once(&honest_b, l.local_addr(), format!("honest {i}").as_bytes());
    }
    assert!(victim.control_queued() <= cap + 64);
    assert!(victim.read_paused());

    // The flooder reads again: the victim resumes, and answers the held PINGs.
    let mut r = flood.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    wait_for("the victim to resume reading", || !victim.read_paused());
    let answered = reader.join().unwrap();
    assert!(answered > 0);
    drop(flood);
    honest_b.close("done");
    victim.close("done");
    io.shutdown();
}

/// A peer that opens more streams than `max_streams` (default 4,096) gets REFUSE 2
/// for the excess; the default is no longer a million.
#[test]
fn default_stream_limit_is_4096() {
    assert_eq!(MuxConfig::default().max_streams, 4096);
    let mut m = Mux::new(Role::Acceptor, MuxConfig::new(Auth::None), Instant::now()).unwrap();
    let srv: SocketAddr = "10.0.0.1:80".parse().unwrap();
    m.listen(srv).unwrap();
    let mut b = none_hello();
    for i in 0..5000u32 {
        Frame::Open {
            id: 2 * i + 1,
            window: 1024,
            addr: srv,
        }
        .encode(&mut b);
    }
    let mut out = Vec::new();
    let mut fed = 0;
    while fed < b.len() || m.pending_input() > 0 {
        if !m.input_blocked() && fed < b.len() {
            let end = (fed + 4096).min(b.len());
            m.handle_input(&b[fed..end], Instant::now()).unwrap();
            fed = end;
        }
        m.write_output(&mut out);
        m.handle_input(&[], Instant::now()).unwrap();
    }
    assert_eq!(m.stream_count(), 4096);
    assert_eq!(count_frames(&out, frame::ty::REFUSE), 5000 - 4096);
}

/// A peer that trickles bytes and never finishes authenticating (or never sends
/// its listen table) is dropped at the ready deadline, although the trickle keeps
/// the idle timer alive.
#[test]
fn ready_deadline_drops_a_trickling_peer() {
    // (our auth, what the peer sends, the reason expected)
    let mut token_hello = Vec::new();
    Frame::Hello {
        mode: AuthMode::Token,
        max_payload: 65536,
        nonce: [3; 32],
    }
    .encode(&mut token_hello);
    let mut hello_only = Vec::new();
    Frame::Hello {
        mode: AuthMode::None,
        max_payload: 65536,
        nonce: [3; 32],
    }
    .encode(&mut hello_only);
    let cases = [
        (Auth::token(TOKEN).unwrap(), token_hello, "authentication"),
        (Auth::None, hello_only, "listen table"),
    ];
    for (auth, peer_bytes, why) in cases {
        let t0 = Instant::now();
        let cfg = MuxConfig::new(auth);
        assert_eq!(cfg.ready_timeout, Duration::from_secs(10));
        let mut m = Mux::new(Role::Acceptor, cfg, t0).unwrap();
        // The whole first frame, then one PING byte every 5 s (never a whole frame).
        m.handle_input(&peer_bytes, t0).unwrap();
        let mut closed_at = None;
        for step in 1..=24u64 {
            let now = t0 + Duration::from_millis(500 * step);
            if step % 10 == 0 {
                let _ = m.handle_input(&[frame::ty::PING], now);
            }
            if m.poll_timeout().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
            if m.is_closed() {
                closed_at = Some(now - t0);
                break;
            }
        }
        assert_eq!(closed_at, Some(Duration::from_secs(10)), "{why}");
        let mut out = Vec::new();
        m.write_output(&mut out);
        let reason = std::iter::from_fn(|| m.poll_event())
            .find_map(|e| match e {
                zs_p2pvm::MuxEvent::TunnelClosed { reason } => Some(reason),
                _ => None,
            })
            .unwrap();
        assert!(
            reason.contains("not ready") && reason.contains(why),
            "{reason}"
        );
        assert_eq!(count_frames(&out, frame::ty::GOAWAY), 1, "GOAWAY sent");
    }
}

/// Real tunnel ends: a trickler on a plain link (token auth) and a peer that never
/// finishes the secure handshake are both disconnected at the ready deadline.
#[test]
fn ready_deadline_disconnects_real_tricklers() {
    for secure in [false, true] {
        let mut cfg = if secure {
            TunnelConfig::secure(psk_security(b"id"), Auth::None)
        } else {
            TunnelConfig::plaintext(Auth::token(TOKEN).unwrap())
        };
        cfg.mux.ready_timeout = Duration::from_millis(400);
        let io = tunnel_util::io_backend(io(), zs_io::Config::default());
        let (factory, ends) = Tunnel::acceptor(cfg).unwrap();
        let phys = io.listen("127.0.0.1:0".parse().unwrap(), factory).unwrap();
        let mut s = TcpStream::connect(phys.local_addr()).unwrap();
        let victim = ends.recv_timeout(WAIT).unwrap();
        let t0 = Instant::now();
        // One byte of a HELLO every 50 ms (never a whole frame within 400 ms).
        let mut hello = Vec::new();
        Frame::Hello {
            mode: AuthMode::Token,
            max_payload: 65536,
            nonce: [1; 32],
        }
        .encode(&mut hello);
        let mut info = None;
        for b in hello.iter().cycle().take(200) {
            // Into the secure session nothing at all (its handshake never ends).
            if !secure && s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            info = victim.close_info();
            if info.is_some() {
                break;
            }
        }
        let info = info.unwrap_or_else(|| victim.wait_closed(WAIT).unwrap());
        let took = t0.elapsed();
        assert!(
            info.reason.contains("not ready"),
            "secure={secure}: {info:?}"
        );
        assert!(took < Duration::from_secs(5), "secure={secure}: {took:?}");
        // The link is closed: the trickler reads EOF (or a reset).
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        io.shutdown();
    }
}

// ------------------------------------------------------------------------ M2

/// No authentication chosen is refused everywhere; `Auth::None` works only when
/// set explicitly, and the tunnel driver also wants an explicit link choice.
#[test]
fn default_config_without_explicit_auth_is_refused() {
    let now = Instant::now();
    assert!(MuxConfig::default().auth.is_none());
    for role in [Role::Initiator, Role::Acceptor] {
        assert!(matches!(
            Mux::new(role, MuxConfig::default(), now),
            Err(Error::Config(_))
        ));
    }
    assert!(matches!(
        Pair::try_new(MuxConfig::default(), MuxConfig::new(Auth::None)),
        Err(Error::Config(_))
    ));
    // The tunnel driver: neither auth nor link chosen, or only one of them.
    let only_auth = TunnelConfig {
        mux: MuxConfig::new(Auth::None),
        ..TunnelConfig::default()
    };
    let only_link = TunnelConfig {
        allow_plaintext: true,
        ..TunnelConfig::default()
    };
    for cfg in [TunnelConfig::default(), only_auth, only_link] {
        assert!(matches!(
            Tunnel::handler(Role::Initiator, cfg.clone()),
            Err(Error::Config(_))
        ));
        assert!(matches!(Tunnel::acceptor(cfg), Err(Error::Config(_))));
    }
    // Explicit choices work.
    assert!(Tunnel::handler(Role::Initiator, TunnelConfig::plaintext(Auth::None)).is_ok());
    assert!(Tunnel::handler(
        Role::Acceptor,
        TunnelConfig::secure(psk_security(b"id"), Auth::None)
    )
    .is_ok());
    let mut p = Pair::new(MuxConfig::new(Auth::None), MuxConfig::new(Auth::None));
    p.drive();
    assert!(p.client.mux.is_ready() && p.server.mux.is_ready());
}

/// Both sides of a zs-crypto session with a pre-shared key named `id`.
fn psk_security(id: &[u8]) -> Arc<dyn zs_crypto::SecurityProvider> {
    Arc::new(zs_crypto::ZsSecurity::new(
        Some(Arc::new(ClientConfig::psk(id, PSK).unwrap())),
        Some(Arc::new(ServerConfig::with_psk(id, PSK).unwrap())),
    ))
}

fn client_session() -> Session {
    let rng = ring::rand::SystemRandom::new();
    Session::client(
        Arc::new(ClientConfig::psk(b"id", PSK).unwrap()),
        &rng,
        Instant::now(),
    )
    .unwrap()
}

fn server_session() -> Session {
    let rng = ring::rand::SystemRandom::new();
    Session::server(
        Arc::new(ServerConfig::with_psk(b"id", PSK).unwrap()),
        &rng,
        Instant::now(),
    )
    .unwrap()
}

/// A Mux over a secure session, as the tunnel driver runs it (`bind` says whether
/// it binds the PROOF to the session, which the driver always does).
struct SecureEnd {
    mux: Mux,
    sess: Session,
    bind: bool,
}

impl SecureEnd {
    fn new(role: Role, bind: bool) -> SecureEnd {
        let cfg = MuxConfig {
            keepalive: None,
            ..MuxConfig::new(Auth::token(TOKEN).unwrap())
        };
        SecureEnd {
            mux: Mux::new(role, cfg, Instant::now()).unwrap(),
            sess: match role {
                Role::Initiator => client_session(),
                Role::Acceptor => server_session(),
            },
            bind,
        }
    }

    /// Bytes for the wire.
    fn output(&mut self) -> Vec<u8> {
        let now = Instant::now();
        if self.sess.is_established() {
            let mut plain = Vec::new();
            self.mux.write_output(&mut plain);
            if !plain.is_empty() {
                self.sess.send(&plain, now).unwrap();
            }
        }
        let mut out = Vec::new();
        self.sess.write_output(&mut out);
        out
    }

    fn input(&mut self, wire: &[u8]) {
        let now = Instant::now();
        if self.sess.handle_input(wire, now).is_err() {
            return;
        }
        while let Some(ev) = self.sess.poll_event() {
            match ev {
                zs_crypto::Event::HandshakeComplete { .. } if self.bind => {
                    let b = self.sess.channel_binding().unwrap();
                    self.mux.bind_channel(b).unwrap();
                }
                zs_crypto::Event::Data(d) => {
                    let _ = self.mux.handle_input(&d, now);
                }
                _ => {}
            }
        }
    }
}

/// An attacker in the middle who can complete the secure handshake with each side
/// (here: it knows the PSK, like any member of a fleet sharing one) but not the
/// tunnel token: it relays the decrypted tunnel bytes between its two sessions.
struct Relay {
    to_client: Session,
    to_server: Session,
}

impl Relay {
    fn new() -> Relay {
        Relay {
            to_client: server_session(),
            to_server: client_session(),
        }
    }
    /// Wire bytes from the client (the answers wait in the two sessions).
    fn on_client_bytes(&mut self, wire: &[u8]) {
        let now = Instant::now();
        let _ = self.to_client.handle_input(wire, now);
        while let Some(ev) = self.to_client.poll_event() {
            if let zs_crypto::Event::Data(d) = ev {
                let _ = self.to_server.send(&d, now);
            }
        }
    }
    fn on_server_bytes(&mut self, wire: &[u8]) {
        let now = Instant::now();
        let _ = self.to_server.handle_input(wire, now);
        while let Some(ev) = self.to_server.poll_event() {
            if let zs_crypto::Event::Data(d) = ev {
                let _ = self.to_client.send(&d, now);
            }
        }
    }
}

/// Runs a client and a server end through the relay until nothing moves.
fn relay_run(bind: bool) -> (SecureEnd, SecureEnd) {
    let mut c = SecureEnd::new(Role::Initiator, bind);
    let mut s = SecureEnd::new(Role::Acceptor, bind);
    let mut r = Relay::new();
    for _ in 0..100 {
        let c_out = c.output();
        r.on_client_bytes(&c_out);
        let s_out = s.output();
        r.on_server_bytes(&s_out);
        let mut to_s = Vec::new();
        r.to_server.write_output(&mut to_s);
        let mut to_c = Vec::new();
        r.to_client.write_output(&mut to_c);
        s.input(&to_s);
        c.input(&to_c);
        if c_out.is_empty() && s_out.is_empty() && to_s.is_empty() && to_c.is_empty() {
            break;
        }
    }
    (c, s)
}

/// A token handshake relayed between two different secure sessions fails: each
/// PROOF covers the channel binding of the session it was made in. (Without the
/// binding the same relay succeeds, which is the attack.)
#[test]
fn relayed_token_handshake_fails_channel_binding() {
    let (c, s) = relay_run(true);
    for (name, end) in [("client", &c), ("server", &s)] {
        assert!(!end.mux.is_ready(), "{name} accepted a relayed handshake");
        assert_eq!(end.mux.close_error(), Some(&Error::AuthFailed), "{name}");
    }
    // The same relay against unbound ends (the old protocol) gets through.
    let (c, s) = relay_run(false);
    assert!(
        c.mux.is_ready() && s.mux.is_ready(),
        "the relay attack works unbound"
    );

    // Directly connected bound ends (same secure session) authenticate.
    let mut c = SecureEnd::new(Role::Initiator, true);
    let mut s = SecureEnd::new(Role::Acceptor, true);
    for _ in 0..20 {
        let a = c.output();
        let b = s.output();
        s.input(&a);
        c.input(&b);
    }
    assert!(c.mux.is_ready() && s.mux.is_ready());

    // One bound end, one unbound end (same session): refused as well.
    let mut c = SecureEnd::new(Role::Initiator, true);
    let mut s = SecureEnd::new(Role::Acceptor, false);
    for _ in 0..20 {
        let a = c.output();
        let b = s.output();
        s.input(&a);
        c.input(&b);
    }
    assert_eq!(c.mux.close_error(), Some(&Error::AuthFailed));
}

/// A binding set after the authentication started is refused (it would not be
/// covered by the PROOF already sent).
#[test]
fn late_channel_binding_is_refused() {
    let mut m = Mux::new(
        Role::Acceptor,
        MuxConfig::new(Auth::token(TOKEN).unwrap()),
        Instant::now(),
    )
    .unwrap();
    let mut b = Vec::new();
    Frame::Hello {
        mode: AuthMode::Token,
        max_payload: 65536,
        nonce: [1; 32],
    }
    .encode(&mut b);
    m.handle_input(&b, Instant::now()).unwrap();
    assert!(matches!(m.bind_channel([9; 32]), Err(Error::Config(_))));
}

/// Over real tunnel ends inside a secure session, token auth works (both drivers
/// bind the same channel); through a man in the middle who terminates the secure
/// session on each side and relays the tunnel bytes, it fails on both ends.
#[test]
fn tunnel_driver_binds_token_auth_to_the_secure_session() {
    let cfg = TunnelConfig::secure(psk_security(b"id"), Auth::token(TOKEN).unwrap());
    let io = tunnel_util::io_backend(io(), zs_io::Config::default());
    let (factory, ends) = Tunnel::acceptor(cfg.clone()).unwrap();
    let phys = io.listen("127.0.0.1:0".parse().unwrap(), factory).unwrap();

    // Direct: ready, and data flows.
    let b = Tunnel::connect(&*io, phys.local_addr(), cfg.clone(), WAIT).unwrap();
    let a = ends.recv_timeout(WAIT).unwrap();
    a.wait_ready(WAIT).unwrap();
    let l = a
        .listen("10.0.0.1:80".parse().unwrap(), echo_factory())
        .unwrap();
    assert!(b.wait_peer_listen(l.local_addr(), WAIT));
    echo_once(&b, l.local_addr(), b"bound and authenticated");
    b.close("done");

    // Through the relay: refused at both tunnel ends.
    let relay = mitm_relay(phys.local_addr());
    let b: Result<TunnelHandle, Error> = Tunnel::connect(&*io, relay, cfg, WAIT);
    assert!(matches!(b, Err(Error::AuthFailed)), "{b:?}");
    let a = ends.recv_timeout(WAIT).unwrap();
    assert!(matches!(a.wait_ready(WAIT), Err(Error::AuthFailed)));
    io.shutdown();
}

/// A TCP man in the middle: terminates a secure session with the client (as a
/// server) and another with `target` (as a client), and relays the plaintext.
fn mitm_relay(target: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut s = TcpStream::connect(target).unwrap();
        c.set_nonblocking(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut r = Relay::new();
        let mut buf = vec![0u8; 65536];
        let t0 = Instant::now();
        while t0.elapsed() < WAIT {
            let mut moved = false;
            match c.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    r.on_client_bytes(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    r.on_server_bytes(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            let mut out = Vec::new();
            r.to_client.write_output(&mut out);
            if !out.is_empty() && write_fully(&mut c, &out).is_err() {
                return;
            }
            let mut out = Vec::new();
            r.to_server.write_output(&mut out);
            if !out.is_empty() && write_fully(&mut s, &out).is_err() {
                return;
            }
            if !moved {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    addr
}

fn write_fully(s: &mut TcpStream, mut b: &[u8]) -> std::io::Result<()> {
    while !b.is_empty() {
        match s.write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------ M1

/// Tokens shorter than 16 bytes are refused; tokens never show in `Debug` and are
/// zeroed on drop.
#[test]
fn short_tokens_are_refused_and_tokens_stay_secret() {
    assert_eq!(Token::MIN_LEN, 16);
    for len in [0, 1, 6, 15] {
        let t = vec![b'x'; len];
        assert!(matches!(Token::new(&t), Err(Error::Config(_))), "{len}");
        assert!(matches!(Auth::token(&t), Err(Error::Config(_))), "{len}");
    }
    assert!(Token::new(&[b'x'; 16]).is_ok());
    let secret = b"SUPERSECRET-TOKEN-0123456789";
    let cfg = TunnelConfig::plaintext(Auth::token(secret).unwrap());
    let shown = format!("{cfg:?} {:?} {:?}", cfg.mux, Token::new(secret).unwrap());
    assert!(!shown.contains("SUPERSECRET"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    fn zeroed_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroed_on_drop::<Token>();
    // The PSK of a secure tunnel is not shown either.
    let sec = format!(
        "{:?}",
        TunnelConfig::secure(psk_security(b"id"), Auth::None)
    );
    assert!(!sec.contains("0123456789abcdef"), "{sec}");
}
