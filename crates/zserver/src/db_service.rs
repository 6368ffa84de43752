//! The network DB service (`zs-db-service`) plugged into the builders.
//!
//! ```no_run
//! use zserver::{connect_db, ClientBuilder, DbService, Reconnect, ServerBuilder, ServiceConfig};
//!
//! let service = DbService::open_dir("./zs-data", ServiceConfig::default()).unwrap();
//! let server = ServerBuilder::new().db_service(&service).start().unwrap();
//! let (addr, fp) = (server.local_addr(), server.fingerprint().unwrap());
//! let db = connect_db(move || {
//!     ClientBuilder::new(addr).fingerprint(fp).stable_session(Reconnect::default())
//! })
//! .unwrap();
//! db.open("people", true).unwrap();
//! ```

pub use zs_db_service::{Access, DbClient, DbService, Identity as DbIdentity, ServiceConfig};

use crate::builder::{ClientBuilder, ServerBuilder};

impl ServerBuilder {
    /// Serves `service`'s commands next to the others (the registry holds it as
    /// trait objects; the service lives as long as the server).
    pub fn db_service(self, service: &DbService) -> Self {
        self.commands(|r| service.register(r))
    }
}

/// A [`DbClient`] over connections made by `make` (called again to reconnect
/// after a lost session; use [`ClientBuilder::stable_session`]).
pub fn connect_db(
    make: impl Fn() -> ClientBuilder + Send + Sync + 'static,
) -> zs_db_service::Result<DbClient> {
    DbClient::connect_with(move |reg| make().registry(reg).connect())
}

/// The accounts service (`zs-services`) as the DB service's [`Identity`](zs_db_service::Identity): once
/// plugged in, every DB request needs a logged-in user with the right
/// [`Access`](zs_db_service::Access) to its database.
///
/// ```no_run
/// use std::sync::Arc;
/// use zserver::{DbService, DbServiceAccountsExt, ServerBuilder, ServiceConfig};
/// use zserver::services::{Services, ServicesConfig};
/// use zserver::Access;
///
/// let services = Services::open_dir("./zs-data", ServicesConfig::default()).unwrap();
/// let db = DbService::open_dir("./zs-data/db", ServiceConfig::default()).unwrap();
/// db.require_accounts(&services.accounts);
/// db.grant("notes", "ann", Access::Write).unwrap();
/// let server = ServerBuilder::new()
///     .service(Arc::new(services.clone()))
///     .db_service(&db)
///     .start()
///     .unwrap();
/// ```
#[cfg(feature = "services")]
#[derive(Clone, Debug)]
pub struct AccountsIdentity(pub zs_services::Accounts);

#[cfg(feature = "services")]
impl DbIdentity for AccountsIdentity {
    fn user(&self, peer: &crate::Peer) -> Option<zs_db_service::User> {
        let uid = self.0.user_of(peer)?;
        Some(zs_db_service::User {
            name: self.0.name_of(uid)?,
            admin: self.0.is_admin(uid),
        })
    }
}

/// Ties a [`DbService`]'s access rules to the accounts service.
#[cfg(feature = "services")]
pub trait DbServiceAccountsExt {
    /// From now on only users logged in through `accounts` reach the
    /// databases, each with the access its rules give
    /// ([`DbService::grant`]); administrators have every right.
    fn require_accounts(&self, accounts: &zs_services::Accounts);
}

#[cfg(feature = "services")]
impl DbServiceAccountsExt for DbService {
    fn require_accounts(&self, accounts: &zs_services::Accounts) {
        self.set_identity(std::sync::Arc::new(AccountsIdentity(accounts.clone())));
    }
}
