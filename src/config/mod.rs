//! The configuration file: the typed values the rest of gatehouse reads, and the face
//! of the `config/` folder (schema, validation, value parsers, located errors).
//!
//! This module owns parsing and checking, nothing else. Text goes in; either a
//! [`Config`] whose values cannot be wrong comes out (durations are `Duration`s,
//! addresses are `SocketAddr`s or checked host names, every listener names a backend
//! that exists), or a [`ConfigError`] that points at file, line, column and key and,
//! where it can, suggests the fix. The rest of gatehouse never re-checks.
//!
//! Files: `schema.rs` (the TOML schema as serde reads it), `validate.rs` (raw values
//! into the typed ones below), `parse.rs` (durations, addresses, names), `error.rs`
//! (located errors and suggestions). Others import only this file.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::edge::source_limit::{Limits, Rate};
pub use crate::edge::source_rules::Cidr;

mod error;
mod parse;
mod schema;
mod validate;

pub use error::{ConfigError, Diagnostic};
pub use parse::{parse_duration, parse_host_port};

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/gatehouse/gatehouse.toml";

/// A complete, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub defaults: Defaults,
    pub resolver: ResolverConfig,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub listeners: Vec<ListenerConfig>,
    /// Sorted by name.
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub drain_timeout: Duration,
    /// Idle time before TCP keepalive probes start, on both sides; `None` turns them off.
    pub keepalive: Option<Duration>,
    /// TCP_USER_TIMEOUT on both sides: data unacknowledged this long ends the
    /// connection; `None` leaves the kernel's retransmissions (~15 min).
    pub user_timeout: Option<Duration>,
    pub forwarding: Forwarding,
    /// Lowers the connection ceiling the open-file limit allows (over every listener).
    pub max_connections: Option<usize>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(3600),
            retries: 2,
            drain_timeout: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(60)),
            user_timeout: Some(Duration::from_secs(30)),
            forwarding: Forwarding::default(),
            max_connections: None,
        }
    }
}

/// How bytes are moved between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forwarding {
    /// `splice(2)` through pipes on Linux; the portable copy elsewhere.
    #[default]
    Splice,
    /// A user-space copy through a buffer, on every platform.
    Copy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// Empty: use the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    /// Floor and ceiling of the re-resolution interval that the records' TTL sets.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// How soon a name that failed to resolve is tried again.
    pub retry: Duration,
    /// The hosts file, consulted before DNS and re-read when it changes.
    pub hosts_file: PathBuf,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(300),
            retry: Duration::from_secs(5),
            hosts_file: PathBuf::from("/etc/hosts"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Where the admin listener listens: one address or several (loopback for local
    /// probes such as keepalived's, and the network the scraper comes from).
    pub listen: Vec<SocketAddr>,
    /// When set, the admin API accepts state changes only with this token (from any
    /// address); when unset, only from loopback.
    pub token_file: Option<PathBuf>,
    /// Who may connect to the admin listener at all.
    pub sources: SourceRulesConfig,
    /// Concurrent admin connections per client address (default 8), so that one
    /// client cannot take every connection the admin listener serves.
    pub source_limit: SourceLimitConfig,
    pub ready_when: ReadyWhen,
}

/// When `/readyz` answers 200 (a keepalived `track_script` gives the address away on 503).
/// Every variant also wants the config loaded, the listeners bound and no shutdown begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyWhen {
    /// Every backend that a listener uses has a server that takes new connections.
    #[default]
    AllBackends,
    /// At least one backend that a listener uses has such a server.
    AnyBackend,
    /// Listening is enough, whatever the servers' states.
    Listening,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogConfig {
    pub format: Option<LogFormat>,
    pub level: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: Vec<SocketAddr>,
    pub backend: String,
    /// Connections above this many are refused at once (counted as `limit`).
    pub max_connections: Option<usize>,
    /// `allow` / `deny`: clients refused are closed at once (counted as `denied`).
    pub sources: SourceRulesConfig,
    /// `source_limit`: per-client caps (counted as `source_limit`); `None` when absent.
    pub source_limit: Option<SourceLimitConfig>,
    /// Bind even an address this host does not have (yet): a keepalived address.
    pub freebind: bool,
    /// PROXY protocol accepted (and required) from a balancer in front; `None`: off.
    pub accept_proxy: Option<AcceptProxy>,
    /// Routes by TLS server name (SNI); `backend` is the default. Empty: no peeking.
    pub routes: Vec<RouteConfig>,
    /// How long to wait for a whole ClientHello before using the default backend.
    pub inspect_timeout: Duration,
}

/// `accept_proxy = true`: only `trusted` sources may connect, and each must start with a
/// PROXY header (v1 or v2) within `timeout`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptProxy {
    pub trusted: Vec<crate::edge::source_rules::Cidr>,
    pub timeout: Duration,
}

/// One SNI route of a listener: server-name patterns and the backend they go to.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub sni: Vec<String>,
    pub backend: String,
}

/// The PROXY protocol version a backend's servers expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    V1,
    V2,
}

impl ProxyVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// A listener's `allow` and `deny` CIDR lists, as written (deny wins; empty allow = all).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceRulesConfig {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl SourceRulesConfig {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// `source_limit`: per-client connection and rate caps, in a table of bounded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimitConfig {
    pub limits: Limits,
    /// How many client addresses (IPv6: /64 networks) the table tracks at most.
    pub sources: usize,
}

/// The default size of a per-source table: 65,536 client addresses per listener.
pub const DEFAULT_SOURCE_TABLE: usize = 65_536;

