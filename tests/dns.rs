//! Servers named by host names, resolved through a DNS server the test runs itself
//! (UDP and TCP on one loopback port, answers from a map the test changes) and through
//! a hosts file in the test's temp dir: resolution at start, several addresses, records
//! that change, names that stop resolving or never resolve, and hosts file edits.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// TTL of every answer: short, so that gatehouse re-resolves about every second.
const TTL: u32 = 1;

type Records = Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>;

/// A tiny authoritative DNS server on 127.0.0.1 (UDP and TCP on the same port).
/// Known names: A queries get their addresses, AAAA an empty NOERROR; unknown names
/// get NXDOMAIN.
struct Dns {
    addr: SocketAddr,
    records: Records,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Dns {
    fn start() -> Dns {
        // UDP takes a free port; TCP then binds the same one (retried if it is taken).
        for _ in 0..50 {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP on 127.0.0.1");
            let addr = udp.local_addr().unwrap();
            let Ok(tcp) = TcpListener::bind(addr) else { continue };
            udp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let records: Records = Arc::default();
            let queries = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let udp_thread = {
                let (records, queries, stop) = (records.clone(), queries.clone(), stop.clone());
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while !stop.load(Ordering::Acquire) {
                        let Ok((n, from)) = udp.recv_from(&mut buf) else {
                            continue;
                        };
                        queries.fetch_add(1, Ordering::AcqRel);
                        if let Some(reply) = answer(&buf[..n], &records) {
                            let _ = udp.send_to(&reply, from);
                        }
                    }
                })
            };
            let tcp_thread = {
                let (records, queries, stop) = (records.clone(), queries.clone(), stop.clone());
                thread::spawn(move || {
                    for conn in tcp.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let (records, queries) = (records.clone(), queries.clone());
                        thread::spawn(move || serve_tcp(conn, &records, &queries));
                    }
                })
            };
            return Dns {
                addr,
                records,
                queries,
                stop,
                threads: vec![udp_thread, tcp_thread],
            };
        }
        panic!("no loopback port free for both UDP and TCP after 50 tries");
    }

    fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.records.lock().unwrap().insert(name.to_string(), ips.to_vec());
    }

    fn remove(&self, name: &str) {
        self.records.lock().unwrap().remove(name);
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::Acquire)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking TCP accept so that it sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// DNS over TCP: two-byte length, message; until the client closes (bounded by timeouts).
fn serve_tcp(mut conn: TcpStream, records: &Records, queries: &AtomicUsize) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok();
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(&mut query).is_err() {
            return;
        }
        queries.fetch_add(1, Ordering::AcqRel);
        let Some(reply) = answer(&query, records) else { return };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        if conn.write_all(&reply_len.to_be_bytes()).is_err() || conn.write_all(&reply).is_err() {
            return;
        }
    }
}

/// The answer to one query message, encoded; `None` when the query does not parse.
fn answer(query: &[u8], records: &Mutex<HashMap<String, Vec<Ipv4Addr>>>) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_queries(request.queries.clone());
    match request.queries.first() {
        None => response.metadata.response_code = ResponseCode::FormErr,
        Some(q) => {
            let name = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
            match records.lock().unwrap().get(&name) {
                None => response.metadata.response_code = ResponseCode::NXDomain,
                Some(ips) if q.query_type() == RecordType::A => {
                    for ip in ips {
                        response.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip))));
                    }
                }
                Some(_) => {}
            }
        }
    }
    response.to_vec().ok()
}

/// Named backends on fresh loopback addresses that all share one port (a DNS answer
/// carries only the IP: every address of a name takes the port of the server's address).
fn backends_on_one_port(names: &[&'static str]) -> (u16, Vec<Backend>) {
    'again: for _ in 0..20 {
        let first = Backend::named(SocketAddr::new(fresh_ip().into(), 0), names[0]);
        let port = first.addr.port();
        let mut all = vec![first];
        for name in &names[1..] {
            let addr = SocketAddr::new(fresh_ip().into(), port);
            if TcpListener::bind(addr).is_err() {
                continue 'again;
            }
            all.push(Backend::named(addr, name));
        }
        return (port, all);
    }
    panic!("no port free on several fresh loopback addresses after 20 tries");
}

fn ip(b: &Backend) -> Ipv4Addr {
    match b.addr.ip() {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("not IPv4: {other}"),
    }
}

