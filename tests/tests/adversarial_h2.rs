//! HTTP/2 from the agent, HTTP/1.1 to the origin (the downgrade), raw
//! frames: smuggling attempts a well-behaved h2 library would never send are
//! reset, domain fronting in pseudo-headers is refused and recorded, an
//! oversized head gets a recorded 431, and the origin's raw bytes never hold
//! a smuggled request. Then floods: rapid reset and CONTINUATION, while
//! another tenant is served.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_tests::extra::{ledger_dump, wait_for_record};
use portcullis_tests::h2raw::{self, Outcome, RawH2};
use portcullis_tests::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const ROUTES: &str = r#"
[[routes]]
id = "openai-streamed"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]

[[routes]]
id = "anthropic-inspected"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
detectors = { injection = "block" }

[[routes]]
id = "globex"
action = "allow"
tenants = ["globex"]
hosts = ["api.anthropic.com"]
"#;

/// Copies every byte the origin reads into a shared buffer.
struct Tap<S> {
    inner: S,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.raw.lock().unwrap().extend_from_slice(&new);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/1.1-only TLS origin that keeps the raw bytes it was sent and
/// answers every request with a small JSON body.
struct TapOrigin {
    addr: std::net::SocketAddr,
    raw: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TapOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TapOrigin {
    async fn start(pki: &OriginPki) -> TapOrigin {
        let tls = pki.server_config(&[b"http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let raw2 = raw.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tls, raw) = (tls.clone(), raw2.clone());
                tokio::spawn(async move {
                    let Ok(stream) = TlsAcceptor::from(tls).accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(Tap { inner: stream, raw }), svc)
                        .await;
                });
            }
        });
        TapOrigin { addr, raw, task }
    }

    fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw.lock().unwrap()).into_owned()
    }
}

async fn setup() -> (TestProxy, TapOrigin, OriginPki) {
    let pki = OriginPki::new();
    let origin = TapOrigin::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), ROUTES);
    (TestProxy::start(&cfg, dir).await, origin, pki)
}

