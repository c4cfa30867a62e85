//! `gatehouse import`: an HAProxy configuration turned into a gatehouse one, with a
//! report of every line translated, approximated (and how) or dropped (and why).
//!
//! The steps, each its own module: [`lexer`] cuts the text as HAProxy does, [`model`]
//! groups it into sections and reads HAProxy's values, [`settings`] reads proxy
//! keywords and [`server_opts`] server options, [`rules`] a frontend's ACLs and rules,
//! [`translate`] (with [`global`]) and [`backend`] decide what gatehouse makes of them
//! ([`limits`] of per-server limits and queues, [`monitor`] of `monitor-uri`
//! frontends), [`emit`] writes the TOML and [`report`] the verdicts. The result is
//! validated by [`crate::config`] before it is handed out: an import never produces a
//! file `gatehouse check` refuses. The command line lives in `cli/import.rs`.

pub mod backend;
pub mod bind;
pub mod emit;
pub mod global;
pub mod lexer;
pub mod limits;
pub mod model;
pub mod monitor;
pub mod report;
pub mod rules;
pub mod server_opts;
pub mod settings;
pub mod translate;

use std::collections::BTreeMap;

use report::{Report, Verdict};

/// A finished import: the gatehouse TOML and the report.
#[derive(Debug, Clone)]
pub struct Import {
    pub toml: String,
    pub report: Report,
}

impl Import {
    /// 0 when every line was translated exactly, 1 when something was approximated
    /// or dropped.
    pub fn exit_code(&self) -> u8 {
        match self.report.worst() {
            Verdict::Translated => 0,
            _ => 1,
        }
    }
}

/// Why an import produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Parse { file: String, line: usize, message: String },
    #[error(
        "{file}: nothing to import: no `mode tcp` frontend or listen with a bind and a usable backend \
         (the report above says why each was left out)"
    )]
    Nothing { file: String, report: Report },
    #[error("{file}: the imported configuration does not pass `gatehouse check`:\n{errors}")]
    Invalid {
        file: String,
        errors: String,
        report: Report,
    },
}

