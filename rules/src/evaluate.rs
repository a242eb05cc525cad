//! The full per-request evaluation (SPEC §3 step 5.3–5.5): classify, scan for vault
//! keys, find the route, run its detectors, and narrow.
//!
//! ```text
//! classify ─► vault scan ─► route walk ─► detectors ─► action
//!   (§5)      (any host)    (first match)  (route's)    allow | warn | narrow | deny
//! ```
//!
//! Order matters:
//! - the vault scan comes first and ignores routes: a vault key on its way to another
//!   provider's host is always refused (`secret_detected`, with the detector id `vault:<key id>`);
//! - the body is parsed once, strictly ([`crate::body`]), and every step below reads
//!   that parse;
//! - a route that needs the body and cannot inspect it refuses the request as soon as
//!   it is reached (`body_encoded`, `body_too_large`, `body_unparseable`), so a deny
//!   route with `models` is never skipped for lack of a readable body;
//! - detectors run only on the route that matched, as it configures them; a blocking
//!   hit denies, a warning hit turns an allow into a warn;
//! - narrowing runs last, on what would otherwise be forwarded.

use std::sync::Arc;

use serde_json::Value;

use crate::agent::Agent;
use crate::body::{unescape_lenient, BodyView, Parsed};
use crate::catalog::{percent_decode, ApiStyle, Classification, ModelOrigin, ModelSource};
use crate::decision::Decision;
use crate::detect::injection::{detect_injection_parts, Sensitivity};
use crate::detect::secrets::detect_secrets;
use crate::detect::text;
use crate::detect::vault::VaultScanner;
use crate::detect::{DetectorHit, DetectorMode};
use crate::host::Host;
use crate::narrow::{
    max_tokens_bound, narrow, NarrowError, NarrowOutcome, NarrowRequest, Narrowed,
};
use crate::policy::{NoTrace, Policy, Trace, Walk};
use crate::reason::{Action, Reason};
use crate::route::{RequestFacts, Route};

/// What the proxy read of a request, besides [`RequestFacts`].
#[derive(Clone, Copy, Debug)]
pub struct Inspection<'a> {
    /// The raw query string (after `?`), if any.
    pub query: Option<&'a str>,
    /// Request headers as `(name, value)`, scanned for vault values. `Content-Encoding`
    /// (any coding but `identity` makes an inspected route refuse the body,
    /// `body_encoded`) and `Content-Type` (a JSON type makes the body parse strictly
    /// whatever its first byte) are read from here, names compared case-insensitively.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The body as read, up to `max_inspect_body`. `None` means it was not read: a
    /// route that needs the body then refuses the request. Pass `Some(&[])` for a
    /// request without a body.
    pub body: Option<&'a [u8]>,
    /// The body was longer than `max_inspect_body`; `body` holds its first part.
    pub body_truncated: bool,
}

impl Inspection<'static> {
    /// Nothing read: no query, no headers, no body.
    pub const NOT_READ: Inspection<'static> = Inspection {
        query: None,
        headers: &[],
        body: None,
        body_truncated: false,
    };
}

/// The result of [`Policy::evaluate`].
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The verdict, with detector ids and narrowed field names for the ledger.
    pub decision: Decision,
    /// What the request is.
    pub classification: Classification,
    /// Every detector hit, ids only (also in `decision.detectors` as ledger ids).
    pub detector_hits: Vec<DetectorHit>,
    /// The rewritten body, when the action is narrow and something changed.
    pub narrowed: Option<Narrowed>,
    /// The response-token bound of the body as it will be forwarded: `max_tokens`,
    /// `max_completion_tokens` or `max_output_tokens` (OpenAI, Anthropic, Responses),
    /// Gemini's `generationConfig.maxOutputTokens`, Bedrock Converse's
    /// `inferenceConfig.maxTokens`; the largest when several are given. After narrowing
    /// it is the narrowed value. Read from the one strict parse of the body; `None` when
    /// the request names no bound (or not as an integer), its body is not a parsed JSON
    /// object, or it is denied. A budget reserves this, or its `default_reserve` when
    /// `None`.
    pub max_output_tokens: Option<u64>,
}

impl Policy {
    /// Classify a request (SPEC §5): destination kind, provider, model, operation,
    /// streaming and key injection. `body` is the (possibly truncated) inspected body,
    /// `None` if not read; a truncated body is not parsed.
    pub fn classify(
        &self,
        host: &Host,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: Option<&[u8]>,
    ) -> Classification {
        let view = BodyView::new(body, false, &[]);
        self.catalog
            .classify(host, method, path, query, &view)
            .classification
    }