/// A temp dir holding the hosts file gatehouse reads instead of /etc/hosts.
struct HostsFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl HostsFile {
    fn new(text: &str) -> HostsFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("hosts");
        let h = HostsFile { _dir: dir, path };
        h.write(text);
        h
    }

    /// Replaces the file whole (write aside, rename), so that it is never seen half written.
    fn write(&self, text: &str) {
        let aside = self.path.with_extension("new");
        std::fs::write(&aside, text).expect("write hosts file");
        std::fs::rename(&aside, &self.path).expect("rename hosts file");
    }
}

/// One listener "front" to backend "pool" of `servers` (name, "host:port"), health
/// checks off, resolving through `dns` and the hosts file at `hosts`.
fn dns_config(dns: &Dns, hosts: &Path, servers: &[(&str, String)]) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(name, address)| format!(r#"{{ name = "{name}", address = "{address}" }}"#))
        .collect();
    let mut text = config(&list, "health = { check = \"none\" }", "");
    text.push_str(&format!(
        r#"
[resolver]
nameservers = ["{}"]
min_refresh = "1s"
retry = "1s"
timeout = "500ms"
hosts_file = "{}"
"#,
        dns.addr,
        hosts.display()
    ));
    text
}

/// The addresses of server `pool/name` as the status API lists them, sorted.
fn endpoints(admin: SocketAddr, name: &str) -> Vec<String> {
    let v = status(admin);
    let servers = v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["name"] == "pool")
        .and_then(|b| b["servers"].as_array())
        .expect("backend pool in status");
    let s = servers
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server pool/{name} in status"));
    let mut list: Vec<String> = s["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect();
    list.sort();
    list
}

/// Connects through gatehouse and reads the name the backend sends.
fn name_via(g: &Gatehouse) -> String {
    let mut c = connect(g.addr("front"));
    read_line(&mut c).unwrap_or_else(|e| format!("<read failed: {e}>"))
}

const SETTLE: Duration = Duration::from_secs(10);

#[test]
fn a_name_resolving_to_one_address_is_served() {
    let dns = Dns::start();
    let hosts = HostsFile::new("");
    let (port, b) = backends_on_one_port(&["alpha"]);
    dns.set("one.gatehouse.test", &[ip(&b[0])]);
    let g = Gatehouse::start(&dns_config(
        &dns,
        &hosts.path,
        &[("one", format!("one.gatehouse.test:{port}"))],
    ));
    assert_eq!(
        endpoints(g.admin(), "one"),
        vec![b[0].addr.to_string()],
        "resolved at start ({} DNS queries)",
        dns.queries()
    );
    assert_eq!(server_state(g.admin(), "pool", "one"), "up");
    let got = name_via(&g);
    assert_eq!(got, "alpha", "a client through gatehouse reached {got:?}");
}

#[test]
fn a_name_with_two_addresses_gives_two_endpoints_that_both_take_traffic() {
    let dns = Dns::start();
    let hosts = HostsFile::new("");
    let (port, b) = backends_on_one_port(&["alpha", "beta"]);
    dns.set("two.gatehouse.test", &[ip(&b[0]), ip(&b[1])]);
    let g = Gatehouse::start(&dns_config(
        &dns,
        &hosts.path,
        &[("two", format!("two.gatehouse.test:{port}"))],
    ));
    let mut want = vec![b[0].addr.to_string(), b[1].addr.to_string()];
    want.sort();
    assert_eq!(endpoints(g.admin(), "two"), want, "both A records are endpoints");
    // Held open, so that each new connection sees the others as active.
    let mut held = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        let mut c = connect(g.addr("front"));
        let name = read_line(&mut c).unwrap_or_else(|e| format!("<read failed: {e}>"));
        *seen.entry(name).or_default() += 1;
        held.push(c);
    }
    assert!(
        seen.get("alpha").copied().unwrap_or(0) > 0 && seen.get("beta").copied().unwrap_or(0) > 0,
        "6 connections reached {seen:?}"
    );
}

#[test]
fn a_changed_record_moves_new_connections_and_keeps_established_ones() {
    let dns = Dns::start();
    let hosts = HostsFile::new("");
    let (port, b) = backends_on_one_port(&["old", "new"]);
    let name = "moving.gatehouse.test";
    dns.set(name, &[ip(&b[0])]);
    let g = Gatehouse::start(&dns_config(&dns, &hosts.path, &[("moving", format!("{name}:{port}"))]));
    let mut established = connect(g.addr("front"));
    assert_eq!(read_line(&mut established).unwrap(), "old");

    dns.set(name, &[ip(&b[1])]);
    let moved = wait_until(SETTLE, || endpoints(g.admin(), "moving") == vec![b[1].addr.to_string()]);
    assert!(
        moved,
        "after the record changed, the endpoints are {:?} ({} DNS queries)",
        endpoints(g.admin(), "moving"),
        dns.queries()
    );
    let got: Vec<String> = (0..3).map(|_| name_via(&g)).collect();
    assert!(
        got.iter().all(|n| n == "new"),
        "new connections after the change reached {got:?}"
    );

    established.write_all(b"still here\n").unwrap();
    let echoed = read_line(&mut established);
    assert_eq!(
        echoed.as_ref().map(String::as_str).ok(),
        Some("still here"),
        "the connection to the old address echoed {echoed:?}"
    );
}

