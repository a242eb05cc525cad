//! The hosts a leaf certificate may name: parse, don't validate.

use std::net::IpAddr;

use crate::CaError;

/// Longest input echoed back in [`CaError::InvalidHost`], so a hostile value cannot flood logs.
const MAX_ECHO: usize = 256;

/// A host that a leaf can be minted for, in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeafHost {
    /// Lowercase ASCII DNS name with no trailing dot.
    Dns(String),
    /// IP literal. It gets an IP SAN.
    Ip(IpAddr),
}

impl LeafHost {
    /// Accept a DNS name or an IP literal (IPv6 with or without brackets).
    ///
    /// The caller should already pass the canonical form (lowercase, no trailing dot). For
    /// safety we fold ASCII case and drop one trailing dot. Otherwise we reject: IDNs must
    /// come in punycode, and wildcards, spaces, empty labels and all-numeric TLDs are refused.
    /// The last rule keeps IP look-alikes such as `010.1.1.1` out of DNS SANs.
    pub(crate) fn parse(input: &str) -> Result<Self, CaError> {
        let invalid = || CaError::InvalidHost { host: echo(input) };

        let unbracketed = input
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'));
        if let Some(inner) = unbracketed {
            return match inner.parse::<std::net::Ipv6Addr>() {
                Ok(v6) => Ok(LeafHost::Ip(IpAddr::V6(v6))),
                Err(_) => Err(invalid()),
            };
        }
        if let Ok(ip) = input.parse::<IpAddr>() {
            return Ok(LeafHost::Ip(ip));
        }

        let name = input.strip_suffix('.').unwrap_or(input);
        if name.is_empty() || name.len() > 253 || !name.is_ascii() {
            return Err(invalid());
        }
        let name = name.to_ascii_lowercase();
        let mut last_label = "";
        for label in name.split('.') {
            let valid_chars = label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if label.is_empty()
                || label.len() > 63
                || !valid_chars
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return Err(invalid());
            }
            last_label = label;
        }
        if last_label.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        Ok(LeafHost::Dns(name))
    }

    /// The canonical text form: the cache key and the leaf's CN.
    pub(crate) fn canonical(&self) -> String {
        match self {
            LeafHost::Dns(name) => name.clone(),
            LeafHost::Ip(ip) => ip.to_string(),
        }
    }
}

fn echo(input: &str) -> String {
    match input.char_indices().nth(MAX_ECHO) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_folded_to_lowercase_without_trailing_dot() {
        assert_eq!(
            LeafHost::parse("API.OpenAI.com.").ok(),
            Some(LeafHost::Dns("api.openai.com".into()))
        );
        assert_eq!(
            LeafHost::parse("xn--bcher-kva.example").ok(),
            Some(LeafHost::Dns("xn--bcher-kva.example".into()))
        );
    }

    #[test]
    fn ip_literals_parse_with_or_without_brackets() {
        assert_eq!(
            LeafHost::parse("127.0.0.1").ok(),
            Some(LeafHost::Ip(
                "127.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]))
            ))
        );
        let v6 = LeafHost::parse("[2001:DB8::1]").ok();
        assert_eq!(
            v6.as_ref().map(LeafHost::canonical).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            LeafHost::parse("::1")
                .ok()
                .map(|h| h.canonical())
                .as_deref(),
            Some("::1")
        );
    }

    #[test]
    fn malformed_hosts_are_rejected_as_invalid_host() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        for bad in [
            "",
            ".",
            "a b",
            " example.com",
            "example.com\n",
            "*.example.com",
            "a..b",
            ".example.com",
            "-bad.com",
            "bad-.com",
            "bücher.example",
            "exa\0mple.com",
            "example.com:443",
            "[example.com]",
            "[127.0.0.1]",
            "010.1.1.1",
            "1.2.3",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(
                matches!(LeafHost::parse(bad), Err(CaError::InvalidHost { .. })),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn invalid_host_error_echo_is_bounded() {
        let huge = "x ".repeat(10_000);
        match LeafHost::parse(&huge) {
            Err(CaError::InvalidHost { host }) => assert!(host.chars().count() <= MAX_ECHO + 1),
            other => panic!("expected InvalidHost, got {other:?}"),
        }
    }
}
