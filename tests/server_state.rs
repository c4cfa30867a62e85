//! A server's state before and after its first health check, through the real binary:
//! nothing is logged as UP or DOWN until a check has decided, and the decision is
//! logged once, with the check's own words.

mod common;

use std::time::Duration;

use common::*;

const TCP_CHECK: &str = r#"health = { check = "tcp", interval = "200ms", timeout = "500ms" }"#;

/// The `gatehouse_server_state` samples of one server, as (state, value).
fn state_samples(admin: std::net::SocketAddr, server: &str) -> Vec<(String, f64)> {
    let (code, body) = http(admin, "GET", "/metrics", &[]);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("gatehouse_server_state{") && l.contains(&format!("server=\"{server}\"")))
        .filter_map(|l| {
            let state = l.split("state=\"").nth(1)?.split('"').next()?.to_string();
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((state, value))
        })
        .collect()
}

#[test]
fn a_server_is_logged_up_or_down_only_once_its_first_check_decides() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(
        &[server("good", echo.addr), server("bad", refused_addr())],
        TCP_CHECK,
        "",
    ));
    assert!(
        g.wait_log("server pool/bad DOWN", Duration::from_secs(10)),
        "no DOWN for the refusing server:\n{}",
        g.log()
    );
    assert!(
        g.wait_log("server pool/good UP", Duration::from_secs(10)),
        "no UP for the serving server:\n{}",
        g.log()
    );
    let log = g.log();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>();
    assert!(
        lines("server pool/bad UP").is_empty(),
        "the refusing server was logged UP before its check failed: {:?}",
        lines("server pool/bad")
    );
    assert_eq!(
        lines("server pool/good UP").len(),
        1,
        "the serving server's state was logged more than once: {:?}",
        lines("server pool/good")
    );
    assert!(
        lines("address resolved").is_empty(),
        "a state logged before any check: {:?}",
        lines("address resolved")
    );
    for (name, want) in [("good", "up"), ("bad", "down")] {
        assert_eq!(server_state(g.admin(), "pool", name), want);
        let samples = state_samples(g.admin(), name);
        assert!(
            samples.iter().any(|(s, v)| s == "starting" && *v == 0.0),
            "no gatehouse_server_state{{state=\"starting\"}} 0 for {name}: {samples:?}"
        );
        assert!(
            samples.iter().any(|(s, v)| s == want && *v == 1.0),
            "{name} not {want} in the metrics: {samples:?}"
        );
    }
}

#[test]
fn without_a_check_a_server_is_up_once_its_address_is_known() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(&[server("a", echo.addr)], r#"health = { check = "none" }"#, ""));
    assert_eq!(server_state(g.admin(), "pool", "a"), "up");
    assert!(
        g.wait_log("server pool/a UP: address resolved", Duration::from_secs(5)),
        "no UP line for a server without a check:\n{}",
        g.log()
    );
}
