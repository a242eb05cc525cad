//! The forward listener (SPEC §3 steps 1–4): one client TCP connection that
//! speaks HTTP/1 to us as a proxy. It carries `CONNECT host:port` (then a
//! tunnel) or absolute-form `http://` requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_rules::{classify_ip, split_host_port, Decision, Host, Mode, Reason};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::audit::{self, OutcomeBase, Verdict};
use crate::body::ProxyBody;
use crate::framing::FramingGuard;
use crate::identity::{identify, Identity};
use crate::pipeline::{self, Target};
use crate::rescue::{Refusal, HDR_EVENT_ID};
use crate::server::{Ctx, ListenerInfo};
use crate::tunnel::{self, Tunnel};

/// Serves one accepted client connection until it closes.
pub async fn serve(
    ctx: Arc<Ctx>,
    info: Arc<ListenerInfo>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    span: tracing::Span,
) {
    let permit = Arc::new(permit);
    async move {
        let nonce = pipeline::new_nonce();
        let guard = FramingGuard::new(tcp, nonce.clone(), ctx.limits.max_header_bytes);
        let svc_ctx = ctx.clone();
        let svc = service_fn(move |req| {
            let ctx = svc_ctx.clone();
            let info = info.clone();
            let nonce = nonce.clone();
            let permit = permit.clone();
            async move { Ok::<_, Infallible>(handle(ctx, info, nonce, peer, permit, req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            // Slowloris guard: the whole head must arrive within this time.
            .header_read_timeout(ctx.limits.client_header_timeout)
            .serve_connection(TokioIo::new(guard), svc)
            .with_upgrades();
        let mut shutdown = ctx.shutdown.clone();
        tokio::pin!(conn);
        let res = tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
    }
    .instrument(span)
    .await
}

async fn handle(
    ctx: Arc<Ctx>,
    info: Arc<ListenerInfo>,
    nonce: String,
    peer: SocketAddr,
    permit: Arc<OwnedSemaphorePermit>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let event_id = pipeline::new_event_id();
    let snap = ctx.policy.load();
    let method = req.method().as_str().to_owned();
    let anonymous = |decision| Verdict {
        event_id: &event_id,
        who: None,
        listener: &info.name,
        target: None,
        method: Some(&method),
        path: None,
        decision,
        policy: &snap,
        classification: None,
    };
    if let Some(v) = pipeline::framing_violation(&req, &nonce) {
        let d = Decision::deny(Reason::BadFraming);
        let mut vd = anonymous(&d);
        vd.method = None;
        return pipeline::refuse(&ctx, vd, pipeline::framing_refusal(v, &event_id)).await;
    }
    let Some(who) = identify(&snap.policy, &info.auth, req.headers()) else {
        let d = Decision::deny(Reason::AuthFailed);
        return pipeline::refuse(
            &ctx,
            anonymous(&d),
            Refusal::new(Reason::AuthFailed, &event_id),
        )
        .await;
    };

    if req.method() == Method::CONNECT {
        return connect(ctx, info, who, event_id, peer, permit, &mut req).await;
    }
    if req.uri().scheme_str() == Some("http") {
        return pipeline::plaintext(ctx, &info.name, who, event_id, req).await;
    }
    let detail = if req.uri().scheme_str() == Some("https") {
        "send https:// requests through CONNECT (set HTTPS_PROXY)"
    } else {
        "this is a forward proxy: send CONNECT host:port or an absolute http:// URL"
    };
    let d = Decision::deny(Reason::BadRequest);
    let mut v = anonymous(&d);
    v.who = Some(&who);
    pipeline::refuse(
        &ctx,
        v,
        Refusal::new(Reason::BadRequest, &event_id)
            .detail(detail)
            .close(),
    )
    .await
}

/// CONNECT: authenticate, pre-check the destination, answer 200 and hand the
/// tunnel to an interceptor or a passthrough splice.
async fn connect(
    ctx: Arc<Ctx>,
    info: Arc<ListenerInfo>,
    who: Identity,
    event_id: String,
    peer: SocketAddr,
    permit: Arc<OwnedSemaphorePermit>,
    req: &mut Request<Incoming>,
) -> Response<ProxyBody> {
    let snap = ctx.policy.load();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    // CONNECT needs an explicit port (RFC 9110 §9.3.6).
    let parsed = match split_host_port(&authority, 0) {
        Ok((_, 0)) => Err("CONNECT needs host:port".to_owned()),
        Ok(hp) => Ok(hp),
        Err(e) => Err(format!("bad CONNECT target: {e}")),
    };
    let (host, port) = match parsed {
        Ok(hp) => hp,
        Err(detail) => {
            let d = Decision::deny(Reason::BadRequest);
            let v = Verdict {
                event_id: &event_id,
                who: Some(&who),
                listener: &info.name,
                target: None,
                method: Some("CONNECT"),
                path: None,
                decision: &d,
                policy: &snap,
                classification: None,
            };
            return pipeline::refuse(
                &ctx,
                v,
                Refusal::new(Reason::BadRequest, &event_id)
                    .detail(detail)
                    .close(),
            )
            .await;
        }
    };
    let verdict = match snap.policy.agent(&who.agent) {
        None => Err(Decision::deny(Reason::AuthFailed)),
        Some(agent) => snap.policy.precheck(agent, &host, port),
    };
    // IP literals are checked against the SSRF table before anything else.
    let verdict = verdict.and_then(|route| match &host {
        Host::Ip(ip) => match classify_ip(*ip) {
            Some(_) if !route.allows_private(*ip) => Err(Decision::deny(Reason::SsrfBlocked)),
            _ => Ok(route),
        },
        Host::Name(_) => Ok(route),
    });
    let target = Target {
        host: host.clone(),
        port,
        tls: true,
    };
    let decision = match &verdict {
        Ok(route) => Decision::allow(route.clone()),
        Err(d) => d.clone(),
    };
    let v = Verdict {
        event_id: &event_id,
        who: Some(&who),
        listener: &info.name,
        target: Some(&target),
        method: Some("CONNECT"),
        path: None,
        decision: &decision,
        policy: &snap,
        classification: None,
    };
    if let Err(unavailable) = audit::record(&ctx, v).await {
        return unavailable.close().into_response();
    }
    let (route, pre_denial) = match verdict {
        Ok(route) => (Some(route), None),
        Err(decision) => {
            if port != 443 {
                // Not TLS we can speak for: refuse the tunnel itself.
                return Refusal::new(decision.reason, event_id)
                    .close()
                    .into_response();
            }
            // Answer inside TLS so the agent's SDK shows the reason (SPEC §4.3).
            (None, Some(decision))
        }
    };
    let passthrough = route.as_ref().is_some_and(|r| r.mode == Mode::Passthrough);
    let outcome = passthrough.then(|| OutcomeBase::new(&ctx, &event_id, &who, &target, &snap));
    let on_upgrade = hyper::upgrade::on(req);
    let tun = Arc::new(Tunnel {
        who,
        listener: info.name.clone(),
        target,
        route,
        pre_denial,
        connect_event: event_id.clone(),
        peer,
    });
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            let _permit = permit;
            match (on_upgrade.await, outcome) {
                (Ok(upgraded), Some(outcome)) => {
                    tunnel::passthrough(ctx, tun, upgraded, outcome).await
                }
                (Ok(upgraded), None) => tunnel::intercept(ctx, tun, upgraded).await,
                (Err(e), _) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        }
        .instrument(span),
    );
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = StatusCode::OK;
    if let Ok(v) = http::HeaderValue::from_str(&event_id) {
        resp.headers_mut().insert(HDR_EVENT_ID, v);
    }
    resp
}
