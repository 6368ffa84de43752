//! A NAT test bed in Linux network namespaces (feature `netlab`; needs root, `ip` and `nft`).
//!
//! Topology (all addresses from 198.18.0.0/15, the benchmarking range):
//!
//! ```text
//!  host i (198.18.i.2) ── router i (198.18.i.1 | 198.19.i.1, nftables NAT) ── public
//!                                                  public: 198.19.i.2 per site, and
//!                                                  198.19.0.2 + 198.19.0.3 (servers)
//! ```
//!
//! The public namespace routes between sites (it plays the Internet). Each namespace name
//! is unique per lab (`zp-<pid>-<n>-…`), so tests run in parallel; [`Lab`]'s `Drop` kills
//! the processes it started and deletes its namespaces, also on panic; a new lab first
//! deletes namespaces left by dead processes.
//!
//! Code runs "inside" a namespace through [`Lab::run_in`]: a fresh thread enters the
//! namespace (`setns`) and runs the closure there; sockets created by it stay in that
//! namespace wherever they are used afterwards (a tokio runtime elsewhere can drive them).

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The NAT a site's router applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// No NAT: the host's address is routed as is (a public host).
    None,
    /// `masquerade`: endpoint-independent mapping, the source port kept when free.
    EndpointIndependent,
    /// `masquerade fully-random`: a new random port per destination.
    RandomPorts,
    /// A NAT whose ports change regularly: every new UDP flow (a new destination) is
    /// `snat`ed to the router's address with the next port of a counter
    /// (`numgen inc`, from [`REGULAR_PORT_BASE`]), so consecutive mappings differ by
    /// +1 whatever the destination (endpoint-dependent, delta 1: what cheap routers
    /// with a sequential port allocator do). TCP is masqueraded.
    RegularPorts,
}

/// First external port of a [`Nat::RegularPorts`] router.
pub const REGULAR_PORT_BASE: u16 = 30000;
/// Ports a [`Nat::RegularPorts`] router counts through before it wraps to the first.
pub const REGULAR_PORTS: u16 = 4096;

/// The first server address in the public namespace (STUN primary, relay).
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// The second server address in the public namespace (STUN alternate).
pub const PUBLIC_IP2: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 3);

/// A site: a host behind a router.
#[derive(Debug, Clone)]
pub struct Site {
    /// The host's namespace.
    pub ns: String,
    /// The router's namespace.
    pub router_ns: String,
    /// The host's address.
    pub ip: IpAddr,
    /// The router's public address (what a NAT maps to).
    pub public_ip: IpAddr,
    /// Its NAT.
    pub nat: Nat,
}

/// A running test bed.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// The public namespace.
    pub public_ns: String,
    namespaces: Vec<String>,
    sites: u8,
    children: Vec<Child>,
    dirs: Vec<std::path::PathBuf>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run_stdin(args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut c = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    c.stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        || std::path::Path::new("/usr/sbin").join(program).is_file()
        || std::path::Path::new("/sbin").join(program).is_file()
}

