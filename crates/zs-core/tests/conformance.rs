//! PROTOCOL.md against a real server, byte by byte from a hand-driven client:
//! a malformed request body costs only that request (`Error 400`, the session
//! carries on; §3.1, spec review G4), and a peer dropped for a protocol
//! violation gets a Close record before the connection ends (§3.7, G7).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use zs_core::{code, Options, Registry, Server};
use zs_crypto::{
    ClientConfig, SecureSession, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity,
};
use zs_wire::{DataFrame, Frame, FrameCodec, Text};

fn provider() -> Arc<dyn SecurityProvider> {
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = ServerIdentity::generate(&rng).unwrap();
    let c = ClientConfig::pinned(id.fingerprint());
    Arc::new(ZsSecurity::new(
        Some(Arc::new(c)),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

fn server(p: &Arc<dyn SecurityProvider>) -> Server {
    let mut reg = Registry::new();
    reg.console("echo", |_, t| Ok(t.to_string()));
    let cfg = zs_io::Config {
        loops: 1,
        ..zs_io::Config::default()
    };
    let b: Arc<dyn zs_io::Backend> = Arc::new(zs_io_tokio::TokioBackend::new(cfg).unwrap());
    Server::start(
        Arc::new(zs_secure::SecureBackend::new(b, p.clone())),
        reg,
        Options::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

/// A client speaking the protocol by hand over a blocking socket.
struct Raw {
    s: TcpStream,
    c: Box<dyn SecureSession>,
    codec: FrameCodec,
    plain: BytesMut,
    closed: bool,
}

impl Raw {
    fn connect(addr: SocketAddr, p: &Arc<dyn SecurityProvider>) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut r = Raw {
            s,
            c: p.new_client(Instant::now()).unwrap(),
            codec: FrameCodec::new(zs_wire::Config::default()),
            plain: BytesMut::new(),
            closed: false,
        };
        let end = Instant::now() + Duration::from_secs(5);
        while r.c.is_handshaking() && Instant::now() < end {
            r.flush();
            r.read_once();
        }
        assert!(!r.c.is_handshaking(), "handshake");
        r
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        self.c.write_output(&mut out);
        self.s.write_all(&out).unwrap();
    }

    /// Sends plaintext bytes (one or more frames, valid or not) in records.
    fn send_plain(&mut self, bytes: &[u8]) {
        self.c.send(bytes, Instant::now()).unwrap();
        self.flush();
    }

    fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        self.codec.encode(f, &mut b).unwrap();
        self.send_plain(&b);
    }

    /// Reads once; false at the end of the stream.
    fn read_once(&mut self) -> bool {
        let mut buf = [0u8; 65536];
        match self.s.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.c.handle_input(&buf[..n], Instant::now()).unwrap();
                while let Some(ev) = self.c.poll_event() {
                    match ev {
                        zs_crypto::Event::Data(d) => self.plain.extend_from_slice(&d),
                        zs_crypto::Event::Closed => self.closed = true,
                        _ => {}
                    }
                }
                true
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                true
            }
            Err(_) => false,
        }
    }

    /// Frames received within `limit`, and whether the stream ended.
    fn frames(
        &mut self,
        limit: Duration,
        mut enough: impl FnMut(&[Frame]) -> bool,
    ) -> (Vec<Frame>, bool) {
        let end = Instant::now() + limit;
        let mut got = Vec::new();
        let mut open = true;
        while Instant::now() < end && open && !enough(&got) {
            open = self.read_once();
            while let Ok(Some(f)) = self.codec.decode(&mut self.plain) {
                got.push(f);
            }
        }
        (got, !open)
    }
}

#[test]
fn a_malformed_body_is_answered_400_and_the_session_carries_on() {
    let p = provider();
    let s = server(&p);
    let mut r = Raw::connect(s.local_addr(), &p);
    // Console { id 1, "echo", "hi" } with the text bytes made invalid UTF-8.
    let mut b = BytesMut::new();
    let call = |id, text: &str| Frame::Console {
        id,
        cmd: Text::from("echo"),
        text: Text::from(text),
    };
    r.codec.encode(&call(1, "hi"), &mut b).unwrap();
    let n = b.len();
    b[n - 2..].copy_from_slice(&[0xff, 0xfe]);
    r.codec.encode(&call(2, "still here"), &mut b).unwrap();
    r.send_plain(&b);
    let (got, ended) = r.frames(Duration::from_secs(5), |g| g.len() >= 2);
    assert!(!ended, "the connection must stay open: {got:?}");
    assert!(
        matches!(&got[0], Frame::Error { id: 1, code, .. } if *code == code::BAD_REQUEST),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Frame::ConsoleResponse { id: 2, text } if text.as_str() == "still here"),
        "{got:?}"
    );
}

#[test]
fn a_peer_dropped_for_a_violation_gets_a_close_record() {
    let p = provider();
    let s = server(&p);
    let mut r = Raw::connect(s.local_addr(), &p);
    // A client never sends batch checksums (D3): a protocol violation.
    r.send(&Frame::Control {
        id: 0,
        cmd: Text::from("__@batchsum"),
        data: DataFrame::new().with(1u64).with(vec![0u8; 16]),
    });
    let (got, ended) = r.frames(Duration::from_secs(5), |_| false);
    assert!(ended, "the server must drop the peer: {got:?}");
    assert!(
        r.closed,
        "a Close record must come before the end of the stream"
    );
}
