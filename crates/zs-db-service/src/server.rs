//! The server side: [`DbService`] answers the requests of [`crate::proto`] from a
//! zs-db [`Env`], runs queries on their own threads with credit-based flow
//! control, and applies FastPost streams exactly once.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use zs_core::{HandlerError, Peer, Registry, Reply, Responder, WorkerPool};
use zs_db::{Batch, Database, DbOptions, Env, Kind, Record, RecordRef};
use zs_wire::DataFrame;

use crate::access::{Access, Identity, Rules, User, ACCESS_DB};
use crate::filter::{compile_expr, param_to_field, FilterFunction};
use crate::proto::{
    cmd, encode_record_answer, errcode, from_frame, peek_get, to_frame, Answer, BatchWriter,
    Change, Durability, EndStatus, Limits, Oneway, Param, Push, QueryProgress, QuerySpec, Range,
    Request,
};

/// A procedure served by [`DbService::register_procedure`]: argument bytes in,
/// result bytes (sent after it committed) or a refusal out.
pub type Procedure = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, HandlerError> + Send + Sync>;

/// The reserved database holding FastPost stream marks (never listed or served).
pub const MARKS_DB: &str = "__zs_fastpost";

/// Limits and timings of a [`DbService`].
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Decoding limits (value size, records per message, filter length, parameters).
    pub limits: Limits,
    /// Most queries running at once on one connection. Default 8.
    pub max_queries_per_conn: usize,
    /// Most queries running at once in the process. Default 256.
    pub max_queries: usize,
    /// Largest batch a query may ask for, in bytes (smaller asks are raised to
    /// 1 KiB). Default 1 MiB.
    pub max_batch_bytes: u32,
    /// Most batch bytes one query keeps unconsumed (window × batch size is
    /// clamped to it). Default 4 MiB.
    pub max_query_in_flight: u32,
    /// Longest batch delay a query may ask for. Default 5 s.
    pub max_batch_ms: u32,
    /// Scan threads of one query (zs-db's parallel engine reads the file in
    /// order and filters on these threads while the query's own thread sends).
    /// A query that cannot send (no credit, paused) holds at most about
    /// `window + 5 × scan_threads + 3` batches in memory: the window in flight,
    /// the engine's queue of work units (each about one batch of records of the
    /// database's average size) and the batches between engine and socket.
    /// Default: the number of cores, at most 4.
    pub scan_threads: usize,
    /// Writes acknowledged [`Durability::Written`] and FastPost records are
    /// synced (and FastPost acknowledged) this often. Default 10 ms.
    pub group_commit: Duration,
    /// Most FastPost streams remembered (for exactly-once resumption) per
    /// process; the least recently used are forgotten beyond. Default 4096.
    pub max_fastpost_streams: usize,
    /// Most FastPost bytes queued for one stream and not yet applied; a client
    /// sending more is disconnected. Default 32 MiB.
    pub max_fastpost_queue: usize,
    /// Most watches on one connection. Default 16.
    pub max_watches_per_conn: usize,
    /// Most FastPost streams with a live writer (one thread each) per
    /// connection. Default 16.
    pub max_fastpost_active_per_conn: usize,
    /// Most FastPost streams with a live writer in the process. Default 1024.
    pub max_fastpost_active: usize,
    /// A stream's writer ends after this long without records; a client that
    /// posts to it later is disconnected, and [`crate::FastPost`] then
    /// reconnects, reopens the stream and resends. Default 60 s.
    pub fastpost_idle: Duration,
    /// Largest limit of a sorted query ([`QuerySpec::sort`]): the server keeps
    /// up to twice this many records of one sorted query in memory while it
    /// picks the first ones by the key. Default 100,000.
    pub max_sorted: u64,
    /// Worker threads for the requests that may block (file reads, commits,
    /// fsyncs, procedures, database operations); a GET of a cached record is
    /// answered on the connection's event loop instead. Durable writes of
    /// different connections share an fsync only while they run at once, so
    /// this is also the most durable writers that group. Default 8.
    pub workers: usize,
    /// Most requests waiting for a worker; beyond it a request is answered with
    /// an error at once (the caller sees a refusal, nothing else is affected).
    /// Default 4096.
    pub worker_queue: usize,
    /// Most procedure calls ([`DbService::register_procedure`]) running at once in
    /// the process (each holds a worker thread while it runs, waits for commit
    /// locks or redoes); more are refused with 429. Default 64.
    pub max_procedure_calls: usize,
    /// Bytes of GET answers each event-loop thread keeps (a direct-mapped
    /// table of about `loop_cache_bytes / 264` slots, allocated at the loop's
    /// first GET, for values up to 218 bytes): a GET of a record in it takes
    /// no lock at all; an answer counts only while its database's
    /// [`Database::change_seq`] has not moved since it was read. 0 turns it
    /// off (every GET then takes zs-db's cache shard lock). Default 16 MiB
    /// per loop thread.
    pub loop_cache_bytes: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            limits: Limits::default(),
            max_queries_per_conn: 8,
            max_queries: 256,
            max_batch_bytes: 1 << 20,
            max_query_in_flight: 4 << 20,
            max_batch_ms: 5000,
            scan_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            group_commit: Duration::from_millis(10),
            max_fastpost_streams: 4096,
            max_fastpost_queue: 32 << 20,
            max_watches_per_conn: 16,
            max_fastpost_active_per_conn: 16,
            max_fastpost_active: 1024,
            fastpost_idle: Duration::from_secs(60),
            max_procedure_calls: 64,
            workers: 8,
            worker_queue: 4096,
            max_sorted: 100_000,
            loop_cache_bytes: 16 << 20,
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn herr(code: u32, msg: impl Into<String>) -> HandlerError {
    HandlerError::new(code, msg)
}

fn db_err(e: zs_db::Error) -> HandlerError {
    use zs_db::Error as E;
    let code = match &e {
        E::NotFound(_) | E::NoSuchDatabase(_) => errcode::NOT_FOUND,
        E::AlreadyExists(_) => errcode::EXISTS,
        E::InvalidName(_) | E::Query(_) | E::Decode(_) => errcode::BAD_REQUEST,
        E::TooLarge { .. } => errcode::LIMIT,
        _ => errcode::STORE,
    };
    herr(code, e.to_string())
}

/// Checks a database name a client sent: zs-db's rule (1..=64 of `A-Z a-z 0-9 _ - .`,
/// not starting with `.`, so no path can escape the data directory), and not
/// reserved (`__` prefix).
pub fn check_client_name(name: &str) -> Result<(), HandlerError> {
    zs_db::check_name(name).map_err(db_err)?;
    if name.starts_with("__") {
        return Err(herr(
            errcode::FORBIDDEN,
            format!("database name {name:?} is reserved"),
        ));
    }
    Ok(())
}

/// One open database as the service holds it.
struct DbEntry {
    db: Database,
    /// Process-unique (keys the loops' answer caches, [`LoopCache`]).
    uid: u64,
    /// Serializes the service's writes to this database (FastPost predicts the ids
    /// of its next commit, so no other write may come between).
    write: Mutex<()>,
    /// A commit not yet synced.
    dirty: AtomicBool,
    /// Watches of this database (notified under `write`, so in commit order).
    watchers: Mutex<Vec<Watcher>>,
}

struct Watcher {
    peer: Peer,
    wid: u64,
    lo: u64,
    hi: u64,
    seq: u64,
}

/// A running query.
struct QueryCtl {
    peer: u64,
    st: Mutex<QState>,
    cv: Condvar,
    /// The engine's scan (pause, resume, stop and progress reach its workers).
    engine: Mutex<Option<zs_db::QueryControl>>,
}

#[derive(Default)]
struct QState {
    paused: bool,
    stop: bool,
    done: bool,
    credit: u32,
    window: u32,
    /// Records sent.
    matched: u64,
    batches: u64,
}

/// Running queries by (connection id, query id).
type QueryMap = Mutex<HashMap<(u64, u64), Arc<QueryCtl>>>;

/// A FastPost stream's position (the marks database persists it).
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    /// Record id of the mark in [`MARKS_DB`].
    rec: u64,
    /// Highest sequence number applied.
    applied: u64,
    /// Highest sequence number known durable (acknowledged).
    durable: u64,
    /// Last use, for eviction.
    used: u64,
}

struct Stream {
    db: String,
    peer: Mutex<Peer>,
    queue: Mutex<StreamQueue>,
    cv: Condvar,
    /// The groups this stream's writer committed since its mark's base was
    /// last known durable (only its writer thread touches it).
    groups: Mutex<WriterGroups>,
}

/// A FastPost writer's view of its mark: `base` (every record up to it is
/// durable in the database) and the groups committed after it, each
/// `(first seq, last seq, first id)`, none of them known durable yet. The mark
/// stores both, so a group needs no sync of the database before the next mark
/// (one fsync per group: the mark's); the syncer's sync moves `base` on.
#[derive(Default)]
struct WriterGroups {
    /// False until the writer knows its base (a new writer syncs once).
    known: bool,
    base: u64,
    list: Vec<(u64, u64, u64)>,
}

/// Most groups a mark lists; beyond, the writer syncs the database itself.
const MAX_MARK_GROUPS: usize = 32;

#[derive(Default)]
struct StreamQueue {
    items: Vec<(u64, Vec<(Kind, Bytes)>)>,
    bytes: usize,
    closed: bool,
}

/// Source of [`Svc::uid`].
static NEXT_SVC_UID: AtomicU64 = AtomicU64::new(1);

/// Most databases in one loop thread's entry table (cleared beyond).
const ENTRY_CACHE_MAX: usize = 64;

/// One thread's table of open databases (see [`Svc::cached_entry`]).
#[derive(Default)]
struct EntryCache {
    svc: u64,
    gen: u64,
    entries: Vec<(Box<str>, Weak<DbEntry>)>,
}

/// Source of [`DbEntry::uid`].
static NEXT_ENTRY_UID: AtomicU64 = AtomicU64::new(1);

/// Largest GET answer a [`LoopCache`] slot holds (values up to 218 bytes;
/// larger records are answered from zs-db's cache).
const LOOP_CACHE_INLINE: usize = 232;

