//! The services as a user runs them: `zs serve` (a real child process) with
//! its store in a temp dir, `zs user …` / `zs msg …`, and the durability test:
//! messages to an offline user while the server is killed with SIGKILL at
//! random points and restarted; every acknowledged message is delivered
//! exactly once, in order.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zserver::services::ServicesClient;
use zserver::ClientBuilder;

mod common;
use common::{free_port, zs};

/// Whether the full-size runs are asked for (`ZS_FULL_TESTS=1`): the issue's
/// sizes, minutes long; CI runs the smaller real versions.
fn full() -> bool {
    std::env::var_os("ZS_FULL_TESTS").is_some_and(|v| v == "1")
}

/// Messages sent through the kill -9 test: the 10,000, always (about
/// 9 s in a debug build at load 6; 2,000 took 1.6 s).
const MESSAGES: u64 = 10_000;

/// Times the server is killed during that test.
const KILLS: usize = 8;

/// The server process; killed (SIGKILL) on drop.
struct Server {
    child: Option<Child>,
    fingerprint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Server {
    fn start(dir: &Path, addr: &str) -> Server {
        // Cheap Argon2id: debug builds hash slowly, and this is not what is tested.
        std::fs::write(
            dir.join("zs.toml"),
            "[services]\npassword_memory_kib = 256\npassword_iterations = 1\n",
        )
        .unwrap();
        let t = Instant::now();
        loop {
            let mut child = zs()
                .args([
                    "serve", "--addr", addr, "--loops", "1", "--config", "zs.toml",
                ])
                .current_dir(dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut fingerprint = None;
            loop {
                let mut line = String::new();
                if out.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(fp) = line.strip_prefix("fingerprint: ") {
                    fingerprint = Some(fp.trim().to_owned());
                }
                if line.starts_with("connect with: ") {
                    // Keep draining stdout so the server never blocks on it.
                    std::thread::spawn(move || {
                        let mut sink = String::new();
                        while out.read_line(&mut sink).unwrap_or(0) > 0 {
                            sink.clear();
                        }
                    });
                    return Server {
                        child: Some(child),
                        fingerprint: fingerprint.expect("fingerprint printed"),
                    };
                }
            }
            // It exited (e.g. the port is still held by the killed one): retry.
            let _ = child.wait();
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "zs serve did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let o = zs().args(args).current_dir(dir).output().unwrap();
    assert!(
        o.status.success(),
        "zs {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// `zs <args> --as <user> --password <password> --addr <addr>`, which must succeed.
fn run_as(dir: &Path, addr: &str, user: &str, password: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["--as", user, "--password", password, "--addr", addr]);
    run_ok(dir, &all)
}

fn run_err(dir: &Path, args: &[&str]) -> String {
    let o = zs().args(args).current_dir(dir).output().unwrap();
    assert!(!o.status.success(), "zs {args:?} should fail");
    String::from_utf8(o.stderr).unwrap()
}

fn connect(addr: &str, fp: &str) -> Result<ServicesClient, String> {
    let mut o = zserver::Options::client();
    o.call_timeout = Some(Duration::from_secs(10));
    o.connect_timeout = Duration::from_secs(2);
    ClientBuilder::new(addr.parse().unwrap())
        .fingerprint(fp.parse().unwrap())
        .options(o)
        .connect()
        .map(ServicesClient::new)
        .map_err(|e| e.to_string())
}

#[test]
fn user_and_msg_verbs_against_zs_serve() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = Server::start(dir.path(), &addr);
    let d = dir.path();
    assert!(d.join("zs-data/admin.password").exists());
    let out = run_ok(
        d,
        &[
            "user",
            "add",
            "ann",
            "--new-password",
            "ann-password",
            "--addr",
            &addr,
        ],
    );
    assert!(out.contains("user ann created"), "{out}");
    // The password from stdin.
    let mut child = zs()
        .args(["user", "add", "bob", "--addr", &addr])
        .current_dir(d)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"bob-password\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let list = run_ok(d, &["user", "list", "--addr", &addr]);
    assert!(
        list.contains("\tadmin\t") && list.contains("\tann\t") && list.contains("\tbob\t"),
        "{list}"
    );

    // ann writes to bob, who is offline.
    let sent = run_as(
        d,
        &addr,
        "ann",
        "ann-password",
        &["msg", "send", "bob", "hello", "bob"],
    );
    assert!(sent.contains("sent to bob"), "{sent}");
    run_as(
        d,
        &addr,
        "ann",
        "ann-password",
        &["msg", "send", "bob", "second"],
    );
    let inbox = run_as(d, &addr, "bob", "bob-password", &["msg", "inbox"]);
    let lines: Vec<&str> = inbox.lines().collect();
    assert_eq!(lines.len(), 3, "{inbox}");
    assert!(
        lines[0].ends_with("ann: hello bob") && lines[1].ends_with("ann: second"),
        "{inbox}"
    );
    assert_eq!(lines[2], "2 message(s)");
    // Acknowledged: gone.
    let inbox = run_as(d, &addr, "bob", "bob-password", &["msg", "inbox"]);
    assert_eq!(inbox.trim(), "0 message(s)");

    // Password reset and disable.
    run_ok(
        d,
        &[
            "user",
            "passwd",
            "bob",
            "--new-password",
            "new-password",
            "--addr",
            &addr,
        ],
    );
    let e = run_err(
        d,
        &[
            "msg",
            "inbox",
            "--as",
            "bob",
            "--password",
            "bob-password",
            "--addr",
            &addr,
        ],
    );
    assert!(e.contains("wrong name or password"), "{e}");
    run_ok(d, &["user", "disable", "bob", "--addr", &addr]);
    let e = run_err(
        d,
        &[
            "msg",
            "inbox",
            "--as",
            "bob",
            "--password",
            "new-password",
            "--addr",
            &addr,
        ],
    );
    assert!(e.contains("disabled"), "{e}");
    run_ok(d, &["user", "disable", "bob", "--enable", "--addr", &addr]);
    run_as(d, &addr, "bob", "new-password", &["msg", "inbox"]);
    // A plain user cannot run admin verbs.
    let e = run_err(
        d,
        &[
            "user",
            "list",
            "--as",
            "ann",
            "--password",
            "ann-password",
            "--addr",
            &addr,
        ],
    );
    assert!(e.contains("admin"), "{e}");
}

/// A small xorshift generator seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn acknowledged_messages_survive_kill_9_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(dir.path(), &addr);
    let d = dir.path();
    run_ok(
        d,
        &[
            "user",
            "add",
            "snd",
            "--new-password",
            "snd-password",
            "--addr",
            &addr,
        ],
    );
    run_ok(
        d,
        &[
            "user",
            "add",
            "rcv",
            "--new-password",
            "rcv-password",
            "--addr",
            &addr,
        ],
    );
    let fp = server.fingerprint.clone();

    // The sender: message i with nonce i + 1, resent after any failure until
    // acknowledged (a resend of a message that was stored is answered "duplicate").
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (a2, s2, addr2, fp2) = (acked.clone(), stop.clone(), addr.clone(), fp.clone());
    let n_messages = MESSAGES;
    let sender = std::thread::spawn(move || {
        let mut client: Option<ServicesClient> = None;
        let mut i = 0;
        let mut resends = 0u64;
        let mut duplicates = 0u64;
        let started = Instant::now();
        while i < n_messages {
            assert!(!s2.load(Ordering::Relaxed), "stopped");
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "sender stuck at {i}"
            );
            let c = match client.take() {
                Some(c) => c,
                None => match connect(&addr2, &fp2).and_then(|c| {
                    c.login("snd", "snd-password").map_err(|e| e.to_string())?;
                    Ok(c)
                }) {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
            };
            match c.send("rcv", i + 1, format!("msg-{i:06}").as_bytes()) {
                Ok(s) => {
                    if s.duplicate {
                        duplicates += 1;
                    }
                    i += 1;
                    a2.store(i, Ordering::SeqCst);
                    client = Some(c);
                }
                Err(e) => {
                    // Only transport failures are expected (the server died).
                    assert_eq!(e.code, zserver::services::code::CLIENT, "{e}");
                    resends += 1;
                    c.close();
                }
            }
        }
        (resends, duplicates)
    });

    let mut rng = Rng::new();
    for k in 0..KILLS {
        // Kill once the sender has made some progress since the last restart.
        let before = acked.load(Ordering::SeqCst);
        let want = before + 1 + rng.below(n_messages / (KILLS as u64 + 2));
        let t = Instant::now();
        while acked.load(Ordering::SeqCst) < want.min(n_messages)
            && t.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        server.kill9();
        println!(
            "kill {k} after {} acknowledged",
            acked.load(Ordering::SeqCst)
        );
        server = Server::start(d, &addr);
        assert_eq!(server.fingerprint, fp, "the identity persists");
    }
    let (resends, duplicates) = sender.join().unwrap_or_else(|e| {
        stop.store(true, Ordering::Relaxed);
        std::panic::resume_unwind(e)
    });
    println!("{resends} sends failed and were resent; {duplicates} of them had been stored");

    // One last kill before the recipient comes: everything is on disk.
    server.kill9();
    let _server = Server::start(d, &addr);
    let rcv = connect(&addr, &fp).unwrap();
    rcv.login("rcv", "rcv-password").unwrap();
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = rcv.fetch(after, 256).unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        got.extend(
            page.into_iter()
                .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
        );
    }
    let want: Vec<String> = (0..n_messages).map(|i| format!("msg-{i:06}")).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "each acknowledged message exactly once"
    );
    assert_eq!(got, want, "in order");
}

/// Size of the file the upload-kill test sends and how often its upload is
/// killed: 2 MiB and 3 times, or the 256 MiB and 20 times with
/// `ZS_FULL_TESTS=1` (130 s in the debug build at load 6-12, session 14: too
/// long for CI; the same resume at 256 MiB with 20 cuts runs in CI through
/// the library, zs-services' files.rs, in seconds).
fn put_size_and_kills() -> (usize, u64) {
    if full() {
        (256 << 20, 20)
    } else {
        // Large enough that the upload (sent at once, hashed beside it)
        // is still running when the 2 ms poll below sees the kill point.
        (2 << 20, 3)
    }
}

#[test]
fn file_put_killed_at_random_points_resumes_to_the_right_file() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = Server::start(dir.path(), &addr);
    let d = dir.path();
    let mut rng = Rng::new();
    let (put_size, kills) = put_size_and_kills();
    let body: Vec<u8> = (0..put_size).map(|_| rng.below(256) as u8).collect();
    std::fs::write(d.join("big.bin"), &body).unwrap();
    let put = [
        "file",
        "put",
        "big.bin",
        "stuff/big.bin",
        "--chunk-kib",
        if full() { "1024" } else { "8" },
        "--quiet",
        "--addr",
        &addr,
    ];
    run_ok(d, &["file", "mkdir", "stuff", "--addr", &addr]);
    // The server's partial file shows how far the upload got: kill the
    // client once it passed a random point further than the last one.
    let held = || -> u64 {
        std::fs::read_dir(d.join("zs-data/files/uploads"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let mut last = 0;
    for k in 0..kills {
        let target = last + 1 + rng.below((put_size as u64 / (kills + 1)).max(1));
        let mut child = zs()
            .args(put)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while held() < target && t.elapsed() < Duration::from_secs(if full() { 120 } else { 30 }) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // Where this run started: nothing the server held when the run
        // before was killed is sent again.
        let start = resumed_at(&err).unwrap_or(0);
        assert!(
            k == 0 || start >= last,
            "run {k} resumed at {start} < {last}: {err}"
        );
        let held_now = held();
        println!(
            "put killed ({k}): resumed at byte {start} (the server held {last} when the run before \
             was killed: 0 bytes it held were re-sent); killed with {held_now} bytes on the server"
        );
        last = held_now;
        assert!(
            last < put_size as u64,
            "the upload finished before the kill"
        );
    }
    let out = run_ok(d, &put);
    println!("{out}");
    let resumed = resumed_at(&out).unwrap_or_else(|| panic!("the rerun resumes: {out}"));
    assert!(resumed >= last && resumed <= put_size as u64, "{out}");
    assert!(
        out.contains(&format!("({} bytes sent)", put_size as u64 - resumed)),
        "the rerun sends exactly what the server lacked: {out}"
    );
    println!(
        "the rerun sent the {} bytes the server lacked; 0 bytes were sent twice",
        put_size as u64 - resumed
    );
    let ls = run_ok(d, &["file", "ls", "stuff", "--addr", &addr]);
    let hash = zserver::crypto::hash::to_hex(&zserver::crypto::hash::sha3_256(&body));
    assert!(ls.contains(&format!("big.bin\t{put_size}\t{hash}")), "{ls}");
    // Download over 4 connections (the default: three attach to the
    // login's session), then over 3 and over 1; then put again: instant.
    for (j, local, says) in [
        (None, "copy.bin", "over 4 connections"),
        (Some("3"), "copy3.bin", "over 3 connections"),
        (Some("1"), "copy1.bin", "over 1 connection,"),
    ] {
        let mut args = vec![
            "file",
            "get",
            "stuff/big.bin",
            local,
            "--chunk-kib",
            "16",
            "--quiet",
            "--addr",
            &addr,
        ];
        if let Some(j) = j {
            args.extend(["-j", j]);
        }
        let out = run_ok(d, &args);
        assert!(
            out.contains(&format!("{put_size} bytes fetched {says}")),
            "{out}"
        );
        assert_eq!(std::fs::read(d.join(local)).unwrap(), body);
        assert!(!d.join(format!("{local}.part.state")).exists());
    }
    let e = run_err(
        d,
        &[
            "file",
            "get",
            "stuff/big.bin",
            "x.bin",
            "-j",
            "9",
            "--addr",
            &addr,
        ],
    );
    assert!(e.contains("9"), "{e}");
    let again = run_ok(
        d,
        &[
            "file",
            "put",
            "big.bin",
            "second.bin",
            "--quiet",
            "--addr",
            &addr,
        ],
    );
    assert!(again.contains("instant upload"), "{again}");
    run_ok(d, &["file", "rm", "second.bin", "--addr", &addr]);
    let ls = run_ok(d, &["file", "ls", "--addr", &addr]);
    assert!(ls.contains("stuff/") && !ls.contains("second.bin"), "{ls}");
    // Delta upload of an edited copy: only the changed block goes.
    let mut v2 = body.clone();
    v2[1000..1100].copy_from_slice(&[7; 100]);
    std::fs::write(d.join("v2.bin"), &v2).unwrap();
    let out = run_ok(
        d,
        &[
            "file",
            "put",
            "v2.bin",
            "stuff/v2.bin",
            "--base",
            "stuff/big.bin",
            "--addr",
            &addr,
        ],
    );
    // 4 KiB blocks asked for; a base of more blocks than one signature
    // answer holds (the 256 MiB one) is matched in 8 KiB blocks.
    let max = zserver::services::files::MAX_SIGNATURE_BLOCKS;
    let block = if (put_size as u64).div_ceil(4096) > max {
        8192
    } else {
        4096
    };
    assert!((put_size as u64).div_ceil(block) <= max);
    assert!(
        out.contains(&format!(
            "delta upload against stuff/big.bin: {block} bytes sent"
        )) && out.contains(&format!("({block}-byte blocks)")),
        "{out}"
    );
    run_ok(
        d,
        &[
            "file",
            "get",
            "stuff/v2.bin",
            "v2copy.bin",
            "--quiet",
            "--addr",
            &addr,
        ],
    );
    assert_eq!(std::fs::read(d.join("v2copy.bin")).unwrap(), v2);
    // Hostile path from the CLI.
    let e = run_err(
        d,
        &["file", "put", "big.bin", "../../etc/x", "--addr", &addr],
    );
    assert!(e.contains("'.' and '..'"), "{e}");
}

/// The offset in a "resum… at byte N" line of `zs file put`.
fn resumed_at(out: &str) -> Option<u64> {
    let rest = out
        .split("resumed at byte ")
        .nth(1)
        .or_else(|| out.split("resuming at byte ").nth(1))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
