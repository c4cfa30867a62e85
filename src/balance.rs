//! Server selection: the four balancing policies, as pure functions over a slice.
//!
//! No I/O and no shared state here beyond what the caller hands in (a round-robin
//! counter, a random source, the client's hash), so every policy can be tested on its
//! distribution and benchmarked on its own. What makes a server eligible (health,
//! drain, slow start) is summed up by the caller in [`Candidate::weight`]: zero means
//! "not now". A server that should take new connections only when no other can (a
//! drained one) has a [`Candidate::last_resort_weight`] instead. A server at its
//! connection limit is still eligible, but has no room: [`Picker::pick_with_room`]
//! passes it over, and says when every eligible server is full.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::config::Balance;

/// What the policies need to know of a server.
pub trait Candidate {
    /// The effective weight now; 0 when the server must not get new connections.
    fn weight(&self) -> u32;
    /// Backup servers are chosen only when no primary server is eligible.
    fn backup(&self) -> bool;
    /// The weight it takes new connections with when no server of the list (primary or
    /// backup) has a [`Candidate::weight`]: a drained server that is up. 0 (the default):
    /// not even then.
    fn last_resort_weight(&self) -> u32 {
        0
    }
    /// Connections established to it now.
    fn active(&self) -> u32;
    /// A stable identity for consistent hashing (a hash of the server's name).
    fn key(&self) -> u64;
}

impl<T: Candidate> Candidate for std::sync::Arc<T> {
    fn weight(&self) -> u32 {
        (**self).weight()
    }
    fn backup(&self) -> bool {
        (**self).backup()
    }
    fn last_resort_weight(&self) -> u32 {
        (**self).last_resort_weight()
    }
    fn active(&self) -> u32 {
        (**self).active()
    }
    fn key(&self) -> u64 {
        (**self).key()
    }
}

/// The per-backend state the policies read.
#[derive(Debug, Default)]
pub struct Picker {
    /// Rotates the start of `least-conn`'s scan, so that ties are taken in turn.
    counter: AtomicUsize,
    /// `round-robin`'s running weights, one per server.
    current: Mutex<Vec<i64>>,
}

/// Where a client comes from and what has been tried for it already.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// A hash of the client's address (without port), for `source-hash`.
    pub client: u64,
    /// Indices of servers that already failed this client's connect.
    pub tried: &'a [usize],
    /// A random value, for `random-two`.
    pub random: u64,
}

/// What [`Picker::pick_with_room`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The server chosen (it has room).
    Server(usize),
    /// Servers can take the client, but every one of those its turn would go to is at
    /// its limit: it has to wait.
    Full,
    /// No server can take the client.
    None,
}

impl Picker {
    /// A picker for a new list of servers that goes on where `old` left off (a reload
    /// must not restart the rotation): `old_index[i]` is where the new list's server `i`
    /// stood in the old list, if it was there. Servers new to the list start afresh.
    pub fn carry_over(old: &Picker, old_index: &[Option<usize>]) -> Picker {
        let current = old.current.lock().unwrap_or_else(|p| p.into_inner());
        let carried = old_index
            .iter()
            .map(|j| j.and_then(|j| current.get(j).copied()).unwrap_or(0))
            .collect();
        Picker {
            counter: AtomicUsize::new(old.counter.load(Ordering::Relaxed)),
            current: Mutex::new(carried),
        }
    }

    /// The index of the chosen server, or `None` when no server is eligible.
    pub fn pick<C: Candidate>(&self, policy: Balance, servers: &[C], req: Request<'_>) -> Option<usize> {
        match self.pick_with_room(policy, servers, req, |_| true) {
            Pick::Server(i) => Some(i),
            Pick::Full | Pick::None => None,
        }
    }

