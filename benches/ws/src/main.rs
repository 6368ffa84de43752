//! `cargo xtask bench ws`: WebSocket echo of 64-byte JSON messages.
//!
//! Cases (each a fresh connection per sample, one client thread):
//! - `gateway-seq` / `gateway-pipe`: `{"id":N,"call":"echo","text":"…"}` (64 B)
//!   through the zs-web gateway in the server's process (the `zs serve --http`
//!   and facade deployment): the WebSocket is an in-process connection of the
//!   zs-core server (`Server::connect_local`), whose `echo` handler answers
//!   `{"id":N,"text":"…"}`; sequential (one at a time) and pipelined (64 in
//!   flight);
//! - `remote-seq` / `remote-pipe`: the same through a gateway that bridges each
//!   WebSocket to the server over the network (epoll, one loop, AES-256-GCM
//!   session over loopback), the mode for a gateway in another process;
//! - `tungstenite-seq` / `tungstenite-pipe`: the same bytes against a minimal
//!   tokio-tungstenite echo server (one current-thread runtime): the cost of
//!   WebSocket itself, the floor for any WebSocket gateway;
//! - `binary-seq`: the same `echo` call with a zs-core `Client` on the binary
//!   protocol, to measure what the gateway adds per call;
//! - `tungstenite-batched-pipe`: that echo server answering every message
//!   already read before one flush, as the gateway writes (a stronger
//!   baseline than the issue's minimal echo, reported beside it);
//!
//! Ratios: `ws_vs_tungstenite` (pipelined msgs/s, ours / theirs),
//! `ws_vs_tungstenite_batched`, `remote_vs_tungstenite`, `remote_vs_binary_seq`,
//! `ws_vs_tungstenite_seq`, and `ws_vs_binary_seq` (sequential calls/s
//! through the gateway / on the binary protocol); the note gives the
//! gateway's added microseconds per sequential call.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use zs_bench_harness::{Better, Options, Suite};

const WINDOW: usize = 64;

