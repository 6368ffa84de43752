//! The only module with `unsafe`: completion ports and overlapped socket operations.
//!
//! Everything here is wrapped so that the rest of the crate stays safe code:
//!
//! * [`Port`] owns a completion port handle.
//! * Each overlapped operation ([`RecvOp`], [`SendOp`], [`AcceptOp`], [`ConnectOp`])
//!   owns its `OVERLAPPED` on the heap and **takes ownership of every buffer the
//!   kernel may touch** while it is in flight; the buffers come back from `finish`,
//!   which may only be called once the operation's completion packet has been
//!   dequeued from the port. An operation dropped while still in flight leaks its
//!   memory instead of freeing it under the kernel's feet.
//! * Sockets themselves are `socket2::Socket`s (created with `WSA_FLAG_OVERLAPPED`),
//!   so their options and lifetime need no unsafe code here.
//!
//! Completion packets are always queued, also for operations that finish at once
//! (`FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` is not used), so an operation is in flight
//! from a successful `start` exactly until its packet is dequeued.

use std::io;
use std::net::SocketAddr;
use std::os::windows::io::AsRawSocket;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use socket2::{SockAddr, Socket};
use windows_sys::Win32::Foundation::{
    CloseHandle, RtlNtStatusToDosError, ERROR_CONNECTION_ABORTED, ERROR_CONNECTION_REFUSED,
    ERROR_NETNAME_DELETED, ERROR_OPERATION_ABORTED, ERROR_SEM_TIMEOUT, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Networking::WinSock::{
    AcceptEx, WSAGetLastError, WSAGetOverlappedResult, WSAIoctl, WSARecv, WSASend, LPFN_CONNECTEX,
    SIO_GET_EXTENSION_FUNCTION_POINTER, SOCKADDR_STORAGE, SOCKET, SOL_SOCKET,
    SO_UPDATE_ACCEPT_CONTEXT, SO_UPDATE_CONNECT_CONTEXT, WSABUF, WSAID_CONNECTEX, WSA_IO_PENDING,
};
use windows_sys::Win32::System::IO::{
    CreateIoCompletionPort, GetQueuedCompletionStatusEx, PostQueuedCompletionStatus, OVERLAPPED,
    OVERLAPPED_ENTRY,
};

fn raw(sock: &Socket) -> SOCKET {
    sock.as_raw_socket() as SOCKET
}

fn last_wsa_error() -> io::Error {
    // SAFETY: WSAGetLastError only reads the calling thread's last-error value.
    let code = unsafe { WSAGetLastError() };
    os_error(code as u32)
}

/// An `io::Error` for a Windows or Winsock error code, with the completion-style
/// codes (which std does not classify) given their portable kinds.
pub(crate) fn os_error(code: u32) -> io::Error {
    use io::ErrorKind as K;
    let kind = match code {
        ERROR_CONNECTION_REFUSED => K::ConnectionRefused,
        ERROR_NETNAME_DELETED => K::ConnectionReset,
        ERROR_CONNECTION_ABORTED | ERROR_OPERATION_ABORTED => K::ConnectionAborted,
        ERROR_SEM_TIMEOUT => K::TimedOut,
        _ => return io::Error::from_raw_os_error(code as i32),
    };
    io::Error::new(kind, format!("os error {code}"))
}

// ------------------------------------------------------------------------ port

/// A completion port. Sockets are associated with it under a key; completion
/// packets and wake-ups are dequeued with [`Port::wait`].
#[derive(Debug)]
pub(crate) struct Port(HANDLE);

// SAFETY: a completion port handle may be used from any thread; the kernel object
// synchronises every operation on it.
unsafe impl Send for Port {}
// SAFETY: as above; all methods take `&self` and only pass the handle to thread-safe
// kernel calls.
unsafe impl Sync for Port {}

impl Port {
    /// A new port serving one thread at a time.
    pub(crate) fn new() -> io::Result<Port> {
        // SAFETY: with INVALID_HANDLE_VALUE and a null existing port this only creates a
        // new port; no pointer is passed.
        let h = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, std::ptr::null_mut(), 0, 1) };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(Port(h))
    }

    /// Routes the completions of `sock` to this port under `key`. A socket can be
    /// associated with one port only, once.
    pub(crate) fn associate(&self, sock: &Socket, key: usize) -> io::Result<()> {
        // SAFETY: the socket handle is valid (borrowed) and the port handle is owned by
        // self; the call stores no pointer of ours.
        let h = unsafe { CreateIoCompletionPort(raw(sock) as HANDLE, self.0, key, 0) };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Queues a packet without an operation (a wake-up) under `key`.
    pub(crate) fn post(&self, key: usize) -> io::Result<()> {
        // SAFETY: a null OVERLAPPED is allowed; the packet carries only `key`.
        let ok = unsafe { PostQueuedCompletionStatus(self.0, 0, key, std::ptr::null()) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (`None`: forever) for packets and stores them in
    /// `events` (replacing what it held). Returns with an empty `events` on timeout.
    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let ms = match timeout {
            None => u32::MAX, // INFINITE
            // Round up so that a timer is never woken early.
            Some(d) => u32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX - 1),
        };
        let mut n = 0u32;
        events.len = 0;
        // SAFETY: `entries` is a live, exclusively borrowed buffer of `capacity`
        // entries; the kernel writes at most that many and reports the count in `n`.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.0,
                events.entries.as_mut_ptr(),
                events.entries.len() as u32,
                &mut n,
                ms,
                0,
            )
        };
        if ok == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(WAIT_TIMEOUT as i32) {
                return Ok(());
            }
            return Err(e);
        }
        events.len = (n as usize).min(events.entries.len());
        Ok(())
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by self and closed exactly once.
        unsafe { CloseHandle(self.0) };
    }
}

