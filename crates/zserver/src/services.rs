//! Application services (`zs-services`, feature `services`): accounts,
//! offline messages and push, plugged into a [`ServerBuilder`] as trait
//! objects ([`Service`]), and a client that logs in and receives pushes.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use zserver::{ClientBuilder, ServerBuilder};
//! use zserver::services::{Services, ServicesConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let services = Services::open_dir(dir.path(), ServicesConfig::cheap_for_tests()).unwrap();
//! services.accounts.create_user("bob", "battery staple", false).unwrap();
//! let server = ServerBuilder::new()
//!     .addr("127.0.0.1:0".parse().unwrap())
//!     .service(Arc::new(services.clone()))
//!     .start()
//!     .unwrap();
//!
//! let ann = ClientBuilder::new(server.local_addr())
//!     .fingerprint(server.fingerprint().unwrap())
//!     .connect_services()
//!     .unwrap();
//! ann.client.register("ann", "correct horse").unwrap();
//! ann.client.login("ann", "correct horse").unwrap();
//! ann.client.send("bob", 1, b"hi").unwrap();       // bob is offline: queued, fsynced
//!
//! let bob = ClientBuilder::new(server.local_addr())
//!     .fingerprint(server.fingerprint().unwrap())
//!     .connect_services()
//!     .unwrap();
//! bob.client.login("bob", "battery staple").unwrap();
//! bob.client.subscribe().unwrap();                   // queued messages are pushed
//! let m = bob.inbox.recv_timeout(Duration::from_secs(5)).unwrap();
//! assert_eq!(&m.body[..], b"hi");
//! bob.client.ack(&[m.id]).unwrap();
//! ```

use std::sync::Arc;

use zs_services::{Inbox, Service, ServicesClient};

use crate::builder::{ClientBuilder, ServerBuilder};

/// A services client and the inbox its pushes arrive in.
#[derive(Debug)]
pub struct ServicesConnection {
    /// The typed commands.
    pub client: ServicesClient,
    /// Pushed messages.
    pub inbox: Inbox,
}

impl ServerBuilder {
    /// Adds a service's commands (e.g. `Services`: accounts and messages)
    /// to the server's registry.
    pub fn service(self, service: Arc<dyn Service>) -> Self {
        self.commands(|r| service.register_commands(r))
    }
}

impl ClientBuilder {
    /// Connects and wraps the client in a [`ServicesClient`] with an
    /// [`Inbox`] for pushes (added to the builder's registry).
    pub fn connect_services(mut self) -> crate::Result<ServicesConnection> {
        let inbox = Inbox::register(self.registry_mut());
        let client = self.connect()?;
        Ok(ServicesConnection {
            client: ServicesClient::new(client),
            inbox,
        })
    }
}
