//! Offline messages and push: user-to-user messages queued durably (the
//! commit is fsynced before the sender's acknowledgement), delivered at once
//! to a recipient that subscribed (`msg.subscribe`), in order per
//! sender-recipient pair, each until the recipient acknowledges it by id
//! (`msg.ack`); per-user queue caps and expiry; broadcast to every online
//! user and to named groups (those two are live only: nobody offline gets them).
//!
//! Storage: the zs-db database `messages`, two record shapes (docs/PROTOCOL.md Part 6,
//! §6.5): a message (`M`) and the last sender nonce of a
//! sender-recipient pair (`P`), written in one atomic commit, so a sender
//! that resends after a lost acknowledgement (same nonce) is told
//! "duplicate" instead of queueing the message twice.
//!
//! Sends and acknowledgements go through one committer thread (group
//! commit): it takes every job queued meanwhile, checks each in order against
//! the queues (and the jobs before it), writes them in one atomic commit (one
//! fsync), then updates the queues, pushes and answers in that order. So the
//! message ids (record ids) of one recipient grow in acceptance order, the
//! pushes leave in that order, and nothing is answered before it is on disk;
//! a thousand senders cost one fsync per batch rather than one each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use zs_core::{Peer, Registry};
use zs_db::{Batch, Database, Kind};
use zs_wire::{DataFrame, Frame, Text};

use crate::accounts::{check_name, lock, now_ms, Accounts};
use crate::error::{code, Result, ServiceError};
use crate::RegistryExt;

/// Push kinds (first value of a `msg.push` frame).
pub mod push_kind {
    /// A queued user-to-user message: acknowledge it with `msg.ack`.
    pub const DIRECT: u8 = 0;
    /// A broadcast to every online user (not queued, no acknowledgement).
    pub const BROADCAST: u8 = 1;
    /// A message to a named group (not queued, no acknowledgement).
    pub const GROUP: u8 = 2;
}

/// Settings of the message service.
#[derive(Debug, Clone)]
pub struct MessagesConfig {
    /// Largest message body (bytes).
    pub max_body: usize,
    /// Most messages queued for one recipient.
    pub max_queue_len: usize,
    /// Most body bytes queued for one recipient.
    pub max_queue_bytes: u64,
    /// Most messages queued on the server.
    pub max_total_len: usize,
    /// Most body bytes queued on the server.
    pub max_total_bytes: u64,
    /// A queued message is dropped this long after it was sent.
    pub ttl: Duration,
    /// Most pushed messages awaiting acknowledgement per subscribed connection
    /// (the rest follow as acknowledgements come in).
    pub push_window: usize,
    /// Most messages answered by one `msg.fetch`.
    pub max_fetch: usize,
    /// Most groups one connection has joined.
    pub max_groups_per_peer: usize,
    /// Most groups on the server.
    pub max_groups: usize,
    /// Only admins may broadcast to every online user.
    pub broadcast_admin_only: bool,
    /// Most sends and acknowledgements waiting for the committer (past it
    /// they are answered `503` at once).
    pub max_pending: usize,
    /// When a send or an acknowledgement is answered: `Immediate` (the
    /// default) after its commit is fsynced, so a crash loses nothing
    /// answered; `Periodic(d)` once buffered, written and fsynced within `d`
    /// (a crash of the process or the machine loses the last `d` of sends
    /// and acknowledgements: mosquitto's `autosave_interval` promise, with
    /// `d` instead of its 1,800 s default).
    pub durability: zs_db::Durability,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            max_body: 64 << 10,
            max_queue_len: 10_000,
            max_queue_bytes: 16 << 20,
            max_total_len: 1_000_000,
            max_total_bytes: 1 << 30,
            ttl: Duration::from_secs(7 * 24 * 3600),
            push_window: 256,
            max_fetch: 256,
            max_groups_per_peer: 32,
            max_groups: 10_000,
            broadcast_admin_only: true,
            max_pending: 8192,
            durability: zs_db::Durability::Immediate,
        }
    }
}

/// A message as the recipient sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// [`push_kind`] of the message.
    pub kind: u8,
    /// Message id (acknowledge DIRECT messages with it); 0 for live kinds.
    pub id: u64,
    /// Sender's user id.
    pub from: u64,
    /// Sender's name.
    pub from_name: String,
    /// Sent at (Unix milliseconds, the server's clock).
    pub sent_ms: u64,
    /// The group name (GROUP), else empty.
    pub group: String,
    /// The body.
    pub body: Bytes,
}

impl Message {
    /// The `msg.push` frame (and one entry of a `msg.fetch` answer).
    pub fn to_frame(&self) -> DataFrame {
        DataFrame::new()
            .with(self.kind)
            .with(self.id)
            .with(self.from)
            .with(self.from_name.as_str())
            .with(self.sent_ms)
            .with(self.group.as_str())
            .with(self.body.clone())
    }

    /// Reads the 7 values of one message from `rd`.
    pub fn read(rd: &mut zs_wire::Reader<'_>) -> Result<Message> {
        Ok(Message {
            kind: rd.read_u8()?,
            id: rd.read_u64()?,
            from: rd.read_u64()?,
            from_name: rd.read_str()?.to_owned(),
            sent_ms: rd.read_u64()?,
            group: rd.read_str()?.to_owned(),
            body: rd.read_bytes()?,
        })
    }
}

/// Stored message record, tag `M`: `to | from | nonce | sent_ms | expires_ms`
/// (u64 little endian each), then the body.
pub(crate) const MSG_TAG: u8 = b'M';
/// Stored pair record, tag `P`: `from | to | last_nonce` (u64 LE each).
pub(crate) const PAIR_TAG: u8 = b'P';
const MSG_HEADER: usize = 1 + 5 * 8;

/// Encodes a stored message record (docs/PROTOCOL.md §6.5).
pub fn encode_message_record(
    to: u64,
    from: u64,
    nonce: u64,
    sent_ms: u64,
    expires_ms: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(MSG_HEADER + body.len());
    v.push(MSG_TAG);
    for x in [to, from, nonce, sent_ms, expires_ms] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// Encodes a stored pair record (docs/PROTOCOL.md §6.5).
pub fn encode_pair_record(from: u64, to: u64, last_nonce: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(25);
    v.push(PAIR_TAG);
    for x in [from, to, last_nonce] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[1 + 8 * i..9 + 8 * i]);
    u64::from_le_bytes(a)
}

