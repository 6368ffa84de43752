//! Statistics per server and per command: counts, bytes, errors, latency percentiles.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Latency samples kept per command for percentiles (the most recent ones).
pub const LATENCY_SAMPLES: usize = 4096;

/// Live counters of one command. Updated lock-free, the latency ring too.
#[derive(Debug)]
pub struct CommandStats {
    calls: AtomicU64,
    errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    max_us: AtomicU64,
    /// Ring of the last [`LATENCY_SAMPLES`] latencies (µs); `recorded` counts
    /// every sample ever written (slot = count modulo the ring size).
    samples: Box<[AtomicU32]>,
    recorded: AtomicU64,
}

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            samples: (0..LATENCY_SAMPLES).map(|_| AtomicU32::new(0)).collect(),
            recorded: AtomicU64::new(0),
        }
    }
}

impl CommandStats {
    /// Records one request received (`bytes` of payload).
    pub fn record_in(&self, bytes: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records one answer: its payload size, whether it was an error, and the time
    /// from dispatch to answer.
    pub fn record_out(&self, bytes: usize, error: bool, latency: Duration) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = latency.as_micros().min(u32::MAX as u128) as u32;
        // A plain load first: the maximum rarely moves, and `fetch_max` is a
        // compare-and-swap loop (a locked instruction) on every call.
        if us as u64 > self.max_us.load(Ordering::Relaxed) {
            self.max_us.fetch_max(us as u64, Ordering::Relaxed);
        }
        let slot = self.recorded.fetch_add(1, Ordering::Relaxed) as usize % LATENCY_SAMPLES;
        self.samples[slot].store(us, Ordering::Relaxed);
    }

    /// Adds what a batch summed ([`batch`]): `n` zero-latency samples, the
    /// counters as they are (one locked add per counter that moved).
    fn publish(&self, sum: &batch::Sum) {
        if sum.calls > 0 {
            self.calls.fetch_add(sum.calls, Ordering::Relaxed);
        }
        if sum.bytes_in > 0 {
            self.bytes_in.fetch_add(sum.bytes_in, Ordering::Relaxed);
        }
        if sum.bytes_out > 0 {
            self.bytes_out.fetch_add(sum.bytes_out, Ordering::Relaxed);
        }
        if sum.errors > 0 {
            self.errors.fetch_add(sum.errors, Ordering::Relaxed);
        }
        // Every sample a batch sums is 0 µs (answers within the turn; see
        // `batch::record`): the maximum does not move, the ring gets
        // `zeros` slots in a row (at most the ring's size are written).
        if sum.zeros > 0 {
            let first = self.recorded.fetch_add(sum.zeros, Ordering::Relaxed);
            let n = sum.zeros.min(LATENCY_SAMPLES as u64);
            let skip = sum.zeros - n;
            for i in 0..n {
                let slot = (first + skip + i) as usize % LATENCY_SAMPLES;
                self.samples[slot].store(0, Ordering::Relaxed);
            }
        }
    }

    /// A consistent-enough copy of the counters with percentiles computed.
    pub fn snapshot(&self, name: &str, kind: &'static str) -> CommandSnapshot {
        let n = (self.recorded.load(Ordering::Relaxed) as usize).min(LATENCY_SAMPLES);
        let mut v: Vec<u32> = self.samples[..n]
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect();
        v.sort_unstable();
        let pct = |p: f64| -> u64 {
            if v.is_empty() {
                0
            } else {
                let i = ((v.len() - 1) as f64 * p).round() as usize;
                v[i] as u64
            }
        };
        CommandSnapshot {
            name: name.to_owned(),
            kind,
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            p50_us: pct(0.50),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }
}

/// Command statistics summed per batch on an event-loop thread.
///
/// Recording a call took four locked adds (`calls`, `bytes_in`, `bytes_out`,
/// the latency ring's count) on the shared counters; on this VM a locked
/// instruction costs ~20 cycles. While the runtime holds a connection's batch
/// on a loop thread ([`begin`] / [`end`], the `Held` guard in `net.rs`), the
/// requests dispatched and the answers given inline are summed here, per
/// command, and added to the shared counters once at the batch's end, before
/// the batch's output leaves (the answers wait for the batch's end too), so a
/// reader that got an answer sees it counted. A request's answer given
/// inline (within the turn: 0 µs) is summed with the request, in one record
/// by the dispatcher. Anything else (a kept responder answering later, a
/// worker thread, an answer with a latency above 0 µs) records its answer on
/// the shared counters at once.
pub(crate) mod batch {
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;
    use std::time::Duration;

