//! `zs db`: try the embedded store from the shell — create a database, put, get,
//! query with an expression, compact.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use zs_db::{Database, DbOptions, Durability, Env, FieldValue, Kind, Query, Record};

/// Arguments of `zs db`.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Directory holding the databases (one `<name>.zdb` file each).
    #[arg(long, short = 'd', default_value = ".")]
    dir: PathBuf,
    #[command(flatten)]
    remote: crate::dbsvc::RemoteArgs,
    #[command(subcommand)]
    cmd: DbCmd,
}

/// Record kinds accepted on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum KindArg {
    /// JSON text.
    Json,
    /// `key=value` pairs (numbers, true/false, null, else text).
    Kv,
    /// The argument's bytes as given.
    Raw,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DbCmd {
    /// Create a database.
    Create {
        /// Database name.
        name: String,
        /// `immediate` (fsync per commit) or `periodic:<ms>` (group commit).
        #[arg(long, default_value = "immediate")]
        durability: String,
        /// LZ4-compress values.
        #[arg(long)]
        compress: bool,
    },
    /// List the databases.
    List,
    /// Insert a record; prints its id.
    Put {
        /// Database name.
        name: String,
        /// The value: JSON text, `key=value` pairs (with --kind kv) or raw text.
        #[arg(required = true)]
        value: Vec<String>,
        /// Record kind.
        #[arg(long, value_enum, default_value = "json")]
        kind: KindArg,
    },
    /// Replace record ID.
    Update {
        /// Database name.
        name: String,
        /// Record id.
        id: u64,
        /// The value (as for `put`).
        #[arg(required = true)]
        value: Vec<String>,
        /// Record kind.
        #[arg(long, value_enum, default_value = "json")]
        kind: KindArg,
    },
    /// Print record ID as a JSON line.
    Get {
        /// Database name.
        name: String,
        /// Record id.
        id: u64,
    },
    /// Delete record ID.
    Delete {
        /// Database name.
        name: String,
        /// Record id.
        id: u64,
    },
    /// Print matching records as JSON lines, e.g. `zs db query people "age > 30 and name = 'bob'"`.
    Query {
        /// Database name.
        name: String,
        /// A zs-expr filter over record fields (all records when omitted).
        expr: Option<String>,
        /// At most this many results.
        #[arg(long)]
        limit: Option<u64>,
        /// Highest ids first.
        #[arg(long)]
        reverse: bool,
    },
    /// Create a secondary index on a field.
    Index {
        /// Database name.
        name: String,
        /// Field name.
        field: String,
    },
    /// Reclaim the space of deleted and replaced records (ids stay the same).
    Compact {
        /// Database name.
        name: String,
    },
    /// Print counts and sizes.
    Stats {
        /// Database name.
        name: String,
    },
    /// Give USER (`*`: every logged-in user) ACCESS to database NAME (`*`: every
    /// database): none, read, write or admin. Remote: as a user with admin
    /// access to NAME (--user); local (no --remote, the server stopped): in the
    /// rules stored in --dir (the served directory, e.g. ./zs-data/db).
    Grant {
        /// Database name, or `*`.
        name: String,
        /// User name, or `*`.
        user: String,
        /// none, read, write or admin.
        access: String,
    },
    /// Print the access rules naming database NAME or `*` (`*`: every rule),
    /// one `database user access` line each. Remote: as a user with admin
    /// access to NAME (--user); local: the rules stored in --dir.
    Rules {
        /// Database name, or `*`.
        name: String,
    },
    /// Print the changes of records FROM..=TO as JSON lines (needs --remote).
    Watch {
        /// Database name.
        name: String,
        /// First id watched.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last id watched.
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
}

pub(crate) fn value_bytes(kind: KindArg, value: &[String]) -> Result<(Kind, Vec<u8>), String> {
    match kind {
        KindArg::Json => {
            let text = value.join(" ");
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("not valid JSON: {e}"))?;
            Ok((Kind::Json, text.into_bytes()))
        }
        KindArg::Raw => Ok((Kind::Raw, value.join(" ").into_bytes())),
        KindArg::Kv => {
            let mut entries = Vec::new();
            for pair in value {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("expected key=value, got {pair:?}"))?;
                entries.push((k.to_string(), FieldValue::parse_literal(v)));
            }
            Ok((
                Kind::KeyValue,
                zs_db::encode_kv(&entries).map_err(|e| e.to_string())?,
            ))
        }
    }
}

/// What `zs db stats` prints (local and `--remote` alike).
pub(crate) fn stats_json(s: &zs_db::Stats) -> serde_json::Value {
    serde_json::json!({"records": s.records, "next_id": s.next_id, "file_bytes": s.file_bytes, "live_bytes": s.live_bytes})
}

