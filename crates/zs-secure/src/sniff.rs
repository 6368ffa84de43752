//! First-byte sniffing on the listen side: custom protocols beside the
//! secure one on the same port ([`SecureBackend::listen_with_raw`]).
//!
//! Every handshake this layer's providers speak starts with a handshake
//! record, first byte `0x16` (zs1 and TLS 1.3 alike). An accepted connection
//! waits for its first byte; `0x16` hands it to the secure layer (from then on
//! exactly as [`SecureBackend::listen`]: its admission caps, its handshake
//! timeout, the user's factory once keys exist), anything else to a plain
//! handler made by the caller's `raw` factory, which sees the connection from
//! its first byte on.
//!
//! Bounds: the wait for the first byte is bounded by
//! [`SecureConfig::handshake_timeout`](crate::SecureConfig::handshake_timeout)
//! (a silent peer is closed then and counted in `handshake_timeouts`), and the
//! connections waiting for it by [`SecureConfig::max_handshakes`](crate::SecureConfig::max_handshakes)
//! (one more is reset at accept, counted in `handshakes_refused`). A peer that
//! sends `0x16` and stalls is the layer's: its handshake timeout runs from that
//! byte. Timer tokens with bit 63 set belong to the sniffer: a raw handler
//! must not use them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use zs_io::{CloseReason, Conn, Handler, HandlerFactory, Listener};

use crate::conn::SecureHandler;
use crate::{Counters, Layer, SecureBackend};

/// The first byte of every handshake the layer speaks (a handshake record).
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;

/// The sniffer's own timer: no first byte within the handshake timeout.
const T_SNIFF: u64 = 1 << 63 | 0x736e_6966;

impl SecureBackend {
    /// Listens on `addr` like [`Backend::listen`](zs_io::Backend::listen), plus custom-protocol mode:
    /// a connection whose first byte is not a handshake record (`0x16`) is
    /// handed to a plain handler made by `raw` (raw bytes beside the secure
    /// protocol, on the same port); the others get the secure layer and, once
    /// keys exist, a handler made by `factory`. See the module docs of
    /// `sniff.rs` for the bounds.
    pub fn listen_with_raw(
        &self,
        addr: SocketAddr,
        factory: HandlerFactory,
        raw: HandlerFactory,
    ) -> Result<Box<dyn Listener>, zs_io::Error> {
        let layer = self.layer.clone();
        let waiting = Arc::new(AtomicUsize::new(0));
        self.inner.listen(
            addr,
            Arc::new(move || {
                Box::new(Sniff {
                    layer: layer.clone(),
                    factory: factory.clone(),
                    raw: raw.clone(),
                    waiting: waiting.clone(),
                    counted: false,
                    chosen: None,
                }) as Box<dyn Handler>
            }),
        )
    }
}

/// One accepted connection before and after its first byte.
struct Sniff {
    layer: Arc<Layer>,
    factory: HandlerFactory,
    raw: HandlerFactory,
    /// Connections of this listener waiting for their first byte.
    waiting: Arc<AtomicUsize>,
    /// This connection is counted in `waiting`.
    counted: bool,
    /// The handler the first byte chose (secure layer or raw).
    chosen: Option<Box<dyn Handler>>,
}

impl Sniff {
    fn uncount(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Handler for Sniff {
    fn on_open(&mut self, conn: &Conn) {
        let max = self.layer.cfg.max_handshakes;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            Counters::bump(&self.layer.counters.handshakes_refused);
            tracing::warn!(
                conn = conn.id().0,
                peer = %conn.peer_addr(),
                "zs-secure: {max} connections wait for their first byte (max_handshakes); resetting"
            );
            conn.abort();
            return;
        }
        self.counted = true;
        if conn
            .set_timer(self.layer.cfg.handshake_timeout, T_SNIFF)
            .is_err()
        {
            conn.abort();
        }
    }

    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        if let Some(h) = &mut self.chosen {
            return h.on_data(conn, data);
        }
        let Some(&first) = data.first() else {
            return;
        };
        self.uncount();
        let mut h: Box<dyn Handler> = if first == HANDSHAKE_RECORD {
            Box::new(SecureHandler::server(
                self.layer.clone(),
                self.factory.clone(),
            ))
        } else {
            tracing::debug!(conn = conn.id().0, "zs-secure: custom protocol connection");
            (self.raw)()
        };
        h.on_open(conn);
        h.on_data(conn, data);
        self.chosen = Some(h);
    }

    fn on_eof(&mut self, conn: &Conn) {
        match &mut self.chosen {
            Some(h) => h.on_eof(conn),
            None => conn.close(),
        }
    }

    fn on_writable(&mut self, conn: &Conn) {
        if let Some(h) = &mut self.chosen {
            h.on_writable(conn);
        }
    }

    fn on_timer(&mut self, conn: &Conn, token: u64) {
        if token == T_SNIFF {
            if self.chosen.is_none() {
                Counters::bump(&self.layer.counters.handshake_timeouts);
                tracing::warn!(
                    conn = conn.id().0,
                    peer = %conn.peer_addr(),
                    "zs-secure: no first byte within {:?}; closing",
                    self.layer.cfg.handshake_timeout
                );
                self.uncount();
                conn.abort();
            }
            return;
        }
        if let Some(h) = &mut self.chosen {
            h.on_timer(conn, token);
        }
    }

    fn on_close(&mut self, conn: &Conn, reason: CloseReason) {
        self.uncount();
        if let Some(h) = &mut self.chosen {
            h.on_close(conn, reason);
        }
    }
}
