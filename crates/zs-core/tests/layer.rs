//! zs-core's frames over plaintext connections of a security layer
//! (`Server::start` / `Client::connect` over `zs_secure::SecureBackend`): calls,
//! the peer's identity from the layer, StableIO resume proved over the layer's
//! channel binding, the orderly end of a StableIO session in-band
//! (`__@close`), and no plaintext service over a backend without security.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fast_reconnect, provider, wait_until};
use zs_core::{Client, Options, Registry, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ZsSecurity};
use zs_io::Backend;
use zs_secure::SecureBackend;

fn addr0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn tokio1() -> Arc<dyn Backend> {
    Arc::new(
        zs_io_tokio::TokioBackend::new(zs_io::Config {
            loops: 1,
            ..zs_io::Config::default()
        })
        .unwrap(),
    )
}

#[cfg(target_os = "linux")]
fn raw1() -> Arc<dyn Backend> {
    common::epoll(1)
}

#[cfg(not(target_os = "linux"))]
fn raw1() -> Arc<dyn Backend> {
    tokio1()
}

fn secure(raw: Arc<dyn Backend>, p: &Arc<dyn SecurityProvider>) -> Arc<dyn Backend> {
    Arc::new(SecureBackend::new(raw, p.clone()))
}

/// A server of `r` over secure(raw) with `p`.
fn serve(p: &Arc<dyn SecurityProvider>, r: Registry) -> Server {
    Server::start(secure(raw1(), p), r, Options::default(), addr0()).unwrap()
}

/// A plain client of `server` over secure(raw) with `p`.
fn connect(p: &Arc<dyn SecurityProvider>, server: &Server) -> zs_core::Result<Client> {
    Client::connect(
        secure(raw1(), p),
        Registry::new(),
        Options::client(),
        server.local_addr(),
    )
}

/// `echo` and `who` (the PSK identity the handler sees), counting calls.
fn registry(calls: &Arc<AtomicUsize>) -> Registry {
    let mut r = Registry::new();
    let n = calls.clone();
    r.console("echo", move |_, t| {
        n.fetch_add(1, Ordering::SeqCst);
        Ok(t.to_owned())
    });
    r.console("who", |peer, _| {
        Ok(peer
            .psk_identity()
            .map(|id| String::from_utf8_lossy(&id).into_owned())
            .unwrap_or_default())
    });
    r
}

fn calls_over(raw_server: Arc<dyn Backend>, raw_client: Arc<dyn Backend>) {
    let p = provider();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = Server::start(
        secure(raw_server, &p),
        registry(&calls),
        Options::default(),
        addr0(),
    )
    .unwrap();
    let client = Client::connect(
        secure(raw_client, &p),
        Registry::new(),
        Options::client(),
        server.local_addr(),
    )
    .unwrap();
    let futs: Vec<_> = (0..200)
        .map(|i| (i, client.call("echo", &format!("m{i}"))))
        .collect();
    for (i, f) in futs {
        assert_eq!(f.wait().unwrap(), format!("m{i}"));
    }
    // A big text crosses several records and reads.
    let big = "z".repeat(300_000);
    assert_eq!(client.call("echo", &big).wait().unwrap(), big);
    assert_eq!(calls.load(Ordering::SeqCst), 201);
    assert_eq!(server.stats().commands.len(), 2);
}

#[cfg(target_os = "linux")]
#[test]
fn calls_over_the_layer_epoll() {
    calls_over(raw1(), raw1());
}

#[test]
fn calls_over_the_layer_tokio() {
    calls_over(tokio1(), tokio1());
}

#[test]
fn handlers_see_the_psk_identity_the_layer_verified() {
    let key = [5u8; 32];
    let p: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::psk(b"alice", &key).unwrap())),
        Some(Arc::new(ServerConfig::with_psk(b"alice", &key).unwrap())),
    ));
    let server = serve(&p, registry(&Arc::new(AtomicUsize::new(0))));
    let client = connect(&p, &server).unwrap();
    assert_eq!(client.call("who", "").wait().unwrap(), "alice");
}

/// Handlers see the whole `SecurityInfo` of their connection, not only the
/// PSK identity: the suite the layer negotiated and the server key's
/// fingerprint (server-key mode), over secure(epoll).
#[test]
fn handlers_see_the_suite_and_server_key() {
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = zs_crypto::ServerIdentity::generate(&rng).unwrap();
    let fp = id.fingerprint();
    let mut c = ClientConfig::pinned(fp);
    c.suites = vec![zs_crypto::SuiteId::ChaCha20Poly1305];
    let p: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
        Some(Arc::new(c)),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ));
    let mut r = Registry::new();
    r.console("sec", |peer, _| {
        let s = peer.security_info().ok_or("no security info")?;
        let key = s.server_key.ok_or("no server key")?;
        Ok(format!(
            "{} {} {}",
            s.suite,
            key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            s.psk_identity.is_none()
        ))
    });
    let server = serve(&p, r);
    let client = connect(&p, &server).unwrap();
    let hex: String = fp.0.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        client.call("sec", "").wait().unwrap(),
        format!("CHACHA20-POLY1305 {hex} true")
    );
}

