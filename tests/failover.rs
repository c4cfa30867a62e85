//! Failover through the real binary: failover under traffic, a silent server caught by
//! passive checks, backup servers, `on_down`, slow start, and clients refused at once
//! when no server is up. The checks themselves are in `tests/health.rs`.
//!
//! Detection bounds are derived from the check settings: `fall` (or `rise`) jittered
//! intervals (+10 %) plus the check timeout, plus a fixed slack for scheduling on a busy
//! machine and for the test's polling of the status API. Measured figures are printed.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::checks::*;
use common::*;

// ---------------------------------------------------------------------------
// 1. Failover under traffic
// ---------------------------------------------------------------------------

#[test]
fn failover_under_traffic_loses_no_connection() {
    let a = Backend::named(on_fresh_ip(), "a");
    let b = Backend::named(on_fresh_ip(), "b");
    let c = Backend::named(on_fresh_ip(), "c");
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(500));
    let g = Gatehouse::start(&config(
        &[server("a", a.addr), server("b", b.addr), server("c", c.addr)],
        r#"retries = 2
health = { check = "tcp", interval = "200ms", timeout = "500ms", rise = 2, fall = 2 }"#,
        "",
    ));
    let (admin, front) = (g.admin(), g.addr("front"));
    const CLIENTS: usize = 300;
    const KILL_AT: usize = 100;
    let (kill_now, kill_rx) = mpsc::channel::<()>();
    let (killed, killed_rx) = mpsc::channel::<()>();
    let traffic = thread::spawn(move || {
        let mut failures = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut after_kill: HashMap<String, usize> = HashMap::new();
        for i in 0..CLIENTS {
            if i == KILL_AT {
                // Killed between two clients: the claim is about new connections.
                kill_now.send(()).unwrap();
                killed_rx.recv_timeout(Duration::from_secs(10)).expect("server killed");
            }
            match one_client(front) {
                Ok(name) => {
                    *seen.entry(name.clone()).or_insert(0) += 1;
                    if i >= KILL_AT {
                        *after_kill.entry(name).or_insert(0) += 1;
                    }
                }
                Err(e) => failures.push(format!("client {i}: {e}")),
            }
            // Pacing, not synchronisation: spreads the clients over the detection window.
            thread::sleep(Duration::from_millis(5));
        }
        (failures, seen, after_kill)
    });
    kill_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("traffic reached the kill point");
    let killed_at = Instant::now();
    b.kill();
    killed.send(()).unwrap();
    let marked = wait_state(admin, "b", "down", Duration::from_secs(10));
    let detection = killed_at.elapsed();
    // Once b is down it is not picked: a pick of it would be refused and retried
    // elsewhere, unseen by the client, but counted. The clients go one at a time, so
    // at most one connect to b can have been under way when it was marked.
    let b_errors = || metric(admin, "gatehouse_connect_errors_total", &[("server", "b")]);
    let errors_at_mark = b_errors();
    let (failures, seen, after_kill) = traffic.join().unwrap();
    let errors_after_mark = b_errors() - errors_at_mark;
    let detection_bound = bound(2, interval, timeout);
    let doc = server_doc(admin, "b");
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed (detection {} ms): {failures:?}",
        failures.len(),
        ms(detection)
    );
    assert!(
        marked.is_some(),
        "b not marked down {} ms after the kill",
        ms(detection)
    );
    assert!(
        detection <= detection_bound,
        "b marked down {} ms after the kill; bound fall × interval × 1.1 + timeout + slack = {} ms; failed connections: {}",
        ms(detection),
        ms(detection_bound),
        failures.len()
    );
    assert!(
        seen.get("a").copied().unwrap_or(0) > 0 && seen.get("c").copied().unwrap_or(0) > 0,
        "{seen:?}"
    );
    assert_eq!(
        after_kill.get("b"),
        None,
        "no client reached b after its kill: {after_kill:?}"
    );
    assert!(
        errors_after_mark <= 1.0,
        "b was still picked after it was marked down: {errors_after_mark} more connects to it failed ({errors_at_mark} before)"
    );
    figure!(
        "failover under traffic: {CLIENTS} clients, server killed at client {KILL_AT}: {} failed connections, detection {} ms (bound {} ms; reason {:?}); spread {seen:?}",
        failures.len(),
        ms(detection),
        ms(detection_bound),
        doc["last_change_reason"]
    );
}

// ---------------------------------------------------------------------------
// 2. A silent server
// ---------------------------------------------------------------------------

