//! Outbound: a webhook receiver that never answers, origin certificates and names, and
//! the CONNECT host, SNI and `Host` binding.

use super::*;

// ---------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_webhook_queue_drops_and_counts_notices_while_every_request_is_still_answered_and_recorded(
) {
    // A receiver that accepts every connection and never answers.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = hook.accept().await {
            held.push(tcp);
        }
    });
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
            Secret::api_key(b"whsec-failclosed-0123456789abcdef".to_vec()),
        )
        .unwrap();
    let routes = format!("{DEFAULT_ROUTES}\n[vault]\npath = \"vault.json\"\n");
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), &routes).replace(
        "[[tenants]]\nid = \"acme\"\n",
        &format!(
            "[[tenants]]\nid = \"acme\"\nwebhook = {{ url = \"http://{hook_addr}/hook\", events = [\"deny\"] }}\n"
        ),
    );
    let proxy = Arc::new(
        TestProxy::start_with_master_key(&cfg, dir, Some(master.to_base64().as_str())).await,
    );
    // 16 deliveries hang (5 s per attempt, 3 retries) and 1024 wait in the
    // queue; every deny after those is dropped.
    const CONNS: usize = 4;
    const PER_CONN: usize = 300;
    let tasks: Vec<_> = (0..CONNS)
        .map(|_| {
            let p = proxy.clone();
            tokio::spawn(async move {
                let mut tls = p
                    .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
                    .await;
                let mut ids = Vec::new();
                for _ in 0..PER_CONN {
                    tls.write_all(b"GET /v1/nope HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
                        .await
                        .unwrap();
                    let r = read_response_keep_open(&mut tls).await;
                    assert_eq!(r.status, 403, "{}", r.head);
                    assert_eq!(r.error_code(), "path_not_allowed");
                    ids.push(r.header("x-portcullis-event-id").unwrap());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(ids.len(), CONNS * PER_CONN, "every request was answered");
    let dropped = metric(
        &proxy,
        "portcullis_webhook_deliveries_total{result=\"dropped\"}",
    )
    .await;
    assert!(dropped >= 1.0, "no notice was dropped ({dropped})");
    // Every deny is in the ledger, dropped notice or not.
    let denied: std::collections::HashSet<String> = ledger_records(&proxy.ledger_dir)
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["reason"] == "path_not_allowed")
        .filter_map(|r| r["event_id"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.iter().all(|id| denied.contains(id)));
    assert!(origin.seen().is_empty());
    let (status, ready) = readyz(&proxy).await;
    assert_eq!(
        status, 200,
        "webhooks never make the proxy unready: {ready}"
    );
}

// ---------------------------------------------------------------------------
// Upstream: certificates and names
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_certificate_for_another_name_gets_502_upstream_tls_failed_and_nothing_is_sent() {
    // A trusted CA (it is in extra_ca) signed it, but for another name.
    let pki = OriginPki::for_names(&["elsewhere.test"]);
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    let proxy = TestProxy::start(&cfg, dir).await;
    let r = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(r.status, 502, "{}", r.head);
    assert_eq!(r.error_code(), "upstream_tls_failed");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("certificate"), "{message}");
    // The decision was an allow, recorded before the dial; the outcome says
    // the upstream failed.
    assert_eq!(r.header("x-portcullis-decision").as_deref(), Some("allow"));
    let d = decision_of(&proxy, &r).await;
    assert_eq!(d["decision"], "allow");
    let id = r.header("x-portcullis-event-id").unwrap();
    let o = wait_for_outcome(&proxy.ledger_dir, &id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(o["end"], "upstream_error");
    assert_eq!(o["status"], 502);
    assert!(
        origin.seen().is_empty(),
        "a request went to an unverified origin"
    );
    assert!(metric(&proxy, "portcullis_upstream_errors_total{kind=\"tls\"}").await >= 1.0);
    assert_eq!(readyz(&proxy).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_gets_502_resolve_failed_and_one_that_resolves_to_loopback_403_ssrf_blocked(
) {
    let routes = r#"
[[routes]]
id = "acme-unresolvable"
action = "allow"
tenants = ["acme"]
hosts = ["nothing-here.invalid"]

[[routes]]
id = "acme-localhost"
action = "allow"
tenants = ["acme"]
hosts = ["localhost"]
"#;
    let (proxy, origin, _pki) = TestProxy::with_origin(routes).await;
    // `.invalid` never resolves (RFC 6761).
    let r = proxy
        .h1_request(
            "nothing-here.invalid:443",
            "GET /v1/models HTTP/1.1\r\nHost: nothing-here.invalid\r\n\r\n",
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.head);
    assert_eq!(r.error_code(), "resolve_failed");
    let d = decision_of(&proxy, &r).await;
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("deny"), Some("resolve_failed"))
    );
    // The system resolver answers `localhost` with loopback: a private
    // answer, refused without a dial (no route opts in with allow_private).
    let r = proxy
        .h1_request(
            "localhost:443",
            "GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.head);
    assert_eq!(r.error_code(), "ssrf_blocked");
    let d = decision_of(&proxy, &r).await;
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("deny"), Some("ssrf_blocked"))
    );
    assert!(origin.seen().is_empty());
    assert_eq!(readyz(&proxy).await.0, 200);
}

// ---------------------------------------------------------------------------
// CONNECT host, SNI and Host
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatch_among_connect_host_sni_and_host_is_refused_and_recorded_as_host_mismatch() {
    let routes = r#"
[[routes]]
id = "acme-openai"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]

[[routes]]
id = "acme-anthropic"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]

[[routes]]
id = "acme-origin-passthrough"
action = "allow"
tenants = ["acme"]
hosts = ["origin.test"]
mode = "passthrough"
"#;
    let (proxy, origin, pki) = TestProxy::with_origin(routes).await;
    let mismatch_at = |host: &'static str| {
        let dir = proxy.ledger_dir.clone();
        async move {
            wait_for_record(&dir, Duration::from_secs(5), |r| {
                r["kind"] == "decision"
                    && r["reason"] == "host_mismatch"
                    && r["method"] == "CONNECT"
                    && r["dest_host"] == host
            })
            .await
            .unwrap_or_else(|| panic!("no host_mismatch record for {host}:\n{}", ledger_dump(&dir)))
        }
    };

    // Host differs from the CONNECT host (HTTP/1.1): 421, and the connection closes.
    let r = proxy
        .h1_request(
            "api.openai.com:443",
            "GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\n\r\n",
        )
        .await;
    assert_eq!(r.status, 421, "{}", r.head);
    assert_eq!(r.error_code(), "host_mismatch");
    assert!(r.closed);
    let d = decision_of(&proxy, &r).await;
    assert_eq!(
        (d["decision"].as_str(), d["reason"].as_str()),
        (Some("deny"), Some("host_mismatch"))
    );
    assert_eq!(d["dest_host"], "api.openai.com");

    // :authority differs (HTTP/2): the stream gets 421.
    let tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"h2"])
        .await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("https://api.anthropic.com/v1/models")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 421);
    let id = resp.headers()["x-portcullis-event-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = resp.into_body().collect().await;
    assert_eq!(decision(&proxy, &id).await["reason"], "host_mismatch");

    // SNI differs from the CONNECT host (intercepted): no handshake, and a record.
    let tcp = proxy
        .connect("api.openai.com:443", Some((AGENT, TOKEN)))
        .await
        .unwrap();
    let hs = tls_client(tcp, &proxy.ca_roots, "api.anthropic.com", &[b"http/1.1"]).await;
    assert!(hs.is_err(), "a handshake for another name was served");
    mismatch_at("api.openai.com").await;

    // SNI differs on a passthrough route: nothing is spliced, and a record.
    let mut origin_roots = rustls::RootCertStore::empty();
    origin_roots.add(pki.chain[1].clone()).unwrap();
    let tcp = proxy
        .connect("origin.test:443", Some((AGENT, TOKEN)))
        .await
        .unwrap();
    let hs = tls_client(tcp, &origin_roots, "api.openai.com", &[b"http/1.1"]).await;
    assert!(hs.is_err(), "a ClientHello for another name was spliced");
    mismatch_at("origin.test").await;

    assert!(origin.seen().is_empty());
    assert_eq!(readyz(&proxy).await.0, 200);
}
