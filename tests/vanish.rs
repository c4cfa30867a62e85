//! When a peer vanishes without a FIN or a reset — a Raspberry Pi that Kured reboots or
//! that loses power, a laptop that sleeps mid-transfer — gatehouse ends the connections
//! it carried within a bound the operator chose, and says why.
//!
//! Real network namespaces joined by veth pairs, with private test addresses that exist
//! only inside them: gatehouse runs in one namespace, the server in a second, the client
//! in a third. "Vanishing" is `ip link set … down` inside the peer's namespace: its
//! packets stop, nothing is sent. Each test measures how long until the other side sees
//! its connection end, for an idle stream and for a stream with data in flight. Needs
//! root and `ip` (iproute2); skipped loudly otherwise.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// gatehouse's side of the veth pairs, and the peers': the server at .2, the client at .6.
const GW_TO_SERVER: &str = "10.251.0.1";
const SERVER_IP: &str = "10.251.0.2";
const GW_TO_CLIENT: &str = "10.251.0.5";
const CLIENT_IP: &str = "10.251.0.6";

/// How long a test waits for any one connection to end before it gives up.
const GIVE_UP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The namespaces
// ---------------------------------------------------------------------------

/// Three namespaces (gatehouse, server, client) wired by two veth pairs; deleted when
/// dropped, on every path out of a test.
struct Net {
    gw: String,
    server: String,
    client: String,
    made: Vec<String>,
}

impl Net {
    /// Builds the three namespaces; Err (a skip) when not root. As root, namespaces
    /// that cannot be built are a failure, not a skip.
    fn build() -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        Ok(Self::make().unwrap_or_else(|e| panic!("cannot build the network namespaces: {e}")))
    }

    fn make() -> Result<Net, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("gh-vanish-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let mut net = Net {
            gw: format!("{prefix}-gw"),
            server: format!("{prefix}-srv"),
            client: format!("{prefix}-cli"),
            made: Vec::new(),
        };
        for ns in [net.gw.clone(), net.server.clone(), net.client.clone()] {
            ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // As on gallade, gatehouse's side is a bridge (br-pi, the LAN switch) that stays
        // up when one host on it vanishes: another port ("keep", a veth looped back into
        // the same namespace) holds its carrier. Packets to the vanished host are then
        // lost on the wire, not refused by the local stack.
        let gw = net.gw.clone();
        for (side, gw_ip, peer, peer_ip) in [
            ("srv", GW_TO_SERVER, &net.server, SERVER_IP),
            ("cli", GW_TO_CLIENT, &net.client, CLIENT_IP),
        ] {
            let (bridge, port, keep, kept) = (
                format!("br-{side}"),
                format!("to-{side}"),
                format!("keep-{side}"),
                format!("kept-{side}"),
            );
            ip(&["-n", &gw, "link", "add", &bridge, "type", "bridge"])?;
            ip(&["-n", &gw, "link", "add", &keep, "type", "veth", "peer", "name", &kept])?;
            ip(&[
                "-n", &gw, "link", "add", &port, "type", "veth", "peer", "name", "to-gw", "netns", peer,
            ])?;
            for dev in [&keep, &port] {
                ip(&["-n", &gw, "link", "set", dev, "master", &bridge])?;
            }
            for dev in [&keep, &kept, &port, &bridge] {
                ip(&["-n", &gw, "link", "set", dev, "up"])?;
            }
            ip(&["-n", &gw, "addr", "add", &format!("{gw_ip}/30"), "dev", &bridge])?;
            ip(&["-n", peer, "addr", "add", &format!("{peer_ip}/30"), "dev", "to-gw"])?;
            ip(&["-n", peer, "link", "set", "to-gw", "up"])?;
        }
        Ok(net)
    }

    /// The peer in `ns` vanishes: its link goes down, not one packet more leaves it or
    /// reaches it, no FIN, no reset; gatehouse's bridge stays up. Returns the moment
    /// just before.
    fn vanish(&self, ns: &str) -> Instant {
        let at = Instant::now();
        ip(&["-n", ns, "link", "set", "to-gw", "down"]).expect("link down");
        at
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.made {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Starts gatehouse inside the gatehouse namespace.
fn start_gatehouse(net: &Net, config: &str) -> Gatehouse {
    Gatehouse::start_in_netns(&net.gw, config)
}

/// `/metrics` of a gatehouse whose admin listens on loopback inside its namespace.
fn metrics(net: &Net, g: &Gatehouse) -> String {
    let admin = g.admin();
    in_ns(&net.gw, move || http(admin, "GET", "/metrics", &[]).1)
}

/// The value of `gatehouse_connections_closed_total` with `reason` (0 when absent).
fn closed(metrics: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("gatehouse_connections_closed_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One listener `front` on gatehouse's side towards the client, one server "pi".
fn config(server: SocketAddr, defaults: &str, backend: &str) -> String {
    config_on(
        &format!("{GW_TO_CLIENT}:0"),
        &[common::server("pi", server)],
        backend,
        defaults,
    )
}

// ---------------------------------------------------------------------------
// The server and the clients
// ---------------------------------------------------------------------------

/// What the server does with a stream: `Echo` sends back what it gets (the idle
/// streams: one echo proves the path, then nothing moves); `Sink` takes what the client
/// writes as fast as it can (data in flight towards the server, a fast reader so that
/// its window stays open); `Flood` writes to the client as fast as it can.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Echo,
    Sink,
    Flood,
}

/// A test server in the server namespace; each connection says its mode in its first
/// byte and reports the moment it ends (read or write failed or ended).
struct Server {
    addr: SocketAddr,
    ended: mpsc::Receiver<(Mode, Instant, String)>,
}

fn start_server(net: &Net) -> Server {
    let listener = in_ns(&net.server, || {
        TcpListener::bind((SERVER_IP, 0)).expect("bind in server namespace")
    });
    let addr = listener.local_addr().unwrap();
    let (tx, ended) = mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(s) = conn else { continue };
            let tx = tx.clone();
            thread::spawn(move || serve(s, tx));
        }
    });
    Server { addr, ended }
}

