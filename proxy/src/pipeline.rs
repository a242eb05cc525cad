//! The per-request pipeline (SPEC §3 step 5), one small function per step.
//! Every HTTP/1 request and every HTTP/2 stream inside a tunnel, and every
//! plain-HTTP proxy request, goes through [`tunneled`] or [`plaintext`] and
//! then [`forward`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use portcullis_rules::{split_host_port, Decision, Host, Inspection, Reason, RequestFacts};
use rand::RngCore;

use crate::audit::{self, OutcomeBase, Verdict};
use crate::body::{read_bounded, End, Metered, Prefixed, ProxyBody, Redacting};
use crate::framing::{Violation, FRAMING_HEADER};
use crate::identity::Identity;
use crate::rescue::{Refusal, HDR_EVENT_ID};
use crate::server::Ctx;
use crate::tunnel::Tunnel;
use crate::upstream::{find_connect_error, ConnectError};

/// Where a request goes: the CONNECT target, or the absolute-form URL's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    /// TLS inside a tunnel (https) or plain HTTP.
    pub tls: bool,
}

impl Target {
    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// `host[:port]` as it goes in an upstream URI (port omitted when default).
    fn authority(&self) -> String {
        let host = match &self.host {
            Host::Ip(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            h => h.to_string(),
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

pub fn new_event_id() -> String {
    portcullis_ledger::new_event_id()
}

pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Step 5.2 (HTTP/1): the framing guard replaced a bad head with a synthetic
/// request carrying our nonce. Returns the violation if this is that request.
pub fn framing_violation<B>(req: &Request<B>, nonce: &str) -> Option<Violation> {
    let v = req.headers().get(FRAMING_HEADER)?.to_str().ok()?;
    let (n, code) = v.split_once(' ')?;
    if !constant_time_eq(n.as_bytes(), nonce.as_bytes()) {
        return None;
    }
    Some(Violation::from_code(code).unwrap_or(Violation::MalformedHead))
}

/// The refusal for a framing violation: its status, and the connection closes.
pub fn framing_refusal(v: Violation, event_id: &str) -> Refusal {
    Refusal::new(Reason::BadFraming, event_id)
        .detail(format!("request framing rejected: {}", v.code()))
        .status(StatusCode::from_u16(v.status()).unwrap_or(StatusCode::BAD_REQUEST))
        .close()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Audits a refusal, then returns its response (or the fail-closed 503).
pub async fn refuse(ctx: &Ctx, v: Verdict<'_>, refusal: Refusal) -> Response<ProxyBody> {
    match audit::record(ctx, v).await {
        Ok(()) => refusal.into_response(),
        Err(unavailable) => unavailable.close().into_response(),
    }
}

/// A request inside an intercepted tunnel. `nonce` is set for HTTP/1 (the
/// framing guard's secret), `None` for HTTP/2.
pub async fn tunneled(
    ctx: Arc<Ctx>,
    tun: Arc<Tunnel>,
    nonce: Option<String>,
    h2: bool,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let event_id = new_event_id();
    let snap = ctx.policy.load();
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    let base = |decision| Verdict {
        event_id: &event_id,
        who: Some(&tun.who),
        listener: &tun.listener,
        target: Some(&tun.target),
        method: Some(&method),
        path: Some(&path),
        decision,
        policy: &snap,
        classification: None,
    };
    // 5.2 Framing first: a bad head never reaches policy.
    if let Some(v) = nonce.as_deref().and_then(|n| framing_violation(&req, n)) {
        let d = Decision::deny(Reason::BadFraming);
        let mut vd = base(&d);
        vd.method = None;
        vd.path = None;
        return refuse(&ctx, vd, framing_refusal(v, &event_id)).await;
    }
    if h2 && req.headers().get_all(HOST).iter().count() > 1 {
        let d = Decision::deny(Reason::BadFraming);
        let r = Refusal::new(Reason::BadFraming, &event_id).detail("multiple Host headers");
        return refuse(&ctx, base(&d), r).await;
    }
    // A CONNECT-time denial is answered here, inside TLS, so the SDK shows it.
    if let Some(d) = &tun.pre_denial {
        let d = d.clone();
        return refuse(&ctx, base(&d), Refusal::new(d.reason, &event_id)).await;
    }
    // 5.1 Host binding: stops domain fronting through an allowed tunnel.
    if let Err(detail) = check_authority(&req, &tun.target, h2) {
        let d = Decision::deny(Reason::HostMismatch);
        let r = Refusal::new(Reason::HostMismatch, &event_id)
            .detail(detail)
            .close();
        return refuse(&ctx, base(&d), r).await;
    }
    if req.method() == Method::CONNECT {
        let d = Decision::deny(Reason::BadRequest);
        let r = Refusal::new(Reason::BadRequest, &event_id)
            .detail("CONNECT inside a tunnel")
            .close();
        return refuse(&ctx, base(&d), r).await;
    }
    decide_and_forward(
        ctx,
        &tun.who,
        &tun.listener,
        tun.target.clone(),
        event_id,
        req,
        !h2,
    )
    .await
}

/// An absolute-form `http://` request on the proxy connection (SPEC §3 step 8).
pub async fn plaintext(
    ctx: Arc<Ctx>,
    listener: &str,
    who: Identity,
    event_id: String,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let snap = ctx.policy.load();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let (host, port) = match split_host_port(&authority, 80) {
        Ok(x) => x,
        Err(e) => {
            let d = Decision::deny(Reason::BadRequest);
            let v = Verdict {
                event_id: &event_id,
                who: Some(&who),
                listener,
                target: None,
                method: Some(req.method().as_str()),
                path: None,
                decision: &d,
                policy: &snap,
                classification: None,
            };
            let r = Refusal::new(Reason::BadRequest, &event_id)
                .detail(format!("bad URL host: {e}"))
                .close();
            return refuse(&ctx, v, r).await;
        }
    };
    let target = Target {
        host,
        port,
        tls: false,
    };
    if let Err(detail) = check_authority(&req, &target, false) {
        let d = Decision::deny(Reason::HostMismatch);
        let v = Verdict {
            event_id: &event_id,
            who: Some(&who),
            listener,
            target: Some(&target),
            method: Some(req.method().as_str()),
            path: Some(req.uri().path()),
            decision: &d,
            policy: &snap,
            classification: None,
        };
        let r = Refusal::new(Reason::HostMismatch, &event_id)
            .detail(detail)
            .close();
        return refuse(&ctx, v, r).await;
    }
    decide_and_forward(ctx, &who, listener, target, event_id, req, true).await
}

/// `Host` (and `:authority` / an absolute URI) must name the tunnel's target.
fn check_authority<B>(req: &Request<B>, target: &Target, h2: bool) -> Result<(), String> {
    let default = target.default_port();
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

fn is_websocket<B>(req: &Request<B>) -> bool {
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

/// Steps 5.3–5.8: classify, decide, audit, act, stream.
async fn decide_and_forward(
    ctx: Arc<Ctx>,
    who: &Identity,
    listener: &str,
    target: Target,
    event_id: String,
    req: Request<Incoming>,
    h1: bool,
) -> Response<ProxyBody> {
    let snap = ctx.policy.load();
    let websocket = h1 && is_websocket(&req);
    let has_upgrade = req.headers().contains_key(UPGRADE);
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    let mut req = req;
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // 5.3 Read the body up to max_inspect_body: classification and detectors
    // see exactly the bytes that will be forwarded.
    let inspected = match read_bounded(body, ctx.limits.max_inspect_body).await {
        Ok(i) => i,
        Err(e) => {
            tracing::info!(error = %e, "client request body failed");
            let d = Decision::deny(Reason::BadRequest);
            let v = Verdict {
                event_id: &event_id,
                who: Some(who),
                listener,
                target: Some(&target),
                method: Some(&method),
                path: Some(&path),
                decision: &d,
                policy: &snap,
                classification: None,
            };
            let r = Refusal::new(Reason::BadRequest, &event_id)
                .detail("the request body could not be read")
                .close();
            return refuse(&ctx, v, r).await;
        }
    };
    // 5.3–5.5 Classify, run the route's detectors, decide (and narrow).
    let header_list: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let evaluation = snap.policy.agent(&who.agent).map(|agent| {
        snap.policy.evaluate(
            agent,
            &RequestFacts {
                host: &target.host,
                port: target.port,
                method: &method,
                path: &path,
                plaintext: !target.tls,
                websocket,
            },
            &Inspection {
                query: parts.uri.query(),
                headers: &header_list,
                body: Some(&inspected.prefix),
                body_truncated: inspected.truncated,
            },
            &ctx.vault,
        )
    });
    drop(header_list);
    let (mut decision, classification, narrowed) = match evaluation {
        Some(e) => (e.decision, Some(e.classification), e.narrowed),
        None => (Decision::deny(Reason::AuthFailed), None, None),
    };
    // Step 6 ahead of the record: every resolved address must pass the SSRF
    // table, so an SSRF refusal is audited as such.
    if let (true, Some(route)) = (decision.is_allow(), decision.route.clone()) {
        // Resolution failures surface from the connector as 502s.
        if let Err(e @ (ConnectError::Ssrf { .. } | ConnectError::SelfLoop { .. })) = ctx
            .upstream
            .check_destination(&target.host, target.port, &route)
            .await
        {
            tracing::warn!(error = %e, "destination refused by the SSRF guard");
            decision = Decision::deny(Reason::SsrfBlocked);
        }
    }
    let verdict = Verdict {
        event_id: &event_id,
        who: Some(who),
        listener,
        target: Some(&target),
        method: Some(&method),
        path: Some(&path),
        decision: &decision,
        policy: &snap,
        classification: classification.as_ref(),
    };
    // 5.6 Audit before act: nothing leaves without a durable record.
    if let Err(unavailable) = audit::record(&ctx, verdict).await {
        return unavailable.close().into_response();
    }
    // 5.7 Act.
    let route = match (&decision.route, decision.is_allow()) {
        (Some(r), true) => r.clone(),
        _ => {
            let mut r = Refusal::new(decision.reason, event_id);
            if has_upgrade {
                // A refused upgrade leaves the byte stream ambiguous: close.
                r = r.close();
            }
            return r.into_response();
        }
    };
    // A narrowed body replaces the original; otherwise the inspected bytes
    // are replayed ahead of whatever was not read.
    let body: ProxyBody = match (narrowed, inspected.rest) {
        (Some(n), _) => {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            crate::body::full(n.body)
        }
        (None, Some(rest)) => Prefixed::new(inspected.prefix, rest).boxed_unsync(),
        (None, None) => crate::body::full(inspected.prefix),
    };
    let outcome = OutcomeBase::new(&ctx, &event_id, who, &target, &snap);
    forward(
        ctx,
        who,
        snap.generation,
        route,
        target,
        event_id,
        Request::from_parts(parts, body),
        client_upgrade,
        outcome,
    )
    .await
}

/// Hop-by-hop headers never cross the proxy (RFC 9110 §7.6.1), and neither do
/// proxy credentials.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
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
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(UPGRADE);
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: Arc<Ctx>,
    who: &Identity,
    generation: u64,
    route: Arc<portcullis_rules::Route>,
    target: Target,
    event_id: String,
    req: Request<ProxyBody>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    outcome: Arc<OutcomeBase>,
) -> Response<ProxyBody> {
    let websocket = client_upgrade.is_some();
    let started = tokio::time::Instant::now();
    let elapsed_ms = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let bytes_in = Arc::new(AtomicU64::new(0));
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let scheme = if target.tls { "https" } else { "http" };
    let uri: Uri = match format!("{scheme}://{}{pq}", target.authority()).parse() {
        Ok(u) => u,
        Err(_) => {
            return Refusal::new(Reason::BadRequest, event_id)
                .detail("bad request target")
                .into_response()
        }
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, websocket);
    // hyper sets Host / :authority from the URI, which we just validated.
    parts.headers.remove(HOST);
    if websocket {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // The request body is metered like the response: its total lands in
    // `bytes_in` when it ends (or is dropped), before the outcome is written.
    let counter = bytes_in.clone();
    let body = Metered::new(body, move |n, _| counter.store(n, Ordering::Relaxed));
    let up_req = Request::from_parts(parts, body.boxed_unsync());
    let client = ctx
        .upstream
        .client(&who.tenant, &route, generation, websocket);
    let result =
        tokio::time::timeout(ctx.upstream.response_header_timeout, client.request(up_req)).await;
    let mut resp = match result {
        Err(_) => {
            let r = Refusal::new(Reason::UpstreamTimeout, event_id)
                .detail("no response headers from upstream in time");
            outcome.finish(
                Some(r.status_code().as_u16()),
                bytes_in.load(Ordering::Relaxed),
                0,
                elapsed_ms(),
                End::UpstreamError.as_str(),
            );
            return r.into_response();
        }
        Ok(Err(e)) => {
            let r = upstream_refusal(&e, event_id);
            outcome.finish(
                Some(r.status_code().as_u16()),
                bytes_in.load(Ordering::Relaxed),
                0,
                elapsed_ms(),
                End::UpstreamError.as_str(),
            );
            return r.into_response();
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if let Some(client_upgrade) = client_upgrade {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let span = tracing::Span::current();
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) else {
                        tracing::info!("websocket upgrade did not complete");
                        return;
                    };
                    let mut c = hyper_util::rt::TokioIo::new(c);
                    let mut u = hyper_util::rt::TokioIo::new(u);
                    match tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        Ok((up, down)) => {
                            tracing::info!(bytes_up = up, bytes_down = down, "websocket closed")
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "websocket relay ended with an error")
                        }
                    }
                },
                span,
            ));
            let (mut parts, _) = resp.into_parts();
            scrub_response_headers(&mut parts.headers, true, &event_id);
            return Response::from_parts(parts, crate::body::empty());
        }
    }
    let (mut parts, body) = resp.into_parts();
    scrub_response_headers(&mut parts.headers, false, &event_id);
    // Text responses are redacted on the way (SPEC §6); the length may change.
    let body: ProxyBody = if redactable(&parts.headers) {
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Redacting::new(body, portcullis_rules::Redactor::new(&ctx.vault)).boxed_unsync()
    } else {
        body.map_err(Into::into).boxed_unsync()
    };
    // 5.8 Stream back unbuffered; 5.9 the outcome is recorded however it ends.
    let metered = Metered::new(body, move |bytes_out, end: End| {
        outcome.finish(
            Some(status.as_u16()),
            bytes_in.load(Ordering::Relaxed),
            bytes_out,
            elapsed_ms(),
            end.as_str(),
        );
    });
    let mut out = Response::from_parts(parts, metered.boxed_unsync());
    if websocket {
        // The upstream refused the upgrade; the client must not reuse the connection.
        out.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    out
}

/// Uncompressed text (JSON, SSE, plain text) can be redacted; binary or
/// compressed bodies pass untouched.
fn redactable(headers: &HeaderMap) -> bool {
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

fn scrub_response_headers(headers: &mut HeaderMap, upgrade: bool, event_id: &str) {
    strip_hop_by_hop(headers, upgrade);
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // An upstream must not be able to forge our verdict headers.
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

fn upstream_refusal(e: &hyper_util::client::legacy::Error, event_id: String) -> Refusal {
    let Some(ce) = find_connect_error(e) else {
        tracing::warn!(error = %e, "upstream request failed");
        return Refusal::new(Reason::UpstreamError, event_id)
            .detail("the upstream connection failed");
    };
    tracing::warn!(error = %ce, "upstream connect failed");
    let (reason, detail) = match ce {
        ConnectError::Ssrf { .. } | ConnectError::SelfLoop { .. } => {
            (Reason::SsrfBlocked, ce.to_string())
        }
        ConnectError::Resolve { .. } => (Reason::ResolveFailed, ce.to_string()),
        ConnectError::ConnectTimeout { .. } | ConnectError::TlsTimeout { .. } => {
            (Reason::UpstreamTimeout, ce.to_string())
        }
        ConnectError::Tls { .. } => (Reason::UpstreamTls, ce.to_string()),
        ConnectError::Connect { .. } => (Reason::UpstreamConnect, ce.to_string()),
        _ => (Reason::UpstreamError, ce.to_string()),
    };
    Refusal::new(reason, event_id).detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            tls: true,
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
    fn upstream_cannot_forge_portcullis_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-portcullis-decision", HeaderValue::from_static("allow"));
        scrub_response_headers(&mut h, false, "ev");
        assert!(!h.contains_key("x-portcullis-decision"));
        assert_eq!(h[HDR_EVENT_ID], "ev");
    }
}
