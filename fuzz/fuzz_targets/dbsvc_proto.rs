//! zs-db-service payload decoders: requests, answers, pushes, one-way messages.
//! Whatever decodes re-encodes to the same bytes. The fast paths agree with the
//! general decoders: `peek_get` (the server's GET read in place),
//! `RecordBatch::parse` (the client's batch read in place) and `record_answer`
//! (the client's GET answer read in place). A stats answer is exactly its tag
//! and five u64 (seeds in `fuzz/seeds/dbsvc_proto` start it at the stats
//! request and answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_db_service::proto::{
    peek_get, record_answer, Answer, Limits, Oneway, Push, RecordBatch, Request,
};

fuzz_target!(|data: &[u8]| {
    let b = bytes::Bytes::copy_from_slice(data);
    let lim = Limits::default();
    if let Ok(r) = Request::decode(&b, &lim) {
        // floats (NaN) and over-long strings aside, the encoding is canonical
        let again = Request::decode(&r.encode(), &lim).expect("re-decodes");
        assert_eq!(format!("{again:?}"), format!("{r:?}"));
    }
    if let Ok(a) = Answer::decode(&b, &lim) {
        assert_eq!(a.encode(), b);
        if let Answer::Stats(s) = a {
            assert_eq!((b.len(), b[0]), (41, 10));
            assert_eq!(
                u64::from_le_bytes(b[33..41].try_into().unwrap()),
                s.index_bytes
            );
        }
    }
    if let Ok(p) = Push::decode(&b, &lim) {
        assert_eq!(p.encode(), b);
    }
    if let Some((db, id)) = peek_get(&b) {
        match Request::decode(&b, &lim) {
            Ok(Request::Get { db: d2, id: i2 }) => assert_eq!((db, id), (d2.as_str(), i2)),
            other => panic!("peek_get accepted what decodes as {other:?}"),
        }
    }
    let general = match Push::decode(&b, &lim) {
        Ok(Push::Batch { qid, seq, records }) => Some((qid, seq, records)),
        _ => None,
    };
    match (RecordBatch::parse(b.clone(), &lim), general) {
        (Ok(rb), Some((qid, seq, records))) => {
            assert_eq!((rb.qid(), rb.seq()), (qid, seq));
            assert_eq!(rb.to_records(), records);
        }
        (Err(_), None) => {}
        (rb, g) => panic!("RecordBatch::parse {:?} vs Push::decode {:?}", rb.is_ok(), g.is_some()),
    }
    match (record_answer(&b, &lim), Answer::decode(&b, &lim)) {
        (Ok(r), Ok(Answer::Record(g))) => assert_eq!(
            r.map(|r| (r.id, r.kind, r.data.to_vec())),
            g.map(|g| (g.id, g.kind, g.data))
        ),
        (Err(_), Ok(Answer::Record(_))) => panic!("record_answer refused a record answer"),
        (Ok(_), other) => panic!("record_answer accepted what decodes as {other:?}"),
        (Err(_), _) => {}
    }
    if let Ok(m) = Oneway::decode(&b, &lim) {
        assert_eq!(m.encode(), b);
    }
});
