//! The configuration's specification: what is accepted, and what is refused with which message.

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
fn user_timeout_comes_from_defaults_unless_a_backend_sets_its_own() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.backend("control-plane").unwrap().user_timeout,
        Some(Duration::from_secs(30))
    );
    let text = format!("[defaults]\nuser_timeout = \"10s\"\n{MINIMAL}user_timeout = \"off\"\n");
    let c = parse(&text).unwrap();
    assert_eq!(c.defaults.user_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.backend("control-plane").unwrap().user_timeout, None);
    let text = format!("[defaults]\nuser_timeout = \"soon\"\n{MINIMAL}");
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.starts_with("user_timeout: "), "{}", errors[0]);
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

const EDGE: &str = r#"
[admin]
listen = "127.0.0.1:9100"
allow = ["127.0.0.0/8", "::1/128"]

[[listener]]
name = "kube-api"
bind = ["127.0.0.1:6443"]
backend = "control-plane"
allow = ["192.168.0.0/22", "192.168.4.0/24", "::1/128"]
deny = ["192.168.4.66"]
source_limit = { connections = 50, rate = "100/10s" }

[backend.control-plane]
servers = ["127.0.4.11:6443"]
"#;

#[test]
fn source_rules_and_limits_read_as_written_with_documented_defaults() {
    let c = parse(EDGE).unwrap();
    let l = &c.listeners[0];
    let texts: Vec<String> = l.sources.allow.iter().map(|c| c.to_string()).collect();
    assert_eq!(texts, ["192.168.0.0/22", "192.168.4.0/24", "::1/128"]);
    assert_eq!(l.sources.deny[0].to_string(), "192.168.4.66/32");
    let limit = l.source_limit.expect("source_limit");
    assert_eq!(limit.limits.max_connections, Some(50));
    assert_eq!(
        limit.limits.rate.map(|r| (r.count, r.per)),
        Some((100, Duration::from_secs(10)))
    );
    assert_eq!(limit.sources, DEFAULT_SOURCE_TABLE);
    let admin = c.admin.expect("admin");
    assert_eq!(admin.sources.allow.len(), 2);
    assert_eq!(
        admin.source_limit.limits.max_connections,
        Some(DEFAULT_ADMIN_CONNECTIONS_PER_SOURCE),
        "the admin listener caps connections per source unless told otherwise"
    );
    let plain = parse(MINIMAL).unwrap();
    assert!(plain.listeners[0].sources.is_empty());
    assert_eq!(plain.listeners[0].source_limit, None);
}

#[test]
fn a_cidr_with_host_bits_set_names_its_line_and_suggests_the_network() {
    let text = EDGE.replace(r#""192.168.4.0/24""#, r#""192.168.4.1/24""#);
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 10, "{errors:?}");
    assert!(
        errors[0].message.contains("listener \"kube-api\": allow:") && errors[0].message.contains("192.168.4.0/24"),
        "{}",
        errors[0].message
    );
}

#[test]
fn bad_source_limits_are_refused_where_they_are_written() {
    for (from, to, expect) in [
        (r#""100/10s""#, r#""100 per 10s""#, "is not a rate"),
        ("connections = 50, ", "connections = 0, ", "out of range"),
        (r#"{ connections = 50, rate = "100/10s" }"#, "{ }", "limits nothing"),
        ("connections = 50", "conections = 50", "conections"),
        (
            r#"deny = ["192.168.4.66"]"#,
            r#"deny = ["192.168.4.666"]"#,
            "not an IPv4 or IPv6 address",
        ),
    ] {
        let text = EDGE.replace(from, to);
        assert_ne!(text, EDGE, "the test's replacement of {from:?} must apply");
        let errors = parse(&text).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains(expect) && (10..=12).contains(&e.line)),
            "{to:?}: expected {expect:?} on lines 10-12, got {errors:?}"
        );
    }
}

