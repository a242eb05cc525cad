//! Phases `admit` and `send` (SPEC §3 steps 5.7–5.9 and 6): check the
//! destination's addresses, send the request to exactly those, and stream the
//! response back under the outcome guard.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use portcullis_rules::{ApiStyle, Reason, Redactor};
use tracing::Instrument;

use super::admit::Admitted;
use super::bind::Bound;
use super::inspect::Inspected;
use crate::ctx::Ctx;
use crate::flow::Flow;
use crate::flow::Phase;
use crate::http::body::{empty, End, Metered, ProxyBody, Redacting, Tap};
use crate::http::headers::{
    redact_vault_keys, redactable, scrub_request_headers, scrub_response_headers,
};
use crate::http::relay::relay;
use crate::http::usage::{Usage, UsageMeter};
use crate::metrics::{Phase as MetricPhase, UpstreamErrorKind};
use crate::record::OutcomeGuard;
use crate::rescue::Refusal;
use crate::upstream::{find_connect_error, Checked, ConnectError};

/// Sends the request and returns the streaming response. The decision is
/// recorded, so every ending writes an outcome: `guard` does it when the body
/// ends, when the client goes away, or when this future is dropped before the
/// upstream answers.
pub async fn send(
    ctx: &Arc<Ctx>,
    flow: &Arc<Flow>,
    mut guard: OutcomeGuard,
    bound: Bound,
    dest: Checked,
    inspected: Inspected,
    admitted: Admitted,
) -> Result<Response<ProxyBody>, Refusal> {
    guard.hold(admitted.hold);
    let event_id = guard.event_id().to_owned();
    let Inspected {
        mut parts,
        body,
        client_upgrade,
        api_style,
        ..
    } = inspected;
    let websocket = client_upgrade.is_some();
    parts.uri = bound.upstream_uri;
    parts.version = Version::HTTP_11;
    scrub_request_headers(&mut parts.headers, websocket);
    // The request body is metered like the response; its total is in the
    // guard before the outcome is written.
    let counter = guard.bytes_in();
    let body = Metered::new(body, move |n, _| counter.store(n, Ordering::Relaxed));
    let up_req = Request::from_parts(parts, body.boxed_unsync());
    let client = ctx.upstream.client(&bound.who.tenant, &dest, websocket);
    let asked = tokio::time::Instant::now();
    let answered =
        tokio::time::timeout(ctx.upstream.response_header_timeout, client.request(up_req)).await;
    ctx.metrics
        .phase(MetricPhase::UpstreamTtfb, asked.elapsed());
    let mut resp = match answered {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(fail(ctx, guard, upstream_refusal(&e))),
        Err(_) => {
            let r = Refusal::deny(Reason::UpstreamTimeout)
                .detail("no response headers from upstream in time");
            return Err(fail(ctx, guard, r));
        }
    };
    let status = resp.status();
    guard.status(status.as_u16());
    if let Some(client_upgrade) = client_upgrade {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let (mut parts, _) = resp.into_parts();
            scrub_response_headers(&mut parts.headers, true, &event_id);
            redact_vault_keys(&ctx.vault, &mut parts.headers);
            tokio::spawn(
                websocket_session(
                    ctx.clone(),
                    flow.clone(),
                    client_upgrade,
                    upstream_upgrade,
                    guard,
                )
                .instrument(tracing::Span::current()),
            );
            return Ok(Response::from_parts(parts, empty()));
        }
    }
    let (mut parts, body) = resp.into_parts();
    scrub_response_headers(&mut parts.headers, false, &event_id);
    redact_vault_keys(&ctx.vault, &mut parts.headers);
    // The meter reads the upstream's own bytes as they pass (before redaction);
    // Bedrock may also report usage in headers.
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let tap = UsageTap {
        meter: api_style.map(|s| UsageMeter::new(s, content_type)),
        header_usage: match api_style {
            Some(ApiStyle::Bedrock) => Usage::from_bedrock_headers(&parts.headers),
            _ => Usage::default(),
        },
        hard_cap: admitted.hard_cap,
    };
    // Stream back unbuffered; the outcome (with the tokens) is written however
    // the stream ends.
    let metered = Metered::tapped(body, tap, move |bytes_out, end, mut tap| {
        let usage = tap.finish();
        guard.usage(usage.input, usage.output);
        guard.finish(bytes_out, end);
    });
    // Text responses are redacted on the way (SPEC §6); the length may change.
    let body: ProxyBody = if redactable(&parts.headers) {
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Redacting::new(metered, Redactor::new(&ctx.vault)).boxed_unsync()
    } else {
        metered.boxed_unsync()
    };
    Ok(Response::from_parts(parts, body))
}

