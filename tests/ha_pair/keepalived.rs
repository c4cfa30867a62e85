//! The two programs of each gateway: gatehouse (the binary under test) and keepalived
//! (on the shipped `deploy/keepalived/keepalived.conf`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{output_within, wait_until, Gatehouse, BIN};
use crate::{ADMIN, BE1, BE2, LB1, LB2, VIP};

const SHIPPED: &str = include_str!("../../deploy/keepalived/keepalived.conf");

pub fn gatehouse_config() -> String {
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

pub fn start_gatehouse(ns: &str) -> Gatehouse {
    Gatehouse::start_in_netns(ns, &gatehouse_config())
}

/// The shipped keepalived.conf with the test's addresses; every swap must find its text,
/// so that the test follows the file.
pub fn keepalived_config() -> String {
    let mut text = SHIPPED.to_string();
    for (from, to) in [
        ("http://127.0.0.1:8405/readyz", format!("http://{ADMIN}/readyz")),
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
pub struct Keepalived {
    child: Option<Child>,
    log: PathBuf,
    vrrp_pid: PathBuf,
}

impl Keepalived {
    /// `id` is the config-id that picks this gateway's `@` lines of the shipped file.
    pub fn start(ns: &str, id: &str, dir: &Path) -> Keepalived {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times it has entered `state` (MASTER, BACKUP, FAULT).
    pub fn entered(&self, state: &str) -> usize {
        self.log().matches(&format!("Entering {state} STATE")).count()
    }

    /// SIGTERM (it gives the VIP away with a priority-0 advert), bounded wait, else SIGKILL.
    pub fn stop(&mut self) {
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

pub fn ctl(ns: &str, g: &Gatehouse, action: &str, server: &str) {
    let out = output_within(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(BIN)
            .arg("--config")
            .arg(&g.config_path)
            .args(["ctl", action, server])
            .stdin(Stdio::null()),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("gatehouse ctl {action} {server}: {e}"));
    assert!(
        out.status.success(),
        "gatehouse ctl {action} {server}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn missing_tool(tool: &str) -> bool {
    crate::common::tool(tool).is_none()
}
