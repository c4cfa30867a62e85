//! The core of the proxy through the real binary: how each balancing policy spreads
//! clients, retries past a refusing server, failing fast when no server is up, graceful
//! shutdown and its drain, config errors with their place, the per-listener connection
//! limit, and the fields of the close log line.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `{ name, address, weight }`
fn weighted(name: &str, addr: SocketAddr, weight: u32) -> String {
    format!(r#"{{ name = "{name}", address = "{addr}", weight = {weight} }}"#)
}

/// `Backend::named` servers on fresh ports, with their server entries (name, weight).
fn named_pool<const N: usize>(spec: [(&'static str, u32); N]) -> ([Backend; N], Vec<String>) {
    let backends = spec.map(|(name, _)| Backend::named(any_port(), name));
    let servers = backends
        .iter()
        .zip(spec)
        .map(|(b, (name, w))| weighted(name, b.addr, w))
        .collect();
    (backends, servers)
}

/// Health checks off: the named backends count every connection, and a check is one.
fn no_checks(balance: &str) -> String {
    format!("balance = \"{balance}\"\nhealth = {{ check = \"none\" }}")
}

/// Connects, reads the name the server sends, and keeps the connection open.
fn hold(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = connect(addr);
    let name = read_line(&mut s).unwrap_or_else(|e| panic!("read the server's name through {addr}: {e}"));
    assert!(
        !name.is_empty(),
        "the connection through {addr} closed before a server named itself"
    );
    (s, name)
}

/// One connection: the name of the server it reached (then closed).
fn name_of(addr: SocketAddr) -> String {
    hold(addr).1
}

fn tally<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for n in names {
        *t.entry(n.clone()).or_insert(0) += 1;
    }
    t
}

/// Operator action on `pool/server` through the admin API (from loopback).
fn set_server(g: &Gatehouse, server: &str, action: &str) {
    let (code, body) = http(
        g.admin(),
        "POST",
        &format!("/api/v1/servers/pool/{server}/{action}"),
        &[],
    );
    assert_eq!(code, 200, "{action} pool/{server}: {body}");
}

fn name_from(src: Ipv4Addr, to: SocketAddr) -> String {
    let mut s = connect_from(src.into(), to);
    let name = read_line(&mut s).unwrap_or_else(|e| panic!("read the server's name from {src}: {e}"));
    assert!(!name.is_empty(), "client {src} was closed before a server named itself");
    name
}

/// Waits (bounded by the read timeout) for the peer to close `s`; returns how it
/// closed and when. `Err` when the bound passed with the connection still open.
fn wait_closed(s: &mut TcpStream, bound: Duration) -> Result<(&'static str, Duration), String> {
    s.set_read_timeout(Some(bound)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(("closed", started.elapsed())),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(("reset", started.elapsed())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("still open after {:?}", started.elapsed()))
            }
            Err(e) => return Err(format!("read failed after {:?}: {e}", started.elapsed())),
        }
    }
}

fn echoes(s: &mut TcpStream, text: &str) -> bool {
    let mut back = vec![0u8; text.len()];
    s.write_all(text.as_bytes()).is_ok() && s.read_exact(&mut back).is_ok() && back == text.as_bytes()
}

// ---------------------------------------------------------------------------
// Balancing

#[test]
fn round_robin_meets_weights_exactly() {
    let (_b, servers) = named_pool([("one", 1), ("two", 2), ("three", 3)]);
    let g = Gatehouse::start(&config(&servers, &no_checks("round-robin"), ""));
    let names: Vec<String> = (0..600).map(|_| name_of(g.addr("front"))).collect();
    let t = tally(&names);
    let got = (t.get("one"), t.get("two"), t.get("three"));
    assert_eq!(
        got,
        (Some(&100), Some(&200), Some(&300)),
        "600 connections over weights 1,2,3: {t:?}"
    );
    eprintln!("round-robin 1,2,3 over 600: {t:?}");
    // Smooth: the heaviest server never gets more than two turns in a row.
    let longest_run = names.chunk_by(|a, b| a == b).map(<[String]>::len).max().unwrap_or(0);
    assert!(longest_run <= 2, "a server got {longest_run} turns in a row");
}

