//! The three-server demo of the README, as processes: one `zs serve --registry`,
//! two `zs serve --join … --service-type game`; `zs registry ls|pick|watch|call`
//! against it; a member that stops leaves the registry. The same commands
//! against a real etcd with members joined through `--join-etcd`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, zs, Guard};

/// Starts `zs serve ARGS` in `dir`; returns it and its fingerprint once it is up.
/// Each server keeps its services' data apart (`--data <key file>.data`): zs-db
/// locks its files, so two servers cannot share one data directory.
fn serve(dir: &Path, args: &[&str]) -> (Guard, String) {
    let key = args
        .iter()
        .position(|a| *a == "--key")
        .map(|i| args[i + 1])
        .unwrap_or("zs-identity.key");
    let mut child = zs()
        .arg("serve")
        .args(["--loops", "1"])
        .args(["--data", &format!("{key}.data")])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let guard = Guard(child);
    let start = Instant::now();
    let mut fp = String::new();
    while start.elapsed() < Duration::from_secs(30) {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(f) = line.strip_prefix("fingerprint: ") {
            fp = f.trim().to_owned();
        }
        if line.starts_with("commands: ") {
            break;
        }
    }
    assert!(!fp.is_empty(), "zs serve {args:?} did not start");
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    (guard, fp)
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = zs().args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn wait_for(args: &[&str], want: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, err) = run(args);
        if want(&out) {
            return out;
        }
        assert!(Instant::now() < end, "{args:?}: {out}{err}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `zs registry lock` and `zs registry ids` against `target` (either backend):
/// the command runs under the lock, a second holder is refused while it
/// runs, the exit status comes through, ids never repeat.
fn lock_and_ids(target: &[&str], counter: &str) {
    let cmd_with = |flags: &[&str], tail: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["registry", "lock", "job"].map(String::from).to_vec();
        v.extend(flags.iter().chain(target).map(|s| s.to_string()));
        v.push("--".into());
        v.extend(tail.iter().map(|s| s.to_string()));
        v
    };
    let cmd = |tail: &[&str]| cmd_with(&[], tail);
    let strs = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().join(" ");
    let (ok, out, err) = run(&cmd(&["echo", "inside"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "inside");
    let code = zs()
        .args(cmd(&["sh", "-c", "exit 3"]))
        .status()
        .unwrap()
        .code();
    assert_eq!(code, Some(3), "the command's status comes through");
    let mut holder = Guard(
        // it waits: the probes below hold the lock for a moment each
        zs().args(cmd_with(&["--wait", "20"], &["sleep", "3"]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _, err) = run(&cmd(&["true"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>());
        if !ok {
            assert!(err.contains("held by"), "{err}");
            break;
        }
        assert!(
            Instant::now() < end,
            "the lock was never seen held: {}",
            strs(&cmd(&[]))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(holder.0.wait().unwrap().success());
    let (ok, _, err) = run(&cmd(&["true"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(ok, "free again after the holder ended: {err}");
    let ids = |n: &str| {
        let (ok, out, err) = run(&[&["registry", "ids", counter, n][..], target].concat());
        assert!(ok, "{err}");
        out.trim().to_owned()
    };
    assert_eq!(ids("10"), "1..11");
    assert_eq!(ids("5"), "11..16");
    let (ok, _, _) = run(&[&["registry", "ids", counter, "0"][..], target].concat());
    assert!(!ok, "a count of 0 is refused");
}

#[test]
fn three_server_demo() {
    let dir = tempfile::tempdir().unwrap();
    let reg_addr = format!("127.0.0.1:{}", free_port());
    let (_reg, fp) = serve(
        dir.path(),
        &["--addr", &reg_addr, "--registry", "--key", "reg.key"],
    );
    let a_addr = format!("127.0.0.1:{}", free_port());
    let b_addr = format!("127.0.0.1:{}", free_port());
    let join = [
        "--join",
        &reg_addr,
        "--join-fingerprint",
        &fp,
        "--service-type",
        "game",
    ];
    let (mut a, _) = serve(
        dir.path(),
        &[
            &["--addr", &a_addr, "--key", "a.key", "--service-id", "a"][..],
            &join[..],
        ]
        .concat(),
    );
    let (_b, _) = serve(
        dir.path(),
        &[
            &["--addr", &b_addr, "--key", "b.key", "--service-id", "b"][..],
            &join[..],
        ]
        .concat(),
    );
    let target = ["--addr", &reg_addr, "--fingerprint", &fp];

    let ls = wait_for(
        &[&["registry", "ls", "game"][..], &target[..]].concat(),
        |o| o.contains("(2 instances"),
    );
    assert!(
        ls.contains(&format!("game/a\tload 0/10000\t{a_addr}")),
        "{ls}"
    );
    assert!(ls.contains("game/b"), "{ls}");
    let (ok, pick, _) = run(&[&["registry", "pick", "game"][..], &target[..]].concat());
    assert!(ok && pick.starts_with("game/"), "{pick}");
    // calls go to the least-loaded member, both equally loaded: in turn
    let mut by = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (ok, out, err) =
            run(&[&["registry", "call", "game", "echo", "hi"][..], &target[..]].concat());
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "hi");
        by.insert(err.trim().to_owned());
    }
    assert_eq!(by.len(), 2, "both members answered: {by:?}");
    let (ok, w, _) = run(&[
        &["registry", "watch", "game", "--for", "1"][..],
        &target[..],
    ]
    .concat());
    assert!(ok && w.starts_with("snapshot at revision"), "{w}");
    lock_and_ids(&target, "orders");
    // a member that stops disappears (killed: its lease expires after 5 s)
    let _ = a.0.kill();
    let _ = a.0.wait();
    wait_for(
        &[&["registry", "ls", "game"][..], &target[..]].concat(),
        |o| o.contains("(1 instances") && !o.contains("game/a"),
    );
    // a wrong fingerprint is refused
    let (ok, _, err) = run(&[
        "registry",
        "ls",
        "--addr",
        &reg_addr,
        "--fingerprint",
        "sha3-256:0000000000000000000000000000000000000000000000000000000000000000",
    ]);
    assert!(!ok, "{err}");
}

#[test]
fn against_etcd() {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is not installed (CI)"
        );
        println!("skipped: etcd not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cp, pp) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{cp}");
    let etcd = Guard(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pp}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{pp}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{pp}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", cp)).is_err() {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    let m_addr = format!("127.0.0.1:{}", free_port());
    let (_m, _) = serve(
        dir.path(),
        &[
            "--addr",
            &m_addr,
            "--key",
            "m.key",
            "--join-etcd",
            &url,
            "--service-type",
            "game",
            "--service-id",
            "m1",
        ],
    );
    let ls = wait_for(&["registry", "ls", "--etcd", &url], |o| {
        o.contains("(1 instances")
    });
    assert!(
        ls.contains(&format!("game/m1\tload 0/10000\t{m_addr}")),
        "{ls}"
    );
    let (ok, out, err) = run(&[
        "registry", "call", "game", "echo", "via etcd", "--etcd", &url,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "via etcd");
    let (ok, pick, _) = run(&["registry", "pick", "game", "--etcd", &url]);
    assert!(ok && pick.starts_with("game/m1"), "{pick}");
    let (ok, _, _) = run(&["registry", "pick", "nosuch", "--etcd", &url]);
    assert!(!ok, "no instance is an error");
    lock_and_ids(&["--etcd", &url], "orders");
    drop(etcd);
}
