//! The running state: an immutable [`Snapshot`] of listeners, backends and servers,
//! and how a new one is built from a config and the old snapshot.
//!
//! A snapshot is never changed once built; a reload builds a new one and swaps it in
//! whole. What lives longer than a snapshot is the [`Server`]: its resolved endpoints,
//! health, counters and operator state (drain, disable) carry over when the server
//! stays in the config with the same address and check. Those few mutable facts are
//! atomics owned by the server, written by the resolver, the health checker and the
//! operator, read by the data path without locks. `queue.rs` holds the places at
//! servers with a connection limit and the queue of a backend that has such servers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use crate::balance::{self, Candidate, Picker};
use crate::certwatch::CertReport;
use crate::clock::{millis_since_start, unix_now};
use crate::config::{BackendConfig, CheckKind, Config, HealthConfig, Host, ListenerConfig, ServerConfig};
use crate::edge::admission::Admission;
use crate::edge::sni::SniRoutes;
use crate::edge::source_rules::SourceRules;
use crate::metrics::{ListenerMetrics, QueueClosed, ServerMetrics, TrafficMetrics};
use crate::ratelimit::RateLimitedLog;

mod queue;

pub use queue::{servers_changed_signal, Queue, QueueCounts, Refusal, Slot, Ticket};

/// What the operator set for a server at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    /// Normal service.
    Enabled = 0,
    /// No new connections while another server of its backend can take them (then
    /// only as a last resort); established ones continue. Still health-checked.
    Drain = 1,
    /// Maintenance: no new connections, not health-checked.
    Disabled = 2,
}

impl AdminState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Disabled,
            _ => AdminState::Enabled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }
}

/// A server's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Up,
    Down,
    Drain,
    Disabled,
    /// Its name has not resolved to any address yet.
    Unresolved,
    /// Resolved, but no health check has decided its state yet.
    Starting,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Drain => "drain",
            ServerState::Disabled => "disabled",
            ServerState::Unresolved => "unresolved",
            ServerState::Starting => "starting",
        }
    }
}

/// The last result of an endpoint's health check, for logs and the status API.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// `None` until the first check ran; `Ok` or the reason it failed.
    pub last_result: Option<Result<(), String>>,
    pub last_duration: Duration,
    pub last_at: Option<f64>,
}

/// One resolved address of a server: what is connected to and health-checked.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    up: AtomicBool,
    /// When it last came up (ms since process start), for slow start.
    up_since_ms: AtomicU64,
    pub active: AtomicU32,
    /// Consecutive failed connects from real traffic (passive health).
    pub connect_failures: AtomicU32,
    pub check: Mutex<CheckReport>,
    /// What the certificate watch last saw here, per server name.
    pub certs: Mutex<Vec<CertReport>>,
    /// Limits the certificate watch's log lines about this address.
    pub cert_log: RateLimitedLog,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            // Until its first check, a server is treated as up, as HAProxy does.
            up: AtomicBool::new(true),
            up_since_ms: AtomicU64::new(0),
            active: AtomicU32::new(0),
            connect_failures: AtomicU32::new(0),
            check: Mutex::new(CheckReport::default()),
            certs: Mutex::new(Vec::new()),
            cert_log: RateLimitedLog::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// An endpoint is eligible while it is up; a server's connections go to the least busy.
impl Candidate for Endpoint {
    fn weight(&self) -> u32 {
        u32::from(self.is_up())
    }
    fn backup(&self) -> bool {
        false
    }
    fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    fn key(&self) -> u64 {
        0
    }
}

/// Wakes the connections that may have to be cut short: at the end of the drain time,
/// and when an endpoint goes down (for backends with `on_down = "close"`). One signal
/// for both keeps an idle connection small; each connection checks whether the
/// wake-up concerns it. Sharded by thread, so that connections of different event
/// loops never wait on one list (and its lock).
pub fn close_signal() -> &'static Notify {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % CLOSE_SHARDS;
    }
    &CLOSE_SIGNALS[SHARD.with(|s| *s)]
}

const CLOSE_SHARDS: usize = 8;
static CLOSE_SIGNALS: [Notify; CLOSE_SHARDS] = [const { Notify::const_new() }; CLOSE_SHARDS];

