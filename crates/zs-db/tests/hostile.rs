//! Hostile and damaged input (security audit 2026-12, zs-db findings H1, M6, M7, M8,
//! L11, L12): frame images inside values, aborted streams, torn tails after the synced
//! end, two writers, huge id floors, corruption that appears while a database is open,
//! concurrent creators.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use zs_db::format::{
    self, Salt, FILE_HEADER_LEN, FLAG_COMMIT, OP_DELETE, OP_META, OP_PUT, SALT_LEN,
};
use zs_db::*;

fn mem() -> (Arc<MemVfs>, Arc<dyn Vfs>) {
    let m = Arc::new(MemVfs::new());
    let v: Arc<dyn Vfs> = m.clone();
    (m, v)
}

/// Everything a reader can observe: records, settings, indexes.
#[derive(Debug, PartialEq)]
struct Snapshot {
    records: BTreeMap<u64, (Kind, Vec<u8>)>,
    durability: Durability,
    compress: bool,
    indexes: Vec<String>,
}

fn snapshot(db: &Database) -> Snapshot {
    Snapshot {
        records: db
            .cursor(1, false)
            .map(|r| r.unwrap())
            .map(|r| (r.id, (r.kind, r.data)))
            .collect(),
        durability: db.options().durability,
        compress: db.options().compress,
        indexes: db.indexes(),
    }
}

/// A commit of one frame sealed with `salt`.
fn frame(salt: &Salt, op: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let kind = if op == OP_PUT { 1 } else { 0 };
    format::encode_frame(&mut out, salt, op, kind, FLAG_COMMIT, id, 0, 0, payload);
    out
}

