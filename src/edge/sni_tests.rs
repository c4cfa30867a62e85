use super::*;
use proptest::prelude::*;
use std::sync::Arc;

/// The first flight of a real TLS client (rustls) connecting to `name`.
fn client_hello_with(name: &str, tls12_only: bool, sni: bool) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .expect("ring supports the default versions");
    let mut config = builder
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.enable_sni = sni;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("valid name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).expect("client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

fn client_hello(name: &str) -> Vec<u8> {
    client_hello_with(name, false, true)
}

/// The same handshake bytes re-cut into records of `size` payload bytes each.
fn refragment(flight: &[u8], size: usize) -> Vec<u8> {
    let mut handshake = Vec::new();
    let mut rest = flight;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        assert_eq!(rest[0], 22, "rustls's first flight is handshake records");
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    let mut out = Vec::new();
    for chunk in handshake.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn reads_the_name_from_a_real_client_hello() {
    let hello = client_hello("Api.Gallade.LAN");
    assert_eq!(
        parse_client_hello(&hello),
        Peek::Sni("api.gallade.lan".into()),
        "hello of {} bytes",
        hello.len()
    );
    let tls12 = client_hello_with("k3s.example.com", true, true);
    assert_eq!(parse_client_hello(&tls12), Peek::Sni("k3s.example.com".into()));
}

#[test]
fn every_prefix_of_a_hello_needs_more() {
    let hello = client_hello("api.example.com");
    for cut in 0..hello.len() {
        assert_eq!(
            parse_client_hello(&hello[..cut]),
            Peek::NeedMore,
            "cut at {cut} of {}",
            hello.len()
        );
    }
}

#[test]
fn a_hello_split_over_records_and_reads_gives_the_same_name() {
    let hello = client_hello("split.example.com");
    for size in [1, 2, 3, 7, 100, 1000] {
        let fragmented = refragment(&hello, size);
        let records = fragmented.len().div_ceil(size + 5);
        let expected = if records <= MAX_RECORDS {
            Peek::Sni("split.example.com".into())
        } else {
            Peek::Malformed("ClientHello spread over too many records")
        };
        assert_eq!(
            parse_client_hello(&fragmented),
            expected,
            "records of {size} bytes: {records} records"
        );
    }
    let fragmented = refragment(&hello, hello.len() / 5);
    for cut in 0..fragmented.len() {
        let peek = parse_client_hello(&fragmented[..cut]);
        assert_eq!(peek, Peek::NeedMore, "cut at {cut} of {}", fragmented.len());
    }
}

#[test]
fn a_hello_without_a_name_has_no_sni() {
    assert_eq!(
        parse_client_hello(&client_hello_with("a.example.com", false, false)),
        Peek::NoSni
    );
    // rustls sends no SNI for an IP address.
    assert_eq!(parse_client_hello(&client_hello("192.0.2.1")), Peek::NoSni);
}

#[test]
fn other_protocols_are_not_tls() {
    assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
    assert_eq!(parse_client_hello(b"SSH-2.0-OpenSSH"), Peek::NotTls);
    assert_eq!(parse_client_hello(b"\x16\x02"), Peek::NotTls);
    assert_eq!(parse_client_hello(b"\x17\x03\x03\x00\x10"), Peek::NotTls);
    assert_eq!(parse_client_hello(b""), Peek::NeedMore);
    assert_eq!(parse_client_hello(b"\x16"), Peek::NeedMore);
}

/// A hand-built ClientHello with `extensions` (raw), in one record.
fn hello_with_extensions(extensions: &[u8]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut out = vec![22, 3, 1];
    out.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    out.extend_from_slice(&handshake);
    out
}

fn sni_extension(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
    ext.extend_from_slice(&list);
    ext
}

#[test]
fn hand_built_hellos_follow_the_rules() {
    let ok = hello_with_extensions(&sni_extension(&[(0, b"Host.Example.")]));
    assert_eq!(parse_client_hello(&ok), Peek::Sni("host.example".into()));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            sni_extension(&[(0, b"a.example"), (0, b"b.example")]),
            "two host names in the server name list",
        ),
        (
            [sni_extension(&[(0, b"a")]), sni_extension(&[(0, b"a")])].concat(),
            "an extension appears twice",
        ),
        (
            sni_extension(&[(0, b"bad name")]),
            "host name has a character other than letters, digits, '-' and '_'",
        ),
        (
            sni_extension(&[(0, b"10.0.0.1")]),
            "server name is an IP address, not a host name",
        ),
        (sni_extension(&[(0, b"")]), "empty host name"),
        (vec![0, 0, 0, 0], "server name list overruns its extension"),
        (vec![0, 0, 0, 9], "extension overruns the extension list"),
    ];
    for (extensions, why) in cases {
        assert_eq!(
            parse_client_hello(&hello_with_extensions(&extensions)),
            Peek::Malformed(why)
        );
    }
    // Unknown name types are skipped; no host name is no SNI.
    let other = hello_with_extensions(&sni_extension(&[(7, b"whatever")]));
    assert_eq!(parse_client_hello(&other), Peek::NoSni);
}

