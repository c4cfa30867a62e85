//! The watch's pure parts on certificates made here with rcgen: reading a certificate,
//! judging a chain, and the server-wide view over addresses.

use super::*;
use rcgen::{CertificateParams, DnType, KeyPair};

fn report(sni: &str, valid: bool, not_after: i64, issuer_expected: bool) -> CertReport {
    CertReport {
        sni: sni.into(),
        subject: String::new(),
        names: Vec::new(),
        issuer: String::new(),
        not_before: 0,
        not_after,
        chain_len: 1,
        valid,
        reason: (!valid).then(|| "bad".into()),
        issuer_expected,
        checked_at: 0.0,
    }
}

fn self_signed(names: &[&str], org: &str) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::OrganizationName, org);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

fn watch(expect_issuer: Option<&str>) -> Watch {
    Watch {
        verifier: None,
        provider: Arc::new(rustls::crypto::ring::default_provider()),
        trust: "ca test.pem".into(),
        enforce: false,
        expect_issuer: expect_issuer.map(String::from),
    }
}

#[test]
fn a_certificate_is_read_for_subject_names_issuer_and_dates() {
    let der = self_signed(&["ingress.test", "127.0.0.1"], "Gatehouse Prod");
    let (subject, names, issuer, _not_before, not_after) = describe(der.as_ref()).unwrap();
    assert_eq!(names, ["ingress.test", "127.0.0.1"]);
    assert!(subject.contains("O=Gatehouse Prod"), "{subject}");
    assert_eq!(issuer, subject, "self-signed");
    assert_eq!(not_after, 1_893_456_000, "2030-01-01");
    assert!(describe(b"not a certificate").is_err());
}

#[test]
fn a_chain_is_valid_only_when_webpki_accepts_it_and_the_issuer_is_expected() {
    let chain = [self_signed(&["ingress.test"], "(STAGING) Gatehouse Prod")];
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000));
    let ok = judge("ingress.test", &chain, Ok(()), now, &watch(None));
    assert!(ok.valid && ok.reason.is_none() && ok.issuer_expected, "{ok:?}");

    let staging = judge("ingress.test", &chain, Ok(()), now, &watch(Some("O=Gatehouse Prod")));
    assert!(!staging.valid && !staging.issuer_expected, "{staging:?}");
    assert!(staging
        .reason
        .unwrap()
        .contains(r#"does not contain "O=Gatehouse Prod""#));

    let unknown = Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    let r = judge("ingress.test", &chain, unknown, now, &watch(None));
    assert_eq!(r.reason.as_deref(), Some("does not chain to ca test.pem"));

    let wrong = Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
    let r = judge("other.test", &chain, wrong, now, &watch(None));
    assert_eq!(
        r.reason.as_deref(),
        Some("not valid for other.test (it names ingress.test)")
    );

    let none = judge("ingress.test", &[], Ok(()), now, &watch(None));
    assert!(!none.valid, "an empty chain is not valid: {none:?}");
}

#[test]
fn an_expired_certificate_says_how_long_ago() {
    let chain = [self_signed(&["ingress.test"], "Gatehouse Prod")];
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_893_456_000 + 3 * 86400 + 60));
    let expired = Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    let r = judge("ingress.test", &chain, expired, now, &watch(None));
    assert_eq!(r.reason.as_deref(), Some("expired 3 days ago"));
}

#[test]
fn the_server_view_takes_the_earliest_expiry_and_needs_every_address_valid() {
    let reports = [
        report("a.test", true, 300, true),
        report("b.test", true, 100, true),
        report("a.test", false, 200, false),
    ];
    let s = summarize(&reports);
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].sni.as_str(), s[0].not_after, s[0].valid, s[0].issuer_expected),
        ("a.test", 200, false, false)
    );
    assert_eq!((s[1].sni.as_str(), s[1].not_after, s[1].valid), ("b.test", 100, true));
}

#[test]
fn a_name_not_seen_this_time_keeps_its_last_report() {
    let mut old = vec![report("a.test", true, 1, true), report("b.test", true, 1, true)];
    merge(
        &mut old,
        vec![report("b.test", false, 2, true), report("c.test", true, 3, true)],
    );
    let got: Vec<(&str, bool)> = old.iter().map(|r| (r.sni.as_str(), r.valid)).collect();
    assert_eq!(got, [("a.test", true), ("b.test", false), ("c.test", true)]);
}