/// A stored record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredRecord {
    /// A queued message.
    Message {
        /// Recipient.
        to: u64,
        /// Sender.
        from: u64,
        /// Sender's nonce (0: none).
        nonce: u64,
        /// Sent at (Unix ms).
        sent_ms: u64,
        /// Dropped at (Unix ms).
        expires_ms: u64,
        /// Body length.
        body_len: usize,
    },
    /// The last nonce accepted from `from` to `to`.
    Pair {
        /// Sender.
        from: u64,
        /// Recipient.
        to: u64,
        /// Last nonce.
        last_nonce: u64,
    },
}

/// Decodes a stored record (`None`: not one of ours, or truncated).
pub fn decode_record(b: &[u8]) -> Option<StoredRecord> {
    match *b.first()? {
        MSG_TAG if b.len() >= MSG_HEADER => Some(StoredRecord::Message {
            to: u64_at(b, 0),
            from: u64_at(b, 1),
            nonce: u64_at(b, 2),
            sent_ms: u64_at(b, 3),
            expires_ms: u64_at(b, 4),
            body_len: b.len() - MSG_HEADER,
        }),
        PAIR_TAG if b.len() == 25 => Some(StoredRecord::Pair {
            from: u64_at(b, 0),
            to: u64_at(b, 1),
            last_nonce: u64_at(b, 2),
        }),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    from: u64,
    sent_ms: u64,
    expires_ms: u64,
    len: u64,
}

#[derive(Default)]
struct Queue {
    msgs: BTreeMap<u64, Meta>,
    bytes: u64,
    /// No message expires before this (a lower bound: 0 = look).
    min_expires: u64,
}

struct Sub {
    peer: Peer,
    user: u64,
    /// Highest id pushed on this connection.
    sent_upto: u64,
    /// Pushed ids not acknowledged yet.
    inflight: HashSet<u64>,
}

#[derive(Default)]
struct State {
    queues: HashMap<u64, Queue>,
    total_len: usize,
    total_bytes: u64,
    /// (from, to) -> (record id, last nonce).
    pairs: HashMap<(u64, u64), (u64, u64)>,
    /// Subscribed connections by connection id.
    subs: HashMap<u64, Sub>,
    /// User id -> its subscribed connection ids (an index of `subs`).
    subs_of: HashMap<u64, HashSet<u64>>,
    /// `subs` size at which `subscribe` drops every stale entry (amortized).
    subs_sweep_at: usize,
    /// Group name -> member connection ids.
    groups: HashMap<String, HashSet<u64>>,
    /// Connection id -> groups joined.
    joined: HashMap<u64, HashSet<String>>,
    expired: u64,
    /// Messages with ids up to this are on disk (fsynced, or buffered under
    /// `Periodic` durability): only those are pushed or fetched. A batch's
    /// messages enter the queues when it is written to the store's buffer
    /// (so the next batch is checked against them) and become visible when
    /// its fsync returns.
    durable: u64,
    /// Set when an fsync failed: the store is poisoned, every later send and
    /// acknowledgement is refused with this error.
    broken: Option<ServiceError>,
}

struct Inner {
    db: Database,
    cfg: MessagesConfig,
    accounts: Accounts,
    state: Mutex<State>,
    /// The committer's queue (see [`Messages::run_batch`]).
    jobs: std::sync::mpsc::SyncSender<Job>,
}

/// How a job's outcome is told: a responder, or a channel of the
/// synchronous API.
type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

/// A send or an acknowledgement waiting for the committer.
enum Job {
    Send {
        from: u64,
        to: u64,
        nonce: u64,
        body: Bytes,
        reply: Reply<Sent>,
    },
    Ack {
        uid: u64,
        ids: Vec<u64>,
        reply: Reply<usize>,
    },
}

/// Work a pipeline thread takes in batches: answered with an error when the
/// service is gone.
trait Fail {
    fn fail(self, e: ServiceError);
}

/// Starts thread `name`: it takes whatever `rx` holds when an item arrives
/// (at most `max`) as one batch and runs `step` on it with the service,
/// which it holds weakly: once the service is dropped, the batch is failed
/// and the thread ends (so does it when `rx`'s senders are gone).
fn spawn_batches<T: Fail + Send + 'static>(
    name: &str,
    inner: &Arc<Inner>,
    rx: std::sync::mpsc::Receiver<T>,
    max: usize,
    step: impl Fn(Messages, Vec<T>) + Send + 'static,
) -> Result<()> {
    let weak = Arc::downgrade(inner);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                let Some(inner) = weak.upgrade() else {
                    for x in batch {
                        x.fail(ServiceError::new(
                            code::STORAGE,
                            "the message service stopped",
                        ));
                    }
                    return;
                };
                step(Messages { inner }, batch);
            }
        })
        .map(drop)
        .map_err(|e| ServiceError::new(code::STORAGE, format!("cannot start {name}: {e}")))
}

impl Fail for Job {
    fn fail(self, e: ServiceError) {
        match self {
            Job::Send { reply, .. } => reply(Err(e)),
            Job::Ack { reply, .. } => reply(Err(e)),
        }
    }
}

impl Planned {
    fn fail(self, e: ServiceError) {
        match self {
            Planned::Send { reply, .. } | Planned::Dup(reply) => reply(Err(e)),
            Planned::SendErr(e0, reply) => reply(Err(e0)),
            Planned::Ack { reply, .. } => reply(Err(e)),
        }
    }
}

/// What one job of a batch becomes once the batch is committed.
enum Planned {
    Send {
        from: u64,
        to: u64,
        body: Bytes,
        sent_ms: u64,
        expires_ms: u64,
        insert: usize,
        reply: Reply<Sent>,
    },
    Dup(Reply<Sent>),
    SendErr(ServiceError, Reply<Sent>),
    Ack {
        uid: u64,
        ids: Vec<u64>,
        mine: Vec<(u64, u64)>,
        reply: Reply<usize>,
    },
}

