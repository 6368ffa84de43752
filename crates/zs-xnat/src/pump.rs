//! The data path: one public (or local) TCP connection <-> one secure data
//! connection, both directions at once, with half-close and an idle timeout.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::PlainCopy;
use crate::secure::{SecureRead, SecureWrite, READ_BUF, READ_MIN};

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

/// The activity of one carried connection, shared by its two directions: the
/// last time a byte moved (for the idle timeout) and the byte counters.
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds after `start` of the last move.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// `n` bytes moved one way: the idle clock restarts and `counters` grow.
    fn moved(&self, n: usize, counters: &[&AtomicU64]) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Resolves once nothing moved for `idle` (never with `None`).
    async fn idle(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::time::sleep(tick).await;
            let now = self.start.elapsed().as_millis() as u64;
            if now.saturating_sub(self.last.load(Ordering::Relaxed)) >= idle.as_millis() as u64 {
                return;
            }
        }
    }

    /// Runs both directions (`both`: they each half-close their far side when
    /// their source ends) against the idle timeout.
    async fn supervise(
        &self,
        both: impl std::future::Future<Output = io::Result<()>>,
        idle: Option<Duration>,
    ) -> End {
        tokio::select! {
            r = both => match r {
                Ok(()) => End::Done,
                Err(e) => End::Error(e),
            },
            _ = self.idle(idle) => End::Idle,
        }
    }
}

/// Moves bytes until both directions end. `first` is plaintext already
/// received from the secure side. `up`/`down` count plain->secure and
/// secure->plain bytes.
pub(crate) async fn pump(
    plain: TcpStream,
    sr: &mut SecureRead,
    sw: &mut SecureWrite,
    first: Vec<u8>,
    idle: Option<Duration>,
    up: &[&AtomicU64],
    down: &[&AtomicU64],
) -> End {
    let _ = plain.set_nodelay(true);
    let act = Activity::new();
    let (mut pr, mut pw) = plain.into_split();
    let a = async {
        // Reads start at READ_MIN and double while they fill (to READ_BUF).
        let mut cap = READ_MIN;
        loop {
            let n = sw.carry_from(&mut pr, cap).await?;
            if n == 0 {
                return sw.shutdown().await;
            }
            if n == cap {
                cap = (cap * 2).min(READ_BUF);
            }
            act.moved(n, up);
        }
    };
    let b = async {
        if !first.is_empty() {
            pw.write_all(&first).await?;
            act.moved(first.len(), down);
        }
        while let Some(parts) = sr.read_parts().await? {
            let n = parts.len();
            write_all_vectored(&mut pw, parts.slices()).await?;
            act.moved(n, down);
        }
        pw.shutdown().await
    };
    act.supervise(async { tokio::try_join!(a, b).map(|_| ()) }, idle)
        .await
}

/// Writes every slice of `slices` in order with as few `writev` calls as the
/// socket allows (up to 16 slices per call; no allocation).
async fn write_all_vectored<'a, W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    slices: impl Iterator<Item = &'a [u8]>,
) -> io::Result<()> {
    const MAX: usize = 16;
    let mut pending: [&[u8]; MAX] = [&[]; MAX];
    let (mut head, mut len) = (0usize, 0usize);
    let mut it = slices.filter(|s| !s.is_empty());
    loop {
        if head > 0 {
            pending.copy_within(head..head + len, 0);
            head = 0;
        }
        while len < MAX {
            match it.next() {
                Some(s) => {
                    pending[len] = s;
                    len += 1;
                }
                None => break,
            }
        }
        if len == 0 {
            return Ok(());
        }
        let mut iov = [io::IoSlice::new(&[]); MAX];
        for (v, s) in iov.iter_mut().zip(&pending[..len]) {
            *v = io::IoSlice::new(s);
        }
        let mut n = w.write_vectored(&iov[..len]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let first = pending[head];
            if n >= first.len() {
                n -= first.len();
                head += 1;
                len -= 1;
            } else {
                pending[head] = &first[n..];
                n = 0;
            }
        }
    }
}

