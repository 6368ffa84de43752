//! Parallel filtered scans: chunks of ids spread over worker threads, results
//! delivered in id order as batches while the scan runs; pause, resume, stop, progress.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};

use crate::db::{decode_payload, mlock, rlock, Database, Inner, Loc};
use crate::error::{Error, Result};
use crate::format::{FrameHeader, FRAME_HEADER_LEN, OP_PUT};
use crate::record::{FieldValue, Kind, Record, RecordRef};

/// A record predicate usable from many threads.
pub type FilterFn = Arc<dyn Fn(&RecordRef<'_>) -> bool + Send + Sync>;

/// Encodes one matching record onto a work unit's bytes ([`Query::packed`]).
pub type PackFn = Arc<dyn Fn(&RecordRef<'_>, &mut Vec<u8>) + Send + Sync>;

/// Which ids an index narrows the scan to.
#[derive(Debug, Clone)]
pub struct IndexHint {
    /// Indexed field.
    pub field: String,
    /// Lower bound of the field value.
    pub lo: Bound<FieldValue>,
    /// Upper bound of the field value.
    pub hi: Bound<FieldValue>,
}

/// A scan request: filter, limit, order, parallelism.
#[derive(Clone)]
pub struct Query {
    filter: Option<FilterFn>,
    pack: Option<PackFn>,
    limit: Option<u64>,
    reverse: bool,
    chunk: usize,
    threads: usize,
    hint: Option<IndexHint>,
    candidates: Vec<IndexHint>,
    /// Inclusive id bounds (`Query::id_range`).
    ids: (u64, u64),
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("filtered", &self.filter.is_some())
            .field("limit", &self.limit)
            .field("reverse", &self.reverse)
            .field("chunk", &self.chunk)
            .field("threads", &self.threads)
            .field("hint", &self.hint)
            .field("ids", &self.ids)
            .finish()
    }
}

impl Default for Query {
    fn default() -> Self {
        Query::all()
    }
}

impl Query {
    /// Every record.
    pub fn all() -> Query {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Query {
            filter: None,
            pack: None,
            limit: None,
            reverse: false,
            chunk: 4096,
            threads,
            hint: None,
            candidates: Vec::new(),
            ids: (1, u64::MAX),
        }
    }

    /// Records for which `f` returns true.
    pub fn filter(f: impl Fn(&RecordRef<'_>) -> bool + Send + Sync + 'static) -> Query {
        Query {
            filter: Some(Arc::new(f)),
            ..Query::all()
        }
    }

    /// Records for which the shared predicate returns true.
    pub fn filter_fn(f: FilterFn) -> Query {
        Query {
            filter: Some(f),
            ..Query::all()
        }
    }

    /// Records for which the zs-expr expression `text` is true, e.g.
    /// `age > 30 and name = 'bob'` (fields of JSON, key/value and DataFrame records).
    /// A comparison with a literal on an indexed field narrows the scan to that index.
    pub fn expr(text: &str) -> Result<Query> {
        let f = crate::expr::compile_filter(text)?;
        Ok(Query {
            filter: Some(f),
            candidates: crate::expr::index_hints(text),
            ..Query::all()
        })
    }

    /// At most `n` results.
    pub fn limit(mut self, n: u64) -> Query {
        self.limit = Some(n);
        self
    }

    /// Highest ids first.
    pub fn reverse(mut self, yes: bool) -> Query {
        self.reverse = yes;
        self
    }

    /// The workers encode each match with `f` (on their threads, in parallel)
    /// instead of copying it into an owned [`Record`]: each batch then holds one
    /// `Record` per work unit, its `id` the number of records packed and its
    /// `data` the bytes `f` appended for them, in scan order (`f` gets the
    /// unit's buffer, empty at its first record). For a caller that would only
    /// encode the records again (a network service): no allocation and no copy
    /// per record. A packed query takes no [`Query::limit`] (refused).
    pub fn packed(mut self, f: PackFn) -> Query {
        self.pack = Some(f);
        self
    }

    /// Ids per work unit (and the largest batch size); default 4096.
    pub fn chunk_size(mut self, n: usize) -> Query {
        self.chunk = n.max(1);
        self
    }

    /// Only records with ids in `lo..=hi` (the scan visits no id outside).
    pub fn id_range(mut self, lo: u64, hi: u64) -> Query {
        self.ids = (lo, hi);
        self
    }

    /// Worker threads (default: all cores).
    pub fn threads(mut self, n: usize) -> Query {
        self.threads = n.max(1);
        self
    }

    /// Only visit records whose indexed `field` lies within the bounds (the filter still
    /// applies). Ignored when the field has no index.
    pub fn use_index(mut self, hint: IndexHint) -> Query {
        self.hint = Some(hint);
        self
    }

    /// The index hint, if any.
    pub fn index_hint(&self) -> Option<&IndexHint> {
        self.hint.as_ref()
    }
}

/// A snapshot of a running scan's progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Records examined so far.
    pub scanned: u64,
    /// Records that matched.
    pub matched: u64,
    /// Ids to visit in total (an upper bound of the records).
    pub total: u64,
    /// Time since the scan started.
    pub elapsed: Duration,
    /// Records examined per second.
    pub records_per_s: f64,
    /// True once every worker has finished.
    pub done: bool,
    /// True if an index narrowed the scan.
    pub used_index: bool,
}

enum Source {
    Range { first: u64, end: u64 },
    List(Vec<u64>),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Range { first, end } => end.saturating_sub(*first),
            Source::List(v) => v.len() as u64,
        }
    }
    fn ids(&self, lo: u64, hi: u64) -> Vec<u64> {
        match self {
            Source::Range { first, .. } => (first + lo..first + hi).collect(),
            Source::List(v) => v[lo as usize..hi as usize].to_vec(),
        }
    }
}

