//! `zs serve --legacy-addr` against the original ZNet client (`znet_cli --mode
//! full`), and `zs call --legacy` against both our legacy listener and the
//! original server (`znet_serv`). The ZNet programs are built by
//! `zserver::legacy::peers` (skipped without Free Pascal unless `CI` is set).
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{free_port, zs, Guard};

fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line containing {needle:?}"));
        if l.contains(needle) {
            return l;
        }
    }
}

fn call(args: &[&str]) -> (bool, String) {
    let out = zs().arg("call").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn serve_legacy_addr_passes_the_original_client_and_zs_call_legacy() {
    let Some(peers) = zserver::legacy::peers::znet_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let legacy = format!("127.0.0.1:{}", free_port());
    let mut child = zs()
        .args([
            "serve",
            "--addr",
            &addr,
            "--loops",
            "1",
            "--no-services",
            "--legacy-addr",
            &legacy,
            "--legacy-ciphers",
            "performance",
            "--legacy-compress",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let _guard = Guard(child);
    wait_for(&out, "legacy: ZServer4D/ZNet clients on");
    wait_for(&err, "sends each connection's cipher key in clear");
    let port = legacy.rsplit(':').next().unwrap();
    // --legacy-compress: our answers are zlib DFEs, which the original client
    // reads in its default profile; in maxsec it compresses its own requests.
    for profile in ["default", "maxsec"] {
        let r = Command::new(peers.join("znet_cli"))
            .args(["127.0.0.1", port, "--mode", "full", "--linger", "0"])
            .args(["--profile", profile])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(r.status.success(), "{profile}: {text}");
        assert!(text.contains("done, 0 failed"), "{text}");
    }

    let (ok, text) = call(&[
        "--legacy",
        "--addr",
        &legacy,
        "helloWorld_ConsoleResult",
        "abc",
    ]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "console result abc");
    // The built-in `echo` of zs serve answers legacy clients too: one registry.
    let (ok, text) = call(&["--legacy", "--addr", &legacy, "echo", "same", "handler"]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "same handler");
    let (ok, text) = call(&[
        "--legacy",
        "--legacy-stream",
        "--addr",
        &legacy,
        "echo_Stream",
        "a",
        "b",
    ]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "a\nb");
    let (ok, text) = call(&[
        "--legacy",
        "--legacy-direct",
        "--addr",
        &legacy,
        "helloWorld_Console",
        "hi",
    ]);
    assert!(ok, "{text}");
}

#[test]
fn zs_call_legacy_against_the_original_server() {
    let Some(peers) = zserver::legacy::peers::znet_dir() else {
        return;
    };
    let mut child = Command::new(peers.join("znet_serv"))
        .args(["0", "--profile", "maxperf", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = lines(child.stdout.take().unwrap());
    let _guard = Guard(child);
    let l = wait_for(&out, "listening on 127.0.0.1:");
    let port = l
        .split("listening on 127.0.0.1:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let (ok, text) = call(&[
        "--legacy",
        "--addr",
        &addr,
        "helloWorld_ConsoleResult",
        "from zs",
    ]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "console result from zs");
    let (ok, text) = call(&[
        "--legacy",
        "--legacy-stream",
        "--addr",
        &addr,
        "helloWorld_Stream_Result",
        "x",
    ]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "result 654321");
    // Nothing listens here: a clear error.
    let (ok, text) = call(&[
        "--legacy",
        "--addr",
        &format!("127.0.0.1:{}", free_port()),
        "--timeout",
        "2",
        "x",
    ]);
    assert!(!ok);
    assert!(text.contains("cannot connect"), "{text}");
}
