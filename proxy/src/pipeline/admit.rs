//! Phase `admit` (SPEC §3 step 5.5 and step 6): before anything is recorded
//! as allowed, check that the request may really go: every address of the
//! destination passes the SSRF table, and the budgets and rate limits that
//! cover it have room (the estimate is reserved now, so the request that
//! would cross a limit is refused up front and concurrent ones cannot race).

use std::sync::Arc;

use portcullis_rules::{BudgetSpec, Decision, Reason, Route};

use super::bind::Bound;
use crate::ctx::Ctx;
use crate::policy::PolicySnapshot;
use crate::record::RequestRecord;
use crate::rescue::Refusal;
use crate::state::{Ask, Hold, Scope};
use crate::upstream::{Checked, ConnectError};

/// Resolves the target once and checks every address (SSRF table, the
/// proxy's own addresses). A refusal here is a decision and is recorded as one.
pub async fn destination(
    ctx: &Ctx,
    rec: &mut RequestRecord,
    bound: &Bound,
    route: &Route,
) -> Result<Checked, Refusal> {
    match ctx
        .upstream
        .check(&bound.target.host, bound.target.port, route)
        .await
    {
        Ok(dest) => Ok(dest),
        Err(e) => {
            let reason = match e {
                ConnectError::Ssrf { .. } | ConnectError::SelfLoop { .. } => {
                    tracing::warn!(error = %e, "destination refused by the SSRF guard");
                    Reason::SsrfBlocked
                }
                _ => {
                    tracing::warn!(error = %e, "destination could not be resolved");
                    Reason::ResolveFailed
                }
            };
            Err(deny_keeping_hits(rec, reason).detail(e.to_string()))
        }
    }
}

/// What the budgets admitted: the reservation to settle, and the tightest
/// hard cap on output tokens among them.
#[derive(Default)]
pub struct Admitted {
    pub hold: Option<Hold>,
    pub hard_cap: Option<u64>,
}

/// Reserves the request's token estimate in every budget that covers it:
/// its tenant's, its agent's and its route's.
pub async fn budgets(
    ctx: &Ctx,
    snap: &PolicySnapshot,
    rec: &mut RequestRecord,
    bound: &Bound,
    route: &Route,
    max_output_tokens: Option<u64>,
) -> Result<Admitted, Refusal> {
    let tenant = bound.who.tenant.as_str();
    let agent = snap.policy.agent(&bound.who.agent);
    let scopes: [(Scope, &str, Option<&BudgetSpec>); 3] = [
        (Scope::Tenant, tenant, snap.policy.tenant_budget(tenant)),
        (
            Scope::Agent,
            bound.who.agent.as_str(),
            agent.and_then(|a| a.budget.as_ref()),
        ),
        (Scope::Route, route.id.as_str(), route.budget.as_ref()),
    ];
    let hard_cap = scopes
        .iter()
        .filter_map(|(_, _, spec)| spec.and_then(|s| s.hard_cap))
        .min();
    let asks: Vec<Ask> = scopes
        .into_iter()
        .filter_map(|(scope, id, spec)| {
            let spec = spec?;
            Some(Ask {
                key: Ask::key(tenant, scope, id),
                scope,
                tokens_per_day: spec.tokens_per_day,
                requests_per_minute: spec.requests_per_minute,
                tokens: max_output_tokens.unwrap_or(spec.default_reserve),
            })
        })
        .collect();
    if asks.is_empty() {
        return Ok(Admitted::default());
    }
    match ctx.budgets.reserve(&asks).await {
        Ok(Ok(reservation)) => {
            for (scope, left) in &reservation.remaining {
                ctx.metrics
                    .budget_remaining(Some(tenant), scope.as_str(), *left);
            }
            Ok(Admitted {
                hold: Some(Hold::new(Arc::clone(&ctx.budgets), reservation)),
                hard_cap,
            })
        }
        Ok(Err(refused)) => {
            let reason = if refused.tokens {
                Reason::BudgetExceeded
            } else {
                Reason::RateLimited
            };
            Err(deny_keeping_hits(rec, reason)
                .detail(format!("the {} limit is reached", refused.scope.as_str()))
                .retry_after(refused.retry_after))
        }
        // Budgeted routes fail closed when the shared state cannot answer.
        Err(e) => {
            tracing::error!(error = %e, "budget state unavailable: failing closed");
            Err(deny_keeping_hits(rec, Reason::StateUnavailable)
                .detail("the budget and rate-limit state cannot be reached"))
        }
    }
}

/// A deny that keeps what the policy found (detector hits) for the record.
fn deny_keeping_hits(rec: &mut RequestRecord, reason: Reason) -> Refusal {
    let mut decision = Decision::deny(reason);
    decision.detectors = std::mem::take(&mut rec.decision.detectors);
    rec.decision = decision.clone();
    Refusal::new(decision)
}