pub(crate) fn record_json(r: &Record) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let value = match r.kind {
        Kind::Json => serde_json::from_slice(&r.data).unwrap_or(Value::Null),
        Kind::KeyValue => match zs_db::decode_kv(&r.data) {
            Ok(e) => Value::Object(
                e.into_iter()
                    .map(|(k, v)| (k, v.to_json()))
                    .collect::<Map<_, _>>(),
            ),
            Err(_) => Value::Null,
        },
        Kind::DataFrame => match zs_db::decode_dataframe(&r.data) {
            Ok(df) => df.to_plain_json(),
            Err(_) => Value::Null,
        },
        Kind::Raw => Value::String(String::from_utf8_lossy(&r.data).into_owned()),
    };
    json!({"id": r.id, "kind": r.kind.name(), "value": value})
}

fn open(env: &Env, name: &str) -> Result<Database, String> {
    let db = env.db(name).map_err(|e| e.to_string())?;
    for c in &db.open_report().corrupt {
        eprintln!(
            "warning: damaged region at byte {} ({} bytes) skipped",
            c.offset, c.len
        );
    }
    Ok(db)
}

fn exec(args: DbArgs) -> Result<(), String> {
    if !args.remote.remote.is_empty() {
        return crate::dbsvc::exec_remote(args.remote, args.cmd);
    }
    let env = Env::open_dir(&args.dir).map_err(|e| e.to_string())?;
    match args.cmd {
        DbCmd::Create {
            name,
            durability,
            compress,
        } => {
            let durability = Durability::parse(&durability).ok_or_else(|| {
                format!("bad durability {durability:?} (immediate | periodic:<ms>)")
            })?;
            env.create_db(
                &name,
                DbOptions {
                    durability,
                    compress,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            println!("created {name}");
        }
        DbCmd::List => {
            for n in env.list_dbs().map_err(|e| e.to_string())? {
                println!("{n}");
            }
        }
        DbCmd::Put { name, value, kind } => {
            let (kind, bytes) = value_bytes(kind, &value)?;
            let id = open(&env, &name)?
                .insert(kind, &bytes)
                .map_err(|e| e.to_string())?;
            println!("{id}");
        }
        DbCmd::Update {
            name,
            id,
            value,
            kind,
        } => {
            let (kind, bytes) = value_bytes(kind, &value)?;
            open(&env, &name)?
                .update(id, kind, &bytes)
                .map_err(|e| e.to_string())?;
        }
        DbCmd::Get { name, id } => match open(&env, &name)?.get(id).map_err(|e| e.to_string())? {
            Some(r) => println!("{}", record_json(&r)),
            None => return Err(format!("no record with id {id}")),
        },
        DbCmd::Delete { name, id } => {
            if !open(&env, &name)?.delete(id).map_err(|e| e.to_string())? {
                return Err(format!("no record with id {id}"));
            }
        }
        DbCmd::Query {
            name,
            expr,
            limit,
            reverse,
        } => {
            let db = open(&env, &name)?;
            let mut q = match expr {
                Some(e) => Query::expr(&e).map_err(|e| e.to_string())?,
                None => Query::all(),
            };
            if let Some(l) = limit {
                q = q.limit(l);
            }
            let mut h = db.query(q.reverse(reverse)).map_err(|e| e.to_string())?;
            for batch in h.by_ref() {
                match batch {
                    Ok(recs) => {
                        for r in recs {
                            println!("{}", record_json(&r));
                        }
                    }
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
            let p = h.progress();
            eprintln!(
                "{} matched, {} scanned{} in {:.3} s",
                p.matched,
                p.scanned,
                if p.used_index { " (via index)" } else { "" },
                p.elapsed.as_secs_f64()
            );
        }
        DbCmd::Index { name, field } => {
            open(&env, &name)?
                .create_index(&field)
                .map_err(|e| e.to_string())?;
        }
        DbCmd::Compact { name } => {
            let (before, after) = open(&env, &name)?.compact().map_err(|e| e.to_string())?;
            println!("compacted {name}: {before} -> {after} bytes");
        }
        DbCmd::Watch { .. } => return Err("`watch` needs --remote ADDR".into()),
        DbCmd::Grant { name, user, access } => {
            drop(env);
            let access = crate::dbsvc::parse_access(&access)?;
            let svc = rules_service(&args.dir)?;
            svc.grant(&name, &user, access).map_err(|e| e.to_string())?;
            println!("{user} has {access:?} access to {name}");
        }
        DbCmd::Rules { name } => {
            drop(env);
            if name != "*" {
                zs_db_service::check_client_name(&name)
                    .map_err(|e| format!("database {name:?}: {}", e.message))?;
            }
            crate::dbsvc::print_rules(&rules_service(&args.dir)?.rules(&name));
        }
        DbCmd::Stats { name } => println!("{}", stats_json(&open(&env, &name)?.stats())),
    }
    Ok(())
}

/// Runs `zs db …`.
pub fn run(args: DbArgs) -> ExitCode {
    match exec(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zs db: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The DB service over directory `dir`, for its stored access rules.
fn rules_service(dir: &std::path::Path) -> Result<zs_db_service::DbService, String> {
    zs_db_service::DbService::open_dir(dir, zs_db_service::ServiceConfig::default())
        .map_err(|e| format!("the rules in {}: {e}", dir.display()))
}