/// One dequeued completion packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    /// The key the socket was associated with (or the key posted).
    pub(crate) key: usize,
    /// The address of the operation's `OVERLAPPED` (0 for a posted wake-up); compare
    /// with [`RecvOp::id`] and friends.
    pub(crate) op: usize,
    /// Bytes transferred.
    pub(crate) bytes: u32,
}

/// A buffer for [`Port::wait`].
pub(crate) struct Events {
    entries: Vec<OVERLAPPED_ENTRY>,
    len: usize,
}

impl Events {
    /// Room for `capacity` packets per wait.
    pub(crate) fn with_capacity(capacity: usize) -> Events {
        Events {
            entries: vec![OVERLAPPED_ENTRY::default(); capacity.max(1)],
            len: 0,
        }
    }

    /// How many packets the last wait returned.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Packet `i` (below [`Events::len`]) of the last wait.
    pub(crate) fn get(&self, i: usize) -> Event {
        let e = &self.entries[i.min(self.len.saturating_sub(1))];
        Event {
            key: e.lpCompletionKey,
            op: e.lpOverlapped as usize,
            bytes: e.dwNumberOfBytesTransferred,
        }
    }
}

// ------------------------------------------------------------------ overlapped

/// A heap `OVERLAPPED` that the kernel may write to while an operation is in flight;
/// the Rust side only touches it through raw pointers while idle.
struct Overlapped {
    ptr: NonNull<OVERLAPPED>,
    in_flight: bool,
}

impl Overlapped {
    fn new() -> Overlapped {
        let b = Box::new(OVERLAPPED::default());
        Overlapped {
            ptr: NonNull::from(Box::leak(b)),
            in_flight: false,
        }
    }

    /// Zeroes it for a new operation and returns the pointer; an error (and nothing
    /// touched) while an operation is still in flight: the kernel owns the
    /// `OVERLAPPED` and the operation's buffers until its packet is dequeued, so
    /// starting another would write under its feet and replace (free) its buffers.
    /// Checked in every build, not only with debug assertions.
    fn arm(&mut self) -> io::Result<*mut OVERLAPPED> {
        if self.in_flight {
            return Err(in_flight_error());
        }
        // SAFETY: not in flight (checked above), so nobody else accesses the
        // allocation, which is live and owned by self.
        unsafe { self.ptr.as_ptr().write(OVERLAPPED::default()) };
        Ok(self.ptr.as_ptr())
    }

