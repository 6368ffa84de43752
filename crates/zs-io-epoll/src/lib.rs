//! # zs-io-epoll: the Linux transport backend
//!
//! Why it exists: on Linux the fastest way to move zserver's bytes is edge-triggered
//! `epoll` with one event loop per core. This crate implements the [`zs_io`] seam
//! that way. It is deliberately thin: the event loop itself (connections table,
//! pooled read buffers, bounded send queues flushed with `writev`, the timer wheel,
//! accept spreading, connects with timeouts, shutdown) is the generic, safe
//! `zs_io::reactor`, shared with `zs-io-kqueue`; this crate contributes the
//! [`EpollPoller`] (edge-triggered `epoll` + an `eventfd` waker) and the syscall
//! layer `sys`, the only module allowed to use `unsafe` (each block carries a
//! `// SAFETY:` comment).
//!
//! Defaults: one loop per core ([`zs_io::Config::loops`] = 0), connections pinned
//! to the loop that accepted or opened them, accept spread by the kernel over
//! per-loop `SO_REUSEPORT` sockets ([`AcceptMode::ReusePort`]; the acceptor
//! hand-off mode is available through [`EpollBackend::with_mode`]).
//!
//! On other operating systems the crate compiles to nothing.
//!
//! ```
//! # #[cfg(target_os = "linux")] {
//! use std::time::Duration;
//! use zs_io::{Backend, BytesMut, Config, Conn, Handler};
//! use zs_io_epoll::EpollBackend;
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
//!         let _ = conn.send(data.split().freeze());
//!     }
//! }
//! let backend = EpollBackend::new(Config { loops: 1, ..Config::default() }).unwrap();
//! let listener = backend.listen("127.0.0.1:0".parse().unwrap(), zs_io::handler_factory(|| Echo)).unwrap();
//! let mut s = std::net::TcpStream::connect(listener.local_addr()).unwrap();
//! use std::io::{Read, Write};
//! s.write_all(b"ping").unwrap();
//! let mut b = [0u8; 4];
//! s.read_exact(&mut b).unwrap();
//! assert_eq!(&b, b"ping");
//! backend.shutdown();
//! # }
//! ```
#![cfg(target_os = "linux")]
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod sys;

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use zs_io::reactor::{Event, Interest, Poller, PollerFactory, ReactorBackend, Waker};
use zs_io::{Backend, Config, Error, Handler, HandlerFactory, Listener, Prefer};

pub use zs_io::reactor::AcceptMode;

const WAKE_TOKEN: u64 = u64::MAX;

/// The `eventfd` waker of one loop.
struct EventFdWaker(OwnedFd);

impl Waker for EventFdWaker {
    fn wake(&self) -> io::Result<()> {
        sys::eventfd_signal(&self.0)
    }
}

/// Edge-triggered `epoll` implementing [`Poller`]; one per loop.
pub struct EpollPoller {
    epfd: OwnedFd,
    waker: Arc<EventFdWaker>,
    buf: Vec<libc::epoll_event>,
}

impl std::fmt::Debug for EpollPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpollPoller")
            .field("epfd", &self.epfd)
            .finish()
    }
}

impl EpollPoller {
    /// A new epoll instance with its eventfd registered.
    pub fn new() -> io::Result<EpollPoller> {
        let epfd = sys::epoll_create()?;
        let efd = sys::eventfd()?;
        use std::os::fd::AsRawFd;
        sys::epoll_ctl(
            &epfd,
            libc::EPOLL_CTL_ADD,
            efd.as_raw_fd(),
            (libc::EPOLLIN | libc::EPOLLET) as u32,
            WAKE_TOKEN,
        )?;
        Ok(EpollPoller {
            epfd,
            waker: Arc::new(EventFdWaker(efd)),
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        })
    }
}