/// Reads `r` in `buf_len` pieces, handing each to `got`, until the stream ends, a read
/// fails or `got` fails; says which ("end of stream" or the error).
fn read_until_end(mut r: impl Read, buf_len: usize, mut got: impl FnMut(&[u8]) -> std::io::Result<()>) -> String {
    let mut buf = vec![0u8; buf_len];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return "end of stream".to_string(),
            Err(e) => return e.to_string(),
            Ok(n) => {
                if let Err(e) = got(&buf[..n]) {
                    return e.to_string();
                }
            }
        }
    }
}

fn serve(mut s: TcpStream, tx: mpsc::Sender<(Mode, Instant, String)>) {
    // Bounded even if nothing ever tells this connection it is over.
    s.set_read_timeout(Some(GIVE_UP)).ok();
    s.set_write_timeout(Some(GIVE_UP)).ok();
    let mut first = [0u8; 1];
    if s.read_exact(&mut first).is_err() {
        return;
    }
    let mode = match first[0] {
        b'f' => Mode::Flood,
        b's' => Mode::Sink,
        _ => Mode::Echo,
    };
    let how = match mode {
        Mode::Sink => read_until_end(&s, 256 * 1024, |_| Ok(())),
        Mode::Echo => read_until_end(&s, 64 * 1024, |data| (&s).write_all(data)),
        Mode::Flood => {
            let (done_tx, done) = mpsc::channel();
            let reader = s.try_clone().expect("clone");
            let tx2 = done_tx.clone();
            thread::spawn(move || {
                let how = read_until_end(reader, 4096, |_| Ok(()));
                let _ = tx2.send(how);
            });
            thread::spawn(move || {
                let chunk = vec![0x5a_u8; 64 * 1024];
                let how = loop {
                    if let Err(e) = s.write_all(&chunk) {
                        break e.to_string();
                    }
                };
                let _ = done_tx.send(how);
            });
            done.recv().unwrap_or_default()
        }
    };
    let _ = tx.send((mode, Instant::now(), how));
}

/// A client stream through gatehouse from the client namespace.
struct Client {
    /// Bytes the client has received, and (streaming) sent.
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    /// When the client saw the connection end, and how.
    ended: mpsc::Receiver<(Instant, String)>,
    stream: TcpStream,
}

