//! One [`RequestRecord`] per request (SPEC §3 steps 5.6 and 5.9).
//!
//! It is built once and fills in as the request moves through the driver. It
//! feeds the canonical decision log line and the ledger's `decision` record,
//! with the same field names ([`field`], the ledger's own names), so the two
//! cannot disagree. A request is forwarded or answered only after its record
//! is durable (audit before act).
//!
//! Every forwarded request's ending is written by an [`OutcomeGuard`]: it
//! writes when it is dropped, so a client reset, an upstream failure, a
//! WebSocket session or a shutdown all leave an `outcome` record without any
//! path having to remember to write one.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_ledger::{DecisionFacts, Health, Ledger, LedgerError, OutcomeFacts, Submitted};
use portcullis_rules::{Action, Classification, Decision, Reason};
use tokio::sync::{watch, Notify};

use crate::flow::Phase;
use crate::flow::Target;
use crate::http::body::End;
use crate::identity::Identity;
use crate::metrics::{Metrics, Phase as MetricPhase};
use crate::policy::PolicySnapshot;
use crate::refusals::{Gate, Refusals};
use crate::state::Hold;
use crate::webhook::Webhooks;

/// The field names of the log lines: the ledger's record field names.
pub mod field {
    pub const EVENT_ID: &str = "event_id";
    pub const TENANT: &str = "tenant";
    pub const AGENT: &str = "agent";
    pub const LISTENER: &str = "listener";
    pub const DEST_HOST: &str = "dest_host";
    pub const DEST_PORT: &str = "dest_port";
    pub const METHOD: &str = "method";
    pub const PATH_TEMPLATE: &str = "path_template";
    pub const PROVIDER: &str = "provider";
    pub const MODEL: &str = "model";
    pub const OPERATION: &str = "operation";
    pub const DECISION: &str = "decision";
    pub const REASON: &str = "reason";
    pub const RULE_ID: &str = "rule_id";
    pub const POLICY_GENERATION: &str = "policy_generation";
    pub const STATUS: &str = "status";
    pub const BYTES_IN: &str = "bytes_in";
    pub const BYTES_OUT: &str = "bytes_out";
    pub const DURATION_MS: &str = "duration_ms";
    pub const END: &str = "end";
    pub const TOKENS_IN: &str = "tokens_in";
    pub const TOKENS_OUT: &str = "tokens_out";

    /// Every name above, for the test that holds them to the ledger schema.
    #[cfg(test)]
    pub const ALL: &[&str] = &[
        EVENT_ID,
        TENANT,
        AGENT,
        LISTENER,
        DEST_HOST,
        DEST_PORT,
        METHOD,
        PATH_TEMPLATE,
        PROVIDER,
        MODEL,
        OPERATION,
        DECISION,
        REASON,
        RULE_ID,
        POLICY_GENERATION,
        STATUS,
        BYTES_IN,
        BYTES_OUT,
        DURATION_MS,
        END,
        TOKENS_IN,
        TOKENS_OUT,
    ];
}

/// Everything recorded about one request. Content-free by construction: the
/// path is reduced to a template when it is set.
#[derive(Debug)]
pub struct RequestRecord {
    pub event_id: String,
    pub listener: String,
    pub who: Option<Identity>,
    /// The client's address: recorded only while `who` is unknown.
    pub peer: Option<IpAddr>,
    pub target: Option<Target>,
    pub method: Option<String>,
    path_template: Option<String>,
    pub decision: Decision,
    pub classification: Option<Classification>,
    /// The vault key's slot and version (`openai/default@v2`), never the key.
    pub key_id: Option<String>,
    /// Who decided a held request.
    pub approver: Option<String>,
    policy_generation: u64,
    policy_hash: String,
    committed: bool,
    /// The request goes upstream under an outcome guard, which logs its one line (the
    /// decision and the outcome together) when it ends.
    log_at_outcome: bool,
}

impl RequestRecord {
    /// A record for a request that has not been decided yet. Until a phase
    /// decides, the decision is a deny: nothing is forwarded on a default.
    pub fn new(snap: &PolicySnapshot, listener: &str) -> Self {
        RequestRecord {
            event_id: crate::flow::new_event_id(),
            listener: listener.to_owned(),
            who: None,
            peer: None,
            target: None,
            method: None,
            path_template: None,
            decision: Decision::deny(Reason::BadRequest),
            classification: None,
            key_id: None,
            approver: None,
            policy_generation: snap.generation,
            policy_hash: snap.policy.hash_hex().to_owned(),
            committed: false,
            log_at_outcome: false,
        }
    }

