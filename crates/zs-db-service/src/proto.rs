//! The service's payload formats (docs/PROTOCOL.md Part "DB service"): requests,
//! answers, pushes and one-way client messages. All integers little-endian; a
//! string is `u16 len` + UTF-8; a byte string is `u32 len` + bytes. Every decoder
//! checks lengths against what is left and against [`Limits`] before allocating,
//! and rejects trailing bytes.

use bytes::{BufMut, Bytes, BytesMut};
use zs_db::{Kind, Record, RecordRef};

/// Command names registered on the zs-core registry.
pub mod cmd {
    /// Stream call: one request (a DataFrame holding one byte string), one answer.
    pub const REQUEST: &str = "zsdb";
    /// Server → client CompleteBuffer: a [`super::Push`].
    pub const PUSH: &str = "zsdb.push";
    /// Client → server CompleteBuffer: a [`super::Oneway`] (query credit, FastPost).
    pub const ONEWAY: &str = "zsdb.oneway";
}

/// Error codes of refused requests (carried in zs-core error frames).
pub mod errcode {
    /// Malformed request.
    pub const BAD_REQUEST: u32 = 400;
    /// Not logged in, and the service serves logged-in users only.
    pub const UNAUTHORIZED: u32 = 401;
    /// The connection may not do that (or the name is reserved).
    pub const FORBIDDEN: u32 = 403;
    /// No such database, record or query.
    pub const NOT_FOUND: u32 = 404;
    /// The database exists already.
    pub const EXISTS: u32 = 409;
    /// Over a configured limit (queries, sizes).
    pub const LIMIT: u32 = 429;
    /// A procedure gave up (its body aborted; nothing was committed).
    pub const ABORTED: u32 = 422;
    /// The service has ended (its last [`DbService`](crate::DbService) handle
    /// was dropped while a connection still had its commands).
    pub const GONE: u32 = 410;
    /// The store failed.
    pub const STORE: u32 = 500;
    /// A procedure conflicted on every attempt of its redo budget (nothing was
    /// committed; the caller may retry later).
    pub const BUSY: u32 = 503;
}

/// Hard decoding limits (the service passes its configured ones).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest record value in bytes.
    pub max_value: usize,
    /// Most records in one message.
    pub max_records: usize,
    /// Longest filter expression in bytes.
    pub max_filter: usize,
    /// Most query parameters.
    pub max_params: usize,
    /// Largest procedure argument or result in bytes.
    pub max_args: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value: 16 << 20,
            max_records: 65_536,
            max_filter: 16 << 10,
            max_params: 64,
            max_args: 1 << 20,
        }
    }
}

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad payload: {0}")]
pub struct DecodeError(pub String);

fn bad<T>(what: &str) -> Result<T, DecodeError> {
    Err(DecodeError(what.to_string()))
}

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Durability {
    /// After the commit is on disk (fsync; concurrent commits share one).
    Durable = 0,
    /// After the commit is applied (visible to reads) and in the engine's write
    /// buffer; it reaches the disk within the database's group-commit interval
    /// ([`crate::ServiceConfig::group_commit`]) or at the next durable commit.
    Written = 1,
}

impl Durability {
    fn from_u8(b: u8) -> Result<Durability, DecodeError> {
        match b {
            0 => Ok(Durability::Durable),
            1 => Ok(Durability::Written),
            _ => bad("durability"),
        }
    }
}

/// A query parameter value (`param_<name>` in a filter expression).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// null
    Null,
    /// bool
    Bool(bool),
    /// integer
    Int(i64),
    /// float
    Float(f64),
    /// string
    Str(String),
}

/// Which records a query visits.
#[derive(Debug, Clone, PartialEq)]
pub enum Range {
    /// Every record, in id order.
    All,
    /// Ids in `lo..=hi`, in id order (the id is the primary ordered key).
    Ids {
        /// First id (inclusive).
        lo: u64,
        /// Last id (inclusive).
        hi: u64,
    },
    /// Records whose indexed `field` lies in `lo..=hi` (needs a secondary index on
    /// the field); visited in id order.
    Index {
        /// Indexed field.
        field: String,
        /// Lowest value (inclusive), `None` = unbounded.
        lo: Option<Param>,
        /// Highest value (inclusive), `None` = unbounded.
        hi: Option<Param>,
    },
}

/// A query as sent to the server.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpec {
    /// Query id, chosen by the client (unique among its running queries on the
    /// connection), so results never race the answer.
    pub qid: u64,
    /// Database.
    pub db: String,
    /// Which records to visit.
    pub range: Range,
    /// A zs-expr filter over record fields (empty: none).
    pub filter: String,
    /// A filter function registered on the server (empty: none); both filters apply.
    pub function: String,
    /// Named parameters (`param_<name>` in the expression; passed to the function).
    pub params: Vec<(String, Param)>,
    /// Most results (0 = no limit).
    pub limit: u64,
    /// Highest ids first.
    pub reverse: bool,
    /// A batch is sent once it holds this many bytes of record data...
    pub batch_bytes: u32,
    /// ...or this many milliseconds after its first record.
    pub batch_ms: u32,
    /// Batches sent and not yet consumed by the client; the scan pauses at this
    /// many (the client returns credit as it reads).
    pub window: u32,
    /// A zs-expr sort key over record fields and parameters (empty: id order).
    /// With one, the server keeps the `limit` first records by that key (ties
    /// by id; `reverse`: highest key first) and sends them in that order, so a
    /// sorted query needs a limit of at most the server's
    /// `ServiceConfig::max_sorted`.
    pub sort: String,
}

impl QuerySpec {
    /// A full scan of `db` with default batching.
    pub fn new(db: &str) -> QuerySpec {
        QuerySpec {
            qid: 0,
            db: db.to_string(),
            range: Range::All,
            filter: String::new(),
            function: String::new(),
            params: Vec::new(),
            limit: 0,
            reverse: false,
            batch_bytes: 64 << 10,
            batch_ms: 100,
            sort: String::new(),
            window: 4,
        }
    }
}