/// Wakes every connection to check whether it must close.
pub fn wake_for_close() {
    for signal in &CLOSE_SIGNALS {
        signal.notify_waiters();
    }
}

/// A server of a backend, as long as it stays in the config with the same address and check.
pub struct Server {
    pub backend: Arc<str>,
    pub name: Arc<str>,
    pub host: Host,
    pub port: u16,
    pub health: HealthConfig,
    admin: AtomicU8,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Publishes endpoint-set changes to the health checker.
    endpoints_changed: watch::Sender<u64>,
    resolved: AtomicBool,
    /// Any endpoint up: what the balancer reads.
    available: AtomicBool,
    /// A health check (or real traffic failing) has decided its state; until then it
    /// is "starting" and its state is not logged. Without a check, from the start.
    decided: AtomicBool,
    last_change: Mutex<(f64, String)>,
    pub active: AtomicU32,
    pub connections: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Set once the server has left the config: its resolver and checks stop.
    retired: AtomicBool,
    /// Set once its snapshot is in force: only then does it publish its state to the
    /// metrics, whose labels it may share with the server it replaces.
    live: AtomicBool,
    pub metrics: ServerMetrics,
    /// Spreads a server's connections over its endpoints.
    endpoint_picker: Picker,
    /// Its backend's queue, once the backend has limits: a place given back here wakes
    /// it, also from connections of a snapshot from before the limits.
    queue: OnceLock<Arc<Queue>>,
}

impl Server {
    pub fn new(backend: &str, config: &ServerConfig, health: &HealthConfig) -> Arc<Self> {
        let s = Arc::new(Server {
            backend: backend.into(),
            name: config.name.as_str().into(),
            host: config.host.clone(),
            port: config.port,
            health: health.clone(),
            admin: AtomicU8::new(AdminState::Enabled as u8),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            endpoints_changed: watch::channel(0).0,
            resolved: AtomicBool::new(false),
            available: AtomicBool::new(false),
            decided: AtomicBool::new(health.check == CheckKind::None),
            last_change: Mutex::new((unix_now(), "configured".into())),
            active: AtomicU32::new(0),
            connections: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            live: AtomicBool::new(false),
            metrics: ServerMetrics::new(backend, &config.name),
            endpoint_picker: Picker::default(),
            queue: OnceLock::new(),
        });
        if let Host::Ip(ip) = config.host {
            s.set_addresses(&[SocketAddr::new(ip, config.port)]);
        }
        s
    }