struct Shared {
    next: AtomicU64,
    chunks: u64,
    stop: AtomicBool,
    /// Guards `paused`; its condvar `resume` also wakes workers held at the
    /// read-ahead window (`consumed` advanced, or stop).
    paused: Mutex<bool>,
    resume: Condvar,
    /// The chunk the reader waits for next (`QueryHandle::next_chunk`), published
    /// under `paused`'s lock so a worker waiting on the window cannot miss it.
    consumed: AtomicU64,
    /// Read-ahead bound: a worker processes claimed chunk `k` only while
    /// `k < consumed + window` (4 x the scan's threads, as the channel bound).
    window: u64,
    /// Workers currently held at the window (tests watch it).
    parked: AtomicU64,
    scanned: AtomicU64,
    matched: AtomicU64,
    running: AtomicU64,
    started: Instant,
    total: u64,
    used_index: bool,
}

impl Shared {
    fn progress(&self) -> Progress {
        let scanned = self.scanned.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        Progress {
            scanned,
            matched: self.matched.load(Ordering::Relaxed),
            total: self.total,
            elapsed,
            records_per_s: scanned as f64 / elapsed.as_secs_f64().max(1e-9),
            done: self.running.load(Ordering::Acquire) == 0,
            used_index: self.used_index,
        }
    }

    /// Holds a worker that claimed chunk `k` until `k` is inside the read-ahead
    /// window; false when the scan was stopped (or the handle dropped) meanwhile.
    fn wait_window(&self, k: u64) -> bool {
        let mut g = mlock(&self.paused);
        loop {
            if self.stop.load(Ordering::Acquire) {
                return false;
            }
            let end = self.consumed.load(Ordering::Acquire);
            if k < end.saturating_add(self.window) {
                return true;
            }
            self.parked.fetch_add(1, Ordering::AcqRel);
            g = self.resume.wait(g).unwrap_or_else(|e| e.into_inner());
            self.parked.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The reader moved on to chunk `n`: let workers held at the window go.
    fn advance(&self, n: u64) {
        {
            let _g = mlock(&self.paused);
            self.consumed.store(n, Ordering::Release);
        }
        if self.parked.load(Ordering::Acquire) > 0 {
            self.resume.notify_all();
        }
    }

    fn set_paused(&self, yes: bool) {
        *mlock(&self.paused) = yes;
        if !yes {
            self.resume.notify_all();
        }
    }
}

/// Pauses, resumes or stops a running scan from any thread
/// ([`QueryHandle::control`]).
#[derive(Clone)]
pub struct QueryControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QueryControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryControl")
            .field("progress", &self.progress())
            .finish()
    }
}

