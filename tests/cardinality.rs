//! The metrics' cardinality budget (README, "Metrics"): at most 30 series per server,
//! whatever the servers do. Latency histograms are the backend's; a counter by reason
//! appears when its reason first happens. Checked on a backend whose servers are up,
//! down, refusing and draining, after traffic through every one that takes it.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// Series per server allowed by the budget.
const BUDGET: usize = 30;

#[test]
fn every_server_stays_within_the_series_budget() {
    let up = Backend::echo("127.0.0.1:0".parse().unwrap());
    let also_up = Backend::echo("127.0.0.1:0".parse().unwrap());
    let refused = refused_addr();
    let g = Gatehouse::start(&config(
        &[
            server("up", up.addr),
            server("also", also_up.addr),
            server("refused", refused),
        ],
        r#"health = { check = "tcp", interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }"#,
        "retries = 2",
    ));
    let admin = g.admin();
    assert!(
        wait_until(Duration::from_secs(10), || server_state(admin, "pool", "refused")
            == "down"),
        "the refusing server never went down"
    );
    for i in 0..20 {
        let mut s = connect(g.addr("front"));
        common::pool::round_trip(&mut s, &format!("ping {i}\n")).expect("served");
    }
    let (code, _) = http(admin, "POST", "/api/v1/servers/pool/also/drain", &[]);
    assert_eq!(code, 200);
    // Every server checked at least once, failed checks included.
    let all_checked = || {
        status(admin)["backends"][0]["servers"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["check"]["last_at"].as_f64().unwrap_or(0.0) > 0.0))
    };
    assert!(
        wait_until(Duration::from_secs(5), all_checked),
        "not every server was checked"
    );

    let (code, body) = http(admin, "GET", "/metrics", &[]);
    assert_eq!(code, 200);
    let mut per_server: BTreeMap<String, usize> = BTreeMap::new();
    let mut histogram_labels = Vec::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        if series.contains("_bucket{") && series.contains("server=\"") {
            histogram_labels.push(series.to_string());
        }
        if let Some(at) = series.find("server=\"") {
            let rest = &series[at + 8..];
            let name = rest.split('"').next().unwrap_or_default().to_string();
            *per_server.entry(name).or_default() += 1;
        }
    }
    figure!("cardinality: series per server {per_server:?} (budget {BUDGET})");
    assert_eq!(per_server.len(), 3, "{per_server:?}\n{body}");
    for (server, n) in &per_server {
        assert!(
            *n <= BUDGET,
            "server {server} has {n} series, over the budget of {BUDGET}:\n{body}"
        );
    }
    assert!(
        histogram_labels.is_empty(),
        "latency histograms by server: {:?}",
        &histogram_labels[..histogram_labels.len().min(3)]
    );
    // The backend's histograms are there, and a reason that happened has its series.
    assert!(
        body.contains("gatehouse_connect_duration_seconds_bucket{backend=\"pool\""),
        "{body}"
    );
    assert!(
        body.contains("gatehouse_health_check_duration_seconds_bucket{backend=\"pool\""),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("gatehouse_connections_closed_total{") && l.contains("reason=\"client_closed\"")),
        "{body}"
    );
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("gatehouse_connections_closed_total{") && l.contains("reason=\"idle_timeout\"")),
        "a close reason that never happened has a series:\n{body}"
    );
}
