//! Phase `approve` (SPEC §10): a request on an approve route waits for a human.
//!
//! Its detectors ran and its budget is reserved before the hold. The hold is
//! recorded (`approve`, `route_approve`) and announced (`approval.requested`
//! webhook); then the request waits for `POST /v1/approvals/{id}`, or its
//! route's `approval_timeout`. Each ending is a ledger record of its own:
//! `approval_granted`, `approval_denied` or `approval_timeout`. A client that
//! goes away while held gets an outcome record and nothing is forwarded. An
//! approval with a grant lets later requests of the same agent on the same
//! route through without a hold (`approval_grant_used`) until it expires.
//! When the approval store cannot be reached (shared state down), the request
//! is not held at all: it is refused with `503 state_unavailable`.

use std::sync::Arc;

use portcullis_rules::{Action, Decision, Reason, Route};

use super::bind::Bound;
use crate::ctx::Ctx;
use crate::record::{OutcomeGuard, RequestRecord};
use crate::rescue::{ledger_unavailable, Refusal};
use crate::state::{Ended, HeldRequest, StateError, Verdict};

pub async fn hold(
    ctx: &Ctx,
    rec: &mut RequestRecord,
    bound: &Bound,
    route: &Arc<Route>,
    size: u64,
) -> Result<(), Refusal> {
    let granted = ctx
        .approvals
        .granted(&bound.who.tenant, &bound.who.agent, &route.id)
        .await
        .map_err(|e| unavailable(rec, route, &e))?;
    if granted {
        rec.decision = keep_hits(rec, Action::Allow, Reason::ApprovalGrantUsed, route);
        return Ok(());
    }
    let held = HeldRequest::new(
        rec.event_id.clone(),
        bound.who.tenant.clone(),
        bound.who.agent.clone(),
        route.id.clone(),
        rec.method.clone().unwrap_or_default(),
        bound.target.host.to_string(),
        crate::record::path_template(&bound.path),
        rec.classification.as_ref().and_then(|c| c.model.clone()),
        size,
        rec.decision.detectors.clone(),
    );
    // Listed for approvers first, so that a hold that cannot be stored is
    // never recorded as held. A failed commit drops the waiter, which unlists it.
    let waiter = ctx
        .approvals
        .hold(held, route.approval_timeout)
        .await
        .map_err(|e| unavailable(rec, route, &e))?;
    // Writes an outcome only if the client goes away while the request is
    // held, or while a record of the hold is written (so it is armed first).
    let abandoned = OutcomeGuard::new(rec, &ctx.ledger, &ctx.outcomes, &ctx.phase, &ctx.metrics);
    // The hold itself is evidence, and is announced.
    if let Err(refusal) = commit(ctx, rec).await {
        abandoned.disarm();
        return Err(refusal);
    }
    ctx.metrics.approvals_pending(ctx.approvals.pending());
    tracing::info!(id = waiter.id(), route = %route.id, "request held for approval");
    let ended = waiter.wait().await;
    ctx.metrics.approvals_pending(ctx.approvals.pending());
    let (action, reason) = match &ended {
        Ended::Decided(Verdict::Approve { .. }, _) => (Action::Allow, Reason::ApprovalGranted),
        Ended::Decided(Verdict::Deny, _) => (Action::Deny, Reason::ApprovalDenied),
        Ended::TimedOut => (Action::Deny, Reason::ApprovalTimeout),
    };
    if let Ended::Decided(_, who) = ended {
        rec.approver = Some(who);
    }
    rec.decision = keep_hits(rec, action, reason, route);
    let verdict = commit(ctx, rec).await;
    // From here the send phase's own guard (or no outcome, for a refusal) takes over.
    abandoned.disarm();
    verdict?;
    if action == Action::Allow {
        Ok(())
    } else {
        Err(Refusal::new(rec.decision.clone()))
    }
}

/// The approval store cannot be asked: fail closed, before anything is held.
fn unavailable(rec: &RequestRecord, route: &Arc<Route>, e: &StateError) -> Refusal {
    tracing::error!(error = %e, "approval state unavailable: failing closed");
    Refusal::new(keep_hits(
        rec,
        Action::Deny,
        Reason::StateUnavailable,
        route,
    ))
    .detail("the approval state cannot be reached")
}

fn keep_hits(rec: &RequestRecord, action: Action, reason: Reason, route: &Arc<Route>) -> Decision {
    let mut d = Decision::new(action, reason, Some(route.clone()));
    d.detectors = rec.decision.detectors.clone();
    d
}

async fn commit(ctx: &Ctx, rec: &mut RequestRecord) -> Result<(), Refusal> {
    rec.commit(&ctx.ledger, &ctx.metrics, &ctx.webhooks)
        .await
        .map_err(|_| ledger_unavailable())
}
