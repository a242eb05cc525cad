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

// ---- authenticate -------------------------------------------------------------------

#[test]
fn authenticate_accepts_the_right_token() {
    let p = policy("");
    let agent = p.authenticate("research-bot", b"password");
    assert_eq!(
        agent.map(|a| (a.id.as_str(), a.tenant.as_str())),
        Some(("research-bot", "acme"))
    );
}

#[test]
fn authenticate_refuses_a_wrong_or_empty_token() {
    let p = policy("");
    assert!(p.authenticate("research-bot", b"passwore").is_none());
    assert!(p.authenticate("research-bot", b"").is_none());
    assert!(
        p.authenticate("research-bot", PASSWORD_SHA256.as_bytes())
            .is_none(),
        "the hash is not the token"
    );
}

#[test]
fn authenticate_refuses_an_unknown_agent_even_with_a_valid_token() {
    let p = policy("");
    assert!(p.authenticate("nobody", b"password").is_none());
    assert!(p.authenticate("", b"password").is_none());
    assert!(
        p.authenticate("RESEARCH-BOT", b"password").is_none(),
        "ids are case-sensitive"
    );
}

#[test]
fn agent_debug_output_never_shows_the_token_hash() {
    let p = policy("");
    let shown = format!("{:?}", agent(&p, "research-bot"));
    assert!(!shown.contains("5e8848"), "{shown}");
    assert!(shown.contains("research-bot"), "{shown}");
}

// ---- first match wins, no match denies -----------------------------------------------

const DENY_THEN_ALLOW: &str = r#"
[[routes]]
id = "block-all"
hosts = ["api.openai.com"]
action = "deny"

[[routes]]
id = "allow-all"
hosts = ["api.openai.com"]
action = "allow"
"#;

const ALLOW_THEN_DENY: &str = r#"
[[routes]]
id = "allow-all"
hosts = ["api.openai.com"]
action = "allow"

[[routes]]
id = "block-all"
hosts = ["api.openai.com"]
action = "deny"
"#;

#[test]
fn decide_lets_a_deny_route_before_an_allow_route_win() {
    let p = policy(DENY_THEN_ALLOW);
    let d = decide(
        &p,
        "research-bot",
        "api.openai.com",
        "POST",
        "/v1/chat/completions",
    );
    assert_denied(&d, Reason::RouteDeny, Some("block-all"));
}

#[test]
fn decide_lets_an_allow_route_before_a_deny_route_win() {
    let p = policy(ALLOW_THEN_DENY);
    let d = decide(
        &p,
        "research-bot",
        "api.openai.com",
        "POST",
        "/v1/chat/completions",
    );
    assert_allowed_by(&d, "allow-all");
}

#[test]
fn precheck_refuses_the_tunnel_when_the_first_matching_route_denies_everything() {
    assert_eq!(
        precheck(
            &policy(DENY_THEN_ALLOW),
            "research-bot",
            "api.openai.com",
            443
        ),
        Err(Reason::RouteDeny)
    );
    assert_eq!(
        precheck(
            &policy(ALLOW_THEN_DENY),
            "research-bot",
            "api.openai.com",
            443
        ),
        Ok("allow-all".to_owned())
    );
}

#[test]
fn precheck_reports_the_deny_route_that_refused_the_tunnel() {
    let p = policy(DENY_THEN_ALLOW);
    let err = p
        .precheck(agent(&p, "research-bot"), &host("api.openai.com"), 443)
        .err()
        .unwrap_or_else(|| panic!("must be refused"));
    assert_denied(&err, Reason::RouteDeny, Some("block-all"));
}

#[test]
fn a_request_that_matches_no_route_is_denied_with_no_route() {
    let p = policy(ALLOW_THEN_DENY);
    let d = decide(&p, "research-bot", "example.com", "GET", "/");
    assert_denied(&d, Reason::NoRoute, None);
    assert_eq!(
        precheck(&p, "research-bot", "example.com", 443),
        Err(Reason::NoRoute)
    );
}

#[test]
fn an_empty_policy_denies_everything() {
    let p = policy("");
    assert_denied(
        &decide(&p, "research-bot", "api.openai.com", "GET", "/"),
        Reason::NoRoute,
        None,
    );
    assert_eq!(
        precheck(&p, "research-bot", "api.openai.com", 443),
        Err(Reason::NoRoute)
    );
}

