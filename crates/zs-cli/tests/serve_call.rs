//! `zs serve` and `zs call` as a user runs them: start the server on a free
//! loopback port, call it (pinned fingerprint, then the key file), stop it with
//! Ctrl-C (SIGINT) and check it shut down cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, zs};

/// Kills the server if the test fails before stopping it.
struct Guard(Option<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn serve_then_call_echo_hello() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = zs()
        .args(["serve", "--addr", &addr, "--loops", "1"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let pid = server.id();
    let mut guard = Guard(Some(server));
    let mut fingerprint = None;
    let mut connect_line = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(fp) = line.strip_prefix("fingerprint: ") {
            fingerprint = Some(fp.trim().to_owned());
        }
        if line.starts_with("connect with: ") {
            connect_line = line;
            break;
        }
    }
    let fp = fingerprint.expect("zs serve prints its fingerprint");
    assert!(fp.starts_with("sha3-256:"), "{fp}");
    assert!(connect_line.contains(&format!(
        "zs call echo hello --addr {addr} --fingerprint {fp}"
    )));
    assert!(dir.path().join("zs-identity.key").exists());

    // Pinned fingerprint, from anywhere.
    let other = tempfile::tempdir().unwrap();
    let o = zs()
        .args([
            "call",
            "echo",
            "hello",
            "--addr",
            &addr,
            "--fingerprint",
            &fp,
        ])
        .current_dir(other.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n");

    // In the server's directory the key file gives the fingerprint.
    let o = zs()
        .args(["call", "ECHO", "two", "words", "--addr", &addr])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "two words\n");

    let o = zs()
        .args(["call", "time", "--addr", &addr])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.len() == 25 && t.contains('T') && t.trim_end().ends_with('Z'),
        "{t}"
    );

    let o = zs()
        .args(["call", "stats", "--addr", &addr])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(s.contains("echo") && s.contains("p99_us"), "{s}");

    // A wrong fingerprint is refused, and so is an unknown command.
    let wrong = format!("sha3-256:{}", "00".repeat(32));
    let o = zs()
        .args([
            "call",
            "echo",
            "x",
            "--addr",
            &addr,
            "--fingerprint",
            &wrong,
        ])
        .current_dir(other.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = zs()
        .args(["call", "nope", "--addr", &addr])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("404"));
    // Without any fingerprint source the error says what to do.
    let o = zs()
        .args(["call", "echo", "x", "--addr", &addr])
        .current_dir(other.path())
        .env_remove("ZS_FINGERPRINT")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--fingerprint"));

    // Ctrl-C: clean shutdown.
    let st = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = guard.0.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(rest.contains("zs serve: stopped"), "{rest}");
}

/// Backends by name are the command line's: an unknown `--backend` is a clear
/// error from `zs serve` and `zs call`, before anything is bound or dialled.
#[test]
fn an_unknown_backend_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let (ok, _, err) = common::run(
        zs().args(["serve", "--addr", &addr, "--backend", "carrier-pigeon"])
            .current_dir(dir.path()),
    );
    assert!(!ok);
    assert!(err.contains("carrier-pigeon"), "{err}");
    let fp = format!("sha3-256:{}", "ab".repeat(32));
    let (ok, _, err) = common::run(zs().args([
        "call",
        "--addr",
        &addr,
        "--fingerprint",
        &fp,
        "--backend",
        "carrier-pigeon",
        "echo",
        "x",
    ]));
    assert!(!ok);
    assert!(err.contains("carrier-pigeon"), "{err}");
}