/// What one job of a batch came to, answered once the batch is durable.
enum Outcome {
    Sent {
        to: u64,
        id: u64,
        body: Bytes,
        reply: Reply<Sent>,
    },
    Dup(Reply<Sent>),
    Err(ServiceError, Reply<Sent>),
    Acked {
        uid: u64,
        n: usize,
        reply: Reply<usize>,
    },
}

impl Outcome {
    fn fail(self, e: ServiceError) {
        answer_all(vec![self.failed(e)]);
    }

    /// Its answer when its batch could not be made durable (`e`).
    fn failed(self, e: ServiceError) -> Answer {
        match self {
            Outcome::Sent { reply, .. } | Outcome::Dup(reply) => Answer::Sent(reply, Err(e)),
            Outcome::Err(e0, reply) => Answer::Sent(reply, Err(e0)),
            Outcome::Acked { reply, .. } => Answer::Acked(reply, Err(e)),
        }
    }
}

/// An answer of a durable batch, given once the state lock is released.
enum Answer {
    Sent(Reply<Sent>, Result<Sent>),
    Acked(Reply<usize>, Result<usize>),
}

/// Gives the answers collected by [`Messages::deliver`], in order.
fn answer_all(answers: Vec<Answer>) {
    for a in answers {
        match a {
            Answer::Sent(reply, r) => reply(r),
            Answer::Acked(reply, r) => reply(r),
        }
    }
}

/// Where the syncer hands the answers of each durable batch.
type AnswerQueue = std::sync::mpsc::SyncSender<Vec<Answer>>;

/// Starts the answerer (`zs-msg-answer`): it gives the answers of each
/// durable batch in the order the syncer hands them over, and ends when the
/// syncer (the queue's only sender) is gone, after what was queued.
fn spawn_answerer() -> Result<AnswerQueue> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Answer>>(PIPELINE_DEPTH);
    std::thread::Builder::new()
        .name("zs-msg-answer".into())
        .spawn(move || {
            while let Ok(answers) = rx.recv() {
                answer_all(answers);
            }
        })
        .map_err(|e| {
            ServiceError::new(code::STORAGE, format!("cannot start zs-msg-answer: {e}"))
        })?;
    Ok(tx)
}

/// A batch buffered in the store, waiting for the syncer's fsync.
struct Done {
    out: Vec<Outcome>,
    /// The highest id it inserted (0: none).
    upto: u64,
    /// It wrote something (an fsync is due).
    wrote: bool,
}

impl Fail for Done {
    fn fail(self, e: ServiceError) {
        for o in self.out {
            o.fail(e.clone());
        }
    }
}

/// Most jobs the planner takes into one batch.
const MAX_BATCH: usize = 4096;
/// Batches buffered ahead of the syncer (the planner waits past that).
const PIPELINE_DEPTH: usize = 64;
/// The durability a batch is buffered with under `Immediate`: the syncer
/// fsyncs it long before (this only bounds a syncer that stalled).
const BUFFERED_FOR: Duration = Duration::from_secs(1);

/// What a send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The message id (0 for a duplicate).
    pub id: u64,
    /// The nonce was already accepted: the message is queued (or was
    /// delivered) once, from the earlier send.
    pub duplicate: bool,
}

/// The message service (cheap to clone).
#[derive(Clone)]
pub struct Messages {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.inner.state);
        write!(f, "Messages({} queued)", s.total_len)
    }
}

impl Messages {
    /// Opens the service on `db` (a `messages` database): loads every queued
    /// message's metadata (bodies stay on disk) and drops expired ones.
    pub fn open(db: Database, accounts: Accounts, cfg: MessagesConfig) -> Result<Messages> {
        let mut st = State::default();
        let now = now_ms();
        let mut dead = Batch::new();
        for r in db.cursor(0, false) {
            let r = r.map_err(ServiceError::storage)?;
            match decode_record(&r.data) {
                Some(StoredRecord::Message {
                    to,
                    from,
                    sent_ms,
                    expires_ms,
                    body_len,
                    ..
                }) => {
                    if expires_ms <= now {
                        dead.delete(r.id);
                        st.expired += 1;
                        continue;
                    }
                    let q = st.queues.entry(to).or_default();
                    q.msgs.insert(
                        r.id,
                        Meta {
                            from,
                            sent_ms,
                            expires_ms,
                            len: body_len as u64,
                        },
                    );
                    q.bytes += body_len as u64;
                    st.total_len += 1;
                    st.total_bytes += body_len as u64;
                }
                Some(StoredRecord::Pair {
                    from,
                    to,
                    last_nonce,
                }) => {
                    st.pairs.insert((from, to), (r.id, last_nonce));
                }
                None => tracing::error!(id = r.id, "messages: unreadable record skipped"),
            }
        }
        if !dead.is_empty() {
            db.commit(&dead).map_err(ServiceError::storage)?;
        }
        st.durable = db.stats().next_id.saturating_sub(1);
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(cfg.max_pending.max(1));
        let immediate = cfg.durability == zs_db::Durability::Immediate;
        let inner = Arc::new(Inner {
            db,
            cfg,
            accounts,
            state: Mutex::new(st),
            jobs,
        });
        // Two threads, a pipeline: the planner takes every job queued
        // meanwhile, checks it and writes the batch into the store's buffer;
        // the syncer fsyncs whatever batches are buffered (one fsync for all
        // of them), then pushes and answers them in order. So batch n+1 is
        // planned and buffered while batch n is fsynced, and nothing is
        // answered before its own fsync. Both hold the service weakly and
        // stop when it is dropped (their queues' senders go with it).
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Done>(PIPELINE_DEPTH);
        if immediate {
            // A third stage gives the answers of a durable batch (a sealed
            // record and a send each), so the syncer starts the next fsync
            // at once instead of after the last answer of this one.
            let answers = spawn_answerer()?;
            spawn_batches(
                "zs-msg-sync",
                &inner,
                done_rx,
                usize::MAX,
                move |m, dones| m.sync_and_deliver(dones, &answers),
            )?;
        }
        spawn_batches("zs-msg-commit", &inner, rx, MAX_BATCH, move |m, batch| {
            if let Some(done) = m.run_batch(batch) {
                if let Err(std::sync::mpsc::SendError(d)) = done_tx.send(done) {
                    d.fail(ServiceError::new(code::STORAGE, "the syncer stopped"));
                }
            }
        })?;
        Ok(Messages { inner })
    }

