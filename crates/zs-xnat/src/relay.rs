//! The public relay (`zs xnat server`).
//!
//! One tokio task accepts on `bind_addr`; every connection runs the secure
//! handshake, then its first message says what it is: [`Msg::Hello`] opens a
//! control session (one per agent), [`Msg::DataHello`] brings a data
//! connection the relay asked for with a ticket. A mapping's public listener
//! is a task that exists only while at least one agent serves the mapping.
//! All shared state sits behind one `std::sync::Mutex` held for map lookups
//! only (never across an `.await`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use zs_crypto::session::{ServerConfig as CryptoServer, ServerIdentity};
use zs_crypto::Fingerprint;

use crate::config::{Kind, ServerConfig, ServerService};
use crate::proto::{self, Decoder, Msg, NONCE_LEN, TICKET_LEN};
use crate::pump::{carry, End, Mode, Side};
use crate::secure::SecureConn;
use crate::stats::{dec, inc, MappingStats, RelayStats};
use crate::store::MappingStore;

/// Control messages queued to one agent before it counts as not reading.
const CONTROL_QUEUE: usize = 256;
/// Connections in their handshake at once.
const MAX_PENDING: usize = 512;
/// How long a visitor waits for a data connection.
const DATA_WAIT: Duration = Duration::from_secs(5);
/// How long a ticket stays valid.
const TICKET_TTL: Duration = Duration::from_secs(10);
/// Wrong proofs on one control session before it is dropped.
const MAX_REFUSALS: u32 = 16;
/// Command-API sessions at once.
const ADMIN_SESSIONS: usize = 4;

