//! A frontend's rules: `acl`, `tcp-request` and conditional `use_backend` lines, read
//! into what gatehouse can do with them — SNI `routes` (with `inspect_timeout` from
//! `tcp-request inspect-delay`) and the sources a `tcp-request connection` rule lets
//! in (`trusted` on an `accept-proxy` listener, `allow` on others).
//!
//! Owns HAProxy's condition syntax (named and anonymous ACLs, `!`, `or`, `if`/`unless`)
//! for the fetches gatehouse has an equivalent of: `req.ssl_sni` (exact names, `-m end`,
//! `-m dom`), `req.ssl_hello_type 1` and `src`. Every other rule is reported dropped.
//! Which backends exist is `translate`'s concern: routes name HAProxy backends until
//! [`imported_routes`] names the imported ones; [`listener_keys`] writes the keys.

use std::collections::HashMap;
use std::time::Duration;

use super::bind::Binds;
use super::emit::{self, Key};
use super::lexer::Line;
use super::model::duration;
use super::model::fmt_duration;
use super::report::{Report, Verdict};
use super::settings::At;
use crate::edge::sni::SniRoutes;
use crate::edge::source_rules::Cidr;

/// The lines of one proxy section this module reads, in order.
#[derive(Debug, Default)]
pub struct Rules {
    lines: Vec<Line>,
}

/// One `routes` entry, as HAProxy names its backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub sni: Vec<String>,
    pub backend: String,
    pub line: usize,
}

/// What the rules come to.
#[derive(Debug, Default)]
pub struct Routing {
    pub routes: Vec<Route>,
    pub inspect: Option<At<Duration>>,
    /// The sources a `tcp-request connection` rule lets in, and its line.
    pub sources: Option<At<Vec<String>>>,
}

/// One match of an ACL: a fetch, its flags, its patterns.
#[derive(Debug, Clone)]
struct Match {
    fetch: String,
    case_insensitive: bool,
    method: Option<String>,
    from_file: bool,
    patterns: Vec<String>,
}

