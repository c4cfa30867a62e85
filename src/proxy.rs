//! The data path of one client connection, top to bottom:
//! accept → edge (PROXY header, SNI peek: `edge::inspect`) → pick (waiting in the
//! backend's queue when every server is at its limit) → connect → forward → close log
//! and metrics.
//!
//! Everything a connection needs comes from the listener's snapshot, taken once at
//! accept: a reload during the connection changes nothing for it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::clock::rounded_ms;
use crate::config::{OnDown, ProxyVersion};
use crate::connect::{self, NoServer};
use crate::edge::admission::{Admitted, Refused};
use crate::edge::inspect::{self, Carried, ProxyRefusal};
use crate::edge::proxy_protocol;
use crate::edge::source_rules::{SourceRules, Verdict};
use crate::forward::{self, Direction, End, Meter};
use crate::metrics::TrafficMetrics;
use crate::metrics::QUEUE_REASONS;
use crate::ratelimit::RateLimitedLog;
use crate::runtime::{close_signal, wake_for_close, Backend, Endpoint, Listener, Server};

/// The target of close lines: the text log shows their message alone, the JSON log
/// their fields too.
pub const CLOSE_LOG_TARGET: &str = "gatehouse::connection";

/// What every connection shares: the count of connections and the end of the drain.
#[derive(Default)]
pub struct Connections {
    active: AtomicUsize,
    idle: Notify,
    /// Set when the drain time is over: connections still open are closed.
    closing: AtomicBool,
}

impl Connections {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is left, or `timeout` passes; returns how many remain.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active();
            }
        }
    }

    /// Closes every connection still open (with a reset: their streams are cut short).
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::Release);
        wake_for_close();
    }
}

/// Something that counts who is in it: a connection holds one [`Held`] of each count
/// it belongs to (the process's open connections, its listener's and its endpoint's
/// active ones) for as long as it lives.
trait Count {
    fn enter(&self);
    fn leave(&self);
}

