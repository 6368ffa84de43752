//! One WebSocket session: one task reads the client's requests, runs them on
//! the server (in process, or over a bridged zs-core client session), and
//! writes the answers and pushes that other threads queue for it.
//!
//! Reading, dispatching and writing share the task: an answer given inline
//! (the usual case in process) is written by the same task that read the
//! request, with no thread hop, and everything that is ready goes out with
//! one flush. Answers and pushes from other threads (delayed responders, HPC
//! workers, broadcasts, the bridge's event loop) go through [`Conn`]'s queue
//! and wake the task.
//!
//! Bounds: requests answered-but-unwritten plus unanswered stay under the
//! in-flight cap (reading pauses at it); pushes waiting to be written stay
//! under `send_queue` (one more ends the session: the client does not read);
//! a write that takes longer than `write_timeout` ends it too; a client from
//! which nothing arrives for `ping_interval + pong_timeout` is dead.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;
use zs_core::{Call, Client, LocalConn, LocalSink, Registry, Reply, ReplySink, Request};
use zs_wire::{Frame, Text};

use crate::gateway::{Held, Shared};
use crate::json::{self, op, WsError, WsRequest};
use crate::metrics::WebStats;
use crate::Route;

/// Per-session cache of call-duration histograms (distinct command names).
const HIST_CACHE: usize = 64;

/// What a session shares with the threads that answer and push to it.
pub(crate) struct Conn {
    stats: Arc<WebStats>,
    pushes: Arc<[String]>,
    signals: Arc<[String]>,
    send_queue: usize,
    q: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    /// Messages for the client, in order.
    out: VecDeque<Out>,
    /// Pushes among them (and among those being written).
    pushes: usize,
    /// Requests the server has not answered yet, by tag.
    pending: HashMap<u64, Pending>,
    /// Why the session must end at once (the first reason wins).
    kill: Option<Kill>,
}

struct Pending {
    /// The client's request id.
    id: u64,
    /// Answer a DataFrame as a binary message.
    binary: bool,
    hist: Arc<Histogram>,
    started: Instant,
}

enum Out {
    Answer(Message),
    Push(Message),
}

/// Why a session ends.
#[derive(Debug, Clone)]
enum End {
    /// The client closed, or its stream ended.
    ClientGone,
    /// Close with this code and reason (a bad frame, the server closed the
    /// session, the gateway stops).
    Close(u16, String),
    /// The client does not read (a push found the queue full, or a write
    /// stalled): drop the socket.
    SlowReader,
    /// Nothing arrived for `ping_interval + pong_timeout`.
    Dead,
    /// A write failed.
    Io,
}

