//! End-to-end test support for Portcullis: real TLS origins on loopback that
//! pose as model providers, an in-process proxy, and raw clients.
//!
//! Everything binds `127.0.0.1:0`. The proxy reaches the origins only through
//! explicit opt-ins: `[upstream] resolve` pins (e.g. `api.openai.com:443` to
//! the origin's port) plus the origin's private CA in `extra_ca`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)] // test support: a failed setup should fail loudly

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use portcullis::RunningProxy;
pub mod extra;
pub mod h2raw;
pub mod netns;
pub mod redis;

/// Default agent credentials used by [`proxy_config`].
pub const AGENT: &str = "research-bot";
pub const TOKEN: &str = "s3cret-agent-token";
/// An agent of another tenant.
pub const OTHER_AGENT: &str = "other-bot";
pub const OTHER_TOKEN: &str = "other-agent-token";

/// A provider-key-shaped secret the `/leak` endpoint streams back.
/// The admin API's bearer token in test configs.
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const LEAKED_KEY: &str = "sk-proj-Zq7RmV2xLk9PbT4cWn8YhJ3sDf6GuA1eQo5Ir0Xt";

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A private CA and a leaf for the hosts the origins pose as.
pub struct OriginPki {
    pub dir: tempfile::TempDir,
    pub ca_pem_path: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

pub const ORIGIN_NAMES: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "localhost",
    "origin.test",
];

impl OriginPki {
    pub fn new() -> OriginPki {
        Self::for_names(ORIGIN_NAMES)
    }

    pub fn for_names(names: &[&str]) -> OriginPki {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut cap = CertificateParams::new(Vec::<String>::new()).unwrap();
        cap.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        cap.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        cap.distinguished_name
            .push(DnType::CommonName, "Test Origin CA");
        let ca_cert = cap.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(cap, ca_key);
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut lp =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        lp.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::V4(
                std::net::Ipv4Addr::LOCALHOST,
            )));
        lp.distinguished_name.push(DnType::CommonName, names[0]);
        let leaf = lp.signed_by(&leaf_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_pem_path = dir.path().join("origin-ca.pem");
        std::fs::write(&ca_pem_path, ca_cert.pem()).unwrap();
        OriginPki {
            dir,
            ca_pem_path,
            chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            key_der: leaf_key.serialize_der(),
        }
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

impl Default for OriginPki {
    fn default() -> Self {
        Self::new()
    }
}

/// What the origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub version: http::Version,
    pub body: Bytes,
}

/// A fake provider API on loopback, speaking TLS (h2 + http/1.1) or plain HTTP.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Each permit lets `/sse-paced` send its next event.
    pub gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub async fn start_tls(pki: &OriginPki) -> Origin {
        Self::start(Some(pki.server_config(&[b"h2", b"http/1.1"]))).await
    }

    pub async fn start_plain() -> Origin {
        Self::start(None).await
    }

    /// A TLS origin on a given address (a test network namespace's veth).
    pub async fn start_tls_on(pki: &OriginPki, bind: SocketAddr) -> Origin {
        Self::start_on(Some(pki.server_config(&[b"h2", b"http/1.1"])), bind).await
    }

    pub async fn start_plain_on(bind: SocketAddr) -> Origin {
        Self::start_on(None, bind).await
    }

    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Origin {
        Self::start_on(tls, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    async fn start_on(tls: Option<Arc<rustls::ServerConfig>>, bind: SocketAddr) -> Origin {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (s2, g2) = (seen.clone(), gate.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (seen, gate, tls) = (s2.clone(), g2.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle_origin(req, seen.clone(), gate.clone()));
                    match tls {
                        Some(cfg) => {
                            let Ok(stream) = TlsAcceptor::from(cfg).accept(tcp).await else {
                                return;
                            };
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                let _ =
                                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                        .serve_connection(TokioIo::new(stream), svc)
                                        .await;
                            } else {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .with_upgrades()
                                    .await;
                            }
                        }
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
            }
        });
        Origin {
            addr,
            seen,
            gate,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A response body fed by a channel, so the origin controls pacing.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).boxed()
}

fn json(v: serde_json::Value) -> Response<BoxBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full(v.to_string()))
        .unwrap()
}