/// A gauge-like counter.
impl Count for AtomicU32 {
    fn enter(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }
    fn leave(&self) {
        self.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connections a drain waits for: the last to leave wakes it.
impl Count for Connections {
    fn enter(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }
    fn leave(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// One place in a [`Count`], given back on drop.
struct Held<'a, C: Count>(&'a C);

impl<'a, C: Count> Held<'a, C> {
    fn new(count: &'a C) -> Self {
        count.enter();
        Held(count)
    }
}

impl<C: Count> Drop for Held<'_, C> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Socket options every connection gets, and its limits.
#[derive(Clone, Copy)]
pub struct Settings {
    pub keepalive: Option<Duration>,
    /// TCP_USER_TIMEOUT of client-side sockets (inherited from the listener).
    pub user_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    pub forwarding: crate::config::Forwarding,
}

/// Serves one accepted client until both sides are done; `place` is its place under
/// the connection ceiling, held to the end.
///
/// A plain function returning an `async` block rather than an `async fn`: the block
/// uses what it captured in place, where an `async fn` would keep each argument twice
/// (as given and as its local). With the edge and the connect boxed (`open`) and
/// forwarding written out by hand (`forward::Forward`), an idle connection's task
/// holds little more than its sockets, its timer and its close-log fields.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<P: Send + 'static>(
    mut client: TcpStream,
    mut peer: SocketAddr,
    listener: Arc<Listener>,
    settings: Settings,
    conns: Arc<Connections>,
    place: P,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // Held to the end, in the task's captures (a local would be a second copy).
        let _ = &place;
        let accepted_at = Instant::now();
        let _open = Held::new(&*conns);
        let _listener_active = Held::new(&listener.counters.active);
        listener.counters.accepted.fetch_add(1, Ordering::Relaxed);
        listener.metrics.accepted.increment(1);

        if let Some(max) = listener.config.max_connections {
            if listener.counters.active.load(Ordering::Relaxed) as usize > max {
                listener.metrics.rejected_limit.increment(1);
                note_rejected(&listener.name, peer, "connection limit reached");
                return;
            }
        }
        // TCP_NODELAY, keepalive and user timeout come with the socket from its listener (listener.rs).

        // The edge and the connect, boxed: what they need while they wait (a PROXY
        // header or a ClientHello in reading, a connect in progress) is freed before
        // forwarding, so a connection that idles for hours holds only what forwarding needs.
        // From here on `peer` is the client a trusted PROXY header carried, if any.
        let Some(session) = Box::pin(open(&mut client, &mut peer, &listener, accepted_at)).await else {
            return;
        };
        // Used in place, not taken apart or referred to by locals: each would be one
        // more field in the task. The server's active count holds the connection from
        // its pick on (`session.conn.slot`).
        let server = &session.backend.servers[session.conn.server].server;
        server.connections.fetch_add(1, Ordering::Relaxed);
        let _endpoint_active = Held::new(&session.conn.endpoint.active);
        session.traffic.active.increment(1.0);

        // Forward until both sides are done, or gatehouse has to cut it short.
        let outcome = forward::forward(
            &client,
            &session.conn.stream,
            settings.forwarding,
            settings.idle_timeout,
            Stop {
                closing: &conns.closing,
                endpoint: (session.backend.config.on_down == OnDown::Close).then_some(&*session.conn.endpoint),
                woken: close_signal().notified(),
            },
            TrafficMeter {
                traffic: session.traffic,
                server,
            },
            // Keepalive and user timeout on the server side, once the connection lasts.
            (connect::SETTLE, || {
                connect::settle(
                    &session.conn.stream,
                    settings.keepalive,
                    session.backend.config.user_timeout,
                )
            }),
        )
        .await;
        session.traffic.active.decrement(1.0);
        session.traffic.closed.increment(outcome.end.index());

        let duration = accepted_at.elapsed();
        listener.metrics.duration.record(duration.as_secs_f64());
        log_close(&listener, peer, &session, duration, &outcome);
    }
}

pin_project_lite::pin_project! {
    /// Completes when gatehouse must cut the connection short: the drain time is over,
    /// or (with `on_down = "close"`) its endpoint went down. Woken by the close signal.
    struct Stop<'a> {
        closing: &'a AtomicBool,
        // The endpoint to watch, with `on_down = "close"`.
        endpoint: Option<&'a Endpoint>,
        #[pin]
        woken: Notified<'static>,
    }
}

impl Future for Stop<'_> {
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let mut this = self.project();
        // Listen before looking, so that no wake-up falls between the two.
        while this.woken.as_mut().poll(cx).is_ready() {
            this.woken.set(close_signal().notified());
        }
        if this.closing.load(Ordering::Acquire) {
            return Poll::Ready(End::Shutdown);
        }
        if this.endpoint.is_some_and(|e| !e.is_up()) {
            return Poll::Ready(End::ServerDown);
        }
        Poll::Pending
    }
}

/// A client past the edge and connected to a server: what forwarding and the close
/// log need.
struct Session<'a> {
    sni: Sni,
    backend: &'a Backend,
    traffic: &'a TrafficMetrics,
    conn: connect::Connected<'a>,
    /// The client's place under its source limit.
    _admitted: Admitted,
}

