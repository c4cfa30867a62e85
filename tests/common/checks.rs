//! The kit of the health-check and failover tests (`tests/health.rs`,
//! `tests/failover.rs`): detection bounds derived from the check settings, and the
//! status API's view of the servers of backend "pool".
//!
//! Detection bounds: `fall` (or `rise`) jittered intervals (+10 %) plus the check
//! timeout, plus a fixed slack for scheduling on a busy machine and for the test's
//! polling of the status API.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
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
