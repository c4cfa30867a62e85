//! Listening sockets: binding them (socket2), their accept loops, and keeping them
//! across reloads.
//!
//! Sockets are keyed by the bind address as configured. A reload keeps the socket of
//! an address that stays (not one refused connection), binds new addresses, and closes
//! removed ones; connections accepted on a closed socket carry on to their end. Each
//! accept loop reads its listener from an `ArcSwap`, so a reload that points an address
//! at another backend takes effect on the next accept.
//!
//! Every accept loop takes a place under one [`Ceiling`] (the connection ceiling the
//! open-file limit allows, see `edge::fd_budget`) before it accepts: at the ceiling the
//! loops stop accepting until a connection closes, and clients wait in the kernel's
//! backlog instead of being accepted into a process that cannot serve them.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::proxy::{self, Connections, Settings};
use crate::ratelimit::RateLimitedLog;
use crate::runtime::{Listener, Snapshot};

const BACKLOG: i32 = 4096;

/// How many client connections may be open at once, over every listener, and how many
/// are: the accept loops take a place before each accept and give it back when the
/// connection ends.
pub struct Ceiling {
    max: AtomicUsize,
    open: AtomicUsize,
    freed: tokio::sync::Notify,
    /// Since when (ms since start, +1 so that 0 means "not paused") the ceiling is reached.
    paused_since_ms: AtomicU64,
    paused_total_ms: AtomicU64,
    metrics: CeilingMetrics,
}

struct CeilingMetrics {
    max: metrics::Gauge,
    open: metrics::Gauge,
    paused: metrics::Counter,
}

/// A place under the ceiling, given back on drop.
pub struct Place(Arc<Ceiling>);

impl Drop for Place {
    fn drop(&mut self) {
        let c = &self.0;
        let was = c.open.fetch_sub(1, Ordering::AcqRel);
        c.metrics.open.set((was - 1) as f64);
        let since = c.paused_since_ms.swap(0, Ordering::AcqRel);
        if since != 0 {
            let ms = (crate::clock::millis_since_start() + 1).saturating_sub(since);
            let total = c.paused_total_ms.fetch_add(ms, Ordering::AcqRel) + ms;
            // A counter holds whole seconds; the status API has the milliseconds.
            c.metrics.paused.absolute(total / 1000);
        }
        c.freed.notify_waiters();
    }
}

static CEILING_LOG: RateLimitedLog = RateLimitedLog::new();

impl Ceiling {
    pub fn new(max: usize) -> Arc<Ceiling> {
        let metrics = CeilingMetrics {
            max: metrics::gauge!(crate::metrics::CONNECTIONS_MAX),
            open: metrics::gauge!(crate::metrics::CONNECTIONS_OPEN),
            paused: metrics::counter!(crate::metrics::ACCEPT_PAUSED),
        };
        metrics.max.set(max as f64);
        metrics.open.set(0.0);
        metrics.paused.absolute(0);
        Arc::new(Ceiling {
            max: AtomicUsize::new(max.max(1)),
            open: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            paused_since_ms: AtomicU64::new(0),
            paused_total_ms: AtomicU64::new(0),
            metrics,
        })
    }

    /// Changes the ceiling (at a reload); connections above a lowered one carry on.
    pub fn set_max(&self, max: usize) {
        self.max.store(max.max(1), Ordering::Release);
        self.metrics.max.set(max.max(1) as f64);
        self.freed.notify_waiters();
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    /// Connections holding a place now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Time spent at the ceiling, not accepting, so far.
    pub fn paused(&self) -> Duration {
        let mut ms = self.paused_total_ms.load(Ordering::Acquire);
        let since = self.paused_since_ms.load(Ordering::Acquire);
        if since != 0 {
            ms += (crate::clock::millis_since_start() + 1).saturating_sub(since);
        }
        Duration::from_millis(ms)
    }

    fn try_take(self: &Arc<Self>) -> Option<Place> {
        let max = self.max();
        let mut open = self.open.load(Ordering::Acquire);
        loop {
            if open >= max {
                return None;
            }
            match self
                .open
                .compare_exchange_weak(open, open + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.metrics.open.set((open + 1) as f64);
                    return Some(Place(self.clone()));
                }
                Err(now) => open = now,
            }
        }
    }

