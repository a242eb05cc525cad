//! Property tests for the parsers of untrusted text: hosts and authorities, host
//! patterns, the SSRF classifier and the config parser. They mirror the cargo-fuzz targets
//! in `fuzz/` with a bounded number of cases, so they run in the normal test command.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use portcullis_rules::{classify_ip, parse_config, split_host_port, Config, Host, HostPattern};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

/// Strings made of what hosts and authorities are made of, plus anything at all.
fn host_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._*:\\[\\]-]{0,40}",
        "(0x[0-9a-f]{1,8}|0[0-7]{1,11}|[0-9]{1,10})(\\.(0x[0-9a-f]{1,3}|0[0-7]{1,4}|[0-9]{1,5})){0,3}\\.?(:[0-9]{0,6})?",
        "\\[[0-9a-f:.]{0,45}\\](:[0-9]{0,6})?",
        ".{0,30}",
    ]
}

/// Everything a parsed config holds, in a stable text form (its maps print in a random
/// order, so they are read through their lookups).
fn fingerprint(c: &Config) -> String {
    let p = &c.policy;
    let tenants: Vec<_> = p
        .tenants()
        .iter()
        .map(|t| (t, p.tenant_budget(t), p.tenant_webhook(t)))
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{}",
        c.listeners,
        c.admin,
        c.ca,
        c.upstream,
        c.limits,
        c.ledger,
        c.vault,
        c.dns,
        c.state,
        p.routes(),
        p.agents(),
        tenants,
        p.providers(),
        p.hash_hex()
    )
}

/// Valid configs from the fixtures and the deploy examples, read once.
fn valid_configs() -> &'static [String] {
    static CONFIGS: OnceLock<Vec<String>> = OnceLock::new();
    CONFIGS.get_or_init(read_valid_configs)
}

fn read_valid_configs() -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    [
        "rules/tests/fixtures/valid/full.toml",
        "rules/tests/fixtures/valid/sidecar.toml",
        "rules/tests/fixtures/explain.toml",
        "deploy/portcullis.example.toml",
        "deploy/sidecar.toml",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(format!("{root}/{p}")).unwrap_or_else(|e| panic!("{p}: {e}")))
    .chain([portcullis_rules::EMBEDDED_DEFAULT.to_owned()])
    .collect()
}

