//! Counters. Every bad-input path bumps one and logs one line naming it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fm])* pub $f: AtomicU64,)*
        }
        impl $name {
            /// All counters by name.
            pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
                let mut m = BTreeMap::new();
                $(m.insert(stringify!($f), self.$f.load(Ordering::Relaxed));)*
                m
            }
        }
    };
}

counters!(
    /// Relay-wide counters.
    RelayStats {
        /// Agents whose control session is up.
        agents_connected,
        /// Control sessions ever authenticated.
        agents_total,
        /// Agents whose control connection ended (EOF, error, heartbeat).
        agents_lost,
        /// Register proofs that did not match the service token.
        auth_failures,
        /// Register requests naming a service the relay does not have.
        unknown_service,
        /// Connections whose secure handshake failed or timed out.
        handshake_failures,
        /// Connections whose first message was invalid.
        protocol_errors,
        /// Data connections presenting an unknown or expired ticket.
        bad_tickets,
        /// Agents disconnected because they did not read their control channel.
        slow_agents,
        /// Connections refused because `max_agents` sessions were up.
        agents_over_limit,
        /// Public connections accepted.
        visitors_total,
        /// Public connections open now.
        visitors_active,
        /// Public connections refused (no agent, no data connection, limit).
        visitors_refused,
        /// Public connections closed by the idle timeout.
        idle_timeouts,
        /// Bytes public peer -> agent.
        bytes_up,
        /// Bytes agent -> public peer.
        bytes_down,
        /// Public listeners opened (a mapping gained its first agent).
        listeners_opened,
        /// Public listeners closed (a mapping lost its last agent, or was
        /// removed or re-keyed by a reload).
        listeners_closed,
        /// Configuration reloads applied.
        reloads,
        /// UDP flows open now (all mappings).
        udp_flows_active,
        /// Datagrams from a new source dropped: flow caps reached.
        udp_flows_refused,
        /// Datagrams dropped because their flow's queue or the relay's UDP
        /// queue budget was full.
        udp_datagrams_dropped,
        /// Bytes of datagrams queued towards agents now (gauge).
        udp_queued_bytes,
        /// Command-API sessions authenticated.
        admin_sessions,
        /// Command-API connections refused (wrong proof, API off, bad request).
        admin_refused,
        /// Mappings added or removed through the command API.
        admin_changes,
        /// Public connections carried on a data connection that had carried
        /// one before (`data_reuse`).
        data_reused,
        /// Framed data connections dropped because the agent ended one
        /// wrongly (no `DataDone` in time, another message, bytes after its
        /// end chunk).
        data_reuse_errors,
        /// Pooled data connections closed because they reached
        /// `data_reuse_age` while waiting in the pool.
        data_expired,
    }
);

counters!(
    /// Agent-wide counters.
    AgentStats {
        /// Control sessions established (first and re-connects).
        sessions,
        /// Control sessions lost (relay gone, heartbeat timeout, error).
        relay_lost,
        /// Connection attempts to a relay that failed.
        connect_failures,
        /// Mappings the relay refused.
        refused,
        /// Mappings the relay accepted.
        registered,
        /// Data connections opened.
        data_conns,
        /// Public connections carried to the local service.
        forwarded,
        /// Local service connection failures.
        local_failures,
        /// Data connections whose type (TCP/UDP) differs from the local mapping's.
        kind_mismatch,
        /// Bytes public -> local.
        bytes_up,
        /// Bytes local -> public.
        bytes_down,
        /// Configuration reloads applied.
        reloads,
        /// Public connections carried on a data connection that had carried
        /// one before.
        data_reused,
    }
);

counters!(
    /// Per-mapping counters on the relay.
    MappingStats {
        /// Public connections accepted.
        connections,
        /// Public connections open now.
        active,
        /// Bytes public peer -> agent.
        bytes_up,
        /// Bytes agent -> public peer.
        bytes_down,
        /// Public connections that ended in an error or were refused.
        errors,
        /// Agents serving the mapping now.
        agents,
    }
);

pub(crate) fn inc(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

pub(crate) fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}
