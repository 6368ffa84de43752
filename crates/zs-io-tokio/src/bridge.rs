//! The async bridge: any `dyn Backend` used from `async` code.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use zs_io::{Backend, Bytes, BytesMut, CloseReason, Conn, Error, Handler, Listener};

/// Unread bytes buffered per connection before the bridge pauses reading.
const READ_LIMIT: usize = 256 * 1024;

enum Msg {
    Data(Bytes),
    Eof,
    Closed(CloseReason),
}

/// Channel ends shared by the handler and the [`AsyncConn`].
struct Pipe {
    tx: mpsc::UnboundedSender<Msg>,
    unread: Arc<AtomicUsize>,
    writable: Arc<Notify>,
}

struct BridgeHandler {
    pipe: Pipe,
    opened: Option<oneshot::Sender<Result<Conn, Error>>>,
    accepted: Option<mpsc::UnboundedSender<(Conn, AsyncParts)>>,
    parts: Option<AsyncParts>,
}

/// The receiving half handed to the [`AsyncConn`] when the connection opens.
struct AsyncParts {
    rx: mpsc::UnboundedReceiver<Msg>,
    unread: Arc<AtomicUsize>,
    writable: Arc<Notify>,
}

fn new_bridge() -> (Pipe, AsyncParts) {
    let (tx, rx) = mpsc::unbounded_channel();
    let unread = Arc::new(AtomicUsize::new(0));
    let writable = Arc::new(Notify::new());
    (
        Pipe {
            tx,
            unread: unread.clone(),
            writable: writable.clone(),
        },
        AsyncParts {
            rx,
            unread,
            writable,
        },
    )
}

impl Handler for BridgeHandler {
    fn on_open(&mut self, conn: &Conn) {
        if let Some(tx) = self.opened.take() {
            let _ = tx.send(Ok(conn.clone()));
        }
        if let (Some(tx), Some(parts)) = (self.accepted.take(), self.parts.take()) {
            let _ = tx.send((conn.clone(), parts));
        }
    }
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        let b = data.split().freeze();
        let unread = self.pipe.unread.fetch_add(b.len(), Ordering::AcqRel) + b.len();
        // The channel is unbounded in messages but bounded in bytes: past the limit
        // the connection stops reading until the async side catches up.
        if unread > READ_LIMIT {
            conn.set_read_paused(true);
        }
        let _ = self.pipe.tx.send(Msg::Data(b));
    }
    fn on_eof(&mut self, _conn: &Conn) {
        let _ = self.pipe.tx.send(Msg::Eof);
    }
    fn on_writable(&mut self, _conn: &Conn) {
        self.pipe.writable.notify_waiters();
    }
    fn on_close(&mut self, _conn: &Conn, reason: CloseReason) {
        let _ = self.pipe.tx.send(Msg::Closed(reason));
        self.pipe.writable.notify_waiters();
    }
    fn on_connect_failed(&mut self, error: Error) {
        if let Some(tx) = self.opened.take() {
            let _ = tx.send(Err(error));
        }
    }
}

/// An async view of one seam connection: `read`, `write_all`, half-close, close.
/// Back-pressure: `write_all` waits for `on_writable` when the send queue is full;
/// more than 256 KiB unread pauses the connection's reading until `read` catches up.
pub struct AsyncConn {
    conn: Conn,
    rx: mpsc::UnboundedReceiver<Msg>,
    unread: Arc<AtomicUsize>,
    writable: Arc<Notify>,
    current: Bytes,
    pending: VecDeque<Msg>,
    ended: Option<io::Result<()>>,
}

impl std::fmt::Debug for AsyncConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncConn")
            .field("id", &self.conn.id())
            .finish()
    }
}

impl AsyncConn {
    fn from_parts(conn: Conn, parts: AsyncParts) -> AsyncConn {
        AsyncConn {
            conn,
            rx: parts.rx,
            unread: parts.unread,
            writable: parts.writable,
            current: Bytes::new(),
            pending: VecDeque::new(),
            ended: None,
        }
    }