    fn id(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The operation's NTSTATUS; only meaningful once its packet was dequeued.
    fn status(&self) -> i32 {
        // SAFETY: the allocation is live; once the completion packet has been dequeued
        // the kernel no longer writes to it. A volatile read keeps the compiler from
        // assuming the value it wrote in `arm`.
        unsafe { std::ptr::addr_of!((*self.ptr.as_ptr()).Internal).read_volatile() as i32 }
    }

    /// The result of the finished operation: `Ok(bytes)` or its error (asking Winsock
    /// for the precise code while the socket is still open).
    fn result(&self, sock: Option<&Socket>, bytes: u32) -> io::Result<u32> {
        let status = self.status();
        if status == 0 {
            return Ok(bytes);
        }
        if let Some(s) = sock {
            let mut n = 0u32;
            let mut flags = 0u32;
            // SAFETY: the OVERLAPPED is live and its operation finished (fWait = 0, so
            // the call does not block); the out pointers are locals.
            let ok =
                unsafe { WSAGetOverlappedResult(raw(s), self.ptr.as_ptr(), &mut n, 0, &mut flags) };
            if ok == 0 {
                return Err(last_wsa_error());
            }
        }
        // SAFETY: a pure conversion of a status code.
        let code = unsafe { RtlNtStatusToDosError(status) };
        Err(os_error(code))
    }
}

impl Drop for Overlapped {
    fn drop(&mut self) {
        if self.in_flight {
            // The kernel may still write here: leak rather than free.
            tracing::warn!("IOCP operation dropped while in flight; leaking its OVERLAPPED");
            return;
        }
        // SAFETY: the pointer came from Box::leak in `new`, is not in flight and is freed
        // exactly once.
        drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
    }
}

/// The error `start` returns while the operation is already in flight.
fn in_flight_error() -> io::Error {
    io::Error::other("an overlapped operation of this kind is already in flight")
}

/// Maps the return of an overlapped start call: success or pending means a
/// completion packet will come.
fn started(ret: i32, failed: i32) -> io::Result<()> {
    if ret != failed {
        return Ok(());
    }
    // SAFETY: reads the calling thread's last-error value.
    let code = unsafe { WSAGetLastError() };
    if code == WSA_IO_PENDING {
        Ok(())
    } else {
        Err(os_error(code as u32))
    }
}

// ------------------------------------------------------------------------ recv

/// An overlapped `WSARecv` into the spare capacity of a `BytesMut`.
pub(crate) struct RecvOp {
    ov: Overlapped,
    buf: Option<BytesMut>,
    given: usize,
}

impl RecvOp {
    pub(crate) fn new() -> RecvOp {
        RecvOp {
            ov: Overlapped::new(),
            buf: None,
            given: 0,
        }
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.ov.in_flight
    }

    /// The value [`Event::op`] carries for this operation.
    pub(crate) fn id(&self) -> usize {
        self.ov.id()
    }

    /// Starts receiving into `buf`'s spare capacity (the caller reserves it; at least
    /// one byte). On an immediate error, also when a receive is already in flight
    /// (which is left untouched), `buf` is handed back.
    pub(crate) fn start(
        &mut self,
        sock: &Socket,
        mut buf: BytesMut,
    ) -> Result<(), (io::Error, BytesMut)> {
        let ov = match self.ov.arm() {
            Ok(ov) => ov,
            Err(e) => return Err((e, buf)),
        };
        let spare = buf.spare_capacity_mut();
        let len = spare.len().min(u32::MAX as usize);
        if len == 0 {
            return Err((
                io::Error::new(io::ErrorKind::InvalidInput, "no room to receive into"),
                buf,
            ));
        }
        let wsabuf = WSABUF {
            len: len as u32,
            buf: spare.as_mut_ptr().cast(),
        };
        let mut flags = 0u32;
        // SAFETY: `wsabuf` points into `buf`'s heap allocation, which this op keeps
        // (unmoved, untouched) until `finish`; the OVERLAPPED is owned by self and
        // stays alive while in flight; the WSABUF array is captured by the call.
        let ret = unsafe {
            WSARecv(
                raw(sock),
                &wsabuf,
                1,
                std::ptr::null_mut(),
                &mut flags,
                ov,
                None,
            )
        };
        match started(ret, -1) {
            Ok(()) => {
                self.ov.in_flight = true;
                self.given = len;
                self.buf = Some(buf);
                Ok(())
            }
            Err(e) => Err((e, buf)),
        }
    }