/// A request (client → server, inside a [`cmd::REQUEST`] stream call).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Opens database `name`; `create`: create it when missing.
    Open {
        /// Name.
        name: String,
        /// Create when missing.
        create: bool,
    },
    /// Closes the engine of `name` (it is reopened on next use).
    Close {
        /// Name.
        name: String,
    },
    /// Names of the databases.
    List,
    /// Writes a compacted copy of `src` as new database `dst`.
    Copy {
        /// Source.
        src: String,
        /// Target (must not exist).
        dst: String,
    },
    /// Compacts `name`.
    Compact {
        /// Name.
        name: String,
    },
    /// Deletes database `name` and its file.
    Remove {
        /// Name.
        name: String,
    },
    /// Inserts a record; answers its id.
    Insert {
        /// Database.
        db: String,
        /// When to answer.
        durability: Durability,
        /// Value kind.
        kind: Kind,
        /// Value.
        data: Bytes,
    },
    /// Replaces record `id`.
    Update {
        /// Database.
        db: String,
        /// When to answer.
        durability: Durability,
        /// Record id.
        id: u64,
        /// Value kind.
        kind: Kind,
        /// Value.
        data: Bytes,
    },
    /// Deletes record `id`; answers whether it existed.
    Delete {
        /// Database.
        db: String,
        /// When to answer.
        durability: Durability,
        /// Record id.
        id: u64,
    },
    /// Reads record `id`.
    Get {
        /// Database.
        db: String,
        /// Record id.
        id: u64,
    },
    /// Starts a query; answers its id. Results come as pushes.
    Query(QuerySpec),
    /// Pauses a running query.
    Pause {
        /// Query id.
        qid: u64,
    },
    /// Resumes a paused query.
    Resume {
        /// Query id.
        qid: u64,
    },
    /// Stops a query (an `End` push with status `Stopped` follows).
    Stop {
        /// Query id.
        qid: u64,
    },
    /// Progress of a query.
    Progress {
        /// Query id.
        qid: u64,
    },
    /// Opens (or resumes) FastPost stream `stream` into `db`; answers the highest
    /// sequence number applied (0: none).
    FastPostOpen {
        /// Database.
        db: String,
        /// Client-chosen stream id (random).
        stream: u64,
    },
    /// Subscribes to the changes of records `lo..=hi` of `db` (client-chosen
    /// `wid`); they come as [`Push::Changes`] in commit order.
    Watch {
        /// Watch id (client-chosen, shares the query id space).
        wid: u64,
        /// Database.
        db: String,
        /// First id (inclusive).
        lo: u64,
        /// Last id (inclusive).
        hi: u64,
    },
    /// Ends a watch.
    Unwatch {
        /// Watch id.
        wid: u64,
    },
    /// Runs procedure `name` registered on the server with `args`; answered with
    /// its result after it committed.
    Call {
        /// The procedure's name.
        name: String,
        /// Its argument bytes (the procedure decodes them).
        args: Bytes,
    },
    /// Creates a secondary index on `field` of `db`.
    CreateIndex {
        /// Database.
        db: String,
        /// Field.
        field: String,
    },
    /// Sets the access `user` has to `db` (`*`: every database / every user);
    /// needs [`crate::Access::Admin`] on `db`.
    Grant {
        /// Database name or `*`.
        db: String,
        /// User name or `*`.
        user: String,
        /// The level.
        access: crate::Access,
    },
    /// The access rules naming `db` or `*` (`*`: every rule); needs
    /// [`crate::Access::Admin`] on `db`. Answered with [`Answer::Rules`].
    Rules {
        /// Database name or `*`.
        db: String,
    },
    /// The figures of `db` (what local `zs db stats` prints); needs
    /// [`crate::Access::Read`] on `db`, as a GET does. Answered with
    /// [`Answer::Stats`].
    Stats {
        /// Database name.
        db: String,
    },
}

/// State of a query as reported by [`Answer::Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryProgress {
    /// Records examined.
    pub scanned: u64,
    /// Records matched.
    pub matched: u64,
    /// Batches sent.
    pub batches: u64,
    /// Batches sent and not yet consumed by the client.
    pub in_flight: u32,
    /// Paused by the client.
    pub paused: bool,
    /// Finished (done, stopped, limit reached or failed).
    pub done: bool,
}

/// An answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Done.
    Ok,
    /// An id (insert, query) or a sequence number (FastPost open).
    Id(u64),
    /// A yes/no (delete).
    Bool(bool),
    /// Database names.
    Names(Vec<String>),
    /// Sizes before and after (compact).
    Sizes(u64, u64),
    /// A record or nothing (get).
    Record(Option<Record>),
    /// Query progress.
    Progress(QueryProgress),
    /// A procedure's result.
    Bytes(Bytes),
    /// Access rules: (database or `*`, user or `*`, access), sorted.
    Rules(Vec<(String, String, crate::Access)>),
    /// A database's figures (stats): records, next id, file bytes, live
    /// bytes, index bytes.
    Stats(zs_db::Stats),
}

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndStatus {
    /// Every record was visited.
    Done = 0,
    /// The limit was reached.
    Limit = 1,
    /// Stopped by the client.
    Stopped = 2,
    /// Failed (the message says why).
    Failed = 3,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Record `id` was inserted or replaced.
    Put(Record),
    /// Record `id` was deleted.
    Delete(u64),
}

/// Server → client messages that are not answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// Results of query `qid`, batch number `seq` (from 0).
    Batch {
        /// Query id.
        qid: u64,
        /// Batch number.
        seq: u64,
        /// Records in order.
        records: Vec<Record>,
    },
    /// Query `qid` ended after `matched` results.
    End {
        /// Query id.
        qid: u64,
        /// How.
        status: EndStatus,
        /// Results sent.
        matched: u64,
        /// Error text (status `Failed`).
        message: String,
    },
    /// The changes of one commit seen by watch `wid` (commits in order).
    Changes {
        /// Watch id.
        wid: u64,
        /// Commit number of this watch (from 0; a gap means changes were lost).
        seq: u64,
        /// The commit's changes in the watched range, in order.
        changes: Vec<Change>,
    },
    /// FastPost stream `stream`: every record up to `seq` is durable.
    FastPostAck {
        /// Stream id.
        stream: u64,
        /// Highest durable sequence number.
        seq: u64,
    },
    /// FastPost stream `stream` failed at `seq` (nothing at or after it is applied).
    FastPostError {
        /// Stream id.
        stream: u64,
        /// First sequence number not applied.
        seq: u64,
        /// Why.
        message: String,
    },
}

