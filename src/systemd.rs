//! The two things gatehouse says to and takes from systemd: `sd_notify` messages
//! (READY, RELOADING, STOPPING, STATUS, WATCHDOG) and sockets passed by socket
//! activation (`LISTEN_FDS`). Both are no-ops outside systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `message` (newline-separated `KEY=value` lines) to `$NOTIFY_SOCKET`, if set.
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        abstract_send(&socket, name, message)
    } else {
        socket.send_to(message.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = result {
        tracing::debug!("sd_notify failed: {e}");
    }
}

#[cfg(target_os = "linux")]
fn abstract_send(socket: &UnixDatagram, name: &[u8], message: &str) -> std::io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(message.as_bytes(), &addr)
}

#[cfg(not(target_os = "linux"))]
fn abstract_send(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<usize> {
    Err(std::io::Error::other("abstract sockets need Linux"))
}

/// `RELOADING=1` with the monotonic timestamp systemd asks for.
pub fn reloading(status: &str) {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}"));
}

/// The watchdog's timeout, if systemd asked this process for pings.
fn watchdog_timeout() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?.parse::<u64>().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|v| v.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// How often the event loops' heartbeats should fire: often enough for the watchdog's
/// timeout (an eighth of it), and no more than twice a second without one.
pub fn heartbeat() -> Duration {
    let most = Duration::from_millis(500);
    watchdog_timeout().map_or(most, |t| (t / 8).min(most))
}

/// Pings the watchdog, if systemd asked for one, from a thread of its own, while
/// `stalled(within)` names no event loop (none of whose heartbeats is `within` behind): a hung loop (or main runtime) stops the
/// pings, and systemd aborts and restarts the service.
pub fn spawn_watchdog(stalled: fn(Duration) -> Vec<String>) {
    let Some(timeout) = watchdog_timeout() else {
        return;
    };
    // A quarter of the timeout each: a hung loop ends in a restart within 1.5 timeouts,
    // and a loop only briefly busy (a quarter of the timeout is seconds) never does.
    let every = timeout / 4;
    let within = timeout / 4;
    let watch = move || {
        let mut was_stalled = false;
        loop {
            std::thread::sleep(every);
            let loops = stalled(within);
            if loops.is_empty() {
                notify("WATCHDOG=1");
                if was_stalled {
                    tracing::warn!("every event loop runs again: watchdog pings resumed");
                }
            } else if !was_stalled {
                tracing::error!(
                    "event loop {} behind by {within:?} or more: watchdog pings stopped; \
                     systemd restarts gatehouse {timeout:?} after the last one",
                    loops.join(", ")
                );
            }
            was_stalled = !loops.is_empty();
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("gatehouse-watchdog".into())
        .spawn(watch)
    {
        tracing::error!("cannot start the watchdog thread: {e}; systemd will restart gatehouse");
    }
}

/// Sockets passed by systemd socket activation, if any were passed to this process.
pub fn inherited_sockets() -> Vec<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    // They are ours now; children must not inherit the variables.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !for_us {
        return Vec::new();
    }
    (0..count)
        .filter_map(|i| {
            let fd = 3 + i;
            // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this process for it to own.
            let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            match listener.local_addr().and_then(|_| listener.set_nonblocking(true)) {
                Ok(()) => Some(listener),
                Err(e) => {
                    tracing::warn!(fd, "ignoring passed file descriptor that is not a TCP listener: {e}");
                    std::mem::forget(listener);
                    None
                }
            }
        })
        .collect()
}
