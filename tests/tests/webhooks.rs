//! Signed webhooks, end to end (SPEC §11): a deny reaches the tenant's
//! receiver on loopback as its ledger record, signed with the tenant's secret
//! from the vault, and `portcullis webhook verify` accepts exactly that body.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_certs::{MasterKey, Secret, Vault};
use portcullis_tests::*;

const SECRET: &str = "whsec-portcullis-test-0123456789abcdef";

type Got = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;

/// A receiver that records every delivery and answers 200.
async fn receiver() -> (std::net::SocketAddr, Got) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Got = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let g = g.clone();
                    async move {
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        g.lock().unwrap().push((headers, body));
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn verify_cli(header: &str, body: &[u8]) -> bool {
    let mut child = Command::new(portcullis_bin())
        .args([
            "webhook",
            "verify",
            "--secret-env",
            "HOOK_SECRET",
            "--header",
            header,
        ])
        .env("HOOK_SECRET", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(body).unwrap();
    }
    child.wait_with_output().unwrap().status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_reaches_the_tenants_receiver_signed_with_its_vault_secret() {
    let (hook, got) = receiver().await;
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate();
    let mut vault = Vault::create(&dir.path().join("vault.json"), &master).unwrap();
    vault
        .put(
            "acme",
            "webhook",
            "default",
            Secret::api_key(SECRET.as_bytes().to_vec()),
        )
        .unwrap();
    let routes = format!("{DEFAULT_ROUTES}\n[vault]\npath = \"vault.json\"\n");
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), &routes).replace(
        "[[tenants]]\nid = \"acme\"\n",
        &format!(
            "[[tenants]]\nid = \"acme\"\nwebhook = {{ url = \"http://{hook}/hook\", events = [\"deny\"] }}\n"
        ),
    );
    assert!(cfg.contains("webhook = {"));
    let proxy =
        TestProxy::start_with_master_key(&cfg, dir, Some(master.to_base64().as_str())).await;

    // An allowed request raises nothing; a denied one raises a `deny`.
    let chat =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a secret prompt"}]}"#;
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
    let denied =
        "GET /v1/nope?q=private HTTP/1.1\r\nHost: api.openai.com\r\nconnection: close\r\n\r\n";
    let r = proxy.h1_request("api.openai.com:443", denied).await;
    assert_eq!(r.status, 403);
    let event_id = r.header("x-portcullis-event-id").unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (headers, body) = loop {
        if let Some(d) = got.lock().unwrap().first().cloned() {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no webhook delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(headers["x-portcullis-event"], "deny");
    assert_eq!(headers["x-portcullis-event-id"], event_id.as_str());
    let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(record["kind"], "decision");
    assert_eq!(record["reason"], "path_not_allowed");
    assert_eq!(record["event_id"], event_id.as_str());
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("private") && !text.contains(SECRET));

    let signature = headers["x-portcullis-signature"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        signature.starts_with("t=") && signature.contains(",v1="),
        "{signature}"
    );
    assert!(
        verify_cli(&signature, &body),
        "the CLI refused a genuine webhook"
    );
    let mut tampered = body.to_vec();
    tampered[10] ^= 1;
    assert!(
        !verify_cli(&signature, &tampered),
        "the CLI accepted a tampered body"
    );
    // Only the deny was delivered (events = ["deny"]).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(got.lock().unwrap().len(), 1);
    proxy.shutdown().await;
}
