//! Who may take a new client, as the balancer sees it: operator states, drain as a last
//! resort, down endpoints, slow start's ramp, and the states operators read. Found
//! untested at the unit level by `cargo mutants` (TESTING.md); built from a config as
//! a reload builds it.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::balance::Candidate;
use crate::config::Config;

/// The servers of backend "pool" in a snapshot of a config with `servers` (TOML array
/// items) and `extra` backend lines, no health checks.
fn pool(servers: &str, extra: &str) -> Arc<Backend> {
    let text = format!(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nbackend = \"pool\"\n\n\
         [backend.pool]\nservers = [{servers}]\nhealth = {{ check = \"none\" }}\n{extra}\n"
    );
    let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let (snapshot, _) = Snapshot::build(Arc::new(config), None);
    snapshot.backends[0].clone()
}

fn down(s: &Server, reason: &str) {
    let e = s.endpoints()[0].clone();
    s.set_endpoint_up(&e, false, reason);
}

fn up(s: &Server, reason: &str) {
    let e = s.endpoints()[0].clone();
    s.set_endpoint_up(&e, true, reason);
}

#[test]
fn operator_states_are_kept_and_named() {
    let b = pool(r#""127.0.0.1:1""#, "");
    let s = &b.servers[0].server;
    assert_eq!(s.admin_state(), AdminState::Enabled);
    for (state, name) in [
        (AdminState::Drain, "drain"),
        (AdminState::Disabled, "disabled"),
        (AdminState::Enabled, "enabled"),
    ] {
        assert!(s.set_admin_state(state, "test"), "{name}: a change");
        assert!(!s.set_admin_state(state, "test"), "{name}: no change the second time");
        assert_eq!(s.admin_state(), state);
        assert_eq!(state.as_str(), name);
    }
    s.set_admin_state(AdminState::Drain, "test");
    assert_eq!(s.state(), ServerState::Drain);
    assert_eq!(s.last_change().1, "set to drain by test");
}

#[test]
fn only_an_enabled_server_that_is_up_takes_new_clients() {
    let b = pool(r#""127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3""#, "");
    let [a, x, y] = [0, 1, 2].map(|i| b.servers[i].server.clone());
    assert!(a.accepts_new() && x.accepts_new() && y.accepts_new());
    assert_eq!(b.servers_up(), 3);
    down(&a, "refused");
    x.set_admin_state(AdminState::Disabled, "test");
    assert!(!a.accepts_new(), "down");
    assert!(!x.accepts_new(), "disabled");
    assert!(y.accepts_new());
    assert_eq!(b.servers_up(), 1);
    assert_eq!(b.servers[0].weight(), 0, "a down server has no weight");
    assert!(b.servers[2].weight() > 0);
}

#[test]
fn a_drained_server_is_a_last_resort_only_while_it_is_up() {
    let b = pool(r#""127.0.0.1:1", "127.0.0.1:2""#, "");
    let (drained, disabled) = (&b.servers[0], &b.servers[1]);
    drained.server.set_admin_state(AdminState::Drain, "test");
    disabled.server.set_admin_state(AdminState::Disabled, "test");
    assert!(!drained.server.accepts_new());
    assert!(drained.server.last_resort());
    assert_eq!(drained.weight(), 0);
    assert_eq!(drained.last_resort_weight(), drained.ramped_weight());
    assert!(!disabled.server.last_resort(), "disabled is no last resort");
    assert_eq!(disabled.last_resort_weight(), 0);
    down(&drained.server, "refused");
    assert!(!drained.server.last_resort(), "a drained server that is down");
    assert_eq!(drained.last_resort_weight(), 0);
    assert_eq!(b.servers_up(), 0);
}

#[test]
fn a_connection_goes_to_an_endpoint_that_is_up() {
    let b = pool(r#""127.0.0.1:1""#, "");
    let s = &b.servers[0].server;
    assert_eq!(s.pick_endpoint().map(|e| e.addr), Some("127.0.0.1:1".parse().unwrap()));
    down(s, "refused");
    assert!(s.pick_endpoint().is_none());
}

#[test]
fn a_server_without_an_address_is_unresolved() {
    let b = pool(r#"{ name = "named", address = "api.example.invalid:6443" }"#, "");
    let s = &b.servers[0].server;
    assert_eq!(s.state(), ServerState::Unresolved, "not resolved yet");
    s.set_addresses(&[]);
    assert_eq!(s.state(), ServerState::Unresolved, "resolved to nothing");
    s.set_addresses(&["127.0.0.1:6443".parse().unwrap()]);
    assert_eq!(s.state(), ServerState::Up);
}

#[test]
fn each_change_of_availability_is_recorded_with_its_reason() {
    let b = pool(r#""127.0.0.1:1""#, "");
    let s = &b.servers[0].server;
    assert_eq!(s.state(), ServerState::Up);
    down(s, "3 consecutive connect failures");
    assert_eq!(s.state(), ServerState::Down);
    assert_eq!(s.last_change().1, "3 consecutive connect failures");
    up(s, "tcp connect ok (2/2)");
    assert_eq!(s.state(), ServerState::Up);
    assert_eq!(s.last_change().1, "tcp connect ok (2/2)");
}

#[test]
fn slow_start_ramps_only_a_server_that_came_back() {
    let b = pool(
        r#"{ name = "a", address = "127.0.0.1:1", weight = 4 }"#,
        r#"slow_start = "10s""#,
    );
    let entry = &b.servers[0];
    // Up since start: its full weight (16 per unit of weight) at once.
    assert_eq!(entry.weight(), 64);
    down(&entry.server, "refused");
    up(&entry.server, "back");
    // Some milliseconds into a 10 s window: the floor of 5 %.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(entry.weight(), 3, "4 × 16 × 5 %");
}
