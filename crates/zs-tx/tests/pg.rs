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

/// The cluster the tests running at the same time share (initdb costs 3-4 s on the
/// loaded 2-core machine); it stops when the last of them drops it.
static SHARED: std::sync::Mutex<std::sync::Weak<Cluster>> =
    std::sync::Mutex::new(std::sync::Weak::new());

impl Cluster {
    /// The running shared cluster, or a new one (`None`: PostgreSQL not installed
    /// and not in CI).
    fn get() -> Option<Arc<Cluster>> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = shared.upgrade() {
            return Some(c);
        }
        let c = Arc::new(Cluster::start()?);
        *shared = Arc::downgrade(&c);
        Some(c)
    }

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
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100",
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
    let Some(c) = Cluster::get() else { return };
    eprintln!("cluster up after {:?}", t0.elapsed());
    // immediate mode: every transfer is one PostgreSQL transaction
    {
        let (db, _) = open(&c, Checkpoint::Immediate);
        let r = run_bank(
            &db,
            Bank {
                transfers: 25,
                ..Bank::sized(25)
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
    let r = run_bank(&db, Bank::sized(250));
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

fn shared(c: &Cluster, table: &str, log_keep: Option<i64>) -> Db {
    let b = Arc::new(PgBackend::connect_shared(&c.params(), table, 4, log_keep).unwrap());
    Db::open(b as Arc<dyn Backend>, Options::default()).unwrap()
}

/// Several application servers on one database: two engines in this process, then
/// two `zs-tx-bank-node` processes running the bank at once.
#[test]
fn postgres_shared_by_several_servers() {
    let Some(c) = Cluster::get() else { return };
    // --- two engines in one process: coherence, listeners, lost updates ---------
    let a = shared(&c, "sh", None);
    let b = shared(&c, "sh", None);
    let (ta, tb) = (
        a.table::<u32, u64>("counters"),
        b.table::<u32, u64>("counters"),
    );
    let (seen_tx, seen) = std::sync::mpsc::channel();
    tb.listen(move |ts, k, v| seen_tx.send((ts, k, v)).unwrap());
    a.run(|tx| ta.put(tx, &7, &70)).unwrap();
    b.sync().unwrap();
    assert_eq!(
        tb.peek(&7).unwrap(),
        Some(70),
        "b sees a's commit after sync"
    );
    let (ts, k, v) = seen
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        (ts, k, v),
        (1, 7, Some(70)),
        "b's listener got a's commit, numbered"
    );
    // b's cache is stale on purpose (no sync): its read-modify-write must not lose
    // a's second update
    a.run(|tx| {
        let x = ta.get(tx, &7)?.unwrap();
        ta.put(tx, &7, &(x + 1))
    })
    .unwrap();
    b.run(|tx| {
        let x = tb.get(tx, &7)?.unwrap();
        tb.put(tx, &7, &(x + 10))
    })
    .unwrap();
    a.sync().unwrap();
    assert_eq!(
        ta.peek(&7).unwrap(),
        Some(81),
        "no lost update across servers"
    );
    // concurrent increments from both engines on a hot record
    std::thread::scope(|s| {
        for (db, t) in [(&a, &ta), (&b, &tb)] {
            s.spawn(move || {
                for _ in 0..25 {
                    db.run(|tx| {
                        let x = t.get(tx, &1)?.unwrap_or(0);
                        t.put(tx, &1, &(x + 1))
                    })
                    .unwrap();
                }
            });
        }
    });
    a.sync().unwrap();
    b.sync().unwrap();
    assert_eq!(ta.peek(&1).unwrap(), Some(50));
    assert_eq!(tb.peek(&1).unwrap(), Some(50));
    // removals travel too
    a.run(|tx| ta.remove(tx, &7)).unwrap();
    b.sync().unwrap();
    assert_eq!(tb.peek(&7).unwrap(), None);
    // a shared store only takes immediate commits
    let pb = Arc::new(PgBackend::connect_shared(&c.params(), "sh", 1, None).unwrap());
    let e = Db::open(
        pb as Arc<dyn Backend>,
        Options {
            checkpoint: Checkpoint::Periodic(std::time::Duration::from_millis(10)),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, zs_tx::Error::Abort(_)), "{e}");
    b.close().unwrap();
    a.close().unwrap();

    // --- an engine that lags past the pruned log reloads -------------------------
    let a = shared(&c, "lag", Some(1));
    let b = shared(&c, "lag", Some(1));
    let (ta, tb) = (
        a.table::<u32, u64>("counters"),
        b.table::<u32, u64>("counters"),
    );
    for i in 0..20u32 {
        a.run(|tx| ta.put(tx, &(i % 10), &u64::from(i))).unwrap();
    }
    // the log keeps one commit: reading from the start finds the gap
    let pb = PgBackend::connect_shared(&c.params(), "lag", 1, Some(1)).unwrap();
    let mut fed = 0;
    let r = zs_tx::Shared::changes(&pb, 0, &mut |_, _| fed += 1).unwrap();
    assert_eq!((r, fed), (None, 0), "a gap is reported, nothing fed");
    // b (following, or reloading when it fell behind the pruned log) converges,
    // and its own commits still go through
    b.sync().unwrap();
    assert_eq!(tb.peek(&9).unwrap(), Some(19));
    b.run(|tx| {
        let x = tb.get(tx, &9)?.unwrap();
        tb.put(tx, &9, &(x + 1))
    })
    .unwrap();
    a.sync().unwrap();
    assert_eq!(ta.peek(&9).unwrap(), Some(20));
    a.close().unwrap();
    b.close().unwrap();

    // --- two processes, the bank on both at once -----------------------------------
    let seeder = shared(&c, "bank_mp", None);
    let acc = seeder.table::<u32, u64>("accounts");
    seeder
        .run(|tx| {
            for i in 0..1000u32 {
                acc.put(tx, &i, &100)?;
            }
            Ok(())
        })
        .unwrap();
    seeder.close().unwrap();
    drop(acc);
    let full = std::env::var_os("ZS_TX_BANK_FULL").is_some();
    let (writers, transfers) = if full { ("4", "500") } else { ("2", "25") };
    let t0 = std::time::Instant::now();
    let mut nodes: Vec<std::process::Child> = (0..2)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_zs-tx-bank-node"))
                .args([
                    &c.params(),
                    "bank_mp",
                    writers,
                    transfers,
                    &(i + 1).to_string(),
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outs: Vec<std::io::BufReader<std::process::ChildStdout>> = Vec::new();
    for n in &mut nodes {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(n.stdout.take().unwrap());
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "ready");
        outs.push(out);
    }
    for n in &mut nodes {
        use std::io::Write;
        writeln!(n.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut deltas = vec![0i64; 1000];
    let mut moved = 0u64;
    for (n, out) in nodes.iter_mut().zip(outs) {
        use std::io::BufRead;
        let lines: Vec<String> = out.lines().map(|l| l.unwrap()).collect();
        assert!(n.wait().unwrap().success(), "node failed: {lines:?}");
        let r: Vec<u64> = lines[0]
            .strip_prefix("report ")
            .unwrap()
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        eprintln!(
            "node: transfers {} body reads {} (bad {}) committed reads {} (bad {}) redos {}",
            r[0], r[1], r[2], r[3], r[4], r[5]
        );
        assert_eq!(r[2], 0, "a body read saw a wrong total");
        assert_eq!(r[4], 0, "a committed read saw a wrong total");
        assert!(r[0] > 0 && r[3] >= 2);
        moved += r[0];
        for (d, x) in deltas
            .iter_mut()
            .zip(lines[1].strip_prefix("deltas ").unwrap().split(' '))
        {
            *d += x.parse::<i64>().unwrap();
        }
    }
    eprintln!(
        "two processes: {moved} transfers committed in {:?}",
        t0.elapsed()
    );
    let check = shared(&c, "bank_mp", None);
    let acc = check.table::<u32, u64>("accounts");
    for (i, d) in deltas.iter().enumerate() {
        assert_eq!(
            acc.peek(&(i as u32)).unwrap().unwrap() as i64,
            100 + d,
            "account {i}: lost update"
        );
    }
    check.close().unwrap();
}
