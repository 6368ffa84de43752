//! Files: a private space per user and a public area; resumable uploads
//! (ask where an upload stands, continue from there: the tus core), a CRC-32
//! (or SHA3-256) per chunk and the SHA3-256 of the whole file checked at the
//! end (a mismatch is refused and the partial data kept; the server's running
//! hash lives on hash-lane threads beside the chunk writers),
//! content-addressed dedup with instant upload (also late: [`Files::announce`]),
//! ranged download, list/mkdir/rename/delete, quotas, one writer per upload
//! with a lease, expiry of abandoned uploads (tus expiration) and their
//! termination.
//!
//! Layout: metadata (entries and uploads) in the zs-db database `files`;
//! finished contents as blobs named by their hash under `<root>/blobs/`, and
//! partial uploads as `<root>/uploads/<id>.part`. User paths never touch the
//! file system: the namespace is a table, so traversal, absolute paths,
//! device names or symlinks in a user path cannot reach a real file (and are
//! refused anyway, with [`code::INVALID`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use zs_core::{Peer, Registry};
use zs_db::{Database, Kind};
use zs_hash::Sha3_256;
use zs_wire::DataFrame;

use crate::accounts::{lock, now_ms, Accounts};
use crate::error::{code, Result, ServiceError};
use crate::RegistryExt;

/// Error codes of the file service (beside [`crate::code`]).
pub mod file_code {
    /// No such file or directory.
    pub const NOT_FOUND: u32 = 620;
    /// The path exists already.
    pub const EXISTS: u32 = 621;
    /// Over the user's quota.
    pub const QUOTA: u32 = 622;
    /// A chunk at another offset than where the upload stands (the message
    /// gives the offset).
    pub const OFFSET: u32 = 623;
    /// A chunk or the whole file does not match its SHA3-256.
    pub const HASH_MISMATCH: u32 = 624;
    /// Another connection holds the upload's lease.
    pub const LOCKED: u32 = 625;
    /// No such upload (finished, terminated or expired).
    pub const NO_UPLOAD: u32 = 626;
    /// Too many unfinished uploads for this user or server.
    pub const TOO_MANY_UPLOADS: u32 = 627;
}

/// Settings of the file service.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Where blobs and partial uploads live (`None`: no file service).
    pub root: Option<PathBuf>,
    /// Bytes a user may hold: their files (private and public) plus the
    /// announced size of their unfinished uploads.
    pub quota_per_user: u64,
    /// Largest file.
    pub max_file_size: u64,
    /// Largest chunk of `file.chunk` and read of `file.read`.
    pub max_chunk: usize,
    /// Most unfinished uploads per user.
    pub max_uploads_per_user: usize,
    /// Most unfinished uploads on the server.
    pub max_uploads: usize,
    /// A writer that sent nothing for this long loses its lease.
    pub lease: Duration,
    /// An upload untouched for this long is deleted (tus expiration).
    pub upload_ttl: Duration,
    /// Most entries (files and directories) per user.
    pub max_entries_per_user: usize,
    /// Longest path (bytes) and deepest nesting.
    pub max_path: usize,
    /// Deepest nesting of directories.
    pub max_depth: usize,
    /// An upload's partial file is fsynced (and the synced offset recorded)
    /// once this many bytes were written since the last sync, in the
    /// background (on the upload's hash lane, while the next chunks are
    /// written), and on a resume and before `file.finish` answers; chunks in
    /// between are written without a sync. 0: every chunk is synced before
    /// its answer.
    pub sync_every: u64,
    /// Chunks waiting per writer thread (see [`CHUNK_WRITERS`]).
    pub chunk_queue: usize,
    /// Bytes of block signatures ([`Files::signature`]) kept in memory, so
    /// the next delta upload against the same content (blobs never change)
    /// reads and hashes nothing; oldest dropped first. 0: none kept.
    pub signature_cache_bytes: usize,
}

/// Threads writing `file.chunk`s (per registration), each taking the
/// uploads whose id modulo this number is its index.
pub const CHUNK_WRITERS: usize = 2;

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            root: None,
            quota_per_user: 1 << 30,
            max_file_size: 1 << 30,
            max_chunk: 1 << 20,
            max_uploads_per_user: 64,
            max_uploads: 10_000,
            lease: Duration::from_secs(30),
            upload_ttl: Duration::from_secs(24 * 3600),
            max_entries_per_user: 100_000,
            max_path: 1024,
            max_depth: 32,
            sync_every: 8 << 20,
            chunk_queue: 64,
            signature_cache_bytes: 16 << 20,
        }
    }
}

/// Which area a path is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Space {
    /// The caller's own space.
    Private,
    /// The area every logged-in user reads.
    Public,
}

impl Space {
    /// `private` or `public`.
    pub fn parse(s: &str) -> Result<Space> {
        match s {
            "private" => Ok(Space::Private),
            "public" => Ok(Space::Public),
            o => Err(ServiceError::bad(format!("space {o:?}: private or public"))),
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Space::Private => "private",
            Space::Public => "public",
        }
    }
}

const DEVICE_NAMES: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9", "conin$",
    "conout$",
];

/// Checks a user path: `a/b/c` relative, components of 1 to 255 bytes, no
/// `.`/`..`, no `\`, `:`, NUL or control characters, no Windows device name
/// (`CON`, `nul.txt`, …), no trailing dot or space; the root is `""`.
/// Returns the components.
pub fn check_path(path: &str, max_len: usize, max_depth: usize) -> Result<Vec<String>> {
    let bad = |why: &str| ServiceError::new(code::INVALID, format!("path {path:?}: {why}"));
    if path.len() > max_len {
        return Err(bad("too long"));
    }
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if path.starts_with('/') {
        return Err(bad("absolute paths are refused"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > max_depth {
        return Err(bad("too deep"));
    }
    for p in &parts {
        if p.is_empty() {
            return Err(bad("empty component"));
        }
        if *p == "." || *p == ".." {
            return Err(bad("'.' and '..' are refused"));
        }
        if p.len() > 255 {
            return Err(bad("a component has at most 255 bytes"));
        }
        if p.chars().any(|c| c.is_control() || c == '\\' || c == ':') {
            return Err(bad("control characters, '\\' and ':' are refused"));
        }
        if p.ends_with('.') || p.ends_with(' ') {
            return Err(bad("a component may not end with '.' or ' '"));
        }
        let stem = p.split('.').next().unwrap_or("").to_ascii_lowercase();
        if DEVICE_NAMES.contains(&stem.trim_end()) {
            return Err(bad("device names are refused"));
        }
    }
    Ok(parts.into_iter().map(str::to_owned).collect())
}

/// A file or directory as stored (JSON in `files`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EntryRec {
    #[serde(rename = "t")]
    tag: String,
    owner: u64,
    path: String,
    dir: bool,
    size: u64,
    hash: String,
    by: u64,
    mtime_ms: u64,
}

/// An unfinished upload as stored (JSON in `files`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadRec {
    #[serde(rename = "t")]
    tag: String,
    owner: u64,
    path: String,
    size: u64,
    hash: String,
    by: u64,
    created_ms: u64,
    /// Bytes of the partial file known to be on disk (fsynced): where the
    /// upload stands after a restart.
    #[serde(default)]
    synced: u64,
}

/// One listed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Name (last component).
    pub name: String,
    /// A directory.
    pub dir: bool,
    /// Size in bytes (0 for a directory).
    pub size: u64,
    /// SHA3-256 of the content, hex (empty for a directory).
    pub hash: String,
    /// Modified (Unix ms).
    pub mtime_ms: u64,
}

/// Where an upload stands, as `file.begin` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadState {
    /// Upload id (0 for an instant upload).
    pub id: u64,
    /// Bytes the server holds: continue from here.
    pub offset: u64,
    /// The server had the content already: the file exists now, nothing to send.
    pub instant: bool,
}

struct Upload {
    rec_id: u64,
    rec: UploadRec,
    /// Bytes written (all of them checked); `rec.synced` of them are durable.
    offset: u64,
    holder: Option<Peer>,
    touched: Instant,
    /// A chunk is being written (or the upload finished) outside the state
    /// lock: others wait on [`Inner::idle`].
    busy: bool,
    /// The highest offset a background sync was asked for.
    sync_asked: u64,
}

#[derive(Default)]
struct State {
    /// (owner, path) -> (record id, entry). Owner 0 is the public area.
    entries: BTreeMap<(u64, String), (u64, EntryRec)>,
    /// Blob hash -> references.
    refs: HashMap<String, u64>,
    /// (blob hash, user id or 0 for the public area) -> entries: who may
    /// claim the content by hash alone (instant upload). Others must send it:
    /// knowing a hash proves nothing about holding the content.
    holders: HashMap<(String, u64), u64>,
    uploads: HashMap<u64, Upload>,
    /// Bytes charged per user (files + reserved uploads).
    usage: HashMap<u64, u64>,
    /// Entries per user.
    counts: HashMap<u64, usize>,
}

struct Inner {
    db: Database,
    cfg: FilesConfig,
    root: PathBuf,
    accounts: Accounts,
    state: Mutex<State>,
    /// Signalled when an upload stops being busy.
    idle: Condvar,
    /// Block signatures by (content hash, block size), bounded by
    /// [`FilesConfig::signature_cache_bytes`].
    sigs: Mutex<SigCache>,
    /// The running SHA3-256 of each upload, on threads of their own.
    lanes: HashLanes,
}

/// Threads keeping the running SHA3-256 of uploads (each takes the uploads
/// whose id modulo this number is its index), beside the chunk writers: a
/// chunk is hashed while the next one is written, and neither waits for the
/// other unless a lane falls [`FilesConfig::chunk_queue`] chunks behind.
pub const HASH_LANES: usize = 2;