async fn raw_h2(
    proxy: &TestProxy,
    host: &str,
    who: (&str, &str),
) -> RawH2<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = proxy
        .connect(&format!("{host}:443"), Some(who))
        .await
        .unwrap();
    let tls = tls_client(tcp, &proxy.ca_roots, host, &[b"h2"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    RawH2::handshake(tls).await.unwrap()
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";

#[tokio::test]
async fn h2_smuggling_attempts_are_reset_and_never_reach_the_h1_origin() {
    let (proxy, origin, _pki) = setup().await;
    let a = "api.openai.com";
    let path = "/v1/chat/completions";
    let chunked_smuggle = [b"0\r\n\r\n".as_slice(), SMUGGLED].concat();
    let long_body = [b"{}".as_slice(), SMUGGLED].concat();
    // (what, header block, DATA frames (the last ends the stream), expected)
    type Case = (&'static str, Vec<u8>, Vec<Vec<u8>>, Outcome);
    // A malformed request is a stream error; bytes no header may hold end
    // the whole connection (GOAWAY), before any stream is opened.
    let reset = Outcome::Reset(h2raw::PROTOCOL_ERROR);
    let goaway = Outcome::GoAway(h2raw::PROTOCOL_ERROR);
    let post = |extra: &[(&[u8], &[u8])]| h2raw::request_block("POST", a, path, extra);
    let cases: Vec<Case> = vec![
        (
            "DATA longer than content-length",
            post(&[(b"content-length", b"2")]),
            vec![long_body.clone()],
            reset.clone(),
        ),
        (
            "DATA shorter than content-length",
            post(&[(b"content-length", b"100")]),
            vec![b"{}".to_vec()],
            reset.clone(),
        ),
        (
            "content-length stated twice, differently",
            post(&[(b"content-length", b"2"), (b"content-length", b"52")]),
            vec![b"{}".to_vec()],
            reset.clone(),
        ),
        (
            "transfer-encoding: chunked",
            post(&[(b"transfer-encoding", b"chunked")]),
            vec![chunked_smuggle.clone()],
            reset.clone(),
        ),
        (
            "CRLF in a header value",
            post(&[(b"x-note", b"a\r\nTransfer-Encoding: chunked")]),
            vec![chunked_smuggle.clone()],
            goaway.clone(),
        ),
        (
            "LF in a header value",
            post(&[(b"x-note", b"a\nContent-Length: 0")]),
            vec![long_body.clone()],
            goaway.clone(),
        ),
        (
            "CRLF in :path",
            h2raw::request_block(
                "GET",
                a,
                "/v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\nGET /smuggled",
                &[],
            ),
            vec![],
            reset.clone(),
        ),
        (
            "NUL in a header value",
            post(&[(b"x-note", b"a\0b")]),
            vec![b"{}".to_vec()],
            goaway.clone(),
        ),
        (
            "uppercase header name",
            post(&[(b"X-Note", b"a")]),
            vec![b"{}".to_vec()],
            goaway.clone(),
        ),
        (
            "space in a header name",
            post(&[(b"x note", b"a")]),
            vec![b"{}".to_vec()],
            goaway.clone(),
        ),
        (
            "connection: keep-alive",
            post(&[(b"connection", b"keep-alive")]),
            vec![b"{}".to_vec()],
            reset.clone(),
        ),
        (
            "upgrade: h2c",
            post(&[(b"upgrade", b"h2c")]),
            vec![b"{}".to_vec()],
            reset.clone(),
        ),
        (
            "te: chunked",
            post(&[(b"te", b"chunked")]),
            vec![b"{}".to_vec()],
            reset.clone(),
        ),
        (
            "two :path pseudo-headers",
            h2raw::block(&[
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", a.as_bytes()),
                (b":path", b"/v1/models"),
                (b":path", b"/smuggled"),
            ]),
            vec![],
            reset.clone(),
        ),
        (
            "a pseudo-header after a regular one",
            h2raw::block(&[
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b"x-a", b"1"),
                (b":authority", a.as_bytes()),
                (b":path", b"/smuggled"),
            ]),
            vec![],
            reset.clone(),
        ),
        (
            "an unknown pseudo-header",
            h2raw::request_block("GET", a, "/v1/models", &[(b":smuggle", b"1")]),
            vec![],
            goaway.clone(),
        ),
        (
            "no :path",
            h2raw::block(&[
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", a.as_bytes()),
            ]),
            vec![],
            reset.clone(),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, block, data, expected) in &cases {
        let mut c = raw_h2(&proxy, a, (AGENT, TOKEN)).await;
        c.headers(1, block, data.is_empty()).await.unwrap();
        for (i, d) in data.iter().enumerate() {
            let _ = c.data(1, d, i + 1 == data.len()).await;
        }
        let got = c.outcome(1, Duration::from_secs(10)).await;
        if &got != expected {
            wrong.push(format!("{what}: got {got:?}, expected {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The same connection kind carries an honest request to the h1 origin.
    let mut c = raw_h2(&proxy, a, (AGENT, TOKEN)).await;
    c.headers(1, &post(&[(b"content-length", b"2")]), false)
        .await
        .unwrap();
    c.data(1, b"{}", true).await.unwrap();
    assert_eq!(
        c.outcome(1, Duration::from_secs(10)).await,
        Outcome::Status(200)
    );
    let raw = origin.raw_text();
    assert!(
        raw.contains("POST /v1/chat/completions HTTP/1.1\r\n"),
        "the request did not go to the origin over HTTP/1.1:\n{raw}"
    );
    assert!(
        !raw.contains("smuggled"),
        "the origin saw a smuggled request:\n{raw}"
    );
    assert!(
        !raw.to_ascii_lowercase().contains("transfer-encoding"),
        "{raw}"
    );
    assert_eq!(
        raw.matches("HTTP/1.1\r\n").count(),
        1,
        "the origin got more than the honest request:\n{raw}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn h2_authority_fronting_gets_421_and_a_record_and_an_oversized_head_a_recorded_431() {
    let (proxy, origin, _pki) = setup().await;
    let a = "api.openai.com";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            ":authority for another host",
            h2raw::request_block("GET", "evil.test", "/v1/models", &[]),
            421,
            "host_mismatch",
        ),
        (
            "host header for another host",
            h2raw::request_block("GET", a, "/v1/models", &[(b"host", b"evil.test")]),
            421,
            "host_mismatch",
        ),
        (
            ":authority on another port",
            h2raw::request_block("GET", "api.openai.com:8443", "/v1/models", &[]),
            421,
            "host_mismatch",
        ),
        (
            "head over max_header_bytes",
            h2raw::request_block(
                "GET",
                a,
                "/v1/models",
                &[(b"x-big", "a".repeat(70_000).as_bytes())],
            ),
            431,
            "bad_framing",
        ),
    ];
    for (i, (what, block, status, reason)) in cases.iter().enumerate() {
        let mut c = raw_h2(&proxy, a, (AGENT, TOKEN)).await;
        // A 70 KB block needs CONTINUATION frames (max frame size 16 KiB).
        let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
        for (j, chunk) in chunks.iter().enumerate() {
            let last = j + 1 == chunks.len();
            let (ty, flags) = match (j, last) {
                (0, true) => (h2raw::HEADERS, h2raw::END_HEADERS | h2raw::END_STREAM),
                (0, false) => (h2raw::HEADERS, h2raw::END_STREAM),
                (_, true) => (h2raw::CONTINUATION, h2raw::END_HEADERS),
                (_, false) => (h2raw::CONTINUATION, 0),
            };
            c.send(&h2raw::frame(ty, flags, 1, chunk)).await.unwrap();
        }
        let got = c.outcome(1, Duration::from_secs(10)).await;
        assert_eq!(got, Outcome::Status(*status), "{what}");
        let body = c.body(1, Duration::from_secs(5)).await;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(json["error"]["code"], *reason, "{what}: {json}");
        let event = json["error"]["event_id"].as_str().unwrap().to_owned();
        let rec = wait_for_record(&proxy.ledger_dir, Duration::from_secs(5), |r| {
            r["kind"] == "decision" && r["event_id"] == event.as_str()
        })
        .await;
        let rec =
            rec.unwrap_or_else(|| panic!("{what}: no record\n{}", ledger_dump(&proxy.ledger_dir)));
        assert_eq!(rec["reason"], *reason, "{what} (case {i})");
        assert_eq!(rec["decision"], "deny");
        assert_eq!(rec["agent"], AGENT);
    }
    assert!(origin.raw_text().is_empty(), "{}", origin.raw_text());
    proxy.shutdown().await;
}

/// One small request of the other tenant on its own connection.
async fn other_tenant_is_served(proxy: &TestProxy) {
    let tls = proxy
        .connect("api.anthropic.com:443", Some((OTHER_AGENT, OTHER_TOKEN)))
        .await
        .unwrap();
    let tls = tls_client(tls, &proxy.ca_roots, "api.anthropic.com", &[b"http/1.1"])
        .await
        .unwrap();
    let mut tls = tls;
    use tokio::io::AsyncWriteExt;
    tls.write_all(
        b"GET /v1/models HTTP/1.1\r\nHost: api.anthropic.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), read_response(&mut tls))
        .await
        .expect("the other tenant's request hung during the flood");
    assert_eq!(resp.status, 200, "{}", resp.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_off_while_another_tenant_is_served() {
    let (proxy, _origin, _pki) = setup().await;
    let proxy = Arc::new(proxy);
    let flood = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut c = raw_h2(&proxy, "api.anthropic.com", (AGENT, TOKEN)).await;
            let block = h2raw::request_block("GET", "api.anthropic.com", "/v1/models", &[]);
            let mut sent = 0u32;
            // HEADERS then RST_STREAM(CANCEL), as fast as the socket takes them.
            for i in 0..20_000u32 {
                let id = 2 * i + 1;
                let mut burst = h2raw::frame(
                    h2raw::HEADERS,
                    h2raw::END_HEADERS | h2raw::END_STREAM,
                    id,
                    &block,
                );
                burst.extend(h2raw::frame(
                    h2raw::RST_STREAM,
                    0,
                    id,
                    &h2raw::CANCEL.to_be_bytes(),
                ));
                if c.send(&burst).await.is_err() {
                    break;
                }
                sent += 1;
            }
            // The proxy must end this connection: GOAWAY, then close.
            let mut goaway = None;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while tokio::time::Instant::now() < deadline {
                match c.next_frame(Duration::from_secs(5)).await {
                    Some(f) if f.ty == h2raw::GOAWAY => {
                        goaway = Some(u32::from_be_bytes([
                            f.payload[4],
                            f.payload[5],
                            f.payload[6],
                            f.payload[7],
                        ]));
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            (sent, goaway)
        })
    };
    // Meanwhile the other tenant keeps working.
    for _ in 0..5 {
        other_tenant_is_served(&proxy).await;
    }
    let (sent, goaway) = tokio::time::timeout(Duration::from_secs(180), flood)
        .await
        .expect("the flood task hung")
        .unwrap();
    assert_eq!(
        goaway,
        Some(h2raw::ENHANCE_YOUR_CALM),
        "the flood connection was not told to calm down (sent {sent} resets)"
    );
    other_tenant_is_served(&proxy).await;
    let proxy = Arc::into_inner(proxy).unwrap();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_while_another_tenant_is_served() {
    let (proxy, _origin, _pki) = setup().await;
    let proxy = Arc::new(proxy);
    let flood = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut c = raw_h2(&proxy, "api.anthropic.com", (AGENT, TOKEN)).await;
            let block = h2raw::request_block("GET", "api.anthropic.com", "/v1/models", &[]);
            c.send(&h2raw::frame(h2raw::HEADERS, h2raw::END_STREAM, 1, &block))
                .await
                .unwrap();
            // Up to 256 MiB of header block that never ends.
            let junk = h2raw::block(&[(b"x-flood", &[b'a'; 16_000][..])]);
            let frame = h2raw::frame(h2raw::CONTINUATION, 0, 1, &junk);
            let mut sent = 0usize;
            for _ in 0..16_000 {
                if c.send(&frame).await.is_err() {
                    break;
                }
                sent += frame.len();
            }
            let mut ended = false;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while tokio::time::Instant::now() < deadline {
                match c.next_frame(Duration::from_secs(5)).await {
                    Some(f) if f.ty == h2raw::GOAWAY => ended = true,
                    Some(_) => {}
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            (sent, ended)
        })
    };
    for _ in 0..5 {
        other_tenant_is_served(&proxy).await;
    }
    let (sent, ended) = tokio::time::timeout(Duration::from_secs(180), flood)
        .await
        .expect("the flood task hung")
        .unwrap();
    assert!(ended, "the CONTINUATION flood connection is still open");
    assert!(
        sent < 16_000 * 16_020,
        "the proxy swallowed all {sent} bytes of a header block that never ends"
    );
    other_tenant_is_served(&proxy).await;
    let proxy = Arc::into_inner(proxy).unwrap();
    proxy.shutdown().await;
}
