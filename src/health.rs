//! Active health checks (tcp, tls, http, https) and the rise/fall arithmetic that
//! turns their results into up and down.
//!
//! Every resolved address of a server is checked on its own, every `interval` with
//! random jitter so that many servers don't march in step. A server's first result
//! decides its state at once (until then it is up, as HAProxy treats it); after that
//! `fall` failures in a row take it down and `rise` successes bring it back. Passive
//! failures from real traffic (see `connect.rs`) take it down too; the active check
//! brings it back. Disabled servers are not checked.
//!
//! `tls` and `https` checks also feed the certificate watch (`certwatch.rs`): one
//! handshake per watched name, what each was shown filed on the endpoint and published
//! per server and name; a bad certificate fails the check only with `cert_failure = "down"`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::certwatch::{self, CertReport, Watch, Watching};
use crate::clock::unix_now;
use crate::config::{CertFailure, CheckKind, HealthConfig, Host, HttpCheck, ProxyVersion, TlsCheck};
use crate::dial::{dial, ConnectError};
use crate::edge::proxy_protocol;
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

/// The wait before an endpoint's second check: anywhere in the second half of
/// `interval`, given a uniform `r` in [0, 1). Every endpoint's first check runs at once
/// (at start, at a reload); this spreads the rounds after it over the interval, as
/// HAProxy's `spread-checks` does, instead of all of them waking together.
pub fn spread(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(0.5 + 0.5 * r.clamp(0.0, 1.0))
}

/// Checks run on ticks of this length: those due within one tick are started together,
/// in one wake-up of the runtime, and their connects answer in one `epoll_wait`.
pub const CHECK_TICK: Duration = Duration::from_millis(10);

/// `at`, rounded up to the next [`CHECK_TICK`] since `epoch`.
pub fn on_tick(at: tokio::time::Instant, epoch: tokio::time::Instant) -> tokio::time::Instant {
    let since = at.saturating_duration_since(epoch).as_micros();
    let tick = CHECK_TICK.as_micros();
    let rounded = since.div_ceil(tick) * tick;
    epoch + Duration::from_micros(rounded as u64)
}

/// The instant check ticks count from: one for the whole process.
fn tick_epoch() -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(tokio::time::Instant::now)
}

/// What a check that passed saw, put in words only when someone reads them (a state
/// change, the first result): most checks only confirm what is known.
#[derive(Debug)]
pub enum Passed {
    NotChecked,
    Tcp(SocketAddr),
    Tls(SocketAddr),
    Http {
        scheme: &'static str,
        path: String,
        status: u16,
    },
}

impl std::fmt::Display for Passed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Passed::NotChecked => f.write_str("not checked"),
            Passed::Tcp(addr) => write!(f, "tcp connect to {addr} succeeded"),
            Passed::Tls(addr) => write!(f, "tls handshake with {addr} succeeded"),
            Passed::Http { scheme, path, status } => write!(f, "{scheme} {path} returned {status}"),
        }
    }
}

/// A check ready to run: TLS material loaded, request formatted.
pub struct Prepared {
    kind: PreparedKind,
    pub timeout: Duration,
    port: Option<u16>,
    send_proxy: Option<ProxyVersion>,
}

enum PreparedKind {
    None,
    Tcp,
    Tls(Tls),
    Http(Http),
    Https(Http, Tls),
}

struct Tls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    watch: Arc<Watch>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    sni: Vec<String>,
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
        send_proxy: config.send_proxy,
    }))
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read health check {what} {}: {e}", path.display()))
}

fn tls(t: &TlsCheck) -> Result<Tls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let watch = Watch::new(
        provider.clone(),
        t.ca.as_deref(),
        t.cert_failure == CertFailure::Down,
        t.expect_issuer.clone(),
    )?;
    let client_auth = match (&t.cert, &t.key) {
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
            Some((certs, key))
        }
        _ => None,
    };
    let tls = Tls {
        provider,
        watch: Arc::new(watch),
        client_auth,
        sni: t.sni.clone(),
    };
    // A key that does not fit its certificate fails the reload, not every check.
    tls.connector()?;
    Ok(tls)
}

