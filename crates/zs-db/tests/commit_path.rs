//! The commit path: validation before any byte is written, commits larger than the
//! write buffer written in pieces (and rolled back whole when a piece fails), the
//! bulk-commit cache policy, and group commit next to piecewise commits (a checkpoint
//! only ever records the end of a commit). docs/STORAGE.md §4 and §7.

use std::collections::BTreeSet;
use std::sync::Arc;

use zs_db::format::{self, FrameHeader, CHECKPOINT_OFFSETS, FILE_HEADER_LEN, FLAG_COMMIT};
use zs_db::*;

fn mem() -> (Arc<MemVfs>, Arc<dyn Vfs>) {
    let m = Arc::new(MemVfs::new());
    let v: Arc<dyn Vfs> = m.clone();
    (m, v)
}

/// A write buffer of 64 KiB (the smallest piece a big commit is written in).
fn small_buffer() -> DbOptions {
    DbOptions {
        write_buffer: 64 << 10,
        ..Default::default()
    }
}

fn value(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
}

/// A batch of `n` inserts of `len` bytes each, values tagged with `tag`.
fn batch(tag: u64, n: u64, len: usize) -> Batch {
    let mut b = Batch::new();
    for i in 0..n {
        b.insert(Kind::Raw, value(tag * 100_000 + i, len));
    }
    b
}

#[test]
fn big_commit_round_trips_and_survives_a_crash() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", small_buffer()).unwrap();
    // ~330 KB of frames: five pieces of the 64 KiB write buffer
    let ids = db.commit(&batch(1, 1000, 300)).unwrap();
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    assert_eq!(
        db.get(500).unwrap().unwrap().data,
        value(100_000 + 499, 300)
    );
    // acknowledged = durable: a power cut right after keeps all of it
    m.crash(7);
    drop(db);
    let db = Database::open(vfs, "t").unwrap();
    let r = db.open_report().clone();
    assert_eq!((r.records, r.rolled_back_frames), (1000, 0), "{r:?}");
    assert!(r.corrupt.is_empty());
    for id in [1u64, 333, 1000] {
        assert_eq!(
            db.get(id).unwrap().unwrap().data,
            value(100_000 + id - 1, 300)
        );
    }
}

#[test]
fn refused_commit_writes_nothing() {
    let (_m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", small_buffer()).unwrap();
    db.insert(Kind::Raw, b"first").unwrap();
    let before = db.stats();
    // a big batch (several write-buffer pieces) whose last op names a missing record
    let mut b = batch(2, 1000, 300);
    b.update(424_242, Kind::Raw, b"x".to_vec());
    assert!(matches!(db.commit(&b), Err(Error::NotFound(424_242))));
    let mut b = batch(3, 1000, 300);
    b.delete(1).delete(1);
    assert!(matches!(db.commit(&b), Err(Error::NotFound(1))));
    // nothing reached the file, no id was used, the database is not poisoned
    assert_eq!(db.stats(), before);
    assert!(!db.is_poisoned());
    assert_eq!(db.insert(Kind::Raw, b"second").unwrap(), 2);
    drop(db);
    let db = Database::open(vfs, "t").unwrap();
    let r = db.open_report().clone();
    assert_eq!(
        (r.records, r.truncated_bytes, r.rolled_back_frames),
        (2, 0, 0)
    );
}

#[test]
fn failed_piece_poisons_and_recovery_rolls_the_whole_commit_back() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", small_buffer()).unwrap();
    db.commit(&batch(1, 10, 100)).unwrap();
    // the third write of the next commit (its third piece) fails half-way
    m.set_faults(vec![Fault {
        at_op: 2,
        kind: FaultKind::ShortWrite(1000),
    }]);
    assert!(matches!(
        db.commit(&batch(2, 1000, 300)),
        Err(Error::Io { .. })
    ));
    assert_eq!(m.faults_fired(), 1);
    assert!(db.is_poisoned());
    assert!(matches!(db.insert(Kind::Raw, b"x"), Err(Error::Poisoned)));
    drop(db);
    let db = Database::open(vfs, "t").unwrap();
    let r = db.open_report().clone();
    // the two pieces written before the failure were in the file, without a COMMIT
    // frame: recovery rolls them back, the earlier commit stays
    assert!(r.rolled_back_frames > 300, "{r:?}");
    assert_eq!(r.records, 10);
    assert!(r.corrupt.is_empty());
    assert!(db.get(11).unwrap().is_none());
    assert_eq!(db.get(10).unwrap().unwrap().data, value(100_000 + 9, 100));
    assert_eq!(db.insert(Kind::Raw, b"y").unwrap(), 11);
}

