//! Shared state on a real Redis (SPEC §8, §14): two proxy replicas that share
//! one `redis-server` enforce one budget and see one list of held requests;
//! with Redis gone, budgeted and approve routes fail closed while other routes
//! keep working, and `/readyz` says why; each replica writes its own ledger
//! chain, and `ledger verify` checks them all in one go.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use portcullis_tests::extra::{event_id_of, wait_for_record};
use portcullis_tests::redis::RedisServer;
use portcullis_tests::*;

/// Two in-process replicas (`a`, `b`) with one CA, one origin and one Redis;
/// their ledgers are `ledgers/a` and `ledgers/b`.
struct Replicas {
    a: Arc<TestProxy>,
    b: Arc<TestProxy>,
    origin: Origin,
    redis: RedisServer,
    ledgers: tempfile::TempDir,
    _ca: tempfile::TempDir,
    _pki: OriginPki,
}

impl Replicas {
    async fn start(routes: &str, redis: RedisServer) -> Replicas {
        let pki = OriginPki::new();
        let origin = Origin::start_tls(&pki).await;
        let ca = tempfile::tempdir().unwrap();
        let ledgers = tempfile::tempdir().unwrap();
        let mut started = Vec::new();
        // One after the other: the first creates the shared CA, the second loads it.
        for id in ["a", "b"] {
            let cfg = format!(
                "{}\n[ledger]\ndir = \"{}\"\nreplica_id = \"{id}\"\n\n{}",
                proxy_config(origin.addr, &pki, ca.path(), routes),
                ledgers.path().join(id).display(),
                redis.state_table(),
            );
            started.push(Arc::new(
                TestProxy::start(&cfg, tempfile::tempdir().unwrap()).await,
            ));
        }
        let b = started.pop().unwrap();
        let a = started.pop().unwrap();
        Replicas {
            a,
            b,
            origin,
            redis,
            ledgers,
            _ca: ca,
            _pki: pki,
        }
    }
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nconnection: close\r\n\r\n")
}

