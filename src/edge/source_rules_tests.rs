use super::*;
use proptest::prelude::*;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn parses_networks_and_bare_addresses() {
    assert_eq!(cidr("192.168.0.0/22").to_string(), "192.168.0.0/22");
    assert_eq!(cidr("::1/128").to_string(), "::1/128");
    assert_eq!(cidr("10.0.0.1").to_string(), "10.0.0.1/32");
    assert_eq!(cidr("fd00::").to_string(), "fd00::/128");
    assert_eq!(cidr("0.0.0.0/0").prefix(), 0);
    assert_eq!(cidr("::/0").prefix(), 0);
}

#[test]
fn host_bits_set_suggests_the_network() {
    let err = "192.168.1.0/22".parse::<Cidr>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "192.168.1.0/22 has host bits set; did you mean 192.168.0.0/22?"
    );
    let err = "fd00::1/64".parse::<Cidr>().unwrap_err();
    assert_eq!(err.to_string(), "fd00::1/64 has host bits set; did you mean fd00::/64?");
}

#[test]
fn prefix_longer_than_the_address_is_refused() {
    let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
    assert_eq!(
        err,
        CidrError::PrefixTooLong {
            input: "10.0.0.0/33".into(),
            prefix: 33,
            max: 32
        }
    );
    assert!(matches!(
        "::/129".parse::<Cidr>(),
        Err(CidrError::PrefixTooLong { prefix: 129, .. })
    ));
}

#[test]
fn malformed_text_gets_a_precise_error() {
    for bad in [
        "",
        "10.0.0",
        "10.0.0.256/8",
        "010.0.0.0/8",
        " 10.0.0.0/8",
        "fe80::1%eth0",
    ] {
        assert!(
            matches!(bad.parse::<Cidr>(), Err(CidrError::BadAddress { .. })),
            "{bad:?} gave {:?}",
            bad.parse::<Cidr>()
        );
    }
    for bad in [
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/ 8",
        "10.0.0.0/0x8",
        "10.0.0.0/1000",
    ] {
        assert!(
            matches!(bad.parse::<Cidr>(), Err(CidrError::BadPrefix { .. })),
            "{bad:?} gave {:?}",
            bad.parse::<Cidr>()
        );
    }
}

#[test]
fn empty_rules_allow_everyone() {
    let rules = SourceRules::default();
    assert!(rules.is_empty());
    assert_eq!(rules.check(ip("203.0.113.9")), Verdict::Allowed);
    assert_eq!(rules.check(ip("2001:db8::1")), Verdict::Allowed);
}

#[test]
fn allow_list_refuses_everyone_outside_it() {
    let rules = SourceRules::new(&[cidr("192.168.0.0/22"), cidr("fd00::/8")], &[]);
    assert_eq!(rules.check(ip("192.168.3.255")), Verdict::Allowed);
    assert_eq!(rules.check(ip("fd12::7")), Verdict::Allowed);
    assert_eq!(rules.check(ip("192.168.4.0")), Verdict::Denied(Reason::NotAllowed));
    assert_eq!(rules.check(ip("2001:db8::1")), Verdict::Denied(Reason::NotAllowed));
}

#[test]
fn deny_wins_over_allow_and_names_the_most_specific_block() {
    let rules = SourceRules::new(&[cidr("10.0.0.0/8")], &[cidr("10.1.0.0/16"), cidr("10.1.2.0/24")]);
    assert_eq!(rules.check(ip("10.2.0.1")), Verdict::Allowed);
    assert_eq!(
        rules.check(ip("10.1.2.3")),
        Verdict::Denied(Reason::DenyRule(cidr("10.1.2.0/24")))
    );
    assert_eq!(
        rules.check(ip("10.1.9.3")),
        Verdict::Denied(Reason::DenyRule(cidr("10.1.0.0/16")))
    );
}

#[test]
fn ipv4_mapped_clients_are_judged_by_ipv4_rules() {
    let rules = SourceRules::new(&[cidr("192.168.0.0/16")], &[cidr("192.168.66.0/24")]);
    assert_eq!(rules.check(ip("::ffff:192.168.1.1")), Verdict::Allowed);
    assert_eq!(
        rules.check(ip("::ffff:192.168.66.1")),
        Verdict::Denied(Reason::DenyRule(cidr("192.168.66.0/24")))
    );
    assert_eq!(rules.check(ip("::ffff:10.0.0.1")), Verdict::Denied(Reason::NotAllowed));
}

