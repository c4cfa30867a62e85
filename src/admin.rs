//! The admin listener: Prometheus metrics, health endpoints, the status API and page,
//! and runtime control (drain, disable, enable, reload).
//!
//! HTTP/1.1 is hyper's, bounded in head size and time, with per-source and total caps
//! (`admin/server.rs`), because a scraper, a watchdog and `gatehouse ctl` must be
//! answered while other clients stall. Reading is open; changing state is allowed from
//! loopback only, or, when the operator set `[admin] token_file`, only with that token
//! (from anywhere). This file holds the routes and the status document.
//!
//! It reaches the running gatehouse only through [`Control`], never the app itself.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde_json::{json, Value};

use crate::certwatch::CertReport;
use crate::config::BackendConfig;
use crate::config::ReadyWhen;
use crate::control::Control;
use crate::runtime::{AdminState, Queue, ServerEntry, Snapshot};

const STATUS_PAGE: &str = include_str!("admin/status.html");

mod server;

pub use server::start;

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

/// Answers one request (hyper has read and checked its head).
async fn respond(
    req: &hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    app: Weak<dyn Control>,
) -> hyper::Response<server::Body> {
    let token = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let request = Request {
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        token,
    };
    let response = match app.upgrade() {
        Some(app) => route(&app, &request, peer).await,
        None => Response::error(503, "shutting down"),
    };
    let mut out = hyper::Response::new(server::Body::from(response.body));
    *out.status_mut() =
        hyper::StatusCode::from_u16(response.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(response.content_type),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    out
}

async fn route(app: &Arc<dyn Control>, req: &Request, peer: SocketAddr) -> Response {
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", [""]) => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: STATUS_PAGE.as_bytes().to_vec(),
        },
        ("GET", ["metrics"]) => {
            let _ = readiness(app.as_ref(), false);
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: app.render_metrics().into_bytes(),
            }
        }
        ("GET", ["healthz"]) => Response::text(200, "ok\n"),
        // The admin listener opens once every listener is bound and the config loaded.
        ("GET", ["readyz"]) => match readiness(app.as_ref(), true) {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("{why}\n")),
        },
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
        // The fault hook of test builds: the named event loop blocks its thread for good.
        #[cfg(debug_assertions)]
        ("POST", ["debug", "hang-loop", index]) => {
            if let Err(r) = authorize(app.as_ref(), req, peer) {
                return r;
            }
            match index.parse::<usize>() {
                Ok(i) if crate::cores::hang(i) => Response::json(202, &json!({ "hung": i })),
                _ => Response::error(404, format!("no event loop {index:?}")),
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

/// Why `/readyz` answers 503: a keepalived `track_script` then moves the shared address.
#[derive(Debug, PartialEq)]
enum Unready {
    /// Shutdown has begun: the listeners are closed.
    Draining,
    /// These backends (used by a listener) have no server taking new connections.
    NoServer(Vec<String>),
}

impl Unready {
    fn reason(&self) -> &'static str {
        match self {
            Unready::Draining => "draining",
            Unready::NoServer(_) => "no_server",
        }
    }
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unready::Draining => f.write_str("draining"),
            Unready::NoServer(b) => write!(f, "no server up in backend {}", b.join(", ")),
        }
    }
}

/// The readiness verdict over `backends`, the (name, servers taking new connections) of
/// every backend a listener uses. Drained and disabled servers take none.
fn verdict(want: ReadyWhen, draining: bool, backends: &[(&str, usize)]) -> Result<(), Unready> {
    if draining {
        return Err(Unready::Draining);
    }
    let empty: Vec<String> = backends
        .iter()
        .filter(|(_, up)| *up == 0)
        .map(|(n, _)| n.to_string())
        .collect();
    let unready = match want {
        ReadyWhen::AllBackends => !empty.is_empty(),
        ReadyWhen::AnyBackend => !backends.is_empty() && empty.len() == backends.len(),
        ReadyWhen::Listening => false,
    };
    if unready {
        Err(Unready::NoServer(empty))
    } else {
        Ok(())
    }
}

