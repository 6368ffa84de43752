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
use crate::files::{file_code, BlockSum, FileInfo, Space, UploadState};
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

    /// A ticket of this session for [`ServicesClient::attach`] (see
    /// [`crate::Accounts::ticket`]).
    pub fn ticket(&self) -> Result<Vec<u8>> {
        let df = self.call("user.ticket", DataFrame::new())?;
        Ok(df.reader().read_slice()?.to_vec())
    }

    /// Attaches this connection to the session of user `name` that issued
    /// `ticket`: it then acts as that user (files, reads) while the session
    /// lasts, without kicking it. Returns the user id.
    pub fn attach(&self, name: &str, ticket: &[u8]) -> Result<u64> {
        let df = self.call(
            "user.attach",
            DataFrame::new().with(name).with(ticket.to_vec()),
        )?;
        Ok(df.reader().read_u64()?)
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

    /// Lists a directory (`""`: the root) of a space; a file path lists that file.
    pub fn list_files(&self, space: Space, path: &str) -> Result<Vec<FileInfo>> {
        let df = self.call(
            "file.list",
            DataFrame::new().with(space.as_str()).with(path),
        )?;
        let mut r = df.reader();
        let n = r.read_u64()?;
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(FileInfo {
                name: r.read_str()?.to_owned(),
                dir: r.read_bool()?,
                size: r.read_u64()?,
                hash: r.read_str()?.to_owned(),
                mtime_ms: r.read_u64()?,
            });
        }
        Ok(v)
    }

    /// Creates a directory.
    pub fn mkdir(&self, space: Space, path: &str) -> Result<()> {
        self.call(
            "file.mkdir",
            DataFrame::new().with(space.as_str()).with(path),
        )
        .map(drop)
    }

    /// Renames or moves a file or directory within a space.
    pub fn rename(&self, space: Space, from: &str, to: &str) -> Result<()> {
        self.call(
            "file.rename",
            DataFrame::new().with(space.as_str()).with(from).with(to),
        )
        .map(drop)
    }

    /// Deletes a file or an empty directory.
    pub fn delete(&self, space: Space, path: &str) -> Result<()> {
        self.call(
            "file.delete",
            DataFrame::new().with(space.as_str()).with(path),
        )
        .map(drop)
    }

    /// Starts or resumes an upload (see [`crate::Files::begin`]).
    pub fn upload_begin(
        &self,
        space: Space,
        path: &str,
        size: u64,
        hash: &[u8; 32],
    ) -> Result<UploadState> {
        let df = self.call(
            "file.begin",
            DataFrame::new()
                .with(space.as_str())
                .with(path)
                .with(size)
                .with(hash.to_vec()),
        )?;
        let mut r = df.reader();
        Ok(UploadState {
            id: r.read_u64()?,
            offset: r.read_u64()?,
            instant: r.read_bool()?,
        })
    }

    /// `file.begin` with the SHA3-256 or without one (announced later):
    /// (upload id, offset, instant).
    fn begin_maybe_hashed(
        &self,
        space: Space,
        path: &str,
        size: u64,
        hash: Option<[u8; 32]>,
    ) -> Result<(u64, u64, bool)> {
        let df = self.call(
            "file.begin",
            DataFrame::new()
                .with(space.as_str())
                .with(path)
                .with(size)
                .with(hash.map_or(Vec::new(), |h| h.to_vec())),
        )?;
        let mut r = df.reader();
        Ok((r.read_u64()?, r.read_u64()?, r.read_bool()?))
    }

    /// Sends one chunk at `offset` (with its SHA3-256). Returns the new offset.
    pub fn upload_chunk(&self, id: u64, offset: u64, data: &[u8]) -> Result<u64> {
        let h = zs_hash::sha3_256(data);
        let df = self.call(
            "file.chunk",
            DataFrame::new()
                .with(id)
                .with(offset)
                .with(data.to_vec())
                .with(h.to_vec()),
        )?;
        Ok(df.reader().read_u64()?)
    }

    /// Sends bytes `offset..size` of upload `id` in chunks of `chunk` bytes
    /// (each with its CRC-32), keeping up to `window` chunks in flight;
    /// `read(at, buf)` fills `buf` with the bytes at `at`. `progress` gets
    /// (bytes the server acknowledged, size) after each answer. Returns the
    /// offset reached: everything below it is written on the server (durable
    /// after [`ServicesClient::upload_finish`], or as far as a later
    /// `file.begin` reports).
    #[allow(clippy::too_many_arguments)]
    pub fn upload_window(
        &self,
        id: u64,
        offset: u64,
        size: u64,
        chunk: usize,
        window: usize,
        read: impl FnMut(u64, &mut [u8]) -> Result<()>,
        progress: impl FnMut(u64, u64),
    ) -> Result<u64> {
        self.send_window(id, offset, size, chunk, window, read, progress, None)
            .map(|(acked, _)| acked)
    }

    /// [`ServicesClient::upload_window`] of an upload whose hash may be
    /// announced while it is sent: `late(wait)` says whether the server
    /// completed the file by reference (a late instant upload; with `wait`,
    /// after waiting for the announcement). Then no more chunks are sent, the
    /// ones in flight (answered [`file_code::NO_UPLOAD`]) are waited for, and
    /// the second value is `true`.
    #[allow(clippy::too_many_arguments)]
    fn send_window(
        &self,
        id: u64,
        offset: u64,
        size: u64,
        chunk: usize,
        window: usize,
        mut read: impl FnMut(u64, &mut [u8]) -> Result<()>,
        mut progress: impl FnMut(u64, u64),
        mut late: Option<&mut dyn FnMut(bool) -> bool>,
    ) -> Result<(u64, bool)> {
        let chunk = chunk.max(1) as u64;
        let mut inflight = std::collections::VecDeque::new();
        let (mut next, mut acked) = (offset, offset);
        let mut by_reference = false;
        let run = (|| -> Result<()> {
            loop {
                while !by_reference && inflight.len() < window.max(1) && next < size {
                    if let Some(l) = late.as_mut() {
                        if l(false) {
                            by_reference = true;
                            break;
                        }
                    }
                    let n = chunk.min(size - next) as usize;
                    let mut buf = vec![0u8; n];
                    read(next, &mut buf)?;
                    let crc = zs_hash::crc32(&buf).to_le_bytes().to_vec();
                    let df = DataFrame::new()
                        .with(id)
                        .with(next)
                        .with(bytes::Bytes::from(buf))
                        .with(crc);
                    inflight.push_back(self.client.call_stream("file.chunk", df));
                    next += n as u64;
                }
                let Some(f) = inflight.pop_front() else {
                    return Ok(());
                };
                match f.wait().map_err(ServiceError::from) {
                    Ok(df) => {
                        acked = df.reader().read_u64()?;
                        progress(acked, size);
                    }
                    // The upload is gone: completed by reference meanwhile?
                    Err(e) if by_reference => drop(e),
                    Err(e) if e.code == file_code::NO_UPLOAD => {
                        if !late.as_mut().is_some_and(|l| l(true)) {
                            return Err(e);
                        }
                        by_reference = true;
                    }
                    Err(e) => return Err(e),
                }
            }
        })();
        if run.is_err() {
            // Chunks already sent still land on the server: wait for their
            // answers, so that a retry on this connection asks where the
            // upload stands only after they did.
            for f in inflight.drain(..) {
                let _ = f.wait();
            }
        }
        run?;
        Ok((acked, by_reference))
    }

    /// Announces the SHA3-256 of upload `id` (begun without one) while it is
    /// sent (`file.hash`, see [`crate::Files::announce`]): `true` when the
    /// server completed the file by reference (stop sending).
    pub fn announce_hash(&self, id: u64, hash: &[u8; 32]) -> Result<bool> {
        Ok(self
            .call("file.hash", file_hash_request(id, hash))?
            .reader()
            .read_bool()?)
    }

    /// Uploads `size` bytes to `path`, read by `read(at, buf)` (which fills
    /// `buf` with the bytes at `at`; it is called from two threads). Nothing
    /// waits for a hash pass before the transfer:
    /// - a file that fits in one window of chunks (`chunk` ×
    ///   [`UPLOAD_WINDOW`]) is hashed first (a pass shorter than the
    ///   transfer's round trips) and announced at `file.begin`, so content
    ///   the server holds is an instant upload that sends nothing;
    /// - a larger one is sent at once while another thread reads and hashes
    ///   it on its own (at SHA3 speed, ahead of the sender) and announces the
    ///   hash with `file.hash` as soon as it is known: when the server holds
    ///   that content the file is completed by reference and the sending
    ///   stops (a late instant upload: `instant`, after `sent` bytes);
    ///   otherwise `file.finish` checks it against the server's own running
    ///   hash.
    ///
    /// The caller's unfinished upload of the same path and size is resumed
    /// (only the bytes past where the server stands are sent); when the bytes
    /// it holds turn out to be another content's (the hash differs), that
    /// upload is aborted and sent again from the start, once. `progress`
    /// gets (bytes the server holds, size).
    #[allow(clippy::too_many_arguments)]
    pub fn upload_hashing(
        &self,
        space: Space,
        path: &str,
        size: u64,
        chunk: usize,
        read: impl Fn(u64, &mut [u8]) -> Result<()> + Sync,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<UploadReport> {
        let chunk = chunk.max(1);
        let small = size <= (chunk as u64).saturating_mul(UPLOAD_WINDOW as u64);
        let hash = if small {
            Some(hash_source(&read, size, chunk, None)?)
        } else {
            None
        };
        match self.upload_once(space, path, size, chunk, hash, &read, &mut progress) {
            Err((e, Some(id))) if e.code == file_code::HASH_MISMATCH => {
                tracing::info!(
                    path,
                    "upload: the bytes held were another content's; sending again"
                );
                self.upload_abort(id)?;
                self.upload_once(space, path, size, chunk, hash, &read, &mut progress)
                    .map_err(|(e, _)| e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// One try of [`ServicesClient::upload_hashing`]; an error carries the
    /// upload id when the upload was a resumed one whose held bytes may be
    /// another content's.
    #[allow(clippy::too_many_arguments)]
    fn upload_once(
        &self,
        space: Space,
        path: &str,
        size: u64,
        chunk: usize,
        hash: Option<[u8; 32]>,
        read: &(impl Fn(u64, &mut [u8]) -> Result<()> + Sync),
        progress: &mut impl FnMut(u64, u64),
    ) -> std::result::Result<UploadReport, (ServiceError, Option<u64>)> {
        let (id, offset, instant) = self
            .begin_maybe_hashed(space, path, size, hash)
            .map_err(|e| (e, None))?;
        let resumed = (offset > 0).then_some(id);
        let mut report = UploadReport {
            instant,
            resumed_from: offset,
            sent: 0,
        };
        if instant {
            progress(size, size);
            return Ok(report);
        }
        progress(offset, size);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let res = std::thread::scope(|sc| -> Result<bool> {
            // The hash: known already, or read and announced on a thread of
            // its own while the chunks go.
            let hasher = match hash {
                Some(_) => None,
                None => Some(
                    std::thread::Builder::new()
                        .name("zs-upload-hash".into())
                        .spawn_scoped(sc, || -> Result<([u8; 32], bool)> {
                            let h = hash_source(read, size, chunk, Some(&stop))?;
                            Ok((h, self.announce_hash(id, &h)?))
                        })
                        .map_err(|e| {
                            ServiceError::new(code::CLIENT, format!("no hashing thread: {e}"))
                        })?,
                ),
            };
            let mut handle = hasher;
            let mut outcome: Option<Result<([u8; 32], bool)>> = hash.map(|h| Ok((h, false)));
            let mut settle = |wait: bool| -> bool {
                if outcome.is_none() && handle.as_ref().is_some_and(|h| wait || h.is_finished()) {
                    outcome = handle.take().map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(ServiceError::new(
                                code::CLIENT,
                                "the hashing thread panicked",
                            ))
                        })
                    });
                }
                matches!(outcome, Some(Ok((_, true))))
            };
            let sent = std::cell::Cell::new(0u64);
            let sending = self.send_window(
                id,
                offset,
                size,
                chunk,
                UPLOAD_WINDOW,
                |at, buf| {
                    sent.set(sent.get() + buf.len() as u64);
                    read(at, buf)
                },
                &mut *progress,
                Some(&mut settle),
            );
            report.sent = sent.get();
            let (end, by_reference) = match sending {
                Ok(x) => x,
                Err(e) => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
            };
            if by_reference || settle(true) {
                return Ok(true);
            }
            let (hash, _) = outcome.take().expect("settled")?;
            if end != size {
                return Err(ServiceError::new(
                    code::CLIENT,
                    "the server holds fewer bytes",
                ));
            }
            self.call("file.finish", DataFrame::new().with(id).with(hash.to_vec()))?;
            Ok(false)
        });
        match res {
            Ok(instant) => {
                report.instant = instant;
                progress(size, size);
                Ok(report)
            }
            Err(e) => Err((e, resumed)),
        }
    }

    /// Completes an upload (the server checks the whole SHA3-256).
    pub fn upload_finish(&self, id: u64) -> Result<()> {
        self.call("file.finish", DataFrame::new().with(id))
            .map(drop)
    }

    /// Joins unfinished uploads `parts` (each holding all its bytes) into
    /// file `path` whose SHA3-256 is `hash` (tus concatenation; see
    /// [`crate::Files::concat`]).
    pub fn upload_concat(
        &self,
        space: Space,
        path: &str,
        hash: &[u8; 32],
        parts: &[u64],
    ) -> Result<()> {
        let mut df = DataFrame::new()
            .with(space.as_str())
            .with(path)
            .with(hash.to_vec())
            .with(parts.len() as u64);
        for id in parts {
            df.push(*id);
        }
        self.call("file.concat", df).map(drop)
    }

    /// Terminates an upload.
    pub fn upload_abort(&self, id: u64) -> Result<()> {
        self.call("file.abort", DataFrame::new().with(id)).map(drop)
    }

    /// Uploads local file `local` to `path` ([`ServicesClient::upload_hashing`]
    /// over positioned reads of the file): resumes an unfinished upload of
    /// it, completes instantly (or, for a file larger than one window, as
    /// soon as its hash is known) when the server holds the content.
    /// `progress` gets (bytes the server holds, total) after each chunk.
    /// Returns what happened.
    pub fn upload_file(
        &self,
        space: Space,
        local: &std::path::Path,
        path: &str,
        chunk: usize,
        progress: impl FnMut(u64, u64),
    ) -> Result<UploadReport> {
        let io = |e: std::io::Error| {
            ServiceError::new(code::CLIENT, format!("{}: {e}", local.display()))
        };
        let f = std::fs::File::open(local).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        self.upload_hashing(
            space,
            path,
            size,
            chunk,
            |at, buf| read_exact_at(&f, buf, at).map_err(io),
            progress,
        )
    }

    /// The block signatures of a file with SHA3-256/16 block sums (see
    /// [`crate::Files::signature`]).
    pub fn signature(&self, space: Space, path: &str, block: u32) -> Result<Vec<(u32, [u8; 16])>> {
        let (sig, sum) = self.signature_with(space, path, block, BlockSum::Sha3)?;
        if sum != BlockSum::Sha3 {
            return Err(ServiceError::new(
                code::CLIENT,
                "the server sent other block sums",
            ));
        }
        Ok(sig)
    }

    /// The block signatures of a file with `sum` as the strong sum per block
    /// (version 2 of `file.signature`); also which sum the server used (a
    /// server of version 1 answers SHA3-256/16 whatever was asked).
    pub fn signature_with(
        &self,
        space: Space,
        path: &str,
        block: u32,
        sum: BlockSum,
    ) -> Result<(BlockList, BlockSum)> {
        let df = self.call(
            "file.signature",
            file_signature_request(space, path, block, sum),
        )?;
        parse_signature_answer(&df)
    }

    /// Appends a range of an existing file to an upload, server side.
    #[allow(clippy::too_many_arguments)]
    pub fn upload_copy(
        &self,
        id: u64,
        offset: u64,
        base_space: Space,
        base_path: &str,
        base_offset: u64,
        len: u64,
    ) -> Result<u64> {
        let df = DataFrame::new()
            .with(id)
            .with(offset)
            .with(base_space.as_str())
            .with(base_path)
            .with(base_offset)
            .with(len);
        Ok(self.call("file.copy", df)?.reader().read_u64()?)
    }

    /// Delta upload (rsync's algorithm) of `data`: a thin wrapper over
    /// [`ServicesClient::upload_delta_from`] reading the slice.
    pub fn upload_delta(
        &self,
        space: Space,
        data: &[u8],
        path: &str,
        base_space: Space,
        base_path: &str,
        block: u32,
    ) -> Result<DeltaReport> {
        self.upload_delta_from(
            space,
            &mut std::io::Cursor::new(data),
            data.len() as u64,
            path,
            base_space,
            base_path,
            block,
        )
    }

    /// Delta upload (rsync's algorithm): uploads the `len` bytes `src` reads
    /// from its current position to `path`, sending only the bytes not
    /// found, block by block at any offset, in the server's copy of
    /// `base_path` (fetched as block signatures); the rest is copied on the
    /// server. The whole SHA3-256 is checked as for any upload, and an
    /// interrupted delta upload resumes like any other.
    ///
    /// `src` is read once, front to back, in bounded memory whatever `len`
    /// (a file of 10 GiB like one of 10 MiB): the scan holds a window of the
    /// block being matched plus the literal run not yet sent (sent in pieces
    /// of [`DELTA_LITERAL_PIECE`] as soon as one is complete) and a read
    /// ahead of [`DELTA_READ`]; a hashing thread gets each piece read through
    /// a queue of two. At most about `block + 4 × DELTA_READ` bytes of the
    /// file are held at once (see [`delta_memory_bound`]); a file of at most
    /// [`DELTA_HASH_FIRST`] bytes is read and hashed whole before
    /// `file.begin`, so content the server holds is an instant upload. It is
    /// sought back to where it started (`Seek`) for the one retry below.
    ///
    /// `block` is the block size asked for; a base file of more than
    /// [`crate::files::MAX_SIGNATURE_BLOCKS`] such blocks is matched in the
    /// smallest doubling of it that fits (a 256 MiB base in 4 KiB blocks: 8
    /// KiB), reported in [`DeltaReport::block`]. The signature call's
    /// timeout scales with the base's size ([`signature_timeout`]), not the
    /// connection's fixed call timeout.
    ///
    /// Blocks are matched by XXH3-128 ([`BlockSum::Xxh3`]); a larger file's
    /// upload begins without a hash and its SHA3-256 is announced by
    /// `file.finish`, which checks it against the bytes the server
    /// assembled. Each copy or literal range is sent as soon as the scan has
    /// it (copies coalesced up to [`DELTA_COPY_RUN`] bytes), one request in
    /// flight, so the server copies and hashes while the client scans on.
    /// When `file.finish` finds another hash (a block-sum collision, or a
    /// resumed upload holding other bytes) the upload is aborted and done
    /// again from the start with SHA3-256 block sums, once.
    #[allow(clippy::too_many_arguments)]
    pub fn upload_delta_from<R: std::io::Read + std::io::Seek>(
        &self,
        space: Space,
        src: &mut R,
        len: u64,
        path: &str,
        base_space: Space,
        base_path: &str,
        block: u32,
    ) -> Result<DeltaReport> {
        let io =
            |e: std::io::Error| ServiceError::new(code::CLIENT, format!("reading {path}: {e}"));
        let start = src.stream_position().map_err(io)?;
        let job = DeltaJob {
            space,
            path,
            base_space,
            base_path,
            block,
        };
        match self.delta_once(&job, &mut *src, len, BlockSum::Xxh3) {
            Err((e, Some(id))) if e.code == file_code::HASH_MISMATCH => {
                tracing::info!(
                    path,
                    "delta upload: whole hash differs; again with SHA3 block sums"
                );
                self.upload_abort(id)?;
                src.seek(std::io::SeekFrom::Start(start)).map_err(io)?;
                self.delta_once(&job, src, len, BlockSum::Sha3)
                    .map_err(|(e, _)| e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// The signature of `base_path` for a delta upload, in blocks of at
    /// least `block` bytes: the server refuses a signature of more than
    /// [`crate::files::MAX_SIGNATURE_BLOCKS`] blocks (`TOO_LARGE`, before it
    /// reads the file), and the block is doubled until the base fits (up to
    /// 1 MiB, the largest block). Each try waits [`signature_timeout`] of
    /// the base's size (asked first with a `file.read` of 0 bytes). Returns
    /// the list, the block sum the server used and the block size.
    fn delta_signature(
        &self,
        base_space: Space,
        base_path: &str,
        block: u32,
        sum: BlockSum,
    ) -> Result<(BlockList, BlockSum, u32)> {
        let (_, base_len, _) = self.read_range(base_space, base_path, 0, 0)?;
        let limit = signature_timeout(base_len);
        let mut block = block;
        loop {
            let (tx, rx) = mpsc::sync_channel(1);
            let call = zs_core::Call::Stream {
                cmd: zs_wire::Text::from("file.signature"),
                data: file_signature_request(base_space, base_path, block, sum),
            };
            self.client.call_with(call, Some(limit), move |r| {
                let _ = tx.send(r);
            });
            // Every call completes (answer, error, its timeout or the
            // connection's end), so this receive ends.
            let answer = rx
                .recv()
                .map_err(|_| ServiceError::new(code::CLIENT, "the signature call was dropped"))?;
            let got = answer.map_err(ServiceError::from).and_then(|r| match r {
                zs_core::Reply::Data(df) => parse_signature_answer(&df),
                zs_core::Reply::Text(_) => Err(ServiceError::new(
                    code::CLIENT,
                    "file.signature answered text",
                )),
            });
            match got {
                Ok((sig, used)) => return Ok((sig, used, block)),
                Err(e) if e.code == zs_core::code::TOO_LARGE && block < MAX_BLOCK => {
                    block = block.saturating_mul(2).min(MAX_BLOCK);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try of [`ServicesClient::upload_delta_from`] with block sum
    /// `sum`; an error after `file.begin` carries the upload id.
    fn delta_once<R: std::io::Read>(
        &self,
        job: &DeltaJob<'_>,
        src: &mut R,
        len: u64,
        sum: BlockSum,
    ) -> std::result::Result<DeltaReport, (ServiceError, Option<u64>)> {
        let DeltaJob {
            space,
            path,
            base_space,
            base_path,
            block,
        } = *job;
        let (sig, sum, block) = self
            .delta_signature(base_space, base_path, block, sum)
            .map_err(|e| (e, None))?;
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(2);
            let hasher = std::thread::Builder::new()
                .name("zs-delta-hash".into())
                .spawn_scoped(s, move || {
                    let mut h = zs_hash::Sha3_256::new();
                    for piece in rx {
                        h.update(&piece);
                    }
                    h.finalize()
                })
                .map_err(|e| {
                    let e = ServiceError::new(code::CLIENT, format!("no hashing thread: {e}"));
                    (e, None)
                })?;
            let joined = |h: std::thread::ScopedJoinHandle<'_, [u8; 32]>| {
                h.join()
                    .map_err(|_| ServiceError::new(code::CLIENT, "the hashing thread panicked"))
            };
            let cap = if len <= DELTA_HASH_FIRST {
                len
            } else {
                delta_window(block)
            };
            let mut w = DeltaWindow {
                src,
                len,
                start: 0,
                buf: Vec::with_capacity(cap as usize),
                hash: Some(tx),
            };
            // A small file is read and hashed whole first: announced at
            // `file.begin`, so content the server holds is an instant
            // upload. Else announced at `file.finish`.
            // Ok: the hash; Err: the thread computing it as the scan reads.
            let hashing = if len <= DELTA_HASH_FIRST {
                w.fill_to(len).map_err(|e| (e, None))?;
                w.hash = None;
                Ok(joined(hasher).map_err(|e| (e, None))?)
            } else {
                Err(hasher)
            };
            let early = hashing.as_ref().ok().copied();
            let (id, offset, instant) = self
                .begin_maybe_hashed(space, path, len, early)
                .map_err(|e| (e, None))?;
            if instant {
                return Ok(DeltaReport {
                    instant,
                    literal: 0,
                    copied: 0,
                    block,
                });
            }
            let rep = self
                .delta_send(id, offset, &mut w, base_space, base_path, block, &sig, sum)
                .map_err(|e| (e, Some(id)))?;
            let hash = match hashing {
                Ok(h) => h,
                Err(pending) => {
                    w.fill_to(len).map_err(|e| (e, Some(id)))?;
                    w.hash = None;
                    joined(pending).map_err(|e| (e, Some(id)))?
                }
            };
            self.call("file.finish", DataFrame::new().with(id).with(hash.to_vec()))
                .map_err(|e| (e, Some(id)))?;
            Ok(rep)
        })
    }

    /// The scan of a delta upload: sends the file `w` reads from `offset`
    /// on to upload `id` as `file.copy` of the blocks found in `sig` and
    /// `file.chunk` of the rest, dropping each byte from the window once it
    /// is sent or copied.
    #[allow(clippy::too_many_arguments)]
    fn delta_send<R: std::io::Read>(
        &self,
        id: u64,
        offset: u64,
        w: &mut DeltaWindow<'_, R>,
        base_space: Space,
        base_path: &str,
        block: u32,
        sig: &[(u32, [u8; 16])],
        sum: BlockSum,
    ) -> Result<DeltaReport> {
        let mut rep = DeltaReport {
            instant: false,
            literal: 0,
            copied: 0,
            block,
        };
        let mut ops = DeltaOps {
            client: self,
            id,
            at: offset,
            inflight: None,
        };
        // Bytes before `offset` are on the server already: read (hashed)
        // and dropped.
        while w.read() < offset {
            w.fill_to(offset.min(w.read() + DELTA_READ as u64))?;
            w.discard_before(w.read().min(offset));
        }
        let end = w.len;
        let mut pos = offset; // scan position in the file
        let mut lit = pos; // start of pending literal bytes
        let mut pending: Option<(u64, u64)> = None; // coalesced copy (base offset, len)
        let flush_copy = |p: &mut Option<(u64, u64)>,
                          ops: &mut DeltaOps<'_>,
                          rep: &mut DeltaReport|
         -> Result<()> {
            if let Some((bo, len)) = p.take() {
                let df = DataFrame::new()
                    .with(ops.id)
                    .with(ops.at)
                    .with(base_space.as_str())
                    .with(base_path)
                    .with(bo)
                    .with(len);
                ops.send("file.copy", df, len)?;
                rep.copied += len;
            }
            Ok(())
        };
        let bl = block as u64;
        let found = crate::files::DeltaIndex::new(sig, sum);
        let first = |w: &mut DeltaWindow<'_, R>, pos: u64| -> Result<Option<u32>> {
            if end < pos + bl {
                return Ok(None);
            }
            w.fill_to(pos + bl)?;
            Ok(Some(crate::files::rolling(w.slice(pos, pos + bl))))
        };
        let mut sum = first(w, pos)?;
        while let Some(s) = sum {
            match found.find(s, w.slice(pos, pos + bl)) {
                Some(j) => {
                    if lit < pos {
                        flush_copy(&mut pending, &mut ops, &mut rep)?;
                        flush_lit(w.slice(lit, pos), &mut ops, &mut rep)?;
                    }
                    let bo = j as u64 * bl;
                    pending = match pending {
                        Some((po, pl)) if po + pl == bo && pl < DELTA_COPY_RUN => {
                            Some((po, pl + bl))
                        }
                        other => {
                            let mut o = other;
                            flush_copy(&mut o, &mut ops, &mut rep)?;
                            Some((bo, bl))
                        }
                    };
                    pos += bl;
                    lit = pos;
                    w.discard_before(lit);
                    sum = first(w, pos)?;
                }
                None => {
                    if end > pos + bl {
                        w.fill_to(pos + bl + 1)?;
                        sum = Some(crate::files::roll(
                            s,
                            block as usize,
                            w.byte(pos),
                            w.byte(pos + bl),
                        ));
                        pos += 1;
                        // A whole piece of literal bytes: sent now (the
                        // pieces a later flush would send), so the window
                        // never holds more than one.
                        if pos - lit >= DELTA_LITERAL_PIECE as u64 {
                            flush_copy(&mut pending, &mut ops, &mut rep)?;
                            let to = lit + DELTA_LITERAL_PIECE as u64;
                            flush_lit(w.slice(lit, to), &mut ops, &mut rep)?;
                            lit = to;
                            w.discard_before(lit);
                        }
                    } else {
                        sum = None;
                    }
                }
            }
        }
        flush_copy(&mut pending, &mut ops, &mut rep)?;
        w.fill_to(end)?;
        flush_lit(w.slice(lit, end), &mut ops, &mut rep)?;
        w.discard_before(end);
        ops.wait()?;
        Ok(rep)
    }

    /// Reads up to `len` bytes at `offset` of a file: (bytes, file size, hash hex).
    pub fn read_range(
        &self,
        space: Space,
        path: &str,
        offset: u64,
        len: u32,
    ) -> Result<(Vec<u8>, u64, String)> {
        let df = self.call("file.read", file_read_request(space, path, offset, len))?;
        let mut r = df.reader();
        let (size, hash) = (r.read_u64()?, r.read_str()?.to_owned());
        Ok((r.read_slice()?.to_vec(), size, hash))
    }

    /// Reads bytes `from..to` of `path` in ranges of `chunk` bytes with
    /// [`DOWNLOAD_WINDOW`] reads in flight, handing each to `sink(offset,
    /// bytes)` in order. With `expect` = (size, SHA3-256 hex), a file that
    /// changes under the reads is an error.
    #[allow(clippy::too_many_arguments)]
    pub fn read_window(
        &self,
        space: Space,
        path: &str,
        from: u64,
        to: u64,
        chunk: u32,
        expect: Option<(u64, &str)>,
        mut sink: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let chunk = chunk.max(1) as u64;
        let (mut at, mut next) = (from, from);
        let mut inflight = std::collections::VecDeque::new();
        while at < to {
            while inflight.len() < DOWNLOAD_WINDOW && next < to {
                let n = (to - next).min(chunk);
                let df = file_read_request(space, path, next, n as u32);
                inflight.push_back((next, n, self.client.call_stream("file.read", df)));
                next += n;
            }
            let (off, n, call) = inflight.pop_front().expect("a read in flight");
            let df = call.wait()?;
            let mut r = df.reader();
            let (total, h) = (r.read_u64()?, r.read_str()?);
            let data = r.read_slice()?;
            if expect.is_some_and(|(size, hash)| total != size || h != hash) {
                return Err(ServiceError::new(
                    code::CLIENT,
                    "the file changed during the download",
                ));
            }
            if data.len() as u64 != n {
                return Err(ServiceError::new(
                    code::CLIENT,
                    "the server sent a short range",
                ));
            }
            sink(off, data)?;
            at = off + n;
        }
        Ok(())
    }

    /// Downloads `path` to local file `local` on this connection, resuming
    /// from `<local>.part`; the SHA3-256 is checked before the file takes
    /// its name. Returns the bytes fetched. The same as
    /// [`ServicesClient::download_parallel`] with no other connection.
    pub fn download_file(
        &self,
        space: Space,
        path: &str,
        local: &std::path::Path,
        chunk: u32,
        progress: impl FnMut(u64, u64),
    ) -> Result<u64> {
        self.download_parallel(&[], space, path, local, chunk, progress)
    }

    /// Downloads `path` to `local` over this connection and the `more`
    /// connections (each logged in or attached as the same user:
    /// [`ServicesClient::attach`]), each fetching its own share of the file
    /// with [`DOWNLOAD_WINDOW`] ranged reads of `chunk` bytes in flight, into
    /// `<local>.part`; `<local>.part.state` records how far each share got,
    /// so running it again (with any number of connections) resumes. The
    /// file's SHA3-256 is checked before it takes its name (a mismatch
    /// removes the partial file). `progress` gets (bytes held, size).
    /// Returns the bytes fetched by this call.
    pub fn download_parallel(
        &self,
        more: &[ServicesClient],
        space: Space,
        path: &str,
        local: &std::path::Path,
        chunk: u32,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64> {
        let io = |e: std::io::Error| {
            ServiceError::new(code::CLIENT, format!("{}: {e}", local.display()))
        };
        let chunk = chunk.max(1);
        let with_ext = |ext: &str| {
            let mut p = local.as_os_str().to_owned();
            p.push(ext);
            std::path::PathBuf::from(p)
        };
        let (part, state_path) = (with_ext(".part"), with_ext(".part.state"));
        let (_, size, hash) = self.read_range(space, path, 0, 0)?;
        // Where a previous run stopped: its state file, or (none) a partial
        // file written front to back.
        let mut ranges = std::fs::read_to_string(&state_path)
            .ok()
            .and_then(|t| parse_state(&t, size, &hash))
            .unwrap_or_else(|| {
                let held = std::fs::metadata(&part).map_or(0, |m| m.len().min(size));
                vec![(held, size)]
            });
        // Reshare what is left among the connections (each share a whole
        // number of chunks).
        let conns: Vec<&ServicesClient> = std::iter::once(self).chain(more).collect();
        {
            let mut left: Vec<(u64, u64)> = ranges.drain(..).filter(|(a, b)| a < b).collect();
            left.sort_unstable();
            let total: u64 = left.iter().map(|(a, b)| b - a).sum();
            let share = total.div_ceil(conns.len() as u64).div_ceil(chunk as u64) * chunk as u64;
            for (a, b) in left {
                let mut at = a;
                while at < b {
                    let end = b.min(at + share.max(1));
                    ranges.push((at, end));
                    at = end;
                }
            }
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&part)
            .map_err(io)?;
        let state = std::sync::Mutex::new(ranges.clone());
        write_state(&state_path, size, &hash, &ranges).map_err(io)?;
        if f.metadata().map_err(io)?.len() != size {
            f.set_len(size).map_err(io)?;
        }
        let held = |rs: &[(u64, u64)]| size - rs.iter().map(|(a, b)| b - a).sum::<u64>();
        progress(held(&ranges), size);
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        // Pieces dealt round-robin to the connections.
        let mut work: Vec<Vec<usize>> = vec![Vec::new(); conns.len()];
        for i in 0..ranges.len() {
            work[i % conns.len()].push(i);
        }
        let fetched = std::sync::atomic::AtomicU64::new(0);
        let res: Vec<Result<()>> = std::thread::scope(|sc| {
            let hs: Vec<_> = conns
                .iter()
                .zip(work)
                .map(|(c, pieces)| {
                    let (tx, f, state, fetched) = (tx.clone(), &f, &state, &fetched);
                    let (state_path, hash) = (&state_path, &hash);
                    sc.spawn(move || -> Result<()> {
                        for i in pieces {
                            let (at, end) = lock_state(state)[i];
                            c.read_window(
                                space,
                                path,
                                at,
                                end,
                                chunk,
                                Some((size, hash)),
                                |off, data| {
                                    write_all_at(f, data, off).map_err(io)?;
                                    fetched.fetch_add(
                                        data.len() as u64,
                                        std::sync::atomic::Ordering::Relaxed,
                                    );
                                    let mut st = lock_state(state);
                                    st[i].0 = off + data.len() as u64;
                                    // The state follows the bytes (a torn or
                                    // early one only costs a re-download: the
                                    // hash is checked at the end).
                                    write_state(state_path, size, hash, &st).map_err(io)?;
                                    let _ = tx.send(held(&st));
                                    Ok(())
                                },
                            )?;
                        }
                        Ok(())
                    })
                })
                .collect();
            drop(tx);
            for h in rx {
                progress(h, size);
            }
            hs.into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ServiceError::new(
                            code::CLIENT,
                            "a download thread panicked",
                        ))
                    })
                })
                .collect()
        });
        res.into_iter().collect::<Result<Vec<()>>>()?;
        f.sync_all().map_err(io)?;
        drop(f);
        let (len, got) = hash_local(&part).map_err(io)?;
        let got: String = got.iter().map(|b| format!("{b:02x}")).collect();
        if len != size || got != hash {
            let _ = std::fs::remove_file(&part);
            let _ = std::fs::remove_file(&state_path);
            return Err(ServiceError::new(
                code::CLIENT,
                "the downloaded bytes do not match the file's SHA3-256 (partial file removed)",
            ));
        }
        std::fs::rename(&part, local).map_err(io)?;
        let _ = std::fs::remove_file(&state_path);
        progress(size, size);
        Ok(fetched.into_inner())
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.client.close()
    }
}

