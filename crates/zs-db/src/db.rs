//! One database: an append-only log file plus an in-memory index id → location.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::{
    self, align_up, FrameHeader, Salt, CHECKPOINT_OFFSETS, FILE_HEADER_LEN, FLAG_COMMIT, FLAG_LZ4,
    FRAME_HEADER_LEN, OP_DELETE, OP_META, OP_PUT,
};
use crate::ids::IdIndex;
use crate::record::{FieldValue, Kind, Record, RecordRef};
use crate::vfs::{FileBackend, LockGuard, Vfs};

/// When a commit is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A commit returns after its frames are written and fsynced.
    Immediate,
    /// Group commit: a commit returns once buffered in memory; a background thread
    /// writes and fsyncs at most every `interval` (and when the write buffer fills).
    Periodic(Duration),
}

impl Durability {
    /// The seed's default: flush about once per second.
    pub const PERIODIC_1S: Durability = Durability::Periodic(Duration::from_secs(1));

    fn to_meta(self) -> String {
        match self {
            Durability::Immediate => "immediate".into(),
            Durability::Periodic(d) => format!("periodic:{}", d.as_millis()),
        }
    }

    /// Parses `immediate` or `periodic:<ms>` (also `periodic` = 1000 ms).
    pub fn parse(s: &str) -> Option<Durability> {
        match s {
            "immediate" => Some(Durability::Immediate),
            "periodic" => Some(Durability::PERIODIC_1S),
            _ => {
                let ms: u64 = s.strip_prefix("periodic:")?.parse().ok()?;
                Some(Durability::Periodic(Duration::from_millis(ms.max(1))))
            }
        }
    }
}

/// Options of one database. `durability` and `compress` are stored in the file and
/// re-used on the next open unless overridden.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Durability mode (default [`Durability::Immediate`]).
    pub durability: Durability,
    /// LZ4-compress values of at least 64 bytes when it saves space (default off).
    pub compress: bool,
    /// Memory budget of the record cache in bytes (default 64 MiB; 0 disables it).
    pub cache_bytes: usize,
    /// Drop the cache after this long without access (default 15 s, as the seed).
    pub idle_evict: Duration,
    /// Periodic mode: write the buffer out once it holds this many bytes (default 4 MiB).
    pub write_buffer: usize,
    /// Largest value accepted by `insert`/`update` and read back whole (default 256 MiB);
    /// larger values go through [`Database::insert_stream`] / [`Database::open_value`].
    pub max_value: u64,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            durability: Durability::Immediate,
            compress: false,
            cache_bytes: 64 << 20,
            idle_evict: Duration::from_secs(15),
            write_buffer: 4 << 20,
            max_value: 256 << 20,
        }
    }
}

/// A region of the file that failed its checks when the database was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptRegion {
    /// First byte of the region.
    pub offset: u64,
    /// Length of the region in bytes.
    pub len: u64,
    /// Frames of incomplete commits dropped with it.
    pub dropped_frames: u64,
}

/// What opening a database found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Live records after recovery.
    pub records: u64,
    /// Bytes cut off the end (a torn or uncommitted tail).
    pub truncated_bytes: u64,
    /// Frames of an uncommitted tail that were rolled back.
    pub rolled_back_frames: u64,
    /// Damaged regions in the middle of the file that were skipped (the rest was read).
    pub corrupt: Vec<CorruptRegion>,
}

/// Figures about a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Live records.
    pub records: u64,
    /// Next id to be allocated.
    pub next_id: u64,
    /// Length of the log, including the unwritten buffer (the file itself may be
    /// longer by its zero-filled preallocated room, docs/STORAGE.md §4).
    pub file_bytes: u64,
    /// Bytes of live frames (the size after compaction, plus the header).
    pub live_bytes: u64,
    /// Approximate heap bytes of the id → location index (it follows the live
    /// records, not the highest id ever allocated).
    pub index_bytes: u64,
}

/// One operation of a [`Batch`].
#[derive(Debug, Clone)]
enum BatchOp {
    Insert(Kind, Vec<u8>),
    Update(u64, Kind, Vec<u8>),
    Delete(u64),
}

/// Several writes committed atomically in one commit.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }
    /// Adds an insert (its id is returned by the commit, in order).
    pub fn insert(&mut self, kind: Kind, data: impl Into<Vec<u8>>) -> &mut Batch {
        self.ops.push(BatchOp::Insert(kind, data.into()));
        self
    }
    /// Adds an update of an existing record.
    pub fn update(&mut self, id: u64, kind: Kind, data: impl Into<Vec<u8>>) -> &mut Batch {
        self.ops.push(BatchOp::Update(id, kind, data.into()));
        self
    }
    /// Adds a delete of an existing record.
    pub fn delete(&mut self, id: u64) -> &mut Batch {
        self.ops.push(BatchOp::Delete(id));
        self
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Location of a live record: frame offset, payload length, kind, flags. `off == 0` = absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) off: u64,
    pub(crate) len: u32,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
}

const LEN_BIG: u32 = u32::MAX;

impl Loc {
    pub(crate) fn present(&self) -> bool {
        self.off != 0
    }
    fn from_header(off: u64, fh: &FrameHeader) -> Loc {
        Loc {
            off,
            len: u32::try_from(fh.len).unwrap_or(LEN_BIG),
            kind: fh.kind,
            flags: fh.flags,
        }
    }
    /// Frame length, when known from the location alone.
    pub(crate) fn frame_len(&self) -> Option<u64> {
        (self.len != LEN_BIG).then(|| align_up(FRAME_HEADER_LEN as u64 + self.len as u64))
    }
}

/// An ordered key of a secondary index.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IndexKey {
    Null,
    Bool(bool),
    Num(OrdF64),
    Str(String),
    Bytes(Vec<u8>),
}
impl Eq for IndexKey {}
impl IndexKey {
    fn rank(&self) -> u8 {
        match self {
            IndexKey::Null => 0,
            IndexKey::Bool(_) => 1,
            IndexKey::Num(_) => 2,
            IndexKey::Str(_) => 3,
            IndexKey::Bytes(_) => 4,
        }
    }
}
impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (IndexKey::Bool(a), IndexKey::Bool(b)) => a.cmp(b),
            (IndexKey::Num(a), IndexKey::Num(b)) => a.0.total_cmp(&b.0),
            (IndexKey::Str(a), IndexKey::Str(b)) => a.cmp(b),
            (IndexKey::Bytes(a), IndexKey::Bytes(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}
impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// f64 ordered by `total_cmp`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OrdF64(pub(crate) f64);
impl PartialEq for OrdF64 {
    fn eq(&self, o: &Self) -> bool {
        self.0.total_cmp(&o.0).is_eq()
    }
}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.0.total_cmp(&o.0))
    }
}

impl IndexKey {
    pub(crate) fn from_field(v: &FieldValue) -> IndexKey {
        match v {
            FieldValue::Null => IndexKey::Null,
            FieldValue::Bool(b) => IndexKey::Bool(*b),
            FieldValue::Int(i) => IndexKey::Num(OrdF64(*i as f64)),
            // -0.0 and 0.0 index as one key
            FieldValue::Float(f) => IndexKey::Num(OrdF64(if *f == 0.0 { 0.0 } else { *f })),
            FieldValue::Str(s) => IndexKey::Str(s.clone()),
            FieldValue::Bytes(b) => IndexKey::Bytes(b.clone()),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct SecIndex {
    tree: BTreeSet<(IndexKey, u64)>,
    by_id: HashMap<u64, IndexKey>,
}

impl SecIndex {
    fn set(&mut self, id: u64, key: Option<IndexKey>) {
        if let Some(old) = self.by_id.remove(&id) {
            self.tree.remove(&(old, id));
        }
        if let Some(k) = key {
            self.tree.insert((k.clone(), id));
            self.by_id.insert(id, k);
        }
    }
    /// Ids whose key is within the bounds, in id order.
    pub(crate) fn range(&self, lo: Bound<&IndexKey>, hi: Bound<&IndexKey>) -> Vec<u64> {
        let lo = match lo {
            Bound::Included(k) => Bound::Included((k.clone(), 0)),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), u64::MAX)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let hi = match hi {
            Bound::Included(k) => Bound::Included((k.clone(), u64::MAX)),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), 0)),
            Bound::Unbounded => Bound::Unbounded,
        };
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) =
            (&lo, &hi)
        {
            if a > b {
                return Vec::new();
            }
        }
        let mut ids: Vec<u64> = self.tree.range((lo, hi)).map(|(_, id)| *id).collect();
        ids.sort_unstable();
        ids
    }
}

pub(crate) struct State {
    pub(crate) file: Arc<dyn FileBackend>,
    pub(crate) ids: IdIndex,
    pub(crate) live: u64,
    pub(crate) live_bytes: u64,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) indexes: BTreeMap<String, SecIndex>,
}

impl State {
    fn new(file: Arc<dyn FileBackend>, ids: IdIndex) -> State {
        let mut st = State {
            file,
            ids: IdIndex::default(),
            live: 0,
            live_bytes: 0,
            meta: BTreeMap::new(),
            indexes: BTreeMap::new(),
        };
        st.set_ids(ids);
        st
    }
    /// Replaces the whole index (recounting the live figures).
    fn set_ids(&mut self, ids: IdIndex) {
        self.live = 0;
        self.live_bytes = 0;
        for (_, l) in ids.iter() {
            self.live += 1;
            self.live_bytes += l.frame_len().unwrap_or(0);
        }
        self.ids = ids;
    }
    pub(crate) fn loc(&self, id: u64) -> Option<Loc> {
        self.ids.get(id)
    }
    fn set_loc(&mut self, id: u64, loc: Option<Loc>) {
        if let Some(old) = self.ids.set(id, loc) {
            self.live -= 1;
            self.live_bytes -= old.frame_len().unwrap_or(0);
        }
        if let Some(l) = loc.filter(Loc::present) {
            self.live += 1;
            self.live_bytes += l.frame_len().unwrap_or(0);
        }
    }
}

struct Writer {
    buf: Vec<u8>,
    buf_start: u64,
    next_id: u64,
    /// Sequence number of the last commit written (see [`Order`]).
    seq: u64,
    last_sync: Instant,
    /// When the buffered commits must be flushed and synced at the latest: set by a
    /// commit with a `Periodic` durability (the database's own or a per-commit
    /// override), cleared by every sync.
    flush_due: Option<Instant>,
    /// Physical end of the file: `[buf_start, alloc_end)` is zero-filled room written
    /// ahead of the log end (see [`prealloc_step`]).
    alloc_end: u64,
}

/// Zero-filled room written ahead of the log end when a small write would grow the
/// file: a quarter of the log size, between 64 KiB and 4 MiB. An fdatasync after an
/// overwrite of already written blocks needs no file-size or extent update, which is
/// what makes durable single-record commits cheap; the scan on open treats an all-zero
/// tail as the end of the log (docs/STORAGE.md §4).
fn prealloc_step(log_end: u64) -> u64 {
    const MIN: u64 = 64 << 10;
    const MAX: u64 = 4 << 20;
    (log_end / 4).clamp(MIN, MAX)
}

/// Smallest piece a commit larger than the write buffer is written out in (the write
/// buffer itself, unless configured smaller than this).
const MIN_WRITE_CHUNK: usize = 64 << 10;

/// Hasher of the cache's record ids: one multiply and a fold instead of SipHash (ids
/// are assigned by the store, not chosen by an attacker; the fold mixes the high bits
/// into the low ones, which pick the bucket, since a shard's ids share `id % 16`).
#[derive(Default, Clone, Copy)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// Commits are written in sequence under the writer lock, then (after their fsync,
/// shared with concurrent committers) applied to the in-memory state in the same
/// sequence, outside the writer lock.
#[derive(Default)]
struct Order {
    /// Sequence number of the last commit applied (or given up after an error).
    applied: u64,
    /// Ids deleted by written but not yet applied commits → their sequence number.
    deleting: HashMap<u64, u64>,
    /// Threads waiting on `order_cv` (a commit wakes them only if there are any: a
    /// futex wake is a syscall, about a tenth of a buffered commit's cost).
    waiters: usize,
}

