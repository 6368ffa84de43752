//! `zs db` end to end: create, put, get, query with an expression, compact.

mod common;

fn zs(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    common::run(common::zs().arg("db").arg("--dir").arg(dir).args(args))
}

#[test]
fn create_put_get_query_compact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(zs(d, &["create", "people"]).0);
    assert!(!zs(d, &["create", "people"]).0, "second create fails");
    let (ok, id, _) = zs(d, &["put", "people", r#"{"name":"bob","age":31}"#]);
    assert!(ok);
    assert_eq!(id.trim(), "1");
    assert_eq!(
        zs(d, &["put", "people", r#"{"name":"ann","age":25}"#])
            .1
            .trim(),
        "2"
    );
    assert_eq!(
        zs(d, &["put", "people", "--kind", "kv", "name=bob", "age=50"])
            .1
            .trim(),
        "3"
    );
    let (ok, got, _) = zs(d, &["get", "people", "1"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(got.trim()).unwrap();
    assert_eq!(v["value"]["name"], "bob");
    let (ok, out, err) = zs(d, &["query", "people", "age > 30 and name = 'bob'"]);
    assert!(ok, "{err}");
    let ids: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, vec![1, 3]);
    assert!(zs(d, &["delete", "people", "1"]).0);
    assert!(!zs(d, &["get", "people", "1"]).0);
    let (ok, out, _) = zs(d, &["compact", "people"]);
    assert!(ok && out.contains("compacted"));
    assert_eq!(
        zs(d, &["query", "people", "--reverse", "--limit", "1"])
            .1
            .lines()
            .count(),
        1
    );
    assert!(zs(d, &["get", "people", "3"]).1.contains("\"age\":50"));
    assert!(
        !zs(d, &["query", "people", "age >"]).0,
        "bad expression is an error"
    );
    assert_eq!(zs(d, &["list"]).1.trim(), "people");
}