/// Polls `f` for up to 10 s.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "{what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn bulk_commit_skips_the_cache_then_warms_it_without_stale_copies() {
    let (_m, vfs) = mem();
    // 64 KiB of cache: 4 KiB per shard, the bulk threshold
    let opts = DbOptions {
        cache_bytes: 64 << 10,
        ..Default::default()
    };
    let db = Database::create(vfs, "t", opts).unwrap();
    let id = db.insert(Kind::Raw, b"old").unwrap();
    assert!(db.cache_bytes() > 0, "ordinary commits write through");
    // 10 KB of values: a bulk commit, which also replaces the cached record
    let mut b = batch(1, 100, 100);
    b.update(id, Kind::Raw, b"new".to_vec());
    db.commit(&b).unwrap();
    assert_eq!(
        db.get(id).unwrap().unwrap().data,
        b"new",
        "stale copy dropped"
    );
    // the warm-up fills the cache in the background, up to its budget
    eventually("warm-up cached the bulk commit", || {
        db.cache_bytes() > 5_000
    });
    assert!(db.cache_bytes() <= 64 << 10);
    // records replaced right after a bulk commit are never cached in their old version
    for round in 0..20u64 {
        let mut b = batch(10 + round, 100, 100);
        let first = db.stats().next_id;
        db.commit(&b).unwrap();
        b = Batch::new();
        for k in 0..50 {
            b.update(first + k, Kind::Raw, format!("v{round}.{k}").into_bytes());
        }
        db.commit(&b).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        for k in 0..50 {
            assert_eq!(
                db.get(first + k).unwrap().unwrap().data,
                format!("v{round}.{k}").into_bytes()
            );
        }
    }
    // a bulk delete drops cached copies too
    let mut b = batch(3, 100, 100);
    b.delete(id).delete(50);
    db.commit(&b).unwrap();
    assert!(db.get(id).unwrap().is_none());
    assert!(db.get(50).unwrap().is_none());
}

#[test]
fn warm_up_never_evicts() {
    let (_m, vfs) = mem();
    let opts = DbOptions {
        cache_bytes: 64 << 10,
        ..Default::default()
    };
    let db = Database::create(vfs, "t", opts).unwrap();
    // small commits fill the cache (write-through, evicting as needed)
    for i in 0..600 {
        db.insert(Kind::Raw, &value(i, 100)).unwrap();
    }
    let hot: Vec<u64> = (550..=600).collect();
    let full = db.cache_bytes();
    assert!(full > 50_000, "{full}");
    db.commit(&batch(2, 2000, 100)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // the most recently written records are still cached: reading them does not grow
    // the cache (a miss would insert)
    let before = db.cache_bytes();
    for &id in &hot {
        db.get(id).unwrap().unwrap();
    }
    assert_eq!(db.cache_bytes(), before, "hot records were evicted");
}

/// Offsets where a commit ends, found by walking the frames of a file image.
fn commit_ends(file: &[u8], salt: &format::Salt) -> BTreeSet<u64> {
    let mut ends = BTreeSet::new();
    let mut off = FILE_HEADER_LEN as usize;
    while off + 32 <= file.len() {
        let Some(fh) = FrameHeader::decode(&file[off..], (file.len() - off - 32) as u64) else {
            break;
        };
        let end = off + fh.frame_len() as usize;
        if !fh.check(
            salt,
            &file[off..],
            &file[off + 32..off + 32 + fh.len as usize],
        ) {
            break;
        }
        if fh.flags & FLAG_COMMIT != 0 {
            ends.insert(end as u64);
        }
        off = end;
    }
    ends
}

/// Checks that every valid checkpoint slot of the file names the end of a commit.
fn check_checkpoints(path: &std::path::Path) {
    let image = std::fs::read(path).unwrap();
    let header = format::decode_file_header("t", &image[..FILE_HEADER_LEN as usize]).unwrap();
    let ends = commit_ends(&image, &header.salt);
    for off in CHECKPOINT_OFFSETS {
        let o = off as usize;
        if let Some(end) = format::decode_checkpoint(&header.salt, &image[o..o + 16]) {
            assert!(
                end == FILE_HEADER_LEN || ends.contains(&end),
                "checkpoint {end} is not a commit end"
            );
        }
    }
}

/// On a real disk (fsyncs take milliseconds, so small committers queue for the sync
/// while a big commit writes its pieces): a sync records only what whole commits
/// reached, never the end of a piece.
#[test]
fn group_commit_next_to_piecewise_commits_checkpoints_commit_ends() {
    let dir = tempfile::tempdir().unwrap();
    let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(dir.path()).unwrap());
    let path = dir.path().join(file_name("t"));
    let db = Database::create(vfs.clone(), "t", small_buffer()).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let acked: Vec<u64> = std::thread::scope(|s| {
        let small: Vec<_> = (0..3)
            .map(|t| {
                let (db, done) = (db.clone(), &done);
                s.spawn(move || {
                    let mut ids = Vec::new();
                    let mut i = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) || i < 20 {
                        ids.push(db.insert(Kind::Raw, &value(t * 100_000 + i, 40)).unwrap());
                        i += 1;
                    }
                    ids
                })
            })
            .collect();
        let big = {
            let (db, path, done) = (db.clone(), &path, &done);
            s.spawn(move || {
                let mut ids = Vec::new();
                for k in 0..12 {
                    // ~85 KB: two pieces, while the small committers sync around it
                    ids.extend(db.commit(&batch(10 + k, 330, 250)).unwrap());
                    check_checkpoints(path);
                }
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                ids
            })
        };
        let mut all = big.join().unwrap();
        all.extend(small.into_iter().flat_map(|h| h.join().unwrap()));
        all
    });
    assert!(acked.len() >= 12 * 330 + 3 * 20);
    check_checkpoints(&path);
    drop(db);
    let db = Database::open(vfs, "t").unwrap();
    for id in acked {
        assert!(db.contains(id), "acknowledged record {id} lost");
    }
}