/// A `file.read` request (version 2) for up to `len` bytes at `offset`,
/// asking for answer form 1: file size `u64`, SHA3-256 hex `str`, then the
/// data `bytes` last, which the server sends apart from the frame head
/// without copying it into the frame (docs/PROTOCOL.md §6.4).
pub fn file_read_request(space: Space, path: &str, offset: u64, len: u32) -> DataFrame {
    DataFrame::new()
        .with(space.as_str())
        .with(path)
        .with(offset)
        .with(len)
        .with(1u8)
}

/// The read size downloads should use (1 MiB − 4 KiB): the largest whose
/// answer frame (the range plus a head of about 100 bytes) stays within the
/// 1 MiB that zs-core reserves whole once a frame's header arrived and that
/// the security layer lets a connection hold unconsumed, so the answer is
/// completed where it lies. A full 1 MiB read makes a frame just above that
/// bound, which grows in 64 KiB steps and is copied as it grows (callgrind of
/// `cargo xtask bench files --quick`'s download: 0.9 copies per byte more),
/// and smaller reads cost a round of thread hand-offs each (256 KiB reads
/// downloaded at about half the rate in the same runs; ARCHITECTURE
/// "zs-services: Session 13 (dl)").
pub const READ_CHUNK: u32 = (1 << 20) - (4 << 10);

