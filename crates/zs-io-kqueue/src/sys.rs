//! The syscall layer: the only place in this crate with `unsafe` (mio's `syscall!`
//! style). Compiled and type-checked here for FreeBSD and macOS; executed only on
//! those systems.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Calls a libc function and maps a `-1` result to `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: every caller documents why the arguments are valid for `$fn`.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// A change or event record, independent of the platform's `struct kevent` layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kev {
    pub ident: usize,
    pub filter: i16,
    pub flags: u16,
    pub fflags: u32,
    pub udata: usize,
}

#[allow(clippy::unnecessary_cast)]
fn to_raw(k: &Kev) -> libc::kevent {
    // SAFETY: `libc::kevent` is a plain C struct of integers and one raw pointer, for
    // which all-zero bytes are a valid value (null `udata`, zero `data`/`ext`).
    let mut ev: libc::kevent = unsafe { std::mem::zeroed() };
    ev.ident = k.ident as _;
    ev.filter = k.filter as _;
    ev.flags = k.flags as _;
    ev.fflags = k.fflags as _;
    ev.udata = k.udata as _;
    ev
}

/// `kqueue()` (close-on-exec).
pub(crate) fn kqueue() -> io::Result<OwnedFd> {
    // SAFETY: kqueue takes no arguments.
    let fd = syscall!(kqueue())?;
    // SAFETY: `fd` was just returned by the kernel, is open, and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on an fd we own with integer arguments only.
    syscall!(fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    Ok(owned)
}

/// Applies one change; no events are collected.
pub(crate) fn kevent_change(kq: &OwnedFd, change: Kev) -> io::Result<()> {
    let ev = to_raw(&change);
    // SAFETY: `ev` is a valid kevent on our stack, read by the kernel (1 change);
    // the event list is null with length 0; the timeout is null (no wait happens
    // without an event list).
    syscall!(kevent(
        kq.as_raw_fd(),
        &ev,
        1,
        std::ptr::null_mut(),
        0,
        std::ptr::null()
    ))?;
    Ok(())
}

// Field types of `struct kevent` differ between the BSDs; casts keep one code path.
#[allow(clippy::unnecessary_cast)]
/// Waits for events (at most 256 per call) and passes each to `f`. `EINTR` = none.
pub(crate) fn kevent_wait(
    kq: &OwnedFd,
    timeout: Option<Duration>,
    mut f: impl FnMut(Kev),
) -> io::Result<()> {
    const N: usize = 256;
    // SAFETY: see `to_raw`: all-zero bytes are a valid `libc::kevent`.
    let zero: libc::kevent = unsafe { std::mem::zeroed() };
    let mut buf = [zero; N];
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: no changes (null, 0); `buf` is a live, exclusively borrowed array of N
    // kevents the kernel fills (at most N); `ts_ptr` is null or points to `ts`, alive
    // for the call.
    let n = match syscall!(kevent(
        kq.as_raw_fd(),
        std::ptr::null(),
        0,
        buf.as_mut_ptr(),
        N as _,
        ts_ptr
    )) {
        Ok(n) => n as usize,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
        Err(e) => return Err(e),
    };
    for ev in &buf[..n] {
        f(Kev {
            ident: ev.ident as usize,
            filter: ev.filter as i16,
            flags: ev.flags as u16,
            fflags: ev.fflags as u32,
            udata: ev.udata as usize,
        });
    }
    Ok(())
}

/// The raw fd of an owned fd (re-exported for the poller's bookkeeping).
pub(crate) fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}