#[test]
fn warm_up_never_forces_a_buffered_commit_out() {
    let (m, vfs) = mem();
    let opts = DbOptions {
        cache_bytes: 64 << 10,
        durability: Durability::Periodic(std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    let db = Database::create(vfs, "t", opts).unwrap();
    let len = || m.read_file(&file_name("t")).unwrap().len();
    let before = len();
    // a bulk commit (10 KB of values) that stays in the 4 MiB write buffer
    db.commit(&batch(1, 100, 100)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(len(), before, "the warm-up wrote the buffer out");
    assert_eq!(db.cache_bytes(), 0);
    assert_eq!(db.get(7).unwrap().unwrap().data, value(100_000 + 6, 100));
}

/// The largest valid checkpoint of a file image.
fn checkpoint_of(image: &[u8]) -> u64 {
    let header = format::decode_file_header("t", &image[..FILE_HEADER_LEN as usize]).unwrap();
    CHECKPOINT_OFFSETS
        .iter()
        .filter_map(|&o| {
            format::decode_checkpoint(&header.salt, &image[o as usize..o as usize + 16])
        })
        .max()
        .unwrap_or(FILE_HEADER_LEN)
}

/// Single-record commits do not rewrite the checkpoint at every fsync (it lags the
/// synced end by less than 1 MiB / 1 s), and a power cut with the log ending inside
/// its preallocated zero tail, past the lagging checkpoint, still keeps every
/// acknowledged commit: nothing is reported, nothing cut but the zero tail's
/// unsynced part.
#[test]
fn power_cut_with_a_lagging_checkpoint_inside_the_zero_tail_keeps_every_commit() {
    for seed in 0..4 {
        let (m, vfs) = mem();
        let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
        let mut ids = Vec::new();
        for i in 0..300u64 {
            ids.push(db.insert(Kind::Raw, &value(i, 40)).unwrap());
        }
        let end = db.stats().file_bytes;
        let image = m.read_file("t.zdb").unwrap();
        assert!(
            image.len() as u64 > end,
            "the log ends inside preallocated room"
        );
        assert!(image[end as usize..].iter().all(|&b| b == 0));
        let ckpt = checkpoint_of(&image);
        // rewritten at every fsync it would lag by one 72-byte frame
        assert!(
            end - ckpt > 200,
            "the checkpoint is not rewritten at every commit ({ckpt} vs {end})"
        );
        db.abandon();
        m.crash(seed); // unsynced bytes are lost or torn: there are none but room
        let db = Database::open(vfs.clone(), "t").unwrap();
        assert_eq!(db.len(), 300, "seed {seed}");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(db.get(*id).unwrap().unwrap().data, value(i as u64, 40));
        }
        assert!(db.open_report().corrupt.is_empty());
        assert_eq!(db.open_report().rolled_back_frames, 0);
        // the room is reused by the next commit, which survives the next power cut
        let next = db.insert(Kind::Raw, b"after the cut").unwrap();
        db.abandon();
        m.crash(seed + 100);
        let db = Database::open(vfs, "t").unwrap();
        assert_eq!(db.get(next).unwrap().unwrap().data, b"after the cut");
        assert_eq!(db.len(), 301);
    }
}

/// The checkpoint is still rewritten as the log grows (every MiB), so damage of
/// durable bytes well before the end is skipped and reported, not the end of the log.
#[test]
fn checkpoint_follows_the_log_every_mebibyte() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    for i in 0..700u64 {
        db.insert(Kind::Raw, &value(i, 2000)).unwrap();
    }
    let end = db.stats().file_bytes;
    let ckpt = checkpoint_of(&m.read_file("t.zdb").unwrap());
    assert!(ckpt > 96, "no checkpoint written after {end} bytes");
    assert!(
        end - ckpt < (1 << 20) + 4096,
        "checkpoint {ckpt} lags {end} too far"
    );
}

/// A gate that `sync_data` waits at while the test holds it closed.
#[derive(Debug, Default)]
struct Gate {
    state: std::sync::Mutex<(bool, usize)>, // (closed, syncs waiting)
    cv: std::sync::Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 += 1;
        self.cv.notify_all();
        while s.0 {
            s = self.cv.wait(s).unwrap();
        }
        s.1 -= 1;
    }
}

