//! UDP mappings (`type = "udp"`): per-source flows.
//!
//! On the relay, one task reads the mapping's public UDP socket. Each public
//! source address is a **flow**: the first datagram of a new source takes a
//! data connection from the least-loaded agent (the same pool and tickets as
//! TCP), sends [`Msg::StartUdp`] on it, and from then on the flow's datagrams
//! travel on that data connection as `u16 LE length | payload` frames
//! ([`proto::encode_datagram`]) inside the secure session, both ways. The agent
//! opens one UDP socket per flow, connected to `local_addr`, so the local
//! service sees one source port per public source and its answers find their
//! way back.
//!
//! Bounds: a flow ends after the mapping's `idle_timeout` without a datagram
//! either way (60 s by default for UDP); a mapping holds at most
//! `max_connections` flows and the relay at most `[server] max_udp_flows`
//! (a datagram from a new source beyond them is dropped and counted); each flow
//! queues at most [`FLOW_QUEUE`] datagrams towards its agent (a source that
//! sends faster than its data connection carries loses the excess, counted, and
//! no other flow waits for it), and all flows of a relay at most
//! [`UDP_QUEUE_BUDGET`] bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::ServerService;
use crate::proto::{encode_datagram, DatagramDecoder, Msg, MAX_DATAGRAM};
use crate::relay::Relay;
use crate::secure::SecureConn;
use crate::stats::{dec, inc, AgentStats, MappingStats, RelayStats};

/// Datagrams queued towards the agent per flow.
pub const FLOW_QUEUE: usize = 64;
/// Bytes of datagrams queued towards agents over all flows of a relay; beyond
/// it datagrams are dropped (`udp_datagrams_dropped`), so memory stays bounded
/// whatever `max_udp_flows` is.
pub const UDP_QUEUE_BUDGET: u64 = 64 << 20;
/// Receive buffer of a UDP socket (the largest datagram fits).
const RECV_BUF: usize = 64 * 1024;
/// At most one "refused" log line per mapping per this period (a flood of new
/// sources must not flood the log; the counter counts every datagram).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The relay's public UDP socket of one mapping: reads datagrams and feeds
/// them to their flow, creating flows within the caps.
pub(crate) async fn relay_listen(
    relay: Relay,
    service: String,
    sock: UdpSocket,
    mstats: Arc<MappingStats>,
    conf: ServerService,
) {
    let sock = Arc::new(sock);
    let rstats = relay.stats();
    let mut flows: HashMap<SocketAddr, (u64, mpsc::Sender<Vec<u8>>)> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut buf = vec![0u8; RECV_BUF];
    let mut generation = 0u64;
    let mut last_log: Option<Instant> = None;
    loop {
        let (n, src) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; the socket stays.
                    debug!(%service, error = %e, "xnat relay: public UDP receive failed");
                    continue;
                }
            },
            Some((src, g)) = done_rx.recv() => {
                if flows.get(&src).is_some_and(|f| f.0 == g) {
                    flows.remove(&src);
                }
                continue;
            }
        };
        // Datagrams queued towards agents over all flows stay within the budget.
        if rstats.udp_queued_bytes.load(Ordering::Acquire) + n as u64 > UDP_QUEUE_BUDGET {
            inc(&rstats.udp_datagrams_dropped);
            continue;
        }
        let d = buf[..n].to_vec();
        if let Some((_, tx)) = flows.get(&src) {
            match tx.try_send(d) {
                Ok(()) => {
                    rstats
                        .udp_queued_bytes
                        .fetch_add(n as u64, Ordering::AcqRel);
                    continue;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    inc(&rstats.udp_datagrams_dropped);
                    continue;
                }
                // The flow ended meanwhile: this datagram starts a new one.
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    flows.remove(&src);
                    if !admit(rstats, &mstats, &relay, &conf) {
                        refused(&service, src, rstats, &mstats, &mut last_log);
                        continue;
                    }
                    generation += 1;
                    let tx = spawn_flow(
                        &relay, &service, src, &sock, &mstats, &conf, generation, &done_tx,
                    );
                    if tx.try_send(d).is_ok() {
                        rstats
                            .udp_queued_bytes
                            .fetch_add(n as u64, Ordering::AcqRel);
                    }
                    flows.insert(src, (generation, tx));
                    continue;
                }
            }
        }
        if !admit(rstats, &mstats, &relay, &conf) {
            refused(&service, src, rstats, &mstats, &mut last_log);
            continue;
        }
        generation += 1;
        let tx = spawn_flow(
            &relay, &service, src, &sock, &mstats, &conf, generation, &done_tx,
        );
        if tx.try_send(d).is_ok() {
            rstats
                .udp_queued_bytes
                .fetch_add(n as u64, Ordering::AcqRel);
        }
        flows.insert(src, (generation, tx));
    }
}

