//! The `global` and `resolvers` sections: what they say for `[defaults]`, `[admin]`
//! and `[resolver]`, and what the proxy sections need from `global` (the process's
//! connection ceiling, the base directories of certificate paths).

use std::time::Duration;

use super::emit::{self, Key, Output};
use super::lexer::Line;
use super::model::{self, fmt_duration, Section};
use super::report::{Report, Verdict};
use super::settings::At;

/// What `global` says that the rest needs.
#[derive(Default)]
pub struct Global {
    pub maxconn: Option<At<u64>>,
    pub hard_stop_after: Option<At<Duration>>,
    pub ca_base: Option<String>,
    pub crt_base: Option<String>,
}

/// Reads one line of the `global` section (conditionals aside, which the caller
/// reports) into `g` or `out`, and reports it.
pub fn apply(line: &Line, g: &mut Global, out: &mut Output, report: &mut Report) {
    let w: Vec<&str> = line.words.iter().map(String::as_str).collect();
    let (verdict, note): (Verdict, String) = match w.as_slice() {
        ["log", "/dev/log", ..] => (
            Verdict::Translated,
            "gatehouse logs to stdout, which journald takes, as /dev/log reaches journald".into(),
        ),
        ["log", ..] => (
            Verdict::Approximated,
            "gatehouse logs to stdout (journald takes it), not to a syslog address".into(),
        ),
        ["maxconn", n] => match n.parse::<u64>() {
            Ok(n) if !(1..=10_000_000).contains(&n) => (
                Verdict::Dropped,
                "gatehouse's max_connections is 1 to 10,000,000; the ceiling stays the one the open-file limit allows"
                    .into(),
            ),
            Ok(n) => {
                g.maxconn = Some(At {
                    value: n,
                    line: line.number,
                });
                (
                    Verdict::Translated,
                    "[defaults] max_connections: the connection ceiling of the process; at it accepting pauses, \
                     as in HAProxy (the open-file limit, LimitNOFILE, must allow it)"
                        .into(),
                )
            }
            Err(e) => (Verdict::Dropped, format!("{e}")),
        },
        ["hard-stop-after", t] => match model::duration(t) {
            Ok(d) => {
                g.hard_stop_after = Some(At {
                    value: d,
                    line: line.number,
                });
                (Verdict::Translated, "drain_timeout".into())
            }
            Err(e) => (Verdict::Dropped, e),
        },
        ["stats", "socket", ..] => {
            out.admin.set(
                Key::new("listen", emit::string("127.0.0.1:8405"), vec![line.number]).remark(
                    "The admin listener replaces the stats socket: `gatehouse ctl status|drain|disable|enable`\n\
                     and /metrics. On loopback, state changes need no token.",
                ),
            );
            (
                Verdict::Approximated,
                "[admin] listen = \"127.0.0.1:8405\": the admin HTTP listener (gatehouse ctl) replaces the stats socket"
                    .into(),
            )
        }
        ["stats", ..] => (Verdict::Approximated, "the admin listener has its own timeouts".into()),
        ["ca-base", p] => {
            g.ca_base = Some(p.to_string());
            (
                Verdict::Translated,
                "relative ca-file paths below are read from here".into(),
            )
        }
        ["crt-base", p] => {
            g.crt_base = Some(p.to_string());
            (
                Verdict::Translated,
                "relative crt paths below are read from here".into(),
            )
        }
        ["daemon" | "master-worker", ..] => (
            Verdict::Translated,
            "systemd runs gatehouse (deploy/gatehouse.service, Type=notify); it does not fork".into(),
        ),
        ["user" | "group" | "uid" | "gid" | "chroot" | "pidfile", ..] => (
            Verdict::Approximated,
            "the systemd unit runs gatehouse as its own user, sandboxed (deploy/gatehouse.service)".into(),
        ),
        ["nbthread" | "nbproc" | "cpu-map", ..] => (
            Verdict::Approximated,
            "gatehouse runs one event loop per core; it has no thread setting".into(),
        ),
        [k, ..] if k.starts_with("ssl-default-") || k.starts_with("tune.ssl") || *k == "ssl-server-verify" => (
            Verdict::Dropped,
            "gatehouse terminates no TLS and originates TLS only in health checks".into(),
        ),
        [k, ..] => (Verdict::Dropped, format!("`{k}` has no equivalent in gatehouse")),
        [] => return,
    };
    report.note(line.number, &line.text, verdict, note);
}

/// A `resolvers` section into `[resolver]`; `extra` for the second and later, whose
/// nameservers join the first's.
pub fn resolvers(section: &Section, extra: bool, out: &mut Output, report: &mut Report) {
    let h = &section.header;
    if extra {
        report.note(
            h.number,
            &h.text,
            Verdict::Approximated,
            "gatehouse has one resolver: nameservers of every resolvers section are asked",
        );
    } else {
        report.note(h.number, &h.text, Verdict::Translated, "[resolver]");
    }
    let mut nameservers: Vec<String> = out
        .resolver
        .get("nameservers")
        .map(|k| {
            k.value
                .trim_matches(['[', ']'])
                .split(", ")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    nameservers.retain(|n| !n.is_empty());
    let mut lines: Vec<usize> = out
        .resolver
        .get("nameservers")
        .map(|k| k.lines.clone())
        .unwrap_or_default();
    for line in &section.body {
        let w: Vec<&str> = line.words.iter().map(String::as_str).collect();
        let (verdict, note) = match w.as_slice() {
            ["nameserver", _, addr] => {
                let addr = addr.strip_prefix("udp@").or(addr.strip_prefix("tcp@")).unwrap_or(addr);
                nameservers.push(emit::string(addr));
                lines.push(line.number);
                (Verdict::Translated, "nameservers")
            }
            ["parse-resolv-conf"] => (
                Verdict::Translated,
                "gatehouse reads /etc/resolv.conf when no nameserver is given",
            ),
            ["timeout", "retry", t] => match model::duration(t) {
                Ok(d) => {
                    out.resolver
                        .set(Key::new("timeout", emit::string(&fmt_duration(d)), vec![line.number]));
                    (
                        Verdict::Approximated,
                        "timeout (per query; gatehouse asks over UDP, then TCP)",
                    )
                }
                Err(_) => (Verdict::Dropped, "not a time"),
            },
            ["timeout", "resolve", ..] | ["hold", ..] | ["resolve_retries", ..] => (
                Verdict::Approximated,
                "gatehouse re-resolves as the records' TTL ends (min_refresh..max_refresh) and keeps a failing \
                 name's last addresses",
            ),
            ["accepted_payload_size", ..] => (Verdict::Approximated, "gatehouse's resolver sizes its own replies"),
            _ => (Verdict::Dropped, "no equivalent in gatehouse's [resolver]"),
        };
        report.note(line.number, &line.text, verdict, note);
    }
    if !nameservers.is_empty() {
        out.resolver
            .set(Key::new("nameservers", format!("[{}]", nameservers.join(", ")), lines));
    }
}
