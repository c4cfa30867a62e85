//! A server's state before and after its first health check, through the real binary:
//! nothing is logged as UP or DOWN until a check has decided, and the decision is
//! logged once, with the check's own words. And what a drained server still does: it
//! takes new clients only when no other server of its backend can.

mod common;

use std::process::Command;
use std::time::Duration;

use common::checks::{check_on, Checked};
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

/// `gatehouse ctl --admin ADMIN ARGS` (no config file, so no token from this machine).
fn ctl(g: &Gatehouse, args: &[&str]) {
    let admin = g.admin().to_string();
    let nowhere = g.dir.path().join("no-such-config.toml");
    let mut o = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    o.args(["--config", nowhere.to_str().unwrap(), "ctl", "--admin", &admin])
        .args(args)
        .env_remove("GATEHOUSE_CONFIG")
        .env_remove("NOTIFY_SOCKET");
    let o = output_within(&mut o, Duration::from_secs(30)).unwrap_or_else(|e| panic!("gatehouse ctl: {e}"));
    assert!(
        o.status.success(),
        "ctl {args:?}: exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The server a new connection lands on (`Backend::named`), or why it was not served.
fn landed_on(front: std::net::SocketAddr) -> Result<String, String> {
    let mut s = connect(front);
    read_line(&mut s)
        .map_err(|e| e.to_string())
        .and_then(|name| match name.is_empty() {
            true => Err("closed before the server's greeting".to_string()),
            false => Ok(name),
        })
}

#[test]
fn with_every_server_drained_new_clients_are_still_served_and_readyz_is_unready() {
    // Checked on a port of their own: "a" can go DOWN while its traffic port still
    // accepts and greets, so a client sent to it shows (a killed server would refuse,
    // and the client would be retried on "b" unseen).
    let names = ["a", "b", "backup"];
    let (mut servers, check_port) = Checked::servers(3, |i, addr| Backend::named(addr, names[i]));
    let g = Gatehouse::start(&config(
        &[
            server("a", servers[0].addr()),
            server("b", servers[1].addr()),
            format!(
                r#"{{ name = "backup", address = "{}", backup = true }}"#,
                servers[2].addr()
            ),
        ],
        &check_on(check_port, r#"interval = "200ms", timeout = "500ms""#),
        "",
    ));
    let front = g.addr("front");
    for name in ["a", "b", "backup"] {
        assert!(
            wait_until(Duration::from_secs(10), || server_state(g.admin(), "pool", name)
                == "up"),
            "{name} not up:\n{}",
            g.log()
        );
    }
    assert_eq!(http(g.admin(), "GET", "/readyz", &[]).0, 200);

    // One primary drained: the other takes every new client; the backup none.
    ctl(&g, &["drain", "pool/a"]);
    let landed: Vec<_> = (0..6).map(|_| landed_on(front)).collect();
    assert!(
        landed.iter().all(|l| l.as_deref() == Ok("b")),
        "with b up, new clients landed on {landed:?}"
    );

    // Both primaries drained: the backup is up, so it takes them.
    ctl(&g, &["drain", "pool/b"]);
    let landed: Vec<_> = (0..6).map(|_| landed_on(front)).collect();
    assert!(
        landed.iter().all(|l| l.as_deref() == Ok("backup")),
        "with the backup up, new clients landed on {landed:?}"
    );
    assert_eq!(http(g.admin(), "GET", "/readyz", &[]).0, 200, "the backup is up");

    // Every server drained: clients are still served, by the drained primaries, and
    // /readyz answers 503 (what moves a keepalived address away).
    ctl(&g, &["drain", "pool/backup"]);
    let landed: Vec<_> = (0..8).map(|_| landed_on(front)).collect();
    let served = landed
        .iter()
        .filter(|l| matches!(l.as_deref(), Ok("a") | Ok("b")))
        .count();
    assert_eq!(
        served,
        landed.len(),
        "with every server drained, {served} of {} new clients were served by a drained primary: {landed:?}",
        landed.len()
    );
    let (code, body) = http(g.admin(), "GET", "/readyz", &[]);
    assert_eq!(code, 503, "/readyz with every server drained: {body}");
    assert!(body.contains("pool"), "/readyz names the backend: {body}");
    for name in ["a", "b", "backup"] {
        assert_eq!(server_state(g.admin(), "pool", name), "drain");
    }

    // A drained server that goes down takes no one, not even as a last resort: its
    // check fails while it still accepts (and would greet a client with "a").
    servers[0].sicken();
    assert!(
        g.wait_log("server pool/a DOWN", Duration::from_secs(10)),
        "a not seen down:\n{}",
        g.log()
    );
    let accepted = servers[0].traffic.accepted();
    let landed: Vec<_> = (0..6).map(|_| landed_on(front)).collect();
    assert!(
        landed.iter().all(|l| l.as_deref() == Ok("b")),
        "with a down and every server drained, new clients landed on {landed:?}"
    );
    assert_eq!(
        servers[0].traffic.accepted(),
        accepted,
        "the drained server that is down was connected to"
    );
}
