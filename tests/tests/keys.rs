//! Key injection and budgets, end to end (SPEC §8, §9): the agent holds a
//! dummy key, the origin receives the vault's key; a vault key never leaves
//! for another host and never reaches a log, the ledger or an error body; the
//! request that would cross a budget is refused before it leaves.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_certs::{MasterKey, Secret, Vault};
use portcullis_tests::*;

const OPENAI_VAULT_KEY: &str = "sk-proj-VAULTvaultVAULTvault0123456789abcdefXYZ";
const ANTHROPIC_VAULT_KEY: &str = "sk-ant-api03-VAULTvaultVAULT0123456789abcdefXYZ";
const DUMMY: &str = "sk-agent-dummy-key-not-a-real-one";

const KEYED_ROUTES: &str = r#"
[[routes]]
id = "acme-openai-keyed"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
inject_key = "openai"

[[routes]]
id = "acme-anthropic-keyed"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
inject_key = "anthropic"

[vault]
path = "vault.json"
"#;

/// A vault in `dir` with the tenant's two provider keys; returns its master key.
fn make_vault(dir: &std::path::Path) -> String {
    let master = MasterKey::generate();
    let mut vault = Vault::create(&dir.join("vault.json"), &master).unwrap();
    vault
        .put(
            "acme",
            "openai",
            "default",
            Secret::api_key(OPENAI_VAULT_KEY.as_bytes().to_vec()),
        )
        .unwrap();
    vault
        .put(
            "acme",
            "anthropic",
            "default",
            Secret::api_key(ANTHROPIC_VAULT_KEY.as_bytes().to_vec()),
        )
        .unwrap();
    master.to_base64().as_str().to_owned()
}

