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
use zs_db_service::{DbService, FastPostConfig, QuerySpec, ServiceConfig};

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

#[test]
fn fastpost_survives_link_cuts_and_a_kill_9_of_the_server() {
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
    let total = 30_000u64;
    let mut acked_before_kill = 0;
    for i in 1..=total {
        let v = format!("{i:0100}"); // 100 B values carrying their sequence number
        fp.post(Kind::Raw, v.as_bytes()).unwrap();
        if i % 4_000 == 0 {
            db.connection().drop_link();
        }
        if i == total / 2 {
            acked_before_kill = fp.acked();
            let _ = proc.0.kill(); // SIGKILL: no flush, no goodbye
            let _ = proc.0.wait();
            let (p, a) = spawn(dir.path());
            proc = p;
            *addr.lock().unwrap() = a;
        }
    }
    fp.flush().unwrap();
    assert!(
        acked_before_kill > 0,
        "acknowledgements came before the kill"
    );
    assert!(
        fp.reconnects() >= 1,
        "the stream was reopened on the new server"
    );
    assert_eq!(fp.acked(), total);
    let all = db
        .query(QuerySpec::new("k"))
        .unwrap()
        .collect_all()
        .unwrap();
    let mut seqs: Vec<u64> = all
        .iter()
        .map(|r| std::str::from_utf8(&r.data).unwrap().parse().unwrap())
        .collect();
    seqs.sort();
    let dups = seqs.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dups, 0, "no record stored twice");
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "every record present"
    );
}