    use super::CommandStats;

    /// One command's sums within the batch.
    pub(super) struct Sum {
        stats: Arc<CommandStats>,
        pub(super) calls: u64,
        pub(super) bytes_in: u64,
        pub(super) bytes_out: u64,
        pub(super) errors: u64,
        /// Answers recorded with a latency of 0 µs.
        pub(super) zeros: u64,
    }

    thread_local! {
        /// Batches held on this thread (they nest).
        static DEPTH: Cell<u32> = const { Cell::new(0) };
        /// The commands seen in the batch (usually one; the vector keeps its
        /// capacity: no allocation per batch).
        static SUMS: RefCell<Vec<Sum>> = const { RefCell::new(Vec::new()) };
    }

    /// A batch starts on this thread.
    pub(crate) fn begin() {
        DEPTH.set(DEPTH.get() + 1);
    }

    /// The batch [`begin`] started ends: at the outermost end, what it summed
    /// is added to the shared counters.
    pub(crate) fn end() {
        let d = DEPTH.get().saturating_sub(1);
        DEPTH.set(d);
        if d == 0 {
            publish();
        }
    }

    /// Whether a batch is held on this thread (records are summed).
    #[inline]
    pub(crate) fn active() -> bool {
        DEPTH.get() != 0
    }

    /// Adds what this thread summed so far to the shared counters now (the
    /// batch goes on). The runtime calls it before any output leaves (a
    /// flush within the batch, e.g. a handler closing its connection), so an
    /// answer is never seen before it is counted.
    pub(crate) fn publish() {
        SUMS.with_borrow_mut(|sums| {
            for sum in sums.drain(..) {
                sum.stats.publish(&sum);
            }
        });
    }

    /// One request of `stats`' command received (`bytes_in` of payload) and,
    /// with `out`, its answer given within the turn (0 µs: payload bytes,
    /// error): summed when a batch is held on this thread, else recorded on
    /// the shared counters at once.
    pub(crate) fn record(stats: &Arc<CommandStats>, bytes_in: usize, out: Option<(usize, bool)>) {
        if !active() {
            stats.record_in(bytes_in);
            if let Some((bytes, error)) = out {
                stats.record_out(bytes, error, Duration::ZERO);
            }
            return;
        }
        SUMS.with_borrow_mut(|sums| {
            // The batch's command is usually the last one seen.
            let i = match sums.iter().rposition(|s| Arc::ptr_eq(&s.stats, stats)) {
                Some(i) => i,
                None => {
                    sums.push(Sum {
                        stats: stats.clone(),
                        calls: 0,
                        bytes_in: 0,
                        bytes_out: 0,
                        errors: 0,
                        zeros: 0,
                    });
                    sums.len() - 1
                }
            };
            let s = &mut sums[i];
            s.calls += 1;
            s.bytes_in += bytes_in as u64;
            if let Some((bytes, error)) = out {
                s.bytes_out += bytes as u64;
                s.errors += error as u64;
                s.zeros += 1;
            }
        });
    }
}

/// Counters of one command at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSnapshot {
    /// Command name (as registered, lower case).
    pub name: String,
    /// Kind: `console`, `stream`, `direct-console`, `direct-stream`,
    /// `complete-buffer`, `batch`.
    pub kind: &'static str,
    /// Requests received.
    pub calls: u64,
    /// Error answers (including handler failures).
    pub errors: u64,
    /// Request payload bytes.
    pub bytes_in: u64,
    /// Answer payload bytes.
    pub bytes_out: u64,
    /// Median latency (dispatch to answer) over the recent samples, µs.
    pub p50_us: u64,
    /// 90th percentile latency, µs.
    pub p90_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Largest latency ever seen, µs.
    pub max_us: u64,
}

