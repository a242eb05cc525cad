//! Forward-proxy end-to-end tests: real TLS origins on loopback, the proxy
//! in process, raw and hyper clients.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHAT: &str = "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-agent-own\r\nContent-Length: 43\r\n\r\n{\"model\":\"gpt-4o-mini\",\"messages\":[],\"n\":1}";

#[tokio::test]
async fn allowed_request_reaches_origin_through_intercepted_tls() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let resp = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(
        resp.json()["choices"][0]["message"]["content"],
        "Hello from the origin"
    );
    let event_id = resp.header("x-portcullis-event-id").unwrap();
    assert_eq!(event_id.len(), 32);
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    // Proxy credentials never reach the origin; the agent's own header does.
    assert!(!seen[0].headers.contains_key("proxy-authorization"));
    assert_eq!(seen[0].headers["authorization"], "Bearer sk-agent-own");
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_matching_no_route_is_denied_inside_tls_with_reason() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let resp = proxy
        .h1_request(
            "api.openai.com:443",
            "POST /v1/embeddings HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "path_not_allowed");
    assert_eq!(resp.json()["error"]["type"], "portcullis_denied");
    assert_eq!(
        resp.header("x-portcullis-decision").as_deref(),
        Some("deny")
    );
    assert_eq!(
        resp.header("x-portcullis-event-id").unwrap(),
        resp.json()["error"]["event_id"].as_str().unwrap()
    );
    assert!(
        origin.seen().is_empty(),
        "a denied request must not reach the origin"
    );
}

#[tokio::test]
async fn host_without_any_route_is_answered_inside_tls_with_no_route() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let resp = proxy
        .h1_request(
            "unlisted.example.com:443",
            "GET / HTTP/1.1\r\nHost: unlisted.example.com\r\n\r\n",
        )
        .await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "no_route");
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn connect_to_unrouted_non_tls_port_is_refused_at_connect() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let err = proxy
        .connect("api.openai.com:22", Some((AGENT, TOKEN)))
        .await
        .unwrap_err();
    assert!(err.starts_with("HTTP/1.1 403"), "{err}");
    assert!(
        err.contains("port_not_allowed") || err.contains("no_route"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_or_wrong_proxy_token_gets_407() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    for auth in [
        None,
        Some((AGENT, "wrong")),
        Some(("nobody", TOKEN)),
        Some((OTHER_AGENT, TOKEN)),
    ] {
        let err = proxy.connect("api.openai.com:443", auth).await.unwrap_err();
        assert!(err.starts_with("HTTP/1.1 407"), "{auth:?}: {err}");
        assert!(
            err.to_ascii_lowercase()
                .contains("proxy-authenticate: basic"),
            "{err}"
        );
        assert!(err.contains("auth_failed"), "{err}");
    }
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn host_header_differing_from_connect_host_gets_421() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let resp = proxy
        .h1_request(
            "api.openai.com:443",
            "GET /echo HTTP/1.1\r\nHost: api.anthropic.com\r\n\r\n",
        )
        .await;
    assert_eq!(resp.status, 421);
    assert_eq!(resp.error_code(), "host_mismatch");
    assert!(resp.closed);
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn sni_differing_from_connect_host_closes_the_tunnel() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let tcp = proxy
        .connect("api.openai.com:443", Some((AGENT, TOKEN)))
        .await
        .unwrap();
    let res = tls_client(tcp, &proxy.ca_roots, "api.anthropic.com", &[b"http/1.1"]).await;
    assert!(res.is_err(), "handshake with a foreign SNI must fail");
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn client_hello_without_sni_is_served_for_the_connect_host() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let tcp = proxy
        .connect("api.openai.com:443", Some((AGENT, TOKEN)))
        .await
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(proxy.ca_roots.clone())
        .with_no_client_auth();
    cfg.enable_sni = false;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn malformed_connect_line_gets_400_and_no_panic() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let auth = basic(AGENT, TOKEN);
    for line in [
        "CONNECT api.openai.com HTTP/1.1",
        "CONNECT :443 HTTP/1.1",
        "CONNECT api.openai.com:99999 HTTP/1.1",
        "CONNECT [::1 HTTP/1.1",
        "CONNECT bad_host!:443 HTTP/1.1",
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(format!("{line}\r\nProxy-Authorization: Basic {auth}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut s).await;
        assert_eq!(resp.status, 400, "{line}: {}", resp.head);
    }
    // The proxy is still serving.
    let ok = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn origin_form_request_to_the_proxy_is_refused_with_a_hint() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {}\r\n\r\n",
            basic(AGENT, TOKEN)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 400);
    assert!(resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("CONNECT"));
}

#[tokio::test]
async fn slowloris_client_is_disconnected_by_header_read_timeout() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    // client_header_timeout is 2s in the test config; allow generous slack.
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the proxy kept a slow client's connection open");
}

#[tokio::test]
async fn slowloris_inside_tunnel_is_disconnected_too() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the proxy kept a slow client's tunnel open");
}

