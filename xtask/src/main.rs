//! # xtask: the project's chores
//!
//! Run as `cargo xtask <command>` (an alias in `.cargo/config.toml`):
//!
//! - `ci` — everything CI checks: fmt, clippy (`-D warnings`), tests, docs
//!   (`-D warnings`), a fuzz smoke of every target, cross-target checks, and a
//!   `--quick` run of every bench suite. `--no-fuzz`, `--no-targets`, `--no-bench`
//!   skip parts locally.
//! - `bench <suite>|all [--quick] [--rounds N]` — runs the `zs-bench-<suite>`
//!   package in `benches/` (output contract in `shared/BENCH.md`).
//! - `fuzz [--secs N] [target]` — runs each cargo-fuzz target in `fuzz/` for N
//!   seconds (default 60) on nightly; installs cargo-fuzz when missing.
//! - `check-targets` — `cargo check` of the workspace for Windows (GNU), FreeBSD
//!   and macOS, installing the rustup targets and C cross tools when missing.
#![forbid(unsafe_code)]

mod tasks;

use std::process::ExitCode;

fn usage() -> &'static str {
    "usage: cargo xtask <command>
  ci [--no-fuzz] [--no-targets] [--no-bench] [--fuzz-secs N]
  bench <suite>|all [--quick] [--rounds N] [--quiet]
  fuzz [--secs N] [target]
  check-targets
  list-benches | list-fuzz"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "ci" => tasks::ci(rest),
        "bench" => tasks::bench(rest),
        "fuzz" => tasks::fuzz(rest),
        "check-targets" => tasks::check_targets(),
        "list-benches" => tasks::bench_suites().map(|s| println!("{}", s.join("\n"))),
        "list-fuzz" => tasks::fuzz_targets().map(|s| println!("{}", s.join("\n"))),
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
