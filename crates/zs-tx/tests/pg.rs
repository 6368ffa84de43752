//! The PostgreSQL backend on a private cluster (initdb + pg_ctl in a temp dir, as
//! user `postgres` when we are root): the bank test, durability across reopen, and
//! the stored versions.
// Unix only: the test starts a private PostgreSQL cluster as user `postgres`.
#![cfg(unix)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{run_bank, Bank};
use zs_tx::{Backend, Checkpoint, Db, Options, PgBackend};

/// `initdb`/`pg_ctl`: on PATH, or in Debian's /usr/lib/postgresql/*/bin.
fn pg_bin(name: &str) -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// A private PostgreSQL cluster, stopped on drop.
struct Cluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    pg_ctl: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let (Some(initdb), Some(pg_ctl)) = (pg_bin("initdb"), pg_bin("pg_ctl")) else {
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL (initdb, pg_ctl) not installed");
            }
            eprintln!("skipped: postgresql not installed");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL refuses to run as root: run it as `postgres`
        let me = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1);
        let run_as = if me == 0 {
            let out = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap();
            let uid: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("user postgres");
            let out = Command::new("id")
                .args(["-g", "postgres"])
                .output()
                .unwrap();
            let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            Some((uid, gid))
        } else {
            None
        };
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cmd = |p: &Path| {
            let mut c = Command::new(p);
            if let Some((u, g)) = run_as {
                c.uid(u).gid(g);
            }
            c.current_dir(dir.path());
            c
        };
        let ok = cmd(&initdb)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let ok = cmd(&pg_ctl)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=40",
                dir.path().display()
            ))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        Some(Cluster {
            _dir: dir,
            data,
            pg_ctl,
            run_as,
            port,
        })
    }

    fn params(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = Command::new(&self.pg_ctl);
        if let Some((u, g)) = self.run_as {
            c.uid(u).gid(g);
        }
        let _ = c
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn open(c: &Cluster, checkpoint: Checkpoint) -> (Db, Arc<PgBackend>) {
    open_table(c, checkpoint, "zs_tx_kv")
}

fn open_table(c: &Cluster, checkpoint: Checkpoint, table: &str) -> (Db, Arc<PgBackend>) {
    let b = Arc::new(PgBackend::connect(&c.params(), table, 8).unwrap());
    let db = Db::open(
        b.clone() as Arc<dyn Backend>,
        Options {
            checkpoint,
            ..Options::default()
        },
    )
    .unwrap();
    (db, b)
}

#[test]
fn postgres_backend_bank_and_durability() {
    let t0 = std::time::Instant::now();
    let Some(c) = Cluster::start() else { return };
    eprintln!("cluster up after {:?}", t0.elapsed());
    // immediate mode: every transfer is one PostgreSQL transaction
    {
        let (db, _) = open(&c, Checkpoint::Immediate);
        let r = run_bank(
            &db,
            Bank {
                transfers: 40,
                ..Bank::sized(40)
            },
        );
        assert_eq!(r.committed_violations + r.body_violations, 0, "{r:?}");
        assert!(r.transfers_committed > 0);
    }
    eprintln!("immediate bank done after {:?}", t0.elapsed());
    // reopened: the store holds exactly the final balances
    let (db, b) = open(
        &c,
        Checkpoint::Periodic(std::time::Duration::from_millis(20)),
    );
    let t = common::accounts(&db);
    let sum: u64 = (0..1000).map(|i| t.peek(&i).unwrap().unwrap()).sum();
    assert_eq!(sum, 100_000);
    // versions count the writes of a record
    let key = 0u32.to_be_bytes();
    let v0 = b.version("accounts", &key).unwrap().unwrap();
    db.run(|tx| {
        let a = t.get(tx, &0)?.unwrap();
        t.put(tx, &0, &(a + 1))
    })
    .unwrap();
    db.checkpoint().unwrap();
    assert_eq!(b.version("accounts", &key).unwrap(), Some(v0 + 1));
    db.run(|tx| t.remove(tx, &0)).unwrap();
    db.close().unwrap();
    assert_eq!(b.version("accounts", &key).unwrap(), None);
    drop(db);
    // and the periodic mode runs the bank too (a fresh table), and keeps it
    let (db, _) = open_table(
        &c,
        Checkpoint::Periodic(std::time::Duration::from_millis(20)),
        "bank2",
    );
    let r = run_bank(&db, Bank::sized(500));
    assert_eq!(r.committed_violations + r.body_violations, 0, "{r:?}");
    let before: Vec<u64> = (0..1000)
        .map(|i| common::accounts(&db).peek(&i).unwrap().unwrap())
        .collect();
    db.close().unwrap();
    drop(db);
    let (db, _) = open_table(&c, Checkpoint::Immediate, "bank2");
    let after: Vec<u64> = (0..1000)
        .map(|i| common::accounts(&db).peek(&i).unwrap().unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn postgres_backend_rejects_bad_table_names() {
    // checked before connecting: no cluster needed
    for bad in ["", "a b", "x;drop", "1abc"] {
        let e = PgBackend::connect("host=127.0.0.1 port=1", bad, 1).unwrap_err();
        assert!(matches!(e, zs_tx::Error::Abort(_)), "{bad:?}: {e}");
    }
}