    /// Waits for a place under the ceiling.
    pub async fn take(self: &Arc<Self>) -> Place {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.try_take() {
                return p;
            }
            let now = crate::clock::millis_since_start() + 1;
            if self
                .paused_since_ms
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if let Some(suppressed) = CEILING_LOG.admit() {
                    tracing::warn!(max = self.max(), suppressed,
                        "at the connection ceiling ({} open): not accepting until one closes; new clients wait in the backlog",
                        self.max());
                }
            }
            freed.await;
        }
    }
}

/// A bind address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: cannot bind {addr}: {source}")]
pub struct BindError {
    pub listener: String,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

struct Bound {
    listener: Arc<ArcSwap<Listener>>,
    settings: Arc<ArcSwap<Settings>>,
    local: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// Duplicates of the listening sockets, to change their options at a reload.
    sockets: Vec<std::net::TcpListener>,
}

/// Options accepted connections inherit from their listening socket (Linux copies
/// TCP_NODELAY, the keepalive settings and TCP_USER_TIMEOUT), so that no accept pays
/// for setting them.
fn set_inherited_options(socket: &std::net::TcpListener, settings: &Settings) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_tcp_nodelay(true);
    #[cfg(target_os = "linux")]
    let _ = s.set_tcp_user_timeout(settings.user_timeout);
    let _ = match settings.keepalive {
        Some(idle) => s.set_tcp_keepalive(&crate::connect::keepalive(idle)),
        None => s.set_keepalive(false),
    };
}

impl Drop for Bound {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The listening sockets: every bound address and its accept loops (the listeners
/// they serve are the snapshot's `runtime::Listener`s).
#[derive(Default)]
pub struct Sockets {
    bound: HashMap<SocketAddr, Bound>,
    /// Sockets handed over by systemd (socket activation), by local address.
    inherited: HashMap<SocketAddr, std::net::TcpListener>,
    /// Accept loops of addresses removed by the last `apply`, aborted: each closes its
    /// socket when it is gone, which is a moment later, on a worker thread.
    stopped: Vec<JoinHandle<()>>,
}

impl Sockets {
    /// Takes over sockets passed by systemd (`LISTEN_FDS`), to be used for the bind
    /// addresses they match.
    pub fn adopt_inherited(&mut self, sockets: Vec<std::net::TcpListener>) {
        for s in sockets {
            if let Ok(addr) = s.local_addr() {
                tracing::info!(%addr, "using socket passed by systemd");
                self.inherited.insert(addr, s);
            }
        }
    }

    /// Closes passed sockets that no listener binds: clients queued there would wait
    /// for nothing.
    pub fn close_unused_inherited(&mut self) {
        for (addr, _socket) in self.inherited.drain() {
            tracing::warn!(%addr, "socket passed by systemd matches no listener's bind address; closing it");
        }
    }

    /// Brings the bound sockets in line with `snapshot`. Binds everything new first; if
    /// any bind fails nothing changes and the error is returned.
    pub fn apply(
        &mut self,
        snapshot: &Snapshot,
        settings: Settings,
        conns: &Arc<Connections>,
        ceiling: &Arc<Ceiling>,
    ) -> Result<(), BindError> {
        let mut fresh: HashMap<SocketAddr, Vec<std::net::TcpListener>> = HashMap::new();
        for l in &snapshot.listeners {
            for addr in &l.config.bind {
                if self.bound.contains_key(addr) || fresh.contains_key(addr) {
                    continue;
                }
                let sockets = match self.inherited.remove(addr) {
                    Some(s) => share(s, accept_sockets()),
                    None => bind(*addr, accept_sockets(), l.config.freebind),
                };
                match sockets {
                    Ok(s) => {
                        fresh.insert(*addr, s);
                    }
                    Err(source) => {
                        // Nothing was applied: sockets bound so far in this round close here.
                        return Err(BindError {
                            listener: l.name.to_string(),
                            addr: *addr,
                            source,
                        });
                    }
                }
            }
        }
        let wanted: HashMap<SocketAddr, &Arc<Listener>> = snapshot
            .listeners
            .iter()
            .flat_map(|l| l.config.bind.iter().map(move |a| (*a, l)))
            .collect();
        let stopped = &mut self.stopped;
        self.bound.retain(|addr, b| match wanted.get(addr) {
            Some(l) => {
                b.listener.store(Arc::clone(l));
                b.settings.store(Arc::new(settings));
                for s in &b.sockets {
                    set_inherited_options(s, &settings);
                }
                true
            }
            None => {
                tracing::info!(%addr, "stopped listening");
                stopped.extend(b.tasks.drain(..).inspect(JoinHandle::abort));
                false
            }
        });
        for (addr, sockets) in fresh {
            let Some(l) = wanted.get(&addr) else { continue };
            let listener = Arc::new(ArcSwap::from(Arc::clone(l)));
            let settings = Arc::new(ArcSwap::from_pointee(settings));
            let mut local = addr;
            let mut tasks = Vec::new();
            let mut duplicates = Vec::new();
            for (i, s) in sockets.into_iter().enumerate() {
                if let Ok(a) = s.local_addr() {
                    local = a;
                }
                set_inherited_options(&s, &settings.load());
                if let Ok(d) = s.try_clone() {
                    duplicates.push(d);
                }
                if let Err(e) = s.set_nonblocking(true) {
                    tracing::error!(%addr, "cannot register socket: {e}");
                    continue;
                }
                // The i-th socket of an address on the i-th core: its connections stay there.
                let (listener, settings, conns, ceiling) =
                    (listener.clone(), settings.clone(), conns.clone(), ceiling.clone());
                tasks.push(crate::cores::spawn_on(i, async move {
                    // Registered from the event loop that polls it.
                    // SAFETY: the std listener owns its descriptor, and the AsyncFd owns
                    // the listener: it stays open and the same until the AsyncFd drops.
                    match unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) } {
                        Ok(tl) => accept_loop(tl, i, listener, settings, conns, ceiling).await,
                        Err(e) => tracing::error!(%addr, "cannot register socket: {}", io::Error::from(e)),
                    }
                }));
            }
            tracing::info!(listener = %l.name, %local, backend = %l.backend.name, "listening");
            self.bound.insert(
                addr,
                Bound {
                    listener,
                    settings,
                    local,
                    tasks,
                    sockets: duplicates,
                },
            );
        }
        Ok(())
    }