/// What is durable: `end` (every byte before it survived an fsync) and the synced-end
/// checkpoint recorded in the file header (`ckpt`, in slot `1 - next_slot`).
struct SyncState {
    end: u64,
    ckpt: u64,
    /// When `ckpt` was last written.
    ckpt_at: Instant,
    next_slot: usize,
}

/// The checkpoint slot is rewritten at an fsync once the synced end is this many bytes
/// past the recorded checkpoint, or [`CHECKPOINT_AGE`] after the last slot write,
/// instead of at every fsync: a slot write adds a second block (the header's, far from
/// the log end) to the fdatasync of a single-record commit. Only damage-skipping on
/// open depends on the checkpoint (docs/STORAGE.md §4): bytes after it that are
/// damaged end the log instead of being skipped, so the lag bounds that window.
const CHECKPOINT_STRIDE: u64 = 1 << 20;
/// See [`CHECKPOINT_STRIDE`].
const CHECKPOINT_AGE: Duration = Duration::from_secs(1);

/// The cache warm-up queue: ids of records a bulk commit wrote without copying them
/// into the cache. A background thread (one at a time) reads them back and caches them
/// while the cache has free room, never evicting anything for them.
#[derive(Default)]
struct Warm {
    jobs: std::collections::VecDeque<std::ops::Range<u64>>,
    /// Ids in `jobs` (bounded by [`WARM_MAX_IDS`]).
    queued: u64,
    running: bool,
}

/// At most this many ids wait for the warm-up (more are simply not warmed).
const WARM_MAX_IDS: u64 = 1 << 24;
/// Ids the warm-up handles per step (one state lookup, one read per run of frames).
const WARM_STEP: u64 = 4096;

/// What [`Inner::cache_fill`] did.
#[derive(PartialEq)]
enum Fill {
    Inserted,
    Present,
    Full,
}

struct CacheShard {
    map: HashMap<u64, (Kind, Arc<[u8]>, u64), IdHash>,
    bytes: usize,
    /// Recency clock of this shard (eviction compares entries of one shard only, so a
    /// counter under the shard's lock replaces a process-wide atomic per read).
    tick: u64,
}

impl CacheShard {
    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

pub(crate) struct Inner {
    pub(crate) name: String,
    file_name: String,
    vfs: Arc<dyn Vfs>,
    pub(crate) opts: DbOptions,
    /// The frame checksum salt of the file (kept by compaction).
    pub(crate) salt: Salt,
    pub(crate) state: RwLock<State>,
    writer: Mutex<Writer>,
    flushed_end: AtomicU64,
    /// What is durable, and the checkpoint of it in the header. Lock order: writer,
    /// then synced, then state.
    synced: Mutex<SyncState>,
    order: Mutex<Order>,
    order_cv: Condvar,
    poisoned: AtomicBool,
    /// Set by [`Database::close`] (or when the last handle dropped): every operation fails.
    closed: AtomicBool,
    /// The single-writer lock (`<name>.zdb.lock`), released on close or abandon.
    lock: Mutex<Option<LockGuard>>,
    cache: Vec<Mutex<CacheShard>>,
    /// Set by every access, cleared by the maintenance thread, which then records the
    /// time in `last_access_ms`: an access costs no clock read.
    accessed: AtomicBool,
    opened: Instant,
    last_access_ms: AtomicU64,
    report: OpenReport,
    compacting: Mutex<()>,
    stop_tx: Mutex<Option<crossbeam::channel::Sender<()>>>,
    /// Records written by bulk commits without entering the cache, for the warm-up.
    warm: Mutex<Warm>,
    /// Odd while a commit applies its changes, moved on by two per commit (see
    /// [`Database::change_seq`]).
    changes: AtomicU64,
}

/// A handle to an open database (cheap to clone; all clones share one engine). The
/// engine closes when the last clone (or an open [`QueryHandle`] / [`Cursor`]) is
/// dropped, or at once with [`Database::close`].
///
/// [`QueryHandle`]: crate::QueryHandle
#[derive(Clone)]
pub struct Database {
    pub(crate) inner: Arc<Inner>,
    /// Closes the engine when the last handle is dropped (internal threads hold only
    /// `Arc<Inner>`, so closing does not wait for them).
    _handle: Arc<HandleGuard>,
}

struct HandleGuard(Arc<Inner>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        let _ = self.0.close();
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.inner.name)
            .finish()
    }
}

const CACHE_SHARDS: usize = 16;
const CACHE_MAX_VALUE: usize = 64 << 10;
const READ_CHUNK: usize = 1 << 20;
const MAX_META: u64 = 64 << 10;

pub(crate) fn rlock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn wlock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn mlock<T>(l: &Mutex<T>) -> MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// Name of the file holding database `name`.
pub fn file_name(name: &str) -> String {
    format!("{name}.zdb")
}
pub(crate) fn tmp_name(name: &str) -> String {
    format!("{name}.zdb.tmp")
}
/// Name of the lock file of database `name` (never removed: removing a lock file
/// races with a process that opened it just before).
pub(crate) fn lock_name(name: &str) -> String {
    format!("{name}.zdb.lock")
}

/// Takes the single-writer lock of database `name`.
pub(crate) fn lock_db(vfs: &dyn Vfs, name: &str) -> Result<LockGuard> {
    vfs.try_lock(&lock_name(name)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Error::Locked {
                name: name.to_string(),
            }
        } else {
            Error::Io {
                op: "lock",
                source: e,
            }
        }
    })
}

/// Frame as found by the log scanner.
pub(crate) struct ScannedFrame {
    pub(crate) off: u64,
    pub(crate) fh: FrameHeader,
    pub(crate) meta: Option<Vec<u8>>,
}

pub(crate) struct ScanOutcome {
    pub(crate) good_end: u64,
    pub(crate) corrupt: Vec<CorruptRegion>,
    pub(crate) rolled_back: u64,
}

/// Sequential reader with a window, for scanning.
struct Window<'a> {
    file: &'a dyn FileBackend,
    end: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    /// `len` bytes at `off`; an `UnexpectedEof` error if they do not lie before `end`.
    fn get(&mut self, off: u64, len: usize) -> std::io::Result<&[u8]> {
        let want_end = off
            .checked_add(len as u64)
            .filter(|&e| e <= self.end)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        if off < self.start || want_end > self.start + self.buf.len() as u64 {
            let want = (len.max(READ_CHUNK) as u64).min(self.end - off) as usize;
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.start = off;
        }
        let s = (off - self.start) as usize;
        Ok(&self.buf[s..s + len])
    }

    /// True if every byte of `[off, end)` is zero (the preallocated room after the log).
    fn zero_from(&mut self, mut off: u64) -> std::io::Result<bool> {
        while off < self.end {
            let n = (self.end - off).min(READ_CHUNK as u64) as usize;
            if self.get(off, n)?.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            off += n as u64;
        }
        Ok(true)
    }

    /// Decodes and fully verifies the frame at `off` lying before `bound`, or `None`
    /// if invalid. With a `budget`, checksumming the payload costs its length out of
    /// it; a frame whose length exceeds what is left empties it and counts as invalid.
    fn frame(
        &mut self,
        off: u64,
        salt: &Salt,
        id_limit: u64,
        bound: u64,
        budget: Option<&mut u64>,
    ) -> std::io::Result<Option<ScannedFrame>> {
        let bound = bound.min(self.end);
        if off
            .checked_add(FRAME_HEADER_LEN as u64)
            .is_none_or(|e| e > bound)
        {
            return Ok(None);
        }
        let hdr: [u8; FRAME_HEADER_LEN] = match self.get(off, FRAME_HEADER_LEN)?.try_into() {
            Ok(h) => h,
            Err(_) => return Ok(None),
        };
        let room = bound - off - FRAME_HEADER_LEN as u64;
        let Some(fh) = FrameHeader::decode(&hdr, room) else {
            return Ok(None);
        };
        if fh.id > id_limit || (fh.op == OP_META && fh.len > MAX_META) {
            return Ok(None);
        }
        if fh.frame_len() > bound - off {
            return Ok(None); // padding cut off: a torn write
        }
        if let Some(b) = budget {
            if fh.len > *b {
                *b = 0;
                return Ok(None);
            }
            *b -= fh.len;
        }
        let pstart = off + FRAME_HEADER_LEN as u64;
        let ok = if fh.len <= READ_CHUNK as u64 {
            let payload = self.get(pstart, fh.len as usize)?;
            fh.check(salt, &hdr, payload)
        } else {
            let mut h = salt.hasher();
            h.update(&hdr[4..]);
            let mut pos = 0u64;
            let mut chunk = vec![0u8; READ_CHUNK];
            while pos < fh.len {
                let n = (fh.len - pos).min(READ_CHUNK as u64) as usize;
                self.file.read_exact_at(&mut chunk[..n], pstart + pos)?;
                h.update(&chunk[..n]);
                pos += n as u64;
            }
            h.finalize() == fh.crc
        };
        if !ok {
            return Ok(None);
        }
        let meta = if fh.op == OP_META {
            Some(self.get(pstart, fh.len as usize)?.to_vec())
        } else {
            None
        };
        Ok(Some(ScannedFrame { off, fh, meta }))
    }
}

/// Scans frames in `[start, end)`, calling `apply` with each complete commit.
///
/// `checkpoint` is the synced end recorded in the header (a commit boundary). Before
/// it, an invalid frame is damage of durable data: the scan looks for the next valid
/// frame with index 0 (ending before the checkpoint, or at the checkpoint itself) and
/// reports the bytes skipped as a damaged region. From the checkpoint on, the first
/// invalid frame (or broken commit) ends the log: later bytes are never searched for
/// frames, so only a prefix of the commits written after the last sync survives.
/// The search costs at most one extra pass over the file (bytes checksummed while
/// searching are bounded by the file length; when that budget is spent the search
/// goes straight to the checkpoint), so the scan is linear in the file size.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan_log(
    file: &dyn FileBackend,
    salt: &Salt,
    start: u64,
    end: u64,
    checkpoint: u64,
    id_limit: u64,
    apply: &mut dyn FnMut(&[ScannedFrame]),
) -> std::io::Result<ScanOutcome> {
    let mut w = Window {
        file,
        end,
        start: 0,
        buf: Vec::new(),
    };
    let mut pos = start;
    let mut pending: Vec<ScannedFrame> = Vec::new();
    let mut group_start = start;
    let mut out = ScanOutcome {
        good_end: start,
        corrupt: Vec::new(),
        rolled_back: 0,
    };
    let mut search_budget = (end - start.min(end)).saturating_add(READ_CHUNK as u64);
    while pos < end {
        match w.frame(pos, salt, id_limit, end, None)? {
            Some(f) if f.fh.index as usize == pending.len() => {
                let commit = f.fh.flags & FLAG_COMMIT != 0;
                pos += f.fh.frame_len();
                pending.push(f);
                if commit {
                    apply(&pending);
                    pending.clear();
                    out.good_end = pos;
                    group_start = pos;
                }
            }
            // after the synced end the first invalid frame is the end of the log
            _ if pos >= checkpoint => break,
            found => {
                // damage before the synced end: find the next frame that starts a commit
                let mut q = match &found {
                    Some(f) if f.fh.index == 0 => pos,
                    Some(f) => pos + f.fh.frame_len(),
                    None => pos + format::ALIGN,
                };
                let next = loop {
                    if q > checkpoint || q >= end {
                        break None;
                    }
                    if q < checkpoint && search_budget == 0 {
                        q = checkpoint; // the budget is spent: the checkpoint is a boundary
                        continue;
                    }
                    let found = if q < checkpoint {
                        w.frame(q, salt, id_limit, checkpoint, Some(&mut search_budget))?
                    } else {
                        w.frame(q, salt, id_limit, end, None)?
                    };
                    match found {
                        Some(f) if f.fh.index == 0 => break Some(q),
                        _ => q += format::ALIGN,
                    }
                };
                match next {
                    Some(q) => {
                        out.corrupt.push(CorruptRegion {
                            offset: group_start,
                            len: q - group_start,
                            dropped_frames: pending.len() as u64,
                        });
                        pending.clear();
                        pos = q;
                        group_start = q;
                    }
                    None => break,
                }
            }
        }
    }
    out.rolled_back = pending.len() as u64;
    Ok(out)
}

