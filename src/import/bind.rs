//! A frontend's `bind` lines: the addresses gatehouse binds (IPv6 wildcards made
//! dual-stack as Linux makes them) and the options it carries over (`accept-proxy`,
//! `tcp-ut`); every other option is reported.
//!
//! Owns reading a bind line; which listener keys follow is `translate`'s and `rules`'.

use std::time::Duration;

use super::lexer::Line;
use super::model::{bind_addrs, duration};
use super::report::{Report, Verdict};
use super::settings::At;

/// The binds of one section.
#[derive(Debug, Default)]
pub struct Binds {
    /// Addresses as gatehouse writes them, with their line.
    pub addrs: Vec<(String, usize)>,
    pub lines: Vec<usize>,
    /// Bind lines with `accept-proxy`.
    pub accept_proxy: Vec<usize>,
    /// `tcp-ut` of each bind that sets it.
    pub tcp_ut: Vec<At<Duration>>,
}

/// Bind options that take an argument, for options read only to be reported.
const BIND_ONE: &[&str] = &[
    "name",
    "crt",
    "ca-file",
    "maxconn",
    "backlog",
    "interface",
    "mss",
    "nice",
    "process",
    "thread",
    "user",
    "group",
    "uid",
    "gid",
    "mode",
    "namespace",
    "id",
    "level",
    "alpn",
    "ciphers",
    "ciphersuites",
    "curves",
    "ecdhe",
    "ssl-min-ver",
    "ssl-max-ver",
    "verify",
    "crl-file",
    "crt-list",
    "tcp-ut",
    "npn",
    "sigalgs",
    "client-sigalgs",
    "label",
    "proto",
    "severity-output",
    "ca-sign-file",
    "ca-sign-pass",
    "ca-verify-file",
    "quic-cc-algo",
];

impl Binds {
    /// Reads one `bind ADDR OPTIONS…` line, reporting it.
    pub fn read(&mut self, line: &Line, word: &str, opts: &[&str], report: &mut Report) {
        let mut say = |v: Verdict, note: String| report.note(line.number, &line.text, v, note);
        let addrs = match bind_addrs(word) {
            Ok(a) => a,
            Err(e) => return say(Verdict::Dropped, e),
        };
        let has = |o: &str| opts.contains(&o);
        let mut i = 0;
        while i < opts.len() {
            let o = opts[i];
            match o {
                "v4v6" | "v6only" | "name" | "id" => {}
                "accept-proxy" => self.accept_proxy.push(line.number),
                "tcp-ut" => match opts.get(i + 1).map(|t| duration(t)) {
                    Some(Ok(d)) if !d.is_zero() => self.tcp_ut.push(At {
                        value: d,
                        line: line.number,
                    }),
                    Some(Ok(_)) => say(
                        Verdict::Dropped,
                        "`tcp-ut 0` leaves the system's default; gatehouse's user_timeout stays".into(),
                    ),
                    Some(Err(e)) => say(Verdict::Dropped, format!("`tcp-ut`: {e}")),
                    None => say(Verdict::Dropped, "`tcp-ut` without a value".into()),
                },
                "maxconn" => say(
                    Verdict::Approximated,
                    "`maxconn` of one bind: max_connections limits the whole listener".into(),
                ),
                "ssl" | "crt" | "crt-list" => say(
                    Verdict::Dropped,
                    format!("`{o}`: gatehouse terminates no TLS; the client's TLS goes through to the servers"),
                ),
                "transparent" | "interface" | "namespace" | "defer-accept" | "tfo" | "backlog" | "mss" => say(
                    Verdict::Dropped,
                    format!("`{o}`: gatehouse does not set this socket option"),
                ),
                _ => say(Verdict::Dropped, format!("`{o}` has no equivalent in gatehouse")),
            }
            i += 1 + usize::from(BIND_ONE.contains(&o));
        }
        for a in addrs {
            let v6_any = a.ip.is_unspecified() && a.ip.is_ipv6();
            let mut rendered = vec![std::net::SocketAddr::new(a.ip, a.port).to_string()];
            if v6_any && !has("v6only") {
                // Linux binds [::] dual-stack by default (bindv6only=0); gatehouse's [::] is
                // IPv6 only, so IPv4 gets its own address.
                rendered.insert(0, format!("0.0.0.0:{}", a.port));
                say(
                    Verdict::Translated,
                    "[::] takes IPv4 too: bound as 0.0.0.0 and [::]".into(),
                );
            }
            for r in rendered {
                if !self.addrs.iter().any(|(b, _)| *b == r) {
                    self.addrs.push((r, line.number));
                }
            }
        }
        self.lines.push(line.number);
        say(Verdict::Translated, "bind".into());
    }
}