    /// The chosen server among those `room` says can take one more connection.
    ///
    /// Which servers are in play does not depend on room: primaries first; backups only
    /// when no primary can take the client; last-resort servers (drained ones),
    /// primaries then backups, only when neither can. When every server in play is
    /// full the answer is [`Pick::Full`], not a backup: a backup stands in for servers
    /// that are down, not for servers that are busy (HAProxy queues the same way).
    /// Within the servers in play, those without room are passed over, and each policy
    /// picks among the rest as it would among all: `source-hash` gives a client whose
    /// server is full the next one in its order, as if its own were down.
    pub fn pick_with_room<C: Candidate>(
        &self,
        policy: Balance,
        servers: &[C],
        req: Request<'_>,
        room: impl Fn(usize) -> bool,
    ) -> Pick {
        // least-conn's ties rotate once per pick, however many rounds it takes.
        let turn = self.counter.fetch_add(1, Ordering::Relaxed);
        for last_resort in [false, true] {
            for backup in [false, true] {
                let in_play = |i: usize, s: &C| -> u32 {
                    if s.backup() != backup || req.tried.contains(&i) {
                        0
                    } else if last_resort {
                        s.last_resort_weight()
                    } else {
                        s.weight()
                    }
                };
                let weight = |i: usize, s: &C| if room(i) { in_play(i, s) } else { 0 };
                let chosen = match policy {
                    Balance::RoundRobin => self.round_robin(servers, weight),
                    Balance::LeastConn => Self::least_conn(servers, weight, turn),
                    Balance::RandomTwo => random_two(servers, weight, req.random),
                    Balance::SourceHash => source_hash(servers, weight, req.client),
                };
                if let Some(i) = chosen {
                    return Pick::Server(i);
                }
                // Only reached when these servers all lack room, or none is in play.
                if servers.iter().enumerate().any(|(i, s)| in_play(i, s) > 0) {
                    return Pick::Full;
                }
            }
        }
        Pick::None
    }

