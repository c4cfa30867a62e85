//! The data path's threads: one event loop (a current-thread Tokio runtime on a thread
//! of its own) per core. Each accept socket's loop is placed on one of them, and the
//! connections it accepts live there to their end: no hand-off between threads, no
//! work stealing, one `epoll_wait` per round for the connections of one core.
//! Everything else (health checks, DNS, admin, reload, signals) stays on the main
//! runtime. Before [`start`] (and in library tests) tasks go to the caller's runtime.

use std::future::Future;
use std::io;
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

static LOOPS: OnceLock<Vec<Handle>> = OnceLock::new();

/// Starts `count` event loops (at least one), once; later calls change nothing.
/// `on_idle` runs on a loop's thread each time it runs out of work, before it waits.
pub fn start(count: usize, on_idle: fn()) -> io::Result<()> {
    if LOOPS.get().is_some() {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(count.max(1));
    for i in 0..count.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(on_idle)
            .build()?;
        handles.push(runtime.handle().clone());
        std::thread::Builder::new()
            .name(format!("gatehouse-core-{i}"))
            // Runs until the process exits: connections end with the process.
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    }
    let _ = LOOPS.set(handles);
    Ok(())
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
