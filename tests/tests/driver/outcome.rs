//! Outcome records for every ending: held requests, trailers, client aborts, websockets,
//! shutdown mid-stream.

use super::*;

const HOLD_ROUTES: &str = r#"
[[routes]]
id = "inspected-chat"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
methods = ["POST"]
paths = ["/v1/chat/completions"]
detectors = { injection = "block" }

[[routes]]
id = "openai-all"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
"#;

async fn hold_setup() -> (TestProxy, HoldOrigin, OriginPki) {
    let pki = OriginPki::new();
    let origin = HoldOrigin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), HOLD_ROUTES);
    (TestProxy::start(&cfg, dir).await, origin, pki)
}

const TRAILER_BODY: &[u8] =
    br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn trailer_map() -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("x-smuggled-trailer", http::HeaderValue::from_static("1"));
    t
}

#[tokio::test]
async fn request_trailers_are_stripped_on_inspected_routes() {
    let (proxy, origin, pki) = hold_setup().await;

    // The instrument works: straight to the origin, trailers are recorded.
    let mut origin_roots = rustls::RootCertStore::empty();
    origin_roots.add(pki.chain[1].clone()).unwrap();
    let tcp = TcpStream::connect(origin.addr).await.unwrap();
    let tls = tls_client(tcp, &origin_roots, "api.openai.com", &[b"h2"])
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let direct = http::Request::post("https://api.openai.com/direct")
        .body(FramesBody::data_then_trailers(TRAILER_BODY, trailer_map()))
        .unwrap();
    let r = tokio::time::timeout(T, send.send_request(direct))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    let direct_seen = origin.seen();
    assert!(
        direct_seen[0]
            .trailers
            .as_ref()
            .is_some_and(|t| t.contains_key("x-smuggled-trailer")),
        "test origin does not record trailers: {direct_seen:?}"
    );

    // Through the proxy on an inspected route: the trailers never arrive.
    let tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"h2"])
        .await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .body(FramesBody::data_then_trailers(TRAILER_BODY, trailer_map()))
        .unwrap();
    let r = tokio::time::timeout(T, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    let via = &seen[1];
    assert_eq!(via.path, "/v1/chat/completions");
    assert_eq!(&via.body[..], TRAILER_BODY);
    assert!(
        via.trailers.as_ref().is_none_or(|t| t.is_empty()),
        "request trailers reached the origin: {:?}",
        via.trailers
    );
}

