//! An HA pair: two gatehouses sharing one address through keepalived (VRRP), run in
//! network namespaces this test creates, with the shipped
//! `deploy/keepalived/keepalived.conf` (its addresses swapped for test ones).
//!
//! The namespaces: a switch (a bridge), two gateways `lb1` and `lb2` (gatehouse +
//! keepalived each, both listening on the VIP with `freebind = true`), two API-server
//! stand-ins `be1` and `be2`, and a client that connects to the VIP every 50 ms. The
//! addresses (10.250.0.0/24) exist only inside those namespaces; the test's own
//! sockets are made on threads that entered them (setns), never in the host's.
//!
//! Measured and printed: failover time after the active gatehouse is killed, failed
//! connections meanwhile, what long-lived connections see, that the VIP stays put when
//! the failed gateway returns (nopreempt), what a drain of every server on the active
//! gateway costs, a handover by stopping keepalived, and a gateway cut off the network.
//! `net.rs` holds the namespaces and the client loop, `keepalived.rs` the two programs.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;
mod keepalived;
mod net;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{ip, wait_until, Gatehouse, BIN};
use keepalived::{ctl, missing_tool, start_gatehouse, Keepalived};
use net::{admin_get, long_lived, move_after, what_long_lived_see, Attempt, ClientLoop, Net, Server};

const VIP: &str = "10.250.0.100";
const LB1: &str = "10.250.0.11";
const LB2: &str = "10.250.0.12";
const CLIENT: &str = "10.250.0.2";
const BE1: &str = "10.250.0.21";
const BE2: &str = "10.250.0.22";
const ADMIN: &str = "127.0.0.1:8405";

// ---------------------------------------------------------------- the test

