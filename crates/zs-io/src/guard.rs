//! Helpers that keep one misbehaving connection from taking an event loop down:
//! [`catch_handler_panic`] (every backend wraps each [`Handler`](crate::Handler)
//! callback and handler factory call in it) and [`AcceptBackoff`] (pacing accept
//! retries while the process is out of file descriptors).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ConnId;

static HANDLER_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many handler callbacks (and handler factory calls) have panicked in this
/// process so far, over all backends; each was caught by [`catch_handler_panic`].
pub fn handler_panics() -> u64 {
    HANDLER_PANICS.load(Ordering::Relaxed)
}

/// The message of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(panic payload is not a string)"
    }
}

/// Runs one handler callback (`callback` names it for the log, e.g. `"on_data"`),
/// catching a panic: `Some(result)` if it returned, `None` if it panicked. A panic
/// is logged with `tracing::error!` (connection id, callback, panic message) and
/// counted in [`handler_panics`]; the panic hook has already run (it prints the
/// location as usual).
///
/// For backend authors: after `None` the handler may be in an inconsistent state.
/// The backend must not deliver further events to it except one final
/// `on_close(`[`CloseReason::HandlerPanicked`](crate::CloseReason::HandlerPanicked)`)`
/// (itself run through this function), and it must end only that connection (the
/// seam's choice: reset, queued bytes dropped). The closure gets
/// [`AssertUnwindSafe`]: that is sound because nothing the closure can reach is
/// used after a panic except the handler's `on_close` and the connection's own
/// state, whose locks are poison-tolerant. Under `panic = "abort"` nothing can be
/// caught.
pub fn catch_handler_panic<R>(
    conn: Option<ConnId>,
    callback: &'static str,
    f: impl FnOnce() -> R,
) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(payload) => {
            HANDLER_PANICS.fetch_add(1, Ordering::Relaxed);
            let msg = panic_message(&*payload);
            match conn {
                Some(id) => tracing::error!(
                    conn = id.0,
                    callback,
                    "zs-io: handler of {id} panicked in {callback}: {msg}; closing only this connection"
                ),
                None => tracing::error!(
                    callback,
                    "zs-io: handler panicked in {callback}: {msg}; the event loop continues"
                ),
            }
            // Dropping a payload can itself panic (a payload with a panicking Drop);
            // don't let that escape either.
            if catch_unwind(AssertUnwindSafe(move || drop(payload))).is_err() {
                tracing::error!("zs-io: dropping a panic payload panicked");
            }
            None
        }
    }
}

/// Drops a handler (or anything else a handler owns) catching a panic in its
/// `Drop`, which would otherwise unwind through the event loop.
pub fn drop_guarded<T>(conn: Option<ConnId>, value: T) {
    catch_handler_panic(conn, "drop", move || drop(value));
}

/// Pacing of accept retries while `accept` keeps failing with an error that does
/// not consume the pending connection, above all `EMFILE`/`ENFILE` (out of file
/// descriptors), `ENOBUFS` and `ENOMEM`.
///
/// With an edge-triggered listener such an error must not simply stop accepting:
/// the connections already queued raise no new edge, so accepting would stall until
/// an unrelated new connection arrives. Instead the loop retries on a timer: the
/// first retry after [`AcceptBackoff::MIN`], doubling up to [`AcceptBackoff::MAX`]
/// while the error persists. Only the first failure of a burst is worth logging
/// ([`AcceptFailure::log`]); the burst ends at the next successful accept (or an empty
/// queue), which [`AcceptBackoff::recovered`] reports with the number of failures.
#[derive(Debug, Clone, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

/// What [`AcceptBackoff::failed`] decided for one failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptFailure {
    /// Retry accepting after this long.
    pub retry_after: Duration,
    /// This is the first failure of a burst: log it (later ones are not logged).
    pub log: bool,
}

impl AcceptBackoff {
    /// The first retry delay.
    pub const MIN: Duration = Duration::from_millis(10);
    /// The longest retry delay.
    pub const MAX: Duration = Duration::from_millis(100);

    /// A backoff with no failure recorded.
    pub fn new() -> AcceptBackoff {
        AcceptBackoff::default()
    }

    /// Records a failed accept and returns when to retry and whether to log.
    pub fn failed(&mut self) -> AcceptFailure {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        let retry_after = (Self::MIN * (1u32 << shift)).min(Self::MAX);
        AcceptFailure {
            retry_after,
            log: self.failures == 1,
        }
    }

    /// Records that accepting works again (a connection was accepted, or the queue
    /// is empty). Returns the number of failures of the burst that just ended, if
    /// one did (for a single "accepting again" log line).
    pub fn recovered(&mut self) -> Option<u32> {
        match std::mem::take(&mut self.failures) {
            0 => None,
            n => Some(n),
        }
    }

    /// Whether a burst of failures is in progress.
    pub fn in_burst(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_logs_once_per_burst() {
        let mut b = AcceptBackoff::new();
        assert!(!b.in_burst());
        assert_eq!(b.recovered(), None);
        let ms: Vec<(u64, bool)> = (0..7)
            .map(|_| {
                let f = b.failed();
                (f.retry_after.as_millis() as u64, f.log)
            })
            .collect();
        assert_eq!(
            ms,
            vec![
                (10, true),
                (20, false),
                (40, false),
                (80, false),
                (100, false),
                (100, false),
                (100, false)
            ]
        );
        assert!(b.in_burst());
        assert_eq!(b.recovered(), Some(7));
        assert!(!b.in_burst());
        // A new burst starts from the minimum and logs again.
        assert_eq!(
            b.failed(),
            AcceptFailure {
                retry_after: AcceptBackoff::MIN,
                log: true
            }
        );
        // Very long bursts neither overflow nor exceed the cap.
        for _ in 0..100_000 {
            assert!(b.failed().retry_after <= AcceptBackoff::MAX);
        }
    }

    #[test]
    fn panics_are_caught_counted_and_described() {
        let before = handler_panics();
        assert_eq!(
            catch_handler_panic(Some(ConnId(7)), "on_data", || 5),
            Some(5)
        );
        let r: Option<()> =
            catch_handler_panic(Some(ConnId(7)), "on_data", || panic!("boom {}", 42));
        assert_eq!(r, None);
        let r: Option<()> = catch_handler_panic(None, "factory", || std::panic::panic_any(3u8));
        assert_eq!(r, None);
        assert!(handler_panics() >= before + 2);
        let p = catch_unwind(|| panic!("literal")).unwrap_err();
        assert_eq!(panic_message(&*p), "literal");
        let p = catch_unwind(|| panic!("formatted {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "formatted 1");
        struct BadDrop;
        impl Drop for BadDrop {
            fn drop(&mut self) {
                panic!("drop panics");
            }
        }
        drop_guarded(None, BadDrop);
    }
}
