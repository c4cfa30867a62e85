//! A real HAProxy for tests that compare gatehouse with it: started on a config the
//! test writes (listening on loopback only), with a stats socket in its temp dir that
//! the test reads (`show servers state`, `show stat`). Every wait has a deadline.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{fresh_ip, wait_until};

/// Whether `haproxy` runs here.
pub fn available() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fresh loopback address with a port nobody holds: HAProxy cannot bind port 0.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind((fresh_ip(), 0)).expect("bind a fresh loopback address");
    l.local_addr().unwrap()
}

/// Whether a socket listens on `addr` (IPv4), from /proc/net/tcp: a probe by connecting
/// would take a turn of the balancer, or a place at a server.
pub fn listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(a) = addr else { return false };
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(a.ip().octets()), a.port());
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// A running HAProxy (`haproxy -db`), its stderr captured and its stats socket open.
pub struct Haproxy {
    child: Child,
    socket: PathBuf,
    stderr: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Haproxy {
    /// `haproxy -c` on `cfg` (as the test will run it): Ok, or what HAProxy said.
    pub fn check(cfg: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, with_socket(cfg, &dir.path().join("stats.sock"))).unwrap();
        let out = super::output_within(
            Command::new("haproxy")
                .arg("-c")
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null()),
            Duration::from_secs(30),
        )?;
        match out.status.success() {
            true => Ok(()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// Starts HAProxy on `cfg` (with a stats socket added) and waits, bounded, until the
    /// socket answers and every address of `binds` listens.
    pub fn start(cfg: &str, binds: &[SocketAddr]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stats.sock");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, with_socket(cfg, &socket)).unwrap();
        let stderr = dir.path().join("stderr");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("run haproxy");
        let mut h = Haproxy {
            child,
            socket,
            stderr,
            dir,
        };
        let mut exited = None;
        let up = wait_until(Duration::from_secs(10), || {
            exited = h.child.try_wait().ok().flatten();
            exited.is_some() || h.try_command("show info").is_ok()
        });
        assert!(exited.is_none(), "haproxy exited ({exited:?}):\n{}", h.log());
        assert!(up, "haproxy's stats socket did not answer within 10 s:\n{}", h.log());
        for addr in binds {
            let up = wait_until(Duration::from_secs(10), || listening(*addr));
            assert!(up, "haproxy did not listen on {addr} within 10 s:\n{}", h.log());
        }
        h
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn try_command(&self, command: &str) -> Result<String, String> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// A command on the stats socket, and its answer.
    pub fn command(&self, command: &str) -> String {
        self.try_command(command)
            .unwrap_or_else(|e| panic!("haproxy stats socket, {command:?}: {e}\n{}", self.log()))
    }

    /// `show servers state`: one map per server, by the column names of its header.
    pub fn servers_state(&self) -> Vec<HashMap<String, String>> {
        let text = self.command("show servers state");
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<String> = lines
            .find_map(|l| l.strip_prefix("# "))
            .map(|h| h.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        lines
            .filter(|l| !l.starts_with('#'))
            .map(|l| header.iter().cloned().zip(l.split(' ').map(String::from)).collect())
            .collect()
    }

    /// `show stat`: one map per proxy and server, by the CSV header's names.
    pub fn stat(&self) -> Vec<HashMap<String, String>> {
        let text = self.command("show stat");
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<String> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .map(|h| h.split(',').map(String::from).collect())
            .unwrap_or_default();
        lines
            .map(|l| header.iter().cloned().zip(l.split(',').map(String::from)).collect())
            .collect()
    }

    /// Clients waiting now for a server of `backend`: its own queue and its servers'
    /// (`qcur` of each row; `balance source` queues on the server).
    pub fn queued(&self, backend: &str) -> u64 {
        self.stat()
            .iter()
            .filter(|r| r.get("pxname").map(String::as_str) == Some(backend) && r["svname"] != "FRONTEND")
            .filter_map(|r| r.get("qcur")?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cfg` with a `global` section first that opens the stats socket (HAProxy merges
/// several global sections).
fn with_socket(cfg: &str, socket: &std::path::Path) -> String {
    format!(
        "global\n    stats socket {} mode 600 level admin\n    stats timeout 10s\n\n{cfg}",
        socket.display()
    )
}