    /// Records the (canonical) path, as a template: no query, ids replaced.
    pub fn set_path(&mut self, path: &str) {
        self.path_template = Some(path_template(path));
    }

    pub fn is_committed(&self) -> bool {
        self.committed
    }

    fn facts(&self) -> DecisionFacts {
        let c = self.classification.as_ref();
        DecisionFacts {
            event_id: self.event_id.clone(),
            tenant: self.who.as_ref().map(|w| w.tenant.clone()),
            agent: self.who.as_ref().map(|w| w.agent.clone()),
            listener: self.listener.clone(),
            dest_host: self
                .target
                .as_ref()
                .map(|t| t.host.to_string())
                .unwrap_or_default(),
            dest_port: self.target.as_ref().map_or(0, |t| t.port),
            method: self.method.clone(),
            path_template: self.path_template.clone(),
            decision: self.decision.action.as_str().to_owned(),
            reason: self.decision.reason.code().to_owned(),
            rule_id: self.decision.route_id().map(str::to_owned),
            policy_generation: self.policy_generation,
            policy_hash: self.policy_hash.clone(),
            provider: c.and_then(|c| c.provider.clone()),
            model: c.and_then(|c| c.model.clone()),
            operation: c.and_then(|c| c.operation).map(|o| o.as_str().to_owned()),
            stream: c.filter(|c| c.operation.is_some()).map(|c| c.stream),
            detectors: self.decision.detectors.clone(),
            narrowed: self.decision.narrowed.clone(),
            key_id: self.key_id.clone(),
            approver: self.approver.clone(),
            peer: self
                .peer
                .filter(|_| self.who.is_none())
                .map(|ip| ip.to_string()),
            count: None,
        }
    }

    fn log(&self, f: &DecisionFacts) {
        tracing::event!(
            target: "portcullis::decision",
            tracing::Level::INFO,
            { field::EVENT_ID } = f.event_id.as_str(),
            { field::TENANT } = f.tenant.as_deref().unwrap_or("-"),
            { field::AGENT } = f.agent.as_deref().unwrap_or("-"),
            { field::LISTENER } = f.listener.as_str(),
            { field::DEST_HOST } = f.dest_host.as_str(),
            { field::DEST_PORT } = f.dest_port,
            { field::METHOD } = f.method.as_deref().unwrap_or("-"),
            { field::PATH_TEMPLATE } = f.path_template.as_deref().unwrap_or("-"),
            { field::PROVIDER } = f.provider.as_deref().unwrap_or("-"),
            { field::MODEL } = f.model.as_deref().unwrap_or("-"),
            { field::OPERATION } = f.operation.as_deref().unwrap_or("-"),
            { field::DECISION } = f.decision.as_str(),
            { field::REASON } = f.reason.as_str(),
            { field::RULE_ID } = f.rule_id.as_deref().unwrap_or("-"),
            { field::POLICY_GENERATION } = f.policy_generation,
            "decision"
        );
    }

    /// Logs the decision line and makes the ledger record durable. On `Err`
    /// the request must fail closed.
    pub async fn commit(
        &mut self,
        ledger: &Ledger,
        metrics: &Metrics,
        webhooks: &Webhooks,
    ) -> Result<(), LedgerError> {
        let facts = self.facts();
        if !self.log_at_outcome {
            self.log(&facts);
        }
        metrics.request(
            facts.tenant.as_deref(),
            &facts.decision,
            &facts.reason,
            facts.provider.as_deref(),
        );
        let notice = webhook_event(self.decision.action)
            .filter(|_| webhooks.configured(facts.tenant.as_deref()))
            .map(|event| (event, facts.clone()));
        match ledger.append_decision(facts).await {
            Ok(appended) => {
                self.committed = true;
                // The body is the ledger record itself: content-free by construction.
                if let Some((event, facts)) = notice {
                    webhooks.notify(facts.tenant.as_deref(), event, &self.event_id, || {
                        let mut v = serde_json::to_value(&facts).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            o.insert("kind".into(), "decision".into());
                            o.insert("seq".into(), appended.seq.into());
                            o.insert("hash".into(), appended.hash.into());
                        }
                        v.to_string().into_bytes()
                    });
                }
                Ok(())
            }
            Err(e) => {
                // No outcome will follow a decision that is not durable.
                self.log_at_outcome = false;
                let why = match ledger.health() {
                    Health::Unhealthy(why) => why,
                    _ => e.to_string(),
                };
                tracing::error!(
                    { field::EVENT_ID } = self.event_id.as_str(),
                    error = %e,
                    ready = false,
                    why = %why,
                    "ledger unavailable: failing closed"
                );
                Err(e)
            }
        }
    }
}

