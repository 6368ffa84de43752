//! The HTTP listener, the WebSocket sessions and their bridge to the server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use zs_core::{Client, Registry};

use crate::json::{self, op, WsError, WsRequest};
use crate::metrics::{Metrics, WebStats};
use crate::{assets, Config, Upstream};

/// Shared by the accept loop and every handler.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) upstream: Upstream,
    pub(crate) stats: Arc<WebStats>,
    pub(crate) metrics: Arc<Metrics>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    conns: Mutex<usize>,
    bridging: Semaphore,
    started: Instant,
}

/// One accepted TCP connection's admission slot; released on drop.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        let mut m = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    pub(crate) fn new(cfg: Config, upstream: Upstream) -> Arc<Shared> {
        let stats = Arc::new(WebStats::default());
        let metrics = Arc::new(Metrics {
            web: stats.clone(),
            server: upstream.stats.clone(),
        });
        Arc::new(Shared {
            bridging: Semaphore::new(cfg.max_bridging.max(1)),
            cfg,
            upstream,
            stats,
            metrics,
            per_ip: Mutex::new(HashMap::new()),
            conns: Mutex::new(0),
            started: Instant::now(),
        })
    }

    fn admit(self: &Arc<Shared>, ip: IpAddr) -> Option<Slot> {
        let mut total = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if *total >= self.cfg.max_connections {
            self.stats.refused_total_cap.fetch_add(1, Relaxed);
            tracing::warn!(%ip, cap = self.cfg.max_connections, "zs-web: connection refused: process cap");
            return None;
        }
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.cfg.max_connections_per_ip {
            self.stats.refused_ip_cap.fetch_add(1, Relaxed);
            tracing::warn!(%ip, cap = self.cfg.max_connections_per_ip, "zs-web: connection refused: per-IP cap");
            return None;
        }
        *n += 1;
        *total += 1;
        Some(Slot {
            shared: self.clone(),
            ip,
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { html(assets::DASHBOARD_HTML) }))
        .route("/dashboard", get(|| async { html(assets::DASHBOARD_HTML) }))
        .route("/zs.js", get(|| async { js(assets::ZS_JS) }))
        .route("/dashboard.js", get(|| async { js(assets::DASHBOARD_JS) }))
        .route(
            "/vendor/uPlot.iife.min.js",
            get(|| async { js(assets::UPLOT_JS) }),
        )
        .route(
            "/vendor/uPlot.min.css",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                    assets::UPLOT_CSS,
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_handler))
        .route("/api/stats", get(stats_handler))
        .route("/ws", get(ws_handler))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            count_requests,
        ))
        .with_state(shared)
}

async fn count_requests(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    s.stats.http_requests.fetch_add(1, Relaxed);
    let h = req.headers();
    // Request smuggling: a body framed two ways (RFC 9112 §6.1 lets a server
    // reject it; we do), or a transfer coding other than a final "chunked".
    let te = h.get_all(header::TRANSFER_ENCODING).iter().count();
    if te > 0 && h.contains_key(header::CONTENT_LENGTH) {
        return refuse("Content-Length and Transfer-Encoding together");
    }
    if te > 1
        || h.get(header::TRANSFER_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return refuse("unsupported Transfer-Encoding");
    }
    next.run(req).await
}

fn refuse(why: &'static str) -> Response {
    tracing::warn!("zs-web: HTTP request refused: {why}");
    (
        axum::http::StatusCode::BAD_REQUEST,
        [(header::CONNECTION, "close")],
        why,
    )
        .into_response()
}

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn js(body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn metrics_handler(State(s): State<Arc<Shared>>) -> Response {
    let body = crate::metrics::render(&s.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn stats_handler(State(s): State<Arc<Shared>>) -> Response {
    let server = s.upstream.stats.as_ref().and_then(|f| f());
    let body = serde_json::json!({
        "uptime_ms": s.started.elapsed().as_millis() as u64,
        "web": s.stats.snapshot(),
        "server": server.map(|st| serde_json::json!({
            "connections_opened": st.connections_opened,
            "connections_open": st.connections_open,
            "bytes_in": st.bytes_in,
            "bytes_out": st.bytes_out,
            "unknown_commands": st.unknown_commands,
            "protocol_errors": st.protocol_errors,
            "refused_connections": st.refused_connections,
            "busy_refusals": st.busy_refusals,
            "reads_paused": st.reads_paused,
            "stable_sessions": st.stable_sessions,
            "stable_resumed": st.stable_resumed,
            "stable_expired": st.stable_expired,
            "stable_evicted": st.stable_evicted,
            "stable_rejected": st.stable_rejected,
            "stable_unacked_bytes": st.stable_unacked_bytes,
            "commands": st.commands.iter().map(|c| serde_json::json!({
                "name": c.name, "kind": c.kind, "calls": c.calls, "errors": c.errors,
                "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
                "p50_us": c.p50_us, "p90_us": c.p90_us, "p99_us": c.p99_us, "max_us": c.max_us,
            })).collect::<Vec<_>>(),
        })),
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn ws_handler(
    State(s): State<Arc<Shared>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = s.cfg.max_message;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!("zs-web: upgrade failed: {e}"))
        .on_upgrade(move |socket| session(s, socket, addr))
}

/// Most queued messages written with one flush.
const WRITE_BATCH: usize = 64;

/// What the writer task sends.
enum Out {
    Msg(Message),
    Close(u16, String),
}

/// Runs the accept loop until `stop` fires.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(shared.clone());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("zs-web: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = shared.admit(addr.ip()) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let header_timeout = shared.cfg.header_timeout;
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tower = hyper_util::service::TowerToHyperService::new(app);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(addr));
                    hyper::service::Service::call(&tower, req)
                },
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .keep_alive(true);
            match tls {
                None => {
                    let conn = http
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%addr, "zs-web: http: {e}") },
                        _ = stop.changed() => {}
                    }
                }
                Some(acc) => {
                    let tls = match tokio::time::timeout(header_timeout, acc.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, "zs-web: TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "zs-web: TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = http
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%addr, "zs-web: http: {e}") },
                        _ = stop.changed() => {}
                    }
                }
            }
        });
    }
}

