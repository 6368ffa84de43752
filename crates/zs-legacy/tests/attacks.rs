//! Bad input against our legacy server: every case ends that connection with a
//! logged reason (checked in the captured log) and a counter, never a panic, while
//! a well-behaved legacy client on the same server carries on.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use zs_core::Registry;
use zs_legacy::{
    register_demo_commands, CipherPool, ClientConfig, LegacyClient, LegacyConfig, LegacyServer,
};
use zs_wire::legacy::{
    self, control, frame, seq, CmdBody, CmdKind, Dfe, DfeValue, FrameDecoder, LegacyFrame,
    LegacyLimits, PlainCrypto, SeqLayer,
};

/// The log lines of this test binary.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("zs_legacy=info")
            .with_ansi(false)
            .with_writer(move || Sink(b.clone()))
            .try_init();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if String::from_utf8_lossy(&log().lock().unwrap()).contains(needle) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server(config: LegacyConfig) -> LegacyServer {
    log();
    let backend = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    );
    let mut r = Registry::new();
    register_demo_commands(&mut r);
    LegacyServer::start(backend, r, config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

fn plain() -> LegacyConfig {
    LegacyConfig {
        ciphers: CipherPool::Performance,
        ..Default::default()
    }
}

/// A hand-driven legacy client.
struct Raw {
    s: TcpStream,
    tx: SeqLayer,
    rx: SeqLayer,
    dec: FrameDecoder,
    inbuf: BytesMut,
    plain: BytesMut,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let l = LegacyLimits::default();
        Raw {
            s,
            tx: SeqLayer::new(l),
            rx: SeqLayer::new(l),
            dec: FrameDecoder::new(l),
            inbuf: BytesMut::new(),
            plain: BytesMut::new(),
        }
    }
    fn raw(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }
    fn frames(&mut self, f: &[u8]) {
        let mut out = BytesMut::new();
        self.tx.send(f, &mut out).unwrap();
        self.raw(&out);
    }
    fn request(&mut self, kind: CmdKind, cmd: &str, body: CmdBody, cipher: u8) {
        let p = frame::encode_command(cmd, &body);
        let mut f = Vec::new();
        // Plain hash; the cipher byte is written as given, the payload left plain.
        frame::encode_request(kind, &p, 0, 0, &PlainCrypto, &mut f).unwrap();
        let at = 4 + 1 + 4 + 3 + if p.len() < 6 { 16 } else { 0 };
        f[at] = cipher;
        self.frames(&f);
    }
    /// The next response frame's payload.
    fn response(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Ok(Some(LegacyFrame::Response { payload, .. })) =
                self.dec.decode(&mut self.plain, true, &PlainCrypto)
            {
                return Some(payload.to_vec());
            }
            let mut b = [0u8; 65536];
            let n = self.s.read(&mut b).ok().filter(|n| *n > 0)?;
            self.inbuf.extend_from_slice(&b[..n]);
            let mut reply = BytesMut::new();
            self.rx
                .receive(&mut self.inbuf, &mut self.plain, &mut reply)
                .unwrap();
        }
    }
    fn handshake(&mut self) {
        self.request(
            CmdKind::Stream,
            control::CIPHER_MODEL,
            CmdBody::Dfe(Dfe(vec![DfeValue::Integer(8)])),
            0,
        );
        let p = self.response().expect("handshake answer");
        let m = legacy::CipherModel::from_dfe(
            &Dfe::decode(&p.into(), &LegacyLimits::default()).unwrap(),
        )
        .unwrap();
        assert_eq!(m.cipher, 0);
    }
    /// Whether the server closes the connection within 5 s.
    fn closed(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut b = [0u8; 4096];
        while Instant::now() < deadline {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
        false
    }
}

/// A good client on the same server still works.
fn good_client_works(server: &LegacyServer) {
    let backend = Arc::new(
        zs_io_tokio::TokioBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    );
    let c = LegacyClient::connect(backend, server.local_addr(), ClientConfig::default()).unwrap();
    assert_eq!(
        c.call_console("echo_Console", "still here").unwrap(),
        "still here"
    );
}

#[test]
fn wrong_md5_in_a_sequence_packet() {
    let s = server(plain());
    let mut r = Raw::connect(s.local_addr());
    r.handshake();
    let mut out = BytesMut::new();
    r.tx.send(b"0123456789", &mut out).unwrap();
    out[8] ^= 0xff;
    r.raw(&out);
    assert!(r.closed());
    assert!(logged("MD5 mismatch"));
    good_client_works(&s);
    assert!(s.stats().refused >= 1);
}

