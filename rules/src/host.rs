//! Host names, IP literals, `host:port` authorities and route host patterns.
//!
//! Every host the proxy compares goes through [`Host::parse`] first, so that one
//! destination has exactly one spelling: `API.OpenAI.com.`, `api.openai.com` and
//! `api.openai.com.` are the same host, and `0x7f.1`, `2130706433` and `127.0.0.1`
//! are the same IP. Matching then only ever compares canonical values.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A canonical destination host: a lowercase DNS name, or an IP literal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A lowercase ASCII name without a trailing dot, e.g. `api.openai.com`.
    Name(String),
    /// An IP literal, in any of the spellings [`Host::parse`] accepts.
    Ip(IpAddr),
}

/// Why a host or `host:port` string was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError {
    /// Nothing was given.
    #[error("the host is empty")]
    Empty,
    /// The host has non-ASCII characters.
    #[error("the host has non-ASCII characters; IDNs must be written in punycode (xn--…)")]
    NonAscii,
    /// A character that never appears in a host name.
    #[error("the host has the character {0:?}, which is not allowed in a host name (use a-z, 0-9, '-', '.')")]
    InvalidChar(char),
    /// Two dots in a row, or a leading dot.
    #[error("the host has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    /// A label longer than 63 characters.
    #[error("a label of the host is {0} characters long; the maximum is 63")]
    LabelTooLong(usize),
    /// A name longer than 253 characters.
    #[error("the host is {0} characters long; the maximum is 253")]
    TooLong(usize),
    /// Looks like an IP address but is not a valid one.
    #[error("`{0}` looks like an IP address but is not a valid one")]
    BadIpLiteral(String),
    /// An IPv6 literal in an authority without brackets.
    #[error("an IPv6 address with a port must be written in brackets, as in `[::1]:443`")]
    UnbracketedIpv6,
    /// The port is missing, not a number, or outside 1..=65535.
    #[error("`{0}` is not a valid port; use a number from 1 to 65535")]
    BadPort(String),
}

/// The longest name DNS can carry (without the trailing dot).
const MAX_NAME_LEN: usize = 253;
/// The longest single DNS label.
const MAX_LABEL_LEN: usize = 63;

impl Host {
    /// Canonicalize a host as a client wrote it (CONNECT target, Host header, SNI, config).
    ///
    /// Lowercases, strips ONE trailing dot, accepts `[v6]` brackets, and treats every
    /// `inet_aton` spelling of IPv4 as an IP literal: `2130706433`, `0177.0.0.1`,
    /// `0x7f.0.0.1`, `127.1` and `0x7f000001` all become `Ip(127.0.0.1)`. A name whose
    /// last label is numeric (`1.2.3.999`, `foo.123`, `a.0x1`) must be a valid IPv4
    /// literal or it is an error, never a name: no real top-level domain is numeric,
    /// and resolvers disagree on what such names mean.
    pub fn parse(s: &str) -> Result<Host, HostError> {
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        if !s.is_ascii() {
            return Err(HostError::NonAscii);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| HostError::BadIpLiteral(s.to_owned()))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| HostError::BadIpLiteral(s.to_owned()));
        }
        if s.contains(':') {
            // A bare IPv6 literal (`::1`) is fine where no port can follow (SNI, config).
            // A single colon is a `host:port` given where only a host belongs.
            return match s.parse::<Ipv6Addr>() {
                Ok(ip) => Ok(Host::Ip(IpAddr::V6(ip))),
                Err(_) if s.matches(':').count() == 1 => Err(HostError::InvalidChar(':')),
                Err(_) => Err(HostError::BadIpLiteral(s.to_owned())),
            };
        }
        let lower = s.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        let last_label = name.rsplit('.').next().unwrap_or(name);
        if is_numeric_label(last_label) {
            return parse_inet_aton(name)
                .map(|ip| Host::Ip(IpAddr::V4(ip)))
                .ok_or_else(|| HostError::BadIpLiteral(s.to_owned()));
        }
        validate_name(name)?;
        Ok(Host::Name(name.to_owned()))
    }

    /// True for an IP literal.
    pub fn is_ip(&self) -> bool {
        matches!(self, Host::Ip(_))
    }
}

