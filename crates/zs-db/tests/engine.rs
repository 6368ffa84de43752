//! Engine behaviour: CRUD, recovery, batches, compaction, caching, streams, indexes, queries.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use zs_db::*;

fn mem() -> (Arc<MemVfs>, Arc<dyn Vfs>) {
    let m = Arc::new(MemVfs::new());
    let v: Arc<dyn Vfs> = m.clone();
    (m, v)
}

fn json(i: u64) -> Vec<u8> {
    format!(r#"{{"name":"user{i}","age":{}}}"#, i % 50).into_bytes()
}

/// A database in memory holding `n` JSON records (`json(0..n)`, ids 1..=n).
fn json_db(name: &str, n: u64) -> Database {
    let (_m, vfs) = mem();
    let db = Database::create(vfs, name, DbOptions::default()).unwrap();
    let mut b = Batch::new();
    for i in 0..n {
        b.insert(Kind::Json, json(i));
    }
    db.commit(&b).unwrap();
    db
}

#[test]
fn crud_and_reopen() {
    let (_m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    let a = db.insert(Kind::Raw, b"alpha").unwrap();
    let b = db.insert(Kind::Json, br#"{"x":1}"#).unwrap();
    assert_eq!((a, b), (1, 2));
    db.update(a, Kind::Raw, b"alpha2").unwrap();
    assert!(matches!(
        db.update(99, Kind::Raw, b"x"),
        Err(Error::NotFound(99))
    ));
    assert!(db.delete(b).unwrap());
    assert!(!db.delete(b).unwrap());
    drop(db);
    let db = Database::open(vfs.clone(), "t").unwrap();
    assert_eq!(db.get(a).unwrap().unwrap().data, b"alpha2");
    assert!(db.get(b).unwrap().is_none());
    assert_eq!(db.open_report().corrupt, vec![]);
    // ids are never reused, even after the highest one was deleted
    assert_eq!(db.insert(Kind::Raw, b"c").unwrap(), 3);
    assert!(matches!(
        Database::create(vfs.clone(), "t", DbOptions::default()),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        Database::open(vfs, "nope"),
        Err(Error::NoSuchDatabase(_))
    ));
}

#[test]
fn batch_is_atomic_and_validated() {
    let (_m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    let mut b = Batch::new();
    b.insert(Kind::Raw, b"1".to_vec())
        .insert(Kind::Raw, b"2".to_vec())
        .delete(1);
    let ids = db.commit(&b).unwrap();
    assert_eq!(ids, vec![1, 2]);
    assert!(!db.contains(1) && db.contains(2));
    let mut bad = Batch::new();
    bad.insert(Kind::Raw, b"3".to_vec())
        .update(77, Kind::Raw, b"x".to_vec());
    assert!(db.commit(&bad).is_err());
    assert_eq!(db.len(), 1);
    drop(db);
    assert_eq!(Database::open(vfs, "t").unwrap().len(), 1);
}

#[test]
fn unsynced_tail_is_rolled_back_and_synced_data_survives() {
    let (m, vfs) = mem();
    let opts = DbOptions {
        durability: Durability::Periodic(Duration::from_secs(3600)),
        ..Default::default()
    };
    let db = Database::create(vfs.clone(), "t", opts).unwrap();
    for i in 0..50 {
        db.insert(Kind::Json, &json(i)).unwrap();
    }
    db.sync().unwrap();
    let mut b = Batch::new();
    for i in 0..200 {
        b.insert(Kind::Json, json(1000 + i));
    }
    db.commit(&b).unwrap();
    // write it out without fsync, then cut the power
    drop(db.query(Query::all()).unwrap().collect_all().unwrap());
    db.abandon(); // no final flush: simulates a killed process + power cut
    m.crash(7);
    let db = Database::open(vfs, "t").unwrap();
    let n = db.len();
    assert!(n == 50 || n == 250, "batch must be all or nothing, got {n}");
    for id in 1..=50 {
        assert_eq!(db.get(id).unwrap().unwrap().data, json(id - 1));
    }
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    for i in 0..10 {
        db.insert(Kind::Raw, format!("value-{i}").as_bytes())
            .unwrap();
    }
    drop(db);
    let mut bytes = m.read_file("t.zdb").unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0xAB; 50]); // garbage tail
    m.write_file("t.zdb", &bytes);
    let db = Database::open(vfs.clone(), "t").unwrap();
    assert_eq!(db.len(), 10);
    assert_eq!(db.open_report().truncated_bytes, 50);
    assert_eq!(m.read_file("t.zdb").unwrap().len(), good);
    db.insert(Kind::Raw, b"after").unwrap();
    drop(db);
    assert_eq!(Database::open(vfs, "t").unwrap().len(), 11);
}

#[test]
fn corrupt_region_is_reported_and_rest_readable() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    let mut locs = Vec::new();
    for i in 0..20 {
        locs.push(db.stats().file_bytes);
        db.insert(Kind::Raw, format!("value-{i:04}").as_bytes())
            .unwrap();
    }
    drop(db);
    let mut bytes = m.read_file("t.zdb").unwrap();
    let off = locs[5] as usize;
    bytes[off + 40] ^= 0xFF; // flip a payload byte of record 6
    m.write_file("t.zdb", &bytes);
    let db = Database::open(vfs, "t").unwrap();
    let rep = db.open_report();
    assert_eq!(rep.corrupt.len(), 1);
    assert_eq!(rep.corrupt[0].offset, locs[5]);
    assert_eq!(rep.corrupt[0].len, locs[6] - locs[5]);
    assert_eq!(db.len(), 19);
    assert!(db.get(6).unwrap().is_none());
    assert_eq!(db.get(20).unwrap().unwrap().data, b"value-0019");
}

#[test]
fn bad_header_is_an_error() {
    let (m, vfs) = mem();
    drop(Database::create(vfs.clone(), "t", DbOptions::default()).unwrap());
    let mut bytes = m.read_file("t.zdb").unwrap();
    bytes[3] = b'X';
    m.write_file("t.zdb", &bytes);
    assert!(matches!(
        Database::open(vfs, "t"),
        Err(Error::BadHeader { .. })
    ));
}

#[test]
fn compaction_keeps_ids_and_shrinks_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open_dir(dir.path()).unwrap();
    let db = env.create_db("c", DbOptions::default()).unwrap();
    let mut b = Batch::new();
    for i in 0..3000 {
        b.insert(Kind::Json, json(i));
    }
    db.commit(&b).unwrap();
    // one commit per delete (2,000 commits in the log), buffered: each a durable
    // commit of its own cost an fdatasync, 6-8 s of this suite on a shared disk
    let buffered = Some(Durability::Periodic(Duration::from_secs(1)));
    for id in (1..=3000).filter(|i| i % 3 != 0) {
        let mut d = Batch::new();
        d.delete(id);
        db.commit_with(&d, buffered).unwrap();
    }
    let reader = {
        let db = db.clone();
        std::thread::spawn(move || {
            for round in 0..20 {
                for id in (3..=3000).step_by(3 * (round % 5 + 1)) {
                    assert_eq!(db.get(id).unwrap().unwrap().data, json(id - 1));
                }
            }
        })
    };
    let (before, after) = db.compact().unwrap();
    reader.join().unwrap();
    assert!(after * 2 < before, "{before} -> {after}");
    assert_eq!(db.len(), 1000);
    let id = db.insert(Kind::Raw, b"new").unwrap();
    assert_eq!(id, 3001);
    env.close("c");
    drop(db);
    let db = env.db("c").unwrap();
    assert_eq!(db.len(), 1001);
    assert_eq!(db.get(2997).unwrap().unwrap().data, json(2996));
    assert!(db.get(2999).unwrap().is_none());
    assert_eq!(db.get(3001).unwrap().unwrap().data, b"new");
    assert!(!dir.path().join("c.zdb.tmp").exists());
}

