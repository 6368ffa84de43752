//! The small additive API the network DB service builds on: `get_cached` (a read
//! that never touches the file), `Query::id_range`, and `QueryHandle::control`
//! (pause, resume and stop from another thread).

use std::sync::Arc;
use std::time::Duration;

use zs_db::*;

fn db(cache_bytes: usize) -> Database {
    let vfs: Arc<dyn Vfs> = Arc::new(MemVfs::new());
    let opts = DbOptions {
        cache_bytes,
        ..DbOptions::default()
    };
    Database::create(vfs, "t", opts).unwrap()
}

#[test]
fn get_cached_answers_from_the_cache_only() {
    let d = db(1 << 20);
    let id = d.insert(Kind::Raw, b"hello").unwrap();
    d.sync().unwrap();
    // written records are cached; a missing id needs no file read either
    assert_eq!(d.get_cached(id).unwrap().unwrap().data, b"hello");
    assert_eq!(d.get_cached(id + 100), Some(None));
    // without a cache every existing record needs the file
    let nocache = db(0);
    let id = nocache.insert(Kind::Raw, b"x").unwrap();
    assert_eq!(nocache.get_cached(id), None);
    assert_eq!(nocache.get(id).unwrap().unwrap().data, b"x");
    assert_eq!(nocache.get_cached(id + 1), Some(None));
    nocache.close().unwrap();
    assert_eq!(
        nocache.get_cached(id),
        None,
        "closed: the caller takes the slow path"
    );
}

#[test]
fn id_ranges_and_control_from_another_thread() {
    let d = db(0);
    let mut b = Batch::new();
    for i in 0..20_000u64 {
        b.insert(Kind::Raw, i.to_le_bytes().to_vec());
    }
    d.commit(&b).unwrap();
    for id in (2..20_000).step_by(3) {
        d.delete(id).unwrap();
    }
    let ids = |q: Query| -> Vec<u64> {
        d.query(q)
            .unwrap()
            .collect_all()
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect()
    };
    let want: Vec<u64> = (100..=200).filter(|i| (i - 2) % 3 != 0).collect();
    assert_eq!(ids(Query::all().id_range(100, 200)), want);
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(ids(Query::all().id_range(100, 200).reverse(true)), rev);
    assert!(ids(Query::all().id_range(300, 200)).is_empty());
    assert_eq!(
        ids(Query::all().id_range(19_999, u64::MAX)),
        vec![19_999, 20_000]
    );

    // pause and stop through a control while the handle is read elsewhere
    let mut h = d.query(Query::all().chunk_size(64).threads(1)).unwrap();
    let c = h.control();
    let first = h.next_batch().unwrap().unwrap();
    assert!(!first.is_empty());
    c.pause();
    std::thread::sleep(Duration::from_millis(100));
    let p1 = c.progress();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.progress().scanned, p1.scanned, "paused");
    assert!(p1.scanned < 13_400);
    c.resume();
    let reader = std::thread::spawn(move || {
        let mut n = first.len();
        while let Some(b) = h.next_batch() {
            n += b.unwrap().len();
        }
        n
    });
    std::thread::sleep(Duration::from_millis(5));
    c.stop();
    let n = reader.join().unwrap();
    assert!(n <= 13_334, "{n}");
    assert!(c.progress().done);
}
