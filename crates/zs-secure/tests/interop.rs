//! zs-core over the layer talks to hand-written plaintext zs-wire handlers
//! behind a `SecureBackend`, both ways: a zs-core `Client` calls a plain frame
//! handler, and a plain frame client calls a zs-core `Server`. The handlers
//! below never see a record: only frames.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use zs_core::{Client, Options, Registry, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_io::{Backend, Conn, Handler};
use zs_secure::SecureBackend;
use zs_wire::{Frame, FrameCodec, Text};

const WAIT: Duration = Duration::from_secs(20);

fn pinned() -> (Arc<dyn SecurityProvider>, [u8; 32]) {
    let (identity, _seed) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
    let fp = identity.fingerprint();
    let p = Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(fp))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
    ));
    (p, fp.0)
}

fn epoll() -> Arc<dyn Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// A plaintext zs-wire server: answers every console request with its text
/// upper-cased, and reports who the peer is.
struct FrameEcho {
    codec: FrameCodec,
    seen: mpsc::Sender<Option<Arc<zs_io::SecurityInfo>>>,
}

impl Handler for FrameEcho {
    fn on_open(&mut self, conn: &Conn) {
        let _ = self.seen.send(conn.security_info());
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let mut out = BytesMut::new();
        while let Some(frame) = self.codec.decode(data).unwrap() {
            if let Frame::Console { id, text, .. } = frame {
                let answer = Frame::ConsoleResponse {
                    id,
                    text: Text::from(text.as_str().to_uppercase()),
                };
                self.codec.encode(&answer, &mut out).unwrap();
            }
        }
        if !out.is_empty() {
            conn.send(out.freeze()).unwrap();
        }
    }
}

#[test]
fn zs_core_client_calls_a_plaintext_handler_behind_the_layer() {
    let (provider, fp) = pinned();
    let secure = SecureBackend::new(epoll(), provider.clone());
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let listener = secure
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || {
                Box::new(FrameEcho {
                    codec: FrameCodec::new(zs_wire::Config::default()),
                    seen: tx.lock().unwrap().clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    // The client side is zs-core with its own built-in secure session.
    let client = Client::connect(
        Arc::new(zs_secure::SecureBackend::new(epoll(), provider)),
        Registry::new(),
        Options::client(),
        listener.local_addr(),
    )
    .unwrap();
    for i in 0..50 {
        let text = format!("hello {i} {}", "x".repeat(i * 97));
        assert_eq!(
            client.call("echo", &text).wait().unwrap(),
            text.to_uppercase()
        );
    }
    let info = rx.recv_timeout(WAIT).unwrap().expect("security info");
    assert_eq!(info.provider, "zs-aead");
    assert_eq!(info.psk_identity, None);
    assert_eq!(info.server_key, Some(fp), "the server reports its own key");
    assert_eq!(secure.stats().handshakes, 1);
    drop(client);
    drop(listener);
    secure.shutdown();
}

/// A plaintext zs-wire client: sends console requests, collects the answers.
struct FrameClient {
    codec: FrameCodec,
    answers: mpsc::Sender<(u64, String)>,
}

impl Handler for FrameClient {
    fn on_open(&mut self, conn: &Conn) {
        // Many frames in one callback: one record on the wire.
        let mut out = BytesMut::new();
        for id in 1..=20u64 {
            let f = Frame::Console {
                id,
                cmd: Text::from("echo"),
                text: Text::from(format!("call {id}")),
            };
            self.codec.encode(&f, &mut out).unwrap();
            conn.send(out.split().freeze()).unwrap();
        }
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        while let Some(frame) = self.codec.decode(data).unwrap() {
            if let Frame::ConsoleResponse { id, text } = frame {
                let _ = self.answers.send((id, text.as_str().to_owned()));
            }
        }
    }
}

#[test]
fn plaintext_client_behind_the_layer_calls_a_zs_core_server() {
    let (provider, fp) = pinned();
    let raw = epoll();
    let mut commands = Registry::new();
    commands.console("echo", |_peer, text| Ok(format!("<{text}>")));
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(raw.clone(), provider.clone())),
        commands,
        Options::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let secure = SecureBackend::new(raw, provider);
    let (tx, rx) = mpsc::channel();
    let conn = zs_io::connect_blocking(
        &secure,
        server.local_addr(),
        WAIT,
        Box::new(FrameClient {
            codec: FrameCodec::new(zs_wire::Config::default()),
            answers: tx,
        }),
    )
    .unwrap();
    let mut got: Vec<(u64, String)> = (0..20).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    got.sort();
    let want: Vec<(u64, String)> = (1..=20).map(|i| (i, format!("<call {i}>"))).collect();
    assert_eq!(got, want);
    let info = conn.security_info().unwrap();
    assert_eq!(
        info.server_key,
        Some(fp),
        "the client reports the key it pinned"
    );
    assert_eq!(info.suite, "AES-256-GCM");
    conn.close();
    secure.shutdown();
}