fn apply_frames(st: &mut State, next_id: &mut u64, frames: &[ScannedFrame]) {
    for f in frames {
        match f.fh.op {
            OP_PUT => st.set_loc(f.fh.id, Some(Loc::from_header(f.off, &f.fh))),
            OP_DELETE => st.set_loc(f.fh.id, None),
            _ => {
                if let Some(m) = &f.meta {
                    if let Ok(s) = std::str::from_utf8(m) {
                        if let Some((k, v)) = s.split_once('=') {
                            if v.is_empty() {
                                st.meta.remove(k);
                            } else {
                                st.meta.insert(k.to_string(), v.to_string());
                            }
                        }
                    }
                }
            }
        }
        if f.fh.id >= *next_id {
            *next_id = f.fh.id.saturating_add(1);
        }
    }
}

/// Reads and verifies one frame's payload (decompressed when needed).
pub(crate) fn read_payload(
    file: &dyn FileBackend,
    salt: &Salt,
    loc: Loc,
    max_value: u64,
) -> Result<Vec<u8>> {
    let corrupt = |reason: &str| Error::Corrupt {
        offset: loc.off,
        reason: reason.to_string(),
    };
    let len = match loc.frame_len() {
        Some(_) => loc.len as u64,
        None => {
            return Err(Error::TooLarge {
                what: "value",
                len: u64::from(u32::MAX),
                max: max_value,
            })
        }
    };
    if len > max_value {
        return Err(Error::TooLarge {
            what: "value",
            len,
            max: max_value,
        });
    }
    let mut buf = vec![0u8; FRAME_HEADER_LEN + len as usize];
    file.read_exact_at(&mut buf, loc.off)
        .map_err(Error::io("read"))?;
    let fh = FrameHeader::decode(&buf, len).ok_or_else(|| corrupt("bad frame header"))?;
    if fh.len != len || fh.op != OP_PUT {
        return Err(corrupt("frame does not match the index"));
    }
    if !fh.check_frame(salt, &buf) {
        return Err(corrupt("checksum mismatch"));
    }
    buf.drain(..FRAME_HEADER_LEN);
    decode_payload(loc.off, &fh, buf, max_value)
}

/// Undoes compression of a verified payload.
pub(crate) fn decode_payload(
    off: u64,
    fh: &FrameHeader,
    payload: Vec<u8>,
    max_value: u64,
) -> Result<Vec<u8>> {
    if fh.flags & FLAG_LZ4 == 0 {
        return Ok(payload);
    }
    let raw = fh.raw_len as u64;
    if raw > max_value || raw > payload.len() as u64 * 255 + 16 {
        return Err(Error::Corrupt {
            offset: off,
            reason: "implausible uncompressed length".into(),
        });
    }
    lz4_flex::block::decompress(&payload, raw as usize).map_err(|e| Error::Corrupt {
        offset: off,
        reason: format!("lz4: {e}"),
    })
}

