//! Keys and identity under attack: a vault key leaving in encodings beyond
//! the plain ones, an upstream that echoes the injected key back in a header
//! or a body, a model named twice in the query, and a token revoked while
//! an h2 tunnel is open.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_certs::{MasterKey, Secret, Vault};
use portcullis_tests::extra::{ledger_dump, wait_for_record};
use portcullis_tests::*;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const OPENAI_VAULT_KEY: &str = "sk-proj-VAULTvaultVAULTvault0123456789abcdef~XYZ?";
const ANTHROPIC_VAULT_KEY: &str = "sk-ant-api03-VAULTvaultVAULT0123456789abcdefXYZ";

const KEYED_ROUTES: &str = r#"
[[routes]]
id = "openai-keyed"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
inject_key = "openai"

[[routes]]
id = "anthropic-keyed"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
inject_key = "anthropic"

[vault]
path = "vault.json"
"#;

fn make_vault(dir: &std::path::Path) -> String {
    let master = MasterKey::generate();
    let mut vault = Vault::create(&dir.join("vault.json"), &master).unwrap();
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
    master.to_base64().as_str().to_owned()
}

async fn keyed(origin_addr: std::net::SocketAddr, pki: &OriginPki) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    let master = make_vault(dir.path());
    let cfg = proxy_config(origin_addr, pki, &dir.path().join("ca"), KEYED_ROUTES);
    TestProxy::start_with_master_key(&cfg, dir, Some(&master)).await
}

fn post(host: &str, path: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn percent_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Percent-encoding as a URL library writes it: unreserved characters kept.
fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn json_escape_all(s: &str) -> String {
    s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
}

#[tokio::test]
async fn a_vault_key_leaving_for_another_host_is_refused_in_every_encoding() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let proxy = keyed(origin.addr, &pki).await;
    let key = OPENAI_VAULT_KEY;
    let b = base64::engine::general_purpose::STANDARD;
    let b_nopad = base64::engine::general_purpose::STANDARD_NO_PAD;
    let b_url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // The key has `~` and `?`, so base64 and base64url really differ.
    assert_ne!(b_nopad.encode(key), b_url.encode(key));
    let chat = |content: &str| {
        format!(
            r#"{{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[{{"role":"user","content":"{content}"}}]}}"#
        )
    };
    // (where, encoded key): the openai key on its way to the anthropic host.
    let body_cases: Vec<(&str, String)> = vec![
        ("raw", key.to_owned()),
        ("base64", b.encode(key)),
        ("base64 without padding", b_nopad.encode(key)),
        ("base64url", b_url.encode(key)),
        (
            "base64 of `user:key` (shifted)",
            b.encode(format!("u:{key}")),
        ),
        (
            "base64 of `ab:key` (shifted)",
            b.encode(format!("ab:{key}")),
        ),
        ("hex", hex::encode(key)),
        ("HEX", hex::encode_upper(key)),
        ("url-encoded", url_encoded(key)),
        ("percent-encoded, every byte", percent_all(key)),
        (
            "percent-encoded, every byte, lower case",
            percent_all(key).to_lowercase(),
        ),
        ("JSON \\u-escaped, every char", json_escape_all(key)),
    ];
    let mut missed = Vec::new();
    for (what, enc) in &body_cases {
        let resp = proxy
            .h1_request(
                "api.anthropic.com:443",
                &post("api.anthropic.com", "/v1/messages", "", &chat(enc)),
            )
            .await;
        if resp.status != 403 || resp.error_code() != "secret_detected" {
            missed.push(format!("body, {what}: {}", resp.status));
        }
    }
    let header_cases: Vec<(&str, String)> = vec![
        ("raw", key.to_owned()),
        ("base64", b.encode(key)),
        ("base64url", b_url.encode(key)),
        ("hex", hex::encode(key)),
        ("url-encoded", url_encoded(key)),
        ("percent-encoded, every byte", percent_all(key)),
    ];
    for (what, enc) in &header_cases {
        let resp = proxy
            .h1_request(
                "api.anthropic.com:443",
                &post(
                    "api.anthropic.com",
                    "/v1/messages",
                    &format!("x-note: {enc}\r\n"),
                    &chat("hi"),
                ),
            )
            .await;
        if resp.status != 403 || resp.error_code() != "secret_detected" {
            missed.push(format!("header, {what}: {}", resp.status));
        }
    }
    assert!(missed.is_empty(), "missed:\n{}", missed.join("\n"));
    // In the query, url-encoded byte by byte.
    let resp = proxy
        .h1_request(
            "api.anthropic.com:443",
            &post(
                "api.anthropic.com",
                &format!("/v1/messages?note={}", percent_all(key)),
                "",
                &chat("hi"),
            ),
        )
        .await;
    assert_eq!(resp.error_code(), "secret_detected", "query");
    assert!(
        origin.seen().iter().all(|s| s.path != "/v1/messages"),
        "a leaking request reached the origin"
    );
    let refusals = ledger_records(&proxy.ledger_dir)
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["reason"] == "secret_detected")
        .count();
    assert_eq!(refusals, body_cases.len() + header_cases.len() + 1);
    for r in ledger_records(&proxy.ledger_dir) {
        assert!(!r.to_string().contains("VAULTvault"), "{r}");
    }
    proxy.shutdown().await;
}