fn chat() -> String {
    let body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"the held prompt"}]}"#;
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Waits until `proxy`'s admin API lists a held request; returns the first.
async fn first_held(proxy: &TestProxy) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = proxy.admin("GET", "/v1/approvals", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if let Some(h) = r.json()["approvals"].as_array().and_then(|a| a.first()) {
            return h.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing was held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `raw` through `proxy` in the background.
fn send(proxy: &Arc<TestProxy>, raw: String) -> tokio::task::JoinHandle<RawResponse> {
    let proxy = proxy.clone();
    tokio::spawn(async move { proxy.h1_request("api.openai.com:443", &raw).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_admit_no_more_than_one_budget_allows() {
    let routes = r#"
[[routes]]
id = "acme-openai-budget"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
budget = { tokens_per_day = 1000, default_reserve = 100 }
"#;
    let r = Replicas::start(routes, RedisServer::start().await).await;
    // The origin reports no usage on this path, so each admitted request keeps
    // its 100-token reservation: exactly ten fit, whichever replica they take.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let proxy = if i % 2 == 0 { r.a.clone() } else { r.b.clone() };
        tasks.push(tokio::spawn(async move {
            proxy
                .h1_request("api.openai.com:443", &get("api.openai.com", "/v1/models"))
                .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let resp = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
        match resp.status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(resp.error_code(), "budget_exceeded");
                let after: u64 = resp.header("retry-after").unwrap().parse().unwrap();
                assert!(after > 0 && after <= 86_400, "{after}");
            }
            s => panic!("status {s}: {}", String::from_utf8_lossy(&resp.body)),
        }
    }
    assert!(ok <= 10, "{ok} admitted against a budget that fits 10");
    assert_eq!(ok, 10, "{ok} admitted, {refused} refused");
    assert_eq!(refused, 40);
    assert_eq!(r.origin.seen().len(), 10, "the origin saw more than fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_given_on_one_replica_releases_the_request_held_on_the_other() {
    let routes = r#"
[[routes]]
id = "acme-openai-approve"
action = "approve"
tenants = ["acme"]
hosts = ["api.openai.com"]
approval_timeout = "30s"
"#;
    let r = Replicas::start(routes, RedisServer::start().await).await;

    // Approve: held on a, listed and approved on b.
    let call = send(&r.a, chat());
    let h = first_held(&r.b).await;
    assert_eq!(h["tenant"], "acme");
    assert_eq!(h["host"], "api.openai.com");
    assert_eq!(h["path_template"], "/v1/chat/completions");
    assert_eq!(h["model"], "gpt-4o-mini");
    assert!(
        !h.to_string().contains("held prompt"),
        "content listed: {h}"
    );
    assert!(
        r.origin.seen().is_empty(),
        "a held request reached the origin"
    );
    let id = h["id"].as_str().unwrap().to_owned();
    let decided =
        r.b.admin_post(&format!("/v1/approvals/{id}"), r#"{"decision":"approve"}"#)
            .await;
    assert_eq!(
        decided.status,
        200,
        "{}",
        String::from_utf8_lossy(&decided.body)
    );
    let resp = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(r.origin.seen().len(), 1);
    let granted = wait_for_record(&r.a.ledger_dir, Duration::from_secs(5), |rec| {
        rec["event_id"] == id.as_str() && rec["reason"] == "approval_granted"
    })
    .await
    .unwrap();
    assert!(granted["approver"].as_str().unwrap().starts_with("admin:"));
    // Decided once: nothing is left to decide, on either replica.
    let again =
        r.a.admin_post(&format!("/v1/approvals/{id}"), r#"{"decision":"deny"}"#)
            .await;
    assert_eq!(again.status, 404);

    // Deny: held on a, denied through b.
    let call = send(&r.a, chat());
    let id = first_held(&r.b).await["id"].as_str().unwrap().to_owned();
    let decided =
        r.b.admin_post(&format!("/v1/approvals/{id}"), r#"{"decision":"deny"}"#)
            .await;
    assert_eq!(decided.status, 200);
    let resp = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "approval_denied");
    assert_eq!(r.origin.seen().len(), 1);

    // A grant given on b for a request held on a covers the agent on b too.
    let call = send(&r.a, chat());
    let id = first_held(&r.b).await["id"].as_str().unwrap().to_owned();
    let decided =
        r.b.admin_post(
            &format!("/v1/approvals/{id}"),
            r#"{"decision":"approve","grant":"for:10m"}"#,
        )
        .await;
    assert_eq!(decided.status, 200);
    let resp = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200);
    let direct = tokio::time::timeout(
        Duration::from_secs(10),
        r.b.h1_request("api.openai.com:443", &chat()),
    )
    .await
    .unwrap();
    assert_eq!(direct.status, 200, "the grant did not carry over");
    let direct_id = event_id_of(&direct.head).unwrap();
    wait_for_record(&r.b.ledger_dir, Duration::from_secs(5), |rec| {
        rec["event_id"] == direct_id.as_str() && rec["reason"] == "approval_grant_used"
    })
    .await
    .unwrap();
    assert_eq!(r.origin.seen().len(), 3);
}

async fn budgeted(p: &TestProxy) -> RawResponse {
    p.h1_request("api.openai.com:443", &get("api.openai.com", "/v1/models"))
        .await
}

async fn unbudgeted(p: &TestProxy) -> RawResponse {
    p.h1_request(
        "api.anthropic.com:443",
        &get("api.anthropic.com", "/v1/models"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_budgeted_and_approve_routes_fail_closed_until_it_returns() {
    const PASSWORD: &str = "hunter2-redis-password";
    let routes = r#"
[[routes]]
id = "acme-openai-budget"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
budget = { requests_per_minute = 1000 }

[[routes]]
id = "acme-anthropic-free"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]

[[routes]]
id = "acme-origin-approve"
action = "approve"
tenants = ["acme"]
hosts = ["origin.test"]
approval_timeout = "30s"
"#;
    let redis = RedisServer::start_with_password(Some(PASSWORD)).await;
    let mut r = Replicas::start(routes, redis).await;
    let p = r.a.clone();
    assert_eq!(budgeted(&p).await.status, 200);
    let ready = p.admin("GET", "/readyz", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
    assert_eq!(ready.json()["checks"]["state"], true);

    r.redis.kill();
    let started = tokio::time::Instant::now();
    let refused = budgeted(&p).await;
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(
        refused.header("x-portcullis-reason").as_deref(),
        Some("state_unavailable")
    );
    assert_eq!(refused.error_code(), "state_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failing closed took {:?}",
        started.elapsed()
    );
    let id = event_id_of(&refused.head).unwrap();
    wait_for_record(&p.ledger_dir, Duration::from_secs(5), |rec| {
        rec["event_id"] == id.as_str()
            && rec["kind"] == "decision"
            && rec["reason"] == "state_unavailable"
    })
    .await
    .unwrap();
    // A route that needs no shared state is not affected.
    assert_eq!(unbudgeted(&p).await.status, 200);
    // An approve route cannot hold a request it cannot list: refused, not held.
    let held = p
        .h1_request("origin.test:443", &get("origin.test", "/anything"))
        .await;
    assert_eq!(held.status, 503);
    assert_eq!(held.error_code(), "state_unavailable");
    let list = p.admin("GET", "/v1/approvals", Some(ADMIN_TOKEN)).await;
    assert_eq!(list.status, 503);
    let decide = p
        .admin_post("/v1/approvals/0123abcd", r#"{"decision":"approve"}"#)
        .await;
    assert_eq!(decide.status, 503);

    let ready = p.admin("GET", "/readyz", Some(ADMIN_TOKEN)).await;
    assert_eq!(ready.status, 503);
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.json()["checks"]["state"], false, "{body}");
    let failing = ready.json()["failing"].to_string();
    assert!(failing.contains("state: "), "{body}");
    assert!(
        failing.contains(&format!("redis://***@127.0.0.1:{}", r.redis.port)),
        "{body}"
    );
    assert!(
        !body.contains(PASSWORD),
        "the Redis password leaked: {body}"
    );

    // Back: the connection manager reconnects by itself.
    r.redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let resp = budgeted(&p).await;
        if resp.status == 200 {
            break;
        }
        assert_eq!(resp.error_code(), "state_unavailable");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = p.admin("GET", "/readyz", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_writes_its_own_chain_and_ledger_verify_checks_them_all() {
    let routes = r#"
[[routes]]
id = "acme-openai-budget"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
budget = { tokens_per_day = 100000 }
"#;
    let r = Replicas::start(routes, RedisServer::start().await).await;
    for proxy in [&r.a, &r.b, &r.a, &r.b] {
        let resp = proxy
            .h1_request("api.openai.com:443", &get("api.openai.com", "/v1/models"))
            .await;
        assert_eq!(resp.status, 200);
    }
    let Replicas { a, b, ledgers, .. } = r;
    // A clean shutdown seals each chain with a final checkpoint.
    for proxy in [a, b] {
        let Ok(proxy) = Arc::try_unwrap(proxy) else {
            panic!("a replica is still shared")
        };
        drop(proxy.shutdown().await);
    }
    let out = Command::new(portcullis_bin())
        .args(["ledger", "verify", "--strict"])
        .arg(ledgers.path())
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(shown.contains("(replica a)"), "{shown}");
    assert!(shown.contains("(replica b)"), "{shown}");
}
