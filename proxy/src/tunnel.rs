//! Inside a CONNECT tunnel (SPEC §3 step 4): terminate TLS with a minted leaf
//! and serve HTTP/1.1 or HTTP/2, or splice raw TCP for passthrough routes.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_rules::{Decision, Host, Route};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_rustls::LazyConfigAcceptor;

use crate::audit::OutcomeBase;
use crate::body::End;
use crate::framing::FramingGuard;
use crate::identity::Identity;
use crate::pipeline::{self, Target};
use crate::server::Ctx;

/// Everything known about a tunnel once CONNECT was accepted.
pub struct Tunnel {
    pub who: Identity,
    pub listener: String,
    pub target: Target,
    /// The route the pre-check found (None when pre-denied).
    pub route: Option<Arc<Route>>,
    /// A CONNECT-time denial, answered on every request inside TLS.
    pub pre_denial: Option<Decision>,
    pub connect_event: String,
    pub peer: SocketAddr,
}

/// Terminates the client's TLS and serves the requests inside.
pub async fn intercept(ctx: Arc<Ctx>, tun: Arc<Tunnel>, upgraded: Upgraded) {
    let io = TokioIo::new(upgraded);
    let hs_timeout = ctx.limits.handshake_timeout;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(hs_timeout, acceptor).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "client did not start TLS in the tunnel");
            return;
        }
        Err(_) => {
            tracing::info!("client sent no ClientHello in time");
            return;
        }
    };
    match start.client_hello().server_name() {
        Some(sni) => match Host::parse(sni) {
            Ok(h) if h == tun.target.host => {}
            Ok(h) => {
                tracing::warn!(sni = %h, connect = %tun.target.host, "SNI does not match the CONNECT host; closing");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "unparseable SNI; closing");
                return;
            }
        },
        None => {
            tracing::info!(host = %tun.target.host, "client sent no SNI; using the CONNECT host")
        }
    }
    let leaf = match ctx.certs.get(&tun.target.host.to_string()).await {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "cannot mint a certificate; closing");
            return;
        }
    };
    let Some(config) = server_config(&ctx, leaf) else {
        return;
    };
    let tls = match tokio::time::timeout(hs_timeout, start.into_stream(config)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "client TLS handshake failed (does it trust the Portcullis CA?)");
            return;
        }
        Err(_) => {
            tracing::info!("client TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut shutdown = ctx.shutdown.clone();
    if h2 {
        let svc_ctx = ctx.clone();
        let svc_tun = tun.clone();
        let svc = service_fn(move |req| {
            let ctx = svc_ctx.clone();
            let tun = svc_tun.clone();
            async move { Ok::<_, Infallible>(pipeline::tunneled(ctx, tun, None, true, req).await) }
        });
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        let res = tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "h2 tunnel ended with an error");
        }
    } else {
        let nonce = pipeline::new_nonce();
        let guard = FramingGuard::new(tls, nonce.clone(), ctx.limits.max_header_bytes);
        let svc_ctx = ctx.clone();
        let svc_tun = tun.clone();
        let svc = service_fn(move |req| {
            let ctx = svc_ctx.clone();
            let tun = svc_tun.clone();
            let nonce = nonce.clone();
            async move {
                Ok::<_, Infallible>(pipeline::tunneled(ctx, tun, Some(nonce), false, req).await)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(ctx.limits.client_header_timeout)
            .serve_connection(TokioIo::new(guard), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let res = tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.changed() => { conn.as_mut().graceful_shutdown(); conn.await }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "h1 tunnel ended with an error");
        }
    }
}

fn server_config(ctx: &Ctx, leaf: Arc<CertifiedKey>) -> Option<Arc<ServerConfig>> {
    let builder = match ServerConfig::builder_with_provider(ctx.provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "TLS server configuration failed");
            return None;
        }
    };
    let mut cfg = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(leaf)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = ctx.session_storage.clone();
    cfg.ticketer = ctx.ticketer.clone();
    Some(Arc::new(cfg))
}

/// Serves the one leaf minted for this tunnel's host.
struct FixedCert(Arc<CertifiedKey>);

impl fmt::Debug for FixedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedCert")
    }
}

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Largest ClientHello we buffer while looking for the SNI.
const MAX_HELLO: usize = 64 * 1024;

/// Passthrough: read the ClientHello, check its SNI equals the CONNECT host,
/// then splice raw bytes to the origin (replaying the hello).
pub async fn passthrough(
    ctx: Arc<Ctx>,
    tun: Arc<Tunnel>,
    upgraded: Upgraded,
    outcome: Arc<OutcomeBase>,
) {
    let started = tokio::time::Instant::now();
    let (status, up, down, end) = splice(&ctx, &tun, upgraded).await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    outcome.finish(status, up, down, ms, end.as_str());
}

/// The passthrough splice; returns (status, bytes up, bytes down, end) for
/// the outcome record. There is no HTTP status in a splice: `None`.
async fn splice(ctx: &Ctx, tun: &Tunnel, upgraded: Upgraded) -> (Option<u16>, u64, u64, End) {
    let fail = (None, 0, 0, End::ClientAbort);
    let mut client = TokioIo::new(upgraded);
    let hello =
        match tokio::time::timeout(ctx.limits.handshake_timeout, read_client_hello(&mut client))
            .await
        {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "passthrough: no usable ClientHello; closing");
                return fail;
            }
            Err(_) => {
                tracing::info!("passthrough: ClientHello timed out");
                return fail;
            }
        };
    match hello.sni.as_deref().map(Host::parse) {
        Some(Ok(h)) if h == tun.target.host => {}
        Some(_) => {
            tracing::warn!(connect = %tun.target.host, "passthrough: SNI does not match the CONNECT host; closing");
            return fail;
        }
        None => {
            tracing::warn!(connect = %tun.target.host, "passthrough: ClientHello has no SNI; closing");
            return fail;
        }
    }
    let Some(route) = tun.route.clone() else {
        return fail;
    };
    let mut origin = match ctx
        .upstream
        .dial(&tun.target.host, tun.target.port, &route)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "passthrough: cannot reach origin");
            return (None, 0, 0, End::UpstreamError);
        }
    };
    if origin.write_all(&hello.bytes).await.is_err() {
        return (None, 0, 0, End::UpstreamError);
    }
    let hello_len = hello.bytes.len() as u64;
    match tokio::io::copy_bidirectional(&mut client, &mut origin).await {
        Ok((up, down)) => (None, up + hello_len, down, End::Complete),
        Err(e) => {
            tracing::debug!(error = %e, "passthrough tunnel ended with an error");
            (None, hello_len, 0, End::ClientAbort)
        }
    }
}

struct Hello {
    bytes: Vec<u8>,
    sni: Option<String>,
}

async fn read_client_hello<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Hello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut buf = [0u8; 4096];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before ClientHello",
            ));
        }
        let chunk = &buf[..n];
        bytes.extend_from_slice(chunk);
        if bytes.len() > MAX_HELLO {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        let mut rd: &[u8] = chunk;
        while !rd.is_empty() {
            acceptor.read_tls(&mut rd)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(Hello { bytes, sni });
            }
            Ok(None) => continue,
            Err((e, _alert)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            }
        }
    }
}