    /// Stops accepting everywhere (at shutdown); established connections go on. The
    /// sockets close only when their accept loops are gone: await the returned handles.
    pub fn close_all(&mut self) -> Vec<JoinHandle<()>> {
        let tasks = self.bound.drain().flat_map(|(_, mut b)| std::mem::take(&mut b.tasks));
        tasks.inspect(JoinHandle::abort).collect()
    }

    /// The accept loops stopped by `apply`: awaiting them waits until their sockets are closed.
    pub fn take_stopped(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.stopped)
    }

    /// (listener name, address actually bound) for every socket, port 0 resolved.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<(String, SocketAddr)> = self
            .bound
            .values()
            .map(|b| (b.listener.load().name.to_string(), b.local))
            .collect();
        v.sort();
        v
    }
}

/// How many sockets share each address (SO_REUSEPORT), spreading accepts over cores.
pub fn accept_sockets() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4)
}

/// A socket passed by systemd, for `count` event loops: one descriptor each, all on the
/// same listening socket, so that every loop accepts from its queue. Siblings bound
/// with `SO_REUSEPORT` would need systemd's own uid (the kernel keeps a reuse-port group
/// to one user, and systemd binds as root while gatehouse runs as its own user), so the
/// loops share the one queue instead: each waits on it in its own epoll, and whichever
/// wakes first takes the client (the others find nothing and wait again).
fn share(socket: std::net::TcpListener, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut all = Vec::with_capacity(count);
    for _ in 1..count {
        all.push(socket.try_clone()?);
    }
    all.insert(0, socket);
    Ok(all)
}

