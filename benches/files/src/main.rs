//! `cargo xtask bench files`: one file of 256 MiB (32 MiB with `--quick`)
//! uploaded and downloaded through the zs-services file service (AES-256-GCM
//! session, epoll backend, 1 MiB chunks, each with its SHA3-256, each fsynced
//! by the server before its answer; SHA3-256 of the whole file checked at the
//! end), against a raw TCP copy of the same bytes over the same loopback.
//!
//! Upload samples use a new path and different content each time (the first
//! 8 bytes carry the sample number), so dedup never turns one into an instant
//! upload; the client's hashing of the whole file is part of the sample, as
//! for a real client. Download samples fetch the file with `file.read` calls
//! of 1 MiB into memory and check its SHA3-256 at the end.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use zs_bench_harness::raw::{self, Checksum};
use zs_bench_harness::{Better, Options, Suite};
use zs_core::{Client, Registry, Server};
use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, SuiteId, ZsSecurity};
use zs_services::{Services, ServicesClient, ServicesConfig, Space};

const CHUNK: usize = 1 << 20;

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

fn backend() -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..zs_io::Config::default()
        })
        .expect("epoll"),
    )
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn upload(c: &ServicesClient, path: &str, body: &[u8]) {
    let hash = zs_crypto::hash::sha3_256(body);
    let st = c
        .upload_begin(Space::Private, path, body.len() as u64, &hash)
        .expect("begin");
    assert!(!st.instant, "a sample must send its bytes");
    let mut off = 0;
    while off < body.len() {
        let end = (off + CHUNK).min(body.len());
        off = c
            .upload_chunk(st.id, off as u64, &body[off..end])
            .expect("chunk") as usize;
    }
    c.upload_finish(st.id).expect("finish");
}

fn download(c: &ServicesClient, path: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let (d, _, _) = c
            .read_range(Space::Private, path, out.len() as u64, CHUNK as u32)
            .expect("read");
        assert!(!d.is_empty(), "short file");
        out.extend_from_slice(&d);
    }
    out
}

fn main() {
    let opts = Options::from_env();
    let size = if opts.quick { 32 << 20 } else { 256 << 20 };
    let mut suite = Suite::from_options("files", &opts, 3, 5);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = ServicesConfig::default();
    cfg.files.quota_per_user = u64::MAX;
    cfg.files.max_file_size = 1 << 40;
    let services = Services::open_dir(dir.path(), cfg).expect("services");
    services
        .accounts
        .create_user("bench", "bench-password", false)
        .expect("user");

    let (identity, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).expect("id");
    let mut ccfg = ClientConfig::pinned(identity.fingerprint());
    ccfg.suites = vec![SuiteId::Aes256Gcm];
    let provider = Arc::new(ZsSecurity::new(
        Some(Arc::new(ccfg)),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
    ));
    let mut r = Registry::new();
    services.register(&mut r);
    let server = Server::start(
        backend(),
        provider.clone(),
        r,
        zs_core::Options::default(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let client = ServicesClient::new(
        Client::connect(
            backend(),
            provider,
            Registry::new(),
            zs_core::Options::client(),
            server.local_addr(),
        )
        .expect("client"),
    );
    client.login("bench", "bench-password").expect("login");

    let body = data(size);
    let mut sum = Checksum::new();
    sum.update(&body);
    let want = (sum.len(), sum.value());
    let sink = raw::sink_server();
    let payload = zs_io::Bytes::from(body.clone());
    suite.case("raw-tcp-copy", "mb_per_s", Better::Higher, move || {
        let t0 = Instant::now();
        let got = raw::copy_to(sink, &payload).expect("raw copy");
        assert_eq!(got, want, "raw sink saw different bytes");
        mb_per_s(size, t0.elapsed().as_secs_f64())
    });

    let up = client.clone();
    let mut body_up = body.clone();
    let mut n = 0u64;
    suite.case("zs-upload", "mb_per_s", Better::Higher, move || {
        n += 1;
        body_up[..8].copy_from_slice(&n.to_le_bytes());
        let t0 = Instant::now();
        upload(&up, &format!("up-{n}"), &body_up);
        let el = t0.elapsed().as_secs_f64();
        up.delete(Space::Private, &format!("up-{n}"))
            .expect("delete");
        mb_per_s(size, el)
    });

    upload(&client, "down", &body);
    let want_hash = zs_crypto::hash::sha3_256(&body);
    let down = client.clone();
    suite.case("zs-download", "mb_per_s", Better::Higher, move || {
        let t0 = Instant::now();
        let got = download(&down, "down", size);
        let el = t0.elapsed().as_secs_f64();
        assert_eq!(
            zs_crypto::hash::sha3_256(&got),
            want_hash,
            "downloaded bytes differ"
        );
        mb_per_s(size, el)
    });

    suite.run();
    suite.ratio("upload_vs_raw", "zs-upload", "raw-tcp-copy");
    suite.ratio("download_vs_raw", "zs-download", "raw-tcp-copy");
    suite.note(format!(
        "{} MiB per sample, 1 MiB chunks sent one at a time (each SHA3-256 checked and fsynced by the server), \
         whole-file SHA3-256 on both ends inside the upload sample; download = file.read of 1 MiB in a loop, \
         hash checked outside the timing; AES-256-GCM, epoll, 1 loop per side, one process; store on the \
         temp dir's file system",
        size >> 20
    ));
    suite.finish();
    drop(server);
}
