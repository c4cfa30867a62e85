//! An HAProxy configuration's shape: lexed lines grouped into sections, and HAProxy's
//! own value syntaxes (times, bind and server addresses) read into plain values.
//!
//! Owns what HAProxy's words say, not what gatehouse makes of them (`translate`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::lexer::{LexError, Line};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Global,
    Defaults,
    Frontend,
    Backend,
    Listen,
    Resolvers,
    /// A section gatehouse has nothing for (peers, userlist, mailers, cache, …).
    Other,
}

/// Keywords that open a section, in HAProxy 2.6 and later.
const SECTIONS: [(&str, Kind); 16] = [
    ("global", Kind::Global),
    ("defaults", Kind::Defaults),
    ("frontend", Kind::Frontend),
    ("backend", Kind::Backend),
    ("listen", Kind::Listen),
    ("resolvers", Kind::Resolvers),
    ("peers", Kind::Other),
    ("userlist", Kind::Other),
    ("mailers", Kind::Other),
    ("program", Kind::Other),
    ("http-errors", Kind::Other),
    ("ring", Kind::Other),
    ("cache", Kind::Other),
    ("fcgi-app", Kind::Other),
    ("traces", Kind::Other),
    ("crt-store", Kind::Other),
];

/// One section: its header line and the lines under it.
#[derive(Debug, Clone)]
pub struct Section {
    pub kind: Kind,
    pub name: String,
    /// `from NAME`: the defaults section this proxy takes its defaults from.
    pub from: Option<String>,
    pub header: Line,
    pub body: Vec<Line>,
}

impl Section {
    pub fn keyword(&self) -> &str {
        self.header.words.first().map_or("", String::as_str)
    }
}

/// Groups `lines` into sections. A keyword before the first section is refused, as
/// HAProxy refuses it.
/// Two proxies that both take clients (frontend, listen) or both hold servers
/// (backend, listen) may not share a name; HAProxy refuses that too.
pub fn sections(lines: Vec<Line>) -> Result<Vec<Section>, LexError> {
    let mut out: Vec<Section> = Vec::new();
    for line in lines {
        let first = line.keyword();
        if let Some((_, kind)) = SECTIONS.iter().find(|(k, _)| *k == first) {
            let name = line.words.get(1).map_or("", String::as_str);
            let front = |k: Kind| matches!(k, Kind::Frontend | Kind::Listen);
            let back = |k: Kind| matches!(k, Kind::Backend | Kind::Listen);
            if let Some(other) = out
                .iter()
                .find(|s| s.name == name && ((front(s.kind) && front(*kind)) || (back(s.kind) && back(*kind))))
            {
                return Err(LexError {
                    line: line.number,
                    message: format!(
                        "{first} {name:?} has the same name as the {} on line {}; HAProxy refuses that",
                        other.keyword(),
                        other.header.number
                    ),
                });
            }
            let name = line.words.get(1).filter(|w| *w != "from").cloned().unwrap_or_default();
            let from = line
                .words
                .iter()
                .position(|w| w == "from")
                .and_then(|i| line.words.get(i + 1))
                .cloned();
            out.push(Section {
                kind: *kind,
                name,
                from,
                header: line,
                body: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.body.push(line);
        } else {
            return Err(LexError {
                line: line.number,
                message: format!(
                    "{first:?} is outside any section; HAProxy refuses it (start with global, defaults, frontend, backend or listen)"
                ),
            });
        }
    }
    Ok(out)
}

/// An HAProxy time: a number with `us`, `ms`, `s`, `m`, `h` or `d`; no unit is ms.
/// Microseconds round up to the next millisecond.
pub fn duration(text: &str) -> Result<Duration, String> {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let n: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("{text:?} is not an HAProxy time (like 500ms, 3s, 1m)"))?;
    let d = match &text[digits..] {
        "" | "ms" => Duration::from_millis(n),
        "us" => Duration::from_millis(n.div_ceil(1000)),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86400)),
        unit => return Err(format!("{text:?}: unknown time unit {unit:?}")),
    };
    Ok(d)
}

/// A duration as gatehouse writes it: the largest unit that divides it.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A bind address, read from one comma-separated part of a `bind` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddr {
    pub ip: IpAddr,
    pub port: u16,
}

/// Reads a `bind` word (`*:6443`, `:80,:443`, `ipv6@:::443`, `[::]:8443`, `1.2.3.4:80`).
pub fn bind_addrs(word: &str) -> Result<Vec<BindAddr>, String> {
    word.split(',').map(bind_addr).collect()
}

