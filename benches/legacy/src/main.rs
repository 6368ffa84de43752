//! `cargo xtask bench legacy`: ZServer4D/ZNet wire compatibility, side by side in
//! one run, against the original ZNet programs (built from `shared/peers/znet`
//! by `zs_legacy::peers`; Free Pascal needed).
//!
//! Cases (plaintext profile: cipher 0, hash 0, unless named):
//! - `znet_cli->znet_serv` / `znet_cli->zs-legacy`: the original client's echo
//!   script (`--mode echo`: 32 calls, texts and DFEs of 0 B to 70 000 B), run as
//!   a process against the original server and against ours; calls per second of
//!   wall time, connect and handshake included. Ratio `legacy_server_vs_original`.
//! - the same with 8 original clients at once (`..._x8`): the servers' work is
//!   shared among 8 connections. Ratio `legacy_server_vs_original_x8`.
//! - `rust-legacy->znet_serv` / `rust-legacy->zs-legacy`: our legacy client,
//!   sequential 64-byte `echo_Console` calls on one open connection (the
//!   original client's own per-call cost left out). Ratio
//!   `legacy_server_vs_original_rust_client`; with Blowfish on the wire:
//!   `..._blowfish`.
//! - `zs->zs` (our protocol: X25519 + AES-256-GCM session, request ids) against
//!   `rust-legacy->zs-legacy` (same handler, same server process): what a client
//!   gains by upgrading. Ratio `zs_protocol_vs_legacy`.
//!
//! Every server has one event loop (ours) or its own threads (the original:
//! one per connection, Synapse backend).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_bench_harness::{Better, Options, Suite};
use zs_core::{Client, Options as ZsOptions, Registry, Server};
use zs_crypto::{ClientConfig as ZsClientConfig, ServerConfig, ServerIdentity, ZsSecurity};
use zs_legacy::{
    register_demo_commands, CipherPool, ClientConfig, LegacyClient, LegacyConfig, LegacyServer,
};

/// Calls in the original client's echo script.
const ECHO_CALLS: f64 = 32.0;

struct Serv(Child, u16);

