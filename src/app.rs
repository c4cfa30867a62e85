//! The running gatehouse: start, reload and shutdown, and the background actors
//! (resolver, health checker) wired to the snapshot.
//!
//! A reload is all or nothing: the new config is read and validated, its check files
//! loaded, its new servers resolved and checked once, its new addresses bound, and
//! only then is the snapshot swapped in whole. Any failure on the way leaves the
//! running config untouched.
//!
//! The admin listener is started through a function handed down from `main` and sees
//! the app only as a [`Control`]: this module does not import `admin`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::clock::unix_now;
use crate::config::{AdminConfig, Config, ConfigError};
use crate::control::{AdminHandle, Control, ProcessStatus, Reloading, StartAdmin};
use crate::edge::fd_budget::{self, FdBudgetError, FdNeeds, FdPlan, PipeBudget};
use crate::health::{self, Prepared};
use crate::listener::{BindError, Ceiling, Sockets};
use crate::proxy::{Connections, Settings};
use crate::resolve::Resolution;
use crate::runtime::{AdminState, Server, Snapshot};
use crate::systemd;

/// Why a start or reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("backend {backend:?}: {message}")]
    Check { backend: String, message: String },
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("admin listener: cannot bind {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {path}: {message}")]
    Token { path: String, message: String },
    #[error(transparent)]
    FdBudget(#[from] FdBudgetError),
}

pub use crate::control::ReloadReport;

pub struct App {
    pub config_path: PathBuf,
    pub snapshot: ArcSwap<Snapshot>,
    pub connections: Arc<Connections>,
    pub started_at: f64,
    /// Set when shutdown begins: listeners are closed, `/readyz` says so.
    pub draining: std::sync::atomic::AtomicBool,
    pub loaded_at: Mutex<f64>,
    pub last_reload: Mutex<Option<ReloadReport>>,
    pub admin_token: ArcSwap<Option<String>>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Client connections allowed at once (from the open-file limit), and in use.
    pub ceiling: Arc<Ceiling>,
    sockets: Mutex<Sockets>,
    /// One per `[admin] listen` address, in its order; shared so that a reload keeps
    /// the ones whose address stays.
    admin: Mutex<Vec<Arc<AdminHandle>>>,
    start_admin: StartAdmin,
    resolution: Arc<Resolution>,
    reloading: tokio::sync::Mutex<()>,
}

fn settings(config: &Config) -> Settings {
    Settings {
        keepalive: config.defaults.keepalive,
        user_timeout: config.defaults.user_timeout,
        idle_timeout: config.defaults.idle_timeout,
        forwarding: config.defaults.forwarding,
    }
}

/// Splice pipes: one per four connections, as HAProxy's default `maxpipes`.
const CONNECTIONS_PER_PIPE: u64 = 4;
/// Descriptors for the rest: config and certificate files at a reload, log files,
/// the systemd sockets, the resolver's configuration files.
const OTHER_FDS: u64 = 16;

/// The connection ceiling under the open-file limit `nofile` for `config` (see
/// `edge::fd_budget`), lowered by `[defaults] max_connections`.
pub fn fd_plan(config: &Config, nofile: u64) -> Result<(FdPlan, usize), FdBudgetError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let binds: usize = config.listeners.iter().map(|l| l.bind.len()).sum();
    let servers: usize = config.backends.iter().map(|b| b.servers.len()).sum();
    let named = config
        .backends
        .iter()
        .flat_map(|b| &b.servers)
        .filter(|s| matches!(s.host, crate::config::Host::Name(_)))
        .count() as u64;
    let needs = FdNeeds {
        threads,
        listeners: (binds * crate::listener::accept_sockets()) as u64,
        servers: servers as u64,
        dns_in_flight: named.min(8) * 2,
        admin_connections: if config.admin.is_some() {
            crate::control::ADMIN_MAX_CLIENTS as u64
        } else {
            0
        },
        other: OTHER_FDS,
    };
    let pipes = match config.defaults.forwarding {
        crate::config::Forwarding::Copy => PipeBudget::None,
        _ => PipeBudget::PerConnections(CONNECTIONS_PER_PIPE),
    };
    let plan = fd_budget::plan(nofile, &needs, pipes)?;
    let allowed = usize::try_from(plan.max_connections).unwrap_or(usize::MAX);
    let ceiling = match config.defaults.max_connections {
        Some(m) if m <= allowed => m,
        Some(m) => {
            tracing::warn!(
                "[defaults] max_connections = {m} does not fit the open-file limit ({nofile}): the ceiling is {allowed}; raise LimitNOFILE"
            );
            allowed
        }
        None => allowed,
    };
    Ok((plan, ceiling))
}