/// The edge (PROXY header, source rules and limits, SNI), then pick and connect; None
/// when the client was refused or no server could take it (counted and logged here).
async fn open<'a>(
    client: &mut TcpStream,
    client_addr: &mut SocketAddr,
    listener: &'a Listener,
    accepted_at: Instant,
) -> Option<Session<'a>> {
    // Who the client really is (the PROXY header of a trusted balancer in front), then
    // which backend its TLS server name asks for. From here on `peer` is the client the
    // header carried: source rules and limits, logs, source-hash and PROXY sending use it.
    let peer = *client_addr;
    let (peer, carried_dest) = match &listener.trusted {
        None => (peer, None),
        Some(trusted) => match accept_proxy(client, peer, trusted, listener).await {
            Ok(carried) => (carried.source.unwrap_or(peer), carried.dest),
            Err(refusal) => {
                listener.metrics.proxy_refused(refusal.reason());
                note_rejected(&listener.name, peer, &format!("{}: {refusal}", refusal.reason()));
                return None;
            }
        },
    };
    *client_addr = peer;
    // Then allow/deny and per-source limits, on that client (the carried address when
    // a balancer in front sends PROXY headers).
    let admitted = match listener.admission.admit(peer.ip(), accepted_at) {
        Ok(admitted) => admitted,
        Err(refused) => {
            match refused {
                Refused::Denied(_) => listener.metrics.rejected_denied.increment(1),
                Refused::SourceLimit(_) => listener.metrics.rejected_source_limit.increment(1),
            }
            note_refused(&listener.name, peer, &refused);
            return None;
        }
    };

    let peeked = match listener.routes.is_empty() {
        true => None,
        false => Some(inspect::peek_server_name(client, listener.config.inspect_timeout).await),
    };
    let name = peeked.as_ref().and_then(|p| p.as_deref().ok());
    let (backend, traffic, routed) = listener.route(name);
    let sni = match peeked {
        None => Sni::NotPeeked,
        Some(Ok(name)) if routed => Sni::Routed(name.into_boxed_str()),
        Some(Ok(name)) => Sni::Unrouted(name.into_boxed_str()),
        Some(Err(no)) => Sni::NoName(no.default_reason()),
    };
    if let Some(reason) = sni.default_reason() {
        listener.metrics.sni_defaulted(reason);
    }
    let header = backend
        .config
        .send_proxy
        .map(|v| proxy_header(v, peer, carried_dest.or_else(|| client.local_addr().ok())));

    // Pick and connect, trying other servers after a failure. Where servers have a
    // limit (max_connections) and all are full, the client waits its turn first.
    let key = connect::client_key(peer);
    // Keepalive and the user timeout come later, if the connection lasts (connect::SETTLE).
    match connect::connect_with(backend, key, None, header.as_deref()).await {
        Ok(conn) => Some(Session {
            sni,
            backend,
            traffic: &traffic.servers[conn.server],
            conn,
            _admitted: admitted,
        }),
        Err(e) => {
            let (counter, why) = match &e {
                NoServer::NoneUp => (
                    &listener.metrics.rejected_no_server,
                    format!("backend {}: no server is up", backend.name),
                ),
                NoServer::AllFailed { .. } => (
                    &listener.metrics.rejected_connect_failed,
                    format!("backend {}: {e}", backend.name),
                ),
                NoServer::QueueFull { .. } | NoServer::QueueTimeout { .. } => {
                    // The queue closed it: counted and logged as a close, with the
                    // queue's reason as its end, as for any client that reached a backend.
                    if let (Some(closed), Some(why)) = (&traffic.queue_closed, connect::refusal_reason(&e)) {
                        closed.0[why as usize].increment(1);
                    }
                    log_queue_close(listener, peer, &backend.name, &sni, accepted_at.elapsed(), &e);
                    close_gently(client);
                    return None;
                }
            };
            counter.increment(1);
            note_rejected(&listener.name, peer, &why);
            None
        }
    }
}

