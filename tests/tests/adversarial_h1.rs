//! HTTP/1 heads at and past the limits, raw bytes: every refusal has its
//! exact status, closes the connection, reaches no origin, and leaves a
//! ledger record, including the refusals hyper makes by itself (a URI it
//! cannot parse, one longer than it takes) and a head cut off by the
//! header-read timeout (slowloris).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use portcullis_tests::extra::{ledger_dump, read_after, AfterResponse};
use portcullis_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = r#"
[[routes]]
id = "openai"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
"#;

async fn proxy_with(limits: &str) -> (TestProxy, Origin, OriginPki) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), ROUTES)
        .replace("[limits]\n", &format!("[limits]\n{limits}\n"));
    (TestProxy::start(&cfg, dir).await, origin, pki)
}

/// Decision records with this reason, for this destination (`None`: none named).
fn refusals(proxy: &TestProxy, reason: &str, dest: Option<&str>) -> Vec<Value> {
    ledger_records(&proxy.ledger_dir)
        .into_iter()
        .filter(|r| {
            r["kind"] == "decision"
                && r["decision"] == "deny"
                && r["reason"] == reason
                && match dest {
                    Some(d) => r["dest_host"] == d,
                    None => r["dest_host"].is_null() || r["dest_host"] == "",
                }
        })
        .collect()
}

