//! Metric names, labels and handles: the contract with VictoriaMetrics, in one place.
//!
//! Handles are resolved once, when a snapshot is built (per listener, per server, per
//! listener × server), and held by the runtime objects; the data path only adds to
//! them, it never looks a metric up by its labels. Labels stay bounded: listener,
//! backend, server, reason, never a client address.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use crate::edge::inspect::{PROXY_REFUSAL_REASONS, SNI_DEFAULT_REASONS};

pub const CONNECTIONS_ACCEPTED: &str = "gatehouse_connections_accepted_total";
pub const CONNECTIONS_ACTIVE: &str = "gatehouse_connections_active";
pub const CONNECTIONS_REJECTED: &str = "gatehouse_connections_rejected_total";
pub const BYTES: &str = "gatehouse_bytes_total";
pub const CONNECT_DURATION: &str = "gatehouse_connect_duration_seconds";
pub const CONNECT_ERRORS: &str = "gatehouse_connect_errors_total";
pub const SERVER_UP: &str = "gatehouse_server_up";
pub const SERVER_STATE: &str = "gatehouse_server_state";
pub const HEALTH_CHECK_DURATION: &str = "gatehouse_health_check_duration_seconds";
pub const HEALTH_CHECK_FAILURES: &str = "gatehouse_health_check_failures_total";
pub const CONFIG_RELOADS: &str = "gatehouse_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "gatehouse_config_last_reload_success_timestamp_seconds";
pub const BUILD_INFO: &str = "gatehouse_build_info";
pub const CONNECTION_DURATION: &str = "gatehouse_connection_duration_seconds";
pub const CONNECTIONS_CLOSED: &str = "gatehouse_connections_closed_total";
pub const SERVER_CERT_EXPIRY: &str = "gatehouse_server_cert_expiry_timestamp_seconds";
pub const SERVER_CERT_VALID: &str = "gatehouse_server_cert_valid";
pub const SERVER_CERT_ISSUER_EXPECTED: &str = "gatehouse_server_cert_issuer_expected";
pub const CONNECTIONS_MAX: &str = "gatehouse_connections_max";
pub const CONNECTIONS_OPEN: &str = "gatehouse_connections_open";
pub const ACCEPT_PAUSED: &str = "gatehouse_accept_paused_seconds_total";
pub const LOCAL_ERRORS: &str = "gatehouse_local_errors_total";
pub const LOG_LINES_DROPPED: &str = "gatehouse_log_lines_dropped_total";
pub const SNI_DEFAULT: &str = "gatehouse_sni_default_total";
pub const EVENT_LOOP_LAG: &str = "gatehouse_event_loop_lag_seconds";
pub const EVENT_LOOP_ACCEPTED: &str = "gatehouse_event_loop_accepted_total";
// The backend's queue of clients waiting for a server under its max_connections.
pub const QUEUE_LENGTH: &str = "gatehouse_queue_length";
pub const QUEUE_WAIT: &str = "gatehouse_queue_wait_seconds";
pub const QUEUE_REFUSED: &str = "gatehouse_queue_refused_total";

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            // Watches and exec sessions last hours: the buckets reach a day.
            let lifetime = [
                0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(CONNECT_DURATION.into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HEALTH_CHECK_DURATION.into()), &latency))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CONNECTION_DURATION.into()), &lifetime))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), &QUEUE_WAIT_BUCKETS));
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                // Only empty bucket lists fail, and ours are literals.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // A second recorder (tests in one process) keeps the first: metrics still count.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            crate::log_queue::count_drops_in(counter!(LOG_LINES_DROPPED));
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CONNECTIONS_ACCEPTED, "Client connections accepted by a listener.");
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Connections established through a listener to a server now."
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Client connections closed without reaching a server, by reason."
    );
    describe_counter!(BYTES, Unit::Bytes, "Bytes forwarded, by direction.");
    describe_histogram!(
        CONNECT_DURATION,
        Unit::Seconds,
        "Time to establish a connection to a server."
    );
    describe_counter!(CONNECT_ERRORS, "Failed connects to a server, by reason.");
    describe_gauge!(SERVER_UP, "1 when a server can take new connections, else 0.");
    describe_gauge!(
        SERVER_STATE,
        "1 for the server's current state (up, down, drain, disabled, unresolved, starting)."
    );
    describe_histogram!(
        HEALTH_CHECK_DURATION,
        Unit::Seconds,
        "Duration of active health checks."
    );
    describe_counter!(HEALTH_CHECK_FAILURES, "Failed active health checks, by reason.");
    describe_counter!(CONFIG_RELOADS, "Configuration reloads, by result.");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        Unit::Seconds,
        "When the configuration was last loaded successfully."
    );
    describe_gauge!(BUILD_INFO, "Build information; the value is always 1.");
    describe_histogram!(CONNECTION_DURATION, Unit::Seconds, "Lifetime of forwarded connections.");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Forwarded connections ended, by reason (the close log's `end`)."
    );
    describe_gauge!(
        SERVER_CERT_EXPIRY,
        Unit::Seconds,
        "When the certificate a server presents for a name expires (earliest over its addresses)."
    );
    describe_gauge!(
        SERVER_CERT_VALID,
        "1 when a server's certificate for a name is valid (name, dates, chain, issuer), else 0."
    );
    describe_gauge!(
        SERVER_CERT_ISSUER_EXPECTED,
        "1 when a server's certificate for a name has the expected issuer (or none is expected), else 0."
    );
    describe_process();
}

