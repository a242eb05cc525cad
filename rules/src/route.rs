//! Routes: one validated `[[routes]]` entry, its model and path patterns, and the facts
//! of a request it is matched against.

use std::fmt;
use std::net::IpAddr;

use crate::agent::Agent;
use crate::budget::BudgetSpec;
use crate::catalog::{Classification, Operation};
use crate::detect::Detectors;
use crate::host::{Host, HostPattern};
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
    /// How long an approve route holds a request before denying it. Default 120 s.
    pub approval_timeout: std::time::Duration,
    /// Whether absolute-form `http://` requests may use this (allow) route. Default false.
    pub allow_plaintext: bool,
    /// SSRF opt-in: resolved addresses in these networks may be dialled for this route.
    pub allow_private: Vec<ipnet::IpNet>,
    /// The vault slot whose key the proxy injects: a catalog provider id. Only on an
    /// intercepted allow, narrow or warn route. Use [`Route::key_slot`], which names
    /// the slot only for a request classified as that provider.
    pub inject_key: Option<String>,
    /// The route's budget, besides the tenant's and the agent's. Only on an
    /// intercepted allow, narrow or warn route.
    pub budget: Option<BudgetSpec>,
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

    /// The vault slot to inject a key from for this request: the route's `inject_key`,
    /// when the request was classified as that very provider. A key is never injected
    /// into a request for another provider, or for a host outside the catalog.
    pub fn key_slot(&self, class: &Classification) -> Option<&str> {
        let slot = self.inject_key.as_deref()?;
        (class.provider.as_deref() == Some(slot)).then_some(slot)
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

    pub(crate) fn matches_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    pub(crate) fn matches_path(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path))
    }

    /// Whether a request with this provider can match (host-level: the provider
    /// follows from the host).
    pub(crate) fn matches_provider(&self, provider: Option<&str>) -> bool {
        self.providers.is_empty()
            || provider.is_some_and(|p| self.providers.iter().any(|id| id == p))
    }

    pub(crate) fn matches_operation(&self, operation: Option<Operation>) -> bool {
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
    pub(crate) fn falls_back(&self) -> bool {
        self.narrow
            .as_ref()
            .is_some_and(|n| n.fallback_model.is_some())
    }

    /// A deny route that denies every request on its hosts and ports (for a host of
    /// `provider`), so the tunnel itself can be refused at CONNECT time.
    pub(crate) fn denies_everything(&self, provider: Option<&str>) -> bool {
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
    pub(crate) fn mismatch(
        &self,
        req: &RequestFacts<'_>,
        class: &Classification,
    ) -> Option<Reason> {
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