enum HashJob {
    /// Bytes `at..at + data.len()` of upload `id`, as written.
    Feed { id: u64, at: u64, data: Bytes },
    /// The SHA3-256 of bytes `0..len` of upload `id` when the lane holds
    /// exactly those (else `None`: hash the partial file); the lane forgets
    /// the upload.
    Take {
        id: u64,
        len: u64,
        reply: mpsc::SyncSender<Option<[u8; 32]>>,
    },
    /// The upload is gone.
    Forget { id: u64 },
}

/// The hash lanes of a [`Files`]: running hashes live on the lane threads
/// (one `Sha3_256` per unfinished upload that has been fed from offset 0
/// while the server ran); the threads end when the service is dropped.
/// The periodic syncs of partial files go to a thread of their own
/// (`zs-files-sync`): on a lane, each fsync stopped that lane's hashing
/// for as long as the disk took.
struct HashLanes {
    lanes: Vec<mpsc::SyncSender<HashJob>>,
    /// (upload id, offset): fsync the partial file, whose bytes below the
    /// offset were written before this was sent, and record that offset.
    syncer: Option<mpsc::SyncSender<(u64, u64)>>,
}

/// The sync thread: takes every sync asked meanwhile, one fsync per upload
/// for the highest offset asked.
fn start_syncer(
    queue: usize,
    files: std::sync::Weak<Inner>,
) -> Option<mpsc::SyncSender<(u64, u64)>> {
    let (tx, rx) = mpsc::sync_channel::<(u64, u64)>(queue.max(1));
    let spawned = std::thread::Builder::new()
        .name("zs-files-sync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut asked = vec![first];
                asked.extend(rx.try_iter());
                // Highest offset per upload first, then one sync each.
                asked.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                asked.dedup_by_key(|j| j.0);
                for (id, upto) in asked {
                    let Some(inner) = files.upgrade() else {
                        return;
                    };
                    Files { inner }.synced_to(id, upto);
                }
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "files: cannot start the sync thread");
            None
        }
    }
}

impl HashLanes {
    fn start(queue: usize, files: std::sync::Weak<Inner>) -> HashLanes {
        let syncer = start_syncer(queue, files);
        let lanes = (0..HASH_LANES)
            .filter_map(|i| {
                let (tx, rx) = mpsc::sync_channel::<HashJob>(queue.max(1));
                let spawned = std::thread::Builder::new()
                    .name(format!("zs-files-hash-{i}"))
                    .spawn(move || {
                        let mut run: HashMap<u64, (Sha3_256, u64)> = HashMap::new();
                        for job in rx {
                            match job {
                                HashJob::Feed { id, at, data } => {
                                    if at == 0 {
                                        run.insert(id, (Sha3_256::new(), 0));
                                    }
                                    match run.get_mut(&id) {
                                        Some((h, n)) if *n == at => {
                                            h.update(&data);
                                            *n += data.len() as u64;
                                        }
                                        // Bytes out of sequence: the running
                                        // hash is void (read back at the end).
                                        Some(_) => {
                                            run.remove(&id);
                                        }
                                        None => {}
                                    }
                                }
                                HashJob::Take { id, len, reply } => {
                                    let got = run
                                        .remove(&id)
                                        .filter(|(_, n)| *n == len)
                                        .map(|(h, _)| h.finalize());
                                    let _ = reply.send(got);
                                }
                                HashJob::Forget { id } => {
                                    run.remove(&id);
                                }
                            }
                        }
                    });
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::error!(error = %e, "files: cannot start a hash lane");
                        None
                    }
                }
            })
            .collect();
        HashLanes { lanes, syncer }
    }

    fn send(&self, id: u64, job: HashJob) -> bool {
        if self.lanes.is_empty() {
            return false;
        }
        // A stopped lane only costs a read-back of the partial file.
        self.lanes[(id % self.lanes.len() as u64) as usize]
            .send(job)
            .is_ok()
    }

    fn feed(&self, id: u64, at: u64, data: Bytes) {
        self.send(id, HashJob::Feed { id, at, data });
    }

    fn forget(&self, id: u64) {
        self.send(id, HashJob::Forget { id });
    }

    /// Asks the sync thread to sync upload `id` up to `upto` (false: no
    /// such thread).
    fn sync(&self, id: u64, upto: u64) -> bool {
        // Never blocks (a caller may hold the state lock, which the sync
        // thread takes): a full queue means the caller syncs itself.
        self.syncer
            .as_ref()
            .is_some_and(|tx| tx.try_send((id, upto)).is_ok())
    }

    /// The running hash of bytes `0..len` of upload `id`, if a lane has it.
    fn take(&self, id: u64, len: u64) -> Option<[u8; 32]> {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.send(id, HashJob::Take { id, len, reply: tx }) {
            return None;
        }
        rx.recv().ok().flatten()
    }
}

/// Most blocks in one `file.signature` answer: 20 bytes each, so the answer
/// (983,040 bytes of sums and a few bytes of framing) stays under the 1 MiB
/// frame a client of the security layer's default configuration can receive
/// (`zs_secure::SecureConfig::max_pending_plaintext`: a frame is held whole
/// until complete, and a larger one resets the connection). It was 65,536
/// (1.31 MiB answers: `zs file put --base` of a 256 MiB file in 4 KiB blocks
/// lost its connection). Larger files take larger blocks
/// ([`crate::ServicesClient::upload_delta`] picks them).
pub const MAX_SIGNATURE_BLOCKS: u64 = 49_152;

/// A block signature list: per block its rolling checksum and its 16-byte
/// strong sum ([`BlockSum`]).
pub type Signature = Arc<Vec<(u32, [u8; 16])>>;

/// The per-block strong sum of a `file.signature` (its version byte on the
/// wire). It only picks which blocks to copy: the whole-file SHA3-256 checked
/// by `file.finish` is what the result rests on, so a block-sum collision
/// makes a delta upload fail (`624`), never store wrong bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockSum {
    /// 1: the first 16 bytes of the block's SHA3-256 (the first version,
    /// what a request without the field gets).
    Sha3 = 1,
    /// 2: the block's XXH3-128 (seed 0), the `u128` little endian: a
    /// non-cryptographic hash, many times cheaper than SHA3-256 (rsync uses
    /// XXH3-128 or MD5).
    Xxh3 = 2,
}

impl BlockSum {
    /// From its byte on the wire.
    pub fn from_u8(v: u8) -> Result<BlockSum> {
        match v {
            1 => Ok(BlockSum::Sha3),
            2 => Ok(BlockSum::Xxh3),
            _ => Err(ServiceError::bad(format!(
                "unknown block sum {v} (1 = SHA3-256/16, 2 = XXH3-128)"
            ))),
        }
    }

    /// The strong sum of `block`.
    pub fn of(self, block: &[u8]) -> [u8; 16] {
        match self {
            BlockSum::Sha3 => {
                let h = zs_hash::sha3_256(block);
                let mut s = [0u8; 16];
                s.copy_from_slice(&h[..16]);
                s
            }
            BlockSum::Xxh3 => zs_hash::xxh3_128(block).to_le_bytes(),
        }
    }
}

#[derive(Default)]
struct SigCache {
    map: HashMap<(String, usize, BlockSum), Signature>,
    order: std::collections::VecDeque<(String, usize, BlockSum)>,
    bytes: usize,
}

impl SigCache {
    fn put(&mut self, key: (String, usize, BlockSum), sig: Signature, cap: usize) {
        let size = sig.len() * 20 + 64;
        if size > cap || self.map.contains_key(&key) {
            return;
        }
        while self.bytes + size > cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(s) = self.map.remove(&old) {
                self.bytes -= s.len() * 20 + 64;
            }
        }
        self.bytes += size;
        self.order.push_back(key.clone());
        self.map.insert(key, sig);
    }
}

/// The file service (cheap to clone).
#[derive(Clone)]
pub struct Files {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Files({})", self.inner.root.display())
    }
}

