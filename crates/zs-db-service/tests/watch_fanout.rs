//! Watches (commit order under concurrent writers, ranges, updates and deletes)
//! and fan-out queries over three servers (ordered merge, global limit, a server
//! killed mid-query).
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use zs_db::Kind;
use zs_db_service::{
    fan_out, Change, DbClient, Durability, FanOutConfig, QuerySpec, ServiceConfig,
};

fn collect_puts(w: &mut zs_db_service::WatchStream, want: usize) -> Vec<Change> {
    let mut got = Vec::new();
    while got.len() < want {
        match w.next_timeout(Duration::from_secs(10)).unwrap() {
            Some(c) => got.extend(c),
            None => panic!("only {} of {want} changes came", got.len()),
        }
    }
    got
}

#[test]
fn watch_sees_every_commit_in_order_under_concurrent_writers() {
    let f = common::start(ServiceConfig::default());
    let db = f.client();
    db.open("w", true).unwrap();
    let mut all = db.watch("w", 1, u64::MAX).unwrap();
    let mut some = db.watch("w", 50, 60).unwrap();
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let c = f.client();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let d = if i % 2 == 0 {
                        Durability::Written
                    } else {
                        Durability::Durable
                    };
                    c.insert("w", Kind::Raw, format!("t{t}-{i}").as_bytes(), d)
                        .unwrap();
                }
            })
        })
        .collect();
    let c = f.client();
    let poster = std::thread::spawn(move || {
        let mut fp = c.fastpost("w", Default::default()).unwrap();
        for i in 0..200 {
            fp.post(Kind::Raw, format!("fp-{i}").as_bytes()).unwrap();
        }
        fp.flush().unwrap();
    });
    for w in writers {
        w.join().unwrap();
    }
    poster.join().unwrap();
    let got = collect_puts(&mut all, 500);
    let ids: Vec<u64> = got
        .iter()
        .map(|c| match c {
            Change::Put(r) => r.id,
            Change::Delete(id) => panic!("unexpected delete {id}"),
        })
        .collect();
    // inserts get ids in commit order, so commit order is ascending ids
    assert_eq!(ids, (1..=500).collect::<Vec<_>>());
    // the data is the committed data
    for c in &got {
        if let Change::Put(r) = c {
            assert_eq!(db.get("w", r.id).unwrap().unwrap().data, r.data);
        }
    }
    let ranged = collect_puts(&mut some, 11);
    assert_eq!(ranged.len(), 11);
    assert!(some
        .next_timeout(Duration::from_millis(100))
        .unwrap()
        .is_none());
    // updates and deletes, in order
    db.update("w", 55, Kind::Raw, b"new", Durability::Written)
        .unwrap();
    db.delete("w", 56, Durability::Durable).unwrap();
    db.delete("w", 400, Durability::Durable).unwrap();
    let ch = collect_puts(&mut some, 2);
    assert_eq!(
        ch[0],
        Change::Put(zs_db::Record {
            id: 55,
            kind: Kind::Raw,
            data: b"new".to_vec()
        })
    );
    assert_eq!(ch[1], Change::Delete(56));
    let ch = collect_puts(&mut all, 3);
    assert_eq!(ch[2], Change::Delete(400));
    // limits: watches per connection, unknown db
    assert_eq!(
        common::code(db.watch("nope", 1, 2)),
        zs_db_service::proto::errcode::NOT_FOUND
    );
    let many: Vec<_> = (0..14).map(|_| db.watch("w", 1, 2).unwrap()).collect();
    assert_eq!(
        common::code(db.watch("w", 1, 2)),
        zs_db_service::proto::errcode::LIMIT
    );
    drop(many);
}

fn three_servers(n: u64) -> (Vec<common::Fixture>, Vec<DbClient>) {
    let fs: Vec<_> = (0..3)
        .map(|_| common::start(ServiceConfig::default()))
        .collect();
    let cs: Vec<DbClient> = fs
        .iter()
        .map(|f| {
            common::connect(
                common::backend(),
                Arc::new(Mutex::new(f.server.local_addr())),
            )
        })
        .collect();
    for (s, c) in cs.iter().enumerate() {
        c.open("x", true).unwrap();
        let mut fp = c.fastpost("x", Default::default()).unwrap();
        for i in 1..=n {
            fp.post(Kind::Raw, format!("s{s}-{i}").as_bytes()).unwrap();
        }
        fp.flush().unwrap();
    }
    (fs, cs)
}

