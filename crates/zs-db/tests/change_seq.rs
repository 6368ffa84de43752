//! `Database::change_seq`: even between commits, two more per commit applied
//! (before the commit returns), unmoved by reads. zs-db-service's per-loop GET
//! cache relies on it.

use std::sync::Arc;

use zs_db::{Batch, DbOptions, Env, Kind, MemVfs};

#[test]
fn change_seq_moves_by_two_per_commit_and_not_on_reads() {
    let env = Env::with_vfs(Arc::new(MemVfs::new()));
    let db = env.create_db("t", DbOptions::default()).unwrap();
    let s0 = db.change_seq();
    assert!(s0.is_multiple_of(2));
    let id = db.insert(Kind::Raw, b"a").unwrap();
    assert_eq!(db.change_seq(), s0 + 2);
    let mut b = Batch::new();
    b.update(id, Kind::Raw, b"b".to_vec());
    b.insert(Kind::Raw, b"c".to_vec());
    db.commit(&b).unwrap();
    assert_eq!(
        db.change_seq(),
        s0 + 4,
        "one commit of two ops moves it by two"
    );
    assert!(db.get(id).unwrap().is_some());
    let _ = db.get_cached_with(id, |_, d| d.len());
    assert_eq!(db.change_seq(), s0 + 4, "reads do not move it");
    assert!(db.delete(id).unwrap());
    assert_eq!(db.change_seq(), s0 + 6);
}
