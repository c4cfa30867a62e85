//! The portable conduit: a pooled user-space buffer.

use std::cell::RefCell;
use std::io;

use tokio::net::TcpStream;

use super::Filled;

const SIZE: usize = 64 * 1024;
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8; SIZE]>>> = const { RefCell::new(Vec::new()) };
}

/// 16 bytes: each of a connection's two pumps keeps room for one, idle or not.
pub struct Buffer {
    data: Box<[u8; SIZE]>,
    start: u32,
    end: u32,
}

impl super::Conduit for Buffer {
    fn take() -> io::Result<Self> {
        let data = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| {
            let zeroed: Box<[u8]> = vec![0u8; SIZE].into_boxed_slice();
            zeroed.try_into().expect("SIZE bytes")
        });
        Ok(Buffer { data, start: 0, end: 0 })
    }

    fn give(self) {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(self.data);
            }
        });
    }

    fn fill(&mut self, src: &TcpStream) -> io::Result<Filled> {
        let n = src.try_read(&mut self.data[..])?;
        (self.start, self.end) = (0, n as u32);
        Ok(Filled {
            bytes: n,
            drained: n < SIZE,
        })
    }

    fn flush(&mut self, dst: &TcpStream, last: bool) -> io::Result<usize> {
        let bytes = &self.data[self.start as usize..self.end as usize];
        let n = if last {
            send_more(dst, bytes)?
        } else {
            dst.try_write(bytes)?
        };
        self.start += n as u32;
        Ok(n)
    }

    fn pending(&self) -> usize {
        (self.end - self.start) as usize
    }
}

/// Sends with MSG_MORE: the kernel holds a short last chunk back for the FIN that
/// follows (shutdown or close), and sends both in one segment.
#[cfg(target_os = "linux")]
fn send_more(dst: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(dst).send_with_flags(bytes, libc::MSG_MORE | libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
}

#[cfg(not(target_os = "linux"))]
fn send_more(dst: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    dst.try_write(bytes)
}