proptest::proptest! {
    /// Whatever text stands in `allow`, the config parser answers without panicking:
    /// the block it means, or an error on the entry's own line.
    #[test]
    fn any_allow_entry_parses_or_is_refused_on_its_line(entry in "[0-9a-fA-F:./ ]{0,24}|\\PC{0,12}") {
        let quoted = toml::Value::String(entry.clone()).to_string();
        let text = EDGE.replace(r#""192.168.4.0/24""#, &quoted);
        match parse(&text) {
            Ok(c) => {
                let want: crate::edge::source_rules::Cidr = entry.trim().parse().expect("accepted by the config, so a CIDR");
                proptest::prop_assert_eq!(c.listeners[0].sources.allow[1], want);
            }
            Err(errors) => {
                proptest::prop_assert!(errors.iter().all(|e| e.line == 10), "{:?}", errors);
            }
        }
    }

    /// Likewise for `source_limit.rate`.
    #[test]
    fn any_rate_parses_or_is_refused_on_its_line(rate in "[0-9]{0,12}/?[0-9]{0,6}(ms|s|m|h|d|x)?|\\PC{0,10}") {
        let quoted = toml::Value::String(rate.clone()).to_string();
        let text = EDGE.replace(r#""100/10s""#, &quoted);
        match parse(&text) {
            Ok(c) => proptest::prop_assert!(c.listeners[0].source_limit.and_then(|s| s.limits.rate).is_some()),
            Err(errors) => proptest::prop_assert!(errors.iter().all(|e| e.line == 12), "{:?}", errors),
        }
    }
}

fn tls_check(health: &str) -> TlsCheck {
    let c = parse(&format!("{MINIMAL}health = {health}\n")).unwrap();
    match &c.backends[0].health.check {
        CheckKind::Tls(t) | CheckKind::Https(_, t) => t.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sni_is_one_name_or_a_list_and_each_is_a_server_name() {
    assert_eq!(
        tls_check(r#"{ check = "tls", sni = "kubernetes" }"#).sni,
        ["kubernetes"]
    );
    assert_eq!(
        tls_check(r#"{ check = "tls", sni = ["a.example", "b.example"] }"#).sni,
        ["a.example", "b.example"]
    );
    assert!(tls_check(r#"{ check = "tls" }"#).sni.is_empty());
    for (bad, says) in [
        (r#"sni = []"#, "non-empty list"),
        (r#"sni = 3"#, "non-empty list"),
        (r#"sni = ["a.example", "A.example"]"#, "listed twice"),
        (r#"sni = "not a name!""#, "not a valid server name"),
    ] {
        let errors = parse(&format!("{MINIMAL}health = {{ check = \"tls\", {bad} }}\n")).unwrap_err();
        assert!(errors[0].message.contains(says), "{bad}: {errors:?}");
    }
}

#[test]
fn a_bad_certificate_takes_a_server_down_by_default_only_with_a_ca() {
    let t = tls_check(r#"{ check = "https", sni = "gallade.home.arpa", expect_issuer = "O=Let's Encrypt" }"#);
    assert_eq!(t.cert_failure, CertFailure::Alert);
    assert_eq!(t.expect_issuer.as_deref(), Some("O=Let's Encrypt"));
    assert_eq!(
        tls_check(r#"{ check = "tls", ca = "ca.pem" }"#).cert_failure,
        CertFailure::Down
    );
    let t = tls_check(r#"{ check = "tls", ca = "ca.pem", cert_failure = "alert" }"#);
    assert_eq!(t.cert_failure, CertFailure::Alert);
    let t = tls_check(r#"{ check = "tls", cert_failure = "down" }"#);
    assert_eq!(t.cert_failure, CertFailure::Down);
    for bad in [
        r#"check = "tcp", cert_failure = "down""#,
        r#"check = "http", expect_issuer = "x""#,
    ] {
        let errors = parse(&format!("{MINIMAL}health = {{ {bad} }}\n")).unwrap_err();
        assert!(errors[0].message.contains("does not apply"), "{bad}: {errors:?}");
    }
    let errors = parse(&format!(
        "{MINIMAL}health = {{ check = \"tls\", cert_failure = \"panic\" }}\n"
    ))
    .unwrap_err();
    assert!(errors[0].message.contains("alert"), "{errors:?}");
}

#[test]
fn server_limits_come_from_the_server_or_the_backend_and_the_queue_waits_connect_timeout() {
    let text = MINIMAL.replace(
        "servers = [\"127.0.4.11:6443\"]",
        "servers = [\"127.0.4.11:6443\", { address = \"127.0.4.12:6443\", max_connections = 5 }]\n\
         max_connections = 250\nconnect_timeout = \"2s\"",
    );
    let c = parse(&text).unwrap();
    let b = c.backend("control-plane").unwrap();
    let limits: Vec<Option<u32>> = b.servers.iter().map(|s| s.max_connections).collect();
    assert_eq!(limits, [Some(250), Some(5)], "the backend's default, the server's own");
    assert!(b.limited());
    assert_eq!(b.max_queue, None, "no bound but the timeout");
    assert_eq!(b.queue_timeout, Duration::from_secs(2), "as HAProxy: timeout connect");
    let c = parse(&format!("{text}\nmax_queue = 0\nqueue_timeout = \"500ms\"\n")).unwrap();
    let b = c.backend("control-plane").unwrap();
    assert_eq!((b.max_queue, b.queue_timeout), (Some(0), Duration::from_millis(500)));
}

#[test]
fn without_limits_there_is_no_queue_and_its_keys_are_refused() {
    let c = parse(MINIMAL).unwrap();
    let b = c.backend("control-plane").unwrap();
    assert!(!b.limited());
    assert_eq!(b.servers[0].max_connections, None);
    let errors = parse(&format!("{MINIMAL}max_queue = 10\nqueue_timeout = \"1s\"\n")).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (e, key) in errors.iter().zip(["max_queue", "queue_timeout"]) {
        assert!(
            e.message
                .contains(&format!("{key} applies only when servers have a limit")),
            "{e}"
        );
    }
}

#[test]
fn bad_limits_are_refused_where_they_are_written() {
    let text = MINIMAL.replace(
        "servers = [\"127.0.4.11:6443\"]",
        "servers = [{ address = \"127.0.4.11:6443\", max_connections = 0 }]\nmax_queue = -1\nqueue_timeout = \"0s\"",
    );
    let errors = parse(&text).unwrap_err();
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(errors.len(), 3, "{messages:?}");
    assert!(
        messages[0].contains("max_connections = 0 is out of range"),
        "{messages:?}"
    );
    assert!(messages[1].contains("max_queue = -1 is out of range"), "{messages:?}");
    assert!(
        messages[2].contains("queue_timeout must be longer than 0"),
        "{messages:?}"
    );
    assert!(errors.iter().all(|e| e.line > 1), "each at its line: {errors:?}");
}