/// What an attacker can put inside a value: commits that would delete, overwrite and
/// add records and change settings, sealed with `salt`.
fn evil_frames(salt: &Salt) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(frame(salt, OP_DELETE, 1, b""));
    v.extend(frame(salt, OP_PUT, 2, br#"{"evil":true}"#));
    v.extend(frame(salt, OP_PUT, 9, br#"{"added":true}"#));
    v.extend(frame(salt, OP_META, 0, b"durability=periodic:5"));
    v.extend(frame(salt, OP_META, 0, b"index.evil=1"));
    v.extend(frame(salt, OP_META, 0, b"compress=true"));
    v
}

/// A payload holding frame images: those of another database's file (copied whole,
/// header excluded) and frames sealed with that file's real checksum salt, at
/// 8-aligned offsets (where a frame of this file could start) and shifted ones.
fn hostile_payload(vfs: &Arc<MemVfs>, dynvfs: &Arc<dyn Vfs>) -> Vec<u8> {
    let other = Database::create(dynvfs.clone(), "other", DbOptions::default()).unwrap();
    other.insert(Kind::Json, br#"{"from":"other"}"#).unwrap();
    other.delete(1).unwrap();
    other.insert(Kind::Json, br#"{"x":1}"#).unwrap();
    drop(other);
    let file = vfs.read_file("other.zdb").unwrap();
    let other_salt = format::decode_file_header("other", &file).unwrap().salt;
    let mut p = Vec::new();
    for shift in [0usize, 0, 3] {
        p.extend(std::iter::repeat_n(0x55, shift));
        p.extend(evil_frames(&other_salt));
        p.extend_from_slice(&file[FILE_HEADER_LEN as usize..]);
        let pad = (8 - p.len() % 8) % 8;
        p.extend(std::iter::repeat_n(0, pad));
    }
    p
}

/// A reader that yields `data[..fail_at]`, then fails.
struct FailingReader<'a> {
    data: &'a [u8],
    pos: usize,
    fail_at: usize,
}

impl Read for FailingReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.fail_at {
            return Err(std::io::Error::other("upload aborted"));
        }
        let n = out.len().min(self.fail_at - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn populated(vfs: &Arc<dyn Vfs>, durability: Durability) -> Database {
    let db = Database::create(
        vfs.clone(),
        "a",
        DbOptions {
            durability,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..4u64 {
        db.insert(Kind::Json, format!(r#"{{"n":{i}}}"#).as_bytes())
            .unwrap();
    }
    db.sync().unwrap();
    db
}

/// H1: an upload that fails half-way leaves nothing behind, and the frame images in
/// its bytes are never replayed (after a crash, after a clean close, after later writes).
#[test]
fn aborted_stream_with_frame_images_replays_nothing() {
    for (round, durability) in [
        Durability::Immediate,
        Durability::Periodic(Duration::from_secs(3600)),
    ]
    .into_iter()
    .enumerate()
    {
        let (m, vfs) = mem();
        let payload = hostile_payload(&m, &vfs);
        let db = populated(&vfs, durability);
        let before = snapshot(&db);
        let end = db.stats().file_bytes as usize;
        let mut r = FailingReader {
            data: &payload,
            pos: 0,
            fail_at: payload.len(),
        };
        let res = db.insert_stream(Kind::Raw, &mut r, payload.len() as u64 + 4096);
        assert!(matches!(res, Err(Error::Io { .. })), "{res:?}");
        assert!(!db.is_poisoned());
        // nothing of the aborted value is left after the log end
        let file = m.read_file("a.zdb").unwrap();
        assert!(file.len() <= end || file[end..].iter().all(|&b| b == 0));
        assert_eq!(snapshot(&db), before);
        // a crash now: the frame images must not come back
        db.abandon();
        m.crash(round as u64);
        let db = Database::open(vfs.clone(), "a").unwrap();
        assert_eq!(snapshot(&db), before);
        assert!(db.open_report().corrupt.is_empty());
        // later writes land where the stream was; a clean close; nothing replayed
        let id = db.insert(Kind::Raw, b"after").unwrap();
        drop(db);
        let db = Database::open(vfs.clone(), "a").unwrap();
        let mut want = before;
        want.records.insert(id, (Kind::Raw, b"after".to_vec()));
        assert_eq!(snapshot(&db), want);
        assert_eq!(
            m.read_file("a.zdb").unwrap().len() as u64,
            db.stats().file_bytes,
            "a clean close leaves nothing after the log end"
        );
    }
}

/// H1 + M7: a value full of frame images is stored; then its frame header is lost
/// (a torn tail before any sync, or damage after a clean close): recovery must not
/// find the images inside the payload.
#[test]
fn torn_stream_header_replays_nothing() {
    for clean_close in [false, true] {
        let (m, vfs) = mem();
        let payload = hostile_payload(&m, &vfs);
        let db = populated(&vfs, Durability::Periodic(Duration::from_secs(3600)));
        let before = snapshot(&db);
        let off = db.stats().file_bytes as usize;
        let id = db
            .insert_stream(Kind::Raw, &mut &payload[..], payload.len() as u64)
            .unwrap();
        let mut v = Vec::new();
        db.open_value(id)
            .unwrap()
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        assert!(v == payload);
        if clean_close {
            drop(db); // synced, checkpoint at the end: the stream is durable
        } else {
            db.abandon(); // the stream was written but never synced
        }
        let mut file = m.read_file("a.zdb").unwrap();
        file[off..off + 32].fill(0); // its header did not make it to the disk
        m.write_file("a.zdb", &file);
        let db = Database::open(vfs.clone(), "a").unwrap();
        assert_eq!(snapshot(&db), before, "clean close: {clean_close}");
        assert_eq!(db.stats().file_bytes as usize, off);
        assert_eq!(m.read_file("a.zdb").unwrap().len(), off, "the rest is cut");
    }
}

/// M7: under Periodic durability commit B reached the disk but the earlier commit A
/// did not: recovery keeps neither (a prefix of the commits, never a later one alone).
#[test]
fn later_commit_is_not_kept_when_an_earlier_one_is_lost() {
    for damage in [0u8, 0xA5] {
        let (m, vfs) = mem();
        let db = Database::create(
            vfs.clone(),
            "p",
            DbOptions {
                durability: Durability::Periodic(Duration::from_secs(3600)),
                cache_bytes: 0,
                ..Default::default()
            },
        )
        .unwrap();
        for i in 0..5u8 {
            db.insert(Kind::Raw, &[i; 24]).unwrap();
        }
        db.sync().unwrap();
        db.insert(Kind::Raw, &[0xEE; 24]).unwrap(); // warms the next checkpoint up
        db.sync().unwrap();
        let before = snapshot(&db);
        let a_off = db.stats().file_bytes as usize;
        let a = db.insert(Kind::Raw, b"commit A").unwrap();
        let b_off = db.stats().file_bytes as usize;
        let mut batch = Batch::new();
        batch.insert(Kind::Raw, b"commit B1".to_vec()).delete(1);
        let b = db.commit(&batch).unwrap();
        let c = db.insert(Kind::Raw, b"commit C").unwrap();
        // written to the file (a read without cache flushes the buffer), not synced
        assert_eq!(db.get(c).unwrap().unwrap().data, b"commit C");
        let mut image = m.read_file("p.zdb").unwrap();
        db.abandon();
        // the page of A never reached the disk (zeros, or stale bytes); B and C did
        image[a_off..b_off].fill(damage);
        m.write_file("p.zdb", &image);
        let db = Database::open(vfs.clone(), "p").unwrap();
        assert_eq!(snapshot(&db), before, "damage byte {damage:#x}");
        assert!(db.get(a).unwrap().is_none());
        assert!(db.get(b[0]).unwrap().is_none());
        assert!(db.get(c).unwrap().is_none());
        assert!(db.contains(1), "B's delete was not applied");
        assert!(db.open_report().corrupt.is_empty());
        assert!(db.open_report().truncated_bytes > 0);
        assert_eq!(m.read_file("p.zdb").unwrap().len(), a_off);
    }
}

/// Damage before the synced end (checkpoint) is still skipped and reported, not
/// treated as the end of the log; frames after it survive.
#[test]
fn damage_before_the_checkpoint_is_skipped() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "d", DbOptions::default()).unwrap();
    let mut offs = Vec::new();
    for i in 0..10u8 {
        offs.push(db.stats().file_bytes as usize);
        db.insert(Kind::Raw, &[i; 30]).unwrap();
    }
    drop(db); // clean close: the checkpoint is the end
    let mut file = m.read_file("d.zdb").unwrap();
    file[offs[3]..offs[3] + 8].fill(0xFF); // a frame header rotted
    m.write_file("d.zdb", &file);
    let db = Database::open(vfs, "d").unwrap();
    assert_eq!(db.len(), 9);
    assert!(db.get(4).unwrap().is_none());
    assert_eq!(db.get(10).unwrap().unwrap().data, [9u8; 30]);
    let rep = db.open_report();
    assert_eq!(rep.corrupt.len(), 1);
    assert_eq!(rep.corrupt[0].offset as usize, offs[3]);
    assert_eq!(rep.corrupt[0].len as usize, offs[4] - offs[3]);
}

#[test]
#[ignore = "the child process of `second_writer_is_refused`; started by it with --ignored"]
fn lock_child() {
    let dir = std::env::var("ZS_DB_LOCK_DIR").expect("ZS_DB_LOCK_DIR");
    let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(dir).unwrap());
    match Database::open(vfs, "w") {
        Ok(db) => {
            db.insert(Kind::Raw, b"child").unwrap();
            println!("CHILD:OPENED");
        }
        Err(Error::Locked { .. }) => println!("CHILD:LOCKED"),
        Err(e) => println!("CHILD:ERROR {e}"),
    }
}

fn child_open(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ZS_DB_LOCK_DIR", dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.find("CHILD:").map(|i| l[i..].to_string()))
        .unwrap_or_else(|| format!("no answer: {text}"))
}

/// M6: one writer per database: a second open in this process (another handle, or
/// another `Env`) and an open from another process are refused with a clear error;
/// once the first engine closes, they succeed.
/// Taken by the tests that spawn a child process and by the tests that drop a
/// lock and take it again at once: between fork and exec a child holds copies of
/// every descriptor, lock files included, so a lock released in that window
/// stays held until the child's exec.
static FORK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn second_writer_is_refused() {
    let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(dir.path()).unwrap());
    let db = Database::create(vfs.clone(), "w", DbOptions::default()).unwrap();
    db.insert(Kind::Raw, b"parent").unwrap();
    let e = Database::open(vfs.clone(), "w").unwrap_err();
    assert!(matches!(&e, Error::Locked { name } if name == "w"), "{e}");
    assert!(e.to_string().contains("locked"), "{e}");
    let env = Env::open_dir(dir.path()).unwrap();
    assert!(matches!(env.db("w"), Err(Error::Locked { .. })));
    assert_eq!(child_open(dir.path()), "CHILD:LOCKED");
    // a leftover-looking temp file is not deleted while the owner may be using it
    std::fs::write(dir.path().join("w.zdb.tmp"), b"in progress").unwrap();
    assert!(matches!(
        Database::open(vfs.clone(), "w"),
        Err(Error::Locked { .. })
    ));
    assert!(dir.path().join("w.zdb.tmp").exists());
    let clone = db.clone();
    drop(db);
    assert!(matches!(
        Database::open(vfs.clone(), "w"),
        Err(Error::Locked { .. })
    ));
    drop(clone); // the last handle: the engine closes and unlocks
    assert_eq!(child_open(dir.path()), "CHILD:OPENED");
    let db = env.db("w").unwrap();
    assert_eq!(db.len(), 2);
    assert!(
        !dir.path().join("w.zdb.tmp").exists(),
        "a real leftover is removed"
    );
}

/// M6: `Env` never runs two engines on one file, and handles of a removed or replaced
/// database fail instead of acknowledging writes that are lost.
#[test]
fn env_closes_handles_it_replaces_or_removes() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open_dir(dir.path()).unwrap();
    let a = env.create_db("a", DbOptions::default()).unwrap();
    a.insert(Kind::Raw, b"1").unwrap();
    // reopening with other options closes the cached engine first
    let a2 = env
        .db_with(
            "a",
            DbOptions {
                durability: Durability::Periodic(Duration::from_millis(50)),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(
        a.insert(Kind::Raw, b"lost"),
        Err(Error::Closed { .. })
    ));
    assert!(matches!(a.get(1), Err(Error::Closed { .. })));
    a2.insert(Kind::Raw, b"2").unwrap(); // buffered (periodic)
                                         // replace: both engines are closed; the source's buffered commit is kept
    let b = env.create_db("b", DbOptions::default()).unwrap();
    b.insert(Kind::Raw, b"b1").unwrap();
    env.replace_db("b", "a").unwrap();
    assert!(matches!(
        a2.insert(Kind::Raw, b"lost"),
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        b.insert(Kind::Raw, b"lost"),
        Err(Error::Closed { .. })
    ));
    let nb = env.db("b").unwrap();
    let got: Vec<Vec<u8>> = nb.cursor(1, false).map(|r| r.unwrap().data).collect();
    assert_eq!(got, vec![b"1".to_vec(), b"2".to_vec()]);
    // remove: the handle is closed; a handle Env does not know about blocks removal
    env.remove_db("b").unwrap();
    assert!(matches!(
        nb.insert(Kind::Raw, b"lost"),
        Err(Error::Closed { .. })
    ));
    assert!(matches!(env.db("b"), Err(Error::NoSuchDatabase(_))));
    let c = env.create_db("c", DbOptions::default()).unwrap();
    env.close("c"); // forgotten by the Env, still open
    assert!(matches!(env.remove_db("c"), Err(Error::Locked { .. })));
    c.insert(Kind::Raw, b"kept").unwrap();
    drop(c);
    assert_eq!(env.db("c").unwrap().len(), 1);
}

/// L12: concurrent creators of one name: exactly one wins, nobody replaces its file.
#[test]
fn concurrent_create_has_one_winner() {
    let _fork = FORK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let name = format!("r{round}");
        let results: Vec<Result<u64>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u8)
                .map(|t| {
                    let name = name.clone();
                    let path = dir.path().to_path_buf();
                    s.spawn(move || {
                        // separate Vfs objects, as separate processes would have
                        let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(path).unwrap());
                        let db = Database::create(vfs, &name, DbOptions::default())?;
                        db.insert(Kind::Raw, &[t])?;
                        Ok(u64::from(t))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<u64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .copied()
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, Error::AlreadyExists(_) | Error::Locked { .. }),
                    "{e}"
                );
            }
        }
        let vfs: Arc<dyn Vfs> = Arc::new(DirVfs::new(dir.path()).unwrap());
        let db = Database::open(vfs, &name).unwrap();
        assert_eq!(db.len(), 1);
        assert_eq!(db.get(1).unwrap().unwrap().data, [winners[0] as u8]);
    }
}

/// A database file written by hand: header (id floor, salt, checkpoint at the end),
/// then one commit per `(op, id, payload)`.
fn craft(floor: u64, frames: &[(u8, u64, &[u8])]) -> Vec<u8> {
    let salt = Salt::new([7; SALT_LEN]);
    let mut body = Vec::new();
    for &(op, id, p) in frames {
        body.extend(frame(&salt, op, id, p));
    }
    let end = FILE_HEADER_LEN + body.len() as u64;
    let mut file = format::encode_file_header(floor, &salt, end).to_vec();
    file.extend(body);
    file
}

/// M8: ids above 2^32 live through compaction and reopen, and the id index does not
/// grow with the id floor.
#[test]
fn ids_above_2_pow_32_survive_compaction() {
    let (m, vfs) = mem();
    let floor = (1u64 << 32) + 10;
    m.write_file(
        "big.zdb",
        &craft(
            floor,
            &[
                (OP_META, 0, b"durability=immediate"),
                (OP_PUT, 7, br#"{"old":7}"#),
                (OP_PUT, (1 << 32) + 1, br#"{"old":"2^32+1"}"#),
            ],
        ),
    );
    let db = Database::open(vfs.clone(), "big").unwrap();
    assert_eq!(db.stats().next_id, floor);
    let mut ids = Vec::new();
    for i in 0..50u64 {
        ids.push(db.insert(Kind::Raw, &i.to_le_bytes()).unwrap());
    }
    assert_eq!(ids[0], floor);
    db.delete(ids[10]).unwrap();
    assert!(db.stats().index_bytes < 64 << 10, "{:?}", db.stats());
    db.compact().unwrap();
    drop(db);
    let db = Database::open(vfs, "big").unwrap();
    assert_eq!(db.len(), 51);
    assert_eq!(db.get(7).unwrap().unwrap().data, br#"{"old":7}"#);
    assert_eq!(
        db.get((1 << 32) + 1).unwrap().unwrap().data,
        br#"{"old":"2^32+1"}"#
    );
    for (i, id) in ids.iter().enumerate() {
        let got = db.get(*id).unwrap().map(|r| r.data);
        if i == 10 {
            assert!(got.is_none());
        } else {
            assert_eq!(got.unwrap(), (i as u64).to_le_bytes());
        }
    }
    let all = db.query(Query::all()).unwrap().collect_all().unwrap();
    assert_eq!(all.len(), 51);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let back: Vec<u64> = db.cursor(u64::MAX, true).map(|r| r.unwrap().id).collect();
    assert_eq!(back.len(), 51);
    assert_eq!(back[50], 7);
    assert_eq!(db.stats().next_id, floor + 50);
}

/// M8: opening a database whose id floor is 1e9 with a few live records allocates an
/// index of a few bytes, not one slot per id.
#[test]
fn huge_id_floor_opens_small() {
    let (m, vfs) = mem();
    let floor = 1_000_000_000u64;
    m.write_file(
        "f.zdb",
        &craft(
            floor,
            &[
                (OP_PUT, 3, br#"{"a":3}"#),
                (OP_PUT, floor - 1, br#"{"a":"last"}"#),
            ],
        ),
    );
    let db = Database::open(vfs, "f").unwrap();
    assert_eq!(db.len(), 2);
    let id = db.insert(Kind::Json, br#"{"a":"new"}"#).unwrap();
    assert_eq!(id, floor);
    let s = db.stats();
    assert!(s.index_bytes < 4096, "index of {} bytes", s.index_bytes);
    let found = db
        .query(Query::expr("a = 'new' or a = 3").unwrap())
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, id]);
    let fwd: Vec<u64> = db.cursor(1, false).map(|r| r.unwrap().id).collect();
    assert_eq!(fwd, vec![3, floor - 1, floor]);
}

/// L11: a frame damaged on disk after the database was opened gives errors, not
/// panics (compaction's snapshot, streamed reads).
#[test]
fn damage_after_open_is_an_error_not_a_panic() {
    let (m, vfs) = mem();
    let opts = DbOptions {
        cache_bytes: 0,
        ..Default::default()
    };
    let db = Database::create(vfs.clone(), "x", opts).unwrap();
    let mut offs = Vec::new();
    for i in 0..5u8 {
        offs.push(db.stats().file_bytes as usize);
        db.insert(Kind::Raw, &[i; 40]).unwrap();
    }
    let end = db.stats().file_bytes as usize;
    let mut file = m.read_file("x.zdb").unwrap();
    file.truncate(end);
    // the last frame's length now runs 32 bytes past the log end
    let len_at = offs[4] + 16;
    file[len_at..len_at + 8].copy_from_slice(&(40u64 + 32).to_le_bytes());
    // and an earlier frame claims an absurd length
    let len_at = offs[1] + 16;
    file[len_at..len_at + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    m.write_file("x.zdb", &file);
    assert!(matches!(db.compact(), Err(Error::Corrupt { .. })));
    assert!(matches!(db.open_value(2), Err(Error::Corrupt { .. })));
    assert!(matches!(db.open_value(5), Err(Error::Corrupt { .. })));
    assert!(db.get(2).is_err());
    assert_eq!(db.get(1).unwrap().unwrap().data, [0u8; 40]);
}

/// Version 1 files are refused with a clear error (no migration).
#[test]
fn version_1_file_is_refused() {
    let (m, vfs) = mem();
    let mut v1 = vec![0u8; 32];
    v1[0..8].copy_from_slice(&format::MAGIC);
    v1[8] = 1;
    v1[10] = 32;
    let crc = crc32fast::hash(&v1[0..24]);
    v1[24..28].copy_from_slice(&crc.to_le_bytes());
    m.write_file("old.zdb", &v1);
    let e = Database::open(vfs, "old").unwrap_err();
    assert!(matches!(e, Error::BadHeader { .. }));
    assert!(
        e.to_string().contains("unsupported format version 1"),
        "{e}"
    );
}
