//! The yamux baseline: two `yamux::Connection`s over one loopback TCP connection
//! on a two-worker tokio runtime, each driven by its own task; streams are opened
//! through the client's driver task, inbound streams handed to a callback.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::TokioAsyncReadCompatExt;

type Opener = mpsc::UnboundedSender<oneshot::Sender<yamux::Stream>>;

/// Drives one connection: opens outbound streams on request, hands inbound ones
/// to `inbound`, until the connection ends.
async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut opens: mpsc::UnboundedReceiver<oneshot::Sender<yamux::Stream>>,
    inbound: mpsc::UnboundedSender<yamux::Stream>,
) where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut waiting: VecDeque<oneshot::Sender<yamux::Stream>> = VecDeque::new();
    futures::future::poll_fn(|cx| loop {
        while let Poll::Ready(Some(tx)) = opens.poll_recv(cx) {
            waiting.push_back(tx);
        }
        while !waiting.is_empty() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(s)) => {
                    if let Some(tx) = waiting.pop_front() {
                        let _ = tx.send(s);
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        match conn.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(s))) => {
                let _ = inbound.send(s);
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

fn config(max_streams: usize) -> yamux::Config {
    // yamux requires the connection window to cover 256 KiB per allowed stream;
    // the default (1 GiB) only allows 4,096 streams.
    let mut c = yamux::Config::default();
    c.set_max_connection_receive_window(Some(256 * 1024 * max_streams.max(4096)));
    c.set_max_num_streams(max_streams);
    c
}

/// A yamux client/server pair; the server's inbound streams go to a channel.
struct Link {
    open: Opener,
    inbound: Option<mpsc::UnboundedReceiver<yamux::Stream>>,
}

async fn link(max_streams: usize) -> Link {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (server, _) = l.accept().await.expect("accept");
    client.set_nodelay(true).expect("nodelay");
    server.set_nodelay(true).expect("nodelay");
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (_srv_open, srv_opens) = mpsc::unbounded_channel();
    tokio::spawn(drive(
        yamux::Connection::new(server.compat(), config(max_streams), yamux::Mode::Server),
        srv_opens,
        in_tx,
    ));
    let (open, opens) = mpsc::unbounded_channel();
    let (cl_in, _cl_in_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _keep = _cl_in_rx;
        drive(
            yamux::Connection::new(client.compat(), config(max_streams), yamux::Mode::Client),
            opens,
            cl_in,
        )
        .await
    });
    // Keep the server's opener alive as long as the task runs.
    std::mem::forget(_srv_open);
    Link {
        open,
        inbound: Some(in_rx),
    }
}

async fn open(opener: &Opener) -> yamux::Stream {
    let (tx, rx) = oneshot::channel();
    opener.send(tx).expect("driver alive");
    rx.await.expect("stream opened")
}

/// The persistent fixtures of the throughput and messages cases.
pub struct Bench {
    rt: tokio::runtime::Runtime,
    sink: Opener,
    count: Opener,
    counter: Arc<AtomicU64>,
}

impl Bench {
    pub fn new() -> Bench {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let counter = Arc::new(AtomicU64::new(0));
        let c2 = counter.clone();
        let (sink, count) = rt.block_on(async move {
            // Sink: reads a stream to its end, answers the byte count.
            let mut s = link(4096).await;
            let mut inbound = s.inbound.take().expect("inbound");
            tokio::spawn(async move {
                while let Some(mut st) = inbound.recv().await {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut n = 0u64;
                        loop {
                            match st.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(k) => n += k as u64,
                            }
                        }
                        let _ = st.write_all(&n.to_le_bytes()).await;
                        let _ = st.close().await;
                    });
                }
            });
            // Counter: reads every stream, adds the bytes to a shared counter.
            let mut c = link(4096).await;
            let mut inbound = c.inbound.take().expect("inbound");
            tokio::spawn(async move {
                while let Some(mut st) = inbound.recv().await {
                    let c3 = c2.clone();
                    tokio::spawn(async move {
                        // yamux acknowledges an inbound stream with its first
                        // outgoing frame; at most 256 may wait unacknowledged.
                        let _ = st.write_all(b"y").await;
                        // The client's hello (not counted).
                        let mut hello = [0u8; 1];
                        if st.read_exact(&mut hello).await.is_err() {
                            return;
                        }
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            match st.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(k) => {
                                    c3.fetch_add(k as u64, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
            });
            (s.open, c.open)
        });
        Bench {
            rt,
            sink,
            count,
            counter,
        }
    }

    /// One stream: `data` in 256 KiB writes, close, wait for the count. GB/s.
    pub fn throughput(&self, data: &[u8]) -> f64 {
        self.rt.block_on(async {
            let t0 = Instant::now();
            let mut st = open(&self.sink).await;
            for c in data.chunks(256 * 1024) {
                st.write_all(c).await.expect("write");
            }
            st.close().await.expect("close");
            let mut n = [0u8; 8];
            st.read_exact(&mut n).await.expect("answer");
            let secs = t0.elapsed().as_secs_f64();
            assert_eq!(u64::from_le_bytes(n), data.len() as u64, "short transfer");
            data.len() as f64 / secs / 1e9
        })
    }

    /// `streams` streams, each writing `per_stream` messages of `size` bytes
    /// (one `write_all` each). Messages per second.
    pub fn msgs(&self, streams: usize, per_stream: usize, size: usize) -> f64 {
        self.rt.block_on(async {
            let mut all = Vec::with_capacity(streams);
            for _ in 0..streams {
                // yamux opens lazily (the SYN rides on the first frame): a one-byte
                // hello makes the far end see the stream and acknowledge it.
                let mut st = open(&self.count).await;
                st.write_all(b"h").await.expect("hello");
                all.push(st);
            }
            if std::env::var_os("ZS_P2PVM_BENCH_TRACE").is_some() {
                eprintln!("yamux: {streams} streams open");
            }
            self.counter.store(0, Ordering::Relaxed);
            let total = (streams * per_stream * size) as u64;
            let t0 = Instant::now();
            let mut tasks = Vec::with_capacity(streams);
            for mut st in all {
                tasks.push(tokio::spawn(async move {
                    let msg = vec![0x5au8; size];
                    for _ in 0..per_stream {
                        st.write_all(&msg).await.expect("write");
                    }
                    st.flush().await.expect("flush");
                    st
                }));
            }
            while self.counter.load(Ordering::Relaxed) < total {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "yamux messages stalled at {} of {total} bytes",
                    self.counter.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let secs = t0.elapsed().as_secs_f64();
            for t in tasks {
                if let Ok(mut st) = t.await {
                    let _ = st.close().await;
                }
            }
            (streams * per_stream) as f64 / secs
        })
    }
}

/// Child process: opens `n` yamux streams over one link (each sends one byte so
/// the far end surely has it, and the far end answers one byte, which is
/// yamux's acknowledgement of the stream); prints `RESULT <secs> <bytes each>`.
pub fn child_open(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut l = link(n + 16).await;
        let mut inbound = l.inbound.take().expect("inbound");
        let (done_tx, done_rx) = oneshot::channel();
        // The far end keeps every stream object (no task each).
        tokio::spawn(async move {
            let mut kept = Vec::with_capacity(n);
            while let Some(mut st) = inbound.recv().await {
                // The acknowledgement (first outgoing frame): yamux lets at most 256
                // streams wait unacknowledged.
                let _ = st.write_all(b"y").await;
                kept.push(st);
                if kept.len() == n {
                    let _ = done_tx.send(());
                    break;
                }
            }
            std::future::pending::<()>().await;
            drop(kept);
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss0 = zs_bench_harness::raw::rss_bytes();
        let t0 = Instant::now();
        let mut mine = Vec::with_capacity(n);
        for _ in 0..n {
            let mut st = open(&l.open).await;
            st.write_all(b"x").await.expect("hello");
            mine.push(st);
        }
        tokio::time::timeout(Duration::from_secs(300), done_rx)
            .await
            .expect("all streams seen")
            .expect("done");
        let secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss1 = zs_bench_harness::raw::rss_bytes();
        println!(
            "RESULT {secs} {}",
            rss1.saturating_sub(rss0) as f64 / n as f64
        );
        std::process::exit(0);
    });
}
