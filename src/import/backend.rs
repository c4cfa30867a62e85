//! One HAProxy backend (or the backend half of a `listen`) made into a gatehouse
//! `[backend.NAME]`: its servers, the one health check gatehouse runs for all of them,
//! and the per-backend keys (balance, slow start, on_down, passive health).
//!
//! HAProxy sets check options per server; gatehouse per backend. The first checked
//! server sets the check, and every server that differs from it is reported.

use std::path::Path;
use std::time::Duration;

use super::emit::{self, Key};
use super::lexer::Line;
use super::model::{fmt_duration, gatehouse_name, ServerAddr};
use super::report::{Report, Verdict};
use super::server_opts::ServerOpts;
use super::settings::{At, Balance, Check, Expect, Settings};

/// A `server` line, read.
#[derive(Debug, Clone)]
pub struct ServerLine {
    pub line: Line,
    pub name: String,
    pub addr: ServerAddr,
    /// With `default-server` already folded in.
    pub opts: ServerOpts,
}

/// What the import knows beside the backend itself.
pub struct Context<'a> {
    pub ca_base: Option<&'a str>,
    pub crt_base: Option<&'a str>,
    /// The one port every listener of this backend binds, for servers without a port.
    pub listener_port: Option<u16>,
}

fn based(base: Option<&str>, path: &str) -> String {
    match base {
        Some(b) if !path.starts_with('/') => Path::new(b).join(path).display().to_string(),
        _ => path.to_string(),
    }
}

/// Builds the backend, named `gname` in gatehouse; `None` (reported) when no server is
/// usable.
pub fn build(
    (name, gname): (&str, &str),
    header: &Line,
    s: &Settings,
    servers: &[ServerLine],
    ctx: &Context,
    report: &mut Report,
) -> Option<emit::Backend> {
    let gname = gname.to_string();
    let mut b = emit::Backend {
        name: gname.clone(),
        lines: vec![header.number],
        table: emit::Table::default(),
        servers: Vec::new(),
        health: Vec::new(),
        health_lines: Vec::new(),
    };
    balance(s, &mut b, report);

    let mut used_names: Vec<String> = Vec::new();
    let mut live: Vec<&ServerLine> = Vec::new();
    for srv in servers {
        let Some((server, usable)) = server(srv, ctx, &mut used_names, report) else {
            continue;
        };
        if usable {
            live.push(srv);
        }
        b.servers.push(server);
    }
    if live.is_empty() {
        report.note(
            header.number,
            &header.text,
            Verdict::Dropped,
            format!("backend {name}: no server gatehouse can use, so it is not imported"),
        );
        return None;
    }
    report.note(
        header.number,
        &header.text,
        Verdict::Translated,
        format!("[backend.{}]", emit::key(&gname)),
    );
    if backups_beyond_first(s, &live) {
        all_backups(&live, report);
    }
    if gname != name {
        report.note(
            header.number,
            &header.text,
            Verdict::Approximated,
            format!("named {gname:?}: {}", rename_reason(name, &gname)),
        );
    }
    health(s, &live, ctx, &mut b, report);
    per_server_keys(&live, &mut b, report);
    health_send_proxy(s, &live, &mut b, report);
    super::limits::limits(s, header, &live, &mut b, report);
    Some(b)
}

