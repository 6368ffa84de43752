//! A runtime-agnostic one-shot result: a `Future` for async code and a blocking
//! `wait` for threads. zs-core depends on no async runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::{Error, Result};

struct Slot<T> {
    value: Option<Result<T>>,
    waker: Option<Waker>,
    taken: bool,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    cv: Condvar,
}

/// The completing half; dropping it unfulfilled completes the call with
/// [`Error::ConnectionLost`].
pub(crate) struct Completer<T> {
    shared: Option<Arc<Shared<T>>>,
}

impl<T> Completer<T> {
    pub(crate) fn complete(mut self, value: Result<T>) {
        if let Some(s) = self.shared.take() {
            fill(&s, value);
        }
    }
}

fn fill<T>(s: &Shared<T>, value: Result<T>) {
    let waker = {
        let mut g = s.slot.lock().unwrap_or_else(|p| p.into_inner());
        g.value = Some(value);
        g.waker.take()
    };
    s.cv.notify_all();
    if let Some(w) = waker {
        w.wake();
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            fill(
                &s,
                Err(Error::ConnectionLost(
                    "the call was dropped unanswered".into(),
                )),
            );
        }
    }
}

/// The outcome of a call: `.await` it (any executor) or [`CallFuture::wait`] on a
/// thread.
pub struct CallFuture<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for CallFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallFuture")
    }
}

pub(crate) fn channel<T>() -> (Completer<T>, CallFuture<T>) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot {
            value: None,
            waker: None,
            taken: false,
        }),
        cv: Condvar::new(),
    });
    (
        Completer {
            shared: Some(shared.clone()),
        },
        CallFuture { shared },
    )
}

impl<T> CallFuture<T> {
    /// A future that is already complete.
    pub(crate) fn ready(value: Result<T>) -> CallFuture<T> {
        let (c, f) = channel();
        c.complete(value);
        f
    }

    /// Blocks the thread until the outcome is known. Every call completes (answer,
    /// error, its timeout, or the connection's end), so this does not hang on a
    /// dead connection.
    pub fn wait(self) -> Result<T> {
        let mut g = self.shared.slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = g.value.take() {
                g.taken = true;
                return v;
            }
            g = self.shared.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`CallFuture::wait`], but gives up after `limit` with [`Error::TimedOut`].
    pub fn wait_timeout(self, limit: Duration) -> Result<T> {
        let deadline = std::time::Instant::now() + limit;
        let mut g = self.shared.slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = g.value.take() {
                g.taken = true;
                return v;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(Error::TimedOut);
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl<T> Future for CallFuture<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut g = self.shared.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.value.take() {
            g.taken = true;
            return Poll::Ready(v);
        }
        if g.taken {
            return Poll::Ready(Err(Error::Config(
                "CallFuture polled after completion".into(),
            )));
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_across_threads_and_on_drop() {
        let (c, f) = channel::<u32>();
        std::thread::spawn(move || c.complete(Ok(7)));
        assert_eq!(f.wait().unwrap(), 7);
        let (c, f) = channel::<u32>();
        drop(c);
        assert!(matches!(f.wait(), Err(Error::ConnectionLost(_))));
        let (_c, f) = channel::<u32>();
        assert!(matches!(
            f.wait_timeout(Duration::from_millis(10)),
            Err(Error::TimedOut)
        ));
    }
}
