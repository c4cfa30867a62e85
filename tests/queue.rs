//! Per-server connection limits and the backend's queue, end to end: ten long
//! connections to a server that takes two at a time are served in their order as
//! places free up; the late ones are closed with `queue_timeout` (or at once with
//! `queue_full`) in the close log and in `gatehouse_connections_closed_total`; and side
//! by side with a real HAProxy (`maxconn 2`, `timeout queue`): the same number served at
//! once, the same order, the same outcome when the queue times out.
//!
//! Clients connect one after another, each once the proxy holds the one before (served
//! at the server, or counted in the queue: the status API, HAProxy's `show stat`), so
//! that their order is known without sleeping. The side-by-side test needs `haproxy`
//! (`.ci/run` installs it) and says SKIPPED without it.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::haproxy::{self, Haproxy};
use common::*;

/// A server that records the clients it accepts, in order (each sends its number
/// first), and how many it holds at once: it holds each until the client closes.
struct Tracker {
    backend: Backend,
    state: Arc<Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    order: Vec<u32>,
    open: usize,
    peak: usize,
}

impl Tracker {
    fn start() -> Tracker {
        let state = Arc::new(Mutex::new(Held::default()));
        let st = state.clone();
        let backend = Backend::serve(SocketAddr::new(fresh_ip().into(), 0), move |mut s| {
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            let Ok(line) = read_line(&mut s) else { return };
            let Ok(id) = line.trim().parse::<u32>() else { return };
            {
                let mut h = st.lock().unwrap();
                h.order.push(id);
                h.open += 1;
                h.peak = h.peak.max(h.open);
            }
            let mut buf = [0u8; 256];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            st.lock().unwrap().open -= 1;
        });
        Tracker { backend, state }
    }

    fn addr(&self) -> SocketAddr {
        self.backend.addr
    }

    fn order(&self) -> Vec<u32> {
        self.state.lock().unwrap().order.clone()
    }

    fn open_and_peak(&self) -> (usize, usize) {
        let h = self.state.lock().unwrap();
        (h.open, h.peak)
    }
}

/// A client connection and when it was made.
struct Client {
    stream: TcpStream,
    at: Instant,
}

/// Connects client `id` and sends its number.
fn client(front: SocketAddr, id: u32) -> Client {
    let at = Instant::now();
    let mut stream = connect(front);
    stream.write_all(format!("{id}\n").as_bytes()).unwrap();
    Client { stream, at }
}

/// `n` clients, one after another: each once the proxy holds the one before it, at the
/// server (the first two: its limit) or in the queue (`queued` says how many wait).
fn held_clients(front: SocketAddr, tracker: &Tracker, n: u32, queued: &dyn Fn() -> u64) -> Vec<Client> {
    let mut clients = Vec::new();
    for id in 0..n {
        clients.push(client(front, id));
        let k = id as usize + 1;
        let held = wait_until(Duration::from_secs(10), || {
            tracker.order().len() == k.min(2) && queued() == k.saturating_sub(2) as u64
        });
        assert!(
            held,
            "client {id} neither served nor queued: served {:?}, queued {}",
            tracker.order(),
            queued()
        );
    }
    clients
}

/// Closes the served clients one at a time, each time waiting for the next one in the
/// queue to reach the server; returns the order the server saw.
fn release_in_turn(clients: Vec<Client>, tracker: &Tracker) -> Vec<u32> {
    let mut clients: Vec<Option<Client>> = clients.into_iter().map(Some).collect();
    for k in 0..8usize {
        let served = tracker.order();
        let oldest = served[k] as usize;
        drop(clients[oldest].take());
        let next = wait_until(Duration::from_secs(10), || tracker.order().len() == k + 3);
        assert!(
            next,
            "no queued client reached the server after a place freed: {:?}",
            tracker.order()
        );
        let (_, peak) = tracker.open_and_peak();
        assert!(
            peak <= 2,
            "{peak} connections at the server at once, over its limit of 2"
        );
    }
    tracker.order()
}

/// How a client's connection ended, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Still open: served.
    Open,
    /// Closed by the proxy with a FIN, after this long.
    Closed(Duration),
    /// Reset by the proxy, after this long.
    Reset(Duration),
}

/// Waits (bounded) for each client to be closed, in threads; a client still open after
/// `bound` is `Open`. Times count from each client's connect.
fn fates(clients: Vec<Client>, bound: Duration) -> Vec<Fate> {
    fates_of([clients], bound).pop().unwrap_or_default()
}