/// Encoded GET answers kept by one event-loop thread: a direct-mapped table
/// (one slot per `(database, id)` hash, a new answer replaces the slot's) of
/// [`ServiceConfig::loop_cache_bytes`] `/ size_of::<LoopSlot>()` slots, each
/// holding its answer inline, so a hit reads one slot (a few adjacent cache
/// lines). Only the thread that owns it touches it, so a hit takes no lock: it
/// checks the slot against the database's [`Database::change_seq`] (one atomic
/// load).
#[derive(Default)]
struct LoopCache {
    slots: Vec<LoopSlot>,
    hits: u64,
}

#[derive(Clone)]
struct LoopSlot {
    /// [`DbEntry::uid`] (0: empty).
    entry: u64,
    id: u64,
    /// The database's change sequence the answer was read at.
    seq: u64,
    len: u16,
    answer: [u8; LOOP_CACHE_INLINE],
}

impl LoopSlot {
    const EMPTY: LoopSlot = LoopSlot {
        entry: 0,
        id: 0,
        seq: 0,
        len: 0,
        answer: [0; LOOP_CACHE_INLINE],
    };
}

impl LoopCache {
    fn index(&self, entry: u64, id: u64) -> usize {
        let h = (id ^ entry.rotate_left(40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // a multiply-shift reduction to `0..slots.len()`
        ((u128::from(h) * self.slots.len() as u128) >> 64) as usize
    }

    /// The answer for `id` of database `entry` if it was read at `seq`.
    fn get(&mut self, entry: u64, id: u64, seq: u64) -> Option<Bytes> {
        if self.slots.is_empty() {
            return None;
        }
        let s = &self.slots[self.index(entry, id)];
        if s.entry == entry && s.id == id && s.seq == seq {
            self.hits += 1;
            Some(Bytes::copy_from_slice(&s.answer[..usize::from(s.len)]))
        } else {
            None
        }
    }

    /// Keeps `answer` (read at `seq`) in a table of `budget` bytes.
    fn put(&mut self, budget: usize, entry: u64, id: u64, seq: u64, answer: &[u8]) {
        let want = budget / std::mem::size_of::<LoopSlot>();
        if want == 0 || answer.len() > LOOP_CACHE_INLINE {
            return;
        }
        if self.slots.len() != want {
            self.slots = vec![LoopSlot::EMPTY; want];
        }
        let i = self.index(entry, id);
        let s = &mut self.slots[i];
        s.entry = entry;
        s.id = id;
        s.seq = seq;
        s.len = answer.len() as u16;
        s.answer[..answer.len()].copy_from_slice(answer);
    }
}

thread_local! {
    static ENTRY_CACHE: std::cell::RefCell<EntryCache> = std::cell::RefCell::default();
    static LOOP_CACHE: std::cell::RefCell<LoopCache> = std::cell::RefCell::default();
}

struct Svc {
    env: Env,
    cfg: ServiceConfig,
    dbs: Mutex<HashMap<String, Arc<DbEntry>>>,
    /// Bumped on every change of `dbs` (see [`Svc::cached_entry`]).
    dbs_gen: AtomicU64,
    /// This service's process-unique id (keys the loops' entry tables).
    uid: u64,
    functions: RwLock<HashMap<String, FilterFunction>>,
    procedures: RwLock<HashMap<String, Procedure>>,
    procedure_calls: AtomicU64,
    /// Runs every request that may block (see [`ServiceConfig::workers`]).
    pool: WorkerPool,
    /// Access rules (enforced once an identity is set).
    rules: Rules,
    queries: Arc<QueryMap>,
    marks_db: Mutex<Option<Database>>,
    marks: Mutex<HashMap<(String, u64), Mark>>,
    pending_marks: Mutex<HashMap<(String, u64), PendingMark>>,
    streams: Mutex<HashMap<u64, Arc<Stream>>>,
    watches: Mutex<HashMap<(u64, u64), String>>,
    me: Mutex<Weak<Svc>>,
    tick: AtomicU64,
    stop: AtomicBool,
    /// FastPost rounds committed, and the most streams one round applied.
    fp_rounds: AtomicU64,
    fp_most_streams: AtomicU64,
}

/// The DB service: register it on a zs-core [`Registry`] with
/// [`DbService::register`]. Cloning shares it.
#[derive(Clone)]
pub struct DbService {
    svc: Arc<Svc>,
}

impl std::fmt::Debug for DbService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbService")
            .field("queries", &lock(&self.svc.queries).len())
            .finish()
    }
}

impl DbService {
    /// A service over the databases in directory `path` (created if missing).
    pub fn open_dir(path: impl AsRef<Path>, cfg: ServiceConfig) -> zs_db::Result<DbService> {
        DbService::with_env(Env::open_dir(path)?, cfg)
    }

    /// A service over `env`. Starts the group-commit thread (it ends when the
    /// last clone of the service is dropped).
    pub fn with_env(env: Env, cfg: ServiceConfig) -> zs_db::Result<DbService> {
        let (cfg_workers, cfg_queue) = (cfg.workers, cfg.worker_queue);
        let rules_db = match env.db(ACCESS_DB) {
            Ok(db) => db,
            Err(zs_db::Error::NoSuchDatabase(_)) => {
                env.create_db(ACCESS_DB, DbOptions::default())?
            }
            Err(e) => return Err(e),
        };
        let rules = Rules::load(rules_db)?;
        let svc = Arc::new(Svc {
            rules,
            env,
            cfg,
            dbs: Mutex::new(HashMap::new()),
            dbs_gen: AtomicU64::new(0),
            uid: NEXT_SVC_UID.fetch_add(1, Ordering::Relaxed),
            functions: RwLock::new(HashMap::new()),
            procedures: RwLock::new(HashMap::new()),
            procedure_calls: AtomicU64::new(0),
            pool: WorkerPool::with_queue(cfg_workers, cfg_queue),
            queries: Arc::new(Mutex::new(HashMap::new())),
            marks_db: Mutex::new(None),
            marks: Mutex::new(HashMap::new()),
            pending_marks: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            me: Mutex::new(Weak::new()),
            tick: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            fp_rounds: AtomicU64::new(0),
            fp_most_streams: AtomicU64::new(0),
        });
        *lock(&svc.me) = Arc::downgrade(&svc);
        svc.load_marks()?;
        let weak = Arc::downgrade(&svc);
        let every = svc.cfg.group_commit.max(Duration::from_millis(1));
        std::thread::Builder::new()
            .name("zs-dbsvc-sync".into())
            .spawn(move || syncer(weak, every))
            .map_err(|e| zs_db::Error::Io {
                op: "spawn sync thread",
                source: e,
            })?;
        Ok(DbService { svc })
    }

    /// The store.
    pub fn env(&self) -> &Env {
        &self.svc.env
    }

    /// Registers a server-side filter function under `name` (case-sensitive),
    /// callable by queries with their parameters.
    pub fn register_filter(
        &self,
        name: &str,
        f: impl Fn(&RecordRef<'_>, &[(String, Param)]) -> bool + Send + Sync + 'static,
    ) {
        self.svc
            .functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Arc::new(f));
    }

    /// Serves procedure `name` to clients ([`crate::DbClient::call`], request
    /// 0x50): `f(args)` runs on the worker pool and its result is the answer, so a
    /// transactional procedure (the facade's `DbServiceTxExt::tx_procedure` runs a
    /// zs-tx procedure) answers only after its commit; a refusal's code and message
    /// reach the client as [`crate::Error::Refused`]. Registering a name again
    /// replaces it.
    pub fn register_procedure(
        &self,
        name: &str,
        f: impl Fn(&[u8]) -> Result<Vec<u8>, HandlerError> + Send + Sync + 'static,
    ) {
        self.svc
            .procedures
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Arc::new(f));
    }

    /// Enforces access rules from now on: `identity` tells who is logged in on
    /// a connection (the facade's `DbServiceAccountsExt` plugs in the accounts
    /// service). Without one, every connection may do everything.
    pub fn set_identity(&self, identity: Arc<dyn Identity>) {
        self.svc.rules.set_identity(identity);
    }

    /// Sets, durably, the access of `user` to database `db` (`*` for either
    /// means every database / every user; the highest matching rule counts,
    /// server administrators have every right). Takes effect at once, also for
    /// running queries, watches and FastPost streams.
    pub fn grant(&self, db: &str, user: &str, access: Access) -> zs_db::Result<()> {
        self.svc.rules.set(db, user, access)
    }

    /// The rules naming `db` or `*` (every rule for `db` = `*`):
    /// (database, user, access), sorted.
    pub fn rules(&self, db: &str) -> Vec<(String, String, Access)> {
        self.svc.rules.list(db)
    }

    /// The access `user` has to `db` under the current rules.
    pub fn access_of(&self, db: &str, user: &User) -> Access {
        self.svc.rules.access(db, user)
    }

    /// Queries running now (all connections).
    pub fn running_queries(&self) -> usize {
        lock(&self.svc.queries).len()
    }

    /// FastPost rounds committed so far and the most streams one of them
    /// applied (the streams of a database share a round, its marks commit and
    /// its fsync; see the crate docs).
    pub fn fastpost_rounds(&self) -> (u64, u64) {
        (
            self.svc.fp_rounds.load(Ordering::Relaxed),
            self.svc.fp_most_streams.load(Ordering::Relaxed),
        )
    }

    /// Adds the service's commands to `reg`.
    ///
    /// The registry holds the service weakly: it serves while a [`DbService`]
    /// handle lives (keep one for as long as the server runs); after the last
    /// handle is dropped a request is refused with
    /// [`errcode::GONE`](crate::proto::errcode::GONE). A session
    /// reaches its registry, and sessions outlive a server in whatever holds
    /// their [`Peer`]s (the accounts service keeps the logged-in ones, a
    /// FastPost stream or a watch its own): a strong reference here would make
    /// a cycle that kept the service, its files and their locks alive forever.
    pub fn register(&self, reg: &mut Registry) {
        let s = Arc::downgrade(&self.svc);
        reg.stream_delayed(cmd::REQUEST, move |peer, df, r| match s.upgrade() {
            Some(svc) => svc.request(peer, &df, r),
            None => {
                let _ = r.reply_error(errcode::GONE, "the DB service has ended");
            }
        });
        let s = Arc::downgrade(&self.svc);
        reg.complete_buffer(cmd::ONEWAY, move |peer, data| {
            if let Some(svc) = s.upgrade() {
                svc.oneway(peer, data)
            }
        });
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        for (_, s) in lock(&self.streams).drain() {
            lock(&s.queue).closed = true;
            s.cv.notify_all();
        }
    }
}