#[test]
fn wildcard_and_exact_routes_for_one_host_are_tried_in_file_order() {
    let wildcard_first = policy(
        r#"
[[routes]]
id = "deny-sub"
hosts = ["*.example.com"]
action = "deny"

[[routes]]
id = "allow-a"
hosts = ["a.example.com"]
action = "allow"
"#,
    );
    assert_denied(
        &decide(&wildcard_first, "research-bot", "a.example.com", "GET", "/"),
        Reason::RouteDeny,
        Some("deny-sub"),
    );

    let exact_first = policy(
        r#"
[[routes]]
id = "allow-a"
hosts = ["a.example.com"]
action = "allow"

[[routes]]
id = "deny-sub"
hosts = ["*.example.com"]
action = "deny"
"#,
    );
    assert_allowed_by(
        &decide(&exact_first, "research-bot", "a.example.com", "GET", "/"),
        "allow-a",
    );
    assert_denied(
        &decide(&exact_first, "research-bot", "b.example.com", "GET", "/"),
        Reason::RouteDeny,
        Some("deny-sub"),
    );
    assert_denied(
        &decide(&exact_first, "research-bot", "example.com", "GET", "/"),
        Reason::NoRoute,
        None,
    );
}

// ---- near misses ----------------------------------------------------------------------

const CHAT_ONLY: &str = r#"
[[routes]]
id = "chat"
hosts = ["api.openai.com"]
methods = ["POST"]
paths = ["/v1/chat/completions", "/v1/responses/*"]
action = "allow"
"#;

#[test]
fn decide_allows_a_full_match_and_compares_methods_case_insensitively() {
    let p = policy(CHAT_ONLY);
    assert_allowed_by(
        &decide(
            &p,
            "research-bot",
            "api.openai.com",
            "POST",
            "/v1/chat/completions",
        ),
        "chat",
    );
    assert_allowed_by(
        &decide(
            &p,
            "research-bot",
            "API.OpenAI.com.",
            "post",
            "/v1/chat/completions",
        ),
        "chat",
    );
    assert_allowed_by(
        &decide(
            &p,
            "research-bot",
            "api.openai.com",
            "POST",
            "/v1/responses/abc",
        ),
        "chat",
    );
}

#[test]
fn decide_reports_method_not_allowed_when_only_the_method_differs() {
    let p = policy(CHAT_ONLY);
    assert_denied(
        &decide(
            &p,
            "research-bot",
            "api.openai.com",
            "GET",
            "/v1/chat/completions",
        ),
        Reason::MethodNotAllowed,
        None,
    );
}

#[test]
fn decide_reports_path_not_allowed_when_only_the_path_differs() {
    let p = policy(CHAT_ONLY);
    assert_denied(
        &decide(&p, "research-bot", "api.openai.com", "POST", "/v1/files"),
        Reason::PathNotAllowed,
        None,
    );
    assert_denied(
        &decide(
            &p,
            "research-bot",
            "api.openai.com",
            "POST",
            "/v1/chat/completions/",
        ),
        Reason::PathNotAllowed,
        None,
    );
    assert_denied(
        &decide(
            &p,
            "research-bot",
            "api.openai.com",
            "POST",
            "/v1/responses",
        ),
        Reason::PathNotAllowed,
        None,
    );
}

#[test]
fn a_prefix_path_never_matches_a_path_that_climbs_out_of_it() {
    let p = policy(CHAT_ONLY);
    for path in [
        "/v1/responses/../../admin",
        "/v1/responses/./x",
        "/v1/responses/%2e%2e/admin",
        "/v1/responses/%2E%2E/admin",
        "/v1/responses/..%2fadmin",
        "/v1/responses/..;/admin",
        "/v1/responses/..\\admin",
        "/v1/responses/..",
    ] {
        assert_denied(
            &decide(&p, "research-bot", "api.openai.com", "POST", path),
            Reason::PathNotAllowed,
            None,
        );
    }
}

