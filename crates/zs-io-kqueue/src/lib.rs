//! # zs-io-kqueue: the BSD and macOS transport backend
//!
//! Why it exists: on FreeBSD and macOS the native readiness API is `kqueue`. This
//! crate implements the `zs_io` seam with it while sharing **all** event-loop
//! logic with the epoll backend: the generic, safe `zs_io::reactor` (connections,
//! buffers, bounded send queues with `writev`, timer wheel, accept hand-off,
//! connects with timeouts, shutdown) runs over the `KqueuePoller` defined here
//! (`EVFILT_READ`/`EVFILT_WRITE` with `EV_CLEAR` = edge-triggered, and an
//! `EVFILT_USER` waker). Unsafe code is confined to the `sys` module.
//!
//! ## What runs only on BSD/macOS
//!
//! Only `sys` (the `kqueue`/`kevent` calls) and `KqueuePoller` (~150 lines) are
//! exercised solely on those systems; this workspace's CI checks that they compile
//! for `x86_64-unknown-freebsd` and `x86_64-apple-darwin`. Everything else they
//! drive — the reactor — is the very code the epoll backend runs through the
//! conformance kit on Linux. On a BSD or macOS machine, `cargo test -p zs-io-kqueue`
//! runs the same kit (`tests/conformance.rs`). The default accept mode is the
//! acceptor hand-off (`AcceptMode::HandOff`) because `SO_REUSEPORT` does not
//! balance connections there as it does on Linux.
//!
//! On other operating systems the crate compiles to nothing.
//!
//! ```
//! # #[cfg(any(target_os = "freebsd", target_os = "macos"))] {
//! use zs_io::{Backend, Config};
//! let backend = zs_io_kqueue::KqueueBackend::new(Config { loops: 1, ..Config::default() }).unwrap();
//! let l = backend.listen("127.0.0.1:0".parse().unwrap(), zs_io::handler_factory(|| Sink)).unwrap();
//! assert!(l.local_addr().port() != 0);
//! backend.shutdown();
//! struct Sink;
//! impl zs_io::Handler for Sink {
//!     fn on_data(&mut self, _c: &zs_io::Conn, d: &mut zs_io::BytesMut) { d.clear(); }
//! }
//! # }
//! ```
#![cfg(any(
    target_os = "freebsd",
    target_os = "macos",
    target_os = "ios",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
#![deny(unsafe_code)]
// `struct kevent` field and flag types differ between the BSDs (e.g. NetBSD):
// explicit casts keep one code path, even where they are no-ops.
#![allow(clippy::unnecessary_cast)]

#[allow(unsafe_code)]
mod sys;

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use sys::Kev;
use zs_io::reactor::{Event, Interest, Poller, PollerFactory, ReactorBackend, Waker};
use zs_io::{Backend, Config, Error, Handler, HandlerFactory, Listener, Prefer};

pub use zs_io::reactor::AcceptMode;

const WAKE_IDENT: usize = 0x5a5a;

/// The `EVFILT_USER` waker of one loop.
struct UserWaker(Arc<OwnedFd>);

impl Waker for UserWaker {
    fn wake(&self) -> io::Result<()> {
        sys::kevent_change(
            &self.0,
            Kev {
                ident: WAKE_IDENT,
                filter: libc::EVFILT_USER,
                flags: 0,
                fflags: libc::NOTE_TRIGGER,
                udata: 0,
            },
        )
    }
}

/// Edge-triggered (`EV_CLEAR`) kqueue implementing [`Poller`]; one per loop.
pub struct KqueuePoller {
    kq: Arc<OwnedFd>,
}

impl std::fmt::Debug for KqueuePoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KqueuePoller")
            .field("kq", &sys::raw(&self.kq))
            .finish()
    }
}

impl KqueuePoller {
    /// A new kqueue with its user-event waker registered.
    pub fn new() -> io::Result<KqueuePoller> {
        let kq = Arc::new(sys::kqueue()?);
        sys::kevent_change(
            &kq,
            Kev {
                ident: WAKE_IDENT,
                filter: libc::EVFILT_USER,
                flags: (libc::EV_ADD | libc::EV_CLEAR) as u16,
                fflags: 0,
                udata: usize::MAX,
            },
        )?;
        Ok(KqueuePoller { kq })
    }
}

impl Poller for KqueuePoller {
    fn register(&mut self, fd: RawFd, token: usize, interest: Interest) -> io::Result<()> {
        let flags = (libc::EV_ADD | libc::EV_CLEAR) as u16;
        sys::kevent_change(
            &self.kq,
            Kev {
                ident: fd as usize,
                filter: libc::EVFILT_READ,
                flags,
                fflags: 0,
                udata: token,
            },
        )?;
        if interest == Interest::ReadWrite {
            sys::kevent_change(
                &self.kq,
                Kev {
                    ident: fd as usize,
                    filter: libc::EVFILT_WRITE,
                    flags,
                    fflags: 0,
                    udata: token,
                },
            )?;
        }
        Ok(())
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        let flags = libc::EV_DELETE as u16;
        let r = sys::kevent_change(
            &self.kq,
            Kev {
                ident: fd as usize,
                filter: libc::EVFILT_READ,
                flags,
                fflags: 0,
                udata: 0,
            },
        );
        // Listeners have no write filter: ENOENT there is expected.
        let _ = sys::kevent_change(
            &self.kq,
            Kev {
                ident: fd as usize,
                filter: libc::EVFILT_WRITE,
                flags,
                fflags: 0,
                udata: 0,
            },
        );
        r
    }

    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        sys::kevent_wait(&self.kq, timeout, |k| {
            if k.filter == libc::EVFILT_USER {
                return;
            }
            let eof = k.flags & libc::EV_EOF as u16 != 0;
            let error = k.flags & libc::EV_ERROR as u16 != 0;
            events.push(Event {
                token: k.udata,
                readable: k.filter == libc::EVFILT_READ,
                writable: k.filter == libc::EVFILT_WRITE,
                error,
                hup: eof,
            });
        })
    }

    fn waker(&self) -> Arc<dyn Waker> {
        Arc::new(UserWaker(self.kq.clone()))
    }
}

/// The kqueue backend: a [`ReactorBackend`] over [`KqueuePoller`]s.
#[derive(Debug)]
pub struct KqueueBackend {
    inner: ReactorBackend,
}

impl KqueueBackend {
    /// Starts the loops with the acceptor hand-off.
    pub fn new(cfg: Config) -> Result<KqueueBackend, Error> {
        KqueueBackend::with_mode(cfg, AcceptMode::HandOff)
    }

    /// Starts the loops with an explicit accept mode.
    pub fn with_mode(cfg: Config, mode: AcceptMode) -> Result<KqueueBackend, Error> {
        let pollers: PollerFactory =
            Arc::new(|| Ok(Box::new(KqueuePoller::new()?) as Box<dyn Poller>));
        Ok(KqueueBackend {
            inner: ReactorBackend::start("kqueue", cfg, mode, pollers)?,
        })
    }
}

impl Backend for KqueueBackend {
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
