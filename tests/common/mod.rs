//! The harness of the integration tests: the real gatehouse binary, run on a config
//! written by the test, with its readiness read from the sd_notify socket the test
//! plays; small backends (echo, named) on loopback; a bounded HTTP client for the
//! admin API; and the outside tools tests share: headless Chromium, `promtool`, network
//! namespaces (`ip netns`). Every wait here has a deadline.
#![allow(dead_code, unused_macros)]

pub mod checks;
pub mod exposition;
pub mod haproxy;
pub mod pool;
pub mod skips;
pub mod sockets;
pub mod tools;

pub use tools::*;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Prints a figure a test measured, and keeps it in `target/tmp/figures.txt`: `cargo
/// test` hides what passing tests print, and `.ci/run` shows that file after the tests.
macro_rules! figure {
    ($($arg:tt)*) => {
        $crate::common::record_figure(module_path!(), &format!($($arg)*))
    };
}

/// See [`figure!`].
pub fn record_figure(test: &str, line: &str) {
    eprintln!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "[{test}] {line}");
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A running gatehouse.
pub struct Gatehouse {
    child: Option<Child>,
    notify: UnixDatagram,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
    /// listener name (and "admin") → bound addresses, as announced when ready.
    pub bound: HashMap<String, Vec<SocketAddr>>,
}

impl Gatehouse {
    /// Starts gatehouse on `config` and waits (bounded) until it says READY=1.
    pub fn start(config: &str) -> Gatehouse {
        Self::try_start(config).unwrap_or_else(|e| panic!("gatehouse did not start: {e}"))
    }