/// The descriptions of the process's own metrics: its limits, its event loops, its log.
fn describe_process() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        CONNECTIONS_MAX,
        "The connection ceiling: client connections the open-file limit (or [defaults] max_connections) allows at once."
    );
    describe_counter!(
        SNI_DEFAULT,
        "Clients of an SNI-routed listener sent to its default backend, by why: not_tls, no_sni, malformed, timeout, closed, no_route."
    );
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because the log output (journald, stdout) did not keep up; forwarding never waits for it."
    );
    describe_gauge!(
        EVENT_LOOP_LAG,
        Unit::Seconds,
        "How far behind an event loop's heartbeat is (data-path loops by number, and main); the watchdog stops when one falls too far behind."
    );
    describe_counter!(
        EVENT_LOOP_ACCEPTED,
        "Client connections accepted on each data-path event loop."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Client connections holding a place under the ceiling now."
    );
    describe_counter!(
        ACCEPT_PAUSED,
        Unit::Seconds,
        "Time spent not accepting because the connection ceiling was reached, in whole seconds."
    );
    describe_gauge!(
        QUEUE_LENGTH,
        "Clients waiting in a backend's queue now, every server that could take them being at its max_connections."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time clients spent in a backend's queue, served or not."
    );
    describe_counter!(
        QUEUE_REFUSED,
        "Clients closed because every server was at its max_connections, by reason: queue_full (max_queue were waiting), queue_timeout (waited queue_timeout)."
    );
    describe_counter!(
        LOCAL_ERRORS,
        "Failures of gatehouse itself (out of descriptors, memory, buffers or ports), by operation and reason; never held against a server."
    );
}

/// The operations a local failure can hit, as `gatehouse_local_errors_total` labels them.
pub const LOCAL_ERROR_OPS: [&str; 3] = ["connect", "check", "accept"];
/// The reasons of a local failure; as [`local_reason`] gives them.
pub const LOCAL_ERROR_REASONS: [&str; 5] = ["emfile", "enfile", "enobufs", "enomem", "eaddrnotavail"];

/// The `reason` label of an error that is gatehouse's own (out of descriptors, memory,
/// buffers or ephemeral ports), or `None` for any other error.
pub fn local_reason(e: &std::io::Error) -> Option<usize> {
    match e.raw_os_error()? {
        libc::EMFILE => Some(0),
        libc::ENFILE => Some(1),
        libc::ENOBUFS => Some(2),
        libc::ENOMEM => Some(3),
        libc::EADDRNOTAVAIL => Some(4),
        _ => None,
    }
}

/// Counts a local failure of `op` (an index of [`LOCAL_ERROR_OPS`]).
pub fn local_error(op: usize, reason: usize) {
    static HANDLES: OnceLock<Vec<Vec<Counter>>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        LOCAL_ERROR_OPS
            .iter()
            .map(|o| {
                LOCAL_ERROR_REASONS
                    .iter()
                    .map(|r| counter!(LOCAL_ERRORS, "op" => *o, "reason" => *r))
                    .collect()
            })
            .collect()
    });
    if let Some(c) = handles.get(op).and_then(|r| r.get(reason)) {
        c.increment(1);
    }
}