/// Ranged reads each connection of [`ServicesClient::download_parallel`]
/// keeps in flight.
pub const DOWNLOAD_WINDOW: usize = 4;

fn lock_state(m: &std::sync::Mutex<Vec<(u64, u64)>>) -> std::sync::MutexGuard<'_, Vec<(u64, u64)>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The state file of a parallel download: `zs-download <size> <hash>`, then
/// one `<next> <end>` line per share (bytes `next..end` still to fetch).
fn write_state(
    path: &std::path::Path,
    size: u64,
    hash: &str,
    ranges: &[(u64, u64)],
) -> std::io::Result<()> {
    let mut t = format!("zs-download {size} {hash}\n");
    for (a, b) in ranges {
        t.push_str(&format!("{a} {b}\n"));
    }
    std::fs::write(path, t)
}

fn parse_state(t: &str, size: u64, hash: &str) -> Option<Vec<(u64, u64)>> {
    let mut lines = t.lines();
    if lines.next()? != format!("zs-download {size} {hash}") {
        return None;
    }
    let mut out = Vec::new();
    for l in lines {
        let (a, b) = l.split_once(' ')?;
        let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
        if a > b || b > size || out.len() >= 4096 {
            return None;
        }
        out.push((a, b));
    }
    Some(out)
}