/// Loads the relay identity seed from `path` (64 hex digits), creating it
/// (mode 0600) when the file does not exist.
pub fn load_or_create_identity(path: &Path) -> io::Result<ServerIdentity> {
    let bad = |m: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {m}", path.display()),
        )
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = zs_crypto::hash::from_hex(text.trim())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| bad("expected 64 hex digits (an Ed25519 seed)".into()))?;
            let mut seed = [0u8; 32];
            seed.copy_from_slice(&bytes);
            ServerIdentity::from_seed(&seed).map_err(|e| bad(e.to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (id, seed) =
                ServerIdentity::generate(&SystemRandom::new()).map_err(|e| bad(e.to_string()))?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            use std::io::Write;
            let mut f = opts.open(path)?;
            writeln!(f, "{}", zs_crypto::hash::to_hex(&seed))?;
            info!(file = %path.display(), fingerprint = %id.fingerprint(), "xnat relay: created a new identity");
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// What a reload changed, by mapping name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reload {
    /// Mappings that are new.
    pub added: Vec<String>,
    /// Mappings that are gone.
    pub removed: Vec<String>,
    /// Mappings whose settings changed.
    pub changed: Vec<String>,
}

impl Reload {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A relay. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ServerConfig,
    /// Our session, and TLS when `[server.transport] type = "tls"`.
    acceptor: crate::secure::Acceptor,
    fingerprint: Fingerprint,
    listener: Mutex<Option<TcpListener>>,
    addr: SocketAddr,
    stats: RelayStats,
    state: Mutex<State>,
    agent_slots: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    rng: SystemRandom,
    /// The store of mappings added through the command API (with `admin_token`).
    store: Option<Arc<MappingStore>>,
    /// Command-API sessions at once.
    admin_slots: Arc<Semaphore>,
    /// One command-API change at a time (check, store, apply).
    admin_lock: tokio::sync::Mutex<()>,
    /// Visitors and direct paths (`crate::visit`).
    visit: crate::visit::RelayVisit,
}

#[derive(Default)]
struct State {
    next_agent: u64,
    services: HashMap<String, Svc>,
    tickets: HashMap<[u8; TICKET_LEN], Ticket>,
    /// Mappings added through the command API (also in the store).
    runtime: BTreeMap<String, ServerService>,
    /// Names the config file defines now.
    file: std::collections::BTreeSet<String>,
}

struct Svc {
    conf: ServerService,
    stats: Arc<MappingStats>,
    agents: Vec<AgentEntry>,
    listener: Option<(JoinHandle<()>, SocketAddr)>,
}

struct AgentEntry {
    id: u64,
    tx: mpsc::Sender<Msg>,
    max_load: u32,
    reported: u32,
    active: Arc<AtomicU64>,
    pool: VecDeque<Pooled>,
    requested: usize,
    /// Framed data connections carrying a public connection now: they come
    /// back to `pool` when it ends cleanly, so they count as ready when
    /// deciding whether to ask for a replacement.
    returning: usize,
}

/// A ready data connection.
pub(crate) struct Pooled {
    pub(crate) conn: SecureConn,
    /// Public connections it carried before.
    uses: u32,
    /// When the agent opened it.
    born: Instant,
}

impl Pooled {
    fn new(conn: SecureConn) -> Pooled {
        Pooled {
            conn,
            uses: 0,
            born: Instant::now(),
        }
    }
}

/// A data connection claimed for one public connection.
pub(crate) struct Claimed {
    pub(crate) data: Pooled,
    /// The agent's count of connections carried through this relay.
    pub(crate) active: Arc<AtomicU64>,
    agent: u64,
}

struct Ticket {
    service: String,
    agent: u64,
    expires: Instant,
    waiter: Option<oneshot::Sender<SecureConn>>,
}

impl Relay {
    /// Binds `cfg.bind_addr` with the identity stored in `cfg.identity_file`.
    pub async fn bind(cfg: ServerConfig) -> io::Result<Relay> {
        let id = load_or_create_identity(&cfg.identity_file)?;
        Relay::bind_with_identity(cfg, id).await
    }

    /// Binds `cfg.bind_addr` with `identity` (`identity_file` is ignored).
    pub async fn bind_with_identity(
        cfg: ServerConfig,
        identity: ServerIdentity,
    ) -> io::Result<Relay> {
        let tls = match &cfg.tls {
            Some(t) => Some(crate::secure::load_server_tls(t)?),
            None => None,
        };
        let listener = TcpListener::bind(cfg.bind_addr).await?;
        let addr = listener.local_addr()?;
        let fingerprint = identity.fingerprint();
        crate::pump::warn_if_plaintext("relay", cfg.data_encryption);
        let mut state = State::default();
        let mut store = None;
        let mut all = cfg.services.clone();
        if cfg.admin.admin_token.is_some() {
            let (st, stored) = MappingStore::open(&cfg.admin.store_dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("store_dir {}: {e}", cfg.admin.store_dir.display()),
                )
            })?;
            for (name, conf) in stored {
                if cfg.services.contains_key(&name) {
                    warn!(service = %name, "xnat relay: the config file defines a mapping also added at runtime; the file's wins and the stored one is deleted");
                    st.delete(&name)?;
                    continue;
                }
                info!(service = %name, bind_addr = %conf.bind_addr, "xnat relay: mapping added at runtime restored from the store");
                state.runtime.insert(name.clone(), conf.clone());
                all.insert(name, conf);
            }
            store = Some(st);
        }
        state.file = cfg.services.keys().cloned().collect();
        for (name, conf) in &all {
            state.services.insert(
                name.clone(),
                Svc {
                    conf: conf.clone(),
                    stats: Arc::default(),
                    agents: Vec::new(),
                    listener: None,
                },
            );
        }
        Ok(Relay {
            inner: Arc::new(Inner {
                acceptor: crate::secure::Acceptor {
                    session: Arc::new(CryptoServer::with_identity(Arc::new(identity))),
                    tls,
                },
                fingerprint,
                listener: Mutex::new(Some(listener)),
                addr,
                stats: RelayStats::default(),
                state: Mutex::new(state),
                agent_slots: Arc::new(Semaphore::new(cfg.max_agents)),
                pending: Arc::new(Semaphore::new(MAX_PENDING)),
                rng: SystemRandom::new(),
                store,
                admin_slots: Arc::new(Semaphore::new(ADMIN_SESSIONS)),
                admin_lock: tokio::sync::Mutex::new(()),
                visit: Default::default(),
                cfg,
            }),
        })
    }

    /// Where agents connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The fingerprint agents pin (`relay_fingerprint`).
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.fingerprint
    }

    /// Relay-wide counters.
    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }

    /// `[server] max_udp_flows`.
    pub(crate) fn max_udp_flows(&self) -> usize {
        self.inner.cfg.admin.max_udp_flows
    }

    /// Per-mapping counters.
    pub fn mapping_stats(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        let st = self.inner.state.lock().expect("relay state");
        st.services
            .iter()
            .map(|(k, s)| (k.clone(), s.stats.snapshot()))
            .collect()
    }

    /// The public address of `service` while it listens (some agent serves it).
    pub fn public_addr(&self, service: &str) -> Option<SocketAddr> {
        let st = self.inner.state.lock().expect("relay state");
        st.services.get(service)?.listener.as_ref().map(|l| l.1)
    }

    /// Applies a new set of mappings (a reloaded `[server.services]`) without
    /// touching the others: a new name is accepted from now on; a removed one
    /// closes its public port and tells its agents (`Refused`); one whose token
    /// or public address changed drops its agents' registrations (they must
    /// prove the new token) and closes its port (so does a changed `type`); other changes (idle timeout,
    /// `max_connections`) apply to connections accepted from now on.
    /// Connections already carried run to their end in every case.
    ///
    /// `services` are the config file's; mappings added through the command
    /// API stay unless the file now defines the same name (the file wins and
    /// the stored one is deleted).
    pub fn reload(&self, services: BTreeMap<String, ServerService>) -> Reload {
        let mut services = services;
        let shadowed: Vec<String> = {
            let mut st = self.inner.state.lock().expect("relay state");
            st.file = services.keys().cloned().collect();
            let shadowed: Vec<String> = st
                .runtime
                .keys()
                .filter(|n| services.contains_key(*n))
                .cloned()
                .collect();
            for n in &shadowed {
                st.runtime.remove(n);
            }
            for (n, c) in &st.runtime {
                services.insert(n.clone(), c.clone());
            }
            shadowed
        };
        for n in shadowed {
            warn!(service = %n, "xnat relay: the config file now defines a mapping added at runtime; the file's wins and the stored one is deleted");
            if let Some(store) = &self.inner.store {
                if let Err(e) = store.delete(&n) {
                    warn!(service = %n, error = %e, "xnat relay: cannot delete the stored mapping");
                }
            }
        }
        self.apply(services)
    }

    /// Makes `services` the whole set of mappings.
    fn apply(&self, services: BTreeMap<String, ServerService>) -> Reload {
        let mut report = Reload::default();
        let mut st = self.inner.state.lock().expect("relay state");
        let old: Vec<String> = st.services.keys().cloned().collect();
        for name in old {
            if !services.contains_key(&name) {
                if let Some(mut svc) = st.services.remove(&name) {
                    self.drop_registrations(
                        &name,
                        &mut svc,
                        "removed from the relay's configuration",
                    );
                }
                st.tickets.retain(|_, t| t.service != name);
                report.removed.push(name);
            }
        }
        for (name, conf) in services {
            match st.services.get_mut(&name) {
                None => {
                    st.services.insert(
                        name.clone(),
                        Svc {
                            conf,
                            stats: Arc::default(),
                            agents: Vec::new(),
                            listener: None,
                        },
                    );
                    report.added.push(name);
                }
                Some(svc) if svc.conf != conf => {
                    let rebind = svc.conf.token != conf.token
                        || svc.conf.bind_addr != conf.bind_addr
                        || svc.conf.kind != conf.kind;
                    svc.conf = conf;
                    if rebind {
                        self.drop_registrations(
                            &name,
                            svc,
                            "the mapping's token or public address changed: register again",
                        );
                        st.tickets.retain(|_, t| t.service != name);
                    }
                    report.changed.push(name);
                }
                Some(_) => {}
            }
        }
        drop(st);
        let n = inc(&self.inner.stats.reloads);
        info!(reloads = n, added = ?report.added, removed = ?report.removed, changed = ?report.changed, "xnat relay: mappings reloaded");
        report
    }

    /// The mappings now configured, by name.
    pub fn services(&self) -> BTreeMap<String, ServerService> {
        let st = self.inner.state.lock().expect("relay state");
        st.services
            .iter()
            .map(|(k, s)| (k.clone(), s.conf.clone()))
            .collect()
    }

    /// Forgets every agent of `svc` (telling each why) and closes its port.
    fn drop_registrations(&self, name: &str, svc: &mut Svc, why: &str) {
        for a in svc.agents.drain(..) {
            // A full control queue means the agent is not reading: its session
            // ends by itself, so the notice may be lost.
            let _ = a.tx.try_send(Msg::Refused {
                service: name.to_string(),
                reason: why.to_string(),
            });
        }
        svc.stats.agents.store(0, Ordering::Relaxed);
        self.close_listener(name, svc, why);
    }

    fn close_listener(&self, name: &str, svc: &mut Svc, why: &str) {
        if let Some((task, addr)) = svc.listener.take() {
            task.abort();
            let n = inc(&self.inner.stats.listeners_closed);
            info!(service = %name, %addr, listeners_closed = n, "xnat relay: public port closed ({why})");
        }
    }

    /// Serves until the task is dropped or aborted.
    pub async fn run(self) -> io::Result<()> {
        let listener = self
            .inner
            .listener
            .lock()
            .expect("relay listener")
            .take()
            .ok_or_else(|| io::Error::other("relay already running"))?;
        info!(addr = %self.inner.addr, fingerprint = %self.inner.fingerprint, "xnat relay: listening for agents");
        let housekeeping = tokio::spawn(self.clone().housekeeping());
        let _guard = AbortOnDrop(housekeeping);
        let expiry = tokio::spawn(self.clone().expire_pooled());
        let _expiry = AbortOnDrop(expiry);
        let _listeners = ListenersGuard(self.clone());
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "xnat relay: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.inner.pending.clone().try_acquire_owned() else {
                inc(&self.inner.stats.handshake_failures);
                warn!(%peer, "xnat relay: too many connections in handshake, closing");
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.incoming(tcp, peer, permit).await;
            });
        }
    }

    async fn housekeeping(self) {
        let mut tick = tokio::time::interval(
            self.inner
                .cfg
                .heartbeat_interval
                .max(Duration::from_millis(100)),
        );
        let mut n = 0u64;
        loop {
            tick.tick().await;
            n += 1;
            let now = Instant::now();
            let mut st = self.inner.state.lock().expect("relay state");
            let expired: Vec<_> = st
                .tickets
                .iter()
                .filter(|(_, t)| t.expires < now)
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                if let Some(t) = st.tickets.remove(&k) {
                    if let Some(a) = st
                        .services
                        .get_mut(&t.service)
                        .and_then(|s| s.agents.iter_mut().find(|a| a.id == t.agent))
                    {
                        a.requested = a.requested.saturating_sub(1);
                    }
                }
            }
            for s in st.services.values() {
                for a in &s.agents {
                    let _ = a.tx.try_send(Msg::Ping(n));
                }
            }
        }
    }

    /// Closes pooled data connections that reached `data_reuse_age` while
    /// waiting in the pool, and asks their agents for replacements (a claim
    /// also skips them, so none is used between two checks).
    async fn expire_pooled(self) {
        let age = self.inner.cfg.data_reuse_age;
        let mut tick = tokio::time::interval(
            (age / 4).clamp(Duration::from_millis(50), Duration::from_secs(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut old = Vec::new();
            let mut st = self.inner.state.lock().expect("relay state");
            let mut refill = Vec::new();
            for (name, s) in &mut st.services {
                for a in &mut s.agents {
                    let n = take_expired(&mut a.pool, age, &mut old);
                    if n > 0 {
                        let ready = a.pool.len() + a.requested + a.returning;
                        let missing = self.inner.cfg.pool_size.saturating_sub(ready);
                        refill.push((name.clone(), a.id, missing));
                    }
                }
            }
            for (service, agent, missing) in refill {
                for _ in 0..missing {
                    self.request_data(&mut st, &service, agent, None);
                }
            }
            drop(st);
            self.close_pooled(old, "reached data_reuse_age in the pool");
        }
    }

    /// Closes data connections taken out of a pool (session close record,
    /// then TCP), each in its own task, bounded by `handshake_timeout`.
    fn close_pooled(&self, conns: Vec<Pooled>, why: &'static str) {
        if conns.is_empty() {
            return;
        }
        let n = self
            .inner
            .stats
            .data_expired
            .fetch_add(conns.len() as u64, Ordering::Relaxed)
            + conns.len() as u64;
        debug!(
            closed = conns.len(),
            data_expired = n,
            reason = why,
            "xnat relay: pooled data connections closed"
        );
        let t = self.inner.cfg.handshake_timeout;
        for mut p in conns {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(t, p.conn.close()).await;
            });
        }
    }

    async fn incoming(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let hs = self.inner.cfg.handshake_timeout;
        let mut conn = match SecureConn::accept_any(tcp, &self.inner.acceptor, hs).await {
            Ok(c) => c,
            Err(e) => {
                let n = inc(&self.inner.stats.handshake_failures);
                warn!(%peer, error = %e, handshake_failures = n, "xnat relay: secure handshake failed");
                return;
            }
        };
        let first = match tokio::time::timeout(hs, conn.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                let n = inc(&self.inner.stats.protocol_errors);
                warn!(%peer, error = %e, protocol_errors = n, "xnat relay: bad first message");
                return;
            }
            Err(_) => {
                let n = inc(&self.inner.stats.protocol_errors);
                warn!(%peer, protocol_errors = n, "xnat relay: no first message within the handshake timeout");
                return;
            }
        };
        drop(permit);
        match first {
            Msg::Hello { version, agent } => {
                if version != proto::VERSION {
                    let n = inc(&self.inner.stats.protocol_errors);
                    warn!(%peer, version, protocol_errors = n, "xnat relay: unsupported protocol version");
                    return;
                }
                let Ok(slot) = self.inner.agent_slots.clone().try_acquire_owned() else {
                    let n = inc(&self.inner.stats.agents_over_limit);
                    warn!(%peer, agents_over_limit = n, max_agents = self.inner.cfg.max_agents, "xnat relay: too many agents, closing");
                    return;
                };
                self.control(conn, peer, agent).await;
                drop(slot);
            }
            Msg::DataHello { ticket } => self.data_conn(conn, peer, ticket),
            Msg::Visit { body } => crate::visit::relay_conn(&self, conn, peer, body).await,
            Msg::AdminHello { version } => {
                let Ok(_slot) = self.inner.admin_slots.clone().try_acquire_owned() else {
                    let n = inc(&self.inner.stats.admin_refused);
                    warn!(%peer, admin_refused = n, "xnat relay: too many command-API sessions, closing");
                    return;
                };
                crate::admin::serve(&self, conn, peer, version).await;
            }
            other => {
                let n = inc(&self.inner.stats.protocol_errors);
                warn!(%peer, kind = other.kind(), protocol_errors = n, "xnat relay: unexpected first message");
            }
        }
    }

    fn data_conn(&self, conn: SecureConn, peer: SocketAddr, ticket: [u8; TICKET_LEN]) {
        let mut st = self.inner.state.lock().expect("relay state");
        let Some(t) = st.tickets.remove(&ticket) else {
            drop(st);
            let n = inc(&self.inner.stats.bad_tickets);
            warn!(%peer, bad_tickets = n, "xnat relay: data connection with an unknown or expired ticket");
            return;
        };
        let Some(a) = st
            .services
            .get_mut(&t.service)
            .and_then(|s| s.agents.iter_mut().find(|a| a.id == t.agent))
        else {
            return; // the agent left meanwhile
        };
        a.requested = a.requested.saturating_sub(1);
        let conn = match t.waiter {
            Some(w) => match w.send(conn) {
                Ok(()) => return,
                Err(conn) => conn,
            },
            None => conn,
        };
        a.pool.push_back(Pooled::new(conn));
    }

    /// Whether public connections are carried framed (`StartFramed`), so
    /// their data connections can come back to the pool.
    fn reuse(&self) -> bool {
        self.inner.cfg.data_reuse > 1
            && self.inner.cfg.data_encryption == crate::config::DataEncryption::Session
    }

    /// A framed data connection whose public connection ended: waits for the
    /// agent's `DataDone` and pools the connection again unless it reached
    /// `data_reuse` uses or `data_reuse_age`, or the pool is full (twice
    /// `pool_size`). A connection the agent ended wrongly is dropped and
    /// counted.
    async fn give_back(&self, service: &str, agent: u64, back: Option<Pooled>) {
        let back = match back {
            Some(mut p) => {
                let hs = self.inner.cfg.handshake_timeout;
                match tokio::time::timeout(hs, p.conn.recv()).await {
                    Ok(Ok(Msg::DataDone)) => Some(p),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        // The agent declines to reuse it (an in-process
                        // mapping, its own limits): closed, not an error.
                        debug!(%service, agent, "xnat relay: the agent closed a framed data connection after its public connection");
                        None
                    }
                    other => {
                        let n = inc(&self.inner.stats.data_reuse_errors);
                        let why = match other {
                            Ok(Ok(m)) => {
                                format!("message kind 0x{:02x} instead of DataDone", m.kind())
                            }
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "no DataDone within the handshake timeout".into(),
                        };
                        warn!(%service, agent, data_reuse_errors = n, reason = %why, "xnat relay: data connection ended wrongly, dropped");
                        None
                    }
                }
            }
            None => None,
        };
        let cfg = &self.inner.cfg;
        let done = {
            let mut st = self.inner.state.lock().expect("relay state");
            let Some(a) = st
                .services
                .get_mut(service)
                .and_then(|s| s.agents.iter_mut().find(|a| a.id == agent))
            else {
                return; // the agent or the mapping is gone: the connection closes
            };
            a.returning = a.returning.saturating_sub(1);
            let mut done = None;
            if let Some(p) = back {
                if p.uses < cfg.data_reuse
                    && p.born.elapsed() < cfg.data_reuse_age
                    && a.pool.len() < cfg.pool_size.max(1) * 2
                {
                    // Most recently used first: warm, and the oldest age out.
                    a.pool.push_front(p);
                    return;
                }
                done = Some(p);
            }
            // Not pooled again: keep the pool at its size.
            if a.pool.len() + a.requested + a.returning < cfg.pool_size {
                self.request_data(&mut st, service, agent, None);
            }
            done
        };
        if let Some(mut p) = done {
            // Its uses or age are spent, or the pool is full: an orderly
            // close, so the agent sees the end of a session, not a cut.
            let _ = tokio::time::timeout(cfg.handshake_timeout, p.conn.close()).await;
        }
    }

    /// Issues a ticket to agent `agent` of `service` and asks it for a data connection.
    fn request_data(
        &self,
        st: &mut State,
        service: &str,
        agent: u64,
        waiter: Option<oneshot::Sender<SecureConn>>,
    ) -> bool {
        let mut ticket = [0u8; TICKET_LEN];
        if self.inner.rng.fill(&mut ticket).is_err() {
            return false;
        }
        let Some(a) = st
            .services
            .get_mut(service)
            .and_then(|s| s.agents.iter_mut().find(|a| a.id == agent))
        else {
            return false;
        };
        if a.tx
            .try_send(Msg::OpenData {
                service: service.to_string(),
                ticket,
            })
            .is_err()
        {
            return false;
        }
        a.requested += 1;
        st.tickets.insert(
            ticket,
            Ticket {
                service: service.to_string(),
                agent,
                expires: Instant::now() + TICKET_TTL,
                waiter,
            },
        );
        true
    }

    async fn control(&self, conn: SecureConn, peer: SocketAddr, agent_name: String) {
        let mut conn = conn;
        let mut nonce = [0u8; NONCE_LEN];
        if self.inner.rng.fill(&mut nonce).is_err() {
            return;
        }
        let binding = conn.channel_binding();
        if conn.send(&Msg::Challenge { nonce }).await.is_err() {
            return;
        }
        let id = {
            let mut st = self.inner.state.lock().expect("relay state");
            st.next_agent += 1;
            st.next_agent
        };
        inc(&self.inner.stats.agents_total);
        let n = inc(&self.inner.stats.agents_connected);
        info!(%peer, agent = %agent_name, id, agents_connected = n, "xnat relay: agent connected");
        let (mut rd, mut wr, rest) = conn.split();
        let (tx, mut rx) = mpsc::channel::<Msg>(CONTROL_QUEUE);
        let writer = tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(m) = rx.recv().await {
                buf.clear();
                m.encode(&mut buf);
                while let Ok(m) = rx.try_recv() {
                    m.encode(&mut buf);
                }
                if wr.write(&buf).await.is_err() {
                    break;
                }
            }
        });
        let _writer = AbortOnDrop(writer);
        let mut dec = Decoder::new();
        dec.push(&rest);
        let dead_after = self.inner.cfg.heartbeat_interval * 3;
        let mut buf = Vec::new();
        let mut refusals = 0u32;
        let reason: String = 'session: loop {
            loop {
                match dec.next_msg() {
                    Ok(Some(m)) => {
                        if let Err(r) = self.on_control(
                            id,
                            &agent_name,
                            peer,
                            &tx,
                            &nonce,
                            &binding,
                            &mut refusals,
                            m,
                        ) {
                            break 'session r;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        inc(&self.inner.stats.protocol_errors);
                        break 'session format!("protocol error: {e}");
                    }
                }
            }
            if tx.is_closed() {
                break 'session "control writer failed".into();
            }
            match tokio::time::timeout(dead_after, rd.read(&mut buf)).await {
                Ok(Ok(true)) => dec.push(&buf),
                Ok(Ok(false)) => break 'session "agent closed the connection".into(),
                Ok(Err(e)) => break 'session format!("read error: {e}"),
                Err(_) => {
                    break 'session format!("no message for {} s (heartbeat)", dead_after.as_secs())
                }
            }
        };
        self.remove_agent(id, None);
        dec_agents(&self.inner.stats);
        let n = inc(&self.inner.stats.agents_lost);
        warn!(%peer, agent = %agent_name, id, agents_lost = n, %reason, "xnat relay: agent disconnected");
    }

    #[allow(clippy::too_many_arguments)]
    fn on_control(
        &self,
        id: u64,
        agent_name: &str,
        peer: SocketAddr,
        tx: &mpsc::Sender<Msg>,
        nonce: &[u8; NONCE_LEN],
        binding: &[u8; 32],
        refusals: &mut u32,
        m: Msg,
    ) -> Result<(), String> {
        let send = |m: Msg| -> Result<(), String> {
            tx.try_send(m).map_err(|_| {
                let n = inc(&self.inner.stats.slow_agents);
                format!("agent does not read its control channel (slow_agents={n})")
            })
        };
        match m {
            Msg::Register {
                service,
                max_load,
                proof,
            } => {
                let mut st = self.inner.state.lock().expect("relay state");
                let refuse =
                    |st: std::sync::MutexGuard<'_, State>, reason: String, refusals: &mut u32| {
                        drop(st);
                        *refusals += 1;
                        send(Msg::Refused {
                            service: service.clone(),
                            reason,
                        })?;
                        if *refusals > MAX_REFUSALS {
                            return Err("too many refused registrations".to_string());
                        }
                        Ok(())
                    };
                let Some(svc) = st.services.get(&service) else {
                    let n = inc(&self.inner.stats.unknown_service);
                    warn!(%peer, agent = agent_name, %service, unknown_service = n, "xnat relay: agent registers an unknown service");
                    return refuse(st, "unknown service".into(), refusals);
                };
                if !proto::verify_proof(&svc.conf.token, nonce, binding, &service, &proof) {
                    let n = inc(&self.inner.stats.auth_failures);
                    warn!(%peer, agent = agent_name, %service, auth_failures = n, "xnat relay: wrong token for service");
                    return refuse(st, "wrong token".into(), refusals);
                }
                let svc = st.services.get_mut(&service).expect("checked");
                if let Some(a) = svc.agents.iter_mut().find(|a| a.id == id) {
                    // Registered again (a reloaded agent): new load limit.
                    a.max_load = max_load.max(1);
                    drop(st);
                    return send(Msg::Registered { service });
                }
                if svc.listener.is_none() && svc.conf.kind == Kind::Udp {
                    let sock = std::net::UdpSocket::bind(svc.conf.bind_addr)
                        .and_then(|s| s.set_nonblocking(true).map(|_| s))
                        .and_then(tokio::net::UdpSocket::from_std);
                    let sock = match sock {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(%service, bind_addr = %svc.conf.bind_addr, error = %e, "xnat relay: cannot open the public UDP port");
                            let why = format!("relay cannot bind UDP {}: {e}", svc.conf.bind_addr);
                            return refuse(st, why, refusals);
                        }
                    };
                    let addr = sock.local_addr().unwrap_or(svc.conf.bind_addr);
                    let task = tokio::spawn(crate::udp::relay_listen(
                        self.clone(),
                        service.clone(),
                        sock,
                        svc.stats.clone(),
                        svc.conf.clone(),
                    ));
                    svc.listener = Some((task, addr));
                    let n = inc(&self.inner.stats.listeners_opened);
                    info!(%service, %addr, listeners_opened = n, "xnat relay: public UDP port open");
                }
                if svc.listener.is_none() {
                    // The public port listens only from now on.
                    let std_listener = std::net::TcpListener::bind(svc.conf.bind_addr)
                        .and_then(|l| l.set_nonblocking(true).map(|_| l))
                        .and_then(TcpListener::from_std);
                    let l = match std_listener {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(%service, bind_addr = %svc.conf.bind_addr, error = %e, "xnat relay: cannot open the public port");
                            let why = format!("relay cannot bind {}: {e}", svc.conf.bind_addr);
                            return refuse(st, why, refusals);
                        }
                    };
                    let addr = l.local_addr().unwrap_or(svc.conf.bind_addr);
                    let task = tokio::spawn(self.clone().public_accept(service.clone(), l));
                    svc.listener = Some((task, addr));
                    let n = inc(&self.inner.stats.listeners_opened);
                    info!(%service, %addr, listeners_opened = n, "xnat relay: public port open");
                }
                svc.agents.push(AgentEntry {
                    id,
                    tx: tx.clone(),
                    max_load: max_load.max(1),
                    reported: 0,
                    active: Arc::default(),
                    pool: VecDeque::new(),
                    requested: 0,
                    returning: 0,
                });
                svc.stats
                    .agents
                    .store(svc.agents.len() as u64, Ordering::Relaxed);
                drop(st);
                send(Msg::Registered {
                    service: service.clone(),
                })?;
                info!(agent = agent_name, id, %service, max_load, "xnat relay: agent serves the mapping");
                let mut st = self.inner.state.lock().expect("relay state");
                for _ in 0..self.inner.cfg.pool_size {
                    self.request_data(&mut st, &service, id, None);
                }
            }
            Msg::Load { service, current } => {
                let mut st = self.inner.state.lock().expect("relay state");
                if let Some(a) = st
                    .services
                    .get_mut(&service)
                    .and_then(|s| s.agents.iter_mut().find(|a| a.id == id))
                {
                    a.reported = current;
                }
            }
            Msg::Unregister { service } => {
                info!(agent = agent_name, id, %service, "xnat relay: agent no longer serves the mapping");
                self.remove_agent(id, Some(&service));
            }
            Msg::Ping(v) => send(Msg::Pong(v))?,
            Msg::Pong(_) => {}
            other => {
                inc(&self.inner.stats.protocol_errors);
                return Err(format!(
                    "unexpected message kind 0x{:02x} on a control session",
                    other.kind()
                ));
            }
        }
        Ok(())
    }

    /// Removes agent `id` from `only` (one mapping) or from every mapping.
    fn remove_agent(&self, id: u64, only: Option<&str>) {
        let mut st = self.inner.state.lock().expect("relay state");
        st.tickets
            .retain(|_, t| t.agent != id || only.is_some_and(|s| s != t.service));
        for (name, svc) in st.services.iter_mut() {
            if only.is_some_and(|s| s != name) {
                continue;
            }
            let before = svc.agents.len();
            svc.agents.retain(|a| a.id != id);
            if svc.agents.len() != before {
                svc.stats
                    .agents
                    .store(svc.agents.len() as u64, Ordering::Relaxed);
                if svc.agents.is_empty() {
                    self.close_listener(name, svc, "no agent serves the mapping");
                }
            }
        }
    }

    async fn public_accept(self, service: String, l: TcpListener) {
        loop {
            let (tcp, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(%service, error = %e, "xnat relay: public accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let me = self.clone();
            let service = service.clone();
            tokio::spawn(async move { me.visitor(service, tcp, peer).await });
        }
    }

    /// Picks the least-loaded agent and a data connection for a visitor.
    pub(crate) async fn data_for(
        &self,
        service: &str,
    ) -> Result<(SecureConn, Arc<AtomicU64>), &'static str> {
        self.claim(service, false, 0)
            .await
            .map(|c| (c.data.conn, c.active))
    }

    /// [`Relay::data_for`] from agent `want` when it serves the mapping (0: any);
    /// also returns the agent's id.
    pub(crate) async fn data_for_agent(
        &self,
        service: &str,
        want: u64,
    ) -> Result<(SecureConn, Arc<AtomicU64>, u64), &'static str> {
        self.claim(service, false, want)
            .await
            .map(|c| (c.data.conn, c.active, c.agent))
    }

    /// Picks agent `want` when it serves the mapping (0: the least-loaded one)
    /// and a data connection from it; `returns`: the connection will come back
    /// through [`Relay::give_back`] (framed), so it still counts as ready.
    async fn claim(
        &self,
        service: &str,
        returns: bool,
        want: u64,
    ) -> Result<Claimed, &'static str> {
        let mut expired = Vec::new();
        let r = self
            .claim_skipping(service, returns, want, &mut expired)
            .await;
        self.close_pooled(expired, "reached data_reuse_age in the pool");
        r
    }

    /// [`Self::claim`]; pooled connections past `data_reuse_age` go to
    /// `expired` instead of carrying anything.
    async fn claim_skipping(
        &self,
        service: &str,
        returns: bool,
        want: u64,
        expired: &mut Vec<Pooled>,
    ) -> Result<Claimed, &'static str> {
        for _attempt in 0..3 {
            let (pooled, rx, agent) = {
                let mut st = self.inner.state.lock().expect("relay state");
                let Some(svc) = st.services.get_mut(service) else {
                    return Err("unknown service");
                };
                let wanted = svc.agents.iter().find(|a| a.id == want).map(|a| a.id);
                let best = wanted.or_else(|| {
                    svc.agents
                        .iter()
                        .min_by(|a, b| {
                            let la = a.active.load(Ordering::Relaxed).max(a.reported as u64) as f64
                                / a.max_load as f64;
                            let lb = b.active.load(Ordering::Relaxed).max(b.reported as u64) as f64
                                / b.max_load as f64;
                            la.total_cmp(&lb)
                        })
                        .map(|a| a.id)
                });
                let Some(agent) = best else {
                    return Err("no agent serves the mapping");
                };
                let a = svc
                    .agents
                    .iter_mut()
                    .find(|a| a.id == agent)
                    .expect("found");
                if a.active.load(Ordering::Relaxed) >= a.max_load as u64 {
                    return Err("every agent is at its max_load");
                }
                let active = a.active.clone();
                if returns {
                    a.returning += 1;
                }
                take_expired(&mut a.pool, self.inner.cfg.data_reuse_age, expired);
                let ready = a.pool.len() + a.requested + a.returning;
                match a.pool.pop_front() {
                    Some(c) => {
                        // Keep the pool full (a framed connection carrying a
                        // public one counts: it comes back).
                        if ready <= self.inner.cfg.pool_size {
                            self.request_data(&mut st, service, agent, None);
                        }
                        (Some(c), None, (active, agent))
                    }
                    None => {
                        let (wtx, wrx) = oneshot::channel();
                        if !self.request_data(&mut st, service, agent, Some(wtx)) {
                            if returns {
                                a_unreturn(&mut st, service, agent);
                            }
                            return Err("agent's control channel is full");
                        }
                        (None, Some(wrx), (active, agent))
                    }
                }
            };
            let data = match (pooled, rx) {
                (Some(c), _) => c,
                (None, Some(rx)) => match tokio::time::timeout(DATA_WAIT, rx).await {
                    Ok(Ok(c)) => Pooled::new(c),
                    _ => {
                        if returns {
                            let mut st = self.inner.state.lock().expect("relay state");
                            a_unreturn(&mut st, service, agent.1);
                        }
                        continue;
                    }
                },
                _ => continue,
            };
            return Ok(Claimed {
                data,
                active: agent.0,
                agent: agent.1,
            });
        }
        Err("no data connection from the agent in time")
    }

    async fn visitor(self, service: String, tcp: TcpStream, peer: SocketAddr) {
        let (mstats, conf) = {
            let st = self.inner.state.lock().expect("relay state");
            match st.services.get(&service) {
                Some(s) => (s.stats.clone(), s.conf.clone()),
                None => return,
            }
        };
        let stats = &self.inner.stats;
        // Admission and counting are one atomic step, so simultaneous visitors
        // cannot overshoot `max_connections`.
        let cap = conf.max_connections as u64;
        let admitted = mstats
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            let n = inc(&stats.visitors_refused);
            inc(&mstats.errors);
            warn!(%service, %peer, visitors_refused = n, max_connections = conf.max_connections, "xnat relay: public connection refused: mapping at max_connections");
            return;
        }
        inc(&stats.visitors_total);
        inc(&mstats.connections);
        inc(&stats.visitors_active);
        // Decrements both "active" counters on every exit path.
        let _g = DecOnDrop(mstats.clone(), &stats.visitors_active);
        let reuse = self.reuse();
        let (mode, start) = if reuse {
            (Mode::Framed, Msg::StartFramed { peer })
        } else {
            (Mode::Raw, Msg::Start { peer })
        };
        let mut conn = None;
        for _ in 0..3 {
            let mut c = match self.claim(&service, reuse, 0).await {
                Ok(x) => x,
                Err(why) => {
                    let n = inc(&stats.visitors_refused);
                    inc(&mstats.errors);
                    warn!(%service, %peer, visitors_refused = n, reason = why, "xnat relay: public connection refused");
                    return;
                }
            };
            // A pooled connection may have died meanwhile: try the next one.
            if c.data.conn.send(&start).await.is_ok() {
                conn = Some(c);
                break;
            }
            if reuse {
                self.give_back(&service, c.agent, None).await;
            }
        }
        let Some(Claimed {
            data,
            active,
            agent,
        }) = conn
        else {
            inc(&mstats.errors);
            return;
        };
        if data.uses > 0 {
            inc(&stats.data_reused);
        }
        let (uses, born) = (data.uses + 1, data.born);
        active.fetch_add(1, Ordering::Relaxed);
        let (end, back) = carry(
            Side::Relay,
            mode,
            self.inner.cfg.data_encryption,
            self.inner.cfg.plain_copy,
            tcp,
            data.conn,
            self.inner.cfg.handshake_timeout,
            Some(conf.idle_timeout),
            &[&stats.bytes_up, &mstats.bytes_up],
            &[&stats.bytes_down, &mstats.bytes_down],
        )
        .await;
        active.fetch_sub(1, Ordering::Relaxed);
        if reuse {
            let back = back.map(|conn| Pooled { conn, uses, born });
            self.give_back(&service, agent, back).await;
        }
        match end {
            End::Done => debug!(%service, %peer, "xnat relay: public connection done"),
            End::Idle => {
                let n = inc(&stats.idle_timeouts);
                info!(%service, %peer, idle_timeouts = n, idle_timeout_s = conf.idle_timeout.as_secs_f64(), "xnat relay: public connection closed by the idle timeout");
            }
            End::Error(e) => {
                inc(&mstats.errors);
                debug!(%service, %peer, error = %e, "xnat relay: public connection ended with an error");
            }
        }
    }
}

