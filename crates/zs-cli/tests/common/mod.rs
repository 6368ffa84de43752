//! Helpers shared by the `zs` CLI tests: the binary, a child that is killed when
//! the test ends, a free loopback port, a TCP echo service, a relay's fingerprint.
#![allow(dead_code)] // each test file uses the part it needs

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command};

/// The `zs` binary under test.
pub fn zs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zs"))
}

/// Runs `c` to its end: (succeeded, stdout, stderr).
pub fn run(c: &mut Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Kills the child when the test ends (pass or fail).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP echo service on a loopback port, one thread per connection.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    a
}

/// `zs xnat fingerprint --config RELAY_CFG`: the key an agent or visitor pins.
pub fn xnat_fingerprint(relay_cfg: &Path) -> String {
    let out = zs()
        .args(["xnat", "fingerprint", "--config"])
        .arg(relay_cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `zs ARGS --config FILE` where FILE (named `name`, in a temp dir) holds
/// `text`; asserts that the command fails and returns its stderr (a config error
/// names the file and the key).
pub fn config_error(args: &[&str], name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join(name);
    std::fs::write(&cfg, text).unwrap();
    let out = zs().args(args).arg("--config").arg(&cfg).output().unwrap();
    assert!(!out.status.success(), "{args:?} accepted {text:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
