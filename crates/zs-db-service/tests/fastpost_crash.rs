//! FastPost against a server process that is `kill -9`'d mid-stream (and links
//! cut repeatedly): every acknowledged record is stored exactly once.
// Linux only: these tests run on the epoll backend and start real programs.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zs_db::Kind;
use zs_db_service::{DbService, EndStatus, FastPostConfig, QuerySpec, ServiceConfig};

const CHILD_ENV: &str = "ZS_DBSVC_CHILD_DIR";

/// Not a test of its own: the server process the crash test starts (this test
/// binary run again with [`CHILD_ENV`] set). Without it, it returns at once.
#[test]
fn child_server() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let service = DbService::open_dir(&dir, ServiceConfig::default()).unwrap();
    let backend = common::backend();
    let server = common::serve(&service, &backend, "127.0.0.1:0".parse().unwrap());
    println!("ADDR {}", server.local_addr());
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &std::path::Path) -> (Proc, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_server", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let proc = Proc(child);
    let mut lines = BufReader::new(out).lines();
    loop {
        let line = lines.next().expect("child ended").unwrap();
        // the harness prints "test child_server ... " before it on the same line
        if let Some(a) = line.split("ADDR ").nth(1) {
            // keep draining the pipe so the child never blocks on it
            std::thread::spawn(move || for _ in lines {});
            return (proc, a.parse().unwrap());
        }
    }
}

/// The size: 1 M records of 100 B, the link cut every 100,000 records
/// and the server `kill -9`'d once, half way.
const TOTAL: u64 = 1_000_000;
const CUT_EVERY: u64 = 100_000;

#[test]
fn fastpost_survives_link_cuts_and_a_kill_9_of_the_server() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, addr) = spawn(dir.path());
    let addr = Arc::new(Mutex::new(addr));
    let db = common::connect(common::backend(), addr.clone());
    db.open("k", true).unwrap();
    let mut fp = db
        .fastpost(
            "k",
            FastPostConfig {
                records_per_message: 128,
                max_unacked: 1 << 20,
                timeout: Duration::from_secs(30),
            },
        )
        .unwrap();
    let mut acked_before_kill = 0;
    let mut v = [b'0'; 100]; // 100 B values carrying their sequence number
    for i in 1..=TOTAL {
        let digits = i.to_string();
        v[100 - digits.len()..].copy_from_slice(digits.as_bytes());
        fp.post(Kind::Raw, &v).unwrap();
        if i % CUT_EVERY == 0 {
            db.connection().drop_link();
        }
        if i == TOTAL / 2 {
            acked_before_kill = fp.acked();
            let _ = proc.0.kill(); // SIGKILL: no flush, no goodbye
            let _ = proc.0.wait();
            let (p, a) = spawn(dir.path());
            proc = p;
            *addr.lock().unwrap() = a;
        }
    }
    fp.flush().unwrap();
    eprintln!("posted {TOTAL} in {:?}", t0.elapsed());
    assert!(
        acked_before_kill > 0,
        "acknowledgements came before the kill"
    );
    assert!(
        fp.reconnects() >= 1,
        "the stream was reopened on the new server"
    );
    assert_eq!(fp.acked(), TOTAL);
    // every acknowledged record present exactly once, read back in batches
    // (not all 1 M held at once)
    let mut seen = vec![false; TOTAL as usize + 1];
    let (mut n, mut dups) = (0u64, 0u64);
    let mut q = db.query(QuerySpec::new("k")).unwrap();
    while let Some(b) = q.next_batch() {
        for r in b.unwrap() {
            let seq: usize = std::str::from_utf8(&r.data).unwrap().parse().unwrap();
            assert!((1..=TOTAL as usize).contains(&seq), "stray record {seq}");
            dups += u64::from(std::mem::replace(&mut seen[seq], true));
            n += 1;
        }
    }
    assert_eq!(dups, 0, "no record stored twice");
    let missing = seen[1..].iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "every acknowledged record present");
    assert_eq!(n, TOTAL);
    assert_eq!(q.end(), Some((EndStatus::Done, TOTAL)));
    eprintln!("checked in {:?}", t0.elapsed());
}
