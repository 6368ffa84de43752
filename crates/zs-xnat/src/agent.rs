//! The intranet agent (`zs xnat agent`): dials out to every configured relay,
//! keeps one control session to each, registers its mappings with token
//! proofs, opens data connections on request and carries them to the local
//! services. Lost sessions come back with jittered exponential backoff and
//! re-register every mapping.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use zs_crypto::session::ClientConfig as CryptoClient;

use crate::config::{ClientConfig, ClientService, Kind};
use crate::proto::{self, Decoder, Msg};
use crate::pump::{carry, End, Mode, Side};
use crate::relay::Reload;
use crate::secure::{Dialer, SecureConn};
use crate::stats::{inc, AgentStats};
use crate::virt::VirtualBackend;

/// First reconnect delay (doubles up to `retry_interval`).
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Connect and handshake timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Data connections (pooled + carrying) per service beyond `max_load`.
const DATA_SLACK: u32 = 64;

/// How an agent authenticates its relays (from `[client]`).
enum Dial {
    /// `relay_fingerprint` pinned in our session.
    Session(Arc<CryptoClient>),
    /// TLS 1.3: roots from `trusted_root`, the `hostname` to check (default:
    /// each relay's host).
    Tls(Arc<rustls::ClientConfig>, Option<String>),
}

impl Dial {
    fn of(cfg: &ClientConfig) -> io::Result<Dial> {
        match (&cfg.tls, cfg.relay_fingerprint) {
            (Some(t), _) => Ok(Dial::Tls(
                crate::secure::load_client_tls(t)?,
                t.hostname.clone(),
            )),
            (None, Some(fp)) => Ok(Dial::Session(Arc::new(CryptoClient::pinned(fp)))),
            (None, None) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "[client] needs relay_fingerprint (or [client.transport] type = \"tls\")",
            )),
        }
    }
}

/// The host of `host:port` (brackets of an IPv6 literal removed): the name a
/// relay's TLS certificate must carry when `hostname` is not set.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// An agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configuration the agent started with; its `services` are only the
    /// first value of [`Inner::services`].
    cfg: ClientConfig,
    /// How each relay is dialled: our pinned session, or TLS (its client
    /// configuration, or why it could not be loaded: each connect fails with it).
    dial: Result<Dial, String>,
    stats: AgentStats,
    /// The mappings served now (changed by [`Agent::reload`]). Held for map
    /// operations only, never across an `.await`.
    services: Mutex<Services>,
    /// Bumped on every reload; each control session re-registers on a change.
    changes: watch::Sender<u64>,
    /// Mappings that end in an in-process server: name -> backend and the
    /// virtual address its server listens on.
    virtuals: Mutex<HashMap<String, (VirtualBackend, SocketAddr)>>,
    /// Visitor connections and direct paths (`crate::visit`).
    visit: crate::visit::AgentVisit,
}

/// One mapping the agent serves.
#[derive(Clone)]
struct Served {
    conf: ClientService,
    /// Connections carried now (all relays).
    load: Arc<AtomicU32>,
    /// Data connections open (pooled or carrying).
    data: Arc<AtomicU32>,
}

type Services = BTreeMap<String, Served>;

fn served(conf: ClientService) -> Served {
    Served {
        conf,
        load: Arc::default(),
        data: Arc::default(),
    }
}

impl Agent {
    /// An agent for `cfg` (nothing happens until [`Agent::run`]).
    ///
    /// With `[client.transport] type = "tls"`, a `trusted_root` that cannot be
    /// read makes every connect fail with that error (logged at each retry);
    /// [`Agent::try_new`] reports it at once instead.
    pub fn new(cfg: ClientConfig) -> Agent {
        let dial = Dial::of(&cfg).map_err(|e| e.to_string());
        crate::pump::warn_if_plaintext("agent", cfg.data_encryption);
        let services = cfg
            .services
            .iter()
            .map(|(k, c)| (k.clone(), served(c.clone())))
            .collect();
        Agent {
            inner: Arc::new(Inner {
                cfg,
                dial,
                stats: AgentStats::default(),
                services: Mutex::new(services),
                changes: watch::channel(0).0,
                virtuals: Mutex::default(),
                visit: Default::default(),
            }),
        }
    }

