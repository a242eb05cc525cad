//! Parsers for single config values: ids, hashes, methods, networks, binds, durations,
//! provider auth headers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::catalog::Operation;

pub(super) fn parse_operation(s: &str) -> Result<Operation, String> {
    Operation::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Operation::ALL.iter().map(Operation::as_str).collect();
        format!("unknown operation `{s}`; use one of {}", names.join(", "))
    })
}

/// A header the proxy may set for a provider key: a lowercase token that is not a
/// framing or hop-by-hop header.
pub(super) fn parse_auth_header(s: &str) -> Result<String, String> {
    let token = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!(
            "auth_header `{s}` is not a header name; write one like \"authorization\" or \"x-api-key\""
        ));
    }
    let lower = s.to_ascii_lowercase();
    const FORBIDDEN: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
    ];
    if FORBIDDEN.contains(&lower.as_str()) {
        return Err(format!(
            "auth_header `{s}` is a framing or hop-by-hop header; keys go in a header such as \"authorization\""
        ));
    }
    Ok(lower)
}

/// The header value with `{key}` exactly once, and no control characters.
pub(super) fn parse_auth_format(s: &str) -> Result<String, String> {
    if s.matches("{key}").count() != 1 {
        return Err(format!(
            "auth_format `{s}` must contain `{{key}}` exactly once, as in \"Bearer {{key}}\""
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("auth_format has a control character (a line break?); write the header value on one line".to_owned());
    }
    Ok(s.to_owned())
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Ids name things in the ledger, metrics and `Proxy-Authorization` (where `:` would
/// split the agent id), so they are kept to a safe alphabet.
pub(super) fn validate_id(kind: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} id `{id}` is not valid; use 1 to 64 ASCII letters, digits, `-`, `_` or `.`"
        ))
    }
}

pub(super) fn parse_token_hash(s: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    let hint = "`portcullis agent hash-token` prints it";
    if s.len() != 64 {
        return Err(format!(
            "token_sha256 must be 64 hex characters (the SHA-256 of the token), got {} characters; {hint}",
            s.chars().count()
        ));
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        format!("token_sha256 has a character that is not 0-9 or a-f; it must be the hex SHA-256 of the token; {hint}")
    })?;
    Ok(out)
}

/// Methods a route may name. A typo (`PSOT`) would silently never match, so unknown
/// methods are refused rather than accepted as opaque tokens.
pub(super) const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "QUERY",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
];

pub(super) fn parse_method(s: &str) -> Result<String, String> {
    let is_token = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if s == "*" {
        return Err("`*` is not a method; remove `methods` to allow any method".to_owned());
    }
    if !is_token {
        return Err(format!(
            "method `{s}` is not an HTTP method token; write it like \"GET\" or \"POST\""
        ));
    }
    let upper = s.to_ascii_uppercase();
    if upper == "CONNECT" {
        return Err("CONNECT opens the tunnel and is checked by `hosts` and `ports`; routes match the requests inside it, so remove it".to_owned());
    }
    if !KNOWN_METHODS.contains(&upper.as_str()) {
        return Err(format!(
            "unknown method `{s}`; use one of {}",
            KNOWN_METHODS.join(", ")
        ));
    }
    Ok(upper)
}

/// A CIDR (`127.0.0.0/8`) or a bare IP (a /32 or /128).
pub(super) fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    Err(format!(
        "`{s}` is not a network; write a CIDR such as \"127.0.0.0/8\" or \"fd00::/8\", or a single IP"
    ))
}

pub(super) fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("`{s}` is not a bind address; write IP:PORT, as in \"127.0.0.1:8080\" or \"[::1]:8080\"")
    })
}

/// `"500ms"`, `"10s"`, `"5m"`, `"2h"`, `"7d"`.
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{s}` is not a duration; write a whole number and a unit, as in \"500ms\", \"10s\", \"5m\", \"2h\" or \"7d\""
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_accepts_each_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn duration_rejects_missing_unit_sign_space_and_overflow() {
        for bad in [
            "10",
            "s",
            "",
            "-1s",
            "1.5s",
            "10 s",
            "10sec",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let text = "a = \"é\"\nb = 1";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, text.find('b').unwrap_or(0)), (2, 1));
        // The closing quote after a two-byte character is column 7.
        assert_eq!(line_col(text, 7), (1, 7));
    }

    #[test]
    fn method_is_uppercased_and_typos_are_refused() {
        assert_eq!(parse_method("post"), Ok("POST".to_owned()));
        assert!(parse_method("PSOT").is_err());
        assert!(parse_method("GE T").is_err());
        assert!(parse_method("*").is_err());
        assert!(parse_method("CONNECT").is_err());
    }
}