/// Client → server one-way messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Oneway {
    /// The client consumed `batches` batches of query `qid` (credit back).
    Credit {
        /// Query id.
        qid: u64,
        /// Batches consumed.
        batches: u32,
    },
    /// FastPost records `first_seq..first_seq + records.len()` of `stream`.
    FastPost {
        /// Stream id (opened with [`Request::FastPostOpen`]).
        stream: u64,
        /// Sequence number of the first record (from 1).
        first_seq: u64,
        /// Kind and value of each record.
        records: Vec<(Kind, Bytes)>,
    },
}

// ---- primitives -------------------------------------------------------------

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16_le(s.len() as u16);
    b.put_slice(s);
}

fn put_bytes(b: &mut BytesMut, s: &[u8]) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s);
}

fn put_param(b: &mut BytesMut, p: &Param) {
    match p {
        Param::Null => b.put_u8(0),
        Param::Bool(v) => {
            b.put_u8(1);
            b.put_u8(*v as u8);
        }
        Param::Int(v) => {
            b.put_u8(2);
            b.put_i64_le(*v);
        }
        Param::Float(v) => {
            b.put_u8(3);
            b.put_f64_le(*v);
        }
        Param::Str(s) => {
            b.put_u8(4);
            put_str(b, s);
        }
    }
}

fn put_opt_param(b: &mut BytesMut, p: &Option<Param>) {
    match p {
        None => b.put_u8(0xff),
        Some(p) => put_param(b, p),
    }
}

/// A bounds-checked reader over a payload.
struct Rd<'a> {
    src: &'a Bytes,
    pos: usize,
}

impl<'a> Rd<'a> {
    fn new(src: &'a Bytes) -> Rd<'a> {
        Rd { src, pos: 0 }
    }
    fn left(&self) -> usize {
        self.src.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return bad("truncated");
        }
        let s = &self.src[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => bad("bool"),
        }
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(str::to_string)
            .or_else(|_| bad("utf-8"))
    }
    fn bytes(&mut self, max: usize) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return bad("value too large");
        }
        if self.left() < n {
            return bad("truncated");
        }
        let b = self.src.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }
    fn kind(&mut self) -> Result<Kind, DecodeError> {
        Kind::from_tag(self.u8()?).map_or_else(|| bad("kind"), Ok)
    }
    fn param_tagged(&mut self, tag: u8) -> Result<Param, DecodeError> {
        Ok(match tag {
            0 => Param::Null,
            1 => Param::Bool(self.bool()?),
            2 => Param::Int(self.u64()? as i64),
            3 => Param::Float(f64::from_bits(self.u64()?)),
            4 => Param::Str(self.str()?),
            _ => return bad("param tag"),
        })
    }
    fn param(&mut self) -> Result<Param, DecodeError> {
        let t = self.u8()?;
        self.param_tagged(t)
    }
    fn opt_param(&mut self) -> Result<Option<Param>, DecodeError> {
        let t = self.u8()?;
        if t == 0xff {
            Ok(None)
        } else {
            self.param_tagged(t).map(Some)
        }
    }
    fn count(&mut self, max: usize, min_each: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_each) > self.left() {
            return bad("count");
        }
        Ok(n)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.left() != 0 {
            return bad("trailing bytes");
        }
        Ok(())
    }
}

// ---- requests ---------------------------------------------------------------

const R_OPEN: u8 = 0x01;
const R_CLOSE: u8 = 0x02;
const R_LIST: u8 = 0x03;
const R_COPY: u8 = 0x04;
const R_COMPACT: u8 = 0x05;
const R_REMOVE: u8 = 0x06;
const R_INDEX: u8 = 0x07;
const R_STATS: u8 = 0x08;
const R_INSERT: u8 = 0x10;
const R_UPDATE: u8 = 0x11;
const R_DELETE: u8 = 0x12;
const R_GET: u8 = 0x13;
const R_QUERY: u8 = 0x20;
const R_PAUSE: u8 = 0x21;
const R_RESUME: u8 = 0x22;
const R_STOP: u8 = 0x23;
const R_PROGRESS: u8 = 0x24;
const R_FP_OPEN: u8 = 0x30;
const R_WATCH: u8 = 0x40;
const R_UNWATCH: u8 = 0x41;
const R_CALL: u8 = 0x50;
const R_GRANT: u8 = 0x60;
const R_RULES: u8 = 0x61;

/// Encodes `Request::Get { db, id }` (the same bytes as [`Request::encode`])
/// in one allocation of the exact size, without an owned name.
pub fn encode_get(db: &str, id: u64) -> Bytes {
    let name = &db.as_bytes()[..db.len().min(u16::MAX as usize)];
    let mut b = BytesMut::with_capacity(1 + 2 + name.len() + 8);
    b.put_u8(R_GET);
    b.put_u16_le(name.len() as u16);
    b.put_slice(name);
    b.put_u64_le(id);
    b.freeze()
}

/// Reads a GET request in place: `(db, id)` borrowed from `src`, or `None`
/// when `src` is not a well-formed GET (the full [`Request::decode`] then
/// answers it, with its error for a malformed one).
pub fn peek_get(src: &[u8]) -> Option<(&str, u64)> {
    let (&tag, rest) = src.split_first()?;
    if tag != R_GET || rest.len() < 2 {
        return None;
    }
    let n = u16::from_le_bytes([rest[0], rest[1]]) as usize;
    let rest = &rest[2..];
    if rest.len() != n + 8 {
        return None;
    }
    let db = std::str::from_utf8(&rest[..n]).ok()?;
    let id = u64::from_le_bytes(rest[n..].try_into().ok()?);
    Some((db, id))
}

/// Encodes `Answer::Record(Some(record))` from borrowed parts (the same bytes
/// as [`Answer::encode`]) in one allocation of the exact size.
pub fn encode_record_answer(id: u64, kind: Kind, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + 8 + 1 + 4 + data.len());
    b.put_u8(6);
    b.put_u64_le(id);
    b.put_u8(kind as u8);
    put_bytes(&mut b, data);
    b.freeze()
}

/// Limits that never refuse (for bytes already checked).
const NO_LIMITS: Limits = Limits {
    max_value: usize::MAX,
    max_records: usize::MAX,
    max_filter: usize::MAX,
    max_params: usize::MAX,
    max_args: usize::MAX,
};

