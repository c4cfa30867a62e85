//! The certificate watch of `tls` checks, through the real binary against TLS servers on
//! loopback presenting certificates made here with rcgen: valid, expired, for the wrong
//! name, from an unexpected issuer. Each is seen in `/metrics`, `/api/v1/status` and on
//! the status page (headless Chromium); `cert_failure = "down"` takes the bad ones down;
//! a list of `sni` gets one handshake per name; without `ca` the system roots (here
//! `SSL_CERT_FILE`) are the trust.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// 2030-01-01T00:00:00Z: the valid certificates' not-after.
const VALID_UNTIL: i64 = 1_893_456_000;
/// 2020-01-01T00:00:00Z: the expired certificate's not-after.
const EXPIRED_AT: i64 = 1_577_836_800;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(org: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::OrganizationName, org);
    params.distinguished_name.push(DnType::CommonName, format!("{org} CA"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate for `names`, valid until `not_after` (unix seconds), as rustls
/// serves it.
fn leaf(names: &[&str], ca: &Ca, not_after: i64) -> Arc<CertifiedKey> {
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = match not_after {
        VALID_UNTIL => rcgen::date_time_ymd(2030, 1, 1),
        EXPIRED_AT => rcgen::date_time_ymd(2020, 1, 1),
        other => panic!("no date for {other}"),
    };
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
    Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// Serves `default`, or the certificate named for the client's SNI.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    named: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello.server_name().and_then(|n| self.named.get(n));
        Some(named.unwrap_or(&self.default).clone())
    }
}

/// A TLS server on a fresh loopback address that shakes hands and closes; it records
/// the SNI of every handshake.
struct TlsServer {
    backend: Backend,
    snis: Arc<Mutex<Vec<String>>>,
}

impl TlsServer {
    fn start(default: Arc<CertifiedKey>, named: &[(&str, Arc<CertifiedKey>)]) -> TlsServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(BySni {
                    default,
                    named: named.iter().map(|(n, c)| (n.to_string(), c.clone())).collect(),
                })),
        );
        let snis = Arc::new(Mutex::new(Vec::new()));
        let seen = snis.clone();
        let backend = Backend::serve(SocketAddr::new(fresh_ip().into(), 0), move |mut tcp| {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(3)));
            let _ = tcp.set_write_timeout(Some(Duration::from_secs(3)));
            let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            while conn.is_handshaking() {
                if conn.complete_io(&mut tcp).is_err() {
                    break;
                }
            }
            if let Some(n) = conn.server_name() {
                seen.lock().unwrap().push(n.to_string());
            }
            conn.send_close_notify();
            let _ = conn.complete_io(&mut tcp);
        });
        TlsServer { backend, snis }
    }

    fn handshakes(&self) -> Vec<String> {
        self.snis.lock().unwrap().clone()
    }
}

/// The four servers of the issue: valid, expired, wrong name, unexpected issuer; the
/// CA file trusts both CAs, so that the staging one is wrong only by its issuer.
struct Four {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    servers: Vec<(&'static str, TlsServer)>,
}

fn four() -> Four {
    let prod = ca("Gatehouse Prod");
    let staging = ca("(STAGING) Gatehouse Prod");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, format!("{}{}", prod.pem, staging.pem)).unwrap();
    let servers = vec![
        (
            "valid",
            TlsServer::start(leaf(&["ingress.test"], &prod, VALID_UNTIL), &[]),
        ),
        (
            "expired",
            TlsServer::start(leaf(&["ingress.test"], &prod, EXPIRED_AT), &[]),
        ),
        (
            "wrong-name",
            TlsServer::start(leaf(&["other.test"], &prod, VALID_UNTIL), &[]),
        ),
        (
            "staging",
            TlsServer::start(leaf(&["ingress.test"], &staging, VALID_UNTIL), &[]),
        ),
    ];
    Four {
        _dir: dir,
        ca_file,
        servers,
    }
}

impl Four {
    fn config(&self, cert_failure: &str) -> String {
        let servers: Vec<String> = self.servers.iter().map(|(n, s)| server(n, s.backend.addr)).collect();
        let health = format!(
            r#"health = {{ check = "tls", sni = "ingress.test", ca = "{}", expect_issuer = "O=Gatehouse Prod", cert_failure = "{cert_failure}", interval = "200ms", timeout = "1s", rise = 1, fall = 1 }}"#,
            self.ca_file.display()
        );
        config(&servers, &health, "")
    }
}

