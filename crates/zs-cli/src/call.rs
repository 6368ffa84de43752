//! `zs call <command> [args…]`: one console call to a running zserver.
//!
//! The server's identity is pinned by fingerprint. Where it comes from, first
//! match wins: `--fingerprint`, the `ZS_FINGERPRINT` environment variable, or the
//! server's key file (`--key`, default `./zs-identity.key`) — so in the directory
//! where `zs serve` runs, `zs call echo hello` needs nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use zserver::{load_identity, ClientBuilder, Fingerprint};

use crate::serve::DEFAULT_KEY_FILE;

/// Arguments of `zs call`.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// Command name (case-insensitive), e.g. `echo`, `time`, `stats`.
    pub command: String,
    /// Text sent with the command (joined with spaces; put it after `--` if it
    /// starts with `-`).
    pub args: Vec<String>,
    /// Server address.
    #[arg(long, default_value = zserver::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// The server's fingerprint, as printed by `zs serve` (`sha3-256:…`).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The server's key file, to read the fingerprint of a local server.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Transport backend: epoll, tokio or default.
    #[arg(long, default_value = "default")]
    pub backend: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Legacy ZServer4D/ZNet servers.
    #[command(flatten)]
    pub legacy: crate::legacy::CallLegacy,
}

/// The server fingerprint to pin: `--fingerprint`, else `ZS_FINGERPRINT`, else the
/// one of the local key file (`--key`, default `./zs-identity.key`). Shared by
/// `zs call` and `zs bench`.
pub(crate) fn resolve_fingerprint(
    flag: Option<&str>,
    key: Option<&Path>,
) -> Result<Fingerprint, String> {
    if let Some(fp) = flag {
        return fp.parse().map_err(|e| format!("--fingerprint: {e}"));
    }
    if let Ok(fp) = std::env::var("ZS_FINGERPRINT") {
        return fp.parse().map_err(|e| format!("ZS_FINGERPRINT: {e}"));
    }
    let key = key.map_or_else(|| PathBuf::from(DEFAULT_KEY_FILE), Path::to_path_buf);
    if key.exists() {
        return load_identity(&key)
            .map(|id| id.fingerprint())
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "no fingerprint: pass --fingerprint (zs serve prints it), set ZS_FINGERPRINT, \
         or run where the server's key file {} is",
        key.display()
    ))
}

fn run_inner(a: CallArgs) -> Result<String, String> {
    if a.legacy.legacy {
        let t = Duration::from_secs(a.timeout.max(1));
        return crate::legacy::call(&a.legacy, a.addr, &a.backend, t, &a.command, &a.args);
    }
    let fp = resolve_fingerprint(a.fingerprint.as_deref(), a.key.as_deref())?;
    let timeout = Duration::from_secs(a.timeout.max(1));
    let mut options = zserver::Options::client();
    options.call_timeout = Some(timeout);
    options.connect_timeout = timeout;
    let io = zserver::io::Config {
        loops: 1,
        ..Default::default()
    };
    let backend = zserver::backend_by_name(&a.backend, io.clone())
        .map_err(|e| format!("cannot connect to {}: {e}", a.addr))?;
    let client = ClientBuilder::new(a.addr)
        .backend(backend.into())
        .io_config(io)
        .fingerprint(fp)
        .options(options)
        .connect()
        .map_err(|e| format!("cannot connect to {}: {e}", a.addr))?;
    let text = a.args.join(" ");
    let answer = client
        .call(&a.command, &text)
        .wait()
        .map_err(|e| format!("{}: {e}", a.command))?;
    client.close();
    Ok(answer)
}

/// Runs `zs call`.
pub fn run(a: CallArgs) -> ExitCode {
    match run_inner(a) {
        Ok(answer) => {
            if answer.ends_with('\n') {
                print!("{answer}");
            } else {
                println!("{answer}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zs call: {e}");
            ExitCode::FAILURE
        }
    }
}
