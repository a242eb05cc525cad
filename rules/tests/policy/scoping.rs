//! Tenant and agent scoping, the host index against a linear scan, shared routes, and
//! the reason codes.

use super::*;

// ---- tenant and agent scoping ---------------------------------------------------------

const SCOPED: &str = r#"
[[routes]]
id = "acme-openai"
tenants = ["acme"]
hosts = ["api.openai.com"]
methods = ["POST"]
action = "allow"

[[routes]]
id = "research-only"
agents = ["research-bot"]
hosts = ["api.anthropic.com"]
action = "allow"

[[routes]]
id = "everyone"
hosts = ["api.mistral.ai"]
action = "allow"
"#;

#[test]
fn an_agent_of_another_tenant_never_matches_a_tenant_scoped_route() {
    let p = policy(SCOPED);
    assert_allowed_by(
        &decide(&p, "research-bot", "api.openai.com", "POST", "/"),
        "acme-openai",
    );
    assert_allowed_by(
        &decide(&p, "other-bot", "api.openai.com", "POST", "/"),
        "acme-openai",
    );
    // No near miss either: globex must not learn that acme has a route there.
    assert_denied(
        &decide(&p, "globex-bot", "api.openai.com", "POST", "/"),
        Reason::NoRoute,
        None,
    );
    assert_denied(
        &decide(&p, "globex-bot", "api.openai.com", "GET", "/"),
        Reason::NoRoute,
        None,
    );
    assert_eq!(
        precheck(&p, "globex-bot", "api.openai.com", 443),
        Err(Reason::NoRoute)
    );
}

#[test]
fn an_agent_scoped_route_applies_to_that_agent_only() {
    let p = policy(SCOPED);
    assert_allowed_by(
        &decide(
            &p,
            "research-bot",
            "api.anthropic.com",
            "POST",
            "/v1/messages",
        ),
        "research-only",
    );
    assert_denied(
        &decide(&p, "other-bot", "api.anthropic.com", "POST", "/v1/messages"),
        Reason::NoRoute,
        None,
    );
    assert_eq!(
        precheck(&p, "other-bot", "api.anthropic.com", 443),
        Err(Reason::NoRoute)
    );
}

#[test]
fn an_unscoped_route_applies_to_every_agent() {
    let p = policy(SCOPED);
    for id in ["research-bot", "other-bot", "globex-bot"] {
        assert_allowed_by(
            &decide(&p, id, "api.mistral.ai", "POST", "/v1/chat/completions"),
            "everyone",
        );
    }
}

// ---- the host index agrees with a plain linear scan -----------------------------------

struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The specification of `decide`, written as the obvious scan over every route.
fn reference_decide(p: &Policy, agent: &Agent, req: &RequestFacts<'_>) -> (Action, Option<String>) {
    for route in p.routes() {
        if !route.applies_to(agent)
            || !route.matches_host(req.host)
            || !route.ports.contains(&req.port)
        {
            continue;
        }
        let method_ok = route.methods.is_empty()
            || route
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(req.method));
        let path_ok = route.paths.is_empty() || route.paths.iter().any(|pat| pat.matches(req.path));
        if !method_ok || !path_ok {
            continue;
        }
        match route.action {
            Action::Deny => return (Action::Deny, Some(route.id.clone())),
            _ if req.plaintext && !route.allow_plaintext => continue,
            _ if req.websocket && !route.websocket => continue,
            _ => return (route.action, Some(route.id.clone())),
        }
    }
    (Action::Deny, None)
}

