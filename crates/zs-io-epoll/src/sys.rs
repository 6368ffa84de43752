//! The syscall layer: the only place in this crate with `unsafe`. Each wrapper
//! turns one libc call into an `io::Result` (mio's `syscall!` style) and owns the
//! file descriptors it creates as `OwnedFd`, so they are closed exactly once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Calls a libc function and maps a `-1` result to `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: every caller documents why the arguments are valid for `$fn`; the
        // call itself only reads/writes what those arguments point to.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// `epoll_create1(EPOLL_CLOEXEC)`.
pub(crate) fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes only a flags integer.
    let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
    // SAFETY: `fd` was just returned by the kernel, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes an initial value and flags, no pointers.
    let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
    // SAFETY: `fd` was just returned by the kernel, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(epfd, op, fd, {events, u64: token})`.
pub(crate) fn epoll_ctl(
    epfd: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event on our stack for the duration of the call; the
    // kernel copies it (for EPOLL_CTL_DEL it is ignored but must be non-null on old
    // kernels). `epfd` is an open epoll fd we own; a bad `fd` is an error, not UB.
    syscall!(epoll_ctl(epfd.as_raw_fd(), op, fd, &mut ev))?;
    Ok(())
}

/// `epoll_wait` into `buf`; returns how many entries the kernel filled.
/// `EINTR` is reported as 0 events.
pub(crate) fn epoll_wait(
    epfd: &OwnedFd,
    buf: &mut [libc::epoll_event],
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let ms: libc::c_int = match timeout {
        None => -1,
        // Round up so a timer 0.4 ms away does not cause a busy loop of 0 ms waits.
        // (In u64: the u128 of `as_micros` cost a wide division per wait.)
        Some(d) => d
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(d.subsec_micros()))
            .div_ceil(1000)
            .min(libc::c_int::MAX as u64) as libc::c_int,
    };
    let max = buf.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `buf` is a live, exclusively borrowed slice of `max` epoll_event entries that
    // the kernel writes (at most `max` of them).
    match syscall!(epoll_wait(epfd.as_raw_fd(), buf.as_mut_ptr(), max, ms)) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Adds 1 to an eventfd counter (a wake-up). A full counter (`EAGAIN`) already
/// guarantees a pending wake-up and counts as success.
pub(crate) fn eventfd_signal(fd: &OwnedFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: `one` is a live 8-byte value; eventfd writes must be exactly 8 bytes.
    match syscall!(write(fd.as_raw_fd(), (&one as *const u64).cast(), 8)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Resets an eventfd counter (reads it; `EAGAIN` = already zero).
pub(crate) fn eventfd_drain(fd: &OwnedFd) -> io::Result<()> {
    let mut v: u64 = 0;
    // SAFETY: `v` is a live, writable 8-byte buffer; eventfd reads are exactly 8 bytes.
    match syscall!(read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}
