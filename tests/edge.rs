//! The edge, end to end: `allow`/`deny` and `source_limit` on listeners, judged by the
//! client's source address (clients bind 127.0.0.x or `::1`), and an admin listener
//! that keeps answering `/healthz` and `/metrics` while slow clients hold connections.

#[macro_use]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A client connection from source address `src`: made within 2 s, reads and writes
/// bounded by 3 s (what `closed_at_once` and `echoes` wait at most).
fn connect_from(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    try_connect_from(src, to, Duration::from_secs(2), Duration::from_secs(3))
}

/// Whether a connection from `src` is forwarded: the echo backend sends back a line.
fn echoes(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

/// Whether gatehouse closed the connection without forwarding it.
fn closed_at_once(stream: &mut TcpStream) -> bool {
    let _ = stream.write_all(b"ping\n");
    let mut buf = [0u8; 5];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        Ok(_) => false,
    }
}

fn v4(s: &str) -> IpAddr {
    s.parse::<Ipv4Addr>().unwrap().into()
}

const REJECTED: &str = "gatehouse_connections_rejected_total";

#[test]
fn allow_and_deny_judge_each_client_by_its_source_address_deny_winning() {
    let backend = Backend::echo("127.0.0.1:0".parse().unwrap());
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "v4"
bind = ["127.0.0.1:0"]
backend = "pool"
allow = ["127.9.0.2/32", "127.9.0.4/31"]
deny = ["127.9.0.5"]

[[listener]]
name = "v6"
bind = ["[::1]:0"]
backend = "pool"
allow = ["::1/128"]

[backend.pool]
servers = ["{}"]
"#,
        backend.addr
    );
    let g = Gatehouse::start(&config);
    let front = g.addr("v4");
    for (src, allowed) in [
        ("127.9.0.2", true),
        ("127.9.0.3", false),
        ("127.9.0.4", true),
        ("127.9.0.5", false),
    ] {
        let mut s = connect_from(v4(src), front).unwrap();
        if allowed {
            assert!(
                echoes(&mut s),
                "client {src} is in allow and not denied: it must be forwarded"
            );
        } else {
            assert!(closed_at_once(&mut s), "client {src} must be closed at once");
        }
    }
    let six: IpAddr = "::1".parse().unwrap();
    let v6 = g.addr("v6");
    let mut s = connect_from(six, v6).unwrap();
    assert!(echoes(&mut s), "::1 is allowed by ::1/128");
    // A reload that allows IPv4 loopback only applies to the next client from ::1.
    let out = g.reload(&config.replace(r#"allow = ["::1/128"]"#, r#"allow = ["127.0.0.0/8"]"#));
    let mut after = connect_from(six, v6).unwrap();
    assert!(
        closed_at_once(&mut after),
        "::1 is not in an IPv4-only allow list (reload: {out})"
    );
    assert!(echoes(&mut s), "the connection admitted before the reload goes on");

    let denied = metric(g.admin(), REJECTED, &[("listener", "v4"), ("reason", "denied")]);
    assert_eq!(denied, 2.0, "two v4 clients were denied; counted {denied}");
    let denied6 = metric(g.admin(), REJECTED, &[("listener", "v6"), ("reason", "denied")]);
    assert_eq!(denied6, 1.0, "one v6 client was denied; counted {denied6}");
    assert!(
        g.wait_log("client refused: denied", Duration::from_secs(5)),
        "a refusal is logged:\n{}",
        g.log()
    );
}

#[test]
fn source_limit_caps_connections_and_rate_per_client_address() {
    let backend = Backend::echo("127.0.0.1:0".parse().unwrap());
    let config = format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "conns"
bind = ["127.0.0.1:0"]
backend = "pool"
source_limit = {{ connections = 2 }}

[[listener]]
name = "rate"
bind = ["127.0.0.2:0"]
backend = "pool"
source_limit = {{ rate = "3/1m" }}

[[listener]]
name = "v6"
bind = ["[::1]:0"]
backend = "pool"
source_limit = {{ connections = 1, sources = 16 }}

[backend.pool]
servers = ["{}"]
"#,
        backend.addr
    );
    let g = Gatehouse::start(&config);

    // Concurrent connections: two held by 127.9.1.2, the third is refused; another
    // address is not affected; closing one makes room again.
    let conns = g.addr("conns");
    let mut first = connect_from(v4("127.9.1.2"), conns).unwrap();
    let mut second = connect_from(v4("127.9.1.2"), conns).unwrap();
    assert!(
        echoes(&mut first) && echoes(&mut second),
        "two connections are within the limit"
    );
    let mut third = connect_from(v4("127.9.1.2"), conns).unwrap();
    assert!(
        closed_at_once(&mut third),
        "a third connection from the same address is refused"
    );
    let mut other = connect_from(v4("127.9.1.3"), conns).unwrap();
    assert!(echoes(&mut other), "another address has its own count");
    drop(first);
    // Gatehouse sees the close a moment later: until then a new connection is refused
    // (and counted), after it one is served.
    let (mut again, mut refused_before_room) = (None, 0.0);
    let room = wait_until(Duration::from_secs(5), || {
        let mut s = connect_from(v4("127.9.1.2"), conns).unwrap();
        let ok = echoes(&mut s);
        refused_before_room += f64::from(u8::from(!ok));
        again = Some(s);
        ok
    });
    assert!(room, "closing a connection gives its place back");

    // Rate: three new connections a minute from one address; the fourth is refused.
    let rate = g.addr("rate");
    for i in 0..3 {
        let mut s = connect_from(v4("127.9.1.4"), rate).unwrap();
        assert!(echoes(&mut s), "connection {} of 3 is within the rate", i + 1);
    }
    let mut s = connect_from(v4("127.9.1.4"), rate).unwrap();
    assert!(
        closed_at_once(&mut s),
        "the fourth connection within a minute is refused"
    );

    // IPv6: one connection for ::1.
    let six: IpAddr = "::1".parse().unwrap();
    let mut held = connect_from(six, g.addr("v6")).unwrap();
    assert!(echoes(&mut held));
    let mut s = connect_from(six, g.addr("v6")).unwrap();
    assert!(closed_at_once(&mut s), "a second connection from ::1 is refused");

    // Each refusal counted once: the third connection, the fourth within the rate, the
    // second from ::1, and any refused while the first one's close was under way.
    let refused = 3.0 + refused_before_room;
    let limited = || metric(g.admin(), REJECTED, &[("reason", "source_limit")]);
    assert!(
        wait_until(Duration::from_secs(5), || limited() == refused),
        "refusals counted as source_limit: {}, want {refused}",
        limited()
    );
    assert!(
        g.wait_log("client refused: source limit", Duration::from_secs(5)),
        "a refusal is logged:\n{}",
        g.log()
    );
    drop((second, other, held, again));
}