impl QueryControl {
    /// Pauses the workers (they finish their current chunk).
    pub fn pause(&self) {
        self.shared.set_paused(true);
    }

    /// Resumes paused workers.
    pub fn resume(&self) {
        self.shared.set_paused(false);
    }

    /// Stops the workers after their current chunk; the handle then delivers
    /// the chunks already finished and ends.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.set_paused(false);
    }

    /// Live progress.
    pub fn progress(&self) -> Progress {
        self.shared.progress()
    }
}

type ChunkResult = (u64, Result<Vec<Record>>);

/// A running scan: iterate it for batches of matching records in order.
pub struct QueryHandle {
    /// Keeps the engine open while the scan runs.
    _db: Database,
    shared: Arc<Shared>,
    rx: Option<Receiver<ChunkResult>>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<u64, Result<Vec<Record>>>,
    next_chunk: u64,
    emitted: u64,
    limit: Option<u64>,
}

impl std::fmt::Debug for QueryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryHandle")
            .field("progress", &self.progress())
            .finish()
    }
}

impl Database {
    /// Starts a parallel scan; results arrive in id order (descending with `reverse`).
    pub fn query(&self, q: Query) -> Result<QueryHandle> {
        self.inner.check_open()?;
        if q.pack.is_some() && q.limit.is_some() {
            return Err(Error::Query("a packed query takes no limit".into()));
        }
        let next_id = self.next_id();
        let mut used_index = false;
        // ids are never reused, so the id range can be far larger than the live set:
        // then the scan visits the live ids instead of every id of the range
        let (lo, hi) = q.ids;
        let first = lo.max(1);
        let end = next_id.min(hi.saturating_add(1)).max(first);
        let in_range = |id: &u64| (lo..=hi).contains(id);
        let mut source = if end - first > self.len().saturating_mul(4) + 65_536 {
            let mut ids = self.live_ids();
            ids.retain(in_range);
            Source::List(ids)
        } else {
            Source::Range { first, end }
        };
        for h in q.hint.iter().chain(&q.candidates) {
            if let Some(mut ids) = self.index_lookup(&h.field, h.lo.as_ref(), h.hi.as_ref()) {
                ids.retain(in_range);
                source = Source::List(ids);
                used_index = true;
                break;
            }
        }
        let total = source.len();
        let chunk = q.chunk as u64;
        let chunks = total.div_ceil(chunk);
        let threads = q.threads.min(chunks.max(1) as usize);
        // read-ahead window in work units: completed chunks not yet delivered
        // (channel + `pending`) plus chunks being scanned never exceed it
        let window = threads as u64 * 4;
        let shared = Arc::new(Shared {
            next: AtomicU64::new(0),
            chunks,
            stop: AtomicBool::new(false),
            paused: Mutex::new(false),
            resume: Condvar::new(),
            consumed: AtomicU64::new(0),
            window,
            parked: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            running: AtomicU64::new(0),
            started: Instant::now(),
            total,
            used_index,
        });
        let (tx, rx) = crossbeam::channel::bounded::<ChunkResult>(window as usize);
        let source = Arc::new(source);
        let mut workers = Vec::with_capacity(threads);
        for t in 0..threads {
            let ctx = Worker {
                inner: self.inner.clone(),
                shared: shared.clone(),
                source: source.clone(),
                filter: q.filter.clone(),
                pack: q.pack.clone(),
                tx: tx.clone(),
                chunk,
                reverse: q.reverse,
            };
            shared.running.fetch_add(1, Ordering::AcqRel);
            let h = std::thread::Builder::new()
                .name(format!("zs-db-scan-{t}"))
                .spawn(move || ctx.run())
                .map_err(|e| Error::Io {
                    op: "spawn scan worker",
                    source: e,
                })?;
            workers.push(h);
        }
        Ok(QueryHandle {
            _db: self.clone(),
            shared,
            rx: Some(rx),
            workers,
            pending: BTreeMap::new(),
            next_chunk: 0,
            emitted: 0,
            limit: q.limit,
        })
    }
}

