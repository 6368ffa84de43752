//! Accounts: register, log in (Argon2id, exact comparison), change and reset
//! passwords, disable/enable, aliases, the online list, login throttling per
//! user and per source address, and the user id of a logged-in connection
//! ([`Accounts::user_of`]).
//!
//! Users live in the zs-db database `accounts` (one JSON record per user, its
//! record id is the user id; every write is fsynced before it is answered) and
//! in memory (names and aliases to ids). The online table (connection id to
//! user id) lives here rather than in the connection's single user-state slot
//! of zs-core ([`Peer::set_state`] holds one value of one type, and a handler
//! storing its own state there would silently log the user out).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zs_core::{Peer, Registry};
use zs_crypto::password::{hash_password, verify_password, PasswordParams};
use zs_db::{Database, Kind};
use zs_wire::DataFrame;

use crate::error::{code, Result, ServiceError};
use crate::RegistryExt;

/// What a second login of a user already online does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecondLogin {
    /// The older connection is told (signal `user.kicked`) and closed; the new
    /// login succeeds (the seed's behaviour).
    #[default]
    Kick,
    /// The new login is refused with [`code::ALREADY_ONLINE`].
    Refuse,
}

/// Settings of the accounts service.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// Second login of an online user: kick the older session or refuse.
    pub second_login: SecondLogin,
    /// Anyone may register (`user.register`); otherwise only admins.
    pub open_registration: bool,
    /// Argon2id cost of new password hashes.
    pub password_params: PasswordParams,
    /// Shortest password accepted (bytes).
    pub min_password: usize,
    /// Longest password accepted (bytes; bounds the hashing work).
    pub max_password: usize,
    /// Longest name, alias or group name (bytes).
    pub max_name: usize,
    /// Most aliases per user.
    pub max_aliases: usize,
    /// Most user accounts.
    pub max_users: usize,
    /// Failed logins of one user within `window` before its logins are refused.
    pub user_failures: usize,
    /// Failed logins from one address within `window` before its logins are refused.
    pub addr_failures: usize,
    /// The throttling window.
    pub window: Duration,
    /// Registrations from one address (each costs a password hash) within
    /// `registration_window`; admins are not counted.
    pub registrations_per_addr: usize,
    /// The window of `registrations_per_addr`.
    pub registration_window: Duration,
    /// Most users plus addresses tracked for throttling; past it, logins of
    /// untracked ones are refused until entries expire (fail closed).
    pub max_tracked: usize,
    /// Extra connections a session may attach with its ticket
    /// (`user.ticket`, `user.attach`: parallel transfers of one user).
    pub max_attached: usize,
    /// How long a ticket from `user.ticket` may be used to attach.
    pub ticket_ttl: Duration,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            second_login: SecondLogin::Kick,
            open_registration: true,
            password_params: PasswordParams::default(),
            min_password: 8,
            max_password: 1024,
            max_name: 64,
            max_aliases: 8,
            max_users: 1_000_000,
            user_failures: 5,
            addr_failures: 20,
            window: Duration::from_secs(15 * 60),
            registrations_per_addr: 10,
            registration_window: Duration::from_secs(3600),
            max_tracked: 100_000,
            max_attached: 8,
            ticket_ttl: Duration::from_secs(60),
        }
    }
}

/// A user as stored (JSON in the `accounts` database).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRec {
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    phc: String,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    created_ms: u64,
}

/// A user as listed by [`Accounts::list`] and `user.list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User id (stable).
    pub id: u64,
    /// Name (lower case).
    pub name: String,
    /// Other identifiers that log in as this user.
    pub aliases: Vec<String>,
    /// Logins refused.
    pub disabled: bool,
    /// May run admin commands.
    pub admin: bool,
    /// Logged in now.
    pub online: bool,
}

#[derive(Default)]
struct Users {
    recs: BTreeMap<u64, UserRec>,
    /// Name or alias (lower case) to user id.
    names: HashMap<String, u64>,
}