/// The close line: the short tcplog line as its message, every field for the JSON log.
fn log_close(listener: &Listener, peer: SocketAddr, session: &Session, duration: Duration, outcome: &forward::Outcome) {
    let (backend, conn, sni) = (session.backend, &session.conn, &session.sni);
    let server = &backend.servers[conn.server].server;
    let queue_ms = conn.queued_ms.map(|q| u64::from(q.get()));
    tracing::info!(
        target: CLOSE_LOG_TARGET,
        client = %peer,
        listener = %listener.name,
        backend = %backend.name,
        server = %server.name,
        endpoint = %conn.endpoint.addr,
        connect_ms = rounded_ms(conn.connect_time),
        retries = conn.failures,
        duration_ms = duration.as_millis() as u64,
        bytes_in = outcome.client_to_server,
        bytes_out = outcome.server_to_client,
        end = outcome.end.as_str(),
        queue_ms,
        sni = sni.name(),
        sni_default = sni.default_reason(),
        "{peer} {}/{}/{} {}ms {}s in={} out={} {}{}{}{}",
        listener.name,
        backend.name,
        server.name,
        conn.connect_time.as_millis(),
        duration.as_secs(),
        outcome.client_to_server,
        outcome.server_to_client,
        outcome.end.as_str(),
        match conn.failures {
            0 => String::new(),
            n => format!(" (after {n} failed connect{})", if n == 1 { "" } else { "s" }),
        },
        queued_note(queue_ms),
        sni_note(sni),
    );
}

/// The close line of a client the backend's queue closed: no server, no bytes; its end
/// is the queue's reason (`queue full`, `queue timeout`).
fn log_queue_close(
    listener: &Listener,
    peer: SocketAddr,
    backend: &str,
    sni: &Sni,
    duration: Duration,
    refused: &NoServer,
) {
    let why = connect::refusal_reason(refused).map_or(0, |r| r as usize);
    let end = QUEUE_REASONS[why].replace('_', " ");
    let queue_ms = match refused {
        NoServer::QueueTimeout { waited } => Some(waited.as_millis() as u64),
        _ => None,
    };
    tracing::info!(
        target: CLOSE_LOG_TARGET,
        client = %peer,
        listener = %listener.name,
        backend,
        duration_ms = duration.as_millis() as u64,
        bytes_in = 0u64,
        bytes_out = 0u64,
        end = end.as_str(),
        queue_ms,
        sni = sni.name(),
        sni_default = sni.default_reason(),
        "{peer} {}/{backend}/- -ms {}s in=0 out=0 {end}{}{}",
        listener.name,
        duration.as_secs(),
        queued_note(queue_ms),
        sni_note(sni),
    );
}