    /// Like [`Agent::new`], but a TLS `trusted_root` that cannot be read or
    /// holds no certificate is an error here.
    pub fn try_new(cfg: ClientConfig) -> io::Result<Agent> {
        Dial::of(&cfg)?;
        Ok(Agent::new(cfg))
    }

    /// Applies a new set of mappings (a reloaded `[client.services]`) on every
    /// relay session without touching the others: new and changed ones are
    /// registered (a changed token is proved afresh), removed ones are
    /// unregistered. Connections already carried run to their end.
    pub fn reload(&self, services: BTreeMap<String, ClientService>) -> Reload {
        let mut report = Reload::default();
        {
            let mut cur = self.inner.services.lock().expect("agent services");
            cur.retain(|name, _| {
                let keep = services.contains_key(name);
                if !keep {
                    report.removed.push(name.clone());
                }
                keep
            });
            for (name, conf) in services {
                match cur.get_mut(&name) {
                    None => {
                        cur.insert(name.clone(), served(conf));
                        report.added.push(name);
                    }
                    Some(s) if s.conf != conf => {
                        s.conf = conf;
                        report.changed.push(name);
                    }
                    Some(_) => {}
                }
            }
        }
        if !report.is_empty() {
            self.inner.changes.send_modify(|v| *v += 1);
        }
        let n = inc(&self.inner.stats.reloads);
        info!(reloads = n, added = ?report.added, removed = ?report.removed, changed = ?report.changed, "xnat agent: mappings reloaded");
        report
    }

    /// Makes mapping `service` end in the in-process server listening on
    /// `addr` of `backend` (a zs-core `Server` started on that
    /// [`VirtualBackend`]) instead of connecting to its `local_addr`: each
    /// public connection becomes a connection of that server, the public
    /// client's bytes its bytes. The mapping itself (token, `max_load`) still
    /// comes from `[client.services.NAME]`; its `local_addr` is not used.
    /// The public connections reach the server through the data connection's
    /// session, so with `[client.transport] encryption = "none"` each one is
    /// refused, logged and counted in `local_failures`.
    pub fn serve_in_process(&self, service: &str, backend: VirtualBackend, addr: SocketAddr) {
        self.inner
            .virtuals
            .lock()
            .expect("agent virtuals")
            .insert(service.to_string(), (backend, addr));
    }

    /// The mappings served now, by name.
    pub fn services(&self) -> BTreeMap<String, ClientService> {
        let cur = self.inner.services.lock().expect("agent services");
        cur.iter()
            .map(|(k, s)| (k.clone(), s.conf.clone()))
            .collect()
    }

