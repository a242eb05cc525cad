//! Webhook delivery (SPEC §11): tell a tenant's receiver about a decision,
//! without ever slowing or changing that decision.
//!
//! The caller hands [`WebhookSender::send`] the JSON ledger record it already
//! wrote (so the body carries no content) and returns at once: the record goes
//! into a bounded queue with `try_send`, and a full queue drops it and counts
//! [`DeliveryResult::Dropped`]. One worker task drains the queue and runs at
//! most `max_in_flight` deliveries at a time, so a slow receiver holds only its
//! own permits, and each attempt is bounded by `timeout`.
//!
//! Every attempt is one fresh HTTP/1.1 connection (webhooks are rare; a pool
//! would only keep sockets open to receivers we barely talk to):
//!
//! ```text
//! POST <sink.url>
//! content-type: application/json
//! X-Portcullis-Event: deny
//! X-Portcullis-Event-Id: <event id>
//! X-Portcullis-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! A 2xx answer is success; anything else, a timeout or a connection error is
//! retried `retries` times with doubling, jittered backoff, and then counted
//! [`DeliveryResult::Failed`]. Each attempt is signed afresh, so a receiver
//! that refuses stale timestamps still accepts a late retry. Receivers check a
//! signature with [`verify`] (the `portcullis webhook verify` helper).
//!
//! Sink URLs come from the operator's config, so they are not put through the
//! SSRF table that guards agent traffic. The secret is never logged: `Sink`'s
//! `Debug` redacts it and no error carries it.

#![allow(dead_code)] // wired in by the admin API work

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rand::Rng;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

/// Header names, defined once.
pub const EVENT_HEADER: &str = "x-portcullis-event";
pub const EVENT_ID_HEADER: &str = "x-portcullis-event-id";
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";

/// How far a signature's timestamp may be from the receiver's clock before
/// [`verify`] refuses it as a replay.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Backoff never grows past this, whatever `retries` is.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------
// Events and sinks
// ---------------------------------------------------------------------------

/// The events a sink can select, by their config and header names.
const EVENTS: [&str; 4] = ["deny", "warn", "narrow", "approval.requested"];
const ALL: &str = "all";

/// Which events a sink receives. Built only by [`EventSet::parse`], so it
/// never holds a name we do not know.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct EventSet {
    /// One bit per entry of `EVENTS`.
    bits: u8,
    /// `all` also takes events added after this config was written.
    all: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventSetError {
    #[error("unknown webhook event {0:?}; use one of deny, warn, narrow, approval.requested, all")]
    Unknown(String),
    #[error("webhook events list is empty; use [\"all\"] to receive every event")]
    Empty,
}

impl EventSet {
    /// Every event, now and later.
    pub const ALL: EventSet = EventSet {
        bits: (1 << EVENTS.len()) - 1,
        all: true,
    };

    pub fn parse<I, S>(names: I) -> Result<EventSet, EventSetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = EventSet::default();
        let mut any = false;
        for name in names {
            let name = name.as_ref();
            any = true;
            if name == ALL {
                set = EventSet::ALL;
                continue;
            }
            match EVENTS.iter().position(|e| *e == name) {
                Some(i) => set.bits |= 1 << i,
                None => return Err(EventSetError::Unknown(name.to_owned())),
            }
        }
        if !any {
            return Err(EventSetError::Empty);
        }
        Ok(set)
    }

    pub fn wants(&self, event: &str) -> bool {
        self.all
            || EVENTS
                .iter()
                .position(|e| *e == event)
                .is_some_and(|i| self.bits & (1 << i) != 0)
    }
}

impl fmt::Debug for EventSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all {
            return f.write_str("EventSet[all]");
        }
        let names: Vec<&str> = EVENTS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.bits & (1 << i) != 0)
            .map(|(_, e)| *e)
            .collect();
        write!(f, "EventSet{names:?}")
    }
}

/// One tenant's receiver: where to POST, the signing secret (from the vault),
/// and which events it wants.
pub struct Sink {
    pub url: Uri,
    pub secret: Zeroizing<Vec<u8>>,
    pub events: EventSet,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only scheme, host and port: the path or user-info may hold a token.
        let host = self.url.host().unwrap_or("");
        let port = self
            .url
            .port_u16()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let scheme = self.url.scheme_str().unwrap_or("");
        f.debug_struct("Sink")
            .field("url", &format_args!("{scheme}://{host}{port}/…"))
            .field("secret", &"<redacted>")
            .field("events", &self.events)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// The sender
// ---------------------------------------------------------------------------

/// How one webhook ended, for `portcullis_webhook_deliveries_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryResult {
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed (or the sink could not be used at all).
    Failed,
    /// The queue was full; nothing was sent.
    Dropped,
}

