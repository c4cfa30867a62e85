//! HAProxy sections into a gatehouse configuration: `defaults` handed down to the
//! proxies, each `frontend` and `listen` into a `[[listener]]`, each `backend` and
//! `listen` into a `[backend.NAME]` (see `backend`); `global` and `resolvers` are read
//! by `global`. Every line is reported once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::backend::{self, rename_reason, unique_name, ServerLine};
use super::bind::Binds;
use super::emit::{self, Key, Output};
use super::global::{self, Global};
use super::lexer::Line;
use super::model::{self, fmt_duration, Kind, Section};
use super::monitor::{self, Monitor};
use super::report::{Report, Verdict};
use super::rules::{self, Routing, Rules};
use super::server_opts;
use super::settings::{self, At, Settings};

/// A `frontend`, `backend` or `listen` section, read.
struct Proxy<'a> {
    section: &'a Section,
    settings: Settings,
    http: bool,
    bind: Binds,
    backend: Option<At<String>>,
    servers: Vec<ServerLine>,
    routing: Routing,
    /// A `monitor-uri` frontend, for the admin listener.
    monitor: Option<Monitor>,
}

pub fn translate(sections: &[Section], report: &mut Report) -> Output {
    let mut out = Output::default();
    let mut global = Global::default();
    let mut named_defaults: HashMap<String, Settings> = HashMap::new();
    let mut last_defaults = Settings::default();
    let mut main_defaults: Option<Settings> = None;
    let mut proxies: Vec<Proxy> = Vec::new();
    let mut resolvers_seen = 0;
    for section in sections {
        let h = &section.header;
        match section.kind {
            Kind::Global => {
                report.note(h.number, &h.text, Verdict::Translated, "");
                for line in &section.body {
                    if !conditional(line, report) {
                        global::apply(line, &mut global, &mut out, report);
                    }
                }
            }
            Kind::Resolvers => {
                resolvers_seen += 1;
                global::resolvers(section, resolvers_seen > 1, &mut out, report);
            }
            Kind::Other => {
                let why = format!("a {} section has no equivalent in gatehouse", section.keyword());
                report.note(h.number, &h.text, Verdict::Dropped, why.clone());
                for line in &section.body {
                    report.note(line.number, &line.text, Verdict::Dropped, why.clone());
                }
            }
            Kind::Defaults => {
                let mut s = inherited(section, &named_defaults, &Settings::default());
                report.note(
                    h.number,
                    &h.text,
                    Verdict::Translated,
                    "handed down to the sections below",
                );
                for line in &section.body {
                    if !conditional(line, report) && !settings::apply(line, &mut s, report) {
                        report.note(
                            line.number,
                            &line.text,
                            Verdict::Dropped,
                            format!("`{}` has no equivalent in gatehouse", line.keyword()),
                        );
                    }
                }
                if !section.name.is_empty() {
                    named_defaults.insert(section.name.clone(), s.clone());
                }
                last_defaults = s;
            }
            Kind::Frontend | Kind::Backend | Kind::Listen => {
                let s = inherited(section, &named_defaults, &last_defaults);
                let p = proxy(section, s, report);
                if !p.http && main_defaults.is_none() {
                    main_defaults = Some(inherited(section, &named_defaults, &last_defaults));
                }
                proxies.push(p);
            }
        }
    }
    let main = main_defaults.unwrap_or(last_defaults);
    defaults(&main, &global, &proxies, &mut out, report);
    backends_and_listeners(&proxies, &main, &global, &mut out, report);
    let monitors: Vec<Monitor> = proxies.iter().filter_map(|p| p.monitor.clone()).collect();
    monitor::apply(&monitors, &mut out, report);
    out
}

fn inherited(section: &Section, named: &HashMap<String, Settings>, last: &Settings) -> Settings {
    match &section.from {
        Some(name) => named.get(name).cloned().unwrap_or_default(),
        None => last.clone(),
    }
}