/// Opens the server session for one WebSocket (blocking handshake, on the
/// blocking pool), with `pushes` forwarded to `tx`.
async fn open_upstream(s: &Arc<Shared>, tx: mpsc::Sender<Out>) -> Result<Client, String> {
    let _permit = s.bridging.acquire().await.map_err(|e| e.to_string())?;
    let mut reg = Registry::new();
    for name in &s.cfg.pushes {
        let (t1, t2, st1, st2) = (tx.clone(), tx.clone(), s.stats.clone(), s.stats.clone());
        let n1 = name.clone();
        reg.direct_console(name, move |peer, text| {
            forward_push(
                &t1,
                &st1,
                peer,
                Message::Text(json::text_push(&n1, text).into()),
            )
        });
        let n2 = name.clone();
        reg.direct_stream(name, move |peer, data| {
            forward_push(
                &t2,
                &st2,
                peer,
                Message::Binary(json::binary_message(op::PUSH, 0, &n2, data)),
            )
        });
    }
    let up = s.upstream.clone();
    tokio::task::spawn_blocking(move || {
        Client::connect(up.backend, up.security, reg, up.options, up.addr)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn forward_push(tx: &mpsc::Sender<Out>, st: &WebStats, peer: &zs_core::Peer, m: Message) {
    match tx.try_send(Out::Msg(m)) {
        Ok(()) => {
            st.pushes.fetch_add(1, Relaxed);
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            st.slow_readers.fetch_add(1, Relaxed);
            tracing::warn!(
                peer = peer.id(),
                "zs-web: client does not read its pushes: closing"
            );
            let _ = tx.try_send(Out::Close(
                1008,
                "send queue full: the client does not read".into(),
            ));
            // The writer closes on the next free slot; close the upstream too.
            peer.close("zs-web: WebSocket client does not read");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

async fn session(s: Arc<Shared>, socket: WebSocket, addr: SocketAddr) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Out>(s.cfg.send_queue.max(2));
    let client = match open_upstream(&s, tx.clone()).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            s.stats.upstream_failures.fetch_add(1, Relaxed);
            tracing::warn!(%addr, "zs-web: cannot open the server session: {e}");
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1013,
                    reason: "server unavailable".into(),
                })))
                .await;
            return;
        }
    };
    s.stats.opened.fetch_add(1, Relaxed);
    s.stats.open.fetch_add(1, Relaxed);
    tracing::debug!(%addr, peer = client.peer().id(), "zs-web: session open");

    // Writer: everything to the client goes through the bounded queue; a write
    // that does not complete within the write timeout closes the connection.
    let ws = s.clone();
    let writer = tokio::spawn(async move {
        let wt = ws.cfg.write_timeout;
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while let Some(first) = rx.recv().await {
            // Whatever is queued goes out in one flush (one write syscall for
            // a pipelining client instead of one per message).
            batch.push(first);
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            let mut last = false;
            let write = async {
                for out in batch.drain(..) {
                    let msg = match out {
                        Out::Msg(m) => m,
                        Out::Close(code, reason) => {
                            last = true;
                            Message::Close(Some(CloseFrame {
                                code,
                                reason: reason.into(),
                            }))
                        }
                    };
                    sink.feed(msg).await?;
                    if last {
                        break;
                    }
                }
                sink.flush().await
            };
            match tokio::time::timeout(wt, write).await {
                Ok(Ok(())) => {
                    ws.stats.messages_out.fetch_add(n, Relaxed);
                }
                Ok(Err(_)) => return,
                Err(_) => {
                    ws.stats.slow_readers.fetch_add(1, Relaxed);
                    tracing::warn!(%addr, "zs-web: write stalled for {wt:?}: the client does not read; closing");
                    return;
                }
            }
            if last {
                return;
            }
        }
    });

    let wabort = writer.abort_handle();
    let in_flight = Arc::new(Semaphore::new(s.cfg.max_in_flight.max(1)));
    let limits = s.cfg.limits;
    let mut watchdog = tokio::time::interval(Duration::from_millis(250));
    loop {
        // Back-pressure: at the in-flight cap, stop reading until an answer goes out.
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => p.expect("never closed"),
            _ = watchdog.tick() => {
                if !client.is_connected() { close(&tx, &wabort, 1012, "server session lost"); break; }
                continue;
            }
        };
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = watchdog.tick() => {
                if !client.is_connected() { close(&tx, &wabort, 1012, "server session lost"); break; }
                drop(permit);
                continue;
            }
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                // Oversized message, bad frame, bad UTF-8...: tungstenite
                // refuses it before buffering beyond the limit.
                s.stats.protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!(%addr, "zs-web: WebSocket error, closing: {e}");
                let text = short(&e.to_string());
                close(&tx, &wabort, close_code(e), &text);
                break;
            }
            None => break,
        };
        s.stats.messages_in.fetch_add(1, Relaxed);
        if writer.is_finished() {
            break;
        }
        let req = match msg {
            Message::Text(t) => json::parse_text(t.as_str(), &limits),
            Message::Binary(b) => json::parse_binary(&b, &limits),
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => break,
        };
        let req = match req {
            Ok(r) => r,
            Err((id, e)) => {
                s.stats.bad_messages.fetch_add(1, Relaxed);
                tracing::debug!(%addr, "zs-web: bad message: {}", e.message);
                if enqueue(&tx, Message::Text(json::error_reply(id, &e).into()))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        dispatch(&s, &client, &tx, req, permit);
    }
    drop(tx);
    // Let queued answers go out (bounded by the write timeout), then end.
    let _ = tokio::time::timeout(s.cfg.write_timeout, writer).await;
    client.close();
    s.stats.open.fetch_sub(1, Relaxed);
    tracing::debug!(%addr, "zs-web: session closed");
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

fn short(s: &str) -> String {
    // A close reason is at most 123 bytes.
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Queues a close frame; if the queue is full the client is not reading, so
/// the writer is aborted (the socket dropped) instead of waiting for it.
fn close(tx: &mpsc::Sender<Out>, writer: &tokio::task::AbortHandle, code: u16, reason: &str) {
    if tx.try_send(Out::Close(code, reason.to_owned())).is_err() {
        writer.abort();
    }
}

async fn enqueue(tx: &mpsc::Sender<Out>, m: Message) -> Result<(), ()> {
    tx.send(Out::Msg(m)).await.map_err(|_| ())
}

fn dispatch(
    s: &Arc<Shared>,
    client: &Arc<Client>,
    tx: &mpsc::Sender<Out>,
    req: WsRequest,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let stats = s.stats.clone();
    let tx = tx.clone();
    match req {
        WsRequest::Call { id, cmd, text } => {
            let fut = client.call(&cmd, &text);
            tokio::spawn(async move {
                let out = match fut.await {
                    Ok(t) => json::text_reply(id, &t),
                    Err(e) => json::error_reply(Some(id), &WsError::from(e)),
                };
                stats.observe_call(&cmd, started.elapsed());
                let _ = tx.send(Out::Msg(Message::Text(out.into()))).await;
                drop(permit);
            });
        }
        WsRequest::Stream {
            id,
            cmd,
            data,
            binary,
        } => {
            let fut = client.call_stream(&cmd, data);
            tokio::spawn(async move {
                let out = match fut.await {
                    Ok(d) if binary => Message::Binary(json::binary_message(op::REPLY, id, "", &d)),
                    Ok(d) => Message::Text(json::data_reply(id, &d).into()),
                    Err(e) => Message::Text(json::error_reply(Some(id), &WsError::from(e)).into()),
                };
                stats.observe_call(&cmd, started.elapsed());
                let _ = tx.send(Out::Msg(out)).await;
                drop(permit);
            });
        }
        WsRequest::SendText { cmd, text } => {
            if let Err(e) = client.send_direct_console(&cmd, &text) {
                let _ = tx.try_send(Out::Msg(Message::Text(
                    json::error_reply(None, &WsError::from(e)).into(),
                )));
            }
        }
        WsRequest::SendData { cmd, data } => {
            if let Err(e) = client.send_direct_stream(&cmd, data) {
                let _ = tx.try_send(Out::Msg(Message::Text(
                    json::error_reply(None, &WsError::from(e)).into(),
                )));
            }
        }
    }
}
