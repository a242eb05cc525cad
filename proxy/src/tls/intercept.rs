//! Interception: read the ClientHello, hold the SNI to the CONNECT host, mint
//! (or fetch) the leaf, and serve HTTP/1.1 or HTTP/2 by ALPN. Every request
//! inside goes to the request driver.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_rules::{Host, Reason};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use super::Tunnel;
use crate::ctx::Ctx;
use crate::flow::Phase;
use crate::flow::{new_nonce, ConnSlot, Entry, Flow, TunnelVerdict, Wire};
use crate::http::body::ProxyBody;
use crate::http::framing::FramingGuard;
use crate::http::headers::{close_unless_switched, Asked};
use crate::pipeline;
use crate::record::RequestRecord;
use crate::rescue::{record_connection_refusal, rescue, Refusal};

/// Concurrent h2 streams one intercepted connection may open.
pub const H2_MAX_STREAMS: u32 = 64;
/// Streams a client may reset before they are accepted, or make us reset,
/// before the connection is closed (CVE-2023-44487 style floods).
const H2_MAX_PENDING_RESETS: usize = 32;

/// Terminates the client's TLS and serves the requests inside. `io` is the
/// CONNECT tunnel, or a redirected connection with its ClientHello replayed.
pub async fn intercept<IO>(ctx: Arc<Ctx>, tun: Tunnel, io: IO, slot: Arc<ConnSlot>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
                return super::record_sni_mismatch(&ctx, &tun).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "unparseable SNI; closing");
                return super::record_sni_mismatch(&ctx, &tun).await;
            }
        },
        None => {
            tracing::info!(host = %tun.target.host, "client sent no SNI; using the CONNECT host")
        }
    }
    let host = tun.target.host.to_string();
    // A denied host's leaf never displaces a real one (see `DeniedLeaves`).
    let leaf = match &tun.verdict {
        TunnelVerdict::Refused(_) => ctx.denied_leaves.get(&host).await,
        _ => ctx.certs.get(&host).await,
    };
    let leaf = match leaf {
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
    let entry = Entry::Tunnel {
        target: tun.target,
        verdict: tun.verdict,
        who: tun.who,
    };
    if h2 {
        let flow = Arc::new(Flow {
            listener: tun.listener,
            entry,
            wire: Wire::Http2,
            slot,
        });
        let idle_slot = flow.slot.clone();
        let svc_ctx = ctx.clone();
        let svc = service_fn(move |req: hyper::Request<Incoming>| {
            let ctx = svc_ctx.clone();
            let flow = flow.clone();
            async move {
                if h2_head_size(&req) > ctx.limits.max_header_bytes {
                    return Ok::<_, Infallible>(refuse_oversized_head(&ctx, &flow, &req).await);
                }
                Ok::<_, Infallible>(pipeline::drive(ctx, flow, req).await)
            }
        });
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Each stream can hold an inspection buffer: keep what one agent
            // can open at once modest, and stop rapid-reset floods early.
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_PENDING_RESETS)
            // Twice the limit: a head between the two gets our recorded 431
            // (`refuse_oversized_head`), not the library's unrecorded one.
            .max_header_list_size(
                u32::try_from(ctx.limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
            )
            // PINGs keep a quiet connection (a held approval, a slow model) alive.
            .keep_alive_interval(Some(std::time::Duration::from_secs(20)))
            .keep_alive_timeout(std::time::Duration::from_secs(20))
            .serve_connection(TokioIo::new(tls), svc);
        // A client that answers PINGs but opens no stream is otherwise never
        // closed: hyper's h2 server has no idle timeout of its own.
        let res = serve_with_drain!(
            conn,
            ctx.reached(Phase::Draining),
            ctx.reached(Phase::Closing),
            idle: idle_slot.idle(ctx.limits.client_idle_timeout)
        );
        if let Err(e) = res {
            tracing::debug!(error = %e, "h2 tunnel ended with an error");
        }
    } else {
        serve_h1(ctx, tun.listener, entry, tls, slot).await;
    }
}

/// An h2 request head's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it
/// (RFC 9113 §6.5.2: name, value and 32 octets per field), pseudo-headers
/// included.
fn h2_head_size<B>(req: &hyper::Request<B>) -> usize {
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum();
    let uri = req.uri();
    let pseudo = req.method().as_str().len()
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, str::len)
        + 4 * 32
        + ":method:path:authority:scheme".len();
    fields + pseudo
}

/// A head over `max_header_bytes`: the same `431 bad_framing` an HTTP/1 head
/// gets, recorded.
async fn refuse_oversized_head<B>(
    ctx: &Ctx,
    flow: &Flow,
    req: &hyper::Request<B>,
) -> hyper::Response<ProxyBody> {
    let snap = ctx.policy.load();
    let mut rec = RequestRecord::new(&snap, &flow.listener);
    rec.method = Some(req.method().as_str().to_owned());
    if let Entry::Tunnel { target, who, .. } = &flow.entry {
        rec.target = Some(target.clone());
        rec.who = Some(who.clone());
    }
    let refusal = Refusal::deny(Reason::BadFraming)
        .detail("request framing rejected: head_too_large")
        .status(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    rescue(ctx, &mut rec, refusal).await
}

/// Serves HTTP/1.1 behind the framing guard: inside an intercepted tunnel, or
/// on a redirected plain-HTTP connection.
pub async fn serve_h1<IO>(
    ctx: Arc<Ctx>,
    listener: String,
    entry: Entry,
    io: IO,
    slot: Arc<ConnSlot>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let nonce = new_nonce();
    let guard = FramingGuard::new(io, nonce.clone(), ctx.limits.max_header_bytes);
    let partial_head = guard.partial_head();
    let flow = Arc::new(Flow {
        listener,
        entry,
        wire: Wire::Http1 { nonce },
        slot,
    });
    let conn_flow = flow.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let ctx = svc_ctx.clone();
        let flow = flow.clone();
        async move {
            let asked = Asked::of(&req);
            let mut resp = pipeline::drive(ctx, flow, req).await;
            close_unless_switched(asked, &mut resp);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.client_header_timeout)
        .serve_connection(TokioIo::new(guard), svc)
        .with_upgrades();
    // No idle watcher here: hyper restarts `header_read_timeout` while it
    // waits for the next head, so a quiet keep-alive connection closes then.
    let res = serve_with_drain!(
        conn,
        ctx.reached(Phase::Draining),
        ctx.reached(Phase::Closing)
    );
    if let Err(e) = res {
        tracing::debug!(error = %e, "h1 connection ended with an error");
        let tunnel = match &conn_flow.entry {
            Entry::Tunnel { target, who, .. } => Some((target, who)),
            _ => None,
        };
        let partial = partial_head.load(std::sync::atomic::Ordering::Relaxed);
        record_connection_refusal(&ctx, &conn_flow.listener, tunnel, &e, partial).await;
    }
}

fn server_config(ctx: &Ctx, leaf: Arc<CertifiedKey>) -> Option<Arc<ServerConfig>> {
    let builder = match ServerConfig::builder_with_provider(ctx.tls.provider.clone())
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
    cfg.session_storage = ctx.tls.session_storage.clone();
    cfg.ticketer = ctx.tls.ticketer.clone();
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