/// What `crate::visit` needs of the relay.
impl Relay {
    pub(crate) fn visit_side(&self) -> &crate::visit::RelayVisit {
        &self.inner.visit
    }

    /// A mapping's settings and counters.
    pub(crate) fn mapping(&self, service: &str) -> Option<(ServerService, Arc<MappingStats>)> {
        let st = self.inner.state.lock().expect("relay state");
        st.services
            .get(service)
            .map(|s| (s.conf.clone(), s.stats.clone()))
    }

    /// Sends `m` on the control session of agent `want` of `service` when it serves
    /// it, else of the least-loaded one; returns the agent's id (None: not sent).
    pub(crate) fn notify_agent(&self, service: &str, want: u64, m: Msg) -> Option<u64> {
        let st = self.inner.state.lock().expect("relay state");
        st.services
            .get(service)
            .and_then(|s| {
                s.agents.iter().find(|a| a.id == want).or_else(|| {
                    s.agents
                        .iter()
                        .min_by_key(|a| a.active.load(Ordering::Relaxed))
                })
            })
            .filter(|a| a.tx.try_send(m).is_ok())
            .map(|a| a.id)
    }
}

/// Runtime changes and listings: what the command API (`zs xnat
/// add|remove|list|status`) calls.
impl Relay {
    /// `[server] admin_token`, when the command API is on.
    pub(crate) fn admin_token(&self) -> Option<&str> {
        self.inner.cfg.admin.admin_token.as_deref()
    }

