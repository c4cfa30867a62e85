//! The configuration file: its TOML schema and its validation into typed values.
//!
//! This module owns parsing and checking, nothing else. Text goes in; either a
//! [`Config`] whose values cannot be wrong comes out (durations are `Duration`s,
//! addresses are `SocketAddr`s or checked host names, every listener names a backend
//! that exists), or a [`ConfigError`] that points at file, line, column and key and,
//! where it can, suggests the fix. The rest of gatehouse never re-checks.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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
    pub forwarding: Forwarding,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(3600),
            retries: 2,
            drain_timeout: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(60)),
            forwarding: Forwarding::default(),
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
    pub listen: SocketAddr,
    /// When set, the admin API accepts state changes only with this token (from any
    /// address); when unset, only from loopback.
    pub token_file: Option<PathBuf>,
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
    /// Bind even an address this host does not have (yet): a keepalived address.
    pub freebind: bool,
}

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
    pub sni: Option<String>,
    /// Without a CA the server's certificate is not verified.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub path: String,
    pub host: Option<String>,
    pub expect: Vec<u16>,
    pub body: Option<String>,
}

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

/// One problem in a configuration file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.path, self.line, self.column, self.message)
    }
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Validates `text`; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut v = Validator {
            text,
            origin,
            errors: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                v.error(&span, explain_serde_message(e.message()));
                return Err(ConfigError::Invalid(v.errors));
            }
        };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(v.errors))
        }
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
                for srv in &b.servers {
                    let mut extra = String::new();
                    if srv.weight != 1 {
                        let _ = write!(extra, " weight {}", srv.weight);
                    }
                    if srv.backup {
                        extra.push_str(" backup");
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
                let _ = writeln!(s, "admin on {}", a.listen);
            }
            None => s.push_str("admin listener off\n"),
        }
        s
    }
}

