//! The gateway listener (SPEC §13): for SDKs that cannot be given a CA, a
//! plain-HTTP base URL. `http://host:8081/{provider}/…` is sent to that
//! provider's API over verified TLS, and the agent's token arrives where the
//! provider key would. From there it is the same request driver.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::ListenerInfo;
use crate::ctx::Ctx;
use crate::flow::{new_nonce, ConnSlot, Entry, Flow, Phase, Wire};
use crate::http::framing::FramingGuard;
use crate::http::headers::{close_unless_switched, Asked};
use crate::pipeline;
use crate::rescue::record_connection_refusal;

pub async fn serve(
    ctx: Arc<Ctx>,
    info: Arc<ListenerInfo>,
    tcp: TcpStream,
    slot: Arc<ConnSlot>,
    span: tracing::Span,
) {
    async move {
        let nonce = new_nonce();
        let guard = FramingGuard::new(tcp, nonce.clone(), ctx.limits.max_header_bytes);
        let partial_head = guard.partial_head();
        let flow = Arc::new(Flow {
            listener: info.name.clone(),
            entry: Entry::Gateway {
                auth: info.auth.clone(),
            },
            wire: Wire::Http1 { nonce },
            slot,
        });
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
            .serve_connection(TokioIo::new(guard), svc);
        let res = serve_with_drain!(
            conn,
            ctx.reached(Phase::Draining),
            ctx.reached(Phase::Closing)
        );
        if let Err(e) = res {
            tracing::debug!(error = %e, "gateway connection ended with an error");
            record_connection_refusal(
                &ctx,
                &info.name,
                None,
                &e,
                partial_head.load(std::sync::atomic::Ordering::Relaxed),
            )
            .await;
        }
    }
    .instrument(span)
    .await
}
