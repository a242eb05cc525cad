//! Authentication, and first match wins: a deny before an allow, no match denies.

use super::*;

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
