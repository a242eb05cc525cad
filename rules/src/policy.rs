//! The validated policy: tenants, agents, routes, and the decision functions.
//!
//! A [`Policy`] only comes out of [`crate::parse_config`], so every value in it has been
//! checked. Lookups go through a host index that keeps file order, so "first match wins"
//! costs a hash lookup plus a walk over the few routes that name the host.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::body::BodyView;
use crate::catalog::{Catalog, Classification, Operation, Provider};
use crate::decision::Decision;
use crate::detect::Detectors;
use crate::host::{wildcard_key, Host, HostPattern};
use crate::narrow::NarrowSpec;
use crate::reason::{Action, Reason};

/// How an allowed CONNECT tunnel is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Terminate TLS with a minted leaf and decide on every HTTP request (the default).
    Intercept,
    /// Check the SNI against the CONNECT host, then splice raw TCP. Nothing inside is seen.
    Passthrough,
}

impl Mode {
    /// `"intercept"` or `"passthrough"`, as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Intercept => "intercept",
            Mode::Passthrough => "passthrough",
        }
    }
}

/// One `[[routes]]` entry, validated.
#[derive(Debug)]
pub struct Route {
    /// Unique route id; the ledger's `rule_id`.
    pub id: String,
    /// Tenants the route applies to. With `agents`, both empty means every agent.
    pub tenants: Vec<String>,
    /// Agents the route applies to.
    pub agents: Vec<String>,
    /// Never empty.
    pub hosts: Vec<HostPattern>,
    /// Default `[443]`, plus 80 when `allow_plaintext = true`. Deny routes default to
    /// `[443, 80]` so that a deny cannot be sidestepped over plain HTTP.
    pub ports: Vec<u16>,
    /// Uppercase; empty means any method.
    pub methods: Vec<String>,
    /// Empty means any path.
    pub paths: Vec<PathPattern>,
    /// Allow, deny, narrow or warn.
    pub action: Action,
    /// Models the route covers (exact, or a trailing-`*` prefix; case-insensitive).
    /// Empty means any model, including none.
    pub models: Vec<ModelPattern>,
    /// Operations the route covers; empty means any.
    pub operations: Vec<Operation>,
    /// Catalog provider ids the route covers; empty means any destination.
    pub providers: Vec<String>,
    /// Which detectors run, and what a hit does.
    pub detectors: Detectors,
    /// How a narrow route rewrites requests (`Some` exactly when `action` is narrow).
    pub narrow: Option<NarrowSpec>,
    /// Default intercept.
    pub mode: Mode,
    /// Whether WebSocket upgrades may use this (allow) route. Default false.
    pub websocket: bool,
    /// Whether absolute-form `http://` requests may use this (allow) route. Default false.
    pub allow_plaintext: bool,
    /// SSRF opt-in: resolved addresses in these networks may be dialled for this route.
    pub allow_private: Vec<ipnet::IpNet>,
}

impl Route {
    /// Whether the route opted into dialling `ip` although [`crate::classify_ip`] blocks it.
    /// An IPv4-mapped IPv6 address counts as the IPv4 address it carries.
    pub fn allows_private(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.allow_private
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
    }

    /// Whether the route is scoped to `agent`: by agent id, by tenant, or unscoped.
    pub fn applies_to(&self, agent: &Agent) -> bool {
        (self.tenants.is_empty() && self.agents.is_empty())
            || self.tenants.contains(&agent.tenant)
            || self.agents.contains(&agent.id)
    }

    /// Whether one of the route's host patterns matches `host`.
    pub fn matches_host(&self, host: &Host) -> bool {
        self.hosts.iter().any(|pattern| pattern.matches(host))
    }

