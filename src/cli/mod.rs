//! The command line: its arguments (clap), and the admin API client that `reload` and
//! `ctl` share. One file per subcommand: `run`, `check`, `reload`, `ctl`, `import`; `main.rs` only dispatches. Wiring only; the work is in the library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use gatehouse::config::{Config, DEFAULT_PATH};

pub mod check;
pub mod ctl;
pub mod import;
pub mod journal;
pub mod log;
pub mod reload;
pub mod run;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An L4 (TCP) load balancer: zero-copy forwarding, health checks, hot reload"
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = DEFAULT_PATH, env = "GATEHOUSE_CONFIG")]
    pub config: PathBuf,
    /// Log filter: error, warn, info, debug, trace, or directives like "gatehouse=debug"
    /// (RUST_LOG works too; the flag wins, then RUST_LOG, then [log] level).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log format (default: [log] format, else text).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<Format>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and print a summary; exit 1 if it is not valid.
    Check,
    /// Ask the running gatehouse to reload its configuration (admin API, else SIGHUP).
    Reload {
        /// The admin API address (default: [admin] listen of the config).
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Control servers of the running gatehouse through its admin API.
    Ctl {
        /// The admin API address (default: [admin] listen of the config).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// A file holding the admin token (default: [admin] token_file of the config).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Translate an HAProxy configuration: gatehouse TOML on stdout, a report on stderr.
    Import(import::ImportArgs),
}

#[derive(Subcommand)]
pub enum CtlAction {
    /// Print every server and its state as a table.
    Status,
    /// Stop sending new connections to BACKEND/SERVER while another server of its backend
    /// can take them; established ones continue.
    Drain { server: String },
    /// Maintenance: no new connections and no health checks for BACKEND/SERVER.
    Disable { server: String },
    /// Return BACKEND/SERVER to normal service.
    Enable { server: String },
}

/// Where the admin API is, and the token to use with it.
pub fn admin_target(
    config: &Path,
    admin: Option<SocketAddr>,
    token_file: Option<&Path>,
) -> Result<(SocketAddr, Option<String>), String> {
    let cfg = Config::load(config).ok();
    // Loopback if the admin listener listens there (no token needed), else its first address.
    let configured = cfg.as_ref().and_then(|c| c.admin.as_ref()).and_then(|a| {
        let local = a
            .listen
            .iter()
            .find(|l| l.ip().is_loopback() || l.ip().is_unspecified());
        local.or(a.listen.first()).copied()
    });
    let addr = admin.or(configured).ok_or_else(|| {
        format!(
            "no admin API: {} has no [admin] table and --admin was not given",
            config.display()
        )
    })?;
    let addr = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    let token_path = token_file.map(Path::to_path_buf).or_else(|| {
        cfg.as_ref()
            .and_then(|c| c.admin.as_ref())
            .and_then(|a| a.token_file.clone())
    });
    let token = match token_path {
        Some(p) => Some(
            std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read token file {}: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    Ok((addr, token))
}

/// One request to the admin API; returns (status, body).
pub fn admin_request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "malformed response from the admin API".to_string())?;
    Ok((status, body.to_string()))
}
