//! `cargo run --release -p zs-db --example crash_db -- --cycles N [--dir PATH] [--seed S]`:
//! the crash test with any number of SIGKILL cycles (what `cargo xtask crash-db` runs).

#[path = "../tests/common/crash.rs"]
mod crash;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let dir = args.get(1).expect("--child DIR SEED");
        let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
        crash::child(std::path::Path::new(dir), seed);
    }
    let mut cycles = 200u32;
    let mut dir: Option<std::path::PathBuf> = None;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cycles" => cycles = it.next().and_then(|s| s.parse().ok()).unwrap_or(cycles),
            "--dir" => dir = it.next().map(Into::into),
            "--seed" => seed = it.next().and_then(|s| s.parse().ok()).unwrap_or(seed),
            other => {
                eprintln!(
                    "unknown argument {other:?} (accepted: --cycles N, --dir PATH, --seed S)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = std::env::temp_dir().join(format!("zs-db-crash-{}", std::process::id()));
            tmp
        }
    };
    let _ = std::fs::create_dir_all(&dir);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("current_exe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let spawn = move |d: &std::path::Path, s: u64| {
        let mut c = Command::new(&exe);
        c.arg("--child").arg(d).arg(s.to_string());
        c
    };
    let res = crash::parent(&dir, cycles, seed, &spawn);
    let _ = std::fs::remove_dir_all(&dir);
    match res {
        Ok(summary) => {
            println!("crash-db: OK: {summary} (seed {seed})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crash-db: FAILED (seed {seed}): {e}");
            ExitCode::FAILURE
        }
    }
}