/// How often histogram samples are folded into their buckets, whether or not anyone
/// scrapes: without it they pile up in the exporter until the next render.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the exporter's pending samples every [`UPKEEP_INTERVAL`], for as long as the
/// runtime runs.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// Handles of one listener.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub accepted: Counter,
    /// No server up: closed without a connect.
    pub rejected_no_server: Counter,
    /// Every connect tried (`retries`) failed.
    pub rejected_connect_failed: Counter,
    pub rejected_limit: Counter,
    /// Refused by `allow`/`deny` and by `source_limit`.
    pub rejected_denied: Counter,
    pub rejected_source_limit: Counter,
    pub duration: Histogram,
    /// Indexed like [`PROXY_REFUSAL_REASONS`]; made when a reason first happens (only
    /// `accept_proxy` listeners have any).
    pub rejected_proxy: ReasonCounters<8>,
    /// Indexed like [`SNI_DEFAULT_REASONS`]; made when a reason first happens.
    pub sni_default: ReasonCounters<6>,
}

impl ListenerMetrics {
    pub fn new(listener: &str) -> Self {
        let l = listener.to_string();
        ListenerMetrics {
            accepted: counter!(CONNECTIONS_ACCEPTED, "listener" => l.clone()),
            rejected_no_server: counter!(CONNECTIONS_REJECTED, "listener" => l.clone(), "reason" => "no_server"),
            rejected_connect_failed: counter!(CONNECTIONS_REJECTED, "listener" => l.clone(), "reason" => "connect_failed"),
            rejected_limit: counter!(CONNECTIONS_REJECTED, "listener" => l.clone(), "reason" => "limit"),
            rejected_denied: counter!(CONNECTIONS_REJECTED, "listener" => l.clone(), "reason" => "denied"),
            rejected_source_limit: counter!(CONNECTIONS_REJECTED, "listener" => l.clone(), "reason" => "source_limit"),
            rejected_proxy: ReasonCounters::new(
                CONNECTIONS_REJECTED,
                vec![metrics::Label::new("listener", l.clone())],
                &PROXY_REFUSAL_REASONS,
            ),
            sni_default: ReasonCounters::new(
                SNI_DEFAULT,
                vec![metrics::Label::new("listener", l.clone())],
                &SNI_DEFAULT_REASONS,
            ),
            duration: histogram!(CONNECTION_DURATION, "listener" => l),
        }
    }

    /// Counts a client sent to the default backend, by its reason (one of
    /// [`SNI_DEFAULT_REASONS`]).
    pub fn sni_defaulted(&self, reason: &str) {
        if let Some(i) = SNI_DEFAULT_REASONS.iter().position(|r| *r == reason) {
            self.sni_default.increment(i);
        }
    }

    /// Counts a PROXY header refusal, by its reason.
    pub fn proxy_refused(&self, reason: &str) {
        if let Some(i) = PROXY_REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.rejected_proxy.increment(i);
        }
    }
}

/// Counters of one name and set of labels, one per reason, each made when its reason
/// first happens: a reason that never does has no series (VictoriaMetrics stores every
/// series on every scrape, and most reasons never happen to most servers). The first
/// use registers the counter; every later one is an atomic load and add.
#[derive(Clone)]
pub struct ReasonCounters<const N: usize> {
    name: &'static str,
    labels: Vec<metrics::Label>,
    reasons: &'static [&'static str; N],
    made: [OnceLock<Counter>; N],
}