fn io_err(what: &str, e: std::io::Error) -> ServiceError {
    tracing::error!(error = %e, "files: {what}");
    ServiceError::new(code::STORAGE, format!("{what}: {e}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ServiceError::new(code::STORAGE, e.to_string()))
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// SHA3-256 of a file's first `len` bytes.
fn hash_file(path: &Path, len: u64) -> std::io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = Sha3_256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finalize())
}

impl Files {
    /// Opens the service on `db` (a `files` database) with blobs under
    /// `cfg.root`: loads entries and uploads, trims each partial file to what
    /// was synced, drops expired uploads and orphaned partial files.
    pub fn open(db: Database, accounts: Accounts, cfg: FilesConfig) -> Result<Files> {
        let root = cfg.root.clone().ok_or_else(|| {
            ServiceError::new(code::STORAGE, "the file service needs a root directory")
        })?;
        for d in ["blobs", "uploads"] {
            std::fs::create_dir_all(root.join(d)).map_err(|e| io_err("create directory", e))?;
        }
        let mut st = State::default();
        let now = now_ms();
        let mut dead = zs_db::Batch::new();
        for r in db.cursor(0, false) {
            let r = r.map_err(ServiceError::storage)?;
            let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap_or_default();
            match v.get("t").and_then(|t| t.as_str()) {
                Some("e") => {
                    let Ok(e) = serde_json::from_value::<EntryRec>(v) else {
                        continue;
                    };
                    if !e.dir {
                        *st.refs.entry(e.hash.clone()).or_default() += 1;
                        *st.holders.entry((e.hash.clone(), holder(&e))).or_default() += 1;
                    }
                    *st.usage.entry(e.by).or_default() += e.size;
                    *st.counts.entry(e.by).or_default() += 1;
                    st.entries.insert((e.owner, e.path.clone()), (r.id, e));
                }
                Some("u") => {
                    let Ok(u) = serde_json::from_value::<UploadRec>(v) else {
                        continue;
                    };
                    let part = root.join("uploads").join(format!("{}.part", r.id));
                    let expired =
                        now.saturating_sub(u.created_ms) > cfg.upload_ttl.as_millis() as u64;
                    if expired {
                        dead.delete(r.id);
                        let _ = std::fs::remove_file(&part);
                        continue;
                    }
                    // Only the synced bytes count: what was written after
                    // the last sync may not have reached the disk.
                    let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
                    let offset = len.min(u.synced).min(u.size);
                    if len > offset {
                        if let Ok(f) = OpenOptions::new().write(true).open(&part) {
                            let _ = f.set_len(offset);
                        }
                    }
                    *st.usage.entry(u.by).or_default() += u.size;
                    let mut u = u;
                    u.synced = offset;
                    st.uploads.insert(
                        r.id,
                        Upload {
                            rec_id: r.id,
                            rec: u,
                            offset,
                            holder: None,
                            touched: Instant::now(),
                            busy: false,
                            sync_asked: offset,
                        },
                    );
                }
                _ => tracing::error!(id = r.id, "files: unreadable record skipped"),
            }
        }
        if !dead.is_empty() {
            db.commit(&dead).map_err(ServiceError::storage)?;
        }
        // Partial files no upload claims (a crash between commit and unlink).
        if let Ok(rd) = std::fs::read_dir(root.join("uploads")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name
                    .strip_suffix(".part")
                    .and_then(|s| s.parse::<u64>().ok());
                if id.is_none_or(|id| !st.uploads.contains_key(&id)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let cfg_queue = cfg.chunk_queue;
        Ok(Files {
            inner: Arc::new_cyclic(|weak| Inner {
                db,
                cfg,
                root,
                accounts,
                state: Mutex::new(st),
                idle: Condvar::new(),
                sigs: Mutex::default(),
                lanes: HashLanes::start(cfg_queue, weak.clone()),
            }),
        })
    }

    /// Syncs every unfinished upload (so a restart resumes each where it
    /// stands) and closes the `files` database.
    pub fn close(&self) -> Result<()> {
        let mut st = lock(&self.inner.state);
        while st.uploads.values().any(|u| u.busy) {
            st = self.inner.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        for u in st.uploads.values_mut() {
            if let Err(e) = self.sync_upload(u) {
                tracing::warn!(id = u.rec_id, error = %e, "files: cannot sync an upload at close");
            }
        }
        drop(st);
        self.inner.db.close().map_err(ServiceError::storage)
    }

    /// The configuration.
    pub fn config(&self) -> &FilesConfig {
        &self.inner.cfg
    }

    /// Bytes charged to `uid` (files + announced sizes of unfinished uploads).
    pub fn usage(&self, uid: u64) -> u64 {
        lock(&self.inner.state)
            .usage
            .get(&uid)
            .copied()
            .unwrap_or(0)
    }

    /// Unfinished uploads on the server.
    pub fn uploads(&self) -> usize {
        lock(&self.inner.state).uploads.len()
    }

    /// Bytes of partial upload files on disk.
    pub fn partial_bytes(&self) -> u64 {
        lock(&self.inner.state)
            .uploads
            .values()
            .map(|u| u.offset)
            .sum()
    }

    fn blob(&self, hash: &str) -> PathBuf {
        self.inner.root.join("blobs").join(hash)
    }

    fn part(&self, id: u64) -> PathBuf {
        self.inner.root.join("uploads").join(format!("{id}.part"))
    }

    fn owner(space: Space, uid: u64) -> u64 {
        match space {
            Space::Private => uid,
            Space::Public => 0,
        }
    }

    fn norm(&self, path: &str) -> Result<String> {
        Ok(check_path(path, self.inner.cfg.max_path, self.inner.cfg.max_depth)?.join("/"))
    }

    fn check_parent(st: &State, owner: u64, path: &str) -> Result<()> {
        let p = parent(path);
        if p.is_empty() {
            return Ok(());
        }
        match st.entries.get(&(owner, p.to_owned())) {
            Some((_, e)) if e.dir => Ok(()),
            Some(_) => Err(ServiceError::new(
                file_code::EXISTS,
                format!("{p:?} is a file"),
            )),
            None => Err(ServiceError::new(
                file_code::NOT_FOUND,
                format!("no directory {p:?}"),
            )),
        }
    }

    fn may_change(&self, uid: u64, e: &EntryRec) -> Result<()> {
        if e.owner == 0 && e.by != uid && !self.inner.accounts.is_admin(uid) {
            return Err(ServiceError::new(
                code::FORBIDDEN,
                "only who put it there (or an admin) changes a public entry",
            ));
        }
        Ok(())
    }

    /// Creates directory `path`.
    pub fn mkdir(&self, uid: u64, space: Space, path: &str) -> Result<()> {
        let path = self.norm(path)?;
        if path.is_empty() {
            return Err(ServiceError::new(file_code::EXISTS, "the root exists"));
        }
        let owner = Self::owner(space, uid);
        let mut st = lock(&self.inner.state);
        Self::check_parent(&st, owner, &path)?;
        if st.entries.contains_key(&(owner, path.clone())) {
            return Err(ServiceError::new(
                file_code::EXISTS,
                format!("{path:?} exists"),
            ));
        }
        self.check_count(&st, uid)?;
        let e = EntryRec {
            tag: "e".into(),
            owner,
            path: path.clone(),
            dir: true,
            size: 0,
            hash: String::new(),
            by: uid,
            mtime_ms: now_ms(),
        };
        let id = self
            .inner
            .db
            .insert(Kind::Json, &json(&e)?)
            .map_err(ServiceError::storage)?;
        *st.counts.entry(uid).or_default() += 1;
        st.entries.insert((owner, path), (id, e));
        Ok(())
    }

    /// Whether `uid` may put a file at `path`: its parent is a directory,
    /// and what is there now is no directory and is theirs to replace.
    fn check_target(&self, st: &State, uid: u64, owner: u64, path: &str) -> Result<()> {
        Self::check_parent(st, owner, path)?;
        if let Some((_, e)) = st.entries.get(&(owner, path.to_owned())) {
            if e.dir {
                return Err(ServiceError::new(
                    file_code::EXISTS,
                    format!("{path:?} is a directory"),
                ));
            }
            self.may_change(uid, e)?;
        }
        Ok(())
    }

    fn check_count(&self, st: &State, uid: u64) -> Result<()> {
        let n = st.counts.get(&uid).copied().unwrap_or(0);
        if n >= self.inner.cfg.max_entries_per_user {
            return Err(ServiceError::new(
                file_code::QUOTA,
                format!(
                    "at most {} files and directories per user",
                    self.inner.cfg.max_entries_per_user
                ),
            ));
        }
        Ok(())
    }

    /// Lists directory `path` (`""`: the root).
    pub fn list(&self, uid: u64, space: Space, path: &str) -> Result<Vec<FileInfo>> {
        let path = self.norm(path)?;
        let owner = Self::owner(space, uid);
        let st = lock(&self.inner.state);
        if !path.is_empty() {
            match st.entries.get(&(owner, path.clone())) {
                Some((_, e)) if e.dir => {}
                Some((_, e)) => {
                    return Ok(vec![info(e)]);
                }
                None => {
                    return Err(ServiceError::new(
                        file_code::NOT_FOUND,
                        format!("no {path:?}"),
                    ))
                }
            }
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        Ok(st
            .entries
            .range((owner, prefix.clone())..)
            .take_while(|((o, p), _)| *o == owner && p.starts_with(&prefix))
            .filter(|((_, p), _)| !p[prefix.len()..].contains('/'))
            .map(|(_, (_, e))| info(e))
            .collect())
    }

    /// Stat of one file or directory.
    pub fn stat(&self, uid: u64, space: Space, path: &str) -> Result<FileInfo> {
        let path = self.norm(path)?;
        let st = lock(&self.inner.state);
        st.entries
            .get(&(Self::owner(space, uid), path.clone()))
            .map(|(_, e)| info(e))
            .ok_or_else(|| ServiceError::new(file_code::NOT_FOUND, format!("no {path:?}")))
    }

    /// Renames (moves) `from` to `to` in one space; a directory takes its
    /// contents along. The target must not exist.
    pub fn rename(&self, uid: u64, space: Space, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.norm(from)?, self.norm(to)?);
        if from.is_empty() || to.is_empty() {
            return Err(ServiceError::new(
                code::INVALID,
                "the root cannot be renamed",
            ));
        }
        if to == from || to.starts_with(&format!("{from}/")) {
            return Err(ServiceError::new(
                code::INVALID,
                "cannot move a directory into itself",
            ));
        }
        let owner = Self::owner(space, uid);
        let mut st = lock(&self.inner.state);
        let Some((_, e)) = st.entries.get(&(owner, from.clone())) else {
            return Err(ServiceError::new(
                file_code::NOT_FOUND,
                format!("no {from:?}"),
            ));
        };
        self.may_change(uid, e)?;
        if st.entries.contains_key(&(owner, to.clone())) {
            return Err(ServiceError::new(
                file_code::EXISTS,
                format!("{to:?} exists"),
            ));
        }
        Self::check_parent(&st, owner, &to)?;
        let prefix = format!("{from}/");
        let moving: Vec<String> = st
            .entries
            .range((owner, from.clone())..)
            .take_while(|((o, p), _)| *o == owner && (*p == from || p.starts_with(&prefix)))
            .map(|((_, p), _)| p.clone())
            .filter(|p| *p == from || p.starts_with(&prefix))
            .collect();
        let mut b = zs_db::Batch::new();
        let mut moved = Vec::new();
        for p in &moving {
            let (id, mut e) = st.entries[&(owner, p.clone())].clone();
            e.path = format!("{to}{}", &p[from.len()..]);
            if e.path.len() > self.inner.cfg.max_path {
                return Err(ServiceError::new(
                    code::INVALID,
                    "a moved path gets too long",
                ));
            }
            b.update(id, Kind::Json, json(&e)?);
            moved.push((p.clone(), id, e));
        }
        self.inner.db.commit(&b).map_err(ServiceError::storage)?;
        for (old, id, e) in moved {
            st.entries.remove(&(owner, old));
            st.entries.insert((owner, e.path.clone()), (id, e));
        }
        Ok(())
    }

    /// Deletes a file or an empty directory. A blob nobody references any
    /// more is removed.
    pub fn delete(&self, uid: u64, space: Space, path: &str) -> Result<()> {
        let path = self.norm(path)?;
        let owner = Self::owner(space, uid);
        let mut st = lock(&self.inner.state);
        let Some((id, e)) = st.entries.get(&(owner, path.clone())).cloned() else {
            return Err(ServiceError::new(
                file_code::NOT_FOUND,
                format!("no {path:?}"),
            ));
        };
        self.may_change(uid, &e)?;
        if e.dir {
            let prefix = format!("{path}/");
            if st
                .entries
                .range((owner, prefix.clone())..)
                .next()
                .is_some_and(|((o, p), _)| *o == owner && p.starts_with(&prefix))
            {
                return Err(ServiceError::new(
                    code::INVALID,
                    format!("{path:?} is not empty"),
                ));
            }
        }
        self.inner.db.delete(id).map_err(ServiceError::storage)?;
        st.entries.remove(&(owner, path));
        if let Some(u) = st.usage.get_mut(&e.by) {
            *u = u.saturating_sub(e.size);
        }
        if let Some(c) = st.counts.get_mut(&e.by) {
            *c = c.saturating_sub(1);
        }
        if !e.dir {
            unhold(&mut st, &e);
            self.unref(&mut st, &e.hash);
        }
        Ok(())
    }

    fn unref(&self, st: &mut State, hash: &str) {
        let gone = match st.refs.get_mut(hash) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if gone {
            st.refs.remove(hash);
            let _ = std::fs::remove_file(self.blob(hash));
        }
    }

    /// Adds (or replaces) a file entry for content `hash` of `size` bytes.
    fn put_entry(
        &self,
        st: &mut State,
        uid: u64,
        owner: u64,
        path: &str,
        size: u64,
        hash: &str,
    ) -> Result<()> {
        let e = EntryRec {
            tag: "e".into(),
            owner,
            path: path.to_owned(),
            dir: false,
            size,
            hash: hash.to_owned(),
            by: uid,
            mtime_ms: now_ms(),
        };
        let old = st.entries.get(&(owner, path.to_owned())).cloned();
        let id = match &old {
            Some((id, _)) => {
                self.inner
                    .db
                    .update(*id, Kind::Json, &json(&e)?)
                    .map_err(ServiceError::storage)?;
                *id
            }
            None => self
                .inner
                .db
                .insert(Kind::Json, &json(&e)?)
                .map_err(ServiceError::storage)?,
        };
        *st.refs.entry(hash.to_owned()).or_default() += 1;
        *st.holders.entry((hash.to_owned(), holder(&e))).or_default() += 1;
        *st.usage.entry(uid).or_default() += size;
        *st.counts.entry(uid).or_default() += 1;
        if let Some((_, o)) = old {
            if let Some(u) = st.usage.get_mut(&o.by) {
                *u = u.saturating_sub(o.size);
            }
            if let Some(c) = st.counts.get_mut(&o.by) {
                *c = c.saturating_sub(1);
            }
            unhold(st, &o);
            self.unref(st, &o.hash);
        }
        st.entries.insert((owner, path.to_owned()), (id, e));
        Ok(())
    }

    /// Drops uploads untouched for [`FilesConfig::upload_ttl`] (partial file,
    /// record, reserved quota).
    fn sweep(&self, st: &mut State) {
        let ttl = self.inner.cfg.upload_ttl;
        let dead: Vec<u64> = st
            .uploads
            .iter()
            .filter(|(_, u)| !u.busy && u.touched.elapsed() >= ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            if let Err(e) = self.drop_upload(st, id) {
                tracing::warn!(id, error = %e, "files: cannot drop an expired upload");
            }
        }
    }

    fn drop_upload(&self, st: &mut State, id: u64) -> Result<()> {
        let Some(u) = st.uploads.get(&id) else {
            return Ok(());
        };
        self.inner
            .db
            .delete(u.rec_id)
            .map_err(ServiceError::storage)?;
        let u = st.uploads.remove(&id).expect("present");
        if let Some(x) = st.usage.get_mut(&u.rec.by) {
            *x = x.saturating_sub(u.rec.size);
        }
        let _ = std::fs::remove_file(self.part(id));
        self.inner.lanes.forget(id);
        Ok(())
    }

    /// Starts or resumes an upload of `size` bytes with SHA3-256 `hash` to
    /// `path` for connection `peer`: an instant upload when the server holds
    /// that content already in the public area or in this user's files (not
    /// someone else's private file: a hash is no proof of holding it);
    /// otherwise the upload and where it stands. The caller's unfinished
    /// upload of the same path and size is resumed when its hash is the same,
    /// or when either side announced none yet (an empty `hash`: it comes
    /// with [`Files::announce`] or [`Files::finish_with`], and a different
    /// one is refused there); another one is replaced. Takes the upload's
    /// lease.
    pub fn begin(
        &self,
        peer: &Peer,
        uid: u64,
        space: Space,
        path: &str,
        size: u64,
        hash: &[u8],
    ) -> Result<UploadState> {
        let cfg = &self.inner.cfg;
        let path = self.norm(path)?;
        if path.is_empty() {
            return Err(ServiceError::new(code::INVALID, "a file needs a name"));
        }
        if hash.len() != 32 && !hash.is_empty() {
            return Err(ServiceError::bad(
                "the hash is SHA3-256: 32 bytes (or none: announced at file.finish)",
            ));
        }
        if size > cfg.max_file_size {
            return Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                format!("a file has at most {} bytes", cfg.max_file_size),
            ));
        }
        let deferred = hash.is_empty();
        let hash = hex(hash);
        let owner = Self::owner(space, uid);
        let mut st = lock(&self.inner.state);
        self.sweep(&mut st);
        self.check_target(&st, uid, owner, &path)?;
        let used = st.usage.get(&uid).copied().unwrap_or(0);
        // Instant upload: the content is here already.
        let may_claim = !deferred
            && (st.holders.contains_key(&(hash.clone(), 0))
                || st.holders.contains_key(&(hash.clone(), uid)));
        if may_claim && self.blob(&hash).exists() {
            if used + size > cfg.quota_per_user {
                return Err(self.quota_err(used, size));
            }
            self.check_count(&st, uid)?;
            self.put_entry(&mut st, uid, owner, &path, size, &hash)?;
            return Ok(UploadState {
                id: 0,
                offset: size,
                instant: true,
            });
        }
        // Resume an unfinished upload of the same file.
        let existing = st
            .uploads
            .iter()
            .find(|(_, u)| u.rec.owner == owner && u.rec.path == path && u.rec.by == uid)
            .map(|(id, u)| {
                let hash_fits = deferred || u.rec.hash.is_empty() || u.rec.hash == hash;
                (*id, u.rec.size == size && hash_fits)
            });
        if let Some((id, _)) = existing {
            st = self.wait_idle(st, id);
        }
        // (Finished or dropped while we waited: a new upload.)
        let existing = existing.filter(|(id, _)| st.uploads.contains_key(id));
        if let Some((id, same)) = existing {
            if same {
                let u = st.uploads.get_mut(&id).expect("found");
                Self::take_lease(u, peer, cfg.lease)?;
                if !deferred {
                    u.rec.hash = hash;
                }
                // The offset a resume continues from is a durable one.
                self.sync_upload(u)?;
                return Ok(UploadState {
                    id,
                    offset: u.offset,
                    instant: false,
                });
            }
            // Another content for that path: the old upload is replaced.
            self.drop_upload(&mut st, id)?;
        }
        let used = st.usage.get(&uid).copied().unwrap_or(0);
        if used + size > cfg.quota_per_user {
            return Err(self.quota_err(used, size));
        }
        let mine = st.uploads.values().filter(|u| u.rec.by == uid).count();
        if mine >= cfg.max_uploads_per_user || st.uploads.len() >= cfg.max_uploads {
            return Err(ServiceError::new(
                file_code::TOO_MANY_UPLOADS,
                format!(
                    "too many unfinished uploads ({mine} of yours, limit {}; finish, terminate or let them expire)",
                    cfg.max_uploads_per_user
                ),
            ));
        }
        let rec = UploadRec {
            tag: "u".into(),
            owner,
            path,
            size,
            hash,
            by: uid,
            created_ms: now_ms(),
            synced: 0,
        };
        let id = self
            .inner
            .db
            .insert(Kind::Json, &json(&rec)?)
            .map_err(ServiceError::storage)?;
        File::create(self.part(id)).map_err(|e| io_err("create partial file", e))?;
        *st.usage.entry(uid).or_default() += size;
        st.uploads.insert(
            id,
            Upload {
                rec_id: id,
                rec,
                offset: 0,
                holder: Some(peer.clone()),
                touched: Instant::now(),
                busy: false,
                sync_asked: 0,
            },
        );
        Ok(UploadState {
            id,
            offset: 0,
            instant: false,
        })
    }

    fn quota_err(&self, used: u64, size: u64) -> ServiceError {
        ServiceError::new(
            file_code::QUOTA,
            format!(
                "over quota: {used} bytes used + {size} > {}",
                self.inner.cfg.quota_per_user
            ),
        )
    }

    fn take_lease(u: &mut Upload, peer: &Peer, lease: Duration) -> Result<()> {
        if let Some(h) = &u.holder {
            if h.id() != peer.id() && h.is_open() && u.touched.elapsed() < lease {
                let left = lease.saturating_sub(u.touched.elapsed()).as_secs() + 1;
                return Err(ServiceError::new(
                    file_code::LOCKED,
                    format!("another connection is writing this upload (its lease ends within {left} s)"),
                ));
            }
        }
        u.holder = Some(peer.clone());
        u.touched = Instant::now();
        Ok(())
    }

    fn upload_of(st: &mut State, id: u64, uid: u64) -> Result<&mut Upload> {
        match st.uploads.get_mut(&id) {
            Some(u) if u.rec.by == uid => Ok(u),
            _ => Err(ServiceError::new(
                file_code::NO_UPLOAD,
                format!("no upload {id}"),
            )),
        }
    }

    /// Waits while upload `id` has a chunk being written (by another worker
    /// of the pool; bounded by that one write).
    fn wait_idle<'a>(&'a self, mut st: MutexGuard<'a, State>, id: u64) -> MutexGuard<'a, State> {
        while st.uploads.get(&id).is_some_and(|u| u.busy) {
            st = self.inner.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }

    /// The lane's background sync of upload `id`: fsync of its partial
    /// file (every byte below `upto` was written before it was asked), then
    /// `upto` recorded as its synced offset. A failure only leaves the
    /// offset where it was (the next sync, a resume or `file.finish` syncs
    /// again).
    fn synced_to(&self, id: u64, upto: u64) {
        if let Err(e) = File::open(self.part(id)).and_then(|f| f.sync_data()) {
            tracing::debug!(id, error = %e, "files: background sync of a partial file");
            return;
        }
        let mut st = lock(&self.inner.state);
        let Some(u) = st.uploads.get_mut(&id) else {
            return;
        };
        if u.rec.synced >= upto {
            return;
        }
        let mut rec = u.rec.clone();
        rec.synced = upto;
        let stored = json(&rec).and_then(|j| {
            self.inner
                .db
                .update(u.rec_id, Kind::Json, &j)
                .map_err(ServiceError::storage)
        });
        match stored {
            Ok(_) => u.rec.synced = upto,
            Err(e) => tracing::warn!(id, error = %e, "files: cannot record a synced offset"),
        }
    }

    /// Bytes of upload `id` known to be on disk (its synced offset).
    pub fn synced(&self, id: u64) -> Option<u64> {
        lock(&self.inner.state)
            .uploads
            .get(&id)
            .map(|u| u.rec.synced)
    }

    /// Makes everything written to `u` durable: fsync of the partial file,
    /// then the synced offset recorded.
    fn sync_upload(&self, u: &mut Upload) -> Result<()> {
        if u.rec.synced >= u.offset {
            return Ok(());
        }
        File::open(self.part(u.rec_id))
            .and_then(|f| f.sync_data())
            .map_err(|e| io_err("sync partial file", e))?;
        let mut rec = u.rec.clone();
        rec.synced = u.offset;
        self.inner
            .db
            .update(u.rec_id, Kind::Json, &json(&rec)?)
            .map_err(ServiceError::storage)?;
        u.rec = rec;
        Ok(())
    }

    /// Appends `data` at `offset` of upload `id` (which must be where the
    /// upload stands) after checking it against `check`: its CRC-32 (4 bytes,
    /// little endian) or its SHA3-256 (32 bytes), the tus checksum
    /// extension's choice of algorithm. The bytes are written at once and
    /// fsynced with others ([`FilesConfig::sync_every`]). Returns the new
    /// offset and the synced one.
    ///
    /// A chunk may arrive while the one before it is still being written by
    /// another worker (a client keeps several in flight): it waits for that
    /// write, then its offset is checked.
    pub fn chunk(
        &self,
        peer: &Peer,
        uid: u64,
        id: u64,
        offset: u64,
        data: &[u8],
        check: &[u8],
    ) -> Result<(u64, u64)> {
        self.chunk_bytes(peer, uid, id, offset, Bytes::copy_from_slice(data), check)
    }

    /// [`Files::chunk`] of bytes the server keeps (a request's, no copy): the
    /// hash lane gets them after the write.
    fn chunk_bytes(
        &self,
        peer: &Peer,
        uid: u64,
        id: u64,
        offset: u64,
        data: Bytes,
        check: &[u8],
    ) -> Result<(u64, u64)> {
        let cfg = &self.inner.cfg;
        if data.len() > cfg.max_chunk {
            return Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                format!("a chunk has at most {} bytes", cfg.max_chunk),
            ));
        }
        check_chunk(&data, check)?;
        let part = self.part(id);
        let mut st = self.wait_idle(lock(&self.inner.state), id);
        let u = Self::upload_of(&mut st, id, uid)?;
        Self::take_lease(u, peer, cfg.lease)?;
        if offset != u.offset {
            return Err(ServiceError::new(
                file_code::OFFSET,
                format!("the upload stands at offset {}, not {offset}", u.offset),
            ));
        }
        let end = offset + data.len() as u64;
        if end > u.rec.size {
            return Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                "the chunk goes past the announced size",
            ));
        }
        // Written outside the lock: other uploads (and users) carry on.
        u.busy = true;
        // Every `sync_every` bytes a sync: in the background on the hash
        // lane (after the bytes before it are hashed), so the writer goes on
        // writing meanwhile; inline with `sync_every` 0 (every chunk).
        let inline = cfg.sync_every == 0;
        let sync = !inline && end - u.sync_asked.max(u.rec.synced) >= cfg.sync_every;
        let (rec_id, mut rec) = (u.rec_id, u.rec.clone());
        drop(st);
        // Ok(true): synced here.
        let res = (|| -> Result<bool> {
            let mut f = OpenOptions::new()
                .write(true)
                .open(&part)
                .map_err(|e| io_err("open partial file", e))?;
            if f.metadata()
                .map_err(|e| io_err("stat partial file", e))?
                .len()
                != offset
            {
                f.set_len(offset)
                    .map_err(|e| io_err("trim partial file", e))?;
            }
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| io_err("seek partial file", e))?;
            f.write_all(&data)
                .map_err(|e| io_err("write partial file", e))?;
            // Hashed on a lane while the next chunk is written; sent before
            // the upload stops being busy, so a `file.finish` (which waits
            // for that) asks the lane after these bytes.
            self.inner.lanes.feed(id, offset, data.clone());
            if sync && self.inner.lanes.sync(id, end) {
                return Ok(false);
            }
            if !(sync || inline) {
                return Ok(false);
            }
            f.sync_data().map_err(|e| io_err("sync partial file", e))?;
            rec.synced = end;
            self.inner
                .db
                .update(rec_id, Kind::Json, &json(&rec)?)
                .map_err(ServiceError::storage)?;
            Ok(true)
        })();
        let mut st = lock(&self.inner.state);
        let mut out = Err(ServiceError::new(
            file_code::NO_UPLOAD,
            format!("upload {id} is gone"),
        ));
        if let Some(u) = st.uploads.get_mut(&id) {
            u.busy = false;
            out = match res {
                Ok(synced_here) => {
                    u.offset = end;
                    if sync {
                        u.sync_asked = end;
                    }
                    if synced_here {
                        u.rec.synced = u.rec.synced.max(end);
                    }
                    Ok((u.offset, u.rec.synced))
                }
                // The lane may hold bytes that did not count: it voids its
                // hash when the retry comes at the same offset again.
                Err(e) => Err(e),
            };
        }
        drop(st);
        self.inner.idle.notify_all();
        out
    }

    /// Completes upload `id`: the whole SHA3-256 must match the announced
    /// one (else [`file_code::HASH_MISMATCH`], and the partial data stays for
    /// a retry or a `file.abort`); the content becomes a blob (or joins the
    /// existing identical one) and the file appears.
    pub fn finish(&self, peer: &Peer, uid: u64, id: u64) -> Result<()> {
        self.finish_with(peer, uid, id, None)
    }

    /// [`Files::finish`] with the whole SHA3-256 announced now: required
    /// when [`Files::begin`] got none (a client that hashes while it sends;
    /// no instant upload then), else it must equal the one given there.
    pub fn finish_with(&self, peer: &Peer, uid: u64, id: u64, hash: Option<&[u8]>) -> Result<()> {
        if hash.is_some_and(|h| h.len() != 32) {
            return Err(ServiceError::bad("the hash is SHA3-256: 32 bytes"));
        }
        let mut st = self.wait_idle(lock(&self.inner.state), id);
        let u = Self::upload_of(&mut st, id, uid)?;
        Self::take_lease(u, peer, self.inner.cfg.lease)?;
        if u.offset != u.rec.size {
            return Err(ServiceError::new(
                file_code::OFFSET,
                format!("the upload holds {} of {} bytes", u.offset, u.rec.size),
            ));
        }
        let announced = match (u.rec.hash.is_empty(), hash.map(hex)) {
            (true, None) => {
                return Err(ServiceError::bad(
                    "this upload began without a hash: file.finish must announce it",
                ))
            }
            (true, Some(h)) => h,
            (false, Some(h)) if h != u.rec.hash => {
                return Err(ServiceError::new(
                    file_code::HASH_MISMATCH,
                    format!(
                        "the hash {h} is not the one announced before ({})",
                        u.rec.hash
                    ),
                ))
            }
            (false, _) => u.rec.hash.clone(),
        };
        // The sync and the hash (the lane's, or a read-back of the partial
        // file after a restart: seconds for a large file) run outside the
        // state lock; the upload is busy meanwhile.
        let (size, unsynced) = (u.rec.size, u.rec.synced < u.offset);
        u.busy = true;
        drop(st);
        let part = self.part(id);
        let got = (|| -> Result<String> {
            if unsynced {
                File::open(&part)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| io_err("sync partial file", e))?;
            }
            Ok(hex(&match self.inner.lanes.take(id, size) {
                Some(h) => h,
                None => hash_file(&part, size).map_err(|e| io_err("hash partial file", e))?,
            }))
        })();
        let mut st = lock(&self.inner.state);
        let out = self.finish_locked(&mut st, uid, id, got, announced);
        if let Some(u) = st.uploads.get_mut(&id) {
            u.busy = false;
        }
        drop(st);
        self.inner.idle.notify_all();
        out
    }

    /// The end of [`Files::finish_with`], under the state lock again: `got`
    /// is the hash of the bytes received.
    fn finish_locked(
        &self,
        st: &mut State,
        uid: u64,
        id: u64,
        got: Result<String>,
        announced: String,
    ) -> Result<()> {
        let got = got?;
        let Some(u) = st.uploads.get(&id) else {
            return Err(ServiceError::new(
                file_code::NO_UPLOAD,
                format!("upload {id} is gone"),
            ));
        };
        if got != announced {
            // The running hash is spent: a retry re-reads the partial file.
            return Err(ServiceError::new(
                file_code::HASH_MISMATCH,
                format!(
                    "the file's SHA3-256 is {got}, not the announced {announced}: kept for a retry"
                ),
            ));
        }
        let mut rec = u.rec.clone();
        rec.hash = announced;
        Self::check_parent(st, rec.owner, &rec.path)?;
        let part = self.part(id);
        let blob = self.blob(&rec.hash);
        if blob.exists() {
            let _ = std::fs::remove_file(&part);
        } else {
            std::fs::rename(&part, &blob).map_err(|e| io_err("store blob", e))?;
            if let Ok(d) = File::open(self.inner.root.join("blobs")) {
                let _ = d.sync_all();
            }
        }
        // The reservation becomes the file's charge.
        self.inner.db.delete(id).map_err(ServiceError::storage)?;
        st.uploads.remove(&id);
        if let Some(x) = st.usage.get_mut(&uid) {
            *x = x.saturating_sub(rec.size);
        }
        self.put_entry(st, uid, rec.owner, &rec.path, rec.size, &rec.hash)
    }

    /// Announces the SHA3-256 of upload `id` (begun without one) once the
    /// client knows it, while its chunks are still being sent: when the
    /// server holds that content where the caller may claim it (as for an
    /// instant upload at [`Files::begin`]) the file is completed by
    /// reference at once, the upload and its bytes dropped, and the answer
    /// is `true` (a "late instant upload": the client stops sending; chunks
    /// still in flight are answered [`file_code::NO_UPLOAD`]). Otherwise the
    /// hash is kept for [`Files::finish`] and the answer is `false`. A hash
    /// other than one announced before is [`file_code::HASH_MISMATCH`] (the
    /// bytes held are another content's: abort and start again).
    pub fn announce(&self, peer: &Peer, uid: u64, id: u64, hash: &[u8]) -> Result<bool> {
        if hash.len() != 32 {
            return Err(ServiceError::bad("the hash is SHA3-256: 32 bytes"));
        }
        let h = hex(hash);
        let mut st = self.wait_idle(lock(&self.inner.state), id);
        let u = Self::upload_of(&mut st, id, uid)?;
        Self::take_lease(u, peer, self.inner.cfg.lease)?;
        if !u.rec.hash.is_empty() && u.rec.hash != h {
            return Err(ServiceError::new(
                file_code::HASH_MISMATCH,
                format!(
                    "upload {id} holds content announced as {}, not {h}: abort it and start again",
                    u.rec.hash
                ),
            ));
        }
        let (owner, path, size) = (u.rec.owner, u.rec.path.clone(), u.rec.size);
        let may_claim = (st.holders.contains_key(&(h.clone(), 0))
            || st.holders.contains_key(&(h.clone(), uid)))
            && self.blob(&h).exists();
        if !may_claim {
            Self::upload_of(&mut st, id, uid)?.rec.hash = h;
            return Ok(false);
        }
        self.check_target(&st, uid, owner, &path)?;
        self.check_count(&st, uid)?;
        self.drop_upload(&mut st, id)?;
        self.put_entry(&mut st, uid, owner, &path, size, &h)?;
        Ok(true)
    }

    /// Concatenates unfinished uploads `parts` of the caller (tus
    /// concatenation: partial uploads sent in parallel, then joined) into
    /// file `path`: every part must hold all its bytes (else
    /// [`file_code::OFFSET`]) and match its own announced SHA3-256, and the
    /// joined content must match `hash` (else [`file_code::HASH_MISMATCH`],
    /// and the parts stay for a retry). The parts are then gone (their
    /// reservations become the file's charge); the file is on disk when this
    /// returns. At most 256 parts.
    pub fn concat(
        &self,
        peer: &Peer,
        uid: u64,
        space: Space,
        path: &str,
        hash: &[u8],
        parts: &[u64],
    ) -> Result<()> {
        let cfg = &self.inner.cfg;
        if hash.len() != 32 {
            return Err(ServiceError::bad("the hash is SHA3-256: 32 bytes"));
        }
        if parts.is_empty() || parts.len() > 256 {
            return Err(ServiceError::bad("1 to 256 parts"));
        }
        let mut seen = std::collections::HashSet::new();
        if !parts.iter().all(|id| seen.insert(*id)) {
            return Err(ServiceError::bad("a part is named twice"));
        }
        let path = self.norm(path)?;
        if path.is_empty() {
            return Err(ServiceError::new(code::INVALID, "a file needs a name"));
        }
        let owner = Self::owner(space, uid);
        let mut st = lock(&self.inner.state);
        for id in parts {
            st = self.wait_idle(st, *id);
        }
        let mut total = 0u64;
        for id in parts {
            let u = Self::upload_of(&mut st, *id, uid)?;
            Self::take_lease(u, peer, cfg.lease)?;
            if u.offset != u.rec.size {
                return Err(ServiceError::new(
                    file_code::OFFSET,
                    format!("part {id} holds {} of {} bytes", u.offset, u.rec.size),
                ));
            }
            total += u.rec.size;
        }
        if total > cfg.max_file_size {
            return Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                format!("a file has at most {} bytes", cfg.max_file_size),
            ));
        }
        self.check_target(&st, uid, owner, &path)?;
        // Each part against its own hash (kept running while the server ran).
        for id in parts {
            let u = st.uploads.get_mut(id).expect("checked");
            if u.rec.hash.is_empty() {
                // Began without a hash: the joined hash below covers it.
                continue;
            }
            let got = match self.inner.lanes.take(*id, u.rec.size) {
                Some(h) => hex(&h),
                None => hex(&hash_file(&self.part(*id), u.rec.size)
                    .map_err(|e| io_err("hash partial file", e))?),
            };
            if got != u.rec.hash {
                return Err(ServiceError::new(
                    file_code::HASH_MISMATCH,
                    format!(
                        "part {id}: its SHA3-256 is {got}, not the announced {}",
                        u.rec.hash
                    ),
                ));
            }
        }
        // Join them, hashing the whole.
        let tmp = self
            .inner
            .root
            .join("uploads")
            .join(format!("concat-{}.tmp", parts[0]));
        let joined = (|| -> std::io::Result<[u8; 32]> {
            let mut out = File::create(&tmp)?;
            let mut h = Sha3_256::new();
            let mut buf = vec![0u8; 256 << 10];
            for id in parts {
                let mut f = File::open(self.part(*id))?;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    out.write_all(&buf[..n])?;
                }
            }
            out.sync_all()?;
            Ok(h.finalize())
        })();
        let whole = match joined {
            Ok(w) => hex(&w),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err("join parts", e));
            }
        };
        let hash = hex(hash);
        if whole != hash {
            let _ = std::fs::remove_file(&tmp);
            return Err(ServiceError::new(
                file_code::HASH_MISMATCH,
                format!("the joined parts' SHA3-256 is {whole}, not {hash}: the parts are kept"),
            ));
        }
        let blob = self.blob(&hash);
        if blob.exists() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            std::fs::rename(&tmp, &blob).map_err(|e| io_err("store blob", e))?;
            if let Ok(d) = File::open(self.inner.root.join("blobs")) {
                let _ = d.sync_all();
            }
        }
        let mut b = zs_db::Batch::new();
        for id in parts {
            b.delete(*id);
        }
        self.inner.db.commit(&b).map_err(ServiceError::storage)?;
        for id in parts {
            if let Some(u) = st.uploads.remove(id) {
                if let Some(x) = st.usage.get_mut(&uid) {
                    *x = x.saturating_sub(u.rec.size);
                }
            }
            let _ = std::fs::remove_file(self.part(*id));
        }
        self.put_entry(&mut st, uid, owner, &path, total, &hash)
    }

    /// Terminates upload `id` (tus termination): its partial data and
    /// reservation are dropped.
    pub fn abort(&self, uid: u64, id: u64) -> Result<()> {
        let mut st = self.wait_idle(lock(&self.inner.state), id);
        Self::upload_of(&mut st, id, uid)?;
        self.drop_upload(&mut st, id)
    }

    /// Reads up to `len` bytes at `offset` of a file (ranged download).
    /// Returns the bytes, the file size and its hash.
    pub fn read(
        &self,
        uid: u64,
        space: Space,
        path: &str,
        offset: u64,
        len: usize,
    ) -> Result<(Vec<u8>, u64, String)> {
        let path = self.norm(path)?;
        let len = len.min(self.inner.cfg.max_chunk);
        let (size, hash) = {
            let st = lock(&self.inner.state);
            match st.entries.get(&(Self::owner(space, uid), path.clone())) {
                Some((_, e)) if !e.dir => (e.size, e.hash.clone()),
                Some(_) => {
                    return Err(ServiceError::new(
                        code::INVALID,
                        format!("{path:?} is a directory"),
                    ))
                }
                None => {
                    return Err(ServiceError::new(
                        file_code::NOT_FOUND,
                        format!("no {path:?}"),
                    ))
                }
            }
        };
        if offset > size {
            return Err(ServiceError::new(
                file_code::OFFSET,
                format!("offset {offset} is past the end ({size})"),
            ));
        }
        let want = (size - offset).min(len as u64) as usize;
        // Read into spare capacity (`read_to_end` through `take` does not
        // zero the buffer first, and stops at `want` without another read).
        let mut buf = Vec::with_capacity(want);
        let mut f = File::open(self.blob(&hash)).map_err(|e| io_err("open blob", e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err("seek blob", e))?;
        f.take(want as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io_err("read blob", e))?;
        if buf.len() != want {
            return Err(io_err(
                "read blob",
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob is shorter than its entry",
                ),
            ));
        }
        Ok((buf, size, hash))
    }

    /// Delta upload, step 1: the block signatures of an existing file
    /// (`block` bytes each, the last one shorter): per block the rolling
    /// checksum ([`rolling`]) and the first 16 bytes of its SHA3-256. At most
    /// [`MAX_SIGNATURE_BLOCKS`] blocks.
    pub fn signature(&self, uid: u64, space: Space, path: &str, block: usize) -> Result<Signature> {
        self.signature_with(uid, space, path, block, BlockSum::Sha3)
    }

    /// [`Files::signature`] with the strong sum `sum` per block.
    pub fn signature_with(
        &self,
        uid: u64,
        space: Space,
        path: &str,
        block: usize,
        sum: BlockSum,
    ) -> Result<Signature> {
        if !(512..=(1 << 20)).contains(&block) {
            return Err(ServiceError::bad("a block has 512 bytes to 1 MiB"));
        }
        let path = self.norm(path)?;
        let (size, hash) = self.file_of(uid, space, &path)?;
        if size.div_ceil(block as u64) > MAX_SIGNATURE_BLOCKS {
            return Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                format!(
                    "{size} bytes in {block}-byte blocks is more than {MAX_SIGNATURE_BLOCKS} \
                     blocks: use larger blocks"
                ),
            ));
        }
        let key = (hash, block, sum);
        if let Some(sig) = lock(&self.inner.sigs).map.get(&key) {
            return Ok(sig.clone());
        }
        let mut f = File::open(self.blob(&key.0)).map_err(|e| io_err("open blob", e))?;
        let mut out = Vec::with_capacity(size.div_ceil(block as u64) as usize);
        let mut buf = vec![0u8; block];
        let mut left = size;
        while left > 0 {
            let n = left.min(block as u64) as usize;
            f.read_exact(&mut buf[..n])
                .map_err(|e| io_err("read blob", e))?;
            out.push((rolling(&buf[..n]), sum.of(&buf[..n])));
            left -= n as u64;
        }
        let sig = Arc::new(out);
        lock(&self.inner.sigs).put(key, sig.clone(), self.inner.cfg.signature_cache_bytes);
        Ok(sig)
    }

    fn file_of(&self, uid: u64, space: Space, path: &str) -> Result<(u64, String)> {
        let st = lock(&self.inner.state);
        match st.entries.get(&(Self::owner(space, uid), path.to_owned())) {
            Some((_, e)) if !e.dir => Ok((e.size, e.hash.clone())),
            Some(_) => Err(ServiceError::new(
                code::INVALID,
                format!("{path:?} is a directory"),
            )),
            None => Err(ServiceError::new(
                file_code::NOT_FOUND,
                format!("no {path:?}"),
            )),
        }
    }

    /// Delta upload, step 2: appends `len` bytes taken at `base_offset` of an
    /// existing file (the caller may read it) to upload `id` at `offset`,
    /// which must be where the upload stands. Synced like chunks (every
    /// `sync_every` bytes, and by `file.finish`).
    #[allow(clippy::too_many_arguments)]
    pub fn copy_range(
        &self,
        peer: &Peer,
        uid: u64,
        id: u64,
        offset: u64,
        base_space: Space,
        base_path: &str,
        base_offset: u64,
        len: u64,
    ) -> Result<u64> {
        let base_path = self.norm(base_path)?;
        let (bsize, bhash) = self.file_of(uid, base_space, &base_path)?;
        if base_offset.checked_add(len).is_none_or(|e| e > bsize) {
            return Err(ServiceError::new(
                file_code::OFFSET,
                "the range is past the end of the base file",
            ));
        }
        let cfg = &self.inner.cfg;
        let part = self.part(id);
        let mut st = self.wait_idle(lock(&self.inner.state), id);
        let u = Self::upload_of(&mut st, id, uid)?;
        Self::take_lease(u, peer, cfg.lease)?;
        if offset != u.offset {
            return Err(ServiceError::new(
                file_code::OFFSET,
                format!("the upload stands at offset {}, not {offset}", u.offset),
            ));
        }
        if offset + len > u.rec.size {
            return Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                "the range goes past the announced size",
            ));
        }
        let mut src = File::open(self.blob(&bhash)).map_err(|e| io_err("open blob", e))?;
        src.seek(SeekFrom::Start(base_offset))
            .map_err(|e| io_err("seek blob", e))?;
        let mut f = OpenOptions::new()
            .write(true)
            .open(&part)
            .map_err(|e| io_err("open partial file", e))?;
        f.set_len(offset)
            .map_err(|e| io_err("trim partial file", e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err("seek partial file", e))?;
        let mut left = len;
        while left > 0 {
            let n = left.min(256 << 10) as usize;
            let mut buf = vec![0u8; n];
            src.read_exact(&mut buf)
                .map_err(|e| io_err("read base file (shorter than its entry?)", e))?;
            f.write_all(&buf)
                .map_err(|e| io_err("write partial file", e))?;
            self.inner
                .lanes
                .feed(id, offset + (len - left), Bytes::from(buf));
            left -= n as u64;
        }
        u.offset += len;
        // Synced as chunks are: on the sync thread every `sync_every` bytes
        // (inline when it cannot take it, or with `sync_every` 0).
        if u.offset - u.sync_asked.max(u.rec.synced) >= cfg.sync_every {
            if cfg.sync_every > 0 && self.inner.lanes.sync(id, u.offset) {
                u.sync_asked = u.offset;
            } else {
                self.sync_upload(u)?;
            }
        }
        Ok(u.offset)
    }

    /// `file.chunk`: taken in arrival order on the connection's loop and
    /// handed to one of [`CHUNK_WRITERS`] writer threads chosen by upload id,
    /// so the chunks a client keeps in flight are written in order (a worker
    /// pool could start chunk n+1 before chunk n). Each writer's queue holds
    /// at most [`FilesConfig::chunk_queue`] chunks; past that the chunk is
    /// answered `BUSY` (503) at once.
    fn register_chunk(&self, r: &mut Registry) {
        type Job = (Peer, DataFrame, zs_core::Responder);
        let writers: Vec<std::sync::mpsc::SyncSender<Job>> = (0..CHUNK_WRITERS)
            .filter_map(|i| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(self.inner.cfg.chunk_queue);
                let f = self.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("zs-files-chunk-{i}"))
                    .spawn(move || {
                        for (peer, df, resp) in rx {
                            let _ = resp.reply(
                                f.chunk_request(&peer, &df)
                                    .map(zs_core::Reply::Data)
                                    .map_err(zs_core::HandlerError::from),
                            );
                        }
                    });
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::error!(error = %e, "files: cannot start a chunk writer");
                        None
                    }
                }
            })
            .collect();
        r.stream_delayed("file.chunk", move |peer, df, resp| {
            if writers.is_empty() {
                let _ = resp.reply_error(code::STORAGE, "no chunk writer");
                return;
            }
            let id = df.reader().read_u64().unwrap_or(0);
            let tx = &writers[(id % writers.len() as u64) as usize];
            match tx.try_send((peer.clone(), df, resp)) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full((_, _, resp))) => {
                    let _ = resp.reply_error(
                        zs_core::code::BUSY,
                        "too many chunks waiting to be written: send fewer at once",
                    );
                }
                Err(std::sync::mpsc::TrySendError::Disconnected((_, _, resp))) => {
                    let _ = resp.reply_error(code::STORAGE, "the chunk writer stopped");
                }
            }
        });
    }

    fn chunk_request(&self, peer: &Peer, df: &DataFrame) -> Result<DataFrame> {
        let uid = self.inner.accounts.require_user(peer)?;
        let mut rd = df.reader();
        let id = rd.read_u64()?;
        let offset = rd.read_u64()?;
        let data = rd.read_bytes()?;
        let check = rd.read_slice()?;
        let (offset, synced) = self.chunk_bytes(peer, uid, id, offset, data, check)?;
        Ok(DataFrame::new().with(offset).with(synced))
    }

    /// Registers command `name`: the caller must be logged in; `run` gets
    /// the service, the connection, the user id and a reader over the request.
    fn command(
        &self,
        r: &mut Registry,
        name: &str,
        run: impl Fn(&Files, &Peer, u64, &mut zs_wire::Reader<'_>) -> Result<DataFrame>
            + Send
            + Sync
            + 'static,
    ) {
        let f = self.clone();
        r.stream_hpc_svc(name, move |peer, df| {
            let uid = f.inner.accounts.require_user(peer)?;
            run(&f, peer, uid, &mut df.reader())
        });
    }

    /// Registers the `file.*` commands on `r`.
    pub fn register(&self, r: &mut Registry) {
        self.command(r, "file.list", |f, _, uid, rd| {
            let space = Space::parse(rd.read_str()?)?;
            let list = f.list(uid, space, rd.read_str()?)?;
            let mut out = DataFrame::new().with(list.len() as u64);
            for e in list {
                out.push(e.name);
                out.push(e.dir);
                out.push(e.size);
                out.push(e.hash);
                out.push(e.mtime_ms);
            }
            Ok(out)
        });
        self.command(r, "file.mkdir", |f, _, uid, rd| {
            let space = Space::parse(rd.read_str()?)?;
            f.mkdir(uid, space, rd.read_str()?)?;
            Ok(DataFrame::new())
        });
        self.command(r, "file.rename", |f, _, uid, rd| {
            let space = Space::parse(rd.read_str()?)?;
            let from = rd.read_str()?;
            f.rename(uid, space, from, rd.read_str()?)?;
            Ok(DataFrame::new())
        });
        self.command(r, "file.delete", |f, _, uid, rd| {
            let space = Space::parse(rd.read_str()?)?;
            f.delete(uid, space, rd.read_str()?)?;
            Ok(DataFrame::new())
        });
        self.command(r, "file.begin", |f, peer, uid, rd| {
            let space = Space::parse(rd.read_str()?)?;
            let path = rd.read_str()?;
            let size = rd.read_u64()?;
            let hash = rd.read_slice()?;
            let s = f.begin(peer, uid, space, path, size, hash)?;
            Ok(DataFrame::new().with(s.id).with(s.offset).with(s.instant))
        });
        self.register_chunk(r);
        self.command(r, "file.finish", |f, peer, uid, rd| {
            let id = rd.read_u64()?;
            let hash = if rd.remaining() > 0 {
                Some(rd.read_slice()?)
            } else {
                None
            };
            f.finish_with(peer, uid, id, hash)?;
            Ok(DataFrame::new())
        });
        self.command(r, "file.hash", |f, peer, uid, rd| {
            let id = rd.read_u64()?;
            let instant = f.announce(peer, uid, id, rd.read_slice()?)?;
            Ok(DataFrame::new().with(instant))
        });
        self.command(r, "file.concat", |f, peer, uid, rd| {
            let space = Space::parse(rd.read_str()?)?;
            let path = rd.read_str()?;
            let hash = rd.read_slice()?;
            let n = rd.read_u64()?;
            if n > 256 {
                return Err(ServiceError::bad("1 to 256 parts"));
            }
            let ids = (0..n)
                .map(|_| rd.read_u64())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            f.concat(peer, uid, space, path, hash, &ids)?;
            Ok(DataFrame::new())
        });
        self.command(r, "file.abort", |f, _, uid, rd| {
            f.abort(uid, rd.read_u64()?)?;
            Ok(DataFrame::new())
        });
        self.command(r, "file.signature", |f, _, uid, rd| {
            let space = Space::parse(rd.read_str()?)?;
            let path = rd.read_str()?;
            let block = rd.read_u32()? as usize;
            // Version 2 of the request names the block sum; without it,
            // version 1's SHA3-256/16.
            let sum = if rd.remaining() > 0 {
                BlockSum::from_u8(rd.read_u8()?)?
            } else {
                BlockSum::Sha3
            };
            let sig = f.signature_with(uid, space, path, block, sum)?;
            Ok(signature_answer(&sig, sum))
        });
        self.command(r, "file.copy", |f, peer, uid, rd| {
            let id = rd.read_u64()?;
            let offset = rd.read_u64()?;
            let space = Space::parse(rd.read_str()?)?;
            let path = rd.read_str()?;
            let base_offset = rd.read_u64()?;
            let len = rd.read_u64()?;
            Ok(DataFrame::new().with(f.copy_range(
                peer,
                uid,
                id,
                offset,
                space,
                path,
                base_offset,
                len,
            )?))
        });
        self.command(r, "file.read", |f, _, uid, rd| {
            let space = Space::parse(rd.read_str()?)?;
            let path = rd.read_str()?;
            let offset = rd.read_u64()?;
            let len = rd.read_u32()? as usize;
            // Version 2 of the request names the answer's order: `1` puts the
            // data last, so zs-core sends it apart from the frame head (no
            // copy into the frame: zs-wire's `encode_apart`); without it,
            // version 1's data first.
            let data_last = match rd.remaining() {
                0 => false,
                _ => match rd.read_u8()? {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(ServiceError::bad(format!(
                            "unknown file.read answer form {v} (0 = data first, 1 = data last)"
                        )))
                    }
                },
            };
            let (data, size, hash) = f.read(uid, space, path, offset, len)?;
            Ok(read_answer(Bytes::from(data), size, hash, data_last))
        });
    }
}

