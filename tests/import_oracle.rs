//! HAProxy as the oracle of the import: every corpus file HAProxy can load is started
//! in a real HAProxy, and its `show servers state` and `show stat` must agree with the
//! import on every server: address (or host name), port, weight and backup flag; a
//! server HAProxy has and the import has not must be reported left out or dropped.
//!
//! HAProxy never reaches anything but loopback here: each file runs as a wrapper built
//! from it, with every `bind` moved to a free 127.x port, every health check, agent,
//! `track`, `resolvers`, TLS file and log target taken out, `init-addr none` on every
//! server (so that no name is resolved: HAProxy shows it as its `srv_fqdn`), and the
//! sections that talk to others (peers, mailers, programs, resolvers) left out. Files
//! HAProxy refuses even so must be the ones the corpus holds on purpose.
//! Needs `haproxy` (`.ci/run` installs it); says SKIPPED without it.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use common::haproxy::{self, Haproxy};
use gatehouse::import::report::Verdict;

/// Corpus files HAProxy refuses, and why (checked: a wrapper that breaks others fails).
const REFUSED: &[(&str, &str)] = &[
    ("edge-cases", "holds an unknown keyword (frobnicate) on purpose"),
    ("parse-error", "holds an unclosed quote on purpose"),
];

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".cfg")?.to_string();
            Some((name, std::fs::read_to_string(e.path()).ok()?))
        })
        .collect();
    files.sort();
    files
}

/// Words of server lines that make HAProxy reach out (checks, agents, DNS) or need
/// files: taken out, with their argument when they have one.
const OUT_ALONE: &[&str] = &[
    "check",
    "check-ssl",
    "check-send-proxy",
    "agent-check",
    "ssl",
    "no-verifyhost",
];
const OUT_WITH_ARG: &[&str] = &[
    "track",
    "resolvers",
    "agent-port",
    "agent-inter",
    "agent-addr",
    "addr",
    "crt",
    "ca-file",
    "crl-file",
    "verify",
    "verifyhost",
    "sni",
    "check-sni",
    "init-addr",
];
/// Sections that talk to other hosts, left out whole.
const SECTIONS_OUT: &[&str] = &["peers", "mailers", "program", "resolvers", "ring"];
const GLOBAL_OUT: &[&str] = &[
    "chroot",
    "user",
    "group",
    "uid",
    "gid",
    "pidfile",
    "daemon",
    "master-worker",
    "nbproc",
    "nbthread",
    "cpu-map",
    "maxconn",
    "ulimit-n",
];