fn sse(events: Vec<String>) -> Response<BoxBody> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for e in events {
            if tx.send(Bytes::from(e)).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

async fn handle_origin(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Semaphore>,
) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().as_str().to_owned();
    let headers = req.headers().clone();
    let version = req.version();
    let upgrade = hyper::upgrade::on(&mut req);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        version,
        body: body.clone(),
    });
    let body_json: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let stream = body_json["stream"].as_bool().unwrap_or(false);
    let model = body_json["model"].as_str().unwrap_or("unknown").to_owned();
    let resp = match (method.as_str(), path.as_str()) {
        ("POST", "/v1/chat/completions") if stream => {
            let mut ev = Vec::new();
            for (i, word) in ["Hello", " from", " the", " origin"].iter().enumerate() {
                let chunk = serde_json::json!({
                    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": if i == 0 {serde_json::json!({"role": "assistant", "content": word})} else {serde_json::json!({"content": word})}, "finish_reason": null}]
                });
                ev.push(format!("data: {chunk}\n\n"));
            }
            let last = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
            ev.push(format!("data: {last}\n\n"));
            ev.push("data: [DONE]\n\n".into());
            sse(ev)
        }
        ("POST", "/v1/chat/completions") => json(serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the origin"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        })),
        ("POST", "/v1/messages") if stream => {
            let events = [
                (
                    "message_start",
                    serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": model, "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 7, "output_tokens": 1}}}),
                ),
                (
                    "content_block_start",
                    serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
                ),
                (
                    "content_block_delta",
                    serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from the origin"}}),
                ),
                (
                    "content_block_stop",
                    serde_json::json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta",
                    serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}}),
                ),
                ("message_stop", serde_json::json!({"type": "message_stop"})),
            ];
            sse(events
                .iter()
                .map(|(n, d)| format!("event: {n}\ndata: {d}\n\n"))
                .collect())
        }
        ("POST", "/v1/messages") => json(serde_json::json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello from the origin"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 7, "output_tokens": 5}
        })),
        ("GET", "/sse-paced") => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..5 {
                    if tx
                        .send(Bytes::from(format!("data: event-{i}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if i < 4 {
                        // Wait until the test has seen this event at the client.
                        match gate.acquire().await {
                            Ok(p) => p.forget(),
                            Err(_) => return,
                        }
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChannelBody(rx).boxed())
                .unwrap()
        }
        ("GET", "/ws") => {
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(Bytes::new()))
                .unwrap()
        }
        ("GET", "/v1/echo-key") => {
            // Echoes the credential the origin received, split across two SSE
            // chunks: what a misbehaving upstream could send back to the agent.
            let auth = headers
                .get("authorization")
                .or_else(|| headers.get("x-api-key"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let cut = auth.len() / 2;
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Bytes::from(format!("data: {{\"saw\":\"{}", &auth[..cut])))
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx
                    .send(Bytes::from(format!("{}\"}}\n\n", &auth[cut..])))
                    .await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChannelBody(rx).boxed())
                .unwrap()
        }
        ("GET", "/leak") => {
            // A key-shaped secret split across two chunks of an SSE stream.
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Bytes::from(format!(
                        "data: {{\"text\":\"here: {}",
                        &LEAKED_KEY[..20]
                    )))
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx
                    .send(Bytes::from(format!("{} done\"}}\n\n", &LEAKED_KEY[20..])))
                    .await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChannelBody(rx).boxed())
                .unwrap()
        }
        ("GET", "/forge") => Response::builder()
            .header("x-portcullis-decision", "allow")
            .body(full("forged"))
            .unwrap(),
        _ => Response::builder()
            .header("content-type", "text/plain")
            .header("x-origin-path", path.clone())
            .body(full(format!("origin saw {method} {path}")))
            .unwrap(),
    };
    Ok(resp)
}

/// A proxy config for tests: one forward listener on 127.0.0.1:0 with basic
/// auth, two tenants, resolve pins for the provider names to `origin`, and
/// the origin CA trusted. `routes` is appended verbatim.
pub fn proxy_config(origin: SocketAddr, pki: &OriginPki, ca_dir: &Path, routes: &str) -> String {
    format!(
        r#"version = 1

[[listeners]]
name = "forward"
bind = "127.0.0.1:0"
auth = "basic"

[admin]
bind = "127.0.0.1:0"
token_sha256 = "{admin_token}"

[ca]
dir = "{ca}"

[upstream]
extra_ca = ["{origin_ca}"]
resolve = ["api.openai.com:443:{origin}", "api.anthropic.com:443:{origin}", "origin.test:443:{origin}"]
connect_timeout = "5s"
tls_timeout = "5s"
response_header_timeout = "10s"

[limits]
client_header_timeout = "2s"
shutdown_grace = "5s"

[[tenants]]
id = "acme"

[[tenants]]
id = "globex"

[[agents]]
id = "{AGENT}"
tenant = "acme"
token_sha256 = "{h1}"

[[agents]]
id = "{OTHER_AGENT}"
tenant = "globex"
token_sha256 = "{h2}"

{routes}
"#,
        ca = ca_dir.display(),
        origin_ca = pki.ca_pem_path.display(),
        h1 = sha256_hex(TOKEN),
        h2 = sha256_hex(OTHER_TOKEN),
        admin_token = sha256_hex(ADMIN_TOKEN),
    )
}