/// The head of an encoded record at the start of `src` (`u64 id, kind,
/// u32 len`): its id, kind and value length, checked against `lim.max_value`
/// and against the bytes there (the value is `src[13..13 + len]`).
#[inline]
fn record_head(src: &[u8], lim: &Limits) -> Result<(u64, Kind, usize), DecodeError> {
    let Some(head) = src.get(..13) else {
        return bad("truncated");
    };
    let id = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    let Some(kind) = Kind::from_tag(head[8]) else {
        return bad("kind");
    };
    let len = u32::from_le_bytes(head[9..13].try_into().unwrap_or_default()) as usize;
    if len > lim.max_value {
        return bad("value too large");
    }
    if src.len() - 13 < len {
        return bad("truncated");
    }
    Ok((id, kind, len))
}

/// Reads the answer to a GET in place: the record borrowed from `src`
/// (`Ok(None)`: no such record). Accepts exactly what [`Answer::decode`]
/// accepts as an [`Answer::Record`] (bounds, kind, `lim.max_value`, no
/// trailing bytes), without copying the value.
pub fn record_answer<'a>(
    src: &'a [u8],
    lim: &Limits,
) -> Result<Option<RecordRef<'a>>, DecodeError> {
    match src.split_first() {
        Some((5, [])) => Ok(None),
        Some((6, rest)) => {
            let (id, kind, len) = record_head(rest, lim)?;
            if rest.len() - 13 != len {
                return bad("trailing bytes");
            }
            Ok(Some(RecordRef {
                id,
                kind,
                data: &rest[13..],
            }))
        }
        Some((5, _)) => bad("trailing bytes"),
        _ => bad("not a record answer"),
    }
}

impl Request {
    /// Encodes the request.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Request::Open { name, create } => {
                b.put_u8(R_OPEN);
                put_str(&mut b, name);
                b.put_u8(*create as u8);
            }
            Request::Close { name } => {
                b.put_u8(R_CLOSE);
                put_str(&mut b, name);
            }
            Request::List => b.put_u8(R_LIST),
            Request::Copy { src, dst } => {
                b.put_u8(R_COPY);
                put_str(&mut b, src);
                put_str(&mut b, dst);
            }
            Request::Compact { name } => {
                b.put_u8(R_COMPACT);
                put_str(&mut b, name);
            }
            Request::Remove { name } => {
                b.put_u8(R_REMOVE);
                put_str(&mut b, name);
            }
            Request::CreateIndex { db, field } => {
                b.put_u8(R_INDEX);
                put_str(&mut b, db);
                put_str(&mut b, field);
            }
            Request::Insert {
                db,
                durability,
                kind,
                data,
            } => {
                b.put_u8(R_INSERT);
                put_str(&mut b, db);
                b.put_u8(*durability as u8);
                b.put_u8(*kind as u8);
                put_bytes(&mut b, data);
            }
            Request::Update {
                db,
                durability,
                id,
                kind,
                data,
            } => {
                b.put_u8(R_UPDATE);
                put_str(&mut b, db);
                b.put_u8(*durability as u8);
                b.put_u64_le(*id);
                b.put_u8(*kind as u8);
                put_bytes(&mut b, data);
            }
            Request::Delete { db, durability, id } => {
                b.put_u8(R_DELETE);
                put_str(&mut b, db);
                b.put_u8(*durability as u8);
                b.put_u64_le(*id);
            }
            Request::Get { db, id } => {
                b.put_u8(R_GET);
                put_str(&mut b, db);
                b.put_u64_le(*id);
            }
            Request::Query(q) => {
                b.put_u8(R_QUERY);
                b.put_u64_le(q.qid);
                put_str(&mut b, &q.db);
                match &q.range {
                    Range::All => b.put_u8(0),
                    Range::Ids { lo, hi } => {
                        b.put_u8(1);
                        b.put_u64_le(*lo);
                        b.put_u64_le(*hi);
                    }
                    Range::Index { field, lo, hi } => {
                        b.put_u8(2);
                        put_str(&mut b, field);
                        put_opt_param(&mut b, lo);
                        put_opt_param(&mut b, hi);
                    }
                }
                put_bytes(&mut b, q.filter.as_bytes());
                put_str(&mut b, &q.function);
                b.put_u32_le(q.params.len() as u32);
                for (k, v) in &q.params {
                    put_str(&mut b, k);
                    put_param(&mut b, v);
                }
                b.put_u64_le(q.limit);
                b.put_u8(q.reverse as u8);
                b.put_u32_le(q.batch_bytes);
                b.put_u32_le(q.batch_ms);
                b.put_u32_le(q.window);
                if !q.sort.is_empty() {
                    // optional trailing field: requests without it stay as they were
                    put_bytes(&mut b, q.sort.as_bytes());
                }
            }
            Request::Pause { qid } => {
                b.put_u8(R_PAUSE);
                b.put_u64_le(*qid);
            }
            Request::Resume { qid } => {
                b.put_u8(R_RESUME);
                b.put_u64_le(*qid);
            }
            Request::Stop { qid } => {
                b.put_u8(R_STOP);
                b.put_u64_le(*qid);
            }
            Request::Progress { qid } => {
                b.put_u8(R_PROGRESS);
                b.put_u64_le(*qid);
            }
            Request::Watch { wid, db, lo, hi } => {
                b.put_u8(R_WATCH);
                b.put_u64_le(*wid);
                put_str(&mut b, db);
                b.put_u64_le(*lo);
                b.put_u64_le(*hi);
            }
            Request::Unwatch { wid } => {
                b.put_u8(R_UNWATCH);
                b.put_u64_le(*wid);
            }
            Request::Call { name, args } => {
                b.put_u8(R_CALL);
                put_str(&mut b, name);
                put_bytes(&mut b, args);
            }
            Request::FastPostOpen { db, stream } => {
                b.put_u8(R_FP_OPEN);
                put_str(&mut b, db);
                b.put_u64_le(*stream);
            }
            Request::Grant { db, user, access } => {
                b.put_u8(R_GRANT);
                put_str(&mut b, db);
                put_str(&mut b, user);
                b.put_u8(*access as u8);
            }
            Request::Rules { db } => {
                b.put_u8(R_RULES);
                put_str(&mut b, db);
            }
            Request::Stats { db } => {
                b.put_u8(R_STATS);
                put_str(&mut b, db);
            }
        }
        b.freeze()
    }

    /// Decodes a request.
    pub fn decode(src: &Bytes, lim: &Limits) -> Result<Request, DecodeError> {
        let mut r = Rd::new(src);
        let req = match r.u8()? {
            R_OPEN => Request::Open {
                name: r.str()?,
                create: r.bool()?,
            },
            R_CLOSE => Request::Close { name: r.str()? },
            R_LIST => Request::List,
            R_COPY => Request::Copy {
                src: r.str()?,
                dst: r.str()?,
            },
            R_COMPACT => Request::Compact { name: r.str()? },
            R_REMOVE => Request::Remove { name: r.str()? },
            R_INDEX => Request::CreateIndex {
                db: r.str()?,
                field: r.str()?,
            },
            R_INSERT => Request::Insert {
                db: r.str()?,
                durability: Durability::from_u8(r.u8()?)?,
                kind: r.kind()?,
                data: r.bytes(lim.max_value)?,
            },
            R_UPDATE => Request::Update {
                db: r.str()?,
                durability: Durability::from_u8(r.u8()?)?,
                id: r.u64()?,
                kind: r.kind()?,
                data: r.bytes(lim.max_value)?,
            },
            R_DELETE => Request::Delete {
                db: r.str()?,
                durability: Durability::from_u8(r.u8()?)?,
                id: r.u64()?,
            },
            R_GET => Request::Get {
                db: r.str()?,
                id: r.u64()?,
            },
            R_QUERY => {
                let qid = r.u64()?;
                let db = r.str()?;
                let range = match r.u8()? {
                    0 => Range::All,
                    1 => Range::Ids {
                        lo: r.u64()?,
                        hi: r.u64()?,
                    },
                    2 => Range::Index {
                        field: r.str()?,
                        lo: r.opt_param()?,
                        hi: r.opt_param()?,
                    },
                    _ => return bad("range"),
                };
                let filter = r.bytes(lim.max_filter)?;
                let filter = String::from_utf8(filter.to_vec()).or_else(|_| bad("utf-8"))?;
                let function = r.str()?;
                let n = r.count(lim.max_params, 3)?;
                let mut params = Vec::with_capacity(n);
                for _ in 0..n {
                    params.push((r.str()?, r.param()?));
                }
                Request::Query(QuerySpec {
                    qid,
                    db,
                    range,
                    filter,
                    function,
                    params,
                    limit: r.u64()?,
                    reverse: r.bool()?,
                    batch_bytes: r.u32()?,
                    batch_ms: r.u32()?,
                    window: r.u32()?,
                    sort: if r.left() > 0 {
                        let s = r.bytes(lim.max_filter)?;
                        let s = String::from_utf8(s.to_vec()).or_else(|_| bad("utf-8"))?;
                        if s.is_empty() {
                            return bad("empty sort key");
                        }
                        s
                    } else {
                        String::new()
                    },
                })
            }
            R_PAUSE => Request::Pause { qid: r.u64()? },
            R_RESUME => Request::Resume { qid: r.u64()? },
            R_STOP => Request::Stop { qid: r.u64()? },
            R_PROGRESS => Request::Progress { qid: r.u64()? },
            R_WATCH => Request::Watch {
                wid: r.u64()?,
                db: r.str()?,
                lo: r.u64()?,
                hi: r.u64()?,
            },
            R_UNWATCH => Request::Unwatch { wid: r.u64()? },
            R_CALL => Request::Call {
                name: r.str()?,
                args: r.bytes(lim.max_args)?,
            },
            R_FP_OPEN => Request::FastPostOpen {
                db: r.str()?,
                stream: r.u64()?,
            },
            R_GRANT => Request::Grant {
                db: r.str()?,
                user: r.str()?,
                access: match crate::Access::from_u8(r.u8()?) {
                    Some(a) => a,
                    None => return bad("access level"),
                },
            },
            R_RULES => Request::Rules { db: r.str()? },
            R_STATS => Request::Stats { db: r.str()? },
            _ => return bad("request code"),
        };
        r.end()?;
        Ok(req)
    }
}