/// The corpus file as HAProxy runs it here: on loopback only, reaching nobody.
fn wrapper(cfg: &str) -> String {
    let mut out = String::new();
    let mut section = String::new();
    for line in cfg.lines() {
        let code = line.split('#').next().unwrap_or_default();
        let w: Vec<&str> = code.split_whitespace().collect();
        let Some(first) = w.first() else { continue };
        let opens = [
            "global",
            "defaults",
            "frontend",
            "backend",
            "listen",
            "peers",
            "mailers",
            "program",
            "resolvers",
            "ring",
            "userlist",
            "cache",
            "http-errors",
        ];
        if opens.contains(first) {
            section = first.to_string();
        }
        if SECTIONS_OUT.contains(&section.as_str()) {
            continue;
        }
        let global = section == "global";
        let kept: Option<String> = match *first {
            "log" | "email-alert" => None,
            k if global && (k == "stats" || GLOBAL_OUT.contains(&k)) => None,
            "bind" => Some(format!("    bind {}", haproxy::free_addr())),
            "stick-table" => Some(without_pair(&w, "peers").join(" ")),
            "server" | "default-server" => {
                let mut kept = strip(&w);
                if *first == "server" {
                    kept.push("init-addr none".into());
                }
                Some(format!("    {}", kept.join(" ")))
            }
            _ => Some(line.to_string()),
        };
        if let Some(l) = kept {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

fn without_pair(w: &[&str], key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < w.len() {
        if w[i] == key {
            i += 2;
            continue;
        }
        out.push(w[i].to_string());
        i += 1;
    }
    out
}

fn strip(w: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    // `server NAME ADDR` / `default-server`: options start after them.
    let start = if w[0] == "server" { 3 } else { 1 };
    while i < w.len() {
        if i >= start && OUT_ALONE.contains(&w[i]) {
            i += 1;
        } else if i >= start && OUT_WITH_ARG.contains(&w[i]) {
            i += 2;
        } else {
            out.push(w[i].to_string());
            i += 1;
        }
    }
    out
}

/// What one side says of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    host: String,
    /// `None`: no port (HAProxy: the client's).
    port: Option<u16>,
    weight: u32,
    backup: bool,
}

/// HAProxy's servers by (backend, server).
fn haproxy_servers(h: &Haproxy) -> BTreeMap<(String, String), Seen> {
    let backup: HashMap<(String, String), bool> = h
        .stat()
        .into_iter()
        .map(|r| {
            (
                (r["pxname"].clone(), r["svname"].clone()),
                r.get("bck").is_some_and(|b| b == "1"),
            )
        })
        .collect();
    h.servers_state()
        .into_iter()
        .map(|r| {
            let key = (r["be_name"].clone(), r["srv_name"].clone());
            let host = match r["srv_addr"].as_str() {
                "-" => r["srv_fqdn"].clone(),
                a => a.to_string(),
            };
            let seen = Seen {
                host,
                port: r["srv_port"].parse().ok().filter(|p| *p != 0),
                weight: r["srv_uweight"].parse().unwrap_or(0),
                backup: backup.get(&key).copied().unwrap_or(false),
            };
            (key, seen)
        })
        .collect()
}

/// The `server` lines of the corpus file: line number → (section, server name).
fn server_lines(cfg: &str) -> BTreeMap<usize, (String, String)> {
    let lexed = gatehouse::import::lexer::lex(cfg, &|n| test_env(n)).unwrap();
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for l in lexed {
        match l.words.as_slice() {
            [k, name, ..] if ["frontend", "backend", "listen", "defaults"].contains(&k.as_str()) => {
                section = name.clone()
            }
            [k, name, _, ..] if k == "server" => {
                out.insert(l.number, (section.clone(), name.clone()));
            }
            _ => {}
        }
    }
    out
}

fn test_env(name: &str) -> Option<String> {
    (name == "GATEHOUSE_IMPORT_TEST_ADDR").then(|| "192.168.1.99".to_string())
}

/// The imported servers, by the corpus line each names in its comment; `None` for a
/// server left out (commented).
fn imported_servers(toml_text: &str, file: &str) -> BTreeMap<usize, Option<Seen>> {
    let mut out = BTreeMap::new();
    let mut line: Option<usize> = None;
    let prefix = format!("  # {file}:");
    for l in toml_text.lines() {
        if let Some(rest) = l.strip_prefix(&prefix) {
            line = rest.split(':').next().and_then(|n| n.parse().ok());
            continue;
        }
        let Some(n) = line else { continue };
        if l.starts_with("  # {") {
            out.insert(n, None);
            line = None;
        } else if l.starts_with("  {") {
            let v: toml::Value = toml::from_str(&format!("s = {}", l.trim().trim_end_matches(','))).unwrap();
            let s = &v["s"];
            let address = s["address"].as_str().unwrap();
            let (host, port) = address.rsplit_once(':').unwrap();
            out.insert(
                n,
                Some(Seen {
                    host: host.trim_matches(['[', ']']).to_string(),
                    port: port.parse().ok(),
                    weight: s.get("weight").and_then(|w| w.as_integer()).unwrap_or(1) as u32,
                    backup: s.get("backup").and_then(|b| b.as_bool()).unwrap_or(false),
                }),
            );
            line = None;
        } else if !l.starts_with("  # (") {
            line = None;
        }
    }
    out
}

fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

#[test]
fn haproxy_reads_every_server_as_the_import_does() {
    if !haproxy::available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    let mut refused = Vec::new();
    let mut compared = 0;
    let mut problems = Vec::new();
    for (name, cfg) in corpus() {
        let wrapped = wrapper(&cfg);
        if let Err(e) = Haproxy::check(&wrapped) {
            let alert = e.lines().find(|l| l.contains("ALERT")).unwrap_or("").to_string();
            refused.push((name.clone(), alert));
            continue;
        }
        let file = format!("{name}.cfg");
        let import = gatehouse::import::import_haproxy(&cfg, &file, &test_env);
        let (toml_text, report) = match &import {
            Ok(i) => (i.toml.clone(), i.report.clone()),
            Err(e) => (String::new(), e.report().cloned().unwrap_or_default()),
        };
        let h = Haproxy::start(&wrapped, &[]);
        let theirs = haproxy_servers(&h);
        let ours = imported_servers(&toml_text, &file);
        for (line, (section, server)) in server_lines(&cfg) {
            let Some(want) = theirs.get(&(section.clone(), server.clone())) else {
                problems.push(format!("{file}:{line}: HAProxy has no server {section}/{server}"));
                continue;
            };
            let verdict = report.verdict(line);
            let reported = |v: Verdict| verdict.is_some_and(|got| got >= v);
            match ours.get(&line) {
                Some(Some(got)) => {
                    compared += 1;
                    let port_ok = match want.port {
                        Some(p) => got.port == Some(p),
                        // The client's port in HAProxy: the listener's here, reported.
                        None => reported(Verdict::Approximated),
                    };
                    let weight_ok =
                        got.weight == want.weight.min(256) && (want.weight <= 256 || reported(Verdict::Approximated));
                    if !same_host(&got.host, &want.host) || !port_ok || !weight_ok || got.backup != want.backup {
                        problems.push(format!(
                            "{file}:{line}: {section}/{server}: haproxy {want:?}, import {got:?}"
                        ));
                    }
                }
                Some(None) | None if reported(Verdict::Approximated) => {}
                _ => problems.push(format!(
                    "{file}:{line}: {section}/{server} ({want:?}) is not imported and the report does not say so"
                )),
            }
        }
    }
    let expected: Vec<&str> = REFUSED.iter().map(|(n, _)| *n).collect();
    let got: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        got, expected,
        "HAProxy refused other corpus files than those meant: {refused:?}"
    );
    assert!(
        problems.is_empty(),
        "the import reads servers differently:\n{}",
        problems.join("\n")
    );
    assert!(compared >= 30, "only {compared} servers compared");
    figure!("HAProxy as the oracle: {compared} servers of the corpus read alike; refused on purpose: {got:?}");
}

#[test]
fn the_wrapper_reaches_only_loopback() {
    let cfg = "global\n    log 192.168.1.1:514 local0\n    chroot /var/lib/haproxy\n\
               resolvers lan\n    nameserver d 192.168.4.1:53\n\
               peers p\n    peer a 192.168.1.2:10000\n\
               backend b\n    stick-table type ip size 1m peers p\n    \
               server s 192.168.4.11:6443 check resolvers lan addr 192.168.4.2 agent-check agent-port 9 track b/t\n\
               frontend f\n    bind 192.168.1.99:443 accept-proxy\n    default_backend b\n";
    let w = wrapper(cfg);
    for gone in [
        "log ",
        "chroot",
        "nameserver",
        "peer ",
        "peers",
        " check",
        "resolvers",
        " addr ",
        "agent",
        "track",
    ] {
        assert!(!w.contains(gone), "{gone:?} left in:\n{w}");
    }
    assert!(w.contains("server s 192.168.4.11:6443 init-addr none"), "{w}");
    let bind = w.lines().find(|l| l.trim_start().starts_with("bind")).unwrap();
    assert!(bind.contains(" 127."), "{bind}");
}

#[test]
fn haproxy_refuses_a_file_without_a_final_line_feed_as_the_report_says() {
    if !haproxy::available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    let (_, cfg) = corpus().into_iter().find(|(n, _)| n == "quirks").expect("quirks.cfg");
    assert!(!cfg.ends_with('\n'), "quirks.cfg must end without a line feed");
    let refused = Haproxy::check(&cfg).expect_err("haproxy took a file without a final line feed");
    assert!(refused.contains("Missing LF on last line"), "{refused}");
    Haproxy::check(&format!("{cfg}\n")).unwrap_or_else(|e| panic!("with the line feed: {e}"));
    let import = gatehouse::import::import_haproxy(&cfg, "quirks.cfg", &test_env).unwrap();
    let last = cfg.lines().count();
    assert_eq!(import.report.verdict(last), Some(Verdict::Approximated));
    assert!(import.report.render().contains("Missing LF on last line"));
}
