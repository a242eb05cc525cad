//! The transparent listener (SPEC §12): connections that iptables or
//! nftables `REDIRECT` sent here, from agents that were never told about a
//! proxy.
//!
//! The kernel keeps where the agent meant to go (`SO_ORIGINAL_DST`). The
//! first bytes say what it meant to reach: the SNI of a TLS ClientHello, or
//! the `Host` of a plain HTTP request. That name must resolve to the
//! original destination, so an agent cannot borrow an allowed name to reach
//! another address. The agent is who the listener's config says the source
//! address is. From there it is a tunnel like a CONNECT's: the pre-check,
//! the decision record, then interception (or a passthrough splice), and
//! every request inside goes through the same driver. The bytes read to
//! find the name are replayed to whatever serves the connection next.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use portcullis_rules::{Host, Mode, Reason};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::rewind::Rewind;
use super::ListenerInfo;
use crate::ctx::Ctx;
use crate::flow::{AgentConn, ConnSlot, Entry, Scheme, Target, TunnelVerdict};
use crate::identity::identify_peer;
use crate::record::{OutcomeGuard, RequestRecord};
use crate::rescue::Refusal;
use crate::tls::{self, read_client_hello, Tunnel};

/// What the first bytes of a redirected connection named.
struct Named {
    host: Host,
    scheme: Scheme,
    /// Everything read so far, to replay.
    bytes: Vec<u8>,
}

