//! Feature `xnat`: a relay and an agent from TOML through the facade, the
//! agent's mapping ending in an in-process server built with `ServerBuilder`
//! on the agent's virtual backend, called by a `ClientBuilder` client through
//! the relay's public port.
#![cfg(all(feature = "xnat", feature = "core", feature = "io-tokio"))]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zserver::{xnat_agent_in_process, xnat_from_toml, ClientBuilder, ServerBuilder};

#[test]
fn an_in_process_server_behind_an_agent_answers_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = xnat_from_toml(
        &format!(
            r#"
            [server]
            bind_addr = "127.0.0.1:{port}"
            [server.services.app]
            token = "use_a_secret"
            bind_addr = "127.0.0.1:0"
            "#
        ),
        dir.path(),
    )
    .unwrap()
    .pop()
    .unwrap();
    let relay_fp = relay.fingerprint().unwrap();

    let backend = zserver::XnatVirtualBackend::new();
    let at: SocketAddr = "10.255.0.1:7".parse().unwrap();
    let server = ServerBuilder::new()
        .addr(at)
        .backend(Arc::new(backend.clone()))
        .commands(|r| {
            r.console("hello", |_, text| Ok(format!("hello {text}")));
        })
        .start()
        .unwrap();
    let agent = xnat_agent_in_process(
        &format!(
            r#"
            [client]
            remote_addr = "127.0.0.1:{port}"
            relay_fingerprint = "{relay_fp}"
            [client.services.app]
            token = "use_a_secret"
            local_addr = "in-process"
            "#
        ),
        dir.path(),
        &[("app", backend, at)],
    )
    .unwrap();
    assert_eq!(agent.role(), "agent");
    let t = Instant::now();
    let public = loop {
        if let Some(a) = relay.public_addr("app") {
            break a;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never served");
        std::thread::sleep(Duration::from_millis(20));
    };
    let client = ClientBuilder::new(public)
        .fingerprint(server.fingerprint().unwrap())
        .connect()
        .unwrap();
    let rt = tokio_free_block_on(client.call("hello", "world"));
    assert_eq!(rt.unwrap(), "hello world");
    assert_eq!(relay.mapping_stats()["app"]["connections"], 1);
    assert!(agent.mapping_stats().is_empty());
    // A name the TOML does not define is refused with the key.
    let e = xnat_agent_in_process(
        &format!(
            "[client]\nremote_addr = \"127.0.0.1:{port}\"\nrelay_fingerprint = \"{relay_fp}\"\n"
        ),
        dir.path(),
        &[("nope", zserver::XnatVirtualBackend::new(), at)],
    )
    .err()
    .unwrap();
    assert!(e.contains("client.services.nope"), "{e}");
}

/// Polls a future on this thread (the facade's client futures need no runtime).
fn tokio_free_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct T(std::thread::Thread);
    impl Wake for T {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(T(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < end, "call timed out");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}
