//! The plaintext and websocket gates, and IP literals.

use super::*;

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
