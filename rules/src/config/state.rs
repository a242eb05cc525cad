//! `[state]`: where budgets, rate limits and approvals live (SPEC §8, §14). In this
//! process's memory by default; in a Redis server that several replicas share with
//! `backend = "redis"`. This crate only checks the settings; the proxy connects.

use std::fmt;
use std::time::Duration;

use super::raw::RawState;
use super::validate::Errors;

/// `[state]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateConfig {
    /// Default [`StateBackend::Memory`].
    pub backend: StateBackend,
}

/// Where the shared counters and held requests live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateBackend {
    /// In this process: nothing is shared between replicas.
    #[default]
    Memory,
    /// A Redis server shared by every replica.
    Redis {
        url: RedisUrl,
        /// The longest one Redis command may take before the request that needed it
        /// fails closed. Default 500 ms.
        timeout: Duration,
    },
}

/// The default `[state] timeout`.
pub const DEFAULT_STATE_TIMEOUT: Duration = Duration::from_millis(500);

/// A checked `redis://[[user]:password@]host[:port][/db]` URL. It may hold a password,
/// so `Display` and `Debug` show it with the credentials replaced by `***`; only
/// [`RedisUrl::expose`] gives the whole URL, for the client that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    full: String,
    redacted: String,
}

impl RedisUrl {
    /// Checks the URL's shape (not that anything answers there).
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        let hint =
            "write redis://HOST:6379/0, with the password if any as redis://:PASSWORD@HOST:6379/0";
        let redacted = redact(s);
        if s.starts_with("rediss://") {
            return Err(format!(
                "`{redacted}`: TLS to Redis (rediss://) is not supported by this version of Portcullis; use redis:// on a trusted network, or a local TLS tunnel such as stunnel"
            ));
        }
        let Some(rest) = s.strip_prefix("redis://") else {
            return Err(format!("`{redacted}` is not a Redis URL; {hint}"));
        };
        if rest.contains(['?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "`{redacted}`: query strings, fragments and spaces are not supported; {hint}"
            ));
        }
        let (authority, db) = match rest.split_once('/') {
            Some((a, db)) => (a, Some(db)),
            None => (rest, None),
        };
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_host_port(host_port);
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            }
        };
        if !host_ok {
            return Err(format!("`{redacted}` has no valid host; {hint}"));
        }
        if let Some(port) = port {
            if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                return Err(format!(
                    "`{redacted}`: `{port}` is not a port (1-65535); {hint}"
                ));
            }
        }
        if let Some(db) = db.filter(|d| !d.is_empty()) {
            if db.parse::<u32>().is_err() {
                return Err(format!(
                    "`{redacted}`: the database `/{db}` is not a number; {hint}"
                ));
            }
        }
        Ok(RedisUrl {
            full: s.to_owned(),
            redacted,
        })
    }

    /// The whole URL, password included. Never log it: use `Display`.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// The password in the URL, if any (percent-encoded as written), so that error
    /// text from a client library can be scrubbed of it.
    pub fn password(&self) -> Option<&str> {
        let rest = self.full.strip_prefix("redis://")?;
        let authority = rest.split('/').next()?;
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (_, password) = userinfo.split_once(':')?;
        (!password.is_empty()).then_some(password)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted)
    }
}

/// `host:port`, `host`, `[v6]:port` or `[v6]`.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find("]:") {
            Some(i) => (&s[..=i], Some(&s[i + 2..])),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

/// The URL with everything before the host's `@` (user and password) replaced by `***`.
fn redact(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        // Not a URL at all: it might be a bare password pasted in the wrong place.
        return "…".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => s.to_owned(),
    }
}

impl Errors<'_> {
    pub(super) fn state(&mut self, raw: Option<RawState>) -> StateConfig {
        let mut state = StateConfig::default();
        let Some(raw) = raw else { return state };
        let timeout_span = raw.timeout.as_ref().map(|t| t.span());
        let timeout = self
            .duration(raw.timeout, false)
            .unwrap_or(DEFAULT_STATE_TIMEOUT);
        let url = raw
            .url
            .as_ref()
            .and_then(|u| self.check(&u.span(), RedisUrl::parse(u.get_ref())));
        match raw.backend.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
            None | Some(("memory", _)) => {
                if let Some(u) = &raw.url {
                    self.at(
                        &u.span(),
                        "`url` only applies to backend = \"redis\"; add that, or remove `url`",
                    );
                } else if let Some(span) = &timeout_span {
                    self.at(
                        span,
                        "`timeout` only applies to backend = \"redis\"; add that, or remove `timeout`",
                    );
                }
            }
            Some(("redis", span)) => match (url, &raw.url) {
                (Some(url), _) => state.backend = StateBackend::Redis { url, timeout },
                (None, Some(_)) => {} // already reported
                (None, None) => self.at(
                    &span,
                    "backend = \"redis\" needs `url`, as in url = \"redis://127.0.0.1:6379/0\"",
                ),
            },
            Some((other, span)) => self.at(
                &span,
                format!("unknown state backend \"{other}\"; use \"memory\" (the default, one process) or \"redis\" (shared by replicas)"),
            ),
        }
        state
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_with_host_port_db_and_credentials_parse() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "redis://localhost",
            "redis://redis.internal:6380",
            "redis://:hunter2@redis:6379/3",
            "redis://app:hunter2@redis:6379/",
            "redis://[::1]:6379/0",
        ] {
            assert!(RedisUrl::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn malformed_redis_urls_are_refused() {
        for bad in [
            "127.0.0.1:6379",
            "http://redis:6379",
            "rediss://redis:6380",
            "redis://",
            "redis://:pw@",
            "redis://redis:0",
            "redis://redis:http",
            "redis://redis:6379/zero",
            "redis://redis:6379/0?protocol=resp3",
            "redis://[::1:6379",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_password_never_shows_in_display_debug_or_errors() {
        let url = RedisUrl::parse("redis://app:hunter2@redis:6379/0").unwrap();
        assert_eq!(url.to_string(), "redis://***@redis:6379/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.password(), Some("hunter2"));
        assert_eq!(url.expose(), "redis://app:hunter2@redis:6379/0");
        let err = RedisUrl::parse("redis://app:hunter2@redis:99999/0").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = RedisUrl::parse("rediss://:hunter2@redis").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(RedisUrl::parse("redis://redis").unwrap().password(), None);
    }
}
