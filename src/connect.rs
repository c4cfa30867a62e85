//! Connecting a client to a server: pick, connect with a timeout, and on failure try
//! another server, so that a dead server costs the client nothing while others are up.
//! Where servers have a connection limit, the pick takes a place at the server first,
//! and a client that finds every server full waits in the backend's queue for one.
//!
//! Every failed connect is evidence for passive health (consecutive failures mark the
//! endpoint down) and is counted by reason, except a local one: gatehouse out of
//! descriptors, memory, buffers or ephemeral ports says nothing about the server.
//! Socket options for the server side (no delay, keepalive, user timeout) are set here.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::balance::{self, Pick, Request};
use crate::ratelimit::RateLimitedLog;
use crate::runtime::{servers_changed_signal, Backend, Endpoint, Queue, Refusal, Slot};

pub use crate::dial::ConnectError;

static CONNECT_FAILURE_LOG: RateLimitedLog = RateLimitedLog::new();
static LOCAL_FAILURE_LOG: RateLimitedLog = RateLimitedLog::new();

/// A connection made to a server of the backend.
pub struct Connected<'a> {
    pub stream: TcpStream,
    /// Index of the server in `backend.servers`.
    pub server: usize,
    /// Its place among the server's active connections, held to the end.
    pub slot: Slot<'a>,
    pub endpoint: Arc<Endpoint>,
    /// How long the successful connect took.
    pub connect_time: Duration,
    /// Failed attempts before it.
    pub failures: u32,
    /// How long it waited in the backend's queue, in milliseconds rounded up, if it had
    /// to (four bytes: every idle connection's task holds it).
    pub queued_ms: Option<NonZeroU32>,
}

/// No server could take the client.
#[derive(Debug, thiserror::Error)]
pub enum NoServer {
    #[error("no server is up")]
    NoneUp,
    #[error("{attempts} connect attempts failed, the last to {server}: {error}")]
    AllFailed {
        attempts: u32,
        server: String,
        error: ConnectError,
    },
    /// Every server was at its limit and `max_queue` clients were waiting already.
    #[error("every server is at its limit and {max} clients wait already (max_queue)")]
    QueueFull { max: usize },
    /// Every server was at its limit for all of `queue_timeout`.
    #[error("every server stayed at its limit for {waited:?} (queue_timeout)")]
    QueueTimeout { waited: Duration },
}

/// Connects the client (whose address hashes to `client`) to a server of `backend`,
/// trying up to `retries` other servers after a failure.
pub async fn connect(backend: &Backend, client: u64, keepalive: Option<Duration>) -> Result<Connected<'_>, NoServer> {
    connect_with(backend, client, keepalive, None).await
}

/// [`connect`], writing `header` (a PROXY header) first on the server connection; a
/// server that cannot take it counts as a failed connect.
pub async fn connect_with<'a>(
    backend: &'a Backend,
    client: u64,
    keepalive: Option<Duration>,
    header: Option<&[u8]>,
) -> Result<Connected<'a>, NoServer> {
    let config = &backend.config;
    let mut tried: Vec<usize> = Vec::new();
    let mut last: Option<(String, ConnectError)> = None;
    let mut queued = None;
    for _attempt in 0..=config.retries {
        let req = Request {
            client,
            tried: &tried,
            random: rand::random(),
        };
        // Only the first pick may wait in the queue: a retry goes to a server with room
        // or not at all, so that it never holds up the clients behind it.
        let (index, slot) = match place(backend, req, tried.is_empty()).await {
            Placed::At(index, slot, waited) => {
                queued = queued.or(waited);
                (index, slot)
            }
            Placed::Nowhere => break,
            Placed::Refused(refusal) => return Err(refusal),
        };
        tried.push(index);
        let server = &backend.servers[index].server;
        let Some(endpoint) = server.pick_endpoint() else {
            continue;
        };
        let started = Instant::now();
        let connected = match connect_one(endpoint.addr, config.connect_timeout, keepalive).await {
            Ok(stream) => match header {
                Some(h) => write_header(stream, h).await,
                None => Ok(stream),
            },
            Err(e) => Err(e),
        };
        match connected {
            Ok(stream) => {
                let connect_time = started.elapsed();
                endpoint.connect_failures.store(0, Ordering::Relaxed);
                server.metrics.connect_duration.record(connect_time.as_secs_f64());
                // Without limits the place is counted once connected, as it always was.
                let slot = slot.unwrap_or_else(|| backend.servers[index].occupy());
                return Ok(Connected {
                    stream,
                    server: index,
                    slot,
                    endpoint,
                    connect_time,
                    failures: tried.len() as u32 - 1,
                    queued_ms: queued.map(whole_ms),
                });
            }
            Err(ConnectError::Local(e, reason)) => {
                // Not the server's fault, and no other server would fare better now.
                crate::metrics::local_error(0, reason);
                if let Some(suppressed) = LOCAL_FAILURE_LOG.admit() {
                    tracing::warn!(server = %server.label(), endpoint = %endpoint.addr, suppressed,
                        "cannot connect to {} ({}): gatehouse itself is short of resources: {e}", server.label(), endpoint.addr);
                }
                last = Some((server.label(), ConnectError::Local(e, reason)));
            }
            Err(error) => {
                server.metrics.connect_errors.increment(error.reason_index());
                let failures = endpoint.connect_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if let Some(suppressed) = CONNECT_FAILURE_LOG.admit() {
                    tracing::warn!(server = %server.label(), endpoint = %endpoint.addr, suppressed,
                        "connect to {} ({}) failed: {error}", server.label(), endpoint.addr);
                }
                if config.observe && failures >= config.error_limit && endpoint.is_up() {
                    let reason = format!("{failures} consecutive connect failures from traffic, last: {error}");
                    server.set_endpoint_up(&endpoint, false, &reason);
                }
                last = Some((server.label(), error));
            }
        }
    }
    Err(match last {
        None => NoServer::NoneUp,
        Some((server, error)) => NoServer::AllFailed {
            attempts: tried.len() as u32,
            server,
            error,
        },
    })
}

