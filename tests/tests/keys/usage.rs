//! Usage metering: the outcome record, the hard cap, settled reservations, tenant
//! budgets, and Bedrock re-signing.

use super::*;

#[tokio::test]
async fn streamed_and_plain_usage_lands_in_the_outcome_record() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let plain = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let streamed = r#"{"model":"claude-3-5-haiku-latest","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for (host, path, body) in [
        ("api.openai.com", "/v1/chat/completions", plain),
        ("api.anthropic.com", "/v1/messages", streamed),
    ] {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = proxy.h1_request(&format!("{host}:443"), &raw).await;
        assert_eq!(r.status, 200, "{host}");
    }
    let want = [("api.openai.com", 5, 4), ("api.anthropic.com", 7, 5)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = ledger_records(&proxy.ledger_dir);
        let found = want.iter().all(|(host, i, o)| {
            records.iter().any(|r| {
                r["kind"] == "outcome"
                    && r["dest_host"] == *host
                    && r["tokens_in"] == *i
                    && r["tokens_out"] == *o
            })
        });
        if found {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no outcome with the tokens: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_stream_past_its_hard_cap_is_cut_and_recorded_as_budget_cut() {
    let routes = r#"
[[routes]]
id = "acme-anthropic-capped"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
budget = { tokens_per_day = 100000, hard_cap = 3 }
"#;
    let (proxy, _origin, _pki) = TestProxy::with_origin(routes).await;
    // The origin's stream reports 5 output tokens in its message_delta.
    let body = r#"{"model":"claude-3-5-haiku-latest","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let raw = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = proxy.h1_request("api.anthropic.com:443", &raw).await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !text.contains("message_stop"),
        "the stream ran past its cap: {text}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = ledger_records(&proxy.ledger_dir);
        if let Some(o) = records.iter().find(|r| r["kind"] == "outcome") {
            assert_eq!(o["end"], "budget_cut", "{o}");
            assert_eq!(o["tokens_out"], 5, "{o}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no outcome: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_reservation_is_settled_with_the_real_usage() {
    let routes = r#"
[[routes]]
id = "acme-openai-small-budget"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
budget = { tokens_per_day = 200, default_reserve = 150 }
"#;
    let (proxy, _origin, _pki) = TestProxy::with_origin(routes).await;
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // 150 reserved; the origin reports 9 used.
    assert_eq!(
        proxy.h1_request("api.openai.com:443", &raw).await.status,
        200
    );
    // Two reservations of 150 do not fit in 200, so the second request is
    // admitted only once the first was settled to its 9 tokens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = proxy.h1_request("api.openai.com:443", &raw).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.error_code(), "budget_exceeded");
        assert!(tokio::time::Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_tenant_budget_covers_every_route_of_the_tenant() {
    let routes = r#"
[[routes]]
id = "acme-openai-free"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]

[[routes]]
id = "acme-anthropic-free"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
"#;
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    // One request a minute for the whole tenant, whichever route it takes.
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), routes).replace(
        "[[tenants]]\nid = \"acme\"\n",
        "[[tenants]]\nid = \"acme\"\nbudget = { requests_per_minute = 1 }\n",
    );
    assert!(cfg.contains("requests_per_minute = 1"));
    let proxy = TestProxy::start(&cfg, dir).await;
    let get = |host: &str| {
        format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\nconnection: close\r\n\r\n")
    };
    let first = proxy
        .h1_request("api.openai.com:443", &get("api.openai.com"))
        .await;
    let second = proxy
        .h1_request("api.anthropic.com:443", &get("api.anthropic.com"))
        .await;
    assert_eq!(first.status, 200);
    // Unless the minute turned over between the two requests.
    if second.status != 200 {
        assert_eq!(second.status, 429);
        assert_eq!(second.error_code(), "rate_limited");
        assert!(String::from_utf8_lossy(&second.body).contains("tenant"));
    }
    proxy.shutdown().await;
}

/// A Bedrock request is re-signed with SigV4 from the vault's AWS slot: the
/// agent's own signature is gone, and the signature the origin receives
/// verifies for exactly the request that arrived.
#[tokio::test]
async fn bedrock_requests_are_re_signed_with_the_vaults_aws_credentials() {
    const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";
    const AKID: &str = "AKIAVAULTEXAMPLE0001";
    const SECRET: &str = "vaultSecretAccessKey/EXAMPLE0123456789abcd";
    const SESSION: &str = "vault-session-token-EXAMPLE";
    let pki = OriginPki::for_names(&[HOST]);
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let mut vault = Vault::create(&dir.path().join("vault.json"), &master).unwrap();
    vault
        .put(
            "acme",
            "bedrock",
            "default",
            Secret::aws(AKID, SECRET, Some(SESSION.to_owned())),
        )
        .unwrap();
    let routes = format!(
        r#"
[[routes]]
id = "acme-bedrock"
action = "allow"
tenants = ["acme"]
hosts = ["{HOST}"]
inject_key = "bedrock"

[vault]
path = "vault.json"
"#
    );
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), &routes).replace(
        "\"origin.test:443:",
        &format!("\"{HOST}:443:{}\", \"origin.test:443:", origin.addr),
    );
    let proxy =
        TestProxy::start_with_master_key(&cfg, dir, Some(master.to_base64().as_str())).await;
    let path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke";
    let body = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {HOST}\r\ncontent-type: application/json\r\n\
         authorization: AWS4-HMAC-SHA256 Credential=AGENTFAKE/20200101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00\r\n\
         x-amz-date: 20200101T000000Z\r\nx-amz-security-token: agent-token\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = proxy.h1_request(&format!("{HOST}:443"), &raw).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let seen = origin.seen();
    let got = seen
        .iter()
        .find(|s| s.method == "POST")
        .expect("origin saw nothing");
    let h = |n: &str| {
        got.headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let auth = h("authorization");
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={AKID}/")),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert!(!auth.contains("AGENTFAKE"));
    assert_eq!(h("x-amz-security-token"), SESSION);
    use sha2::Digest;
    assert_eq!(
        h("x-amz-content-sha256"),
        hex::encode(sha2::Sha256::digest(&got.body))
    );
    // Recompute the signature for what arrived: it must match.
    let date = h("x-amz-date");
    let num = |r: std::ops::Range<usize>| date[r].parse::<u32>().unwrap();
    let month = time::Month::try_from(num(4..6) as u8).unwrap();
    let day = time::Date::from_calendar_date(num(0..4) as i32, month, num(6..8) as u8).unwrap();
    let at = day
        .with_hms(num(9..11) as u8, num(11..13) as u8, num(13..15) as u8)
        .unwrap()
        .assume_utc();
    let payload = h("x-amz-content-sha256");
    let expected = portcullis_certs::sign(
        &portcullis_certs::SigningRequest {
            method: "POST",
            host: HOST,
            path: &got.path,
            query: None,
            headers: &[],
            payload_sha256_hex: &payload,
            sign_content_sha256: true,
        },
        AKID,
        SECRET,
        Some(SESSION),
        "us-east-1",
        "bedrock",
        at,
    );
    assert_eq!(auth, expected.authorization.as_str());
    assert!(
        got.path.contains("%3A0"),
        "the model id path reached the origin as sent: {}",
        got.path
    );
    proxy.shutdown().await;
}
