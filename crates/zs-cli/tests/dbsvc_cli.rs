//! `zs serve` serves the DB service on ./zs-data/db; `zs db --remote` runs the verbs
//! against it, `zs db watch` prints changes, and two `--remote` fan a query out.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::{run, zs, Guard};

/// A `zs serve` child (killed when dropped) and what it printed.
struct Serve {
    _child: Guard,
    addr: String,
    fingerprint: String,
}

fn serve(dir: &Path) -> Serve {
    serve_with(dir, &[])
}

fn serve_with(dir: &Path, extra: &[&str]) -> Serve {
    let mut child = zs()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let child = Guard(child);
    let mut lines = BufReader::new(out).lines();
    let (mut addr, mut fingerprint) = (String::new(), String::new());
    let mut db_line = false;
    while !(db_line && !addr.is_empty() && !fingerprint.is_empty()) {
        let l = lines.next().expect("zs serve ended").unwrap();
        if let Some(rest) = l.strip_prefix("zs serve: listening on ") {
            addr = rest.split_whitespace().next().unwrap().to_string();
        }
        if let Some(fp) = l.strip_prefix("fingerprint: ") {
            fingerprint = fp.trim().to_string();
        }
        db_line |= l.starts_with("db service: databases in zs-data");
    }
    std::thread::spawn(move || for _ in lines {});
    Serve {
        _child: child,
        addr,
        fingerprint,
    }
}

/// `zs db --remote A [--remote B ...] --fingerprint F` (the first server's)
/// with `args`, run in `dir` (no `ZS_PASSWORD` from the environment).
fn zs_db(dir: &Path, s: &[&Serve], args: &[&str]) -> (bool, String, String) {
    let mut c = zs();
    c.arg("db");
    for x in s {
        c.args(["--remote", &x.addr]);
    }
    run(c
        .args(["--fingerprint", &s[0].fingerprint])
        .args(args)
        .current_dir(dir)
        .env_remove("ZS_PASSWORD"))
}