    /// Smooth weighted round-robin (as nginx does it): every eligible server gains its
    /// weight, the richest is picked and pays the total. Weights are met exactly over
    /// each cycle and a heavy server's turns are spread out, not back to back; servers
    /// leaving or joining just stop or start gaining.
    /// `weight` gives each server's weight in this round, 0 for not eligible.
    fn round_robin<C: Candidate>(&self, servers: &[C], weight: impl Fn(usize, &C) -> u32) -> Option<usize> {
        // A short critical section over one small vector per backend, never a map.
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.len() != servers.len() {
            current.clear();
            current.resize(servers.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, s) in servers.iter().enumerate() {
            let w = i64::from(weight(i, s));
            if w == 0 {
                continue;
            }
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }

    /// Fewest active connections relative to weight; ties are taken in turn.
    /// `turn` counts picks: the scan starts there, so that ties are taken in turn.
    fn least_conn<C: Candidate>(servers: &[C], weight: impl Fn(usize, &C) -> u32, turn: usize) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let start = turn % n;
        let mut best: Option<(usize, u64, u64)> = None; // (index, active, weight)
        for k in 0..n {
            let i = (start + k) % n;
            let s = &servers[i];
            let w = u64::from(weight(i, s));
            if w == 0 {
                continue;
            }
            let a = u64::from(s.active());
            // a/w < best_a/best_w without division.
            if best.is_none_or(|(_, ba, bw)| a * bw < ba * w) {
                best = Some((i, a, w));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

/// The power of two random choices: two servers drawn by weight, the less loaded wins.
fn random_two<C: Candidate>(servers: &[C], weight: impl Fn(usize, &C) -> u32, random: u64) -> Option<usize> {
    let total: u64 = servers.iter().enumerate().map(|(i, s)| u64::from(weight(i, s))).sum();
    if total == 0 {
        return None;
    }
    let draw = |r: u64| {
        let slot = r % total;
        let mut acc = 0u64;
        servers
            .iter()
            .enumerate()
            .find(|(i, s)| {
                acc += u64::from(weight(*i, s));
                slot < acc
            })
            .map(|(i, _)| i)
    };
    let a = draw(random)?;
    let b = draw(mix(random ^ 0x9e37_79b9_7f4a_7c15))?;
    let load = |i: usize| (u64::from(servers[i].active()), u64::from(weight(i, &servers[i])));
    let ((aa, aw), (ba, bw)) = (load(a), load(b));
    Some(if ba * aw < aa * bw { b } else { a })
}

/// Weighted rendezvous hashing: each server scores the client, the highest wins. A
/// server that leaves takes only its own clients with it; the others keep theirs.
fn source_hash<C: Candidate>(servers: &[C], weight: impl Fn(usize, &C) -> u32, client: u64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in servers.iter().enumerate() {
        let w = weight(i, s);
        if w == 0 {
            continue;
        }
        let h = mix(client ^ s.key());
        // A uniform value in (0, 1], then the weighted score w / -ln(u).
        let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let score = f64::from(w) / -u.ln();
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// A 64-bit finaliser (splitmix64): good avalanche for hashing small keys.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of bytes (FNV-1a, then mixed), the same in every process.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// The `source-hash` key of a client: its IP address, not its port.
pub fn client_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate server of the selection tests (here and in `balance_tests.rs`).
    #[derive(Clone, Copy)]
    pub(super) struct S {
        pub(super) weight: u32,
        pub(super) last_resort: u32,
        pub(super) backup: bool,
        pub(super) active: u32,
        pub(super) key: u64,
    }

    impl Candidate for S {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn backup(&self) -> bool {
            self.backup
        }
        fn last_resort_weight(&self) -> u32 {
            self.last_resort
        }
        fn active(&self) -> u32 {
            self.active
        }
        fn key(&self) -> u64 {
            self.key
        }
    }

    fn servers(weights: &[u32]) -> Vec<S> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| S {
                weight: w,
                last_resort: 0,
                backup: false,
                active: 0,
                key: hash_bytes(format!("server-{i}").as_bytes()),
            })
            .collect()
    }

    fn req(client: u64, random: u64) -> Request<'static> {
        Request {
            client,
            tried: &[],
            random,
        }
    }

    fn counts(policy: Balance, servers: &[S], picks: u64) -> Vec<u64> {
        let p = Picker::default();
        let mut counts = vec![0u64; servers.len()];
        for n in 0..picks {
            let i = p.pick(policy, servers, req(mix(n), mix(n + 1_000_000))).unwrap();
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let s = servers(&[1, 2, 3]);
        assert_eq!(counts(Balance::RoundRobin, &s, 600), vec![100, 200, 300]);
    }

    #[test]
    fn round_robin_interleaves_a_heavy_server() {
        let s = servers(&[1, 1, 4]);
        let p = Picker::default();
        let seq: Vec<usize> = (0..6)
            .map(|_| p.pick(Balance::RoundRobin, &s, req(0, 0)).unwrap())
            .collect();
        let longest_run = seq.windows(3).filter(|w| w.iter().all(|&i| i == 2)).count();
        assert_eq!(longest_run, 0, "weight 4 of 6 came three in a row: {seq:?}");
    }

    #[test]
    fn round_robin_skips_ineligible_and_tried_servers() {
        let mut s = servers(&[1, 1, 1]);
        s[1].weight = 0;
        let p = Picker::default();
        for _ in 0..10 {
            let i = p.pick(
                Balance::RoundRobin,
                &s,
                Request {
                    client: 0,
                    tried: &[0],
                    random: 0,
                },
            );
            assert_eq!(i, Some(2));
        }
    }

    /// One pick per picker, each picker carried over from the last (a reload per pick).
    fn picks_across_carry_overs(policy: Balance, s: &[S], n: usize) -> Vec<usize> {
        let same: Vec<Option<usize>> = (0..s.len()).map(Some).collect();
        let mut p = Picker::default();
        let mut seq = Vec::new();
        for _ in 0..n {
            seq.push(p.pick(policy, s, req(0, 0)).unwrap());
            p = Picker::carry_over(&p, &same);
        }
        seq
    }

    #[test]
    fn round_robin_goes_on_where_it_was_across_a_carry_over() {
        let s = servers(&[1, 1, 1]);
        let seq = picks_across_carry_overs(Balance::RoundRobin, &s, 6);
        assert_eq!(seq, [0, 1, 2, 0, 1, 2], "rotation restarted at a reload: {seq:?}");
    }

    #[test]
    fn least_conn_ties_stay_in_turn_across_a_carry_over() {
        let s = servers(&[1, 1, 1]);
        let seq = picks_across_carry_overs(Balance::LeastConn, &s, 6);
        assert_eq!(seq, [0, 1, 2, 0, 1, 2], "tie-breaking restarted at a reload: {seq:?}");
    }

    #[test]
    fn a_carry_over_follows_servers_that_move_and_starts_new_ones_afresh() {
        let s = servers(&[1, 1, 1]);
        let p = Picker::default();
        // a, b, c: a and b have had their turn; c is next.
        assert_eq!(p.pick(Balance::RoundRobin, &s, req(0, 0)), Some(0));
        assert_eq!(p.pick(Balance::RoundRobin, &s, req(0, 0)), Some(1));
        // New list: c, a, d (b left, d is new): c still goes first.
        let q = Picker::carry_over(&p, &[Some(2), Some(0), None]);
        assert_eq!(
            q.pick(Balance::RoundRobin, &s, req(0, 0)),
            Some(0),
            "c (now first) lost its turn"
        );
    }

    #[test]
    fn least_conn_picks_the_least_loaded_relative_to_weight() {
        let mut s = servers(&[1, 1, 2]);
        s[0].active = 5;
        s[1].active = 2;
        s[2].active = 5; // 5/2 = 2.5 > 2/1
        assert_eq!(counts(Balance::LeastConn, &s, 10), vec![0, 10, 0]);
        s[2].active = 3; // 1.5 < 2
        assert_eq!(counts(Balance::LeastConn, &s, 10), vec![0, 0, 10]);
    }

    #[test]
    fn least_conn_takes_ties_in_turn() {
        let s = servers(&[1, 1, 1]);
        assert_eq!(counts(Balance::LeastConn, &s, 300), vec![100, 100, 100]);
    }

    #[test]
    fn least_conn_evens_out_load_as_connections_accumulate() {
        let mut s = servers(&[1, 1, 1]);
        s[0].active = 10;
        let p = Picker::default();
        for _ in 0..20 {
            let i = p.pick(Balance::LeastConn, &s, req(0, 0)).unwrap();
            s[i].active += 1;
        }
        let active: Vec<u32> = s.iter().map(|s| s.active).collect();
        assert_eq!(active, vec![10, 10, 10]);
    }

    #[test]
    fn random_two_spreads_by_weight_when_idle() {
        let s = servers(&[1, 1, 2]);
        let c = counts(Balance::RandomTwo, &s, 40_000);
        let share: Vec<f64> = c.iter().map(|&n| n as f64 / 40_000.0).collect();
        // With no load, the first draw wins ties: shares follow the weights.
        for (got, want) in share.iter().zip([0.25, 0.25, 0.5]) {
            assert!((got - want).abs() < 0.02, "shares {share:?}, wanted 0.25/0.25/0.5");
        }
    }

    #[test]
    fn random_two_avoids_the_loaded_server() {
        let mut s = servers(&[1, 1, 1]);
        s[0].active = 100;
        let c = counts(Balance::RandomTwo, &s, 30_000);
        // Server 0 wins only when both draws land on it: 1/9 of the time.
        let share0 = c[0] as f64 / 30_000.0;
        assert!(
            (share0 - 1.0 / 9.0).abs() < 0.02,
            "loaded server got {share0:.3} of picks, wanted ~0.111"
        );
    }

    #[test]
    fn source_hash_keeps_a_client_on_one_server() {
        let s = servers(&[1, 1, 1]);
        let p = Picker::default();
        for client in 0..1000u64 {
            let first = p.pick(Balance::SourceHash, &s, req(mix(client), 0));
            for r in 0..3 {
                assert_eq!(p.pick(Balance::SourceHash, &s, req(mix(client), r)), first);
            }
        }
    }

    #[test]
    fn source_hash_spreads_clients_by_weight() {
        let s = servers(&[1, 1, 2]);
        let c = counts(Balance::SourceHash, &s, 40_000);
        let share: Vec<f64> = c.iter().map(|&n| n as f64 / 40_000.0).collect();
        for (got, want) in share.iter().zip([0.25, 0.25, 0.5]) {
            assert!((got - want).abs() < 0.02, "shares {share:?}, wanted 0.25/0.25/0.5");
        }
    }

    #[test]
    fn source_hash_moves_only_the_clients_of_a_server_that_leaves() {
        let mut s = servers(&[1, 1, 1, 1]);
        let p = Picker::default();
        let before: Vec<usize> = (0..10_000u64)
            .map(|c| p.pick(Balance::SourceHash, &s, req(mix(c), 0)).unwrap())
            .collect();
        s[2].weight = 0;
        let mut moved_others = 0;
        for (c, &was) in before.iter().enumerate() {
            let now = p.pick(Balance::SourceHash, &s, req(mix(c as u64), 0)).unwrap();
            if was != 2 && now != was {
                moved_others += 1;
            }
            assert_ne!(now, 2);
        }
        assert_eq!(moved_others, 0, "{moved_others} clients of staying servers moved");
    }

    #[test]
    fn backups_serve_only_when_no_primary_is_eligible() {
        let mut s = servers(&[1, 1, 1]);
        s[2].backup = true;
        for policy in [
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::RandomTwo,
            Balance::SourceHash,
        ] {
            let c = counts(policy, &s, 300);
            assert_eq!(c[2], 0, "{policy:?} used the backup while primaries were up: {c:?}");
            let mut down = s.clone();
            down[0].weight = 0;
            down[1].weight = 0;
            assert_eq!(counts(policy, &down, 30), vec![0, 0, 30], "{policy:?}");
        }
    }

    #[test]
    fn drained_servers_serve_only_when_no_primary_or_backup_can() {
        // 0, 1: primaries; 2: a backup. A drained server has weight 0 and a last-resort weight.
        let mut s = servers(&[1, 1, 1]);
        s[2].backup = true;
        s[0].weight = 0;
        s[0].last_resort = 1;
        for policy in [
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::RandomTwo,
            Balance::SourceHash,
        ] {
            let c = counts(policy, &s, 60);
            assert_eq!(
                c,
                vec![0, 60, 0],
                "{policy:?} used a drained server or the backup while a primary was up"
            );
            let mut backup_only = s.clone();
            backup_only[1].weight = 0;
            let c = counts(policy, &backup_only, 60);
            assert_eq!(
                c,
                vec![0, 0, 60],
                "{policy:?} used a drained server while the backup was up"
            );
            let mut all_drained = backup_only.clone();
            all_drained[2].weight = 0;
            all_drained[1].last_resort = 3;
            let c = counts(policy, &all_drained, 400);
            assert_eq!(c[2], 0, "{policy:?} used a down backup: {c:?}");
            assert!(
                c[0] > 0 && c[1] > 0,
                "{policy:?}: all drained, both drained primaries take clients: {c:?}"
            );
            if policy == Balance::RoundRobin {
                assert_eq!(c, vec![100, 300, 0], "round-robin follows the last-resort weights");
            }
            // A drained backup comes after drained primaries.
            let mut drained_backup = all_drained.clone();
            drained_backup[2].last_resort = 1;
            assert_eq!(counts(policy, &drained_backup, 40)[2], 0, "{policy:?}");
            drained_backup[0].last_resort = 0;
            drained_backup[1].last_resort = 0;
            assert_eq!(counts(policy, &drained_backup, 40), vec![0, 0, 40], "{policy:?}");
        }
    }

    const POLICIES: [Balance; 4] = [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::RandomTwo,
        Balance::SourceHash,
    ];

    #[test]
    fn servers_without_room_are_passed_over_by_every_policy() {
        let s = servers(&[1, 1, 1]);
        let room = |i: usize| i != 1;
        for policy in POLICIES {
            let p = Picker::default();
            for n in 0..300u64 {
                let got = p.pick_with_room(policy, &s, req(mix(n), mix(n + 7)), room);
                assert!(
                    matches!(got, Pick::Server(0) | Pick::Server(2)),
                    "{policy:?} gave {got:?} with server 1 full"
                );
            }
        }
    }

    #[test]
    fn full_primaries_make_clients_wait_rather_than_go_to_a_backup() {
        let mut s = servers(&[1, 1, 1]);
        s[2].backup = true;
        for policy in POLICIES {
            let p = Picker::default();
            assert_eq!(
                p.pick_with_room(policy, &s, req(1, 2), |i| i == 2),
                Pick::Full,
                "{policy:?}"
            );
            let mut down = s.clone();
            down[0].weight = 0;
            down[1].weight = 0;
            assert_eq!(
                p.pick_with_room(policy, &down, req(1, 2), |_| true),
                Pick::Server(2),
                "{policy:?}: the backup stands in for primaries that are down"
            );
            assert_eq!(
                p.pick_with_room(policy, &down, req(1, 2), |_| false),
                Pick::Full,
                "{policy:?}"
            );
            let mut none = down.clone();
            none[2].weight = 0;
            assert_eq!(
                p.pick_with_room(policy, &none, req(1, 2), |_| true),
                Pick::None,
                "{policy:?}"
            );
        }
    }

    #[test]
    fn a_drained_server_at_its_limit_is_waited_for_only_when_nothing_else_can_serve() {
        let mut s = servers(&[0, 1]);
        s[0].last_resort = 1;
        for policy in POLICIES {
            let p = Picker::default();
            assert_eq!(
                p.pick_with_room(policy, &s, req(3, 4), |_| true),
                Pick::Server(1),
                "{policy:?}"
            );
            assert_eq!(
                p.pick_with_room(policy, &s, req(3, 4), |i| i == 0),
                Pick::Full,
                "{policy:?}"
            );
            let mut drained = s.clone();
            drained[1].weight = 0;
            assert_eq!(
                p.pick_with_room(policy, &drained, req(3, 4), |_| false),
                Pick::Full,
                "{policy:?}"
            );
        }
    }

    #[test]
    fn weights_hold_among_the_servers_with_room() {
        let s = servers(&[1, 2, 3]);
        let p = Picker::default();
        let mut counts = [0u32; 3];
        for _ in 0..400 {
            match p.pick_with_room(Balance::RoundRobin, &s, req(0, 0), |i| i != 2) {
                Pick::Server(i) => counts[i] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(counts, [133, 267, 0], "weights 1:2 between the two with room");
    }

    #[test]
    fn source_hash_moves_only_the_clients_of_a_full_server() {
        let s = servers(&[1, 1, 1, 1]);
        let p = Picker::default();
        let mut moved = 0;
        for c in 0..5_000u64 {
            let free = p.pick(Balance::SourceHash, &s, req(mix(c), 0)).unwrap();
            let Pick::Server(limited) = p.pick_with_room(Balance::SourceHash, &s, req(mix(c), 0), |i| i != 3) else {
                panic!("no server for client {c}");
            };
            if free != 3 {
                assert_eq!(limited, free, "client {c} moved off a server with room");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 1000, "about a quarter of clients hash to server 3: {moved}");
    }

    #[test]
    fn no_eligible_server_gives_none() {
        let s = servers(&[0, 0]);
        for policy in [
            Balance::RoundRobin,
            Balance::LeastConn,
            Balance::RandomTwo,
            Balance::SourceHash,
        ] {
            assert_eq!(Picker::default().pick(policy, &s, req(1, 2)), None);
        }
        let empty: Vec<S> = Vec::new();
        assert_eq!(Picker::default().pick(Balance::LeastConn, &empty, req(1, 2)), None);
    }
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod more_tests;
