//! The admin listener: Prometheus metrics, health endpoints, the status API and page,
//! and runtime control (drain, disable, enable, reload).
//!
//! A deliberately small HTTP/1.1 server: one request per connection, bounded in size
//! and time, because it serves a scraper, a browser and `gatehouse ctl`, not the
//! internet. Reading is open; changing state is allowed from loopback only, or, when
//! the operator set `[admin] token_file`, only with that token (from anywhere).
//!
//! It reaches the running gatehouse only through [`Control`], never the app itself.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::control::{AdminHandle, Control};
use crate::runtime::{AdminState, Server, Snapshot};

const MAX_REQUEST: usize = 16 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CLIENTS: usize = crate::control::ADMIN_MAX_CLIENTS;
const STATUS_PAGE: &str = include_str!("admin/status.html");

/// Binds the admin listener and serves it until dropped.
pub fn start(addr: SocketAddr, app: Weak<dyn Control>) -> std::io::Result<AdminHandle> {
    let socket = crate::listener::bind(addr, 1)?
        .pop()
        .ok_or_else(|| std::io::Error::other("no socket"))?;
    let local = socket.local_addr()?;
    let listener = TcpListener::from_std(socket)?;
    tracing::info!(%local, "admin listening");
    // Clients that connect and stall cost a slot for REQUEST_TIMEOUT at most, and never
    // more than MAX_CLIENTS slots at once: the proxy's own file descriptors stay free.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Counted, logged at most once a second, and a pause: never a spin.
                    crate::listener::accept_failed("admin listener", &e).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "admin: too many clients at once; closing");
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, serve(stream, peer, app)).await {
                    tracing::debug!(%peer, "admin request timed out: {e}");
                }
                drop(slot);
            });
        }
    });
    Ok(AdminHandle::new(addr, local, task))
}

struct Request {
    method: String,
    path: String,
    token: Option<String>,
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, value: &Value) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(value).unwrap_or_default(),
        }
    }

    fn text(status: u16, text: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.into().into_bytes(),
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Self {
        Response::json(status, &json!({ "error": message.into() }))
    }
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, app: Weak<dyn Control>) {
    let response = match read_request(&mut stream).await {
        Ok(req) => match app.upgrade() {
            Some(app) => route(&app, &req, peer).await,
            None => Response::error(503, "shutting down"),
        },
        Err(e) => Response::error(400, e),
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&response.body).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the request was complete".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_REQUEST {
            return Err("request too large".into());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "request is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(_version)) = (first.next(), first.next(), first.next()) else {
        return Err("malformed request line".into());
    };
    let mut token = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                token = value.trim().strip_prefix("Bearer ").map(|t| t.trim().to_string());
            }
        }
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    Ok(Request {
        method: method.to_string(),
        path,
        token,
    })
}

async fn route(app: &Arc<dyn Control>, req: &Request, peer: SocketAddr) -> Response {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", [""]) => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: STATUS_PAGE.as_bytes().to_vec(),
        },
        ("GET", ["metrics"]) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: app.render_metrics().into_bytes(),
        },
        ("GET", ["healthz"]) => Response::text(200, "ok\n"),
        // Ready from the start (the admin listener opens once every listener is bound)
        // until shutdown closes the listeners.
        ("GET", ["readyz"]) if app.draining() => Response::text(503, "draining\n"),
        ("GET", ["readyz"]) => Response::text(200, "ready\n"),
        ("GET", ["api", "v1", "status"]) => Response::json(200, &status(app.as_ref())),
        ("POST", ["api", "v1", "servers", backend, server, action]) => {
            if let Err(r) = authorize(app.as_ref(), req, peer) {
                return r;
            }
            let state = match *action {
                "drain" => AdminState::Drain,
                "disable" => AdminState::Disabled,
                "enable" => AdminState::Enabled,
                other => {
                    return Response::error(404, format!("unknown action {other:?}: use drain, disable or enable"))
                }
            };
            let who = format!("admin API from {peer}");
            match app.set_server_state(backend, server, state, &who) {
                Some(changed) => Response::json(
                    200,
                    &json!({ "backend": backend, "server": server, "state": state.as_str(), "changed": changed }),
                ),
                None => Response::error(404, format!("no server {backend}/{server}")),
            }
        }
        ("POST", ["api", "v1", "reload"]) => {
            if let Err(r) = authorize(app.as_ref(), req, peer) {
                return r;
            }
            tracing::info!(by = %peer, "reload requested through the admin API");
            // In a task of its own: a client that hangs up (or times out) must not cancel a
            // reload half way.
            let result = tokio::spawn(app.clone().reload())
                .await
                .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
            match result {
                Ok(generation) => Response::json(200, &json!({ "result": "success", "generation": generation })),
                Err(e) => Response::json(422, &json!({ "result": "failure", "error": e })),
            }
        }
        // 405 only where another method would be served; an unknown API path is a 404.
        (_, ["api", "v1", "status" | "reload"])
        | (_, ["api", "v1", "servers", _, _, _])
        | (_, ["" | "metrics" | "healthz" | "readyz"]) => {
            Response::error(405, format!("{} is not allowed on {}", req.method, req.path))
        }
        _ => Response::error(404, format!("nothing at {}", req.path)),
    }
}