/// Chunks [`ServicesClient::upload_file`] keeps in flight.
pub const UPLOAD_WINDOW: usize = 8;

/// What [`ServicesClient::upload_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadReport {
    /// The server had the content: the file was completed by reference
    /// (before anything was sent, or, for a late instant upload, once the
    /// hash was known: after `sent` bytes).
    pub instant: bool,
    /// The upload continued from this offset.
    pub resumed_from: u64,
    /// Bytes sent by this call.
    pub sent: u64,
}

/// What a delta upload uploads where, against which base, in which block.
#[derive(Clone, Copy)]
struct DeltaJob<'a> {
    space: Space,
    path: &'a str,
    base_space: Space,
    base_path: &'a str,
    block: u32,
}

/// Bytes a delta upload reads from its source at once (and hands to its
/// hashing thread as one piece).
pub const DELTA_READ: usize = 256 << 10;

/// The largest `file.chunk` of a delta upload's literal bytes: a literal
/// run is sent in pieces of this size, each as soon as the scan has passed
/// it, so the scan holds less than one.
pub const DELTA_LITERAL_PIECE: usize = 256 << 10;

/// A delta upload of a file up to this size reads and hashes it whole
/// before `file.begin` (which announces the hash: an instant upload when
/// the server holds the content); a larger one streams and announces its
/// hash at `file.finish`.
pub const DELTA_HASH_FIRST: u64 = 1 << 20;

