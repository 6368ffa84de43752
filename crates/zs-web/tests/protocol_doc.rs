//! docs/PROTOCOL.md Part 8, byte for byte: every ```` ```text web-… ```` block
//! is played against a real server and gateway; `>` lines are sent, `<` lines
//! must come back exactly (text), `>hex` / `<hex` the same for binary messages.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn blocks() -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/PROTOCOL.md"
    ))
    .unwrap();
    let part = &doc[doc
        .find("# Part 8: WebSocket gateway (zs-web)")
        .expect("Part 8 exists")..];
    let mut out = Vec::new();
    let mut cur: Option<(String, Vec<String>)> = None;
    for line in part.lines() {
        if let Some(name) = line.strip_prefix("```text web-") {
            cur = Some((name.to_owned(), Vec::new()));
        } else if line.starts_with("```") {
            if let Some(b) = cur.take() {
                out.push(b);
            }
        } else if let Some((_, lines)) = cur.as_mut() {
            lines.push(line.to_owned());
        }
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part5_examples_hold_byte_for_byte() {
    let rig = rig(zs_web::Config::default());
    let bl = blocks();
    let names: Vec<&str> = bl.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(names, ["call", "push", "errors", "signal", "binary"]);
    for (name, lines) in bl {
        let mut ws = ws(&rig.ws_url()).await;
        for l in lines {
            if let Some(h) = l.strip_prefix(">hex ") {
                ws.send(Message::Binary(unhex(h).into())).await.unwrap();
            } else if let Some(t) = l.strip_prefix("> ") {
                ws.send(Message::Text(t.into())).await.unwrap();
            } else if let Some(c) = l.strip_prefix("<close ") {
                let (code, reason) = c.split_once(' ').unwrap_or((c, ""));
                let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                match m {
                    Message::Close(Some(f)) => {
                        assert_eq!(u16::from(f.code).to_string(), code, "block {name}");
                        assert_eq!(f.reason.as_str(), reason, "block {name}");
                    }
                    other => panic!("block {name}: expected close {c}, got {other:?}"),
                }
            } else if let Some(h) = l.strip_prefix("<hex ") {
                let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                match m {
                    Message::Binary(b) => assert_eq!(hex(&b), hex(&unhex(h)), "block {name}"),
                    other => panic!("block {name}: expected binary {h}, got {other:?}"),
                }
            } else if let Some(t) = l.strip_prefix("< ") {
                let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                match m {
                    Message::Text(got) => assert_eq!(got.as_str(), t, "block {name}"),
                    other => panic!("block {name}: expected {t}, got {other:?}"),
                }
            } else {
                assert!(l.trim().is_empty(), "block {name}: stray line {l:?}");
            }
        }
    }
}

#[test]
fn binary_layout_matches_the_table() {
    use zs_wire::DataFrame;
    let df = DataFrame::new().with(1u32).with(2u32);
    let m = zs_web::json::binary_message(zs_web::json::op::CALL_STREAM, 6, "sum", &df);
    println!("request {}", hex(&m));
    println!(
        "answer {}",
        hex(&zs_web::json::binary_message(
            zs_web::json::op::REPLY,
            6,
            "",
            &DataFrame::new().with(3u64)
        ))
    );
    assert_eq!(m[0], 0x01);
    assert_eq!(&m[1..9], &6u64.to_le_bytes());
    assert_eq!(m[9], 3);
    assert_eq!(&m[10..13], b"sum");
    assert_eq!(&m[13..], &df.to_bytes()[..]);
}
