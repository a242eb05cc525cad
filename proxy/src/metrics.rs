//! The one metric catalog (SPEC §11). Every Prometheus family Portcullis exports is
//! named here, with its labels and buckets, and nothing else in the proxy spells a
//! metric or label name. The families live in their own [`Registry`], never the
//! process-global default, so two proxies in one process (the tests run many) never
//! share counts. Callers record through typed methods ([`Metrics::request`],
//! [`Metrics::phase`], ...). [`Metrics::render`] returns the text exposition format
//! 0.0.4 for `/metrics`.
//!
//! # Why the labels are bounded
//!
//! Every distinct label set is a series that lives in this process and in Prometheus
//! for good. Some values come from agents (a model name in a request body) or from the
//! network. If agents could mint label values, they could grow both without limit. So
//! every label takes its value from a bounded set, and anything else folds into
//! `other`:
//!
//! - `tenant`: the tenants given at construction, `other`, or `-` when the request has
//!   no tenant (it was refused before authentication);
//! - `listener`: the listeners given at construction, or `other`;
//! - `decision`, `reason` (the codes of `portcullis_rules::Reason::ALL`) and `scope`:
//!   fixed lists here. `phase`, `kind`, `direction` and `result` are enums, so callers
//!   cannot pass anything else;
//! - `provider`: ids matching `[a-z0-9_]{1,32}`, the first 64 distinct ids seen;
//! - `model`: 1 to 64 characters of `[A-Za-z0-9._:/-]`, the first 64 distinct names seen
//!   in this process. Later or malformed names count under `other`, so the token totals
//!   stay exact and only the per-model split is lost. Restarting the process resets the
//!   first-come set.

#![allow(dead_code)] // wired in by the admin API work

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use portcullis_ledger::LedgerStats;
use portcullis_rules::Reason;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Metric family names, the only place they are spelled.
mod name {
    pub const REQUESTS: &str = "portcullis_requests_total";
    pub const REQUEST_DURATION: &str = "portcullis_request_duration_seconds";
    pub const UPSTREAM_ERRORS: &str = "portcullis_upstream_errors_total";
    pub const ACTIVE_CONNECTIONS: &str = "portcullis_active_connections";
    pub const TOKENS: &str = "portcullis_tokens_total";
    pub const BUDGET_REMAINING: &str = "portcullis_budget_remaining";
    pub const CERT_CACHE_HITS: &str = "portcullis_cert_cache_hits_total";
    pub const CERT_CACHE_MISSES: &str = "portcullis_cert_cache_misses_total";
    pub const CERT_MINT: &str = "portcullis_cert_mint_seconds";
    pub const LEDGER_RECORDS: &str = "portcullis_ledger_records_total";
    pub const LEDGER_APPEND_WAIT: &str = "portcullis_ledger_append_wait_seconds";
    pub const LEDGER_SYNC: &str = "portcullis_ledger_sync_seconds";
    pub const LEDGER_BATCH_SIZE: &str = "portcullis_ledger_batch_size";
    pub const WEBHOOK_DELIVERIES: &str = "portcullis_webhook_deliveries_total";
    pub const APPROVALS_PENDING: &str = "portcullis_approvals_pending";
    pub const CONFIG_RELOADS: &str = "portcullis_config_reloads_total";
    pub const CONFIG_RELOAD_FAILURES: &str = "portcullis_config_reload_failures_total";
}

/// Label names, the only place they are spelled. They match the ledger's field names.
mod label {
    pub const TENANT: &str = "tenant";
    pub const DECISION: &str = "decision";
    pub const REASON: &str = "reason";
    pub const PROVIDER: &str = "provider";
    pub const PHASE: &str = "phase";
    pub const KIND: &str = "kind";
    pub const LISTENER: &str = "listener";
    pub const MODEL: &str = "model";
    pub const DIRECTION: &str = "direction";
    pub const SCOPE: &str = "scope";
    pub const RESULT: &str = "result";
}

/// What any value outside a label's bounded set becomes.
pub const OTHER: &str = "other";
/// A value that is missing (no tenant, no provider, no model), as in the log line.
pub const NONE: &str = "-";

/// Decisions: `portcullis_rules::Action::as_str`, plus the approval hold (SPEC §10).
const DECISIONS: &[&str] = &["allow", "deny", "narrow", "warn", "approve"];
/// Budget scopes: `state::Scope::as_str` (a floor above, so spelled again here).
const SCOPES: &[&str] = &["tenant", "agent", "route"];