/// The most bytes of the file a delta upload in blocks of `block` holds at
/// once (past a file of [`DELTA_HASH_FIRST`] bytes, which is held whole):
/// its window (what was read and not yet sent or copied, under
/// `block + DELTA_READ + DELTA_LITERAL_PIECE + 1`, dropped in steps of
/// [`DELTA_READ`]), the pieces queued for or in the hashing thread (3 ×
/// [`DELTA_READ`]), the literal piece in flight and the one being built
/// (2 × [`DELTA_LITERAL_PIECE`]). Whatever the file's size.
pub fn delta_memory_bound(block: u32) -> u64 {
    delta_window(block).max(DELTA_HASH_FIRST)
        + 3 * DELTA_READ as u64
        + 2 * DELTA_LITERAL_PIECE as u64
}

/// The most a delta upload's window holds past a file of
/// [`DELTA_HASH_FIRST`] bytes: what lies behind the literal run (less than
/// a piece), the literal run (less than a piece), the block and the byte
/// after it, and the read-ahead (less than a piece). Its buffer is
/// allocated at this size once.
fn delta_window(block: u32) -> u64 {
    block as u64 + 2 * DELTA_READ as u64 + DELTA_LITERAL_PIECE as u64 + 1
}

/// The time a `file.signature` call may take for a base of `base_len`
/// bytes: [`SIGNATURE_TIMEOUT_MIN`] plus the base read at
/// [`SIGNATURE_MIN_RATE`] (a slow disk; the server reads and sums the base
/// once, or answers from its cache). 10 MiB: 30.6 s; 10 GiB: 670 s. Not the
/// connection's fixed call timeout, under which a large base could not be
/// signed; not unbounded either, so a server that stopped is given up on.
pub fn signature_timeout(base_len: u64) -> Duration {
    SIGNATURE_TIMEOUT_MIN + Duration::from_secs(base_len / SIGNATURE_MIN_RATE)
}