/// Takes a flow slot of the mapping and of the relay, atomically each.
fn admit(rstats: &RelayStats, mstats: &MappingStats, relay: &Relay, conf: &ServerService) -> bool {
    let cap = conf.max_connections as u64;
    if mstats
        .active
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_err()
    {
        return false;
    }
    let pcap = relay.max_udp_flows() as u64;
    if rstats
        .udp_flows_active
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < pcap).then_some(n + 1)
        })
        .is_err()
    {
        dec(&mstats.active);
        return false;
    }
    true
}

fn refused(
    service: &str,
    src: SocketAddr,
    rstats: &RelayStats,
    mstats: &MappingStats,
    last_log: &mut Option<Instant>,
) {
    let n = inc(&rstats.udp_flows_refused);
    inc(&mstats.errors);
    if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
        *last_log = Some(Instant::now());
        warn!(%service, %src, udp_flows_refused = n, "xnat relay: datagram from a new source dropped: the mapping's max_connections or the relay's max_udp_flows flows are open");
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_flow(
    relay: &Relay,
    service: &str,
    src: SocketAddr,
    sock: &Arc<UdpSocket>,
    mstats: &Arc<MappingStats>,
    conf: &ServerService,
    generation: u64,
    done: &mpsc::UnboundedSender<(SocketAddr, u64)>,
) -> mpsc::Sender<Vec<u8>> {
    let (tx, rx) = mpsc::channel(FLOW_QUEUE);
    let relay = relay.clone();
    let service = service.to_string();
    let sock = sock.clone();
    let mstats = mstats.clone();
    let idle = conf.idle_timeout;
    let done = done.clone();
    inc(&relay.stats().visitors_total);
    inc(&mstats.connections);
    tokio::spawn(async move {
        let rstats = relay.stats();
        let why = relay_flow(&relay, &service, src, &sock, rx, &mstats, idle).await;
        dec(&mstats.active);
        dec(&rstats.udp_flows_active);
        let _ = done.send((src, generation));
        match why {
            Ok(reason) => debug!(%service, %src, reason, "xnat relay: UDP flow ended"),
            Err(reason) => {
                inc(&mstats.errors);
                warn!(%service, %src, %reason, "xnat relay: UDP flow ended with an error");
            }
        }
    });
    tx
}

async fn relay_flow(
    relay: &Relay,
    service: &str,
    src: SocketAddr,
    sock: &UdpSocket,
    rx: mpsc::Receiver<Vec<u8>>,
    mstats: &MappingStats,
    idle: Duration,
) -> Result<&'static str, String> {
    let rstats = relay.stats();
    let mut rx = FlowQueue {
        rx,
        gauge: &rstats.udp_queued_bytes,
    };
    let mut conn = None;
    for _ in 0..3 {
        let (mut c, active) = relay.data_for(service).await.map_err(|why| {
            let n = inc(&rstats.visitors_refused);
            format!("no data connection ({why}); visitors_refused={n}")
        })?;
        if c.send(&Msg::StartUdp { peer: src }).await.is_ok() {
            conn = Some((c, active));
            break;
        }
    }
    let (c, active) = conn.ok_or("every data connection offered was dead")?;
    active.fetch_add(1, Ordering::Relaxed);
    let _a = SubOnDrop(active);
    info!(%service, %src, "xnat relay: UDP flow started");
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut sr, mut sw, rest) = c.split();
    let up = async {
        let mut frames = Vec::new();
        while let Some(d) = rx.recv().await {
            frames.clear();
            let mut bytes = d.len() as u64;
            encode_datagram(&mut frames, &d);
            // Whatever queued meanwhile goes in the same record.
            while frames.len() < 256 * 1024 {
                let Some(d) = rx.try_recv() else { break };
                bytes += d.len() as u64;
                encode_datagram(&mut frames, &d);
            }
            sw.write(&frames).await.map_err(|e| e.to_string())?;
            touch();
            rstats.bytes_up.fetch_add(bytes, Ordering::Relaxed);
            mstats.bytes_up.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok::<_, String>("the public socket closed")
    };
    let down = async {
        let mut dec = DatagramDecoder::new();
        dec.push(&rest);
        let mut buf = Vec::new();
        loop {
            while let Some(d) = dec.next_datagram().map_err(|e| e.to_string())? {
                // A full socket buffer drops the datagram, as UDP does.
                let _ = sock.send_to(d, src).await;
                rstats
                    .bytes_down
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                mstats
                    .bytes_down
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                touch();
            }
            if !sr.read(&mut buf).await.map_err(|e| e.to_string())? {
                return Ok::<_, String>("the agent closed the flow");
            }
            dec.push(&buf);
        }
    };
    let watchdog = idle_watchdog(idle, start, &last);
    tokio::select! {
        r = up => r,
        r = down => r,
        _ = watchdog => {
            let n = inc(&rstats.idle_timeouts);
            debug!(%service, %src, idle_timeouts = n, "xnat relay: UDP flow idle");
            Ok("idle timeout")
        }
    }
}