/// `Database::sync` fsyncs outside the writer lock: a buffered commit made while
/// the disk is busy with that fsync returns at once (it used to queue behind the
/// fsync; a registry that syncs on one thread and commits on another stalled).
#[test]
fn a_commit_during_a_sync_does_not_wait_for_the_disk() {
    commit_during_a_sync(None);
}

/// The same while the maintenance thread runs rounds every millisecond and the fsync
/// lasts 100 ms: a round used to ask for the synced end (the sync's lock, held through
/// the fsync) while holding the writer, so the commit waited for the disk after all.
#[test]
fn a_commit_during_a_sync_does_not_wait_behind_the_maintenance_thread() {
    commit_during_a_sync(Some(std::time::Duration::from_millis(100)));
}

/// `pause`: also run the maintenance thread every millisecond, and let that long pass
/// inside the fsync before committing.
fn commit_during_a_sync(pause: Option<std::time::Duration>) {
    let (_m, inner) = mem();
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let vfs: Arc<dyn Vfs> = Arc::new(SyncHookVfs::new(inner, move || g.pass()));
    let mut opts = DbOptions {
        durability: Durability::Periodic(std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    if pause.is_some() {
        // maintenance rounds come every idle_evict / 2 (at least 1 ms)
        opts.idle_evict = std::time::Duration::from_millis(2);
    }
    let db = Database::create(vfs, "gated", opts).unwrap();
    db.commit(&batch(1, 3, 40)).unwrap();
    gate.state.lock().unwrap().0 = true;
    let syncer = {
        let db = db.clone();
        std::thread::spawn(move || db.sync())
    };
    {
        // wait until the sync is inside sync_data
        let mut s = gate.state.lock().unwrap();
        while s.1 == 0 {
            s = gate.cv.wait(s).unwrap();
        }
    }
    if let Some(p) = pause {
        std::thread::sleep(p);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let committer = {
        let db = db.clone();
        std::thread::spawn(move || {
            let r = db.commit(&batch(2, 2, 40));
            let _ = tx.send(());
            r
        })
    };
    let returned = rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok();
    {
        let mut s = gate.state.lock().unwrap();
        s.0 = false;
        gate.cv.notify_all();
    }
    syncer.join().unwrap().unwrap();
    let ids = committer.join().unwrap().unwrap();
    assert!(
        returned,
        "a buffered commit waited for another thread's fsync"
    );
    assert_eq!(ids.len(), 2);
    db.sync().unwrap();
    assert_eq!(db.len(), 5);
}