/// The least time a `file.signature` call is given (the CLI's call timeout).
pub const SIGNATURE_TIMEOUT_MIN: Duration = Duration::from_secs(30);

/// The slowest rate (bytes per second) at which a server is expected to
/// read and sum a delta upload's base: 16 MiB/s.
pub const SIGNATURE_MIN_RATE: u64 = 16 << 20;

/// Sends `data` (a literal run) as `file.chunk`s of at most
/// [`DELTA_LITERAL_PIECE`] bytes, after the request in flight.
fn flush_lit(data: &[u8], ops: &mut DeltaOps<'_>, rep: &mut DeltaReport) -> Result<()> {
    for piece in data.chunks(DELTA_LITERAL_PIECE) {
        let crc = zs_hash::crc32(piece).to_le_bytes().to_vec();
        let df = DataFrame::new()
            .with(ops.id)
            .with(ops.at)
            .with(bytes::Bytes::copy_from_slice(piece))
            .with(crc);
        ops.send("file.chunk", df, piece.len() as u64)?;
        rep.literal += piece.len() as u64;
    }
    Ok(())
}

/// What a delta upload holds of the file it reads front to back: bytes
/// `start..start + buf.len()`, each handed to the hashing thread (while
/// `hash` is set) as it is read.
struct DeltaWindow<'r, R> {
    src: &'r mut R,
    /// The file's length (nothing past it is read).
    len: u64,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
    hash: Option<mpsc::SyncSender<Vec<u8>>>,
}

