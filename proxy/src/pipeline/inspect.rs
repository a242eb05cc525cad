//! Phases `inspect` and `decide` (SPEC §3 steps 5.3–5.5): read the body up to
//! the inspection limit, then let the policy classify, scan, walk the routes,
//! run the route's detectors and narrow, all over that one read.

use bytes::Bytes;
use http::request::Parts;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use portcullis_rules::{ApiStyle, Decision, Inspection, Reason, RequestFacts};

use super::bind::Bound;
use crate::ctx::Ctx;
use crate::flow::Scheme;
use crate::http::body::{full, read_bounded, Prefixed, ProxyBody, ReadError};
use crate::policy::PolicySnapshot;
use crate::record::RequestRecord;
use crate::rescue::Refusal;

/// The request as it will be forwarded if the decision lets it.
pub struct Inspected {
    pub parts: Parts,
    /// The inspected bytes replayed ahead of any unread rest, or the narrowed body.
    pub body: ProxyBody,
    /// The client side of a WebSocket upgrade.
    pub client_upgrade: Option<OnUpgrade>,
    /// The request's own bound on output tokens (after narrowing), for the
    /// budget reservation.
    pub max_output_tokens: Option<u64>,
    /// The provider's API style, for reading token usage from the response.
    pub api_style: Option<ApiStyle>,
    /// The whole body as it will be forwarded, when it was read whole (SigV4
    /// signs its hash).
    pub whole_body: Option<Bytes>,
}

pub async fn inspect(
    ctx: &Ctx,
    snap: &PolicySnapshot,
    rec: &mut RequestRecord,
    bound: &Bound,
    mut req: Request<Incoming>,
) -> Result<Inspected, Refusal> {
    let client_upgrade = bound.websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The policy sees exactly the bytes that will be forwarded. Trailers of a
    // fully read body are dropped here: they were never inspected.
    let read = read_bounded(
        body,
        ctx.limits.max_inspect_body,
        ctx.limits.client_header_timeout,
    )
    .await
    .map_err(|e| match e {
        ReadError::Stalled(_) => {
            tracing::info!(error = %e, "client stalled while sending its request body");
            Refusal::deny(Reason::BadRequest)
                .status(http::StatusCode::REQUEST_TIMEOUT)
                .detail("the request body stalled")
                .close()
        }
        ReadError::Body(_) => {
            tracing::info!(error = %e, "client request body failed");
            Refusal::deny(Reason::BadRequest)
                .detail("the request body could not be read")
                .close()
        }
    })?;
    let header_list: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let method = parts.method.as_str();
    let deciding = tokio::time::Instant::now();
    let evaluation = snap.policy.agent(&bound.who.agent).map(|agent| {
        snap.policy.evaluate(
            agent,
            &RequestFacts {
                host: &bound.target.host,
                port: bound.target.port,
                method,
                path: &bound.path,
                plaintext: bound.target.scheme == Scheme::Http,
                websocket: bound.websocket,
            },
            &Inspection {
                query: parts.uri.query(),
                headers: &header_list,
                body: Some(&read.prefix),
                body_truncated: read.truncated,
            },
            &ctx.vault,
        )
    });
    drop(header_list);
    ctx.metrics
        .phase(crate::metrics::Phase::Decide, deciding.elapsed());
    let Some(evaluation) = evaluation else {
        // The agent was valid at bind under this same snapshot; be safe anyway.
        return Err(Refusal::new(Decision::deny(Reason::AuthFailed)));
    };
    rec.decision = evaluation.decision;
    rec.classification = Some(evaluation.classification);
    let max_output_tokens = evaluation.max_output_tokens;
    let api_style = rec
        .classification
        .as_ref()
        .and_then(|c| c.provider.as_deref())
        .and_then(|p| snap.policy.provider(p))
        .map(|p| p.api);
    // A narrowed body replaces the original; otherwise the inspected bytes
    // are replayed ahead of whatever was not read.
    let (body, whole_body): (ProxyBody, _) = match (evaluation.narrowed, read.rest) {
        (Some(n), _) => {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            let b = Bytes::from(n.body);
            (full(b.clone()), Some(b))
        }
        (None, Some(rest)) => (Prefixed::new(read.prefix, rest).boxed_unsync(), None),
        (None, None) => (full(read.prefix.clone()), Some(read.prefix)),
    };
    Ok(Inspected {
        parts,
        body,
        client_upgrade,
        max_output_tokens,
        api_style,
        whole_body,
    })
}