    /// Per-request decision without the body (SPEC §4.1): [`Policy::evaluate`] with a
    /// body that was not read and an empty vault.
    ///
    /// Routes in file order; the first full match wins. An allow route must match the
    /// agent or tenant, host, port, method and path, grant plain HTTP
    /// (`allow_plaintext`) and WebSocket (`websocket`) when the request uses them, and
    /// cover the request's provider and operation. A deny route matches on agent, host,
    /// port, method, path, provider and operation (and model). No match is a deny,
    /// whose reason is the most specific near miss among the routes that apply to the
    /// agent and host: model > operation > provider > method > path >
    /// plaintext/websocket > port > no route.
    ///
    /// A route that needs the body (detectors, `models`, narrow) is refused here with
    /// `body_too_large`: without the body it cannot be checked. Use
    /// [`Policy::evaluate`] for those.
    pub fn decide(&self, agent: &Agent, req: &RequestFacts<'_>) -> Decision {
        self.evaluate_with(agent, req, &Inspection::NOT_READ, None, &mut NoTrace)
            .decision
    }

    /// Evaluate one request: classification, vault scan, route, detectors, narrowing.
    /// See the module docs for the order; the proxy calls this once per request.
    pub fn evaluate(
        &self,
        agent: &Agent,
        req: &RequestFacts<'_>,
        inspect: &Inspection<'_>,
        vault: &VaultScanner,
    ) -> Evaluation {
        self.evaluate_with(agent, req, inspect, Some(vault), &mut NoTrace)
    }

    pub(crate) fn evaluate_with(
        &self,
        agent: &Agent,
        req: &RequestFacts<'_>,
        inspect: &Inspection<'_>,
        vault: Option<&VaultScanner>,
        trace: &mut impl Trace,
    ) -> Evaluation {
        let body = BodyView::new(inspect.body, inspect.body_truncated, inspect.headers);
        let classified =
            self.catalog
                .classify(req.host, req.method, req.path, inspect.query, &body);
        let class = classified.classification;
        let mut hits: Vec<DetectorHit> = Vec::new();
        let mut decoded: Option<Vec<u8>> = None;

        // 1. Vault keys leaving for the wrong host: refused whatever the routes say.
        if let Some(vault) = vault.filter(|v| !v.is_empty()) {
            let mut leak = false;
            for_each_haystack(req, inspect, &body, &mut decoded, true, |haystack| {
                for hit in vault.scan(haystack) {
                    leak |= class.provider.as_deref() != Some(hit.provider.as_str());
                    push_hit(&mut hits, "vault", hit.key_id);
                }
            });
            if leak {
                let decision = Decision::new(Action::Deny, Reason::SecretDetected, None);
                return finish(decision, class, hits, None);
            }
        }

        // A model named twice in the query: the route would judge the first,
        // the upstream may use the last.
        if classified.model_ambiguous {
            return finish(Decision::deny(Reason::BadRequest), class, hits, None);
        }

        // 2. The route.
        let (route, replace_model) = match self.walk(agent, req, &class, &body, trace) {
            Walk::Decided(decision) => return finish(decision, class, hits, None),
            Walk::Missed(reason) => return finish(Decision::deny(reason), class, hits, None),
            Walk::Matched {
                route,
                replace_model,
            } => (route, replace_model),
        };

        // 3. The route's detectors.
        let mut blocked: Option<Reason> = None;
        let mut warned: Option<Reason> = None;
        let mut record = |mode: DetectorMode, reason: Reason| match mode {
            DetectorMode::Block => {
                blocked.get_or_insert(reason);
            }
            DetectorMode::Warn => {
                warned.get_or_insert(reason);
            }
            _ => {}
        };
        if route.detectors.injection.is_on() {
            let found =
                scan_injection(&body, class.provider.is_some(), route.detectors.sensitivity);
            if !found.is_empty() {
                record(route.detectors.injection, Reason::InjectionDetected);
            }
            for id in found {
                push_hit(&mut hits, "injection", id.to_owned());
            }
        }
        if route.detectors.secrets.is_on() {
            let mut found: Vec<&'static str> = Vec::new();
            for_each_haystack(req, inspect, &body, &mut decoded, false, |haystack| {
                for id in detect_secrets(haystack) {
                    if !found.contains(&id) {
                        found.push(id);
                    }
                }
            });
            if !found.is_empty() {
                record(route.detectors.secrets, Reason::SecretDetected);
            }
            for id in found {
                push_hit(&mut hits, "secrets", id.to_owned());
            }
        }
        if let Some(reason) = blocked {
            let decision = Decision::new(Action::Deny, reason, Some(route));
            return finish(decision, class, hits, None);
        }

        // 4. The action.
        match route.action {
            Action::Narrow => {
                let facts = NarrowFacts {
                    route: &route,
                    req,
                    body: &body,
                    origin: classified.model_origin.as_ref(),
                    api: classified.api,
                    replace_model,
                };
                narrow_request(self, &facts, class, hits)
            }
            Action::Approve => {
                let decision = Decision::new(Action::Approve, Reason::RouteApprove, Some(route));
                finish(decision, class, hits, None).bounded_by(&body)
            }
            Action::Warn => {
                let decision = Decision::new(
                    Action::Warn,
                    warned.unwrap_or(Reason::RouteWarn),
                    Some(route),
                );
                finish(decision, class, hits, None).bounded_by(&body)
            }
            _ => {
                let decision = match warned {
                    Some(reason) => Decision::new(Action::Warn, reason, Some(route)),
                    None => Decision::allow(route),
                };
                finish(decision, class, hits, None).bounded_by(&body)
            }
        }
    }
}