    /// The address as configured, e.g. `arkveld:6443`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.backend, self.name)
    }

    pub fn endpoints(&self) -> arc_swap::Guard<Arc<Vec<Arc<Endpoint>>>> {
        self.endpoints.load()
    }

    pub fn subscribe_endpoints(&self) -> watch::Receiver<u64> {
        self.endpoints_changed.subscribe()
    }

    /// Replaces the resolved addresses; endpoints whose address stays keep their state.
    /// Returns whether the set changed.
    pub fn set_addresses(&self, addrs: &[SocketAddr]) -> bool {
        let old = self.endpoints.load();
        let mut sorted: Vec<SocketAddr> = addrs.to_vec();
        sorted.sort();
        sorted.dedup();
        let same = old.len() == sorted.len() && old.iter().zip(&sorted).all(|(e, a)| e.addr == *a);
        self.resolved.store(true, Ordering::Release);
        if same {
            return false;
        }
        let new: Vec<Arc<Endpoint>> = sorted
            .iter()
            .map(|a| {
                old.iter()
                    .find(|e| e.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(*a)))
            })
            .collect();
        self.endpoints.store(Arc::new(new));
        self.endpoints_changed.send_modify(|g| *g += 1);
        self.refresh_available(None, false);
        true
    }

    /// Marks an endpoint up or down; returns whether that changed anything.
    pub fn set_endpoint_up(&self, endpoint: &Endpoint, up: bool, reason: &str) -> bool {
        if endpoint.up.swap(up, Ordering::AcqRel) == up {
            self.decided(reason);
            return false;
        }
        let first = !self.decided.swap(true, Ordering::AcqRel);
        if up {
            // Never 0, which `ramp` reads as "up since start": the clock starts lazily, so
            // the first transition of a process with no traffic yet would read 0.
            endpoint
                .up_since_ms
                .store(millis_since_start().max(1), Ordering::Release);
            endpoint.connect_failures.store(0, Ordering::Release);
        }
        if !up {
            // Connections to it may have to close (`on_down = "close"`).
            wake_for_close();
        }
        self.refresh_available(Some(reason), first);
        true
    }

    /// A check confirmed the state an endpoint has: the first time, the server's state
    /// is decided (no longer "starting") and logged.
    pub fn decided(&self, reason: &str) {
        if !self.decided.swap(true, Ordering::AcqRel) {
            self.refresh_available(Some(reason), true);
        }
    }

    /// Recomputes whether any endpoint is up; logs a change (or, with `decided_now`, the
    /// state a first check decided), but nothing before a check decided.
    fn refresh_available(&self, reason: Option<&str>, decided_now: bool) {
        let any_up = self.endpoints.load().iter().any(|e| e.is_up());
        let was = self.available.swap(any_up, Ordering::AcqRel);
        if was != any_up {
            queue::servers_changed();
        }
        if (was != any_up || decided_now) && self.decided.load(Ordering::Acquire) {
            let state = if any_up { "UP" } else { "DOWN" };
            let reason = reason.unwrap_or(if any_up { "address resolved" } else { "no address" });
            if let Ok(mut lc) = self.last_change.lock() {
                *lc = (unix_now(), reason.to_string());
            }
            if any_up {
                tracing::info!(backend = %self.backend, server = %self.name, "server {} {state}: {reason}", self.label());
            } else {
                tracing::warn!(backend = %self.backend, server = %self.name, "server {} {state}: {reason}", self.label());
            }
        }
        self.publish_state();
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Acquire))
    }

    pub fn set_admin_state(&self, state: AdminState, who: &str) -> bool {
        let old = AdminState::from_u8(self.admin.swap(state as u8, Ordering::AcqRel));
        if old == state {
            return false;
        }
        if let Ok(mut lc) = self.last_change.lock() {
            *lc = (unix_now(), format!("set to {} by {who}", state.as_str()));
        }
        tracing::info!(backend = %self.backend, server = %self.name, by = %who,
            "server {} {} (was {})", self.label(), state.as_str(), old.as_str());
        self.publish_state();
        queue::servers_changed();
        true
    }

    pub fn state(&self) -> ServerState {
        match self.admin_state() {
            AdminState::Disabled => ServerState::Disabled,
            AdminState::Drain => ServerState::Drain,
            AdminState::Enabled if !self.resolved.load(Ordering::Acquire) => ServerState::Unresolved,
            AdminState::Enabled if self.endpoints.load().is_empty() => ServerState::Unresolved,
            AdminState::Enabled if !self.decided.load(Ordering::Acquire) => ServerState::Starting,
            AdminState::Enabled if self.available.load(Ordering::Acquire) => ServerState::Up,
            AdminState::Enabled => ServerState::Down,
        }
    }

    fn publish_state(&self) {
        if self.live.load(Ordering::Acquire) {
            self.metrics.set_state(self.state().as_str());
        }
    }

    /// Its snapshot is in force: from now on its state is published.
    pub fn go_live(&self) {
        self.live.store(true, Ordering::Release);
        self.publish_state();
    }

    /// Last state change: when (unix seconds) and why.
    pub fn last_change(&self) -> (f64, String) {
        self.last_change.lock().map(|lc| lc.clone()).unwrap_or_default()
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.live.store(false, Ordering::Release);
        self.endpoints_changed.send_modify(|g| *g += 1);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Can it take a new connection now?
    pub fn accepts_new(&self) -> bool {
        self.admin_state() == AdminState::Enabled && self.available.load(Ordering::Acquire)
    }

    /// Drained but up: it takes new connections only when no other server of its
    /// backend can (drain is a preference, not a refusal of last resort).
    pub fn last_resort(&self) -> bool {
        self.admin_state() == AdminState::Drain && self.available.load(Ordering::Acquire)
    }

    /// The endpoint a new connection goes to: the least busy of those up, in turn on ties.
    pub fn pick_endpoint(&self) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        let req = balance::Request {
            client: 0,
            tried: &[],
            random: 0,
        };
        let i = self
            .endpoint_picker
            .pick(crate::config::Balance::LeastConn, &endpoints, req)?;
        Some(endpoints[i].clone())
    }

    /// Its backend has limits from now on: places given back here wake `queue`.
    fn join_queue(&self, queue: &Arc<Queue>) {
        let _ = self.queue.set(queue.clone());
    }

    /// Its backend's queue, if the backend has (or had) limits.
    fn queue(&self) -> Option<&Queue> {
        self.queue.get().map(|q| &**q)
    }

    /// Ramp factor in (0, 1] for slow start: how far into `slow_start` its newest up endpoint is.
    fn ramp(&self, slow_start: Option<Duration>) -> f64 {
        let Some(window) = slow_start else { return 1.0 };
        let now = millis_since_start();
        let since = self
            .endpoints
            .load()
            .iter()
            .filter(|e| e.is_up())
            .map(|e| e.up_since_ms.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        // Up since start (0): no ramp; a server configured at boot takes its share at once.
        if since == 0 {
            return 1.0;
        }
        let elapsed = now.saturating_sub(since) as f64;
        (elapsed / window.as_millis() as f64).clamp(0.05, 1.0)
    }
}

