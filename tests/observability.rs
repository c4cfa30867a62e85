//! Observability through the real binary and the real tools an operator points at it:
//! `/metrics` linted by promtool and holding the metric contract, a real VictoriaMetrics
//! scraping gatehouse and answering queries about it, the status page rendered by
//! headless Chromium (with a screenshot for a person to look at), JSON and text logs
//! carrying the same close-line fields, and the admin health endpoints.
//!
//! A tool that is not installed skips its test loudly (`.ci/run` installs them all).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::exposition::*;
use common::*;

// ---------------------------------------------------------------- helpers

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sends `len` bytes through `addr` to an echo server, half-closes, reads the echo to the
/// end and checks it; returns the client's own address (what the close line calls client).
fn echo_round_trip(addr: SocketAddr, len: usize, seed: u8) -> SocketAddr {
    let payload = pattern(len, seed);
    let mut s = connect(addr);
    let local = s.local_addr().unwrap();
    s.write_all(&payload).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::with_capacity(len);
    s.read_to_end(&mut got).unwrap();
    assert!(
        got == payload,
        "echo through gatehouse returned {} bytes for {len} sent (or different bytes)",
        got.len()
    );
    local
}

/// A GET that returns None instead of panicking while the peer is not listening yet.
fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A port on `ip` that nobody listens on (just released; `ip` is fresh, so nobody races for it).
fn free_port(ip: std::net::Ipv4Addr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

fn metrics_text(admin: SocketAddr) -> String {
    let (code, body) = http(admin, "GET", "/metrics", &[]);
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// A gatehouse with every metric family in use: listener "front" over backend "pool"
/// (an echo server and a refusing server, no checks: connects to it fail and are retried)
/// and listener "checked" over backend "checked" (an echo server and a refusing server,
/// tcp checks: one check keeps failing). Returns the bytes sent through "front" and the
/// clients' addresses.
struct Traffic {
    g: Gatehouse,
    sent: u64,
    connections: usize,
    clients: Vec<SocketAddr>,
    _echo: Vec<Backend>,
}

fn gatehouse_with_traffic() -> Traffic {
    let a = Backend::echo("127.0.0.1:0".parse().unwrap());
    let c = Backend::echo("127.0.0.1:0".parse().unwrap());
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "front"
bind = ["127.0.0.1:0"]
backend = "pool"

[[listener]]
name = "checked"
bind = ["{}:0"]
backend = "checked"

[backend.pool]
servers = [{}, {}]
health = {{ check = "none" }}

[backend.checked]
servers = [{}, {}]
health = {{ check = "tcp", interval = "200ms" }}
"#,
        // Its own address: listeners are keyed by their configured bind address.
        fresh_ip(),
        server("a", a.addr),
        server("b", refused_addr()),
        server("c", c.addr),
        server("d", refused_addr()),
    );
    let g = Gatehouse::start(&config);
    let mut sent = 0;
    let mut clients = Vec::new();
    let sizes = [1, 1000, 4096, 65_537, 300_000, 17];
    for (i, len) in sizes.iter().enumerate() {
        clients.push(echo_round_trip(g.addr("front"), *len, i as u8));
        sent += *len as u64;
    }
    clients.push(echo_round_trip(g.addr("checked"), 10, 99));
    // The close of each connection is recorded after the client saw the end: wait for it.
    let admin = g.admin();
    let closed = wait_until(Duration::from_secs(10), || {
        let m = parse_exposition(&metrics_text(admin));
        sum(
            &m,
            "gatehouse_connection_duration_seconds_count",
            &[("listener", "front")],
        ) as usize
            == sizes.len()
            && sum(&m, "gatehouse_health_check_failures_total", &[("server", "d")]) >= 1.0
    });
    assert!(
        closed,
        "connections not all recorded as closed:\n{}",
        metrics_text(admin)
    );
    Traffic {
        g,
        sent,
        connections: sizes.len(),
        clients,
        _echo: vec![a, c],
    }
}

// ---------------------------------------------------------------- /metrics

#[test]
fn metrics_exposition_passes_promtool_lint() {
    let Some(promtool) = tool("promtool") else {
        skip!("promtool is not installed (Debian package `prometheus`); /metrics was not linted");
    };
    let t = gatehouse_with_traffic();
    let body = metrics_text(t.g.admin());
    let families = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let (status, report) = promtool_check_metrics(&promtool, &body);
    assert!(
        status.success() && report.trim().is_empty(),
        "promtool check metrics found problems in {families} families ({status}):\n{report}\n--- /metrics:\n{body}"
    );
    assert!(families >= 14, "only {families} metric families in /metrics:\n{body}");
}

#[test]
fn metrics_carry_the_contract_names_and_labels() {
    let t = gatehouse_with_traffic();
    let body = metrics_text(t.g.admin());
    let m = parse_exposition(&body);
    let contract: [(&str, &[&str]); 18] = [
        ("gatehouse_connections_accepted_total", &["listener"]),
        ("gatehouse_connections_active", &["listener", "backend", "server"]),
        ("gatehouse_connections_rejected_total", &["listener", "reason"]),
        ("gatehouse_bytes_total", &["listener", "backend", "server", "direction"]),
        ("gatehouse_connect_duration_seconds_bucket", &["backend", "le"]),
        ("gatehouse_connect_errors_total", &["backend", "server", "reason"]),
        ("gatehouse_server_up", &["backend", "server"]),
        ("gatehouse_server_state", &["backend", "server", "state"]),
        ("gatehouse_health_check_duration_seconds_bucket", &["backend", "le"]),
        (
            "gatehouse_health_check_failures_total",
            &["backend", "server", "reason"],
        ),
        ("gatehouse_config_reloads_total", &["result"]),
        ("gatehouse_config_last_reload_success_timestamp_seconds", &[]),
        ("gatehouse_build_info", &["version"]),
        ("gatehouse_connection_duration_seconds_bucket", &["listener", "le"]),
        (
            "gatehouse_connections_closed_total",
            &["listener", "backend", "server", "reason"],
        ),
        ("gatehouse_log_lines_dropped_total", &[]),
        ("gatehouse_event_loop_lag_seconds", &["loop"]),
        ("gatehouse_event_loop_accepted_total", &["loop"]),
    ];
    for (name, labels) in contract {
        let found = find(&m, name, &[]);
        assert!(!found.is_empty(), "no {name} in /metrics:\n{body}");
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        for s in found {
            let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(got, want, "labels of {name}: {s:?}");
        }
    }
    for direction in ["client_to_server", "server_to_client"] {
        assert!(
            !find(&m, "gatehouse_bytes_total", &[("direction", direction)]).is_empty(),
            "no gatehouse_bytes_total{{direction=\"{direction}\"}}:\n{body}"
        );
    }
    let hours = find(
        &m,
        "gatehouse_connection_duration_seconds_bucket",
        &[("listener", "front")],
    )
    .iter()
    .filter_map(|s| s.labels["le"].parse::<f64>().ok())
    .fold(0.0, f64::max);
    assert!(
        hours >= 3600.0,
        "connection duration buckets end at {hours}s, not hours"
    );
    assert_eq!(
        sum(&m, "gatehouse_connections_accepted_total", &[("listener", "front")]),
        t.connections as f64,
        "accepted on front"
    );
    let refused = sum(
        &m,
        "gatehouse_connect_errors_total",
        &[("backend", "pool"), ("server", "b"), ("reason", "refused")],
    );
    assert!(refused >= 1.0, "connects refused by pool/b counted {refused} times");
    let check_failures = sum(&m, "gatehouse_health_check_failures_total", &[("server", "d")]);
    assert!(check_failures >= 1.0, "failed checks of checked/d: {check_failures}");
    assert_eq!(sum(&m, "gatehouse_server_up", &[("server", "c")]), 1.0, "checked/c up");
    assert_eq!(sum(&m, "gatehouse_server_up", &[("server", "d")]), 0.0, "checked/d up");
    assert_eq!(
        sum(&m, "gatehouse_server_state", &[("server", "d"), ("state", "down")]),
        1.0,
        "checked/d state down"
    );
    assert_eq!(
        sum(&m, "gatehouse_config_reloads_total", &[("result", "success")]),
        1.0,
        "the initial load counts as one successful load"
    );
    assert_eq!(
        sum(&m, "gatehouse_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0,
        "build_info"
    );
    // Every connection was accepted on one of the event loops, and nothing was dropped
    // from a log that keeps up.
    assert_eq!(
        sum(&m, "gatehouse_event_loop_accepted_total", &[]),
        sum(&m, "gatehouse_connections_accepted_total", &[]),
        "accepted over the event loops, and over the listeners"
    );
    assert!(
        !find(&m, "gatehouse_event_loop_lag_seconds", &[("loop", "main")]).is_empty(),
        "the main runtime's lag:\n{body}"
    );
    assert_eq!(sum(&m, "gatehouse_log_lines_dropped_total", &[]), 0.0);
    // Labels stay bounded: no client address anywhere.
    for client in &t.clients {
        assert!(
            !body.contains(&client.to_string()),
            "/metrics names the client {client}:\n{body}"
        );
    }
}

#[test]
fn byte_counters_equal_the_bytes_forwarded() {
    let t = gatehouse_with_traffic();
    let m = parse_exposition(&metrics_text(t.g.admin()));
    let front = [("listener", "front")];
    let up = sum(
        &m,
        "gatehouse_bytes_total",
        &[front[0], ("direction", "client_to_server")],
    );
    let down = sum(
        &m,
        "gatehouse_bytes_total",
        &[front[0], ("direction", "server_to_client")],
    );
    assert_eq!(up as u64, t.sent, "client_to_server counted {up}, sent {}", t.sent);
    assert_eq!(
        down as u64, t.sent,
        "server_to_client counted {down}, echoed {}",
        t.sent
    );
    // All of it went to pool/a: pool/b refuses every connect.
    let to_a = sum(
        &m,
        "gatehouse_bytes_total",
        &[front[0], ("server", "a"), ("direction", "client_to_server")],
    );
    assert_eq!(to_a as u64, t.sent, "client_to_server to pool/a");
}

// ---------------------------------------------------------------- VictoriaMetrics

/// A real VictoriaMetrics scraping one target every second; killed when dropped.
struct VictoriaMetrics {
    addr: SocketAddr,
    log: PathBuf,
    process: Reaper,
    _dir: tempfile::TempDir,
}

impl VictoriaMetrics {
    fn start(bin: &Path, target: SocketAddr) -> VictoriaMetrics {
        let dir = tempfile::tempdir().unwrap();
        let scrape = dir.path().join("scrape.yml");
        std::fs::write(
            &scrape,
            format!(
                "scrape_configs:\n  - job_name: gatehouse\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = free_port(fresh_ip());
        let log = dir.path().join("victoria-metrics.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
            .arg(format!("-httpListenAddr={addr}"))
            .arg(format!("-promscrape.config={}", scrape.display()))
            // Fresh samples visible to queries at once, and no cached answers.
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .arg("-loggerLevel=WARN")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("run victoria-metrics");
        let mut vm = VictoriaMetrics {
            addr,
            log,
            process: Reaper { child, group: false },
            _dir: dir,
        };
        let healthy = wait_until(Duration::from_secs(30), || {
            if let Ok(Some(status)) = vm.process.child.try_wait() {
                panic!("victoria-metrics exited ({status}):\n{}", vm.log());
            }
            try_get(addr, "/health").is_some_and(|(code, body)| code == 200 && body.trim() == "OK")
        });
        assert!(
            healthy,
            "victoria-metrics not healthy on {addr} within 30 s:\n{}",
            vm.log()
        );
        vm
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An instant query; (labels, value) per series, or None if the query failed.
    fn query(&mut self, q: &str) -> Option<Vec<(Labels, f64)>> {
        let (code, body) = try_get(self.addr, &format!("/api/v1/query?query={}", url_encode(q)))?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        result
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }

    /// Waits (bounded) until `q` answers with what `want` accepts; returns the last answer.
    fn wait_for(&mut self, q: &str, want: impl Fn(&[(Labels, f64)]) -> bool) -> Vec<(Labels, f64)> {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(30), || {
            last = self.query(q);
            last.as_deref().is_some_and(&want)
        });
        let last = last.unwrap_or_default();
        assert!(
            ok,
            "VictoriaMetrics answered {q} with {last:?} for 30 s\ntargets: {:?}\nlog:\n{}",
            try_get(self.addr, "/api/v1/targets"),
            self.log()
        );
        last
    }
}

fn value_of(series: &[(Labels, f64)], label: &str, value: &str) -> Option<f64> {
    series
        .iter()
        .find(|(l, _)| l.get(label).map(String::as_str) == Some(value))
        .map(|(_, v)| *v)
}

#[test]
fn victoria_metrics_scrapes_server_state_and_byte_counters() {
    let Some(bin) = tool("victoria-metrics") else {
        skip!("victoria-metrics is not installed (Debian package `victoria-metrics`); no scrape was tested");
    };
    let a = Backend::echo("127.0.0.1:0".parse().unwrap());
    let b = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(
        &[server("a", a.addr), server("b", b.addr)],
        r#"health = { check = "tcp", interval = "200ms" }"#,
        "",
    ));
    let mut vm = VictoriaMetrics::start(&bin, g.admin());

    let sizes = [10_000, 1, 77_777, 4096, 123, 250_000];
    let sent: usize = sizes.iter().sum();
    for (i, len) in sizes.iter().enumerate() {
        echo_round_trip(g.addr("front"), *len, i as u8);
    }
    let before = vm.wait_for("gatehouse_server_up", |s| {
        value_of(s, "server", "a") == Some(1.0) && value_of(s, "server", "b") == Some(1.0)
    });
    assert_eq!(before.len(), 2, "series of gatehouse_server_up: {before:?}");

    b.kill();
    assert!(
        wait_until(Duration::from_secs(10), || server_state(g.admin(), "pool", "b")
            == "down"),
        "pool/b not down in the status API 10 s after its kill"
    );
    let after = vm.wait_for("gatehouse_server_up", |s| {
        value_of(s, "server", "a") == Some(1.0) && value_of(s, "server", "b") == Some(0.0)
    });
    assert!(
        after
            .iter()
            .all(|(l, _)| l.get("job").map(String::as_str) == Some("gatehouse")),
        "series not from job gatehouse: {after:?}"
    );
    vm.wait_for(
        r#"gatehouse_server_state{backend="pool",server="b",state="down"}"#,
        |s| s.len() == 1 && s[0].1 == 1.0,
    );
    for direction in ["client_to_server", "server_to_client"] {
        let q = format!(r#"sum(gatehouse_bytes_total{{listener="front",direction="{direction}"}})"#);
        let got = vm.wait_for(&q, |s| s.len() == 1 && s[0].1 as usize == sent);
        assert_eq!(got[0].1 as usize, sent, "{q} in VictoriaMetrics vs {sent} bytes sent");
    }
    let accepted = vm.wait_for(r#"gatehouse_connections_accepted_total{listener="front"}"#, |s| {
        s.len() == 1 && s[0].1 as usize == sizes.len()
    });
    assert_eq!(accepted[0].1 as usize, sizes.len(), "connections accepted");
}

// ---------------------------------------------------------------- status page

/// The value of attribute `name` in the start tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// (backend, server, state) of every server row of the rendered page.
fn server_rows(dom: &str) -> Vec<(String, String, String)> {
    dom.match_indices("<tr ")
        .filter_map(|(i, _)| {
            let tag = &dom[i..i + dom[i..].find('>')?];
            Some((
                attr(tag, "data-backend")?.to_string(),
                attr(tag, "data-server")?.to_string(),
                attr(tag, "data-state")?.to_string(),
            ))
        })
        .collect()
}

fn loaded(dom: &str) -> bool {
    dom.find("<body")
        .and_then(|i| dom[i..].find('>').map(|j| &dom[i..i + j]))
        .is_some_and(|tag| attr(tag, "data-loaded") == Some("true"))
}

/// Where the status page screenshot goes: $GATEHOUSE_SCREENSHOT, else target/status-page.png.
fn screenshot_path() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEHOUSE_SCREENSHOT") {
        return PathBuf::from(p);
    }
    // BIN is <target>/<profile>/gatehouse.
    Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("status-page.png"), |t| t.join("status-page.png"))
}

#[test]
fn status_page_shows_every_server_and_follows_one_going_down() {
    let Some(bin) = tool("chromium") else {
        skip!("chromium is not installed (Debian package `chromium`); the status page was not rendered");
    };
    let arkveld = Backend::echo("127.0.0.1:0".parse().unwrap());
    let reydau = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "kube-api"
bind = ["127.0.0.1:0"]
backend = "control-plane"

[backend.control-plane]
balance = "least-conn"
servers = [{}, {}]
health = {{ check = "tcp", interval = "200ms" }}
"#,
        server("arkveld", arkveld.addr),
        server("reydau", reydau.addr),
    ));
    for (i, len) in [2_000, 150_000, 40_000, 900].iter().enumerate() {
        echo_round_trip(g.addr("kube-api"), *len, i as u8);
    }
    let admin = g.admin();
    let url = format!("http://{admin}/");
    let profiles = tempfile::tempdir().unwrap();
    let dump = |n: usize| {
        chromium(
            &bin,
            &profiles.path().join(format!("p{n}")),
            &["--dump-dom".into()],
            &url,
        )
    };

    let dom = dump(1);
    assert!(loaded(&dom), "the page never marked itself loaded:\n{dom}");
    let rows = server_rows(&dom);
    let want: Vec<(String, String, String)> = ["arkveld", "reydau"]
        .iter()
        .map(|s| ("control-plane".into(), s.to_string(), "up".into()))
        .collect();
    assert_eq!(rows, want, "server rows of the status page");

    reydau.kill();
    assert!(
        wait_until(Duration::from_secs(10), || server_state(
            admin,
            "control-plane",
            "reydau"
        ) == "down"),
        "control-plane/reydau not down in the status API 10 s after its kill"
    );
    let dom = dump(2);
    assert!(loaded(&dom), "the page never marked itself loaded:\n{dom}");
    let states: BTreeMap<String, String> = server_rows(&dom).into_iter().map(|(_, s, st)| (s, st)).collect();
    assert_eq!(
        states.get("reydau").map(String::as_str),
        Some("down"),
        "rows: {states:?}"
    );
    assert_eq!(
        states.get("arkveld").map(String::as_str),
        Some("up"),
        "rows: {states:?}"
    );

    // For a person to look at (the README's picture comes from here).
    let shot = screenshot_path();
    let png = screenshot(&bin, &profiles.path().join("p3"), &url, &shot);
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "no screenshot at {} ({} bytes)",
        shot.display(),
        png.len()
    );
    eprintln!("status page screenshot: {} ({} bytes)", shot.display(), png.len());
}

