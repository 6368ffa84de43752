//! The data path: one public (or local) TCP connection <-> one secure data
//! connection, both directions at once, with half-close and an idle timeout.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::secure::{SecureRead, SecureWrite, READ_BUF};

/// How a pump ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both directions finished.
    Done,
    /// Nothing moved for the idle timeout.
    Idle,
    /// An I/O error.
    Error(io::Error),
}

/// Moves bytes until both directions end. `first` is plaintext already
/// received from the secure side. `up`/`down` count plain->secure and
/// secure->plain bytes.
pub(crate) async fn pump(
    plain: TcpStream,
    mut sr: SecureRead,
    mut sw: SecureWrite,
    first: Vec<u8>,
    idle: Option<Duration>,
    up: &[&AtomicU64],
    down: &[&AtomicU64],
) -> End {
    let _ = plain.set_nodelay(true);
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut pr, mut pw) = plain.into_split();
    let a = async {
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = pr.read(&mut buf).await?;
            if n == 0 {
                sw.shutdown().await?;
                return Ok::<(), io::Error>(());
            }
            sw.write(&buf[..n]).await?;
            touch();
            for c in up {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    };
    let b = async {
        if !first.is_empty() {
            pw.write_all(&first).await?;
            for c in down {
                c.fetch_add(first.len() as u64, Ordering::Relaxed);
            }
        }
        let mut buf = Vec::with_capacity(READ_BUF);
        while sr.read(&mut buf).await? {
            pw.write_all(&buf).await?;
            touch();
            for c in down {
                c.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }
        pw.shutdown().await?;
        Ok::<(), io::Error>(())
    };
    let watchdog = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::time::sleep(tick).await;
            let since = start.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
            if since >= idle.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(a, b) } => match r {
            Ok(_) => End::Done,
            Err(e) => End::Error(e),
        },
        _ = watchdog => End::Idle,
    }
}
