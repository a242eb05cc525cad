//! The request driver (SPEC §3 step 5): every HTTP/1 request and HTTP/2
//! stream, whichever listener it came from, goes through [`drive`].
//!
//! Each phase is a small function that returns `Result<_, Refusal>`; the
//! first `Err` goes to [`rescue`], which records the refusal's decision (if no
//! phase recorded one yet) and answers the client. There is no other way out.

mod admit;
mod approve;
mod bind;
mod inject;
mod inspect;
mod send;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use portcullis_rules::Action;

use crate::ctx::Ctx;
use crate::flow::{Entry, Flow};
use crate::http::body::ProxyBody;
use crate::record::{OutcomeGuard, RequestRecord};
use crate::rescue::{ledger_unavailable, rescue, Refusal};

/// Runs one request through every phase and returns what the client gets.
pub async fn drive(ctx: Arc<Ctx>, flow: Arc<Flow>, req: Request<Incoming>) -> Response<ProxyBody> {
    // One snapshot per request: a reload mid-request cannot change its rules.
    let snap = ctx.policy.load();
    // In flight until the driver returns, or, for a forwarded request, until
    // the outcome guard drops at the end of the response body.
    let busy = flow.slot.busy();
    let mut rec = RequestRecord::new(&snap, &flow.listener);
    rec.peer = Some(flow.slot.peer());
    rec.method = Some(req.method().as_str().to_owned());
    match run(&ctx, &flow, &snap, &mut rec, req, busy).await {
        Ok(resp) => resp,
        Err(refusal) => rescue(&ctx, &mut rec, refusal).await,
    }
}

async fn run(
    ctx: &Arc<Ctx>,
    flow: &Arc<Flow>,
    snap: &crate::policy::PolicySnapshot,
    rec: &mut RequestRecord,
    req: Request<Incoming>,
    busy: crate::flow::Busy,
) -> Result<Response<ProxyBody>, Refusal> {
    // bind: framing verdict, who is calling, where it goes, Host == target, and
    // one canonical path, so policy and upstream see the same request.
    let (bound, req) = bind::bind(flow, snap, rec, req)?;
    // A gateway connection counts against its agent's cap, as a tunnel does.
    if matches!(flow.entry, Entry::Gateway { .. })
        && !flow.slot.hold_agent(
            &ctx.agent_conns,
            &bound.who.agent,
            ctx.limits.max_connections_per_agent,
        )
    {
        return Err(Refusal::deny(portcullis_rules::Reason::ConnectionLimit)
            .retry_after(std::time::Duration::from_secs(1))
            .close());
    }
    // inspect + decide: one bounded read, one strict parse; classification,
    // detectors, the route walk and narrowing all read that one parse.
    let inspected = inspect::inspect(ctx, snap, rec, &bound, req).await?;
    // act (deny): answered locally, after rescue records it. So is any action
    // this driver cannot carry out: fail closed.
    let route = match (&rec.decision.route, rec.decision.action) {
        (Some(route), Action::Allow | Action::Warn | Action::Narrow | Action::Approve) => {
            route.clone()
        }
        _ => return Err(Refusal::new(rec.decision.clone())),
    };
    // admit: the one DNS lookup, every address checked against the SSRF table
    // (the checked addresses are the only ones the dial may use); then the
    // token estimate reserved in every budget that covers the request.
    let dest = admit::destination(ctx, rec, &bound, &route).await?;
    let admitted =
        admit::budgets(ctx, snap, rec, &bound, &route, inspected.max_output_tokens).await?;
    // inject (choose): the vault key for this tenant and provider; the record
    // names it. No key on an injecting route means no request.
    let injection = inject::plan(
        &ctx.keys,
        rec,
        &route,
        &bound,
        inspected.whole_body.as_deref(),
    )?;
    // approve: an approve route holds the request for a human; each step of
    // the hold is its own record.
    if rec.decision.action == Action::Approve {
        let size = inspected.whole_body.as_ref().map_or(0, |b| b.len() as u64);
        approve::hold(ctx, rec, &bound, &route, size).await?;
    }
    // record: the decision is durable before anything leaves (audit before
    // act). The outcome guard is armed first: a client that goes away while
    // the record is written still leaves an outcome beside its allow.
    let mut guard = OutcomeGuard::new(rec, &ctx.ledger, &ctx.outcomes, &ctx.phase, &ctx.metrics);
    guard.keep_busy(busy);
    // One log line per request: the guard writes it when the request ends.
    guard.log_decision_with_outcome(rec);
    if !rec.is_committed() {
        let waited = tokio::time::Instant::now();
        if rec
            .commit(&ctx.ledger, &ctx.metrics, &ctx.webhooks)
            .await
            .is_err()
        {
            guard.disarm();
            return Err(ledger_unavailable());
        }
        ctx.metrics.ledger_append_wait(waited.elapsed());
    }
    // inject (apply): the agent's credentials out, the provider key in.
    let (mut bound, mut inspected) = (bound, inspected);
    // The read body's memory is held until the request has gone upstream.
    let _memory = std::mem::take(&mut inspected.memory);
    if let Some(injection) = injection {
        inject::apply(
            &mut inspected.parts,
            &mut bound.upstream_uri,
            &bound.target,
            injection,
        );
    }
    // act (allow | warn | narrow) and send: the (possibly narrowed) request goes
    // upstream and streams back, redacted and metered, under the outcome guard.
    send::send(ctx, flow, guard, bound, dest, inspected, admitted).await
}
