//! Transactions (`zs-tx`, feature `tx`): procedures registered as commands.
//!
//! A command registered with [`ServerTxExt::procedure`] runs its body as a zs-tx
//! procedure on the server's worker pool (the body may wait for commit locks, so
//! never on an event loop) and **replies only after the commit**: a body that is
//! redone after a conflict never answers twice, and an answer always describes
//! committed state. Messages to other peers belong in [`Tx::on_commit`]. The store
//! is any [`Backend`] trait object (zs-db, PostgreSQL, or your own).
//!
//! ```
//! use std::sync::Arc;
//! use zserver::tx::{Backend, Db, Options, ServerTxExt, ZdbBackend};
//! use zserver::{ClientBuilder, ServerBuilder};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store: Arc<dyn Backend> = Arc::new(ZdbBackend::open_dir(dir.path(), "game").unwrap());
//! let db = Db::open(store, Options::default()).unwrap();
//! let scores = db.table::<String, u64>("scores");
//!
//! let server = ServerBuilder::new()
//!     .addr("127.0.0.1:0".parse().unwrap())
//!     .procedure("score", db.clone(), move |tx, player| {
//!         let s = scores.get(tx, &player.to_string())?.unwrap_or(0) + 10;
//!         scores.put(tx, &player.to_string(), &s)?;
//!         Ok(s.to_string())
//!     })
//!     .start()
//!     .unwrap();
//! let client = ClientBuilder::new(server.local_addr())
//!     .fingerprint(server.fingerprint().unwrap())
//!     .connect()
//!     .unwrap();
//! assert_eq!(client.call("score", "ann").wait().unwrap(), "10");
//! assert_eq!(client.call("score", "ann").wait().unwrap(), "20");
//! ```

#[cfg(feature = "tx-postgres")]
pub use zs_tx::PgBackend;
pub use zs_tx::{
    history, Backend, Checkpoint, Db, Error as TxError, Isolation, Key, Options, Stats, Table, Tx,
    Value, Write, ZdbBackend,
};

use crate::{code, HandlerError, Registry, ServerBuilder};

/// The zs-core code a failed procedure answers with: `BUSY` when the redo budget was
/// spent (the client may retry), `HANDLER_FAILED` otherwise.
pub fn error_code(e: &zs_tx::Error) -> u32 {
    match e {
        zs_tx::Error::RetriesExhausted { .. } | zs_tx::Error::Conflict => code::BUSY,
        _ => code::HANDLER_FAILED,
    }
}

/// Registers console command `name` on `registry`: each request runs `body(tx, text)`
/// as a procedure of `db` on the worker pool; the reply is the body's text, sent
/// after the commit, or an error ([`error_code`]) after a rollback.
pub fn register_procedure<F>(registry: &mut Registry, name: &str, db: Db, body: F)
where
    F: Fn(&mut Tx<'_>, &str) -> zs_tx::Result<String> + Send + Sync + 'static,
{
    registry.console_hpc(name, move |_peer, text| {
        db.run(|tx| body(tx, text))
            .map_err(|e| HandlerError::new(error_code(&e), e.to_string()))
    });
}

/// The DB service refusal for a failed procedure: 503 when the redo budget was
/// spent (nothing committed; retry later), 422 when the body aborted, 429 over a
/// limit, 400 a codec error, 500 storage or a closed engine.
#[cfg(feature = "db-service")]
pub fn service_error(name: &str, e: &zs_tx::Error) -> HandlerError {
    use zs_db_service::proto::errcode;
    use zs_tx::Error as E;
    let code = match e {
        E::RetriesExhausted { .. } | E::Conflict => errcode::BUSY,
        E::Abort(_) => errcode::ABORTED,
        E::Limit(_) => errcode::LIMIT,
        E::Codec(_) => errcode::BAD_REQUEST,
        E::Closed | E::Storage(_) => errcode::STORE,
    };
    HandlerError::new(code, format!("procedure {name:?}: {e}"))
}

/// What `DbClient::call` fails with (a refusal carries the codes of
/// [`service_error`]).
#[cfg(feature = "db-service")]
pub use zs_db_service::Error as ServiceError;

/// Serving zs-tx procedures to remote clients of the DB service.
///
/// ```
/// use std::sync::Arc;
/// use zserver::tx::{Db, DbServiceTxExt, Options};
/// use zserver::{connect_db, ClientBuilder, DbService, ServerBuilder, ServiceConfig};
///
/// let dir = tempfile::tempdir().unwrap();
/// let db = Db::in_memory(Options::default());
/// let hits = db.table::<String, u64>("hits");
/// let service = DbService::open_dir(dir.path(), ServiceConfig::default()).unwrap();
/// service.tx_procedure("hit", db.clone(), move |tx, page| {
///     let page = String::from_utf8_lossy(page).to_string();
///     let n = hits.get(tx, &page)?.unwrap_or(0) + 1;
///     hits.put(tx, &page, &n)?;
///     Ok(n.to_le_bytes().to_vec())
/// });
/// let server = ServerBuilder::new()
///     .addr("127.0.0.1:0".parse().unwrap())
///     .db_service(&service)
///     .start()
///     .unwrap();
/// let (addr, fp) = (server.local_addr(), server.fingerprint().unwrap());
/// let client = connect_db(move || ClientBuilder::new(addr).fingerprint(fp)).unwrap();
/// assert_eq!(client.call("hit", b"/home").unwrap(), 1u64.to_le_bytes());
/// assert_eq!(client.call("hit", b"/home").unwrap(), 2u64.to_le_bytes());
/// ```
#[cfg(feature = "db-service")]
pub trait DbServiceTxExt {
    /// Serves `body(tx, args)` as procedure `name` of `db` to DB service clients
    /// (`DbClient::call`): it runs on the worker pool, redone on conflict, and its
    /// result is answered only after the commit; failures map to
    /// [`service_error`].
    fn tx_procedure<F>(&self, name: &str, db: Db, body: F)
    where
        F: Fn(&mut Tx<'_>, &[u8]) -> zs_tx::Result<Vec<u8>> + Send + Sync + 'static;
}

#[cfg(feature = "db-service")]
impl DbServiceTxExt for zs_db_service::DbService {
    fn tx_procedure<F>(&self, name: &str, db: Db, body: F)
    where
        F: Fn(&mut Tx<'_>, &[u8]) -> zs_tx::Result<Vec<u8>> + Send + Sync + 'static,
    {
        let n = name.to_string();
        self.register_procedure(name, move |args| {
            db.run(|tx| body(tx, args))
                .map_err(|e| service_error(&n, &e))
        });
    }
}

/// Builder methods for transactions.
pub trait ServerTxExt {
    /// Registers a procedure command (see [`register_procedure`]).
    fn procedure<F>(self, name: &str, db: Db, body: F) -> Self
    where
        F: Fn(&mut Tx<'_>, &str) -> zs_tx::Result<String> + Send + Sync + 'static;
}

impl ServerTxExt for ServerBuilder {
    fn procedure<F>(self, name: &str, db: Db, body: F) -> Self
    where
        F: Fn(&mut Tx<'_>, &str) -> zs_tx::Result<String> + Send + Sync + 'static,
    {
        self.commands(|r| register_procedure(r, name, db, body))
    }
}
