//! `zs user …` and `zs msg …`: the application services of a running
//! `zs serve` (accounts, offline messages), and the part of `zs serve` that
//! opens them.
//!
//! Every command connects (fingerprint as for `zs call`), logs in, runs, and
//! logs out. Who logs in: `--as` (default `admin`) with `--password` or the
//! `ZS_PASSWORD` environment variable; for `admin` without either, the
//! password `zs serve` wrote to `<data>/admin.password` (so, in the directory
//! where `zs serve` runs, `zs user add ann` needs nothing else).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zserver::services::{SecondLogin, Services, ServicesClient, ServicesConfig};
use zserver::ClientBuilder;

use crate::call::resolve_fingerprint;

/// Where `zs serve` keeps the services' store by default.
pub const DEFAULT_DATA_DIR: &str = "zs-data";
/// The admin password file `zs serve` writes in the data directory.
pub const ADMIN_PASSWORD_FILE: &str = "admin.password";
/// The admin account `zs serve` creates.
pub const ADMIN_USER: &str = "admin";

/// Opens the services for `zs serve` in `data` (created when missing). On
/// the first start an `admin` account is created and its random password
/// written to `<data>/admin.password` (mode 0600); returns the services and
/// that file's path when it was just written.
pub fn open_for_serve(
    data: &Path,
    cfg: ServicesConfig,
) -> Result<(Services, Option<PathBuf>), String> {
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let services = Services::open_dir(data, cfg)
        .map_err(|e| format!("services store {}: {}", data.display(), e.message))?;
    let written = match services
        .ensure_admin(ADMIN_USER)
        .map_err(|e| e.to_string())?
    {
        Some(pw) => {
            let path = data.join(ADMIN_PASSWORD_FILE);
            write_secret(&path, &pw)?;
            Some(path)
        }
        None => None,
    };
    Ok((services, written))
}

/// The `[services]` table of `zs serve`'s TOML file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesFile {
    /// `false`: no services.
    pub enabled: Option<bool>,
    /// `kick` (default) or `refuse`.
    pub second_login: Option<String>,
    /// Anyone may register.
    pub open_registration: Option<bool>,
    /// Argon2id memory (KiB) of new hashes.
    pub password_memory_kib: Option<u32>,
    /// Argon2id passes of new hashes.
    pub password_iterations: Option<u32>,
    /// Failed logins of one user before throttling.
    pub user_failures: Option<usize>,
    /// Failed logins from one address before throttling.
    pub addr_failures: Option<usize>,
    /// Bytes of files per user, in MiB.
    pub file_quota_mib: Option<u64>,
    /// Largest file, in MiB.
    pub max_file_mib: Option<u64>,
}

impl ServicesFile {
    /// The services' configuration: defaults overridden by the file.
    pub fn config(&self) -> Result<ServicesConfig, String> {
        let mut c = ServicesConfig::default();
        let a = &mut c.accounts;
        match self.second_login.as_deref() {
            None | Some("kick") => a.second_login = SecondLogin::Kick,
            Some("refuse") => a.second_login = SecondLogin::Refuse,
            Some(o) => return Err(format!("services.second_login: {o:?} (kick or refuse)")),
        }
        if let Some(v) = self.open_registration {
            a.open_registration = v;
        }
        if let Some(v) = self.password_memory_kib {
            a.password_params.memory_kib = v;
        }
        if let Some(v) = self.password_iterations {
            a.password_params.iterations = v;
        }
        if let Some(v) = self.user_failures {
            a.user_failures = v;
        }
        if let Some(v) = self.addr_failures {
            a.addr_failures = v;
        }
        if let Some(v) = self.file_quota_mib {
            c.files.quota_per_user = v.saturating_mul(1 << 20);
        }
        if let Some(v) = self.max_file_mib {
            c.files.max_file_size = v.saturating_mul(1 << 20);
        }
        Ok(c)
    }
}

fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    writeln!(f, "{text}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// How to reach and log in to the server (shared by `zs user` and `zs msg`).
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// Server address.
    #[arg(long, default_value = zserver::DEFAULT_ADDR, global = true)]
    pub addr: SocketAddr,
    /// The server's fingerprint (`sha3-256:…`; else ZS_FINGERPRINT or --key).
    #[arg(long, global = true)]
    pub fingerprint: Option<String>,
    /// The server's key file, to read the fingerprint of a local server.
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Log in as this user.
    #[arg(long = "as", default_value = ADMIN_USER, global = true)]
    pub user: String,
    /// Password of `--as` (else ZS_PASSWORD, else `<data>/admin.password` for admin).
    #[arg(long, global = true)]
    pub password: Option<String>,
    /// The server's data directory (for its admin.password file).
    #[arg(long, default_value = DEFAULT_DATA_DIR, global = true)]
    pub data: PathBuf,
}

impl Conn {
    fn password(&self) -> Result<String, String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        if let Ok(p) = std::env::var("ZS_PASSWORD") {
            return Ok(p);
        }
        if self.user.eq_ignore_ascii_case(ADMIN_USER) {
            let path = self.data.join(ADMIN_PASSWORD_FILE);
            if let Ok(text) = std::fs::read_to_string(&path) {
                return Ok(text.trim_end_matches(['\n', '\r']).to_owned());
            }
        }
        Err(format!(
            "no password for {:?}: pass --password or set ZS_PASSWORD",
            self.user
        ))
    }

    fn open(&self) -> Result<ServicesClient, String> {
        let fp = resolve_fingerprint(self.fingerprint.as_deref(), self.key.as_deref())?;
        let mut options = zserver::Options::client();
        options.call_timeout = Some(Duration::from_secs(30));
        let client = ClientBuilder::new(self.addr)
            .fingerprint(fp)
            .options(options)
            .connect()
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        Ok(ServicesClient::new(client))
    }

    fn connect(&self) -> Result<ServicesClient, String> {
        let c = self.open()?;
        c.login(&self.user, &self.password()?)
            .map_err(|e| format!("login as {:?}: {}", self.user, e.message))?;
        Ok(c)
    }

    /// `n` more connections attached to the session of `main` (its ticket).
    fn attach(&self, main: &ServicesClient, n: usize) -> Result<Vec<ServicesClient>, String> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let ticket = main
            .ticket()
            .map_err(|e| format!("ticket: {}", e.message))?;
        (0..n)
            .map(|_| {
                let c = self.open()?;
                c.attach(&self.user, &ticket)
                    .map_err(|e| format!("attach a connection: {}", e.message))?;
                Ok(c)
            })
            .collect()
    }
}

/// Arguments of `zs user`.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    #[command(subcommand)]
    verb: UserVerb,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum UserVerb {
    /// Create an account (password from --new-password or the first stdin line).
    Add {
        /// The new user's name.
        name: String,
        /// The new user's password.
        #[arg(long)]
        new_password: Option<String>,
    },
    /// Set a user's password (admin), from --new-password or the first stdin line.
    Passwd {
        /// The user.
        name: String,
        /// The new password.
        #[arg(long)]
        new_password: Option<String>,
    },
    /// List the accounts.
    List,
    /// Disable an account (its session ends); --enable turns it back on.
    Disable {
        /// The user.
        name: String,
        /// Enable instead.
        #[arg(long)]
        enable: bool,
    },
}

fn new_password(flag: Option<String>) -> Result<String, String> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password from stdin: {e}"))?;
    let p = line.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        return Err("no password: pass --new-password or write it on stdin".into());
    }
    Ok(p)
}

fn run_user(a: UserArgs) -> Result<String, String> {
    let c = a.conn.connect()?;
    let out = match a.verb {
        UserVerb::Add {
            name,
            new_password: p,
        } => {
            let id = c
                .register(&name, &new_password(p)?)
                .map_err(|e| e.message)?;
            format!("user {name} created (id {id})")
        }
        UserVerb::Passwd {
            name,
            new_password: p,
        } => {
            c.reset_password(&name, &new_password(p)?)
                .map_err(|e| e.message)?;
            format!("password of {name} changed")
        }
        UserVerb::List => {
            let mut s = String::from("id\tname\tstate\tadmin\taliases\n");
            let mut after = 0;
            loop {
                let page = c.list_users(after, 1000).map_err(|e| e.message)?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for u in &page {
                    let state = match (u.disabled, u.online) {
                        (true, _) => "disabled",
                        (false, true) => "online",
                        (false, false) => "offline",
                    };
                    s.push_str(&format!(
                        "{}\t{}\t{state}\t{}\t{}\n",
                        u.id,
                        u.name,
                        if u.admin { "yes" } else { "no" },
                        u.aliases.join(",")
                    ));
                }
            }
            s
        }
        UserVerb::Disable { name, enable } => {
            c.set_disabled(&name, !enable).map_err(|e| e.message)?;
            format!("{name} {}", if enable { "enabled" } else { "disabled" })
        }
    };
    let _ = c.logout();
    c.close();
    Ok(out)
}