impl DeliveryResult {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "ok",
            DeliveryResult::Failed => "failed",
            DeliveryResult::Dropped => "dropped",
        }
    }
}

pub type OnResult = Arc<dyn Fn(DeliveryResult) + Send + Sync>;

pub struct WebhookOptions {
    /// Records waiting for a delivery slot; past it, `send` drops.
    pub queue: usize,
    /// Per attempt: connect, TLS, request and response head.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// Wait before the first retry; doubles each retry, with jitter.
    pub backoff: Duration,
    /// Deliveries running at once, across all sinks.
    pub max_in_flight: usize,
    /// Trusted in addition to the webpki roots for `https` sinks.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Called once per `send` with how it ended (metrics).
    pub on_result: OnResult,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            queue: 1024,
            timeout: Duration::from_secs(5),
            retries: 3,
            backoff: Duration::from_millis(200),
            max_in_flight: 16,
            extra_roots: Vec::new(),
            on_result: Arc::new(|_| {}),
        }
    }
}

impl fmt::Debug for WebhookOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookOptions")
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("max_in_flight", &self.max_in_flight)
            .field("extra_roots", &self.extra_roots.len())
            .finish_non_exhaustive()
    }
}

/// The handle callers keep. Cloning it is cheap; the worker stops once every
/// clone is dropped and the deliveries in flight have ended.
#[derive(Clone)]
pub struct WebhookSender {
    tx: mpsc::Sender<Job>,
    on_result: OnResult,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("queue_free", &self.tx.capacity())
            .finish_non_exhaustive()
    }
}

struct Job {
    sink: Arc<Sink>,
    event: HeaderValue,
    event_id: HeaderValue,
    body: Bytes,
}

/// What the worker and every delivery share.
struct Shared {
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    /// `None` if the TLS client could not be built: `https` sinks then fail.
    tls: Option<TlsConnector>,
    on_result: OnResult,
}

impl WebhookSender {
    /// Spawns the delivery worker (call inside a tokio runtime). The handle
    /// ends after the last `WebhookSender` is dropped and the queue and the
    /// deliveries in flight are done; aborting it aborts those deliveries.
    pub fn start(opts: WebhookOptions) -> (WebhookSender, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let shared = Arc::new(Shared {
            timeout: opts.timeout,
            retries: opts.retries,
            backoff: opts.backoff,
            tls: tls_connector(opts.extra_roots),
            on_result: opts.on_result.clone(),
        });
        let permits = Arc::new(Semaphore::new(opts.max_in_flight.max(1)));
        let handle = tokio::spawn(run(rx, shared, permits));
        let sender = WebhookSender {
            tx,
            on_result: opts.on_result,
        };
        (sender, handle)
    }

    /// Queues `body` (the JSON ledger record) for `sink` if it wants `event`.
    /// Never blocks and never fails the caller: a full queue is counted
    /// `Dropped`, an event or id that cannot be a header value `Failed`.
    pub fn send(&self, sink: &Arc<Sink>, event: &str, event_id: &str, body: Vec<u8>) {
        if !sink.events.wants(event) {
            return;
        }
        let (Ok(event_v), Ok(event_id_v)) = (
            HeaderValue::from_str(event),
            HeaderValue::from_str(event_id),
        ) else {
            tracing::warn!(event, "webhook event or id is not a valid header value");
            (self.on_result)(DeliveryResult::Failed);
            return;
        };
        let job = Job {
            sink: sink.clone(),
            event: event_v,
            event_id: event_id_v,
            body: Bytes::from(body),
        };
        if self.tx.try_send(job).is_err() {
            // Full, or the worker is gone (shutdown): either way nothing goes out.
            tracing::warn!(event, event_id, "webhook queue full; delivery dropped");
            (self.on_result)(DeliveryResult::Dropped);
        }
    }
}