#[tokio::test]
async fn upstream_with_untrusted_certificate_gets_502_with_reason() {
    // The origin's CA is not in extra_ca: a fresh PKI signs it.
    let rogue = OriginPki::new();
    let origin = Origin::start_tls(&rogue).await;
    let trusted = OriginPki::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(
        origin.addr,
        &trusted,
        &dir.path().join("ca"),
        DEFAULT_ROUTES,
    );
    let proxy = TestProxy::start(&cfg, dir).await;
    let resp = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(resp.status, 502, "{}", resp.head);
    assert_eq!(resp.error_code(), "upstream_tls_failed");
    let msg = resp.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("certificate"), "{msg}");
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn h2_client_streams_are_forwarded_and_host_bound() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"h2"])
        .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Two concurrent streams on one connection.
    let mk = |body: &'static str| {
        http::Request::post("https://api.openai.com/v1/chat/completions")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap()
    };
    let (a, b) = tokio::join!(
        send.clone()
            .send_request(mk(r#"{"model":"gpt-4o-mini","messages":[]}"#)),
        send.send_request(mk(r#"{"model":"gpt-4o","messages":[]}"#))
    );
    for r in [a.unwrap(), b.unwrap()] {
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-portcullis-event-id"));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("Hello from the origin"));
    }
    assert_eq!(origin.seen().len(), 2);

    // A stream whose :authority differs from the CONNECT host is refused with 421.
    let tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"h2"])
        .await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = send
        .send_request(
            http::Request::get("https://api.anthropic.com/v1/messages")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(origin.seen().len(), 2);
}

#[tokio::test]
async fn sse_events_reach_the_client_before_the_origin_sends_the_next() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /sse-paced HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    for i in 0..5 {
        // The origin sends event i+1 only after we release the gate, so if
        // the proxy buffered anything this read would never complete.
        let want = format!("data: event-{i}");
        while !seen.contains(&want) {
            let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("event {i} did not arrive: the proxy is buffering"))
                .unwrap();
            assert!(n > 0, "stream ended early");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(!seen.contains(&format!("data: event-{}", i + 1)));
        origin.gate.add_permits(1);
    }
}

#[tokio::test]
async fn websocket_upgrade_is_relayed_both_ways_on_websocket_routes() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("origin.test:443", "origin.test", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /ws HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept"));
    for msg in [&b"\x81\x05hello"[..], b"\x81\x05world"] {
        tls.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn websocket_upgrade_is_refused_on_routes_without_websocket() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let resp = proxy
        .h1_request(
            "api.openai.com:443",
            "GET /ws-denied HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "websocket_not_allowed");
    assert!(resp.closed);
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn upstream_cannot_spoof_portcullis_headers() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let resp = proxy
        .h1_request(
            "api.openai.com:443",
            "GET /forge HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-portcullis-decision"), None);
}

#[tokio::test]
async fn tenant_routes_do_not_leak_across_tenants() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    // globex's agent has only api.anthropic.com.
    let tcp = proxy
        .connect("api.openai.com:443", Some((OTHER_AGENT, OTHER_TOKEN)))
        .await
        .unwrap();
    let mut tls = tls_client(tcp, &proxy.ca_roots, "api.openai.com", &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(CHAT.as_bytes()).await.unwrap();
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "no_route");
    assert!(!String::from_utf8_lossy(&resp.body).contains("acme"));
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn plain_http_needs_allow_plaintext() {
    let origin = Origin::start_plain().await;
    let pki = OriginPki::new();
    let dir = tempfile::tempdir().unwrap();
    let port = origin.addr.port();
    let routes = r#"
[[routes]]
id = "plain-ok"
action = "allow"
tenants = ["acme"]
hosts = ["plain.test"]
ports = [80]
allow_plaintext = true

[[routes]]
id = "plain-no"
action = "allow"
tenants = ["acme"]
hosts = ["noplain.test"]
ports = [443, 80]
"#;
    let mut cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), routes);
    cfg = cfg.replace(
        "resolve = [",
        &format!(
            "resolve = [\"plain.test:80:127.0.0.1:{port}\", \"noplain.test:80:127.0.0.1:{port}\", "
        ),
    );
    let proxy = TestProxy::start(&cfg, dir).await;
    let auth = basic(AGENT, TOKEN);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("GET http://plain.test/hello HTTP/1.1\r\nHost: plain.test\r\nProxy-Authorization: Basic {auth}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(String::from_utf8_lossy(&resp.body), "origin saw GET /hello");
    assert!(resp.header("x-portcullis-event-id").is_some());

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("GET http://noplain.test/hello HTTP/1.1\r\nHost: noplain.test\r\nProxy-Authorization: Basic {auth}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "plaintext_not_allowed");

    // Plain HTTP without credentials is a 407 like everything else.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET http://plain.test/hello HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 407);
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn passthrough_route_splices_tls_end_to_end() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = r#"
[[routes]]
id = "pt"
action = "allow"
tenants = ["acme"]
hosts = ["origin.test"]
mode = "passthrough"
"#;
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), routes);
    let proxy = TestProxy::start(&cfg, dir).await;
    // The client verifies the ORIGIN's certificate: nothing was intercepted.
    let mut origin_roots = rustls::RootCertStore::empty();
    origin_roots.add(pki.chain[1].clone()).unwrap();
    let tcp = proxy
        .connect("origin.test:443", Some((AGENT, TOKEN)))
        .await
        .unwrap();
    let mut tls = tls_client(tcp, &origin_roots, "origin.test", &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(b"GET /through HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut tls).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        "origin saw GET /through"
    );
    assert!(resp.header("x-portcullis-event-id").is_none());

    // SNI must equal the CONNECT host.
    let tcp = proxy
        .connect("origin.test:443", Some((AGENT, TOKEN)))
        .await
        .unwrap();
    assert!(
        tls_client(tcp, &origin_roots, "api.openai.com", &[b"http/1.1"])
            .await
            .is_err()
    );
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_stream_and_stops_accepting() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let addr = proxy.addr;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /sse-paced HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    let shutdown = tokio::spawn(proxy.shutdown());
    // New connections are refused once shutdown starts.
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "listener still accepting after shutdown");
    // The in-flight stream still completes.
    origin.gate.add_permits(10);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            let n = tls.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&rest).contains("event-4") {
                break;
            }
        }
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("data: event-4"));
    drop(tls);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();
}
