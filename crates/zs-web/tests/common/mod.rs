//! Shared setup: a real zs-core server with test commands, its gateway, and
//! WebSocket / raw HTTP clients.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use zs_core::{Options, Registry, Server};
use zs_crypto::{ServerConfig, ServerIdentity, ZsSecurity};
use zs_wire::{DataFrame, Frame};

pub struct Rig {
    pub server: Arc<Server>,
    pub gateway: zs_web::Gateway,
}

impl Rig {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gateway.local_addr())
    }
    pub fn http(&self) -> SocketAddr {
        self.gateway.local_addr()
    }
}

/// The test commands: `echo`; `slow` (answers after the given ms, delayed);
/// `sum` (stream: adds u32 values); `count` (per-connection user state: how
/// many times this connection called it); `pushme` (pushes its text back as
/// a `push` direct command, then answers "ok"); `bcast` (broadcasts its text
/// as `news` to every connection); `fail` (handler error 500); `whoami` (peer id);
/// `addr` (the peer address handlers see); `kickme` (signals `user.kicked` 7,
/// then closes the connection);
/// direct console `note` (pushes "noted:<text>" back).
pub fn registry(server: Arc<OnceLock<Weak<Server>>>) -> Registry {
    let mut r = Registry::new();
    r.console("echo", |_, t| Ok(t.to_owned()));
    r.console_delayed("slow", |_, t, resp| {
        let ms: u64 = t.parse().unwrap_or(100);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            let _ = resp.reply_text(format!("slept {ms}"));
        });
    });
    r.stream("sum", |_, d| {
        let mut total = 0u64;
        let mut rd = d.reader();
        while rd.remaining() > 0 {
            total += u64::from(
                rd.read_u32()
                    .map_err(|e| zs_core::HandlerError::new(400, e.to_string()))?,
            );
        }
        Ok(DataFrame::new().with(total))
    });
    r.console("count", |p, _| {
        Ok(p.with_state(|n: &mut u64| {
            *n += 1;
            n.to_string()
        }))
    });
    r.console("whoami", |p, _| Ok(p.id().to_string()));
    r.console("addr", |p, _| {
        Ok(p.addr().map(|a| a.to_string()).unwrap_or_default())
    });
    r.console("kickme", |p, _| {
        let _ = p.send_signal("user.kicked", 7);
        p.close("kicked by the test");
        Ok("bye".into())
    });
    r.console("pushme", |p, t| {
        p.send_direct_console("push", t)
            .map_err(|e| zs_core::HandlerError::new(500, e.to_string()))?;
        Ok("ok".into())
    });
    r.console("bcast", move |_, t| {
        let s = server.get().and_then(Weak::upgrade).ok_or("no server")?;
        let n = s.broadcast(&Frame::DirectConsole {
            cmd: "news".into(),
            text: t.into(),
        });
        Ok(n.to_string())
    });
    r.console("fail", |_, _| {
        Err(zs_core::HandlerError::new(500, "it failed"))
    });
    r.direct_console("note", |p, t| {
        let _ = p.send_direct_console("push", &format!("noted:{t}"));
    });
    r
}

/// How the gateway reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In-process connections (`Server::connect_local`).
    InProcess,
    /// One bridged, encrypted client session per WebSocket.
    Remote,
}

/// Both modes, for tests that must hold in each.
pub const MODES: [Mode; 2] = [Mode::InProcess, Mode::Remote];

/// Starts a server (epoll backend, 1 loop) and an in-process gateway with
/// `cfg` (addr forced to 127.0.0.1:0 unless set to a non-zero port).
pub fn rig(cfg: zs_web::Config) -> Rig {
    rig_with(cfg, Options::default(), Mode::InProcess, |_| {})
}

/// [`rig`] reaching the server the `mode` way.
pub fn rig_in(mode: Mode, cfg: zs_web::Config) -> Rig {
    rig_with(cfg, Options::default(), mode, |_| {})
}

/// [`rig`] with the server's options, the mode and a last touch on the upstream.
pub fn rig_with(
    mut cfg: zs_web::Config,
    server_options: Options,
    mode: Mode,
    touch: impl FnOnce(&mut zs_web::Upstream),
) -> Rig {
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = ServerIdentity::generate(&rng).unwrap();
    let fp = id.fingerprint();
    let provider = Arc::new(ZsSecurity::new(
        None,
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ));
    // epoll: its threads may be stopped from anywhere (a test's async context too).
    let raw = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    );
    let slot = Arc::new(OnceLock::new());
    let server = Arc::new(
        Server::start(
            zs_secure::compose::secure(raw, provider),
            registry(slot.clone()),
            server_options,
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap(),
    );
    let _ = slot.set(Arc::downgrade(&server));
    let weak = Arc::downgrade(&server);
    let mut up = match mode {
        Mode::InProcess => zs_web::Upstream::in_process(&server),
        Mode::Remote => zs_web::Upstream::pinned(server.local_addr(), fp)
            .unwrap()
            .with_stats(Arc::new(move || weak.upgrade().map(|s| s.stats()))),
    };
    touch(&mut up);
    if cfg.addr.port() == 8080 {
        cfg.addr = "127.0.0.1:0".parse().unwrap();
    }
    if !cfg.pushes.iter().any(|p| p == "news") {
        cfg.pushes.push("news".into());
    }
    let gateway = zs_web::Gateway::start(cfg, up).unwrap();
    Rig { server, gateway }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// The next text message as JSON (skipping pings), within 10 s.
pub async fn recv(ws: &mut Ws) -> serde_json::Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("stream open")
            .expect("no error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Binary(b) => return serde_json::json!({ "binary": b.to_vec() }),
            Message::Close(c) => {
                return serde_json::json!({ "close": c.map(|c| u16::from(c.code)) })
            }
            _ => continue,
        }
    }
}

/// Sends raw bytes over TCP and reads until the peer closes (or 5 s).
/// Every message up to and including the server's close message.
pub async fn recv_until_close(ws: &mut Ws) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    loop {
        let m = recv(ws).await;
        let close = m.get("close").is_some();
        got.push(m);
        if close {
            return got;
        }
    }
}

pub fn raw_http(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(req); // the server may close before reading it all
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GET `path` over HTTP/1.1 (Connection: close); the body.
pub fn get(addr: SocketAddr, path: &str) -> String {
    let r = raw_http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(
        r.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        &r[..r.len().min(200)]
    );
    r.split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default()
}

/// A required external program: its path, or None after printing the skip
/// reason (a failure under CI).
pub fn tool(program: &str) -> Option<std::path::PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = std::path::Path::new(dir).join(program);
        if p.is_file() {
            return Some(p);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("{program} is not installed (CI is set)");
    }
    println!("skipped: {program} not installed");
    None
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
