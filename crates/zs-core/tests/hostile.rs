//! Hostile peers beside honest clients: garbage bytes, oversized lengths,
//! slow-loris, handshake floods and peers that never read. Each hostile
//! connection is disconnected (the server logs why) while 50 honest clients'
//! calls all succeed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_core::{Client, Options, Registry, Server};
use zs_crypto::{
    ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, SuiteId, ZsSecurity,
};
use zs_io::Backend;
use zs_wire::Text;

fn provider() -> Arc<dyn SecurityProvider> {
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = ServerIdentity::generate(&rng).unwrap();
    let mut c = ClientConfig::pinned(id.fingerprint());
    c.suites = vec![SuiteId::Aes256Gcm];
    Arc::new(ZsSecurity::new(
        Some(Arc::new(c)),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

/// Reads until EOF or reset; returns true if the server ended the connection
/// before `limit`.
fn ended_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Garbage,
    Oversized,
    SlowLoris,
    Flood,
    NeverReads,
}

fn hostile(kind: Kind, addr: SocketAddr, provider: Arc<dyn SecurityProvider>) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    match kind {
        Kind::Garbage => {
            let mut x = 0x9e37_79b9_u32;
            let junk: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = s.write_all(&junk);
            ended_by_server(&mut s, Duration::from_secs(10))
        }
        Kind::Oversized => {
            // A handshake record header claiming a 2 GiB body.
            let _ = s.write_all(&[0x16, 0xff, 0xff, 0xff, 0x7f]);
            ended_by_server(&mut s, Duration::from_secs(10))
        }
        Kind::SlowLoris => {
            // A valid ClientHello, one byte every 150 ms.
            let mut hello = Vec::new();
            provider
                .new_client(Instant::now())
                .unwrap()
                .write_output(&mut hello);
            s.set_read_timeout(Some(Duration::from_millis(150)))
                .unwrap();
            let end = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 64];
            for b in hello.iter().cycle() {
                if Instant::now() > end {
                    return false;
                }
                if s.write_all(&[*b]).is_err() {
                    return true;
                }
                match s.read(&mut buf) {
                    Ok(0) => return true,
                    Err(e)
                        if e.kind() != std::io::ErrorKind::WouldBlock
                            && e.kind() != std::io::ErrorKind::TimedOut =>
                    {
                        return true
                    }
                    _ => {}
                }
            }
            false
        }
        Kind::Flood => ended_by_server(&mut s, Duration::from_secs(10)),
        Kind::NeverReads => {
            // A real handshake, then requests whose answers are never read.
            let now = Instant::now();
            let mut sess = zs_core::Session::new(
                provider.new_client(now).unwrap(),
                zs_core::SessionConfig::default(),
            );
            let mut buf = vec![0u8; 65536];
            while !sess.is_established() {
                let mut out = Vec::new();
                sess.write_output(&mut out);
                s.write_all(&out).unwrap();
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return false;
                }
                sess.handle_input(&buf[..n], Instant::now()).unwrap();
            }
            s.set_write_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let text = "x".repeat(32 * 1024);
            let end = Instant::now() + Duration::from_secs(15);
            let mut out: Vec<u8> = Vec::new();
            while Instant::now() < end {
                if out.len() < 256 * 1024 {
                    let call = zs_core::Call::Console {
                        cmd: Text::from("echo"),
                        text: Text::from(text.as_str()),
                    };
                    if sess.call(call, None, Instant::now()).is_err() {
                        return false;
                    }
                    sess.write_output(&mut out);
                }
                // Partial writes keep the rest: the record stream stays intact.
                match s.write(&out) {
                    Ok(0) => return true,
                    Ok(n) => {
                        out.drain(..n);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        // Our send buffer is full: the server stopped reading us.
                        // Peek (never read) to see whether it closed the connection.
                        let mut probe = [0u8; 1];
                        s.set_nonblocking(true).unwrap();
                        let r = s.peek(&mut probe);
                        s.set_nonblocking(false).unwrap();
                        match r {
                            Ok(0) => return true,
                            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return true,
                            _ => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                    Err(_) => return true,
                }
            }
            false
        }
    }
}

fn run(backend: Arc<dyn Backend>) {
    let provider = provider();
    let mut r = Registry::new();
    r.console("echo", |_, t| Ok(t.to_owned()));
    let opts = Options {
        handshake_timeout: Duration::from_secs(3),
        // Longer than the handshake timeout, so silent peers count as handshake
        // failures; it is what ends the peers that never read.
        idle_timeout: Some(Duration::from_secs(5)),
        max_backlog: 1 << 20,
        ..Options::default()
    };
    let server = Server::start(
        backend.clone(),
        provider.clone(),
        r,
        opts,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr();

    // 50 garbage, 50 oversized, 40 slow-loris, 50 flood, 10 never-reading.
    let kind_of = |i: usize| match i % 20 {
        0..=4 => Kind::Garbage,
        5..=9 => Kind::Oversized,
        10..=13 => Kind::SlowLoris,
        14..=18 => Kind::Flood,
        _ => Kind::NeverReads,
    };
    let hostiles: Vec<_> = (0..200)
        .map(|i| {
            let kind = kind_of(i);
            let p = provider.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || (kind, hostile(kind, addr, p)))
                .unwrap()
        })
        .collect();

    // 50 honest clients on their own backend, calling while the hostiles attack.
    // (on their own backend, as separate client machines would be).
    let client_backend = client_backend();
    let clients: Vec<Client> = (0..50)
        .map(|_| {
            Client::connect(
                client_backend.clone(),
                provider.clone(),
                Registry::new(),
                // Keepalives well inside the server's 5 s idle timeout.
                Options {
                    keepalive: Some(Duration::from_millis(500)),
                    ..Options::client()
                },
                addr,
            )
            .unwrap()
        })
        .collect();
    for round in 0..20 {
        let futs: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.call("echo", &format!("{round}/{i}"))))
            .collect();
        for (i, f) in futs {
            match f.wait() {
                Ok(v) => assert_eq!(v, format!("{round}/{i}")),
                Err(e) => panic!("round {round} client {i}: {e}; server: {}", server.stats()),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut ended = 0;
    for h in hostiles {
        let (kind, ok) = h.join().unwrap();
        assert!(ok, "hostile {kind:?} was not disconnected");
        ended += 1;
    }
    assert_eq!(ended, 200);
    // The honest clients are still served after the attack.
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            c.call("echo", &i.to_string()).wait().unwrap(),
            i.to_string()
        );
    }
    let stats = server.stats();
    // Garbage, oversized and slow-loris peers (140) are protocol failures (a
    // flood peer may hit the idle timeout first on an overloaded machine).
    assert!(stats.protocol_errors >= 140, "{stats}");
    let echo = &stats.commands[0];
    assert!(echo.calls >= 50 * 21, "{stats}");
}

fn client_backend() -> Arc<dyn Backend> {
    let cfg = zs_io::Config {
        loops: 1,
        ..zs_io::Config::default()
    };
    #[cfg(target_os = "linux")]
    return Arc::new(zs_io_epoll::EpollBackend::new(cfg).unwrap());
    #[cfg(not(target_os = "linux"))]
    return Arc::new(zs_io_tokio::TokioBackend::new(cfg).unwrap());
}

#[cfg(target_os = "linux")]
#[test]
fn hostile_peers_epoll() {
    run(Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 2,
            ..zs_io::Config::default()
        })
        .unwrap(),
    ));
}

#[test]
fn hostile_peers_tokio() {
    run(Arc::new(
        zs_io_tokio::TokioBackend::new(zs_io::Config {
            loops: 2,
            ..zs_io::Config::default()
        })
        .unwrap(),
    ));
}
