//! SNI routing with real TLS clients on loopback: `openssl s_client -servername` and
//! `curl --resolve` reach the backend their server name routes to (exact before
//! wildcard; unknown and absent names to the listener's default); the ClientHello
//! reaches the server untouched, even written one byte at a time; non-TLS and silent
//! clients go to the default; bytes through a routed connection arrive intact.
//!
//! The servers are plain TCP: they record the ClientHello they get (no TLS server is
//! needed to tell which backend a client reached).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gatehouse::edge::sni::{parse_client_hello, Peek};

/// A server that records the ClientHello of each connection, then closes it.
struct Recorder {
    backend: Backend,
    hellos: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let h = hellos.clone();
        let backend = Backend::serve("127.0.0.1:0".parse().unwrap(), move |mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while parse_client_hello(&got) == Peek::NeedMore {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            h.lock().unwrap().push(got);
        });
        Recorder { backend, hellos }
    }

    /// The server names of the hellos recorded so far.
    fn names(&self) -> Vec<String> {
        self.hellos
            .lock()
            .unwrap()
            .iter()
            .map(|h| match parse_client_hello(h) {
                Peek::Sni(n) => n,
                other => format!("<{}>", other.reason()),
            })
            .collect()
    }
}

/// Runs `cmd` to its end or kills it after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn client");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `openssl s_client` to `addr` with server name `name` (`None`: no SNI at all).
fn s_client(addr: SocketAddr, name: Option<&str>) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    match name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    run_bounded(&mut cmd, Duration::from_secs(10));
}

/// A real ClientHello for `name`, as openssl writes it.
fn captured_hello(name: &str) -> Vec<u8> {
    let r = Recorder::start();
    s_client(r.backend.addr, Some(name));
    let hello = r.hellos.lock().unwrap().pop().expect("openssl sent a ClientHello");
    assert_eq!(parse_client_hello(&hello), Peek::Sni(name.into()));
    hello
}

fn routed_config(k8s: SocketAddr, wild: SocketAddr, default: SocketAddr) -> String {
    format!(
        r#"[log]
format = "json"
[admin]
listen = "127.0.0.1:0"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
backend = "ingress"
inspect_timeout = "500ms"
routes = [
  {{ sni = ["k8s.example.com"], backend = "k8s" }},
  {{ sni = ["*.example.com"], backend = "wild" }},
]
[backend.k8s]
servers = ["{k8s}"]
health = {{ check = "none" }}
[backend.wild]
servers = ["{wild}"]
health = {{ check = "none" }}
[backend.ingress]
servers = ["{default}"]
health = {{ check = "none" }}
"#
    )
}

fn tools_missing() -> Option<&'static str> {
    if !have("openssl") {
        return Some("openssl is not installed");
    }
    None
}