// ---------------------------------------------------------------------------
// The raw schema, as serde reads it. Every table denies unknown keys.

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    defaults: Option<RawDefaults>,
    #[serde(default)]
    resolver: Option<RawResolver>,
    #[serde(default)]
    admin: Option<S<RawAdmin>>,
    #[serde(default)]
    log: Option<RawLog>,
    #[serde(default)]
    listener: Vec<S<RawListener>>,
    #[serde(default)]
    backend: BTreeMap<S<String>, S<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    connect_timeout: Option<S<String>>,
    idle_timeout: Option<S<String>>,
    retries: Option<S<i64>>,
    drain_timeout: Option<S<String>>,
    keepalive: Option<S<String>>,
    forwarding: Option<Forwarding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResolver {
    #[serde(default)]
    nameservers: Vec<S<String>>,
    timeout: Option<S<String>>,
    min_refresh: Option<S<String>>,
    max_refresh: Option<S<String>>,
    retry: Option<S<String>>,
    hosts_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: S<String>,
    token_file: Option<PathBuf>,
    ready_when: Option<ReadyWhen>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: S<String>,
    /// One address or a list; spans inside an untagged enum are lost, so the value is
    /// taken apart by hand.
    bind: S<toml::Value>,
    backend: S<String>,
    max_connections: Option<S<i64>>,
    freebind: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(default)]
    balance: Balance,
    servers: S<Vec<S<toml::Value>>>,
    health: Option<S<RawHealth>>,
    #[serde(default)]
    on_down: OnDown,
    observe: Option<bool>,
    error_limit: Option<S<i64>>,
    slow_start: Option<S<String>>,
    connect_timeout: Option<S<String>>,
    retries: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTable {
    name: Option<String>,
    address: String,
    weight: Option<i64>,
    #[serde(default)]
    backup: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    check: Option<S<String>>,
    interval: Option<S<String>>,
    timeout: Option<S<String>>,
    rise: Option<S<i64>>,
    fall: Option<S<i64>>,
    port: Option<S<i64>>,
    path: Option<S<String>>,
    host: Option<S<String>>,
    expect: Option<S<Expect>>,
    body: Option<S<String>>,
    sni: Option<S<String>>,
    ca: Option<S<PathBuf>>,
    cert: Option<S<PathBuf>>,
    key: Option<S<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Expect {
    One(i64),
    Many(Vec<i64>),
}

// ---------------------------------------------------------------------------
// Validation: raw values into typed ones, every problem recorded with its place.

struct Validator<'a> {
    text: &'a str,
    origin: &'a str,
    errors: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, column) = line_column(self.text, span.start);
        self.errors.push(Diagnostic {
            path: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    fn duration(&mut self, what: &str, value: &Option<S<String>>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.error(&v.span(), format!("{what}: {e}"));
                    default
                }
            },
        }
    }

    fn positive_duration(&mut self, what: &str, value: &Option<S<String>>, default: Duration) -> Duration {
        let d = self.duration(what, value, default);
        if d.is_zero() {
            if let Some(v) = value {
                self.error(&v.span(), format!("{what} must be longer than 0"));
            }
            return default;
        }
        d
    }

    fn integer(&mut self, what: &str, value: &Option<S<i64>>, range: Range<i64>, default: i64) -> i64 {
        match value {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error(
                    &v.span(),
                    format!(
                        "{what} = {} is out of range: it must be from {} to {}",
                        v.get_ref(),
                        range.start,
                        range.end - 1
                    ),
                );
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let defaults = self.defaults(raw.defaults);
        let resolver = self.resolver(raw.resolver);
        let admin = raw.admin.map(|a| {
            let span = a.span();
            let a = a.into_inner();
            let listen = match a.listen.get_ref().parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    self.error(
                        &a.listen.span(),
                        format!(
                            "admin listen = {:?} is not an address with a port, like \"127.0.0.1:9100\"",
                            a.listen.get_ref()
                        ),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            };
            let _ = span;
            AdminConfig {
                listen,
                token_file: a.token_file,
                ready_when: a.ready_when.unwrap_or_default(),
            }
        });
        let log = match raw.log {
            None => LogConfig::default(),
            Some(l) => {
                if let Some(level) = &l.level {
                    if tracing_subscriber::EnvFilter::try_new(level.get_ref()).is_err() {
                        self.error(
                            &level.span(),
                            format!(
                                "log level {:?} is not valid: use error, warn, info, debug or trace",
                                level.get_ref()
                            ),
                        );
                    }
                }
                LogConfig {
                    format: l.format,
                    level: l.level.map(|l| l.into_inner()),
                }
            }
        };

        let mut backends = Vec::new();
        for (name, backend) in raw.backend {
            if let Some(b) = self.backend(name, backend, &defaults) {
                backends.push(b);
            }
        }
        let backend_names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();

        let mut listeners = Vec::new();
        let mut seen_names = HashSet::new();
        let mut seen_binds: Vec<(SocketAddr, String)> = Vec::new();
        for l in raw.listener {
            let span = l.span();
            let l = l.into_inner();
            let name = l.name.get_ref().clone();
            if !valid_name(&name) {
                self.error(&l.name.span(), invalid_name_message("listener", &name));
            }
            if !seen_names.insert(name.clone()) {
                self.error(&l.name.span(), format!("listener {name:?} is defined twice"));
            }
            let bind_span = l.bind.span();
            let bind_values: Vec<String> = match l.bind.into_inner() {
                toml::Value::String(b) => vec![b],
                toml::Value::Array(bs) if bs.iter().all(|b| b.is_str()) => {
                    bs.into_iter().filter_map(|b| b.as_str().map(String::from)).collect()
                }
                _ => {
                    self.error(
                        &bind_span,
                        format!("listener {name:?}: bind must be an address or a list of addresses"),
                    );
                    Vec::new()
                }
            };
            if bind_values.is_empty() {
                self.error(
                    &span,
                    format!("listener {name:?}: bind is empty; give at least one address"),
                );
            }
            let mut bind = Vec::new();
            for text in bind_values {
                let b = S::new(bind_span.clone(), text);
                match parse_bind(b.get_ref()) {
                    Ok(addr) => {
                        if let Some((_, other)) = seen_binds.iter().find(|(a, _)| *a == addr) {
                            self.error(
                                &b.span(),
                                format!("listener {name:?}: {addr} is already bound by listener {other:?}"),
                            );
                        }
                        seen_binds.push((addr, name.clone()));
                        bind.push(addr);
                    }
                    Err(e) => self.error(&b.span(), format!("listener {name:?}: {e}")),
                }
            }
            let backend = l.backend.get_ref().clone();
            if !backend_names.contains(&backend.as_str()) {
                let mut msg = format!("listener {name:?}: backend {backend:?} is not defined");
                match closest(&backend, backend_names.iter().copied()) {
                    Some(s) => msg.push_str(&format!("; did you mean {s:?}?")),
                    None if backend_names.is_empty() => msg.push_str(&format!("; add a [backend.{backend}] table")),
                    None => msg.push_str(&format!("; defined backends: {}", backend_names.join(", "))),
                }
                self.error(&l.backend.span(), msg);
            }
            let max_connections = l
                .max_connections
                .as_ref()
                .map(|m| self.integer("max_connections", &Some(m.clone()), 1..10_000_001, 1) as usize);
            listeners.push(ListenerConfig {
                name,
                bind,
                backend,
                max_connections,
                freebind: l.freebind.unwrap_or(false),
            });
        }
        if listeners.is_empty() {
            self.error(
                &(0..0),
                "no [[listener]] is defined: gatehouse would have nothing to do",
            );
        }
        Config {
            defaults,
            resolver,
            admin,
            log,
            listeners,
            backends,
        }
    }

    fn defaults(&mut self, raw: Option<RawDefaults>) -> Defaults {
        let d = Defaults::default();
        let Some(raw) = raw else { return d };
        let keepalive = match &raw.keepalive {
            Some(k) if matches!(k.get_ref().as_str(), "off" | "0" | "0s") => None,
            other => Some(self.positive_duration("keepalive", other, Duration::from_secs(60))),
        };
        Defaults {
            connect_timeout: self.positive_duration("connect_timeout", &raw.connect_timeout, d.connect_timeout),
            idle_timeout: self.positive_duration("idle_timeout", &raw.idle_timeout, d.idle_timeout),
            retries: self.integer("retries", &raw.retries, 0..101, d.retries as i64) as u32,
            drain_timeout: self.duration("drain_timeout", &raw.drain_timeout, d.drain_timeout),
            keepalive,
            forwarding: raw.forwarding.unwrap_or_default(),
        }
    }

    fn resolver(&mut self, raw: Option<RawResolver>) -> ResolverConfig {
        let d = ResolverConfig::default();
        let Some(raw) = raw else { return d };
        let mut nameservers = Vec::new();
        for ns in &raw.nameservers {
            let text = ns.get_ref();
            let parsed = text
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Some(addr) => nameservers.push(addr),
                None => self.error(
                    &ns.span(),
                    format!(
                        "nameserver {text:?} is not an IP address (with an optional port), like \"192.168.4.1:53\""
                    ),
                ),
            }
        }
        let r = ResolverConfig {
            nameservers,
            timeout: self.positive_duration("resolver timeout", &raw.timeout, d.timeout),
            min_refresh: self.positive_duration("min_refresh", &raw.min_refresh, d.min_refresh),
            max_refresh: self.positive_duration("max_refresh", &raw.max_refresh, d.max_refresh),
            retry: self.positive_duration("retry", &raw.retry, d.retry),
            hosts_file: raw.hosts_file.unwrap_or(d.hosts_file),
        };
        if r.min_refresh > r.max_refresh {
            if let Some(span) = raw.min_refresh.as_ref().map(|s| s.span()) {
                self.error(&span, "min_refresh is longer than max_refresh");
            }
        }
        r
    }

    fn backend(&mut self, name: S<String>, raw: S<RawBackend>, defaults: &Defaults) -> Option<BackendConfig> {
        let name_span = name.span();
        let name = name.into_inner();
        if !valid_name(&name) {
            self.error(&name_span, invalid_name_message("backend", &name));
        }
        let raw = raw.into_inner();
        let servers_span = raw.servers.span();
        let mut servers: Vec<ServerConfig> = Vec::new();
        for s in raw.servers.into_inner() {
            let span = s.span();
            let table = match s.into_inner() {
                toml::Value::String(address) => RawServerTable {
                    name: None,
                    address,
                    weight: None,
                    backup: false,
                },
                v @ toml::Value::Table(_) => match v.try_into::<RawServerTable>() {
                    Ok(t) => t,
                    Err(e) => {
                        let msg = explain_serde_message(e.message());
                        self.error(&span, format!("backend {name:?}: server: {msg}"));
                        continue;
                    }
                },
                _ => {
                    self.error(
                        &span,
                        format!(
                            "backend {name:?}: a server is \"host:port\" or {{ name = ..., address = \"host:port\" }}"
                        ),
                    );
                    continue;
                }
            };
            let (host, port) = match parse_host_port(&table.address) {
                Ok(hp) => hp,
                Err(e) => {
                    self.error(&span, format!("backend {name:?}: {e}"));
                    continue;
                }
            };
            let server_name = match table.name {
                Some(n) => {
                    if !valid_name(&n) {
                        self.error(&span, invalid_name_message("server", &n));
                    }
                    n
                }
                None => match &host {
                    Host::Name(h) => h.clone(),
                    Host::Ip(_) => table.address.clone(),
                },
            };
            let (weight, backup) = (table.weight.map(|w| S::new(span.clone(), w)), table.backup);
            if servers.iter().any(|o| o.name == server_name) {
                self.error(
                    &span,
                    format!(
                        "backend {name:?}: two servers are named {server_name:?}; give each a distinct name = \"...\""
                    ),
                );
            }
            let weight = self.integer("weight", &weight, 1..257, 1) as u32;
            servers.push(ServerConfig {
                name: server_name,
                host,
                port,
                weight,
                backup,
            });
        }
        if servers.is_empty() {
            self.error(
                &servers_span,
                format!("backend {name:?}: servers is empty; give at least one"),
            );
        }
        let health = match raw.health {
            None => HealthConfig::default(),
            Some(h) => self.health(&name, h),
        };
        Some(BackendConfig {
            balance: raw.balance,
            servers,
            health,
            on_down: raw.on_down,
            observe: raw.observe.unwrap_or(true),
            error_limit: self.integer("error_limit", &raw.error_limit, 1..1001, 3) as u32,
            slow_start: {
                let d = self.duration("slow_start", &raw.slow_start, Duration::ZERO);
                (!d.is_zero()).then_some(d)
            },
            connect_timeout: self.positive_duration("connect_timeout", &raw.connect_timeout, defaults.connect_timeout),
            retries: self.integer("retries", &raw.retries, 0..101, defaults.retries as i64) as u32,
            name,
        })
    }

    fn health(&mut self, backend: &str, raw: S<RawHealth>) -> HealthConfig {
        let d = HealthConfig::default();
        let raw = raw.into_inner();
        let kind = raw.check.as_ref().map(|c| c.get_ref().as_str()).unwrap_or("tcp");
        const KINDS: [&str; 5] = ["tcp", "tls", "http", "https", "none"];
        if !KINDS.contains(&kind) {
            let span = raw.check.as_ref().map(|c| c.span()).unwrap_or(0..0);
            let mut msg = format!(
                "backend {backend:?}: health check {kind:?} is not known; use one of tcp, tls, http, https, none"
            );
            if let Some(s) = closest(kind, KINDS.iter().copied()) {
                msg.push_str(&format!(" (did you mean {s:?}?)"));
            }
            self.error(&span, msg);
        }
        let is_http = matches!(kind, "http" | "https");
        let is_tls = matches!(kind, "tls" | "https");
        // Keys that only make sense for some kinds are errors elsewhere, not silently unused.
        let misplaced: [(&str, Option<Range<usize>>, bool); 8] = [
            ("path", raw.path.as_ref().map(|v| v.span()), is_http),
            ("host", raw.host.as_ref().map(|v| v.span()), is_http),
            ("expect", raw.expect.as_ref().map(|v| v.span()), is_http),
            ("body", raw.body.as_ref().map(|v| v.span()), is_http),
            ("sni", raw.sni.as_ref().map(|v| v.span()), is_tls),
            ("ca", raw.ca.as_ref().map(|v| v.span()), is_tls),
            ("cert", raw.cert.as_ref().map(|v| v.span()), kind == "https"),
            ("key", raw.key.as_ref().map(|v| v.span()), kind == "https"),
        ];
        for (key, span, allowed) in misplaced {
            if let (Some(span), false) = (span, allowed) {
                self.error(
                    &span,
                    format!("backend {backend:?}: health key {key:?} does not apply to check = {kind:?}"),
                );
            }
        }
        if raw.cert.is_some() != raw.key.is_some() {
            let span = raw.cert.as_ref().or(raw.key.as_ref()).map(|v| v.span()).unwrap_or(0..0);
            self.error(
                &span,
                format!("backend {backend:?}: health cert and key go together; give both"),
            );
        }
        let tls = TlsCheck {
            sni: raw.sni.map(|s| s.into_inner()),
            ca: raw.ca.map(|s| s.into_inner()),
            cert: raw.cert.map(|s| s.into_inner()),
            key: raw.key.map(|s| s.into_inner()),
        };
        let expect = match &raw.expect {
            None => vec![200],
            Some(e) => {
                let codes = match e.get_ref() {
                    Expect::One(c) => vec![*c],
                    Expect::Many(cs) => cs.clone(),
                };
                if codes.is_empty() || codes.iter().any(|c| !(100..=599).contains(c)) {
                    self.error(
                        &e.span(),
                        "expect must be an HTTP status (100-599) or a non-empty list of them",
                    );
                }
                codes.into_iter().map(|c| c.clamp(100, 599) as u16).collect()
            }
        };
        let path = raw
            .path
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            if let Some(p) = &raw.path {
                self.error(&p.span(), format!("path {path:?} must start with / and hold no spaces"));
            }
        }
        if let Some(h) = &raw.host {
            if h.get_ref().chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(&h.span(), "host must hold no spaces or control characters");
            }
        }
        let http = HttpCheck {
            path,
            host: raw.host.map(|h| h.into_inner()),
            expect,
            body: raw.body.map(|b| b.into_inner()),
        };
        let check = match kind {
            "none" => CheckKind::None,
            "tls" => CheckKind::Tls(tls),
            "http" => CheckKind::Http(http),
            "https" => CheckKind::Https(http, tls),
            _ => CheckKind::Tcp,
        };
        let h = HealthConfig {
            check,
            interval: self.positive_duration("interval", &raw.interval, d.interval),
            timeout: self.positive_duration("timeout", &raw.timeout, d.timeout),
            rise: self.integer("rise", &raw.rise, 1..101, d.rise as i64) as u32,
            fall: self.integer("fall", &raw.fall, 1..101, d.fall as i64) as u32,
            port: raw
                .port
                .as_ref()
                .map(|p| self.integer("port", &Some(p.clone()), 1..65536, 1) as u16),
        };
        h
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn invalid_name_message(what: &str, name: &str) -> String {
    format!("{what} name {name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'")
}

