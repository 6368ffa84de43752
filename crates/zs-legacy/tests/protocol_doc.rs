//! `docs/PROTOCOL.md` Part 11 ("Legacy ZNet wire") checked byte for byte:
//!
//! - our encoders produce the documented client bytes exactly, and the
//!   documented server bytes exactly once the server's start-time MD5 is put in;
//!   our decoders read every documented field;
//! - a fresh capture of the original client and server (a relay in this test)
//!   is the documented bytes (the start-time MD5 and its packet's MD5 aside);
//! - a capture of the original client talking to **our** server is the
//!   documented bytes too (same exceptions).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use zs_core::Registry;
use zs_legacy::{register_demo_commands, CipherPool, LegacyConfig, LegacyServer};
use zs_wire::legacy::{
    self, control, frame, CipherModel, CmdBody, CmdKind, Dfe, DfeValue, FrameDecoder, LegacyFrame,
    LegacyLimits, PlainCrypto, SeqLayer,
};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// The bytes of a ```text <name> block (hex before each `|`).
fn block(name: &str) -> Vec<u8> {
    let part = DOC
        .split("# Part 11: Legacy ZNet wire")
        .nth(1)
        .expect("Part 11");
    let fence = format!("```text {name}\n");
    let start = part.find(&fence).expect(name) + fence.len();
    let body = &part[start..start + part[start..].find("```").unwrap()];
    body.lines()
        .flat_map(|l| l.split('|').next().unwrap().split_whitespace())
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

/// Offsets in the server bytes that change with every server start: the
/// start-time MD5 (field [3]) and the MD5 of the packet carrying it.
fn varying(s2c: &[u8]) -> Vec<std::ops::Range<usize>> {
    let field3 = s2c
        .windows(5)
        .position(|w| w == [0x10, 0x10, 0, 0, 0])
        .expect("field [3]")
        + 5;
    vec![12..28, field3..field3 + 16]
}

fn masked(b: &[u8], ranges: &[std::ops::Range<usize>]) -> Vec<u8> {
    let mut v = b.to_vec();
    for r in ranges {
        if r.end <= v.len() {
            v[r.clone()].fill(0);
        }
    }
    v
}

#[test]
fn our_encoders_write_the_documented_bytes() {
    let c2s = block("legacy-wire-c2s");
    let s2c = block("legacy-wire-s2c");
    // Client: the handshake (packet 0), the ack, the console call (packet 1).
    let mut tx = SeqLayer::new(LegacyLimits::default());
    let mut want = BytesMut::new();
    let hs = frame::encode_command(
        control::CIPHER_MODEL,
        &CmdBody::Dfe(legacy::control::handshake_request(8)),
    );
    let mut f = Vec::new();
    frame::encode_request(CmdKind::Stream, &hs, 0, 0, &PlainCrypto, &mut f).unwrap();
    tx.send(&f, &mut want).unwrap();
    want.extend_from_slice(&[0x03, 0, 0, 0, 0]);
    let call = frame::encode_command("helloWorld_ConsoleResult", &CmdBody::Text("abc".into()));
    let mut f = Vec::new();
    frame::encode_request(CmdKind::Console, &call, 0, 0, &PlainCrypto, &mut f).unwrap();
    tx.send(&f, &mut want).unwrap();
    assert_eq!(want.to_vec(), c2s);

    // Server: decode the documented answer, then write it again.
    let mut rx = SeqLayer::new(LegacyLimits::default());
    let (mut src, mut plain, mut reply) =
        (BytesMut::from(&s2c[..]), BytesMut::new(), BytesMut::new());
    let st = rx.receive(&mut src, &mut plain, &mut reply).unwrap();
    assert_eq!((st.delivered, st.acks), (2, 2));
    let mut dec = FrameDecoder::new(LegacyLimits::default());
    let Some(LegacyFrame::Response {
        payload,
        hash: 0,
        cipher: 0,
    }) = dec.decode(&mut plain, true, &PlainCrypto).unwrap()
    else {
        panic!("handshake answer")
    };
    let model =
        CipherModel::from_dfe(&Dfe::decode(&payload, &LegacyLimits::default()).unwrap()).unwrap();
    let expect = CipherModel::znet(1, 0, Bytes::from_static(&[0]), model.instance);
    assert_eq!(model, expect);
    assert_eq!(model.max_complete_buffer_size, 0x0400_0000);
    let Some(LegacyFrame::Response { payload: text, .. }) =
        dec.decode(&mut plain, true, &PlainCrypto).unwrap()
    else {
        panic!("console answer")
    };
    assert_eq!(frame::console_text(&text), "console result abc");

    let mut out = vec![0x03, 0, 0, 0, 0];
    let mut f = Vec::new();
    frame::encode_response(&expect.to_dfe().to_bytes(), 0, 0, &PlainCrypto, &mut f).unwrap();
    let mut tx = SeqLayer::new(LegacyLimits::default());
    let mut b = BytesMut::new();
    tx.send(&f, &mut b).unwrap();
    out.extend_from_slice(&b);
    out.extend_from_slice(&[0x03, 1, 0, 0, 0]);
    let mut f = Vec::new();
    frame::encode_response(b"console result abc", 0, 0, &PlainCrypto, &mut f).unwrap();
    let mut b = BytesMut::new();
    tx.send(&f, &mut b).unwrap();
    out.extend_from_slice(&b);
    assert_eq!(out, s2c);
    // The DFE inside the handshake request, value by value.
    let d = Dfe::decode(&Bytes::from(hs), &LegacyLimits::default()).unwrap();
    assert_eq!(d.0[0].as_str(), Some("__@CipherModel"));
    let inner = Dfe::decode(d.0[1].as_bytes().unwrap(), &LegacyLimits::default()).unwrap();
    assert_eq!(inner.0, vec![DfeValue::Integer(8)]);
}

fn pump(mut a: TcpStream, mut b: TcpStream, log: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 65536];
    loop {
        match a.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = b.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                if b.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs `znet_cli --profile maxperf --mode console` through a recording relay to
/// `port`; returns (client→server, server→client) bytes.
fn capture(dir: &std::path::Path, port: u16) -> (Vec<u8>, Vec<u8>) {
    let (a, b, _) = capture_with(dir, port, &["--mode", "console", "--linger", "0"]);
    (a, b)
}

/// `znet_cli --profile maxperf ARGS` through a recording relay to `port`:
/// (client→server bytes, server→client bytes, the client's output).
fn capture_with(dir: &std::path::Path, port: u16, args: &[&str]) -> (Vec<u8>, Vec<u8>, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let lp = l.local_addr().unwrap().port();
    let c2s = Arc::new(Mutex::new(Vec::new()));
    let s2c = Arc::new(Mutex::new(Vec::new()));
    let (c2, s2) = (c2s.clone(), s2c.clone());
    let relay = std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (c1, s1) = (c.try_clone().unwrap(), s.try_clone().unwrap());
        let t = std::thread::spawn(move || pump(c1, s1, c2));
        pump(s, c, s2);
        t.join().unwrap();
    });
    let out = Command::new(dir.join("znet_cli"))
        .args(["127.0.0.1", &lp.to_string(), "--profile", "maxperf"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    relay.join().unwrap();
    let a = c2s.lock().unwrap().clone();
    let b = s2c.lock().unwrap().clone();
    (a, b, text)
}

/// Keepalives (`04 00 00` / `05 00 00`) may fall anywhere on a slow machine;
/// they are not part of the documented exchange.
fn without_keepalives(b: &[u8]) -> Vec<u8> {
    let mut src = BytesMut::from(b);
    let mut out = Vec::new();
    while !src.is_empty() {
        let n = match src[0] {
            0x04 | 0x05 => {
                let len = u16::from_le_bytes([src[1], src[2]]) as usize;
                let _ = src.split_to(3 + len);
                continue;
            }
            0x03 | 0x06 => 5,
            _ => 23 + u16::from_le_bytes([src[1], src[2]]) as usize,
        };
        out.extend_from_slice(&src.split_to(n.min(src.len())));
    }
    out
}

/// `got` without acknowledgement packets (`03` + u32) that follow the
/// documented `want_len` bytes: whether a peer's last ack is on the wire before
/// the capture ends is a matter of timing.
fn without_trailing_acks(mut got: Vec<u8>, want_len: usize) -> Vec<u8> {
    if got.len() > want_len {
        let tail = &got[want_len..];
        if tail.len() % 5 == 0 && tail.chunks(5).all(|p| p[0] == 0x03) {
            got.truncate(want_len);
        }
    }
    got
}

#[test]
fn the_originals_and_our_server_send_the_documented_bytes() {
    let Some(dir) = zs_legacy::peers::znet_dir() else {
        return;
    };
    let c2s = block("legacy-wire-c2s");
    let s2c = block("legacy-wire-s2c");
    let vary = varying(&s2c);

    // The original client and server.
    let mut serv = Command::new(dir.join("znet_serv"))
        // Not --quiet: it sets handshake field [9] (QuietMode) to 1.
        .args(["0", "--profile", "maxperf"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serv.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(r) = l.split("listening on 127.0.0.1:").nth(1) {
            break r.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let (a, b) = capture(&dir, port);
    let _ = serv.kill();
    let _ = serv.wait();
    assert_eq!(
        without_trailing_acks(without_keepalives(&a), c2s.len()),
        c2s,
        "original client"
    );
    assert_eq!(
        masked(
            &without_trailing_acks(without_keepalives(&b), s2c.len()),
            &vary
        ),
        masked(&s2c, &vary),
        "original server"
    );

    // The original client and our server.
    let mut r = Registry::new();
    register_demo_commands(&mut r);
    let ours = performance_server(r, false);
    let (a, b) = capture(&dir, ours.local_addr().port());
    assert_eq!(
        without_trailing_acks(without_keepalives(&a), c2s.len()),
        c2s,
        "original client to our server"
    );
    assert_eq!(
        masked(
            &without_trailing_acks(without_keepalives(&b), s2c.len()),
            &vary
        ),
        masked(&s2c, &vary),
        "our server"
    );
}

/// The frame bytes inside a capture's sequence packets (acks and keepalives
/// dropped).
fn seq_payloads(b: &[u8]) -> Vec<u8> {
    let mut rx = SeqLayer::new(LegacyLimits::default());
    let (mut src, mut plain, mut reply) = (BytesMut::from(b), BytesMut::new(), BytesMut::new());
    rx.receive(&mut src, &mut plain, &mut reply).unwrap();
    plain.to_vec()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn pushes_to_the_original_client_are_the_documented_bytes() {
    let push = block("legacy-wire-push");
    let reply = block("legacy-wire-push-reply");
    // Our encoders.
    let mut want = Vec::new();
    frame::encode_complete_buffer("cb", b"xyz", &mut want);
    frame::encode_big_stream_head("big", 3, &mut want);
    frame::encode_big_stream_chunk(b"abc", &mut want);
    assert_eq!(want, push);
    let mut sig = Vec::new();
    frame::encode_signal(legacy::SignalKind::Done, &mut sig);
    assert_eq!(sig, reply);
    // Our decoder reads them back.
    let mut dec = FrameDecoder::new(LegacyLimits::default());
    let mut src = BytesMut::from(&push[..]);
    let got: Vec<_> =
        std::iter::from_fn(|| dec.decode(&mut src, false, &PlainCrypto).unwrap()).collect();
    assert_eq!(got.len(), 2);
    assert!(
        matches!(&got[1], LegacyFrame::BigStreamChunk { cmd, total: 3, last: true, data, .. } if cmd == "big" && &data[..] == b"abc")
    );

    let Some(dir) = zs_legacy::peers::znet_dir() else {
        return;
    };
    // Our server pushes both after answering the original client's console call.
    let mut r = Registry::new();
    r.console("helloWorld_ConsoleResult", |peer, text| {
        peer.send_complete_buffer("cb", Bytes::from_static(b"xyz"))
            .map_err(|e| e.to_string())?;
        zs_legacy::push_big_stream(peer, "big", Bytes::from_static(b"abc"))
            .map_err(|e| e.to_string())?;
        Ok(format!("console result {text}"))
    });
    let ours = performance_server(r, true);
    let (a, b, out) = capture_with(
        &dir,
        ours.local_addr().port(),
        &["--mode", "console", "--linger", "1500", "--verbose"],
    );
    let (a, b) = (seq_payloads(&a), seq_payloads(&b));
    assert!(contains(&b, &push), "our server's push bytes");
    assert!(contains(&a, &reply), "the original client's F7");
    assert_eq!(ours.stats().big_streams_pushed, 1);
    assert_eq!(ours.stats().complete_buffers_pushed, 1);
    // The original library logs what it handled (its verbose command log; it
    // has no handler registered for either name).
    assert!(out.contains("execute complete buffer: cb"), "{out}");
    assert!(out.contains("Big Stream complete: big"), "{out}");
}

#[test]
fn the_documented_compressed_dfe_decodes_and_ours_has_its_layout() {
    let doc = Bytes::from(block("legacy-wire-zlib-dfe"));
    let want = Dfe(vec![
        DfeValue::string("__@CipherModel"),
        DfeValue::dfe(&control::handshake_request(8)),
    ]);
    assert_eq!(Dfe::decode(&doc, &LegacyLimits::default()).unwrap(), want);
    // Our encoder: the same header fields (the zlib stream itself depends on
    // the compressor and its level), and it decodes to the same values.
    let ours = want.to_compressed_bytes();
    assert_eq!((ours[0], ours[5]), (0xff, 1));
    assert_eq!(ours[6..26], doc[6..26], "raw size and zero MD5");
    assert_eq!(
        u32::from_le_bytes(ours[1..5].try_into().unwrap()) as usize,
        ours.len() - 26
    );
    assert_eq!(
        Dfe::decode(&Bytes::from(ours), &LegacyLimits::default()).unwrap(),
        want
    );
}

/// Our legacy server on one epoll loop with the Performance cipher pool, on a
/// free loopback port, with or without quick ACKs.
fn performance_server(r: Registry, quickack: bool) -> LegacyServer {
    let backend = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            quickack,
            ..Default::default()
        })
        .unwrap(),
    );
    LegacyServer::start(
        backend,
        r,
        LegacyConfig {
            ciphers: CipherPool::Performance,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}