/// Logs, loudly, that `role` runs plaintext data connections.
pub(crate) fn warn_if_plaintext(role: &str, e: crate::config::DataEncryption) {
    if e == crate::config::DataEncryption::None {
        tracing::warn!(
            role,
            "xnat {role}: [*.transport] encryption = \"none\": DATA CONNECTIONS CARRY PLAINTEXT \
             (control and tickets stay encrypted); use only on a trusted network"
        );
    }
}

/// Which end of a data connection runs [`carry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The relay: it sent `Start` and waits for the agent's confirmation.
    Relay,
    /// The agent: it received `Start` and confirms first.
    Agent,
}

/// The 8 bytes each side sends in clear after `Start` on a plaintext data
/// connection (`encryption = "none"`; PROTOCOL.md Part 5): the agent first,
/// then the relay once it has read the agent's. Neither forwards a byte before
/// reading the other's, so a side whose peer still runs the encrypted data
/// path fails with a clear error instead of passing records to a service.
pub(crate) const PLAIN_CONFIRM: [u8; 8] = *b"ZSXPLAIN";

/// How a data connection carries one public connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// After `Start`: raw bytes through the session (or in plaintext with
    /// `encryption = "none"`); the connection ends with the public one.
    Raw,
    /// After `StartFramed`: chunks through the session, each direction ended
    /// by its end chunk; the connection can carry the next public one.
    Framed,
}

/// Carries one public (or local) connection over the data connection `conn`
/// (after `Start`): through the secure session by default, or, with
/// `encryption = "none"`, in plaintext after the [`PLAIN_CONFIRM`] exchange
/// (Linux: `splice(2)` through a pipe, no copy through user space).
/// [`Mode::Framed`] (after `StartFramed`, encrypted only): the data
/// connection is returned when both directions ended with their end chunks.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn carry(
    side: Side,
    mode: Mode,
    encryption: crate::config::DataEncryption,
    copy: PlainCopy,
    plain: TcpStream,
    conn: crate::secure::SecureConn,
    confirm_timeout: Duration,
    idle: Option<Duration>,
    up: &[&AtomicU64],
    down: &[&AtomicU64],
) -> (End, Option<crate::secure::SecureConn>) {
    if mode == Mode::Framed {
        let (mut sr, mut sw) = conn.split_framed();
        let end = pump(plain, &mut sr, &mut sw, Vec::new(), idle, up, down).await;
        let back = match end {
            End::Done => crate::secure::SecureConn::rejoin(sr, sw),
            _ => None,
        };
        return (end, back);
    }
    if encryption == crate::config::DataEncryption::Session {
        let (mut sr, mut sw, rest) = conn.split();
        return (
            pump(plain, &mut sr, &mut sw, rest, idle, up, down).await,
            None,
        );
    }
    (
        carry_plain(side, plain, conn, copy, confirm_timeout, idle, up, down).await,
        None,
    )
}

/// [`carry`] with `encryption = "none"`.
#[allow(clippy::too_many_arguments)]
async fn carry_plain(
    side: Side,
    plain: TcpStream,
    conn: crate::secure::SecureConn,
    copy: PlainCopy,
    confirm_timeout: Duration,
    idle: Option<Duration>,
    up: &[&AtomicU64],
    down: &[&AtomicU64],
) -> End {
    let (mut tunnel, rest) = match conn.into_plain() {
        Ok(x) => x,
        Err(e) => return End::Error(e),
    };
    if !rest.is_empty() {
        return End::Error(io::Error::new(
            io::ErrorKind::InvalidData,
            "bytes after Start on a plaintext data connection",
        ));
    }
    let _ = tunnel.set_nodelay(true);
    let confirm = async {
        let mut got = [0u8; PLAIN_CONFIRM.len()];
        if side == Side::Agent {
            tunnel.write_all(&PLAIN_CONFIRM).await?;
        }
        tunnel.read_exact(&mut got).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                "the peer closed before confirming a plaintext data connection: \
                 it runs encrypted data connections (set [*.transport] encryption \
                 the same on relay and agent)",
            )
        })?;
        if got != PLAIN_CONFIRM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent encrypted records where a plaintext confirmation was \
                 expected: set [*.transport] encryption the same on relay and agent",
            ));
        }
        if side == Side::Relay {
            tunnel.write_all(&PLAIN_CONFIRM).await?;
        }
        Ok::<(), io::Error>(())
    };
    match tokio::time::timeout(confirm_timeout, confirm).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return End::Error(e),
        Err(_) => {
            return End::Error(io::Error::new(
                io::ErrorKind::TimedOut,
                "no plaintext confirmation from the peer in time: does it run \
                 [*.transport] encryption = \"none\" too?",
            ))
        }
    }
    plain_pump(plain, tunnel, copy, idle, up, down).await
}

