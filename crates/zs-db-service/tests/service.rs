//! The DB service end to end over encrypted loopback connections.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::code;
use zs_db::{encode_kv, FieldValue, Kind};
use zs_db_service::proto::errcode;
use zs_db_service::{Durability, Param, QuerySpec, Range, ServiceConfig};

fn json(i: u64) -> Vec<u8> {
    common::json_record(i, 40)
}

fn fill(db: &zs_db_service::DbClient, name: &str, n: u64) {
    db.open(name, true).unwrap();
    let mut fp = db.fastpost(name, Default::default()).unwrap();
    for i in 1..=n {
        fp.post(Kind::Json, &json(i)).unwrap();
    }
    fp.flush().unwrap();
}

#[test]
fn databases_open_list_copy_compact_remove() {
    let f = common::start(ServiceConfig::default());
    let db = f.client();
    db.open("a", true).unwrap();
    db.insert("a", Kind::Raw, b"one", Durability::Durable)
        .unwrap();
    let two = db
        .insert("a", Kind::Raw, b"two", Durability::Durable)
        .unwrap();
    assert!(db.delete("a", two, Durability::Durable).unwrap());
    assert_eq!(db.list().unwrap(), vec!["a".to_string()]); // the marks db is hidden
    db.copy("a", "b").unwrap();
    assert_eq!(db.list().unwrap(), vec!["a".to_string(), "b".to_string()]);
    assert_eq!(db.get("b", 1).unwrap().unwrap().data, b"one");
    assert_eq!(code(db.copy("a", "b")), errcode::EXISTS);
    let (before, after) = db.compact("a").unwrap();
    assert!(after < before, "{before} -> {after}");
    db.close_db("a").unwrap();
    assert_eq!(db.get("a", 1).unwrap().unwrap().data, b"one"); // reopened on use
    db.remove("b").unwrap();
    assert_eq!(db.list().unwrap(), vec!["a".to_string()]);
    // unknown databases and names that could escape the directory
    assert_eq!(code(db.open("nope", false)), errcode::NOT_FOUND);
    assert_eq!(code(db.get("nope", 1)), errcode::NOT_FOUND);
    for bad in ["../etc", "a/b", "", ".hidden", "x\0y", &"n".repeat(65)] {
        assert_eq!(code(db.open(bad, true)), errcode::BAD_REQUEST, "{bad:?}");
    }
    assert_eq!(code(db.open("__zs_fastpost", false)), errcode::FORBIDDEN);
    assert_eq!(code(db.remove("__zs_fastpost")), errcode::FORBIDDEN);
    assert!(!f.dir.path().join("etc.zdb").exists());
}