/// `.if`, `.else`, `.endif`, `.diag` …: reported, not evaluated.
fn conditional(line: &Line, report: &mut Report) -> bool {
    if !line.keyword().starts_with('.') {
        return false;
    }
    report.note(
        line.number,
        &line.text,
        Verdict::Dropped,
        "conditional blocks and diagnostics are not evaluated; the lines inside were imported as written",
    );
    true
}

/// Reads a proxy section, reporting every line but those `backend` judges.
fn proxy<'a>(section: &'a Section, mut s: Settings, report: &mut Report) -> Proxy<'a> {
    // The mode decides everything else; HAProxy's default is tcp.
    let own_mode = section.body.iter().find(|l| l.keyword() == "mode");
    let http = match own_mode {
        Some(l) => l.words.get(1).is_some_and(|m| m != "tcp"),
        None => s.http.as_ref().is_some_and(|h| h.value),
    };
    let mut p = Proxy {
        section,
        settings: Settings::default(),
        http,
        bind: Binds::default(),
        backend: None,
        servers: Vec::new(),
        routing: Routing::default(),
        monitor: None,
    };
    if http && section.kind != Kind::Backend && monitor::is_monitor(section) {
        p.monitor = monitor::read(section, report);
        return p;
    }
    if http {
        out_of_scope(section, report);
        return p;
    }
    let front = matches!(section.kind, Kind::Frontend | Kind::Listen);
    let back = matches!(section.kind, Kind::Backend | Kind::Listen);
    let mut rules = Rules::default();
    let mut choice = Choice::default();
    for line in &section.body {
        let w: Vec<&str> = line.words.iter().map(String::as_str).collect();
        if conditional(line, report) || (front && rules.take(line)) {
            continue;
        }
        let mut say = |v: Verdict, note: String| report.note(line.number, &line.text, v, note);
        match w.as_slice() {
            ["bind", addr, opts @ ..] if front => p.bind.read(line, addr, opts, report),
            ["default_backend", name] if front => choice.default_backend(line, name, report),
            ["use_backend", name] if front => choice.use_backend(line, name, report),
            ["use_backend", ..] => say(Verdict::Dropped, "`use_backend` belongs in a frontend".into()),
            ["acl", ..] | ["tcp-request", ..] | ["tcp-response", ..] => say(
                Verdict::Dropped,
                format!("`{}` rules have no equivalent in gatehouse", w[0]),
            ),
            ["server", name, addr, ..] if back => match model::server_addr(addr) {
                Ok(a) => {
                    let mut opts = server_opts::read(line, 3, report);
                    opts.inherit(&s.default_server);
                    p.servers.push(ServerLine {
                        line: line.clone(),
                        name: name.to_string(),
                        addr: a,
                        opts,
                    });
                }
                Err(e) => say(Verdict::Dropped, e),
            },
            [k, ..] if k.starts_with("stick") => say(
                Verdict::Dropped,
                "gatehouse has no stick tables; balance = \"source-hash\" keeps a client on one server".into(),
            ),
            _ => {
                if !settings::apply(line, &mut s, report) {
                    let k = line.keyword().to_string();
                    report.note(
                        line.number,
                        &line.text,
                        Verdict::Dropped,
                        format!(
                            "`{k}` has no equivalent in gatehouse (or does not belong in a {})",
                            section.keyword()
                        ),
                    );
                }
            }
        }
    }
    let always = choice.rule.as_ref().map(|r| r.line);
    p.routing = rules.resolve(always, !p.bind.accept_proxy.is_empty(), report);
    p.backend = choice.rule.or(choice.default);
    p.settings = s;
    p
}