impl Evaluation {
    /// Set `max_output_tokens` from the body as the client sent it (nothing narrowed).
    fn bounded_by(mut self, body: &BodyView<'_>) -> Evaluation {
        self.max_output_tokens = body
            .json()
            .and_then(Value::as_object)
            .and_then(|map| max_tokens_bound(|key| map.get(key)));
        self
    }
}

/// What narrowing a matched request needs.
struct NarrowFacts<'a> {
    route: &'a Arc<Route>,
    req: &'a RequestFacts<'a>,
    body: &'a BodyView<'a>,
    origin: Option<&'a ModelOrigin>,
    api: Option<ApiStyle>,
    replace_model: bool,
}

/// Narrow a request a narrow route matched; refuse it with `model_not_allowed` when its
/// model must change and cannot.
fn narrow_request(
    policy: &Policy,
    facts: &NarrowFacts<'_>,
    class: Classification,
    hits: Vec<DetectorHit>,
) -> Evaluation {
    let route = facts.route;
    let refuse = |class: Classification, hits| {
        let decision = Decision::new(
            Action::Deny,
            Reason::ModelNotAllowed,
            Some(Arc::clone(route)),
        );
        finish(decision, class, hits, None)
    };
    // Where the fallback model goes: the body field the model came from, or, when the
    // body named none, the provider's body field for it.
    let provider_body_field = || {
        class
            .provider
            .as_deref()
            .and_then(|id| policy.catalog.get(id))
            .and_then(|p| {
                p.model_from.iter().find_map(|source| match source {
                    ModelSource::Body(field) => Some(field.clone()),
                    _ => None,
                })
            })
    };
    let model_field = match (facts.replace_model, facts.origin) {
        (false, _) => None,
        (true, Some(ModelOrigin::Body(field))) => Some(field.clone()),
        (true, None) => match provider_body_field() {
            Some(field) => Some(field),
            None => return refuse(class, hits),
        },
        (true, Some(ModelOrigin::Elsewhere)) => return refuse(class, hits),
    };
    let Some(spec) = route.narrow.as_ref() else {
        // invariant: the config gives every narrow route a `narrow` table. Without
        // one there is nothing to narrow to, so only an acceptable model may pass.
        if model_field.is_some() {
            return refuse(class, hits);
        }
        let decision = Decision::new(Action::Narrow, Reason::RouteNarrow, Some(Arc::clone(route)));
        return finish(decision, class, hits, None).bounded_by(facts.body);
    };
    let request = NarrowRequest {
        body: facts.body.parsed(),
        provider: class.provider.as_deref(),
        api: facts.api,
        operation: class.operation,
        path: facts.req.path,
        stream: class.stream,
        replace_model_in: model_field.as_deref(),
    };
    match narrow(spec, &request) {
        Err(NarrowError::ModelNotRewritable) => refuse(class, hits),
        Err(NarrowError::Unparseable) => {
            let decision = Decision::new(
                Action::Deny,
                Reason::BodyUnparseable,
                Some(Arc::clone(route)),
            );
            finish(decision, class, hits, None)
        }
        Ok(NarrowOutcome {
            narrowed,
            max_output_tokens,
        }) => {
            let mut decision =
                Decision::new(Action::Narrow, Reason::RouteNarrow, Some(Arc::clone(route)));
            let mut class = class;
            if let Some(n) = &narrowed {
                decision.narrowed = n.fields.clone();
                if let Some(field) = &model_field {
                    if n.fields.iter().any(|f| f == field) {
                        class.model = spec.fallback_model.clone();
                    }
                }
            }
            let mut evaluation = finish(decision, class, hits, narrowed);
            evaluation.max_output_tokens = max_output_tokens;
            evaluation
        }
    }
}

