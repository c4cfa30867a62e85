//! What an HAProxy proxy section says, keyword by keyword: the settings a `defaults`
//! section hands down and a `frontend`, `backend` or `listen` section overrides, and
//! the options of `server` and `default-server` lines.
//!
//! Each value remembers the line it came from. Reading a line also reports it, with the
//! verdict the keyword earns on its own; what depends on the whole backend (one health
//! check for all servers, one `send_proxy`) is judged in `backend`.

use std::time::Duration;

use super::lexer::Line;
use super::model::duration;
use super::report::{Report, Verdict};

/// A value and the line it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
}

fn at<T>(value: T, line: &Line) -> Option<At<T>> {
    Some(At {
        value,
        line: line.number,
    })
}

/// The PROXY protocol version a server line sends (`send-proxy`, `send-proxy-v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

impl ProxyVersion {
    /// As gatehouse's `send_proxy` writes it.
    pub fn key(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
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

/// The options of a `server` or `default-server` line.
#[derive(Debug, Clone, Default)]
pub struct ServerOpts {
    pub check: Option<At<bool>>,
    pub inter: Option<At<Duration>>,
    pub rise: Option<At<u32>>,
    pub fall: Option<At<u32>>,
    pub weight: Option<At<u32>>,
    pub backup: Option<At<bool>>,
    pub disabled: Option<At<bool>>,
    pub port: Option<At<u16>>,
    pub check_ssl: Option<At<bool>>,
    pub verify_required: Option<At<bool>>,
    pub ca_file: Option<At<String>>,
    pub crt: Option<At<String>>,
    pub sni: Option<At<String>>,
    pub slowstart: Option<At<Duration>>,
    pub shutdown_on_down: Option<At<bool>>,
    pub observe: Option<At<bool>>,
    pub error_limit: Option<At<u32>>,
    pub resolvers: Option<At<String>>,
    /// `send-proxy[-v2]`; `None` inside for `no-send-proxy`.
    pub send_proxy: Option<At<Option<ProxyVersion>>>,
    pub check_send_proxy: Option<At<bool>>,
    /// `tcp-ut`: TCP_USER_TIMEOUT towards the server.
    pub tcp_ut: Option<At<Duration>>,
    /// `maxconn` (0: no limit), `maxqueue` (0: no bound), `minconn`.
    pub maxconn: Option<At<u32>>,
    pub maxqueue: Option<At<u32>>,
    pub minconn: Option<At<u32>>,
}

macro_rules! inherit {
    ($self:ident, $from:ident, $($f:ident),*) => { $( if $self.$f.is_none() { $self.$f = $from.$f.clone(); } )* };
}

impl ServerOpts {
    /// Options this line did not set are taken from `default-server`.
    pub fn inherit(&mut self, from: &ServerOpts) {
        inherit!(
            self,
            from,
            check,
            inter,
            rise,
            fall,
            weight,
            backup,
            disabled,
            port,
            check_ssl,
            verify_required,
            ca_file,
            crt,
            sni,
            slowstart,
            shutdown_on_down,
            observe,
            error_limit,
            resolvers,
            send_proxy,
            check_send_proxy,
            tcp_ut,
            maxconn,
            maxqueue,
            minconn
        );
    }
}

/// How many arguments a server option takes, for options read only to be reported.
fn server_option_arity(word: &str) -> usize {
    const ONE: &[&str] = &[
        "addr",
        "agent-addr",
        "agent-inter",
        "agent-port",
        "agent-send",
        "alpn",
        "check-alpn",
        "check-proto",
        "ciphers",
        "ciphersuites",
        "cookie",
        "crl-file",
        "curves",
        "id",
        "init-addr",
        "log-proto",
        "max-reuse",
        "maxconn",
        "maxqueue",
        "minconn",
        "namespace",
        "on-marked-up",
        "pool-low-conn",
        "pool-max-conn",
        "pool-purge-delay",
        "proto",
        "proxy-v2-options",
        "redir",
        "resolve-net",
        "resolve-opts",
        "resolve-prefer",
        "shard",
        "sigalgs",
        "client-sigalgs",
        "socks4",
        "source",
        "ssl-max-ver",
        "ssl-min-ver",
        "tcp-ut",
        "track",
        "usesrc",
        "verifyhost",
        "ws",
        "hash-key",
        "init-state",
        "downinter",
        "fastinter",
        "on-error",
        "set-proxy-v2-tlv-fmt",
    ];
    usize::from(ONE.contains(&word))
}

/// Reads the options of a `server` (from `words[3]`) or `default-server` (from
/// `words[1]`) line, reporting each.
pub fn server_opts(line: &Line, first: usize, report: &mut Report) -> ServerOpts {
    let mut o = ServerOpts::default();
    let w = &line.words;
    let mut i = first;
    let mut say = |v: Verdict, note: String| report.note(line.number, &line.text, v, note);
    while i < w.len() {
        let word = w[i].as_str();
        let arg = w.get(i + 1).map(String::as_str);
        let mut used = 1;
        let need = |used: &mut usize| -> Option<&str> {
            *used = 2;
            arg
        };
        match word {
            "check" => o.check = at(true, line),
            "no-check" => o.check = at(false, line),
            "inter" | "rise" | "fall" | "weight" | "port" | "slowstart" | "error-limit" => {
                let Some(a) = need(&mut used) else {
                    say(Verdict::Dropped, format!("`{word}` without a value"));
                    break;
                };
                let bad = |say: &mut dyn FnMut(Verdict, String), e: String| {
                    say(Verdict::Dropped, format!("`{word} {a}`: {e}"))
                };
                match word {
                    "inter" | "slowstart" => match duration(a) {
                        Ok(d) if d.is_zero() => bad(&mut say, "HAProxy wants a positive time".into()),
                        Ok(d) if word == "inter" => o.inter = at(d, line),
                        Ok(d) => o.slowstart = at(d, line),
                        Err(e) => bad(&mut say, e),
                    },
                    _ => match a.parse::<u32>() {
                        Ok(n) => match word {
                            "rise" => o.rise = at(n, line),
                            "fall" => o.fall = at(n, line),
                            "weight" => o.weight = at(n, line),
                            "error-limit" => o.error_limit = at(n, line),
                            _ => match u16::try_from(n) {
                                Ok(p) if p > 0 => o.port = at(p, line),
                                _ => bad(&mut say, "not a port".into()),
                            },
                        },
                        Err(e) => bad(&mut say, e.to_string()),
                    },
                }
            }
            "fastinter" | "downinter" => {
                used = 2;
                say(
                    Verdict::Approximated,
                    format!("`{word}`: gatehouse checks at one interval (inter) whatever the server's state"),
                );
            }
            "backup" => o.backup = at(true, line),
            "no-backup" => o.backup = at(false, line),
            "disabled" => o.disabled = at(true, line),
            "enabled" => o.disabled = at(false, line),
            "check-ssl" => o.check_ssl = at(true, line),
            "no-check-ssl" => o.check_ssl = at(false, line),
            "verify" | "ca-file" | "crt" | "sni" | "check-sni" | "resolvers" | "observe" | "on-marked-down" => {
                let Some(a) = need(&mut used) else {
                    say(Verdict::Dropped, format!("`{word}` without a value"));
                    break;
                };
                match (word, a) {
                    ("verify", "none") => o.verify_required = at(false, line),
                    ("verify", "required") => o.verify_required = at(true, line),
                    ("ca-file", _) => o.ca_file = at(a.to_string(), line),
                    ("crt", _) => o.crt = at(a.to_string(), line),
                    ("check-sni", _) => o.sni = at(a.to_string(), line),
                    ("sni", _) => match a.strip_prefix("str(").and_then(|s| s.strip_suffix(')')) {
                        Some(name) => {
                            o.sni = at(name.to_string(), line);
                            say(
                                Verdict::Approximated,
                                "`sni`: used for the health check; HAProxy also sends it on `ssl` traffic, \
                                 which gatehouse passes through untouched"
                                    .into(),
                            );
                        }
                        None => say(
                            Verdict::Dropped,
                            format!("`sni {a}`: a sample expression; gatehouse sends a fixed name (health sni)"),
                        ),
                    },
                    ("resolvers", _) => o.resolvers = at(a.to_string(), line),
                    ("observe", "layer4") => o.observe = at(true, line),
                    ("observe", _) => {
                        o.observe = at(true, line);
                        say(
                            Verdict::Approximated,
                            format!("`observe {a}`: gatehouse observes connect failures (layer4) only"),
                        );
                    }
                    ("on-marked-down", "shutdown-sessions") => o.shutdown_on_down = at(true, line),
                    _ => say(Verdict::Dropped, format!("`{word} {a}`: not a value gatehouse knows")),
                }
            }
            "on-error" => {
                used = 2;
                if arg != Some("mark-down") {
                    say(
                        Verdict::Approximated,
                        format!(
                            "`on-error {}`: gatehouse marks the server down after error_limit failures",
                            arg.unwrap_or("")
                        ),
                    );
                }
            }
            "send-proxy" => o.send_proxy = at(Some(ProxyVersion::V1), line),
            "send-proxy-v2" => o.send_proxy = at(Some(ProxyVersion::V2), line),
            "send-proxy-v2-ssl" | "send-proxy-v2-ssl-cn" => {
                o.send_proxy = at(Some(ProxyVersion::V2), line);
                say(
                    Verdict::Approximated,
                    format!(
                        "`{word}`: send_proxy = \"v2\" without TLS fields: gatehouse passes TLS through and has none to add"
                    ),
                );
            }
            "no-send-proxy" | "no-send-proxy-v2" | "no-send-proxy-v2-ssl" | "no-send-proxy-v2-ssl-cn" => {
                o.send_proxy = at(None, line)
            }
            "check-send-proxy" => o.check_send_proxy = at(true, line),
            "tcp-ut" => {
                let Some(a) = need(&mut used) else {
                    say(Verdict::Dropped, format!("`{word}` without a value"));
                    break;
                };
                match duration(a) {
                    Ok(d) if d.is_zero() => say(
                        Verdict::Dropped,
                        "`tcp-ut 0` leaves the system's default; gatehouse's user_timeout stays".into(),
                    ),
                    Ok(d) => o.tcp_ut = at(d, line),
                    Err(e) => say(Verdict::Dropped, format!("`{word} {a}`: {e}")),
                }
            }
            "proxy-v2-options" => {
                used = 2;
                say(
                    Verdict::Dropped,
                    "`proxy-v2-options`: gatehouse's v2 header carries the addresses only, no TLV fields".into(),
                );
            }
            "ssl" => say(
                Verdict::Dropped,
                "`ssl`: gatehouse does not encrypt traffic to servers; it passes the client's bytes through".into(),
            ),
            // Judged with the whole backend (`limits.rs`): the balance and the other
            // servers decide what they come to.
            "maxconn" | "maxqueue" | "minconn" => {
                used = 2;
                match arg.map(|a| (a, a.parse::<u32>())) {
                    Some((_, Ok(n))) => {
                        let slot = match word {
                            "maxconn" => &mut o.maxconn,
                            "maxqueue" => &mut o.maxqueue,
                            _ => &mut o.minconn,
                        };
                        *slot = at(n, line);
                    }
                    Some((a, Err(e))) => say(Verdict::Dropped, format!("`{word} {a}`: {e}")),
                    None => {
                        say(Verdict::Dropped, format!("`{word}` without a value"));
                        break;
                    }
                }
            }
            "id" => used = 2,
            "resolve-prefer" | "init-addr" | "resolve-opts" | "resolve-net" => {
                used = 2;
                say(
                    Verdict::Approximated,
                    format!("`{word}`: gatehouse uses every address a name resolves to, and waits for it to resolve"),
                );
            }
            "addr" => {
                used = 2;
                say(
                    Verdict::Dropped,
                    "`addr`: gatehouse checks the server's own address".into(),
                );
            }
            "track" => {
                used = 2;
                say(Verdict::Dropped, "`track`: gatehouse checks every server itself".into());
            }
            other => {
                used = 1 + server_option_arity(other);
                say(Verdict::Dropped, format!("`{other}`: no equivalent in gatehouse"));
            }
        }
        i += used;
    }
    o
}

/// Reads one line of a `defaults`, `frontend`, `backend` or `listen` section into
/// `s`, if it is a keyword all of them share; `false` leaves it to the caller.
pub fn apply(line: &Line, s: &mut Settings, report: &mut Report) -> bool {
    let w: Vec<&str> = line.words.iter().map(String::as_str).collect();
    let mut say = |v: Verdict, note: &str| report.note(line.number, &line.text, v, note);
    let time = |i: usize| w.get(i).ok_or_else(|| "no value".to_string()).and_then(|t| duration(t));
    match w.as_slice() {
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
        ["timeout", which, ..] => {
            let slot = match *which {
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
            match (slot, time(2)) {
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
                    &match *which {
                        "client-fin" | "server-fin" => {
                            "a half-closed connection lives until idle_timeout in gatehouse".into()
                        }
                        _ => format!("`timeout {which}` applies to HTTP; gatehouse is TCP only"),
                    },
                ),
            }
        }
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
        ["option", "httpchk", rest @ ..] => {
            // `option httpchk [<method>] <uri> [<version>]`
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
        ["http-check", "send", rest @ ..] => {
            let mut path = None;
            let mut host = None;
            let mut verdict = Verdict::Translated;
            let mut i = 0;
            while i < rest.len() {
                match (rest[i], rest.get(i + 1)) {
                    ("meth", Some(&m)) if m != "GET" => verdict = Verdict::Approximated,
                    ("uri", Some(&u)) => path = Some(u.to_string()),
                    ("hdr", Some(&h)) if h.eq_ignore_ascii_case("host") => {
                        host = rest.get(i + 2).map(|v| v.to_string())
                    }
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
                Verdict::Dropped => {
                    "gatehouse sends a GET with a Host header only; other headers and a body are not sent"
                }
            };
            say(verdict, note);
        }
        ["http-check", "expect", rest @ ..] => {
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
        ["tcp-check", "connect", rest @ ..] => {
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
        ["tcp-check", ..] => say(
            Verdict::Dropped,
            "gatehouse's tcp check is a connect (or a TLS handshake); send/expect steps are not carried over",
        ),
        ["http-check", ..] => say(Verdict::Dropped, "no equivalent in gatehouse's http check"),
        ["balance", algo, ..] => {
            let b = match *algo {
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
            };
            match b {
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
            }
        }
        ["hash-type", kind, ..] => {
            s.hash_consistent = at(*kind == "consistent", line);
            say(
                Verdict::Translated,
                "gatehouse's source-hash is consistent (rendezvous)",
            );
        }
        ["default-server", ..] => {
            let o = server_opts(line, 1, report);
            let mut merged = o;
            merged.inherit(&s.default_server);
            s.default_server = merged;
            report.note(
                line.number,
                &line.text,
                Verdict::Translated,
                "options of the servers below",
            );
        }
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
