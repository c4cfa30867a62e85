//! Active health checks (tcp, tls, http, https) and the rise/fall arithmetic that
//! turns their results into up and down.
//!
//! Every resolved address of a server is checked on its own, every `interval` with
//! random jitter so that many servers don't march in step. A server's first result
//! decides its state at once (until then it is up, as HAProxy treats it); after that
//! `fall` failures in a row take it down and `rise` successes bring it back. Passive
//! failures from real traffic (see `connect.rs`) take it down too; the active check
//! brings it back. Disabled servers are not checked.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::clock::unix_now;
use crate::config::{CheckKind, HealthConfig, Host, HttpCheck, TlsCheck};
use crate::connect::{connect_one, ConnectError};
use crate::runtime::{AdminState, CheckReport, Endpoint, Server};

/// Longest HTTP response read by a check.
const MAX_RESPONSE: usize = 64 * 1024;

/// Rise/fall bookkeeping of one endpoint.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
    decided: bool,
    /// The state as of the last result: a change made elsewhere (passive health)
    /// restarts the streaks.
    last_up: bool,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> Self {
        RiseFall {
            rise,
            fall,
            successes: 0,
            failures: 0,
            decided: false,
            last_up: true,
        }
    }

    /// Records a result for an endpoint now `up`; returns the new state on a change, with
    /// the streak that made it (e.g. 3 of fall 3).
    pub fn record(&mut self, ok: bool, up: bool) -> Option<(bool, u32, u32)> {
        let first = !self.decided;
        self.decided = true;
        if up != self.last_up {
            (self.successes, self.failures) = (0, 0);
        }
        let change = self.streak(ok, up, first);
        self.last_up = change.map_or(up, |(now_up, _, _)| now_up);
        change
    }

    fn streak(&mut self, ok: bool, up: bool, first: bool) -> Option<(bool, u32, u32)> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !up && (first || self.successes >= self.rise) {
                return Some((true, self.successes.min(self.rise), self.rise));
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if up && (first || self.failures >= self.fall) {
                return Some((false, self.failures.min(self.fall), self.fall));
            }
        }
        None
    }
}

/// The wait before the next check: `interval` ± 10 %, given a uniform `r` in [0, 1).
pub fn jittered(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * r.clamp(0.0, 1.0))
}

/// A check ready to run: TLS material loaded, request formatted.
pub struct Prepared {
    kind: PreparedKind,
    pub timeout: Duration,
    port: Option<u16>,
}

enum PreparedKind {
    None,
    Tcp,
    Tls(Tls),
    Http(Http),
    Https(Http, Tls),
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    sni: Option<String>,
}

struct Http {
    check: HttpCheck,
}

/// Loads what a check needs (CA, client certificate and key); a reload with files that
/// can't be read fails here, before anything changes.
pub fn prepare(config: &HealthConfig) -> Result<Arc<Prepared>, String> {
    let kind = match &config.check {
        CheckKind::None => PreparedKind::None,
        CheckKind::Tcp => PreparedKind::Tcp,
        CheckKind::Tls(t) => PreparedKind::Tls(tls(t)?),
        CheckKind::Http(h) => PreparedKind::Http(Http { check: h.clone() }),
        CheckKind::Https(h, t) => PreparedKind::Https(Http { check: h.clone() }, tls(t)?),
    };
    Ok(Arc::new(Prepared {
        kind,
        timeout: config.timeout,
        port: config.port,
    }))
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read health check {what} {}: {e}", path.display()))
}

fn tls(t: &TlsCheck) -> Result<Tls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &t.ca {
        Some(ca) => {
            let pem = read_pem(ca, "ca")?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("health check ca {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("health check ca {}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("health check ca {} holds no certificate", ca.display()));
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
    };
    let config = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read_pem(cert, "cert")?;
            let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("health check cert {}: {e}", cert.display()))?;
            if certs.is_empty() {
                return Err(format!("health check cert {} holds no certificate", cert.display()));
            }
            let key_pem = read_pem(key, "key")?;
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .map_err(|e| format!("health check key {}: {e}", key.display()))?
                .ok_or_else(|| format!("health check key {} holds no private key", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("health check cert/key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Tls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        sni: t.sni.clone(),
    })
}

/// Without a `ca`, the server's certificate is not verified (documented): the check
/// asks "is it serving?", not "is it who it claims?".
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a check failed: a short label for metrics, a sentence for logs.
/// The `reason` of a check that could not run for want of gatehouse's own resources
/// (descriptors, memory, ports): neither a success nor a failure of the server.
pub const LOCAL_FAILURE: &str = "local";

static LOCAL_FAILURE_LOG: crate::ratelimit::RateLimitedLog = crate::ratelimit::RateLimitedLog::new();

#[derive(Debug)]
pub struct CheckFailure {
    pub reason: &'static str,
    pub detail: String,
}

impl Prepared {
    pub fn is_none(&self) -> bool {
        matches!(self.kind, PreparedKind::None)
    }