    fn matches_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    fn matches_path(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path))
    }

    /// Whether a request with this provider can match (host-level: the provider
    /// follows from the host).
    fn matches_provider(&self, provider: Option<&str>) -> bool {
        self.providers.is_empty()
            || provider.is_some_and(|p| self.providers.iter().any(|id| id == p))
    }

    fn matches_operation(&self, operation: Option<Operation>) -> bool {
        self.operations.is_empty() || operation.is_some_and(|op| self.operations.contains(&op))
    }

    /// Whether `model` is covered. A route with `models` never covers "no model".
    pub fn matches_model(&self, model: Option<&str>) -> bool {
        self.models.is_empty() || model.is_some_and(|m| self.models.iter().any(|p| p.matches(m)))
    }

    /// Whether deciding on this route needs the whole request body: it runs detectors,
    /// checks models, or narrows. This is what "an inspected route" means. Such a route
    /// refuses a body it cannot inspect rather than pass it uninspected: one not read or
    /// cut at `max_inspect_body` (`body_too_large`), one with a `Content-Encoding`
    /// (`body_encoded`), and one that looks like JSON but does not parse strictly
    /// (`body_unparseable`).
    pub fn requires_inspection(&self) -> bool {
        self.detectors.any() || !self.models.is_empty() || self.action == Action::Narrow
    }

    /// A narrow route that replaces a disallowed model instead of refusing it.
    fn falls_back(&self) -> bool {
        self.narrow
            .as_ref()
            .is_some_and(|n| n.fallback_model.is_some())
    }

    /// A deny route that denies every request on its hosts and ports (for a host of
    /// `provider`), so the tunnel itself can be refused at CONNECT time.
    fn denies_everything(&self, provider: Option<&str>) -> bool {
        self.action == Action::Deny
            && self.methods.is_empty()
            && self.paths.is_empty()
            && self.models.is_empty()
            && self.operations.is_empty()
            && self.matches_provider(provider)
    }

    /// The checks that need no body, in the order near misses are found: why `req`
    /// does not match, or `None`. Deny routes skip the plaintext and websocket gates:
    /// those are permissions, and must not let a request slip past a deny.
    fn mismatch(&self, req: &RequestFacts<'_>, class: &Classification) -> Option<Reason> {
        if !self.ports.contains(&req.port) {
            Some(Reason::PortNotAllowed)
        } else if !self.matches_method(req.method) {
            Some(Reason::MethodNotAllowed)
        } else if !self.matches_path(req.path) {
            Some(Reason::PathNotAllowed)
        } else if self.action != Action::Deny && req.plaintext && !self.allow_plaintext {
            Some(Reason::PlaintextNotAllowed)
        } else if self.action != Action::Deny && req.websocket && !self.websocket {
            Some(Reason::WebsocketNotAllowed)
        } else if !self.matches_provider(class.provider.as_deref()) {
            Some(Reason::ProviderNotAllowed)
        } else if !self.matches_operation(class.operation) {
            Some(Reason::OperationNotAllowed)
        } else {
            None
        }
    }
}

/// One entry of a route's `models`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelPattern {
    /// `gpt-4o-mini`: this model only (ASCII case-insensitive).
    Exact(String),
    /// `gpt-4.1-*`, stored without the `*`: any model starting with it.
    Prefix(String),
}

impl ModelPattern {
    /// Parse `gpt-4o-mini` or `gpt-4.1-*` (a `*` only at the very end). The error says
    /// how to fix the pattern.
    pub fn parse(s: &str) -> Result<ModelPattern, String> {
        if s.is_empty() {
            return Err("a model is empty; write a model name such as \"gpt-4o-mini\"".to_owned());
        }
        if s == "*" {
            return Err(
                "model `*` matches every model; remove `models` to allow any model, or list them"
                    .to_owned(),
            );
        }
        if let Some(bad) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "model `{s}` has the character {bad:?}; write the model name as the API takes it"
            ));
        }
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(format!(
                "model `{s}` has a `*` that is not at the end; only a trailing `*` is allowed, as in `gpt-4.1-*`"
            ));
        }
        let body = body.to_ascii_lowercase();
        Ok(if prefix {
            ModelPattern::Prefix(body)
        } else {
            ModelPattern::Exact(body)
        })
    }

    /// Whether `model` matches, ignoring ASCII case.
    pub fn matches(&self, model: &str) -> bool {
        match self {
            ModelPattern::Exact(want) => model.eq_ignore_ascii_case(want),
            ModelPattern::Prefix(prefix) => model
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
        }
    }
}

