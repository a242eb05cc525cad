//! Inside a CONNECT tunnel (SPEC §3 step 4): [`intercept`] terminates TLS
//! with a minted leaf and serves the requests inside; [`passthrough`] splices
//! raw TCP after checking the SNI.

mod intercept;
mod passthrough;

pub use intercept::intercept;
pub use passthrough::passthrough;

use crate::flow::{Target, TunnelVerdict};
use crate::identity::Identity;

/// What a CONNECT established.
pub struct Tunnel {
    pub listener: String,
    pub who: Identity,
    pub target: Target,
    pub verdict: TunnelVerdict,
}
