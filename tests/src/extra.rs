//! Extra test support for the driver tests: an origin that can hold its
//! response headers and records request trailers, bounded ledger polling,
//! EOF checks, config rewrites, and a hand-rolled gzip.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::{ledger_records, BoxBody, OriginPki, TestProxy};

/// What the [`HoldOrigin`] saw of one request, trailers included.
#[derive(Clone, Debug)]
pub struct SeenFull {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub trailers: Option<HeaderMap>,
    pub body: Bytes,
}

/// A TLS origin (h2 + http/1.1). Paths starting with `/hold` are recorded
/// at once but get their response headers only after a permit on `release`
/// (or 60 s); every other path is recorded with its trailers and answered
/// `200` with a small JSON body.
pub struct HoldOrigin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<SeenFull>>>,
    pub release: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HoldOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HoldOrigin {
    pub async fn start_tls(pki: &OriginPki) -> HoldOrigin {
        let tls = pki.server_config(&[b"h2", b"http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Semaphore::new(0));
        let (s2, r2) = (seen.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (seen, release, tls) = (s2.clone(), r2.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| handle_hold(req, seen.clone(), release.clone()));
                    let Ok(stream) = TlsAcceptor::from(tls).accept(tcp).await else {
                        return;
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                });
            }
        });
        HoldOrigin {
            addr,
            seen,
            release,
            task,
        }
    }

    pub fn seen(&self) -> Vec<SeenFull> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until a request for `path` has arrived.
    pub async fn wait_for_path(&self, path: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.seen().iter().any(|s| s.path == path) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

async fn handle_hold(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<SeenFull>>>,
    release: Arc<Semaphore>,
) -> Result<Response<BoxBody>, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    if path.starts_with("/hold") {
        seen.lock().unwrap().push(SeenFull {
            method,
            path: path.clone(),
            headers,
            trailers: None,
            body: Bytes::new(),
        });
        // Delay the response headers until the test releases them.
        if let Ok(Ok(p)) = tokio::time::timeout(Duration::from_secs(60), release.acquire()).await {
            p.forget();
        }
        return Ok(Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from("released")).boxed())
            .unwrap());
    }
    let (body, trailers) = match req.into_body().collect().await {
        Ok(c) => {
            let t = c.trailers().cloned();
            (c.to_bytes(), t)
        }
        Err(_) => (Bytes::new(), None),
    };
    seen.lock().unwrap().push(SeenFull {
        method,
        path,
        headers,
        trailers,
        body,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from_static(
                br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[]}"#,
            ))
            .boxed(),
        )
        .unwrap())
}

/// A request body made of the given frames (data and trailers), in order.
pub struct FramesBody(pub VecDeque<Frame<Bytes>>);

impl FramesBody {
    pub fn data_then_trailers(data: &'static [u8], trailers: HeaderMap) -> FramesBody {
        FramesBody(VecDeque::from([
            Frame::data(Bytes::from_static(data)),
            Frame::trailers(trailers),
        ]))
    }
}

impl Body for FramesBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// How a read after a response ended.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterResponse {
    /// EOF or a reset: the peer closed the connection.
    Closed,
    /// More bytes arrived.
    Data(Vec<u8>),
    /// Nothing at all within the bound.
    StillOpen,
}

/// Reads once, bounded: did the peer close, send more, or keep quiet?
pub async fn read_after<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> AfterResponse {
    let mut buf = vec![0u8; 8192];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => AfterResponse::Closed,
        Ok(Ok(n)) => AfterResponse::Data(buf[..n].to_vec()),
        Err(_) => AfterResponse::StillOpen,
    }
}

/// Polls the ledger until a record matches `pred`, for at most `within`.
pub async fn wait_for_record(
    dir: &Path,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(r) = ledger_records(dir).into_iter().find(|r| pred(r)) {
            return Some(r);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The outcome record for `event_id`, polled for at most `within`.
pub async fn wait_for_outcome(dir: &Path, event_id: &str, within: Duration) -> Option<Value> {
    wait_for_record(dir, within, |r| {
        r["kind"] == "outcome" && r["event_id"] == event_id
    })
    .await
}

/// Every record of the ledger, one per line, for failure messages.
pub fn ledger_dump(dir: &Path) -> String {
    ledger_records(dir)
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `x-portcullis-event-id` of a raw response head.
pub fn event_id_of(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case("x-portcullis-event-id")
            .then(|| v.trim().to_owned())
    })
}

/// Rewrites the proxy's config file (`dir/portcullis.toml`) with `edit` and
/// reloads it through `RunningProxy::reload`. Panics if `edit` changed
/// nothing, or if the new policy is not in force afterwards.
pub async fn rewrite_and_reload(proxy: &TestProxy, edit: impl FnOnce(&str) -> String) {
    let path = proxy.dir.path().join("portcullis.toml");
    let old = std::fs::read_to_string(&path).unwrap();
    let new = edit(&old);
    assert_ne!(old, new, "the config edit changed nothing");
    if let Err(e) = portcullis_rules::parse_config("edited.toml", &new) {
        panic!("edited config invalid:\n{e}\n---\n{new}");
    }
    let running = proxy.proxy.as_ref().unwrap();
    let before = running.policy_generation();
    std::fs::write(&path, &new).unwrap();
    // The file watcher may get there first; either way the generation moves.
    let _ = running.reload("test").await;
    assert!(
        running.policy_generation() > before,
        "the reload did not apply a new policy generation"
    );
}

/// A valid gzip member holding `data` in one stored (uncompressed) deflate
/// block: enough to be a real `Content-Encoding: gzip` body.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 65536);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // BFINAL = 1, BTYPE = 00 (stored)
    let len = data.len() as u16;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
