//! End-to-end load benchmark: the real gatehouse binary between clients and backends
//! on loopback, against the same clients talking to the backends directly.
//!
//! Backends run in this process (tokio): a bulk sink/source, an echo server and an
//! idle holder, each on 127.0.0.1:0. gatehouse is started on a config written here
//! (listeners on 127.0.0.{1,2,3}:0, `[defaults] forwarding` as asked, no health
//! checks, logs at info to a file); its bound addresses come from the `READY=1`
//! message on the sd_notify socket this bench plays. Measured:
//!
//! - bulk throughput, client → server with 1 and 4 streams and server → client with
//!   1 stream (Gbit/s, counted by the receiver, including the drain at the end);
//! - connection rate: K concurrent clients on one thread (64, like `wrk -t1 -c64`),
//!   each connecting, sending 64 bytes, reading the echo and closing, for the
//!   duration (connections/s), and the p50/p99 of connect-to-echo latency;
//! - memory per idle connection: VmRSS of gatehouse before and after N idle
//!   connections are established through it (each has forwarded one byte).
//!
//! It builds nothing: it runs `$GATEHOUSE_BIN`, or the binary cargo built for this
//! bench (`target/release/gatehouse`), and fails with a clear message when there is
//! none. Every wait has a deadline; all traffic stays on loopback.
//!
//! ```text
//! cargo bench --bench load -- [--duration SECS] [--clients K] [--idle N]
//!                             [--forwarding splice,copy] [--rounds R]
//! ```
//! The same options as environment variables: LOAD_DURATION, LOAD_CLIENTS, LOAD_IDLE,
//! LOAD_FORWARDING, LOAD_ROUNDS.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: usize = 256 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

struct Options {
    duration: Duration,
    clients: usize,
    idle: usize,
    forwarding: Vec<String>,
    rounds: usize,
    bin: PathBuf,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--duration SECS (3)] [--clients K (64)] \
[--idle N (2000)] [--forwarding splice,copy] [--rounds R (1)] [--bin PATH]\n\
(or LOAD_DURATION, LOAD_CLIENTS, LOAD_IDLE, LOAD_FORWARDING, LOAD_ROUNDS, GATEHOUSE_BIN)";

fn options() -> Result<Options, String> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let mut duration = env("LOAD_DURATION", "3");
    let mut clients = env("LOAD_CLIENTS", "64");
    let mut idle = env("LOAD_IDLE", "2000");
    let mut forwarding = env("LOAD_FORWARDING", "splice,copy");
    let mut rounds = env("LOAD_ROUNDS", "1");
    let mut bin = std::env::var("GATEHOUSE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gatehouse").to_string());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => continue,
            "--duration" => &mut duration,
            "--clients" => &mut clients,
            "--idle" => &mut idle,
            "--forwarding" => &mut forwarding,
            "--rounds" => &mut rounds,
            "--bin" => &mut bin,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        };
        *slot = args.next().ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
    }
    let number = |name: &str, v: &str, range: std::ops::RangeInclusive<f64>| -> Result<f64, String> {
        v.parse::<f64>()
            .ok()
            .filter(|x| range.contains(x))
            .ok_or_else(|| format!("{name} {v:?}: give a number in {range:?}"))
    };
    let forwarding: Vec<String> = forwarding
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if let Some(bad) = forwarding.iter().find(|f| *f != "splice" && *f != "copy") {
        return Err(format!("--forwarding {bad:?}: give splice, copy or both (splice,copy)"));
    }
    Ok(Options {
        duration: Duration::from_secs_f64(number("--duration", &duration, 0.5..=60.0)?),
        clients: number("--clients", &clients, 1.0..=256.0)? as usize,
        idle: number("--idle", &idle, 1.0..=8000.0)? as usize,
        forwarding,
        rounds: number("--rounds", &rounds, 1.0..=20.0)? as usize,
        bin: PathBuf::from(bin),
    })
}

// --- backends (in this process) ---------------------------------------------------

