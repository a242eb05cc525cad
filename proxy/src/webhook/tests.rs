// Compiled only under #[cfg(test)] (declared in mod.rs).
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::*;

const SECRET: &[u8] = b"whsec-test-secret";
const BODY: &[u8] = br#"{"decision":"deny","reason":"no_route"}"#;

/// What the receiver does with its n-th request (counting from 1).
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    Hang,
}

#[derive(Debug)]
struct Received {
    headers: http::HeaderMap,
    path: String,
    body: Bytes,
}

struct Receiver {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real HTTP/1 receiver on 127.0.0.1:0 that records every request
/// before answering it as `answer(n)` says.
async fn receiver(answer: fn(usize) -> Answer) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let task_hits = hits.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let hits = task_hits.clone();
            let seen_tx = seen_tx.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let hits = hits.clone();
                let seen_tx = seen_tx.clone();
                async move {
                    let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let _ = seen_tx.send(Received {
                        headers: parts.headers,
                        path: parts.uri.to_string(),
                        body,
                    });
                    match answer(n) {
                        Answer::Status(code) => {
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                        Answer::Hang => std::future::pending().await,
                    }
                }
            });
            conns.spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Receiver {
        addr,
        hits,
        seen,
        task,
    }
}

struct Harness {
    sender: WebhookSender,
    worker: JoinHandle<()>,
    results: mpsc::UnboundedReceiver<DeliveryResult>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

/// Short timings so every test ends well inside a few seconds.
fn harness(tune: impl FnOnce(&mut WebhookOptions)) -> Harness {
    let (tx, results) = mpsc::unbounded_channel();
    let mut opts = WebhookOptions {
        timeout: Duration::from_millis(500),
        retries: 3,
        backoff: Duration::from_millis(10),
        on_result: Arc::new(move |r| {
            let _ = tx.send(r);
        }),
        ..WebhookOptions::default()
    };
    tune(&mut opts);
    let (sender, worker) = WebhookSender::start(opts);
    Harness {
        sender,
        worker,
        results,
    }
}

fn sink(addr: SocketAddr) -> Arc<Sink> {
    sink_for(addr, EventSet::ALL)
}

fn sink_for(addr: SocketAddr, events: EventSet) -> Arc<Sink> {
    Arc::new(Sink {
        url: format!("http://{addr}/hooks/portcullis?tenant=acme")
            .parse()
            .unwrap(),
        secret: Zeroizing::new(SECRET.to_vec()),
        events,
    })
}

/// Bounds every wait in these tests: a hang fails the test, never stalls CI.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(8), fut)
        .await
        .expect("test step took too long")
}

