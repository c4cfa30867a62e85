//! The zero-copy conduit: a pooled pipe between two `splice(2)` calls.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::Filled;

/// 1 MiB, the most `/proc/sys/fs/pipe-max-size` allows an unprivileged process by
/// default: a quarter of the splice calls and wake-ups per gigabyte of 256 KiB pipes
/// (benches/README.md has the figures). The memory is not reserved: a pipe holds
/// references to the socket's pages only while bytes flow. Past the per-user soft
/// limit (`fs.pipe-user-pages-soft`, 64 such pipes) enlarging fails and a pipe keeps
/// the kernel's size: slower, still correct.
const SIZE: usize = 1024 * 1024;
/// Pooled pipes per event loop: few enough that idle pooled pipes keep at most half of
/// the soft limit from the pipes of live bursts, with as many loops as there can be
/// (4, `listener::accept_sockets`): 4 × 8 × 1 MiB of 64 MiB.
const POOL_MAX: usize = 8;

/// Pipes alive (pooled or in use) and how many may be: the connection ceiling counts
/// on no more (see `edge::fd_budget`). Past it a burst is copied instead.
static ALIVE: AtomicU64 = AtomicU64::new(0);
static MAX: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sets how many pipes may be alive at once over the process.
pub fn set_max_pipes(max: u64) {
    MAX.store(max, Ordering::Release);
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// 16 bytes: each of a connection's two pumps keeps room for one, idle or not.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: u32,
    pending: u32,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let max = MAX.load(Ordering::Acquire);
        if ALIVE.fetch_add(1, Ordering::AcqRel) >= max {
            ALIVE.fetch_sub(1, Ordering::AcqRel);
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "the pipe budget is spent"));
        }
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            ALIVE.fetch_sub(1, Ordering::AcqRel);
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ/F_GETPIPE_SZ on a pipe fd we own. Past the per-user
        // pipe memory limit the resize fails (EPERM) and the pipe keeps the small
        // size the kernel gave it: slower, still correct.
        let set = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, SIZE as libc::c_int) };
        let size = if set > 0 {
            set
        } else {
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) }
        };
        let capacity = if size > 0 { size as u32 } else { 4096 };
        Ok(Pipe {
            read,
            write,
            capacity,
            pending: 0,
        })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        ALIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

fn splice(from: libc::c_int, to: libc::c_int, len: usize, more: bool) -> io::Result<usize> {
    let more = if more { libc::SPLICE_F_MORE } else { 0 };
    // SAFETY: both fds are open for the duration of the call; null offsets are
    // allowed for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | more,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl super::Conduit for Pipe {
    fn take() -> io::Result<Self> {
        match POOL.with(|p| p.borrow_mut().pop()) {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    fn give(self) {
        debug_assert_eq!(self.pending, 0);
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(self);
            }
        });
    }

    fn fill(&mut self, src: &TcpStream) -> io::Result<Filled> {
        let n = splice(
            src.as_raw_fd(),
            self.write.as_raw_fd(),
            (self.capacity - self.pending) as usize,
            false,
        )?;
        self.pending += n as u32;
        Ok(Filled {
            bytes: n,
            drained: false,
        })
    }

    fn flush(&mut self, dst: &TcpStream, last: bool) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), dst.as_raw_fd(), self.pending as usize, last)?;
        self.pending -= n as u32;
        Ok(n)
    }

    fn pending(&self) -> usize {
        self.pending as usize
    }
}
