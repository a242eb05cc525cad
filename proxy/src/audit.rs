//! Audit before act (SPEC §3 steps 5.6 and 5.9).
//!
//! One [`Verdict`] per request feeds both the canonical decision log line and
//! the ledger's `decision` record, so the two can never disagree. A request is
//! forwarded or answered only after its record is durable; if the ledger cannot
//! take it, the request gets `503 ledger_unavailable` (fail closed).

use std::sync::Arc;

use portcullis_ledger::{DecisionFacts, Health, Ledger, OutcomeFacts};
use portcullis_rules::{Classification, Decision, Reason};

use crate::identity::Identity;
use crate::pipeline::Target;
use crate::rescue::Refusal;
use crate::server::{Ctx, PolicySnapshot};

/// The content-free facts of one decision.
pub struct Verdict<'a> {
    pub event_id: &'a str,
    pub who: Option<&'a Identity>,
    pub listener: &'a str,
    pub target: Option<&'a Target>,
    pub method: Option<&'a str>,
    /// Raw request path; it is reduced to a template here, never stored as is.
    pub path: Option<&'a str>,
    pub decision: &'a Decision,
    pub policy: &'a PolicySnapshot,
    /// What the request was classified as, when it got that far.
    pub classification: Option<&'a Classification>,
}

/// Logs the decision line and makes the ledger record durable. `Err` is the
/// refusal to send instead (the ledger could not take the record).
pub async fn record(ctx: &Ctx, v: Verdict<'_>) -> Result<(), Refusal> {
    let template = v.path.map(path_template);
    tracing::info!(
        target: "portcullis::decision",
        event_id = v.event_id,
        tenant = v.who.map(|w| w.tenant.as_str()).unwrap_or("-"),
        agent = v.who.map(|w| w.agent.as_str()).unwrap_or("-"),
        listener = v.listener,
        host = %v.target.map(|t| t.host.to_string()).unwrap_or_else(|| "-".into()),
        port = v.target.map(|t| t.port).unwrap_or(0),
        method = v.method.unwrap_or("-"),
        path = template.as_deref().unwrap_or("-"),
        decision = v.decision.action.as_str(),
        reason = v.decision.reason.code(),
        rule = v.decision.route_id().unwrap_or("-"),
    );
    let facts = DecisionFacts {
        event_id: v.event_id.to_owned(),
        tenant: v.who.map(|w| w.tenant.clone()),
        agent: v.who.map(|w| w.agent.clone()),
        listener: v.listener.to_owned(),
        dest_host: v.target.map(|t| t.host.to_string()).unwrap_or_default(),
        dest_port: v.target.map(|t| t.port).unwrap_or(0),
        method: v.method.map(str::to_owned),
        path_template: template,
        decision: v.decision.action.as_str().to_owned(),
        reason: v.decision.reason.code().to_owned(),
        rule_id: v.decision.route_id().map(str::to_owned),
        policy_generation: v.policy.generation,
        policy_hash: v.policy.policy.hash_hex().to_owned(),
        provider: v.classification.and_then(|c| c.provider.clone()),
        model: v.classification.and_then(|c| c.model.clone()),
        operation: v
            .classification
            .and_then(|c| c.operation)
            .map(|o| o.as_str().to_owned()),
        stream: v
            .classification
            .filter(|c| c.operation.is_some())
            .map(|c| c.stream),
        detectors: v.decision.detectors.clone(),
        narrowed: v.decision.narrowed.clone(),
        ..DecisionFacts::default()
    };
    match ctx.ledger.append_decision(facts).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let why = match ctx.ledger.health() {
                Health::Unhealthy(why) => why,
                _ => e.to_string(),
            };
            tracing::error!(event_id = v.event_id, error = %e, ready = false, why = %why, "ledger unavailable: failing closed");
            Err(Refusal::new(Reason::LedgerUnavailable, v.event_id)
                .detail("the audit ledger cannot be written"))
        }
    }
}

/// What the outcome record of a forwarded request needs, captured when the
/// request is decided.
#[derive(Clone)]
pub struct OutcomeBase {
    pub ledger: Ledger,
    pub event_id: String,
    pub who: Identity,
    pub dest_host: String,
    pub generation: u64,
    pub policy_hash: String,
}

impl OutcomeBase {
    pub fn new(
        ctx: &Ctx,
        event_id: &str,
        who: &Identity,
        target: &Target,
        snap: &PolicySnapshot,
    ) -> Arc<Self> {
        Arc::new(OutcomeBase {
            ledger: ctx.ledger.clone(),
            event_id: event_id.to_owned(),
            who: who.clone(),
            dest_host: target.host.to_string(),
            generation: snap.generation,
            policy_hash: snap.policy.hash_hex().to_owned(),
        })
    }

    /// Appends the outcome record in the background. It runs from body
    /// callbacks (not async), and the request is already answered, so nothing
    /// waits on it; a failure still turns the ledger unhealthy.
    pub fn finish(
        &self,
        status: Option<u16>,
        bytes_in: u64,
        bytes_out: u64,
        duration_ms: u64,
        end: &str,
    ) {
        tracing::info!(
            target: "portcullis::outcome",
            event_id = %self.event_id,
            host = %self.dest_host,
            status = status.unwrap_or(0),
            bytes_in,
            bytes_out,
            duration_ms,
            end,
        );
        let facts = OutcomeFacts {
            event_id: self.event_id.clone(),
            tenant: Some(self.who.tenant.clone()),
            agent: Some(self.who.agent.clone()),
            dest_host: self.dest_host.clone(),
            status,
            tokens_in: None,
            tokens_out: None,
            bytes_in,
            bytes_out,
            duration_ms,
            end: end.to_owned(),
            policy_generation: self.generation,
            policy_hash: self.policy_hash.clone(),
        };
        let ledger = self.ledger.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = ledger.append_outcome(facts).await {
                    tracing::error!(error = %e, "outcome record could not be written");
                }
            });
        }
    }
}

/// Reduces a request path to a template for the ledger and logs: no query,
/// and any segment that looks like an identifier or could carry content
/// becomes `{id}`.
pub fn path_template(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(path.len().min(256));
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if i > 32 {
            out.push('…');
            break;
        }
        if seg.is_empty() {
            continue;
        }
        if looks_like_name(seg) {
            out.push_str(seg);
        } else {
            out.push_str("{id}");
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A short word-like segment (`v1`, `chat`, `completions`, `gpt-4o-mini`,
/// `models:generateContent`) is kept; ids, hashes and encoded text are not.
fn looks_like_name(seg: &str) -> bool {
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    seg.len() <= 40
        && digits <= 4
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_template_strips_query_and_replaces_ids() {
        assert_eq!(
            path_template("/v1/chat/completions?api-key=secret"),
            "/v1/chat/completions"
        );
        assert_eq!(
            path_template("/v1/files/file-abc123def456ghi789/content"),
            "/v1/files/{id}/content"
        );
        assert_eq!(
            path_template("/v1/threads/thread_9f8e7d6c5b4a39281706/runs"),
            "/v1/threads/{id}/runs"
        );
        assert_eq!(
            path_template("/v1beta/models/gemini-1.5-pro:generateContent"),
            "/v1beta/models/gemini-1.5-pro:generateContent"
        );
        assert_eq!(
            path_template("/search/ignore%20all%20previous%20instructions"),
            "/search/{id}"
        );
        assert_eq!(path_template("/"), "/");
        assert_eq!(path_template(""), "/");
    }
}