async fn keyed_proxy(routes: &str) -> (TestProxy, Origin, String) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let master = make_vault(dir.path());
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), routes);
    let proxy = TestProxy::start_with_master_key(&cfg, dir, Some(&master)).await;
    (proxy, origin, master)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_with_a_dummy_key_reach_the_origin_with_the_vault_key() {
    let (proxy, origin, _) = keyed_proxy(KEYED_ROUTES).await;
    let script = format!(
        r#"
import openai, anthropic
o = openai.OpenAI(api_key="{DUMMY}", max_retries=0)
r = o.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
print("openai:", r.choices[0].message.content)
a = anthropic.Anthropic(api_key="{DUMMY}", max_retries=0)
m = a.messages.create(model="claude-3-5-haiku-latest", max_tokens=16, messages=[{{"role": "user", "content": "hi"}}])
print("anthropic:", m.content[0].text)
"#
    );
    let p = proxy.proxy_url(AGENT, TOKEN);
    let _ = p;
    let (stdout, stderr, ok) = {
        let proxy = &proxy;
        tokio::task::block_in_place(|| run_python(proxy, &script))
    };
    assert!(ok, "python failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("openai: Hello from the origin"), "{stdout}");
    assert!(
        stdout.contains("anthropic: Hello from the origin"),
        "{stdout}"
    );

    let seen = origin.seen();
    let chat = seen
        .iter()
        .find(|s| s.path == "/v1/chat/completions")
        .unwrap();
    assert_eq!(
        chat.headers["authorization"],
        format!("Bearer {OPENAI_VAULT_KEY}").as_str()
    );
    let msgs = seen.iter().find(|s| s.path == "/v1/messages").unwrap();
    assert_eq!(msgs.headers["x-api-key"], ANTHROPIC_VAULT_KEY);
    assert!(!msgs.headers.contains_key("authorization"));
    for s in &seen {
        for (name, value) in &s.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(DUMMY),
                "the agent's dummy key reached the origin in {name}"
            );
        }
    }

    // The ledger names the slot and version, never the key.
    let records = ledger_records(&proxy.ledger_dir);
    let keyed: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "decision" && r["key_id"].is_string())
        .collect();
    assert!(
        keyed
            .iter()
            .any(|r| r["key_id"].as_str().unwrap().starts_with("openai/")),
        "{keyed:?}"
    );
    let text =
        std::fs::read_to_string(proxy.ledger_dir.join("checkpoints.log")).unwrap_or_default();
    for r in &records {
        let line = r.to_string();
        assert!(!line.contains(OPENAI_VAULT_KEY) && !line.contains(ANTHROPIC_VAULT_KEY));
    }
    assert!(!text.contains(OPENAI_VAULT_KEY));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_vault_key_sent_to_another_host_is_blocked_in_every_encoding() {
    use base64::Engine;
    let (proxy, origin, _) = keyed_proxy(KEYED_ROUTES).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(OPENAI_VAULT_KEY);
    let hex = hex::encode(OPENAI_VAULT_KEY);
    let cases: Vec<(String, String)> = vec![
        // The openai key, in the body, to the anthropic host.
        (
            "/v1/messages".into(),
            format!(
                r#"{{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[{{"role":"user","content":"{OPENAI_VAULT_KEY}"}}]}}"#
            ),
        ),
        (
            "/v1/messages".into(),
            format!(
                r#"{{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[{{"role":"user","content":"{b64}"}}]}}"#
            ),
        ),
        (
            "/v1/messages".into(),
            format!(
                r#"{{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[{{"role":"user","content":"{hex}"}}]}}"#
            ),
        ),
        (
            format!("/v1/messages?note={}", OPENAI_VAULT_KEY.replace('-', "%2D")),
            r#"{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[]}"#.into(),
        ),
    ];
    for (path, body) in cases {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: api.anthropic.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let resp = proxy.h1_request("api.anthropic.com:443", &raw).await;
        assert_eq!(
            resp.status,
            403,
            "{path} {body}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        assert_eq!(resp.error_code(), "secret_detected", "{path}");
        assert!(!String::from_utf8_lossy(&resp.body).contains(OPENAI_VAULT_KEY));
    }
    // In a header.
    let raw = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nx-note: {b64}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    let resp = proxy.h1_request("api.anthropic.com:443", &raw).await;
    assert_eq!(resp.error_code(), "secret_detected");
    assert!(
        origin.seen().iter().all(|s| s.path != "/v1/messages"),
        "a leaking request reached the origin"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_master_key_stops_the_proxy_from_starting() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    make_vault(dir.path());
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), KEYED_ROUTES);
    let config = portcullis_rules::parse_config("t.toml", &cfg).unwrap();
    let missing = portcullis::start(portcullis::Settings {
        config: config.clone(),
        base_dir: dir.path().to_path_buf(),
        config_path: None,
        master_key: None,
    })
    .await;
    let Err(e) = missing else {
        panic!("started without a master key")
    };
    assert!(e.to_string().contains("PORTCULLIS_MASTER_KEY"), "{e}");
    let wrong = MasterKey::generate().to_base64().as_str().to_owned();
    let started = portcullis::start(portcullis::Settings {
        config,
        base_dir: dir.path().to_path_buf(),
        config_path: None,
        master_key: Some(zeroize::Zeroizing::new(wrong)),
    })
    .await;
    let Err(e) = started else {
        panic!("started with the wrong master key")
    };
    assert!(e.to_string().to_lowercase().contains("master key"), "{e}");
}

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

#[test]
fn vault_cli_reads_the_key_from_stdin_and_lists_only_its_last_four() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.json");
    let master = Command::new(portcullis_bin())
        .args(["vault", "gen-master-key"])
        .output()
        .unwrap();
    assert!(master.status.success());
    let master = String::from_utf8(master.stdout).unwrap().trim().to_owned();
    let mut put = Command::new(portcullis_bin())
        .args(["vault", "put", "acme", "openai", "--file"])
        .arg(&file)
        .env("PORTCULLIS_MASTER_KEY", &master)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        put.stdin
            .take()
            .unwrap()
            .write_all(OPENAI_VAULT_KEY.as_bytes())
            .unwrap();
    }
    let out = put.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = Command::new(portcullis_bin())
        .args(["vault", "list", "--file"])
        .arg(&file)
        .env("PORTCULLIS_MASTER_KEY", &master)
        .output()
        .unwrap();
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("…XYZ") || text.contains(&OPENAI_VAULT_KEY[OPENAI_VAULT_KEY.len() - 4..]),
        "{text}"
    );
    assert!(!text.contains(&OPENAI_VAULT_KEY[..12]), "{text}");
    let on_disk = std::fs::read_to_string(&file).unwrap();
    assert!(!on_disk.contains(OPENAI_VAULT_KEY));
    // Rotation: the new master key opens the vault, the old one no longer does.
    let new_master = Command::new(portcullis_bin())
        .args(["vault", "gen-master-key"])
        .output()
        .unwrap();
    let new_master = String::from_utf8(new_master.stdout)
        .unwrap()
        .trim()
        .to_owned();
    let rotate = Command::new(portcullis_bin())
        .args(["vault", "rotate-master", "--file"])
        .arg(&file)
        .env("PORTCULLIS_MASTER_KEY", &master)
        .env("PORTCULLIS_NEW_MASTER_KEY", &new_master)
        .output()
        .unwrap();
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let list_with = |key: &str| {
        Command::new(portcullis_bin())
            .args(["vault", "list", "--file"])
            .arg(&file)
            .env("PORTCULLIS_MASTER_KEY", key)
            .output()
            .unwrap()
    };
    assert!(list_with(&new_master).status.success());
    let old = list_with(&master);
    assert!(!old.status.success());
    assert!(!String::from_utf8_lossy(&old.stderr).contains(&master));
    // Without the master key: a clear error, exit non-zero.
    let no_key = Command::new(portcullis_bin())
        .args(["vault", "list", "--file"])
        .arg(&file)
        .env_remove("PORTCULLIS_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("PORTCULLIS_MASTER_KEY"));
}

