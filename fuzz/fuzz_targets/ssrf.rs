//! The SSRF classifier: never panics; an IPv4 address is judged exactly like its
//! IPv4-mapped, NAT64 and 6to4 forms, and blocked or not like its IPv4-compatible form;
//! every spelling of an IPv4 literal classifies the same.
#![no_main]
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use portcullis_rules::{classify_ip, Host};

fuzz_target!(|data: [u8; 16]| {
    let _ = classify_ip(IpAddr::V6(Ipv6Addr::from(data)));
    let v4 = Ipv4Addr::new(data[0], data[1], data[2], data[3]);
    let class = classify_ip(IpAddr::V4(v4));
    let [a, b, c, d] = v4.octets();
    let low = u128::from(u32::from(v4));
    let mapped = IpAddr::V6(v4.to_ipv6_mapped());
    let nat64 = IpAddr::V6(Ipv6Addr::from(0x0064_ff9b_u128 << 96 | low));
    let six_to_four = IpAddr::V6(Ipv6Addr::new(
        0x2002,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
        0,
        0,
        0,
        0,
        1,
    ));
    for form in [mapped, nat64, six_to_four] {
        assert_eq!(classify_ip(form), class, "{v4} vs {form}");
    }
    let compatible = IpAddr::V6(Ipv6Addr::from(low));
    assert_eq!(
        classify_ip(compatible).is_some(),
        class.is_some(),
        "{v4} vs {compatible}"
    );
    for spelling in [
        u32::from(v4).to_string(),
        format!("0x{:x}", u32::from(v4)),
        format!("0{a:o}.0x{b:x}.{}", u16::from_be_bytes([c, d])),
    ] {
        assert_eq!(
            Host::parse(&spelling),
            Ok(Host::Ip(IpAddr::V4(v4))),
            "{spelling}"
        );
    }
});
