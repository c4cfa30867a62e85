//! Validation: raw values (`schema.rs`) into the typed ones of `mod.rs`, every problem
//! recorded with its place, so that one run reports them all.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use super::error::{closest, explain_serde_message, line_column};
use super::parse::{invalid_name_message, parse_bind, parse_duration, parse_host_port, valid_name};
use super::schema::*;
use super::*;

/// Validates `text`; `origin` names it in error messages.
pub(super) fn validate(text: &str, origin: &str) -> Result<Config, ConfigError> {
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

mod edge;
mod limits;

use limits::MAX_CONNECTIONS;

/// "backend X is not defined", with the likely fix.
fn unknown_backend(listener: &str, backend: &str, defined: &[&str]) -> String {
    let mut msg = format!("listener {listener:?}: backend {backend:?} is not defined");
    match closest(backend, defined.iter().copied()) {
        Some(s) => msg.push_str(&format!("; did you mean {s:?}?")),
        None if defined.is_empty() => msg.push_str(&format!("; add a [backend.{backend}] table")),
        None => msg.push_str(&format!("; defined backends: {}", defined.join(", "))),
    }
    msg
}

/// The listeners' names and addresses so far: each is taken once.
#[derive(Default)]
struct Seen {
    names: HashSet<String>,
    binds: Vec<(SocketAddr, String)>,
}

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

    /// A positive duration, or `"off"` (also `"0"`, `"0s"`) for none.
    fn duration_or_off(
        &mut self,
        what: &str,
        value: &Option<S<String>>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        match value {
            Some(v) if matches!(v.get_ref().as_str(), "off" | "0" | "0s") => None,
            None => default,
            other => Some(self.positive_duration(what, other, default.unwrap_or(Duration::from_secs(1)))),
        }
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
        let admin = raw.admin.map(|a| self.admin(a.into_inner()));
        let log = match raw.log {
            None => LogConfig::default(),
            Some(l) => self.log(l),
        };

        let mut backends = Vec::new();
        for (name, backend) in raw.backend {
            if let Some(b) = self.backend(name, backend, &defaults) {
                backends.push(b);
            }
        }
        let backend_names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();

        let mut listeners = Vec::new();
        let mut seen = Seen::default();
        for l in raw.listener {
            listeners.push(self.listener(l, &backend_names, &mut seen));
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

    fn admin(&mut self, a: RawAdmin) -> AdminConfig {
        let mut listen: Vec<SocketAddr> = Vec::new();
        for text in a.listen.get_ref().as_slice() {
            match text.parse::<SocketAddr>() {
                Ok(addr) if listen.contains(&addr) => {
                    self.error(&a.listen.span(), format!("admin listen names {addr} twice"));
                }
                Ok(addr) => listen.push(addr),
                Err(_) => self.error(
                    &a.listen.span(),
                    format!("admin listen = {text:?} is not an address with a port, like \"127.0.0.1:8405\""),
                ),
            }
        }
        if a.listen.get_ref().as_slice().is_empty() {
            self.error(
                &a.listen.span(),
                "admin listen is an empty list: name at least one address, like \"127.0.0.1:8405\"".to_string(),
            );
        }
        let sources = self.source_rules("admin", &a.allow, &a.deny);
        let source_limit = match &a.source_limit {
            Some(raw) => self.source_limit("admin", raw),
            None => None,
        };
        AdminConfig {
            listen,
            token_file: a.token_file,
            sources,
            source_limit: source_limit.unwrap_or(SourceLimitConfig {
                limits: Limits {
                    max_connections: Some(DEFAULT_ADMIN_CONNECTIONS_PER_SOURCE),
                    rate: None,
                },
                sources: DEFAULT_SOURCE_TABLE,
            }),
            ready_when: a.ready_when.unwrap_or_default(),
        }
    }

    fn log(&mut self, l: RawLog) -> LogConfig {
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

    fn listener(&mut self, l: S<RawListener>, backend_names: &[&str], seen: &mut Seen) -> ListenerConfig {
        let span = l.span();
        let l = l.into_inner();
        let name = l.name.get_ref().clone();
        if !valid_name(&name) {
            self.error(&l.name.span(), invalid_name_message("listener", &name));
        }
        if !seen.names.insert(name.clone()) {
            self.error(&l.name.span(), format!("listener {name:?} is defined twice"));
        }
        let edge = self.listener_edge(&name, &l, backend_names);
        let bind = self.binds(&name, span, l.bind, &mut seen.binds);
        let backend = l.backend.get_ref().clone();
        if !backend_names.contains(&backend.as_str()) {
            let msg = unknown_backend(&name, &backend, backend_names);
            self.error(&l.backend.span(), msg);
        }
        let max_connections = l
            .max_connections
            .as_ref()
            .map(|m| self.integer("max_connections", &Some(m.clone()), 1..10_000_001, 1) as usize);
        let what = format!("listener {name:?}");
        let sources = self.source_rules(&what, &l.allow, &l.deny);
        let source_limit = match &l.source_limit {
            Some(raw) => self.source_limit(&what, raw),
            None => None,
        };
        ListenerConfig {
            name,
            bind,
            backend,
            max_connections,
            sources,
            source_limit,
            freebind: l.freebind.unwrap_or(false),
            accept_proxy: edge.accept_proxy,
            routes: edge.routes,
            inspect_timeout: edge.inspect_timeout,
        }
    }

    /// A listener's `bind`: one address or a list, none bound by an earlier listener
    /// (`seen`: each address and the listener that binds it).
    fn binds(
        &mut self,
        name: &str,
        span: Range<usize>,
        raw: S<toml::Value>,
        seen: &mut Vec<(SocketAddr, String)>,
    ) -> Vec<SocketAddr> {
        let bind_span = raw.span();
        let bind_values: Vec<String> = match raw.into_inner() {
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
                    if let Some((_, other)) = seen.iter().find(|(a, _)| *a == addr) {
                        self.error(
                            &b.span(),
                            format!("listener {name:?}: {addr} is already bound by listener {other:?}"),
                        );
                    }
                    seen.push((addr, name.to_string()));
                    bind.push(addr);
                }
                Err(e) => self.error(&b.span(), format!("listener {name:?}: {e}")),
            }
        }
        bind
    }

    /// `allow` and `deny`: each entry a CIDR block, an error at the entry that is not.
    fn source_rules(&mut self, what: &str, allow: &[S<String>], deny: &[S<String>]) -> SourceRulesConfig {
        let mut blocks = |key: &str, list: &[S<String>]| -> Vec<Cidr> {
            let mut out = Vec::new();
            for entry in list {
                match entry.get_ref().trim().parse::<Cidr>() {
                    Ok(c) => out.push(c),
                    Err(e) => self.error(&entry.span(), format!("{what}: {key}: {e}")),
                }
            }
            out
        };
        SourceRulesConfig {
            allow: blocks("allow", allow),
            deny: blocks("deny", deny),
        }
    }

    /// `source_limit = { connections = N, rate = "N/DURATION", sources = N }`.
    fn source_limit(&mut self, what: &str, raw: &S<RawSourceLimit>) -> Option<SourceLimitConfig> {
        let table = raw.get_ref();
        if table.connections.is_none() && table.rate.is_none() {
            self.error(
                &raw.span(),
                format!("{what}: source_limit limits nothing; give connections = N, rate = \"N/DURATION\" or both"),
            );
            return None;
        }
        let max_connections = table
            .connections
            .as_ref()
            .map(|c| self.integer("source_limit connections", &Some(c.clone()), 1..1_000_001, 1) as u32);
        let rate = match &table.rate {
            None => None,
            Some(r) => match r.get_ref().trim().parse::<Rate>() {
                Ok(rate) => Some(rate),
                Err(e) => {
                    self.error(&r.span(), format!("{what}: source_limit rate: {e}"));
                    None
                }
            },
        };
        let sources = self.integer(
            "source_limit sources",
            &table.sources,
            1..(1 << 20) + 1,
            DEFAULT_SOURCE_TABLE as i64,
        ) as usize;
        Some(SourceLimitConfig {
            limits: Limits { max_connections, rate },
            sources,
        })
    }

    fn defaults(&mut self, raw: Option<RawDefaults>) -> Defaults {
        let d = Defaults::default();
        let Some(raw) = raw else { return d };
        let keepalive = self.duration_or_off("keepalive", &raw.keepalive, d.keepalive);
        let user_timeout = self.duration_or_off("user_timeout", &raw.user_timeout, d.user_timeout);
        Defaults {
            connect_timeout: self.positive_duration("connect_timeout", &raw.connect_timeout, d.connect_timeout),
            idle_timeout: self.positive_duration("idle_timeout", &raw.idle_timeout, d.idle_timeout),
            retries: self.integer("retries", &raw.retries, 0..101, d.retries as i64) as u32,
            drain_timeout: self.duration("drain_timeout", &raw.drain_timeout, d.drain_timeout),
            keepalive,
            user_timeout,
            forwarding: raw.forwarding.unwrap_or_default(),
            max_connections: raw
                .max_connections
                .as_ref()
                .map(|m| self.integer("max_connections", &Some(m.clone()), 1..10_000_001, 1) as usize),
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
        let backend_limit = raw
            .max_connections
            .as_ref()
            .map(|m| self.integer("max_connections", &Some(m.clone()), MAX_CONNECTIONS, 1) as u32);
        let mut servers: Vec<ServerConfig> = Vec::new();
        for s in raw.servers.into_inner() {
            if let Some(server) = self.server(&name, s, backend_limit, &servers) {
                servers.push(server);
            }
        }
        if servers.is_empty() {
            self.error(
                &servers_span,
                format!("backend {name:?}: servers is empty; give at least one"),
            );
        }
        let health = match raw.health {
            None => HealthConfig::default(),
            Some(h) => {
                let send_proxy = self.health_send_proxy(&name, &h.get_ref().send_proxy, raw.send_proxy);
                HealthConfig {
                    send_proxy,
                    ..self.health(&name, h)
                }
            }
        };
        let connect_timeout = self.positive_duration("connect_timeout", &raw.connect_timeout, defaults.connect_timeout);
        let limited = servers.iter().any(|s| s.max_connections.is_some());
        let queue = self.queue(&name, (&raw.max_queue, &raw.queue_timeout), limited, connect_timeout);
        Some(BackendConfig {
            max_queue: queue.max_queue,
            queue_timeout: queue.timeout,
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
            connect_timeout,
            retries: self.integer("retries", &raw.retries, 0..101, defaults.retries as i64) as u32,
            user_timeout: self.duration_or_off("user_timeout", &raw.user_timeout, defaults.user_timeout),
            send_proxy: raw.send_proxy,
            name,
        })
    }

    /// One entry of a backend's `servers`: `"host:port"` or a table; `None` (an error
    /// recorded) when it cannot be read. `others` are the servers before it.
    fn server(
        &mut self,
        name: &str,
        s: S<toml::Value>,
        backend_limit: Option<u32>,
        others: &[ServerConfig],
    ) -> Option<ServerConfig> {
        let span = s.span();
        let table = match s.into_inner() {
            toml::Value::String(address) => RawServerTable {
                name: None,
                address,
                weight: None,
                backup: false,
                max_connections: None,
            },
            v @ toml::Value::Table(_) => match v.try_into::<RawServerTable>() {
                Ok(t) => t,
                Err(e) => {
                    let msg = explain_serde_message(e.message());
                    self.error(&span, format!("backend {name:?}: server: {msg}"));
                    return None;
                }
            },
            _ => {
                self.error(
                    &span,
                    format!("backend {name:?}: a server is \"host:port\" or {{ name = ..., address = \"host:port\" }}"),
                );
                return None;
            }
        };
        let (host, port) = match parse_host_port(&table.address) {
            Ok(hp) => hp,
            Err(e) => {
                self.error(&span, format!("backend {name:?}: {e}"));
                return None;
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
        if others.iter().any(|o| o.name == server_name) {
            self.error(
                &span,
                format!("backend {name:?}: two servers are named {server_name:?}; give each a distinct name = \"...\""),
            );
        }
        let weight = self.integer("weight", &weight, 1..257, 1) as u32;
        let own_limit = table.max_connections.map(|m| S::new(span.clone(), m));
        let max_connections = match own_limit {
            Some(m) => Some(self.integer("max_connections", &Some(m), MAX_CONNECTIONS, 1) as u32),
            None => backend_limit,
        };
        Some(ServerConfig {
            name: server_name,
            host,
            port,
            weight,
            backup,
            max_connections,
        })
    }

    fn health(&mut self, backend: &str, raw: S<RawHealth>) -> HealthConfig {
        let d = HealthConfig::default();
        let mut raw = raw.into_inner();
        let named = raw.check.take();
        let kind = self.check_kind(backend, &named);
        self.misplaced_health_keys(backend, &raw, kind);
        let tls = self.tls_check(backend, &mut raw);
        let http = self.http_check(&mut raw);
        let check = match kind {
            "none" => CheckKind::None,
            "tls" => CheckKind::Tls(tls),
            "http" => CheckKind::Http(http),
            "https" => CheckKind::Https(http, tls),
            _ => CheckKind::Tcp,
        };
        HealthConfig {
            check,
            interval: self.positive_duration("interval", &raw.interval, d.interval),
            timeout: self.positive_duration("timeout", &raw.timeout, d.timeout),
            rise: self.integer("rise", &raw.rise, 1..101, d.rise as i64) as u32,
            fall: self.integer("fall", &raw.fall, 1..101, d.fall as i64) as u32,
            port: raw
                .port
                .as_ref()
                .map(|p| self.integer("port", &Some(p.clone()), 1..65536, 1) as u16),
            send_proxy: None,
        }
    }

    /// The kind of check, `tcp` when none is given; an unknown one is an error (and
    /// checked as tcp).
    fn check_kind<'r>(&mut self, backend: &str, check: &'r Option<S<String>>) -> &'r str {
        let kind = check.as_ref().map(|c| c.get_ref().as_str()).unwrap_or("tcp");
        const KINDS: [&str; 5] = ["tcp", "tls", "http", "https", "none"];
        if !KINDS.contains(&kind) {
            let span = check.as_ref().map(|c| c.span()).unwrap_or(0..0);
            let mut msg = format!(
                "backend {backend:?}: health check {kind:?} is not known; use one of tcp, tls, http, https, none"
            );
            if let Some(s) = closest(kind, KINDS.iter().copied()) {
                msg.push_str(&format!(" (did you mean {s:?}?)"));
            }
            self.error(&span, msg);
        }
        kind
    }

    /// Keys that only make sense for some kinds are errors elsewhere, not silently
    /// unused; `cert` and `key` go together.
    fn misplaced_health_keys(&mut self, backend: &str, raw: &RawHealth, kind: &str) {
        let is_http = matches!(kind, "http" | "https");
        let is_tls = matches!(kind, "tls" | "https");
        let misplaced: [(&str, Option<Range<usize>>, bool); 10] = [
            ("path", raw.path.as_ref().map(|v| v.span()), is_http),
            ("host", raw.host.as_ref().map(|v| v.span()), is_http),
            ("expect", raw.expect.as_ref().map(|v| v.span()), is_http),
            ("body", raw.body.as_ref().map(|v| v.span()), is_http),
            ("sni", raw.sni.as_ref().map(|v| v.span()), is_tls),
            ("ca", raw.ca.as_ref().map(|v| v.span()), is_tls),
            ("cert", raw.cert.as_ref().map(|v| v.span()), kind == "https"),
            ("key", raw.key.as_ref().map(|v| v.span()), kind == "https"),
            ("expect_issuer", raw.expect_issuer.as_ref().map(|v| v.span()), is_tls),
            ("cert_failure", raw.cert_failure.as_ref().map(|v| v.span()), is_tls),
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
    }

    /// The TLS half of a tls or https check: names, trust, client certificate, and what
    /// a failing certificate does.
    fn tls_check(&mut self, backend: &str, raw: &mut RawHealth) -> TlsCheck {
        let sni = self.sni_names(backend, raw.sni.take());
        if let Some(e) = &raw.expect_issuer {
            if e.get_ref().trim().is_empty() {
                self.error(
                    &e.span(),
                    "expect_issuer is empty; give a part of the issuer, like \"O=Let's Encrypt\"",
                );
            }
        }
        // A `ca` names the CA that must have signed: by default a failure takes the server
        // down; without one, the watch only reports.
        let cert_failure = match &raw.cert_failure {
            Some(c) => *c.get_ref(),
            None if raw.ca.is_some() => CertFailure::Down,
            None => CertFailure::Alert,
        };
        TlsCheck {
            sni,
            ca: raw.ca.take().map(|s| s.into_inner()),
            cert: raw.cert.take().map(|s| s.into_inner()),
            key: raw.key.take().map(|s| s.into_inner()),
            expect_issuer: raw.expect_issuer.take().map(|s| s.into_inner()),
            cert_failure,
        }
    }

    /// The HTTP half of an http or https check: the request and the answer it expects.
    fn http_check(&mut self, raw: &mut RawHealth) -> HttpCheck {
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
        HttpCheck {
            path,
            host: raw.host.take().map(|h| h.into_inner()),
            expect,
            body: raw.body.take().map(|b| b.into_inner()),
        }
    }

    /// `sni = "name"` or `sni = ["a", "b"]`: server names (or IP addresses), no repeats.
    fn sni_names(&mut self, backend: &str, raw: Option<S<toml::Value>>) -> Vec<String> {
        let Some(raw) = raw else { return Vec::new() };
        let span = raw.span();
        let names: Vec<String> = match raw.into_inner() {
            toml::Value::String(s) => vec![s],
            toml::Value::Array(a) if !a.is_empty() && a.iter().all(|v| v.is_str()) => {
                a.into_iter().filter_map(|v| v.as_str().map(String::from)).collect()
            }
            _ => {
                self.error(
                    &span,
                    format!("backend {backend:?}: sni must be a server name or a non-empty list of them"),
                );
                return Vec::new();
            }
        };
        let mut seen = HashSet::new();
        for name in &names {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                self.error(
                    &span,
                    format!(
                        "backend {backend:?}: sni {name:?} is not a valid server name (a DNS name or an IP address)"
                    ),
                );
            } else if !seen.insert(name.to_ascii_lowercase()) {
                self.error(&span, format!("backend {backend:?}: sni {name:?} is listed twice"));
            }
        }
        names
    }
}