    /// Ends the operation after its packet (`bytes`) was dequeued: the buffer comes
    /// back with the received bytes appended, and the result (`Ok(0)` is end of file).
    pub(crate) fn finish(
        &mut self,
        sock: Option<&Socket>,
        bytes: u32,
    ) -> (BytesMut, io::Result<usize>) {
        let mut buf = self.buf.take().unwrap_or_default();
        if !self.ov.in_flight {
            return (buf, Err(io::Error::other("no receive in flight")));
        }
        self.ov.in_flight = false;
        let res = self.ov.result(sock, bytes).map(|n| n as usize);
        if let Ok(n) = res {
            let n = n.min(self.given);
            // SAFETY: the kernel initialised the first `n` bytes of the spare capacity it
            // was given (`n <= given <= spare capacity`), and nothing touched `buf` since.
            unsafe { buf.set_len(buf.len() + n) };
            return (buf, Ok(n));
        }
        (buf, res)
    }
}

impl Drop for RecvOp {
    fn drop(&mut self) {
        if self.ov.in_flight {
            // The kernel may still write into the buffer: leak it with the OVERLAPPED.
            std::mem::forget(self.buf.take());
        }
    }
}

// ------------------------------------------------------------------------ send

/// An overlapped, gathering `WSASend` of a list of `Bytes`.
pub(crate) struct SendOp {
    ov: Overlapped,
    bufs: Vec<Bytes>,
    wsabufs: Vec<WSABUF>,
}

impl SendOp {
    pub(crate) fn new() -> SendOp {
        SendOp {
            ov: Overlapped::new(),
            bufs: Vec::new(),
            wsabufs: Vec::new(),
        }
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.ov.in_flight
    }

    /// The value [`Event::op`] carries for this operation.
    pub(crate) fn id(&self) -> usize {
        self.ov.id()
    }

    /// Starts sending `bufs` (each shorter than 4 GiB) in order. On an immediate
    /// error, also when a send is already in flight (which is left untouched), they
    /// are handed back.
    pub(crate) fn start(
        &mut self,
        sock: &Socket,
        bufs: Vec<Bytes>,
    ) -> Result<(), (io::Error, Vec<Bytes>)> {
        if self.ov.in_flight {
            // Checked before `wsabufs` is touched: the kernel may still read it.
            return Err((in_flight_error(), bufs));
        }
        if bufs.iter().any(|b| b.len() > u32::MAX as usize) || bufs.len() > u32::MAX as usize {
            return Err((
                io::Error::new(io::ErrorKind::InvalidInput, "send buffer too large"),
                bufs,
            ));
        }
        self.wsabufs.clear();
        self.wsabufs.extend(bufs.iter().map(|b| WSABUF {
            len: b.len() as u32,
            buf: b.as_ptr().cast_mut(),
        }));
        let ov = match self.ov.arm() {
            Ok(ov) => ov,
            Err(e) => {
                self.wsabufs.clear();
                return Err((e, bufs));
            }
        };
        // SAFETY: each WSABUF points into a `Bytes` kept alive and unchanged by this op
        // until `finish` (Bytes are immutable; the kernel only reads); the WSABUF array
        // and the OVERLAPPED are owned by self and outlive the operation.
        let ret = unsafe {
            WSASend(
                raw(sock),
                self.wsabufs.as_ptr(),
                self.wsabufs.len() as u32,
                std::ptr::null_mut(),
                0,
                ov,
                None,
            )
        };
        match started(ret, -1) {
            Ok(()) => {
                self.ov.in_flight = true;
                self.bufs = bufs;
                Ok(())
            }
            Err(e) => {
                self.wsabufs.clear();
                Err((e, bufs))
            }
        }
    }

