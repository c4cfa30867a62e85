//! The clocks every other module reads: wall time for status and metrics, and a
//! monotonic millisecond count since start, cheap enough to keep in atomics.
//!
//! Owns no state but the process's start instant; knows nothing of servers or connections.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, for status and metrics.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// When the process started, the zero of the millisecond clocks kept in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the clock was first read (monotonic).
pub fn millis_since_start() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// A duration in milliseconds, rounded to a hundredth: what logs and the status API
/// show (0.11, not 0.11378300000000001).
pub fn rounded_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounded_ms_keeps_a_hundredth_of_a_millisecond() {
        let d = std::time::Duration::from_nanos(113_783);
        assert_eq!(rounded_ms(d), 0.11, "113.783 µs shown as {}", rounded_ms(d));
        assert_eq!(rounded_ms(std::time::Duration::from_millis(2_500)), 2500.0);
    }
}