// ---------------------------------------------------------------- logs

fn json_config(servers: &[String]) -> String {
    format!(
        "[log]\nformat = \"json\"\n\n{}",
        config(servers, "health = { check = \"none\" }", "")
    )
}

/// The close line of the connection from `client`, once gatehouse wrote it.
fn close_line(g: &Gatehouse, client: SocketAddr) -> String {
    let needle = format!("{client} front/pool/");
    assert!(
        g.wait_log(&needle, Duration::from_secs(10)),
        "no close line for {client}:\n{}",
        g.log()
    );
    g.log().lines().find(|l| l.contains(&needle)).unwrap().to_string()
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&json_config(&[server("a", echo.addr), server("gone", refused_addr())]));
    let client = echo_round_trip(g.addr("front"), 5000, 1);
    close_line(&g, client);
    let (_, log) = g.stop(Duration::from_secs(10));
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nlog:\n{log}"));
        assert!(
            v.is_object() && v["message"].is_string() && v["level"].is_string(),
            "not a log object: {line}"
        );
        lines += 1;
    }
    assert!(lines >= 5, "only {lines} JSON lines:\n{log}");
}

#[test]
fn json_close_line_carries_every_field_with_times_in_rounded_milliseconds() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let json = Gatehouse::start(&json_config(&[server("a", echo.addr)]));
    let (sent, received) = (4321, 4321);
    let client = echo_round_trip(json.addr("front"), sent, 3);
    let line = close_line(&json, client);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["target"], "gatehouse::connection", "{line}");
    let expect = [
        ("client", client.to_string()),
        ("listener", "front".into()),
        ("backend", "pool".into()),
        ("server", "a".into()),
        ("endpoint", echo.addr.to_string()),
        ("bytes_in", sent.to_string()),
        ("bytes_out", received.to_string()),
        ("end", "client closed".into()),
        ("retries", "0".into()),
    ];
    for (key, want) in expect {
        let j = &v[key];
        let got = j.as_str().map_or_else(|| j.to_string(), str::to_string);
        assert_eq!(got, want, "JSON field {key} in {line}");
    }
    assert!(v["duration_ms"].is_u64(), "duration_ms not whole milliseconds: {line}");
    let connect_ms = v["connect_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("connect_ms not a number: {line}"));
    assert_eq!(
        (connect_ms * 100.0).round() / 100.0,
        connect_ms,
        "connect_ms {connect_ms} not rounded to a hundredth of a millisecond: {line}"
    );
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(&format!("in={sent} out={received} client closed"))),
        "{line}"
    );
}