fn finish(
    mut decision: Decision,
    classification: Classification,
    hits: Vec<DetectorHit>,
    narrowed: Option<Narrowed>,
) -> Evaluation {
    decision.detectors = hits.iter().map(DetectorHit::ledger_id).collect();
    Evaluation {
        decision,
        classification,
        detector_hits: hits,
        narrowed,
        max_output_tokens: None,
    }
}

fn push_hit(hits: &mut Vec<DetectorHit>, detector: &'static str, pattern: String) {
    if !hits
        .iter()
        .any(|h| h.detector == detector && h.pattern == pattern)
    {
        hits.push(DetectorHit { detector, pattern });
    }
}

/// Call `scan` on every part of the request a secret could leave in: the path and
/// query (raw and percent-decoded), the body (raw, and its JSON strings decoded when
/// it has escapes), and, when `with_headers`, the host and every header value.
fn for_each_haystack(
    req: &RequestFacts<'_>,
    inspect: &Inspection<'_>,
    body: &BodyView<'_>,
    decoded: &mut Option<Vec<u8>>,
    with_headers: bool,
    mut scan: impl FnMut(&[u8]),
) {
    scan(req.path.as_bytes());
    let path_decoded = percent_decode(req.path);
    if path_decoded != req.path {
        scan(path_decoded.as_bytes());
    }
    if let Some(query) = inspect.query {
        scan(query.as_bytes());
        let plus = query.replace('+', " ");
        let query_decoded = percent_decode(&plus);
        if query_decoded != query {
            scan(query_decoded.as_bytes());
        }
    }
    if with_headers {
        if let Host::Name(name) = req.host {
            scan(name.as_bytes());
        }
        for (_, value) in inspect.headers {
            scan(value);
        }
    }
    if let Some(raw) = body.raw() {
        scan(raw);
        // JSON escapes (`\u0073k-…`) could hide a value from the raw scan: scan the
        // strings of the strict parse, or, for a body that failed it (refused on an
        // inspected route, but vault keys are looked for on every route), the body
        // with its escapes decoded leniently.
        if raw.contains(&b'\\') {
            let strings = decoded.get_or_insert_with(|| match body.parsed() {
                Parsed::Json(doc) => {
                    let mut out = Vec::new();
                    text::all_strings(&doc.value, &mut out);
                    out
                }
                Parsed::Unparseable | Parsed::Opaque => unescape_lenient(raw),
                Parsed::Incomplete | Parsed::Encoded => Vec::new(),
            });
            if !strings.is_empty() {
                scan(strings);
            }
        }
    }
}

/// Injection patterns in the prompt text of the body: the strings of the strict parse,
/// or the text of a body that is not JSON. A body that looks like JSON but did not parse
/// never gets here (the route refused it, `body_unparseable`), and is never read as raw
/// bytes, where `\u`-escaped text would be invisible.
fn scan_injection(
    body: &BodyView<'_>,
    provider_schema: bool,
    sensitivity: Sensitivity,
) -> Vec<&'static str> {
    match body.parsed() {
        Parsed::Json(doc) => {
            let mut parts = Vec::new();
            text::extract(&doc.value, provider_schema, &mut parts);
            if parts.is_empty() {
                return Vec::new();
            }
            detect_injection_parts(&parts, sensitivity)
        }
        Parsed::Opaque => match body.raw() {
            Some(raw) if !raw.is_empty() => {
                let text = String::from_utf8_lossy(raw);
                let mut found = detect_injection_parts(&[&text], sensitivity);
                if raw.contains(&b'\\') {
                    let unescaped = unescape_lenient(raw);
                    for id in
                        detect_injection_parts(&[&String::from_utf8_lossy(&unescaped)], sensitivity)
                    {
                        if !found.contains(&id) {
                            found.push(id);
                        }
                    }
                }
                found
            }
            _ => Vec::new(),
        },
        // invariant: unreachable on a route with detectors (it refuses these bodies);
        // should it ever be reached, the escapes are decoded rather than skipped.
        Parsed::Unparseable => match body.raw() {
            Some(raw) => detect_injection_parts(
                &[&String::from_utf8_lossy(&unescape_lenient(raw))],
                sensitivity,
            ),
            None => Vec::new(),
        },
        Parsed::Incomplete | Parsed::Encoded => Vec::new(),
    }
}
