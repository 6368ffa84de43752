//! The typed client: every `user.*` and `msg.*` command as a method over a
//! zs-core [`Client`], and [`Inbox`], which receives pushes.

use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zs_core::{Client, Registry};
use zs_wire::DataFrame;

use crate::accounts::{lock, UserInfo};
use crate::error::{code, Result, ServiceError};
use crate::messages::{push_kind, Message, Sent};

/// What a login answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    /// The user id.
    pub user: u64,
    /// The user's name (an alias logs in under the user's name).
    pub name: String,
    /// An older session of this user was kicked.
    pub kicked: bool,
    /// The user is an admin.
    pub admin: bool,
}

/// The services' commands over one connection. Cheap to clone.
#[derive(Clone)]
pub struct ServicesClient {
    client: Arc<Client>,
}

impl std::fmt::Debug for ServicesClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServicesClient")
    }
}

impl ServicesClient {
    /// Wraps a connected client (give it [`Inbox::register`]'s registry to
    /// receive pushes).
    pub fn new(client: Client) -> ServicesClient {
        ServicesClient {
            client: Arc::new(client),
        }
    }

    /// The underlying connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn call(&self, cmd: &str, df: DataFrame) -> Result<DataFrame> {
        Ok(self.client.call_stream(cmd, df).wait()?)
    }

    /// Creates an account (open registration, or as an admin). Returns its id.
    pub fn register(&self, name: &str, password: &str) -> Result<u64> {
        let df = self.call("user.register", DataFrame::new().with(name).with(password))?;
        Ok(df.reader().read_u64()?)
    }

    /// Logs this connection in (by name or alias).
    pub fn login(&self, name: &str, password: &str) -> Result<LoginInfo> {
        let df = self.call("user.login", DataFrame::new().with(name).with(password))?;
        let mut r = df.reader();
        Ok(LoginInfo {
            user: r.read_u64()?,
            name: r.read_str()?.to_owned(),
            kicked: r.read_bool()?,
            admin: r.read_bool()?,
        })
    }

    /// Logs this connection out.
    pub fn logout(&self) -> Result<()> {
        self.call("user.logout", DataFrame::new()).map(drop)
    }

    /// The user id and name this connection is logged in as.
    pub fn whoami(&self) -> Result<(u64, String)> {
        let df = self.call("user.whoami", DataFrame::new())?;
        let mut r = df.reader();
        Ok((r.read_u64()?, r.read_str()?.to_owned()))
    }

    /// Changes the logged-in user's password (the old one is checked).
    pub fn change_password(&self, old: &str, new: &str) -> Result<()> {
        self.call("user.passwd", DataFrame::new().with(old).with(new))
            .map(drop)
    }

    /// Admin: sets another user's password.
    pub fn reset_password(&self, name: &str, new: &str) -> Result<()> {
        self.call("user.reset", DataFrame::new().with(name).with(new))
            .map(drop)
    }

    /// Admin: disables (and logs out) or enables a user.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        self.call("user.disable", DataFrame::new().with(name).with(disabled))
            .map(drop)
    }

    /// Adds an alias to the logged-in user.
    pub fn add_alias(&self, alias: &str) -> Result<()> {
        self.call("user.alias", DataFrame::new().with(true).with(alias))
            .map(drop)
    }

    /// Removes an alias of the logged-in user.
    pub fn remove_alias(&self, alias: &str) -> Result<()> {
        self.call("user.alias", DataFrame::new().with(false).with(alias))
            .map(drop)
    }

    /// Names of the users online.
    pub fn online(&self) -> Result<Vec<String>> {
        let df = self.call("user.online", DataFrame::new())?;
        let mut r = df.reader();
        let n = r.read_u64()?;
        (0..n).map(|_| Ok(r.read_str()?.to_owned())).collect()
    }

    /// Admin: users with id above `after`, at most `limit` (≤ 1000).
    pub fn list_users(&self, after: u64, limit: u32) -> Result<Vec<UserInfo>> {
        let df = self.call("user.list", DataFrame::new().with(after).with(limit))?;
        let mut r = df.reader();
        let n = r.read_u64()?;
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(UserInfo {
                id: r.read_u64()?,
                name: r.read_str()?.to_owned(),
                aliases: r
                    .read_str()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                disabled: r.read_bool()?,
                admin: r.read_bool()?,
                online: r.read_bool()?,
            });
        }
        Ok(v)
    }

    /// Sends a message to `to` (name or alias) with a sender nonce (> 0 and
    /// growing per recipient: a resend with the same nonce after a lost
    /// answer is recognised as a duplicate; 0: no check). Answered once the
    /// message is on disk (fsynced).
    pub fn send(&self, to: &str, nonce: u64, body: &[u8]) -> Result<Sent> {
        let df = self.call(
            "msg.send",
            DataFrame::new().with(to).with(nonce).with(body.to_vec()),
        )?;
        let mut r = df.reader();
        Ok(Sent {
            id: r.read_u64()?,
            duplicate: r.read_bool()?,
        })
    }

    /// Queued messages with id above `after` (oldest first, at most `max`).
    pub fn fetch(&self, after: u64, max: u32) -> Result<Vec<Message>> {
        let df = self.call("msg.fetch", DataFrame::new().with(after).with(max))?;
        let mut r = df.reader();
        let n = r.read_u64()?;
        let mut v = Vec::new();
        for _ in 0..n {
            let f = r.read_dataframe()?;
            v.push(Message::read(&mut f.reader())?);
        }
        Ok(v)
    }

    /// Acknowledges messages by id (they leave the queue). Returns how many
    /// were removed.
    pub fn ack(&self, ids: &[u64]) -> Result<u64> {
        let mut df = DataFrame::with_capacity(ids.len() + 1);
        df.push(ids.len() as u64);
        for id in ids {
            df.push(*id);
        }
        Ok(self.call("msg.ack", df)?.reader().read_u64()?)
    }

    /// Asks for pushes (queued messages first): they arrive at the [`Inbox`]
    /// registered on this client. Returns the number queued.
    pub fn subscribe(&self) -> Result<u64> {
        Ok(self
            .call("msg.subscribe", DataFrame::new())?
            .reader()
            .read_u64()?)
    }

    /// Admin (by default): pushes `body` to every online user. Returns the count.
    pub fn broadcast(&self, body: &[u8]) -> Result<u64> {
        Ok(self
            .call("msg.broadcast", DataFrame::new().with(body.to_vec()))?
            .reader()
            .read_u64()?)
    }

    /// Joins a group (for this connection's lifetime).
    pub fn join(&self, group: &str) -> Result<()> {
        self.call("msg.group", DataFrame::new().with("join").with(group))
            .map(drop)
    }

    /// Leaves a group.
    pub fn leave(&self, group: &str) -> Result<()> {
        self.call("msg.group", DataFrame::new().with("leave").with(group))
            .map(drop)
    }

    /// Pushes `body` to a group's members (the caller must have joined).
    pub fn group_send(&self, group: &str, body: &[u8]) -> Result<u64> {
        let df = DataFrame::new()
            .with("send")
            .with(group)
            .with(body.to_vec());
        Ok(self.call("msg.group", df)?.reader().read_u64()?)
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.client.close()
    }
}