/// State changes: with a token configured, only with it; without, only from loopback.
fn authorize(app: &dyn Control, req: &Request, peer: SocketAddr) -> Result<(), Response> {
    let token = app.admin_token();
    match (token.as_ref(), &req.token) {
        (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()) => Ok(()),
        (Some(_), _) => {
            tracing::warn!(%peer, path = %req.path, "admin request refused: missing or wrong token");
            Err(Response::error(
                401,
                "a valid token is required (Authorization: Bearer ...)",
            ))
        }
        (None, _) if peer.ip().is_loopback() || is_mapped_loopback(peer) => Ok(()),
        (None, _) => {
            tracing::warn!(%peer, path = %req.path, "admin request refused: not from loopback and no token configured");
            Err(Response::error(
                403,
                "state changes are allowed from loopback only unless [admin] token_file is set",
            ))
        }
    }
}

fn is_mapped_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The status document of `GET /api/v1/status`.
pub fn status(app: &dyn Control) -> Value {
    let snapshot: Arc<Snapshot> = app.snapshot();
    let process = app.process_status();
    let last_reload = process.last_reload;
    let local = process.local_addrs;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": process.started_at,
        "now": crate::clock::unix_now(),
        "config": {
            "path": process.config_path,
            "generation": snapshot.generation,
            "loaded_at": process.loaded_at,
            "last_reload": last_reload.map(|r| json!({
                "result": if r.success { "success" } else { "failure" },
                "at": r.at,
                "error": r.error,
            })),
        },
        "connections": process.connections,
        "ceiling": {
            "max": process.connections_max,
            "open": process.connections_open,
            "accept_paused_seconds": process.accept_paused_seconds,
        },
        "listeners": snapshot.listeners.iter().map(|l| json!({
            "name": &*l.name,
            "binds": local.iter().filter(|(n, _)| **n == *l.name).map(|(_, a)| a.to_string()).collect::<Vec<_>>(),
            "backend": &*l.backend.name,
            "active": l.counters.active.load(Ordering::Relaxed),
            "accepted": l.counters.accepted.load(Ordering::Relaxed),
        })).collect::<Vec<_>>(),
        "backends": snapshot.backends.iter().map(|b| json!({
            "name": &*b.name,
            "balance": b.config.balance.as_str(),
            "servers_up": b.servers_up(),
            "servers_total": b.servers.len(),
            "servers": b.servers.iter().map(|e| server_status(&e.server, e.weight, e.backup)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn server_status(s: &Server, weight: u32, backup: bool) -> Value {
    let endpoints = s.endpoints();
    // The server's last check: the most recent among its endpoints.
    let reports: Vec<_> = endpoints
        .iter()
        .filter_map(|e| e.check.lock().ok().map(|r| r.clone()))
        .collect();
    let last = reports
        .iter()
        .filter(|r| r.last_at.is_some())
        .max_by(|a, b| a.last_at.partial_cmp(&b.last_at).unwrap_or(std::cmp::Ordering::Equal));
    let (changed_at, change_reason) = s.last_change();
    json!({
        "name": &*s.name,
        "address": s.address(),
        "state": s.state().as_str(),
        "weight": weight,
        "backup": backup,
        "active": s.active.load(Ordering::Relaxed),
        "connections": s.connections.load(Ordering::Relaxed),
        "bytes_in": s.bytes_in.load(Ordering::Relaxed),
        "bytes_out": s.bytes_out.load(Ordering::Relaxed),
        "last_change": changed_at,
        "last_change_reason": change_reason,
        "check": {
            "kind": s.health.check.name(),
            "last_result": last.and_then(|r| r.last_result.as_ref()).map(|r| match r {
                Ok(()) => "ok".to_string(),
                Err(e) => e.clone(),
            }),
            "last_duration_ms": last.map(|r| crate::clock::rounded_ms(r.last_duration)),
            "last_at": last.and_then(|r| r.last_at),
        },
        "endpoints": endpoints.iter().map(|e| json!({
            "address": e.addr.to_string(),
            "up": e.is_up(),
            "active": e.active.load(Ordering::Relaxed),
        })).collect::<Vec<_>>(),
    })
}
