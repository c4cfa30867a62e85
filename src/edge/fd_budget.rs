//! The file-descriptor budget: how many connections the process can hold open at once
//! under its `RLIMIT_NOFILE`, derived the way HAProxy derives `maxconn`, and the one
//! call that raises the soft limit to the hard one at startup.
//!
//! Owns the arithmetic ([`plan`]) and [`raise_nofile_limit`]. It does not own
//! enforcement (the listener's connection count, the forwarder's pipe count) nor
//! what to do when a configured `max_connections` exceeds the ceiling (config check).
//!
//! The formula, every term a descriptor count:
//!
//! ```text
//! reserved = 3                          stdin, stdout, stderr
//!          + 2 × threads                an epoll fd and a wake-up eventfd per thread
//!          + listeners                  one socket each (kept across reloads)
//!          + servers                    one health-check socket in flight per server
//!          + dns_in_flight              resolver sockets (UDP, or TCP after truncation)
//!          + 1 + admin_connections      the admin listener and its clients
//!          + other                      reload (config and certificate files), log files
//! pipes    = 2 × max_pipes              splice pipes alive at once, pooled and in use
//! ceiling  = (nofile − reserved − pipes) ÷ 2      a client socket and a server socket
//! ```
//!
//! `max_pipes` is a fixed number, or (like HAProxy's default `maxpipes = maxconn/4`)
//! one pipe per `n` connections, in which case
//! `ceiling = (nofile − reserved) × n ÷ (2n + 2)` and `max_pipes = ceiling ÷ n`. Past
//! `max_pipes` the forwarder must copy instead of splicing, or the budget is a lie.

use std::io;

/// The descriptors the process needs besides its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdNeeds {
    pub threads: u64,
    pub listeners: u64,
    pub servers: u64,
    pub dns_in_flight: u64,
    pub admin_connections: u64,
    /// Reload (the config and certificate files being read) and log files.
    pub other: u64,
}

impl FdNeeds {
    /// Everything but connections and pipes (the `reserved` term above).
    pub fn reserved(&self) -> u64 {
        [
            3,
            self.threads.saturating_mul(2),
            self.listeners,
            self.servers,
            self.dns_in_flight,
            1,
            self.admin_connections,
            self.other,
        ]
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n))
    }
}

/// How many splice pipes may be alive at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeBudget {
    /// No splicing: every byte is copied.
    None,
    Fixed(u64),
    /// One pipe per this many connections (HAProxy's default is 4).
    PerConnections(u64),
}

/// The outcome: what the process can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdPlan {
    pub nofile: u64,
    pub reserved: u64,
    pub max_pipes: u64,
    /// Connections (client and server socket each) that fit in what is left.
    pub max_connections: u64,
}

/// Why no connection fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the open-file limit ({nofile}) leaves no room for connections: {reserved} descriptors are \
     reserved and {pipes} go to splice pipes; raise LimitNOFILE in the systemd unit"
)]
pub struct FdBudgetError {
    pub nofile: u64,
    pub reserved: u64,
    pub pipes: u64,
}

/// The connection ceiling under `nofile` descriptors (see the module's formula).
pub fn plan(nofile: u64, needs: &FdNeeds, pipes: PipeBudget) -> Result<FdPlan, FdBudgetError> {
    let reserved = needs.reserved();
    let error = |pipe_fds| FdBudgetError {
        nofile,
        reserved,
        pipes: pipe_fds,
    };
    let left = nofile.checked_sub(reserved).ok_or(error(0))?;
    let (max_pipes, max_connections) = match pipes {
        PipeBudget::None => (0, left / 2),
        PipeBudget::Fixed(p) => {
            let pipe_fds = p.saturating_mul(2);
            let rest = left.checked_sub(pipe_fds).ok_or(error(pipe_fds))?;
            (p, rest / 2)
        }
        PipeBudget::PerConnections(n) => {
            let n = n.max(1);
            // 2 fds per connection plus 2 per pipe, one pipe per n connections.
            let conns = u64::try_from(u128::from(left) * u128::from(n) / (2 * u128::from(n) + 2)).unwrap_or(u64::MAX);
            (conns / n, conns)
        }
    };
    if max_connections == 0 {
        return Err(error(max_pipes.saturating_mul(2)));
    }
    Ok(FdPlan {
        nofile,
        reserved,
        max_pipes,
        max_connections,
    })
}