impl ImportError {
    /// The report, when the file was read far enough to have one.
    pub fn report(&self) -> Option<&Report> {
        match self {
            ImportError::Nothing { report, .. } | ImportError::Invalid { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// Imports HAProxy configuration `text`; `file` names it in the report and comments,
/// `env` looks up `${VARIABLES}`.
pub fn import_haproxy(text: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Import, ImportError> {
    let parse_error = |e: lexer::LexError| ImportError::Parse {
        file: file.to_string(),
        line: e.line,
        message: e.message,
    };
    let lines = lexer::lex(text, env).map_err(parse_error)?;
    let mut report = Report::new(file);
    if let Some(last) = lexer::missing_final_newline(text) {
        let raw = text.rsplit('\n').next().unwrap_or_default();
        report.note(
            last,
            raw.split('#').next().unwrap_or(raw).trim(),
            Verdict::Approximated,
            "the file ends without a line feed: HAProxy refuses it (\"Missing LF on last line, file might have \
             been truncated\"); read here as if it had one",
        );
    }
    for l in &lines {
        for e in &l.expansions {
            let how = match e.source {
                lexer::ExpansionSource::Environment => "from the environment of this import",
                lexer::ExpansionSource::Default => "its default: the variable is not set here",
                lexer::ExpansionSource::Unset => "empty: the variable is not set here, as HAProxy would",
            };
            report.note(
                l.number,
                &l.text,
                Verdict::Approximated,
                format!(
                    "${{{}}} expanded to {:?} ({how}); gatehouse's file holds the value, not the variable",
                    e.name, e.value
                ),
            );
        }
    }
    let texts: BTreeMap<usize, String> = lines.iter().map(|l| (l.number, l.text.clone())).collect();
    let sections = model::sections(lines).map_err(parse_error)?;
    let output = translate::translate(&sections, &mut report);
    if output.listeners.is_empty() {
        return Err(ImportError::Nothing {
            file: file.to_string(),
            report,
        });
    }
    let toml = emit::render(&output, file, &texts);
    if let Err(e) = crate::config::Config::parse(&toml, "imported") {
        return Err(ImportError::Invalid {
            file: file.to_string(),
            errors: e.to_string(),
            report,
        });
    }
    Ok(Import { toml, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// A skeleton that imports, each section then given random lines.
    const SECTIONS: &[&str] = &[
        "global",
        "defaults",
        "frontend f1\n    bind *:6443\n    default_backend b1",
        "frontend f2\n    bind 10.0.0.1:8443",
        "backend b1\n    server s0 10.0.0.1:6443 check",
        "backend b2",
        "backend b1.example.org\n    server s0 10.0.0.3:6443 check",
        "listen l1\n    bind 10.0.0.5:25",
        "resolvers r",
        "peers p",
    ];
    const LINES: &[&str] = &[
        "mode tcp",
        "mode http",
        "bind *:6443",
        "bind :::443 v4v6",
        "bind 10.0.0.1:80,10.0.0.2:80",
        "bind :1000-2000",
        "bind \"${PORT}\"",
        "default_backend b1",
        "default_backend b2",
        "default_backend missing",
        "use_backend b2 if { req.ssl_sni -i x.example }",
        "use_backend b1 if { req_ssl_sni -m end .example } or { req.ssl_sni -i y.example }",
        "use_backend b2 if !{ req.ssl_sni -i x.example }",
        "use_backend missing if { req.ssl_sni bad_name! }",
        "acl a req.ssl_sni -i -m dom example",
        "use_backend b2 if a",
        "use_backend b1 if undefined_acl",
        "tcp-request inspect-delay 3s",
        "tcp-request content accept if { req_ssl_hello_type 1 }",
        "tcp-request connection reject if !{ src 10.0.0.0/8 fd00::/8 }",
        "tcp-request connection reject if !{ src 10.0.0.1/8 }",
        "bind :8443 accept-proxy tcp-ut 5s",
        "bind :9443 tcp-ut 0",
        "server s6 10.0.0.6:80 check send-proxy-v2 check-send-proxy tcp-ut 2s",
        "server s7 10.0.0.7:80 check send-proxy no-send-proxy check-send-proxy",
        "default-server send-proxy",
        "server s1 10.0.0.1:80 check",
        "server s2 host.lan:80 check inter 0 rise 0 fall 0 weight 0",
        "server s3 10.0.0.3 check backup port 8080",
        "server s1 10.0.0.9:80 check disabled",
        "server s4 [fd00::1]:443 check check-ssl verify none sni str(a) crt c.pem",
        "server s5 unix@/x",
        "default-server inter 1s fall 2 rise 2 slowstart 1m on-marked-down shutdown-sessions",
        "balance source",
        "balance random(3)",
        "balance first",
        "hash-type consistent",
        "option httpchk GET /healthz",
        "http-check expect status 200,204",
        "http-check expect string ok",
        "option ssl-hello-chk",
        "tcp-check connect port 1 ssl sni x",
        "timeout connect 0",
        "timeout client 1m",
        "timeout server 10s",
        "timeout check 500ms",
        "retries 200",
        "maxconn 0",
        "stats socket /run/h.sock",
        "nameserver d 1.1.1.1:53",
        "hard-stop-after 1m",
        "frobnicate",
        "\"\"",
        ".if defined(X)",
        "server s8 10.0.0.8:80 check maxconn 10 maxqueue 5",
        "server s9 fd00::9:443 check maxconn 0 minconn 2",
        "server s:10 2409:8080:5801:824f:2::12:6443 backup",
        "server s11 fd00::1 check",
        "default-server maxconn 3 minconn 1 maxqueue 2",
        "timeout queue 2s",
        "timeout queue 0",
        "monitor-uri /healthz",
        "monitor fail if { nbsrv(b1) lt 1 }",
        "default_backend b1.example.org",
    ];

    fn random_config(rng: &mut SmallRng) -> String {
        let mut text = String::new();
        for section in SECTIONS {
            text.push_str(section);
            text.push('\n');
            for _ in 0..rng.random_range(0..5) {
                text.push_str("    ");
                text.push_str(LINES[rng.random_range(0..LINES.len())]);
                text.push('\n');
            }
        }
        text
    }

    #[test]
    fn random_configs_import_to_a_checked_config_or_a_located_error() {
        let mut rng = SmallRng::seed_from_u64(13);
        let env = |n: &str| (n == "PORT").then(|| ":8443".to_string());
        let mut outcomes = [0usize; 3];
        let mut invalid = Vec::new();
        for _ in 0..2000 {
            let text = random_config(&mut rng);
            match import_haproxy(&text, "fuzz.cfg", &env) {
                Ok(i) => {
                    outcomes[0] += 1;
                    let reported = i.report.render().lines().count() - 1;
                    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
                    assert_eq!(
                        reported,
                        lines,
                        "every line reported once:\n{text}\n{}",
                        i.report.render()
                    );
                }
                Err(ImportError::Invalid { errors, .. }) => {
                    outcomes[1] += 1;
                    invalid.push(format!("{text}\n=> {errors}"));
                }
                Err(_) => outcomes[2] += 1,
            }
        }
        assert!(
            invalid.is_empty(),
            "the import wrote invalid configs:\n{}",
            invalid.join("\n\n")
        );
        assert!(
            outcomes[0] > 1000,
            "too few configs imported (ok, invalid, parse error): {outcomes:?}"
        );
    }
}

#[cfg(test)]
mod translation_tests {
    use super::*;

    fn run(text: &str) -> Import {
        import_haproxy(text, "t.cfg", &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    const TAIL: &str = "frontend f\n  bind :80\n  default_backend b\n";

    #[test]
    fn a_proxy_takes_the_named_defaults_it_names_with_from() {
        let i = run(&format!(
            "defaults fast\n  mode tcp\n  timeout connect 1s\ndefaults slow\n  mode tcp\n  timeout connect 9s\n\
             backend b from fast\n  server s 10.0.0.1:80\n{TAIL}"
        ));
        assert!(i.toml.contains("connect_timeout = \"1s\""), "{}", i.toml);
    }

    #[test]
    fn source_hashing_without_hash_type_consistent_is_approximated() {
        let i = run(&format!("backend b\n  balance source\n  server s 10.0.0.1:80\n{TAIL}"));
        assert_eq!(
            i.report.verdict(2),
            Some(Verdict::Approximated),
            "{}",
            i.report.render()
        );
        let i = run(&format!(
            "backend b\n  balance source\n  hash-type consistent\n  server s 10.0.0.1:80\n{TAIL}"
        ));
        assert_eq!(i.report.verdict(2), Some(Verdict::Translated), "{}", i.report.render());
    }

    #[test]
    fn a_backend_without_check_gets_no_active_check() {
        let i = run(&format!("backend b\n  server s 10.0.0.1:80\n{TAIL}"));
        assert!(i.toml.contains("health = { check = \"none\" }"), "{}", i.toml);
    }

    #[test]
    fn an_unconditional_use_backend_wins_over_default_backend() {
        let i = run("backend a\n  server s 10.0.0.1:80\nbackend b\n  server s 10.0.0.2:80\n\
             frontend f\n  bind :80\n  use_backend b\n  default_backend a\n");
        assert!(i.toml.contains("backend = \"b\""), "{}", i.toml);
    }

    const ROUTED: &str = "backend a\n  server s 10.0.0.1:443\nbackend b\n  server s 10.0.0.2:443\n\
         backend c\n  server s 10.0.0.3:443\nfrontend f\n  bind :443\n  tcp-request inspect-delay 2s\n";

    #[test]
    fn a_name_an_earlier_sni_rule_takes_is_left_out_of_later_routes() {
        let i = run(&format!(
            "{ROUTED}  use_backend a if {{ req.ssl_sni -i x.example }}\n  \
             use_backend b if {{ req.ssl_sni -i X.example y.example }}\n  default_backend c\n"
        ));
        assert!(
            i.toml
                .contains("{ sni = [\"x.example\"], backend = \"a\" },\n  { sni = [\"y.example\"], backend = \"b\" },"),
            "{}",
            i.toml
        );
        assert!(
            i.report
                .render()
                .contains("x.example: left out, the rule on line 10 takes it first"),
            "{}",
            i.report.render()
        );
    }

    #[test]
    fn an_exact_name_behind_an_earlier_suffix_rule_is_approximated() {
        let i = run(&format!(
            "{ROUTED}  use_backend a if {{ req.ssl_sni -i -m end .example }}\n  \
             use_backend b if {{ req.ssl_sni -i k8s.example }}\n  default_backend c\n"
        ));
        assert_eq!(
            i.report.verdict(10),
            Some(Verdict::Approximated),
            "{}",
            i.report.render()
        );
        assert!(
            i.toml.contains("{ sni = [\"*.example\"], backend = \"a\" }"),
            "{}",
            i.toml
        );
        assert!(
            i.toml.contains("{ sni = [\"k8s.example\"], backend = \"b\" }"),
            "{}",
            i.toml
        );
    }

    #[test]
    fn sni_rules_gatehouse_cannot_express_are_dropped_and_their_acls_with_them() {
        let i = run(&format!(
            "{ROUTED}  acl odd req.ssl_sni -m reg ^a\n  use_backend a if odd\n  \
             use_backend b unless {{ req.ssl_sni -i x.example }}\n  default_backend c\n"
        ));
        for line in [10, 11, 12] {
            assert_eq!(
                i.report.verdict(line),
                Some(Verdict::Dropped),
                "line {line}: {}",
                i.report.render()
            );
        }
        assert!(!i.toml.contains("routes"), "{}", i.toml);
        assert_eq!(
            i.report.verdict(9),
            Some(Verdict::Dropped),
            "inspect-delay without routes: {}",
            i.report.render()
        );
    }

    #[test]
    fn rules_after_an_unconditional_use_backend_are_never_reached() {
        let i = run(&format!(
            "{ROUTED}  use_backend c\n  use_backend a if {{ req.ssl_sni -i x.example }}\n"
        ));
        assert_eq!(i.report.verdict(11), Some(Verdict::Dropped), "{}", i.report.render());
        assert!(!i.toml.contains("routes"), "{}", i.toml);
    }

    #[test]
    fn servers_that_differ_in_send_proxy_are_approximated_to_the_first() {
        let i = run(&format!(
            "backend b\n  server s1 10.0.0.1:80 check send-proxy\n  server s2 10.0.0.2:80 check send-proxy-v2\n{TAIL}"
        ));
        assert!(i.toml.contains("send_proxy = \"v1\""), "{}", i.toml);
        assert!(
            i.toml.contains("send_proxy = true }"),
            "checks too, no check port: {}",
            i.toml
        );
        assert_eq!(
            i.report.verdict(3),
            Some(Verdict::Approximated),
            "{}",
            i.report.render()
        );
    }

    #[test]
    fn a_dotted_backend_name_is_quoted_where_it_is_a_table_key() {
        let i = run(
            "frontend f\n  bind :443\n  default_backend kodirsync.example.org_ipvANY\n\
                     backend kodirsync.example.org_ipvANY\n  server s 10.0.0.1:443\n",
        );
        assert!(
            i.toml.contains("[backend.\"kodirsync.example.org_ipvANY\"]"),
            "{}",
            i.toml
        );
        assert!(
            i.toml.contains("backend = \"kodirsync.example.org_ipvANY\""),
            "{}",
            i.toml
        );
    }

    #[test]
    fn an_ipv6_server_without_brackets_ends_in_its_port_and_is_reported() {
        let i = run(&format!(
            "backend b\n  server m1 2409:8080:5801:824f:2::12:6443\n{TAIL}"
        ));
        assert!(
            i.toml.contains("address = \"[2409:8080:5801:824f:2::12]:6443\""),
            "{}",
            i.toml
        );
        assert_eq!(
            i.report.verdict(2),
            Some(Verdict::Approximated),
            "{}",
            i.report.render()
        );
    }

    #[test]
    fn server_maxconn_and_timeout_queue_become_limits_and_a_queue() {
        let i = run(&format!(
            "defaults\n  timeout connect 3s\n  timeout queue 20s\nbackend b\n  default-server maxconn 250\n  \
             server s1 10.0.0.1:80\n  server s2 10.0.0.2:80 maxconn 10\n{TAIL}"
        ));
        assert!(
            i.toml.contains("max_connections = 10 }"),
            "the server's own: {}",
            i.toml
        );
        assert!(
            i.toml
                .contains("{ name = \"s1\", address = \"10.0.0.1:80\", max_connections = 250 }"),
            "{}",
            i.toml
        );
        assert!(i.toml.contains("queue_timeout = \"20s\""), "{}", i.toml);
        for line in [3, 5, 7] {
            assert_eq!(
                i.report.verdict(line),
                Some(Verdict::Translated),
                "line {line}: {}",
                i.report.render()
            );
        }
        let i = run(&format!(
            "defaults\n  timeout connect 3s\nbackend b\n  server s1 10.0.0.1:80 maxconn 5\n{TAIL}"
        ));
        assert!(
            i.toml.contains("queue_timeout = \"3s\""),
            "without timeout queue, HAProxy waits timeout connect: {}",
            i.toml
        );
    }

    #[test]
    fn maxqueue_bounds_the_queue_only_where_haproxy_queues_per_server() {
        let i = run(&format!(
            "backend b\n  server s1 10.0.0.1:80 maxconn 2 maxqueue 3\n{TAIL}"
        ));
        assert!(
            !i.toml.contains("\nmax_queue"),
            "roundrobin: no bound in HAProxy: {}",
            i.toml
        );
        assert!(
            i.toml.contains("may have meant: max_queue = 3\n"),
            "the bound shown: {}",
            i.toml
        );
        assert_eq!(i.report.verdict(2), Some(Verdict::Translated), "{}", i.report.render());
        let i = run(&format!(
            "backend b\n  balance source\n  hash-type consistent\n  server s1 10.0.0.1:80 maxconn 2 maxqueue 3\n{TAIL}"
        ));
        assert!(
            i.toml.contains("\nmax_queue = 3\n"),
            "source, one server: exact: {}",
            i.toml
        );
        assert_eq!(i.report.verdict(4), Some(Verdict::Translated), "{}", i.report.render());
    }

    #[test]
    fn a_monitor_uri_frontend_becomes_the_admin_listeners_healthz() {
        let i = run(&format!("frontend hz\n  bind *:8081\n  mode http\n  monitor-uri /healthz\n{TAIL}backend b\n  server s 10.0.0.1:80\n"));
        assert!(i.toml.contains("[admin]\n"), "{}", i.toml);
        assert!(i.toml.contains("listen = \"0.0.0.0:8081\""), "{}", i.toml);
        assert_eq!(
            i.report.verdict(1),
            Some(Verdict::Approximated),
            "{}",
            i.report.render()
        );
        let i = run(&format!(
            "frontend hz\n  bind :9000\n  mode http\n  monitor-uri /alive\n{TAIL}backend b\n  server s 10.0.0.1:80\n"
        ));
        assert!(
            i.report.render().contains("the path changes: /alive is now /healthz"),
            "{}",
            i.report.render()
        );
    }

    #[test]
    fn the_last_default_backend_counts_and_the_others_are_reported() {
        let i = run("backend a\n  server s 10.0.0.1:80\nbackend b\n  server s 10.0.0.2:80\n\
                     frontend f\n  bind :80\n  default_backend a\n  default_backend b\n");
        assert!(i.toml.contains("backend = \"b\""), "{}", i.toml);
        assert!(
            i.report
                .render()
                .contains("no effect: the default_backend on line 8 replaces it"),
            "{}",
            i.report.render()
        );
    }

    #[test]
    fn a_renamed_name_yields_to_one_gatehouse_takes_as_it_is() {
        let i = run(
            "backend k8s:api\n  server s 10.0.0.1:80\nbackend k8s-api\n  server s 10.0.0.2:80\n\
                     frontend f\n  bind :80\n  default_backend k8s-api\n",
        );
        assert!(
            i.toml.contains("[backend.k8s-api-1]") && i.toml.contains("[backend.k8s-api]"),
            "{}",
            i.toml
        );
        assert!(i.toml.contains("backend = \"k8s-api\""), "{}", i.toml);
        assert!(
            i.report.render().contains("named \"k8s-api-1\""),
            "{}",
            i.report.render()
        );
    }

    #[test]
    fn keywords_outside_any_section_are_refused_with_their_line() {
        let e = import_haproxy("\n  bind :80\nglobal\n", "t.cfg", &|_| None).unwrap_err();
        assert!(e.to_string().starts_with("t.cfg:2: "), "{e}");
    }
}
