//! Health checks through the real binary: an HTTPS `/readyz` that wants a client
//! certificate and flips between 200 and 500, and tls and http checks with their
//! reasons. What gatehouse does with their verdicts (failover, passive checks, backup
//! servers, `on_down`, slow start, no server up) is in `tests/failover.rs`.
//!
//! Detection bounds are derived from the check settings: `fall` (or `rise`) jittered
//! intervals (+10 %) plus the check timeout, plus a fixed slack for scheduling on a busy
//! machine and for the test's polling of the status API. Measured figures are printed.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::checks::*;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

// ---------------------------------------------------------------------------
// Certificates and a TLS `/readyz` server
// ---------------------------------------------------------------------------

/// A server CA, a server certificate for "kubernetes" and 127.0.0.1 signed by it, a
/// client CA and a client certificate signed by that, as files and as rustls material.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    /// A certificate for "kubernetes" from an issuer gatehouse does not trust.
    untrusted_chain: Vec<CertificateDer<'static>>,
    untrusted_key: Vec<u8>,
    client_ca: CertificateDer<'static>,
}

fn new_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert, key)
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, ca) = new_ca("gatehouse test server CA");
        let (server_cert, server_key) = leaf(
            &["kubernetes", "127.0.0.1"],
            "kube-apiserver",
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        let (client_ca_cert, client_ca) = new_ca("gatehouse test client CA");
        let (client_cert, client_key) = leaf(
            &["gatehouse-health"],
            "gatehouse-health",
            ExtendedKeyUsagePurpose::ClientAuth,
            &client_ca,
        );
        let (rogue_ca_cert, rogue_ca) = new_ca("a CA nobody trusts");
        let (untrusted_cert, untrusted_key) = leaf(
            &["kubernetes", "127.0.0.1"],
            "impostor",
            ExtendedKeyUsagePurpose::ServerAuth,
            &rogue_ca,
        );
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_path = write("ca.pem", ca_cert.pem());
        let client_cert_path = write("client.pem", client_cert.pem());
        let client_key_path = write("client-key.pem", client_key.serialize_pem());
        Pki {
            ca: ca_path,
            client_cert: client_cert_path,
            client_key: client_key_path,
            server_chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
            server_key: server_key.serialize_der(),
            untrusted_chain: vec![untrusted_cert.der().clone(), rogue_ca_cert.der().clone()],
            untrusted_key: untrusted_key.serialize_der(),
            client_ca: client_ca_cert.der().clone(),
            _dir: dir,
        }
    }

    /// A server config presenting the server certificate; with `require_client` it
    /// refuses any client without a certificate from the client CA.
    fn server_config(&self, require_client: bool, trusted: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.client_ca.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let (chain, key) = if trusted {
            (&self.server_chain, &self.server_key)
        } else {
            (&self.untrusted_chain, &self.untrusted_key)
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
        Arc::new(builder.with_single_cert(chain.clone(), key).unwrap())
    }

    /// The `health = { ... }` line of an https check, with or without the client certificate.
    fn https_health(&self, with_client_cert: bool) -> String {
        let client = if with_client_cert {
            format!(
                r#", cert = "{}", key = "{}""#,
                self.client_cert.display(),
                self.client_key.display()
            )
        } else {
            String::new()
        };
        format!(
            r#"health = {{ check = "https", path = "/readyz", expect = 200, body = "ok", interval = "200ms", timeout = "500ms", rise = 2, fall = 2, sni = "kubernetes", ca = "{}"{client} }}"#,
            self.ca.display()
        )
    }
}

/// A TLS server answering `GET /readyz` with the status in `status` ("ok" with 200).
struct Readyz {
    backend: Backend,
    status: Arc<AtomicU16>,
    /// Requests answered, each from a client that presented a verified certificate
    /// (when the server requires one).
    answered: Arc<AtomicUsize>,
    answered_with_cert: Arc<AtomicUsize>,
    /// Connections that ended before a request arrived (a handshake refused, or a
    /// `tls` check that only shakes hands).
    no_request: Arc<AtomicUsize>,
}

