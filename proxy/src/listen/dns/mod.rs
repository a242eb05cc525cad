//! The allowlisting DNS responder (SPEC §12), for agents behind a
//! transparent listener.
//!
//! Redirecting TCP is not enough on its own: an agent that can look up any
//! name can leak data in the names it looks up (`c2VjcmV0.evil.example`),
//! through whatever resolver forwards them. So the agent's resolver is this
//! responder, and it answers only names that some route of the asking agent
//! allows, with the addresses the proxy itself resolves for them. Every
//! other query is refused, counted and recorded in the ledger. Nothing is
//! ever forwarded: an unknown name never leaves the pod. UDP only; a client
//! that falls back to TCP lands on the transparent listener, which refuses
//! it.

mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use portcullis_rules::{classify_ip, Decision, DnsConfig, Host, Reason};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::ctx::Ctx;
use crate::flow::{Phase, Scheme, Target};
use crate::identity::identify_peer;
use crate::metrics::DnsResult;
use crate::record::RequestRecord;
use wire::{parse_query, reply, Query, Rcode, TYPE_A, TYPE_AAAA};

/// The `listener` field of the responder's records.
pub const LISTENER: &str = "dns";
/// Queries being answered at once; past this, new ones are dropped (the
/// client retries) rather than queued without bound.
const IN_FLIGHT: usize = 256;
/// Bigger than any query we answer (EDNS clients may send 1232+).
const MAX_MESSAGE: usize = 4096;

/// Answers until the proxy starts draining.
pub async fn serve(ctx: Arc<Ctx>, cfg: DnsConfig, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let got = tokio::select! {
            r = sock.recv_from(&mut buf) => r,
            _ = ctx.reached(Phase::Draining) => break,
        };
        let (n, peer) = match got {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "dns: receive failed");
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            ctx.metrics.dns_query(DnsResult::Malformed);
            continue;
        };
        let msg = buf[..n].to_vec();
        let (ctx, cfg, sock) = (ctx.clone(), cfg.clone(), sock.clone());
        let span = tracing::debug_span!("dns", %peer);
        tokio::spawn(
            async move {
                if let Some(out) = answer(&ctx, &cfg, &msg, peer).await {
                    let _ = sock.send_to(&out, peer).await;
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    tracing::info!("dns responder stopped");
}

async fn answer(ctx: &Ctx, cfg: &DnsConfig, msg: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
    let q = match parse_query(msg) {
        Ok(q) => q,
        Err(m) => {
            ctx.metrics.dns_query(DnsResult::Malformed);
            return m.reply();
        }
    };
    match decide(ctx, cfg, &q, peer).await {
        Ok(addrs) => {
            ctx.metrics.dns_query(DnsResult::Answered);
            Some(reply(&q, Rcode::NoError, &addrs, cfg.ttl))
        }
        Err((rcode, refusal)) => {
            ctx.metrics.dns_query(DnsResult::Refused);
            tracing::info!(name = %q.name, reason = refusal.reason.code(), "dns: refused");
            record(ctx, &q, peer, cfg, refusal).await;
            Some(reply(&q, rcode, &[], cfg.ttl))
        }
    }
}

/// The addresses to answer with, or the refusal and its rcode.
async fn decide(
    ctx: &Ctx,
    cfg: &DnsConfig,
    q: &Query,
    peer: SocketAddr,
) -> Result<Vec<IpAddr>, (Rcode, Decision)> {
    let refuse = |reason| (Rcode::Refused, Decision::deny(reason));
    let snap = ctx.policy.load();
    let who =
        identify_peer(&snap.policy, &cfg.auth, peer.ip()).ok_or(refuse(Reason::AuthFailed))?;
    let agent = snap
        .policy
        .agent(&who.agent)
        .ok_or(refuse(Reason::AuthFailed))?;
    if !q.qclass_in {
        return Err(refuse(Reason::BadRequest));
    }
    // Names only: a "name" that is an address literal has nothing to resolve.
    let host = match Host::parse(&q.name) {
        Ok(h @ Host::Name(_)) => h,
        _ => return Err(refuse(Reason::BadRequest)),
    };
    let route = snap
        .policy
        .dns_route(agent, &host)
        .map_err(|d| (Rcode::Refused, d))?;
    if q.qtype != TYPE_A && q.qtype != TYPE_AAAA {
        // An allowed name with no records of this type: an empty answer.
        return Ok(Vec::new());
    }
    let port = route.ports.first().copied().unwrap_or(443);
    let addrs = ctx.upstream.lookup(&host, port).await.map_err(|e| {
        tracing::warn!(name = %q.name, error = %e, "dns: lookup failed");
        (Rcode::ServFail, Decision::deny(Reason::ResolveFailed))
    })?;
    // The proxy would refuse to dial these anyway; do not hand them out.
    if addrs
        .iter()
        .any(|a| classify_ip(a.ip()).is_some() && !route.allows_private(a.ip()))
    {
        return Err(refuse(Reason::SsrfBlocked));
    }
    Ok(addrs.iter().map(SocketAddr::ip).collect())
}

/// A refused query's ledger record: who asked for which name, never an answer.
async fn record(ctx: &Ctx, q: &Query, peer: SocketAddr, cfg: &DnsConfig, decision: Decision) {
    let snap = ctx.policy.load();
    let mut rec = RequestRecord::new(&snap, LISTENER);
    rec.who = identify_peer(&snap.policy, &cfg.auth, peer.ip());
    rec.peer = Some(peer.ip());
    rec.method = Some("DNS".to_owned());
    rec.target = Host::parse(&q.name).ok().map(|host| Target {
        host,
        port: 53,
        scheme: Scheme::Http,
    });
    rec.decision = decision;
    if rec
        .commit_refusal(&ctx.ledger, &ctx.metrics, &ctx.webhooks, &ctx.refusals)
        .await
        .is_err()
    {
        tracing::error!("ledger unavailable: dns refusal not recorded");
    }
}
