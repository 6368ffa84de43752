//! Access rules per database and logged-in user.
//!
//! Enforcement starts when an [`Identity`] is given to
//! [`crate::DbService::set_identity`] (the facade plugs the accounts service in):
//! from then on a connection that is not logged in is refused with
//! [`crate::proto::errcode::UNAUTHORIZED`] and a user without the right with
//! [`crate::proto::errcode::FORBIDDEN`]. Rules ([`Access`] per database name and
//! user name, `*` for every database or every user) are kept in the reserved
//! database [`ACCESS_DB`], so they survive restarts; they are checked on every
//! request, and again while a query, a watch or a FastPost stream runs, so a
//! revoked right stops them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use zs_core::Peer;
use zs_db::{Database, Kind};

/// The reserved database holding the access rules (never listed or served).
pub const ACCESS_DB: &str = "__zs_access";

/// What a user may do with a database; each level includes the ones below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Access {
    /// Nothing (a rule of this level removes a right given by a wider rule only
    /// if no other rule gives it: rules add up, the highest one counts).
    None = 0,
    /// Open, get, query, watch.
    Read = 1,
    /// Also insert, update, delete, FastPost.
    Write = 2,
    /// Also close, copy into, compact, remove, create (the name), index, and
    /// change the rules of the database.
    Admin = 3,
}

impl Access {
    /// From its byte.
    pub fn from_u8(b: u8) -> Option<Access> {
        Some(match b {
            0 => Access::None,
            1 => Access::Read,
            2 => Access::Write,
            3 => Access::Admin,
            _ => return None,
        })
    }

    /// Parses `none`, `read`, `write` or `admin`.
    pub fn parse(s: &str) -> Option<Access> {
        Some(match s.to_ascii_lowercase().as_str() {
            "none" => Access::None,
            "read" => Access::Read,
            "write" => Access::Write,
            "admin" => Access::Admin,
            _ => return None,
        })
    }
}

/// A logged-in user as the [`Identity`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The account name (compared case-insensitively).
    pub name: String,
    /// A server administrator: every right on every database.
    pub admin: bool,
}

/// Who is logged in on a connection (the accounts service, through the facade).
pub trait Identity: Send + Sync {
    /// The user logged in on `peer`, if any.
    fn user(&self, peer: &Peer) -> Option<User>;
}

/// A rule as stored: `u16 len db, u16 len user, u8 access`.
pub(crate) fn encode_rule(db: &str, user: &str, access: Access) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(5 + db.len() + user.len());
    b.put_u16_le(db.len() as u16);
    b.put_slice(db.as_bytes());
    b.put_u16_le(user.len() as u16);
    b.put_slice(user.as_bytes());
    b.put_u8(access as u8);
    b.to_vec()
}

pub(crate) fn decode_rule(d: &[u8]) -> Option<(String, String, Access)> {
    let n = u16::from_le_bytes(d.get(..2)?.try_into().ok()?) as usize;
    let db = std::str::from_utf8(d.get(2..2 + n)?).ok()?.to_string();
    let rest = d.get(2 + n..)?;
    let m = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let user = std::str::from_utf8(rest.get(2..2 + m)?).ok()?.to_string();
    let tail = rest.get(2 + m..)?;
    if tail.len() != 1 {
        return None;
    }
    Some((db, user, Access::from_u8(tail[0])?))
}

/// The rules in memory, backed by [`ACCESS_DB`].
pub(crate) struct Rules {
    db: Database,
    /// (database or `*`, user or `*`) → (record id, access).
    map: Mutex<HashMap<(String, String), (u64, Access)>>,
    identity: Mutex<Option<Arc<dyn Identity>>>,
    /// Set once an identity is: until then no request takes `identity`'s lock.
    enforcing: AtomicBool,
}

impl Rules {
    pub(crate) fn load(db: Database) -> zs_db::Result<Rules> {
        let mut map = HashMap::new();
        for rec in db.cursor(1, false) {
            let rec = rec?;
            match decode_rule(&rec.data) {
                Some((d, u, a)) => {
                    map.insert((d, u), (rec.id, a));
                }
                None => {
                    tracing::warn!(id = rec.id, "db service: unreadable access rule dropped");
                    let _ = db.delete(rec.id);
                }
            }
        }
        Ok(Rules {
            db,
            map: Mutex::new(map),
            identity: Mutex::new(None),
            enforcing: AtomicBool::new(false),
        })
    }

    pub(crate) fn identity(&self) -> Option<Arc<dyn Identity>> {
        if !self.enforcing.load(Ordering::Acquire) {
            return None;
        }
        crate::server::lock(&self.identity).clone()
    }

    /// Enforces the rules from now on, with `identity` telling who is logged in.
    pub(crate) fn set_identity(&self, identity: Arc<dyn Identity>) {
        *crate::server::lock(&self.identity) = Some(identity);
        self.enforcing.store(true, Ordering::Release);
    }

