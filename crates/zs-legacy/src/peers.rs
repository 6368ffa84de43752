//! The original ZNet programs (`znet_serv`, `znet_cli`, `znet_cipher`), built from
//! `shared/peers/znet/` with Free Pascal, for tests and benches that run our code
//! against the real thing.
//!
//! [`znet_dir`] returns the directory holding them, building them once into
//! `<cargo target dir>/znet` when they are missing (15-40 s). When the compiler is
//! missing it returns `None` (the caller prints `skipped: ...`), except with the
//! `CI` environment variable set, where it panics: CI must run these tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const PROGRAMS: [&str; 3] = ["znet_serv", "znet_cli", "znet_cipher"];

/// The peers' source folder: `$ZNET_PEERS_SRC`, or the first `shared/peers/znet`
/// above this crate.
pub fn source_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ZNET_PEERS_SRC") {
        return Some(PathBuf::from(p));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/peers/znet"))
        .find(|p| p.join("build.sh").is_file())
}

/// The cargo target directory of the running test or bench binary.
fn target_dir() -> PathBuf {
    if let Ok(p) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(p);
    }
    // <target>/<profile>/deps/<binary>
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn complete(dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

fn missing(what: &str) -> Option<PathBuf> {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and {what}: install fp-compiler fp-units-fcl fp-units-base libc6-dev");
    }
    eprintln!("skipped: {what} (ZNet reference peers not built)");
    None
}

/// The directory with the three programs, built if needed; `None` (after
/// printing `skipped: ...`) when they cannot be built here and `CI` is not set.
pub fn znet_dir() -> Option<PathBuf> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(p) = std::env::var("ZNET_PEERS_BIN") {
        let p = PathBuf::from(p);
        if complete(&p) {
            return Some(p);
        }
    }
    let out = target_dir().join("znet");
    if complete(&out) {
        return Some(out);
    }
    let Some(src) = source_dir() else {
        return missing("the ZNet peers' sources (shared/peers/znet) are not found");
    };
    if Command::new("fpc").arg("-iV").output().is_err() {
        return missing("fpc not installed");
    }
    // Build beside, then rename: concurrent test binaries never see half a build.
    let tmp = target_dir().join(format!("znet.build.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let st = Command::new(src.join("build.sh")).arg(&tmp).status();
    match st {
        Ok(s) if s.success() && complete(&tmp) => {
            if std::fs::rename(&tmp, &out).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            complete(&out).then_some(out)
        }
        other => panic!(
            "building the ZNet peers with {} failed ({other:?}); see {}/build.*.log",
            src.join("build.sh").display(),
            tmp.display()
        ),
    }
}