    /// Runs one check of `endpoint` of a server named by `host`.
    pub async fn run(&self, host: &Host, endpoint: SocketAddr) -> Result<String, CheckFailure> {
        let addr = SocketAddr::new(endpoint.ip(), self.port.unwrap_or(endpoint.port()));
        match tokio::time::timeout(self.timeout, self.run_inner(host, addr)).await {
            Ok(r) => r,
            Err(_) => Err(CheckFailure {
                reason: "timeout",
                detail: format!("{} check timed out after {:?}", self.name(), self.timeout),
            }),
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            PreparedKind::None => "none",
            PreparedKind::Tcp => "tcp",
            PreparedKind::Tls(_) => "tls",
            PreparedKind::Http(_) => "http",
            PreparedKind::Https(..) => "https",
        }
    }

    async fn run_inner(&self, host: &Host, addr: SocketAddr) -> Result<String, CheckFailure> {
        if let PreparedKind::None = self.kind {
            return Ok("not checked".into());
        }
        let stream = connect_one(addr, self.timeout, None).await.map_err(|e| CheckFailure {
            reason: match e {
                ConnectError::Refused => "refused",
                ConnectError::Timeout(_) => "timeout",
                ConnectError::Unreachable(_) => "unreachable",
                ConnectError::Other(_) => "error",
                ConnectError::Local(_, reason) => {
                    crate::metrics::local_error(1, reason);
                    LOCAL_FAILURE
                }
            },
            detail: format!("{} connect to {addr}: {e}", self.name()),
        })?;
        match &self.kind {
            PreparedKind::None | PreparedKind::Tcp => Ok(format!("tcp connect to {addr} succeeded")),
            PreparedKind::Tls(t) => {
                let _tls = handshake(t, host, addr, stream).await?;
                Ok(format!("tls handshake with {addr} succeeded"))
            }
            PreparedKind::Http(h) => http(h, "http", host, addr, stream).await,
            PreparedKind::Https(h, t) => {
                let tls = handshake(t, host, addr, stream).await?;
                http(h, "https", host, addr, tls).await
            }
        }
    }
}

async fn handshake(
    t: &Tls,
    host: &Host,
    addr: SocketAddr,
    stream: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, CheckFailure> {
    let name = match (&t.sni, host) {
        (Some(sni), _) => ServerName::try_from(sni.clone()),
        (None, Host::Name(n)) => ServerName::try_from(n.clone()),
        (None, Host::Ip(_)) => Ok(ServerName::IpAddress(addr.ip().into())),
    }
    .map_err(|e| CheckFailure {
        reason: "tls",
        detail: format!("invalid TLS server name: {e}"),
    })?;
    t.connector.connect(name, stream).await.map_err(|e| CheckFailure {
        reason: "tls",
        detail: format!("tls handshake with {addr} failed: {e}"),
    })
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    h: &Http,
    scheme: &str,
    host: &Host,
    addr: SocketAddr,
    mut stream: S,
) -> Result<String, CheckFailure> {
    let c = &h.check;
    let host_header = match (&c.host, host) {
        (Some(h), _) => h.clone(),
        (None, Host::Name(n)) => n.clone(),
        (None, Host::Ip(_)) => addr.to_string(),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: gatehouse-health-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        c.path,
        env!("CARGO_PKG_VERSION")
    );
    let io_failure = |e: io::Error| CheckFailure {
        reason: "io",
        detail: format!("{scheme} {}: {e}", c.path),
    };
    stream.write_all(request.as_bytes()).await.map_err(io_failure)?;
    let mut response = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // Servers that close without TLS close_notify still sent their answer.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => 0,
            Err(e) => return Err(io_failure(e)),
        };
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
        if response.len() >= MAX_RESPONSE {
            break;
        }
        // Without a body to look for, the status line is enough.
        if c.body.is_none() && response.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let status = parse_status(&response).ok_or_else(|| CheckFailure {
        reason: "protocol",
        detail: format!("{scheme} {}: no valid HTTP status line in the response", c.path),
    })?;
    if !c.expect.contains(&status) {
        return Err(CheckFailure {
            reason: "status",
            detail: format!("{scheme} {} returned {status}", c.path),
        });
    }
    if let Some(needle) = &c.body {
        let body_start = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(response.len(), |p| p + 4);
        let body = &response[body_start..];
        if !body.windows(needle.len().max(1)).any(|w| w == needle.as_bytes()) {
            return Err(CheckFailure {
                reason: "body",
                detail: format!("{scheme} {} returned {status} without {needle:?} in the body", c.path),
            });
        }
    }
    Ok(format!("{scheme} {} returned {status}", c.path))
}

/// The status code of an HTTP/1.x response.
pub fn parse_status(response: &[u8]) -> Option<u16> {
    let line_end = response.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..=599).contains(&code).then_some(code)
}