/// [`fates`] of several groups of clients at once (each waited for from the start).
fn fates_of<const N: usize>(groups: [Vec<Client>; N], bound: Duration) -> Vec<Vec<Fate>> {
    let waits: Vec<Vec<_>> = groups
        .into_iter()
        .map(|clients| {
            clients
                .into_iter()
                .map(
                    |Client {
                         stream: mut s,
                         at: connected,
                     }| {
                        std::thread::spawn(move || {
                            s.set_read_timeout(Some(bound)).unwrap();
                            let mut buf = [0u8; 64];
                            let fate = match s.read(&mut buf) {
                                Ok(0) => Fate::Closed(connected.elapsed()),
                                Ok(_) => panic!("a client got bytes from nowhere"),
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) =>
                                {
                                    Fate::Open
                                }
                                Err(_) => Fate::Reset(connected.elapsed()),
                            };
                            (fate, s)
                        })
                    },
                )
                .collect()
        })
        .collect();
    // The streams stay open until every fate is known: a served one closing early would
    // hand its place to a queued one.
    let done: Vec<Vec<(Fate, TcpStream)>> = waits
        .into_iter()
        .map(|g| g.into_iter().map(|t| t.join().unwrap()).collect())
        .collect();
    done.into_iter()
        .map(|g| g.into_iter().map(|(f, _)| f).collect())
        .collect()
}

fn limited(server: SocketAddr, extra: &str) -> String {
    config(
        &[format!(
            r#"{{ name = "s1", address = "{server}", max_connections = 2 }}"#
        )],
        &format!("health = {{ check = \"none\" }}\n{extra}"),
        "",
    )
}

fn queue_doc(admin: SocketAddr) -> serde_json::Value {
    status(admin)["backends"][0]["queue"].clone()
}

fn waiting(admin: SocketAddr) -> u64 {
    queue_doc(admin)["waiting"].as_u64().unwrap_or(0)
}

/// Close lines (of listener `front`) in the log that hold `needle`.
fn close_lines(g: &Gatehouse, needle: &str) -> Vec<String> {
    g.log()
        .lines()
        .filter(|l| l.contains(" front/pool/") && l.contains(needle))
        .map(String::from)
        .collect()
}

#[test]
fn ten_long_connections_are_served_two_at_a_time_in_their_order() {
    let tracker = Tracker::start();
    let g = Gatehouse::start(&limited(tracker.addr(), "queue_timeout = \"5s\""));
    let admin = g.admin();
    let clients = held_clients(g.addr("front"), &tracker, 10, &|| waiting(admin));

    let doc = status(admin);
    let server = &doc["backends"][0]["servers"][0];
    assert_eq!(
        (server["active"].as_u64(), server["max_connections"].as_u64()),
        (Some(2), Some(2))
    );
    let queue = &doc["backends"][0]["queue"];
    assert_eq!(queue["waiting"], 8, "{queue}");
    assert_eq!(tracker.open_and_peak(), (2, 2), "two at the server, eight waiting");
    assert_eq!(metric(admin, "gatehouse_queue_length", &[("backend", "pool")]), 8.0);

    let started = Instant::now();
    let order = release_in_turn(clients, &tracker);
    assert_eq!(order, (0..10).collect::<Vec<u32>>(), "first come, first served");
    let (_, peak) = tracker.open_and_peak();
    assert_eq!(peak, 2, "never more than max_connections at the server");
    figure!(
        "10 clients over max_connections = 2: served in order {order:?}, peak {peak} at the server, 8 handed on in {:?}",
        started.elapsed()
    );

    // Every client closes; each close line says how long a queued one waited.
    let logged = wait_until(Duration::from_secs(5), || close_lines(&g, "client").len() == 10);
    assert!(logged, "10 close lines:\n{}", g.log());
    assert_eq!(close_lines(&g, "(queued ").len(), 8, "{}", g.log());
    assert_eq!(
        metric(admin, "gatehouse_queue_wait_seconds_count", &[("backend", "pool")]),
        8.0
    );
    assert_eq!(
        metric(admin, "gatehouse_queue_refused_total", &[("backend", "pool")]),
        0.0
    );
}

