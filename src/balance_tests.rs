//! Properties of the policies that `cargo mutants` found no test for (TESTING.md): the
//! defaults and the `Arc` forwarding of [`Candidate`], the load comparison of
//! `random-two`, least-conn past its counter's wrap, and the hashing under
//! `source-hash` (`mix`, `client_hash`).

use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::*;

use super::tests::S;

fn s(weight: u32, active: u32) -> S {
    S {
        weight,
        last_resort: 0,
        backup: false,
        active,
        key: mix((u64::from(weight) << 32) | u64::from(active)),
    }
}

fn req(client: u64, random: u64) -> Request<'static> {
    Request {
        client,
        tried: &[],
        random,
    }
}

/// Picks of `policy` over `servers` for `n` requests (clients and randoms from `mix`).
fn picks<C: Candidate>(policy: Balance, servers: &[C], n: u64) -> Vec<Option<usize>> {
    let p = Picker::default();
    (0..n)
        .map(|i| p.pick(policy, servers, req(mix(i), mix(i + 1_000_000))))
        .collect()
}

/// A candidate that keeps every default of the trait.
struct Plain(u32);

impl Candidate for Plain {
    fn weight(&self) -> u32 {
        self.0
    }
    fn backup(&self) -> bool {
        false
    }
    fn active(&self) -> u32 {
        0
    }
    fn key(&self) -> u64 {
        7
    }
}

#[test]
fn a_candidate_without_a_last_resort_weight_is_never_a_last_resort() {
    for policy in [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::RandomTwo,
        Balance::SourceHash,
    ] {
        let none = picks(policy, &[Plain(0), Plain(0)], 20);
        assert!(none.iter().all(Option::is_none), "{policy:?}: {none:?}");
    }
}

#[test]
fn servers_behind_an_arc_are_picked_as_the_servers_themselves() {
    let mut drained = s(0, 0);
    drained.last_resort = 3;
    let mut backup = s(1, 0);
    backup.backup = true;
    let cases: Vec<(Balance, Vec<S>)> = vec![
        // weight
        (Balance::RoundRobin, vec![s(1, 0), s(2, 0), s(3, 0)]),
        // backup: the primary takes all
        (Balance::RoundRobin, vec![s(1, 0), backup]),
        // last resort weight: only the drained one with a weight
        (Balance::RoundRobin, vec![s(0, 0), drained]),
        // active
        (Balance::LeastConn, vec![s(1, 5), s(1, 0), s(1, 3)]),
        // key
        (Balance::SourceHash, vec![s(1, 0), s(1, 1), s(1, 2)]),
    ];
    for (policy, plain) in cases {
        let arced: Vec<Arc<S>> = plain.iter().copied().map(Arc::new).collect();
        assert_eq!(
            picks(policy, &arced, 200),
            picks(policy, &plain, 200),
            "{policy:?} over Arc<S> and over S"
        );
    }
}

#[test]
fn least_conn_goes_on_picking_when_its_counter_wraps() {
    let p = Picker {
        counter: AtomicUsize::new(usize::MAX - 1),
        ..Picker::default()
    };
    let servers = [s(1, 0), s(1, 0), s(1, 0)];
    // The counter wraps after usize::MAX picks (fetch_add wraps): picking goes on.
    let seen: Vec<_> = (0..6)
        .map(|_| p.pick(Balance::LeastConn, &servers, req(0, 0)))
        .collect();
    assert!(seen.iter().all(Option::is_some), "{seen:?}");
}

/// random-two over `servers`, for randoms whose first draw lands on server `first`:
/// the share of picks that stayed on it.
fn random_two_keeps_first(servers: &[S], first: usize) -> f64 {
    let total: u64 = servers.iter().map(|s| u64::from(s.weight)).sum();
    let start: u64 = servers[..first].iter().map(|s| u64::from(s.weight)).sum();
    let p = Picker::default();
    let (mut drawn, mut kept) = (0u32, 0u32);
    for n in 0..20_000u64 {
        let random = mix(n);
        let slot = random % total;
        if slot < start || slot >= start + u64::from(servers[first].weight) {
            continue;
        }
        drawn += 1;
        kept += u32::from(p.pick(Balance::RandomTwo, servers, req(0, random)) == Some(first));
    }
    f64::from(kept) / f64::from(drawn)
}

#[test]
fn random_two_keeps_the_less_loaded_by_weight_of_its_two_draws() {
    // 0: 5 active over weight 3 (1.67 each); 1: 4 over weight 4 (1 each), the less loaded.
    let servers = [s(3, 5), s(4, 4)];
    // First draw on 1: never replaced by the more loaded 0.
    assert_eq!(random_two_keeps_first(&servers, 1), 1.0, "server 1 drawn first");
    // First draw on 0: kept only when the second draw is 0 too (3 in 7).
    let kept = random_two_keeps_first(&servers, 0);
    assert!(
        (kept - 3.0 / 7.0).abs() < 0.05,
        "the more loaded server, drawn first, kept {kept:.3} of the time, want ~0.43"
    );
}

#[test]
fn mix_flips_each_output_bit_half_the_time_for_any_one_input_bit() {
    // Strict avalanche, bit by bit: source-hash's spread and its consistency under
    // changes of the server set rest on it. Splitmix64 stays within 0.04 of one half
    // over 2,000 inputs; a weakened step (a shift turned, an xor made an or) strays
    // by 0.27 or more.
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let inputs: Vec<u64> = (0..2000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
        .collect();
    for bit in 0..64 {
        let mut flips = [0u32; 64];
        for &x in &inputs {
            let changed = mix(x) ^ mix(x ^ (1 << bit));
            for (out, n) in flips.iter_mut().enumerate() {
                *n += u32::from((changed >> out) & 1 == 1);
            }
        }
        for (out, &n) in flips.iter().enumerate() {
            let p = f64::from(n) / inputs.len() as f64;
            assert!(
                (0.4..=0.6).contains(&p),
                "input bit {bit} flips output bit {out} {p:.3} of the time, want ~0.5"
            );
        }
    }
}

#[test]
fn client_hash_tells_clients_apart_by_address_only() {
    let a: IpAddr = "192.168.1.50".parse().unwrap();
    let b: IpAddr = "192.168.1.51".parse().unwrap();
    let mapped: IpAddr = "::ffff:192.168.1.50".parse().unwrap();
    let six: IpAddr = "fd00::50".parse().unwrap();
    assert_ne!(client_hash(a), client_hash(b));
    assert_ne!(client_hash(a), client_hash(six));
    assert_eq!(
        client_hash(a),
        client_hash(mapped),
        "an IPv4 client on a dual-stack socket"
    );
    let distinct: std::collections::HashSet<u64> =
        (0..=255u8).map(|i| client_hash(IpAddr::from([10, 0, 0, i]))).collect();
    assert_eq!(distinct.len(), 256);
}
