//! The typed client: [`DbClient`] (requests), [`RemoteQuery`] (a running query's
//! results, pause/resume/stop/progress) and [`FastPost`] (pipelined inserts with
//! cumulative durable acknowledgements, surviving reconnects and server restarts).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use zs_core::{Client, Registry};
use zs_db::{Kind, Record, RecordRef};

use crate::proto::{
    cmd, from_frame, record_answer, to_frame, Answer, Change, DecodeError, Durability, EndStatus,
    Limits, Oneway, Push, QueryProgress, QuerySpec, RecordBatch, Request,
};

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the request (see [`crate::proto::errcode`]).
    #[error("refused ({code}): {message}")]
    Refused {
        /// Error code.
        code: u32,
        /// The server's message.
        message: String,
    },
    /// The connection failed.
    #[error("connection: {0}")]
    Net(zs_core::Error),
    /// The server sent something unreadable.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The answer had the wrong shape.
    #[error("unexpected answer {0:?}")]
    Unexpected(Box<Answer>),
    /// A query failed on the server.
    #[error("query failed: {0}")]
    QueryFailed(String),
    /// A FastPost stream was refused by the server.
    #[error("FastPost failed at sequence {seq}: {message}")]
    FastPost {
        /// First sequence number not applied.
        seq: u64,
        /// Why.
        message: String,
    },
    /// Waited too long.
    #[error("timed out")]
    TimedOut,
}

impl From<zs_core::Error> for Error {
    fn from(e: zs_core::Error) -> Error {
        match e {
            zs_core::Error::Remote { code, message } => Error::Refused { code, message },
            e => Error::Net(e),
        }
    }
}

/// Result of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Connector = dyn Fn(Registry) -> zs_core::Result<Client> + Send + Sync;

#[derive(Default)]
struct Routes {
    /// Query pushes: result batches still encoded (the reader's thread decodes
    /// them, so the event loop only opens records), the end decoded.
    queries: Mutex<HashMap<u64, Sender<QueryMsg>>>,
    watches: Mutex<HashMap<u64, Sender<Push>>>,
    fastposts: Mutex<HashMap<u64, Arc<FpShared>>>,
}

struct Inner {
    conn: Mutex<Arc<Client>>,
    connector: Box<Connector>,
    routes: Arc<Routes>,
    next_qid: AtomicU64,
    limits: Limits,
}

/// A connection to a DB service. Cloning shares it.
#[derive(Clone)]
pub struct DbClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbClient").finish_non_exhaustive()
    }
}

/// What a running query receives.
enum QueryMsg {
    /// An encoded [`Push::Batch`].
    Batch(Bytes),
    /// Any other push for the query (its end).
    Push(Push),
}

fn registry(routes: &Arc<Routes>, limits: Limits) -> Registry {
    let mut reg = Registry::new();
    let r = routes.clone();
    reg.complete_buffer(cmd::PUSH, move |peer, data| {
        // a result batch goes to its query undecoded (tag 1, then the qid)
        if data.len() >= 9 && data[0] == 1 {
            let qid = u64::from_le_bytes(data[1..9].try_into().unwrap_or([0; 8]));
            if let Some(tx) = lock(&r.queries).get(&qid) {
                let _ = tx.send(QueryMsg::Batch(data));
            }
            return;
        }
        let push = match Push::decode(&data, &limits) {
            Ok(p) => p,
            Err(e) => {
                peer.close(&format!("db client: {e}"));
                return;
            }
        };
        match &push {
            Push::Batch { qid, .. } | Push::End { qid, .. } => {
                if let Some(tx) = lock(&r.queries).get(qid) {
                    let _ = tx.send(QueryMsg::Push(push));
                }
            }
            Push::Changes { wid, .. } => {
                if let Some(tx) = lock(&r.watches).get(wid) {
                    let _ = tx.send(push);
                }
            }
            Push::FastPostAck { stream, seq } => {
                if let Some(f) = lock(&r.fastposts).get(stream) {
                    f.acked(*seq);
                }
            }
            Push::FastPostError {
                stream,
                seq,
                message,
            } => {
                if let Some(f) = lock(&r.fastposts).get(stream) {
                    let mut m = lock(&f.m);
                    m.error = Some((*seq, message.clone()));
                    f.cv.notify_all();
                }
            }
        }
    });
    reg
}

