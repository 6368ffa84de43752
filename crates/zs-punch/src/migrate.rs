//! Moving a live byte stream between paths (relay ⇄ direct) without loss or duplication.
//!
//! A sans-IO [`Stream`] per side: the bytes the application writes get stream offsets
//! (like TCP sequence numbers); they stay in a bounded send buffer until the peer's
//! cumulative ACK covers them. Frames go out on whichever path is current; on a switch
//! ([`Stream::rewind`]) everything not yet acknowledged is sent again on the new path.
//! The receiver accepts frames from any path and keeps exactly the bytes at its next
//! offset: a retransmitted or late duplicate is trimmed, a gap is a protocol error (a
//! path is ordered, and a sender never skips ahead of what was acknowledged).
//!
//! Frame (inside whatever framing the path has):
//! `type:u8` (1 DATA, 2 ACK, 3 FIN), `offset:u64be`, and for DATA `len:u16be` + bytes
//! (≤ [`MAX_DATA`]). ACK's offset is the next byte expected; FIN's is the stream's end.

use std::collections::VecDeque;

/// Largest DATA payload.
pub const MAX_DATA: usize = 16 * 1024;

/// A frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes at `offset`.
    Data {
        /// Stream offset of the first byte.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Everything below `next` arrived.
    Ack {
        /// The next offset expected.
        next: u64,
    },
    /// The stream ends at `end`.
    Fin {
        /// Total length.
        end: u64,
    },
}

/// Protocol violation by the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// Malformed frame.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// DATA beyond the next expected offset (a gap).
    #[error("gap: data at {offset}, expected {expected}")]
    Gap {
        /// Offset received.
        offset: u64,
        /// Offset expected.
        expected: u64,
    },
    /// ACK for bytes never sent.
    #[error("ack {0} beyond what was sent")]
    AckBeyond(u64),
    /// The receive buffer is full (the application does not read).
    #[error("receive buffer full")]
    RecvFull,
    /// FIN disagrees with data already seen.
    #[error("bad fin")]
    BadFin,
}

impl Frame {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        match self {
            Frame::Data { offset, bytes } => {
                o.push(1);
                o.extend_from_slice(&offset.to_be_bytes());
                o.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                o.extend_from_slice(bytes);
            }
            Frame::Ack { next } => {
                o.push(2);
                o.extend_from_slice(&next.to_be_bytes());
            }
            Frame::Fin { end } => {
                o.push(3);
                o.extend_from_slice(&end.to_be_bytes());
            }
        }
        o
    }

    /// Decode one whole frame.
    pub fn decode(b: &[u8]) -> Result<Frame, MigrateError> {
        if b.len() < 9 {
            return Err(MigrateError::Malformed("short"));
        }
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[1..9]);
        let offset = u64::from_be_bytes(off);
        match b[0] {
            1 => {
                if b.len() < 11 {
                    return Err(MigrateError::Malformed("short data"));
                }
                let n = usize::from(u16::from_be_bytes([b[9], b[10]]));
                if n > MAX_DATA || b.len() != 11 + n {
                    return Err(MigrateError::Malformed("data length"));
                }
                Ok(Frame::Data {
                    offset,
                    bytes: b[11..].to_vec(),
                })
            }
            2 if b.len() == 9 => Ok(Frame::Ack { next: offset }),
            3 if b.len() == 9 => Ok(Frame::Fin { end: offset }),
            _ => Err(MigrateError::Malformed("type")),
        }
    }
}

/// One side of a migratable stream.
#[derive(Debug)]
pub struct Stream {
    // Send side.
    unacked: VecDeque<u8>,
    /// Offset of `unacked[0]` (everything below is acknowledged).
    acked: u64,
    /// Next offset to put on the current path.
    next_send: u64,
    max_unacked: usize,
    fin_requested: bool,
    fin_sent: bool,
    // Receive side.
    recv: VecDeque<u8>,
    /// Next offset expected.
    next_recv: u64,
    /// Last ACK we sent.
    ack_sent: u64,
    max_recv: usize,
    fin_at: Option<u64>,
    /// Bytes received more than once (trimmed): visible for tests and stats.
    pub duplicate_bytes: u64,
}

impl Stream {
    /// A stream holding at most `max_unacked` unacknowledged bytes and `max_recv`
    /// unread bytes.
    pub fn new(max_unacked: usize, max_recv: usize) -> Stream {
        Stream {
            unacked: VecDeque::new(),
            acked: 0,
            next_send: 0,
            max_unacked,
            fin_requested: false,
            fin_sent: false,
            recv: VecDeque::new(),
            next_recv: 0,
            ack_sent: 0,
            max_recv,
            fin_at: None,
            duplicate_bytes: 0,
        }
    }