/// Most distinct `provider` values; later ones count as `other`.
const MAX_PROVIDERS: usize = 64;
/// Most distinct `model` values per process; later ones count as `other`.
const MAX_MODELS: usize = 64;
const MAX_PROVIDER_LEN: usize = 32;
const MAX_MODEL_LEN: usize = 64;

/// Latency buckets from 0.5 ms (a decision) to 60 s (a slow upstream's first byte).
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Every constructor argument is a constant of this file, so failure is a bug here.
const VALID: &str = "the metric catalog's names, labels and buckets are valid";

/// A timed part of a request, the `phase` label of `portcullis_request_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Classify, detect and evaluate the policy.
    Decide,
    /// From sending the request upstream to the first byte of its response.
    UpstreamTtfb,
    /// From the request's arrival to its end.
    Total,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Decide, Phase::UpstreamTtfb, Phase::Total];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Decide => "decide",
            Phase::UpstreamTtfb => "upstream_ttfb",
            Phase::Total => "total",
        }
    }
}

/// Why an upstream could not be used, the `kind` label of `portcullis_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Connect,
    Tls,
    Timeout,
    Resolve,
    Other,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Resolve,
        UpstreamErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Resolve => "resolve",
            UpstreamErrorKind::Other => OTHER,
        }
    }

    /// The kind an upstream refusal's reason stands for, if it is an upstream failure.
    pub fn of(reason: Reason) -> Option<UpstreamErrorKind> {
        match reason {
            Reason::UpstreamConnect => Some(UpstreamErrorKind::Connect),
            Reason::UpstreamTls => Some(UpstreamErrorKind::Tls),
            Reason::UpstreamTimeout => Some(UpstreamErrorKind::Timeout),
            Reason::ResolveFailed => Some(UpstreamErrorKind::Resolve),
            Reason::UpstreamError => Some(UpstreamErrorKind::Other),
            _ => None,
        }
    }
}

/// How one webhook event ended, the `result` of `portcullis_webhook_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookResult {
    /// The receiver answered 2xx.
    Ok,
    /// Every attempt failed.
    Failed,
    /// The bounded queue was full, so the event was never sent.
    Dropped,
}

impl WebhookResult {
    pub const ALL: [WebhookResult; 3] = [
        WebhookResult::Ok,
        WebhookResult::Failed,
        WebhookResult::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Ok => "ok",
            WebhookResult::Failed => "failed",
            WebhookResult::Dropped => "dropped",
        }
    }
}

/// How one config reload ended, the `result` of `portcullis_config_reloads_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// A new policy generation is in force.
    Ok,
    /// The file does not validate; the old policy stays.
    Invalid,
    /// The file's policy is the one already in force.
    Unchanged,
    /// The file could not be read (or there is none); the old policy stays.
    Error,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 4] = [
        ReloadResult::Ok,
        ReloadResult::Invalid,
        ReloadResult::Unchanged,
        ReloadResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Invalid => "invalid",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Error => "error",
        }
    }

    /// Whether the reload kept the old policy although it was asked to change it.
    pub fn failed(self) -> bool {
        matches!(self, ReloadResult::Invalid | ReloadResult::Error)
    }
}

/// The metric catalog: a cheap, clonable handle to one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    tenants: HashSet<Box<str>>,
    /// One gauge per configured listener, resolved once so a connection does no lookup
    /// in the metric family.
    listeners: HashMap<Box<str>, IntGauge>,
    other_listener: IntGauge,
    providers: FirstSeen,
    models: FirstSeen,

    requests: IntCounterVec,
    /// Indexed by `Phase as usize`; children resolved once.
    phases: [Histogram; 3],
    /// Indexed by `UpstreamErrorKind as usize`.
    upstream_errors: [IntCounter; 5],
    tokens: IntCounterVec,
    budget_remaining: IntGaugeVec,
    cert_hits: IntCounter,
    cert_misses: IntCounter,
    cert_mint: Histogram,
    ledger_records: IntCounter,
    ledger_append_wait: Histogram,
    ledger_sync: Histogram,
    ledger_batch_size: Histogram,
    /// The ledger's totals at the last [`Metrics::ledger_stats`], to count the difference.
    ledger_last: Mutex<LedgerStats>,
    /// Indexed by `WebhookResult as usize`.
    webhooks: [IntCounter; 3],
    approvals_pending: IntGauge,
    /// Indexed by `ReloadResult as usize`.
    reloads: [IntCounter; 4],
    reload_failures: IntCounter,
}

