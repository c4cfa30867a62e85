//! The certificate watch: what certificate a `tls` or `https` check was shown for each
//! server name, and whether it is good — valid for that name, in date, chaining to the
//! check's `ca` or the system roots, from the issuer the operator expects.
//!
//! It owns the trust roots of a check, the verifier that records the presented chain
//! during the handshake (and refuses it only when a bad certificate must take the
//! server down), and the [`CertReport`] the status API and metrics read. It does not
//! connect, count, or decide up and down: `health.rs` does, with what this returns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::clock::unix_now;

/// Where the system's CA bundle is looked for when `SSL_CERT_FILE` does not say:
/// Rocky/RHEL, Debian/Ubuntu, Alpine/others.
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/cert.pem",
];

/// What a check trusts and expects of the certificates it is shown; built once per
/// (re)load of the check.
#[derive(Debug)]
pub struct Watch {
    /// `None` when no root could be loaded (no system bundle): every chain is unknown.
    verifier: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    /// "ca /etc/gatehouse/ca.crt" or "the system roots (/etc/ssl/...)", for reasons.
    trust: String,
    /// A bad chain fails the handshake (and the check) instead of only being reported.
    pub enforce: bool,
    expect_issuer: Option<String>,
}

impl Watch {
    /// Trusts `ca` when given (unreadable or empty: an error, as a reload must fail),
    /// else the system bundle (`SSL_CERT_FILE`, then the usual places).
    pub fn new(
        provider: Arc<CryptoProvider>,
        ca: Option<&Path>,
        enforce: bool,
        expect_issuer: Option<String>,
    ) -> Result<Watch, String> {
        let (roots, trust) = match ca {
            Some(ca) => {
                let roots = load_roots(ca, "health check ca")?;
                if roots.is_empty() {
                    return Err(format!("health check ca {} holds no certificate", ca.display()));
                }
                (roots, format!("ca {}", ca.display()))
            }
            None => match system_bundle() {
                Some(path) => {
                    let roots = load_roots(&path, "system CA bundle").unwrap_or_else(|e| {
                        tracing::warn!("certificate watch: {e}");
                        rustls::RootCertStore::empty()
                    });
                    (roots, format!("the system roots ({})", path.display()))
                }
                None => (
                    rustls::RootCertStore::empty(),
                    "the system roots (no CA bundle found)".to_string(),
                ),
            },
        };
        let verifier = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("certificate watch ({trust}): {e}"))?,
            )
        };
        Ok(Watch {
            verifier,
            provider,
            trust,
            enforce,
            expect_issuer,
        })
    }

    /// A verifier for one handshake; read what it saw with [`Watching::report`].
    pub fn watching(self: &Arc<Self>) -> Arc<Watching> {
        Arc::new(Watching {
            watch: self.clone(),
            seen: Mutex::new(None),
        })
    }
}

fn system_bundle() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SSL_CERT_FILE") {
        return Some(PathBuf::from(p));
    }
    SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn load_roots(path: &Path, what: &str) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{what} {}: {e}", path.display()))?;
        // A bundle may hold a root webpki cannot read; the others still count. A `ca`
        // the operator named must be readable whole.
        if let Err(e) = roots.add(cert) {
            if what == "health check ca" {
                return Err(format!("{what} {}: {e}", path.display()));
            }
        }
    }
    Ok(roots)
}

/// The verifier of one handshake: records the chain and what verification said.
#[derive(Debug)]
pub struct Watching {
    watch: Arc<Watch>,
    seen: Mutex<Option<Seen>>,
}

#[derive(Debug)]
struct Seen {
    chain: Vec<CertificateDer<'static>>,
    verdict: Result<(), rustls::Error>,
    now: UnixTime,
}

