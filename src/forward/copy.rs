//! The portable conduit: a pooled user-space buffer.

use std::cell::RefCell;
use std::io;

use tokio::net::TcpStream;

use super::Filled;

const SIZE: usize = 64 * 1024;
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

pub struct Buffer {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl super::Conduit for Buffer {
    fn take() -> io::Result<Self> {
        let data = POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; SIZE].into_boxed_slice());
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
        let n = src.try_read(&mut self.data)?;
        (self.start, self.end) = (0, n);
        Ok(Filled {
            bytes: n,
            drained: n < self.data.len(),
        })
    }

    fn flush(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let n = dst.try_write(&self.data[self.start..self.end])?;
        self.start += n;
        Ok(n)
    }

    fn pending(&self) -> usize {
        self.end - self.start
    }
}
