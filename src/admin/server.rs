//! The admin listener's connections: accept, admission, and HTTP/1.1 by hyper.
//!
//! What keeps `/healthz` and `/metrics` answering while clients misbehave:
//! - `[admin] allow`/`deny`, then a per-source cap (`[admin] source_limit`, default 8
//!   connections per client address): one address cannot hold more than a few;
//! - a deadline for each request head ([`HEAD_DEADLINE`]) and limits on its size and
//!   header count: a client that trickles bytes is closed within seconds;
//! - a generous total ([`MAX_CONNECTIONS`]) where a new connection, when it is reached,
//!   takes the place of the one idle longest (waiting for a request head, never one
//!   being answered) of the address holding the most: attackers with many addresses
//!   only push each other out, and a scraper's one connection is the last to go.
//!
//! Routes live in the parent module; this file knows nothing of them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::control::{AdminHandle, Control};
use crate::edge::admission::Admission;
use crate::ratelimit::RateLimitedLog;

/// How long a client has to send a whole request head, from its first wait for one.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Connections the admin listener holds at once, over every client: the connection
/// ceiling reserves their descriptors.
pub const MAX_CONNECTIONS: usize = crate::control::ADMIN_MAX_CLIENTS;
/// The largest request head (request line and headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header lines a request may carry.
const MAX_HEADERS: usize = 64;

/// Binds the admin listener and serves it until dropped.
pub fn start(addr: SocketAddr, app: Weak<dyn Control>) -> std::io::Result<AdminHandle> {
    let socket = crate::listener::bind(addr, 1, false)?
        .pop()
        .ok_or_else(|| std::io::Error::other("no socket"))?;
    let local = socket.local_addr()?;
    let listener = TcpListener::from_std(socket)?;
    tracing::info!(%local, "admin listening");
    let task = tokio::spawn(accept_loop(listener, app));
    Ok(AdminHandle::new(addr, local, task))
}