impl Match {
    fn read(words: &[&str]) -> Option<Match> {
        let (fetch, rest) = words.split_first()?;
        let mut m = Match {
            fetch: fetch.to_string(),
            case_insensitive: false,
            method: None,
            from_file: false,
            patterns: Vec::new(),
        };
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                "-i" => m.case_insensitive = true,
                "-n" | "-u" => {}
                "-m" => {
                    m.method = rest.get(i + 1).map(|s| s.to_string());
                    i += 1;
                }
                "-f" | "-M" => {
                    m.from_file = true;
                    i += 1;
                }
                "--" => {
                    m.patterns.extend(rest[i + 1..].iter().map(|s| s.to_string()));
                    break;
                }
                p => m.patterns.push(p.to_string()),
            }
            i += 1;
        }
        Some(m)
    }

    fn kind(&self) -> Fetch {
        match self.fetch.as_str() {
            "req.ssl_sni" | "req_ssl_sni" => Fetch::Sni,
            "req.ssl_hello_type" | "req_ssl_hello_type" if self.patterns == ["1"] => Fetch::Hello,
            "src" => Fetch::Src,
            _ => Fetch::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    Sni,
    Hello,
    Src,
    Other,
}

/// A condition's term: an ACL (named: all its lines; anonymous: one) and `!`.
#[derive(Debug, Clone)]
struct Term {
    negated: bool,
    matches: Vec<Match>,
    /// The named ACL, for reporting its lines.
    name: Option<String>,
}

/// `if`/`unless` and an OR of ANDs of terms; `None` when an ACL is unknown.
fn condition(words: &[&str], acls: &[(String, Match, usize)]) -> Option<(bool, Vec<Vec<Term>>)> {
    let (unless, mut rest) = match words.split_first() {
        Some((&"if", r)) => (false, r),
        Some((&"unless", r)) => (true, r),
        _ => return None,
    };
    let mut ors = vec![Vec::new()];
    while let Some((&w, r)) = rest.split_first() {
        rest = r;
        if w == "or" || w == "||" {
            ors.push(Vec::new());
            continue;
        }
        let (negated, w) = match w.strip_prefix('!') {
            Some("") => {
                let (&next, r) = rest.split_first()?;
                rest = r;
                (true, next)
            }
            Some(n) => (true, n),
            None => (false, w),
        };
        let term = if w == "{" {
            let end = rest.iter().position(|x| *x == "}")?;
            let m = Match::read(&rest[..end])?;
            rest = &rest[end + 1..];
            Term {
                negated,
                matches: vec![m],
                name: None,
            }
        } else {
            let matches: Vec<Match> = acls.iter().filter(|a| a.0 == w).map(|a| a.1.clone()).collect();
            if matches.is_empty() {
                return None;
            }
            Term {
                negated,
                matches,
                name: Some(w.to_string()),
            }
        };
        ors.last_mut()?.push(term);
    }
    Some((unless, ors))
}

impl Rules {
    /// Keeps `line` if it is a rule this module reads: `acl`, `tcp-request`, or a
    /// `use_backend` with a condition.
    pub fn take(&mut self, line: &Line) -> bool {
        let w = &line.words;
        let ours = match w.first().map(String::as_str) {
            Some("acl" | "tcp-request") => true,
            Some("use_backend") => w.len() > 2,
            _ => false,
        };
        if ours {
            self.lines.push(line.clone());
        }
        ours
    }

    /// Reads the rules, reporting each line. `always` is the line of an unconditional
    /// `use_backend`, after which no rule is ever reached; `accept_proxy` says whose
    /// address `src` is in `tcp-request connection` rules (the balancer's).
    pub fn resolve(&self, always: Option<usize>, accept_proxy: bool, report: &mut Report) -> Routing {
        let read = self.read(always, accept_proxy, report);
        self.verdicts(read, report)
    }

    /// Reads each line, reporting those judged on their own.
    fn read(&self, always: Option<usize>, accept_proxy: bool, report: &mut Report) -> Read {
        let Read {
            mut routing,
            mut acls,
            mut used_acls,
            mut hello_lines,
            mut overridden,
        } = Read::default();
        let mut seen: Vec<(String, usize, String)> = Vec::new();
        for line in &self.lines {
            let w: Vec<&str> = line.words.iter().map(String::as_str).collect();
            let mut say = |v: Verdict, note: String| report.note(line.number, &line.text, v, note);
            match w.as_slice() {
                ["acl", name, m @ ..] => match Match::read(m) {
                    Some(m) => acls.push((name.to_string(), m, line.number)),
                    None => say(Verdict::Dropped, "an ACL without a fetch".into()),
                },
                ["use_backend", backend, cond @ ..] => {
                    if let Some(first) = always.filter(|a| *a < line.number) {
                        say(
                            Verdict::Dropped,
                            format!("never used: the rule on line {first} always matches first"),
                        );
                        continue;
                    }
                    match sni_condition(cond, &acls) {
                        Ok((patterns, names)) => {
                            used_acls.extend(names);
                            let route = route(backend, patterns, line.number, &mut seen, &mut say);
                            routing.routes.extend(route);
                        }
                        Err(why) => say(Verdict::Dropped, why),
                    }
                }
                ["tcp-request", "inspect-delay", t] => match duration(t) {
                    Ok(d) if !d.is_zero() => {
                        let before = routing.inspect.replace(At {
                            value: d,
                            line: line.number,
                        });
                        if let Some(b) = before {
                            overridden.push((b.line, line.number));
                        }
                    }
                    Ok(_) => say(Verdict::Dropped, "0: HAProxy does not wait at all".into()),
                    Err(e) => say(Verdict::Dropped, e),
                },
                ["tcp-request", "content", "accept", cond @ ..] => match hello_condition(cond, &acls) {
                    Some(name) => {
                        used_acls.extend(name);
                        hello_lines.push(line.number);
                    }
                    _ => say(
                        Verdict::Dropped,
                        "gatehouse waits for a ClientHello only (req.ssl_hello_type 1); other content rules are \
                         not carried over"
                            .into(),
                    ),
                },
                ["tcp-request", "connection", action @ ("reject" | "accept"), cond @ ..] => {
                    match sources(action, cond, &acls) {
                        Some((list, names)) if *action == "reject" => {
                            used_acls.extend(names);
                            let key = if accept_proxy { "trusted" } else { "allow" };
                            say(Verdict::Translated, format!("{key}: only these sources may connect"));
                            routing.sources = Some(At {
                                value: list,
                                line: line.number,
                            });
                        }
                        _ => say(
                            Verdict::Dropped,
                            "gatehouse's source rules are `allow`/`deny` lists (or `trusted` with accept_proxy); \
                             only `reject if !{ src … }` is carried over"
                                .into(),
                        ),
                    }
                }
                [k, kind, ..] => say(
                    Verdict::Dropped,
                    format!("`{k} {kind}` rules of this kind have no equivalent in gatehouse"),
                ),
                [k] => say(Verdict::Dropped, format!("`{k}` without a rule")),
                [] => {}
            }
        }
        Read {
            routing,
            acls,
            used_acls,
            hello_lines,
            overridden,
        }
    }

    /// The verdicts that depend on all the rules: `inspect-delay` set twice, waiting for
    /// a ClientHello with or without routes, ACLs used or not.
    fn verdicts(&self, read: Read, report: &mut Report) -> Routing {
        let Read {
            mut routing,
            acls,
            used_acls,
            hello_lines,
            overridden,
        } = read;
        let text = |n: usize| {
            self.lines
                .iter()
                .find(|l| l.number == n)
                .map_or("", |l| l.text.as_str())
        };
        for (old, new) in overridden {
            report.note(
                old,
                text(old),
                Verdict::Dropped,
                format!("line {new} sets it again, and the last one counts"),
            );
        }
        let routed = !routing.routes.is_empty();
        if let Some(i) = &routing.inspect {
            let (v, note) = if routed {
                (Verdict::Translated, "inspect_timeout")
            } else {
                (
                    Verdict::Dropped,
                    "gatehouse waits for a ClientHello only to route by SNI, and no route is carried over",
                )
            };
            report.note(i.line, text(i.line), v, note);
            if !routed {
                routing.inspect = None;
            }
        } else if routed {
            let line = routing.routes[0].line;
            report.note(
                line,
                "",
                Verdict::Approximated,
                "no `tcp-request inspect-delay`: HAProxy decides on whatever arrived first, gatehouse waits for the \
                 whole ClientHello (up to inspect_timeout, 5s)",
            );
        }
        for l in hello_lines {
            let (v, note) = if routed {
                (
                    Verdict::Translated,
                    "gatehouse waits for the whole ClientHello (up to inspect_timeout)",
                )
            } else {
                (
                    Verdict::Dropped,
                    "no SNI route is carried over: gatehouse does not wait for a ClientHello",
                )
            };
            report.note(l, text(l), v, note);
        }
        for (name, _, line) in &acls {
            let (v, note) = if used_acls.contains(name) {
                (Verdict::Translated, "used by a rule carried over")
            } else {
                (Verdict::Dropped, "used by no rule carried over")
            };
            report.note(*line, text(*line), v, note);
        }
        routing
    }
}

/// Whether a `tcp-request content accept` condition waits for a ClientHello and
/// nothing else (`req.ssl_hello_type 1`): `Some`, with the named ACL it uses if any.
fn hello_condition(cond: &[&str], acls: &[(String, Match, usize)]) -> Option<Option<String>> {
    match condition(cond, acls) {
        Some((false, ors))
            if ors.len() == 1
                && ors[0].len() == 1
                && !ors[0][0].negated
                && ors[0][0].matches.iter().all(|m| m.kind() == Fetch::Hello) =>
        {
            Some(ors[0][0].name.clone())
        }
        _ => None,
    }
}

/// What reading the rules gathers for the verdicts that depend on all of them.
#[derive(Default)]
struct Read {
    routing: Routing,
    acls: Vec<(String, Match, usize)>,
    /// The named ACLs a rule carried over uses.
    used_acls: Vec<String>,
    /// The `tcp-request content accept` lines that wait for a ClientHello.
    hello_lines: Vec<usize>,
    /// `inspect-delay` lines set again: (the earlier line, the later).
    overridden: Vec<(usize, usize)>,
}

/// Server-name patterns as gatehouse writes them, each with its verdict and note.
type Patterns = Vec<(String, Verdict, String)>;

/// The server-name patterns of a `use_backend` condition and the named ACLs it used;
/// `Err` says why it cannot be a route.
fn sni_condition(cond: &[&str], acls: &[(String, Match, usize)]) -> Result<(Patterns, Vec<String>), String> {
    const WHY: &str = "gatehouse routes by server name only (req.ssl_sni: exact names, `-m end` or `-m dom`); \
                       this condition is not carried over";
    let (unless, ors) = condition(cond, acls).ok_or_else(|| format!("{WHY} (or an ACL is not defined above it)"))?;
    if unless {
        return Err(WHY.into());
    }
    let mut out = Vec::new();
    let mut names = Vec::new();
    for and in &ors {
        // `{ req.ssl_hello_type 1 }` beside a name adds nothing: a name comes in a hello.
        let sni: Vec<&Term> = and
            .iter()
            .filter(|t| !t.matches.iter().all(|m| m.kind() == Fetch::Hello))
            .collect();
        let [t] = sni.as_slice() else { return Err(WHY.into()) };
        if t.negated || t.matches.iter().any(|m| m.kind() != Fetch::Sni || m.from_file) {
            return Err(WHY.into());
        }
        names.extend(and.iter().filter_map(|t| t.name.clone()));
        for m in &t.matches {
            let case = if m.case_insensitive {
                None
            } else {
                Some("HAProxy compares names case-sensitively without -i; gatehouse ignores case, as DNS does")
            };
            for p in &m.patterns {
                let lower = p.to_ascii_lowercase();
                let mut add = |name: String, v: Verdict, note: String| out.push((name, v, note));
                let (v, note) = match case {
                    Some(c) => (Verdict::Approximated, c.to_string()),
                    None => (Verdict::Translated, String::new()),
                };
                match m.method.as_deref() {
                    None | Some("str") => add(lower, v, note),
                    Some("end") => match lower.strip_prefix('.') {
                        Some(domain) => add(
                            format!("*.{domain}"),
                            Verdict::Approximated,
                            format!(
                                "`-m end {p}` matches names of any depth under {domain}; gatehouse's *.{domain} \
                                 matches one label"
                            ),
                        ),
                        None => {
                            let note = format!(
                                "`-m end {p}` matches any name ending so (even bad{lower}); gatehouse matches \
                                 {lower} and one label under it"
                            );
                            add(lower.clone(), Verdict::Approximated, note.clone());
                            add(format!("*.{lower}"), Verdict::Approximated, note);
                        }
                    },
                    Some("dom") => {
                        let note = format!(
                            "`-m dom {p}` matches {lower} anywhere between dots; gatehouse matches {lower} and one \
                             label under it"
                        );
                        add(lower.clone(), Verdict::Approximated, note.clone());
                        add(format!("*.{lower}"), Verdict::Approximated, note);
                    }
                    Some(other) => return Err(format!("`-m {other}`: {WHY}")),
                }
            }
        }
    }
    Ok((out, names))
}

/// A route from `patterns`, without those an earlier rule takes first in HAProxy;
/// `None` (reported) when nothing is left.
fn route(
    backend: &str,
    patterns: Patterns,
    line: usize,
    seen: &mut Vec<(String, usize, String)>,
    say: &mut dyn FnMut(Verdict, String),
) -> Option<Route> {
    let mut sni = Vec::new();
    for (p, v, note) in patterns {
        if let Err(e) = SniRoutes::new([(vec![p.clone()], ())]) {
            say(Verdict::Dropped, format!("{p}: {e}"));
            continue;
        }
        if let Some((_, first, _)) = seen.iter().find(|s| s.0 == p) {
            say(
                Verdict::Translated,
                format!("{p}: left out, the rule on line {first} takes it first (in HAProxy too)"),
            );
            continue;
        }
        // An earlier HAProxy suffix rule takes an exact name first; gatehouse prefers
        // the exact name.
        if !p.starts_with("*.") {
            if let Some((w, first, other)) = seen
                .iter()
                .find(|s| s.2 != backend && s.0.strip_prefix('*').is_some_and(|d| p.ends_with(d)))
            {
                say(
                    Verdict::Approximated,
                    format!(
                        "{p}: HAProxy's rule on line {first} ({w}) takes it first, to {other}; gatehouse prefers an \
                         exact name"
                    ),
                );
            }
        }
        if note.is_empty() {
            say(v, format!("routes: sni {p:?}"));
        } else {
            say(v, note);
        }
        seen.push((p.clone(), line, backend.to_string()));
        sni.push(p);
    }
    if sni.is_empty() {
        return None;
    }
    Some(Route {
        sni,
        backend: backend.to_string(),
        line,
    })
}

/// The sources of `reject if !{ src … }`, `reject unless { src … }` (or a named `src`
/// ACL), and the ACL names used.
fn sources(action: &str, cond: &[&str], acls: &[(String, Match, usize)]) -> Option<(Vec<String>, Vec<String>)> {
    if action != "reject" {
        return None;
    }
    let (unless, ors) = condition(cond, acls)?;
    let [and] = ors.as_slice() else { return None };
    let [t] = and.as_slice() else { return None };
    if t.negated == unless
        || t.matches
            .iter()
            .any(|m| m.kind() != Fetch::Src || m.from_file || m.method.is_some())
    {
        return None;
    }
    let list: Vec<String> = t.matches.iter().flat_map(|m| m.patterns.iter().cloned()).collect();
    if list.is_empty() || list.iter().any(|p| p.parse::<Cidr>().is_err()) {
        return None;
    }
    Some((list, t.name.clone().into_iter().collect()))
}

/// The routes of a frontend whose backends are imported, by their gatehouse names.
pub fn imported_routes(routing: &Routing, built: &HashMap<&str, String>, report: &mut Report) -> Vec<Route> {
    let mut out = Vec::new();
    for r in &routing.routes {
        match built.get(r.backend.as_str()) {
            Some(name) => out.push(Route {
                backend: name.clone(),
                ..r.clone()
            }),
            None => report.note(
                r.line,
                "",
                Verdict::Dropped,
                format!("backend {} is not imported (see its lines): no route", r.backend),
            ),
        }
    }
    out
}

/// A listener's `routes`, `inspect_timeout`, `accept_proxy` with `trusted`, or `allow`.
pub fn listener_keys(routing: &Routing, routes: &[Route], b: &Binds, t: &mut emit::Table, report: &mut Report) {
    if !routes.is_empty() {
        let list: Vec<String> = routes
            .iter()
            .map(|r| {
                let sni: Vec<String> = r.sni.iter().map(|n| emit::string(n)).collect();
                format!(
                    "  {{ sni = [{}], backend = {} }},",
                    sni.join(", "),
                    emit::string(&r.backend)
                )
            })
            .collect();
        let lines = routes.iter().map(|r| r.line).collect();
        t.set(Key::new("routes", format!("[\n{}\n]", list.join("\n")), lines));
        if let Some(i) = &routing.inspect {
            t.set(Key::new(
                "inspect_timeout",
                emit::string(&fmt_duration(i.value)),
                vec![i.line],
            ));
        }
    }
    let cidrs = |list: &[String]| {
        let quoted: Vec<String> = list.iter().map(|c| emit::string(c)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let sources = routing.sources.as_ref();
    if b.accept_proxy.is_empty() {
        if let Some(s) = sources {
            t.set(Key::new("allow", cidrs(&s.value), vec![s.line]));
        }
        return;
    }
    t.set(Key::new("accept_proxy", "true".into(), b.accept_proxy.clone()));
    for line in &b.accept_proxy {
        report.note(*line, "", Verdict::Translated, "accept_proxy = true");
    }
    if b.accept_proxy.len() < b.lines.len() {
        for line in b.lines.iter().filter(|l| !b.accept_proxy.contains(l)) {
            report.note(
                *line,
                "",
                Verdict::Approximated,
                "no accept-proxy here, but gatehouse sets accept_proxy per listener: this bind expects the header too",
            );
        }
    }
    match sources {
        Some(s) => t.set(Key::new("trusted", cidrs(&s.value), vec![s.line])),
        None => {
            t.set(
                Key::new("trusted", cidrs(&["0.0.0.0/0".into(), "::/0".into()]), vec![]).remark(
                    "HAProxy takes a PROXY header from anyone on an accept-proxy bind; gatehouse only from\n\
                     `trusted` sources. Narrow this to the balancers in front.",
                ),
            );
            for line in &b.accept_proxy {
                report.note(
                    *line,
                    "",
                    Verdict::Approximated,
                    "trusted = [\"0.0.0.0/0\", \"::/0\"]: HAProxy has no list of who may send the header (no \
                     `tcp-request connection reject if !{ src … }`); narrow it to the balancers in front",
                );
            }
        }
    }
}
