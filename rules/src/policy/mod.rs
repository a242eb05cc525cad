//! The validated policy: tenants, agents, routes, and the decision functions.
//!
//! A [`Policy`] only comes out of [`crate::parse_config`], so every value in it has been
//! checked. Lookups go through a host index (`index.rs`) that keeps file order, so "first
//! match wins" costs a hash lookup plus a walk over the few routes that name the host.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::agent::Agent;
use crate::body::BodyView;
use crate::budget::BudgetSpec;
use crate::catalog::{Catalog, Classification, Provider};
use crate::decision::Decision;
use crate::host::Host;
use crate::reason::{Action, Reason};
use crate::route::{Mode, RequestFacts, Route};
use crate::webhook::WebhookSpec;

mod index;

use index::HostIndex;

/// The validated policy. Cheap to share behind an `Arc`; reload swaps the whole value.
#[derive(Debug)]
pub struct Policy {
    tenants: Vec<String>,
    tenant_budgets: HashMap<String, BudgetSpec>,
    tenant_webhooks: HashMap<String, WebhookSpec>,
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
        tenant_budgets: HashMap<String, BudgetSpec>,
        tenant_webhooks: HashMap<String, WebhookSpec>,
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
            tenant_budgets,
            tenant_webhooks,
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

    /// The budget of tenant `tenant`, if its `[[tenants]]` entry has one.
    pub fn tenant_budget(&self, tenant: &str) -> Option<&BudgetSpec> {
        self.tenant_budgets.get(tenant)
    }

    /// The tenant's webhook, if it has one.
    pub fn tenant_webhook(&self, tenant: &str) -> Option<&WebhookSpec> {
        self.tenant_webhooks.get(tenant)
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
        let digest: [u8; 32] = Sha256::digest(token).into();
        self.authenticate_digest(agent_id, &digest)
    }

    /// [`Policy::authenticate`] for a token already hashed: a tunnel keeps the digest it
    /// authenticated with and re-checks it against each new policy generation.
    pub fn authenticate_digest(&self, agent_id: &str, digest: &[u8; 32]) -> Option<&Agent> {
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

    /// A gateway's check: the token alone, where the provider key would be. Every
    /// agent's hash is compared (in constant time), so timing does not reveal
    /// which agent, if any, holds it.
    pub fn authenticate_token(&self, token: &[u8]) -> Option<&Agent> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for agent in &self.agents {
            if bool::from(digest.as_slice().ct_eq(agent.token_sha256.as_slice())) {
                found = found.or(Some(agent));
            }
        }
        found
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

    /// Whether the DNS responder may answer `host` for `agent`: some port of
    /// some route naming the host passes [`Policy::precheck`]. The route that
    /// does is returned, for its private-address allowances; the first refusal
    /// otherwise.
    pub fn dns_route(&self, agent: &Agent, host: &Host) -> Result<Arc<Route>, Decision> {
        let mut first_refusal = None;
        for route in self.candidates(agent, host) {
            for port in &route.ports {
                match self.precheck(agent, host, *port) {
                    Ok(r) => return Ok(r),
                    Err(d) => {
                        first_refusal.get_or_insert(d);
                    }
                }
            }
        }
        Err(first_refusal.unwrap_or_else(|| Decision::deny(Reason::NoRoute)))
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
