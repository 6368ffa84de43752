//! The example bytes of docs/PROTOCOL.md Part 9.5 are what the encoders produce.

use bytes::Bytes;
use zs_db_service::proto::{Answer, Limits, Oneway, Push, Request};

fn doc_examples() -> Vec<(String, Vec<u8>)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/PROTOCOL.md"
    ))
    .unwrap();
    let part = doc
        .split("# Part 9: DB service")
        .nth(1)
        .expect("Part 9 present");
    let block = part.split("## 9.5 Example bytes").nth(1).unwrap();
    let block = block
        .split("```text")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .filter(|l| l.contains(':'))
        .map(|l| {
            let (name, hex) = l.rsplit_once(':').unwrap();
            let bytes = hex
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect();
            (name.trim().to_string(), bytes)
        })
        .collect()
}

#[test]
fn documented_bytes_match_the_encoders() {
    let ex = doc_examples();
    assert_eq!(ex.len(), 11);
    let lim = Limits::default();
    let get = Request::Get {
        db: "a".into(),
        id: 7,
    };
    assert_eq!(get.encode().as_ref(), &ex[0].1[..], "{}", ex[0].0);
    assert_eq!(
        Request::decode(&Bytes::from(ex[0].1.clone()), &lim).unwrap(),
        get
    );
    assert_eq!(Answer::Id(5).encode().as_ref(), &ex[1].1[..]);
    let credit = Oneway::Credit { qid: 2, batches: 1 };
    assert_eq!(credit.encode().as_ref(), &ex[2].1[..]);
    assert_eq!(
        Oneway::decode(&Bytes::from(ex[2].1.clone()), &lim).unwrap(),
        credit
    );
    let ack = Push::FastPostAck { stream: 1, seq: 9 };
    assert_eq!(ack.encode().as_ref(), &ex[3].1[..]);
    assert_eq!(
        Push::decode(&Bytes::from(ex[3].1.clone()), &lim).unwrap(),
        ack
    );
    let call = Request::Call {
        name: "hit".into(),
        args: Bytes::from_static(b"/a"),
    };
    assert_eq!(call.encode().as_ref(), &ex[4].1[..], "{}", ex[4].0);
    assert_eq!(
        Request::decode(&Bytes::from(ex[4].1.clone()), &lim).unwrap(),
        call
    );
    let result = Answer::Bytes(Bytes::from_static(&[1, 2]));
    assert_eq!(result.encode().as_ref(), &ex[5].1[..], "{}", ex[5].0);
    assert_eq!(
        Answer::decode(&Bytes::from(ex[5].1.clone()), &lim).unwrap(),
        result
    );
    let grant = Request::Grant {
        db: "a".into(),
        user: "bo".into(),
        access: zs_db_service::Access::Write,
    };
    assert_eq!(grant.encode().as_ref(), &ex[6].1[..], "{}", ex[6].0);
    assert_eq!(
        Request::decode(&Bytes::from(ex[6].1.clone()), &lim).unwrap(),
        grant
    );
    let rules = Request::Rules { db: "a".into() };
    assert_eq!(rules.encode().as_ref(), &ex[7].1[..], "{}", ex[7].0);
    assert_eq!(
        Request::decode(&Bytes::from(ex[7].1.clone()), &lim).unwrap(),
        rules
    );
    let listed = Answer::Rules(vec![(
        "a".into(),
        "bo".into(),
        zs_db_service::Access::Write,
    )]);
    assert_eq!(listed.encode().as_ref(), &ex[8].1[..], "{}", ex[8].0);
    assert_eq!(
        Answer::decode(&Bytes::from(ex[8].1.clone()), &lim).unwrap(),
        listed
    );
    let stats = Request::Stats { db: "a".into() };
    assert_eq!(stats.encode().as_ref(), &ex[9].1[..], "{}", ex[9].0);
    assert_eq!(
        Request::decode(&Bytes::from(ex[9].1.clone()), &lim).unwrap(),
        stats
    );
    let figures = Answer::Stats(zs_db::Stats {
        records: 2,
        next_id: 3,
        file_bytes: 64,
        live_bytes: 48,
        index_bytes: 32,
    });
    assert_eq!(figures.encode().as_ref(), &ex[10].1[..], "{}", ex[10].0);
    assert_eq!(
        Answer::decode(&Bytes::from(ex[10].1.clone()), &lim).unwrap(),
        figures
    );
    // a stats answer one byte short, or with a byte more, is refused
    let a = &ex[10].1;
    assert!(Answer::decode(&Bytes::from(a[..a.len() - 1].to_vec()), &lim).is_err());
    let mut long = a.clone();
    long.push(0);
    assert!(Answer::decode(&Bytes::from(long), &lim).is_err());
    let mut bad_rule = ex[8].1.clone();
    *bad_rule.last_mut().unwrap() = 7;
    assert!(Answer::decode(&Bytes::from(bad_rule), &lim).is_err());
    let mut bad_level = ex[6].1.clone();
    *bad_level.last_mut().unwrap() = 4;
    assert!(Request::decode(&Bytes::from(bad_level), &lim).is_err());
    // the sort key is an optional trailing field: a query without one encodes
    // as before, one with it round-trips, an empty one is refused
    let mut q = zs_db_service::QuerySpec::new("a");
    let plain = Request::Query(q.clone()).encode();
    q.sort = "score".into();
    let sorted = Request::Query(q.clone()).encode();
    assert_eq!(&sorted[..plain.len()], &plain[..]);
    assert_eq!(&sorted[plain.len()..], b"\x05\x00\x00\x00score");
    assert_eq!(
        Request::decode(&sorted, &lim).unwrap(),
        Request::Query(q.clone())
    );
    let mut empty = sorted[..plain.len()].to_vec();
    empty.extend_from_slice(&[0, 0, 0, 0]);
    assert!(Request::decode(&Bytes::from(empty), &lim).is_err());
    // arguments over the receiver's limit are refused by the decoder
    let small = Limits {
        max_args: 1,
        ..Limits::default()
    };
    assert!(Request::decode(&Bytes::from(ex[4].1.clone()), &small).is_err());
}
