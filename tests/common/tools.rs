//! The outside programs tests run, each bounded: any command (`output_within`), `ip`
//! and network namespaces, headless Chromium, `promtool`; and finding them on PATH.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `cmd` to its end, its output collected, within `timeout`: a child that does not
/// finish in time is killed and Err says so (with what it had said). Stdin is the
/// caller's to set (`Command` inherits it by default).
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<std::process::Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    // A grandchild holding the pipes open ends with the child or is not waited for.
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    match status {
        Some(status) => Ok(std::process::Output { status, stdout, stderr }),
        None => Err(format!(
            "{what} did not finish within {timeout:?} (killed); it said: {}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// Whether `program` can be run (found on PATH).
pub fn have(program: &str) -> bool {
    tool(program).is_some()
}

/// A free TCP port on `ip` (bound and released: another process may take it, rarely).
pub fn free_port(ip: std::net::IpAddr) -> Option<u16> {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .ok()?
        .local_addr()
        .ok()
        .map(|a| a.port())
}

/// The path of `name` in PATH, if it is installed.
pub fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Kills a child process we started (and its process group) when dropped.
pub struct Reaper {
    pub child: Child,
    pub group: bool,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if self.group {
            // SAFETY: kill(2) on the process group of a child we started in its own group.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs headless Chromium (`bin`, from [`tool`]) on `url` with `extra` arguments
/// (`--dump-dom`, `--screenshot=`), its profile in `profile`, killed after 60 s;
/// returns its stdout.
pub fn chromium(bin: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    use std::os::unix::process::CommandExt;
    let out_path = profile.with_extension("out");
    let err_path = profile.with_extension("err");
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .expect("run chromium");
    let mut run = Reaper { child, group: true };
    let started = Instant::now();
    let status = loop {
        if let Some(s) = run.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "chromium did not finish within 60 s; stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(run);
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "chromium exited with {status}:\n{err}");
    std::fs::read_to_string(&out_path).unwrap_or_default()
}

/// A 1280×900 screenshot of `url` written to `shot` by [`chromium`] (profile in
/// `profile`), a stale one removed first; returns the file's bytes (none if it wrote none).
pub fn screenshot(bin: &Path, profile: &Path, url: &str, shot: &Path) -> Vec<u8> {
    if let Some(dir) = shot.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let _ = std::fs::remove_file(shot);
    chromium(
        bin,
        profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".into(),
            "--hide-scrollbars".into(),
        ],
        url,
    );
    std::fs::read(shot).unwrap_or_default()
}

/// Runs `ip ARGS` (iproute2); Err says which command failed and why.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = output_within(Command::new("ip").args(args), Duration::from_secs(30))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Moves the calling thread into network namespace `ns`: sockets it makes from now on
/// live there.
pub fn enter(ns: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns(2) on a descriptor we own; it changes only this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a thread that has entered namespace `ns`: sockets it makes live there.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns).unwrap_or_else(|e| panic!("enter {ns}: {e}"));
        f()
    })
    .join()
    .expect("thread in namespace")
}

/// Runs `promtool check metrics` (`promtool`, from [`tool`]) on the exposition `body`:
/// its exit status and what it said (stdout, then stderr).
pub fn promtool_check_metrics(promtool: &Path, body: &str) -> (ExitStatus, String) {
    let input = tempfile::NamedTempFile::new().expect("a file for the exposition");
    std::fs::write(input.path(), body).expect("write the exposition");
    let out = output_within(
        Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(input.path()).expect("open the exposition")),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("promtool check metrics: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, said)
}
