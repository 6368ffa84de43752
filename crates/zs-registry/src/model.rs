//! The data model shared by every backend: instances, loads, watch items, limits.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A lease id (etcd's lease ids are `i64`; ours follow).
pub type LeaseId = i64;
/// A store revision: every change gets a larger one.
pub type Revision = i64;

/// The load an instance reports: `current` out of `max`.
///
/// `max == 0` means "no declared capacity": such an instance is ranked by
/// `current` alone (as if `max` were 1) and is never considered full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Current load (connections, or a figure the service chooses).
    pub current: u64,
    /// Capacity; an instance with `current >= max > 0` is full and never picked.
    pub max: u64,
}

impl Load {
    /// `current` out of `max`.
    pub fn new(current: u64, max: u64) -> Load {
        Load { current, max }
    }

    /// Whether no more work should go there.
    pub fn is_full(&self) -> bool {
        self.max > 0 && self.current >= self.max
    }

    /// Compares the fractions `current / max` exactly (cross-multiplied in u128).
    pub fn cmp_ratio(&self, other: &Load) -> std::cmp::Ordering {
        let (am, bm) = (u128::from(self.max.max(1)), u128::from(other.max.max(1)));
        (u128::from(self.current) * bm).cmp(&(u128::from(other.current) * am))
    }
}

/// One registered service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Service type (`game`, `db`, `login`, …): `[A-Za-z0-9._:-]`, 1 to 64 bytes.
    pub kind: String,
    /// Instance id, unique within its type; same alphabet and length as `kind`.
    pub id: String,
    /// Physical addresses (`host:port`).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// p2pvm virtual addresses (free-form text, as the tunnel names them).
    #[serde(default)]
    pub vaddrs: Vec<String>,
    /// Free-form metadata (counted against [`Limits::max_meta_bytes`]).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Reported load.
    #[serde(default)]
    pub load: Load,
    /// The lease keeping it alive (set by the registry; ignored on register).
    #[serde(default)]
    pub lease: LeaseId,
}

impl Instance {
    /// An instance with a type, an id and one physical address.
    pub fn new(kind: &str, id: &str, addr: &str) -> Instance {
        Instance {
            kind: kind.to_owned(),
            id: id.to_owned(),
            addrs: if addr.is_empty() {
                Vec::new()
            } else {
                vec![addr.to_owned()]
            },
            vaddrs: Vec::new(),
            meta: BTreeMap::new(),
            load: Load::default(),
            lease: 0,
        }
    }

    /// Sets the load.
    pub fn with_load(mut self, current: u64, max: u64) -> Instance {
        self.load = Load::new(current, max);
        self
    }

    /// Adds a metadata entry.
    pub fn with_meta(mut self, key: &str, value: &str) -> Instance {
        self.meta.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a p2pvm virtual address.
    pub fn with_vaddr(mut self, vaddr: &str) -> Instance {
        self.vaddrs.push(vaddr.to_owned());
        self
    }

    /// `kind/id`: the name HostQuery patterns match.
    pub fn name(&self) -> String {
        format!("{}/{}", self.kind, self.id)
    }

    /// Bytes counted against [`Limits::max_meta_bytes`]: metadata keys and values,
    /// and every address.
    pub fn meta_bytes(&self) -> usize {
        self.meta
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self.addrs.iter().map(String::len).sum::<usize>()
            + self.vaddrs.iter().map(String::len).sum::<usize>()
    }
}

/// Checks a type, id, lock or counter name: `[A-Za-z0-9._:-]`, 1 to 64 bytes.
pub fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 64 {
        return Err(Error::Invalid(format!("{what} must be 1 to 64 bytes")));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(Error::Invalid(format!(
            "{what} {s:?} may hold only A-Z a-z 0-9 . _ : -"
        )));
    }
    Ok(())
}