#[test]
fn the_late_ones_are_closed_with_queue_timeout_in_the_log_and_the_metric() {
    let tracker = Tracker::start();
    let g = Gatehouse::start(&limited(tracker.addr(), "queue_timeout = \"500ms\""));
    let admin = g.admin();
    let clients = held_clients(g.addr("front"), &tracker, 10, &|| waiting(admin));
    let fates = fates(clients, Duration::from_secs(3));
    assert_eq!(&fates[..2], &[Fate::Open, Fate::Open], "the two served stay: {fates:?}");
    for (id, f) in fates.iter().enumerate().skip(2) {
        match f {
            Fate::Closed(after) => assert!(
                *after >= Duration::from_millis(500) && *after < Duration::from_millis(2500),
                "client {id} closed after {after:?}, wanted 500 ms in the queue (+ slack)"
            ),
            other => panic!("client {id}: {other:?}, wanted closed (a FIN) after its queue_timeout"),
        }
    }
    figure!("queue_timeout = 500ms: clients 2-9 closed after {:?}", &fates[2..]);

    let logged = wait_until(Duration::from_secs(5), || close_lines(&g, "queue timeout").len() == 8);
    assert!(logged, "8 close lines with end `queue timeout`:\n{}", g.log());
    for line in close_lines(&g, "queue timeout") {
        assert!(
            line.contains("front/pool/- -ms") && line.contains("in=0 out=0"),
            "{line}"
        );
        assert!(
            line.contains("(queued 5") || line.contains("(queued 6"),
            "the wait: {line}"
        );
    }
    let closed = [("listener", "front"), ("backend", "pool"), ("reason", "queue_timeout")];
    assert_eq!(metric(admin, "gatehouse_connections_closed_total", &closed), 8.0);
    let refused = [("backend", "pool"), ("reason", "queue_timeout")];
    assert_eq!(metric(admin, "gatehouse_queue_refused_total", &refused), 8.0);
    assert_eq!(queue_doc(admin)["refused"]["queue_timeout"], 8);
    assert_eq!(tracker.order(), [0, 1], "only the first two reached the server");
}

#[test]
fn past_max_queue_clients_are_closed_at_once_with_queue_full() {
    let tracker = Tracker::start();
    let g = Gatehouse::start(&limited(tracker.addr(), "queue_timeout = \"5s\"\nmax_queue = 3"));
    let admin = g.admin();
    let front = g.addr("front");
    let mut held = held_clients(front, &tracker, 5, &|| waiting(admin));
    let late: Vec<Client> = (5..10).map(|id| client(front, id)).collect();
    let fates = fates(late, Duration::from_secs(3));
    // Closed before it sent anything, or its first bytes land on a closed socket: a FIN
    // or a reset, at once either way.
    for (i, f) in fates.iter().enumerate() {
        match f {
            Fate::Closed(after) | Fate::Reset(after) => {
                assert!(*after < Duration::from_secs(1), "client {}: {after:?}", i + 5)
            }
            Fate::Open => panic!("client {}: still open, wanted closed at once", i + 5),
        }
    }
    let logged = wait_until(Duration::from_secs(5), || close_lines(&g, "queue full").len() == 5);
    assert!(logged, "5 close lines with end `queue full`:\n{}", g.log());
    let closed = [("listener", "front"), ("backend", "pool"), ("reason", "queue_full")];
    assert_eq!(metric(admin, "gatehouse_connections_closed_total", &closed), 5.0);
    assert_eq!(waiting(admin), 3, "the three queued still wait their turn");
    drop(held.remove(0));
    assert!(wait_until(Duration::from_secs(5), || tracker.order().len() == 3));
    assert_eq!(tracker.order(), [0, 1, 2]);
}

