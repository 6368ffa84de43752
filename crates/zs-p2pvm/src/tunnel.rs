//! The tunnel driver: one [`Mux`] over one physical `zs_io` connection, and the
//! virtual connections exposed through the zs-io seam.
//!
//! * [`Tunnel::handler`] gives a [`TunnelHandle`] and a [`TunnelDriver`]; the driver is
//!   the `zs_io::Handler` of the physical connection (any backend: epoll, tokio,
//!   IOCP). [`Tunnel::connect`] and [`Tunnel::acceptor`] wrap the usual cases.
//! * [`TunnelHandle`] implements [`zs_io::Backend`]: `listen(vaddr, factory)`
//!   listens on a *virtual* address inside the tunnel (port 0 picks a free virtual
//!   port) and `connect(vaddr, ..)` opens a virtual connection to a virtual
//!   address the peer listens on. **Connection clone** is simply another `connect`
//!   to the same virtual address: every connect opens an independent stream with
//!   its own flow-control window, so a second channel to the same virtual server
//!   never waits behind the first one.
//! * Every virtual stream is a [`zs_io::Connection`] with the seam's contract:
//!   bounded send queue (`Error::Full` + `on_writable`), `shutdown_write`,
//!   graceful `close` (with linger), `abort` (reset), timers, idle timeout and
//!   `set_read_paused` (the stream's data stays in the Mux, its credit is not
//!   returned, so the peer's sender is flow-controlled).
//!
//! ## Threads and locks
//!
//! All state (the Mux, the virtual connections table, timers) sits behind one
//! mutex per tunnel. Handler callbacks of virtual connections run on the physical
//! connection's event-loop thread, from inside the driver's own callbacks, one at a
//! time. The driver never calls a user handler (or a `HandlerFactory`) while it
//! holds the lock: it takes the next piece of work out under the lock, releases
//! it, calls the handler, and locks again to put the handler back. `Conn` methods
//! of virtual connections may be called from any thread: they lock, act on the
//! Mux, and push the Mux's output to the physical connection at once (outside a
//! drive) or at the end of the drive (inside one, so many small sends leave in one
//! physical write). Work that needs a callback and was caused off the loop thread
//! (an `abort` from another thread, a listener shutdown, a resumed reader, a
//! virtual connection's `wake`) rings the physical connection's doorbell
//! (`Connection::wake`), which the reactor and tokio backends answer at once,
//! not after a timer tick (tested by `tests/wake.rs`); data sent from other
//! threads needs no wake at all.
//!
//! Output leaves without copying DATA payloads: the Mux writes frame headers,
//! control frames and short payloads into one head buffer and hands long
//! payloads on as slices of the `Bytes` given to `send`
//! ([`crate::Mux::write_output_parts`]); the driver passes the pieces to
//! `Connection::send_vectored` (one `writev` on the reactor backends).
//!
//! ## Panicking handlers
//!
//! The driver keeps the seam's contract item 8 for virtual connections: every
//! callback of a virtual connection's handler (and every call of a virtual
//! listener's `HandlerFactory`) runs under [`zs_io::catch_handler_panic`], which
//! logs and counts the panic ([`zs_io::handler_panics`]). A panic ends only that
//! virtual connection: its stream is reset (the peer sees `Reset`), the bytes
//! queued either way are dropped, and its handler gets one last
//! `on_close(`[`zs_io::CloseReason::HandlerPanicked`]`)`, itself guarded; a
//! panicking factory resets the stream it was called for. The panic never
//! unwinds through the driver, so the physical connection, the tunnel and every
//! other virtual connection keep running. No tunnel lock is held while user code
//! runs (that includes dropping a handler), and the locks recover from poisoning.
//!
//! ## Identity and memory
//!
//! A virtual connection's `local_addr` / `peer_addr` are the virtual listen
//! address on the accepting side and the anonymous address (unspecified, port 0,
//! same family) for the far end, as the Mux reports them; its `ConnId` is
//! `tunnel-end serial << 32 | stream id`, unique in the process. `Conn` handles
//! are made when a callback needs one (all handles of one connection compare
//! equal by id), and buffers exist only while bytes wait, so an idle virtual
//! connection costs one 32-byte table bucket here plus its Mux entry.
//!
//! ## Security and hostile peers
//!
//! A [`TunnelConfig`] must choose the Mux's authentication and the link's
//! protection explicitly ([`TunnelConfig::secure`], [`TunnelConfig::over_secure_link`]
//! or [`TunnelConfig::plaintext`]); otherwise [`Tunnel::handler`] returns
//! [`Error::Config`]. The tunnel has **no secure-session code of its own**: the
//! record layer is zs-secure's. With [`TunnelConfig::secure`] the driver is wrapped
//! in a [`zs_secure::SecureLayer`] handler (the same code as a
//! [`zs_secure::SecureBackend`]); with [`TunnelConfig::over_secure_link`] the
//! physical backend is itself secure (`SecureBackend(epoll)`), so
//! `SecureBackend(TunnelHandle over SecureBackend(epoll))` composes from trait
//! objects. Either way the driver sees plaintext, and when the physical connection
//! opens (keys exist by then) it binds the Mux's token PROOF to the session's
//! channel binding from `Connection::security_info` ([`Mux::bind_channel`]). The
//! handshake is bounded by the secure layer (`SecureConfig::handshake_timeout`
//! accepted, the connect timeout outgoing); the Mux's ready deadline
//! ([`MuxConfig::ready_timeout`]) counts from when the plaintext connection opens.
//! When the Mux's control output reaches [`MuxConfig::max_control_bytes`] (the peer
//! asks for answers it does not read), the driver pauses reading the physical
//! connection (`set_read_paused`) until that output has drained to it, so such a
//! peer stalls only its own tunnel ([`TunnelHandle::read_paused`],
//! [`TunnelHandle::control_queued`]).
//!
//! ## Link death
//!
//! When the physical connection ends, the peer closes the tunnel (GoAway), the
//! tunnel fails authentication, is not ready by its deadline or times out, every
//! virtual connection gets `on_close(CloseReason::Error(ConnectionAborted))` (or
//! `Shutdown` after a local [`zs_io::Backend::shutdown`]), pending virtual connects
//! get `on_connect_failed`, and [`TunnelHandle::close_info`] reports the reason with
//! the data that was still pending (bytes accepted by `send` and never written,
//! bytes received and never read).