impl DbClient {
    /// Connects with `connect`, which gets the registry the client needs (the
    /// pushes of the service) and makes a zs-core [`Client`] with it; it is called
    /// again to reconnect when the session is lost (use
    /// [`Client::connect_stable`] over a security layer so short outages
    /// lose nothing).
    pub fn connect_with(
        connect: impl Fn(Registry) -> zs_core::Result<Client> + Send + Sync + 'static,
    ) -> Result<DbClient> {
        let routes = Arc::new(Routes::default());
        let limits = Limits {
            max_value: 256 << 20,
            max_records: 1 << 24,
            ..Limits::default()
        };
        let conn = connect(registry(&routes, limits))?;
        Ok(DbClient {
            inner: Arc::new(Inner {
                conn: Mutex::new(Arc::new(conn)),
                connector: Box::new(connect),
                routes,
                next_qid: AtomicU64::new(1),
                limits,
            }),
        })
    }

    /// The current zs-core connection.
    pub fn connection(&self) -> Arc<Client> {
        lock(&self.inner.conn).clone()
    }

    /// Makes a new connection if the current one is gone for good (a StableIO
    /// session that could not be resumed, e.g. after a server restart).
    /// Returns true if it reconnected.
    pub fn reconnect_if_lost(&self) -> Result<bool> {
        let mut c = lock(&self.inner.conn);
        if c.is_connected() {
            return Ok(false);
        }
        let fresh = (self.inner.connector)(registry(&self.inner.routes, self.inner.limits))?;
        *c = Arc::new(fresh);
        Ok(true)
    }

    /// Sends one request and decodes the answer.
    pub fn request(&self, req: &Request) -> Result<Answer> {
        let conn = self.connection();
        let df = conn
            .call_stream(cmd::REQUEST, to_frame(req.encode()))
            .wait()?;
        let payload = from_frame(&df)?;
        Ok(Answer::decode(&payload, &self.inner.limits)?)
    }

