//! A relay or agent on its own tokio runtime, for callers that have none (the
//! `zserver` facade, the CLI). Dropping the [`Node`] stops it and closes every
//! socket it holds.

use std::collections::BTreeMap;
use std::io;

use tokio::runtime::Runtime;

use crate::config::{ClientConfig, ServerConfig};
use crate::{Agent, Relay};

/// What a [`Node`] runs.
pub enum Role {
    /// A relay.
    Relay(Relay),
    /// An agent.
    Agent(Agent),
}

/// A running relay or agent; stops when dropped.
pub struct Node {
    rt: Option<Runtime>,
    role: Role,
}

fn runtime() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("zs-xnat")
        .enable_all()
        .build()
}

impl Node {
    /// Binds and starts a relay (identity from `cfg.identity_file`).
    pub fn start_relay(cfg: ServerConfig) -> io::Result<Node> {
        let rt = runtime()?;
        let relay = rt.block_on(Relay::bind(cfg))?;
        rt.spawn(relay.clone().run());
        Ok(Node {
            rt: Some(rt),
            role: Role::Relay(relay),
        })
    }

    /// Starts an agent (it dials out at once and keeps reconnecting).
    pub fn start_agent(cfg: ClientConfig) -> io::Result<Node> {
        let rt = runtime()?;
        let agent = Agent::new(cfg);
        rt.spawn(agent.clone().run());
        Ok(Node {
            rt: Some(rt),
            role: Role::Agent(agent),
        })
    }

    /// The relay or agent.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Its counters (relay-wide or agent-wide).
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        match &self.role {
            Role::Relay(r) => r.stats().snapshot(),
            Role::Agent(a) => a.stats().snapshot(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
