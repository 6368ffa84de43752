//! Raw baselines shared by the suites: the physical limits our stacks are
//! compared with, written once so every suite measures against the same code.
//!
//! - [`mio_echo_server`]: the minimal hand-written epoll echo (through `mio`, a
//!   thin epoll wrapper) of the transports issue: one thread, one `epoll_wait`,
//!   then `read` until `WouldBlock` and one `write` per read.
//! - [`pingpong_server`] / [`pingpong_client`]: blocking `std::net::TcpStream`
//!   ping-pong of fixed-size messages (one thread per connection).
//! - [`sink_server`] / [`copy_to`]: a raw TCP copy that counts and checksums every
//!   byte it receives (the stream suite's baseline).
//! - [`rss_bytes`], [`raise_fd_limit`]: process helpers for memory benches.
//! - [`server_sample`], [`open_and_rss_cases`]: a fresh server process per sample
//!   (memory freed by one sample cannot hide the next one's cost), for the suites
//!   that measure open time and RSS per connection.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Starts the single-threaded mio (epoll) echo on a free loopback port and
/// returns its address. The thread lives as long as the process.
pub fn mio_echo_server() -> SocketAddr {
    use mio::net::TcpListener;
    use mio::{Events, Interest, Poll, Token};
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("raw-epoll".into())
        .spawn(move || {
            let mut poll = Poll::new().expect("poll");
            poll.registry()
                .register(&mut listener, Token(0), Interest::READABLE)
                .expect("register");
            let mut events = Events::with_capacity(256);
            let mut conns: HashMap<usize, (mio::net::TcpStream, Vec<u8>)> = HashMap::new();
            let mut next = 1usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if poll.poll(&mut events, None).is_err() {
                    continue;
                }
                for ev in events.iter() {
                    if ev.token() == Token(0) {
                        while let Ok((mut s, _)) = listener.accept() {
                            let _ = s.set_nodelay(true);
                            let t = Token(next);
                            next += 1;
                            if poll
                                .registry()
                                .register(&mut s, t, Interest::READABLE | Interest::WRITABLE)
                                .is_ok()
                            {
                                conns.insert(t.0, (s, Vec::new()));
                            }
                        }
                        continue;
                    }
                    let Some((s, pending)) = conns.get_mut(&ev.token().0) else {
                        continue;
                    };
                    let mut dead = false;
                    // Flush what an earlier short write left.
                    while !pending.is_empty() {
                        match s.write(pending) {
                            Ok(n) => {
                                pending.drain(..n);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => {
                                dead = true;
                                break;
                            }
                        }
                    }
                    while !dead && pending.is_empty() {
                        match s.read(&mut buf) {
                            Ok(0) => dead = true,
                            Ok(n) => match s.write(&buf[..n]) {
                                Ok(w) if w == n => {}
                                Ok(w) => pending.extend_from_slice(&buf[w..n]),
                                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                    pending.extend_from_slice(&buf[..n])
                                }
                                Err(_) => dead = true,
                            },
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => dead = true,
                        }
                    }
                    if dead {
                        if let Some((mut s, _)) = conns.remove(&ev.token().0) {
                            let _ = poll.registry().deregister(&mut s);
                        }
                    }
                }
            }
        })
        .expect("spawn raw server");
    addr
}

/// Starts a blocking ping-pong server: every connection gets a thread that reads
/// exactly `msg` bytes and writes them back, until the peer closes.
pub fn pingpong_server(msg: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("raw-pingpong-accept".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.set_nodelay(true);
                let _ = std::thread::Builder::new()
                    .name("raw-pingpong".into())
                    .spawn(move || {
                        let mut buf = vec![0u8; msg];
                        while s.read_exact(&mut buf).is_ok() {
                            if s.write_all(&buf).is_err() {
                                break;
                            }
                        }
                    });
            }
        })
        .expect("spawn pingpong server");
    addr
}