#[test]
fn least_conn_sends_new_clients_to_the_less_loaded_servers() {
    let (_b, servers) = named_pool([("a", 1), ("b", 1), ("c", 1)]);
    let g = Gatehouse::start(&config(&servers, &no_checks("least-conn"), ""));
    let front = g.addr("front");
    // Load a alone: four connections held open on it.
    set_server(&g, "b", "disable");
    set_server(&g, "c", "disable");
    let on_a: Vec<(TcpStream, String)> = (0..4).map(|_| hold(front)).collect();
    assert!(
        on_a.iter().all(|(_, n)| n == "a"),
        "with b and c disabled: {:?}",
        tally(on_a.iter().map(|(_, n)| n))
    );
    set_server(&g, "b", "enable");
    set_server(&g, "c", "enable");

    // The next eight (held) fill b and c up to a's four; a gets none.
    let next: Vec<(TcpStream, String)> = (0..8).map(|_| hold(front)).collect();
    let t = tally(next.iter().map(|(_, n)| n));
    assert_eq!(
        (t.get("a"), t.get("b"), t.get("c")),
        (None, Some(&4), Some(&4)),
        "8 new connections with a holding 4: {t:?}"
    );
    // All even at four: ties are taken in turn, one each.
    let ties: Vec<(TcpStream, String)> = (0..3).map(|_| hold(front)).collect();
    let t = tally(ties.iter().map(|(_, n)| n));
    assert_eq!(
        (t.get("a"), t.get("b"), t.get("c")),
        (Some(&1), Some(&1), Some(&1)),
        "3 new connections with 4 held on each server: {t:?}"
    );
}

#[test]
fn random_two_spreads_held_connections_by_weight() {
    let (_b, servers) = named_pool([("light1", 1), ("light2", 1), ("heavy", 2)]);
    let g = Gatehouse::start(&config(&servers, &no_checks("random-two"), ""));
    let held: Vec<(TcpStream, String)> = (0..120).map(|_| hold(g.addr("front"))).collect();
    let t = tally(held.iter().map(|(_, n)| n));
    eprintln!("random-two 1,1,2 over 120 held: {t:?}");
    let count = |n: &str| t.get(n).copied().unwrap_or(0);
    // Expected 30, 30, 60.
    for (name, want) in [("light1", 30), ("light2", 30), ("heavy", 60)] {
        let got = count(name);
        assert!(
            got.abs_diff(want) <= 12,
            "120 held connections over weights 1,1,2: {name} got {got}, expected about {want}: {t:?}"
        );
    }
}

#[test]
fn random_two_avoids_a_server_loaded_with_held_connections() {
    let (_b, servers) = named_pool([("loaded", 1), ("free1", 1), ("free2", 1)]);
    let g = Gatehouse::start(&config(&servers, &no_checks("random-two"), ""));
    let front = g.addr("front");
    set_server(&g, "free1", "disable");
    set_server(&g, "free2", "disable");
    let _held: Vec<(TcpStream, String)> = (0..20).map(|_| hold(front)).collect();
    set_server(&g, "free1", "enable");
    set_server(&g, "free2", "enable");

    let n = 150;
    let names: Vec<String> = (0..n).map(|_| name_of(front)).collect();
    let t = tally(&names);
    let loaded = t.get("loaded").copied().unwrap_or(0);
    eprintln!("random-two with 20 held on one server, {n} new: {t:?}");
    // It wins only when both draws are it: 1 in 9 (about 17 of 150); a quarter is far
    // out of chance, and blind to load it would get a third (50).
    assert!(
        loaded * 4 < n,
        "the server holding 20 connections got {loaded} of {n} new ones (a third would be {}): {t:?}",
        n / 3
    );
}

