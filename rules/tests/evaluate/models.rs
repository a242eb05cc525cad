//! Models, operations and providers, and inspection that is never skipped.

use super::*;

// ---- models, operations, providers ----------------------------------------------------

const MODEL_ROUTES: &str = r#"
[[routes]]
id = "chat-small"
hosts = ["api.openai.com"]
operations = ["chat"]
models = ["gpt-4o-mini", "gpt-4.1-*"]
action = "allow"

[[routes]]
id = "embeddings"
hosts = ["api.openai.com"]
operations = ["embeddings"]
action = "allow"
"#;

#[test]
fn a_listed_model_or_a_model_under_a_listed_prefix_is_allowed() {
    let p = policy(MODEL_ROUTES);
    for model in [
        "gpt-4o-mini",
        "GPT-4o-Mini",
        "gpt-4.1-nano",
        "gpt-4.1-mini-2025-04-14",
    ] {
        let body = format!(r#"{{"model": "{model}", "messages": []}}"#);
        let e = eval(&p, &Req::chat(&body));
        assert_eq!(
            verdict(&e),
            (Action::Allow, Reason::RouteAllow, Some("chat-small")),
            "{model}"
        );
        assert_eq!(e.classification.model.as_deref(), Some(model));
    }
}

#[test]
fn a_model_outside_the_list_is_denied_with_model_not_allowed() {
    let p = policy(MODEL_ROUTES);
    for body in [
        r#"{"model": "gpt-4o", "messages": []}"#,
        r#"{"model": "gpt-4.1", "messages": []}"#,
        r#"{"messages": []}"#,
    ] {
        let e = eval(&p, &Req::chat(body));
        assert_eq!(
            verdict(&e),
            (Action::Deny, Reason::ModelNotAllowed, None),
            "{body}"
        );
    }
}

#[test]
fn an_operation_no_route_covers_is_denied_with_operation_not_allowed() {
    let p = policy(MODEL_ROUTES);
    let e = eval(
        &p,
        &Req::post(
            "api.openai.com",
            "/v1/images/generations",
            r#"{"model": "gpt-image-1"}"#,
        ),
    );
    assert_eq!(
        verdict(&e),
        (Action::Deny, Reason::OperationNotAllowed, None)
    );
    let e = eval(
        &p,
        &Req::post(
            "api.openai.com",
            "/v1/embeddings",
            r#"{"model": "anything", "input": "x"}"#,
        ),
    );
    assert_eq!(
        verdict(&e),
        (Action::Allow, Reason::RouteAllow, Some("embeddings"))
    );
}

#[test]
fn a_provider_scoped_route_only_matches_that_providers_hosts() {
    let p = policy(
        r#"
[[routes]]
id = "anthropic-only"
hosts = ["api.anthropic.com", "api.openai.com"]
providers = ["anthropic"]
action = "allow"
"#,
    );
    let ok = eval(
        &p,
        &Req::post(
            "api.anthropic.com",
            "/v1/messages",
            r#"{"model": "claude-3-5-haiku-latest"}"#,
        ),
    );
    assert_eq!(
        verdict(&ok),
        (Action::Allow, Reason::RouteAllow, Some("anthropic-only"))
    );
    let no = eval(&p, &Req::chat(r#"{"model": "gpt-4o"}"#));
    assert_eq!(
        verdict(&no),
        (Action::Deny, Reason::ProviderNotAllowed, None)
    );
    // The tunnel itself is refused: no request inside it could match.
    let host = Host::Name("api.openai.com".to_owned());
    let refused = p
        .precheck(agent(&p), &host, 443)
        .err()
        .unwrap_or_else(|| panic!("tunnel must be refused"));
    assert_eq!(refused.reason, Reason::ProviderNotAllowed);
}

#[test]
fn a_deny_route_with_models_blocks_only_those_models() {
    let p = policy(
        r#"
[[routes]]
id = "no-expensive"
hosts = ["api.openai.com"]
models = ["o1-pro*", "gpt-4.5*"]
action = "deny"

[[routes]]
id = "openai"
hosts = ["api.openai.com"]
action = "allow"
"#,
    );
    let e = eval(&p, &Req::chat(r#"{"model": "o1-pro-2025-03-19"}"#));
    assert_eq!(
        verdict(&e),
        (Action::Deny, Reason::RouteDeny, Some("no-expensive"))
    );
    let e = eval(&p, &Req::chat(r#"{"model": "gpt-4o"}"#));
    assert_eq!(
        verdict(&e),
        (Action::Allow, Reason::RouteAllow, Some("openai"))
    );
    // A conditional deny does not refuse the tunnel.
    let host = Host::Name("api.openai.com".to_owned());
    assert!(p.precheck(agent(&p), &host, 443).is_ok());
}

// ---- inspection is never skipped --------------------------------------------------------

#[test]
fn a_truncated_body_on_a_route_that_inspects_is_denied_as_too_large() {
    let p = policy(MODEL_ROUTES);
    let mut req =
        Req::chat(r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "aaaa"#);
    req.truncated = true;
    let e = eval(&p, &req);
    assert_eq!(
        verdict(&e),
        (Action::Deny, Reason::BodyTooLarge, Some("chat-small"))
    );
}

#[test]
fn a_truncated_body_cannot_slip_past_a_deny_route_with_models() {
    let p = policy(
        r#"
[[routes]]
id = "no-expensive"
hosts = ["api.openai.com"]
models = ["o1-pro*"]
action = "deny"

[[routes]]
id = "openai"
hosts = ["api.openai.com"]
action = "allow"
"#,
    );
    let mut req = Req::chat(r#"{"model": "o1-pro", "messages": [{"content": "#);
    req.truncated = true;
    let e = eval(&p, &req);
    assert_eq!(
        verdict(&e),
        (Action::Deny, Reason::BodyTooLarge, Some("no-expensive"))
    );
}

#[test]
fn a_body_that_was_not_read_is_refused_by_a_route_that_inspects() {
    let p = policy(MODEL_ROUTES);
    let mut req = Req::chat("");
    req.body = None;
    let e = eval(&p, &req);
    assert_eq!(
        verdict(&e),
        (Action::Deny, Reason::BodyTooLarge, Some("chat-small"))
    );
    // `decide` never reads the body, so it refuses the same way.
    let host = Host::Name("api.openai.com".to_owned());
    let d = p.decide(
        agent(&p),
        &RequestFacts {
            host: &host,
            port: 443,
            method: "POST",
            path: "/v1/chat/completions",
            plaintext: false,
            websocket: false,
        },
    );
    assert_eq!(d.reason, Reason::BodyTooLarge);
}

#[test]
fn a_truncated_body_on_a_route_without_inspection_is_forwarded() {
    let p = policy(
        r#"
[[routes]]
id = "files"
hosts = ["api.openai.com"]
paths = ["/v1/files"]
action = "allow"
"#,
    );
    let mut req = Req::post("api.openai.com", "/v1/files", "--boundary\r\n...");
    req.truncated = true;
    assert_eq!(
        verdict(&eval(&p, &req)),
        (Action::Allow, Reason::RouteAllow, Some("files"))
    );
}