struct Worker {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    source: Arc<Source>,
    filter: Option<FilterFn>,
    pack: Option<PackFn>,
    tx: Sender<ChunkResult>,
    chunk: u64,
    reverse: bool,
}

impl Worker {
    fn run(self) {
        struct Done<'a>(&'a Shared);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.running.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _done = Done(&self.shared);
        let total = self.source.len();
        // the read buffer, reused by every chunk of this worker (grown, never zeroed
        // again: each read overwrites the part it uses)
        let mut buf = Vec::new();
        loop {
            {
                let mut p = mlock(&self.shared.paused);
                while *p && !self.shared.stop.load(Ordering::Acquire) {
                    p = self
                        .shared
                        .resume
                        .wait(p)
                        .unwrap_or_else(|e| e.into_inner());
                }
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            let k = self.shared.next.fetch_add(1, Ordering::AcqRel);
            if k >= self.shared.chunks || !self.shared.wait_window(k) {
                return;
            }
            let (lo, hi) = if self.reverse {
                let hi = total - k * self.chunk;
                (hi.saturating_sub(self.chunk), hi)
            } else {
                (k * self.chunk, ((k + 1) * self.chunk).min(total))
            };
            let mut ids = self.source.ids(lo, hi);
            if self.reverse {
                ids.reverse();
            }
            let res = self.scan_ids(&ids, &mut buf);
            if self.tx.send((k, res)).is_err() {
                return;
            }
        }
    }

    fn scan_ids(&self, ids: &[u64], buf: &mut Vec<u8>) -> Result<Vec<Record>> {
        let (file, items) = {
            let st = rlock(&self.inner.state);
            let items: Vec<(u64, Loc)> = ids
                .iter()
                .filter_map(|&id| st.loc(id).map(|l| (id, l)))
                .collect();
            (st.file.clone(), items)
        };
        let max_value = self.inner.opts.max_value;
        let mut out = Out {
            records: Vec::new(),
            packed: Vec::new(),
            n: 0,
            pack: self.pack.as_ref(),
        };
        let mut i = 0;
        let mut scanned = 0u64;
        while i < items.len() {
            // a run of frames adjacent in the file (either direction of id order)
            let Some(first_len) = items[i].1.frame_len() else {
                // huge value: read it alone
                let (id, loc) = items[i];
                if let Some(rec) = self.inner.get(id)? {
                    scanned += 1;
                    if self.accept(&rec.as_ref()) {
                        out.push(&rec.as_ref());
                    }
                }
                let _ = loc;
                i += 1;
                continue;
            };
            let mut lo = items[i].1.off;
            let mut hi = lo + first_len;
            let mut j = i + 1;
            while j < items.len() {
                let l = items[j].1;
                let Some(fl) = l.frame_len() else { break };
                let (nlo, nhi) = (lo.min(l.off), hi.max(l.off + fl));
                if nhi - nlo > (1 << 20) || (l.off > hi + 4096) || (l.off + fl + 4096 < lo) {
                    break;
                }
                lo = nlo;
                hi = nhi;
                j += 1;
            }
            self.inner.ensure_written(hi)?;
            let need = (hi - lo) as usize;
            if buf.len() < need {
                buf.resize(need, 0);
            }
            let buf = &mut buf[..need];
            file.read_exact_at(buf, lo)
                .map_err(Error::io("scan read"))?;
            for &(id, loc) in &items[i..j] {
                let s = (loc.off - lo) as usize;
                let frame = &buf[s..s + loc.frame_len().unwrap_or(0) as usize];
                let corrupt = |r: &str| Error::Corrupt {
                    offset: loc.off,
                    reason: r.to_string(),
                };
                let fh = FrameHeader::decode(frame, frame.len() as u64)
                    .filter(|fh| fh.op == OP_PUT && fh.id == id && fh.len == loc.len as u64)
                    .ok_or_else(|| corrupt("frame does not match the index"))?;
                let payload = &frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + fh.len as usize];
                if !fh.check_frame(&self.inner.salt, frame) {
                    return Err(corrupt("checksum mismatch"));
                }
                let kind = Kind::from_tag(fh.kind).unwrap_or(Kind::Raw);
                scanned += 1;
                if fh.flags & crate::format::FLAG_LZ4 != 0 {
                    let data = decode_payload(loc.off, &fh, payload.to_vec(), max_value)?;
                    let r = RecordRef {
                        id,
                        kind,
                        data: &data,
                    };
                    if self.accept(&r) {
                        out.push(&r);
                    }
                } else {
                    let r = RecordRef {
                        id,
                        kind,
                        data: payload,
                    };
                    if self.accept(&r) {
                        out.push(&r);
                    }
                }
            }
            i = j;
        }
        self.shared.scanned.fetch_add(scanned, Ordering::Relaxed);
        self.shared.matched.fetch_add(out.n, Ordering::Relaxed);
        Ok(out.finish())
    }

    fn accept(&self, r: &RecordRef<'_>) -> bool {
        match &self.filter {
            Some(f) => f(r),
            None => true,
        }
    }
}

