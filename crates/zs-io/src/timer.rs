//! A hashed timer wheel shared by the backends.

use std::time::{Duration, Instant};

/// A hashed timing wheel: `slots` buckets of `tick` each; an entry due at tick `t`
/// lives in bucket `t % slots` and fires when the wheel's clock reaches `t` (entries
/// further than one revolution away simply wait for their round). Insert is O(1);
/// [`poll`](TimerWheel::poll) touches only the buckets whose ticks have passed.
/// Timers never fire early: deadlines round **up** to the next tick.
///
/// ```
/// use std::time::{Duration, Instant};
/// use zs_io::TimerWheel;
/// let start = Instant::now();
/// let mut w = TimerWheel::new(start, Duration::from_millis(5), 64);
/// w.insert(start + Duration::from_millis(12), "a");
/// w.insert(start + Duration::from_secs(2), "b"); // several revolutions away
/// let mut due = Vec::new();
/// w.poll(start + Duration::from_millis(10), &mut due);
/// assert!(due.is_empty());
/// w.poll(start + Duration::from_millis(15), &mut due);
/// assert_eq!(due, vec!["a"]);
/// w.poll(start + Duration::from_secs(2), &mut due);
/// assert_eq!(due, vec!["a", "b"]);
/// assert!(w.is_empty());
/// ```
#[derive(Debug)]
pub struct TimerWheel<T> {
    start: Instant,
    tick: Duration,
    slots: Vec<Vec<(u64, T)>>,
    /// The next tick not yet processed.
    current: u64,
    len: usize,
    /// Cached earliest due tick (None = must recompute).
    earliest: Option<u64>,
    /// Reused buffer for the stable split of a bucket in [`poll`](TimerWheel::poll).
    scratch: Vec<(u64, T)>,
    /// The instant tick `current` begins, when representable: a poll before
    /// it has nothing to do and returns after one comparison (a loop polls
    /// every turn, most turns within one tick; the tick's division cost
    /// about 60 instructions per turn, session 14).
    current_at: Option<Instant>,
    /// [`next_deadline`](TimerWheel::next_deadline)'s answer for the tick it
    /// was computed for (the earliest tick changes far less often than the
    /// loop asks).
    earliest_at: Option<(u64, Instant)>,
}

impl<T> TimerWheel<T> {
    /// A wheel whose clock starts at `start`, with `tick` resolution and `slots`
    /// buckets (both at least 1 ms / 1).
    pub fn new(start: Instant, tick: Duration, slots: usize) -> TimerWheel<T> {
        let slots = slots.max(1);
        TimerWheel {
            start,
            tick: tick.max(Duration::from_millis(1)),
            slots: (0..slots).map(|_| Vec::new()).collect(),
            current: 0,
            len: 0,
            earliest: None,
            scratch: Vec::new(),
            current_at: None,
            earliest_at: None,
        }
    }

    /// Moves `current` to tick `t` and notes the instant it begins.
    fn set_current(&mut self, t: u64) {
        self.current = t;
        let nanos = u128::from(t) * self.tick.as_nanos();
        self.current_at = u64::try_from(nanos)
            .ok()
            .and_then(|n| self.start.checked_add(Duration::from_nanos(n)));
    }

