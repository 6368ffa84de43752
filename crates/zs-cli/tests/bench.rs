//! `zs bench rpc|stream|conns` against a real `zs serve`: each run small, the
//! summary table parsed, its counts checked against what was asked, and a run
//! against the wrong fingerprint reported as a failure.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, zs, Guard};

/// Starts `zs serve` in `dir`; returns the guard once it printed its connect line.
fn serve(dir: &Path, addr: &str) -> Guard {
    let mut child = zs()
        .args(["serve", "--addr", addr, "--loops", "1"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let guard = Guard(child);
    let start = Instant::now();
    let mut commands = String::new();
    while start.elapsed() < Duration::from_secs(30) {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.starts_with("commands: ") {
            commands = line;
            break;
        }
    }
    assert!(commands.contains("bigsink"), "{commands:?}");
    // Keep draining the server's stdout so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    guard
}

/// One parsed summary row.
#[derive(Debug)]
struct Row {
    bench: String,
    count: u64,
    errors: u64,
    seconds: f64,
    throughput: f64,
    unit: String,
    p: [u64; 3],
}

fn parse(stdout: &str) -> Row {
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(
        lines[0],
        [
            "bench",
            "count",
            "errors",
            "seconds",
            "throughput",
            "unit",
            "p50_us",
            "p90_us",
            "p99_us"
        ]
    );
    let r = &lines[1];
    assert_eq!(r.len(), 9, "{stdout}");
    Row {
        bench: r[0].into(),
        count: r[1].parse().unwrap(),
        errors: r[2].parse().unwrap(),
        seconds: r[3].parse().unwrap(),
        throughput: r[4].parse().unwrap(),
        unit: r[5].into(),
        p: [
            r[6].parse().unwrap(),
            r[7].parse().unwrap(),
            r[8].parse().unwrap(),
        ],
    }
}

fn bench(dir: &Path, args: &[&str]) -> (Row, String) {
    let o = zs()
        .arg("bench")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?}: {stderr}");
    (parse(&String::from_utf8_lossy(&o.stdout)), stderr)
}

fn check(r: &Row, bench: &str, count: u64, unit: &str) {
    assert_eq!(r.bench, bench);
    assert_eq!(r.count, count, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.unit, unit);
    assert!(r.seconds > 0.0 && r.throughput > 0.0, "{r:?}");
    assert!(r.p[0] <= r.p[1] && r.p[1] <= r.p[2], "{r:?}");
}

#[test]
fn bench_rpc_stream_conns_against_serve() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = serve(dir.path(), &addr);

    // In the server's directory the key file gives the fingerprint, as for `zs call`.
    let (r, stderr) = bench(
        dir.path(),
        &[
            "rpc",
            "--count",
            "2000",
            "--concurrency",
            "16",
            "--addr",
            &addr,
        ],
    );
    check(&r, "rpc", 2000, "calls/s");
    assert!(r.p[2] > 0, "{r:?}");
    // Not a terminal: no progress bar drawn.
    assert!(stderr.is_empty(), "{stderr}");

    let (r, _) = bench(
        dir.path(),
        &[
            "stream", "--count", "2", "--bytes", "3000001", "--addr", &addr,
        ],
    );
    check(&r, "stream", 2, "MB/s");

    let (r, _) = bench(
        dir.path(),
        &[
            "conns",
            "--count",
            "40",
            "--concurrency",
            "4",
            "--hold",
            "0.2",
            "--addr",
            &addr,
        ],
    );
    check(&r, "conns", 40, "conns/s");

    // The server saw the calls: its statistics count at least the 2000 echoes.
    let o = zs()
        .args(["call", "stats", "--addr", &addr])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&o.stdout).to_string();
    let echo = stats
        .lines()
        .find(|l| l.split_whitespace().next() == Some("echo"))
        .unwrap_or_else(|| panic!("{stats}"));
    let calls: u64 = echo
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .next()
        .unwrap_or_else(|| panic!("{echo}"));
    assert!(calls >= 2000, "{stats}");

    // A wrong fingerprint: no session, a clear error, a failing exit status.
    let wrong = format!("sha3-256:{}", "00".repeat(32));
    let o = zs()
        .args([
            "bench",
            "rpc",
            "--count",
            "10",
            "--addr",
            &addr,
            "--fingerprint",
            &wrong,
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect"));
}
