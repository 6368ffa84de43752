//! The loop-turn clock: one clock read per event-loop turn, for every layer.
//!
//! A call on the sequential path read the system clock 14 times across its
//! two ends (session 13's profile): the reactor's flush, the security layer's
//! `on_data` and seal, zs-core's `on_data`, each for statistics, idle and
//! key-age bookkeeping whose resolution is far coarser than one loop turn.
//! The readiness reactor reads the clock once when its wait returns and
//! installs it here for the turn ([`Turn`]); [`now`] returns it on that
//! thread, and the system clock anywhere else (worker threads, off-loop
//! senders, backends that install nothing). A layer may install its own
//! turn for a batch of work (zs-core does, per batch of input): turns nest,
//! and the previous value comes back when the inner one ends.
//!
//! What it is for: time stamps whose error may be one loop turn (the time
//! the loop spent since its wait returned): idle bookkeeping, key ages,
//! statistics. Not for measuring how long a piece of work in the same turn
//! took (that reads 0), nor for deadlines a timer must not miss (the
//! reactor's timer wheel reads the system clock itself).

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    static TURN: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Installs a turn's time on this thread until dropped (nests: the previous
/// value comes back).
#[must_use = "the turn's time is installed only while the guard lives"]
#[derive(Debug)]
pub struct Turn(Option<Instant>);

impl Turn {
    /// The loop read `now` at the start of this turn.
    pub fn begin(now: Instant) -> Turn {
        Turn(TURN.with(|t| t.replace(Some(now))))
    }

    /// Moves this turn's time on to `now` (a later read within the same
    /// turn, e.g. before the loop runs its expired timers).
    pub fn advance(&self, now: Instant) {
        TURN.with(|t| t.set(Some(now)));
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        TURN.with(|t| t.set(self.0));
    }
}

/// The current turn's time on an event-loop thread inside a turn, else the
/// system clock.
#[inline]
pub fn now() -> Instant {
    TURN.with(Cell::get).unwrap_or_else(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn turn_time_is_installed_advanced_and_restored() {
        let outside = now();
        let t0 = Instant::now() + Duration::from_secs(3600);
        {
            let a = Turn::begin(t0);
            assert_eq!(now(), t0);
            let t1 = t0 + Duration::from_secs(1);
            {
                let _b = Turn::begin(t1);
                assert_eq!(now(), t1);
            }
            assert_eq!(now(), t0);
            a.advance(t1);
            assert_eq!(now(), t1);
            // Other threads read the system clock.
            let other = std::thread::spawn(now).join().unwrap();
            assert!(other < t0);
        }
        let after = now();
        assert!(after >= outside && after < t0, "system clock again");
    }
}
