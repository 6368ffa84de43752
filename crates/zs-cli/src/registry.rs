//! `zs registry …` (the cluster registry, `zs-registry`) and the `zs serve`
//! flags that make a server the registry (`--registry`) or a member of one
//! (`--join` / `--join-etcd` with `--service-type`).
//!
//! Against the embedded registry of a `zs serve --registry` process (`--addr`,
//! fingerprint from `--fingerprint`, `ZS_FINGERPRINT` or `--key`, as `zs call`),
//! or against etcd (`--etcd http://127.0.0.1:2379`):
//! - `zs registry ls [TYPE]`: the instances (type, id, load, addresses, lease);
//! - `zs registry watch [TYPE]`: a snapshot, then every change, until Ctrl-C;
//! - `zs registry pick TYPE`: the least-loaded instance;
//! - `zs registry call TYPE COMMAND [ARGS…]`: a console call on the
//!   least-loaded instance (its address and fingerprint come from the registry);
//! - `zs registry lock NAME [--wait S] [--ttl S] -- CMD [ARGS…]`: runs `CMD`
//!   holding the lease-based lock `NAME` (renewed while it runs; released when
//!   it ends; if the lease is lost the command is killed, since the lock no
//!   longer protects it); exits with the command's status;
//! - `zs registry ids NAME COUNT`: allocates `COUNT` fresh ids from the counter
//!   `NAME` (Zeze's AllocateId) and prints them as `START..END` (END excluded).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use zserver::cluster::{
    self, Embedded, EmbeddedConfig, Etcd, EtcdConfig, Instance, Keeper, Remote, ServiceRegistry,
    WatchItem,
};
use zserver::{join_cluster, ClientBuilder, FailoverClient, Member, RunningServer};

use crate::call::resolve_fingerprint;

/// Which registry to talk to.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// etcd client URL (instead of a zs registry).
    #[arg(long, global = true)]
    pub etcd: Option<String>,
    /// Address of the `zs serve --registry` process.
    #[arg(long, global = true, default_value = zserver::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Its fingerprint (`sha3-256:…`).
    #[arg(long, global = true)]
    pub fingerprint: Option<String>,
    /// Its key file, to read the fingerprint of a local registry.
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// etcd key prefix.
    #[arg(long, global = true, default_value = "/zsreg/")]
    pub prefix: String,
}

/// Arguments of `zs registry`.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// List instances (of a type).
    Ls {
        /// Service type.
        kind: Option<String>,
    },
    /// Print a snapshot, then every change, until Ctrl-C (or --for SECONDS).
    Watch {
        /// Service type.
        kind: Option<String>,
        /// Stop after this many seconds.
        #[arg(long = "for")]
        duration: Option<u64>,
    },
    /// Print the least-loaded instance of a type.
    Pick {
        /// Service type.
        kind: String,
    },
    /// Call a console command on the least-loaded instance of a type.
    Call {
        /// Service type.
        kind: String,
        /// Command.
        command: String,
        /// Text (joined with spaces).
        args: Vec<String>,
    },
    /// Run a command while holding a lock (`zs registry lock NAME -- CMD ARGS…`).
    Lock {
        /// Lock name.
        name: String,
        /// Seconds to wait for the lock when it is held.
        #[arg(long, default_value_t = 0)]
        wait: u64,
        /// Lease TTL in seconds (the lock is freed this long after a crash).
        #[arg(long, default_value_t = 10)]
        ttl: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Allocate COUNT fresh ids from a counter; prints `START..END` (END excluded).
    Ids {
        /// Counter name.
        name: String,
        /// How many ids.
        count: u64,
    },
}

