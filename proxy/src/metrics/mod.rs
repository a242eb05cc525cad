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
    pub const DNS_QUERIES: &str = "portcullis_dns_queries_total";
    pub const LEDGER_DISK_FREE: &str = "portcullis_ledger_disk_free_bytes";
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

/// What the DNS responder did with a query, the `result` of `portcullis_dns_queries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnsResult {
    /// A name some route of the asking agent allows.
    Answered,
    /// Any other name, or an unknown asker: REFUSED, and recorded.
    Refused,
    /// Not a query we read (answered FORMERR, or dropped).
    Malformed,
}

impl DnsResult {
    pub const ALL: [DnsResult; 3] = [
        DnsResult::Answered,
        DnsResult::Refused,
        DnsResult::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DnsResult::Answered => "answered",
            DnsResult::Refused => "refused",
            DnsResult::Malformed => "malformed",
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
    /// Cache hits and misses at the last scrape.
    cert_last: Mutex<(u64, u64)>,
    /// Indexed by `WebhookResult as usize`.
    webhooks: [IntCounter; 3],
    approvals_pending: IntGauge,
    /// Indexed by `ReloadResult as usize`.
    reloads: [IntCounter; 4],
    reload_failures: IntCounter,
    /// Indexed by `DnsResult as usize`.
    dns: [IntCounter; 3],
    ledger_disk_free: IntGauge,
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
        let dns = counter_vec(
            r,
            name::DNS_QUERIES,
            "DNS responder queries, by result: answered, refused, malformed.",
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
                exponential_buckets(1.0, 2.0, 13).expect(VALID), // invariant: static buckets (tested)
            ),
            ledger_last: Mutex::new(LedgerStats::default()),
            cert_last: Mutex::new((0, 0)),
            webhooks: WebhookResult::ALL.map(|w| webhooks.with_label_values(&[w.as_str()])),
            approvals_pending: gauge(
                r,
                name::APPROVALS_PENDING,
                "Requests held for approval now.",
            ),
            reloads: ReloadResult::ALL.map(|x| reloads.with_label_values(&[x.as_str()])),
            dns: DnsResult::ALL.map(|x| dns.with_label_values(&[x.as_str()])),
            ledger_disk_free: gauge(
                r,
                name::LEDGER_DISK_FREE,
                "Bytes free on the ledger's disk, read at each scrape.",
            ),
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

    /// Brings the cache counters up to the cache's own totals (hits, misses);
    /// call it just before [`Metrics::render`].
    pub fn cert_stats(&self, hits: u64, misses: u64) {
        let mut last = self
            .inner
            .cert_last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.cert_hits.inc_by(hits.saturating_sub(last.0));
        self.inner.cert_misses.inc_by(misses.saturating_sub(last.1));
        *last = (hits.max(last.0), misses.max(last.1));
    }

    #[allow(dead_code)] // the cert cache reports mint durations once it has a hook for them
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
    #[allow(dead_code)] // the ledger writer reports sync durations once it has a hook for them
    pub fn ledger_sync(&self, took: Duration) {
        self.inner.ledger_sync.observe(took.as_secs_f64());
    }

    pub fn webhook(&self, result: WebhookResult) {
        self.inner.webhooks[result as usize].inc();
    }

    #[allow(dead_code)] // set by approvals
    pub fn approvals_pending(&self, n: usize) {
        self.inner
            .approvals_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn ledger_disk_free(&self, bytes: u64) {
        self.inner
            .ledger_disk_free
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn dns_query(&self, result: DnsResult) {
        self.inner.dns[result as usize].inc();
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

mod build;
mod labels;
#[cfg(test)]
mod tests;

use build::*;
use labels::*;
