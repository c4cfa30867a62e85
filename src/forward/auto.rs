//! The conduit of `forwarding = "splice"`, as HAProxy's splice-auto does it: a burst
//! starts with a read into a pooled buffer; a short read carries a small message
//! (an API request, a watch event) with the fewest syscalls, and a read that fills
//! the buffer means bulk, so the rest of the burst goes through a pipe, zero-copy.

use std::io;

use tokio::net::TcpStream;

use super::{copy::Buffer, splice::Pipe, Conduit, Filled};

/// What carries the current burst: 24 bytes, and nothing is held between bursts.
pub enum Auto {
    /// Small messages, and bulk while no pipe can be had. `bulk`: the last read filled
    /// the buffer, so the rest of the burst goes through a pipe if one can be had.
    Copy {
        buffer: Buffer,
        bulk: bool,
    },
    Splice(Pipe),
}

impl Conduit for Auto {
    fn take() -> io::Result<Self> {
        Ok(Auto::Copy {
            buffer: Buffer::take()?,
            bulk: false,
        })
    }

    fn give(self) {
        match self {
            Auto::Copy { buffer, .. } => buffer.give(),
            Auto::Splice(pipe) => pipe.give(),
        }
    }

    fn fill(&mut self, src: &TcpStream) -> io::Result<Filled> {
        if let Auto::Copy { bulk: true, .. } = self {
            // Bulk: the rest of the burst goes through a pipe (the buffer is empty here:
            // the pump sends all it holds before reading again). With no pipe to be had
            // (the budget is spent, or pipe2 failed) this read is copied.
            if let Ok(pipe) = Pipe::take() {
                if let Auto::Copy { buffer, .. } = std::mem::replace(self, Auto::Splice(pipe)) {
                    buffer.give();
                }
            }
        }
        match self {
            Auto::Copy { buffer, bulk } => {
                let filled = buffer.fill(src)?;
                *bulk = !filled.drained && filled.bytes > 0;
                Ok(filled)
            }
            Auto::Splice(pipe) => pipe.fill(src),
        }
    }

    fn flush(&mut self, dst: &TcpStream, last: bool) -> io::Result<usize> {
        match self {
            Auto::Copy { buffer, .. } => buffer.flush(dst, last),
            Auto::Splice(pipe) => pipe.flush(dst, last),
        }
    }

    fn pending(&self) -> usize {
        match self {
            Auto::Copy { buffer, .. } => buffer.pending(),
            Auto::Splice(pipe) => pipe.pending(),
        }
    }
}
