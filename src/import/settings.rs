//! What an HAProxy proxy section says, keyword by keyword: the settings a `defaults`
//! section hands down and a `frontend`, `backend` or `listen` section overrides (the
//! options of `server` and `default-server` lines are `server_opts`).
//!
//! Each value remembers the line it came from. Reading a line also reports it, with the
//! verdict the keyword earns on its own; what depends on the whole backend (one health
//! check for all servers, one `send_proxy`) is judged in `backend`.

use std::time::Duration;

use super::lexer::Line;
use super::model::duration;
use super::report::{Report, Verdict};
use super::server_opts::{self, ServerOpts};

/// A value and the line it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
}

pub(super) fn at<T>(value: T, line: &Line) -> Option<At<T>> {
    Some(At {
        value,
        line: line.number,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Source,
    /// `random(N)`: N draws, the least loaded wins.
    Random(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// `option tcp-check`, or nothing: a connect.
    Connect,
    /// `option httpchk`: the path and the Host header (from `http-check send` or an
    /// HTTP/1.1 version string).
    Http { path: String, host: Option<String> },
    /// `option ssl-hello-chk`.
    SslHello,
}

/// `tcp-check connect [port N] [ssl] [sni NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConnect {
    pub ssl: bool,
    pub sni: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Status(Vec<u16>),
    Body(String),
}

/// What a `defaults` section hands down and a proxy section may override.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub http: Option<At<bool>>,
    pub timeout_connect: Option<At<Duration>>,
    pub timeout_client: Option<At<Duration>>,
    pub timeout_server: Option<At<Duration>>,
    pub timeout_tunnel: Option<At<Duration>>,
    pub timeout_check: Option<At<Duration>>,
    /// How long a client waits for a server with room (`timeout queue`).
    pub timeout_queue: Option<At<Duration>>,
    pub retries: Option<At<u32>>,
    pub redispatch: Option<At<bool>>,
    pub balance: Option<At<Balance>>,
    pub hash_consistent: Option<At<bool>>,
    pub check: Option<At<Check>>,
    pub check_connect: Option<At<CheckConnect>>,
    pub expect: Option<At<Expect>>,
    pub maxconn: Option<At<u64>>,
    pub allbackups: Option<At<bool>>,
    pub default_server: ServerOpts,
}

/// Reads one line of a `defaults`, `frontend`, `backend` or `listen` section into
/// `s`, if it is a keyword all of them share; `false` leaves it to the caller.
pub fn apply(line: &Line, s: &mut Settings, report: &mut Report) -> bool {
    let w: Vec<&str> = line.words.iter().map(String::as_str).collect();
    // By keyword family; the last takes every `option` the others leave.
    mode_timeouts_and_retries(&w, line, s, report)
        || logging_and_keepalive(&w, line, s, report)
        || health_check(&w, line, s, report)
        || balance(&w, line, s, report)
        || servers_limits_and_the_rest(&w, line, s, report)
}

/// `mode`, `timeout`, `retries` and `option redispatch`.
fn mode_timeouts_and_retries(w: &[&str], line: &Line, s: &mut Settings, report: &mut Report) -> bool {
    let mut say = |v: Verdict, note: &str| report.note(line.number, &line.text, v, note);
    match w {
        ["mode", "tcp"] => {
            s.http = at(false, line);
            say(Verdict::Translated, "gatehouse is always TCP");
        }
        ["mode", other] => {
            s.http = at(true, line);
            say(
                Verdict::Dropped,
                &format!("mode {other} is out of scope: gatehouse is an L4 (TCP) proxy; sections in mode {other} are not imported"),
            );
        }
        ["timeout", which, ..] => timeout(which, w.get(2), line, s, &mut say),
        ["retries", n] => match n.parse::<u32>() {
            Ok(n) => {
                s.retries = at(n, line);
                say(Verdict::Translated, "retries");
            }
            Err(e) => say(Verdict::Dropped, &e.to_string()),
        },
        ["option", "redispatch", ..] => {
            s.redispatch = at(true, line);
            say(Verdict::Translated, "gatehouse always retries on another server");
        }
        ["no", "option", "redispatch"] => s.redispatch = at(false, line),
        _ => return false,
    }
    true
}

/// `timeout WHICH VALUE`.
fn timeout(which: &str, value: Option<&&str>, line: &Line, s: &mut Settings, say: &mut impl FnMut(Verdict, &str)) {
    let slot = match which {
        "connect" => Some((&mut s.timeout_connect, "connect_timeout")),
        "client" => Some((&mut s.timeout_client, "idle_timeout")),
        "server" => Some((&mut s.timeout_server, "idle_timeout")),
        "tunnel" => Some((&mut s.timeout_tunnel, "idle_timeout")),
        "check" => Some((&mut s.timeout_check, "health timeout")),
        "queue" => Some((
            &mut s.timeout_queue,
            "queue_timeout (of the backends whose servers have maxconn)",
        )),
        _ => None,
    };
    let time = value.ok_or_else(|| "no value".to_string()).and_then(|t| duration(t));
    match (slot, time) {
        (Some(_), Ok(d)) if d.is_zero() => say(
            Verdict::Dropped,
            "0 means no timeout in HAProxy; gatehouse always has one, so its default stays",
        ),
        (Some((slot, key)), Ok(d)) => {
            *slot = at(d, line);
            say(Verdict::Translated, key);
        }
        (Some(_), Err(e)) => say(Verdict::Dropped, &e),
        (None, _) => say(
            Verdict::Dropped,
            &match which {
                "client-fin" | "server-fin" => "a half-closed connection lives until idle_timeout in gatehouse".into(),
                _ => format!("`timeout {which}` applies to HTTP; gatehouse is TCP only"),
            },
        ),
    }
}

/// Logging, TCP keepalive, splicing and `option allbackups`.
fn logging_and_keepalive(w: &[&str], line: &Line, s: &mut Settings, report: &mut Report) -> bool {
    let mut say = |v: Verdict, note: &str| report.note(line.number, &line.text, v, note);
    match w {
        ["option", "tcplog"] | ["log", "global"] => say(
            Verdict::Translated,
            "gatehouse logs one line per connection (text or JSON) to stdout",
        ),
        ["option", "log-health-checks"] => say(Verdict::Translated, "gatehouse logs every server state change"),
        ["option", "tcpka" | "clitcpka" | "srvtcpka"] => say(
            Verdict::Translated,
            "TCP keepalive is on both sides by default (keepalive = \"60s\")",
        ),
        ["option", "splice-auto" | "splice-request" | "splice-response"] => say(
            Verdict::Translated,
            "forwarding = \"splice\" (the default) is HAProxy's splice-auto",
        ),
        ["option", "dontlognull"] => say(
            Verdict::Approximated,
            "gatehouse also logs connections that sent nothing (health probes of load balancers in front)",
        ),
        ["option", "allbackups"] => {
            s.allbackups = at(true, line);
            say(Verdict::Translated, "gatehouse balances over all backups");
        }
        _ => return false,
    }
    true
}

/// The health check: `option tcp-check`, `ssl-hello-chk`, `httpchk`, and the
/// `http-check` and `tcp-check` lines.
fn health_check(w: &[&str], line: &Line, s: &mut Settings, report: &mut Report) -> bool {
    let mut say = |v: Verdict, note: &str| report.note(line.number, &line.text, v, note);
    match w {
        ["option", "tcp-check"] => {
            s.check = at(Check::Connect, line);
            say(Verdict::Translated, "health check = \"tcp\" (a connect)");
        }
        ["option", "ssl-hello-chk"] => {
            s.check = at(Check::SslHello, line);
            say(
                Verdict::Approximated,
                "health check = \"tls\": a full TLS handshake, where HAProxy sends an SSLv3 hello and accepts any TLS reply",
            );
        }
        ["option", "httpchk", rest @ ..] => option_httpchk(rest, line, s, &mut say),
        ["http-check", "send", rest @ ..] => http_check_send(rest, line, s, &mut say),
        ["http-check", "expect", rest @ ..] => http_check_expect(rest, line, s, &mut say),
        ["tcp-check", "connect", rest @ ..] => tcp_check_connect(rest, line, s, &mut say),
        ["tcp-check", ..] => say(
            Verdict::Dropped,
            "gatehouse's tcp check is a connect (or a TLS handshake); send/expect steps are not carried over",
        ),
        ["http-check", ..] => say(Verdict::Dropped, "no equivalent in gatehouse's http check"),
        _ => return false,
    }
    true
}

/// `option httpchk [<method>] <uri> [<version>]`
fn option_httpchk(rest: &[&str], line: &Line, s: &mut Settings, say: &mut impl FnMut(Verdict, &str)) {
    let (method, uri, version) = match rest {
        [] => ("OPTIONS", "/", ""),
        [uri] => ("OPTIONS", *uri, ""),
        [m, uri] => (*m, *uri, ""),
        [m, uri, v, ..] => (*m, *uri, *v),
    };
    let host = version.split_once("Host:").map(|(_, h)| h.trim().to_string());
    s.check = at(
        Check::Http {
            path: uri.to_string(),
            host,
        },
        line,
    );
    if method == "GET" {
        say(Verdict::Translated, &format!("health check = \"http\", path = {uri:?}"));
    } else {
        say(
            Verdict::Approximated,
            &format!("health check = \"http\", path = {uri:?}: gatehouse sends GET, not {method}"),
        );
    }
}

/// `http-check send [meth M] [uri U] [hdr NAME VALUE]… [body B]`: the path and the
/// Host header of the http check.
fn http_check_send(rest: &[&str], line: &Line, s: &mut Settings, say: &mut impl FnMut(Verdict, &str)) {
    let mut path = None;
    let mut host = None;
    let mut verdict = Verdict::Translated;
    let mut i = 0;
    while i < rest.len() {
        match (rest[i], rest.get(i + 1)) {
            ("meth", Some(&m)) if m != "GET" => verdict = Verdict::Approximated,
            ("uri", Some(&u)) => path = Some(u.to_string()),
            ("hdr", Some(&h)) if h.eq_ignore_ascii_case("host") => host = rest.get(i + 2).map(|v| v.to_string()),
            ("hdr", Some(_)) | ("body", _) => verdict = Verdict::Dropped,
            _ => {}
        }
        i += if rest[i] == "hdr" { 3 } else { 2 };
    }
    if let Some(At {
        value: Check::Http { path: p, host: h },
        ..
    }) = &mut s.check
    {
        if let Some(path) = path {
            *p = path;
        }
        if host.is_some() {
            *h = host;
        }
    } else {
        s.check = at(
            Check::Http {
                path: path.unwrap_or_else(|| "/".into()),
                host,
            },
            line,
        );
    }
    let note = match verdict {
        Verdict::Translated => "health path and host",
        Verdict::Approximated => "health path and host; gatehouse sends GET",
        Verdict::Dropped => "gatehouse sends a GET with a Host header only; other headers and a body are not sent",
    };
    say(verdict, note);
}

/// `http-check expect status CODES` or `expect string BODY`.
fn http_check_expect(rest: &[&str], line: &Line, s: &mut Settings, say: &mut impl FnMut(Verdict, &str)) {
    let expect = match rest {
        ["status", codes] => codes
            .split(',')
            .map(|c| c.parse::<u16>().ok().filter(|c| (100..=599).contains(c)))
            .collect::<Option<Vec<_>>>()
            .map(Expect::Status),
        ["string", body] => Some(Expect::Body(body.to_string())),
        _ => None,
    };
    match expect {
        Some(e) => {
            s.expect = at(e, line);
            say(Verdict::Translated, "health expect / body");
        }
        None => say(
            Verdict::Dropped,
            "gatehouse expects a status (or list) and a body substring; negations, ranges and regexes are not carried over",
        ),
    }
}

/// `tcp-check connect [port N] [ssl] [sni NAME]`.
fn tcp_check_connect(rest: &[&str], line: &Line, s: &mut Settings, say: &mut impl FnMut(Verdict, &str)) {
    let mut ssl = false;
    let mut sni = None;
    let mut port = None;
    let mut verdict = Verdict::Translated;
    let mut i = 0;
    while i < rest.len() {
        match (rest[i], rest.get(i + 1)) {
            ("ssl", _) => ssl = true,
            ("sni", Some(v)) => {
                sni = Some(v.to_string());
                i += 1;
            }
            ("port", Some(v)) => {
                port = v.parse().ok();
                i += 1;
            }
            (_, _) => verdict = Verdict::Dropped,
        }
        i += 1;
    }
    s.check_connect = at(CheckConnect { ssl, sni, port }, line);
    if s.check.is_none() {
        s.check = at(Check::Connect, line);
    }
    say(
        verdict,
        if verdict == Verdict::Translated {
            "health check = \"tcp\" (or \"tls\" with ssl)"
        } else {
            "gatehouse's check connects (port, ssl, sni); other connect options are not carried over"
        },
    );
}

/// `balance` and `hash-type`.
fn balance(w: &[&str], line: &Line, s: &mut Settings, report: &mut Report) -> bool {
    let mut say = |v: Verdict, note: &str| report.note(line.number, &line.text, v, note);
    match w {
        ["balance", algo, ..] => match balance_policy(algo) {
            Some((b, v, note)) => {
                s.balance = at(b, line);
                say(v, note);
            }
            None => {
                s.balance = at(Balance::RoundRobin, line);
                say(
                    Verdict::Approximated,
                    &format!("balance {algo} has no equivalent (an HTTP or first-fit policy); round-robin is used"),
                );
            }
        },
        ["hash-type", kind, ..] => {
            s.hash_consistent = at(*kind == "consistent", line);
            say(
                Verdict::Translated,
                "gatehouse's source-hash is consistent (rendezvous)",
            );
        }
        _ => return false,
    }
    true
}

/// HAProxy's balance algorithm as gatehouse's policy, with its verdict and note;
/// `None` for one without an equivalent.
fn balance_policy(algo: &str) -> Option<(Balance, Verdict, &'static str)> {
    match algo {
        "roundrobin" => Some((Balance::RoundRobin, Verdict::Translated, "balance = \"round-robin\"")),
        "static-rr" => Some((
            Balance::RoundRobin,
            Verdict::Approximated,
            "balance = \"round-robin\" (gatehouse's weights change at once, not only on restart)",
        )),
        "leastconn" => Some((Balance::LeastConn, Verdict::Translated, "balance = \"least-conn\"")),
        "source" => Some((Balance::Source, Verdict::Translated, "balance = \"source-hash\"")),
        "random" => Some((Balance::Random(2), Verdict::Translated, "balance = \"random-two\"")),
        other => match other.strip_prefix("random(").and_then(|r| r.strip_suffix(')')) {
            Some("2") => Some((Balance::Random(2), Verdict::Translated, "balance = \"random-two\"")),
            Some(n) => Some((
                Balance::Random(n.parse().unwrap_or(2)),
                Verdict::Approximated,
                "balance = \"random-two\": gatehouse draws two servers",
            )),
            None => None,
        },
    }
}

/// `default-server`, the listener's `maxconn`, and what gatehouse only reports:
/// descriptions, protocol checks, other options, syslog targets.
fn servers_limits_and_the_rest(w: &[&str], line: &Line, s: &mut Settings, report: &mut Report) -> bool {
    if let ["default-server", ..] = w {
        let mut merged = server_opts::read(line, 1, report);
        merged.inherit(&s.default_server);
        s.default_server = merged;
        report.note(
            line.number,
            &line.text,
            Verdict::Translated,
            "options of the servers below",
        );
        return true;
    }
    let mut say = |v: Verdict, note: &str| report.note(line.number, &line.text, v, note);
    match w {
        ["maxconn", n] => match n.parse::<u64>() {
            Ok(n) if !(1..=10_000_000).contains(&n) => say(
                Verdict::Dropped,
                "gatehouse's max_connections is 1 to 10,000,000; the listener is left unlimited",
            ),
            Ok(n) => {
                s.maxconn = at(n, line);
                say(
                    Verdict::Approximated,
                    "max_connections of the listener: gatehouse closes clients above it at once, where HAProxy leaves \
                     them waiting in the backlog",
                );
            }
            Err(e) => say(Verdict::Dropped, &e.to_string()),
        },
        ["description" | "id", ..] => say(Verdict::Translated, "not needed"),
        ["option", check @ ("mysql-check" | "pgsql-check" | "redis-check" | "ldap-check" | "smtpchk" | "spop-check"), ..] => {
            say(
                Verdict::Dropped,
                &format!("option {check}: gatehouse has no protocol check of this kind; the check stays a connect"),
            )
        }
        ["option", rest @ ..] | ["no", "option", rest @ ..] => say(
            Verdict::Dropped,
            &format!("option {} has no equivalent in gatehouse", rest.join(" ")),
        ),
        ["log", ..] => say(
            Verdict::Approximated,
            "gatehouse logs to stdout (journald takes it), not to a syslog address",
        ),
        _ => return false,
    }
    true
}