/// One small edit of a text: drop, duplicate or change a line, or change one character.
#[derive(Clone, Debug)]
enum Edit {
    DropLine(usize),
    DupLine(usize),
    SetChar(usize, char),
    Insert(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::DropLine),
        any::<usize>().prop_map(Edit::DupLine),
        (
            any::<usize>(),
            prop_oneof![
                Just('"'),
                Just('='),
                Just('['),
                Just(']'),
                Just('0'),
                Just('*'),
                Just('\n'),
                any::<char>()
            ]
        )
            .prop_map(|(i, c)| Edit::SetChar(i, c)),
        (
            any::<usize>(),
            prop_oneof![
                Just("[[routes]]\n".to_owned()),
                Just("action = \"deny\"\n".to_owned()),
                Just("hosts = [\"*\"]\n".to_owned()),
                Just("ports = [0, 65535]\n".to_owned()),
                Just("budget = { tokens_per_day = 18446744073709551615 }\n".to_owned()),
                Just("allow_private = [\"0.0.0.0/0\"]\n".to_owned()),
                "[a-z_]{1,12} = [0-9\"a-z]{0,8}\n",
            ]
        )
            .prop_map(|(i, s)| Edit::Insert(i, s)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::DropLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::DupLine(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::SetChar(i, c) if !lines.is_empty() => {
                let line = &mut lines[i % n];
                let chars: Vec<char> = line.chars().collect();
                if !chars.is_empty() {
                    let at = (i / n) % chars.len();
                    *line = chars[..at]
                        .iter()
                        .chain([c])
                        .chain(&chars[at + 1..])
                        .collect();
                }
            }
            Edit::Insert(i, s) => lines.insert(i % (lines.len() + 1), s.trim_end().to_owned()),
            _ => {}
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn host_parse_of_its_own_display_round_trips(s in host_text()) {
        if let Ok(host) = Host::parse(&s) {
            prop_assert_eq!(Host::parse(&host.to_string()), Ok(host.clone()));
            if let Host::Name(name) = &host {
                prop_assert!(!name.contains(':') && !name.ends_with('.') && name.len() <= 253);
                prop_assert_eq!(name, &name.to_ascii_lowercase());
            }
        }
    }

    #[test]
    fn split_host_port_never_returns_a_name_with_a_colon_and_reassembles(s in host_text()) {
        if let Ok((host, port)) = split_host_port(&s, 443) {
            prop_assert_ne!(port, 0);
            let authority = match &host {
                Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
                other => {
                    prop_assert!(!other.to_string().contains(':'), "{:?} gave {:?}", s, other);
                    format!("{other}:{port}")
                }
            };
            prop_assert_eq!(split_host_port(&authority, 443), Ok((host, port)));
        }
    }

    #[test]
    fn host_pattern_display_round_trips_and_an_exact_pattern_matches_its_host(s in host_text()) {
        if let Ok(pattern) = HostPattern::parse(&s) {
            prop_assert_eq!(HostPattern::parse(&pattern.to_string()), Ok(pattern.clone()));
            if let HostPattern::Exact(name) = &pattern {
                let host = Host::parse(name);
                prop_assert!(host.as_ref().is_ok_and(|h| pattern.matches(h)));
            }
        }
    }

    #[test]
    fn every_inet_aton_spelling_of_an_ipv4_parses_to_that_address(addr in any::<u32>()) {
        let v4 = Ipv4Addr::from(addr);
        let [a, b, c, d] = v4.octets();
        let cd = u16::from_be_bytes([c, d]);
        let bcd = addr & 0x00ff_ffff;
        for spelling in [
            v4.to_string(),
            addr.to_string(),
            format!("0x{addr:x}"),
            format!("0{addr:o}"),
            format!("{a}.{bcd}"),
            format!("0x{a:x}.0{b:o}.{cd}"),
            format!("0{a:o}.0x{b:X}.0x{c:x}.{d}."),
        ] {
            prop_assert_eq!(Host::parse(&spelling), Ok(Host::Ip(IpAddr::V4(v4))), "{}", spelling);
        }
    }

    #[test]
    fn classify_ip_judges_an_ipv4_like_its_mapped_nat64_and_6to4_forms(addr in any::<u32>()) {
        let v4 = Ipv4Addr::from(addr);
        let class = classify_ip(IpAddr::V4(v4));
        let [a, b, c, d] = v4.octets();
        let forms = [
            v4.to_ipv6_mapped(),
            Ipv6Addr::from(0x0064_ff9b_u128 << 96 | u128::from(addr)),
            Ipv6Addr::new(0x2002, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]), 0, 0, 0, 0, 1),
        ];
        for form in forms {
            prop_assert_eq!(classify_ip(IpAddr::V6(form)), class, "{} vs {}", v4, form);
        }
        // ::a.b.c.d overlaps ::1 and ::, which have their own classes: blocked alike.
        let compatible = Ipv6Addr::from(u128::from(addr));
        prop_assert_eq!(classify_ip(IpAddr::V6(compatible)).is_some(), class.is_some());
    }

    #[test]
    fn classify_ip_never_panics_on_any_ipv6(bits in any::<u128>()) {
        let _ = classify_ip(IpAddr::V6(Ipv6Addr::from(bits)));
    }

    #[test]
    fn parse_config_never_panics_on_arbitrary_text(text in ".{0,400}") {
        if let Err(e) = parse_config("prop.toml", &text) {
            prop_assert!(!e.errors.is_empty());
            let _ = e.to_string();
        }
    }

    #[test]
    fn parse_config_accepts_an_accepted_config_again_to_the_same_result(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 0..4),
    ) {
        let configs = valid_configs();
        let text = apply(&configs[pick.index(configs.len())], &edits);
        match parse_config("prop.toml", &text) {
            Ok(first) => {
                let again = parse_config("prop.toml", &text);
                prop_assert!(again.is_ok(), "accepted once, refused again: {:?}", again.err());
                if let Ok(again) = again {
                    prop_assert_eq!(fingerprint(&first), fingerprint(&again));
                }
            }
            Err(e) => {
                prop_assert!(!e.errors.is_empty());
                let _ = e.to_string();
            }
        }
    }
}