#[test]
fn compaction_with_concurrent_writers() {
    let (_m, vfs) = mem();
    let db = Database::create(
        vfs.clone(),
        "t",
        DbOptions {
            durability: Durability::PERIODIC_1S,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..2000 {
        db.insert(Kind::Json, &json(i)).unwrap();
    }
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            for i in 0..2000 {
                ids.push(db.insert(Kind::Json, &json(10_000 + i)).unwrap());
                if i % 2 == 0 {
                    db.delete(i + 1).unwrap();
                }
            }
            ids
        })
    };
    db.compact().unwrap();
    let ids = writer.join().unwrap();
    db.compact().unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(db.get(*id).unwrap().unwrap().data, json(10_000 + i as u64));
    }
    let n = db.len();
    db.sync().unwrap();
    drop(db);
    let db = Database::open(vfs, "t").unwrap();
    assert_eq!(db.len(), n);
    assert_eq!(n, 3000);
}

#[test]
fn lz4_cache_and_idle_eviction() {
    let (_m, vfs) = mem();
    let opts = DbOptions {
        compress: true,
        idle_evict: Duration::from_millis(50),
        ..Default::default()
    };
    let db = Database::create(vfs.clone(), "z", opts).unwrap();
    let big = "abcdefgh".repeat(1000).into_bytes();
    let id = db.insert(Kind::Raw, &big).unwrap();
    assert!(
        db.stats().file_bytes < 2000,
        "compressed: {}",
        db.stats().file_bytes
    );
    assert!(db.cache_bytes() > 0);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(db.cache_bytes(), 0, "idle eviction");
    assert_eq!(db.get(id).unwrap().unwrap().data, big);
    let mut r = db.open_value(id).unwrap().unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut out).unwrap();
    assert_eq!(out, big);
    drop(db);
    let db = Database::open(vfs, "z").unwrap();
    assert!(db.options().compress, "compression setting is stored");
    assert_eq!(db.get(id).unwrap().unwrap().data, big);
}