#[test]
fn busy_primaries_make_clients_wait_while_the_backup_stays_idle() {
    let (primary, backup) = (Tracker::start(), Tracker::start());
    let servers = [
        format!(
            r#"{{ name = "p", address = "{}", max_connections = 1 }}"#,
            primary.addr()
        ),
        format!(r#"{{ name = "b", address = "{}", backup = true }}"#, backup.addr()),
    ];
    let g = Gatehouse::start(&config(
        &servers,
        "health = { check = \"none\" }\nqueue_timeout = \"5s\"",
        "",
    ));
    let admin = g.admin();
    let first = client(g.addr("front"), 0);
    assert!(wait_until(Duration::from_secs(5), || primary.order() == [0]));
    let second = client(g.addr("front"), 1);
    assert!(
        wait_until(Duration::from_secs(5), || waiting(admin) == 1),
        "the second waits"
    );
    assert!(
        backup.order().is_empty(),
        "a backup stands in for servers that are down, not busy"
    );
    drop(first);
    assert!(wait_until(Duration::from_secs(5), || primary.order() == [0, 1]));
    drop(second);
}

#[test]
fn without_limits_there_is_no_queue_to_show_or_export() {
    let tracker = Tracker::start();
    let g = Gatehouse::start(&config(
        &[server("s1", tracker.addr())],
        "health = { check = \"none\" }",
        "",
    ));
    let c = client(g.addr("front"), 0);
    assert!(wait_until(Duration::from_secs(5), || tracker.order() == [0]));
    let doc = status(g.admin());
    assert!(doc["backends"][0]["queue"].is_null(), "{doc}");
    assert!(doc["backends"][0]["servers"][0]["max_connections"].is_null());
    let (_, body) = http(g.admin(), "GET", "/metrics", &[]);
    assert!(!body.contains("gatehouse_queue_"), "queue series without a queue");
    drop(c);
}

#[test]
fn the_status_page_shows_who_waits_and_each_server_s_limit() {
    let Some(bin) = tool("chromium") else {
        skip!("chromium is not installed (Debian package `chromium`); the status page was not rendered");
    };
    let tracker = Tracker::start();
    let g = Gatehouse::start(&limited(tracker.addr(), "queue_timeout = \"30s\""));
    let admin = g.admin();
    let _clients = held_clients(g.addr("front"), &tracker, 5, &|| waiting(admin));
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(
        &bin,
        &profile.path().join("p"),
        &["--dump-dom".into()],
        &format!("http://{admin}/"),
    );
    assert!(dom.contains("data-loaded=\"true\""), "the page never loaded:\n{dom}");
    assert!(
        dom.contains("data-queue-waiting=\"3\""),
        "no queue of 3 on the page:\n{dom}"
    );
    assert!(dom.contains("queue: 3 waiting"), "{dom}");
    assert!(
        dom.contains(">2 / 2<"),
        "the server's active connections and its limit:\n{dom}"
    );
}

// ---------------------------------------------------------------- side by side

/// HAProxy's config for the side-by-side tests: one server with `maxconn 2` and the
/// `options` given (`maxqueue`), under `balance`.
fn haproxy_cfg(bind: SocketAddr, server: SocketAddr, queue_timeout: &str, balance: &str, options: &str) -> String {
    format!(
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    \
         timeout queue {queue_timeout}\n\nfrontend front\n    bind {bind}\n    default_backend pool\n\n\
         backend pool\n    balance {balance}\n    hash-type consistent\n    server s1 {server} maxconn 2 {options}\n"
    )
}

/// Gatehouse on the import of `cfg`, with an admin listener to read its queue.
fn gatehouse_from(cfg: &str) -> Gatehouse {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("import")
        .arg(&path)
        .output()
        .unwrap();
    let toml = String::from_utf8(out.stdout).unwrap();
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        toml.contains("max_connections = 2"),
        "maxconn 2 not translated:\n{toml}\n{report}"
    );
    assert!(!report.contains(": dropped: "), "{report}");
    Gatehouse::start(&format!("{toml}\n[admin]\nlisten = \"127.0.0.1:0\"\n"))
}

/// Both proxies, each in front of its own tracker, on one `timeout queue`.
struct Pair {
    haproxy: Haproxy,
    h_front: SocketAddr,
    h_tracker: Tracker,
    gatehouse: Gatehouse,
    g_tracker: Tracker,
}

impl Pair {
    fn start(queue_timeout: &str) -> Pair {
        Pair::start_with(queue_timeout, "roundrobin", "")
    }

    fn start_with(queue_timeout: &str, balance: &str, options: &str) -> Pair {
        let (h_tracker, g_tracker) = (Tracker::start(), Tracker::start());
        let h_front = haproxy::free_addr();
        let cfg = |bind, server| haproxy_cfg(bind, server, queue_timeout, balance, options);
        let haproxy = Haproxy::start(&cfg(h_front, h_tracker.addr()), &[h_front]);
        let gatehouse = gatehouse_from(&cfg(haproxy::free_addr(), g_tracker.addr()));
        Pair {
            haproxy,
            h_front,
            h_tracker,
            gatehouse,
            g_tracker,
        }
    }

    /// `n` clients through each proxy, as [`held_clients`] connects them.
    fn held_each(&self, n: u32) -> [Vec<Client>; 2] {
        let admin = self.gatehouse.admin();
        [
            held_clients(self.h_front, &self.h_tracker, n, &|| self.haproxy.queued("pool")),
            held_clients(self.gatehouse.addr("front"), &self.g_tracker, n, &|| waiting(admin)),
        ]
    }