    /// The secure-handshake timeout (also bounds each command-API step).
    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.inner.cfg.handshake_timeout
    }

    /// A fresh random nonce.
    pub(crate) fn nonce(&self) -> Option<[u8; NONCE_LEN]> {
        let mut n = [0u8; NONCE_LEN];
        self.inner.rng.fill(&mut n).ok()?;
        Some(n)
    }

    /// Adds mapping `name` at runtime: stored (synced) in the relay's store,
    /// then served like a mapping of the config file (its public port opens
    /// when an agent registers it). Fails when the name exists, is invalid, or
    /// the relay has no store (no `admin_token`).
    pub async fn add_mapping(&self, name: &str, conf: ServerService) -> Result<(), String> {
        let store = self
            .inner
            .store
            .clone()
            .ok_or("the relay has no store: set [server] admin_token")?;
        if name.is_empty() || name.len() > proto::MAX_NAME {
            return Err("expected a service name of 1 to 128 bytes".into());
        }
        if conf.token.is_empty() {
            return Err("expected a non-empty token".into());
        }
        let _one = self.inner.admin_lock.lock().await;
        if self
            .inner
            .state
            .lock()
            .expect("relay state")
            .services
            .contains_key(name)
        {
            return Err(format!("a mapping named {name:?} exists"));
        }
        let cap = self.inner.cfg.admin.max_runtime_mappings;
        if self.inner.state.lock().expect("relay state").runtime.len() >= cap {
            return Err(format!(
                "the relay holds {cap} mappings added at runtime already (max_runtime_mappings); remove some first"
            ));
        }
        let (n, c) = (name.to_string(), conf.clone());
        tokio::task::spawn_blocking(move || store.put(&n, &c))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot store the mapping: {e}"))?;
        let mut st = self.inner.state.lock().expect("relay state");
        st.runtime.insert(name.to_string(), conf.clone());
        st.services.insert(
            name.to_string(),
            Svc {
                conf,
                stats: Arc::default(),
                agents: Vec::new(),
                listener: None,
            },
        );
        drop(st);
        let n = inc(&self.inner.stats.admin_changes);
        info!(service = %name, admin_changes = n, "xnat relay: mapping added through the command API (stored)");
        Ok(())
    }

    /// Removes mapping `name` added at runtime: deleted from the store
    /// (synced), its public port closed, its agents told. Connections already
    /// carried run to their end. A mapping of the config file is refused
    /// (edit the file: it is reloaded).
    pub async fn remove_mapping(&self, name: &str) -> Result<(), String> {
        let store = self
            .inner
            .store
            .clone()
            .ok_or("the relay has no store: set [server] admin_token")?;
        let _one = self.inner.admin_lock.lock().await;
        {
            let st = self.inner.state.lock().expect("relay state");
            if st.file.contains(name) {
                return Err(format!(
                    "{name:?} is defined in the relay's config file: remove it there (the file is reloaded)"
                ));
            }
            if !st.runtime.contains_key(name) {
                return Err(format!("no mapping named {name:?}"));
            }
        }
        let n = name.to_string();
        tokio::task::spawn_blocking(move || store.delete(&n))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot delete the stored mapping: {e}"))?;
        let mut st = self.inner.state.lock().expect("relay state");
        st.runtime.remove(name);
        if let Some(mut svc) = st.services.remove(name) {
            self.drop_registrations(name, &mut svc, "removed through the command API");
        }
        st.tickets.retain(|_, t| t.service != name);
        drop(st);
        let n = inc(&self.inner.stats.admin_changes);
        info!(service = %name, admin_changes = n, "xnat relay: mapping removed through the command API");
        Ok(())
    }

    /// Every mapping as a JSON object: name, type, bind_addr, public_addr
    /// (null while no agent serves it), source ("file" or "runtime"),
    /// idle_timeout_s, max_connections. Tokens are not shown.
    pub fn mapping_list(&self) -> Vec<serde_json::Value> {
        let st = self.inner.state.lock().expect("relay state");
        let mut v: Vec<_> = st
            .services
            .iter()
            .map(|(name, s)| {
                serde_json::json!({
                    "name": name,
                    "type": s.conf.kind.as_str(),
                    "bind_addr": s.conf.bind_addr.to_string(),
                    "public_addr": s.listener.as_ref().map(|l| l.1.to_string()),
                    "source": if st.runtime.contains_key(name) { "runtime" } else { "file" },
                    "idle_timeout_s": s.conf.idle_timeout.as_secs(),
                    "max_connections": s.conf.max_connections,
                })
            })
            .collect();
        v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        v
    }

    /// Statistics: one JSON object per mapping (name, type, listening and the
    /// [`MappingStats`] counters: connections, active, bytes_up, bytes_down,
    /// errors, agents), then `{"relay": {every RelayStats counter}}`.
    pub fn stats_report(&self) -> Vec<serde_json::Value> {
        let st = self.inner.state.lock().expect("relay state");
        let mut v: Vec<_> = st
            .services
            .iter()
            .map(|(name, s)| {
                let mut o = serde_json::Map::new();
                o.insert("name".into(), name.clone().into());
                o.insert("type".into(), s.conf.kind.as_str().into());
                o.insert("listening".into(), s.listener.is_some().into());
                for (k, n) in s.stats.snapshot() {
                    o.insert(k.into(), n.into());
                }
                serde_json::Value::Object(o)
            })
            .collect();
        drop(st);
        v.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let relay: serde_json::Map<String, serde_json::Value> = self
            .inner
            .stats
            .snapshot()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n.into()))
            .collect();
        v.push(serde_json::json!({ "relay": relay }));
        v
    }
}