impl fmt::Display for ModelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelPattern::Exact(model) => f.write_str(model),
            ModelPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// One entry of a route's `paths`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// `/v1/chat/completions`: this path only.
    Exact(String),
    /// `/v1/*`, stored without the `*` (`/v1/`): any path starting with it.
    Prefix(String),
}

impl PathPattern {
    /// Parse `/v1/chat/completions` or `/v1/*` (a `*` only at the very end).
    /// The error message says how to fix the pattern.
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.starts_with('/') {
            return Err(format!(
                "path `{s}` must start with `/`, as in `/v1/models`"
            ));
        }
        if let Some(bad) = s.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "path `{s}` has the character {bad:?}; write it percent-encoded, as the client sends it"
            ));
        }
        if s.contains('?') || s.contains('#') {
            return Err(format!(
                "path `{s}` has a query or fragment; paths match the path only, so drop everything from `?`"
            ));
        }
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(format!(
                "path `{s}` has a `*` that is not at the end; only a trailing `*` is allowed, as in `/v1/*`"
            ));
        }
        if !is_normal_path(body) {
            return Err(format!(
                "path `{s}` has a `.` or `..` segment, a backslash or an encoded `.`, `/` or `\\`; write the normalized path"
            ));
        }
        Ok(if prefix {
            PathPattern::Prefix(body.to_owned())
        } else {
            PathPattern::Exact(body.to_owned())
        })
    }

    /// Whether `path` (query already stripped) matches.
    ///
    /// A prefix pattern never matches a path with dot segments, backslashes or encoded
    /// separators: `/v1/../admin` starts with `/v1/`, but an upstream that normalizes it
    /// would serve `/admin`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(want) => path == want,
            PathPattern::Prefix(prefix) => {
                path.starts_with(prefix.as_str()) && is_normal_path(path)
            }
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Exact(path) => f.write_str(path),
            PathPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// No `.`/`..` segment (also `..;x`, which some servers read as `..`), no backslash, and
/// no percent-encoded `.`, `/` or `\`.
fn is_normal_path(path: &str) -> bool {
    if path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") {
        return false;
    }
    !path.split('/').any(|segment| {
        let segment = segment.split(';').next().unwrap_or(segment);
        segment == "." || segment == ".."
    })
}

/// An agent: who is calling. Every agent belongs to exactly one tenant.
pub struct Agent {
    /// The agent id (the user part of `Proxy-Authorization: Basic`).
    pub id: String,
    /// The tenant the agent belongs to.
    pub tenant: String,
    token_sha256: [u8; 32],
}

impl Agent {
    pub(crate) fn new(id: String, tenant: String, token_sha256: [u8; 32]) -> Agent {
        Agent {
            id,
            tenant,
            token_sha256,
        }
    }
}

impl fmt::Debug for Agent {
    /// The token hash is left out: a hash of a weak token can be brute-forced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// What the proxy knows about one HTTP request when it asks for a decision.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// The canonical destination host (the CONNECT host inside a tunnel).
    pub host: &'a Host,
    /// The destination port.
    pub port: u16,
    /// The method as sent; compared case-insensitively with the route's uppercase methods.
    pub method: &'a str,
    /// The path only, query already stripped.
    pub path: &'a str,
    /// An absolute-form `http://` request, not inside TLS.
    pub plaintext: bool,
    /// An `Upgrade: websocket` request.
    pub websocket: bool,
}

/// The validated policy. Cheap to share behind an `Arc`; reload swaps the whole value.
#[derive(Debug)]
pub struct Policy {
    tenants: Vec<String>,
    agents: Vec<Agent>,
    agent_index: HashMap<String, usize>,
    routes: Vec<Arc<Route>>,
    index: HostIndex,
    pub(crate) catalog: Catalog,
    hash_hex: String,
}