#[test]
fn a_name_that_stops_resolving_keeps_its_last_known_address() {
    let dns = Dns::start();
    let hosts = HostsFile::new("");
    let (port, b) = backends_on_one_port(&["alpha"]);
    let name = "fading.gatehouse.test";
    dns.set(name, &[ip(&b[0])]);
    let g = Gatehouse::start(&dns_config(&dns, &hosts.path, &[("fading", format!("{name}:{port}"))]));
    assert_eq!(name_via(&g), "alpha");

    dns.remove(name);
    let needle = "keeping its 1 last known address(es)";
    let rounds = wait_until(SETTLE, || g.log().matches(needle).count() >= 3);
    let log = g.log();
    assert!(
        rounds,
        "{} failed rounds logged {needle:?} within {SETTLE:?}; log:\n{log}",
        log.matches(needle).count()
    );
    assert_eq!(endpoints(g.admin(), "fading"), vec![b[0].addr.to_string()]);
    assert_eq!(server_state(g.admin(), "pool", "fading"), "up");
    let got: Vec<String> = (0..3).map(|_| name_via(&g)).collect();
    assert!(
        got.iter().all(|n| n == "alpha"),
        "after {} failed rounds, connections reached {got:?}",
        log.matches(needle).count()
    );
}

#[test]
fn a_name_that_never_resolves_holds_up_neither_start_nor_other_servers() {
    let dns = Dns::start();
    let hosts = HostsFile::new("");
    let (port, b) = backends_on_one_port(&["real", "ghost"]);
    dns.set("real.gatehouse.test", &[ip(&b[0])]);
    let g = Gatehouse::start(&dns_config(
        &dns,
        &hosts.path,
        &[
            ("real", format!("real.gatehouse.test:{port}")),
            ("ghost", format!("ghost.gatehouse.test:{port}")),
        ],
    ));
    assert_eq!(server_state(g.admin(), "pool", "ghost"), "unresolved");
    assert_eq!(server_state(g.admin(), "pool", "real"), "up");
    let before: Vec<String> = (0..6).map(|_| name_via(&g)).collect();
    assert!(
        before.iter().all(|n| n == "real"),
        "with ghost unresolved, connections reached {before:?}"
    );

    dns.set("ghost.gatehouse.test", &[ip(&b[1])]);
    let up = wait_until(SETTLE, || server_state(g.admin(), "pool", "ghost") == "up");
    assert!(
        up,
        "after its record appeared, ghost is {:?} ({} DNS queries)",
        server_state(g.admin(), "pool", "ghost"),
        dns.queries()
    );
    let after: Vec<String> = (0..6).map(|_| name_via(&g)).collect();
    assert!(
        after.iter().any(|n| n == "ghost"),
        "once ghost resolved, connections reached {after:?}"
    );
}

#[test]
fn the_hosts_file_resolves_names_and_its_edits_are_picked_up() {
    let dns = Dns::start();
    let (port, b) = backends_on_one_port(&["first", "second"]);
    let name = "local.gatehouse.test";
    let hosts = HostsFile::new(&format!("127.0.0.1 localhost\n{} {name}\n", ip(&b[0])));
    let g = Gatehouse::start(&dns_config(&dns, &hosts.path, &[("local", format!("{name}:{port}"))]));
    assert_eq!(
        endpoints(g.admin(), "local"),
        vec![b[0].addr.to_string()],
        "resolved from the hosts file (the DNS server knows no names)"
    );
    assert_eq!(name_via(&g), "first");

    hosts.write(&format!("127.0.0.1 localhost\n{} {name}\n", ip(&b[1])));
    let moved = wait_until(SETTLE, || endpoints(g.admin(), "local") == vec![b[1].addr.to_string()]);
    assert!(
        moved,
        "{SETTLE:?} after the hosts file changed, the endpoints are {:?}; log:\n{}",
        endpoints(g.admin(), "local"),
        g.log()
    );
    let got = name_via(&g);
    assert_eq!(got, "second", "after the hosts file edit, a connection reached {got:?}");
}