/// Syncs dirty databases every `every` and acknowledges FastPost records.
fn syncer(weak: Weak<Svc>, every: Duration) {
    loop {
        std::thread::sleep(every);
        let Some(svc) = weak.upgrade() else { return };
        if svc.stop.load(Ordering::Acquire) {
            return;
        }
        svc.sync_round();
    }
}

impl Svc {
    fn sync_round(&self) {
        let dbs: Vec<(String, Arc<DbEntry>)> = lock(&self.dbs)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, e) in dbs {
            if !e.dirty.swap(false, Ordering::AcqRel) {
                continue;
            }
            // what was applied before the sync is durable after it
            let applied: Vec<((String, u64), u64)> = lock(&self.marks)
                .iter()
                .filter(|((d, _), _)| *d == name)
                .map(|(k, m)| (k.clone(), m.applied))
                .collect();
            if let Err(err) = e.db.sync() {
                tracing::warn!(db = %name, %err, "db service: sync failed");
                e.dirty.store(true, Ordering::Release);
                continue;
            }
            let streams = lock(&self.streams);
            let mut marks = lock(&self.marks);
            for (key, seq) in applied {
                if let Some(m) = marks.get_mut(&key) {
                    if seq > m.durable {
                        m.durable = seq;
                        // acknowledge on the connection that owns the stream now
                        if let Some(s) = streams.get(&key.1).filter(|s| s.db == key.0) {
                            let _ = lock(&s.peer).send_complete_buffer(
                                cmd::PUSH,
                                Push::FastPostAck { stream: key.1, seq }.encode(),
                            );
                        }
                    }
                }
            }
            drop(marks);
            drop(streams);
        }
    }

    fn entry(&self, name: &str, create: bool) -> Result<Arc<DbEntry>, HandlerError> {
        check_client_name(name)?;
        let mut dbs = lock(&self.dbs);
        if let Some(e) = dbs.get(name) {
            if !e.db.is_closed() {
                return Ok(e.clone());
            }
        }
        let db = match self.env.db(name) {
            Ok(db) => db,
            Err(zs_db::Error::NoSuchDatabase(_)) if create => self
                .env
                .create_db(name, DbOptions::default())
                .map_err(db_err)?,
            Err(e) => return Err(db_err(e)),
        };
        self.resolve_marks(name, &db);
        let e = Arc::new(DbEntry {
            db,
            uid: NEXT_ENTRY_UID.fetch_add(1, Ordering::Relaxed),
            write: Mutex::new(()),
            dirty: AtomicBool::new(false),
            watchers: Mutex::new(Vec::new()),
        });
        dbs.insert(name.to_string(), e.clone());
        drop(dbs);
        self.dbs_changed();
        Ok(e)
    }

    /// The open database `name` as this thread last saw it: a thread-local
    /// table of weak entries, valid while [`Svc::dbs_gen`] has not moved, so a
    /// GET on an event loop takes no lock on the shared map (one atomic load).
    fn cached_entry(&self, name: &str) -> Option<Arc<DbEntry>> {
        ENTRY_CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let gen = self.dbs_gen.load(Ordering::Acquire);
            if c.svc != self.uid || c.gen != gen || c.entries.len() >= ENTRY_CACHE_MAX {
                c.svc = self.uid;
                c.gen = gen;
                c.entries.clear();
            }
            if let Some((_, w)) = c.entries.iter().find(|(n, _)| &**n == name) {
                return w.upgrade();
            }
            let e = lock(&self.dbs).get(name).cloned();
            // only a live entry is remembered (a later open bumps the generation)
            if let Some(e) = &e {
                c.entries.push((name.into(), Arc::downgrade(e)));
            }
            e
        })
    }

    /// Marks the database map changed (the loops' entry tables are stale).
    fn dbs_changed(&self) {
        self.dbs_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// Answers one request. Runs on the connection's event loop: a GET of a
    /// record in the cache (or of one that does not exist) of an open database is
    /// answered right here, so a pipelined burst of them leaves in one write;
    /// everything else (file reads, commits, fsyncs, procedures) goes to the
    /// service's worker pool.
    fn request(self: &Arc<Self>, peer: &Peer, df: &DataFrame, r: Responder) {
        let payload = match from_frame(df) {
            Ok(p) => p,
            Err(e) => {
                let _ = r.reply_error(errcode::BAD_REQUEST, e.0);
                return;
            }
        };
        // A GET read in place: no decoded request, no lock on the database map,
        // the answer encoded straight from the cache (one allocation).
        if let Some((db, id)) = peek_get(&payload) {
            if let Err((code, m)) = self.rules.check(peer, db, Access::Read) {
                let _ = r.reply_error(code, m);
                return;
            }
            let answer = self.cached_entry(db).and_then(|e| self.get_on_loop(&e, id));
            match answer {
                Some(Some(bytes)) => {
                    let _ = r.reply_data(to_frame(bytes));
                    return;
                }
                Some(None) => {
                    let _ = r.reply_data(to_frame(Answer::Record(None).encode()));
                    return;
                }
                None => {} // a file read: the worker pool below
            }
        }
        let req = match Request::decode(&payload, &self.cfg.limits) {
            Ok(req) => req,
            Err(e) => {
                let _ = r.reply_error(errcode::BAD_REQUEST, e.0);
                return;
            }
        };
        let svc = self.clone();
        let p = peer.clone();
        let spawned = self.pool.spawn(move || {
            let _ = r.reply(
                svc.execute(&p, req)
                    .map(|ans| Reply::Data(to_frame(ans.encode()))),
            );
        });
        // a refused job's responder was dropped with it, which answers the caller
        // with an error; count and log it here
        if !spawned {
            tracing::debug!(peer = peer.id(), "db service: worker queue full");
        }
    }

    /// A GET answered without leaving the event loop: from this thread's
    /// [`LoopCache`] (no lock), else from zs-db's cache (its shard lock), the
    /// answer then kept in the loop cache if no commit ran meanwhile.
    /// `Some(None)`: no such record; `None`: it must be read from the file.
    fn get_on_loop(&self, e: &DbEntry, id: u64) -> Option<Option<Bytes>> {
        if e.db.is_closed() {
            return None;
        }
        let budget = self.cfg.loop_cache_bytes;
        let seq = e.db.change_seq();
        let quiet = budget > 0 && seq.is_multiple_of(2);
        if quiet {
            if let Some(a) = LOOP_CACHE.with(|c| c.borrow_mut().get(e.uid, id, seq)) {
                return Some(Some(a));
            }
        }
        let answer =
            e.db.get_cached_with(id, |kind, data| encode_record_answer(id, kind, data))?;
        if let Some(a) = &answer {
            // current at `seq` only if no commit started since (see change_seq)
            if quiet && a.len() <= LOOP_CACHE_INLINE && e.db.change_seq() == seq {
                LOOP_CACHE.with(|c| c.borrow_mut().put(budget, e.uid, id, seq, a));
            }
        }
        Some(answer)
    }

    /// Sends the changes of one commit to the watches of `e`; called with `e.write`
    /// held, so watches see commits in commit order.
    fn notify(&self, e: &DbEntry, describe: &dyn Fn() -> Vec<Change>) {
        let mut ws = lock(&e.watchers);
        if ws.is_empty() {
            return;
        }
        let changes = describe();
        let mut gone = Vec::new();
        let name = e.db.name().to_string();
        ws.retain_mut(|w| {
            if let Err((_, why)) = self.rules.check(&w.peer, &name, Access::Read) {
                tracing::info!(peer = w.peer.id(), wid = w.wid, %why, "db service: watch ended (no right)");
                gone.push((w.peer.id(), w.wid));
                return false;
            }
            let mine: Vec<Change> = changes
                .iter()
                .filter(|c| {
                    let id = match c {
                        Change::Put(r) => r.id,
                        Change::Delete(id) => *id,
                    };
                    id >= w.lo && id <= w.hi
                })
                .cloned()
                .collect();
            if mine.is_empty() {
                return w.peer.is_open();
            }
            let push = Push::Changes {
                wid: w.wid,
                seq: w.seq,
                changes: mine,
            };
            w.seq += 1;
            let ok = w
                .peer
                .send_complete_buffer(cmd::PUSH, push.encode())
                .is_ok();
            if !ok {
                gone.push((w.peer.id(), w.wid));
            }
            ok
        });
        drop(ws);
        if !gone.is_empty() {
            let mut m = lock(&self.watches);
            for k in gone {
                m.remove(&k);
            }
        }
    }

    fn commit(
        &self,
        e: &DbEntry,
        batch: &Batch,
        durability: Durability,
        describe: &dyn Fn(&[u64]) -> Vec<Change>,
    ) -> Result<Vec<u64>, HandlerError> {
        let ids = {
            let _w = lock(&e.write);
            let ids =
                e.db.commit_with(
                    batch,
                    Some(zs_db::Durability::Periodic(self.cfg.group_commit)),
                )
                .map_err(db_err)?;
            self.notify(e, &|| describe(&ids));
            ids
        };
        match durability {
            // outside the write lock, so concurrent durable writers share fsyncs
            Durability::Durable => e.db.sync().map_err(db_err)?,
            Durability::Written => e.dirty.store(true, Ordering::Release),
        }
        Ok(ids)
    }

    /// Runs a registered procedure within the process-wide cap on calls.
    fn call(&self, name: &str, args: &[u8]) -> Result<Answer, HandlerError> {
        let f = self
            .procedures
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| herr(errcode::NOT_FOUND, format!("no procedure {name:?}")))?;
        let max = self.cfg.max_procedure_calls as u64;
        if self.procedure_calls.fetch_add(1, Ordering::AcqRel) >= max {
            self.procedure_calls.fetch_sub(1, Ordering::AcqRel);
            return Err(herr(
                errcode::LIMIT,
                format!("{max} procedure calls are running already"),
            ));
        }
        struct Release<'a>(&'a AtomicU64);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _release = Release(&self.procedure_calls);
        let out = f(args)?;
        if out.len() > self.cfg.limits.max_args {
            return Err(herr(
                errcode::LIMIT,
                format!(
                    "procedure {name:?} returned {} bytes (limit {}); it committed",
                    out.len(),
                    self.cfg.limits.max_args
                ),
            ));
        }
        Ok(Answer::Bytes(out.into()))
    }

    /// Checks the rights `req` needs (see [`Access`]).
    fn authorize(&self, peer: &Peer, req: &Request) -> Result<(), HandlerError> {
        let chk = |db: &str, a: Access| self.rules.check(peer, db, a).map_err(|(c, m)| herr(c, m));
        match req {
            Request::Open { name, create } => {
                let exists = lock(&self.dbs).contains_key(name)
                    || self
                        .env
                        .list_dbs()
                        .map_err(db_err)?
                        .iter()
                        .any(|n| n == name);
                chk(
                    name,
                    if *create && !exists {
                        Access::Admin
                    } else {
                        Access::Read
                    },
                )
            }
            Request::Close { name } | Request::Compact { name } | Request::Remove { name } => {
                chk(name, Access::Admin)
            }
            Request::CreateIndex { db, .. } | Request::Grant { db, .. } | Request::Rules { db } => {
                chk(db, Access::Admin)
            }
            Request::Copy { src, dst } => {
                chk(src, Access::Read)?;
                chk(dst, Access::Admin)
            }
            Request::Insert { db, .. }
            | Request::Update { db, .. }
            | Request::Delete { db, .. }
            | Request::FastPostOpen { db, .. } => chk(db, Access::Write),
            Request::Get { db, .. } | Request::Watch { db, .. } | Request::Stats { db } => {
                chk(db, Access::Read)
            }
            Request::Query(spec) => chk(&spec.db, Access::Read),
            Request::List | Request::Call { .. } => self
                .rules
                .check_logged_in(peer)
                .map(drop)
                .map_err(|(c, m)| herr(c, m)),
            // objects of this connection (a query re-checks its rights itself)
            Request::Pause { .. }
            | Request::Resume { .. }
            | Request::Stop { .. }
            | Request::Progress { .. }
            | Request::Unwatch { .. } => Ok(()),
        }
    }

    fn execute(&self, peer: &Peer, req: Request) -> Result<Answer, HandlerError> {
        self.authorize(peer, &req)?;
        match req {
            Request::Grant { db, user, access } => {
                if db != "*" {
                    check_client_name(&db)?;
                }
                if user.is_empty() || user.len() > 64 {
                    return Err(herr(errcode::BAD_REQUEST, "a user name has 1 to 64 bytes"));
                }
                self.rules.set(&db, &user, access).map_err(db_err)?;
                Ok(Answer::Ok)
            }
            Request::Rules { db } => {
                if db != "*" {
                    check_client_name(&db)?;
                }
                Ok(Answer::Rules(self.rules.list(&db)))
            }
            Request::Open { name, create } => {
                self.entry(&name, create)?;
                Ok(Answer::Ok)
            }
            Request::Close { name } => {
                check_client_name(&name)?;
                let gone = lock(&self.dbs).remove(&name);
                self.dbs_changed();
                if let Some(e) = gone {
                    e.db.sync().map_err(db_err)?;
                }
                self.env.close(&name);
                Ok(Answer::Ok)
            }
            Request::List => {
                let mut names: Vec<String> = self
                    .env
                    .list_dbs()
                    .map_err(db_err)?
                    .into_iter()
                    .filter(|n| !n.starts_with("__"))
                    .collect();
                if self.rules.identity().is_some() {
                    names.retain(|n| self.rules.check(peer, n, Access::Read).is_ok());
                }
                names.sort();
                Ok(Answer::Names(names))
            }
            Request::Copy { src, dst } => {
                check_client_name(&dst)?;
                let e = self.entry(&src, false)?;
                if self.env.list_dbs().map_err(db_err)?.contains(&dst) {
                    return Err(herr(errcode::EXISTS, format!("database {dst:?} exists")));
                }
                e.db.copy_to(self.env.vfs(), &dst).map_err(db_err)?;
                Ok(Answer::Ok)
            }
            Request::Compact { name } => {
                let e = self.entry(&name, false)?;
                let (a, b) = e.db.compact().map_err(db_err)?;
                Ok(Answer::Sizes(a, b))
            }
            Request::Remove { name } => {
                check_client_name(&name)?;
                lock(&self.dbs).remove(&name);
                self.dbs_changed();
                self.env.remove_db(&name).map_err(db_err)?;
                self.forget_marks(&name);
                Ok(Answer::Ok)
            }
            Request::CreateIndex { db, field } => {
                let e = self.entry(&db, false)?;
                let _w = lock(&e.write);
                e.db.create_index(&field).map_err(db_err)?;
                Ok(Answer::Ok)
            }
            Request::Insert {
                db,
                durability,
                kind,
                data,
            } => {
                let e = self.entry(&db, false)?;
                let mut b = Batch::new();
                b.insert(kind, data.to_vec());
                let ids = self.commit(&e, &b, durability, &|ids| {
                    vec![Change::Put(Record {
                        id: ids[0],
                        kind,
                        data: data.to_vec(),
                    })]
                })?;
                Ok(Answer::Id(ids[0]))
            }
            Request::Update {
                db,
                durability,
                id,
                kind,
                data,
            } => {
                let e = self.entry(&db, false)?;
                let mut b = Batch::new();
                b.update(id, kind, data.to_vec());
                self.commit(&e, &b, durability, &|_| {
                    vec![Change::Put(Record {
                        id,
                        kind,
                        data: data.to_vec(),
                    })]
                })?;
                Ok(Answer::Ok)
            }
            Request::Delete { db, durability, id } => {
                let e = self.entry(&db, false)?;
                if !e.db.contains(id) {
                    return Ok(Answer::Bool(false));
                }
                let mut b = Batch::new();
                b.delete(id);
                match self.commit(&e, &b, durability, &|_| vec![Change::Delete(id)]) {
                    Ok(_) => Ok(Answer::Bool(true)),
                    Err(h) if h.code == errcode::NOT_FOUND => Ok(Answer::Bool(false)),
                    Err(h) => Err(h),
                }
            }
            Request::Get { db, id } => {
                let e = self.entry(&db, false)?;
                Ok(Answer::Record(e.db.get(id).map_err(db_err)?))
            }
            Request::Stats { db } => Ok(Answer::Stats(self.entry(&db, false)?.db.stats())),
            Request::Query(spec) => self.start_query(peer, spec),
            Request::Call { name, args } => self.call(&name, &args),
            Request::Pause { qid } | Request::Resume { qid } | Request::Stop { qid } => {
                let q = self.query(peer, qid)?;
                let mut st = lock(&q.st);
                let engine = lock(&q.engine).clone();
                match req {
                    Request::Pause { .. } => {
                        st.paused = true;
                        if let Some(c) = &engine {
                            c.pause();
                        }
                    }
                    Request::Resume { .. } => {
                        st.paused = false;
                        if let Some(c) = &engine {
                            c.resume();
                        }
                    }
                    _ => {
                        st.stop = true;
                        if let Some(c) = &engine {
                            c.stop();
                        }
                    }
                }
                q.cv.notify_all();
                Ok(Answer::Ok)
            }
            Request::Progress { qid } => {
                let q = self.query(peer, qid)?;
                let engine = lock(&q.engine).as_ref().map(|c| c.progress());
                let st = lock(&q.st);
                let (scanned, matched) = engine.map_or((0, 0), |p| (p.scanned, p.matched));
                Ok(Answer::Progress(QueryProgress {
                    scanned,
                    matched: matched.max(st.matched),
                    batches: st.batches,
                    in_flight: st.window - st.credit,
                    paused: st.paused,
                    done: st.done,
                }))
            }
            Request::FastPostOpen { db, stream } => self.fastpost_open(peer, &db, stream),
            Request::Watch { wid, db, lo, hi } => {
                let e = self.entry(&db, false)?;
                {
                    let mut m = lock(&self.watches);
                    let mine = m.keys().filter(|k| k.0 == peer.id()).count();
                    if mine >= self.cfg.max_watches_per_conn {
                        return Err(herr(
                            errcode::LIMIT,
                            format!(
                                "too many watches on this connection (at most {})",
                                self.cfg.max_watches_per_conn
                            ),
                        ));
                    }
                    if m.contains_key(&(peer.id(), wid)) {
                        return Err(herr(errcode::EXISTS, "watch id in use"));
                    }
                    m.insert((peer.id(), wid), db.clone());
                }
                lock(&e.watchers).push(Watcher {
                    peer: peer.clone(),
                    wid,
                    lo,
                    hi,
                    seq: 0,
                });
                Ok(Answer::Id(wid))
            }
            Request::Unwatch { wid } => {
                let db = lock(&self.watches).remove(&(peer.id(), wid));
                let Some(db) = db else {
                    return Err(herr(errcode::NOT_FOUND, format!("no watch {wid}")));
                };
                if let Some(e) = lock(&self.dbs).get(&db) {
                    lock(&e.watchers).retain(|w| !(w.peer.id() == peer.id() && w.wid == wid));
                }
                Ok(Answer::Ok)
            }
        }
    }

    fn query(&self, peer: &Peer, qid: u64) -> Result<Arc<QueryCtl>, HandlerError> {
        lock(&self.queries)
            .get(&(peer.id(), qid))
            .cloned()
            .ok_or_else(|| herr(errcode::NOT_FOUND, format!("no running query {qid}")))
    }

    fn start_query(&self, peer: &Peer, spec: QuerySpec) -> Result<Answer, HandlerError> {
        let e = self.entry(&spec.db, false)?;
        // filters compile before anything runs (a bad one is refused at once)
        let expr = if spec.filter.trim().is_empty() {
            None
        } else {
            Some(
                compile_expr(&spec.filter, &spec.params)
                    .map_err(|m| herr(errcode::BAD_REQUEST, m))?,
            )
        };
        let func = if spec.function.is_empty() {
            None
        } else {
            Some(
                self.functions
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&spec.function)
                    .cloned()
                    .ok_or_else(|| {
                        herr(
                            errcode::NOT_FOUND,
                            format!("no filter function {:?}", spec.function),
                        )
                    })?,
            )
        };
        let sort = if spec.sort.is_empty() {
            None
        } else {
            if spec.limit == 0 || spec.limit > self.cfg.max_sorted {
                return Err(herr(
                    errcode::BAD_REQUEST,
                    format!(
                        "a sorted query needs a limit of 1 to {} (got {})",
                        self.cfg.max_sorted, spec.limit
                    ),
                ));
            }
            Some(
                compile_expr(&spec.sort, &spec.params)
                    .map_err(|m| herr(errcode::BAD_REQUEST, format!("sort key: {m}")))?,
            )
        };
        let batch_bytes = spec.batch_bytes.clamp(1024, self.cfg.max_batch_bytes);
        let window = spec
            .window
            .clamp(1, (self.cfg.max_query_in_flight / batch_bytes).max(1));
        let batch_ms = spec.batch_ms.clamp(1, self.cfg.max_batch_ms);
        // The scan runs on zs-db's parallel engine (file-order reads, workers
        // filtering in parallel). A work unit holds about one batch of records of
        // the database's average size, so what the engine reads ahead is bounded
        // in batches too (see ServiceConfig::scan_threads).
        let stats = e.db.stats();
        let avg = (stats.live_bytes / stats.records.max(1)).max(16);
        let chunk = (batch_bytes as u64 / avg).clamp(16, 4096) as usize;
        // Without a sort or a limit the engine's workers encode the matches
        // straight into result batches (one per work unit, in parallel): no
        // owned record per match, no encoding stage after the engine.
        let packed = sort.is_none() && spec.limit == 0;
        let mut q = if expr.is_some() || func.is_some() {
            let params = spec.params.clone();
            zs_db::Query::filter_fn(Arc::new(move |r: &RecordRef<'_>| {
                expr.as_ref().is_none_or(|f| f.matches(r))
                    && func.as_ref().is_none_or(|f| f(r, &params))
            }))
        } else {
            zs_db::Query::all()
        };
        q = q
            .threads(self.cfg.scan_threads.max(1))
            .chunk_size(chunk)
            // a sorted query sees every match (in id order) and picks its first
            // `limit` by the key itself
            .reverse(spec.reverse && sort.is_none());
        if spec.limit > 0 && sort.is_none() {
            q = q.limit(spec.limit);
        }
        if packed {
            let (qid, room) = (spec.qid, batch_bytes as usize + 256);
            q = q.packed(Arc::new(move |r: &RecordRef<'_>, buf: &mut Vec<u8>| {
                BatchWriter::pack(buf, qid, room, r)
            }));
        }
        match &spec.range {
            Range::All => {}
            Range::Ids { lo, hi } => q = q.id_range((*lo).max(1), *hi),
            Range::Index { field, lo, hi } => {
                if !e.db.indexes().iter().any(|f| f == field) {
                    return Err(herr(
                        errcode::NOT_FOUND,
                        format!("no index on field {field:?}"),
                    ));
                }
                let b = |p: &Option<Param>| match p {
                    None => Bound::Unbounded,
                    Some(p) => Bound::Included(param_to_field(p)),
                };
                q = q.use_index(zs_db::IndexHint {
                    field: field.clone(),
                    lo: b(lo),
                    hi: b(hi),
                });
            }
        }
        let key = (peer.id(), spec.qid);
        let ctl = Arc::new(QueryCtl {
            peer: peer.id(),
            st: Mutex::new(QState {
                credit: window,
                window,
                ..QState::default()
            }),
            cv: Condvar::new(),
            engine: Mutex::new(None),
        });
        {
            let mut qs = lock(&self.queries);
            if qs.len() >= self.cfg.max_queries {
                return Err(herr(errcode::LIMIT, "too many queries on this server"));
            }
            let mine = qs.values().filter(|q| q.peer == peer.id()).count();
            if mine >= self.cfg.max_queries_per_conn {
                return Err(herr(
                    errcode::LIMIT,
                    format!(
                        "too many queries on this connection (at most {})",
                        self.cfg.max_queries_per_conn
                    ),
                ));
            }
            if qs.contains_key(&key) {
                return Err(herr(errcode::EXISTS, "query id in use"));
            }
            qs.insert(key, ctl.clone());
        }
        let handle = match e.db.query(q) {
            Ok(h) => h,
            Err(err) => {
                lock(&self.queries).remove(&key);
                return Err(db_err(err));
            }
        };
        *lock(&ctl.engine) = Some(handle.control());
        let (weak, p, dbn) = (self.self_weak(), peer.clone(), spec.db.clone());
        let svc_queries = Arc::downgrade(&self.queries);
        let run = QueryRun {
            allowed: Box::new(move || match weak.upgrade() {
                Some(svc) => svc
                    .rules
                    .check(&p, &dbn, Access::Read)
                    .map_err(|(c, m)| format!("{c}: {m}")),
                None => Err("the service ended".into()),
            }),
            peer: peer.clone(),
            qid: key.1,
            ctl: ctl.clone(),
            sort: sort.map(|f| (f, spec.reverse)),
            limit: spec.limit,
            batch_bytes: batch_bytes as usize,
            batch_ms: Duration::from_millis(batch_ms as u64),
            forget: Box::new(move || {
                if let Some(q) = svc_queries.upgrade() {
                    lock(&q).remove(&key);
                }
            }),
        };
        let spawned = std::thread::Builder::new()
            .name("zs-dbsvc-query".into())
            .spawn(move || run.run(handle, packed));
        if let Err(err) = spawned {
            lock(&self.queries).remove(&key);
            return Err(herr(errcode::STORE, format!("cannot start query: {err}")));
        }
        Ok(Answer::Id(key.1))
    }

    fn oneway(&self, peer: &Peer, data: Bytes) {
        let msg = match Oneway::decode(&data, &self.cfg.limits) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = peer.id(), err = %e, "db service: bad one-way message; disconnecting");
                peer.close(&format!("db service: {e}"));
                return;
            }
        };
        match msg {
            Oneway::Credit { qid, batches } => {
                if let Some(q) = lock(&self.queries).get(&(peer.id(), qid)) {
                    let mut st = lock(&q.st);
                    st.credit = st.credit.saturating_add(batches).min(st.window);
                    q.cv.notify_all();
                }
            }
            Oneway::FastPost {
                stream,
                first_seq,
                records,
            } => self.fastpost_data(peer, stream, first_seq, records),
        }
    }
}

