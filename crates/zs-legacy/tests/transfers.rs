//! BigStream and CompleteBuffer in both directions: our client and our server
//! with each other, with the original ZNet programs (`znet_serv`, `znet_cli`),
//! and the bounds on pushes at each end.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use zs_core::Registry;
use zs_legacy::{
    register_demo_commands, CipherPool, ClientConfig, LegacyClient, LegacyConfig, LegacyServer,
    PushedData, BIG_STREAM_CHUNK,
};

fn backend() -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            quickack: true,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// `n` bytes of a pattern that differs between chunks.
fn pattern(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8 ^ (i >> 20) as u8).collect()
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

type Got = Arc<Mutex<Vec<u8>>>;

/// A server whose `upload` BigStream and `cb_up` CompleteBuffer commands store
/// what they get, and whose `download` console command pushes a CompleteBuffer
/// `cb` (`cb_len` bytes) and a BigStream `big` (`big_len` bytes) after its
/// answer.
fn server(config: LegacyConfig, cb_len: usize, big_len: usize) -> (LegacyServer, Got, Got) {
    let (up, cb): (Got, Got) = Default::default();
    let mut r = Registry::new();
    register_demo_commands(&mut r);
    let u = up.clone();
    r.big_stream("upload", move |_, c| {
        let mut v = u.lock().unwrap();
        assert_eq!(v.len() as u64, c.offset, "chunks in order");
        v.extend_from_slice(&c.data);
        Ok(None)
    });
    let c = cb.clone();
    r.complete_buffer("cb_up", move |_, data| {
        c.lock().unwrap().extend_from_slice(&data);
    });
    r.console("download", move |peer, _| {
        peer.send_complete_buffer("cb", pattern(cb_len))
            .map_err(|e| e.to_string())?;
        zs_legacy::push_big_stream(peer, "big", pattern(big_len)).map_err(|e| e.to_string())?;
        Ok("ok".into())
    });
    let s = LegacyServer::start(backend(), r, config, "127.0.0.1:0".parse().unwrap()).unwrap();
    (s, up, cb)
}

fn plain() -> LegacyConfig {
    LegacyConfig {
        ciphers: CipherPool::Performance,
        ..Default::default()
    }
}

/// Takes one pushed BigStream: its chunks' (offset, size) and its bytes.
fn take_big(c: &LegacyClient) -> (Vec<(u64, usize)>, Vec<u8>) {
    let (mut parts, mut all) = (Vec::new(), Vec::new());
    loop {
        match c
            .next_data(Duration::from_secs(20))
            .expect("a BigStream chunk")
        {
            PushedData::BigStream {
                cmd,
                offset,
                total,
                last,
                data,
            } => {
                assert_eq!(cmd, "big");
                assert_eq!(offset, all.len() as u64);
                parts.push((offset, data.len()));
                all.extend_from_slice(&data);
                if last {
                    assert_eq!(total, all.len() as u64);
                    return (parts, all);
                }
            }
            other => panic!("expected a BigStream chunk, got {other:?}"),
        }
    }
}

#[test]
fn our_client_and_server_carry_big_streams_and_complete_buffers_both_ways() {
    let big = 2 * BIG_STREAM_CHUNK + 12_345;
    let (server, up, cb) = server(LegacyConfig::default(), 100_000, big);
    let c = LegacyClient::connect(backend(), server.local_addr(), ClientConfig::default()).unwrap();
    assert_ne!(c.handshake().cipher, 0, "the default pool encrypts frames");

    // Client -> server: three chunks, the second and third each after an F6.
    let data = pattern(big);
    let mut progress = Vec::new();
    c.send_big_stream("upload", data.clone(), |done, total| {
        progress.push((done, total))
    })
    .unwrap();
    let (m, t) = (BIG_STREAM_CHUNK as u64, big as u64);
    assert_eq!(progress, vec![(m, t), (2 * m, t), (t, t)]);
    c.send_complete_buffer("cb_up", &pattern(70_000)).unwrap();
    c.wait().unwrap();
    until("the upload handler has every byte", || {
        up.lock().unwrap().len() == big
    });
    assert_eq!(&up.lock().unwrap()[..], &data[..]);
    assert_eq!(&cb.lock().unwrap()[..], &pattern(70_000)[..]);

    // Server -> client: the answer first, then the CompleteBuffer, then the
    // BigStream in 1 MiB chunks; a call after it is answered after its F7.
    assert_eq!(c.call_console("download", "").unwrap(), "ok");
    assert_eq!(
        c.next_data(Duration::from_secs(20)),
        Some(PushedData::CompleteBuffer {
            cmd: "cb".into(),
            data: pattern(100_000)
        })
    );
    let (parts, all) = take_big(&c);
    assert_eq!(
        parts,
        vec![
            (0, BIG_STREAM_CHUNK),
            (m, BIG_STREAM_CHUNK),
            (2 * m, 12_345)
        ]
    );
    assert_eq!(&all[..], &data[..]);
    assert_eq!(c.call_console("echo_Console", "after").unwrap(), "after");
    until("the server counts the F7", || {
        server.stats().big_streams_pushed == 1
    });
    assert_eq!(server.stats().complete_buffers_pushed, 1);
    assert_eq!(server.stats().refused, 0);
}

