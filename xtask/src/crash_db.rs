//! `cargo xtask crash-db --cycles N`: the zs-db crash test with more kill cycles than
//! `cargo test` runs. It builds and runs the `crash_db` example of zs-db in release mode:
//! a child writes with immediate durability and is SIGKILLed at random moments; after
//! every kill the store is reopened and every acknowledged record is checked.

use std::process::Command;

/// Runs `cycles` kill/reopen cycles; `Err` with the failure text if any check fails.
pub fn crash_db(cycles: u32) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .args([
            "run",
            "--release",
            "-p",
            "zs-db",
            "--example",
            "crash_db",
            "--",
            "--cycles",
        ])
        .arg(cycles.to_string())
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("crash-db failed ({status})"))
    }
}