/// Receives pushes (`msg.push`): register it on the client's registry before
/// connecting. Queued (DIRECT) messages are handed over once each per inbox,
/// even if the server pushes them again after a reconnect; acknowledge them
/// with [`ServicesClient::ack`] when handled.
pub struct Inbox {
    rx: Receiver<Message>,
    kicked: Arc<Mutex<bool>>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbox")
    }
}

/// Most ids an inbox remembers to drop duplicates (oldest forgotten first).
const SEEN_MAX: usize = 1 << 20;

impl Inbox {
    /// Adds the `msg.push` handler (and the `user.kicked` signal) to `r`.
    pub fn register(r: &mut Registry) -> Inbox {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let seen = Mutex::new((
            HashSet::<u64>::new(),
            std::collections::VecDeque::<u64>::new(),
        ));
        r.direct_stream("msg.push", move |_peer, df| {
            let Ok(msg) = Message::read(&mut df.reader()) else {
                tracing::warn!("msg.push: malformed push ignored");
                return;
            };
            if msg.kind == push_kind::DIRECT {
                let mut g = lock(&seen);
                let (set, order) = &mut *g;
                if !set.insert(msg.id) {
                    return;
                }
                order.push_back(msg.id);
                if order.len() > SEEN_MAX {
                    if let Some(old) = order.pop_front() {
                        set.remove(&old);
                    }
                }
            }
            let _ = lock(&tx).send(msg);
        });
        let kicked = Arc::new(Mutex::new(false));
        let k = kicked.clone();
        r.signal("user.kicked", move |_, _| *lock(&k) = true);
        Inbox { rx, kicked }
    }

    /// The next push, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => ServiceError::new(code::CLIENT, "no message in time"),
            RecvTimeoutError::Disconnected => ServiceError::new(code::CLIENT, "the client is gone"),
        })
    }

    /// The next push if one is waiting.
    pub fn try_recv(&self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// The server said this session was kicked (another login, or disabled).
    pub fn was_kicked(&self) -> bool {
        *lock(&self.kicked)
    }
}