#[derive(Default)]
struct Sessions {
    by_user: HashMap<u64, Peer>,
    by_peer: HashMap<u64, u64>,
    /// Attached connection id to (user, the session's connection id, the
    /// attached connection): valid while that session is the user's current
    /// one and open.
    attached: HashMap<u64, (u64, u64, Peer)>,
    /// Session connection id to (its ticket, user, issued at).
    tickets: HashMap<u64, ([u8; 32], u64, Instant)>,
}

/// `a == b` without an early exit on the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Sessions {
    /// The user of connection `id` when it is that user's open session.
    fn session_user(&self, id: u64) -> Option<u64> {
        let uid = *self.by_peer.get(&id)?;
        let p = self.by_user.get(&uid)?;
        (p.id() == id && p.is_open()).then_some(uid)
    }

    /// Drops attached connections and tickets whose session is over.
    fn sweep_attached(&mut self) {
        let live: Vec<u64> = self
            .attached
            .iter()
            .filter(|(_, (uid, sid, p))| p.is_open() && self.session_user(*sid) == Some(*uid))
            .map(|(k, _)| *k)
            .collect();
        self.attached.retain(|k, _| live.contains(k));
        let ids: Vec<u64> = self.tickets.keys().copied().collect();
        for id in ids {
            if self.session_user(id).is_none() {
                self.tickets.remove(&id);
            }
        }
    }
}

#[derive(Default)]
struct Throttle {
    users: HashMap<u64, VecDeque<Instant>>,
    addrs: HashMap<IpAddr, VecDeque<Instant>>,
    regs: HashMap<IpAddr, VecDeque<Instant>>,
}

struct Inner {
    db: Database,
    cfg: AccountsConfig,
    users: Mutex<Users>,
    sessions: Mutex<Sessions>,
    throttle: Mutex<Throttle>,
    /// Verified against when the name is unknown, so both cases cost the same
    /// (made on first use: a server start does not pay for it).
    dummy_phc: std::sync::OnceLock<String>,
}

/// The accounts service (cheap to clone; all clones share the state).
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Accounts({} users)", lock(&self.inner.users).recs.len())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a name, alias or group name and folds it to lower case: 1 to
/// `max` bytes of `a-z 0-9 . _ -` (ASCII upper case is folded), starting
/// with a letter or digit. Names are case-insensitive; passwords are not.
pub fn check_name(name: &str, max: usize) -> Result<String> {
    if name.is_empty() || name.len() > max {
        return Err(ServiceError::new(
            code::INVALID,
            format!("a name has 1 to {max} bytes (got {})", name.len()),
        ));
    }
    let folded = name.to_ascii_lowercase();
    let ok_first = folded.as_bytes()[0].is_ascii_alphanumeric();
    let ok_rest = folded
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok_first || !ok_rest {
        return Err(ServiceError::new(
            code::INVALID,
            "a name uses a-z, 0-9, '.', '_', '-' and starts with a letter or digit",
        ));
    }
    Ok(folded)
}

/// Prunes timestamps older than `window` and reports how many remain.
fn recent(q: &mut VecDeque<Instant>, window: Duration, now: Instant) -> usize {
    while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
        q.pop_front();
    }
    q.len()
}

fn retry_in(q: &VecDeque<Instant>, window: Duration, now: Instant) -> u64 {
    q.front()
        .map(|t| window.saturating_sub(now.duration_since(*t)).as_secs() + 1)
        .unwrap_or(1)
}

