//! One timer structure per backend, driven by one `Sleep` (issue 13, session
//! 13): connections keep no `Sleep` and no heap of their own.
//!
//! Every pending timer of every connection is one 32-byte [`Entry`] in a
//! shared binary heap: its instant (nanoseconds after the structure's base),
//! a sequence number (timers of one instant fire in the order they were set),
//! the handler's token and a `Weak` pointer to the connection. One driver task
//! sleeps until the soonest entry, then hands each due entry to its connection
//! ([`Target::fire`]) outside the heap's lock. Entries are never cancelled
//! (the seam has no cancel): one whose connection is gone is dropped when it
//! comes due.
//!
//! What it replaced, per idle connection: a `Sleep` in the task (about 120 B)
//! and a `BinaryHeap` of the connection's timers (128 B with its capacity of
//! 4), against about 3 live entries (96 B) here, in one allocation whose
//! untouched capacity costs no RSS.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::lock;

/// What a due entry is handed to.
pub(crate) trait Target: Send + Sync {
    /// Entry `token` came due; `internal` entries are the connection's own
    /// deadlines (idle timeout, close linger), not a handler's timer.
    fn fire(&self, token: u64, internal: bool);
}

/// The high bit of [`Entry::seq`] marks an internal entry.
const INTERNAL: u64 = 1 << 63;

struct Entry<T> {
    /// Nanoseconds after [`Inner::base`].
    at: u64,
    /// Order of arming (low 63 bits), [`INTERNAL`] flag (high bit).
    seq: u64,
    token: u64,
    to: Weak<T>,
}

impl<T> Entry<T> {
    fn key(&self) -> (u64, u64) {
        (self.at, self.seq & !INTERNAL)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.key().cmp(&o.key())
    }
}

struct Inner<T> {
    base: Instant,
    heap: BinaryHeap<Reverse<Entry<T>>>,
    seq: u64,
    /// The instant the driver sleeps until (`None`: it waits for an entry).
    armed: Option<u64>,
    /// The driver's waker while it waits.
    waker: Option<Waker>,
    shut: bool,
}

/// The shared timer structure (see the module docs).
pub(crate) struct Timers<T> {
    inner: Mutex<Inner<T>>,
}

/// Most entries one round of the driver hands out before it re-checks the
/// clock (bounds the driver's local batch).
const BATCH: usize = 256;

impl<T: Target + 'static> Timers<T> {
    pub(crate) fn new() -> Arc<Timers<T>> {
        Arc::new(Timers {
            inner: Mutex::new(Inner {
                base: Instant::now(),
                heap: BinaryHeap::new(),
                seq: 0,
                armed: None,
                waker: None,
                shut: false,
            }),
        })
    }

    /// Starts the driver task on `handle`; it ends at [`Timers::shutdown`].
    pub(crate) fn start(self: &Arc<Timers<T>>, handle: &Handle) {
        let t = self.clone();
        handle.spawn(async move { t.drive().await });
    }

    /// Arms a timer for `to` at `at`.
    pub(crate) fn arm(&self, at: Instant, token: u64, internal: bool, to: Weak<T>) {
        let mut g = lock(&self.inner);
        if g.shut {
            return;
        }
        let at = ns(at.saturating_duration_since(g.base));
        g.seq = (g.seq + 1) & !INTERNAL;
        let seq = g.seq | if internal { INTERNAL } else { 0 };
        g.heap.push(Reverse(Entry { at, seq, token, to }));
        if g.armed.is_none_or(|a| at < a) {
            if let Some(w) = g.waker.take() {
                drop(g);
                w.wake();
            }
        }
    }

    /// Ends the driver; later [`arm`](Timers::arm)s are ignored.
    pub(crate) fn shutdown(&self) {
        let w = {
            let mut g = lock(&self.inner);
            g.shut = true;
            g.heap = BinaryHeap::new();
            g.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Live entries (tests).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        lock(&self.inner).heap.len()
    }

    async fn drive(self: Arc<Timers<T>>) {
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
        let mut sleep_at: Option<u64> = None;
        let mut due: Vec<(Weak<T>, u64, bool)> = Vec::new();
        loop {
            let go_on = std::future::poll_fn(|cx| loop {
                let mut g = lock(&self.inner);
                if g.shut {
                    return Poll::Ready(false);
                }
                let now = ns(Instant::now().saturating_duration_since(g.base));
                while due.len() < BATCH {
                    match g.heap.peek() {
                        Some(Reverse(e)) if e.at <= now => {}
                        _ => break,
                    }
                    let Some(Reverse(e)) = g.heap.pop() else {
                        break;
                    };
                    due.push((e.to, e.token, e.seq & INTERNAL != 0));
                }
                if !due.is_empty() {
                    g.armed = None;
                    return Poll::Ready(true);
                }
                let next = g.heap.peek().map(|Reverse(e)| e.at);
                g.armed = next;
                if !g.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    g.waker = Some(cx.waker().clone());
                }
                let base = g.base;
                drop(g);
                let Some(at) = next else {
                    return Poll::Pending;
                };
                if sleep_at != Some(at) {
                    sleep.as_mut().reset(base + Duration::from_nanos(at));
                    sleep_at = Some(at);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                sleep_at = None;
            })
            .await;
            if !go_on {
                return;
            }
            for (to, token, internal) in due.drain(..) {
                if let Some(t) = to.upgrade() {
                    t.fire(token, internal);
                }
            }
            if due.capacity() > BATCH {
                due = Vec::new();
            }
        }
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Rec(Mutex<mpsc::Sender<(u64, bool, Instant)>>);
    impl Target for Rec {
        fn fire(&self, token: u64, internal: bool) {
            let _ = lock(&self.0).send((token, internal, Instant::now()));
        }
    }

    /// An entry is 32 bytes (the per-connection cost of a pending timer).
    #[test]
    fn an_entry_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Reverse<Entry<Rec>>>(), 32);
    }

    /// Entries fire never early, soonest first, those of one instant in the
    /// order they were armed, each once; an entry whose target is gone is
    /// dropped; the shared heap is empty afterwards.
    #[test]
    fn entries_fire_in_order_never_early_and_once() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let t = Timers::<Rec>::new();
        t.start(rt.handle());
        let (tx, rx) = mpsc::channel();
        let rec = Arc::new(Rec(Mutex::new(tx)));
        let gone = Arc::new(Rec(Mutex::new(mpsc::channel().0)));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        t.arm(at(60), 3, false, Arc::downgrade(&rec));
        t.arm(at(20), 1, true, Arc::downgrade(&rec));
        t.arm(at(60), 4, false, Arc::downgrade(&rec));
        t.arm(at(10), 9, false, Arc::downgrade(&gone));
        drop(gone);
        t.arm(at(40), 2, false, Arc::downgrade(&rec));
        let wait = Duration::from_secs(10);
        let mut got = Vec::new();
        for _ in 0..4 {
            let (token, internal, when) = rx.recv_timeout(wait).unwrap();
            let due = [0, 20, 40, 60, 60][token as usize];
            assert!(when >= at(due), "token {token} fired early");
            got.push((token, internal));
        }
        assert_eq!(got, [(1, true), (2, false), (3, false), (4, false)]);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert_eq!(t.pending(), 0);
        t.shutdown();
        t.arm(at(0), 5, false, Arc::downgrade(&rec));
        assert_eq!(t.pending(), 0);
    }
}
