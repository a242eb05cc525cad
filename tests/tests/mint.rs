//! Leaf minting under abuse: an agent that floods CONNECTs to made-up denied
//! hostnames (each of which would need a leaf, only to show a 403 inside TLS)
//! is slowed down with `429 denied_tunnel_limit`, the refusals are in the
//! ledger, real hosts keep their cached leaves, and other agents are not
//! touched.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use portcullis_tests::extra::{ledger_dump, wait_for_record};
use portcullis_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Far below the flood, so that denied leaves in the main cache would evict the real one.
const CACHE_CAPACITY: usize = 4;
const FLOOD: usize = 80;
/// `DENIED_MINT_BURST` and `DENIED_MINTS_PER_SEC` in proxy/src/tls/denied.rs.
const BURST: f64 = 16.0;
const PER_SEC: f64 = 4.0;

async fn proxy() -> (TestProxy, Origin, OriginPki) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES).replace(
        "[ca]\n",
        &format!("[ca]\ncache_capacity = {CACHE_CAPACITY}\n"),
    );
    (TestProxy::start(&cfg, dir).await, origin, pki)
}

/// CONNECT as `agent`, then TLS trusting the proxy CA: the leaf the proxy served.
async fn leaf_of(
    proxy: &TestProxy,
    host: &str,
    agent: (&str, &str),
) -> Result<(Vec<u8>, tokio_rustls::client::TlsStream<TcpStream>), String> {
    let tcp = proxy.connect(&format!("{host}:443"), Some(agent)).await?;
    let tls = tls_client(tcp, &proxy.ca_roots, host, &[b"http/1.1"])
        .await
        .map_err(|e| format!("TLS with the proxy failed: {e}"))?;
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((der, tls))
}

/// A denied host answered inside TLS: the SDK-readable 403.
async fn denied_inside_tls(mut tls: tokio_rustls::client::TlsStream<TcpStream>, host: &str) {
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let resp = read_response_keep_open(&mut tls).await;
    assert_eq!(resp.status, 403, "{host}");
    assert_eq!(resp.error_code(), "no_route", "{host}");
}

#[tokio::test]
async fn a_flood_of_denied_hostnames_is_limited_per_agent_and_real_leaves_stay_cached() {
    let (proxy, origin, _pki) = proxy().await;
    let agent = (AGENT, TOKEN);
    let (real_before, _) = leaf_of(&proxy, "api.openai.com", agent).await.unwrap();

    let (mut served, mut refused) = (Vec::new(), Vec::new());
    let started = std::time::Instant::now();
    for i in 0..FLOOD {
        let host = format!("r{i}.flood.test");
        match leaf_of(&proxy, &host, agent).await {
            Ok((_, tls)) => {
                denied_inside_tls(tls, &host).await;
                served.push(host);
            }
            Err(text) => refused.push((host, text)),
        }
    }

    let took = started.elapsed().as_secs_f64();

    // (a) The burst is served (each with a leaf of its own, and a readable 403), and what
    // trickles back; the rest is refused at CONNECT with a stable reason and a retry hint.
    let most = (BURST + PER_SEC * took).ceil() as usize;
    assert!(
        served.len() > CACHE_CAPACITY && served.len() <= most,
        "served {} of {FLOOD} in {took:.1}s",
        served.len()
    );
    assert!(
        refused.len() >= 10,
        "refused {} in {took:.1}s",
        refused.len()
    );
    for (host, text) in &refused {
        assert!(text.starts_with("HTTP/1.1 429"), "{host}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains("x-portcullis-reason: denied_tunnel_limit"),
            "{host}: {text}"
        );
        assert!(lower.contains("retry-after: 1"), "{host}: {text}");
        assert!(
            text.contains("\"code\":\"denied_tunnel_limit\""),
            "{host}: {text}"
        );
    }
    let (first_refused, _) = &refused[0];
    let rec = wait_for_record(&proxy.ledger_dir, Duration::from_secs(5), |r| {
        r["kind"] == "decision"
            && r["dest_host"] == first_refused.as_str()
            && r["reason"] == "denied_tunnel_limit"
    })
    .await;
    let rec = rec.unwrap_or_else(|| panic!("no record\n{}", ledger_dump(&proxy.ledger_dir)));
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["agent"], AGENT, "{rec}");
    assert_eq!(rec["method"], "CONNECT", "{rec}");

    // (b) The real host's leaf was not pushed out of its cache by the flood: the very
    // same certificate is served. A denied host already minted costs no budget either.
    let (real_after, _) = leaf_of(&proxy, "api.openai.com", agent).await.unwrap();
    assert!(
        real_before == real_after,
        "the allowed host's leaf was minted again"
    );
    let (_, tls) = leaf_of(&proxy, &served[0], agent)
        .await
        .expect("a denied host with a cached leaf is still answered inside TLS");
    denied_inside_tls(tls, &served[0]).await;

    // (c) Another agent has its own budget.
    let other = (OTHER_AGENT, OTHER_TOKEN);
    for i in 0..3 {
        let host = format!("o{i}.flood.test");
        let (_, tls) = leaf_of(&proxy, &host, other)
            .await
            .unwrap_or_else(|e| panic!("the other agent was refused: {e}"));
        denied_inside_tls(tls, &host).await;
    }

    assert!(origin.seen().is_empty(), "nothing went upstream");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_denied_tunnel_budget_comes_back_with_time() {
    let (proxy, _origin, _pki) = proxy().await;
    let agent = (AGENT, TOKEN);
    let mut refused = false;
    for i in 0..FLOOD {
        let host = format!("s{i}.flood.test");
        if proxy
            .connect(&format!("{host}:443"), Some(agent))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "the budget never ran out");
    // Tokens come back at a few per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let host = "later.flood.test".to_owned();
    let (_, tls) = leaf_of(&proxy, &host, agent).await.unwrap();
    denied_inside_tls(tls, &host).await;
    proxy.shutdown().await;
}
