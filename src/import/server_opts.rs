//! The options of a `server` or `default-server` line, read one by one and each
//! reported with the verdict it earns on its own; what they come to for the whole
//! backend is judged in `backend` and `limits`.

use std::time::Duration;

use super::lexer::Line;
use super::model::duration;
use super::report::{Report, Verdict};
use super::settings::{at, At};

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
pub fn read(line: &Line, first: usize, report: &mut Report) -> ServerOpts {
    let mut o = ServerOpts::default();
    let w = &line.words;
    let mut i = first;
    let mut say = |v: Verdict, note: String| report.note(line.number, &line.text, v, note);
    while i < w.len() {
        let word = w[i].as_str();
        let arg = w.get(i + 1).map(String::as_str);
        let Some(used) = server_option(&mut o, line, word, arg, &mut say) else {
            break;
        };
        i += used;
    }
    o
}

type Say<'a> = dyn FnMut(Verdict, String) + 'a;

/// Reads one server option, `word` (and `arg`, the word after it), into `o`: how many
/// words it took, or `None` when its value is missing, which ends the line.
fn server_option(o: &mut ServerOpts, line: &Line, word: &str, arg: Option<&str>, say: &mut Say) -> Option<usize> {
    if server_flag(o, line, word, say) {
        return Some(1);
    }
    match word {
        "inter" | "rise" | "fall" | "weight" | "port" | "slowstart" | "error-limit" => {
            number_option(o, line, word, value(word, arg, say)?, say)
        }
        "verify" | "ca-file" | "crt" | "sni" | "check-sni" | "resolvers" | "observe" | "on-marked-down" => {
            named_option(o, line, word, value(word, arg, say)?, say)
        }
        "tcp-ut" => user_timeout(o, line, value(word, arg, say)?, say),
        // Judged with the whole backend (`limits.rs`): the balance and the other
        // servers decide what they come to.
        "maxconn" | "maxqueue" | "minconn" => limit_option(o, line, word, value(word, arg, say)?, say),
        other => return Some(reported_option(other, arg, say)),
    }
    Some(2)
}

/// The value of an option that needs one; its absence is reported.
fn value<'a>(word: &str, arg: Option<&'a str>, say: &mut Say) -> Option<&'a str> {
    if arg.is_none() {
        say(Verdict::Dropped, format!("`{word}` without a value"));
    }
    arg
}

/// The options that stand alone: on, off, and the PROXY protocol's versions.
fn server_flag(o: &mut ServerOpts, line: &Line, word: &str, say: &mut Say) -> bool {
    match word {
        "check" => o.check = at(true, line),
        "no-check" => o.check = at(false, line),
        "backup" => o.backup = at(true, line),
        "no-backup" => o.backup = at(false, line),
        "disabled" => o.disabled = at(true, line),
        "enabled" => o.disabled = at(false, line),
        "check-ssl" => o.check_ssl = at(true, line),
        "no-check-ssl" => o.check_ssl = at(false, line),
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
        _ => return false,
    }
    true
}

/// `inter`, `slowstart` (times) and `rise`, `fall`, `weight`, `error-limit`, `port`
/// (numbers).
fn number_option(o: &mut ServerOpts, line: &Line, word: &str, a: &str, say: &mut Say) {
    let bad = |say: &mut Say, e: String| say(Verdict::Dropped, format!("`{word} {a}`: {e}"));
    match word {
        "inter" | "slowstart" => match duration(a) {
            Ok(d) if d.is_zero() => bad(say, "HAProxy wants a positive time".into()),
            Ok(d) if word == "inter" => o.inter = at(d, line),
            Ok(d) => o.slowstart = at(d, line),
            Err(e) => bad(say, e),
        },
        _ => match a.parse::<u32>() {
            Ok(n) => match word {
                "rise" => o.rise = at(n, line),
                "fall" => o.fall = at(n, line),
                "weight" => o.weight = at(n, line),
                "error-limit" => o.error_limit = at(n, line),
                _ => match u16::try_from(n) {
                    Ok(p) if p > 0 => o.port = at(p, line),
                    _ => bad(say, "not a port".into()),
                },
            },
            Err(e) => bad(say, e.to_string()),
        },
    }
}

/// The options whose value is a name: TLS of the check, resolvers, what is observed
/// and what happens when the server goes down.
fn named_option(o: &mut ServerOpts, line: &Line, word: &str, a: &str, say: &mut Say) {
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

/// `tcp-ut`: TCP_USER_TIMEOUT towards the server.
fn user_timeout(o: &mut ServerOpts, line: &Line, a: &str, say: &mut Say) {
    match duration(a) {
        Ok(d) if d.is_zero() => say(
            Verdict::Dropped,
            "`tcp-ut 0` leaves the system's default; gatehouse's user_timeout stays".into(),
        ),
        Ok(d) => o.tcp_ut = at(d, line),
        Err(e) => say(Verdict::Dropped, format!("`tcp-ut {a}`: {e}")),
    }
}

/// `maxconn`, `maxqueue`, `minconn`.
fn limit_option(o: &mut ServerOpts, line: &Line, word: &str, a: &str, say: &mut Say) {
    match a.parse::<u32>() {
        Ok(n) => {
            let slot = match word {
                "maxconn" => &mut o.maxconn,
                "maxqueue" => &mut o.maxqueue,
                _ => &mut o.minconn,
            };
            *slot = at(n, line);
        }
        Err(e) => say(Verdict::Dropped, format!("`{word} {a}`: {e}")),
    }
}

/// The options gatehouse reads only to report them: how many words each takes.
fn reported_option(word: &str, arg: Option<&str>, say: &mut Say) -> usize {
    match word {
        "fastinter" | "downinter" => say(
            Verdict::Approximated,
            format!("`{word}`: gatehouse checks at one interval (inter) whatever the server's state"),
        ),
        "on-error" => {
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
        "proxy-v2-options" => say(
            Verdict::Dropped,
            "`proxy-v2-options`: gatehouse's v2 header carries the addresses only, no TLV fields".into(),
        ),
        "ssl" => {
            say(
                Verdict::Dropped,
                "`ssl`: gatehouse does not encrypt traffic to servers; it passes the client's bytes through".into(),
            );
            return 1;
        }
        "id" => {}
        "resolve-prefer" | "init-addr" | "resolve-opts" | "resolve-net" => say(
            Verdict::Approximated,
            format!("`{word}`: gatehouse uses every address a name resolves to, and waits for it to resolve"),
        ),
        "addr" => say(
            Verdict::Dropped,
            "`addr`: gatehouse checks the server's own address".into(),
        ),
        "track" => say(Verdict::Dropped, "`track`: gatehouse checks every server itself".into()),
        other => {
            say(Verdict::Dropped, format!("`{other}`: no equivalent in gatehouse"));
            return 1 + server_option_arity(other);
        }
    }
    2
}