struct QueryRun {
    /// Whether the connection may still read the database (rights are checked
    /// again before every batch, so a revoked right ends the query).
    allowed: Box<dyn Fn() -> Result<(), String> + Send>,
    peer: Peer,
    qid: u64,
    ctl: Arc<QueryCtl>,
    /// The sort key and whether highest comes first.
    sort: Option<(crate::filter::ExprFilter, bool)>,
    limit: u64,
    batch_bytes: usize,
    batch_ms: Duration,
    /// Takes the query out of the server's table. Called before its end is sent, so
    /// a client that has seen the end never finds the query still listed.
    forget: Box<dyn FnOnce() + Send>,
}

/// Most records in one result batch (well under the client's default
/// [`Limits::max_records`], whatever the batch size).
const MAX_BATCH_RECORDS: usize = 16_384;

/// Bytes of a result batch before its records (tag, qid, seq, count).
const BATCH_HEADER: usize = 1 + 8 + 8 + 4;

/// What the feeder thread hands the sender: one engine batch (as records for a
/// sorted query, already encoded for the others), or the scan's failure.
enum Fed {
    Records(Vec<Record>),
    Packed(BatchWriter),
    Failed(String),
}

impl QueryRun {
    /// Runs the scan in stages on their own threads: the engine's workers read
    /// and filter (and, `packed`, encode each work unit into a result batch, in
    /// parallel), a feeder thread takes the engine's batches in order (encoding
    /// them when the workers did not), and this thread joins them into pushes
    /// closed by size or time, waits for credit and seals and sends them. A
    /// work unit is about one result batch (see `start_query`), so encoding and
    /// sealing overlap.
    fn run(self, handle: zs_db::QueryHandle, packed: bool) {
        let (tx, rx) = crossbeam_channel::bounded::<Fed>(1);
        let (qid, pack) = (self.qid, self.sort.is_none());
        let feeder = std::thread::Builder::new()
            .name("zs-dbsvc-feed".into())
            .spawn(move || {
                for b in handle {
                    let fed = match b {
                        // packed by the engine's workers: one unit, its id the count
                        Ok(mut units) if packed => match units.pop() {
                            Some(u) if units.is_empty() => {
                                Fed::Packed(BatchWriter::from_packed(u.data, u.id as u32))
                            }
                            Some(_) => Fed::Failed("internal: several packed units".into()),
                            None => continue,
                        },
                        Ok(recs) if pack => {
                            let bytes: usize = recs.iter().map(|r| r.data.len() + 13).sum();
                            let mut w = BatchWriter::new(qid, 0, bytes);
                            for r in &recs {
                                w.push(r);
                            }
                            Fed::Packed(w)
                        }
                        Ok(recs) => Fed::Records(recs),
                        Err(e) => Fed::Failed(e.to_string()),
                    };
                    let failed = matches!(fed, Fed::Failed(_));
                    if tx.send(fed).is_err() || failed {
                        return; // dropping the handle stops and joins the workers
                    }
                }
            });
        let res = match feeder {
            Ok(f) => {
                let r = self.scan(&rx);
                if let Some(c) = lock(&self.ctl.engine).as_ref() {
                    c.stop();
                }
                drop(rx);
                let _ = f.join();
                r
            }
            Err(e) => Err(format!("cannot start the scan: {e}")),
        };
        let (status, message) = match res {
            Ok(s) => (s, String::new()),
            Err(m) => (EndStatus::Failed, m),
        };
        let sent = {
            let mut st = lock(&self.ctl.st);
            st.done = true;
            st.matched
        };
        (self.forget)();
        let _ = self.peer.send_complete_buffer(
            cmd::PUSH,
            Push::End {
                qid: self.qid,
                status,
                matched: sent,
                message,
            }
            .encode(),
        );
    }