/// Moves the pooled connections older than `age` to `out`; how many.
fn take_expired(pool: &mut VecDeque<Pooled>, age: Duration, out: &mut Vec<Pooled>) -> usize {
    let now = Instant::now();
    if pool.iter().all(|p| now.duration_since(p.born) < age) {
        return 0;
    }
    let before = out.len();
    let mut keep = VecDeque::with_capacity(pool.len());
    for p in pool.drain(..) {
        if now.duration_since(p.born) < age {
            keep.push_back(p);
        } else {
            out.push(p);
        }
    }
    *pool = keep;
    out.len() - before
}

/// Undoes a claim's `returning` count (the connection will not come back).
fn a_unreturn(st: &mut State, service: &str, agent: u64) {
    if let Some(a) = st
        .services
        .get_mut(service)
        .and_then(|s| s.agents.iter_mut().find(|a| a.id == agent))
    {
        a.returning = a.returning.saturating_sub(1);
    }
}

fn dec_agents(s: &RelayStats) {
    dec(&s.agents_connected);
}

struct DecOnDrop<'a>(Arc<MappingStats>, &'a AtomicU64);

impl Drop for DecOnDrop<'_> {
    fn drop(&mut self) {
        dec(&self.0.active);
        dec(self.1);
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Closes every public listener when the relay's run future ends.
struct ListenersGuard(Relay);

impl Drop for ListenersGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.0.inner.state.lock() {
            for s in st.services.values_mut() {
                if let Some((t, _)) = s.listener.take() {
                    t.abort();
                }
                s.agents.clear();
            }
            st.tickets.clear();
        }
    }
}