/// A server as one snapshot's backend lists it: the server plus this config's weight
/// and limit.
pub struct ServerEntry {
    pub server: Arc<Server>,
    pub weight: u32,
    pub backup: bool,
    pub key: u64,
    slow_start: Option<Duration>,
    /// Connections it takes at once; `None`: no limit.
    pub max_connections: Option<u32>,
}

impl ServerEntry {
    /// Whether it could take one more connection now (always, without a limit).
    pub fn has_room(&self) -> bool {
        self.max_connections
            .is_none_or(|max| self.server.active.load(Ordering::SeqCst) < max)
    }

    /// Takes a place here, counted in its active connections until the slot is dropped:
    /// `None` when it is at its limit.
    pub fn take_place(&self) -> Option<Slot<'_>> {
        Slot::reserve(self)
    }

    /// Takes a place here whatever the limit: a connection made to a server of a
    /// backend without limits.
    pub fn occupy(&self) -> Slot<'_> {
        Slot::occupy(self)
    }

    /// Its configured weight, scaled by slow start.
    fn ramped_weight(&self) -> u32 {
        let w = f64::from(self.weight) * 16.0 * self.server.ramp(self.slow_start);
        (w as u32).max(1)
    }
}

impl Candidate for ServerEntry {
    fn weight(&self) -> u32 {
        if !self.server.accepts_new() {
            return 0;
        }
        self.ramped_weight()
    }
    fn backup(&self) -> bool {
        self.backup
    }
    fn last_resort_weight(&self) -> u32 {
        if !self.server.last_resort() {
            return 0;
        }
        self.ramped_weight()
    }
    fn active(&self) -> u32 {
        self.server.active.load(Ordering::Relaxed)
    }
    fn key(&self) -> u64 {
        self.key
    }
}

pub struct Backend {
    pub name: Arc<str>,
    pub config: BackendConfig,
    pub servers: Vec<ServerEntry>,
    pub picker: Picker,
    /// Where clients wait when every server is at its limit; `None` when no server of
    /// the backend has one (and had none before a reload).
    pub queue: Option<Arc<Queue>>,
}

impl Backend {
    pub fn servers_up(&self) -> usize {
        self.servers.iter().filter(|s| s.server.accepts_new()).count()
    }
}

/// A listener as the data path sees it in one snapshot.
pub struct Listener {
    pub name: Arc<str>,
    pub config: ListenerConfig,
    pub backend: Arc<Backend>,
    pub metrics: ListenerMetrics,
    pub traffic: BackendTraffic,
    pub counters: Arc<ListenerCounters>,
    /// `allow`/`deny` and `source_limit`: the first check on every client.
    pub admission: Admission,
    /// Sources allowed to connect with a PROXY header (`accept_proxy`); `None`: off.
    pub trusted: Option<SourceRules>,
    /// SNI routes to other backends than `backend`; empty: no peeking.
    pub routes: SniRoutes<Route>,
}