/// A TLS origin (h2 and http/1.1) that sends back the credential it received:
/// in response headers, or in a JSON error body with a length.
struct EchoOrigin {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_origin(pki: &OriginPki) -> EchoOrigin {
    let tls = pki.server_config(&[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(stream) = TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let cred = req
                        .headers()
                        .get("authorization")
                        .or_else(|| req.headers().get("x-api-key"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let bare = cred.strip_prefix("Bearer ").unwrap_or(&cred).to_owned();
                    let resp = match req.uri().path() {
                        "/echo/header" => hyper::Response::builder()
                            .header("content-type", "application/json")
                            .header("x-echo", cred.as_str())
                            .header("www-authenticate", format!("Bearer error=\"{bare}\""))
                            .body(Full::new(Bytes::from_static(b"{}"))),
                        "/echo/json" => hyper::Response::builder()
                            .status(401)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(
                                serde_json::json!({"error": {"message": format!("bad key {bare}")}}).to_string(),
                            ))),
                        _ => hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, std::convert::Infallible>(resp.unwrap())
                });
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                }
            });
        }
    });
    EchoOrigin { addr, task }
}

#[tokio::test]
async fn an_upstream_echoing_the_injected_key_never_hands_it_to_the_agent() {
    let pki = OriginPki::new();
    let origin = echo_origin(&pki).await;
    let proxy = keyed(origin.addr, &pki).await;
    // Not covered: a binary (`application/octet-stream`) or compressed body
    // passes unredacted by design, so an upstream echoing the key there is
    // not caught (reported as a known gap).
    for path in ["/echo/header", "/echo/json"] {
        for (host, key) in [
            ("api.openai.com", OPENAI_VAULT_KEY),
            ("api.anthropic.com", ANTHROPIC_VAULT_KEY),
        ] {
            let raw = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sk-dummy\r\nx-api-key: sk-dummy\r\nConnection: close\r\n\r\n"
            );
            let resp = proxy.h1_request(&format!("{host}:443"), &raw).await;
            let want = if path == "/echo/json" { 401 } else { 200 };
            assert_eq!(resp.status, want, "{path} {host}: {}", resp.head);
            let all = format!("{}{}", resp.head, String::from_utf8_lossy(&resp.body));
            assert!(
                !all.contains(&key[10..]),
                "{path} via {host}: the injected key came back to the agent:\n{all}"
            );
        }
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_model_named_twice_in_the_query_is_refused_400_and_recorded() {
    let routes = r#"
[[routes]]
id = "one-model"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
models = ["gpt-4o-mini"]
"#;
    let (proxy, origin, _pki) = TestProxy::with_origin(routes).await;
    let get = |q: &str| {
        format!(
            "GET /v1/realtime?{q} HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n"
        )
    };
    let ok = proxy
        .h1_request("api.openai.com:443", &get("model=gpt-4o-mini"))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.head);
    let other = proxy
        .h1_request("api.openai.com:443", &get("model=gpt-4o"))
        .await;
    assert_eq!(other.status, 403);
    assert_eq!(other.error_code(), "model_not_allowed");
    let before = origin.seen().len();
    for q in [
        "model=gpt-4o-mini&model=gpt-4o",
        "model=gpt-4o-mini&m%6Fdel=gpt-4o",
        "model=gpt-4o-mini&x=1&model=gpt-4o-mini",
    ] {
        let resp = proxy.h1_request("api.openai.com:443", &get(q)).await;
        assert_eq!(resp.status, 400, "{q}: {}", resp.head);
        assert_eq!(resp.error_code(), "bad_request", "{q}");
        let event = resp.header("x-portcullis-event-id").unwrap();
        let rec = wait_for_record(&proxy.ledger_dir, Duration::from_secs(5), |r| {
            r["kind"] == "decision" && r["event_id"] == event.as_str()
        })
        .await
        .unwrap_or_else(|| panic!("{q}: no record\n{}", ledger_dump(&proxy.ledger_dir)));
        assert_eq!(rec["reason"], "bad_request", "{q}");
    }
    // Also when the body names the model the route allows.
    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let resp = proxy
        .h1_request(
            "api.openai.com:443",
            &post(
                "api.openai.com",
                "/v1/chat/completions?model=a&model=b",
                "",
                body,
            ),
        )
        .await;
    assert_eq!(resp.status, 400, "{}", resp.head);
    assert_eq!(
        origin.seen().len(),
        before,
        "an ambiguous request reached the origin"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_removed_by_an_admin_reload_is_refused_on_its_open_h2_tunnel_and_recorded() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let tls = proxy
        .tunnel_tls("api.anthropic.com:443", "api.anthropic.com", &[b"h2"])
        .await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = || {
        hyper::Request::builder()
            .uri("https://api.anthropic.com/v1/models")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let before = send.send_request(request()).await.unwrap();
    assert_eq!(before.status(), 200);
    // Drop the agent from the config file and reload it through the admin API.
    let path = proxy.dir.path().join("portcullis.toml");
    let old = std::fs::read_to_string(&path).unwrap();
    let block = format!(
        "[[agents]]\nid = \"{AGENT}\"\ntenant = \"acme\"\ntoken_sha256 = \"{}\"\n",
        sha256_hex(TOKEN)
    );
    assert!(old.contains(&block));
    // Routes naming only the tenant stay valid without the agent.
    std::fs::write(&path, old.replace(&block, "")).unwrap();
    let generation = proxy.proxy.as_ref().unwrap().policy_generation();
    let reload = proxy.admin("POST", "/v1/reload", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        reload.status,
        200,
        "{}",
        String::from_utf8_lossy(&reload.body)
    );
    assert!(proxy.proxy.as_ref().unwrap().policy_generation() > generation);
    // The next request on the same h2 connection is refused.
    let after = send.send_request(request()).await.unwrap();
    assert_eq!(after.status(), 407);
    let event = after.headers()["x-portcullis-event-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = after.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "auth_failed");
    let rec = wait_for_record(&proxy.ledger_dir, Duration::from_secs(5), |r| {
        r["kind"] == "decision" && r["event_id"] == event.as_str()
    })
    .await
    .unwrap_or_else(|| panic!("no record\n{}", ledger_dump(&proxy.ledger_dir)));
    assert_eq!(rec["reason"], "auth_failed");
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["agent"], AGENT, "the record names whose tunnel it was");
    assert_eq!(rec["dest_host"], "api.anthropic.com");
    assert_eq!(
        origin.seen().len(),
        1,
        "the refused request reached the origin"
    );
    // And a new CONNECT with the old token is refused outright.
    let err = proxy
        .connect("api.anthropic.com:443", Some((AGENT, TOKEN)))
        .await
        .unwrap_err();
    assert!(err.starts_with("HTTP/1.1 407"), "{err}");
    proxy.shutdown().await;
}