#[test]
fn source_hash_keeps_each_client_on_one_server() {
    let (_b, servers) = named_pool([("a", 1), ("b", 1), ("c", 1)]);
    let g = Gatehouse::start(&config(&servers, &no_checks("source-hash"), ""));
    let front = g.addr("front");
    let clients: Vec<Ipv4Addr> = (0..40).map(|_| fresh_ip()).collect();
    let mut first = BTreeMap::new();
    for ip in &clients {
        let names: Vec<String> = (0..3).map(|_| name_from(*ip, front)).collect();
        assert!(names.iter().all(|n| *n == names[0]), "client {ip} went to {names:?}");
        first.insert(*ip, names[0].clone());
    }
    let t = tally(first.values());
    eprintln!("source-hash, 40 clients x 3 connections: {t:?}");
    assert_eq!(t.len(), 3, "40 clients spread over {} of 3 servers: {t:?}", t.len());
}

#[test]
fn source_hash_moves_only_the_clients_of_a_disabled_server() {
    let (_b, servers) = named_pool([("a", 1), ("b", 1), ("c", 1)]);
    let g = Gatehouse::start(&config(&servers, &no_checks("source-hash"), ""));
    let front = g.addr("front");
    let clients: Vec<Ipv4Addr> = (0..40).map(|_| fresh_ip()).collect();
    let before: Vec<String> = clients.iter().map(|ip| name_from(*ip, front)).collect();

    set_server(&g, "b", "disable");
    let during: Vec<String> = clients.iter().map(|ip| name_from(*ip, front)).collect();
    let mut moved_from_b = 0;
    for ((ip, was), now) in clients.iter().zip(&before).zip(&during) {
        if was == "b" {
            assert_ne!(now, "b", "client {ip} still sent to disabled b");
            moved_from_b += 1;
        } else {
            assert_eq!(now, was, "client {ip} of {was} moved to {now} when only b was disabled");
        }
    }
    assert!(moved_from_b > 0, "no client of 40 was on b: {:?}", tally(&before));

    set_server(&g, "b", "enable");
    let after: Vec<String> = clients.iter().map(|ip| name_from(*ip, front)).collect();
    assert_eq!(
        after, before,
        "clients did not return to their servers once b was enabled"
    );
}

