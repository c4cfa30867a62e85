//! Source rules: CIDR blocks and the `allow`/`deny` verdict on a client address.
//!
//! Owns the text form of a CIDR block (`192.168.0.0/22`, `::1/128`, a bare address as a
//! host route) with precise errors, and the check a listener makes on each accepted
//! client: deny wins, an empty allow list allows everyone, and an IPv4-mapped IPv6 client
//! (`::ffff:a.b.c.d`, what a dual-stack socket reports) is judged by the IPv4 rules.
//! It does not own where the lists come from (config) nor what a refusal costs (the
//! listener counts and logs it).
//!
//! An IPv6 rule is for IPv6 clients only: `::/0` does not match an IPv4 client, and a
//! rule written inside `::ffff:0:0/96` is stored as the IPv4 rule it means.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network: an address with every bit past the prefix zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{input:?} is not an IPv4 or IPv6 address (expected e.g. 192.168.0.0/22 or fd00::/8)")]
    BadAddress { input: String },
    #[error("{input:?} has a prefix length that is not a decimal number")]
    BadPrefix { input: String },
    #[error("{input} has prefix length {prefix}, longer than the {max} bits of the address")]
    PrefixTooLong { input: String, prefix: u32, max: u8 },
    #[error("{input} has host bits set; did you mean {suggestion}?")]
    HostBitsSet { input: String, suggestion: Cidr },
}

fn bits(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// A mask of the top `prefix` bits of a `width`-bit number, held in the low bits.
fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (128 - u32::from(prefix))) >> (128 - u32::from(width))
    }
}

fn to_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_bits(value: u128, v4: bool) -> IpAddr {
    if v4 {
        // The value came from a masked u32, so it fits.
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

/// The address a client is judged by: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

impl Cidr {
    /// The block `network/prefix`; `None` when the prefix is too long or host bits are set.
    pub fn new(network: IpAddr, prefix: u8) -> Option<Cidr> {
        let width = bits(network);
        if prefix > width || to_bits(network) & !mask(prefix, width) != 0 {
            return None;
        }
        Some(Cidr { network, prefix })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside this block (same family only; see [`canonical`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        to_bits(ip) & mask(self.prefix, bits(ip)) == to_bits(self.network)
    }

    /// The IPv4 rule a block inside `::ffff:0:0/96` stands for; other blocks unchanged.
    fn canonical(self) -> Cidr {
        if let IpAddr::V6(v6) = self.network {
            if self.prefix >= 96 {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Cidr {
                        network: IpAddr::V4(v4),
                        prefix: self.prefix - 96,
                    };
                }
            }
        }
        self
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Cidr, CidrError> {
        let (addr_text, prefix_text) = match input.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (input, None),
        };
        let addr = IpAddr::from_str(addr_text).map_err(|_| CidrError::BadAddress {
            input: input.to_owned(),
        })?;
        let width = bits(addr);
        let prefix = match prefix_text {
            None => width,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::BadPrefix {
                        input: input.to_owned(),
                    });
                }
                // Three digits at most, so this cannot overflow.
                let n: u32 = p.bytes().fold(0, |n, b| n * 10 + u32::from(b - b'0'));
                if n > u32::from(width) {
                    return Err(CidrError::PrefixTooLong {
                        input: input.to_owned(),
                        prefix: n,
                        max: width,
                    });
                }
                n as u8
            }
        };
        let raw = to_bits(addr);
        let masked = raw & mask(prefix, width);
        if masked != raw {
            return Err(CidrError::HostBitsSet {
                input: input.to_owned(),
                suggestion: Cidr {
                    network: from_bits(masked, addr.is_ipv4()),
                    prefix,
                },
            });
        }
        Ok(Cidr { network: addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The verdict on one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied(Reason),
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It matched this `deny` block (the most specific one that matched).
    DenyRule(Cidr),
    /// The `allow` list is not empty and no block in it matched.
    NotAllowed,
}

impl Reason {
    /// The metric label and log word for this refusal.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::DenyRule(_) => "deny_rule",
            Reason::NotAllowed => "not_allowed",
        }
    }
}

/// Blocks grouped by prefix length, longest first, each group sorted: a check costs one
/// binary search per distinct prefix length, whatever the number of blocks.
#[derive(Debug, Clone, Default)]
struct PrefixSet {
    v4: Vec<(u8, Vec<u128>)>,
    v6: Vec<(u8, Vec<u128>)>,
}

impl PrefixSet {
    fn build(blocks: &[Cidr]) -> PrefixSet {
        let mut set = PrefixSet::default();
        for block in blocks.iter().map(|b| b.canonical()) {
            let groups = if block.network.is_ipv4() {
                &mut set.v4
            } else {
                &mut set.v6
            };
            let value = to_bits(block.network);
            match groups.iter_mut().find(|(p, _)| *p == block.prefix) {
                Some((_, values)) => values.push(value),
                None => groups.push((block.prefix, vec![value])),
            }
        }
        for groups in [&mut set.v4, &mut set.v6] {
            groups.sort_by_key(|g| std::cmp::Reverse(g.0));
            for (_, values) in groups.iter_mut() {
                values.sort_unstable();
                values.dedup();
            }
        }
        set
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The most specific block containing `ip` (already canonical).
    fn find(&self, ip: IpAddr) -> Option<Cidr> {
        let (groups, width) = match ip {
            IpAddr::V4(_) => (&self.v4, 32),
            IpAddr::V6(_) => (&self.v6, 128),
        };
        let value = to_bits(ip);
        for (prefix, values) in groups {
            let network = value & mask(*prefix, width);
            if values.binary_search(&network).is_ok() {
                return Some(Cidr {
                    network: from_bits(network, width == 32),
                    prefix: *prefix,
                });
            }
        }
        None
    }
}

/// A listener's `allow` and `deny` lists, ready to check clients against.
#[derive(Debug, Clone, Default)]
pub struct SourceRules {
    allow: PrefixSet,
    deny: PrefixSet,
}

impl SourceRules {
    pub fn new(allow: &[Cidr], deny: &[Cidr]) -> SourceRules {
        SourceRules {
            allow: PrefixSet::build(allow),
            deny: PrefixSet::build(deny),
        }
    }

    /// Whether there is anything to check (so a listener without rules skips the call).
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The verdict on a client: deny wins; an empty allow list allows everyone.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let ip = canonical(ip);
        if let Some(block) = self.deny.find(ip) {
            return Verdict::Denied(Reason::DenyRule(block));
        }
        if self.allow.is_empty() || self.allow.find(ip).is_some() {
            Verdict::Allowed
        } else {
            Verdict::Denied(Reason::NotAllowed)
        }
    }
}

#[cfg(test)]
#[path = "source_rules_tests.rs"]
mod tests;
