//! The PROXY protocol against real programs on loopback: a real NGINX behind
//! gatehouse (`listen … proxy_protocol`) reports the client address the header carried;
//! curl and hand-written headers go through an `accept_proxy` listener; bad headers
//! are closed, each with its counted reason, while other clients are served.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const REJECTED: &str = "gatehouse_connections_rejected_total";

/// A real NGINX answering `$proxy_protocol_addr:$proxy_protocol_port` on listeners that
/// require the PROXY protocol, on IPv4 and (when there is one) IPv6 loopback.
struct Nginx {
    child: Child,
    v4: SocketAddr,
    v6: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Err when NGINX is not installed (a skip); NGINX that does not come up is a
    /// failure.
    fn start() -> Result<Nginx, String> {
        if !have("nginx") {
            return Err("nginx is not installed".into());
        }
        let dir = tempfile::tempdir().expect("a directory for nginx");
        let lo4: IpAddr = [127, 0, 0, 1].into();
        let lo6: IpAddr = Ipv6Addr::LOCALHOST.into();
        let v4 = SocketAddr::new(lo4, free_port(lo4).expect("a free port on 127.0.0.1"));
        let v6 = free_port(lo6).map(|p| SocketAddr::new(lo6, p));
        let d = dir.path().display();
        let listen6 = v6.map(|a| format!("listen {a} proxy_protocol;")).unwrap_or_default();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {v4} proxy_protocol;
        {listen6}
        location / {{ return 200 "$proxy_protocol_addr:$proxy_protocol_port\n"; }}
    }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("run nginx: {e}"));
        let mut n = Nginx {
            child,
            v4,
            v6,
            _dir: dir,
        };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&v4, Duration::from_millis(200)).is_ok()
        });
        assert!(up, "nginx did not listen on {v4} within 10s");
        if let Ok(Some(status)) = n.child.try_wait() {
            panic!("nginx exited: {status}");
        }
        Ok(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET / through `stream`; returns the body.
fn get(s: TcpStream) -> String {
    get_after(s, b"")
}

/// GET / through `stream`, `header` and request in one write (one segment): the
/// header must be taken off exactly, the request left whole.
fn get_after(mut s: TcpStream, header: &[u8]) -> String {
    let mut out = header.to_vec();
    out.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(&out).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or(resp)
}

fn addr_text(a: SocketAddr) -> String {
    format!("{}:{}", a.ip(), a.port())
}

#[test]
fn nginx_reads_the_client_address_from_v1_and_v2_headers_over_ipv4_and_ipv6() {
    let nginx = match Nginx::start() {
        Ok(n) => n,
        Err(why) => skip!("{why}"),
    };
    let v4 = || format!("{}:0", fresh_ip());
    let mut cases = vec![("v1", v4(), nginx.v4), ("v2", v4(), nginx.v4)];
    let lo6: IpAddr = Ipv6Addr::LOCALHOST.into();
    match (nginx.v6, free_port(lo6), free_port(lo6)) {
        (Some(v6), Some(p1), Some(p2)) if p1 != p2 => {
            cases.extend([("v1", format!("[::1]:{p1}"), v6), ("v2", format!("[::1]:{p2}"), v6)])
        }
        _ => eprintln!("SKIPPED (IPv6 part): no IPv6 loopback"),
    }
    let mut config = String::from("[admin]\nlisten = \"127.0.0.1:0\"\n");
    for (i, (version, bind, server)) in cases.iter().enumerate() {
        config += &format!(
            "[[listener]]\nname = \"l{i}\"\nbind = \"{bind}\"\nbackend = \"b{i}\"\n\
             [backend.b{i}]\nsend_proxy = \"{version}\"\nservers = [\"{server}\"]\n[backend.b{i}.health]\ncheck = \"none\"\n"
        );
    }
    let g = Gatehouse::start(&config);
    for (i, (version, _, server)) in cases.iter().enumerate() {
        let front = g.addr(&format!("l{i}"));
        let client = connect(front);
        let me = client.local_addr().unwrap();
        let seen = get(client);
        assert_eq!(
            seen,
            addr_text(me),
            "PROXY {version} via {front} to nginx at {server}: nginx saw {seen:?}, the client was {me}"
        );
    }
}

#[test]
fn health_checks_send_the_header_only_when_asked() {
    let nginx = match Nginx::start() {
        Ok(n) => n,
        Err(why) => skip!("{why}"),
    };
    let ng = nginx.v4;
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
backend = "asked_v2"
[backend.asked_v2]
send_proxy = "v2"
servers = [{{ name = "ng", address = "{ng}" }}]
health = {{ check = "http", interval = "200ms", rise = 1, fall = 1, send_proxy = true }}
[backend.asked_v1]
send_proxy = "v1"
servers = [{{ name = "ng", address = "{ng}" }}]
health = {{ check = "http", interval = "200ms", rise = 1, fall = 1, send_proxy = true }}
[backend.not_asked]
send_proxy = "v1"
servers = [{{ name = "ng", address = "{ng}" }}]
health = {{ check = "http", interval = "200ms", rise = 1, fall = 1 }}
"#
    );
    let g = Gatehouse::start(&config);
    let admin = g.admin();
    for (backend, want) in [("asked_v2", "up"), ("asked_v1", "up"), ("not_asked", "down")] {
        let started = Instant::now();
        let reached = wait_until(Duration::from_secs(10), || server_state(admin, backend, "ng") == want);
        assert!(
            reached,
            "{backend}/ng should be {want} (nginx requires the header); it is {} after {:?}",
            server_state(admin, backend, "ng"),
            started.elapsed()
        );
    }
}

