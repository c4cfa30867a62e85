//! Server names to addresses: hickory-resolver, `/etc/hosts`, and re-resolution as
//! records expire.
//!
//! Each server named by a host name gets a task that resolves it, publishes the
//! addresses to the server (which keeps the state of addresses that stay), and sleeps
//! until the records' TTL ends (within `min_refresh`..`max_refresh`). A name that fails
//! keeps its last known addresses, is logged, and is tried again after `retry`; it
//! never holds up other servers or the start. The hosts file is read again when it
//! changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolveHosts,
    ResolverConfig as HickoryConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use tokio::task::JoinHandle;

use crate::config::{Host, ResolverConfig};
use crate::runtime::Server;

/// The shared resolver, rebuilt when its config or the hosts file changes.
pub struct Resolution {
    config: ArcSwap<ResolverConfig>,
    resolver: ArcSwap<TokioResolver>,
    /// The hosts file as the resolver last read it. Its answers carry no TTL, so names
    /// it answers are looked at again every `min_refresh`: an edit is seen soon.
    hosts: ArcSwap<Hosts>,
    hosts_seen: Mutex<(PathBuf, Option<SystemTime>)>,
}

impl Resolution {
    pub fn new(config: &ResolverConfig) -> Arc<Self> {
        let (resolver, hosts) = build(config);
        Arc::new(Resolution {
            resolver: ArcSwap::from_pointee(resolver),
            hosts: ArcSwap::new(hosts),
            config: ArcSwap::from_pointee(config.clone()),
            hosts_seen: Mutex::new((config.hosts_file.clone(), modified(&config.hosts_file))),
        })
    }

    /// Takes a new resolver config (at reload); names are re-resolved on their next round.
    pub fn update(&self, config: &ResolverConfig) {
        if **self.config.load() != *config {
            let (resolver, hosts) = build(config);
            self.resolver.store(Arc::new(resolver));
            self.hosts.store(hosts);
            self.config.store(Arc::new(config.clone()));
        }
    }

    fn refresh_hosts(&self) {
        let config = self.config.load();
        let now = modified(&config.hosts_file);
        let Ok(mut seen) = self.hosts_seen.lock() else { return };
        if *seen != (config.hosts_file.clone(), now) {
            *seen = (config.hosts_file.clone(), now);
            tracing::info!(file = %config.hosts_file.display(), "hosts file changed; re-reading it");
            let (resolver, hosts) = build(&config);
            self.resolver.store(Arc::new(resolver));
            self.hosts.store(hosts);
        }
    }

    /// Starts resolving `server` if it is named by a host name. The task ends when the
    /// server is retired.
    pub fn spawn(self: &Arc<Self>, server: Arc<Server>) -> Option<JoinHandle<()>> {
        let Host::Name(name) = server.host.clone() else {
            return None;
        };
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut changes = server.subscribe_endpoints();
            loop {
                if server.is_retired() {
                    return;
                }
                let wait = this.resolve_once(&server, &name).await;
                // Sleep until the records expire, or the server is retired.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = changes.changed() => {}
                }
            }
        }))
    }

    /// Resolves once and publishes the result; returns how long until the next round.
    pub async fn resolve_once(&self, server: &Server, name: &str) -> Duration {
        self.refresh_hosts();
        let config = self.config.load();
        let resolver = self.resolver.load_full();
        // A trailing dot: the name is absolute, no search domains are tried.
        let fqdn = if name.contains('.') {
            format!("{name}.")
        } else {
            name.to_string()
        };
        let lookup = tokio::time::timeout(config.timeout * 3, resolver.lookup_ip(fqdn.as_str())).await;
        match lookup {
            Ok(Ok(found)) => {
                let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, server.port)).collect();
                if addrs.is_empty() {
                    self.failed(server, name, "no addresses in the answer", &config)
                } else {
                    if server.set_addresses(&addrs) {
                        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                        tracing::info!(server = %server.label(), "{name} resolved to {}", list.join(", "));
                    }
                    if self.in_hosts_file(&fqdn) {
                        return config.min_refresh;
                    }
                    let ttl = found.valid_until().saturating_duration_since(Instant::now());
                    ttl.clamp(config.min_refresh, config.max_refresh)
                }
            }
            Ok(Err(e)) => self.failed(server, name, &e.to_string(), &config),
            Err(_) => self.failed(server, name, "timed out", &config),
        }
    }

    fn in_hosts_file(&self, name: &str) -> bool {
        let Ok(name) = Name::from_ascii(name) else { return false };
        let hosts = self.hosts.load();
        [RecordType::A, RecordType::AAAA]
            .into_iter()
            .any(|t| hosts.lookup_static_host(&Query::query(name.clone(), t)).is_some())
    }

    fn failed(&self, server: &Server, name: &str, why: &str, config: &ResolverConfig) -> Duration {
        let known = server.endpoints().len();
        if known > 0 {
            tracing::warn!(server = %server.label(), "cannot resolve {name}: {why}; keeping its {known} last known address(es)");
        } else {
            tracing::warn!(server = %server.label(), "cannot resolve {name}: {why}; it takes no traffic until it resolves");
        }
        config.retry
    }
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn build(config: &ResolverConfig) -> (TokioResolver, Arc<Hosts>) {
    let hosts_file = &config.hosts_file;
    let provider = TokioRuntimeProvider::default();
    let mut builder = if config.nameservers.is_empty() {
        match TokioResolver::builder(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot read the system resolver config ({e}); only the hosts file resolves names");
                TokioResolver::builder_with_config(HickoryConfig::from_name_servers(Vec::new()), provider)
            }
        }
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|ns| {
                let connection = |protocol| {
                    let mut c = ConnectionConfig::new(protocol);
                    c.port = ns.port();
                    c
                };
                NameServerConfig::new(
                    ns.ip(),
                    true,
                    vec![connection(ProtocolConfig::Udp), connection(ProtocolConfig::Tcp)],
                )
            })
            .collect();
        TokioResolver::builder_with_config(HickoryConfig::from_name_servers(servers), provider)
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = config.timeout;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.positive_max_ttl = Some(config.max_refresh);
    opts.negative_max_ttl = Some(config.retry);
    let mut resolver = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot build the resolver ({e}); using an empty one");
            TokioResolver::builder_with_config(
                HickoryConfig::from_name_servers(Vec::new()),
                TokioRuntimeProvider::default(),
            )
            .build()
            .expect("a resolver without name servers always builds")
        }
    };
    let mut hosts = Hosts::default();
    if let Ok(file) = std::fs::File::open(hosts_file) {
        if let Err(e) = hosts.read_hosts_conf(file) {
            tracing::warn!(file = %hosts_file.display(), "cannot read hosts file: {e}");
        }
    }
    let hosts = Arc::new(hosts);
    resolver.set_hosts(hosts.clone());
    (resolver, hosts)
}
