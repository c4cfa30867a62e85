//! Admission: the edge's first word on an accepted client — its listener's `allow` and
//! `deny` rules, then its per-source limits — in the order the data path asks.
//!
//! Owns the pairing of [`SourceRules`] and [`SourceLimits`] for one listener (or the
//! admin listener) and the two refusal kinds the operator sees (`denied`,
//! `source_limit`). Pure like the rest of the edge: the caller passes the client's
//! address (the peer, or the PROXY-protocol source once that is read) and the time, and
//! counts and logs a refusal itself.

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use super::source_limit::{Limits, Refusal, SourceGuard, SourceLimits};
use super::source_rules::{Cidr, Reason, SourceRules, Verdict};

/// One listener's checks on a client address.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    rules: SourceRules,
    /// The table and the capacity it was asked for (the table rounds it).
    limits: Option<(SourceLimits, usize)>,
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// By `allow`/`deny`.
    Denied(Reason),
    /// By `source_limit`.
    SourceLimit(Refusal),
}

impl Refused {
    /// The `reason` label of `gatehouse_connections_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Denied(_) => "denied",
            Refused::SourceLimit(_) => "source_limit",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Denied(Reason::DenyRule(block)) => write!(f, "denied by deny rule {block}"),
            Refused::Denied(Reason::NotAllowed) => f.write_str("denied: not in the allow list"),
            Refused::SourceLimit(r) => write!(f, "source limit: {r}"),
        }
    }
}

/// An admitted client: it counts against its source while this lives.
#[derive(Debug)]
#[must_use = "the connection counts against its source only while this lives"]
pub struct Admitted {
    _guard: Option<SourceGuard>,
}

impl Admission {
    /// Checks for `allow`/`deny` and, when given, `(limits, table capacity)`. The table
    /// of `previous` is kept when its limits and capacity are the same, so that a reload
    /// does not forget the connections clients already hold.
    pub fn new(allow: &[Cidr], deny: &[Cidr], limits: Option<(Limits, usize)>, previous: Option<&Admission>) -> Self {
        let limits = limits.map(|(l, capacity)| {
            let kept = previous
                .and_then(|p| p.limits.as_ref())
                .filter(|(table, c)| table.limits() == l && *c == capacity)
                .map(|(table, _)| table.clone());
            (kept.unwrap_or_else(|| SourceLimits::new(l, capacity)), capacity)
        });
        Admission {
            rules: SourceRules::new(allow, deny),
            limits,
        }
    }

    /// Admits a client at `now`, or says why not: rules first (a denied client costs
    /// no table entry), then limits.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<Admitted, Refused> {
        if !self.rules.is_empty() {
            if let Verdict::Denied(reason) = self.rules.check(client) {
                return Err(Refused::Denied(reason));
            }
        }
        let guard = match &self.limits {
            Some((table, _)) => Some(table.admit(client, now).map_err(Refused::SourceLimit)?),
            None => None,
        };
        Ok(Admitted { _guard: guard })
    }

    /// Clients the per-source table tracks now (0 without limits).
    pub fn tracked_sources(&self) -> usize {
        self.limits.as_ref().map_or(0, |(t, _)| t.tracked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn deny_is_checked_before_limits_and_takes_no_table_entry() {
        let limits = Limits {
            max_connections: Some(1),
            rate: None,
        };
        let a = Admission::new(&[], &[cidr("127.0.0.3/32")], Some((limits, 16)), None);
        let now = Instant::now();
        let refused = a.admit("127.0.0.3".parse().unwrap(), now).unwrap_err();
        assert_eq!(refused.reason(), "denied");
        assert_eq!(refused.to_string(), "denied by deny rule 127.0.0.3/32");
        assert_eq!(a.tracked_sources(), 0, "a denied client must not take a table entry");
        let held = a
            .admit("127.0.0.2".parse().unwrap(), now)
            .expect("first connection admitted");
        assert_eq!(a.tracked_sources(), 1, "the admitted client is tracked");
        let second = a.admit("127.0.0.2".parse().unwrap(), now).unwrap_err();
        assert_eq!(second.reason(), "source_limit");
        drop(held);
        assert!(a
            .admit("127.0.0.2".parse().unwrap(), now + Duration::from_millis(1))
            .is_ok());
    }

    #[test]
    fn a_reload_with_the_same_limits_keeps_the_counts() {
        let limits = Limits {
            max_connections: Some(1),
            rate: None,
        };
        let old = Admission::new(&[], &[], Some((limits, 16)), None);
        let _held = old.admit("::1".parse().unwrap(), Instant::now()).unwrap();
        let same = Admission::new(&[], &[], Some((limits, 16)), Some(&old));
        assert!(
            same.admit("::1".parse().unwrap(), Instant::now()).is_err(),
            "the held connection still counts"
        );
        let wider = Limits {
            max_connections: Some(2),
            rate: None,
        };
        let changed = Admission::new(&[], &[], Some((wider, 16)), Some(&old));
        assert!(changed.admit("::1".parse().unwrap(), Instant::now()).is_ok());
    }
}