/// gatehouse with an `accept_proxy` listener in front of NGINX (sending v1 on), so
/// that NGINX reports the address gatehouse took from the header it accepted.
fn accepting_gatehouse(nginx: &Nginx, trusted: &str, extra: &str) -> Gatehouse {
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
backend = "web"
accept_proxy = true
trusted = [{trusted}]
{extra}
[backend.web]
send_proxy = "v1"
servers = ["{}"]
health = {{ check = "none" }}
"#,
        nginx.v4
    );
    Gatehouse::start(&config)
}

#[test]
fn the_address_an_accepted_header_carries_is_what_the_server_and_the_log_see() {
    let nginx = match Nginx::start() {
        Ok(n) => n,
        Err(why) => skip!("{why}"),
    };
    let g = accepting_gatehouse(&nginx, r#""127.0.0.0/8""#, "");
    let front = g.addr("front");

    // v1 from a balancer that saw 203.0.113.9:4444, payload in the same segment.
    let s = connect(front);
    let seen = get_after(s, b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 443\r\n");
    assert_eq!(seen, "203.0.113.9:4444", "v1 header's client, as nginx saw it");

    // v2 carrying an IPv6 client.
    let s = connect(front);
    let src: SocketAddr = "[2001:db8::7]:5555".parse().unwrap();
    let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    let seen = get_after(s, &gatehouse::edge::proxy_protocol::encode_v2(src, dst));
    assert_eq!(seen, "2001:db8::7:5555", "v2 header's IPv6 client, as nginx saw it");

    // v2 LOCAL (a balancer's own health check): the connection's own address is used.
    let s = connect(front);
    let me = s.local_addr().unwrap();
    let seen = get_after(s, &gatehouse::edge::proxy_protocol::encode_v2_local());
    assert_eq!(seen, addr_text(me), "LOCAL keeps the connection's own address");

    assert!(
        g.wait_log("203.0.113.9:4444 front/web/", Duration::from_secs(5)),
        "the close line names the carried client:\n{}",
        g.log()
    );
}

#[test]
fn curl_haproxy_protocol_goes_through_an_accepting_listener() {
    let nginx = match Nginx::start() {
        Ok(n) => n,
        Err(why) => skip!("{why}"),
    };
    if !have("curl") {
        skip!("curl is not installed");
    }
    let g = accepting_gatehouse(&nginx, r#""127.0.0.5/32""#, "");
    let front = g.addr("front");
    let out = output_within(
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--haproxy-protocol",
                "--interface",
                "127.0.0.5",
            ])
            .arg(format!("http://{front}/")),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("curl: {e}"));
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && body.starts_with("127.0.0.5:"),
        "curl --haproxy-protocol from 127.0.0.5: nginx saw {body:?}; curl said {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `bytes` (then half-closes if `close`), and returns whether gatehouse closed
/// the connection without forwarding anything, and how long that took.
fn refused(mut s: TcpStream, bytes: &[u8], close: bool) -> (bool, Duration) {
    let started = Instant::now();
    let _ = s.write_all(bytes);
    if close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut buf = [0u8; 256];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    };
    (closed, started.elapsed())
}

#[test]
fn bad_headers_are_closed_with_their_reason_while_other_clients_are_served() {
    let nginx = match Nginx::start() {
        Ok(n) => n,
        Err(why) => skip!("{why}"),
    };
    let g = accepting_gatehouse(&nginx, r#""127.0.0.1/32""#, r#"proxy_timeout = "500ms""#);
    let (front, admin) = (g.addr("front"), g.admin());

    // A silent client first: while it waits out its timeout, others are served.
    let silent = connect(front);
    let silent_thread = std::thread::spawn(move || refused(silent, b"", false));
    let mut good = connect(front);
    let started = Instant::now();
    good.write_all(b"PROXY TCP4 198.51.100.1 127.0.0.1 1000 80\r\n")
        .unwrap();
    assert_eq!(get(good), "198.51.100.1:1000");
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "a good client waited {:?} behind a silent one",
        started.elapsed()
    );

    let mut too_long = gatehouse::edge::proxy_protocol::V2_SIGNATURE.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let cases: [(&str, &[u8], bool, IpAddr); 5] = [
        (
            "proxy_header_missing",
            b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            [127, 0, 0, 1].into(),
        ),
        (
            "proxy_header_malformed",
            b"PROXY TCP4 1.2.3.4 nonsense\r\n",
            false,
            [127, 0, 0, 1].into(),
        ),
        (
            "proxy_header_truncated",
            b"PROXY TCP4 1.2.3.4 ",
            true,
            [127, 0, 0, 1].into(),
        ),
        ("proxy_header_too_long", &too_long, false, [127, 0, 0, 1].into()),
        (
            "proxy_untrusted",
            b"PROXY TCP4 1.2.3.4 127.0.0.1 1 2\r\n",
            false,
            [127, 0, 0, 2].into(),
        ),
    ];
    for (reason, bytes, close, from) in cases {
        let (closed, took) = refused(connect_from(from, front), bytes, close);
        assert!(closed, "{reason}: the connection should be closed unserved");
        assert!(
            took < Duration::from_millis(450),
            "{reason}: closed after {took:?}, not at once"
        );
        let counted = wait_until(Duration::from_secs(5), || {
            metric(admin, REJECTED, &[("listener", "front"), ("reason", reason)]) == 1.0
        });
        assert!(counted, "{reason} counted once in {REJECTED}");
    }

    let (closed, took) = silent_thread.join().unwrap();
    assert!(closed, "a client that sends nothing is closed");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}; proxy_timeout is 500ms"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        metric(admin, REJECTED, &[("listener", "front"), ("reason", "proxy_timeout")]) == 1.0
    }));
    assert!(
        wait_until(Duration::from_secs(5), || {
            g.log().contains("proxy_header_missing") || g.log().contains("proxy_untrusted")
        }),
        "refusals are logged (rate-limited):\n{}",
        g.log()
    );
    // Still serving after all of that.
    let mut s = connect(front);
    s.write_all(b"PROXY TCP4 198.51.100.2 127.0.0.1 2000 80\r\n").unwrap();
    assert_eq!(get(s), "198.51.100.2:2000");
}