    fn snapshot(&self) -> Services {
        self.inner.services.lock().expect("agent services").clone()
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

    pub(crate) fn visit_side(&self) -> &crate::visit::AgentVisit {
        &self.inner.visit
    }

    pub(crate) async fn connect(&self, addr: &str) -> io::Result<SecureConn> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let dialer = match &self.inner.dial {
            Ok(Dial::Session(c)) => Dialer::Session(c.clone()),
            Ok(Dial::Tls(c, name)) => {
                Dialer::Tls(c.clone(), name.clone().unwrap_or_else(|| host_of(addr)))
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidInput, e.clone())),
        };
        SecureConn::dial(tcp, &dialer, CONNECT_TIMEOUT).await
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
        let mut changes = self.inner.changes.subscribe();
        changes.mark_unchanged();
        // What this session has registered (name -> settings it proved).
        let mut registered: BTreeMap<String, ClientService> = BTreeMap::new();
        // Names the relay refused since they were last registered.
        let mut refused: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::new();
        self.registrations(&mut registered, &mut refused, &nonce, &binding, &mut out);
        if let Err(e) = conn.send_raw(&out).await {
            return (false, e.to_string());
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
                            if let Msg::Refused { service, .. } = &m {
                                // Not served on this relay: the next reload
                                // that lists it registers it again.
                                refused.insert(service.clone());
                            }
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
                Ok(()) = changes.changed() => {
                    let mut out = Vec::new();
                    self.registrations(&mut registered, &mut refused, &nonce, &binding, &mut out);
                    sent_load.retain(|name, _| registered.contains_key(name));
                    if !out.is_empty() {
                        if let Err(e) = wr.write(&out).await {
                            break format!("write error: {e}");
                        }
                    }
                }
                _ = tick.tick() => {
                    if last_rx.elapsed() > hb {
                        break format!("no message from the relay for {} s (heartbeat_timeout)", hb.as_secs());
                    }
                    let mut out = Vec::new();
                    for (name, s) in self.snapshot() {
                        let cur = s.load.load(Ordering::Relaxed);
                        if sent_load.get(&name) != Some(&cur) {
                            sent_load.insert(name.clone(), cur);
                            Msg::Load { service: name, current: cur }.encode(&mut out);
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

    /// Appends to `out` what brings the relay from `registered` to the
    /// mappings served now: `Register` for new, changed or `refused` ones (a
    /// fresh proof over this session's nonce and binding), `Unregister` for
    /// removed ones.
    fn registrations(
        &self,
        registered: &mut BTreeMap<String, ClientService>,
        refused: &mut BTreeSet<String>,
        nonce: &[u8; proto::NONCE_LEN],
        binding: &[u8; 32],
        out: &mut Vec<u8>,
    ) {
        let now = self.snapshot();
        registered.retain(|name, _| {
            let keep = now.contains_key(name);
            if !keep {
                Msg::Unregister {
                    service: name.clone(),
                }
                .encode(out);
            }
            keep
        });
        refused.retain(|name| now.contains_key(name));
        for (name, s) in now {
            if registered.get(&name) == Some(&s.conf) && !refused.remove(&name) {
                continue;
            }
            Msg::Register {
                service: name.clone(),
                max_load: s.conf.max_load,
                proof: proto::proof(&s.conf.token, nonce, binding, &name),
            }
            .encode(out);
            registered.insert(name, s.conf);
        }
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
                let found = self
                    .inner
                    .services
                    .lock()
                    .expect("agent services")
                    .get(&service)
                    .cloned();
                let Some(Served {
                    conf: svc,
                    data,
                    load,
                }) = found
                else {
                    warn!(relay = %addr, %service, "xnat agent: relay asked for a data connection of an unknown service");
                    return None;
                };
                if data.load(Ordering::Relaxed) >= svc.max_load.saturating_add(DATA_SLACK) {
                    warn!(relay = %addr, %service, "xnat agent: data connection limit reached, ignoring the request");
                    return None;
                }
                data.fetch_add(1, Ordering::Relaxed);
                let me = self.clone();
                let addr = addr.to_string();
                tokio::spawn(async move {
                    me.data_conn(&addr, &service, &svc, ticket, &load).await;
                    data.fetch_sub(1, Ordering::Relaxed);
                });
                None
            }
            Msg::Ping(v) => Some(Msg::Pong(v)),
            Msg::Pong(_) => None,
            Msg::Visit { body } => {
                crate::visit::agent_control(self, addr, body);
                None
            }
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
        let mut conn = conn;
        let mut carried = 0u64;
        // A framed public connection that ended cleanly gives the data
        // connection back: it waits for the next start, as a fresh one does.
        while let Some(back) = self.data_start(addr, service, svc, conn, load).await {
            conn = back;
            carried += 1;
            if conn.send(&Msg::DataDone).await.is_err() {
                return;
            }
            inc(&stats.data_reused);
        }
        debug!(relay = %addr, %service, carried, "xnat agent: data connection closed");
    }

    /// Waits (pooled, without limit) for the relay to attach a public peer
    /// to `conn` and carries it; returns the connection when it was framed
    /// and both directions ended cleanly.
    async fn data_start(
        &self,
        addr: &str,
        service: &str,
        svc: &ClientService,
        mut conn: SecureConn,
        load: &AtomicU32,
    ) -> Option<SecureConn> {
        let stats = &self.inner.stats;
        let (peer, udp, mode): (SocketAddr, bool, Mode) = match conn.recv().await {
            Ok(Msg::Start { peer }) => (peer, false, Mode::Raw),
            Ok(Msg::StartFramed { peer }) => (peer, false, Mode::Framed),
            Ok(Msg::StartUdp { peer }) => (peer, true, Mode::Raw),
            Ok(Msg::Visit { body }) => {
                crate::visit::agent_data(self, conn, service, &svc.local_addr, body).await;
                return None;
            }
            Ok(m) => {
                warn!(relay = %addr, kind = m.kind(), "xnat agent: unexpected message on a data connection");
                return None;
            }
            Err(_) => return None,
        };
        if mode == Mode::Framed
            && self.inner.cfg.data_encryption == crate::config::DataEncryption::None
        {
            // Framed connections stay inside the session; this agent was told
            // to carry plaintext: the relay's settings differ from ours.
            let n = inc(&stats.local_failures);
            warn!(relay = %addr, %service, local_failures = n, "xnat agent: the relay sends encrypted (framed) data connections but [client.transport] encryption = \"none\": set it the same on relay and agent");
            return None;
        }
        if udp != (svc.kind == Kind::Udp) {
            let n = inc(&stats.kind_mismatch);
            warn!(relay = %addr, %service, local_type = svc.kind.as_str(), relay_type = if udp { "udp" } else { "tcp" }, kind_mismatch = n, "xnat agent: the relay's mapping has another type than ours; fix `type` on one side");
            return None;
        }
        load.fetch_add(1, Ordering::Relaxed);
        let _l = DecLoad(load);
        if udp {
            inc(&stats.forwarded);
            debug!(%service, %peer, "xnat agent: carrying a UDP flow");
            if let Err(e) = crate::udp::agent_flow(conn, &svc.local_addr, stats).await {
                let n = inc(&stats.local_failures);
                warn!(%service, %peer, error = %e, local_failures = n, "xnat agent: UDP flow ended with an error");
            }
            return None;
        }
        let virt = self
            .inner
            .virtuals
            .lock()
            .expect("agent virtuals")
            .get(service)
            .cloned();
        if let Some((backend, vaddr)) = virt {
            if self.inner.cfg.data_encryption == crate::config::DataEncryption::None {
                // The in-process server is reached through the data
                // connection's session; a plaintext data connection has none.
                let n = inc(&stats.local_failures);
                warn!(%service, local_failures = n, "xnat agent: in-process mappings need encrypted data connections ([client.transport] encryption = \"session\"); connection refused");
                return None;
            }
            inc(&stats.forwarded);
            debug!(%service, %peer, "xnat agent: carrying a public connection to the in-process server");
            // In-process connections are not handed back (framed or not):
            // the relay sees no DataDone and drops the data connection.
            let (sr, sw, rest) = match mode {
                Mode::Raw => conn.split(),
                Mode::Framed => {
                    let (sr, sw) = conn.split_framed();
                    (sr, sw, Vec::new())
                }
            };
            let carried = backend
                .carry(
                    vaddr,
                    peer,
                    sr,
                    sw,
                    rest,
                    (&stats.bytes_up, &stats.bytes_down),
                )
                .await;
            if let Err(e) = carried {
                let n = inc(&stats.local_failures);
                warn!(%service, error = %e, local_failures = n, "xnat agent: in-process server connection failed");
            }
            return None;
        }
        let mut local = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(&svc.local_addr),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let n = inc(&stats.local_failures);
                warn!(%service, local_addr = %svc.local_addr, error = %e, local_failures = n, "xnat agent: local service unreachable");
                return None;
            }
            Err(_) => {
                let n = inc(&stats.local_failures);
                warn!(%service, local_addr = %svc.local_addr, local_failures = n, "xnat agent: local service connect timed out");
                return None;
            }
        };
        if svc.proxy_protocol {
            let dst = local.peer_addr().unwrap_or(peer);
            let header = proto::proxy_v2_header(peer, dst);
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut local, &header).await {
                let n = inc(&stats.local_failures);
                warn!(%service, error = %e, local_failures = n, "xnat agent: cannot send the PROXY header to the local service");
                return None;
            }
        }
        inc(&stats.forwarded);
        debug!(%service, %peer, "xnat agent: carrying a public connection");
        let (end, back) = carry(
            Side::Agent,
            mode,
            self.inner.cfg.data_encryption,
            self.inner.cfg.plain_copy,
            local,
            conn,
            CONNECT_TIMEOUT,
            None,
            &[&stats.bytes_down],
            &[&stats.bytes_up],
        )
        .await;
        if let End::Error(e) = end {
            debug!(%service, %peer, error = %e, "xnat agent: connection ended with an error");
        }
        back
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
