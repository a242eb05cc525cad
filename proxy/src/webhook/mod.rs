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

mod notify;
mod signature;
#[cfg(test)]
mod tests;

pub use notify::Webhooks;
pub use signature::*;