/// The open-file limit before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Linux's default `fs.nr_open`, the most a soft limit can be when the hard one is
/// unlimited.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// Raise the soft `RLIMIT_NOFILE` to the hard one (as systemd's `LimitNOFILE=` soft
/// value is often 1024 while the hard value is far higher) and report both.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let hard = limit.rlim_max;
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        NR_OPEN_DEFAULT
    } else {
        hard
    };
    if before != libc::RLIM_INFINITY && before < target {
        let raised = libc::rlimit {
            rlim_cur: target as libc::rlim_t,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; the soft value does not exceed the hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(NofileLimit {
            before,
            soft: target,
            hard,
        });
    }
    Ok(NofileLimit {
        before,
        soft: before,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs() -> FdNeeds {
        FdNeeds {
            threads: 2,
            listeners: 4,
            servers: 10,
            dns_in_flight: 4,
            admin_connections: 64,
            other: 16,
        }
    }

    #[test]
    fn reserved_sums_every_term() {
        // 3 + 4 + 4 + 10 + 4 + 1 + 64 + 16
        assert_eq!(needs().reserved(), 106);
    }

    #[test]
    fn without_splicing_each_connection_costs_two_descriptors() {
        let p = plan(1024, &needs(), PipeBudget::None).unwrap();
        assert_eq!(p.max_connections, (1024 - 106) / 2, "{p:?}");
        assert_eq!(p.max_pipes, 0);
    }

    #[test]
    fn a_fixed_pipe_budget_comes_off_the_top() {
        let p = plan(65_536, &needs(), PipeBudget::Fixed(256)).unwrap();
        assert_eq!(p.max_connections, (65_536 - 106 - 512) / 2, "{p:?}");
    }

    #[test]
    fn one_pipe_per_four_connections_matches_haproxy_s_default() {
        let p = plan(1_048_576, &needs(), PipeBudget::PerConnections(4)).unwrap();
        let used = 2 * p.max_connections + 2 * p.max_pipes + p.reserved;
        assert!(used <= p.nofile, "{used} descriptors of {}", p.nofile);
        assert!(p.nofile - used < 12, "{} descriptors left unused", p.nofile - used);
        assert_eq!(p.max_pipes, p.max_connections / 4);
    }

    #[test]
    fn too_small_a_limit_is_an_error_naming_the_fix() {
        let err = plan(100, &needs(), PipeBudget::None).unwrap_err();
        assert_eq!(err.reserved, 106);
        assert!(err.to_string().contains("LimitNOFILE"), "{err}");
        assert!(plan(200, &needs(), PipeBudget::Fixed(50)).is_err());
        assert!(plan(107, &needs(), PipeBudget::None).is_err());
        assert_eq!(plan(108, &needs(), PipeBudget::None).map(|p| p.max_connections), Ok(1));
    }

    #[test]
    fn huge_figures_saturate_instead_of_overflowing() {
        let n = FdNeeds {
            threads: u64::MAX,
            ..needs()
        };
        assert!(plan(u64::MAX, &n, PipeBudget::None).is_err());
        let p = plan(u64::MAX, &needs(), PipeBudget::PerConnections(0)).unwrap();
        assert!(p.max_connections > 0);
    }

    fn nofile() -> libc::rlimit {
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `now` is a valid rlimit for getrlimit to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        now
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        // Start below the hard limit (as under systemd's default 1024), so that there is
        // something to raise; a hard limit of "unlimited" is raised to fs.nr_open.
        let was = nofile();
        let below = (was.rlim_max / 2).clamp(1, 512);
        if was.rlim_cur > below {
            let lowered = libc::rlimit {
                rlim_cur: below,
                rlim_max: was.rlim_max,
            };
            // SAFETY: a valid rlimit, its soft value under the hard one.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        }
        let limit = raise_nofile_limit().expect("getrlimit/setrlimit");
        let target = if was.rlim_max == libc::RLIM_INFINITY {
            NR_OPEN_DEFAULT
        } else {
            was.rlim_max
        };
        assert_eq!(
            (limit.before, limit.soft),
            (below.min(was.rlim_cur), target),
            "{limit:?}"
        );
        let now = nofile();
        assert_eq!(now.rlim_cur, limit.soft, "{limit:?}");
        // A second call finds nothing to do.
        let again = raise_nofile_limit().unwrap();
        assert_eq!(again.before, again.soft, "{again:?}");
    }
}