/// A count another thread can wait on, with a deadline.
#[derive(Default)]
struct Count {
    n: Mutex<u64>,
    changed: Condvar,
}

impl Count {
    fn add(&self, k: u64) {
        let mut n = self.n.lock().unwrap_or_else(|p| p.into_inner());
        *n += k;
        self.changed.notify_all();
    }

    fn get(&self) -> u64 {
        *self.n.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the count is at least `target`; returns the count reached.
    fn wait_for(&self, target: u64, timeout: Duration) -> u64 {
        let n = self.n.lock().unwrap_or_else(|p| p.into_inner());
        let (n, _) = self
            .changed
            .wait_timeout_while(n, timeout, |n| *n < target)
            .unwrap_or_else(|p| p.into_inner());
        *n
    }
}

struct Backends {
    /// First byte `S`: read to the end, then answer the byte count (8 bytes, big
    /// endian). First byte `R`: write until the client half-closes.
    bulk: SocketAddr,
    /// Echoes everything until the client closes.
    echo: SocketAddr,
    /// Reads and discards; counts connections and bytes.
    idle: SocketAddr,
    idle_bytes: Arc<Count>,
    idle_closed: Arc<Count>,
    _runtime: tokio::runtime::Runtime,
}

impl Backends {
    fn start() -> Result<Backends, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let bind = |rt: &tokio::runtime::Runtime| {
            rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .map_err(|e| format!("bind a backend on 127.0.0.1: {e}"))
        };
        let (bulk, echo, idle) = (bind(&runtime)?, bind(&runtime)?, bind(&runtime)?);
        let addr = |l: &tokio::net::TcpListener| l.local_addr().map_err(|e| e.to_string());
        let (bulk_addr, echo_addr, idle_addr) = (addr(&bulk)?, addr(&echo)?, addr(&idle)?);
        let idle_bytes = Arc::new(Count::default());
        let idle_closed = Arc::new(Count::default());
        runtime.spawn(serve(bulk, |s| async move {
            let _ = bulk_conn(s).await;
        }));
        runtime.spawn(serve(echo, |mut s| async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                if s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }));
        let (bytes, closed) = (idle_bytes.clone(), idle_closed.clone());
        runtime.spawn(serve(idle, move |mut s| {
            let (bytes, closed) = (bytes.clone(), closed.clone());
            async move {
                let mut buf = [0u8; 512];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    bytes.add(n as u64);
                }
                closed.add(1);
            }
        }));
        Ok(Backends {
            bulk: bulk_addr,
            echo: echo_addr,
            idle: idle_addr,
            idle_bytes,
            idle_closed,
            _runtime: runtime,
        })
    }
}

async fn serve<F, Fut>(listener: tokio::net::TcpListener, handler: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handler(s));
            }
            // Out of file descriptors or similar: back off briefly, keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn bulk_conn(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode).await?;
    let mut buf = vec![0u8; CHUNK];
    match mode[0] {
        b'S' => {
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            s.write_all(&total.to_be_bytes()).await?;
            s.shutdown().await
        }
        b'R' => {
            let (mut rd, mut wr) = s.into_split();
            let stop = async move {
                let mut b = [0u8; 64];
                while let Ok(1..) = rd.read(&mut b).await {}
            };
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    r = wr.write_all(&buf) => r?,
                }
            }
            wr.shutdown().await
        }
        _ => Ok(()),
    }
}

// --- gatehouse ---------------------------------------------------------------------