/// The certificates of `pool/name` in the status API.
fn certificates(admin: SocketAddr, name: &str) -> Vec<serde_json::Value> {
    let v = status(admin);
    v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["name"] == "pool")
        .flat_map(|b| b["servers"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == name)
        .and_then(|s| s["certificates"].as_array().cloned())
        .unwrap_or_default()
}

/// The value of `metric` for pool/server/sni in `/metrics`.
fn metric(admin: SocketAddr, metric: &str, server: &str, sni: &str) -> Option<f64> {
    let (_, body) = http(admin, "GET", "/metrics", &[]);
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            l.contains(r#"backend="pool""#)
                && l.contains(&format!(r#"server="{server}""#))
                && l.contains(&format!(r#"sni="{sni}""#))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_for_certificates(admin: SocketAddr, names: &[&str]) {
    assert!(
        wait_until(Duration::from_secs(10), || names
            .iter()
            .all(|n| !certificates(admin, n).is_empty())),
        "not every server had a certificate in the status API within 10 s: {:#}",
        status(admin)
    );
}

#[test]
fn each_certificate_is_judged_in_metrics_and_status_and_the_server_stays_up_by_default() {
    let f = four();
    let g = Gatehouse::start(&f.config("alert"));
    let admin = g.admin();
    wait_for_certificates(admin, &["valid", "expired", "wrong-name", "staging"]);

    let want: [(&str, f64, f64, f64, &str); 4] = [
        ("valid", 1.0, 1.0, VALID_UNTIL as f64, ""),
        ("expired", 0.0, 1.0, EXPIRED_AT as f64, "expired"),
        (
            "wrong-name",
            0.0,
            1.0,
            VALID_UNTIL as f64,
            "not valid for ingress.test (it names other.test)",
        ),
        (
            "staging",
            0.0,
            0.0,
            VALID_UNTIL as f64,
            r#"does not contain "O=Gatehouse Prod""#,
        ),
    ];
    for (name, valid, issuer_ok, expiry, reason) in want {
        let m = |what| metric(admin, what, name, "ingress.test");
        assert_eq!(m("gatehouse_server_cert_valid"), Some(valid), "{name}: cert_valid");
        assert_eq!(
            m("gatehouse_server_cert_issuer_expected"),
            Some(issuer_ok),
            "{name}: cert_issuer_expected"
        );
        assert_eq!(
            m("gatehouse_server_cert_expiry_timestamp_seconds"),
            Some(expiry),
            "{name}: cert_expiry_timestamp_seconds"
        );
        let certs = certificates(admin, name);
        assert_eq!(certs.len(), 1, "{name}: one name at one address: {certs:#?}");
        let c = &certs[0];
        assert_eq!(c["sni"], "ingress.test", "{c:#}");
        assert_eq!(c["valid"], valid == 1.0, "{c:#}");
        assert_eq!(c["not_after"], expiry as i64, "{c:#}");
        let got = c["reason"].as_str().unwrap_or_default();
        assert!(got.contains(reason), "{name}: reason {got:?} lacks {reason:?}");
        if valid == 1.0 {
            assert!(c["reason"].is_null(), "{c:#}");
            assert!(
                c["issuer"].as_str().unwrap_or_default().contains("O=Gatehouse Prod"),
                "{c:#}"
            );
        }
        // The watch reports; it does not take the server down unless told to.
        assert_eq!(
            server_state(admin, "pool", name),
            "up",
            "{name} with cert_failure = alert"
        );
    }
    // The new families pass the linter operators' tools use.
    if let Some(promtool) = tool("promtool") {
        let (_, body) = http(admin, "GET", "/metrics", &[]);
        let (_, said) = promtool_check_metrics(&promtool, &body);
        assert!(
            !said.contains("gatehouse_server_cert"),
            "promtool check metrics:\n{said}"
        );
    } else {
        eprintln!("SKIPPED (in part): promtool is not installed; the certificate metrics were not linted");
    }
    // Seen afresh on every check (no resumed session hides it): checked_at moves on.
    let at = |c: &[serde_json::Value]| c[0]["checked_at"].as_f64().unwrap_or_default();
    let first = at(&certificates(admin, "valid"));
    assert!(
        wait_until(Duration::from_secs(5), || at(&certificates(admin, "valid")) > first),
        "checked_at stayed at {first} for 5 s with a 200 ms interval"
    );
    assert!(
        g.wait_log(
            "certificate of pool/expired for ingress.test is not valid: expired",
            Duration::from_secs(5)
        ),
        "the log names the bad certificate:\n{}",
        g.log()
    );
    println!(
        "reasons: {:?}",
        ["expired", "wrong-name", "staging"].map(|n| certificates(admin, n)[0]["reason"].clone())
    );
}

#[test]
fn cert_failure_down_takes_servers_with_bad_certificates_down() {
    let f = four();
    let g = Gatehouse::start(&f.config("down"));
    let admin = g.admin();
    wait_for_certificates(admin, &["valid", "expired", "wrong-name", "staging"]);
    let started = Instant::now();
    for (name, want) in [
        ("valid", "up"),
        ("expired", "down"),
        ("wrong-name", "down"),
        ("staging", "down"),
    ] {
        assert!(
            wait_until(Duration::from_secs(5), || server_state(admin, "pool", name) == want),
            "{name}: state {} (want {want}) after {:?}",
            server_state(admin, "pool", name),
            started.elapsed()
        );
    }
    // A chain that does not verify fails the handshake; an unexpected issuer fails after it.
    let result = |name: &str| {
        let v = status(admin);
        v["backends"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["check"]["last_result"].as_str().unwrap_or_default().to_string())
            .unwrap()
    };
    assert!(result("expired").contains("tls handshake"), "{}", result("expired"));
    assert!(
        result("staging").contains("certificate for ingress.test") && result("staging").contains("issuer"),
        "{}",
        result("staging")
    );
    assert_eq!(
        metric(admin, "gatehouse_server_cert_valid", "expired", "ingress.test"),
        Some(0.0),
        "refused certificates are still watched"
    );
}

#[test]
fn each_sni_gets_its_own_handshake_judged_against_the_system_roots() {
    let prod = ca("Gatehouse Prod");
    let stranger = ca("Someone Else");
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("system-roots.pem");
    std::fs::write(&bundle, &prod.pem).unwrap();
    // Known names get their certificate; any other name gets a self-made default one.
    let s = TlsServer::start(
        leaf(&["default.test"], &stranger, VALID_UNTIL),
        &[
            ("a.test", leaf(&["a.test"], &prod, VALID_UNTIL)),
            ("b.test", leaf(&["b.test"], &prod, EXPIRED_AT)),
        ],
    );
    let health =
        r#"health = { check = "tls", sni = ["a.test", "b.test", "c.test"], interval = "200ms", timeout = "1s" }"#;
    let cfg = config(&[server("ingress", s.backend.addr)], health, "");
    let g = Gatehouse::start_with(&cfg, &[("SSL_CERT_FILE", bundle.to_str().unwrap())]).unwrap();
    let admin = g.admin();
    assert!(
        wait_until(Duration::from_secs(10), || certificates(admin, "ingress").len() == 3),
        "three names watched: {:#?}",
        certificates(admin, "ingress")
    );
    let certs = certificates(admin, "ingress");
    let by: HashMap<&str, &serde_json::Value> = certs.iter().map(|c| (c["sni"].as_str().unwrap(), c)).collect();
    assert_eq!(by["a.test"]["valid"], true, "{:#}", by["a.test"]);
    assert!(
        by["b.test"]["reason"].as_str().unwrap().starts_with("expired"),
        "{:#}",
        by["b.test"]
    );
    let c = by["c.test"]["reason"].as_str().unwrap();
    assert!(
        c.contains("not valid for c.test") || c.contains("does not chain to the system roots"),
        "{c}"
    );
    for (sni, valid) in [("a.test", 1.0), ("b.test", 0.0), ("c.test", 0.0)] {
        assert_eq!(
            metric(admin, "gatehouse_server_cert_valid", "ingress", sni),
            Some(valid),
            "{sni}"
        );
    }
    let seen = s.handshakes();
    for sni in ["a.test", "b.test", "c.test"] {
        assert!(seen.iter().any(|n| n == sni), "a handshake for {sni}: {seen:?}");
    }
    assert_eq!(server_state(admin, "pool", "ingress"), "up");
    println!("handshakes so far: {}; c.test: {c}", seen.len());
}

// ---------------------------------------------------------------- status page

/// (server, sni, data-valid) of every certificate item of the rendered page.
fn cert_items(dom: &str) -> Vec<(String, String, String)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(tag[start..start + len].to_string())
    };
    dom.match_indices("<span class=\"cert ")
        .filter_map(|(i, _)| {
            let tag = &dom[i..i + dom[i..].find('>')?];
            Some((
                attr(tag, "data-server")?,
                attr(tag, "data-sni")?,
                attr(tag, "data-valid")?,
            ))
        })
        .collect()
}

#[test]
fn status_page_shows_each_certificate_and_why_it_is_bad() {
    let Some(bin) = tool("chromium") else {
        skip!("chromium is not installed (Debian package `chromium`); the status page was not rendered");
    };
    let f = four();
    let g = Gatehouse::start(&f.config("alert"));
    let admin = g.admin();
    wait_for_certificates(admin, &["valid", "expired", "wrong-name", "staging"]);
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{admin}/");
    let dom = chromium(&bin, &profile.path().join("p1"), &["--dump-dom".into()], &url);
    let mut items = cert_items(&dom);
    items.sort();
    let want: Vec<(String, String, String)> = [
        ("expired", "false"),
        ("staging", "false"),
        ("valid", "true"),
        ("wrong-name", "false"),
    ]
    .iter()
    .map(|(s, v)| (s.to_string(), "ingress.test".to_string(), v.to_string()))
    .collect();
    assert_eq!(items, want, "certificate items of the status page");
    for text in ["expired ", "not valid for ingress.test (it names other.test)"] {
        assert!(dom.contains(text), "the page says {text:?}");
    }
    assert!(
        dom.contains(r#"does not contain "O=Gatehouse Prod""#)
            || dom.contains("does not contain &quot;O=Gatehouse Prod&quot;"),
        "the page names the unexpected issuer"
    );

    // For a person to look at: <target>/certwatch-page.png (BIN is <target>/<profile>/gatehouse).
    let shot = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("certwatch-page.png");
    let png = screenshot(&bin, &profile.path().join("p2"), &url, &shot);
    assert!(png.starts_with(b"\x89PNG"), "no screenshot at {}", shot.display());
    eprintln!(
        "status page with certificates: {} ({} bytes)",
        shot.display(),
        png.len()
    );
}

#[test]
fn a_name_dropped_by_a_reload_stops_alerting() {
    let prod = ca("Gatehouse Prod");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &prod.pem).unwrap();
    let s = TlsServer::start(
        leaf(&["a.test"], &prod, VALID_UNTIL),
        &[("b.test", leaf(&["b.test"], &prod, EXPIRED_AT))],
    );
    let cfg = |sni: &str| {
        let health = format!(
            r#"health = {{ check = "tls", sni = {sni}, ca = "{}", cert_failure = "alert", interval = "200ms", timeout = "1s" }}"#,
            ca_file.display()
        );
        config(&[server("ingress", s.backend.addr)], &health, "")
    };
    let g = Gatehouse::start(&cfg(r#"["a.test", "b.test"]"#));
    let admin = g.admin();
    assert!(
        wait_until(Duration::from_secs(10), || metric(
            admin,
            "gatehouse_server_cert_valid",
            "ingress",
            "b.test"
        ) == Some(0.0)),
        "b.test's expired certificate is reported"
    );
    g.reload(&cfg(r#""a.test""#));
    let b = metric(admin, "gatehouse_server_cert_valid", "ingress", "b.test");
    assert!(
        b.is_some_and(f64::is_nan),
        "b.test no longer watched reads NaN, not 0: {b:?}"
    );
    let b_expiry = metric(
        admin,
        "gatehouse_server_cert_expiry_timestamp_seconds",
        "ingress",
        "b.test",
    );
    assert!(b_expiry.is_some_and(f64::is_nan), "{b_expiry:?}");
    assert_eq!(
        metric(admin, "gatehouse_server_cert_valid", "ingress", "a.test"),
        Some(1.0),
        "a.test still watched after the reload"
    );
    assert_eq!(
        certificates(admin, "ingress").len(),
        1,
        "{:#?}",
        certificates(admin, "ingress")
    );
}