/// The answer of `file.read`: form 1 (`data_last`) is file size `u64`,
/// SHA3-256 hex `str`, data `bytes`, so zs-core sends the data apart from
/// the frame head (`zs_wire::Encoder::encode_apart`: no copy into the frame);
/// form 0 (version 1) puts the data first (docs/PROTOCOL.md).
pub fn read_answer(data: Bytes, size: u64, hash: String, data_last: bool) -> DataFrame {
    if data_last {
        DataFrame::new().with(size).with(hash).with(data)
    } else {
        DataFrame::new().with(data).with(size).with(hash)
    }
}

/// The answer of `file.signature` (version 2): count `u64`, rolling sums
/// `bytes` (count × `u32` LE), strong sums `bytes` (count × 16), block sum
/// `u8` (docs/PROTOCOL.md).
pub fn signature_answer(sig: &[(u32, [u8; 16])], sum: BlockSum) -> DataFrame {
    let mut weak = Vec::with_capacity(sig.len() * 4);
    let mut strong = Vec::with_capacity(sig.len() * 16);
    for (w, s16) in sig {
        weak.extend_from_slice(&w.to_le_bytes());
        strong.extend_from_slice(s16);
    }
    DataFrame::new()
        .with(sig.len() as u64)
        .with(weak)
        .with(strong)
        .with(sum as u8)
}

