//! ZServer4D/ZNet compatibility on the command line:
//!
//! - `zs serve --legacy-addr ADDR [--legacy-ciphers POOL] [--legacy-hash ID]
//!   [--legacy-compress]`:
//!   a second listener for original Delphi/FreePascal clients, dispatching to the
//!   same commands. Off by default; it warns at start that the legacy protocol
//!   sends its key in clear.
//! - `zs call --legacy [--legacy-stream|--legacy-direct] [--legacy-cipher ID]
//!   [--legacy-hash ID] CMD ARGS…`: call an original ZNet/ZServer4D server (or a
//!   `zs serve --legacy-addr`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zserver::legacy::{
    register_demo_commands, CipherPool, ClientConfig, Dfe, DfeValue, LegacyClient, LegacyConfig,
    LegacyServer,
};
use zserver::Registry;

/// `zs serve` flags for the legacy listener.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeLegacy {
    /// Also accept original ZServer4D/ZNet clients on this address (their wire
    /// protocol sends the cipher key in clear: use on trusted networks only).
    #[arg(long, value_name = "ADDR")]
    pub legacy_addr: Option<SocketAddr>,
    /// Ciphers handed to legacy clients: performance (none), default, security,
    /// or a comma list of cipher ids [default: default].
    #[arg(long, value_name = "POOL", requires = "legacy_addr")]
    pub legacy_ciphers: Option<String>,
    /// Hash id of the legacy server's frames (0 none, 1 FastMD5, ...) [default: 0].
    #[arg(long, value_name = "ID", requires = "legacy_addr")]
    pub legacy_hash: Option<u8>,
    /// Compress what the legacy server sends, as the originals' `maxsec`
    /// profile does (zlib DFEs and BigStream chunks; compressed input is read
    /// either way).
    #[arg(long, requires = "legacy_addr")]
    pub legacy_compress: bool,
}

/// Registers the original demo commands (always, where free) and, with
/// `--legacy-addr`, starts the legacy listener on `r`'s handlers. Call it last
/// in `zs serve`'s registration, so every command is in `r`.
pub fn install(
    a: &ServeLegacy,
    backend: &str,
    r: &mut Registry,
) -> Result<Option<LegacyServer>, String> {
    register_demo_commands(r);
    let Some(addr) = a.legacy_addr else {
        return Ok(None);
    };
    let mut config = LegacyConfig::default();
    if let Some(p) = &a.legacy_ciphers {
        config.ciphers = CipherPool::parse(p).map_err(|e| format!("--legacy-ciphers: {e}"))?;
    }
    if let Some(h) = a.legacy_hash {
        if !zserver::legacy::supported_hash(h) {
            return Err(format!("--legacy-hash: unknown hash id {h}"));
        }
        config.hash = h;
    }
    config.compress = a.legacy_compress;
    let b = zserver::backend_by_name(
        backend,
        zserver::io::Config {
            loops: 1,
            // The originals' clients write an ack and then the next command
            // without TCP_NODELAY: ack their segments at once (see
            // zs_legacy::LegacyServer).
            quickack: true,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let s = LegacyServer::start(Arc::from(b), r.clone(), config.clone(), addr)
        .map_err(|e| format!("cannot start the legacy listener on {addr}: {e}"))?;
    println!(
        "legacy: ZServer4D/ZNet clients on {} (ciphers {:?}); WARNING: this protocol sends its keys in clear",
        s.local_addr(),
        config.ciphers.ids()
    );
    Ok(Some(s))
}

/// `zs call` flags for calling a legacy server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CallLegacy {
    /// Call an original ZServer4D/ZNet server (or `zs serve --legacy-addr`);
    /// no fingerprint is needed (the legacy protocol has no server identity).
    #[arg(long)]
    pub legacy: bool,
    /// Legacy: a stream command; the arguments go as String values, the answer's
    /// values are printed one per line.
    #[arg(long, requires = "legacy")]
    pub legacy_stream: bool,
    /// Legacy: a direct console command (no answer).
    #[arg(long, requires = "legacy", conflicts_with = "legacy_stream")]
    pub legacy_direct: bool,
    /// Legacy: send with this cipher id instead of the server's choice.
    #[arg(long, value_name = "ID", requires = "legacy")]
    pub legacy_cipher: Option<u8>,
    /// Legacy: hash id of our frames [default: 0].
    #[arg(long, value_name = "ID", requires = "legacy")]
    pub legacy_hash: Option<u8>,
}

fn show(v: &DfeValue) -> String {
    match v {
        DfeValue::String(_) => v.as_str().map_or_else(|| format!("{v:?}"), str::to_owned),
        other => match other.as_i128() {
            Some(i) => i.to_string(),
            None => format!("{other:?}"),
        },
    }
}

/// `zs call --legacy`: the answer text (or the answer's values, one per line).
pub fn call(
    a: &CallLegacy,
    addr: SocketAddr,
    backend: &str,
    timeout: Duration,
    cmd: &str,
    args: &[String],
) -> Result<String, String> {
    let config = ClientConfig {
        hash: a.legacy_hash.unwrap_or(0),
        cipher: a.legacy_cipher,
        timeout,
        connect_timeout: timeout,
        ..Default::default()
    };
    let b = zserver::backend_by_name(
        backend,
        zserver::io::Config {
            loops: 1,
            // The originals' clients write an ack and then the next command
            // without TCP_NODELAY: ack their segments at once (see
            // zs_legacy::LegacyServer).
            quickack: true,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let c = LegacyClient::connect(Arc::from(b), addr, config)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let out = if a.legacy_stream {
        let d = Dfe(args.iter().map(|s| DfeValue::string(s)).collect());
        let r = c
            .call_stream_dfe(cmd, d)
            .map_err(|e| format!("{cmd}: {e}"))?;
        r.0.iter().map(show).collect::<Vec<_>>().join("\n")
    } else if a.legacy_direct {
        c.send_direct_console(cmd, &args.join(" "))
            .map_err(|e| format!("{cmd}: {e}"))?;
        // The barrier: the direct command has been handled when this answers.
        c.wait().map_err(|e| format!("{cmd}: {e}"))?;
        String::new()
    } else {
        c.call_console(cmd, &args.join(" "))
            .map_err(|e| format!("{cmd}: {e}"))?
    };
    c.close();
    Ok(out)
}