/// Raises the soft open-file limit to the hard one and plans the connection ceiling
/// under it: (the ceiling, the splice pipes allowed), for the caller to apply.
fn budget(config: &Config) -> Result<(usize, u64), FdBudgetError> {
    let nofile = match fd_budget::raise_nofile_limit() {
        Ok(l) => {
            if l.soft > l.before {
                tracing::info!("open-file limit raised from {} to {}", l.before, l.soft);
            }
            l.soft
        }
        Err(e) => {
            tracing::warn!("cannot read or raise the open-file limit ({e}); assuming 1024");
            1024
        }
    };
    let (plan, ceiling) = fd_plan(config, nofile)?;
    tracing::info!(
        nofile,
        reserved = plan.reserved,
        max_pipes = plan.max_pipes,
        "connection ceiling: {ceiling} client connections at once"
    );
    Ok((ceiling, plan.max_pipes.max(1)))
}

impl App {
    /// Loads the config at `path`, brings every server to a known state (bounded), binds
    /// every listener and the admin API (with `start_admin`, here and on reloads).
    /// Nothing is served if any of it fails.
    pub async fn start(
        path: &Path,
        inherited: Vec<std::net::TcpListener>,
        start_admin: StartAdmin,
    ) -> Result<Arc<App>, LoadError> {
        let config = Arc::new(Config::load(path)?);
        let checks = prepare_checks(&config)?;
        let token = read_token(config.admin.as_ref())?;
        let resolution = Resolution::new(&config.resolver);
        // Before the snapshot: it resolves its metric handles, and handles taken before
        // the recorder is installed record nothing.
        let metrics = crate::metrics::install();
        let (snapshot, changes) = Snapshot::build(config.clone(), None);
        prime(&resolution, &changes.added, &checks).await;

        let connections = Arc::new(Connections::default());
        let (ceiling, max_pipes) = budget(&config)?;
        crate::forward::set_max_pipes(max_pipes);
        let ceiling = Ceiling::new(ceiling);
        crate::metrics::spawn_upkeep(metrics.clone());
        let mut sockets = Sockets::default();
        sockets.adopt_inherited(inherited);
        sockets.apply(&snapshot, settings(&config), &connections, &ceiling)?;
        sockets.close_unused_inherited();

        let app = Arc::new(App {
            config_path: path.to_path_buf(),
            snapshot: ArcSwap::from_pointee(snapshot),
            connections,
            started_at: unix_now(),
            draining: Default::default(),
            loaded_at: Mutex::new(unix_now()),
            last_reload: Mutex::new(None),
            admin_token: ArcSwap::from_pointee(token),
            metrics,
            ceiling,
            sockets: Mutex::new(sockets),
            admin: Mutex::new(Vec::new()),
            start_admin,
            resolution,
            reloading: tokio::sync::Mutex::new(()),
        });
        app.apply_admin(config.admin.as_ref())?;
        start_actors(&app.resolution, &changes.added, &checks);
        crate::metrics::config_reload(true);
        Ok(app)
    }