#[test]
fn cache_respects_budget() {
    let (_m, vfs) = mem();
    let db = Database::create(
        vfs,
        "c",
        DbOptions {
            cache_bytes: 64 * 1024,
            ..Default::default()
        },
    )
    .unwrap();
    let mut b = Batch::new();
    for _ in 0..2000 {
        b.insert(Kind::Raw, vec![7u8; 200]);
    }
    db.commit(&b).unwrap();
    for id in 1..=2000 {
        db.get(id).unwrap();
    }
    assert!(db.cache_bytes() <= 64 * 1024, "{}", db.cache_bytes());
}

#[test]
fn streamed_large_value() {
    let (_m, vfs) = mem();
    let db = Database::create(
        vfs.clone(),
        "s",
        DbOptions {
            max_value: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let len = 3 * (1 << 20) + 5;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let id = db
        .insert_stream(Kind::Raw, &mut &data[..], len as u64)
        .unwrap();
    assert!(matches!(db.get(id), Err(Error::TooLarge { .. })));
    let mut out = Vec::new();
    let mut r = db.open_value(id).unwrap().unwrap();
    assert_eq!(r.len(), len as u64);
    std::io::Read::read_to_end(&mut r, &mut out).unwrap();
    assert!(out == data);
    db.insert(Kind::Raw, b"small").unwrap();
    db.compact().unwrap();
    drop(db);
    let db = Database::open(vfs, "s").unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut db.open_value(id).unwrap().unwrap(), &mut out).unwrap();
    assert!(out == data);
}

#[test]
fn secondary_index_narrows_queries_and_survives_reopen() {
    let (_m, vfs) = mem();
    let db = Database::create(vfs.clone(), "i", DbOptions::default()).unwrap();
    let mut b = Batch::new();
    for i in 0..500 {
        b.insert(Kind::Json, json(i));
    }
    db.commit(&b).unwrap();
    db.create_index("age").unwrap();
    db.update(1, Kind::Json, br#"{"age":7}"#).unwrap(); // age 0 -> 7
    let ids = db
        .index_lookup(
            "age",
            Bound::Included(&FieldValue::Int(7)),
            Bound::Included(&FieldValue::Int(7)),
        )
        .unwrap();
    assert_eq!(ids.len(), 11);
    assert_eq!(ids[0], 1);
    drop(db);
    let db = Database::open(vfs, "i").unwrap();
    assert_eq!(db.indexes(), vec!["age".to_string()]);
    let hint = IndexHint {
        field: "age".into(),
        lo: Bound::Excluded(FieldValue::Int(47)),
        hi: Bound::Unbounded,
    };
    let mut h = db.query(Query::all().use_index(hint)).unwrap();
    let mut got = Vec::new();
    for b in h.by_ref() {
        got.extend(b.unwrap());
    }
    assert!(h.progress().used_index);
    assert_eq!(got.len(), 20);
    assert!(got
        .iter()
        .all(|r| r.as_ref().field("age").and_then(|v| v.as_f64()).unwrap() > 47.0));
    assert_eq!(h.progress().scanned, 20);
}

#[test]
fn query_order_limit_reverse_pause_stop() {
    let db = json_db("q", 10_000);
    let q = |r: &RecordRef<'_>| r.field("age") == Some(FieldValue::Int(3));
    let all = db
        .query(Query::filter(q).chunk_size(100).threads(4))
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "in order");
    let rev = db
        .query(Query::filter(q).reverse(true).limit(5).chunk_size(64))
        .unwrap()
        .collect_all()
        .unwrap();
    let want: Vec<u64> = all.iter().rev().take(5).map(|r| r.id).collect();
    assert_eq!(rev.iter().map(|r| r.id).collect::<Vec<_>>(), want);

    let mut h = db.query(Query::all().chunk_size(10).threads(2)).unwrap();
    let first = h.next_batch().unwrap().unwrap();
    assert_eq!(first[0].id, 1);
    h.pause();
    std::thread::sleep(Duration::from_millis(30));
    let p1 = h.progress().scanned;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.progress().scanned, p1, "paused workers do not scan");
    assert!(p1 < 10_000);
    h.resume();
    let second = h.next_batch().unwrap().unwrap();
    assert_eq!(second[0].id, 11);
    h.stop();
    assert!(h.next_batch().is_none());
}

