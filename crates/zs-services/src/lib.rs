//! # zs-services: accounts, offline messages and push, files
//!
//! The application services ZServer4D users built games and tools on (ZNet's
//! UserDB and its offline-message "double tunnel"), as commands on a zs-core
//! [`Registry`], a typed client ([`ServicesClient`]) and, in the `zs` CLI,
//! `zs user …` / `zs msg …` / `zs file …`. State lives in the embedded zs-db store
//! (databases `accounts`, `messages` and `files`, fsynced on every
//! acknowledged write; file contents as blobs beside them).
//!
//! - **Accounts** ([`Accounts`]): register, log in (Argon2id through
//!   zs-crypto, compared exactly: passwords are never case-folded; names are
//!   case-insensitive), change/reset password, disable/enable, aliases, the
//!   online list; a second login kicks the older session or is refused
//!   ([`SecondLogin`]); failed logins are throttled per user and per source
//!   address. [`Accounts::user_of`] gives the user id of a logged-in
//!   connection to any handler.
//! - **Messages** ([`Messages`]): user-to-user messages queued durably
//!   (fsync before the sender's answer), pushed at once to a subscribed
//!   recipient, in order per sender-recipient pair, kept until acknowledged
//!   by id (so each is handed over once across reconnects and restarts); a
//!   sender nonce makes resends after a lost answer harmless; queue caps and
//!   expiry; broadcast to all online users and to named groups.
//! - **Files** ([`Files`], when a root directory is given: [`Services::open_dir`]
//!   uses `<dir>/files`): a private space per user and a public area;
//!   resumable uploads (ask where an upload stands, continue from there) with a
//!   CRC-32 (or SHA3-256) per chunk and the SHA3-256 of the whole file, sent at
//!   once while the client hashes beside the transfer and announces the hash
//!   when known (`file.hash`), content-addressed dedup with instant upload (at
//!   `file.begin`, or late: completed by reference once the hash is known),
//!   ranged download, list/mkdir/rename/delete, quotas, one
//!   writer per upload with a lease, expiry of abandoned uploads, delta upload
//!   of a changed file (rsync's rolling checksums against the server's copy);
//!   user paths are checked and never reach the file system.
//!
//! Payloads are DataFrames; docs/PROTOCOL.md Part 6 lists every command.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use zs_core::{Client, Options, Registry, Server};
//! use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, ZsSecurity};
//! use zs_services::{Inbox, Services, ServicesClient, ServicesConfig};
//!
//! let (identity, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).unwrap();
//! let provider = Arc::new(ZsSecurity::new(
//!     Some(Arc::new(ClientConfig::pinned(identity.fingerprint()))),
//!     Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
//! ));
//! let raw = Arc::new(zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, ..Default::default() }).unwrap());
//! // The security runs as a transport layer: secure(tokio), plaintext connections.
//! let backend = zs_secure::compose::secure(raw, provider);
//!
//! // The services on an in-memory store (Services::open_dir for a directory).
//! let env = zs_db::Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
//! let services = Services::open(&env, ServicesConfig::cheap_for_tests()).unwrap();
//! let mut commands = Registry::new();
//! services.register(&mut commands);
//! let server = Server::start(backend.clone(), commands, Options::default(),
//!     "127.0.0.1:0".parse().unwrap()).unwrap();
//!
//! let connect = |registry| ServicesClient::new(Client::connect(backend.clone(),
//!     registry, Options::client(), server.local_addr()).unwrap());
//! let ann = connect(Registry::new());
//! ann.register("ann", "correct horse").unwrap();
//! ann.login("ann", "correct horse").unwrap();
//! let bob_id = services.accounts.create_user("bob", "battery staple", false).unwrap();
//!
//! // bob is offline: the message is queued (on disk before send returns).
//! ann.send("bob", 1, b"hello bob").unwrap();
//! assert_eq!(services.messages.queued(bob_id), 1);
//!
//! // bob logs in and subscribes: the queued message is pushed, then acknowledged.
//! let mut registry = Registry::new();
//! let inbox = Inbox::register(&mut registry);
//! let bob = connect(registry);
//! assert!(bob.login("BOB", "battery staple").is_ok());   // names ignore case
//! assert!(bob.login("bob", "Battery Staple").is_err());  // passwords do not
//! bob.subscribe().unwrap();
//! let m = inbox.recv_timeout(Duration::from_secs(5)).unwrap();
//! assert_eq!((&m.body[..], m.from_name.as_str()), (&b"hello bob"[..], "ann"));
//! bob.ack(&[m.id]).unwrap();
//! assert_eq!(services.messages.queued(bob_id), 0);
//! ```
#![forbid(unsafe_code)]

pub mod accounts;
pub mod client;
mod error;
pub mod files;
pub mod messages;

use std::path::Path;

use zs_core::{HandlerError, Peer, Registry};
use zs_db::{Database, DbOptions, Durability, Env};
use zs_wire::DataFrame;

pub use accounts::{check_name, Accounts, AccountsConfig, SecondLogin, UserInfo};
pub use client::{
    delta_memory_bound, signature_timeout, DeltaReport, Inbox, LoginInfo, ServicesClient,
    UploadReport, DELTA_HASH_FIRST, DELTA_LITERAL_PIECE, DELTA_READ, DOWNLOAD_WINDOW, READ_CHUNK,
    SIGNATURE_MIN_RATE, SIGNATURE_TIMEOUT_MIN, UPLOAD_WINDOW,
};
pub use error::{code, Result, ServiceError};
pub use files::{check_path, BlockSum, FileInfo, Files, FilesConfig, Space, UploadState};
pub use messages::{Message, Messages, MessagesConfig, Sent};