/// Where an SNI route of a listener goes, with its traffic handles.
pub struct Route {
    pub backend: Arc<Backend>,
    pub traffic: BackendTraffic,
}

/// A listener's metric handles for one backend it sends clients to.
pub struct BackendTraffic {
    /// Indexed like `backend.servers`.
    pub servers: Vec<TrafficMetrics>,
    /// Clients its queue closed; `None` for a backend without one.
    pub queue_closed: Option<QueueClosed>,
}

impl BackendTraffic {
    fn new(listener: &str, backend: &Backend) -> Self {
        BackendTraffic {
            servers: backend
                .servers
                .iter()
                .map(|s| TrafficMetrics::new(listener, &backend.name, &s.server.name))
                .collect(),
            queue_closed: backend
                .queue
                .as_ref()
                .map(|_| QueueClosed::new(listener, &backend.name)),
        }
    }
}

impl Listener {
    /// The backend for a client that asked for `sni` (and its traffic handles): the
    /// matching route's, else the listener's own; and whether a route matched.
    pub fn route(&self, sni: Option<&str>) -> (&Arc<Backend>, &BackendTraffic, bool) {
        match sni.and_then(|name| self.routes.route(name)) {
            Some(r) => (&r.backend, &r.traffic, true),
            None => (&self.backend, &self.traffic, false),
        }
    }
}

/// The backend of `bc`, carrying over from `old` its queue, its rotation and the
/// servers that stay (into `kept`; new ones into `added`).
fn build_backend(
    bc: &BackendConfig,
    old: Option<&Snapshot>,
    added: &mut Vec<Arc<Server>>,
    kept: &mut Vec<Arc<Server>>,
) -> Arc<Backend> {
    let old_backend = old.and_then(|o| o.backends.iter().find(|b| *b.name == *bc.name));
    // The queue outlives a reload, so that places given back by connections of
    // the old snapshot wake the clients that wait; it is made once a server of
    // the backend has a limit.
    let queue = match old_backend.and_then(|b| b.queue.clone()) {
        Some(q) => Some(q),
        None => bc.limited().then(|| Arc::new(Queue::new(&bc.name))),
    };
    let servers = bc
        .servers
        .iter()
        .map(|sc| server_entry(bc, sc, old, added, kept))
        .collect::<Vec<ServerEntry>>();
    if let Some(q) = &queue {
        for e in &servers {
            e.server.join_queue(q);
        }
    }
    // The rotation goes on over the servers that stay, like their health.
    let picker = match old_backend {
        Some(ob) => {
            let old_index: Vec<Option<usize>> = servers
                .iter()
                .map(|e| ob.servers.iter().position(|o| Arc::ptr_eq(&o.server, &e.server)))
                .collect();
            Picker::carry_over(&ob.picker, &old_index)
        }
        None => Picker::default(),
    };
    Arc::new(Backend {
        name: bc.name.as_str().into(),
        config: bc.clone(),
        servers,
        picker,
        queue,
    })
}

/// The entry of server `sc`: the server of `old` if its address and check are the
/// same (into `kept`), else a new one (into `added`).
fn server_entry(
    bc: &BackendConfig,
    sc: &ServerConfig,
    old: Option<&Snapshot>,
    added: &mut Vec<Arc<Server>>,
    kept: &mut Vec<Arc<Server>>,
) -> ServerEntry {
    let previous = old.and_then(|o| o.server(&bc.name, &sc.name));
    let server = match previous {
        Some(p) if p.host == sc.host && p.port == sc.port && p.health == bc.health => {
            kept.push(p.clone());
            p
        }
        _ => {
            let s = Server::new(&bc.name, sc, &bc.health);
            // Operator state outlives an address or check change.
            if let Some(p) = previous {
                s.admin.store(p.admin_state() as u8, Ordering::Release);
            }
            added.push(s.clone());
            s
        }
    };
    ServerEntry {
        key: balance::hash_bytes(sc.name.as_bytes()),
        server,
        weight: sc.weight,
        backup: sc.backup,
        slow_start: bc.slow_start,
        max_connections: sc.max_connections,
    }
}