/// One server line as gatehouse's server, named apart from `used_names`, and whether
/// it is usable (not left out as a comment); `None` (reported) when it has no port.
fn server(
    srv: &ServerLine,
    ctx: &Context,
    used_names: &mut Vec<String>,
    report: &mut Report,
) -> Option<(emit::Server, bool)> {
    let say = |report: &mut Report, v: Verdict, note: String| report.note(srv.line.number, &srv.line.text, v, note);
    let o = &srv.opts;
    let Some(port) = srv.addr.port.or(ctx.listener_port) else {
        say(
            report,
            Verdict::Dropped,
            "no port: HAProxy connects to the port the client asked for, and this backend's listeners bind \
             more than one; give the server a port"
                .into(),
        );
        return None;
    };
    if let Some(surprise) = &srv.addr.surprise {
        say(report, Verdict::Approximated, surprise.clone());
    }
    if srv.addr.port.is_none() {
        say(
            report,
            Verdict::Approximated,
            format!("no port: HAProxy connects to the client's port; every listener of this backend binds {port}"),
        );
    }
    let sname = unique_name(&srv.name, srv.line.number, used_names);
    if sname != srv.name {
        say(
            report,
            Verdict::Approximated,
            format!("named {sname:?}: {}", rename_reason(&srv.name, &sname)),
        );
    }
    used_names.push(sname.clone());
    let mut fields = vec![
        ("name", emit::string(&sname)),
        ("address", emit::string(&format!("{}:{port}", srv.addr.host))),
    ];
    let weight = o.weight.as_ref().map_or(1, |w| w.value);
    if weight > 256 {
        say(
            report,
            Verdict::Approximated,
            format!("weight {weight} is above gatehouse's 256: 256"),
        );
    }
    if weight > 1 {
        fields.push(("weight", weight.min(256).to_string()));
    }
    if o.backup.as_ref().is_some_and(|b| b.value) {
        fields.push(("backup", "true".into()));
    }
    let commented = if weight == 0 {
        Some("weight 0: no balanced traffic in HAProxy; gatehouse weights are 1-256, so it is left out")
    } else if o.disabled.as_ref().is_some_and(|d| d.value) {
        Some("disabled in HAProxy: left out; add it back and run `gatehouse ctl disable BACKEND/SERVER`")
    } else {
        None
    };
    match commented {
        Some(why) => say(report, Verdict::Approximated, format!("left out (commented): {why}")),
        None => {
            say(report, Verdict::Translated, format!("server {sname:?}"));
            if srv.addr.is_name && o.resolvers.is_none() {
                say(
                    report,
                    Verdict::Approximated,
                    format!(
                        "HAProxy resolves {} once at start (no `resolvers`); gatehouse re-resolves it as its records expire",
                        srv.addr.host
                    ),
                );
            }
        }
    }
    let server = emit::Server {
        line: srv.line.number,
        fields,
        commented: commented.map(|c| c.split(':').next().unwrap_or(c).to_string()),
    };
    Some((server, commented.is_none()))
}

/// Reports the backups beyond the first, which HAProxy leaves idle and gatehouse
/// balances over.
fn all_backups(live: &[&ServerLine], report: &mut Report) {
    for srv in live
        .iter()
        .filter(|x| x.opts.backup.as_ref().is_some_and(|b| b.value))
        .skip(1)
    {
        report.note(
            srv.line.number,
            &srv.line.text,
            Verdict::Approximated,
            "HAProxy uses only the first backup (no `option allbackups`); gatehouse balances over all backups",
        );
    }
}

/// Why `name` became `renamed`: gatehouse's rules, another of the same kind having the
/// name, or both.
pub fn rename_reason(name: &str, renamed: &str) -> String {
    const RULES: &str = "gatehouse's names are 1-64 letters, digits, '-', '_' or '.'";
    match gatehouse_name(name) {
        Some(fixed) if fixed == renamed => RULES.to_string(),
        Some(fixed) => format!("{RULES}, and another has {fixed:?}"),
        None => "another of the same kind has that name in gatehouse".to_string(),
    }
}

/// `name` made a gatehouse name (see `gatehouse_name`) that `taken` does not hold yet:
/// on a clash, the line number is added.
pub fn unique_name(name: &str, line: usize, taken: &[String]) -> String {
    let mut n = gatehouse_name(name).unwrap_or_else(|| name.to_string());
    if taken.contains(&n) {
        let suffix = format!("-{line}");
        n.truncate(64 - suffix.len());
        n.push_str(&suffix);
    }
    n
}

fn backups_beyond_first(s: &Settings, live: &[&ServerLine]) -> bool {
    let all = s.allbackups.as_ref().is_some_and(|a| a.value);
    !all && live
        .iter()
        .filter(|x| x.opts.backup.as_ref().is_some_and(|b| b.value))
        .count()
        > 1
}

fn balance(s: &Settings, b: &mut emit::Backend, report: &mut Report) {
    let (value, lines) = match &s.balance {
        Some(At { value, line }) => (*value, vec![*line]),
        None => (Balance::RoundRobin, vec![]),
    };
    let name = match value {
        Balance::RoundRobin => "round-robin",
        Balance::LeastConn => "least-conn",
        Balance::Source => "source-hash",
        Balance::Random(_) => "random-two",
    };
    let mut key = Key::new("balance", emit::string(name), lines);
    if s.balance.is_none() {
        key = key.remark("HAProxy's default");
    }
    if let (Balance::Source, Some(line)) = (value, s.balance.as_ref().map(|b| b.line)) {
        if !s.hash_consistent.as_ref().is_some_and(|h| h.value) {
            report.note(
                line,
                "",
                Verdict::Approximated,
                "HAProxy's map-based source hash moves most clients when a server comes or goes; gatehouse's \
                 source-hash is consistent (as with `hash-type consistent`)",
            );
        } else if let Some(h) = &s.hash_consistent {
            key.lines.push(h.line);
        }
    }
    b.table.set(key);
}

