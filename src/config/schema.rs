//! The TOML schema as serde reads it: raw values with their places in the file.
//! Every table denies unknown keys. No checking here beyond types; `validate.rs`
//! turns these into typed values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Balance, CertFailure, Forwarding, LogFormat, OnDown, ProxyVersion, ReadyWhen};

pub(super) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) defaults: Option<RawDefaults>,
    #[serde(default)]
    pub(super) resolver: Option<RawResolver>,
    #[serde(default)]
    pub(super) admin: Option<S<RawAdmin>>,
    #[serde(default)]
    pub(super) log: Option<RawLog>,
    #[serde(default)]
    pub(super) listener: Vec<S<RawListener>>,
    #[serde(default)]
    pub(super) backend: BTreeMap<S<String>, S<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) connect_timeout: Option<S<String>>,
    pub(super) idle_timeout: Option<S<String>>,
    pub(super) retries: Option<S<i64>>,
    pub(super) drain_timeout: Option<S<String>>,
    pub(super) keepalive: Option<S<String>>,
    pub(super) user_timeout: Option<S<String>>,
    pub(super) forwarding: Option<Forwarding>,
    pub(super) max_connections: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResolver {
    #[serde(default)]
    pub(super) nameservers: Vec<S<String>>,
    pub(super) timeout: Option<S<String>>,
    pub(super) min_refresh: Option<S<String>>,
    pub(super) max_refresh: Option<S<String>>,
    pub(super) retry: Option<S<String>>,
    pub(super) hosts_file: Option<PathBuf>,
}

/// A string, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMore {
    One(String),
    More(Vec<String>),
}

impl OneOrMore {
    pub(super) fn as_slice(&self) -> &[String] {
        match self {
            OneOrMore::One(s) => std::slice::from_ref(s),
            OneOrMore::More(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: S<OneOrMore>,
    pub(super) token_file: Option<PathBuf>,
    // Who may connect, and how many connections one client may hold.
    #[serde(default)]
    pub(super) allow: Vec<S<String>>,
    #[serde(default)]
    pub(super) deny: Vec<S<String>>,
    pub(super) source_limit: Option<S<RawSourceLimit>>,
    pub(super) ready_when: Option<ReadyWhen>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<LogFormat>,
    pub(super) level: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: S<String>,
    /// One address or a list; spans inside an untagged enum are lost, so the value is
    /// taken apart by hand.
    pub(super) bind: S<toml::Value>,
    pub(super) backend: S<String>,
    pub(super) max_connections: Option<S<i64>>,
    pub(super) freebind: Option<bool>,
    // Who may connect, and how many connections one client may hold.
    #[serde(default)]
    pub(super) allow: Vec<S<String>>,
    #[serde(default)]
    pub(super) deny: Vec<S<String>>,
    pub(super) source_limit: Option<S<RawSourceLimit>>,
    pub(super) accept_proxy: Option<S<bool>>,
    pub(super) trusted: Option<S<Vec<S<String>>>>,
    pub(super) proxy_timeout: Option<S<String>>,
    pub(super) routes: Option<S<Vec<S<RawRoute>>>>,
    pub(super) inspect_timeout: Option<S<String>>,
}

/// `source_limit = { connections = 50, rate = "100/10s", sources = 65536 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSourceLimit {
    pub(super) connections: Option<S<i64>>,
    pub(super) rate: Option<S<String>>,
    pub(super) sources: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) sni: S<Vec<S<String>>>,
    pub(super) backend: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    #[serde(default)]
    pub(super) balance: Balance,
    pub(super) servers: S<Vec<S<toml::Value>>>,
    pub(super) health: Option<S<RawHealth>>,
    #[serde(default)]
    pub(super) on_down: OnDown,
    pub(super) observe: Option<bool>,
    pub(super) error_limit: Option<S<i64>>,
    pub(super) slow_start: Option<S<String>>,
    pub(super) connect_timeout: Option<S<String>>,
    pub(super) retries: Option<S<i64>>,
    pub(super) user_timeout: Option<S<String>>,
    pub(super) send_proxy: Option<ProxyVersion>,
    // Per-server limits and the backend's queue.
    /// Each server's limit, unless the server sets its own.
    pub(super) max_connections: Option<S<i64>>,
    pub(super) max_queue: Option<S<i64>>,
    pub(super) queue_timeout: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTable {
    pub(super) name: Option<String>,
    pub(super) address: String,
    pub(super) weight: Option<i64>,
    #[serde(default)]
    pub(super) backup: bool,
    pub(super) max_connections: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) check: Option<S<String>>,
    pub(super) interval: Option<S<String>>,
    pub(super) timeout: Option<S<String>>,
    pub(super) rise: Option<S<i64>>,
    pub(super) fall: Option<S<i64>>,
    pub(super) port: Option<S<i64>>,
    pub(super) path: Option<S<String>>,
    pub(super) host: Option<S<String>>,
    pub(super) expect: Option<S<Expect>>,
    pub(super) body: Option<S<String>>,
    /// One name or a list, taken apart by hand like `bind`.
    pub(super) sni: Option<S<toml::Value>>,
    pub(super) ca: Option<S<PathBuf>>,
    pub(super) cert: Option<S<PathBuf>>,
    pub(super) key: Option<S<PathBuf>>,
    pub(super) send_proxy: Option<S<bool>>,
    pub(super) expect_issuer: Option<S<String>>,
    pub(super) cert_failure: Option<S<CertFailure>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Expect {
    One(i64),
    Many(Vec<i64>),
}
