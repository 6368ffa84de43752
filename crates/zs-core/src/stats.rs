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
}
