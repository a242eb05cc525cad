//! Host canonicalization, `host:port` splitting and route host patterns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis_rules::{split_host_port, Host, HostError, HostPattern};

fn name(s: &str) -> Host {
    Host::Name(s.to_owned())
}

fn ip(s: &str) -> Host {
    Host::Ip(s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}")))
}

fn parse(s: &str) -> Host {
    Host::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

#[test]
fn host_parse_folds_every_inet_aton_spelling_of_loopback_to_127_0_0_1() {
    let loopback = Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for spelling in [
        "127.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0X7F.0.0.1",
        "127.1",
        "127.0.1",
        "0x7f000001",
        "0x7F000001",
        "017700000001",
        "0x7f.1",
        "0177.1",
        "127.0.0.1.",
        "0x7f.0x0.0x0.0x1",
        "000000177.0.0.1",
    ] {
        assert_eq!(Host::parse(spelling), Ok(loopback.clone()), "{spelling}");
    }
}

#[test]
fn host_parse_reads_other_inet_aton_forms_by_their_numeric_value() {
    assert_eq!(parse("0"), ip("0.0.0.0"));
    assert_eq!(parse("4294967295"), ip("255.255.255.255"));
    assert_eq!(parse("169.254.43518"), ip("169.254.169.254"));
    assert_eq!(parse("0xa9fea9fe"), ip("169.254.169.254"));
    assert_eq!(parse("10.0x10.1"), ip("10.16.0.1"));
    assert_eq!(parse("0xcafe"), ip("0.0.202.254"));
}

#[test]
fn host_parse_rejects_numeric_names_that_are_not_valid_ipv4() {
    for bad in [
        "1.2.3.999",
        "256.0.0.1",
        "1.2.3.4.5",
        "4294967296",
        "08.0.0.1",
        "0x1g.0.0.1",
        "1.2.3.0x100",
        "example.123",
        "a.0x1",
        "1..2.3",
        "+1.2.3.4",
    ] {
        assert!(
            matches!(Host::parse(bad), Err(HostError::BadIpLiteral(_))),
            "{bad:?} gave {:?}",
            Host::parse(bad)
        );
    }
}

#[test]
fn host_parse_accepts_bracketed_and_bare_ipv6_including_mapped_forms() {
    assert_eq!(parse("::1"), ip("::1"));
    assert_eq!(parse("[::1]"), ip("::1"));
    assert_eq!(parse("[::ffff:127.0.0.1]"), ip("::ffff:127.0.0.1"));
    assert_eq!(parse("[2606:4700::1111]"), ip("2606:4700::1111"));
    assert_eq!(parse("[2606:4700::ABCD]"), ip("2606:4700::abcd"));
    assert!(matches!(
        Host::parse("[::1"),
        Err(HostError::BadIpLiteral(_))
    ));
    assert!(matches!(
        Host::parse("[example.com]"),
        Err(HostError::BadIpLiteral(_))
    ));
    assert!(matches!(
        Host::parse("[::1]."),
        Err(HostError::BadIpLiteral(_))
    ));
    assert!(matches!(
        Host::parse("::g"),
        Err(HostError::BadIpLiteral(_))
    ));
    assert!(matches!(
        Host::parse("fe80::1%eth0"),
        Err(HostError::BadIpLiteral(_))
    ));
}

#[test]
fn host_parse_lowercases_and_strips_exactly_one_trailing_dot() {
    assert_eq!(parse("API.OpenAI.com"), name("api.openai.com"));
    assert_eq!(parse("api.openai.com."), name("api.openai.com"));
    assert_eq!(parse("API.OPENAI.COM."), name("api.openai.com"));
    assert_eq!(Host::parse("api.openai.com.."), Err(HostError::EmptyLabel));
    assert_eq!(Host::parse(".api.openai.com"), Err(HostError::EmptyLabel));
    assert_eq!(Host::parse("api..openai.com"), Err(HostError::EmptyLabel));
}

#[test]
fn host_parse_keeps_names_that_merely_contain_digits_or_hex_letters() {
    assert_eq!(parse("1e100.net"), name("1e100.net"));
    assert_eq!(parse("cafe.babe"), name("cafe.babe"));
    assert_eq!(parse("123.example.com"), name("123.example.com"));
    assert_eq!(parse("0x7f.example"), name("0x7f.example"));
    assert_eq!(parse("localhost"), name("localhost"));
    assert_eq!(parse("_dmarc.example.com"), name("_dmarc.example.com"));
    assert_eq!(
        parse("xn--bcher-kva.example"),
        name("xn--bcher-kva.example")
    );
}

#[test]
fn host_parse_rejects_empty_non_ascii_and_invalid_characters() {
    assert_eq!(Host::parse(""), Err(HostError::Empty));
    assert_eq!(Host::parse("."), Err(HostError::Empty));
    assert_eq!(Host::parse("bücher.example"), Err(HostError::NonAscii));
    assert_eq!(Host::parse("ex\u{200b}ample.com"), Err(HostError::NonAscii));
    assert_eq!(
        Host::parse("*.example.com"),
        Err(HostError::InvalidChar('*'))
    );
    assert_eq!(
        Host::parse("exa mple.com"),
        Err(HostError::InvalidChar(' '))
    );
    assert_eq!(
        Host::parse("example.com/path"),
        Err(HostError::InvalidChar('/'))
    );
    assert_eq!(
        Host::parse("user@example.com"),
        Err(HostError::InvalidChar('@'))
    );
    assert_eq!(
        Host::parse("exa\0mple.com"),
        Err(HostError::InvalidChar('\0'))
    );
    assert_eq!(
        Host::parse("example.com:443"),
        Err(HostError::InvalidChar(':'))
    );
    let message = HostError::NonAscii.to_string();
    assert!(message.contains("punycode (xn--"), "{message}");
}

#[test]
fn host_parse_enforces_label_and_total_length_limits() {
    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    assert_eq!(
        parse(&format!("{label63}.com")),
        name(&format!("{label63}.com"))
    );
    assert_eq!(
        Host::parse(&format!("{label64}.com")),
        Err(HostError::LabelTooLong(64))
    );
    // 4 labels of 63 plus 3 dots is 255 characters, over the 253 limit.
    let long = [label63.as_str(); 4].join(".");
    assert_eq!(Host::parse(&long), Err(HostError::TooLong(255)));
    // 253 characters (plus an ignored trailing dot) is fine.
    let ok = format!("{}.{}.{}.{}", label63, label63, label63, "a".repeat(61));
    assert_eq!(ok.len(), 253);
    assert!(Host::parse(&format!("{ok}.")).is_ok());
}

#[test]
fn host_display_prints_names_as_is_and_ipv6_without_brackets() {
    assert_eq!(parse("API.example.com.").to_string(), "api.example.com");
    assert_eq!(parse("0x7f.1").to_string(), "127.0.0.1");
    assert_eq!(parse("[::1]").to_string(), "::1");
    assert_eq!(
        parse("[2606:4700:0:0::1111]").to_string(),
        "2606:4700::1111"
    );
    assert!(parse("[::1]").is_ip());
    assert!(!parse("example.com").is_ip());
}

#[test]
fn split_host_port_reads_names_ipv4_and_bracketed_ipv6() {
    assert_eq!(
        split_host_port("api.openai.com:443", 80),
        Ok((name("api.openai.com"), 443))
    );
    assert_eq!(
        split_host_port("API.openai.com.:8443", 80),
        Ok((name("api.openai.com"), 8443))
    );
    assert_eq!(
        split_host_port("127.0.0.1:4443", 80),
        Ok((ip("127.0.0.1"), 4443))
    );
    assert_eq!(split_host_port("[::1]:8443", 80), Ok((ip("::1"), 8443)));
    assert_eq!(
        split_host_port("2130706433:443", 80),
        Ok((ip("127.0.0.1"), 443))
    );
}

#[test]
fn split_host_port_uses_the_default_port_when_none_is_given() {
    assert_eq!(
        split_host_port("example.com", 80),
        Ok((name("example.com"), 80))
    );
    assert_eq!(split_host_port("[::1]", 443), Ok((ip("::1"), 443)));
}

#[test]
fn split_host_port_rejects_bad_ports_and_unbracketed_ipv6() {
    for bad in [
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:+443",
        "example.com:44 3",
        "example.com:https",
    ] {
        assert!(
            matches!(split_host_port(bad, 443), Err(HostError::BadPort(_))),
            "{bad:?} gave {:?}",
            split_host_port(bad, 443)
        );
    }
    assert_eq!(
        split_host_port("::1:443", 443),
        Err(HostError::UnbracketedIpv6)
    );
    assert_eq!(split_host_port("", 443), Err(HostError::Empty));
    assert_eq!(split_host_port(":443", 443), Err(HostError::Empty));
    assert!(matches!(
        split_host_port("[::1]443", 443),
        Err(HostError::BadIpLiteral(_))
    ));
    assert!(matches!(
        split_host_port("[::1:443", 443),
        Err(HostError::BadIpLiteral(_))
    ));
    assert!(split_host_port("example.com:65535", 443).is_ok());
}

fn pattern(s: &str) -> HostPattern {
    HostPattern::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

#[test]
fn host_pattern_parses_exact_wildcard_and_ip_forms_canonically() {
    assert_eq!(
        pattern("API.OpenAI.com."),
        HostPattern::Exact("api.openai.com".to_owned())
    );
    assert_eq!(
        pattern("*.OpenAI.Azure.com."),
        HostPattern::Wildcard(".openai.azure.com".to_owned())
    );
    assert_eq!(pattern("*.com"), HostPattern::Wildcard(".com".to_owned()));
    assert_eq!(
        pattern("10.0.0.1"),
        HostPattern::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
    );
    assert_eq!(
        pattern("0x0a000001"),
        HostPattern::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
    );
    assert_eq!(
        pattern("[::1]"),
        HostPattern::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
    );
    assert_eq!(
        pattern("*.openai.azure.com").to_string(),
        "*.openai.azure.com"
    );
}

#[test]
fn host_pattern_wildcard_matches_exactly_one_extra_label_and_never_the_apex() {
    let p = pattern("*.openai.azure.com");
    assert!(p.matches(&parse("myres.openai.azure.com")));
    assert!(p.matches(&parse("MyRes.OpenAI.Azure.com.")));
    assert!(!p.matches(&parse("openai.azure.com")), "apex");
    assert!(!p.matches(&parse("a.b.openai.azure.com")), "two labels");
    assert!(
        !p.matches(&parse("evilopenai.azure.com")),
        "suffix without a dot"
    );
    assert!(!p.matches(&parse("myres.openai.azure.com.evil.net")));
    assert!(!p.matches(&ip("127.0.0.1")));
}

#[test]
fn host_pattern_exact_ignores_case_and_trailing_dot_on_both_sides() {
    let p = pattern("API.openai.com.");
    assert!(p.matches(&parse("api.OPENAI.com")));
    assert!(p.matches(&parse("api.openai.com.")));
    assert!(!p.matches(&parse("api.openai.com.evil.net")));
    assert!(!p.matches(&parse("x.api.openai.com")));
    assert!(!p.matches(&parse("openai.com")));
}

#[test]
fn host_pattern_ip_matches_only_that_ip_in_any_spelling() {
    let p = pattern("127.0.0.1");
    assert!(p.matches(&parse("2130706433")));
    assert!(
        p.matches(&parse("[::ffff:127.0.0.1]")),
        "IPv4-mapped form of the same address"
    );
    assert!(!p.matches(&parse("127.0.0.2")));
    assert!(!p.matches(&parse("localhost")));
    let v6 = pattern("[2001:db8::1]");
    assert!(v6.matches(&parse("[2001:DB8:0::1]")));
    assert!(!v6.matches(&parse("[2001:db8::2]")));
}

#[test]
fn host_pattern_rejects_misplaced_wildcards_ports_urls_and_non_ascii_with_a_fix() {
    for (bad, fragment) in [
        ("*", "bare `*`"),
        ("*.", "bare `*`"),
        ("api.*.com", "leading `*.`"),
        ("*api.com", "leading `*.`"),
        ("api*.com", "leading `*.`"),
        ("*.*.com", "more than one `*`"),
        ("*.10.0.0.1", "wildcards only apply to names"),
        ("bücher.example", "punycode (xn--"),
        ("api.openai.com:443", "list the port in `ports`"),
        ("https://api.openai.com/v1", "without scheme"),
        ("", "empty"),
        ("1.2.3.999", "not a valid one"),
    ] {
        match HostPattern::parse(bad) {
            Ok(p) => panic!("{bad:?} parsed as {p:?}"),
            Err(message) => assert!(message.contains(fragment), "{bad:?}: {message}"),
        }
    }
}

/// A small deterministic generator, so the property tests below need no extra crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A short string over characters that matter to host parsing.
    fn host_like(&mut self) -> String {
        const ALPHABET: &[&str] = &[
            "0", "1", "7", "9", "a", "f", "x", "X", "g", "z", "A", ".", ".", ":", "[", "]", "-",
            "_", "*", "é", " ", "0x", "255", "127", "%",
        ];
        let len = self.below(14);
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect()
    }
}

#[test]
fn host_parse_is_idempotent_through_display_for_random_inputs() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..50_000 {
        let s = rng.host_like();
        if let Ok(host) = Host::parse(&s) {
            let again = Host::parse(&host.to_string())
                .unwrap_or_else(|e| panic!("{s:?} -> {host} does not reparse: {e}"));
            assert_eq!(again, host, "{s:?}");
            if let Host::Name(n) = &host {
                assert!(
                    !n.ends_with('.') && n.bytes().all(|b| !b.is_ascii_uppercase()),
                    "{s:?}"
                );
            }
        }
        // These must never panic, whatever the input.
        let _ = split_host_port(&s, 443);
        let _ = HostPattern::parse(&s);
    }
}

#[test]
fn wildcard_matches_a_random_name_exactly_when_it_is_one_label_under_the_suffix() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let p = pattern("*.example.com");
    const LABELS: &[&str] = &["a", "b1", "x-y", "example", "com", "_s"];
    for _ in 0..10_000 {
        let n = 1 + rng.below(5);
        let labels: Vec<&str> = (0..n).map(|_| LABELS[rng.below(LABELS.len())]).collect();
        let s = labels.join(".");
        let host = parse(&s);
        let expected = labels.len() == 3 && labels[1] == "example" && labels[2] == "com";
        assert_eq!(p.matches(&host), expected, "{s}");
    }
}
