//! The bounded send queue every backend uses (contract item 4 of the crate docs).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

use crate::Error;

/// A bounded FIFO of outgoing byte chunks with the seam's back-pressure rules.
///
/// * [`push`](SendQueue::push) accepts while fewer than `limit` bytes are queued, so
///   at most `limit` + one chunk is ever held; otherwise it returns [`Error::Full`]
///   with the chunk and remembers that the producer waits.
/// * [`take_writable`](SendQueue::take_writable) answers `true` exactly once after
///   such a refusal, when the queue has drained to `limit / 2` or less: the backend
///   then calls `Handler::on_writable`.
/// * [`io_slices`](SendQueue::io_slices) gathers the front chunks for a vectored
///   write; [`advance`](SendQueue::advance) drops what the kernel took.
///
/// ```
/// use zs_io::{Bytes, SendQueue};
/// let mut q = SendQueue::new(8);
/// q.push(Bytes::from_static(b"hello")).unwrap();
/// q.push(Bytes::from_static(b"world")).unwrap(); // 5 < 8: accepted (10 queued)
/// assert!(q.push(Bytes::from_static(b"!")).is_err()); // 10 >= 8: full
/// let mut slices = [std::io::IoSlice::new(&[]); 4];
/// assert_eq!(q.io_slices(&mut slices), 2);
/// q.advance(7); // the kernel took "hellowo"
/// assert_eq!(q.len(), 3);
/// assert!(q.take_writable()); // 3 <= 8 / 2
/// assert!(!q.take_writable());
/// ```
///
/// The front chunk is held inline and only the chunks behind it go to a
/// `VecDeque`, so a connection that queues one chunk at a time (the usual
/// case: a reply or a sealed record per write) never allocates the deque, and
/// an idle connection holds no deque memory (session 12: 128 B per idle
/// connection on both backends).
#[derive(Debug)]
pub struct SendQueue {
    /// The first chunk; `None` only when nothing is queued.
    head: Option<Bytes>,
    /// The chunks behind `head`, in order.
    chunks: VecDeque<Bytes>,
    len: usize,
    limit: usize,
    want_writable: bool,
}

impl SendQueue {
    /// An empty queue bounded by `limit` bytes (at least 1).
    pub fn new(limit: usize) -> SendQueue {
        SendQueue {
            head: None,
            chunks: VecDeque::new(),
            len: 0,
            limit: limit.max(1),
            want_writable: false,
        }
    }

    /// The bound given to [`new`](SendQueue::new).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Queued bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data` (see the type docs); empty chunks are accepted and dropped.
    pub fn push(&mut self, data: Bytes) -> Result<(), Error> {
        if self.len >= self.limit {
            self.want_writable = true;
            return Err(Error::Full(data));
        }
        if !data.is_empty() {
            self.len += data.len();
            if self.head.is_none() {
                self.head = Some(data);
            } else {
                self.chunks.push_back(data);
            }
        }
        Ok(())
    }

    /// Fills `out` with slices of the front chunks; returns how many were filled.
    pub fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in out
            .iter_mut()
            .zip(self.head.iter().chain(self.chunks.iter()))
        {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// The front chunk, for backends that hand owned buffers to the kernel (IOCP).
    pub fn front(&self) -> Option<&Bytes> {
        self.head.as_ref()
    }

    /// Drops the first `n` queued bytes (what a write consumed). `n` larger than
    /// [`len`](SendQueue::len) empties the queue.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.head.as_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.len -= front.len();
                self.head = self.chunks.pop_front();
            } else {
                front.advance(n);
                self.len -= n;
                n = 0;
            }
        }
    }

    /// `true` once after a refused push, as soon as at most `limit / 2` bytes remain.
    pub fn take_writable(&mut self) -> bool {
        if self.want_writable && self.len <= self.limit / 2 {
            self.want_writable = false;
            return true;
        }
        false
    }

    /// Whether [`take_writable`](SendQueue::take_writable) would answer `true` now.
    pub fn writable_due(&self) -> bool {
        self.want_writable && self.len <= self.limit / 2
    }

    /// Drops everything queued (abort) and forgets a pending writable notification.
    pub fn clear(&mut self) {
        self.head = None;
        self.chunks.clear();
        self.len = 0;
        self.want_writable = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One chunk at a time (a reply, a sealed record) stays inline: the deque
    /// behind it is never allocated, so an idle connection holds none.
    #[test]
    fn one_chunk_at_a_time_allocates_no_deque() {
        let mut q = SendQueue::new(1 << 20);
        for i in 0..100usize {
            q.push(Bytes::from(vec![i as u8; 10 + i])).unwrap();
            let mut slices = [IoSlice::new(&[]); 4];
            assert_eq!(q.io_slices(&mut slices), 1);
            assert_eq!(slices[0].len(), 10 + i);
            q.advance(3);
            assert_eq!(q.front().map(Bytes::len), Some(7 + i));
            q.advance(7 + i);
            assert!(q.is_empty() && q.front().is_none());
        }
        assert_eq!(q.chunks.capacity(), 0);
        // A second chunk queues behind the first, in order.
        q.push(Bytes::from_static(b"ab")).unwrap();
        q.push(Bytes::from_static(b"cd")).unwrap();
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(q.io_slices(&mut slices), 2);
        assert_eq!((&*slices[0], &*slices[1]), (&b"ab"[..], &b"cd"[..]));
        q.advance(3);
        assert_eq!(q.front().map(|b| &b[..]), Some(&b"d"[..]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever the pushes and writes, bytes come out in order, nothing is lost,
        /// the queue never holds more than limit + one chunk, and a refused producer is
        /// always woken once the queue drains.
        #[test]
        fn bounded_ordered_and_wakes(limit in 1usize..64, ops in proptest::collection::vec((0usize..40, 0usize..50), 1..60)) {
            let mut q = SendQueue::new(limit);
            let mut expected = Vec::new();
            let mut got = Vec::new();
            let mut counter = 0u8;
            let mut refused = false;
            for (push_len, write_len) in ops {
                let chunk: Vec<u8> = (0..push_len).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                match q.push(Bytes::from(chunk.clone())) {
                    Ok(()) => expected.extend_from_slice(&chunk),
                    Err(Error::Full(b)) => { prop_assert_eq!(&b[..], &chunk[..]); refused = true; counter = counter.wrapping_sub(push_len as u8); }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
                prop_assert!(q.len() < limit + 40);
                let mut slices = [IoSlice::new(&[]); 8];
                let n = q.io_slices(&mut slices);
                let mut flat = Vec::new();
                for s in &slices[..n] { flat.extend_from_slice(s); }
                let take = write_len.min(flat.len());
                got.extend_from_slice(&flat[..take]);
                q.advance(take);
                if q.take_writable() { prop_assert!(refused); refused = false; prop_assert!(q.len() <= limit / 2); }
            }
            // drain
            while !q.is_empty() {
                let mut slices = [IoSlice::new(&[]); 8];
                let n = q.io_slices(&mut slices);
                let mut flat = Vec::new();
                for s in &slices[..n] { flat.extend_from_slice(s); }
                got.extend_from_slice(&flat);
                q.advance(flat.len());
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(q.take_writable(), refused);
        }
    }
}