#[test]
fn truncated_packet_then_eof_and_stalled_packet_idle() {
    let s = server(LegacyConfig {
        idle_timeout: Duration::from_millis(400),
        ..plain()
    });
    // Half a packet, then EOF.
    let mut r = Raw::connect(s.local_addr());
    let mut out = BytesMut::new();
    r.tx.send(&[7u8; 100], &mut out).unwrap();
    r.raw(&out[..50]);
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(r.closed());
    // A packet header announcing 60000 bytes, then silence: the idle timeout.
    let mut r = Raw::connect(s.local_addr());
    r.raw(&[seq::PACKET, 0x60, 0xea, 0, 0, 0, 0]);
    assert!(r.closed());
    good_client_works(&s);
}

#[test]
fn unknown_cipher_ordinal() {
    let s = server(plain());
    let mut r = Raw::connect(s.local_addr());
    r.handshake();
    r.request(
        CmdKind::Console,
        "echo_Console",
        CmdBody::Text("hello world".into()),
        99,
    );
    assert!(r.closed());
    assert!(logged("unknown or unsupported cipher 99"));
    good_client_works(&s);
}

#[test]
fn oversized_sizes() {
    let s = server(LegacyConfig {
        limits: LegacyLimits {
            max_frame: 1 << 20,
            max_complete_buffer: 1 << 20,
            ..LegacyLimits::default()
        },
        ..plain()
    });
    // A frame announcing 1 GiB.
    let mut r = Raw::connect(s.local_addr());
    r.handshake();
    let mut f = vec![0xf0, 0xf0, 0xf0, 0xf0, 0xf1];
    f.extend_from_slice(&(1u32 << 30).to_le_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    r.frames(&f);
    assert!(r.closed());
    assert!(logged(
        "frame of 1073741824 bytes is over the limit of 1048576"
    ));
    // A CompleteBuffer announcing 2 MiB, and a DFE with 2^31-1 values.
    let mut r = Raw::connect(s.local_addr());
    r.handshake();
    let mut f = Vec::new();
    frame::encode_complete_buffer("x", &[], &mut f);
    f[5..9].copy_from_slice(&(2u32 << 20).to_le_bytes());
    r.frames(&f);
    assert!(r.closed());
    assert!(logged("CompleteBuffer of 2097152 bytes is over the limit"));
    let mut r = Raw::connect(s.local_addr());
    r.handshake();
    let mut dfe = Dfe::new().to_bytes();
    dfe[22..26].copy_from_slice(&i32::MAX.to_le_bytes());
    let mut f = Vec::new();
    frame::encode_request(CmdKind::Stream, &dfe, 0, 0, &PlainCrypto, &mut f).unwrap();
    r.frames(&f);
    assert!(r.closed());
    assert!(logged("DFE value count of 2147483647"));
    good_client_works(&s);
    assert!(s.stats().refused >= 3);
}

#[test]
fn protocol_violations() {
    let s = server(LegacyConfig {
        handshake_timeout: Duration::from_millis(300),
        ..plain()
    });
    // A command before the handshake.
    let mut r = Raw::connect(s.local_addr());
    r.request(
        CmdKind::Console,
        "echo_Console",
        CmdBody::Text("early bird".into()),
        0,
    );
    assert!(r.closed());
    assert!(logged("before the __@CipherModel handshake"));
    // An unknown sequence record type; a bad frame head.
    let mut r = Raw::connect(s.local_addr());
    r.raw(&[0x42, 0, 0, 0, 0]);
    assert!(r.closed());
    assert!(logged("unknown sequence record type 0x42"));
    let mut r = Raw::connect(s.local_addr());
    r.frames(b"GET / HTTP/1.1\r\n\r\n");
    assert!(r.closed());
    assert!(logged("bad frame head"));
    // No handshake at all.
    let mut r = Raw::connect(s.local_addr());
    assert!(r.closed());
    assert!(logged("no __@CipherModel handshake within"));
    // A packet ahead of the expected sequence number.
    let mut r = Raw::connect(s.local_addr());
    let mut out = BytesMut::new();
    let mut ahead = SeqLayer::new(LegacyLimits::default());
    ahead.send(b"zero", &mut BytesMut::new()).unwrap();
    ahead.send(b"one!", &mut out).unwrap();
    r.raw(&out);
    assert!(r.closed());
    assert!(logged("sequence packet 1 arrived, 0 expected"));
    good_client_works(&s);
}

#[test]
fn connection_limit() {
    let s = server(LegacyConfig {
        max_connections: 2,
        ..plain()
    });
    let mut a = Raw::connect(s.local_addr());
    a.handshake();
    let mut b = Raw::connect(s.local_addr());
    b.handshake();
    let mut c = Raw::connect(s.local_addr());
    assert!(c.closed());
    assert!(logged("legacy connections open, the limit is 2"));
}

/// Compressed input (the `maxsec` forms) is bounded like plain input: a zlib
/// bomb, a container that lies about its strips, a compressed BigStream chunk
/// that inflates past the stream, a CoreCompress token; each closes only its
/// connection, with a logged reason.
#[test]
fn compressed_bombs_and_lies() {
    let s = server(LegacyConfig {
        limits: LegacyLimits {
            max_frame: 1 << 20,
            ..LegacyLimits::default()
        },
        ..plain()
    });
    let send_dfe = |dfe: &[u8]| {
        let mut r = Raw::connect(s.local_addr());
        r.handshake();
        let mut f = Vec::new();
        frame::encode_request(CmdKind::Stream, dfe, 0, 0, &PlainCrypto, &mut f).unwrap();
        r.frames(&f);
        assert!(r.closed());
    };
    let zlib_dfe = |raw: u32, z: &[u8], token: u8| {
        let mut d = vec![0xff];
        d.extend_from_slice(&(z.len() as u32).to_le_bytes());
        d.push(token);
        d.extend_from_slice(&raw.to_le_bytes());
        d.extend_from_slice(&[0; 16]);
        d.extend_from_slice(z);
        d
    };
    // 64 MiB of zeros in ~64 KiB, announced as 64 MiB: over max_frame, refused
    // before inflating.
    let bomb = legacy::compress::zlib_compress(&vec![0u8; 64 << 20]);
    send_dfe(&zlib_dfe(64 << 20, &bomb, 1));
    assert!(logged(
        "DFE body of 67108864 bytes is over the limit of 1048576"
    ));
    // The same bomb announced as 1000 bytes: inflating stops at 1000.
    send_dfe(&zlib_dfe(1000, &bomb, 1));
    assert!(logged("bad compressed data: zlib"));
    // A container whose strip claims more bytes than are there.
    let mut c = Vec::new();
    legacy::compress::parallel_compress(&[1u8; 50_000], 2, &mut c);
    c[4..12].copy_from_slice(&(1i64 << 40).to_le_bytes());
    send_dfe(&zlib_dfe(50_000, &c, 4));
    assert!(logged("container strip of 1099511627776 bytes"));
    // CoreCompress (token 2): not read.
    send_dfe(&zlib_dfe(10, &[0; 10], 2));
    assert!(logged("compressed DFE (token 2) not supported"));
    // A compressed BigStream chunk that inflates past the stream's total.
    let mut r = Raw::connect(s.local_addr());
    r.handshake();
    let mut f = Vec::new();
    frame::encode_big_stream_head("big", 1000, &mut f);
    frame::encode_big_stream_chunk_compressed(&[9u8; 100_000], &mut f);
    r.frames(&f);
    assert!(r.closed());
    // (its first 16,666-byte strip is already over)
    assert!(logged(
        "decompressed data of 16666 bytes is over the limit of 1000"
    ));
    good_client_works(&s);
    assert!(s.stats().refused >= 5);
}

/// A client that never sends the BigStream signals: the pushes queued for it
/// stop at `max_push_bytes` (further pushes fail with `Full`), its later
/// requests wait behind the stalled stream, and other clients carry on.
#[test]
fn a_client_that_never_signals_holds_only_its_push_budget() {
    log();
    let backend = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            quickack: true,
            ..Default::default()
        })
        .unwrap(),
    );
    let mut r = Registry::new();
    register_demo_commands(&mut r);
    r.console("pushes", |peer, _| {
        // 1.5 MiB each against a 2 MiB budget: the first is queued, the others
        // do not fit.
        let v: Vec<String> = (0..3)
            .map(|_| {
                let data = bytes::Bytes::from(vec![7u8; 3 << 19]);
                zs_legacy::push_big_stream(peer, "big", data)
                    .is_ok()
                    .to_string()
            })
            .collect();
        Ok(v.join(","))
    });
    let config = LegacyConfig {
        max_push_bytes: 2 << 20,
        ..plain()
    };
    let s = LegacyServer::start(backend, r, config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut raw = Raw::connect(s.local_addr());
    raw.handshake();
    raw.request(CmdKind::Console, "pushes", CmdBody::Text(String::new()), 0);
    let answer = raw.response().expect("answer");
    assert_eq!(frame::console_text(&answer), "true,false,false");
    // It never answers the first chunk with F6; a request of its own now waits
    // behind the stalled stream (the client would read the answer between two
    // chunks otherwise).
    raw.request(
        CmdKind::Console,
        "echo_Console",
        CmdBody::Text("x".into()),
        0,
    );
    good_client_works(&s);
    assert_eq!(s.stats().big_streams_pushed, 0);
    // The good client has left; the stalled one is still connected.
    let t = Instant::now();
    while s.connection_count() != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", s.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}
