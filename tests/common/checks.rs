//! The kit of the health-check and failover tests (`tests/health.rs`,
//! `tests/failover.rs`): detection bounds derived from the check settings, and the
//! status API's view of the servers of backend "pool".
//!
//! Detection bounds: `fall` (or `rise`) jittered intervals (+10 %) plus the check
//! timeout, plus a fixed slack for scheduling on a busy machine and for the test's
//! polling of the status API.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::*;

/// Scheduling and status-polling slack added to every derived detection bound.
pub const SLACK: Duration = Duration::from_millis(1000);

/// `n` jittered intervals (at most +10 %) plus one check timeout plus [`SLACK`].
pub fn bound(n: u32, interval: Duration, timeout: Duration) -> Duration {
    interval.mul_f64(1.1) * n + timeout + SLACK
}

pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

pub fn on_fresh_ip() -> SocketAddr {
    SocketAddr::new(fresh_ip().into(), 0)
}

/// The status document of server `pool/name`.
pub fn server_doc(admin: SocketAddr, name: &str) -> serde_json::Value {
    let v = status(admin);
    for b in v["backends"].as_array().into_iter().flatten() {
        for s in b["servers"].as_array().into_iter().flatten() {
            if b["name"] == "pool" && s["name"] == name {
                return s.clone();
            }
        }
    }
    panic!("no server pool/{name} in status: {v:#}")
}

pub fn state(admin: SocketAddr, name: &str) -> String {
    server_state(admin, "pool", name)
}

/// Waits (bounded) for `pool/name` to reach `want`; returns how long it took.
pub fn wait_state(admin: SocketAddr, name: &str, want: &str, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    wait_until(timeout, || state(admin, name) == want).then(|| started.elapsed())
}

/// One short client: connect, read the name line of a `Backend::named`, close.
pub fn one_client(front: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&front, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match read_line(&mut s) {
        Ok(name) if !name.is_empty() => Ok(name),
        Ok(_) => Err("closed without a name".into()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Names seen by `n` sequential clients, counted.
pub fn names(front: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for i in 0..n {
        let name = one_client(front).unwrap_or_else(|e| panic!("client {i} of {n} failed: {e}"));
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

/// A server on a loopback address of its own whose health check goes to another port
/// (`health.port`, the same number for every server of the backend), so the test
/// decides its check apart from its traffic: [`Checked::sicken`] closes the check port
/// and the server goes DOWN while its traffic port goes on accepting, as an API server
/// whose `/readyz` fails still accepts TCP. A client sent to it anyway is seen
/// (a `Backend::named` greets it, a `Backend::silent` leaves it hanging), where a
/// killed server would only refuse and be retried elsewhere.
pub struct Checked {
    pub traffic: Backend,
    check: Option<Backend>,
    check_addr: SocketAddr,
}

impl Checked {
    /// `n` servers, each with the traffic backend `traffic(i, addr)` makes on its own
    /// address, and their common check port (its checks pass until [`Checked::sicken`]).
    pub fn servers(n: usize, traffic: impl Fn(usize, SocketAddr) -> Backend) -> (Vec<Checked>, u16) {
        let sick = Self::sick_servers(n, traffic);
        let port = sick.1;
        let servers = sick
            .0
            .into_iter()
            .map(|mut s| {
                s.heal();
                s
            })
            .collect();
        (servers, port)
    }

    /// Like [`Checked::servers`], every check port closed: DOWN from the first check.
    pub fn sick_servers(n: usize, traffic: impl Fn(usize, SocketAddr) -> Backend) -> (Vec<Checked>, u16) {
        for _ in 0..20 {
            let first = TcpListener::bind((fresh_ip(), 0)).expect("bind a fresh loopback address");
            let port = first.local_addr().unwrap().port();
            let mut addrs = vec![first.local_addr().unwrap()];
            let mut held = vec![first];
            while addrs.len() < n {
                let Ok(l) = TcpListener::bind((fresh_ip(), port)) else {
                    break;
                };
                addrs.push(l.local_addr().unwrap());
                held.push(l);
            }
            if addrs.len() < n {
                continue;
            }
            drop(held);
            let servers = addrs
                .into_iter()
                .enumerate()
                .map(|(i, check_addr)| Checked {
                    traffic: traffic(i, SocketAddr::new(check_addr.ip(), 0)),
                    check: None,
                    check_addr,
                })
                .collect();
            return (servers, port);
        }
        panic!("no port free on {n} fresh loopback addresses in 20 tries");
    }

    /// The address clients are sent to.
    pub fn addr(&self) -> SocketAddr {
        self.traffic.addr
    }

    /// Closes the check port: the check fails (refused), the traffic port still accepts.
    pub fn sicken(&mut self) {
        if let Some(check) = self.check.take() {
            check.kill();
        }
    }

    /// Opens the check port again: the check passes.
    pub fn heal(&mut self) {
        if self.check.is_none() {
            self.check = Some(Backend::silent(self.check_addr));
        }
    }
}

/// A tcp check on `port`, with `rest` (e.g. `interval = "200ms", fall = 1`).
pub fn check_on(port: u16, rest: &str) -> String {
    format!(r#"health = {{ check = "tcp", port = {port}, {rest} }}"#)
}