/// The worker: take a delivery slot, then a job, so that while every slot is
/// busy the jobs stay in the bounded queue, where `send` sees it is full.
async fn run(mut rx: mpsc::Receiver<Job>, shared: Arc<Shared>, permits: Arc<Semaphore>) {
    let mut inflight = JoinSet::new();
    loop {
        // Reap finished deliveries, so the set holds about `max_in_flight`.
        while inflight.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Some(job) = rx.recv().await else { break };
        let shared = shared.clone();
        inflight.spawn(async move {
            let result = deliver(&shared, &job).await;
            (shared.on_result)(result);
            drop(permit);
        });
    }
    while inflight.join_next().await.is_some() {}
}

// ---------------------------------------------------------------------------
// One delivery
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// A sink URL taken apart for the dial. Holds no user-info.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    /// Without IPv6 brackets, for the dial and the TLS server name.
    host: String,
    port: u16,
    host_header: HeaderValue,
    path: Uri,
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("sink URL is not usable: {0}")]
    BadUrl(&'static str),
    #[error("cannot build the request")]
    Build,
    #[error("TLS client is not available")]
    NoTls,
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("TLS failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP failed: {0}")]
    Http(hyper::Error),
    #[error("receiver answered {0}")]
    Status(StatusCode),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl AttemptError {
    /// Errors no retry can fix.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            AttemptError::BadUrl(_) | AttemptError::Build | AttemptError::NoTls
        )
    }
}

impl Target {
    fn parse(url: &Uri) -> Result<Target, AttemptError> {
        let scheme = match url.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(AttemptError::BadUrl("scheme must be http or https")),
        };
        let raw_host = url.host().filter(|h| !h.is_empty());
        let raw_host = raw_host.ok_or(AttemptError::BadUrl("no host"))?;
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let port = url.port_u16().unwrap_or(default_port);
        let host_header = if port == default_port {
            raw_host.to_owned()
        } else {
            format!("{raw_host}:{port}")
        };
        let host_header =
            HeaderValue::try_from(host_header).map_err(|_| AttemptError::BadUrl("bad host"))?;
        let path = url
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let path = Uri::try_from(path).map_err(|_| AttemptError::BadUrl("bad path"))?;
        let host = raw_host.trim_start_matches('[').trim_end_matches(']');
        Ok(Target {
            scheme,
            host: host.to_owned(),
            port,
            host_header,
            path,
        })
    }
}

async fn deliver(shared: &Shared, job: &Job) -> DeliveryResult {
    let event_id = job.event_id.to_str().unwrap_or("");
    let target = match Target::parse(&job.sink.url) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(event_id, error = %e, "webhook delivery failed");
            return DeliveryResult::Failed;
        }
    };
    let mut attempt = 0;
    loop {
        let outcome = tokio::time::timeout(shared.timeout, attempt_once(shared, &target, job))
            .await
            .unwrap_or(Err(AttemptError::Timeout(shared.timeout)));
        let err = match outcome {
            Ok(()) => {
                tracing::debug!(event_id, host = %target.host, attempt, "webhook delivered");
                return DeliveryResult::Delivered;
            }
            Err(e) => e,
        };
        if attempt >= shared.retries || err.is_permanent() {
            tracing::warn!(
                event_id,
                host = %target.host,
                attempts = attempt + 1,
                error = %err,
                "webhook delivery failed"
            );
            return DeliveryResult::Failed;
        }
        tracing::debug!(event_id, host = %target.host, attempt, error = %err, "webhook attempt failed; retrying");
        attempt += 1;
        tokio::time::sleep(backoff(shared.backoff, attempt)).await;
    }
}

/// `base * 2^(retry-1)`, capped, then jittered into `[d/2, d]` so receivers
/// that came back are not hit by every sender at the same instant.
fn backoff(base: Duration, retry: u32) -> Duration {
    let exp = retry.saturating_sub(1).min(16);
    let d = base.saturating_mul(1 << exp).min(MAX_BACKOFF);
    let half = d / 2;
    half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
}

async fn attempt_once(shared: &Shared, target: &Target, job: &Job) -> Result<(), AttemptError> {
    let t = unix_now();
    let signature = signature_header(&job.sink.secret, t, &job.body);
    let req = Request::builder()
        .method(Method::POST)
        .uri(target.path.clone())
        .header(HOST, target.host_header.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("portcullis-webhook/", env!("CARGO_PKG_VERSION")),
        )
        .header(EVENT_HEADER, job.event.clone())
        .header(EVENT_ID_HEADER, job.event_id.clone())
        .header(SIGNATURE_HEADER, signature)
        .body(Full::new(job.body.clone()))
        .map_err(|_| AttemptError::Build)?;

    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(AttemptError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let status = match target.scheme {
        Scheme::Http => exchange(tcp, req).await?,
        Scheme::Https => {
            let tls = shared.tls.as_ref().ok_or(AttemptError::NoTls)?;
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| AttemptError::BadUrl("host is not a TLS server name"))?;
            let stream = tls.connect(name, tcp).await.map_err(AttemptError::Tls)?;
            exchange(stream, req).await?
        }
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(AttemptError::Status(status))
    }
}