/// The routes most tests use.
pub const DEFAULT_ROUTES: &str = r#"
[[routes]]
id = "acme-openai"
action = "allow"
tenants = ["acme"]
hosts = ["api.openai.com"]
methods = ["POST", "GET"]
paths = ["/v1/chat/completions", "/sse-paced", "/echo", "/forge", "/ws-denied"]

[[routes]]
id = "acme-anthropic"
action = "allow"
tenants = ["acme"]
hosts = ["api.anthropic.com"]
paths = ["/v1/messages", "/v1/*"]

[[routes]]
id = "acme-origin-ws"
action = "allow"
tenants = ["acme"]
hosts = ["origin.test"]
websocket = true

[[routes]]
id = "globex-anthropic"
action = "allow"
tenants = ["globex"]
hosts = ["api.anthropic.com"]
"#;

/// A running in-process proxy plus the files it uses.
pub struct TestProxy {
    pub proxy: Option<RunningProxy>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub ledger_dir: PathBuf,
    pub ca_pem_path: PathBuf,
    pub ca_roots: rustls::RootCertStore,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    pub async fn start(config_text: &str, dir: tempfile::TempDir) -> TestProxy {
        TestProxy::start_with_master_key(config_text, dir, None).await
    }

    /// [`TestProxy::start`] with the vault's master key (what `PORTCULLIS_MASTER_KEY` gives the binary).
    pub async fn start_with_master_key(
        config_text: &str,
        dir: tempfile::TempDir,
        master_key: Option<&str>,
    ) -> TestProxy {
        // PORTCULLIS_LOG=debug shows the proxy's logs in failing tests.
        if let Ok(filter) = std::env::var("PORTCULLIS_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let config = match portcullis_rules::parse_config("test.toml", config_text) {
            Ok(c) => c,
            Err(e) => panic!("test config invalid:\n{e}\n---\n{config_text}"),
        };
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, config_text).unwrap();
        let proxy = portcullis::start(portcullis::Settings {
            config,
            base_dir: dir.path().to_path_buf(),
            config_path: Some(config_path),
            master_key: master_key.map(|k| zeroize::Zeroizing::new(k.to_owned())),
        })
        .await
        .unwrap();
        let addr = proxy.listeners[0].1;
        let admin_addr = proxy.admin_addr;
        let ledger_dir = proxy.ledger_dir.clone();
        let ca_pem_path = proxy.ca_cert_path.clone();
        let ca_roots = roots_from_pem(&ca_pem_path);
        TestProxy {
            proxy: Some(proxy),
            addr,
            admin_addr,
            ledger_dir,
            ca_pem_path,
            ca_roots,
            dir,
        }
    }

    /// Standard setup: a TLS origin and a proxy with `routes`.
    pub async fn with_origin(routes: &str) -> (TestProxy, Origin, OriginPki) {
        let pki = OriginPki::new();
        let origin = Origin::start_tls(&pki).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = proxy_config(origin.addr, &pki, &dir.path().join("ca"), routes);
        let proxy = TestProxy::start(&cfg, dir).await;
        (proxy, origin, pki)
    }

    /// One request to the admin API, with `Authorization: Bearer token` if given.
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> RawResponse {
        let mut s = TcpStream::connect(self.admin_addr).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_response(&mut s).await
    }

    /// A POST to the admin API with a JSON body and the test admin token.
    pub async fn admin_post(&self, path: &str, body: &str) -> RawResponse {
        let mut s = TcpStream::connect(self.admin_addr).await.unwrap();
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_response(&mut s).await
    }

    pub fn proxy_url(&self, agent: &str, token: &str) -> String {
        format!("http://{agent}:{token}@{}", self.addr)
    }

    /// Stops the proxy gracefully and hands back its directory (CA, ledger),
    /// which lives until the caller drops it.
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
        self.dir
    }

    /// CONNECT through the proxy; returns the stream after `200` or the raw
    /// refusal response text.
    pub async fn connect(
        &self,
        target: &str,
        auth: Option<(&str, &str)>,
    ) -> Result<TcpStream, String> {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((a, t)) = auth {
            req.push_str(&format!("Proxy-Authorization: Basic {}\r\n", basic(a, t)));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        if head.starts_with("HTTP/1.1 200") {
            Ok(s)
        } else {
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
            Err(format!("{head}{}", String::from_utf8_lossy(&rest)))
        }
    }

    /// CONNECT + TLS (trusting the proxy CA) with the given SNI and ALPN.
    pub async fn tunnel_tls(
        &self,
        target: &str,
        sni: &str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = self.connect(target, Some((AGENT, TOKEN))).await.unwrap();
        tls_client(tcp, &self.ca_roots, sni, alpn).await.unwrap()
    }

    /// One HTTP/1.1 request through a fresh tunnel; returns the raw response.
    pub async fn h1_request(&self, target: &str, raw: &str) -> RawResponse {
        let host = target.rsplit_once(':').map(|(h, _)| h).unwrap_or(target);
        let mut tls = self.tunnel_tls(target, host, &[b"http/1.1"]).await;
        tls.write_all(raw.as_bytes()).await.unwrap();
        read_response(&mut tls).await
    }
}