/// The bounds a registry enforces (per process for the embedded service;
/// checked by the client for etcd, see the crate docs).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most live instances.
    pub max_instances: usize,
    /// Most live leases.
    pub max_leases: usize,
    /// Most instances attached to one lease.
    pub max_instances_per_lease: usize,
    /// Most metadata + address bytes of one instance.
    pub max_meta_bytes: usize,
    /// Most entries in `addrs` + `vaddrs` + `meta`.
    pub max_entries: usize,
    /// Shortest lease TTL granted (shorter asks are raised to it).
    pub min_ttl: Duration,
    /// Longest lease TTL granted (longer asks are refused).
    pub max_ttl: Duration,
    /// Most locks held at once.
    pub max_locks: usize,
    /// Most id counters.
    pub max_counters: usize,
    /// Most ids handed out by one `allocate_ids` call.
    pub max_id_batch: u64,
    /// Most watches open at once, push watches and waiting long-poll
    /// requests together (embedded registry).
    pub max_waiters: usize,
    /// Most watches open from one connection (push and long-poll together).
    pub max_waiters_per_conn: usize,
    /// Most live leases granted through one connection.
    pub max_leases_per_conn: usize,
    /// Longest long-poll wait a watch request may ask for.
    pub max_wait: Duration,
    /// Most pushes one push watch may have unacknowledged; a watcher that
    /// does not keep up stops receiving and later gets every change it missed
    /// in one push (or a resync snapshot).
    pub watch_window: u32,
    /// How long a push watch may stay a full window behind before it is
    /// dropped (with a logged reason; the client may reopen it).
    pub max_stall: Duration,
    /// Most instances a query, list or snapshot returns (more is an error, not a
    /// silent cut).
    pub max_results: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_instances: 100_000,
            max_leases: 100_000,
            max_instances_per_lease: 64,
            max_meta_bytes: 4096,
            max_entries: 64,
            min_ttl: Duration::from_millis(200),
            max_ttl: Duration::from_secs(3600),
            max_locks: 10_000,
            max_counters: 10_000,
            max_id_batch: 1 << 20,
            max_waiters: 4096,
            max_waiters_per_conn: 16,
            max_leases_per_conn: 1024,
            max_wait: Duration::from_secs(30),
            watch_window: 64,
            max_stall: Duration::from_secs(30),
            max_results: 100_000,
        }
    }
}

impl Limits {
    /// Checks an instance against the limits (name alphabet, sizes, entries).
    pub fn check_instance(&self, inst: &Instance) -> Result<()> {
        check_name("type", &inst.kind)?;
        check_name("id", &inst.id)?;
        let entries = inst.addrs.len() + inst.vaddrs.len() + inst.meta.len();
        if entries > self.max_entries {
            return Err(Error::Quota(format!(
                "{entries} addresses and metadata entries (at most {})",
                self.max_entries
            )));
        }
        let bytes = inst.meta_bytes();
        if bytes > self.max_meta_bytes {
            return Err(Error::Quota(format!(
                "{bytes} bytes of metadata and addresses (at most {})",
                self.max_meta_bytes
            )));
        }
        Ok(())
    }

    /// The TTL actually granted for an ask, or an error past `max_ttl`.
    pub fn grant_ttl(&self, ask: Duration) -> Result<Duration> {
        if ask > self.max_ttl {
            return Err(Error::Invalid(format!(
                "TTL {ask:?} is longer than {:?}",
                self.max_ttl
            )));
        }
        Ok(ask.max(self.min_ttl))
    }
}

/// Every live instance (of a type, or all) at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The revision the list is valid at; watch from here.
    pub revision: Revision,
    /// The instances, sorted by `kind/id`.
    pub instances: Vec<Instance>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Change {
    /// Registered or updated (load, addresses, metadata).
    Put {
        /// The instance as it is now.
        instance: Instance,
    },
    /// Gone: deregistered, or its lease expired or was revoked.
    Delete {
        /// Its type.
        kind: String,
        /// Its id.
        id: String,
    },
}

/// A change at a revision (several changes may share one: a lease expiry
/// removes all its instances at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The revision of the change.
    pub revision: Revision,
    /// What changed.
    pub change: Change,
}

