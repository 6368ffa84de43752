//! A zs-core server listening *inside* a zs-p2pvm tunnel and zs-core clients
//! connecting through it: the framework runs unchanged over virtual connections
//! (the tunnel handle is the `Arc<dyn Backend>`, under the security layer:
//! secure(tunnel(epoll))). Console calls, stream calls,
//! a BigStream, a second client on the same virtual address ("connection clone"),
//! and a StableIO client whose virtual connection is dropped repeatedly.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zs_core::{Client, Options, Registry, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_io::Backend;
use zs_io::Bytes;
use zs_p2pvm::{Auth, Tunnel, TunnelConfig, TunnelHandle};
use zs_wire::DataFrame;

const WAIT: Duration = Duration::from_secs(30);

fn provider() -> Arc<dyn SecurityProvider> {
    let (id, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(id.fingerprint()))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

/// Two tunnel ends over one loopback TCP connection on the epoll backend.
struct Tunnels {
    io: Arc<dyn Backend>,
    _phys: Box<dyn zs_io::Listener>,
    server_end: TunnelHandle,
    client_end: TunnelHandle,
}

impl Tunnels {
    fn new() -> Tunnels {
        // Loopback: a plain link on purpose, with a token (16+ bytes).
        let cfg =
            TunnelConfig::plaintext(Auth::token(b"integration test token").expect("long enough"));
        let io: Arc<dyn Backend> = Arc::new(
            zs_io_epoll::EpollBackend::new(zs_io::Config {
                loops: 1,
                ..zs_io::Config::default()
            })
            .unwrap(),
        );
        let (factory, rx) = Tunnel::acceptor(cfg.clone()).expect("tunnel config");
        let phys = io.listen("127.0.0.1:0".parse().unwrap(), factory).unwrap();
        let client_end = Tunnel::connect(&*io, phys.local_addr(), cfg, WAIT).unwrap();
        let server_end = rx.recv_timeout(WAIT).unwrap();
        server_end.wait_ready(WAIT).unwrap();
        Tunnels {
            io,
            _phys: phys,
            server_end,
            client_end,
        }
    }
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.server_end.close("test over");
        self.client_end.close("test over");
        self.io.shutdown();
    }
}

fn fnv(d: &[u8]) -> u64 {
    d.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.console("echo", |_p, text| Ok(text.to_owned()));
    r.stream("sum", |_p, d| {
        let mut rd = d.reader();
        let (a, b) = (rd.read_u64().unwrap(), rd.read_u64().unwrap());
        Ok(DataFrame::new().with(a + b))
    });
    r.big_stream("upload", |p, c| {
        let (next, mut h) = p
            .state::<(u64, u64)>()
            .unwrap_or((c.offset, 0xcbf2_9ce4_8422_2325));
        if c.offset != next {
            return Err(format!("expected offset {next}, got {}", c.offset).into());
        }
        for b in c.data.iter() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        let end = c.offset + c.data.len() as u64;
        if c.last {
            p.set_state(());
            Ok(Some(DataFrame::new().with(end).with(h)))
        } else {
            p.set_state((end, h));
            Ok(None)
        }
    });
    r
}

/// `secure(end)`: zs-core's security as a layer over a tunnel end.
fn secure(end: &TunnelHandle, provider: &Arc<dyn SecurityProvider>) -> Arc<dyn Backend> {
    zs_secure::compose::secure(Arc::new(end.clone()), provider.clone())
}

fn vaddr() -> SocketAddr {
    "10.77.0.1:7777".parse().unwrap()
}