/// Live counters of a whole server (or client).
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) unknown_commands: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) stable_sessions: AtomicU64,
    pub(crate) stable_resumed: AtomicU64,
    pub(crate) stable_expired: AtomicU64,
    pub(crate) stable_evicted: AtomicU64,
    pub(crate) stable_rejected: AtomicU64,
    pub(crate) refused_connections: AtomicU64,
    pub(crate) reads_paused: AtomicU64,
}

/// A server's counters and every command's at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections opened so far.
    pub connections_opened: u64,
    /// Connections currently open.
    pub connections_open: u64,
    /// Encrypted bytes received.
    pub bytes_in: u64,
    /// Encrypted bytes sent.
    pub bytes_out: u64,
    /// Requests for commands that are not registered.
    pub unknown_commands: u64,
    /// Connections dropped for protocol, framing or security errors.
    pub protocol_errors: u64,
    /// StableIO sessions accepted.
    pub stable_sessions: u64,
    /// StableIO resumes on a new connection.
    pub stable_resumed: u64,
    /// StableIO sessions dropped after the offline timeout.
    pub stable_expired: u64,
    /// StableIO sessions evicted by the offline count or memory limits.
    pub stable_evicted: u64,
    /// StableIO resume requests refused (unknown id, wrong secret, expired).
    pub stable_rejected: u64,
    /// Connections closed at accept because an admission cap was reached
    /// (connections or handshakes in progress, in total or per source address).
    pub refused_connections: u64,
    /// Requests answered [`code::BUSY`](crate::code::BUSY) because the HPC
    /// queue was full.
    pub busy_refusals: u64,
    /// Times a connection's reading was paused because it had too many
    /// requests in flight or too much output waiting.
    pub reads_paused: u64,
    /// StableIO bytes (unacknowledged or parked) held by all sessions now.
    pub stable_unacked_bytes: u64,
    /// BatchStream bytes staged by all sessions now.
    pub batch_staged_bytes: u64,
    /// Per command, sorted by kind and name.
    pub commands: Vec<CommandSnapshot>,
}

