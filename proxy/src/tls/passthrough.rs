//! Passthrough: read the ClientHello, hold its SNI to the CONNECT host, then
//! splice raw bytes to the origin (replaying the hello). The splice lives
//! only as long as the policy in force still grants it: a reload that takes
//! the route away (or the agent's token) closes it.

use std::sync::Arc;

use portcullis_rules::{Host, Mode, Route};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Tunnel;
use crate::ctx::Ctx;
use crate::flow::Phase;
use crate::flow::TunnelVerdict;
use crate::http::body::End;
use crate::http::relay::{relay, RelayEnd};
use crate::record::OutcomeGuard;

/// Largest ClientHello we buffer while looking for the SNI.
const MAX_HELLO: usize = 64 * 1024;

pub async fn passthrough<IO>(ctx: Arc<Ctx>, tun: Tunnel, mut client: IO, outcome: OutcomeGuard)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let TunnelVerdict::Passthrough(route) = &tun.verdict else {
        return;
    };
    let hello =
        match tokio::time::timeout(ctx.limits.handshake_timeout, read_client_hello(&mut client))
            .await
        {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "passthrough: no usable ClientHello; closing");
                return outcome.finish(0, End::ClientAbort);
            }
            Err(_) => {
                tracing::info!("passthrough: ClientHello timed out");
                return outcome.finish(0, End::ClientAbort);
            }
        };
    match hello.sni.as_deref().map(Host::parse) {
        Some(Ok(h)) if h == tun.target.host => {}
        Some(_) => {
            tracing::warn!(connect = %tun.target.host, "passthrough: SNI does not match the CONNECT host; closing");
            super::record_sni_mismatch(&ctx, &tun).await;
            return outcome.finish(0, End::ClientAbort);
        }
        None => {
            tracing::warn!(connect = %tun.target.host, "passthrough: ClientHello has no SNI; closing");
            return outcome.finish(0, End::ClientAbort);
        }
    }
    let dialed = match ctx
        .upstream
        .check(&tun.target.host, tun.target.port, route)
        .await
    {
        Ok(dest) => ctx.upstream.dial(&dest).await,
        Err(e) => Err(e),
    };
    let mut origin = match dialed {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "passthrough: cannot reach origin");
            return outcome.finish(0, End::UpstreamError);
        }
    };
    if origin.write_all(&hello.bytes).await.is_err() {
        return outcome.finish(0, End::UpstreamError);
    }
    let hello_len = hello.bytes.len() as u64;
    let stop = async {
        tokio::select! {
            _ = ctx.reached(Phase::Closing) => {}
            _ = revoked(&ctx, &tun, route) => {}
        }
    };
    let r = relay(client, origin, ctx.limits.relay_idle_timeout, stop).await;
    let end = match r.end {
        // The only other stop is a revoked route.
        RelayEnd::Stopped if ctx.is_running() => End::PolicyChanged,
        e => e.into(),
    };
    if end == End::PolicyChanged {
        tracing::info!(route = %route.id, "passthrough route no longer granted; closing the tunnel");
    }
    outcome
        .bytes_in()
        .store(r.up + hello_len, std::sync::atomic::Ordering::Relaxed);
    outcome.finish(r.down, end);
}

/// Resolves when a new policy generation no longer grants this tunnel: the
/// agent's identity, and a passthrough pre-check landing on the same route.
async fn revoked(ctx: &Ctx, tun: &Tunnel, route: &Route) {
    let mut changes = ctx.policy.changes();
    loop {
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        let snap = ctx.policy.load();
        let still = tun.who.still_valid(&snap.policy)
            && snap.policy.agent(&tun.who.agent).is_some_and(|agent| {
                snap.policy
                    .precheck(agent, &tun.target.host, tun.target.port)
                    .is_ok_and(|r| r.mode == Mode::Passthrough && r.id == route.id)
            });
        if !still {
            return;
        }
    }
}

/// A ClientHello as read off the wire: its bytes (to replay) and its SNI.
pub struct Hello {
    pub bytes: Vec<u8>,
    pub sni: Option<String>,
}

pub async fn read_client_hello<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Hello> {
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