/// Delete `zp-<pid>-…` namespaces whose process is gone (a killed test run).
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("zp-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

impl Lab {
    /// Why a lab cannot be built here, or `None` when it can (root, `ip`, `nft`).
    pub fn unavailable() -> Option<String> {
        if !have("ip") {
            return Some("`ip` (iproute2) not installed".into());
        }
        if !have("nft") {
            return Some("`nft` (nftables) not installed".into());
        }
        if !std::path::Path::new("/proc/self/ns/net").exists() {
            return Some("no network namespaces".into());
        }
        if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
            let uid0 = s
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0");
            if !uid0 {
                return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
            }
        }
        None
    }

    /// A lab with only the public namespace (servers on [`PUBLIC_IP`] and [`PUBLIC_IP2`]).
    pub fn new() -> Result<Lab, String> {
        if let Some(why) = Lab::unavailable() {
            return Err(why);
        }
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("zp-{}-{n}", std::process::id());
        let public_ns = format!("{prefix}-pub");
        let mut lab = Lab {
            prefix,
            public_ns: public_ns.clone(),
            namespaces: Vec::new(),
            sites: 0,
            children: Vec::new(),
            dirs: Vec::new(),
        };
        lab.add_ns(&public_ns)?;
        let p = public_ns.as_str();
        run(&["ip", "-n", p, "addr", "add", "198.19.0.2/32", "dev", "lo"])?;
        run(&["ip", "-n", p, "addr", "add", "198.19.0.3/32", "dev", "lo"])?;
        run(&[
            "ip",
            "netns",
            "exec",
            p,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        Ok(lab)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        run(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.to_string());
        run(&["ip", "-n", name, "link", "set", "lo", "up"])
    }

    /// Add a site (host + router with `nat`); sites are numbered 1, 2, … (at most 200).
    pub fn add_site(&mut self, nat: Nat) -> Result<Site, String> {
        if self.sites >= 200 {
            return Err("too many sites".into());
        }
        self.sites += 1;
        let i = self.sites;
        let host = format!("{}-h{i}", self.prefix);
        let router = format!("{}-r{i}", self.prefix);
        self.add_ns(&host)?;
        self.add_ns(&router)?;
        let p = self.public_ns.clone();
        let (h, r) = (host.as_str(), router.as_str());
        let ri = format!("r{i}i");
        let ro = format!("r{i}o");
        let pi = format!("p{i}");
        run(&[
            "ip", "link", "add", "h0", "netns", h, "type", "veth", "peer", "name", &ri, "netns", r,
        ])?;
        run(&[
            "ip", "link", "add", &ro, "netns", r, "type", "veth", "peer", "name", &pi, "netns", &p,
        ])?;
        let hip = format!("198.18.{i}.2");
        let rin = format!("198.18.{i}.1");
        let rout = format!("198.19.{i}.1");
        let pside = format!("198.19.{i}.2");
        run(&[
            "ip",
            "-n",
            h,
            "addr",
            "add",
            &format!("{hip}/24"),
            "dev",
            "h0",
        ])?;
        run(&[
            "ip",
            "-n",
            r,
            "addr",
            "add",
            &format!("{rin}/24"),
            "dev",
            &ri,
        ])?;
        run(&[
            "ip",
            "-n",
            r,
            "addr",
            "add",
            &format!("{rout}/24"),
            "dev",
            &ro,
        ])?;
        run(&[
            "ip",
            "-n",
            &p,
            "addr",
            "add",
            &format!("{pside}/24"),
            "dev",
            &pi,
        ])?;
        for (ns, dev) in [
            (h, "h0"),
            (r, ri.as_str()),
            (r, ro.as_str()),
            (p.as_str(), pi.as_str()),
        ] {
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        run(&["ip", "-n", h, "route", "add", "default", "via", &rin])?;
        run(&["ip", "-n", r, "route", "add", "default", "via", &pside])?;
        run(&[
            "ip",
            "netns",
            "exec",
            r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        // NAT rules are evaluated for the first packet of a flow only, so the
        // counter of `RegularPorts` moves once per new mapping.
        let rules = match nat {
            Nat::None => None,
            Nat::EndpointIndependent => Some(format!("oifname \"{ro}\" masquerade")),
            Nat::RandomPorts => Some(format!("oifname \"{ro}\" masquerade fully-random")),
            Nat::RegularPorts => {
                // `numgen inc mod N offset BASE` straight into the port would be
                // loaded in host byte order by nft 1.0.6 (seen: +256 per flow from
                // 12405), so the counter indexes a map of ports instead.
                let ports: Vec<String> = (0..REGULAR_PORTS)
                    .map(|k| format!("{k} : {}", REGULAR_PORT_BASE + k))
                    .collect();
                Some(format!(
                    "oifname \"{ro}\" meta l4proto udp snat to {rout} : numgen inc mod {REGULAR_PORTS} map {{ {} }}\n  oifname \"{ro}\" masquerade",
                    ports.join(", ")
                ))
            }
        };
        match rules {
            Some(rules) => run_stdin(
                &["ip", "netns", "exec", r, "nft", "-f", "-"],
                &format!(
                    "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  {rules}\n }}\n}}\n"
                ),
            )?,
            None => run(&[
                "ip", "-n", &p, "route", "add", &format!("198.18.{i}.0/24"), "via", &rout,
            ])?,
        }
        Ok(Site {
            ns: host,
            router_ns: router,
            ip: hip.parse().map_err(|e| format!("{e}"))?,
            public_ip: match nat {
                Nat::None => hip.parse().map_err(|e| format!("{e}"))?,
                _ => rout.parse().map_err(|e| format!("{e}"))?,
            },
            nat,
        })
    }

    /// Run `f` on a new thread inside namespace `ns`; returns its result.
    pub fn run_in<T, F>(&self, ns: &str, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        enter_and_run(ns, f)
    }

    /// Start `cmd args…` inside `ns` (through `ip netns exec`); killed when the lab drops.
    pub fn spawn(&mut self, ns: &str, cmd: &str, args: &[&str]) -> Result<u32, String> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {cmd}: {e}"))?;
        let id = child.id();
        self.children.push(child);
        Ok(id)
    }

    /// The namespaces of this lab.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }
}

/// Run `f` on a new thread that first enters the named network namespace.
pub fn enter_and_run<T, F>(ns: &str, f: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns: {e}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| "closure panicked inside the namespace".to_string())?
}

/// A [`crate::punch::SocketFactory`] whose sockets are bound to `ip` inside namespace
/// `ns` (the extra sockets of a birthday listener in the bed).
pub fn socket_factory(ns: String, ip: IpAddr) -> std::sync::Arc<crate::punch::SocketFactory> {
    std::sync::Arc::new(move |n: usize| {
        enter_and_run(&ns, move || {
            (0..n)
                .map(|_| std::net::UdpSocket::bind((ip, 0)))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .map_err(std::io::Error::other)?
    })
}

/// Like [`enter_and_run`], without waiting: the thread runs `f` inside `ns` in the
/// background (e.g. a current-thread tokio runtime whose tasks then all live there).
pub fn spawn_in<F>(ns: &str, f: F) -> Result<std::thread::JoinHandle<()>, String>
where
    F: FnOnce() + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let entered = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns: {e}"));
        let ok = entered.is_ok();
        let _ = tx.send(entered);
        if ok {
            f();
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    Ok(t)
}

/// A current-thread tokio runtime on a thread inside a namespace: every task spawned on
/// it (through [`NsRuntime::handle`] or [`NsRuntime::run`]) runs on that thread, so every
/// socket it opens lives in the namespace. Stopped (tasks dropped) on drop.
#[derive(Debug)]
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the runtime inside `ns`.
    pub fn new(ns: &str) -> Result<NsRuntime, String> {
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stx, srx) = tokio::sync::oneshot::channel::<()>();
        let thread = spawn_in(ns, move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let _ = htx.send(rt.handle().clone());
            rt.block_on(async {
                let _ = srx.await;
            });
        })?;
        let handle = hrx
            .recv()
            .map_err(|_| "runtime did not start".to_string())?;
        Ok(NsRuntime {
            handle,
            stop: Some(stx),
            thread: Some(thread),
        })
    }

    /// The runtime's handle (spawn tasks that live in the namespace).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `f` on the runtime and waits for its output (from any async context).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        match self.handle.spawn(f).await {
            Ok(t) => t,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A router of the lab running Debian's `miniupnpd` ([`Lab::start_miniupnpd`]).
#[derive(Debug, Clone)]
pub struct MappingRouter {
    /// The router's namespace.
    pub ns: String,
    /// Its inner address: the hosts' default gateway, where PCP / NAT-PMP listen.
    pub gateway: Ipv4Addr,
    /// The public address mappings are made on (198.20.i.1).
    pub public_ip: Ipv4Addr,
}

impl MappingRouter {
    /// The router's nftables rules that miniupnpd manages (its DNAT rules).
    pub fn mapping_rules(&self) -> Result<String, String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "list", "table", "inet", "zsupnp",
            ])
            .output()
            .map_err(|e| format!("nft: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Lab {
    /// Starts `miniupnpd` (Debian's `miniupnpd-nftables`) on `site`'s router: PCP and
    /// NAT-PMP on the router's inner address, UPnP-IGD (SSDP on the inner interface,
    /// HTTP on a port of miniupnpd's choice), mappings as DNAT rules in table
    /// `inet zsupnp`. miniupnpd refuses reserved external addresses (198.18.0.0/15
    /// among them; 2.3.1 has no switch for that), so the router also gets 198.20.i.1,
    /// routed from the public namespace, as the address it maps on: the traffic still
    /// never leaves the lab. Returns once the router answers on port 5351.
    pub fn start_miniupnpd(&mut self, site: &Site) -> Result<MappingRouter, String> {
        self.start_miniupnpd_with(site, true)
    }

    /// [`Lab::start_miniupnpd`] with PCP and NAT-PMP off (`pcp_natpmp` false): a
    /// router that speaks only UPnP-IGD. Returns once its SSDP port (1900) is taken.
    pub fn start_miniupnpd_with(
        &mut self,
        site: &Site,
        pcp_natpmp: bool,
    ) -> Result<MappingRouter, String> {
        if !have("miniupnpd") {
            return Err("`miniupnpd` (miniupnpd-nftables) not installed".into());
        }
        let IpAddr::V4(hip) = site.ip else {
            return Err("IPv4 sites only".into());
        };
        let i = hip.octets()[2];
        let r = site.router_ns.clone();
        let (ri, ro) = (format!("r{i}i"), format!("r{i}o"));
        let gateway = Ipv4Addr::new(198, 18, i, 1);
        let public_ip = Ipv4Addr::new(198, 20, i, 1);
        run(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("{public_ip}/32"),
            "dev",
            &ro,
        ])?;
        run(&[
            "ip",
            "-n",
            &self.public_ns,
            "route",
            "add",
            &format!("{public_ip}/32"),
            "via",
            &format!("198.19.{i}.1"),
        ])?;
        run_stdin(
            &["ip", "netns", "exec", &r, "nft", "-f", "-"],
            "table inet zsupnp {\n\
             chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }\n\
             chain miniupnpd { }\n\
             chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }\n\
             chain prerouting_miniupnpd { }\n\
             chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }\n\
             chain postrouting_miniupnpd { }\n\
             }\n",
        )?;
        let dir = std::env::temp_dir().join(format!("{}-upnp{i}", self.prefix));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        self.dirs.push(dir.clone());
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(
            &conf,
            format!(
                "ext_ifname={ro}\nlistening_ip={ri}\next_ip={public_ip}\nhttp_port=0\n\
                 enable_natpmp={}\nenable_upnp=yes\nsecure_mode=yes\nsystem_uptime=no\n\
                 min_lifetime=1\nmax_lifetime=86400\n\
                 upnp_table_name=zsupnp\nupnp_nat_table_name=zsupnp\n\
                 upnp_forward_chain=miniupnpd\nupnp_nat_chain=prerouting_miniupnpd\n\
                 upnp_nat_postrouting_chain=postrouting_miniupnpd\n\
                 uuid=3d3cec3a-8cf0-11e0-98ee-00000000{i:04x}\n\
                 allow 1024-65535 198.18.{i}.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
                if pcp_natpmp { "yes" } else { "no" }
            ),
        )
        .map_err(|e| format!("{}: {e}", conf.display()))?;
        let pid = dir.join("miniupnpd.pid");
        let (c, p) = (conf.display().to_string(), pid.display().to_string());
        self.spawn(&r, "miniupnpd", &["-d", "-f", &c, "-P", &p])?;
        // Ready when port 5351 (PCP, NAT-PMP) or 1900 (SSDP) is taken.
        let port = if pcp_natpmp { 5351 } else { 1900 };
        let t = std::time::Instant::now();
        loop {
            let busy = enter_and_run(&r, move || {
                std::net::UdpSocket::bind((gateway, port)).is_err()
            })?;
            if busy {
                break;
            }
            if t.elapsed() > std::time::Duration::from_secs(20) {
                return Err(format!("miniupnpd did not open port {port} in 20 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(MappingRouter {
            ns: r,
            gateway,
            public_ip,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// In a test: build a lab or, when namespaces are unavailable, fail under `CI` and print
/// `skipped: <reason>` otherwise (`None`: return from the test).
pub fn lab_or_skip() -> Option<Lab> {
    match Lab::new() {
        Ok(l) => Some(l),
        Err(why) => {
            if std::env::var_os("CI").is_some() {
                panic!("netlab unavailable under CI: {why}");
            }
            println!("skipped: {why}");
            None
        }
    }
}
