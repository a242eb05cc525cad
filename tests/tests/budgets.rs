//! Budgets that keep one abuser from exhausting what every tenant needs: the
//! ledger's records for refusals nobody was identified for, and connections
//! per peer address.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use portcullis_ledger::{verify, VerifyOptions};
use portcullis_tests::extra::ledger_dump;
use portcullis_tests::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CHAT: &str = "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: 68\r\n\r\n{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi!\"}]}";

/// A TCP connection to `to` from the loopback address `from` (any of 127/8).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

fn peer_records<'a>(records: &'a [Value], peer: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "decision" && r["peer"] == peer)
        .collect()
}

/// Each record stands for `count` refusals, one when absent.
fn refusals_recorded(records: &[&Value]) -> u64 {
    records
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_requests_is_recorded_at_a_bounded_rate_with_an_exact_count() {
    let (proxy, origin, _pki) = TestProxy::with_origin(DEFAULT_ROUTES).await;
    const CONNECTS: u64 = 1000;
    const PLAIN: u64 = 4000;
    let addr = proxy.addr;
    // 1 000 CONNECTs without credentials, each on its own connection (a refused
    // CONNECT closes), and 4 000 plain requests with none or a wrong one, on
    // eight keep-alive connections.
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..CONNECTS / 4 {
                let mut s = connect_from("127.0.0.1", addr).await;
                s.write_all(
                    b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n",
                )
                .await
                .unwrap();
                let r = read_response_keep_open(&mut s).await;
                assert_eq!(r.status, 407, "{}", r.head);
            }
            w
        }));
    }
    for w in 0..8u64 {
        tasks.push(tokio::spawn(async move {
            let mut s = connect_from("127.0.0.1", addr).await;
            for i in 0..PLAIN / 8 {
                let auth = if i % 2 == 0 {
                    String::new()
                } else {
                    format!("Proxy-Authorization: Basic {}\r\n", basic(AGENT, "wrong"))
                };
                s.write_all(
                    format!("GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\n{auth}\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let r = read_response_keep_open(&mut s).await;
                assert_eq!(r.status, 407, "{}", r.head);
                assert_eq!(r.error_code(), "auth_failed");
            }
            w
        }));
    }
    // Meanwhile an identified agent on the same address is served and recorded.
    let served = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(served.status, 200);
    let served_id = served.header("x-portcullis-event-id").unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    // And a wrong token from another address still gets its own record.
    let mut other = connect_from("127.0.0.2", addr).await;
    other
        .write_all(
            format!(
                "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: Basic {}\r\n\r\n",
                basic(AGENT, "wrong")
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let r = read_response_keep_open(&mut other).await;
    assert_eq!(r.status, 407);
    let other_id = r.header("x-portcullis-event-id").unwrap();
    drop(other);
    let after = proxy.h1_request("api.openai.com:443", CHAT).await;
    assert_eq!(after.status, 200, "still served after the flood");
    assert_eq!(origin.seen().len(), 2);

    let ledger_dir = proxy.ledger_dir.clone();
    // Shutdown writes the aggregate of the window still open.
    let _dir = proxy.shutdown().await;
    let records = ledger_records(&ledger_dir);
    let flood = peer_records(&records, "127.0.0.1");
    assert_eq!(
        refusals_recorded(&flood),
        CONNECTS + PLAIN,
        "every refusal is accounted for exactly"
    );
    // Bounded: 20 records one by one per 10 s window, plus one aggregate per
    // listener and reason, where a record per refusal would be 5 000.
    assert!(flood.len() <= 100, "{} records for the flood", flood.len());
    let aggregates: Vec<_> = flood.iter().filter(|r| r["count"].is_u64()).collect();
    assert!(!aggregates.is_empty());
    for a in &aggregates {
        assert_eq!(a["reason"], "auth_failed");
        assert_eq!(a["decision"], "deny");
        assert_eq!(a["listener"], "forward");
        assert!(a.get("tenant").is_none() && a.get("agent").is_none(), "{a}");
    }
    assert!(flood.iter().all(|r| r["reason"] == "auth_failed"));
    // The other address's one refusal is its own record.
    let other = peer_records(&records, "127.0.0.2");
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!(other[0]["event_id"], other_id.as_str());
    assert!(other[0].get("count").is_none());
    // The identified requests are recorded as ever, without a peer.
    let allow = records
        .iter()
        .find(|r| r["kind"] == "decision" && r["event_id"] == served_id.as_str())
        .unwrap_or_else(|| panic!("{}", ledger_dump(&ledger_dir)));
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["agent"], AGENT);
    assert!(allow.get("peer").is_none());
    let outcome = verify(
        &ledger_dir,
        &VerifyOptions {
            strict: true,
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(outcome.is_intact(), "{outcome}");
}

/// Reads until the peer closes or 2 s pass; true when it closed.
async fn closes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

const MIB: usize = 1024 * 1024;

/// A POST of `len` bytes to api.anthropic.com, head and the first `send` bytes only.
async fn start_post(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, len: usize, send: usize) {
    tls.write_all(
        format!("POST /v1/blob HTTP/1.1\r\nHost: api.anthropic.com\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    tls.write_all(&vec![b'x'; send]).await.unwrap();
    tls.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_large_bodies_past_its_memory_budget_get_503_while_another_tenant_is_served() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES).replace(
        "[limits]\n",
        "[limits]\nmax_inspect_body = 1048576\ninspect_memory_per_tenant = 2097152\ninspect_memory = 8388608\n",
    );
    let proxy = TestProxy::start(&cfg, dir).await;
    // Tenant acme: four 1 MiB bodies at once, each held at 900 KiB, so the
    // buffers stay in memory. Two fit its 2 MiB; the others wait, then get 503.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tls = proxy
            .tunnel_tls("api.anthropic.com:443", "api.anthropic.com", &[b"http/1.1"])
            .await;
        start_post(&mut tls, MIB, 900 * 1024).await;
        held.push(tls);
    }
    // Meanwhile tenant globex sends a whole large body and is served.
    let tcp = proxy
        .connect("api.anthropic.com:443", Some((OTHER_AGENT, OTHER_TOKEN)))
        .await
        .unwrap();
    let mut other = tls_client(tcp, &proxy.ca_roots, "api.anthropic.com", &[b"http/1.1"])
        .await
        .unwrap();
    start_post(&mut other, 900 * 1024, 900 * 1024).await;
    let served = read_response(&mut other).await;
    assert_eq!(served.status, 200, "{}", served.head);

    let mut refused = 0;
    let mut waiting = Vec::new();
    for mut tls in held {
        match tokio::time::timeout(Duration::from_secs(3), read_response_keep_open(&mut tls)).await
        {
            Ok(r) => {
                assert_eq!(r.status, 503, "{}", r.head);
                assert_eq!(r.error_code(), "memory_budget");
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
                refused += 1;
            }
            // Still reading this body: it got its memory.
            Err(_) => waiting.push(tls),
        }
    }
    assert_eq!(refused, 2, "two of the four fit the tenant's budget");
    // The two that fit finish and are forwarded; their memory comes back.
    for tls in &mut waiting {
        tls.write_all(&vec![b'x'; MIB - 900 * 1024]).await.unwrap();
        let r = read_response_keep_open(tls).await;
        assert_eq!(r.status, 200, "{}", r.head);
    }
    drop(waiting);
    let mut again = proxy
        .tunnel_tls("api.anthropic.com:443", "api.anthropic.com", &[b"http/1.1"])
        .await;
    start_post(&mut again, MIB, MIB).await;
    let r = read_response(&mut again).await;
    assert_eq!(r.status, 200, "the budget is given back: {}", r.head);
    assert_eq!(origin.seen().len(), 4);
    let records = ledger_records(&proxy.ledger_dir);
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "decision" && r["reason"] == "memory_budget")
        .collect();
    assert_eq!(denied.len(), 2, "{}", ledger_dump(&proxy.ledger_dir));
    assert!(denied
        .iter()
        .all(|r| r["tenant"] == "acme" && r["decision"] == "deny"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_connections_than_its_cap_before_identification() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES)
        .replace("[limits]\n", "[limits]\nmax_connections_per_peer = 3\n");
    let proxy = TestProxy::start(&cfg, dir).await;
    // Three tunnels from 127.0.0.1 hold its three slots.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            proxy
                .connect("api.anthropic.com:443", Some((AGENT, TOKEN)))
                .await
                .unwrap(),
        );
    }
    // A fourth connection from that address is closed before it is read,
    // whatever it would have said.
    let mut fourth = connect_from("127.0.0.1", proxy.addr).await;
    let _ = fourth
        .write_all(b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n\r\n")
        .await;
    assert!(
        closes(&mut fourth).await,
        "the fourth connection stayed open"
    );
    // Another address is unaffected.
    let mut other = connect_from("127.0.0.2", proxy.addr).await;
    other
        .write_all(
            format!(
                "CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\nProxy-Authorization: Basic {}\r\n\r\n",
                basic(AGENT, TOKEN)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert!(read_head(&mut other).await.starts_with("HTTP/1.1 200"));
    // Closing a connection gives its slot back.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            proxy.connect("api.anthropic.com:443", Some((AGENT, TOKEN))),
        )
        .await
        {
            Ok(Ok(s)) => {
                open.push(s);
                break;
            }
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("the closed connection's slot never came back"),
        }
    }
    let ledger_dir = proxy.ledger_dir.clone();
    drop((open, other));
    let _dir = proxy.shutdown().await;
    let records = ledger_records(&ledger_dir);
    let refused = peer_records(&records, "127.0.0.1");
    assert!(
        refused
            .iter()
            .any(|r| r["reason"] == "connection_limit" && r["decision"] == "deny"),
        "{}",
        ledger_dump(&ledger_dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_connections_count_against_the_agents_cap_and_others_are_unaffected() {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        "{DEFAULT_ROUTES}\n[[listeners]]\nname = \"gateway\"\nbind = \"127.0.0.1:0\"\nmode = \"gateway\"\n"
    );
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), &routes)
        .replace("[limits]\n", "[limits]\nmax_connections_per_agent = 2\n");
    let proxy = TestProxy::start(&cfg, dir).await;
    let gw = proxy.proxy.as_ref().unwrap().addr("gateway").unwrap();
    let get = |token: &str| {
        format!("GET /anthropic/v1/models HTTP/1.1\r\nHost: gateway\r\nx-api-key: {token}\r\n\r\n")
    };
    // Two connections of the agent, each used twice: two slots, not four.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw).await.unwrap();
        for _ in 0..2 {
            s.write_all(get(TOKEN).as_bytes()).await.unwrap();
            let r = read_response_keep_open(&mut s).await;
            assert_eq!(r.status, 200, "{}", r.head);
        }
        held.push(s);
    }
    let mut third = TcpStream::connect(gw).await.unwrap();
    third.write_all(get(TOKEN).as_bytes()).await.unwrap();
    let r = read_response(&mut third).await;
    assert_eq!(r.status, 429, "{}", r.head);
    assert_eq!(r.error_code(), "connection_limit");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(r.closed);
    // Another agent is unaffected.
    let mut other = TcpStream::connect(gw).await.unwrap();
    other.write_all(get(OTHER_TOKEN).as_bytes()).await.unwrap();
    assert_eq!(read_response_keep_open(&mut other).await.status, 200);
    // A closed connection gives its slot back.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(gw).await.unwrap();
        s.write_all(get(TOKEN).as_bytes()).await.unwrap();
        let r = read_response_keep_open(&mut s).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(origin.seen().len(), 6);
    proxy.shutdown().await;
}
