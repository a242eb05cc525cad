//! The client: CONNECT (when through a proxy), TLS with SNI, then HTTP/1.1 or HTTP/2.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::roots_from_pem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::workload::Workload;

const CHAT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one word."}]}"#;

/// What a CONNECT names.
#[derive(Clone, Copy)]
pub enum Authority {
    /// `HOST:PORT`, the TLS name with this port: the proxy resolves the name.
    Host(u16),
    /// This address whatever the TLS name (a peer that cannot be told how to resolve
    /// the bench's names; the name still goes in the SNI).
    Addr(SocketAddr),
}

#[derive(Clone)]
pub struct Connect {
    pub authority: Authority,
    /// `Proxy-Authorization: Basic` value, if the proxy wants one.
    pub auth: Option<String>,
}

/// How one target is reached.
#[derive(Clone)]
pub struct Via {
    /// Where to dial: the origin, or a proxy.
    pub dial: SocketAddr,
    /// `None`: TLS straight to `dial`.
    pub connect: Option<Connect>,
    pub tls: TlsConnector,
    /// The `Host` header (Squid wants it to name the CONNECT's port).
    pub host_header: String,
}

pub async fn open(via: &Via, host: &str) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(via.dial).await?;
    tcp.set_nodelay(true)?;
    if let Some(c) = &via.connect {
        let target = match c.authority {
            Authority::Host(port) => format!("{host}:{port}"),
            Authority::Addr(a) => a.to_string(),
        };
        let auth = c.auth.as_ref().map_or(String::new(), |a| {
            format!("Proxy-Authorization: Basic {a}\r\n")
        });
        let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
        tcp.write_all(head.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut b = [0u8; 256];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut b).await?;
            if n == 0 {
                bail!("proxy closed during CONNECT");
            }
            buf.extend_from_slice(&b[..n]);
        }
        if !(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")) {
            bail!("CONNECT refused: {}", String::from_utf8_lossy(&buf));
        }
    }
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
    Ok(via.tls.connect(name, tcp).await?)
}

pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub async fn handshake(via: &Via, host: &str, h2: bool) -> Result<Sender> {
    let tls = open(via, host).await?;
    let io = TokioIo::new(tls);
    if h2 {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(s))
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(s))
    }
}

fn request(w: Workload, host: &str) -> Result<Request<Full<Bytes>>> {
    let (method, path, body) = match w {
        Workload::Big => ("GET", "/v1/big", Bytes::new()),
        Workload::Sse => ("POST", "/v1/sse", Bytes::from_static(CHAT.as_bytes())),
        _ => (
            "POST",
            "/v1/chat/completions",
            Bytes::from_static(CHAT.as_bytes()),
        ),
    };
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(body))?)
}

/// One request: (latency to the measured point, body bytes).
pub async fn one(s: &mut Sender, via: &Via, w: Workload) -> Result<(Duration, u64)> {
    let req = request(w, &via.host_header)?;
    let t = Instant::now();
    let resp = match s {
        Sender::H1(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
        Sender::H2(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
    };
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut bytes = 0u64;
    let mut first = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
            first.get_or_insert_with(|| t.elapsed());
        }
    }
    let took = match w {
        Workload::Sse => first.unwrap_or_else(|| t.elapsed()),
        _ => t.elapsed(),
    };
    Ok((took, bytes))
}

/// A client that trusts the CA in `ca` and offers h2 or http/1.1 only.
pub fn connector(ca: &Path, h2: bool) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots_from_pem(ca))
        .with_no_client_auth();
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsConnector::from(Arc::new(cfg)))
}