    /// (listener, bound address) pairs, port 0 resolved; the admin API as "admin".
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut v = self.sockets.lock().map(|l| l.local_addrs()).unwrap_or_default();
        if let Ok(admin) = self.admin.lock() {
            v.extend(admin.iter().map(|a| ("admin".to_string(), a.local)));
        }
        v
    }

    /// The first admin address (as configured first), port 0 resolved.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.lock().ok().and_then(|a| a.first().map(|a| a.local))
    }

    /// Re-reads the config file and applies it whole, or changes nothing.
    pub async fn reload(self: &Arc<Self>) -> Result<(), LoadError> {
        let _one_at_a_time = self.reloading.lock().await;
        systemd::reloading("reloading configuration");
        let result = self.try_reload().await;
        let report = ReloadReport {
            success: result.is_ok(),
            at: unix_now(),
            error: result.as_ref().err().map(|e| e.to_string()),
        };
        crate::metrics::config_reload(report.success);
        if let Ok(mut r) = self.last_reload.lock() {
            *r = Some(report);
        }
        match &result {
            Ok(()) => {
                let s = self.snapshot.load();
                tracing::info!(
                    generation = s.generation,
                    "configuration reloaded from {}",
                    self.config_path.display()
                );
                logs_written().await;
                systemd::notify(&format!(
                    "READY=1\nSTATUS=serving; configuration generation {} loaded",
                    s.generation
                ));
            }
            Err(e) => {
                tracing::error!("reload failed, the running configuration stays: {e}");
                let first_line = e.to_string().lines().next().unwrap_or_default().to_string();
                logs_written().await;
                systemd::notify(&format!(
                    "READY=1\nSTATUS=serving the previous configuration; reload failed: {first_line}"
                ));
            }
        }
        result
    }

    async fn try_reload(self: &Arc<Self>) -> Result<(), LoadError> {
        let config = Arc::new(Config::load(&self.config_path)?);
        let checks = prepare_checks(&config)?;
        let token = read_token(config.admin.as_ref())?;
        let (ceiling, max_pipes) = budget(&config)?;
        let old = self.snapshot.load_full();
        let (snapshot, changes) = Snapshot::build(config.clone(), Some(&old));
        // New servers are resolved with the new resolver settings; a failure puts the old
        // ones back, with everything else.
        let undo = |changes: &crate::runtime::Changes| {
            for s in &changes.added {
                s.retire();
            }
            self.resolution.update(&old.config.resolver);
        };
        self.resolution.update(&config.resolver);
        prime(&self.resolution, &changes.added, &checks).await;
        // The admin listener is bound before the listeners change, so that a failure
        // there leaves them untouched too.
        let admin = match self.prepare_admin(config.admin.as_ref()) {
            Ok(admin) => admin,
            Err(e) => {
                undo(&changes);
                return Err(e);
            }
        };
        let bound = match self.sockets.lock() {
            Ok(mut l) => l
                .apply(&snapshot, settings(&config), &self.connections, &self.ceiling)
                .map(|()| l.take_stopped()),
            Err(_) => Ok(Vec::new()),
        };
        let stopped = match bound {
            Ok(stopped) => stopped,
            Err(e) => {
                undo(&changes);
                return Err(e.into());
            }
        };
        self.commit_admin(admin);
        self.ceiling.set_max(ceiling);
        crate::forward::set_max_pipes(max_pipes);
        self.admin_token.store(Arc::new(token));
        for s in &changes.removed {
            s.retire();
            // Its series end, unless a server of the same name took its place.
            let successor = snapshot.server(&s.backend, &s.name);
            if successor.is_none() {
                s.metrics.set_state("removed");
            }
            // Certificates no longer watched stop alerting (a successor checked its own).
            let watched = successor.map(|n| n.metrics.cert_names()).unwrap_or_default();
            for sni in s.metrics.cert_names().iter().filter(|n| !watched.contains(n)) {
                s.metrics.cert_gone(sni);
            }
        }
        self.snapshot.store(Arc::new(snapshot));
        start_actors(&self.resolution, &changes.added, &checks);
        if let Ok(mut t) = self.loaded_at.lock() {
            *t = unix_now();
        }
        // Removed addresses refuse connections before the reload is reported done.
        for task in stopped {
            let _ = task.await;
        }
        Ok(())
    }

    fn apply_admin(self: &Arc<Self>, config: Option<&AdminConfig>) -> Result<(), LoadError> {
        let admin = self.prepare_admin(config)?;
        self.commit_admin(admin);
        Ok(())
    }

    /// Binds the admin addresses `config` asks for, if that is a change: `Some(new)`, to
    /// be put in place by `commit_admin`. Addresses that stay keep their listener; new
    /// ones are bound here, and if one fails nothing changes (those bound so far close).
    fn prepare_admin(
        self: &Arc<Self>,
        config: Option<&AdminConfig>,
    ) -> Result<Option<Vec<Arc<AdminHandle>>>, LoadError> {
        let wanted: &[SocketAddr] = config.map_or(&[], |c| &c.listen);
        let current: Vec<Arc<AdminHandle>> = self.admin.lock().map(|a| a.clone()).unwrap_or_default();
        if current.iter().map(|h| h.configured).eq(wanted.iter().copied()) {
            return Ok(None);
        }
        let mut next = Vec::with_capacity(wanted.len());
        for &addr in wanted {
            match current.iter().find(|h| h.configured == addr) {
                Some(kept) => next.push(kept.clone()),
                None => {
                    let control: std::sync::Weak<App> = Arc::downgrade(self);
                    let started =
                        (self.start_admin)(addr, control).map_err(|source| LoadError::Admin { addr, source })?;
                    next.push(Arc::new(started));
                }
            }
        }
        Ok(Some(next))
    }

    fn commit_admin(&self, admin: Option<Vec<Arc<AdminHandle>>>) {
        if let (Some(admin), Ok(mut current)) = (admin, self.admin.lock()) {
            *current = admin;
        }
    }

    /// Sets a server's operator state; `None` when there is no such server.
    pub fn set_server_state(&self, backend: &str, server: &str, state: AdminState, who: &str) -> Option<bool> {
        let s = self.snapshot.load().server(backend, server)?;
        Some(s.set_admin_state(state, who))
    }

    /// Stops accepting, lets connections finish for up to `drain_timeout`, then closes them.
    pub async fn shutdown(&self) {
        let drain = self.snapshot.load().config.defaults.drain_timeout;
        self.draining.store(true, std::sync::atomic::Ordering::Release);
        systemd::notify("STOPPING=1\nSTATUS=draining connections");
        let stopped = match self.sockets.lock() {
            Ok(mut l) => l.close_all(),
            Err(_) => Vec::new(),
        };
        // The sockets close as their accept loops go: wait for that, so that a client
        // connecting from now on is refused, never accepted into a backlog and reset.
        for accept_loop in stopped {
            let _ = accept_loop.await;
        }
        let open = self.connections.active();
        tracing::info!("shutting down: stopped accepting; {open} connection(s) open, waiting up to {drain:?}");
        let left = self.connections.drain(drain).await;
        if left > 0 {
            tracing::warn!("drain time over: closing {left} connection(s)");
            self.connections.close_all();
            // Their tasks log and finish at once; bounded all the same.
            self.connections.drain(Duration::from_secs(2)).await;
        }
        if let Ok(mut a) = self.admin.lock() {
            a.clear();
        }
        tracing::info!("stopped");
    }
}