/// What a [`Watch`](crate::Watch) delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// The full state. First item of a watch started without a revision; also
    /// sent when the watch fell behind the history kept (compaction) or resumed
    /// after a registry restart, with `resync == true`: replace what you had.
    Snapshot {
        /// The state.
        snapshot: Snapshot,
        /// Whether changes were lost and this replaces them.
        resync: bool,
    },
    /// The next change, in revision order.
    Change(Event),
}

/// What a lock or election attempt found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The lease holding it (the lock goes with the lease).
    pub lease: LeaseId,
    /// The holder's self-description (an address, a node name).
    pub holder: String,
}

/// Glob match: `*` any run (also across `/`), `?` one byte; case-sensitive.
/// This is the HostQuery filter (`game/eu-*`, `*/node-?`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// The least-loaded instance that is not full; ties (equal `current/max`) are
/// served in turn: `turn` picks among them, sorted by `kind/id`.
pub fn choose_least_loaded(instances: &[Instance], turn: u64) -> Option<Instance> {
    choose_least_loaded_of(instances.iter(), turn).cloned()
}

/// [`choose_least_loaded`] over borrowed instances (no copy of the candidates:
/// only the chosen one is cloned by the caller).
pub fn choose_least_loaded_of<'a>(
    instances: impl Iterator<Item = &'a Instance>,
    turn: u64,
) -> Option<&'a Instance> {
    let mut best: Vec<&Instance> = Vec::new();
    for i in instances.filter(|i| !i.load.is_full()) {
        match best.first().map(|b| i.load.cmp_ratio(&b.load)) {
            None | Some(std::cmp::Ordering::Equal) => best.push(i),
            Some(std::cmp::Ordering::Less) => {
                best.clear();
                best.push(i);
            }
            Some(std::cmp::Ordering::Greater) => {}
        }
    }
    if best.is_empty() {
        return None;
    }
    best.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
    Some(best[(turn % best.len() as u64) as usize])
}

/// The literal prefix of a pattern (up to its first wildcard).
pub fn literal_prefix(pattern: &str) -> &str {
    match pattern.find(['*', '?']) {
        Some(i) => &pattern[..i],
        None => pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("game/*", "game/eu-1"));
        assert!(glob_match("*/eu-?", "game/eu-1"));
        assert!(!glob_match("*/eu-?", "game/eu-10"));
        assert!(glob_match("*", ""));
        assert!(glob_match("g*e/*1*", "game/eu-10"));
        assert!(!glob_match("game", "game/x"));
        assert!(!glob_match("db/*", "game/x"));
    }

    #[test]
    fn least_loaded_skips_full_and_rotates_ties() {
        let a = Instance::new("g", "a", "").with_load(5, 10);
        let b = Instance::new("g", "b", "").with_load(1, 2);
        let c = Instance::new("g", "c", "").with_load(9, 10);
        let d = Instance::new("g", "d", "").with_load(4, 4);
        let all = [c.clone(), a.clone(), b.clone(), d];
        let picks: Vec<String> = (0..4)
            .map(|t| choose_least_loaded(&all, t).unwrap().id)
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
        let only_full = [Instance::new("g", "x", "").with_load(3, 3)];
        assert!(choose_least_loaded(&only_full, 0).is_none());
        let lighter = [c, Instance::new("g", "e", "").with_load(1, 10)];
        assert_eq!(choose_least_loaded(&lighter, 7).unwrap().id, "e");
    }

    #[test]
    fn limits_check() {
        let l = Limits {
            max_meta_bytes: 10,
            ..Limits::default()
        };
        assert!(l
            .check_instance(&Instance::new("g", "a", "1.2.3.4:5"))
            .is_ok());
        assert!(matches!(
            l.check_instance(&Instance::new("g", "a", "1.2.3.4:5").with_meta("k", "v")),
            Err(Error::Quota(_))
        ));
        assert!(matches!(
            l.check_instance(&Instance::new("g/x", "a", "")),
            Err(Error::Invalid(_))
        ));
        assert!(l.grant_ttl(Duration::from_secs(7200)).is_err());
        assert_eq!(
            l.grant_ttl(Duration::from_millis(1)).unwrap(),
            Duration::from_millis(200)
        );
    }
}
