//! The HTTP API: Prometheus metrics, health and readiness, the streams (listed, added and removed at
//! run time), recent events, snapshots and MJPEG live views, and a self-contained live page. It runs
//! on its own small tokio runtime beside the pipeline's threads and sees the pipeline only through
//! the `Hub` (an observer) and a `Control` handle.

mod config;
pub mod hub;
pub mod metrics;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;

pub use config::HttpConfig;
use hub::Hub;
pub use metrics::QueueGauge;

use crate::error::{Error, Result};
use crate::pipeline::config::SourceConfig;
use crate::pipeline::control::{check_name, Control, ControlError};

/// Request bodies larger than this are refused (413).
const BODY_LIMIT: usize = 16 * 1024;

#[derive(Clone)]
struct App {
    hub: Arc<Hub>,
    control: Option<Control>,
    token: Option<Arc<str>>,
    /// Beyond loopback: the token guards every route, not only the changes.
    guard_all: bool,
    mqtt: Option<Arc<dyn QueueGauge>>,
    shutdown: watch::Receiver<bool>,
}

/// A running API server; dropping it stops it (live views are closed, not waited for).
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds now (a taken port fails here) and serves on a thread of its own.
    pub fn start(
        cfg: &HttpConfig,
        hub: Arc<Hub>,
        control: Option<Control>,
        mqtt: Option<Arc<dyn QueueGauge>>,
    ) -> Result<HttpServer> {
        cfg.validate()?;
        let addr = cfg
            .address()?
            .ok_or_else(|| Error::Config("http.listen is not set".into()))?;
        let token = cfg.token()?.map(Arc::from);
        let guard_all = !addr.ip().is_loopback();
        if guard_all && token.is_none() {
            return Err(Error::Config(format!(
                "http.listen {addr} is reachable from other machines: set http.token_env or \
                 http.token_file (a bearer token), or listen on 127.0.0.1"
            )));
        }
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| Error::Config(format!("http.listen {addr}: cannot listen: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io_op(addr.to_string(), "use the socket", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io_op(addr.to_string(), "use the socket", e))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = App {
            hub,
            control,
            token,
            guard_all,
            mqtt,
            shutdown: shutdown_rx.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("http")
            .enable_all()
            .build()
            .map_err(|e| Error::Pipeline(format!("HTTP runtime: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || serve(runtime, listener, app, shutdown_rx))
            .map_err(|e| Error::Pipeline(format!("starting the HTTP thread: {e}")))?;
        tracing::info!(%addr, "HTTP API listening");
        Ok(HttpServer {
            addr,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    app: App,
    shutdown: watch::Receiver<bool>,
) {
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "HTTP API: cannot use the socket");
                return;
            }
        };
        let mut stopping = shutdown.clone();
        tokio::select! {
            _ = accept(listener, router(app), shutdown) => {}
            // slow clients get 2 s after the stop, then are cut off
            _ = async {
                let _ = stopping.wait_for(|s| *s).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            } => {}
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// Connections open at once; one more is closed at once. Each holds a file descriptor, which the
/// run needs for its cameras and files.
pub const MAX_CONNECTIONS: usize = 256;
/// A request's headers must have come within this (a client that sends them byte by byte, or never,
/// holds no connection for longer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves each connection on its own task (HTTP/1.1, as axum::serve does) with a bound on the
/// connections and on the time their headers take, which axum::serve has no setting for; until
/// `shutdown`, then lets the open ones finish their requests.
async fn accept(listener: tokio::net::TcpListener, app: Router, shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut stop = shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // out of file descriptors, or a connection reset before it was taken: go on
                    tracing::warn!(error = %e, "HTTP API: accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "HTTP API: {MAX_CONNECTIONS} connections open, closing another");
            continue;
        };
        // live pictures go out as they come, not held back to fill a packet
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/streams", get(list_streams).post(add_stream))
        .route("/api/streams/{name}", get(one_stream).delete(remove_stream))
        .route("/api/streams/{name}/snapshot.jpg", get(snapshot))
        .route("/api/streams/{name}/live.mjpeg", get(live_mjpeg))
        .route("/api/events", get(events))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// A JSON error body: `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The request's Host is `localhost` or an IP address (any port), or absent (HTTP/1.0 clients).
fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Bearer token check: always for changes, for everything beyond loopback. The page and its images
/// can pass it as `?token=` (a browser cannot add headers to an <img>).
async fn authorize(State(app): State<App>, req: Request, next: Next) -> Response {
    if !app.guard_all && !local_host(req.headers()) {
        // DNS rebinding: a web page the user opens resolves its own name to 127.0.0.1 and reads
        // the open routes from the browser; such requests carry that name in Host
        return error(
            StatusCode::FORBIDDEN,
            "on a loopback address the API answers requests to localhost or an IP address only",
        );
    }
    let changes = matches!(*req.method(), Method::POST | Method::DELETE | Method::PUT);
    if !changes && !app.guard_all {
        return next.run(req).await;
    }
    let Some(want) = app.token.as_deref() else {
        return error(
            StatusCode::FORBIDDEN,
            "adding and removing streams needs a token: set http.token_env or http.token_file",
        );
    };
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let query_token = Query::<TokenQuery>::try_from_uri(req.uri())
        .ok()
        .and_then(|q| q.0.token);
    let given = header_token.or(query_token);
    if given
        .as_deref()
        .is_some_and(|g| same(g.as_bytes(), want.as_bytes()))
    {
        return next.run(req).await;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        if given.is_some() {
            "wrong token"
        } else {
            "a bearer token is required (Authorization: Bearer ...)"
        },
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Constant-time comparison (no early exit on the first differing byte).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn readyz(State(app): State<App>) -> Response {
    match app.hub.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text(State(app): State<App>) -> Response {
    match metrics::render(&app.hub, app.mqtt.as_deref()) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

async fn list_streams(State(app): State<App>) -> Response {
    Json(app.hub.streams()).into_response()
}

async fn one_stream(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.hub.stream(&name) {
        Some(s) => Json(s).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no stream named {name}")),
    }
}

fn control_error(e: ControlError) -> Response {
    let status = match e {
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}

async fn add_stream(
    State(app): State<App>,
    body: std::result::Result<Json<SourceConfig>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(source) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                e.status(),
                &format!(
                    "expected a JSON body like {{\"uri\": \"rtsp://...\", \"name\": \"cam1\"}}: {}",
                    e.body_text()
                ),
            )
        }
    };
    let Some(control) = app.control.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this run cannot add streams (batch)",
        );
    };
    if let Some(n) = &source.name {
        if let Err(e) = check_name(n) {
            return control_error(e);
        }
    }
    let result = tokio::task::spawn_blocking(move || control.add(source)).await;
    match result {
        Ok(Ok(name)) => match app.hub.stream(&name) {
            Some(view) => (StatusCode::CREATED, Json(view)).into_response(),
            None => (
                StatusCode::CREATED,
                Json(serde_json::json!({ "name": name })),
            )
                .into_response(),
        },
        Ok(Err(e)) => control_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn remove_stream(State(app): State<App>, Path(name): Path<String>) -> Response {
    let Some(control) = app.control.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this run cannot remove streams (batch)",
        );
    };
    if app.hub.stream(&name).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no stream named {name}"));
    }
    app.hub.removing(&name);
    let n = name.clone();
    match tokio::task::spawn_blocking(move || control.remove(&n)).await {
        Ok(Ok(())) => match app.hub.stream(&name) {
            Some(view) => Json(view).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        Ok(Err(e)) => control_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    limit: Option<usize>,
    token: Option<String>,
}

async fn events(
    State(app): State<App>,
    q: std::result::Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let limit = match q {
        Ok(Query(q)) => {
            let _ = q.token;
            q.limit.unwrap_or(50).min(hub::RECENT_EVENTS)
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.body_text()),
    };
    Json(app.hub.events(limit)).into_response()
}

/// The stream's latest annotated frame as JPEG.
async fn snapshot(State(app): State<App>, Path(name): Path<String>) -> Response {
    let Some(rx) = app.hub.pixels(&name) else {
        return error(StatusCode::NOT_FOUND, &format!("no stream named {name}"));
    };
    let Some(snap) = rx.borrow().clone() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no frame yet");
    };
    match tokio::task::spawn_blocking(move || snap.jpeg()).await {
        Ok(Some(jpeg)) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            jpeg,
        )
            .into_response(),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "JPEG encoding failed"),
    }
}

const BOUNDARY: &str = "maskstreamframe";

/// multipart/x-mixed-replace JPEGs: each viewer gets the newest frame when it is ready for one, so a
/// slow viewer skips frames instead of queueing them (and costs no memory beyond one frame).
async fn live_mjpeg(State(app): State<App>, Path(name): Path<String>) -> Response {
    let Some(rx) = app.hub.pixels(&name) else {
        return error(StatusCode::NOT_FOUND, &format!("no stream named {name}"));
    };
    let shutdown = app.shutdown.clone();
    let hub = app.hub.clone();
    let parts = futures_util::stream::unfold(
        (rx, shutdown, u64::MAX),
        move |(mut rx, mut shutdown, last)| {
            let (hub, name) = (hub.clone(), name.clone());
            async move {
                loop {
                    let current = rx.borrow_and_update().clone();
                    if let Some(snap) = current.filter(|s| s.seq != last) {
                        let seq = snap.seq;
                        let jpeg = tokio::task::spawn_blocking(move || snap.jpeg())
                            .await
                            .ok()
                            .flatten()?;
                        let mut part = format!(
                        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                        jpeg.len()
                    )
                        .into_bytes();
                        part.extend_from_slice(&jpeg);
                        part.extend_from_slice(b"\r\n");
                        let chunk: std::result::Result<bytes::Bytes, std::io::Error> =
                            Ok(bytes::Bytes::from(part));
                        return Some((chunk, (rx, shutdown, seq)));
                    }
                    tokio::select! {
                        r = rx.changed() => r.ok()?,
                        _ = shutdown.wait_for(|s| *s) => return None,
                        // an ended stream sends no more frames: the response ends, not the viewer's wait
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {
                            if hub.has_ended(&name) {
                                return None;
                            }
                        }
                    }
                }
            }
        },
    );
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/x-mixed-replace; boundary={BOUNDARY}"))
    {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (headers, Body::from_stream(parts)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_answers_local_host_names_only() {
        let with = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            local_host(&m)
        };
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:9",
            "[::1]:8080",
            "[::1]",
            "10.0.0.2",
        ] {
            assert!(with(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "[evil]:80",
            "",
        ] {
            assert!(!with(bad), "{bad}");
        }
        assert!(local_host(&HeaderMap::new()));
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