    /// Waits while paused (or, with `need_credit`, while no batch may be sent).
    /// `Some(status)` ends the scan.
    fn gate(&self, need_credit: bool) -> Option<EndStatus> {
        let mut st = lock(&self.ctl.st);
        loop {
            if st.stop {
                return Some(EndStatus::Stopped);
            }
            if !st.paused && (!need_credit || st.credit > 0) {
                if need_credit {
                    st.credit -= 1;
                    st.batches += 1;
                }
                return None;
            }
            let (g, _) = self
                .ctl
                .cv
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner());
            st = g;
            if !self.peer.is_open() {
                return Some(EndStatus::Stopped);
            }
        }
    }

    fn send(&self, batch: &mut Option<BatchWriter>) -> Result<Option<EndStatus>, String> {
        let Some(b) = batch.take() else {
            return Ok(None);
        };
        if let Some(s) = self.gate(true) {
            return Ok(Some(s));
        }
        (self.allowed)()?;
        let n = b.len() as u64;
        self.peer
            .send_complete_buffer(cmd::PUSH, b.finish())
            .map_err(|e| format!("cannot send results: {e}"))?;
        lock(&self.ctl.st).matched += n;
        Ok(None)
    }

    /// A sorted query: every match is read, the first `limit` by the key kept
    /// (at most 2 × limit records in memory), then sent in key order.
    fn scan_sorted(
        &self,
        rx: &crossbeam_channel::Receiver<Fed>,
        key: &crate::filter::ExprFilter,
        desc: bool,
    ) -> Result<EndStatus, String> {
        use crate::filter::SortKey;
        let limit = self.limit.max(1) as usize;
        let order = |a: &(SortKey, Record), b: &(SortKey, Record)| {
            let c = a.0.cmp(&b.0);
            if desc { c.reverse() } else { c }.then(a.1.id.cmp(&b.1.id))
        };
        let mut top: Vec<(SortKey, Record)> = Vec::new();
        while let Ok(fed) = rx.recv() {
            let recs = match fed {
                Fed::Failed(m) => return Err(m),
                Fed::Records(r) => r,
                Fed::Packed(_) => return Err("internal: an encoded batch in a sorted query".into()),
            };
            if let Some(s) = self.gate(false) {
                return Ok(s);
            }
            for rec in recs {
                top.push((key.sort_key(&rec.as_ref()), rec));
                if top.len() >= 2 * limit {
                    top.sort_by(order);
                    top.truncate(limit);
                }
            }
        }
        top.sort_by(order);
        top.truncate(limit);
        let mut batch: Option<BatchWriter> = None;
        let mut seq = 0u64;
        for (_, rec) in &top {
            let b = batch.get_or_insert_with(|| {
                seq += 1;
                BatchWriter::new(self.qid, seq - 1, self.batch_bytes + 256)
            });
            b.push(rec);
            if b.bytes() >= self.batch_bytes || b.len() >= MAX_BATCH_RECORDS {
                if let Some(s) = self.send(&mut batch)? {
                    return Ok(s);
                }
            }
        }
        if let Some(s) = self.send(&mut batch)? {
            return Ok(s);
        }
        let sent = lock(&self.ctl.st).matched;
        Ok(if sent >= self.limit {
            EndStatus::Limit
        } else {
            EndStatus::Done
        })
    }

    fn scan(&self, rx: &crossbeam_channel::Receiver<Fed>) -> Result<EndStatus, String> {
        if let Some((key, desc)) = &self.sort {
            return self.scan_sorted(rx, key, *desc);
        }
        let mut batch: Option<BatchWriter> = None;
        let mut seq = 0u64;
        let mut first_at = Instant::now();
        loop {
            let fed = if batch.is_some() {
                let left = self.batch_ms.saturating_sub(first_at.elapsed());
                match rx.recv_timeout(left) {
                    Ok(f) => Some(f),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        // the batch's time is up: send what it has
                        if let Some(s) = self.send(&mut batch)? {
                            return Ok(s);
                        }
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
                }
            } else {
                rx.recv().ok()
            };
            let recs = match fed {
                None => break,
                Some(Fed::Failed(m)) => return Err(m),
                Some(Fed::Records(r)) => r,
                Some(Fed::Packed(w)) => {
                    if let Some(s) = self.gate(false) {
                        return Ok(s);
                    }
                    if w.is_empty() {
                        continue;
                    }
                    // joined only while the push stays within its size
                    let over = batch.as_ref().is_some_and(|b| {
                        b.bytes() + w.bytes() > self.batch_bytes + BATCH_HEADER
                            || b.len() + w.len() > MAX_BATCH_RECORDS
                    });
                    if over {
                        if let Some(s) = self.send(&mut batch)? {
                            return Ok(s);
                        }
                    }
                    match &mut batch {
                        Some(b) => b.append(&w),
                        None => {
                            let mut w = w;
                            w.set_seq(seq);
                            seq += 1;
                            first_at = Instant::now();
                            batch = Some(w);
                        }
                    }
                    let full = batch.as_ref().is_some_and(|b| {
                        b.bytes() >= self.batch_bytes || b.len() >= MAX_BATCH_RECORDS
                    });
                    if full || first_at.elapsed() >= self.batch_ms {
                        if let Some(s) = self.send(&mut batch)? {
                            return Ok(s);
                        }
                    }
                    continue;
                }
            };
            if let Some(s) = self.gate(false) {
                return Ok(s);
            }
            for rec in &recs {
                let b = batch.get_or_insert_with(|| {
                    first_at = Instant::now();
                    seq += 1;
                    BatchWriter::new(self.qid, seq - 1, self.batch_bytes + 256)
                });
                b.push(rec);
                if b.bytes() >= self.batch_bytes || b.len() >= MAX_BATCH_RECORDS {
                    if let Some(s) = self.send(&mut batch)? {
                        return Ok(s);
                    }
                }
            }
            if batch.is_some() && first_at.elapsed() >= self.batch_ms {
                if let Some(s) = self.send(&mut batch)? {
                    return Ok(s);
                }
            }
        }
        if let Some(s) = self.send(&mut batch)? {
            return Ok(s);
        }
        let sent = lock(&self.ctl.st).matched;
        Ok(if self.limit > 0 && sent >= self.limit {
            EndStatus::Limit
        } else {
            EndStatus::Done
        })
    }
}

