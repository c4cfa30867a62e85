//! Side by side with a real HAProxy: a corpus file runs in HAProxy as written (its
//! addresses moved to loopback), its import runs in gatehouse, both in front of the
//! same loopback servers, and both must behave the same: which servers receive
//! connections under each balance mode, a server that fails its check taken out by
//! both, backups used only when every primary is down, and which backend each server
//! name of an openssl ClientHello reaches through `use_backend … req.ssl_sni` rules.
//!
//! Needs `haproxy` (Debian's package; `.ci/run` installs it), and `openssl` for the SNI
//! case; says SKIPPED without them.
//! HAProxy cannot bind port 0, so each bind gets a fresh 127.x address and a port read
//! back from a socket bound there first (`common::haproxy`). Readiness and server state
//! are polled with deadlines: HAProxy's by its listening sockets and its "is DOWN"
//! warnings on stderr, gatehouse's by sd_notify and the admin API.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::haproxy::{available as haproxy_available, free_addr, Haproxy};
use common::*;

fn corpus(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The loopback servers of a corpus file: one named backend per `server` line.
struct Servers {
    /// (section, server) → the backend standing in for it.
    by_name: BTreeMap<(String, String), Backend>,
}

impl Servers {
    fn for_cfg(cfg: &str) -> Servers {
        let mut by_name = BTreeMap::new();
        let mut section = String::new();
        for line in cfg.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["frontend" | "backend" | "listen", name, ..] => section = name.to_string(),
                ["server", name, ..] => {
                    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
                    let b = Backend::named(SocketAddr::new(fresh_ip().into(), 0), name);
                    by_name.insert((section.clone(), name.to_string()), b);
                }
                _ => {}
            }
        }
        Servers { by_name }
    }

    fn addr(&self, section: &str, server: &str) -> SocketAddr {
        self.by_name[&(section.to_string(), server.to_string())].addr
    }

    fn kill(&mut self, section: &str, server: &str) {
        self.by_name
            .remove(&(section.to_string(), server.to_string()))
            .unwrap_or_else(|| panic!("no server {section}/{server}"))
            .kill();
    }
}

/// `cfg` with every server on its loopback stand-in, every bind on a fresh address
/// (returned by section), and `replace` applied.
fn localize(cfg: &str, servers: &Servers, replace: &[(&str, &str)]) -> (String, HashMap<String, SocketAddr>) {
    let mut out = String::new();
    let mut binds = HashMap::new();
    let mut section = String::new();
    for line in cfg.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let mut line = line.to_string();
        match w.as_slice() {
            ["frontend" | "backend" | "listen", name, ..] => section = name.to_string(),
            ["bind", addr, ..] => {
                let new = free_addr();
                binds.insert(section.clone(), new);
                line = line.replacen(addr, &new.to_string(), 1);
            }
            ["server", name, addr, ..] => {
                let b = &servers.by_name[&(section.clone(), name.to_string())];
                line = line.replacen(addr, &b.addr.to_string(), 1);
            }
            _ => {}
        }
        for (from, to) in replace {
            line = line.replace(from, to);
        }
        out.push_str(&line);
        out.push('\n');
    }
    (out, binds)
}

/// Imports `cfg` with the real binary; adds an admin listener to watch server states.
fn import(cfg: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(BIN).arg("import").arg(&path).output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut toml = String::from_utf8(out.stdout).unwrap();
    toml.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    toml
}

/// The two proxies under test, each with its listener address per section.
struct Pair {
    haproxy: Haproxy,
    haproxy_binds: HashMap<String, SocketAddr>,
    gatehouse: Gatehouse,
}

impl Pair {
    fn start(cfg: &str, servers: &Servers, replace: &[(&str, &str)]) -> Pair {
        let (h_cfg, haproxy_binds) = localize(cfg, servers, replace);
        let (g_cfg, _) = localize(cfg, servers, replace);
        let gatehouse = Gatehouse::start(&import(&g_cfg));
        let binds: Vec<SocketAddr> = haproxy_binds.values().copied().collect();
        let haproxy = Haproxy::start(&h_cfg, &binds);
        Pair {
            haproxy,
            haproxy_binds,
            gatehouse,
        }
    }