/// `Query::packed`: the workers encode the matches themselves, one buffer per
/// work unit, in the same order as the owned records of the same query.
#[test]
fn packed_queries_hold_the_same_records_in_the_same_order() {
    let db = json_db("p", 3_000);
    db.delete(7).unwrap();
    let pack: PackFn = Arc::new(|r: &RecordRef<'_>, out: &mut Vec<u8>| {
        out.extend_from_slice(&r.id.to_le_bytes());
        out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        out.extend_from_slice(r.data);
    });
    let unpack = |batches: Vec<Record>| {
        let mut v = Vec::new();
        for unit in batches {
            let (mut rest, mut n) = (&unit.data[..], 0u64);
            while !rest.is_empty() {
                let id = u64::from_le_bytes(rest[..8].try_into().unwrap());
                let len = u32::from_le_bytes(rest[8..12].try_into().unwrap()) as usize;
                v.push((id, rest[12..12 + len].to_vec()));
                rest = &rest[12 + len..];
                n += 1;
            }
            assert_eq!(unit.id, n, "a unit's id counts its records");
        }
        v
    };
    let q = |r: &RecordRef<'_>| r.field("age") != Some(FieldValue::Int(3));
    for reverse in [false, true] {
        let owned: Vec<(u64, Vec<u8>)> = db
            .query(Query::filter(q).reverse(reverse).chunk_size(97).threads(3))
            .unwrap()
            .collect_all()
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.data))
            .collect();
        assert_eq!(owned.len(), 3_000 - 1 - 60);
        let packed = db
            .query(
                Query::filter(q)
                    .reverse(reverse)
                    .chunk_size(97)
                    .threads(3)
                    .packed(pack.clone()),
            )
            .unwrap()
            .collect_all()
            .unwrap();
        assert!(packed.len() <= 3_000 / 97 + 1, "one record per work unit");
        assert_eq!(unpack(packed), owned, "reverse {reverse}");
    }
    assert!(db.query(Query::all().packed(pack).limit(3)).is_err());
}