/// Settings of every service.
#[derive(Debug, Clone, Default)]
pub struct ServicesConfig {
    /// Accounts.
    pub accounts: AccountsConfig,
    /// Messages.
    pub messages: MessagesConfig,
    /// Files (on when `files.root` is set; [`Services::open_dir`] sets it to
    /// `<dir>/files` when unset).
    pub files: FilesConfig,
}

impl ServicesConfig {
    /// Defaults, with Argon2id at its cheapest (256 KiB, one pass): for tests
    /// and examples only.
    pub fn cheap_for_tests() -> ServicesConfig {
        let mut c = ServicesConfig::default();
        c.accounts.password_params = zs_crypto::password::PasswordParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        };
        c
    }
}

/// All services over one store.
#[derive(Debug, Clone)]
pub struct Services {
    /// Accounts.
    pub accounts: Accounts,
    /// Messages.
    pub messages: Messages,
    /// Files (`None` without a root directory).
    pub files: Option<Files>,
}

/// Opens database `name` of `env` (creating it), every commit fsynced.
fn open_db(env: &Env, name: &str) -> Result<Database> {
    let opts = DbOptions {
        durability: Durability::Immediate,
        ..DbOptions::default()
    };
    let exists = env
        .list_dbs()
        .map_err(ServiceError::storage)?
        .iter()
        .any(|n| n == name);
    if exists {
        env.db_with(name, opts).map_err(ServiceError::storage)
    } else {
        env.create_db(name, opts).map_err(ServiceError::storage)
    }
}

impl Services {
    /// Opens (creating when missing) the services' databases in `env`.
    pub fn open(env: &Env, cfg: ServicesConfig) -> Result<Services> {
        let accounts = Accounts::open(open_db(env, "accounts")?, cfg.accounts)?;
        let messages = Messages::open(open_db(env, "messages")?, accounts.clone(), cfg.messages)?;
        let files = match cfg.files.root {
            Some(_) => Some(Files::open(
                open_db(env, "files")?,
                accounts.clone(),
                cfg.files,
            )?),
            None => None,
        };
        Ok(Services {
            accounts,
            messages,
            files,
        })
    }

    /// Opens the services on directory `dir` (created when missing; one
    /// process at a time: zs-db locks its files).
    pub fn open_dir(dir: impl AsRef<Path>, mut cfg: ServicesConfig) -> Result<Services> {
        if cfg.files.root.is_none() {
            cfg.files.root = Some(dir.as_ref().join("files"));
        }
        let env = Env::open_dir(dir.as_ref()).map_err(ServiceError::storage)?;
        Services::open(&env, cfg)
    }

    /// Closes the stores (synced; the file locks are released, so another
    /// process or [`Services::open_dir`] may open them). Commands still
    /// registered somewhere then answer [`code::STORAGE`].
    pub fn close(&self) -> Result<()> {
        self.accounts.close()?;
        if let Some(f) = &self.files {
            f.close()?;
        }
        self.messages.close()
    }

    /// Registers every service's commands on `r`.
    pub fn register(&self, r: &mut Registry) {
        self.accounts.register(r);
        self.messages.register(r);
        if let Some(f) = &self.files {
            f.register(r);
        }
    }

    /// Creates an admin `name` with a random password when the store has no
    /// admin yet; returns that password (to show or store once).
    pub fn ensure_admin(&self, name: &str) -> Result<Option<String>> {
        if self.accounts.list(0, usize::MAX).iter().any(|u| u.admin) {
            return Ok(None);
        }
        let mut raw = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| ServiceError::new(code::STORAGE, "no randomness"))?;
        let pw: String = raw
            .iter()
            .map(|b| {
                char::from(
                    b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"[*b as usize % 57],
                )
            })
            .collect();
        let id = match self.accounts.resolve(name) {
            Some(id) => {
                self.accounts.set_password(id, &pw)?;
                id
            }
            None => self.accounts.create_user(name, &pw, true)?,
        };
        self.accounts.set_admin(id, true)?;
        Ok(Some(pw))
    }
}

/// A service that puts its commands on a server's registry: how the `zserver`
/// facade plugs services in as trait objects (`ServerBuilder::service`).
pub trait Service: Send + Sync {
    /// Registers the service's commands on `r`.
    fn register_commands(&self, r: &mut Registry);
}

impl Service for Services {
    fn register_commands(&self, r: &mut Registry) {
        self.register(r)
    }
}

impl Service for Accounts {
    fn register_commands(&self, r: &mut Registry) {
        self.register(r)
    }
}

impl Service for Messages {
    fn register_commands(&self, r: &mut Registry) {
        self.register(r)
    }
}

/// Registers a stream command on the HPC pool whose handler answers with
/// [`ServiceError`]s.
pub(crate) trait RegistryExt {
    fn stream_hpc_svc<F>(&mut self, name: &str, f: F)
    where
        F: Fn(&Peer, &DataFrame) -> Result<DataFrame> + Send + Sync + 'static;
}

impl RegistryExt for Registry {
    fn stream_hpc_svc<F>(&mut self, name: &str, f: F)
    where
        F: Fn(&Peer, &DataFrame) -> Result<DataFrame> + Send + Sync + 'static,
    {
        self.stream_hpc(name, move |p, df| f(p, df).map_err(HandlerError::from));
    }
}