fn backup_pool(p1: &Backend, p2: &Backend, bk: &Backend) -> String {
    config(
        &[
            server("p1", p1.addr),
            server("p2", p2.addr),
            format!(r#"{{ name = "bk", address = "{}", backup = true }}"#, bk.addr),
        ],
        &no_checks("round-robin"),
        "",
    )
}

#[test]
fn backup_serves_only_when_every_primary_is_disabled() {
    let p1 = Backend::named(any_port(), "p1");
    let p2 = Backend::named(any_port(), "p2");
    let bk = Backend::named(any_port(), "bk");
    let g = Gatehouse::start(&backup_pool(&p1, &p2, &bk));
    let front = g.addr("front");
    let names: Vec<String> = (0..20).map(|_| name_of(front)).collect();
    let t = tally(&names);
    assert_eq!(
        (t.get("p1"), t.get("p2"), t.get("bk")),
        (Some(&10), Some(&10), None),
        "primaries up: {t:?}"
    );

    set_server(&g, "p1", "disable");
    let names: Vec<String> = (0..10).map(|_| name_of(front)).collect();
    assert_eq!(tally(&names).get("p2"), Some(&10), "p1 disabled: {:?}", tally(&names));

    set_server(&g, "p2", "disable");
    let names: Vec<String> = (0..10).map(|_| name_of(front)).collect();
    assert_eq!(
        tally(&names).get("bk"),
        Some(&10),
        "both primaries disabled: {:?}",
        tally(&names)
    );

    set_server(&g, "p1", "enable");
    let names: Vec<String> = (0..10).map(|_| name_of(front)).collect();
    assert_eq!(
        tally(&names).get("p1"),
        Some(&10),
        "p1 enabled again: {:?}",
        tally(&names)
    );
}

#[test]
fn backup_takes_the_clients_of_killed_primaries() {
    let p1 = Backend::named(any_port(), "p1");
    let p2 = Backend::named(any_port(), "p2");
    let bk = Backend::named(any_port(), "bk");
    let g = Gatehouse::start(&backup_pool(&p1, &p2, &bk));
    let front = g.addr("front");
    assert_ne!(name_of(front), "bk", "a primary is up");
    p1.kill();
    p2.kill();
    // The first clients find the primaries refusing and are retried onto the backup;
    // every one of them gets served.
    let names: Vec<String> = (0..20).map(|_| name_of(front)).collect();
    assert_eq!(
        tally(&names).get("bk"),
        Some(&20),
        "primaries killed: {:?}",
        tally(&names)
    );
}

// ---------------------------------------------------------------------------
// Retries and failing fast

#[test]
fn retries_past_a_refusing_server_without_client_errors() {
    let a = Backend::named(any_port(), "a");
    let b = Backend::named(any_port(), "b");
    let dead = refused_addr();
    // Passive health off too: every pick of `dead` takes the retry path.
    let cfg = config(
        &[server("a", a.addr), server("dead", dead), server("b", b.addr)],
        "health = { check = \"none\" }\nobserve = false\nretries = 2",
        "",
    );
    let g = Gatehouse::start_with(&cfg, &[]).unwrap_or_else(|e| panic!("gatehouse did not start: {e}"));
    let front = g.addr("front");
    let mut failures = Vec::new();
    let mut names = Vec::new();
    for i in 0..200 {
        let mut s = connect(front);
        match read_line(&mut s) {
            Ok(n) if n == "a" || n == "b" => names.push(n),
            other => failures.push(format!("connection {i}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 clients failed: {failures:?}",
        failures.len()
    );
    let refused = metric(
        g.admin(),
        "gatehouse_connect_errors_total",
        &[("server", "dead"), ("reason", "refused")],
    );
    assert!(refused > 0.0, "connect errors to the refusing server: {refused}");
    // Close lines go out with the log writer's next round (100 ms at most).
    g.wait_log("(after 1 failed connect)", Duration::from_secs(5));
    let log = g.log();
    let logged = log.lines().filter(|l| l.contains("failed: connection refused")).count();
    // Failed connects are logged at warn, at most once a second (with a count of the rest),
    // and the close line of a retried connection says so.
    assert!(logged > 0, "no connect error in the log ({refused} counted):\n{log}");
    assert!(
        log.contains("(after 1 failed connect)"),
        "no close line tells of a retry:\n{log}"
    );
    eprintln!(
        "200 clients served ({:?}); {refused} refused connects retried",
        tally(&names)
    );
}

/// `gatehouse_connections_rejected_total{listener="front",reason}`.
fn rejected(g: &Gatehouse, reason: &str) -> f64 {
    metric(
        g.admin(),
        "gatehouse_connections_rejected_total",
        &[("listener", "front"), ("reason", reason)],
    )
}

#[test]
fn every_connect_failing_closes_the_client_at_once_counted_as_connect_failed() {
    // No check: both servers count as up, and both refuse. The client is closed once
    // each was tried, and counted apart from "no server up".
    let cfg = config(
        &[server("x", refused_addr()), server("y", refused_addr())],
        "health = { check = \"none\" }",
        "connect_timeout = \"10s\"",
    );
    let g = Gatehouse::start(&cfg);
    let mut client = connect(g.addr("front"));
    let (how, took) = wait_closed(&mut client, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("a client whose every connect failed is {e}"));
    assert!(
        wait_until(Duration::from_secs(5), || rejected(&g, "connect_failed") == 1.0),
        "rejected connect_failed = {} after one client ({how} after {took:?})",
        rejected(&g, "connect_failed")
    );
    assert_eq!(rejected(&g, "no_server"), 0.0, "servers were up: not no_server");
    let tried = metric(g.admin(), "gatehouse_connect_errors_total", &[("reason", "refused")]);
    assert_eq!(tried, 2.0, "both servers tried, once each");
    eprintln!("every connect failed: client {how} after {took:?}");
}

#[test]
fn all_servers_down_closes_clients_at_once_with_tcp_checks() {
    // Down by their checks (on another port), their traffic ports accepting and silent:
    // a connect to either would hang the client for all to see.
    let (servers, check_port) = checks::Checked::sick_servers(2, |_, addr| Backend::silent(addr));
    let cfg = config(
        &[server("x", servers[0].addr()), server("y", servers[1].addr())],
        &checks::check_on(check_port, r#"interval = "200ms", timeout = "300ms""#),
        "connect_timeout = \"10s\"",
    );
    let g = Gatehouse::start(&cfg);
    let mut client = connect(g.addr("front"));
    let (how, took) = wait_closed(&mut client, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("a client with no server up is {e}"));
    assert!(took < Duration::from_secs(1), "closed {how} only after {took:?}");
    assert_eq!(
        servers.iter().map(|s| s.traffic.accepted()).sum::<usize>(),
        0,
        "a server that is down was connected to"
    );
    assert!(
        wait_until(Duration::from_secs(5), || rejected(&g, "no_server") == 1.0),
        "rejected no_server = {} after one client ({how} after {took:?})",
        rejected(&g, "no_server")
    );
    assert_eq!(rejected(&g, "connect_failed"), 0.0, "no connect was tried");
    eprintln!("all servers down: client {how} after {took:?}");
}

// ---------------------------------------------------------------------------
// Shutdown

#[test]
fn sigterm_stops_accepting_and_waits_for_established_connections() {
    let echo = Backend::echo(any_port());
    let mut g = Gatehouse::start(&config(&[server("e", echo.addr)], "health = { check = \"none\" }", ""));
    let front = g.addr("front");
    let mut client = connect(front);
    assert!(echoes(&mut client, "before\n"), "echo before SIGTERM");

    g.signal(libc::SIGTERM);
    assert!(
        g.wait_log("stopped accepting", Duration::from_secs(10)),
        "no shutdown line:\n{}",
        g.log()
    );
    match TcpStream::connect_timeout(&front, Duration::from_secs(2)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("a new connect while draining: {other:?}, want refused"),
    }
    assert!(
        echoes(&mut client, "while draining\n"),
        "the established connection stopped echoing"
    );
    assert!(
        g.wait_exit(Duration::from_millis(300)).is_none(),
        "gatehouse exited with a connection open"
    );

    drop(client);
    let started = Instant::now();
    let status = g.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after the last client closed: {status:?} after {:?}\n{}",
        started.elapsed(),
        g.log()
    );
    eprintln!("exited {:?} after the last client closed", started.elapsed());
}

#[test]
fn drain_timeout_closes_lingering_connections_and_exits_zero() {
    let echo = Backend::echo(any_port());
    let mut g = Gatehouse::start(&config(
        &[server("e", echo.addr)],
        "health = { check = \"none\" }",
        "drain_timeout = \"500ms\"",
    ));
    let mut client = connect(g.addr("front"));
    assert!(echoes(&mut client, "hello\n"), "echo before SIGTERM");
    let signalled = Instant::now();
    g.signal(libc::SIGTERM);
    let closed = wait_closed(&mut client, Duration::from_secs(10));
    let status = g.wait_exit(Duration::from_secs(10));
    let log = g.log();
    let (how, took) = closed.unwrap_or_else(|e| panic!("the lingering connection is {e}\n{log}"));
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}\n{log}");
    assert!(
        took >= Duration::from_millis(450),
        "closed after {took:?}, before the 500ms drain time\n{log}"
    );
    assert!(log.contains("drain time over"), "no drain line:\n{log}");
    let close_line = log.lines().find(|l| l.contains("front/pool/e"));
    assert!(
        close_line.is_some_and(|l| l.ends_with("in=6 out=6 shutdown")),
        "close line {close_line:?} does not say shutdown\n{log}"
    );
    eprintln!(
        "client {how} {took:?} after SIGTERM; exited {:?} after",
        signalled.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Config errors and the command line

fn run_bin(args: &[&str]) -> Output {
    output_within(
        Command::new(BIN).args(args).stdin(Stdio::null()),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("run {BIN}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const TYPO_BACKEND: &str = r#"[[listener]]
name = "kube-api"
bind = ["127.0.0.1:0"]
backend = "contrl-plane"

[backend.control-plane]
servers = ["127.0.0.1:6443"]
"#;

#[test]
fn check_points_at_an_undefined_backend_and_suggests_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, TYPO_BACKEND).unwrap();
    let out = run_bin(&["check", "--config", path.to_str().unwrap()]);
    let want = format!(
        "{}:4:11: listener \"kube-api\": backend \"contrl-plane\" is not defined; did you mean \"control-plane\"?",
        path.display()
    );
    assert!(!out.status.success(), "check passed a bad config: {}", text(&out));
    assert!(text(&out).contains(&want), "want {want:?} in:\n{}", text(&out));
}

#[test]
fn check_points_at_an_unknown_key_and_suggests_the_known_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[defaults]\nretries = 1\nconect_timeout = \"2s\"\n\n[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nbackend = \"pool\"\n\n[backend.pool]\nservers = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let out = run_bin(&["check", "--config", path.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "check passed a bad config: {t}");
    assert!(
        t.contains(&format!("{}:3:1: ", path.display())),
        "no line:column of the key in:\n{t}"
    );
    assert!(
        t.contains("conect_timeout") && t.contains("did you mean `connect_timeout`?"),
        "no suggestion in:\n{t}"
    );
}

#[test]
fn check_accepts_a_valid_config_and_prints_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    let a: SocketAddr = "127.0.0.1:6443".parse().unwrap();
    let cfg = config(
        &[server("a", a), weighted("b", "127.0.0.2:6443".parse().unwrap(), 3)],
        "balance = \"least-conn\"",
        "",
    );
    std::fs::write(&path, cfg).unwrap();
    let out = run_bin(&["check", "--config", path.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "check failed a valid config:\n{t}");
    for want in [
        "configuration is valid",
        "listener \"front\" on 127.0.0.1:0",
        "-> backend \"pool\"",
        "balance least-conn, health check tcp",
        "server \"a\" 127.0.0.1:6443",
        "server \"b\" 127.0.0.2:6443 weight 3",
        "admin on 127.0.0.1:0",
    ] {
        assert!(t.contains(want), "summary lacks {want:?}:\n{t}");
    }
}

#[test]
fn version_and_help_print_and_exit_zero() {
    let out = run_bin(&["--version"]);
    let t = text(&out);
    assert!(out.status.success(), "--version: {:?}\n{t}", out.status);
    assert!(
        t.contains(&format!("gatehouse {}", env!("CARGO_PKG_VERSION"))),
        "--version printed {t:?}"
    );
    let out = run_bin(&["--help"]);
    let t = text(&out);
    assert!(out.status.success(), "--help: {:?}\n{t}", out.status);
    for want in ["Usage", "check", "reload", "ctl", "--config", "--log-format"] {
        assert!(t.contains(want), "--help lacks {want:?}:\n{t}");
    }
}

/// Runs gatehouse on `config` expecting it not to start: returns (exit success, output,
/// whether it said READY=1).
fn failed_start(config: &str) -> (bool, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(15), || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        exited,
        "gatehouse kept running on a config it should refuse:\n{}",
        text(&out)
    );
    notify.set_nonblocking(true).unwrap();
    let mut ready = false;
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        ready |= String::from_utf8_lossy(&buf[..n]).contains("READY=1");
    }
    (out.status.success(), text(&out), ready)
}

#[test]
fn start_refuses_an_invalid_config_with_its_error() {
    let (success, out, ready) = failed_start(TYPO_BACKEND);
    assert!(!success, "exit 0 on an invalid config:\n{out}");
    assert!(!ready, "said READY=1 on an invalid config:\n{out}");
    assert!(
        out.contains("gatehouse.toml:4:11: listener \"kube-api\": backend \"contrl-plane\" is not defined"),
        "error not reported:\n{out}"
    );
}

#[test]
fn start_fails_with_the_listener_and_address_it_cannot_bind() {
    let taken = TcpListener::bind(SocketAddr::new(fresh_ip().into(), 0)).unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = config(&[server("a", refused_addr())], "health = { check = \"none\" }", "")
        .replace("bind = [\"127.0.0.1:0\"]", &format!("bind = [\"{addr}\"]"));
    let (success, out, ready) = failed_start(&cfg);
    assert!(!success, "exit 0 with its address taken:\n{out}");
    assert!(!ready, "said READY=1 with its address taken:\n{out}");
    let want = format!("listener \"front\": cannot bind {addr}: ");
    assert!(
        out.contains(&want) && out.to_lowercase().contains("address already in use"),
        "want {want:?}... address already in use, in:\n{out}"
    );
    drop(taken);
}

// ---------------------------------------------------------------------------
// Limits and the close log

#[test]
fn max_connections_closes_the_client_over_the_limit() {
    let a = Backend::named(any_port(), "a");
    let cfg = config(&[server("a", a.addr)], "health = { check = \"none\" }", "")
        .replace("backend = \"pool\"", "backend = \"pool\"\nmax_connections = 2");
    let g = Gatehouse::start(&cfg);
    let front = g.addr("front");
    let mut held: Vec<TcpStream> = (0..2).map(|_| hold(front).0).collect();
    let mut third = connect(front);
    let closed = wait_closed(&mut third, Duration::from_secs(5));
    let (how, took) = closed.unwrap_or_else(|e| panic!("the third client of max 2 is {e}"));
    let limit = || {
        metric(
            g.admin(),
            "gatehouse_connections_rejected_total",
            &[("listener", "front"), ("reason", "limit")],
        )
    };
    assert!(
        wait_until(Duration::from_secs(5), || limit() == 1.0),
        "rejected limit = {} after one client over the limit ({how} after {took:?})",
        limit()
    );
    for (i, s) in held.iter_mut().enumerate() {
        assert!(echoes(s, "still here\n"), "held connection {i} stopped working");
    }
}

#[test]
fn close_line_names_client_route_bytes_and_end() {
    let a = Backend::named(any_port(), "a");
    let g = Gatehouse::start(&config(&[server("a", a.addr)], "health = { check = \"none\" }", ""));
    let (mut s, _) = hold(g.addr("front"));
    assert!(echoes(&mut s, "hello\n"));
    let client = s.local_addr().unwrap().to_string();
    drop(s);
    let line_of = |log: &str| {
        log.lines()
            .find(|l| l.contains(&client) && l.contains(" in="))
            .map(String::from)
    };
    assert!(
        wait_until(Duration::from_secs(10), || line_of(&g.log()).is_some()),
        "no close line for {client}:\n{}",
        g.log()
    );
    let line = line_of(&g.log()).unwrap();
    // in: "hello\n"; out: "a\n" then the echo.
    for want in [client.as_str(), "front/pool/a", "in=6 out=8", "client closed"] {
        assert!(line.contains(want), "close line lacks {want:?}: {line}");
    }
}

#[test]
fn json_log_lines_are_json_and_the_close_line_has_its_fields() {
    let a = Backend::named(any_port(), "a");
    let cfg = config(&[server("a", a.addr)], "health = { check = \"none\" }", "") + "\n[log]\nformat = \"json\"\n";
    let g = Gatehouse::start(&cfg);
    let (mut s, _) = hold(g.addr("front"));
    assert!(echoes(&mut s, "hello\n"));
    let client = s.local_addr().unwrap().to_string();
    drop(s);
    let close_of = |log: &str| {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["client"] == client.as_str() && v.get("end").is_some())
    };
    assert!(
        wait_until(Duration::from_secs(10), || close_of(&g.log()).is_some()),
        "no JSON close line for {client}:\n{}",
        g.log()
    );
    let log = g.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "not a JSON object: {line}"
        );
    }
    let v = close_of(&log).unwrap();
    let want = serde_json::json!({
        "client": client,
        "listener": "front",
        "backend": "pool",
        "server": "a",
        "bytes_in": 6,
        "bytes_out": 8,
        "end": "client closed",
    });
    for (k, w) in want.as_object().unwrap() {
        assert_eq!(&v[k], w, "field {k} of the close line {v}");
    }
}