    /// (proxy name, address of `section`'s listener) for both.
    fn both(&self, section: &str) -> [(&'static str, SocketAddr); 2] {
        [
            ("haproxy", self.haproxy_binds[section]),
            ("gatehouse", self.gatehouse.addr(section)),
        ]
    }

    /// Waits until both say `section/server` is down; prints how long each took.
    fn wait_down(&self, section: &str, server: &str) {
        let start = std::time::Instant::now();
        haproxy_wait_down(&self.haproxy, section, server);
        let haproxy = start.elapsed();
        let admin = self.gatehouse.admin();
        let down = wait_until(Duration::from_secs(10), || {
            server_state(admin, section, server) == "down"
        });
        let gatehouse = start.elapsed();
        assert!(down, "gatehouse did not mark {section}/{server} down within 10 s");
        eprintln!("{section}/{server} marked down after: haproxy {haproxy:?}, gatehouse by {gatehouse:?}");
    }
}

/// Waits (bounded) for HAProxy to say that `section/server` is down.
fn haproxy_wait_down(h: &Haproxy, section: &str, server: &str) {
    let needle = format!("Server {section}/{server} is DOWN");
    let down = wait_until(Duration::from_secs(10), || h.log().contains(&needle));
    assert!(
        down,
        "haproxy did not mark {section}/{server} down within 10 s:\n{}",
        h.log()
    );
}

/// Connects from `from` (any loopback address) and returns the server's name.
fn served_by(addr: SocketAddr, from: Option<std::net::Ipv4Addr>) -> String {
    let s = match from {
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(ip.into(), 0).into()).unwrap();
            sock.connect_timeout(&addr.into(), Duration::from_secs(5)).unwrap();
            let s: TcpStream = sock.into();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        }
        None => connect(addr),
    };
    let mut s = s;
    read_line(&mut s).unwrap_or_else(|e| panic!("no server name through {addr}: {e}"))
}

/// An HTTP health endpoint: answers every request with `status`.
fn http_check_endpoint(addr: SocketAddr, status: u16) -> Backend {
    Backend::serve(addr, move |mut s| {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(
            s,
            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    })
}

/// Names of the servers `n` one-after-another connections reach, counted.
fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(served_by(addr, None)).or_insert(0) += 1;
    }
    counts
}

/// Names of the servers `n` connections reach when each is held open while the next is
/// made (what least-connections balancing decides on), counted.
fn spread_held(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut held = Vec::new();
    let mut got = BTreeMap::new();
    for _ in 0..n {
        let mut s = connect(addr);
        *got.entry(read_line(&mut s).unwrap()).or_insert(0) += 1;
        held.push(s);
    }
    got
}