/// Arguments of `zs msg`.
#[derive(Debug, clap::Args)]
pub struct MsgArgs {
    #[command(subcommand)]
    verb: MsgVerb,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum MsgVerb {
    /// Send a message to a user (queued durably when they are offline).
    Send {
        /// Recipient (name or alias).
        to: String,
        /// The text (joined with spaces).
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Print the queued messages, oldest first, and acknowledge them.
    Inbox {
        /// Leave them queued.
        #[arg(long)]
        keep: bool,
    },
}

fn run_msg(a: MsgArgs) -> Result<String, String> {
    let c = a.conn.connect()?;
    let out = match a.verb {
        MsgVerb::Send { to, text } => {
            // Nonce: the wall clock in microseconds (grows per sender-recipient pair).
            let nonce = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(1);
            let s = c
                .send(&to, nonce, text.join(" ").as_bytes())
                .map_err(|e| e.message)?;
            format!("sent to {to} (message {})", s.id)
        }
        MsgVerb::Inbox { keep } => {
            let mut s = String::new();
            let mut after = 0;
            let mut n = 0;
            loop {
                let page = c.fetch(after, 256).map_err(|e| e.message)?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for m in &page {
                    s.push_str(&format!(
                        "{} {}: {}\n",
                        m.id,
                        m.from_name,
                        String::from_utf8_lossy(&m.body)
                    ));
                }
                n += page.len();
                if !keep {
                    let ids: Vec<u64> = page.iter().map(|m| m.id).collect();
                    c.ack(&ids).map_err(|e| e.message)?;
                }
            }
            s.push_str(&format!("{n} message(s)"));
            s
        }
    };
    let _ = c.logout();
    c.close();
    Ok(out)
}

/// Arguments of `zs file`.
#[derive(Debug, clap::Args)]
pub struct FileArgs {
    #[command(subcommand)]
    verb: FileVerb,
    /// Use the public area instead of your private space.
    #[arg(long, global = true)]
    public: bool,
    /// Chunk size in KiB for uploads (default 256) and downloads (default
    /// 1020: the largest read whose answer frame stays within 1 MiB).
    #[arg(long, global = true)]
    chunk_kib: Option<u32>,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, clap::Subcommand)]
enum FileVerb {
    /// Upload a local file (running the same command again resumes it; known
    /// content uploads instantly).
    Put {
        /// The local file.
        local: PathBuf,
        /// Where to put it [default: its file name, at the root].
        remote: Option<String>,
        /// Delta upload against this server file (an older version): only
        /// the blocks not found in it are sent.
        #[arg(long)]
        base: Option<String>,
    },
    /// Download a file (resumes from `<local>.part`; the hash is checked).
    Get {
        /// The remote file.
        remote: String,
        /// Where to write it [default: its file name, here].
        local: Option<PathBuf>,
        /// Connections fetching shares of the file at once (the extra ones
        /// attach to this login's session).
        #[arg(long, short = 'j', default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=8))]
        connections: u16,
    },
    /// List a directory.
    Ls {
        /// The directory [default: the root].
        #[arg(default_value = "")]
        path: String,
    },
    /// Delete a file or an empty directory.
    Rm {
        /// The path.
        path: String,
    },
    /// Create a directory.
    Mkdir {
        /// The path.
        path: String,
    },
}

fn bar(quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_message(what.to_owned());
    b
}

fn run_file(a: FileArgs) -> Result<String, String> {
    let space = if a.public {
        zserver::services::Space::Public
    } else {
        zserver::services::Space::Private
    };
    let chunk_of =
        |default_kib: u32| (a.chunk_kib.unwrap_or(default_kib).clamp(1, 1024) as usize) << 10;
    let chunk = chunk_of(256);
    let read_chunk = chunk_of(zserver::services::READ_CHUNK >> 10);
    let c = a.conn.connect()?;
    let out = match a.verb {
        FileVerb::Put {
            local,
            remote,
            base: Some(base),
        } => {
            let remote = remote.unwrap_or_else(|| {
                local
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            // Read as a stream (bounded memory whatever the file's size).
            let io = |e: std::io::Error| format!("{}: {e}", local.display());
            let mut f = std::fs::File::open(&local).map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            let rep = c
                .upload_delta_from(space, &mut f, len, &remote, space, &base, 4096)
                .map_err(|e| e.message)?;
            if rep.instant {
                format!("{remote}: instant upload (the server had this content)")
            } else {
                format!(
                    "{remote}: delta upload against {base}: {} bytes sent, {} copied on the server \
                     ({}-byte blocks)",
                    rep.literal, rep.copied, rep.block
                )
            }
        }
        FileVerb::Put {
            local,
            remote,
            base: None,
        } => {
            let remote = remote.unwrap_or_else(|| {
                local
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let b = bar(a.quiet, &format!("put {remote}"));
            let mut first = true;
            let rep = c
                .upload_file(space, &local, &remote, chunk, |done, total| {
                    if std::mem::take(&mut first) && done > 0 && done < total {
                        b.suspend(|| eprintln!("{remote}: resuming at byte {done} of {total}"));
                    }
                    b.set_length(total);
                    b.set_position(done);
                })
                .map_err(|e| e.message)?;
            b.finish_and_clear();
            if rep.instant && rep.sent > 0 {
                format!(
                    "{remote}: instant upload (the server had this content; found once hashed, after {} bytes were sent)",
                    rep.sent
                )
            } else if rep.instant {
                format!("{remote}: instant upload (the server had this content)")
            } else if rep.resumed_from > 0 {
                format!(
                    "{remote}: uploaded, resumed at byte {} ({} bytes sent)",
                    rep.resumed_from, rep.sent
                )
            } else {
                format!("{remote}: uploaded ({} bytes sent)", rep.sent)
            }
        }
        FileVerb::Get {
            remote,
            local,
            connections,
        } => {
            let local = local
                .unwrap_or_else(|| PathBuf::from(remote.rsplit('/').next().unwrap_or("download")));
            let more = a.conn.attach(&c, connections as usize - 1)?;
            let b = bar(a.quiet, &format!("get {remote}"));
            let n = c
                .download_parallel(
                    &more,
                    space,
                    &remote,
                    &local,
                    read_chunk as u32,
                    |done, total| {
                        b.set_length(total);
                        b.set_position(done);
                    },
                )
                .map_err(|e| e.message)?;
            b.finish_and_clear();
            for m in more {
                m.close();
            }
            format!(
                "{}: {n} bytes fetched over {connections} connection{}, hash checked",
                local.display(),
                if connections == 1 { "" } else { "s" }
            )
        }
        FileVerb::Ls { path } => {
            let list = c.list_files(space, &path).map_err(|e| e.message)?;
            let mut s = String::new();
            for e in &list {
                if e.dir {
                    s.push_str(&format!("{}/\n", e.name));
                } else {
                    s.push_str(&format!("{}\t{}\t{}\n", e.name, e.size, e.hash));
                }
            }
            s.push_str(&format!("{} entries", list.len()));
            s
        }
        FileVerb::Rm { path } => {
            c.delete(space, &path).map_err(|e| e.message)?;
            format!("{path} deleted")
        }
        FileVerb::Mkdir { path } => {
            c.mkdir(space, &path).map_err(|e| e.message)?;
            format!("{path} created")
        }
    };
    let _ = c.logout();
    c.close();
    Ok(out)
}

/// Runs `zs file`.
pub fn run_file_cmd(a: FileArgs) -> ExitCode {
    finish("file", run_file(a))
}

fn finish(name: &str, r: Result<String, String>) -> ExitCode {
    match r {
        Ok(s) => {
            println!("{}", s.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zs {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `zs user`.
pub fn run_user_cmd(a: UserArgs) -> ExitCode {
    finish("user", run_user(a))
}

/// Runs `zs msg`.
pub fn run_msg_cmd(a: MsgArgs) -> ExitCode {
    finish("msg", run_msg(a))
}