/// Clients through a backend of `silent` (connects time out) and a good server: all
/// served, the silent one marked down by passive checks.
fn silent_server_is_marked_down_by_traffic(silent: SocketAddr) {
    let good = Backend::named(on_fresh_ip(), "good");
    let g = Gatehouse::start(&config(
        &[server("silent", silent), server("good", good.addr)],
        r#"health = { check = "none" }
error_limit = 2
retries = 1
connect_timeout = "300ms""#,
        "",
    ));
    let (admin, front) = (g.admin(), g.addr("front"));
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..20 {
        match one_client(front) {
            Ok(name) => *seen.entry(name).or_insert(0) += 1,
            Err(e) => failures.push(format!("client {i}: {e}")),
        }
    }
    let took = started.elapsed();
    let doc = server_doc(admin, "silent");
    assert!(failures.is_empty(), "clients failed: {failures:?}");
    assert_eq!(seen.get("good"), Some(&20), "{seen:?}");
    assert_eq!(doc["state"], "down", "{doc:#}");
    let reason = doc["last_change_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("2 consecutive connect failures") && reason.contains("timed out"),
        "{reason:?}"
    );
    assert!(
        g.wait_log("consecutive connect failures", Duration::from_secs(5)),
        "log:\n{}",
        g.log()
    );
    figure!(
        "silent server: 20 clients served by the other server in {} ms, silent one down: {reason:?}",
        ms(took)
    );
}

/// Without root: a listener that never accepts, its accept queue (backlog 1) filled,
/// so that the kernel drops new SYNs: connects time out, as to a host that is gone.
#[test]
fn silent_server_with_a_full_accept_queue_is_marked_down_by_traffic() {
    let ip = fresh_ip();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(ip.into(), 0).into()).unwrap();
    socket.listen(1).unwrap();
    let silent = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        if let Ok(s) = TcpStream::connect_timeout(&silent, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    match TcpStream::connect_timeout(&silent, Duration::from_millis(300)) {
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {}
        other => skip!("a full accept queue does not drop SYNs on this kernel (probe: {other:?})"),
    }
    silent_server_is_marked_down_by_traffic(silent);
    drop(fillers);
}

/// A network namespace this test creates, behind a veth pair; frames to its address
/// are sent to a MAC nobody has, so the namespace drops them silently.
struct DropNamespace {
    name: String,
    veth: String,
    addr: Ipv4Addr,
}

impl DropNamespace {
    fn create() -> Result<DropNamespace, String> {
        let id = std::process::id() % 10000;
        let n = (std::process::id() % 60) as u8;
        let ns = DropNamespace {
            name: format!("gh-silent-{id}"),
            veth: format!("ghs{id}a"),
            // RFC 2544 benchmarking range: never a real network.
            addr: Ipv4Addr::new(198, 18, 200, 4 * n + 2),
        };
        let peer = format!("ghs{id}b");
        let local = Ipv4Addr::new(198, 18, 200, 4 * n + 1);
        let (local_cidr, addr_cidr) = (format!("{local}/30"), format!("{}/30", ns.addr));
        let addr = ns.addr.to_string();
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "add", &ns.veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&["netns", "exec", &ns.name, "ip", "addr", "add", &addr_cidr, "dev", &peer])?;
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", &peer, "up"])?;
        ip(&["addr", "add", &local_cidr, "dev", &ns.veth])?;
        ip(&["link", "set", &ns.veth, "up"])?;
        // Frames for the namespace's address go to a MAC it does not have: dropped there.
        ip(&[
            "neigh",
            "replace",
            &addr,
            "lladdr",
            "02:00:5e:00:53:01",
            "dev",
            &ns.veth,
            "nud",
            "permanent",
        ])?;
        Ok(ns)
    }
}

impl Drop for DropNamespace {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// With root: a server in a network namespace whose packets are dropped on the wire.
#[test]
fn silent_server_in_a_dropping_network_namespace_is_marked_down_by_traffic() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip!("needs root to create a network namespace and a veth pair");
    }
    if !have("ip") {
        skip!("needs the `ip` tool (iproute2)");
    }
    // As root with `ip`, a namespace that cannot be made is a broken setup: a failure.
    let ns = DropNamespace::create().unwrap_or_else(|e| panic!("cannot set up a network namespace: {e}"));
    let silent = SocketAddr::new(IpAddr::V4(ns.addr), 6443);
    match TcpStream::connect_timeout(&silent, Duration::from_millis(300)) {
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {}
        other => skip!("packets to the namespace are not silently dropped (probe: {other:?})"),
    }
    silent_server_is_marked_down_by_traffic(silent);
}

// ---------------------------------------------------------------------------
// 3. Backup servers
// ---------------------------------------------------------------------------