mod driver;
mod vconn;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zs_crypto::SecurityProvider;
use zs_io::{Backend, Conn, Handler, HandlerFactory, Listener};
use zs_secure::{SecureConfig, SecureLayer};

use crate::{Auth, Error, Mux, MuxConfig, Role};

use driver::{LinkDriver, State};

/// Settings of one tunnel end.
///
/// A tunnel needs two explicit choices: the Mux's authentication
/// ([`MuxConfig::auth`], no default) and the link's protection: a secure session
/// ([`TunnelConfig::security`]) or, on purpose, none
/// ([`TunnelConfig::allow_plaintext`]). [`TunnelConfig::default`] makes neither, so
/// [`Tunnel::handler`] refuses it; start from [`TunnelConfig::secure`] or
/// [`TunnelConfig::plaintext`].
#[derive(Clone)]
pub struct TunnelConfig {
    /// The multiplexer's settings (auth token, windows, budget, keepalive, idle).
    pub mux: MuxConfig,
    /// Protection of the physical bytes: the initiator runs a client session, the
    /// acceptor a server session of this provider (the zs-crypto handshake, or
    /// TLS), the Mux's frames travel as its application data, and token PROOFs
    /// cover the session's channel binding (`SecureSession::channel_binding`; with
    /// token auth, a session without one ends the tunnel when its handshake
    /// completes). Default `None`, which is refused unless `allow_plaintext` or
    /// `secure_link` is set. The sessions run in zs-secure's layer
    /// ([`zs_secure::SecureLayer`] with [`SecureConfig::default`]).
    pub security: Option<Arc<dyn SecurityProvider>>,
    /// The physical backend is itself secure (e.g. a [`zs_secure::SecureBackend`]):
    /// the tunnel runs no session of its own, requires the physical connection
    /// to report one (`Connection::security_info`; a link without one ends the
    /// tunnel) and binds token PROOFs to its channel binding. Default `false`.
    pub secure_link: bool,
    /// Accept running without `security`: the Mux's frames go on the link as they
    /// are. Token auth still decides who may open the tunnel, but an on-path attacker
    /// can read, relay and alter the tunnel after it (no integrity, no
    /// confidentiality). Only for trusted links (loopback, a VPN) or tests.
    /// Default `false`.
    pub allow_plaintext: bool,
    /// Send queue bound of each virtual connection (the seam's contract item 4),
    /// counted beyond what the Mux's own per-stream send buffer holds.
    /// Default 256 KiB.
    pub send_queue_limit: usize,
    /// Default idle timeout of new virtual connections. Default none.
    pub idle_timeout: Option<Duration>,
    /// Most bytes handed to one `on_data` call of a virtual connection.
    /// Default 64 KiB.
    pub read_chunk: usize,
    /// How long a graceful `close` of a virtual connection waits for the peer to
    /// finish before the stream is reset. Default 10 s.
    pub close_linger: Duration,
}