/// Calls made while our BigStream is on its way wait for its F7, and both the
/// stream and the calls complete (a second client thread calls meanwhile).
#[test]
fn calls_queued_behind_a_pushed_big_stream_are_answered_after_it() {
    let big = 3 * BIG_STREAM_CHUNK;
    let (server, _, _) = server(plain(), 10, big);
    let c = Arc::new(
        LegacyClient::connect(backend(), server.local_addr(), ClientConfig::default()).unwrap(),
    );
    assert_eq!(c.call_console("download", "").unwrap(), "ok");
    // Asked while the chunks flow (the client's own queue holds the call until
    // the pushes are read off the wire; the answer must not land mid-stream).
    let c2 = c.clone();
    let t = std::thread::spawn(move || c2.call_console("echo_Console", "behind").unwrap());
    assert!(matches!(
        c.next_data(Duration::from_secs(20)),
        Some(PushedData::CompleteBuffer { .. })
    ));
    let (_, all) = take_big(&c);
    assert_eq!(all.len(), big);
    assert_eq!(t.join().unwrap(), "behind");
    assert_eq!(server.stats().refused, 0);
}

/// A server holds at most `max_push_bytes` of pushes per connection: over it a
/// push fails with `Full` and queues nothing; the connection carries on.
#[test]
fn pushes_over_the_servers_limit_fail_and_queue_nothing() {
    let config = LegacyConfig {
        ciphers: CipherPool::Performance,
        max_push_bytes: BIG_STREAM_CHUNK,
        ..Default::default()
    };
    let mut r = Registry::new();
    let result: Arc<Mutex<Option<String>>> = Default::default();
    let res = result.clone();
    r.console("too_much", move |peer, _| {
        let e = zs_legacy::push_big_stream(peer, "big", pattern(2 * BIG_STREAM_CHUNK));
        *res.lock().unwrap() = Some(format!("{e:?}"));
        Ok("tried".into())
    });
    r.console("echo", |_, t| Ok(t.to_owned()));
    let server = LegacyServer::start(backend(), r, config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let c = LegacyClient::connect(backend(), server.local_addr(), ClientConfig::default()).unwrap();
    assert_eq!(c.call_console("too_much", "").unwrap(), "tried");
    let e = result.lock().unwrap().clone().unwrap();
    assert!(e.contains("Full"), "{e}");
    assert_eq!(c.next_data(Duration::from_millis(300)), None);
    assert_eq!(c.call_console("echo", "still here").unwrap(), "still here");
}

/// A server that pushes more than the application takes is disconnected by our
/// client (`max_pending_push_bytes`), with the reason given to the caller.
#[test]
fn our_client_disconnects_a_server_that_pushes_more_than_is_taken() {
    let (server, _, _) = server(plain(), 300_000, 300_000);
    let config = ClientConfig {
        max_pending_push_bytes: 500_000,
        ..Default::default()
    };
    let c = LegacyClient::connect(backend(), server.local_addr(), config).unwrap();
    assert_eq!(c.call_console("download", "").unwrap(), "ok");
    until("the client gives up on the server", || !c.is_connected());
    let e = c.call_console("echo_Console", "x").unwrap_err();
    assert!(e.to_string().contains("not taken"), "{e}");
    until("the server sees the connection go", || {
        server.connection_count() == 0
    });
}

// ---- with the original programs ----

/// Our client sends a 3-chunk BigStream and a CompleteBuffer to the original
/// server (which has no handler for either: it still reads them and sends its
/// F6/F6/F7), then a call shows the framing was read right.
#[test]
fn our_client_sends_big_streams_and_complete_buffers_to_the_original_server() {
    let Some(dir) = zs_legacy::peers::znet_dir() else {
        return;
    };
    for (args, compress) in [
        (&["--profile", "maxperf"][..], false),
        (&["--cipher", "blowfish"][..], false),
        // Compressed chunks (the parallel zlib container, flag 1) to a server
        // that is not compressing itself.
        (&["--profile", "maxperf"][..], true),
        // The maxsec profile: its own answers are compressed.
        (&["--profile", "maxsec"][..], true),
    ] {
        let mut child = Command::new(dir.join("znet_serv"))
            .args(["0", "--quiet"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port: u16 = loop {
            let l = lines.next().unwrap().unwrap();
            if let Some(r) = l.split("listening on 127.0.0.1:").nth(1) {
                break r.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let config = ClientConfig {
            timeout: Duration::from_secs(20),
            compress,
            ..Default::default()
        };
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let c = LegacyClient::connect(backend(), addr, config).unwrap();
        let big = 2 * BIG_STREAM_CHUNK + 777;
        let mut signals = 0;
        c.send_big_stream("no_such_big_stream", pattern(big), |_, _| signals += 1)
            .unwrap();
        assert_eq!(
            signals, 3,
            "F6, F6, F7 from the original server ({args:?}, compress {compress})"
        );
        c.send_complete_buffer("no_such_buffer", &pattern(100_000))
            .unwrap();
        assert_eq!(
            c.call_console("echo_Console", "after both").unwrap(),
            "after both",
            "{args:?}"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Our server pushes a CompleteBuffer and a 3-chunk BigStream to the original
/// client after answering its console call; the original library reads both
/// (its log says so) and answers F6, F6, F7 (our counter says so).
#[test]
fn our_server_pushes_big_streams_and_complete_buffers_to_the_original_client() {
    let Some(dir) = zs_legacy::peers::znet_dir() else {
        return;
    };
    let mut r = Registry::new();
    r.console("helloWorld_ConsoleResult", |peer, text| {
        peer.send_complete_buffer("cb", pattern(100_000))
            .map_err(|e| e.to_string())?;
        zs_legacy::push_big_stream(peer, "big", pattern(2 * BIG_STREAM_CHUNK + 3))
            .map_err(|e| e.to_string())?;
        Ok(format!("console result {text}"))
    });
    for compress in [false, true] {
        let config = LegacyConfig {
            compress,
            ..Default::default()
        };
        let server =
            LegacyServer::start(backend(), r.clone(), config, "127.0.0.1:0".parse().unwrap())
                .unwrap();
        let out = Command::new(dir.join("znet_cli"))
            .args(["127.0.0.1", &server.local_addr().port().to_string()])
            .args(["--mode", "console", "--verbose", "--linger", "3000"])
            .args(["--timeout", "20000"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "compress {compress}: {text}");
        assert!(text.contains("execute complete buffer: cb"), "{text}");
        assert!(text.contains("Big Stream complete: big"), "{text}");
        until("our server counts the original client's F7", || {
            server.stats().big_streams_pushed == 1
        });
        assert_eq!(server.stats().refused, 0);
    }
}

/// Compressed both ways between our client and our server: requests, answers,
/// BigStream chunks in both directions.
#[test]
fn our_client_and_server_compressed() {
    let big = BIG_STREAM_CHUNK + 99;
    let config = LegacyConfig {
        compress: true,
        ..Default::default()
    };
    let (server, up, _) = server(config, 1000, big);
    let cc = ClientConfig {
        compress: true,
        ..Default::default()
    };
    let c = LegacyClient::connect(backend(), server.local_addr(), cc).unwrap();
    assert!(c.handshake().send_data_compressed);
    c.send_big_stream("upload", pattern(big), |_, _| {})
        .unwrap();
    until("upload", || up.lock().unwrap().len() == big);
    assert_eq!(&up.lock().unwrap()[..], &pattern(big)[..]);
    let t = "c".repeat(100_000);
    assert_eq!(c.call_console("echo_Console", &t).unwrap(), t);
    assert_eq!(c.call_console("download", "").unwrap(), "ok");
    assert!(matches!(
        c.next_data(Duration::from_secs(20)),
        Some(PushedData::CompleteBuffer { .. })
    ));
    let (_, all) = take_big(&c);
    assert_eq!(&all[..], &pattern(big)[..]);
}
