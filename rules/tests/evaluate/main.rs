//! `Policy::evaluate`: models, operations, providers, detectors, narrowing, warn, the
//! vault-leak rule and the body-inspection rule.

use std::sync::Arc;

use portcullis_rules::{
    parse_config, Action, Agent, Evaluation, Host, Inspection, Policy, Reason, RequestFacts,
    VaultScanner,
};
use serde_json::Value;

/// sha256("password")
const PASSWORD_SHA256: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

fn policy(routes: &str) -> Arc<Policy> {
    let text = format!(
        r#"version = 1

[[tenants]]
id = "acme"

[[agents]]
id = "bot"
tenant = "acme"
token_sha256 = "{PASSWORD_SHA256}"

{routes}"#
    );
    match parse_config("test.toml", &text) {
        Ok(config) => config.policy,
        Err(e) => panic!("test policy must parse:\n{e}\n---\n{text}"),
    }
}

fn agent(policy: &Policy) -> &Agent {
    policy.agent("bot").unwrap_or_else(|| panic!("no agent"))
}

/// A request as the proxy would describe it.
struct Req<'a> {
    host: &'a str,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: Vec<(&'a str, &'a [u8])>,
    body: Option<&'a [u8]>,
    truncated: bool,
}

impl<'a> Req<'a> {
    fn post(host: &'a str, path: &'a str, body: &'a str) -> Req<'a> {
        Req {
            host,
            method: "POST",
            path,
            query: None,
            headers: Vec::new(),
            body: Some(body.as_bytes()),
            truncated: false,
        }
    }

    fn chat(body: &'a str) -> Req<'a> {
        Req::post("api.openai.com", "/v1/chat/completions", body)
    }
}

fn eval_with(policy: &Policy, req: &Req<'_>, vault: &VaultScanner) -> Evaluation {
    let host = Host::parse(req.host).unwrap_or_else(|e| panic!("{e}"));
    policy.evaluate(
        agent(policy),
        &RequestFacts {
            host: &host,
            port: 443,
            method: req.method,
            path: req.path,
            plaintext: false,
            websocket: false,
        },
        &Inspection {
            query: req.query,
            headers: &req.headers,
            body: req.body,
            body_truncated: req.truncated,
        },
        vault,
    )
}

fn eval(policy: &Policy, req: &Req<'_>) -> Evaluation {
    eval_with(policy, req, &VaultScanner::empty())
}

fn verdict(e: &Evaluation) -> (Action, Reason, Option<&str>) {
    (e.decision.action, e.decision.reason, e.decision.route_id())
}

fn narrowed_json(e: &Evaluation) -> Value {
    let narrowed = e
        .narrowed
        .as_ref()
        .unwrap_or_else(|| panic!("expected a narrowed body, got {:?}", e.decision));
    serde_json::from_slice(&narrowed.body)
        .unwrap_or_else(|err| panic!("narrowed body is JSON: {err}"))
}

mod detectors;
mod models;
mod narrow;