// 9. Every ending writes its outcome record -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_reset_before_upstream_headers_writes_a_client_abort_outcome() {
    let (proxy, origin, _pki) = hold_setup().await;
    let tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"h2"])
        .await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = http::Request::get("https://api.openai.com/hold")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let pending = tokio::spawn(send.send_request(req));
    assert!(
        origin.wait_for_path("/hold", T).await,
        "the request never reached the origin"
    );
    // Dropping the response future resets the stream (RST_STREAM CANCEL);
    // the connection itself stays up.
    pending.abort();
    let _ = pending.await;
    let dir = proxy.ledger_dir.clone();
    let d = wait_for_record(&dir, T, decision_at("/hold"))
        .await
        .unwrap_or_else(|| panic!("no decision for /hold:\n{}", ledger_dump(&dir)));
    let id = d["event_id"].as_str().unwrap().to_owned();
    let o = wait_for_outcome(&dir, &id, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no outcome for {id} after the reset:\n{}",
                ledger_dump(&dir)
            )
        });
    assert_eq!(o["end"], "client_abort", "{o}");
    conn_task.abort();
    drop(send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_client_closing_before_upstream_headers_writes_a_client_abort_outcome() {
    let (proxy, origin, _pki) = hold_setup().await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /hold HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    assert!(
        origin.wait_for_path("/hold", T).await,
        "the request never reached the origin"
    );
    let _ = tokio::time::timeout(T, tls.shutdown()).await;
    drop(tls);
    let dir = proxy.ledger_dir.clone();
    let d = wait_for_record(&dir, T, decision_at("/hold"))
        .await
        .unwrap_or_else(|| panic!("no decision for /hold:\n{}", ledger_dump(&dir)));
    let id = d["event_id"].as_str().unwrap().to_owned();
    let o = wait_for_outcome(&dir, &id, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no outcome for {id} after the close:\n{}",
                ledger_dump(&dir)
            )
        });
    assert_eq!(o["end"], "client_abort", "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_session_writes_an_outcome_with_101_and_bytes_both_ways() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("origin.test:443", "origin.test", &[b"http/1.1"])
        .await;
    tls.write_all(format!("GET /ws HTTP/1.1\r\nHost: origin.test\r\n{WS_HEADERS}\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let id = event_id_of(&head).expect("no event id on the 101");
    for msg in [&b"\x81\x05hello"[..], b"\x81\x05world"] {
        tls.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(T, tls.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    let _ = tokio::time::timeout(T, tls.shutdown()).await;
    drop(tls);
    let dir = proxy.ledger_dir.clone();
    let o = wait_for_outcome(&dir, &id, T).await.unwrap_or_else(|| {
        panic!(
            "no outcome for the websocket session {id}:\n{}",
            ledger_dump(&dir)
        )
    });
    assert_eq!(o["status"], 101, "{o}");
    assert!(o["bytes_in"].as_u64().unwrap_or(0) > 0, "{o}");
    assert!(o["bytes_out"].as_u64().unwrap_or(0) > 0, "{o}");
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_declined_by_the_upstream_writes_an_outcome_with_its_status() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let resp = proxy
        .h1_request(
            "origin.test:443",
            &format!("GET /ws-denied HTTP/1.1\r\nHost: origin.test\r\n{WS_HEADERS}\r\n"),
        )
        .await;
    assert!(resp.status != 0 && resp.status != 101, "{}", resp.head);
    assert_eq!(
        origin.seen().len(),
        1,
        "the upgrade request reached the origin"
    );
    let id = resp.header("x-portcullis-event-id").expect("no event id");
    let dir = proxy.ledger_dir.clone();
    let o = wait_for_outcome(&dir, &id, T).await.unwrap_or_else(|| {
        panic!(
            "no outcome for the declined upgrade {id}:\n{}",
            ledger_dump(&dir)
        )
    });
    assert_eq!(o["status"], resp.status, "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_the_outcome_of_an_endless_stream_before_the_final_checkpoint() {
    let (proxy, _origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(b"GET /sse-paced HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let id = event_id_of(&head).expect("no event id");
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("event-0") {
        let n = tokio::time::timeout(T, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream ended early");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The origin never releases event-1: the stream is in flight for good.
    let dir = proxy.ledger_dir.clone();
    let _keep = tokio::time::timeout(Duration::from_secs(60), proxy.shutdown())
        .await
        .expect("shutdown did not return");
    let records = ledger_records(&dir);
    let outcome = records
        .iter()
        .find(|r| r["kind"] == "outcome" && r["event_id"] == id.as_str())
        .unwrap_or_else(|| {
            panic!(
                "no outcome for the in-flight stream {id} after shutdown:\n{}",
                ledger_dump(&dir)
            )
        });
    let last_checkpoint = records
        .iter()
        .filter(|r| r["kind"] == "checkpoint")
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .expect("no checkpoint record");
    let seq = outcome["seq"].as_u64().unwrap();
    assert!(
        seq < last_checkpoint,
        "outcome seq {seq} is not anchored by the final checkpoint (seq {last_checkpoint})"
    );
    drop(tls);
}

// 10. Config: websocket routes cannot claim detectors --------------------------

#[test]
fn config_with_a_websocket_route_that_has_detectors_is_refused() {
    let pki = OriginPki::new();
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let route = |extra: &str| {
        format!(
            "\n[[routes]]\nid = \"ws-inspected\"\naction = \"allow\"\ntenants = [\"acme\"]\nhosts = [\"origin.test\"]\n{extra}\n"
        )
    };
    let parse = |extra: &str| {
        portcullis_rules::parse_config(
            "ws.toml",
            &proxy_config(addr, &pki, &dir.path().join("ca"), &route(extra)),
        )
    };
    // Each half alone is a valid route.
    if let Err(e) = parse("websocket = true") {
        panic!("websocket alone refused: {e}");
    }
    if let Err(e) = parse("detectors = { injection = \"block\" }") {
        panic!("detectors alone refused: {e}");
    }
    let err = match parse("websocket = true\ndetectors = { injection = \"block\" }") {
        Ok(_) => panic!("a websocket route with detectors was accepted"),
        Err(e) => e.to_string(),
    };
    let lower = err.to_ascii_lowercase();
    assert!(
        lower.contains("websocket") && lower.contains("detectors"),
        "the error should name websocket and detectors: {err}"
    );
}