/// A connect that fails in the layer's handshake is `Error::Handshake`, not
/// `Error::Io` or a lost connection: a client pinned to another server key
/// is refused by its own layer.
#[test]
fn a_client_pinned_to_another_key_gets_the_handshake_variant() {
    let p = provider();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = serve(&p, registry(&calls));
    let rng = ring::rand::SystemRandom::new();
    let (other, _) = zs_crypto::ServerIdentity::generate(&rng).unwrap();
    let wrong: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(other.fingerprint()))),
        None,
    ));
    let err = connect(&wrong, &server).unwrap_err();
    match &err {
        zs_core::Error::Handshake {
            kind: zs_core::HandshakeKind::Refused,
            source,
        } => assert!(
            matches!(
                zs_secure::handshake_error(source),
                Some(zs_secure::HandshakeError::Failed(_))
            ),
            "{err}"
        ),
        other => panic!("expected a handshake error, got {other:?}"),
    }
    // The io bridge keeps the kind.
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// Server-wide state (`Registry::with_app_state`): one value shared by every
/// connection's handlers, read with `Peer::app_state`; a type that is not the
/// state's reads `None`.
#[test]
fn handlers_share_the_registry_state() {
    struct App {
        greeting: &'static str,
        hits: AtomicUsize,
    }
    let p = provider();
    let mut r = Registry::new();
    r.with_app_state(App {
        greeting: "hi",
        hits: AtomicUsize::new(0),
    })
    .console("hit", |peer, who| {
        let app = peer.app_state::<App>().ok_or("no state")?;
        let n = app.hits.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("{} {who} {n}", app.greeting))
    })
    .console("wrong", |peer, _| {
        Ok(peer.app_state::<u32>().is_none().to_string())
    });
    let server = serve(&p, r);
    let (a, b) = (connect(&p, &server).unwrap(), connect(&p, &server).unwrap());
    assert_eq!(a.call("hit", "a").wait().unwrap(), "hi a 1");
    assert_eq!(b.call("hit", "b").wait().unwrap(), "hi b 2");
    assert_eq!(a.call("hit", "a").wait().unwrap(), "hi a 3");
    assert_eq!(b.call("wrong", "").wait().unwrap(), "true");
}

/// A StableIO client of `server` over its own secure(raw) backend.
fn stable_client(p: &Arc<dyn SecurityProvider>, server: &Server) -> Client {
    Client::connect_stable(
        secure(raw1(), p),
        Registry::new(),
        fast_reconnect(),
        server.local_addr(),
    )
    .unwrap()
}

/// StableIO over the layer: the link dies, the client reconnects through a
/// new handshake and proves the resume over the new connection's channel
/// binding; the call made before the drop completes once.
#[test]
fn stable_sessions_resume_over_the_layer() {
    let p = provider();
    let calls = Arc::new(AtomicUsize::new(0));
    let opts = Options {
        stable: true,
        ..Options::default()
    };
    let server = Server::start(secure(raw1(), &p), registry(&calls), opts, addr0()).unwrap();
    let client = stable_client(&p, &server);
    assert!(client.stable_id().is_some_and(|id| id != 0));
    assert_eq!(client.call("echo", "before").wait().unwrap(), "before");
    for round in 0..3 {
        let pending = client.call("echo", &format!("r{round}"));
        client.drop_link();
        assert_eq!(pending.wait().unwrap(), format!("r{round}"));
    }
    assert!(
        wait_until(Duration::from_secs(10), || client.resumes() >= 1),
        "no resume"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(server.stats().stable_sessions, 1);
    assert_eq!(server.stats().stable_rejected, 0);
}

/// StableIO's orderly end travels in-band: over the layer a FIN is only a lost
/// link (anyone on the path can forge one), so without `__@close` the server
/// would keep the session offline until `stable_offline_timeout` (60 s here).
/// `Client::close` sends it: the session ends on the server at once; a link
/// that merely drops keeps it.
#[test]
fn a_stable_session_closed_by_its_client_ends_on_the_server_at_once() {
    let p = provider();
    let calls = Arc::new(AtomicUsize::new(0));
    let opts = Options {
        stable_offline_timeout: Duration::from_secs(60),
        ..Options::default()
    };
    let server = Server::start(secure(raw1(), &p), registry(&calls), opts, addr0()).unwrap();
    let dropped = stable_client(&p, &server);
    let closed = stable_client(&p, &server);
    assert_eq!(closed.call("echo", "x").wait().unwrap(), "x");
    assert_eq!(dropped.call("echo", "y").wait().unwrap(), "y");
    assert_eq!(server.stable_sessions(), 2);
    closed.close();
    assert!(
        wait_until(Duration::from_secs(10), || server.stable_sessions() == 1),
        "the closed session is still kept: {} sessions, {} offline",
        server.stable_sessions(),
        server.stable_offline()
    );
    assert_eq!(server.stable_offline(), 0);
    // The other session survives a dropped link (and resumes).
    dropped.drop_link();
    assert_eq!(dropped.call("echo", "z").wait().unwrap(), "z");
    assert_eq!(server.stable_sessions(), 1);
}

/// `start` over a backend without security serves nobody: a peer that
/// sends plaintext frames is disconnected before any handler runs, and
/// `connect` over a raw backend fails instead of calling in the clear.
#[test]
fn no_plaintext_service_without_a_security_layer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = Server::start(raw1(), registry(&calls), Options::default(), addr0()).unwrap();
    // A well-formed Console frame in the clear.
    let mut frame = bytes::BytesMut::new();
    zs_wire::FrameCodec::new(zs_wire::Config::default())
        .encode(
            &zs_wire::Frame::Console {
                id: 1,
                cmd: zs_wire::Text::from("echo"),
                text: zs_wire::Text::from("in the clear"),
            },
            &mut frame,
        )
        .unwrap();
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let _ = s.write_all(&frame);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    let end = Instant::now() + Duration::from_secs(10);
    // Closed (or reset) by the server; never an answer in the clear.
    if let Ok(n @ 1..) = s.read(&mut buf) {
        panic!("the server answered {n} bytes in the clear");
    }
    assert!(Instant::now() < end, "not disconnected");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let err = Client::connect(
        raw1(),
        Registry::new(),
        Options::client(),
        server.local_addr(),
    );
    assert!(
        err.is_err(),
        "a plaintext client over a raw backend connected"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