#[test]
fn cursor_both_ways_and_store_object() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open_dir(dir.path()).unwrap();
    let store: Arc<dyn Store> = Arc::new(env);
    store.create("a", DbOptions::default()).unwrap();
    for i in 0..5u64 {
        store.insert("a", Kind::Raw, &i.to_le_bytes()).unwrap();
    }
    store.delete("a", 3).unwrap();
    assert_eq!(store.list().unwrap(), vec!["a".to_string()]);
    // a second Env on the directory cannot open "a" while the first one has it open
    let env = Env::open_dir(dir.path()).unwrap();
    assert!(matches!(env.db("a"), Err(Error::Locked { .. })));
    drop(store);
    let db = env.db("a").unwrap();
    let fwd: Vec<u64> = db.cursor(1, false).map(|r| r.unwrap().id).collect();
    assert_eq!(fwd, vec![1, 2, 4, 5]);
    let back: Vec<u64> = db.cursor(u64::MAX, true).map(|r| r.unwrap().id).collect();
    assert_eq!(back, vec![5, 4, 2, 1]);
    env.copy_db("a", "b").unwrap();
    env.db("b")
        .unwrap()
        .insert(Kind::Raw, b"only in b")
        .unwrap();
    env.replace_db("a", "b").unwrap();
    assert_eq!(env.list_dbs().unwrap(), vec!["a".to_string()]);
    let a = env.db("a").unwrap();
    assert_eq!(a.len(), 5);
    assert_eq!(a.get(6).unwrap().unwrap().data, b"only in b");
    env.remove_db("a").unwrap();
    assert!(env.list_dbs().unwrap().is_empty());
}

#[test]
fn injected_faults_poison_and_reopen_is_consistent() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "f", DbOptions::default()).unwrap();
    let a = db.insert(Kind::Raw, b"before").unwrap();
    m.set_faults(vec![Fault {
        at_op: 0,
        kind: FaultKind::ShortWrite(10),
    }]);
    assert!(db.insert(Kind::Raw, b"torn write").is_err());
    assert!(db.is_poisoned());
    assert!(matches!(db.insert(Kind::Raw, b"x"), Err(Error::Poisoned)));
    assert_eq!(db.get(a).unwrap().unwrap().data, b"before");
    db.abandon();
    m.crash(3);
    let db = Database::open(vfs.clone(), "f").unwrap();
    assert_eq!(db.len(), 1);
    // the first fsync fails, whatever number its operation has (a sync fault at a
    // write operation does nothing)
    m.set_faults(
        (0..4)
            .map(|at_op| Fault {
                at_op,
                kind: FaultKind::SyncError,
            })
            .collect(),
    );
    assert!(db.insert(Kind::Raw, b"unsynced").is_err());
    db.abandon();
    m.crash(4);
    let db = Database::open(vfs, "f").unwrap();
    assert_eq!(db.get(a).unwrap().unwrap().data, b"before");
    assert!(db.len() <= 2);
}