#[test]
fn records_of_every_kind_with_both_durabilities() {
    let f = common::start(ServiceConfig::default());
    let db = f.client();
    db.open("r", true).unwrap();
    let kv = encode_kv(&[("k".into(), FieldValue::Int(5))]).unwrap();
    let df = zs_db::encode_dataframe(&zs_wire::DataFrame::new().with(3i64));
    let values: Vec<(Kind, Vec<u8>)> = vec![
        (Kind::Raw, vec![0, 1, 2, 255]),
        (Kind::Json, br#"{"a":1}"#.to_vec()),
        (Kind::KeyValue, kv),
        (Kind::DataFrame, df),
    ];
    let mut ids = Vec::new();
    for (i, (k, v)) in values.iter().enumerate() {
        let d = if i % 2 == 0 {
            Durability::Durable
        } else {
            Durability::Written
        };
        ids.push(db.insert("r", *k, v, d).unwrap());
    }
    for (id, (k, v)) in ids.iter().zip(&values) {
        let r = db.get("r", *id).unwrap().unwrap();
        assert_eq!((r.kind, &r.data), (*k, v));
    }
    db.update("r", ids[0], Kind::Json, br#"{"a":2}"#, Durability::Written)
        .unwrap();
    assert_eq!(db.get("r", ids[0]).unwrap().unwrap().data, br#"{"a":2}"#);
    assert!(db.delete("r", ids[1], Durability::Durable).unwrap());
    assert!(db.get("r", ids[1]).unwrap().is_none());
    // bad ids
    assert!(!db.delete("r", ids[1], Durability::Durable).unwrap());
    assert!(db.get("r", 0).unwrap().is_none());
    assert!(db.get("r", u64::MAX).unwrap().is_none());
    assert_eq!(
        code(db.update("r", 999, Kind::Raw, b"x", Durability::Durable)),
        errcode::NOT_FOUND
    );
    // Written is synced by the group commit: the file holds it soon after
    std::thread::sleep(Duration::from_millis(100));
    drop(db);
    drop(f.server);
    drop(f.service);
    drop(f.backend);
    std::thread::sleep(Duration::from_millis(100));
    let env = zs_db::Env::open_dir(f.dir.path()).unwrap();
    let d = env.db("r").unwrap();
    assert_eq!(d.get(ids[0]).unwrap().unwrap().data, br#"{"a":2}"#);
    assert_eq!(d.len(), 3);
}

/// The event-loop GETs: `get_then` (an owned record), `get_with` and `get_to`
/// (the record lent from the received bytes), hits, misses and refusals alike.
#[test]
fn event_loop_gets_owned_borrowed_and_through_a_shared_sink() {
    use std::sync::mpsc;
    let f = common::start(ServiceConfig::default());
    let db = f.client();
    db.open("kv", true).unwrap();
    let mut ids = Vec::new();
    for i in 0..40u64 {
        let data = format!("value-{i}").into_bytes();
        ids.push(
            db.insert("kv", Kind::Raw, &data, Durability::Written)
                .unwrap(),
        );
    }
    type Got = (u64, Result<Option<(u64, Vec<u8>)>, u32>);
    fn seen(tag: u64, r: zs_db_service::Result<Option<zs_db::RecordRef<'_>>>) -> Got {
        let r = match r {
            Ok(rec) => Ok(rec.map(|r| (r.id, r.data.to_vec()))),
            Err(zs_db_service::Error::Refused { code, .. }) => Err(code),
            Err(e) => panic!("{e}"),
        };
        (tag, r)
    }
    let want = |tag: u64| -> Got {
        if tag == 0 {
            return (0, Err(errcode::NOT_FOUND)); // the unknown database
        }
        let found = ids
            .contains(&tag)
            .then(|| (tag, format!("value-{}", tag - ids[0]).into_bytes()));
        (tag, Ok(found))
    };
    // every GET in flight at once through one sink; the ids of the last ten
    // do not exist
    let (tx, rx) = mpsc::channel::<Got>();
    let tx = std::sync::Mutex::new(tx);
    let sink = db.get_sink(move |tag, r| tx.lock().unwrap().send(seen(tag, r)).unwrap());
    let asked: Vec<u64> = (ids[0]..ids[0] + 50).collect();
    for &id in &asked {
        db.get_to("kv", id, &sink, id);
    }
    db.get_to("nope", 1, &sink, 0);
    let mut got: Vec<Got> = (0..=asked.len())
        .map(|_| rx.recv_timeout(Duration::from_secs(20)).unwrap())
        .collect();
    got.sort_by_key(|g| g.0);
    let expected: Vec<Got> = std::iter::once(0)
        .chain(asked.iter().copied())
        .map(want)
        .collect();
    assert_eq!(got, expected);
    // one at a time, borrowed and owned
    let (tx, rx) = mpsc::channel::<Got>();
    for id in [ids[3], ids[39] + 1] {
        let tx1 = tx.clone();
        db.get_with("kv", id, move |r| tx1.send(seen(id, r)).unwrap());
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), want(id));
        let tx = tx.clone();
        db.get_then("kv", id, move |r| {
            let r = r
                .map(|o| o.map(|rec| (rec.id, rec.data)))
                .map_err(|e| match e {
                    zs_db_service::Error::Refused { code, .. } => code,
                    e => panic!("{e}"),
                });
            tx.send((id, r)).unwrap()
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), want(id));
    }
}

fn ids_of(db: &zs_db_service::DbClient, spec: QuerySpec) -> Vec<u64> {
    db.query(spec)
        .unwrap()
        .collect_all()
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

#[test]
fn range_scans_by_id_and_by_index_with_limit_and_reverse() {
    let f = common::start(ServiceConfig::default());
    let db = f.client();
    fill(&db, "s", 500);
    let mut q = QuerySpec::new("s");
    q.range = Range::Ids { lo: 100, hi: 120 };
    assert_eq!(ids_of(&db, q.clone()), (100..=120).collect::<Vec<_>>());
    q.reverse = true;
    q.limit = 5;
    assert_eq!(ids_of(&db, q.clone()), vec![120, 119, 118, 117, 116]);
    q.range = Range::Ids { lo: 10, hi: 5 };
    assert!(ids_of(&db, q).is_empty());
    // secondary index on n
    assert_eq!(
        code(db.query({
            let mut q = QuerySpec::new("s");
            q.range = Range::Index {
                field: "n".into(),
                lo: None,
                hi: None,
            };
            q
        })),
        errcode::NOT_FOUND
    );
    db.create_index("s", "n").unwrap();
    let mut q = QuerySpec::new("s");
    q.range = Range::Index {
        field: "n".into(),
        lo: Some(Param::Int(490)),
        hi: Some(Param::Int(495)),
    };
    assert_eq!(ids_of(&db, q.clone()), (490..=495).collect::<Vec<_>>());
    q.filter = "group = 'g2'".into();
    assert_eq!(ids_of(&db, q), vec![492]);
}

#[test]
fn filters_with_parameters_and_registered_functions() {
    let f = common::start(ServiceConfig::default());
    f.service.register_filter("multiple_of", |r, params| {
        let Some(Param::Int(m)) = params.iter().find(|p| p.0 == "m").map(|p| p.1.clone()) else {
            return false;
        };
        r.field("n")
            .and_then(|v| v.as_f64())
            .is_some_and(|n| (n as i64) % m == 0)
    });
    let db = f.client();
    fill(&db, "f", 300);
    let mut q = QuerySpec::new("f");
    q.filter = "n > param_lo and n <= param_hi".into();
    q.params = vec![("lo".into(), Param::Int(10)), ("hi".into(), Param::Int(20))];
    assert_eq!(ids_of(&db, q.clone()), (11..=20).collect::<Vec<_>>());
    q.function = "multiple_of".into();
    q.params.push(("m".into(), Param::Int(5)));
    assert_eq!(ids_of(&db, q.clone()), vec![15, 20]);
    // refusals: unknown function, unknown parameter, bad expression, unknown db
    q.function = "nope".into();
    assert_eq!(code(db.query(q.clone())), errcode::NOT_FOUND);
    let mut q = QuerySpec::new("f");
    q.filter = "n > param_missing".into();
    assert_eq!(code(db.query(q.clone())), errcode::BAD_REQUEST);
    q.filter = "n > > 3".into();
    assert_eq!(code(db.query(q.clone())), errcode::BAD_REQUEST);
    assert_eq!(code(db.query(QuerySpec::new("nope"))), errcode::NOT_FOUND);
}

// pause/resume/stop/progress of a running scan: tests/scan_1m.rs (1 M records)

#[test]
fn a_reader_that_never_reads_pauses_the_scan_with_bounded_memory() {
    let f = common::start(ServiceConfig {
        scan_threads: 1,
        ..ServiceConfig::default()
    });
    let db = f.client();
    fill(&db, "slow", 20_000);
    let mut spec = QuerySpec::new("slow");
    spec.batch_bytes = 2048;
    spec.window = 2;
    let q = db.query(spec).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let p = q.progress().unwrap();
    // at most window batches in flight (2 × 2 KiB), and the scan waits
    assert_eq!(p.in_flight, 2);
    assert!(!p.done);
    // the window in flight, the engine's queue of work units (5 per scan thread)
    // and the batches between engine and socket (3), each about one batch of
    // 2 KiB of records (the records are over 60 B): nowhere near all 20,000
    let batches = 2 + 5 + 3;
    assert!(p.matched <= batches * (2048 / 60 + 1), "{p:?}");
    assert!(p.scanned <= batches * (2048 / 60 + 1), "{p:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(q.progress().unwrap().scanned, p.scanned);
    drop(q); // stops it on the server
    let t = Instant::now();
    while f.service.running_queries() > 0 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn several_queries_at_once_on_one_connection_and_the_per_connection_cap() {
    let cfg = ServiceConfig {
        max_queries_per_conn: 3,
        ..ServiceConfig::default()
    };
    let f = common::start(cfg);
    let db = f.client();
    fill(&db, "m", 3000);
    let mut qs: Vec<_> = (0..3u64)
        .map(|i| {
            let mut s = QuerySpec::new("m");
            s.filter = format!("n % 3 = {i}");
            s.batch_bytes = 1024;
            s.window = 1;
            db.query(s).unwrap()
        })
        .collect();
    // a fourth is refused while three run
    assert_eq!(code(db.query(QuerySpec::new("m"))), errcode::LIMIT);
    let mut got = vec![Vec::new(); 3];
    let mut live = 3;
    while live > 0 {
        live = 0;
        for (i, q) in qs.iter_mut().enumerate() {
            if let Some(b) = q.next_batch() {
                got[i].extend(b.unwrap().into_iter().map(|r| r.id));
                live += 1;
            }
        }
    }
    for (i, ids) in got.iter().enumerate() {
        let want: Vec<u64> = (1..=3000).filter(|n| n % 3 == i as u64).collect();
        assert_eq!(ids, &want);
    }
    // others' connections are not counted against this one
    let other = f.client();
    assert!(
        other
            .query(QuerySpec::new("m"))
            .unwrap()
            .collect_all()
            .unwrap()
            .len()
            == 3000
    );
}

#[test]
fn hostile_requests_are_refused_and_bad_one_way_messages_disconnect() {
    let f = common::start(ServiceConfig::default());
    let db = f.client();
    db.open("h", true).unwrap();
    db.insert("h", Kind::Json, br#"{"n":1}"#, Durability::Durable)
        .unwrap();
    // a filter over the size limit is refused before it is parsed
    let mut q = QuerySpec::new("h");
    q.filter = format!("n = {}", "1 + ".repeat(20_000));
    assert_eq!(code(db.query(q)), errcode::BAD_REQUEST);
    // a deeply nested one within the limit: an error, not a crash
    let mut q = QuerySpec::new("h");
    q.filter = format!("{}1{}", "(".repeat(8000), ")".repeat(8000));
    let _ = db.query(q).map(|q| q.collect_all());
    assert_eq!(
        db.get("h", 1).unwrap().unwrap().id,
        1,
        "server still answers"
    );
    // malformed payloads
    let conn = db.connection();
    let bad = zs_wire::DataFrame::new().with(vec![0xEEu8, 1, 2]);
    match conn
        .call_stream(zs_db_service::proto::cmd::REQUEST, bad)
        .wait()
    {
        Err(zs_core::Error::Remote { code, .. }) => assert_eq!(code, errcode::BAD_REQUEST),
        other => panic!("{other:?}"),
    }
    let truncated = zs_wire::DataFrame::new().with(vec![0x10u8, 5, 0, b'h']);
    assert!(conn
        .call_stream(zs_db_service::proto::cmd::REQUEST, truncated)
        .wait()
        .is_err());
    // stats: the figures of the database, and refusals (no database, a name
    // that is no database name or a reserved one, garbled and oversized requests)
    let s = db.stats("h").unwrap();
    assert_eq!((s.records, s.next_id), (1, 2));
    assert!(
        s.file_bytes >= s.live_bytes && s.live_bytes > 7 + 8,
        "{s:?}"
    );
    assert_eq!(code(db.stats("nope")), errcode::NOT_FOUND);
    assert_eq!(code(db.stats("../h")), errcode::BAD_REQUEST);
    assert_eq!(code(db.stats(&"h".repeat(60_000))), errcode::BAD_REQUEST);
    assert_eq!(
        code(db.stats(zs_db_service::ACCESS_DB)),
        errcode::FORBIDDEN,
        "the rules' database is not the clients'"
    );
    let garbled: [&[u8]; 4] = [
        &[0x08],                      // no name
        &[0x08, 5, 0, b'h'],          // name cut short
        &[0x08, 1, 0, b'h', 0],       // a trailing byte
        &[0x08, 0xff, 0xff, b'h', 0], // a length past the end
    ];
    for g in garbled {
        let req = zs_wire::DataFrame::new().with(g.to_vec());
        match conn
            .call_stream(zs_db_service::proto::cmd::REQUEST, req)
            .wait()
        {
            Err(zs_core::Error::Remote { code, .. }) => {
                assert_eq!(code, errcode::BAD_REQUEST, "{g:?}")
            }
            other => panic!("{g:?}: {other:?}"),
        }
    }
    // a second client is unaffected by the first one's garbage one-way message
    let other = f.client();
    conn.send_complete_buffer(
        zs_db_service::proto::cmd::ONEWAY,
        bytes::Bytes::from_static(&[9, 9]),
    )
    .unwrap();
    // a stream id never opened: disconnect
    let t = Instant::now();
    while conn.is_connected() {
        assert!(t.elapsed() < Duration::from_secs(5), "not disconnected");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(other.get("h", 1).unwrap().unwrap().id, 1);
}

#[test]
fn fastpost_across_repeated_link_cuts_stores_each_record_once() {
    let f = common::start(ServiceConfig::default());
    let db = f.client();
    db.open("fp", true).unwrap();
    let mut fp = db
        .fastpost(
            "fp",
            zs_db_service::FastPostConfig {
                records_per_message: 64,
                ..Default::default()
            },
        )
        .unwrap();
    let total = 20_000u64;
    for i in 1..=total {
        let v = format!("{i:0100}");
        assert_eq!(fp.post(Kind::Raw, v.as_bytes()).unwrap(), i);
        if i % 2_000 == 0 {
            let before = db.connection().resumes();
            db.connection().drop_link();
            // every other cut: wait for the resume (the others post on while the
            // link is down; cuts close together can merge into one resume)
            if i % 4_000 == 0 {
                let t = std::time::Instant::now();
                while db.connection().resumes() == before
                    && t.elapsed() < std::time::Duration::from_secs(10)
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
    }
    fp.flush().unwrap();
    assert_eq!(fp.acked(), total);
    let all = db
        .query(QuerySpec::new("fp"))
        .unwrap()
        .collect_all()
        .unwrap();
    let mut seen: Vec<u64> = all
        .iter()
        .map(|r| std::str::from_utf8(&r.data).unwrap().parse().unwrap())
        .collect();
    assert_eq!(seen.len() as u64, total, "exactly once");
    seen.sort();
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    assert!(db.connection().resumes() >= 5);
}

#[test]
fn concurrent_fastpost_streams_share_rounds_and_store_each_record_once() {
    // four streams on one database at once, each on its own connection, one
    // connection cut on the way: the server applies their queues in shared
    // rounds (one marks commit per round) and every record lands exactly once
    let f = common::start(ServiceConfig::default());
    f.client().open("many", true).unwrap();
    let per = 3_000u64;
    std::thread::scope(|sc| {
        for w in 0..4u64 {
            let db = f.client();
            sc.spawn(move || {
                let mut fp = db
                    .fastpost(
                        "many",
                        zs_db_service::FastPostConfig {
                            records_per_message: 16,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                for i in 1..=per {
                    let v = format!("{w}:{i:08}");
                    fp.post(Kind::Raw, v.as_bytes()).unwrap();
                    if w == 1 && i == per / 2 {
                        db.connection().drop_link();
                    }
                }
                fp.flush().unwrap();
                assert_eq!(fp.acked(), per);
            });
        }
    });
    let db = f.client();
    let all = db
        .query(QuerySpec::new("many"))
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(all.len() as u64, 4 * per, "exactly once");
    // each stream's records in its order (ids follow commit order)
    for w in 0..4u64 {
        let mine: Vec<u64> = all
            .iter()
            .filter_map(|r| {
                let t = std::str::from_utf8(&r.data).unwrap();
                let (who, i) = t.split_once(':').unwrap();
                (who.parse::<u64>().unwrap() == w).then(|| i.parse().unwrap())
            })
            .collect();
        assert_eq!(mine, (1..=per).collect::<Vec<_>>(), "stream {w}");
    }
}

#[test]
fn fastpost_streams_of_one_database_share_a_round_and_its_fsync() {
    // Every fsync waits at a gate while it is closed: the first round stalls
    // in its marks commit, the other streams' messages queue meanwhile, and
    // the next round must apply them together (one marks commit, one fsync);
    // a writer per stream would apply one stream per round.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let gate = closed.clone();
    let vfs = zs_db::SyncHookVfs::new(
        Arc::new(zs_db::DirVfs::new(dir.path()).unwrap()),
        move || {
            let t = Instant::now();
            while gate.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(2));
            }
        },
    );
    let service = zs_db_service::DbService::with_env(
        zs_db::Env::with_vfs(Arc::new(vfs)),
        ServiceConfig::default(),
    )
    .unwrap();
    let backend = common::backend();
    let server = common::serve(&service, &backend, "127.0.0.1:0".parse().unwrap());
    let addr = Arc::new(std::sync::Mutex::new(server.local_addr()));
    let clients: Vec<_> = (0..4)
        .map(|_| common::connect(backend.clone(), addr.clone()))
        .collect();
    clients[0].open("g", true).unwrap();
    let cfg = zs_db_service::FastPostConfig {
        records_per_message: 16,
        ..Default::default()
    };
    let mut streams: Vec<_> = clients
        .iter()
        .map(|c| c.fastpost("g", cfg).unwrap())
        .collect();
    closed.store(true, Ordering::Release);
    std::thread::scope(|sc| {
        for (w, fp) in streams.iter_mut().enumerate() {
            sc.spawn(move || {
                for i in 0..16u64 {
                    fp.post(Kind::Raw, format!("{w}:{i}").as_bytes()).unwrap();
                }
                fp.flush().unwrap();
            });
        }
        // let every stream's message reach its queue while the gate holds
        std::thread::sleep(Duration::from_millis(1500));
        closed.store(false, Ordering::Release);
    });
    let (rounds, most) = service.fastpost_rounds();
    assert!(
        most >= 2,
        "one round applied {most} streams at most ({rounds} rounds)"
    );
    assert!(rounds <= 3, "{rounds} rounds for 4 streams");
    let all = clients[0]
        .query(QuerySpec::new("g"))
        .unwrap()
        .collect_all()
        .unwrap();
    assert_eq!(all.len(), 64);
}

#[test]
fn fastpost_streams_are_capped_per_connection() {
    let cfg = ServiceConfig {
        max_fastpost_active_per_conn: 2,
        ..ServiceConfig::default()
    };
    let f = common::start(cfg);
    let db = f.client();
    db.open("c", true).unwrap();
    let a = db.fastpost("c", Default::default()).unwrap();
    let b = db.fastpost("c", Default::default()).unwrap();
    assert_eq!(code(db.fastpost("c", Default::default())), errcode::LIMIT);
    // another connection has its own allowance; unknown databases are refused
    let other = f.client();
    let _c = other.fastpost("c", Default::default()).unwrap();
    assert_eq!(
        code(other.fastpost("nope", Default::default())),
        errcode::NOT_FOUND
    );
    drop((a, b));
}
