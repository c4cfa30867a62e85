//! Places at servers that have a connection limit (`max_connections`), and the queue
//! of a backend where clients wait, first come first served, when every server that
//! could take them is at its limit.
//!
//! A [`Slot`] is one of a server's active connections, held from the pick on and given
//! back when dropped; a backend with limits has a [`Queue`], and a slot given back wakes
//! the client at its head (the server knows its backend's queue, so that connections
//! made before a reload brought the limits wake it too). The queue's lock is taken only by clients that wait and by
//! slots given back while someone waits: a backend whose servers have room never takes
//! it, and a backend without limits has no queue at all. Which server has room and who
//! picks it is the caller's (`connect.rs`); this file owns the counting and the waiting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::ServerEntry;
use crate::metrics::QueueMetrics;

/// A client's place at a server: one of its active connections. Dropping it gives the
/// place back and wakes the first client waiting in the backend's queue.
pub struct Slot<'a> {
    entry: &'a ServerEntry,
}

impl<'a> Slot<'a> {
    /// Takes a place at `entry` if it has room (always, without a limit).
    pub(super) fn reserve(entry: &'a ServerEntry) -> Option<Slot<'a>> {
        let Some(max) = entry.max_connections else {
            return Some(Slot::occupy(entry));
        };
        entry
            .server
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()?;
        Some(Slot { entry })
    }

    /// Takes a place at `entry` whatever its limit.
    pub(super) fn occupy(entry: &'a ServerEntry) -> Slot<'a> {
        entry.server.active.fetch_add(1, order(entry.server.queue()));
        Slot { entry }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let server = &self.entry.server;
        let queue = server.queue();
        server.active.fetch_sub(1, order(queue));
        if let Some(queue) = queue {
            queue.place_freed();
        }
    }
}

/// With a queue, places are counted in one order with the queue's length: either a
/// client about to wait sees a place given back, or the one giving it back sees the
/// client waiting and wakes it. Without, a plain count, as it always was.
fn order(queue: Option<&Queue>) -> Ordering {
    match queue {
        Some(_) => Ordering::SeqCst,
        None => Ordering::Relaxed,
    }
}

/// Clients waiting for a place at a server of one backend, oldest first. Kept across
/// reloads while the backend keeps its name, so that places given back by connections of
/// an older snapshot wake the clients that wait now.
pub struct Queue {
    /// By ticket number: the first entry is the client whose turn is next.
    waiting: Mutex<BTreeMap<u64, Waiter>>,
    /// The number waiting, read without the lock by every place given back.
    len: AtomicUsize,
    next: AtomicU64,
    /// Clients that had to wait, and those closed for it (`QUEUE_REASONS` order: the
    /// queue was full, they waited too long), for the status API.
    queued: AtomicU64,
    refused: [AtomicU64; 2],
    metrics: QueueMetrics,
}

struct Waiter {
    since: Instant,
    wake: Arc<Notify>,
}

/// Why a client left the queue without a place, in the order of
/// [`crate::metrics::QUEUE_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_queue` clients were waiting already: closed at once.
    Full = 0,
    /// It waited `queue_timeout` without a place coming free.
    Timeout = 1,
}

/// What the status API shows of a queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCounts {
    pub waiting: usize,
    /// How long the client at the head has been waiting.
    pub oldest: Option<Duration>,
    pub queued: u64,
    pub full: u64,
    pub timed_out: u64,
}

impl Queue {
    pub fn new(backend: &str) -> Queue {
        Queue {
            waiting: Mutex::new(BTreeMap::new()),
            len: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            refused: [AtomicU64::new(0), AtomicU64::new(0)],
            metrics: QueueMetrics::new(backend),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Waiter>> {
        // A waiter's map stays consistent whatever panicked while it was held.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether nobody waits (read without the lock).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }

    /// Joins at the back, unless `max` clients wait already (then the refusal is counted).
    pub fn join(&self, max: Option<usize>) -> Result<Ticket<'_>, Refusal> {
        let wake = Arc::new(Notify::new());
        let since = Instant::now();
        let number = {
            let mut waiting = self.lock();
            if max.is_some_and(|m| waiting.len() >= m) {
                drop(waiting);
                self.refuse(Refusal::Full);
                return Err(Refusal::Full);
            }
            let number = self.next.fetch_add(1, Ordering::Relaxed);
            waiting.insert(
                number,
                Waiter {
                    since,
                    wake: wake.clone(),
                },
            );
            self.set_len(waiting.len());
            number
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            queue: self,
            number,
            wake,
            since,
        })
    }

    /// A place came free at a server of the backend: the first client waiting gets to try.
    pub fn place_freed(&self) {
        if !self.is_empty() {
            self.wake_first(&self.lock());
        }
    }

    fn wake_first(&self, waiting: &BTreeMap<u64, Waiter>) {
        if let Some(w) = waiting.values().next() {
            // Stores a permit when the client is not waiting yet: no wake-up is lost.
            w.wake.notify_one();
        }
    }

    fn set_len(&self, len: usize) {
        self.len.store(len, Ordering::SeqCst);
        self.metrics.length.set(len as f64);
    }

    fn refuse(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        self.metrics.refused[why as usize].increment(1);
    }

    pub fn counts(&self) -> QueueCounts {
        let waiting = self.lock();
        QueueCounts {
            waiting: waiting.len(),
            oldest: waiting.values().next().map(|w| w.since.elapsed()),
            queued: self.queued.load(Ordering::Relaxed),
            full: self.refused[Refusal::Full as usize].load(Ordering::Relaxed),
            timed_out: self.refused[Refusal::Timeout as usize].load(Ordering::Relaxed),
        }
    }
}

/// A client's place in the queue. Dropping it leaves the queue (the client got a place,
/// gave up, or went away); if it was first, the next one gets to try.
pub struct Ticket<'a> {
    queue: &'a Queue,
    number: u64,
    wake: Arc<Notify>,
    since: Instant,
}

impl Ticket<'_> {
    /// Whether its turn has come: nobody waits before it.
    pub fn is_first(&self) -> bool {
        self.queue.lock().keys().next() == Some(&self.number)
    }

    /// Completes when a place may have come free (a spurious wake-up is possible: the
    /// caller looks again).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// How long it has waited.
    pub fn waited(&self) -> Duration {
        self.since.elapsed()
    }

    /// It waited `queue_timeout`: leaves the queue, counted as timed out.
    pub fn timed_out(self) -> Duration {
        self.queue.refuse(Refusal::Timeout);
        self.waited()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.metrics.wait.record(self.since.elapsed().as_secs_f64());
        let mut waiting = self.queue.lock();
        let was_first = waiting.keys().next() == Some(&self.number);
        waiting.remove(&self.number);
        self.queue.set_len(waiting.len());
        // The next one tries: a place may be free that this client did not take (it got
        // one of several, or left with a wake-up it never used).
        if was_first {
            self.queue.wake_first(&waiting);
        }
    }
}

/// Wakes the clients first in their queues when a server's state changes (up, down,
/// drained, enabled): a server that comes up has room, and with every server down the
/// wait is over.
pub fn servers_changed() {
    SERVERS_CHANGED.notify_waiters();
}

/// What the first client of a queue waits on besides its ticket; see [`servers_changed`].
pub fn servers_changed_signal() -> &'static Notify {
    &SERVERS_CHANGED
}

static SERVERS_CHANGED: Notify = Notify::const_new();
