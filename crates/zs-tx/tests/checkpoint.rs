//! What each checkpoint mode hands the backend: immediate = one write per commit
//! before it is visible; periodic = one write of the latest values; record sets =
//! one write per set of related records.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use zs_tx::{Backend, Checkpoint, Db, Error, LoadSink, Options, Write};

/// One recorded row write: table, key, value.
type Row = (String, Vec<u8>, Option<Vec<u8>>);

/// A backend that records every write (and can be told to fail).
#[derive(Debug, Default)]
struct Recorder {
    writes: Mutex<Vec<Vec<Row>>>,
    fail: Mutex<bool>,
}

impl Backend for Recorder {
    fn load(&self, _sink: &mut LoadSink<'_>) -> zs_tx::Result<()> {
        Ok(())
    }
    fn write(&self, writes: &[Write<'_>]) -> zs_tx::Result<()> {
        if *self.fail.lock().unwrap() {
            return Err(Error::Storage("disk on fire".into()));
        }
        self.writes.lock().unwrap().push(
            writes
                .iter()
                .map(|w| {
                    (
                        w.table.to_string(),
                        w.key.to_vec(),
                        w.value.map(|v| v.to_vec()),
                    )
                })
                .collect(),
        );
        Ok(())
    }
}

fn keys(w: &[Row]) -> Vec<u32> {
    w.iter()
        .map(|(_, k, _)| u32::from_be_bytes(k[..].try_into().unwrap()))
        .collect()
}

fn workload(checkpoint: Checkpoint) -> (Db, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let db = Db::open(
        rec.clone() as Arc<dyn Backend>,
        Options {
            checkpoint,
            ..Options::default()
        },
    )
    .unwrap();
    let t = db.table::<u32, u64>("t");
    let add = |ks: &[u32]| {
        db.run(|tx| {
            for k in ks {
                let v = t.get(tx, k)?.unwrap_or(0);
                t.put(tx, k, &(v + 1))?;
            }
            Ok(())
        })
        .unwrap()
    };
    add(&[1, 2]);
    add(&[3]);
    add(&[2, 4]);
    add(&[5]);
    // reads link sets too: 6 is written because 5 was read
    db.run(|tx| {
        let v = t.get(tx, &5)?.unwrap();
        t.put(tx, &6, &v)
    })
    .unwrap();
    (db, rec)
}

#[test]
fn immediate_writes_each_commit() {
    let (_db, rec) = workload(Checkpoint::Immediate);
    let w = rec.writes.lock().unwrap();
    let got: Vec<Vec<u32>> = w.iter().map(|b| keys(b)).collect();
    assert_eq!(got, vec![vec![1, 2], vec![3], vec![2, 4], vec![5], vec![6]]);
}

#[test]
fn periodic_writes_one_batch_of_latest_values() {
    let (db, rec) = workload(Checkpoint::Periodic(Duration::from_secs(3600)));
    assert!(
        rec.writes.lock().unwrap().is_empty(),
        "nothing before the checkpoint"
    );
    db.checkpoint().unwrap();
    let w = rec.writes.lock().unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(keys(&w[0]), vec![1, 2, 3, 4, 5, 6]);
    let two = w[0]
        .iter()
        .find(|(_, k, _)| k[..] == 2u32.to_be_bytes())
        .unwrap();
    assert_eq!(
        two.2.as_deref(),
        Some(&2u64.to_le_bytes()[..]),
        "the latest value, once"
    );
    assert_eq!(db.stats().checkpoints, 1);
}

#[test]
fn record_sets_write_one_batch_per_related_set() {
    let (db, rec) = workload(Checkpoint::RecordSets(Duration::from_secs(3600)));
    db.checkpoint().unwrap();
    let w = rec.writes.lock().unwrap();
    let mut got: Vec<Vec<u32>> = w.iter().map(|b| keys(b)).collect();
    got.sort();
    assert_eq!(got, vec![vec![1, 2, 4], vec![3], vec![5, 6]]);
}

#[test]
fn a_failed_checkpoint_keeps_its_changes_for_the_next() {
    let (db, rec) = workload(Checkpoint::Periodic(Duration::from_secs(3600)));
    *rec.fail.lock().unwrap() = true;
    assert!(matches!(db.checkpoint(), Err(Error::Storage(_))));
    assert!(db.last_checkpoint_error().unwrap().contains("disk on fire"));
    // a newer change of record 1 wins over the kept one
    let t = db.table::<u32, u64>("t");
    db.run(|tx| t.put(tx, &1, &100)).unwrap();
    *rec.fail.lock().unwrap() = false;
    db.checkpoint().unwrap();
    let w = rec.writes.lock().unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(keys(&w[0]), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(w[0][0].2.as_deref(), Some(&100u64.to_le_bytes()[..]));
}

#[test]
fn the_background_thread_checkpoints_on_its_own() {
    let (db, rec) = workload(Checkpoint::Periodic(Duration::from_millis(10)));
    let start = std::time::Instant::now();
    while rec.writes.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no background checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    db.close().unwrap();
}

#[test]
fn immediate_storage_errors_fail_the_commit_and_publish_nothing() {
    let rec = Arc::new(Recorder::default());
    let db = Db::open(rec.clone() as Arc<dyn Backend>, Options::default()).unwrap();
    let t = db.table::<u32, u64>("t");
    *rec.fail.lock().unwrap() = true;
    let r = db.run(|tx| t.put(tx, &1, &1));
    assert!(matches!(r, Err(Error::Storage(_))));
    assert_eq!(t.peek(&1).unwrap(), None);
    *rec.fail.lock().unwrap() = false;
    db.run(|tx| t.put(tx, &1, &2)).unwrap();
    assert_eq!(t.peek(&1).unwrap(), Some(2));
}
