//! The kit of the reload and runtime-control tests (`tests/reload.rs`,
//! `tests/control.rs`): configs of listeners over one backend "pool", clients that
//! prove a listener serves, and `gatehouse ctl` run as an operator would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use super::*;

pub const NO_CHECKS: &str = r#"health = { check = "none" }"#;

/// A config whose listeners (name, bind) all go to backend "pool". `admin` holds the
/// lines of the [admin] table (None: no admin API); `backend_extra` more lines of the backend.
pub fn cfg(listeners: &[(&str, SocketAddr)], servers: &[String], admin: Option<&str>, backend_extra: &str) -> String {
    let mut text = String::from("[defaults]\nconnect_timeout = \"2s\"\n\n");
    if let Some(lines) = admin {
        text.push_str(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{lines}\n\n"));
    }
    for (name, bind) in listeners {
        text.push_str(&format!(
            "[[listener]]\nname = \"{name}\"\nbind = [\"{bind}\"]\nbackend = \"pool\"\n\n"
        ));
    }
    let list: Vec<String> = servers.iter().map(|s| format!("  {s},")).collect();
    text.push_str(&format!(
        "[backend.pool]\nservers = [\n{}\n]\n{backend_extra}\n",
        list.join("\n")
    ));
    text
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One short connection: connect, send a line, read it back, close.
pub fn echo_once(addr: SocketAddr, tag: u64) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    round_trip(&mut s, &format!("hello {tag:016x}\n"))
}

/// Writes `text` and reads it back on an established connection.
pub fn round_trip(s: &mut TcpStream, text: &str) -> Result<(), String> {
    s.write_all(text.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; text.len()];
    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    if got != text.as_bytes() {
        return Err(format!("got {:?}, sent {text:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}

/// The server a new connection lands on (`Backend::named`), and the connection.
pub fn connect_named(addr: SocketAddr) -> (String, TcpStream) {
    let mut s = connect(addr);
    let name = read_line(&mut s).expect("server name");
    (name, s)
}

/// Connects until a connection lands on `want` (round robin gets there in a few tries).
pub fn connect_to(addr: SocketAddr, want: &str) -> TcpStream {
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (name, s) = connect_named(addr);
        if name == want {
            return s;
        }
        seen.push(name);
    }
    panic!("no connection landed on {want} in 10 tries: {seen:?}");
}

/// Runs `gatehouse ARGS` to its end (within 60 s: killed, and the test fails, past it).
pub fn gatehouse_cli(args: &[&str]) -> Output {
    output_within(
        Command::new(BIN)
            .args(args)
            .env_remove("GATEHOUSE_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null()),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("gatehouse {args:?}: {e}"))
}

/// `gatehouse ctl --admin ADMIN ARGS`, with a config path that does not exist, so that
/// nothing (no token) comes from a config on this machine.
pub fn ctl(g: &Gatehouse, args: &[&str]) -> Output {
    let admin = g.admin().to_string();
    let nowhere = g.dir.path().join("no-such-config.toml");
    let mut all = vec!["--config", nowhere.to_str().unwrap(), "ctl", "--admin", &admin];
    all.extend_from_slice(args);
    gatehouse_cli(&all)
}

pub fn out(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
