//! Nothing outside the data path can stop it (issue 21), through the real binary: a
//! log reader that never reads costs log lines, counted, and not one connection; a
//! hung event loop stops the systemd watchdog's pings (while the main runtime still
//! answers); the per-loop metrics show every loop.

#[macro_use]
mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::pool::*;
use common::*;

/// A pipe: (read end, write end), the read end non-blocking.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both were just opened, and nothing else owns them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The child's end blocks, as a journald stream or a shell pipe does.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) };
    (r, w)
}

/// Whether gatehouse's log writer thread is blocked writing to a pipe (its kernel wait
/// channel, `/proc/PID/task/TID/wchan`, is `pipe_write` or `anon_pipe_write`).
fn writer_waits_on_pipe(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
        read("comm").trim() == "gatehouse-log" && read("wchan").contains("pipe_write")
    })
}

/// Bytes waiting in a pipe.
fn pending(fd: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    n as usize
}

/// A listener "front" over one server, `backend`, unchecked, and an admin listener.
fn one_server(backend: &Backend) -> String {
    cfg(
        &[("front", any_port())],
        &[server("a", backend.addr)],
        Some(""),
        NO_CHECKS,
    )
}

/// `count` short connections over 8 threads; how many were served.
fn clients(front: SocketAddr, count: usize) -> usize {
    let workers = 8;
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            thread::spawn(move || {
                (w..count)
                    .step_by(workers)
                    .filter(|&i| echo_once(front, i as u64).is_ok())
                    .count()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("client thread")).sum()
}

#[test]
fn a_log_reader_that_never_reads_costs_log_lines_not_connections() {
    let backend = Backend::echo(any_port());
    let config = one_server(&backend);
    let (read_end, write_end) = pipe();
    // SAFETY: F_SETPIPE_SZ on our pipe (64 KiB, the usual size, stated).
    let size = unsafe { libc::fcntl(read_end.as_raw_fd(), libc::F_SETPIPE_SZ, 65536) };
    assert_eq!(size, 65536, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    let (g, _) = Gatehouse::start_command_to(&config, Some(Stdio::from(write_end)), |path| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(path);
        cmd
    })
    .unwrap_or_else(|e| panic!("gatehouse did not start: {e}"));
    let (front, admin) = (g.addr("front"), g.admin());

    // Fill the pipe: nobody reads it from here on, as nobody reads a stopped journald.
    // It is full when the log writer thread waits in the kernel's pipe write (how many
    // bytes that takes depends on how the writes filled the pipe's pages).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !writer_waits_on_pipe(g.pid()) {
        assert!(
            Instant::now() < deadline,
            "the log writer never blocked on the pipe ({} bytes in it)",
            pending(&read_end)
        );
        assert_eq!(clients(front, 50), 50, "served before the pipe was full");
    }
    // Now the writer thread is stuck in write(2). Each batch must all be served while
    // the threads' queues fill and then drop.
    let mut served = 0;
    let mut made = 0;
    let mut dropped = 0.0;
    while made < 3_000 || dropped == 0.0 {
        assert!(
            made < 60_000,
            "no log line dropped after {made} connections with the sink stalled"
        );
        served += clients(front, 1_000);
        made += 1_000;
        dropped = metric(admin, "gatehouse_log_lines_dropped_total", &[]);
    }
    figure!("stalled log: {served}/{made} connections served after the log pipe filled; {dropped} log lines dropped");
    assert_eq!(served, made, "connections lost while the log sink stalled");
    // The status page counts the same drops (more by now: the pipe is still full).
    let status = status(admin);
    let shown = status["log_lines_dropped"].as_f64().unwrap_or(0.0);
    assert!(
        shown >= dropped,
        "the status shows {shown} dropped, /metrics showed {dropped}"
    );

    // The reader comes back: the writer goes on, and says what was lost.
    let mut out = std::fs::File::from(read_end);
    let mut text = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(20);
    let needle = b"log lines dropped: the log output did not keep up";
    while !text.windows(needle.len()).any(|w| w == needle) {
        assert!(
            Instant::now() < deadline,
            "no line about the dropped lines after the reader came back; read {} bytes",
            text.len()
        );
        match out.read(&mut buf) {
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Nothing yet: one more client makes a line for the writer's next round.
                echo_once(front, 0).expect("served after the stall");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reading the log pipe: {e}"),
        }
    }
}

#[test]
fn a_hung_event_loop_stops_the_watchdog_pings_while_main_still_answers() {
    let backend = Backend::echo(any_port());
    let config = one_server(&backend);
    // 2 s: pings every 0.5 s while every loop is at most 0.5 s behind.
    let g = Gatehouse::start_with(&config, &[("WATCHDOG_USEC", "2000000")])
        .unwrap_or_else(|e| panic!("gatehouse did not start: {e}"));
    let (front, admin) = (g.addr("front"), g.admin());
    let loops: Vec<String> = status(admin)["event_loops"]
        .as_array()
        .expect("event_loops in the status")
        .iter()
        .map(|l| l["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        loops.len() >= 2 && loops.last().map(String::as_str) == Some("main"),
        "{loops:?}"
    );
    g.wait_notify(|m| m.lines().any(|l| l == "WATCHDOG=1"), Duration::from_secs(5))
        .expect("a watchdog ping while every loop runs");
    echo_once(front, 1).expect("served before the hang");

    let (code, body) = http(admin, "POST", "/debug/hang-loop/0", &[]);
    assert_eq!(code, 202, "{body}");
    let hung = Instant::now();
    // Pings stop within the lag allowed plus one ping period; watch 3 s past that.
    let mut last_ping = None;
    while hung.elapsed() < Duration::from_secs(4) {
        if g.wait_notify(|m| m.lines().any(|l| l == "WATCHDOG=1"), Duration::from_millis(100))
            .is_ok()
        {
            last_ping = Some(hung.elapsed());
        }
    }
    figure!("watchdog: last ping {last_ping:?} after event loop 0 hung (timeout 2 s: pings every 0.5 s, 0.5 s of lag allowed)");
    assert!(
        last_ping.is_none_or(|t| t < Duration::from_millis(1_300)),
        "pings went on {last_ping:?} after a loop hung"
    );
    // The main runtime still answers, and says which loop is behind.
    let lag = metric(admin, "gatehouse_event_loop_lag_seconds", &[("loop", "0")]);
    assert!(lag >= 2.0, "loop 0 hung 4 s ago, yet its lag is {lag} s");
    let main_lag = metric(admin, "gatehouse_event_loop_lag_seconds", &[("loop", "main")]);
    assert!(main_lag < 1.0, "main lags {main_lag} s");
    assert!(
        g.wait_log("event loop 0 behind", Duration::from_secs(5)),
        "no log line names the hung loop:\n{}",
        g.log()
    );
}

#[test]
fn every_event_loop_accepts_and_is_counted() {
    let backend = Backend::echo(any_port());
    let config = one_server(&backend);
    let g = Gatehouse::start(&config);
    let (front, admin) = (g.addr("front"), g.admin());
    assert_eq!(clients(front, 400), 400);
    let counts = accepted_per_loop(admin);
    let loops = counts.len();
    figure!("event loops: accepted {counts:?} of 400 connections");
    assert_eq!(counts.iter().sum::<f64>(), 400.0, "{counts:?}");
    if loops < 2 {
        skip!("this machine has one core: one event loop, no spread to check");
    }
    assert!(counts.iter().all(|&c| c > 0.0), "a loop accepted nothing: {counts:?}");
}