/// Admin connections one client address may hold at once, unless configured.
pub const DEFAULT_ADMIN_CONNECTIONS_PER_SOURCE: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    RandomTwo,
    SourceHash,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::RandomTwo => "random-two",
            Balance::SourceHash => "source-hash",
        }
    }
}

/// What happens to a server's established connections when it goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDown {
    /// They keep flowing (a watch on a sick API server ends by itself or not at all).
    #[default]
    Keep,
    /// They are reset, so that clients fail fast and reconnect elsewhere.
    Close,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    pub balance: Balance,
    pub servers: Vec<ServerConfig>,
    pub health: HealthConfig,
    pub on_down: OnDown,
    /// Passive health: consecutive connect failures mark a server down.
    pub observe: bool,
    pub error_limit: u32,
    pub slow_start: Option<Duration>,
    pub connect_timeout: Duration,
    pub retries: u32,
    /// TCP_USER_TIMEOUT of the sockets to its servers.
    pub user_timeout: Option<Duration>,
    /// A PROXY header first on every connection to a server, carrying the client.
    pub send_proxy: Option<ProxyVersion>,
    /// How many clients may wait at once for a server with room (`max_queue`);
    /// `None`: no bound but `queue_timeout`. Only with servers that have a limit.
    pub max_queue: Option<usize>,
    /// How long a client waits in the queue before it is closed (`queue_timeout`;
    /// default: `connect_timeout`, as HAProxy's `timeout queue`).
    pub queue_timeout: Duration,
}

impl BackendConfig {
    /// Whether any server has a connection limit: only then is there a queue.
    pub fn limited(&self) -> bool {
        self.servers.iter().any(|s| s.max_connections.is_some())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub name: String,
    pub host: Host,
    pub port: u16,
    pub weight: u32,
    pub backup: bool,
    /// Connections it takes at once (its own `max_connections`, else the backend's);
    /// `None`: no limit.
    pub max_connections: Option<u32>,
}

impl ServerConfig {
    /// The address as the operator wrote it: `arkveld:6443`, `192.168.4.12:6443`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub check: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Check another port than the traffic goes to.
    pub port: Option<u16>,
    /// `health.send_proxy = true`: checks start with a PROXY header too (the backend's version).
    pub send_proxy: Option<ProxyVersion>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            port: None,
            send_proxy: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// No active check: a server is up unless passive checks or the operator say otherwise.
    None,
    Tcp,
    Tls(TlsCheck),
    Http(HttpCheck),
    Https(HttpCheck, TlsCheck),
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Tls(_) => "tls",
            CheckKind::Http(_) => "http",
            CheckKind::Https(..) => "https",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsCheck {
    /// The names sent; empty: the server's host name. Each gets a handshake of its own
    /// and its certificate watched.
    pub sni: Vec<String>,
    /// Without a CA the server's certificate is watched against the system roots.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A substring the certificate's issuer must hold (catches staging or self-signed).
    pub expect_issuer: Option<String>,
    pub cert_failure: CertFailure,
}

/// What a certificate that fails the watch does to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertFailure {
    /// Metrics, status and alerts say so; the server stays in rotation.
    #[default]
    Alert,
    /// The check fails: the server goes down after `fall` checks.
    Down,
}

impl CertFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            CertFailure::Alert => "alert",
            CertFailure::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub path: String,
    pub host: Option<String>,
    pub expect: Vec<u16>,
    pub body: Option<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse_bytes(&bytes, &path.display().to_string())
    }

    /// Validates the bytes of a file; a byte that is not UTF-8 is an error at its place.
    pub fn parse_bytes(bytes: &[u8], origin: &str) -> Result<Config, ConfigError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Config::parse(text, origin),
            Err(e) => Err(ConfigError::Invalid(vec![error::not_utf8(bytes, &e, origin)])),
        }
    }

    /// Validates `text`; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        validate::validate(text, origin)
    }

    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// A one-screen summary: listeners → backends → servers.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for l in &self.listeners {
            let binds: Vec<String> = l.bind.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(s, "listener {:?} on {}", l.name, binds.join(", "));
            let _ = writeln!(s, "  -> backend {:?}", l.backend);
            if let Some(b) = self.backend(&l.backend) {
                let _ = writeln!(
                    s,
                    "     balance {}, health check {} every {:?} (rise {}, fall {})",
                    b.balance.as_str(),
                    b.health.check.name(),
                    b.health.interval,
                    b.health.rise,
                    b.health.fall
                );
                if b.limited() {
                    let most = b.max_queue.map_or("no bound".to_string(), |m| format!("at most {m}"));
                    let _ = writeln!(s, "     queue: {most} waiting, each up to {:?}", b.queue_timeout);
                }
                for srv in &b.servers {
                    let mut extra = String::new();
                    if srv.weight != 1 {
                        let _ = write!(extra, " weight {}", srv.weight);
                    }
                    if srv.backup {
                        extra.push_str(" backup");
                    }
                    if let Some(m) = srv.max_connections {
                        let _ = write!(extra, " max_connections {m}");
                    }
                    let _ = writeln!(s, "     server {:?} {}{}", srv.name, srv.address(), extra);
                }
            }
        }
        let unused: Vec<&str> = self
            .backends
            .iter()
            .filter(|b| !self.listeners.iter().any(|l| l.backend == b.name))
            .map(|b| b.name.as_str())
            .collect();
        if !unused.is_empty() {
            let _ = writeln!(s, "backends used by no listener: {}", unused.join(", "));
        }
        match &self.admin {
            Some(a) => {
                let on: Vec<String> = a.listen.iter().map(SocketAddr::to_string).collect();
                let _ = writeln!(s, "admin on {}", on.join(", "));
            }
            None => s.push_str("admin listener off\n"),
        }
        s
    }
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
