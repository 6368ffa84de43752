//! The statistics clock: one clock read per event-loop turn.
//!
//! Command statistics (latency from dispatch to answer) need a time stamp per
//! call; reading the system clock twice per call cost about 7 % of a pipelined
//! call's CPU (issue 5's profile). The event loop reads the clock once when a
//! batch of input arrives and installs it here for the duration of the batch
//! ([`Turn`]); [`now`] returns it on that thread, and the system clock anywhere
//! else (worker pools, delayed answers from other threads). Consequence: an
//! answer given within the same turn as its request (a plain handler) is
//! recorded with the latency resolution of one turn: 0 µs.

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    static TURN: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Installs the turn's time on this thread until dropped (nests: the previous
/// value comes back).
pub(crate) struct Turn(Option<Instant>);

impl Turn {
    /// The loop read `now` at the start of this turn.
    pub(crate) fn begin(now: Instant) -> Turn {
        Turn(TURN.with(|t| t.replace(Some(now))))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        TURN.with(|t| t.set(self.0));
    }
}

/// The current turn's time on an event-loop thread inside a batch, else the
/// system clock.
#[inline]
pub(crate) fn now() -> Instant {
    TURN.with(|t| t.get()).unwrap_or_else(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn turn_time_is_installed_and_restored() {
        let outside = now();
        let t0 = Instant::now() + Duration::from_secs(3600);
        {
            let _a = Turn::begin(t0);
            assert_eq!(now(), t0);
            let t1 = t0 + Duration::from_secs(1);
            {
                let _b = Turn::begin(t1);
                assert_eq!(now(), t1);
            }
            assert_eq!(now(), t0);
            // Other threads read the system clock.
            let other = std::thread::spawn(now).join().unwrap();
            assert!(other < t0);
        }
        let after = now();
        assert!(after >= outside && after < t0, "system clock again");
    }
}
