//! Decisions are values: an [`Action`], a stable [`Reason`] code and the route that
//! produced them, plus the detector hits and narrowed fields the ledger records. The
//! proxy turns a `Decision` into a response in exactly one place.

use std::sync::Arc;

use crate::reason::{Action, Reason};
use crate::route::Route;

/// The outcome of a policy check.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Allow, deny, narrow or warn.
    pub action: Action,
    /// The stable reason code.
    pub reason: Reason,
    /// The route that decided, if one did (`None` for "no route" and non-policy denials).
    pub route: Option<Arc<Route>>,
    /// Detector hits as ledger ids (`"injection:ignore_previous"`); never matched text.
    /// Empty unless [`crate::Policy::evaluate`] ran detectors.
    pub detectors: Vec<String>,
    /// Names of the body fields narrowing changed (`["max_tokens", "model"]`).
    pub narrowed: Vec<String>,
}

impl Decision {
    /// A denial that no route produced (no route, auth, framing, upstream, ...).
    pub fn deny(reason: Reason) -> Decision {
        Decision {
            action: Action::Deny,
            reason,
            route: None,
            detectors: Vec::new(),
            narrowed: Vec::new(),
        }
    }

    /// An allow by `route`.
    pub fn allow(route: Arc<Route>) -> Decision {
        Decision {
            action: Action::Allow,
            reason: Reason::RouteAllow,
            route: Some(route),
            detectors: Vec::new(),
            narrowed: Vec::new(),
        }
    }

    /// A denial by a deny route.
    pub fn deny_by(route: Arc<Route>) -> Decision {
        Decision {
            action: Action::Deny,
            reason: Reason::RouteDeny,
            route: Some(route),
            detectors: Vec::new(),
            narrowed: Vec::new(),
        }
    }

    /// A decision with any action and reason, by `route` (or by none).
    pub fn new(action: Action, reason: Reason, route: Option<Arc<Route>>) -> Decision {
        Decision {
            action,
            reason,
            route,
            detectors: Vec::new(),
            narrowed: Vec::new(),
        }
    }

    /// The id of the deciding route, for the ledger's `rule_id`.
    pub fn route_id(&self) -> Option<&str> {
        self.route.as_deref().map(|route| route.id.as_str())
    }

    /// True when the request may proceed: allow, warn, or narrow. A narrow decision
    /// from [`crate::Policy::evaluate`] must forward [`crate::Evaluation::narrowed`]'s
    /// body when it has one.
    pub fn is_allow(&self) -> bool {
        self.action.proceeds()
    }
}