impl Default for TunnelConfig {
    /// The default limits with **neither choice made** (no `mux.auth`, no
    /// `security`, no `allow_plaintext`): refused by [`Tunnel::handler`].
    fn default() -> Self {
        TunnelConfig {
            mux: MuxConfig::default(),
            security: None,
            secure_link: false,
            allow_plaintext: false,
            send_queue_limit: 256 * 1024,
            idle_timeout: None,
            read_chunk: 64 * 1024,
            close_linger: Duration::from_secs(10),
        }
    }
}

impl TunnelConfig {
    /// A tunnel inside the secure sessions of `security`, with the Mux's `auth`
    /// (`Auth::None` is sound when the session authenticates the peer: a pinned
    /// server key or a pre-shared key).
    pub fn secure(security: Arc<dyn SecurityProvider>, auth: Auth) -> TunnelConfig {
        TunnelConfig {
            mux: MuxConfig::new(auth),
            security: Some(security),
            ..TunnelConfig::default()
        }
    }

    /// A tunnel over a physical backend that is secure itself (`secure_link`:
    /// `Tunnel::connect(&SecureBackend(epoll), ..)`, a `SecureBackend`'s
    /// listener with [`Tunnel::acceptor`]'s factory), with the Mux's `auth`.
    pub fn over_secure_link(auth: Auth) -> TunnelConfig {
        TunnelConfig {
            mux: MuxConfig::new(auth),
            secure_link: true,
            ..TunnelConfig::default()
        }
    }

    /// A tunnel over the plain link (`allow_plaintext`), with the Mux's `auth`:
    /// no integrity or confidentiality, see [`TunnelConfig::allow_plaintext`].
    pub fn plaintext(auth: Auth) -> TunnelConfig {
        TunnelConfig {
            mux: MuxConfig::new(auth),
            allow_plaintext: true,
            ..TunnelConfig::default()
        }
    }

