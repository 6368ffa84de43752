//! The PostgreSQL backend: one key/value table with bytea values and versions.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::backend::{Backend, ChangeSink, LoadSink, Shared, SharedCommit, Write};
use crate::{Error, Result};

/// Records in a PostgreSQL table
/// `zs_tx_kv(tbl text, k bytea, v bytea not null, ver bigint not null, primary key (tbl, k))`:
/// every write of a record increments its `ver`. Each [`Backend::write`] is one SQL
/// transaction (durable when it returns, with the server's default
/// `synchronous_commit = on`), run on one of a small pool of connections so that
/// concurrent immediate-mode commits proceed in parallel.
///
/// Made with [`PgBackend::connect`], one engine owns the table. Made with
/// [`PgBackend::connect_shared`], several engines (application servers, in one
/// process or many) share it coherently: see [`Shared`] and docs/TRANSACTIONS.md,
/// "Several application servers".
pub struct PgBackend {
    pool: Mutex<Vec<Conn>>,
    freed: Condvar,
    table: String,
    shared: Option<SharedPg>,
}

/// A pooled connection and its prepared statements (by SQL text).
struct Conn {
    c: Client,
    stmts: std::collections::HashMap<String, postgres::Statement>,
}

impl Conn {
    /// The prepared statement for `sql` (prepared on first use).
    fn stmt(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql).map_err(pg)?;
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.c
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.c
    }
}

/// The shared mode's extra state: the connection that LISTENs for commits.
struct SharedPg {
    listen: Mutex<Client>,
    /// Commits kept in the change log (older ones are pruned).
    log_keep: i64,
}

/// Commits kept in the change log of a shared table by default: an engine that lags
/// further behind reloads every record.
pub const DEFAULT_LOG_KEEP: i64 = 100_000;

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgBackend({})", self.table)
    }
}

fn pg(e: postgres::Error) -> Error {
    Error::Storage(format!("postgres: {e}"))
}

impl PgBackend {
    /// Connects `connections` clients (at least 1) with `params` (a libpq-style
    /// string such as `host=127.0.0.1 port=5432 user=postgres dbname=app`) and
    /// creates table `table` (letters, digits and `_` only) when missing.
    pub fn connect(params: &str, table: &str, connections: usize) -> Result<PgBackend> {
        if table.is_empty()
            || table.len() > 63
            || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || table.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(Error::Abort(format!("bad table name {table:?}")));
        }
        let mut pool = Vec::new();
        for _ in 0..connections.max(1) {
            pool.push(Conn {
                c: Client::connect(params, NoTls).map_err(pg)?,
                stmts: std::collections::HashMap::new(),
            });
        }
        pool[0]
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (tbl text NOT NULL, k bytea NOT NULL, \
                 v bytea NOT NULL, ver bigint NOT NULL, PRIMARY KEY (tbl, k))"
            ))
            .map_err(pg)?;
        Ok(PgBackend {
            pool: Mutex::new(pool),
            freed: Condvar::new(),
            table: table.to_string(),
            shared: None,
        })
    }

    /// Like [`PgBackend::connect`], for an engine that shares table `table` with
    /// other engines (other processes or hosts): adds the change log `{table}_log`
    /// and the commit counter `{table}_clock` (created when missing) and a LISTEN
    /// connection on channel `{table}`. Every commit of every engine takes the
    /// next number from the counter and appends its writes to the log; record
    /// versions (`ver`) are commit numbers. `log_keep` commits are kept in the log
    /// (default 100,000 when `None`); an engine lagging further
    /// reloads every record.
    pub fn connect_shared(
        params: &str,
        table: &str,
        connections: usize,
        log_keep: Option<i64>,
    ) -> Result<PgBackend> {
        let mut b = PgBackend::connect(params, table, connections)?;
        let t = table;
        b.with_client(|c| {
            c.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {t}_log (ts bigint NOT NULL, i int NOT NULL, \
                 tbl text NOT NULL, k bytea NOT NULL, v bytea, PRIMARY KEY (ts, i)); \
                 CREATE TABLE IF NOT EXISTS {t}_clock (id int PRIMARY KEY, ts bigint NOT NULL); \
                 INSERT INTO {t}_clock VALUES (0, 0) ON CONFLICT DO NOTHING"
            ))
            .map_err(pg)
        })?;
        let mut listen = Client::connect(params, NoTls).map_err(pg)?;
        listen.batch_execute(&format!("LISTEN {t}")).map_err(pg)?;
        b.shared = Some(SharedPg {
            listen: Mutex::new(listen),
            log_keep: log_keep.unwrap_or(DEFAULT_LOG_KEEP).max(1),
        });
        Ok(b)
    }
    fn with_client<R>(&self, f: impl FnOnce(&mut Conn) -> Result<R>) -> Result<R> {
        let mut c = {
            let mut p = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(c) = p.pop() {
                    break c;
                }
                p = self.freed.wait(p).unwrap_or_else(|p| p.into_inner());
            }
        };
        let r = f(&mut c);
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        self.freed.notify_one();
        r
    }

    /// The stored version of a record (`None` when absent): how many times it was
    /// written since it was inserted, minus one.
    pub fn version(&self, table: &str, key: &[u8]) -> Result<Option<i64>> {
        let sql = format!("SELECT ver FROM {} WHERE tbl = $1 AND k = $2", self.table);
        self.with_client(|c| {
            let row = c.query_opt(&sql, &[&table, &key]).map_err(pg)?;
            Ok(row.map(|r| r.get::<_, i64>(0)))
        })
    }
}