#[test]
fn a_keepalived_pair_moves_the_vip_when_gatehouse_fails_or_drains() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip!("the HA pair test needs root (network namespaces)");
    }
    for tool in ["ip", "keepalived", "curl"] {
        if missing_tool(tool) {
            skip!("the HA pair test needs {tool} (.ci/run installs it)");
        }
    }
    let net = match Net::build() {
        Ok(n) => n,
        // Root with `ip`: a namespace that cannot be made is a broken setup, not a skip.
        Err(e) => panic!("cannot make the network namespaces: {e}"),
    };
    let (lb1, lb2) = (net.ns("lb1"), net.ns("lb2"));
    let dir = tempfile::tempdir().unwrap();
    let _be1 = Server::start(&net.ns("be1"), "be1", BE1);
    let _be2 = Server::start(&net.ns("be2"), "be2", BE2);

    // Both gatehouses start before either holds the VIP: freebind lets them listen on it.
    let mut g1 = start_gatehouse(&lb1);
    let g2 = start_gatehouse(&lb2);
    for ns in [&lb1, &lb2] {
        assert!(
            wait_until(Duration::from_secs(10), || admin_get(ns, "/readyz").0 == 200),
            "gatehouse in {ns} never ready: {:?}",
            admin_get(ns, "/readyz")
        );
    }
    assert!(!net.has_vip("lb1") && !net.has_vip("lb2"));

    let mut k1 = Keepalived::start(&lb1, "gallade", dir.path());
    assert!(
        wait_until(Duration::from_secs(15), || net.has_vip("lb1")),
        "lb1 never took the VIP; keepalived said:\n{}",
        k1.log()
    );
    let k2 = Keepalived::start(&lb2, "gallade-b", dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || k2.entered("BACKUP") >= 1),
        "lb2 never became BACKUP:\n{}",
        k2.log()
    );

    let cl = net.ns("cl");
    let client = ClientLoop::start(&cl);
    let t0 = Instant::now();
    assert!(
        client.wait_served_by(t0, LB1, Duration::from_secs(10)),
        "no connection through the VIP reached lb1"
    );

    // 1. The active gatehouse dies: lb1's track_script fails, lb1 goes to FAULT and
    //    gives the VIP away with a priority-0 advert, lb2 takes it.
    let watches = long_lived(&cl, 4, LB1);
    let killed = Instant::now();
    g1.signal(libc::SIGKILL);
    assert!(
        client.wait_served_by(killed, LB2, Duration::from_secs(15)),
        "no connection reached lb2 after lb1's gatehouse died; lb2 keepalived:\n{}",
        k2.log()
    );
    let kill = move_after(&client, killed, LB2);
    assert!(net.has_vip("lb2") && !net.has_vip("lb1"), "the VIP is on lb2 alone");
    let seen = what_long_lived_see(watches);
    figure!("FAILOVER, gatehouse killed on the active gateway: {kill}");
    figure!("  long-lived connections through it: {seen:?}");
    assert!(
        kill.took < Duration::from_secs(3),
        "failover took {} ms (target < 3 s)",
        kill.took.as_millis()
    );
    assert!(
        seen.iter().all(|s| s != "still open"),
        "a connection through a dead gatehouse cannot go on: {seen:?}"
    );

    // 2. lb1's gatehouse comes back: lb1 returns to BACKUP and, with nopreempt, the VIP
    //    stays on lb2.
    assert!(
        k1.entered("FAULT") >= 1,
        "lb1 went to FAULT when its gatehouse died:\n{}",
        k1.log()
    );
    let backups = k1.entered("BACKUP");
    g1 = start_gatehouse(&lb1);
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || k1.entered("BACKUP") > backups),
        "lb1 did not return to BACKUP:\n{}",
        k1.log()
    );
    let rejoined = back.elapsed();
    // Four advert intervals: a preempting lb1 would have taken the VIP by then.
    let watch = Instant::now();
    let mut moved = false;
    while watch.elapsed() < Duration::from_secs(4) {
        moved |= net.has_vip("lb1") || !net.has_vip("lb2");
        thread::sleep(Duration::from_millis(100));
    }
    let after_return: Vec<Attempt> = client
        .since(back)
        .into_iter()
        .filter(|a| a.end <= Instant::now())
        .collect();
    let failed = after_return.iter().filter(|a| a.outcome.is_err()).count();
    figure!(
        "NOPREEMPT: lb1 back in BACKUP {} ms after its gatehouse restarted; VIP still on lb2 4 s later: {}; \
         {failed} of {} connection attempts failed meanwhile",
        rejoined.as_millis(),
        !moved,
        after_return.len()
    );
    assert!(!moved, "with nopreempt the VIP stays on lb2");
    assert_eq!(failed, 0, "nothing changes for clients when lb1 returns");

    // 3. Every server drained on the active gateway: /readyz says why, the VIP moves.
    //    Until it has moved, lb2's drained servers still take new clients (drain is a
    //    preference, not a refusal of last resort): no new connection fails.
    let watches = long_lived(&cl, 4, LB2);
    let drained = Instant::now();
    ctl(&lb2, &g2, "drain", "control-plane/be1");
    ctl(&lb2, &g2, "drain", "control-plane/be2");
    let (code, body) = admin_get(&lb2, "/readyz");
    assert_eq!(
        (code, body.trim()),
        (503, "no server up in backend control-plane"),
        "/readyz with every server drained"
    );
    assert!(
        client.wait_served_by(drained, LB1, Duration::from_secs(15)),
        "the VIP did not move to lb1 after the drain:\n{}",
        k2.log()
    );
    let drain = move_after(&client, drained, LB1);
    let seen = what_long_lived_see(watches);
    figure!("DRAIN of every server on the active gateway (gatehouse ctl drain): {drain}");
    figure!("  long-lived connections through it: {seen:?}");
    assert!(
        drain.took < Duration::from_secs(3),
        "drain handover took {} ms",
        drain.took.as_millis()
    );
    drain.assert_none_refused("after the drain");

    // 4. A handover that loses no new connection: lb2's servers back (lb2 to BACKUP),
    //    then keepalived stopped on the active gateway while its gatehouse runs on.
    ctl(&lb2, &g2, "enable", "control-plane/be1");
    ctl(&lb2, &g2, "enable", "control-plane/be2");
    let backups = k2.entered("BACKUP");
    assert!(
        wait_until(Duration::from_secs(10), || k2.entered("BACKUP") > backups),
        "lb2 did not return to BACKUP:\n{}",
        k2.log()
    );
    let watches = long_lived(&cl, 4, LB1);
    let handed = Instant::now();
    k1.stop();
    assert!(
        client.wait_served_by(handed, LB2, Duration::from_secs(15)),
        "the VIP did not move to lb2 when keepalived on lb1 stopped:\n{}",
        k2.log()
    );
    let handover = move_after(&client, handed, LB2);
    let seen = what_long_lived_see(watches);
    figure!("HANDOVER, keepalived stopped on the active gateway (gatehouse still running): {handover}");
    figure!("  long-lived connections through it: {seen:?}");
    handover.assert_none_refused("in a handover");

    // 5. The active gateway vanishes (power, cable): no priority-0 advert, so the
    //    backup waits out three missed adverts.
    let k1 = Keepalived::start(&lb1, "gallade", dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || k1.entered("BACKUP") >= 1),
        "lb1's new keepalived never became BACKUP:\n{}",
        k1.log()
    );
    let watches = long_lived(&cl, 4, LB2);
    let lost = Instant::now();
    ip(&["-n", &net.ns("sw"), "link", "set", "v-lb2", "down"]).expect("cut lb2 off");
    assert!(
        client.wait_served_by(lost, LB1, Duration::from_secs(15)),
        "the VIP did not move to lb1 when lb2 vanished:\n{}",
        k1.log()
    );
    let vanish = move_after(&client, lost, LB1);
    let seen = what_long_lived_see(watches);
    figure!("FAILOVER, active gateway cut off the network: {vanish}");
    figure!("  long-lived connections through it: {seen:?}");
    assert!(
        vanish.took < Duration::from_secs(6),
        "3 missed adverts + skew is about 3.6 s; took {} ms",
        vanish.took.as_millis()
    );
    assert!(
        seen.iter().all(|s| s != "still open"),
        "the new gateway knows nothing of the old one's connections: {seen:?}"
    );

    // Stop what runs in the namespaces before they go.
    drop(client);
    drop((g1, g2, k1, k2));
    drop(net);
}

