//! Authentication, the CONNECT pre-check and the per-request decision.

use std::collections::HashSet;
use std::sync::Arc;

use portcullis_rules::{
    parse_config, Action, Agent, Decision, Host, Mode, Policy, Reason, RequestFacts,
};

/// sha256("password")
const PASSWORD_SHA256: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

/// Two tenants, three agents (all with token "password"), then `routes`.
fn policy(routes: &str) -> Arc<Policy> {
    let text = format!(
        r#"version = 1

[[tenants]]
id = "acme"

[[tenants]]
id = "globex"

[[agents]]
id = "research-bot"
tenant = "acme"
token_sha256 = "{PASSWORD_SHA256}"

[[agents]]
id = "other-bot"
tenant = "acme"
token_sha256 = "{PASSWORD_SHA256}"

[[agents]]
id = "globex-bot"
tenant = "globex"
token_sha256 = "{PASSWORD_SHA256}"

{routes}"#
    );
    match parse_config("test.toml", &text) {
        Ok(config) => config.policy,
        Err(e) => panic!("test policy must parse:\n{e}\n---\n{text}"),
    }
}

fn agent<'a>(policy: &'a Policy, id: &str) -> &'a Agent {
    policy.agent(id).unwrap_or_else(|| panic!("no agent {id}"))
}

fn host(s: &str) -> Host {
    Host::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Decide an HTTPS request (port 443, not plaintext, not websocket).
fn decide(policy: &Policy, agent_id: &str, host_name: &str, method: &str, path: &str) -> Decision {
    let h = host(host_name);
    policy.decide(
        agent(policy, agent_id),
        &RequestFacts {
            host: &h,
            port: 443,
            method,
            path,
            plaintext: false,
            websocket: false,
        },
    )
}

fn precheck(policy: &Policy, agent_id: &str, host_name: &str, port: u16) -> Result<String, Reason> {
    policy
        .precheck(agent(policy, agent_id), &host(host_name), port)
        .map(|route| route.id.clone())
        .map_err(|d| {
            assert_eq!(d.action, Action::Deny);
            d.reason
        })
}

fn assert_allowed_by(d: &Decision, route: &str) {
    assert!(d.is_allow(), "expected allow by {route}, got {d:?}");
    assert_eq!(d.reason, Reason::RouteAllow);
    assert_eq!(d.route_id(), Some(route));
}

fn assert_denied(d: &Decision, reason: Reason, route: Option<&str>) {
    assert!(!d.is_allow(), "expected deny, got {d:?}");
    assert_eq!(d.action, Action::Deny);
    assert_eq!(d.reason, reason, "{d:?}");
    assert_eq!(d.route_id(), route);
}

mod gates;
mod near_misses;
mod order;
mod scoping;
