//! An HA pair: two gatehouses sharing one address through keepalived (VRRP), run in
//! network namespaces this test creates, with the shipped
//! `deploy/keepalived/keepalived.conf` (its addresses swapped for test ones).
//!
//! The namespaces: a switch (a bridge), two gateways `lb1` and `lb2` (gatehouse +
//! keepalived each, both listening on the VIP with `freebind = true`), two API-server
//! stand-ins `be1` and `be2`, and a client that connects to the VIP every 50 ms. The
//! addresses (10.250.0.0/24) exist only inside those namespaces; the test's own
//! sockets are made on threads that entered them (setns), never in the host's.
//!
//! Measured and printed: failover time after the active gatehouse is killed, failed
//! connections meanwhile, what long-lived connections see, that the VIP stays put when
//! the failed gateway returns (nopreempt), what a drain of every server on the active
//! gateway costs, and a handover by stopping keepalived.

mod common;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Gatehouse, BIN};

const VIP: &str = "10.250.0.100";
const LB1: &str = "10.250.0.11";
const LB2: &str = "10.250.0.12";
const CLIENT: &str = "10.250.0.2";
const BE1: &str = "10.250.0.21";
const BE2: &str = "10.250.0.22";
const ADMIN: &str = "127.0.0.1:9100";
const SHIPPED: &str = include_str!("../deploy/keepalived/keepalived.conf");

// ---------------------------------------------------------------- namespaces

/// Runs `ip ARGS`; its failure is the test's.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The namespaces of one run, deleted (with what runs in them stopped first) on drop.
struct Net {
    prefix: String,
    made: Vec<String>,
}

impl Net {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Switch, gateways, servers, client: each node on the bridge with its address.
    fn build() -> Result<Net, String> {
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
    fn has_vip(&self, role: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns(role), "-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
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

/// Moves the calling thread into namespace `ns`: sockets it makes from now on live there.
fn enter(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns(2) on a descriptor we own; it changes only this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns).unwrap_or_else(|e| panic!("enter {ns}: {e}"));
        f()
    })
    .join()
    .expect("thread in namespace")
}