    /// Number of pending entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tick_ceil(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start).as_nanos();
        let t = self.tick.as_nanos();
        d.div_ceil(t).min(u128::from(u64::MAX)) as u64
    }

    fn tick_floor(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start).as_nanos();
        (d / self.tick.as_nanos()).min(u128::from(u64::MAX)) as u64
    }

    /// Schedules `item` at `deadline` (a past deadline fires on the next poll).
    pub fn insert(&mut self, deadline: Instant, item: T) {
        let t = self.tick_ceil(deadline).max(self.current);
        let n = self.slots.len() as u64;
        self.slots[(t % n) as usize].push((t, item));
        self.len += 1;
        if self.len == 1 {
            self.earliest = Some(t);
        } else if let Some(e) = self.earliest {
            self.earliest = Some(e.min(t));
        }
    }

    /// Moves every entry due at `now` into `out`: bucket by bucket in tick order,
    /// and entries of one bucket in the order they were inserted (so two timers
    /// with the same deadline, e.g. two `wake`s, fire in the order they were set).
    pub fn poll(&mut self, now: Instant, out: &mut Vec<T>) {
        if self.len > 0 && self.current_at.is_some_and(|at| now < at) {
            // Still before tick `current` (what the branch below finds
            // after a division).
            return;
        }
        let now_tick = self.tick_floor(now);
        if now_tick < self.current || self.len == 0 {
            if self.len == 0 && now_tick + 1 > self.current {
                self.set_current(now_tick + 1);
            }
            return;
        }
        if self.earliest.is_some_and(|e| e > now_tick) {
            // Nothing is due (every entry is at or after the known earliest),
            // and the earliest stays known: a busy loop's turns neither walk
            // the buckets here nor rescan them in `next_deadline`.
            self.set_current(now_tick + 1);
            return;
        }
        let n = self.slots.len() as u64;
        let steps = (now_tick - self.current + 1).min(n);
        for i in 0..steps {
            let slot = &mut self.slots[((self.current + i) % n) as usize];
            if !slot.iter().any(|e| e.0 <= now_tick) {
                continue;
            }
            // A stable split (no swap_remove): due entries leave in insertion
            // order, the rest stay in theirs. The scratch buffer keeps its
            // capacity, so a busy wheel does not allocate here.
            std::mem::swap(slot, &mut self.scratch);
            for e in self.scratch.drain(..) {
                if e.0 <= now_tick {
                    out.push(e.1);
                    self.len -= 1;
                } else {
                    slot.push(e);
                }
            }
        }
        self.set_current(now_tick + 1);
        self.earliest = None;
    }

    /// The instant of the earliest pending entry (rounded to its tick), if any.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let t = match self.earliest {
            Some(t) => t,
            None => {
                let t = self
                    .slots
                    .iter()
                    .flat_map(|s| s.iter().map(|e| e.0))
                    .min()?;
                self.earliest = Some(t);
                t
            }
        };
        if let Some((cached, at)) = self.earliest_at {
            if cached == t {
                return Some(at);
            }
        }
        let nanos = u128::from(t) * self.tick.as_nanos();
        let at = self.start + Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64);
        self.earliest_at = Some((t, at));
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Every entry fires exactly once, never before its deadline and at most one
        /// tick after the first poll at or past it.
        #[test]
        fn fires_once_never_early(deadlines in proptest::collection::vec(0u64..5000, 1..50), polls in proptest::collection::vec(1u64..700, 1..40)) {
            let start = Instant::now();
            let tick = Duration::from_millis(4);
            let mut w = TimerWheel::new(start, tick, 16);
            for (i, d) in deadlines.iter().enumerate() {
                w.insert(start + Duration::from_millis(*d), i);
            }
            let mut fired = vec![false; deadlines.len()];
            let mut now = 0u64;
            let mut out = Vec::new();
            for p in polls.iter().chain(std::iter::once(&6000)) {
                now += p;
                if let Some(next) = w.next_deadline() {
                    // the cached earliest deadline is never later than any pending one
                    for (i, d) in deadlines.iter().enumerate() {
                        if !fired[i] { prop_assert!(next <= start + Duration::from_millis(*d) + tick); }
                    }
                }
                out.clear();
                w.poll(start + Duration::from_millis(now), &mut out);
                for &i in &out {
                    prop_assert!(!fired[i]);
                    prop_assert!(deadlines[i] <= now, "fired early");
                    fired[i] = true;
                }
                for (i, d) in deadlines.iter().enumerate() {
                    if *d + 4 <= now { prop_assert!(fired[i], "late: {} at {}", d, now); }
                }
            }
            prop_assert!(w.is_empty());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Inserts between polls (the loop's pattern: timers set while others
        /// wait) keep the cached earliest deadline exact: nothing fires early
        /// or more than a tick late, and a poll with nothing due keeps the
        /// cache (no bucket rescan per loop turn).
        #[test]
        fn interleaved_inserts_keep_the_earliest(steps in proptest::collection::vec((1u64..60, proptest::option::of(0u64..400)), 1..80)) {
            let start = Instant::now();
            let tick = Duration::from_millis(4);
            let mut w = TimerWheel::new(start, tick, 16);
            let mut due: Vec<(u64, bool)> = Vec::new();
            let mut now = 0u64;
            let mut out = Vec::new();
            for (advance, insert) in steps.iter().copied().chain(std::iter::once((2000, None))) {
                if let Some(after) = insert {
                    w.insert(start + Duration::from_millis(now + after), due.len());
                    due.push((now + after, false));
                }
                let cached = w.next_deadline();
                now += advance;
                out.clear();
                w.poll(start + Duration::from_millis(now), &mut out);
                if out.is_empty() && !w.is_empty() {
                    prop_assert!(w.earliest.is_some(), "a poll with nothing due dropped the cache");
                    prop_assert_eq!(w.next_deadline(), cached);
                }
                for &i in &out {
                    prop_assert!(!due[i].1);
                    prop_assert!(due[i].0 <= now, "fired early");
                    due[i].1 = true;
                }
                for (d, fired) in &due {
                    if *d + 4 <= now { prop_assert!(*fired, "late: {} at {}", d, now); }
                }
            }
            prop_assert!(w.is_empty());
        }
    }

    /// Entries due in the same tick come out in insertion order (the IOCP
    /// backend's `wake` is a zero-delay timer and must keep its order), and so
    /// do the entries left behind in the bucket.
    #[test]
    fn same_tick_fires_in_insertion_order() {
        let start = Instant::now();
        let mut w = TimerWheel::new(start, Duration::from_millis(1), 8);
        let at = start + Duration::from_millis(3);
        let later = start + Duration::from_millis(11); // same bucket, next round
        for (i, t) in [7, 8, 7, 9, 8].into_iter().enumerate() {
            w.insert(at, (t, i));
            w.insert(later, (t + 100, i));
        }
        let mut out = Vec::new();
        w.poll(at, &mut out);
        assert_eq!(out, [(7, 0), (8, 1), (7, 2), (9, 3), (8, 4)]);
        out.clear();
        w.poll(later, &mut out);
        assert_eq!(out, [(107, 0), (108, 1), (107, 2), (109, 3), (108, 4)]);
        assert!(w.is_empty());
    }
}
