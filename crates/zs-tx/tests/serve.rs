//! Wiring: a zs-core command runs a procedure and replies only after the commit
//! (through the facade's `zserver::tx`).

use std::sync::Arc;

use zserver::tx::{Backend, Db, Options, ServerTxExt, TxError, ZdbBackend};
use zserver::{code, ClientBuilder, ServerBuilder};

#[test]
fn replies_come_after_commit_and_once_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir.path(), "srv").unwrap());
    let db = Db::open(store, Options::default()).unwrap();
    let counter = db.table::<u32, u64>("counter");
    let (c1, c2, db2) = (counter.clone(), counter.clone(), db.clone());
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0".parse().unwrap())
        .procedure("incr", db.clone(), move |tx, _| {
            let v = c1.get(tx, &0)?.unwrap_or(0) + 1;
            c1.put(tx, &0, &v)?;
            Ok(v.to_string())
        })
        .procedure("check", db.clone(), move |tx, text| {
            // answers what it read, committed by the time the reply leaves
            let v = c2.get(tx, &0)?.unwrap_or(0);
            if text == "fail" {
                return Err(TxError::Abort("refused".into()));
            }
            Ok(v.to_string())
        })
        .start()
        .unwrap();
    let client = ClientBuilder::new(server.local_addr())
        .fingerprint(server.fingerprint().unwrap())
        .connect()
        .unwrap();
    // many calls in flight: every reply is a distinct committed value
    let calls: Vec<_> = (0..40).map(|_| client.call("incr", "")).collect();
    let mut got: Vec<u64> = calls
        .into_iter()
        .map(|c| c.wait().unwrap().parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=40).collect::<Vec<u64>>());
    // the store had the value before the reply was read
    assert_eq!(counter.peek(&0).unwrap(), Some(40));
    assert_eq!(db2.stats().commits, 40);
    assert_eq!(client.call("check", "").wait().unwrap(), "40");
    // a rolled-back procedure answers an error
    let e = client.call("check", "fail").wait().unwrap_err();
    assert!(
        format!("{e:?}").contains(&code::HANDLER_FAILED.to_string()),
        "{e:?}"
    );
}

/// A peer that makes a procedure touch ever new records (reads of absent keys also
/// take memory) or very many records at once meets the configured limits: memory
/// stays bounded (absent records are forgotten when the engine is full), too large
/// transactions get error replies, and other peers carry on.
#[test]
fn attack_record_flood_is_bounded() {
    let db = Db::in_memory(Options {
        max_records: 200,
        max_tx_records: 100,
        ..Options::default()
    });
    let names = db.table::<String, u64>("names");
    let n2 = names.clone();
    let counter = db.table::<u32, u64>("counter");
    let c1 = counter.clone();
    let server = ServerBuilder::new()
        .addr("127.0.0.1:0".parse().unwrap())
        // looks a name up (a hostile peer sends a new one each time)
        .procedure("lookup", db.clone(), move |tx, text| {
            Ok(names.get(tx, &text.to_string())?.unwrap_or(0).to_string())
        })
        // reads a range of names: a hostile peer asks for a huge one
        .procedure("range", db.clone(), move |tx, text| {
            let n: u32 = text
                .parse()
                .map_err(|_| TxError::Abort("not a number".into()))?;
            let mut sum = 0;
            for i in 0..n {
                sum += n2.get(tx, &format!("r{i}"))?.unwrap_or(0);
            }
            Ok(sum.to_string())
        })
        .procedure("incr", db.clone(), move |tx, _| {
            let v = c1.get(tx, &0)?.unwrap_or(0) + 1;
            c1.put(tx, &0, &v)?;
            Ok(v.to_string())
        })
        .start()
        .unwrap();
    let connect = || {
        ClientBuilder::new(server.local_addr())
            .fingerprint(server.fingerprint().unwrap())
            .connect()
            .unwrap()
    };
    let good = connect();
    assert_eq!(good.call("incr", "").wait().unwrap(), "1");
    let bad = connect();
    for i in 0..1000 {
        assert_eq!(bad.call("lookup", &format!("n{i}")).wait().unwrap(), "0");
        assert!(db.stats().records <= 200, "{:?}", db.stats());
    }
    // one transaction touching more than a transaction may
    let e = bad.call("range", "10000").wait().unwrap_err();
    assert!(format!("{e:?}").contains("at most 100 records"), "{e:?}");
    // the other peer carries on, its stored record intact
    assert_eq!(good.call("incr", "").wait().unwrap(), "2");
    assert_eq!(good.call("range", "3").wait().unwrap(), "0");
    assert!(db.stats().records <= 200);
}
