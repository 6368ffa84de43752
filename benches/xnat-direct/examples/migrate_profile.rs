//! Profiling aid (not part of the suite): one migrate stream over one QUIC stream on
//! loopback, against the bare QUIC stream, for `perf record -g`:
//! `zsbench perf record -g target/release/examples/migrate_profile 256`
//! (argument: MiB per side; prints MB/s of both).
#![forbid(unsafe_code)]

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zs_punch::migrate::{self, ConnConfig};
use zs_punch::quic::{self, Identity, QuicLimits};

async fn pair() -> (quinn::Connection, quinn::Connection, Vec<quinn::Endpoint>) {
    let (a, v) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (fa, fv) = (a.fingerprint(), v.fingerprint());
    let sa = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = sa.local_addr().unwrap();
    let sv = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let l = QuicLimits::default();
    let acc = tokio::spawn(async move { quic::accept(sa, &a, fv, l).await.unwrap() });
    let (ve, vc) = quic::connect(sv, at, &v, fa, l).await.unwrap();
    let (ae, ac) = acc.await.unwrap();
    (ac, vc, vec![ae, ve])
}

async fn bare(mib: usize) -> f64 {
    let (ac, vc, _eps) = pair().await;
    let reader = tokio::spawn(async move {
        let (_s, mut r) = ac.accept_bi().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0usize;
        while let Ok(Some(k)) = r.read(&mut buf).await {
            n += k;
        }
        n
    });
    let (mut s, _r) = vc.open_bi().await.unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let t = Instant::now();
    for _ in 0..mib * 16 {
        s.write_all(&chunk).await.unwrap();
    }
    s.finish().unwrap();
    let n = reader.await.unwrap();
    n as f64 / t.elapsed().as_secs_f64() / 1e6
}

async fn over_migrate(mib: usize) -> f64 {
    let (ac, vc, _eps) = pair().await;
    let (vs, vr) = vc.open_bi().await.unwrap();
    let (atx, arx) = tokio::sync::mpsc::channel(1);
    let (vtx, vrx) = tokio::sync::mpsc::channel(1);
    vtx.send(tokio::io::join(vr, vs)).await.unwrap();
    let (a_app, mut a_user) = tokio::io::duplex(256 * 1024);
    let (v_app, mut v_user) = tokio::io::duplex(256 * 1024);
    let cfg = ConnConfig::default();
    let tv = tokio::spawn(migrate::run(v_app, vrx, cfg));
    // The agent sees the stream once bytes flow.
    let ta = tokio::spawn(async move {
        let (s, r) = ac.accept_bi().await.unwrap();
        atx.send(tokio::io::join(r, s)).await.unwrap();
        migrate::run(a_app, arx, cfg).await
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0usize;
        loop {
            let k = a_user.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        a_user.shutdown().await.unwrap();
        n
    });
    let chunk = vec![0x5au8; 64 * 1024];
    let t = Instant::now();
    for _ in 0..mib * 16 {
        v_user.write_all(&chunk).await.unwrap();
    }
    v_user.shutdown().await.unwrap();
    let n = reader.await.unwrap();
    let rate = n as f64 / t.elapsed().as_secs_f64() / 1e6;
    let mut rest = Vec::new();
    let _ = v_user.read_to_end(&mut rest).await;
    let _ = tv.await;
    let _ = ta.await;
    assert_eq!(n, mib << 20);
    rate
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args().nth(2);
    if only.as_deref() != Some("migrate") {
        println!("bare quic stream: {:.1} MB/s", rt.block_on(bare(mib)));
    }
    if only.as_deref() != Some("bare") {
        println!(
            "migrate over quic: {:.1} MB/s",
            rt.block_on(over_migrate(mib))
        );
    }
}