impl ServerCertVerifier for Watching {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.watch.verifier {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ()),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        };
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        let refused = match &verdict {
            Err(e) if self.watch.enforce => Some(e.clone()),
            _ => None,
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(Seen { chain, verdict, now });
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.watch.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.watch.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.watch
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Watching {
    /// What the handshake was shown for `sni`, judged; `None` if it never got as far
    /// as a certificate.
    pub fn report(&self, sni: &str) -> Option<CertReport> {
        let seen = self.seen.lock().ok()?.take()?;
        Some(judge(sni, &seen.chain, seen.verdict, seen.now, &self.watch))
    }
}

/// One server name's certificate as a check last saw it at one address.
#[derive(Debug, Clone, PartialEq)]
pub struct CertReport {
    /// The name the certificate was asked for (the server's address for IP servers).
    pub sni: String,
    pub subject: String,
    /// DNS names and IP addresses of the subject alternative names.
    pub names: Vec<String>,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Certificates presented, the server's own first.
    pub chain_len: usize,
    pub valid: bool,
    /// Why it is not valid (every reason, `; `-joined); `None` when valid.
    pub reason: Option<String>,
    /// Whether the issuer holds `expect_issuer` (true when none is set).
    pub issuer_expected: bool,
    /// When the check saw it (unix seconds).
    pub checked_at: f64,
}

/// Judges a presented chain: `verdict` is what webpki said of it.
fn judge(
    sni: &str,
    chain: &[CertificateDer<'static>],
    verdict: Result<(), rustls::Error>,
    now: UnixTime,
    watch: &Watch,
) -> CertReport {
    let mut reasons = Vec::new();
    let (subject, names, issuer, not_before, not_after) = match chain.first().map(|c| describe(c.as_ref())) {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            reasons.push(format!("certificate unreadable: {e}"));
            Default::default()
        }
        None => {
            reasons.push("no certificate presented".into());
            Default::default()
        }
    };
    if let Err(e) = &verdict {
        reasons.push(explain(e, sni, &names, not_after, now, &watch.trust));
    }
    let issuer_expected = match &watch.expect_issuer {
        Some(want) => issuer.contains(want.as_str()),
        None => true,
    };
    if !issuer_expected {
        reasons.push(format!(
            "issuer {issuer:?} does not contain {:?}",
            watch.expect_issuer.as_deref().unwrap_or_default()
        ));
    }
    CertReport {
        sni: sni.to_string(),
        subject,
        names,
        issuer,
        not_before,
        not_after,
        chain_len: chain.len(),
        valid: reasons.is_empty(),
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        issuer_expected,
        checked_at: unix_now(),
    }
}

type Described = (String, Vec<String>, String, i64, i64);

/// Subject, SAN names, issuer, not-before and not-after of a DER certificate.
fn describe(der: &[u8]) -> Result<Described, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string()),
                    16 => {
                        names.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok((
        cert.subject().to_string(),
        names,
        cert.issuer().to_string(),
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// The reason in operator words: what is wrong and against what.
fn explain(e: &rustls::Error, sni: &str, names: &[String], not_after: i64, now: UnixTime, trust: &str) -> String {
    let now = now.as_secs() as i64;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("expired {} ago", days(now - not_after))
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not valid yet".into(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("not valid for {sni} (it names {})", names.join(", "))
            }
            CertificateError::UnknownIssuer => format!("does not chain to {trust}"),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

/// "3 days", "5 hours": how long, roughly.
fn days(seconds: i64) -> String {
    let s = seconds.max(0);
    if s >= 2 * 86400 {
        format!("{} days", s / 86400)
    } else if s >= 7200 {
        format!("{} hours", s / 3600)
    } else {
        format!("{} minutes", s / 60)
    }
}

/// The server-wide view of one name over its addresses: the earliest expiry, and
/// valid only if valid everywhere. What the metrics carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub sni: String,
    pub not_after: i64,
    pub valid: bool,
    pub issuer_expected: bool,
}

/// Summaries per name of every address's reports, in the order the names first appear.
pub fn summarize<'a>(reports: impl IntoIterator<Item = &'a CertReport>) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for r in reports {
        match out.iter_mut().find(|s| s.sni == r.sni) {
            Some(s) => {
                s.not_after = s.not_after.min(r.not_after);
                s.valid &= r.valid;
                s.issuer_expected &= r.issuer_expected;
            }
            None => out.push(Summary {
                sni: r.sni.clone(),
                not_after: r.not_after,
                valid: r.valid,
                issuer_expected: r.issuer_expected,
            }),
        }
    }
    out
}

/// Replaces the reports of the names in `new`, keeping the others (a name whose
/// handshake failed this time keeps what was last seen).
pub fn merge(old: &mut Vec<CertReport>, new: Vec<CertReport>) {
    for r in new {
        match old.iter_mut().find(|o| o.sni == r.sni) {
            Some(o) => *o = r,
            None => old.push(r),
        }
    }
}

#[cfg(test)]
#[path = "certwatch_tests.rs"]
mod tests;
