//! The chores themselves. Every external command is printed before it runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

type Result<T = ()> = std::result::Result<T, String>;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// A command as a shell line, environment first (for logs).
pub(crate) fn show(c: &Command) -> String {
    let mut s = String::new();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&c.get_program().to_string_lossy());
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command, printing it first; a non-zero exit is an error.
pub(crate) fn run(mut c: Command) -> Result {
    let line = show(&c);
    println!("\n$ {line}");
    let t = Instant::now();
    let status = c
        .status()
        .map_err(|e| format!("cannot start `{line}`: {e}"))?;
    println!("  ({line:.60}… took {:.1} s)", t.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{line}` failed with {status}"))
    }
}

fn succeeds(c: &mut Command) -> bool {
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn have(program: &str) -> bool {
    succeeds(Command::new("sh").args(["-c", &format!("command -v {program}")]))
}

/// Installs Debian packages when `probe` (a program name) is missing and we are
/// allowed to (root with apt-get). Returns whether `probe` is available afterwards.
fn ensure_apt(probe: &str, packages: &[&str]) -> bool {
    if have(probe) {
        return true;
    }
    if !have("apt-get") {
        println!("note: `{probe}` is missing and apt-get is not available");
        return false;
    }
    let mut update = Command::new("apt-get");
    update.arg("update").arg("-qq");
    let _ = run(update);
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(packages);
    let _ = run(install);
    have(probe)
}

/// Directory of the crates.io tools benches use (`cargo install --root`).
pub fn peers_root() -> PathBuf {
    root().join("target/peers")
}

/// Makes every tool available: apt packages when the program is missing from
/// `PATH`, crates.io tools into `target/peers`. A tool that cannot be had is an
/// error naming it and who needs it.
pub fn ensure_tools(tools: &[crate::tools::Tool]) -> Result {
    use crate::tools::Source;
    let mut missing = Vec::new();
    for t in tools {
        let ok = match t.source {
            Source::Apt(packages) => ensure_apt(t.program, packages),
            Source::Cargo { krate, locked } => {
                let bin = peers_root().join("bin").join(t.program);
                if bin.exists() {
                    true
                } else {
                    let mut c = cargo();
                    c.args(["install", krate, "--root"]).arg(peers_root());
                    if locked {
                        c.arg("--locked");
                    }
                    run(c).is_ok() && bin.exists()
                }
            }
        };
        if !ok {
            missing.push(format!("{} (for {})", t.program, t.used_by));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("cannot install: {}", missing.join(", ")))
    }
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

fn value<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} needs a value")),
    }
}

// ----------------------------------------------------------------------------- ci

/// Everything CI checks.
pub fn ci(args: &[String]) -> Result {
    let t = Instant::now();
    lean_builds();
    // First, so build scripts and tests find what they need.
    ensure_tools(crate::tools::TEST_TOOLS)?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy)?;

    let mut test = cargo();
    test.args(["test", "--workspace", "--locked"]);
    run(test)?;

    let mut doc = cargo();
    doc.env("RUSTDOCFLAGS", "-D warnings")
        .args(["doc", "--workspace", "--no-deps", "--locked"]);
    run(doc)?;

    if !flag(args, "--no-fuzz") {
        let secs: u64 = value(args, "--fuzz-secs")?.unwrap_or(10);
        fuzz(&["--secs".to_string(), secs.to_string()])?;
    }
    if !flag(args, "--no-targets") {
        check_targets()?;
    }
    if !flag(args, "--no-windows") {
        crate::windows::test_windows(&["-p".into(), "zs-io-iocp".into(), "--locked".into()])?;
    }
    if flag(args, "--bench") {
        bench(&[
            "all".to_string(),
            "--quick".to_string(),
            "--quiet".to_string(),
        ])?;
    }
    println!(
        "\nxtask ci: all green in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// CI builds every test binary of the workspace, two dozen fuzz targets and three
/// cross targets on one disk. Full debug info and incremental caches make that tens
/// of gigabytes, and one CI machine ran out of disk while linking a fuzz target
/// (`ld terminated with signal 7 [Bus error]`). Line tables keep file:line in
/// backtraces at a fraction of the size; incremental caches are never reused by a
/// fresh clone. A developer's own settings of either variable win.
fn lean_builds() {
    for (key, value) in [
        ("CARGO_INCREMENTAL", "0"),
        ("CARGO_PROFILE_DEV_DEBUG", "line-tables-only"),
        ("CARGO_PROFILE_TEST_DEBUG", "line-tables-only"),
    ] {
        if std::env::var_os(key).is_none() {
            println!("xtask ci: {key}={value}");
            // Edition 2021, and xtask has started no threads yet.
            std::env::set_var(key, value);
        }
    }
}

// -------------------------------------------------------------------------- bench

/// Suite names: every `benches/<dir>` whose package is `zs-bench-<suite>` (not the harness).
pub fn bench_suites() -> Result<Vec<String>> {
    let dir = root().join("benches");
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in rd.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("name = \"zs-bench-") {
                let suite = rest.trim_end_matches('"');
                if suite != "harness" {
                    out.push(suite.to_string());
                }
                break;
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What `bench` was asked for.
#[derive(Debug, PartialEq)]
struct BenchPlan {
    /// The suites to run, in order.
    suites: Vec<String>,
    /// `--install-only`: install each suite's `BENCH_TOOLS` and exit, so a
    /// long `cargo install` never runs inside a bench lock or a timed run.
    install_only: bool,
    /// Arguments for the suite binaries.
    pass: Vec<String>,
}

fn bench_plan(args: &[String], suites: &[String]) -> Result<BenchPlan> {
    let Some(which) = args.first() else {
        return Err(format!("bench needs a suite: all, {}", suites.join(", ")));
    };
    let chosen: Vec<String> = if which == "all" {
        suites.to_vec()
    } else if suites.contains(which) {
        vec![which.clone()]
    } else {
        return Err(format!(
            "no bench suite {which:?}; have: all, {}",
            suites.join(", ")
        ));
    };
    let (install, pass): (Vec<String>, Vec<String>) = args[1..]
        .iter()
        .cloned()
        .partition(|a| a == "--install-only");
    Ok(BenchPlan {
        suites: chosen,
        install_only: !install.is_empty(),
        pass,
    })
}

/// The external programs `suite` needs.
fn bench_tools(suite: &str) -> Vec<crate::tools::Tool> {
    crate::tools::BENCH_TOOLS
        .iter()
        .filter(|(s, _)| *s == suite)
        .map(|(_, t)| *t)
        .collect()
}

/// `bench <suite>|all [--install-only] [--quick] [--rounds N] [--quiet]`.
pub fn bench(args: &[String]) -> Result {
    let plan = bench_plan(args, &bench_suites()?)?;
    let mut failed = Vec::new();
    for s in &plan.suites {
        if let Err(e) = ensure_tools(&bench_tools(s)) {
            eprintln!("{e}");
            failed.push(s.clone());
            continue;
        }
        if plan.install_only {
            println!("bench {s}: tools installed");
            continue;
        }
        let mut c = cargo();
        c.args([
            "run",
            "--release",
            "--quiet",
            "--locked",
            "-p",
            &format!("zs-bench-{s}"),
            "--",
        ]);
        c.args(&plan.pass);
        if let Err(e) = run(c) {
            eprintln!("{e}");
            failed.push(s.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("bench suites failed: {}", failed.join(", ")))
    }
}

/// `soak xnat [--requests N]`: the long ApacheBench run through an XNat
/// tunnel (not part of CI), with the xnat bench suite's tools plus `ab`.
pub fn soak(args: &[String]) -> Result {
    let usage = "usage: cargo xtask soak xnat [--requests N]";
    let requests = match args {
        [s] if s == "xnat" => 10_000_000u64,
        [s, flag, n] if s == "xnat" && flag == "--requests" => n
            .parse()
            .map_err(|_| format!("--requests takes a whole number, not {n:?}"))?,
        _ => return Err(usage.into()),
    };
    // nginx behind the tunnel (as in the xnat suite) and ApacheBench in front.
    let mut tools: Vec<crate::tools::Tool> = bench_tools("xnat")
        .into_iter()
        .filter(|t| t.program == "nginx")
        .collect();
    tools.push(crate::tools::Tool {
        program: "ab",
        source: crate::tools::Source::Apt(&["apache2-utils"]),
        used_by: "soak xnat",
    });
    ensure_tools(&tools)?;
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--quiet",
        "--locked",
        "-p",
        "zs-bench-xnat",
        "--",
    ]);
    c.args(["__soak", &requests.to_string()]);
    run(c)
}

// --------------------------------------------------------------------------- fuzz

/// Target names: the `[[bin]]` names of `fuzz/Cargo.toml`.
pub fn fuzz_targets() -> Result<Vec<String>> {
    let path = root().join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_bin = l == "[[bin]]";
            continue;
        }
        if in_bin {
            if let Some(rest) = l.strip_prefix("name") {
                let name = rest
                    .trim_start()
                    .trim_start_matches('=')
                    .trim()
                    .trim_matches('"');
                out.push(name.to_string());
            }
        }
    }
    Ok(out)
}

/// How to reach a nightly compiler: `+nightly`, or stable with RUSTC_BOOTSTRAP=1.
fn nightly() -> (Option<&'static str>, bool) {
    let probe = |c: &mut Command| succeeds(c);
    if probe(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        return (Some("+nightly"), false);
    }
    println!("nightly not installed; trying `rustup toolchain install nightly --profile minimal`");
    if probe(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ])) {
        return (Some("+nightly"), false);
    }
    println!("note: no nightly toolchain to be had; using stable with RUSTC_BOOTSTRAP=1");
    (None, true)
}

fn ensure_cargo_fuzz() -> Result {
    if succeeds(cargo().args(["fuzz", "--version"])) {
        return Ok(());
    }
    let mut c = cargo();
    c.args(["install", "cargo-fuzz", "--locked"]);
    run(c)
}

/// `fuzz [--secs N] [target]`.
pub fn fuzz(args: &[String]) -> Result {
    let secs: u64 = value(args, "--secs")?.unwrap_or(60);
    let all = fuzz_targets()?;
    let named: Vec<&String> = {
        let mut skip_next = false;
        args.iter()
            .filter(|a| {
                if skip_next {
                    skip_next = false;
                    return false;
                }
                if a.as_str() == "--secs" {
                    skip_next = true;
                    return false;
                }
                true
            })
            .collect()
    };
    let targets: Vec<String> = match named.first() {
        None => all.clone(),
        Some(t) if all.contains(t) => vec![(*t).clone()],
        Some(t) => return Err(format!("no fuzz target {t:?}; have: {}", all.join(", "))),
    };
    if targets.is_empty() {
        println!("no fuzz targets yet");
        return Ok(());
    }
    ensure_cargo_fuzz()?;
    let (toolchain, bootstrap) = nightly();
    let root = root();
    for t in &targets {
        let corpus = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        let mut c = cargo();
        if let Some(tc) = toolchain {
            c = Command::new("cargo");
            c.current_dir(&root).arg(tc);
        }
        if bootstrap {
            c.env("RUSTC_BOOTSTRAP", "1");
        }
        c.args(["fuzz", "run", "--fuzz-dir", "fuzz", t]);
        c.arg(&corpus);
        let seeds = root.join("fuzz/seeds").join(t);
        if seeds.is_dir() {
            c.arg(&seeds);
        }
        c.args([
            "--",
            &format!("-max_total_time={secs}"),
            "-rss_limit_mb=4096",
            "-timeout=10",
        ]);
        run(c)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ check-targets

/// The cross targets checked: (target, C compiler for build scripts, its Debian
/// package, whether it needs the freestanding stand-in headers of `xtask/cross-include`).
/// ring's build script compiles C for the target; mingw provides real Windows headers,
/// while no FreeBSD or macOS libc headers exist on Linux (see `cross-include/README.md`).
const TARGETS: &[(&str, &str, &str, bool)] = &[
    (
        "x86_64-pc-windows-gnu",
        "x86_64-w64-mingw32-gcc",
        "gcc-mingw-w64-x86-64",
        false,
    ),
    ("x86_64-unknown-freebsd", "clang", "clang", true),
    ("x86_64-apple-darwin", "clang", "clang", true),
];

/// `cargo check` of the workspace for each cross target.
pub fn check_targets() -> Result {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let headers = root().join("xtask/cross-include");
    for (target, cc, package, stand_in_headers) in TARGETS {
        if !installed.lines().any(|l| l.trim() == *target) {
            let mut add = Command::new("rustup");
            add.args(["target", "add", target]);
            run(add)?;
        }
        if !ensure_apt(cc, &[package]) || (*stand_in_headers && !ensure_apt("llvm-ar", &["llvm"])) {
            return Err(format!(
                "{target}: no C compiler `{cc}` (Debian package {package})"
            ));
        }
        let mut c = cargo();
        if *stand_in_headers {
            let var = target.replace('-', "_");
            c.env(format!("CC_{var}"), cc);
            c.env(format!("AR_{var}"), "llvm-ar");
            c.env(
                format!("CFLAGS_{var}"),
                format!("-ffreestanding -isystem {}", headers.display()),
            );
        }
        c.args([
            "check",
            "--workspace",
            "--all-targets",
            "--locked",
            "--target",
            target,
        ]);
        // The library crates, their tests and the CLI; the bench crates (host-only
        // measurement tools with their peers) and xtask stay out.
        c.args(["--exclude", "xtask", "--exclude", "zs-bench-harness"]);
        for suite in bench_suites()? {
            c.args(["--exclude".to_string(), format!("zs-bench-{suite}")]);
        }
        run(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn bench_install_only_is_ours_and_the_rest_goes_to_the_suite() {
        let suites = s(&["rpc", "xnat"]);
        let p = bench_plan(&s(&["xnat", "--install-only", "--quick"]), &suites).unwrap();
        assert_eq!(
            p,
            BenchPlan {
                suites: s(&["xnat"]),
                install_only: true,
                pass: s(&["--quick"]),
            }
        );
        let p = bench_plan(&s(&["all", "--rounds", "3"]), &suites).unwrap();
        assert_eq!(p.suites, suites);
        assert!(!p.install_only);
        assert_eq!(p.pass, s(&["--rounds", "3"]));
        assert!(bench_plan(&[], &suites).is_err());
        assert!(bench_plan(&s(&["nope", "--install-only"]), &suites).is_err());
    }

    #[test]
    fn the_xnat_suite_installs_its_peers() {
        let programs: Vec<&str> = bench_tools("xnat").iter().map(|t| t.program).collect();
        for p in ["rathole", "bore", "oha", "iperf3", "wrk", "nginx"] {
            assert!(programs.contains(&p), "{p} missing from {programs:?}");
        }
        assert!(bench_tools("no-such-suite").is_empty());
        // Every suite named in BENCH_TOOLS exists in benches/.
        let suites = bench_suites().unwrap();
        for (suite, t) in crate::tools::BENCH_TOOLS {
            assert!(suites.iter().any(|s| s == suite), "{suite} ({})", t.program);
        }
    }
}