/// The vault key never reaches the logs (even at trace level), the ledger,
/// an error body, or the agent: an upstream that echoes it back, split across
/// stream chunks, has it redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_key_never_reaches_logs_ledger_errors_or_the_agent() {
    use tokio::io::AsyncWriteExt;
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let master = make_vault(dir.path());
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), KEYED_ROUTES);
    let cfg_path = dir.path().join("portcullis.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let proxy = ProxyProcess::start_with_env(
        &cfg_path,
        dir.path(),
        "trace",
        log.into(),
        &[("PORTCULLIS_MASTER_KEY", &master)],
    );
    let roots = roots_from_pem(&dir.path().join("ca/ca.pem"));
    let tunnel = |host: &'static str| {
        let roots = roots.clone();
        let addr = proxy.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!(
                    "CONNECT {host}:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
                    basic(AGENT, TOKEN)
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
            tls_client(s, &roots, host, &[b"http/1.1"]).await.unwrap()
        }
    };
    // The origin echoes the injected key back, split across two chunks.
    let mut tls = tunnel("api.openai.com").await;
    tls.write_all(
        format!("GET /v1/echo-key HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer {DUMMY}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let echoed = read_response(&mut tls).await;
    let echoed_body = String::from_utf8_lossy(&echoed.body).into_owned();
    assert_eq!(echoed.status, 200);
    assert!(echoed_body.contains("[REDACTED]"), "{echoed_body}");
    assert!(
        !echoed_body.contains(&OPENAI_VAULT_KEY[8..]),
        "{echoed_body}"
    );
    let seen = origin.seen();
    assert_eq!(
        seen.last().unwrap().headers["authorization"],
        format!("Bearer {OPENAI_VAULT_KEY}").as_str(),
        "the origin got the vault key (so the echo really carried it)"
    );
    // A leak attempt: the openai key sent to the anthropic host.
    let mut tls = tunnel("api.anthropic.com").await;
    let body = format!(
        r#"{{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[{{"role":"user","content":"{OPENAI_VAULT_KEY}"}}]}}"#
    );
    tls.write_all(
        format!("POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
    )
    .await
    .unwrap();
    let refused = read_response(&mut tls).await;
    assert_eq!(refused.status, 403);
    let refused_body = String::from_utf8_lossy(&refused.body).into_owned();
    assert!(proxy.terminate().success());

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("portcullis::decision"),
        "the trace log was captured"
    );
    let ledger: String = std::fs::read_dir(dir.path().join(".portcullis/ledger"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    let vault_file = std::fs::read_to_string(dir.path().join("vault.json")).unwrap();
    for secret in [OPENAI_VAULT_KEY, ANTHROPIC_VAULT_KEY, &master] {
        assert!(!logs.contains(secret), "the logs contain a vault secret");
        assert!(
            !ledger.contains(secret),
            "the ledger contains a vault secret"
        );
        assert!(
            !refused_body.contains(secret),
            "an error body contains a vault secret"
        );
        assert!(
            !echoed_body.contains(secret),
            "the agent saw a vault secret"
        );
        assert!(
            !vault_file.contains(secret),
            "the vault file holds a secret in clear"
        );
    }
}

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
