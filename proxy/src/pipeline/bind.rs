//! Phase `bind` (SPEC §3 steps 5.1–5.2): everything about a request that can
//! be checked from its head, before any policy runs.

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Uri};
use hyper::body::Incoming;
use portcullis_rules::{split_host_port, Reason};

use crate::flow::{Entry, Flow, Scheme, Target, TunnelVerdict, Wire};
use crate::http::framing::{self, Violation};
use crate::http::headers::is_websocket;
use crate::http::path::canonicalize;
use crate::identity::{identify, Identity};
use crate::pipeline::inject::CREDENTIAL_HEADERS;
use crate::policy::PolicySnapshot;
use crate::record::RequestRecord;
use crate::rescue::Refusal;

/// What `bind` established.
pub struct Bound {
    pub who: Identity,
    pub target: Target,
    /// The canonical path: what classification, the route walk and the
    /// upstream all see.
    pub path: String,
    /// The URI the upstream gets, built from the checked parts.
    pub upstream_uri: Uri,
    pub websocket: bool,
}

pub fn bind(
    flow: &Flow,
    snap: &PolicySnapshot,
    rec: &mut RequestRecord,
    mut req: Request<Incoming>,
) -> Result<(Bound, Request<Incoming>), Refusal> {
    // On a gateway, the path after `/{provider}`.
    let mut gateway_path: Option<String> = None;
    // Framing first: a bad head never reaches policy.
    match &flow.wire {
        Wire::Http1 { nonce } => {
            if let Some(v) = framing::violation_of(&req, nonce) {
                // The synthetic request's method is ours, not the client's.
                rec.method = None;
                // Inside a tunnel, the record still says whose and where to.
                if let Entry::Tunnel { who, target, .. } = &flow.entry {
                    rec.who = Some(who.clone());
                    rec.target = Some(target.clone());
                }
                return Err(framing_refusal(v));
            }
        }
        Wire::Http2 => {
            if req.headers().get_all(HOST).iter().count() > 1 {
                return Err(Refusal::deny(Reason::BadFraming).detail("multiple Host headers"));
            }
        }
    }
    // Who: a tunnel's identity is re-checked against the policy in force, so a
    // rotated token or a moved agent stops on its next request.
    let (who, target) = match &flow.entry {
        Entry::Tunnel { who, target, .. } => {
            rec.target = Some(target.clone());
            if !who.still_valid(&snap.policy) {
                // The record names the identity the tunnel was opened with.
                rec.who = Some(who.clone());
                return Err(Refusal::deny(Reason::AuthFailed).close());
            }
            (who.clone(), target.clone())
        }
        Entry::Plain { auth } => {
            let Some(who) = identify(&snap.policy, auth, req.headers()) else {
                return Err(Refusal::deny(Reason::AuthFailed));
            };
            rec.who = Some(who.clone());
            (who, plain_target(&req)?)
        }
        Entry::Gateway { auth } => {
            let who = identify_gateway(&snap.policy, auth, req.headers()).ok_or_else(|| {
                Refusal::deny(Reason::AuthFailed).status(StatusCode::UNAUTHORIZED)
            })?;
            // The agent's token never leaves: the provider gets the vault key, or nothing.
            for name in CREDENTIAL_HEADERS {
                req.headers_mut().remove(*name);
            }
            rec.who = Some(who.clone());
            let (target, rest) = gateway_target(snap, req.uri().path())?;
            gateway_path = Some(rest);
            (who, target)
        }
    };
    rec.who = Some(who.clone());
    rec.target = Some(target.clone());
    // A CONNECT-time denial is answered here, inside TLS, so the SDK shows it.
    if let Entry::Tunnel {
        verdict: TunnelVerdict::Refused(d),
        ..
    } = &flow.entry
    {
        return Err(Refusal::new(d.clone()));
    }
    // Host binding: stops domain fronting through an allowed tunnel. (A
    // gateway request names its target by path; its Host is the gateway's.)
    let h2 = matches!(flow.wire, Wire::Http2);
    if gateway_path.is_none() {
        check_authority(&req, &target, h2)
            .map_err(|detail| Refusal::deny(Reason::HostMismatch).detail(detail).close())?;
    }
    if req.method() == Method::CONNECT {
        return Err(Refusal::deny(Reason::BadRequest)
            .detail("CONNECT inside a tunnel")
            .close());
    }
    // One canonical path; nothing after this sees the raw one.
    let raw = gateway_path.as_deref().unwrap_or(req.uri().path());
    let path = if raw == "*" && req.method() == Method::OPTIONS {
        raw.to_owned()
    } else {
        canonicalize(raw)
            .map_err(|e| Refusal::deny(Reason::BadRequest).detail(e.to_string()))?
            .into_owned()
    };
    rec.set_path(&path);
    let upstream_uri = upstream_uri(&target, &path, req.uri().query())?;
    let websocket = !h2 && is_websocket(&req);
    Ok((
        Bound {
            who,
            target,
            path,
            upstream_uri,
            websocket,
        },
        req,
    ))
}

/// The refusal for a framing violation: its status, and the connection closes.
pub fn framing_refusal(v: Violation) -> Refusal {
    Refusal::deny(Reason::BadFraming)
        .detail(format!("request framing rejected: {}", v.code()))
        .status(StatusCode::from_u16(v.status()).unwrap_or(StatusCode::BAD_REQUEST))
        .close()
}