    /// Queue bytes; returns how many fit (0 when the window is full: wait for ACKs).
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.fin_requested {
            return 0;
        }
        let n = data.len().min(self.max_unacked - self.unacked.len());
        self.unacked.extend(&data[..n]);
        n
    }

    /// No more bytes will be written.
    pub fn finish(&mut self) {
        self.fin_requested = true;
    }

    /// Take unread bytes.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.recv.len());
        for (o, b) in out.iter_mut().zip(self.recv.drain(..n)) {
            *o = b;
        }
        n
    }

    /// All bytes of the peer's stream were read.
    pub fn is_read_closed(&self) -> bool {
        self.fin_at == Some(self.next_recv) && self.recv.is_empty()
    }

    /// All our bytes (and FIN) were acknowledged.
    pub fn is_write_done(&self) -> bool {
        self.fin_requested && self.unacked.is_empty() && self.fin_sent
    }

    /// Bytes written but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The path changed: send everything unacknowledged again (and re-announce our
    /// ACK and FIN) on the new one.
    pub fn rewind(&mut self) {
        self.next_send = self.acked;
        self.ack_sent = u64::MAX; // force an ACK
        self.fin_sent = false;
    }

    /// The next frame to send on the current path, if any.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        if self.ack_sent != self.next_recv {
            self.ack_sent = self.next_recv;
            return Some(Frame::Ack {
                next: self.next_recv,
            });
        }
        let end = self.acked + self.unacked.len() as u64;
        if self.next_send < end {
            let start = (self.next_send - self.acked) as usize;
            let n = (end - self.next_send).min(MAX_DATA as u64) as usize;
            let bytes: Vec<u8> = self.unacked.range(start..start + n).copied().collect();
            let f = Frame::Data {
                offset: self.next_send,
                bytes,
            };
            self.next_send += n as u64;
            return Some(f);
        }
        if self.fin_requested && !self.fin_sent {
            self.fin_sent = true;
            return Some(Frame::Fin { end });
        }
        None
    }

    /// A frame arrived (from any path).
    pub fn on_frame(&mut self, f: Frame) -> Result<(), MigrateError> {
        match f {
            Frame::Data { offset, bytes } => {
                let len = bytes.len() as u64;
                if offset > self.next_recv {
                    return Err(MigrateError::Gap {
                        offset,
                        expected: self.next_recv,
                    });
                }
                let skip = (self.next_recv - offset).min(len);
                self.duplicate_bytes += skip;
                let fresh = &bytes[skip as usize..];
                if self.recv.len() + fresh.len() > self.max_recv {
                    return Err(MigrateError::RecvFull);
                }
                if let Some(end) = self.fin_at {
                    if self.next_recv + fresh.len() as u64 > end {
                        return Err(MigrateError::BadFin);
                    }
                }
                self.recv.extend(fresh);
                self.next_recv += fresh.len() as u64;
            }
            Frame::Ack { next } => {
                let sent_end = self.acked + self.unacked.len() as u64;
                if next > sent_end {
                    return Err(MigrateError::AckBeyond(next));
                }
                if next > self.acked {
                    self.unacked.drain(..(next - self.acked) as usize);
                    self.acked = next;
                    if self.next_send < next {
                        self.next_send = next;
                    }
                }
            }
            Frame::Fin { end } => {
                if end < self.next_recv || self.fin_at.is_some_and(|e| e != end) {
                    return Err(MigrateError::BadFin);
                }
                self.fin_at = Some(end);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An in-memory path: frames in flight, in order; it can die (drop what is in
    /// flight) or linger (deliver its backlog late, after the switch).
    #[derive(Default)]
    struct Path {
        a_to_b: VecDeque<Vec<u8>>,
        b_to_a: VecDeque<Vec<u8>>,
    }

    struct Run {
        a: Stream,
        b: Stream,
        paths: [Path; 2],
        cur: usize,
        sent: Vec<u8>,
        got: Vec<u8>,
    }

    impl Run {
        fn new(window: usize) -> Run {
            Run {
                a: Stream::new(window, 1 << 20),
                b: Stream::new(window, 1 << 20),
                paths: [Path::default(), Path::default()],
                cur: 0,
                sent: Vec::new(),
                got: Vec::new(),
            }
        }
        fn transmit(&mut self) {
            while let Some(f) = self.a.poll_transmit() {
                self.paths[self.cur].a_to_b.push_back(f.encode());
            }
            while let Some(f) = self.b.poll_transmit() {
                self.paths[self.cur].b_to_a.push_back(f.encode());
            }
        }
        /// Deliver up to `n` frames each way on path `p`.
        fn deliver(&mut self, p: usize, n: usize) {
            for _ in 0..n {
                if let Some(f) = self.paths[p].a_to_b.pop_front() {
                    self.b.on_frame(Frame::decode(&f).unwrap()).unwrap();
                }
                if let Some(f) = self.paths[p].b_to_a.pop_front() {
                    self.a.on_frame(Frame::decode(&f).unwrap()).unwrap();
                }
            }
            let mut buf = [0u8; 4096];
            loop {
                let n = self.b.read(&mut buf);
                if n == 0 {
                    break;
                }
                self.got.extend_from_slice(&buf[..n]);
            }
        }
        fn switch(&mut self, kill_old: bool) {
            if kill_old {
                self.paths[self.cur] = Path::default();
            }
            self.cur = 1 - self.cur;
            self.a.rewind();
            self.b.rewind();
        }
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Relay → direct in the middle of a transfer while the relay still holds frames
    /// in flight (delivered late): every byte arrives once, in order.
    #[test]
    fn upgrade_mid_transfer_no_loss_no_duplication() {
        let mut r = Run::new(64 * 1024);
        let payload = data(300_000, 1);
        let mut pos = 0;
        let mut switched = false;
        while r.got.len() < payload.len() {
            pos += r.a.write(&payload[pos..]);
            r.sent = payload[..pos].to_vec();
            r.transmit();
            if !switched && r.got.len() > 100_000 {
                r.switch(false); // the old path lingers
                switched = true;
            }
            r.deliver(r.cur, 3);
            r.deliver(1 - r.cur, 1); // late frames from the other path
        }
        r.a.finish();
        for _ in 0..10 {
            r.transmit();
            r.deliver(r.cur, 10);
            r.deliver(1 - r.cur, 10);
        }
        assert!(switched);
        assert_eq!(r.got, payload);
        assert!(r.b.is_read_closed());
        assert!(r.a.is_write_done());
        assert!(r.b.duplicate_bytes > 0, "the late path delivered duplicates");
    }

    /// The direct path dies with frames in flight: back on the relay, the unacked bytes
    /// are sent again and nothing is lost.
    #[test]
    fn direct_path_dies_connection_survives_on_the_relay() {
        let mut r = Run::new(32 * 1024);
        let payload = data(200_000, 7);
        let mut pos = 0;
        let mut died = false;
        while r.got.len() < payload.len() {
            pos += r.a.write(&payload[pos..]);
            r.transmit();
            if !died && r.got.len() > 50_000 {
                r.switch(true);
                died = true;
            }
            r.deliver(r.cur, 2);
        }
        assert_eq!(r.got, payload);
    }

    /// The window bounds memory: a writer cannot queue more than `max_unacked`.
    #[test]
    fn window_bounds_unacked_bytes() {
        let mut s = Stream::new(1000, 1000);
        assert_eq!(s.write(&[0; 5000]), 1000);
        assert_eq!(s.write(&[0; 10]), 0);
        assert_eq!(s.unacked(), 1000);
    }

    /// Hostile peer: a gap, an ack for unsent bytes, an overflowing sender, a bad FIN.
    #[test]
    fn hostile_frames_are_errors() {
        let mut s = Stream::new(100, 10);
        assert!(matches!(
            s.on_frame(Frame::Data {
                offset: 5,
                bytes: vec![1]
            }),
            Err(MigrateError::Gap { .. })
        ));
        assert_eq!(
            s.on_frame(Frame::Ack { next: 1 }),
            Err(MigrateError::AckBeyond(1))
        );
        assert_eq!(
            s.on_frame(Frame::Data {
                offset: 0,
                bytes: vec![0; 11]
            }),
            Err(MigrateError::RecvFull)
        );
        s.on_frame(Frame::Data {
            offset: 0,
            bytes: vec![0; 4],
        })
        .unwrap();
        assert_eq!(s.on_frame(Frame::Fin { end: 2 }), Err(MigrateError::BadFin));
        assert!(Frame::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).is_err());
    }

    proptest! {
        /// Any schedule of switches, path deaths and interleavings delivers the stream
        /// exactly once, in order.
        #[test]
        fn any_schedule_delivers_exactly_once(
            len in 1usize..60_000,
            steps in proptest::collection::vec((0u8..6, 1usize..5), 1..200),
        ) {
            let mut r = Run::new(8 * 1024);
            let payload = data(len, 3);
            let mut pos = 0;
            for (op, n) in steps {
                pos += r.a.write(&payload[pos..]);
                r.transmit();
                match op {
                    0 => r.switch(false),
                    1 => r.switch(true),
                    2 => r.deliver(1 - r.cur, n),
                    _ => r.deliver(r.cur, n),
                }
            }
            // Settle on the current path.
            for _ in 0..1000 {
                if r.got.len() == payload.len() { break; }
                pos += r.a.write(&payload[pos..]);
                r.transmit();
                r.deliver(r.cur, 8);
            }
            prop_assert_eq!(r.got, payload);
        }

        #[test]
        fn frames_round_trip(offset in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            for f in [Frame::Data { offset, bytes: bytes.clone() }, Frame::Ack { next: offset }, Frame::Fin { end: offset }] {
                prop_assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
            }
        }
    }
}
