//! The async bridge over every backend available here.
use std::time::Duration;

use zs_io::{Backend, Config};
use zs_io_tokio::{AsyncConn, AsyncListener, TokioBackend};

fn backends() -> Vec<Box<dyn Backend>> {
    vec![Box::new(
        TokioBackend::new(Config {
            loops: 2,
            ..Config::default()
        })
        .unwrap(),
    )]
}

/// Async server and async client through the seam: a 16 MiB round trip with the
/// server reading slowly at first (read pause + write back-pressure both engage),
/// then half-close ends the stream.
#[test]
fn async_echo_with_backpressure() {
    for backend in backends() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut listener = AsyncListener::bind(&*backend, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr();
        rt.block_on(async {
            let server = tokio::spawn(async move {
                let mut c = listener.accept().await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut buf = vec![0u8; 8192];
                let mut total = 0usize;
                loop {
                    let n = c.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n;
                    c.write_all(&buf[..n]).await.unwrap();
                }
                c.shutdown_write().unwrap();
                // The listener goes back to the test: dropping it here would shut down
                // the connections it accepted (seam contract) before the echo is flushed.
                (total, listener)
            });
            let c = AsyncConn::connect(&*backend, addr, Duration::from_secs(5))
                .await
                .unwrap();
            let total = 16usize << 20;
            let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
            let expect = data.clone();
            let (mut c, got) = {
                let mut c = c;
                let writer_conn = c.conn().clone();
                let writer = tokio::spawn(async move {
                    // Write through the raw handle, honouring Full like write_all does.
                    for chunk in data.chunks(64 * 1024) {
                        let mut b = zs_io::Bytes::copy_from_slice(chunk);
                        loop {
                            match writer_conn.send(b) {
                                Ok(()) => break,
                                Err(zs_io::Error::Full(back)) => {
                                    b = back;
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    writer_conn.shutdown_write().unwrap();
                });
                let mut got = Vec::with_capacity(total);
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = c.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                writer.await.unwrap();
                (c, got)
            };
            assert_eq!(got.len(), expect.len());
            assert!(got == expect);
            let (served, listener) = server.await.unwrap();
            assert_eq!(served, total);
            drop(listener);
            c.close();
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).await.unwrap(), 0);
        });
        backend.shutdown();
    }
}
