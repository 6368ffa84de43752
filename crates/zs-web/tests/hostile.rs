//! Bad input on the gateway: malformed JSON, oversized messages, unknown
//! commands, bad binary messages, a WebSocket that never reads, HTTP request
//! smuggling attempts, slow headers and connection floods. Each gets a clear
//! error or a logged disconnect while an honest client carries on.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// An honest client's echo still works.
async fn honest(rig: &Rig) {
    let mut ws = ws(&rig.ws_url()).await;
    send(&mut ws, r#"{"id":1,"call":"echo","text":"fine"}"#).await;
    assert_eq!(
        recv(&mut ws).await,
        serde_json::json!({"id":1,"text":"fine"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_bad_shapes_are_answered_and_the_session_lives() {
    let rig = rig(zs_web::Config::default());
    let mut ws = ws(&rig.ws_url()).await;
    for bad in [
        "{not json",
        "[]",
        "null",
        r#"{"id":1}"#,
        r#"{"id":-1,"call":"echo"}"#,
        r#"{"id":1.5,"call":"echo"}"#,
        r#"{"id":1,"call":"echo","extra":true}"#,
        r#"{"id":1,"call":"a","send":"b"}"#,
        r#"{"send":"note","id":4}"#,
        r#"{"id":1,"stream":"sum","data":[{"t":"nope","v":1}]}"#,
        r#"{"id":1,"stream":"sum","data":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]}"#,
    ] {
        send(&mut ws, bad).await;
        let e = recv(&mut ws).await;
        assert_eq!(e["error"]["code"], 400, "{bad} -> {e}");
        assert_eq!(e["error"]["type"], "bad_request");
    }
    // Shape errors with a readable id keep it.
    send(&mut ws, r#"{"id":77,"call":"echo","extra":true}"#).await;
    assert_eq!(recv(&mut ws).await["id"], 77);
    // Binary: too short, bad opcode, bad DataFrame.
    for bad in [vec![1u8, 2, 3], vec![0x7f; 12], {
        let mut m = vec![1u8];
        m.extend_from_slice(&9u64.to_le_bytes());
        m.push(3);
        m.extend_from_slice(b"sum\xff\xff\xff");
        m
    }] {
        ws.send(Message::Binary(bad.into())).await.unwrap();
        assert_eq!(recv(&mut ws).await["error"]["code"], 400);
    }
    send(&mut ws, r#"{"id":2,"call":"echo","text":"alive"}"#).await;
    assert_eq!(recv(&mut ws).await["text"], "alive");
    assert!(rig.gateway.stats().bad_messages >= 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_are_typed_errors_and_metrics_stay_bounded() {
    let rig = rig(zs_web::Config::default());
    let mut ws = ws(&rig.ws_url()).await;
    for i in 0..300 {
        send(&mut ws, &format!(r#"{{"id":{i},"call":"nope{i}"}}"#)).await;
    }
    for _ in 0..300 {
        let e = recv(&mut ws).await;
        assert_eq!(e["error"]["type"], "unknown_command");
    }
    assert_eq!(rig.server.stats().unknown_commands, 300);
    // Histogram labels are capped (256 names, then "other").
    let m = get(rig.http(), "/metrics");
    let series = m
        .lines()
        .filter(|l| l.starts_with("zs_web_call_duration_seconds_count"))
        .count();
    assert!(
        series <= zs_web::metrics::MAX_HISTOGRAM_COMMANDS + 1,
        "{series} series"
    );
    assert!(m.contains("zs_web_call_duration_seconds_count{command=\"other\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_with_1009() {
    let rig = rig(zs_web::Config {
        max_message: 1024,
        ..Default::default()
    });
    let mut ws = ws(&rig.ws_url()).await;
    let big = format!(r#"{{"id":1,"call":"echo","text":"{}"}}"#, "x".repeat(2000));
    send(&mut ws, &big).await;
    assert_eq!(recv(&mut ws).await, serde_json::json!({"close": 1009}));
    assert_eq!(rig.gateway.stats().protocol_errors, 1);
    honest(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let rig = rig(zs_web::Config::default());
    let addr = rig.http();
    let got = tokio::task::spawn_blocking(move || {
        let mut s = raw_ws(addr);
        s.write_all(&frame(
            b"{\"id\":1,\"call\":\"echo\",\"text\":\"\xff\xfe\"}",
        ))
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut h = [0u8; 4];
        s.read_exact(&mut h).unwrap();
        h
    })
    .await
    .unwrap();
    assert_eq!(got[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([got[2], got[3]]), 1007);
    honest(&rig).await;
}

/// Raw WebSocket handshake on a std socket; returns it after the 101.
fn raw_ws(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// This process's resident set, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A masked client text frame.
fn frame(text: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81u8];
    let n = text.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let key = [1u8, 2, 3, 4];
    f.extend_from_slice(&key);
    f.extend(text.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_reads_is_disconnected() {
    for mode in MODES {
        let rig = rig_in(
            mode,
            zs_web::Config {
                send_queue: 8,
                max_in_flight: 8,
                write_timeout: Duration::from_millis(500),
                ..Default::default()
            },
        );
        let addr = rig.http();
        let rss0 = rss_kib();
        // Ask for ~60 KB answers, forever, and never read one.
        let writer = std::thread::spawn(move || {
            let mut s = raw_ws(addr);
            s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            let req = frame(
                format!(
                    r#"{{"id":1,"call":"echo","text":"{}"}}"#,
                    "y".repeat(60_000)
                )
                .as_bytes(),
            );
            let start = Instant::now();
            let mut sent = 0usize;
            while start.elapsed() < Duration::from_secs(15) {
                match s.write_all(&req) {
                    Ok(()) => sent += 1,
                    Err(_) => break, // the gateway stopped reading, then closed
                }
            }
            sent
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        while rig.gateway.stats().slow_readers == 0 {
            assert!(
                Instant::now() < deadline,
                "the non-reading client was not disconnected"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        honest(&rig).await;
        let sent = tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        assert!(sent > 0);
        // Memory stayed bounded: at most in-flight + queued answers (8 + 8 of
        // 60 KB) and socket buffers.
        let grew = rss_kib().saturating_sub(rss0);
        assert!(
            grew < 64 * 1024,
            "RSS grew by {grew} KiB after {sent} requests of 60 KB"
        );
        // Its server session is gone too.
        let deadline = Instant::now() + Duration::from_secs(5);
        while rig.gateway.stats().open > 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_client_that_does_not_read_disconnect_it() {
    for mode in MODES {
        let rig = rig_in(
            mode,
            zs_web::Config {
                send_queue: 4,
                write_timeout: Duration::from_secs(30),
                ..Default::default()
            },
        );
        let addr = rig.http();
        let mut s = tokio::task::spawn_blocking(move || raw_ws(addr))
            .await
            .unwrap();
        s.write_all(&frame(br#"{"id":1,"call":"echo"}"#)).unwrap();
        // Wait until its server session exists, then flood it with broadcasts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while rig.gateway.stats().open < 1 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let big = "z".repeat(60_000);
        // In process, the session's push queue fills once its task blocks
        // writing to the socket the client does not read: one more push ends
        // the session at once. Remote, either that or, first, the server
        // drops the bridge (its backlog passed `max_backlog`) and the session
        // ends within a watchdog tick plus a 2 s bounded close. Neither path
        // waits for the 30 s write timeout any more (the cause of the old
        // 15 s timeouts under load: the session waited for its stalled
        // writer task for up to `write_timeout`).
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(20);
        while rig.gateway.stats().open > 0 {
            assert!(
                Instant::now() < deadline,
                "not disconnected: gateway {:?}",
                rig.gateway.stats()
            );
            for _ in 0..50 {
                rig.server.broadcast(&zs_wire::Frame::DirectConsole {
                    cmd: "news".into(),
                    text: big.as_str().into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("{mode:?}: disconnected after {:?}", t0.elapsed());
        if mode == Mode::InProcess {
            assert_eq!(rig.gateway.stats().slow_readers, 1);
            assert_eq!(rig.server.connection_count(), 0);
        }
        drop(s);
        honest(&rig).await;
    }
}

#[test]
fn http_request_smuggling_attempts_are_refused() {
    let rig = rig(zs_web::Config::default());
    // CL + TE (CL.TE / TE.CL desync): hyper frames the body by
    // Transfer-Encoding, answers once and closes the connection, so the
    // request hidden behind it is never served.
    for path in ["/healthz", "/metrics"] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let r = raw_http(rig.http(), req.as_bytes());
        assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "two answers: {r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        assert!(!r.contains("uptime_ms"), "smuggled request was served: {r}");
    }
    // Two different Content-Lengths.
    let r = raw_http(
        rig.http(),
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // An obfuscated Transfer-Encoding.
    let r = raw_http(
        rig.http(),
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    );
    assert!(
        r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/1.1 501"),
        "{r}"
    );
    // Header too large.
    let mut big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1_000_000));
    big.extend_from_slice(b"\r\n\r\n");
    let r = raw_http(rig.http(), &big);
    assert!(
        r.starts_with("HTTP/1.1 431") || r.is_empty(),
        "{}",
        &r[..r.len().min(100)]
    );
    // A correct request on a fresh connection still works.
    assert_eq!(get(rig.http(), "/healthz"), "ok\n");
}

#[test]
fn slow_headers_are_cut_off() {
    let rig = rig(zs_web::Config {
        header_timeout: Duration::from_millis(300),
        ..Default::default()
    });
    let mut s = TcpStream::connect(rig.http()).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(t.elapsed() < Duration::from_secs(4), "connection kept open");
}

#[test]
fn connection_caps_per_ip_and_per_process() {
    let rig = rig(zs_web::Config {
        max_connections_per_ip: 3,
        ..Default::default()
    });
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(rig.http()).unwrap())
        .collect();
    // The 4th is closed at accept.
    let mut s = TcpStream::connect(rig.http()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "4th connection was served"
    );
    drop(held);
    // Slots come back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = raw_http(
            rig.http(),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "slots not released");
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = get(rig.http(), "/metrics");
    let refused: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("zs_web_connections_refused_total{reason=\"ip\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 1, "{m}");

    let rig = rig_total_cap();
    let _held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(rig.http()).unwrap())
        .collect();
    let mut s = TcpStream::connect(rig.http()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
}

fn rig_total_cap() -> Rig {
    rig(zs_web::Config {
        max_connections: 2,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_cap_pauses_reading_instead_of_queueing() {
    let rig = rig(zs_web::Config {
        max_in_flight: 4,
        ..Default::default()
    });
    let mut ws = ws(&rig.ws_url()).await;
    for i in 0..12 {
        send(
            &mut ws,
            &format!(r#"{{"id":{i},"call":"slow","text":"200"}}"#),
        )
        .await;
    }
    let t = Instant::now();
    for _ in 0..12 {
        assert!(recv(&mut ws).await["text"]
            .as_str()
            .unwrap()
            .starts_with("slept"));
    }
    // 12 calls of 200 ms, 4 at a time: at least 3 rounds.
    assert!(
        t.elapsed() >= Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
    assert!(rig.gateway.stats().slow_readers == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_dropped() {
    for mode in MODES {
        let rig = rig_in(
            mode,
            zs_web::Config {
                ping_interval: Some(Duration::from_millis(150)),
                pong_timeout: Duration::from_millis(250),
                ..Default::default()
            },
        );
        let addr = rig.http();
        // A socket that completed the handshake and then went silent: it
        // neither reads the ping nor sends a pong.
        let mut s = tokio::task::spawn_blocking(move || raw_ws(addr))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rig.gateway.stats().dead_peers == 0 {
            assert!(
                Instant::now() < deadline,
                "{mode:?}: not dropped: {:?}",
                rig.gateway.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while rig.gateway.stats().open > 0 || rig.server.connection_count() > 0 {
            assert!(Instant::now() < deadline, "{mode:?}: session kept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What it was sent: a ping ("zs"), then nothing (no close frame to
        // a dead peer); the socket is closed.
        let got = tokio::task::spawn_blocking(move || {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
        .await
        .unwrap();
        assert_eq!(&got[..4], &[0x89, 0x02, b'z', b's'], "{mode:?}: {got:?}");
        honest(&rig).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_keep_their_connection_slot() {
    // The HTTP connection hands its admission slot to the WebSocket session
    // it upgrades to: open WebSockets count against the caps.
    let rig = rig(zs_web::Config {
        max_connections_per_ip: 2,
        ..Default::default()
    });
    let mut a = ws(&rig.ws_url()).await;
    let b = ws(&rig.ws_url()).await;
    send(&mut a, r#"{"id":1,"call":"echo","text":"a"}"#).await;
    assert_eq!(recv(&mut a).await["text"], "a");
    assert!(
        tokio_tungstenite::connect_async(rig.ws_url())
            .await
            .is_err(),
        "a third WebSocket from the same address was accepted"
    );
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok((mut c, _)) = tokio_tungstenite::connect_async(rig.ws_url()).await {
            send(&mut c, r#"{"id":1,"call":"echo","text":"c"}"#).await;
            assert_eq!(recv(&mut c).await["text"], "c");
            break;
        }
        assert!(Instant::now() < deadline, "the slot did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