#[test]
fn backup_takes_over_only_when_all_primaries_are_down_and_hands_back() {
    // Down by their check while their traffic ports still accept and greet: a client
    // sent to a down primary would say so (a killed one would be retried unseen).
    let called = ["p1", "p2", "spare"];
    let (mut servers, check_port) = Checked::servers(3, |i, addr| Backend::named(addr, called[i]));
    let g = Gatehouse::start(&config(
        &[
            server("p1", servers[0].addr()),
            server("p2", servers[1].addr()),
            format!(
                r#"{{ name = "spare", address = "{}", backup = true }}"#,
                servers[2].addr()
            ),
        ],
        &format!(
            "retries = 2\n{}",
            check_on(
                check_port,
                r#"interval = "200ms", timeout = "300ms", rise = 1, fall = 1"#
            )
        ),
        "",
    ));
    let (admin, front) = (g.admin(), g.addr("front"));
    let wait = Duration::from_secs(10);

    let all_up = names(front, 12);
    assert_eq!(all_up.len(), 2, "both primaries, no backup: {all_up:?}");
    assert!(!all_up.contains_key("spare"), "{all_up:?}");

    servers[0].sicken();
    assert!(wait_state(admin, "p1", "down", wait).is_some());
    let one_up = names(front, 12);
    assert_eq!(
        one_up.get("p2"),
        Some(&12),
        "one primary left takes all, not the backup nor the down one: {one_up:?}"
    );

    servers[1].sicken();
    assert!(wait_state(admin, "p2", "down", wait).is_some());
    let none_up = names(front, 12);
    assert_eq!(
        none_up.get("spare"),
        Some(&12),
        "all primaries down: the backup: {none_up:?}"
    );

    servers[0].heal();
    assert!(wait_state(admin, "p1", "up", wait).is_some());
    let back = names(front, 12);
    assert_eq!(
        back.get("p1"),
        Some(&12),
        "a primary back: the backup hands back: {back:?}"
    );
    println!("backup: all up {all_up:?}; p1 down {one_up:?}; both down {none_up:?}; p1 back {back:?}");
}

// ---------------------------------------------------------------------------
// 4. on_down
// ---------------------------------------------------------------------------

/// One echo server checked on a separate port; a client connected through gatehouse;
/// then the check port closes and the server is marked down (its traffic port still works).
fn established_connection_then_server_down(on_down: &str) -> (Gatehouse, TcpStream, Backend) {
    let ip = fresh_ip();
    let echo = Backend::echo(SocketAddr::new(ip.into(), 0));
    let check = Backend::echo(SocketAddr::new(ip.into(), 0));
    let g = Gatehouse::start(&config(
        &[server("only", echo.addr)],
        &format!(
            r#"{on_down}
health = {{ check = "tcp", port = {}, interval = "200ms", timeout = "300ms", rise = 1, fall = 1 }}"#,
            check.addr.port()
        ),
        "",
    ));
    assert_eq!(state(g.admin(), "only"), "up");
    let mut client = connect(g.addr("front"));
    client.write_all(b"before\n").unwrap();
    assert_eq!(read_line(&mut client).unwrap(), "before");
    check.kill();
    assert!(
        wait_state(g.admin(), "only", "down", Duration::from_secs(10)).is_some(),
        "down once its check port closed"
    );
    (g, client, echo)
}

#[test]
fn on_down_close_resets_established_connections() {
    let (g, mut client, _echo) = established_connection_then_server_down(r#"on_down = "close""#);
    let mut buf = [0u8; 16];
    let r = client.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "the established connection is reset when its server goes down: {r:?}"
    );
    assert!(
        g.wait_log("in=7 out=7 server down", Duration::from_secs(5)),
        "close log:\n{}",
        g.log()
    );
}

#[test]
fn on_down_keep_lets_established_connections_flow() {
    let (g, mut client, _echo) = established_connection_then_server_down("");
    client.write_all(b"after\n").unwrap();
    assert_eq!(
        read_line(&mut client).unwrap(),
        "after",
        "the established connection still flows to its down server"
    );
    drop(client);
    assert!(
        g.wait_log("in=13 out=13 client closed", Duration::from_secs(5)),
        "close log:\n{}",
        g.log()
    );
}

// ---------------------------------------------------------------------------
// 5. slow_start
// ---------------------------------------------------------------------------