#[derive(Debug, Clone)]
struct Kill(End);

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    fn new(s: &Shared) -> Conn {
        Conn {
            stats: s.stats.clone(),
            pushes: s.pushes.clone(),
            signals: s.signals.clone(),
            send_queue: s.cfg.send_queue.max(1),
            q: Mutex::new(Queue::default()),
            wake: Notify::new(),
        }
    }

    fn killed(&self) -> Option<End> {
        lock(&self.q).kill.as_ref().map(|k| k.0.clone())
    }

    /// Ends the session as soon as its task looks (the first reason wins).
    fn kill(&self, why: End) {
        {
            let mut q = lock(&self.q);
            if q.kill.is_none() {
                q.kill = Some(Kill(why));
            }
        }
        self.wake.notify_one();
    }

    /// The server's answer to request `tag`.
    fn answer(&self, tag: u64, r: Result<Reply, WsError>) {
        let Some(p) = lock(&self.q).pending.remove(&tag) else {
            return; // the session ended meanwhile
        };
        let m = match r {
            Ok(Reply::Text(t)) => Message::Text(json::text_reply(p.id, t.as_str()).into()),
            Ok(Reply::Data(d)) if p.binary => {
                Message::Binary(json::binary_message(op::REPLY, p.id, "", &d))
            }
            Ok(Reply::Data(d)) => Message::Text(json::data_reply(p.id, &d).into()),
            Err(e) => Message::Text(json::error_reply(Some(p.id), &e).into()),
        };
        p.hist.observe(p.started.elapsed().as_secs_f64());
        lock(&self.q).out.push_back(Out::Answer(m));
        self.wake.notify_one();
    }

    /// Whether direct command `cmd` is forwarded to the client.
    fn is_push(&self, cmd: &str) -> bool {
        self.pushes.iter().any(|p| p.eq_ignore_ascii_case(cmd))
    }

    /// Queues a push; a full queue ends the session (the client does not
    /// read) and refuses it.
    fn push(&self, m: Message) -> zs_core::Result<()> {
        {
            let mut q = lock(&self.q);
            if q.kill.is_some() {
                return Err(zs_core::Error::ConnectionLost(
                    "the WebSocket session is closing".into(),
                ));
            }
            if q.pushes >= self.send_queue {
                q.kill = Some(Kill(End::SlowReader));
                drop(q);
                self.stats.slow_readers.fetch_add(1, Relaxed);
                tracing::warn!(
                    cap = self.send_queue,
                    "zs-web: client does not read its pushes (send queue full): closing"
                );
                self.wake.notify_one();
                return Err(zs_core::Error::ConnectionLost(
                    "the WebSocket client does not read".into(),
                ));
            }
            q.pushes += 1;
            q.out.push_back(Out::Push(m));
        }
        self.stats.pushes.fetch_add(1, Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    fn push_text(&self, cmd: &str, text: &str) -> zs_core::Result<()> {
        if !self.is_push(cmd) {
            tracing::debug!(cmd, "zs-web: direct command not forwarded (not in pushes)");
            return Ok(());
        }
        self.push(Message::Text(json::text_push(cmd, text).into()))
    }

    fn push_signal(&self, name: &str, code: u64) -> zs_core::Result<()> {
        if !self.signals.iter().any(|p| p.eq_ignore_ascii_case(name)) {
            tracing::debug!(name, "zs-web: signal not forwarded (not in signals)");
            return Ok(());
        }
        self.push(Message::Text(json::signal_push(name, code).into()))
    }

    fn push_data(&self, cmd: &str, data: &zs_wire::DataFrame) -> zs_core::Result<()> {
        if !self.is_push(cmd) {
            tracing::debug!(cmd, "zs-web: direct command not forwarded (not in pushes)");
            return Ok(());
        }
        self.push(Message::Binary(json::binary_message(
            op::PUSH,
            0,
            cmd,
            data,
        )))
    }
}

/// In process: every frame the server sends to this WebSocket's peer.
impl LocalSink for Conn {
    fn frame(&self, frame: Frame) -> zs_core::Result<()> {
        match frame {
            Frame::ConsoleResponse { id, text } => self.answer(id, Ok(Reply::Text(text))),
            Frame::StreamResponse { id, data } => self.answer(id, Ok(Reply::Data(data))),
            Frame::Error { id, code, message } if id != 0 => {
                self.answer(id, Err(WsError::new(code, message.as_str())))
            }
            Frame::DirectConsole { cmd, text } => return self.push_text(&cmd, &text),
            Frame::DirectStream { cmd, data } => return self.push_data(&cmd, &data),
            Frame::Signal { name, code } => return self.push_signal(&name, code),
            other => tracing::debug!(frame = ?other, "zs-web: frame for a WebSocket peer dropped"),
        }
        Ok(())
    }

    fn closed(&self, reason: &str) {
        let code = if reason.contains("shut down") {
            1001
        } else {
            1000
        };
        self.kill(End::Close(code, short(reason)));
    }
}

/// Remote: answers of the bridged session's calls.
impl ReplySink for Conn {
    fn on_reply(&self, tag: u64, r: zs_core::Result<Reply>) {
        self.answer(tag, r.map_err(WsError::from));
    }
}

/// Where a session's requests go.
enum Up {
    Local(LocalConn),
    Remote(Arc<Client>, Arc<dyn ReplySink>),
}

impl Up {
    fn close(&self) {
        match self {
            Up::Local(c) => c.close(),
            Up::Remote(c, _) => c.close(),
        }
    }
}

/// Opens the server side of a session: an in-process connection, or a
/// bridged client session (blocking handshake, on the blocking pool) whose
/// pushes reach `conn`.
async fn open(s: &Arc<Shared>, conn: &Arc<Conn>, addr: SocketAddr) -> Result<Up, String> {
    match &s.upstream.route {
        Route::InProcess(connect) => {
            let sink: Arc<dyn LocalSink> = conn.clone();
            connect(Some(addr), sink)
                .map(Up::Local)
                .map_err(|e| e.to_string())
        }
        Route::Remote(r) => {
            let _permit = s.bridging.acquire().await.map_err(|e| e.to_string())?;
            let mut reg = Registry::new();
            for name in s.cfg.pushes.iter() {
                let (c1, n1) = (conn.clone(), name.clone());
                reg.direct_console(name, move |peer, text| {
                    if c1.push_text(&n1, text).is_err() {
                        peer.close("zs-web: the WebSocket client does not read");
                    }
                });
                let c2 = conn.clone();
                let n2 = name.clone();
                reg.direct_stream(name, move |peer, data| {
                    if c2.push_data(&n2, data).is_err() {
                        peer.close("zs-web: the WebSocket client does not read");
                    }
                });
            }
            for name in s.cfg.signals.iter() {
                let (c, n) = (conn.clone(), name.clone());
                reg.signal(name, move |_, code| {
                    let _ = c.push_signal(&n, code);
                });
            }
            let r = (**r).clone();
            let client = tokio::task::spawn_blocking(move || {
                Client::connect(r.backend, reg, r.options, r.addr).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            let sink: Arc<dyn ReplySink> = conn.clone();
            Ok(Up::Remote(Arc::new(client), sink))
        }
    }
}

/// Runs one WebSocket session to its end.
pub(crate) async fn run(s: Arc<Shared>, mut ws: WebSocket, addr: SocketAddr, held: Held) {
    let conn = Arc::new(Conn::new(&s));
    let up = match open(&s, &conn, addr).await {
        Ok(u) => u,
        Err(e) => {
            s.stats.upstream_failures.fetch_add(1, Relaxed);
            tracing::warn!(%addr, "zs-web: cannot open the server session: {e}");
            let close = ws.send(Message::Close(Some(CloseFrame {
                code: 1013,
                reason: "server unavailable".into(),
            })));
            let _ = tokio::time::timeout(s.cfg.write_timeout, close).await;
            return;
        }
    };
    s.stats.opened.fetch_add(1, Relaxed);
    s.stats.open.fetch_add(1, Relaxed);
    if let Up::Remote(client, _) = &up {
        // Remote: a lost bridge session ends the WebSocket session, even
        // while its task is blocked writing to a client that does not read.
        let (client, weak) = (client.clone(), Arc::downgrade(&conn));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let Some(conn) = weak.upgrade() else { return };
                if conn.killed().is_some() {
                    return;
                }
                if !client.is_connected() {
                    conn.kill(End::Close(1012, "server session lost".into()));
                    return;
                }
            }
        });
    }
    let max_in_flight = match &up {
        Up::Local(l) => s.cfg.max_in_flight.min(l.max_in_flight()),
        Up::Remote(..) => s.cfg.max_in_flight,
    }
    .max(1);
    let limits = match &up {
        // The server's own bounds apply to what reaches its handlers.
        Up::Local(l) => tighter(&s.cfg.limits, &l.session_config().wire.limits),
        Up::Remote(..) => s.cfg.limits,
    };
    let mut t = Task {
        ws,
        conn: conn.clone(),
        up,
        addr,
        wt: s.cfg.write_timeout,
        ping: s.cfg.ping_interval,
        pong_timeout: s.cfg.pong_timeout,
        s: s.clone(),
        limits,
        max_in_flight,
        outstanding: 0,
        next_tag: 1,
        dirty: false,
        last_seen: Instant::now(),
        pinged: false,
        hists: HashMap::new(),
        spare: VecDeque::new(),
    };
    tracing::debug!(%addr, "zs-web: session open");
    let end = t.run().await;
    t.finish(end).await;
    t.up.close();
    // Late answers and queued output go nowhere now.
    {
        let mut q = lock(&conn.q);
        q.pending.clear();
        q.out.clear();
        if q.kill.is_none() {
            q.kill = Some(Kill(End::ClientGone));
        }
    }
    s.stats.open.fetch_sub(1, Relaxed);
    drop(held);
    tracing::debug!(%addr, "zs-web: session closed");
}