/// Parses "500ms", "2s", "1m", "1h", "1d" and sums like "1h30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let hint = "write durations like \"500ms\", \"2s\", \"5m\" or \"1h\"";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration; {hint}"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{text:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => return Err(format!("{text:?} has no unit; {hint}")),
            other => return Err(format!("{text:?}: unknown unit {other:?}; {hint}")),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// A listener bind address: "0.0.0.0:6443", "[::]:6443", or ":6443" for all IPv4 addresses.
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
        }
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("bind {text:?} is not an IP address with a port, like \"0.0.0.0:6443\" or \"[::]:6443\""))
}

/// A server address: an IP or a host name, with a port.
pub fn parse_host_port(text: &str) -> Result<(Host, u16), String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((Host::Ip(addr.ip()), addr.port()));
    }
    let example = "like \"arkveld:6443\" or \"192.168.4.12:6443\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("server address {text:?} has no port; write it {example}"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("server address {text:?}: {port:?} is not a port (1-65535)")),
    };
    if host.parse::<IpAddr>().is_ok() || host.contains(':') {
        return Err(format!(
            "server address {text:?}: write IPv6 addresses in brackets, like \"[fd00::11]:6443\""
        ));
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(format!("server address {text:?}: {host:?} is not a valid host name"));
    }
    Ok((Host::Name(host.to_ascii_lowercase()), port))
}