// ---- answers ----------------------------------------------------------------

/// A [`Push::Batch`] encoded record by record straight into its send buffer
/// (the same bytes as [`Push::encode`] of the batch, without the record list).
#[derive(Debug)]
pub struct BatchWriter {
    b: BytesMut,
    n: u32,
}

/// Offset of the record count in an encoded [`Push::Batch`].
const BATCH_COUNT_AT: usize = 1 + 8 + 8;

impl BatchWriter {
    /// An empty batch `seq` of query `qid`, with room for about `capacity` bytes.
    pub fn new(qid: u64, seq: u64, capacity: usize) -> BatchWriter {
        let mut b = BytesMut::with_capacity(capacity + BATCH_COUNT_AT + 4);
        b.put_u8(1);
        b.put_u64_le(qid);
        b.put_u64_le(seq);
        b.put_u32_le(0);
        BatchWriter { b, n: 0 }
    }

    /// Appends `rec` to a batch of query `qid` being built in `buf`, starting
    /// it (with room for about `capacity` bytes) when `buf` is empty: the
    /// encoding a packed zs-db scan ([`zs_db::Query::packed`]) runs on its
    /// worker threads. [`BatchWriter::from_packed`] takes the bytes over.
    pub fn pack(buf: &mut Vec<u8>, qid: u64, capacity: usize, rec: &RecordRef<'_>) {
        if buf.is_empty() {
            buf.reserve(capacity + BATCH_RECORDS_AT);
            buf.put_u8(1);
            buf.put_u64_le(qid);
            buf.put_u64_le(0);
            buf.put_u32_le(0);
        }
        buf.put_u64_le(rec.id);
        buf.put_u8(rec.kind as u8);
        buf.put_u32_le(rec.data.len() as u32);
        buf.put_slice(rec.data);
    }

    /// The batch of `n` records packed into `buf` by [`BatchWriter::pack`]
    /// (no copy).
    pub fn from_packed(buf: Vec<u8>, n: u32) -> BatchWriter {
        BatchWriter {
            b: BytesMut::from(Bytes::from(buf)),
            n,
        }
    }