// ---- FastPost ---------------------------------------------------------------

/// A stream's mark as stored in [`MARKS_DB`]: `u16 len, db, u64 stream, u64 applied,`
/// then one or more groups `u64 first_seq, u64 last_seq, u64 first_id` in commit
/// order (a group with first_seq 0 is none; one such is written when there is
/// no group, so a mark without groups keeps the 40-byte shape of one group).
fn encode_mark(db: &str, stream: u64, applied: u64, groups: &[(u64, u64, u64)]) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(48 + db.len() + 24 * groups.len());
    b.put_u16_le(db.len() as u16);
    b.put_slice(db.as_bytes());
    b.put_u64_le(stream);
    b.put_u64_le(applied);
    let none = [(0, 0, 0)];
    for &(a, z, n) in if groups.is_empty() { &none[..] } else { groups } {
        b.put_u64_le(a);
        b.put_u64_le(z);
        b.put_u64_le(n);
    }
    b.to_vec()
}

/// A mark read at start-up, resolved when its database is first opened:
/// (mark record id, applied, pending groups (first seq, last seq, first id)).
type PendingMark = (u64, u64, Vec<(u64, u64, u64)>);

type MarkRow = (String, u64, u64, Vec<(u64, u64, u64)>);

/// The last sequence number applied, from a mark's base and groups and the
/// database's next id after a restart: a group was committed iff the database
/// allocated its first id (groups commit in order, so those are a prefix).
fn resolve_applied(base: u64, groups: &[(u64, u64, u64)], next_id: u64) -> u64 {
    groups
        .iter()
        .filter(|&&(_, _, first_id)| next_id > first_id)
        .fold(base, |acc, &(_, z, _)| acc.max(z))
}

