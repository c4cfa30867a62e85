//! Moving bytes between a client and its server, both ways, until both sides are done.
//!
//! On Linux bulk bytes never enter user space: `splice(2)` moves them from one socket
//! into a pipe and from the pipe into the other socket; small messages take a pooled
//! buffer, which needs fewer syscalls for a few hundred bytes (see `auto`). Pipes and
//! buffers come from small per-thread pools and are held only while bytes flow, so ten
//! thousand idle watch streams hold none. Elsewhere (or with `forwarding = "copy"`)
//! the buffer does the whole job. Either way: a FIN is carried through as a FIN (the
//! other direction keeps flowing), a reset as a reset, and bytes in equal bytes out.
//!
//! This module does not know about backends or servers; it gets two connected sockets
//! and reports what happened.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::clock::millis_since_start;
use crate::config::Forwarding;

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// How a forwarded connection ended, in the words of the close log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed first (its FIN), then the server finished.
    ClientClosed,
    /// The server closed first, then the client finished.
    ServerClosed,
    ClientReset,
    ServerReset,
    IdleTimeout,
    /// Gatehouse closed it: drain time over at shutdown.
    Shutdown,
    /// Gatehouse closed it: its server went down with `on_down = "close"`.
    ServerDown,
    /// The server stopped answering: data unacknowledged for `user_timeout`, or
    /// keepalive probes unanswered (ETIMEDOUT; EHOSTUNREACH when its address stopped
    /// answering ARP). The client gets a reset.
    ServerTimedOut,
    /// The client stopped answering, the same way; the server gets a reset.
    ClientTimedOut,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client closed",
            End::ServerClosed => "server closed",
            End::ClientReset => "client reset",
            End::ServerReset => "server reset",
            End::IdleTimeout => "idle timeout",
            End::Shutdown => "shutdown",
            End::ServerDown => "server down",
            End::ServerTimedOut => "server timed out",
            End::ClientTimedOut => "client timed out",
        }
    }

    /// Every end, in the order of [`crate::metrics::CLOSE_REASONS`].
    pub const ALL: [End; 9] = [
        End::ClientClosed,
        End::ServerClosed,
        End::ClientReset,
        End::ServerReset,
        End::IdleTimeout,
        End::Shutdown,
        End::ServerDown,
        End::ServerTimedOut,
        End::ClientTimedOut,
    ];

    /// Index into [`crate::metrics::CLOSE_REASONS`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A socket error of a side: a peer that stopped answering has timed out, anything
    /// else is a reset.
    fn failed(reset: End, error: &io::Error) -> End {
        let timed_out = matches!(
            error.raw_os_error(),
            Some(libc::ETIMEDOUT) | Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
        );
        match (reset, timed_out) {
            (End::ClientReset, true) => End::ClientTimedOut,
            (End::ServerReset, true) => End::ServerTimedOut,
            (end, _) => end,
        }
    }

    /// Whether gatehouse should end the connection with a reset rather than a FIN.
    fn resets(self) -> bool {
        !matches!(self, End::ClientClosed | End::ServerClosed)
    }
}

/// What a forwarded connection moved and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub client_to_server: u64,
    pub server_to_client: u64,
    pub end: End,
}

/// Counts bytes as they pass (metrics, status), a chunk at a time.
pub trait Meter {
    fn moved(&self, direction: Direction, bytes: u64);
}

/// Forwards until both directions are closed, one side resets, the connection idles
/// for `idle_timeout`, or `stop` completes (with the reason it gives). On the way,
/// `settle.1` runs once the connection has lasted `settle.0`, when the one timer first
/// fires (an idle timeout shorter than that is noticed then, not before).
pub fn forward<'a, M: Meter, S: Future<Output = End>, F: FnOnce()>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    mode: Forwarding,
    idle_timeout: Duration,
    stop: S,
    meter: M,
    settle: (Duration, F),
) -> Forward<'a, M, S, F> {
    Forward {
        client,
        server,
        meter,
        pumps: Pumps::new(mode),
        progress: Progress {
            last_activity_ms: millis_since_start(),
            client_to_server: 0,
            server_to_client: 0,
        },
        first_closed: None,
        idle_timeout_ms: idle_timeout.as_millis() as u64,
        settle: Some(settle.1),
        timer: tokio::time::sleep(settle.0),
        stop,
    }
}

