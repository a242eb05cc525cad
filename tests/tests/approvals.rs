//! Approvals with a real client waiting (SPEC §10): the official `openai` SDK
//! blocks on a held request while the test, acting as the approver, lists it
//! through the admin API and approves it, denies it, lets it time out, or
//! grants the route for a while.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use portcullis_tests::extra::{ledger_dump, wait_for_outcome};
use portcullis_tests::*;
use tokio::io::AsyncWriteExt;

fn routes(timeout: &str) -> String {
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

const CHAT: &str = r#"
import openai
c = openai.OpenAI(api_key="sk-dummy", max_retries=0, timeout=60)
try:
    r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "the held prompt"}])
    print("OK:", r.choices[0].message.content)
except openai.APIStatusError as e:
    print("ERR:", e.status_code, e.message)
"#;

/// Runs the SDK call in the background; the handle yields its stdout.
fn sdk_call(proxy: &TestProxy) -> std::thread::JoinHandle<String> {
    let (url, ca, home) = (
        proxy.proxy_url(AGENT, TOKEN),
        proxy.ca_pem_path.clone(),
        proxy.dir.path().to_path_buf(),
    );
    std::thread::spawn(move || {
        let out = Command::new(sdk_python())
            .arg("-c")
            .arg(CHAT)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("HTTPS_PROXY", url)
            .env("SSL_CERT_FILE", ca)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits until the admin API lists one held request; returns it.
async fn held(proxy: &TestProxy) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = proxy.admin("GET", "/v1/approvals", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, 200);
        if let Some(h) = r.json()["approvals"].as_array().and_then(|a| a.first()) {
            return h.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing was held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn decide(proxy: &TestProxy, id: &str, body: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .unwrap();
    s.write_all(
        format!(
            "POST /v1/approvals/{id} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    read_response(&mut s).await.status
}

fn reasons_for(proxy: &TestProxy, id: &str) -> Vec<String> {
    ledger_records(&proxy.ledger_dir)
        .iter()
        .filter(|r| r["kind"] == "decision" && r["event_id"] == id)
        .map(|r| r["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_request_reaches_the_origin_and_every_step_is_recorded() {
    let (proxy, origin, _pki) = TestProxy::with_origin(&routes("30s")).await;
    let call = sdk_call(&proxy);
    let h = held(&proxy).await;
    assert_eq!(h["method"], "POST");
    assert_eq!(h["host"], "api.openai.com");
    assert_eq!(h["path_template"], "/v1/chat/completions");
    assert_eq!(h["model"], "gpt-4o-mini");
    assert!(h["size"].as_u64().unwrap() > 0);
    assert!(
        !h.to_string().contains("held prompt"),
        "content in the list: {h}"
    );
    assert!(
        origin.seen().is_empty(),
        "a held request reached the origin"
    );
    let id = h["id"].as_str().unwrap().to_owned();
    assert_eq!(
        decide(&proxy, &id, r#"{"decision":"approve","grant":"once"}"#).await,
        200
    );
    let out = tokio::task::spawn_blocking(move || call.join().unwrap())
        .await
        .unwrap();
    assert!(out.contains("OK: Hello from the origin"), "{out}");
    assert_eq!(origin.seen().len(), 1);
    assert_eq!(
        reasons_for(&proxy, &id),
        ["route_approve", "approval_granted"]
    );
    // The record names which admin token approved it, by a prefix of its hash only.
    let granted = ledger_records(&proxy.ledger_dir)
        .into_iter()
        .find(|r| r["reason"] == "approval_granted")
        .unwrap();
    let who = granted["approver"].as_str().unwrap();
    assert_eq!(who, format!("admin:{}", &sha256_hex(ADMIN_TOKEN)[..12]));
    assert!(!granted.to_string().contains(ADMIN_TOKEN));
    // Deciding again: gone.
    assert_eq!(decide(&proxy, &id, r#"{"decision":"deny"}"#).await, 404);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_request_shows_approval_denied_in_the_sdk_error() {
    let (proxy, origin, _pki) = TestProxy::with_origin(&routes("30s")).await;
    let call = sdk_call(&proxy);
    let id = held(&proxy).await["id"].as_str().unwrap().to_owned();
    assert_eq!(decide(&proxy, &id, r#"{"decision":"deny"}"#).await, 200);
    let out = tokio::task::spawn_blocking(move || call.join().unwrap())
        .await
        .unwrap();
    assert!(
        out.contains("ERR: 403") && out.contains("approval_denied"),
        "{out}"
    );
    assert!(origin.seen().is_empty());
    assert_eq!(
        reasons_for(&proxy, &id),
        ["route_approve", "approval_denied"]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_times_out_with_approval_timeout() {
    let (proxy, origin, _pki) = TestProxy::with_origin(&routes("1s")).await;
    let call = sdk_call(&proxy);
    let out = tokio::task::spawn_blocking(move || call.join().unwrap())
        .await
        .unwrap();
    assert!(
        out.contains("ERR: 403") && out.contains("approval_timeout"),
        "{out}"
    );
    assert!(origin.seen().is_empty());
    let list = proxy.admin("GET", "/v1/approvals", Some(ADMIN_TOKEN)).await;
    assert_eq!(list.json()["approvals"].as_array().unwrap().len(), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lets_later_requests_through_without_a_hold() {
    let (proxy, origin, _pki) = TestProxy::with_origin(&routes("30s")).await;
    let first = sdk_call(&proxy);
    let id = held(&proxy).await["id"].as_str().unwrap().to_owned();
    assert_eq!(
        decide(&proxy, &id, r#"{"decision":"approve","grant":"for:10m"}"#).await,
        200
    );
    let out = tokio::task::spawn_blocking(move || first.join().unwrap())
        .await
        .unwrap();
    assert!(out.contains("OK:"), "{out}");
    // No approver acts now: the grant alone lets the second call through.
    let second = sdk_call(&proxy);
    let out = tokio::task::spawn_blocking(move || second.join().unwrap())
        .await
        .unwrap();
    assert!(out.contains("OK:"), "{out}");
    assert_eq!(origin.seen().len(), 2);
    let records = ledger_records(&proxy.ledger_dir);
    assert!(
        records.iter().any(|r| r["reason"] == "approval_grant_used"),
        "{}",
        ledger_dump(&proxy.ledger_dir)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_held_forwards_nothing_and_gets_an_outcome() {
    let (proxy, origin, _pki) = TestProxy::with_origin(&routes("30s")).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    tls.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let id = held(&proxy).await["id"].as_str().unwrap().to_owned();
    drop(tls);
    let o = wait_for_outcome(&proxy.ledger_dir, &id, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("no outcome:\n{}", ledger_dump(&proxy.ledger_dir)));
    assert_eq!(o["end"], "client_abort", "{o}");
    let list = proxy.admin("GET", "/v1/approvals", Some(ADMIN_TOKEN)).await;
    assert_eq!(list.json()["approvals"].as_array().unwrap().len(), 0);
    assert_eq!(decide(&proxy, &id, r#"{"decision":"approve"}"#).await, 404);
    assert!(
        origin.seen().is_empty(),
        "an abandoned request was forwarded"
    );
    proxy.shutdown().await;
}

#[test]
fn the_approvals_cli_needs_the_admin_token() {
    let out = Command::new(portcullis_bin())
        .args([
            "approvals",
            "list",
            "--admin",
            "127.0.0.1:9",
            "--token-env",
            "NO_SUCH_VAR_SET",
        ])
        .env_remove("NO_SUCH_VAR_SET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NO_SUCH_VAR_SET"));
}
