//! The command line: run the proxy, check a config, ask a running gatehouse to reload,
//! and control servers at runtime (`ctl`). Wiring only; the work is in the library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use gatehouse::app::App;
use gatehouse::config::{Config, LogFormat, DEFAULT_PATH};
use gatehouse::systemd;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An L4 (TCP) load balancer: zero-copy forwarding, health checks, hot reload"
)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = DEFAULT_PATH, env = "GATEHOUSE_CONFIG")]
    config: PathBuf,
    /// Log filter: error, warn, info, debug, trace, or directives like "gatehouse=debug"
    /// (RUST_LOG works too; the flag wins, then RUST_LOG, then [log] level).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format (default: [log] format, else text).
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
    Import(gatehouse::import::ImportArgs),
}

#[derive(Subcommand)]
enum CtlAction {
    /// Print every server and its state as a table.
    Status,
    /// Stop sending new connections to BACKEND/SERVER; established ones continue.
    Drain { server: String },
    /// Maintenance: no new connections and no health checks for BACKEND/SERVER.
    Disable { server: String },
    /// Return BACKEND/SERVER to normal service.
    Enable { server: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::Reload { admin }) => reload(&cli.config, admin),
        Some(Command::Ctl {
            admin,
            ref token_file,
            ref action,
        }) => ctl(&cli.config, admin, token_file.as_deref(), action),
        Some(Command::Import(ref args)) => gatehouse::import::run_cli(args),
        None | Some(Command::Run) => run(&cli),
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!("{}: configuration is valid\n", path.display());
            print!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    // The config's [log] table, if the file reads; errors there are reported by start.
    let from_file = Config::load(&cli.config).ok().map(|c| c.log);
    let filter = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .or_else(|| from_file.as_ref().and_then(|l| l.level.clone()))
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("gatehouse: invalid log filter {filter:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let format = match cli.log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Text) => LogFormat::Text,
        None => from_file.and_then(|l| l.format).unwrap_or_default(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        // journald adds its own timestamps; ANSI colours only on a terminal.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_target(false)
            .init(),
    }
}

fn run(cli: &Cli) -> ExitCode {
    init_logging(cli);
    let inherited = systemd::inherited_sockets();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Before READY=1: a SIGTERM or SIGHUP sent right after it must find its handler,
        // not the default action, which ends the process.
        let signals = install_signals();
        let app = match App::start(&cli.config, inherited).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                eprintln!("gatehouse: {e}");
                return ExitCode::FAILURE;
            }
        };
        let bound: Vec<String> = app.local_addrs().iter().map(|(n, a)| format!("{n}={a}")).collect();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "gatehouse ready: {}",
            bound.join(" ")
        );
        systemd::notify(&format!(
            "READY=1\nSTATUS=serving; configuration generation 1 loaded\nX_GATEHOUSE_LISTENERS={}",
            bound.join(",")
        ));
        systemd::spawn_watchdog();
        wait_for_signals(&app, signals).await;
        app.shutdown().await;
        ExitCode::SUCCESS
    })
}

type Signals = [std::io::Result<tokio::signal::unix::Signal>; 3];

/// SIGHUP, SIGTERM, SIGINT handlers; signals that arrive from here on are kept.
fn install_signals() -> Signals {
    use tokio::signal::unix::{signal, SignalKind};
    [
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ]
}

/// Reloads on SIGHUP until SIGTERM or SIGINT arrives.
async fn wait_for_signals(app: &std::sync::Arc<App>, signals: Signals) {
    let [Ok(mut hup), Ok(mut term), Ok(mut int)] = signals else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", app.config_path.display());
                let _ = app.reload().await;
            }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return; }
        }
    }
}