/// A wait in milliseconds, rounded up: a client that waited at all waited 1 ms or more.
fn whole_ms(d: Duration) -> NonZeroU32 {
    let ms = u32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
    NonZeroU32::new(ms).unwrap_or(NonZeroU32::MIN)
}

/// Where a pick put the client.
enum Placed<'a> {
    /// At this server; with a limited backend, with its place there already taken, and
    /// how long it waited for it.
    At(usize, Option<Slot<'a>>, Option<Duration>),
    /// No server can take it now.
    Nowhere,
    /// Its wait in the queue ended without a place.
    Refused(NoServer),
}

/// Picks a server for the client. Without limits, as always; with them, a server with
/// room, its place taken at once; when every server is full (or others wait already,
/// first come first served) and `may_wait`, after waiting in the backend's queue.
async fn place<'a>(backend: &'a Backend, req: Request<'_>, may_wait: bool) -> Placed<'a> {
    let config = &backend.config;
    let Some(queue) = &backend.queue else {
        return match backend.picker.pick(config.balance, &backend.servers, req) {
            Some(index) => Placed::At(index, None, None),
            None => Placed::Nowhere,
        };
    };
    if queue.is_empty() || !may_wait {
        match take(backend, req) {
            Ok((index, slot)) => return Placed::At(index, Some(slot), None),
            Err(Pick::Full) if may_wait => {}
            Err(_) => return Placed::Nowhere,
        }
    }
    wait_in_queue(backend, queue, req).await
}

/// A pick among the servers with room, and a place taken there; raced by another
/// client for the last place, it picks again without that server.
fn take<'a>(backend: &'a Backend, req: Request<'_>) -> Result<(usize, Slot<'a>), Pick> {
    let mut lost: Vec<usize> = Vec::new();
    loop {
        let room = |i: usize| !lost.contains(&i) && backend.servers[i].has_room();
        match backend
            .picker
            .pick_with_room(backend.config.balance, &backend.servers, req, room)
        {
            Pick::Server(index) => match backend.servers[index].take_place() {
                Some(slot) => return Ok((index, slot)),
                None => lost.push(index),
            },
            other => return Err(other),
        }
    }
}

/// Waits in the queue until the client is first and a server has room for it, every
/// server is down, or `queue_timeout` passes.
async fn wait_in_queue<'a>(backend: &'a Backend, queue: &'a Queue, req: Request<'_>) -> Placed<'a> {
    let config = &backend.config;
    let ticket = match queue.join(config.max_queue) {
        Ok(ticket) => ticket,
        Err(_) => {
            return Placed::Refused(NoServer::QueueFull {
                max: config.max_queue.unwrap_or(0),
            })
        }
    };
    let deadline = tokio::time::Instant::now() + config.queue_timeout;
    loop {
        // Listen before looking, so that no server change falls between the two.
        let changed = servers_changed_signal().notified();
        tokio::pin!(changed);
        let first = ticket.is_first();
        if first {
            changed.as_mut().enable();
            match take(backend, req) {
                Ok((index, slot)) => return Placed::At(index, Some(slot), Some(ticket.waited())),
                Err(Pick::Full) => {}
                Err(_) => return Placed::Nowhere,
            }
        }
        let woken = async {
            tokio::select! {
                _ = ticket.woken() => {}
                _ = &mut changed, if first => {}
            }
        };
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            let waited = ticket.timed_out();
            return Placed::Refused(NoServer::QueueTimeout { waited });
        }
    }
}