/// Plaintext both ways between two TCP streams, with half-close, the idle
/// timeout and the byte counters (`up`: `a` -> `b`), moved as `copy` says.
pub(crate) async fn plain_pump(
    a: TcpStream,
    b: TcpStream,
    copy: PlainCopy,
    idle: Option<Duration>,
    up: &[&AtomicU64],
    down: &[&AtomicU64],
) -> End {
    let _ = a.set_nodelay(true);
    let act = Activity::new();
    let both = async {
        tokio::try_join!(
            plain::copy(&a, &b, copy, up, &act),
            plain::copy(&b, &a, copy, down, &act)
        )
        .map(|_| ())
    };
    act.supervise(both, idle).await
}

/// One direction of the plaintext path: Linux moves pages socket -> pipe ->
/// socket with `splice(2)` (rustix's safe wrapper); elsewhere a user-space
/// copy through one reused buffer. Both use tokio's readiness (`try_io`), so
/// neither blocks a runtime thread.
mod plain {
    use std::io;
    use std::sync::atomic::AtomicU64;

    #[cfg(target_os = "linux")]
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{Activity, PlainCopy};

    /// Bytes moved per splice call (the pipe's capacity).
    #[cfg(target_os = "linux")]
    pub(super) const CHUNK: usize = 256 * 1024;

