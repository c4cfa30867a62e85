//! Runtime control and systemd integration through the real binary: `gatehouse ctl`
//! and `gatehouse reload` work end to end with the token rule, and systemd hears what it
//! should (sd_notify, the watchdog, socket activation). Reloads themselves are in
//! `tests/reload.rs`.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pool::*;
use common::*;

// ---------------------------------------------------------------------------------
// Runtime control with `gatehouse ctl`

#[test]
fn ctl_drain_sends_no_new_connection_while_the_established_one_goes_on() {
    let a = Backend::named(any_port(), "a");
    let b = Backend::named(any_port(), "b");
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr), server("b", b.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let front = g.addr("front");
    let mut on_a = connect_to(front, "a");

    let o = ctl(&g, &["drain", "pool/a"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pool/a: drain"),
        "{}",
        out(&o)
    );

    let landed: Vec<String> = (0..8).map(|_| connect_named(front).0).collect();
    assert!(
        landed.iter().all(|n| n == "b"),
        "after drain, new connections landed on {landed:?}"
    );
    for i in 0..10 {
        round_trip(&mut on_a, &format!("still here {i}\n"))
            .unwrap_or_else(|e| panic!("established connection to the drained server: {e}"));
    }
    assert!(
        g.wait_log("admin API from 127.0.0.1", Duration::from_secs(5)),
        "the drain is not logged with who asked:\n{}",
        g.log()
    );

    let o = ctl(&g, &["status"]);
    assert!(o.status.success(), "{}", out(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("SERVER") && header.contains("STATE"), "{table}");
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|cols| cols.len() > 3 && cols[0] == "pool" && cols[1] == name)
            .unwrap_or_else(|| panic!("no row for pool/{name}:\n{table}"))
    };
    assert_eq!(row("a")[3], "DRAIN", "{table}");
    assert_eq!(row("b")[3], "UP", "{table}");
}

#[test]
fn ctl_disable_stops_health_checks_and_enable_restores_the_server() {
    let a = Backend::echo(any_port());
    let b = Backend::echo(any_port());
    let checks = r#"health = { check = "tcp", interval = "100ms", timeout = "1s", rise = 1, fall = 1 }"#;
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr), server("b", b.addr)],
        Some(""),
        checks,
    ));
    let admin = g.admin();
    assert!(
        wait_until(Duration::from_secs(10), || a.accepted() >= 3),
        "a is not being checked"
    );

    let o = ctl(&g, &["disable", "pool/a"]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(server_state(admin, "pool", "a"), "disabled");
    let o = ctl(&g, &["status"]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.starts_with("pool") && l.contains(" a ") && l.contains("DISABLED")),
        "{}",
        out(&o)
    );
    // A check of a may have been under way when it was disabled; after that, none. The
    // checks of b, on the same interval, are the clock.
    let a_at_disable = a.accepted();
    let b_at_disable = b.accepted();
    assert!(
        wait_until(Duration::from_secs(10), || b.accepted() >= b_at_disable + 10),
        "b is not being checked"
    );
    let a_checks_while_disabled = a.accepted() - a_at_disable;
    assert!(
        a_checks_while_disabled <= 1,
        "a was checked {a_checks_while_disabled} times while disabled (b: {} times)",
        b.accepted() - b_at_disable
    );
    let front = g.addr("front");
    for i in 0..4 {
        echo_once(front, i).unwrap();
    }
    assert!(
        a.accepted() - a_at_disable <= 1,
        "a got client connections while disabled"
    );

    let o = ctl(&g, &["enable", "pool/a"]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(server_state(admin, "pool", "a"), "up");
    let a_at_enable = a.accepted();
    assert!(
        wait_until(Duration::from_secs(10), || a.accepted() >= a_at_enable + 3),
        "checks of a did not resume after enable"
    );
    println!(
        "disabled: {a_checks_while_disabled} check(s) of a while b was checked {} times",
        b_at_disable.abs_diff(b.accepted())
    );
}

#[test]
fn ctl_on_an_unknown_server_exits_non_zero_with_a_clear_message() {
    let a = Backend::echo(any_port());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    for target in ["pool/nope", "nopool/a"] {
        let o = ctl(&g, &["drain", target]);
        assert!(!o.status.success(), "{}", out(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("no server {target}")), "{}", out(&o));
    }
    let o = ctl(&g, &["drain", "a"]);
    assert!(!o.status.success(), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("BACKEND/SERVER"),
        "{}",
        out(&o)
    );
    assert_eq!(server_state(g.admin(), "pool", "a"), "up");
}