#[test]
fn text_close_line_is_the_short_tcplog_line() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let text = Gatehouse::start(&config(&[server("a", echo.addr)], "health = { check = \"none\" }", ""));
    let (sent, received) = (4321, 4321);
    let client = echo_round_trip(text.addr("front"), sent, 3);
    let line = close_line(&text, client);
    // "<time>  INFO 127.0.0.1:51722 front/pool/a 0ms 0s in=4321 out=4321 client closed"
    let at = line.find(&format!("{client} front/pool/a ")).unwrap();
    let words: Vec<&str> = line[at..].split(' ').collect();
    assert_eq!(words.len(), 8, "the close line has more than its summary: {line}");
    let whole = |w: &str, unit: &str| w.strip_suffix(unit).is_some_and(|n| n.parse::<u64>().is_ok());
    assert!(whole(words[2], "ms"), "connect time not whole ms: {line}");
    assert!(whole(words[3], "s"), "duration not whole seconds: {line}");
    assert_eq!(
        words[4..].join(" "),
        format!("in={sent} out={received} client closed"),
        "{line}"
    );
    assert!(
        line[..at].trim_end().ends_with("INFO"),
        "no level before the summary: {line}"
    );
    for field in ["client=", "listener=", "connect_ms=", "duration_ms=", "end="] {
        assert!(!line.contains(field), "text close line repeats {field}: {line}");
    }
}

