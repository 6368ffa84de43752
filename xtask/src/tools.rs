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
    Tool {
        program: "fpc",
        source: Source::Apt(&["fp-compiler", "fp-units-fcl", "fp-units-base", "libc6-dev"]),
        used_by: "zs-crypto legacy oracle tests (build ../shared/peers/znet: znet_cipher)",
    },
    Tool {
        program: "protoc",
        source: Source::Apt(&["protobuf-compiler"]),
        used_by: "etcd-client's build script (zs-registry)",
    },
    Tool {
        program: "pg_ctlcluster",
        source: Source::Apt(&["postgresql"]),
        used_by: "zs-tx PostgreSQL backend tests (initdb, pg_ctl under /usr/lib/postgresql/*/bin)",
    },
    Tool {
        program: "nginx",
        source: Source::Apt(&["nginx-light"]),
        used_by: "zs-xnat tests",
    },
    Tool {
        program: "curl",
        source: Source::Apt(&["curl"]),
        used_by: "zs-xnat tests",
    },
    Tool {
        program: "etcd",
        source: Source::Apt(&["etcd-server", "etcd-client"]),
        used_by: "zs-registry conformance suite",
    },
    Tool {
        program: "prometheus",
        source: Source::Apt(&["prometheus"]),
        used_by: "zs-web tests (scrape)",
    },
    Tool {
        program: "chromedriver",
        source: Source::Apt(&["chromium", "chromium-driver"]),
        used_by: "zs-web tests (browser)",
    },
    Tool {
        program: "fpc",
        source: Source::Apt(&["fp-compiler", "fp-units-fcl", "fp-units-base", "libc6-dev"]),
        used_by: "zs-legacy tests and bench: builds the ZNet reference peers (zs_legacy::peers)",
    },
    Tool {
        program: "ip",
        source: Source::Apt(&["iproute2"]),
        used_by: "zs-punch netlab (network namespaces): zs-punch and zs-xnat visitor tests",
    },
    Tool {
        program: "nft",
        source: Source::Apt(&["nftables"]),
        used_by: "zs-punch netlab (NAT routers): zs-punch and zs-xnat visitor tests",
    },
    Tool {
        program: "turnserver",
        source: Source::Apt(&["coturn"]),
        used_by: "zs-punch STUN tests (second, independent RFC 5780 server)",
    },
    Tool {
        program: "miniupnpd",
        source: Source::Apt(&["miniupnpd-nftables"]),
        used_by: "zs-punch port mapping tests (PCP / NAT-PMP router in the netlab)",
    },
];

/// Programs a bench suite starts: (suite, tool).
pub const BENCH_TOOLS: &[(&str, Tool)] = &[
    // one line per (suite, tool)
    (
        "xnat",
        Tool {
            program: "iperf3",
            source: Source::Apt(&["iperf3"]),
            used_by: "bench xnat",
        },
    ),
    (
        "xnat",
        Tool {
            program: "wrk",
            source: Source::Apt(&["wrk"]),
            used_by: "bench xnat",
        },
    ),
    (
        "xnat",
        Tool {
            program: "nginx",
            source: Source::Apt(&["nginx-light"]),
            used_by: "bench xnat",
        },
    ),
    (
        "xnat",
        Tool {
            program: "rathole",
            source: Source::Cargo {
                krate: "rathole",
                locked: false,
            },
            used_by: "bench xnat",
        },
    ),
    (
        "xnat",
        Tool {
            program: "bore",
            source: Source::Cargo {
                krate: "bore-cli",
                locked: true,
            },
            used_by: "bench xnat",
        },
    ),
    (
        "xnat",
        Tool {
            program: "oha",
            source: Source::Cargo {
                krate: "oha",
                locked: true,
            },
            used_by: "bench xnat (open-loop latency at 1000 and 4000 req/s)",
        },
    ),
    (
        "registry",
        Tool {
            program: "etcd",
            source: Source::Apt(&["etcd-server", "etcd-client"]),
            used_by: "bench registry (etcd 3.4 baseline)",
        },
    ),
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
    (
        "files",
        Tool {
            program: "rsync",
            source: Source::Apt(&["rsync"]),
            used_by: "bench files (rsync daemon, delta_vs_rsync)",
        },
    ),
    (
        "push",
        Tool {
            program: "mosquitto",
            source: Source::Apt(&["mosquitto"]),
            used_by: "bench push (mosquitto 2 baseline, QoS 1, persistence on)",
        },
    ),
];
