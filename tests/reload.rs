//! Hot reload through the real binary: reloads under load lose no connection, bad
//! configs change nothing, listeners are diffed, servers keep their state. Runtime
//! control and systemd are in `tests/control.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::pool::*;
use common::*;

/// A free address on a loopback IP of its own (bound once to learn a free port).
fn free_addr() -> SocketAddr {
    TcpListener::bind((fresh_ip(), 0)).unwrap().local_addr().unwrap()
}

/// A server's entry in the status API.
fn server_status(admin: SocketAddr, backend: &str, server: &str) -> serde_json::Value {
    let v = status(admin);
    v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["name"] == backend)
        .flat_map(|b| b["servers"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == server)
        .unwrap_or_else(|| panic!("no server {backend}/{server} in status: {v}"))
}

/// The addresses listener `name` is bound to, per the status API.
fn listener_binds(admin: SocketAddr, name: &str) -> Vec<SocketAddr> {
    let v = status(admin);
    v["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["name"] == name)
        .flat_map(|l| l["binds"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().and_then(|a| a.parse().ok()))
        .collect()
}

fn metrics(admin: SocketAddr) -> String {
    let (code, body) = http(admin, "GET", "/metrics", &[]);
    assert_eq!(code, 200, "{body}");
    body
}

/// The byte at position `pos` of the long-lived test stream.
fn pattern(pos: u64) -> u8 {
    (pos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

// ---------------------------------------------------------------------------------
// Reload under load

#[test]
fn a_reload_storm_under_load_fails_no_connection() {
    const CLIENTS: usize = 4;
    const RELOADS: usize = 40;
    const PER_RELOAD: usize = 50;
    let a = Backend::echo(any_port());
    let b = Backend::echo(any_port());
    // The listener under load keeps its bind address in every config: its socket stays.
    let front = free_addr();
    let small = cfg(&[("front", front)], &[server("a", a.addr)], Some(""), NO_CHECKS);
    let g = Gatehouse::start(&small);
    let admin = g.admin();

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, made, failures) = (stop.clone(), made.clone(), failures.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    match echo_once(front, (c as u64) << 32 | n) {
                        Ok(()) => {
                            made.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    let mut extra_checked = 0;
    for i in 0..RELOADS {
        // The 1st, 3rd, ... reload adds a listener (on a fresh address) and a server; the next removes them.
        let add = i % 2 == 0;
        let config = if add {
            cfg(
                &[("front", front), ("extra", SocketAddr::new(fresh_ip().into(), 0))],
                &[server("a", a.addr), server("b", b.addr)],
                Some(""),
                NO_CHECKS,
            )
        } else {
            small.clone()
        };
        let target = made.load(Ordering::Acquire) + PER_RELOAD;
        let ready = g.reload(&config);
        assert!(
            ready.contains(&format!("configuration generation {} loaded", i + 2)),
            "reload {i} did not succeed: {ready}\n{}",
            g.log()
        );
        if add {
            let binds = listener_binds(admin, "extra");
            assert_eq!(binds.len(), 1, "extra listener after reload {i}: {binds:?}");
            echo_once(binds[0], i as u64).unwrap_or_else(|e| panic!("through the added listener: {e}"));
            extra_checked += 1;
        }
        // Let traffic flow between reloads (a signal, not a sleep).
        assert!(
            wait_until(Duration::from_secs(30), || made.load(Ordering::Acquire) >= target
                || !failures.lock().unwrap().is_empty()),
            "clients stalled after reload {i}: {} connections",
            made.load(Ordering::Acquire)
        );
    }
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    let made = made.load(Ordering::Acquire);
    let failures = failures.lock().unwrap();
    println!(
        "reload storm: {made} connections by {CLIENTS} clients across {RELOADS} reloads, {} failed; \
         backends accepted a={} b={}; added listener answered {extra_checked} times",
        failures.len(),
        a.accepted(),
        b.accepted()
    );
    assert!(
        failures.is_empty(),
        "{} of {} connections failed across {RELOADS} reloads, first: {:?}",
        failures.len(),
        made + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(made >= RELOADS * PER_RELOAD, "only {made} connections were made");
    assert!(
        b.accepted() > 0,
        "server b (added by every other reload) got no connection"
    );
}

#[test]
fn a_long_lived_connection_survives_the_removal_of_its_server_intact() {
    let a = Backend::named(any_port(), "a");
    let b = Backend::named(any_port(), "b");
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr), server("b", b.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let front = g.addr("front");
    let conn = connect_to(front, "b");

    // Bytes flow both ways the whole time: a writer sends the pattern, a reader checks the echo.
    let stop = Arc::new(AtomicBool::new(false));
    let read = Arc::new(AtomicU64::new(0));
    let mut writer_conn = conn.try_clone().unwrap();
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut pos = 0u64;
            let mut chunk = vec![0u8; 16 * 1024];
            while !stop.load(Ordering::Acquire) {
                for (i, byte) in chunk.iter_mut().enumerate() {
                    *byte = pattern(pos + i as u64);
                }
                writer_conn
                    .write_all(&chunk)
                    .expect("write on the long-lived connection");
                pos += chunk.len() as u64;
            }
            writer_conn.shutdown(Shutdown::Write).unwrap();
            pos
        })
    };
    let mut reader_conn = conn;
    let reader = {
        let read = read.clone();
        thread::spawn(move || -> Result<u64, String> {
            let mut pos = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader_conn.read(&mut buf).map_err(|e| format!("read at {pos}: {e}"))?;
                if n == 0 {
                    return Ok(pos);
                }
                if let Some(i) = (0..n).find(|&i| buf[i] != pattern(pos + i as u64)) {
                    return Err(format!("byte {} differs", pos + i as u64));
                }
                pos += n as u64;
                read.store(pos, Ordering::Release);
            }
        })
    };
    let flowing = |at_least: u64| wait_until(Duration::from_secs(30), || read.load(Ordering::Acquire) >= at_least);
    assert!(flowing(1 << 20), "less than 1 MiB echoed before the reload");

    let ready = g.reload(&cfg(&[("front", front)], &[server("a", a.addr)], Some(""), NO_CHECKS));
    assert!(ready.contains("generation 2 loaded"), "{ready}");
    let at_reload = read.load(Ordering::Acquire);
    assert!(
        flowing(at_reload + (4 << 20)),
        "the connection stalled after its server was removed: {at_reload} bytes echoed at the reload, {} now",
        read.load(Ordering::Acquire)
    );
    stop.store(true, Ordering::Release);
    let sent = writer.join().unwrap();
    let echoed = reader.join().unwrap().expect("echo intact");
    assert_eq!(
        echoed, sent,
        "echoed {echoed} of {sent} bytes ({at_reload} before the reload)"
    );

    let landed: Vec<String> = (0..6).map(|_| connect_named(front).0).collect();
    assert!(
        landed.iter().all(|n| n == "a"),
        "new connections after removing b landed on {landed:?}"
    );
    println!("long-lived connection: {sent} bytes each way, {at_reload} before the reload; new ones on {landed:?}");
}

// ---------------------------------------------------------------------------------
// Bad reloads change nothing

/// Starts on a good config, reloads with `broken` (made from the running front address),
/// and checks the failure is reported everywhere while the old config keeps serving.
fn a_broken_reload_changes_nothing(broken: impl FnOnce(SocketAddr, SocketAddr) -> String, expect: &str) {
    let a = Backend::echo(any_port());
    let b = Backend::echo(any_port());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let (front, admin) = (g.addr("front"), g.admin());
    let mut established = connect(front);
    round_trip(&mut established, "before\n").unwrap();

    std::fs::write(&g.config_path, broken(front, b.addr)).unwrap();
    g.signal(libc::SIGHUP);
    g.wait_notify(|m| m.contains("RELOADING=1"), Duration::from_secs(10))
        .expect("RELOADING=1");
    let ready = g
        .wait_notify(|m| m.contains("READY=1"), Duration::from_secs(30))
        .expect("READY=1 after a failed reload");
    let status_line = ready.lines().find(|l| l.starts_with("STATUS=")).unwrap_or_default();
    assert!(
        status_line.contains("reload failed") && status_line.contains(expect),
        "STATUS does not tell of the failure ({expect:?}): {ready}"
    );

    let v = status(admin);
    let last = &v["config"]["last_reload"];
    assert_eq!(last["result"], "failure", "{v}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(error.contains(expect), "last_reload error lacks {expect:?}: {error}");
    assert_eq!(v["config"]["generation"], 1, "the generation moved: {v}");
    let servers: Vec<&str> = v["backends"][0]["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(servers, ["a"], "servers of the running config changed");
    let m = metrics(admin);
    assert!(
        m.contains("gatehouse_config_reloads_total{result=\"failure\"} 1"),
        "failure not counted:\n{m}"
    );
    assert!(
        g.log().contains("reload failed, the running configuration stays"),
        "{}",
        g.log()
    );

    // Traffic flows on the old config: the established connection and new ones, to a.
    round_trip(&mut established, "after\n").expect("established connection after the failed reload");
    for i in 0..5 {
        echo_once(front, i).unwrap_or_else(|e| panic!("new connection after the failed reload: {e}"));
    }
    assert_eq!(b.accepted(), 0, "the broken config's server got connections");
    assert!(a.accepted() >= 6, "a accepted {}", a.accepted());
}

#[test]
fn a_reload_with_a_syntax_error_changes_nothing() {
    a_broken_reload_changes_nothing(
        |front, b| {
            let good = cfg(&[("front", front)], &[server("b", b)], Some(""), NO_CHECKS);
            good.replace("[[listener]]", "[[listener]")
        },
        "gatehouse.toml:",
    );
}

#[test]
fn a_reload_with_an_undefined_backend_changes_nothing() {
    a_broken_reload_changes_nothing(
        |front, b| {
            let good = cfg(&[("front", front)], &[server("b", b)], Some(""), NO_CHECKS);
            good.replace("backend = \"pool\"", "backend = \"poool\"")
        },
        "backend \"poool\" is not defined",
    );
}

#[test]
fn a_reload_whose_new_address_is_taken_changes_nothing() {
    let held = TcpListener::bind((fresh_ip(), 0)).unwrap();
    let taken = held.local_addr().unwrap();
    let bindable = free_addr();
    a_broken_reload_changes_nothing(
        |front, b| {
            cfg(
                &[("front", front), ("spare", bindable), ("extra", taken)],
                &[server("b", b)],
                Some(""),
                NO_CHECKS,
            )
        },
        &format!("cannot bind {taken}"),
    );
    // Nothing of the failed reload stays bound, not even the address that was free.
    let e = TcpStream::connect_timeout(&bindable, Duration::from_secs(5)).expect_err("spare listener left bound");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    drop(held);
}

#[test]
fn a_reload_whose_admin_address_is_taken_changes_nothing() {
    let held = TcpListener::bind((fresh_ip(), 0)).unwrap();
    let taken = held.local_addr().unwrap();
    let bindable = free_addr();
    a_broken_reload_changes_nothing(
        |front, b| {
            cfg(
                &[("front", front), ("spare", bindable)],
                &[server("b", b)],
                Some(""),
                NO_CHECKS,
            )
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{taken}\""))
        },
        &format!("admin listener: cannot bind {taken}"),
    );
    let e = TcpStream::connect_timeout(&bindable, Duration::from_secs(5)).expect_err("spare listener left bound");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    drop(held);
}

// ---------------------------------------------------------------------------------
// Listener diffing

#[test]
fn an_unchanged_bind_address_never_refuses_a_connection_during_reloads() {
    let a = Backend::echo(any_port());
    let front = free_addr();
    let base = cfg(&[("front", front)], &[server("a", a.addr)], Some(""), NO_CHECKS);
    let g = Gatehouse::start(&base);
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicUsize::new(0));
    let prober = {
        let (stop, connects) = (stop.clone(), connects.clone());
        thread::spawn(move || -> Vec<String> {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Acquire) {
                match TcpStream::connect_timeout(&front, Duration::from_secs(5)) {
                    Ok(s) => {
                        // Closed with a reset: tens of thousands of probes leave no TIME_WAIT.
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        connects.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        })
    };
    const RELOADS: usize = 20;
    for i in 0..RELOADS {
        let config = if i % 2 == 0 {
            cfg(
                &[("front", front), ("extra", SocketAddr::new(fresh_ip().into(), 0))],
                &[server("a", a.addr)],
                Some(""),
                NO_CHECKS,
            )
        } else {
            base.clone()
        };
        let target = connects.load(Ordering::Acquire) + 20;
        let ready = g.reload(&config);
        assert!(ready.contains("loaded"), "reload {i}: {ready}");
        assert!(
            wait_until(Duration::from_secs(30), || connects.load(Ordering::Acquire) >= target),
            "prober stalled"
        );
    }
    stop.store(true, Ordering::Release);
    let errors = prober.join().unwrap();
    let n = connects.load(Ordering::Acquire);
    println!(
        "tight connect loop: {n} connects across {RELOADS} reloads, {} failed",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} of {} connects to the kept address failed during {RELOADS} reloads: {:?}",
        errors.len(),
        n + errors.len(),
        &errors[..errors.len().min(5)]
    );
}

#[test]
fn a_removed_address_stops_accepting_while_its_connection_goes_on() {
    let a = Backend::echo(any_port());
    let extra = SocketAddr::new(fresh_ip().into(), 0);
    let g = Gatehouse::start(&cfg(
        &[("front", any_port()), ("extra", extra)],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let (front, extra) = (g.addr("front"), g.addr("extra"));
    let mut established = connect(extra);
    round_trip(&mut established, "before\n").unwrap();

    // The front listener's configured address stays "127.0.0.1:0": that key keeps its socket.
    g.reload(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    assert!(g.log().contains("stopped listening"), "{}", g.log());
    let e = TcpStream::connect_timeout(&extra, Duration::from_secs(5)).expect_err("removed address still accepts");
    assert_eq!(
        e.kind(),
        ErrorKind::ConnectionRefused,
        "connect to the removed address: {e}"
    );
    for i in 0..20 {
        round_trip(&mut established, &format!("after {i}\n"))
            .unwrap_or_else(|e| panic!("established connection on the removed address: {e}"));
    }
    echo_once(front, 1).expect("the kept listener");
}

// ---------------------------------------------------------------------------------
// Server state across reloads

#[test]
fn a_server_that_stays_keeps_its_drain_state_and_counters() {
    let a = Backend::echo(any_port());
    let b = Backend::echo(any_port());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let (front, admin) = (g.addr("front"), g.admin());
    for i in 0..3 {
        echo_once(front, i).unwrap();
    }
    let (code, body) = http(admin, "POST", "/api/v1/servers/pool/a/drain", &[]);
    assert_eq!(code, 200, "{body}");
    let before = server_status(admin, "pool", "a");
    assert_eq!(before["connections"], 3, "{before}");

    g.reload(&cfg(
        &[("front", front)],
        &[server("a", a.addr), server("b", b.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let after = server_status(admin, "pool", "a");
    assert_eq!(status(admin)["config"]["generation"], 2);
    assert_eq!(after["state"], "drain", "drain lost in the reload: {after}");
    assert_eq!(after["connections"], 3, "connection counter not kept: {after}");
    assert_eq!(server_state(admin, "pool", "b"), "up");
    for i in 0..4 {
        echo_once(front, i).unwrap();
    }
    assert_eq!(
        a.accepted(),
        3,
        "the drained server took new connections after the reload"
    );
    assert_eq!(b.accepted(), 4, "b accepted {}", b.accepted());
}

#[test]
fn round_robin_goes_on_in_turn_across_reloads_of_an_unchanged_file() {
    let backends = [
        Backend::named(any_port(), "a"),
        Backend::named(any_port(), "b"),
        Backend::named(any_port(), "c"),
    ];
    let servers: Vec<String> = ["a", "b", "c"]
        .iter()
        .zip(&backends)
        .map(|(n, b)| server(n, b.addr))
        .collect();
    let text = cfg(&[("front", any_port())], &servers, None, NO_CHECKS);
    let g = Gatehouse::start(&text);
    let front = g.addr("front");
    let text = cfg(&[("front", front)], &servers, None, NO_CHECKS);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (name, s) = connect_named(front);
        drop(s);
        seen.push(name);
        g.reload(&text);
    }
    assert_eq!(
        seen,
        ["a", "b", "c", "a", "b", "c"],
        "one connection after each of 6 reloads of an unchanged file landed on {seen:?}"
    );
}

#[test]
fn a_server_whose_address_changes_starts_fresh_but_stays_drained() {
    let a = Backend::echo(any_port());
    let a2 = Backend::echo(any_port());
    let b = Backend::echo(any_port());
    let g = Gatehouse::start(&cfg(
        &[("front", any_port())],
        &[server("a", a.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let (front, admin) = (g.addr("front"), g.admin());
    for i in 0..3 {
        echo_once(front, i).unwrap();
    }
    let (code, body) = http(admin, "POST", "/api/v1/servers/pool/a/drain", &[]);
    assert_eq!(code, 200, "{body}");

    g.reload(&cfg(
        &[("front", front)],
        &[server("a", a2.addr), server("b", b.addr)],
        Some(""),
        NO_CHECKS,
    ));
    let after = server_status(admin, "pool", "a");
    assert_eq!(after["address"], a2.addr.to_string(), "{after}");
    assert_eq!(after["connections"], 0, "a changed address must start fresh: {after}");
    assert_eq!(
        after["state"], "drain",
        "operator state must outlive the address change: {after}"
    );
    echo_once(front, 9).unwrap();
    assert_eq!(
        a2.accepted(),
        0,
        "the drained server took a connection at its new address"
    );
    assert_eq!(b.accepted(), 1);
}

// ---------------------------------------------------------------------------------
// Health state across reloads

#[test]
fn a_reload_keeps_a_server_s_health_state_starts_a_changed_check_fresh_and_checks_a_new_server_first() {
    // Checks on a port of their own: "a" can be down by its check while its traffic
    // port greets. rise = 20 at 300 ms: once healed, "a" stays down for about 6 s
    // unless its state is thrown away, when its next first check makes it up at once.
    let called = ["a", "b", "c"];
    let (mut servers, port) = common::checks::Checked::servers(3, |i, addr| Backend::named(addr, called[i]));
    let health = |timeout: &str| {
        common::checks::check_on(
            port,
            &format!(r#"interval = "300ms", timeout = "{timeout}", rise = 20, fall = 1"#),
        )
    };
    let both = [server("a", servers[0].addr()), server("b", servers[1].addr())];
    let g = Gatehouse::start(&cfg(&[("front", any_port())], &both, Some(""), &health("500ms")));
    let (front, admin) = (g.addr("front"), g.admin());
    assert_eq!(server_state(admin, "pool", "a"), "up");
    assert_eq!(server_state(admin, "pool", "b"), "up");
    for _ in 0..4 {
        drop(connect_named(front));
    }
    let b_connections = server_status(admin, "pool", "b")["connections"].clone();

    // "a" goes down, then its check passes again: rise has 20 successes to count.
    servers[0].sicken();
    assert!(
        wait_until(Duration::from_secs(10), || server_state(admin, "pool", "a") == "down"),
        "a never went down"
    );
    servers[0].heal();
    // "c" is new in the reload, and its check fails while its traffic port accepts.
    servers[2].sicken();
    let all = [
        server("a", servers[0].addr()),
        server("b", servers[1].addr()),
        server("c", servers[2].addr()),
    ];
    let healed = std::time::Instant::now();
    g.reload(&cfg(&[("front", front)], &all, Some(""), &health("500ms")));
    let a = server_status(admin, "pool", "a");
    let kept_in = healed.elapsed();
    assert!(
        kept_in < Duration::from_secs(4),
        "the reload took {kept_in:?}: rise may be done"
    );
    assert_eq!(a["state"], "down", "a kept its state (rising) through the reload: {a}");
    let b = server_status(admin, "pool", "b");
    assert_eq!(b["state"], "up", "{b}");
    assert_eq!(b["connections"], b_connections, "b kept its counters: {b}");
    let c = server_status(admin, "pool", "c");
    assert_eq!(
        c["state"], "down",
        "the new server was checked before taking clients: {c}"
    );
    let landed: Vec<String> = (0..6).map(|_| connect_named(front).0).collect();
    assert!(landed.iter().all(|n| n == "b"), "clients landed on {landed:?}");
    assert_eq!(servers[2].traffic.accepted(), 0, "the new server, down, took a client");

    // A changed check starts fresh: its first check decides, and "a" passes it.
    g.reload(&cfg(&[("front", front)], &all, Some(""), &health("400ms")));
    let a = server_status(admin, "pool", "a");
    assert_eq!(a["state"], "up", "a changed check starts fresh with a first check: {a}");
    assert_eq!(server_state(admin, "pool", "c"), "down");
}