    /// Appends one record.
    pub fn push(&mut self, rec: &Record) {
        put_record(&mut self.b, rec);
        self.n += 1;
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// True if no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Encoded size so far.
    pub fn bytes(&self) -> usize {
        self.b.len()
    }

    /// Renumbers the batch (the sender numbers batches in the order it sends).
    pub fn set_seq(&mut self, seq: u64) {
        self.b[9..17].copy_from_slice(&seq.to_le_bytes());
    }

    /// Appends the records of `other` (one copy of their encoded bytes).
    pub fn append(&mut self, other: &BatchWriter) {
        self.b.put_slice(&other.b[BATCH_RECORDS_AT..]);
        self.n += other.n;
    }

    /// The encoded push.
    pub fn finish(mut self) -> Bytes {
        self.b[BATCH_COUNT_AT..BATCH_COUNT_AT + 4].copy_from_slice(&self.n.to_le_bytes());
        self.b.freeze()
    }
}

/// One result batch as received, records read in place: the encoded
/// [`Push::Batch`] checked once ([`RecordBatch::parse`]), then iterated as
/// borrowed [`RecordRef`]s without a copy or an allocation per record.
#[derive(Debug, Clone)]
pub struct RecordBatch {
    data: Bytes,
    qid: u64,
    seq: u64,
    n: usize,
}

/// Offset of the first record in an encoded [`Push::Batch`].
const BATCH_RECORDS_AT: usize = BATCH_COUNT_AT + 4;

impl RecordBatch {
    /// Checks an encoded [`Push::Batch`] (every record's bounds, kind and the
    /// `lim.max_value`/`lim.max_records` limits, no trailing bytes).
    pub fn parse(data: Bytes, lim: &Limits) -> Result<RecordBatch, DecodeError> {
        let mut r = Rd::new(&data);
        if r.u8()? != 1 {
            return bad("not a result batch");
        }
        let qid = r.u64()?;
        let seq = r.u64()?;
        let n = r.count(lim.max_records, 13)?;
        // one pass over the records' heads (a tight loop: this check is most
        // of what a reader pays per record)
        let mut rest = data.get(BATCH_RECORDS_AT..).unwrap_or_default();
        for _ in 0..n {
            let (_, _, len) = record_head(rest, lim)?;
            rest = &rest[13 + len..];
        }
        if !rest.is_empty() {
            return bad("trailing bytes");
        }
        Ok(RecordBatch { data, qid, seq, n })
    }

    /// The query it belongs to.
    pub fn qid(&self) -> u64 {
        self.qid
    }

    /// Its number within the query (from 0).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True if it holds no record.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The records, borrowed from the received bytes.
    pub fn iter(&self) -> RecordBatchIter<'_> {
        RecordBatchIter {
            rest: self.data.get(BATCH_RECORDS_AT..).unwrap_or_default(),
            left: self.n,
        }
    }

    /// The records, copied out.
    pub fn to_records(&self) -> Vec<Record> {
        let mut v = Vec::with_capacity(self.n);
        v.extend(self.iter().map(|r| Record {
            id: r.id,
            kind: r.kind,
            data: r.data.to_vec(),
        }));
        v
    }
}

/// The records of a [`RecordBatch`].
#[derive(Debug, Clone)]
pub struct RecordBatchIter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for RecordBatchIter<'a> {
    type Item = RecordRef<'a>;
    fn next(&mut self) -> Option<RecordRef<'a>> {
        if self.left == 0 {
            return None;
        }
        // checked by RecordBatch::parse (so no limit applies here)
        let (id, kind, len) = record_head(self.rest, &NO_LIMITS).ok()?;
        let data = &self.rest[13..13 + len];
        self.rest = &self.rest[13 + len..];
        self.left -= 1;
        Some(RecordRef { id, kind, data })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

fn put_record(b: &mut BytesMut, rec: &Record) {
    b.put_u64_le(rec.id);
    b.put_u8(rec.kind as u8);
    put_bytes(b, &rec.data);
}

fn get_record(r: &mut Rd<'_>, lim: &Limits) -> Result<Record, DecodeError> {
    Ok(Record {
        id: r.u64()?,
        kind: r.kind()?,
        data: r.bytes(lim.max_value)?.to_vec(),
    })
}

impl Answer {
    /// Encodes the answer.
    pub fn encode(&self) -> Bytes {
        let cap = match self {
            Answer::Record(Some(r)) => 14 + r.data.len(),
            Answer::Bytes(v) => 5 + v.len(),
            _ => 32,
        };
        let mut b = BytesMut::with_capacity(cap);
        match self {
            Answer::Ok => b.put_u8(0),
            Answer::Id(v) => {
                b.put_u8(1);
                b.put_u64_le(*v);
            }
            Answer::Bool(v) => {
                b.put_u8(2);
                b.put_u8(*v as u8);
            }
            Answer::Names(v) => {
                b.put_u8(3);
                b.put_u32_le(v.len() as u32);
                for n in v {
                    put_str(&mut b, n);
                }
            }
            Answer::Sizes(x, y) => {
                b.put_u8(4);
                b.put_u64_le(*x);
                b.put_u64_le(*y);
            }
            Answer::Record(None) => b.put_u8(5),
            Answer::Record(Some(rec)) => {
                b.put_u8(6);
                put_record(&mut b, rec);
            }
            Answer::Progress(p) => {
                b.put_u8(7);
                b.put_u64_le(p.scanned);
                b.put_u64_le(p.matched);
                b.put_u64_le(p.batches);
                b.put_u32_le(p.in_flight);
                b.put_u8(p.paused as u8);
                b.put_u8(p.done as u8);
            }
            Answer::Bytes(v) => {
                b.put_u8(8);
                put_bytes(&mut b, v);
            }
            Answer::Rules(v) => {
                b.put_u8(9);
                b.put_u32_le(v.len() as u32);
                for (db, user, access) in v {
                    put_str(&mut b, db);
                    put_str(&mut b, user);
                    b.put_u8(*access as u8);
                }
            }
            Answer::Stats(s) => {
                b.put_u8(10);
                for v in [
                    s.records,
                    s.next_id,
                    s.file_bytes,
                    s.live_bytes,
                    s.index_bytes,
                ] {
                    b.put_u64_le(v);
                }
            }
        }
        b.freeze()
    }