impl<const N: usize> ReasonCounters<N> {
    pub fn new(name: &'static str, labels: Vec<metrics::Label>, reasons: &'static [&'static str; N]) -> Self {
        ReasonCounters {
            name,
            labels,
            reasons,
            made: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Adds one under reason `index` (of the reasons given to `new`).
    pub fn increment(&self, index: usize) {
        let Some(cell) = self.made.get(index) else { return };
        cell.get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.push(metrics::Label::new("reason", self.reasons[index]));
            counter!(self.name, labels)
        })
        .increment(1);
    }
}

/// Handles of one listener × server pair: what a forwarded connection updates.
#[derive(Clone)]
pub struct TrafficMetrics {
    pub active: Gauge,
    pub client_to_server: Counter,
    pub server_to_client: Counter,
    /// Indexed like [`CLOSE_REASONS`].
    pub closed: ReasonCounters<9>,
}

/// Why forwarded connections end: the close log's `end`, with `_` for spaces, in the
/// order of `forward::End::ALL`.
pub const CLOSE_REASONS: [&str; 9] = [
    "client_closed",
    "server_closed",
    "client_reset",
    "server_reset",
    "idle_timeout",
    "shutdown",
    "server_down",
    "server_timed_out",
    "client_timed_out",
];

impl TrafficMetrics {
    pub fn new(listener: &str, backend: &str, server: &str) -> Self {
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut v = vec![
                ("listener", listener.to_string()),
                ("backend", backend.to_string()),
                ("server", server.to_string()),
            ];
            if let Some((k, value)) = extra {
                v.push((k, value.to_string()));
            }
            v.into_iter()
                .map(|(k, v)| metrics::Label::new(k, v))
                .collect::<Vec<_>>()
        };
        TrafficMetrics {
            active: gauge!(CONNECTIONS_ACTIVE, labels(None)),
            client_to_server: counter!(BYTES, labels(Some(("direction", "client_to_server")))),
            server_to_client: counter!(BYTES, labels(Some(("direction", "server_to_client")))),
            closed: ReasonCounters::new(CONNECTIONS_CLOSED, labels(None), &CLOSE_REASONS),
        }
    }
}

/// Why a client the queue held was closed without a server: the close log's `end`,
/// with `_` for spaces, in the order of `runtime::Refusal`.
pub const QUEUE_REASONS: [&str; 2] = ["queue_full", "queue_timeout"];

/// Buckets of [`QUEUE_WAIT`]: a queue timeout is seconds to minutes.
const QUEUE_WAIT_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Handles of one backend's queue (label backend).
pub struct QueueMetrics {
    pub length: Gauge,
    pub wait: Histogram,
    /// Indexed like [`QUEUE_REASONS`].
    pub refused: [Counter; 2],
}

impl QueueMetrics {
    pub fn new(backend: &str) -> Self {
        let b = backend.to_string();
        QueueMetrics {
            length: gauge!(QUEUE_LENGTH, "backend" => b.clone()),
            wait: histogram!(QUEUE_WAIT, "backend" => b.clone()),
            refused: QUEUE_REASONS.map(|r| counter!(QUEUE_REFUSED, "backend" => b.clone(), "reason" => r)),
        }
    }
}

/// `gatehouse_connections_closed_total` of the clients a backend's queue closed, per
/// listener × backend: they reached no server, so the series has no `server` label.
/// Indexed like [`QUEUE_REASONS`].
pub struct QueueClosed(pub [Counter; 2]);

impl QueueClosed {
    pub fn new(listener: &str, backend: &str) -> Self {
        QueueClosed(QUEUE_REASONS.map(|r| {
            counter!(CONNECTIONS_CLOSED, "listener" => listener.to_string(), "backend" => backend.to_string(), "reason" => r)
        }))
    }
}

/// The reasons a connect fails, as metrics and passive health see them.
pub const CONNECT_ERROR_REASONS: [&str; 4] = ["refused", "timeout", "unreachable", "other"];

/// The states a server can be in, as `gatehouse_server_state` labels them.
pub const SERVER_STATES: [&str; 6] = ["up", "down", "drain", "disabled", "unresolved", "starting"];

/// Handles of one server (labels backend, server). Its latency histograms are its
/// backend's (label backend only): per server they were 34 of a server's 57 series.
pub struct ServerMetrics {
    /// The backend's.
    pub connect_duration: Histogram,
    /// Indexed like [`CONNECT_ERROR_REASONS`].
    pub connect_errors: ReasonCounters<4>,
    pub up: Gauge,
    /// Indexed like [`SERVER_STATES`].
    pub state: [Gauge; 6],
    /// The backend's.
    pub check_duration: Histogram,
    backend: String,
    server: String,
    /// The names the certificate watch has published for this server.
    cert_names: std::sync::Mutex<Vec<String>>,
}