impl Metrics {
    /// A catalog whose `tenant` and `listener` labels take these values (plus `other`
    /// and `-`). The fixed-label series are created now, at zero, so a scrape shows them
    /// before the first event.
    pub fn new(tenants: &[String], listeners: &[String]) -> Metrics {
        let registry = Registry::new();
        let r = &registry;

        let requests = counter_vec(
            r,
            name::REQUESTS,
            "Requests decided, by tenant, decision, reason code and provider.",
            &[
                label::TENANT,
                label::DECISION,
                label::REASON,
                label::PROVIDER,
            ],
        );
        let durations = histogram_vec(
            r,
            name::REQUEST_DURATION,
            "Time spent per request phase: decide, upstream time to first byte, total.",
            &[label::PHASE],
            SECONDS.to_vec(),
        );
        let upstream_errors = counter_vec(
            r,
            name::UPSTREAM_ERRORS,
            "Upstream failures, by kind: connect, tls, timeout, resolve, other.",
            &[label::KIND],
        );
        let connections = gauge_vec(
            r,
            name::ACTIVE_CONNECTIONS,
            "Client connections open now, by listener.",
            &[label::LISTENER],
        );
        let tokens = counter_vec(
            r,
            name::TOKENS,
            "Model tokens metered from responses, by tenant, provider, model and direction.",
            &[
                label::TENANT,
                label::PROVIDER,
                label::MODEL,
                label::DIRECTION,
            ],
        );
        let budget_remaining = gauge_vec(
            r,
            name::BUDGET_REMAINING,
            "Tokens left in the budget last settled, by tenant and scope.",
            &[label::TENANT, label::SCOPE],
        );
        let webhooks = counter_vec(
            r,
            name::WEBHOOK_DELIVERIES,
            "Webhook events, by result: ok, failed (after retries), dropped (queue full).",
            &[label::RESULT],
        );
        let reloads = counter_vec(
            r,
            name::CONFIG_RELOADS,
            "Config reloads, by result: ok, invalid, unchanged, error.",
            &[label::RESULT],
        );

        let listener_gauges = listeners
            .iter()
            .map(|l| {
                (
                    l.as_str().into(),
                    connections.with_label_values(&[l.as_str()]),
                )
            })
            .collect();

        let inner = Inner {
            tenants: tenants.iter().map(|t| t.as_str().into()).collect(),
            listeners: listener_gauges,
            other_listener: connections.with_label_values(&[OTHER]),
            providers: FirstSeen::new(MAX_PROVIDERS, valid_provider),
            models: FirstSeen::new(MAX_MODELS, valid_model),
            requests,
            phases: Phase::ALL.map(|p| durations.with_label_values(&[p.as_str()])),
            upstream_errors: UpstreamErrorKind::ALL
                .map(|k| upstream_errors.with_label_values(&[k.as_str()])),
            tokens,
            budget_remaining,
            cert_hits: counter(
                r,
                name::CERT_CACHE_HITS,
                "Leaf certificates served from the cache.",
            ),
            cert_misses: counter(
                r,
                name::CERT_CACHE_MISSES,
                "Leaf certificates not in the cache, so minted.",
            ),
            cert_mint: histogram(
                r,
                name::CERT_MINT,
                "Time to mint one leaf certificate.",
                SECONDS.to_vec(),
            ),
            ledger_records: counter(
                r,
                name::LEDGER_RECORDS,
                "Records made durable in the ledger.",
            ),
            ledger_append_wait: histogram(
                r,
                name::LEDGER_APPEND_WAIT,
                "Time a request waits for its ledger record to be durable.",
                SECONDS.to_vec(),
            ),
            ledger_sync: histogram(
                r,
                name::LEDGER_SYNC,
                "Time of one ledger fdatasync.",
                SECONDS.to_vec(),
            ),
            ledger_batch_size: histogram(
                r,
                name::LEDGER_BATCH_SIZE,
                "Records per ledger write batch (group commit).",
                exponential_buckets(1.0, 2.0, 13).expect(VALID),
            ),
            ledger_last: Mutex::new(LedgerStats::default()),
            webhooks: WebhookResult::ALL.map(|w| webhooks.with_label_values(&[w.as_str()])),
            approvals_pending: gauge(
                r,
                name::APPROVALS_PENDING,
                "Requests held for approval now.",
            ),
            reloads: ReloadResult::ALL.map(|x| reloads.with_label_values(&[x.as_str()])),
            reload_failures: counter(
                r,
                name::CONFIG_RELOAD_FAILURES,
                "Config reloads that kept the old policy (result invalid or error).",
            ),
            registry,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Everything, in the text exposition format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let families = self.inner.registry.gather();
        if let Err(err) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(%err, "metrics: text encoding failed");
        }
        out
    }