pub async fn serve(
    ctx: Arc<Ctx>,
    info: Arc<ListenerInfo>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Arc<ConnSlot>,
    span: tracing::Span,
) {
    async move {
        let snap = ctx.policy.load();
        let mut rec = RequestRecord::new(&snap, &info.name);
        rec.peer = Some(peer.ip());
        match open(&ctx, &info, tcp, peer, &mut rec).await {
            Ok((tun, io, _agent_slot)) => hand_off(ctx, tun, io, rec, slot).await,
            Err(refusal) => {
                tracing::info!(
                    reason = refusal.decision().reason.code(),
                    detail = refusal.detail_text().unwrap_or(""),
                    "redirected connection refused"
                );
                rec.decision = refusal.decision().clone();
                // Evidence first; there is no one to answer but the socket.
                if rec
                    .commit_refusal(&ctx.ledger, &ctx.metrics, &ctx.webhooks, &ctx.refusals)
                    .await
                    .is_err()
                {
                    tracing::error!("ledger unavailable: transparent refusal not recorded");
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Works out who and where, and pre-checks the tunnel. The record is filled
/// in as facts are learnt, so a refusal records as much as was known.
async fn open(
    ctx: &Ctx,
    info: &ListenerInfo,
    mut tcp: TcpStream,
    peer: SocketAddr,
    rec: &mut RequestRecord,
) -> Result<(Tunnel, Rewind<TcpStream>, AgentConn), Refusal> {
    let orig = original_dst(&tcp, peer).map_err(|d| Refusal::deny(Reason::BadRequest).detail(d))?;
    // Dialling the listener itself (not redirected) would loop back here.
    if tcp.local_addr().ok() == Some(orig) {
        return Err(Refusal::deny(Reason::BadRequest)
            .detail("connection was not redirected: its original destination is this listener"));
    }
    let snap = ctx.policy.load();
    let who = identify_peer(&snap.policy, &info.auth, peer.ip())
        .ok_or_else(|| Refusal::deny(Reason::AuthFailed).detail("no agent for this source"))?;
    rec.who = Some(who.clone());
    let slot = ctx
        .agent_conns
        .take(&who.agent, ctx.limits.max_connections_per_agent)
        .ok_or_else(|| Refusal::deny(Reason::ConnectionLimit))?;
    rec.target = Some(Target {
        host: Host::Ip(orig.ip()),
        port: orig.port(),
        scheme: Scheme::Https,
    });
    let named = tokio::time::timeout(ctx.limits.handshake_timeout, name_of(&mut tcp, ctx))
        .await
        .map_err(|_| Refusal::deny(Reason::BadRequest).detail("nothing named a host in time"))??;
    let target = Target {
        host: named.host,
        port: orig.port(),
        scheme: named.scheme,
    };
    rec.target = Some(target.clone());
    // The name must lead where the agent was going.
    let addrs = ctx
        .upstream
        .lookup(&target.host, target.port)
        .await
        .map_err(|e| Refusal::deny(Reason::ResolveFailed).detail(e.to_string()))?;
    if !addrs.iter().any(|a| same_ip(a.ip(), orig.ip())) {
        return Err(Refusal::deny(Reason::HostMismatch).detail(format!(
            "{} does not resolve to the original destination {}",
            target.host,
            orig.ip()
        )));
    }
    let verdict = match super::route_for(&snap, &who, &target) {
        Ok(route) => {
            rec.decision = portcullis_rules::Decision::allow(route.clone());
            match (route.mode, target.scheme) {
                (Mode::Passthrough, Scheme::Https) => TunnelVerdict::Passthrough(route),
                _ => TunnelVerdict::Intercept,
            }
        }
        // Terminated anyway (TLS with our leaf, or plain HTTP), so the agent's
        // SDK reads the reason in a response; nothing goes upstream.
        Err(d) => {
            rec.decision = d.clone();
            TunnelVerdict::Refused(d)
        }
    };
    let tun = Tunnel {
        listener: info.name.clone(),
        who,
        target,
        verdict,
    };
    // Only a TLS connection needs a leaf; plain HTTP is answered as it is.
    if tun.target.scheme == Scheme::Https {
        super::denied_leaf_budget(ctx, &tun)?;
    }
    Ok((tun, Rewind::new(named.bytes, tcp), slot))
}

/// Records the tunnel's verdict, then serves it.
async fn hand_off(
    ctx: Arc<Ctx>,
    tun: Tunnel,
    io: Rewind<TcpStream>,
    mut rec: RequestRecord,
    slot: Arc<ConnSlot>,
) {
    if rec
        .commit(&ctx.ledger, &ctx.metrics, &ctx.webhooks)
        .await
        .is_err()
    {
        // Audit before act: no record, no tunnel.
        tracing::error!("ledger unavailable: closing redirected connection");
        return;
    }
    match (&tun.verdict, tun.target.scheme) {
        (TunnelVerdict::Passthrough(_), _) => {
            let outcome =
                OutcomeGuard::new(&rec, &ctx.ledger, &ctx.outcomes, &ctx.phase, &ctx.metrics);
            tls::passthrough(ctx, tun, io, outcome).await;
        }
        (_, Scheme::Https) => tls::intercept(ctx, tun, io, slot).await,
        (_, Scheme::Http) => {
            let entry = Entry::Tunnel {
                target: tun.target,
                verdict: tun.verdict,
                who: tun.who,
            };
            tls::serve_h1(ctx, tun.listener, entry, io, slot).await;
        }
    }
}

/// Where the agent was going, as the kernel kept it before `REDIRECT`.
fn original_dst(tcp: &TcpStream, peer: SocketAddr) -> Result<SocketAddr, String> {
    let sock = socket2::SockRef::from(tcp);
    let got = if peer.is_ipv4() {
        sock.original_dst_v4()
    } else {
        // A v4 peer on a dual-stack socket still has a v4 original destination.
        sock.original_dst_v6().or_else(|_| sock.original_dst_v4())
    };
    got.map_err(|e| format!("no original destination (was it redirected?): {e}"))?
        .as_socket()
        .ok_or_else(|| "original destination is not an IP address".to_owned())
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

/// Reads until the first bytes name a host: a TLS ClientHello's SNI, or a
/// plain HTTP request head's `Host`.
async fn name_of(tcp: &mut TcpStream, ctx: &Ctx) -> Result<Named, Refusal> {
    let mut first = [0u8; 1];
    let n = tcp
        .peek(&mut first)
        .await
        .map_err(|e| Refusal::deny(Reason::BadRequest).detail(e.to_string()))?;
    if n == 0 {
        return Err(Refusal::deny(Reason::BadRequest).detail("closed before sending anything"));
    }
    // 0x16: a TLS handshake record.
    if first[0] == 0x16 {
        let hello = read_client_hello(tcp).await.map_err(|e| {
            Refusal::deny(Reason::BadRequest).detail(format!("no usable ClientHello: {e}"))
        })?;
        let sni = hello.sni.as_deref().ok_or_else(|| {
            Refusal::deny(Reason::BadRequest).detail("the ClientHello names no server (no SNI)")
        })?;
        let host = Host::parse(sni)
            .map_err(|e| Refusal::deny(Reason::BadRequest).detail(format!("bad SNI: {e}")))?;
        return Ok(Named {
            host,
            scheme: Scheme::Https,
            bytes: hello.bytes,
        });
    }
    let (host, bytes) = read_host(tcp, ctx.limits.max_header_bytes).await?;
    Ok(Named {
        host,
        scheme: Scheme::Http,
        bytes,
    })
}

/// Reads a plain HTTP request head (up to `max` bytes) and returns its one
/// `Host`, without the port (the original destination has it).
async fn read_host(tcp: &mut TcpStream, max: usize) -> Result<(Host, Vec<u8>), Refusal> {
    let bad = |d: String| Refusal::deny(Reason::BadRequest).detail(d);
    let mut bytes = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Err(bad("closed before a request head".into()));
        }
        bytes.extend_from_slice(&buf[..n]);
        if let Some(host) = host_of(&bytes).map_err(bad)? {
            return Ok((host, bytes));
        }
        if bytes.len() > max {
            return Err(bad("request head too large".into()));
        }
    }
}

/// `Ok(None)`: the head is not complete yet.
fn host_of(head: &[u8]) -> Result<Option<Host>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {}
        Err(e) => return Err(format!("not an HTTP request: {e}")),
    }
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.value,
        (None, _) => return Err("the request has no Host header".into()),
        (Some(_), Some(_)) => return Err("the request has more than one Host header".into()),
    };
    let host = std::str::from_utf8(host).map_err(|_| "Host is not ASCII".to_owned())?;
    portcullis_rules::split_host_port(host, 80)
        .map(|(h, _)| Some(h))
        .map_err(|e| format!("bad Host: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_head_names_its_host_without_the_port() {
        let head = b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com:80\r\n\r\n";
        assert_eq!(
            host_of(head).unwrap(),
            Some(Host::parse("api.openai.com").unwrap())
        );
    }

    #[test]
    fn a_partial_head_asks_for_more() {
        assert_eq!(host_of(b"GET / HTTP/1.1\r\nHo").unwrap(), None);
    }

    #[test]
    fn no_host_two_hosts_and_non_http_bytes_are_refused() {
        assert!(host_of(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(host_of(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").is_err());
        assert!(host_of(b"SSH-2.0-OpenSSH_9.2\r\n").is_err());
    }

    #[test]
    fn a_mapped_v4_address_is_the_same_v4_address() {
        assert!(same_ip(
            "::ffff:10.0.0.1".parse().unwrap(),
            "10.0.0.1".parse().unwrap()
        ));
        assert!(!same_ip(
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap()
        ));
    }
}