/// One request on a fresh connection, driven in this future (not spawned), so
/// the attempt's timeout also closes the socket.
async fn exchange<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<StatusCode, AttemptError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(AttemptError::Http)?;
    let response = sender.send_request(req);
    tokio::pin!(conn);
    tokio::pin!(response);
    let mut conn_done = false;
    loop {
        tokio::select! {
            biased;
            r = &mut response => {
                // Only the status matters; the body is dropped with the connection.
                return r.map(|resp| resp.status()).map_err(AttemptError::Http);
            }
            r = &mut conn, if !conn_done => {
                // Usually the request future reports the real error next.
                r.map_err(AttemptError::Http)?;
                conn_done = true;
            }
        }
    }
}

fn tls_connector(extra_roots: Vec<CertificateDer<'static>>) -> Option<TlsConnector> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let (_, ignored) = roots.add_parsable_certificates(extra_roots);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "some extra webhook CA certificates could not be used"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tracing::error!(error = %e, "webhook TLS client unavailable"))
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(TlsConnector::from(Arc::new(config)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------

fn mac(secret: &[u8], t: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = match <HmacSha256 as Mac>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `v1` value: lowercase hex HMAC-SHA256(secret, "<t>.<body>").
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    hex::encode(mac(secret, t, body).finalize().into_bytes())
}

/// The whole `X-Portcullis-Signature` value: `t=<t>,v1=<hex>`.
pub fn signature_header(secret: &[u8], t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", sign(secret, t, body))
}

/// Why a signature was refused. Carries neither the secret nor the body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    #[error("signature header has no v1 signature")]
    NoSignature,
    #[error("no v1 signature matches this body and secret")]
    Mismatch,
    #[error("signature timestamp is {age}s old, past the tolerance (replay?)")]
    TooOld { age: u64 },
    #[error("signature timestamp is {ahead}s in the future, past the tolerance (clock skew?)")]
    TooNew { ahead: u64 },
}

/// Checks an `X-Portcullis-Signature` header against `body`: a well-formed
/// header, some `v1` matching in constant time (several are allowed, for
/// secret rotation; unknown schemes are ignored), and a timestamp within
/// `tolerance` of `now` (unix seconds) either way.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut sigs: Vec<[u8; 32]> = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(VerifyError::Malformed("each entry must be key=value"))?;
        match key {
            "t" => {
                if t.is_some() {
                    return Err(VerifyError::Malformed("more than one t="));
                }
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(VerifyError::Malformed("t= must be unix seconds"));
                }
                let parsed = value
                    .parse::<u64>()
                    .map_err(|_| VerifyError::Malformed("t= must be unix seconds"))?;
                t = Some(parsed);
            }
            "v1" => {
                let mut sig = [0u8; 32];
                hex::decode_to_slice(value, &mut sig)
                    .map_err(|_| VerifyError::Malformed("v1= must be 64 hex digits"))?;
                sigs.push(sig);
            }
            "" => return Err(VerifyError::Malformed("empty key")),
            _ => {} // a later scheme (v2=...) this verifier does not know
        }
    }
    let t = t.ok_or(VerifyError::Malformed("no t="))?;
    if sigs.is_empty() {
        return Err(VerifyError::NoSignature);
    }
    let expected = mac(secret, t, body).finalize().into_bytes();
    let matched = sigs.iter().fold(subtle::Choice::from(0), |acc, sig| {
        acc | sig[..].ct_eq(&expected[..])
    });
    if !bool::from(matched) {
        return Err(VerifyError::Mismatch);
    }
    // Checked after the signature, so a stale-time answer is only ever given
    // about a record we really sent.
    let tol = tolerance.as_secs();
    if now > t && now - t > tol {
        return Err(VerifyError::TooOld { age: now - t });
    }
    if t > now && t - now > tol {
        return Err(VerifyError::TooNew { ahead: t - now });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
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
}