    pub fn try_start(config: &str) -> Result<Gatehouse, String> {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Result<Gatehouse, String> {
        let (g, _ready) = Self::start_command(config, |config_path| {
            let mut cmd = Command::new(BIN);
            cmd.arg("--config").arg(config_path);
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd
        })?;
        Ok(g)
    }

    /// The (first) address listener `name` is bound to.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .bound
            .get(name)
            .and_then(|v| v.first())
            .unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.bound))
    }

    pub fn admin(&self) -> SocketAddr {
        self.addr("admin")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits for an sd_notify message matching `pred`; returns it.
    pub fn wait_notify(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no matching sd_notify message within {timeout:?}"));
            }
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .ok();
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if pred(&m) {
                        return Ok(m);
                    }
                }
                // A signal that lands on this thread (another test's child exiting) is
                // no answer either: wait on.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Writes a new config and reloads with SIGHUP; returns the STATUS of the READY
    /// that ends the reload.
    pub fn reload(&self, config: &str) -> String {
        std::fs::write(&self.config_path, config).expect("write config");
        self.signal(libc::SIGHUP);
        self.wait_notify(|m| m.contains("RELOADING=1"), Duration::from_secs(10))
            .expect("RELOADING=1 after SIGHUP");
        self.wait_notify(|m| m.contains("READY=1"), Duration::from_secs(30))
            .expect("READY=1 after a reload")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (bounded) until the log holds `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// SIGTERM, then waits for the exit (bounded; killed if it does not stop).
    pub fn stop(mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(timeout);
        (status, self.log())
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes. For conditions that
/// have no signal to wait on (a counter in another process); always bounded.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback address in 127.0.0.0/8 no one else uses: a fresh stand-in for a host.
pub fn fresh_ip() -> std::net::Ipv4Addr {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    let salt = std::process::id() % 200;
    std::net::Ipv4Addr::new(127, 100 + (salt % 100) as u8, (n / 250) as u8 + 1, (n % 250) as u8 + 2)
}

/// An address nobody listens on: connects are refused at once.
pub fn refused_addr() -> SocketAddr {
    SocketAddr::new(fresh_ip().into(), 9)
}

/// A test backend server on loopback, answering each connection in a thread.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
    /// Clones of open connections, so that `kill` can reset them; each is removed
    /// when its handler returns, so that the handler's close really closes.
    connections: Arc<Mutex<HashMap<usize, TcpStream>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Backend {
    /// Binds `addr` (port 0 for any) and serves each connection with `handler`.
    pub fn serve(addr: SocketAddr, handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let handler = Arc::new(handler);
        let thread = {
            let (stop, accepted, connections) = (stop.clone(), accepted.clone(), connections.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(s) => {
                            let id = accepted.fetch_add(1, Ordering::AcqRel);
                            if let Ok(c) = s.try_clone() {
                                connections.lock().unwrap().insert(id, c);
                            }
                            let h = handler.clone();
                            let connections = connections.clone();
                            thread::spawn(move || {
                                h(s);
                                connections.lock().unwrap().remove(&id);
                            });
                        }
                        Err(_) => continue,
                    }
                }
            })
        };
        Backend {
            addr,
            stop,
            accepted,
            connections,
            thread: Some(thread),
        }
    }

    /// Echoes every byte back until the client closes, then closes.
    pub fn echo(addr: SocketAddr) -> Backend {
        Backend::serve(addr, |mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// Writes `name\n` on accept, then echoes.
    pub fn named(addr: SocketAddr, name: &'static str) -> Backend {
        Backend::serve(addr, move |mut s| {
            if s.write_all(format!("{name}\n").as_bytes()).is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    }

    /// Accepts and never says a word: reads until the client closes. A client that
    /// reaches it hangs, so a wrong pick shows (where a refusing server is retried).
    pub fn silent(addr: SocketAddr) -> Backend {
        Backend::serve(addr, |mut s| {
            let mut buf = [0u8; 4096];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        })
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Stops accepting (the port is closed: connects are refused) and resets the
    /// connections it holds.
    pub fn kill(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // Wake the blocking accept so that it sees the stop flag.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = t.join();
        }
        for (_, c) in self.connections.lock().unwrap().drain() {
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Connects to gatehouse with a bounded timeout.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one line (the name a `Backend::named` sends).
pub fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => out.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A bounded HTTP/1.1 request; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = connect(addr);
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// The JSON of the admin status API.
pub fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/api/v1/status", &[]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status is JSON")
}

/// The state of server `backend/server` in the status API.
pub fn server_state(admin: SocketAddr, backend: &str, server: &str) -> String {
    let v = status(admin);
    for b in v["backends"].as_array().into_iter().flatten() {
        if b["name"] == backend {
            for s in b["servers"].as_array().into_iter().flatten() {
                if s["name"] == server {
                    return s["state"].as_str().unwrap_or_default().to_string();
                }
            }
        }
    }
    panic!("no server {backend}/{server} in status")
}

/// A minimal config: one listener on a fresh loopback address, one backend.
pub fn config(servers: &[String], backend_extra: &str, defaults: &str) -> String {
    config_on("127.0.0.1:0", servers, backend_extra, defaults)
}

/// [`config`] with listener `front` bound to `bind` (`ADDRESS:PORT`).
pub fn config_on(bind: &str, servers: &[String], backend_extra: &str, defaults: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("  {s},")).collect();
    format!(
        r#"[defaults]
{defaults}

[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "front"
bind = ["{bind}"]
backend = "pool"

[backend.pool]
servers = [
{}
]
{backend_extra}
"#,
        list.join("\n")
    )
}

/// `{ name = "...", address = "..." }`
pub fn server(name: &str, addr: SocketAddr) -> String {
    format!(r#"{{ name = "{name}", address = "{addr}" }}"#)
}

/// Path of a file in the test's temp dir.
pub fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Skips a test that needs something this machine lacks (root, a tool), loudly: the
/// skip is recorded in `target/tmp/skips.txt`, and with `CI` set it fails the test
/// unless `skips::ALLOWED` lists it. Never for a setup error: that is a failure.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {{
        $crate::common::skips::skip(module_path!(), &format!($($arg)*));
        return;
    }};
}

impl Gatehouse {
    /// Like `start_with`, but runs the command `command` builds from the config path (a
    /// wrapper, inherited sockets, extra arguments), and returns the READY=1 message too.
    /// The harness adds the notify socket, RUST_LOG and the log file.
    pub fn start_command(config: &str, command: impl FnOnce(&Path) -> Command) -> Result<(Gatehouse, String), String> {
        Self::start_command_to(config, None, command)
    }

    /// Like `start_command`, with stdout sent to `stdout` instead of the log file (which
    /// then holds stderr alone).
    pub fn start_command_to(
        config: &str,
        stdout: Option<Stdio>,
        command: impl FnOnce(&Path) -> Command,
    ) -> Result<(Gatehouse, String), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).map_err(|e| e.to_string())?;
        let log_path = dir.path().join("gatehouse.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = command(&config_path);
        // The test's own RUST_LOG, if its command sets one, wins.
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env(
                "RUST_LOG",
                std::env::var("GATEHOUSE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(match stdout {
                Some(out) => out,
                None => log.try_clone().map_err(|e| e.to_string())?.into(),
            })
            .stderr(log);
        let child = cmd.spawn().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        let mut g = Gatehouse {
            child: Some(child),
            notify,
            dir,
            config_path,
            log_path,
            bound: HashMap::new(),
        };
        // READY=1 within 30 s; a gatehouse that exits instead is told at once.
        let deadline = Instant::now() + Duration::from_secs(30);
        let msg = loop {
            let step = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            match g.wait_notify(|m| m.contains("READY=1"), step) {
                Ok(m) => break m,
                Err(e) => {
                    let status = g.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                    if status.is_some() || Instant::now() >= deadline {
                        return Err(format!("{e} (exit: {status:?})\nlog:\n{}", g.log()));
                    }
                }
            }
        };
        for list in msg.lines().filter_map(|l| l.strip_prefix("X_GATEHOUSE_LISTENERS=")) {
            for item in list.split(',').filter(|s| !s.is_empty()) {
                let (name, addr) = item.split_once('=').ok_or("bad listener list")?;
                let addr: SocketAddr = addr.parse().map_err(|_| "bad listener address")?;
                g.bound.entry(name.to_string()).or_default().push(addr);
            }
        }
        Ok((g, msg))
    }

    /// Starts gatehouse on `config` with `RLIMIT_NOFILE` set to `nofile` (soft and hard).
    pub fn start_with_nofile(config: &str, nofile: u64) -> Gatehouse {
        use std::os::unix::process::CommandExt;
        let (g, _) = Gatehouse::start_command(config, |path| {
            let mut cmd = Command::new(BIN);
            cmd.arg("--config").arg(path);
            let limit = libc::rlimit {
                rlim_cur: nofile as libc::rlim_t,
                rlim_max: nofile as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe; `limit` is a plain value copied in.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd
        })
        .unwrap_or_else(|e| panic!("gatehouse did not start: {e}"));
        g
    }

    /// Starts gatehouse on `config` inside network namespace `ns` (`ip netns exec`).
    pub fn start_in_netns(ns: &str, config: &str) -> Gatehouse {
        Gatehouse::start_command(config, |path| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(BIN).arg("--config").arg(path);
            cmd
        })
        .unwrap_or_else(|e| panic!("gatehouse in {ns}: {e}"))
        .0
    }
}

/// The sum of the series of metric `name` whose labels include `labels`.
pub fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (code, body) = http(admin, "GET", "/metrics", &[]);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            (n == name && all).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A client connection from source address `src` (any address in 127.0.0.0/8); panics
/// if it cannot be made within 5 s. Reads and writes give up after 10 s.
pub fn connect_from(src: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    try_connect_from(src, to, Duration::from_secs(5), Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
}

/// A client connection from source address `src`, made within `connect`, its reads and
/// writes bounded by `io`; the error names the step that failed (same kind as the cause).
pub fn try_connect_from(
    src: std::net::IpAddr,
    to: SocketAddr,
    connect: Duration,
    io: Duration,
) -> std::io::Result<TcpStream> {
    let step = |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    let s = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)
        .map_err(step(format!("socket for {to}")))?;
    s.bind(&SocketAddr::new(src, 0).into())
        .map_err(step(format!("bind {src}")))?;
    s.connect_timeout(&to.into(), connect)
        .map_err(step(format!("connect {to} from {src}")))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(io))?;
    s.set_write_timeout(Some(io))?;
    Ok(s)
}

/// Clients accepted on each data-path event loop so far, by loop ("0", "1", …), from
/// `/metrics`; as many entries as the status page lists loops (less "main").
pub fn accepted_per_loop(admin: SocketAddr) -> Vec<f64> {
    let loops = status(admin)["event_loops"]
        .as_array()
        .map_or(0, Vec::len)
        .saturating_sub(1);
    (0..loops)
        .map(|i| {
            metric(
                admin,
                "gatehouse_event_loop_accepted_total",
                &[("loop", &i.to_string())],
            )
        })
        .collect()
}