/// The smaller of each DataFrame decoding bound.
fn tighter(a: &zs_wire::Limits, b: &zs_wire::Limits) -> zs_wire::Limits {
    let mut l = *a;
    l.max_frame = a.max_frame.min(b.max_frame);
    l.max_values = a.max_values.min(b.max_values);
    l.max_depth = a.max_depth.min(b.max_depth);
    l.max_name = a.max_name.min(b.max_name);
    l.max_string = a.max_string.min(b.max_string);
    l.max_json = a.max_json.min(b.max_json);
    l
}

struct Task {
    ws: WebSocket,
    conn: Arc<Conn>,
    up: Up,
    addr: SocketAddr,
    s: Arc<Shared>,
    wt: Duration,
    ping: Option<Duration>,
    pong_timeout: Duration,
    limits: zs_wire::Limits,
    max_in_flight: usize,
    /// Requests read and not yet answered-and-written.
    outstanding: usize,
    next_tag: u64,
    /// Fed and not flushed.
    dirty: bool,
    /// When the client last sent anything.
    last_seen: Instant,
    /// A ping went out since then.
    pinged: bool,
    hists: HashMap<String, Arc<Histogram>>,
    spare: VecDeque<Out>,
}

/// Runs a write, ending early if the session is killed meanwhile or the
/// write takes longer than `wt` (the client does not read).
async fn guarded<F>(conn: &Conn, wt: Duration, f: F) -> Result<(), End>
where
    F: Future<Output = Result<(), axum::Error>>,
{
    tokio::pin!(f);
    // Most writes only fill tungstenite's buffer: no timer for those.
    if let Some(r) = f.as_mut().now_or_never() {
        return r.map_err(|_| End::Io);
    }
    let deadline = tokio::time::sleep(wt);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            r = &mut f => return r.map_err(|_| End::Io),
            _ = conn.wake.notified() => {
                if let Some(e) = conn.killed() {
                    return Err(e);
                }
            }
            _ = &mut deadline => {
                conn.stats.slow_readers.fetch_add(1, Relaxed);
                tracing::warn!("zs-web: a write stalled for {wt:?}: the client does not read; closing");
                return Err(End::SlowReader);
            }
        }
    }
}