impl RequestRecord {
    /// [`RequestRecord::commit`] for a refusal; one made before anyone was identified
    /// goes through the per-peer recording rate (see [`crate::refusals`]) and may only be
    /// counted for an aggregate record instead.
    pub async fn commit_refusal(
        &mut self,
        ledger: &Ledger,
        metrics: &Metrics,
        webhooks: &Webhooks,
        refusals: &Refusals,
    ) -> Result<(), LedgerError> {
        if let (None, Some(peer)) = (&self.who, self.peer) {
            if refusals.gate(peer, &self.listener, self.decision.reason) == Gate::Counted {
                metrics.request(
                    None,
                    self.decision.action.as_str(),
                    self.decision.reason.code(),
                    None,
                );
                self.committed = true;
                return Ok(());
            }
        }
        self.commit(ledger, metrics, webhooks).await
    }
}

/// The webhook event a decision raises, if any.
fn webhook_event(action: Action) -> Option<&'static str> {
    match action {
        Action::Deny => Some("deny"),
        Action::Warn => Some("warn"),
        Action::Narrow => Some("narrow"),
        Action::Approve => Some("approval.requested"),
        _ => None,
    }
}

/// An outcome refused by a full ledger queue is tried again after 5 ms, then
/// after doubling waits up to 640 ms (about 1.3 s in all).
const OUTCOME_RETRY_FIRST: Duration = Duration::from_millis(5);
const OUTCOME_RETRY_LAST: Duration = Duration::from_millis(640);

/// Counts outcome records not yet in the ledger, from the moment their guard
/// exists until the write completes, so shutdown can wait for every one before
/// it seals the ledger. (Counting from the guard's creation, not its drop,
/// matters: a connection may release its permit before it drops the body that
/// holds the guard.)
#[derive(Clone, Default)]
pub struct Outcomes {
    inner: Arc<OutcomesInner>,
}

#[derive(Default)]
struct OutcomesInner {
    pending: AtomicUsize,
    idle: Notify,
}

