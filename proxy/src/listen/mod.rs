//! Listeners: bytes in, a [`crate::flow::Flow`] out. The accept loop, the
//! connection permit and the one span per connection live here; each mode
//! has its own file.

pub mod dns;
mod forward;
mod gateway;
mod rewind;
mod transparent;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_rules::{classify_ip, Decision, Host, ListenerAuth, ListenerMode, Reason, Route};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ctx::Ctx;
use crate::flow::{ConnSlot, Phase, Target, TunnelVerdict};
use crate::identity::Identity;
use crate::policy::PolicySnapshot;
use crate::record::RequestRecord;
use crate::refusals::Gate;
use crate::rescue::Refusal;
use crate::tls::Tunnel;

/// One listener's settings.
pub struct ListenerInfo {
    pub name: String,
    pub mode: ListenerMode,
    pub auth: ListenerAuth,
}

/// Accepts until the proxy starts draining. Each connection takes a permit
/// (refused when none is left) and gets one tracing span.
pub async fn accept_loop(
    ctx: Arc<Ctx>,
    info: Arc<ListenerInfo>,
    listener: TcpListener,
    conns: Arc<Semaphore>,
) {
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.reached(Phase::Draining) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        // One address cannot take every slot, whoever it claims to be.
        let ip = canonical(peer.ip());
        let Some(peer_slot) = ctx
            .peer_conns
            .take(&ip, ctx.limits.max_connections_per_peer)
        else {
            drop(tcp);
            refuse_peer(&ctx, &info.name, ip);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // A request held for approval can wait minutes with nothing to send: TCP
        // keep-alives keep middleboxes from dropping the idle connection.
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        next_id += 1;
        let span = tracing::info_span!("conn", id = next_id, %peer, listener = %info.name);
        let slot = ConnSlot::new(
            ip,
            permit,
            peer_slot,
            ctx.metrics.connection_opened(&info.name),
        );
        match info.mode {
            ListenerMode::Forward => {
                tokio::spawn(forward::serve(ctx.clone(), info.clone(), tcp, slot, span));
            }
            ListenerMode::Gateway => {
                tokio::spawn(gateway::serve(ctx.clone(), info.clone(), tcp, slot, span));
            }
            ListenerMode::Transparent => {
                let c = (ctx.clone(), info.clone());
                tokio::spawn(transparent::serve(c.0, c.1, tcp, peer, slot, span));
            }
            _ => {
                tracing::error!(listener = %info.name, "listener mode not supported; closing");
                return;
            }
        }
    }
    tracing::info!(listener = %info.name, "stopped accepting");
}

/// A v4 client on a dual-stack socket is its v4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A connection closed at its address's cap: recorded (at the per-peer
/// recording rate) as a `connection_limit` deny with the peer.
fn refuse_peer(ctx: &Arc<Ctx>, listener: &str, ip: IpAddr) {
    tracing::warn!(peer = %ip, "per-address connection limit reached; closing new connection");
    if ctx.refusals.gate(ip, listener, Reason::ConnectionLimit) == Gate::Counted {
        ctx.metrics
            .request(None, "deny", Reason::ConnectionLimit.code(), None);
        return;
    }
    let (ctx, listener) = (ctx.clone(), listener.to_owned());
    tokio::spawn(async move {
        let snap = ctx.policy.load();
        let mut rec = RequestRecord::new(&snap, &listener);
        rec.peer = Some(ip);
        rec.decision = Decision::deny(Reason::ConnectionLimit);
        if rec
            .commit(&ctx.ledger, &ctx.metrics, &ctx.webhooks)
            .await
            .is_err()
        {
            tracing::error!("ledger unavailable: connection limit refusal not recorded");
        }
    });
}

/// A tunnel's pre-check (SPEC §3 step 3), for a CONNECT or a redirected
/// connection: the agent's route for the target, with an IP-literal target
/// held to the SSRF table before anything else.
fn route_for(
    snap: &PolicySnapshot,
    who: &Identity,
    target: &Target,
) -> Result<Arc<Route>, Decision> {
    let Some(agent) = snap.policy.agent(&who.agent) else {
        return Err(Decision::deny(portcullis_rules::Reason::AuthFailed));
    };
    let route = snap.policy.precheck(agent, &target.host, target.port)?;
    match &target.host {
        Host::Ip(ip) if classify_ip(*ip).is_some() && !route.allows_private(*ip) => {
            Err(Decision::deny(portcullis_rules::Reason::SsrfBlocked))
        }
        _ => Ok(route),
    }
}

/// A tunnel refused at its pre-check is still answered inside TLS, with a leaf
/// for the denied host. A new such leaf takes one of the agent's few per second
/// (`DeniedLeaves`); past them the tunnel itself is refused, so made-up denied
/// names cannot keep the minter busy.
fn denied_leaf_budget(ctx: &Ctx, tun: &Tunnel) -> Result<(), Refusal> {
    let TunnelVerdict::Refused(d) = &tun.verdict else {
        return Ok(());
    };
    if ctx
        .denied_leaves
        .admit(&tun.who.agent, &tun.target.host.to_string())
    {
        return Ok(());
    }
    tracing::warn!(agent = %tun.who.agent, host = %tun.target.host, "too many tunnels to denied hosts; refusing");
    Err(Refusal::deny(portcullis_rules::Reason::DeniedTunnelLimit)
        .detail(format!(
            "the destination itself is denied: {}",
            d.reason.code()
        ))
        .retry_after(Duration::from_secs(1)))
}