/// Reports every line of a section in mode http, which gatehouse does not import.
fn out_of_scope(section: &Section, report: &mut Report) {
    let mut why = format!(
        "{} {} is in mode http: out of scope, gatehouse is an L4 (TCP) proxy",
        section.keyword(),
        section.name
    );
    if section
        .body
        .iter()
        .any(|l| l.words.starts_with(&["stats".into(), "enable".into()]))
    {
        why.push_str("; gatehouse's admin listener serves a status page and /metrics instead");
    }
    report.note(
        section.header.number,
        &section.header.text,
        Verdict::Dropped,
        why.clone(),
    );
    for l in &section.body {
        report.note(l.number, &l.text, Verdict::Dropped, why.clone());
    }
}

/// The backend a frontend names without a condition. An unconditional `use_backend`
/// wins over `default_backend`, wherever it is.
#[derive(Default)]
struct Choice {
    rule: Option<At<String>>,
    default: Option<At<String>>,
}

impl Choice {
    fn default_backend(&mut self, line: &Line, name: &str, report: &mut Report) {
        report.note(line.number, &line.text, Verdict::Translated, "backend");
        // HAProxy keeps the last default_backend of a section, without a word.
        if let Some(earlier) = &self.default {
            report.note(
                earlier.line,
                "",
                Verdict::Translated,
                format!(
                    "no effect: the default_backend on line {} replaces it, as in HAProxy",
                    line.number
                ),
            );
        }
        self.default = Some(At {
            value: name.to_string(),
            line: line.number,
        });
    }

    fn use_backend(&mut self, line: &Line, name: &str, report: &mut Report) {
        match &self.rule {
            Some(first) => report.note(
                line.number,
                &line.text,
                Verdict::Dropped,
                format!("never used: the rule on line {} always matches first", first.line),
            ),
            None => {
                report.note(
                    line.number,
                    &line.text,
                    Verdict::Translated,
                    "backend (a rule without a condition)",
                );
                self.rule = Some(At {
                    value: name.to_string(),
                    line: line.number,
                });
            }
        }
    }
}

fn idle(s: &Settings) -> Option<(Duration, Vec<usize>)> {
    if let Some(t) = &s.timeout_tunnel {
        return Some((t.value, vec![t.line]));
    }
    match (&s.timeout_client, &s.timeout_server) {
        (Some(c), Some(sv)) => Some((c.value.min(sv.value), vec![c.line, sv.line])),
        (Some(t), None) | (None, Some(t)) => Some((t.value, vec![t.line])),
        (None, None) => None,
    }
}

fn defaults(main: &Settings, g: &Global, proxies: &[Proxy], out: &mut Output, report: &mut Report) {
    if let Some(t) = &main.timeout_connect {
        out.defaults.set(Key::new(
            "connect_timeout",
            emit::string(&fmt_duration(t.value)),
            vec![t.line],
        ));
    }
    if let Some((d, lines)) = idle(main) {
        out.defaults
            .set(Key::new("idle_timeout", emit::string(&fmt_duration(d)), lines));
    }
    let retries = match &main.retries {
        Some(r) => Key::new("retries", r.value.min(100).to_string(), vec![r.line]),
        None => Key::new("retries", "3".into(), vec![]).remark("HAProxy's default"),
    };
    out.defaults.set(retries);
    // One user_timeout on the client side: the first bind's `tcp-ut`.
    let mut tcp_ut = proxies.iter().filter(|p| !p.http).flat_map(|p| &p.bind.tcp_ut);
    if let Some(first) = tcp_ut.next() {
        let value = fmt_duration(first.value);
        out.defaults
            .set(Key::new("user_timeout", emit::string(&value), vec![first.line]));
        report.note(
            first.line,
            "",
            Verdict::Translated,
            "[defaults] user_timeout (and towards servers of backends without their own tcp-ut)",
        );
        for t in tcp_ut {
            if t.value == first.value {
                report.note(t.line, "", Verdict::Translated, "[defaults] user_timeout");
            } else {
                report.note(
                    t.line,
                    "",
                    Verdict::Approximated,
                    format!(
                        "gatehouse has one user_timeout for all listeners: {value} as on line {}",
                        first.line
                    ),
                );
            }
        }
    }
    if let Some(m) = &g.maxconn {
        out.defaults
            .set(Key::new("max_connections", m.value.to_string(), vec![m.line]));
    }
    if let Some(h) = &g.hard_stop_after {
        out.defaults.set(Key::new(
            "drain_timeout",
            emit::string(&fmt_duration(h.value)),
            vec![h.line],
        ));
    }
}

