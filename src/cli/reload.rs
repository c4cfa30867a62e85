//! `gatehouse reload`: ask the running gatehouse to reload, through its admin API, or
//! with SIGHUP to the process running the same config when there is no admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gatehouse::config::DEFAULT_PATH;

use super::{admin_request, admin_target};

pub fn reload(config: &Path, admin: Option<SocketAddr>) -> ExitCode {
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