    fn shutdown_write(s: &TcpStream) -> io::Result<()> {
        // tokio's `shutdown` needs `&mut`; the socket itself is shared by the
        // two directions, so go through the std socket API on a borrowed fd.
        socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write)
    }

    /// One direction, as `mode` says: `splice(2)` on Linux unless
    /// `"buffered"`, the buffered copy otherwise. Half-closes `to` when
    /// `from` ends.
    pub(super) async fn copy(
        from: &TcpStream,
        to: &TcpStream,
        mode: PlainCopy,
        counters: &[&AtomicU64],
        act: &Activity,
    ) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if mode == PlainCopy::Splice {
            splice_copy(from, to, counters, act).await?;
            return shutdown_write(to);
        }
        let _ = mode;
        buffered_copy(from, to, counters, act).await?;
        shutdown_write(to)
    }

    /// Linux: socket -> pipe -> socket, the pages never enter user space.
    #[cfg(target_os = "linux")]
    async fn splice_copy(
        from: &TcpStream,
        to: &TcpStream,
        counters: &[&AtomicU64],
        act: &Activity,
    ) -> io::Result<()> {
        use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
        let (pr, pw) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // A larger pipe moves more per call; the default (64 KiB) still works.
        let cap = rustix::pipe::fcntl_setpipe_size(&pw, CHUNK).unwrap_or(64 * 1024);
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        loop {
            let n = loop {
                from.readable().await?;
                match from.try_io(Interest::READABLE, || {
                    splice(from, None, &pw, None, cap, flags).map_err(io::Error::from)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return Ok(());
            }
            let mut left = n;
            while left > 0 {
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || {
                    splice(&pr, None, to, None, left, flags).map_err(io::Error::from)
                }) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            act.moved(n, counters);
        }
    }

    /// Other systems (and `plain_copy = "buffered"`): one reused buffer.
    async fn buffered_copy(
        from: &TcpStream,
        to: &TcpStream,
        counters: &[&AtomicU64],
        act: &Activity,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; crate::secure::READ_MIN];
        loop {
            let n = loop {
                from.readable().await?;
                match from.try_read(&mut buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return Ok(());
            }
            let mut at = 0;
            let full = n == buf.len();
            while at < n {
                to.writable().await?;
                match to.try_write(&buf[at..n]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => at += m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            act.moved(n, counters);
            if full {
                crate::secure::grow(&mut buf, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The plaintext data path (`encryption = "none"`): splice and buffered
    //! copies byte-exact with half-close, the idle timeout, the confirmation
    //! exchange (a mismatched relay/agent pair fails every connection and
    //! forwards nothing), the config key, and relay + agent end to end.
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream as StdStream};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use zs_crypto::session::ServerIdentity;

    use super::*;
    use crate::config::{Config, DataEncryption};
    use crate::itest::{
        agent_cfg, counting_echo_server, echo_exact, relay_cfg, start_agent, start_relay,
        wait_until, Side,
    };
    use crate::{Agent, Relay};

    /// A connected pair of tokio TCP streams on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap());
        let (a, b) = tokio::join!(a, l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n as u32).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// client <-> [x | y] <-> server, where [x|y] is `plain_pump` with
    /// splice and with the buffered copy: what the client writes comes out at
    /// the server byte for byte, and back, with half-close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_pump_moves_exact_bytes_both_ways_with_half_close() {
        for copy in [PlainCopy::Splice, PlainCopy::Buffered] {
            let (mut client, x) = pair().await;
            let (y, mut server) = pair().await;
            let up = AtomicU64::new(0);
            let down = AtomicU64::new(0);
            let data = pattern(3_000_000);
            let d2 = data.clone();
            let far = async move {
                // The server echoes everything, then closes its side.
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                server.write_all(&got).await.unwrap();
                server.shutdown().await.unwrap();
                got
            };
            let near = async move {
                let (mut r, mut w) = client.split();
                let send = async {
                    w.write_all(&d2).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut back = Vec::new();
                let recv = r.read_to_end(&mut back);
                let (_, n) = tokio::join!(send, recv);
                n.unwrap();
                back
            };
            let (u, d) = ([&up], [&down]);
            let mid = plain_pump(x, y, copy, Some(Duration::from_secs(30)), &u, &d);
            let (at_server, back, end) = tokio::join!(far, near, mid);
            assert!(matches!(end, End::Done), "{end:?} ({copy:?})");
            assert!(at_server == data, "bytes differ at the server");
            assert!(back == data, "bytes differ on the way back");
            assert_eq!(up.load(Ordering::Relaxed), data.len() as u64);
            assert_eq!(down.load(Ordering::Relaxed), data.len() as u64);
        }
    }

    /// Sealed records of every size (1 B to 200 KB writes, so records both
    /// fit in one read and straddle reads while the read buffer grows from
    /// 16 to 256 KiB) come out of `read_parts` byte-exact and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_opened_in_place_reassemble_exactly() {
        let (c, s) = secure_pair().await;
        let (_cr, mut cw, _) = c.split();
        let (mut sr, _sw, rest) = s.split();
        assert!(rest.is_empty());
        // xorshift: sizes 1..=200_000, skewed small.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut sizes = Vec::new();
        let mut total = 0usize;
        while total < 6_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = match x % 4 {
                0 => 1 + (x >> 8) as usize % 100,
                1 => 1 + (x >> 8) as usize % 5_000,
                _ => 1 + (x >> 8) as usize % 200_000,
            };
            sizes.push(n);
            total += n;
        }
        let data = pattern(total);
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            let mut at = 0;
            for n in sizes {
                cw.write(&d2[at..at + n]).await.unwrap();
                at += n;
            }
            cw.shutdown().await.unwrap();
        });
        let mut got = Vec::with_capacity(total);
        while let Some(parts) = sr.read_parts().await.unwrap() {
            assert!(parts.len() > 0, "an empty read before the end");
            for sl in parts.slices() {
                got.extend_from_slice(sl);
            }
        }
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "reassembled plaintext differs");
    }

    /// An established secure connection pair (client, server) on loopback.
    async fn secure_pair() -> (crate::secure::SecureConn, crate::secure::SecureConn) {
        secure_pair_rekeying(None).await
    }

    /// [`secure_pair`] whose client updates its sending key every
    /// `rekey_bytes` bytes.
    async fn secure_pair_rekeying(
        rekey_bytes: Option<u64>,
    ) -> (crate::secure::SecureConn, crate::secure::SecureConn) {
        use crate::secure::SecureConn;
        let id = ServerIdentity::from_seed(&[9; 32]).unwrap();
        let mut ccfg = zs_crypto::ClientConfig::pinned(id.fingerprint());
        if let Some(b) = rekey_bytes {
            ccfg.rekey.max_bytes = b;
        }
        let ccfg = Arc::new(ccfg);
        let scfg = Arc::new(zs_crypto::session::ServerConfig::with_identity(Arc::new(
            id,
        )));
        let (a, b) = pair().await;
        let t = Duration::from_secs(5);
        let (c, s) = tokio::join!(
            SecureConn::connect(a, ccfg, t),
            SecureConn::accept(b, scfg, t)
        );
        (c.unwrap(), s.unwrap())
    }

    /// `carry_from` reads a plain socket straight into records (one read
    /// spans up to 256 KiB: several records laid out back to back, sealed
    /// where they lie, framed or not) and the peer opens exactly the bytes
    /// written, in order, with every read size from 1 byte up, while the
    /// sender's key is updated every 150 KB (inside reads that span records
    /// too: the key update must go between the records it separates).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plaintext_read_straight_into_records_arrives_exactly() {
        for framed in [false, true] {
            let (c, s) = secure_pair_rekeying(Some(150_000)).await;
            let ((_cr, mut cw), (mut sr, _sw)) = if framed {
                (c.split_framed(), s.split_framed())
            } else {
                let ((r, w, _), (sr, sw, _)) = (c.split(), s.split());
                ((r, w), (sr, sw))
            };
            // `from` has a large receive buffer and the first read waits
            // for 100 KB queued: it spans records, whatever the timing.
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_recv_buffer_size(1 << 20).unwrap();
            let (from, src) = tokio::join!(sock.connect(l.local_addr().unwrap()), l.accept());
            let (mut from, _from_w) = from.unwrap().into_split();
            let mut src = src.unwrap().0;
            let data = pattern(4_000_000 + framed as usize);
            let d2 = data.clone();
            let (queued, first) = tokio::sync::oneshot::channel();
            let writer = tokio::spawn(async move {
                src.write_all(&d2[..100_000]).await.unwrap();
                queued.send(()).unwrap();
                let mut at = 100_000;
                for n in [1usize, 2, 100, 16_384, 65_536, 65_537, 300_000, 1]
                    .iter()
                    .cycle()
                {
                    let n = (*n).min(d2.len() - at);
                    src.write_all(&d2[at..at + n]).await.unwrap();
                    at += n;
                    if at == d2.len() {
                        break;
                    }
                }
                src.shutdown().await.unwrap();
            });
            let carrier = tokio::spawn(async move {
                first.await.unwrap();
                let (mut cap, mut reads, mut big) = (READ_BUF, 0, 0);
                loop {
                    let n = cw.carry_from(&mut from, cap).await.unwrap();
                    if n == 0 {
                        cw.shutdown().await.unwrap();
                        return (reads, big);
                    }
                    reads += 1;
                    big += (n > 65_536) as usize;
                    if n == cap {
                        cap = (cap * 2).min(READ_BUF);
                    }
                }
            });
            let mut got = Vec::with_capacity(data.len());
            while let Some(parts) = sr.read_parts().await.unwrap() {
                for sl in parts.slices() {
                    got.extend_from_slice(sl);
                }
            }
            writer.await.unwrap();
            let (reads, big) = carrier.await.unwrap();
            assert_eq!(got.len(), data.len(), "framed {framed}");
            assert!(got == data, "framed {framed}: plaintext differs");
            assert!(big > 0, "{reads} reads, none over one record");
        }
    }

    /// Partial writes (a 5-byte pipe and a TCP socket) resume inside a slice
    /// and across slices, more than 16 slices included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vectored_writes_deliver_every_slice_in_order() {
        let data = pattern(200_000);
        let cuts = [
            0usize, 1, 2, 700, 701, 5000, 65_536, 65_537, 100_000, 199_999,
        ];
        let mut slices: Vec<&[u8]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
        slices.push(&data[199_999..]);
        for _ in 0..20 {
            slices.push(&[]);
        }
        let mut expect = Vec::new();
        for s in &slices {
            expect.extend_from_slice(s);
        }
        let (mut a, mut b) = tokio::io::duplex(5);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all_vectored(&mut a, slices.iter().copied())
            .await
            .unwrap();
        drop(a);
        assert!(reader.await.unwrap() == expect);
        let (mut x, mut y) = pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            y.read_to_end(&mut got).await.unwrap();
            got
        });
        // Many small slices: more than one writev of 16.
        let many: Vec<&[u8]> = data.chunks(999).collect();
        write_all_vectored(&mut x, many.iter().copied())
            .await
            .unwrap();
        x.shutdown().await.unwrap();
        drop(x);
        assert!(reader.await.unwrap() == data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_pump_ends_a_silent_connection_at_the_idle_timeout() {
        let (_client, x) = pair().await;
        let (y, _server) = pair().await;
        let t = Instant::now();
        let end = plain_pump(
            x,
            y,
            PlainCopy::Splice,
            Some(Duration::from_millis(200)),
            &[],
            &[],
        )
        .await;
        assert!(matches!(end, End::Idle), "{end:?}");
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// Relay and agent (each on its own runtime, stopped when the returned
    /// sides drop) serving `echo` -> `local` with the given data encryption.
    fn tunnel(
        relay_e: DataEncryption,
        agent_e: DataEncryption,
        local: SocketAddr,
    ) -> ((Side, Relay), (Side, Agent), SocketAddr) {
        let mut rc = relay_cfg(0, &[("echo", "t", 0)]);
        rc.data_encryption = relay_e;
        let (rs, relay) = start_relay(rc);
        let mut ac = agent_cfg(&[relay.local_addr()], &[("echo", "t", local, 16)]);
        ac.data_encryption = agent_e;
        let (sa, agent) = start_agent(ac);
        wait_until("public port", Duration::from_secs(10), || {
            relay.public_addr("echo").is_some()
        });
        let public = relay.public_addr("echo").unwrap();
        ((rs, relay), (sa, agent), public)
    }

    #[test]
    fn plaintext_data_connections_carry_exact_bytes_through_relay_and_agent() {
        let received = Arc::new(AtomicU64::new(0));
        let local = counting_echo_server(received.clone());
        let ((_rs, relay), _agent, public) =
            tunnel(DataEncryption::None, DataEncryption::None, local);
        for round in 0..3 {
            let data = pattern(1_000_000 + round * 12_345);
            let got = echo_exact(public, &data);
            assert!(got == data, "round {round}: echoed bytes differ");
        }
        let m = &relay.mapping_stats()["echo"];
        assert_eq!(m["connections"], 3);
        assert_eq!(m["bytes_up"], m["bytes_down"]);
        assert_eq!(m["bytes_up"], 3_000_000 + 12_345 * 3);
    }

    /// An in-process mapping is reached through the data connection's
    /// session: with plaintext data connections each public connection is
    /// refused and counted, and never reaches the in-process backend.
    #[test]
    fn in_process_mappings_refuse_plaintext_data_connections() {
        let received = Arc::new(AtomicU64::new(0));
        let local = counting_echo_server(received.clone());
        let (_relay, (_sa, agent), public) =
            tunnel(DataEncryption::None, DataEncryption::None, local);
        agent.serve_in_process(
            "echo",
            crate::VirtualBackend::new(),
            "10.255.0.1:7".parse().unwrap(),
        );
        let mut s = StdStream::connect(public).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"hello");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty(), "bytes came back: {got:?}");
        let t = Instant::now();
        while agent.stats().local_failures.load(Ordering::Relaxed) == 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "refusal not counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            received.load(Ordering::Relaxed),
            0,
            "reached the local service"
        );
        assert_eq!(
            agent.stats().forwarded.load(Ordering::Relaxed),
            0,
            "carried to the in-process backend"
        );
    }

    /// One side plaintext, the other encrypted: the public client gets its
    /// connection closed, and the local service never sees a byte (neither
    /// sealed records nor the client's plaintext).
    #[test]
    fn mismatched_encryption_fails_each_connection_and_forwards_nothing() {
        for (relay_e, agent_e) in [
            (DataEncryption::None, DataEncryption::Session),
            (DataEncryption::Session, DataEncryption::None),
        ] {
            let received = Arc::new(AtomicU64::new(0));
            let local = counting_echo_server(received.clone());
            let (_relay, _agent, public) = tunnel(relay_e, agent_e, local);
            let mut s = StdStream::connect(public).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "{relay_e:?}/{agent_e:?}: got bytes back");
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                received.load(Ordering::Relaxed),
                0,
                "{relay_e:?}/{agent_e:?}: the local service received bytes"
            );
        }
    }

    #[test]
    fn transport_encryption_key_parses_and_names_the_key_on_error() {
        let parse = |t: &str| Config::parse(t, "x.toml", std::path::Path::new("."));
        let relay = "[server]\nbind_addr = \"127.0.0.1:1\"\n";
        let c = parse(relay).unwrap();
        assert_eq!(c.server.unwrap().data_encryption, DataEncryption::Session);
        let c = parse(&format!(
            "{relay}[server.transport]\ntype = \"tcp\"\nencryption = \"none\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.unwrap().data_encryption, DataEncryption::None);
        let c = parse(&format!(
            "{relay}[server.transport]\nencryption = \"session\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.unwrap().data_encryption, DataEncryption::Session);
        let agent = "[client]\nremote_addr = \"127.0.0.1:1\"\nrelay_fingerprint = \"sha3-256:0000000000000000000000000000000000000000000000000000000000000000\"\n";
        let c = parse(&format!(
            "{agent}[client.transport]\nencryption = \"none\"\n"
        ))
        .unwrap();
        assert_eq!(c.client.unwrap().data_encryption, DataEncryption::None);
        let e = parse(&format!(
            "{agent}[client.transport]\nencryption = \"off\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "client.transport.encryption");
        assert!(e.message.contains("\"none\""), "{}", e.message);
        let e = parse(&format!("{relay}[server.transport]\nencryption = 0\n")).unwrap_err();
        assert_eq!(e.key, "server.transport.encryption");
        // plain_copy: splice by default, "buffered" on request, anything else named.
        assert_eq!(
            parse(relay).unwrap().server.unwrap().plain_copy,
            PlainCopy::Splice
        );
        let c = parse(&format!(
            "{agent}[client.transport]\nencryption = \"none\"\nplain_copy = \"buffered\"\n"
        ))
        .unwrap();
        assert_eq!(c.client.unwrap().plain_copy, PlainCopy::Buffered);
        let e = parse(&format!(
            "{relay}[server.transport]\nplain_copy = \"sendfile\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "server.transport.plain_copy");
        assert!(e.message.contains("\"buffered\""), "{}", e.message);
    }
}

#[cfg(test)]
mod doc_tests {
    #[test]
    fn protocol_doc_plain_confirm_bytes() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/PROTOCOL.md"
        ))
        .unwrap();
        let part = &doc[doc
            .find("# Part 12: XNat plaintext data connections")
            .expect("PROTOCOL.md Part 12")..];
        let hex: Vec<String> = super::PLAIN_CONFIRM
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(part.contains(&format!("`{}`", hex.join(" "))));
        assert!(part.contains(&format!(
            "(`\"{}\"`)",
            std::str::from_utf8(&super::PLAIN_CONFIRM).unwrap()
        )));
    }
}