async fn idle_watchdog(idle: Duration, start: Instant, last: &AtomicU64) {
    let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        let since =
            (start.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
        if since >= idle.as_millis() as u64 {
            return;
        }
    }
}

/// A flow's queue of datagrams towards its agent; keeps the relay-wide
/// `udp_queued_bytes` gauge exact, also for what is left when the flow ends.
struct FlowQueue<'a> {
    rx: mpsc::Receiver<Vec<u8>>,
    gauge: &'a AtomicU64,
}

impl FlowQueue<'_> {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        let d = self.rx.recv().await?;
        self.gauge.fetch_sub(d.len() as u64, Ordering::AcqRel);
        Some(d)
    }

    fn try_recv(&mut self) -> Option<Vec<u8>> {
        let d = self.rx.try_recv().ok()?;
        self.gauge.fetch_sub(d.len() as u64, Ordering::AcqRel);
        Some(d)
    }
}

impl Drop for FlowQueue<'_> {
    fn drop(&mut self) {
        self.rx.close();
        while self.try_recv().is_some() {}
    }
}

struct SubOnDrop(Arc<AtomicU64>);

impl Drop for SubOnDrop {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The agent's end of one flow: a UDP socket connected to `local_addr`,
/// datagram frames on `conn`. Ends when the relay closes the data connection
/// (idle timeout, mapping gone) or on an error.
pub(crate) async fn agent_flow(
    conn: SecureConn,
    local_addr: &str,
    stats: &AgentStats,
) -> Result<(), String> {
    let target = tokio::net::lookup_host(local_addr)
        .await
        .map_err(|e| format!("cannot resolve {local_addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{local_addr} resolves to no address"))?;
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(target).await.map_err(|e| e.to_string())?;
    let (mut sr, mut sw, rest) = conn.split();
    let up = async {
        let mut dec = DatagramDecoder::new();
        dec.push(&rest);
        let mut buf = Vec::new();
        loop {
            while let Some(d) = dec.next_datagram().map_err(|e| e.to_string())? {
                // ECONNREFUSED from an earlier datagram (no local listener yet)
                // must not end the flow: UDP services come and go.
                let _ = sock.send(d).await;
                stats.bytes_up.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            if !sr.read(&mut buf).await.map_err(|e| e.to_string())? {
                return Ok::<(), String>(());
            }
            dec.push(&buf);
        }
    };
    let down = async {
        let mut buf = vec![0u8; RECV_BUF];
        let mut frames = Vec::new();
        loop {
            let n = match sock.recv(&mut buf).await {
                Ok(n) => n.min(MAX_DATAGRAM),
                // An ICMP "port unreachable" for an earlier datagram.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            frames.clear();
            encode_datagram(&mut frames, &buf[..n]);
            sw.write(&frames).await.map_err(|e| e.to_string())?;
            stats.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
        }
        #[allow(unreachable_code)]
        Ok::<(), String>(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}