/// A gateway caller: the listener's fixed agent, or the token in the provider
/// key's place (`Authorization: Bearer`, `x-api-key`, `x-goog-api-key`).
fn identify_gateway(
    policy: &portcullis_rules::Policy,
    auth: &portcullis_rules::ListenerAuth,
    headers: &http::HeaderMap,
) -> Option<Identity> {
    if let portcullis_rules::ListenerAuth::None { .. } = auth {
        return identify(policy, auth, headers);
    }
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .or_else(|| headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()))?;
    Identity::from_token(policy, token.trim().as_bytes())
}

/// `/{provider}/rest` → the provider's API host, and `/rest`.
fn gateway_target(snap: &PolicySnapshot, path: &str) -> Result<(Target, String), Refusal> {
    let unknown = || {
        Refusal::deny(Reason::NoRoute)
            .detail("gateway paths start with a provider id, as in /openai/v1/chat/completions")
    };
    let rest = path.strip_prefix('/').ok_or_else(unknown)?;
    let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let provider = snap.policy.provider(id).ok_or_else(unknown)?;
    let host = provider.base_host().ok_or_else(|| {
        Refusal::deny(Reason::NoRoute).detail("this provider has no fixed host to send to")
    })?;
    let host = portcullis_rules::Host::parse(host).map_err(|_| unknown())?;
    Ok((
        Target {
            host,
            port: Scheme::Https.default_port(),
            scheme: Scheme::Https,
        },
        format!("/{rest}"),
    ))
}

/// An absolute-form `http://` request names its own target.
fn plain_target<B>(req: &Request<B>) -> Result<Target, Refusal> {
    let hint = match req.uri().scheme_str() {
        Some("http") => None,
        Some("https") => Some("send https:// requests through CONNECT (set HTTPS_PROXY)"),
        _ => Some("this is a forward proxy: send CONNECT host:port or an absolute http:// URL"),
    };
    if let Some(hint) = hint {
        return Err(Refusal::deny(Reason::BadRequest).detail(hint).close());
    }
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let (host, port) = split_host_port(authority, Scheme::Http.default_port()).map_err(|e| {
        Refusal::deny(Reason::BadRequest)
            .detail(format!("bad URL host: {e}"))
            .close()
    })?;
    Ok(Target {
        host,
        port,
        scheme: Scheme::Http,
    })
}

/// The upstream URI, from parts: scheme and authority from the checked
/// target, the canonical path, the query as sent. Never by concatenating what
/// the client wrote.
fn upstream_uri(target: &Target, path: &str, query: Option<&str>) -> Result<Uri, Refusal> {
    let bad = |detail: String| Refusal::deny(Reason::BadRequest).detail(detail);
    let pq = match query {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .map_err(|e| bad(format!("bad request target: {e}")))?;
    let uri = Uri::builder()
        .scheme(target.scheme.as_str())
        .authority(target.authority())
        .path_and_query(pq)
        .build()
        .map_err(|e| bad(format!("bad request target: {e}")))?;
    // The request goes where the policy looked, and nowhere else.
    let host = uri.host().map(portcullis_rules::Host::parse);
    match host {
        Some(Ok(h)) if h == target.host => Ok(uri),
        _ => Err(bad("the upstream URI does not name the target".into())),
    }
}

/// `Host` (and `:authority` / an absolute URI) must name the request's target.
fn check_authority<B>(req: &Request<B>, target: &Target, h2: bool) -> Result<(), String> {
    let default = target.scheme.default_port();
    let matches = |s: &str| -> Result<(), String> {
        match split_host_port(s, default) {
            Ok((h, p)) if h == target.host && p == target.port => Ok(()),
            Ok((h, p)) => Err(format!(
                "request names {h}:{p} but the connection is for {}:{}",
                target.host, target.port
            )),
            Err(e) => Err(format!("bad Host: {e}")),
        }
    };
    let mut seen = false;
    if let Some(a) = req.uri().authority() {
        matches(a.as_str())?;
        seen = true;
    }
    if let Some(h) = req.headers().get(HOST) {
        let h = h.to_str().map_err(|_| "Host is not ASCII".to_owned())?;
        matches(h)?;
        seen = true;
    }
    if !seen {
        return Err(if h2 {
            "missing :authority"
        } else {
            "missing Host header"
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_rules::Host;

    fn req(host: Option<&str>, uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    fn target(h: &str, port: u16) -> Target {
        Target {
            host: Host::parse(h).unwrap(),
            port,
            scheme: Scheme::Https,
        }
    }

    #[test]
    fn host_header_must_equal_connect_target() {
        let t = target("api.openai.com", 443);
        assert!(check_authority(&req(Some("api.openai.com"), "/v1"), &t, false).is_ok());
        assert!(check_authority(&req(Some("API.OpenAI.com.:443"), "/v1"), &t, false).is_ok());
        assert!(check_authority(&req(Some("evil.example"), "/v1"), &t, false).is_err());
        assert!(check_authority(&req(Some("api.openai.com:8443"), "/v1"), &t, false).is_err());
        assert!(check_authority(&req(None, "/v1"), &t, false).is_err());
        assert!(check_authority(&req(None, "https://api.openai.com/v1"), &t, true).is_ok());
        assert!(check_authority(
            &req(Some("api.openai.com"), "https://evil.example/v1"),
            &t,
            false
        )
        .is_err());
    }

    #[test]
    fn upstream_uri_is_built_from_the_target_and_canonical_path() {
        let t = target("api.openai.com", 443);
        let u = upstream_uri(&t, "/v1/models", Some("a=1")).unwrap();
        assert_eq!(u.to_string(), "https://api.openai.com/v1/models?a=1");
        let t = target("::1", 8443);
        let u = upstream_uri(&t, "/x", None).unwrap();
        assert_eq!(u.to_string(), "https://[::1]:8443/x");
    }
}
