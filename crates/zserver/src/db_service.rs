//! The network DB service (`zs-db-service`) plugged into the builders.
//!
//! ```no_run
//! use zserver::{connect_db, ClientBuilder, DbService, Reconnect, ServerBuilder, ServiceConfig};
//!
//! let service = DbService::open_dir("./zs-data", ServiceConfig::default()).unwrap();
//! let server = ServerBuilder::new().db_service(&service).start().unwrap();
//! let (addr, fp) = (server.local_addr(), server.fingerprint().unwrap());
//! let db = connect_db(move || {
//!     ClientBuilder::new(addr).fingerprint(fp).stable(Reconnect::default())
//! })
//! .unwrap();
//! db.open("people", true).unwrap();
//! ```

pub use zs_db_service::{DbClient, DbService, ServiceConfig};

use crate::builder::{ClientBuilder, ServerBuilder};

impl ServerBuilder {
    /// Serves `service`'s commands next to the others (the registry holds it as
    /// trait objects; the service lives as long as the server).
    pub fn db_service(self, service: &DbService) -> Self {
        self.commands(|r| service.register(r))
    }
}

/// A [`DbClient`] over connections made by `make` (called again to reconnect
/// after a lost session; use [`ClientBuilder::stable`]).
pub fn connect_db(
    make: impl Fn() -> ClientBuilder + Send + Sync + 'static,
) -> zs_db_service::Result<DbClient> {
    DbClient::connect_with(move |reg| make().registry(reg).connect())
}
