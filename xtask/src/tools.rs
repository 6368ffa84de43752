//! External programs that tests and benches start as real processes (nginx, etcd,
//! PostgreSQL, Chromium, …), and where they come from.
//!
//! - [`TEST_TOOLS`]: installed by `cargo xtask ci` before anything else (build scripts may need them too). A test that
//!   needs one of these finds it on `PATH`; when it is missing the test fails under
//!   `CI` (set by CI) and prints a skip reason otherwise.
//! - [`BENCH_TOOLS`]: installed by `cargo xtask bench <suite>` for that suite only
//!   (Debian packages, or `cargo install --root target/peers` for crates.io tools;
//!   bench binaries look in `target/peers/bin`).
//!
//! One line per tool; add yours where your crate's tests or bench need it.

/// Where a program comes from.
#[derive(Debug, Clone, Copy)]
#[allow(dead_code)] // until both kinds have an entry in the tables below
pub enum Source {
    /// Debian packages (apt-get; root only).
    Apt(&'static [&'static str]),
    /// `cargo install <crate> --root target/peers`, with `--locked` or not.
    Cargo {
        /// The crates.io crate.
        krate: &'static str,
        /// Whether to pass `--locked`.
        locked: bool,
    },
}

/// One external program.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The program looked up on `PATH` (or in `target/peers/bin`).
    pub program: &'static str,
    /// Where it comes from.
    pub source: Source,
    /// Who needs it (for the log line).
    pub used_by: &'static str,
}

/// Programs the test suite starts (`cargo xtask ci` installs them first).
pub const TEST_TOOLS: &[Tool] = &[
    // one line per tool: Tool { program, source: Source::Apt(&[packages]), used_by }
];

/// Programs a bench suite starts: (suite, tool).
pub const BENCH_TOOLS: &[(&str, Tool)] = &[
    // one line per (suite, tool)
    (
        "db-service",
        Tool {
            program: "redis-server",
            source: Source::Apt(&["redis-server", "redis-tools"]),
            used_by: "bench db-service (Redis 7 baseline)",
        },
    ),
    (
        "db-service",
        Tool {
            program: "redis-benchmark",
            source: Source::Apt(&["redis-tools"]),
            used_by: "bench db-service (redis-benchmark)",
        },
    ),
];