/// Closes a client the queue turned away as HAProxy does, with a FIN: the FIN goes
/// first, then what the client sent while it waited (a ClientHello, a request) is read
/// and dropped, so that the close is not the reset Linux sends for a socket closed with
/// bytes unread. At most 64 KiB, without waiting: past that, and for bytes that arrive
/// after the close, a reset (which the client reads after the FIN).
fn close_gently(client: &TcpStream) {
    use std::io::Read;
    let socket = socket2::SockRef::from(client);
    let _ = socket.shutdown(std::net::Shutdown::Write);
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match (&*socket).read(&mut buf) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

fn queued_note(queue_ms: Option<u64>) -> String {
    match queue_ms {
        Some(ms) => format!(" (queued {ms}ms)"),
        None => String::new(),
    }
}

/// What the SNI peek of a routed listener found, for the close line and the metric.
enum Sni {
    /// The listener has no routes: nothing was peeked.
    NotPeeked,
    /// A name a route matched.
    Routed(Box<str>),
    /// A name no route matched: the default backend.
    Unrouted(Box<str>),
    /// No name, and why ([`inspect::NoName::default_reason`]): the default backend.
    NoName(&'static str),
}

impl Sni {
    fn name(&self) -> Option<&str> {
        match self {
            Sni::Routed(n) | Sni::Unrouted(n) => Some(n),
            Sni::NotPeeked | Sni::NoName(_) => None,
        }
    }

    /// Why the client went to the default backend, if it did.
    fn default_reason(&self) -> Option<&'static str> {
        match self {
            Sni::NotPeeked | Sni::Routed(_) => None,
            Sni::Unrouted(_) => Some("no_route"),
            Sni::NoName(why) => Some(why),
        }
    }
}

fn sni_note(sni: &Sni) -> String {
    match (sni.name(), sni.default_reason()) {
        (Some(name), None) => format!(" sni={name}"),
        (Some(name), Some(why)) => format!(" sni={name} sni_default={why}"),
        (None, Some(why)) => format!(" sni_default={why}"),
        (None, None) => String::new(),
    }
}

/// Reads the PROXY header a trusted balancer must send first; anyone else is refused
/// before a byte is read.
async fn accept_proxy(
    client: &mut TcpStream,
    peer: SocketAddr,
    trusted: &SourceRules,
    listener: &Listener,
) -> Result<Carried, ProxyRefusal> {
    if trusted.check(peer.ip()) != Verdict::Allowed {
        return Err(ProxyRefusal::Untrusted);
    }
    let timeout = listener
        .config
        .accept_proxy
        .as_ref()
        .map_or(Duration::ZERO, |a| a.timeout);
    inspect::read_proxy_header(client, timeout).await
}

/// The PROXY header for a client at `source` that connected to `dest`; without a known
/// destination (the socket is failing), the header that says "addresses unknown".
fn proxy_header(version: ProxyVersion, source: SocketAddr, dest: Option<SocketAddr>) -> Vec<u8> {
    match (version, dest) {
        (ProxyVersion::V1, Some(dest)) => proxy_protocol::encode_v1(source, dest),
        (ProxyVersion::V2, Some(dest)) => proxy_protocol::encode_v2(source, dest),
        (ProxyVersion::V1, None) => b"PROXY UNKNOWN\r\n".to_vec(),
        (ProxyVersion::V2, None) => proxy_protocol::encode_v2_local(),
    }
}

struct TrafficMeter<'a> {
    traffic: &'a TrafficMetrics,
    server: &'a Server,
}

impl Meter for TrafficMeter<'_> {
    fn moved(&self, direction: Direction, bytes: u64) {
        match direction {
            Direction::ClientToServer => {
                self.traffic.client_to_server.increment(bytes);
                self.server.bytes_in.fetch_add(bytes, Ordering::Relaxed);
            }
            Direction::ServerToClient => {
                self.traffic.server_to_client.increment(bytes);
                self.server.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }
}

static REJECT_LOG: RateLimitedLog = RateLimitedLog::new();

fn note_rejected(listener: &str, peer: SocketAddr, why: &str) {
    if let Some(suppressed) = REJECT_LOG.admit() {
        tracing::warn!(listener, client = %peer, suppressed, "client rejected: {why}");
    }
}

/// Refusals at the edge have a log line of their own: a denied scanner must not hide
/// the one line about a backend with no server up.
static REFUSE_LOG: RateLimitedLog = RateLimitedLog::new();

fn note_refused(listener: &str, peer: SocketAddr, refused: &Refused) {
    if let Some(suppressed) = REFUSE_LOG.admit() {
        tracing::warn!(listener, client = %peer, reason = refused.reason(), suppressed, "client refused: {refused}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_returned<A, F>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What `serve`'s shape is for (see its doc): the state an idle connection's task
    /// keeps. Every field added to it is paid ten thousand times over by idle watches;
    /// this fails when one is, so that it is added on purpose (raise the bound then).
    /// 688 bytes with Rust 1.95 (tokio's task adds its header to it).
    const SERVE_FUTURE_BYTES: usize = 704;

    #[test]
    fn an_idle_connection_s_task_stays_small() {
        type Args = (
            TcpStream,
            SocketAddr,
            Arc<Listener>,
            Settings,
            Arc<Connections>,
            Arc<()>,
        );
        let size = size_of_returned(|(c, p, l, s, n, place): Args| serve(c, p, l, s, n, place));
        println!("serve's future: {size} bytes");
        assert!(
            size <= SERVE_FUTURE_BYTES,
            "serve's future is {size} bytes, over {SERVE_FUTURE_BYTES}"
        );
    }
}