/// What one work unit produced: owned records, or with [`Query::packed`] the
/// packed bytes of its matches.
struct Out<'a> {
    records: Vec<Record>,
    packed: Vec<u8>,
    n: u64,
    pack: Option<&'a PackFn>,
}

impl Out<'_> {
    fn push(&mut self, r: &RecordRef<'_>) {
        self.n += 1;
        match self.pack {
            Some(f) => f(r, &mut self.packed),
            None => self.records.push(r.to_owned()),
        }
    }

    fn finish(self) -> Vec<Record> {
        if self.pack.is_none() {
            return self.records;
        }
        if self.n == 0 {
            return Vec::new();
        }
        vec![Record {
            id: self.n,
            kind: Kind::Raw,
            data: self.packed,
        }]
    }
}

impl QueryHandle {
    /// The next batch of matching records (in order), `None` when the scan is complete
    /// (or stopped, or the limit reached). A damaged record yields an `Err` for its
    /// batch; later batches still come.
    pub fn next_batch(&mut self) -> Option<Result<Vec<Record>>> {
        loop {
            if self.limit.is_some_and(|l| self.emitted >= l)
                || self.next_chunk >= self.shared.chunks
            {
                self.finish();
                return None;
            }
            if let Some(res) = self.pending.remove(&self.next_chunk) {
                self.next_chunk += 1;
                self.shared.advance(self.next_chunk);
                match res {
                    Ok(mut recs) => {
                        if let Some(l) = self.limit {
                            recs.truncate((l - self.emitted) as usize);
                        }
                        self.emitted += recs.len() as u64;
                        if recs.is_empty() {
                            continue;
                        }
                        return Some(Ok(recs));
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let rx = self.rx.as_ref()?;
            match rx.recv() {
                Ok((k, res)) => {
                    self.pending.insert(k, res);
                }
                Err(_) => {
                    // every worker ended: stopped early
                    self.finish();
                    return None;
                }
            }
        }
    }

    /// Collects every remaining result.
    pub fn collect_all(mut self) -> Result<Vec<Record>> {
        let mut all = Vec::new();
        while let Some(b) = self.next_batch() {
            all.extend(b?);
        }
        Ok(all)
    }

    /// Pauses the workers (they finish their current chunk).
    pub fn pause(&self) {
        *mlock(&self.shared.paused) = true;
    }

    /// Resumes paused workers.
    pub fn resume(&self) {
        *mlock(&self.shared.paused) = false;
        self.shared.resume.notify_all();
    }

    /// Stops the scan; `next_batch` returns what was already delivered and then `None`.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.resume();
        self.pending.clear();
        self.next_chunk = self.shared.chunks;
    }

    /// Live progress.
    pub fn progress(&self) -> Progress {
        self.shared.progress()
    }

    /// A handle that pauses, resumes or stops this scan from any thread (while
    /// another one waits in [`QueryHandle::next_batch`]).
    pub fn control(&self) -> QueryControl {
        QueryControl {
            shared: self.shared.clone(),
        }
    }

    fn finish(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.resume();
        self.rx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Iterator for QueryHandle {
    type Item = Result<Vec<Record>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch()
    }
}

impl Drop for QueryHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use crate::{Batch, Database, DbOptions, Kind, MemVfs, Query, Vfs};

    const CHUNK: u64 = 10;
    const CHUNKS: u64 = 200;

    fn db(name: &str) -> Database {
        let vfs: Arc<dyn Vfs> = Arc::new(MemVfs::new());
        let db = Database::create(vfs, name, DbOptions::default()).unwrap();
        let mut b = Batch::new();
        for i in 0..CHUNK * CHUNKS {
            b.insert(Kind::Raw, i.to_le_bytes().to_vec());
        }
        db.commit(&b).unwrap();
        db
    }

    /// Polls `cond` (each poll may also assert) until it holds; the deadline only
    /// guards against a hang.
    fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let t = Instant::now();
        while !cond() {
            assert!(t.elapsed() < Duration::from_secs(60), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One worker stuck on chunk 1 while the reader waits for it: the other
    /// workers stop at the read-ahead window instead of scanning the whole
    /// database into `pending` (without the bound they run to the end).
    #[test]
    fn a_slow_chunk_holds_the_other_workers_at_the_window() {
        let db = db("w");
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let max_seen = Arc::new(AtomicU64::new(0));
        let (g, m) = (gate.clone(), max_seen.clone());
        let q = Query::filter(move |r| {
            m.fetch_max((r.id - 1) / CHUNK, Ordering::AcqRel);
            if r.id == CHUNK + 1 {
                let mut open = g.0.lock().unwrap();
                while !*open {
                    open = g.1.wait(open).unwrap();
                }
            }
            true
        });
        let threads = 3u64;
        let mut h = db
            .query(q.chunk_size(CHUNK as usize).threads(threads as usize))
            .unwrap();
        let shared = h.shared.clone();
        let window = shared.window;
        assert_eq!(window, 4 * threads);
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            while let Some(b) = h.next_batch() {
                n += b.unwrap().len() as u64;
            }
            n
        });
        // chunk 1 is not delivered, so `consumed` <= 1 and no chunk at or past
        // 1 + window may be scanned
        until("the other workers park at the window", || {
            let m = max_seen.load(Ordering::Acquire);
            assert!(m < 1 + window, "scanned chunk {m}, window {window}");
            shared.parked.load(Ordering::Acquire) == threads - 1
        });
        assert!(shared.progress().scanned <= (window + 1) * CHUNK);
        assert!(max_seen.load(Ordering::Acquire) < 1 + window);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert_eq!(reader.join().unwrap(), CHUNK * CHUNKS, "every record, once");
    }

    /// Workers held at the window end when the handle is stopped or dropped.
    #[test]
    fn stop_and_drop_release_workers_held_at_the_window() {
        let db = db("s");
        for stop in [true, false] {
            let mut h = db
                .query(Query::all().chunk_size(CHUNK as usize).threads(2))
                .unwrap();
            let shared = h.shared.clone();
            // nobody reads: the workers fill the window (and the channel) and park
            until("both workers park", || {
                shared.parked.load(Ordering::Acquire) == 2
            });
            assert_eq!(shared.progress().scanned, shared.window * CHUNK);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                if stop {
                    h.stop();
                    assert!(h.next_batch().is_none());
                }
                drop(h);
                tx.send(()).unwrap();
            });
            rx.recv_timeout(Duration::from_secs(60))
                .expect("the handle ends without hanging on parked workers");
            assert!(shared.progress().done, "every worker ended");
        }
    }
}
