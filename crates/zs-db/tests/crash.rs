//! Crash test: a child process writing with immediate durability is SIGKILLed at
//! random moments, 50 times; after each kill every acknowledged record must be there
//! and intact (see `tests/common/crash.rs`).

#[path = "common/crash.rs"]
mod crash;

use std::process::Command;

#[test]
#[ignore = "the child process of `crash_50_cycles`; started by it with --ignored"]
fn crash_child() {
    let dir = std::env::var("ZS_DB_CRASH_DIR").expect("ZS_DB_CRASH_DIR");
    let seed: u64 = std::env::var("ZS_DB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    crash::child(std::path::Path::new(&dir), seed);
}

#[test]
fn crash_50_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let spawn = move |d: &std::path::Path, seed: u64| {
        let mut c = Command::new(&exe);
        c.args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ZS_DB_CRASH_DIR", d)
        .env("ZS_DB_CRASH_SEED", seed.to_string());
        c
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    match crash::parent(dir.path(), 50, seed, &spawn) {
        Ok(summary) => eprintln!("crash test: {summary} (seed {seed})"),
        Err(e) => panic!("crash test failed (seed {seed}): {e}"),
    }
}
