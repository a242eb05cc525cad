//! Listeners: bytes in, a [`crate::flow::Flow`] out. The accept loop, the
//! connection permit and the one span per connection live here; each mode
//! has its own file.

mod forward;
mod gateway;

use std::sync::Arc;
use std::time::Duration;

use portcullis_rules::{ListenerAuth, ListenerMode};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ctx::Ctx;
use crate::flow::ConnSlot;
use crate::flow::Phase;

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
        let _ = tcp.set_nodelay(true);
        // A request held for approval can wait minutes with nothing to send: TCP
        // keep-alives keep middleboxes from dropping the idle connection.
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        next_id += 1;
        let span = tracing::info_span!("conn", id = next_id, %peer, listener = %info.name);
        let slot = ConnSlot::new(permit, ctx.metrics.connection_opened(&info.name));
        match info.mode {
            ListenerMode::Forward => {
                tokio::spawn(forward::serve(ctx.clone(), info.clone(), tcp, slot, span));
            }
            ListenerMode::Gateway => {
                tokio::spawn(gateway::serve(ctx.clone(), info.clone(), tcp, slot, span));
            }
            _ => {
                tracing::error!(listener = %info.name, "listener mode not supported; closing");
                return;
            }
        }
    }
    tracing::info!(listener = %info.name, "stopped accepting");
}
