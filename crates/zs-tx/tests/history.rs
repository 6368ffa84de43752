//! List-append histories of random transactions, checked for G0/G1/G2 cycles with
//! the checker in `zs_tx::history`, and exported in elle-cli's JSON form.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use zs_tx::history::{check, check_complete, to_elle_json, Anomaly, Mop, Op, OpType};
use zs_tx::{Db, Error, Isolation, Options};

const KEYS: u64 = 6;

fn record_history(opts: Options, threads: u64, per_thread: u64) -> Vec<Op> {
    let db = Db::in_memory(opts);
    let t = db.table::<u64, Vec<u64>>("lists");
    let next_value = AtomicU64::new(1);
    let history = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for p in 0..threads {
            let (db, t, next_value, history) = (&db, &t, &next_value, &history);
            s.spawn(move || {
                let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (p + 1).wrapping_mul(0x9E37_79B9);
                let mut rand = move |n: u64| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % n
                };
                for _ in 0..per_thread {
                    // the plan is fixed before the first attempt; each attempt records
                    // what it observed and only the committed attempt's record is kept
                    let plan: Vec<(bool, u64, u64)> = (0..1 + rand(4))
                        .map(|_| {
                            let append = rand(2) == 0;
                            let v = if append {
                                next_value.fetch_add(1, Ordering::Relaxed)
                            } else {
                                0
                            };
                            (append, rand(KEYS), v)
                        })
                        .collect();
                    let mops = db
                        .run(|tx| {
                            let mut mops = Vec::new();
                            for &(append, k, v) in &plan {
                                let mut list = t.get(tx, &k)?.unwrap_or_default();
                                if append {
                                    list.push(v);
                                    t.put(tx, &k, &list)?;
                                    mops.push(Mop::Append(k, v));
                                } else {
                                    mops.push(Mop::Read(k, Some(list)));
                                }
                            }
                            Ok(mops)
                        })
                        .unwrap();
                    history.lock().unwrap().push(Op {
                        process: p,
                        typ: OpType::Ok,
                        mops,
                    });
                }
            });
        }
    });
    // a final read of every key fixes every key's version order
    let finals = db
        .run(|tx| {
            (0..KEYS)
                .map(|k| Ok(Mop::Read(k, Some(t.get(tx, &k)?.unwrap_or_default()))))
                .collect::<Result<Vec<_>, Error>>()
        })
        .unwrap();
    let mut h = history.into_inner().unwrap();
    h.push(Op {
        process: threads,
        typ: OpType::Ok,
        mops: finals,
    });
    h
}

#[test]
fn random_histories_are_serializable_in_both_modes() {
    for iso in [Isolation::Opaque, Isolation::Zeze] {
        let h = record_history(
            Options {
                isolation: iso,
                ..Options::default()
            },
            4,
            400,
        );
        assert_eq!(h.len(), 1601);
        let anomalies = check_complete(&h);
        assert!(anomalies.is_empty(), "{iso:?}: {anomalies:?}");
    }
}

#[test]
fn a_client_that_splits_read_and_write_is_caught() {
    // the negative control: read-modify-write split over two transactions loses an
    // update, and the checker reports the cycle
    let db = Db::in_memory(Options::default());
    let t = db.table::<u64, Vec<u64>>("lists");
    let read = |db: &Db| db.run(|tx| Ok(t.get(tx, &0)?.unwrap_or_default())).unwrap();
    let a = read(&db);
    let b = read(&db);
    let mut a2 = a.clone();
    a2.push(1);
    db.run(|tx| t.put(tx, &0, &a2)).unwrap();
    let mut b2 = b.clone();
    b2.push(2);
    db.run(|tx| t.put(tx, &0, &b2)).unwrap();
    let fin = read(&db);
    // as the split clients would report their "transactions"
    let h = vec![
        Op {
            process: 0,
            typ: OpType::Ok,
            mops: vec![Mop::Read(0, Some(a)), Mop::Append(0, 1)],
        },
        Op {
            process: 1,
            typ: OpType::Ok,
            mops: vec![Mop::Read(0, Some(b)), Mop::Append(0, 2)],
        },
        Op {
            process: 2,
            typ: OpType::Ok,
            mops: vec![Mop::Read(0, Some(fin))],
        },
    ];
    // 1 was overwritten by the second write of the whole list
    assert_eq!(
        check_complete(&h),
        vec![Anomaly::LostAppend { key: 0, value: 1 }]
    );
    let both = vec![
        Op {
            process: 0,
            typ: OpType::Ok,
            mops: vec![Mop::Read(0, Some(vec![])), Mop::Append(0, 1)],
        },
        Op {
            process: 1,
            typ: OpType::Ok,
            mops: vec![Mop::Read(0, Some(vec![])), Mop::Append(0, 2)],
        },
        Op {
            process: 2,
            typ: OpType::Ok,
            mops: vec![Mop::Read(0, Some(vec![1, 2]))],
        },
    ];
    assert!(check(&both).iter().any(|a| matches!(a, Anomaly::G2(_))));
}

#[test]
fn histories_export_as_elle_json() {
    let h = record_history(Options::default(), 2, 50);
    let json = to_elle_json(&h);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let events = v.as_array().unwrap();
    assert_eq!(events.len(), 2 * h.len());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["index"], i as u64);
        assert_eq!(e["f"], "txn");
        let typ = e["type"].as_str().unwrap();
        assert_eq!(typ, if i % 2 == 0 { "invoke" } else { "ok" });
        for m in e["value"].as_array().unwrap() {
            let m = m.as_array().unwrap();
            assert!(m[0] == "append" || m[0] == "r");
            assert!(m[1].is_u64());
            if m[0] == "r" && typ == "ok" {
                assert!(m[2].is_array());
            }
        }
    }
    if let Some(dir) = std::env::var_os("ZS_TX_ELLE_OUT") {
        std::fs::write(std::path::Path::new(&dir).join("zs-tx-history.json"), &json).unwrap();
    }
}
