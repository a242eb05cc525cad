//! Idle client connections: a keep-alive connection with nothing in flight is
//! closed, so idle sockets cannot hold connection slots for ever. HTTP/2 has
//! `[limits] client_idle_timeout`; HTTP/1 closes at `client_header_timeout`.
//! A stream that is still open is never idle, however quiet it is.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use portcullis_tests::extra::{read_after, AfterResponse};
use portcullis_tests::*;
use tokio::io::AsyncWriteExt;

const ROUTES: &str = r#"
[[routes]]
id = "streamed"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
"#;

async fn proxy_with_limits(limits: &str) -> (TestProxy, Origin, OriginPki) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), ROUTES)
        .replace("[limits]\n", &format!("[limits]\n{limits}\n"));
    (TestProxy::start(&cfg, dir).await, origin, pki)
}

fn get(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("GET")
        .uri(format!("https://api.anthropic.com{path}"))
        .body(())
        .unwrap()
}

type H2 = (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
);

/// An h2 connection through the proxy, after one answered request.
async fn h2_after_one_request(proxy: &TestProxy) -> H2 {
    let tls = proxy
        .tunnel_tls("api.anthropic.com:443", "api.anthropic.com", &[b"h2"])
        .await;
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get("/v1/models"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    (client, conn)
}

const GET_MODELS: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\n\r\n";

#[tokio::test]
async fn an_idle_h2_tunnel_is_sent_goaway_and_closed_after_the_idle_timeout() {
    let (proxy, _origin, _pki) = proxy_with_limits("client_idle_timeout = \"1s\"").await;
    let (client, conn) = h2_after_one_request(&proxy).await;
    // The client answers the proxy's PINGs, so only the idle timeout ends this.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "the idle h2 connection was still open after 5 s"
    );
    // A GOAWAY means no new stream is accepted on it.
    let refused = match client.ready().await {
        Err(_) => true,
        Ok(mut c) => match c.send_request(get("/v1/models"), true) {
            Err(_) => true,
            Ok((resp, _)) => resp.await.is_err(),
        },
    };
    assert!(refused, "a stream was accepted after the idle close");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_idle_h2_tunnel_stays_open_under_the_default_timeout() {
    let (proxy, _origin, _pki) = proxy_with_limits("").await;
    let (client, conn) = h2_after_one_request(&proxy).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!conn.is_finished(), "closed long before the default 120 s");
    // And it still takes new streams.
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get("/v1/models"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_h2_response_streaming_longer_than_the_idle_timeout_is_not_cut() {
    let (proxy, origin, _pki) = proxy_with_limits("client_idle_timeout = \"1s\"").await;
    let (client, conn) = h2_after_one_request(&proxy).await;
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(get("/sse-paced"), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = String::new();
    for event in 0..5 {
        let want = format!("data: event-{event}");
        while !seen.contains(&want) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.data())
                .await
                .unwrap_or_else(|_| panic!("no {want} within 5 s"))
                .unwrap_or_else(|| panic!("the stream ended before {want}"))
                .unwrap_or_else(|e| panic!("the stream was cut before {want}: {e}"));
            let _ = body.flow_control().release_capacity(chunk.len());
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        if event == 1 {
            // The stream goes quiet for three idle timeouts, mid-response.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(
                !conn.is_finished(),
                "the connection closed under an open stream"
            );
            // Not even a GOAWAY: the connection still takes a new stream.
            let mut more = client.clone().ready().await.unwrap();
            let (resp, _) = more.send_request(get("/v1/models"), true).unwrap();
            assert_eq!(resp.await.unwrap().status(), 200);
        }
        origin.gate.add_permits(1);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_idle_h1_keep_alive_tunnel_is_closed_once_the_next_head_is_overdue() {
    let (proxy, _origin, _pki) = proxy_with_limits("").await; // client_header_timeout = 2s
    let mut tls = proxy
        .tunnel_tls("api.anthropic.com:443", "api.anthropic.com", &[b"http/1.1"])
        .await;
    tls.write_all(GET_MODELS).await.unwrap();
    assert_eq!(read_response_keep_open(&mut tls).await.status, 200);
    // Kept alive at first...
    assert_eq!(
        read_after(&mut tls, Duration::from_millis(1200)).await,
        AfterResponse::StillOpen
    );
    // ...then closed, with nothing recorded: an idle close is not a refusal.
    assert_eq!(
        read_after(&mut tls, Duration::from_secs(4)).await,
        AfterResponse::Closed
    );
    let refusals = ledger_records(&proxy.ledger_dir)
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["decision"] == "deny")
        .count();
    assert_eq!(refusals, 0);
    proxy.shutdown().await;
}
