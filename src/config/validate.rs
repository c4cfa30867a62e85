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