/// The listener of `lc`, keeping its counters and its clients' admission state from
/// `old`; `None` when its backend is not among `backends`.
fn build_listener(lc: &ListenerConfig, backends: &[Arc<Backend>], old: Option<&Snapshot>) -> Option<Arc<Listener>> {
    let backend = backends.iter().find(|b| *b.name == *lc.backend)?.clone();
    let traffic = BackendTraffic::new(&lc.name, &backend);
    let counters = old
        .and_then(|o| o.listener(&lc.name))
        .map(|l| l.counters.clone())
        .unwrap_or_default();
    let admission = Admission::new(
        &lc.sources.allow,
        &lc.sources.deny,
        lc.source_limit.map(|s| (s.limits, s.sources)),
        old.and_then(|o| o.listener(&lc.name)).map(|l| &l.admission),
    );
    Some(Arc::new(Listener {
        admission,
        name: lc.name.as_str().into(),
        config: lc.clone(),
        backend,
        metrics: ListenerMetrics::new(&lc.name),
        traffic,
        counters,
        trusted: lc.accept_proxy.as_ref().map(|a| SourceRules::new(&a.trusted, &[])),
        routes: build_routes(lc, backends),
    }))
}

fn build_routes(lc: &ListenerConfig, backends: &[Arc<Backend>]) -> SniRoutes<Route> {
    let routes = lc.routes.iter().filter_map(|rc| {
        let backend = backends.iter().find(|b| *b.name == *rc.backend)?.clone();
        let traffic = BackendTraffic::new(&lc.name, &backend);
        Some((rc.sni.clone(), Route { backend, traffic }))
    });
    // Validation checked the patterns; a failure here would be a bug, and costs the
    // routes only, not the listener.
    SniRoutes::new(routes).unwrap_or_else(|e| {
        tracing::error!(listener = %lc.name, "SNI routes not applied: {e}");
        SniRoutes::default()
    })
}

/// Counts of a listener that outlive snapshots (kept across reloads by name).
#[derive(Default)]
pub struct ListenerCounters {
    pub active: AtomicU32,
    pub accepted: AtomicU64,
}

/// Everything the data path needs, immutable once built.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub generation: u64,
    pub listeners: Vec<Arc<Listener>>,
    pub backends: Vec<Arc<Backend>>,
}

/// What building a snapshot changed, for the actors to act on.
pub struct Changes {
    /// Servers new in this snapshot: to resolve and health-check.
    pub added: Vec<Arc<Server>>,
    /// Servers of the old snapshot that are gone: to stop resolving and checking.
    pub removed: Vec<Arc<Server>>,
}

impl Snapshot {
    /// Builds a snapshot from `config`, carrying over the servers of `old` that stay.
    pub fn build(config: Arc<Config>, old: Option<&Snapshot>) -> (Snapshot, Changes) {
        let mut added = Vec::new();
        let mut kept: Vec<Arc<Server>> = Vec::new();
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|bc| build_backend(bc, old, &mut added, &mut kept))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .filter_map(|lc| build_listener(lc, &backends, old))
            .collect();
        let removed = old
            .map(|o| {
                o.servers()
                    .filter(|s| !kept.iter().any(|k| Arc::ptr_eq(k, s)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let snapshot = Snapshot {
            config,
            generation: old.map_or(1, |o| o.generation + 1),
            listeners,
            backends,
        };
        (snapshot, Changes { added, removed })
    }

    pub fn server(&self, backend: &str, server: &str) -> Option<Arc<Server>> {
        self.backends
            .iter()
            .find(|b| &*b.name == backend)?
            .servers
            .iter()
            .find(|s| &*s.server.name == server)
            .map(|s| s.server.clone())
    }

    pub fn servers(&self) -> impl Iterator<Item = &Arc<Server>> {
        self.backends.iter().flat_map(|b| b.servers.iter().map(|s| &s.server))
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod selection_tests;