    /// Decodes an answer.
    pub fn decode(src: &Bytes, lim: &Limits) -> Result<Answer, DecodeError> {
        let mut r = Rd::new(src);
        let a = match r.u8()? {
            0 => Answer::Ok,
            1 => Answer::Id(r.u64()?),
            2 => Answer::Bool(r.bool()?),
            3 => {
                let n = r.count(1 << 20, 2)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(r.str()?);
                }
                Answer::Names(v)
            }
            4 => Answer::Sizes(r.u64()?, r.u64()?),
            5 => Answer::Record(None),
            6 => Answer::Record(Some(get_record(&mut r, lim)?)),
            7 => Answer::Progress(QueryProgress {
                scanned: r.u64()?,
                matched: r.u64()?,
                batches: r.u64()?,
                in_flight: r.u32()?,
                paused: r.bool()?,
                done: r.bool()?,
            }),
            8 => Answer::Bytes(r.bytes(lim.max_args)?),
            9 => {
                // each rule takes at least 5 bytes (two empty names and a level)
                let n = r.count(1 << 20, 5)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let (db, user) = (r.str()?, r.str()?);
                    match crate::Access::from_u8(r.u8()?) {
                        Some(a) => v.push((db, user, a)),
                        None => return bad("access level"),
                    }
                }
                Answer::Rules(v)
            }
            10 => Answer::Stats(zs_db::Stats {
                records: r.u64()?,
                next_id: r.u64()?,
                file_bytes: r.u64()?,
                live_bytes: r.u64()?,
                index_bytes: r.u64()?,
            }),
            _ => return bad("answer code"),
        };
        r.end()?;
        Ok(a)
    }
}

// ---- pushes -----------------------------------------------------------------

impl Push {
    /// Encodes the push.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Push::Batch { qid, seq, records } => {
                b.put_u8(1);
                b.put_u64_le(*qid);
                b.put_u64_le(*seq);
                b.put_u32_le(records.len() as u32);
                for rec in records {
                    put_record(&mut b, rec);
                }
            }
            Push::End {
                qid,
                status,
                matched,
                message,
            } => {
                b.put_u8(2);
                b.put_u64_le(*qid);
                b.put_u8(*status as u8);
                b.put_u64_le(*matched);
                put_str(&mut b, message);
            }
            Push::Changes { wid, seq, changes } => {
                b.put_u8(5);
                b.put_u64_le(*wid);
                b.put_u64_le(*seq);
                b.put_u32_le(changes.len() as u32);
                for c in changes {
                    match c {
                        Change::Put(rec) => {
                            b.put_u8(1);
                            put_record(&mut b, rec);
                        }
                        Change::Delete(id) => {
                            b.put_u8(2);
                            b.put_u64_le(*id);
                        }
                    }
                }
            }
            Push::FastPostAck { stream, seq } => {
                b.put_u8(3);
                b.put_u64_le(*stream);
                b.put_u64_le(*seq);
            }
            Push::FastPostError {
                stream,
                seq,
                message,
            } => {
                b.put_u8(4);
                b.put_u64_le(*stream);
                b.put_u64_le(*seq);
                put_str(&mut b, message);
            }
        }
        b.freeze()
    }

    /// Decodes a push.
    pub fn decode(src: &Bytes, lim: &Limits) -> Result<Push, DecodeError> {
        let mut r = Rd::new(src);
        let p = match r.u8()? {
            1 => {
                let qid = r.u64()?;
                let seq = r.u64()?;
                let n = r.count(lim.max_records, 13)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push(get_record(&mut r, lim)?);
                }
                Push::Batch { qid, seq, records }
            }
            2 => Push::End {
                qid: r.u64()?,
                status: match r.u8()? {
                    0 => EndStatus::Done,
                    1 => EndStatus::Limit,
                    2 => EndStatus::Stopped,
                    3 => EndStatus::Failed,
                    _ => return bad("end status"),
                },
                matched: r.u64()?,
                message: r.str()?,
            },
            5 => {
                let wid = r.u64()?;
                let seq = r.u64()?;
                let n = r.count(lim.max_records, 9)?;
                let mut changes = Vec::with_capacity(n);
                for _ in 0..n {
                    changes.push(match r.u8()? {
                        1 => Change::Put(get_record(&mut r, lim)?),
                        2 => Change::Delete(r.u64()?),
                        _ => return bad("change tag"),
                    });
                }
                Push::Changes { wid, seq, changes }
            }
            3 => Push::FastPostAck {
                stream: r.u64()?,
                seq: r.u64()?,
            },
            4 => Push::FastPostError {
                stream: r.u64()?,
                seq: r.u64()?,
                message: r.str()?,
            },
            _ => return bad("push code"),
        };
        r.end()?;
        Ok(p)
    }
}

// ---- one-way ----------------------------------------------------------------

impl Oneway {
    /// Encodes the message.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Oneway::Credit { qid, batches } => {
                b.put_u8(1);
                b.put_u64_le(*qid);
                b.put_u32_le(*batches);
            }
            Oneway::FastPost {
                stream,
                first_seq,
                records,
            } => {
                b.put_u8(2);
                b.put_u64_le(*stream);
                b.put_u64_le(*first_seq);
                b.put_u32_le(records.len() as u32);
                for (k, d) in records {
                    b.put_u8(*k as u8);
                    put_bytes(&mut b, d);
                }
            }
        }
        b.freeze()
    }

    /// Decodes the message.
    pub fn decode(src: &Bytes, lim: &Limits) -> Result<Oneway, DecodeError> {
        let mut r = Rd::new(src);
        let m = match r.u8()? {
            1 => Oneway::Credit {
                qid: r.u64()?,
                batches: r.u32()?,
            },
            2 => {
                let stream = r.u64()?;
                let first_seq = r.u64()?;
                let n = r.count(lim.max_records, 5)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    records.push((r.kind()?, r.bytes(lim.max_value)?));
                }
                Oneway::FastPost {
                    stream,
                    first_seq,
                    records,
                }
            }
            _ => return bad("one-way code"),
        };
        r.end()?;
        Ok(m)
    }
}

/// Wraps a payload for the stream call ([`cmd::REQUEST`]).
pub fn to_frame(payload: Bytes) -> zs_wire::DataFrame {
    zs_wire::DataFrame::new().with(payload)
}