/// Kills the servers `names` of `section`, then waits until both proxies mark each down.
fn kill_and_wait_down(servers: &mut Servers, pair: &Pair, section: &str, names: &[&str]) {
    for name in names {
        servers.kill(section, name);
    }
    for name in names {
        pair.wait_down(section, name);
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn gallade_round_robin_and_a_failed_check_behave_as_in_haproxy() {
    if !haproxy_available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    let cfg = corpus("gallade.cfg");
    let mut servers = Servers::for_cfg(&cfg);
    // Checks every 300 ms instead of 2 s, so that a server goes down in about a second.
    let pair = Pair::start(&cfg, &servers, &[("inter 2s", "inter 300ms")]);
    for (proxy, addr) in pair.both("k8s-api") {
        let got = spread(addr, 30);
        let want = counts(&[("arkveld", 10), ("reydau", 10), ("zohshia", 10)]);
        assert_eq!(got, want, "{proxy}: round robin over 30 connections");
    }
    for (proxy, addr) in pair.both("ingress-https") {
        assert_eq!(
            spread(addr, 3),
            counts(&[("cilium-gateway", 3)]),
            "{proxy}: ingress-https"
        );
    }
    kill_and_wait_down(&mut servers, &pair, "k8s-api", &["reydau"]);
    for (proxy, addr) in pair.both("k8s-api") {
        let got = spread(addr, 12);
        assert_eq!(
            got,
            counts(&[("arkveld", 6), ("zohshia", 6)]),
            "{proxy}: after reydau failed its check"
        );
    }
}

#[test]
fn balance_modes_pick_the_same_servers_as_haproxy() {
    if !haproxy_available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    let cfg = corpus("balance-modes.cfg");
    let mut servers = Servers::for_cfg(&cfg);
    // The httpchk servers are checked on port 8081 of their addresses.
    let _checks = [("ok", 200), ("sick", 500)]
        .map(|(name, status)| http_check_endpoint(SocketAddr::new(servers.addr("httpchk", name).ip(), 8081), status));
    let pair = Pair::start(&cfg, &servers, &[]);

    // roundrobin, weights 1 and 2: a third and two thirds, exactly.
    for (proxy, addr) in pair.both("rr") {
        assert_eq!(
            spread(addr, 30),
            counts(&[("a", 10), ("b", 20)]),
            "{proxy}: weighted round robin"
        );
    }

    // leastconn with connections held open: each new one goes to the least loaded.
    for (proxy, addr) in pair.both("leastconn") {
        assert_eq!(
            spread_held(addr, 6),
            counts(&[("a", 2), ("b", 2), ("c", 2)]),
            "{proxy}: least connections, 6 held"
        );
    }

    // source: every client address sticks to one server; addresses spread.
    for (proxy, addr) in pair.both("source") {
        let mut per_client = BTreeMap::new();
        for host in 1..=8u8 {
            let ip = std::net::Ipv4Addr::new(127, 0, 9, host);
            let seen: Vec<String> = (0..3).map(|_| served_by(addr, Some(ip))).collect();
            assert!(
                seen.iter().all(|s| *s == seen[0]),
                "{proxy}: {ip} moved between servers: {seen:?}"
            );
            per_client.insert(ip, seen[0].clone());
        }
        let used: std::collections::BTreeSet<&String> = per_client.values().collect();
        assert!(
            used.len() >= 2,
            "{proxy}: 8 client addresses all on one server: {per_client:?}"
        );
    }

    // random (two draws): every server takes a share.
    for (proxy, addr) in pair.both("random") {
        let got = spread(addr, 60);
        assert!(
            got.len() == 3 && got.values().all(|n| *n >= 5),
            "{proxy}: random over 60 connections: {got:?}"
        );
    }

    // backup: unused while a primary is up; takes everything when none is.
    for (proxy, addr) in pair.both("failover") {
        assert_eq!(
            spread(addr, 20),
            counts(&[("p1", 10), ("p2", 10)]),
            "{proxy}: primaries up"
        );
    }
    kill_and_wait_down(&mut servers, &pair, "failover", &["p1", "p2"]);
    for (proxy, addr) in pair.both("failover") {
        assert_eq!(spread(addr, 10), counts(&[("b1", 10)]), "{proxy}: every primary down");
    }

    // An HTTP check answered with 500 takes the server out in both.
    pair.wait_down("httpchk", "sick");
    for (proxy, addr) in pair.both("httpchk") {
        assert_eq!(
            spread(addr, 6),
            counts(&[("ok", 6)]),
            "{proxy}: sick answers its check with 500"
        );
    }

    // A server that fails its check is out of rotation in both.
    kill_and_wait_down(&mut servers, &pair, "rr", &["a"]);
    for (proxy, addr) in pair.both("rr") {
        assert_eq!(
            spread(addr, 10),
            counts(&[("b", 10)]),
            "{proxy}: after a failed its check"
        );
    }
}

#[test]
fn corpus_files_meant_for_haproxy_are_valid_haproxy_configs() {
    if !haproxy_available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    // edge-cases.cfg holds an unknown keyword on purpose, parse-error.cfg an unclosed
    // quote, and haproxy-docs.cfg names certificate files this machine lacks.
    for name in [
        "gallade.cfg",
        "balance-modes.cfg",
        "exact.cfg",
        "http-only.cfg",
        "proxy-and-sni.cfg",
        "sni-routing.cfg",
        "pfsense.cfg",
        "kubespray.cfg",
        "limits.cfg",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import").join(name);
        let out = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "haproxy -c refuses {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn weighted_leastconn_and_its_backup_behave_as_in_haproxy() {
    if !haproxy_available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    let cfg = corpus("exact.cfg");
    let mut servers = Servers::for_cfg(&cfg);
    let pair = Pair::start(&cfg, &servers, &[("inter 1s", "inter 300ms")]);
    // Six held connections over weights 2 and 1: four and two, the backup none.
    for (proxy, addr) in pair.both("postgres") {
        assert_eq!(
            spread_held(addr, 6),
            counts(&[("pg1", 4), ("pg2", 2)]),
            "{proxy}: weighted least connections, 6 held"
        );
    }
    kill_and_wait_down(&mut servers, &pair, "postgres", &["pg1", "pg2"]);
    for (proxy, addr) in pair.both("postgres") {
        assert_eq!(spread(addr, 5), counts(&[("pg3", 5)]), "{proxy}: both primaries down");
    }
}

/// openssl's own ClientHello for `name` (`None`: `-noservername`), captured on a
/// loopback listener; s_client is killed once it is read (bounded either way).
fn openssl_hello(name: Option<&str>) -> Vec<u8> {
    use gatehouse::edge::sni::{parse_client_hello, Peek};
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    match name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    listener.set_nonblocking(true).unwrap();
    let mut conn = None;
    let accepted = wait_until(Duration::from_secs(10), || match listener.accept() {
        Ok((s, _)) => {
            conn = Some(s);
            true
        }
        Err(_) => false,
    });
    assert!(accepted, "openssl s_client did not connect within 10 s");
    let mut s = conn.unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = Vec::new();
    let mut buf = [0u8; 4096];
    while parse_client_hello(&hello) == Peek::NeedMore {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => hello.extend_from_slice(&buf[..n]),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let want = name.map_or(Peek::NoSni, |n| Peek::Sni(n.to_ascii_lowercase()));
    assert_eq!(parse_client_hello(&hello), want, "openssl's ClientHello for {name:?}");
    hello
}

/// Sends `hello` through `addr` and returns the name of the server it reached.
fn routed_to(addr: SocketAddr, hello: &[u8]) -> String {
    use std::io::Write;
    let mut s = connect(addr);
    s.write_all(hello).unwrap();
    read_line(&mut s).unwrap_or_else(|e| panic!("no server name through {addr}: {e}"))
}

#[test]
fn sni_use_backend_rules_route_as_in_haproxy() {
    if !haproxy_available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    if !have("openssl") {
        skip!("openssl is not installed (apt-get install openssl)");
    }
    let cfg = corpus("sni-routing.cfg");
    let servers = Servers::for_cfg(&cfg);
    let pair = Pair::start(&cfg, &servers, &[]);
    let cases = [
        (Some("k8s.example.com"), "k1"),
        (Some("API.example.com"), "k1"),
        (Some("a.apps.example.com"), "a1"),
        (Some("other.org"), "i1"),
        (Some("apps.example.com"), "i1"),
        (None, "i1"),
    ];
    for (name, want) in cases {
        let hello = openssl_hello(name);
        for (proxy, addr) in pair.both("tls") {
            assert_eq!(routed_to(addr, &hello), want, "{proxy}: server name {name:?}");
        }
    }
    // The approximation the report names: `-m end .apps.example.com` matches any
    // depth in HAProxy, gatehouse's *.apps.example.com one label.
    let hello = openssl_hello(Some("a.b.apps.example.com"));
    let [(_, h), (_, g)] = pair.both("tls");
    assert_eq!(routed_to(h, &hello), "a1", "haproxy: two labels under the suffix");
    assert_eq!(routed_to(g, &hello), "i1", "gatehouse: two labels go to the default");
}