    /// Ends the operation after its packet was dequeued: the buffers come back with
    /// the number of bytes sent (from the front).
    pub(crate) fn finish(
        &mut self,
        sock: Option<&Socket>,
        bytes: u32,
    ) -> (Vec<Bytes>, io::Result<usize>) {
        let bufs = std::mem::take(&mut self.bufs);
        self.wsabufs.clear();
        if !self.ov.in_flight {
            return (bufs, Err(io::Error::other("no send in flight")));
        }
        self.ov.in_flight = false;
        (bufs, self.ov.result(sock, bytes).map(|n| n as usize))
    }
}

impl Drop for SendOp {
    fn drop(&mut self) {
        if self.ov.in_flight {
            // The kernel may still read the buffers and the WSABUF array: leak them.
            std::mem::forget(std::mem::take(&mut self.bufs));
            std::mem::forget(std::mem::take(&mut self.wsabufs));
        }
    }
}

// ---------------------------------------------------------------------- accept

/// Room for one address as `AcceptEx` wants it: the largest sockaddr plus 16 bytes.
const ACCEPT_ADDR_LEN: usize = std::mem::size_of::<SOCKADDR_STORAGE>() + 16;

/// An overlapped `AcceptEx` on a listening socket into a fresh socket.
pub(crate) struct AcceptOp {
    ov: Overlapped,
    sock: Option<Socket>,
    addrs: Box<[u8; 2 * ACCEPT_ADDR_LEN]>,
}

impl AcceptOp {
    pub(crate) fn new() -> AcceptOp {
        AcceptOp {
            ov: Overlapped::new(),
            sock: None,
            addrs: Box::new([0; 2 * ACCEPT_ADDR_LEN]),
        }
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.ov.in_flight
    }

    /// The value [`Event::op`] carries for this operation.
    pub(crate) fn id(&self) -> usize {
        self.ov.id()
    }

    /// Starts accepting the next connection of `listener` into `sock` (a fresh,
    /// unbound socket of the listener's family). No data is awaited. An error (and
    /// `sock` closed, the accept in flight left untouched) while one is in flight.
    pub(crate) fn start(&mut self, listener: &Socket, sock: Socket) -> io::Result<()> {
        let ov = self.ov.arm()?;
        let mut n = 0u32;
        // SAFETY: both sockets are valid; the address buffer (boxed) and the OVERLAPPED
        // are owned by self and outlive the operation; the accept socket is kept in
        // self until `finish`.
        let ret = unsafe {
            AcceptEx(
                raw(listener),
                raw(&sock),
                self.addrs.as_mut_ptr().cast(),
                0,
                ACCEPT_ADDR_LEN as u32,
                ACCEPT_ADDR_LEN as u32,
                &mut n,
                ov,
            )
        };
        started(ret, 0)?;
        self.ov.in_flight = true;
        self.sock = Some(sock);
        Ok(())
    }

