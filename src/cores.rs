//! The data path's threads, and whether they are alive: one event loop (a
//! current-thread Tokio runtime on a thread of its own) per core. Each accept socket's
//! loop is placed on one of them, and the connections it accepts live there to their
//! end: no hand-off between threads, no work stealing, one `epoll_wait` per round for
//! the connections of one core. Everything else (health checks, DNS, admin, reload,
//! signals) stays on the main runtime. Before [`start`] (and in library tests) tasks go
//! to the caller's runtime.
//!
//! Every loop, and the main runtime ([`watch_main`]), runs a heartbeat: a timer every
//! `beat` (see [`start`]) that records when it fired and how late. [`liveness`] reads them, for the
//! systemd watchdog (which pings only while every loop beats), the metrics
//! (`gatehouse_event_loop_lag_seconds`, `gatehouse_event_loop_accepted_total`) and the
//! status page. It does not decide what runs on the loops.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::clock::millis_since_start;

/// How often a loop's heartbeat fires, in µs (set by [`start`]).
static BEAT_US: AtomicU64 = AtomicU64::new(500_000);

fn beat() -> Duration {
    Duration::from_micros(BEAT_US.load(Ordering::Relaxed))
}

static LOOPS: OnceLock<Vec<Handle>> = OnceLock::new();
/// One per data-path loop, then the main runtime's.
static HEARTS: OnceLock<Vec<Heart>> = OnceLock::new();

#[derive(Default)]
struct Heart {
    /// When the heartbeat last fired (ms since start); 0 until it first does.
    last_ms: AtomicU64,
    /// How late the last beat fired, in µs: the loop's scheduling lag.
    late_us: AtomicU64,
    /// Clients accepted on this loop.
    accepted: AtomicU64,
}

/// Starts `count` event loops (at least one), once; later calls change nothing. Each
/// loop's heartbeat fires every `beat`.
pub fn start(count: usize, beat: Duration) -> io::Result<()> {
    if LOOPS.get().is_some() {
        return Ok(());
    }
    BEAT_US.store(beat.as_micros().max(1000) as u64, Ordering::Relaxed);
    let count = count.max(1);
    let _ = HEARTS.set((0..=count).map(|_| Heart::default()).collect());
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(runtime.handle().clone());
        runtime.spawn(heartbeat(i));
        std::thread::Builder::new()
            .name(format!("gatehouse-core-{i}"))
            // Runs until the process exits: connections end with the process.
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    }
    let _ = LOOPS.set(handles);
    Ok(())
}

/// Starts the main runtime's heartbeat (call from inside it, after [`start`]).
pub fn watch_main() {
    tokio::spawn(heartbeat(count()));
}

/// Records, every `beat` (see [`start`]), that loop `index` runs and how late its timer fired.
async fn heartbeat(index: usize) {
    let Some(heart) = HEARTS.get().and_then(|h| h.get(index)) else {
        return;
    };
    let mut due = tokio::time::Instant::now();
    loop {
        let now = tokio::time::Instant::now();
        heart
            .late_us
            .store(now.duration_since(due).as_micros() as u64, Ordering::Relaxed);
        heart.last_ms.store(millis_since_start().max(1), Ordering::Release);
        due = now + beat();
        tokio::time::sleep_until(due).await;
    }
}

/// How many event loops run the data path (0 before [`start`]).
pub fn count() -> usize {
    LOOPS.get().map_or(0, Vec::len)
}

/// Spawns `task` on event loop `index` (modulo their number), or on the caller's
/// runtime when there are none.
pub fn spawn_on<F>(index: usize, task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match LOOPS.get() {
        Some(loops) if !loops.is_empty() => loops[index % loops.len()].spawn(task),
        _ => tokio::spawn(task),
    }
}

/// Counts a client accepted on loop `index` (modulo their number).
pub fn note_accepted(index: usize) {
    if let Some(hearts) = HEARTS.get() {
        let loops = hearts.len() - 1;
        hearts[index % loops].accepted.fetch_add(1, Ordering::Relaxed);
    }
}

/// One event loop as the watchdog, the metrics and the status page see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    /// "0", "1", … for the data path's loops, "main" for the main runtime.
    pub name: String,
    /// Since its heartbeat last fired, less the beat's period: how far behind it is now.
    pub lag: Duration,
    /// Clients accepted on it (0 for the main runtime).
    pub accepted: u64,
    /// Whether its heartbeat has fired at all yet.
    pub started: bool,
}

/// Every loop's liveness now (empty before [`start`]).
pub fn liveness() -> Vec<Liveness> {
    let Some(hearts) = HEARTS.get() else {
        return Vec::new();
    };
    let now = millis_since_start();
    let loops = hearts.len() - 1;
    let beat = beat();
    hearts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let last = h.last_ms.load(Ordering::Acquire);
            let late = Duration::from_micros(h.late_us.load(Ordering::Relaxed));
            let silent = Duration::from_millis(now.saturating_sub(last)).saturating_sub(beat);
            Liveness {
                name: if i == loops { "main".into() } else { i.to_string() },
                lag: if last == 0 { Duration::ZERO } else { late.max(silent) },
                accepted: h.accepted.load(Ordering::Relaxed),
                started: last != 0,
            }
        })
        .collect()
}

/// Whether every loop's heartbeat fired within `within` (a loop whose heartbeat has
/// not started yet counts as alive: it has had no chance to beat).
pub fn all_alive(within: Duration) -> bool {
    liveness().iter().all(|l| !l.started || l.lag < within)
}

/// The names of loops whose heartbeat is `within` or more behind.
pub fn stalled(within: Duration) -> Vec<String> {
    liveness()
        .into_iter()
        .filter(|l| l.started && l.lag >= within)
        .map(|l| l.name)
        .collect()
}

/// Sets the loops' metrics from their heartbeats (read when scraped, not kept up to date).
pub fn publish_metrics() {
    for l in liveness() {
        metrics::gauge!(crate::metrics::EVENT_LOOP_LAG, "loop" => l.name.clone()).set(l.lag.as_secs_f64());
        if l.name != "main" {
            metrics::counter!(crate::metrics::EVENT_LOOP_ACCEPTED, "loop" => l.name).absolute(l.accepted);
        }
    }
}

/// Test builds only: blocks loop `index`'s thread for good, as a bug would (a
/// synchronous call that never returns), to prove that the watchdog notices.
#[cfg(debug_assertions)]
pub fn hang(index: usize) -> bool {
    if index >= count() {
        return false;
    }
    tracing::warn!(event_loop = index, "fault hook: event loop {index} hangs now");
    spawn_on(index, async {
        loop {
            std::thread::park();
        }
    });
    true
}