#[test]
fn expression_queries_over_json_kv_and_dataframe_use_the_index() {
    let (_m, vfs) = mem();
    let db = Database::create(vfs, "e", DbOptions::default()).unwrap();
    let mut b = Batch::new();
    for i in 0..300u64 {
        b.insert(Kind::Json, json(i));
    }
    let kv = encode_kv(&[
        ("name".into(), FieldValue::Str("bob".into())),
        ("age".into(), FieldValue::Int(44)),
    ])
    .unwrap();
    b.insert(Kind::KeyValue, kv);
    let df = zs_wire::DataFrame::new().with("bob").with(45u32);
    b.insert(Kind::DataFrame, encode_dataframe(&df));
    db.commit(&b).unwrap();
    let got = db
        .query(Query::expr("age > 40 and name = 'user42'").unwrap())
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![43]);
    let got = db
        .query(Query::expr("age >= 42 and age <= 43").unwrap())
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(got.len(), 12);
    let bob = db
        .query(Query::expr("name = 'bob' and age > 40").unwrap())
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(bob.iter().map(|r| r.id).collect::<Vec<_>>(), vec![301]);
    let frames = db
        .query(Query::expr("f0 = 'bob' and f1 > 40").unwrap())
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(frames.iter().map(|r| r.id).collect::<Vec<_>>(), vec![302]);
    db.create_index("age").unwrap();
    let mut h = db
        .query(Query::expr("age = 44 and name = 'bob'").unwrap())
        .unwrap();
    let ids: Vec<u64> = h.by_ref().flat_map(|b| b.unwrap()).map(|r| r.id).collect();
    assert_eq!(ids, vec![301]);
    let p = h.progress();
    assert!(p.used_index);
    assert_eq!(
        p.scanned, 7,
        "6 JSON records with age 44 plus the kv record"
    );
}

#[test]
fn zero_tail_is_the_end_of_the_log() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    for i in 0..10u8 {
        db.insert(Kind::Raw, &[i; 20]).unwrap();
    }
    let end = db.stats().file_bytes as usize;
    let physical = m.read_file("t.zdb").unwrap();
    assert!(physical.len() > end, "small commits preallocate room");
    assert!(physical[end..].iter().all(|&b| b == 0));
    db.abandon(); // a crash: the zero tail stays
    let db = Database::open(vfs.clone(), "t").unwrap();
    assert_eq!(db.len(), 10);
    assert_eq!(db.open_report().truncated_bytes, 0);
    assert!(db.open_report().corrupt.is_empty());
    assert_eq!(m.read_file("t.zdb").unwrap().len(), physical.len());
    // the room is reused in place
    let id = db.insert(Kind::Raw, b"after").unwrap();
    assert_eq!(m.read_file("t.zdb").unwrap().len(), physical.len());
    drop(db); // a clean close trims the room
    assert_eq!(m.read_file("t.zdb").unwrap().len(), end + 40);
    let db = Database::open(vfs, "t").unwrap();
    assert_eq!(db.get(id).unwrap().unwrap().data, b"after");
    assert_eq!(db.len(), 11);
}

#[test]
fn torn_commit_inside_the_zero_tail_is_cut() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    for i in 0..5u8 {
        db.insert(Kind::Raw, &[i; 20]).unwrap();
    }
    let end = db.stats().file_bytes as usize;
    db.abandon();
    let mut bytes = m.read_file("t.zdb").unwrap();
    bytes[end + 4] = 1; // half a frame header in the room: a torn write
    bytes[end + 100] = 7; // and a stray byte further on
    m.write_file("t.zdb", &bytes);
    let db = Database::open(vfs.clone(), "t").unwrap();
    assert_eq!(db.len(), 5);
    assert_eq!(db.open_report().truncated_bytes as usize, bytes.len() - end);
    assert_eq!(m.read_file("t.zdb").unwrap().len(), end);
    db.insert(Kind::Raw, b"next").unwrap();
    db.abandon();
    let db = Database::open(vfs, "t").unwrap();
    assert_eq!(db.len(), 6);
    assert!(db.open_report().corrupt.is_empty());
}