/// Where the admin API is, and the token to use with it.
fn admin_target(
    config: &Path,
    admin: Option<SocketAddr>,
    token_file: Option<&Path>,
) -> Result<(SocketAddr, Option<String>), String> {
    let cfg = Config::load(config).ok();
    let addr = admin
        .or_else(|| cfg.as_ref().and_then(|c| c.admin.as_ref()).map(|a| a.listen))
        .ok_or_else(|| {
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
fn admin_request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
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

fn reload(config: &Path, admin: Option<SocketAddr>) -> ExitCode {
    match admin_target(config, admin, None) {
        Ok((addr, token)) => match admin_request(addr, "POST", "/api/v1/reload", token.as_deref()) {
            Ok((200, body)) => {
                println!("reloaded: {}", body.trim());
                ExitCode::SUCCESS
            }
            Ok((_, body)) => {
                eprintln!("reload failed: {}", body.trim());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        // No admin API: signal the gatehouse running this config.
        Err(_) => match signal_running(config) {
            Ok(pids) => {
                println!("sent SIGHUP to gatehouse (pid {pids}); see its log for the result");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Sends SIGHUP to gatehouse processes running with `config`.
fn signal_running(config: &Path) -> Result<String, String> {
    let want = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let me = std::process::id();
    let mut sent = Vec::new();
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("cannot list processes: {e}"))?;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_gatehouse = args.first().is_some_and(|a| a.ends_with(b"gatehouse"));
        let subcommand = args.iter().skip(1).any(|a| matches!(*a, b"check" | b"reload" | b"ctl"));
        if !is_gatehouse || subcommand {
            continue;
        }
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        let config_arg = args
            .windows(2)
            .find(|w| w[0] == b"--config" || w[0] == b"-c")
            .map(|w| PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        let theirs = std::fs::canonicalize(cwd.join(&config_arg)).unwrap_or(config_arg);
        if theirs == want {
            // SAFETY: kill with a valid signal number on a pid we read from /proc.
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } == 0 {
                sent.push(pid.to_string());
            }
        }
    }
    if sent.is_empty() {
        Err(format!(
            "no running gatehouse with --config {} found, and no admin API to ask",
            config.display()
        ))
    } else {
        Ok(sent.join(", "))
    }
}

fn ctl(config: &Path, admin: Option<SocketAddr>, token_file: Option<&Path>, action: &CtlAction) -> ExitCode {
    let (addr, token) = match admin_target(config, admin, token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (verb, target) = match action {
        CtlAction::Status => return ctl_status(addr, token.as_deref()),
        CtlAction::Drain { server } => ("drain", server),
        CtlAction::Disable { server } => ("disable", server),
        CtlAction::Enable { server } => ("enable", server),
    };
    let Some((backend, server)) = target.split_once('/') else {
        eprintln!("name the server as BACKEND/SERVER, e.g. control-plane/arkveld");
        return ExitCode::FAILURE;
    };
    match admin_request(
        addr,
        "POST",
        &format!("/api/v1/servers/{backend}/{server}/{verb}"),
        token.as_deref(),
    ) {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let changed = v["changed"].as_bool().unwrap_or(false);
            println!(
                "{backend}/{server}: {}{}",
                v["state"].as_str().unwrap_or(verb),
                if changed { "" } else { " (unchanged)" }
            );
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            eprintln!(
                "{verb} {target}: {} (HTTP {status})",
                v["error"].as_str().unwrap_or(body.trim())
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn ctl_status(addr: SocketAddr, token: Option<&str>) -> ExitCode {
    let body = match admin_request(addr, "GET", "/api/v1/status", token) {
        Ok((200, body)) => body,
        Ok((status, body)) => {
            eprintln!("status: HTTP {status}: {}", body.trim());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("status: not JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = vec![[
        "BACKEND",
        "SERVER",
        "ADDRESS",
        "STATE",
        "WEIGHT",
        "ACTIVE",
        "TOTAL",
        "LAST CHECK",
    ]
    .map(String::from)
    .to_vec()];
    for b in v["backends"].as_array().into_iter().flatten() {
        for s in b["servers"].as_array().into_iter().flatten() {
            let weight = format!(
                "{}{}",
                s["weight"],
                if s["backup"].as_bool() == Some(true) {
                    " backup"
                } else {
                    ""
                }
            );
            rows.push(vec![
                b["name"].as_str().unwrap_or_default().to_string(),
                s["name"].as_str().unwrap_or_default().to_string(),
                s["address"].as_str().unwrap_or_default().to_string(),
                s["state"].as_str().unwrap_or_default().to_uppercase(),
                weight,
                s["active"].to_string(),
                s["connections"].to_string(),
                s["check"]["last_result"].as_str().unwrap_or("-").to_string(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    ExitCode::SUCCESS
}
