//! `gatehouse ctl`: server status as a table, and drain, disable, enable through the
//! admin API.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use super::{admin_request, admin_target, CtlAction};

pub fn ctl(config: &Path, admin: Option<SocketAddr>, token_file: Option<&Path>, action: &CtlAction) -> ExitCode {
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