#[test]
fn source_hash_balances_by_the_carried_client() {
    let (a, b) = (
        Backend::named("127.0.0.1:0".parse().unwrap(), "a"),
        Backend::named("127.0.0.1:0".parse().unwrap(), "b"),
    );
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
backend = "pool"
accept_proxy = true
trusted = ["127.0.0.1/32"]
[backend.pool]
balance = "source-hash"
servers = [{{ name = "a", address = "{}" }}, {{ name = "b", address = "{}" }}]
health = {{ check = "none" }}
"#,
        a.addr, b.addr
    );
    let g = Gatehouse::start(&config);
    let front = g.addr("front");
    let via = |client: &str, port: u16| {
        let mut s = connect(front);
        s.write_all(format!("PROXY TCP4 {client} 127.0.0.1 {port} 443\r\n").as_bytes())
            .unwrap();
        read_line(&mut s).unwrap()
    };
    // One carried client, many source ports, all from gatehouse's view 127.0.0.1.
    let same: Vec<String> = (0..10).map(|i| via("198.51.100.7", 1000 + i)).collect();
    assert!(
        same.iter().all(|s| *s == same[0]),
        "one carried client keeps its server: {same:?}"
    );
    // Many carried clients (all from the same real peer) spread over both servers.
    let spread: Vec<String> = (1..=40).map(|i| via(&format!("198.51.100.{i}"), 1000)).collect();
    let on_a = spread.iter().filter(|s| *s == "a").count();
    assert!(
        on_a > 0 && on_a < spread.len(),
        "40 carried clients from one peer spread by their own address: {on_a} on a, {} on b",
        spread.len() - on_a
    );
}
