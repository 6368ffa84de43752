//! The relay's store of mappings added at runtime (`zs xnat add`): a zs-db
//! database `mappings` in `[server] store_dir`, one JSON record per mapping,
//! every change synced before the command API answers, so a restarted relay
//! serves the same runtime mappings again.
//!
//! A record (documented in `docs/PROTOCOL.md`, Part 5):
//! `{"name":"web","token":"t","bind_addr":"0.0.0.0:8080","type":"tcp","idle_timeout_s":600,"max_connections":4096}`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zs_db::{Database, DbOptions, DirVfs, Kind as DbKind};

use crate::config::{Kind, ServerService};

/// Name of the zs-db database in `store_dir`.
pub const DB_NAME: &str = "mappings";

/// The open store.
pub struct MappingStore {
    db: Database,
    ids: Mutex<HashMap<String, u64>>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// One stored mapping, in this field order.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    name: String,
    token: String,
    bind_addr: std::net::SocketAddr,
    #[serde(rename = "type")]
    kind: String,
    idle_timeout_s: u64,
    max_connections: usize,
}

/// The JSON text of one stored mapping.
pub fn encode(name: &str, s: &ServerService) -> String {
    serde_json::to_string(&Stored {
        name: name.to_string(),
        token: s.token.clone(),
        bind_addr: s.bind_addr,
        kind: s.kind.as_str().to_string(),
        idle_timeout_s: s.idle_timeout.as_secs(),
        max_connections: s.max_connections,
    })
    .expect("plain struct")
}

/// Parses one stored mapping.
pub fn decode(data: &[u8]) -> Result<(String, ServerService), String> {
    let v: Stored = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    if v.name.is_empty() || v.name.len() > crate::proto::MAX_NAME {
        return Err("field name: expected 1 to 128 bytes".into());
    }
    let kind = match v.kind.as_str() {
        "tcp" => Kind::Tcp,
        "udp" => Kind::Udp,
        other => return Err(format!("field type: expected tcp or udp, got {other:?}")),
    };
    Ok((
        v.name,
        ServerService {
            token: v.token,
            bind_addr: v.bind_addr,
            idle_timeout: Duration::from_secs(v.idle_timeout_s),
            max_connections: v.max_connections,
            kind,
        },
    ))
}

impl MappingStore {
    /// Opens (creating when missing) the store in `dir`; returns it with the
    /// mappings it holds. A record that does not parse is reported in the log
    /// and skipped (the others are served).
    pub fn open(dir: &Path) -> io::Result<(Arc<MappingStore>, BTreeMap<String, ServerService>)> {
        let vfs = Arc::new(DirVfs::new(dir)?);
        let db = match Database::open(vfs.clone(), DB_NAME) {
            Ok(db) => db,
            Err(zs_db::Error::NoSuchDatabase(_)) => {
                Database::create(vfs, DB_NAME, DbOptions::default()).map_err(other)?
            }
            Err(e) => return Err(other(format!("{}: {e}", dir.display()))),
        };
        let mut ids = HashMap::new();
        let mut found = BTreeMap::new();
        for r in db.cursor(0, false) {
            let r = r.map_err(other)?;
            match decode(&r.data) {
                Ok((name, svc)) => {
                    ids.insert(name.clone(), r.id);
                    found.insert(name, svc);
                }
                Err(e) => {
                    tracing::error!(store = %dir.display(), id = r.id, error = %e, "xnat relay: skipping a stored mapping that does not parse")
                }
            }
        }
        Ok((
            Arc::new(MappingStore {
                db,
                ids: Mutex::new(ids),
            }),
            found,
        ))
    }

    /// Stores (or replaces) `name`, synced before it returns.
    pub fn put(&self, name: &str, s: &ServerService) -> io::Result<()> {
        let text = encode(name, s);
        let old = self.ids.lock().expect("store ids").get(name).copied();
        let id = match old {
            Some(id) => {
                self.db
                    .update(id, DbKind::Json, text.as_bytes())
                    .map_err(other)?;
                id
            }
            None => self
                .db
                .insert(DbKind::Json, text.as_bytes())
                .map_err(other)?,
        };
        self.ids
            .lock()
            .expect("store ids")
            .insert(name.to_string(), id);
        Ok(())
    }

    /// Deletes `name` (no-op when absent), synced before it returns.
    pub fn delete(&self, name: &str) -> io::Result<()> {
        let id = self.ids.lock().expect("store ids").remove(name);
        if let Some(id) = id {
            self.db.delete(id).map_err(other)?;
        }
        Ok(())
    }

    /// Names stored.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ids
            .lock()
            .expect("store ids")
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_record_round_trips_and_survives_a_reopen() {
        let svc = ServerService {
            token: "t".into(),
            bind_addr: "0.0.0.0:8080".parse().unwrap(),
            idle_timeout: Duration::from_secs(600),
            max_connections: 4096,
            kind: Kind::Tcp,
        };
        // The exact text docs/PROTOCOL.md shows.
        assert_eq!(
            encode("web", &svc),
            r#"{"name":"web","token":"t","bind_addr":"0.0.0.0:8080","type":"tcp","idle_timeout_s":600,"max_connections":4096}"#
        );
        assert_eq!(
            decode(encode("web", &svc).as_bytes()).unwrap(),
            ("web".to_string(), svc.clone())
        );
        assert!(decode(br#"{"name":"x"}"#).is_err());
        assert!(decode(b"garbage").is_err());

        let dir = tempfile::tempdir().unwrap();
        let (st, found) = MappingStore::open(dir.path()).unwrap();
        assert!(found.is_empty());
        st.put("web", &svc).unwrap();
        let mut dns = svc.clone();
        dns.kind = Kind::Udp;
        st.put("dns", &dns).unwrap();
        dns.max_connections = 7;
        st.put("dns", &dns).unwrap();
        st.put("gone", &svc).unwrap();
        st.delete("gone").unwrap();
        drop(st);
        let (st, found) = MappingStore::open(dir.path()).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found["web"], svc);
        assert_eq!(found["dns"], dns);
        assert_eq!(st.names(), ["dns", "web"]);
    }
}