impl Accounts {
    /// Opens the service on `db` (an `accounts` database), loading every user.
    pub fn open(db: Database, cfg: AccountsConfig) -> Result<Accounts> {
        let mut users = Users::default();
        for r in db.cursor(0, false) {
            let r = r.map_err(ServiceError::storage)?;
            let rec: UserRec = match serde_json::from_slice(&r.data) {
                Ok(rec) => rec,
                Err(e) => {
                    tracing::error!(id = r.id, error = %e, "accounts: unreadable user record skipped");
                    continue;
                }
            };
            users.names.insert(rec.name.clone(), r.id);
            for a in &rec.aliases {
                users.names.insert(a.clone(), r.id);
            }
            users.recs.insert(r.id, rec);
        }
        Ok(Accounts {
            inner: Arc::new(Inner {
                db,
                cfg,
                users: Mutex::new(users),
                sessions: Mutex::new(Sessions::default()),
                throttle: Mutex::new(Throttle::default()),
                dummy_phc: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Closes the `accounts` database (see [`crate::Services::close`]).
    pub fn close(&self) -> Result<()> {
        self.inner.db.close().map_err(ServiceError::storage)
    }

    fn dummy_phc(&self) -> String {
        self.inner
            .dummy_phc
            .get_or_init(|| {
                hash_password("not a password of anyone", &self.inner.cfg.password_params)
                    .unwrap_or_default()
            })
            .clone()
    }

    /// The configuration.
    pub fn config(&self) -> &AccountsConfig {
        &self.inner.cfg
    }

    /// The user id the connection `peer` is logged in as (`None`: not logged
    /// in, logged out, kicked, or the connection is closed). Any handler of
    /// any service, and user code, reads it here.
    pub fn user_of(&self, peer: &Peer) -> Option<u64> {
        let s = lock(&self.inner.sessions);
        if let Some(uid) = s.session_user(peer.id()) {
            return Some(uid);
        }
        // An attached connection: as long as its session lasts.
        let (uid, sid, _) = s.attached.get(&peer.id())?;
        (peer.is_open() && s.session_user(*sid) == Some(*uid)).then_some(*uid)
    }

    /// A new ticket for the session on `peer` (replacing its previous one):
    /// other connections of the same client present it to
    /// [`Accounts::attach`] and act as this user while the session lasts,
    /// without being a second login. Valid for
    /// [`AccountsConfig::ticket_ttl`].
    pub fn ticket(&self, peer: &Peer) -> Result<[u8; 32]> {
        let mut s = lock(&self.inner.sessions);
        let uid = s.session_user(peer.id()).ok_or_else(|| {
            ServiceError::new(
                code::NOT_LOGGED_IN,
                "log in first (user.login); attached connections get no tickets",
            )
        })?;
        let mut t = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut t)
            .map_err(|_| ServiceError::new(code::STORAGE, "no randomness"))?;
        s.sweep_attached();
        s.tickets.insert(peer.id(), (t, uid, Instant::now()));
        Ok(t)
    }

    /// Attaches connection `peer` to the session of user `name` that issued
    /// `ticket` ([`Accounts::ticket`]): `peer` then acts as that user until
    /// the session ends (logout, kick, close). At most
    /// [`AccountsConfig::max_attached`] per session; a wrong ticket counts as
    /// a failed login of the source address (throttled alike).
    pub fn attach(&self, peer: &Peer, name: &str, ticket: &[u8]) -> Result<u64> {
        let cfg = &self.inner.cfg;
        let addr = peer.addr().map(|a| a.ip());
        let now = Instant::now();
        if let Some(a) = addr {
            let mut t = lock(&self.inner.throttle);
            if let Some(q) = t.addrs.get_mut(&a) {
                if recent(q, cfg.window, now) >= cfg.addr_failures {
                    let s = retry_in(q, cfg.window, now);
                    return Err(ServiceError::new(
                        code::THROTTLED,
                        format!("too many failed logins from {a}: retry in {s} s"),
                    ));
                }
            }
        }
        let uid = self.resolve(name);
        let mut s = lock(&self.inner.sessions);
        s.sweep_attached();
        let found = uid.and_then(|uid| {
            let sid = s.by_user.get(&uid)?.id();
            let (t, tuid, at) = s.tickets.get(&sid)?;
            let ok = *tuid == uid && at.elapsed() < cfg.ticket_ttl && same_bytes(t, ticket);
            ok.then_some((uid, sid))
        });
        let Some((uid, sid)) = found else {
            drop(s);
            if let Some(a) = addr {
                let mut t = lock(&self.inner.throttle);
                if t.addrs.contains_key(&a) || t.users.len() + t.addrs.len() < cfg.max_tracked {
                    t.addrs.entry(a).or_default().push_back(now);
                }
            }
            return Err(ServiceError::new(
                code::BAD_CREDENTIALS,
                "wrong name or ticket (or its session is over)",
            ));
        };
        if s.session_user(peer.id()).is_some() {
            return Err(ServiceError::new(
                code::INVALID,
                "this connection is a session: log out before attaching it",
            ));
        }
        let n = s
            .attached
            .iter()
            .filter(|(k, (_, x, _))| *x == sid && **k != peer.id())
            .count();
        if n >= cfg.max_attached {
            return Err(ServiceError::new(
                zs_core::code::TOO_LARGE,
                format!(
                    "a session attaches at most {} connections",
                    cfg.max_attached
                ),
            ));
        }
        s.attached.insert(peer.id(), (uid, sid, peer.clone()));
        Ok(uid)
    }

    /// Like [`Accounts::user_of`], or [`code::NOT_LOGGED_IN`].
    pub fn require_user(&self, peer: &Peer) -> Result<u64> {
        self.user_of(peer)
            .ok_or_else(|| ServiceError::new(code::NOT_LOGGED_IN, "log in first (user.login)"))
    }

    /// The connection user `uid` is logged in on, if it is open.
    pub fn online_peer(&self, uid: u64) -> Option<Peer> {
        let s = lock(&self.inner.sessions);
        s.by_user.get(&uid).filter(|p| p.is_open()).cloned()
    }

    /// Every logged-in connection with its user id (closed ones are dropped
    /// from the table on the way).
    pub fn online_peers(&self) -> Vec<(u64, Peer)> {
        let mut s = lock(&self.inner.sessions);
        let gone: Vec<u64> = s
            .by_user
            .iter()
            .filter(|(_, p)| !p.is_open())
            .map(|(u, _)| *u)
            .collect();
        for u in gone {
            if let Some(p) = s.by_user.remove(&u) {
                s.by_peer.remove(&p.id());
            }
        }
        s.by_user.iter().map(|(u, p)| (*u, p.clone())).collect()
    }

    /// Names of the users online now, sorted.
    pub fn online(&self) -> Vec<String> {
        let ids: Vec<u64> = self.online_peers().into_iter().map(|(u, _)| u).collect();
        let users = lock(&self.inner.users);
        let mut v: Vec<String> = ids
            .iter()
            .filter_map(|u| users.recs.get(u).map(|r| r.name.clone()))
            .collect();
        v.sort();
        v
    }

    /// The user id of a name or alias (case-insensitive).
    pub fn resolve(&self, name_or_alias: &str) -> Option<u64> {
        let key = name_or_alias.to_ascii_lowercase();
        lock(&self.inner.users).names.get(&key).copied()
    }

    /// The name of user `uid`.
    pub fn name_of(&self, uid: u64) -> Option<String> {
        lock(&self.inner.users)
            .recs
            .get(&uid)
            .map(|r| r.name.clone())
    }

    /// Whether user `uid` is an admin.
    pub fn is_admin(&self, uid: u64) -> bool {
        lock(&self.inner.users)
            .recs
            .get(&uid)
            .is_some_and(|r| r.admin)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        lock(&self.inner.users).recs.len()
    }

    /// No users yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_password(&self, pw: &str) -> Result<()> {
        let c = &self.inner.cfg;
        if pw.len() < c.min_password || pw.len() > c.max_password {
            return Err(ServiceError::new(
                code::INVALID,
                format!(
                    "a password has {} to {} bytes (got {})",
                    c.min_password,
                    c.max_password,
                    pw.len()
                ),
            ));
        }
        Ok(())
    }

    fn hash(&self, pw: &str) -> Result<String> {
        hash_password(pw, &self.inner.cfg.password_params)
            .map_err(|e| ServiceError::new(code::STORAGE, format!("password hashing: {e}")))
    }

    fn store(&self, id: u64, rec: &UserRec) -> Result<()> {
        let json =
            serde_json::to_vec(rec).map_err(|e| ServiceError::new(code::STORAGE, e.to_string()))?;
        self.inner
            .db
            .update(id, Kind::Json, &json)
            .map_err(ServiceError::storage)
    }

    /// Creates a user (the password is hashed with Argon2id; fsynced before
    /// this returns). Returns the new user id.
    pub fn create_user(&self, name: &str, password: &str, admin: bool) -> Result<u64> {
        let name = check_name(name, self.inner.cfg.max_name)?;
        self.check_password(password)?;
        let phc = self.hash(password)?;
        let rec = UserRec {
            name: name.clone(),
            aliases: Vec::new(),
            phc,
            disabled: false,
            admin,
            created_ms: now_ms(),
        };
        let json = serde_json::to_vec(&rec)
            .map_err(|e| ServiceError::new(code::STORAGE, e.to_string()))?;
        let mut users = lock(&self.inner.users);
        if users.names.contains_key(&name) {
            return Err(ServiceError::new(
                code::NAME_TAKEN,
                format!("{name:?} is taken"),
            ));
        }
        if users.recs.len() >= self.inner.cfg.max_users {
            return Err(ServiceError::new(
                code::QUEUE_FULL,
                format!(
                    "the server holds its maximum of {} users",
                    self.inner.cfg.max_users
                ),
            ));
        }
        let id = self
            .inner
            .db
            .insert(Kind::Json, &json)
            .map_err(ServiceError::storage)?;
        users.names.insert(name, id);
        users.recs.insert(id, rec);
        Ok(id)
    }

    /// Checks `name`/`password` for a login from `addr`, with throttling.
    /// Returns the user id. Does not touch the online table.
    pub fn authenticate(&self, name: &str, password: &str, addr: Option<IpAddr>) -> Result<u64> {
        let cfg = &self.inner.cfg;
        if name.len() > cfg.max_name || password.len() > cfg.max_password {
            return Err(ServiceError::new(
                code::INVALID,
                "name or password too long",
            ));
        }
        let uid = self.resolve(name);
        let now = Instant::now();
        {
            let mut t = lock(&self.inner.throttle);
            let tracked = t.users.len() + t.addrs.len();
            if let Some(a) = addr {
                if let Some(q) = t.addrs.get_mut(&a) {
                    if recent(q, cfg.window, now) >= cfg.addr_failures {
                        let s = retry_in(q, cfg.window, now);
                        return Err(ServiceError::new(
                            code::THROTTLED,
                            format!("too many failed logins from {a}: retry in {s} s"),
                        ));
                    }
                } else if tracked >= cfg.max_tracked {
                    prune(&mut t, cfg.window, now);
                    if t.users.len() + t.addrs.len() >= cfg.max_tracked {
                        return Err(ServiceError::new(
                            code::THROTTLED,
                            "too many failed logins on this server: retry later",
                        ));
                    }
                }
            }
            if let Some(q) = uid.and_then(|u| t.users.get_mut(&u)) {
                if recent(q, cfg.window, now) >= cfg.user_failures {
                    let s = retry_in(q, cfg.window, now);
                    return Err(ServiceError::new(
                        code::THROTTLED,
                        format!("too many failed logins for this user: retry in {s} s"),
                    ));
                }
            }
        }
        let (phc, disabled) = match uid {
            Some(u) => {
                let users = lock(&self.inner.users);
                match users.recs.get(&u) {
                    Some(r) => (r.phc.clone(), r.disabled),
                    None => (self.dummy_phc(), false),
                }
            }
            None => (self.dummy_phc(), false),
        };
        // Exact comparison: the bytes as typed, never case-folded.
        let ok = verify_password(password, &phc).unwrap_or(false) && uid.is_some();
        if !ok {
            let mut t = lock(&self.inner.throttle);
            if let Some(a) = addr {
                t.addrs.entry(a).or_default().push_back(now);
            }
            if let Some(u) = uid {
                t.users.entry(u).or_default().push_back(now);
            }
            return Err(ServiceError::new(
                code::BAD_CREDENTIALS,
                "wrong name or password",
            ));
        }
        let uid = uid.unwrap_or_default();
        if disabled {
            return Err(ServiceError::new(
                code::DISABLED,
                "this account is disabled",
            ));
        }
        lock(&self.inner.throttle).users.remove(&uid);
        Ok(uid)
    }

    /// Logs `peer` in as `name`: authentication, then the online table
    /// (kicking or refusing a session of the same user elsewhere). Returns the
    /// user id and whether an older session was kicked.
    pub fn login(&self, peer: &Peer, name: &str, password: &str) -> Result<(u64, bool)> {
        let uid = self.authenticate(name, password, peer.addr().map(|a| a.ip()))?;
        let mut s = lock(&self.inner.sessions);
        let mut kicked = None;
        if let Some(old) = s.by_user.get(&uid) {
            if old.id() != peer.id() && old.is_open() {
                match self.inner.cfg.second_login {
                    SecondLogin::Refuse => {
                        return Err(ServiceError::new(
                            code::ALREADY_ONLINE,
                            "this user is logged in on another connection",
                        ))
                    }
                    SecondLogin::Kick => kicked = Some(old.clone()),
                }
            }
        }
        // This connection may have been logged in as someone else.
        s.attached.remove(&peer.id());
        if let Some(prev) = s.by_peer.remove(&peer.id()) {
            if s.by_user.get(&prev).is_some_and(|p| p.id() == peer.id()) {
                s.by_user.remove(&prev);
            }
        }
        if let Some(old) = s.by_user.insert(uid, peer.clone()) {
            s.by_peer.remove(&old.id());
        }
        s.by_peer.insert(peer.id(), uid);
        drop(s);
        let was_kicked = kicked.is_some();
        if let Some(old) = kicked {
            tracing::info!(
                user = uid,
                old = old.id(),
                new = peer.id(),
                "second login: older session kicked"
            );
            let _ = old.send_signal("user.kicked", uid);
            old.close("kicked: the user logged in on another connection");
        }
        Ok((uid, was_kicked))
    }

    /// Logs `peer` out (nothing if it was not logged in).
    pub fn logout(&self, peer: &Peer) {
        let mut s = lock(&self.inner.sessions);
        s.attached.remove(&peer.id());
        if let Some(uid) = s.by_peer.remove(&peer.id()) {
            if s.by_user.get(&uid).is_some_and(|p| p.id() == peer.id()) {
                s.by_user.remove(&uid);
            }
        }
    }

    fn with_user<R>(
        &self,
        uid: u64,
        f: impl FnOnce(&mut Users, &mut UserRec) -> Result<R>,
    ) -> Result<R> {
        let mut users = lock(&self.inner.users);
        let mut rec = users
            .recs
            .get(&uid)
            .cloned()
            .ok_or_else(|| ServiceError::new(code::NO_SUCH_USER, "no such user"))?;
        let r = f(&mut users, &mut rec)?;
        self.store(uid, &rec)?;
        users.recs.insert(uid, rec);
        Ok(r)
    }

    /// Sets the password of `uid` (an admin reset, or after checking the old one).
    pub fn set_password(&self, uid: u64, password: &str) -> Result<()> {
        self.check_password(password)?;
        let phc = self.hash(password)?;
        self.with_user(uid, |_, r| {
            r.phc = phc;
            Ok(())
        })?;
        lock(&self.inner.throttle).users.remove(&uid);
        Ok(())
    }

    /// Disables (and logs out at once) or enables user `uid`.
    pub fn set_disabled(&self, uid: u64, disabled: bool) -> Result<()> {
        self.with_user(uid, |_, r| {
            r.disabled = disabled;
            Ok(())
        })?;
        if disabled {
            let peer = {
                let mut s = lock(&self.inner.sessions);
                let p = s.by_user.remove(&uid);
                if let Some(p) = &p {
                    s.by_peer.remove(&p.id());
                }
                p
            };
            if let Some(p) = peer {
                let _ = p.send_signal("user.kicked", uid);
                p.close("the account was disabled");
            }
        }
        Ok(())
    }

    /// Makes user `uid` an admin or not.
    pub fn set_admin(&self, uid: u64, admin: bool) -> Result<()> {
        self.with_user(uid, |_, r| {
            r.admin = admin;
            Ok(())
        })
    }

    /// Adds an alias (another identifier that logs in as `uid`).
    pub fn add_alias(&self, uid: u64, alias: &str) -> Result<()> {
        let alias = check_name(alias, self.inner.cfg.max_name)?;
        let max = self.inner.cfg.max_aliases;
        self.with_user(uid, |users, r| {
            if users.names.contains_key(&alias) {
                return Err(ServiceError::new(
                    code::NAME_TAKEN,
                    format!("{alias:?} is taken"),
                ));
            }
            if r.aliases.len() >= max {
                return Err(ServiceError::new(
                    code::INVALID,
                    format!("at most {max} aliases per user"),
                ));
            }
            r.aliases.push(alias.clone());
            Ok(())
        })?;
        lock(&self.inner.users).names.insert(alias, uid);
        Ok(())
    }

    /// Removes an alias of `uid`.
    pub fn remove_alias(&self, uid: u64, alias: &str) -> Result<()> {
        let alias = alias.to_ascii_lowercase();
        self.with_user(uid, |_, r| {
            let before = r.aliases.len();
            r.aliases.retain(|a| *a != alias);
            if r.aliases.len() == before {
                return Err(ServiceError::new(
                    code::NO_SUCH_USER,
                    format!("no alias {alias:?}"),
                ));
            }
            Ok(())
        })?;
        lock(&self.inner.users).names.remove(&alias);
        Ok(())
    }

    /// Users with id above `after`, at most `limit`, in id order.
    pub fn list(&self, after: u64, limit: usize) -> Vec<UserInfo> {
        let online: std::collections::HashSet<u64> =
            self.online_peers().into_iter().map(|(u, _)| u).collect();
        let users = lock(&self.inner.users);
        users
            .recs
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(id, r)| UserInfo {
                id: *id,
                name: r.name.clone(),
                aliases: r.aliases.clone(),
                disabled: r.disabled,
                admin: r.admin,
                online: online.contains(id),
            })
            .collect()
    }

    fn require_admin(&self, peer: &Peer) -> Result<u64> {
        let uid = self.require_user(peer)?;
        if !self.is_admin(uid) {
            return Err(ServiceError::new(code::FORBIDDEN, "an admin command"));
        }
        Ok(uid)
    }

    fn lookup(&self, name: &str) -> Result<u64> {
        self.resolve(name)
            .ok_or_else(|| ServiceError::new(code::NO_SUCH_USER, format!("no user {name:?}")))
    }

    /// Registers the `user.*` commands (docs/PROTOCOL.md Part 6) on
    /// `r`. They run on the HPC worker pool (password hashing and fsync block).
    pub fn register(&self, r: &mut Registry) {
        let a = self.clone();
        r.stream_hpc_svc("user.register", move |peer, df| {
            let mut rd = df.reader();
            let name = rd.read_str()?;
            let pw = rd.read_str()?;
            let admin_caller = a.user_of(peer).is_some_and(|u| a.is_admin(u));
            if !a.inner.cfg.open_registration && !admin_caller {
                return Err(ServiceError::new(
                    code::FORBIDDEN,
                    "registration is closed: ask an admin",
                ));
            }
            // Only attempts that get as far as hashing count.
            check_name(name, a.inner.cfg.max_name)?;
            a.check_password(pw)?;
            if !admin_caller {
                if let Some(ip) = peer.addr().map(|x| x.ip()) {
                    a.count_registration(ip)?;
                }
            }
            let id = a.create_user(name, pw, false)?;
            Ok(DataFrame::new().with(id))
        });
        let a = self.clone();
        r.stream_hpc_svc("user.login", move |peer, df| {
            let mut rd = df.reader();
            let name = rd.read_str()?;
            let pw = rd.read_str()?;
            let (uid, kicked) = a.login(peer, name, pw)?;
            let name = a.name_of(uid).unwrap_or_default();
            Ok(DataFrame::new()
                .with(uid)
                .with(name)
                .with(kicked)
                .with(a.is_admin(uid)))
        });
        let a = self.clone();
        r.stream_hpc_svc("user.ticket", move |peer, _| {
            Ok(DataFrame::new().with(a.ticket(peer)?.to_vec()))
        });
        let a = self.clone();
        r.stream_hpc_svc("user.attach", move |peer, df| {
            let mut rd = df.reader();
            let name = rd.read_str()?;
            let ticket = rd.read_slice()?;
            let uid = a.attach(peer, name, ticket)?;
            Ok(DataFrame::new().with(uid))
        });
        let a = self.clone();
        r.stream_hpc_svc("user.logout", move |peer, _| {
            a.logout(peer);
            Ok(DataFrame::new())
        });
        let a = self.clone();
        r.stream_hpc_svc("user.whoami", move |peer, _| {
            let uid = a.require_user(peer)?;
            Ok(DataFrame::new()
                .with(uid)
                .with(a.name_of(uid).unwrap_or_default())
                .with(a.is_admin(uid)))
        });
        let a = self.clone();
        r.stream_hpc_svc("user.passwd", move |peer, df| {
            let uid = a.require_user(peer)?;
            let mut rd = df.reader();
            let old = rd.read_str()?;
            let new = rd.read_str()?;
            let name = a.name_of(uid).unwrap_or_default();
            // The old password goes through the same throttled check as a login.
            a.authenticate(&name, old, peer.addr().map(|x| x.ip()))?;
            a.set_password(uid, new)?;
            Ok(DataFrame::new())
        });
        let a = self.clone();
        r.stream_hpc_svc("user.reset", move |peer, df| {
            a.require_admin(peer)?;
            let mut rd = df.reader();
            let uid = a.lookup(rd.read_str()?)?;
            a.set_password(uid, rd.read_str()?)?;
            Ok(DataFrame::new())
        });
        let a = self.clone();
        r.stream_hpc_svc("user.disable", move |peer, df| {
            let me = a.require_admin(peer)?;
            let mut rd = df.reader();
            let uid = a.lookup(rd.read_str()?)?;
            let disabled = rd.read_bool()?;
            if uid == me && disabled {
                return Err(ServiceError::new(
                    code::FORBIDDEN,
                    "an admin cannot disable itself",
                ));
            }
            a.set_disabled(uid, disabled)?;
            Ok(DataFrame::new())
        });
        let a = self.clone();
        r.stream_hpc_svc("user.alias", move |peer, df| {
            let uid = a.require_user(peer)?;
            let mut rd = df.reader();
            let add = rd.read_bool()?;
            let alias = rd.read_str()?;
            if add {
                a.add_alias(uid, alias)?;
            } else {
                a.remove_alias(uid, alias)?;
            }
            Ok(DataFrame::new())
        });
        let a = self.clone();
        r.stream_hpc_svc("user.online", move |peer, _| {
            a.require_user(peer)?;
            let names = a.online();
            let mut out = DataFrame::with_capacity(names.len() + 1);
            out.push(names.len() as u64);
            for n in names {
                out.push(n);
            }
            Ok(out)
        });
        let a = self.clone();
        r.stream_hpc_svc("user.list", move |peer, df| {
            a.require_admin(peer)?;
            let mut rd = df.reader();
            let after = rd.read_u64()?;
            let limit = (rd.read_u32()? as usize).min(1000);
            let list = a.list(after, limit);
            let mut out = DataFrame::with_capacity(list.len() * 6 + 1);
            out.push(list.len() as u64);
            for u in list {
                out.push(u.id);
                out.push(u.name);
                out.push(u.aliases.join(","));
                out.push(u.disabled);
                out.push(u.admin);
                out.push(u.online);
            }
            Ok(out)
        });
    }
}

fn prune(t: &mut Throttle, window: Duration, now: Instant) {
    t.users.retain(|_, q| recent(q, window, now) > 0);
    t.addrs.retain(|_, q| recent(q, window, now) > 0);
}

impl Accounts {
    /// Counts a registration attempt from `ip`, refusing it past
    /// [`AccountsConfig::registrations_per_addr`] in the window.
    fn count_registration(&self, ip: IpAddr) -> Result<()> {
        let cfg = &self.inner.cfg;
        let now = Instant::now();
        let mut t = lock(&self.inner.throttle);
        if !t.regs.contains_key(&ip) && t.regs.len() >= cfg.max_tracked {
            let w = cfg.registration_window;
            t.regs.retain(|_, q| recent(q, w, now) > 0);
            if t.regs.len() >= cfg.max_tracked {
                return Err(ServiceError::new(
                    code::THROTTLED,
                    "too many registrations on this server: retry later",
                ));
            }
        }
        let q = t.regs.entry(ip).or_default();
        if recent(q, cfg.registration_window, now) >= cfg.registrations_per_addr {
            let s = retry_in(q, cfg.registration_window, now);
            return Err(ServiceError::new(
                code::THROTTLED,
                format!("too many registrations from {ip}: retry in {s} s"),
            ));
        }
        q.push_back(now);
        Ok(())
    }
}