    /// One decided request. `decision` is an action (`allow`, `deny`, ...), `reason` a
    /// reason code; anything else counts as `other`.
    pub fn request(
        &self,
        tenant: Option<&str>,
        decision: &str,
        reason: &str,
        provider: Option<&str>,
    ) {
        let inner = &*self.inner;
        inner
            .requests
            .with_label_values(&[
                inner.tenant(tenant),
                fixed(DECISIONS, decision),
                reason_code(reason),
                inner.provider(provider),
            ])
            .inc();
    }

    /// How long one phase of a request took.
    pub fn phase(&self, phase: Phase, took: Duration) {
        self.inner.phases[phase as usize].observe(took.as_secs_f64());
    }

    /// Tokens metered from one response. A direction with zero tokens creates no series.
    pub fn tokens(
        &self,
        tenant: Option<&str>,
        provider: Option<&str>,
        model: Option<&str>,
        input: u64,
        output: u64,
    ) {
        let inner = &*self.inner;
        let tenant = inner.tenant(tenant);
        let provider = inner.provider(provider);
        let model = match model {
            Some(m) => inner.models.label(m),
            None => NONE,
        };
        for (direction, n) in [("input", input), ("output", output)] {
            if n > 0 {
                inner
                    .tokens
                    .with_label_values(&[tenant, provider, model, direction])
                    .inc_by(n);
            }
        }
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.inner.upstream_errors[kind as usize].inc();
    }

    /// Counts a connection on `listener` (an unknown one as `other`) until the guard drops.
    pub fn connection_opened(&self, listener: &str) -> ConnectionGauge {
        let inner = &*self.inner;
        let gauge = inner
            .listeners
            .get(listener)
            .unwrap_or(&inner.other_listener)
            .clone();
        gauge.inc();
        ConnectionGauge(gauge)
    }

    /// The tokens left in a budget of `scope` (`tenant`, `agent` or `route`, else
    /// `other`). The label names the scope's kind, not its id, so for agent and route
    /// budgets this is the value of whichever one settled last.
    pub fn budget_remaining(&self, tenant: Option<&str>, scope: &str, remaining: u64) {
        let inner = &*self.inner;
        inner
            .budget_remaining
            .with_label_values(&[inner.tenant(tenant), fixed(SCOPES, scope)])
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
    }

    /// One leaf lookup in the certificate cache.
    pub fn cert_cache(&self, hit: bool) {
        if hit {
            self.inner.cert_hits.inc();
        } else {
            self.inner.cert_misses.inc();
        }
    }

    pub fn cert_mint(&self, took: Duration) {
        self.inner.cert_mint.observe(took.as_secs_f64());
    }

    /// Brings the ledger families up to date from the ledger's own totals; call it just
    /// before [`Metrics::render`].
    ///
    /// The ledger keeps totals, not events, so `portcullis_ledger_records_total`
    /// advances by the records since the last call. For `portcullis_ledger_batch_size`,
    /// the batches since the last call each observe their mean size. Its count and sum
    /// stay exact (so `rate(_sum) / rate(_count)` is the true mean), and only the
    /// spread within one scrape interval is lost. A total below the last one means a
    /// new ledger (reopened), counted from zero.
    pub fn ledger_stats(&self, now: LedgerStats) {
        let mut last = self
            .inner
            .ledger_last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let since = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now);
        let records = since(now.records_total, last.records_total);
        let batches = since(now.batches_total, last.batches_total);
        *last = now;
        drop(last);
        self.inner.ledger_records.inc_by(records);
        if batches > 0 {
            let mean = records as f64 / batches as f64;
            for _ in 0..batches {
                self.inner.ledger_batch_size.observe(mean);
            }
        }
    }

    /// How long one request waited for its record to be durable (the `record` phase).
    pub fn ledger_append_wait(&self, took: Duration) {
        self.inner.ledger_append_wait.observe(took.as_secs_f64());
    }

    /// How long one ledger `fdatasync` took. This needs a hook in the ledger's writer;
    /// until it has one, the family stays at zero.
    pub fn ledger_sync(&self, took: Duration) {
        self.inner.ledger_sync.observe(took.as_secs_f64());
    }

    pub fn webhook(&self, result: WebhookResult) {
        self.inner.webhooks[result as usize].inc();
    }

    pub fn approvals_pending(&self, n: usize) {
        self.inner
            .approvals_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One config reload. A failed one (`invalid`, `error`) also counts in
    /// `portcullis_config_reload_failures_total`, the family to alert on.
    pub fn reload(&self, result: ReloadResult) {
        self.inner.reloads[result as usize].inc();
        if result.failed() {
            self.inner.reload_failures.inc();
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("tenants", &self.inner.tenants.len())
            .field("listeners", &self.inner.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn tenant<'a>(&self, tenant: Option<&'a str>) -> &'a str {
        match tenant {
            None => NONE,
            Some(t) if self.tenants.contains(t) => t,
            Some(_) => OTHER,
        }
    }

    fn provider<'a>(&self, provider: Option<&'a str>) -> &'a str {
        match provider {
            None => NONE,
            Some(p) => self.providers.label(p),
        }
    }
}

