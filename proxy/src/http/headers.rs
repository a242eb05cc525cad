//! Header hygiene: what never crosses the proxy, in either direction.

use http::header::{
    HeaderName, HeaderValue, ACCEPT_ENCODING, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION,
    TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};

/// Our verdict headers. An upstream's copies are deleted so it cannot forge them.
pub const HDR_DECISION: &str = "x-portcullis-decision";
pub const HDR_REASON: &str = "x-portcullis-reason";
pub const HDR_EVENT_ID: &str = "x-portcullis-event-id";

/// Hop-by-hop headers never cross the proxy (RFC 9110 §7.6.1), and neither do
/// proxy credentials. `keep_upgrade` keeps `Upgrade` for a WebSocket handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names, then done. (Removing
    // each by a string name parsed the name anew every time, twice per request.)
    if !headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || *k == UPGRADE)
    {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if keep_upgrade && name == UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(UPGRADE);
    }
}

/// The hop-by-hop headers of RFC 9110 §7.6.1, plus the proxy's own.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHORIZATION,
    PROXY_AUTHENTICATE,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
];

/// Prepares request headers for the upstream. The response is redacted on its
/// way back (SPEC §6), which only works on bytes we can read, so the upstream
/// is asked for an unencoded body.
pub fn scrub_request_headers(headers: &mut HeaderMap, websocket: bool) {
    strip_hop_by_hop(headers, websocket);
    headers.remove(http::header::HOST);
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Prepares upstream response headers for the client.
pub fn scrub_response_headers(headers: &mut HeaderMap, upgrade: bool, event_id: &str) {
    strip_hop_by_hop(headers, upgrade);
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-portcullis-"))
        .cloned()
        .collect();
    for k in ours {
        headers.remove(k);
    }
    if let Ok(v) = HeaderValue::from_str(event_id) {
        headers.insert(HDR_EVENT_ID, v);
    }
}

/// An upstream that echoes the injected key in a response header (an error's
/// `WWW-Authenticate`, a debug header) does not hand it to the agent: a value
/// holding a vault key, in any encoding, is replaced whole.
pub fn redact_vault_keys(vault: &portcullis_rules::VaultScanner, headers: &mut HeaderMap) {
    if vault.is_empty() {
        return;
    }
    for value in headers.values_mut() {
        if !vault.scan(value.as_bytes()).is_empty() {
            *value = HeaderValue::from_static("[REDACTED]");
        }
    }
}

/// A WebSocket handshake: `Upgrade: websocket` and `Connection: upgrade`.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let conn_upgrade = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && conn_upgrade
}

/// Uncompressed text (JSON, SSE, plain text) can be redacted; binary or
/// compressed bodies pass untouched.
pub fn redactable(headers: &HeaderMap) -> bool {
    let encoded = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    !encoded && (ct.starts_with("text/") || ct.contains("json") || ct.contains("event-stream"))
}

/// What a request asked the connection to become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Connect,
    Upgrade,
    Nothing,
}

impl Asked {
    pub fn of<B>(req: &Request<B>) -> Asked {
        if req.method() == Method::CONNECT {
            Asked::Connect
        } else if req.headers().contains_key(UPGRADE) {
            Asked::Upgrade
        } else {
            Asked::Nothing
        }
    }
}

/// After `CONNECT` or an `Upgrade` request the framing guard stops checking
/// heads, because the bytes may no longer be HTTP/1. If the protocol did not
/// switch (a refusal, a 407, a non-101 answer), the connection must not carry
/// another request, so it closes.
pub fn close_unless_switched<T>(asked: Asked, resp: &mut Response<T>) {
    let switched = match asked {
        Asked::Connect => resp.status().is_success(),
        Asked::Upgrade => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
        Asked::Nothing => return,
    };
    if !switched {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_proxy_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic Zm9vOmJhcg=="),
        );
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("authorization", HeaderValue::from_static("Bearer k"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn each_hop_by_hop_header_is_stripped_even_without_a_connection_header() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{name} crossed");
            assert!(h.contains_key("x-kept"));
        }
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert!(
            h.contains_key(UPGRADE),
            "a websocket handshake keeps Upgrade"
        );
    }

    #[test]
    fn upstream_is_asked_for_an_unencoded_body() {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
        scrub_request_headers(&mut h, false);
        assert_eq!(h[ACCEPT_ENCODING], "identity");
    }

    #[test]
    fn upstream_cannot_forge_portcullis_headers() {
        let mut h = HeaderMap::new();
        h.insert(HDR_DECISION, HeaderValue::from_static("allow"));
        scrub_response_headers(&mut h, false, "ev");
        assert!(!h.contains_key(HDR_DECISION));
        assert_eq!(h[HDR_EVENT_ID], "ev");
    }

    fn resp(status: u16) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    #[test]
    fn an_upgrade_or_connect_that_did_not_switch_closes_the_connection() {
        let up = Request::builder().header(UPGRADE, "foo").body(()).unwrap();
        let mut r = resp(200);
        close_unless_switched(Asked::of(&up), &mut r);
        assert_eq!(r.headers()[CONNECTION], "close");
        let mut r = resp(101);
        close_unless_switched(Asked::of(&up), &mut r);
        assert!(!r.headers().contains_key(CONNECTION));

        let connect = Request::builder().method(Method::CONNECT).body(()).unwrap();
        let mut r = resp(407);
        close_unless_switched(Asked::of(&connect), &mut r);
        assert_eq!(r.headers()[CONNECTION], "close");

        let plain = Request::builder().body(()).unwrap();
        let mut r = resp(403);
        close_unless_switched(Asked::of(&plain), &mut r);
        assert!(!r.headers().contains_key(CONNECTION));
    }
}