/// Feeds `sink` the log rows (ordered by commit, then index) grouped per commit,
/// checking that the commits are exactly `after + 1, after + 2, ..` (and, when
/// `until` is given, that they end at `until - 1`). Returns the last commit fed, or
/// `None` on a gap.
fn feed(
    rows: &[postgres::Row],
    after: u64,
    until: Option<u64>,
    sink: &mut ChangeSink<'_>,
) -> Option<u64> {
    let mut expect = after + 1;
    let mut i = 0;
    // check first (the sink must see nothing if there is a gap)
    let mut groups: Vec<(u64, usize, usize)> = Vec::new();
    while i < rows.len() {
        let ts = rows[i].get::<_, i64>(0) as u64;
        if ts != expect {
            return None;
        }
        let start = i;
        while i < rows.len() && rows[i].get::<_, i64>(0) as u64 == ts {
            i += 1;
        }
        groups.push((ts, start, i));
        expect += 1;
    }
    if let Some(u) = until {
        if expect != u {
            return None;
        }
    }
    for (ts, a, b) in groups {
        let writes: Vec<Write<'_>> = rows[a..b]
            .iter()
            .map(|r| Write {
                table: r.get(1),
                key: r.get(2),
                value: r.get(3),
            })
            .collect();
        sink(ts, &writes);
    }
    Some(expect - 1)
}

