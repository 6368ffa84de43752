//! The network DB service in the CLI: `zs serve` serves `./zs-data/db` (unless
//! `--no-db-service`), and `zs db --remote ADDR …` runs the `zs db` verbs against
//! a server; `zs db watch` prints changes; several `--remote` make `zs db query`
//! a fan-out with an ordered merge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use zs_db_service::{
    fan_out, Change, DbClient, DbService, Durability, FanOutConfig, QuerySpec, ServiceConfig,
};

use crate::db::{record_json, stats_json, value_bytes, DbCmd};

/// The DB service flags of `zs serve`.
#[derive(Debug, clap::Args)]
pub struct DbServiceArgs {
    /// Do not serve the network DB service.
    #[arg(long)]
    pub no_db_service: bool,
    /// Directory of the served databases [default: the data directory's `db/`,
    /// ./zs-data/db].
    #[arg(long)]
    pub db_dir: Option<PathBuf>,
    /// Serve the databases to logged-in users only (`user.login` of the
    /// accounts service, on the same connection), each with the access the
    /// rules give it (`DbService::grant`, request Grant; admins: everything).
    #[arg(long)]
    pub db_require_login: bool,
}

/// Adds the DB service to `reg` (unless disabled); its databases live in
/// `--db-dir`, else in `data/db`. Returns what to print and the service (for
/// the dashboard's panel).
pub fn install(
    a: &DbServiceArgs,
    data: &std::path::Path,
    accounts: Option<&zserver::services::Accounts>,
    reg: &mut zserver::Registry,
) -> Result<Option<(String, DbService)>, String> {
    if a.no_db_service {
        return Ok(None);
    }
    let dir = a.db_dir.clone().unwrap_or_else(|| data.join("db"));
    let service = DbService::open_dir(&dir, ServiceConfig::default())
        .map_err(|e| format!("db service on {}: {e}", dir.display()))?;
    if a.db_require_login {
        use zserver::DbServiceAccountsExt;
        let accounts = accounts.ok_or(
            "--db-require-login needs the accounts service (drop --no-services)".to_string(),
        )?;
        service.require_accounts(accounts);
    }
    service.register(reg);
    Ok(Some((
        format!(
            "db service: databases in {} (zs db --remote ADDR …)",
            dir.display()
        ),
        service,
    )))
}

/// The remote flags of `zs db`.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Run the verb against a `zs serve` at this address (repeat it to fan a
    /// query out over several servers).
    #[arg(long)]
    pub remote: Vec<SocketAddr>,
    /// Remote `query` only: order the results by this zs-expr key (highest
    /// first with `--reverse`) instead of by id; needs `--limit`. With several
    /// `--remote`, the servers' sorted results are merged by the key.
    #[arg(long)]
    pub sort: Option<String>,
    /// The server's fingerprint (else `ZS_FINGERPRINT`, else the key file).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The server's key file, to read the fingerprint of a local server.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Log in as this user (the server's accounts service, as `zs user` does)
    /// before the verb: needed by a server started with `--db-require-login`.
    #[arg(long)]
    pub user: Option<String>,
    /// The file whose first line is the password of `--user` (else the
    /// `ZS_PASSWORD` environment variable).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

/// The password of `--user`: the first line of `--password-file`, else
/// `ZS_PASSWORD`.
fn password(r: &RemoteArgs) -> Result<String, String> {
    if let Some(f) = &r.password_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("password file {}: {e}", f.display()))?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(format!("password file {} is empty", f.display()));
        }
        return Ok(line);
    }
    std::env::var("ZS_PASSWORD")
        .map_err(|_| "--user needs --password-file FILE or ZS_PASSWORD".to_string())
}

/// Prints access rules for `zs db rules`: `database user access` per line.
pub fn print_rules(rules: &[(String, String, zs_db_service::Access)]) {
    for (db, user, access) in rules {
        println!("{db} {user} {}", format!("{access:?}").to_ascii_lowercase());
    }
}

/// Parses an access level for `zs db grant`.
pub fn parse_access(s: &str) -> Result<zs_db_service::Access, String> {
    zs_db_service::Access::parse(s)
        .ok_or_else(|| format!("access {s:?}: expected none, read, write or admin"))
}

fn connect(addr: SocketAddr, r: &RemoteArgs) -> Result<DbClient, String> {
    let fp = crate::call::resolve_fingerprint(r.fingerprint.as_deref(), r.key.as_deref())?;
    if r.password_file.is_some() && r.user.is_none() {
        return Err("--password-file needs --user".into());
    }
    let db = zserver::connect_db(move || {
        zserver::ClientBuilder::new(addr)
            .fingerprint(fp)
            .stable_session(zserver::Reconnect::default())
    })
    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    if let Some(user) = &r.user {
        // on this connection (the DB service asks the accounts service who the
        // connection's user is)
        let pw = password(r)?;
        db.connection()
            .call_stream(
                "user.login",
                zserver::DataFrame::new()
                    .with(user.as_str())
                    .with(pw.as_str()),
            )
            .wait()
            .map_err(|e| format!("login as {user:?} on {addr}: {e}"))?;
    }
    Ok(db)
}