struct Gatehouse {
    child: Child,
    bound: HashMap<String, SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Gatehouse {
    fn start(bin: &PathBuf, forwarding: &str, b: &Backends) -> Result<Gatehouse, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut config = format!("[defaults]\nforwarding = \"{forwarding}\"\n");
        // One loopback address each: the config rejects the same "127.0.0.1:0" twice.
        for (i, (name, addr)) in [("bulk", b.bulk), ("echo", b.echo), ("idle", b.idle)]
            .iter()
            .enumerate()
        {
            config += &format!(
                "\n[[listener]]\nname = \"{name}\"\nbind = [\"127.0.0.{}:0\"]\nbackend = \"{name}\"\n\n\
                 [backend.{name}]\nservers = [\"{addr}\"]\nhealth = {{ check = \"none\" }}\n",
                i + 1
            );
        }
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).map_err(|e| e.to_string())?;
        // Logs go to a file, as they would go to journald: one line per connection.
        let log = std::fs::File::create(dir.path().join("gatehouse.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config_path)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let mut g = Gatehouse {
            child,
            bound: HashMap::new(),
            _dir: dir,
        };
        let ready = wait_ready(&notify, &mut g.child, Duration::from_secs(20)).map_err(|e| {
            let log = std::fs::read_to_string(g._dir.path().join("gatehouse.log")).unwrap_or_default();
            format!("gatehouse did not get ready: {e}\nlog:\n{log}")
        })?;
        for line in ready.lines() {
            if let Some(list) = line.strip_prefix("X_GATEHOUSE_LISTENERS=") {
                for item in list.split(',').filter(|s| !s.is_empty()) {
                    if let Some((name, addr)) = item.split_once('=') {
                        if let Ok(addr) = addr.parse() {
                            g.bound.entry(name.to_string()).or_insert(addr);
                        }
                    }
                }
            }
        }
        for name in ["bulk", "echo", "idle"] {
            if !g.bound.contains_key(name) {
                return Err(format!("READY=1 did not name listener {name:?}: {ready:?}"));
            }
        }
        Ok(g)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `timeout`.
    fn stop(mut self, timeout: Duration) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `READY=1` from `child`, or its exit, whichever comes first.
fn wait_ready(notify: &UnixDatagram, child: &mut Child, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 8192];
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status})"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no READY=1 on the notify socket within {timeout:?}"));
        }
        notify
            .set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .map_err(|e| e.to_string())?;
        match notify.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if m.lines().any(|l| l == "READY=1") {
                    return Ok(m);
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// --- workloads -----------------------------------------------------------------------

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Client → server: `streams` connections write for `duration`; the sink's count of
/// bytes received over the time until its answer arrives. Gbit/s.
fn upload(addr: SocketAddr, streams: usize, duration: Duration) -> Result<f64, String> {
    let start = Arc::new(Barrier::new(streams));
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let start = start.clone();
            thread::spawn(move || -> std::io::Result<(u64, Duration)> {
                let s = connect(addr);
                start.wait();
                let mut s = s?;
                let buf = vec![0x5au8; CHUNK];
                let t0 = Instant::now();
                s.write_all(b"S")?;
                while t0.elapsed() < duration {
                    s.write_all(&buf)?;
                }
                s.shutdown(Shutdown::Write)?;
                let mut count = [0u8; 8];
                s.read_exact(&mut count)?;
                Ok((u64::from_be_bytes(count), t0.elapsed()))
            })
        })
        .collect();
    let (mut bytes, mut longest) = (0u64, Duration::ZERO);
    for w in workers {
        let (b, t) = w
            .join()
            .map_err(|_| "upload thread panicked".to_string())?
            .map_err(|e| format!("upload: {e}"))?;
        bytes += b;
        longest = longest.max(t);
    }
    Ok(bytes as f64 * 8.0 / longest.as_secs_f64() / 1e9)
}

/// Server → client, one stream: read for `duration`, half-close, read to the end. Gbit/s.
fn download(addr: SocketAddr, duration: Duration) -> Result<f64, String> {
    let run = || -> std::io::Result<f64> {
        let mut s = connect(addr)?;
        let mut buf = vec![0u8; CHUNK];
        let t0 = Instant::now();
        s.write_all(b"R")?;
        let mut bytes = 0u64;
        let mut half_closed = false;
        loop {
            if !half_closed && t0.elapsed() >= duration {
                s.shutdown(Shutdown::Write)?;
                half_closed = true;
            }
            match s.read(&mut buf)? {
                0 => break,
                n => bytes += n as u64,
            }
            if t0.elapsed() > duration + IO_TIMEOUT {
                return Err(std::io::Error::other("the source did not stop after the half-close"));
            }
        }
        Ok(bytes as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9)
    };
    run().map_err(|e| format!("download: {e}"))
}