fn bind_addr(part: &str) -> Result<BindAddr, String> {
    let (family, rest) = strip_family(part)?;
    let (host, port) = split_port(rest).ok_or_else(|| format!("{part:?} has no port"))?;
    if port.contains('-') {
        return Err(format!(
            "{part:?} is a port range; gatehouse binds one port per address: list each port in a bind"
        ));
    }
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("{part:?}: {port:?} is not a port gatehouse can bind (1-65535)")),
    };
    let ip = match (host, family) {
        ("" | "*", Some(Family::V6)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ("" | "*", _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (h, _) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{part:?}: {h:?} is not an IP address; gatehouse binds addresses, not names"))?,
    };
    Ok(BindAddr { ip, port })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn strip_family(text: &str) -> Result<(Option<Family>, &str), String> {
    if let Some((prefix, rest)) = text.split_once('@') {
        return match prefix {
            "ipv4" | "tcp4" => Ok((Some(Family::V4), rest)),
            "ipv6" | "tcp6" => Ok((Some(Family::V6), rest)),
            "tcp" => Ok((None, rest)),
            other => Err(format!(
                "{text:?}: {other}@ addresses (UNIX sockets, inherited fds, UDP, QUIC) are not TCP addresses gatehouse can use"
            )),
        };
    }
    if text.starts_with('/') {
        return Err(format!(
            "{text:?} is a UNIX socket; gatehouse listens and connects over TCP only"
        ));
    }
    Ok((None, text))
}

/// Splits `host:port` at the last colon (HAProxy's rule: `:::80` is `::` port 80).
fn split_port(text: &str) -> Option<(&str, &str)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    text.rsplit_once(':')
}

/// A server address: the host as gatehouse writes it (IPv6 in brackets) and the port,
/// if the line gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub is_name: bool,
    pub port: Option<u16>,
    /// How HAProxy's reading could surprise a reader (an IPv6 address without
    /// brackets, whose last group is taken for the port): reported as an approximation.
    pub surprise: Option<String>,
}

/// Reads a `server` address as HAProxy does: `192.168.4.11:6443`, `arkveld:6443`,
/// `[fd00::1]:80`, a host without a port, and an IPv6 address without brackets, where
/// HAProxy takes what follows the *last* colon as the port
/// (`2409:8080:5801:824f:2::12:6443` is `2409:8080:5801:824f:2::12`, port 6443), with or
/// without `ipv6@`. HAProxy refuses what that leaves unreadable (`fd00::1` is host
/// `fd00:`, port 1): so does this.
pub fn server_addr(word: &str) -> Result<ServerAddr, String> {
    let (_, rest) = strip_family(word)?;
    let unbracketed_v6 = !rest.starts_with('[') && rest.matches(':').count() > 1;
    let (host, port) = match split_port(rest) {
        Some((h, p)) => (h, Some(p)),
        None => (
            rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(rest),
            None,
        ),
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.starts_with('+') || p.starts_with('-') => {
            return Err(format!(
                "{word:?}: a port relative to the client's ({p}) has no equivalent; gatehouse connects to a fixed port"
            ))
        }
        Some(p) if p.contains('-') => return Err(format!("{word:?}: a server takes one port, not a range")),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("{word:?}: {p:?} is not a port (1-65535)")),
        },
    };
    if host.is_empty() {
        return Err(format!("{word:?} has no host"));
    }
    let parsed = host.parse::<IpAddr>();
    if unbracketed_v6 && parsed.is_err() {
        return Err(format!(
            "HAProxy reads {word:?} as host {host:?} and port {:?} (what follows the last colon is the port) and \
             cannot resolve {host:?}: it refuses this line. Write an IPv6 address in brackets: [ADDRESS]:PORT",
            rest.rsplit_once(':').map_or("", |(_, p)| p)
        ));
    }
    let surprise = match (unbracketed_v6, rest.parse::<Ipv6Addr>(), port) {
        (true, Ok(whole), Some(port)) => Some(format!(
            "{rest} is read as HAProxy reads it: [{host}]:{port}, what follows the last colon being the port, not \
             the IPv6 address {whole}; write [{host}]:{port} in HAProxy too, to say so"
        )),
        _ => None,
    };
    let (host, is_name) = match parsed {
        Ok(IpAddr::V6(ip)) => (format!("[{ip}]"), false),
        Ok(ip) => (ip.to_string(), false),
        Err(_) => (host.to_string(), true),
    };
    Ok(ServerAddr {
        host,
        is_name,
        port,
        surprise,
    })
}

