//! The intranet agent (`zs xnat agent`): dials out to every configured relay,
//! keeps one control session to each, registers its mappings with token
//! proofs, opens data connections on request and carries them to the local
//! services. Lost sessions come back with jittered exponential backoff and
//! re-register every mapping.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zs_crypto::session::ClientConfig as CryptoClient;

use crate::config::{ClientConfig, ClientService};
use crate::proto::{self, Decoder, Msg};
use crate::pump::{pump, End};
use crate::secure::SecureConn;
use crate::stats::{inc, AgentStats};

/// First reconnect delay (doubles up to `retry_interval`).
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Connect and handshake timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Data connections (pooled + carrying) per service beyond `max_load`.
const DATA_SLACK: u32 = 64;

/// An agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    crypto: Arc<CryptoClient>,
    stats: AgentStats,
    /// Per service: connections carried now (all relays).
    load: HashMap<String, Arc<AtomicU32>>,
    /// Per service: data connections open (pooled or carrying).
    data: HashMap<String, Arc<AtomicU32>>,
}

impl Agent {
    /// An agent for `cfg` (nothing happens until [`Agent::run`]).
    pub fn new(cfg: ClientConfig) -> Agent {
        let crypto = Arc::new(CryptoClient::pinned(cfg.relay_fingerprint));
        let load = cfg
            .services
            .keys()
            .map(|k| (k.clone(), Arc::default()))
            .collect();
        let data = cfg
            .services
            .keys()
            .map(|k| (k.clone(), Arc::default()))
            .collect();
        Agent {
            inner: Arc::new(Inner {
                cfg,
                crypto,
                stats: AgentStats::default(),
                load,
                data,
            }),
        }
    }

    /// Agent counters.
    pub fn stats(&self) -> &AgentStats {
        &self.inner.stats
    }

    /// Runs one tunnel per relay until the future is dropped.
    pub async fn run(self) {
        let mut tasks = Vec::new();
        for addr in self.inner.cfg.remote_addrs.clone() {
            tasks.push(tokio::spawn(self.clone().relay_loop(addr)));
        }
        let _guard = AbortAll(tasks);
        std::future::pending::<()>().await;
    }

    async fn relay_loop(self, addr: String) {
        let rng = SystemRandom::new();
        let mut backoff = BACKOFF_START;
        loop {
            let (established, reason) = self.session(&addr).await;
            if established {
                backoff = BACKOFF_START;
                let n = inc(&self.inner.stats.relay_lost);
                warn!(relay = %addr, %reason, relay_lost = n, "xnat agent: tunnel lost, reconnecting");
            } else {
                let n = inc(&self.inner.stats.connect_failures);
                warn!(relay = %addr, %reason, connect_failures = n, retry_in_ms = backoff.as_millis() as u64, "xnat agent: cannot reach the relay");
            }
            // Full jitter over [backoff/2, backoff].
            let mut r = [0u8; 2];
            let _ = rng.fill(&mut r);
            let f = 0.5 + (u16::from_le_bytes(r) as f64 / u16::MAX as f64) * 0.5;
            tokio::time::sleep(backoff.mul_f64(f)).await;
            backoff = (backoff * 2).min(self.inner.cfg.retry_max);
        }
    }

