//! `portcullis explain`: what the policy would do with one request, and why, without
//! sending anything.
//!
//! The explanation runs the same code as the proxy ([`Policy::precheck`] and the
//! evaluation behind [`Policy::evaluate`]), recording each route it looked at, so it
//! cannot drift from what the proxy does. The vault is not consulted.

use std::fmt;
use std::sync::Arc;

use crate::catalog::Classification;
use crate::decision::Decision;
use crate::evaluate::Inspection;
use crate::host::{split_host_port, Host};
use crate::policy::{Policy, Step, Trace};
use crate::reason::{Action, Reason};
use crate::route::{Mode, RequestFacts, Route};

/// What happened at one route during the walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteStep {
    /// The route id.
    pub route: String,
    /// `match`, or `skip (reason: detail)`.
    pub outcome: String,
}

/// The result of [`explain`]. `Display` prints a stable, line-oriented report.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// `POST https://api.openai.com/v1/chat/completions`.
    pub request: String,
    /// `research-bot (tenant acme)`, or why the agent is not usable.
    pub agent: String,
    /// `api.openai.com:443 https`, when the URL parsed.
    pub destination: Option<String>,
    /// What the request is, when the URL parsed.
    pub classification: Option<Classification>,
    /// The CONNECT pre-check for an `https`/`wss` URL.
    pub tunnel: Option<String>,
    /// The routes that apply to the agent and host, up to the deciding one.
    pub routes: Vec<RouteStep>,
    /// The verdict.
    pub decision: Decision,
    /// Detector hits as ledger ids.
    pub detectors: Vec<String>,
    /// Narrowed field names.
    pub narrowed: Vec<String>,
    /// Notes: why nothing matched, what a passthrough tunnel means, a bad URL.
    pub notes: Vec<String>,
}

/// Explain what `policy` does with `METHOD URL` from `agent_id`, with an optional body.
pub fn explain(
    policy: &Policy,
    agent_id: &str,
    method: &str,
    url: &str,
    body: Option<&[u8]>,
) -> Explanation {
    let method = method.to_ascii_uppercase();
    let mut out = Explanation {
        request: format!("{method} {url}"),
        agent: agent_id.to_owned(),
        destination: None,
        classification: None,
        tunnel: None,
        routes: Vec::new(),
        decision: Decision::deny(Reason::BadRequest),
        detectors: Vec::new(),
        narrowed: Vec::new(),
        notes: Vec::new(),
    };
    let target = match Target::parse(url) {
        Ok(target) => target,
        Err(message) => {
            out.notes.push(message);
            return out;
        }
    };
    out.destination = Some(format!("{}:{} {}", target.host, target.port, target.scheme));
    let Some(agent) = policy.agent(agent_id) else {
        out.agent = format!("{agent_id} (unknown agent)");
        out.decision = Decision::deny(Reason::AuthFailed);
        out.notes
            .push(format!("no agent `{agent_id}` is declared in this config"));
        return out;
    };
    out.agent = format!("{} (tenant {})", agent.id, agent.tenant);

    let req = RequestFacts {
        host: &target.host,
        port: target.port,
        method: &method,
        path: &target.path,
        plaintext: !target.tls,
        websocket: target.websocket,
    };
    // Without --body the request is explained as one without a body.
    let inspect = Inspection {
        query: target.query.as_deref(),
        headers: &[],
        body: Some(body.unwrap_or_default()),
        body_truncated: false,
    };
    let mut recorder = Recorder::default();
    let evaluation = policy.evaluate_with(agent, &req, &inspect, None, &mut recorder);
    // The request as sent; after narrowing, the evaluation names the forwarded model.
    let class = policy.classify(
        &target.host,
        &method,
        &target.path,
        inspect.query,
        inspect.body,
    );
    out.classification = Some(class.clone());

    // Inside TLS the tunnel comes first; a refused or spliced tunnel decides alone.
    if target.tls {
        match policy.precheck(agent, &target.host, target.port) {
            Err(decision) => {
                out.tunnel = Some(format!("CONNECT refused ({})", decision.reason));
                out.routes = recorder.describe(&req, &class);
                out.decision = decision;
                return out;
            }
            Ok(route) if route.mode == Mode::Passthrough => {
                out.tunnel = Some(format!(
                    "CONNECT allowed by route {} (passthrough)",
                    route.id
                ));
                out.notes.push(
                    "the tunnel is spliced after the TLS ClientHello, so requests inside it are neither seen nor checked".to_owned(),
                );
                out.decision = Decision::new(route.action, reason_for(route.action), Some(route));
                return out;
            }
            Ok(route) => {
                out.tunnel = Some(format!("CONNECT allowed by route {} (intercept)", route.id));
            }
        }
    }
    out.routes = recorder.describe(&req, &class);
    if out.routes.is_empty() && evaluation.decision.reason == Reason::NoRoute {
        out.notes.push(format!(
            "no route for agent {} names host {}",
            agent.id, target.host
        ));
    }
    out.detectors = evaluation.decision.detectors.clone();
    out.narrowed = evaluation.decision.narrowed.clone();
    out.decision = evaluation.decision;
    out
}