#[test]
fn concurrent_committers_apply_in_log_order() {
    for dir in [None, Some(tempfile::tempdir().unwrap())] {
        let vfs: Arc<dyn Vfs> = match &dir {
            None => Arc::new(MemVfs::new()),
            Some(d) => Arc::new(DirVfs::new(d.path()).unwrap()),
        };
        let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
        let ids: Vec<u64> = (0..32u8)
            .map(|i| db.insert(Kind::Raw, &[i]).unwrap())
            .collect();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let db = db.clone();
                let ids = &ids;
                s.spawn(move || {
                    for round in 0..60usize {
                        let id = ids[(round * 7 + t as usize * 13) % ids.len()];
                        match round % 3 {
                            0 => match db.update(id, Kind::Raw, &[t, round as u8]) {
                                Ok(()) | Err(Error::NotFound(_)) => {}
                                Err(e) => panic!("{e}"),
                            },
                            1 => {
                                db.delete(id).unwrap();
                            }
                            _ => {
                                let new = db.insert(Kind::Raw, &[t, 0xEE]).unwrap();
                                // visible to its writer as soon as the commit returns
                                assert_eq!(db.get(new).unwrap().unwrap().data, [t, 0xEE]);
                            }
                        }
                    }
                });
            }
        });
        // what the engine holds in memory is what the log replays to
        let live: Vec<(u64, Vec<u8>)> = db
            .cursor(1, false)
            .map(|r| r.unwrap())
            .map(|r| (r.id, r.data))
            .collect();
        assert_eq!(live.len() as u64, db.len());
        assert_eq!(
            live.iter().filter(|r| r.1.get(1) == Some(&0xEE)).count(),
            80
        );
        db.abandon();
        let db = Database::open(vfs, "t").unwrap();
        let again: Vec<(u64, Vec<u8>)> = db
            .cursor(1, false)
            .map(|r| r.unwrap())
            .map(|r| (r.id, r.data))
            .collect();
        assert_eq!(live, again);
        assert!(db.open_report().corrupt.is_empty());
    }
}

#[test]
fn frame_with_its_padding_cut_is_a_torn_tail() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    db.insert(Kind::Raw, b"kept").unwrap();
    let mid = db.stats().file_bytes as usize;
    db.insert(Kind::Raw, b"12345").unwrap(); // 37 bytes + 3 of padding
    let end = db.stats().file_bytes as usize;
    drop(db);
    let bytes = m.read_file("t.zdb").unwrap();
    assert_eq!(bytes.len(), end);
    m.write_file("t.zdb", &bytes[..end - 2]); // the crash tore the write in the padding
    let db = Database::open(vfs, "t").unwrap();
    assert_eq!(db.len(), 1);
    assert_eq!(db.open_report().truncated_bytes as usize, end - 2 - mid);
    assert_eq!(m.read_file("t.zdb").unwrap().len(), mid);
}

/// A per-commit `Periodic` override on an `Immediate` database is flushed and synced
/// by its deadline, not only when a later Immediate commit or a close comes along.
#[test]
fn periodic_override_on_immediate_database_is_synced_by_its_deadline() {
    let (m, vfs) = mem();
    let db = Database::create(vfs.clone(), "t", DbOptions::default()).unwrap();
    db.insert(Kind::Raw, b"first").unwrap();
    let mut b = Batch::new();
    b.insert(Kind::Raw, b"periodic-override-marker".to_vec());
    let ids = db
        .commit_with(&b, Some(Durability::Periodic(Duration::from_millis(30))))
        .unwrap();
    // the maintenance thread writes it out (nothing else writes to the file now)
    let t = std::time::Instant::now();
    let has = |m: &MemVfs| {
        let f = m.read_file("t.zdb").unwrap();
        f.windows(24).any(|w| w == b"periodic-override-marker")
    };
    while !has(&m) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the overridden commit was never written"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // the write and its fsync happen in one flush; leave it time to finish
    std::thread::sleep(Duration::from_millis(200));
    db.abandon(); // no final flush
    m.crash(3);
    let db = Database::open(vfs, "t").unwrap();
    assert_eq!(db.len(), 2);
    assert_eq!(
        db.get(ids[0]).unwrap().unwrap().data,
        b"periodic-override-marker"
    );
}
