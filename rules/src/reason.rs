//! The stable vocabulary of decisions: what happens to a request ([`Action`]) and why
//! ([`Reason`]). This module imports nothing from the crate, so every other module can
//! use it without an import cycle.

use std::fmt;

/// What happens to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Forward it.
    Allow,
    /// Answer it locally with an error.
    Deny,
    /// Rewrite the body within the route's bounds, then forward it.
    Narrow,
    /// Forward it, but mark the record and notify.
    Warn,
    /// Hold it until an approver approves or denies it, or it times out.
    Approve,
}

impl Action {
    /// `"allow"`, `"deny"`, `"narrow"` or `"warn"`: the value of a route's `action` and
    /// of the ledger's `decision`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Narrow => "narrow",
            Action::Warn => "warn",
            Action::Approve => "approve",
        }
    }

    /// Whether a request with this action is forwarded (allow, narrow, warn).
    pub fn proceeds(&self) -> bool {
        !matches!(self, Action::Deny)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision was made. The codes are stable: they appear in the ledger, in
/// metrics and in the JSON body a denied client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// An allow route matched.
    RouteAllow,
    /// A deny route matched.
    RouteDeny,
    /// No route lets this agent reach this destination.
    NoRoute,
    /// A route has the host, but not this method.
    MethodNotAllowed,
    /// A route has the host, but not this path.
    PathNotAllowed,
    /// A route has the host, but not this port.
    PortNotAllowed,
    /// Plain HTTP to a route without `allow_plaintext = true`.
    PlaintextNotAllowed,
    /// A WebSocket upgrade to a route without `websocket = true`.
    WebsocketNotAllowed,
    /// `Host` / `:authority` differs from the CONNECT host (domain fronting).
    HostMismatch,
    /// The destination resolved to an address in the SSRF deny table.
    SsrfBlocked,
    /// Ambiguous or malformed HTTP framing (request smuggling guard).
    BadFraming,
    /// A malformed request that is not a framing problem.
    BadRequest,
    /// Missing or wrong proxy credentials.
    AuthFailed,
    /// The body is over `max_inspect_body` on a route that must inspect it.
    BodyTooLarge,
    /// The body looks like JSON but does not parse strictly, on a route that must
    /// inspect it.
    BodyUnparseable,
    /// The body has a `Content-Encoding` other than `identity`, on a route that must
    /// inspect it.
    BodyEncoded,
    /// TCP connect to the upstream failed.
    UpstreamConnect,
    /// TLS with the upstream failed, including certificate verification.
    UpstreamTls,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream failed in some other way.
    UpstreamError,
    /// The destination name did not resolve.
    ResolveFailed,
    /// The ledger cannot be written, so the proxy fails closed.
    LedgerUnavailable,
    /// The shared state (budgets, rate limits, approvals) cannot be reached, so a
    /// request that needs it fails closed.
    StateUnavailable,
    /// The request would take a token budget past its limit (refused up front).
    BudgetExceeded,
    /// The request would pass a requests-per-minute limit.
    RateLimited,
    /// The agent already holds as many open tunnels as `[limits]` allows.
    ConnectionLimit,
    /// The request body could not get its share of the inspection memory budget
    /// (`[limits] inspect_memory`, `inspect_memory_per_tenant`) in time.
    MemoryBudget,
    /// An approver denied the held request.
    ApprovalDenied,
    /// Nobody approved the held request in time.
    ApprovalTimeout,
    /// A route has the host and path, but not this model.
    ModelNotAllowed,
    /// A route has the host and path, but not this operation.
    OperationNotAllowed,
    /// A route has the host, but not this provider.
    ProviderNotAllowed,
    /// The prompt-injection detector fired on a route that blocks or warns on it.
    InjectionDetected,
    /// A provider key format was found in the request on a route that blocks or warns.
    SecretDetected,
    /// A key from the vault was on its way to a host other than its provider's.
    VaultKeyLeak,
    /// The route injects a provider key (`inject_key`), and the vault holds none for it.
    KeyUnavailable,
    /// A narrow route matched (the body may have been rewritten).
    RouteNarrow,
    /// A warn route matched.
    RouteWarn,
    /// An approve route matched: the request is held for an approver.
    RouteApprove,
    /// An approver approved the held request.
    ApprovalGranted,
    /// A grant from an earlier approval let the request through without a hold.
    ApprovalGrantUsed,
    /// The agent opened too many tunnels to new denied hosts in a short time (each would
    /// need a certificate minted just to show the denial), so the tunnel itself is refused.
    DeniedTunnelLimit,
}