/// A 64-byte JSON call with id `id` (the text pads it to exactly 64 bytes).
fn request(id: u64) -> String {
    let head = format!(r#"{{"id":{id},"call":"echo","text":""#);
    let pad = 64 - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// A minimal tokio-tungstenite echo server. `batched`: answers every message
/// that is already read before one flush (what the gateway does), instead of
/// one `send` (a write) per message.
fn tungstenite_echo(batched: bool) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("send");
            loop {
                let (s, _) = l.accept().await.expect("accept");
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    let (mut tx, mut rx) = ws.split();
                    if !batched {
                        while let Some(Ok(m)) = rx.next().await {
                            if (m.is_text() || m.is_binary()) && tx.send(m).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    while let Some(Ok(m)) = rx.next().await {
                        let mut next = Some(m);
                        while let Some(m) = next.take() {
                            if (m.is_text() || m.is_binary()) && tx.feed(m).await.is_err() {
                                return;
                            }
                            if let Some(Some(Ok(m))) = rx.next().now_or_never() {
                                next = Some(m);
                            }
                        }
                        if tx.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    rx.recv().expect("echo server address")
}

/// Messages per second for `dur`, `window` in flight.
async fn ws_client(url: &str, dur: Duration, window: usize) -> f64 {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let mut id = 0u64;
    let mut inflight = 0usize;
    let mut done = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        while inflight < window {
            id += 1;
            ws.feed(Message::Text(request(id).into()))
                .await
                .expect("send");
            inflight += 1;
        }
        ws.flush().await.expect("flush");
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                assert!(t.len() >= 40, "short answer {t}");
                inflight -= 1;
                done += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let rate = done as f64 / t0.elapsed().as_secs_f64();
    while inflight > 0 {
        ws.next().await.expect("drain").expect("ok");
        inflight -= 1;
    }
    let _ = ws.close(None).await;
    rate
}

fn main() {
    let opts = Options::from_env();
    let dur = if opts.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let mut suite = Suite::from_options("ws", &opts, 3, 7);

    // The zs server: secure(epoll) (tokio elsewhere), one loop, pinned identity.
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = zs_crypto::ServerIdentity::generate(&rng).expect("identity");
    let fp = id.fingerprint();
    let provider = Arc::new(zs_crypto::ZsSecurity::new(
        None,
        Some(Arc::new(zs_crypto::ServerConfig::with_identity(Arc::new(
            id,
        )))),
    ));
    let one = zs_io::Config {
        loops: 1,
        ..Default::default()
    };
    #[cfg(target_os = "linux")]
    let raw: Arc<dyn zs_io::Backend> =
        Arc::new(zs_io_epoll::EpollBackend::new(one.clone()).expect("epoll"));
    #[cfg(not(target_os = "linux"))]
    let raw: Arc<dyn zs_io::Backend> =
        Arc::new(zs_io_tokio::TokioBackend::new(one.clone()).expect("tokio"));
    let mut reg = zs_core::Registry::new();
    reg.console("echo", |_, t| Ok(t.to_owned()));
    let server = Arc::new(
        zs_core::Server::start(
            zs_secure::compose::secure_with(
                raw,
                provider,
                &one,
                zs_secure::compose::Handshakes::default(),
            ),
            reg,
            zs_core::Options::default(),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("server"),
    );
    let mut remote_up = zs_web::Upstream::pinned(server.local_addr(), fp).expect("upstream");
    let client_up = remote_up.remote_mut().expect("remote").clone();
    let gw_config = || zs_web::Config {
        addr: "127.0.0.1:0".parse().expect("addr"),
        threads: 1,
        ..Default::default()
    };
    let gateway = zs_web::Gateway::start(gw_config(), zs_web::Upstream::in_process(&server))
        .expect("gateway");
    let remote = zs_web::Gateway::start(gw_config(), remote_up).expect("remote gateway");
    let gw_url = format!("ws://{}/ws", gateway.local_addr());
    let remote_url = format!("ws://{}/ws", remote.local_addr());
    let tung_url = format!("ws://{}/", tungstenite_echo(false));
    let batched_url = format!("ws://{}/", tungstenite_echo(true));

    let rt = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt"),
    );
    for (name, url, window) in [
        ("gateway-seq", gw_url.clone(), 1),
        ("tungstenite-seq", tung_url.clone(), 1),
        ("gateway-pipe", gw_url.clone(), WINDOW),
        ("tungstenite-pipe", tung_url.clone(), WINDOW),
        ("tungstenite-batched-pipe", batched_url.clone(), WINDOW),
        ("remote-seq", remote_url.clone(), 1),
        ("remote-pipe", remote_url.clone(), WINDOW),
    ] {
        let rt = rt.clone();
        suite.case(name, "msgs_per_s", Better::Higher, move || {
            rt.block_on(ws_client(&url, dur, window))
        });
    }
    let text = "x".repeat(32);
    let srv = server.clone();
    suite.case("binary-seq", "msgs_per_s", Better::Higher, move || {
        let _keep = &srv;
        let c = zs_core::Client::connect(
            client_up.backend.clone(),
            zs_core::Registry::new(),
            client_up.options.clone(),
            client_up.addr,
        )
        .expect("client");
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < dur {
            c.call("echo", &text).wait().expect("echo");
            n += 1;
        }
        n as f64 / t0.elapsed().as_secs_f64()
    });

    suite.run();
    suite.ratio("ws_vs_tungstenite", "gateway-pipe", "tungstenite-pipe");
    suite.ratio("ws_vs_tungstenite_seq", "gateway-seq", "tungstenite-seq");
    suite.ratio("ws_vs_binary_seq", "gateway-seq", "binary-seq");
    suite.ratio(
        "ws_vs_tungstenite_batched",
        "gateway-pipe",
        "tungstenite-batched-pipe",
    );
    suite.ratio("remote_vs_tungstenite", "remote-pipe", "tungstenite-pipe");
    suite.ratio("remote_vs_binary_seq", "remote-seq", "binary-seq");
    let us = |n: &str| suite.summary(n).map(|s| 1e6 / s.median).unwrap_or(f64::NAN);
    let added = us("gateway-seq") - us("binary-seq");
    let added_remote = us("remote-seq") - us("binary-seq");
    suite.note(format!(
        "64 B JSON text messages; pipelined = {WINDOW} in flight; gateway: 1 runtime thread, the zs-core server in \
         the same process (in-process connection: its echo handler runs on the WebSocket's task, plaintext since \
         nothing leaves the process); remote: 1 runtime thread + the server's epoll loop, AES-256-GCM bridge session \
         over loopback; tungstenite: 1 current-thread runtime echoing each message as it is read, one write each \
         (tungstenite-batched: every message already read, then one flush, as the gateway writes); its promise: \
         the same bytes back, nothing else; binary: a zs-core Client, AES-256-GCM over loopback; client: 1 thread in the \
         same process; 2 vCPUs, not pinned; {dur:?} per sample. Added cost per sequential call over the binary \
         protocol (µs, negative = cheaper): in process {added:.1}, remote {added_remote:.1}"
    ));
    suite.finish();
    drop(gateway);
    drop(remote);
}