pin_project_lite::pin_project! {
    /// A forwarded connection, written out by hand rather than as an `async fn`: its
    /// fields are all an idle connection holds (two pumps without conduits, one timer,
    /// the stop signal), so ten thousand idle watch streams stay small.
    pub struct Forward<'a, M, S, F> {
        client: &'a TcpStream,
        server: &'a TcpStream,
        meter: M,
        pumps: Pumps,
        progress: Progress,
        first_closed: Option<End>,
        idle_timeout_ms: u64,
        // Run when the timer first fires.
        settle: Option<F>,
        // One timer for both the idle timeout and the settling.
        #[pin]
        timer: Sleep,
        #[pin]
        stop: S,
    }
}

impl<M: Meter, S: Future<Output = End>, F: FnOnce()> Future for Forward<'_, M, S, F> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        let (client, server, meter) = (*this.client, *this.server, &*this.meter);
        let both = match this.pumps {
            #[cfg(target_os = "linux")]
            Pumps::Auto(pumps) => both_ways(pumps, cx, client, server, this.progress, meter, this.first_closed),
            Pumps::Copy(pumps) => both_ways(pumps, cx, client, server, this.progress, meter, this.first_closed),
        };
        let end = match both {
            Poll::Ready(end) => end,
            Poll::Pending => match this.stop.poll(cx) {
                Poll::Ready(end) => end,
                Poll::Pending => {
                    if !idle_over(
                        this.timer.as_mut(),
                        cx,
                        this.progress,
                        *this.idle_timeout_ms,
                        this.settle,
                    ) {
                        return Poll::Pending;
                    }
                    End::IdleTimeout
                }
            },
        };
        if end.resets() {
            // A reset for a reset, and for anything gatehouse itself cuts short: the peer
            // must not take a cut-off stream for a complete one.
            for s in [*this.client, *this.server] {
                let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
        Poll::Ready(Outcome {
            client_to_server: this.progress.client_to_server,
            server_to_client: this.progress.server_to_client,
            end,
        })
    }
}

/// Bytes moved and when the last of them moved.
struct Progress {
    last_activity_ms: u64,
    client_to_server: u64,
    server_to_client: u64,
}

impl Progress {
    fn moved(&mut self, d: Direction, bytes: usize) {
        match d {
            Direction::ClientToServer => self.client_to_server += bytes as u64,
            Direction::ServerToClient => self.server_to_client += bytes as u64,
        }
        self.last_activity_ms = millis_since_start();
    }
}

/// Whether nothing has moved either way for the idle timeout. The timer first fires
/// for the settling (which runs then); after that, when it fires early (bytes moved
/// since it was set), it is set again for the rest of the timeout.
fn idle_over(
    mut timer: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
    progress: &Progress,
    timeout_ms: u64,
    settle: &mut Option<impl FnOnce()>,
) -> bool {
    loop {
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if let Some(f) = settle.take() {
            f();
        }
        let idle_for = millis_since_start().saturating_sub(progress.last_activity_ms);
        if idle_for >= timeout_ms {
            return true;
        }
        timer
            .as_mut()
            .reset(Instant::now() + Duration::from_millis(timeout_ms - idle_for));
    }
}

/// The two directions, with the conduit of the forwarding mode.
enum Pumps {
    #[cfg(target_os = "linux")]
    Auto([Pump<auto::Auto>; 2]),
    Copy([Pump<copy::Buffer>; 2]),
}

impl Pumps {
    fn new(mode: Forwarding) -> Self {
        match mode {
            #[cfg(target_os = "linux")]
            Forwarding::Splice => Pumps::Auto(Pump::pair()),
            #[cfg(not(target_os = "linux"))]
            Forwarding::Splice => Pumps::Copy(Pump::pair()),
            Forwarding::Copy => Pumps::Copy(Pump::pair()),
        }
    }
}

/// One direction as [`both_ways`] runs it: where bytes come from and go to, and what
/// each way it can end means for the connection.
struct Way<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// `from` sent its FIN.
    closed: End,
    /// A read from `from` failed.
    read_failed: End,
    /// A write to `to` failed.
    write_failed: End,
}