impl Reason {
    /// Every reason, for metric pre-registration and tests.
    pub const ALL: &'static [Reason] = &[
        Reason::RouteAllow,
        Reason::RouteDeny,
        Reason::NoRoute,
        Reason::MethodNotAllowed,
        Reason::PathNotAllowed,
        Reason::PortNotAllowed,
        Reason::PlaintextNotAllowed,
        Reason::WebsocketNotAllowed,
        Reason::HostMismatch,
        Reason::SsrfBlocked,
        Reason::BadFraming,
        Reason::BadRequest,
        Reason::AuthFailed,
        Reason::BodyTooLarge,
        Reason::BodyUnparseable,
        Reason::BodyEncoded,
        Reason::UpstreamConnect,
        Reason::UpstreamTls,
        Reason::UpstreamTimeout,
        Reason::UpstreamError,
        Reason::ResolveFailed,
        Reason::LedgerUnavailable,
        Reason::StateUnavailable,
        Reason::BudgetExceeded,
        Reason::RateLimited,
        Reason::ConnectionLimit,
        Reason::MemoryBudget,
        Reason::ApprovalDenied,
        Reason::ApprovalTimeout,
        Reason::ModelNotAllowed,
        Reason::OperationNotAllowed,
        Reason::ProviderNotAllowed,
        Reason::InjectionDetected,
        Reason::SecretDetected,
        Reason::VaultKeyLeak,
        Reason::KeyUnavailable,
        Reason::RouteNarrow,
        Reason::RouteWarn,
        Reason::RouteApprove,
        Reason::ApprovalGranted,
        Reason::ApprovalGrantUsed,
        Reason::DeniedTunnelLimit,
    ];

    /// The stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::RouteAllow => "route_allow",
            Reason::RouteDeny => "route_deny",
            Reason::NoRoute => "no_route",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::PathNotAllowed => "path_not_allowed",
            Reason::PortNotAllowed => "port_not_allowed",
            Reason::PlaintextNotAllowed => "plaintext_not_allowed",
            Reason::WebsocketNotAllowed => "websocket_not_allowed",
            Reason::HostMismatch => "host_mismatch",
            Reason::SsrfBlocked => "ssrf_blocked",
            Reason::BadFraming => "bad_framing",
            Reason::BadRequest => "bad_request",
            Reason::AuthFailed => "auth_failed",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BodyUnparseable => "body_unparseable",
            Reason::BodyEncoded => "body_encoded",
            Reason::UpstreamConnect => "upstream_connect_failed",
            Reason::UpstreamTls => "upstream_tls_failed",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamError => "upstream_error",
            Reason::ResolveFailed => "resolve_failed",
            Reason::LedgerUnavailable => "ledger_unavailable",
            Reason::StateUnavailable => "state_unavailable",
            Reason::BudgetExceeded => "budget_exceeded",
            Reason::RateLimited => "rate_limited",
            Reason::ConnectionLimit => "connection_limit",
            Reason::MemoryBudget => "memory_budget",
            Reason::ApprovalDenied => "approval_denied",
            Reason::ApprovalTimeout => "approval_timeout",
            Reason::ModelNotAllowed => "model_not_allowed",
            Reason::OperationNotAllowed => "operation_not_allowed",
            Reason::ProviderNotAllowed => "provider_not_allowed",
            Reason::InjectionDetected => "injection_detected",
            Reason::SecretDetected => "secret_detected",
            Reason::VaultKeyLeak => "vault_key_leak",
            Reason::KeyUnavailable => "key_unavailable",
            Reason::RouteNarrow => "route_narrow",
            Reason::RouteWarn => "route_warn",
            Reason::RouteApprove => "route_approve",
            Reason::ApprovalGranted => "approval_granted",
            Reason::ApprovalGrantUsed => "approval_grant_used",
            Reason::DeniedTunnelLimit => "denied_tunnel_limit",
        }
    }

    /// One human sentence for the client. It never names a route or another tenant's rules.
    pub fn message(&self) -> &'static str {
        match self {
            Reason::RouteAllow => "The request is allowed by policy.",
            Reason::RouteDeny => "The request is denied by policy.",
            Reason::NoRoute => "No policy route allows this agent to reach this destination.",
            Reason::MethodNotAllowed => "This HTTP method is not allowed for this destination.",
            Reason::PathNotAllowed => "This path is not allowed for this destination.",
            Reason::PortNotAllowed => "This port is not allowed for this destination.",
            Reason::PlaintextNotAllowed => {
                "Plain HTTP is not allowed for this destination; use HTTPS."
            }
            Reason::WebsocketNotAllowed => {
                "WebSocket upgrades are not allowed for this destination."
            }
            Reason::HostMismatch => {
                "The request's Host does not match the destination of the tunnel it was sent in."
            }
            Reason::SsrfBlocked => {
                "The destination resolves to a private, internal or reserved address, which is blocked."
            }
            Reason::BadFraming => {
                "The request's framing is malformed or ambiguous, so the connection is closed."
            }
            Reason::BadRequest => "The request is malformed.",
            Reason::AuthFailed => {
                "Proxy authentication failed; send Proxy-Authorization: Basic with your agent id and token."
            }
            Reason::BodyTooLarge => {
                "The request body is larger than the proxy can inspect for this destination."
            }
            Reason::BodyUnparseable => {
                "The request body looks like JSON but is not valid, unambiguous JSON, so it cannot be inspected; send well-formed JSON without duplicate keys."
            }
            Reason::BodyEncoded => {
                "The request body is compressed or otherwise encoded (Content-Encoding), so it cannot be inspected; send it uncompressed."
            }
            Reason::UpstreamConnect => "The proxy could not connect to the upstream server.",
            Reason::UpstreamTls => {
                "The TLS handshake with the upstream server failed or its certificate is not trusted."
            }
            Reason::UpstreamTimeout => "The upstream server did not respond in time.",
            Reason::UpstreamError => "The upstream server failed while handling the request.",
            Reason::ResolveFailed => "The destination host name could not be resolved.",
            Reason::LedgerUnavailable => {
                "The audit ledger is unavailable, so the proxy refuses requests until it recovers."
            }
            Reason::StateUnavailable => {
                "The proxy cannot reach its shared budget and approval state, so it refuses requests that need it until it recovers."
            }
            Reason::BudgetExceeded => {
                "This request would exceed the token budget; try again after the budget resets."
            }
            Reason::RateLimited => "Too many requests; try again after the Retry-After delay.",
            Reason::ConnectionLimit => {
                "This agent has too many open connections through the proxy; close some and retry."
            }
            Reason::MemoryBudget => {
                "The proxy has no memory to spare for inspecting this request body right now; retry after the Retry-After delay."
            }
            Reason::ApprovalDenied => "An approver denied this request.",
            Reason::ApprovalTimeout => "This request needed approval and nobody approved it in time.",
            Reason::ModelNotAllowed => "This model is not allowed for this destination.",
            Reason::OperationNotAllowed => {
                "This operation is not allowed for this destination."
            }
            Reason::ProviderNotAllowed => "This model provider is not allowed.",
            Reason::InjectionDetected => {
                "The request looks like a prompt-injection attempt and was blocked."
            }
            Reason::SecretDetected => {
                "The request contains what looks like an API key or other credential, which may not leave."
            }
            Reason::VaultKeyLeak => {
                "The request carries a provider key held by the proxy to a host of another provider, which is always blocked."
            }
            Reason::KeyUnavailable => {
                "The proxy holds no key for this destination in its vault; an operator must add one with `portcullis vault put`."
            }
            Reason::RouteNarrow => "The request is allowed by policy within narrowed bounds.",
            Reason::RouteWarn => "The request is allowed by policy and flagged for review.",
            Reason::RouteApprove => "The request is held until an approver decides.",
            Reason::ApprovalGranted => "An approver approved this request.",
            Reason::ApprovalGrantUsed => "An earlier approval covers this request.",
            Reason::DeniedTunnelLimit => {
                "This agent opened too many connections to denied destinations in a short time; slow down and retry."
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