impl Drop for Serv {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn znet_serv(dir: &Path, args: &[&str]) -> Serv {
    let mut child = Command::new(dir.join("znet_serv"))
        .args(["0", "--quiet"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("znet_serv");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let l = lines.next().expect("znet_serv output").unwrap();
        if let Some(r) = l.split("listening on 127.0.0.1:").nth(1) {
            break r.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Serv(child, port)
}

/// One event loop, default settings: our zserver-protocol server and client,
/// and our legacy clients (as `zs call`).
fn backend() -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// The legacy listener's own loop, with quick ACKs, as `zs serve --legacy-addr`
/// and the facade start it (zs_legacy::LegacyServer docs): the original client
/// writes without TCP_NODELAY.
fn legacy_backend() -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            quickack: true,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// `n` original clients at once running the echo script against `port`;
/// calls per second of wall time.
fn znet_cli_echo(dir: &Path, port: u16, n: usize) -> f64 {
    let t = Instant::now();
    let kids: Vec<Child> = (0..n)
        .map(|_| {
            Command::new(dir.join("znet_cli"))
                .args([
                    "127.0.0.1",
                    &port.to_string(),
                    "--mode",
                    "echo",
                    "--linger",
                    "0",
                    "--timeout",
                    "30000",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("znet_cli")
        })
        .collect();
    for mut k in kids {
        let st = k.wait().unwrap();
        assert!(st.success(), "znet_cli failed against port {port}");
    }
    ECHO_CALLS * n as f64 / t.elapsed().as_secs_f64()
}

/// Sequential 64-byte console calls for about `time`; calls per second.
fn seq_calls(time: Duration, mut call: impl FnMut(&str) -> String) -> f64 {
    let text: String = (0..64).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < time || n == 0 {
        assert_eq!(call(&text), text);
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// `ZS_LEGACY_SERVE=1 zs-bench-legacy`: only start our legacy server (plaintext,
/// the bench's settings), print its port and serve until killed; for profiling
/// the original client against it (`strace -f -tt znet_cli ...`).
fn serve_only() {
    let mut registry = Registry::new();
    register_demo_commands(&mut registry);
    let s = LegacyServer::start(
        legacy_backend(),
        registry,
        LegacyConfig {
            ciphers: CipherPool::Performance,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    println!("zs-legacy listening on {}", s.local_addr());
    loop {
        std::thread::park();
    }
}

fn main() {
    if std::env::var_os("ZS_LEGACY_SERVE").is_some() {
        serve_only();
    }
    let opts = Options::from_env();
    let Some(dir) = zs_legacy::peers::znet_dir() else {
        eprintln!("bench legacy: the ZNet peers cannot be built here (install fpc)");
        std::process::exit(1);
    };
    let mut suite = Suite::from_options("legacy", &opts, 3, 5);
    let slice = if opts.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };

    // Servers: the original (plaintext and Blowfish), ours (same), and our own
    // protocol sharing the registry.
    let plain = znet_serv(&dir, &["--profile", "maxperf"]);
    let blow = znet_serv(&dir, &["--cipher", "blowfish"]);
    let mut registry = Registry::new();
    register_demo_commands(&mut registry);
    let start = |pool| {
        LegacyServer::start(
            legacy_backend(),
            registry.clone(),
            LegacyConfig {
                ciphers: pool,
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap()
    };
    let ours = start(CipherPool::Performance);
    let ours_blow = start(CipherPool::Custom(vec![4]));
    let (identity, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
    let fp = identity.fingerprint();
    let provider = Arc::new(ZsSecurity::new(
        Some(Arc::new(ZsClientConfig::pinned(fp))),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
    ));
    let zs_server = Server::start(
        zs_secure::compose::secure(backend(), provider.clone()),
        registry.clone(),
        ZsOptions::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let zs_client = Client::connect(
        zs_secure::compose::secure(backend(), provider),
        Registry::new(),
        ZsOptions::client(),
        zs_server.local_addr(),
    )
    .unwrap();

    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    // The same 30 s per call the original client gets (`--timeout 30000`):
    // one call to the original server once took over 5 s at load ~16.
    let config = ClientConfig {
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let connect = |a: SocketAddr| LegacyClient::connect(backend(), a, config.clone()).unwrap();
    let c_orig = connect(addr(plain.1));
    let c_ours = connect(ours.local_addr());
    let c_orig_bf = connect(addr(blow.1));
    let c_ours_bf = connect(ours_blow.local_addr());
    assert_eq!(
        (c_orig_bf.handshake().cipher, c_ours_bf.handshake().cipher),
        (4, 4)
    );

    let (d1, p1) = (dir.clone(), plain.1);
    suite.case(
        "znet_cli->znet_serv",
        "calls_per_s",
        Better::Higher,
        move || znet_cli_echo(&d1, p1, 1),
    );
    let (d2, p2) = (dir.clone(), ours.local_addr().port());
    suite.case(
        "znet_cli->zs-legacy",
        "calls_per_s",
        Better::Higher,
        move || znet_cli_echo(&d2, p2, 1),
    );
    let (d3, p3) = (dir.clone(), plain.1);
    suite.case(
        "znet_cli->znet_serv_x8",
        "calls_per_s",
        Better::Higher,
        move || znet_cli_echo(&d3, p3, 8),
    );
    let (d4, p4) = (dir.clone(), ours.local_addr().port());
    suite.case(
        "znet_cli->zs-legacy_x8",
        "calls_per_s",
        Better::Higher,
        move || znet_cli_echo(&d4, p4, 8),
    );
    suite.case(
        "rust-legacy->znet_serv",
        "calls_per_s",
        Better::Higher,
        move || seq_calls(slice, |t| c_orig.call_console("echo_Console", t).unwrap()),
    );
    suite.case(
        "rust-legacy->zs-legacy",
        "calls_per_s",
        Better::Higher,
        move || seq_calls(slice, |t| c_ours.call_console("echo_Console", t).unwrap()),
    );
    suite.case(
        "rust-legacy->znet_serv-blowfish",
        "calls_per_s",
        Better::Higher,
        move || {
            seq_calls(slice, |t| {
                c_orig_bf.call_console("echo_Console", t).unwrap()
            })
        },
    );
    suite.case(
        "rust-legacy->zs-legacy-blowfish",
        "calls_per_s",
        Better::Higher,
        move || {
            seq_calls(slice, |t| {
                c_ours_bf.call_console("echo_Console", t).unwrap()
            })
        },
    );
    suite.case("zs->zs", "calls_per_s", Better::Higher, move || {
        seq_calls(slice, |t| zs_client.call("echo_Console", t).wait().unwrap())
    });
    suite.run();
    suite.ratio(
        "legacy_server_vs_original",
        "znet_cli->zs-legacy",
        "znet_cli->znet_serv",
    );
    suite.ratio(
        "legacy_server_vs_original_x8",
        "znet_cli->zs-legacy_x8",
        "znet_cli->znet_serv_x8",
    );
    suite.ratio(
        "legacy_server_vs_original_rust_client",
        "rust-legacy->zs-legacy",
        "rust-legacy->znet_serv",
    );
    suite.ratio(
        "legacy_server_vs_original_blowfish",
        "rust-legacy->zs-legacy-blowfish",
        "rust-legacy->znet_serv-blowfish",
    );
    suite.ratio("zs_protocol_vs_legacy", "zs->zs", "rust-legacy->zs-legacy");
    suite.note("znet_cli cases: the original client's echo script as a process (32 calls, 0-70000 B), wall time incl. start, connect, handshake");
    suite.note(
        "rust-legacy cases: our legacy client, sequential 64 B echo_Console on one open connection",
    );
    suite.note(
        "zs->zs: our protocol (AES-256-GCM session) on the same registry, default zs-io settings",
    );
    suite.note("servers: znet_serv (one thread per connection, Synapse) / zs-legacy (one epoll loop, TCP_QUICKACK as zs serve --legacy-addr sets it); same client binary, same cipher and hash on both sides (plaintext: cipher 0, hash 0; blowfish: cipher 4, hash 0), no durability involved");
    drop((plain, blow, ours, ours_blow, zs_server));
    suite.finish();
}