impl Outcomes {
    /// Waits until no outcome write is pending, or `limit` passes.
    pub async fn settled(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                tokio::pin!(notified);
                // Registered before the check, so a wake-up in between is not lost.
                notified.as_mut().enable();
                if self.inner.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    fn start(&self) {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self) {
        if self.inner.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// Writes the `outcome` record of a forwarded request when it is finished or
/// dropped, whichever comes first. Dropped unfinished means the client went
/// away (or the proxy is shutting down).
pub struct OutcomeGuard {
    event_id: String,
    facts: Option<OutcomeFacts>,
    ledger: Ledger,
    outcomes: Outcomes,
    phase: watch::Receiver<Phase>,
    started: tokio::time::Instant,
    bytes_in: Arc<AtomicU64>,
    /// The budget reservation to settle with the tokens used.
    hold: Option<Hold>,
    metrics: Metrics,
    /// For the token metrics: what was called.
    provider: Option<String>,
    model: Option<String>,
    /// The decision's facts, when this guard logs the request's one line.
    decision: Option<Box<DecisionFacts>>,
    /// Keeps the connection from counting as idle until the response ends.
    busy: Option<crate::flow::Busy>,
}

impl OutcomeGuard {
    pub fn new(
        rec: &RequestRecord,
        ledger: &Ledger,
        outcomes: &Outcomes,
        phase: &watch::Receiver<Phase>,
        metrics: &Metrics,
    ) -> Self {
        outcomes.start();
        let c = rec.classification.as_ref();
        OutcomeGuard {
            event_id: rec.event_id.clone(),
            facts: Some(OutcomeFacts {
                event_id: rec.event_id.clone(),
                tenant: rec.who.as_ref().map(|w| w.tenant.clone()),
                agent: rec.who.as_ref().map(|w| w.agent.clone()),
                dest_host: rec
                    .target
                    .as_ref()
                    .map(|t| t.host.to_string())
                    .unwrap_or_default(),
                policy_generation: rec.policy_generation,
                policy_hash: rec.policy_hash.clone(),
                ..OutcomeFacts::default()
            }),
            ledger: ledger.clone(),
            outcomes: outcomes.clone(),
            phase: phase.clone(),
            started: tokio::time::Instant::now(),
            bytes_in: Arc::new(AtomicU64::new(0)),
            hold: None,
            metrics: metrics.clone(),
            provider: c.and_then(|c| c.provider.clone()),
            model: c.and_then(|c| c.model.clone()),
            decision: None,
            busy: None,
        }
    }

    /// Holds the connection's in-flight mark for as long as this request lives.
    pub fn keep_busy(&mut self, busy: crate::flow::Busy) {
        self.busy = Some(busy);
    }

    /// This guard writes the request's only log line, the decision and the outcome
    /// together, instead of one line at the decision and one at the end. Call it before
    /// the decision is committed; the facts are copied only if the line will be written.
    pub fn log_decision_with_outcome(&mut self, rec: &mut RequestRecord) {
        if rec.is_committed() {
            return;
        }
        rec.log_at_outcome = true;
        if tracing::enabled!(target: "portcullis::outcome", tracing::Level::INFO) {
            self.decision = Some(Box::new(rec.facts()));
        }
    }

    /// The event id of the request this guard writes the outcome of.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// The budget reservation this request holds; settled when the outcome is written.
    pub fn hold(&mut self, hold: Option<Hold>) {
        self.hold = hold;
    }

    /// The token usage read from the response.
    pub fn usage(&mut self, input: Option<u64>, output: Option<u64>) {
        if let Some(f) = self.facts.as_mut() {
            f.tokens_in = input;
            f.tokens_out = output;
        }
    }

    /// Where the request body's metering puts its byte count.
    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        self.bytes_in.clone()
    }

    /// The upstream answered with this status.
    pub fn status(&mut self, status: u16) {
        if let Some(f) = self.facts.as_mut() {
            f.status = Some(status);
        }
    }

    /// Forgets this request without an outcome: another guard (the one that
    /// sends it) will write it.
    pub fn disarm(mut self) {
        if self.facts.take().is_some() {
            self.outcomes.done();
        }
    }

    /// Writes the outcome now.
    pub fn finish(mut self, bytes_out: u64, end: End) {
        self.write(bytes_out, end);
    }

    fn write(&mut self, bytes_out: u64, end: End) {
        let Some(mut facts) = self.facts.take() else {
            return;
        };
        let end = match end {
            End::ClientAbort if *self.phase.borrow() != Phase::Running => End::Shutdown,
            e => e,
        };
        facts.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        facts.bytes_out = bytes_out;
        facts.duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        facts.end = end.as_str().to_owned();
        self.metrics
            .phase(MetricPhase::Total, self.started.elapsed());
        if facts.tokens_in.is_some() || facts.tokens_out.is_some() {
            self.metrics.tokens(
                facts.tenant.as_deref(),
                self.provider.as_deref(),
                self.model.as_deref(),
                facts.tokens_in.unwrap_or(0),
                facts.tokens_out.unwrap_or(0),
            );
        }
        if let Some(hold) = self.hold.take() {
            // Unknown usage keeps the estimate charged (see `Hold::settle`).
            let used = match (facts.tokens_in, facts.tokens_out) {
                (None, None) => None,
                (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
            };
            hold.settle(used);
        }
        match self.decision.take() {
            Some(d) => tracing::event!(
                target: "portcullis::outcome",
                tracing::Level::INFO,
                { field::EVENT_ID } = facts.event_id.as_str(),
                { field::TENANT } = d.tenant.as_deref().unwrap_or("-"),
                { field::AGENT } = d.agent.as_deref().unwrap_or("-"),
                { field::LISTENER } = d.listener.as_str(),
                { field::DEST_HOST } = facts.dest_host.as_str(),
                { field::DEST_PORT } = d.dest_port,
                { field::METHOD } = d.method.as_deref().unwrap_or("-"),
                { field::PATH_TEMPLATE } = d.path_template.as_deref().unwrap_or("-"),
                { field::PROVIDER } = d.provider.as_deref().unwrap_or("-"),
                { field::MODEL } = d.model.as_deref().unwrap_or("-"),
                { field::OPERATION } = d.operation.as_deref().unwrap_or("-"),
                { field::DECISION } = d.decision.as_str(),
                { field::REASON } = d.reason.as_str(),
                { field::RULE_ID } = d.rule_id.as_deref().unwrap_or("-"),
                { field::POLICY_GENERATION } = d.policy_generation,
                { field::STATUS } = facts.status.unwrap_or(0),
                { field::BYTES_IN } = facts.bytes_in,
                { field::BYTES_OUT } = facts.bytes_out,
                { field::DURATION_MS } = facts.duration_ms,
                { field::TOKENS_IN } = facts.tokens_in.unwrap_or(0),
                { field::TOKENS_OUT } = facts.tokens_out.unwrap_or(0),
                { field::END } = facts.end.as_str(),
                "request"
            ),
            None => tracing::event!(
                target: "portcullis::outcome",
                tracing::Level::INFO,
                { field::EVENT_ID } = facts.event_id.as_str(),
                { field::DEST_HOST } = facts.dest_host.as_str(),
                { field::STATUS } = facts.status.unwrap_or(0),
                { field::BYTES_IN } = facts.bytes_in,
                { field::BYTES_OUT } = facts.bytes_out,
                { field::DURATION_MS } = facts.duration_ms,
                { field::TOKENS_IN } = facts.tokens_in.unwrap_or(0),
                { field::TOKENS_OUT } = facts.tokens_out.unwrap_or(0),
                { field::END } = facts.end.as_str(),
                "outcome"
            ),
        }
        // Usually the queue has room: the record is queued in order and nobody waits
        // for it (shutdown writes what is queued before it closes the ledger).
        let facts = match self.ledger.submit_outcome(facts) {
            Submitted::Queued => {
                self.outcomes.done();
                return;
            }
            Submitted::Failed(e) => {
                tracing::error!(error = %e.full_message(), "outcome record could not be written");
                self.outcomes.done();
                return;
            }
            Submitted::Full(facts) => *facts,
        };
        // A full queue. Drop runs outside async code, and the client is already
        // answered: the retry goes on in the background, tracked so shutdown waits for it.
        let outcomes = self.outcomes.clone();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!("no runtime: outcome record lost");
            outcomes.done();
            return;
        };
        let ledger = self.ledger.clone();
        handle.spawn(async move {
            // A full queue passes as the writer drains it. The request has
            // been answered already, so waiting for room beats losing its
            // outcome; a ledger that cannot write at all is not waited for.
            let mut wait = OUTCOME_RETRY_FIRST;
            loop {
                match ledger.append_outcome(facts.clone()).await {
                    Err(e) if e.is_backpressure() && wait <= OUTCOME_RETRY_LAST => {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(e) => {
                        tracing::error!(error = %e.full_message(), "outcome record could not be written");
                        break;
                    }
                    Ok(_) => break,
                }
            }
            outcomes.done();
        });
    }
}

impl Drop for OutcomeGuard {
    fn drop(&mut self) {
        self.write(0, End::ClientAbort);
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
    fn log_field_names_are_ledger_field_names() {
        for name in field::ALL {
            assert!(
                portcullis_ledger::format::ALLOWED_FIELDS.contains(name),
                "{name} is not a ledger field"
            );
        }
    }

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

    #[tokio::test]
    async fn outcomes_settle_once_every_write_is_done() {
        let o = Outcomes::default();
        assert!(o.settled(Duration::from_millis(10)).await);
        o.start();
        assert!(!o.settled(Duration::from_millis(10)).await);
        let o2 = o.clone();
        tokio::spawn(async move { o2.done() });
        assert!(o.settled(Duration::from_secs(5)).await);
    }
}
