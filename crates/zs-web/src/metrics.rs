//! Gateway counters and the Prometheus text exposition (`/metrics`).
//!
//! Two sources: the zs-core server's [`StatsSnapshot`] (read at each scrape
//! through the gateway's [`StatsFn`]), and the gateway's own
//! counters and per-command call-duration histograms ([`WebStats`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use serde::Serialize;
use zs_core::StatsSnapshot;

use crate::StatsFn;

/// Most distinct command names given their own histogram; calls to further
/// names are counted under `command="other"` (label cardinality stays bounded
/// whatever names clients send).
pub const MAX_HISTOGRAM_COMMANDS: usize = 256;

/// Histogram bucket bounds (seconds): 50 µs doubling to ~1.6 s, 16 buckets.
pub fn duration_buckets() -> Vec<f64> {
    exponential_buckets(0.000_05, 2.0, 16).collect()
}

/// The gateway's own counters. All monotonic except `open`.
#[derive(Debug, Default)]
pub struct WebStats {
    /// WebSocket sessions open now.
    pub open: AtomicU64,
    /// WebSocket sessions opened so far (bridged to the server).
    pub opened: AtomicU64,
    /// TCP connections refused at accept: process cap.
    pub refused_total_cap: AtomicU64,
    /// TCP connections refused at accept: per-IP cap.
    pub refused_ip_cap: AtomicU64,
    /// WebSocket sessions closed because the server session could not be opened.
    pub upstream_failures: AtomicU64,
    /// Messages that were not valid requests (malformed JSON, bad shape, bad binary).
    pub bad_messages: AtomicU64,
    /// Connections closed because a message exceeded the size limit (or a
    /// WebSocket protocol error).
    pub protocol_errors: AtomicU64,
    /// Connections closed because the client did not read (send queue full or
    /// a write stalled past the write timeout).
    pub slow_readers: AtomicU64,
    /// Messages received from clients.
    pub messages_in: AtomicU64,
    /// Messages sent to clients.
    pub messages_out: AtomicU64,
    /// Pushes forwarded from the server to clients.
    pub pushes: AtomicU64,
    /// HTTP requests served (all paths).
    pub http_requests: AtomicU64,
    /// WebSocket sessions closed because the client answered no ping in time
    /// (nothing received for `ping_interval + pong_timeout`).
    pub dead_peers: AtomicU64,
    /// Pings sent to idle clients.
    pub pings: AtomicU64,
    histograms: Mutex<HashMap<String, Arc<Histogram>>>,
}

impl WebStats {
    /// Records one call through the gateway: `cmd`'s duration (lower-cased;
    /// beyond [`MAX_HISTOGRAM_COMMANDS`] names, under `other`).
    pub fn observe_call(&self, cmd: &str, took: Duration) {
        self.histogram(cmd).observe(took.as_secs_f64());
    }

    /// The call-duration histogram of `cmd` (lower-cased; beyond
    /// [`MAX_HISTOGRAM_COMMANDS`] names, `other`'s), for callers that keep it.
    pub(crate) fn histogram(&self, cmd: &str) -> Arc<Histogram> {
        let mut m = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let key = cmd.to_ascii_lowercase();
        if let Some(h) = m.get(&key) {
            h.clone()
        } else {
            let key = if m.len() >= MAX_HISTOGRAM_COMMANDS {
                "other".to_owned()
            } else {
                key
            };
            m.entry(key)
                .or_insert_with(|| Arc::new(Histogram::new(duration_buckets())))
                .clone()
        }
    }