impl fmt::Display for Host {
    /// Names as-is, IPv4 dotted, IPv6 WITHOUT brackets (add them yourself for an authority).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl std::str::FromStr for Host {
    type Err = HostError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Host::parse(s)
    }
}

/// Split `host:port`, `[v6]:port` or a bare `host` (which gets `default_port`).
///
/// The port must be 1..=65535 and written in digits only. An IPv6 literal must be in
/// brackets, because `::1:443` could be read two ways.
pub fn split_host_port(authority: &str, default_port: u16) -> Result<(Host, u16), HostError> {
    if authority.is_empty() {
        return Err(HostError::Empty);
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(close) => {
                let (host, rest) = authority.split_at(close + 1);
                match rest {
                    "" => (host, None),
                    _ => match rest.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None => return Err(HostError::BadIpLiteral(authority.to_owned())),
                    },
                }
            }
            None => return Err(HostError::BadIpLiteral(authority.to_owned())),
        }
    } else {
        match authority.split_once(':') {
            Some((_, rest)) if rest.contains(':') => return Err(HostError::UnbracketedIpv6),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => parse_port(port).ok_or_else(|| HostError::BadPort(port.to_owned()))?,
        None if default_port == 0 => return Err(HostError::BadPort("0".to_owned())),
        None => default_port,
    };
    Ok((Host::parse(host)?, port))
}

/// A port written in ASCII digits only, 1..=65535 (`u16::from_str` would accept `+443`).
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(port) => Some(port),
    }
}

/// Labels of 1..=63 chars from `[a-z0-9-_]`, at most 253 chars in all. `name` is lowercase.
fn validate_name(name: &str) -> Result<(), HostError> {
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong(name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong(label.len()));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(HostError::InvalidChar(bad));
        }
    }
    Ok(())
}

/// A label `inet_aton` would read as a number: decimal digits, or `0x` plus hex digits.
fn is_numeric_label(label: &str) -> bool {
    if label.is_empty() {
        return false;
    }
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    label.bytes().all(|b| b.is_ascii_digit())
}

/// The classic BSD `inet_aton`: 1 to 4 parts, each decimal, octal (leading `0`) or hex
/// (`0x`); the last part fills all remaining bytes. `s` is lowercase, without trailing dot.
fn parse_inet_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(parse_inet_aton_part(part)?);
    }
    let (last, leading) = values.split_last()?;
    if leading.iter().any(|v| *v > 255) {
        return None;
    }
    // The last part covers the remaining 4 - (n - 1) bytes.
    let last_bits = 8 * (5 - parts.len()) as u32;
    if last_bits < 32 && *last >= (1u64 << last_bits) {
        return None;
    }
    if *last > u64::from(u32::MAX) {
        return None;
    }
    let mut addr: u64 = 0;
    for (i, v) in leading.iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    addr |= last;
    u32::try_from(addr).ok().map(Ipv4Addr::from)
}

fn parse_inet_aton_part(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        // `0x` alone is 0, as in glibc and the WHATWG URL parser.
        if hex.is_empty() {
            return Some(0);
        }
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    // `from_str_radix` would accept a sign; inet_aton does not.
    let well_formed = match radix {
        16 => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => digits.bytes().all(|b| b.is_ascii_digit()),
    };
    if !well_formed {
        return None;
    }
    // Anything past 32 bits is invalid anyway; the length cap keeps u64 from overflowing.
    let digits = digits.trim_start_matches('0');
    if digits.len() > 16 {
        return None;
    }
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, radix).ok()
}

/// One entry of a route's `hosts`: an exact name, a one-label wildcard, or an IP literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches this canonical name only.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`. Matches exactly one extra
    /// label (`a.example.com`), like a TLS wildcard: never the apex, never `a.b.example.com`.
    Wildcard(String),
    /// Matches this IP only (an IPv4-mapped IPv6 form of it too).
    Ip(IpAddr),
}