fn decode_mark(d: &[u8]) -> Option<MarkRow> {
    let n = u16::from_le_bytes(d.get(..2)?.try_into().ok()?) as usize;
    let db = std::str::from_utf8(d.get(2..2 + n)?).ok()?.to_string();
    let rest = d.get(2 + n..)?;
    if rest.len() < 40 || (rest.len() - 16) % 24 != 0 || rest.len() > 16 + 24 * MAX_MARK_GROUPS {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(rest[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let groups = (0..(rest.len() - 16) / 24)
        .map(|g| (u(2 + 3 * g), u(3 + 3 * g), u(4 + 3 * g)))
        .filter(|g| g.0 != 0)
        .collect();
    Some((db, u(0), u(1), groups))
}

impl Svc {
    fn load_marks(&self) -> zs_db::Result<()> {
        let db = match self.env.db(MARKS_DB) {
            Ok(db) => db,
            Err(zs_db::Error::NoSuchDatabase(_)) => {
                self.env.create_db(MARKS_DB, DbOptions::default())?
            }
            Err(e) => return Err(e),
        };
        let mut pending = lock(&self.pending_marks);
        for rec in db.cursor(1, false) {
            let rec = rec?;
            match decode_mark(&rec.data) {
                Some((name, stream, applied, p)) => {
                    pending.insert((name, stream), (rec.id, applied, p));
                }
                None => {
                    tracing::warn!(id = rec.id, "db service: unreadable FastPost mark dropped");
                    let _ = db.delete(rec.id);
                }
            }
        }
        *lock(&self.marks_db) = Some(db);
        Ok(())
    }

    /// Resolves the marks of `name` left by the previous run: a pending commit
    /// happened iff the database allocated its first id (ids are never reused and
    /// only the stream's writer wrote between the mark and the commit).
    fn resolve_marks(&self, name: &str, db: &Database) {
        let next_id = db.stats().next_id;
        let mut pending = lock(&self.pending_marks);
        let keys: Vec<(String, u64)> = pending.keys().filter(|k| k.0 == name).cloned().collect();
        let mut marks = lock(&self.marks);
        for k in keys {
            let Some((rec, applied, p)) = pending.remove(&k) else {
                continue;
            };
            let applied = resolve_applied(applied, &p, next_id);
            marks.insert(
                k,
                Mark {
                    rec,
                    applied,
                    durable: applied,
                    used: self.tick.fetch_add(1, Ordering::Relaxed),
                },
            );
        }
    }

    fn forget_marks(&self, name: &str) {
        let md = lock(&self.marks_db).clone();
        let mut marks = lock(&self.marks);
        let keys: Vec<(String, u64)> = marks.keys().filter(|k| k.0 == name).cloned().collect();
        for k in keys {
            if let (Some(m), Some(md)) = (marks.remove(&k), &md) {
                let _ = md.delete(m.rec);
            }
        }
        lock(&self.pending_marks).retain(|k, _| k.0 != name);
    }

    fn fastpost_open(&self, peer: &Peer, db: &str, stream: u64) -> Result<Answer, HandlerError> {
        self.entry(db, false)?;
        let key = (db.to_string(), stream);
        let durable = {
            let mut marks = lock(&self.marks);
            let tick = self.tick.fetch_add(1, Ordering::Relaxed);
            if !marks.contains_key(&key) && marks.len() >= self.cfg.max_fastpost_streams {
                // forget the least recently used stream that has no live writer
                let live = lock(&self.streams);
                let victim = marks
                    .iter()
                    .filter(|(k, _)| !live.contains_key(&k.1))
                    .min_by_key(|(_, m)| m.used)
                    .map(|(k, m)| (k.clone(), m.rec));
                drop(live);
                match victim {
                    Some((k, rec)) => {
                        marks.remove(&k);
                        if let Some(md) = lock(&self.marks_db).as_ref() {
                            let _ = md.delete(rec);
                        }
                    }
                    None => return Err(herr(errcode::LIMIT, "too many FastPost streams")),
                }
            }
            let m = marks.entry(key.clone()).or_default();
            m.used = tick;
            m.durable
        };
        let mut streams = lock(&self.streams);
        match streams.get(&stream) {
            Some(s) if s.db != db => {
                return Err(herr(
                    errcode::EXISTS,
                    "stream id in use for another database",
                ));
            }
            Some(s) => {
                // the client came back on a new connection: the writer carries on
                *lock(&s.peer) = peer.clone();
            }
            None => {
                let mine = streams
                    .values()
                    .filter(|s| lock(&s.peer).id() == peer.id())
                    .count();
                if mine >= self.cfg.max_fastpost_active_per_conn
                    || streams.len() >= self.cfg.max_fastpost_active
                {
                    return Err(herr(errcode::LIMIT, "too many active FastPost streams"));
                }
                let s = Arc::new(Stream {
                    db: db.to_string(),
                    peer: Mutex::new(peer.clone()),
                    queue: Mutex::new(StreamQueue::default()),
                    cv: Condvar::new(),
                    groups: Mutex::new(WriterGroups::default()),
                });
                let weak = self.self_weak();
                let s2 = s.clone();
                std::thread::Builder::new()
                    .name("zs-dbsvc-fastpost".into())
                    .spawn({
                        let idle = self.cfg.fastpost_idle;
                        move || fastpost_writer(weak, stream, s2, idle)
                    })
                    .map_err(|e| herr(errcode::STORE, format!("cannot start writer: {e}")))?;
                streams.insert(stream, s);
            }
        }
        Ok(Answer::Id(durable))
    }

    fn fastpost_data(&self, peer: &Peer, stream: u64, first_seq: u64, records: Vec<(Kind, Bytes)>) {
        // pushed under the stream map's lock: a writer ending for idleness checks
        // its queue under the same lock, so nothing lands in a queue no one drains
        let streams = lock(&self.streams);
        let Some(s) = streams
            .get(&stream)
            .filter(|s| lock(&s.peer).id() == peer.id())
        else {
            drop(streams);
            tracing::warn!(
                peer = peer.id(),
                stream,
                "db service: FastPost to a stream not open on this connection; disconnecting"
            );
            peer.close("db service: FastPost stream not open");
            return;
        };
        let n: usize = records.iter().map(|(_, d)| d.len() + 16).sum();
        let mut q = lock(&s.queue);
        if q.bytes + n > self.cfg.max_fastpost_queue {
            drop(q);
            drop(streams);
            tracing::warn!(
                peer = peer.id(),
                stream,
                "db service: FastPost queue over its limit; disconnecting"
            );
            peer.close("db service: FastPost queue over its limit");
            return;
        }
        q.bytes += n;
        q.items.push((first_seq, records));
        drop(q);
        s.cv.notify_all();
    }
}

/// A stream's writer: waits for records, then applies a round (see
/// [`Svc::apply_round`]); it ends after `idle` without records or once its
/// connection is gone and its queue empty.
fn fastpost_writer(weak: Weak<Svc>, stream: u64, s: Arc<Stream>, idle: Duration) {
    let mut last = Instant::now();
    loop {
        {
            let mut q = lock(&s.queue);
            while q.items.is_empty() && !q.closed {
                if last.elapsed() >= idle {
                    q.closed = true;
                    break;
                }
                let (g, t) =
                    s.cv.wait_timeout(q, Duration::from_millis(500))
                        .unwrap_or_else(|p| p.into_inner());
                q = g;
                if t.timed_out() && q.items.is_empty() && !lock(&s.peer).is_open() {
                    q.closed = true;
                }
            }
            if q.closed && q.items.is_empty() {
                drop(q);
                if let Some(svc) = weak.upgrade() {
                    let mut streams = lock(&svc.streams);
                    // a new connection may have taken the stream over meanwhile
                    let idle = lock(&s.queue).items.is_empty();
                    if idle && streams.get(&stream).is_some_and(|x| Arc::ptr_eq(x, &s)) {
                        streams.remove(&stream);
                    }
                }
                return;
            }
            last = Instant::now();
        }
        let Some(svc) = weak.upgrade() else { return };
        svc.apply_round(stream, &s);
    }
}

/// One stream's share of a FastPost round.
struct Part {
    stream: u64,
    s: Arc<Stream>,
    key: (String, u64),
    /// Last sequence number applied before the round.
    applied: u64,
    /// Last sequence number this round applies.
    last: u64,
    kept: Vec<(Kind, Bytes)>,
    /// The writer's mark groups start over (after a sync of the database).
    reset: bool,
    error: Option<(u64, String)>,
}

impl Svc {
    fn self_weak(&self) -> Weak<Svc> {
        lock(&self.me).clone()
    }

    /// Applies, exactly once and in order, the queued records of every FastPost
    /// stream of `own`'s database in one round: under the database's write lock
    /// (so every queue is drained only here and first ids are exact) the round
    /// writes the marks of all its streams in one commit of [`MARKS_DB`] (one
    /// fsync for the round, whatever the number of streams), then their records
    /// in one commit of the database (synced by the syncer, which acknowledges).
    /// A writer that finds its queue drained by another's round has nothing to do.
    fn apply_round(&self, stream: u64, own: &Arc<Stream>) {
        let e = match self.entry(&own.db, false) {
            Ok(e) => e,
            Err(h) => {
                let items = {
                    let mut q = lock(&own.queue);
                    q.bytes = 0;
                    std::mem::take(&mut q.items)
                };
                if let Some((first, _)) = items.first() {
                    self.refuse(stream, own, *first, h.message);
                }
                return;
            }
        };
        let _w = lock(&e.write);
        let mut streams: Vec<(u64, Arc<Stream>)> = vec![(stream, own.clone())];
        streams.extend(
            lock(&self.streams)
                .iter()
                .filter(|(id, x)| x.db == own.db && **id != stream)
                .map(|(id, x)| (*id, x.clone())),
        );
        let mut parts: Vec<Part> = Vec::new();
        for (id, s) in streams {
            let items = {
                let mut q = lock(&s.queue);
                q.bytes = 0;
                std::mem::take(&mut q.items)
            };
            if items.is_empty() {
                continue;
            }
            let key = (s.db.clone(), id);
            let applied = lock(&self.marks).get(&key).map_or(0, |m| m.applied);
            let mut part = Part {
                stream: id,
                s: s.clone(),
                key,
                applied,
                last: applied,
                kept: Vec::new(),
                reset: false,
                error: None,
            };
            let peer = lock(&s.peer).clone();
            if let Err((c, m)) = self.rules.check(&peer, &s.db, Access::Write) {
                part.error = Some((applied + 1, format!("{c}: {m}")));
                parts.push(part);
                continue;
            }
            let mut expected = applied + 1;
            'outer: for (first, recs) in items {
                for (i, rec) in recs.into_iter().enumerate() {
                    let seq = first.saturating_add(i as u64);
                    if seq < expected {
                        continue; // already applied: a resend
                    }
                    if seq > expected {
                        part.error =
                            Some((expected, format!("gap: got {seq}, expected {expected}")));
                        break 'outer;
                    }
                    part.kept.push(rec);
                    expected += 1;
                }
            }
            part.last = expected - 1;
            parts.push(part);
        }
        if let Err(m) = self.commit_round(&e, &mut parts) {
            for p in parts.iter_mut().filter(|p| !p.kept.is_empty()) {
                p.error.get_or_insert((p.applied + 1, m.clone()));
            }
        }
        for p in parts {
            if let Some((seq, message)) = p.error {
                self.refuse(p.stream, &p.s, seq, message);
            }
        }
    }

    /// Marks, then records, of one round (`e.write` held). The mark of each
    /// stream lists the groups committed since a durable base, this one last;
    /// after a crash a listed group counts as committed iff the database
    /// allocated its first id. A base must be durable: the syncer's last sync
    /// covers `durable`; a writer that does not know its groups (new), or lists
    /// too many, has the database synced first (once for the round).
    fn commit_round(&self, e: &DbEntry, parts: &mut [Part]) -> Result<(), String> {
        let live: Vec<usize> = (0..parts.len())
            .filter(|&i| !parts[i].kept.is_empty())
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let md = lock(&self.marks_db)
            .clone()
            .ok_or_else(|| format!("no database {MARKS_DB}"))?;
        let mut sync = false;
        for &i in &live {
            let p = &mut parts[i];
            let durable = lock(&self.marks).get(&p.key).map_or(0, |m| m.durable);
            let mut g = lock(&p.s.groups);
            if durable > g.base {
                g.base = durable;
            }
            let base = g.base;
            g.list.retain(|x| x.1 > base);
            if !g.known || g.list.len() + 1 > MAX_MARK_GROUPS {
                p.reset = true;
                sync |= p.applied > durable;
            }
        }
        if sync {
            e.db.sync().map_err(|err| err.to_string())?;
        }
        let mut next_id = e.db.stats().next_id;
        let mut marks_batch = Batch::new();
        let mut inserted: Vec<usize> = Vec::new();
        for &i in &live {
            let p = &parts[i];
            let mut g = lock(&p.s.groups);
            if p.reset {
                g.known = true;
                g.base = p.applied;
                g.list.clear();
            }
            g.list.push((p.applied + 1, p.last, next_id));
            next_id += p.kept.len() as u64;
            let rec = lock(&self.marks).get(&p.key).map_or(0, |m| m.rec);
            let base = g.list[0].0.saturating_sub(1);
            let data = encode_mark(&p.key.0, p.key.1, base, &g.list);
            if rec == 0 {
                marks_batch.insert(Kind::Raw, data);
                inserted.push(i);
            } else {
                marks_batch.update(rec, Kind::Raw, data);
            }
        }
        // not committed: the next marks must not list these groups (the next
        // round may get the same first ids)
        let undo = |parts: &[Part]| {
            for &i in &live {
                lock(&parts[i].s.groups).list.pop();
            }
        };
        let ids = match md.commit(&marks_batch) {
            Ok(ids) => ids,
            Err(err) => {
                undo(parts);
                return Err(err.to_string());
            }
        };
        self.fp_rounds.fetch_add(1, Ordering::Relaxed);
        self.fp_most_streams
            .fetch_max(live.len() as u64, Ordering::Relaxed);
        {
            let mut marks = lock(&self.marks);
            for (&i, id) in inserted.iter().zip(ids) {
                if let Some(m) = marks.get_mut(&parts[i].key) {
                    m.rec = id;
                }
            }
        }
        let mut batch = Batch::new();
        for &i in &live {
            for (kind, data) in &parts[i].kept {
                batch.insert(*kind, data.to_vec());
            }
        }
        let ids = match e.db.commit_with(
            &batch,
            Some(zs_db::Durability::Periodic(self.cfg.group_commit)),
        ) {
            Ok(ids) => ids,
            Err(err) => {
                undo(parts);
                return Err(err.to_string());
            }
        };
        self.notify(e, &|| {
            let recs = live.iter().flat_map(|&i| parts[i].kept.iter());
            ids.iter()
                .zip(recs)
                .map(|(id, (kind, data))| {
                    Change::Put(Record {
                        id: *id,
                        kind: *kind,
                        data: data.to_vec(),
                    })
                })
                .collect()
        });
        {
            let mut marks = lock(&self.marks);
            for &i in &live {
                if let Some(m) = marks.get_mut(&parts[i].key) {
                    m.applied = parts[i].last;
                }
            }
        }
        e.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Tells the client of `stream` that its records from `seq` were refused.
    fn refuse(&self, stream: u64, s: &Stream, seq: u64, message: String) {
        tracing::warn!(stream, seq, %message, "db service: FastPost refused");
        let _ = lock(&s.peer).send_complete_buffer(
            cmd::PUSH,
            Push::FastPostError {
                stream,
                seq,
                message,
            }
            .encode(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_service(loop_cache_bytes: usize) -> DbService {
        let env = Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
        let cfg = ServiceConfig {
            loop_cache_bytes,
            ..ServiceConfig::default()
        };
        DbService::with_env(env, cfg).unwrap()
    }

    fn loop_hits() -> u64 {
        LOOP_CACHE.with(|c| c.borrow().hits)
    }

    fn value_of(answer: &Bytes) -> Option<Vec<u8>> {
        match Answer::decode(answer, &Limits::default()).unwrap() {
            Answer::Record(r) => r.map(|r| r.data),
            a => panic!("not a record: {a:?}"),
        }
    }

    #[test]
    fn a_loop_cache_hit_answers_like_the_engine_and_a_commit_outdates_it() {
        let svc = mem_service(1 << 20).svc;
        let e = svc.entry("kv", true).unwrap();
        let id = e.db.insert(Kind::Raw, b"one").unwrap();
        let first = svc.get_on_loop(&e, id).unwrap().unwrap();
        assert_eq!(first, encode_record_answer(id, Kind::Raw, b"one"));
        let hits = loop_hits();
        let second = svc.get_on_loop(&e, id).unwrap().unwrap();
        assert_eq!(
            loop_hits(),
            hits + 1,
            "the second GET comes from the loop cache"
        );
        assert_eq!(second, first);
        // written straight into the engine (as zs-tx procedures and embedded
        // users do), not through the service: the loop cache must see it
        e.db.update(id, Kind::Json, b"{\"n\":2}").unwrap();
        let third = svc.get_on_loop(&e, id).unwrap().unwrap();
        assert_eq!(third, encode_record_answer(id, Kind::Json, b"{\"n\":2}"));
        assert_eq!(svc.get_on_loop(&e, id).unwrap().unwrap(), third);
        e.db.delete(id).unwrap();
        assert_eq!(svc.get_on_loop(&e, id), Some(None));
        // a value too large for a slot is answered, just not kept
        let big = vec![7u8; LOOP_CACHE_INLINE];
        let bid = e.db.insert(Kind::Raw, &big).unwrap();
        let hits = loop_hits();
        for _ in 0..3 {
            let a = svc.get_on_loop(&e, bid).unwrap().unwrap();
            assert_eq!(value_of(&a).unwrap(), big);
        }
        assert_eq!(loop_hits(), hits);
        // a closed database is not answered from the loop
        let cid = e.db.insert(Kind::Raw, b"c").unwrap();
        let _ = svc.get_on_loop(&e, cid);
        e.db.close().unwrap();
        assert_eq!(svc.get_on_loop(&e, cid), None);
    }

    #[test]
    fn a_loop_cache_of_zero_bytes_keeps_nothing() {
        let svc = mem_service(0).svc;
        let e = svc.entry("kv", true).unwrap();
        let id = e.db.insert(Kind::Raw, b"one").unwrap();
        let hits = loop_hits();
        for _ in 0..3 {
            let a = svc.get_on_loop(&e, id).unwrap().unwrap();
            assert_eq!(value_of(&a).unwrap(), b"one");
        }
        assert_eq!(loop_hits(), hits);
    }

    /// A GET that starts after an update returned never sees an older value,
    /// while another thread commits updates as fast as it can.
    #[test]
    fn loop_cache_reads_never_go_back_behind_a_returned_commit() {
        let svc = mem_service(1 << 20).svc;
        let e = svc.entry("kv", true).unwrap();
        let ids: Vec<u64> = (0..4)
            .map(|_| e.db.insert(Kind::Raw, &0u64.to_le_bytes()).unwrap())
            .collect();
        let committed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (e, ids, committed, stop) =
                (e.clone(), ids.clone(), committed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) && n < 20_000 {
                    n += 1;
                    for &id in &ids {
                        e.db.update(id, Kind::Raw, &n.to_le_bytes()).unwrap();
                    }
                    committed.store(n, Ordering::Release);
                }
            })
        };
        let (mut reads, mut hits0) = (0u64, loop_hits());
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(400) {
            let floor = committed.load(Ordering::Acquire);
            for &id in &ids {
                let a = svc.get_on_loop(&e, id).unwrap().unwrap();
                let v = u64::from_le_bytes(value_of(&a).unwrap().try_into().unwrap());
                assert!(v >= floor, "read {v} after {floor} was committed");
                reads += 1;
            }
        }
        stop.store(true, Ordering::Release);
        writer.join().unwrap();
        assert!(reads > 0);
        // once the writer stopped, reads come from the loop again
        let _ = svc.get_on_loop(&e, ids[0]);
        hits0 = hits0.max(loop_hits());
        let _ = svc.get_on_loop(&e, ids[0]);
        assert_eq!(loop_hits(), hits0 + 1);
    }

    #[test]
    fn marks_round_trip_with_any_number_of_groups() {
        for groups in [
            vec![],
            vec![(11, 20, 101)],
            vec![(11, 20, 101), (21, 21, 111), (22, 40, 112)],
        ] {
            let b = encode_mark("kv", 7, 10, &groups);
            assert_eq!(b.len(), 2 + 2 + 16 + 24 * groups.len().max(1));
            assert_eq!(decode_mark(&b), Some(("kv".to_string(), 7, 10, groups)));
        }
        // the 40-byte shape of earlier versions (one pending group or none)
        let mut old = vec![2, 0, b'k', b'v'];
        for v in [7u64, 10, 11, 20, 101] {
            old.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            decode_mark(&old),
            Some(("kv".to_string(), 7, 10, vec![(11, 20, 101)]))
        );
        // garbage is refused: short, ragged, too many groups
        assert_eq!(decode_mark(&old[..old.len() - 1]), None);
        assert_eq!(decode_mark(&old[..30]), None);
        let many = vec![(1, 1, 1); MAX_MARK_GROUPS + 1];
        assert_eq!(decode_mark(&encode_mark("kv", 1, 0, &many)), None);
    }

    #[test]
    fn a_group_counts_as_applied_iff_its_first_id_was_allocated() {
        let groups = [(11, 20, 101), (21, 25, 111), (26, 30, 116)];
        assert_eq!(resolve_applied(10, &groups, 101), 10); // none committed
        assert_eq!(resolve_applied(10, &groups, 102), 20);
        assert_eq!(resolve_applied(10, &groups, 111), 20);
        assert_eq!(resolve_applied(10, &groups, 112), 25);
        assert_eq!(resolve_applied(10, &groups, 500), 30);
        assert_eq!(resolve_applied(10, &[], 500), 10);
    }
}