    /// Ends the operation after its packet was dequeued: the accepted socket, with
    /// the listener's properties applied (`SO_UPDATE_ACCEPT_CONTEXT`).
    pub(crate) fn finish(&mut self, listener: Option<&Socket>, bytes: u32) -> io::Result<Socket> {
        let sock = self.sock.take();
        if !self.ov.in_flight {
            return Err(io::Error::other("no accept in flight"));
        }
        self.ov.in_flight = false;
        // AcceptEx reports on the listening socket.
        self.ov.result(listener, bytes)?;
        let (Some(sock), Some(listener)) = (sock, listener) else {
            return Err(io::Error::from(io::ErrorKind::ConnectionAborted));
        };
        let lraw: SOCKET = raw(listener);
        // SAFETY: the option value is a SOCKET read by the call during the call only.
        let ret = unsafe {
            windows_sys::Win32::Networking::WinSock::setsockopt(
                raw(&sock),
                SOL_SOCKET,
                SO_UPDATE_ACCEPT_CONTEXT,
                (&lraw as *const SOCKET).cast(),
                std::mem::size_of::<SOCKET>() as i32,
            )
        };
        if ret != 0 {
            return Err(last_wsa_error());
        }
        Ok(sock)
    }
}

impl Drop for AcceptOp {
    fn drop(&mut self) {
        if self.ov.in_flight {
            // The kernel may still write the addresses and use the socket: leak both.
            std::mem::forget(std::mem::replace(
                &mut self.addrs,
                Box::new([0; 2 * ACCEPT_ADDR_LEN]),
            ));
            std::mem::forget(self.sock.take());
        }
    }
}

// --------------------------------------------------------------------- connect

/// The `ConnectEx` function type.
type ConnectExFn = unsafe extern "system" fn(
    SOCKET,
    *const windows_sys::Win32::Networking::WinSock::SOCKADDR,
    i32,
    *const core::ffi::c_void,
    u32,
    *mut u32,
    *mut OVERLAPPED,
) -> windows_sys::core::BOOL;

/// `ConnectEx`, looked up once per process (it is the same for every TCP socket of
/// the system's provider).
fn connect_ex(sock: &Socket) -> io::Result<ConnectExFn> {
    static CONNECT_EX: OnceLock<ConnectExFn> = OnceLock::new();
    if let Some(f) = CONNECT_EX.get() {
        return Ok(*f);
    }
    let guid = WSAID_CONNECTEX;
    let mut f: LPFN_CONNECTEX = None;
    let mut n = 0u32;
    // SAFETY: the in buffer is the GUID (read during the call), the out buffer is a
    // function-pointer-sized local; no OVERLAPPED, so the call is synchronous.
    let ret = unsafe {
        WSAIoctl(
            raw(sock),
            SIO_GET_EXTENSION_FUNCTION_POINTER,
            (&guid as *const windows_sys::core::GUID).cast(),
            std::mem::size_of_val(&guid) as u32,
            (&mut f as *mut LPFN_CONNECTEX).cast(),
            std::mem::size_of::<LPFN_CONNECTEX>() as u32,
            &mut n,
            std::ptr::null_mut(),
            None,
        )
    };
    if ret != 0 {
        return Err(last_wsa_error());
    }
    let f: ConnectExFn = f.ok_or_else(|| io::Error::other("ConnectEx not available"))?;
    Ok(*CONNECT_EX.get_or_init(|| f))
}

/// An overlapped `ConnectEx` (the socket must be bound first).
pub(crate) struct ConnectOp {
    ov: Overlapped,
    addr: Option<Box<SockAddr>>,
}

impl ConnectOp {
    pub(crate) fn new() -> ConnectOp {
        ConnectOp {
            ov: Overlapped::new(),
            addr: None,
        }
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.ov.in_flight
    }

    /// The value [`Event::op`] carries for this operation.
    pub(crate) fn id(&self) -> usize {
        self.ov.id()
    }

    /// Starts connecting `sock` (bound, associated with a port) to `to`; an error
    /// (the connect in flight left untouched) while one is in flight.
    pub(crate) fn start(&mut self, sock: &Socket, to: SocketAddr) -> io::Result<()> {
        let ov = self.ov.arm()?;
        let connect = connect_ex(sock)?;
        let addr = Box::new(SockAddr::from(to));
        // SAFETY: the address is boxed and kept by self until `finish`; the OVERLAPPED
        // is owned by self; no send buffer is passed.
        let ret = unsafe {
            connect(
                raw(sock),
                addr.as_ptr().cast(),
                addr.len(),
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
                ov,
            )
        };
        started(ret, 0)?;
        self.ov.in_flight = true;
        self.addr = Some(addr);
        Ok(())
    }

