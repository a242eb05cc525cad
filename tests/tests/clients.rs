//! Real clients through the proxy: curl and the official `openai` and
//! `anthropic` Python SDKs (pinned in the venv the README's test command
//! creates). The SDKs trust the proxy CA through `SSL_CERT_FILE` and find the
//! proxy through `HTTPS_PROXY`, exactly as an agent host would set them.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use portcullis_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_chat_plain_streamed_and_denied() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let script = r#"
import openai
c = openai.OpenAI(api_key="sk-agent-own-key", max_retries=0)
r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
print("NONSTREAM:" + r.choices[0].message.content)
s = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
print("STREAM:" + "".join((ch.choices[0].delta.content or "") for ch in s if ch.choices))
try:
    c.embeddings.create(model="text-embedding-3-small", input="x")
    print("NOT DENIED")
except openai.PermissionDeniedError as e:
    print("DENIED:" + str(e))
"#;
    let proxy = std::sync::Arc::new(proxy);
    let p = proxy.clone();
    let (stdout, stderr, ok) = tokio::task::spawn_blocking(move || run_python(&p, script))
        .await
        .unwrap();
    assert!(ok, "python failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("NONSTREAM:Hello from the origin"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("STREAM:Hello from the origin"),
        "{stdout}\n{stderr}"
    );
    let denied = stdout
        .lines()
        .find(|l| l.starts_with("DENIED:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(denied.contains("path_not_allowed"), "{denied}");
    assert!(denied.contains("Error code: 403"), "{denied}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "only the two allowed calls reach the origin");
    assert!(seen
        .iter()
        .all(|s| s.headers["authorization"] == "Bearer sk-agent-own-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_messages_plain_and_streamed() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let script = r#"
import anthropic
c = anthropic.Anthropic(api_key="sk-ant-agent-own", max_retries=0)
m = c.messages.create(model="claude-3-5-haiku-latest", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
print("NONSTREAM:" + m.content[0].text)
with c.messages.stream(model="claude-3-5-haiku-latest", max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as s:
    print("STREAM:" + "".join(s.text_stream))
"#;
    let proxy = std::sync::Arc::new(proxy);
    let p = proxy.clone();
    let (stdout, stderr, ok) = tokio::task::spawn_blocking(move || run_python(&p, script))
        .await
        .unwrap();
    assert!(ok, "python failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("NONSTREAM:Hello from the origin"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("STREAM:Hello from the origin"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(origin.seen().len(), 2);
    assert!(origin.seen().iter().all(|s| s.path == "/v1/messages"));
}

fn curl(proxy: &TestProxy, args: &[&str], proxy_url: &str) -> (String, String, i32) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--proxy", proxy_url, "--cacert"])
        .arg(&proxy.ca_pem_path)
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("curl must be installed (the README's test command installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_h1_and_h2_allowed_denied_and_unauthenticated() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let proxy = std::sync::Arc::new(proxy);
    let p = proxy.clone();
    let results = tokio::task::spawn_blocking(move || {
        let url = p.proxy_url(AGENT, TOKEN);
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        let chat = "https://api.openai.com/v1/chat/completions";
        let h1 = curl(
            &p,
            &[
                "--http1.1",
                "-i",
                "-H",
                "content-type: application/json",
                "-d",
                body,
                chat,
            ],
            &url,
        );
        let h2 = curl(
            &p,
            &[
                "--http2",
                "-i",
                "-H",
                "content-type: application/json",
                "-d",
                body,
                chat,
            ],
            &url,
        );
        let denied = curl(&p, &["-i", "https://api.openai.com/v1/files"], &url);
        let unauth = curl(&p, &["-i", chat], &format!("http://{}", p.addr));
        (h1, h2, denied, unauth)
    })
    .await
    .unwrap();
    let (h1, h2, denied, unauth) = results;
    assert_eq!(h1.2, 0, "{h1:?}");
    assert!(
        h1.0.starts_with("HTTP/1.1 200") || h1.0.contains("\nHTTP/1.1 200"),
        "{}",
        h1.0
    );
    assert!(
        h1.0.to_ascii_lowercase().contains("x-portcullis-event-id"),
        "{}",
        h1.0
    );
    assert!(h1.0.contains("Hello from the origin"));
    assert_eq!(h2.2, 0, "{h2:?}");
    assert!(h2.0.contains("HTTP/2 200"), "{}", h2.0);
    assert!(denied.0.contains(" 403"), "{}", denied.0);
    assert!(
        denied.0.contains("\"code\":\"path_not_allowed\""),
        "{}",
        denied.0
    );
    assert_ne!(unauth.2, 0);
    assert!(
        unauth.0.contains("407") || unauth.1.contains("407"),
        "{unauth:?}"
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().any(|s| s.version == http::Version::HTTP_2),
        "upstream leg should use h2 when offered"
    );
}
