//! Where log lines wait, and the one thread that writes them: nobody who logs ever waits
//! for the log sink. A stopped journald or a pipe nobody reads stalls only the writer.
//!
//! Each thread appends whole records (a line, or one journal entry) to a buffer of its
//! own, which it shares only with the writer thread (`gatehouse-log`). The writer swaps
//! the buffers out (a pointer swap under their lock, never a write) and writes them: to
//! stdout as one stream, or to journald's socket one datagram per record. Lines that
//! say something now ([`push`] with `urgent`) wake the writer; connection close lines
//! wait for its next round, [`FLUSH_AFTER`] at the latest, so that a busy event loop
//! makes no syscall per line. An idle writer sleeps until the next line.
//!
//! When the sink stalls, a thread's buffer stops growing at [`THREAD_CAP`]: further
//! lines are dropped and counted ([`dropped`], and the metric bound with
//! [`count_drops_in`]), and the first line written after the stall says how many were
//! lost. [`flush`] writes what is queued and waits for it, within a bounded time (at exit, and
//! before gatehouse tells systemd it is ready).
//!
//! It neither formats lines (the binary's `cli/log.rs` does) nor decides what is logged.

use std::cell::OnceCell;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The longest a line waits in its thread's buffer while the sink keeps up.
pub const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// Bytes waiting in one thread's buffer that wake the writer at once.
pub const FLUSH_AT: usize = 32 * 1024;
/// Bytes one thread may have waiting; past them its lines are dropped (the sink stalls).
pub const THREAD_CAP: usize = 256 * 1024;
/// Rounds with nothing to write before the writer sleeps until woken.
const IDLE_ROUNDS: u32 = 10;

/// Where the writer sends records.
pub enum Output {
    /// One stream of lines on file descriptor 1.
    Stdout,
    /// journald's native protocol: one datagram per record, on a connected socket.
    Journal(UnixDatagram),
}

/// Records waiting: their bytes, and where each ends (for datagrams).
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// The owning thread has exited: the writer forgets the buffer once it is empty.
    orphaned: bool,
}

type Buffer = Arc<Mutex<Pending>>;

/// Every thread's buffer.
static BUFFERS: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());
/// Set (under its lock) to make the writer run a round now.
static WAKE: Mutex<bool> = Mutex::new(false);
static WAKE_CV: Condvar = Condvar::new();
/// The writer sleeps without a deadline: the next line must wake it.
static ASLEEP: AtomicBool = AtomicBool::new(false);
static STARTED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static DROPPED_METRIC: OnceLock<metrics::Counter> = OnceLock::new();
/// Flush requests made ([`flush`]) and served (rounds completed after them).
static FLUSH_ASKED: AtomicU64 = AtomicU64::new(0);
static FLUSH_DONE: Mutex<u64> = Mutex::new(0);
static FLUSH_DONE_CV: Condvar = Condvar::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves whole records at worst: keep using them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This thread's buffer; marked orphaned when the thread exits.
struct Mine(Buffer);

impl Drop for Mine {
    fn drop(&mut self) {
        lock(&self.0).orphaned = true;
    }
}

thread_local! {
    static MINE: OnceCell<Mine> = const { OnceCell::new() };
}

/// Starts the writer thread (once; later calls change nothing).
pub fn start(output: Output) -> io::Result<()> {
    if STARTED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let spawned = std::thread::Builder::new()
        .name("gatehouse-log".into())
        .spawn(move || Writer::new(output).run());
    if spawned.is_err() {
        STARTED.store(false, Ordering::Release);
    }
    spawned.map(drop)
}

/// Counts dropped lines in `counter` too (the metrics recorder is installed after the
/// logs start: lines dropped before are added at once).
pub fn count_drops_in(counter: metrics::Counter) {
    counter.absolute(dropped());
    let _ = DROPPED_METRIC.set(counter);
}