/// Runs both directions; ready with the end once both sides are done (decided by
/// which closed first) or one has failed.
fn both_ways<C: Conduit>(
    pumps: &mut [Pump<C>; 2],
    cx: &mut Context<'_>,
    client: &TcpStream,
    server: &TcpStream,
    progress: &mut Progress,
    meter: &impl Meter,
    first_closed: &mut Option<End>,
) -> Poll<End> {
    let ways = [
        Way {
            from: client,
            to: server,
            closed: End::ClientClosed,
            read_failed: End::ClientReset,
            write_failed: End::ServerReset,
        },
        Way {
            from: server,
            to: client,
            closed: End::ServerClosed,
            read_failed: End::ServerReset,
            write_failed: End::ClientReset,
        },
    ];
    let done = [pumps[0].done, pumps[1].done];
    for (i, (pump, way)) in pumps.iter_mut().zip(&ways).enumerate() {
        let other_done = done[1 - i];
        match pump.poll(cx, way.from, way.to, progress, meter, other_done) {
            Poll::Ready(Ok(())) => {
                first_closed.get_or_insert(way.closed);
            }
            Poll::Ready(Err(Failed::Read(e))) => return Poll::Ready(End::failed(way.read_failed, &e)),
            Poll::Ready(Err(Failed::Write(e))) => return Poll::Ready(End::failed(way.write_failed, &e)),
            Poll::Pending => {}
        }
    }
    if pumps.iter().all(|p| p.done) {
        Poll::Ready(first_closed.unwrap_or(End::ClientClosed))
    } else {
        Poll::Pending
    }
}

/// Which side of a one-way pump failed, and how.
enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// Where bytes wait between the read from one socket and the write to the other: a
/// pipe (splice) or a buffer (copy). Taken from a pool while bytes flow, given back
/// empty when the source has nothing more for now.
trait Conduit: Sized {
    fn take() -> io::Result<Self>;
    /// Returns an empty conduit to the pool.
    fn give(self);
    /// Reads from `src` into the conduit; Ok(0) is the end of the stream.
    fn fill(&mut self, src: &TcpStream) -> io::Result<Filled>;
    /// Writes what the conduit holds into `dst`; returns how much went. `last`: these
    /// are the source's last bytes and a FIN follows at once, so the kernel may hold
    /// them back to send them with it, in one segment (MSG_MORE).
    fn flush(&mut self, dst: &TcpStream, last: bool) -> io::Result<usize>;
    /// Bytes held.
    fn pending(&self) -> usize;
}

/// What one read from the source brought.
struct Filled {
    bytes: usize,
    /// A short read from a socket into a buffer means its receive queue is empty now:
    /// waiting for readiness beats another read that would only say "would block".
    /// (A short splice proves nothing: the pipe may have run out of slots.)
    drained: bool,
}

/// Chunks moved in one poll before yielding, so one busy direction can't starve the
/// other connections of its worker thread.
const CHUNKS_PER_POLL: usize = 16;

/// One direction: from `src` to `dst` until `src` ends, then `dst` gets a FIN (a
/// shutdown; or the close itself, when the other direction has ended first).
struct Pump<C> {
    direction: Direction,
    conduit: Option<C>,
    /// The source has ended; what the conduit holds is the last of it.
    eof: bool,
    done: bool,
}

impl<C: Conduit> Pump<C> {
    fn pair() -> [Self; 2] {
        [Direction::ClientToServer, Direction::ServerToClient].map(|direction| Pump {
            direction,
            conduit: None,
            eof: false,
            done: false,
        })
    }

