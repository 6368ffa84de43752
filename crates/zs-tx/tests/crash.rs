//! `kill -9` of a child process during commit storms, in each checkpoint mode; the
//! recovered store must keep exactly what the mode promises (see `Checkpoint`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zs_tx::{Backend, Db, Options, ZdbBackend};

const WORKERS: u32 = 4;
const INIT: u64 = 1_000_000;

/// Runs the child until it has promised `promises` things (or 3 s), kills it with
/// SIGKILL, and returns the largest promised count per worker.
fn storm(dir: &std::path::Path, mode: &str, promises: usize) -> Vec<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zs-tx-crash-child"))
        .arg(dir)
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut promised = vec![0u64; WORKERS as usize];
    let start = Instant::now();
    let mut seen = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "ack" => {
                let (w, n): (usize, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                promised[w] = promised[w].max(n);
            }
            "durable" => {
                for (w, n) in f[1..].iter().enumerate() {
                    promised[w] = promised[w].max(n.parse().unwrap());
                }
            }
            _ => panic!("unexpected line {line}"),
        }
        seen += 1;
        if seen >= promises || start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    child.kill().expect("kill -9"); // SIGKILL on unix
    child.wait().unwrap();
    promised
}

/// Opens what the child left and checks: money conserved (every transaction all or
/// nothing), each worker's source account matches its sequence number (no partial
/// transaction), and every promised transaction is there. Returns the sequences.
fn recover_and_check(dir: &std::path::Path, promised: &[u64]) -> Vec<u64> {
    let b: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir, "crash").unwrap());
    let db = Db::open(b, Options::default()).unwrap();
    let acc = db.table::<u32, u64>("acc");
    let seq = db.table::<u32, u64>("seq");
    let bal: Vec<u64> = (0..2 * WORKERS)
        .map(|i| acc.peek(&i).unwrap().unwrap())
        .collect();
    let seqs: Vec<u64> = (0..WORKERS)
        .map(|w| seq.peek(&w).unwrap().unwrap())
        .collect();
    assert_eq!(
        bal.iter().sum::<u64>(),
        2 * WORKERS as u64 * INIT,
        "money conserved: {bal:?}"
    );
    for w in 0..WORKERS as usize {
        assert_eq!(
            bal[2 * w],
            INIT - seqs[w],
            "worker {w}: partial transaction"
        );
        assert!(
            seqs[w] >= promised[w],
            "worker {w}: promised {} but recovered {}",
            promised[w],
            seqs[w]
        );
    }
    db.close().unwrap();
    seqs
}

fn crash_rounds(mode: &str, promises: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut last = vec![0u64; WORKERS as usize];
    for round in 0..3 {
        let promised = storm(dir.path(), mode, promises);
        let seqs = recover_and_check(dir.path(), &promised);
        assert!(
            seqs.iter().zip(&last).all(|(a, b)| a >= b),
            "round {round}: went backwards {last:?} -> {seqs:?}"
        );
        assert!(
            seqs.iter().sum::<u64>() > last.iter().sum::<u64>(),
            "round {round}: no progress"
        );
        last = seqs;
    }
}

#[test]
fn kill_9_immediate_keeps_every_acknowledged_commit() {
    crash_rounds("immediate", 200);
}

#[test]
fn kill_9_periodic_keeps_a_consistent_prefix_through_the_last_checkpoint() {
    crash_rounds("periodic", 15);
}

#[test]
fn kill_9_record_sets_keeps_whole_transactions_through_the_last_checkpoint() {
    crash_rounds("sets", 15);
}