#[test]
fn mapped_rules_mean_ipv4_rules_and_ipv6_catch_alls_do_not_match_ipv4() {
    let rules = SourceRules::new(&[], &[cidr("::ffff:10.0.0.0/104"), cidr("::/0")]);
    assert_eq!(
        rules.check(ip("10.9.9.9")),
        Verdict::Denied(Reason::DenyRule(cidr("10.0.0.0/8")))
    );
    assert_eq!(rules.check(ip("11.0.0.1")), Verdict::Allowed);
    assert_eq!(
        rules.check(ip("2001:db8::1")),
        Verdict::Denied(Reason::DenyRule(cidr("::/0")))
    );
}

#[test]
fn zero_prefix_matches_its_whole_family() {
    let rules = SourceRules::new(&[], &[cidr("0.0.0.0/0")]);
    assert!(matches!(rules.check(ip("1.2.3.4")), Verdict::Denied(_)));
    assert_eq!(rules.check(ip("::1")), Verdict::Allowed);
}

#[test]
fn a_check_against_many_blocks_is_cheap() {
    // 4096 /24 blocks in one prefix group: one binary search per check.
    let deny: Vec<Cidr> = (0..4096u32)
        .map(|i| Cidr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 8))), 24).unwrap())
        .collect();
    let rules = SourceRules::new(&[], &deny);
    let start = std::time::Instant::now();
    let mut denied = 0u32;
    for i in 0..100_000u32 {
        if let Verdict::Denied(_) = rules.check(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7))) {
            denied += 1;
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(denied, 100_000, "all of 10.0.0.0/12 is denied");
    assert!(
        elapsed < std::time::Duration::from_millis(500),
        "100k checks against 4096 blocks took {elapsed:?}"
    );
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    ]
}

proptest! {
    #[test]
    fn parsing_arbitrary_text_never_panics(s in ".{0,60}") {
        let _ = s.parse::<Cidr>();
    }

    #[test]
    fn parsing_address_like_text_never_panics(s in "[0-9a-f:./]{0,50}") {
        if let Ok(c) = s.parse::<Cidr>() {
            prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
        }
    }

    #[test]
    fn the_suggested_network_parses_and_contains_the_address(addr in arb_ip(), p in 0u8..=128) {
        let p = p.min(bits(addr));
        let text = format!("{addr}/{p}");
        match text.parse::<Cidr>() {
            Ok(c) => prop_assert!(c.contains(addr)),
            Err(CidrError::HostBitsSet { suggestion, .. }) => {
                prop_assert_eq!(suggestion.to_string().parse::<Cidr>(), Ok(suggestion));
                prop_assert!(suggestion.contains(addr));
            }
            Err(e) => prop_assert!(false, "{} gave {}", text, e),
        }
    }

    #[test]
    fn check_agrees_with_a_linear_scan(
        addr in arb_ip(),
        allow in proptest::collection::vec((arb_ip(), 0u8..=128), 0..6),
        deny in proptest::collection::vec((arb_ip(), 0u8..=128), 0..6),
    ) {
        let to_blocks = |v: &[(IpAddr, u8)]| -> Vec<Cidr> {
            v.iter().map(|(a, p)| {
                let p = (*p).min(bits(*a));
                Cidr::new(from_bits(to_bits(*a) & mask(p, bits(*a)), a.is_ipv4()), p).unwrap()
            }).collect()
        };
        // Make some rules cover the address so both branches are exercised.
        let mut allow = to_blocks(&allow);
        allow.push(Cidr::new(from_bits(to_bits(addr) & mask(bits(addr) / 2, bits(addr)), addr.is_ipv4()), bits(addr) / 2).unwrap());
        let deny = to_blocks(&deny);
        let rules = SourceRules::new(&allow, &deny);
        let a = canonical(addr);
        let denied = deny.iter().any(|c| c.canonical().contains(a));
        let allowed = allow.iter().any(|c| c.canonical().contains(a));
        let expected = !denied && allowed;
        prop_assert_eq!(rules.check(addr) == Verdict::Allowed, expected);
    }
}

#[test]
fn a_block_knows_its_prefix_and_a_refusal_its_word() {
    assert_eq!(cidr("10.0.0.0/8").prefix(), 8);
    assert_eq!(cidr("192.168.4.7").prefix(), 32);
    assert_eq!(Reason::DenyRule(cidr("10.0.0.0/8")).as_str(), "deny_rule");
    assert_eq!(Reason::NotAllowed.as_str(), "not_allowed");
}