    /// Connects through `backend` (any backend) and waits for the connection.
    pub async fn connect(
        backend: &dyn Backend,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<AsyncConn, Error> {
        let (pipe, parts) = new_bridge();
        let (otx, orx) = oneshot::channel();
        let h = BridgeHandler {
            pipe,
            opened: Some(otx),
            accepted: None,
            parts: None,
        };
        backend.connect(addr, timeout, Box::new(h))?;
        let conn = orx.await.map_err(|_| Error::ShutDown)??;
        Ok(AsyncConn::from_parts(conn, parts))
    }

    /// The underlying seam handle.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Reads into `buf`; `Ok(0)` at end of stream (peer FIN or graceful close).
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                buf[..n].copy_from_slice(&self.current.split_to(n));
                let before = self.unread.fetch_sub(n, Ordering::AcqRel);
                if before.saturating_sub(n) <= READ_LIMIT / 2 {
                    // Idempotent: lifts a pause set by `on_data` after a burst.
                    self.conn.set_read_paused(false);
                }
                return Ok(n);
            }
            if let Some(end) = &self.ended {
                return match end {
                    Ok(()) => Ok(0),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
            }
            let msg = match self.pending.pop_front() {
                Some(m) => m,
                None => match self.rx.recv().await {
                    Some(m) => m,
                    None => Msg::Closed(CloseReason::Shutdown),
                },
            };
            match msg {
                Msg::Data(b) => self.current = b,
                Msg::Eof => self.ended = Some(Ok(())),
                Msg::Closed(CloseReason::Reset) => {
                    self.ended = Some(Err(io::ErrorKind::ConnectionReset.into()));
                }
                Msg::Closed(_) => self.ended = Some(Ok(())),
            }
        }
    }

    /// Reads exactly `buf.len()` bytes (`UnexpectedEof` if the stream ends first).
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            let n = self.read(&mut buf[off..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            off += n;
        }
        Ok(())
    }

    /// Sends all of `data`, waiting while the send queue is full.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.send(Bytes::copy_from_slice(data)).await
    }

    /// Sends `data` without copying, waiting while the send queue is full.
    pub async fn send(&mut self, mut data: Bytes) -> io::Result<()> {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.conn.send(data) {
                Ok(()) => return Ok(()),
                Err(Error::Full(back)) => {
                    data = back;
                    // on_writable (or on_close) wakes us; the timeout only re-checks.
                    let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Half-close: FIN after the queued bytes; reading continues.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.conn.shutdown_write().map_err(Into::into)
    }

    /// Graceful close.
    pub fn close(&self) {
        self.conn.close();
    }
}

impl Drop for AsyncConn {
    fn drop(&mut self) {
        self.conn.close();
    }
}

/// Accepts connections from any backend as [`AsyncConn`]s.
pub struct AsyncListener {
    listener: Box<dyn Listener>,
    rx: mpsc::UnboundedReceiver<(Conn, AsyncParts)>,
}

impl std::fmt::Debug for AsyncListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncListener")
            .field("addr", &self.listener.local_addr())
            .finish()
    }
}

impl AsyncListener {
    /// Listens on `addr` through `backend`.
    pub fn bind(backend: &dyn Backend, addr: SocketAddr) -> Result<AsyncListener, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let tx = Mutex::new(tx);
        let listener = backend.listen(
            addr,
            Arc::new(move || {
                let (pipe, parts) = new_bridge();
                Box::new(BridgeHandler {
                    pipe,
                    opened: None,
                    accepted: Some(tx.lock().unwrap_or_else(|p| p.into_inner()).clone()),
                    parts: Some(parts),
                }) as Box<dyn Handler>
            }),
        )?;
        Ok(AsyncListener { listener, rx })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The next accepted connection; `None` when no more can arrive (the backend
    /// dropped the listener's handler factory).
    pub async fn accept(&mut self) -> Option<AsyncConn> {
        let (conn, parts) = self.rx.recv().await?;
        Some(AsyncConn::from_parts(conn, parts))
    }
}