#[tokio::test]
async fn delivery_carries_a_signature_the_receiver_verifies() {
    let mut rx = receiver(|_| Answer::Status(204)).await;
    let mut h = harness(|_| {});
    h.sender
        .send(&sink(rx.addr), "deny", "evt-1", BODY.to_vec());

    let got = within(rx.seen.recv()).await.unwrap();
    assert_eq!(
        within(h.results.recv()).await,
        Some(DeliveryResult::Delivered)
    );
    assert_eq!(got.path, "/hooks/portcullis?tenant=acme");
    assert_eq!(got.body, BODY);
    assert_eq!(got.headers[CONTENT_TYPE], "application/json");
    assert_eq!(got.headers[EVENT_HEADER], "deny");
    assert_eq!(got.headers[EVENT_ID_HEADER], "evt-1");
    assert_eq!(got.headers[HOST], rx.addr.to_string().as_str());
    let sig = got.headers[SIGNATURE_HEADER].to_str().unwrap();
    verify(SECRET, sig, &got.body, unix_now(), DEFAULT_TOLERANCE).unwrap();
    assert_eq!(
        verify(
            b"other-secret",
            sig,
            &got.body,
            unix_now(),
            DEFAULT_TOLERANCE
        ),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(rx.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_then_counted_failed() {
    let mut rx = receiver(|_| Answer::Status(500)).await;
    let mut h = harness(|o| o.retries = 2);
    h.sender
        .send(&sink(rx.addr), "warn", "evt-2", BODY.to_vec());

    assert_eq!(within(h.results.recv()).await, Some(DeliveryResult::Failed));
    // The first attempt and two retries, each signed for the same event.
    assert_eq!(rx.hits.load(Ordering::SeqCst), 3);
    for _ in 0..3 {
        let got = rx.seen.try_recv().unwrap();
        assert_eq!(got.headers[EVENT_ID_HEADER], "evt-2");
    }
}

#[tokio::test]
async fn a_receiver_that_recovers_is_delivered_on_retry() {
    let rx = receiver(|n| Answer::Status(if n <= 2 { 503 } else { 200 })).await;
    let mut h = harness(|o| o.retries = 3);
    h.sender
        .send(&sink(rx.addr), "deny", "evt-3", BODY.to_vec());

    assert_eq!(
        within(h.results.recv()).await,
        Some(DeliveryResult::Delivered)
    );
    assert_eq!(rx.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let rx = receiver(|n| {
        if n == 1 {
            Answer::Hang
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let mut h = harness(|o| {
        o.timeout = Duration::from_millis(200);
        o.retries = 1;
    });
    h.sender
        .send(&sink(rx.addr), "deny", "evt-4", BODY.to_vec());

    assert_eq!(
        within(h.results.recv()).await,
        Some(DeliveryResult::Delivered)
    );
    assert_eq!(rx.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_down_receiver_is_counted_failed() {
    // Bind and close, so the port is known to refuse connections.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut h = harness(|o| o.retries = 1);
    h.sender.send(&sink(addr), "deny", "evt-5", BODY.to_vec());

    assert_eq!(within(h.results.recv()).await, Some(DeliveryResult::Failed));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let mut rx = receiver(|_| Answer::Hang).await;
    let mut h = harness(|o| {
        o.queue = 1;
        o.max_in_flight = 1;
        o.timeout = Duration::from_secs(30);
    });
    let s = sink(rx.addr);
    h.sender.send(&s, "deny", "evt-0", BODY.to_vec());
    // Once the receiver holds the first record, the only slot is busy, so
    // the next one waits in the queue and every later one is dropped.
    within(rx.seen.recv()).await.unwrap();
    for i in 1..=50 {
        h.sender
            .send(&s, "deny", &format!("evt-{i}"), BODY.to_vec());
    }
    for _ in 0..49 {
        assert_eq!(h.results.try_recv(), Ok(DeliveryResult::Dropped));
    }
    assert!(
        h.results.try_recv().is_err(),
        "exactly one record was queued"
    );
}

#[tokio::test]
async fn events_a_sink_did_not_select_are_not_sent() {
    let rx = receiver(|_| Answer::Status(200)).await;
    let mut h = harness(|_| {});
    let s = sink_for(rx.addr, EventSet::parse(["deny"]).unwrap());
    h.sender.send(&s, "warn", "evt-w", BODY.to_vec());
    h.sender.send(&s, "deny", "evt-d", BODY.to_vec());

    assert_eq!(
        within(h.results.recv()).await,
        Some(DeliveryResult::Delivered)
    );
    assert_eq!(rx.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_worker_ends_after_the_last_sender_is_dropped() {
    let rx = receiver(|_| Answer::Status(200)).await;
    let (tx, mut results) = mpsc::unbounded_channel();
    let (sender, worker) = WebhookSender::start(WebhookOptions {
        on_result: Arc::new(move |r| {
            let _ = tx.send(r);
        }),
        ..WebhookOptions::default()
    });
    let clone = sender.clone();
    clone.send(&sink(rx.addr), "deny", "evt-last", BODY.to_vec());
    drop(sender);
    drop(clone);
    // The queued record is still delivered before the worker ends.
    within(worker).await.unwrap();
    assert_eq!(results.try_recv(), Ok(DeliveryResult::Delivered));
}

#[test]
fn verify_rejects_replays_older_than_five_minutes() {
    let now = 1_700_000_000;
    let old = now - 301;
    let header = signature_header(SECRET, old, BODY);
    assert_eq!(
        verify(SECRET, &header, BODY, now, DEFAULT_TOLERANCE),
        Err(VerifyError::TooOld { age: 301 })
    );
    let recent = signature_header(SECRET, now - 299, BODY);
    assert_eq!(
        verify(SECRET, &recent, BODY, now, DEFAULT_TOLERANCE),
        Ok(())
    );
    let future = signature_header(SECRET, now + 301, BODY);
    assert_eq!(
        verify(SECRET, &future, BODY, now, DEFAULT_TOLERANCE),
        Err(VerifyError::TooNew { ahead: 301 })
    );
}

#[test]
fn verify_rejects_a_tampered_body() {
    let now = 1_700_000_000;
    let header = signature_header(SECRET, now, BODY);
    let tampered = br#"{"decision":"allow","reason":"no_route"}"#;
    assert_eq!(
        verify(SECRET, &header, tampered, now, DEFAULT_TOLERANCE),
        Err(VerifyError::Mismatch)
    );
    // Moving the timestamp breaks it too: t is inside the signed bytes.
    let moved = header.replacen(&format!("t={now}"), &format!("t={}", now + 1), 1);
    assert_eq!(
        verify(SECRET, &moved, BODY, now, DEFAULT_TOLERANCE),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn verify_accepts_any_matching_v1_among_several() {
    let now = 1_700_000_000;
    let good = sign(SECRET, now, BODY);
    let other = sign(b"old-secret", now, BODY);
    let header = format!("t={now},v1={other}, v1={good},v0=ignored");
    assert_eq!(
        verify(SECRET, &header, BODY, now, DEFAULT_TOLERANCE),
        Ok(())
    );
}

#[test]
fn verify_rejects_malformed_headers() {
    let now = 1_700_000_000;
    let good = sign(SECRET, now, BODY);
    let cases = [
        (
            String::new(),
            VerifyError::Malformed("each entry must be key=value"),
        ),
        (format!("v1={good}"), VerifyError::Malformed("no t=")),
        (format!("t={now}"), VerifyError::NoSignature),
        (
            format!("t=-5,v1={good}"),
            VerifyError::Malformed("t= must be unix seconds"),
        ),
        (
            format!("t={now},t={now},v1={good}"),
            VerifyError::Malformed("more than one t="),
        ),
        (
            format!("t={now},v1=abc"),
            VerifyError::Malformed("v1= must be 64 hex digits"),
        ),
        (
            format!("t={now},v1={good}zz"),
            VerifyError::Malformed("v1= must be 64 hex digits"),
        ),
        (
            format!("t={now};v1={good}"),
            VerifyError::Malformed("t= must be unix seconds"),
        ),
    ];
    for (header, want) in cases {
        assert_eq!(
            verify(SECRET, &header, BODY, now, DEFAULT_TOLERANCE),
            Err(want),
            "{header:?}"
        );
    }
}

#[test]
fn sign_matches_a_known_vector() {
    // HMAC-SHA256("key", "1.{}"), computed independently with openssl.
    assert_eq!(sign(b"key", 1, b"{}"), KNOWN_VECTOR);
}

const KNOWN_VECTOR: &str = "1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224";

#[test]
fn event_set_all_wants_everything() {
    let all = EventSet::parse(["all"]).unwrap();
    for e in EVENTS {
        assert!(all.wants(e), "{e}");
    }
    assert!(all.wants("approval.decided"), "all takes later events too");
    assert_eq!(all, EventSet::ALL);
}

#[test]
fn event_set_wants_only_what_it_lists() {
    let set = EventSet::parse(["deny", "approval.requested"]).unwrap();
    assert!(set.wants("deny"));
    assert!(set.wants("approval.requested"));
    assert!(!set.wants("warn"));
    assert!(!set.wants("narrow"));
    assert!(!set.wants("allow"));
}

#[test]
fn event_set_rejects_unknown_and_empty_lists() {
    assert_eq!(
        EventSet::parse(["deny", "denied"]),
        Err(EventSetError::Unknown("denied".into()))
    );
    assert_eq!(
        EventSet::parse(Vec::<String>::new()),
        Err(EventSetError::Empty)
    );
}

#[test]
fn sink_debug_redacts_the_secret_and_the_path() {
    let s = Sink {
        url: "https://user:pw@hooks.example.com:8443/t/abc123"
            .parse()
            .unwrap(),
        secret: Zeroizing::new(b"whsec-SUPERSECRET".to_vec()),
        events: EventSet::ALL,
    };
    let shown = format!("{s:?}");
    assert!(!shown.contains("SUPERSECRET"), "{shown}");
    assert!(!shown.contains("abc123"), "{shown}");
    assert!(!shown.contains("pw"), "{shown}");
    assert!(shown.contains("hooks.example.com:8443"), "{shown}");
}
