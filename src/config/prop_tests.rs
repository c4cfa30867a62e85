//! Property tests of the config reader: whatever the file holds (bytes that are not
//! UTF-8, broken TOML, valid TOML with wrong types, values out of range), the result
//! is a config or errors with a place inside the file, never a panic.

use proptest::prelude::*;

use super::*;

const VALID: &str = r#"
[defaults]
connect_timeout = "3s"
idle_timeout = "1h"
retries = 2
drain_timeout = "30s"
keepalive = "60s"
max_connections = 5000

[resolver]
nameservers = ["127.0.0.53:53"]

[admin]
listen = "127.0.0.1:9000"

[[listener]]
name = "kube-api"
bind = ["127.0.0.1:6443", "[::1]:6443"]
backend = "control-plane"
max_connections = 100

[backend.control-plane]
balance = "least-conn"
servers = ["127.0.4.11:6443", { name = "b", address = "localhost:6443", weight = 3 }]
health = { check = "http", path = "/readyz", interval = "2s", rise = 2, fall = 3, expect = [200, 204] }
"#;

/// Reads `bytes` and checks the outcome is a config or located errors.
fn outcome(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Config::parse_bytes(bytes, "prop.toml") {
        Ok(_) => Ok(()),
        Err(ConfigError::Invalid(diagnostics)) => {
            prop_assert!(!diagnostics.is_empty(), "an error without a diagnostic");
            let lines = bytes.iter().filter(|b| **b == b'\n').count() + 1;
            for d in &diagnostics {
                prop_assert_eq!(&d.path, "prop.toml");
                prop_assert!(
                    d.line >= 1 && d.line <= lines,
                    "line {} of {} lines: {}",
                    d.line,
                    lines,
                    d
                );
                prop_assert!(d.column >= 1, "column {}: {}", d.column, d);
                prop_assert!(!d.message.is_empty(), "no message at {}:{}", d.line, d.column);
            }
            Ok(())
        }
        Err(other) => Err(TestCaseError::fail(format!("not a located error: {other}"))),
    }
}

/// One key of the schema with a value of any type or shape.
fn fragment() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "connect_timeout",
        "idle_timeout",
        "retries",
        "drain_timeout",
        "keepalive",
        "forwarding",
        "max_connections",
        "name",
        "bind",
        "backend",
        "balance",
        "servers",
        "health",
        "on_down",
        "error_limit",
        "slow_start",
        "listen",
        "nameservers",
        "check",
        "rise",
        "fall",
        "port",
        "expect",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "[0-9]{0,4}(ms|s|m|h|d|x)?".prop_map(|s| format!("{s:?}")),
        "[a-z0-9.:\\[\\]*-]{0,20}".prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("true".to_string()),
        Just("{ address = \"127.0.0.1:1\" }".to_string()),
        Just("[\"127.0.0.1:1\", 7]".to_string()),
        Just("1.5".to_string()),
    ];
    (key, value).prop_map(|(k, v)| format!("{k} = {v}"))
}

fn table() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "[defaults]",
        "[resolver]",
        "[admin]",
        "[log]",
        "[[listener]]",
        "[backend.a]",
        "[backend.a.health]",
        "[other]",
        "",
    ])
    .prop_map(str::to_string)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_give_a_config_or_a_located_error(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        outcome(&bytes)?;
    }

    #[test]
    fn any_text_gives_a_config_or_a_located_error(text in "\\PC{0,300}") {
        outcome(text.as_bytes())?;
    }

    #[test]
    fn a_valid_file_changed_anywhere_gives_a_config_or_a_located_error(
        at in 0..VALID.len(),
        cut in 0usize..20,
        insert in prop::collection::vec(any::<u8>(), 0..6),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        let end = (at + cut).min(bytes.len());
        bytes.splice(at..end, insert);
        outcome(&bytes)?;
    }

    #[test]
    fn schema_keys_with_any_values_give_a_config_or_a_located_error(
        items in prop::collection::vec((table(), prop::collection::vec(fragment(), 0..4)), 0..6),
    ) {
        let mut text = String::new();
        for (t, fragments) in items {
            text.push_str(&t);
            text.push('\n');
            for f in fragments {
                text.push_str(&f);
                text.push('\n');
            }
        }
        outcome(text.as_bytes())?;
    }
}

#[test]
fn the_valid_file_of_the_properties_is_valid() {
    let c = Config::parse(VALID, "prop.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.defaults.max_connections, Some(5000));
}

#[test]
fn a_byte_that_is_not_utf8_is_named_with_its_line_and_column() {
    let mut bytes = b"[defaults]\nretries = 2\nconnect_timeout = \"3".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"s\"\n");
    let err = Config::parse_bytes(&bytes, "latin1.toml").unwrap_err().to_string();
    assert_eq!(
        err,
        "latin1.toml:3:21: byte 0xe9 is not UTF-8: the configuration must be UTF-8 text (was it saved in another encoding?)"
    );
}

#[test]
fn defaults_max_connections_is_a_positive_number() {
    let text = format!(
        "[defaults]\nmax_connections = 0\n{}",
        &VALID[VALID.find("[resolver]").unwrap_or(0)..]
    );
    let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
    assert!(err.starts_with("t.toml:2:19: max_connections"), "{err}");
}
