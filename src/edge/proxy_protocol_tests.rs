use super::*;
use proptest::prelude::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn header(version: u8, len: usize, src: &str, dst: &str) -> Parsed {
    Parsed::Header {
        version,
        len,
        source: Some(sa(src)),
        dest: Some(sa(dst)),
    }
}

fn no_address(version: u8, len: usize) -> Parsed {
    Parsed::Header {
        version,
        len,
        source: None,
        dest: None,
    }
}

#[test]
fn v1_encodes_like_the_spec_examples() {
    assert_eq!(
        encode_v1(sa("192.168.0.1:56324"), sa("192.168.0.11:443")),
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    );
    assert_eq!(
        encode_v1(sa("[2001:db8::1]:1"), sa("[::1]:6443")),
        b"PROXY TCP6 2001:db8::1 ::1 1 6443\r\n"
    );
}

#[test]
fn mixed_families_are_written_as_ipv6() {
    let line = encode_v1(sa("10.0.0.1:5000"), sa("[fd00::1]:443"));
    assert_eq!(line, b"PROXY TCP6 ::ffff:10.0.0.1 fd00::1 5000 443\r\n");
    let v2 = encode_v2(sa("10.0.0.1:5000"), sa("[fd00::1]:443"));
    assert_eq!(parse(&v2), Ok(header(2, 52, "[::ffff:10.0.0.1]:5000", "[fd00::1]:443")));
}

#[test]
fn v1_parses_with_the_stream_after_it() {
    let mut buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n".to_vec();
    assert_eq!(parse(&buf), Ok(header(1, 47, "192.168.0.1:56324", "192.168.0.11:443")));
    buf.truncate(46);
    assert_eq!(parse(&buf), Ok(Parsed::Incomplete));
}

#[test]
fn v1_unknown_gives_no_addresses_and_ignores_the_rest_of_the_line() {
    assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(no_address(1, 15)));
    assert_eq!(
        parse(b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 65535\r\n"),
        Ok(no_address(1, 51))
    );
    assert!(parse(b"PROXY UNKNOWNX\r\n").is_err());
}

#[test]
fn v1_refuses_what_the_spec_refuses() {
    let cases: &[&[u8]] = &[
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\r\n",
        b"PROXY \r\n",
    ];
    for case in cases {
        assert!(
            matches!(parse(case), Err(ParseError::Malformed(_))),
            "{:?} gave {:?}",
            String::from_utf8_lossy(case),
            parse(case)
        );
    }
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n"),
        Ok(header(1, 36, "1.2.3.4:0", "5.6.7.8:65535"))
    );
}

#[test]
fn v1_without_crlf_in_107_bytes_is_too_long() {
    let mut buf = b"PROXY UNKNOWN ".to_vec();
    buf.resize(106, b'x');
    assert_eq!(parse(&buf), Ok(Parsed::Incomplete));
    buf.push(b'x');
    assert_eq!(parse(&buf), Err(ParseError::TooLong));
    buf.truncate(105);
    buf.extend_from_slice(b"\r\n");
    assert_eq!(parse(&buf), Ok(no_address(1, 107)), "107 bytes is the limit");
}

#[test]
fn v1_garbage_is_refused_before_the_line_ends() {
    assert!(matches!(parse(b"PROXY TCP4 1.2\0"), Err(ParseError::Malformed(_))));
    assert!(matches!(parse(b"PROXY TCP4 1.2\r3"), Err(ParseError::Malformed(_))));
}

#[test]
fn anything_else_is_not_proxy() {
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotProxy));
    assert_eq!(parse(b"\x16\x03\x01"), Err(ParseError::NotProxy));
    assert_eq!(parse(b"PROXX"), Err(ParseError::NotProxy));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ParseError::NotProxy));
    assert_eq!(parse(b""), Ok(Parsed::Incomplete));
    assert_eq!(parse(b"PROX"), Ok(Parsed::Incomplete));
    assert_eq!(parse(b"\r\n\r\n"), Ok(Parsed::Incomplete));
}

#[test]
fn v2_encodes_the_spec_layout() {
    let v4 = encode_v2(sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
    let mut expected = V2_SIGNATURE.to_vec();
    expected.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 168, 0, 1, 192, 168, 0, 11]);
    expected.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
    assert_eq!(v4, expected);
    assert_eq!(parse(&v4), Ok(header(2, 28, "192.168.0.1:56324", "192.168.0.11:443")));
    let v6 = encode_v2(sa("[2001:db8::1]:1"), sa("[::1]:6443"));
    assert_eq!(v6.len(), 52);
    assert_eq!(&v6[12..16], &[0x21, 0x21, 0, 36]);
}