/// Lines dropped so far because the sink did not keep up (or failed).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn note_dropped(lines: u64) {
    DROPPED.fetch_add(lines, Ordering::Relaxed);
    if let Some(c) = DROPPED_METRIC.get() {
        c.increment(lines);
    }
}

/// Queues one record (a whole line, or a whole journal entry). Never blocks on the
/// sink: past [`THREAD_CAP`] waiting bytes the record is dropped and counted.
pub fn push(record: &[u8], urgent: bool) {
    let waiting = MINE.try_with(|cell| {
        let mine = cell.get_or_init(register);
        let mut p = lock(&mine.0);
        if p.bytes.len() + record.len() > THREAD_CAP {
            return None;
        }
        p.bytes.extend_from_slice(record);
        let end = p.bytes.len();
        p.ends.push(end);
        Some(end)
    });
    match waiting {
        Ok(Some(waiting)) => {
            if urgent || waiting >= FLUSH_AT || ASLEEP.load(Ordering::SeqCst) {
                wake();
            }
        }
        // Full, or a thread tearing down its locals: the line is lost, and counted.
        Ok(None) | Err(_) => note_dropped(1),
    }
}

fn register() -> Mine {
    let b: Buffer = Arc::new(Mutex::new(Pending::default()));
    lock(&BUFFERS).push(b.clone());
    Mine(b)
}

fn wake() {
    *lock(&WAKE) = true;
    WAKE_CV.notify_one();
}