#[test]
fn slow_start_ramps_a_returning_server_up() {
    let steady = Backend::named(on_fresh_ip(), "steady");
    // Its address, refused until the server starts: down at the first check.
    let returning_addr = TcpListener::bind(on_fresh_ip()).unwrap().local_addr().unwrap();
    let window = Duration::from_secs(3);
    let g = Gatehouse::start(&config(
        &[server("steady", steady.addr), server("returning", returning_addr)],
        r#"slow_start = "3s"
retries = 1
health = { check = "tcp", interval = "200ms", timeout = "300ms", rise = 1, fall = 1 }"#,
        "",
    ));
    let (admin, front) = (g.admin(), g.addr("front"));
    assert_eq!(state(admin, "returning"), "down");

    let _returning = Backend::named(returning_addr, "returning");
    assert!(wait_state(admin, "returning", "up", Duration::from_secs(10)).is_some());
    let up_at = Instant::now();
    let early = names(front, 150);
    let early_span = up_at.elapsed();
    let (e_ret, e_steady) = (
        early.get("returning").copied().unwrap_or(0),
        early.get("steady").copied().unwrap_or(0),
    );

    // Past the window: full share.
    let left = (window + Duration::from_millis(300)).saturating_sub(up_at.elapsed());
    thread::sleep(left);
    let late = names(front, 100);
    let (l_ret, l_steady) = (
        late.get("returning").copied().unwrap_or(0),
        late.get("steady").copied().unwrap_or(0),
    );
    let figures = format!(
        "first {} ms of a {} ms window: returning {e_ret} / steady {e_steady}; after the window: returning {l_ret} / steady {l_steady}",
        ms(early_span),
        ms(window)
    );
    assert!(
        early_span < window / 2,
        "the early clients ran into the second half of the window: {figures}"
    );
    assert!(e_ret > 0, "the returning server is in the rotation: {figures}");
    assert!(
        e_ret * 3 < e_steady,
        "early in the window the returning server gets clearly fewer (< 1/4): {figures}"
    );
    assert!(
        l_ret * 10 >= l_steady * 8,
        "after the window it takes its full share: {figures}"
    );
    println!("slow start: {figures}");
}

// ---------------------------------------------------------------------------
// 6. All servers down
// ---------------------------------------------------------------------------

fn rejected(admin: SocketAddr, reason: &str) -> u64 {
    metric(
        admin,
        "gatehouse_connections_rejected_total",
        &[("listener", "front"), ("reason", reason)],
    ) as u64
}

#[test]
fn all_servers_down_closes_new_clients_at_once_with_a_rate_limited_log() {
    // Down by its check, its traffic port accepting and silent: a client sent to it
    // anyway would hang (a refusing server would cost nothing and prove nothing).
    let (servers, check_port) = Checked::sick_servers(1, |_, addr| Backend::silent(addr));
    let gone = &servers[0];
    let g = Gatehouse::start(&config(
        &[server("gone", gone.addr())],
        &format!(
            "connect_timeout = \"3s\"\n{}",
            check_on(
                check_port,
                r#"interval = "200ms", timeout = "300ms", rise = 2, fall = 2"#
            )
        ),
        "",
    ));
    let (admin, front) = (g.admin(), g.addr("front"));
    assert_eq!(state(admin, "gone"), "down");
    const CLIENTS: usize = 100;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..CLIENTS {
        let t = Instant::now();
        let mut s = connect(front);
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        slowest = slowest.max(t.elapsed());
        assert!(
            matches!(&r, Ok(0)) || matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "client {i} is closed: {r:?}"
        );
    }
    let span = started.elapsed();
    assert_eq!(
        gone.traffic.accepted(),
        0,
        "a client was sent to the server that is down"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "closed without trying a server: slowest {} ms",
        ms(slowest)
    );
    let counted = wait_until(Duration::from_secs(5), || {
        rejected(admin, "no_server") >= CLIENTS as u64
    });
    let (no_server, connect_failed) = (rejected(admin, "no_server"), rejected(admin, "connect_failed"));
    assert!(
        counted && no_server == CLIENTS as u64 && connect_failed == 0,
        "rejected no_server = {no_server}, connect_failed = {connect_failed}; want {CLIENTS} and 0"
    );
    assert!(g.wait_log("client rejected", Duration::from_secs(5)));
    let lines = g.log().lines().filter(|l| l.contains("client rejected")).count();
    // At most one line a second, plus one at the edge of a second.
    let allowed = span.as_secs() as usize + 2;
    assert!(
        (1..=allowed).contains(&lines),
        "{lines} \"client rejected\" lines for {CLIENTS} clients in {} ms (allowed {allowed})",
        ms(span)
    );
    figure!(
        "all servers down: {CLIENTS} clients closed in {} ms (slowest {} ms), {no_server} counted as no_server, {lines} log line(s)",
        ms(span),
        ms(slowest)
    );
}