    fn histograms(&self) -> Vec<(String, Arc<Histogram>)> {
        let m = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, h)| (k.clone(), h.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A plain copy of the counters (for `/api/stats`).
    pub fn snapshot(&self) -> WebSnapshot {
        WebSnapshot {
            open: self.open.load(Relaxed),
            opened: self.opened.load(Relaxed),
            refused: self.refused_total_cap.load(Relaxed) + self.refused_ip_cap.load(Relaxed),
            upstream_failures: self.upstream_failures.load(Relaxed),
            bad_messages: self.bad_messages.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            slow_readers: self.slow_readers.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            pushes: self.pushes.load(Relaxed),
            dead_peers: self.dead_peers.load(Relaxed),
            pings: self.pings.load(Relaxed),
        }
    }
}

/// [`WebStats`] at one moment.
#[derive(Debug, Clone, Serialize)]
#[allow(missing_docs)]
pub struct WebSnapshot {
    pub open: u64,
    pub opened: u64,
    pub refused: u64,
    pub upstream_failures: u64,
    pub bad_messages: u64,
    pub protocol_errors: u64,
    pub slow_readers: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub pushes: u64,
    pub dead_peers: u64,
    pub pings: u64,
}

/// The collector behind `/metrics`.
pub(crate) struct Metrics {
    pub(crate) web: Arc<WebStats>,
    pub(crate) server: Option<StatsFn>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

type Enc<'a> = DescriptorEncoder<'a>;

fn counter(e: &mut Enc<'_>, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut Enc<'_>, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn server_metrics(e: &mut Enc<'_>, s: &StatsSnapshot) -> Result<(), std::fmt::Error> {
    let g = |v: u64| v.min(i64::MAX as u64) as i64;
    counter(
        e,
        "zs_connections_opened",
        "Connections accepted by the server.",
        s.connections_opened,
    )?;
    gauge(
        e,
        "zs_connections_open",
        "Connections open now.",
        g(s.connections_open),
    )?;
    counter(
        e,
        "zs_received_bytes",
        "Encrypted bytes received.",
        s.bytes_in,
    )?;
    counter(e, "zs_sent_bytes", "Encrypted bytes sent.", s.bytes_out)?;
    counter(
        e,
        "zs_unknown_commands",
        "Requests for unregistered commands.",
        s.unknown_commands,
    )?;
    counter(
        e,
        "zs_protocol_errors",
        "Connections dropped for protocol, framing or security errors.",
        s.protocol_errors,
    )?;
    counter(
        e,
        "zs_refused_connections",
        "Connections refused at accept by an admission cap.",
        s.refused_connections,
    )?;
    counter(
        e,
        "zs_busy_refusals",
        "Requests answered BUSY (HPC queue full).",
        s.busy_refusals,
    )?;
    counter(
        e,
        "zs_reads_paused",
        "Times a connection's reading was paused by back-pressure.",
        s.reads_paused,
    )?;
    counter(
        e,
        "zs_stable_sessions",
        "StableIO sessions accepted.",
        s.stable_sessions,
    )?;
    counter(
        e,
        "zs_stable_resumed",
        "StableIO resumes on a new connection.",
        s.stable_resumed,
    )?;
    counter(
        e,
        "zs_stable_expired",
        "StableIO sessions dropped after the offline timeout.",
        s.stable_expired,
    )?;
    counter(
        e,
        "zs_stable_evicted",
        "StableIO sessions evicted by offline limits.",
        s.stable_evicted,
    )?;
    counter(
        e,
        "zs_stable_rejected",
        "StableIO resume requests refused.",
        s.stable_rejected,
    )?;
    gauge(
        e,
        "zs_stable_unacked_bytes",
        "StableIO bytes held unacknowledged now.",
        g(s.stable_unacked_bytes),
    )?;
    gauge(
        e,
        "zs_batch_staged_bytes",
        "BatchStream bytes staged now.",
        g(s.batch_staged_bytes),
    )?;

    let per =
        |e: &mut Enc<'_>, name: &str, help: &str, f: &dyn Fn(&zs_core::CommandSnapshot) -> u64| {
            let mut me = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &s.commands {
                let labels = [("command", c.name.as_str()), ("kind", c.kind)];
                ConstCounter::new(f(c)).encode(me.encode_family(&labels)?)?;
            }
            Ok::<(), std::fmt::Error>(())
        };
    per(
        e,
        "zs_command_calls",
        "Requests received per command.",
        &|c| c.calls,
    )?;
    per(e, "zs_command_errors", "Error answers per command.", &|c| {
        c.errors
    })?;
    per(
        e,
        "zs_command_received_bytes",
        "Request payload bytes per command.",
        &|c| c.bytes_in,
    )?;
    per(
        e,
        "zs_command_sent_bytes",
        "Answer payload bytes per command.",
        &|c| c.bytes_out,
    )?;
    {
        let mut me = e.encode_descriptor(
            "zs_command_latency_seconds",
            "Server-side latency percentiles (dispatch to answer) over recent calls.",
            None,
            MetricType::Gauge,
        )?;
        for c in &s.commands {
            for (q, us) in [
                ("0.5", c.p50_us),
                ("0.9", c.p90_us),
                ("0.99", c.p99_us),
                ("1", c.max_us),
            ] {
                let labels = [
                    ("command", c.name.as_str()),
                    ("kind", c.kind),
                    ("quantile", q),
                ];
                ConstGauge::new(us as f64 / 1e6).encode(me.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(s) = self.server.as_ref().and_then(|f| f()) {
            server_metrics(&mut e, &s)?;
        }
        let w = &self.web;
        let l = |a: &AtomicU64| a.load(Relaxed);
        gauge(
            &mut e,
            "zs_web_connections_open",
            "WebSocket sessions open now.",
            l(&w.open) as i64,
        )?;
        counter(
            &mut e,
            "zs_web_connections_opened",
            "WebSocket sessions opened.",
            l(&w.opened),
        )?;
        {
            let mut me = e.encode_descriptor(
                "zs_web_connections_refused",
                "TCP connections refused at accept by a gateway cap.",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in [("process", &w.refused_total_cap), ("ip", &w.refused_ip_cap)] {
                ConstCounter::new(l(v)).encode(me.encode_family(&[("reason", reason)])?)?;
            }
        }
        counter(
            &mut e,
            "zs_web_upstream_failures",
            "WebSocket sessions whose server session could not be opened.",
            l(&w.upstream_failures),
        )?;
        counter(
            &mut e,
            "zs_web_bad_messages",
            "Messages that were not valid requests.",
            l(&w.bad_messages),
        )?;
        counter(
            &mut e,
            "zs_web_protocol_errors",
            "Connections closed for oversized messages or WebSocket protocol errors.",
            l(&w.protocol_errors),
        )?;
        counter(
            &mut e,
            "zs_web_slow_readers",
            "Connections closed because the client did not read.",
            l(&w.slow_readers),
        )?;
        counter(
            &mut e,
            "zs_web_messages_received",
            "WebSocket messages received.",
            l(&w.messages_in),
        )?;
        counter(
            &mut e,
            "zs_web_messages_sent",
            "WebSocket messages sent.",
            l(&w.messages_out),
        )?;
        counter(
            &mut e,
            "zs_web_pushes",
            "Server pushes forwarded to WebSocket clients.",
            l(&w.pushes),
        )?;
        counter(
            &mut e,
            "zs_web_dead_peers",
            "Connections closed because the client answered no ping in time.",
            l(&w.dead_peers),
        )?;
        counter(
            &mut e,
            "zs_web_pings",
            "WebSocket pings sent to idle clients.",
            l(&w.pings),
        )?;
        counter(
            &mut e,
            "zs_web_http_requests",
            "HTTP requests served.",
            l(&w.http_requests),
        )?;
        {
            let mut me = e.encode_descriptor(
                "zs_web_call_duration_seconds",
                "Calls through the gateway, WebSocket request to answer, per command.",
                None,
                MetricType::Histogram,
            )?;
            for (cmd, h) in w.histograms() {
                h.encode(me.encode_family(&[("command", cmd.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// Renders the Prometheus text exposition of `metrics`.
pub(crate) fn render(metrics: &Arc<Metrics>) -> String {
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(metrics.clone()));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}