impl Control for App {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn render_metrics(&self) -> String {
        crate::cores::publish_metrics();
        self.metrics.render()
    }

    fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    fn admin_token(&self) -> Arc<Option<String>> {
        self.admin_token.load_full()
    }

    fn set_server_state(&self, backend: &str, server: &str, state: AdminState, who: &str) -> Option<bool> {
        App::set_server_state(self, backend, server, state, who)
    }

    fn reload(self: Arc<Self>) -> Reloading {
        Box::pin(async move {
            App::reload(&self).await.map_err(|e| e.to_string())?;
            Ok(self.snapshot.load().generation)
        })
    }

    fn process_status(&self) -> ProcessStatus {
        ProcessStatus {
            started_at: self.started_at,
            config_path: self.config_path.display().to_string(),
            loaded_at: self.loaded_at.lock().map(|t| *t).unwrap_or(0.0),
            last_reload: self.last_reload.lock().ok().and_then(|r| r.clone()),
            connections: self.connections.active(),
            connections_max: self.ceiling.max(),
            connections_open: self.ceiling.open(),
            accept_paused_seconds: self.ceiling.paused().as_secs_f64(),
            local_addrs: self.local_addrs(),
        }
    }
}

type Checks = Vec<(String, Arc<Prepared>)>;

fn prepare_checks(config: &Config) -> Result<Checks, LoadError> {
    config
        .backends
        .iter()
        .map(|b| {
            health::prepare(&b.health)
                .map(|p| (b.name.clone(), p))
                .map_err(|message| LoadError::Check {
                    backend: b.name.clone(),
                    message,
                })
        })
        .collect()
}

fn check_for<'a>(checks: &'a Checks, server: &Server) -> Option<&'a Arc<Prepared>> {
    checks.iter().find(|(b, _)| **b == *server.backend).map(|(_, p)| p)
}

fn read_token(admin: Option<&AdminConfig>) -> Result<Option<String>, LoadError> {
    let Some(path) = admin.and_then(|a| a.token_file.as_ref()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Token {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let token = text.trim().to_string();
    if token.len() < 16 {
        return Err(LoadError::Token {
            path: path.display().to_string(),
            message: "the token must be at least 16 characters".into(),
        });
    }
    Ok(Some(token))
}

/// Resolves new servers and runs their first health check, all at once and bounded,
/// so that the first clients find servers in a known state.
async fn prime(resolution: &Arc<Resolution>, servers: &[Arc<Server>], checks: &Checks) {
    let rounds = servers.iter().map(|server| {
        let resolution = resolution.clone();
        let check = check_for(checks, server).cloned();
        let server = server.clone();
        async move {
            if let crate::config::Host::Name(name) = &server.host {
                resolution.resolve_once(&server, name).await;
            }
            let Some(check) = check else { return };
            let endpoints = server.endpoints().clone();
            let firsts = endpoints.iter().map(|e| {
                let server = &server;
                let check = &check;
                async move {
                    let mut rf = health::RiseFall::new(server.health.rise, server.health.fall);
                    health::check_endpoint(server, e, check, &mut rf).await;
                }
            });
            join_all(firsts).await;
        }
    });
    join_all(rounds).await;
}

fn start_actors(resolution: &Arc<Resolution>, servers: &[Arc<Server>], checks: &Checks) {
    for server in servers {
        server.go_live();
        resolution.spawn(server.clone());
        if let Some(check) = check_for(checks, server) {
            health::spawn(server.clone(), check.clone(), server.health.clone());
        }
    }
}

/// Runs futures concurrently on this task and waits for all of them.
async fn join_all<F: std::future::Future<Output = ()>>(futures: impl IntoIterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Waits until the log writer has written what was logged so far, at most 100 ms (on a
/// blocking thread: a stalled log sink delays the caller by that, never the runtime).
/// Before READY=1, so that whoever waits for READY finds the lines that came before it.
pub async fn logs_written() {
    let _ = tokio::task::spawn_blocking(|| crate::log_queue::flush(std::time::Duration::from_millis(100))).await;
}
