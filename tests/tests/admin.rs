//! The admin API and metrics as an operator meets them (SPEC §11): a bearer
//! token guards everything but `/healthz` and the bare answer of `/readyz`; reload is POST-only; `/metrics`
//! parses with the real Prometheus text parser and moves with traffic.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use portcullis_tests::*;

#[tokio::test]
async fn healthz_and_bare_readiness_are_public_and_everything_else_needs_the_bearer_token() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let h = proxy.admin("GET", "/healthz", None).await;
    assert_eq!(h.status, 200);
    // A probe needs no secret, and learns only ready or not.
    let bare = proxy.admin("GET", "/readyz", None).await;
    assert_eq!(bare.status, 200);
    assert_eq!(bare.json(), serde_json::json!({"ready": true}));
    for path in ["/metrics", "/v1/policy", "/v1/ledger/head"] {
        let r = proxy.admin("GET", path, None).await;
        assert_eq!(r.status, 401, "{path} answered without a token");
        let r = proxy.admin("GET", path, Some("wrong-token")).await;
        assert_eq!(r.status, 401, "{path} answered a wrong token");
    }
    let ready = proxy.admin("GET", "/readyz", Some(ADMIN_TOKEN)).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);
    assert_eq!(
        ready.json()["checks"]["ledger"],
        true,
        "the token shows the checks"
    );
    let policy = proxy.admin("GET", "/v1/policy", Some(ADMIN_TOKEN)).await;
    assert_eq!(policy.json()["generation"], 1);
    assert_eq!(policy.json()["hash"].as_str().unwrap().len(), 64);
    proxy.shutdown().await;
}

