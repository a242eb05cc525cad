//! Inside a CONNECT tunnel or a redirected TLS connection (SPEC §3 step 4, §12): [`intercept`] terminates TLS
//! with a minted leaf and serves the requests inside; [`passthrough`] splices
//! raw TCP after checking the SNI.

mod denied;
mod intercept;
mod passthrough;

pub use denied::DeniedLeaves;
pub use intercept::{intercept, serve_h1};
pub use passthrough::{passthrough, read_client_hello};

use portcullis_rules::{Decision, Reason};

use crate::ctx::Ctx;
use crate::flow::{Target, TunnelVerdict};
use crate::identity::Identity;
use crate::record::RequestRecord;

/// What a CONNECT established.
pub struct Tunnel {
    pub listener: String,
    pub who: Identity,
    pub target: Target,
    pub verdict: TunnelVerdict,
}

/// The ClientHello named another host than the CONNECT did (domain fronting
/// through SNI). The tunnel closes without a response, so this record is the
/// only evidence of the refusal, as a `421` is for a mismatched `Host`.
async fn record_sni_mismatch(ctx: &Ctx, tun: &Tunnel) {
    let snap = ctx.policy.load();
    let mut rec = RequestRecord::new(&snap, &tun.listener);
    rec.who = Some(tun.who.clone());
    rec.target = Some(tun.target.clone());
    rec.method = Some(http::Method::CONNECT.as_str().to_owned());
    rec.decision = Decision::deny(Reason::HostMismatch);
    if rec
        .commit(&ctx.ledger, &ctx.metrics, &ctx.webhooks)
        .await
        .is_err()
    {
        tracing::error!("ledger unavailable: SNI mismatch not recorded");
    }
}