    /// Checks what [`Tunnel::handler`] refuses ([`Error::Config`]): no
    /// authentication chosen, or no secure session without `allow_plaintext`.
    pub fn validate(&self) -> Result<(), Error> {
        self.mux.validate()?;
        if self.security.is_none() && !self.secure_link && !self.allow_plaintext {
            return Err(Error::Config(
                "no secure session for the tunnel: set `security` or `secure_link`, \
                 or set `allow_plaintext` to run without integrity on purpose"
                    .into(),
            ));
        }
        if self.security.is_some() && self.secure_link {
            return Err(Error::Config(
                "`security` and `secure_link` both set: a session inside a secure \
                 link is a second tunnel layer, not a tunnel setting"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("mux", &self.mux)
            .field(
                "security",
                &self.security.as_ref().map(|s| s.name().to_string()),
            )
            .field("secure_link", &self.secure_link)
            .field("allow_plaintext", &self.allow_plaintext)
            .field("send_queue_limit", &self.send_queue_limit)
            .field("idle_timeout", &self.idle_timeout)
            .field("read_chunk", &self.read_chunk)
            .field("close_linger", &self.close_linger)
            .finish()
    }
}

/// Why and how a tunnel ended ([`TunnelHandle::close_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// Human-readable reason (GoAway text, auth failure, idle timeout, link lost,
    /// protocol error, local shutdown).
    pub reason: String,
    /// Virtual connections that were open (or being opened) when the tunnel ended.
    pub open_streams: usize,
    /// Bytes accepted by `send` on virtual connections that had not been written
    /// to the link when the tunnel ended (lost with it).
    pub unsent_bytes: usize,
    /// Bytes received on virtual connections that no handler had read yet.
    pub unread_bytes: usize,
}

/// Namespace of the constructors.
///
/// A tunnel over loopback TCP (the tokio backend here; epoll, IOCP work the
/// same), a virtual server at one end and a virtual client at the other:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use zs_io::{Backend, Bytes, BytesMut, Conn, Handler};
/// use zs_crypto::{ClientConfig, ServerConfig, ZsSecurity};
/// use zs_p2pvm::{Auth, Tunnel, TunnelConfig};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
///         let _ = conn.send(data.split().freeze());
///     }
/// }
///
/// let io = zs_io_tokio::TokioBackend::new(zs_io::Config { loops: 1, ..Default::default() })?;
/// // The link runs a zs-crypto session with a pre-shared key (random bytes in real
/// // use), which authenticates both ends, so the Mux needs no token of its own.
/// let key = b"32 random bytes, shared by both!";
/// let security = ZsSecurity::new(
///     Some(Arc::new(ClientConfig::psk(b"tunnel", key)?)),
///     Some(Arc::new(ServerConfig::with_psk(b"tunnel", key)?)),
/// );
/// let cfg = TunnelConfig::secure(Arc::new(security), Auth::None);
/// let wait = Duration::from_secs(10);
/// // The physical link: a listener whose connections become tunnel ends...
/// let (factory, ends) = Tunnel::acceptor(cfg.clone())?;
/// let phys = io.listen("127.0.0.1:0".parse()?, factory)?;
/// // ...and a client end.
/// let client_end = Tunnel::connect(&io, phys.local_addr(), cfg, wait)?;
/// let server_end = ends.recv_timeout(wait)?;
///
/// // A virtual server inside the tunnel, and a virtual connection to it.
/// let vaddr = "10.0.0.1:80".parse()?;
/// let _vlistener = server_end.listen(vaddr, zs_io::handler_factory(|| Echo))?;
/// assert!(client_end.wait_peer_listen(vaddr, wait));
/// struct Collect(std::sync::mpsc::Sender<Bytes>);
/// impl Handler for Collect {
///     fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
///         let _ = self.0.send(data.split().freeze());
///     }
/// }
/// let (tx, rx) = std::sync::mpsc::channel();
/// let conn = zs_io::connect_blocking(&client_end, vaddr, wait, Box::new(Collect(tx)))?;
/// conn.send(Bytes::from_static(b"ping"))?;
/// assert_eq!(&rx.recv_timeout(wait)?[..], b"ping");
/// // The same handle is an `Arc<dyn Backend>` for the framework.
/// let _backend: Arc<dyn Backend> = Arc::new(client_end.clone());
/// client_end.close("done");
/// io.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Tunnel;

impl Tunnel {
    /// One tunnel end: the handle (the virtual [`Backend`]) and the driver to
    /// give, as its handler, to the physical connection (e.g. with
    /// `backend.connect(addr, timeout, Box::new(driver))`, or from a listener's
    /// factory). `role` decides who opens odd or even stream ids and who runs the
    /// client side of the secure session.
    ///
    /// [`Error::Config`] if `cfg` makes no authentication choice or has neither
    /// `security` nor `allow_plaintext` ([`TunnelConfig::validate`]);
    /// [`Error::Rng`] if the OS random generator fails.
    pub fn handler(role: Role, cfg: TunnelConfig) -> Result<(TunnelHandle, TunnelDriver), Error> {
        let ready = cfg.mux.ready_timeout;
        let layer = cfg
            .security
            .clone()
            .map(|p| SecureLayer::new(p, tunnel_secure_config(ready)));
        let (handle, link) = Tunnel::link(role, cfg)?;
        Ok((handle, TunnelDriver::new(link, layer.as_ref(), ready)))
    }

    /// The handle and the plaintext driver of one tunnel end.
    fn link(role: Role, cfg: TunnelConfig) -> Result<(TunnelHandle, LinkDriver), Error> {
        cfg.validate()?;
        let inner = Arc::new(Inner::new(role, cfg)?);
        Ok((
            TunnelHandle {
                inner: inner.clone(),
            },
            LinkDriver::new(inner),
        ))
    }

    /// Connects the physical link to `addr` with `backend` (as the initiator) and
    /// waits until the tunnel is ready (authenticated, listen tables exchanged),
    /// at most `timeout`. Blocking: don't call it from a handler.
    pub fn connect(
        backend: &dyn Backend,
        addr: SocketAddr,
        cfg: TunnelConfig,
        timeout: Duration,
    ) -> Result<TunnelHandle, crate::Error> {
        let (handle, driver) = Tunnel::handler(Role::Initiator, cfg)?;
        backend
            .connect(addr, timeout, Box::new(driver))
            .map_err(|e| crate::Error::Protocol(format!("physical connect: {e}")))?;
        handle.wait_ready(timeout)?;
        Ok(handle)
    }

    /// A factory for a physical listener: every accepted physical connection
    /// becomes one tunnel (as the acceptor) whose handle is sent on the returned
    /// channel as soon as the connection opens (it may not be ready yet: see
    /// [`TunnelHandle::wait_ready`]).
    ///
    /// [`Error::Config`] as for [`Tunnel::handler`]. A connection whose tunnel end
    /// cannot be made (the OS random generator failed) is closed, with a log line.
    pub fn acceptor(
        cfg: TunnelConfig,
    ) -> Result<(HandlerFactory, std::sync::mpsc::Receiver<TunnelHandle>), Error> {
        cfg.validate()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        // One layer for the listener: its handshake bound counts all of them.
        let ready = cfg.mux.ready_timeout;
        let layer = cfg
            .security
            .clone()
            .map(|p| SecureLayer::new(p, tunnel_secure_config(ready)));
        let factory: HandlerFactory =
            Arc::new(move || match Tunnel::link(Role::Acceptor, cfg.clone()) {
                Ok((handle, link)) => {
                    let tx = lock_or_recover(&tx).clone();
                    let mut d = TunnelDriver::new(link, layer.as_ref(), ready);
                    d.on_open_hook = Some(Box::new(move || {
                        let _ = tx.send(handle);
                    }));
                    Box::new(d) as Box<dyn Handler>
                }
                Err(e) => Box::new(driver::Refuse(e.to_string())) as Box<dyn Handler>,
            });
        Ok((factory, rx))
    }
}

/// The secure layer's bounds for a tunnel's link: the default ones, with the
/// handshake bounded by the Mux's ready deadline (which covers it).
fn tunnel_secure_config(ready: Duration) -> SecureConfig {
    SecureConfig {
        handshake_timeout: ready,
        ..SecureConfig::default()
    }
}

/// The `zs_io::Handler` to give to one tunnel end's physical connection (from
/// [`Tunnel::handler`]). Over a plain link (or a link that is secure itself) it
/// is the tunnel driver; with [`TunnelConfig::security`] it is zs-secure's
/// layer (handshake, records opened in place, sends of one callback sealed as
/// one record) with the driver inside, made and opened once keys exist.
pub struct TunnelDriver {
    h: Box<dyn Handler>,
    role: Role,
    /// With a secure layer inside: this tunnel end, so that the raw link's open
    /// and end reach it even when the handshake never completes.
    secured: Option<Arc<Inner>>,
    /// Runs once the raw link opened (the acceptor hands its handle out).
    on_open_hook: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for TunnelDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelDriver")
            .field("role", &self.role)
            .finish()
    }
}

impl TunnelDriver {
    /// `link` alone, or inside `layer`'s handler for `link`'s role. An outgoing
    /// handshake must complete within `handshake` of now.
    fn new(mut link: LinkDriver, layer: Option<&SecureLayer>, handshake: Duration) -> TunnelDriver {
        let role = link.role();
        let secured = layer.map(|_| link.inner.clone());
        if layer.is_some() {
            // The timers restart at the raw open (below): the ready deadline
            // covers the handshake.
            link.restart_timers = false;
        }
        let h: Box<dyn Handler> = match (layer, role) {
            (None, _) => Box::new(link),
            (Some(l), Role::Initiator) => l.client_handler(Box::new(link), handshake),
            (Some(l), Role::Acceptor) => {
                // The layer makes the inner handler once keys exist: hand it this
                // end's driver, once.
                let once = Mutex::new(Some(link));
                l.server_handler(Arc::new(move || match lock_or_recover(&once).take() {
                    Some(link) => Box::new(link) as Box<dyn Handler>,
                    None => Box::new(driver::Refuse("tunnel end already opened".into())),
                }))
            }
        };
        TunnelDriver {
            h,
            role,
            secured,
            on_open_hook: None,
        }
    }
}

impl Handler for TunnelDriver {
    fn on_open(&mut self, conn: &Conn) {
        if let Some(inner) = &self.secured {
            inner.lock().mux.restart_timers(Instant::now());
        }
        self.h.on_open(conn);
        if let Some(hook) = self.on_open_hook.take() {
            hook();
        }
    }
    fn on_data(&mut self, conn: &Conn, data: &mut zs_io::BytesMut) {
        self.h.on_data(conn, data)
    }
    fn on_eof(&mut self, conn: &Conn) {
        self.h.on_eof(conn)
    }
    fn on_writable(&mut self, conn: &Conn) {
        self.h.on_writable(conn)
    }
    fn on_timer(&mut self, conn: &Conn, token: u64) {
        self.h.on_timer(conn, token)
    }
    fn on_close(&mut self, conn: &Conn, reason: zs_io::CloseReason) {
        self.h.on_close(conn, reason);
        if let Some(inner) = &self.secured {
            // The secure layer ended the link before the tunnel opened inside it
            // (a failed or timed-out handshake): the tunnel end was never told.
            let mut st = inner.lock();
            if st.closed.is_none() {
                st.tunnel_dead(format!(
                    "not ready: the secure link ended before the tunnel opened ({reason:?})"
                ));
            }
            drop(st);
            inner.cond.notify_all();
            // Pending virtual connects get their `on_connect_failed` now.
            driver::drive(inner);
        }
    }
    fn on_connect_failed(&mut self, error: zs_io::Error) {
        self.h.on_connect_failed(error)
    }
}

impl Drop for TunnelDriver {
    fn drop(&mut self) {
        // A raw connection that never opened (refused at accept) or a secure
        // link that ended: the tunnel end must not wait for a link forever.
        if let Some(inner) = &self.secured {
            let mut st = inner.lock();
            if st.closed.is_none() && st.phys.is_none() {
                st.tunnel_dead("not ready: the secure link ended before the tunnel opened".into());
            }
            drop(st);
            inner.cond.notify_all();
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the state
/// stays consistent: every mutation is completed before any user code runs).
pub(crate) fn lock_or_recover<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    pub(crate) cond: Condvar,
    pub(crate) role: Role,
    pub(crate) send_queue_limit: usize,
    pub(crate) read_chunk: usize,
    pub(crate) close_linger: Duration,
    pub(crate) default_idle: Option<Duration>,
    /// Process-unique number of this tunnel end (high half of its connection ids).
    pub(crate) serial: u64,
}

static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Inner {
    fn new(role: Role, cfg: TunnelConfig) -> Result<Inner, Error> {
        let now = Instant::now();
        Ok(Inner {
            state: Mutex::new(State::new(
                Mux::new(role, cfg.mux.clone(), now)?,
                cfg.security.is_some() || cfg.secure_link,
            )),
            cond: Condvar::new(),
            role,
            send_queue_limit: cfg.send_queue_limit.max(1),
            read_chunk: cfg.read_chunk.max(1),
            close_linger: cfg.close_linger,
            default_idle: cfg.idle_timeout,
            serial: NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock_or_recover(&self.state)
    }
}

/// One tunnel end, shared (cheap to clone). It is a [`zs_io::Backend`] whose
/// addresses are virtual: pass `Arc::new(handle.clone())` wherever the framework
/// wants an `Arc<dyn Backend>` and everything above runs inside the tunnel.
#[derive(Clone)]
pub struct TunnelHandle {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("TunnelHandle")
            .field("role", &self.inner.role)
            .field("ready", &st.ready)
            .field("streams", &st.slots.len())
            .field("closed", &st.closed)
            .finish()
    }
}

impl TunnelHandle {
    /// This end's role.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Whether the tunnel is ready: authenticated and listen tables exchanged.
    pub fn is_ready(&self) -> bool {
        let st = self.inner.lock();
        st.ready && st.closed.is_none()
    }

    /// Waits until the tunnel is ready; `Error::TunnelClosed`-style errors when it
    /// ended first (wrong token: [`crate::Error::AuthFailed`]), or a
    /// [`crate::Error::Protocol`] saying it timed out.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), crate::Error> {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            if let Some(info) = &st.closed {
                if st.auth_failed {
                    return Err(crate::Error::AuthFailed);
                }
                return Err(crate::Error::Protocol(format!(
                    "tunnel closed: {}",
                    info.reason
                )));
            }
            if st.ready {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(crate::Error::Protocol(
                    "tunnel not ready before the timeout".into(),
                ));
            }
            st = match self.inner.cond.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Waits (at most `timeout`) until the peer's listen table holds `addr` (a
    /// virtual connect right after the peer's `listen` may otherwise race the
    /// table update and be refused). Returns whether it does.
    pub fn wait_peer_listen(&self, addr: SocketAddr, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            if st.mux.peer_listens().any(|a| a == addr) {
                return true;
            }
            if st.closed.is_some() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = match self.inner.cond.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The virtual addresses the peer listens on.
    pub fn peer_listens(&self) -> Vec<SocketAddr> {
        self.inner.lock().mux.peer_listens().collect()
    }

    /// Bytes of control frames the Mux has queued and not yet written to the link
    /// (at most about [`MuxConfig::max_control_bytes`] plus one frame's answer when
    /// the peer does not read).
    pub fn control_queued(&self) -> usize {
        self.inner.lock().mux.control_len()
    }

    /// True while reading the physical link is paused because the Mux's control
    /// output is at its cap (the peer does not read what it asked for).
    pub fn read_paused(&self) -> bool {
        self.inner.lock().read_paused
    }

    /// Virtual connections open in this tunnel (the Mux's stream count).
    pub fn stream_count(&self) -> usize {
        self.inner.lock().mux.stream_count()
    }

    /// Virtual connections with a live handler at this end.
    pub fn vconn_count(&self) -> usize {
        self.inner.lock().slots.len()
    }

    /// Virtual connections opened at this end so far (accepted and connected).
    pub fn vconns_opened(&self) -> u64 {
        self.inner.lock().opened
    }

    /// The keepalive round-trip time last measured (needs `MuxConfig::keepalive`).
    pub fn rtt(&self) -> Option<Duration> {
        self.inner.lock().mux.rtt()
    }

    /// Pongs received so far (each one updates [`TunnelHandle::rtt`]).
    pub fn pongs(&self) -> u64 {
        self.inner.lock().pongs
    }

    /// `Some` once the tunnel has ended: why, and what was pending.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.inner.lock().closed.clone()
    }

    /// Waits (at most `timeout`) for the tunnel to end.
    pub fn wait_closed(&self, timeout: Duration) -> Option<CloseInfo> {
        let deadline = Instant::now() + timeout;
        let mut st = self.inner.lock();
        loop {
            if let Some(info) = &st.closed {
                return Some(info.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = match self.inner.cond.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Closes the tunnel with a GoAway carrying `reason`: every virtual connection
    /// ends (`on_close(Shutdown)` here, link-lost at the peer), then the physical
    /// connection closes gracefully.
    pub fn close(&self, reason: &str) {
        driver::shutdown(&self.inner, reason);
    }

    /// The physical connection, once it is open.
    pub fn physical(&self) -> Option<Conn> {
        self.inner.lock().phys.clone()
    }
}

impl Backend for TunnelHandle {
    fn name(&self) -> &str {
        "p2pvm"
    }

    fn listen(
        &self,
        addr: SocketAddr,
        factory: HandlerFactory,
    ) -> Result<Box<dyn Listener>, zs_io::Error> {
        driver::listen(&self.inner, addr, factory)
    }

    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn zs_io::Handler>,
    ) -> Result<(), zs_io::Error> {
        driver::connect(&self.inner, addr, timeout, handler)
    }

    fn shutdown(&self) {
        driver::shutdown(&self.inner, "shutdown");
    }
}