impl Task {
    async fn run(&mut self) -> End {
        let tick_every = self.tick_every();
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(e) = self.conn.killed() {
                return e;
            }
            if let Err(e) = self.write_queued().await {
                return e;
            }
            let can_read = self.outstanding < self.max_in_flight;
            if can_read {
                if let Some(m) = self.ws.next().now_or_never() {
                    if let Err(e) = self.handle(m).await {
                        return e;
                    }
                    continue;
                }
            }
            if self.dirty {
                self.dirty = false;
                if let Err(e) = guarded(&self.conn, self.wt, self.ws.flush()).await {
                    return e;
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = self.conn.wake.notified() => {}
                m = self.ws.next(), if can_read => {
                    if let Err(e) = self.handle(m).await {
                        return e;
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.on_tick() {
                        return e;
                    }
                }
            }
        }
    }

    fn tick_every(&self) -> Duration {
        let mut t = Duration::from_secs(3600);
        if let Some(p) = self.ping {
            t = t.min(p / 4).min(self.pong_timeout / 4);
        }
        t.max(Duration::from_millis(5))
    }

    /// Pings and dead-peer detection.
    fn on_tick(&mut self) -> Result<(), End> {
        if self.outstanding >= self.max_in_flight {
            // Reading is paused at the in-flight cap: the client's pongs sit
            // unread, so its silence proves nothing until answers go out.
            self.last_seen = Instant::now();
            self.pinged = false;
            return Ok(());
        }
        if let Some(every) = self.ping {
            let idle = self.last_seen.elapsed();
            if idle >= every + self.pong_timeout {
                self.s.stats.dead_peers.fetch_add(1, Relaxed);
                tracing::info!(addr = %self.addr, ?idle, "zs-web: the client answers no ping: closing");
                return Err(End::Dead);
            }
            if idle >= every && !self.pinged {
                self.pinged = true;
                self.s.stats.pings.fetch_add(1, Relaxed);
                // Buffered; the loop flushes it.
                let _ = self
                    .ws
                    .start_send_unpin(Message::Ping(Bytes::from_static(b"zs")));
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Feeds everything queued for the client into the socket.
    async fn write_queued(&mut self) -> Result<(), End> {
        let mut batch = std::mem::take(&mut self.spare);
        {
            let mut q = lock(&self.conn.q);
            if q.out.is_empty() {
                self.spare = batch;
                return Ok(());
            }
            std::mem::swap(&mut q.out, &mut batch);
        }
        let (mut answers, mut pushes) = (0usize, 0usize);
        let n = batch.len() as u64;
        let mut r = Ok(());
        for o in batch.drain(..) {
            let m = match o {
                Out::Answer(m) => {
                    answers += 1;
                    m
                }
                Out::Push(m) => {
                    pushes += 1;
                    m
                }
            };
            r = guarded(&self.conn, self.wt, self.ws.feed(m)).await;
            if r.is_err() {
                break;
            }
        }
        self.spare = batch;
        self.outstanding = self.outstanding.saturating_sub(answers);
        lock(&self.conn.q).pushes -= pushes;
        self.s.stats.messages_out.fetch_add(n, Relaxed);
        self.dirty = true;
        r
    }

    /// One message from the client.
    async fn handle(&mut self, m: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let m = match m {
            None => return Err(End::ClientGone),
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Oversized message, bad frame, bad UTF-8...: tungstenite
                // refuses it before buffering beyond the limit.
                self.s.stats.protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!(addr = %self.addr, "zs-web: WebSocket error, closing: {e}");
                let text = short(&e.to_string());
                return Err(End::Close(close_code(e), text));
            }
        };
        self.last_seen = Instant::now();
        self.pinged = false;
        self.s.stats.messages_in.fetch_add(1, Relaxed);
        let req = match &m {
            Message::Text(t) => json::parse_text(t.as_str(), &self.limits),
            Message::Binary(b) => json::parse_binary(b, &self.limits),
            Message::Ping(_) => {
                // tungstenite queued the pong: flush it.
                self.dirty = true;
                return Ok(());
            }
            Message::Pong(_) => return Ok(()),
            Message::Close(_) => return Err(End::ClientGone),
        };
        match req {
            Ok(r) => self.dispatch(r).await,
            Err((id, e)) => {
                self.s.stats.bad_messages.fetch_add(1, Relaxed);
                tracing::debug!(addr = %self.addr, "zs-web: bad message: {}", e.message);
                self.reply_now(json::error_reply(id, &e)).await
            }
        }
    }

    /// Writes an answer made here (not by the server).
    async fn reply_now(&mut self, text: String) -> Result<(), End> {
        self.dirty = true;
        self.s.stats.messages_out.fetch_add(1, Relaxed);
        guarded(
            &self.conn,
            self.wt,
            self.ws.feed(Message::Text(text.into())),
        )
        .await
    }

    fn hist(&mut self, cmd: &str) -> Arc<Histogram> {
        if let Some(h) = self.hists.get(cmd) {
            return h.clone();
        }
        let h = self.s.stats.histogram(cmd);
        if self.hists.len() < HIST_CACHE {
            self.hists.insert(cmd.to_owned(), h.clone());
        }
        h
    }

    /// Registers request `id` and returns its tag.
    fn pend(&mut self, id: u64, cmd: &str, binary: bool) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        let hist = self.hist(cmd);
        lock(&self.conn.q).pending.insert(
            tag,
            Pending {
                id,
                binary,
                hist,
                started: Instant::now(),
            },
        );
        self.outstanding += 1;
        tag
    }

    async fn dispatch(&mut self, req: WsRequest) -> Result<(), End> {
        match req {
            WsRequest::Call { id, cmd, text } => {
                let tag = self.pend(id, &cmd, false);
                match &self.up {
                    Up::Local(l) => l.request(Request::Console {
                        id: tag,
                        cmd: Text::from(cmd),
                        text: Text::from(text),
                    }),
                    Up::Remote(c, sink) => c.call_to(
                        Call::Console {
                            cmd: Text::from(cmd),
                            text: Text::from(text),
                        },
                        None,
                        sink,
                        tag,
                    ),
                }
            }
            WsRequest::Stream {
                id,
                cmd,
                data,
                binary,
            } => {
                let tag = self.pend(id, &cmd, binary);
                match &self.up {
                    Up::Local(l) => l.request(Request::Stream {
                        id: tag,
                        cmd: Text::from(cmd),
                        data,
                    }),
                    Up::Remote(c, sink) => c.call_to(
                        Call::Stream {
                            cmd: Text::from(cmd),
                            data,
                        },
                        None,
                        sink,
                        tag,
                    ),
                }
            }
            WsRequest::SendText { cmd, text } => {
                let r = match &self.up {
                    Up::Local(l) => {
                        l.request(Request::DirectConsole {
                            cmd: Text::from(cmd),
                            text: Text::from(text),
                        });
                        Ok(())
                    }
                    Up::Remote(c, _) => c.send_direct_console(&cmd, &text),
                };
                if let Err(e) = r {
                    return self
                        .reply_now(json::error_reply(None, &WsError::from(e)))
                        .await;
                }
            }
            WsRequest::SendData { cmd, data } => {
                let r = match &self.up {
                    Up::Local(l) => {
                        l.request(Request::DirectStream {
                            cmd: Text::from(cmd),
                            data,
                        });
                        Ok(())
                    }
                    Up::Remote(c, _) => c.send_direct_stream(&cmd, data),
                };
                if let Err(e) = r {
                    return self
                        .reply_now(json::error_reply(None, &WsError::from(e)))
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Says goodbye as `end` warrants, within bounds.
    async fn finish(&mut self, end: End) {
        let grace = self.wt.min(Duration::from_secs(2));
        match end {
            // It does not read, or is gone: nothing can be delivered.
            End::SlowReader | End::Dead | End::Io => {}
            End::ClientGone => {
                // Answers already queued, and tungstenite's reply to a
                // close, go out if the client still reads.
                let _ = tokio::time::timeout(grace, async {
                    self.drain_plain().await?;
                    self.ws.flush().await
                })
                .await;
            }
            End::Close(code, reason) => {
                // What the server sent before closing (a `user.kicked`
                // signal, say) goes first.
                let close = Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                let _ = tokio::time::timeout(grace, async {
                    self.drain_plain().await?;
                    self.ws.send(close).await
                })
                .await;
            }
        }
    }

    /// Feeds what is queued, without the kill check (the session is ending).
    async fn drain_plain(&mut self) -> Result<(), axum::Error> {
        let out = std::mem::take(&mut lock(&self.conn.q).out);
        for o in out {
            let (Out::Answer(m) | Out::Push(m)) = o;
            self.ws.feed(m).await?;
        }
        Ok(())
    }
}

/// The RFC 6455 close code for a receive error: 1009 (too big), 1007
/// (invalid UTF-8 in a text message), else 1002 (protocol error).
fn close_code(e: axum::Error) -> u16 {
    use tokio_tungstenite::tungstenite::Error as T;
    match e.into_inner().downcast_ref::<T>() {
        Some(T::Capacity(_)) => 1009,
        Some(T::Utf8(_)) => 1007,
        _ => 1002,
    }
}

/// A close reason is at most 123 bytes.
fn short(s: &str) -> String {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
