//! Our legacy server with our legacy client (no Free Pascal needed): the
//! Registry features a legacy connection reaches — delayed answers keep the
//! order, handler errors are answered empty, CompleteBuffer and BigStream
//! arrive whole and in order (with the `F6`/`F7` signals), server pushes reach
//! the client, `__@Wait` is a barrier, and every cipher id on the wire.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use zs_core::{code, Registry};
use zs_legacy::{
    CipherPool, ClientConfig, CmdBody, CmdKind, Dfe, DfeValue, LegacyClient, LegacyConfig,
    LegacyServer,
};
use zs_wire::legacy::{
    frame, FrameDecoder, LegacyFrame, LegacyLimits, PlainCrypto, SeqLayer, SignalKind,
};
use zs_wire::DataFrame;

fn backend() -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_tokio::TokioBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn start(r: Registry, pool: CipherPool) -> LegacyServer {
    let config = LegacyConfig {
        ciphers: pool,
        ..Default::default()
    };
    LegacyServer::start(backend(), r, config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

fn client(s: &LegacyServer) -> LegacyClient {
    LegacyClient::connect(backend(), s.local_addr(), ClientConfig::default()).unwrap()
}

#[test]
fn delayed_answers_keep_the_order_and_errors_answer_empty() {
    let mut r = Registry::new();
    r.console_delayed("slow", |_, text, resp| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let _ = resp.reply_text(format!("slow {text}"));
        });
    });
    r.console("fast", |_, text| Ok(format!("fast {text}")));
    r.console("fails", |_, _| {
        Err(zs_core::HandlerError::new(code::BAD_REQUEST, "no"))
    });
    r.stream("fails_stream", |_, _| Err("no".into()));
    let s = start(r, CipherPool::Performance);
    let c = client(&s);
    assert_eq!(c.call_console("slow", "1").unwrap(), "slow 1");
    assert_eq!(c.call_console("fast", "2").unwrap(), "fast 2");
    assert_eq!(c.call_console("fails", "x").unwrap(), "");
    assert_eq!(
        c.call_stream_dfe("fails_stream", Dfe::new()).unwrap(),
        Dfe::new()
    );
    assert_eq!(c.call_console("no such command", "x").unwrap(), "");
    // Still in step after the errors.
    assert_eq!(c.call_console("fast", "3").unwrap(), "fast 3");
    assert_eq!(s.stats().refused, 0);
}

#[test]
fn complete_buffer_direct_commands_pushes_and_wait() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut r = Registry::new();
    let t2 = Mutex::new(tx.lock().unwrap().clone());
    r.complete_buffer("blob", move |_, b| {
        let _ = tx.lock().unwrap().send(format!("blob {}", b.len()));
    });
    r.direct_stream("note", move |_, d: &DataFrame| {
        let v = d.reader().read_i64().unwrap();
        let _ = t2.lock().unwrap().send(format!("note {v}"));
    });
    let s = start(r, CipherPool::Default);
    let c = client(&s);
    c.send_complete_buffer("blob", &vec![7u8; 100_000]).unwrap();
    c.send_direct_stream("note", Dfe(vec![DfeValue::Int64(-5)]))
        .unwrap();
    c.wait().unwrap(); // after both were handled
    assert_eq!(rx.try_recv().unwrap(), "blob 100000");
    assert_eq!(rx.try_recv().unwrap(), "note -5");
    // A push from the server reaches the client.
    let peer = s.peers().pop().unwrap();
    peer.send_direct_console("hello", "from the server")
        .unwrap();
    let p = c.next_push(Duration::from_secs(5)).unwrap();
    assert_eq!((p.kind, p.cmd.as_str()), (CmdKind::DirectConsole, "hello"));
    assert_eq!(p.body, CmdBody::Text("from the server".into()));
}

#[test]
fn every_cipher_between_our_client_and_server() {
    let mut r = Registry::new();
    r.console("echo", |_, t| Ok(t.to_owned()));
    r.stream("echo_s", |_, d| Ok(d.clone()));
    for id in 0..19u8 {
        let s = start(r.clone(), CipherPool::Custom(vec![id]));
        let c = client(&s);
        assert_eq!(c.handshake().cipher, id);
        let text = "x".repeat(5000);
        assert_eq!(c.call_console("echo", &text).unwrap(), text, "cipher {id}");
        let d = DataFrame::new()
            .with("abc")
            .with(42i64)
            .with(vec![1u8, 2, 3]);
        assert_eq!(c.call_stream("echo_s", &d).unwrap(), d, "cipher {id}");
    }
}

/// A BigStream sent by hand (our client has no BigStream sender): each chunk
/// reaches the handler in order; the server answers F6 after the first and F7
/// after the last.
#[test]
fn big_stream_chunks_and_signals() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut r = Registry::new();
    r.big_stream("upload", move |_, chunk| {
        let _ = tx
            .lock()
            .unwrap()
            .send((chunk.offset, chunk.data.len(), chunk.last));
        Ok(None)
    });
    let s = start(r, CipherPool::Performance);
    let mut sock = TcpStream::connect(s.local_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let lim = LegacyLimits::default();
    let mut tx_seq = SeqLayer::new(lim);
    let mut rx_seq = SeqLayer::new(lim);
    let mut send = |sock: &mut TcpStream, f: &[u8]| {
        let mut out = BytesMut::new();
        tx_seq.send(f, &mut out).unwrap();
        sock.write_all(&out).unwrap();
    };
    let hs = frame::encode_command(
        "__@CipherModel",
        &CmdBody::Dfe(Dfe(vec![DfeValue::Integer(8)])),
    );
    let mut f = Vec::new();
    frame::encode_request(CmdKind::Stream, &hs, 0, 0, &PlainCrypto, &mut f).unwrap();
    frame::encode_big_stream_head("upload", 300_000, &mut f);
    frame::encode_big_stream_chunk(&vec![1u8; 200_000], &mut f);
    send(&mut sock, &f);
    let mut dec = FrameDecoder::new(lim);
    let (mut inbuf, mut plain, mut reply) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
    let mut next = |expect: bool, sock: &mut TcpStream| loop {
        if let Some(f) = dec.decode(&mut plain, expect, &PlainCrypto).unwrap() {
            return f;
        }
        let mut b = [0u8; 65536];
        let n = sock.read(&mut b).unwrap();
        assert!(n > 0, "closed");
        inbuf.extend_from_slice(&b[..n]);
        rx_seq.receive(&mut inbuf, &mut plain, &mut reply).unwrap();
    };
    assert!(matches!(
        next(true, &mut sock),
        LegacyFrame::Response { .. }
    ));
    assert_eq!(
        next(false, &mut sock),
        LegacyFrame::Signal(SignalKind::Fragment)
    );
    let mut f = Vec::new();
    frame::encode_big_stream_chunk(&vec![2u8; 100_000], &mut f);
    send(&mut sock, &f);
    assert_eq!(
        next(false, &mut sock),
        LegacyFrame::Signal(SignalKind::Done)
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        (0, 200_000, false)
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        (200_000, 100_000, true)
    );
}