// ---------------------------------------------------------------------------------
// The token rule

#[test]
fn with_a_token_file_state_changes_need_the_token() {
    let a = Backend::echo(any_port());
    let secrets = tempfile::tempdir().unwrap();
    let token_path = secrets.path().join("token");
    std::fs::write(&token_path, "0123456789abcdef0123456789abcdef\n").unwrap();
    let wrong_path = secrets.path().join("wrong");
    std::fs::write(&wrong_path, "fedcba9876543210fedcba9876543210\n").unwrap();
    let admin_lines = format!("token_file = \"{}\"", token_path.display());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(&admin_lines),
        NO_CHECKS,
    ));
    let admin = g.admin();

    let o = ctl(&g, &["drain", "pool/a"]);
    assert!(!o.status.success(), "without the token: {}", out(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 401"), "{}", out(&o));
    let o = ctl(&g, &["--token-file", wrong_path.to_str().unwrap(), "drain", "pool/a"]);
    assert!(!o.status.success(), "with a wrong token: {}", out(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 401"), "{}", out(&o));
    assert_eq!(server_state(admin, "pool", "a"), "up", "refused requests changed state");
    let (code, body) = http(admin, "POST", "/api/v1/reload", &[]);
    assert_eq!(code, 401, "reload without the token: {body}");

    let o = ctl(&g, &["--token-file", token_path.to_str().unwrap(), "drain", "pool/a"]);
    assert!(o.status.success(), "with the token: {}", out(&o));
    assert_eq!(server_state(admin, "pool", "a"), "drain");
    // Reading stays open.
    let o = ctl(&g, &["status"]);
    assert!(o.status.success(), "status without the token: {}", out(&o));
}

/// Without a token, "loopback" is all of 127.0.0.0/8, not just 127.0.0.1. A peer off
/// loopback is in `a_peer_off_loopback_…` below, in network namespaces.
#[test]
fn without_a_token_file_any_loopback_peer_may_change_state() {
    let a = Backend::echo(any_port());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let source = SocketAddr::new(fresh_ip().into(), 0);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&source.into()).unwrap();
    socket
        .connect_timeout(&g.admin().into(), Duration::from_secs(5))
        .unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let peer = s.local_addr().unwrap();
    s.write_all(
        b"POST /api/v1/servers/pool/a/drain HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "drain from {peer}: {resp}");
    assert_eq!(server_state(g.admin(), "pool", "a"), "drain");
    assert!(
        g.wait_log(&format!("admin API from {peer}"), Duration::from_secs(5)),
        "the change is not logged with its peer {peer}:\n{}",
        g.log()
    );
}

/// Two network namespaces of this test's own joined by a veth pair: gatehouse's
/// ("gw", 10.253.0.1) and a client's ("cli", 10.253.0.2), an address off loopback that
/// exists only there. Deleted when dropped.
struct OffLoopback {
    gw: String,
    cli: String,
}

const GW_ADDR: &str = "10.253.0.1";

impl OffLoopback {
    /// None when not root (a skip); namespaces that cannot be made are a failure.
    fn build() -> Option<OffLoopback> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("gh-adm-{}-{n}", std::process::id());
        let net = OffLoopback {
            gw: format!("{prefix}-gw"),
            cli: format!("{prefix}-cli"),
        };
        let setup = || -> Result<(), String> {
            for ns in [&net.gw, &net.cli] {
                ip(&["netns", "add", ns])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
            }
            ip(&[
                "-n", &net.gw, "link", "add", "v-gw", "type", "veth", "peer", "name", "v-cli", "netns", &net.cli,
            ])?;
            ip(&["-n", &net.gw, "addr", "add", &format!("{GW_ADDR}/30"), "dev", "v-gw"])?;
            ip(&["-n", &net.cli, "addr", "add", "10.253.0.2/30", "dev", "v-cli"])?;
            ip(&["-n", &net.gw, "link", "set", "v-gw", "up"])?;
            ip(&["-n", &net.cli, "link", "set", "v-cli", "up"])
        };
        setup().unwrap_or_else(|e| panic!("cannot build the network namespaces: {e}"));
        Some(net)
    }

    /// Gatehouse in "gw", its admin listener on every address there, with `admin` lines.
    fn gatehouse(&self, admin: &str) -> Gatehouse {
        let config = cfg(
            &[("front", any_port())],
            &[server("a", refused_addr())],
            Some(admin),
            NO_CHECKS,
        )
        .replacen("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"", 1);
        Gatehouse::start_in_netns(&self.gw, &config)
    }

    /// `method path` to the admin listener, from the client namespace (off loopback) or
    /// from loopback inside gatehouse's: (status, body).
    fn ask(
        &self,
        g: &Gatehouse,
        from_outside: bool,
        method: &'static str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let port = g.admin().port();
        let (ns, to) = match from_outside {
            true => (self.cli.clone(), SocketAddr::new(GW_ADDR.parse().unwrap(), port)),
            false => (self.gw.clone(), SocketAddr::from(([127, 0, 0, 1], port))),
        };
        let path = path.to_string();
        let auth = token.map(|t| format!("Bearer {t}"));
        in_ns(&ns, move || {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            http(to, method, &path, &headers)
        })
    }

    fn state(&self, g: &Gatehouse) -> String {
        let body = self.ask(g, false, "GET", "/api/v1/status", None).1;
        let v: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
        v["backends"][0]["servers"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for OffLoopback {
    fn drop(&mut self) {
        for ns in [&self.gw, &self.cli] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

#[test]
fn a_peer_off_loopback_may_read_but_not_change_state_without_a_token_file() {
    let Some(net) = OffLoopback::build() else {
        skip!("network namespaces need root");
    };
    let g = net.gatehouse("");
    let (code, body) = net.ask(&g, true, "GET", "/api/v1/status", None);
    assert_eq!(code, 200, "reading from off loopback: {body}");
    for path in ["/api/v1/servers/pool/a/drain", "/api/v1/reload"] {
        let (code, body) = net.ask(&g, true, "POST", path, None);
        assert_eq!(code, 403, "POST {path} from off loopback without a token file: {body}");
    }
    assert_eq!(net.state(&g), "up", "a refused request changed state");
    let (code, body) = net.ask(&g, false, "POST", "/api/v1/servers/pool/a/drain", None);
    assert_eq!(code, 200, "from loopback: {body}");
    assert_eq!(net.state(&g), "drain");
}

#[test]
fn with_a_token_file_a_peer_off_loopback_changes_state_with_the_token_only() {
    let Some(net) = OffLoopback::build() else {
        skip!("network namespaces need root");
    };
    let secrets = tempfile::tempdir().unwrap();
    let token_path = secrets.path().join("token");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    let g = net.gatehouse(&format!("token_file = \"{}\"", token_path.display()));
    let drain = "/api/v1/servers/pool/a/drain";
    for (from_outside, given) in [
        (true, None),
        (true, Some("fedcba9876543210fedcba9876543210")),
        (false, None),
    ] {
        let (code, body) = net.ask(&g, from_outside, "POST", drain, given);
        assert_eq!(
            code, 401,
            "drain (off loopback: {from_outside}) with token {given:?}: {body}"
        );
    }
    assert_eq!(net.state(&g), "up", "a refused request changed state");
    let (code, body) = net.ask(&g, true, "POST", drain, Some(token));
    assert_eq!(code, 200, "drain from off loopback with the token: {body}");
    assert_eq!(net.state(&g), "drain");
    let (code, body) = net.ask(&g, true, "POST", "/api/v1/servers/pool/a/enable", Some(token));
    assert_eq!(code, 200, "enable from off loopback with the token: {body}");
    assert_eq!(net.state(&g), "up");
}

// ---------------------------------------------------------------------------------
// `gatehouse reload`

#[test]
fn gatehouse_reload_through_the_admin_api_bumps_the_generation() {
    let a = Backend::echo(any_port());
    let b = Backend::echo(any_port());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let admin = g.admin().to_string();
    let front = g.addr("front");
    std::fs::write(
        &g.config_path,
        cfg(
            &[("front", any_port())],
            &[server("a", a.addr), server("b", b.addr)],
            Some(""),
            NO_CHECKS,
        ),
    )
    .unwrap();
    let o = gatehouse_cli(&["reload", "--admin", &admin, "--config", g.config_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("reloaded") && stdout.contains("\"generation\": 2"),
        "{}",
        out(&o)
    );
    let v = status(g.admin());
    assert_eq!(v["config"]["generation"], 2, "{v}");
    assert_eq!(v["config"]["last_reload"]["result"], "success", "{v}");
    assert_eq!(server_state(g.admin(), "pool", "b"), "up");
    g.wait_notify(|m| m.contains("READY=1"), Duration::from_secs(5))
        .expect("READY=1 after a reload through the admin API");
    echo_once(front, 1).unwrap();
}

#[test]
fn gatehouse_reload_reports_a_failed_reload_and_exits_non_zero() {
    let a = Backend::echo(any_port());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let admin = g.admin().to_string();
    std::fs::write(&g.config_path, "[[listener]\n").unwrap();
    let o = gatehouse_cli(&["reload", "--admin", &admin]);
    assert!(!o.status.success(), "{}", out(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("reload failed") && stderr.contains("gatehouse.toml:1:"),
        "{}",
        out(&o)
    );
    assert_eq!(status(g.admin())["config"]["generation"], 1);
}

#[test]
fn gatehouse_reload_without_an_admin_api_signals_the_process_by_its_config() {
    let a = Backend::named(any_port(), "a");
    let b = Backend::named(any_port(), "b");
    let g = Gatehouse::start(&cfg(&[("front", any_port())], &[server("a", a.addr)], None, NO_CHECKS));
    assert!(!g.bound.contains_key("admin"), "{:?}", g.bound);
    let front = g.addr("front");
    std::fs::write(
        &g.config_path,
        cfg(&[("front", any_port())], &[server("b", b.addr)], None, NO_CHECKS),
    )
    .unwrap();
    let o = gatehouse_cli(&["reload", "--config", g.config_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("SIGHUP to gatehouse (pid {})", g.pid())),
        "{}",
        out(&o)
    );
    g.wait_notify(|m| m.contains("RELOADING=1"), Duration::from_secs(10))
        .expect("RELOADING=1 after `gatehouse reload`");
    let ready = g
        .wait_notify(|m| m.contains("READY=1"), Duration::from_secs(30))
        .expect("READY=1 after `gatehouse reload`");
    assert!(ready.contains("generation 2 loaded"), "{ready}");
    assert_eq!(connect_named(front).0, "b", "the new config is not in force");
}

// ---------------------------------------------------------------------------------
// sd_notify

#[test]
fn systemd_hears_ready_with_status_and_listeners_at_start() {
    let a = Backend::echo(any_port());
    let config = cfg(&[("front", any_port())], &[server("a", a.addr)], Some(""), NO_CHECKS);
    let (g, ready) = Gatehouse::start_command(&config, |path| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(path);
        cmd
    })
    .unwrap_or_else(|e| panic!("gatehouse did not start: {e}"));
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.len() > "STATUS=".len()),
        "{ready}"
    );
    let listeners = lines
        .iter()
        .find_map(|l| l.strip_prefix("X_GATEHOUSE_LISTENERS="))
        .unwrap_or_else(|| panic!("no X_GATEHOUSE_LISTENERS: {ready}"));
    let front = g.addr("front");
    assert!(front.port() != 0, "{listeners}");
    assert!(listeners.contains(&format!("front={front}")), "{listeners}");
    assert!(listeners.contains(&format!("admin={}", g.admin())), "{listeners}");
    // READY means bound: the announced address serves at once.
    echo_once(front, 1).unwrap();
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[test]
fn systemd_hears_reloading_with_a_timestamp_then_ready() {
    let a = Backend::echo(any_port());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let before = monotonic_usec();
    g.signal(libc::SIGHUP);
    let reloading = g
        .wait_notify(|m| m.contains("RELOADING=1"), Duration::from_secs(10))
        .expect("RELOADING=1");
    let after = monotonic_usec();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading}"));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not between {before} and {after} (CLOCK_MONOTONIC around the SIGHUP)"
    );
    let ready = g
        .wait_notify(|m| m.contains("READY=1"), Duration::from_secs(30))
        .expect("READY=1 after RELOADING=1");
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.contains("generation 2")),
        "{ready}"
    );
}

#[test]
fn systemd_hears_stopping_on_sigterm() {
    let a = Backend::echo(any_port());
    let mut g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    g.signal(libc::SIGTERM);
    let stopping = g
        .wait_notify(|m| m.contains("STOPPING=1"), Duration::from_secs(10))
        .expect("STOPPING=1 after SIGTERM");
    let status = g.wait_exit(Duration::from_secs(10)).expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}\n{stopping}\n{}", g.log());
}

#[test]
fn systemd_watchdog_is_pinged_when_watchdog_usec_is_set() {
    let a = Backend::echo(any_port());
    let config = cfg(&[("front", any_port())], &[server("a", a.addr)], Some(""), NO_CHECKS);
    let g = Gatehouse::start_with(&config, &[("WATCHDOG_USEC", "200000")])
        .unwrap_or_else(|e| panic!("gatehouse did not start: {e}"));
    for i in 0..3 {
        g.wait_notify(|m| m.lines().any(|l| l == "WATCHDOG=1"), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("watchdog ping {i}: {e}"));
    }
}

// ---------------------------------------------------------------------------------
// Socket activation

/// Runs gatehouse as systemd would with a socket unit: `listener` passed as fd 3, with
/// LISTEN_FDS=1 and LISTEN_PID set to the process's own pid (a shell sets it to `$$`,
/// then execs gatehouse, which keeps the pid).
fn start_socket_activated(config: &str, listener: &TcpListener) -> Gatehouse {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let (g, _) = Gatehouse::start_command(config, |path| {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(BIN)
            .arg("--config")
            .arg(path)
            .env("LISTEN_FDS", "1")
            .env_remove("LISTEN_PID");
        // SAFETY: dup2 and fcntl are async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let ok = if fd == 3 {
                    // Already fd 3: only its close-on-exec flag has to go.
                    libc::fcntl(3, libc::F_SETFD, 0) != -1
                } else {
                    libc::dup2(fd, 3) != -1
                };
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    })
    .unwrap_or_else(|e| panic!("gatehouse did not start: {e}"));
    g
}

#[test]
fn socket_activation_serves_connections_queued_before_ready() {
    if !Path::new("/bin/sh").exists() {
        skip!("socket activation test needs /bin/sh to set LISTEN_PID");
    }
    let a = Backend::echo(any_port());
    let listener = TcpListener::bind((fresh_ip(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    // Clients that come before gatehouse runs wait in the socket's queue.
    let mut early: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    for (i, s) in early.iter_mut().enumerate() {
        s.write_all(format!("early {i}\n").as_bytes()).unwrap();
    }
    let g = start_socket_activated(
        &cfg(&[("front", addr)], &[server("a", a.addr)], Some(""), NO_CHECKS),
        &listener,
    );
    drop(listener);
    assert_eq!(g.addr("front"), addr);
    for (i, s) in early.iter_mut().enumerate() {
        let want = format!("early {i}\n");
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("queued connection {i}: {e}\n{}", g.log()));
        assert_eq!(got, want.as_bytes(), "queued connection {i}");
    }
    assert!(
        g.log().contains("using socket passed by systemd"),
        "the passed socket was not used:\n{}",
        g.log()
    );
    echo_once(addr, 1).expect("a connection after ready");
    assert_eq!(a.accepted(), 4, "connections that reached the server");
}

#[test]
fn a_socket_passed_by_systemd_is_accepted_on_every_event_loop() {
    if !Path::new("/bin/sh").exists() {
        skip!("socket activation test needs /bin/sh to set LISTEN_PID");
    }
    let a = Backend::echo(any_port());
    let listener = TcpListener::bind((fresh_ip(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let g = start_socket_activated(
        &cfg(&[("front", addr)], &[server("a", a.addr)], Some(""), NO_CHECKS),
        &listener,
    );
    drop(listener);
    let admin = g.admin();
    let workers: Vec<_> = (0..8u64)
        .map(|w| std::thread::spawn(move || (0..50).filter(|i| echo_once(addr, w * 100 + i).is_ok()).count()))
        .collect();
    let served: usize = workers.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(served, 400);
    let counts = accepted_per_loop(admin);
    let loops = counts.len();
    record_figure(
        "control",
        &format!("socket activation: accepted per event loop {counts:?} of 400"),
    );
    assert_eq!(counts.iter().sum::<f64>(), 400.0, "{counts:?}");
    if loops < 2 {
        skip!("this machine has one core: one event loop, no spread to check");
    }
    assert!(
        counts.iter().all(|&c| c > 0.0),
        "a loop accepted none of the passed socket's clients: {counts:?}"
    );
}