#[test]
fn server_and_client_inside_the_tunnel() {
    let t = Tunnels::new();
    let provider = provider();
    let server = Server::start(
        secure(&t.server_end, &provider),
        registry(),
        Options::default(),
        vaddr(),
    )
    .unwrap();
    assert_eq!(server.local_addr(), vaddr());
    assert_eq!(server.backend_name(), "secure(p2pvm)");
    assert!(t.client_end.wait_peer_listen(vaddr(), WAIT));

    let client_backend = secure(&t.client_end, &provider);
    let client = Client::connect(
        client_backend.clone(),
        Registry::new(),
        Options::client(),
        vaddr(),
    )
    .unwrap();
    // Console calls, many in flight.
    assert_eq!(client.call("echo", "hello").wait().unwrap(), "hello");
    let calls: Vec<_> = (0..200)
        .map(|i| (i, client.call("echo", &format!("msg {i}"))))
        .collect();
    for (i, c) in calls {
        assert_eq!(c.wait().unwrap(), format!("msg {i}"));
    }
    // A stream call.
    let d = client
        .call_stream("sum", DataFrame::new().with(40u64).with(2u64))
        .wait()
        .unwrap();
    assert_eq!(d.reader().read_u64().unwrap(), 42);
    // A BigStream of 8 MiB, checked end to end.
    let data: Vec<u8> = (0..8u32 * 1024 * 1024 + 5)
        .map(|i| (i % 251) as u8)
        .collect();
    let data = Bytes::from(data);
    let d = client
        .send_big_stream("upload", data.clone(), 0, |_, _| {})
        .wait_timeout(Duration::from_secs(60))
        .unwrap();
    let mut rd = d.reader();
    assert_eq!(rd.read_u64().unwrap(), data.len() as u64);
    assert_eq!(rd.read_u64().unwrap(), fnv(&data));

    // Connection clone: a second client to the same virtual server, both live.
    let clone =
        Client::connect(client_backend, Registry::new(), Options::client(), vaddr()).unwrap();
    assert_eq!(clone.call("echo", "clone").wait().unwrap(), "clone");
    assert_eq!(client.call("echo", "first").wait().unwrap(), "first");
    assert_eq!(server.connection_count(), 2);
    assert_eq!(t.client_end.vconn_count(), 2);

    client.close();
    clone.close();
    let t0 = Instant::now();
    while server.connection_count() > 0 {
        assert!(t0.elapsed() < WAIT, "server connections left");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.shutdown();
}

/// StableIO through the tunnel: the server drops the client's *virtual*
/// connection every 50 commands; the client reconnects (a new virtual
/// connection) and resumes; every command arrives exactly once, in order.
#[test]
fn stable_io_survives_dropped_virtual_connections() {
    let t = Tunnels::new();
    let provider = provider();
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let s2 = seen.clone();
    let mut r = Registry::new();
    r.console("seq", move |p, text| {
        let n: u64 = text.parse().map_err(|_| "not a number")?;
        let mut v = s2.lock().unwrap();
        v.push(n);
        if v.len() % 50 == 0 {
            p.drop_link();
        }
        Ok(text.to_owned())
    });
    let server = Server::start(
        secure(&t.server_end, &provider),
        r,
        Options::default(),
        vaddr(),
    )
    .unwrap();
    assert!(t.client_end.wait_peer_listen(vaddr(), WAIT));
    let client = Client::connect_stable(
        secure(&t.client_end, &provider),
        Registry::new(),
        Options::client(),
        vaddr(),
    )
    .unwrap();
    const N: u64 = 400;
    let calls: Vec<_> = (0..N).map(|i| client.call("seq", &i.to_string())).collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.wait_timeout(WAIT).unwrap(), i.to_string());
    }
    let v = seen.lock().unwrap().clone();
    assert_eq!(
        v,
        (0..N).collect::<Vec<_>>(),
        "lost, duplicated or reordered"
    );
    assert!(server.stable_sessions() >= 1);
    // The session outlived its virtual connections: the client opened new ones
    // (drops that land while commands are in flight can merge, so not always one
    // per 50 commands).
    assert!(
        t.client_end.vconns_opened() >= 2,
        "no reconnect happened: {}",
        t.client_end.vconns_opened()
    );
    client.close();
    server.shutdown();
}
