//! The crash test shared by `tests/crash.rs` (50 cycles under `cargo test`) and
//! `examples/crash_db.rs` (`cargo xtask crash-db --cycles N`).
//!
//! A child process writes with immediate durability and prints every acknowledged
//! operation; the parent SIGKILLs it at a random moment, reopens the store and checks
//! that every acknowledged record is present and intact, nothing deleted came back,
//! and every record in the store passes its self-check.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zs_db::{Batch, Database, DbOptions, DirVfs, Durability, Kind, Vfs};

pub const DB: &str = "crash";

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A self-checking payload: 4 bytes CRC-32 of the rest, then pseudo-random bytes.
fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = 4 + rng.below(1500) as usize;
    let mut v = vec![0u8; len];
    for b in &mut v[4..] {
        *b = rng.next() as u8;
    }
    let crc = crc(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    v
}

fn crc(b: &[u8]) -> u32 {
    // FNV-1a 32: independent of the store's own checksum
    let mut h: u32 = 0x811c_9dc5;
    for x in b {
        h ^= *x as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn self_check(v: &[u8]) -> bool {
    v.len() >= 4 && u32::from_le_bytes([v[0], v[1], v[2], v[3]]) == crc(&v[4..])
}

/// The child's options: immediate durability, and a write buffer small enough that
/// the big batches (up to ~210 KB) go out in several pieces while they are encoded.
fn options() -> DbOptions {
    DbOptions {
        durability: Durability::Immediate,
        write_buffer: 64 << 10,
        ..Default::default()
    }
}

fn open_or_create(dir: &Path) -> Database {
    let vfs: std::sync::Arc<dyn Vfs> = std::sync::Arc::new(DirVfs::new(dir).expect("dir"));
    match Database::open_with(vfs.clone(), DB, options()) {
        Ok(db) => db,
        Err(zs_db::Error::NoSuchDatabase(_)) => {
            Database::create(vfs, DB, options()).expect("create")
        }
        Err(e) => panic!("open: {e}"),
    }
}

/// The child: writes forever, printing `A id sum`, `u id sum`/`U id`, `d id`/`D id`.
pub fn child(dir: &Path, seed: u64) -> ! {
    let db = open_or_create(dir);
    let mut rng = Rng(seed | 1);
    let mut mine: Vec<u64> = Vec::new();
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    say("READY".into());
    loop {
        let r = rng.below(100);
        if r < 60 || mine.is_empty() {
            let p = payload(&mut rng);
            let id = db.insert(Kind::Raw, &p).expect("insert");
            mine.push(id);
            say(format!("A {id} {}", crc(&p)));
        } else if r < 75 {
            let mut b = Batch::new();
            // one batch in fifteen is big: larger than the write buffer
            let n = if r < 61 {
                40 + rng.below(100)
            } else {
                2 + rng.below(20)
            };
            let ps: Vec<Vec<u8>> = (0..n).map(|_| payload(&mut rng)).collect();
            for p in &ps {
                b.insert(Kind::Raw, p.clone());
            }
            let ids = db.commit(&b).expect("batch");
            for (id, p) in ids.iter().zip(&ps) {
                mine.push(*id);
                say(format!("A {id} {}", crc(p)));
            }
        } else if r < 87 {
            let id = mine.swap_remove(rng.below(mine.len() as u64) as usize);
            say(format!("d {id}"));
            db.delete(id).expect("delete");
            say(format!("D {id}"));
        } else if r < 99 {
            let id = mine[rng.below(mine.len() as u64) as usize];
            let p = payload(&mut rng);
            say(format!("u {id} {}", crc(&p)));
            db.update(id, Kind::Raw, &p).expect("update");
            say(format!("U {id}"));
        } else {
            db.compact().expect("compact");
        }
    }
}

/// What the parent knows about one id.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Known {
    Alive(u32),
    Deleted,
    /// an update or delete was in flight when the child died: either state is fine
    Either(Option<u32>, Option<u32>),
}

/// Runs `cycles` kill/reopen cycles in `dir`; `spawn` builds the child command for (dir, seed).
pub fn parent(
    dir: &Path,
    cycles: u32,
    seed: u64,
    spawn: &dyn Fn(&Path, u64) -> Command,
) -> Result<String, String> {
    let mut rng = Rng(seed | 1);
    let mut model: HashMap<u64, Known> = HashMap::new();
    let mut acked_total = 0u64;
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut cmd = spawn(dir, rng.next());
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("spawn child: {e}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let mut lines = Vec::new();
        // wait for the child to open the store, then let it write for a random while
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => {
                    let ready = l.ends_with("READY");
                    lines.push(l);
                    if ready {
                        break;
                    }
                }
                Err(_) if Instant::now() > deadline => {
                    let _ = child.kill();
                    return Err(format!("cycle {cycle}: child never became ready"));
                }
                Err(_) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(format!("cycle {cycle}: child exited early: {st}"));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_micros(5000 + rng.below(75_000)));
        child.kill().map_err(|e| format!("kill: {e}"))?; // SIGKILL on unix
        let _ = child.wait();
        let _ = reader.join();
        lines.extend(rx.try_iter());
        // apply acknowledgements
        for l in &lines {
            let mut it = l.split_whitespace();
            let (Some(tag), Some(id)) = (it.next(), it.next().and_then(|s| s.parse::<u64>().ok()))
            else {
                continue;
            };
            let sum = it.next().and_then(|s| s.parse::<u32>().ok());
            let cur = model.get(&id).copied();
            let cur_alive = match cur {
                Some(Known::Alive(s)) => Some(s),
                _ => None,
            };
            match (tag, sum) {
                ("A", Some(s)) => {
                    acked_total += 1;
                    model.insert(id, Known::Alive(s));
                }
                ("u", Some(s)) => {
                    model.insert(id, Known::Either(cur_alive, Some(s)));
                }
                ("U", _) => {
                    if let Some(Known::Either(_, Some(s))) = cur {
                        acked_total += 1;
                        model.insert(id, Known::Alive(s));
                    }
                }
                ("d", _) => {
                    model.insert(id, Known::Either(cur_alive, None));
                }
                ("D", _) => {
                    acked_total += 1;
                    model.insert(id, Known::Deleted);
                }
                _ => {}
            }
        }
        // reopen and verify
        let vfs: std::sync::Arc<dyn Vfs> =
            std::sync::Arc::new(DirVfs::new(dir).map_err(|e| e.to_string())?);
        let db =
            Database::open(vfs, DB).map_err(|e| format!("cycle {cycle}: reopen failed: {e}"))?;
        if !db.open_report().corrupt.is_empty() {
            return Err(format!(
                "cycle {cycle}: corrupt regions after kill: {:?}",
                db.open_report().corrupt
            ));
        }
        for (id, k) in model.iter_mut() {
            let got = db
                .get(*id)
                .map_err(|e| format!("cycle {cycle}: get {id}: {e}"))?;
            let got_sum = match &got {
                Some(r) => {
                    if !self_check(&r.data) {
                        return Err(format!("cycle {cycle}: record {id} fails its self-check"));
                    }
                    Some(crc(&r.data))
                }
                None => None,
            };
            let ok = match *k {
                Known::Alive(s) => got_sum == Some(s),
                Known::Deleted => got_sum.is_none(),
                Known::Either(a, b) => got_sum == a || got_sum == b,
            };
            if !ok {
                return Err(format!(
                    "cycle {cycle}: record {id}: expected {k:?}, found {got_sum:?}"
                ));
            }
            *k = match got_sum {
                Some(s) => Known::Alive(s),
                None => Known::Deleted,
            };
        }
        for r in db.cursor(1, false) {
            let r = r.map_err(|e| format!("cycle {cycle}: cursor: {e}"))?;
            if !self_check(&r.data) {
                return Err(format!(
                    "cycle {cycle}: record {} fails its self-check",
                    r.id
                ));
            }
            model.entry(r.id).or_insert(Known::Alive(crc(&r.data)));
        }
    }
    Ok(format!(
        "{cycles} kill cycles, {acked_total} acknowledged operations verified, {} ids tracked, {:.1} s",
        model.len(),
        started.elapsed().as_secs_f64()
    ))
}
