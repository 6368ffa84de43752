//! `zs serve --http ADDR`: the web face comes up next to the server; the
//! dashboard, `/metrics` and a WebSocket echo through the gateway work.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Guard;

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    out
}

#[test]
fn serve_with_http_serves_dashboard_metrics_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zs"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--loops",
            "1",
            "--http",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let _g = Guard(child);
    let start = Instant::now();
    let mut web = None;
    while start.elapsed() < Duration::from_secs(30) {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(rest) = line.strip_prefix("web: dashboard http://") {
            web = Some(
                rest.split('/')
                    .next()
                    .unwrap()
                    .parse::<SocketAddr>()
                    .unwrap(),
            );
            break;
        }
    }
    let web = web.expect("zs serve prints the web address");
    assert!(get(web, "/").contains("zserver dashboard"));
    // the DB service runs in `zs serve` by default: its panel is on the dashboard
    let stats = get(web, "/api/stats");
    assert!(stats.contains("DB service"), "{stats}");
    assert!(stats.contains("queries running"), "{stats}");

    // A WebSocket echo through the gateway (hand-made frames).
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let msg = br#"{"id":1,"call":"echo","text":"web"}"#;
    let mut f = vec![0x81, 0x80 | msg.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(msg);
    s.write_all(&f).unwrap();
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x81);
    let mut body = vec![0u8; usize::from(h[1] & 0x7f)];
    s.read_exact(&mut body).unwrap();
    assert_eq!(body, br#"{"id":1,"text":"web"}"#);

    let m = get(web, "/metrics");
    assert!(
        m.contains("zs_command_calls_total{command=\"echo\",kind=\"console\"} 1"),
        "{m}"
    );
    assert!(m.contains("zs_web_connections_open 1"), "{m}");
}
