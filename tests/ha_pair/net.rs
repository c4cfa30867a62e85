//! The test's network: namespaces joined by a bridge, threads that enter them, the
//! API-server stand-ins, and the client loop that measures what a move of the VIP costs.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{enter, in_ns, ip, output_within, wait_until};
use crate::{ADMIN, BE1, BE2, CLIENT, LB1, LB2, VIP};

// ---------------------------------------------------------------- namespaces

/// The namespaces of one run, deleted (with what runs in them stopped first) on drop.
pub struct Net {
    prefix: String,
    made: Vec<String>,
}

impl Net {
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Switch, gateways, servers, client: each node on the bridge with its address.
    pub fn build() -> Result<Net, String> {
        let mut net = Net {
            prefix: format!("gh-ha-{}", std::process::id()),
            made: Vec::new(),
        };
        let sw = net.ns("sw");
        ip(&["netns", "add", &sw])?;
        net.made.push(sw.clone());
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (role, addr) in [("lb1", LB1), ("lb2", LB2), ("be1", BE1), ("be2", BE2), ("cl", CLIENT)] {
            let ns = net.ns(role);
            ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let port = format!("v-{role}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// Whether namespace `role` holds the VIP now.
    pub fn has_vip(&self, role: &str) -> bool {
        output_within(
            Command::new("ip").args(["-n", &self.ns(role), "-4", "-o", "addr", "show", "dev", "eth0"]),
            Duration::from_secs(10),
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{VIP}/")))
        .unwrap_or(false)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// GET `path` from the admin API of the gatehouse in `ns`: (status, body).
pub fn admin_get(ns: &str, path: &'static str) -> (u16, String) {
    in_ns(ns, move || {
        let addr: SocketAddr = ADMIN.parse().unwrap();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
                let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                (code, body.to_string())
            }
            Err(e) => (0, e.to_string()),
        }
    })
}

// ---------------------------------------------------------------- servers and client

/// An API-server stand-in inside its namespace: says `NAME via GATEWAY-ADDRESS`, then echoes.
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(ns: &str, name: &'static str, addr: &str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let addr: SocketAddr = format!("{addr}:8080").parse().unwrap();
        let listener = in_ns(ns, move || TcpListener::bind(addr)).expect("server bind");
        listener.set_nonblocking(true).unwrap();
        let flag = stop.clone();
        thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        s.set_nonblocking(false).ok();
                        thread::spawn(move || {
                            if s.write_all(format!("{name} via {}\n", peer.ip()).as_bytes()).is_err() {
                                return;
                            }
                            let mut buf = [0u8; 4096];
                            while let Ok(n @ 1..) = s.read(&mut buf) {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    // No readiness signal to wait on across a nonblocking accept: a short
                    // pause, so that the stop flag is seen.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(20)),
                    Err(_) => {}
                }
            }
        });
        Server { stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// One connection attempt of the client loop.
#[derive(Clone)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    /// The gateway address that served it, or what went wrong.
    pub outcome: Result<String, String>,
}

/// Opens a connection to the VIP and reads the server's greeting: (the stream, gateway).
pub fn open_through_vip(connect_timeout: Duration) -> Result<(TcpStream, String), String> {
    let vip: SocketAddr = format!("{VIP}:6443").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&vip, connect_timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => {
                return Err(format!(
                    "closed before the greeting (got {:?})",
                    String::from_utf8_lossy(&line)
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let gateway = line.rsplit(' ').next().unwrap_or_default().to_string();
    Ok((s, gateway))
}

/// Starts a connection to the VIP every 50 ms from the client namespace, each on a
/// thread of its own (so a slow one does not thin out the others), and records each.
/// The connect timeout is 3 s (kubectl waits longer): a SYN retransmitted while the
/// VIP moves counts as slow, not failed.
pub struct ClientLoop {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    /// When each attempt, finished or not, started.
    starts: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ClientLoop {
    pub fn start(ns: &str) -> ClientLoop {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (a, sts, st, fl, ns) = (
            attempts.clone(),
            starts.clone(),
            stop.clone(),
            in_flight.clone(),
            ns.to_string(),
        );
        let thread = thread::spawn(move || {
            enter(&ns).expect("enter client namespace");
            let mut next = Instant::now();
            while !st.load(Ordering::Acquire) {
                // Threads spawned here start in the client namespace too.
                let (a, fl) = (a.clone(), fl.clone());
                fl.fetch_add(1, Ordering::AcqRel);
                let start = Instant::now();
                sts.lock().unwrap().push(start);
                thread::spawn(move || {
                    let outcome = open_through_vip(Duration::from_secs(3)).map(|(_, gw)| gw);
                    a.lock().unwrap().push(Attempt {
                        start,
                        end: Instant::now(),
                        outcome,
                    });
                    fl.fetch_sub(1, Ordering::AcqRel);
                });
                // The loop's pace (one attempt per 50 ms), not a synchronisation.
                next += Duration::from_millis(50);
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        ClientLoop {
            attempts,
            starts,
            stop,
            in_flight,
            thread: Some(thread),
        }
    }

    /// Finished attempts started at or after `t`, in order of start.
    pub fn since(&self, t: Instant) -> Vec<Attempt> {
        let mut v: Vec<Attempt> = self
            .attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.start >= t)
            .cloned()
            .collect();
        v.sort_by_key(|a| a.start);
        v
    }

    /// Waits (bounded) for an attempt started after `t` that `gateway` served.
    pub fn wait_served_by(&self, t: Instant, gateway: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.since(t).iter().any(|a| a.outcome.as_deref() == Ok(gateway))
        })
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Each attempt ends within its 3 s connect and 2 s read timeouts.
        wait_until(Duration::from_secs(6), || self.in_flight.load(Ordering::Acquire) == 0);
    }
}

/// What the client saw from `t` until the first connection through `gateway` completed.
pub struct Move {
    /// From `t` to the end of that first connection.
    pub took: Duration,
    /// Attempts started in that time, and how many of them failed.
    pub attempts: usize,
    pub failed: usize,
    pub slowest: Duration,
    pub errors: Vec<String>,
}

impl std::fmt::Display for Move {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ms until a new connection succeeded through the new gateway; {} of {} connection attempts \
             started meanwhile failed; slowest attempt {} ms",
            self.took.as_millis(),
            self.failed,
            self.attempts,
            self.slowest.as_millis()
        )?;
        if let Some(e) = self.errors.first() {
            write!(f, "; failures like: {e}")?;
        }
        Ok(())
    }
}

/// What the client saw from `t` until a connection through `gateway` first succeeded
/// (waiting, bounded, for the attempts of that time that are still connecting).
pub fn move_after(client: &ClientLoop, t: Instant, gateway: &str) -> Move {
    let first_end = client
        .since(t)
        .iter()
        .filter(|a| a.outcome.as_deref() == Ok(gateway))
        .map(|a| a.end)
        .min()
        .expect("a connection through the new gateway");
    // Attempts started before it may still be connecting (a retransmitted SYN): wait
    // for them, bounded by their timeouts.
    let in_window = |at: &Instant| *at >= t && *at <= first_end;
    let started = client.starts.lock().unwrap().iter().filter(|s| in_window(s)).count();
    wait_until(Duration::from_secs(6), || {
        client.since(t).iter().filter(|a| in_window(&a.start)).count() >= started
    });
    let window: Vec<Attempt> = client.since(t).into_iter().filter(|a| a.start <= first_end).collect();
    let errors: Vec<String> = window.iter().filter_map(|a| a.outcome.clone().err()).collect();
    Move {
        took: first_end - t,
        attempts: window.len(),
        failed: errors.len(),
        slowest: window.iter().map(|a| a.end - a.start).max().unwrap_or_default(),
        errors,
    }
}

impl Move {
    /// No new connection was refused or closed by a gateway while the VIP moved: each
    /// was served, or (at most one) was caught by the move itself — accepted by the old
    /// holder in the instant before the address left it, so that its answer could not
    /// leave (a read that times out). That race is VRRP's, not gatehouse's: no
    /// connection state moves with the address (docs/ha-pair.md).
    pub fn assert_none_refused(&self, when: &str) {
        let caught_by_move = self.errors.iter().filter(|e| e.starts_with("read: ")).count();
        assert!(
            self.failed == caught_by_move && caught_by_move <= 1,
            "{} of {} new connections failed {when}, {} of them not caught by the move itself: {:?}",
            self.failed,
            self.attempts,
            self.failed - caught_by_move,
            self.errors
        );
    }
}

/// Opens `n` long-lived connections (a kubectl watch) through the VIP from the client
/// namespace; each must reach `gateway`.
pub fn long_lived(ns: &str, n: usize, gateway: &'static str) -> Vec<TcpStream> {
    in_ns(ns, move || {
        (0..n)
            .map(|_| {
                let (s, gw) = open_through_vip(Duration::from_secs(3)).expect("long-lived connection");
                assert_eq!(gw, gateway, "long-lived connections go through the VIP's holder");
                s
            })
            .collect()
    })
}

/// What each long-lived connection sees when it next sends: an echo, EOF, or an error.
pub fn what_long_lived_see(conns: Vec<TcpStream>) -> Vec<String> {
    conns
        .into_iter()
        .map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(3))).ok();
            if let Err(e) = s.write_all(b"still there?\n") {
                return format!("write error: {}", e.kind());
            }
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) => "closed (EOF)".to_string(),
                Ok(_) => "still open".to_string(),
                Err(e) => format!("error: {}", e.kind()),
            }
        })
        .collect()
}
