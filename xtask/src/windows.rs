//! `cargo xtask test-windows`: runs test binaries built for
//! `x86_64-pc-windows-gnu` under wine, headless.
//!
//! What it sets up (each step only when missing, so a second run costs nothing):
//!
//! 1. the rustup target `x86_64-pc-windows-gnu`;
//! 2. the mingw C cross compiler and wine from apt (`gcc-mingw-w64-x86-64`,
//!    `wine64`, with `--no-install-recommends`; needs root);
//! 3. `bcryptprimitives.dll`, built with mingw from `xtask/wine/`: Rust's std on
//!    Windows imports `ProcessPrng` from it and Debian's wine 8 lacks the DLL, so
//!    ours exports `ProcessPrng` on top of `RtlGenRandom` (`SystemFunction036`);
//! 4. a wine prefix `<target>/wine-prefix` initialised with `wineboot -i`
//!    (no display, no Mono/Gecko), with the DLL copied into `system32`.
//!
//! Then it runs `cargo test --target x86_64-pc-windows-gnu …` with
//! `CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER` pointing at wine, in the dedicated
//! target dir `<target>/windows` (`<target>` is `$CARGO_TARGET_DIR` or
//! `target/`). A persistent wineserver is started for the run and stopped after
//! it, and a watchdog kills the run after `--timeout-mins` (default 20).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::tasks::{run, show};

type Result<T = ()> = std::result::Result<T, String>;

/// The Rust target the tests are built for.
const TARGET: &str = "x86_64-pc-windows-gnu";
/// The mingw C compiler (Debian package `gcc-mingw-w64-x86-64`).
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";
/// Packages tested when no `-p` is given.
const DEFAULT_PACKAGES: &[&str] = &["zs-io-iocp"];
/// Default watchdog for the whole `cargo test` run.
const DEFAULT_TIMEOUT_MINS: u64 = 20;

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Arguments for `cargo test` (packages, `--release`, `--test x`, …).
    cargo_args: Vec<String>,
    /// Arguments after `--`, for the test binaries (filters, `--nocapture`, …).
    test_args: Vec<String>,
    /// Watchdog for the `cargo test` run.
    timeout: Duration,
}

/// Parses `[-p <pkg> …] [--timeout-mins N] [cargo test args] [-- <test args>]`.
fn parse(args: &[String]) -> Result<Plan> {
    let (ours, test_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], args[i + 1..].to_vec()),
        None => (args, Vec::new()),
    };
    let mut cargo_args = Vec::new();
    let mut timeout = Duration::from_secs(DEFAULT_TIMEOUT_MINS * 60);
    let mut has_package = false;
    let mut it = ours.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout-mins" => {
                let v = it.next().ok_or("--timeout-mins needs a value")?;
                let mins: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout-mins: bad number {v:?}"))?;
                if mins == 0 {
                    return Err("--timeout-mins must be at least 1".into());
                }
                timeout = Duration::from_secs(mins * 60);
            }
            "-p" | "--package" => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("{a} needs a package name"))?;
                has_package = true;
                cargo_args.push("-p".into());
                cargo_args.push(v.clone());
            }
            "--workspace" | "--all" => {
                return Err(
                    "test-windows runs chosen packages only (-p <pkg>), not the workspace".into(),
                );
            }
            "--target" | "--target-dir" => return Err(format!("test-windows sets {a} itself")),
            other => {
                if other.starts_with("--package=") || (other.starts_with("-p") && other.len() > 2) {
                    has_package = true;
                }
                cargo_args.push(other.to_string());
            }
        }
    }
    if !has_package {
        for p in DEFAULT_PACKAGES {
            cargo_args.push("-p".into());
            cargo_args.push((*p).to_string());
        }
    }
    Ok(Plan {
        cargo_args,
        test_args,
        timeout,
    })
}

// ------------------------------------------------------------------- helpers

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs Debian packages with apt-get (as root, non-interactively).
fn apt_install(packages: &[&str]) -> Result {
    if which("apt-get").is_none() || !is_root() {
        return Err(format!(
            "missing {}: install them (Debian: apt-get install --no-install-recommends {})",
            packages.join(", "),
            packages.join(" ")
        ));
    }
    let mut update = Command::new("apt-get");
    update
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["update", "-qq"]);
    run(update)?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages);
    run(install)
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

// ---------------------------------------------------------------------- tools

/// The wine loader and server binaries.
#[derive(Debug)]
struct Wine {
    loader: PathBuf,
    server: PathBuf,
}

