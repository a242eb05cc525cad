//! Budgets and rate limits, refused up front.

use super::*;

#[tokio::test]
async fn requests_past_a_budget_that_fits_ten_are_refused_up_front_with_retry_after() {
    let routes = r#"
[[routes]]
id = "acme-openai-budget"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
budget = { tokens_per_day = 1000, default_reserve = 100 }
"#;
    let (proxy, _origin, _pki) = TestProxy::with_origin(routes).await;
    // The origin answers this path with no usage, so each admitted request
    // keeps its 100-token reservation: exactly ten fit.
    let raw =
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nconnection: close\r\n\r\n".to_owned();
    let mut tasks = Vec::new();
    let proxy = std::sync::Arc::new(proxy);
    for _ in 0..50 {
        let (p, raw) = (proxy.clone(), raw.clone());
        tasks.push(tokio::spawn(async move {
            p.h1_request("api.openai.com:443", &raw).await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(r.error_code(), "budget_exceeded");
                let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!(after > 0 && after <= 86_400, "{after}");
            }
            s => panic!(
                "unexpected status {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    assert_eq!(ok, 10, "{ok} admitted, {refused} refused");
    assert_eq!(refused, 40);
}

#[tokio::test]
async fn a_request_rate_limit_refuses_with_429_rate_limited() {
    let routes = r#"
[[routes]]
id = "acme-openai-rpm"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
budget = { requests_per_minute = 2 }
"#;
    let (proxy, _origin, _pki) = TestProxy::with_origin(routes).await;
    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(proxy.h1_request("api.openai.com:443", &raw).await);
    }
    assert_eq!(statuses[0].status, 200);
    assert_eq!(statuses[1].status, 200);
    // Unless the minute turned over between the requests.
    if statuses[2].status == 429 {
        assert_eq!(statuses[2].error_code(), "rate_limited");
        let after: u64 = statuses[2].header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&after));
    } else {
        assert_eq!(statuses[2].status, 200);
    }
    proxy.shutdown().await;
}
