//! The SSRF deny table: every class, the embedded-IPv4 forms, and public addresses.

use std::net::IpAddr;

use portcullis_rules::{classify_ip, SsrfClass};

fn class(s: &str) -> Option<SsrfClass> {
    classify_ip(s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}")))
}

#[test]
fn classify_ip_blocks_every_ipv4_special_range() {
    use SsrfClass::*;
    for (ip, expected) in [
        ("0.0.0.0", Unspecified),
        ("0.1.2.3", ThisNetwork),
        ("10.0.0.1", Private),
        ("10.255.255.255", Private),
        ("100.64.0.1", Cgnat),
        ("100.127.255.255", Cgnat),
        ("127.0.0.1", Loopback),
        ("127.255.255.254", Loopback),
        ("169.254.0.1", LinkLocal),
        ("172.16.0.1", Private),
        ("172.31.255.255", Private),
        ("192.0.0.8", Reserved),
        ("192.0.2.1", Documentation),
        ("192.168.1.1", Private),
        ("198.18.0.1", Benchmarking),
        ("198.19.255.255", Benchmarking),
        ("198.51.100.7", Documentation),
        ("203.0.113.9", Documentation),
        ("224.0.0.1", Multicast),
        ("239.255.255.250", Multicast),
        ("240.0.0.1", Reserved),
        ("254.1.1.1", Reserved),
        ("255.255.255.255", Broadcast),
    ] {
        assert_eq!(class(ip), Some(expected), "{ip}");
    }
}

#[test]
fn classify_ip_names_metadata_addresses_before_their_broader_class() {
    for ip in [
        "169.254.169.254",
        "100.100.100.200",
        "168.63.129.16",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "::169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "::ffff:100.100.100.200",
    ] {
        assert_eq!(class(ip), Some(SsrfClass::Metadata), "{ip}");
    }
}

#[test]
fn classify_ip_blocks_every_ipv6_special_range() {
    use SsrfClass::*;
    for (ip, expected) in [
        ("::", Unspecified),
        ("::1", Loopback),
        ("fc00::1", UniqueLocal),
        ("fd12:3456::1", UniqueLocal),
        ("fe80::1", LinkLocal),
        ("febf::1", LinkLocal),
        ("fec0::1", SiteLocal),
        ("ff02::1", Multicast),
        ("2001:db8::1", Documentation),
        ("3fff::1", Documentation),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Teredo),
        ("2001:2::1", Benchmarking),
        ("2001:10::1", Reserved),
        ("100::1", Reserved),
        ("4000::1", Reserved),
        ("64:ff9b:0:1::1", Reserved),
    ] {
        assert_eq!(class(ip), Some(expected), "{ip}");
    }
}

#[test]
fn classify_ip_judges_ipv6_forms_by_the_ipv4_address_they_embed() {
    use SsrfClass::*;
    for (ip, expected) in [
        // IPv4-mapped
        ("::ffff:127.0.0.1", Some(Loopback)),
        ("::ffff:10.1.2.3", Some(Private)),
        ("::ffff:8.8.8.8", None),
        // IPv4-compatible (deprecated)
        ("::127.0.0.1", Some(Loopback)),
        ("::192.168.0.1", Some(Private)),
        ("::2", Some(ThisNetwork)),
        // SIIT IPv4-translated
        ("::ffff:0:127.0.0.1", Some(Loopback)),
        // NAT64 well-known prefix
        ("64:ff9b::a9fe:a9fe", Some(Metadata)),
        ("64:ff9b::7f00:1", Some(Loopback)),
        ("64:ff9b::808:808", None),
        // NAT64 local-use prefix, /96 and /48 layouts
        ("64:ff9b:1::7f00:1", Some(Loopback)),
        ("64:ff9b:1:7f00:1::", Some(Loopback)),
        ("64:ff9b:1::808:808", None),
        ("64:ff9b:1:808:8:800::", None),
        ("64:ff9b:1:a9fe:a9:fe00::", Some(Metadata)),
        // 6to4
        ("2002:7f00:1::", Some(Loopback)),
        ("2002:c0a8:101::1", Some(Private)),
        ("2002:808:808::1", None),
    ] {
        assert_eq!(class(ip), expected, "{ip}");
    }
}

#[test]
fn classify_ip_lets_public_addresses_through() {
    for ip in [
        "8.8.8.8",
        "1.1.1.1",
        "104.18.6.192",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "169.253.255.255",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "2606:4700::1111",
        "2a00:1450:4001:80b::200e",
        "2001:4860:4860::8888",
    ] {
        assert_eq!(class(ip), None, "{ip}");
    }
}

#[test]
fn ssrf_class_names_are_stable_snake_case() {
    assert_eq!(SsrfClass::Metadata.as_str(), "metadata");
    assert_eq!(SsrfClass::LinkLocal.as_str(), "link_local");
    assert_eq!(SsrfClass::ThisNetwork.as_str(), "this_network");
    assert_eq!(SsrfClass::UniqueLocal.as_str(), "unique_local");
    assert_eq!(SsrfClass::Cgnat.to_string(), "cgnat");
}