struct ConnRate {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// `clients` concurrent clients on one thread (as `wrk -t1` does): connect, send 64
/// bytes, read the echo, close; for `duration`.
fn conn_rate(addr: SocketAddr, clients: usize, duration: Duration) -> Result<ConnRate, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let (latencies, errors, took) = rt.block_on(async move {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                tokio::spawn(async move {
                    let (mut latencies, mut errors) = (Vec::<u32>::with_capacity(16 * 1024), 0u64);
                    let request = [b'a' + (c % 26) as u8; 64];
                    let mut reply = [0u8; 64];
                    while t0.elapsed() < duration {
                        let t = Instant::now();
                        let once = async {
                            let mut s = tokio::net::TcpStream::connect(addr).await?;
                            s.set_nodelay(true)?;
                            s.write_all(&request).await?;
                            s.read_exact(&mut reply).await?;
                            std::io::Result::Ok(reply == request)
                        };
                        match tokio::time::timeout(IO_TIMEOUT, once).await {
                            Ok(Ok(true)) => latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                            _ => errors += 1,
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let (mut all, mut errors) = (Vec::new(), 0u64);
        for t in tasks {
            if let Ok((l, e)) = t.await {
                all.extend(l);
                errors += e;
            }
        }
        (all, errors, t0.elapsed())
    });
    let mut all = latencies;
    if all.is_empty() {
        return Err(format!("no connection succeeded ({errors} errors)"));
    }
    all.sort_unstable();
    let pct = |p: f64| f64::from(all[((all.len() - 1) as f64 * p).round() as usize]);
    Ok(ConnRate {
        per_sec: all.len() as f64 / took.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    })
}

/// Opens `n` connections that each forward one byte and then idle; returns them once the
/// backend has received every byte (all are then established on both sides).
fn open_idle(addr: SocketAddr, n: usize, b: &Backends) -> Result<Vec<TcpStream>, String> {
    let base = b.idle_bytes.get();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = connect(addr).map_err(|e| format!("idle connection {i}: {e}"))?;
        s.write_all(b"x").map_err(|e| format!("idle connection {i}: {e}"))?;
        conns.push(s);
    }
    let reached = b.idle_bytes.wait_for(base + n as u64, Duration::from_secs(30));
    if reached < base + n as u64 {
        return Err(format!(
            "only {} of {n} idle connections reached the backend within 30s",
            reached - base
        ));
    }
    Ok(conns)
}

/// Closes idle connections and waits (bounded) until the backend saw them all close.
fn close_idle(conns: Vec<TcpStream>, b: &Backends) {
    let target = b.idle_closed.get() + conns.len() as u64;
    drop(conns);
    b.idle_closed.wait_for(target, Duration::from_secs(30));
}

// --- one target --------------------------------------------------------------------

/// One run of every workload against one target.
struct Sample {
    up1: f64,
    up4: f64,
    down1: f64,
    conn: ConnRate,
    /// Only for a proxy: there is no process to measure when going direct.
    idle_kib_per_conn: Option<f64>,
    rss_at_start_kib: Option<f64>,
}

type Row = (&'static str, fn(&Sample) -> Option<f64>);

const ROWS: [Row; 9] = [
    ("tput_up_1_gbps", |s| Some(s.up1)),
    ("tput_up_4_gbps", |s| Some(s.up4)),
    ("tput_down_1_gbps", |s| Some(s.down1)),
    ("conn_per_s", |s| Some(s.conn.per_sec)),
    ("conn_p50_us", |s| Some(s.conn.p50_us)),
    ("conn_p99_us", |s| Some(s.conn.p99_us)),
    ("conn_errors", |s| Some(s.conn.errors as f64)),
    ("idle_kib_per_conn", |s| s.idle_kib_per_conn),
    ("rss_at_start_kib", |s| s.rss_at_start_kib),
];

/// Runs every workload against the three addresses; `pid` is the proxy's, if any.
fn measure(addrs: [SocketAddr; 3], pid: Option<u32>, o: &Options, b: &Backends) -> Result<Sample, String> {
    let [bulk, echo, idle] = addrs;
    let rss = |pid: u32| rss_kib(pid).ok_or_else(|| format!("cannot read VmRSS of process {pid}"));
    let rss_at_start_kib = pid.map(rss).transpose()?.map(|k| k as f64);
    let up1 = upload(bulk, 1, o.duration)?;
    let up4 = upload(bulk, 4, o.duration)?;
    let down1 = download(bulk, o.duration)?;
    let conn = conn_rate(echo, o.clients, o.duration)?;
    let idle_kib_per_conn = match pid {
        None => None,
        Some(pid) => {
            let before = rss(pid)?;
            let conns = open_idle(idle, o.idle, b)?;
            let after = rss(pid)?;
            close_idle(conns, b);
            Some((after as f64 - before as f64) / o.idle as f64)
        }
    };
    Ok(Sample {
        up1,
        up4,
        down1,
        conn,
        idle_kib_per_conn,
        rss_at_start_kib,
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn run(o: &Options) -> Result<(), String> {
    if !o.bin.is_file() {
        return Err(format!(
            "no gatehouse binary at {}: build it with `cargo build --release` or point GATEHOUSE_BIN (or --bin) at one",
            o.bin.display()
        ));
    }
    raise_fd_limit();
    let b = Backends::start()?;
    let mut targets: Vec<String> = vec!["direct".into()];
    targets.extend(o.forwarding.iter().map(|f| format!("gatehouse-{f}")));
    let mut samples: HashMap<String, Vec<Sample>> = HashMap::new();
    eprintln!(
        "load: {} rounds over {}; {:?} per workload, {} connecting clients, {} idle connections; binary {}",
        o.rounds,
        targets.join(", "),
        o.duration,
        o.clients,
        o.idle,
        o.bin.display()
    );
    for round in 1..=o.rounds {
        for target in &targets {
            let t0 = Instant::now();
            let sample = match target.strip_prefix("gatehouse-") {
                None => measure([b.bulk, b.echo, b.idle], None, o, &b)?,
                Some(forwarding) => {
                    let g = Gatehouse::start(&o.bin, forwarding, &b)?;
                    let addrs = [g.bound["bulk"], g.bound["echo"], g.bound["idle"]];
                    let result = measure(addrs, Some(g.pid()), o, &b);
                    g.stop(Duration::from_secs(10));
                    result?
                }
            };
            eprintln!("round {round}/{}: {target} done in {:.1?}", o.rounds, t0.elapsed());
            samples.entry(target.clone()).or_default().push(sample);
        }
    }
    print_table(&targets, &samples, o);
    Ok(())
}

fn print_table(targets: &[String], samples: &HashMap<String, Vec<Sample>>, o: &Options) {
    let med = |t: &str, m: fn(&Sample) -> Option<f64>| {
        median(
            samples
                .get(t)
                .map(|v| v.iter().filter_map(m).collect())
                .unwrap_or_default(),
        )
    };
    println!();
    println!(
        "gatehouse load bench: {:?} per workload, {} connecting clients, {} idle connections, median of {} round(s)",
        o.duration, o.clients, o.idle, o.rounds
    );
    let mut header = format!("{:<20}{:>12}", "metric", "direct");
    for t in &targets[1..] {
        header += &format!("{t:>18}{:>9}", "/direct");
    }
    println!("{header}");
    for (name, m) in ROWS {
        let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let direct = med("direct", m);
        let mut row = format!("{name:<20}{:>12}", cell(direct));
        for t in &targets[1..] {
            let v = med(t, m);
            let ratio = match (v, direct) {
                (Some(v), Some(d)) if d != 0.0 => format!("{:.2}", v / d),
                _ => "-".to_string(),
            };
            row += &format!("{:>18}{ratio:>9}", cell(v));
        }
        println!("{row}");
    }
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}
