//! Collecting BigStream handlers: whole bodies in memory or spilled to a
//! temporary file, the size limit, and a spilled transfer carried across
//! StableIO reconnects. On the epoll backend.
#![cfg(target_os = "linux")]

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use zs_core::{code, Client, CollectLimits, Error, Options, Reconnect, Registry, Server};
use zs_crypto::{ClientConfig, SecurityProvider, ServerConfig, ServerIdentity, ZsSecurity};
use zs_io::Backend;
use zs_wire::DataFrame;

fn provider() -> Arc<dyn SecurityProvider> {
    let rng = ring::rand::SystemRandom::new();
    let (id, _) = ServerIdentity::generate(&rng).unwrap();
    Arc::new(ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(id.fingerprint()))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(id)))),
    ))
}

fn fnv(d: &[u8]) -> u64 {
    d.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One handler run: spilled, and the temp path with whether it existed then.
type Run = (bool, Option<(PathBuf, bool)>);

struct Seen {
    calls: Mutex<Vec<Run>>,
}

fn setup(
    limits: CollectLimits,
) -> (
    Server,
    Arc<dyn Backend>,
    Arc<dyn SecurityProvider>,
    Arc<Seen>,
) {
    let seen = Arc::new(Seen {
        calls: Mutex::new(Vec::new()),
    });
    let s2 = seen.clone();
    let mut reg = Registry::new();
    reg.big_stream_collect("upload", limits, move |_, mut body| {
        let path = body.path().map(|p| (p.to_owned(), p.exists()));
        s2.calls.lock().unwrap().push((body.is_spilled(), path));
        let len = body.len();
        let hash = if body.is_spilled() {
            let mut all = Vec::new();
            body.read_to_end(&mut all).map_err(|e| e.to_string())?;
            fnv(&all)
        } else {
            let b = body.into_bytes().map_err(|_| "in memory")?;
            fnv(&b)
        };
        Ok(Some(DataFrame::new().with(len).with(hash)))
    });
    let backend: Arc<dyn Backend> = Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 2,
            ..zs_io::Config::default()
        })
        .unwrap(),
    );
    let p = provider();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(backend.clone(), p.clone(), reg, Options::default(), addr).unwrap();
    (server, backend, p, seen)
}

fn data(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>())
}

fn check(d: DataFrame, want: &Bytes) {
    let mut r = d.reader();
    assert_eq!(r.read_u64().unwrap(), want.len() as u64);
    assert_eq!(r.read_u64().unwrap(), fnv(want));
}

#[test]
fn bodies_below_and_above_the_threshold_and_over_the_limit() {
    let limits = CollectLimits {
        spill_threshold: 64 * 1024,
        max_size: 2 << 20,
        spill_dir: None,
    };
    let (server, backend, p, seen) = setup(limits);
    let c = Client::connect(
        backend,
        p,
        Registry::new(),
        Options::client(),
        server.local_addr(),
    )
    .unwrap();
    let wait = Duration::from_secs(30);

    let small = data(10_000);
    check(
        c.send_big_stream("upload", small.clone(), 0, |_, _| {})
            .wait_timeout(wait)
            .unwrap(),
        &small,
    );
    let large = data(1_500_000);
    check(
        c.send_big_stream("upload", large.clone(), 0, |_, _| {})
            .wait_timeout(wait)
            .unwrap(),
        &large,
    );
    let calls = seen.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], (false, None), "10 kB stays in memory");
    let (spilled, Some((path, existed))) = calls[1].clone() else {
        panic!("1.5 MB spills to a file: {:?}", calls[1]);
    };
    assert!(spilled && existed, "the file exists while the handler runs");
    assert!(!path.exists(), "and is gone after: {}", path.display());

    let too_big = data((2 << 20) + 1);
    match c
        .send_big_stream("upload", too_big, 0, |_, _| {})
        .wait_timeout(wait)
    {
        Err(Error::Remote { code: c, message }) => {
            assert_eq!(c, code::TOO_LARGE, "{message}")
        }
        other => panic!("expected 413, got {other:?}"),
    }
    // A resume from an offset cannot be collected whole.
    match c
        .send_big_stream("upload", small.clone(), 100, |_, _| {})
        .wait_timeout(wait)
    {
        Err(Error::Remote { code: c, .. }) => assert_eq!(c, code::BAD_REQUEST),
        other => panic!("expected 400, got {other:?}"),
    }
    // Still serving.
    check(
        c.send_big_stream("upload", small.clone(), 0, |_, _| {})
            .wait_timeout(wait)
            .unwrap(),
        &small,
    );
    assert_eq!(seen.calls.lock().unwrap().len(), 3);
}

/// A spilled transfer in a StableIO session survives its connection being
/// dropped (up to three times) mid-transfer: the file receives every byte once.
#[test]
fn a_spilled_transfer_resumes_across_reconnects() {
    let limits = CollectLimits {
        spill_threshold: 256 * 1024,
        ..CollectLimits::default()
    };
    let (server, backend, p, seen) = setup(limits);
    let opts = Options {
        reconnect: Reconnect {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(50),
            give_up: Duration::from_secs(20),
        },
        ..Options::client()
    };
    let c = Arc::new(
        Client::connect_stable(backend, p, Registry::new(), opts, server.local_addr()).unwrap(),
    );
    let big = data(6 << 20);
    let next_drop = Arc::new(AtomicU64::new(1 << 20));
    let (c2, nd) = (Arc::downgrade(&c), next_drop.clone());
    let f = c.send_big_stream("upload", big.clone(), 0, move |acked, _| {
        let at = nd.load(Ordering::SeqCst);
        if acked >= at && at < (4 << 20) {
            nd.store(at + (1 << 20) + 123, Ordering::SeqCst);
            if let Some(c) = c2.upgrade() {
                c.drop_link();
            }
        }
    });
    check(f.wait_timeout(Duration::from_secs(60)).unwrap(), &big);
    // Drops close together may hit the same connection: at least one resume.
    assert!(c.resumes() >= 1, "{} resumes", c.resumes());
    let calls = seen.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (true, Some((path, true))) = calls[0].clone() else {
        panic!("spilled: {:?}", calls[0]);
    };
    assert!(!path.exists());
}
