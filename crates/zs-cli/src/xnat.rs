//! `zs xnat server|agent|fingerprint --config FILE`: expose intranet TCP
//! services through a public relay (rathole's config format; see the zs-xnat
//! crate docs for every key).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `zs xnat`.
#[derive(Debug, clap::Args)]
#[command(
    about = "expose intranet TCP services through a public relay (rathole config format)",
    long_about = "Expose intranet TCP services through a public relay.\n\n\
The config file is rathole's TOML: [server] bind_addr, default_token, \
[server.services.NAME] token, bind_addr; [client] remote_addr, default_token, \
[client.services.NAME] token, local_addr; [*.transport] type = \"tcp\" | \"noise\" \
(both: our encrypted session over TCP with the relay key pinned).\n\n\
Our keys: [client] relay_fingerprint (REQUIRED, \"sha3-256:<64 hex>\", printed by \
`zs xnat server` and `zs xnat fingerprint`), remote_addrs = [..] (one tunnel to each \
relay), agent_name, retry_interval (s, longest reconnect backoff, 2), heartbeat_timeout \
(s, 40); [client.services.NAME] max_load (4096); [server] identity_file \
(xnat-relay.key next to the config, created when missing), pool_size (8), max_agents \
(256), heartbeat_interval (s, 10), handshake_timeout (s, 5); \
[server.services.NAME] idle_timeout (s, 600), max_connections (4096).\n\n\
A public port listens only while at least one agent serves its mapping. \
Logs go to stderr (RUST_LOG overrides the default `info`)."
)]
pub struct XnatArgs {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Run the public relay (`[server]` table).
    Server {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the intranet agent (`[client]` table); it dials out to the relay(s).
    Agent {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the relay's key fingerprint (for the agents' relay_fingerprint).
    Fingerprint {
        /// The relay's TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
}

/// Runs `zs xnat`.
pub fn run(a: XnatArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let r = match a.verb {
        Verb::Server { config } => zs_xnat::run_relay_file(&config),
        Verb::Agent { config } => zs_xnat::run_agent_file(&config),
        Verb::Fingerprint { config } => {
            zs_xnat::relay_fingerprint_file(&config).map(|fp| println!("{fp}"))
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zs xnat: {e}");
            ExitCode::FAILURE
        }
    }
}