/// One open client connection in `portcullis_active_connections`; dropping it closes it.
#[must_use = "the connection counts as open only while the guard lives"]
pub struct ConnectionGauge(IntGauge);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl fmt::Debug for ConnectionGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionGauge")
    }
}

/// A first-come set of label values that closes once it holds `cap` of them. After
/// that, only the values already in it pass, and the rest become `other`.
struct FirstSeen {
    cap: usize,
    valid: fn(&str) -> bool,
    seen: RwLock<HashSet<Box<str>>>,
}

impl FirstSeen {
    fn new(cap: usize, valid: fn(&str) -> bool) -> FirstSeen {
        FirstSeen {
            cap,
            valid,
            seen: RwLock::new(HashSet::with_capacity(cap)),
        }
    }

    /// `value` itself if it is (or may now become) one of the set, else `other`.
    /// Allocates only when a value joins the set.
    fn label<'a>(&self, value: &'a str) -> &'a str {
        // The fold values stand for themselves and take no slot.
        if value == OTHER || value == NONE {
            return value;
        }
        if !(self.valid)(value) {
            return OTHER;
        }
        let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(value) {
            return value;
        }
        let full = seen.len() >= self.cap;
        drop(seen);
        if full {
            return OTHER;
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(value) {
            return value;
        }
        if seen.len() >= self.cap {
            return OTHER;
        }
        seen.insert(value.into());
        value
    }
}

