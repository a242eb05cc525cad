//! Near misses: the reason names what almost matched (method, path, gates, port).

use super::*;

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