/// Runs `command` holding lock `name`: its exit code.
fn run_locked(
    reg: &dyn ServiceRegistry,
    name: &str,
    wait: Duration,
    ttl: Duration,
    command: &[String],
) -> Result<i32, String> {
    let lease = reg.grant(ttl).map_err(|e| e.to_string())?;
    let holder = format!(
        "zs registry lock (pid {} on {})",
        std::process::id(),
        std::env::var("HOSTNAME").unwrap_or_else(|_| "this host".into())
    );
    if let Err(e) = reg.lock(name, lease, &holder, wait) {
        let _ = reg.revoke(lease);
        return Err(e.to_string());
    }
    eprintln!("zs registry: lock {name} held (lease {lease:x})");
    let child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = reg.revoke(lease);
            return Err(format!("{}: {e}", command[0]));
        }
    };
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut next = Instant::now() + period;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if Instant::now() >= next {
            next = Instant::now() + period;
            match reg.keepalive(lease) {
                Ok(_) => {}
                Err(cluster::Error::Unavailable(e)) => {
                    eprintln!("zs registry: renewing the lock's lease: {e}; retrying")
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("lock {name} lost ({e}): command killed"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reg.unlock(name, lease);
    let _ = reg.revoke(lease);
    Ok(status.code().unwrap_or(1))
}

/// Connects to the registry named by `t`.
pub fn open(t: &Target) -> Result<Arc<dyn ServiceRegistry>, String> {
    if let Some(url) = &t.etcd {
        let cfg = EtcdConfig {
            prefix: t.prefix.clone(),
            ..EtcdConfig::new(url)
        };
        return Ok(Arc::new(
            Etcd::connect(cfg).map_err(|e| format!("etcd {url}: {e}"))?,
        ));
    }
    let fp = resolve_fingerprint(t.fingerprint.as_deref(), t.key.as_deref())?;
    let addr = t.addr;
    Ok(Arc::new(Remote::new(
        move |cmds| {
            ClientBuilder::new(addr)
                .fingerprint(fp)
                .registry(cmds)
                .connect()
                .map_err(|e| zserver::Error::ConnectionLost(e.to_string()))
        },
        Duration::from_secs(10),
    )))
}

fn line(i: &Instance) -> String {
    let mut s = format!(
        "{}/{}\tload {}/{}\t{}",
        i.kind,
        i.id,
        i.load.current,
        i.load.max,
        i.addrs.join(",")
    );
    if !i.vaddrs.is_empty() {
        s.push_str(&format!("\tvirtual {}", i.vaddrs.join(",")));
    }
    s.push_str(&format!("\tlease {:x}", i.lease));
    s
}

fn run_inner(a: RegistryArgs) -> Result<u8, String> {
    let reg = open(&a.target)?;
    match a.cmd {
        Cmd::Lock {
            name,
            wait,
            ttl,
            command,
        } => {
            let code = run_locked(
                &*reg,
                &name,
                Duration::from_secs(wait),
                Duration::from_secs(ttl),
                &command,
            )?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
        Cmd::Ids { name, count } => {
            let r = reg.allocate_ids(&name, count).map_err(|e| e.to_string())?;
            println!("{}..{}", r.start, r.end);
        }
        Cmd::Ls { kind } => {
            let snap = reg.list(kind.as_deref()).map_err(|e| e.to_string())?;
            for i in &snap.instances {
                println!("{}", line(i));
            }
            println!(
                "({} instances, revision {})",
                snap.instances.len(),
                snap.revision
            );
        }
        Cmd::Pick { kind } => match reg.pick(&kind).map_err(|e| e.to_string())? {
            Some(i) => println!("{}", line(&i)),
            None => return Err(format!("no {kind} instance available")),
        },
        Cmd::Watch { kind, duration } => {
            let mut w = reg
                .watch(kind.as_deref(), None)
                .map_err(|e| e.to_string())?;
            let end = duration.map(|d| std::time::Instant::now() + Duration::from_secs(d));
            while end.is_none_or(|e| std::time::Instant::now() < e) {
                match w
                    .next(Duration::from_millis(500))
                    .map_err(|e| e.to_string())?
                {
                    Some(WatchItem::Snapshot { snapshot, resync }) => {
                        println!(
                            "{} at revision {}:",
                            if resync { "resync" } else { "snapshot" },
                            snapshot.revision
                        );
                        for i in &snapshot.instances {
                            println!("  {}", line(i));
                        }
                    }
                    Some(WatchItem::Change(e)) => match e.change {
                        cluster::Change::Put { instance } => {
                            println!("{} put {}", e.revision, line(&instance))
                        }
                        cluster::Change::Delete { kind, id } => {
                            println!("{} delete {kind}/{id}", e.revision)
                        }
                    },
                    None => {}
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        }
        Cmd::Call {
            kind,
            command,
            args,
        } => {
            let c = FailoverClient::new(reg, &kind);
            let answer = c.call(&command, &args.join(" "))?;
            if let Some(i) = c.current() {
                eprintln!("(answered by {}/{} at {})", i.kind, i.id, i.addrs.join(","));
            }
            println!("{answer}");
        }
    }
    Ok(0)
}

/// Runs `zs registry`.
pub fn run(a: RegistryArgs) -> ExitCode {
    match run_inner(a) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("zs registry: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `zs serve` flags of the cluster registry.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeCluster {
    /// Serve the embedded registry from this server (it becomes the dispatcher).
    #[arg(long)]
    pub registry: bool,
    /// Where the embedded registry keeps its database [default: ./zs-registry].
    #[arg(long)]
    pub registry_dir: Option<PathBuf>,
    /// Register this server with the zs registry at this address.
    #[arg(long)]
    pub join: Option<SocketAddr>,
    /// Fingerprint of the registry given with --join.
    #[arg(long)]
    pub join_fingerprint: Option<String>,
    /// Register this server in etcd (client URL) instead.
    #[arg(long)]
    pub join_etcd: Option<String>,
    /// Service type to register as [default: zs].
    #[arg(long)]
    pub service_type: Option<String>,
    /// Instance id [default: the listening address, `:` and `.` as `-`].
    #[arg(long)]
    pub service_id: Option<String>,
    /// Capacity announced with the load (connections) [default: 10000].
    #[arg(long)]
    pub max_load: Option<u64>,
}

/// What `zs serve` keeps alive for the cluster.
pub struct Cluster {
    args: ServeCluster,
    keeper: Option<Keeper>,
}

impl Cluster {
    /// Before the server starts: serve the embedded registry if asked.
    pub fn prepare(
        args: &ServeCluster,
        commands: &mut zserver::Registry,
    ) -> Result<Cluster, String> {
        if args.registry {
            let dir = args
                .registry_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("zs-registry"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let vfs = Arc::new(
                zserver::db::DirVfs::new(&dir).map_err(|e| format!("{}: {e}", dir.display()))?,
            );
            let reg = Embedded::open(vfs, "registry", EmbeddedConfig::default())
                .map_err(|e| format!("registry in {}: {e}", dir.display()))?;
            cluster::service::install(commands, reg, cluster::service::ServiceConfig::default());
            println!(
                "registry: serving the embedded registry (data in {})",
                dir.display()
            );
        }
        Ok(Cluster {
            args: args.clone(),
            keeper: None,
        })
    }

    /// After the server started: join a registry if asked.
    pub fn join(&mut self, server: &Arc<RunningServer>) -> Result<(), String> {
        let a = &self.args;
        let reg: Arc<dyn ServiceRegistry> = match (&a.join, &a.join_etcd) {
            (None, None) => return Ok(()),
            (_, Some(url)) => open(&Target {
                etcd: Some(url.clone()),
                addr: server.local_addr(),
                fingerprint: None,
                key: None,
                prefix: "/zsreg/".into(),
            })?,
            (Some(addr), None) => open(&Target {
                etcd: None,
                addr: *addr,
                fingerprint: a.join_fingerprint.clone(),
                key: None,
                prefix: String::new(),
            })?,
        };
        let kind = a.service_type.clone().unwrap_or_else(|| "zs".into());
        let id = a.service_id.clone().unwrap_or_else(|| {
            server
                .local_addr()
                .to_string()
                .replace([':', '.', '[', ']'], "-")
        });
        let mut m = Member::new(&kind, &id);
        m.load = zserver::LoadSource::Connections {
            max: a.max_load.unwrap_or(10_000),
        };
        m.ttl = Duration::from_secs(5);
        self.keeper =
            Some(join_cluster(server, reg, m).map_err(|e| format!("joining the registry: {e}"))?);
        println!("registry: registered as {kind}/{id}");
        Ok(())
    }
}
