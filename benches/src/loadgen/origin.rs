//! The TLS origin on loopback, posing as `api.openai.com` (and, for the peers'
//! mint runs, every `*.bench.test` host: they connect upstream before they mint).

use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::OriginPki;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub const HOST: &str = "api.openai.com";
pub const MINT_DOMAIN: &str = "bench.test";
pub const BIG: usize = 64 * 1024;

pub struct Origin {
    pub addr: SocketAddr,
    pub pki: OriginPki,
}

impl Origin {
    pub async fn start() -> Result<Origin> {
        let wildcard = format!("*.{MINT_DOMAIN}");
        let pki = OriginPki::for_names(&[HOST, &wildcard, "localhost"]);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(pki.server_config(&[b"h2", b"http/1.1"]));
        tokio::spawn(serve(listener, acceptor));
        Ok(Origin { addr, pki })
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    let big = Bytes::from(vec![b'x'; BIG]);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, big) = (acceptor.clone(), big.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let big = big.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req, big).await) }
            });
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            }
        });
    }
}

async fn answer(req: Request<Incoming>, big: Bytes) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let _ = req.into_body().collect().await;
    let (ctype, body) = match path.as_str() {
        "/v1/big" => ("application/octet-stream", big),
        "/v1/sse" => (
            "text/event-stream",
            Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n"),
        ),
        _ => (
            "application/json",
            Bytes::from_static(br#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#),
        ),
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    resp
}