/// Compared against when the agent id is unknown, so that the work done (and the time
/// taken) does not depend on whether the id exists. Nobody knows a preimage of it.
const UNKNOWN_AGENT_DIGEST: [u8; 32] = [0; 32];

impl Policy {
    /// Build from validated parts. `source` is the config text the parts came from.
    pub(crate) fn new(
        tenants: Vec<String>,
        agents: Vec<Agent>,
        routes: Vec<Route>,
        catalog: Catalog,
        source: &str,
    ) -> Policy {
        let agent_index = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| (agent.id.clone(), i))
            .collect();
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let index = HostIndex::build(&routes);
        Policy {
            tenants,
            agents,
            agent_index,
            routes,
            index,
            catalog,
            hash_hex: hex::encode(Sha256::digest(source.as_bytes())),
        }
    }

    /// The provider catalog in effect: config entries, then the built-ins.
    pub fn providers(&self) -> &[Arc<Provider>] {
        self.catalog.providers()
    }

    /// The catalog entry with this id.
    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.catalog.get(id)
    }

    /// The catalog entry that answers on `host`, if any.
    pub fn provider_for(&self, host: &Host) -> Option<&Arc<Provider>> {
        self.catalog.provider_for(host)
    }

    /// SHA-256 of the config text it came from (hex, 64 chars).
    pub fn hash_hex(&self) -> &str {
        &self.hash_hex
    }

    /// The declared tenant ids, in file order.
    pub fn tenants(&self) -> &[String] {
        &self.tenants
    }

    /// The declared agents, in file order.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// The agent with this id.
    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agent_index.get(id).and_then(|&i| self.agents.get(i))
    }

    /// The routes, in file order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The `Proxy-Authorization: Basic` check.
    ///
    /// Hashes `token` with SHA-256 and compares it with the agent's `token_sha256` in
    /// constant time. An unknown agent id still hashes and compares (against a dummy), so
    /// timing does not reveal which ids exist. `None` on any mismatch.
    pub fn authenticate(&self, agent_id: &str, token: &[u8]) -> Option<&Agent> {
        let digest = Sha256::digest(token);
        let agent = self.agent(agent_id);
        let expected = agent.map_or(&UNKNOWN_AGENT_DIGEST, |a| &a.token_sha256);
        let ok =
            digest.as_slice().ct_eq(expected.as_slice()) & Choice::from(u8::from(agent.is_some()));
        if bool::from(ok) {
            agent
        } else {
            None
        }
    }

    /// CONNECT-time pre-check (SPEC §3 step 3).
    ///
    /// Walks the routes that apply to `agent` and name `host`, in file order:
    /// - an allow, narrow or warn route with the port wins: `Ok(route)`, whose `mode`
    ///   says intercept or passthrough;
    /// - a deny route with the port and no per-request condition (method, path, model,
    ///   operation) refuses the tunnel (`RouteDeny`); one with conditions is left for
    ///   [`Policy::evaluate`] per request;
    /// - routes whose `providers` exclude the host's provider are skipped;
    /// - otherwise `ProviderNotAllowed` or `PortNotAllowed` if a route had the host but
    ///   not the provider or port, else `NoRoute`.
    ///
    /// An IP-literal host only matches a route that names that IP. A passthrough route
    /// behind a conditional deny route for the same host is refused, because nothing
    /// inside a spliced tunnel can be checked against that deny.
    pub fn precheck(&self, agent: &Agent, host: &Host, port: u16) -> Result<Arc<Route>, Decision> {
        let provider = self.catalog.provider_for(host).map(|p| p.id.as_str());
        let mut port_missed = false;
        let mut provider_missed = false;
        let mut pending_deny: Option<&Arc<Route>> = None;
        for route in self.candidates(agent, host) {
            if !route.matches_provider(provider) {
                provider_missed |= route.action != Action::Deny;
                continue;
            }
            if !route.ports.contains(&port) {
                port_missed |= route.action != Action::Deny;
                continue;
            }
            if route.action == Action::Deny {
                if route.denies_everything(provider) {
                    return Err(Decision::deny_by(Arc::clone(route)));
                }
                pending_deny.get_or_insert(route);
                continue;
            }
            if let (Mode::Passthrough, Some(deny)) = (route.mode, pending_deny) {
                return Err(Decision::deny_by(Arc::clone(deny)));
            }
            return Ok(Arc::clone(route));
        }
        Err(Decision::deny(if provider_missed {
            Reason::ProviderNotAllowed
        } else if port_missed {
            Reason::PortNotAllowed
        } else {
            Reason::NoRoute
        }))
    }

    /// Walk the candidate routes for a classified request: first match wins.
    /// A route that inspects the body refuses a body it cannot inspect
    /// ([`BodyView::refusal`]).
    pub(crate) fn walk(
        &self,
        agent: &Agent,
        req: &RequestFacts<'_>,
        class: &Classification,
        body: &BodyView<'_>,
        trace: &mut impl Trace,
    ) -> Walk {
        let mut near_miss = Reason::NoRoute;
        for route in self.candidates(agent, req.host) {
            if let Some(reason) = route.mismatch(req, class) {
                // A deny route that does not match gives no near-miss hint.
                if route.action != Action::Deny
                    && near_miss_rank(reason) > near_miss_rank(near_miss)
                {
                    near_miss = reason;
                }
                trace.step(route, Step::Skip(reason));
                continue;
            }
            if let Some(reason) = route
                .requires_inspection()
                .then(|| body.refusal())
                .flatten()
            {
                trace.step(route, Step::Uninspectable(reason));
                return Walk::Decided(Decision::new(Action::Deny, reason, Some(Arc::clone(route))));
            }
            let model_ok = route.matches_model(class.model.as_deref());
            if route.action == Action::Deny {
                if model_ok {
                    trace.step(route, Step::Match);
                    return Walk::Decided(Decision::deny_by(Arc::clone(route)));
                }
                trace.step(route, Step::Skip(Reason::ModelNotAllowed));
                continue;
            }
            if model_ok {
                trace.step(route, Step::Match);
                return Walk::Matched {
                    route: Arc::clone(route),
                    replace_model: false,
                };
            }
            if route.falls_back() {
                trace.step(route, Step::MatchWithFallback);
                return Walk::Matched {
                    route: Arc::clone(route),
                    replace_model: true,
                };
            }
            if near_miss_rank(Reason::ModelNotAllowed) > near_miss_rank(near_miss) {
                near_miss = Reason::ModelNotAllowed;
            }
            trace.step(route, Step::Skip(Reason::ModelNotAllowed));
        }
        Walk::Missed(near_miss)
    }

    /// Routes that apply to `agent` and whose hosts match `host`, in file order.
    fn candidates<'a>(
        &'a self,
        agent: &'a Agent,
        host: &'a Host,
    ) -> impl Iterator<Item = &'a Arc<Route>> + 'a {
        self.index
            .candidates(host, &self.routes)
            .filter_map(|i| self.routes.get(i))
            .filter(move |route| route.applies_to(agent))
    }
}