#[test]
fn fan_out_merges_in_key_order_with_a_global_limit() {
    let (_fs, cs) = three_servers(200);
    let mut spec = QuerySpec::new("x");
    spec.filter = "id % 2 = 0".into();
    let cfg = FanOutConfig {
        limit: 30,
        ..FanOutConfig::default()
    };
    let (got, failures) = fan_out(&cs, &spec, cfg).collect_all();
    assert!(failures.is_empty());
    let want: Vec<(usize, u64)> = (1..=10)
        .flat_map(|i| (0..3).map(move |s| (s, 2 * i)))
        .collect();
    let seen: Vec<(usize, u64)> = got.iter().map(|(s, r)| (*s, r.id)).collect();
    assert_eq!(seen, want);
    for (s, r) in &got {
        assert_eq!(r.data, format!("s{s}-{}", r.id).into_bytes());
    }
    // reverse, no limit: everything, descending
    spec.reverse = true;
    let (got, _) = fan_out(&cs, &spec, FanOutConfig::default()).collect_all();
    assert_eq!(got.len(), 300);
    assert!(got
        .windows(2)
        .all(|w| w[0].1.id > w[1].1.id || (w[0].1.id == w[1].1.id && w[0].0 < w[1].0)));
}

#[test]
fn fan_out_flags_a_server_killed_mid_query_as_partial() {
    let (mut fs, cs) = three_servers(3000);
    let mut spec = QuerySpec::new("x");
    spec.batch_bytes = 1024;
    spec.window = 1;
    let cfg = FanOutConfig {
        server_deadline: Duration::from_millis(800),
        ..FanOutConfig::default()
    };
    let mut out = fan_out(&cs, &spec, cfg);
    let mut got: Vec<(usize, u64)> = Vec::new();
    for _ in 0..300 {
        let (s, r) = out.next().unwrap();
        got.push((s, r.id));
    }
    let dead = fs.remove(2);
    dead.server.shutdown();
    drop(dead);
    for (s, r) in &mut out {
        got.push((s, r.id));
    }
    assert!(out.partial());
    assert_eq!(out.failures().len(), 1);
    assert_eq!(out.failures()[0].server, 2);
    for s in 0..2 {
        let ids: Vec<u64> = got.iter().filter(|x| x.0 == s).map(|x| x.1).collect();
        assert_eq!(ids, (1..=3000).collect::<Vec<_>>(), "server {s} complete");
    }
    let dead_ids: Vec<u64> = got.iter().filter(|x| x.0 == 2).map(|x| x.1).collect();
    assert!(dead_ids.len() < 3000);
    assert_eq!(
        dead_ids,
        (1..=dead_ids.len() as u64).collect::<Vec<_>>(),
        "a prefix"
    );
    // merged order held throughout
    assert!(got.windows(2).all(|w| (w[0].1, w[0].0) < (w[1].1, w[1].0)));
}

fn score(s: usize, i: u64) -> i64 {
    ((i * 7919 + s as u64 * 13) % 1000) as i64
}