impl Readyz {
    fn start(config: Arc<rustls::ServerConfig>) -> Readyz {
        let status = Arc::new(AtomicU16::new(200));
        let answered = Arc::new(AtomicUsize::new(0));
        let answered_with_cert = Arc::new(AtomicUsize::new(0));
        let no_request = Arc::new(AtomicUsize::new(0));
        let backend = {
            let (status, answered, with_cert, no_request) = (
                status.clone(),
                answered.clone(),
                answered_with_cert.clone(),
                no_request.clone(),
            );
            Backend::serve(on_fresh_ip(), move |tcp| {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(3)));
                let _ = tcp.set_write_timeout(Some(Duration::from_secs(3)));
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut request = Vec::new();
                let mut chunk = [0u8; 2048];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => {
                            no_request.fetch_add(1, Ordering::AcqRel);
                            return;
                        }
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let (code, body) = if request.starts_with(b"GET /readyz ") {
                    match status.load(Ordering::Acquire) {
                        200 => (200, "ok"),
                        c => (c, "[-]etcd failed: reason withheld\nreadyz check failed"),
                    }
                } else {
                    (404, "not found")
                };
                if tls.conn.peer_certificates().is_some() {
                    with_cert.fetch_add(1, Ordering::AcqRel);
                }
                answered.fetch_add(1, Ordering::AcqRel);
                let _ = write!(
                    tls,
                    "HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            })
        };
        Readyz {
            backend,
            status,
            answered,
            answered_with_cert,
            no_request,
        }
    }

    fn set(&self, code: u16) {
        self.status.store(code, Ordering::Release);
    }
}

/// A plain HTTP server answering every request with a fixed status and body.
fn http_server(code: u16, body: &'static str) -> Backend {
    Backend::serve(on_fresh_ip(), move |mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut request = Vec::new();
        let mut chunk = [0u8; 2048];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = write!(
            s,
            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}

// ---------------------------------------------------------------------------
// 1. https /readyz with a client certificate; tls; http
// ---------------------------------------------------------------------------

#[test]
fn https_readyz_check_follows_a_server_flipping_between_200_and_500() {
    let pki = Pki::new();
    let api = Readyz::start(pki.server_config(true, true));
    let g = Gatehouse::start(&config(&[server("api", api.backend.addr)], &pki.https_health(true), ""));
    let admin = g.admin();
    assert_eq!(
        state(admin, "api"),
        "up",
        "first check of a 200 /readyz: {:#}",
        server_doc(admin, "api")
    );
    assert!(
        api.answered_with_cert.load(Ordering::Acquire) >= 1,
        "the check asked /readyz with a client certificate"
    );
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(500));

    let flipped = Instant::now();
    api.set(500);
    let down_bound = bound(2, interval, timeout);
    let down = wait_state(admin, "api", "down", Duration::from_secs(10));
    let down_after = flipped.elapsed();
    let down_ms = ms(down_after);
    assert!(down.is_some(), "still up {down_ms} ms after /readyz turned 500");
    assert!(
        down_after <= down_bound,
        "down after {down_ms} ms, bound fall × interval × 1.1 + timeout + slack = {} ms",
        ms(down_bound)
    );
    let doc = server_doc(admin, "api");
    let reason = doc["last_change_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("returned 500") && reason.contains("(2/2)"),
        "down reason {reason:?}: {doc:#}"
    );
    assert!(
        g.wait_log(
            "server pool/api DOWN: https /readyz returned 500; failing: etcd (2/2)",
            Duration::from_secs(5)
        ),
        "log of the transition:\n{}",
        g.log()
    );

    let flipped_back = Instant::now();
    api.set(200);
    let up_bound = bound(2, interval, timeout);
    let up = wait_state(admin, "api", "up", Duration::from_secs(10));
    let up_after = flipped_back.elapsed();
    let up_ms = ms(up_after);
    assert!(up.is_some(), "still down {up_ms} ms after /readyz turned 200");
    assert!(
        up_after <= up_bound,
        "up after {up_ms} ms, bound rise × interval × 1.1 + timeout + slack = {} ms",
        ms(up_bound)
    );
    let reason = server_doc(admin, "api")["last_change_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("returned 200 (2/2)"), "up reason {reason:?}");
    figure!(
        "https /readyz (interval 200ms, timeout 500ms, rise 2, fall 2): down after {down_ms} ms (bound {} ms), up after {up_ms} ms (bound {} ms)",
        ms(down_bound),
        ms(up_bound)
    );
}

#[test]
fn https_check_without_the_client_certificate_is_refused_and_stays_down() {
    let pki = Pki::new();
    let api = Readyz::start(pki.server_config(true, true));
    let g = Gatehouse::start(&config(
        &[server("api", api.backend.addr)],
        &pki.https_health(false),
        "",
    ));
    let admin = g.admin();
    // Several rounds: none of them may bring it up.
    let refused = wait_until(Duration::from_secs(5), || api.no_request.load(Ordering::Acquire) >= 4);
    let doc = server_doc(admin, "api");
    let result = doc["check"]["last_result"].as_str().unwrap_or_default().to_string();
    assert!(
        refused,
        "the server saw {} refused handshakes",
        api.no_request.load(Ordering::Acquire)
    );
    assert_eq!(doc["state"], "down", "{doc:#}");
    assert_eq!(
        api.answered.load(Ordering::Acquire),
        0,
        "no request got past the handshake"
    );
    assert!(
        result.contains("https /readyz") && result.to_lowercase().contains("certificate"),
        "last result names the refused certificate: {result:?}"
    );
    println!("https check without a client certificate: down, last result {result:?}");
}

#[test]
fn tls_check_needs_a_handshake_with_a_trusted_certificate() {
    let pki = Pki::new();
    let good = Readyz::start(pki.server_config(false, true));
    let impostor = Readyz::start(pki.server_config(false, false));
    let plain = Backend::named(on_fresh_ip(), "not-tls");
    let health = format!(
        r#"health = {{ check = "tls", sni = "kubernetes", ca = "{}", interval = "200ms", timeout = "500ms", rise = 2, fall = 2 }}"#,
        pki.ca.display()
    );
    let g = Gatehouse::start(&config(
        &[
            server("good", good.backend.addr),
            server("impostor", impostor.backend.addr),
            server("plain", plain.addr),
        ],
        &health,
        "",
    ));
    let admin = g.admin();
    let docs: Vec<_> = ["good", "impostor", "plain"]
        .iter()
        .map(|n| server_doc(admin, n))
        .collect();
    assert_eq!(docs[0]["state"], "up", "{:#}", docs[0]);
    assert!(
        wait_until(Duration::from_secs(5), || good.no_request.load(Ordering::Acquire) >= 1),
        "the check shook hands with the good server"
    );
    for doc in &docs[1..] {
        let reason = doc["last_change_reason"].as_str().unwrap_or_default();
        let result = doc["check"]["last_result"].as_str().unwrap_or_default();
        assert_eq!(doc["state"], "down", "{doc:#}");
        assert!(
            reason.contains("tls handshake") && result.contains("tls handshake"),
            "reason {reason:?}, last result {result:?}"
        );
    }
    let impostor_reason = docs[1]["check"]["last_result"].as_str().unwrap_or_default();
    assert!(
        impostor_reason.contains("UnknownIssuer"),
        "a certificate from another CA is refused: {impostor_reason:?}"
    );
    println!(
        "tls check: impostor {:?}; plain {:?}",
        impostor_reason, docs[2]["check"]["last_result"]
    );
}

#[test]
fn http_check_wants_a_listed_status_and_the_body_string() {
    let s200 = http_server(200, "ok");
    let s204 = http_server(204, "ok");
    let s503 = http_server(503, "ok");
    let starting = http_server(200, "starting");
    let g = Gatehouse::start(&config(
        &[
            server("s200", s200.addr),
            server("s204", s204.addr),
            server("s503", s503.addr),
            server("starting", starting.addr),
        ],
        r#"health = { check = "http", path = "/readyz", expect = [200, 204], body = "ok", interval = "200ms", timeout = "500ms", rise = 2, fall = 2 }"#,
        "",
    ));
    let admin = g.admin();
    for name in ["s200", "s204"] {
        let doc = server_doc(admin, name);
        assert_eq!(doc["state"], "up", "{doc:#}");
        assert_eq!(doc["check"]["last_result"], "ok", "{doc:#}");
    }
    let cases = [
        ("s503", "http /readyz returned 503"),
        ("starting", "http /readyz returned 200 without \"ok\" in the body"),
    ];
    for (name, why) in cases {
        let doc = server_doc(admin, name);
        let reason = doc["last_change_reason"].as_str().unwrap_or_default();
        let result = doc["check"]["last_result"].as_str().unwrap_or_default();
        assert_eq!(doc["state"], "down", "{doc:#}");
        assert!(reason.contains(why), "{name}: reason {reason:?} lacks {why:?}");
        assert!(result.contains(why), "{name}: last result {result:?} lacks {why:?}");
    }
}

// ---------------------------------------------------------------------------
// What a verdict does
// ---------------------------------------------------------------------------

#[test]
fn a_server_down_by_its_check_gets_no_new_client_though_it_still_accepts() {
    // An API server whose /readyz fails still accepts TCP. Its check (on another port)
    // fails; its traffic port accepts and greets "sick". Under every policy, new clients
    // (from many addresses, for source-hash) must all reach "well".
    let called = ["sick", "well"];
    let (mut servers, port) = Checked::servers(2, |i, addr| Backend::named(addr, called[i]));
    let policies = ["round-robin", "least-conn", "random-two", "source-hash"];
    let mut text = String::from("[admin]\nlisten = \"127.0.0.1:0\"\n");
    for p in policies {
        text += &format!(
            "[[listener]]\nname = \"{p}\"\nbind = \"{}:0\"\nbackend = \"{p}\"\n\
             [backend.{p}]\nbalance = \"{p}\"\nservers = [{}, {}]\n{}\n",
            fresh_ip(),
            server("sick", servers[0].addr()),
            server("well", servers[1].addr()),
            check_on(port, r#"interval = "200ms", timeout = "300ms", rise = 1, fall = 1"#),
        );
    }
    let g = Gatehouse::start(&text);
    let admin = g.admin();
    for p in policies {
        assert_eq!(server_state(admin, p, "sick"), "up", "{p}: up before its check fails");
    }
    servers[0].sicken();
    for p in policies {
        assert!(
            wait_until(Duration::from_secs(10), || server_state(admin, p, "sick") == "down"),
            "{p}: sick never marked down"
        );
    }
    let before = servers[0].traffic.accepted();
    for p in policies {
        let front = g.addr(p);
        let landed: Vec<String> = (0..20u8)
            .map(|i| {
                let mut s = connect_from([127, 9, 6, 2 + i].into(), front);
                read_line(&mut s).unwrap_or_else(|e| format!("no greeting: {e}"))
            })
            .collect();
        assert!(
            landed.iter().all(|n| n == "well"),
            "{p}: with sick down by its check, new clients landed on {landed:?}"
        );
    }
    assert_eq!(
        servers[0].traffic.accepted(),
        before,
        "the server down by its check was connected to"
    );
}