#[test]
fn remote_verbs_watch_and_fan_out_against_zs_serve() {
    let here = tempfile::tempdir().unwrap();
    let zs_remote = |s: &[&Serve], args: &[&str]| zs_db(here.path(), s, args);
    let d1 = tempfile::tempdir().unwrap();
    let s1 = serve(d1.path());
    assert!(zs_remote(&[&s1], &["create", "people"]).0);
    let (ok, id, err) = zs_remote(&[&s1], &["put", "people", r#"{"name":"bob","age":31}"#]);
    assert!(ok, "{err}");
    assert_eq!(id.trim(), "1");
    assert!(zs_remote(&[&s1], &["put", "people", r#"{"name":"ann","age":25}"#]).0);
    let (ok, got, _) = zs_remote(&[&s1], &["get", "people", "1"]);
    assert!(ok);
    assert!(got.contains(r#""name":"bob""#), "{got}");
    let (ok, q, _) = zs_remote(&[&s1], &["query", "people", "age > 30"]);
    assert!(ok);
    assert_eq!(q.lines().count(), 1);
    assert!(q.contains("bob"));
    let (ok, l, _) = zs_remote(&[&s1], &["list"]);
    assert!(ok);
    assert_eq!(l.trim(), "people");
    assert!(
        d1.path().join("zs-data/db/people.zdb").exists(),
        "served from ./zs-data/db"
    );
    // watch: a change made by another command shows up
    let w = zs()
        .args(["db", "--remote", &s1.addr, "--fingerprint", &s1.fingerprint])
        .args(["watch", "people", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(zs_remote(&[&s1], &["put", "people", r#"{"name":"cy","age":40}"#]).0);
    let out = w.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""name":"cy""#));
    // fan-out over two servers (same identity: the key file is copied)
    let d2 = tempfile::tempdir().unwrap();
    std::fs::copy(
        d1.path().join("zs-identity.key"),
        d2.path().join("zs-identity.key"),
    )
    .unwrap();
    let s2 = serve(d2.path());
    assert!(zs_remote(&[&s2], &["create", "people"]).0);
    assert!(zs_remote(&[&s2], &["put", "people", r#"{"name":"dee","age":50}"#]).0);
    let (ok, merged, err) = zs_remote(&[&s1, &s2], &["query", "people", "age > 30"]);
    assert!(ok, "{err}");
    let names: Vec<&str> = ["bob", "dee", "cy"]
        .into_iter()
        .filter(|n| merged.contains(n))
        .collect();
    assert_eq!(names.len(), 3, "{merged}");
    let ids: Vec<u64> = merged
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, vec![1, 1, 3], "merged by id");
    // merged by a sort key instead, oldest first, with a global limit
    let (ok, merged, err) = zs_remote(
        &[&s1, &s2],
        &[
            "--sort",
            "age",
            "query",
            "people",
            "--reverse",
            "--limit",
            "2",
        ],
    );
    assert!(ok, "{err}");
    let names: Vec<String> = merged
        .lines()
        .map(|l| {
            ["bob", "ann", "cy", "dee"]
                .into_iter()
                .find(|n| l.contains(&format!("\"{n}\"")))
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    assert_eq!(names, ["dee", "cy"], "{merged}");
    // stats: remote prints what the local verb prints on the same file (the
    // server stopped, it holds the file's lock)
    let (ok, remote, err) = zs_remote(&[&s2], &["stats", "people"]);
    assert!(ok, "{err}");
    let figures: serde_json::Value = serde_json::from_str(remote.trim()).unwrap();
    assert_eq!(figures["records"], 1, "{remote}");
    assert_eq!(figures["next_id"], 2, "{remote}");
    let (ok, _, err) = zs_remote(&[&s2], &["stats", "nope"]);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    drop(s2);
    let data = d2.path().join("zs-data/db");
    let (ok, local, err) = run(zs()
        .args(["db", "--dir", data.to_str().unwrap(), "stats", "people"])
        .current_dir(here.path()));
    assert!(ok, "{err}");
    assert_eq!(remote, local);
    // a server that cannot be reached: the others answer, flagged partial
    let dead = format!("127.0.0.1:{}", common::free_port());
    let (ok, merged, err) = run(zs()
        .args(["db", "--remote", &s1.addr, "--remote", &dead])
        .args(["--fingerprint", &s1.fingerprint])
        .args(["query", "people", "age > 30"])
        .current_dir(here.path()));
    assert!(ok, "{err}");
    assert_eq!(merged.lines().count(), 2, "{merged}");
    assert!(merged.contains("bob") && merged.contains("cy"), "{merged}");
    assert!(
        err.contains("partial: cannot connect to") && err.contains(&dead),
        "{err}"
    );
    // none reachable: an error
    let (ok, _, err) = run(zs()
        .args(["db", "--remote", &dead, "--remote", &dead])
        .args(["--fingerprint", &s1.fingerprint])
        .args(["query", "people"])
        .current_dir(here.path()));
    assert!(!ok);
    assert!(err.contains("cannot connect to"), "{err}");
    // a sorted query needs a limit
    let (ok, _, err) = zs_remote(&[&s1], &["--sort", "age", "query", "people"]);
    assert!(!ok);
    assert!(err.contains("400"), "{err}");
    // refusals come back as errors
    let (ok, _, err) = zs_remote(&[&s1], &["get", "nope", "1"]);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
}

/// `zs db` in `dir` against `s` with `args` (after the remote flags).
fn zs_in(dir: &Path, s: &Serve, args: &[&str]) -> (bool, String, String) {
    zs_db(dir, &[s], args)
}

#[test]
fn login_and_rules_from_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let s = serve_with(dir, &["--db-require-login"]);
    let admin = [
        "--user",
        "admin",
        "--password-file",
        "zs-data/admin.password",
    ];
    // no login: refused
    let (ok, _, err) = zs_in(dir, &s, &["create", "people"]);
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
    // the admin may do everything
    let (ok, _, err) = zs_in(dir, &s, &[&admin[..], &["create", "people"]].concat());
    assert!(ok, "{err}");
    let (ok, id, err) = zs_in(
        dir,
        &s,
        &[&admin[..], &["put", "people", r#"{"n":1}"#]].concat(),
    );
    assert!(ok, "{err}");
    assert_eq!(id.trim(), "1");
    // a second user, made with `zs user add`
    let out = zs()
        .args(["user", "--addr", &s.addr, "--fingerprint", &s.fingerprint])
        .args(["add", "ann", "--new-password", "ann-password"])
        .current_dir(dir)
        .env_remove("ZS_PASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("ann.pw"), "ann-password\n").unwrap();
    let ann = ["--user", "ann", "--password-file", "ann.pw"];
    // wrong password, and a password file without --user
    std::fs::write(dir.join("bad.pw"), "wrong-password\n").unwrap();
    let (ok, _, err) = zs_in(
        dir,
        &s,
        &["--user", "ann", "--password-file", "bad.pw", "list"],
    );
    assert!(!ok);
    assert!(err.contains("login as \"ann\""), "{err}");
    let (ok, _, err) = zs_in(dir, &s, &["--password-file", "ann.pw", "list"]);
    assert!(!ok);
    assert!(err.contains("needs --user"), "{err}");
    // no rule for ann yet
    let (ok, _, err) = zs_in(dir, &s, &[&ann[..], &["get", "people", "1"]].concat());
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
    // the admin grants read
    let (ok, out, err) = zs_in(
        dir,
        &s,
        &[&admin[..], &["grant", "people", "ann", "read"]].concat(),
    );
    assert!(ok, "{err}");
    assert!(out.contains("ann has Read access to people"), "{out}");
    // the rules of the database, listed to its admin only
    let (ok, out, err) = zs_in(dir, &s, &[&admin[..], &["rules", "people"]].concat());
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "people ann read");
    let (ok, _, err) = zs_in(dir, &s, &[&ann[..], &["rules", "people"]].concat());
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
    let (ok, got, err) = zs_in(dir, &s, &[&ann[..], &["get", "people", "1"]].concat());
    assert!(ok, "{err}");
    assert!(got.contains(r#""n":1"#), "{got}");
    // read is not write, and only an admin of the database edits its rules
    let (ok, _, err) = zs_in(
        dir,
        &s,
        &[&ann[..], &["put", "people", r#"{"n":2}"#]].concat(),
    );
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
    let (ok, _, err) = zs_in(
        dir,
        &s,
        &[&ann[..], &["grant", "people", "ann", "admin"]].concat(),
    );
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
    let (ok, _, err) = zs_in(
        dir,
        &s,
        &[&admin[..], &["grant", "people", "ann", "sudo"]].concat(),
    );
    assert!(!ok);
    assert!(err.contains("expected none, read, write or admin"), "{err}");
    // with the server stopped, a local grant edits the served directory's rules
    drop(s);
    let out = zs()
        .args([
            "db",
            "--dir",
            "zs-data/db",
            "grant",
            "people",
            "ann",
            "write",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, out, err) = run(zs()
        .args(["db", "--dir", "zs-data/db", "rules", "*"])
        .current_dir(dir));
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "people ann write",
        "local listing of every rule"
    );
    let s = serve_with(dir, &["--db-require-login"]);
    let (ok, id, err) = zs_in(
        dir,
        &s,
        &[&ann[..], &["put", "people", r#"{"n":2}"#]].concat(),
    );
    assert!(ok, "{err}");
    assert_eq!(id.trim(), "2");
}
