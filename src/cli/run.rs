//! `gatehouse run` (the default): logging, the Tokio runtime, signals (SIGHUP reloads,
//! SIGTERM and SIGINT drain and stop), and the systemd handshake around the app.

use std::process::ExitCode;

use gatehouse::app::App;
use gatehouse::systemd;

use super::Cli;

pub fn run(cli: &Cli) -> ExitCode {
    super::log::init(cli);
    let inherited = systemd::inherited_sockets();
    // One event loop per accept socket of an address: one per core, at most 4.
    if let Err(e) = gatehouse::cores::start(gatehouse::listener::accept_sockets(), systemd::heartbeat()) {
        eprintln!("gatehouse: cannot start the data path threads: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        // Before READY=1: a SIGTERM or SIGHUP sent right after it must find its handler,
        // not the default action, which ends the process.
        let signals = install_signals();
        gatehouse::cores::watch_main();
        let app = match App::start(&cli.config, inherited, gatehouse::admin::start).await {
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
        gatehouse::app::logs_written().await;
        systemd::notify(&format!(
            "READY=1\nSTATUS=serving; configuration generation 1 loaded\nX_GATEHOUSE_LISTENERS={}",
            bound.join(",")
        ));
        systemd::spawn_watchdog(gatehouse::cores::stalled);
        wait_for_signals(&app, signals).await;
        app.shutdown().await;
        ExitCode::SUCCESS
    });
    // The close lines of the last connections, unless the sink is stalled.
    if !gatehouse::log_queue::flush(std::time::Duration::from_secs(2)) {
        eprintln!("gatehouse: the log output stalled; the last log lines are lost");
    }
    code
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
