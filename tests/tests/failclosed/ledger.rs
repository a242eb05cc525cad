//! The ledger: a directory taken away, a queue that overflows.

use super::*;

// ---------------------------------------------------------------------------
// The ledger
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_directory_that_becomes_unwritable_refuses_every_request_with_503_ledger_unavailable_for_good_and_readyz_false(
) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger_dir = dir.path().join("ledger");
    let mut cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    // Small segments, so the writer soon needs the directory for a new one.
    cfg.push_str(&format!(
        "\n[ledger]\ndir = \"{}\"\nsegment_max_bytes = 4096\ncheckpoint_interval = \"1h\"\n",
        ledger_dir.display()
    ));
    let proxy = TestProxy::start(&cfg, dir).await;
    assert_eq!(chat_via_new_tunnel(&proxy).await.status, 200);

    // Take the directory away and put a file in its place (the tests run as
    // root, whom a read-only mode would not stop).
    let moved = proxy.dir.path().join("ledger-moved");
    std::fs::rename(&ledger_dir, &moved).unwrap();
    std::fs::write(&ledger_dir, b"not a directory").unwrap();
    let mut refused = None;
    for _ in 0..40 {
        let r = chat_via_new_tunnel(&proxy).await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.head);
    }
    let r = refused.expect("the proxy kept forwarding without a ledger directory");
    assert_eq!(r.error_code(), "ledger_unavailable");
    assert_eq!(
        r.header("x-portcullis-reason").as_deref(),
        Some("ledger_unavailable")
    );
    let (status, ready) = readyz(&proxy).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["ledger"], false, "{ready}");
    assert!(
        ready["failing"][0]
            .as_str()
            .unwrap()
            .starts_with("ledger: "),
        "{ready}"
    );

    // For good: the directory coming back does not reopen the ledger.
    std::fs::remove_file(&ledger_dir).unwrap();
    std::fs::rename(&moved, &ledger_dir).unwrap();
    let seen_at_failure = origin.seen().len();
    for _ in 0..3 {
        let r = chat_via_new_tunnel(&proxy).await;
        assert_eq!(r.status, 503, "{}", r.head);
        assert_eq!(r.error_code(), "ledger_unavailable");
    }
    assert_eq!(origin.seen().len(), seen_at_failure, "forwarded unrecorded");
    assert_eq!(readyz(&proxy).await.0, 503);
    // Audit before act: each request the origin saw has its decision on disk,
    // and the refusals have none (there was nowhere to write it).
    let records = ledger_records(&ledger_dir);
    let allowed_chats = records
        .iter()
        .filter(|r| {
            r["kind"] == "decision"
                && r["decision"] == "allow"
                && r["path_template"] == "/v1/chat/completions"
        })
        .count();
    assert_eq!(
        allowed_chats,
        origin.seen().len(),
        "{}",
        ledger_dump(&ledger_dir)
    );
    let refused_id = r.header("x-portcullis-event-id").unwrap();
    assert!(!records.iter().any(|x| x["event_id"] == refused_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ledger_queue_refuses_with_503_ledger_unavailable_and_nothing_leaves_without_its_record(
) {
    let pki = OriginPki::new();
    let origin = Origin::start_tls(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), DEFAULT_ROUTES);
    // One append may wait while the writer syncs the batch before it; the
    // next one finds the queue full.
    cfg.push_str("\n[ledger]\nqueue_capacity = 1\n");
    let proxy = Arc::new(TestProxy::start(&cfg, dir).await);
    let mut answered = Vec::new();
    let mut refused = Vec::new();
    // Bursts of concurrent tunnels until one finds the queue full (bounded).
    for _ in 0..20 {
        let burst: Vec<_> = (0..32)
            .map(|_| {
                let p = proxy.clone();
                tokio::spawn(async move { chat_via_new_tunnel(&p).await })
            })
            .collect();
        for t in burst {
            let r = tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap();
            match r.status {
                200 => answered.push(r),
                503 => {
                    assert_eq!(r.error_code(), "ledger_unavailable", "{}", r.head);
                    refused.push(r);
                }
                s => panic!(
                    "unexpected {s}: {}{}",
                    r.head,
                    String::from_utf8_lossy(&r.body)
                ),
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(
        !refused.is_empty(),
        "bursts of 32 tunnels never found a one-slot ledger queue full"
    );
    // A full queue passes: readiness and service come back once it drains.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while readyz(&proxy).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = chat_via_new_tunnel(&proxy).await;
    assert_eq!(after.status, 200, "{}", after.head);
    answered.push(after);

    // Nothing left without its record: the origin saw exactly the answered
    // requests, each with its allow decision and, once done, its outcome.
    assert_eq!(origin.seen().len(), answered.len());
    for r in &answered {
        let id = r.header("x-portcullis-event-id").unwrap();
        assert_eq!(decision(&proxy, &id).await["decision"], "allow");
        let o = wait_for_outcome(&proxy.ledger_dir, &id, Duration::from_secs(10)).await;
        assert!(o.is_some(), "no outcome for forwarded {id}");
    }
    // A refusal is recorded only if the queue had room again by then, and
    // then as what it was.
    let records = ledger_records(&proxy.ledger_dir);
    for r in &refused {
        let id = r.header("x-portcullis-event-id").unwrap();
        for rec in records.iter().filter(|x| x["event_id"] == id.as_str()) {
            assert_eq!(rec["kind"], "decision", "{rec}");
            assert_eq!(rec["decision"], "deny", "{rec}");
            assert_eq!(rec["reason"], "ledger_unavailable", "{rec}");
        }
    }
}