    async fn connect(&self, addr: &str) -> io::Result<SecureConn> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        SecureConn::connect(tcp, self.inner.crypto.clone(), CONNECT_TIMEOUT).await
    }

    /// One control session; returns whether it was established and why it ended.
    async fn session(&self, addr: &str) -> (bool, String) {
        let mut conn = match self.connect(addr).await {
            Ok(c) => c,
            Err(e) => return (false, e.to_string()),
        };
        let hello = Msg::Hello {
            version: proto::VERSION,
            agent: self.inner.cfg.agent_name.clone(),
        };
        if let Err(e) = conn.send(&hello).await {
            return (false, e.to_string());
        }
        let nonce = match tokio::time::timeout(CONNECT_TIMEOUT, conn.recv()).await {
            Ok(Ok(Msg::Challenge { nonce })) => nonce,
            Ok(Ok(m)) => return (false, format!("unexpected message kind 0x{:02x}", m.kind())),
            Ok(Err(e)) => return (false, e.to_string()),
            Err(_) => return (false, "no challenge from the relay".into()),
        };
        let binding = conn.channel_binding();
        for (name, s) in &self.inner.cfg.services {
            let m = Msg::Register {
                service: name.clone(),
                max_load: s.max_load,
                proof: proto::proof(&s.token, &nonce, &binding, name),
            };
            if let Err(e) = conn.send(&m).await {
                return (false, e.to_string());
            }
        }
        let n = inc(&self.inner.stats.sessions);
        info!(relay = %addr, sessions = n, "xnat agent: tunnel up");
        let (mut rd, mut wr, rest) = conn.split();
        // Reader task: decoded messages to a channel (so no read is ever cancelled).
        let (mtx, mut mrx) = mpsc::channel::<Result<Msg, String>>(64);
        let reader = tokio::spawn(async move {
            let mut dec = Decoder::new();
            dec.push(&rest);
            let mut buf = Vec::new();
            loop {
                loop {
                    match dec.next_msg() {
                        Ok(Some(m)) => {
                            if mtx.send(Ok(m)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = mtx.send(Err(format!("protocol error: {e}"))).await;
                            return;
                        }
                    }
                }
                match rd.read(&mut buf).await {
                    Ok(true) => dec.push(&buf),
                    Ok(false) => {
                        let _ = mtx.send(Err("relay closed the connection".into())).await;
                        return;
                    }
                    Err(e) => {
                        let _ = mtx.send(Err(format!("read error: {e}"))).await;
                        return;
                    }
                }
            }
        });
        let _reader = AbortAll(vec![reader]);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut sent_load: HashMap<String, u32> = HashMap::new();
        let mut last_rx = tokio::time::Instant::now();
        let hb = self.inner.cfg.heartbeat_timeout;
        let reason = loop {
            tokio::select! {
                m = mrx.recv() => {
                    last_rx = tokio::time::Instant::now();
                    match m {
                        Some(Ok(m)) => {
                            if let Some(reply) = self.on_msg(addr, m) {
                                if let Err(e) = wr.write(&reply.to_bytes()).await {
                                    break format!("write error: {e}");
                                }
                            }
                        }
                        Some(Err(reason)) => break reason,
                        None => break "reader ended".into(),
                    }
                }
                _ = tick.tick() => {
                    if last_rx.elapsed() > hb {
                        break format!("no message from the relay for {} s (heartbeat_timeout)", hb.as_secs());
                    }
                    let mut out = Vec::new();
                    for (name, l) in &self.inner.load {
                        let cur = l.load(Ordering::Relaxed);
                        if sent_load.get(name) != Some(&cur) {
                            sent_load.insert(name.clone(), cur);
                            Msg::Load { service: name.clone(), current: cur }.encode(&mut out);
                        }
                    }
                    if !out.is_empty() {
                        if let Err(e) = wr.write(&out).await {
                            break format!("write error: {e}");
                        }
                    }
                }
            }
        };
        (true, reason)
    }

    fn on_msg(&self, addr: &str, m: Msg) -> Option<Msg> {
        match m {
            Msg::Registered { service } => {
                let n = inc(&self.inner.stats.registered);
                info!(relay = %addr, %service, registered = n, "xnat agent: mapping served by the relay");
                None
            }
            Msg::Refused { service, reason } => {
                let n = inc(&self.inner.stats.refused);
                warn!(relay = %addr, %service, %reason, refused = n, "xnat agent: relay refused the mapping");
                None
            }
            Msg::OpenData { service, ticket } => {
                let (Some(svc), Some(data), Some(load)) = (
                    self.inner.cfg.services.get(&service),
                    self.inner.data.get(&service),
                    self.inner.load.get(&service),
                ) else {
                    warn!(relay = %addr, %service, "xnat agent: relay asked for a data connection of an unknown service");
                    return None;
                };
                if data.load(Ordering::Relaxed) >= svc.max_load.saturating_add(DATA_SLACK) {
                    warn!(relay = %addr, %service, "xnat agent: data connection limit reached, ignoring the request");
                    return None;
                }
                data.fetch_add(1, Ordering::Relaxed);
                let me = self.clone();
                let (svc, data, load, addr) =
                    (svc.clone(), data.clone(), load.clone(), addr.to_string());
                tokio::spawn(async move {
                    me.data_conn(&addr, &service, &svc, ticket, &load).await;
                    data.fetch_sub(1, Ordering::Relaxed);
                });
                None
            }
            Msg::Ping(v) => Some(Msg::Pong(v)),
            Msg::Pong(_) => None,
            other => {
                debug!(
                    kind = other.kind(),
                    "xnat agent: ignoring unexpected message"
                );
                None
            }
        }
    }

    async fn data_conn(
        &self,
        addr: &str,
        service: &str,
        svc: &ClientService,
        ticket: [u8; proto::TICKET_LEN],
        load: &AtomicU32,
    ) {
        let stats = &self.inner.stats;
        let mut conn = match self.connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                warn!(relay = %addr, %service, error = %e, "xnat agent: data connection failed");
                return;
            }
        };
        if conn.send(&Msg::DataHello { ticket }).await.is_err() {
            return;
        }
        inc(&stats.data_conns);
        // Pooled: wait (without limit) for a public peer.
        let peer: SocketAddr = match conn.recv().await {
            Ok(Msg::Start { peer }) => peer,
            Ok(m) => {
                warn!(relay = %addr, kind = m.kind(), "xnat agent: unexpected message on a data connection");
                return;
            }
            Err(_) => return,
        };
        load.fetch_add(1, Ordering::Relaxed);
        let _l = DecLoad(load);
        let local = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&svc.local_addr))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let n = inc(&stats.local_failures);
                warn!(%service, local_addr = %svc.local_addr, error = %e, local_failures = n, "xnat agent: local service unreachable");
                return;
            }
            Err(_) => {
                let n = inc(&stats.local_failures);
                warn!(%service, local_addr = %svc.local_addr, local_failures = n, "xnat agent: local service connect timed out");
                return;
            }
        };
        inc(&stats.forwarded);
        debug!(%service, %peer, "xnat agent: carrying a public connection");
        let (sr, sw, rest) = conn.split();
        match pump(
            local,
            sr,
            sw,
            rest,
            None,
            &[&stats.bytes_down],
            &[&stats.bytes_up],
        )
        .await
        {
            End::Done | End::Idle => {}
            End::Error(e) => {
                debug!(%service, %peer, error = %e, "xnat agent: connection ended with an error")
            }
        }
    }
}

struct DecLoad<'a>(&'a AtomicU32);

impl Drop for DecLoad<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct AbortAll(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