/// Refusals the queue counts, as the close log names them.
pub fn refusal_reason(e: &NoServer) -> Option<Refusal> {
    match e {
        NoServer::QueueFull { .. } => Some(Refusal::Full),
        NoServer::QueueTimeout { .. } => Some(Refusal::Timeout),
        NoServer::NoneUp | NoServer::AllFailed { .. } => None,
    }
}

/// One connect with a timeout and the server-side socket options.
pub async fn connect_one(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<Duration>,
) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, crate::dial::dial(addr, true)).await {
        Ok(connected) => connected?,
        Err(_) => return Err(ConnectError::Timeout(timeout)),
    };
    set_keepalive(&stream, keepalive);
    Ok(stream)
}

/// Writes a PROXY header on a fresh connection (its send buffer is empty: this does
/// not wait).
async fn write_header(mut stream: TcpStream, header: &[u8]) -> Result<TcpStream, ConnectError> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(header).await.map_err(ConnectError::from_io)?;
    Ok(stream)
}

/// How long a server connection lives before it gets keepalive and its user timeout
/// ([`settle`]): most connections are over sooner, and pay no syscall for them. Much
/// shorter than either timer, which count from the last sign of the peer (keepalive) and
/// from the first unacknowledged segment (user timeout), not from when they are set.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Gives a server connection that lasted [`SETTLE`] its keepalive and user timeout.
pub fn settle(stream: &TcpStream, keepalive: Option<Duration>, user_timeout: Option<Duration>) {
    set_keepalive(stream, keepalive);
    set_user_timeout(stream, user_timeout);
}

/// TCP keepalive, so that a dead peer of a long-idle watch stream is noticed.
pub fn set_keepalive(stream: &TcpStream, idle: Option<Duration>) {
    if let Some(idle) = idle {
        let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive(idle));
    }
}

/// Probes after `idle` without traffic, then every 10 s (or every `idle`, if shorter);
/// 6 unanswered probes end it. With a user timeout set, Linux ends it instead at the
/// first probe after the peer has been silent for the user timeout.
pub fn keepalive(idle: Duration) -> TcpKeepalive {
    let ka = TcpKeepalive::new().with_time(idle);
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let ka = ka.with_interval(idle.min(Duration::from_secs(10))).with_retries(6);
    ka
}

/// TCP_USER_TIMEOUT: data unacknowledged this long ends the connection (ETIMEDOUT),
/// instead of ~15 minutes of retransmissions. Linux only; elsewhere keepalive alone.
pub fn set_user_timeout(stream: &TcpStream, timeout: Option<Duration>) {
    #[cfg(target_os = "linux")]
    if timeout.is_some() {
        let _ = SockRef::from(stream).set_tcp_user_timeout(timeout);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, timeout);
}

/// The hash of a client for `source-hash`.
pub fn client_key(peer: SocketAddr) -> u64 {
    balance::client_hash(peer.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn gatehouse_s_own_shortages_are_local_failures_not_the_server_s() {
        for (errno, reason) in [
            (libc::EMFILE, "emfile"),
            (libc::ENFILE, "enfile"),
            (libc::ENOBUFS, "enobufs"),
            (libc::ENOMEM, "enomem"),
            (libc::EADDRNOTAVAIL, "eaddrnotavail"),
        ] {
            match ConnectError::from_io(io::Error::from_raw_os_error(errno)) {
                ConnectError::Local(_, r) => assert_eq!(crate::metrics::LOCAL_ERROR_REASONS[r], reason),
                other => panic!("errno {errno} taken for the server's failure: {other:?}"),
            }
        }
    }

    #[test]
    fn a_server_s_failures_stay_the_server_s() {
        let refused = ConnectError::from_io(io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(matches!(refused, ConnectError::Refused), "{refused:?}");
        let unreachable = ConnectError::from_io(io::Error::from_raw_os_error(libc::EHOSTUNREACH));
        assert!(matches!(unreachable, ConnectError::Unreachable(_)), "{unreachable:?}");
        let reset = ConnectError::from_io(io::Error::from_raw_os_error(libc::ECONNRESET));
        assert!(matches!(reset, ConnectError::Other(_)), "{reset:?}");
    }
}