/// Three servers with `n` JSON records `{"score": …}` each.
fn three_scored_servers(n: u64) -> (Vec<common::Fixture>, Vec<DbClient>) {
    let fs: Vec<_> = (0..3)
        .map(|_| common::start(ServiceConfig::default()))
        .collect();
    let cs: Vec<DbClient> = fs
        .iter()
        .map(|f| {
            common::connect(
                common::backend(),
                Arc::new(Mutex::new(f.server.local_addr())),
            )
        })
        .collect();
    for (s, c) in cs.iter().enumerate() {
        c.open("x", true).unwrap();
        let mut fp = c.fastpost("x", Default::default()).unwrap();
        for i in 1..=n {
            fp.post(
                Kind::Json,
                format!(r#"{{"score":{}}}"#, score(s, i)).as_bytes(),
            )
            .unwrap();
        }
        fp.flush().unwrap();
    }
    (fs, cs)
}

/// (server, id) in merged order: score descending, then id, then server.
fn sorted_desc(servers: &[usize], n: u64) -> Vec<(usize, u64)> {
    let mut all: Vec<(i64, u64, usize)> = servers
        .iter()
        .flat_map(|&s| (1..=n).map(move |i| (score(s, i), i, s)))
        .collect();
    all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    all.into_iter().map(|(_, i, s)| (s, i)).collect()
}

#[test]
fn fan_out_merges_by_a_sort_expression_with_a_global_limit_and_a_server_killed_mid_query() {
    let n = 3000;
    let (mut fs, cs) = three_scored_servers(n);
    // one server: a sorted query needs a limit, and a sort key that compiles
    let mut one = QuerySpec::new("x");
    one.sort = "score".into();
    assert_eq!(
        common::code(cs[0].query(one.clone())),
        zs_db_service::proto::errcode::BAD_REQUEST
    );
    one.limit = 5;
    one.sort = "score +".into();
    assert_eq!(
        common::code(cs[0].query(one.clone())),
        zs_db_service::proto::errcode::BAD_REQUEST
    );
    // ascending, with a filter and a parameter: the lowest odd scores above 100
    one.sort = "score".into();
    one.filter = "score > param_min and score % 2 = 1".into();
    one.params = vec![("min".into(), zs_db_service::Param::Int(100))];
    let got = cs[0].query(one).unwrap().collect_all().unwrap();
    let mut want: Vec<(i64, u64)> = (1..=n)
        .map(|i| (score(0, i), i))
        .filter(|(sc, _)| *sc > 100 && sc % 2 == 1)
        .collect();
    want.sort();
    want.truncate(5);
    let seen: Vec<u64> = got.iter().map(|r| r.id).collect();
    assert_eq!(seen, want.iter().map(|w| w.1).collect::<Vec<_>>());

    // all three, highest score first, global limit 40
    let mut spec = QuerySpec::new("x");
    spec.sort = "score".into();
    spec.reverse = true;
    let cfg = FanOutConfig {
        limit: 40,
        ..FanOutConfig::default()
    };
    let (got, failures) = fan_out(&cs, &spec, cfg).collect_all();
    assert!(failures.is_empty(), "{failures:?}");
    let seen: Vec<(usize, u64)> = got.iter().map(|(s, r)| (*s, r.id)).collect();
    let mut want = sorted_desc(&[0, 1, 2], n);
    want.truncate(40);
    assert_eq!(seen, want);

    // a larger merge, with one server killed while it runs
    spec.batch_bytes = 1024;
    spec.window = 1;
    let cfg = FanOutConfig {
        limit: 2000,
        server_deadline: Duration::from_millis(800),
        ..FanOutConfig::default()
    };
    let mut out = fan_out(&cs, &spec, cfg);
    let mut got: Vec<(usize, u64)> = Vec::new();
    for _ in 0..100 {
        let (s, r) = out.next().unwrap();
        got.push((s, r.id));
    }
    let dead = fs.remove(2);
    dead.server.shutdown();
    drop(dead);
    for (s, r) in &mut out {
        got.push((s, r.id));
    }
    assert!(out.partial());
    assert_eq!(out.failures().len(), 1);
    assert_eq!(out.failures()[0].server, 2);
    assert_eq!(got.len(), 2000, "the live servers fill the global limit");
    // each server's part is a prefix of its own order, and the merge kept the
    // global order throughout
    for s in 0..3 {
        let mine: Vec<(usize, u64)> = got.iter().filter(|x| x.0 == s).copied().collect();
        let own = sorted_desc(&[s], n);
        assert_eq!(mine[..], own[..mine.len()], "server {s}");
    }
    let rank: std::collections::HashMap<(usize, u64), usize> = sorted_desc(&[0, 1, 2], n)
        .into_iter()
        .enumerate()
        .map(|(k, x)| (x, k))
        .collect();
    assert!(got.windows(2).all(|w| rank[&w[0]] < rank[&w[1]]));
}