    /// Closes the `messages` database (see [`crate::Services::close`]).
    pub fn close(&self) -> Result<()> {
        self.inner.db.close().map_err(ServiceError::storage)
    }

    /// The configuration.
    pub fn config(&self) -> &MessagesConfig {
        &self.inner.cfg
    }

    /// Messages queued for `uid`.
    pub fn queued(&self, uid: u64) -> usize {
        lock(&self.inner.state)
            .queues
            .get(&uid)
            .map_or(0, |q| q.msgs.len())
    }

    /// Messages queued on the server, and their body bytes.
    pub fn totals(&self) -> (usize, u64) {
        let s = lock(&self.inner.state);
        (s.total_len, s.total_bytes)
    }

    /// Messages dropped by expiry since the service opened.
    pub fn expired(&self) -> u64 {
        lock(&self.inner.state).expired
    }

    /// Drops the expired messages of `uid` (memory and store).
    fn sweep(&self, st: &mut State, uid: u64) -> Result<()> {
        let now = now_ms();
        let Some(q) = st.queues.get_mut(&uid) else {
            return Ok(());
        };
        if q.min_expires > now {
            return Ok(());
        }
        let dead: Vec<(u64, u64)> = q
            .msgs
            .iter()
            .filter(|(_, m)| m.expires_ms <= now)
            .map(|(id, m)| (*id, m.len))
            .collect();
        q.min_expires = q
            .msgs
            .values()
            .map(|m| m.expires_ms)
            .filter(|e| *e > now)
            .min()
            .unwrap_or(u64::MAX);
        if dead.is_empty() {
            return Ok(());
        }
        let mut b = Batch::new();
        for (id, _) in &dead {
            b.delete(*id);
        }
        self.inner.db.commit(&b).map_err(ServiceError::storage)?;
        for (id, len) in dead {
            q.msgs.remove(&id);
            q.bytes -= len;
            st.total_len -= 1;
            st.total_bytes -= len;
            st.expired += 1;
        }
        Ok(())
    }

    /// Queues `body` from `from` to `to` (fsynced before this returns) and
    /// pushes it if the recipient subscribed. `nonce` > 0 must grow per
    /// sender-recipient pair: a nonce at or below the last accepted one is a
    /// duplicate (answered as such, queued nothing); 0 turns that check off.
    /// Concurrent sends and acknowledgements share one commit (group commit
    /// on the committer thread).
    pub fn send(&self, from: u64, to: u64, nonce: u64, body: &[u8]) -> Result<Sent> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit_send(
            from,
            to,
            nonce,
            Bytes::copy_from_slice(body),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .unwrap_or_else(|_| Err(ServiceError::new(code::STORAGE, "the committer stopped")))
    }

    /// Returns once every send and acknowledgement queued before this call
    /// has been committed and answered (the committer takes jobs in order).
    pub fn settle(&self) {
        let _ = self.ack(0, &[]);
    }

