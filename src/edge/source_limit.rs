//! Per-source limits: concurrent connections and new-connection rate per client, in a
//! table of fixed capacity.
//!
//! Owns the table of clients (an IPv4 address, or an IPv6 /64 — one subscriber's
//! network; a v4-mapped client counts as its IPv4 address), the admission decision and
//! the guard that gives a connection slot back when dropped. It does not own the clock
//! (callers pass `now`), nor the counting and logging of refusals.
//!
//! The table never grows past its capacity, whatever a spoofed-source flood sends.
//! When a new client needs an entry and the table is full, the entry idle longest (no
//! live connection) is evicted, as HAProxy's stick-table evicts its oldest; forgetting
//! it can only forgive that client some rate debt. When every entry holds a live
//! connection, the new client is refused with [`Refusal::TableFull`]: admitting clients
//! the table cannot see would void the limit for exactly the flood it exists for, so
//! the table fails closed, and its capacity should be sized above the number of
//! distinct clients expected to hold connections at once.
//!
//! The rate is a token bucket of `count` tokens refilled over `per` (so a burst of
//! `count` is allowed), kept as one timestamp per entry (GCRA). Locks: the table is
//! split in shards by a keyed hash; a lock is held for O(1) work.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A new-connection rate: `count` connections per `per`, a burst of `count` allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

/// Why a rate's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a rate: {why} (expected COUNT/DURATION, e.g. 100/10s, 20/s, 600/1m)")]
pub struct RateError {
    pub input: String,
    pub why: &'static str,
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(input: &str) -> Result<Rate, RateError> {
        let fail = |why| RateError {
            input: input.to_owned(),
            why,
        };
        let (count, per) = input.split_once('/').ok_or_else(|| fail("no '/'"))?;
        let count = decimal(count).ok_or_else(|| fail("the count is not a decimal number"))?;
        let count = u32::try_from(count).map_err(|_| fail("the count is too large"))?;
        if count == 0 {
            return Err(fail("the count is zero"));
        }
        let digits = per.bytes().take_while(u8::is_ascii_digit).count();
        let (n, unit) = per.split_at(digits);
        let n = if n.is_empty() {
            1
        } else {
            decimal(n).ok_or_else(|| fail("the duration is too large"))?
        };
        let unit_nanos: u64 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(fail("the duration has no unit (ms, s, m or h)")),
            _ => return Err(fail("the duration's unit is not ms, s, m or h")),
        };
        let nanos = n
            .checked_mul(unit_nanos)
            .filter(|&n| n <= 86_400_000_000_000)
            .ok_or_else(|| fail("the duration is longer than a day"))?;
        if nanos == 0 {
            return Err(fail("the duration is zero"));
        }
        Ok(Rate {
            count,
            per: Duration::from_nanos(nanos),
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Plain decimal digits, at most 10 of them (no sign, no spaces).
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.per.as_millis();
        let (n, unit) = if ms.is_multiple_of(3_600_000) {
            (ms / 3_600_000, "h")
        } else if ms.is_multiple_of(60_000) {
            (ms / 60_000, "m")
        } else if ms.is_multiple_of(1000) {
            (ms / 1000, "s")
        } else {
            (ms, "ms")
        };
        write!(f, "{}/{}{}", self.count, n, unit)
    }
}

/// What a listener limits per client; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub rate: Option<Rate>,
}

/// Who a limit applies to: an IPv4 address or an IPv6 /64 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(Ipv4Addr),
    /// The top 64 bits of the address.
    V6Net(u64),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4),
                None => SourceKey::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::V4(v4) => write!(f, "{v4}"),
            SourceKey::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

/// Why a client's new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("client already holds {limit} connections, the per-source limit")]
    TooManyConnections { limit: u32 },
    #[error("client opens connections faster than {rate}; next allowed in {retry_after:?}")]
    RateExceeded { rate: Rate, retry_after: Duration },
    #[error("per-source table full: all {capacity} entries hold live connections")]
    TableFull { capacity: usize },
}

impl Refusal {
    /// The metric label and log word for this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooManyConnections { .. } => "source_max_connections",
            Refusal::RateExceeded { .. } => "source_rate",
            Refusal::TableFull { .. } => "source_table_full",
        }
    }
}

const NIL: u32 = u32::MAX;
/// Below this capacity the table is one shard (eviction order is then exact).
const SHARDED_FROM: usize = 1024;
const SHARDS: usize = 16;

#[derive(Debug)]
struct Slot {
    key: SourceKey,
    active: u32,
    /// GCRA theoretical arrival time, in nanoseconds since the table's epoch.
    tat: u64,
    /// The idle list (entries with no live connection, oldest first); NIL when active.
    prev: u32,
    next: u32,
}

#[derive(Debug)]
struct Shard {
    index: HashMap<SourceKey, u32>,
    slots: Vec<Slot>,
    capacity: usize,
    idle_head: u32,
    idle_tail: u32,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            index: HashMap::new(),
            slots: Vec::new(),
            capacity,
            idle_head: NIL,
            idle_tail: NIL,
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.idle_head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.idle_tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_idle(&mut self, i: u32) {
        let tail = self.idle_tail;
        {
            let s = &mut self.slots[i as usize];
            s.prev = tail;
            s.next = NIL;
        }
        match tail {
            NIL => self.idle_head = i,
            t => self.slots[t as usize].next = i,
        }
        self.idle_tail = i;
    }

