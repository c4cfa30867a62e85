//! What a running gatehouse holds, read from outside it: its TCP sockets (`/proc/PID/fd`
//! and `/proc/PID/net/tcp*`), the options on one of them (a duplicate taken with
//! `pidfd_getfd(2)`: the same socket, so `getsockopt` reads what gatehouse set), and
//! the pipes it has (splice's conduits). Linux only, like the forwarding it checks.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// One TCP socket of the process: its descriptor, its two ends and its state
/// (`/proc/net/tcp`'s `st`: 1 established, 10 listening).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldSocket {
    pub fd: i32,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub state: u8,
}

pub const ESTABLISHED: u8 = 1;

/// Descriptors of process `pid` by the inode of what they hold, for links of `kind`
/// (`socket`, `pipe`).
fn fds_by_inode(pid: i32, kind: &str) -> HashMap<u64, i32> {
    let prefix = format!("{kind}:[");
    let mut found = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let inode = target.strip_prefix(&prefix).and_then(|t| t.strip_suffix(']'));
        let fd = entry.file_name().to_string_lossy().parse::<i32>();
        if let (Some(Ok(inode)), Ok(fd)) = (inode.map(str::parse::<u64>), fd) {
            found.insert(inode, fd);
        }
    }
    found
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6), as `/proc/net/tcp` writes them.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: IpAddr = match addr.len() {
        8 => Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.swap_bytes()).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The TCP sockets process `pid` holds (in its own network namespace).
pub fn tcp_sockets(pid: i32) -> Vec<HeldSocket> {
    let fds = fds_by_inode(pid, "socket");
    let mut held = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(peer), Some(state), Some(inode)) = (
                cols.get(1).and_then(|c| parse_addr(c)),
                cols.get(2).and_then(|c| parse_addr(c)),
                cols.get(3).and_then(|c| u8::from_str_radix(c, 16).ok()),
                cols.get(9).and_then(|c| c.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if let Some(&fd) = fds.get(&inode) {
                held.push(HeldSocket { fd, local, peer, state });
            }
        }
    }
    held
}

/// A duplicate of descriptor `fd` of process `pid` (ours to close): the same open
/// socket, not a copy. Needs ptrace rights over `pid` (our own child is enough).
pub fn steal(pid: i32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor pidfd_open just returned, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd(2) with no flags on a valid pidfd; the result is checked.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor pidfd_getfd just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

/// The liveness options on a TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    /// SO_KEEPALIVE.
    pub keepalive: bool,
    /// TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT (the kernel's defaults when never set).
    pub idle: Duration,
    pub interval: Duration,
    pub probes: u32,
    /// TCP_USER_TIMEOUT; None when 0 (off).
    pub user_timeout: Option<Duration>,
}

pub fn tcp_options(socket: &OwnedFd) -> std::io::Result<TcpOptions> {
    let s = socket2::SockRef::from(socket);
    Ok(TcpOptions {
        keepalive: s.keepalive()?,
        idle: s.tcp_keepalive_time()?,
        interval: s.tcp_keepalive_interval()?,
        probes: s.tcp_keepalive_retries()?,
        user_timeout: s.tcp_user_timeout()?,
    })
}

/// The options of gatehouse's (process `pid`'s) socket from `local` to `peer`, if it
/// holds one.
pub fn options_of(pid: i32, local: SocketAddr, peer: SocketAddr) -> Option<TcpOptions> {
    let held = tcp_sockets(pid)
        .into_iter()
        .find(|s| s.local == local && s.peer == peer)?;
    let dup = steal(pid, held.fd).unwrap_or_else(|e| panic!("pidfd_getfd of fd {} of {pid}: {e}", held.fd));
    Some(tcp_options(&dup).unwrap_or_else(|e| panic!("getsockopt on {held:?}: {e}")))
}

/// The options of gatehouse's socket towards `peer` (its connection to a server), if
/// it holds exactly one.
pub fn options_towards(pid: i32, peer: SocketAddr) -> Option<TcpOptions> {
    let held: Vec<_> = tcp_sockets(pid)
        .into_iter()
        .filter(|s| s.peer == peer && s.state == ESTABLISHED)
        .collect();
    match held.as_slice() {
        [one] => options_of(pid, one.local, one.peer),
        [] => None,
        many => panic!("process {pid} holds {} sockets towards {peer}: {many:?}", many.len()),
    }
}

/// The pipes process `pid` holds (each has two descriptors, one inode).
pub fn pipes(pid: i32) -> HashSet<u64> {
    fds_by_inode(pid, "pipe").into_keys().collect()
}
