//! # zs-db-service: zs-db over the network
//!
//! The ZServer4D DataStoreService in Rust: a [`DbService`] registered on a
//! zs-core [`Registry`](zs_core::Registry) serves the databases of a zs-db
//! [`Env`](zs_db::Env) to encrypted zs-core connections, and [`DbClient`] is
//! its typed client.
//!
//! - **Databases**: open/create, close, list, copy, compact, remove; names are
//!   checked (no path escape; the `__` prefix is reserved).
//! - **Records**: insert, update, delete, get in any zs-db [`Kind`](zs_db::Kind),
//!   each write with its [`Durability`]: `Durable` (answered after fsync) or
//!   `Written` (answered once applied; synced within
//!   [`ServiceConfig::group_commit`]).
//! - **Queries** ([`QuerySpec`]): by id range (ids are the ordered primary key),
//!   by a secondary-index range, or all; a zs-expr filter with `param_<name>`
//!   parameters and/or a filter function registered on the server; limit,
//!   reverse. Results stream back in batches closed by size or time; the client
//!   returns credit as it reads, so a reader that does not read stops the scan
//!   (memory per query ≤ window × batch size). Pause, resume, stop and progress
//!   of a running query; many queries at once on one connection. A batch can be
//!   read in place ([`RemoteQuery::next_records`], [`RecordBatch`]): one check of
//!   the received bytes, then borrowed records, no allocation per record. An
//!   unsorted query without a limit is encoded by zs-db's scan workers
//!   themselves ([`zs_db::Query::packed`]), in parallel.
//! - **GETs on the event loop** ([`DbClient::get_then`], [`DbClient::get_with`],
//!   [`DbClient::get_to`] with a shared [`GetSink`]): the last two lend the
//!   record from the received bytes, so a GET allocates nothing for its answer.
//! - **FastPost** ([`FastPost`]): pipelined inserts without replies, with
//!   cumulative durable acknowledgements; a reconnect (StableIO) or a server
//!   restart loses nothing acknowledged and stores nothing twice.
//! - **Access rules** ([`DbService::set_identity`], [`DbService::grant`],
//!   [`DbClient::grant`]): with an [`Identity`] (the accounts service, through
//!   the facade) every request needs a logged-in user with the right [`Access`]
//!   to its database (401 not logged in, 403 not allowed); rules per database
//!   and user (`*` for all) are stored durably and checked again while queries,
//!   watches and FastPost streams run; [`DbClient::rules`] lists them.
//! - **Lifetime**: the registry holds the service weakly; it serves while a
//!   [`DbService`] handle lives, and is freed with its last handle even if
//!   sessions (kept by the accounts service, say) outlive the server.
//! - **Procedures** ([`DbService::register_procedure`], [`DbClient::call`]):
//!   named server-side functions called with argument bytes; the facade plugs
//!   zs-tx procedures in, answered after their commit.
//!
//! Payload formats: docs/PROTOCOL.md, Part 9.
//!
//! ```
//! use std::sync::Arc;
//! use zs_core::{Client, Options, Registry, Server};
//! use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, ZsSecurity};
//! use zs_db::Kind;
//! use zs_db_service::{DbClient, DbService, Durability, QuerySpec, ServiceConfig};
//!
//! let (identity, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
//! let provider = Arc::new(ZsSecurity::new(
//!     Some(Arc::new(ClientConfig::pinned(identity.fingerprint()))),
//!     Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
//! ));
//! let raw = Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, ..Default::default() }).unwrap());
//! let backend = zs_secure::compose::secure(raw, provider); // security as a transport layer
//!
//! let dir = tempfile::tempdir().unwrap();
//! let service = DbService::open_dir(dir.path(), ServiceConfig::default()).unwrap();
//! let mut reg = Registry::new();
//! service.register(&mut reg);
//! let server = Server::start(backend.clone(), reg, Options::default(),
//!     "127.0.0.1:0".parse().unwrap()).unwrap();
//!
//! let addr = server.local_addr();
//! let db = DbClient::connect_with(move |reg| {
//!     Client::connect_stable(backend.clone(), reg, Options::client(), addr)
//! }).unwrap();
//! db.open("people", true).unwrap();
//! let id = db.insert("people", Kind::Json, br#"{"age":31}"#, Durability::Durable).unwrap();
//! db.insert("people", Kind::Json, br#"{"age":12}"#, Durability::Written).unwrap();
//! let mut q = QuerySpec::new("people");
//! q.filter = "age > 18".into();
//! let found = db.query(q).unwrap().collect_all().unwrap();
//! assert_eq!(found.len(), 1);
//! assert_eq!(found[0].id, id);
//! ```
#![forbid(unsafe_code)]

mod access;
mod client;
mod fanout;
mod filter;
pub mod proto;
mod server;

pub use access::{Access, Identity, User, ACCESS_DB};
pub use client::{
    DbClient, Error, FastPost, FastPostConfig, GetSink, RemoteQuery, Result, WatchStream,
};
pub use fanout::{fan_out, FanOut, FanOutConfig, MergeOrder, ServerFailure};
pub use filter::{compile_expr, ExprFilter, FilterFunction, PARAM_PREFIX};
pub use proto::{
    Answer, Change, Durability, EndStatus, Limits, Param, QueryProgress, QuerySpec, Range,
    RecordBatch, RecordBatchIter, Request,
};
pub use server::{check_client_name, DbService, Procedure, ServiceConfig, MARKS_DB};