#[test]
fn a_freebind_listener_starts_on_an_address_this_host_lacks() {
    // 192.0.2.0/24 (TEST-NET-1) is never assigned to a host; nothing is sent to it.
    let config = |freebind: bool| {
        format!(
            r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "vip"
bind = ["192.0.2.1:0"]
backend = "pool"
freebind = {freebind}

[backend.pool]
servers = [{{ name = "a", address = "127.0.0.1:9" }}]
health = {{ check = "none" }}
"#
        )
    };
    let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind").unwrap_or_default();
    if nonlocal.trim() == "0" {
        let refused = Gatehouse::try_start(&config(false)).err().unwrap_or_default();
        assert!(
            refused.contains("cannot bind 192.0.2.1:0") && refused.contains("assign requested address"),
            "without freebind the bind fails: {refused}"
        );
    }
    let g = Gatehouse::try_start(&config(true)).unwrap_or_else(|e| panic!("freebind listener: {e}"));
    assert_eq!(
        g.addr("vip").ip().to_string(),
        "192.0.2.1",
        "listening on the absent address"
    );
}

/// One listener over a backend whose only server refuses (tcp check: down at once).
fn down_backend_config(ready_when: &str) -> String {
    let refused = common::refused_addr();
    format!(
        r#"[admin]
listen = "127.0.0.1:0"
{ready_when}

[[listener]]
name = "front"
bind = ["127.0.0.1:0"]
backend = "pool"

[backend.pool]
servers = [{{ name = "a", address = "{refused}" }}]
health = {{ check = "tcp", interval = "200ms", timeout = "200ms", rise = 1, fall = 1 }}
"#
    )
}

#[test]
fn readyz_answers_503_naming_a_used_backend_with_no_server_up() {
    let g = Gatehouse::start(&down_backend_config(""));
    let (code, body) = common::http(g.admin(), "GET", "/readyz", &[]);
    assert_eq!((code, body.as_str()), (503, "no server up in backend pool\n"));
    let (_, metrics) = common::http(g.admin(), "GET", "/metrics", &[]);
    for line in [
        "gatehouse_ready 0",
        "gatehouse_readyz_unready_total{reason=\"no_server\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} in /metrics:\n{metrics}");
    }
    assert!(
        g.wait_log(
            "not ready: /readyz answers 503: no server up in backend pool",
            Duration::from_secs(5)
        ),
        "the change is logged:\n{}",
        g.log()
    );
}

#[test]
fn ready_when_listening_answers_200_whatever_the_servers() {
    let g = Gatehouse::start(&down_backend_config("ready_when = \"listening\""));
    let (code, body) = common::http(g.admin(), "GET", "/readyz", &[]);
    assert_eq!((code, body.as_str()), (200, "ready\n"));
}

#[test]
fn a_mistyped_ready_when_is_refused_with_its_place_and_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let config = down_backend_config("ready_when = \"all-backend\"");
    std::fs::write(&path, &config).unwrap();
    let out = common::output_within(
        Command::new(BIN).arg("check").arg("--config").arg(&path),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("gatehouse check: {e}"));
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check accepted {config}");
    assert!(
        text.contains("gatehouse.toml:3:") && text.contains("did you mean `all-backends`?"),
        "want the line and a suggestion: {text}"
    );
}