/// One slow client: it sends a request one byte a second and reopens when closed.
struct Slow {
    src: IpAddr,
    stream: Option<TcpStream>,
    sent: usize,
}

const TRICKLE: &[u8] =
    b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

impl Slow {
    /// One tick: reopen if closed, else send the next byte. Returns whether it reopened.
    fn tick(&mut self, to: SocketAddr) -> bool {
        if let Some(s) = &mut self.stream {
            let byte = [TRICKLE[self.sent % TRICKLE.len()]];
            let mut probe = [0u8; 512];
            let closed = match s.read(&mut probe) {
                Ok(0) => true,
                Ok(_) => true, // an answer (408/400) ends it too
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            if !closed && s.write(&byte).is_ok() {
                self.sent += 1;
                return false;
            }
            self.stream = None;
        }
        self.sent = 0;
        self.stream = connect_from(self.src, to)
            .ok()
            .and_then(|s| s.set_nonblocking(true).ok().map(|()| s));
        true
    }
}

/// Latency of one admin request from 127.0.0.1, or why it failed.
fn probe(admin: SocketAddr, path: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| format!("read: {e}"))?;
    if !resp.starts_with("HTTP/1.1 200") {
        return Err(format!("answer: {:?}", resp.lines().next()));
    }
    Ok(started.elapsed())
}

