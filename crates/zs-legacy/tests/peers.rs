//! Our legacy server against the original ZNet client (`znet_cli`), and our legacy
//! client against the original server (`znet_serv`), on loopback. The programs are
//! built from `shared/peers/znet` (see `zs_legacy::peers`); without Free Pascal the
//! tests print `skipped: ...` (and fail when `CI` is set).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use zs_core::Registry;
use zs_legacy::{
    register_demo_commands, CipherPool, ClientConfig, Dfe, DfeValue, LegacyClient, LegacyConfig,
    LegacyServer,
};

fn backend() -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn our_server(pool: CipherPool) -> LegacyServer {
    let mut r = Registry::new();
    register_demo_commands(&mut r);
    let config = LegacyConfig {
        ciphers: pool,
        ..Default::default()
    };
    LegacyServer::start(backend(), r, config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Runs `znet_cli` against `port`; returns (exit code, output).
fn znet_cli(dir: &Path, port: u16, args: &[&str]) -> (i32, String) {
    let out = Command::new(dir.join("znet_cli"))
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(["--linger", "0"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A running `znet_serv` (killed on drop) and its port.
struct ZnetServ {
    child: Child,
    port: u16,
}

impl Drop for ZnetServ {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn znet_serv(dir: &Path, args: &[&str]) -> ZnetServ {
    let mut child = Command::new(dir.join("znet_serv"))
        .arg("0")
        .args(["--quiet"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().expect("znet_serv output").unwrap();
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ZnetServ { child, port }
}

fn peers() -> Option<PathBuf> {
    zs_legacy::peers::znet_dir()
}

#[test]
fn original_client_full_script_plaintext() {
    let Some(dir) = peers() else { return };
    let server = our_server(CipherPool::Performance);
    let port = server.local_addr().port();
    let (code, out) = znet_cli(&dir, port, &["--profile", "maxperf", "--mode", "full", "--expect-cipher", "none"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 failed"), "{out}");
    eprintln!("{out}");
    assert!(server.stats().handshakes >= 1);
}