/// A connected ping-pong client: `msg`-byte round trips, one at a time.
#[derive(Debug)]
pub struct PingPong {
    stream: TcpStream,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl PingPong {
    /// Connects to a [`pingpong_server`] (TCP_NODELAY on).
    pub fn connect(addr: SocketAddr, msg: usize) -> std::io::Result<PingPong> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(PingPong {
            stream,
            out: (0..msg).map(|i| i as u8).collect(),
            back: vec![0u8; msg],
        })
    }

    /// One round trip; checks the echo matches what was sent.
    pub fn round_trip(&mut self) -> std::io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.stream.read_exact(&mut self.back)?;
        if self.back != self.out {
            return Err(std::io::Error::other("echo differs from the message"));
        }
        self.out.rotate_left(1);
        Ok(())
    }
}

/// Round trips per second over `dur` on one [`PingPong`] connection.
pub fn pingpong_client(addr: SocketAddr, msg: usize, dur: Duration) -> f64 {
    let mut c = PingPong::connect(addr, msg).expect("connect");
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < dur {
        for _ in 0..16 {
            c.round_trip().expect("round trip");
        }
        n += 16;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// A cheap running checksum of a byte stream (Fletcher-like, two 64-bit sums
/// over 8-byte little-endian words plus a tail); order-sensitive, so a lost,
/// repeated or swapped chunk changes it. Feed it in any split: the result only
/// depends on the whole byte sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checksum {
    a: u64,
    b: u64,
    len: u64,
    tail: [u8; 8],
    tail_len: usize,
}

impl Checksum {
    /// A fresh checksum.
    pub fn new() -> Checksum {
        Checksum::default()
    }

    fn word(&mut self, w: u64) {
        self.a = self.a.wrapping_add(w);
        self.b = self.b.wrapping_add(self.a);
    }

    /// Adds `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.tail);
            self.word(w);
            self.tail_len = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no byte was seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum of everything added (the partial tail word zero-padded).
    pub fn value(&self) -> u64 {
        let (mut a, mut b) = (self.a, self.b);
        if self.tail_len > 0 {
            let mut w = [0u8; 8];
            w[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            a = a.wrapping_add(u64::from_le_bytes(w));
            b = b.wrapping_add(a);
        }
        b.rotate_left(32) ^ a ^ self.len
    }
}

/// Starts a raw TCP sink: every connection's bytes are read (256 KiB reads)
/// into a [`Checksum`] until end of file; then the server writes back the
/// byte count and checksum (16 bytes, little endian) and closes.
pub fn sink_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("raw-sink-accept".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = std::thread::Builder::new()
                    .name("raw-sink".into())
                    .spawn(move || {
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut sum = Checksum::new();
                        loop {
                            match s.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => sum.update(&buf[..n]),
                                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                                Err(_) => return,
                            }
                        }
                        let mut out = [0u8; 16];
                        out[..8].copy_from_slice(&sum.len().to_le_bytes());
                        out[8..].copy_from_slice(&sum.value().to_le_bytes());
                        let _ = s.write_all(&out);
                    });
            }
        })
        .expect("spawn sink server");
    addr
}

/// Copies `data` to a [`sink_server`] in 256 KiB writes, half-closes, and
/// returns the `(count, checksum)` the sink reports.
pub fn copy_to(addr: SocketAddr, data: &[u8]) -> std::io::Result<(u64, u64)> {
    let mut s = TcpStream::connect(addr)?;
    for c in data.chunks(256 * 1024) {
        s.write_all(c)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back)?;
    let mut n = [0u8; 8];
    n.copy_from_slice(&back[..8]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&back[8..]);
    Ok((u64::from_le_bytes(n), u64::from_le_bytes(c)))
}