#[test]
fn admin_answers_within_a_second_while_200_slow_clients_hold_connections() {
    let backend = Backend::echo("127.0.0.1:0".parse().unwrap());
    let g = Gatehouse::start(&config(&[format!("\"{}\"", backend.addr)], "", ""));
    let admin = g.admin();

    // 100 from one address (the per-source cap admits 8), 100 spread over 25 addresses
    // (4 each, all admitted): every trick a slow client has, at once.
    let mut slow: Vec<Slow> = (0..200)
        .map(|i| Slow {
            src: if i < 100 {
                v4("127.9.2.2")
            } else {
                v4(&format!("127.9.3.{}", 2 + (i - 100) / 4))
            },
            stream: None,
            sent: 0,
        })
        .collect();
    let run_for = Duration::from_secs(20);
    let started = Instant::now();
    let (placed, all_placed) = std::sync::mpsc::channel();
    let attack = thread::spawn(move || {
        // (Re)openings by the clients on one address, and by those spread out.
        let (mut reopened, mut max_open) = ([0usize; 2], 0usize);
        while started.elapsed() < run_for {
            let tick = Instant::now();
            for (i, s) in slow.iter_mut().enumerate() {
                reopened[usize::from(i >= 100)] += usize::from(s.tick(admin));
            }
            max_open = max_open.max(slow.iter().filter(|s| s.stream.is_some()).count());
            // After the first round every slow client has tried its place.
            let _ = placed.send(());
            thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
        }
        (reopened, max_open)
    });

    // Probing starts once the slow clients have taken their places.
    all_placed
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow clients' first round");
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while started.elapsed() < run_for {
        for path in ["/healthz", "/metrics"] {
            match probe(admin, path) {
                Ok(d) => latencies.push(d),
                Err(e) => failures.push(format!("{path}: {e}")),
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    let (reopened, max_open) = attack.join().expect("attack thread");
    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or_default();
    let refused = metric(admin, REJECTED, &[("listener", "admin"), ("reason", "source_limit")]);
    let report = format!(
        "{} probes answered, {} failed; latency p50 {:?}, p99 {:?}, max {:?}; slow clients: at most {} connected at once, {} (re)opened from one address and {} from 25, {} refused by the per-source cap",
        latencies.len(),
        failures.len(),
        p50,
        p99,
        max,
        max_open,
        reopened[0],
        reopened[1],
        refused
    );
    figure!("slowloris: {report}");
    assert!(
        failures.is_empty(),
        "every probe must be answered: {report}; failures: {failures:?}"
    );
    assert!(latencies.len() >= 40, "enough probes ran: {report}");
    assert!(
        max < Duration::from_secs(1),
        "every probe answered within 1 s: {report}"
    );
    assert!(
        refused > 0.0,
        "the per-source cap refused the one-address clients: {report}"
    );
    // 100 spread clients, each closed by the head deadline (5 s) about 3 times in 20 s.
    assert!(
        reopened[1] >= 250,
        "the head deadline closed the slow clients, which reopened: {report}"
    );
}

#[test]
fn admin_allow_and_per_source_cap_refuse_at_once_and_leave_others_served() {
    let backend = Backend::echo("127.0.0.1:0".parse().unwrap());
    let config = config(&[format!("\"{}\"", backend.addr)], "", "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nallow = [\"127.0.0.1\", \"127.9.5.0/24\"]\nsource_limit = { connections = 3 }",
    );
    let g = Gatehouse::start(&config);
    let admin = g.admin();

    let mut outsider = connect_from(v4("127.9.4.2"), admin).unwrap();
    write!(
        outsider,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok();
    assert!(
        closed_at_once(&mut outsider),
        "a client outside [admin] allow is closed unanswered"
    );

    // Three idle connections from one address are held; the fourth is closed at once.
    let held: Vec<TcpStream> = (0..3).map(|_| connect_from(v4("127.9.5.2"), admin).unwrap()).collect();
    let mut fourth = connect_from(v4("127.9.5.2"), admin).unwrap();
    let started = Instant::now();
    assert!(
        closed_at_once(&mut fourth),
        "a fourth admin connection from one address is refused"
    );
    let refused_in = started.elapsed();
    assert!(
        refused_in < Duration::from_secs(1),
        "refused at once, not at a deadline: {refused_in:?}"
    );
    let mut neighbour = connect_from(v4("127.9.5.3"), admin).unwrap();
    write!(
        neighbour,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    neighbour.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "another address is served: {answer:?}"
    );

    let denied = metric(admin, REJECTED, &[("listener", "admin"), ("reason", "denied")]);
    let limited = metric(admin, REJECTED, &[("listener", "admin"), ("reason", "source_limit")]);
    assert_eq!(
        (denied, limited),
        (1.0, 1.0),
        "admin refusals by reason (denied, source_limit)"
    );
    drop(held);
}