/// Runs one check of an endpoint and applies its result; used for the first round
/// (at start and for servers new in a reload) and by the periodic loop.
pub async fn check_endpoint(server: &Server, endpoint: &Endpoint, check: &Prepared, rf: &mut RiseFall) {
    if check.is_none() || server.admin_state() == AdminState::Disabled {
        return;
    }
    let started = Instant::now();
    let result = check.run(&server.host, endpoint.addr).await;
    let took = started.elapsed();
    if let Some(f) = result.as_ref().err().filter(|f| f.reason == LOCAL_FAILURE) {
        // Counted in gatehouse_local_errors_total{op="check"}. Not a result: rise and
        // fall see nothing, and a first round that met it is not a first check done.
        if let Some(suppressed) = LOCAL_FAILURE_LOG.admit() {
            tracing::warn!(server = %server.label(), endpoint = %endpoint.addr, suppressed,
                "check not run, gatehouse itself is short of resources: {}", f.detail);
        }
        return;
    }
    server.metrics.check_duration.record(took.as_secs_f64());
    if let Ok(mut report) = endpoint.check.lock() {
        *report = CheckReport {
            last_result: Some(result.as_ref().map(|_| ()).map_err(|f| f.detail.clone())),
            last_duration: took,
            last_at: Some(unix_now()),
        };
    }
    let ok = result.is_ok();
    if let Err(f) = &result {
        server.metrics.check_failed(f.reason);
        tracing::debug!(server = %server.label(), endpoint = %endpoint.addr, "check failed: {}", f.detail);
    }
    let what = match &result {
        Ok(s) => s.as_str(),
        Err(f) => f.detail.as_str(),
    };
    match rf.record(ok, endpoint.is_up()) {
        Some((up, streak, of)) => {
            server.set_endpoint_up(endpoint, up, &format!("{what} ({streak}/{of})"));
        }
        // The first check confirmed the state it started in.
        None => server.decided(what),
    }
}

/// Checks every endpoint of `server` until the server is retired, following changes
/// of its resolved addresses.
pub fn spawn(server: Arc<Server>, check: Arc<Prepared>, config: HealthConfig) -> Option<JoinHandle<()>> {
    if check.is_none() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut changes = server.subscribe_endpoints();
        let mut loops: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
        loop {
            if server.is_retired() {
                break;
            }
            let endpoints = server.endpoints().clone();
            loops.retain(|addr, task| {
                let keep = endpoints.iter().any(|e| e.addr == *addr);
                if !keep {
                    task.abort();
                }
                keep
            });
            for e in endpoints.iter() {
                loops.entry(e.addr).or_insert_with(|| {
                    tokio::spawn(endpoint_loop(server.clone(), e.clone(), check.clone(), config.clone()))
                });
            }
            if changes.changed().await.is_err() {
                break;
            }
        }
        for (_, task) in loops {
            task.abort();
        }
    }))
}

async fn endpoint_loop(server: Arc<Server>, endpoint: Arc<Endpoint>, check: Arc<Prepared>, config: HealthConfig) {
    let mut rf = RiseFall::new(config.rise, config.fall);
    // Endpoints already checked (first round) carry on from their state.
    let checked = endpoint.check.lock().map(|r| r.last_result.is_some()).unwrap_or(false);
    if checked {
        rf.decided = true;
        rf.last_up = endpoint.is_up();
    } else {
        check_endpoint(&server, &endpoint, &check, &mut rf).await;
    }
    loop {
        tokio::time::sleep(jittered(config.interval, rand::random::<f64>())).await;
        check_endpoint(&server, &endpoint, &check, &mut rf).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_result_decides_at_once() {
        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.record(false, true), Some((false, 1, 3)));
        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.record(true, true), None);
    }

    #[test]
    fn fall_failures_in_a_row_take_a_server_down() {
        let mut rf = RiseFall::new(2, 3);
        rf.record(true, true);
        assert_eq!(rf.record(false, true), None);
        assert_eq!(rf.record(false, true), None);
        assert_eq!(rf.record(false, true), Some((false, 3, 3)));
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut rf = RiseFall::new(2, 3);
        rf.record(true, true);
        rf.record(false, true);
        rf.record(false, true);
        rf.record(true, true);
        assert_eq!(rf.record(false, true), None);
        assert_eq!(rf.record(false, true), None);
        assert_eq!(rf.record(false, true), Some((false, 3, 3)));
    }

    #[test]
    fn rise_successes_in_a_row_bring_it_back() {
        let mut rf = RiseFall::new(2, 3);
        rf.record(false, true); // down at first result
        assert_eq!(rf.record(true, false), None);
        assert_eq!(rf.record(false, false), None);
        assert_eq!(rf.record(true, false), None);
        assert_eq!(rf.record(true, false), Some((true, 2, 2)));
    }

    #[test]
    fn passive_down_needs_rise_successes() {
        let mut rf = RiseFall::new(3, 3);
        rf.record(true, true);
        rf.record(true, true);
        rf.record(true, true);
        // Marked down by traffic meanwhile: the streak starts again.
        assert_eq!(rf.record(true, false), None);
        assert_eq!(rf.record(true, false), None);
        assert_eq!(rf.record(true, false), Some((true, 3, 3)));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let i = Duration::from_secs(2);
        assert_eq!(jittered(i, 0.0), Duration::from_millis(1800));
        assert_eq!(jittered(i, 1.0), Duration::from_millis(2200));
        for k in 0..1000 {
            let d = jittered(i, rand::random::<f64>());
            assert!(
                d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200),
                "{k}: {d:?}"
            );
        }
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\nok"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
    }
}