impl Client {
    /// Opens a stream in `mode`; towards a `Sink` the client writes as fast as it can.
    fn open(net: &Net, front: SocketAddr, mode: Mode) -> Client {
        let mut stream = in_ns(&net.client, move || {
            TcpStream::connect_timeout(&front, Duration::from_secs(5)).expect("connect through gatehouse")
        });
        stream.set_read_timeout(Some(GIVE_UP)).unwrap();
        stream.set_write_timeout(Some(GIVE_UP)).unwrap();
        let first: &[u8] = match mode {
            Mode::Flood => b"f",
            Mode::Sink => b"s",
            Mode::Echo => b"e",
        };
        stream.write_all(first).unwrap();
        if mode == Mode::Echo {
            // The path works end to end before anything vanishes.
            stream.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            stream.read_exact(&mut b).expect("echo through gatehouse");
            assert_eq!(&b, b"ping");
        }
        let received = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let (tx, ended) = mpsc::channel();
        {
            let (r, received, tx) = (stream.try_clone().unwrap(), received.clone(), tx.clone());
            thread::spawn(move || {
                let how = read_until_end(r, 64 * 1024, |data| {
                    received.fetch_add(data.len() as u64, Ordering::Relaxed);
                    Ok(())
                });
                let _ = tx.send((Instant::now(), how));
            });
        }
        if mode == Mode::Sink {
            let (mut w, sent) = (stream.try_clone().unwrap(), sent.clone());
            thread::spawn(move || {
                let chunk = vec![0xa5_u8; 64 * 1024];
                let how = loop {
                    match w.write(&chunk) {
                        Ok(n) => {
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => break e.to_string(),
                    }
                };
                let _ = tx.send((Instant::now(), how));
            });
        }
        Client {
            received,
            sent,
            ended,
            stream,
        }
    }

    /// Waits (bounded) until at least `bytes` have gone the way this stream moves.
    fn flowing(&self, bytes: u64) {
        let ok = wait_until(Duration::from_secs(10), || {
            self.received.load(Ordering::Relaxed) >= bytes || self.sent.load(Ordering::Relaxed) >= bytes
        });
        assert!(
            ok,
            "stream not flowing: sent {} received {}",
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed)
        );
    }