impl Tls {
    /// A connector for one handshake, with the verifier that watches its certificate.
    /// Built per handshake (cheap next to the handshake) so that each records its own
    /// chain, and so that no session is ever resumed: a resumed one shows no certificate.
    fn connector(&self) -> Result<(tokio_rustls::TlsConnector, Arc<Watching>), String> {
        let watching = self.watch.watching();
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(watching.clone());
        let config = match &self.client_auth {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| format!("health check cert/key: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), watching))
    }

    /// The names to shake hands with, each with the label its certificate is filed under:
    /// the `sni` list, else the server's host name, else (IP servers) its address.
    fn names(&self, host: &Host, addr: SocketAddr) -> Result<Vec<(String, ServerName<'static>)>, CheckFailure> {
        let invalid = |e: rustls::pki_types::InvalidDnsNameError| CheckFailure {
            reason: "tls",
            detail: format!("invalid TLS server name: {e}"),
        };
        if !self.sni.is_empty() {
            return self
                .sni
                .iter()
                .map(|s| Ok((s.clone(), ServerName::try_from(s.clone()).map_err(invalid)?)))
                .collect();
        }
        Ok(vec![match host {
            Host::Name(n) => (n.clone(), ServerName::try_from(n.clone()).map_err(invalid)?),
            Host::Ip(_) => (addr.ip().to_string(), ServerName::IpAddress(addr.ip().into())),
        }])
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
    pub async fn run(&self, host: &Host, endpoint: SocketAddr) -> Result<Passed, CheckFailure> {
        self.run_watched(host, endpoint, &mut Vec::new()).await
    }

    /// Like [`Prepared::run`], and adds the certificates its handshakes were shown to `certs`.
    pub async fn run_watched(
        &self,
        host: &Host,
        endpoint: SocketAddr,
        certs: &mut Vec<CertReport>,
    ) -> Result<Passed, CheckFailure> {
        let addr = SocketAddr::new(endpoint.ip(), self.port.unwrap_or(endpoint.port()));
        match tokio::time::timeout(self.timeout, self.run_inner(host, addr, certs)).await {
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

    async fn run_inner(
        &self,
        host: &Host,
        addr: SocketAddr,
        certs: &mut Vec<CertReport>,
    ) -> Result<Passed, CheckFailure> {
        if let PreparedKind::None = self.kind {
            return Ok(Passed::NotChecked);
        }
        let stream = self.connect(addr).await?;
        match &self.kind {
            PreparedKind::None | PreparedKind::Tcp => {
                // Closed with a reset, as HAProxy closes its checks: a FIN would leave
                // this side in TIME_WAIT, a socket a minute for every check.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                Ok(Passed::Tcp(addr))
            }
            PreparedKind::Tls(t) => {
                let _tls = self.handshakes(t, host, addr, stream, certs).await?;
                Ok(Passed::Tls(addr))
            }
            PreparedKind::Http(h) => http(h, "http", host, addr, stream).await,
            PreparedKind::Https(h, t) => {
                let tls = self.handshakes(t, host, addr, stream, certs).await?;
                http(h, "https", host, addr, tls).await
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<tokio::net::TcpStream, CheckFailure> {
        // Bounded by the check's own timeout (`run_watched`), which covers the connect.
        let stream = dial(addr, false).await.map_err(|e| CheckFailure {
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
        match self.send_proxy {
            Some(version) => send_proxy(stream, version).await.map_err(|e| CheckFailure {
                reason: "error",
                detail: format!("{} check to {addr}: writing the PROXY header: {e}", self.name()),
            }),
            None => Ok(stream),
        }
    }

    /// One handshake per server name, the first on `stream` (the one an https check
    /// asks over), the others on connections of their own. Every name is watched even
    /// when one fails; the first failure is the check's.
    async fn handshakes(
        &self,
        t: &Tls,
        host: &Host,
        addr: SocketAddr,
        stream: tokio::net::TcpStream,
        certs: &mut Vec<CertReport>,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, CheckFailure> {
        let names = t.names(host, addr)?;
        let mut first = None;
        let mut failure = None;
        let mut stream = Some(stream);
        for name in &names {
            let tcp = match stream.take() {
                Some(s) => Ok(s),
                None => self.connect(addr).await,
            };
            let result = match tcp {
                Ok(tcp) => handshake(t, name, addr, tcp, certs).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(tls) if first.is_none() => first = Some(tls),
                Ok(_) => {}
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match (failure, first) {
            (None, Some(tls)) => Ok(tls),
            (Some(e), _) => Err(e),
            (None, None) => Err(CheckFailure {
                reason: "tls",
                detail: "no server name to shake hands with".into(),
            }),
        }
    }
}

/// The PROXY header of a check, as HAProxy's `check-send-proxy` writes it: v2 says
/// LOCAL (the check is gatehouse's own connection); v1, which has no LOCAL, carries the
/// check connection's own addresses.
async fn send_proxy(
    mut stream: tokio::net::TcpStream,
    version: ProxyVersion,
) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let header = match version {
        ProxyVersion::V1 => proxy_protocol::encode_v1(stream.local_addr()?, stream.peer_addr()?),
        ProxyVersion::V2 => proxy_protocol::encode_v2_local(),
    };
    stream.write_all(&header).await?;
    Ok(stream)
}

async fn handshake(
    t: &Tls,
    (label, name): &(String, ServerName<'static>),
    addr: SocketAddr,
    stream: tokio::net::TcpStream,
    certs: &mut Vec<CertReport>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, CheckFailure> {
    let (connector, watching) = t.connector().map_err(|detail| CheckFailure { reason: "tls", detail })?;
    let result = connector.connect(name.clone(), stream).await;
    let report = watching.report(label);
    let refused = match &report {
        Some(r) if !r.valid && t.watch.enforce => Some(CheckFailure {
            reason: "certificate",
            detail: format!(
                "certificate for {label} at {addr}: {}",
                r.reason.as_deref().unwrap_or("not valid")
            ),
        }),
        _ => None,
    };
    certs.extend(report);
    let tls = result.map_err(|e| CheckFailure {
        reason: "tls",
        detail: format!("tls handshake with {addr} for {label} failed: {e}"),
    })?;
    match refused {
        Some(f) => Err(f),
        None => Ok(tls),
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    h: &Http,
    scheme: &'static str,
    host: &Host,
    addr: SocketAddr,
    mut stream: S,
) -> Result<Passed, CheckFailure> {
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
        // Without a body to look for, the status line is enough when it is one we
        // expect; an unexpected one is read on, for what its body says went wrong.
        if c.body.is_none() && parse_status(&response).is_some_and(|s| c.expect.contains(&s)) {
            break;
        }
    }
    let status = parse_status(&response).ok_or_else(|| CheckFailure {
        reason: "protocol",
        detail: format!("{scheme} {}: no valid HTTP status line in the response", c.path),
    })?;
    if !c.expect.contains(&status) {
        let failing = failing_checks(body_of(&response));
        return Err(CheckFailure {
            reason: "status",
            detail: if failing.is_empty() {
                format!("{scheme} {} returned {status}", c.path)
            } else {
                format!("{scheme} {} returned {status}; failing: {failing}", c.path)
            },
        });
    }
    if let Some(needle) = &c.body {
        let body = body_of(&response);
        if !body.windows(needle.len().max(1)).any(|w| w == needle.as_bytes()) {
            return Err(CheckFailure {
                reason: "body",
                detail: format!("{scheme} {} returned {status} without {needle:?} in the body", c.path),
            });
        }
    }
    Ok(Passed::Http {
        scheme,
        path: c.path.clone(),
        status,
    })
}

/// What follows the head of an HTTP response (empty if the head is not complete).
fn body_of(response: &[u8]) -> &[u8] {
    let start = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| p + 4);
    &response[start..]
}

/// The checks a Kubernetes API server's `/readyz` or `/livez` lists as failing
/// (`[-]etcd failed: reason withheld`), named and joined: `etcd, informer-sync`. Bounded:
/// at most 6 names of at most 48 characters, and a count of the rest.
pub fn failing_checks(body: &[u8]) -> String {
    const NAMES: usize = 6;
    const NAME: usize = 48;
    let text = String::from_utf8_lossy(body);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[-]"))
        .map(|rest| rest.split(" failed").next().unwrap_or(rest).trim())
        .filter(|n| !n.is_empty())
        .collect();
    let mut out: Vec<String> = names
        .iter()
        .take(NAMES)
        .map(|n| n.chars().filter(|c| !c.is_control()).take(NAME).collect())
        .collect();
    if names.len() > NAMES {
        out.push(format!("{} more", names.len() - NAMES));
    }
    out.join(", ")
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
    let mut certs = Vec::new();
    // Boxed: a check's state (a TLS handshake, an HTTP exchange) is kilobytes, held
    // only while it runs, not by every endpoint's task between checks.
    let result = Box::pin(check.run_watched(&server.host, endpoint.addr, &mut certs)).await;
    let took = started.elapsed();
    if !certs.is_empty() {
        watched(server, endpoint, certs);
    }
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
    let what = || match &result {
        Ok(passed) => passed.to_string(),
        Err(f) => f.detail.clone(),
    };
    let first = !rf.decided;
    match rf.record(ok, endpoint.is_up()) {
        Some((up, streak, of)) => {
            server.set_endpoint_up(endpoint, up, &format!("{} ({streak}/{of})", what()));
        }
        // The first check confirmed the state it started in.
        None if first => server.decided(&what()),
        None => {}
    }
}

/// Files what the certificate watch saw at `endpoint` and publishes the server-wide view
/// of each name (earliest expiry, valid only if valid at every address).
fn watched(server: &Server, endpoint: &Endpoint, certs: Vec<CertReport>) {
    if let Ok(mut mine) = endpoint.certs.lock() {
        let changed: Vec<&CertReport> = certs
            .iter()
            .filter(|c| {
                let before = mine.iter().find(|o| o.sni == c.sni);
                before.map(|b| (b.valid, &b.reason)) != Some((c.valid, &c.reason))
            })
            .collect();
        // One check's changes are logged together, at most once a second per address
        // (a certificate that flips with every check cannot flood the journal).
        if !changed.is_empty() {
            if let Some(suppressed) = endpoint.cert_log.admit() {
                for c in changed {
                    log_certificate(server, endpoint, c, suppressed);
                }
            }
        }
        certwatch::merge(&mut mine, certs);
    }
    let endpoints = server.endpoints();
    let all: Vec<CertReport> = endpoints
        .iter()
        .filter_map(|e| e.certs.lock().ok().map(|c| c.clone()))
        .flatten()
        .collect();
    for s in certwatch::summarize(&all) {
        server
            .metrics
            .cert_seen(&s.sni, s.not_after as f64, s.valid, s.issuer_expected);
    }
}

/// A certificate first seen, or whose verdict changed.
fn log_certificate(server: &Server, endpoint: &Endpoint, c: &CertReport, suppressed: u64) {
    let expires = c.not_after;
    if c.valid {
        tracing::info!(backend = %server.backend, server = %server.name, sni = %c.sni, endpoint = %endpoint.addr,
            issuer = %c.issuer, not_after = expires, suppressed, "certificate of {} for {} is valid", server.label(), c.sni);
    } else {
        tracing::warn!(backend = %server.backend, server = %server.name, sni = %c.sni, endpoint = %endpoint.addr,
            issuer = %c.issuer, not_after = expires, suppressed, "certificate of {} for {} is not valid: {}",
            server.label(), c.sni, c.reason.as_deref().unwrap_or_default());
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
    let epoch = tick_epoch();
    let mut next = tokio::time::Instant::now() + spread(config.interval, rand::random::<f64>());
    loop {
        tokio::time::sleep_until(on_tick(next, epoch)).await;
        check_endpoint(&server, &endpoint, &check, &mut rf).await;
        next = tokio::time::Instant::now() + jittered(config.interval, rand::random::<f64>());
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