#[test]
fn routes_by_server_name_exact_before_wildcard_and_the_rest_to_the_default() {
    if let Some(why) = tools_missing() {
        skip!("{why}");
    }
    let (k8s, wild, default) = (Recorder::start(), Recorder::start(), Recorder::start());
    let g = Gatehouse::start(&routed_config(
        k8s.backend.addr,
        wild.backend.addr,
        default.backend.addr,
    ));
    let front = g.addr("tls");
    s_client(front, Some("k8s.example.com"));
    s_client(front, Some("a.example.com"));
    s_client(front, Some("other.org"));
    s_client(front, Some("a.b.example.com"));
    s_client(front, None);
    assert_eq!(k8s.names(), ["k8s.example.com"], "exact name beats the wildcard");
    assert_eq!(wild.names(), ["a.example.com"], "*.example.com is one label");
    assert_eq!(
        default.names(),
        ["other.org", "a.b.example.com", "<sni_missing>"],
        "unknown, two-label and absent names go to the listener's backend"
    );

    if have("curl") {
        let port = front.port();
        run_bounded(
            Command::new("curl").args([
                "-sk",
                "--max-time",
                "5",
                "--resolve",
                &format!("k8s.example.com:{port}:127.0.0.1"),
                &format!("https://k8s.example.com:{port}/"),
            ]),
            Duration::from_secs(10),
        );
        assert_eq!(k8s.names(), ["k8s.example.com", "k8s.example.com"], "curl --resolve");
    } else {
        eprintln!("SKIPPED (curl part): curl is not installed");
    }

    assert!(
        g.wait_log("tls/k8s/", Duration::from_secs(5))
            && g.log().contains("sni=k8s.example.com")
            && g.log().contains(r#""sni":"k8s.example.com""#),
        "the close line names the server name, in its text and as a JSON field:\n{}",
        g.log()
    );
    let status = status(g.admin());
    let routes = &status["listeners"][0]["routes"];
    assert_eq!(routes[0]["sni"][0], "k8s.example.com", "status shows routes: {routes}");
    assert_eq!(routes[1]["backend"], "wild", "status shows routes: {routes}");
}

#[test]
fn a_client_hello_written_one_byte_at_a_time_is_routed_and_arrives_whole() {
    if let Some(why) = tools_missing() {
        skip!("{why}");
    }
    let hello = captured_hello("k8s.example.com");
    let (k8s, wild, default) = (Recorder::start(), Recorder::start(), Recorder::start());
    let g = Gatehouse::start(&routed_config(
        k8s.backend.addr,
        wild.backend.addr,
        default.backend.addr,
    ));
    let mut s = connect(g.addr("tls"));
    s.set_nodelay(true).unwrap();
    // 1 ms apart: each byte its own segment; the whole well inside inspect_timeout
    // only if the peek waits for readiness instead of polling.
    let started = Instant::now();
    for b in &hello {
        s.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    assert!(
        wait_until(Duration::from_secs(5), || !k8s.hellos.lock().unwrap().is_empty()),
        "the k8s backend got the hello ({} bytes written in {:?}); default got {:?}",
        hello.len(),
        started.elapsed(),
        default.names()
    );
    assert_eq!(
        k8s.hellos.lock().unwrap()[0],
        hello,
        "the server gets the ClientHello byte for byte ({} bytes)",
        hello.len()
    );
}

#[test]
fn non_tls_and_silent_clients_go_to_the_default_backend() {
    let (k8s, wild) = (Recorder::start(), Recorder::start());
    let default = Backend::named("127.0.0.1:0".parse().unwrap(), "default");
    let g = Gatehouse::start(&routed_config(k8s.backend.addr, wild.backend.addr, default.addr));
    let front = g.addr("tls");

    let mut s = connect(front);
    let started = Instant::now();
    s.write_all(b"hello\n").unwrap();
    assert_eq!(read_line(&mut s).unwrap(), "default", "a non-TLS client");
    assert_eq!(read_line(&mut s).unwrap(), "hello", "its bytes reach the server");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "a non-TLS client is routed at once, not after inspect_timeout: {:?}",
        started.elapsed()
    );

    // A client that waits for the server to speak first gets it after inspect_timeout.
    let mut s = connect(front);
    let started = Instant::now();
    assert_eq!(read_line(&mut s).unwrap(), "default", "a silent client");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "a silent client reaches the default after inspect_timeout (500ms): {took:?}"
    );
    assert!(k8s.names().is_empty() && wild.names().is_empty());
}