impl Shared for PgBackend {
    fn load_at(&self, sink: &mut LoadSink<'_>) -> Result<u64> {
        let t = &self.table;
        self.with_client(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(pg)?;
            let ts: i64 = tx
                .query_one(&format!("SELECT ts FROM {t}_clock WHERE id = 0"), &[])
                .map_err(pg)?
                .get(0);
            for row in tx
                .query(&format!("SELECT tbl, k, v FROM {t}"), &[])
                .map_err(pg)?
            {
                sink(row.get(0), row.get(1), row.get(2));
            }
            tx.commit().map_err(pg)?;
            Ok(ts as u64)
        })
    }

    fn changes(&self, after: u64, sink: &mut ChangeSink<'_>) -> Result<Option<u64>> {
        let sql = format!(
            "SELECT ts, tbl, k, v FROM {}_log WHERE ts > $1 ORDER BY ts, i",
            self.table
        );
        self.with_client(|c| {
            let st = c.stmt(&sql)?;
            let rows = c.query(&st, &[&(after as i64)]).map_err(pg)?;
            Ok(feed(&rows, after, None, sink))
        })
    }

    fn commit(
        &self,
        after: u64,
        writes: &[Write<'_>],
        sink: &mut ChangeSink<'_>,
        validate: &mut dyn FnMut() -> bool,
    ) -> Result<SharedCommit> {
        let t = &self.table;
        let keep = self
            .shared
            .as_ref()
            .map(|s| s.log_keep)
            .unwrap_or(DEFAULT_LOG_KEEP);
        let clock_sql = format!("UPDATE {t}_clock SET ts = ts + 1 WHERE id = 0 RETURNING ts");
        let log_sql =
            format!("SELECT ts, tbl, k, v FROM {t}_log WHERE ts > $1 AND ts < $2 ORDER BY ts, i");
        // one statement writes the records, the log and the announcement (a
        // transaction's writes name distinct records, so the upsert and the delete
        // never touch one row twice)
        let write_sql = format!(
            "WITH w AS (SELECT * FROM unnest($2::text[], $3::bytea[], $4::bytea[]) \
               WITH ORDINALITY AS u(a, b, c, o)), \
             up AS (INSERT INTO {t} (tbl, k, v, ver) SELECT a, b, c, $1::bigint FROM w \
               WHERE c IS NOT NULL \
               ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v, ver = EXCLUDED.ver), \
             del AS (DELETE FROM {t} WHERE (tbl, k) IN (SELECT a, b FROM w WHERE c IS NULL)), \
             lg AS (INSERT INTO {t}_log (ts, i, tbl, k, v) SELECT $1::bigint, o::int, a, b, c FROM w) \
             SELECT pg_notify($5::text, $1::bigint::text)"
        );
        let prune_sql = format!("DELETE FROM {t}_log WHERE ts <= $1");
        self.with_client(|c| {
            let (clock, log, write, prune) = (
                c.stmt(&clock_sql)?,
                c.stmt(&log_sql)?,
                c.stmt(&write_sql)?,
                c.stmt(&prune_sql)?,
            );
            let mut tx = c.transaction().map_err(pg)?;
            // the counter's row lock serializes the commits of every engine: held
            // until this transaction ends
            let n: i64 = tx.query_one(&clock, &[]).map_err(pg)?.get(0);
            let n = n as u64;
            let rows = tx
                .query(&log, &[&(after as i64), &(n as i64)])
                .map_err(pg)?;
            if feed(&rows, after, Some(n), sink).is_none() {
                return Ok(SharedCommit::Behind);
            }
            if !validate() {
                return Ok(SharedCommit::Conflict);
            }
            let lt: Vec<&str> = writes.iter().map(|w| w.table).collect();
            let lk: Vec<&[u8]> = writes.iter().map(|w| w.key).collect();
            let lv: Vec<Option<&[u8]>> = writes.iter().map(|w| w.value).collect();
            tx.query(&write, &[&(n as i64), &lt, &lk, &lv, &t.as_str()])
                .map_err(pg)?;
            let every = keep.clamp(1, 1024) as u64;
            if n.is_multiple_of(every) {
                tx.execute(&prune, &[&(n as i64 - keep)]).map_err(pg)?;
            }
            tx.commit().map_err(pg)?;
            Ok(SharedCommit::Committed(n))
        })
    }

    fn wait(&self, timeout: Duration) -> Result<Option<u64>> {
        let Some(s) = &self.shared else {
            std::thread::sleep(timeout);
            return Ok(None);
        };
        let mut c = s.listen.lock().unwrap_or_else(|p| p.into_inner());
        let mut best: Option<u64> = None;
        let mut note = |payload: &str| {
            if let Ok(n) = payload.parse::<u64>() {
                best = Some(best.map_or(n, |b| b.max(n)));
            }
        };
        let mut n = c.notifications();
        let first = n.timeout_iter(timeout).next().map_err(pg)?;
        if let Some(f) = first {
            note(f.payload());
            let mut more = n.iter();
            while let Some(f) = more.next().map_err(pg)? {
                note(f.payload());
            }
        }
        Ok(best)
    }
}

impl Backend for PgBackend {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let sql = format!("SELECT v FROM {} WHERE tbl = $1 AND k = $2", self.table);
        self.with_client(|c| {
            let st = c.stmt(&sql)?;
            let row = c.query_opt(&st, &[&table, &key]).map_err(pg)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn shared(&self) -> Option<&dyn Shared> {
        self.shared.as_ref().map(|_| self as &dyn Shared)
    }

    fn load(&self, sink: &mut LoadSink<'_>) -> Result<()> {
        let sql = format!("SELECT tbl, k, v FROM {}", self.table);
        self.with_client(|c| {
            for row in c.query(&sql, &[]).map_err(pg)? {
                let t: &str = row.get(0);
                let k: &[u8] = row.get(1);
                let v: &[u8] = row.get(2);
                sink(t, k, v);
            }
            Ok(())
        })
    }

    fn write(&self, writes: &[Write<'_>]) -> Result<()> {
        let upsert = format!(
            "INSERT INTO {t} (tbl, k, v, ver) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v, ver = {t}.ver + 1",
            t = self.table
        );
        let delete = format!("DELETE FROM {} WHERE tbl = $1 AND k = $2", self.table);
        self.with_client(|c| {
            let (up, del) = (c.stmt(&upsert)?, c.stmt(&delete)?);
            let mut tx = c.transaction().map_err(pg)?;
            for w in writes {
                match w.value {
                    Some(v) => tx.execute(&up, &[&w.table, &w.key, &v]).map_err(pg)?,
                    None => tx.execute(&del, &[&w.table, &w.key]).map_err(pg)?,
                };
            }
            tx.commit().map_err(pg)
        })
    }
}
