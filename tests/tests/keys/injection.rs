//! Key injection: SDKs with a dummy key reach the origin with the vault's key, a vault key
//! sent elsewhere is blocked, and a vault without its master key stops the start.

use super::*;

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