impl Database {
    /// Creates a new database `name` in `vfs` (error [`Error::AlreadyExists`] if it
    /// exists, also against a concurrent creator: the file is built as `N.zdb.tmp`
    /// under the database's lock and then moved into place without ever replacing an
    /// existing `N.zdb`).
    pub fn create(vfs: Arc<dyn Vfs>, name: &str, opts: DbOptions) -> Result<Database> {
        crate::store::check_name(name)?;
        let fname = file_name(name);
        let exists = |vfs: &dyn Vfs| vfs.exists(&fname).map_err(Error::io("create"));
        let guard = match lock_db(&*vfs, name) {
            Ok(g) => g,
            // open elsewhere: it exists (or is being created, which says Locked)
            Err(Error::Locked { .. }) if exists(&*vfs)? => {
                return Err(Error::AlreadyExists(name.to_string()))
            }
            Err(e) => return Err(e),
        };
        if exists(&*vfs)? {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        let tmp = tmp_name(name);
        let f = vfs.open(&tmp, true).map_err(Error::io("create"))?;
        let salt = Salt::random();
        let mut bytes = format::encode_file_header(1, &salt, FILE_HEADER_LEN).to_vec();
        let metas = [
            ("durability", opts.durability.to_meta()),
            ("compress", opts.compress.to_string()),
        ];
        for (k, v) in metas {
            let p = format!("{k}={v}");
            format::encode_frame(
                &mut bytes,
                &salt,
                OP_META,
                0,
                FLAG_COMMIT,
                0,
                0,
                0,
                p.as_bytes(),
            );
        }
        // the whole file is synced before it becomes visible: its checkpoint is its end
        let end = bytes.len() as u64;
        bytes[CHECKPOINT_OFFSETS[0] as usize..][..format::CHECKPOINT_LEN]
            .copy_from_slice(&format::encode_checkpoint(&salt, end));
        let written = f
            .write_all_at(&bytes, 0)
            .and_then(|_| f.sync_data())
            .map_err(Error::io("create"));
        drop(f);
        if let Err(e) = written {
            let _ = vfs.remove(&tmp);
            return Err(e);
        }
        match vfs.rename_new(&tmp, &fname) {
            Ok(()) => {}
            Err(e) => {
                let _ = vfs.remove(&tmp);
                return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists(name.to_string())
                } else {
                    Error::Io {
                        op: "create",
                        source: e,
                    }
                });
            }
        }
        vfs.sync_dir().map_err(Error::io("create"))?;
        Database::open_locked(vfs, name, Some(opts), guard)
    }

    /// Opens an existing database, recovering from a crash: the log ends at the first
    /// invalid frame after the synced-end checkpoint (a torn or uncommitted tail is
    /// rolled back and truncated); damaged regions before the checkpoint are skipped
    /// and listed in [`Database::open_report`]. Stored durability/compression settings
    /// are used. Fails with [`Error::Locked`] while another handle or process has it open.
    pub fn open(vfs: Arc<dyn Vfs>, name: &str) -> Result<Database> {
        Database::open_inner(vfs, name, None)
    }

    /// Opens an existing database with explicit options (they replace the stored ones).
    pub fn open_with(vfs: Arc<dyn Vfs>, name: &str, opts: DbOptions) -> Result<Database> {
        Database::open_inner(vfs, name, Some(opts))
    }

    fn open_inner(vfs: Arc<dyn Vfs>, name: &str, opts: Option<DbOptions>) -> Result<Database> {
        crate::store::check_name(name)?;
        // the lock first: a `N.zdb.tmp` is then a leftover, not another engine's work
        let guard = lock_db(&*vfs, name)?;
        Database::open_locked(vfs, name, opts, guard)
    }

    fn open_locked(
        vfs: Arc<dyn Vfs>,
        name: &str,
        opts: Option<DbOptions>,
        guard: LockGuard,
    ) -> Result<Database> {
        let fname = file_name(name);
        let tmp = tmp_name(name);
        if vfs.exists(&tmp).unwrap_or(false) {
            // an interrupted create, compaction or copy: the original file is intact
            vfs.remove(&tmp).map_err(Error::io("open"))?;
        }
        let file = match vfs.open(&fname, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSuchDatabase(name.to_string()))
            }
            Err(e) => {
                return Err(Error::Io {
                    op: "open",
                    source: e,
                })
            }
        };
        let flen = file.len().map_err(Error::io("open"))?;
        let mut hdr = vec![0u8; flen.min(FILE_HEADER_LEN) as usize];
        file.read_exact_at(&mut hdr, 0).map_err(Error::io("open"))?;
        let header = format::decode_file_header(name, &hdr)?;
        let salt = header.salt;
        let id_floor = header.id_floor.max(1);
        let id_limit = id_floor.saturating_add(flen / FRAME_HEADER_LEN as u64 + 1);
        let mut st = State::new(file.clone(), IdIndex::default());
        let mut next_id = id_floor;
        let outcome = scan_log(
            &*file,
            &salt,
            FILE_HEADER_LEN,
            flen,
            header.checkpoint,
            id_limit,
            &mut |frames| apply_frames(&mut st, &mut next_id, frames),
        )
        .map_err(Error::io("open"))?;
        st.ids.rebuild();
        // an all-zero tail is preallocated room, kept; anything else after the last
        // complete commit is a torn tail, cut off
        let zero_tail = outcome.good_end < flen
            && Window {
                file: &*file,
                end: flen,
                start: 0,
                buf: Vec::new(),
            }
            .zero_from(outcome.good_end)
            .map_err(Error::io("open"))?;
        let flen_kept = if zero_tail { flen } else { outcome.good_end };
        let mut report = OpenReport {
            records: st.live,
            truncated_bytes: flen - flen_kept,
            rolled_back_frames: outcome.rolled_back,
            corrupt: outcome.corrupt,
        };
        if flen_kept < flen {
            file.set_len(outcome.good_end)
                .map_err(Error::io("truncate torn tail"))?;
        }
        let stored = st.meta.clone();
        let mut opts = opts.unwrap_or_else(|| {
            let mut o = DbOptions::default();
            if let Some(d) = stored.get("durability").and_then(|s| Durability::parse(s)) {
                o.durability = d;
            }
            o.compress = stored.get("compress").map(|s| s == "true").unwrap_or(false);
            o
        });
        opts.write_buffer = opts.write_buffer.max(4096);
        let end = outcome.good_end;
        let (mut ckpt, mut next_slot) = (
            header.checkpoint,
            match header.checkpoint_slot {
                Some(0) => 1,
                _ => 0,
            },
        );
        if ckpt > end {
            // the file lost bytes the checkpoint called durable (or recovery cut
            // damaged ones): record the new end in both slots (synced just below)
            for off in CHECKPOINT_OFFSETS {
                file.write_all_at(&format::encode_checkpoint(&salt, end), off)
                    .map_err(Error::io("open"))?;
            }
            (ckpt, next_slot) = (end, 0);
        }
        // what was read may still sit only in the page cache (the last writer was
        // killed): make it durable before anything counts it as synced
        file.sync_data().map_err(Error::io("open"))?;
        let index_fields: Vec<String> = st
            .meta
            .keys()
            .filter_map(|k| k.strip_prefix("index.").map(str::to_string))
            .collect();
        let mut inner = Inner {
            name: name.to_string(),
            file_name: fname,
            vfs,
            opts,
            salt,
            state: RwLock::new(st),
            writer: Mutex::new(Writer {
                buf: Vec::new(),
                buf_start: end,
                next_id,
                seq: 0,
                last_sync: Instant::now(),
                flush_due: None,
                alloc_end: flen_kept,
            }),
            flushed_end: AtomicU64::new(end),
            synced: Mutex::new(SyncState {
                end,
                ckpt,
                ckpt_at: Instant::now(),
                next_slot,
            }),
            order: Mutex::new(Order::default()),
            order_cv: Condvar::new(),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            lock: Mutex::new(Some(guard)),
            cache: (0..CACHE_SHARDS)
                .map(|_| {
                    Mutex::new(CacheShard {
                        map: HashMap::default(),
                        bytes: 0,
                        tick: 0,
                    })
                })
                .collect(),
            accessed: AtomicBool::new(false),
            opened: Instant::now(),
            last_access_ms: AtomicU64::new(0),
            report: OpenReport::default(),
            compacting: Mutex::new(()),
            stop_tx: Mutex::new(None),
            warm: Mutex::new(Warm::default()),
            changes: AtomicU64::new(0),
        };
        for f in index_fields {
            inner.build_index(&f)?;
        }
        report.records = rlock(&inner.state).live;
        inner.report = report;
        let inner = Arc::new(inner);
        let db = Database {
            inner: inner.clone(),
            _handle: Arc::new(HandleGuard(inner)),
        };
        db.start_maintenance();
        Ok(db)
    }

    fn start_maintenance(&self) {
        // the channel wakes the thread early (a commit set an earlier flush deadline);
        // dropping the sender stops it
        let (tx, rx) = crossbeam::channel::bounded::<()>(1);
        *mlock(&self.inner.stop_tx) = Some(tx);
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let tick = match self.inner.opts.durability {
            Durability::Periodic(d) => d.min(Duration::from_secs(1)),
            Durability::Immediate => Duration::from_secs(1),
        }
        .max(Duration::from_millis(1));
        let _ = std::thread::Builder::new()
            .name(format!("zs-db-{}", self.inner.name))
            .spawn(move || {
                let mut wait = tick;
                loop {
                    match rx.recv_timeout(wait) {
                        Ok(()) | Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
                        Err(crossbeam::channel::RecvTimeoutError::Disconnected) => return,
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    wait = inner.maintain(tick);
                }
            });
    }

    /// What recovery found when this database was opened.
    pub fn open_report(&self) -> &OpenReport {
        &self.inner.report
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The options in force.
    pub fn options(&self) -> &DbOptions {
        &self.inner.opts
    }

    /// Inserts a record, returning its new id.
    pub fn insert(&self, kind: Kind, data: &[u8]) -> Result<u64> {
        self.inner.check_value(data.len() as u64)?;
        let ids = self
            .inner
            .commit_ops(vec![OpRef::Insert(kind, data)], None)?;
        Ok(ids[0])
    }

    /// Replaces the record `id` (error [`Error::NotFound`] if it does not exist).
    pub fn update(&self, id: u64, kind: Kind, data: &[u8]) -> Result<()> {
        self.inner.check_value(data.len() as u64)?;
        self.inner
            .commit_ops(vec![OpRef::Update(id, kind, data)], None)
            .map(|_| ())
    }

    /// Deletes the record `id`; `false` if there was none.
    pub fn delete(&self, id: u64) -> Result<bool> {
        match self.inner.commit_ops(vec![OpRef::Delete(id)], None) {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Commits a batch atomically with the database's durability; returns the ids of
    /// its inserts in order.
    pub fn commit(&self, batch: &Batch) -> Result<Vec<u64>> {
        self.commit_with(batch, None)
    }

    /// Commits a batch, overriding the durability for this commit: `Immediate` returns
    /// after an fsync on any database; `Periodic(d)` returns once buffered and is written
    /// and fsynced within `d` (by the maintenance thread, on an `Immediate` database
    /// too), or earlier by a later `Immediate` commit, a sync or a close.
    pub fn commit_with(&self, batch: &Batch, durability: Option<Durability>) -> Result<Vec<u64>> {
        let mut ops = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            ops.push(match op {
                BatchOp::Insert(k, d) => {
                    self.inner.check_value(d.len() as u64)?;
                    OpRef::Insert(*k, d)
                }
                BatchOp::Update(id, k, d) => {
                    self.inner.check_value(d.len() as u64)?;
                    OpRef::Update(*id, *k, d)
                }
                BatchOp::Delete(id) => OpRef::Delete(*id),
            });
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let res = self.inner.commit_ops(ops, durability);
        self.warm_up();
        res
    }

    /// Starts the cache warm-up thread if a bulk commit left records to warm and none
    /// is running.
    fn warm_up(&self) {
        {
            let mut warm = mlock(&self.inner.warm);
            if warm.jobs.is_empty() || warm.running {
                return;
            }
            warm.running = true;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name(format!("zs-db-warm-{}", self.inner.name))
            .spawn(move || loop {
                let Some(inner) = weak.upgrade() else { return };
                let more = match inner.warm_next() {
                    Some(ids) => inner.warm_step(ids),
                    None => false,
                };
                if !more {
                    let mut warm = mlock(&inner.warm);
                    if !warm.jobs.is_empty() && inner.check_open().is_ok() && !inner.cache_full() {
                        continue; // queued while this step ran
                    }
                    warm.jobs.clear();
                    warm.queued = 0;
                    warm.running = false;
                    return;
                }
            });
        if spawned.is_err() {
            let mut warm = mlock(&self.inner.warm);
            warm.jobs.clear();
            warm.queued = 0;
            warm.running = false;
        }
    }

    /// Reads record `id`.
    pub fn get(&self, id: u64) -> Result<Option<Record>> {
        self.inner.get(id)
    }

    /// Reads record `id` only if that needs no file read (for callers that must
    /// not block, such as an event loop): `Some(Some(record))` from the cache,
    /// `Some(None)` when there is no such record, `None` when the record must be
    /// read from the file (call [`Database::get`]) or the database is closed.
    pub fn get_cached(&self, id: u64) -> Option<Option<Record>> {
        self.inner.get_cached(id)
    }

    /// [`Database::get_cached`] without copying the value out of the cache:
    /// `Some(Some(f(kind, value)))` for a cached record (`f` runs under the
    /// cache shard's lock: keep it short), `Some(None)` when there is no such
    /// record, `None` when it must be read from the file.
    pub fn get_cached_with<R>(
        &self,
        id: u64,
        f: impl FnOnce(Kind, &[u8]) -> R,
    ) -> Option<Option<R>> {
        self.inner.check_open().ok()?;
        self.inner.touch();
        if self.inner.opts.cache_bytes > 0 {
            let mut s = mlock(self.inner.shard(id));
            let tick = s.tick();
            if let Some(e) = s.map.get_mut(&id) {
                e.2 = tick;
                return Some(Some(f(e.0, &e.1)));
            }
        }
        match rlock(&self.inner.state).loc(id) {
            None => Some(None),
            Some(_) => None,
        }
    }

    /// A sequence number of the database's changes, for caches kept outside
    /// it: odd while a commit is applying its changes, and two more after each
    /// commit applied (before the commit returns). A copy of a record read
    /// while the number was even and the same before and after the read is
    /// current for as long as the number stays the same; no lock is taken.
    pub fn change_seq(&self) -> u64 {
        self.inner.changes.load(Ordering::Acquire)
    }

    /// True if record `id` exists.
    pub fn contains(&self, id: u64) -> bool {
        rlock(&self.inner.state).loc(id).is_some()
    }

    /// Number of live records.
    pub fn len(&self) -> u64 {
        rlock(&self.inner.state).live
    }

    /// True if there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sizes and counters.
    pub fn stats(&self) -> Stats {
        let w = mlock(&self.inner.writer);
        let st = rlock(&self.inner.state);
        Stats {
            records: st.live,
            next_id: w.next_id,
            file_bytes: w.buf_start + w.buf.len() as u64,
            live_bytes: FILE_HEADER_LEN + st.live_bytes,
            index_bytes: st.ids.heap_bytes() as u64,
        }
    }

    /// Writes out the buffer and fsyncs (makes every earlier commit durable).
    pub fn sync(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.flush(true)
    }

    /// Closes the engine now, for every clone of this handle: buffered commits are
    /// written and fsynced, the synced-end checkpoint is recorded, the zero-filled room
    /// is trimmed and the lock released. Afterwards every operation of every clone
    /// fails with [`Error::Closed`] (what is in memory, such as [`Database::len`],
    /// still describes the database as it was). Closing twice is a no-op.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }

    /// Ids of live records from `from` (inclusive) in the given direction.
    pub fn cursor(&self, from: u64, reverse: bool) -> Cursor {
        Cursor {
            db: self.clone(),
            next: Some(from),
            reverse,
        }
    }

    /// Inserts a large value streamed from `reader` (exactly `len` bytes), never holding
    /// it in memory whole. Not compressed.
    /// If the reader fails (or a write does), nothing of the value stays in the file:
    /// the bytes written so far are cut off again and the error is returned.
    pub fn insert_stream(&self, kind: Kind, reader: &mut dyn Read, len: u64) -> Result<u64> {
        self.inner.insert_stream(kind, reader, len)
    }

    /// Opens a streaming reader over record `id`'s value (its checksum is verified when
    /// the end is reached).
    pub fn open_value(&self, id: u64) -> Result<Option<ValueReader>> {
        self.inner.open_value(id)
    }

    /// Creates a secondary index on `field` (persisted; rebuilt on open).
    pub fn create_index(&self, field: &str) -> Result<()> {
        if field.is_empty() || field.contains('=') || field.len() > 256 {
            return Err(Error::Query(format!("bad index field {field:?}")));
        }
        self.inner.write_meta(&format!("index.{field}"), "1")?;
        self.inner.build_index(field)
    }

    /// Drops the secondary index on `field`.
    pub fn drop_index(&self, field: &str) -> Result<()> {
        self.inner.write_meta(&format!("index.{field}"), "")?;
        wlock(&self.inner.state).indexes.remove(field);
        Ok(())
    }

    /// Fields with a secondary index.
    pub fn indexes(&self) -> Vec<String> {
        rlock(&self.inner.state).indexes.keys().cloned().collect()
    }

    /// Ids of records whose indexed `field` lies within the bounds, ascending;
    /// `None` if the field has no index.
    pub fn index_lookup(
        &self,
        field: &str,
        lo: Bound<&FieldValue>,
        hi: Bound<&FieldValue>,
    ) -> Option<Vec<u64>> {
        let conv = |b: Bound<&FieldValue>| match b {
            Bound::Included(v) => Bound::Included(IndexKey::from_field(v)),
            Bound::Excluded(v) => Bound::Excluded(IndexKey::from_field(v)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (lo, hi) = (conv(lo), conv(hi));
        let st = rlock(&self.inner.state);
        let idx = st.indexes.get(field)?;
        Some(idx.range(lo.as_ref(), hi.as_ref()))
    }

    /// Compacts online: live records are copied to a new file (ids unchanged) while
    /// reads continue; writers wait only for the final catch-up step. Returns
    /// `(bytes before, bytes after)`.
    pub fn compact(&self) -> Result<(u64, u64)> {
        self.inner.compact()
    }

    /// Writes a compacted copy of this database as database `target` in `vfs` (error
    /// [`Error::AlreadyExists`] if it exists; the copy has its own checksum salt).
    pub fn copy_to(&self, vfs: &Arc<dyn Vfs>, target: &str) -> Result<()> {
        crate::store::check_name(target)?;
        self.inner.check_open()?;
        let _guard = lock_db(&**vfs, target)?;
        if vfs.exists(&file_name(target)).map_err(Error::io("copy"))? {
            return Err(Error::AlreadyExists(target.to_string()));
        }
        let tmp = tmp_name(target);
        let out = vfs.open(&tmp, true).map_err(Error::io("copy"))?;
        let salt = Salt::random();
        let res = self.inner.snapshot_into(&out, &salt).and_then(|snap| {
            // synced whole before it becomes visible: its checkpoint is its end
            out.write_all_at(
                &format::encode_checkpoint(&salt, snap.1),
                CHECKPOINT_OFFSETS[0],
            )
            .and_then(|_| out.sync_data())
            .map_err(Error::io("copy"))
        });
        drop(out);
        let res = res.and_then(|_| {
            vfs.rename_new(&tmp, &file_name(target)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::AlreadyExists(target.to_string())
                } else {
                    Error::Io {
                        op: "copy",
                        source: e,
                    }
                }
            })
        });
        if let Err(e) = res {
            let _ = vfs.remove(&tmp);
            return Err(e);
        }
        vfs.sync_dir().map_err(Error::io("copy"))
    }

    /// Drops this handle the way a killed process would: no final flush of the write
    /// buffer, the lock is released, and every other clone of the handle refuses
    /// writes from now on (for crash tests; unsynced data is left to the file layer's
    /// fate).
    pub fn abandon(self) {
        self.inner.poisoned.store(true, Ordering::Release);
        mlock(&self.inner.stop_tx).take();
        mlock(&self.inner.lock).take();
    }

    /// True once the engine was closed ([`Database::close`], or removed or replaced
    /// through [`crate::Env`]).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// True if an earlier I/O error stopped writes (reopen to recover).
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Bytes currently held by the record cache.
    pub fn cache_bytes(&self) -> usize {
        self.inner.cache.iter().map(|s| mlock(s).bytes).sum()
    }

    pub(crate) fn next_id(&self) -> u64 {
        mlock(&self.inner.writer).next_id
    }

    /// Live ids in ascending order.
    pub(crate) fn live_ids(&self) -> Vec<u64> {
        rlock(&self.inner.state)
            .ids
            .iter()
            .map(|(id, _)| id)
            .collect()
    }
}

/// Iterates live records by id (see [`Database::cursor`]).
#[derive(Debug)]
pub struct Cursor {
    db: Database,
    next: Option<u64>,
    reverse: bool,
}

impl Iterator for Cursor {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let from = self.next?;
            // the next live id in the direction (ids are sparse: never walk the gaps)
            let found = {
                let st = rlock(&self.db.inner.state);
                if self.reverse {
                    st.ids.prev_from(from)
                } else {
                    st.ids.next_from(from)
                }
            };
            let Some(id) = found.filter(|&id| id != 0) else {
                self.next = None;
                return None;
            };
            self.next = if self.reverse {
                id.checked_sub(1)
            } else {
                id.checked_add(1)
            };
            match self.db.get(id) {
                Ok(Some(r)) => return Some(Ok(r)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Streams one record's value from the file (see [`Database::open_value`]).
#[derive(Debug)]
pub struct ValueReader {
    file: Arc<dyn FileBackend>,
    off: u64,
    pos: u64,
    len: u64,
    hasher: Option<crc32fast::Hasher>,
    crc: u32,
    frame_off: u64,
    inline: Option<(Vec<u8>, usize)>,
}

impl ValueReader {
    /// Total length of the value in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True if the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for ValueReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some((data, pos)) = &mut self.inline {
            let n = out.len().min(data.len() - *pos);
            out[..n].copy_from_slice(&data[*pos..*pos + n]);
            *pos += n;
            return Ok(n);
        }
        if self.pos >= self.len {
            if let Some(h) = self.hasher.take() {
                if h.finalize() != self.crc {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        Error::Corrupt {
                            offset: self.frame_off,
                            reason: "checksum mismatch".into(),
                        },
                    ));
                }
            }
            return Ok(0);
        }
        let n = (out.len() as u64).min(self.len - self.pos) as usize;
        self.file
            .read_exact_at(&mut out[..n], self.off + self.pos)?;
        if let Some(h) = &mut self.hasher {
            h.update(&out[..n]);
        }
        self.pos += n as u64;
        if self.pos >= self.len {
            if let Some(h) = self.hasher.take() {
                if h.finalize() != self.crc {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        Error::Corrupt {
                            offset: self.frame_off,
                            reason: "checksum mismatch".into(),
                        },
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// One applied change: id, new frame (offset in buffer, header), new value.
/// A written snapshot: new index, end in the new file, old end covered, old file.
type Snapshot = (IdIndex, u64, u64, Arc<dyn FileBackend>);

pub(crate) enum OpRef<'a> {
    Insert(Kind, &'a [u8]),
    Update(u64, Kind, &'a [u8]),
    Delete(u64),
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Marks an access (read only, unless the flag is clear: no cache-line write per
    /// read once it is set).
    #[inline]
    fn touch(&self) {
        if !self.accessed.load(Ordering::Relaxed) {
            self.accessed.store(true, Ordering::Relaxed);
        }
    }

    fn check_value(&self, len: u64) -> Result<()> {
        if len > self.opts.max_value {
            return Err(Error::TooLarge {
                what: "value",
                len,
                max: self.opts.max_value,
            });
        }
        Ok(())
    }

    /// Writes are refused once closed or poisoned.
    fn check_poison(&self) -> Result<()> {
        self.check_open()?;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    /// Every operation is refused once closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed {
                name: self.name.clone(),
            });
        }
        Ok(())
    }

    fn poison(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |e| {
            self.poisoned.store(true, Ordering::Release);
            Error::Io { op, source: e }
        }
    }

    /// One round of the maintenance thread: flushes and syncs buffered commits whose
    /// deadline passed, drops an idle cache. Returns how long to sleep until the next
    /// round (at most `tick`, less when a flush deadline comes sooner).
    fn maintain(&self, tick: Duration) -> Duration {
        let now = Instant::now();
        // Read the writer's state and let go of it before asking whether the file has
        // unsynced bytes: that takes the sync lock, which a sync holds through its
        // fsync, and a commit waiting for the writer meanwhile would wait for the disk
        // (`a_commit_during_a_sync_does_not_wait_for_the_disk` caught this 1 run in 5).
        let (buffered, last_sync, flush_due) = {
            let w = mlock(&self.writer);
            (!w.buf.is_empty(), w.last_sync, w.flush_due)
        };
        let due = {
            let periodic = match self.opts.durability {
                Durability::Periodic(iv) if buffered || self.unsynced() => Some(last_sync + iv),
                _ => None,
            };
            match (periodic, flush_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let mut wait = tick;
        if let Some(due) = due {
            if due <= now {
                let _ = self.flush(true);
            } else {
                wait = wait.min(due - now);
            }
        }
        let now_ms = self.now_ms();
        if self.accessed.swap(false, Ordering::Relaxed) {
            self.last_access_ms.store(now_ms, Ordering::Relaxed);
        }
        let idle_ms = now_ms.saturating_sub(self.last_access_ms.load(Ordering::Relaxed));
        if Duration::from_millis(idle_ms) >= self.opts.idle_evict {
            self.clear_cache();
        }
        // an access is noticed at the next round: rounds come at least every half idle
        // period, so the cache goes at most 1.5 idle periods after the last access
        wait.min(self.opts.idle_evict / 2)
            .max(Duration::from_millis(1))
    }

    /// True when bytes were written to the file but not yet synced.
    fn unsynced(&self) -> bool {
        mlock(&self.synced).end < self.flushed_end.load(Ordering::Acquire)
    }

    /// Writes the buffer to the file (and fsyncs when `sync`). Caller holds the writer;
    /// the buffer holds whole commits only.
    fn flush_locked(&self, w: &mut Writer, sync: bool) -> Result<()> {
        self.write_buf(w, true)?;
        // everything before `buf_start` is now whole commits in the file
        self.flushed_end.store(w.buf_start, Ordering::Release);
        if sync {
            self.sync_to(w.buf_start)?;
            w.last_sync = Instant::now();
            w.flush_due = None;
        }
        Ok(())
    }

    /// Writes the buffer to the file at `buf_start` (one write; with `room`, plus
    /// zero-filled room ahead when a small write grows the file, see [`prealloc_step`])
    /// and empties it, without moving `flushed_end`: a commit larger than the write
    /// buffer goes out in write-buffer-sized pieces through this while it is encoded
    /// (without room: a bulk commit is no small write), and only its end is a point a
    /// sync may record or a reader may rely on.
    fn write_buf(&self, w: &mut Writer, room: bool) -> Result<()> {
        if w.buf.is_empty() {
            return Ok(());
        }
        self.check_poison()?;
        let file = rlock(&self.state).file.clone();
        let len = w.buf.len();
        let end = w.buf_start + len as u64;
        let step = prealloc_step(end);
        if room && end > w.alloc_end && (len as u64) < step {
            // grow in one step: the commit plus zero-filled room after it, one
            // write; later commits overwrite written blocks, so their fdatasync
            // carries no block allocation (a hole here made the commit tail,
            // STORAGE §4)
            w.buf.resize(len + step as usize, 0);
            let res = file.write_all_at(&w.buf, w.buf_start);
            w.buf.truncate(len);
            res.map_err(self.poison("write"))?;
            w.alloc_end = end + step;
        } else {
            file.write_all_at(&w.buf, w.buf_start)
                .map_err(self.poison("write"))?;
            w.alloc_end = w.alloc_end.max(end);
        }
        w.buf_start = end;
        w.buf.clear();
        if w.buf.capacity() > 2 * self.opts.write_buffer {
            w.buf.shrink_to(self.opts.write_buffer);
        }
        Ok(())
    }

    pub(crate) fn flush(&self, sync: bool) -> Result<()> {
        let mut w = mlock(&self.writer);
        if !sync {
            return self.flush_locked(&mut w, false);
        }
        // Write the buffer under the writer lock but fsync outside it, as a
        // commit does: commits made during the fsync go on buffering (and share
        // the next one) instead of queueing behind the disk.
        self.flush_locked(&mut w, false)?;
        let end = w.buf_start;
        drop(w);
        self.sync_to(end)?;
        let mut w = mlock(&self.writer);
        w.last_sync = Instant::now();
        if w.buf.is_empty() && w.buf_start == end {
            // nothing was committed meanwhile: no periodic deadline is pending
            w.flush_due = None;
        }
        Ok(())
    }

    /// Makes sure bytes before `end` are in the file (not only in the write buffer).
    pub(crate) fn ensure_written(&self, end: u64) -> Result<()> {
        if self.flushed_end.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let mut w = mlock(&self.writer);
        if w.buf_start >= end {
            return Ok(());
        }
        self.flush_locked(&mut w, false)
    }

    /// Appends one PUT frame to `out` (LZ4-compressed when enabled and worth it) and
    /// returns its header.
    fn encode_put(
        &self,
        out: &mut Vec<u8>,
        kind: Kind,
        id: u64,
        index: u32,
        last: bool,
        data: &[u8],
    ) -> FrameHeader {
        let mut flags = if last { FLAG_COMMIT } else { 0 };
        let mut raw_len = 0u32;
        let compressed;
        let mut payload = data;
        if self.opts.compress && data.len() >= 64 && data.len() <= u32::MAX as usize {
            compressed = lz4_flex::block::compress(data);
            if compressed.len() + 8 < data.len() {
                payload = &compressed;
                flags |= FLAG_LZ4;
                raw_len = data.len() as u32;
            }
        }
        format::encode_frame(
            out, &self.salt, OP_PUT, kind as u8, flags, id, index, raw_len, payload,
        );
        FrameHeader {
            crc: 0,
            op: OP_PUT,
            kind: kind as u8,
            flags,
            id,
            len: payload.len() as u64,
            index,
            raw_len,
        }
    }

    /// Checks that every update and delete of `ops` names a record that exists at that
    /// point of the commit (inserts take the ids `first_new..`); returns the ids deleted.
    /// Runs before a byte of the commit is encoded, so a refused commit writes nothing.
    fn validate_ops(&self, ops: &[OpRef<'_>], first_new: u64) -> Result<Vec<u64>> {
        // lock order: writer (held by the caller), then order, then state
        let order = mlock(&self.order);
        let st = rlock(&self.state);
        let mut deleted: BTreeSet<u64> = BTreeSet::new();
        // ids inserted so far by this commit: first_new..inserted (an id, once deleted,
        // never comes back: inserts always take new ids)
        let mut inserted = first_new;
        let mut deletes = Vec::new();
        for op in ops {
            let (id, delete) = match *op {
                OpRef::Insert(..) => {
                    inserted += 1;
                    continue;
                }
                OpRef::Update(id, ..) => (id, false),
                OpRef::Delete(id) => (id, true),
            };
            let exists = !deleted.contains(&id)
                && if id >= first_new {
                    id < inserted
                } else {
                    !order.deleting.contains_key(&id) && st.loc(id).is_some()
                };
            if !exists {
                return Err(Error::NotFound(id));
            }
            if delete {
                deleted.insert(id);
                deletes.push(id);
            }
        }
        Ok(deletes)
    }

    /// Encodes `ops` (validated) into the write buffer, writing it out whenever it
    /// holds a write buffer's worth, so a commit of any size goes through one reused
    /// buffer of bounded size. Returns the ids of the inserts and the location of each
    /// op's frame (absent for deletes). Caller holds the writer.
    fn encode_ops(
        &self,
        w: &mut Writer,
        ops: &[OpRef<'_>],
        first_new: u64,
    ) -> Result<(Vec<u64>, Vec<Loc>)> {
        let n = ops.len();
        let chunk = self.opts.write_buffer.max(MIN_WRITE_CHUNK);
        let mut ids = Vec::new();
        let mut locs = Vec::with_capacity(n);
        let mut next_id = first_new;
        for (i, op) in ops.iter().enumerate() {
            if w.buf.len() >= chunk {
                self.write_buf(w, false)?;
            }
            let last = i + 1 == n;
            let off = w.buf_start + w.buf.len() as u64;
            let loc = match *op {
                OpRef::Insert(kind, data) => {
                    let id = next_id;
                    next_id += 1;
                    ids.push(id);
                    let fh = self.encode_put(&mut w.buf, kind, id, i as u32, last, data);
                    Loc::from_header(off, &fh)
                }
                OpRef::Update(id, kind, data) => {
                    let fh = self.encode_put(&mut w.buf, kind, id, i as u32, last, data);
                    Loc::from_header(off, &fh)
                }
                OpRef::Delete(id) => {
                    let flags = if last { FLAG_COMMIT } else { 0 };
                    format::encode_frame(
                        &mut w.buf,
                        &self.salt,
                        OP_DELETE,
                        0,
                        flags,
                        id,
                        i as u32,
                        0,
                        &[],
                    );
                    Loc::default()
                }
            };
            locs.push(loc);
        }
        Ok((ids, locs))
    }

    pub(crate) fn commit_ops(
        &self,
        ops: Vec<OpRef<'_>>,
        durability: Option<Durability>,
    ) -> Result<Vec<u64>> {
        self.touch();
        let mut w = mlock(&self.writer);
        self.check_poison()?;
        let first_new = w.next_id;
        let deletes = self.validate_ops(&ops, first_new)?;
        let durability = durability.unwrap_or(self.opts.durability);
        let immediate = durability == Durability::Immediate;
        let start = w.buf_start;
        let encoded = self.encode_ops(&mut w, &ops, first_new).and_then(|r| {
            if immediate || w.buf.len() >= self.opts.write_buffer {
                // the rest of a commit that went out in pieces is no small write
                let room = w.buf_start == start;
                self.write_buf(&mut w, room)?;
                self.flushed_end.store(w.buf_start, Ordering::Release);
            }
            Ok(r)
        });
        let (ids, locs) = match encoded {
            Ok(r) => r,
            Err(e) => {
                // only a failed write gets here: the database is poisoned
                w.buf.clear();
                return Err(e);
            }
        };
        w.next_id = first_new + ids.len() as u64;
        if let Durability::Periodic(iv) = durability {
            // this commit must be durable within `iv`, whatever the database's mode
            let due = Instant::now() + iv;
            if w.flush_due.is_none_or(|d| due < d) {
                w.flush_due = Some(due);
                if let Some(tx) = mlock(&self.stop_tx).as_ref() {
                    let _ = tx.try_send(());
                }
            }
        }
        w.seq += 1;
        let seq = w.seq;
        if !deletes.is_empty() {
            let mut order = mlock(&self.order);
            for &id in &deletes {
                order.deleting.insert(id, seq);
            }
        }
        let end = w.buf_start;
        drop(w);
        // group commit: one fsync covers every commit written before it started
        let synced = if immediate { self.sync_to(end) } else { Ok(()) };
        // apply in log order, so that the index always matches the file
        let mut order = mlock(&self.order);
        while order.applied + 1 != seq {
            order.waiters += 1;
            order = self.order_cv.wait(order).unwrap_or_else(|p| p.into_inner());
            order.waiters -= 1;
        }
        if synced.is_ok() {
            self.apply_changes(&ops, &ids, &locs);
        }
        for id in deletes {
            if order.deleting.get(&id) == Some(&seq) {
                order.deleting.remove(&id);
            }
        }
        order.applied = seq;
        let wake = order.waiters > 0;
        drop(order);
        if wake {
            self.order_cv.notify_all();
        }
        synced.map(|_| ids)
    }

    /// Makes the index, secondary indexes and cache reflect one written commit: `ops`
    /// with the ids of its inserts and the location of each op's frame.
    ///
    /// The cache is write-through for ordinary commits. A bulk commit, whose values
    /// exceed one cache shard's budget (`cache_bytes / 16`, 4 MiB by default), does
    /// not copy its records into the cache (it only drops stale copies of the records
    /// it updates or deletes): it would evict at least a sixteenth of what reads made
    /// hot, and copying a bulk load into the cache was 40% of its commit time (see
    /// docs/STORAGE.md §7). Its records enter the cache when they are read.
    fn apply_changes(&self, ops: &[OpRef<'_>], ids: &[u64], locs: &[Loc]) {
        let shard_budget = self.opts.cache_bytes / CACHE_SHARDS;
        let mut value_bytes = 0usize;
        let bulk = ops.iter().any(|op| {
            if let OpRef::Insert(_, d) | OpRef::Update(_, _, d) = op {
                value_bytes = value_bytes.saturating_add(d.len());
            }
            value_bytes > shard_budget
        });
        let mut st = wlock(&self.state);
        // odd while the changes apply (see `Database::change_seq`)
        self.changes.fetch_add(1, Ordering::AcqRel);
        let mut new_ids = ids.iter().copied();
        for (op, &loc) in ops.iter().zip(locs) {
            let (id, val) = match *op {
                OpRef::Insert(kind, data) => match new_ids.next() {
                    Some(id) => (id, Some((kind, data))),
                    None => break, // one id per insert: unreachable
                },
                OpRef::Update(id, kind, data) => (id, Some((kind, data))),
                OpRef::Delete(id) => (id, None),
            };
            st.set_loc(id, Some(loc).filter(Loc::present));
            if !st.indexes.is_empty() {
                let rec = val.map(|(kind, data)| RecordRef { id, kind, data });
                for (field, idx) in st.indexes.iter_mut() {
                    idx.set(
                        id,
                        rec.and_then(|r| r.field(field))
                            .map(|v| IndexKey::from_field(&v)),
                    );
                }
            }
            match (val, op) {
                // a new id has no cached copy to drop
                (Some(_), OpRef::Insert(..)) if bulk => {}
                (Some((kind, data)), _) if !bulk => self.cache_put(id, kind, data),
                _ => self.cache_remove(id),
            }
        }
        self.changes.fetch_add(1, Ordering::AcqRel);
        drop(st);
        // (a single value above a shard's budget is above the cacheable size too)
        if bulk && ops.len() > 1 && self.opts.cache_bytes > 0 {
            let mut warm = mlock(&self.warm);
            let mut push = |r: std::ops::Range<u64>| {
                let n = r.end - r.start;
                if warm.queued + n <= WARM_MAX_IDS {
                    warm.queued += n;
                    match warm.jobs.back_mut() {
                        Some(last) if last.end == r.start => last.end = r.end,
                        _ => warm.jobs.push_back(r),
                    }
                }
            };
            if let (Some(&first), Some(&last)) = (ids.first(), ids.last()) {
                push(first..last + 1); // the inserts of a commit have consecutive ids
            }
            for op in ops {
                if let OpRef::Update(id, ..) = *op {
                    push(id..id + 1);
                }
            }
        }
    }

    /// Caches a record only if it is not cached yet and its shard has room (evicts
    /// nothing). Caller holds the state lock (read), so no commit applies meanwhile.
    fn cache_fill(&self, id: u64, kind: Kind, data: &[u8]) -> Fill {
        let budget = self.opts.cache_bytes / CACHE_SHARDS;
        let mut s = mlock(self.shard(id));
        if s.map.contains_key(&id) {
            return Fill::Present;
        }
        let cost = data.len() + 64;
        if s.bytes + cost > budget {
            return Fill::Full;
        }
        let tick = s.tick();
        s.map.insert(id, (kind, Arc::from(data), tick));
        s.bytes += cost;
        Fill::Inserted
    }

    /// Takes the next step of the warm-up queue: up to [`WARM_STEP`] ids.
    fn warm_next(&self) -> Option<std::ops::Range<u64>> {
        let mut warm = mlock(&self.warm);
        let r = warm.jobs.front_mut()?;
        let lo = r.start;
        let hi = r.end.min(lo + WARM_STEP);
        r.start = hi;
        if r.start >= r.end {
            warm.jobs.pop_front();
        }
        warm.queued -= hi - lo;
        Some(lo..hi)
    }

    /// Reads the records `ids` back (runs of adjacent frames in one read each, every
    /// frame checked) and caches those whose location is still current, while their
    /// shard has room. False when there is nothing more to do: the cache is full, or
    /// the database closed or failed.
    fn warm_step(&self, ids: std::ops::Range<u64>) -> bool {
        if self.check_open().is_err() || self.opts.cache_bytes == 0 {
            return false;
        }
        let (file, mut items) = {
            let st = rlock(&self.state);
            let items: Vec<(u64, Loc)> = ids
                .filter_map(|id| st.loc(id).map(|l| (id, l)))
                .filter(|(_, l)| l.len as usize <= CACHE_MAX_VALUE && l.frame_len().is_some())
                .collect();
            (st.file.clone(), items)
        };
        items.sort_unstable_by_key(|(_, l)| l.off);
        let mut buf = Vec::new();
        let mut got = Vec::with_capacity(items.len());
        let mut i = 0;
        while i < items.len() {
            let lo = items[i].1.off;
            let mut hi = lo + items[i].1.frame_len().unwrap_or(0);
            let mut j = i + 1;
            while j < items.len() && items[j].1.off == hi && hi - lo < (1 << 20) {
                hi += items[j].1.frame_len().unwrap_or(0);
                j += 1;
            }
            if hi > self.flushed_end.load(Ordering::Acquire) {
                // still in the write buffer (periodic durability): the warm-up never
                // forces a write; these records enter the cache when read
                i = j;
                continue;
            }
            buf.resize((hi - lo) as usize, 0);
            if file.read_exact_at(&mut buf, lo).is_err() {
                return false;
            }
            for &(id, loc) in &items[i..j] {
                let s = (loc.off - lo) as usize;
                let frame = &buf[s..s + loc.frame_len().unwrap_or(0) as usize];
                let Some(fh) = FrameHeader::decode(frame, frame.len() as u64)
                    .filter(|fh| fh.op == OP_PUT && fh.id == id && fh.len == loc.len as u64)
                    .filter(|fh| fh.check_frame(&self.salt, frame))
                else {
                    continue; // a damaged record is reported when it is read
                };
                let payload = frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + fh.len as usize].to_vec();
                if let Ok(data) = decode_payload(loc.off, &fh, payload, self.opts.max_value) {
                    got.push((id, loc, Kind::from_tag(fh.kind).unwrap_or(Kind::Raw), data));
                }
            }
            i = j;
        }
        let st = rlock(&self.state);
        let mut full = 0;
        for (id, loc, kind, data) in &got {
            // only the current version of a record (not one a commit replaced meanwhile)
            if st.loc(*id) == Some(*loc) && self.cache_fill(*id, *kind, data) == Fill::Full {
                full += 1;
            }
        }
        !(full > 0 && full == got.len())
    }

    /// Waits until every commit that took a sequence number is applied (no commit is
    /// between its write and its application). The caller holds the writer, so no new
    /// commit can start meanwhile.
    fn drain(&self, w: &Writer) {
        let mut order = mlock(&self.order);
        while order.applied != w.seq {
            order.waiters += 1;
            order = self.order_cv.wait(order).unwrap_or_else(|p| p.into_inner());
            order.waiters -= 1;
        }
    }

    /// Makes every byte before `end` durable. Concurrent callers share fsyncs: the one
    /// holding the lock syncs everything written so far, and a caller whose bytes that
    /// covered returns without a sync of its own.
    ///
    /// Each fsync also records the synced end of the previous one (durable already) in
    /// the header's older checkpoint slot: the checkpoint never claims bytes that are
    /// not durable, and costs no fsync of its own.
    fn sync_to(&self, end: u64) -> Result<()> {
        let mut synced = mlock(&self.synced);
        if synced.end >= end {
            return Ok(());
        }
        self.check_poison()?;
        let target = self.flushed_end.load(Ordering::Acquire);
        let file = rlock(&self.state).file.clone();
        // the slot is rewritten only every CHECKPOINT_STRIDE bytes or CHECKPOINT_AGE:
        // a slot write puts a second block (the header's) into this fdatasync
        let record = synced.end > synced.ckpt
            && (synced.end - synced.ckpt >= CHECKPOINT_STRIDE
                || synced.ckpt_at.elapsed() >= CHECKPOINT_AGE);
        if record {
            self.write_checkpoint(&*file, &synced)?;
        }
        file.sync_data().map_err(self.poison("fsync"))?;
        if record {
            synced.ckpt = synced.end;
            synced.ckpt_at = Instant::now();
            synced.next_slot ^= 1;
        }
        synced.end = synced.end.max(target);
        Ok(())
    }

    /// Writes `synced.end` into the checkpoint slot `synced.next_slot` (not synced).
    fn write_checkpoint(&self, file: &dyn FileBackend, synced: &SyncState) -> Result<()> {
        file.write_all_at(
            &format::encode_checkpoint(&self.salt, synced.end),
            CHECKPOINT_OFFSETS[synced.next_slot],
        )
        .map_err(self.poison("write checkpoint"))
    }

    /// Records the current synced end as the checkpoint, with an fsync (on close).
    fn checkpoint_now(&self) -> Result<()> {
        let mut synced = mlock(&self.synced);
        if synced.end <= synced.ckpt {
            return Ok(());
        }
        let file = rlock(&self.state).file.clone();
        self.write_checkpoint(&*file, &synced)?;
        file.sync_data().map_err(self.poison("fsync"))?;
        synced.ckpt = synced.end;
        synced.ckpt_at = Instant::now();
        synced.next_slot ^= 1;
        Ok(())
    }

    /// True when every cache shard is within a small record of its budget.
    fn cache_full(&self) -> bool {
        let budget = self.opts.cache_bytes / CACHE_SHARDS;
        self.cache.iter().all(|s| mlock(s).bytes + 128 > budget)
    }

    fn shard(&self, id: u64) -> &Mutex<CacheShard> {
        &self.cache[(id as usize) % CACHE_SHARDS]
    }

    fn cache_put(&self, id: u64, kind: Kind, data: &[u8]) {
        if self.opts.cache_bytes == 0 || data.len() > CACHE_MAX_VALUE {
            self.cache_remove(id);
            return;
        }
        let budget = self.opts.cache_bytes / CACHE_SHARDS;
        let mut s = mlock(self.shard(id));
        let tick = s.tick();
        let cost = data.len() + 64;
        if let Some(old) = s.map.insert(id, (kind, Arc::from(data), tick)) {
            s.bytes -= old.1.len() + 64;
        }
        s.bytes += cost;
        if s.bytes > budget {
            // evict the least recently used eighth (in O(n): a selection, not a sort)
            let mut ticks: Vec<u64> = s.map.values().map(|v| v.2).collect();
            let q = ticks.len() / 8;
            let cut = *ticks.select_nth_unstable(q).1;
            let mut freed = 0;
            s.map.retain(|_, v| {
                if v.2 <= cut {
                    freed += v.1.len() + 64;
                    false
                } else {
                    true
                }
            });
            s.bytes -= freed;
        }
    }

    fn cache_remove(&self, id: u64) {
        let mut s = mlock(self.shard(id));
        if let Some(old) = s.map.remove(&id) {
            s.bytes -= old.1.len() + 64;
        }
    }

    fn clear_cache(&self) {
        for s in &self.cache {
            let mut s = mlock(s);
            s.map.clear();
            s.map.shrink_to_fit();
            s.bytes = 0;
        }
    }

    /// The record from the cache (marking it recently used), if it is there.
    fn cache_hit(&self, id: u64) -> Option<Record> {
        if self.opts.cache_bytes == 0 {
            return None;
        }
        let mut s = mlock(self.shard(id));
        let tick = s.tick();
        let e = s.map.get_mut(&id)?;
        e.2 = tick;
        Some(Record {
            id,
            kind: e.0,
            data: e.1.to_vec(),
        })
    }

    pub(crate) fn get_cached(&self, id: u64) -> Option<Option<Record>> {
        self.check_open().ok()?;
        self.touch();
        if let Some(r) = self.cache_hit(id) {
            return Some(Some(r));
        }
        match rlock(&self.state).loc(id) {
            None => Some(None),
            Some(_) => None,
        }
    }

    pub(crate) fn get(&self, id: u64) -> Result<Option<Record>> {
        self.check_open()?;
        self.touch();
        if let Some(r) = self.cache_hit(id) {
            return Ok(Some(r));
        }
        let (file, loc) = {
            let st = rlock(&self.state);
            match st.loc(id) {
                Some(l) => (st.file.clone(), l),
                None => return Ok(None),
            }
        };
        let flen = loc.frame_len().unwrap_or(u64::MAX);
        self.ensure_written(loc.off.saturating_add(flen))?;
        let data = read_payload(&*file, &self.salt, loc, self.opts.max_value)?;
        let kind = Kind::from_tag(loc.kind).unwrap_or(Kind::Raw);
        {
            // cache it only if no commit replaced it since it was looked up (the state
            // lock keeps commits from applying until the copy is in)
            let st = rlock(&self.state);
            if st.loc(id) == Some(loc) {
                self.cache_put(id, kind, &data);
            }
        }
        Ok(Some(Record { id, kind, data }))
    }

    fn insert_stream(&self, kind: Kind, reader: &mut dyn Read, len: u64) -> Result<u64> {
        self.touch();
        let mut w = mlock(&self.writer);
        self.check_poison()?;
        self.drain(&w);
        self.flush_locked(&mut w, false)?;
        let file = rlock(&self.state).file.clone();
        let id = w.next_id;
        let off = w.buf_start;
        let mut fh = FrameHeader {
            crc: 0,
            op: OP_PUT,
            kind: kind as u8,
            flags: FLAG_COMMIT,
            id,
            len,
            index: 0,
            raw_len: 0,
        };
        let end = off
            .checked_add(FRAME_HEADER_LEN as u64)
            .and_then(|e| e.checked_add(len))
            .map(align_up)
            .filter(|&e| e < u64::MAX - format::ALIGN)
            .ok_or(Error::TooLarge {
                what: "value",
                len,
                max: u64::MAX - off - 2 * FRAME_HEADER_LEN as u64,
            })?;
        let written = self.stream_payload(&*file, &mut fh, reader, off, end);
        if let Err(e) = written {
            // leave nothing behind: the log ends at `off` again, and no payload byte
            // (whatever frame images it holds) stays after it
            self.undo_stream(&mut w, &*file, off)?;
            return Err(e);
        }
        w.buf_start = end;
        w.alloc_end = w.alloc_end.max(end);
        self.flushed_end.store(end, Ordering::Release);
        if self.opts.durability == Durability::Immediate {
            self.flush_locked(&mut w, true)?;
        }
        w.next_id = id + 1;
        let mut st = wlock(&self.state);
        st.set_loc(id, Some(Loc::from_header(off, &fh)));
        for (_, idx) in st.indexes.iter_mut() {
            idx.set(id, None);
        }
        Ok(id)
    }

    /// Writes the payload from `reader` (then the padding, then the header last).
    fn stream_payload(
        &self,
        file: &dyn FileBackend,
        fh: &mut FrameHeader,
        reader: &mut dyn Read,
        off: u64,
        end: u64,
    ) -> Result<()> {
        let len = fh.len;
        let mut h = self.salt.hasher();
        h.update(&fh.encode()[4..]);
        let mut chunk = vec![0u8; READ_CHUNK.min(len as usize)];
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(READ_CHUNK as u64) as usize;
            reader
                .read_exact(&mut chunk[..n])
                .map_err(Error::io("read input stream"))?;
            h.update(&chunk[..n]);
            file.write_all_at(&chunk[..n], off + FRAME_HEADER_LEN as u64 + pos)
                .map_err(Error::io("write"))?;
            pos += n as u64;
        }
        fh.crc = h.finalize();
        let pad = (end - off - FRAME_HEADER_LEN as u64 - len) as usize;
        if pad > 0 {
            file.write_all_at(&[0u8; 8][..pad], end - pad as u64)
                .map_err(Error::io("write"))?;
        }
        file.write_all_at(&fh.encode(), off)
            .map_err(Error::io("write"))
    }

    /// Cuts a failed stream's bytes off: the file ends at `off` (the log end) again,
    /// durably. If that fails the database is poisoned (recovery cuts them instead).
    fn undo_stream(&self, w: &mut Writer, file: &dyn FileBackend, off: u64) -> Result<()> {
        file.set_len(off)
            .and_then(|_| file.sync_data())
            .map_err(self.poison("cut a failed stream"))?;
        w.alloc_end = off;
        Ok(())
    }

    fn open_value(&self, id: u64) -> Result<Option<ValueReader>> {
        self.check_open()?;
        self.touch();
        let (file, loc) = {
            let st = rlock(&self.state);
            match st.loc(id) {
                Some(l) => (st.file.clone(), l),
                None => return Ok(None),
            }
        };
        let corrupt = |reason: &str| Error::Corrupt {
            offset: loc.off,
            reason: reason.into(),
        };
        let mut hdr = [0u8; FRAME_HEADER_LEN];
        self.ensure_written(loc.off.saturating_add(FRAME_HEADER_LEN as u64))?;
        file.read_exact_at(&mut hdr, loc.off)
            .map_err(Error::io("read"))?;
        let room = file
            .len()
            .map_err(Error::io("read"))?
            .saturating_sub(loc.off.saturating_add(FRAME_HEADER_LEN as u64));
        let fh = FrameHeader::decode(&hdr, room)
            .filter(|fh| fh.op == OP_PUT && fh.id == id)
            .ok_or_else(|| corrupt("bad frame header"))?;
        self.ensure_written(loc.off.saturating_add(fh.frame_len()))?;
        if fh.flags & FLAG_LZ4 != 0 {
            let data = read_payload(&*file, &self.salt, loc, self.opts.max_value)?;
            let len = data.len() as u64;
            return Ok(Some(ValueReader {
                file,
                off: 0,
                pos: 0,
                len,
                hasher: None,
                crc: 0,
                frame_off: loc.off,
                inline: Some((data, 0)),
            }));
        }
        let mut h = self.salt.hasher();
        h.update(&hdr[4..]);
        Ok(Some(ValueReader {
            file,
            off: loc.off + FRAME_HEADER_LEN as u64,
            pos: 0,
            len: fh.len,
            hasher: Some(h),
            crc: fh.crc,
            frame_off: loc.off,
            inline: None,
        }))
    }

    fn write_meta(&self, key: &str, value: &str) -> Result<()> {
        let mut w = mlock(&self.writer);
        self.check_poison()?;
        let p = format!("{key}={value}");
        format::encode_frame(
            &mut w.buf,
            &self.salt,
            OP_META,
            0,
            FLAG_COMMIT,
            0,
            0,
            0,
            p.as_bytes(),
        );
        if let Err(e) = self.flush_locked(&mut w, true) {
            w.buf.clear();
            return Err(e);
        }
        let mut st = wlock(&self.state);
        if value.is_empty() {
            st.meta.remove(key);
        } else {
            st.meta.insert(key.to_string(), value.to_string());
        }
        Ok(())
    }

    /// (Re)builds the index on `field` from every live record.
    fn build_index(&self, field: &str) -> Result<()> {
        let mut w = mlock(&self.writer); // no writes while building
        self.drain(&w);
        self.flush_locked(&mut w, false)?;
        let (file, locs) = {
            let st = rlock(&self.state);
            let locs: Vec<(u64, Loc)> = st.ids.iter().collect();
            (st.file.clone(), locs)
        };
        let mut idx = SecIndex::default();
        for (id, loc) in locs {
            let kind = Kind::from_tag(loc.kind).unwrap_or(Kind::Raw);
            if kind == Kind::Raw || loc.frame_len().is_none() {
                continue;
            }
            let data = read_payload(&*file, &self.salt, loc, self.opts.max_value)?;
            let v = RecordRef {
                id,
                kind,
                data: &data,
            }
            .field(field);
            idx.set(id, v.map(|v| IndexKey::from_field(&v)));
        }
        wlock(&self.state).indexes.insert(field.to_string(), idx);
        Ok(())
    }

    /// Writes metas and every live record (as of now) into `out` after a fresh header
    /// with salt `out_salt` (frames are re-sealed with it) and a checkpoint at the
    /// header's end. Returns (new index, end in `out`, old-file end covered, old file).
    fn snapshot_into(&self, out: &Arc<dyn FileBackend>, out_salt: &Salt) -> Result<Snapshot> {
        let (file, locs, meta, next_id, snap_end) = {
            let mut w = mlock(&self.writer);
            self.check_poison()?;
            self.drain(&w);
            self.flush_locked(&mut w, false)?;
            let st = rlock(&self.state);
            let locs: Vec<(u64, Loc)> = st.ids.iter().collect();
            (
                st.file.clone(),
                locs,
                st.meta.clone(),
                w.next_id,
                w.buf_start,
            )
        };
        let mut buf = format::encode_file_header(next_id, out_salt, FILE_HEADER_LEN).to_vec();
        for (k, v) in &meta {
            format::encode_frame(
                &mut buf,
                out_salt,
                OP_META,
                0,
                FLAG_COMMIT,
                0,
                0,
                0,
                format!("{k}={v}").as_bytes(),
            );
        }
        let mut out_pos = 0u64;
        let mut new_locs: Vec<(u64, Loc)> = Vec::with_capacity(locs.len());
        let flush = |buf: &mut Vec<u8>, out_pos: &mut u64| -> Result<()> {
            out.write_all_at(buf, *out_pos)
                .map_err(Error::io("write compacted file"))?;
            *out_pos += buf.len() as u64;
            buf.clear();
            Ok(())
        };
        let mut win = Window {
            file: &*file,
            end: snap_end,
            start: 0,
            buf: Vec::new(),
        };
        // visit in file order for sequential reads (ids are u64 throughout)
        let mut order = locs;
        order.sort_unstable_by_key(|&(_, l)| l.off);
        for (id, loc) in order {
            let corrupt = |r: &str| Error::Corrupt {
                offset: loc.off,
                reason: r.to_string(),
            };
            let room = snap_end
                .checked_sub(loc.off)
                .and_then(|r| r.checked_sub(FRAME_HEADER_LEN as u64))
                .ok_or_else(|| corrupt("frame beyond the log end"))?;
            let hdr: [u8; FRAME_HEADER_LEN] = win
                .get(loc.off, FRAME_HEADER_LEN)
                .map_err(Error::io("read"))?
                .try_into()
                .map_err(|_| corrupt("short header"))?;
            let fh = FrameHeader::decode(&hdr, room)
                .filter(|fh| fh.op == OP_PUT && fh.id == id)
                .ok_or_else(|| corrupt("bad frame header"))?;
            let mut nfh = FrameHeader {
                flags: (fh.flags & FLAG_LZ4) | FLAG_COMMIT,
                index: 0,
                ..fh
            };
            let new_off = out_pos + buf.len() as u64;
            let pstart = loc.off + FRAME_HEADER_LEN as u64;
            if fh.len <= READ_CHUNK as u64 {
                let payload = win
                    .get(pstart, fh.len as usize)
                    .map_err(Error::io("read"))?;
                if !fh.check(&self.salt, &hdr, payload) {
                    return Err(corrupt("checksum mismatch"));
                }
                let h = nfh.seal(out_salt, payload);
                buf.extend_from_slice(&h);
                buf.extend_from_slice(payload);
                let total = align_up(buf.len() as u64) as usize;
                buf.resize(total, 0);
            } else {
                flush(&mut buf, &mut out_pos)?;
                let mut old_h = self.salt.hasher();
                old_h.update(&hdr[4..]);
                let mut new_h = out_salt.hasher();
                new_h.update(&nfh.encode()[4..]);
                let mut chunk = vec![0u8; READ_CHUNK];
                let mut pos = 0;
                while pos < fh.len {
                    let n = (fh.len - pos).min(READ_CHUNK as u64) as usize;
                    file.read_exact_at(&mut chunk[..n], pstart + pos)
                        .map_err(Error::io("read"))?;
                    old_h.update(&chunk[..n]);
                    new_h.update(&chunk[..n]);
                    out.write_all_at(&chunk[..n], new_off + FRAME_HEADER_LEN as u64 + pos)
                        .map_err(Error::io("write compacted file"))?;
                    pos += n as u64;
                }
                if old_h.finalize() != fh.crc {
                    return Err(corrupt("checksum mismatch"));
                }
                nfh.crc = new_h.finalize();
                out.write_all_at(&nfh.encode(), new_off)
                    .map_err(Error::io("write compacted file"))?;
                let end = new_off + nfh.frame_len();
                let pad = end - (new_off + FRAME_HEADER_LEN as u64 + fh.len);
                out.write_all_at(&[0u8; 8][..pad as usize], end - pad)
                    .map_err(Error::io("write compacted file"))?;
                out_pos = end;
            }
            new_locs.push((id, Loc::from_header(new_off, &nfh)));
            if buf.len() >= READ_CHUNK {
                flush(&mut buf, &mut out_pos)?;
            }
        }
        flush(&mut buf, &mut out_pos)?;
        new_locs.sort_unstable_by_key(|&(id, _)| id);
        Ok((IdIndex::from_sorted(new_locs), out_pos, snap_end, file))
    }

    fn compact(&self) -> Result<(u64, u64)> {
        let _one = mlock(&self.compacting);
        self.check_poison()?;
        let before = {
            let w = mlock(&self.writer);
            w.buf_start + w.buf.len() as u64
        };
        let tmp = tmp_name(&self.name);
        let out = self.vfs.open(&tmp, true).map_err(Error::io("compact"))?;
        let res = self.compact_into(&out, &tmp);
        if res.is_err() {
            let _ = self.vfs.remove(&tmp);
        }
        res.map(|after| (before, after))
    }

    fn compact_into(&self, out: &Arc<dyn FileBackend>, tmp: &str) -> Result<u64> {
        // phase 1: copy a snapshot while readers and writers go on (same salt: the
        // frames appended meanwhile are copied verbatim below)
        let (mut new_ids, mut new_end, snap_end, old_file) = self.snapshot_into(out, &self.salt)?;
        // phase 2: block writers, copy what was appended meanwhile, swap
        let mut w = mlock(&self.writer);
        self.check_poison()?;
        self.drain(&w);
        self.flush_locked(&mut w, false)?;
        let cur_end = w.buf_start;
        let tail_start = new_end;
        let mut pos = snap_end;
        let mut chunk = vec![0u8; READ_CHUNK];
        while pos < cur_end {
            let n = (cur_end - pos).min(READ_CHUNK as u64) as usize;
            old_file
                .read_exact_at(&mut chunk[..n], pos)
                .map_err(Error::io("read"))?;
            out.write_all_at(&chunk[..n], new_end)
                .map_err(Error::io("write compacted file"))?;
            pos += n as u64;
            new_end += n as u64;
        }
        if new_end > tail_start {
            let mut tmp_state = State::new(out.clone(), new_ids);
            let mut dummy = 0;
            // every frame of the tail must be valid: no damage is skipped here
            let outcome = scan_log(
                &**out,
                &self.salt,
                tail_start,
                new_end,
                tail_start,
                u64::MAX,
                &mut |frames| apply_frames(&mut tmp_state, &mut dummy, frames),
            )
            .map_err(Error::io("compact"))?;
            if outcome.good_end != new_end || !outcome.corrupt.is_empty() {
                return Err(Error::Corrupt {
                    offset: snap_end,
                    reason: "log tail changed during compaction".into(),
                });
            }
            new_ids = tmp_state.ids;
            new_ids.rebuild();
        }
        // the new file is synced whole before it replaces the old one: its checkpoint
        // is its end
        out.write_all_at(
            &format::encode_checkpoint(&self.salt, new_end),
            CHECKPOINT_OFFSETS[0],
        )
        .map_err(Error::io("compact"))?;
        out.sync_data().map_err(Error::io("compact"))?;
        self.vfs
            .rename(tmp, &self.file_name)
            .map_err(Error::io("compact"))?;
        let dir_res = self.vfs.sync_dir();
        {
            // lock order: writer (held), synced, state
            let mut synced = mlock(&self.synced);
            let mut st = wlock(&self.state);
            st.file = out.clone();
            st.set_ids(new_ids);
            synced.end = new_end; // `out` was synced whole
            synced.ckpt = new_end;
            synced.next_slot = 1;
            w.buf_start = new_end;
            w.alloc_end = new_end;
            self.flushed_end.store(new_end, Ordering::Release);
        }
        dir_res.map_err(self.poison("sync directory"))?;
        Ok(new_end)
    }

    /// Closes the engine (see [`Database::close`]); idempotent.
    fn close(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = mlock(&self.compacting); // a running compaction finishes first
        mlock(&self.stop_tx).take();
        let res = {
            let mut w = mlock(&self.writer);
            if self.closed.load(Ordering::Acquire) {
                return Ok(());
            }
            let res = if self.poisoned.load(Ordering::Acquire) {
                Ok(())
            } else {
                self.drain(&w);
                self.flush_locked(&mut w, true)
                    .and_then(|_| self.checkpoint_now())
                    .and_then(|_| self.trim(&mut w))
            };
            self.closed.store(true, Ordering::Release);
            res
        };
        mlock(&self.lock).take();
        res
    }

    /// A cleanly closed file ends at its log end: drops the zero-filled room (and any
    /// other byte after the log end).
    fn trim(&self, w: &mut Writer) -> Result<()> {
        let file = rlock(&self.state).file.clone();
        if file.len().map_err(Error::io("close"))? > w.buf_start {
            file.set_len(w.buf_start)
                .and_then(|_| file.sync_data())
                .map_err(self.poison("trim"))?;
        }
        w.alloc_end = w.buf_start;
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // normally done when the last handle dropped; this covers an engine whose
        // handle was never built (an error while opening)
        let _ = self.close();
    }
}
