//! The examples of docs/PROTOCOL.md, Part "zs-registry", are exactly the bytes
//! the service reads and writes: each line decodes and encodes back to itself,
//! and a few are rebuilt from values.

use std::collections::BTreeMap;

use zs_registry::proto::{
    decode_request, Ack, Changes, ChangesRequest, Push, Request, Response, Unwatch, WatchAnswer,
    WatchRequest,
};
use zs_registry::{Change, Event, Instance, Load};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

fn part() -> &'static str {
    let start = DOC
        .find("# Part 7: zs-registry")
        .expect("the registry part");
    let rest = &DOC[start..];
    // Up to the next part: later parts have example lines of their own.
    let end = rest[1..].find("\n# Part ").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

fn lines(tag: &str) -> Vec<&'static str> {
    part().lines().filter_map(|l| l.strip_prefix(tag)).collect()
}

#[test]
fn every_documented_line_round_trips() {
    let reqs = lines("request: ");
    assert_eq!(reqs.len(), 13);
    for l in reqs {
        let r = decode_request(l, 65536).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(serde_json::to_string(&r).unwrap(), l);
    }
    let answers = lines("answer: ");
    assert_eq!(answers.len(), 13);
    for l in answers {
        let r: Response = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(serde_json::to_string(&r).unwrap(), l);
    }
    for l in lines("changes-request: ") {
        let r: ChangesRequest = serde_json::from_str(l).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), l);
    }
    let ch = lines("changes-answer: ");
    assert_eq!(ch.len(), 2);
    for l in ch {
        let r: Changes = serde_json::from_str(l).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), l);
    }
    fn same<T: serde::de::DeserializeOwned + serde::Serialize>(tag: &str, n: usize) {
        let ls = lines(tag);
        assert_eq!(ls.len(), n, "{tag}");
        for l in ls {
            let v: T = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert_eq!(serde_json::to_string(&v).unwrap(), l);
        }
    }
    same::<WatchRequest>("watch-request: ", 1);
    same::<WatchAnswer>("watch-answer: ", 1);
    same::<Push>("push: ", 3);
    same::<Ack>("ack: ", 1);
    same::<Unwatch>("unwatch: ", 1);
}

#[test]
fn documented_bytes_are_what_values_encode_to() {
    let inst = Instance {
        kind: "game".into(),
        id: "eu-1".into(),
        addrs: vec!["10.0.0.1:7777".into()],
        vaddrs: vec!["p2pvm:7".into()],
        meta: BTreeMap::from([("zone".to_owned(), "eu".to_owned())]),
        load: Load::new(40, 100),
        lease: 0,
    };
    let reg = Request::Register {
        lease: 5234871234,
        instance: inst,
    };
    assert!(lines("request: ").contains(&serde_json::to_string(&reg).unwrap().as_str()));
    let ch = Changes::Events {
        revision: 14,
        events: vec![
            Event {
                revision: 13,
                change: Change::Delete {
                    kind: "game".into(),
                    id: "eu-1".into(),
                },
            },
            Event {
                revision: 14,
                change: Change::Put {
                    instance: Instance {
                        lease: 77,
                        ..Instance::new("game", "eu-2", "")
                    },
                },
            },
        ],
    };
    assert!(lines("changes-answer: ").contains(&serde_json::to_string(&ch).unwrap().as_str()));
    // short forms are accepted
    let short = decode_request(
        r#"{"op":"register","lease":1,"instance":{"kind":"g","id":"x"}}"#,
        1024,
    )
    .unwrap();
    assert!(
        matches!(short, Request::Register { instance, .. } if instance.addrs.is_empty() && instance.load == Load::default())
    );
    assert!(
        decode_request(r#"{"op":"grant","ttl_ms":1,"extra":1}"#, 1024).is_err(),
        "unknown fields are refused"
    );
    assert!(decode_request(
        &format!(r#"{{"op":"query","pattern":"{}"}}"#, "x".repeat(100)),
        64
    )
    .is_err());
}