#[test]
fn record_layer_rules_are_enforced() {
    let hello = client_hello("a.example.com");
    let mut bad = hello.clone();
    bad[5] = 2; // ServerHello
    assert_eq!(
        parse_client_hello(&bad),
        Peek::Malformed("first handshake message is not a ClientHello")
    );
    let mut bad = hello.clone();
    bad[2] = 9;
    assert_eq!(parse_client_hello(&bad), Peek::Malformed("record version is not TLS"));
    assert_eq!(
        parse_client_hello(&[22, 3, 1, 0, 0]),
        Peek::Malformed("empty handshake record")
    );
    assert_eq!(
        parse_client_hello(&[22, 3, 1, 0x40, 1]),
        Peek::Malformed("record longer than 2^14 bytes")
    );
    assert_eq!(
        parse_client_hello(&[22, 3, 1, 0, 4, 1, 0, 0x40, 1]),
        Peek::Malformed("ClientHello longer than 16 KiB")
    );
    // A record of another type in the middle of the hello.
    let mut split = refragment(&hello, 100);
    split[105] = 23;
    assert_eq!(
        parse_client_hello(&split),
        Peek::Malformed("a record other than handshake inside the ClientHello")
    );
}

#[test]
fn routes_prefer_exact_names_and_wildcards_cover_one_label() {
    let routes = SniRoutes::new([
        (vec!["*.example.com".to_owned()], "wild"),
        (vec!["api.example.com".to_owned(), "Example.COM.".to_owned()], "exact"),
    ])
    .unwrap();
    assert_eq!(routes.route("api.example.com"), Some(&"exact"));
    assert_eq!(routes.route("API.Example.com."), Some(&"exact"));
    assert_eq!(routes.route("example.com"), Some(&"exact"));
    assert_eq!(routes.route("www.example.com"), Some(&"wild"));
    assert_eq!(routes.route("WWW.EXAMPLE.COM"), Some(&"wild"));
    assert_eq!(routes.route("a.b.example.com"), None, "one label only");
    assert_eq!(routes.route("example.org"), None);
    assert_eq!(routes.route(""), None);
}

#[test]
fn bad_patterns_are_refused_with_the_reason() {
    let refuse = |pattern: &str| {
        SniRoutes::new([(vec![pattern.to_owned()], ())])
            .err()
            .unwrap_or_else(|| panic!("{pattern:?} was accepted"))
    };
    for pattern in ["*", "*.", "a.*.com", "*a.example.com", "**.example.com"] {
        assert!(matches!(refuse(pattern), PatternError::Invalid { .. }), "{pattern:?}");
    }
    assert_eq!(
        refuse("exa mple.com").to_string(),
        "SNI pattern \"exa mple.com\": host name has a character other than letters, digits, '-' and '_'"
    );
    let twice = SniRoutes::new([
        (vec!["a.example.com".to_owned()], 1),
        (vec!["A.example.com.".to_owned()], 2),
    ]);
    assert_eq!(
        twice.err(),
        Some(PatternError::Duplicate {
            pattern: "A.example.com.".into()
        })
    );
}