    /// Queues a send for the committer; `reply` gets its outcome after the
    /// commit (at once when the queue is full: `503`).
    pub fn submit_send(&self, from: u64, to: u64, nonce: u64, body: Bytes, reply: Reply<Sent>) {
        let cfg = &self.inner.cfg;
        if body.len() > cfg.max_body {
            return reply(Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                format!(
                    "a message body has at most {} bytes (got {})",
                    cfg.max_body,
                    body.len()
                ),
            )));
        }
        self.submit(Job::Send {
            from,
            to,
            nonce,
            body,
            reply,
        });
    }

    fn submit(&self, job: Job) {
        match self.inner.jobs.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(j)) => j.fail(ServiceError::new(
                zs_core::code::BUSY,
                "too many messages waiting to be stored: retry",
            )),
            Err(std::sync::mpsc::TrySendError::Disconnected(j)) => {
                j.fail(ServiceError::new(code::STORAGE, "the committer stopped"))
            }
        }
    }

    /// One batch: every job checked in order against the state (and the
    /// jobs before it), one atomic commit, then the state updated, pushes
    /// sent and answers given, in order.
    fn run_batch(&self, jobs: Vec<Job>) -> Option<Done> {
        let cfg = &self.inner.cfg;
        let mut st = lock(&self.inner.state);
        if let Some(e) = st.broken.clone() {
            drop(st);
            for j in jobs {
                j.fail(e.clone());
            }
            return None;
        }
        let mut b = Batch::new();
        let mut inserts = 0usize;
        let mut plan = Vec::with_capacity(jobs.len());
        // What the jobs before this one add: per recipient (messages,
        // bytes), in all, and the last nonce per pair.
        let mut q_add: HashMap<u64, (usize, u64)> = HashMap::new();
        let (mut len_add, mut bytes_add) = (0usize, 0u64);
        let mut nonces: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        let mut acked: HashSet<u64> = HashSet::new();
        for job in jobs {
            match job {
                Job::Send {
                    from,
                    to,
                    nonce,
                    body,
                    reply,
                } => {
                    let checked = (|| -> Result<bool> {
                        if self.inner.accounts.name_of(to).is_none() {
                            return Err(ServiceError::new(code::NO_SUCH_USER, "no such recipient"));
                        }
                        self.sweep(&mut st, to)?;
                        let last = nonces
                            .get(&(from, to))
                            .copied()
                            .or_else(|| st.pairs.get(&(from, to)).map(|p| p.1));
                        if nonce > 0 && last.is_some_and(|last| nonce <= last) {
                            return Ok(false);
                        }
                        let len = body.len() as u64;
                        let (ql, qb) = st
                            .queues
                            .get(&to)
                            .map_or((0, 0), |q| (q.msgs.len(), q.bytes));
                        let (al, ab) = q_add.get(&to).copied().unwrap_or_default();
                        let (qlen, qbytes) = (ql + al, qb + ab);
                        if qlen >= cfg.max_queue_len || qbytes + len > cfg.max_queue_bytes {
                            return Err(ServiceError::new(
                                code::QUEUE_FULL,
                                format!(
                                    "the recipient's queue is full ({qlen} messages, {qbytes} bytes; limits {} and {})",
                                    cfg.max_queue_len, cfg.max_queue_bytes
                                ),
                            ));
                        }
                        if st.total_len + len_add >= cfg.max_total_len
                            || st.total_bytes + bytes_add + len > cfg.max_total_bytes
                        {
                            return Err(ServiceError::new(
                                code::QUEUE_FULL,
                                "the server's message store is full: retry later",
                            ));
                        }
                        Ok(true)
                    })();
                    match checked {
                        Ok(true) => {
                            let sent_ms = now_ms();
                            let expires_ms = sent_ms.saturating_add(cfg.ttl.as_millis() as u64);
                            b.insert(
                                Kind::Raw,
                                encode_message_record(to, from, nonce, sent_ms, expires_ms, &body),
                            );
                            let e = q_add.entry(to).or_default();
                            e.0 += 1;
                            e.1 += body.len() as u64;
                            len_add += 1;
                            bytes_add += body.len() as u64;
                            if nonce > 0 {
                                nonces.insert((from, to), nonce);
                            }
                            plan.push(Planned::Send {
                                from,
                                to,
                                body,
                                sent_ms,
                                expires_ms,
                                insert: inserts,
                                reply,
                            });
                            inserts += 1;
                        }
                        Ok(false) => plan.push(Planned::Dup(reply)),
                        Err(e) => plan.push(Planned::SendErr(e, reply)),
                    }
                }
                Job::Ack { uid, ids, reply } => {
                    // Only messages that could have been handed over (durable).
                    let durable = st.durable;
                    let mine: Vec<(u64, u64)> = st.queues.get(&uid).map_or(Vec::new(), |q| {
                        ids.iter()
                            .filter(|id| **id <= durable)
                            .filter_map(|id| q.msgs.get(id).map(|m| (*id, m.len)))
                            .filter(|(id, _)| acked.insert(*id))
                            .collect()
                    });
                    for (id, _) in &mine {
                        b.delete(*id);
                    }
                    plan.push(Planned::Ack {
                        uid,
                        ids,
                        mine,
                        reply,
                    });
                }
            }
        }
        // Each pair's last nonce, once per batch.
        let mut new_pairs = Vec::new();
        for (pair, nonce) in &nonces {
            let rec = encode_pair_record(pair.0, pair.1, *nonce);
            match st.pairs.get(pair) {
                Some((rid, _)) => {
                    b.update(*rid, Kind::Raw, rec);
                }
                None => {
                    b.insert(Kind::Raw, rec);
                    new_pairs.push((*pair, inserts));
                    inserts += 1;
                }
            }
        }
        // Written into the store's buffer only: under Immediate durability
        // the syncer fsyncs it (with any batch buffered after it) before
        // anything of it is answered or pushed.
        let immediate = cfg.durability == zs_db::Durability::Immediate;
        let ids = if b.is_empty() {
            Ok(Vec::new())
        } else {
            let d = if immediate {
                zs_db::Durability::Periodic(BUFFERED_FOR)
            } else {
                cfg.durability
            };
            self.inner
                .db
                .commit_with(&b, Some(d))
                .map_err(ServiceError::storage)
        };
        let ids = match ids {
            Ok(ids) if ids.len() == inserts => ids,
            other => {
                let e = other.err().unwrap_or_else(|| {
                    ServiceError::new(code::STORAGE, "the store answered a short commit")
                });
                drop(st);
                for p in plan {
                    p.fail(e.clone());
                }
                return None;
            }
        };
        for (pair, nonce) in &nonces {
            let rid = match st.pairs.get(pair) {
                Some((rid, _)) => *rid,
                None => new_pairs
                    .iter()
                    .find(|(p, _)| p == pair)
                    .map_or(0, |(_, i)| ids[*i]),
            };
            st.pairs.insert(*pair, (rid, *nonce));
        }
        // The queues take the batch now (hidden until `durable` reaches it).
        let mut out = Vec::with_capacity(plan.len());
        for p in plan {
            out.push(match p {
                Planned::Send {
                    from,
                    to,
                    body,
                    sent_ms,
                    expires_ms,
                    insert,
                    reply,
                } => {
                    let id = ids[insert];
                    let len = body.len() as u64;
                    let q = st.queues.entry(to).or_default();
                    q.msgs.insert(
                        id,
                        Meta {
                            from,
                            sent_ms,
                            expires_ms,
                            len,
                        },
                    );
                    q.bytes += len;
                    q.min_expires = q.min_expires.min(expires_ms);
                    st.total_len += 1;
                    st.total_bytes += len;
                    Outcome::Sent {
                        to,
                        id,
                        body,
                        reply,
                    }
                }
                Planned::Dup(reply) => Outcome::Dup(reply),
                Planned::SendErr(e, reply) => Outcome::Err(e, reply),
                Planned::Ack {
                    uid,
                    ids,
                    mine,
                    reply,
                } => {
                    let (mut n, mut bytes) = (0usize, 0u64);
                    if let Some(q) = st.queues.get_mut(&uid) {
                        for (id, len) in &mine {
                            if q.msgs.remove(id).is_some() {
                                q.bytes -= len;
                                n += 1;
                                bytes += len;
                            }
                        }
                    }
                    st.total_len -= n;
                    st.total_bytes -= bytes;
                    if st.queues.get(&uid).is_some_and(|q| q.msgs.is_empty()) {
                        st.queues.remove(&uid);
                    }
                    let keys: Vec<u64> = st
                        .subs_of
                        .get(&uid)
                        .map_or(Vec::new(), |k| k.iter().copied().collect());
                    for k in keys {
                        if let Some(s) = st.subs.get_mut(&k) {
                            for id in &ids {
                                s.inflight.remove(id);
                            }
                        }
                    }
                    Outcome::Acked {
                        uid,
                        n: mine.len(),
                        reply,
                    }
                }
            });
        }
        let done = Done {
            out,
            upto: ids.iter().copied().max().unwrap_or(0),
            wrote: !b.is_empty(),
        };
        if immediate {
            return Some(done);
        }
        // Periodic: answered once buffered.
        st.durable = st.durable.max(done.upto);
        let mut answers = Vec::with_capacity(done.out.len());
        self.deliver(&mut st, done.out, &mut answers);
        drop(st);
        answer_all(answers);
        None
    }

    /// The syncer's step: one fsync for every batch buffered so far, then
    /// their pushes, in order, and their answers handed to the answerer
    /// (`answers`), which gives them in the same order.
    fn sync_and_deliver(&self, dones: Vec<Done>, answers_to: &AnswerQueue) {
        let synced = if dones.iter().any(|d| d.wrote) {
            self.inner.db.sync().map_err(ServiceError::storage)
        } else {
            Ok(())
        };
        let mut st = lock(&self.inner.state);
        if let Err(e) = synced {
            tracing::error!(error = %e, "messages: fsync failed; refusing sends until restart");
            st.broken = Some(e.clone());
            drop(st);
            // Through the answerer too, so they come after the answers of
            // the batches before (which it may still be giving).
            let failed = dones
                .into_iter()
                .flat_map(|d| d.out)
                .map(|o| o.failed(e.clone()))
                .collect();
            if let Err(std::sync::mpsc::SendError(failed)) = answers_to.send(failed) {
                answer_all(failed);
            }
            return;
        }
        let mut answers = Vec::with_capacity(dones.iter().map(|d| d.out.len()).sum());
        for d in dones {
            st.durable = st.durable.max(d.upto);
            self.deliver(&mut st, d.out, &mut answers);
        }
        // Answered after the state lock is released: each answer is a
        // sealed record and a send of its own, and the planner (which needs
        // the lock to check the next batch) used to wait behind all of them.
        // Answered on the answerer's thread: the next fsync used to wait
        // behind them too (session 12).
        drop(st);
        if let Err(std::sync::mpsc::SendError(answers)) = answers_to.send(answers) {
            answer_all(answers);
        }
    }

    /// Pushes the outcomes of a batch that is durable (under the state
    /// lock) and collects their answers, to be given once it is released
    /// ([`answer_all`]): pushes still go before the answers.
    fn deliver(&self, st: &mut State, out: Vec<Outcome>, answers: &mut Vec<Answer>) {
        for o in out {
            answers.push(match o {
                Outcome::Sent {
                    to,
                    id,
                    body,
                    reply,
                } => {
                    self.pump(st, to, Some((id, &body)));
                    Answer::Sent(
                        reply,
                        Ok(Sent {
                            id,
                            duplicate: false,
                        }),
                    )
                }
                Outcome::Dup(reply) => Answer::Sent(
                    reply,
                    Ok(Sent {
                        id: 0,
                        duplicate: true,
                    }),
                ),
                Outcome::Err(e, reply) => Answer::Sent(reply, Err(e)),
                Outcome::Acked { uid, n, reply } => {
                    self.pump(st, uid, None);
                    Answer::Acked(reply, Ok(n))
                }
            });
        }
    }

    /// Pushes queued messages of `uid` to its subscribed connections, up to
    /// the window. `fresh` is the body of a message just queued (saves a read).
    fn pump(&self, st: &mut State, uid: u64, fresh: Option<(u64, &[u8])>) {
        let window = self.inner.cfg.push_window;
        let subs: Vec<u64> = st
            .subs_of
            .get(&uid)
            .map_or(Vec::new(), |k| k.iter().copied().collect());
        for key in subs {
            let Some(sub) = st.subs.get(&key) else {
                continue;
            };
            if !sub.peer.is_open() || self.inner.accounts.user_of(&sub.peer) != Some(uid) {
                st.subs.remove(&key);
                if let Some(k) = st.subs_of.get_mut(&uid) {
                    k.remove(&key);
                    if k.is_empty() {
                        st.subs_of.remove(&uid);
                    }
                }
                continue;
            }
            let Some(q) = st.queues.get(&uid) else {
                continue;
            };
            let room = window.saturating_sub(sub.inflight.len());
            let from = sub.sent_upto.saturating_add(1);
            if from > st.durable {
                continue;
            }
            let next: Vec<(u64, Meta)> = q
                .msgs
                .range(from..=st.durable)
                .take(room)
                .map(|(id, m)| (*id, *m))
                .collect();
            let mut sent = Vec::new();
            for (id, m) in next {
                let body = match fresh {
                    Some((fid, b)) if fid == id => Bytes::copy_from_slice(b),
                    _ => match self.body(id) {
                        Some(b) => b,
                        None => continue,
                    },
                };
                let msg = Message {
                    kind: push_kind::DIRECT,
                    id,
                    from: m.from,
                    from_name: self.inner.accounts.name_of(m.from).unwrap_or_default(),
                    sent_ms: m.sent_ms,
                    group: String::new(),
                    body,
                };
                if sub
                    .peer
                    .send_direct_stream("msg.push", msg.to_frame())
                    .is_err()
                {
                    break;
                }
                sent.push(id);
            }
            if let Some(sub) = st.subs.get_mut(&key) {
                for id in sent {
                    sub.sent_upto = sub.sent_upto.max(id);
                    sub.inflight.insert(id);
                }
            }
        }
    }

    fn body(&self, id: u64) -> Option<Bytes> {
        match self.inner.db.get(id) {
            Ok(Some(r)) if r.data.len() >= MSG_HEADER => {
                Some(Bytes::from(r.data).slice(MSG_HEADER..))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::error!(id, error = %e, "messages: cannot read a queued body");
                None
            }
        }
    }

    /// Queued messages of `uid` with id above `after`, at most `max` (and at
    /// most [`MessagesConfig::max_fetch`]), oldest first. They stay queued
    /// until acknowledged.
    pub fn fetch(&self, uid: u64, after: u64, max: usize) -> Result<Vec<Message>> {
        let mut st = lock(&self.inner.state);
        self.sweep(&mut st, uid)?;
        let Some(q) = st.queues.get(&uid) else {
            return Ok(Vec::new());
        };
        let max = max.min(self.inner.cfg.max_fetch);
        let mut out = Vec::new();
        let from = after.saturating_add(1);
        if from > st.durable {
            return Ok(Vec::new());
        }
        for (id, m) in q.msgs.range(from..=st.durable).take(max) {
            let Some(body) = self.body(*id) else { continue };
            out.push(Message {
                kind: push_kind::DIRECT,
                id: *id,
                from: m.from,
                from_name: self.inner.accounts.name_of(m.from).unwrap_or_default(),
                sent_ms: m.sent_ms,
                group: String::new(),
                body,
            });
        }
        Ok(out)
    }

    /// Acknowledges (removes, fsynced) messages of `uid` by id; ids not in its
    /// queue are ignored. Returns how many were removed.
    pub fn ack(&self, uid: u64, ids: &[u64]) -> Result<usize> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(Job::Ack {
            uid,
            ids: ids.to_vec(),
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        });
        rx.recv()
            .unwrap_or_else(|_| Err(ServiceError::new(code::STORAGE, "the committer stopped")))
    }

    /// Subscribes `peer` (logged in as `uid`) to pushes: every queued message
    /// is pushed from the oldest (window permitting), then each new one as it
    /// is queued. Returns the number queued.
    pub fn subscribe(&self, peer: &Peer, uid: u64) -> Result<usize> {
        let mut st = lock(&self.inner.state);
        self.sweep(&mut st, uid)?;
        // Forget subscriptions of closed connections and of other users.
        // (Those of this user, and this connection's: O(their number);
        // the others are dropped when a pump meets them.)
        let accounts = &self.inner.accounts;
        let mut look: Vec<u64> = st
            .subs_of
            .get(&uid)
            .map_or(Vec::new(), |k| k.iter().copied().collect());
        look.push(peer.id());
        for key in look {
            let stale = st.subs.get(&key).map(|s| {
                (
                    s.user,
                    key == peer.id()
                        || !s.peer.is_open()
                        || accounts.user_of(&s.peer) != Some(s.user),
                )
            });
            if let Some((user, true)) = stale {
                st.subs.remove(&key);
                if let Some(k) = st.subs_of.get_mut(&user) {
                    k.remove(&key);
                    if k.is_empty() {
                        st.subs_of.remove(&user);
                    }
                }
            }
        }
        st.subs.insert(
            peer.id(),
            Sub {
                peer: peer.clone(),
                user: uid,
                sent_upto: 0,
                inflight: HashSet::new(),
            },
        );
        st.subs_of.entry(uid).or_default().insert(peer.id());
        if st.subs.len() >= st.subs_sweep_at {
            st.subs
                .retain(|_, s| s.peer.is_open() && accounts.user_of(&s.peer) == Some(s.user));
            let mut index: HashMap<u64, HashSet<u64>> = HashMap::new();
            for (k, s) in &st.subs {
                index.entry(s.user).or_default().insert(*k);
            }
            st.subs_of = index;
            st.subs_sweep_at = (2 * st.subs.len()).max(1024);
        }
        let n = st.queues.get(&uid).map_or(0, |q| q.msgs.len());
        self.pump(&mut st, uid, None);
        Ok(n)
    }

    fn live(&self, from: u64, kind: u8, group: &str, body: &[u8], to: &[Peer]) -> usize {
        let msg = Message {
            kind,
            id: 0,
            from,
            from_name: self.inner.accounts.name_of(from).unwrap_or_default(),
            sent_ms: now_ms(),
            group: group.to_owned(),
            body: Bytes::copy_from_slice(body),
        };
        // One sending pass with the loops' wake-ups deferred to its end (one
        // per loop, not one per member: see `zs_core::send_to_each`).
        let frame = Frame::DirectStream {
            cmd: Text::from("msg.push"),
            data: msg.to_frame(),
        };
        zs_core::send_to_each(to, &frame)
    }

    fn check_body(&self, body: &[u8]) -> Result<()> {
        if body.len() > self.inner.cfg.max_body {
            return Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                format!(
                    "a message body has at most {} bytes",
                    self.inner.cfg.max_body
                ),
            ));
        }
        Ok(())
    }

    /// Pushes `body` to every logged-in connection (live: not queued).
    /// Returns how many it went to.
    pub fn broadcast(&self, from: u64, body: &[u8]) -> Result<usize> {
        self.check_body(body)?;
        let peers: Vec<Peer> = self
            .inner
            .accounts
            .online_peers()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        Ok(self.live(from, push_kind::BROADCAST, "", body, &peers))
    }

    /// `peer` joins group `name` (live membership: it ends with the connection).
    pub fn join(&self, peer: &Peer, name: &str) -> Result<()> {
        let name = check_name(name, self.inner.accounts.config().max_name)?;
        let cfg = &self.inner.cfg;
        let mut st = lock(&self.inner.state);
        self.prune_groups(&mut st);
        let mine = st.joined.get(&peer.id()).map_or(0, |g| g.len());
        if mine >= cfg.max_groups_per_peer {
            return Err(ServiceError::new(
                code::QUEUE_FULL,
                format!(
                    "a connection joins at most {} groups",
                    cfg.max_groups_per_peer
                ),
            ));
        }
        if !st.groups.contains_key(&name) && st.groups.len() >= cfg.max_groups {
            return Err(ServiceError::new(
                code::QUEUE_FULL,
                "too many groups on this server",
            ));
        }
        st.groups.entry(name.clone()).or_default().insert(peer.id());
        st.joined.entry(peer.id()).or_default().insert(name);
        Ok(())
    }

    /// `peer` leaves group `name`.
    pub fn leave(&self, peer: &Peer, name: &str) {
        let name = name.to_ascii_lowercase();
        let mut st = lock(&self.inner.state);
        if let Some(g) = st.groups.get_mut(&name) {
            g.remove(&peer.id());
            if g.is_empty() {
                st.groups.remove(&name);
            }
        }
        if let Some(j) = st.joined.get_mut(&peer.id()) {
            j.remove(&name);
        }
    }

    /// Drops members whose connection is gone or logged out.
    fn prune_groups(&self, st: &mut State) {
        let live = self.online_by_connection();
        Self::prune_groups_to(st, &live);
    }

    /// The connections of the users online now, by connection id.
    fn online_by_connection(&self) -> HashMap<u64, Peer> {
        self.inner
            .accounts
            .online_peers()
            .into_iter()
            .map(|(_, p)| (p.id(), p))
            .collect()
    }

    /// Drops group memberships of connections not in `live`.
    fn prune_groups_to(st: &mut State, live: &HashMap<u64, Peer>) {
        st.joined.retain(|pid, _| live.contains_key(pid));
        st.groups.retain(|_, m| {
            m.retain(|pid| live.contains_key(pid));
            !m.is_empty()
        });
    }

    /// Pushes `body` to the members of group `name` (the sender must be one).
    /// Returns how many it went to.
    pub fn group_send(&self, peer: &Peer, from: u64, name: &str, body: &[u8]) -> Result<usize> {
        self.check_body(body)?;
        let name = name.to_ascii_lowercase();
        // One look at who is online, used both to prune and to address
        // (under the state lock, so a connection that joins meanwhile is in
        // it). It was taken twice per send, and the members (a list) were
        // matched against every online connection: 1,000 members among
        // 2,000 online cost 2 million comparisons per group message.
        let peers: Vec<Peer> = {
            let mut st = lock(&self.inner.state);
            let live = self.online_by_connection();
            Self::prune_groups_to(&mut st, &live);
            let Some(m) = st.groups.get(&name) else {
                return Err(ServiceError::new(code::FORBIDDEN, "join the group first"));
            };
            if !m.contains(&peer.id()) {
                return Err(ServiceError::new(code::FORBIDDEN, "join the group first"));
            }
            m.iter().filter_map(|pid| live.get(pid).cloned()).collect()
        };
        Ok(self.live(from, push_kind::GROUP, &name, body, &peers))
    }

    /// Registers the `msg.*` commands on `r` (HPC pool: they fsync).
    pub fn register(&self, r: &mut Registry) {
        let m = self.clone();
        // Answered by the committer once the message is on disk (taken in
        // arrival order on the connection's loop: nothing blocks there).
        r.stream_delayed("msg.send", move |peer, df, resp| {
            let parsed = (|| -> Result<(u64, u64, u64, Bytes)> {
                let from = m.inner.accounts.require_user(peer)?;
                let mut rd = df.reader();
                let to_name = rd.read_str()?;
                let nonce = rd.read_u64()?;
                let body = rd.read_bytes()?;
                let to = m.inner.accounts.resolve(to_name).ok_or_else(|| {
                    ServiceError::new(code::NO_SUCH_USER, format!("no user {to_name:?}"))
                })?;
                Ok((from, to, nonce, body))
            })();
            match parsed {
                Ok((from, to, nonce, body)) => m.submit_send(
                    from,
                    to,
                    nonce,
                    body,
                    Box::new(move |r| {
                        let _ = match r {
                            Ok(s) => resp.reply_data(DataFrame::new().with(s.id).with(s.duplicate)),
                            Err(e) => resp.reply_error(e.code, e.message),
                        };
                    }),
                ),
                Err(e) => {
                    let _ = resp.reply_error(e.code, e.message);
                }
            }
        });
        let m = self.clone();
        r.stream_hpc_svc("msg.fetch", move |peer, df| {
            let uid = m.inner.accounts.require_user(peer)?;
            let mut rd = df.reader();
            let after = rd.read_u64()?;
            let max = rd.read_u32()? as usize;
            let list = m.fetch(uid, after, max)?;
            let mut out = DataFrame::new().with(list.len() as u64);
            for msg in list {
                out.push(msg.to_frame());
            }
            Ok(out)
        });
        let m = self.clone();
        r.stream_delayed("msg.ack", move |peer, df, resp| {
            let parsed = (|| -> Result<(u64, Vec<u64>)> {
                let uid = m.inner.accounts.require_user(peer)?;
                let mut rd = df.reader();
                let n = rd.read_u64()? as usize;
                if n > 10_000 {
                    return Err(ServiceError::bad("at most 10000 ids per msg.ack"));
                }
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(rd.read_u64()?);
                }
                Ok((uid, ids))
            })();
            match parsed {
                Ok((uid, ids)) => m.submit(Job::Ack {
                    uid,
                    ids,
                    reply: Box::new(move |r| {
                        let _ = match r {
                            Ok(n) => resp.reply_data(DataFrame::new().with(n as u64)),
                            Err(e) => resp.reply_error(e.code, e.message),
                        };
                    }),
                }),
                Err(e) => {
                    let _ = resp.reply_error(e.code, e.message);
                }
            }
        });
        let m = self.clone();
        r.stream_hpc_svc("msg.subscribe", move |peer, _| {
            let uid = m.inner.accounts.require_user(peer)?;
            Ok(DataFrame::new().with(m.subscribe(peer, uid)? as u64))
        });
        let m = self.clone();
        r.stream_hpc_svc("msg.broadcast", move |peer, df| {
            let uid = m.inner.accounts.require_user(peer)?;
            if m.inner.cfg.broadcast_admin_only && !m.inner.accounts.is_admin(uid) {
                return Err(ServiceError::new(code::FORBIDDEN, "only admins broadcast"));
            }
            let body = df.reader().read_slice()?;
            Ok(DataFrame::new().with(m.broadcast(uid, body)? as u64))
        });
        let m = self.clone();
        r.stream_hpc_svc("msg.group", move |peer, df| {
            let uid = m.inner.accounts.require_user(peer)?;
            let mut rd = df.reader();
            let op = rd.read_str()?;
            let name = rd.read_str()?;
            match op {
                "join" => {
                    m.join(peer, name)?;
                    Ok(DataFrame::new().with(0u64))
                }
                "leave" => {
                    m.leave(peer, name);
                    Ok(DataFrame::new().with(0u64))
                }
                "send" => {
                    let body = rd.read_slice()?;
                    Ok(DataFrame::new().with(m.group_send(peer, uid, name, body)? as u64))
                }
                other => Err(ServiceError::bad(format!(
                    "msg.group: unknown operation {other:?}"
                ))),
            }
        });
    }
}