/// This gatehouse's readiness now, recorded as a metric; each change is logged once.
/// `answered`: a 503 is being given for it (counted by reason).
fn readiness(app: &dyn Control, answered: bool) -> Result<(), Unready> {
    static LAST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let snapshot = app.snapshot();
    let want = snapshot.config.admin.as_ref().map(|a| a.ready_when).unwrap_or_default();
    let mut backends: Vec<(&str, usize)> = Vec::new();
    for l in &snapshot.listeners {
        if !backends.iter().any(|(n, _)| *n == &*l.backend.name) {
            backends.push((&l.backend.name, l.backend.servers_up()));
        }
    }
    let result = verdict(want, app.draining(), &backends);
    crate::metrics::readiness(result.as_ref().err().map(Unready::reason), answered);
    let now = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
    if let Ok(mut last) = LAST.lock() {
        if *last != now {
            match &result {
                Ok(()) => tracing::info!("ready: /readyz answers 200"),
                Err(why) => tracing::warn!(reason = why.reason(), "not ready: /readyz answers 503: {why}"),
            }
            *last = now;
        }
    }
    result
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
        "event_loops": crate::cores::liveness().iter().map(|l| json!({
            "name": l.name,
            "lag_seconds": l.lag.as_secs_f64(),
            "accepted": l.accepted,
        })).collect::<Vec<_>>(),
        "log_lines_dropped": crate::log_queue::dropped(),
        "listeners": snapshot.listeners.iter().map(|l| json!({
            "name": &*l.name,
            "binds": local.iter().filter(|(n, _)| **n == *l.name).map(|(_, a)| a.to_string()).collect::<Vec<_>>(),
            "backend": &*l.backend.name,
            "routes": l.config.routes.iter().map(|r| json!({ "sni": r.sni, "backend": r.backend })).collect::<Vec<_>>(),
            "accept_proxy": l.config.accept_proxy.as_ref().map(|a| json!({
                "trusted": a.trusted.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            })),
            "active": l.counters.active.load(Ordering::Relaxed),
            "accepted": l.counters.accepted.load(Ordering::Relaxed),
        })).collect::<Vec<_>>(),
        "backends": snapshot.backends.iter().map(|b| json!({
            "name": &*b.name,
            "balance": b.config.balance.as_str(),
            "servers_up": b.servers_up(),
            "servers_total": b.servers.len(),
            "servers": b.servers.iter().map(server_status).collect::<Vec<_>>(),
            "queue": b.queue.as_ref().map(|q| queue_status(q, &b.config)),
        })).collect::<Vec<_>>(),
    })
}

/// A backend's queue: who waits now, and who waited and was closed since start.
fn queue_status(q: &Queue, config: &BackendConfig) -> Value {
    let c = q.counts();
    json!({
        "waiting": c.waiting,
        "oldest_wait_seconds": c.oldest.map(|d| d.as_secs_f64()),
        "max_queue": config.max_queue,
        "timeout_seconds": config.queue_timeout.as_secs_f64(),
        "queued": c.queued,
        "refused": { "queue_full": c.full, "queue_timeout": c.timed_out },
    })
}

fn server_status(entry: &ServerEntry) -> Value {
    let (s, weight, backup) = (&entry.server, entry.weight, entry.backup);
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
        "max_connections": entry.max_connections,
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
        "certificates": endpoints.iter().flat_map(|e| {
            let certs = e.certs.lock().map(|c| c.clone()).unwrap_or_default();
            certs.into_iter().map(move |c| certificate_status(e.addr, c))
        }).collect::<Vec<_>>(),
    })
}

/// What the certificate watch last saw for one name at one address.
fn certificate_status(addr: SocketAddr, c: CertReport) -> Value {
    json!({
        "sni": c.sni,
        "endpoint": addr.to_string(),
        "valid": c.valid,
        "reason": c.reason,
        "subject": c.subject,
        "names": c.names,
        "issuer": c.issuer,
        "issuer_expected": c.issuer_expected,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "chain_length": c.chain_len,
        "checked_at": c.checked_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_used_backend_needs_a_server_up_by_default() {
        let one_empty = [("control-plane", 2), ("ingress", 0)];
        assert_eq!(
            verdict(ReadyWhen::AllBackends, false, &one_empty),
            Err(Unready::NoServer(vec!["ingress".into()]))
        );
        assert_eq!(verdict(ReadyWhen::AllBackends, false, &[("control-plane", 1)]), Ok(()));
    }

    #[test]
    fn any_backend_wants_one_server_up_somewhere() {
        assert_eq!(verdict(ReadyWhen::AnyBackend, false, &[("a", 0), ("b", 1)]), Ok(()));
        assert_eq!(
            verdict(ReadyWhen::AnyBackend, false, &[("a", 0), ("b", 0)]),
            Err(Unready::NoServer(vec!["a".into(), "b".into()]))
        );
    }

    #[test]
    fn listening_is_ready_without_servers_but_never_while_draining() {
        assert_eq!(verdict(ReadyWhen::Listening, false, &[("a", 0)]), Ok(()));
        for want in [ReadyWhen::AllBackends, ReadyWhen::AnyBackend, ReadyWhen::Listening] {
            assert_eq!(verdict(want, true, &[("a", 3)]), Err(Unready::Draining), "{want:?}");
        }
    }
}
