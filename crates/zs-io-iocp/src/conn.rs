//! The shared connection handle ([`IocpConn`], what handlers see as `zs_io::Conn`).
//!
//! Any thread may call its methods. They only change the shared [`ConnState`]
//! under its mutex and, when the connection's event loop has to act, queue a
//! [`Cmd::Dirty`](crate::event_loop::Cmd::Dirty) for that loop; the loop then
//! reads the state and does the socket work (it owns the socket and every
//! overlapped operation).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zs_io::{Bytes, ConnId, Connection, Error, SendQueue};

use crate::event_loop::{Cmd, LoopHandle};

/// State shared between a connection's handle and its event loop.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Bytes accepted by `send`; the front part may be in flight in a `WSASend`
    /// (it is dropped from the queue only when the send completes, so back-pressure
    /// counts it).
    pub(crate) queue: SendQueue,
    /// Bytes at the front of `queue` currently handed to the kernel.
    pub(crate) in_flight: usize,
    /// A `WSASend` is in flight (the loop will look at the queue again when it ends).
    pub(crate) sending: bool,
    /// No more sends: after close, abort, `shutdown_write` or the connection's end.
    pub(crate) write_closed: bool,
    /// Closing or closed (close, abort or the end).
    pub(crate) closing: bool,
    /// The socket is closed and `on_close` has run (or is running).
    pub(crate) ended: bool,
    /// `close()` was asked for and the loop has not seen it yet.
    pub(crate) want_close: bool,
    /// `abort()` was asked for and the loop has not seen it yet.
    pub(crate) want_abort: bool,
    /// `shutdown_write()` was asked for (FIN once the queue is flushed).
    pub(crate) want_fin: bool,
    /// Reading paused by the handler.
    pub(crate) read_paused: bool,
    /// The idle timeout in force.
    pub(crate) idle: Option<Duration>,
    /// Bumped by `set_idle_timeout`; the loop re-arms its idle check.
    pub(crate) idle_gen: u64,
    /// Timers armed since the loop last looked.
    pub(crate) new_timers: Vec<(Instant, u64)>,
    /// The loop has been told to look (a `Dirty` command is queued).
    pub(crate) dirty: bool,
}

/// The connection handle given to handlers (as `Arc<dyn Connection>`).
#[derive(Debug)]
pub(crate) struct IocpConn {
    id: ConnId,
    peer: SocketAddr,
    local: SocketAddr,
    lp: Arc<LoopHandle>,
    state: Mutex<ConnState>,
}

impl IocpConn {
    pub(crate) fn new(
        id: ConnId,
        peer: SocketAddr,
        local: SocketAddr,
        lp: Arc<LoopHandle>,
        send_queue_limit: usize,
        idle: Option<Duration>,
    ) -> IocpConn {
        IocpConn {
            id,
            peer,
            local,
            lp,
            state: Mutex::new(ConnState {
                queue: SendQueue::new(send_queue_limit),
                in_flight: 0,
                sending: false,
                write_closed: false,
                closing: false,
                ended: false,
                want_close: false,
                want_abort: false,
                want_fin: false,
                read_paused: false,
                idle,
                idle_gen: 0,
                new_timers: Vec::new(),
                dirty: false,
            }),
        }
    }

    /// Locks the shared state (a poisoned lock is still used: the state stays
    /// consistent because no code panics while holding it).
    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the loop to look at this connection (once until it has looked).
    fn poke(&self, st: &mut ConnState) {
        if !st.dirty {
            st.dirty = true;
            self.lp.send(Cmd::Dirty(self.id.0));
        }
    }
}

impl Connection for IocpConn {
    fn id(&self) -> ConnId {
        self.id
    }

    fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn send(&self, data: Bytes) -> Result<(), Error> {
        let mut st = self.lock();
        if st.write_closed {
            return Err(Error::Closed);
        }
        if data.is_empty() {
            return Ok(());
        }
        st.queue.push(data)?;
        if !st.sending {
            self.poke(&mut st);
        }
        Ok(())
    }

    fn queued_bytes(&self) -> usize {
        let st = self.lock();
        st.queue.len().saturating_sub(st.in_flight)
    }

    fn shutdown_write(&self) -> Result<(), Error> {
        let mut st = self.lock();
        if st.write_closed || st.closing {
            return Err(Error::Closed);
        }
        st.write_closed = true;
        st.want_fin = true;
        self.poke(&mut st);
        Ok(())
    }

    fn close(&self) {
        let mut st = self.lock();
        if st.closing {
            return;
        }
        st.closing = true;
        st.write_closed = true;
        st.want_close = true;
        self.poke(&mut st);
    }

    fn abort(&self) {
        let mut st = self.lock();
        if st.ended || st.want_abort {
            return;
        }
        st.closing = true;
        st.write_closed = true;
        st.want_abort = true;
        st.queue.clear();
        st.in_flight = 0;
        self.poke(&mut st);
    }

    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error> {
        let mut st = self.lock();
        if st.closing {
            return Err(Error::Closed);
        }
        let at = Instant::now() + after;
        st.new_timers.push((at, token));
        self.poke(&mut st);
        Ok(())
    }

    fn set_idle_timeout(&self, idle: Option<Duration>) {
        let mut st = self.lock();
        if st.closing {
            return;
        }
        st.idle = idle;
        st.idle_gen += 1;
        self.poke(&mut st);
    }

    fn set_read_paused(&self, paused: bool) {
        let mut st = self.lock();
        if st.closing || st.read_paused == paused {
            return;
        }
        st.read_paused = paused;
        self.poke(&mut st);
    }

    fn is_closed(&self) -> bool {
        let st = self.lock();
        st.closing || st.write_closed
    }
}