fn backends_and_listeners(proxies: &[Proxy], main: &Settings, g: &Global, out: &mut Output, report: &mut Report) {
    let tcp: Vec<&Proxy> = proxies.iter().filter(|p| !p.http).collect();
    let built = backends(&tcp, main, g, out, report);
    listeners(&tcp, main, &built, out, report);
    // client and server timeouts that differ become their minimum.
    if let (Some(c), Some(s), None) = (&main.timeout_client, &main.timeout_server, &main.timeout_tunnel) {
        if c.value != s.value {
            for line in [c.line, s.line] {
                report.note(
                    line,
                    "",
                    Verdict::Approximated,
                    "client and server timeouts differ: idle_timeout is the shorter (one timeout for both sides)",
                );
            }
        }
    }
}

/// Ports bound by the listeners of each backend, for servers without a port.
fn listener_ports<'p>(tcp: &[&'p Proxy]) -> BTreeMap<&'p str, Vec<u16>> {
    let mut ports: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    for p in tcp {
        let target = match p.section.kind {
            Kind::Listen => Some(p.section.name.as_str()),
            _ => p.backend.as_ref().map(|b| b.value.as_str()),
        };
        let routed = p.routing.routes.iter().map(|r| r.backend.as_str());
        for t in target.into_iter().chain(routed) {
            let e = ports.entry(t).or_default();
            for (b, _) in &p.bind.addrs {
                if let Some(port) = b.rsplit(':').next().and_then(|x| x.parse().ok()) {
                    if !e.contains(&port) {
                        e.push(port);
                    }
                }
            }
        }
    }
    ports
}

/// The names of the sections of these kinds that gatehouse takes as they are: they
/// keep them, and a renamed one yields on a clash.
fn valid_names(tcp: &[&Proxy], kinds: [Kind; 2]) -> Vec<String> {
    tcp.iter()
        .filter(|p| kinds.contains(&p.section.kind) && model::gatehouse_name(&p.section.name).is_none())
        .map(|p| p.section.name.clone())
        .collect()
}

/// Each `backend` and `listen` section as a `[backend.NAME]`: the names gatehouse
/// gave those it built, by HAProxy's name.
fn backends<'p>(
    tcp: &[&'p Proxy],
    main: &Settings,
    g: &Global,
    out: &mut Output,
    report: &mut Report,
) -> HashMap<&'p str, String> {
    let ports = listener_ports(tcp);
    let valid_backends = valid_names(tcp, [Kind::Backend, Kind::Listen]);
    let mut built: HashMap<&str, String> = HashMap::new();
    for p in tcp
        .iter()
        .filter(|p| matches!(p.section.kind, Kind::Backend | Kind::Listen))
    {
        let name = p.section.name.as_str();
        let ctx = backend::Context {
            ca_base: g.ca_base.as_deref(),
            crt_base: g.crt_base.as_deref(),
            listener_port: ports.get(name).filter(|v| v.len() == 1).map(|v| v[0]),
        };
        let header = &p.section.header;
        if p.servers.is_empty() && p.section.kind == Kind::Listen && p.backend.is_some() {
            continue; // a listen that only routes elsewhere
        }
        let names_taken: Vec<String> = out
            .backends
            .iter()
            .map(|b| b.name.clone())
            .chain(others(&valid_backends, name))
            .collect();
        let gname = unique_name(name, header.number, &names_taken);
        let Some(mut b) = backend::build((name, &gname), header, &p.settings, &p.servers, &ctx, report) else {
            continue;
        };
        per_backend(&p.settings, main, &mut b, header, report);
        built.insert(name, b.name.clone());
        out.backends.push(b);
    }
    built
}

