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
use crate::http::body::{
    full, read_bounded, BodyStalled, Inspected as Read, Prefixed, Progress, ProxyBody,
};
use crate::memory::{Lease, MemoryExhausted, Metered};
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
    /// The inspection memory the read body holds, until it has gone upstream.
    pub memory: Lease,
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
    // A body that stops moving is cut off, here and while it streams on.
    let body = Progress::new(body, ctx.limits.body_progress_timeout);
    // The policy sees exactly the bytes that will be forwarded. Trailers of a
    // fully read body are dropped here: they were never inspected.
    let idle = ctx.limits.body_progress_timeout;
    let max = ctx.limits.max_inspect_body;
    // The buffer draws on the tenant's and the proxy's inspection memory.
    let mut memory = Lease::default();
    let metered = ctx.memory.meter(body, &bound.who.tenant, max, &mut memory);
    let read = read_bounded(metered, max)
        .await
        .map(|r| Read {
            prefix: r.prefix,
            truncated: r.truncated,
            rest: r.rest.map(Metered::into_inner),
        })
        .map_err(|e| {
            if let Some(m) = e.downcast_ref::<MemoryExhausted>() {
                tracing::warn!(error = %m, tenant = %bound.who.tenant, "inspection memory budget exhausted");
                Refusal::deny(Reason::MemoryBudget).close()
            } else if e.downcast_ref::<BodyStalled>().is_some() {
                // Undecided, and nothing forwarded: a held read would pin the connection.
                tracing::info!(error = %e, "client stalled while sending its request body");
                Refusal::deny(Reason::BadRequest)
                    .status(http::StatusCode::REQUEST_TIMEOUT)
                    .detail(format!("the request body sent nothing for {idle:?}"))
                    .close()
            } else {
                tracing::info!(error = %e, "client request body failed");
                Refusal::deny(Reason::BadRequest)
                    .detail("the request body could not be read")
                    .close()
            }
        })?;
    let deciding = tokio::time::Instant::now();
    let evaluation = if read.prefix.len() > OFFLOAD_BYTES {
        // A large body's detector pass takes milliseconds: run it on the
        // blocking pool, a few at a time, so the async workers keep serving
        // every other connection meanwhile.
        let Ok(_turn) = ctx.detect_pool.acquire().await else {
            return Err(Refusal::new(Decision::deny(Reason::BadRequest)));
        };
        // The head goes to the pool and comes back: the request is forwarded with it.
        let job = Owned {
            policy: snap.policy.clone(),
            bound_agent: bound.who.agent.clone(),
            host: bound.target.host.clone(),
            port: bound.target.port,
            scheme: bound.target.scheme,
            websocket: bound.websocket,
            path: bound.path.clone(),
            parts,
            body: read.prefix.clone(),
            truncated: read.truncated,
            vault: ctx.vault.clone(),
        };
        let (evaluation, back) = tokio::task::spawn_blocking(move || (job.evaluate(), job.parts))
            .await
            .map_err(|_| {
                Refusal::new(Decision::deny(Reason::BadRequest)).detail("the detectors failed")
            })?;
        parts = back;
        evaluation
    } else {
        View::of(
            snap,
            bound,
            &parts,
            &read.prefix,
            read.truncated,
            &ctx.vault,
        )
        .evaluate()
    };
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
        memory,
    })
}

/// Bodies larger than this are evaluated on the blocking pool.
const OFFLOAD_BYTES: usize = 64 * 1024;

/// Everything `evaluate` reads, borrowed.
struct View<'a> {
    policy: &'a portcullis_rules::Policy,
    agent: &'a str,
    host: &'a portcullis_rules::Host,
    port: u16,
    method: &'a str,
    path: &'a str,
    plaintext: bool,
    websocket: bool,
    query: Option<&'a str>,
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a Bytes,
    truncated: bool,
    vault: &'a portcullis_rules::VaultScanner,
}

impl<'a> View<'a> {
    fn of(
        snap: &'a PolicySnapshot,
        bound: &'a Bound,
        parts: &'a Parts,
        body: &'a Bytes,
        truncated: bool,
        vault: &'a portcullis_rules::VaultScanner,
    ) -> View<'a> {
        View {
            policy: &snap.policy,
            agent: &bound.who.agent,
            host: &bound.target.host,
            port: bound.target.port,
            method: parts.method.as_str(),
            path: &bound.path,
            plaintext: bound.target.scheme == Scheme::Http,
            websocket: bound.websocket,
            query: parts.uri.query(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()))
                .collect(),
            body,
            truncated,
            vault,
        }
    }

    fn evaluate(&self) -> Option<portcullis_rules::Evaluation> {
        let agent = self.policy.agent(self.agent)?;
        Some(self.policy.evaluate(
            agent,
            &RequestFacts {
                host: self.host,
                port: self.port,
                method: self.method,
                path: self.path,
                plaintext: self.plaintext,
                websocket: self.websocket,
            },
            &Inspection {
                query: self.query,
                headers: &self.headers,
                body: Some(self.body),
                body_truncated: self.truncated,
            },
            self.vault,
        ))
    }
}

/// What a [`View`] borrows, owned, so the evaluation can run on another thread.
struct Owned {
    policy: std::sync::Arc<portcullis_rules::Policy>,
    bound_agent: String,
    host: portcullis_rules::Host,
    port: u16,
    scheme: Scheme,
    websocket: bool,
    path: String,
    parts: Parts,
    body: Bytes,
    truncated: bool,
    vault: portcullis_rules::VaultScanner,
}

impl Owned {
    fn evaluate(&self) -> Option<portcullis_rules::Evaluation> {
        View {
            policy: &self.policy,
            agent: &self.bound_agent,
            host: &self.host,
            port: self.port,
            method: self.parts.method.as_str(),
            path: &self.path,
            plaintext: self.scheme == Scheme::Http,
            websocket: self.websocket,
            query: self.parts.uri.query(),
            headers: self
                .parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()))
                .collect(),
            body: &self.body,
            truncated: self.truncated,
            vault: &self.vault,
        }
        .evaluate()
    }
}