/// Waits (bounded) until exactly `n` such records exist, and returns them.
async fn expect_refusals(
    proxy: &TestProxy,
    reason: &str,
    dest: Option<&str>,
    n: usize,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = refusals(proxy, reason, dest);
        if found.len() >= n || tokio::time::Instant::now() >= deadline {
            assert_eq!(
                found.len(),
                n,
                "{reason} records for {dest:?}:\n{}",
                ledger_dump(&proxy.ledger_dir)
            );
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends raw bytes inside a fresh intercepted tunnel and reads one response.
async fn in_tunnel(proxy: &TestProxy, payload: &[u8]) -> RawResponse {
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(payload).await.unwrap();
    read_response(&mut tls).await
}

fn get_with_headers(n_extra: usize) -> Vec<u8> {
    let mut head = String::from("GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n");
    for i in 0..n_extra {
        head.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[tokio::test]
async fn a_head_with_one_header_more_than_hyper_takes_gets_a_recorded_431_not_hyper_s_own() {
    let (proxy, origin, _pki) = proxy_with("").await;
    // 100 header lines (Host + 99) is the most a head may carry.
    let ok = in_tunnel(&proxy, &get_with_headers(99)).await;
    assert_eq!(ok.status, 200, "{}", ok.head);
    assert_eq!(origin.seen().len(), 1);
    // One more: hyper alone would answer a bare 431 and record nothing.
    let refused = in_tunnel(&proxy, &get_with_headers(100)).await;
    assert_eq!(refused.status, 431, "{}", refused.head);
    assert_eq!(refused.error_code(), "bad_framing");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("head_too_large"),
        "{:?}",
        refused.json()
    );
    assert!(refused.closed, "the connection stayed open");
    let event = refused.header("x-portcullis-event-id").unwrap();
    let recs = expect_refusals(&proxy, "bad_framing", Some("api.openai.com"), 1).await;
    assert_eq!(recs[0]["event_id"], event.as_str());
    assert_eq!(recs[0]["agent"], AGENT);
    // And a head over max_header_bytes (64 KiB) in one header.
    let mut big = b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70_000));
    big.extend_from_slice(b"\r\n\r\n");
    let refused = in_tunnel(&proxy, &big).await;
    assert_eq!(refused.status, 431);
    assert!(refused.closed);
    expect_refusals(&proxy, "bad_framing", Some("api.openai.com"), 2).await;
    assert_eq!(origin.seen().len(), 1, "a refused head reached the origin");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_uri_longer_than_hyper_parses_gets_414_and_a_record() {
    // The guard allows heads up to 256 KiB here; hyper's URI type stops at 64 KiB.
    let (proxy, origin, _pki) = proxy_with("max_header_bytes = 262144").await;
    let path = format!("/v1/models?q={}", "a".repeat(70_000));
    let raw = format!("GET {path} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n");
    let resp = in_tunnel(&proxy, raw.as_bytes()).await;
    assert_eq!(resp.status, 414, "{}", resp.head);
    assert!(resp.closed);
    let recs = expect_refusals(&proxy, "bad_framing", Some("api.openai.com"), 1).await;
    assert_eq!(recs[0]["agent"], AGENT);
    assert!(origin.seen().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_uri_with_bytes_hyper_refuses_gets_400_and_a_record() {
    let (proxy, origin, _pki) = proxy_with("").await;
    // httparse (and so the framing guard) takes any byte above 0x20 in a
    // request target; hyper's URI type refuses invalid UTF-8 and `<`.
    let cases: &[&[u8]] = &[
        b"GET /v1/\xff\xfe HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        b"GET /v1/<script> HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
    ];
    for (i, raw) in cases.iter().enumerate() {
        let resp = in_tunnel(&proxy, raw).await;
        assert_eq!(resp.status, 400, "case {i}: {}", resp.head);
        assert!(resp.closed, "case {i}");
        expect_refusals(&proxy, "bad_framing", Some("api.openai.com"), i + 1).await;
    }
    // On the proxy connection itself: a CONNECT target with a homoglyph
    // (Cyrillic `а`, raw UTF-8) is no URI hyper takes either.
    let auth = basic(AGENT, TOKEN);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!(
            "CONNECT \u{430}pi.openai.com:443 HTTP/1.1\r\nHost: \u{430}pi.openai.com:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 400, "{}", resp.head);
    assert!(resp.closed);
    let recs = expect_refusals(&proxy, "bad_framing", None, 1).await;
    assert_eq!(recs[0]["listener"], "forward");
    assert!(origin.seen().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_slowloris_head_is_cut_off_and_recorded_but_an_idle_keep_alive_is_not() {
    // client_header_timeout is 2 s in the test config.
    let (proxy, origin, _pki) = proxy_with("").await;
    // On the proxy connection: half a CONNECT head, then nothing.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(cut.is_ok(), "the proxy kept a slowloris connection open");
    let recs = expect_refusals(&proxy, "bad_request", None, 1).await;
    assert_eq!(recs[0]["listener"], "forward");

    // Inside a tunnel: one good request, then half a head.
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response_keep_open(&mut tls).await.status, 200);
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.o")
        .await
        .unwrap();
    assert_eq!(
        read_after(&mut tls, Duration::from_secs(20)).await,
        AfterResponse::Closed,
        "the proxy kept a slowloris tunnel open"
    );
    let recs = expect_refusals(&proxy, "bad_request", Some("api.openai.com"), 1).await;
    assert_eq!(recs[0]["agent"], AGENT);

    // A keep-alive connection that just goes quiet after a complete request
    // is closed by the same timer, but nothing was refused: no record.
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response_keep_open(&mut tls).await.status, 200);
    assert_eq!(
        read_after(&mut tls, Duration::from_secs(20)).await,
        AfterResponse::Closed
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        refusals(&proxy, "bad_request", Some("api.openai.com")).len(),
        1
    );
    assert_eq!(refusals(&proxy, "bad_request", None).len(), 1);
    assert_eq!(origin.seen().len(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn framing_refusals_on_the_proxy_connection_are_recorded_with_their_listener() {
    let (proxy, _origin, _pki) = proxy_with("").await;
    let auth = basic(AGENT, TOKEN);
    let table: Vec<(String, u16)> = vec![
        (
            format!("GET http://x.test/ HTTP/1.1\r\nHost: x.test\r\nProxy-Authorization: Basic {auth}\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nX"),
            400,
        ),
        (
            format!("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: Basic {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400,
        ),
        (
            format!(
                "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{}\r\n",
                (0..100).map(|i| format!("X-{i}: y\r\n")).collect::<String>()
            ),
            431,
        ),
    ];
    for (i, (raw, status)) in table.iter().enumerate() {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let resp = read_response(&mut s).await;
        assert_eq!(resp.status, *status, "case {i}: {}", resp.head);
        assert_eq!(resp.error_code(), "bad_framing", "case {i}");
        assert!(resp.closed, "case {i}");
        let recs = expect_refusals(&proxy, "bad_framing", None, i + 1).await;
        assert!(recs.iter().all(|r| r["listener"] == "forward"));
    }
    proxy.shutdown().await;
}
