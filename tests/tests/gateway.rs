//! The gateway listener (SPEC §13): SDKs that cannot trust a CA point their
//! `base_url` at `http://gateway/{provider}/…` and use their Portcullis agent
//! token as the API key. The proxy authenticates it, strips it, injects the
//! vault key and speaks verified TLS to the provider.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use portcullis_certs::{MasterKey, Secret, Vault};
use portcullis_tests::*;

const OPENAI_VAULT_KEY: &str = "sk-proj-GATEWAYvault0123456789abcdefghijXYZ";
const ANTHROPIC_VAULT_KEY: &str = "sk-ant-api03-GATEWAYvault0123456789abcdefXYZ";

const ROUTES: &str = r#"
[[routes]]
id = "acme-openai"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
inject_key = "openai"

[[routes]]
id = "acme-anthropic"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
inject_key = "anthropic"

[[listeners]]
name = "gateway"
bind = "127.0.0.1:0"
mode = "gateway"

[vault]
path = "vault.json"
"#;

async fn gateway() -> (TestProxy, Origin, std::net::SocketAddr) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let mut vault = Vault::create(&dir.path().join("vault.json"), &master).unwrap();
    for (provider, key) in [
        ("openai", OPENAI_VAULT_KEY),
        ("anthropic", ANTHROPIC_VAULT_KEY),
    ] {
        vault
            .put(
                "acme",
                provider,
                "default",
                Secret::api_key(key.as_bytes().to_vec()),
            )
            .unwrap();
    }
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), ROUTES);
    let proxy =
        TestProxy::start_with_master_key(&cfg, dir, Some(master.to_base64().as_str())).await;
    let gw = proxy.proxy.as_ref().unwrap().addr("gateway").unwrap();
    (proxy, origin, gw)
}

fn python(script: &str, home: &std::path::Path) -> String {
    // No HTTPS_PROXY and no CA: the SDK only knows the gateway's base URL.
    let out = Command::new(sdk_python())
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_with_a_base_url_and_their_agent_token_reach_the_provider_with_the_vault_key() {
    let (proxy, origin, gw) = gateway().await;
    let script = format!(
        r#"
import openai, anthropic
o = openai.OpenAI(base_url="http://{gw}/openai/v1", api_key="{TOKEN}", max_retries=0)
r = o.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
print("openai:", r.choices[0].message.content)
s = o.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[{{"role": "user", "content": "hi"}}])
print("openai stream:", "".join(c.choices[0].delta.content or "" for c in s if c.choices))
a = anthropic.Anthropic(base_url="http://{gw}/anthropic", api_key="{TOKEN}", max_retries=0)
m = a.messages.create(model="claude-3-5-haiku-latest", max_tokens=16, messages=[{{"role": "user", "content": "hi"}}])
print("anthropic:", m.content[0].text)
bad = openai.OpenAI(base_url="http://{gw}/openai/v1", api_key="not-an-agent-token", max_retries=0)
try:
    bad.chat.completions.create(model="gpt-4o-mini", messages=[])
except openai.APIStatusError as e:
    print("refused:", e.status_code, e.message)
"#
    );
    let home = proxy.dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || python(&script, &home))
        .await
        .unwrap();
    assert!(out.contains("openai: Hello from the origin"), "{out}");
    assert!(
        out.contains("openai stream: Hello from the origin"),
        "{out}"
    );
    assert!(out.contains("anthropic: Hello from the origin"), "{out}");
    assert!(
        out.contains("refused: 401") && out.contains("auth_failed"),
        "{out}"
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
    for s in &seen {
        for (name, value) in &s.headers {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(TOKEN),
                "the agent token reached the provider in {name}"
            );
        }
    }
    // The ledger knows who called and what, through the gateway listener.
    let records = ledger_records(&proxy.ledger_dir);
    assert!(records.iter().any(|r| r["kind"] == "decision"
        && r["listener"] == "gateway"
        && r["agent"] == AGENT
        && r["provider"] == "openai"
        && r["path_template"] == "/v1/chat/completions"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unknown_provider_prefix_is_refused() {
    let (proxy, origin, gw) = gateway().await;
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(
        format!("GET /nope/v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "no_route");
    assert!(origin.seen().is_empty());
    proxy.shutdown().await;
}