/// Token usage, read from the response as it streams (SPEC §8).
struct UsageTap {
    meter: Option<UsageMeter>,
    header_usage: Usage,
    /// Past this many metered output tokens the stream is cut.
    hard_cap: Option<u64>,
}

impl UsageTap {
    fn finish(&mut self) -> Usage {
        let body = self
            .meter
            .as_mut()
            .map(UsageMeter::finish)
            .unwrap_or_default();
        self.header_usage.or(body)
    }
}

impl Tap for UsageTap {
    fn chunk(&mut self, data: &[u8]) -> bool {
        let Some(meter) = self.meter.as_mut() else {
            return true;
        };
        meter.push(data);
        match (self.hard_cap, meter.so_far().output) {
            (Some(cap), Some(out)) => out <= cap,
            _ => true,
        }
    }
}

/// The upstream failed before answering: the outcome says so, and the client
/// gets the failure's status.
fn fail(ctx: &Ctx, mut guard: OutcomeGuard, r: Refusal) -> Refusal {
    if let Some(kind) = UpstreamErrorKind::of(r.decision().reason) {
        ctx.metrics.upstream_error(kind);
    }
    guard.status(r.status_code().as_u16());
    guard.finish(0, End::UpstreamError);
    r
}

/// A switched WebSocket: relay frames both ways. It holds the client
/// connection's permit, closes when idle or when the proxy closes, and its
/// outcome carries the byte counts.
async fn websocket_session(
    ctx: Arc<Ctx>,
    flow: Arc<Flow>,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: OutcomeGuard,
) {
    let _slot = flow.slot.clone();
    let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
        tracing::info!("websocket upgrade did not complete");
        guard.finish(0, End::ClientAbort);
        return;
    };
    let stop = ctx.reached(Phase::Closing);
    let r = relay(
        TokioIo::new(c),
        TokioIo::new(u),
        ctx.limits.relay_idle_timeout,
        stop,
    )
    .await;
    tracing::info!(bytes_up = r.up, bytes_down = r.down, end = ?r.end, "websocket closed");
    guard.bytes_in().store(r.up, Ordering::Relaxed);
    guard.finish(r.down, r.end.into());
}

fn upstream_refusal(e: &hyper_util::client::legacy::Error) -> Refusal {
    let Some(ce) = find_connect_error(e) else {
        tracing::warn!(error = %e, "upstream request failed");
        return Refusal::deny(Reason::UpstreamError).detail("the upstream connection failed");
    };
    tracing::warn!(error = %ce, "upstream connect failed");
    let reason = match ce {
        ConnectError::Ssrf { .. } | ConnectError::SelfLoop { .. } => Reason::SsrfBlocked,
        ConnectError::Resolve { .. } => Reason::ResolveFailed,
        ConnectError::ConnectTimeout { .. } | ConnectError::TlsTimeout { .. } => {
            Reason::UpstreamTimeout
        }
        ConnectError::Tls { .. } => Reason::UpstreamTls,
        ConnectError::Connect { .. } => Reason::UpstreamConnect,
        _ => Reason::UpstreamError,
    };
    Refusal::deny(reason).detail(ce.to_string())
}