/// The one health check of the backend, from its first checked server.
fn health(s: &Settings, live: &[&ServerLine], ctx: &Context, b: &mut emit::Backend, report: &mut Report) {
    let checked: Vec<&&ServerLine> = live
        .iter()
        .filter(|x| x.opts.check.as_ref().is_some_and(|c| c.value))
        .collect();
    let Some(first) = checked.first() else {
        b.health.push(("check", emit::string("none")));
        b.health_lines = live.iter().map(|x| x.line.number).collect();
        for x in live {
            report.note(
                x.line.number,
                &x.line.text,
                Verdict::Translated,
                "no `check`: health check = \"none\"",
            );
        }
        return;
    };
    for x in live.iter().filter(|x| !x.opts.check.as_ref().is_some_and(|c| c.value)) {
        report.note(
            x.line.number,
            &x.line.text,
            Verdict::Approximated,
            "no `check` here, but gatehouse checks every server of a backend",
        );
    }
    let o = &first.opts;
    let connect = s.check_connect.as_ref().map(|c| &c.value);
    let tls = o.check_ssl.as_ref().is_some_and(|c| c.value) || connect.is_some_and(|c| c.ssl);
    let check = s.check.as_ref().map_or(&Check::Connect, |c| &c.value);
    let kind = match (check, tls) {
        (Check::Connect, false) => "tcp",
        (Check::Connect | Check::SslHello, _) => "tls",
        (Check::Http { .. }, false) => "http",
        (Check::Http { .. }, true) => "https",
    };
    let inter = o.inter.as_ref().map_or(Duration::from_secs(2), |i| i.value);
    let mut h = vec![("check", emit::string(kind))];
    if let Check::Http { path, host } = check {
        http_keys(path, host.as_deref(), s.expect.as_ref().map(|e| &e.value), &mut h);
    }
    h.push(("interval", emit::string(&fmt_duration(inter))));
    let timeout = check_timeout(s, kind, inter, report);
    h.push(("timeout", emit::string(&fmt_duration(timeout))));
    h.push(("rise", o.rise.as_ref().map_or(2, |r| r.value).clamp(1, 100).to_string()));
    h.push(("fall", o.fall.as_ref().map_or(3, |r| r.value).clamp(1, 100).to_string()));
    if let Some(port) = o.port.as_ref().map(|p| p.value).or(connect.and_then(|c| c.port)) {
        h.push(("port", port.to_string()));
    }
    let mut lines = health_lines(first, s);
    if tls {
        tls_keys(
            o,
            connect.and_then(|c| c.sni.clone()),
            kind,
            ctx,
            &mut h,
            &mut lines,
            report,
        );
    }
    b.health = h;
    b.health_lines = lines;
    // Every other checked server must agree with the first.
    for x in checked.iter().skip(1) {
        differs_from(x, first, report);
    }
}

