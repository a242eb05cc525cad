//! Real TLS origins on loopback that pose as model providers, and their private CA.

use super::*;

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
