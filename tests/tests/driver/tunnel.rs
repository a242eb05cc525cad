//! An open tunnel re-checked per request: bad tokens, unswitched upgrades, rotated tokens,
//! a moved agent, a passthrough tunnel whose route a reload removed.

use super::*;

#[tokio::test]
async fn connect_with_missing_or_wrong_token_gets_407_then_the_connection_closes() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let good = basic(AGENT, TOKEN);
    for (label, auth) in [
        ("missing token", None),
        ("wrong token", Some(basic(AGENT, "not-the-token"))),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let mut first =
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n".to_owned();
        if let Some(a) = &auth {
            first.push_str(&format!("Proxy-Authorization: Basic {a}\r\n"));
        }
        first.push_str("\r\n");
        // A well-authenticated CONNECT pipelined in the same write: it must
        // never be read off a connection whose first request failed auth.
        let second = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: Basic {good}\r\n\r\n"
        );
        s.write_all(format!("{first}{second}").as_bytes())
            .await
            .unwrap();
        let resp = read_response_keep_open(&mut s).await;
        assert_eq!(resp.status, 407, "{label}: {}", resp.head);
        assert!(
            resp.header("proxy-authenticate")
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("basic")),
            "{label}: no Proxy-Authenticate: {}",
            resp.head
        );
        assert_eq!(resp.error_code(), "auth_failed", "{label}");
        let after = read_after(&mut s, T).await;
        assert!(
            after == AfterResponse::Closed,
            "{label}: expected EOF after the 407, got {}",
            show(&after)
        );
    }
    assert!(origin.seen().is_empty());
}

// 2. An upgrade that is not switched closes the connection --------------------

/// Sends `first` and the smuggling-shaped request in one write; expects one
/// response to `first`, then EOF (or a `400 bad_framing` and EOF), and never
/// a 2xx for the second. `Err` says what went wrong.
async fn one_response_then_close(
    proxy: &TestProxy,
    host: &str,
    first: &str,
) -> Result<RawResponse, String> {
    let mut tls = proxy
        .tunnel_tls(&format!("{host}:443"), host, &[b"http/1.1"])
        .await;
    tls.write_all(format!("{first}{SMUGGLED}").as_bytes())
        .await
        .unwrap();
    let resp = read_response_keep_open(&mut tls).await;
    if resp.status == 0 || resp.status == 101 {
        return Err(format!("first response: {:?}", resp.head));
    }
    let second = read_response(&mut tls).await;
    if second.head.is_empty() {
        // No second response: the connection must be closed, not silent.
        return match read_after(&mut tls, Duration::from_secs(2)).await {
            AfterResponse::Closed => Ok(resp),
            other => Err(format!(
                "connection left open after the first response ({})",
                show(&other)
            )),
        };
    }
    if second.status == 400 && second.error_code() == "bad_framing" && second.closed {
        return Ok(resp);
    }
    Err(format!(
        "the pipelined smuggling request was parsed and got {:?} (closed after: {})",
        second.head, second.closed
    ))
}

#[tokio::test]
async fn unswitched_upgrade_closes_the_connection_before_a_pipelined_smuggle() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let cases = [
        (
            "Upgrade: foo on an allowed non-websocket route",
            "api.openai.com",
            "GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"
                .to_owned(),
            None,
        ),
        (
            "websocket upgrade refused by policy",
            "api.openai.com",
            format!("GET /ws-denied HTTP/1.1\r\nHost: api.openai.com\r\n{WS_HEADERS}\r\n"),
            Some((403, "websocket_not_allowed")),
        ),
        (
            "websocket upgrade declined by the upstream",
            "origin.test",
            format!("GET /ws-denied HTTP/1.1\r\nHost: origin.test\r\n{WS_HEADERS}\r\n"),
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (label, host, first, want) in &cases {
        match one_response_then_close(&proxy, host, first).await {
            Ok(resp) => {
                if let Some((status, code)) = want {
                    if resp.status != *status || resp.error_code() != *code {
                        failures.push(format!("{label}: first response {:?}", resp.head));
                    }
                }
            }
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    let smuggled: Vec<_> = origin
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .map(|s| s.path)
        .collect();
    if !smuggled.is_empty() {
        failures.push(format!(
            "the smuggling request reached the origin {} time(s)",
            smuggled.len()
        ));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// 3. Identity is re-checked on every request in an open tunnel ----------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_refuses_the_next_request_on_an_open_tunnel_with_407() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(ECHO.as_bytes()).await.unwrap();
    let before = read_response_keep_open(&mut tls).await;
    assert_eq!(before.status, 200, "{}", before.head);

    rewrite_and_reload(&proxy, |c| {
        c.replace(&sha256_hex(TOKEN), &sha256_hex("rotated-agent-token"))
    })
    .await;

    tls.write_all(ECHO.as_bytes()).await.unwrap();
    let after = read_response_keep_open(&mut tls).await;
    assert_eq!(
        after.status, 407,
        "a tunnel opened with a revoked token still works: {}",
        after.head
    );
    assert_eq!(after.error_code(), "auth_failed");
    assert_eq!(
        origin.seen().len(),
        1,
        "the second request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_moved_to_another_tenant_is_refused_on_an_open_tunnel_with_407() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    let mut tls = proxy
        .tunnel_tls("api.openai.com:443", "api.openai.com", &[b"http/1.1"])
        .await;
    tls.write_all(ECHO.as_bytes()).await.unwrap();
    let before = read_response_keep_open(&mut tls).await;
    assert_eq!(before.status, 200, "{}", before.head);

    rewrite_and_reload(&proxy, |c| {
        c.replace(
            &format!("id = \"{AGENT}\"\ntenant = \"acme\""),
            &format!("id = \"{AGENT}\"\ntenant = \"globex\""),
        )
    })
    .await;

    tls.write_all(ECHO.as_bytes()).await.unwrap();
    let after = read_response_keep_open(&mut tls).await;
    assert_eq!(
        after.status, 407,
        "a tunnel opened as tenant acme still serves an agent now in globex: {}",
        after.head
    );
    assert_eq!(after.error_code(), "auth_failed");
    assert_eq!(
        origin.seen().len(),
        1,
        "the second request reached the origin"
    );
}

// 4. A reload that removes a passthrough route closes its tunnels -------------

const PT_ROUTE: &str = r#"
[[routes]]
id = "pt"
action = "allow"
tenants = ["acme"]
hosts = ["origin.test"]
mode = "passthrough"
"#;

const NOT_PT_ROUTE: &str = r#"
[[routes]]
id = "anthropic-only"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_tunnel_is_closed_when_a_reload_removes_its_route() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), PT_ROUTE);
    let proxy = TestProxy::start(&cfg, dir).await;
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
    let resp = read_response_keep_open(&mut tls).await;
    assert_eq!(resp.status, 200, "{}", resp.head);

    rewrite_and_reload(&proxy, |c| c.replace(PT_ROUTE, NOT_PT_ROUTE)).await;

    let after = read_after(&mut tls, T).await;
    assert!(
        after == AfterResponse::Closed,
        "the passthrough tunnel outlived the removal of its route: {}",
        show(&after)
    );
    assert_eq!(origin.seen().len(), 1);
}

// 5. Paths are canonicalised once, strictly ------------------------------------