/// A root store holding the certificates of a PEM file (e.g. the proxy CA).
pub fn roots_from_pem(path: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

pub fn basic(agent: &str, token: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{agent}:{token}"))
}

pub async fn tls_client(
    tcp: TcpStream,
    roots: &rustls::RootCertStore,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
}

/// Reads a response head byte by byte (so nothing after it is consumed).
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    /// The server closed the connection after this response.
    pub closed: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked), then checks
/// whether the server closed the connection.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> RawResponse {
    let mut resp = read_response_keep_open(s).await;
    let mut b = [0u8; 1];
    resp.closed = matches!(
        tokio::time::timeout(Duration::from_millis(1500), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    resp
}

/// Reads one HTTP/1.1 response and nothing after it (for pipelining).
pub async fn read_response_keep_open<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> RawResponse {
    let head = read_head(s).await;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut resp = RawResponse {
        status,
        head,
        body: Vec::new(),
        closed: false,
    };
    if let Some(len) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body)).await;
        resp.body = body;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line = read_line(s).await;
            let size =
                usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
            if size == 0 {
                let _ = read_line(s).await;
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            let _ = s.read_exact(&mut chunk).await;
            resp.body.extend_from_slice(&chunk[..size]);
        }
    }
    resp
}

async fn read_line<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(1)) => line.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// The venv Python with the pinned `openai` and `anthropic` SDKs, created by
/// the README's test command. A missing interpreter is a test failure, never
/// a skip.
/// Runs a Python script with the pinned SDKs as an agent behind `proxy`:
/// `HTTPS_PROXY` with the test agent's token, and the proxy CA trusted.
/// Returns (stdout, stderr, success).
pub fn run_python(proxy: &TestProxy, script: &str) -> (String, String, bool) {
    let out = std::process::Command::new(sdk_python())
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", proxy.dir.path())
        .env("HTTPS_PROXY", proxy.proxy_url(AGENT, TOKEN))
        .env("SSL_CERT_FILE", &proxy.ca_pem_path)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

pub fn sdk_python() -> PathBuf {
    let p = std::env::var_os("PORTCULLIS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run the README's test command (it creates the SDK venv) or set PORTCULLIS_TEST_PYTHON",
        p.display()
    );
    p
}

/// The `portcullis` binary built beside this test executable (cargo builds it
/// for the proxy crate's own CLI tests in the same `cargo test --workspace`).
pub fn portcullis_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("portcullis");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p portcullis`, or run the README's test command)",
        bin.display()
    );
    bin
}

/// Every JSON record in a ledger directory's segments, in file order.
pub fn ledger_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

/// A `portcullis run` child process, killed on drop.
pub struct ProxyProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ProxyProcess {
    /// Starts the binary with `--config FILE` and waits for its `# ready` line.
    pub fn start(config: &Path, cwd: &Path) -> ProxyProcess {
        Self::start_logging(config, cwd, "warn", std::process::Stdio::inherit())
    }

    /// Like `start`, with a log filter and where stderr (the logs) goes.
    pub fn start_logging(
        config: &Path,
        cwd: &Path,
        filter: &str,
        stderr: std::process::Stdio,
    ) -> ProxyProcess {
        Self::start_with_env(config, cwd, filter, stderr, &[])
    }

    /// Like `start_logging`, with extra environment (e.g. `PORTCULLIS_MASTER_KEY`).
    pub fn start_with_env(
        config: &Path,
        cwd: &Path,
        filter: &str,
        stderr: std::process::Stdio,
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        let mut cmd = std::process::Command::new(portcullis_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .current_dir(cwd)
            .envs(env.iter().copied())
            .env("PORTCULLIS_LOG", filter)
            .stderr(stderr);
        Self::spawn(cmd)
    }

    /// Spawns `cmd` (a `portcullis run`, possibly under a wrapper such as
    /// `unshare`) with stdout piped, and waits for its `# ready` line.
    pub fn spawn(mut cmd: std::process::Command) -> ProxyProcess {
        use std::io::BufRead;
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut addr = None;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("# listening: forward=") {
                    addr = a.parse::<SocketAddr>().ok();
                }
                if line == "# ready" {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .expect("proxy did not print its listening address and '# ready'");
        ProxyProcess { child, addr }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
