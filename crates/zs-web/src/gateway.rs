//! The HTTP listener, the WebSocket sessions and their bridge to the server.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
    pub(crate) bridging: Semaphore,
    /// `cfg.pushes`, lower-cased (command names are case-insensitive).
    pub(crate) pushes: Arc<[String]>,
    /// `cfg.signals`, lower-cased.
    pub(crate) signals: Arc<[String]>,
    started: Instant,
}

/// One accepted TCP connection's admission slot; released when the last
/// holder drops it (the HTTP connection task, and the WebSocket session an
/// upgrade hands it to: the socket stays counted while the session lives).
pub(crate) struct Slot {
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
            pushes: cfg.pushes.iter().map(|p| p.to_ascii_lowercase()).collect(),
            signals: cfg.signals.iter().map(|p| p.to_ascii_lowercase()).collect(),
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

/// The extra panels, cut to [`crate::PANEL_LIMITS`].
fn panels(s: &Shared) -> Vec<crate::Panel> {
    let (max_panels, max_rows, max_cell) = crate::PANEL_LIMITS;
    let cut = |t: &mut String| {
        if t.len() > max_cell {
            let mut end = max_cell;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
        }
    };
    let mut v = s.upstream.panels.as_ref().map(|f| f()).unwrap_or_default();
    v.truncate(max_panels);
    for p in &mut v {
        cut(&mut p.title);
        p.columns.truncate(32);
        p.columns.iter_mut().for_each(cut);
        p.rows.truncate(max_rows);
        for r in &mut p.rows {
            r.truncate(32);
            r.iter_mut().for_each(cut);
        }
    }
    v
}

async fn stats_handler(State(s): State<Arc<Shared>>) -> Response {
    let server = s.upstream.stats.as_ref().and_then(|f| f());
    let panels = panels(&s);
    let body = serde_json::json!({
        "uptime_ms": s.started.elapsed().as_millis() as u64,
        "web": s.stats.snapshot(),
        "panels": panels,
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

/// The admission slot of the TCP connection a request came on.
#[derive(Clone)]
pub(crate) struct Held {
    _slot: Arc<Slot>,
}

async fn ws_handler(
    State(s): State<Arc<Shared>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    axum::Extension(held): axum::Extension<Held>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = s.cfg.max_message;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!("zs-web: upgrade failed: {e}"))
        .on_upgrade(move |socket| crate::session::run(s, socket, addr, held))
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
        let held = Held {
            _slot: Arc::new(slot),
        };
        tokio::spawn(async move {
            let tower = hyper_util::service::TowerToHyperService::new(app);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(addr));
                    req.extensions_mut().insert(held.clone());
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