    /// The entry for `key`, made (by eviction if need be) when absent; `None` when full
    /// of live entries. A new entry is idle (on the idle list).
    fn entry(&mut self, key: SourceKey) -> Option<u32> {
        if let Some(&i) = self.index.get(&key) {
            return Some(i);
        }
        let i = if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                key,
                active: 0,
                tat: 0,
                prev: NIL,
                next: NIL,
            });
            (self.slots.len() - 1) as u32
        } else {
            let oldest = self.idle_head;
            if oldest == NIL {
                return None;
            }
            self.unlink(oldest);
            let old_key = self.slots[oldest as usize].key;
            self.index.remove(&old_key);
            let s = &mut self.slots[oldest as usize];
            s.key = key;
            s.tat = 0;
            oldest
        };
        self.index.insert(key, i);
        self.push_idle(i);
        Some(i)
    }
}

#[derive(Debug)]
struct Inner {
    limits: Limits,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    epoch: Instant,
    capacity: usize,
    /// GCRA emission interval and burst tolerance, in nanoseconds.
    interval: u64,
    tolerance: u64,
}

impl Inner {
    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // Nothing panics while holding a shard lock; if it did, the table is still sound.
        self.shards[shard]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A listener's per-source limits and the table that enforces them. Cloning shares
/// the table.
#[derive(Debug, Clone)]
pub struct SourceLimits {
    inner: Arc<Inner>,
}

/// A live connection's place in its client's count; dropping it gives the place back.
#[derive(Debug)]
#[must_use = "the connection counts only while the guard lives"]
pub struct SourceGuard {
    held: Option<(Arc<Inner>, u32, u32)>,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Some((inner, shard, slot)) = self.held.take() {
            let mut shard = inner.lock(shard as usize);
            // The slot cannot have been evicted: it had a live connection (this one).
            let active = {
                let s = &mut shard.slots[slot as usize];
                s.active = s.active.saturating_sub(1);
                s.active
            };
            if active == 0 {
                shard.push_idle(slot);
            }
        }
    }
}

impl SourceLimits {
    /// A table of at most `capacity` clients (at least 1; from 1024 on, rounded up to a
    /// multiple of the shard count: see [`SourceLimits::capacity`]).
    pub fn new(limits: Limits, capacity: usize) -> SourceLimits {
        let capacity = capacity.clamp(1, (NIL - 1) as usize);
        let shards = if capacity >= SHARDED_FROM { SHARDS } else { 1 };
        let per_shard = capacity.div_ceil(shards);
        let (interval, tolerance) = match limits.rate {
            Some(rate) => {
                let per = nanos(rate.per);
                let interval = (per / u64::from(rate.count)).max(1);
                (interval, per.saturating_sub(interval))
            }
            None => (0, 0),
        };
        SourceLimits {
            inner: Arc::new(Inner {
                limits,
                shards: (0..shards).map(|_| Mutex::new(Shard::new(per_shard))).collect(),
                hasher: RandomState::new(),
                epoch: Instant::now(),
                capacity: per_shard * shards,
                interval,
                tolerance,
            }),
        }
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The most clients the table tracks at once.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Clients tracked now (for a gauge).
    pub fn tracked(&self) -> usize {
        (0..self.inner.shards.len())
            .map(|i| self.inner.lock(i).index.len())
            .sum()
    }

    /// Live connections counted for `ip`'s client.
    pub fn active(&self, ip: IpAddr) -> u32 {
        let key = SourceKey::of(ip);
        let shard = self.inner.lock(self.shard_of(&key));
        shard.index.get(&key).map_or(0, |&i| shard.slots[i as usize].active)
    }

    fn shard_of(&self, key: &SourceKey) -> usize {
        (self.inner.hasher.hash_one(key) as usize) % self.inner.shards.len()
    }

    /// Admit a new connection from `ip` at `now`, or say why not. The connection counts
    /// against its client while the returned guard lives. Without limits nothing is
    /// tracked.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<SourceGuard, Refusal> {
        let inner = &self.inner;
        if inner.limits.max_connections.is_none() && inner.limits.rate.is_none() {
            return Ok(SourceGuard { held: None });
        }
        let key = SourceKey::of(ip);
        let shard_index = self.shard_of(&key);
        let mut shard = inner.lock(shard_index);
        let i = shard.entry(key).ok_or(Refusal::TableFull {
            capacity: inner.capacity,
        })?;
        let now = nanos(now.saturating_duration_since(inner.epoch));
        let verdict = self.decide(&mut shard.slots[i as usize], now);
        let slot = &mut shard.slots[i as usize];
        match verdict {
            Ok(()) => {
                let was_idle = slot.active == 0;
                slot.active += 1;
                if was_idle {
                    shard.unlink(i);
                }
                drop(shard);
                Ok(SourceGuard {
                    held: Some((Arc::clone(inner), shard_index as u32, i)),
                })
            }
            Err(refusal) => {
                if slot.active == 0 {
                    // Refused but seen: the freshest idle entry, last to be evicted.
                    shard.unlink(i);
                    shard.push_idle(i);
                }
                Err(refusal)
            }
        }
    }

    fn decide(&self, slot: &mut Slot, now: u64) -> Result<(), Refusal> {
        let limits = &self.inner.limits;
        if let Some(limit) = limits.max_connections {
            if slot.active >= limit {
                return Err(Refusal::TooManyConnections { limit });
            }
        }
        if let Some(rate) = limits.rate {
            let tat = slot.tat.max(now);
            let ahead = tat - now;
            if ahead > self.inner.tolerance {
                return Err(Refusal::RateExceeded {
                    rate,
                    retry_after: Duration::from_nanos(ahead - self.inner.tolerance),
                });
            }
            slot.tat = tat.saturating_add(self.inner.interval);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "source_limit_tests.rs"]
mod tests;