impl<R: std::io::Read> DeltaWindow<'_, R> {
    /// File offset of the next byte to read.
    fn read(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Reads (in pieces of [`DELTA_READ`]) until the window reaches `to`
    /// (or the file's end).
    fn fill_to(&mut self, to: u64) -> Result<()> {
        let to = to.min(self.len);
        while self.read() < to {
            let n = (DELTA_READ as u64).min(self.len - self.read()) as usize;
            let mut piece = vec![0u8; n];
            self.src.read_exact(&mut piece).map_err(|e| {
                ServiceError::new(
                    code::CLIENT,
                    format!("reading byte {} of {}: {e}", self.read(), self.len),
                )
            })?;
            self.buf.extend_from_slice(&piece);
            if let Some(tx) = &self.hash {
                tx.send(piece)
                    .map_err(|_| ServiceError::new(code::CLIENT, "the hashing thread stopped"))?;
            }
        }
        Ok(())
    }

    /// Drops the bytes before `at` once at least [`DELTA_READ`] of them can
    /// go (so the rest moves down once per piece, not per block).
    fn discard_before(&mut self, at: u64) {
        let n = at.saturating_sub(self.start).min(self.buf.len() as u64) as usize;
        if n >= DELTA_READ || (n > 0 && n == self.buf.len()) {
            self.buf.drain(..n);
            self.start += n as u64;
        }
    }

    /// Bytes `a..b` of the file (in the window).
    fn slice(&self, a: u64, b: u64) -> &[u8] {
        &self.buf[(a - self.start) as usize..(b - self.start) as usize]
    }

    /// The byte at `a` (in the window).
    fn byte(&self, a: u64) -> u8 {
        self.buf[(a - self.start) as usize]
    }
}

/// Copies a delta upload coalesces into one `file.copy` at most (so the
/// server starts copying and hashing while the scan goes on).
pub const DELTA_COPY_RUN: u64 = 1 << 20;

/// The requests of a delta upload, one in flight: each is sent once the one
/// before it is answered (they must land in order), and the scan goes on
/// meanwhile.
struct DeltaOps<'a> {
    client: &'a ServicesClient,
    id: u64,
    /// Where the upload stands once the request in flight lands.
    at: u64,
    inflight: Option<(zs_core::CallFuture<DataFrame>, u64)>,
}

impl Drop for DeltaOps<'_> {
    /// A delta upload that fails still waits for its request in flight, so
    /// a retry asks where the upload stands only after it landed.
    fn drop(&mut self) {
        if let Some((call, _)) = self.inflight.take() {
            let _ = call.wait();
        }
    }
}

impl DeltaOps<'_> {
    /// Waits for the request in flight; checks where it left the upload.
    fn wait(&mut self) -> Result<()> {
        if let Some((call, end)) = self.inflight.take() {
            let got = call.wait()?.reader().read_u64()?;
            if got != end {
                return Err(ServiceError::new(
                    code::CLIENT,
                    format!("the upload stands at {got}, not {end}"),
                ));
            }
        }
        Ok(())
    }

    /// Sends `cmd` (which appends `len` bytes at `self.at`) after the one in flight.
    fn send(&mut self, cmd: &str, df: DataFrame, len: u64) -> Result<()> {
        self.wait()?;
        self.at += len;
        self.inflight = Some((self.client.client.call_stream(cmd, df), self.at));
        Ok(())
    }
}