/// Runs a `zs db` verb remotely.
pub fn exec_remote(r: RemoteArgs, cmd: DbCmd) -> Result<(), String> {
    let e = |e: zs_db_service::Error| e.to_string();
    if let DbCmd::Query {
        name,
        expr,
        limit,
        reverse,
    } = &cmd
    {
        let mut spec = QuerySpec::new(name);
        spec.filter = expr.clone().unwrap_or_default();
        spec.reverse = *reverse;
        spec.sort = r.sort.clone().unwrap_or_default();
        if r.remote.len() > 1 {
            // A server that cannot be reached is one that failed: the others
            // still answer and the result is flagged partial (all unreachable:
            // an error).
            let (mut clients, mut addrs, mut unreachable) = (Vec::new(), Vec::new(), Vec::new());
            for a in &r.remote {
                match connect(*a, &r) {
                    Ok(c) => {
                        clients.push(c);
                        addrs.push(*a);
                    }
                    Err(err) => unreachable.push(err),
                }
            }
            if clients.is_empty() {
                return Err(unreachable.join("; "));
            }
            let cfg = FanOutConfig {
                limit: limit.unwrap_or(0),
                ..FanOutConfig::default()
            };
            let mut out = fan_out(&clients, &spec, cfg);
            for (server, rec) in &mut out {
                let mut j = record_json(&rec);
                j["server"] = addrs[server].to_string().into();
                println!("{j}");
            }
            for err in &unreachable {
                eprintln!("partial: {err}");
            }
            for f in out.failures() {
                eprintln!("partial: server {} dropped: {}", addrs[f.server], f.reason);
            }
            return Ok(());
        }
        spec.limit = limit.unwrap_or(0);
        let db = connect(r.remote[0], &r)?;
        let mut q = db.query(spec).map_err(e)?;
        for batch in q.by_ref() {
            for rec in batch.map_err(e)? {
                println!("{}", record_json(&rec));
            }
        }
        if let Some((status, n)) = q.end() {
            eprintln!("{n} matched ({status:?})");
        }
        return Ok(());
    }
    if r.remote.len() > 1 {
        return Err("several --remote are for `query` only".into());
    }
    if r.sort.is_some() {
        return Err("--sort is for `query` only".into());
    }
    let db = connect(r.remote[0], &r)?;
    match cmd {
        DbCmd::Create { name, .. } => {
            db.open(&name, true).map_err(e)?;
            println!("created {name}");
        }
        DbCmd::List => {
            for n in db.list().map_err(e)? {
                println!("{n}");
            }
        }
        DbCmd::Put { name, value, kind } => {
            let (kind, bytes) = value_bytes(kind, &value)?;
            println!(
                "{}",
                db.insert(&name, kind, &bytes, Durability::Durable)
                    .map_err(e)?
            );
        }
        DbCmd::Update {
            name,
            id,
            value,
            kind,
        } => {
            let (kind, bytes) = value_bytes(kind, &value)?;
            db.update(&name, id, kind, &bytes, Durability::Durable)
                .map_err(e)?;
        }
        DbCmd::Get { name, id } => match db.get(&name, id).map_err(e)? {
            Some(r) => println!("{}", record_json(&r)),
            None => return Err(format!("no record with id {id}")),
        },
        DbCmd::Delete { name, id } => {
            if !db.delete(&name, id, Durability::Durable).map_err(e)? {
                return Err(format!("no record with id {id}"));
            }
        }
        DbCmd::Index { name, field } => db.create_index(&name, &field).map_err(e)?,
        DbCmd::Compact { name } => {
            let (before, after) = db.compact(&name).map_err(e)?;
            println!("compacted {name}: {before} -> {after} bytes");
        }
        DbCmd::Stats { name } => println!("{}", stats_json(&db.stats(&name).map_err(e)?)),
        DbCmd::Grant { name, user, access } => {
            let access = parse_access(&access)?;
            db.grant(&name, &user, access).map_err(e)?;
            println!("{user} has {access:?} access to {name}");
        }
        DbCmd::Rules { name } => print_rules(&db.rules(&name).map_err(e)?),
        DbCmd::Watch {
            name,
            from,
            to,
            count,
        } => {
            let mut w = db.watch(&name, from, to).map_err(e)?;
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                let Some(changes) = w.next_timeout(Duration::from_secs(1)).map_err(e)? else {
                    continue;
                };
                for c in changes {
                    match c {
                        Change::Put(rec) => println!("{}", record_json(&rec)),
                        Change::Delete(id) => {
                            println!("{}", serde_json::json!({"id": id, "deleted": true}))
                        }
                    }
                    seen += 1;
                }
            }
        }
        DbCmd::Query { .. } => unreachable!("handled above"),
    }
    Ok(())
}