#[test]
fn decide_prefers_method_over_path_over_gates_over_port_as_the_near_miss() {
    let p = policy(
        r#"
[[routes]]
id = "other-port"
hosts = ["api.openai.com"]
ports = [8443]
action = "allow"

[[routes]]
id = "gets"
hosts = ["api.openai.com"]
methods = ["GET"]
paths = ["/v1/models"]
action = "allow"

[[routes]]
id = "posts"
hosts = ["api.openai.com"]
methods = ["POST"]
paths = ["/v1/chat/completions"]
action = "allow"
"#,
    );
    // "gets" misses on the method, "posts" on the path: the method is reported.
    assert_denied(
        &decide(&p, "research-bot", "api.openai.com", "POST", "/v1/models/x"),
        Reason::MethodNotAllowed,
        None,
    );
    // Only "posts" has the method; it misses on the path.
    let h = host("api.openai.com");
    let d = p.decide(
        agent(&p, "research-bot"),
        &RequestFacts {
            host: &h,
            port: 443,
            method: "DELETE",
            path: "/v1/models",
            plaintext: false,
            websocket: false,
        },
    );
    assert_denied(&d, Reason::MethodNotAllowed, None);
    // Port 8443: "other-port" matches.
    let d = p.decide(
        agent(&p, "research-bot"),
        &RequestFacts {
            host: &h,
            port: 8443,
            method: "DELETE",
            path: "/x",
            plaintext: false,
            websocket: false,
        },
    );
    assert_allowed_by(&d, "other-port");
    // Port 9443: every route misses on the port.
    let d = p.decide(
        agent(&p, "research-bot"),
        &RequestFacts {
            host: &h,
            port: 9443,
            method: "GET",
            path: "/v1/models",
            plaintext: false,
            websocket: false,
        },
    );
    assert_denied(&d, Reason::PortNotAllowed, None);
}

#[test]
fn precheck_reports_port_not_allowed_when_a_route_has_the_host_but_not_the_port() {
    let p = policy(CHAT_ONLY);
    assert_eq!(
        precheck(&p, "research-bot", "api.openai.com", 443),
        Ok("chat".to_owned())
    );
    assert_eq!(
        precheck(&p, "research-bot", "api.openai.com", 8443),
        Err(Reason::PortNotAllowed)
    );
    assert_eq!(
        precheck(&p, "research-bot", "api.openai.com", 80),
        Err(Reason::PortNotAllowed)
    );
}

#[test]
fn a_port_other_than_443_needs_an_explicit_route() {
    let p = policy(
        r#"
[[routes]]
id = "alt-port"
hosts = ["api.example.com"]
ports = [8443]
action = "allow"
"#,
    );
    assert_eq!(
        precheck(&p, "research-bot", "api.example.com", 8443),
        Ok("alt-port".to_owned())
    );
    assert_eq!(
        precheck(&p, "research-bot", "api.example.com", 443),
        Err(Reason::PortNotAllowed)
    );
}

// ---- plaintext and websocket gates ----------------------------------------------------

fn facts<'a>(host: &'a Host, port: u16, plaintext: bool, websocket: bool) -> RequestFacts<'a> {
    RequestFacts {
        host,
        port,
        method: "GET",
        path: "/",
        plaintext,
        websocket,
    }
}

#[test]
fn plain_http_needs_allow_plaintext_on_the_route() {
    let p = policy(
        r#"
[[routes]]
id = "tls-only"
hosts = ["tls.example.com"]
ports = [80, 443]
action = "allow"

[[routes]]
id = "plain-ok"
hosts = ["plain.example.com"]
allow_plaintext = true
action = "allow"
"#,
    );
    let a = agent(&p, "research-bot");
    let tls = host("tls.example.com");
    let plain = host("plain.example.com");
    assert_denied(
        &p.decide(a, &facts(&tls, 80, true, false)),
        Reason::PlaintextNotAllowed,
        None,
    );
    assert_allowed_by(&p.decide(a, &facts(&tls, 443, false, false)), "tls-only");
    assert_allowed_by(&p.decide(a, &facts(&plain, 80, true, false)), "plain-ok");
    assert_eq!(
        precheck(&p, "research-bot", "plain.example.com", 80),
        Ok("plain-ok".to_owned())
    );
}

#[test]
fn websocket_upgrades_need_websocket_true_on_the_route() {
    let p = policy(
        r#"
[[routes]]
id = "no-ws"
hosts = ["api.openai.com"]
action = "allow"

[[routes]]
id = "realtime"
hosts = ["realtime.example.com"]
websocket = true
action = "allow"
"#,
    );
    let a = agent(&p, "research-bot");
    let openai = host("api.openai.com");
    let realtime = host("realtime.example.com");
    assert_denied(
        &p.decide(a, &facts(&openai, 443, false, true)),
        Reason::WebsocketNotAllowed,
        None,
    );
    assert_allowed_by(&p.decide(a, &facts(&openai, 443, false, false)), "no-ws");
    assert_allowed_by(
        &p.decide(a, &facts(&realtime, 443, false, true)),
        "realtime",
    );
}

