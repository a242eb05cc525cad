//! The body: detectors and the inspection limit, and a client that stalls while held.

use super::*;

// ---------------------------------------------------------------------------
// The body: detectors and the inspection limit
// ---------------------------------------------------------------------------

/// A route whose detectors read the body, and a 1 KiB inspection limit.
async fn guarded_proxy() -> (TestProxy, Origin, OriginPki) {
    let routes = r#"
[[routes]]
id = "acme-openai-guarded"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
detectors = { injection = "block", secrets = "block" }
"#;
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), routes)
        .replace("[limits]\n", "[limits]\nmax_inspect_body = 1024\n");
    (TestProxy::start(&cfg, dir).await, origin, pki)
}

fn chat_body(text: &str) -> String {
    format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{text}"}}]}}"#)
}

fn post_with_length(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The same request, chunked in two: no length up front to refuse on.
fn post_chunked(body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detectors_cannot_error_or_time_out_they_scan_the_whole_body_and_past_max_inspect_body_it_is_refused_413(
) {
    let (proxy, origin, _pki) = guarded_proxy().await;
    // Within the limit, a phrase at the very end of the body is found.
    let body = chat_body(&format!("{}{INJECTION}", "a ".repeat(350)));
    assert!(body.len() <= 1024);
    let r = proxy
        .h1_request("api.openai.com:443", &post_chunked(&body))
        .await;
    assert_eq!(r.status, 403, "{}", r.head);
    assert_eq!(r.error_code(), "injection_detected");
    let d = decision_of(&proxy, &r).await;
    assert_eq!(d["decision"], "deny");
    assert!(
        d["detectors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap_or("").starts_with("injection:")),
        "{d}"
    );
    // Past the limit, the part that was read is not scanned and waved
    // through: the body is refused whole, as body_too_large.
    let body = chat_body(&format!("{}{INJECTION}", "a ".repeat(1000)));
    let r = proxy
        .h1_request("api.openai.com:443", &post_chunked(&body))
        .await;
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.error_code(), "body_too_large");
    assert_eq!(decision_of(&proxy, &r).await["reason"], "body_too_large");
    // A clean body passes: the detectors ran, and did not refuse everything.
    let r = proxy
        .h1_request("api.openai.com:443", &post_chunked(&chat_body("hello")))
        .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(origin.seen().len(), 1);
    assert_eq!(readyz(&proxy).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_inspect_body_on_an_inspecting_route_is_refused_413_body_too_large_over_h1_and_h2_and_recorded(
) {
    let (proxy, origin, _pki) = guarded_proxy().await;
    let big = chat_body(&"a".repeat(4000));
    // HTTP/1.1 with a Content-Length: refused before any of it leaves.
    let r = proxy
        .h1_request("api.openai.com:443", &post_with_length(&big))
        .await;
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.error_code(), "body_too_large");
    assert_eq!(r.header("x-portcullis-decision").as_deref(), Some("deny"));
    let d = decision_of(&proxy, &r).await;
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("deny"), Some("body_too_large"))
    );
    // HTTP/2: the stream is refused the same way.
    let tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"h2"])
        .await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::post("https://api.openai.com/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(big)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-portcullis-reason"], "body_too_large");
    let id = resp.headers()["x-portcullis-event-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(decision(&proxy, &id).await["reason"], "body_too_large");
    assert!(origin.seen().is_empty(), "never passed uninspected");
    assert_eq!(readyz(&proxy).await.0, 200);
}

// ---------------------------------------------------------------------------
// Approvals: a client that stalls
// ---------------------------------------------------------------------------

fn approve_routes(timeout: &str) -> String {
    format!(
        r#"
[[routes]]
id = "acme-openai-approve"
action = "approve"
tenants = ["acme"]
hosts = ["api.openai.com"]
approval_timeout = "{timeout}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_while_held_is_refused_403_approval_timeout_at_the_deadline_and_nothing_is_forwarded(
) {
    let (proxy, origin, _pki) = TestProxy::with_origin(&approve_routes("1s")).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(CHAT.as_bytes()).await.unwrap();
    // The client now neither reads nor sends nor closes. The hold still ends
    // at its deadline.
    let timed_out = wait_for_record(&proxy.ledger_dir, Duration::from_secs(15), |r| {
        r["kind"] == "decision" && r["reason"] == "approval_timeout"
    })
    .await
    .unwrap_or_else(|| panic!("the hold never ended:\n{}", ledger_dump(&proxy.ledger_dir)));
    assert_eq!(timed_out["decision"], "deny");
    let id = timed_out["event_id"].as_str().unwrap().to_owned();
    let held = ledger_records(&proxy.ledger_dir)
        .into_iter()
        .find(|r| r["event_id"] == id.as_str() && r["reason"] == "route_approve");
    assert!(held.is_some(), "the hold itself is a record");
    let list = proxy.admin("GET", "/v1/approvals", Some(ADMIN_TOKEN)).await;
    assert_eq!(list.json()["approvals"].as_array().unwrap().len(), 0);
    // The refusal waits in the socket for whenever the client reads again.
    let resp = read_response_keep_open(&mut tls).await;
    assert_eq!(resp.status, 403, "{}", resp.head);
    assert_eq!(resp.error_code(), "approval_timeout");
    assert_eq!(
        resp.header("x-portcullis-event-id").as_deref(),
        Some(id.as_str())
    );
    assert!(
        origin.seen().is_empty(),
        "a request no one approved was forwarded"
    );
    assert_eq!(readyz(&proxy).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_body_on_an_approve_route_is_cut_off_with_408_and_never_held() {
    // A body that sends nothing for 2 s is cut off before anything is held.
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(
        origin.addr,
        &pki,
        &dir.path().join("ca"),
        &approve_routes("30s"),
    )
    .replace("[limits]\n", "[limits]\nbody_progress_timeout = \"2s\"\n");
    let proxy = TestProxy::start(&cfg, dir).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: 68\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 408, "{}", resp.head);
    assert_eq!(resp.error_code(), "bad_request");
    assert!(resp.closed);
    let d = decision_of(&proxy, &resp).await;
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("deny"), Some("bad_request"))
    );
    let records = ledger_records(&proxy.ledger_dir);
    assert!(
        !records.iter().any(|r| r["reason"] == "route_approve"),
        "a request whose body never came was held:\n{}",
        ledger_dump(&proxy.ledger_dir)
    );
    assert!(origin.seen().is_empty());
}
