//! The conduit of `forwarding = "splice"`, as HAProxy's splice-auto does it: a burst
//! starts with a read into a pooled buffer; a short read carries a small message
//! (an API request, a watch event) with the fewest syscalls, and a read that fills
//! the buffer means bulk, so the rest of the burst goes through a pipe, zero-copy.

use std::io;

use tokio::net::TcpStream;

use super::{copy::Buffer, splice::Pipe, Conduit, Filled};

pub struct Auto {
    buffer: Option<Buffer>,
    pipe: Option<Pipe>,
    splicing: bool,
}

impl Conduit for Auto {
    fn take() -> io::Result<Self> {
        Ok(Auto {
            buffer: None,
            pipe: None,
            splicing: false,
        })
    }

    fn give(self) {
        if let Some(b) = self.buffer {
            b.give();
        }
        if let Some(p) = self.pipe {
            p.give();
        }
    }

    fn fill(&mut self, src: &TcpStream) -> io::Result<Filled> {
        if self.splicing && self.pipe.is_none() {
            // No pipe to be had (the budget is spent, or pipe2 failed): copy this burst.
            match Pipe::take() {
                Ok(p) => self.pipe = Some(p),
                Err(_) => self.splicing = false,
            }
        }
        if let (true, Some(pipe)) = (self.splicing, self.pipe.as_mut()) {
            return pipe.fill(src);
        }
        let buffer = match self.buffer.as_mut() {
            Some(b) => b,
            None => self.buffer.insert(Buffer::take()?),
        };
        let filled = buffer.fill(src)?;
        self.splicing = !filled.drained && filled.bytes > 0;
        Ok(filled)
    }

    fn flush(&mut self, dst: &TcpStream, last: bool) -> io::Result<usize> {
        // Only one of them holds bytes: the pump flushes all before it reads again.
        match (&mut self.buffer, &mut self.pipe) {
            (Some(b), _) if b.pending() > 0 => b.flush(dst, last),
            (_, Some(p)) => p.flush(dst, last),
            _ => Ok(0),
        }
    }

    fn pending(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| b.pending()) + self.pipe.as_ref().map_or(0, |p| p.pending())
    }
}