/// The payload of a stream call's DataFrame.
pub fn from_frame(df: &zs_wire::DataFrame) -> Result<Bytes, DecodeError> {
    if df.len() != 1 {
        return bad("expected one byte string");
    }
    let mut r = df.reader();
    r.read_bytes().map_err(|e| DecodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_batches_are_the_bytes_of_pushed_ones() {
        let recs: Vec<Record> = (1..=3u64)
            .map(|i| Record {
                id: i * 10,
                kind: Kind::Json,
                data: vec![b'x'; i as usize],
            })
            .collect();
        let mut w = BatchWriter::new(4, 0, 8);
        let mut buf = Vec::new();
        for r in &recs {
            w.push(r);
            BatchWriter::pack(&mut buf, 4, 64, &r.as_ref());
        }
        let mut p = BatchWriter::from_packed(buf, 3);
        p.set_seq(2);
        w.set_seq(2);
        assert_eq!(p.len(), 3);
        assert_eq!(p.finish(), w.finish());
    }

    #[test]
    fn the_borrowed_record_answer_agrees_with_the_general_decoder() {
        let lim = Limits {
            max_value: 8,
            ..Limits::default()
        };
        let rec = Record {
            id: 9,
            kind: Kind::Json,
            data: b"{}".to_vec(),
        };
        let mut cases = vec![
            Answer::Record(None).encode().to_vec(),
            Answer::Record(Some(rec.clone())).encode().to_vec(),
            encode_record_answer(1, Kind::Raw, &[7; 9]).to_vec(), // over max_value
            Answer::Id(3).encode().to_vec(),
            vec![5, 0],
            vec![],
        ];
        let good = cases[1].clone();
        for cut in 0..good.len() {
            cases.push(good[..cut].to_vec());
        }
        let mut bad_kind = good.clone();
        bad_kind[9] = 200;
        cases.push(bad_kind);
        let mut long = good.clone();
        long.push(0);
        cases.push(long);
        for c in &cases {
            let general = Answer::decode(&Bytes::from(c.clone()), &lim);
            let borrowed = record_answer(c, &lim);
            match (&general, &borrowed) {
                (Ok(Answer::Record(a)), Ok(b)) => assert_eq!(
                    a.as_ref().map(|r| (r.id, r.kind, &r.data[..])),
                    b.map(|r| (r.id, r.kind, r.data)),
                    "{c:?}"
                ),
                (Ok(Answer::Record(_)), Err(_)) => panic!("{c:?}: refused in place"),
                (_, Ok(_)) => panic!("{c:?}: accepted in place only"),
                (_, Err(_)) => {}
            }
        }
        assert_eq!(
            record_answer(&good, &lim).unwrap().unwrap().data,
            b"{}",
            "read in place"
        );
    }

    #[test]
    fn get_fast_path_bytes_match_the_general_codec() {
        for (db, id) in [("kv", 1u64), ("", 0), ("ünï", u64::MAX)] {
            let general = Request::Get { db: db.into(), id }.encode();
            assert_eq!(encode_get(db, id), general);
            assert_eq!(peek_get(&general), Some((db, id)));
        }
        let rec = Record {
            id: 42,
            kind: Kind::Json,
            data: br#"{"a":1}"#.to_vec(),
        };
        let general = Answer::Record(Some(rec.clone())).encode();
        assert_eq!(encode_record_answer(rec.id, rec.kind, &rec.data), general);
        let back = Answer::decode(&general, &Limits::default()).unwrap();
        assert!(matches!(back, Answer::Record(Some(r)) if r == rec));
    }

    #[test]
    fn record_batch_reads_in_place_what_the_writer_wrote() {
        let recs: Vec<Record> = (1..=5u64)
            .map(|i| Record {
                id: i * 3,
                kind: if i % 2 == 0 { Kind::Json } else { Kind::Raw },
                data: vec![i as u8; i as usize * 7],
            })
            .collect();
        let mut w = BatchWriter::new(9, 4, 256);
        for r in &recs {
            w.push(r);
        }
        let bytes = w.finish();
        let lim = Limits::default();
        let b = RecordBatch::parse(bytes.clone(), &lim).unwrap();
        assert_eq!((b.qid(), b.seq(), b.len()), (9, 4, 5));
        assert_eq!(b.to_records(), recs);
        let ids: Vec<u64> = b.iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 6, 9, 12, 15]);
        // appending and renumbering give the batch a single writer would
        let mut a = BatchWriter::new(9, 0, 16);
        let mut b2 = BatchWriter::new(9, 0, 16);
        for (i, r) in recs.iter().enumerate() {
            if i < 2 {
                a.push(r)
            } else {
                b2.push(r)
            }
        }
        a.append(&b2);
        a.set_seq(4);
        assert_eq!(a.len(), 5);
        assert_eq!(a.finish(), bytes);
        // the general decoder agrees
        match Push::decode(&bytes, &lim).unwrap() {
            Push::Batch { records, .. } => assert_eq!(records, recs),
            other => panic!("{other:?}"),
        }
        // every truncation and a trailing byte are refused
        for cut in 0..bytes.len() {
            assert!(
                RecordBatch::parse(bytes.slice(..cut), &lim).is_err(),
                "cut {cut}"
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(RecordBatch::parse(Bytes::from(long), &lim).is_err());
        // a bad kind tag in the third record
        let mut bad_kind = bytes.to_vec();
        let third = BATCH_RECORDS_AT + (13 + 7) + (13 + 14) + 8;
        bad_kind[third] = 0xee;
        assert!(RecordBatch::parse(Bytes::from(bad_kind), &lim).is_err());
        // over the value limit
        let tight = Limits {
            max_value: 20,
            ..Limits::default()
        };
        assert!(RecordBatch::parse(bytes, &tight).is_err());
    }

    #[test]
    fn peek_get_refuses_what_is_not_exactly_a_get() {
        let good = encode_get("kv", 7);
        // truncated, trailing bytes, another request, bad UTF-8, empty
        assert_eq!(peek_get(&good[..good.len() - 1]), None);
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(peek_get(&long), None);
        let list = Request::List.encode();
        assert_eq!(peek_get(&list), None);
        let mut bad = good.to_vec();
        bad[3] = 0xff;
        assert_eq!(peek_get(&bad), None);
        assert_eq!(peek_get(&[]), None);
        assert_eq!(peek_get(&[R_GET, 5]), None);
    }
}
