//! `cargo xtask bench stream`: one BigStream of 1 GiB (128 MiB with `--quick`)
//! through the whole zserver stack with AES-256-GCM sessions, against a raw TCP
//! copy of the same bytes over the same loopback.
//!
//! Both receivers see every byte: the zserver BigStream handler checks that
//! chunks arrive in order (each chunk's offset equals the bytes seen so far) and
//! feeds them to a running checksum ([`raw::Checksum`]); its answer to the last
//! chunk carries the count and the checksum, which the sender compares with the
//! checksum of what it sent. The raw sink does the same with every `read`. A
//! sample whose count or checksum differs aborts the bench.
//!
//! Layout: server and client in this process, each on its own backend with one
//! event-loop thread (`loops = 1`); the raw copy uses one blocking writer and one
//! blocking reader thread. Threads are not pinned: the scheduler spreads the
//! sender and the receiver over the 2 vCPUs (encryption and decryption run in
//! parallel, as the raw copy's two ends do).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_bench_harness::raw::{self, Checksum};
use zs_bench_harness::{Better, Options, Suite};
use zs_core::{BigChunk, Client, HandlerError, Registry, Server};
use zs_crypto::session::{ClientConfig, SuitePolicy};
use zs_crypto::{ServerConfig, ServerIdentity, SuiteId, ZsSecurity};
use zs_wire::DataFrame;

/// Pseudo-random bytes (xorshift64*), so compression or patterns cannot help.
fn data(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while v.len() + 8 <= len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    while v.len() < len {
        v.push(v.len() as u8);
    }
    v
}

/// The receiving handler: in-order check plus running checksum per connection;
/// answers `[count: u64, checksum: u64]` to the last chunk.
fn sink(peer: &zs_core::Peer, c: &BigChunk) -> Result<Option<DataFrame>, HandlerError> {
    peer.with_state(|st: &mut Checksum| {
        if c.offset == 0 {
            *st = Checksum::new();
        }
        if c.offset != st.len() {
            return Err(HandlerError::new(
                zs_core::code::BAD_REQUEST,
                format!("chunk at {} after {} bytes", c.offset, st.len()),
            ));
        }
        st.update(&c.data);
        if c.last {
            let df = DataFrame::new().with(st.len()).with(st.value());
            *st = Checksum::new();
            Ok(Some(df))
        } else {
            Ok(None)
        }
    })
}

struct ZsPair {
    client: Client,
    _server: Server,
}

/// The zs-io backend called `kind` (`epoll`, `tokio`), through the facade.
fn backend(kind: &str) -> Arc<dyn zs_io::Backend> {
    let cfg = zs_io::Config {
        loops: 1,
        ..zs_io::Config::default()
    };
    Arc::from(zserver::backend_by_name(kind, cfg).expect("backend"))
}

/// `SecureBackend(backend(kind))` with the raw backend's send queue bound.
fn secured(kind: &str, provider: Arc<dyn zs_crypto::SecurityProvider>) -> Arc<dyn zs_io::Backend> {
    Arc::new(zs_secure::SecureBackend::with_config(
        backend(kind),
        provider,
        zs_secure::SecureConfig::for_io(&zs_io::Config::default()),
    ))
}

/// A zs-core server and client over `SecureBackend(backend(kind))`.
fn zs_pair(kind: &str) -> ZsPair {
    let (identity, _seed) =
        ServerIdentity::generate(&ring::rand::SystemRandom::new()).expect("identity");
    let mut ccfg = ClientConfig::pinned(identity.fingerprint());
    ccfg.suites = vec![SuiteId::Aes256Gcm];
    let mut scfg = ServerConfig::with_identity(Arc::new(identity));
    scfg.policy = SuitePolicy {
        allowed: vec![SuiteId::Aes256Gcm],
        ..SuitePolicy::default()
    };
    let provider = Arc::new(ZsSecurity::new(Some(Arc::new(ccfg)), Some(Arc::new(scfg))));
    let mut commands = Registry::new();
    commands.big_stream("sink", sink);
    let addr = "127.0.0.1:0".parse().expect("addr");
    let server = Server::start(
        secured(kind, provider.clone()),
        commands,
        zs_core::Options::default(),
        addr,
    )
    .expect("server");
    let client = Client::connect(
        secured(kind, provider),
        Registry::new(),
        zs_core::Options::client(),
        server.local_addr(),
    )
    .expect("client");
    ZsPair {
        client,
        _server: server,
    }
}

fn gbps(bytes: usize, el: Duration) -> f64 {
    bytes as f64 / el.as_secs_f64() / 1e9
}

/// One BigStream transfer of `payload`; checks the receiver's count and checksum.
fn zs_sample(p: &ZsPair, payload: &zs_io::Bytes, want: (u64, u64)) -> f64 {
    let t0 = Instant::now();
    let df = p
        .client
        .send_big_stream("sink", payload.clone(), 0, |_, _| {})
        .wait()
        .expect("big stream");
    let el = t0.elapsed();
    let mut r = df.reader();
    let got = (
        r.read_u64().expect("count"),
        r.read_u64().expect("checksum"),
    );
    assert_eq!(got, want, "receiver saw different bytes");
    gbps(payload.len(), el)
}

fn main() {
    // Profiling aid: `ZS_STREAM_ONLY=zs-epoll-bigstream` runs only the
    // named cases (comma-separated).
    let opts = Options::from_env();
    let size = if opts.quick { 128 << 20 } else { 1 << 30 };
    let mut suite = Suite::from_options("stream", &opts, 3, 5);

    let bytes = data(size);
    let mut sum = Checksum::new();
    sum.update(&bytes);
    let want = (sum.len(), sum.value());
    let payload = zs_io::Bytes::from(bytes);

    let sink_addr = raw::sink_server();
    let p = payload.clone();
    suite.case_selected(
        "ZS_STREAM_ONLY",
        "raw-tcp-copy",
        "gb_per_s",
        Better::Higher,
        move || {
            let t0 = Instant::now();
            let got = raw::copy_to(sink_addr, &p).expect("raw copy");
            let el = t0.elapsed();
            assert_eq!(got, want, "raw sink saw different bytes");
            gbps(p.len(), el)
        },
    );
    #[cfg(target_os = "linux")]
    {
        let pair = zs_pair("epoll");
        let p = payload.clone();
        suite.case_selected(
            "ZS_STREAM_ONLY",
            "zs-epoll-bigstream",
            "gb_per_s",
            Better::Higher,
            move || zs_sample(&pair, &p, want),
        );
    }
    let pair = zs_pair("tokio");
    let p = payload.clone();
    suite.case_selected(
        "ZS_STREAM_ONLY",
        "zs-tokio-bigstream",
        "gb_per_s",
        Better::Higher,
        move || zs_sample(&pair, &p, want),
    );

    suite.run();
    suite.ratio("stream_vs_raw", "zs-epoll-bigstream", "raw-tcp-copy");
    suite.ratio("tokio_stream_vs_raw", "zs-tokio-bigstream", "raw-tcp-copy");
    let cfg = zs_core::SessionConfig::default();
    suite.note(format!(
        "{} MiB per sample, AES-256-GCM, BigStream chunk {} KiB, window {} MiB (defaults); receiver checks order, \
         count and checksum of every byte (raw sink too); server and client 1 loop thread each, same process, \
         threads not pinned (2 vCPUs); the AES-256-GCM records in zs_secure::SecureBackend under zs-core",
        size >> 20,
        cfg.big_chunk >> 10,
        cfg.big_window >> 20
    ));
    suite.finish();
}