/// Where wine may live: `$WINE`, then Debian's `wine64` package (which puts the
/// 64-bit loader in `/usr/lib/wine/` and nothing on `PATH`), then `PATH`.
fn find_wine() -> Option<Wine> {
    let loader = std::env::var_os("WINE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| Some(PathBuf::from("/usr/lib/wine/wine64")).filter(|p| p.is_file()))
        .or_else(|| which("wine64"))
        .or_else(|| which("wine"))?;
    let dir = loader.parent().map(Path::to_path_buf).unwrap_or_default();
    let server = std::env::var_os("WINESERVER")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| Some(dir.join("wineserver64")).filter(|p| p.is_file()))
        .or_else(|| Some(dir.join("wineserver")).filter(|p| p.is_file()))
        .or_else(|| which("wineserver"))?;
    Some(Wine { loader, server })
}

fn ensure_rust_target() -> Result {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if installed.lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add", TARGET]);
    run(add)
}

fn ensure_tools() -> Result<Wine> {
    let mut missing = Vec::new();
    if which(MINGW_GCC).is_none() {
        missing.push("gcc-mingw-w64-x86-64");
    }
    if find_wine().is_none() {
        missing.push("wine64");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    if which(MINGW_GCC).is_none() {
        return Err(format!(
            "{MINGW_GCC} still missing after installing gcc-mingw-w64-x86-64"
        ));
    }
    find_wine().ok_or_else(|| "wine still missing after installing wine64".to_string())
}

/// Builds `bcryptprimitives.dll` into `out_dir` unless it is newer than its sources.
fn ensure_dll(src_dir: &Path, out_dir: &Path) -> Result<PathBuf> {
    let c = src_dir.join("bcryptprimitives.c");
    let def = src_dir.join("bcryptprimitives.def");
    let dll = out_dir.join("bcryptprimitives.dll");
    let newest_src = [mtime(&c), mtime(&def)].into_iter().flatten().max();
    if newest_src.is_none() {
        return Err(format!("DLL sources missing in {}", src_dir.display()));
    }
    if matches!((mtime(&dll), newest_src), (Some(d), Some(s)) if d >= s) {
        return Ok(dll);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut gcc = Command::new(MINGW_GCC);
    // No C runtime: the DLL needs only kernel32 and advapi32, which wine has.
    gcc.args([
        "-shared",
        "-O2",
        "-s",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-nostdlib",
    ])
    .arg("-Wl,--entry,DllMain")
    .arg("-o")
    .arg(&dll)
    .arg(&c)
    .arg(&def)
    .args(["-ladvapi32", "-lkernel32"]);
    run(gcc)?;
    Ok(dll)
}

/// The environment every wine process of ours runs with.
fn wine_env(c: &mut Command, prefix: &Path) {
    c.env("WINEPREFIX", prefix)
        // Headless: no X server, and no Mono/Gecko install dialogs.
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("WINEDLLOVERRIDES", "mscoree,mshtml,winemenubuilder.exe=")
        .env("WINEARCH", "win64");
    if std::env::var_os("WINEDEBUG").is_none() {
        c.env("WINEDEBUG", "-all");
    }
}

/// Creates the prefix when needed and installs the DLL into its `system32`.
fn ensure_prefix(wine: &Wine, prefix: &Path, dll: &Path) -> Result {
    let system32 = prefix.join("drive_c/windows/system32");
    if !prefix.join("system.reg").is_file() || !system32.is_dir() {
        std::fs::create_dir_all(prefix).map_err(|e| format!("{}: {e}", prefix.display()))?;
        let mut boot = Command::new(&wine.loader);
        wine_env(&mut boot, prefix);
        boot.args(["wineboot", "-i"]).stdin(Stdio::null());
        run(boot)?;
        // wineboot returns before the server has written the registry to disk.
        let mut wait = Command::new(&wine.server);
        wait.env("WINEPREFIX", prefix).arg("-w");
        run(wait)?;
        if !system32.is_dir() {
            return Err(format!("wineboot did not create {}", system32.display()));
        }
    }
    let dest = system32.join("bcryptprimitives.dll");
    let want = std::fs::read(dll).map_err(|e| format!("{}: {e}", dll.display()))?;
    if std::fs::read(&dest).ok().as_deref() != Some(&want[..]) {
        std::fs::write(&dest, &want).map_err(|e| format!("{}: {e}", dest.display()))?;
        println!("installed {}", dest.display());
    }
    Ok(())
}

/// Stops the wineserver of `prefix` (and with it every wine process of that
/// prefix, which only this task starts).
fn stop_wineserver(wine: &Wine, prefix: &Path) {
    let _ = Command::new(&wine.server)
        .env("WINEPREFIX", prefix)
        .arg("-k")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `c` and kills it (and the prefix's wine processes) after `timeout`.
fn run_with_watchdog(mut c: Command, timeout: Duration, wine: &Wine, prefix: &Path) -> Result {
    let line = show(&c);
    println!("\n$ {line}");
    let t = Instant::now();
    let mut child = c
        .spawn()
        .map_err(|e| format!("cannot start `{line}`: {e}"))?;
    let status = loop {
        match child
            .try_wait()
            .map_err(|e| format!("waiting for `{line}`: {e}"))?
        {
            Some(s) => break s,
            None if t.elapsed() >= timeout => {
                let _ = child.kill();
                stop_wineserver(wine, prefix);
                let _ = child.wait();
                return Err(format!(
                    "test-windows: killed after {} min (watchdog; --timeout-mins to change)",
                    timeout.as_secs() / 60
                ));
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    println!(
        "  (cargo test under wine took {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{line}` failed with {status}"))
    }
}

// ----------------------------------------------------------------------- task

/// `test-windows [-p <pkg> …] [--timeout-mins N] [cargo test args] [-- <test args>]`:
/// builds the packages' tests for `x86_64-pc-windows-gnu` and runs them under
/// wine (default package: `zs-io-iocp`). Sets up the tools, DLL and prefix first.
pub fn test_windows(args: &[String]) -> Result {
    let plan = parse(args)?;
    let started = Instant::now();
    let root = crate::tasks::root();
    let target_base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_relative() { root.join(p) } else { p })
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_base.join("windows");
    let prefix = target_base.join("wine-prefix");

    ensure_rust_target()?;
    let wine = ensure_tools()?;
    let dll = ensure_dll(&root.join("xtask/wine"), &target_base.join("wine"))?;
    ensure_prefix(&wine, &prefix, &dll)?;
    println!(
        "wine ready ({} , prefix {}) in {:.1} s",
        wine.loader.display(),
        prefix.display(),
        started.elapsed().as_secs_f64()
    );

    // One server for all test binaries instead of one per binary.
    let mut server = Command::new(&wine.server);
    server.env("WINEPREFIX", &prefix).arg("-p");
    run(server)?;

    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(&root);
    wine_env(&mut c, &prefix);
    c.env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER", &wine.loader)
        .args(["test", "--target", TARGET])
        .args(&plan.cargo_args);
    if !plan.test_args.is_empty() {
        c.arg("--").args(&plan.test_args);
    }
    let result = run_with_watchdog(c, plan.timeout, &wine, &prefix);
    stop_wineserver(&wine, &prefix);
    println!(
        "test-windows: {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_package_and_timeout() {
        let p = parse(&[]).unwrap();
        assert_eq!(p.cargo_args, s(&["-p", "zs-io-iocp"]));
        assert!(p.test_args.is_empty());
        assert_eq!(p.timeout, Duration::from_secs(DEFAULT_TIMEOUT_MINS * 60));
    }

    #[test]
    fn packages_flags_and_test_args() {
        let p = parse(&s(&[
            "-p",
            "a",
            "--package",
            "b",
            "--release",
            "--timeout-mins",
            "3",
            "--",
            "echo",
            "--nocapture",
        ]))
        .unwrap();
        assert_eq!(p.cargo_args, s(&["-p", "a", "-p", "b", "--release"]));
        assert_eq!(p.test_args, s(&["echo", "--nocapture"]));
        assert_eq!(p.timeout, Duration::from_secs(180));
        let q = parse(&s(&["--package=c"])).unwrap();
        assert_eq!(q.cargo_args, s(&["--package=c"]));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&s(&["-p"])).is_err());
        assert!(parse(&s(&["--timeout-mins", "x"])).is_err());
        assert!(parse(&s(&["--timeout-mins", "0"])).is_err());
        assert!(parse(&s(&["--workspace"])).is_err());
        assert!(parse(&s(&["--target", "x"])).is_err());
    }

    #[test]
    fn dll_sources_exist() {
        let dir = crate::tasks::root().join("xtask/wine");
        assert!(dir.join("bcryptprimitives.c").is_file());
        let def = std::fs::read_to_string(dir.join("bcryptprimitives.def")).unwrap();
        assert!(def.contains("ProcessPrng"));
    }
}
