//! Where log lines go: stdout, without a write per connection when connections are
//! many. While other connections are open, a close line waits in its thread's buffer,
//! written out with the others when the thread's event loop runs out of work
//! ([`flush_thread`]), when [`FLUSH_AT`] bytes wait, and at the latest [`FLUSH_AFTER`]
//! later (a ticking thread). The last open connection's line, and every other line, is
//! written at once, after the lines its thread buffered before it. [`flush`] at exit
//! writes what is left: a clean stop loses nothing.

use std::cell::OnceCell;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use gatehouse::proxy::{open_connections, CLOSE_LOG_TARGET};
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// The longest a buffered line waits.
pub const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// Buffered bytes that are written out at once, without waiting.
pub const FLUSH_AT: usize = 32 * 1024;

type Buffer = Arc<Mutex<Vec<u8>>>;

/// Every thread's buffer, for the ticking thread and the flush at exit.
static ALL: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());
static TICKING: Once = Once::new();

thread_local! {
    static MINE: OnceCell<Buffer> = const { OnceCell::new() };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves whole lines at worst: keep using them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This thread's buffer (registered on first use).
fn with_mine<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    MINE.with(|cell| {
        let buffer = cell.get_or_init(|| {
            TICKING.call_once(|| {
                let _ = std::thread::Builder::new().name("gatehouse-log".into()).spawn(tick);
            });
            let b: Buffer = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_AT)));
            lock(&ALL).push(b.clone());
            b
        });
        f(&mut lock(buffer))
    })
}

/// Writes out every thread's buffered lines (at exit, and from the ticking thread).
pub fn flush() {
    let all: Vec<Buffer> = lock(&ALL).clone();
    for b in all {
        write_out(&mut lock(&b));
    }
}

/// Writes out this thread's buffered lines: the hook of an event loop about to wait.
pub fn flush_thread() {
    let _ = MINE.try_with(|cell| {
        if let Some(b) = cell.get() {
            write_out(&mut lock(b));
        }
    });
}

fn write_out(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        // Nowhere to report a failing stdout: the lines are dropped, as tracing's own
        // writer would drop them.
        let _ = io::stdout().lock().write_all(lines);
        lines.clear();
    }
}

/// The backstop of a loop that never runs out of work: nothing waits longer than
/// FLUSH_AFTER.
fn tick() {
    loop {
        std::thread::sleep(FLUSH_AFTER);
        flush();
    }
}

/// The writer the log subscriber is given.
pub struct Stdout;

/// One event's line: a close line, or another.
pub struct Line {
    close: bool,
}

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { close: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            close: meta.target() == CLOSE_LOG_TARGET,
        }
    }
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // The closing connection still counts itself: buffer while others are open.
        let buffer = self.close && open_connections() > 1;
        with_mine(|lines| {
            lines.extend_from_slice(bytes);
            if !buffer || lines.len() >= FLUSH_AT {
                write_out(lines);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