#[test]
fn host_names_are_validated() {
    assert_eq!(normalize_host_name(b"K3S-api.lan."), Ok("k3s-api.lan".into()));
    assert_eq!(normalize_host_name(b"_acme.x"), Ok("_acme.x".into()));
    assert!(normalize_host_name(b"-a.lan").is_err());
    assert!(normalize_host_name(b"a..lan").is_err());
    assert!(normalize_host_name(&[b'a'; 64]).is_err());
    let long = b"abcdefghi.".repeat(26);
    assert_eq!(long.len(), 260);
    assert!(normalize_host_name(&long).is_err());
    assert!(normalize_host_name("ünï.lan".as_bytes()).is_err());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_client_hello(&buf);
    }

    #[test]
    fn arbitrary_records_never_panic(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..80), 1..20),
        hello_len in 0usize..400,
    ) {
        let mut buf = Vec::new();
        for (i, payload) in records.iter().enumerate() {
            buf.extend_from_slice(&[22, 3, 1]);
            buf.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            if i == 0 {
                // A plausible handshake header, so parsing goes deep.
                let mut p = payload.clone();
                p[0] = 1;
                if p.len() >= 4 {
                    p[1] = 0;
                    p[2..4].copy_from_slice(&(hello_len as u16).to_be_bytes());
                }
                buf.extend_from_slice(&p);
            } else {
                buf.extend_from_slice(payload);
            }
        }
        let _ = parse_client_hello(&buf);
    }

    #[test]
    fn a_full_buffer_never_needs_more(seed in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = vec![22, 3, 1, 0x40, 0, 1, 0, 0x3f, 0xfc];
        buf.extend_from_slice(&seed);
        buf.resize(MAX_PEEK_LEN, 0);
        prop_assert_ne!(parse_client_hello(&buf), Peek::NeedMore);
    }

    #[test]
    fn mutated_hellos_never_panic(at in 0usize..2000, value in any::<u8>(), size in 1usize..400) {
        let flight = client_hello("m.example.com");
        let size = size.max(flight.len().div_ceil(MAX_RECORDS));
        let hello = refragment(&flight, size);
        let mut bad = hello.clone();
        let at = at % bad.len();
        bad[at] = value;
        let _ = parse_client_hello(&bad);
        prop_assert_eq!(parse_client_hello(&hello[..at]), Peek::NeedMore);
    }

    #[test]
    fn any_valid_name_is_read_back(name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z][a-z0-9]{0,10}){1,3}") {
        let hello = client_hello(&name);
        prop_assert_eq!(parse_client_hello(&hello), Peek::Sni(name.clone()));
        for cut in (0..hello.len()).step_by(37) {
            prop_assert_eq!(parse_client_hello(&hello[..cut]), Peek::NeedMore);
        }
    }

    #[test]
    fn route_never_panics(name in ".{0,80}") {
        let routes = SniRoutes::new([(vec!["*.example.com".to_owned(), "x.lan".to_owned()], 1)]).unwrap();
        let _ = routes.route(&name);
    }
}

