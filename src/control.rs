//! What the admin listener may see and change of the running gatehouse: a narrow
//! interface ([`Control`]) that the app provides and the admin listener is handed, and
//! the handle of a running admin listener ([`AdminHandle`]).
//!
//! It sits between the two so that neither imports the other: the app starts the admin
//! listener through a [`StartAdmin`] function passed down to it from `main`, and the
//! admin listener reaches the app only through this trait. It owns no state itself.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use tokio::task::JoinHandle;

use crate::runtime::{AdminState, Snapshot};

/// Admin clients served at once; the connection ceiling reserves their descriptors.
pub const ADMIN_MAX_CLIENTS: usize = 64;

/// The result of the last reload, for the status API and the systemd status line.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub success: bool,
    pub at: f64,
    pub error: Option<String>,
}

/// Facts about the process as a whole, for the status document.
#[derive(Debug, Clone)]
pub struct ProcessStatus {
    pub started_at: f64,
    pub config_path: String,
    pub loaded_at: f64,
    pub last_reload: Option<ReloadReport>,
    /// Connections open now, over every listener.
    pub connections: usize,
    /// The connection ceiling, the places taken under it (accept loops waiting included)
    /// and the time spent at it, not accepting.
    pub connections_max: usize,
    pub connections_open: usize,
    pub accept_paused_seconds: f64,
    /// (listener, bound address) pairs, port 0 resolved; the admin API as "admin".
    pub local_addrs: Vec<(String, SocketAddr)>,
}

/// A reload in progress: the new generation, or why the running config stays.
pub type Reloading = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

/// What the admin listener can read and do.
pub trait Control: Send + Sync + 'static {
    /// The snapshot in force.
    fn snapshot(&self) -> Arc<Snapshot>;
    /// The Prometheus exposition of every metric.
    fn render_metrics(&self) -> String;
    /// Whether shutdown has begun (listeners closed).
    fn draining(&self) -> bool;
    /// The admin token in force, if the operator set one.
    fn admin_token(&self) -> Arc<Option<String>>;
    /// Sets a server's operator state; `None` when there is no such server.
    fn set_server_state(&self, backend: &str, server: &str, state: AdminState, who: &str) -> Option<bool>;
    /// Re-reads the config file and applies it whole, or changes nothing.
    fn reload(self: Arc<Self>) -> Reloading;
    fn process_status(&self) -> ProcessStatus;
}

/// The admin listener while it runs; dropping it stops it.
pub struct AdminHandle {
    /// The address the config asked for.
    pub configured: SocketAddr,
    /// The address bound (port 0 resolved).
    pub local: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminHandle {
    pub fn new(configured: SocketAddr, local: SocketAddr, task: JoinHandle<()>) -> Self {
        AdminHandle {
            configured,
            local,
            task,
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds and starts an admin listener at an address, serving what a [`Control`] gives.
pub type StartAdmin = fn(SocketAddr, Weak<dyn Control>) -> std::io::Result<AdminHandle>;