    /// Clients `from..10` through each proxy, at once.
    fn late_each(&self, from: u32) -> [Vec<Client>; 2] {
        let g = self.gatehouse.addr("front");
        [
            (from..10).map(|id| client(self.h_front, id)).collect(),
            (from..10).map(|id| client(g, id)).collect(),
        ]
    }
}

#[test]
fn a_limit_of_two_queues_serves_and_times_out_as_in_haproxy() {
    if !haproxy::available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    // A queue that outlasts the test: the same number served at once, the same order.
    let pair = Pair::start("5s");
    let [h, g] = pair.held_each(10);
    let at_once = [pair.h_tracker.open_and_peak(), pair.g_tracker.open_and_peak()];
    assert_eq!(
        at_once,
        [(2, 2), (2, 2)],
        "(open, peak) at the server: haproxy, gatehouse"
    );
    assert_eq!((pair.haproxy.queued("pool"), waiting(pair.gatehouse.admin())), (8, 8));
    let orders = [release_in_turn(h, &pair.h_tracker), release_in_turn(g, &pair.g_tracker)];
    assert_eq!(orders[0], (0..10).collect::<Vec<u32>>(), "haproxy's order");
    assert_eq!(orders[1], orders[0], "gatehouse's order differs from haproxy's");
    figure!(
        "side by side, maxconn 2: both served 2 at once and in order {:?}",
        orders[1]
    );
    drop(pair);

    // A queue that times out: the same clients closed, the same way, as long after.
    let pair = Pair::start("500ms");
    let [h, g] = pair.held_each(10);
    let mut both = fates_of([h, g], Duration::from_secs(3));
    let (g, h) = (both.pop().unwrap(), both.pop().unwrap());
    for (proxy, fates) in [("haproxy", &h), ("gatehouse", &g)] {
        assert_eq!(
            &fates[..2],
            &[Fate::Open, Fate::Open],
            "{proxy}: the two served: {fates:?}"
        );
        for (id, f) in fates.iter().enumerate().skip(2) {
            assert!(
                matches!(f, Fate::Closed(after) if *after >= Duration::from_millis(490) && *after < Duration::from_millis(2500)),
                "{proxy}: client {id}: {f:?}, wanted closed (FIN) after ~500 ms"
            );
        }
    }
    figure!(
        "side by side, timeout queue 500ms: haproxy closed 2-9 after {:?}",
        &h[2..]
    );
    figure!(
        "side by side, queue_timeout 500ms: gatehouse closed 2-9 after {:?}",
        &g[2..]
    );
    assert_eq!(pair.h_tracker.order(), [0, 1]);
    assert_eq!(pair.g_tracker.order(), [0, 1]);
}

#[test]
fn maxqueue_bounds_the_queue_only_where_haproxy_s_does() {
    if !haproxy::available() {
        skip!("haproxy is not installed (apt-get install haproxy)");
    }
    // roundrobin: maxqueue bounds the server's own queue, which HAProxy leaves empty;
    // all eight wait in the backend's, in both.
    let pair = Pair::start_with("5s", "roundrobin", "maxqueue 3");
    let _held = pair.held_each(10);
    assert_eq!((pair.haproxy.queued("pool"), waiting(pair.gatehouse.admin())), (8, 8));
    drop(pair);

    // balance source, one server: a client waits for it, at most three; the rest are
    // closed at once, in both.
    let pair = Pair::start_with("5s", "source", "maxqueue 3");
    let _held = pair.held_each(5);
    let mut both = fates_of(pair.late_each(5), Duration::from_secs(3));
    let (g, h) = (both.pop().unwrap(), both.pop().unwrap());
    for (proxy, fates) in [("haproxy", &h), ("gatehouse", &g)] {
        for (i, f) in fates.iter().enumerate() {
            assert!(
                matches!(f, Fate::Closed(t) | Fate::Reset(t) if *t < Duration::from_secs(1)),
                "{proxy}: client {}: {f:?}, wanted closed at once (the queue holds 3)",
                i + 5
            );
        }
    }
    assert_eq!((pair.haproxy.queued("pool"), waiting(pair.gatehouse.admin())), (3, 3));
    figure!("side by side, maxqueue 3: roundrobin queued 8 in both; source refused 5 at once, haproxy {h:?}, gatehouse {g:?}");
}