fn reason_for(action: Action) -> Reason {
    match action {
        Action::Deny => Reason::RouteDeny,
        Action::Narrow => Reason::RouteNarrow,
        Action::Warn => Reason::RouteWarn,
        Action::Approve => Reason::RouteApprove,
        _ => Reason::RouteAllow,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dash = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        writeln!(f, "request:        {}", self.request)?;
        writeln!(f, "agent:          {}", self.agent)?;
        if let Some(destination) = &self.destination {
            writeln!(f, "destination:    {destination}")?;
        }
        if let Some(class) = &self.classification {
            writeln!(f, "classification: {class}")?;
            if let Some(key) = &class.key_injection {
                writeln!(f, "key injection:  {key}")?;
            }
        }
        if let Some(tunnel) = &self.tunnel {
            writeln!(f, "tunnel:         {tunnel}")?;
        }
        if self.routes.is_empty() {
            writeln!(f, "routes:         -")?;
        } else {
            writeln!(f, "routes:")?;
            for step in &self.routes {
                writeln!(f, "  {}: {}", step.route, step.outcome)?;
            }
        }
        writeln!(f, "verdict:        {}", self.decision.action)?;
        writeln!(
            f,
            "reason:         {} ({})",
            self.decision.reason,
            self.decision.reason.message()
        )?;
        writeln!(
            f,
            "route:          {}",
            self.decision.route_id().unwrap_or("-")
        )?;
        writeln!(f, "detectors:      {}", dash(&self.detectors))?;
        writeln!(f, "narrowed:       {}", dash(&self.narrowed))?;
        for note in &self.notes {
            writeln!(f, "note:           {note}")?;
        }
        Ok(())
    }
}

/// The parts of an absolute URL `explain` needs.
struct Target {
    scheme: String,
    host: Host,
    port: u16,
    path: String,
    query: Option<String>,
    tls: bool,
    websocket: bool,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let hint = "write an absolute URL such as https://api.openai.com/v1/chat/completions";
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("`{url}` is not an absolute URL; {hint}"));
        };
        let scheme = scheme.to_ascii_lowercase();
        let (tls, websocket, default_port) = match scheme.as_str() {
            "https" => (true, false, 443),
            "http" => (false, false, 80),
            "wss" => (true, true, 443),
            "ws" => (false, true, 80),
            _ => {
                return Err(format!(
                    "scheme `{scheme}` is not proxied; use http, https, ws or wss"
                ))
            }
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_query) = rest.split_at(end);
        if authority.contains('@') {
            return Err(format!(
                "`{url}` carries credentials in the URL; drop the `user@` part"
            ));
        }
        let (host, port) =
            split_host_port(authority, default_port).map_err(|e| format!("`{authority}`: {e}"))?;
        let (path, query) = match path_query.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (path_query, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        Ok(Target {
            scheme,
            host,
            port,
            path: path.to_owned(),
            query,
            tls,
            websocket,
        })
    }
}

/// Records every step of the walk.
#[derive(Default)]
struct Recorder {
    steps: Vec<(Arc<Route>, Step)>,
}

impl Trace for Recorder {
    fn step(&mut self, route: &Arc<Route>, step: Step) {
        self.steps.push((Arc::clone(route), step));
    }
}

impl Recorder {
    fn describe(&self, req: &RequestFacts<'_>, class: &Classification) -> Vec<RouteStep> {
        self.steps
            .iter()
            .map(|(route, step)| RouteStep {
                route: route.id.clone(),
                outcome: match step {
                    Step::Match if route.action == Action::Deny => "match (deny route)".to_owned(),
                    Step::Match => format!("match ({} route)", route.action),
                    Step::MatchWithFallback => format!(
                        "match (narrow route; model {} is not in [{}], narrowing replaces it with {})",
                        class.model.as_deref().unwrap_or("-"),
                        join(&route.models),
                        route
                            .narrow
                            .as_ref()
                            .and_then(|n| n.fallback_model.as_deref())
                            .unwrap_or("-")
                    ),
                    Step::Uninspectable(Reason::BodyEncoded) => {
                        "stop (body_encoded: the route inspects the body, which has a Content-Encoding)".to_owned()
                    }
                    Step::Uninspectable(Reason::BodyUnparseable) => {
                        "stop (body_unparseable: the route inspects the body, which looks like JSON but does not parse strictly)".to_owned()
                    }
                    Step::Uninspectable(_) => {
                        "stop (the route inspects the body, which was not read in full)".to_owned()
                    }
                    Step::Skip(reason) => format!("skip ({reason}: {})", detail(route, *reason, req, class)),
                },
            })
            .collect()
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn detail(route: &Route, reason: Reason, req: &RequestFacts<'_>, class: &Classification) -> String {
    match reason {
        Reason::PortNotAllowed => format!("port {} is not in [{}]", req.port, join(&route.ports)),
        Reason::MethodNotAllowed => {
            format!("method {} is not in [{}]", req.method, join(&route.methods))
        }
        Reason::PathNotAllowed => {
            format!("path {} is not in [{}]", req.path, join(&route.paths))
        }
        Reason::PlaintextNotAllowed => "plain http needs allow_plaintext = true".to_owned(),
        Reason::WebsocketNotAllowed => "a websocket upgrade needs websocket = true".to_owned(),
        Reason::ProviderNotAllowed => format!(
            "provider {} is not in [{}]",
            class.provider.as_deref().unwrap_or("-"),
            join(&route.providers)
        ),
        Reason::OperationNotAllowed => format!(
            "operation {} is not in [{}]",
            class.operation.map_or("-", |op| op.as_str()),
            join(&route.operations)
        ),
        Reason::ModelNotAllowed => match &class.model {
            Some(model) => format!("model {model} is not in [{}]", join(&route.models)),
            None => format!(
                "the request names no model, and the route lists [{}]",
                join(&route.models)
            ),
        },
        other => other.message().to_owned(),
    }
}