/// Checks a chunk against its CRC-32 (4 bytes LE) or SHA3-256 (32 bytes).
fn check_chunk(data: &[u8], check: &[u8]) -> Result<()> {
    let ok = match check.len() {
        4 => zs_hash::crc32(data).to_le_bytes()[..] == *check,
        32 => zs_hash::sha3_256(data)[..] == *check,
        _ => {
            return Err(ServiceError::bad(
                "a chunk's checksum is its CRC-32 (4 bytes) or its SHA3-256 (32 bytes)",
            ))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(ServiceError::new(
            file_code::HASH_MISMATCH,
            "the chunk does not match its checksum: resend it",
        ))
    }
}

/// A delta upload's lookup of block signatures: by rolling checksum, then
/// the strong sum (computed only when the rolling one matches a block).
#[derive(Debug)]
pub struct DeltaIndex<'a> {
    sig: &'a [(u32, [u8; 16])],
    sum: BlockSum,
    by_weak: std::collections::HashMap<u32, Vec<usize>>,
}

impl<'a> DeltaIndex<'a> {
    /// Indexes `sig` (from [`Files::signature_with`] with `sum`).
    pub fn new(sig: &'a [(u32, [u8; 16])], sum: BlockSum) -> DeltaIndex<'a> {
        let mut by_weak: std::collections::HashMap<u32, Vec<usize>> =
            std::collections::HashMap::with_capacity(sig.len());
        for (i, (w, _)) in sig.iter().enumerate() {
            by_weak.entry(*w).or_default().push(i);
        }
        DeltaIndex { sig, sum, by_weak }
    }

    /// The block `window` (whose rolling checksum is `weak`) equals, if any.
    pub fn find(&self, weak: u32, window: &[u8]) -> Option<usize> {
        let cands = self.by_weak.get(&weak)?;
        let strong = self.sum.of(window);
        cands.iter().copied().find(|&j| self.sig[j].1 == strong)
    }
}

/// The rolling checksum of delta uploads (rsync's): `a` = sum of the bytes,
/// `b` = sum of the running `a`s, both mod 2^16; the value is `b << 16 | a`
/// (zs-hash's, compiled optimised in debug builds too).
pub fn rolling(block: &[u8]) -> u32 {
    zs_hash::rolling(block)
}

/// Slides a [`rolling`] checksum of a window of `len` bytes one byte on:
/// `out` leaves, `inn` enters.
pub fn roll(sum: u32, len: usize, out: u8, inn: u8) -> u32 {
    zs_hash::roll(sum, len, out, inn)
}

fn holder(e: &EntryRec) -> u64 {
    if e.owner == 0 {
        0
    } else {
        e.by
    }
}

fn unhold(st: &mut State, e: &EntryRec) {
    let key = (e.hash.clone(), holder(e));
    if let Some(n) = st.holders.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            st.holders.remove(&key);
        }
    }
}

fn info(e: &EntryRec) -> FileInfo {
    FileInfo {
        name: e.path.rsplit('/').next().unwrap_or("").to_owned(),
        dir: e.dir,
        size: e.size,
        hash: e.hash.clone(),
        mtime_ms: e.mtime_ms,
    }
}