impl HostPattern {
    /// Parse `api.openai.com`, `*.openai.azure.com` or an IP literal.
    ///
    /// Case-insensitive, a trailing dot is ignored. Only a single leading `*.` is allowed.
    /// The error message says how to fix the pattern.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        if s.is_empty() {
            return Err("the host is empty; write a name such as `api.example.com`".to_owned());
        }
        if !s.is_ascii() {
            return Err(format!(
                "`{s}` has non-ASCII characters; IDNs must be written in punycode (xn--…)"
            ));
        }
        if s.contains("://") {
            return Err(format!(
                "`{s}` looks like a URL; write the host name only, without scheme or path"
            ));
        }
        if s == "*" || s == "*." {
            return Err(
                "a bare `*` would match every host; list the hosts, or use a wildcard such as `*.example.com`"
                    .to_owned(),
            );
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(format!(
                    "`{s}` has more than one `*`; only a single leading `*.` is allowed, as in `*.example.com`"
                ));
            }
            return match Host::parse(rest) {
                Ok(Host::Name(suffix)) => Ok(HostPattern::Wildcard(format!(".{suffix}"))),
                Ok(Host::Ip(_)) => Err(format!(
                    "`{s}` puts a wildcard on an IP address; wildcards only apply to names, so list the IP itself"
                )),
                Err(e) => Err(format!("`{s}` is not a valid host pattern: {e}")),
            };
        }
        if s.contains('*') {
            return Err(format!(
                "`{s}` has a `*` that is not a whole leading label; wildcards are only allowed as a leading `*.`, as in `*.example.com`"
            ));
        }
        match Host::parse(s) {
            Ok(Host::Name(name)) => Ok(HostPattern::Exact(name)),
            Ok(Host::Ip(ip)) => Ok(HostPattern::Ip(ip)),
            Err(_) if looks_like_host_port(s) => Err(format!(
                "`{s}` includes a port; write the host alone and list the port in `ports`"
            )),
            Err(e) => Err(format!("`{s}` is not a valid host: {e}")),
        }
    }

    /// Whether `host` (already canonical) is matched by this pattern.
    pub fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(want), Host::Name(name)) => want == name,
            (HostPattern::Wildcard(suffix), Host::Name(name)) => {
                wildcard_key(name) == Some(suffix.as_str())
            }
            (HostPattern::Ip(want), Host::Ip(ip)) => want.to_canonical() == ip.to_canonical(),
            _ => false,
        }
    }
}

impl fmt::Display for HostPattern {
    /// The pattern as a user would write it: `api.openai.com`, `*.openai.azure.com`, `10.0.0.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The wildcard suffix that would match `name`: everything from its first dot
/// (`a.example.com` → `.example.com`). A single-label name has none.
pub(crate) fn wildcard_key(name: &str) -> Option<&str> {
    name.find('.').map(|dot| &name[dot..])
}

fn looks_like_host_port(s: &str) -> bool {
    matches!(s.rsplit_once(':'), Some((host, port)) if !host.contains(':') && parse_port(port).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_aton_rejects_a_part_over_255_before_the_last() {
        assert_eq!(parse_inet_aton("256.1"), None);
        assert_eq!(parse_inet_aton("1.256.1"), None);
    }

    #[test]
    fn inet_aton_rejects_last_part_too_big_for_the_remaining_bytes() {
        assert_eq!(parse_inet_aton("1.2.3.256"), None);
        assert_eq!(parse_inet_aton("1.2.65536"), None);
        assert_eq!(parse_inet_aton("1.16777216"), None);
        assert_eq!(parse_inet_aton("4294967296"), None);
        assert_eq!(
            parse_inet_aton("4294967295"),
            Some(Ipv4Addr::new(255, 255, 255, 255))
        );
    }

    #[test]
    fn inet_aton_rejects_non_octal_digits_after_a_leading_zero() {
        assert_eq!(parse_inet_aton("08.0.0.1"), None);
        assert_eq!(parse_inet_aton("0.0.0.09"), None);
    }

    #[test]
    fn inet_aton_rejects_five_parts_and_huge_numbers() {
        assert_eq!(parse_inet_aton("1.2.3.4.5"), None);
        assert_eq!(parse_inet_aton("99999999999999999999999999"), None);
        assert_eq!(parse_inet_aton("0x1ffffffffffffffffffff"), None);
    }

    #[test]
    fn inet_aton_accepts_many_leading_zeros() {
        assert_eq!(
            parse_inet_aton("0000000000000000000000177.1"),
            Some(Ipv4Addr::new(127, 0, 0, 1))
        );
    }
}
