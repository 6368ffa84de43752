//! Shared test helpers: providers, an echo server behind a `SecureBackend`, and
//! blocking secure clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ZsSecurity};
use zs_io::{Backend, CloseReason, Conn, Handler, Listener};
use zs_secure::{SecureBackend, SecureConfig, SecureStream};

pub const WAIT: Duration = Duration::from_secs(20);
pub const KEY: [u8; 32] = [0x11; 32];

pub fn psk_provider(identity: &[u8], key: &[u8; 32]) -> Arc<dyn SecurityProvider> {
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::psk(identity, key).unwrap())),
        Some(Arc::new(ServerConfig::with_psk(identity, key).unwrap())),
    ))
}

pub fn epoll() -> Arc<dyn Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// What an echo server's handlers report.
#[derive(Debug)]
pub enum Seen {
    Open(Conn),
    Data(usize),
    Close(CloseReason),
}

/// Echoes everything; reports on a channel.
pub struct Echo(pub mpsc::Sender<Seen>);

impl Handler for Echo {
    fn on_open(&mut self, conn: &Conn) {
        let _ = self.0.send(Seen::Open(conn.clone()));
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let _ = self.0.send(Seen::Data(data.len()));
        let _ = conn.send(data.split().freeze());
    }
    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let _ = self.0.send(Seen::Close(reason));
    }
}

pub struct EchoServer {
    pub secure: SecureBackend,
    pub listener: Box<dyn Listener>,
    pub seen: mpsc::Receiver<Seen>,
}

impl EchoServer {
    pub fn start(cfg: SecureConfig) -> EchoServer {
        EchoServer::over(SecureBackend::with_config(
            epoll(),
            psk_provider(b"alice", &KEY),
            cfg,
        ))
    }
    /// An echo server on `secure` (made with `psk_provider(b"alice", &KEY)`).
    pub fn over(secure: SecureBackend) -> EchoServer {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let listener = secure
            .listen(
                "127.0.0.1:0".parse().unwrap(),
                Arc::new(move || Box::new(Echo(tx.lock().unwrap().clone())) as Box<dyn Handler>),
            )
            .unwrap();
        EchoServer {
            secure,
            listener,
            seen: rx,
        }
    }
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }
}

pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// A well-behaved client with the right key.
pub fn good_client(addr: SocketAddr) -> SecureStream<TcpStream> {
    SecureStream::connect(tcp(addr), &*psk_provider(b"alice", &KEY)).unwrap()
}

pub fn roundtrip(c: &mut SecureStream<TcpStream>, msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// The server ended the connection: end of stream or a reset, never data.
pub fn assert_dropped(s: &mut impl Read, what: &str) {
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            // A handshake alert may come first (plaintext, type 0x14).
            Ok(n) if b[0] == 0x14 && n <= 16 => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return
            }
            other => panic!("{what}: connection not dropped: {other:?}"),
        }
    }
}