/// Adds a suggestion to serde's "unknown field" and "unknown variant" messages.
fn explain_serde_message(message: &str) -> String {
    let message = message.trim_end();
    let Some(rest) = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))
    else {
        return message.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(unknown, candidates.iter().copied()) {
        Some(s) => format!("{message}; did you mean `{s}`?"),
        None => message.to_string(),
    }
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(cur) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<Diagnostic>> {
        Config::parse(text, "test.toml").map_err(|e| match e {
            ConfigError::Invalid(d) => d,
            other => panic!("unexpected {other}"),
        })
    }

    const MINIMAL: &str = r#"
[[listener]]
name = "kube-api"
bind = ["127.0.0.1:6443"]
backend = "control-plane"

[backend.control-plane]
servers = ["127.0.4.11:6443"]
"#;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("2").unwrap_err().contains("no unit"));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.defaults, Defaults::default());
        let b = c.backend("control-plane").unwrap();
        assert_eq!(b.balance, Balance::RoundRobin);
        assert_eq!(b.health, HealthConfig::default());
        assert_eq!(b.retries, 2);
        assert_eq!(b.servers[0].name, "127.0.4.11:6443");
        assert!(c.admin.is_none());
    }

    #[test]
    fn the_issue_example_is_accepted() {
        let text = r#"
[defaults]
connect_timeout = "3s"
idle_timeout = "1h"
retries = 2
drain_timeout = "30s"

[resolver]
nameservers = ["127.0.0.53:53"]

[[listener]]
name = "kube-api"
bind = ["0.0.0.0:6443", "[::]:6443"]
backend = "control-plane"

[backend.control-plane]
balance = "least-conn"
servers = [
  { name = "arkveld", address = "arkveld:6443" },
  { name = "reydau",  address = "192.168.4.12:6443", weight = 2 },
  "zohshia:6443",
  { address = "192.168.4.99:6443", backup = true },
]
health = { check = "tcp", interval = "2s", timeout = "1s", rise = 2, fall = 3 }
"#;
        let c = parse(text).unwrap();
        let b = c.backend("control-plane").unwrap();
        assert_eq!(b.balance, Balance::LeastConn);
        let names: Vec<&str> = b.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["arkveld", "reydau", "zohshia", "192.168.4.99:6443"]);
        assert_eq!(b.servers[0].host, Host::Name("arkveld".into()));
        assert_eq!(b.servers[1].weight, 2);
        assert!(b.servers[3].backup);
        assert_eq!(c.listeners[0].bind.len(), 2);
        assert_eq!(c.resolver.nameservers, vec!["127.0.0.53:53".parse().unwrap()]);
    }

    #[test]
    fn an_undefined_backend_is_named_with_a_suggestion_and_its_place() {
        let text = MINIMAL.replace("backend = \"control-plane\"", "backend = \"contrl-plane\"");
        let errors = parse(&text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.line, e.column), (5, 11), "{e}");
        assert_eq!(
            e.message,
            "listener \"kube-api\": backend \"contrl-plane\" is not defined; did you mean \"control-plane\"?"
        );
        assert!(e.to_string().starts_with("test.toml:5:11: "), "{e}");
    }

    #[test]
    fn an_unknown_key_is_an_error_with_a_suggestion() {
        let text = format!("[defaults]\nconect_timeout = \"3s\"\n{MINIMAL}");
        let errors = parse(&text).unwrap_err();
        assert_eq!(errors[0].line, 2, "{errors:?}");
        assert!(
            errors[0].message.contains("unknown field `conect_timeout`"),
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("did you mean `connect_timeout`?"),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_values_are_reported_together_with_their_places() {
        let text = r#"
[defaults]
connect_timeout = "3 seconds"
retries = -1

[[listener]]
name = "web"
bind = ["0.0.0.0"]
backend = "web"

[backend.web]
servers = ["no-port", { address = "ok:80", weight = 1000 }]
health = { check = "htp" }
"#;
        let errors = parse(text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 12, 12, 13, 8], "{errors:#?}");
        assert!(errors[4].message.contains("did you mean \"http\""), "{errors:#?}");
    }

    #[test]
    fn health_keys_must_fit_the_check_kind() {
        let text = format!("{MINIMAL}health = {{ check = \"tcp\", path = \"/readyz\" }}\n");
        let errors = parse(&text).unwrap_err();
        assert!(
            errors[0].message.contains("\"path\" does not apply to check = \"tcp\""),
            "{errors:?}"
        );
    }

    #[test]
    fn https_checks_carry_their_tls_and_http_settings() {
        let text = format!(
            "{MINIMAL}health = {{ check = \"https\", path = \"/readyz\", expect = [200, 204], cert = \"c.pem\", key = \"k.pem\", ca = \"ca.pem\", body = \"ok\" }}\n"
        );
        let c = parse(&text).unwrap();
        match &c.backends[0].health.check {
            CheckKind::Https(http, tls) => {
                assert_eq!(http.path, "/readyz");
                assert_eq!(http.expect, vec![200, 204]);
                assert_eq!(http.body.as_deref(), Some("ok"));
                assert_eq!(tls.cert.as_deref(), Some(Path::new("c.pem")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_servers_and_binds_are_refused() {
        let text = r#"
[[listener]]
name = "a"
bind = "127.0.0.1:80"
backend = "b"
[[listener]]
name = "b"
bind = "127.0.0.1:80"
backend = "b"
[backend.b]
servers = ["x:1", { name = "x", address = "y:1" }]
"#;
        let errors = parse(text).unwrap_err();
        assert!(
            errors.iter().any(|e| e.message.contains("two servers are named \"x\"")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("already bound by listener \"a\"")),
            "{errors:?}"
        );
    }

    #[test]
    fn syntax_errors_point_at_their_line() {
        let errors = parse("[[listener]]\nname = \"a\nbind = 1\n").unwrap_err();
        assert_eq!(errors[0].line, 2, "{errors:?}");
    }

    #[test]
    fn server_addresses_are_checked() {
        assert_eq!(
            parse_host_port("Arkveld:6443"),
            Ok((Host::Name("arkveld".into()), 6443))
        );
        assert_eq!(
            parse_host_port("[fd00::11]:6443"),
            Ok((Host::Ip("fd00::11".parse().unwrap()), 6443))
        );
        assert!(parse_host_port("fd00::11:6443").unwrap_err().contains("brackets"));
        assert!(parse_host_port("bad host:1").is_err());
        assert!(parse_host_port("host:0").is_err());
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        for file in ["config/gallade.toml", "config/local.toml", "config/container.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            if let Err(e) = Config::load(&path) {
                panic!("{file}: {e}");
            }
        }
    }
}
