//! SSRF guard and strict framing, end to end through a real proxy.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SSRF_ROUTES: &str = r#"
[[routes]]
id = "ip-literals"
action = "allow"
tenants = ["acme"]
hosts = ["127.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "100.100.100.200"]

[[routes]]
id = "name-to-loopback"
action = "allow"
tenants = ["acme"]
hosts = ["localhost"]
"#;

/// CONNECT `target`, do TLS for `ip` (IP SAN, no SNI), send one request and
/// return the response.
async fn via_ip_literal(
    proxy: &TestProxy,
    target: &str,
    ip: IpAddr,
    host_header: &str,
) -> RawResponse {
    let tcp = proxy.connect(target, Some((AGENT, TOKEN))).await.unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(proxy.ca_roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::IpAddress(ip.into());
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host_header}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(&mut tls).await
}

#[tokio::test]
async fn ip_literal_destinations_in_every_spelling_are_ssrf_blocked() {
    let (proxy, origin, _pki) = TestProxy::with_origin(SSRF_ROUTES).await;
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let cases: &[(&str, IpAddr, &str)] = &[
        ("127.0.0.1:443", lo, "127.0.0.1"),
        (
            "169.254.169.254:443",
            "169.254.169.254".parse().unwrap(),
            "169.254.169.254",
        ),
        (
            "100.100.100.200:443",
            "100.100.100.200".parse().unwrap(),
            "100.100.100.200",
        ),
        (
            "[::ffff:127.0.0.1]:443",
            "::ffff:127.0.0.1".parse().unwrap(),
            "[::ffff:127.0.0.1]",
        ),
        ("2130706433:443", lo, "2130706433"),
        ("0177.0.0.1:443", lo, "0177.0.0.1"),
        ("0x7f.0.0.1:443", lo, "0x7f.0.0.1"),
        ("0x7f000001:443", lo, "0x7f000001"),
        ("127.1:443", lo, "127.1"),
    ];
    for (target, ip, host) in cases {
        let resp = via_ip_literal(&proxy, target, *ip, host).await;
        assert_eq!(resp.status, 403, "{target}: {}", resp.head);
        assert_eq!(resp.error_code(), "ssrf_blocked", "{target}");
    }
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn name_resolving_to_loopback_is_ssrf_blocked() {
    let (proxy, origin, _pki) = TestProxy::with_origin(SSRF_ROUTES).await;
    let resp = proxy
        .h1_request("localhost:443", "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(resp.status, 403, "{}", resp.head);
    assert_eq!(resp.error_code(), "ssrf_blocked");
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn ip_literal_without_a_route_naming_it_is_refused() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let err = proxy
        .connect("10.0.0.1:8080", Some((AGENT, TOKEN)))
        .await
        .unwrap_err();
    assert!(err.starts_with("HTTP/1.1 403"), "{err}");
    let resp = via_ip_literal(
        &proxy,
        "127.0.0.1:443",
        "127.0.0.1".parse().unwrap(),
        "127.0.0.1",
    )
    .await;
    assert_eq!(resp.status, 403);
}

#[tokio::test]
async fn allow_private_route_opts_in_to_a_loopback_origin() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[routes]]
id = "local-dev"
action = "allow"
tenants = ["acme"]
hosts = ["localhost"]
ports = [{port}]
allow_private = ["127.0.0.0/8", "::1"]
"#,
        port = origin.addr.port()
    );
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), &routes);
    let proxy = TestProxy::start(&cfg, dir).await;
    let target = format!("localhost:{}", origin.addr.port());
    let resp = proxy
        .h1_request(
            &target,
            &format!("GET /hi HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(origin.seen().len(), 1);
}

/// Raw smuggling payloads inside an intercepted tunnel: each gets its exact
/// status and a closed connection, and nothing reaches the origin.
#[tokio::test]
async fn smuggling_payloads_get_their_status_and_a_closed_connection() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let h = "Host: api.openai.com\r\n";
    let table: Vec<(String, u16, &str)> = vec![
        (format!("POST /echo HTTP/1.1\r\n{h}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, "cl_and_te"),
        (format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"), 400, "cl_and_te"),
        (format!("POST /echo HTTP/1.1\r\n{h}Content-Length: 2\r\nContent-Length: 2\r\n\r\nok"), 400, "duplicate_content_length"),
        (format!("POST /echo HTTP/1.1\r\n{h}Content-Length: 2\r\nContent-Length: 3\r\n\r\nok!"), 400, "duplicate_content_length"),
        (format!("POST /echo HTTP/1.1\r\n{h}Content-Length: +2\r\n\r\nok"), 400, "bad_content_length"),
        (format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 400, "unsupported_transfer_encoding"),
        (format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"), 400, "unsupported_transfer_encoding"),
        (format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400, "unsupported_transfer_encoding"),
        (format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding:\tchunked\x0b\r\n\r\n0\r\n\r\n"), 400, "malformed_head"),
        (format!("GET /echo HTTP/1.1\r\n{h}X-Folded: a\r\n b\r\n\r\n"), 400, "obs_fold"),
        ("GET /echo HTTP/1.1\nHost: api.openai.com\n\n".to_owned(), 400, "bare_lf"),
        (format!("GET /echo HTTP/1.1\r\n{h}X-A: 1\nX-B: 2\r\n\r\n"), 400, "bare_lf"),
        (format!("GET /echo HTTP/1.1\r\n{h}X-A: 1\rX-B: 2\r\n\r\n"), 400, "bare_cr"),
        (format!("GET /echo HTTP/1.1\r\n{h}X-A: a\0b\r\n\r\n"), 400, "nul_byte"),
        (format!("GET /echo HTTP/1.1\r\n{h}{h}\r\n"), 400, "multiple_host"),
        (format!("GET /echo HTTP/1.1\r\n{h}X-Big: {}\r\n\r\n", "a".repeat(70_000)), 431, "head_too_large"),
    ];
    for (payload, status, code) in &table {
        let mut tls = proxy
            .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
            .await;
        tls.write_all(payload.as_bytes()).await.unwrap();
        let resp = read_response(&mut tls).await;
        assert_eq!(resp.status, *status, "{code}: {}", resp.head);
        assert_eq!(resp.error_code(), "bad_framing", "{code}");
        let msg = resp.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(msg.contains(code), "{code}: {msg}");
        assert!(resp.closed, "{code}: connection left open");
    }
    assert!(
        origin.seen().is_empty(),
        "a smuggled request reached the origin"
    );
}

#[tokio::test]
async fn smuggling_on_the_proxy_connection_itself_is_refused() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let auth = basic(AGENT, TOKEN);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!("GET http://x.test/ HTTP/1.1\r\nHost: x.test\r\nProxy-Authorization: Basic {auth}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.error_code(), "bad_framing");
    assert!(resp.closed);
}

#[tokio::test]
async fn pipelined_request_after_a_valid_one_is_still_checked() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(
        b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\nGET /echo HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nX",
    )
    .await
    .unwrap();
    let first = read_response_keep_open(&mut tls).await;
    assert_eq!(first.status, 200);
    let second = read_response(&mut tls).await;
    assert_eq!(second.status, 400);
    assert!(second.closed);
    assert_eq!(origin.seen().len(), 1);
}