/// Writes what is queued now and waits for it, at most `within`; false if the sink
/// did not take it all in time (what is left is lost with the process).
pub fn flush(within: Duration) -> bool {
    if !STARTED.load(Ordering::Acquire) {
        return true;
    }
    let asked = FLUSH_ASKED.fetch_add(1, Ordering::SeqCst) + 1;
    wake();
    let deadline = Instant::now() + within;
    let mut done = lock(&FLUSH_DONE);
    while *done < asked {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        done = FLUSH_DONE_CV
            .wait_timeout(done, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

/// The writer thread's state: the sink, and the records of one round.
struct Writer {
    output: Output,
    round: Pending,
    spare: Pending,
    /// Dropped lines already reported in a line of their own.
    reported: u64,
    /// The last round was written whole: a notice of dropped lines can go out (while
    /// the sink refuses, a notice would only be dropped in turn).
    healthy: bool,
}

impl Writer {
    fn new(output: Output) -> Writer {
        Writer {
            output,
            round: Pending::default(),
            spare: Pending::default(),
            reported: 0,
            healthy: true,
        }
    }

    fn run(mut self) {
        let mut idle = 0;
        loop {
            let asked = FLUSH_ASKED.load(Ordering::SeqCst);
            if self.round_trip() {
                idle = 0;
            } else {
                idle += 1;
            }
            *lock(&FLUSH_DONE) = asked;
            FLUSH_DONE_CV.notify_all();
            self.wait(idle >= IDLE_ROUNDS);
        }
    }

    /// Waits for the next round: [`FLUSH_AFTER`], or until woken when `deep`.
    fn wait(&self, deep: bool) {
        if deep {
            ASLEEP.store(true, Ordering::SeqCst);
            // A line pushed before ASLEEP was visible did not wake us: look once more.
            if any_waiting() {
                ASLEEP.store(false, Ordering::SeqCst);
                return;
            }
        }
        let mut woken = lock(&WAKE);
        while !*woken {
            if deep {
                woken = WAKE_CV.wait(woken).unwrap_or_else(|e| e.into_inner());
            } else {
                let (w, timeout) = WAKE_CV
                    .wait_timeout(woken, FLUSH_AFTER)
                    .unwrap_or_else(|e| e.into_inner());
                woken = w;
                if timeout.timed_out() {
                    break;
                }
            }
        }
        *woken = false;
        ASLEEP.store(false, Ordering::SeqCst);
    }

    /// Takes every thread's records and writes them; false if there were none.
    fn round_trip(&mut self) -> bool {
        let buffers: Vec<Buffer> = {
            let mut all = lock(&BUFFERS);
            all.retain(|b| {
                let p = lock(b);
                !(p.orphaned && p.bytes.is_empty())
            });
            all.clone()
        };
        let dropped = dropped();
        if dropped > self.reported && self.healthy {
            let lost = dropped - self.reported;
            self.reported = dropped;
            // Through the subscriber, so it has the sink's format; it is this thread's
            // own record, written first below.
            tracing::warn!(
                lost,
                dropped_total = dropped,
                "{lost} log lines dropped: the log output did not keep up"
            );
        }
        // The writer's own lines (the notice above) first.
        let own = MINE.try_with(|cell| cell.get().map(|m| m.0.clone())).ok().flatten();
        for b in own.iter().chain(buffers.iter()) {
            {
                let mut p = lock(b);
                if p.bytes.is_empty() {
                    continue;
                }
                std::mem::swap(&mut p.bytes, &mut self.spare.bytes);
                std::mem::swap(&mut p.ends, &mut self.spare.ends);
            }
            let base = self.round.bytes.len();
            self.round.bytes.extend_from_slice(&self.spare.bytes);
            self.round.ends.extend(self.spare.ends.iter().map(|e| base + e));
            self.spare.bytes.clear();
            self.spare.ends.clear();
            // A buffer that grew in a stall does not keep its size.
            self.spare.bytes.shrink_to(FLUSH_AT);
            self.spare.ends.shrink_to(FLUSH_AT / 64);
        }
        if self.round.bytes.is_empty() {
            return false;
        }
        let lost = self.write_round();
        self.healthy = lost == 0;
        if lost > 0 {
            note_dropped(lost);
        }
        self.round.bytes.clear();
        self.round.ends.clear();
        self.round.bytes.shrink_to(4 * FLUSH_AT);
        self.round.ends.shrink_to(FLUSH_AT / 16);
        true
    }

    /// Writes the round out (blocking: a stalled sink stalls this thread only);
    /// returns how many records the sink refused.
    fn write_round(&mut self) -> u64 {
        let round = &self.round;
        match &self.output {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                match out.write_all(&round.bytes).and_then(|()| out.flush()) {
                    Ok(()) => 0,
                    // Nowhere to say it: counted as dropped.
                    Err(_) => round.ends.len() as u64,
                }
            }
            Output::Journal(socket) => {
                let mut start = 0;
                let mut lost = 0;
                for &end in &round.ends {
                    if socket.send(&round.bytes[start..end]).is_err() {
                        lost += 1;
                    }
                    start = end;
                }
                lost
            }
        }
    }
}

/// Whether any thread has records waiting.
fn any_waiting() -> bool {
    lock(&BUFFERS).iter().any(|b| !lock(b).bytes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer is not started in unit tests: a thread's records stay in its buffer,
    /// which is what a stalled sink looks like to those who log.
    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_waiting() {
        std::thread::spawn(|| {
            let line = [b'x'; 1023];
            let before = dropped();
            let fit = THREAD_CAP / line.len();
            for _ in 0..fit + 10 {
                push(&line, false);
            }
            let waiting = MINE.with(|c| lock(&c.get().expect("registered").0).bytes.len());
            assert_eq!(waiting, fit * line.len());
            assert!(dropped() - before >= 10, "dropped {}", dropped() - before);
        })
        .join()
        .expect("logging thread");
    }

    #[test]
    fn an_exited_threads_buffer_is_marked_for_the_writer_to_forget() {
        let buffer = std::thread::spawn(|| {
            push(b"one line\n", false);
            MINE.with(|c| c.get().expect("registered").0.clone())
        })
        .join()
        .expect("logging thread");
        let p = lock(&buffer);
        assert!(p.orphaned);
        assert_eq!(p.ends, [9]);
    }
}