    /// Sets (durably) the access of `user` to `db` (`*` for either: all).
    pub(crate) fn set(&self, db: &str, user: &str, access: Access) -> zs_db::Result<()> {
        let user = user.to_ascii_lowercase();
        let key = (db.to_string(), user);
        let mut map = crate::server::lock(&self.map);
        let data = encode_rule(&key.0, &key.1, access);
        match map.get(&key).copied() {
            Some((rec, _)) => {
                let mut b = zs_db::Batch::new();
                b.update(rec, Kind::Raw, data);
                self.db
                    .commit_with(&b, Some(zs_db::Durability::Immediate))?;
                map.insert(key, (rec, access));
            }
            None => {
                let mut b = zs_db::Batch::new();
                b.insert(Kind::Raw, data);
                let ids = self
                    .db
                    .commit_with(&b, Some(zs_db::Durability::Immediate))?;
                map.insert(key, (ids[0], access));
            }
        }
        Ok(())
    }

    /// The rules of `db` (and the `*` ones), sorted.
    pub(crate) fn list(&self, db: &str) -> Vec<(String, String, Access)> {
        let map = crate::server::lock(&self.map);
        let mut v: Vec<(String, String, Access)> = map
            .iter()
            .filter(|((d, _), _)| db == "*" || d == db || d == "*")
            .map(|((d, u), (_, a))| (d.clone(), u.clone(), *a))
            .collect();
        v.sort();
        v
    }

    /// The access `user` has to `db`: the highest rule among (db, user),
    /// (db, *), (*, user), (*, *); every right for a server administrator.
    pub(crate) fn access(&self, db: &str, user: &User) -> Access {
        if user.admin {
            return Access::Admin;
        }
        let name = user.name.to_ascii_lowercase();
        let map = crate::server::lock(&self.map);
        let mut best = Access::None;
        for d in [db, "*"] {
            for u in [name.as_str(), "*"] {
                if let Some((_, a)) = map.get(&(d.to_string(), u.to_string())) {
                    best = best.max(*a);
                }
            }
        }
        best
    }

    /// Checks that `peer` may act on `db` with `need`: `Ok` when no identity is
    /// set (no enforcement); else 401 (not logged in) or 403 (not allowed).
    pub(crate) fn check(&self, peer: &Peer, db: &str, need: Access) -> Result<(), (u32, String)> {
        let Some(id) = self.identity() else {
            return Ok(());
        };
        let Some(user) = id.user(peer) else {
            return Err((
                crate::proto::errcode::UNAUTHORIZED,
                "log in first: this DB service serves logged-in users only".into(),
            ));
        };
        let has = self.access(db, &user);
        if has >= need {
            Ok(())
        } else {
            Err((
                crate::proto::errcode::FORBIDDEN,
                format!(
                    "user {:?} has {has:?} access to database {db:?}; this needs {need:?}",
                    user.name
                ),
            ))
        }
    }

    /// Checks that `peer` is logged in (when enforcing).
    pub(crate) fn check_logged_in(&self, peer: &Peer) -> Result<Option<User>, (u32, String)> {
        let Some(id) = self.identity() else {
            return Ok(None);
        };
        match id.user(peer) {
            Some(u) => Ok(Some(u)),
            None => Err((
                crate::proto::errcode::UNAUTHORIZED,
                "log in first: this DB service serves logged-in users only".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_stored_and_reloaded() {
        let env = zs_db::Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
        let db = env
            .create_db(ACCESS_DB, zs_db::DbOptions::default())
            .unwrap();
        let rules = Rules::load(db.clone()).unwrap();
        rules.set("notes", "Ann", Access::Read).unwrap();
        rules.set("*", "*", Access::Read).unwrap();
        rules.set("notes", "ann", Access::Write).unwrap(); // replaces, not adds
        let ann = User {
            name: "ANN".into(),
            admin: false,
        };
        let bob = User {
            name: "bob".into(),
            admin: false,
        };
        assert_eq!(rules.access("notes", &ann), Access::Write);
        assert_eq!(rules.access("other", &bob), Access::Read);
        let root = User {
            name: "root".into(),
            admin: true,
        };
        assert_eq!(rules.access("other", &root), Access::Admin);
        drop(rules);
        assert_eq!(db.len(), 2);
        let again = Rules::load(db).unwrap();
        assert_eq!(
            again.list("notes"),
            vec![
                ("*".to_string(), "*".to_string(), Access::Read),
                ("notes".to_string(), "ann".to_string(), Access::Write),
            ]
        );
        assert_eq!(again.access("notes", &ann), Access::Write);
    }

    #[test]
    fn rules_round_trip_and_reject_garbage() {
        let b = encode_rule("people", "ann", Access::Write);
        assert_eq!(
            b,
            [6, 0, b'p', b'e', b'o', b'p', b'l', b'e', 3, 0, b'a', b'n', b'n', 2]
        );
        assert_eq!(
            decode_rule(&b),
            Some(("people".into(), "ann".into(), Access::Write))
        );
        assert_eq!(decode_rule(&b[..b.len() - 1]), None);
        let mut extra = b.clone();
        extra.push(0);
        assert_eq!(decode_rule(&extra), None);
        let mut bad = b;
        *bad.last_mut().unwrap() = 9;
        assert_eq!(decode_rule(&bad), None);
        assert_eq!(Access::parse("WRITE"), Some(Access::Write));
        assert!(Access::Read < Access::Write && Access::Write < Access::Admin);
    }
}