#[tokio::test]
async fn reload_over_the_api_is_post_only_and_applies_a_new_generation() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let get = proxy.admin("GET", "/v1/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(get.status, 405);
    let same = proxy.admin("POST", "/v1/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(same.status, 200);
    assert_eq!(same.json()["result"], "unchanged");
    let path = proxy.dir.path().join("portcullis.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n# a comment changes the hash\n")).unwrap();
    let applied = proxy.admin("POST", "/v1/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        applied.status,
        200,
        "{}",
        String::from_utf8_lossy(&applied.body)
    );
    // The file watcher may have applied it first; either way the generation moved.
    let policy = proxy.admin("GET", "/v1/policy", Some(ADMIN_TOKEN)).await;
    assert!(policy.json()["generation"].as_u64().unwrap() >= 2);
    std::fs::write(&path, format!("{text}\n[[routes]]\nid = 1\n")).unwrap();
    let invalid = proxy.admin("POST", "/v1/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(invalid.status, 422);
    assert!(invalid.json()["errors"][0].as_str().unwrap().contains(':'));
    proxy.shutdown().await;
}

#[tokio::test]
async fn ledger_head_is_the_latest_signed_checkpoint() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let head = loop {
        let r = proxy
            .admin("GET", "/v1/ledger/head", Some(ADMIN_TOKEN))
            .await;
        if r.status == 200 {
            break r.json();
        }
        assert_eq!(r.status, 404);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(head["signature"].as_str().unwrap().len(), 128);
    assert_eq!(head["head_hash"].as_str().unwrap().len(), 64);
    assert_eq!(head["pubkey"].as_str().unwrap().len(), 64);
    proxy.shutdown().await;
}

/// Scrapes `/metrics` with prometheus_client's own text parser.
fn parse_metrics(text: &str) -> serde_json::Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
        out[key] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(sdk_python())
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sample(m: &serde_json::Value, key: &str) -> f64 {
    m.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_allowed_denied_and_streamed_traffic() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let scrape = || async {
        let r = proxy.admin("GET", "/metrics", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, 200);
        parse_metrics(&String::from_utf8_lossy(&r.body))
    };
    let before = scrape().await;
    let chat = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let allowed = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{chat}",
        chat.len()
    );
    assert_eq!(
        proxy
            .h1_request("api.openai.com:443", &allowed)
            .await
            .status,
        200
    );
    let denied = "GET /v1/nope HTTP/1.1\r\nHost: api.openai.com\r\nconnection: close\r\n\r\n";
    assert_eq!(
        proxy.h1_request("api.openai.com:443", denied).await.status,
        403
    );
    let streamed = r#"{"model":"claude-3-5-haiku-latest","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let raw = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{streamed}",
        streamed.len()
    );
    assert_eq!(
        proxy.h1_request("api.anthropic.com:443", &raw).await.status,
        200
    );
    // Outcomes (and so tokens) are recorded when the streams end; poll briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = scrape().await;
        let tokens = sample(
            &m,
            "portcullis_tokens_total{direction=output,model=claude-3-5-haiku-latest,provider=anthropic,tenant=acme}",
        );
        if tokens >= 5.0 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tokens never moved: {m:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let allow_key =
        "portcullis_requests_total{decision=allow,provider=openai,reason=route_allow,tenant=acme}";
    let deny_key = "portcullis_requests_total{decision=deny,provider=openai,reason=path_not_allowed,tenant=acme}";
    assert!(
        sample(&after, allow_key) >= sample(&before, allow_key) + 1.0,
        "{after:#}"
    );
    assert!(
        sample(&after, deny_key) >= sample(&before, deny_key) + 1.0,
        "{after:#}"
    );
    let openai_in =
        "portcullis_tokens_total{direction=input,model=gpt-4o-mini,provider=openai,tenant=acme}";
    assert_eq!(sample(&after, openai_in), 5.0, "the origin's prompt_tokens");
    let anthropic_in = "portcullis_tokens_total{direction=input,model=claude-3-5-haiku-latest,provider=anthropic,tenant=acme}";
    assert_eq!(sample(&after, anthropic_in), 7.0);
    assert!(
        after
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("portcullis_request_duration_seconds_count{phase=total")),
        "no total-phase histogram"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_line_per_request_with_the_ledgers_field_names() {
    use tokio::io::AsyncWriteExt;
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    let cfg_path = dir.path().join("portcullis.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let proxy = ProxyProcess::start_with_env(
        &cfg_path,
        dir.path(),
        "info",
        log.into(),
        &[("PORTCULLIS_LOG_FORMAT", "json")],
    );
    let roots = roots_from_pem(&dir.path().join("ca/ca.pem"));
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
            basic(AGENT, TOKEN)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
    let mut tls = tls_client(s, &roots, "api.openai.com", &[b"http/1.1"])
        .await
        .unwrap();
    // First an allowed request on the same connection: it gets one line too, written when
    // it ends, with its decision and its outcome together.
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    tls.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tls.write_all(body).await.unwrap();
    assert_eq!(read_response_keep_open(&mut tls).await.status, 200);
    tls.write_all(
        b"GET /v1/nope?secret=query HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_response(&mut tls).await;
    assert_eq!(r.status, 403);
    let event_id = r.header("x-portcullis-event-id").unwrap();
    assert!(proxy.terminate().success());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let decisions: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "portcullis::decision" && l["event_id"] == event_id.as_str())
        .collect();
    assert_eq!(decisions.len(), 1, "{logs}");
    let d = decisions[0];
    assert_eq!(d["dest_host"], "api.openai.com");
    assert_eq!(d["path_template"], "/v1/nope");
    assert_eq!(d["reason"], "path_not_allowed");
    assert_eq!(d["decision"], "deny");
    assert!(!logs.contains("secret=query"), "the query reached the logs");

    let allowed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["path_template"] == "/v1/chat/completions")
        .collect();
    assert_eq!(allowed.len(), 1, "one line for the allowed request: {logs}");
    let a = allowed[0];
    assert_eq!(a["target"], "portcullis::outcome");
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["model"], "gpt-4o-mini");
    assert_eq!(a["status"], 200);
    assert_eq!(a["end"], "complete");
    assert_eq!(a["agent"], AGENT);
}

#[tokio::test]
async fn readiness_fails_before_the_ledger_disk_is_full_and_the_free_space_is_a_metric() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    // No disk here has a pebibyte free: the watermark is crossed from the start.
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES).replace(
        "[limits]\n",
        "[ledger]\nmin_free_bytes = 1125899906842624\n\n[limits]\n",
    );
    let proxy = TestProxy::start(&cfg, dir).await;
    let bare = proxy.admin("GET", "/readyz", None).await;
    assert_eq!(bare.status, 503);
    assert_eq!(bare.json(), serde_json::json!({"ready": false}));
    let detail = proxy.admin("GET", "/readyz", Some(ADMIN_TOKEN)).await;
    let failing = detail.json()["failing"].to_string();
    assert!(failing.contains("ledger disk"), "{failing}");
    assert!(
        detail.json()["checks"]["ledger_disk_free_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let metrics = proxy.admin("GET", "/metrics", Some(ADMIN_TOKEN)).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let free: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_ledger_disk_free_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no disk gauge:\n{text}"));
    assert!(free > 0.0);
    // Requests are still served: the watermark warns, the ledger has room.
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    let r = {
        use tokio::io::AsyncWriteExt;
        tls.write_all(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut tls).await
    };
    assert_eq!(r.status, 200);
    proxy.shutdown().await;
}