/// The keys of an http or https check: path, Host header, and the statuses or body it
/// expects.
fn http_keys(path: &str, host: Option<&str>, expect: Option<&Expect>, h: &mut Vec<(&'static str, String)>) {
    h.push(("path", emit::string(path)));
    if let Some(host) = host {
        h.push(("host", emit::string(host)));
    }
    match expect {
        Some(Expect::Status(codes)) if codes.len() == 1 => h.push(("expect", codes[0].to_string())),
        Some(Expect::Status(codes)) => {
            let list: Vec<String> = codes.iter().map(u16::to_string).collect();
            h.push(("expect", format!("[{}]", list.join(", "))));
        }
        Some(Expect::Body(body)) => h.push(("body", emit::string(body))),
        // HAProxy passes any 2xx or 3xx without `http-check expect`.
        None => {
            let all: Vec<String> = (200..400).map(|c: u16| c.to_string()).collect();
            h.push(("expect", format!("[{}]", all.join(", "))));
        }
    }
}

/// The health check's timeout, from `inter` and `timeout check`; the difference in
/// what each bounds is reported.
fn check_timeout(s: &Settings, kind: &str, inter: Duration, report: &mut Report) -> Duration {
    // HAProxy bounds a check by `inter`; with `timeout check`, the connect by
    // min(timeout connect, inter) and the reply by `timeout check`.
    let connect_bound = s.timeout_connect.as_ref().map_or(inter, |t| t.value.min(inter));
    let timeout = match (&s.timeout_check, kind) {
        (None, _) => inter,
        (Some(_), "tcp") => connect_bound,
        (Some(t), _) => connect_bound + t.value,
    };
    if let Some(t) = &s.timeout_check {
        report.note(
            t.line,
            "",
            Verdict::Approximated,
            format!(
                "health timeout = {}: HAProxy bounds the connect by min(timeout connect, inter) and the reply by \
                 `timeout check`; gatehouse bounds the whole check",
                fmt_duration(timeout)
            ),
        );
    }
    timeout
}

/// The lines that set the health check: the first checked server's and the section's.
fn health_lines(first: &ServerLine, s: &Settings) -> Vec<usize> {
    let o = &first.opts;
    let mut lines = vec![first.line.number];
    lines.extend(o.inter.as_ref().map(|i| i.line));
    for l in [
        s.check.as_ref().map(|c| c.line),
        s.check_connect.as_ref().map(|c| c.line),
        s.expect.as_ref().map(|c| c.line),
        s.timeout_check.as_ref().map(|c| c.line),
        o.rise.as_ref().map(|c| c.line),
        o.fall.as_ref().map(|c| c.line),
        o.port.as_ref().map(|c| c.line),
        o.check_ssl.as_ref().map(|c| c.line),
    ]
    .into_iter()
    .flatten()
    {
        lines.push(l);
    }
    lines
}

/// Reports the health options where a checked server `x` differs from the `first`,
/// whose options gatehouse's one check takes.
fn differs_from(x: &ServerLine, first: &ServerLine, report: &mut Report) {
    let o = &first.opts;
    let p = &x.opts;
    let same = |a: Option<String>, b: Option<String>| a == b;
    let v = |d: &Option<At<Duration>>| d.as_ref().map(|d| d.value.as_millis().to_string());
    let n = |d: &Option<At<u32>>| d.as_ref().map(|d| d.value.to_string());
    let differs: Vec<&str> = [
        ("inter", same(v(&p.inter), v(&o.inter))),
        ("rise", same(n(&p.rise), n(&o.rise))),
        ("fall", same(n(&p.fall), n(&o.fall))),
        (
            "port",
            p.port.as_ref().map(|a| a.value) == o.port.as_ref().map(|a| a.value),
        ),
        (
            "check-ssl",
            p.check_ssl.as_ref().map(|a| a.value) == o.check_ssl.as_ref().map(|a| a.value),
        ),
        (
            "sni",
            p.sni.as_ref().map(|a| &a.value) == o.sni.as_ref().map(|a| &a.value),
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(k, _)| k)
    .collect();
    if !differs.is_empty() {
        report.note(
            x.line.number,
            &x.line.text,
            Verdict::Approximated,
            format!(
                "gatehouse has one health check per backend: {} as on line {}",
                differs.join(", "),
                first.line.number
            ),
        );
    }
}

fn tls_keys(
    o: &ServerOpts,
    connect_sni: Option<String>,
    kind: &str,
    ctx: &Context,
    h: &mut Vec<(&'static str, String)>,
    lines: &mut Vec<usize>,
    report: &mut Report,
) {
    if let Some(sni) = o.sni.as_ref().map(|s| s.value.clone()).or(connect_sni) {
        h.push(("sni", emit::string(&sni)));
        lines.extend(o.sni.as_ref().map(|s| s.line));
    }
    let verify_none = o.verify_required.as_ref().is_some_and(|v| !v.value);
    match (&o.ca_file, verify_none) {
        (Some(ca), false) => {
            h.push(("ca", emit::string(&based(ctx.ca_base, &ca.value))));
            lines.push(ca.line);
        }
        (_, true) => {
            if let Some(v) = &o.verify_required {
                report.note(
                    v.line,
                    "",
                    Verdict::Translated,
                    "without `ca` gatehouse does not verify the certificate",
                );
            }
        }
        (None, false) => {
            if let Some(v) = o.check_ssl.as_ref() {
                report.note(
                    v.line,
                    "",
                    Verdict::Approximated,
                    "no ca-file: HAProxy refuses to verify without one; gatehouse's check does not verify the certificate",
                );
            }
        }
    }
    if let Some(crt) = &o.crt {
        if kind == "https" {
            let path = based(ctx.crt_base, &crt.value);
            h.push(("cert", emit::string(&path)));
            h.push(("key", emit::string(&path)));
            lines.push(crt.line);
            report.note(
                crt.line,
                "",
                Verdict::Translated,
                "health cert and key (both from the one PEM file)",
            );
        } else {
            report.note(
                crt.line,
                "",
                Verdict::Dropped,
                "`crt`: gatehouse presents a client certificate on https checks only",
            );
        }
    }
}

/// Keys HAProxy sets per server and gatehouse per backend: slow start, on_down,
/// passive health, the PROXY header and TCP_USER_TIMEOUT towards the servers.
fn per_server_keys(live: &[&ServerLine], b: &mut emit::Backend, report: &mut Report) {
    type Pick<'a> = &'a dyn Fn(&ServerOpts) -> Option<(String, usize)>;
    let send_proxy: Pick = &|o| {
        o.send_proxy
            .as_ref()
            .and_then(|p| p.value.map(|v| (v.key().to_string(), p.line)))
    };
    let user_timeout: Pick = &|o| o.tcp_ut.as_ref().map(|t| (fmt_duration(t.value), t.line));
    let slow: Pick = &|o| o.slowstart.as_ref().map(|d| (fmt_duration(d.value), d.line));
    let down: Pick = &|o| {
        o.shutdown_on_down
            .as_ref()
            .filter(|d| d.value)
            .map(|d| ("close".to_string(), d.line))
    };
    let observe: Pick = &|o| {
        o.observe
            .as_ref()
            .filter(|d| d.value)
            .map(|d| ("true".to_string(), d.line))
    };
    for (key, pick) in [
        ("slow_start", slow),
        ("on_down", down),
        ("observe", observe),
        ("send_proxy", send_proxy),
        ("user_timeout", user_timeout),
    ] {
        let values: Vec<Option<(String, usize)>> = live.iter().map(|x| pick(&x.opts)).collect();
        let Some((value, line)) = values.iter().flatten().next().cloned() else {
            continue;
        };
        for (x, v) in live.iter().zip(&values) {
            if v.as_ref().map(|v| &v.0) != Some(&value) {
                report.note(
                    x.line.number,
                    &x.line.text,
                    Verdict::Approximated,
                    format!("gatehouse sets {key} per backend: {value} as on line {line}"),
                );
            }
        }
        let rendered = if key == "observe" {
            value.clone()
        } else {
            emit::string(&value)
        };
        let lines: Vec<usize> = values.iter().flatten().map(|v| v.1).collect();
        b.table.set(Key::new(key, rendered, lines));
    }
    match b.table.get("observe") {
        Some(_) => {
            let limit = live.iter().find_map(|x| x.opts.error_limit.clone());
            let (value, lines) = limit.map_or((10, vec![]), |l| (l.value.clamp(1, 1000), vec![l.line]));
            b.table.set(Key::new("error_limit", value.to_string(), lines));
        }
        None => b.table.set(Key::new("observe", "false".into(), vec![]).remark(
            "HAProxy marks servers down by active checks only (no `observe layer4`); gatehouse's passive\n\
                 health (observe = true) would also take out a server that refuses real connections.",
        )),
    }
}

/// `health.send_proxy`: HAProxy sends the header on checks with `check-send-proxy`, and
/// by itself when the server sends it and the check has no port of its own.
fn health_send_proxy(s: &Settings, live: &[&ServerLine], b: &mut emit::Backend, report: &mut Report) {
    let Some(first) = live.iter().find(|x| x.opts.check.as_ref().is_some_and(|c| c.value)) else {
        return;
    };
    let o = &first.opts;
    let explicit = o.check_send_proxy.as_ref().filter(|c| c.value);
    let sending = b.table.get("send_proxy").is_some();
    if let (Some(c), false) = (explicit, sending) {
        report.note(
            c.line,
            "",
            Verdict::Dropped,
            "`check-send-proxy`: gatehouse sends a PROXY header on checks only when the backend sends one (send_proxy)",
        );
        return;
    }
    let own_port = o.port.is_some() || s.check_connect.as_ref().is_some_and(|c| c.value.port.is_some());
    if !sending || (explicit.is_none() && own_port) {
        return;
    }
    b.health.push(("send_proxy", "true".into()));
    match explicit {
        Some(c) => {
            b.health_lines.push(c.line);
            report.note(c.line, "", Verdict::Translated, "health send_proxy = true");
        }
        None => {
            let line = b.table.get("send_proxy").and_then(|k| k.lines.first().copied());
            let line = line.unwrap_or(first.line.number);
            report.note(
                line,
                "",
                Verdict::Translated,
                "health send_proxy = true: HAProxy sends the header on checks too when the check has no port of its own",
            );
        }
    }
}
