//! Decisions are values: an [`Action`], a stable [`Reason`] code and the route that
//! produced them. The proxy turns a `Decision` into a response in exactly one place.

use std::fmt;
use std::sync::Arc;

use crate::policy::Route;

/// What happens to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Forward it.
    Allow,
    /// Answer it locally with an error.
    Deny,
}

impl Action {
    /// `"allow"` or `"deny"`: the value of a route's `action` and of the ledger's `decision`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
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
    /// The proxy is draining.
    ShuttingDown,
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
        Reason::UpstreamConnect,
        Reason::UpstreamTls,
        Reason::UpstreamTimeout,
        Reason::UpstreamError,
        Reason::ResolveFailed,
        Reason::LedgerUnavailable,
        Reason::ShuttingDown,
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
            Reason::UpstreamConnect => "upstream_connect_failed",
            Reason::UpstreamTls => "upstream_tls_failed",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamError => "upstream_error",
            Reason::ResolveFailed => "resolve_failed",
            Reason::LedgerUnavailable => "ledger_unavailable",
            Reason::ShuttingDown => "shutting_down",
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
            Reason::ShuttingDown => "The proxy is shutting down; retry shortly.",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The outcome of a policy check.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// The stable reason code.
    pub reason: Reason,
    /// The route that decided, if one did (`None` for "no route" and non-policy denials).
    pub route: Option<Arc<Route>>,
}

impl Decision {
    /// A denial that no route produced (no route, auth, framing, upstream, ...).
    pub fn deny(reason: Reason) -> Decision {
        Decision {
            action: Action::Deny,
            reason,
            route: None,
        }
    }

    /// An allow by `route`.
    pub fn allow(route: Arc<Route>) -> Decision {
        Decision {
            action: Action::Allow,
            reason: Reason::RouteAllow,
            route: Some(route),
        }
    }

    /// A denial by a deny route.
    pub fn deny_by(route: Arc<Route>) -> Decision {
        Decision {
            action: Action::Deny,
            reason: Reason::RouteDeny,
            route: Some(route),
        }
    }

    /// The id of the deciding route, for the ledger's `rule_id`.
    pub fn route_id(&self) -> Option<&str> {
        self.route.as_deref().map(|route| route.id.as_str())
    }

    /// True when the request may proceed.
    pub fn is_allow(&self) -> bool {
        self.action == Action::Allow
    }
}
