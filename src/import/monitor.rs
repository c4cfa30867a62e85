//! `monitor-uri` frontends (kubespray's `/healthz` on 8081, which kubelet's static-pod
//! check asks): an HTTP answer that says the balancer runs. gatehouse's admin listener
//! answers `/healthz` with 200 while the process runs, so such a frontend becomes
//! `[admin] listen` on its address, reported as an approximation with what changes: the
//! path when it was not `/healthz`, the other routes the admin listener serves there,
//! and `monitor fail` conditions, which are not carried over.
//!
//! Owns reading such a section and choosing the admin address; the rest of an HTTP
//! section is out of scope (`translate`).

use super::emit::{self, Key, Output};
use super::model::bind_addrs;
use super::model::Section;
use super::report::{Report, Verdict};
use super::settings::At;

/// The path gatehouse answers.
const HEALTHZ: &str = "/healthz";

/// A frontend (or listen) whose point is `monitor-uri`.
#[derive(Debug, Clone)]
pub struct Monitor {
    header: usize,
    header_text: String,
    path: At<String>,
    path_text: String,
    /// The first address it binds, as gatehouse writes it, and the line.
    addr: Option<At<String>>,
}

/// Whether `section` answers a `monitor-uri`: then [`read`] takes it.
pub fn is_monitor(section: &Section) -> bool {
    section.body.iter().any(|l| l.keyword() == "monitor-uri")
}

/// Reads a `monitor-uri` section, reporting every line.
pub fn read(section: &Section, report: &mut Report) -> Option<Monitor> {
    let mut path: Option<At<String>> = None;
    let mut path_text = String::new();
    let mut addr: Option<At<String>> = None;
    let mut tls = false;
    for line in &section.body {
        let w: Vec<&str> = line.words.iter().map(String::as_str).collect();
        let (verdict, note): (Verdict, String) = match w.as_slice() {
            ["monitor-uri", p] => {
                path = Some(At {
                    value: p.to_string(),
                    line: line.number,
                });
                path_text = line.text.clone();
                continue; // reported with the address, below
            }
            ["bind", word, opts @ ..] => {
                tls |= opts.iter().any(|o| matches!(*o, "ssl" | "crt" | "crt-list"));
                match bind_addrs(word) {
                    Ok(addrs) if addr.is_none() && !addrs.is_empty() => {
                        let a = std::net::SocketAddr::new(addrs[0].ip, addrs[0].port).to_string();
                        addr = Some(At {
                            value: a.clone(),
                            line: line.number,
                        });
                        let more = match addrs.len() {
                            1 => String::new(),
                            n => format!("; the {} other addresses are not: it has one", n - 1),
                        };
                        (
                            Verdict::Translated,
                            format!("[admin] listen = {}{more}", emit::string(&a)),
                        )
                    }
                    Ok(_) => (
                        Verdict::Dropped,
                        "the admin listener has one address: the first bind's".into(),
                    ),
                    Err(e) => (Verdict::Dropped, e),
                }
            }
            ["mode", "http"] => (Verdict::Translated, "the admin listener speaks HTTP".into()),
            ["monitor", ..] | ["monitor-net", ..] => (
                Verdict::Dropped,
                "gatehouse's /healthz answers 200 while the process runs; conditions (`monitor fail`) are not \
                 carried over (/readyz answers 503 when no server is up, docs/config.md)"
                    .into(),
            ),
            ["option", "httplog" | "dontlognull" | "http-server-close" | "forwardfor", ..]
            | ["log", ..]
            | ["timeout", ..]
            | ["maxconn", ..] => (Verdict::Translated, "not needed for /healthz".into()),
            [k, ..] => (
                Verdict::Dropped,
                format!("`{k}` in a monitor-uri frontend: only its /healthz is carried over (to the admin listener)"),
            ),
            [] => continue,
        };
        report.note(line.number, &line.text, verdict, note);
    }
    let path = path?;
    if tls {
        let why = "a monitor-uri frontend over TLS: the admin listener serves plain HTTP; not carried over";
        report.note(section.header.number, &section.header.text, Verdict::Dropped, why);
        report.note(path.line, "", Verdict::Dropped, why);
        return None;
    }
    Some(Monitor {
        header: section.header.number,
        header_text: section.header.text.clone(),
        path,
        path_text,
        addr,
    })
}

/// Puts the first monitor on the admin listener (over a `stats socket`'s loopback
/// address), unless a listener binds its address; reports what changes.
pub fn apply(monitors: &[Monitor], out: &mut Output, report: &mut Report) {
    let mut chosen: Option<&Monitor> = None;
    for m in monitors {
        let why = match (&m.addr, chosen) {
            (None, _) => Some("no bind: no address for the admin listener".to_string()),
            (Some(_), Some(first)) => Some(format!(
                "gatehouse has one admin listener, and the monitor-uri frontend on line {} has it",
                first.header
            )),
            (Some(a), None) if bound_by_listener(out, &a.value) => Some(format!(
                "{} is bound by a listener: not the admin listener's too",
                a.value
            )),
            (Some(_), None) => None,
        };
        match why {
            Some(why) => {
                report.note(m.header, &m.header_text, Verdict::Dropped, why.clone());
                report.note(m.path.line, &m.path_text, Verdict::Dropped, why.clone());
                if let Some(a) = &m.addr {
                    report.note(a.line, "", Verdict::Dropped, why);
                }
            }
            None => chosen = Some(m),
        }
    }
    let Some(m) = chosen else { return };
    let Some(addr) = &m.addr else { return };
    if let Some(old) = out.admin.get("listen") {
        for line in old.lines.clone() {
            report.note(
                line,
                "",
                Verdict::Approximated,
                format!(
                    "the admin listener is on {} instead (the monitor-uri frontend on line {})",
                    addr.value, m.header
                ),
            );
        }
    }
    let path_note = match m.path.value.as_str() {
        HEALTHZ => format!("answered by the admin listener's {HEALTHZ} on {}", addr.value),
        other => format!(
            "the path changes: {other} is now {HEALTHZ}, on {}; point what asks it (kubelet, a balancer in front) \
             at {HEALTHZ}",
            addr.value
        ),
    };
    report.note(m.path.line, &m.path_text, Verdict::Approximated, path_note);
    let mut note = format!(
        "[admin] listen = {}: its {HEALTHZ} answers 200 while gatehouse runs (HAProxy's monitor-uri: while \
         HAProxy runs); the admin listener also serves /readyz, /metrics, /api/v1/status and the status page \
         there (open to read; state changes from loopback only, unless [admin] token_file is set)",
        emit::string(&addr.value)
    );
    if addr.value.starts_with("[::]") {
        note.push_str("; HAProxy's [::] takes IPv4 clients too, the admin listener's does not");
    }
    report.note(m.header, &m.header_text, Verdict::Approximated, note);
    out.admin.set(
        Key::new(
            "listen",
            emit::string(&addr.value),
            vec![m.header, addr.line, m.path.line],
        )
        .remark(format!(
            "The monitor-uri frontend: gatehouse answers {HEALTHZ} here (200 while it runs), and serves\n\
             /readyz, /metrics and the status page too."
        )),
    );
}

fn bound_by_listener(out: &Output, addr: &str) -> bool {
    let quoted = emit::string(addr);
    out.listeners
        .iter()
        .filter_map(|l| l.table.get("bind"))
        .any(|b| b.value.contains(&quoted))
}
