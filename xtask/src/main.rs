//! # xtask: the project's chores
//!
//! Run as `cargo xtask <command>` (an alias in `.cargo/config.toml`):
//!
//! - `ci` — everything CI checks: fmt, clippy (`-D warnings`), tests, docs
//!   (`-D warnings`), a fuzz smoke of every target, cross-target checks and the
//!   Windows backend's tests under wine. `--no-fuzz`, `--no-targets`, `--no-windows`
//!   skip parts locally; `--bench` adds a `--quick` run of every bench suite (the
//!   bench crates are always built and linted by the clippy step).
//! - `bench <suite>|all [--quick] [--rounds N]` — runs the `zs-bench-<suite>`
//!   package in `benches/` (output contract in `shared/BENCH.md`), after
//!   installing the suite's peers (`tools::BENCH_TOOLS`); `--install-only`
//!   installs them and exits (run it before a timed or locked bench run).
//! - `fuzz [--secs N] [target]` — runs each cargo-fuzz target in `fuzz/` for N
//!   seconds (default 60) on nightly; installs cargo-fuzz when missing.
//! - `check-targets` — `cargo check` of the workspace for Windows (GNU), FreeBSD
//!   and macOS, installing the rustup targets and C cross tools when missing.
//! - `crash-db [--cycles N]` — SIGKILL crash-consistency cycles of the store (default 200).
//! - `test-windows [-p <pkg>…]` — `cargo test` for `x86_64-pc-windows-gnu`, run under
//!   wine (mingw, wine64 and a wine prefix are set up when missing).
#![forbid(unsafe_code)]

mod crash_db;
mod tasks;
mod tools;
mod windows;

use std::process::ExitCode;

fn usage() -> &'static str {
    "usage: cargo xtask <command>
  ci [--no-fuzz] [--no-targets] [--no-windows] [--bench] [--fuzz-secs N]
  bench <suite>|all [--install-only] [--quick] [--rounds N] [--quiet]
  fuzz [--secs N] [target]
  check-targets
  test-windows [-p <pkg>…] [--timeout-mins N] [cargo test args] [-- <test args>]
  crash-db [--cycles N]
  soak xnat [--requests N]   (not in CI; default 10,000,000 requests)
  list-benches | list-fuzz"
}

fn crash_db_cmd(args: &[String]) -> Result<(), String> {
    let cycles = match args {
        [] => 200,
        [flag, n] if flag == "--cycles" => n
            .parse()
            .map_err(|_| format!("--cycles takes a whole number, not {n:?}"))?,
        _ => return Err("usage: cargo xtask crash-db [--cycles N]".into()),
    };
    crash_db::crash_db(cycles)
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
        "test-windows" => windows::test_windows(rest),
        "crash-db" => crash_db_cmd(rest),
        "soak" => tasks::soak(rest),
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
