//! Micro-benchmarks of what every new connection and every forwarded chunk costs
//! outside the kernel: picking a server, and counting the bytes.
//!
//! - `pick/runtime/<policy>/<servers>`: `Picker::pick` over the real
//!   `runtime::ServerEntry` slice of a `Snapshot` built from a TOML config, so each
//!   candidate's `weight()` reads the server's atomics (admin state, availability,
//!   slow start) as the data path does.
//! - `pick/plain/<policy>/<servers>`: the same policies over a plain struct whose
//!   weight is a field: the cost of the policy alone.
//! - `metrics/...`: one byte-counter increment per forwarded chunk, through a handle
//!   resolved once (`TrafficMetrics`, what the data path does) against a
//!   `metrics::counter!` lookup by labels each time (what it must not do), with the
//!   Prometheus recorder installed.
//!
//! Run: `cargo bench --bench balance` (about a minute); add a filter to run a part,
//! e.g. `cargo bench --bench balance -- metrics`.

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Bencher, BenchmarkId, Criterion};
use gatehouse::balance::{mix, Candidate, Picker, Request};
use gatehouse::config::{Balance, Config};
use gatehouse::metrics::{TrafficMetrics, BYTES};
use gatehouse::runtime::{Backend, Snapshot};

const POLICIES: [Balance; 4] = [
    Balance::RoundRobin,
    Balance::LeastConn,
    Balance::RandomTwo,
    Balance::SourceHash,
];
const SIZES: [usize; 2] = [3, 1000];

/// A backend of `n` servers on loopback addresses (IP literals: no resolver involved),
/// with weights 1..=4 and a few connections active on each, built the way gatehouse
/// builds it.
fn runtime_backend(policy: Balance, n: usize) -> Arc<Backend> {
    let servers: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ name = \"s{i}\", address = \"127.1.{}.{}:8080\", weight = {} }}",
                i / 250,
                i % 250 + 1,
                i % 4 + 1
            )
        })
        .collect();
    let text = format!(
        "[[listener]]\nname = \"front\"\nbind = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
         [backend.pool]\nbalance = \"{}\"\nhealth = {{ check = \"none\" }}\nservers = [\n{}\n]\n",
        policy.as_str(),
        servers.join(",\n")
    );
    let config = Config::parse(&text, "bench").unwrap_or_else(|e| panic!("bench config: {e}"));
    let (snapshot, _) = Snapshot::build(Arc::new(config), None);
    let backend = snapshot.backends[0].clone();
    for (i, s) in backend.servers.iter().enumerate() {
        s.server.active.store((i % 7) as u32, Ordering::Relaxed);
    }
    assert!(
        backend.servers.iter().all(|s| s.weight() > 0),
        "every bench server must be eligible"
    );
    backend
}

/// What a policy needs of a server, with nothing behind it.
struct Plain {
    weight: u32,
    backup: bool,
    active: u32,
    key: u64,
}

impl Candidate for Plain {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn backup(&self) -> bool {
        self.backup
    }
    fn active(&self) -> u32 {
        self.active
    }
    fn key(&self) -> u64 {
        self.key
    }
}

fn plain_servers(n: usize) -> Vec<Plain> {
    (0..n)
        .map(|i| Plain {
            // The runtime scales weights by 16 (slow start's resolution): the same here.
            weight: (i % 4 + 1) as u32 * 16,
            backup: false,
            active: (i % 7) as u32,
            key: gatehouse::balance::hash_bytes(format!("s{i}").as_bytes()),
        })
        .collect()
}

/// Picks once per iteration, a different client and random draw each time.
fn pick_each_iteration<C: Candidate>(b: &mut Bencher<'_>, picker: &Picker, policy: Balance, servers: &[C]) {
    let mut x = 0u64;
    b.iter(|| {
        x = x.wrapping_add(1);
        let req = Request {
            client: mix(x),
            tried: &[],
            random: mix(!x),
        };
        black_box(picker.pick(policy, black_box(servers), req))
    })
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick/runtime");
    for policy in POLICIES {
        for n in SIZES {
            let backend = runtime_backend(policy, n);
            g.bench_function(BenchmarkId::new(policy.as_str(), n), |b| {
                pick_each_iteration(b, &backend.picker, policy, &backend.servers)
            });
        }
    }
    g.finish();
    let mut g = c.benchmark_group("pick/plain");
    for policy in POLICIES {
        for n in SIZES {
            let (picker, servers) = (Picker::default(), plain_servers(n));
            g.bench_function(BenchmarkId::new(policy.as_str(), n), |b| {
                pick_each_iteration(b, &picker, policy, &servers)
            });
        }
    }
    g.finish();
}

/// The per-chunk cost of counting bytes: a handle resolved once against a lookup by labels.
fn metrics(c: &mut Criterion) {
    let _handle = gatehouse::metrics::install();
    let mut g = c.benchmark_group("metrics");
    let traffic = TrafficMetrics::new("front", "pool", "arkveld");
    g.bench_function("handle_increment", |b| {
        b.iter(|| traffic.client_to_server.increment(black_box(16384)))
    });
    g.bench_function("lookup_static_labels", |b| {
        b.iter(|| {
            metrics::counter!(BYTES, "listener" => "front", "backend" => "pool", "server" => "arkveld",
                "direction" => "client_to_server")
            .increment(black_box(16384))
        })
    });
    // What a data path that looked its counter up would really do: the names are
    // runtime strings (from the config), so each lookup builds owned labels.
    let (listener, backend, server): (Arc<str>, Arc<str>, Arc<str>) = ("front".into(), "pool".into(), "arkveld".into());
    g.bench_function("lookup_owned_labels", |b| {
        b.iter(|| {
            metrics::counter!(BYTES, "listener" => listener.to_string(), "backend" => backend.to_string(),
                "server" => server.to_string(), "direction" => "client_to_server")
            .increment(black_box(16384))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short windows: the figures are stable to a few percent at these sizes, and the
    // whole file runs in about a minute on two cores.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = pick, metrics
}
criterion_main!(benches);
