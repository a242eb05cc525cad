//! The forward listener (SPEC §3 steps 1–4): one client TCP connection that
//! speaks HTTP/1 to us as a proxy. `CONNECT host:port` opens a tunnel; every
//! other request (absolute-form `http://`, or anything malformed) goes to the
//! request driver.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_rules::{split_host_port, Decision, Mode, Reason};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::ListenerInfo;
use crate::ctx::Ctx;
use crate::flow::Phase;
use crate::flow::{new_nonce, ConnSlot, Entry, Flow, Scheme, Target, TunnelVerdict, Wire};
use crate::http::body::{empty, ProxyBody};
use crate::http::framing::FramingGuard;
use crate::http::headers::{close_unless_switched, Asked, HDR_EVENT_ID};
use crate::identity::{identify, Identity};
use crate::pipeline;
use crate::policy::PolicySnapshot;
use crate::record::{OutcomeGuard, RequestRecord};
use crate::rescue::{ledger_unavailable, record_connection_refusal, rescue, Refusal};
use crate::tls::{self, Tunnel};

/// Serves one accepted client connection until it closes.
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
            entry: Entry::Plain {
                auth: info.auth.clone(),
            },
            wire: Wire::Http1 { nonce },
            slot,
        });
        let svc_ctx = ctx.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let ctx = svc_ctx.clone();
            let flow = flow.clone();
            async move {
                let asked = Asked::of(&req);
                let mut resp = if req.method() == Method::CONNECT {
                    connect(ctx, flow, req).await
                } else {
                    pipeline::drive(ctx, flow, req).await
                };
                close_unless_switched(asked, &mut resp);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            // Slowloris guard: the whole head must arrive within this time.
            .header_read_timeout(ctx.limits.client_header_timeout)
            .serve_connection(TokioIo::new(guard), svc)
            .with_upgrades();
        let res = serve_with_drain!(
            conn,
            ctx.reached(Phase::Draining),
            ctx.reached(Phase::Closing)
        );
        if let Err(e) = res {
            tracing::debug!(error = %e, "client connection ended with an error");
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

/// CONNECT: authenticate, pre-check the destination, record the verdict,
/// answer 200 and hand the tunnel to interception or a passthrough splice.
async fn connect(
    ctx: Arc<Ctx>,
    flow: Arc<Flow>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let snap = ctx.policy.load();
    let mut rec = RequestRecord::new(&snap, &flow.listener);
    rec.peer = Some(flow.slot.peer());
    rec.method = Some(Method::CONNECT.as_str().to_owned());
    let tunnel = match precheck(&flow, &snap, &mut rec, &req) {
        Ok(t) => t,
        // A refused CONNECT closes: the bytes after it were meant for a tunnel.
        Err(refusal) => return rescue(&ctx, &mut rec, refusal.close()).await,
    };
    if let Err(refusal) = super::denied_leaf_budget(&ctx, &tunnel) {
        return rescue(&ctx, &mut rec, refusal.close()).await;
    }
    // One agent cannot take every connection slot.
    let Some(agent_slot) = ctx
        .agent_conns
        .take(&tunnel.who.agent, ctx.limits.max_connections_per_agent)
    else {
        let refusal = Refusal::deny(Reason::ConnectionLimit)
            .retry_after(std::time::Duration::from_secs(1))
            .close();
        return rescue(&ctx, &mut rec, refusal).await;
    };
    if rec
        .commit(&ctx.ledger, &ctx.metrics, &ctx.webhooks)
        .await
        .is_err()
    {
        return rescue(&ctx, &mut rec, ledger_unavailable()).await;
    }
    // A spliced tunnel has no requests of its own to record: its outcome is
    // the CONNECT's.
    let outcome = matches!(tunnel.verdict, TunnelVerdict::Passthrough(_))
        .then(|| OutcomeGuard::new(&rec, &ctx.ledger, &ctx.outcomes, &ctx.phase, &ctx.metrics));
    let on_upgrade = hyper::upgrade::on(&mut req);
    let slot = flow.slot.clone();
    let task_ctx = ctx.clone();
    tokio::spawn(
        async move {
            let _agent_slot = agent_slot;
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "CONNECT upgrade failed");
                    return;
                }
            };
            match outcome {
                Some(outcome) => {
                    tls::passthrough(task_ctx, tunnel, TokioIo::new(upgraded), outcome).await
                }
                None => tls::intercept(task_ctx, tunnel, TokioIo::new(upgraded), slot).await,
            }
        }
        .instrument(tracing::Span::current()),
    );
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    if let Ok(v) = http::HeaderValue::from_str(&rec.event_id) {
        resp.headers_mut().insert(HDR_EVENT_ID, v);
    }
    resp
}

/// SPEC §3 steps 2–3 for a CONNECT. A denial on port 443 still opens the
/// tunnel (answered inside TLS, so the agent's SDK can read the reason);
/// elsewhere it refuses the CONNECT itself.
fn precheck(
    flow: &Flow,
    snap: &PolicySnapshot,
    rec: &mut RequestRecord,
    req: &Request<Incoming>,
) -> Result<Tunnel, Refusal> {
    let Entry::Plain { auth } = &flow.entry else {
        return Err(Refusal::deny(Reason::BadRequest).detail("CONNECT inside a tunnel"));
    };
    let who: Identity = identify(&snap.policy, auth, req.headers())
        .ok_or_else(|| Refusal::deny(Reason::AuthFailed))?;
    rec.who = Some(who.clone());
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    // CONNECT needs an explicit port (RFC 9110 §9.3.6).
    let (host, port) = match split_host_port(authority, 0) {
        Ok((_, 0)) => Err("CONNECT needs host:port".to_owned()),
        Ok(hp) => Ok(hp),
        Err(e) => Err(format!("bad CONNECT target: {e}")),
    }
    .map_err(|detail| Refusal::deny(Reason::BadRequest).detail(detail))?;
    let target = Target {
        host,
        port,
        scheme: Scheme::Https,
    };
    rec.target = Some(target.clone());
    let verdict = super::route_for(snap, &who, &target);
    let verdict = match verdict {
        Ok(route) => {
            rec.decision = Decision::allow(route.clone());
            match route.mode {
                Mode::Passthrough => TunnelVerdict::Passthrough(route),
                _ => TunnelVerdict::Intercept,
            }
        }
        // Not TLS we can speak for: refuse the tunnel itself.
        Err(d) if port != 443 => return Err(Refusal::new(d)),
        Err(d) => {
            rec.decision = d.clone();
            TunnelVerdict::Refused(d)
        }
    };
    Ok(Tunnel {
        listener: flow.listener.clone(),
        who,
        target,
        verdict,
    })
}