impl ServerMetrics {
    pub fn new(backend: &str, server: &str) -> Self {
        let (b, s) = (backend.to_string(), server.to_string());
        ServerMetrics {
            connect_duration: histogram!(CONNECT_DURATION, "backend" => b.clone()),
            connect_errors: ReasonCounters::new(
                CONNECT_ERRORS,
                vec![
                    metrics::Label::new("backend", b.clone()),
                    metrics::Label::new("server", s.clone()),
                ],
                &CONNECT_ERROR_REASONS,
            ),
            up: gauge!(SERVER_UP, "backend" => b.clone(), "server" => s.clone()),
            state: SERVER_STATES
                .map(|st| gauge!(SERVER_STATE, "backend" => b.clone(), "server" => s.clone(), "state" => st)),
            check_duration: histogram!(HEALTH_CHECK_DURATION, "backend" => b.clone()),
            backend: b,
            server: s,
            cert_names: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Health-check failures have open-ended reasons (a status code, an error kind):
    /// looked up by label, off the data path, once per failed check.
    pub fn check_failed(&self, reason: &'static str) {
        counter!(HEALTH_CHECK_FAILURES, "backend" => self.backend.clone(), "server" => self.server.clone(), "reason" => reason)
            .increment(1);
    }

    /// What the certificate watch saw for `sni`: looked up by label, once per check of
    /// a `tls` or `https` check, off the data path.
    pub fn cert_seen(&self, sni: &str, not_after: f64, valid: bool, issuer_expected: bool) {
        let labels = [
            ("backend", self.backend.clone()),
            ("server", self.server.clone()),
            ("sni", sni.to_string()),
        ];
        gauge!(SERVER_CERT_EXPIRY, &labels).set(not_after);
        gauge!(SERVER_CERT_VALID, &labels).set(if valid { 1.0 } else { 0.0 });
        gauge!(SERVER_CERT_ISSUER_EXPECTED, &labels).set(if issuer_expected { 1.0 } else { 0.0 });
        if let Ok(mut names) = self.cert_names.lock() {
            if !names.iter().any(|n| n == sni) {
                names.push(sni.to_string());
            }
        }
    }

    pub fn cert_names(&self) -> Vec<String> {
        self.cert_names.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// A name no longer watched (its server or the name left the config): NaN, which no
    /// comparison and so no alert matches; the exporter cannot drop a single series.
    pub fn cert_gone(&self, sni: &str) {
        let labels = [
            ("backend", self.backend.clone()),
            ("server", self.server.clone()),
            ("sni", sni.to_string()),
        ];
        for name in [SERVER_CERT_EXPIRY, SERVER_CERT_VALID, SERVER_CERT_ISSUER_EXPECTED] {
            gauge!(name, &labels).set(f64::NAN);
        }
    }

    pub fn set_state(&self, state: &str) {
        for (i, name) in SERVER_STATES.iter().enumerate() {
            self.state[i].set(if *name == state { 1.0 } else { 0.0 });
        }
        self.up.set(if state == "up" { 1.0 } else { 0.0 });
    }
}

pub fn config_reload(success: bool) {
    let result = if success { "success" } else { "failure" };
    counter!(CONFIG_RELOADS, "result" => result).increment(1);
    if success {
        gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(crate::clock::unix_now());
    }
}

/// A connection to the admin listener closed unserved: `listener="admin"`, with
/// `reason` one of `denied`, `source_limit`, `limit` (every slot busy serving).
pub fn admin_rejected(reason: &'static str) {
    counter!(CONNECTIONS_REJECTED, "listener" => "admin", "reason" => reason).increment(1);
}

/// Readiness as `/readyz` answers it: what a keepalived pair acts on.
pub const READY: &str = "gatehouse_ready";
pub const UNREADY_ANSWERS: &str = "gatehouse_readyz_unready_total";

/// Records a readiness verdict (at each `/readyz` and each scrape): `None` when ready,
/// else the reason (`draining`, `no_server`); `answered` counts a 503 given for it.
pub fn readiness(unready: Option<&'static str>, answered: bool) {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_gauge!(READY, "1 when /readyz would answer 200, else 0.");
        metrics::describe_counter!(UNREADY_ANSWERS, "Answers of 503 from /readyz, by reason.");
    });
    gauge!(READY).set(if unready.is_none() { 1.0 } else { 0.0 });
    if let (Some(reason), true) = (unready, answered) {
        counter!(UNREADY_ANSWERS, "reason" => reason).increment(1);
    }
}