/// Binds `count` sockets to `addr`; with a port of 0, all share the first one's port.
/// With `freebind`, `addr` need not be on this host yet (IP_FREEBIND): a standby of an
/// HA pair listens on the shared address before keepalived moves it here.
pub fn bind(addr: SocketAddr, count: usize, freebind: bool) -> io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let s = bind_one(addr, count > 1, freebind)?;
        addr = s.local_addr()?;
        sockets.push(s);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr, reuse_port: bool, freebind: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
    let _ = reuse_port;
    if addr.is_ipv6() {
        // "[::]" means IPv6 only; "0.0.0.0" is bound separately when wanted.
        socket.set_only_v6(true)?;
    }
    if freebind {
        #[cfg(target_os = "linux")]
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
        #[cfg(not(target_os = "linux"))]
        return Err(io::Error::new(io::ErrorKind::Unsupported, "freebind needs Linux"));
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

static ACCEPT_ERROR_LOG: RateLimitedLog = RateLimitedLog::new();

/// Notes a failed accept (metric, rate-limited log) and waits a moment when the cause is
/// a shortage (descriptors, memory) that retrying at once would only spin on.
pub async fn accept_failed(what: &str, e: &io::Error) {
    let local = crate::metrics::local_reason(e);
    if let Some(reason) = local {
        crate::metrics::local_error(2, reason);
    }
    if let Some(suppressed) = ACCEPT_ERROR_LOG.admit() {
        tracing::error!(suppressed, "{what}: accept failed: {e}");
    }
    let pause = if local.is_some() { 100 } else { 10 };
    tokio::time::sleep(Duration::from_millis(pause)).await;
}

/// Accepts one client, its socket already non-blocking (accept4 with SOCK_NONBLOCK on
/// Linux: no second call per connection to make it so).
fn accept_nonblocking(socket: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    #[cfg(target_os = "linux")]
    {
        let (stream, peer) = socket2::SockRef::from(socket).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
        let peer = peer
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "accepted a non-IP peer"))?;
        Ok((stream.into(), peer))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let (stream, peer) = socket.accept()?;
        stream.set_nonblocking(true)?;
        Ok((stream, peer))
    }
}

/// Accepts on one socket. A place under the ceiling is taken only once a client is
/// waiting on this very socket, and before it is accepted: at the ceiling the client
/// stays in the backlog, and an idle socket holds no place another could use.
async fn accept_loop(
    socket: AsyncFd<std::net::TcpListener>,
    event_loop: usize,
    listener: Arc<ArcSwap<Listener>>,
    settings: Arc<ArcSwap<Settings>>,
    conns: Arc<Connections>,
    ceiling: Arc<Ceiling>,
) {
    loop {
        let mut ready = match socket.readable().await {
            Ok(r) => r,
            Err(e) => {
                accept_failed(&format!("listener {}", listener.load().name), &e).await;
                continue;
            }
        };
        let place = ceiling.take().await;
        let accepted = match ready.try_io(|s| accept_nonblocking(s.get_ref())) {
            Ok(result) => result.and_then(|(stream, peer)| Ok((TcpStream::from_std(stream)?, peer))),
            // Nobody waiting after all (another wake-up took it): the place goes back.
            Err(_would_block) => continue,
        };
        drop(ready);
        match accepted {
            Ok((stream, peer)) => {
                crate::cores::note_accepted(event_loop);
                let l = listener.load_full();
                let s = **settings.load();
                let conns = conns.clone();
                tokio::spawn(proxy::serve(stream, peer, l, s, conns, place));
            }
            Err(e) => {
                drop(place);
                let what = format!("listener {}", listener.load().name);
                accept_failed(&what, &e).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_accept_that_fails_for_want_of_descriptors_waits_instead_of_spinning() {
        let started = std::time::Instant::now();
        accept_failed("test", &io::Error::from_raw_os_error(libc::EMFILE)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "retried after {waited:?}");
        let started = std::time::Instant::now();
        accept_failed("test", &io::Error::from_raw_os_error(libc::ECONNABORTED)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(10), "retried after {waited:?}");
    }

    #[tokio::test]
    async fn a_place_under_the_ceiling_is_given_back_on_drop() {
        let ceiling = Ceiling::new(1);
        let place = ceiling.take().await;
        assert_eq!(ceiling.open(), 1);
        let waiting = tokio::spawn({
            let c = ceiling.clone();
            async move { c.take().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a second place under a ceiling of 1");
        drop(place);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the waiter gets the freed place")
            .expect("task");
        assert_eq!(ceiling.open(), 1);
        assert!(
            ceiling.paused() >= Duration::from_millis(40),
            "paused {:?}",
            ceiling.paused()
        );
        drop(second);
        assert_eq!(ceiling.open(), 0);
    }
}