/// Resident set size of this process in bytes (`/proc/self/statm`; 0 where
/// unavailable).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |p| p * 4096)
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft
/// limit (or the error text where the platform refuses).
pub fn raise_fd_limit() -> Result<u64, String> {
    #[cfg(unix)]
    {
        let (_soft, hard) = rlimit::Resource::NOFILE.get().map_err(|e| e.to_string())?;
        rlimit::Resource::NOFILE
            .set(hard, hard)
            .map_err(|e| e.to_string())?;
        Ok(hard)
    }
    #[cfg(not(unix))]
    {
        Err("no RLIMIT_NOFILE on this platform".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_split_independent_and_order_sensitive() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut whole = Checksum::new();
        whole.update(&data);
        for split in [1usize, 3, 7, 8, 9, 500] {
            let mut parts = Checksum::new();
            for c in data.chunks(split) {
                parts.update(c);
            }
            assert_eq!(parts.value(), whole.value(), "split {split}");
            assert_eq!(parts.len(), 1000);
        }
        let mut swapped = data.clone();
        swapped.swap(0, 8);
        let mut s = Checksum::new();
        s.update(&swapped);
        assert_ne!(s.value(), whole.value());
        let mut short = Checksum::new();
        short.update(&data[..999]);
        assert_ne!(short.value(), whole.value());
    }

    #[test]
    fn raw_baselines_move_real_bytes() {
        let echo = mio_echo_server();
        let mut s = TcpStream::connect(echo).unwrap();
        s.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");

        let pp = pingpong_server(64);
        let mut c = PingPong::connect(pp, 64).unwrap();
        for _ in 0..10 {
            c.round_trip().unwrap();
        }

        let sink = sink_server();
        let data: Vec<u8> = (0..300_001u32).map(|i| i as u8).collect();
        let mut want = Checksum::new();
        want.update(&data);
        assert_eq!(copy_to(sink, &data).unwrap(), (300_001, want.value()));
    }

    #[test]
    fn fd_limit_is_raised_to_hard() {
        #[cfg(unix)]
        {
            let n = raise_fd_limit().unwrap();
            assert_eq!(rlimit::Resource::NOFILE.get().unwrap().0, n);
        }
    }
}

/// What one server process reported: `RESULT <open_s> <rss_per_item> <count>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerSample {
    /// Seconds until every item was open.
    pub open_s: f64,
    /// Resident bytes per open item.
    pub rss_per_item: f64,
    /// Items that were open when it measured.
    pub count: usize,
}

/// Runs this bench binary again as `--server <kind> <n>` and parses the
/// `RESULT <open_s> <rss_per_item> <count>` line it prints. `None` (with the
/// child's stderr printed) when there is no such line.
pub fn server_sample(kind: &str, n: usize) -> Option<(ServerSample, String)> {
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new(exe)
        .args(["--server", kind, &n.to_string()])
        .output()
        .expect("spawn server");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("RESULT ") else {
            continue;
        };
        let v: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [open_s, rss_per_item, count] = v[..] {
            let sample = ServerSample {
                open_s,
                rss_per_item,
                count: count as usize,
            };
            return Some((sample, stderr));
        }
    }
    eprintln!("{kind}: server gave no result: {stderr}");
    None
}

/// Registers, for each kind, a `<kind>-open` case (`open_s`) and a `<kind>-rss`
/// case (`rss_metric`) that both come from ONE `sample(kind)` per round (cases
/// run in registration order, so the rss case reads what the open case just
/// measured). `sample` returns `(open_s, rss_per_item)`.
pub fn open_and_rss_cases(
    suite: &mut crate::Suite,
    kinds: &[&'static str],
    rss_metric: &str,
    sample: impl Fn(&'static str) -> (f64, f64) + Clone + 'static,
) {
    for &kind in kinds {
        let sample = sample.clone();
        let last = std::sync::Arc::new(std::sync::Mutex::new(f64::NAN));
        let l2 = last.clone();
        suite.case(
            &format!("{kind}-open"),
            "open_s",
            crate::Better::Lower,
            move || {
                let (open, rss) = sample(kind);
                *l2.lock().unwrap_or_else(|p| p.into_inner()) = rss;
                open
            },
        );
        suite.case(
            &format!("{kind}-rss"),
            rss_metric,
            crate::Better::Lower,
            move || *last.lock().unwrap_or_else(|p| p.into_inner()),
        );
    }
}