    /// Moves chunks until the source has nothing more for now (pending), the source
    /// has ended and its FIN is passed on (ready), or a side fails.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        progress: &mut Progress,
        meter: &impl Meter,
        other_done: bool,
    ) -> Poll<Result<(), Failed>> {
        if self.done {
            return Poll::Pending;
        }
        for _ in 0..CHUNKS_PER_POLL {
            ready!(self.send_held(cx, dst, progress, meter)?);
            if self.eof {
                return Poll::Ready(self.pass_fin(dst, other_done));
            }
            ready!(self.take_more(cx, src)?);
        }
        // Budget spent with bytes still flowing: yield, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes what the conduit holds; ready once it holds nothing.
    fn send_held(
        &mut self,
        cx: &mut Context<'_>,
        dst: &TcpStream,
        progress: &mut Progress,
        meter: &impl Meter,
    ) -> Poll<Result<(), Failed>> {
        let Some(c) = self.conduit.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while c.pending() > 0 {
            ready!(dst.poll_write_ready(cx)).map_err(Failed::Write)?;
            match dst.try_io(Interest::WRITABLE, || c.flush(dst, self.eof)) {
                Ok(sent) => {
                    progress.moved(self.direction, sent);
                    meter.moved(self.direction, sent as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The conduit still holds bytes: it is dropped, not pooled.
                Err(e) => {
                    self.conduit = None;
                    return Poll::Ready(Err(Failed::Write(e)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The source's FIN, once all before it is sent: passed on, and this direction is
    /// done.
    fn pass_fin(&mut self, dst: &TcpStream, other_done: bool) -> Result<(), Failed> {
        self.done = true;
        if let Some(c) = self.conduit.take() {
            c.give();
        }
        if other_done {
            // Both sources have ended: the close that follows sends this FIN, with
            // nothing unread to turn it into a reset.
            return Ok(());
        }
        match SockRef::from(dst).shutdown(std::net::Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(Failed::Write(e)),
        }
    }

    /// Reads what the source has into the conduit (taking one from the pool), or waits
    /// for it without holding one.
    fn take_more(&mut self, cx: &mut Context<'_>, src: &TcpStream) -> Poll<Result<(), Failed>> {
        match src.poll_read_ready(cx) {
            Poll::Pending => {
                if let Some(c) = self.conduit.take() {
                    c.give();
                }
                return Poll::Pending;
            }
            Poll::Ready(ready) => ready.map_err(Failed::Read)?,
        }
        // Whether the source's FIN is already here, behind whatever it sent last.
        let fin_queued = fin_queued(src, cx);
        let c = match self.conduit.as_mut() {
            Some(c) => c,
            None => self.conduit.insert(C::take().map_err(Failed::Read)?),
        };
        let filled = src.try_io(Interest::READABLE, || {
            let f = c.fill(src)?;
            if f.drained && f.bytes > 0 && !fin_queued {
                // Report "would block" so that readiness is cleared with the bytes in
                // hand, as tokio's own reads do after a short read.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(f)
        });
        match filled {
            Ok(f) if f.bytes == 0 => self.eof = true,
            // Everything up to the FIN is in hand: this is the end of the stream, without
            // a read to hear it say so, and the bytes go out with the FIN.
            Ok(f) if f.drained => self.eof = true,
            Ok(_) => {}
            // Readiness is cleared: the next poll registers the waker (after sending what
            // a short read brought).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(Failed::Read(e))),
        }
        Poll::Ready(Ok(()))
    }
}

/// Whether `src` has received its peer's FIN (EPOLLRDHUP), and no error: what is in
/// its receive queue is the last of the stream. Asked once readiness is known, so it
/// answers from the readiness tokio already holds, without a syscall or a waker.
fn fin_queued(src: &TcpStream, cx: &mut Context<'_>) -> bool {
    let ready = std::pin::pin!(src.ready(Interest::READABLE | Interest::ERROR));
    match ready.poll(cx) {
        Poll::Ready(Ok(r)) => r.is_read_closed() && !r.is_error(),
        _ => false,
    }
}

#[cfg(target_os = "linux")]
mod auto;
mod copy;
#[cfg(target_os = "linux")]
mod splice;

/// Sets how many splice pipes may be alive at once; past it bursts are copied. The
/// connection ceiling counts on it (`edge::fd_budget`).
pub fn set_max_pipes(max: u64) {
    #[cfg(target_os = "linux")]
    splice::set_max_pipes(max);
    #[cfg(not(target_os = "linux"))]
    let _ = max;
}

#[cfg(test)]
mod tests {
    use super::End;
    use crate::metrics::CLOSE_REASONS;

    #[test]
    fn every_end_has_its_close_reason_label() {
        for (i, end) in End::ALL.iter().enumerate() {
            assert_eq!(end.index(), i);
            assert_eq!(CLOSE_REASONS[i], end.as_str().replace(' ', "_"));
        }
    }

    #[test]
    fn a_peer_that_stopped_answering_timed_out_rather_than_reset() {
        let e = |code| std::io::Error::from_raw_os_error(code);
        assert_eq!(End::failed(End::ServerReset, &e(libc::ETIMEDOUT)), End::ServerTimedOut);
        assert_eq!(
            End::failed(End::ServerReset, &e(libc::EHOSTUNREACH)),
            End::ServerTimedOut
        );
        assert_eq!(End::failed(End::ClientReset, &e(libc::ETIMEDOUT)), End::ClientTimedOut);
        assert_eq!(End::failed(End::ClientReset, &e(libc::ECONNRESET)), End::ClientReset);
        assert_eq!(End::failed(End::ServerReset, &e(libc::EPIPE)), End::ServerReset);
    }
}