/// Each `frontend` and `listen` section with a bind gatehouse can use and a backend
/// it built as a `[[listener]]`.
fn listeners(tcp: &[&Proxy], main: &Settings, built: &HashMap<&str, String>, out: &mut Output, report: &mut Report) {
    let main_idle = idle(main).map(|i| i.0);
    let valid_listeners = valid_names(tcp, [Kind::Frontend, Kind::Listen]);
    // Each address to the listener that binds it.
    let mut taken: HashMap<String, String> = HashMap::new();
    for p in tcp
        .iter()
        .filter(|p| matches!(p.section.kind, Kind::Frontend | Kind::Listen))
    {
        let h = &p.section.header;
        let free = free_binds(p, &taken, report);
        if free.is_empty() {
            if p.section.kind == Kind::Frontend || !built.contains_key(p.section.name.as_str()) {
                report.note(
                    h.number,
                    &h.text,
                    Verdict::Dropped,
                    "no bind gatehouse can use: no listener",
                );
            }
            continue;
        }
        let routes = rules::imported_routes(&p.routing, built, report);
        let Some((target, target_line)) = default_target(p, &routes, report) else {
            report.note(h.number, &h.text, Verdict::Dropped, "no default_backend: no listener");
            continue;
        };
        let Some(gbackend) = built.get(target) else {
            not_imported(p, target, target_line, report);
            continue;
        };
        let names_taken: Vec<String> = out
            .listeners
            .iter()
            .filter_map(|l| l.table.get("name").map(|k| k.value.trim_matches('"').to_string()))
            .chain(others(&valid_listeners, &p.section.name))
            .collect();
        let name = unique_name(&p.section.name, h.number, &names_taken);
        if name != p.section.name {
            report.note(
                h.number,
                &h.text,
                Verdict::Approximated,
                format!("listener named {name:?}: {}", rename_reason(&p.section.name, &name)),
            );
        }
        for (b, _) in &free {
            taken.insert(b.clone(), name.clone());
        }
        let l = listener(p, &name, &free, (gbackend, target_line), &routes, report);
        // One idle_timeout serves every listener.
        if let (Some((d, lines)), Some(main)) = (idle(&p.settings), main_idle) {
            if d != main {
                for line in lines {
                    report.note(
                        line,
                        "",
                        Verdict::Approximated,
                        format!(
                            "gatehouse has one idle_timeout for all listeners: {}",
                            fmt_duration(main)
                        ),
                    );
                }
            }
        }
        out.listeners.push(l);
    }
}

/// The binds of `p` no listener before it has `taken`; the others are reported.
fn free_binds<'p>(p: &'p Proxy, taken: &HashMap<String, String>, report: &mut Report) -> Vec<&'p (String, usize)> {
    let mut free = Vec::new();
    for b in &p.bind.addrs {
        match taken.get(&b.0) {
            Some(other) => report.note(
                b.1,
                "",
                Verdict::Dropped,
                format!(
                    "{} is bound by listener {other:?} already: HAProxy shares it between both \
                     (SO_REUSEPORT), gatehouse binds an address once",
                    b.0
                ),
            ),
            None => free.push(b),
        }
    }
    free
}

/// The backend a listener sends clients no route takes, and the line that says so:
/// its default_backend, a listen section's own, else the first route's.
fn default_target<'p>(p: &'p Proxy, routes: &'p [rules::Route], report: &mut Report) -> Option<(&'p str, usize)> {
    let h = &p.section.header;
    match (&p.backend, p.section.kind) {
        (Some(b), _) => Some((b.value.as_str(), b.line)),
        (None, Kind::Listen) => Some((p.section.name.as_str(), h.number)),
        (None, _) => routes.first().map(|r| {
            report.note(
                h.number,
                &h.text,
                Verdict::Approximated,
                format!(
                    "no default_backend: HAProxy closes a client no rule routes; gatehouse sends it to {}, the \
                     backend of the first route",
                    r.backend
                ),
            );
            (r.backend.as_str(), r.line)
        }),
    }
}