/// A ClientHello for `name` whose handshake message is `len` bytes (padded with an
/// unknown extension), cut into records of at most `record` bytes.
fn hello_of_len(name: &str, len: usize, record: usize) -> Vec<u8> {
    let sni = sni_extension(&[(0, name.as_bytes())]);
    // 4 (handshake header) + 2 + 32 + 1 + 4 (suites) + 2 (compression) + 2 (extensions)
    let fixed = 4 + 2 + 32 + 1 + 4 + 2 + 2 + sni.len() + 4;
    let pad = len - fixed;
    let mut extensions = sni;
    extensions.extend_from_slice(&[0xfe, 0xfe]);
    extensions.extend_from_slice(&(pad as u16).to_be_bytes());
    extensions.extend(std::iter::repeat_n(0u8, pad));
    let one = hello_with_extensions(&extensions);
    let handshake = &one[5..];
    assert_eq!(handshake.len(), len);
    let mut out = Vec::new();
    for chunk in handshake.chunks(record) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn the_largest_hello_is_read_and_fits_the_peek_buffer() {
    // 16 KiB in one record of exactly 2^14 bytes, then in 16 records: 16 KiB and their
    // 16 record headers, what the peek buffer holds.
    let one = hello_of_len("big.example", 16 * 1024, 16 * 1024);
    assert_eq!(parse_client_hello(&one), Peek::Sni("big.example".into()));
    let sixteen = hello_of_len("big.example", 16 * 1024, 1024);
    assert_eq!(sixteen.len(), MAX_PEEK_LEN);
    assert_eq!(parse_client_hello(&sixteen), Peek::Sni("big.example".into()));
    let over = hello_of_len("big.example", 16 * 1024 + 1, 16 * 1024);
    assert_eq!(
        parse_client_hello(&over),
        Peek::Malformed("ClientHello longer than 16 KiB")
    );
    // Record versions 3.0 to 3.4 are TLS.
    let mut v34 = client_hello("a.example");
    v34[2] = 4;
    assert_eq!(parse_client_hello(&v34), Peek::Sni("a.example".into()));
}

#[test]
fn cipher_suites_and_the_name_list_must_be_well_formed() {
    let with_suites = |suites: &[u8]| {
        let mut hello = hello_with_extensions(&sni_extension(&[(0, b"a.example")]));
        // Suites start after the headers (9), version (2), random (32) and session id (1).
        hello.splice(44..48, suites.iter().copied());
        let body = (hello.len() - 9) as u32;
        hello[6..9].copy_from_slice(&body.to_be_bytes()[1..]);
        let record = (hello.len() - 5) as u16;
        hello[3..5].copy_from_slice(&record.to_be_bytes());
        parse_client_hello(&hello)
    };
    let bad = Peek::Malformed("cipher suite list empty or of odd length");
    assert_eq!(with_suites(&[0, 2, 0x13, 0x01]), Peek::Sni("a.example".into()));
    assert_eq!(with_suites(&[0, 0]), bad, "no suite");
    assert_eq!(with_suites(&[0, 1, 0x13]), bad, "odd length");

    let not_one_list = Peek::Malformed("server name extension is not one non-empty list");
    let empty_list = [0, 0, 0, 2, 0, 0];
    assert_eq!(parse_client_hello(&hello_with_extensions(&empty_list)), not_one_list);
    let mut trailing = sni_extension(&[(0, b"a.example")]);
    trailing[3] += 1; // the extension one byte longer than its list
    trailing.push(0);
    assert_eq!(parse_client_hello(&hello_with_extensions(&trailing)), not_one_list);
}

#[test]
fn names_and_labels_may_be_as_long_as_dns_allows() {
    let label = "a".repeat(63);
    assert_eq!(normalize_host_name(label.as_bytes()), Ok(label.clone()));
    let name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
    assert_eq!(name.len(), 253);
    assert_eq!(normalize_host_name(name.as_bytes()), Ok(name.clone()));
    assert!(normalize_host_name(format!("{name}b").as_bytes()).is_err());
}

#[test]
fn each_peek_says_its_reason() {
    let reasons = [
        Peek::NeedMore,
        Peek::NotTls,
        Peek::NoSni,
        Peek::Sni("a".into()),
        Peek::Malformed("x"),
    ]
    .map(|p| p.reason());
    assert_eq!(
        reasons,
        ["sni_incomplete", "sni_not_tls", "sni_missing", "sni", "sni_malformed"]
    );
}

#[test]
fn a_route_table_knows_whether_it_is_empty_and_keeps_its_targets_in_order() {
    let none = SniRoutes::<u8>::new([]).unwrap();
    assert!(none.is_empty());
    assert!(none.targets().is_empty());
    let two = SniRoutes::new([(vec!["a.example".to_owned()], 1), (vec!["b.example".to_owned()], 2)]).unwrap();
    assert!(!two.is_empty());
    assert_eq!(two.targets(), &[1, 2]);
}