/// How the walk over the routes ended.
pub(crate) enum Walk {
    /// An allow, narrow or warn route matched. `replace_model`: the model is outside the
    /// route's `models` and narrowing must put the fallback model in its place.
    Matched {
        route: Arc<Route>,
        replace_model: bool,
    },
    /// Decided during the walk: a deny route matched, or a route that needs the body
    /// could not inspect it.
    Decided(Decision),
    /// No route matched; the most specific near miss.
    Missed(Reason),
}

/// What happened at one candidate route, for `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The route did not match, for this reason.
    Skip(Reason),
    /// The route matched.
    Match,
    /// A narrow route matched, and will replace the model with its fallback.
    MatchWithFallback,
    /// The route matched all it can without the body, needs the body, and refuses it
    /// for this reason (`body_too_large`, `body_encoded`, `body_unparseable`).
    Uninspectable(Reason),
}

/// Records the walk. The hot path uses [`NoTrace`], which compiles to nothing.
pub(crate) trait Trace {
    fn step(&mut self, route: &Arc<Route>, step: Step);
}

/// A trace that records nothing.
pub(crate) struct NoTrace;

impl Trace for NoTrace {
    #[inline]
    fn step(&mut self, _route: &Arc<Route>, _step: Step) {}
}

impl<T: Trace> Trace for &mut T {
    fn step(&mut self, route: &Arc<Route>, step: Step) {
        (**self).step(route, step);
    }
}