#[test]
fn indexed_decide_matches_a_linear_scan_over_a_large_random_policy() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    const HOSTS: &[&str] = &[
        "a.example.com",
        "b.example.com",
        "example.com",
        "x.a.example.com",
        "api.test",
        "10.0.0.1",
        "10.0.0.2",
        "[::1]",
    ];
    const PATTERNS: &[&str] = &[
        "a.example.com",
        "*.example.com",
        "example.com",
        "*.a.example.com",
        "api.test",
        "10.0.0.1",
        "::1",
        "*.test",
    ];
    const METHODS: &[&str] = &["GET", "POST"];
    const PATHS: &[&str] = &["/v1/a", "/v1/b", "/v2/x"];
    const SCOPES: &[&str] = &[
        "",
        "tenants = [\"acme\"]",
        "tenants = [\"globex\"]",
        "agents = [\"other-bot\"]",
    ];

    let mut routes = String::new();
    for i in 0..400 {
        let mut hosts = HashSet::new();
        for _ in 0..1 + rng.below(3) {
            hosts.insert(PATTERNS[rng.below(PATTERNS.len())]);
        }
        let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let action = if rng.below(4) == 0 { "deny" } else { "allow" };
        routes.push_str(&format!(
            "[[routes]]\nid = \"r{i}\"\n{}\nhosts = [{}]\naction = \"{action}\"\n",
            SCOPES[rng.below(SCOPES.len())],
            hosts.join(", ")
        ));
        if rng.below(2) == 0 {
            routes.push_str(&format!(
                "methods = [\"{}\"]\n",
                METHODS[rng.below(METHODS.len())]
            ));
        }
        if rng.below(2) == 0 {
            routes.push_str("paths = [\"/v1/*\"]\n");
        }
        if rng.below(3) == 0 {
            routes.push_str("ports = [443, 80]\n");
        }
        if rng.below(3) == 0 {
            routes.push_str("websocket = true\n");
        }
        if rng.below(3) == 0 {
            routes.push_str("allow_plaintext = true\n");
        }
        routes.push('\n');
    }
    let p = policy(&routes);

    for _ in 0..20_000 {
        let a = agent(
            &p,
            ["research-bot", "other-bot", "globex-bot"][rng.below(3)],
        );
        let h = host(HOSTS[rng.below(HOSTS.len())]);
        let req = RequestFacts {
            host: &h,
            port: [443, 80, 8443][rng.below(3)],
            method: METHODS[rng.below(METHODS.len())],
            path: PATHS[rng.below(PATHS.len())],
            plaintext: rng.below(4) == 0,
            websocket: rng.below(4) == 0,
        };
        let got = p.decide(a, &req);
        let want = reference_decide(&p, a, &req);
        assert_eq!(
            (got.action, got.route_id().map(str::to_owned)),
            want,
            "{req:?} for {}",
            a.id
        );
    }
}

// ---- sharing ----

#[test]
fn policy_and_config_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<portcullis_rules::Config>();
    assert_send_sync::<Decision>();
}

// ---- reasons --------------------------------------------------------------------------

#[test]
fn reason_codes_are_unique_snake_case_and_all_listed() {
    let mut seen = HashSet::new();
    for reason in Reason::ALL {
        let code = reason.code();
        assert!(seen.insert(code), "duplicate code {code}");
        assert!(
            code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{code}"
        );
        let message = reason.message();
        assert!(
            message.ends_with('.') && message.len() > 10,
            "{code}: {message}"
        );
    }
    assert_eq!(Reason::ALL.len(), 42);
    assert_eq!(Reason::DeniedTunnelLimit.code(), "denied_tunnel_limit");
    assert_eq!(Reason::ConnectionLimit.code(), "connection_limit");
    assert_eq!(Reason::MemoryBudget.code(), "memory_budget");
    assert_eq!(Reason::StateUnavailable.code(), "state_unavailable");
    assert_eq!(Reason::BudgetExceeded.code(), "budget_exceeded");
    assert_eq!(Reason::ApprovalTimeout.code(), "approval_timeout");
    assert_eq!(Reason::BodyUnparseable.code(), "body_unparseable");
    assert_eq!(Reason::BodyEncoded.code(), "body_encoded");
    assert_eq!(Reason::ModelNotAllowed.code(), "model_not_allowed");
    assert_eq!(Reason::OperationNotAllowed.code(), "operation_not_allowed");
    assert_eq!(Reason::ProviderNotAllowed.code(), "provider_not_allowed");
    assert_eq!(Reason::InjectionDetected.code(), "injection_detected");
    assert_eq!(Reason::SecretDetected.code(), "secret_detected");
    assert_eq!(Reason::VaultKeyLeak.code(), "vault_key_leak");
    assert_eq!(Reason::KeyUnavailable.code(), "key_unavailable");
    assert_eq!(Reason::RouteNarrow.code(), "route_narrow");
    assert_eq!(Reason::RouteWarn.code(), "route_warn");
    assert_eq!(Reason::UpstreamConnect.code(), "upstream_connect_failed");
    assert_eq!(Reason::UpstreamTls.code(), "upstream_tls_failed");
    assert_eq!(Reason::NoRoute.code(), "no_route");
}

#[test]
fn a_non_policy_denial_carries_no_route() {
    let d = Decision::deny(Reason::SsrfBlocked);
    assert_eq!(d.action, Action::Deny);
    assert_eq!(d.route_id(), None);
    assert!(!d.is_allow());
    assert_eq!(Action::Allow.as_str(), "allow");
    assert_eq!(Action::Deny.as_str(), "deny");
    assert_eq!(Action::Narrow.as_str(), "narrow");
    assert_eq!(Action::Warn.as_str(), "warn");
    assert!(d.detectors.is_empty() && d.narrowed.is_empty());
}