#[test]
fn a_deny_route_cannot_be_sidestepped_with_websocket_or_plain_http() {
    let p = policy(
        r#"
[[routes]]
id = "no-files"
hosts = ["api.openai.com"]
paths = ["/v1/files/*"]
action = "deny"

[[routes]]
id = "everything-else"
hosts = ["api.openai.com"]
ports = [80, 443]
websocket = true
allow_plaintext = true
action = "allow"
"#,
    );
    let a = agent(&p, "research-bot");
    let h = host("api.openai.com");
    for (port, plaintext, websocket) in [(443, false, true), (80, true, false), (80, true, true)] {
        let req = RequestFacts {
            host: &h,
            port,
            method: "GET",
            path: "/v1/files/f1",
            plaintext,
            websocket,
        };
        assert_denied(&p.decide(a, &req), Reason::RouteDeny, Some("no-files"));
    }
    let req = RequestFacts {
        host: &h,
        port: 443,
        method: "GET",
        path: "/v1/models",
        plaintext: false,
        websocket: true,
    };
    assert_allowed_by(&p.decide(a, &req), "everything-else");
}

#[test]
fn a_conditional_deny_route_is_enforced_per_request_not_at_connect() {
    let p = policy(
        r#"
[[routes]]
id = "no-deletes"
hosts = ["api.openai.com"]
methods = ["DELETE"]
action = "deny"

[[routes]]
id = "openai"
hosts = ["api.openai.com"]
action = "allow"
"#,
    );
    assert_eq!(
        precheck(&p, "research-bot", "api.openai.com", 443),
        Ok("openai".to_owned())
    );
    assert_denied(
        &decide(
            &p,
            "research-bot",
            "api.openai.com",
            "DELETE",
            "/v1/files/x",
        ),
        Reason::RouteDeny,
        Some("no-deletes"),
    );
    assert_allowed_by(
        &decide(&p, "research-bot", "api.openai.com", "GET", "/v1/files/x"),
        "openai",
    );
}

#[test]
fn a_deny_route_that_does_not_match_gives_no_near_miss_hint() {
    let p = policy(
        r#"
[[routes]]
id = "no-deletes"
hosts = ["api.openai.com"]
methods = ["DELETE"]
action = "deny"
"#,
    );
    assert_denied(
        &decide(&p, "research-bot", "api.openai.com", "GET", "/"),
        Reason::NoRoute,
        None,
    );
    assert_eq!(
        precheck(&p, "research-bot", "api.openai.com", 8443),
        Err(Reason::NoRoute)
    );
}

#[test]
fn precheck_refuses_a_passthrough_tunnel_behind_a_conditional_deny_it_could_not_enforce() {
    let p = policy(
        r#"
[[routes]]
id = "no-admin"
hosts = ["api.example.com"]
paths = ["/admin/*"]
action = "deny"

[[routes]]
id = "splice"
hosts = ["api.example.com"]
mode = "passthrough"
action = "allow"

[[routes]]
id = "splice-other"
hosts = ["other.example.com"]
mode = "passthrough"
action = "allow"
"#,
    );
    assert_eq!(
        precheck(&p, "research-bot", "api.example.com", 443),
        Err(Reason::RouteDeny)
    );
    let route = p
        .precheck(agent(&p, "research-bot"), &host("other.example.com"), 443)
        .unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(route.mode, Mode::Passthrough);
}

// ---- IP literals ----------------------------------------------------------------------

#[test]
fn an_ip_literal_only_matches_a_route_that_names_that_ip() {
    let p = policy(
        r#"
[[routes]]
id = "by-name"
hosts = ["internal.example.com", "*.example.com"]
action = "allow"

[[routes]]
id = "by-ip"
hosts = ["10.1.2.3"]
action = "allow"
"#,
    );
    assert_eq!(
        precheck(&p, "research-bot", "10.1.2.3", 443),
        Ok("by-ip".to_owned())
    );
    assert_eq!(
        precheck(&p, "research-bot", "0x0a010203", 443),
        Ok("by-ip".to_owned())
    );
    assert_eq!(
        precheck(&p, "research-bot", "[::ffff:10.1.2.3]", 443),
        Ok("by-ip".to_owned())
    );
    assert_eq!(
        precheck(&p, "research-bot", "10.1.2.4", 443),
        Err(Reason::NoRoute)
    );
    assert_eq!(
        precheck(&p, "research-bot", "93.184.216.34", 443),
        Err(Reason::NoRoute)
    );
    assert_eq!(
        precheck(&p, "research-bot", "[2606:4700::1111]", 443),
        Err(Reason::NoRoute)
    );
    assert_allowed_by(&decide(&p, "research-bot", "10.1.2.3", "GET", "/"), "by-ip");
    assert_denied(
        &decide(&p, "research-bot", "127.0.0.1", "GET", "/"),
        Reason::NoRoute,
        None,
    );
}

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
