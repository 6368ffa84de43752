//! zs-tx's decoders on hostile stored bytes: a zs-db database whose records are
//! arbitrary bytes is opened by `ZdbBackend` + `Db::open` (record decoder), then a
//! procedure reads every loaded row as several value types (checked rkyv decode)
//! and writes one back; keys are decoded as every key type. Errors are fine; a
//! panic is a bug. Round trips must hold for whatever decodes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use zs_db::{Batch, Database, DbOptions, Kind, MemVfs};
use zs_tx::{decode_record, encode_record, Backend, Db, Key, Options, Value, ZdbBackend};

fn keys(b: &[u8]) {
    if let Some(k) = u64::decode_key(b) {
        let mut o = Vec::new();
        k.encode_key(&mut o);
        assert_eq!(o, b);
    }
    if let Some(k) = i32::decode_key(b) {
        let mut o = Vec::new();
        k.encode_key(&mut o);
        assert_eq!(o, b);
    }
    if let Some(k) = <(u16, String)>::decode_key(b) {
        let mut o = Vec::new();
        k.encode_key(&mut o);
        assert_eq!(o, b);
    }
}

fuzz_target!(|data: &[u8]| {
    keys(data);
    let _ = Vec::<u32>::decode_value(data);
    let _ = String::decode_value(data);
    let _ = <(u64, Vec<String>)>::decode_value(data);
    if let Ok((t, k, v)) = decode_record(data) {
        assert_eq!(encode_record(t, k, v).unwrap(), data);
    }
    // records: the input split on 0xFF bytes
    let vfs = Arc::new(MemVfs::new());
    let db = Database::create(vfs.clone(), "f", DbOptions::default()).unwrap();
    let mut batch = Batch::new();
    for rec in data.split(|&b| b == 0xff).take(64) {
        batch.insert(Kind::Raw, rec.to_vec());
    }
    db.commit(&batch).unwrap();
    drop(db);
    let Ok(backend) = ZdbBackend::open(vfs, "f") else {
        return;
    };
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let Ok(txdb) = Db::open(backend, Options::default()) else {
        return;
    };
    let mut names = Vec::new();
    for rec in data.split(|&b| b == 0xff).take(64) {
        if let Ok((t, k, _)) = decode_record(rec) {
            names.push((t.to_string(), k.to_vec()));
        }
    }
    for (t, k) in names {
        let a = txdb.table::<Vec<u8>, Vec<u32>>(&t);
        let b = txdb.table::<Vec<u8>, String>(&t);
        let r = txdb.run(|tx| {
            let x = a.get(tx, &k);
            let _ = b.get(tx, &k);
            if let Ok(Some(v)) = x {
                a.put(tx, &k, &v)?;
            }
            Ok(())
        });
        assert!(r.is_ok(), "{r:?}");
    }
});