#[test]
fn v2_local_gives_no_addresses() {
    let local = encode_v2_local();
    assert_eq!(local.len(), 16);
    assert_eq!(parse(&local), Ok(no_address(2, 16)));
    // LOCAL with an address block: the block is skipped, not used.
    let mut with_block = encode_v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"));
    with_block[12] = 0x20;
    assert_eq!(parse(&with_block), Ok(no_address(2, 28)));
}

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(command);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn v2_tlvs_are_skipped_within_the_length() {
    let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187];
    body.extend_from_slice(&[0x01, 0, 2, b'h', b'2']); // ALPN
    body.extend_from_slice(&[0x04, 0, 0]); // NOOP, empty
    let buf = v2(0x21, 0x11, &body);
    assert_eq!(parse(&buf), Ok(header(2, 16 + 20, "10.0.0.1:80", "10.0.0.2:443")));
    let mut overrun = body.clone();
    overrun.extend_from_slice(&[0x02, 0, 9, b'x']);
    assert_eq!(
        parse(&v2(0x21, 0x11, &overrun)),
        Err(ParseError::Malformed("v2 TLV runs past the header length"))
    );
    let mut cut = body;
    cut.extend_from_slice(&[0x02, 0]);
    assert_eq!(
        parse(&v2(0x21, 0x11, &cut)),
        Err(ParseError::Malformed("v2 TLV header cut short"))
    );
}

#[test]
fn v2_refuses_bad_version_command_family_and_short_blocks() {
    assert_eq!(parse(&v2(0x11, 0x11, &[0; 12])), Err(ParseError::UnsupportedVersion(1)));
    assert_eq!(parse(&v2(0x31, 0x11, &[0; 12])), Err(ParseError::UnsupportedVersion(3)));
    assert!(matches!(
        parse(&v2(0x22, 0x11, &[0; 12])),
        Err(ParseError::Malformed(_))
    ));
    assert!(matches!(
        parse(&v2(0x21, 0x13, &[0; 12])),
        Err(ParseError::Malformed(_))
    ));
    assert!(matches!(
        parse(&v2(0x21, 0x11, &[0; 11])),
        Err(ParseError::Malformed(_))
    ));
    assert!(matches!(
        parse(&v2(0x21, 0x21, &[0; 12])),
        Err(ParseError::Malformed(_))
    ));
}

#[test]
fn v2_unspec_udp_and_unix_give_no_addresses() {
    assert_eq!(parse(&v2(0x21, 0x00, &[])), Ok(no_address(2, 16)));
    assert_eq!(parse(&v2(0x21, 0x12, &[0; 12])), Ok(no_address(2, 28)));
    assert_eq!(parse(&v2(0x21, 0x31, &[0; 216])), Ok(no_address(2, 232)));
}

#[test]
fn v2_longer_than_the_cap_is_refused_from_its_fixed_part() {
    let mut buf = V2_SIGNATURE.to_vec();
    buf.extend_from_slice(&[0x21, 0x11]);
    buf.extend_from_slice(&((V2_MAX_LEN - 16) as u16).to_be_bytes());
    assert_eq!(parse(&buf), Ok(Parsed::Incomplete), "at the cap: wait");
    let last = buf.len() - 1;
    buf[last] += 1;
    assert_eq!(parse(&buf), Err(ParseError::TooLong), "one past the cap");
}

#[test]
fn errors_carry_metric_reasons() {
    assert_eq!(ParseError::NotProxy.reason(), "proxy_header_missing");
    assert_eq!(ParseError::TooLong.reason(), "proxy_header_too_long");
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

/// What the header says once both addresses are in one family.
fn expected(src: SocketAddr, dst: SocketAddr) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let (s, d) = same_family(src, dst);
    (Some(s), Some(d))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&buf);
    }

    #[test]
    fn arbitrary_bytes_after_a_signature_never_panic(
        v1 in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut buf = if v1 { V1_PREFIX.to_vec() } else { V2_SIGNATURE.to_vec() };
        buf.extend_from_slice(&tail);
        if let Ok(Parsed::Header { len, .. }) = parse(&buf) {
            prop_assert!(len <= buf.len());
        }
    }

    #[test]
    fn v1_text_like_input_never_panics(line in "PROXY (TCP4|TCP6|UNKNOWN)[ 0-9a-f.:]{0,100}(\r\n)?") {
        if let Ok(Parsed::Header { len, .. }) = parse(line.as_bytes()) {
            prop_assert!(len <= line.len());
        }
    }

    #[test]
    fn v1_round_trips(src in arb_addr(), dst in arb_addr(), tail in proptest::collection::vec(any::<u8>(), 0..20)) {
        let mut buf = encode_v1(src, dst);
        let len = buf.len();
        prop_assert!(len <= V1_MAX_LEN);
        for cut in 0..len {
            prop_assert_eq!(parse(&buf[..cut]), Ok(Parsed::Incomplete));
        }
        buf.extend_from_slice(&tail);
        let (source, dest) = expected(src, dst);
        prop_assert_eq!(parse(&buf), Ok(Parsed::Header { version: 1, len, source, dest }));
    }

    #[test]
    fn v2_round_trips(src in arb_addr(), dst in arb_addr(), tail in proptest::collection::vec(any::<u8>(), 0..20)) {
        let mut buf = encode_v2(src, dst);
        let len = buf.len();
        for cut in 0..len {
            prop_assert_eq!(parse(&buf[..cut]), Ok(Parsed::Incomplete));
        }
        buf.extend_from_slice(&tail);
        let (source, dest) = expected(src, dst);
        prop_assert_eq!(parse(&buf), Ok(Parsed::Header { version: 2, len, source, dest }));
    }
}