/// GET `path` from the admin API of the gatehouse in `ns`: (status, body).
fn admin_get(ns: &str, path: &'static str) -> (u16, String) {
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
struct Server {
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(ns: &str, name: &'static str, addr: &str) -> Server {
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
struct Attempt {
    start: Instant,
    end: Instant,
    /// The gateway address that served it, or what went wrong.
    outcome: Result<String, String>,
}

/// Opens a connection to the VIP and reads the server's greeting: (the stream, gateway).
fn open_through_vip(connect_timeout: Duration) -> Result<(TcpStream, String), String> {
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
struct ClientLoop {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    /// When each attempt, finished or not, started.
    starts: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ClientLoop {
    fn start(ns: &str) -> ClientLoop {
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
    fn since(&self, t: Instant) -> Vec<Attempt> {
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
    fn wait_served_by(&self, t: Instant, gateway: &str, timeout: Duration) -> bool {
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
struct Move {
    /// From `t` to the end of that first connection.
    took: Duration,
    /// Attempts started in that time, and how many of them failed.
    attempts: usize,
    failed: usize,
    slowest: Duration,
    errors: Vec<String>,
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
fn move_after(client: &ClientLoop, t: Instant, gateway: &str) -> Move {
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

/// Opens `n` long-lived connections (a kubectl watch) through the VIP from the client
/// namespace; each must reach `gateway`.
fn long_lived(ns: &str, n: usize, gateway: &'static str) -> Vec<TcpStream> {
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
fn what_long_lived_see(conns: Vec<TcpStream>) -> Vec<String> {
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

// ---------------------------------------------------------------- gatehouse and keepalived

fn gatehouse_config() -> String {
    format!(
        r#"[defaults]
connect_timeout = "1s"

[admin]
listen = "{ADMIN}"

[[listener]]
name = "kube-api"
bind = ["{VIP}:6443"]
backend = "control-plane"
freebind = true

[backend.control-plane]
servers = [
  {{ name = "be1", address = "{BE1}:8080" }},
  {{ name = "be2", address = "{BE2}:8080" }},
]
health = {{ check = "tcp", interval = "500ms", timeout = "300ms", rise = 1, fall = 2 }}
"#
    )
}

fn start_gatehouse(ns: &str) -> Gatehouse {
    Gatehouse::start_command(&gatehouse_config(), |config| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(BIN).arg("--config").arg(config);
        cmd
    })
    .unwrap_or_else(|e| panic!("gatehouse in {ns}: {e}"))
    .0
}

/// The shipped keepalived.conf with the test's addresses; every swap must find its text,
/// so that the test follows the file.
fn keepalived_config() -> String {
    let mut text = SHIPPED.to_string();
    for (from, to) in [
        ("http://127.0.0.1:9100/readyz", format!("http://{ADMIN}/readyz")),
        ("eno1", "eth0".to_string()),
        ("192.168.1.99", LB1.to_string()),
        ("192.168.1.98", LB2.to_string()),
        ("192.168.1.100/22", format!("{VIP}/24")),
    ] {
        assert!(
            text.contains(from),
            "deploy/keepalived/keepalived.conf no longer has {from:?}"
        );
        text = text.replace(from, &to);
    }
    text
}

/// keepalived in a namespace, with its own pid files and log; stopped on drop.
struct Keepalived {
    child: Option<Child>,
    log: PathBuf,
    vrrp_pid: PathBuf,
}

impl Keepalived {
    /// `id` is the config-id that picks this gateway's `@` lines of the shipped file.
    fn start(ns: &str, id: &str, dir: &Path) -> Keepalived {
        let conf = dir.join(format!("keepalived-{id}.conf"));
        std::fs::write(&conf, keepalived_config()).unwrap();
        let log = dir.join(format!("keepalived-{id}.log"));
        let out = File::create(&log).unwrap();
        let pid = |what: &str| dir.join(format!("{id}-{what}.pid"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
            ])
            .args(["--no-syslog", "--vrrp", "--config-id", id, "--use-file"])
            .arg(&conf)
            .arg("--pid")
            .arg(pid("main"))
            .arg("--vrrp_pid")
            .arg(pid("vrrp"))
            .arg("--checkers_pid")
            .arg(pid("checkers"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("run keepalived");
        Keepalived {
            child: Some(child),
            log,
            vrrp_pid: pid("vrrp"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times it has entered `state` (MASTER, BACKUP, FAULT).
    fn entered(&self, state: &str) -> usize {
        self.log().matches(&format!("Entering {state} STATE")).count()
    }

    /// SIGTERM (it gives the VIP away with a priority-0 advert), bounded wait, else SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on the keepalived we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        if !wait_until(Duration::from_secs(5), || matches!(child.try_wait(), Ok(Some(_)))) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Its VRRP child, should it outlive its parent (the file goes when it exits).
        if let Some(pid) = std::fs::read_to_string(&self.vrrp_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) on the VRRP process of the keepalived we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ctl(ns: &str, g: &Gatehouse, action: &str, server: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(BIN)
        .arg("--config")
        .arg(&g.config_path)
        .args(["ctl", action, server])
        .output()
        .expect("gatehouse ctl");
    assert!(
        out.status.success(),
        "gatehouse ctl {action} {server}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn missing_tool(tool: &str) -> bool {
    !Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------- the test

#[test]
fn a_keepalived_pair_moves_the_vip_when_gatehouse_fails_or_drains() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip!("the HA pair test needs root (network namespaces)");
    }
    for tool in ["ip", "keepalived", "curl"] {
        if missing_tool(tool) {
            skip!("the HA pair test needs {tool} (.ci/run installs it)");
        }
    }
    let net = match Net::build() {
        Ok(n) => n,
        Err(e) => skip!("cannot make network namespaces here: {e}"),
    };
    let (lb1, lb2) = (net.ns("lb1"), net.ns("lb2"));
    let dir = tempfile::tempdir().unwrap();
    let _be1 = Server::start(&net.ns("be1"), "be1", BE1);
    let _be2 = Server::start(&net.ns("be2"), "be2", BE2);

    // Both gatehouses start before either holds the VIP: freebind lets them listen on it.
    let mut g1 = start_gatehouse(&lb1);
    let g2 = start_gatehouse(&lb2);
    for ns in [&lb1, &lb2] {
        assert!(
            wait_until(Duration::from_secs(10), || admin_get(ns, "/readyz").0 == 200),
            "gatehouse in {ns} never ready: {:?}",
            admin_get(ns, "/readyz")
        );
    }
    assert!(!net.has_vip("lb1") && !net.has_vip("lb2"));

    let mut k1 = Keepalived::start(&lb1, "gallade", dir.path());
    assert!(
        wait_until(Duration::from_secs(15), || net.has_vip("lb1")),
        "lb1 never took the VIP; keepalived said:\n{}",
        k1.log()
    );
    let k2 = Keepalived::start(&lb2, "gallade-b", dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || k2.entered("BACKUP") >= 1),
        "lb2 never became BACKUP:\n{}",
        k2.log()
    );

    let cl = net.ns("cl");
    let client = ClientLoop::start(&cl);
    let t0 = Instant::now();
    assert!(
        client.wait_served_by(t0, LB1, Duration::from_secs(10)),
        "no connection through the VIP reached lb1"
    );

    // 1. The active gatehouse dies: lb1's track_script fails, lb1 goes to FAULT and
    //    gives the VIP away with a priority-0 advert, lb2 takes it.
    let watches = long_lived(&cl, 4, LB1);
    let killed = Instant::now();
    g1.signal(libc::SIGKILL);
    assert!(
        client.wait_served_by(killed, LB2, Duration::from_secs(15)),
        "no connection reached lb2 after lb1's gatehouse died; lb2 keepalived:\n{}",
        k2.log()
    );
    let kill = move_after(&client, killed, LB2);
    assert!(net.has_vip("lb2") && !net.has_vip("lb1"), "the VIP is on lb2 alone");
    let seen = what_long_lived_see(watches);
    eprintln!("FAILOVER, gatehouse killed on the active gateway: {kill}");
    eprintln!("  long-lived connections through it: {seen:?}");
    assert!(
        kill.took < Duration::from_secs(3),
        "failover took {} ms (target < 3 s)",
        kill.took.as_millis()
    );
    assert!(
        seen.iter().all(|s| s != "still open"),
        "a connection through a dead gatehouse cannot go on: {seen:?}"
    );

    // 2. lb1's gatehouse comes back: lb1 returns to BACKUP and, with nopreempt, the VIP
    //    stays on lb2.
    assert!(
        k1.entered("FAULT") >= 1,
        "lb1 went to FAULT when its gatehouse died:\n{}",
        k1.log()
    );
    let backups = k1.entered("BACKUP");
    g1 = start_gatehouse(&lb1);
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || k1.entered("BACKUP") > backups),
        "lb1 did not return to BACKUP:\n{}",
        k1.log()
    );
    let rejoined = back.elapsed();
    // Four advert intervals: a preempting lb1 would have taken the VIP by then.
    let watch = Instant::now();
    let mut moved = false;
    while watch.elapsed() < Duration::from_secs(4) {
        moved |= net.has_vip("lb1") || !net.has_vip("lb2");
        thread::sleep(Duration::from_millis(100));
    }
    let after_return: Vec<Attempt> = client
        .since(back)
        .into_iter()
        .filter(|a| a.end <= Instant::now())
        .collect();
    let failed = after_return.iter().filter(|a| a.outcome.is_err()).count();
    eprintln!(
        "NOPREEMPT: lb1 back in BACKUP {} ms after its gatehouse restarted; VIP still on lb2 4 s later: {}; \
         {failed} of {} connection attempts failed meanwhile",
        rejoined.as_millis(),
        !moved,
        after_return.len()
    );
    assert!(!moved, "with nopreempt the VIP stays on lb2");
    assert_eq!(failed, 0, "nothing changes for clients when lb1 returns");

    // 3. Every server drained on the active gateway: /readyz says why, the VIP moves.
    //    Until it has moved, lb2 closes new clients at once (no server takes them).
    let watches = long_lived(&cl, 4, LB2);
    let drained = Instant::now();
    ctl(&lb2, &g2, "drain", "control-plane/be1");
    ctl(&lb2, &g2, "drain", "control-plane/be2");
    let (code, body) = admin_get(&lb2, "/readyz");
    assert_eq!(
        (code, body.trim()),
        (503, "no server up in backend control-plane"),
        "/readyz with every server drained"
    );
    assert!(
        client.wait_served_by(drained, LB1, Duration::from_secs(15)),
        "the VIP did not move to lb1 after the drain:\n{}",
        k2.log()
    );
    let drain = move_after(&client, drained, LB1);
    let seen = what_long_lived_see(watches);
    eprintln!("DRAIN of every server on the active gateway (gatehouse ctl drain): {drain}");
    eprintln!("  long-lived connections through it: {seen:?}");
    assert!(
        drain.took < Duration::from_secs(3),
        "drain handover took {} ms",
        drain.took.as_millis()
    );
    assert!(
        drain.errors.iter().all(|e| e.starts_with("closed before the greeting")),
        "the only failures are clients lb2 closed for want of a server: {:?}",
        drain.errors
    );

    // 4. A handover that loses no new connection: lb2's servers back (lb2 to BACKUP),
    //    then keepalived stopped on the active gateway while its gatehouse runs on.
    ctl(&lb2, &g2, "enable", "control-plane/be1");
    ctl(&lb2, &g2, "enable", "control-plane/be2");
    let backups = k2.entered("BACKUP");
    assert!(
        wait_until(Duration::from_secs(10), || k2.entered("BACKUP") > backups),
        "lb2 did not return to BACKUP:\n{}",
        k2.log()
    );
    let watches = long_lived(&cl, 4, LB1);
    let handed = Instant::now();
    k1.stop();
    assert!(
        client.wait_served_by(handed, LB2, Duration::from_secs(15)),
        "the VIP did not move to lb2 when keepalived on lb1 stopped:\n{}",
        k2.log()
    );
    let handover = move_after(&client, handed, LB2);
    let seen = what_long_lived_see(watches);
    eprintln!("HANDOVER, keepalived stopped on the active gateway (gatehouse still running): {handover}");
    eprintln!("  long-lived connections through it: {seen:?}");
    assert_eq!(
        handover.failed, 0,
        "a handover loses no new connection: {:?}",
        handover.errors
    );

    // 5. The active gateway vanishes (power, cable): no priority-0 advert, so the
    //    backup waits out three missed adverts.
    let k1 = Keepalived::start(&lb1, "gallade", dir.path());
    assert!(
        wait_until(Duration::from_secs(10), || k1.entered("BACKUP") >= 1),
        "lb1's new keepalived never became BACKUP:\n{}",
        k1.log()
    );
    let watches = long_lived(&cl, 4, LB2);
    let lost = Instant::now();
    ip(&["-n", &net.ns("sw"), "link", "set", "v-lb2", "down"]).expect("cut lb2 off");
    assert!(
        client.wait_served_by(lost, LB1, Duration::from_secs(15)),
        "the VIP did not move to lb1 when lb2 vanished:\n{}",
        k1.log()
    );
    let vanish = move_after(&client, lost, LB1);
    let seen = what_long_lived_see(watches);
    eprintln!("FAILOVER, active gateway cut off the network: {vanish}");
    eprintln!("  long-lived connections through it: {seen:?}");
    assert!(
        vanish.took < Duration::from_secs(6),
        "3 missed adverts + skew is about 3.6 s; took {} ms",
        vanish.took.as_millis()
    );
    assert!(
        seen.iter().all(|s| s != "still open"),
        "the new gateway knows nothing of the old one's connections: {seen:?}"
    );

    // Stop what runs in the namespaces before they go.
    drop(client);
    drop((g1, g2, k1, k2));
    drop(net);
}

#[test]
fn a_freebind_listener_starts_on_an_address_this_host_lacks() {
    // 192.0.2.0/24 (TEST-NET-1) is never assigned to a host; nothing is sent to it.
    let config = |freebind: bool| {
        format!(
            r#"[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "vip"
bind = ["192.0.2.1:0"]
backend = "pool"
freebind = {freebind}

[backend.pool]
servers = [{{ name = "a", address = "127.0.0.1:9" }}]
health = {{ check = "none" }}
"#
        )
    };
    let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind").unwrap_or_default();
    if nonlocal.trim() == "0" {
        let refused = Gatehouse::try_start(&config(false)).err().unwrap_or_default();
        assert!(
            refused.contains("cannot bind 192.0.2.1:0") && refused.contains("assign requested address"),
            "without freebind the bind fails: {refused}"
        );
    }
    let g = Gatehouse::try_start(&config(true)).unwrap_or_else(|e| panic!("freebind listener: {e}"));
    assert_eq!(
        g.addr("vip").ip().to_string(),
        "192.0.2.1",
        "listening on the absent address"
    );
}

/// One listener over a backend whose only server refuses (tcp check: down at once).
fn down_backend_config(ready_when: &str) -> String {
    let refused = common::refused_addr();
    format!(
        r#"[admin]
listen = "127.0.0.1:0"
{ready_when}

[[listener]]
name = "front"
bind = ["127.0.0.1:0"]
backend = "pool"

[backend.pool]
servers = [{{ name = "a", address = "{refused}" }}]
health = {{ check = "tcp", interval = "200ms", timeout = "200ms", rise = 1, fall = 1 }}
"#
    )
}

#[test]
fn readyz_answers_503_naming_a_used_backend_with_no_server_up() {
    let g = Gatehouse::start(&down_backend_config(""));
    let (code, body) = common::http(g.admin(), "GET", "/readyz", &[]);
    assert_eq!((code, body.as_str()), (503, "no server up in backend pool\n"));
    let (_, metrics) = common::http(g.admin(), "GET", "/metrics", &[]);
    for line in [
        "gatehouse_ready 0",
        "gatehouse_readyz_unready_total{reason=\"no_server\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} in /metrics:\n{metrics}");
    }
    assert!(
        g.wait_log(
            "not ready: /readyz answers 503: no server up in backend pool",
            Duration::from_secs(5)
        ),
        "the change is logged:\n{}",
        g.log()
    );
}

#[test]
fn ready_when_listening_answers_200_whatever_the_servers() {
    let g = Gatehouse::start(&down_backend_config("ready_when = \"listening\""));
    let (code, body) = common::http(g.admin(), "GET", "/readyz", &[]);
    assert_eq!((code, body.as_str()), (200, "ready\n"));
}

#[test]
fn a_mistyped_ready_when_is_refused_with_its_place_and_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let config = down_backend_config("ready_when = \"all-backend\"");
    std::fs::write(&path, &config).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check accepted {config}");
    assert!(
        text.contains("gatehouse.toml:3:") && text.contains("did you mean `all-backends`?"),
        "want the line and a suggestion: {text}"
    );
}
