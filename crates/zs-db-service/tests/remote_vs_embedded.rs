//! Property: on generated data, a remote query answers exactly what zs-db's
//! embedded query answers on the same database (filter, limit, reverse, id range).
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use proptest::prelude::*;
use zs_db::{Kind, Query};
use zs_db_service::{Durability, QuerySpec, Range, ServiceConfig};

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn remote_answers_equal_embedded_answers(
        values in proptest::collection::vec((0i64..50, "[a-c]{1,2}"), 1..120),
        threshold in 0i64..50,
        limit in 0u64..40,
        reverse in any::<bool>(),
        lo in 0u64..60,
        span in 0u64..80,
        deletes in proptest::collection::vec(1u64..120, 0..10),
    ) {
        let f = common::start(ServiceConfig::default());
        let db = f.client();
        db.open("p", true).unwrap();
        for (i, (n, s)) in values.iter().enumerate() {
            let d = if i % 2 == 0 { Durability::Written } else { Durability::Durable };
            db.insert("p", Kind::Json, format!(r#"{{"n":{n},"s":"{s}"}}"#).as_bytes(), d).unwrap();
        }
        for id in deletes {
            db.delete("p", id, Durability::Written).unwrap();
        }
        let filter = format!("n >= {threshold} and s <> 'b'");
        // embedded
        let local = f.service.env().db("p").unwrap();
        let mut q = Query::expr(&filter).unwrap().reverse(reverse);
        if limit > 0 {
            q = q.limit(limit);
        }
        let want: Vec<_> = local.query(q).unwrap().collect_all().unwrap();
        // remote
        let mut spec = QuerySpec::new("p");
        spec.filter = filter.clone();
        spec.limit = limit;
        spec.reverse = reverse;
        spec.batch_bytes = 1024;
        let got = db.query(spec.clone()).unwrap().collect_all().unwrap();
        prop_assert_eq!(&got, &want);
        // id range: the embedded answer filtered to the range, then limited
        let hi = lo + span;
        spec.range = Range::Ids { lo, hi };
        let mut want_r: Vec<_> = local
            .query(Query::expr(&filter).unwrap().reverse(reverse))
            .unwrap()
            .collect_all()
            .unwrap()
            .into_iter()
            .filter(|r| r.id >= lo && r.id <= hi)
            .collect();
        if limit > 0 {
            want_r.truncate(limit as usize);
        }
        let got_r = db.query(spec).unwrap().collect_all().unwrap();
        prop_assert_eq!(got_r, want_r);
        // get by id agrees too
        for id in 0..=values.len() as u64 + 1 {
            prop_assert_eq!(db.get("p", id).unwrap(), local.get(id).unwrap());
        }
    }
}