/// How specific a near miss is; the highest one is reported.
fn near_miss_rank(reason: Reason) -> u8 {
    match reason {
        Reason::ModelNotAllowed => 7,
        Reason::OperationNotAllowed => 6,
        Reason::ProviderNotAllowed => 5,
        Reason::MethodNotAllowed => 4,
        Reason::PathNotAllowed => 3,
        Reason::PlaintextNotAllowed | Reason::WebsocketNotAllowed => 2,
        Reason::PortNotAllowed => 1,
        _ => 0,
    }
}

/// Route indices by host. Each list is in ascending (file) order, so merging the exact
/// and wildcard lists for a name keeps "first match wins".
#[derive(Debug, Default)]
struct HostIndex {
    /// `api.openai.com` → routes with that exact host.
    exact: HashMap<String, Vec<usize>>,
    /// `.openai.azure.com` → routes with `*.openai.azure.com`.
    wildcard: HashMap<String, Vec<usize>>,
    /// Routes with at least one IP pattern; few, so scanned.
    ip: Vec<usize>,
}

impl HostIndex {
    fn build(routes: &[Arc<Route>]) -> HostIndex {
        fn push(list: &mut Vec<usize>, i: usize) {
            // A route naming the same key twice is indexed once.
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
        let mut index = HostIndex::default();
        for (i, route) in routes.iter().enumerate() {
            for pattern in &route.hosts {
                match pattern {
                    HostPattern::Exact(name) => {
                        push(index.exact.entry(name.clone()).or_default(), i)
                    }
                    HostPattern::Wildcard(suffix) => {
                        push(index.wildcard.entry(suffix.clone()).or_default(), i)
                    }
                    HostPattern::Ip(_) => push(&mut index.ip, i),
                }
            }
        }
        index
    }

    fn candidates<'a>(&'a self, host: &'a Host, routes: &'a [Arc<Route>]) -> Candidates<'a> {
        match host {
            Host::Name(name) => Candidates::Names {
                exact: self.exact.get(name).map_or(&[], Vec::as_slice),
                wildcard: wildcard_key(name)
                    .and_then(|key| self.wildcard.get(key))
                    .map_or(&[], Vec::as_slice),
            },
            Host::Ip(_) => Candidates::Ips {
                list: self.ip.iter(),
                routes,
                host,
            },
        }
    }
}

/// Route indices matching one host, ascending.
enum Candidates<'a> {
    /// Merge of two ascending lists, without duplicates.
    Names {
        exact: &'a [usize],
        wildcard: &'a [usize],
    },
    /// The IP-pattern routes, filtered by an actual match.
    Ips {
        list: std::slice::Iter<'a, usize>,
        routes: &'a [Arc<Route>],
        host: &'a Host,
    },
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Names { exact, wildcard } => {
                let next = match (exact.first(), wildcard.first()) {
                    (Some(&a), Some(&b)) => a.min(b),
                    (Some(&a), None) => a,
                    (None, Some(&b)) => b,
                    (None, None) => return None,
                };
                // A route under both keys is yielded once.
                if let Some((&head, rest)) = exact.split_first() {
                    if head == next {
                        *exact = rest;
                    }
                }
                if let Some((&head, rest)) = wildcard.split_first() {
                    if head == next {
                        *wildcard = rest;
                    }
                }
                Some(next)
            }
            Candidates::Ips { list, routes, host } => list
                .by_ref()
                .copied()
                .find(|&i| routes.get(i).is_some_and(|route| route.matches_host(host))),
        }
    }
}