// ---------------------------------------------------------------- admin HTTP

#[test]
fn healthz_and_readyz_answer_200_once_started() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(&[server("a", echo.addr)], "health = { check = \"none\" }", ""));
    for path in ["/healthz", "/readyz"] {
        let (code, body) = http(g.admin(), "GET", path, &[]);
        assert_eq!(code, 200, "GET {path}: {body}");
    }
}

#[test]
fn readyz_answers_503_while_draining() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(
        &[server("a", echo.addr)],
        "health = { check = \"none\" }",
        "drain_timeout = \"5s\"",
    ));
    // A connection held open keeps gatehouse draining after SIGTERM.
    let mut held = connect(g.addr("front"));
    held.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    held.read_exact(&mut b).unwrap();
    g.signal(libc::SIGTERM);
    g.wait_notify(|m| m.contains("STOPPING=1"), Duration::from_secs(5))
        .expect("STOPPING=1");
    let (code, body) = http(g.admin(), "GET", "/readyz", &[]);
    assert_eq!(code, 503, "GET /readyz while draining: {body}");
    assert_eq!(body.trim(), "draining", "the 503 says why");
    // One 503 answered, counted by its reason; the gauge follows it.
    let unready = metric(g.admin(), "gatehouse_readyz_unready_total", &[("reason", "draining")]);
    assert_eq!(unready, 1.0, "503s for draining counted");
    assert_eq!(
        metric(g.admin(), "gatehouse_ready", &[]),
        0.0,
        "gatehouse_ready while draining"
    );
    let (code, _) = http(g.admin(), "GET", "/healthz", &[]);
    assert_eq!(code, 200, "the process is still alive while draining");
    assert!(
        g.wait_log("not ready: /readyz answers 503: draining", Duration::from_secs(5)),
        "the change is logged:\n{}",
        g.log()
    );
    drop(held);
}

#[test]
fn admin_answers_404_for_unknown_paths_and_405_for_wrong_methods() {
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(&[server("a", echo.addr)], "health = { check = \"none\" }", ""));
    for path in ["/nope", "/metrics/extra", "/api/v2/status"] {
        let (code, body) = http(g.admin(), "GET", path, &[]);
        assert_eq!(code, 404, "GET {path}: {body}");
    }
    for (method, path) in [
        ("POST", "/metrics"),
        ("POST", "/"),
        ("DELETE", "/healthz"),
        ("PUT", "/api/v1/status"),
        ("GET", "/api/v1/reload"),
    ] {
        let (code, body) = http(g.admin(), method, path, &[]);
        assert_eq!(code, 405, "{method} {path}: {body}");
    }
}