fn valid_provider(id: &str) -> bool {
    (1..=MAX_PROVIDER_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_model(model: &str) -> bool {
    (1..=MAX_MODEL_LEN).contains(&model.len())
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

/// `value` as the list's own `'static` spelling, or `other`.
fn fixed(list: &[&'static str], value: &str) -> &'static str {
    list.iter().find(|v| **v == value).copied().unwrap_or(OTHER)
}

fn reason_code(code: &str) -> &'static str {
    Reason::ALL
        .iter()
        .map(Reason::code)
        .find(|c| *c == code)
        .unwrap_or(OTHER)
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect(VALID);
    r.register(Box::new(c.clone())).expect(VALID);
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect(VALID);
    r.register(Box::new(c.clone())).expect(VALID);
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect(VALID);
    r.register(Box::new(g.clone())).expect(VALID);
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect(VALID);
    r.register(Box::new(g.clone())).expect(VALID);
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect(VALID);
    r.register(Box::new(h.clone())).expect(VALID);
    h
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h =
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect(VALID);
    r.register(Box::new(h.clone())).expect(VALID);
    h
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use rand::distr::{Alphanumeric, SampleString};
    use rand::Rng;

    use super::*;

    fn catalog() -> Metrics {
        Metrics::new(
            &["acme".to_owned(), "globex".to_owned()],
            &["forward".to_owned(), "admin".to_owned()],
        )
    }

    /// One sample line: its metric name, its labels, its value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// A small parser for the text exposition format 0.0.4. It fails the test on any
    /// malformed line, and on any sample whose family has no `# HELP` and `# TYPE`.
    fn parse(text: &str) -> Vec<Sample> {
        let mut help = BTreeSet::new();
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').expect("HELP has a name and text");
                assert!(valid_metric_name(name), "HELP name {name:?}");
                assert!(!text.is_empty(), "HELP text for {name}");
                assert!(help.insert(name.to_owned()), "one HELP per family: {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "TYPE {kind:?}"
                );
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none());
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment line {line:?}");
            let sample = parse_sample(line);
            let family = family_of(&sample.name, &types);
            assert!(help.contains(family), "{} has no # HELP", sample.name);
            samples.push(sample);
        }
        samples
    }

    /// The family a sample belongs to: a histogram's `_bucket`, `_sum` and `_count`
    /// belong to the histogram.
    fn family_of<'a>(sample: &'a str, types: &BTreeMap<String, String>) -> &'a str {
        if types.contains_key(sample) {
            return sample;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if types.get(base).map(String::as_str) == Some("histogram") {
                    return base;
                }
            }
        }
        panic!("{sample} has no # TYPE");
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("sample without a value: {line:?}"));
        let name = &line[..name_end];
        assert!(valid_metric_name(name), "metric name {name:?}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(mut body) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = body.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = body.split_once("=\"").expect("label is name=\"value\"");
                assert!(valid_label_name(key), "label name {key:?} in {line:?}");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("unterminated label value") {
                        (i, '"') => break i + 1,
                        (_, '\\') => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("bad escape \\{c} in {line:?}"),
                        },
                        (_, c) => value.push(c),
                    }
                };
                assert!(labels.insert(key.to_owned(), value).is_none(), "dup {key}");
                body = &after[end..];
                assert!(body.starts_with([',', '}']), "junk after a label: {line:?}");
                body = body.strip_prefix(',').unwrap_or(body);
            }
        }
        let value = rest.strip_prefix(' ').expect("one space before the value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("value {v:?} in {line:?}")),
        };
        Sample {
            name: name.to_owned(),
            labels,
            value,
        }
    }

    fn valid_metric_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    }

    fn valid_label_name(name: &str) -> bool {
        valid_metric_name(name) && !name.contains(':')
    }

    fn series(text: &str, prefix: &str) -> usize {
        text.lines().filter(|l| l.starts_with(prefix)).count()
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
            .value
    }

    /// Some valid model names, some with characters outside the allowed set, some too long.
    fn random_model(rng: &mut impl Rng) -> String {
        let len = rng.random_range(1..=80);
        let mut m = Alphanumeric.sample_string(rng, len);
        if rng.random_bool(0.2) {
            m.push_str(" {\"injected\"}\n");
        }
        m
    }

    #[test]
    fn a_thousand_random_model_names_keep_the_series_count_bounded() {
        let m = catalog();
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let model = random_model(&mut rng);
            m.tokens(Some("acme"), Some("openai"), Some(&model), 10, 0);
        }
        let text = m.render();
        let n = series(&text, "portcullis_tokens_total{");
        assert!(n <= MAX_MODELS + 1, "{n} token series");
        let samples = parse(&text);
        let total: f64 = samples
            .iter()
            .filter(|s| s.name == name::TOKENS)
            .map(|s| s.value)
            .sum();
        assert_eq!(total, 10_000.0, "folding keeps the token total exact");
        assert!(samples
            .iter()
            .filter(|s| s.name == name::TOKENS)
            .any(|s| s.labels["model"] == OTHER));
    }

    #[test]
    fn a_thousand_unknown_tenants_keep_the_series_count_bounded() {
        let m = catalog();
        let mut rng = rand::rng();
        for i in 0..1000 {
            let tenant = Alphanumeric.sample_string(&mut rng, 12);
            let tenant = if i % 10 == 0 {
                "acme".to_owned()
            } else {
                tenant
            };
            m.tokens(Some(&tenant), Some("anthropic"), Some("claude"), 1, 1);
            m.request(Some(&tenant), "allow", "route_allow", Some("anthropic"));
            m.budget_remaining(Some(&tenant), "tenant", 5);
        }
        m.request(None, "deny", "auth_failed", None);
        let text = m.render();
        // acme and other, two directions each.
        assert_eq!(series(&text, "portcullis_tokens_total{"), 4);
        // acme, other; plus the unauthenticated `-`.
        assert_eq!(series(&text, "portcullis_requests_total{"), 3);
        assert_eq!(series(&text, "portcullis_budget_remaining{"), 2);
        let samples = parse(&text);
        let labels = [
            ("tenant", NONE),
            ("decision", "deny"),
            ("reason", "auth_failed"),
            ("provider", NONE),
        ];
        assert_eq!(value(&samples, name::REQUESTS, &labels), 1.0);
    }

    #[test]
    fn unknown_decisions_reasons_providers_and_scopes_fold_into_other() {
        let m = catalog();
        m.request(
            Some("acme"),
            "yolo",
            "made_up_reason",
            Some("Not A Provider"),
        );
        for i in 0..200 {
            m.request(Some("acme"), "allow", "route_allow", Some(&format!("p{i}")));
        }
        m.budget_remaining(Some("acme"), "galaxy", 1);
        let text = m.render();
        let samples = parse(&text);
        let labels = [
            ("tenant", "acme"),
            ("decision", OTHER),
            ("reason", OTHER),
            ("provider", OTHER),
        ];
        assert_eq!(value(&samples, name::REQUESTS, &labels), 1.0);
        // 64 first-come providers, then `other` (for the rest and the malformed one).
        assert_eq!(
            series(&text, "portcullis_requests_total{"),
            MAX_PROVIDERS + 2
        );
        let labels = [("tenant", "acme"), ("scope", OTHER)];
        assert_eq!(value(&samples, name::BUDGET_REMAINING, &labels), 1.0);
    }

    #[test]
    fn render_is_valid_text_exposition() {
        let m = catalog();
        m.request(Some("acme"), "allow", "route_allow", Some("openai"));
        m.phase(Phase::Decide, Duration::from_micros(700));
        m.tokens(Some("globex"), Some("openai"), Some("gpt-4o"), 3, 4);
        m.budget_remaining(Some("globex"), "agent", u64::MAX);
        m.cert_cache(true);
        m.cert_mint(Duration::from_millis(3));
        m.ledger_append_wait(Duration::from_millis(1));
        m.ledger_sync(Duration::from_millis(2));
        m.approvals_pending(2);
        let _conn = m.connection_opened("forward");
        let text = m.render();
        let samples = parse(&text);

        let families: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let expected = [
            name::REQUESTS,
            name::REQUEST_DURATION,
            name::UPSTREAM_ERRORS,
            name::ACTIVE_CONNECTIONS,
            name::TOKENS,
            name::BUDGET_REMAINING,
            name::CERT_CACHE_HITS,
            name::CERT_CACHE_MISSES,
            name::CERT_MINT,
            name::LEDGER_RECORDS,
            name::LEDGER_APPEND_WAIT,
            name::LEDGER_SYNC,
            name::LEDGER_BATCH_SIZE,
            name::WEBHOOK_DELIVERIES,
            name::APPROVALS_PENDING,
            name::CONFIG_RELOADS,
            name::CONFIG_RELOAD_FAILURES,
        ];
        assert_eq!(families, expected.into_iter().collect());
        assert!(text.contains("# TYPE portcullis_request_duration_seconds histogram"));
        assert!(text.contains("# TYPE portcullis_active_connections gauge"));
        assert!(text.contains("# TYPE portcullis_tokens_total counter"));

        let decide = [("phase", "decide"), ("le", "0.001")];
        let bucket = "portcullis_request_duration_seconds_bucket";
        assert_eq!(value(&samples, bucket, &decide), 1.0);
        let labels = [("tenant", "globex"), ("scope", "agent")];
        assert_eq!(
            value(&samples, name::BUDGET_REMAINING, &labels),
            i64::MAX as f64
        );
        assert!(CONTENT_TYPE.contains("version=0.0.4"));
    }

    #[test]
    fn counters_move_with_recorded_requests() {
        let m = catalog();
        for _ in 0..3 {
            m.request(Some("acme"), "deny", "no_route", Some("openai"));
        }
        m.request(Some("acme"), "allow", "route_allow", Some("openai"));
        m.upstream_error(UpstreamErrorKind::Tls);
        m.upstream_error(UpstreamErrorKind::of(Reason::ResolveFailed).unwrap());
        m.cert_cache(true);
        m.cert_cache(true);
        m.cert_cache(false);
        m.webhook(WebhookResult::Dropped);
        m.reload(ReloadResult::Ok);
        m.reload(ReloadResult::Invalid);
        m.reload(ReloadResult::Error);
        m.reload(ReloadResult::Unchanged);
        m.tokens(Some("acme"), Some("openai"), None, 100, 20);
        m.phase(Phase::Total, Duration::from_secs(2));
        m.phase(Phase::Total, Duration::from_millis(20));
        let s = parse(&m.render());

        let deny = [
            ("tenant", "acme"),
            ("decision", "deny"),
            ("reason", "no_route"),
            ("provider", "openai"),
        ];
        assert_eq!(value(&s, name::REQUESTS, &deny), 3.0);
        assert_eq!(value(&s, name::UPSTREAM_ERRORS, &[("kind", "tls")]), 1.0);
        assert_eq!(
            value(&s, name::UPSTREAM_ERRORS, &[("kind", "resolve")]),
            1.0
        );
        assert_eq!(
            value(&s, name::UPSTREAM_ERRORS, &[("kind", "connect")]),
            0.0
        );
        assert_eq!(value(&s, name::CERT_CACHE_HITS, &[]), 2.0);
        assert_eq!(value(&s, name::CERT_CACHE_MISSES, &[]), 1.0);
        let dropped = [("result", "dropped")];
        assert_eq!(value(&s, name::WEBHOOK_DELIVERIES, &dropped), 1.0);
        assert_eq!(value(&s, name::CONFIG_RELOADS, &[("result", "ok")]), 1.0);
        assert_eq!(value(&s, name::CONFIG_RELOAD_FAILURES, &[]), 2.0);
        let input = [
            ("tenant", "acme"),
            ("provider", "openai"),
            ("model", NONE),
            ("direction", "input"),
        ];
        assert_eq!(value(&s, name::TOKENS, &input), 100.0);
        let total = [("phase", "total")];
        let count = "portcullis_request_duration_seconds_count";
        assert_eq!(value(&s, count, &total), 2.0);
        let sum = value(&s, "portcullis_request_duration_seconds_sum", &total);
        assert!((sum - 2.02).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn ledger_totals_advance_the_counters_by_their_difference() {
        let m = catalog();
        let stats = |records_total, batches_total| LedgerStats {
            records_total,
            batches_total,
            syncs_total: batches_total,
            last_batch_size: 0,
        };
        m.ledger_stats(stats(10, 2));
        m.ledger_stats(stats(10, 2));
        m.ledger_stats(stats(40, 5));
        let s = parse(&m.render());
        assert_eq!(value(&s, name::LEDGER_RECORDS, &[]), 40.0);
        assert_eq!(value(&s, "portcullis_ledger_batch_size_count", &[]), 5.0);
        assert_eq!(value(&s, "portcullis_ledger_batch_size_sum", &[]), 40.0);

        // A reopened ledger starts its totals again from zero.
        m.ledger_stats(stats(3, 1));
        let s = parse(&m.render());
        assert_eq!(value(&s, name::LEDGER_RECORDS, &[]), 43.0);
        assert_eq!(value(&s, "portcullis_ledger_batch_size_count", &[]), 6.0);
    }

    #[test]
    fn connection_gauge_goes_back_down_on_drop() {
        let m = catalog();
        let gauge = |m: &Metrics, listener: &str| {
            value(
                &parse(&m.render()),
                name::ACTIVE_CONNECTIONS,
                &[("listener", listener)],
            )
        };
        let a = m.connection_opened("forward");
        let b = m.clone().connection_opened("forward");
        let c = m.connection_opened("not-configured");
        assert_eq!(gauge(&m, "forward"), 2.0);
        assert_eq!(gauge(&m, OTHER), 1.0);
        assert_eq!(gauge(&m, "admin"), 0.0);
        drop(a);
        assert_eq!(gauge(&m, "forward"), 1.0);
        drop(b);
        drop(c);
        assert_eq!(gauge(&m, "forward"), 0.0);
        assert_eq!(gauge(&m, OTHER), 0.0);
    }

    #[test]
    fn two_catalogs_do_not_share_counts() {
        let a = catalog();
        let b = catalog();
        a.cert_cache(true);
        assert_eq!(value(&parse(&b.render()), name::CERT_CACHE_HITS, &[]), 0.0);
        assert_eq!(value(&parse(&a.render()), name::CERT_CACHE_HITS, &[]), 1.0);
    }

    #[test]
    fn model_and_provider_ids_are_checked_by_shape() {
        assert!(valid_model("claude-3-5-sonnet-20241022"));
        assert!(valid_model("meta/llama-3.1:70b"));
        assert!(!valid_model(""));
        assert!(!valid_model(&"m".repeat(65)));
        assert!(!valid_model("gpt 4"));
        assert!(!valid_model("gpt\"}4"));
        assert!(valid_provider("openai"));
        assert!(valid_provider("azure_openai2"));
        assert!(!valid_provider("OpenAI"));
        assert!(!valid_provider("open-ai"));
        assert!(!valid_provider(&"p".repeat(33)));
    }
}