    /// Ends the operation after its packet was dequeued; on success the socket gets
    /// `SO_UPDATE_CONNECT_CONTEXT` (so `shutdown` and `getpeername` work).
    pub(crate) fn finish(&mut self, sock: Option<&Socket>, bytes: u32) -> io::Result<()> {
        self.addr = None;
        if !self.ov.in_flight {
            return Err(io::Error::other("no connect in flight"));
        }
        self.ov.in_flight = false;
        self.ov.result(sock, bytes)?;
        let Some(sock) = sock else {
            return Err(io::Error::from(io::ErrorKind::ConnectionAborted));
        };
        // SAFETY: SO_UPDATE_CONNECT_CONTEXT takes no option value.
        let ret = unsafe {
            windows_sys::Win32::Networking::WinSock::setsockopt(
                raw(sock),
                SOL_SOCKET,
                SO_UPDATE_CONNECT_CONTEXT,
                std::ptr::null(),
                0,
            )
        };
        if ret != 0 {
            return Err(last_wsa_error());
        }
        Ok(())
    }
}

impl Drop for ConnectOp {
    fn drop(&mut self) {
        if self.ov.in_flight {
            // The kernel may still read the address: leak it.
            std::mem::forget(self.addr.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Type};
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    const WAIT: Option<Duration> = Some(Duration::from_secs(10));

    fn stream(domain: Domain) -> Socket {
        Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap()
    }

    /// A listening IPv4 socket on loopback, associated with `port` (key 1).
    fn loopback_listener(port: &Port) -> (Socket, SocketAddr) {
        let listener = stream(Domain::IPV4);
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(16).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        port.associate(&listener, 1).unwrap();
        (listener, addr)
    }

    /// Waits for the next packet (one at a time).
    fn next(port: &Port) -> Event {
        let mut one = Events::with_capacity(1);
        port.wait(&mut one, WAIT).unwrap();
        assert_eq!(one.len(), 1, "a packet expected");
        one.get(0)
    }

    #[test]
    fn post_wakes_and_timeout_is_not_early() {
        let port = Port::new().unwrap();
        let mut ev = Events::with_capacity(4);
        port.post(7).unwrap();
        port.post(9).unwrap();
        port.wait(&mut ev, WAIT).unwrap();
        let keys: Vec<usize> = (0..ev.len()).map(|i| ev.get(i).key).collect();
        assert_eq!(keys, vec![7, 9]);
        assert_eq!(ev.get(0).op, 0);
        let t0 = Instant::now();
        port.wait(&mut ev, Some(Duration::from_millis(30))).unwrap();
        assert_eq!(ev.len(), 0);
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }

    /// AcceptEx, ConnectEx, WSASend and WSARecv end to end, with the buffers coming
    /// back intact, a short read leaving the rest for the next, and EOF as `Ok(0)`.
    #[test]
    fn accept_connect_send_recv() {
        let port = Port::new().unwrap();
        let (listener, addr) = loopback_listener(&port);
        let mut accept = AcceptOp::new();
        accept.start(&listener, stream(Domain::IPV4)).unwrap();
        assert!(accept.in_flight());

        let client = stream(Domain::IPV4);
        client
            .bind(&"0.0.0.0:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        port.associate(&client, 2).unwrap();
        let mut connect = ConnectOp::new();
        connect.start(&client, addr).unwrap();

        let mut server = None;
        let mut connected = false;
        while server.is_none() || !connected {
            let e = next(&port);
            if e.key == 1 {
                assert_eq!(e.op, accept.id());
                server = Some(accept.finish(Some(&listener), e.bytes).unwrap());
            } else {
                assert_eq!((e.key, e.op), (2, connect.id()));
                connect.finish(Some(&client), e.bytes).unwrap();
                connected = true;
            }
        }
        let server = server.unwrap();
        assert_eq!(
            server.peer_addr().unwrap().as_socket(),
            client.local_addr().unwrap().as_socket()
        );
        port.associate(&server, 3).unwrap();

        let mut send = SendOp::new();
        let bufs = vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        send.start(&client, bufs).unwrap();
        let e = next(&port);
        assert_eq!((e.key, e.op), (2, send.id()));
        let (back, n) = send.finish(Some(&client), e.bytes);
        assert_eq!((back.len(), n.unwrap()), (2, 11));

        let mut recv = RecvOp::new();
        let mut got = BytesMut::from(&b">"[..]);
        while got.len() < 12 {
            got.reserve(4);
            recv.start(&server, got).map_err(|(e, _)| e).unwrap();
            let e = next(&port);
            assert_eq!((e.key, e.op), (3, recv.id()));
            let (buf, n) = recv.finish(Some(&server), e.bytes);
            assert!(n.unwrap() > 0);
            got = buf;
        }
        assert_eq!(&got[..], b">hello world");

        drop(client); // FIN
        recv.start(&server, BytesMut::with_capacity(16))
            .map_err(|(e, _)| e)
            .unwrap();
        let e = next(&port);
        let (buf, n) = recv.finish(Some(&server), e.bytes);
        assert_eq!(n.unwrap(), 0);
        assert!(buf.is_empty());
    }

    /// Starting an operation that is already in flight is refused in every build
    /// (L10): the new buffers or socket come back (or are closed), and the operation
    /// in flight is untouched and completes normally.
    #[test]
    fn start_while_in_flight_is_refused() {
        let port = Port::new().unwrap();
        let (listener, addr) = loopback_listener(&port);
        let mut accept = AcceptOp::new();
        accept.start(&listener, stream(Domain::IPV4)).unwrap();
        let err = accept
            .start(&listener, stream(Domain::IPV4))
            .expect_err("a second AcceptEx on a busy op");
        assert_eq!(err.kind(), io::ErrorKind::Other, "{err}");
        assert!(accept.in_flight());

        let client = stream(Domain::IPV4);
        client
            .bind(&"0.0.0.0:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        port.associate(&client, 2).unwrap();
        let mut connect = ConnectOp::new();
        connect.start(&client, addr).unwrap();
        assert!(connect.start(&client, addr).is_err());
        assert!(connect.in_flight());
        let mut server = None;
        let mut connected = false;
        while server.is_none() || !connected {
            let e = next(&port);
            if e.key == 1 {
                server = Some(accept.finish(Some(&listener), e.bytes).unwrap());
            } else {
                connect.finish(Some(&client), e.bytes).unwrap();
                connected = true;
            }
        }
        let server = server.unwrap();
        port.associate(&server, 3).unwrap();

        // A receive in flight: a second one hands its buffer back.
        let mut recv = RecvOp::new();
        recv.start(&server, BytesMut::with_capacity(16))
            .map_err(|(e, _)| e)
            .unwrap();
        let mut second = BytesMut::from(&b"second"[..]);
        second.reserve(16);
        let (err, back) = recv.start(&server, second).expect_err("a second WSARecv");
        assert_eq!(err.kind(), io::ErrorKind::Other, "{err}");
        assert_eq!(&back[..], b"second");
        assert!(recv.in_flight());

        // A send in flight (until its packet is dequeued): a second one is refused
        // and hands its buffers back; only the first reaches the peer.
        let mut send = SendOp::new();
        send.start(&client, vec![Bytes::from_static(b"one")])
            .unwrap();
        let (err, back) = send
            .start(&client, vec![Bytes::from_static(b"two")])
            .expect_err("a second WSASend");
        assert_eq!(err.kind(), io::ErrorKind::Other, "{err}");
        assert_eq!(back, vec![Bytes::from_static(b"two")]);
        let mut got_send = false;
        let mut got_recv = false;
        while !got_send || !got_recv {
            let e = next(&port);
            if e.op == send.id() {
                let (bufs, n) = send.finish(Some(&client), e.bytes);
                assert_eq!((n.unwrap(), &bufs[0][..]), (3, &b"one"[..]));
                got_send = true;
            } else {
                assert_eq!(e.op, recv.id());
                let (buf, n) = recv.finish(Some(&server), e.bytes);
                assert_eq!((n.unwrap(), &buf[..]), (3, &b"one"[..]));
                got_recv = true;
            }
        }
        assert!(!send.in_flight() && !recv.in_flight());
    }

    /// ConnectEx to a port where nothing listens reports "refused"; a receive
    /// cancelled by closing its socket completes (with an error) and hands its
    /// buffer back.
    #[test]
    fn refused_and_cancelled() {
        let port = Port::new().unwrap();
        let dead = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let client = stream(Domain::IPV4);
        client
            .bind(&"0.0.0.0:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        port.associate(&client, 5).unwrap();
        let mut connect = ConnectOp::new();
        connect.start(&client, dead).unwrap();
        let e = next(&port);
        let err = connect.finish(Some(&client), e.bytes).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = stream(Domain::IPV4);
        s.connect(&l.local_addr().unwrap().into()).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        port.associate(&s, 6).unwrap();
        let mut recv = RecvOp::new();
        let mut buf = BytesMut::from(&b"kept"[..]);
        buf.reserve(64);
        recv.start(&s, buf).map_err(|(e, _)| e).unwrap();
        drop(s);
        let e = next(&port);
        assert_eq!(e.op, recv.id());
        let (buf, res) = recv.finish(None, e.bytes);
        assert!(res.is_err());
        assert_eq!(&buf[..], b"kept");
        assert!(!recv.in_flight());
        let mut b = [0u8; 1];
        peer.set_read_timeout(WAIT).unwrap();
        assert!(matches!(peer.read(&mut b), Ok(0) | Err(_)));
        let _ = peer.write(b"x");
    }
}