    /// Calls procedure `name` registered on the server
    /// ([`crate::DbService::register_procedure`]) with `args`; returns its result,
    /// sent after it committed. Refusals: 404 no such procedure, 400 arguments over
    /// the server's limit, 429 too many calls running, 503 the redo budget was spent
    /// (nothing committed; retry later), 422 the body aborted, 500 storage.
    pub fn call(&self, name: &str, args: &[u8]) -> Result<Vec<u8>> {
        let req = Request::Call {
            name: name.into(),
            args: Bytes::copy_from_slice(args),
        };
        match self.request(&req)? {
            Answer::Bytes(b) => Ok(b.to_vec()),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    fn ok(&self, req: Request) -> Result<()> {
        match self.request(&req)? {
            Answer::Ok => Ok(()),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// Sets the access `user` has to database `db` (`*` for either: every
    /// database / every user); needs admin access to `db`.
    pub fn grant(&self, db: &str, user: &str, access: crate::Access) -> Result<()> {
        self.ok(Request::Grant {
            db: db.into(),
            user: user.into(),
            access,
        })
    }

    /// The access rules naming database `db` or `*` (`*`: every rule), as
    /// (database, user, access), sorted; needs admin access to `db`.
    pub fn rules(&self, db: &str) -> Result<Vec<(String, String, crate::Access)>> {
        match self.request(&Request::Rules { db: db.into() })? {
            Answer::Rules(v) => Ok(v),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// Opens database `name` (creating it when `create`).
    pub fn open(&self, name: &str, create: bool) -> Result<()> {
        self.ok(Request::Open {
            name: name.into(),
            create,
        })
    }

    /// Closes database `name`'s engine on the server (after syncing it).
    pub fn close_db(&self, name: &str) -> Result<()> {
        self.ok(Request::Close { name: name.into() })
    }

    /// Names of the databases, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        match self.request(&Request::List)? {
            Answer::Names(v) => Ok(v),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// Copies `src` into new database `dst` (compacted).
    pub fn copy(&self, src: &str, dst: &str) -> Result<()> {
        self.ok(Request::Copy {
            src: src.into(),
            dst: dst.into(),
        })
    }

    /// Compacts `name`; returns (bytes before, bytes after).
    pub fn compact(&self, name: &str) -> Result<(u64, u64)> {
        match self.request(&Request::Compact { name: name.into() })? {
            Answer::Sizes(a, b) => Ok((a, b)),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// The figures of database `db` (what local `zs db stats` prints); needs
    /// read access to `db`, as [`DbClient::get`] does.
    pub fn stats(&self, db: &str) -> Result<zs_db::Stats> {
        match self.request(&Request::Stats { db: db.into() })? {
            Answer::Stats(s) => Ok(s),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// Deletes database `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.ok(Request::Remove { name: name.into() })
    }

    /// Creates a secondary index on `field` (for [`crate::Range::Index`] scans).
    pub fn create_index(&self, db: &str, field: &str) -> Result<()> {
        self.ok(Request::CreateIndex {
            db: db.into(),
            field: field.into(),
        })
    }

    /// Inserts a record; returns its id.
    pub fn insert(&self, db: &str, kind: Kind, data: &[u8], durability: Durability) -> Result<u64> {
        match self.request(&Request::Insert {
            db: db.into(),
            durability,
            kind,
            data: Bytes::copy_from_slice(data),
        })? {
            Answer::Id(id) => Ok(id),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// Replaces record `id`.
    pub fn update(
        &self,
        db: &str,
        id: u64,
        kind: Kind,
        data: &[u8],
        durability: Durability,
    ) -> Result<()> {
        self.ok(Request::Update {
            db: db.into(),
            durability,
            id,
            kind,
            data: Bytes::copy_from_slice(data),
        })
    }

    /// Deletes record `id`; false if it did not exist.
    pub fn delete(&self, db: &str, id: u64, durability: Durability) -> Result<bool> {
        match self.request(&Request::Delete {
            db: db.into(),
            durability,
            id,
        })? {
            Answer::Bool(b) => Ok(b),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// Reads record `id`.
    pub fn get(&self, db: &str, id: u64) -> Result<Option<Record>> {
        match self.request(&Request::Get { db: db.into(), id })? {
            Answer::Record(r) => Ok(r),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// Reads record `id` without waiting: `done` gets the outcome, on the
    /// connection's event loop (it must not block). Requests started inside
    /// `done` (the next GET of a pipeline, say) leave together with the other
    /// requests and answers of that loop turn, in one write; this is how an
    /// event-driven caller keeps many reads in flight on one connection without
    /// a thread per request. [`DbClient::get_with`] lends the record instead of
    /// copying it out.
    pub fn get_then(
        &self,
        db: &str,
        id: u64,
        done: impl FnOnce(Result<Option<Record>>) + Send + 'static,
    ) {
        self.get_with(db, id, move |r| done(r.map(|r| r.map(|r| r.to_owned()))));
    }

    /// Like [`DbClient::get_then`], but `done` borrows the record from the
    /// received bytes: no copy of the value and no allocation for the answer.
    pub fn get_with(
        &self,
        db: &str,
        id: u64,
        done: impl FnOnce(Result<Option<RecordRef<'_>>>) + Send + 'static,
    ) {
        let limits = self.inner.limits;
        self.connection()
            .call_with(get_call(db, id), None, move |r| {
                with_record(r, &limits, done)
            });
    }

    /// A callback for [`DbClient::get_to`], made once and shared by any number
    /// of GETs in flight (the `tag` of each tells them apart).
    pub fn get_sink(
        &self,
        on_record: impl Fn(u64, Result<Option<RecordRef<'_>>>) + Send + Sync + 'static,
    ) -> GetSink {
        GetSink {
            sink: Arc::new(GetSinkFn {
                f: on_record,
                limits: self.inner.limits,
            }),
        }
    }

    /// Reads record `id` without waiting and hands the record, borrowed from
    /// the received bytes, to `sink` with `tag` on the connection's event loop:
    /// the allocation-free GET (no callback box, no owned record). Requests
    /// made from the sink leave with that loop turn's write, as with
    /// [`DbClient::get_then`].
    ///
    /// ```no_run
    /// # fn f(db: zs_db_service::DbClient) {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// let bytes = Arc::new(AtomicU64::new(0));
    /// let b = bytes.clone();
    /// let sink = db.get_sink(move |_tag, r| {
    ///     if let Ok(Some(rec)) = r {
    ///         b.fetch_add(rec.data.len() as u64, Ordering::Relaxed);
    ///     }
    /// });
    /// for id in 1..=16 {
    ///     db.get_to("kv", id, &sink, id);
    /// }
    /// # }
    /// ```
    pub fn get_to(&self, db: &str, id: u64, sink: &GetSink, tag: u64) {
        self.connection()
            .call_to(get_call(db, id), None, &sink.sink, tag);
    }

    /// Reads several records with the requests pipelined (all sent, then all
    /// awaited): one round trip for the lot instead of one per record.
    pub fn get_pipelined(&self, db: &str, ids: &[u64]) -> Result<Vec<Option<Record>>> {
        let conn = self.connection();
        let calls: Vec<_> = ids
            .iter()
            .map(|&id| conn.call_stream(cmd::REQUEST, to_frame(crate::proto::encode_get(db, id))))
            .collect();
        calls
            .into_iter()
            .map(|c| {
                let df = c.wait()?;
                match Answer::decode(&from_frame(&df)?, &self.inner.limits)? {
                    Answer::Record(r) => Ok(r),
                    a => Err(Error::Unexpected(Box::new(a))),
                }
            })
            .collect()
    }

    /// Starts a query (its `qid` is chosen here). Results arrive while it runs.
    pub fn query(&self, mut spec: QuerySpec) -> Result<RemoteQuery> {
        spec.qid = self.inner.next_qid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        lock(&self.inner.routes.queries).insert(spec.qid, tx);
        match self.request(&Request::Query(spec.clone())) {
            Ok(Answer::Id(_)) => Ok(RemoteQuery {
                client: self.clone(),
                qid: spec.qid,
                rx,
                end: None,
                stop_asked: std::sync::atomic::AtomicBool::new(false),
            }),
            other => {
                lock(&self.inner.routes.queries).remove(&spec.qid);
                match other {
                    Ok(a) => Err(Error::Unexpected(Box::new(a))),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Watches the changes of records `lo..=hi` of `db` (made through the
    /// service), delivered in commit order.
    pub fn watch(&self, db: &str, lo: u64, hi: u64) -> Result<WatchStream> {
        let wid = self.inner.next_qid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        lock(&self.inner.routes.watches).insert(wid, tx);
        let req = Request::Watch {
            wid,
            db: db.into(),
            lo,
            hi,
        };
        match self.request(&req) {
            Ok(Answer::Id(_)) => Ok(WatchStream {
                client: self.clone(),
                wid,
                rx,
                next_seq: 0,
            }),
            other => {
                lock(&self.inner.routes.watches).remove(&wid);
                match other {
                    Ok(a) => Err(Error::Unexpected(Box::new(a))),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Opens a FastPost stream into `db` (see [`FastPost`]).
    pub fn fastpost(&self, db: &str, cfg: FastPostConfig) -> Result<FastPost> {
        let rng = ring::rand::SystemRandom::new();
        let mut id = [0u8; 8];
        ring::rand::SecureRandom::fill(&rng, &mut id)
            .map_err(|_| Error::Net(zs_core::Error::Config("no randomness".into())))?;
        let stream = u64::from_le_bytes(id) | 1;
        let shared = Arc::new(FpShared {
            m: Mutex::new(FpState::default()),
            cv: Condvar::new(),
        });
        lock(&self.inner.routes.fastposts).insert(stream, shared.clone());
        let fp = FastPost {
            client: self.clone(),
            db: db.to_string(),
            stream,
            shared,
            cfg,
            next_seq: 1,
            sent_upto: 0,
            reconnects: 0,
        };
        let durable = fp.open_stream()?;
        lock(&fp.shared.m).acked = durable;
        Ok(fp)
    }
}

/// Where [`DbClient::get_to`] delivers GET answers ([`DbClient::get_sink`]).
#[derive(Clone)]
pub struct GetSink {
    sink: Arc<dyn zs_core::ReplySink>,
}

impl std::fmt::Debug for GetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GetSink")
    }
}

struct GetSinkFn<F> {
    f: F,
    limits: Limits,
}

impl<F> zs_core::ReplySink for GetSinkFn<F>
where
    F: Fn(u64, Result<Option<RecordRef<'_>>>) + Send + Sync,
{
    fn on_reply(&self, tag: u64, r: zs_core::Result<zs_core::Reply>) {
        with_record(r, &self.limits, |rec| (self.f)(tag, rec))
    }
}

/// The call of a GET of record `id` of `db`.
fn get_call(db: &str, id: u64) -> zs_core::Call {
    zs_core::Call::Stream {
        cmd: cmd::REQUEST.into(),
        data: to_frame(crate::proto::encode_get(db, id)),
    }
}

/// Runs `f` with the record of a GET's reply, read in place.
fn with_record<R>(
    r: zs_core::Result<zs_core::Reply>,
    lim: &Limits,
    f: impl FnOnce(Result<Option<RecordRef<'_>>>) -> R,
) -> R {
    let df = match r {
        Ok(zs_core::Reply::Data(df)) => df,
        Ok(zs_core::Reply::Text(_)) => {
            return f(Err(Error::Net(zs_core::Error::UnexpectedReply {
                expected: "values",
            })))
        }
        Err(e) => return f(Err(e.into())),
    };
    match from_frame(&df) {
        Ok(bytes) => match record_answer(&bytes, lim) {
            Ok(rec) => f(Ok(rec)),
            Err(e) => f(Err(Error::Decode(e))),
        },
        Err(e) => f(Err(Error::Decode(e))),
    }
}

/// A query running on the server. Iterate it (or call [`RemoteQuery::next_batch`])
/// for batches of records in order; reading returns credit to the server, so a
/// query that is not read stops scanning once its window is full.
pub struct RemoteQuery {
    client: DbClient,
    qid: u64,
    rx: Receiver<QueryMsg>,
    end: Option<(EndStatus, u64)>,
    /// This client asked the server to stop the query ([`RemoteQuery::stop`]).
    stop_asked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RemoteQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteQuery({})", self.qid)
    }
}

impl RemoteQuery {
    /// The query id.
    pub fn id(&self) -> u64 {
        self.qid
    }

    /// How it ended and how many records it sent (once ended).
    pub fn end(&self) -> Option<(EndStatus, u64)> {
        self.end
    }

    /// The next batch; `None` once the query ended (done, limit or stopped).
    pub fn next_batch(&mut self) -> Option<Result<Vec<Record>>> {
        self.next_batch_timeout(None)
    }

    /// Like [`RemoteQuery::next_batch`], giving up after `limit` with
    /// [`Error::TimedOut`] (the query goes on).
    pub fn next_batch_timeout(&mut self, limit: Option<Duration>) -> Option<Result<Vec<Record>>> {
        self.next_records_timeout(limit)
            .map(|b| b.map(|b| b.to_records()))
    }

    /// The next batch read in place (no copy or allocation per record: iterate
    /// it for borrowed records); `None` once the query ended.
    pub fn next_records(&mut self) -> Option<Result<RecordBatch>> {
        self.next_records_timeout(None)
    }

    /// Like [`RemoteQuery::next_records`], giving up after `limit` with
    /// [`Error::TimedOut`] (the query goes on).
    pub fn next_records_timeout(&mut self, limit: Option<Duration>) -> Option<Result<RecordBatch>> {
        if self.end.is_some() {
            return None;
        }
        let started = Instant::now();
        loop {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(QueryMsg::Batch(data)) => {
                    let records = match RecordBatch::parse(data, &self.client.inner.limits) {
                        Ok(b) => b,
                        Err(e) => {
                            // a server that sends garbage ends the query here
                            self.end = Some((EndStatus::Failed, 0));
                            return Some(Err(Error::Decode(e)));
                        }
                    };
                    let credit = Oneway::Credit {
                        qid: self.qid,
                        batches: 1,
                    };
                    let _ = self
                        .client
                        .connection()
                        .send_complete_buffer(cmd::ONEWAY, credit.encode());
                    return Some(Ok(records));
                }
                Ok(QueryMsg::Push(Push::End {
                    status,
                    matched,
                    message,
                    ..
                })) => {
                    self.end = Some((status, matched));
                    lock(&self.client.inner.routes.queries).remove(&self.qid);
                    if status == EndStatus::Failed {
                        return Some(Err(Error::QueryFailed(message)));
                    }
                    // stopped without being asked: the server went away (shut
                    // down, its connection closing), so the results are cut short
                    if status == EndStatus::Stopped
                        && !self.stop_asked.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        return Some(Err(Error::QueryFailed(
                            "the server stopped the query (shutting down?)".into(),
                        )));
                    }
                    return None;
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    if !self.client.connection().is_connected() {
                        self.end = Some((EndStatus::Failed, 0));
                        return Some(Err(Error::Net(zs_core::Error::ConnectionLost(
                            "the connection ended during the query".into(),
                        ))));
                    }
                    if limit.is_some_and(|l| started.elapsed() >= l) {
                        return Some(Err(Error::TimedOut));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every remaining record.
    pub fn collect_all(mut self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        while let Some(b) = self.next_batch() {
            out.extend(b?);
        }
        Ok(out)
    }

    fn control(&self, req: Request) -> Result<()> {
        self.client.ok(req)
    }

    /// Pauses the scan on the server (it stops reading records).
    pub fn pause(&self) -> Result<()> {
        self.control(Request::Pause { qid: self.qid })
    }

    /// Resumes a paused scan.
    pub fn resume(&self) -> Result<()> {
        self.control(Request::Resume { qid: self.qid })
    }

    /// Stops the scan; batches already sent still arrive, then the end.
    pub fn stop(&self) -> Result<()> {
        self.stop_asked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.control(Request::Stop { qid: self.qid })
    }

    /// The scan's progress on the server.
    pub fn progress(&self) -> Result<QueryProgress> {
        match self.client.request(&Request::Progress { qid: self.qid })? {
            Answer::Progress(p) => Ok(p),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }
}

impl Iterator for RemoteQuery {
    type Item = Result<Vec<Record>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

impl Drop for RemoteQuery {
    fn drop(&mut self) {
        if self.end.is_none() {
            // fire and forget: the server stops scanning
            drop(self.client.connection().call_stream(
                cmd::REQUEST,
                to_frame(Request::Stop { qid: self.qid }.encode()),
            ));
        }
        lock(&self.client.inner.routes.queries).remove(&self.qid);
    }
}

/// A watch: the changes of each commit in the watched range, in commit order.
/// Dropping it ends the watch on the server.
pub struct WatchStream {
    client: DbClient,
    wid: u64,
    rx: Receiver<Push>,
    next_seq: u64,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WatchStream({})", self.wid)
    }
}

impl WatchStream {
    /// The changes of the next commit, waiting at most `limit`; `Ok(None)` on
    /// timeout. A gap in the server's numbering (changes lost with a
    /// connection) is an error.
    pub fn next_timeout(&mut self, limit: Duration) -> Result<Option<Vec<Change>>> {
        match self.rx.recv_timeout(limit) {
            Ok(Push::Changes { seq, changes, .. }) => {
                if seq != self.next_seq {
                    return Err(Error::QueryFailed(format!(
                        "watch lost changes: commit {seq} came, {} expected",
                        self.next_seq
                    )));
                }
                self.next_seq += 1;
                Ok(Some(changes))
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Net(zs_core::Error::ConnectionLost(
                "watch ended".into(),
            ))),
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        lock(&self.client.inner.routes.watches).remove(&self.wid);
        drop(self.client.connection().call_stream(
            cmd::REQUEST,
            to_frame(Request::Unwatch { wid: self.wid }.encode()),
        ));
    }
}

/// Settings of a [`FastPost`] stream.
#[derive(Debug, Clone, Copy)]
pub struct FastPostConfig {
    /// Records gathered into one message. Default 256.
    pub records_per_message: usize,
    /// Most bytes posted and not yet acknowledged durable; `post` waits beyond.
    /// Default 16 MiB.
    pub max_unacked: usize,
    /// How long `post`/`flush` wait for acknowledgements (or a reconnect) before
    /// failing. Default 30 s.
    pub timeout: Duration,
}

impl Default for FastPostConfig {
    fn default() -> Self {
        FastPostConfig {
            records_per_message: 256,
            max_unacked: 16 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Default)]
struct FpState {
    acked: u64,
    unacked: VecDeque<(u64, Kind, Bytes)>,
    bytes: usize,
    error: Option<(u64, String)>,
}

struct FpShared {
    m: Mutex<FpState>,
    cv: Condvar,
}

impl FpShared {
    fn acked(&self, seq: u64) {
        let mut m = lock(&self.m);
        if seq > m.acked {
            m.acked = seq;
        }
        while m.unacked.front().is_some_and(|r| r.0 <= seq) {
            if let Some((_, _, d)) = m.unacked.pop_front() {
                m.bytes -= d.len() + 16;
            }
        }
        self.cv.notify_all();
    }
}

/// Pipelined inserts into one database without a reply per record. Records get
/// sequence numbers from 1; the server acknowledges cumulatively ("everything
/// up to N is durable") every group commit. Records not yet acknowledged are
/// kept here and sent again after a reconnect (the server skips those it has
/// applied already), so every acknowledged record is stored exactly once, even
/// across a server restart.
pub struct FastPost {
    client: DbClient,
    db: String,
    stream: u64,
    shared: Arc<FpShared>,
    cfg: FastPostConfig,
    next_seq: u64,
    sent_upto: u64,
    reconnects: u64,
}

impl std::fmt::Debug for FastPost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPost")
            .field("stream", &self.stream)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl FastPost {
    fn open_stream(&self) -> Result<u64> {
        match self.client.request(&Request::FastPostOpen {
            db: self.db.clone(),
            stream: self.stream,
        })? {
            Answer::Id(d) => Ok(d),
            a => Err(Error::Unexpected(Box::new(a))),
        }
    }

    /// The highest sequence number acknowledged durable.
    pub fn acked(&self) -> u64 {
        lock(&self.shared.m).acked
    }

    /// Sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// How many times the stream was reopened on a new connection.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Queues one record; returns its sequence number. Sends a message every
    /// [`FastPostConfig::records_per_message`] records; waits while
    /// [`FastPostConfig::max_unacked`] bytes are unacknowledged.
    pub fn post(&mut self, kind: Kind, data: &[u8]) -> Result<u64> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            let full = {
                let m = lock(&self.shared.m);
                if let Some((seq, message)) = &m.error {
                    return Err(Error::FastPost {
                        seq: *seq,
                        message: message.clone(),
                    });
                }
                m.bytes + data.len() > self.cfg.max_unacked && !m.unacked.is_empty()
            };
            if !full {
                break;
            }
            self.send_pending()?;
            self.wait_progress(deadline)?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        {
            let mut m = lock(&self.shared.m);
            m.bytes += data.len() + 16;
            m.unacked
                .push_back((seq, kind, Bytes::copy_from_slice(data)));
        }
        if seq - self.sent_upto >= self.cfg.records_per_message as u64 {
            self.send_pending()?;
        }
        Ok(seq)
    }

    /// Sends what is queued and waits until every record posted is durable.
    pub fn flush(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            self.send_pending()?;
            {
                let m = lock(&self.shared.m);
                if let Some((seq, message)) = &m.error {
                    return Err(Error::FastPost {
                        seq: *seq,
                        message: message.clone(),
                    });
                }
                if m.acked + 1 >= self.next_seq {
                    return Ok(());
                }
            }
            self.wait_progress(deadline)?;
        }
    }

    /// Waits a little for acknowledgements; reconnects if the session is lost.
    fn wait_progress(&mut self, deadline: Instant) -> Result<()> {
        if Instant::now() >= deadline {
            return Err(Error::TimedOut);
        }
        {
            let m = lock(&self.shared.m);
            let before = m.acked;
            let (m, _) = self
                .shared
                .cv
                .wait_timeout_while(m, Duration::from_millis(50), |m| {
                    m.acked == before && m.error.is_none()
                })
                .unwrap_or_else(|p| p.into_inner());
            drop(m);
        }
        self.ensure_connected();
        Ok(())
    }

    /// A lost session (server restarted, or gone past the resume window): a
    /// new connection, the stream reopened, everything unacknowledged resent.
    fn ensure_connected(&mut self) {
        match self.client.reconnect_if_lost() {
            Ok(true) => {}
            _ => return,
        }
        match self.open_stream() {
            Ok(durable) => {
                self.reconnects += 1;
                self.shared.acked(durable);
                self.sent_upto = lock(&self.shared.m).acked;
            }
            Err(e) => {
                tracing::debug!(err = %e, "FastPost: reopen failed; retrying");
            }
        }
    }

    /// Sends every queued record after `sent_upto`.
    fn send_pending(&mut self) -> Result<()> {
        loop {
            let chunk: Vec<(Kind, Bytes)>;
            let first;
            {
                let m = lock(&self.shared.m);
                // sequence numbers in the queue are consecutive: the first one
                // not sent yet is found by subtraction, not by a walk of the queue
                let start = match m.unacked.front() {
                    None => 0,
                    Some(f) => (self.sent_upto + 1)
                        .saturating_sub(f.0)
                        .min(m.unacked.len() as u64) as usize,
                };
                if start == m.unacked.len() {
                    return Ok(());
                }
                first = m.unacked[start].0;
                chunk = m
                    .unacked
                    .range(start..)
                    .take(self.cfg.records_per_message.max(1))
                    .map(|r| (r.1, r.2.clone()))
                    .collect();
            }
            let n = chunk.len() as u64;
            let msg = Oneway::FastPost {
                stream: self.stream,
                first_seq: first,
                records: chunk,
            };
            match self
                .client
                .connection()
                .send_complete_buffer(cmd::ONEWAY, msg.encode())
            {
                Ok(()) => self.sent_upto = first + n - 1,
                Err(zs_core::Error::Full { .. }) => {
                    // StableIO back-pressure: wait for the server to catch up
                    std::thread::sleep(Duration::from_millis(5));
                    return Ok(());
                }
                Err(_) => {
                    // the session is gone: next wait reconnects and resends
                    return Ok(());
                }
            }
        }
    }
}

impl Drop for FastPost {
    fn drop(&mut self) {
        lock(&self.client.inner.routes.fastposts).remove(&self.stream);
    }
}