/// A name gatehouse accepts (letters, digits, `-`, `_`, `.`; 1–64), made from an
/// HAProxy one; `None` when it needed no change.
pub fn gatehouse_name(name: &str) -> Option<String> {
    let fixed: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let fixed = if fixed.is_empty() { "unnamed".to_string() } else { fixed };
    (fixed != name).then_some(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_times_read_with_ms_as_the_bare_unit() {
        assert_eq!(duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(duration("5000"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("1500us"), Ok(Duration::from_millis(2)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(duration("3x").is_err());
        assert_eq!(fmt_duration(Duration::from_millis(90_000)), "90s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn bind_words_read_like_haproxy_reads_them() {
        let v4 = |a: [u8; 4], port| BindAddr {
            ip: IpAddr::from(a),
            port,
        };
        assert_eq!(bind_addrs("*:6443"), Ok(vec![v4([0, 0, 0, 0], 6443)]));
        assert_eq!(
            bind_addrs(":80,:443"),
            Ok(vec![v4([0, 0, 0, 0], 80), v4([0, 0, 0, 0], 443)])
        );
        assert_eq!(bind_addrs("10.0.0.1:80"), Ok(vec![v4([10, 0, 0, 1], 80)]));
        let any6 = BindAddr {
            ip: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            port: 443,
        };
        assert_eq!(bind_addrs(":::443"), Ok(vec![any6]));
        assert_eq!(bind_addrs("[::]:443"), Ok(vec![any6]));
        assert_eq!(bind_addrs("ipv6@:443"), Ok(vec![any6]));
        assert!(bind_addrs(":8000-8010").unwrap_err().contains("port range"));
        assert!(bind_addrs("/run/h.sock").unwrap_err().contains("UNIX"));
        assert!(bind_addrs("localhost:80").unwrap_err().contains("not an IP"));
    }

    #[test]
    fn server_addresses_keep_names_and_bracket_ipv6() {
        let a = |host: &str, is_name, port| ServerAddr {
            host: host.into(),
            is_name,
            port,
            surprise: None,
        };
        assert_eq!(
            server_addr("192.168.4.11:6443"),
            Ok(a("192.168.4.11", false, Some(6443)))
        );
        assert_eq!(server_addr("arkveld:6443"), Ok(a("arkveld", true, Some(6443))));
        assert_eq!(server_addr("arkveld"), Ok(a("arkveld", true, None)));
        assert_eq!(server_addr("[fd00::1]:80"), Ok(a("[fd00::1]", false, Some(80))));
        assert_eq!(server_addr("[fd00::1]"), Ok(a("[fd00::1]", false, None)));
        assert!(server_addr("10.0.0.1:+1000").unwrap_err().contains("relative"));
    }

    #[test]
    fn ipv6_without_brackets_ends_in_its_port_as_haproxy_reads_it() {
        let got = server_addr("2409:8080:5801:824f:2::12:6443").unwrap();
        assert_eq!(
            (got.host.as_str(), got.port),
            ("[2409:8080:5801:824f:2::12]", Some(6443))
        );
        let note = got.surprise.expect("the whole is an IPv6 address too: reported");
        assert!(note.contains("2409:8080:5801:824f:2:0:12:6443"), "{note}");
        let got = server_addr("ipv6@fd00::1:80").unwrap();
        assert_eq!((got.host.as_str(), got.port), ("[fd00::1]", Some(80)));
        assert!(got.surprise.is_some());
        // Nine groups are no IPv6 address: only one reading, nothing to report.
        let got = server_addr("2001:db8:1:2:3:4:5:6:443").unwrap();
        assert_eq!(
            (got.host.as_str(), got.port, got.surprise),
            ("[2001:db8:1:2:3:4:5:6]", Some(443), None)
        );
        // A trailing colon: no port, as in HAProxy (port 0).
        let got = server_addr("fd00::1:").unwrap();
        assert_eq!((got.host.as_str(), got.port), ("[fd00::1]", None));
        // What HAProxy cannot resolve after taking the port, it refuses.
        for word in ["fd00::1", "::1", "ipv6@fd00::1", "2409:8080:5801:824f:2:0:12:6443"] {
            let e = server_addr(word).unwrap_err();
            assert!(e.contains("refuses this line"), "{word}: {e}");
        }
    }

    #[test]
    fn names_gatehouse_refuses_are_mended() {
        assert_eq!(gatehouse_name("k8s-api"), None);
        assert_eq!(gatehouse_name("be:web/1"), Some("be-web-1".into()));
    }
}