async fn accept_loop(listener: TcpListener, app: Weak<dyn Control>) {
    // Connections end when this loop is dropped (the listener closed or moved).
    let (_stop, stopped) = watch::channel(());
    let slots = Arc::new(Slots::default());
    let mut edge = EdgeCache::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Counted, logged at most once a second, and a pause: never a spin.
                crate::listener::accept_failed("admin listener", &e).await;
                continue;
            }
        };
        let Some(control) = app.upgrade() else { return };
        let admitted = match edge.get(&control).admit(peer.ip(), Instant::now()) {
            Ok(admitted) => admitted,
            Err(refused) => {
                refuse(peer, refused.reason(), &refused);
                continue;
            }
        };
        drop(control);
        let Some(slot) = slots.take(peer.ip()) else {
            refuse(peer, "limit", &"every admin connection is busy answering");
            continue;
        };
        let app = app.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let evicted = slot.evict.clone();
            tokio::select! {
                () = serve(stream, peer, app, &slot) => {}
                () = evicted.notified() => {
                    tracing::debug!(%peer, "admin connection closed to make room for a new one");
                }
                _ = stopped.changed() => {}
            }
            drop(admitted);
        });
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, app: Weak<dyn Control>, slot: &Slot) {
    let service = service_fn(|req: hyper::Request<Incoming>| {
        let app = app.clone();
        let busy = slot.busy();
        async move {
            let response = super::respond(&req, peer, app).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_DEADLINE)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
        tracing::debug!(%peer, "admin connection ended: {e}");
    }
}

pub(super) type Body = Full<Bytes>;

static REFUSE_LOG: RateLimitedLog = RateLimitedLog::new();

fn refuse(peer: SocketAddr, reason: &'static str, why: &dyn std::fmt::Display) {
    crate::metrics::admin_rejected(reason);
    if let Some(suppressed) = REFUSE_LOG.admit() {
        tracing::warn!(client = %peer, reason, suppressed, "admin client refused: {why}");
    }
}

/// The admin admission of the config in force, rebuilt when a reload changes it (the
/// per-source table carries over when its limits stay the same).
#[derive(Default)]
struct EdgeCache {
    config: Option<Arc<Config>>,
    admission: Admission,
}

impl EdgeCache {
    fn get(&mut self, app: &Arc<dyn Control>) -> &Admission {
        let config = app.snapshot().config.clone();
        if !self.config.as_ref().is_some_and(|c| Arc::ptr_eq(c, &config)) {
            let previous = &self.admission;
            self.admission = match &config.admin {
                Some(a) => Admission::new(
                    &a.sources.allow,
                    &a.sources.deny,
                    Some((a.source_limit.limits, a.source_limit.sources)),
                    Some(previous),
                ),
                None => Admission::default(),
            };
            self.config = Some(config);
        }
        &self.admission
    }
}

/// The admin connections alive.
#[derive(Default)]
struct Slots {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

/// Since when a connection has been idle (`None`: answering), how to close it, and
/// its client's address.
type Live = (Option<Instant>, Arc<Notify>, IpAddr);

/// One connection's place in [`Slots`]; dropping it gives the place back.
struct Slot {
    id: u64,
    slots: Arc<Slots>,
    evict: Arc<Notify>,
}

impl Slots {
    /// A place for a new connection from `client`: a free one, or else that of the
    /// connection idle longest among those of the address with the most idle ones,
    /// which is told to close. `None` when every connection is answering.
    fn take(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        let mut live = self.live.lock().ok()?;
        if live.len() >= MAX_CONNECTIONS {
            // Per address: idle connections, and the one idle longest.
            let mut by_source: HashMap<IpAddr, (usize, (Instant, u64))> = HashMap::new();
            for (id, (idle, _, source)) in live.iter() {
                if let Some(since) = *idle {
                    let e = by_source.entry(*source).or_insert((0, (since, *id)));
                    e.0 += 1;
                    e.1 = e.1.min((since, *id));
                }
            }
            let (_, (_, oldest)) = by_source
                .into_values()
                .max_by_key(|&(count, (since, id))| (count, std::cmp::Reverse((since, id))))?;
            if let Some((_, evict, _)) = live.remove(&oldest) {
                evict.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        live.insert(id, (Some(Instant::now()), evict.clone(), client));
        Some(Slot {
            id,
            slots: self.clone(),
            evict,
        })
    }

    fn set_idle(&self, id: u64, idle: Option<Instant>) {
        if let Some(entry) = self.live.lock().ok().as_mut().and_then(|l| l.get_mut(&id)) {
            entry.0 = idle;
        }
    }
}

impl Slot {
    /// Marks the connection as answering until the returned guard drops.
    fn busy(&self) -> Busy {
        self.slots.set_idle(self.id, None);
        Busy {
            id: self.id,
            slots: self.slots.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut live) = self.slots.live.lock() {
            live.remove(&self.id);
        }
    }
}

struct Busy {
    id: u64,
    slots: Arc<Slots>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.slots.set_idle(self.id, Some(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 9, 0, last])
    }

    #[tokio::test]
    async fn a_full_admin_listener_makes_room_by_closing_the_longest_idle_never_a_busy_one() {
        let slots = Arc::new(Slots::default());
        let mut held: Vec<Slot> = (0..MAX_CONNECTIONS).map(|_| slots.take(ip(1)).expect("room")).collect();
        // The first connection is answering a request; the second has been idle longest.
        let busy = held[0].busy();
        let newcomer = slots.take(ip(1)).expect("an idle connection makes room");
        let evicted = tokio::time::timeout(Duration::from_secs(1), held[1].evict.notified()).await;
        assert!(evicted.is_ok(), "the longest-idle connection is told to close");
        assert_eq!(slots.live.lock().unwrap().len(), MAX_CONNECTIONS);
        // Every connection answering: a newcomer is refused instead.
        let all_busy: Vec<Busy> = held.iter().skip(2).map(Slot::busy).chain([newcomer.busy()]).collect();
        assert!(
            slots.take(ip(1)).is_none(),
            "no connection that is answering is closed for a newcomer"
        );
        drop((busy, all_busy));
        held.truncate(10);
        // Ten kept, one of them the evicted one (already gone), and the newcomer.
        assert_eq!(
            slots.live.lock().unwrap().len(),
            10,
            "dropped connections give their places back"
        );
        drop(newcomer);
    }

    #[tokio::test]
    async fn a_full_admin_listener_makes_room_at_the_expense_of_the_address_holding_the_most() {
        let slots = Arc::new(Slots::default());
        // A scraper's connection, idle longest of all; then a flood from two addresses,
        // one of them holding more.
        let scraper = slots.take(ip(1)).expect("room");
        let held: Vec<Slot> = (1..MAX_CONNECTIONS)
            .map(|i| slots.take(ip(if i % 3 == 0 { 2 } else { 3 })).expect("room"))
            .collect();
        let _newcomer = slots.take(ip(4)).expect("an idle connection makes room");
        let evicted = tokio::time::timeout(Duration::from_secs(1), held[0].evict.notified()).await;
        assert!(
            evicted.is_ok(),
            "the longest-idle connection of the address holding the most is told to close"
        );
        let scraper_told = tokio::time::timeout(Duration::from_millis(50), scraper.evict.notified()).await;
        assert!(scraper_told.is_err(), "the scraper's one connection is kept");
    }
}