#[test]
fn bytes_through_a_routed_connection_arrive_intact() {
    if let Some(why) = tools_missing() {
        skip!("{why}");
    }
    let hello = captured_hello("k8s.example.com");
    let echo = Backend::echo("127.0.0.1:0".parse().unwrap());
    let other = Recorder::start();
    let g = Gatehouse::start(&routed_config(echo.addr, other.backend.addr, other.backend.addr));
    // The hello, then 16 MiB of pseudo-random bytes (xorshift).
    let mut payload = hello.clone();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    payload.extend((0..16 * 1024 * 1024).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    let peek_len = gatehouse::edge::sni::MAX_PEEK_LEN;
    assert_eq!(
        parse_client_hello(&payload[..peek_len]),
        Peek::Sni("k8s.example.com".into()),
        "hello len {}",
        hello.len()
    );
    let sent = payload.clone();
    // Connected only now that the bytes are ready: a client silent for inspect_timeout
    // would go to the default backend.
    let mut s = connect(g.addr("tls"));
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent)?;
        w.shutdown(std::net::Shutdown::Write)
    });
    let started = Instant::now();
    let mut back = Vec::with_capacity(payload.len());
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    if let Err(e) = s.read_to_end(&mut back) {
        panic!("reading back after {} bytes: {e}\n{}", back.len(), g.log());
    }
    let written = writer.join().unwrap();
    assert!(
        written.is_ok(),
        "writing: {written:?}; read back {} bytes\n{}",
        back.len(),
        g.log()
    );
    let sum = |b: &[u8]| {
        b.iter()
            .fold(0u64, |h, &c| h.wrapping_mul(1_099_511_628_211).wrapping_add(c as u64))
    };
    assert_eq!(
        (back.len(), sum(&back)),
        (payload.len(), sum(&payload)),
        "echoed through the k8s route in {:?}",
        started.elapsed()
    );
    assert!(other.names().is_empty(), "nothing went elsewhere");
}

#[test]
fn a_reload_changes_routes_for_new_connections_only() {
    if let Some(why) = tools_missing() {
        skip!("{why}");
    }
    let hello = captured_hello("k8s.example.com");
    let (first, second) = (
        Backend::echo("127.0.0.1:0".parse().unwrap()),
        Backend::echo("127.0.0.1:0".parse().unwrap()),
    );
    let other = Recorder::start();
    let g = Gatehouse::start(&routed_config(first.addr, other.backend.addr, other.backend.addr));
    let front = g.addr("tls");
    let echo_hello = |s: &mut std::net::TcpStream| {
        s.write_all(&hello).unwrap();
        let mut back = vec![0u8; hello.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, hello);
    };
    let mut old = connect(front);
    echo_hello(&mut old);
    assert_eq!(first.accepted(), 1, "routed to the first k8s server");

    // The k8s route now goes to another backend.
    let reloaded = routed_config(first.addr, other.backend.addr, other.backend.addr)
        .replace(r#"backend = "k8s" }"#, r#"backend = "k8s-next" }"#)
        + &format!(
            "[backend.k8s-next]\nservers = [\"{}\"]\nhealth = {{ check = \"none\" }}\n",
            second.addr
        );
    assert!(reloaded.contains(r#"backend = "k8s-next" }"#));
    g.reload(&reloaded);
    let mut new = connect(front);
    echo_hello(&mut new);
    assert_eq!(
        (first.accepted(), second.accepted()),
        (1, 1),
        "the new connection follows the new route"
    );
    old.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    old.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here", "the old connection keeps its server");
}

/// CPU time (user + system) the process `pid` has used so far, from /proc.
fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

#[test]
fn a_stalled_client_hello_waits_without_spinning() {
    if let Some(why) = tools_missing() {
        skip!("{why}");
    }
    let hello = captured_hello("k8s.example.com");
    let (k8s, wild) = (Recorder::start(), Recorder::start());
    let default = Backend::named("127.0.0.1:0".parse().unwrap(), "default");
    let g = Gatehouse::start(&routed_config(k8s.backend.addr, wild.backend.addr, default.addr));
    let Some(before) = cpu_time(g.pid()) else {
        skip!("no /proc/PID/stat");
    };
    // Half a ClientHello, then nothing: gatehouse waits out inspect_timeout (500ms).
    let mut s = connect(g.addr("tls"));
    let started = Instant::now();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    assert_eq!(
        read_line(&mut s).unwrap(),
        "default",
        "an incomplete hello ends at the default"
    );
    let waited = started.elapsed();
    let used = cpu_time(g.pid()).unwrap_or_default().saturating_sub(before);
    assert!(
        waited >= Duration::from_millis(450),
        "it waited for the rest of the hello: {waited:?}"
    );
    assert!(
        used < Duration::from_millis(150),
        "gatehouse used {used:?} of CPU while waiting {waited:?} for the rest of a ClientHello"
    );
}