impl EndpointStats {
    pub(crate) fn snapshot(
        &self,
        commands: Vec<CommandSnapshot>,
        budgets: &crate::Budgets,
        busy_refusals: u64,
    ) -> StatsSnapshot {
        let opened = self.opened.load(Ordering::Relaxed);
        let closed = self.closed.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_opened: opened,
            connections_open: opened.saturating_sub(closed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            unknown_commands: self.unknown_commands.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            stable_sessions: self.stable_sessions.load(Ordering::Relaxed),
            stable_resumed: self.stable_resumed.load(Ordering::Relaxed),
            stable_expired: self.stable_expired.load(Ordering::Relaxed),
            stable_evicted: self.stable_evicted.load(Ordering::Relaxed),
            stable_rejected: self.stable_rejected.load(Ordering::Relaxed),
            refused_connections: self.refused_connections.load(Ordering::Relaxed),
            reads_paused: self.reads_paused.load(Ordering::Relaxed),
            busy_refusals,
            stable_unacked_bytes: budgets.stable_bytes() as u64,
            batch_staged_bytes: budgets.batch_bytes() as u64,
            commands,
        }
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "connections: {} open, {} opened; bytes in {} out {}; unknown commands {}; protocol errors {}",
            self.connections_open,
            self.connections_opened,
            self.bytes_in,
            self.bytes_out,
            self.unknown_commands,
            self.protocol_errors
        )?;
        if self.stable_sessions > 0 || self.stable_rejected > 0 {
            writeln!(
                f,
                "stable sessions: {} accepted, {} resumed, {} expired, {} evicted, {} rejected",
                self.stable_sessions,
                self.stable_resumed,
                self.stable_expired,
                self.stable_evicted,
                self.stable_rejected
            )?;
        }
        writeln!(
            f,
            "{:<16} {:<15} {:>8} {:>6} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "command",
            "kind",
            "calls",
            "errors",
            "bytes_in",
            "bytes_out",
            "p50_us",
            "p90_us",
            "p99_us",
            "max_us"
        )?;
        for c in &self.commands {
            writeln!(
                f,
                "{:<16} {:<15} {:>8} {:>6} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
                c.name,
                c.kind,
                c.calls,
                c.errors,
                c.bytes_in,
                c.bytes_out,
                c.p50_us,
                c.p90_us,
                c.p99_us,
                c.max_us
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_samples() {
        let s = CommandStats::default();
        for i in 1..=100u64 {
            s.record_in(10);
            s.record_out(5, i % 10 == 0, Duration::from_micros(i));
        }
        let snap = s.snapshot("x", "console");
        assert_eq!((snap.calls, snap.errors), (100, 10));
        assert_eq!((snap.bytes_in, snap.bytes_out), (1000, 500));
        assert!((49..=52).contains(&snap.p50_us), "{snap:?}");
        assert!((98..=100).contains(&snap.p99_us), "{snap:?}");
        assert_eq!(snap.max_us, 100);
    }

    /// What a batch sums reaches the shared counters at the batch's end, not
    /// before, and the same totals as recording call by call.
    #[test]
    fn batch_sums_are_published_at_the_end_with_exact_totals() {
        let one = std::sync::Arc::new(CommandStats::default());
        let other = std::sync::Arc::new(CommandStats::default());
        let direct = CommandStats::default();
        // Some slow samples first, so the ring holds more than zeros.
        for i in 1..=10u64 {
            one.record_in(1);
            one.record_out(2, false, Duration::from_micros(100 * i));
            direct.record_in(1);
            direct.record_out(2, false, Duration::from_micros(100 * i));
        }
        batch::begin();
        batch::begin(); // nested: published at the outer end only
        for i in 0..50usize {
            batch::record(&one, 10, Some((5, i % 7 == 0)));
            direct.record_in(10);
            direct.record_out(5, i % 7 == 0, Duration::ZERO);
            // A request not answered within the turn: counted in only.
            batch::record(&other, 3, None);
        }
        batch::end();
        let mid = one.snapshot("one", "console");
        assert_eq!(
            (mid.calls, mid.bytes_in, mid.errors),
            (10, 10, 0),
            "{mid:?}"
        );
        assert_eq!(other.snapshot("other", "console").calls, 0);
        batch::end();
        let a = one.snapshot("x", "console");
        let b = direct.snapshot("x", "console");
        assert_eq!(a, b);
        assert_eq!(
            (a.calls, a.errors, a.bytes_in, a.bytes_out),
            (60, 8, 510, 270)
        );
        assert_eq!(a.p50_us, 0);
        assert_eq!(a.max_us, 1000);
        let o = other.snapshot("other", "console");
        assert_eq!(
            (o.calls, o.bytes_in, o.bytes_out, o.p50_us),
            (50, 150, 0, 0)
        );
        // Outside a batch every record goes straight to the counters.
        batch::record(&other, 1, Some((4, true)));
        let o = other.snapshot("other", "console");
        assert_eq!((o.calls, o.bytes_out, o.errors), (51, 4, 1));
        // `publish` within a batch adds what was summed so far.
        batch::begin();
        batch::record(&other, 1, None);
        batch::publish();
        assert_eq!(other.snapshot("other", "console").calls, 52);
        batch::end();
        assert_eq!(other.snapshot("other", "console").calls, 52);
    }

    /// More zero samples in one batch than the ring holds: the ring is
    /// filled with the last ones, as call-by-call recording leaves it.
    #[test]
    fn a_batch_larger_than_the_ring_fills_it() {
        let s = std::sync::Arc::new(CommandStats::default());
        for _ in 0..LATENCY_SAMPLES {
            s.record_out(0, false, Duration::from_micros(50));
        }
        batch::begin();
        for _ in 0..LATENCY_SAMPLES + 3 {
            batch::record(&s, 0, Some((0, false)));
        }
        batch::end();
        let snap = s.snapshot("x", "console");
        assert_eq!((snap.p50_us, snap.p99_us, snap.max_us), (0, 0, 50));
    }
}
