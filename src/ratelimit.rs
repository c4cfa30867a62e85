//! Rate-limited logging: events that can come by the thousand (rejected clients,
//! failed connects) are logged at most once a second, with a count of those not
//! logged, so that a backend with no server up cannot flood the journal.
//!
//! Owns only its counters; what is logged and where is the caller's business.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::millis_since_start;

/// One rate limit: at most one line a second.
#[derive(Debug)]
pub struct RateLimitedLog {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    pub const fn new() -> Self {
        RateLimitedLog {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log now; if so, how many were suppressed since the last line.
    pub fn admit(&self) -> Option<u64> {
        // Offset by a second so that the first event of the process is logged.
        let now = millis_since_start() + 1000;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new()
    }
}
