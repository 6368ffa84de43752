//! The PostgreSQL backend: one key/value table with bytea values and versions.

use std::sync::{Condvar, Mutex};

use postgres::{Client, NoTls};

use crate::backend::{Backend, LoadSink, Write};
use crate::{Error, Result};

/// Records in a PostgreSQL table
/// `zs_tx_kv(tbl text, k bytea, v bytea not null, ver bigint not null, primary key (tbl, k))`:
/// every write of a record increments its `ver`. Each [`Backend::write`] is one SQL
/// transaction (durable when it returns, with the server's default
/// `synchronous_commit = on`), run on one of a small pool of connections so that
/// concurrent immediate-mode commits proceed in parallel.
///
/// One engine owns the table at a time (the engine caches every record); several
/// application servers sharing one database need a table each, or a cache-coherence
/// layer this crate does not have yet (Zeze's GlobalCacheManager).
pub struct PgBackend {
    pool: Mutex<Vec<Client>>,
    freed: Condvar,
    table: String,
}

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
            pool.push(Client::connect(params, NoTls).map_err(pg)?);
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
        })
    }

    fn with_client<R>(&self, f: impl FnOnce(&mut Client) -> Result<R>) -> Result<R> {
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

impl Backend for PgBackend {
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
            let mut tx = c.transaction().map_err(pg)?;
            let up = tx.prepare(&upsert).map_err(pg)?;
            let del = tx.prepare(&delete).map_err(pg)?;
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
