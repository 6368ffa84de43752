//! A virtual connection as a [`zs_io::Connection`].

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use zs_io::{CloseReason, ConnId, Connection, Error};

use super::driver::{
    Deferred, Idle, State, CLOSING, DONE, GONE, MUX_CLOSED, PAUSED, PEER_FIN, WANT_WRITABLE,
    WR_SHUT_REQ,
};
use super::Inner;
use crate::StreamId;

/// One virtual connection's handle (shared as a `zs_io::Conn`).
pub(crate) struct VConn {
    id: ConnId,
    sid: StreamId,
    local: SocketAddr,
    peer: SocketAddr,
    inner: Weak<Inner>,
}

impl VConn {
    /// `serial` is the tunnel end's process-unique number: the id is
    /// `serial << 32 | stream id`, the same for every handle of one connection and
    /// different for the two ends of one stream.
    pub(crate) fn new(
        serial: u64,
        sid: StreamId,
        local: SocketAddr,
        peer: SocketAddr,
        inner: Weak<Inner>,
    ) -> VConn {
        VConn {
            id: ConnId(serial << 32 | u64::from(sid.0)),
            sid,
            local,
            peer,
            inner,
        }
    }

    /// Runs `f` on this connection's slot under the tunnel lock, then pushes output
    /// and wakes the loop if needed. `None` if the tunnel or the slot is gone.
    fn with<T>(&self, f: impl FnOnce(&mut State, &Inner) -> T) -> Option<T> {
        let inner = self.inner.upgrade()?;
        let mut st = inner.lock();
        if !st.slots.contains_key(&self.sid) {
            return None;
        }
        let out = f(&mut st, &inner);
        st.after_op();
        Some(out)
    }
}

impl Connection for VConn {
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
        let sid = self.sid;
        let r = self.with(|st, inner| {
            let slot = st.slots.get_mut(&sid).ok_or(Error::Closed)?;
            if slot.flags & (CLOSING | DONE | GONE | WR_SHUT_REQ) != 0 {
                return Err(Error::Closed);
            }
            if data.is_empty() {
                return Ok(());
            }
            let queued = st.backlog_len(sid);
            if queued >= inner.send_queue_limit {
                if let Some(slot) = st.slots.get_mut(&sid) {
                    slot.flags |= WANT_WRITABLE;
                }
                return Err(Error::Full(data));
            }
            st.touch(sid);
            let rest = if queued == 0 {
                let len = data.len();
                match st.mux.send_bytes(sid, data.clone()) {
                    Ok(n) if n >= len => None,
                    Ok(n) => Some(data.slice(n..)),
                    Err(_) => return Err(Error::Closed),
                }
            } else {
                Some(data)
            };
            if let Some(rest) = rest {
                let b = st.bufs_mut(sid);
                b.backlog_len += rest.len();
                b.backlog.push_back(rest);
            }
            Ok(())
        });
        r.unwrap_or(Err(Error::Closed))
    }

    fn queued_bytes(&self) -> usize {
        let sid = self.sid;
        let Some(inner) = self.inner.upgrade() else {
            return 0;
        };
        let st = inner.lock();
        st.backlog_len(sid)
    }

    fn shutdown_write(&self) -> Result<(), Error> {
        let sid = self.sid;
        self.with(|st, _| {
            let slot = st.slots.get_mut(&sid).ok_or(Error::Closed)?;
            if slot.flags & (CLOSING | DONE | GONE | WR_SHUT_REQ) != 0 {
                return Err(Error::Closed);
            }
            slot.flags |= WR_SHUT_REQ;
            st.push_backlog(sid);
            Ok(())
        })
        .unwrap_or(Err(Error::Closed))
    }

    fn close(&self) {
        let sid = self.sid;
        self.with(|st, inner| {
            let Some(slot) = st.slots.get_mut(&sid) else {
                return;
            };
            if slot.flags & (CLOSING | DONE) != 0 {
                return;
            }
            if slot.reason.is_none() {
                // TCP's view: closing after the peer finished is a normal end.
                slot.reason = Some(if slot.has(PEER_FIN) {
                    CloseReason::PeerClosed
                } else {
                    CloseReason::Local
                });
            }
            slot.flags |= CLOSING;
            slot.flags &= !WANT_WRITABLE;
            if slot.has(GONE) {
                slot.flags |= MUX_CLOSED;
            }
            st.push_backlog(sid);
            st.add_linger_timer(sid, inner.close_linger);
            // Unread data is discarded from now on (returning the peer's credit).
            st.schedule(sid);
        });
    }

    fn abort(&self) {
        let sid = self.sid;
        self.with(|st, _| {
            let Some(slot) = st.slots.get_mut(&sid) else {
                return;
            };
            if slot.has(DONE) {
                return;
            }
            if slot.reason.is_none() {
                slot.reason = Some(CloseReason::Local);
            }
            slot.flags |= CLOSING;
            if !slot.has(GONE) {
                slot.flags |= GONE | MUX_CLOSED;
                st.mux.reset(sid);
            }
            st.defer(Deferred::Finish(sid, CloseReason::Local));
        });
    }

    fn set_timer(&self, after: Duration, token: u64) -> Result<(), Error> {
        let sid = self.sid;
        self.with(|st, _| {
            let slot = st.slots.get(&sid).ok_or(Error::Closed)?;
            if slot.flags & (CLOSING | DONE) != 0 {
                return Err(Error::Closed);
            }
            st.add_user_timer(sid, after, token);
            Ok(())
        })
        .unwrap_or(Err(Error::Closed))
    }

    fn set_idle_timeout(&self, idle: Option<Duration>) {
        let sid = self.sid;
        self.with(|st, _| {
            let Some(slot) = st.slots.get_mut(&sid) else {
                return;
            };
            if slot.has(DONE) {
                return;
            }
            match idle {
                None => {
                    if let Some(b) = st.bufs.get_mut(&sid) {
                        b.idle = None;
                    }
                }
                Some(after) => {
                    let now = Instant::now();
                    st.bufs_mut(sid).idle = Some(Idle { after, last: now });
                    st.add_idle_timer(sid, now + after);
                }
            }
        });
    }

    fn set_read_paused(&self, paused: bool) {
        let sid = self.sid;
        self.with(|st, _| {
            let Some(slot) = st.slots.get_mut(&sid) else {
                return;
            };
            if paused {
                slot.flags |= PAUSED;
            } else if slot.has(PAUSED) {
                slot.flags &= !PAUSED;
                st.schedule(sid);
            }
        });
    }

    fn is_closed(&self) -> bool {
        let Some(inner) = self.inner.upgrade() else {
            return true;
        };
        let st = inner.lock();
        st.slots
            .get(&self.sid)
            .is_none_or(|s| s.flags & (CLOSING | DONE) != 0)
    }
}