/// Reports a listener whose backend `target` was not imported.
fn not_imported(p: &Proxy, target: &str, target_line: usize, report: &mut Report) {
    let h = &p.section.header;
    report.note(
        target_line,
        &h.text,
        Verdict::Dropped,
        format!("backend {target} is not imported (see its lines): no listener"),
    );
    report.note(
        h.number,
        &h.text,
        Verdict::Dropped,
        format!("its backend {target} is not imported: no listener"),
    );
    for l in &p.bind.lines {
        report.note(*l, "", Verdict::Dropped, "its listener is not imported");
    }
}

/// The `[[listener]]` of `p`, named `name`, bound to `free`, sending clients to
/// `backend` (gatehouse's name, and the line that chose it) or along `routes`.
fn listener(
    p: &Proxy,
    name: &str,
    free: &[&(String, usize)],
    (backend, target_line): (&str, usize),
    routes: &[rules::Route],
    report: &mut Report,
) -> emit::Listener {
    let h = &p.section.header;
    let mut l = emit::Listener {
        lines: vec![h.number],
        table: emit::Table::default(),
    };
    l.table.set(Key::new("name", emit::string(name), vec![]));
    let binds: Vec<String> = free.iter().map(|(b, _)| emit::string(b)).collect();
    l.table.set(Key::new(
        "bind",
        format!("[{}]", binds.join(", ")),
        p.bind.lines.clone(),
    ));
    let lines = if target_line == h.number {
        vec![]
    } else {
        vec![target_line]
    };
    l.table.set(Key::new("backend", emit::string(backend), lines));
    if let Some(m) = &p.settings.maxconn {
        l.table
            .set(Key::new("max_connections", m.value.to_string(), vec![m.line]));
    }
    rules::listener_keys(&p.routing, routes, &p.bind, &mut l.table, report);
    report.note(h.number, &h.text, Verdict::Translated, "[[listener]]");
    if target_line != h.number {
        report.note(target_line, "", Verdict::Translated, "backend");
    }
    l
}

/// The names of `all` but `name`.
fn others<'a>(all: &'a [String], name: &'a str) -> impl Iterator<Item = String> + 'a {
    all.iter().filter(move |n| *n != name).cloned()
}

/// connect_timeout and retries where the backend differs from `[defaults]`.
fn per_backend(s: &Settings, main: &Settings, b: &mut emit::Backend, header: &Line, report: &mut Report) {
    if let Some(t) = &s.timeout_connect {
        if main.timeout_connect.as_ref().map(|m| m.value) != Some(t.value) {
            b.table.set(Key::new(
                "connect_timeout",
                emit::string(&fmt_duration(t.value)),
                vec![t.line],
            ));
        }
    }
    let retries = s.retries.as_ref().map_or(3, |r| r.value);
    if retries != main.retries.as_ref().map_or(3, |r| r.value) {
        let lines = s.retries.as_ref().map(|r| r.line).into_iter().collect();
        b.table.set(Key::new("retries", retries.min(100).to_string(), lines));
    }
    if retries > 0 && !s.redispatch.as_ref().is_some_and(|r| r.value) {
        let line = s.retries.as_ref().map_or(header.number, |r| r.line);
        let live = b.servers.iter().filter(|x| x.commented.is_none()).count();
        let note = if live > 1 {
            let others = if retries == 1 {
                "another server".to_string()
            } else {
                format!("up to {retries} other servers")
            };
            format!(
                "HAProxy retries a failed connect on the same server (no `option redispatch`); gatehouse \
                 tries {others}"
            )
        } else {
            format!(
                "HAProxy retries a failed connect on the same server up to {retries} times; gatehouse retries \
                 on other servers only, and this backend has one"
            )
        };
        report.note(line, "", Verdict::Approximated, note);
    }
}