/// What [`ServicesClient::upload_delta`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaReport {
    /// The server had the whole content: nothing was sent (known only when
    /// the content was hashed before the upload began: a file hashed while
    /// the signature was fetched).
    pub instant: bool,
    /// Bytes sent over the wire.
    pub literal: u64,
    /// Bytes the server copied from the base file.
    pub copied: u64,
    /// The block size the base file was matched in: the one asked for, or a
    /// larger one when the base has more than
    /// [`crate::files::MAX_SIGNATURE_BLOCKS`] of those.
    pub block: u32,
}

/// The largest block of `file.signature` (1 MiB).
const MAX_BLOCK: u32 = 1 << 20;

/// Size and SHA3-256 of a local file.
pub fn hash_local(path: &std::path::Path) -> std::io::Result<(u64, [u8; 32])> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = zs_hash::Sha3_256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize()))
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

/// The request of `file.signature`, version 2 (with the block sum; version 1
/// ends after `block`): space `str`, path `str`, block `u32`, sum `u8`.
pub fn file_signature_request(space: Space, path: &str, block: u32, sum: BlockSum) -> DataFrame {
    DataFrame::new()
        .with(space.as_str())
        .with(path)
        .with(block)
        .with(sum as u8)
}

/// A file's block signatures as received: per block its rolling checksum and
/// its 16-byte strong sum.
pub type BlockList = Vec<(u32, [u8; 16])>;

/// Reads a `file.signature` answer (version 1 or 2, from a server the client
/// need not trust): the block list and the block sum it carries.
pub fn parse_signature_answer(df: &DataFrame) -> Result<(BlockList, BlockSum)> {
    let mut r = df.reader();
    let n = r.read_u64()?;
    let weak = r.read_slice()?;
    let strong = r.read_slice()?;
    let used = if r.remaining() > 0 {
        BlockSum::from_u8(r.read_u8()?)?
    } else {
        BlockSum::Sha3
    };
    if Some(weak.len() as u64) != n.checked_mul(4) || Some(strong.len() as u64) != n.checked_mul(16)
    {
        return Err(ServiceError::new(code::CLIENT, "malformed signature"));
    }
    let sig = weak
        .chunks_exact(4)
        .zip(strong.chunks_exact(16))
        .map(|(w, st)| {
            let mut s = [0u8; 16];
            s.copy_from_slice(st);
            (u32::from_le_bytes([w[0], w[1], w[2], w[3]]), s)
        })
        .collect();
    Ok((sig, used))
}

/// The request of `file.hash` (PROTOCOL Part 6): upload id, SHA3-256.
pub fn file_hash_request(id: u64, hash: &[u8; 32]) -> DataFrame {
    DataFrame::new().with(id).with(hash.to_vec())
}

/// SHA3-256 of bytes `0..size` of a source read by `read(at, buf)`, in
/// pieces of at least 256 KiB; `stop` ends it early (an error).
fn hash_source(
    read: &(impl Fn(u64, &mut [u8]) -> Result<()> + Sync),
    size: u64,
    chunk: usize,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<[u8; 32]> {
    let mut h = zs_hash::Sha3_256::new();
    let mut buf = vec![0u8; (chunk.max(256 << 10) as u64).min(size) as usize];
    let mut at = 0;
    while at < size {
        if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(ServiceError::new(code::CLIENT, "the upload stopped"));
        }
        let n = (buf.len() as u64).min(size - at) as usize;
        read(at, &mut buf[..n])?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize())
}

/// Fills `buf` from `off` of `f` without moving a shared cursor (the sender
/// and the hashing thread read one file at once).
fn read_exact_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut off) = (buf, off);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(f, buf, off) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    off += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Writes all of `data` at `off` of `f` without moving a shared cursor (the
/// download threads write their shares of one file at once).
fn write_all_at(f: &std::fs::File, data: &[u8], off: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(f, data, off)
    }
    #[cfg(windows)]
    {
        let (mut data, mut off) = (data, off);
        while !data.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(f, data, off) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    off += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature call's timeout: the CLI's 30 s for a small base, plus a
    /// second per 16 MiB (a slow disk) for a large one.
    #[test]
    fn the_signature_timeout_grows_with_the_base() {
        assert_eq!(signature_timeout(0), SIGNATURE_TIMEOUT_MIN);
        assert_eq!(signature_timeout(10 << 20), Duration::from_secs(30));
        assert_eq!(signature_timeout(10 << 30), Duration::from_secs(30 + 640));
        assert!(signature_timeout(1 << 40) > signature_timeout(1 << 30));
    }

    /// The window reads in pieces of `DELTA_READ`, never past the file's
    /// length, drops what is behind in steps of a piece, hands every byte
    /// to the hashing queue once, and a source shorter than announced is
    /// an error.
    #[test]
    fn a_delta_window_reads_ahead_a_piece_and_drops_what_is_behind() {
        let data: Vec<u8> = (0..(3 * DELTA_READ + 100) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut src = std::io::Cursor::new(&data[..]);
        let (tx, rx) = mpsc::sync_channel(8);
        let mut w = DeltaWindow {
            src: &mut src,
            len: data.len() as u64,
            start: 0,
            buf: Vec::new(),
            hash: Some(tx),
        };
        w.fill_to(10).unwrap();
        assert_eq!(w.read(), DELTA_READ as u64);
        assert_eq!(w.slice(3, 10), &data[3..10]);
        w.discard_before(DELTA_READ as u64 - 1); // less than a piece: kept
        assert_eq!((w.start, w.byte(0)), (0, data[0]));
        w.fill_to(DELTA_READ as u64 + 1).unwrap();
        w.discard_before(DELTA_READ as u64 + 1);
        assert_eq!(w.start, DELTA_READ as u64 + 1);
        assert_eq!(w.buf.len(), DELTA_READ - 1);
        let end = data.len() as u64;
        w.fill_to(u64::MAX).unwrap();
        assert_eq!(w.read(), end);
        assert_eq!(w.slice(end - 50, end), &data[data.len() - 50..]);
        w.hash = None;
        let hashed: Vec<u8> = rx.iter().flatten().collect();
        assert_eq!(hashed, data);
        // Announced longer than it is: an error, not a hang or a panic.
        let mut short = std::io::Cursor::new(&data[..100]);
        let mut w = DeltaWindow {
            src: &mut short,
            len: 1000,
            start: 0,
            buf: Vec::new(),
            hash: None,
        };
        assert_eq!(w.fill_to(1000).unwrap_err().code, code::CLIENT);
    }
}