    /// How long after `since` the client saw its connection end (bounded wait).
    fn ended_after(&self, since: Instant) -> (Duration, String) {
        let (at, how) = self
            .ended
            .recv_timeout(GIVE_UP)
            .unwrap_or_else(|_| panic!("connection still open {GIVE_UP:?} after the peer vanished"));
        (at.saturating_duration_since(since), how)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Two streams through listener `front` of `g`: an idle one (Echo, its path proven) and
/// a busy one in `busy` mode, returned once 1 MiB has moved on the busy one.
fn idle_and_busy(net: &Net, g: &Gatehouse, busy: Mode) -> (Client, Client) {
    let front = g.addr("front");
    let idle = Client::open(net, front, Mode::Echo);
    let busy = Client::open(net, front, busy);
    busy.flowing(1 << 20);
    (idle, busy)
}

/// How long after `since` the server saw its Flood and its Echo connection end.
fn server_endings(server: &Server, g: &Gatehouse, since: Instant) -> [(Duration, String); 2] {
    let deadline = Instant::now() + GIVE_UP;
    let mut seen: [Option<(Duration, String)>; 2] = [None, None];
    while seen.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.ended.recv_timeout(left) {
            Ok((m, at, how)) => seen[(m != Mode::Flood) as usize] = Some((at.saturating_duration_since(since), how)),
            Err(_) => panic!(
                "server-side connections still open {GIVE_UP:?} after the client vanished ({seen:?}); log:\n{}",
                g.log()
            ),
        }
    }
    seen.map(Option::unwrap_or_default)
}

/// Waits (bounded) until the close log of gatehouse holds `count` lines ending `end`.
fn wait_close_lines(g: &Gatehouse, end: &str, count: usize) -> bool {
    let suffix = format!(" {end}");
    wait_until(Duration::from_secs(5), || {
        g.log()
            .lines()
            .filter(|l| l.contains(" front/") && l.ends_with(&suffix))
            .count()
            >= count
    })
}

/// Both streams' ends are in gatehouse's close log as `end` (bounded wait) and in
/// `gatehouse_connections_closed_total` under `reason`.
fn assert_both_closed(net: &Net, g: &Gatehouse, end: &str, reason: &str) {
    assert!(wait_close_lines(g, end, 2), "two close lines say `{end}`:\n{}", g.log());
    let m = metrics(net, g);
    assert_eq!(closed(&m, reason), 2, "closed_total by reason:\n{m}");
}

// ---------------------------------------------------------------------------
// The behaviours
// ---------------------------------------------------------------------------

// Bounds, from the settings each test uses. Keepalive probes every `min(keepalive, 10s)`
// (connect::keepalive); with a user timeout, Linux ends an idle connection at the first
// probe after the peer has been silent that long: at most keepalive + user_timeout +
// one probe interval after it vanished.
const KEEPALIVE: Duration = Duration::from_secs(1);
const USER_TIMEOUT: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_secs(1);

fn keepalive_bound() -> Duration {
    KEEPALIVE + USER_TIMEOUT + KEEPALIVE.min(Duration::from_secs(10))
}

/// No active check: only the sockets' own timers (KEEPALIVE, USER_TIMEOUT) can notice.
fn liveness_config(server: SocketAddr) -> String {
    let defaults = format!(
        "keepalive = \"{}ms\"\nuser_timeout = \"{}ms\"",
        KEEPALIVE.as_millis(),
        USER_TIMEOUT.as_millis()
    );
    config(server, &defaults, "health = { check = \"none\" }")
}

#[test]
fn a_vanished_server_with_on_down_close_ends_its_streams_within_the_health_check_bound() {
    let net = match Net::build() {
        Ok(n) => n,
        Err(why) => skip!("{why}"),
    };
    let server = start_server(&net);
    // Slow keepalive and user timeout: only the health check can end these streams soon.
    let (interval, timeout, fall) = (Duration::from_millis(500), Duration::from_millis(500), 2u32);
    let g = start_gatehouse(
        &net,
        &config(
            server.addr,
            "keepalive = \"30s\"\nuser_timeout = \"30s\"",
            &format!(
                "on_down = \"close\"\nhealth = {{ check = \"tcp\", interval = \"{}ms\", timeout = \"{}ms\", rise = 1, fall = {fall} }}",
                interval.as_millis(),
                timeout.as_millis()
            ),
        ),
    );
    let (idle, busy) = idle_and_busy(&net, &g, Mode::Sink);

    let vanished = net.vanish(&net.server);
    // Checks are spaced `interval` ± 10 %.
    let bound = (interval * fall).mul_f64(1.1) + timeout + SLACK;
    let (idle_after, idle_how) = idle.ended_after(vanished);
    let (busy_after, busy_how) = busy.ended_after(vanished);
    figure!("on_down=close: idle stream ended after {idle_after:?} ({idle_how}), busy stream after {busy_after:?} ({busy_how}); bound {bound:?}");
    assert!(
        idle_after <= bound,
        "idle stream ended {idle_after:?} after the server vanished ({idle_how}); bound {bound:?}"
    );
    assert!(
        busy_after <= bound,
        "busy stream ended {busy_after:?} after the server vanished ({busy_how}); bound {bound:?}"
    );
    assert_both_closed(&net, &g, "server down", "server_down");
}

#[test]
fn a_vanished_server_with_on_down_keep_ends_its_streams_by_user_timeout_and_keepalive() {
    let net = match Net::build() {
        Ok(n) => n,
        Err(why) => skip!("{why}"),
    };
    let server = start_server(&net);
    // No active check: only the sockets' own timers can notice.
    let g = start_gatehouse(&net, &liveness_config(server.addr));
    let (idle, busy) = idle_and_busy(&net, &g, Mode::Sink);

    let vanished = net.vanish(&net.server);
    let (busy_after, busy_how) = busy.ended_after(vanished);
    let (idle_after, idle_how) = idle.ended_after(vanished);
    figure!(
        "on_down=keep: busy stream ended after {busy_after:?} ({busy_how}; bound {:?}), idle stream after {idle_after:?} ({idle_how}; bound {:?})",
        USER_TIMEOUT + SLACK,
        keepalive_bound() + SLACK
    );
    assert!(
        busy_after <= USER_TIMEOUT + SLACK,
        "stream with data in flight ended {busy_after:?} after the server vanished ({busy_how}); user_timeout {USER_TIMEOUT:?}"
    );
    assert!(
        idle_after <= keepalive_bound() + SLACK,
        "idle stream ended {idle_after:?} after the server vanished ({idle_how}); keepalive bound {:?}",
        keepalive_bound()
    );
    assert_both_closed(&net, &g, "server timed out", "server_timed_out");
}

#[test]
fn a_vanished_client_releases_its_server_connections_by_user_timeout_and_keepalive() {
    let net = match Net::build() {
        Ok(n) => n,
        Err(why) => skip!("{why}"),
    };
    let server = start_server(&net);
    let g = start_gatehouse(&net, &liveness_config(server.addr));
    // The server floods this client, as `kubectl logs -f` of a chatty pod would.
    let (idle, busy) = idle_and_busy(&net, &g, Mode::Flood);

    let vanished = net.vanish(&net.client);
    let [(busy_after, busy_how), (idle_after, idle_how)] = server_endings(&server, &g, vanished);
    figure!(
        "vanished client: server's flooding stream released after {busy_after:?} ({busy_how}; bound {:?}), idle stream after {idle_after:?} ({idle_how}; bound {:?})",
        USER_TIMEOUT + SLACK,
        keepalive_bound() + SLACK
    );
    assert!(
        busy_after <= USER_TIMEOUT + SLACK,
        "server-side stream with data in flight released {busy_after:?} after the client vanished ({busy_how})"
    );
    assert!(
        idle_after <= keepalive_bound() + SLACK,
        "server-side idle stream released {idle_after:?} after the client vanished ({idle_how}); keepalive bound {:?}",
        keepalive_bound()
    );
    assert_both_closed(&net, &g, "client timed out", "client_timed_out");
    drop((idle, busy));
}