impl Poller for EpollPoller {
    fn register(&mut self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        let mut ev = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET;
        if interest == Interest::ReadWrite {
            ev |= libc::EPOLLOUT;
        }
        sys::epoll_ctl(&self.epfd, libc::EPOLL_CTL_ADD, fd, ev as u32, token as u64)
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        sys::epoll_ctl(&self.epfd, libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let n = sys::epoll_wait(&self.epfd, &mut self.buf, timeout)?;
        for ev in &self.buf[..n] {
            let (bits, token) = (ev.events, ev.u64);
            if token == WAKE_TOKEN {
                sys::eventfd_drain(&self.waker.0)?;
                continue;
            }
            events.push(Event {
                token: token as usize,
                readable: bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0,
                writable: bits & libc::EPOLLOUT as u32 != 0,
                error: bits & libc::EPOLLERR as u32 != 0,
                hup: bits & (libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0,
            });
        }
        // A full buffer hints at a busy loop: grow it (bounded) for the next wait.
        if n == self.buf.len() && self.buf.len() < 16 * 1024 {
            let len = self.buf.len() * 2;
            self.buf
                .resize(len, libc::epoll_event { events: 0, u64: 0 });
        }
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Waker> {
        self.waker.clone()
    }
}

/// The epoll backend: a [`ReactorBackend`] over [`EpollPoller`]s.
#[derive(Debug)]
pub struct EpollBackend {
    inner: ReactorBackend,
}

impl EpollBackend {
    /// Starts the loops with the Linux default accept mode (`SO_REUSEPORT`).
    pub fn new(cfg: Config) -> Result<EpollBackend, Error> {
        EpollBackend::with_mode(cfg, AcceptMode::ReusePort)
    }

    /// Starts the loops with an explicit accept mode.
    pub fn with_mode(cfg: Config, mode: AcceptMode) -> Result<EpollBackend, Error> {
        let pollers: PollerFactory =
            Arc::new(|| Ok(Box::new(EpollPoller::new()?) as Box<dyn Poller>));
        Ok(EpollBackend {
            inner: ReactorBackend::start("epoll", cfg, mode, pollers)?,
        })
    }

    /// The number of event loops.
    pub fn loops(&self) -> usize {
        self.inner.loops()
    }
}

impl Backend for EpollBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn listen(
        &self,
        addr: std::net::SocketAddr,
        factory: HandlerFactory,
    ) -> Result<Box<dyn Listener>, Error> {
        self.inner.listen(addr, factory)
    }
    fn connect(
        &self,
        addr: std::net::SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> Result<(), Error> {
        self.inner.connect(addr, timeout, handler)
    }
    fn resolve(
        &self,
        host: &str,
        port: u16,
        prefer: Prefer,
    ) -> Result<Vec<std::net::SocketAddr>, Error> {
        self.inner.resolve(host, port, prefer)
    }
    fn shutdown(&self) {
        self.inner.shutdown()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waker_wakes_a_blocked_wait() {
        let mut p = EpollPoller::new().unwrap();
        let w = p.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.wake().unwrap();
        });
        let mut evs = Vec::new();
        let t0 = std::time::Instant::now();
        p.wait(&mut evs, Some(Duration::from_secs(10))).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(evs.is_empty(), "wake-ups are not reported as events");
        t.join().unwrap();
    }

    #[test]
    fn reports_edges_with_tokens() {
        let mut p = EpollPoller::new().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        use std::os::fd::AsRawFd;
        p.register(l.as_raw_fd(), 7, Interest::Read).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut evs = Vec::new();
        p.wait(&mut evs, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].token, 7);
        assert!(evs[0].readable);
        // Edge-triggered: no new edge without new readiness.
        evs.clear();
        p.wait(&mut evs, Some(Duration::from_millis(50))).unwrap();
        assert!(evs.is_empty());
        p.deregister(l.as_raw_fd()).unwrap();
        assert!(p.deregister(l.as_raw_fd()).is_err());
    }
}
