//! Host and authority canonicalisation: never panics; a parsed host prints to a string
//! that parses back to it; a name is lowercase ASCII with no `:`, no trailing dot and at
//! most 253 characters; `host:port` re-assembled from a split splits the same; a host
//! pattern prints to a string that parses back to it.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use portcullis_rules::{split_host_port, Host, HostPattern};

fuzz_target!(|s: &str| {
    if let Ok(host) = Host::parse(s) {
        assert_eq!(
            Host::parse(&host.to_string()),
            Ok(host.clone()),
            "{s:?} does not round-trip"
        );
        if let Host::Name(name) = &host {
            assert!(
                !name.contains(':') && !name.ends_with('.') && name.len() <= 253,
                "{name:?}"
            );
            assert_eq!(name, &name.to_ascii_lowercase());
        }
    }
    if let Ok((host, port)) = split_host_port(s, 443) {
        assert_ne!(port, 0);
        let authority = match &host {
            Host::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => {
                assert!(
                    !host.to_string().contains(':'),
                    "{s:?} split into a host with a colon"
                );
                format!("{host}:{port}")
            }
        };
        assert_eq!(
            split_host_port(&authority, 443),
            Ok((host, port)),
            "{s:?} -> {authority:?}"
        );
    }
    if let Ok(pattern) = HostPattern::parse(s) {
        assert_eq!(
            HostPattern::parse(&pattern.to_string()),
            Ok(pattern.clone()),
            "{s:?}"
        );
        if let HostPattern::Exact(name) = &pattern {
            let host = Host::parse(name);
            assert!(
                host.as_ref().is_ok_and(|h| pattern.matches(h)),
                "{s:?} does not match itself"
            );
        }
    }
});
